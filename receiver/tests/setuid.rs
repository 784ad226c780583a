//! A machine cannot plant a setuid or setgid file on the receiver host
//! (issue 14, finding 7): an attacker holding a machine's credential sends,
//! over real gRPC on loopback, setuid-root and setgid files and directories
//! every way the protocol allows (created with the bits, given them by a
//! later chmod, renamed, linked, rewritten). No entry anywhere under the
//! store has S_ISUID or S_ISGID, and `ListTree` still reports the modes
//! sent, so that the agent does not send them again forever.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{register, with_credential};
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::{op, Attr, Chunk, FileData, Link, ListTreeRequest, Mkdir, Op, OpBatch, Rename, SetAttr};
use tokio_stream::wrappers::ReceiverStream;

const TIMEOUT: Duration = Duration::from_secs(20);

fn root_owned(mode: u32) -> Attr {
    Attr { mode, mtime_sec: 1_700_000_000, mtime_nsec: 0, uid: Some(0), gid: Some(0) }
}

fn data(content: &[u8], mode: u32) -> op::Kind {
    op::Kind::Data(FileData {
        replace: true,
        truncate_to: Some(0),
        chunks: vec![Chunk { offset: 0, data: content.to_vec() }],
        size: content.len() as u64,
        attr: Some(root_owned(mode)),
    })
}

fn chmod(mode: u32) -> op::Kind {
    op::Kind::Setattr(SetAttr { attr: Some(root_owned(mode)) })
}

