//! Network boot over HTTP for iPXE (`lifeline-receiver --http-listen`).
//!
//! - `GET /boot.ipxe`: the script every machine chains first; it asks for
//!   the machine's own script by MAC address.
//! - `GET /ipxe/<mac>`: the machine's newest network-boot media that is
//!   **armed** (`lifeline-receiver bootos arm ID`, for a window) and whose
//!   token is unused: its kernel, initrd and command line. A MAC no machine
//!   has, or a machine with no media armed, gets a script that says so on
//!   the machine's screen (and what to run on the receiver), with no token,
//!   and exits to the firmware's next boot device.
//! - `GET /boot/<secret>/vmlinuz`, `GET /boot/<secret>/initrd.img`: the
//!   files of the media whose random URL secret (32 hex digits, never its
//!   sequential id) is `<secret>`, while it is armed, unused and not
//!   revoked. ISO and USB media have no URL: they are never served.
//!
//! Plain HTTP: firmware speaks nothing else, so nothing here is secret but
//! the one-time token, and that only inside the armed window: the initrd
//! holds no repository password (the boot session's reply brings it, over
//! TLS, see [`crate::sessions`]). A token is worth one boot session; if the
//! machine asks for its script again inside the window from another address
//! than its token was claimed from, someone else booted it first: a
//! `boot token alarm` in the audit trail and the log. The receiver's API
//! stays TLS-only.
//!
//! The server is hyper's HTTP/1.1 (GET only, one request per connection),
//! bounded for a port anyone on the boot network reaches ([`HttpLimits`]):
//! a request head of at most 16 KiB, read within 10 s; connections capped in
//! all and per address; every connection closed after 10 minutes at most.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use lifeline_store::refusals::RefusalAudit;
use lifeline_store::throttle::Throttle;
use tokio::net::TcpListener;
use tracing::{info, warn};

use lifeline_store::db::boot::{normalize_mac, BOOT_TOKEN_ALARM};
use lifeline_store::{Db, StoreLayout};

use crate::budget::{self, AddressBudget, TotalBudget};

/// Longest request head read (hyper's smallest buffer is 8 KiB).
const MAX_HEAD: usize = 16 << 10;

/// Bounds on the network-boot listener: plain HTTP that anyone on the boot
/// network reaches.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections in all; more are closed on accept.
    pub max_connections: usize,
    /// Open connections from one address.
    pub max_connections_per_ip: usize,
    /// Time to send the request head (a slow head is cut off).
    pub head_timeout: Duration,
    /// Longest a connection stays open, a file download included (an
    /// emulated machine fetches a 60 MB initrd in about 20 s).
    pub max_time: Duration,
    /// Scripts by MAC address (`/ipxe/<mac>`) one address (IPv6: one /64)
    /// may ask for at once...
    pub script_burst: u32,
    /// ... and per second after that. A machine asks once per boot; an
    /// attacker guessing the MAC of a machine whose media is armed asks
    /// millions of times.
    pub scripts_per_s: f64,
    /// Scripts by MAC address all addresses together may ask for at once...
    pub scripts_total_burst: u32,
    /// ... and per second after that: what an attacker with many addresses
    /// gets.
    pub scripts_total_per_s: f64,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 256,
            max_connections_per_ip: 8,
            head_timeout: Duration::from_secs(10),
            max_time: Duration::from_secs(600),
            // One boot a minute, after a burst of 10, for each address: a
            // MAC sweep of one vendor prefix (2^24) takes a year. A fleet of
            // 200 booting at once, in all; a sweep from many addresses
            // gets 20 guesses a second: 0.4 % of a vendor prefix in an hour
            // (the default armed window).
            script_burst: 10,
            scripts_per_s: 1.0 / 60.0,
            scripts_total_burst: 200,
            scripts_total_per_s: 20.0,
        }
    }
}

impl HttpLimits {
    /// The budgets of scripts by MAC address; `Err` says which is wrong.
    pub fn script_budgets(&self) -> Result<ScriptBudgets, String> {
        Ok(ScriptBudgets {
            per_address: AddressBudget::new(budget::quota(self.script_burst, self.scripts_per_s)?),
            total: TotalBudget::new(budget::quota(self.scripts_total_burst, self.scripts_total_per_s)?),
        })
    }
}

/// What scripts by MAC address one address, and all together, may still ask
/// for: the MAC of a machine whose media is armed is what its token is
/// hidden behind.
pub struct ScriptBudgets {
    per_address: AddressBudget,
    total: TotalBudget,
}

impl ScriptBudgets {
    fn take(&self, ip: IpAddr) -> bool {
        self.per_address.take(ip) && self.total.take()
    }
}

