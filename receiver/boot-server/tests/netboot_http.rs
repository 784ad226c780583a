//! The network-boot HTTP port faces anyone on the boot network (issue 14,
//! finding 5: 3 connections sending 512 MiB request lines took 1.5 GiB, and
//! idle connections stayed open for good). Attackers over real sockets on
//! loopback: a slow head, a huge head, too many connections from one
//! address; a legitimate request from another address still gets its
//! script. And the MAC sweep of finding 1: scripts by MAC address tell a
//! known MAC from an unknown one by nothing, and are rationed per address
//! and in all.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline_boot_server::netboot::{HttpLimits, NetBoot};
use lifeline_store::StoreLayout;

const LIMITS: HttpLimits = HttpLimits {
    max_connections: 16,
    max_connections_per_ip: 2,
    head_timeout: Duration::from_secs(1),
    max_time: Duration::from_secs(30),
    script_burst: 3,
    scripts_per_s: 0.01,
    scripts_total_burst: 5,
    scripts_total_per_s: 0.01,
};

async fn server() -> (tempfile::TempDir, SocketAddr) {
    let store = tempfile::tempdir().unwrap();
    let netboot = Arc::new(NetBoot::new(&StoreLayout::new(store.path())).unwrap());
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(netboot.serve_within(listener, LIMITS));
    (store, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Connects from `from` (127.0.0.x) to `to`.
fn connect(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Everything until the server closes the connection.
fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get_script(from: [u8; 4], to: SocketAddr) -> String {
    get(from, to, "/boot.ipxe")
}

fn get(from: [u8; 4], to: SocketAddr, path: &str) -> String {
    let mut s = connect(from, to);
    write!(s, "GET {path} HTTP/1.1\r\nHost: boot\r\n\r\n").unwrap();
    read_all(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_by_mac_tell_nothing_and_are_rationed() {
    let (store, addr) = server().await;
    {
        let mut db = lifeline_store::Db::open(store.path()).unwrap();
        let pc1 = lifeline_core::credential::MachineName::new("pc1").unwrap();
        db.add_machine(&pc1, &[7; 32], "").unwrap();
        db.set_mac(&pc1, Some("52:54:00:00:00:01")).unwrap();
    }
    tokio::task::spawn_blocking(move || {
        let body = |answer: String| answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(answer);
        // 127.0.0.3 (LIMITS: a burst of 3 each, 5 in all): a known MAC with
        // no media and two unknown ones get the very same answer.
        let known = body(get([127, 0, 0, 3], addr, "/ipxe/52%3A54%3A00%3A00%3A00%3A01"));
        assert!(known.contains("no boot media is armed") && !known.contains("pc1"), "{known}");
        for mac in ["52:54:00:00:00:02", "02:00:00:00:00:01"] {
            assert_eq!(body(get([127, 0, 0, 3], addr, &format!("/ipxe/{mac}"))), known, "unknown MAC {mac}");
        }
        // Past its burst, the address is told to come back, with no lookup.
        let busy = body(get([127, 0, 0, 3], addr, "/ipxe/52:54:00:00:00:01"));
        assert!(busy.contains("busy") && busy.contains("chain http://boot/ipxe/${net0/mac}"), "{busy}");
        // Another address has its own budget, until the total is spent.
        for _ in 0..2 {
            assert_eq!(body(get([127, 0, 0, 4], addr, "/ipxe/52:54:00:00:00:03")), known);
        }
        assert!(body(get([127, 0, 0, 4], addr, "/ipxe/52:54:00:00:00:03")).contains("busy"));
        assert!(body(get([127, 0, 0, 5], addr, "/ipxe/52:54:00:00:00:03")).contains("busy"), "the total is spent");
        // The chain script is not rationed.
        assert!(get_script([127, 0, 0, 3], addr).contains("chain http://boot/ipxe/"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_huge_and_too_many_connections_are_cut_off() {
    let (_store, addr) = server().await;
    tokio::task::spawn_blocking(move || {
        assert!(get_script([127, 0, 0, 1], addr).contains("chain http://boot/ipxe/"));

        // A head that never ends: cut off after the head timeout.
        let t = Instant::now();
        let mut slow = connect([127, 0, 0, 1], addr);
        slow.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: boot\r\n").unwrap();
        let _ = read_all(slow);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "slow head cut after {took:?}");

        // A head of 1 MiB: refused once the buffer is full, never read whole.
        let mut huge = connect([127, 0, 0, 1], addr);
        let mut line = b"GET /".to_vec();
        line.resize(1 << 20, b'a');
        let sent = huge.write_all(&line);
        let answer = read_all(huge);
        assert!(sent.is_err() || answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer:.80}");

        // Two idle connections from 127.0.0.1: the third from it is closed
        // at once, while 127.0.0.2 still gets its script.
        let idle: Vec<TcpStream> = (0..2).map(|_| connect([127, 0, 0, 1], addr)).collect();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let mut third = connect([127, 0, 0, 1], addr);
        let _ = third.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: boot\r\n\r\n");
        let answer = read_all(third);
        assert!(answer.is_empty() && t.elapsed() < Duration::from_secs(1), "over the per-address cap: {answer:?}");
        assert!(get_script([127, 0, 0, 2], addr).contains("chain http://boot/ipxe/"));
        // The idle ones go after the head timeout, and the address may connect again.
        for s in idle {
            let _ = read_all(s);
        }
        assert!(get_script([127, 0, 0, 1], addr).contains("#!ipxe"));
    })
    .await
    .unwrap();
}
