//! Lifeline's receiver: the daemon a provider runs for many machines, and
//! its command line. This crate composes the rooms below it into one
//! process and keeps what they share at the door:
//!
//! | crate | what |
//! |---|---|
//! | `lifeline-mirror` | each machine's mirror and its history: the `Replication` and `History` services |
//! | `lifeline-image-store` | each machine's image repository and job reports: `ImageStore`, `Jobs` |
//! | `lifeline-boot-server` | boot media: making, network boot (HTTP, TFTP), download, boot sessions |
//! | `lifeline-store` | the store's layout, the management database, the `Authenticator` seam |
//!
//! Here:
//! - [`Receiver`]: every gRPC service over one store, behind one
//!   authenticator; [`serve_with`] runs them on a listener until shutdown,
//!   [`spawn`] in the background (tests, embedding).
//! - [`auth`]: [`TokenAuthenticator`], which machine a request speaks for,
//!   checked against the management database.
//! - [`tls`]: the receiver's TLS identity (its own CA unless given one).
//! - [`limits`]: what one client may cost the listener: connections,
//!   streams, time, and the calls refused from their headers alone.
//! - [`retention`]: each machine's history thinned on the receiver's
//!   clock, as its policy in the database says.

pub mod auth;
pub mod limits;
pub mod retention;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lifeline_boot_server::{BootSessionsService, MediaDownload};
use lifeline_image_store::{ImageStoreService, JobsService};
use lifeline_mirror::{HistoryService, MirrorService};
use lifeline_store::{quota, Authenticator, Db, Quotas, StoreLayout};
use tokio::net::TcpListener;
use tracing::info;

pub use auth::TokenAuthenticator;
pub use limits::Limits;

/// Every gRPC service of the receiver over one store, sharing one
/// authenticator.
#[derive(Clone)]
pub struct Receiver {
    store: StoreLayout,
    auth: Arc<dyn Authenticator>,
    quotas: Arc<Quotas>,
    mirror: MirrorService,
    limits: Limits,
    /// How often every machine's history is thinned (`None`: never).
    retention_every: Option<Duration>,
}

/// How often the receiver thins every machine's history, by default.
pub const RETENTION_EVERY: Duration = Duration::from_secs(600);

impl Receiver {
    /// The receiver over `store` (created if missing), checking each
    /// request's credential against the machines in its database.
    pub fn new(store: impl AsRef<Path>) -> anyhow::Result<Receiver> {
        let store = store.as_ref();
        StoreLayout::create(store)?;
        let db = Db::open(store)?;
        Receiver::with_authenticator(store, Arc::new(TokenAuthenticator::new(db)?))
    }

    /// Like [`Receiver::new`], with `auth` deciding which machine a request
    /// speaks for.
    pub fn with_authenticator(store: impl AsRef<Path>, auth: Arc<dyn Authenticator>) -> anyhow::Result<Receiver> {
        Receiver::with_options(store, auth, quota::DEFAULT_RESERVE)
    }

    /// Like [`Receiver::with_authenticator`], keeping `reserve` bytes free
    /// on the store's filesystem (0: no reserve).
    pub fn with_options(
        store: impl AsRef<Path>,
        auth: Arc<dyn Authenticator>,
        reserve: u64,
    ) -> anyhow::Result<Receiver> {
        let store = StoreLayout::new(std::fs::canonicalize(StoreLayout::create(store.as_ref())?.root())?);
        let quotas = Arc::new(Quotas::new(&store, reserve)?);
        let mirror = MirrorService::new(&store, auth.clone(), quotas.clone())?;
        Ok(Receiver { store, auth, quotas, mirror, limits: Limits::default(), retention_every: Some(RETENTION_EVERY) })
    }

    /// The same receiver, within `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Receiver {
        self.limits = limits;
        self
    }

    /// The same receiver, keeping no history (to measure its cost only).
    pub fn without_history(mut self) -> Receiver {
        self.mirror = self.mirror.without_history();
        self
    }

    /// The same receiver, thinning history every `every` (`None`: never).
    pub fn with_retention_every(mut self, every: Option<Duration>) -> Receiver {
        self.retention_every = every;
        self
    }

    /// The (canonical) store.
    pub fn store(&self) -> &StoreLayout {
        &self.store
    }

    /// What the console shows of each machine now: its replication (from
    /// this receiver's mirror service) and its history's standing alarm.
    pub fn live_states(&self) -> Arc<dyn lifeline_console::LiveStates> {
        Arc::new(LiveFromServices { mirror: self.mirror.clone(), store: self.store.clone() })
    }
}

struct LiveFromServices {
    mirror: MirrorService,
    store: StoreLayout,
}

impl lifeline_console::LiveStates for LiveFromServices {
    fn of(&self, machine: &str) -> lifeline_console::LiveState {
        let Ok(name) = lifeline_core::credential::MachineName::new(machine) else { return Default::default() };
        let live = self.mirror.live(&name);
        let alarm =
            lifeline_history::alarm::standing(&self.store.history(&name)).ok().flatten().map(|a| a.describe(machine));
        lifeline_console::LiveState {
            connected: live.connected,
            last_change: live.last_change.map(|t| {
                let ns = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
                // To the second: a list, not a timeline.
                lifeline_history::instant::format(ns - ns % 1_000_000_000)
            }),
            changes: live.ops,
            alarm,
        }
    }
}

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
    let store = receiver.store.clone();
    let images = ImageStoreService::new(&store, receiver.auth.clone(), receiver.quotas.clone())?;
    let jobs = JobsService::new(&store, receiver.auth.clone())?;
    let media = MediaDownload::new(&store, receiver.auth.clone())?;
    let sessions = BootSessionsService::new(&store)?;
    let retention = receiver.retention_every.map(|every| tokio::spawn(retention::run(store.clone(), every)));
    let history = HistoryService::new(&store, receiver.auth.clone())?;
    let stopper = receiver.mirror.clone();
    let signal = async move {
        shutdown.await;
        info!("shutting down");
        stopper.shutdown_streams();
    };
    // Counted and timed; acks are small: Nagle is off on each.
    let conns = limits::Conns::new(receiver.limits.clone());
    let incoming = limits::incoming(listener, conns.clone());
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
        .max_concurrent_streams(Some(conns.limits().max_streams))
        // Headers are a credential and a few names.
        .http2_max_header_list_size(Some(64 << 10))
        .layer(limits::GateLayer::new(receiver.auth.clone(), conns))
        .add_service(receiver.mirror.into_service())
        .add_service(images.into_service())
        .add_service(jobs.into_service())
        .add_service(media.into_service())
        .add_service(sessions.into_service())
        .add_service(history.into_service())
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    if let Some(r) = retention {
        r.abort();
    }
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
pub async fn spawn(addr: &str, store: impl AsRef<Path>) -> anyhow::Result<Running> {
    spawn_receiver(addr, Receiver::new(store)?).await
}

/// Like [`spawn`], for a receiver already made (e.g. with other limits).
pub async fn spawn_receiver(addr: &str, receiver: Receiver) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, receiver, None, async move {
        let _ = rx.await;
    }));
    Ok(Running { addr, stop: Some(tx), task })
}
