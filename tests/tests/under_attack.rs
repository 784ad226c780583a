//! The receiver under attack while it works (issue 14's load test), real
//! processes over TLS on loopback: 1,000 hostile connections from 40
//! loopback addresses (127.0.1.x) — a third idle, a third trickling a TLS
//! handshake a byte a second, a third presenting a made-up credential and
//! streaming batches of 256 KiB at `Replicate` — each reconnecting as soon as the
//! receiver closes it, while a real agent on 127.0.0.1 replicates one file
//! every 20 ms. Its lag (from `write(2)` returning to the mirror holding
//! the bytes) must stay p99 < 100 ms and the receiver's RSS under 512 MiB,
//! with the hostile connections really held open (at least 900 at once).
//!
//! The lag is measured the same way before the attack, for comparison
//! (printed, not asserted).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline_core::credential::Credential;
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::{op, Chunk, FileData, Op, OpBatch};
use lifeline_tests::{preflight, Rig, ScratchFs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const HOSTILE: usize = 1000;
/// Source addresses of the attackers: 25 connections each, under the
/// receiver's per-address cap (64), so that the total is what is tested.
const ADDRESSES: usize = 40;
const WRITES: usize = 600;
const EVERY: Duration = Duration::from_millis(20);

/// What the attackers did, counted.
#[derive(Default)]
struct Tally {
    open: AtomicUsize,
    peak: AtomicUsize,
    connects: AtomicUsize,
    refused_calls: AtomicUsize,
    stop: AtomicBool,
}

impl Tally {
    fn opened(&self) {
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.connects.fetch_add(1, Ordering::SeqCst);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (i % ADDRESSES) as u8))
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// Connects and says nothing, again and again.
async fn idle(from: IpAddr, to: SocketAddr, tally: Arc<Tally>) {
    while !tally.stopping() {
        let Ok(mut conn) = connect_from(from, to).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.opened();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await;
        tally.closed();
    }
}

/// Starts a TLS handshake (a ClientHello record header) and trickles a byte
/// a second.
async fn slow_handshake(from: IpAddr, to: SocketAddr, tally: Arc<Tally>) {
    while !tally.stopping() {
        let Ok(mut conn) = connect_from(from, to).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.opened();
        let mut hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]
            .into_iter()
            .chain(std::iter::repeat(7));
        while !tally.stopping() {
            if conn.write_all(&[hello.next().unwrap()]).await.is_err() {
                break;
            }
            // The receiver closing the connection shows as a read of 0.
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
                break;
            }
        }
        tally.closed();
    }
}

