//! The network-boot HTTP server as a client on the boot network reaches it:
//! the input is the raw bytes of one connection, written into a real hyper
//! HTTP/1.1 connection (`NetBoot::serve_connection`, the path every accepted
//! connection takes) over an in-memory pipe, served on a store with
//! machines whose MACs are known: one with armed media (its script and its
//! files at the secret URL), one with media made but not armed, one whose
//! token was claimed from another address (the alarm). hyper parses the
//! head; our code routes (`/boot.ipxe`, `/ipxe/<mac>` with its `%3A`
//! unescaping and MAC normalisation, `/boot/<secret>/<file>`).
//!
//! Checks: no panic, the connection ends, and what the server writes is
//! nothing or one well-formed HTTP/1.x response whose body has the length
//! it announces; a script is an iPXE script, a file is one of the media's.
#![no_main]
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lifeline_boot_server::netboot::{HttpLimits, NetBoot};
use lifeline_core::credential::MachineName;
use lifeline_receiver_fuzz::{runtime, scratch, write_seeds};
use lifeline_store::db::boot::BootMedia;
use lifeline_store::{Db, StoreLayout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const VMLINUZ: &[u8] = b"a kernel";
const INITRD: &[u8] = b"an initrd";

/// Short: an input is whole when it arrives (the pipe is closed after it),
/// so a timeout only ends a connection hyper still waits on.
const LIMITS: HttpLimits = HttpLimits {
    max_connections: 1,
    max_connections_per_ip: 1,
    head_timeout: Duration::from_secs(1),
    max_time: Duration::from_secs(5),
    // Each input gets a fresh budget (below): rationing is not what is
    // fuzzed, the parsing and routing behind it are.
    script_burst: 1,
    scripts_per_s: 1.0,
    scripts_total_burst: 1,
    scripts_total_per_s: 1.0,
};

fn netboot() -> &'static Arc<NetBoot> {
    static N: OnceLock<Arc<NetBoot>> = OnceLock::new();
    N.get_or_init(|| {
        let store = StoreLayout::create(scratch("netboot_http").join("store")).expect("a store");
        let mut db = Db::open(store.root()).expect("a database");
        let media = |machine: &str, secret: &str| BootMedia {
            cmdline: format!("lifeline.machine={machine}"),
            url_secret: Some(secret.to_owned()),
            ..BootMedia::new(machine, "netboot", "backup", "receiver")
        };
        for (i, name) in ["pc1", "pc2", "pc3"].into_iter().enumerate() {
            let m = MachineName::new(name).expect("a name");
            db.add_machine(&m, &[0; 32], "").expect("a machine");
            db.set_mac(&m, Some(&format!("52:54:00:12:34:5{i}"))).expect("its MAC");
        }
        // pc1: armed for as long as any run lasts.
        let id = db.add_boot_media(&media("pc1", SECRET), &[1; 32]).expect("media");
        db.arm_boot_media(id, 10 * 365 * 86400).expect("armed");
        let dir = store.boot_media(id);
        std::fs::create_dir_all(&dir).expect("its directory");
        std::fs::write(dir.join("cmdline"), "lifeline.machine=pc1 lifeline.token=t\n").expect("cmdline");
        std::fs::write(dir.join("vmlinuz"), VMLINUZ).expect("vmlinuz");
        std::fs::write(dir.join("initrd.img"), INITRD).expect("initrd");
        // pc2: made, not armed.
        db.add_boot_media(&media("pc2", "1123456789abcdef0123456789abcdef"), &[2; 32]).expect("media");
        // pc3: armed and claimed from another address.
        let id = db.add_boot_media(&media("pc3", "2123456789abcdef0123456789abcdef"), &[3; 32]).expect("media");
        db.arm_boot_media(id, 10 * 365 * 86400).expect("armed");
        db.claim_boot("pc3", &[3; 32], &[4; 32], "10.9.9.9").expect("claimed").expect("a session");
        Arc::new(NetBoot::new(&store).expect("the network-boot server"))
    })
}

/// Checks what the server wrote back.
fn check(out: &[u8]) {
    if out.is_empty() {
        return; // closed without an answer
    }
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("not an HTTP response ({other:?}): {:?}", String::from_utf8_lossy(out)),
    };
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    assert!(matches!(resp.version, Some(0 | 1)), "an HTTP/1.x version");
    let code = resp.code.expect("a status");
    let body = &out[head..];
    let length = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
    let length = length.map(|h| std::str::from_utf8(h.value).expect("ASCII").parse::<usize>().expect("a number"));
    let chunked = resp.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if !chunked {
        assert_eq!(length.unwrap_or(0), body.len(), "the body has the announced length");
    }
    match code {
        200 if body.starts_with(b"#!ipxe\n") => {}
        200 => assert!(body == VMLINUZ || body == INITRD, "a 200 that is neither a script nor a file: {body:?}"),
        400..=599 => {}
        _ => panic!("unexpected status {code}"),
    }
}

fuzz_target!(
    init: write_seeds(&[
        ("boot", b"GET /boot.ipxe HTTP/1.1\r\nHost: 10.0.2.2\r\n\r\n".to_vec()),
        ("script", b"GET /ipxe/52:54:00:12:34:50 HTTP/1.1\r\nHost: 10.0.2.2\r\n\r\n".to_vec()),
        ("script-escaped", b"GET /ipxe/52%3a54%3A00%3A12%3A34%3A51 HTTP/1.1\r\nHost: boot\r\n\r\n".to_vec()),
        ("claimed", b"GET /ipxe/52-54-00-12-34-52 HTTP/1.1\r\nHost: boot\r\n\r\n".to_vec()),
        ("file", format!("GET /boot/{SECRET}/vmlinuz HTTP/1.1\r\nHost: boot\r\n\r\n").into_bytes()),
        ("post", b"POST /boot.ipxe HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
    ]),
    |data: &[u8]| {
        let netboot = netboot().clone();
        let out = runtime().block_on(async move {
            let (client, server) = tokio::io::duplex(64 << 10);
            let peer = SocketAddr::from(([10, 0, 0, 1], 40000));
            let budgets = Arc::new(LIMITS.script_budgets().expect("valid budgets"));
            let served = tokio::spawn(netboot.serve_connection(server, peer, LIMITS, budgets));
            let (mut rx, mut tx) = tokio::io::split(client);
            let send = async {
                // The server may close before reading everything: not an error.
                let _ = tx.write_all(data).await;
                let _ = tx.shutdown().await;
            };
            let mut out = Vec::new();
            let receive = rx.read_to_end(&mut out);
            let (_, read) = tokio::join!(send, receive);
            read.expect("the pipe reads");
            served.await.expect("the connection task");
            out
        });
        check(&out);
    }
);
