//! The network-boot HTTP port faces anyone on the boot network (issue 14,
//! finding 5: 3 connections sending 512 MiB request lines took 1.5 GiB, and
//! idle connections stayed open for good). Attackers over real sockets on
//! loopback: a slow head, a huge head, too many connections from one
//! address; a legitimate request from another address still gets its
//! script.

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
    let mut s = connect(from, to);
    s.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: boot\r\n\r\n").unwrap();
    read_all(s)
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