/// Open connections: in all and per address.
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; its place is given back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, ip: IpAddr, limits: &HttpLimits) -> Option<Slot> {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.per_ip.get(&ip).copied().unwrap_or(0);
        if o.total >= limits.max_connections || mine >= limits.max_connections_per_ip {
            return None;
        }
        o.total += 1;
        *o.per_ip.entry(ip).or_insert(0) += 1;
        Some(Slot { open: open.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total -= 1;
        if let Some(n) = o.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.per_ip.remove(&self.ip);
            }
        }
    }
}

static REFUSED: Throttle = Throttle::new();
static CUT: Throttle = Throttle::new();
static BUSY: Throttle = Throttle::new();

type Body = BoxBody<Bytes, std::io::Error>;

pub struct NetBoot {
    store: StoreLayout,
    db: Mutex<Db>,
    alarms: Arc<RefusalAudit>,
}

enum Reply {
    Script(String),
    File(PathBuf),
    NotFound(String),
}

impl NetBoot {
    pub fn new(store: &StoreLayout) -> anyhow::Result<NetBoot> {
        Ok(NetBoot {
            store: store.clone(),
            db: Mutex::new(Db::open(store.root())?),
            alarms: RefusalAudit::open(store.root())?,
        })
    }

    /// Serves until the process ends, within [`HttpLimits::default`].
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        self.serve_within(listener, HttpLimits::default()).await
    }

    /// Serves until the process ends, within `limits`.
    pub async fn serve_within(self: Arc<Self>, listener: TcpListener, limits: HttpLimits) {
        let budgets = match limits.script_budgets() {
            Ok(b) => Arc::new(b),
            Err(e) => return tracing::error!("network boot: not serving: the script budget: {e}"),
        };
        let open = Arc::new(Mutex::new(Open::default()));
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("network boot: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = Slot::take(&open, peer.ip(), &limits) else {
                REFUSED.hit(|more| warn!(%peer, more, "network boot: connection refused: too many open (in all or from this address)"));
                continue;
            };
            let this = self.clone();
            let budgets = budgets.clone();
            tokio::spawn(async move {
                let _slot = slot;
                this.serve_connection(conn, peer, limits, budgets).await
            });
        }
    }

    /// Serves one connection from `peer` on `io` within `limits` (its head
    /// timeout and longest time; the connection caps are the listener's):
    /// one GET request, answered, then closed. The one path every
    /// connection takes, also the seam the fuzz target
    /// (`receiver/fuzz`, `netboot_http`) drives with raw bytes.
    pub async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        peer: SocketAddr,
        limits: HttpLimits,
        budgets: Arc<ScriptBudgets>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            let budgets = budgets.clone();
            async move { Ok::<_, Infallible>(this.respond(req, peer, &budgets).await) }
        });
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout)
            .max_buf_size(MAX_HEAD)
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service);
        match tokio::time::timeout(limits.max_time, served).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => CUT.hit(|more| info!(%peer, more, "network boot: connection ended: {e}")),
            Err(_) => CUT.hit(|more| warn!(%peer, more, "network boot: connection cut after {:?}", limits.max_time)),
        }
    }

    async fn respond(&self, req: Request<Incoming>, peer: SocketAddr, budgets: &ScriptBudgets) -> Response<Body> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let path = req.uri().path().to_string();
        let host = req.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        if path.starts_with("/ipxe/") && !budgets.take(peer.ip()) {
            BUSY.hit(|more| {
                warn!(
                    %peer, more,
                    "network boot: a script by MAC address refused: more asked for than the budget allows \
                     (in all, or from this address); if these are your machines booting, raise it"
                )
            });
            // A machine behind a busy address asks again later by itself.
            return text(
                StatusCode::OK,
                format!(
                    "#!ipxe\necho lifeline: the receiver is busy, asking again in 30 seconds\nsleep 30\nchain http://{host}/ipxe/${{net0/mac}}\n"
                ),
            );
        }
        let reply = {
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            self.route(&db, &path, &host, peer.ip())
        };
        match reply {
            Reply::Script(s) => {
                info!(%peer, path, "network boot: script");
                text(StatusCode::OK, s)
            }
            Reply::NotFound(why) => {
                info!(%peer, path, "network boot: {why}");
                text(StatusCode::NOT_FOUND, format!("{why}\n"))
            }
            Reply::File(p) => match tokio::fs::File::open(&p).await {
                Ok(f) => {
                    let len = f.metadata().await.map_or(0, |m| m.len());
                    info!(%peer, path, bytes = len, "network boot: file");
                    let body = StreamBody::new(tokio_util::io::ReaderStream::new(f).map_ok(Frame::data));
                    Response::builder()
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len)
                        .body(BodyExt::boxed(body))
                        .expect("a valid response")
                }
                Err(e) => {
                    warn!(%peer, path, "network boot: cannot open {}: {e}", p.display());
                    text(StatusCode::NOT_FOUND, "no boot media is served here\n".into())
                }
            },
        }
    }

    fn route(&self, db: &Db, path: &str, host: &str, peer: IpAddr) -> Reply {
        let base = format!("http://{host}");
        if path == "/boot.ipxe" {
            return Reply::Script(format!(
                "#!ipxe\necho lifeline: asking {base} for this machine's boot OS\nchain {base}/ipxe/${{net0/mac}}\n"
            ));
        }
        if let Some(mac) = path.strip_prefix("/ipxe/") {
            // iPXE escapes the colons of ${net0/mac}.
            let mac = mac.replace("%3A", ":").replace("%3a", ":");
            return Reply::Script(self.machine_script(db, &mac, &base, peer));
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if let ["boot", secret, file @ ("vmlinuz" | "initrd.img")] = parts[..] {
            // One answer for every miss: which media exist is nobody's business.
            let none = || Reply::NotFound("no boot media is served here".into());
            if secret.len() != 32 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
                return none();
            }
            return match db.served_media(secret) {
                Ok(Some(m)) => Reply::File(self.store.boot_media(m.id).join(file)),
                Ok(None) => none(),
                Err(e) => {
                    warn!("network boot: database: {e:#}");
                    none()
                }
            };
        }
        Reply::NotFound("not found".into())
    }

    fn machine_script(&self, db: &Db, mac: &str, base: &str, peer: IpAddr) -> String {
        let refuse = |msg: &str| format!("#!ipxe\necho lifeline: {msg}\nsleep 10\nexit 1\n");
        let Ok(mac) = normalize_mac(mac) else { return refuse(&format!("{mac:?} is not a MAC address")) };
        // One answer to anyone for every MAC that gets no media, whether a
        // machine has it or not, so that the port tells nobody which MACs
        // this receiver knows or which machines have media: the reason is
        // for the operator, in the log.
        let nothing = |why: String| {
            info!(%peer, mac, "network boot: no media served: {why}");
            refuse(
                "no boot media is armed for this machine here. On the receiver: \
                 lifeline-receiver bootos list, then bootos arm ID (or bootos make MACHINE --arm)",
            )
        };
        let machine = match db.machine_by_mac(&mac) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return nothing(format!("no machine has this MAC: lifeline-receiver machine add NAME --mac {mac}"))
            }
            Err(e) => return refuse(&format!("the receiver cannot read its database: {e:#}")),
        };
        let media = match db.armed_netboot(&machine) {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.check_claimed(db, &machine, peer);
                return nothing(match db.pending_netboot(&machine) {
                    Ok(Some(m)) if m.url_secret.is_some() => {
                        format!(
                            "machine {machine}'s media #{} is not armed: lifeline-receiver bootos arm {}",
                            m.id, m.id
                        )
                    }
                    _ => format!(
                        "machine {machine} has no unused network-boot media (each boots once): \
                         lifeline-receiver bootos make {machine} --arm"
                    ),
                });
            }
            Err(e) => return refuse(&format!("the receiver cannot read its database: {e:#}")),
        };
        let cmdline = match crate::bootmedia::cmdline_of(&self.store, media.id) {
            Ok(c) => c,
            Err(e) => return refuse(&format!("boot media #{}: {e:#}", media.id)),
        };
        let dir = format!("{base}/boot/{}", media.url_secret.as_deref().unwrap_or_default());
        // (No '#' in an echo: iPXE takes it for a comment.)
        format!(
            "#!ipxe\necho lifeline: machine {machine}, boot media {} ({} {})\nkernel {dir}/vmlinuz initrd=initrd.img {cmdline}\ninitrd {dir}/initrd.img\nboot\n",
            media.id, media.mode, media.style
        )
    }

    /// The machine asks for its script inside the armed window of media
    /// whose token was claimed from another address: someone else booted
    /// it (a token read off the wire): an alarm.
    fn check_claimed(&self, db: &Db, machine: &str, peer: IpAddr) {
        let Ok(Some(m)) = db.claimed_while_armed(machine) else { return };
        if m.used_from == peer.to_string() {
            return; // the machine itself, booting again
        }
        let detail = format!(
            "#{} asked for by {peer}, but its token was claimed at {} from {}",
            m.id,
            m.used_at.as_deref().unwrap_or("?"),
            m.used_from
        );
        warn!(machine, "{BOOT_TOKEN_ALARM}: {detail}");
        // Anyone may ask for the script again and again: aggregated.
        self.alarms.note(Some(machine), BOOT_TOKEN_ALARM, &peer.to_string(), &detail);
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed())
        .expect("a valid response")
}
