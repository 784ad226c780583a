//! What one client may cost the receiver's gRPC listener, before and after it
//! has shown a credential (DESIGN.md, "Trust": every listener bounds memory,
//! connections and time).
//!
//! - [`Conns`] wraps the accepted TCP connections: a total and a per-address
//!   cap (the connection over a cap is closed at once), and a deadline on
//!   each connection: one with no request in flight is closed after
//!   [`Limits::handshake_timeout`] until its first authenticated request (the
//!   TLS handshake, the HTTP/2 preface and the first headers all fall under
//!   it), and after [`Limits::idle_timeout`] once it has had one.
//! - [`GateLayer`] checks each call's credential from its headers alone,
//!   before any of its body is read (the services check it again), and
//!   bounds the body of the calls that carry no data to
//!   [`SMALL_REQUEST`] bytes; the calls that carry data keep the per-message
//!   limit of [`lifeline_proto::MAX_MESSAGE`].
//! - HTTP/2's concurrent streams per connection: [`Limits::max_streams`],
//!   applied in `serve_with`.
//!
//! Each limit, when hit, is logged as a warning (at most one line per
//! [`lifeline_store::throttle::WARN_EVERY`] and limit, with how many were suppressed) saying which
//! `serve` flag raises it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use lifeline_core::credential::MachineName;
use lifeline_store::throttle::Throttle;
use lifeline_store::Authenticator;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};
use tonic::Status;
use tracing::warn;

/// The largest body of a call that carries no data (a listing's roots, a
/// manifest's name, a pack range, a job report).
pub const SMALL_REQUEST: usize = 1 << 20;

/// The receiver's gRPC listener limits (`lifeline-receiver serve` flags).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections in all (`--max-connections`).
    pub max_connections: usize,
    /// Open connections from one IP address (`--max-connections-per-ip`).
    pub max_connections_per_ip: usize,
    /// Concurrent HTTP/2 streams (calls) on one connection (`--max-streams`).
    pub max_streams: u32,
    /// Time from accepting a connection to its first authenticated call
    /// (`--handshake-timeout-s`).
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no call in flight
    /// (`--idle-timeout-s`).
    pub idle_timeout: Duration,
    /// Calls carrying data (replication streams, pack uploads, manifests,
    /// history restores)
    /// one machine may have in flight at once, over all its connections
    /// (`--max-data-calls-per-machine`): each may hold a message of up to
    /// the per-message limit in memory, so this bounds what one
    /// credential, stolen or not, can make the receiver hold.
    pub max_data_calls_per_machine: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_streams: 64,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            // An agent has one replication stream; an image backup a pack
            // upload or two and a manifest; reconnections overlap the old
            // stream until it ends.
            max_data_calls_per_machine: 8,
        }
    }
}

/// One open connection's calls in flight and when it last had one.
#[derive(Debug)]
struct ConnState {
    active: AtomicUsize,
    last: Mutex<Instant>,
    authenticated: AtomicBool,
    /// A call on it was refused for its credential: unless the connection
    /// has had an authenticated call, it is closed [`REFUSED_GRACE`] later
    /// (time for the refusal to reach an honest client), so that a forger
    /// pays a new TLS handshake for each try instead of streaming calls,
    /// and their bodies, at no cost of its own.
    refused: AtomicBool,
    /// [`ConnState::refused`] was seen: the deadline is the grace's.
    refused_once: AtomicBool,
}

/// How long a connection that has only been refused stays open after the
/// refusal.
const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// The open connections of one listener.
pub struct Conns {
    limits: Limits,
    table: Mutex<Table>,
    /// Calls carrying data in flight, per machine.
    data_calls: Arc<Mutex<HashMap<MachineName, usize>>>,
    too_many_data_calls: Throttle,
    over_total: Throttle,
    over_ip: Throttle,
    timed_out: Throttle,
    refused: Throttle,
    too_big: Throttle,
}

#[derive(Default)]
struct Table {
    per_ip: HashMap<IpAddr, usize>,
    live: HashMap<SocketAddr, Arc<ConnState>>,
}

