//! The `History` service (issue 15) on a real receiver over loopback gRPC:
//! a machine lists the versions of its files, its recent deletions, and
//! streams a tree back as of an instant, with its own credential and only
//! its own history.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{register, with_credential};
use lifeline_proto::v1::history_client::HistoryClient;
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::restore_piece::Kind as Piece;
use lifeline_proto::v1::{
    op, Attr, Chunk, FileData, ListVersionsRequest, Mkdir, Op, OpBatch, RecentDeletionsRequest, Remove, Rename,
    RestoreRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

const TIMEOUT: Duration = Duration::from_secs(20);

fn attr(mode: u32) -> Attr {
    Attr { mode, mtime_sec: 1_700_000_000, mtime_nsec: 42, uid: None, gid: None }
}

fn file(content: &[u8], mode: u32) -> op::Kind {
    op::Kind::Data(FileData {
        replace: false,
        truncate_to: Some(0),
        chunks: vec![Chunk { offset: 0, data: content.to_vec() }],
        size: content.len() as u64,
        attr: Some(attr(mode)),
    })
}

fn mkdir(mode: u32) -> op::Kind {
    op::Kind::Mkdir(Mkdir { attr: Some(attr(mode)) })
}

fn remove() -> op::Kind {
    op::Kind::Remove(Remove {})
}

fn rename(to: &str) -> op::Kind {
    op::Kind::Rename(Rename { to: to.as_bytes().to_vec(), exchange: false })
}

/// Streams `ops` as one batch of a Replicate stream with `token`, and
/// answers the ack (errors included) or the stream's refusal.
async fn replicate(url: &str, token: &str, ops: Vec<(&str, op::Kind)>) -> Result<lifeline_proto::v1::Ack, Status> {
    let (tx, rx) = mpsc::channel(4);
    let mut client = ReplicationClient::connect(url.to_string()).await.unwrap();
    let mut acks = client.replicate(with_credential(ReceiverStream::new(rx), token)).await?.into_inner();
    // The receiver speaks first: where the queue resumes.
    tokio::time::timeout(TIMEOUT, acks.message()).await.expect("hello in time")?;
    let ops: Vec<Op> = ops
        .into_iter()
        .enumerate()
        .map(|(i, (p, k))| Op { seq: i as u64 + 1, path: p.as_bytes().to_vec(), kind: Some(k), origin: 0 })
        .collect();
    tx.send(OpBatch { ops }).await.unwrap();
    let ack = tokio::time::timeout(TIMEOUT, acks.message()).await.expect("ack in time")?;
    ack.ok_or_else(|| Status::unknown("ack stream ended"))
}

/// The receiver's clock now (the same host's), between two steps.
async fn instant() -> i64 {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    at
}

async fn history(url: &str) -> HistoryClient<Channel> {
    HistoryClient::connect(url.to_string()).await.unwrap().max_decoding_message_size(lifeline_proto::MAX_MESSAGE)
}

/// A restored tree: each entry's relative path to its kind, mode and
/// content (or target).
type Tree = BTreeMap<String, String>;

async fn restore(url: &str, token: &str, path: &str, as_of_ns: i64) -> Result<Tree, Status> {
    let req = RestoreRequest { path: path.as_bytes().to_vec(), as_of_ns };
    let mut stream = history(url).await.restore(with_credential(req, token)).await?.into_inner();
    let mut tree = Tree::new();
    let mut last = String::new();
    while let Some(piece) = tokio::time::timeout(TIMEOUT, stream.message()).await.expect("restore in time")? {
        match piece.kind.unwrap() {
            Piece::Entry(e) => {
                last = String::from_utf8(e.path).unwrap();
                let mode = e.attr.unwrap().mode;
                let what = match e.kind {
                    0 => format!("file {mode:o} "),
                    1 => format!("dir {mode:o}"),
                    _ => format!("link {}", String::from_utf8_lossy(&e.symlink_target)),
                };
                tree.insert(last.clone(), what);
            }
            Piece::Data(d) => {
                assert!(d.len() <= lifeline_proto::MAX_CHUNK);
                tree.get_mut(&last).unwrap().push_str(&String::from_utf8_lossy(&d));
            }
        }
    }
    Ok(tree)
}

fn tree(entries: &[(&str, &str)]) -> Tree {
    entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Machine `a`'s history, step by step: answers the instants between.
async fn build_history(url: &str, a: &str) -> [i64; 2] {
    let ack = replicate(
        url,
        a,
        vec![
            ("srv", mkdir(0o755)),
            ("srv/docs", mkdir(0o750)),
            ("srv/docs/report.txt", file(b"first draft", 0o640)),
            ("srv/docs/notes.txt", file(b"notes", 0o600)),
        ],
    )
    .await
    .unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    let one = instant().await;
    let ack = replicate(
        url,
        a,
        vec![
            ("srv/docs/report.txt", file(b"final version, longer", 0o644)),
            ("srv/docs/notes.txt", remove()),
            ("srv/docs/todo.txt", file(b"todo", 0o600)),
        ],
    )
    .await
    .unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    let two = instant().await;
    let ack = replicate(url, a, vec![("srv/docs/todo.txt", rename("srv/done.txt"))]).await.unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    [one, two]
}

/// What the first step left: `srv/docs` as of instant one.
fn docs_at_one() -> Tree {
    tree(&[("", "dir 750"), ("notes.txt", "file 600 notes"), ("report.txt", "file 640 first draft")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_reads_its_own_history_and_nothing_else() {
    let store = tempfile::tempdir().unwrap();
    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let url = running.url();
    let a = register(store.path(), "pc-a").token();
    let b = register(store.path(), "pc-b").token();
    let [one, two] = build_history(&url, &a).await;
    replicate(&url, &b, vec![("srv", mkdir(0o755)), ("srv/b-only.txt", file(b"b", 0o600))]).await.unwrap();
    replicate(&url, &b, vec![("srv/b-only.txt", remove())]).await.unwrap();

    // The versions of a file, oldest first, and what it is now.
    let req = ListVersionsRequest { path: b"srv/docs/report.txt".to_vec() };
    let v = history(&url).await.list_versions(with_credential(req, &a)).await.unwrap().into_inner();
    let what: Vec<&str> = v.versions.iter().map(|v| v.what.as_str()).collect();
    assert_eq!(what[..3], ["created with srv", "created with srv/docs", "created"]);
    assert!(what[3].starts_with("written: was 11 bytes") && what.len() == 4, "{what:?}");
    assert!(v.versions.iter().all(|x| x.time_ns > 0) && !v.truncated);
    assert_eq!(v.now, "21 bytes");

    // Recent deletions: notes.txt (todo.txt was renamed, not removed).
    let req = RecentDeletionsRequest { since_ns: one, limit: 0 };
    let d = history(&url).await.recent_deletions(with_credential(req, &a)).await.unwrap().into_inner();
    let paths: Vec<_> = d.deletions.iter().map(|d| String::from_utf8_lossy(&d.path).into_owned()).collect();
    assert_eq!(paths, ["srv/docs/notes.txt"]);
    // ... and it comes back as of just before its removal.
    let back = restore(&url, &a, "srv/docs/notes.txt", d.deletions[0].time_ns - 1).await.unwrap();
    assert_eq!(back, tree(&[("", "file 600 notes")]));

    // A tree as of each instant.
    assert_eq!(restore(&url, &a, "srv/docs", one).await.unwrap(), docs_at_one());
    let at_two =
        tree(&[("", "dir 750"), ("report.txt", "file 644 final version, longer"), ("todo.txt", "file 600 todo")]);
    assert_eq!(restore(&url, &a, "srv/docs", two).await.unwrap(), at_two);
    let e = restore(&url, &a, "srv/docs/todo.txt", one).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // B sees only B's history; A none of B's.
    let req = RecentDeletionsRequest { since_ns: 0, limit: 10 };
    let d = history(&url).await.recent_deletions(with_credential(req, &b)).await.unwrap().into_inner();
    assert_eq!(d.deletions.len(), 1);
    assert_eq!(d.deletions[0].path, b"srv/b-only.txt");
    let e = restore(&url, &a, "srv/b-only.txt", d.deletions[0].time_ns - 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = restore(&url, &b, "srv/docs", one).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Hostile paths are refused before anything is read.
    for p in ["../pc-b/srv", "/etc", "srv/../../history", "..", ""] {
        let e = restore(&url, &a, p, one).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{p}: {e:?}");
        assert!(e.message().contains("without its leading '/'"), "{}", e.message());
    }
    // Each restore's scratch is gone once it was streamed.
    let scratch = store.path().join("tmp/history-restores");
    assert_eq!(std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0), 0);
    running.stop().await.unwrap();
}

/// Every file, symlink and directory under `dir`: its kind, mode and bytes.
fn files(dir: &std::path::Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).follow_links(false).follow_root_links(false) {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let bytes = if md.is_file() {
            std::fs::read(e.path()).unwrap()
        } else if md.file_type().is_symlink() {
            std::fs::read_link(e.path()).unwrap().into_os_string().into_encoded_bytes()
        } else {
            Vec::new()
        };
        out.insert(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned(), (md.mode(), bytes));
    }
    out
}

/// Paths that try to reach the history (or another machine) from a
/// mirror, or from a history request.
const HOSTILE: &[&str] = &[
    "../../history/pc-a/journal",
    "../../history/pc-a/attic",
    "../history",
    "srv/../../../history/pc-a",
    "/srv",
    "..",
    ".",
    "history/pc-a/journal",
    "../pc-b/srv",
    "srv//docs",
];

/// Calls every RPC of every service `token` can reach, with hostile paths
/// and names, and with real deletions and renames of the mirror's own
/// files; answers nothing (every call may be refused).
async fn attack(url: &str, token: &str, one: i64) {
    use lifeline_proto::v1::image_store_client::ImageStoreClient;
    use lifeline_proto::v1::jobs_client::JobsClient;
    use lifeline_proto::v1::{
        BootMediaRequest, ImageBlob, ImageEmpty, JobReport, ListBootMediaRequest, ListTreeRequest, ManifestRequest,
        NamedBlob, PackPiece, PackRange, SignatureRequest,
    };
    // Replication: ops at hostile paths, then real removals and renames.
    for p in HOSTILE {
        let _ = replicate(url, token, vec![(p, remove())]).await;
        let _ = replicate(url, token, vec![(p, file(b"overwritten", 0o777))]).await;
        let _ = replicate(url, token, vec![("srv/docs", rename(p))]).await;
        let _ = replicate(url, token, vec![(p, rename("srv/x"))]).await;
        let _ = replicate(
            url,
            token,
            vec![("srv/link", op::Kind::Symlink(lifeline_proto::v1::Symlink { target: p.as_bytes().to_vec() }))],
        )
        .await;
        let _ = replicate(url, token, vec![("srv/link/journal", remove())]).await;
    }
    let _ = replicate(url, token, vec![("srv/docs/report.txt", file(b"ransom", 0o600)), ("srv/docs", remove())]).await;
    let _ = replicate(url, token, vec![("srv", rename("srv-gone")), ("srv-gone", remove())]).await;
    let mut repl = ReplicationClient::connect(url.to_string()).await.unwrap();
    for p in HOSTILE {
        let _ = repl.list_tree(with_credential(ListTreeRequest { roots: vec![p.as_bytes().to_vec()] }, token)).await;
        let sig = SignatureRequest { path: p.as_bytes().to_vec(), block_len: 0, strong_len: 0 };
        let _ = repl.get_signature(with_credential(sig, token)).await;
    }
    // Images, jobs, boot media: names that try to lead out of the image store.
    let mut images = ImageStoreClient::connect(url.to_string()).await.unwrap();
    let _ = images.create_config(with_credential(ImageBlob { data: b"config".to_vec() }, token)).await;
    let _ = images.get_config(with_credential(ImageEmpty {}, token)).await;
    let _ = images.list_packs(with_credential(ImageEmpty {}, token)).await;
    let _ = images.list_manifests(with_credential(ImageEmpty {}, token)).await;
    for p in HOSTILE {
        let blob = NamedBlob { name: p.to_string(), data: b"garbage".to_vec() };
        let _ = images.put_manifest(with_credential(blob, token)).await;
        let _ = images.get_manifest(with_credential(ManifestRequest { name: p.to_string() }, token)).await;
    }
    let pieces = vec![PackPiece { id: vec![0xff; 16], data: b"pack".to_vec() }];
    let _ = images.put_pack(with_credential(tokio_stream::iter(pieces), token)).await;
    let _ = images.read_pack(with_credential(PackRange { id: vec![0xff; 16], offset: 0, len: 4 }, token)).await;
    let report = JobReport { job: 1, kind: "../../history".into(), state: "done".into(), ..Default::default() };
    let _ = JobsClient::connect(url.to_string()).await.unwrap().report(with_credential(report, token)).await;
    let mut media =
        lifeline_proto::v1::boot_media_store_client::BootMediaStoreClient::connect(url.to_string()).await.unwrap();
    let _ = media.list_boot_media(with_credential(ListBootMediaRequest {}, token)).await;
    let _ = media.download_boot_media(with_credential(BootMediaRequest { id: 1 }, token)).await;
    // History itself: read-only, whatever the path.
    for p in HOSTILE.iter().chain(&["srv", "srv/docs", "srv/docs/report.txt"]) {
        let path = p.as_bytes().to_vec();
        let mut h = history(url).await;
        let _ = h.list_versions(with_credential(ListVersionsRequest { path: path.clone() }, token)).await;
        let _ = restore(url, token, p, one).await;
        let _ = restore(url, token, p, i64::MIN).await;
        let _ = restore(url, token, p, i64::MAX).await;
    }
    let mut h = history(url).await;
    let _ = h
        .recent_deletions(with_credential(RecentDeletionsRequest { since_ns: i64::MIN, limit: u32::MAX }, token))
        .await;
}

/// Issue 15: "every RPC a machine credential or boot session can call is
/// tried against history: nothing deleted or altered". Machine A's history
/// is built, then A's own credential (as ransomware on A holds it),
/// machine B's and a boot session of A call every RPC of every service with
/// hostile paths, and A's credential really deletes and renames its files.
/// A's history only grew: every journal segment's old bytes are a prefix of
/// its new ones, every attic object is as it was, and A's tree as of the
/// earlier instant restores exactly as before. History answers a boot
/// session nothing, and A nothing of B's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_a_machine_can_call_leaves_history_intact() {
    use lifeline_proto::v1::boot_sessions_client::BootSessionsClient;
    use lifeline_proto::v1::ClaimRequest;
    let store = tempfile::tempdir().unwrap();
    let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
    let url = running.url();
    let a = register(store.path(), "pc-a").token();
    let b = register(store.path(), "pc-b").token();
    let boot = lifeline_core::credential::Credential::generate("pc-a");
    let media = lifeline_store::db::boot::BootMedia::new("pc-a", "netboot", "backup", "receiver");
    lifeline_store::Db::open(store.path()).unwrap().add_boot_media(&media, &boot.secret_hash()).unwrap();
    let session = BootSessionsClient::connect(url.clone())
        .await
        .unwrap()
        .claim(with_credential(ClaimRequest {}, &boot.token()))
        .await
        .unwrap()
        .into_inner()
        .credential;
    let [one, _] = build_history(&url, &a).await;
    replicate(&url, &b, vec![("srv", mkdir(0o755)), ("srv/b-secret.txt", file(b"b's", 0o600))]).await.unwrap();
    replicate(&url, &b, vec![("srv/b-secret.txt", remove())]).await.unwrap();
    let hist = store.path().join("history/pc-a");
    let before = files(&hist);
    assert!(before.keys().any(|k| k.starts_with("attic/")), "the history has attic objects: {before:?}");
    let srv_at_one = restore(&url, &a, "srv", one).await.unwrap();
    assert_eq!(restore(&url, &a, "srv/docs", one).await.unwrap(), docs_at_one());

    // A boot session gets nothing from History.
    for e in [
        restore(&url, &session, "srv", one).await.unwrap_err(),
        history(&url)
            .await
            .list_versions(with_credential(ListVersionsRequest { path: b"srv".to_vec() }, &session))
            .await
            .unwrap_err(),
        history(&url)
            .await
            .recent_deletions(with_credential(RecentDeletionsRequest { since_ns: 0, limit: 0 }, &session))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    // Hostile paths are refused by History, whoever asks.
    for p in HOSTILE.iter().filter(|p| !p.starts_with("history/")) {
        let e = restore(&url, &a, p, one).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{p}: {e:?}");
    }

    for token in [&a, &b, &session] {
        attack(&url, token, one).await;
    }

    // A saw none of B's history.
    let req = RecentDeletionsRequest { since_ns: 0, limit: 1000 };
    let d = history(&url).await.recent_deletions(with_credential(req, &a)).await.unwrap().into_inner();
    assert!(d.deletions.iter().all(|d| !d.path.ends_with(b"b-secret.txt")), "{:?}", d.deletions);
    let req = ListVersionsRequest { path: b"srv/b-secret.txt".to_vec() };
    let v = history(&url).await.list_versions(with_credential(req, &a)).await.unwrap().into_inner();
    // Only A's own changes of the directory above.
    assert!(v.versions.iter().all(|v| v.what.contains(" with srv")), "{:?}", v.versions);
    let e = restore(&url, &a, "srv/b-secret.txt", i64::MIN + 1).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // The history only grew.
    let after = files(&hist);
    for (name, (mode, bytes)) in &before {
        let (now_mode, now) = after.get(name).unwrap_or_else(|| panic!("{name} was removed from the history"));
        assert_eq!(mode, now_mode, "{name}'s mode changed");
        if name.starts_with("journal/") {
            assert!(now.starts_with(bytes), "{name} was rewritten, not appended to");
        } else {
            assert_eq!(bytes, now, "{name} was changed");
        }
    }
    // A's attack removed A's files for real: recorded, restorable.
    assert!(after.len() > before.len(), "the removals were recorded");
    assert_eq!(restore(&url, &a, "srv", one).await.unwrap(), srv_at_one, "srv as of the earlier instant");
    assert_eq!(restore(&url, &a, "srv/docs", one).await.unwrap(), docs_at_one());
    // Nothing was left in the restores' scratch.
    let scratch = store.path().join("tmp/history-restores");
    assert_eq!(std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0), 0);
    running.stop().await.unwrap();
}

/// A restore counts as one of the machine's calls carrying data, and its
/// scratch on the receiver is gone once the client leaves mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_a_data_call_and_leaves_nothing_behind() {
    let store = tempfile::tempdir().unwrap();
    let limits = lifeline_receiver::Limits { max_data_calls_per_machine: 1, ..Default::default() };
    let receiver = lifeline_receiver::Receiver::new(store.path()).unwrap().with_limits(limits);
    let running = lifeline_receiver::spawn_receiver("127.0.0.1:0", receiver).await.unwrap();
    let url = running.url();
    let a = register(store.path(), "pc-a").token();
    let mib = lifeline_proto::MAX_CHUNK;
    let big = op::Kind::Data(FileData {
        replace: false,
        truncate_to: Some(0),
        chunks: (0..32).map(|i| Chunk { offset: (i * mib) as u64, data: vec![i as u8; mib] }).collect(),
        size: (32 * mib) as u64,
        attr: Some(attr(0o600)),
    });
    replicate(&url, &a, vec![("srv", mkdir(0o755)), ("srv/big", big)]).await.unwrap();
    let now = instant().await;

    // A client that reads the first piece of a 32 MiB restore, then stalls.
    // (Once the replication stream's place is given back.)
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut first = loop {
        let req = RestoreRequest { path: b"srv/big".to_vec(), as_of_ns: now };
        match history(&url).await.restore(with_credential(req, &a)).await {
            Ok(r) => break r.into_inner(),
            Err(e) if e.code() == Code::ResourceExhausted && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(matches!(first.message().await.unwrap().unwrap().kind, Some(Piece::Entry(_))));
    let scratch = store.path().join("tmp/history-restores");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 1, "the restore streams from its scratch");
    let e = restore(&url, &a, "srv", now).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-data-calls-per-machine"), "{}", e.message());

    // It leaves: the scratch goes, and the machine may restore again.
    drop(first);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::fs::read_dir(&scratch).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "the scratch of an abandoned restore stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tree = restore(&url, &a, "srv", now).await.unwrap();
    assert_eq!(tree.len(), 2);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
    running.stop().await.unwrap();
}
