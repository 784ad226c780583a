//! A read-only TFTP server for PXE firmware that cannot speak HTTP
//! (`lifeline-receiver --tftp-listen`): it serves the iPXE binaries
//! (`undionly.kpxe` for BIOS PXE, `ipxe.efi`/`snponly.efi` for UEFI) from
//! one directory, by default Debian's ipxe package's `/usr/lib/ipxe`. The
//! firmware loads iPXE, which then chains `http://RECEIVER/boot.ipxe` (see
//! `crate::netboot`; the DHCP server must hand iPXE that URL).
//!
//! RFC 1350 read requests in octet mode, with the blksize (RFC 2348) and
//! tsize (RFC 2349) options that PXE ROMs ask for. A name is one plain file
//! name in the directory: no paths, nothing written, nothing listed.
//!
//! UDP sources are not verified, so what one request can make the server
//! send is bounded ([`TftpLimits`]): a source that has not acknowledged
//! anything gets its first packet once (no retransmission), each address
//! has a budget of requests (a burst, then a steady rate), transfers in
//! flight are capped in all and per address (the requests past a limit get
//! no answer, and a warning is logged at most every 10 s), and files are
//! read block by block as they are sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeline_store::throttle::Throttle;

use crate::budget::{self, AddressBudget};
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tracing::{info, warn};

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// Largest file served (iPXE binaries are well under 1 MiB).
const MAX_FILE: u64 = 64 << 20;
const RETRIES: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(1);

/// What the TFTP server spends on requests (`lifeline-receiver serve`
/// flags `--tftp-*`).
#[derive(Debug, Clone)]
pub struct TftpLimits {
    /// Transfers in flight in all (`--tftp-max-transfers`).
    pub max_transfers: usize,
    /// Transfers in flight for one address (`--tftp-max-transfers-per-ip`).
    pub max_transfers_per_ip: usize,
    /// Requests one address may make at once (`--tftp-burst`)...
    pub burst: u32,
    /// ... and per second after that (`--tftp-requests-per-s`).
    pub per_second: f64,
}

impl Default for TftpLimits {
    fn default() -> TftpLimits {
        // A PXE boot asks for a file's size and then the file, a few times
        // over if it retries: a few requests per machine.
        TftpLimits { max_transfers: 64, max_transfers_per_ip: 4, burst: 32, per_second: 2.0 }
    }
}

impl TftpLimits {
    /// The request budget of each address; `Err` says which flag is wrong.
    pub fn quota(&self) -> Result<governor::Quota, String> {
        budget::quota(self.burst, self.per_second).map_err(|e| format!("--tftp-burst/--tftp-requests-per-s: {e}"))
    }
}

/// Each address's request budget and transfers in flight.
struct Admission {
    limits: TftpLimits,
    budget: AddressBudget,
    slots: Arc<Semaphore>,
    /// Transfers in flight per address; an address leaves the map with its
    /// last transfer, so the map is no bigger than the transfers in flight.
    in_flight: Mutex<HashMap<IpAddr, usize>>,
    dropped: Throttle,
}

/// A transfer's place: freed when dropped.
struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut in_flight = self.admission.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_flight.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    fn new(limits: TftpLimits) -> Result<Arc<Admission>, String> {
        Ok(Arc::new(Admission {
            budget: AddressBudget::new(limits.quota()?),
            slots: Arc::new(Semaphore::new(limits.max_transfers)),
            limits,
            in_flight: Mutex::default(),
            dropped: Throttle::new(),
        }))
    }

    /// A place for a transfer to `ip`, or None (the request gets no answer).
    fn admit(self: &Arc<Admission>, ip: IpAddr) -> Option<Admitted> {
        let why = if !self.budget.take(ip) {
            "more requests than --tftp-burst/--tftp-requests-per-s allow"
        } else {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let mine = in_flight.get(&ip).copied().unwrap_or(0);
            if mine >= self.limits.max_transfers_per_ip {
                "as many transfers in flight as --tftp-max-transfers-per-ip allows"
            } else {
                match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        *in_flight.entry(ip).or_insert(0) += 1;
                        return Some(Admitted { admission: self.clone(), ip, _slot: slot });
                    }
                    Err(_) => "as many transfers in flight as --tftp-max-transfers allows",
                }
            }
        };
        self.dropped.hit(|more| {
            warn!(
                "tftp: a request from {ip} dropped: {why} (raise it if these are your machines booting; \
                 {more} more dropped since the last warning)"
            )
        });
        None
    }
}

