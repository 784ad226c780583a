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
//! A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, nothing parsed but the request line and `Host`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use lifeline_store::db::boot::{normalize_mac, BOOT_TOKEN_ALARM};
use lifeline_store::{Db, StoreLayout};

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;

pub struct NetBoot {
    store: StoreLayout,
    db: Mutex<Db>,
}

enum Reply {
    Script(String),
    File(PathBuf),
    NotFound(String),
}

impl NetBoot {
    pub fn new(store: &StoreLayout) -> anyhow::Result<NetBoot> {
        Ok(NetBoot { store: store.clone(), db: Mutex::new(Db::open(store.root())?) })
    }

    /// Serves until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("network boot: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.handle(conn).await {
                    warn!(%peer, "network boot: {e}");
                }
            });
        }
    }

    async fn handle(&self, conn: TcpStream) -> std::io::Result<()> {
        let peer = conn.peer_addr()?;
        let mut conn = BufReader::new(conn);
        let mut head = Vec::new();
        let (mut path, mut host) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await? == 0 || head.len() > MAX_HEAD {
                return Ok(());
            }
            head.extend_from_slice(line.as_bytes());
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if path.is_empty() {
                let mut parts = line.split(' ');
                if parts.next() != Some("GET") {
                    return respond(conn.get_mut(), "405 Method Not Allowed", "text/plain", b"GET only\n").await;
                }
                path = parts.next().unwrap_or("/").to_string();
            } else if let Some(v) = line.strip_prefix("Host:").or_else(|| line.strip_prefix("host:")) {
                host = v.trim().to_string();
            }
        }
        let reply = {
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            self.route(&db, &path, &host, peer.ip())
        };
        let stream = conn.get_mut();
        match reply {
            Reply::Script(s) => {
                info!(%peer, path, "network boot: script");
                respond(stream, "200 OK", "text/plain", s.as_bytes()).await
            }
            Reply::NotFound(why) => {
                info!(%peer, path, "network boot: {why}");
                respond(stream, "404 Not Found", "text/plain", format!("{why}\n").as_bytes()).await
            }
            Reply::File(p) => {
                let mut f = tokio::fs::File::open(&p).await?;
                let len = f.metadata().await?.len();
                info!(%peer, path, bytes = len, "network boot: file");
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).await?;
                tokio::io::copy(&mut f, stream).await?;
                stream.shutdown().await
            }
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
        let refuse = |msg: String| format!("#!ipxe\necho lifeline: {msg}\nsleep 10\nexit 1\n");
        let Ok(mac) = normalize_mac(mac) else { return refuse(format!("{mac:?} is not a MAC address")) };
        let machine = match db.machine_by_mac(&mac) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return refuse(format!(
                    "no machine has MAC {mac} at this receiver: lifeline-receiver machine add NAME --mac {mac}, then bootos make NAME"
                ))
            }
            Err(e) => return refuse(format!("the receiver cannot read its database: {e:#}")),
        };
        let media = match db.armed_netboot(&machine) {
            Ok(Some(m)) => m,
            Ok(None) => {
                self.check_claimed(db, &machine, peer);
                return match db.pending_netboot(&machine) {
                    Ok(Some(m)) if m.url_secret.is_some() => refuse(format!(
                        "no boot media is armed for machine {machine}: lifeline-receiver bootos arm {} (for an hour)",
                        m.id
                    )),
                    _ => refuse(format!(
                        "no boot media waits for machine {machine} (each boots once): lifeline-receiver bootos make {machine} --arm"
                    )),
                };
            }
            Err(e) => return refuse(format!("the receiver cannot read its database: {e:#}")),
        };
        let cmdline = match crate::bootmedia::cmdline_of(&self.store, media.id) {
            Ok(c) => c,
            Err(e) => return refuse(format!("boot media #{}: {e:#}", media.id)),
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
        if let Err(e) = db.boot_token_alarm(machine, &detail) {
            warn!(machine, "cannot audit a {BOOT_TOKEN_ALARM}: {e:#}");
        }
    }
}

async fn respond(s: &mut TcpStream, status: &str, ty: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.shutdown().await
}
