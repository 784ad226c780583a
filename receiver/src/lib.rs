//! Lifeline's receiver: keeps, for every machine, a mirror of its watched
//! trees under `<store>/mirror/<machine>/`, applying the operations agents
//! stream to it over gRPC.
//!
//! - [`serve`] / [`serve_with`]: run the gRPC server on a listener until a
//!   shutdown future resolves (the binary and in-process tests use these).
//! - [`Receiver`]: the `Replication` service itself.
//! - [`auth`]: which machine a request speaks for.
//! - [`apply`]: applying ops to a mirror; [`safepath`]: resolving paths inside
//!   a mirror without ever leaving it (openat2); [`listing`]: `ListTree`.

pub mod apply;
pub mod auth;
pub mod bootdb;
pub mod bootmedia;
pub mod db;
pub mod delta;
pub mod images;
pub mod jobsdb;
pub mod listing;
pub mod mediadownload;
pub mod netboot;
pub mod progress;
pub mod safepath;
mod service;
pub mod tftp;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tracing::info;

pub use auth::{Authenticator, MachineName, TokenAuthenticator};
pub use listing::LIST_CHUNK;
pub use service::Receiver;

/// Serves `receiver` on `listener` until `shutdown` resolves; then ends the
/// open streams and returns once the connections are closed. `tls`: the
/// identity to present (the `lifeline-receiver` binary always has one;
/// in-process tests may go without).
pub async fn serve_with(
    listener: TcpListener,
    receiver: Receiver,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let images = receiver.images()?;
    let media = receiver.media_download()?;
    let stopper = receiver.clone();
    let signal = async move {
        shutdown.await;
        info!("shutting down");
        stopper.shutdown_streams();
    };
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            // Acks are small: do not let Nagle hold them back.
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        // Agents stream file data: HTTP/2's default 64 KiB windows would
        // stall a bulk copy on window updates.
        .initial_stream_window_size(Some(lifeline_proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(lifeline_proto::CONNECTION_WINDOW))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(receiver.into_service())
        .add_service(images.into_service())
        .add_service(media.into_service())
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

/// A receiver running in the background, for tests and embedding.
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for a tonic client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?
    }
}

/// Starts a receiver over `store` on `addr` (e.g. `127.0.0.1:0`) in the
/// background of the current tokio runtime, without TLS (credentials are
/// still checked).
pub async fn spawn(addr: &str, store: impl Into<PathBuf>) -> anyhow::Result<Running> {
    let receiver = Receiver::new(store.into())?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, receiver, None, async move {
        let _ = rx.await;
    }));
    Ok(Running { addr, stop: Some(tx), task })
}