/// Serves `root` on `socket` until the process ends, within `limits`.
pub async fn serve(socket: UdpSocket, root: PathBuf, limits: TftpLimits) {
    let admission = match Admission::new(limits) {
        Ok(a) => a,
        Err(e) => return tracing::error!("tftp: not serving: {e}"),
    };
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!("tftp: {e}");
                continue;
            }
        };
        let Some(admitted) = admission.admit(peer.ip().to_canonical()) else { continue };
        let req = buf[..n].to_vec();
        let root = root.clone();
        tokio::spawn(async move {
            if let Err(e) = transfer(&root, &req, peer).await {
                warn!(%peer, "tftp: {e}");
            }
            drop(admitted);
        });
    }
}

/// The parts of a read request: file name and options.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub blksize: Option<usize>,
    pub tsize: bool,
}

/// Parses a read request; `Err` says why it is refused (sent back as a
/// TFTP error).
pub fn parse_request(p: &[u8]) -> Result<Request, String> {
    if p.len() < 4 || u16::from_be_bytes([p[0], p[1]]) != RRQ {
        return Err("only read requests are served".into());
    }
    let fields: Vec<&[u8]> = p[2..].split(|&b| b == 0).collect();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "a name or option is not UTF-8".to_string());
    let (Some(name), Some(mode)) = (fields.first(), fields.get(1)) else {
        return Err("malformed request".into());
    };
    let name = text(name)?;
    if !text(mode)?.eq_ignore_ascii_case("octet") {
        return Err("only octet mode is served".into());
    }
    let name = name.trim_start_matches('/').to_string();
    if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
        return Err(format!("{name:?} is not a file name served here"));
    }
    let mut r = Request { name, blksize: None, tsize: false };
    let mut it = fields[2..].iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match text(k)?.to_ascii_lowercase().as_str() {
            "blksize" => r.blksize = text(v)?.parse::<usize>().ok().map(|b| b.clamp(8, 1428)),
            "tsize" => r.tsize = true,
            _ => {}
        }
    }
    Ok(r)
}

async fn transfer(root: &Path, req: &[u8], peer: std::net::SocketAddr) -> std::io::Result<()> {
    // Each transfer has its own port (RFC 1350's transfer identifier).
    let sock = UdpSocket::bind((if peer.is_ipv4() { "0.0.0.0" } else { "::" }, 0)).await?;
    sock.connect(peer).await?;
    let req = match parse_request(req) {
        Ok(r) => r,
        Err(msg) => return send_error(&sock, 4, &msg).await,
    };
    let path = root.join(&req.name);
    let (mut file, size) = match tokio::fs::File::open(&path).await {
        Ok(f) => match f.metadata().await {
            Ok(md) if md.is_file() && md.len() <= MAX_FILE => (f, md.len()),
            _ => return send_error(&sock, 1, &format!("no file {} here", req.name)).await,
        },
        _ => return send_error(&sock, 1, &format!("no file {} here", req.name)).await,
    };
    info!(%peer, file = req.name, bytes = size, "tftp: sending");
    let block = req.blksize.unwrap_or(512);
    let mut buf = vec![0u8; 1500];
    // Until the client has acknowledged a packet, its address may be
    // forged: nothing is sent twice to it.
    let mut verified = false;
    if req.blksize.is_some() || req.tsize {
        let mut oack = OACK.to_be_bytes().to_vec();
        if let Some(b) = req.blksize {
            oack.extend_from_slice(format!("blksize\0{b}\0").as_bytes());
        }
        if req.tsize {
            oack.extend_from_slice(format!("tsize\0{size}\0").as_bytes());
        }
        if !exchange(&sock, &oack, 0, &mut buf, verified).await? {
            return Ok(()); // the client gave up (or only wanted tsize)
        }
        verified = true;
    }
    // Read as sent, one block at a time; the last block is shorter than
    // `block` (empty when the size divides).
    let mut pkt = Vec::with_capacity(4 + block);
    let mut n = 0u16;
    loop {
        n = n.wrapping_add(1); // wraps past 65535, as clients expect
        pkt.clear();
        pkt.extend_from_slice(&DATA.to_be_bytes());
        pkt.extend_from_slice(&n.to_be_bytes());
        let mut limited = (&mut file).take(block as u64);
        limited.read_to_end(&mut pkt).await?;
        let last = pkt.len() < 4 + block;
        if !exchange(&sock, &pkt, n, &mut buf, verified).await? {
            return Ok(());
        }
        verified = true;
        if last {
            break;
        }
    }
    Ok(())
}