impl Conns {
    pub fn new(limits: Limits) -> Arc<Conns> {
        Arc::new(Conns {
            limits,
            table: Mutex::default(),
            data_calls: Arc::default(),
            too_many_data_calls: Throttle::default(),
            over_total: Throttle::default(),
            over_ip: Throttle::default(),
            timed_out: Throttle::default(),
            refused: Throttle::default(),
            too_big: Throttle::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The accepted `io` as a counted connection, or None (it is closed) if
    /// it would pass a cap.
    pub fn admit(self: &Arc<Conns>, io: TcpStream) -> Option<Conn> {
        let peer = io.peer_addr().ok()?;
        let ip = peer.ip().to_canonical();
        let state = Arc::new(ConnState {
            active: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            authenticated: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            refused_once: AtomicBool::new(false),
        });
        {
            let mut t = self.table();
            let total = t.live.len();
            if total >= self.limits.max_connections {
                drop(t);
                self.over_total.hit(|more| {
                    warn!(
                        "connection from {peer} closed: {total} connections are open, the most --max-connections allows \
                         (raise it if these are your machines; {more} more since the last warning)"
                    )
                });
                return None;
            }
            let from_ip = t.per_ip.get(&ip).copied().unwrap_or(0);
            if from_ip >= self.limits.max_connections_per_ip {
                drop(t);
                self.over_ip.hit(|more| {
                    warn!(
                        "connection from {peer} closed: {from_ip} connections from {ip} are open, the most \
                         --max-connections-per-ip allows (raise it if many machines share that address; \
                         {more} more since the last warning)"
                    )
                });
                return None;
            }
            *t.per_ip.entry(ip).or_default() += 1;
            t.live.insert(peer, state.clone());
        }
        let _ = io.set_nodelay(true);
        let deadline = tokio::time::Instant::now() + self.limits.handshake_timeout;
        Some(Conn {
            io,
            state,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            slot: Slot { conns: self.clone(), peer, ip },
        })
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.table().live.len()
    }

    fn state_of(&self, peer: SocketAddr) -> Option<Arc<ConnState>> {
        self.table().live.get(&peer).cloned()
    }

    /// A place for one more call carrying data of `machine`, or None when
    /// it has [`Limits::max_data_calls_per_machine`] in flight.
    fn data_call(&self, machine: &MachineName) -> Option<DataCall> {
        let mut calls = self.data_calls.lock().unwrap_or_else(|e| e.into_inner());
        let n = calls.entry(machine.clone()).or_default();
        if *n >= self.limits.max_data_calls_per_machine {
            return None;
        }
        *n += 1;
        Some(DataCall { calls: self.data_calls.clone(), machine: machine.clone() })
    }
}

/// One call carrying data in flight; its place is given back when dropped
/// (with the response's body).
struct DataCall {
    calls: Arc<Mutex<HashMap<MachineName, usize>>>,
    machine: MachineName,
}

impl Drop for DataCall {
    fn drop(&mut self) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = calls.get_mut(&self.machine) {
            *n -= 1;
            if *n == 0 {
                calls.remove(&self.machine);
            }
        }
    }
}

/// Frees a connection's place in [`Conns`] when it closes.
struct Slot {
    conns: Arc<Conns>,
    peer: SocketAddr,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.conns.table();
        t.live.remove(&self.peer);
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection counted in [`Conns`], closed (its reads fail with
/// `TimedOut`) once it has had no call in flight for too long.
pub struct Conn {
    io: TcpStream,
    state: Arc<ConnState>,
    timer: Pin<Box<Sleep>>,
    slot: Slot,
}

impl Conn {
    /// Ok while the connection may stay open; keeps the timer armed.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.state.refused.swap(false, Ordering::SeqCst) && !self.state.authenticated.load(Ordering::SeqCst) {
            let soon = tokio::time::Instant::now() + REFUSED_GRACE;
            if soon < self.timer.deadline() {
                self.timer.as_mut().reset(soon);
                *self.state.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                self.state.refused_once.store(true, Ordering::SeqCst);
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let limits = &self.slot.conns.limits;
            let now = tokio::time::Instant::now();
            if self.state.active.load(Ordering::SeqCst) > 0 {
                self.timer.as_mut().reset(now + limits.idle_timeout);
                continue;
            }
            let (limit, what, flag) = if self.state.authenticated.load(Ordering::SeqCst) {
                (limits.idle_timeout, "idle for", "--idle-timeout-s")
            } else if self.state.refused_once.load(Ordering::SeqCst) {
                (REFUSED_GRACE, "refused a credential, and no authenticated call for", "fixed")
            } else {
                (limits.handshake_timeout, "without an authenticated call for", "--handshake-timeout-s")
            };
            let since = *self.state.last.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = tokio::time::Instant::from_std(since) + limit;
            if now >= deadline {
                let peer = self.slot.peer;
                self.slot.conns.timed_out.hit(|more| {
                    warn!(
                        "connection from {peer} closed: {what} {limit:?} ({flag}; {more} more since the last warning)"
                    )
                });
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("connection {what} {limit:?}")));
            }
            self.timer.as_mut().reset(deadline);
        }
        Ok(())
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Marks a call in flight on its connection until dropped (with the
/// response's body).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> InFlight {
        state.authenticated.store(true, Ordering::SeqCst);
        state.active.fetch_add(1, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which credential a call needs before its body is read, how big its
/// body may be (None: the per-message limit of a call carrying data), and
/// whether it counts as a call carrying data of its machine (those with a
/// big body, and every History call: a restore streams files back, a
/// listing reads the machine's whole journal).
fn call_limits(path: &str) -> (Check, Option<usize>, bool) {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let (check, body) = body_limits(service, method);
    let data = body.is_none() || service == "lifeline.v1.History";
    (check, body, data)
}

fn body_limits(service: &str, method: &str) -> (Check, Option<usize>) {
    match (service, method) {
        ("lifeline.v1.Replication", "Replicate") => (Check::Machine, None),
        ("lifeline.v1.Replication" | "lifeline.v1.BootMediaStore" | "lifeline.v1.History", _) => {
            (Check::Machine, Some(SMALL_REQUEST))
        }
        ("lifeline.v1.ImageStore", "PutPack" | "PutManifest" | "CreateConfig") => (Check::Images, None),
        ("lifeline.v1.ImageStore" | "lifeline.v1.Jobs", _) => (Check::Images, Some(SMALL_REQUEST)),
        // A boot token is claimed by the call itself.
        ("lifeline.v1.BootSessions", _) => (Check::None, Some(SMALL_REQUEST)),
        _ => (Check::Machine, Some(SMALL_REQUEST)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Machine,
    Images,
    None,
}

/// The tower layer running [`Gate`] in front of every service.
#[derive(Clone)]
pub struct GateLayer {
    auth: Arc<dyn Authenticator>,
    conns: Arc<Conns>,
}

impl GateLayer {
    pub fn new(auth: Arc<dyn Authenticator>, conns: Arc<Conns>) -> GateLayer {
        GateLayer { auth, conns }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, auth: self.auth.clone(), conns: self.conns.clone() }
    }
}

/// Refuses a call with a missing or wrong credential from its headers, before
/// its body is read; bounds the body of calls that carry no data; counts
/// the call as in flight on its connection.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    auth: Arc<dyn Authenticator>,
    conns: Arc<Conns>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type GateFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S> Gate<S> {
    /// Answers a call whose credential was refused, and marks its connection
    /// (closed soon unless it has had an authenticated call).
    fn refused<E: Send + 'static>(&self, status: Status, path: &str, peer: Option<SocketAddr>) -> GateFuture<E> {
        if let Some(state) = peer.and_then(|p| self.conns.state_of(p)) {
            state.refused.store(true, Ordering::SeqCst);
        }
        self.conns.refused.hit(|more| {
            warn!(
                "call {path} from {} refused before reading its body: {} ({more} more since the last warning)",
                peer.map_or_else(|| "?".into(), |p| p.to_string()),
                status.message()
            )
        });
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = GateFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let (check, body_limit, counts_as_data) = call_limits(&path);
        let metadata = MetadataMap::from_headers(req.headers().clone());
        let checked = match check {
            Check::Machine => self.auth.authenticate(&metadata, req.extensions()).map(Some),
            Check::Images => self.auth.authenticate_images(&metadata, req.extensions()).map(|a| Some(a.machine)),
            Check::None => Ok(None),
        };
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .or_else(|| req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref))
            .and_then(TcpConnectInfo::remote_addr);
        let machine = match checked {
            Ok(machine) => machine,
            Err(status) => return self.refused(status, &path, peer),
        };
        // A call carrying data holds up to a message in memory: each
        // machine has a number of them.
        let data_call = match (&machine, counts_as_data) {
            (Some(machine), true) => match self.conns.data_call(machine) {
                Some(slot) => Some(slot),
                None => {
                    let max = self.conns.limits.max_data_calls_per_machine;
                    self.conns.too_many_data_calls.hit(|more| {
                        warn!(
                            %machine, "call {path} refused: the machine has {max} calls carrying data in flight \
                             (--max-data-calls-per-machine; {more} more since the last warning)"
                        )
                    });
                    let status = Status::resource_exhausted(format!(
                        "machine {machine} has {max} calls carrying data in flight already, the most this receiver \
                         allows (--max-data-calls-per-machine): wait for one to end"
                    ));
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            },
            _ => None,
        };
        let in_flight = peer.and_then(|p| self.conns.state_of(p)).map(InFlight::new);
        let req = match body_limit {
            Some(limit) => {
                let conns = self.conns.clone();
                req.map(|body| {
                    Body::new(Limited::new(body, limit).map_err(move |e: BoxError| -> BoxError {
                        if !e.is::<LengthLimitError>() {
                            return e;
                        }
                        conns.too_big.hit(|more| {
                            warn!("a call to {path} sent more than {limit} bytes ({more} more since the last warning)")
                        });
                        Box::new(Status::resource_exhausted(format!(
                            "{path} takes at most {limit} bytes; is the client a Lifeline agent of this version?"
                        )))
                    }))
                })
            }
            None => req,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let resp = inner.call(req).await?;
            Ok(resp.map(|body| {
                Body::new(body.map_frame(move |f| {
                    let _held = (&in_flight, &data_call);
                    f
                }))
            }))
        })
    }
}

/// The accepted connections of `listener`, within `conns`' caps.
pub fn incoming(
    listener: tokio::net::TcpListener,
    conns: Arc<Conns>,
) -> impl tokio_stream::Stream<Item = io::Result<Conn>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |conn| match conn {
        Ok(io) => conns.admit(io).map(Ok),
        Err(e) => Some(Err(e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_calls_get_small_bodies() {
        let small = Some(SMALL_REQUEST);
        assert_eq!(call_limits("/lifeline.v1.Replication/Replicate"), (Check::Machine, None, true));
        assert_eq!(call_limits("/lifeline.v1.Replication/ListTree"), (Check::Machine, small, false));
        assert_eq!(call_limits("/lifeline.v1.ImageStore/PutPack"), (Check::Images, None, true));
        assert_eq!(call_limits("/lifeline.v1.ImageStore/GetManifest"), (Check::Images, small, false));
        assert_eq!(call_limits("/lifeline.v1.BootSessions/Claim"), (Check::None, small, false));
        assert_eq!(call_limits("/x.Y/Z"), (Check::Machine, small, false));
        // History: the machine's own credential only; each call counts.
        assert_eq!(call_limits("/lifeline.v1.History/ListVersions"), (Check::Machine, small, true));
        assert_eq!(call_limits("/lifeline.v1.History/Restore"), (Check::Machine, small, true));
    }
}
