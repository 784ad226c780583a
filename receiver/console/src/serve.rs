//! The console's listener: HTTPS (HTTP/1.1) with bounds on what one client
//! may cost (DESIGN.md, "Trust": every listener bounds memory, connections
//! and time). The pages themselves are in [`crate::pages`] and
//! [`crate::api`].
//!
//! - Connections: a total and a per-address cap; the one over a cap is
//!   closed at once.
//! - Time: the TLS handshake and each request's headers (the first and every
//!   keep-alive one) have [`Limits::header_timeout`]; a connection lives
//!   [`Limits::connection_lifetime`] at most (a boot ISO's download
//!   included).
//! - Memory: request bodies are capped by the router ([`crate::BODY_LIMIT`]),
//!   headers by hyper's defaults.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// The console listener's bounds (`lifeline-receiver serve --console-*`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// For the TLS handshake, and for each request's headers.
    pub header_timeout: Duration,
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 512,
            max_connections_per_ip: 32,
            header_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The address a request came from, for the audit trail and lockouts.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Open connections per address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One open connection's place under the caps, given back when it closes.
struct Slot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.per_ip.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves. With `tls`, every
/// connection is HTTPS; without it (in-process tests only) plain HTTP.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let total = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    warn!("console: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            warn!(
                "console: {} connections open, closing one from {peer} (--console-max-connections)",
                limits.max_connections
            );
            continue;
        };
        {
            let mut m = per_ip.0.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(peer.ip()).or_default();
            if *n >= limits.max_connections_per_ip {
                warn!("console: {} connections open from {}, closing one", n, peer.ip());
                continue;
            }
            *n += 1;
        }
        let slot = Slot { per_ip: per_ip.clone(), ip: peer.ip(), _total: permit };
        let (tls, app, limits) = (tls.clone(), app.clone(), limits.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let served = tokio::time::timeout(limits.connection_lifetime, async {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => connection(tls, peer, app, &limits).await,
                            Ok(Err(e)) => debug!("console: TLS handshake with {peer} failed: {e}"),
                            Err(_) => debug!("console: TLS handshake with {peer} timed out"),
                        }
                    }
                    None => connection(stream, peer, app, &limits).await,
                }
            })
            .await;
            if served.is_err() {
                debug!("console: connection from {peer} reached its lifetime");
            }
        });
    }
}

async fn connection<S>(io: S, peer: SocketAddr, app: Router, limits: &Limits)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let app = app.clone();
        async move { tower::ServiceExt::oneshot(app, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        debug!("console: connection from {peer}: {e}");
    }
}