/// Sends `pkt` until block `n` is acknowledged (once only to a client not
/// `verified` yet); false when the client stops answering or sends an error.
async fn exchange(sock: &UdpSocket, pkt: &[u8], n: u16, buf: &mut [u8], verified: bool) -> std::io::Result<bool> {
    let tries = if verified { RETRIES } else { 1 };
    for _ in 0..tries {
        sock.send(pkt).await?;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            match answer(&buf[..got?], n) {
                Answer::Acked => return Ok(true),
                Answer::Error => return Ok(false),
                Answer::Other => {}
            }
        }
    }
    Ok(false)
}

/// What a packet from the client says about the block sent last.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// It acknowledges that block.
    Acked,
    /// A TFTP error: the client gives up.
    Error,
    /// Anything else (a stale or duplicate ACK, garbage): ignored.
    Other,
}

/// Reads a packet the client sent while block `n` (0: the OACK) waits for
/// its ACK.
pub fn answer(p: &[u8], n: u16) -> Answer {
    let [a, b, c, d, ..] = *p else { return Answer::Other };
    match u16::from_be_bytes([a, b]) {
        ERROR => Answer::Error,
        ACK if u16::from_be_bytes([c, d]) == n => Answer::Acked,
        _ => Answer::Other,
    }
}

async fn send_error(sock: &UdpSocket, code: u16, msg: &str) -> std::io::Result<()> {
    let mut pkt = ERROR.to_be_bytes().to_vec();
    pkt.extend_from_slice(&code.to_be_bytes());
    pkt.extend_from_slice(msg.as_bytes());
    pkt.push(0);
    sock.send(&pkt).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(parts: &[&str]) -> Vec<u8> {
        let mut p = RRQ.to_be_bytes().to_vec();
        for s in parts {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn requests_name_one_plain_file() {
        let r = parse_request(&rrq(&["undionly.kpxe", "octet", "blksize", "1432", "tsize", "0"])).unwrap();
        assert_eq!(r, Request { name: "undionly.kpxe".into(), blksize: Some(1428), tsize: true });
        assert_eq!(parse_request(&rrq(&["/ipxe.efi", "OCTET"])).unwrap().name, "ipxe.efi");
        for bad in ["../etc/passwd", "a/b", ".hidden", ""] {
            assert!(parse_request(&rrq(&[bad, "octet"])).is_err(), "{bad}");
        }
        assert!(parse_request(&rrq(&["x", "netascii"])).is_err());
        let mut wrq = rrq(&["x", "octet"]);
        wrq[1] = 2;
        assert!(parse_request(&wrq).is_err(), "writes are refused");
    }

    #[test]
    fn only_the_ack_of_the_block_sent_counts() {
        assert_eq!(answer(&[0, 4, 0, 7], 7), Answer::Acked);
        assert_eq!(answer(&[0, 4, 0, 7, 9], 7), Answer::Acked, "trailing bytes are ignored");
        assert_eq!(answer(&[0, 4, 0, 6], 7), Answer::Other, "a stale ACK");
        assert_eq!(answer(&[0, 5, 0, 0, b'x', 0], 7), Answer::Error);
        assert_eq!(answer(&[0, 4, 0], 0), Answer::Other, "too short");
        assert_eq!(answer(&[], 0), Answer::Other);
    }
}
