//! Issue 14, finding 6 (TFTP): what requests from unverified UDP sources
//! make the TFTP server send and spend, over real sockets on loopback.

use std::time::{Duration, Instant};

use lifeline_boot_server::tftp::{serve, TftpLimits};
use tokio::net::UdpSocket;

const MIB: usize = 1 << 20;

fn rss_mib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() / 1024
}

fn rrq(name: &str, options: &[&str]) -> Vec<u8> {
    let mut p = 1u16.to_be_bytes().to_vec();
    for s in [name, "octet"].iter().chain(options) {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

/// A TFTP server on loopback serving a directory with a 4 MiB file.
async fn server(limits: TftpLimits) -> (tempfile::TempDir, std::net::SocketAddr) {
    let root = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.path().join("big.bin"), &data).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(serve(sock, root.path().to_path_buf(), limits));
    (root, addr)
}

/// Everything `sock` receives within `window`, never acknowledging: (bytes,
/// packets).
async fn swallow(sock: &UdpSocket, window: Duration) -> (usize, usize) {
    let mut buf = vec![0u8; 2048];
    let (mut bytes, mut packets) = (0, 0);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
        bytes += n;
        packets += 1;
    }
    (bytes, packets)
}

/// A request from a source that never answers gets one packet, sent once.
/// (Before: a 45-byte request brought 2,720 bytes, the first block five
/// times over.)
#[tokio::test]
async fn no_amplification_to_unverified_sources() {
    let (_root, addr) = server(TftpLimits::default()).await;
    for options in [&[][..], &["tsize", "0"][..], &["blksize", "1428", "tsize", "0"][..]] {
        let victim = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let req = rrq("big.bin", options);
        victim.send_to(&req, addr).await.unwrap();
        let (bytes, packets) = swallow(&victim, Duration::from_millis(3500)).await;
        println!("request of {} bytes with {options:?}: {bytes} bytes in {packets} packets back", req.len());
        assert_eq!(packets, 1, "{options:?}");
        assert!(bytes <= 516, "{options:?}: {bytes} bytes");
    }
}

/// 4,000 requests from one address: most get no answer, and the server's
/// memory does not grow with them. (Before: a task and a whole-file read
/// each, +900 MiB.) A well-behaved client still gets the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_bounded() {
    let (root, addr) = server(TftpLimits::default()).await;
    let before = rss_mib();
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let req = rrq("big.bin", &["blksize", "1428"]);
    let started = Instant::now();
    for _ in 0..4000 {
        flood.send_to(&req, addr).await.unwrap();
    }
    let (bytes, packets) = swallow(&flood, Duration::from_secs(2)).await;
    let grown = rss_mib().saturating_sub(before);
    println!("4000 requests in {:?}: {packets} packets ({bytes} bytes) back; RSS +{grown} MiB", started.elapsed());
    assert!(packets <= 40, "{packets} answers");
    assert!(grown < 64, "RSS grew by {grown} MiB");
    // Another address is not held back by the flood, and gets every byte.
    let client = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    client.send_to(&rrq("big.bin", &["blksize", "1428"]), addr).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf)).await.unwrap().unwrap();
        let (op, block) = (u16::from_be_bytes([buf[0], buf[1]]), [buf[2], buf[3]]);
        let ack = [0, 4, if op == 6 { 0 } else { block[0] }, if op == 6 { 0 } else { block[1] }];
        client.send_to(&ack, from).await.unwrap();
        if op == 3 {
            got.extend_from_slice(&buf[4..n]);
            if n < 4 + 1428 {
                break;
            }
        } else {
            assert_eq!(op, 6, "an OACK, then data");
        }
    }
    assert!(got == std::fs::read(root.path().join("big.bin")).unwrap(), "the file differs");
}
