//! End-to-end: a real receiver on 127.0.0.1, real gRPC clients.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use lifeline_core::credential::Credential;
use lifeline_core::credential::MachineName;
use lifeline_core::tree::{compare, CompareOptions};
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::{
    op, Ack, Attr, Chunk, FileData, Link, ListTreeRequest, Mkdir, Op, OpBatch, Remove, Rename, SetAttr, Symlink,
    TreeEntry,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Env {
    store: tempfile::TempDir,
    outside: tempfile::TempDir,
    running: lifeline_receiver::Running,
    /// Credentials of the machines registered so far.
    tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Env {
    async fn new() -> Env {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"secret").unwrap();
        let running = lifeline_receiver::spawn("127.0.0.1:0", store.path()).await.unwrap();
        Env { store, outside, running, tokens: Default::default() }
    }

    /// Adds machine `m`'s credential to `req`, registering `m` the first
    /// time. A name that cannot be registered gets a credential the receiver
    /// never issued; `None`: no credential at all.
    fn authorize<T>(&self, req: &mut Request<T>, m: Option<&str>) {
        let Some(m) = m else { return };
        let mut tokens = self.tokens.lock().unwrap();
        let token = tokens.entry(m.to_string()).or_insert_with(|| {
            let cred = Credential::generate(m);
            if let Ok(name) = MachineName::new(m) {
                let mut db = lifeline_store::Db::open(self.store.path()).unwrap();
                db.add_machine(&name, &cred.secret_hash(), "").unwrap();
            }
            cred.token()
        });
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }

    fn mirror(&self, machine: &str) -> PathBuf {
        self.store.path().join("mirror").join(machine)
    }

    async fn client(&self) -> ReplicationClient<Channel> {
        ReplicationClient::connect(self.running.url())
            .await
            .unwrap()
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE)
            .max_encoding_message_size(lifeline_proto::MAX_MESSAGE)
    }

    fn assert_outside_untouched(&self) {
        let o = self.outside.path();
        assert_eq!(fs::read_dir(o).unwrap().count(), 1, "something appeared outside");
        assert_eq!(fs::read(o.join("secret")).unwrap(), b"secret");
    }

    async fn list(&self, machine: Option<&str>, roots: &[&[u8]]) -> Result<Vec<Vec<TreeEntry>>, Status> {
        let mut req = Request::new(ListTreeRequest { roots: roots.iter().map(|r| r.to_vec()).collect() });
        self.authorize(&mut req, machine);
        let mut stream = self.client().await.list_tree(req).await?.into_inner();
        let mut out = Vec::new();
        while let Some(msg) = tokio::time::timeout(TIMEOUT, stream.message()).await.unwrap()? {
            // Messages that only complete directories list nothing.
            if !msg.entries.is_empty() {
                out.push(msg.entries);
            }
        }
        Ok(out)
    }
}

/// One agent's Replicate stream.
struct Agent {
    tx: mpsc::Sender<OpBatch>,
    acks: Streaming<Ack>,
    seq: u64,
}

impl Agent {
    async fn open(env: &Env, machine: Option<&str>) -> Result<Agent, Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut req = Request::new(ReceiverStream::new(rx));
        env.authorize(&mut req, machine);
        let mut acks = env.client().await.replicate(req).await?.into_inner();
        // The receiver speaks first: where the agent's queue resumes.
        let hello = match tokio::time::timeout(TIMEOUT, acks.message()).await.expect("hello in time")? {
            Some(h) => h,
            None => return Err(Status::unknown("ack stream ended")),
        };
        assert_eq!(hello.resume_origin, Some(0), "no queue header: nothing tracked");
        Ok(Agent { tx, acks, seq: 0 })
    }

    fn op(&mut self, path: &[u8], kind: op::Kind) -> Op {
        self.seq += 1;
        Op { seq: self.seq, path: path.to_vec(), kind: Some(kind), origin: 0 }
    }

    /// Sends one batch and waits for its ack.
    async fn batch(&mut self, ops: Vec<(&[u8], op::Kind)>) -> Result<Ack, Status> {
        let ops: Vec<Op> = ops.into_iter().map(|(p, k)| self.op(p, k)).collect();
        let last = ops.last().map(|o| o.seq);
        self.tx.send(OpBatch { ops }).await.expect("stream open");
        let ack = self.next_ack().await?;
        if let Some(last) = last {
            assert_eq!(ack.applied_seq, last);
        }
        Ok(ack)
    }

    async fn next_ack(&mut self) -> Result<Ack, Status> {
        match tokio::time::timeout(TIMEOUT, self.acks.message()).await.expect("ack in time")? {
            Some(ack) => Ok(ack),
            None => Err(Status::unknown("ack stream ended")),
        }
    }
}

