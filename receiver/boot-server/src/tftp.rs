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

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UdpSocket;
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

/// Serves `root` on `socket` until the process ends.
pub async fn serve(socket: UdpSocket, root: PathBuf) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!("tftp: {e}");
                continue;
            }
        };
        let req = buf[..n].to_vec();
        let root = root.clone();
        tokio::spawn(async move {
            if let Err(e) = transfer(&root, &req, peer).await {
                warn!(%peer, "tftp: {e}");
            }
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
    let data = match tokio::fs::metadata(&path).await {
        Ok(md) if md.is_file() && md.len() <= MAX_FILE => tokio::fs::read(&path).await?,
        _ => return send_error(&sock, 1, &format!("no file {} here", req.name)).await,
    };
    info!(%peer, file = req.name, bytes = data.len(), "tftp: sending");
    let block = req.blksize.unwrap_or(512);
    let mut buf = vec![0u8; 1500];
    if req.blksize.is_some() || req.tsize {
        let mut oack = OACK.to_be_bytes().to_vec();
        if let Some(b) = req.blksize {
            oack.extend_from_slice(format!("blksize\0{b}\0").as_bytes());
        }
        if req.tsize {
            oack.extend_from_slice(format!("tsize\0{}\0", data.len()).as_bytes());
        }
        if !exchange(&sock, &oack, 0, &mut buf).await? {
            return Ok(()); // the client gave up (or only wanted tsize)
        }
    }
    // The last block is shorter than `block` (empty when the size divides).
    let blocks = data.len() / block + 1;
    for i in 0..blocks {
        let n = (i + 1) as u16; // wraps past 65535, as clients expect
        let chunk = &data[i * block..((i + 1) * block).min(data.len())];
        let mut pkt = DATA.to_be_bytes().to_vec();
        pkt.extend_from_slice(&n.to_be_bytes());
        pkt.extend_from_slice(chunk);
        if !exchange(&sock, &pkt, n, &mut buf).await? {
            return Ok(());
        }
    }
    Ok(())
}

/// Sends `pkt` until block `n` is acknowledged; false when the client stops
/// answering or sends an error.
async fn exchange(sock: &UdpSocket, pkt: &[u8], n: u16, buf: &mut [u8]) -> std::io::Result<bool> {
    for _ in 0..RETRIES {
        sock.send(pkt).await?;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            let got = got?;
            if got >= 4 {
                let op = u16::from_be_bytes([buf[0], buf[1]]);
                if op == ERROR {
                    return Ok(false);
                }
                if op == ACK && u16::from_be_bytes([buf[2], buf[3]]) == n {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
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
}
