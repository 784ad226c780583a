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