/// Every entry under `dir` (the whole store) whose mode has S_ISUID or S_ISGID.
fn privileged(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = std::fs::symlink_metadata(e.path()).unwrap();
        if md.mode() & 0o6000 != 0 {
            out.push(format!("{} {:o}", e.path().display(), md.mode() & 0o7777));
        }
        if md.is_dir() {
            out.extend(privileged(&e.path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_cannot_plant_setuid_files_on_the_receiver() {
    let store = tempfile::tempdir().unwrap();
    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let token = register(store.path(), "pc1").token();
    let mut client = ReplicationClient::connect(running.url()).await.unwrap();

    let shell = b"\x7fELF pretend this is a shell".to_vec();
    let ops: Vec<(&[u8], op::Kind)> = vec![
        (b"srv", op::Kind::Mkdir(Mkdir { attr: Some(root_owned(0o755)) })),
        (b"srv/shared", op::Kind::Mkdir(Mkdir { attr: Some(root_owned(0o2775)) })),
        (b"srv/rootshell", data(&shell, 0o4755)),
        (b"srv/groupshell", data(&shell, 0o2711)),
        (b"srv/both", data(&shell, 0o6755)),
        (b"srv/plain", data(&shell, 0o755)),
        // Given the bits later, by chmod.
        (b"srv/plain", chmod(0o4755)),
        // Renamed and linked: the names move, the bits must not come back.
        (b"srv/both", op::Kind::Rename(Rename { to: b"srv/both2".to_vec(), exchange: false })),
        (b"srv/both2", op::Kind::Link(Link { to: b"srv/both3".to_vec() })),
        // Mode bits above 0o7777 (a file type) change nothing.
        (b"srv/groupshell", chmod(0o104755)),
        // A directory made inside a setgid one would inherit the bit.
        (b"srv/shared/sub", op::Kind::Mkdir(Mkdir { attr: Some(root_owned(0o755)) })),
        (b"srv/shared/f", data(b"x", 0o644)),
        // Rewritten whole, keeping the mode.
        (b"srv/rootshell", data(b"\x7fELF another shell", 0o4755)),
    ];
    let ops: Vec<Op> = ops
        .into_iter()
        .enumerate()
        .map(|(i, (p, k))| Op { seq: i as u64 + 1, path: p.to_vec(), kind: Some(k), origin: 0 })
        .collect();
    let last = ops.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = client.replicate(with_credential(ReceiverStream::new(rx), &token)).await.unwrap().into_inner();
    let _hello = tokio::time::timeout(TIMEOUT, acks.message()).await.unwrap().unwrap().unwrap();
    tx.send(OpBatch { ops }).await.unwrap();
    let ack = tokio::time::timeout(TIMEOUT, acks.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ack.applied_seq, last);
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    drop(tx);

    let found = privileged(store.path());
    assert!(found.is_empty(), "setuid/setgid entries in the store: {found:?}");
    let mirror = store.path().join("mirror/pc1/srv");
    if rustix::process::geteuid().is_root() {
        assert_eq!(std::fs::metadata(mirror.join("rootshell")).unwrap().uid(), 0, "owned as sent");
    }

    // ListTree reports what the machine sent.
    let mut stream = client
        .list_tree(with_credential(ListTreeRequest { roots: vec![b"srv".to_vec()] }, &token))
        .await
        .unwrap()
        .into_inner();
    let mut modes = std::collections::BTreeMap::new();
    while let Some(msg) = tokio::time::timeout(TIMEOUT, stream.message()).await.unwrap().unwrap() {
        for e in msg.entries {
            modes.insert(String::from_utf8(e.path).unwrap(), e.attr.unwrap().mode);
        }
    }
    let want: std::collections::BTreeMap<String, u32> = [
        ("srv/rootshell", 0o4755),
        ("srv/groupshell", 0o4755),
        ("srv/both2", 0o6755),
        ("srv/both3", 0o6755),
        ("srv/plain", 0o4755),
        ("srv/shared", 0o2775),
        ("srv/shared/sub", 0o755),
        ("srv/shared/f", 0o644),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m))
    .collect();
    assert_eq!(modes, want);
    running.stop().await.unwrap();
}

/// What a receiver from before the fix stored loses its bits when a fixed
/// one starts, and is listed with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bits_stored_before_the_fix_are_taken_off_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let store = tempfile::tempdir().unwrap();
    let token = register(store.path(), "pc1").token();
    let srv = store.path().join("mirror/pc1/srv");
    std::fs::create_dir_all(srv.join("shared")).unwrap();
    std::fs::write(srv.join("su"), b"old").unwrap();
    std::fs::set_permissions(srv.join("su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(srv.join("shared"), std::fs::Permissions::from_mode(0o2770)).unwrap();
    let removed = store.path().join("removed/old-1/mirror");
    std::fs::create_dir_all(&removed).unwrap();
    std::fs::write(removed.join("sg"), b"old").unwrap();
    std::fs::set_permissions(removed.join("sg"), std::fs::Permissions::from_mode(0o2755)).unwrap();

    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let found = privileged(store.path());
    assert!(found.is_empty(), "setuid/setgid entries in the store: {found:?}");
    let mut client = ReplicationClient::connect(running.url()).await.unwrap();
    let mut stream = client
        .list_tree(with_credential(ListTreeRequest { roots: vec![b"srv".to_vec()] }, &token))
        .await
        .unwrap()
        .into_inner();
    let mut modes = std::collections::BTreeMap::new();
    while let Some(msg) = tokio::time::timeout(TIMEOUT, stream.message()).await.unwrap().unwrap() {
        for e in msg.entries {
            modes.insert(String::from_utf8(e.path).unwrap(), e.attr.unwrap().mode);
        }
    }
    assert_eq!(modes.get("srv/su"), Some(&0o4755));
    assert_eq!(modes.get("srv/shared"), Some(&0o2770));
    running.stop().await.unwrap();
}

/// A store on a filesystem without user xattrs (ramfs here, in a mount
/// namespace of its own) is refused at start, saying what to do: the
/// receiver could neither keep setuid bits off its files nor remember them.
#[test]
fn a_store_without_user_xattrs_is_refused_at_start() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a ramfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "mount -t ramfs ramfs {dir} && exec timeout 20 {bin} --store {dir}/store serve --listen 127.0.0.1:0",
        dir = dir.path().display(),
        bin = env!("CARGO_BIN_EXE_lifeline-receiver"),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("must support user extended attributes") && stderr.contains("user_xattr"), "{stderr}");
}