/// A TLS connection with a made-up credential for the rig's machine, calling
/// `Replicate` with 256 KiB batches until refused, again and again on the
/// same connection while the receiver keeps it.
async fn bogus_caller(from: IpAddr, url: String, ca: Vec<u8>, machine: String, tally: Arc<Tally>) {
    let token = Credential::generate(&machine).token();
    let chunk = vec![0x5au8; 256 << 10];
    while !tally.stopping() {
        let endpoint = Endpoint::from_shared(url.clone())
            .unwrap()
            .local_address(Some(from))
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))
            .unwrap();
        let Ok(channel) = endpoint.connect().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.opened();
        let mut client = ReplicationClient::new(channel).max_encoding_message_size(lifeline_proto::MAX_MESSAGE);
        while !tally.stopping() {
            let chunk = chunk.clone();
            let batches = tokio_stream::iter(1u64..).map(move |seq| OpBatch {
                ops: vec![Op {
                    seq,
                    path: format!("/srv/forged-{seq}").into_bytes(),
                    kind: Some(op::Kind::Data(FileData {
                        chunks: vec![Chunk { offset: 0, data: chunk.clone() }],
                        size: chunk.len() as u64,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
            });
            let mut req = tonic::Request::new(batches);
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            match client.replicate(req).await {
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    tally.refused_calls.fetch_add(1, Ordering::SeqCst);
                }
                // The connection is gone (closed by the receiver): anew.
                Err(_) => break,
                Ok(_) => panic!("a made-up credential was let in"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tally.closed();
    }
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Writes `WRITES` files, one every `EVERY`, each waited for in the mirror:
/// the lags, sorted.
fn replicate(src: &Path, mirror: &Path, tag: &str) -> Vec<Duration> {
    let mut lags = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let started = Instant::now();
        let name = format!("{tag}-{i}");
        let data = format!("{name} {}\n", "x".repeat(i % 4000));
        std::fs::write(src.join(&name), &data).unwrap();
        let written = Instant::now();
        let target = mirror.join(&name);
        loop {
            if std::fs::read(&target).is_ok_and(|b| b == data.as_bytes()) {
                break;
            }
            assert!(written.elapsed() < Duration::from_secs(30), "{name} never reached the mirror");
            std::thread::sleep(Duration::from_micros(500));
        }
        lags.push(written.elapsed());
        if let Some(rest) = EVERY.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    lags.sort();
    lags
}

fn pct(lags: &[Duration], p: f64) -> f64 {
    let i = ((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len()) - 1;
    lags[i].as_secs_f64() * 1000.0
}

#[test]
fn an_agent_keeps_replicating_under_a_thousand_hostile_connections() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
    let mut rig = Rig::new("under-attack", ScratchFs::tmpfs(256));
    rig.start_agent();
    rig.wait_ready();
    let quiet = replicate(&rig.src, &rig.mirror, "quiet");

    let to = SocketAddr::from(([127, 0, 0, 1], rig.receiver.port()));
    let (_, ca) = rig.receiver.credentials(&rig.machine);
    let ca = std::fs::read(ca).unwrap();
    let url = rig.receiver.url();
    let machine = rig.machine.clone();
    let tally = Arc::new(Tally::default());
    let attack = {
        let tally = tally.clone();
        std::thread::spawn(move || {
            // The attackers stand for machines elsewhere on the Internet,
            // whose CPU is not the receiver's; here they share its cores, so
            // they run at the lowest priority (their threads inherit it) and
            // take what the receiver and the agent leave. What the receiver
            // spends on them is still the receiver's.
            // SAFETY: setpriority on the calling thread (who = 0) only.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let tasks: Vec<_> = (0..HOSTILE)
                    .map(|i| {
                        let (from, tally) = (source(i), tally.clone());
                        match i % 3 {
                            0 => tokio::spawn(idle(from, to, tally)),
                            1 => tokio::spawn(slow_handshake(from, to, tally)),
                            _ => tokio::spawn(bogus_caller(from, url.clone(), ca.clone(), machine.clone(), tally)),
                        }
                    })
                    .collect();
                while !tally.stopping() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                for t in tasks {
                    t.abort();
                }
            });
        })
    };
    // Let the attack build up (every attacker connected) before measuring.
    let built = lifeline_tests::wait_until(Duration::from_secs(60), || tally.open.load(Ordering::SeqCst) >= 900);
    let pid = rig.receiver.pid();
    let peak_rss = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (peak_rss, tally) = (peak_rss.clone(), tally.clone());
        std::thread::spawn(move || {
            while !tally.stopping() {
                peak_rss.fetch_max(rss_mib(pid) as usize, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let attacked = replicate(&rig.src, &rig.mirror, "attacked");
    let open_at_end = tally.open.load(Ordering::SeqCst);
    tally.stop.store(true, Ordering::SeqCst);
    attack.join().unwrap();
    sampler.join().unwrap();

    let peak_rss = peak_rss.load(Ordering::SeqCst);
    let peak_open = tally.peak.load(Ordering::SeqCst);
    println!(
        "quiet: lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; under attack ({peak_open} hostile connections at most, \
         {open_at_end} at the end, {} connects, {} forged calls refused): lag p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         receiver RSS at most {peak_rss} MiB",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        pct(&quiet, 1.0),
        tally.connects.load(Ordering::SeqCst),
        tally.refused_calls.load(Ordering::SeqCst),
        pct(&attacked, 0.5),
        pct(&attacked, 0.99),
        pct(&attacked, 1.0),
    );
    assert!(built && peak_open >= 900, "the attack never held 900 connections (at most {peak_open})");
    assert!(tally.refused_calls.load(Ordering::SeqCst) > 0, "no forged call was made");
    assert!(pct(&attacked, 0.99) < 100.0, "lag p99 {:.1} ms under attack", pct(&attacked, 0.99));
    assert!(peak_rss < 512, "the receiver grew to {peak_rss} MiB under attack");
    // Nothing forged reached any mirror.
    let forged = walkdir::WalkDir::new(rig.receiver.store())
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("forged-"))
        .count();
    assert_eq!(forged, 0, "forged files in the store");
    rig.assert_identical(Duration::from_secs(30), "after the attack");
}