fn attr(mode: u32) -> Attr {
    Attr { mode, mtime_sec: 1_700_000_000, mtime_nsec: 42, uid: None, gid: None }
}

fn data(content: &[u8], mode: u32) -> op::Kind {
    op::Kind::Data(FileData {
        replace: false,
        truncate_to: Some(0),
        chunks: content
            .chunks(7)
            .enumerate()
            .map(|(i, c)| Chunk { offset: (i * 7) as u64, data: c.to_vec() })
            .collect(),
        size: content.len() as u64,
        attr: Some(attr(mode)),
    })
}

fn mkdir(mode: u32) -> op::Kind {
    op::Kind::Mkdir(Mkdir { attr: Some(attr(mode)) })
}

fn rename(to: &[u8], exchange: bool) -> op::Kind {
    op::Kind::Rename(Rename { to: to.to_vec(), exchange })
}

fn sym(target: &[u8]) -> op::Kind {
    op::Kind::Symlink(Symlink { target: target.to_vec() })
}

fn link(to: &[u8]) -> op::Kind {
    op::Kind::Link(Link { to: to.to_vec() })
}

fn remove() -> op::Kind {
    op::Kind::Remove(Remove {})
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

fn write_expected(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    let f = fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(UNIX_EPOCH + Duration::new(1_700_000_000, 42)).unwrap();
}

fn mkdir_expected(root: &Path, rel: &str, mode: u32) {
    fs::create_dir_all(root.join(rel)).unwrap();
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_kind_end_to_end() {
    let env = Env::new().await;
    let mut a = Agent::open(&env, Some("m1")).await.unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let ack = a
        .batch(vec![
            (b"srv", mkdir(0o755)),
            (b"srv/data", mkdir(0o750)),
            (b"srv/data/a.txt", data(b"hello, world", 0o644)),
            (b"srv/data/big", data(&big, 0o600)),
            (b"srv/data/tmp", data(b"temporary", 0o644)),
            (b"srv/data/tmp", rename(b"srv/data/final", false)),
            (b"srv/data/a.txt", link(b"srv/data/hard")),
            (b"srv/data/link", sym(b"a.txt")),
            (b"srv/data/x", data(b"x", 0o644)),
            (b"srv/data/y", data(b"y", 0o644)),
        ])
        .await
        .unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    let ack = a
        .batch(vec![
            (b"srv/data/x", rename(b"srv/data/y", true)),
            (b"srv/data/old", mkdir(0o755)),
            (b"srv/data/old/f", data(b"f", 0o644)),
            (b"srv/data/old", remove()),
            (b"srv/data/missing", rename(b"srv/data/nowhere", false)),
            (b"srv/data/missing", remove()),
            (b"srv/data/final", op::Kind::Setattr(SetAttr { attr: Some(attr(0o600)) })),
            (
                b"srv/data/a.txt",
                op::Kind::Data(FileData {
                    replace: false,
                    truncate_to: None,
                    chunks: vec![Chunk { offset: 7, data: b"WORLD".to_vec() }],
                    size: 12,
                    attr: Some(attr(0o644)),
                }),
            ),
        ])
        .await
        .unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    // An empty batch is acknowledged with the seq so far.
    a.tx.send(OpBatch { ops: vec![] }).await.unwrap();
    assert_eq!(a.next_ack().await.unwrap().applied_seq, a.seq);

    let exp = tempfile::tempdir().unwrap();
    let e = exp.path();
    mkdir_expected(e, "srv", 0o755);
    mkdir_expected(e, "srv/data", 0o750);
    write_expected(e, "srv/data/a.txt", b"hello, WORLD", 0o644);
    write_expected(e, "srv/data/hard", b"hello, WORLD", 0o644);
    write_expected(e, "srv/data/big", &big, 0o600);
    write_expected(e, "srv/data/final", b"temporary", 0o600);
    symlink("a.txt", e.join("srv/data/link")).unwrap();
    write_expected(e, "srv/data/x", b"y", 0o644);
    write_expected(e, "srv/data/y", b"x", 0o644);
    let diffs = compare(e, &env.mirror("m1"), CompareOptions { mode: true, mtime: true }).unwrap();
    assert!(diffs.is_empty(), "{diffs:#?}");

    // ListTree gives the same tree back, as wire paths.
    let listed = env.list(Some("m1"), &[b"srv/data", b"nothing/here"]).await.unwrap();
    let entries: Vec<TreeEntry> = listed.into_iter().flatten().collect();
    let paths: Vec<String> = entries.iter().map(|e| String::from_utf8_lossy(&e.path).into()).collect();
    assert_eq!(
        paths,
        [
            "srv/data/a.txt",
            "srv/data/big",
            "srv/data/final",
            "srv/data/hard",
            "srv/data/link",
            "srv/data/x",
            "srv/data/y"
        ]
    );
    let big_e = &entries[1];
    assert_eq!(big_e.size, big.len() as u64);
    assert_eq!(big_e.attr.unwrap().mode, 0o600);
    assert_eq!(big_e.attr.unwrap().mtime_sec, 1_700_000_000);
    assert_eq!(entries[4].symlink_target, b"a.txt");
    assert_eq!(entries[4].kind, lifeline_proto::v1::tree_entry::Kind::Symlink as i32);

    drop(a);
    env.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ops_change_nothing_outside_the_mirror() {
    let env = Env::new().await;
    let out = env.outside.path().to_path_buf();
    let mut a = Agent::open(&env, Some("m1")).await.unwrap();
    let escape = bytes(&out.join("pwned"));
    let ack = a
        .batch(vec![
            (b"../x", data(b"evil", 0o644)),
            (b"/etc/x", data(b"evil", 0o644)),
            (b"a/../../x", data(b"evil", 0o644)),
            (&escape, data(b"evil", 0o644)),
            (b"ok", data(b"ok", 0o644)),
            (b"ok", rename(b"../ok", false)),
            (b"ok", link(b"a/../../ok")),
            (b"../../..", remove()),
        ])
        .await
        .unwrap();
    let failed: Vec<u64> = ack.errors.iter().map(|e| e.seq).collect();
    assert_eq!(failed, [1, 2, 3, 4, 6, 7, 8], "{:?}", ack.errors);
    assert_eq!(ack.errors[0].path, b"../x");
    assert!(ack.errors[0].message.contains("../x"), "{}", ack.errors[0].message);
    env.assert_outside_untouched();

    // A symlink inside the mirror pointing outside is never followed.
    let ack = a.batch(vec![(b"evil", sym(&bytes(&out))), (b"evil/file", data(b"through?", 0o644))]).await.unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    env.assert_outside_untouched();
    let evil = env.mirror("m1").join("evil");
    assert!(evil.is_dir() && !evil.is_symlink(), "the symlink was replaced by a directory");

    let ack = a.batch(vec![(b"evil", sym(&bytes(&out))), (b"evil", data(b"a file now", 0o666))]).await.unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    env.assert_outside_untouched();
    assert!(fs::symlink_metadata(&evil).unwrap().is_file());
    assert_eq!(fs::read(&evil).unwrap(), b"a file now");

    let ack = a
        .batch(vec![
            (b"evil", sym(&bytes(&out))),
            (b"evil/secret", remove()),
            (b"evil/secret", rename(b"stolen", false)),
            (b"evil/secret", link(b"stolen2")),
            (b"evil", op::Kind::Setattr(SetAttr { attr: Some(attr(0o777)) })),
        ])
        .await
        .unwrap();
    // Only the link fails: there is no `evil/secret` in the mirror.
    assert_eq!(ack.errors.len(), 1, "{:?}", ack.errors);
    assert!(ack.errors[0].message.contains("evil/secret"), "{}", ack.errors[0].message);
    env.assert_outside_untouched();
    assert_ne!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o777);
    // Listing through the symlink shows nothing.
    assert!(env.list(Some("m1"), &[b"evil"]).await.unwrap().is_empty());

    let ack = a.batch(vec![(b"src", data(b"moved in", 0o644)), (b"src", rename(b"evil/x", false))]).await.unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    env.assert_outside_untouched();
    assert!(evil.is_dir() && !evil.is_symlink());
    assert_eq!(fs::read(evil.join("x")).unwrap(), b"moved in");

    let ack = a.batch(vec![(b"evil", sym(&bytes(&out))), (b"evil/secret", link(b"evil2"))]).await.unwrap();
    assert_eq!(ack.errors.len(), 1, "{:?}", ack.errors);
    env.assert_outside_untouched();
    assert!(!env.mirror("m1").join("evil2").exists());

    let ack =
        a.batch(vec![(b"f", data(b"f", 0o644)), (b"evil", sym(&bytes(&out))), (b"f", link(b"evil/y"))]).await.unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    assert_eq!(fs::read(evil.join("y")).unwrap(), b"f");
    env.assert_outside_untouched();
    env.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_identity_is_required_and_checked() {
    let env = Env::new().await;
    for machine in [None, Some("../m2"), Some(".."), Some("a/b"), Some("")] {
        let err = match Agent::open(&env, machine).await {
            Ok(mut a) => a.next_ack().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(err.code(), Code::Unauthenticated, "{machine:?}: {err}");
        let err = env.list(machine, &[b"srv"]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{machine:?}: {err}");
    }
    // Another machine's secret under m1's name, and m1's credential claiming
    // to be m2 in the machine header.
    for m in ["m1", "m2"] {
        assert!(env.list(Some(m), &[b"srv"]).await.unwrap().is_empty());
    }
    let m2_secret = env.tokens.lock().unwrap()["m2"].split_once(':').unwrap().1.to_string();
    let mut req = Request::new(ListTreeRequest { roots: vec![b"srv".to_vec()] });
    req.metadata_mut().insert("authorization", format!("Bearer m1:{m2_secret}").parse().unwrap());
    let err = env.client().await.list_tree(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("credential refused for machine m1"), "{err}");
    let mut req = Request::new(ListTreeRequest { roots: vec![b"srv".to_vec()] });
    env.authorize(&mut req, Some("m1"));
    req.metadata_mut().insert(lifeline_proto::MACHINE_HEADER, "m2".parse().unwrap());
    let err = env.client().await.list_tree(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    // Nobody refused got a mirror (the registered ones' listings made theirs).
    let mirrors: Vec<_> =
        fs::read_dir(env.store.path().join("mirror")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(mirrors.iter().all(|m| m == "m1" || m == "m2"), "{mirrors:?}");
    let err = env.list(Some("m1"), &[b"../m2"]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    env.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_cannot_see_each_other() {
    let env = Env::new().await;
    let mut m1 = Agent::open(&env, Some("m1")).await.unwrap();
    let mut m2 = Agent::open(&env, Some("m2")).await.unwrap();
    m1.batch(vec![(b"srv/one", data(b"1", 0o644))]).await.unwrap();
    let m1_srv = bytes(&env.mirror("m1").join("srv"));
    let ack = m2
        .batch(vec![(b"srv/two", data(b"2", 0o644)), (b"srv/peek", sym(&m1_srv)), (b"srv/up", sym(b"../../m1"))])
        .await
        .unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    let names = |l: Vec<Vec<TreeEntry>>| -> Vec<String> {
        l.into_iter().flatten().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect()
    };
    assert_eq!(names(env.list(Some("m1"), &[b"srv"]).await.unwrap()), ["srv/one"]);
    assert_eq!(names(env.list(Some("m2"), &[b"srv"]).await.unwrap()), ["srv/peek", "srv/two", "srv/up"]);
    assert!(env.list(Some("m2"), &[b"srv/peek", b"srv/up"]).await.unwrap().is_empty());
    assert!(env.list(Some("m3"), &[b"srv"]).await.unwrap().is_empty());
    // m2 writing through its symlink lands in its own mirror.
    let ack = m2.batch(vec![(b"srv/peek/one", data(b"overwritten?", 0o644))]).await.unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    assert_eq!(fs::read(env.mirror("m1").join("srv/one")).unwrap(), b"1");
    env.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tree_sends_chunks_of_bounded_size() {
    let env = Env::new().await;
    let mut a = Agent::open(&env, Some("m1")).await.unwrap();
    let names: Vec<String> = (0..2500).map(|i| format!("r/f{i:05}")).collect();
    let ops: Vec<(&[u8], op::Kind)> = names.iter().map(|n| (n.as_bytes(), data(b"", 0o644))).collect();
    let ack = a.batch(ops).await.unwrap();
    assert!(ack.errors.is_empty());
    let chunks = env.list(Some("m1"), &[b"r"]).await.unwrap();
    let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    env.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_replaces_the_old_one() {
    let env = Env::new().await;
    let mut old = Agent::open(&env, Some("m1")).await.unwrap();
    old.batch(vec![(b"a", data(b"a", 0o644))]).await.unwrap();
    let mut new = Agent::open(&env, Some("m1")).await.unwrap();
    new.seq = 100;
    let ack = new.batch(vec![(b"b", data(b"b", 0o644))]).await.unwrap();
    assert!(ack.errors.is_empty());
    let err = old.next_ack().await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
    // Another machine's stream is not affected.
    let mut other = Agent::open(&env, Some("m2")).await.unwrap();
    other.batch(vec![(b"c", data(b"c", 0o644))]).await.unwrap();
    new.batch(vec![(b"d", data(b"d", 0o644))]).await.unwrap();
    // Shutting down ends open streams instead of waiting for them.
    tokio::time::timeout(TIMEOUT, env.running.stop()).await.unwrap().unwrap();
    let err = new.next_ack().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

/// Rough throughput check: `cargo test --release -p lifeline-receiver --test
/// grpc -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let env = Env::new().await;
    let mut a = Agent::open(&env, Some("m1")).await.unwrap();
    let names: Vec<String> = (0..40_000).map(|i| format!("srv/d{}/f{i}", i % 20)).collect();
    let start = std::time::Instant::now();
    for chunk in names.chunks(500) {
        let ops: Vec<(&[u8], op::Kind)> = chunk.iter().map(|n| (n.as_bytes(), data(&[7u8; 100], 0o644))).collect();
        let ack = a.batch(ops).await.unwrap();
        assert!(ack.errors.is_empty());
    }
    let t = start.elapsed();
    println!("{} file writes in {t:?}: {:.0} ops/s", names.len(), names.len() as f64 / t.as_secs_f64());
    env.running.stop().await.unwrap();
}

/// ListTree answers breadth-first and completes each directory only once all
/// its entries were sent; a missing root is completed with nothing in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_tree_completes_directories_breadth_first() {
    let env = Env::new().await;
    let mut a = Agent::open(&env, Some("m1")).await.unwrap();
    let ack = a
        .batch(vec![
            (&b"r/a/b/f"[..], data(b"x", 0o644)),
            (&b"r/c/g"[..], data(b"y", 0o644)),
            (&b"r/h"[..], data(b"z", 0o644)),
        ])
        .await
        .unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    let mut req = Request::new(ListTreeRequest { roots: vec![b"r".to_vec(), b"missing".to_vec()] });
    env.authorize(&mut req, Some("m1"));
    let mut stream = env.client().await.list_tree(req).await.unwrap().into_inner();
    let (mut seen, mut completed) = (Vec::new(), Vec::new());
    while let Some(msg) = stream.message().await.unwrap() {
        seen.extend(msg.entries.iter().map(|e| e.path.clone()));
        for dir in msg.complete_dirs {
            // Every entry of a completed directory has been sent by now.
            let children = seen.iter().filter(|p| p.starts_with(&dir) && p.len() > dir.len() && p[dir.len()] == b'/');
            let direct = children.filter(|p| !p[dir.len() + 1..].contains(&b'/')).count();
            let expected = match &dir[..] {
                b"r" => 3,
                b"r/a" | b"r/a/b" | b"r/c" => 1,
                b"missing" => 0,
                other => panic!("unexpected completed dir {:?}", String::from_utf8_lossy(other)),
            };
            assert_eq!(direct, expected, "{:?} completed early", String::from_utf8_lossy(&dir));
            completed.push(dir);
        }
    }
    let completed: Vec<&[u8]> = completed.iter().map(|d| d.as_slice()).collect();
    assert_eq!(completed, [&b"r"[..], b"r/a", b"r/c", b"r/a/b", b"missing"]);
}
