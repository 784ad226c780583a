use super::*;
use crate::history::History;
use lifeline_core::credential::MachineName;
use lifeline_core::tree::{compare, CompareOptions};
use lifeline_proto::v1::{Chunk, Link, Mkdir, Remove, Rename, SetAttr, Symlink};
use lifeline_store::StoreLayout;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) struct Fixture {
    pub clock: std::sync::Arc<lifeline_history::ManualClock>,
    pub _store: tempfile::TempDir,
    pub outside: tempfile::TempDir,
    pub applier: Applier,
    pub seq: u64,
}

impl Fixture {
    pub fn new() -> Fixture {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("x"), b"outside x").unwrap();
        fs::write(outside.path().join("y"), b"outside y").unwrap();
        fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let layout = StoreLayout::new(store.path());
        let machine = MachineName::new("m").unwrap();
        let mirror = Mirror::open(&layout, &machine).unwrap();
        // With history, as the service runs it: every test here also
        // checks that keeping history changes nothing in the mirror.
        let clock = std::sync::Arc::new(lifeline_history::ManualClock::at(1_000_000_000_000));
        let history = History::open(&layout, &machine, clock.clone()).unwrap();
        Fixture { clock, _store: store, outside, applier: Applier::new(mirror, "m").with_history(history), seq: 0 }
    }

    /// Watched by the alarm detector, as the service runs it.
    pub fn watched(mut self) -> Fixture {
        let layout = StoreLayout::new(self._store.path());
        let machine = MachineName::new("m").unwrap();
        let limits = crate::alarm::Limits::default();
        self.applier.watch = Some(crate::alarm::Watch::new(&layout, &machine, self.clock.clone(), limits));
        self
    }

    /// The journal's records so far.
    pub fn records(&mut self) -> Vec<lifeline_history::Record> {
        self.applier.sync().unwrap();
        let layout = StoreLayout::new(self._store.path());
        lifeline_history::Journal::open(&layout.history_journal(&MachineName::new("m").unwrap()))
            .records_after(i64::MIN)
            .unwrap()
    }

    /// An object of the attic.
    pub fn attic(&self, object: &str) -> PathBuf {
        StoreLayout::new(self._store.path()).history_attic(&MachineName::new("m").unwrap()).join(object)
    }

    pub fn root(&self) -> PathBuf {
        self.applier.mirror().path().to_path_buf()
    }

    pub fn op(&mut self, path: &[u8], kind: op::Kind) -> Result<(), OpError> {
        self.seq += 1;
        self.applier.apply(&Op { seq: self.seq, path: path.to_vec(), kind: Some(kind), origin: 0 })
    }

    /// The outside directory is exactly as created.
    pub fn assert_outside_untouched(&self) {
        let o = self.outside.path();
        let names: Vec<_> = fs::read_dir(o).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "outside dir changed: {names:?}");
        assert_eq!(fs::read(o.join("x")).unwrap(), b"outside x");
        assert_eq!(fs::read(o.join("y")).unwrap(), b"outside y");
        assert_eq!(fs::metadata(o).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(o.join("x")).unwrap().nlink(), 1);
    }
}

pub(crate) fn attr(mode: u32, mtime_sec: i64) -> Attr {
    Attr { mode, mtime_sec, mtime_nsec: 123_456_789, uid: None, gid: None }
}

pub(crate) fn data(content: &[u8], mode: u32) -> op::Kind {
    op::Kind::Data(FileData {
        replace: false,
        truncate_to: Some(0),
        chunks: vec![Chunk { offset: 0, data: content.to_vec() }],
        size: content.len() as u64,
        attr: Some(attr(mode, 1_600_000_000)),
    })
}

pub(crate) fn mkdir(mode: u32) -> op::Kind {
    op::Kind::Mkdir(Mkdir { attr: Some(attr(mode, 0)) })
}

pub(crate) fn rename(to: &[u8], exchange: bool) -> op::Kind {
    op::Kind::Rename(Rename { to: to.to_vec(), exchange })
}

pub(crate) fn symlink_op(target: &[u8]) -> op::Kind {
    op::Kind::Symlink(Symlink { target: target.to_vec() })
}

pub(crate) fn link(to: &[u8]) -> op::Kind {
    op::Kind::Link(Link { to: to.to_vec() })
}

fn opts() -> CompareOptions {
    CompareOptions { mode: true, mtime: true }
}

fn set_mtime(p: &Path) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(1_600_000_000, 123_456_789)).unwrap();
}

#[test]
fn every_op_kind_produces_the_expected_tree() {
    let mut f = Fixture::new();
    f.op(b"srv", mkdir(0o755)).unwrap();
    f.op(b"srv/data", mkdir(0o750)).unwrap();
    f.op(b"srv/data/a.txt", data(b"hello world", 0o644)).unwrap();
    // Partial write into an existing file, then grow with a hole.
    f.op(
        b"srv/data/a.txt",
        op::Kind::Data(FileData {
            replace: false,
            truncate_to: None,
            chunks: vec![Chunk { offset: 6, data: b"WORLD".to_vec() }],
            size: 11,
            attr: Some(attr(0o640, 1_600_000_000)),
        }),
    )
    .unwrap();
    f.op(
        b"srv/data/sparse",
        op::Kind::Data(FileData {
            replace: false,
            truncate_to: None,
            chunks: vec![Chunk { offset: 10, data: b"end".to_vec() }],
            size: 20,
            attr: Some(attr(0o600, 1_600_000_000)),
        }),
    )
    .unwrap();
    // Parents created on demand.
    f.op(b"srv/deep/er/file", data(b"deep", 0o644)).unwrap();
    f.op(b"srv/deep", mkdir(0o755)).unwrap();
    f.op(b"srv/deep/er", mkdir(0o755)).unwrap();
    f.op(b"srv/data/tmp", data(b"tmp", 0o644)).unwrap();
    f.op(b"srv/data/tmp", rename(b"srv/data/renamed", false)).unwrap();
    f.op(b"srv/data/gone", rename(b"srv/data/never", false)).unwrap(); // missing source: no-op
    f.op(b"srv/data/l", symlink_op(b"a.txt")).unwrap();
    f.op(b"srv/data/abs", symlink_op(b"/etc/passwd")).unwrap();
    f.op(b"srv/data/a.txt", link(b"srv/data/hard")).unwrap();
    f.op(b"srv/data/x", data(b"x", 0o644)).unwrap();
    f.op(b"srv/data/y", data(b"y", 0o644)).unwrap();
    f.op(b"srv/data/x", rename(b"srv/data/y", true)).unwrap();
    f.op(b"srv/data/x", rename(b"srv/data/z", true)).unwrap(); // z missing: plain rename
    f.op(b"srv/old", mkdir(0o755)).unwrap();
    f.op(b"srv/old/f", data(b"f", 0o644)).unwrap();
    f.op(b"srv/old", op::Kind::Remove(Remove {})).unwrap();
    f.op(b"srv/nothing", op::Kind::Remove(Remove {})).unwrap(); // missing is fine
    f.op(b"srv/deep/er/file", op::Kind::Setattr(SetAttr { attr: Some(attr(0o600, 1_600_000_000)) })).unwrap();
    f.op(b"srv/data/l", op::Kind::Setattr(SetAttr { attr: Some(attr(0o777, 1_600_000_000)) })).unwrap();
    // A directory replaced by a file, a file by a directory, a file by a symlink.
    f.op(b"srv/d2", mkdir(0o755)).unwrap();
    f.op(b"srv/d2/inner", data(b"inner", 0o644)).unwrap();
    f.op(b"srv/d2", data(b"now a file", 0o644)).unwrap();
    f.op(b"srv/f2", data(b"file", 0o644)).unwrap();
    f.op(b"srv/f2", mkdir(0o700)).unwrap();
    f.op(b"srv/f3", data(b"file", 0o644)).unwrap();
    f.op(b"srv/f3", symlink_op(b"target")).unwrap();
    // Rename a directory onto a non-empty directory: the source wins.
    f.op(b"srv/src", mkdir(0o755)).unwrap();
    f.op(b"srv/src/s", data(b"s", 0o644)).unwrap();
    f.op(b"srv/dst", mkdir(0o755)).unwrap();
    f.op(b"srv/dst/d", data(b"d", 0o644)).unwrap();
    f.op(b"srv/src", rename(b"srv/dst", false)).unwrap();
    // A file renamed onto a directory.
    f.op(b"srv/file", data(b"file", 0o644)).unwrap();
    f.op(b"srv/dir", mkdir(0o755)).unwrap();
    f.op(b"srv/dir/x", data(b"x", 0o644)).unwrap();
    f.op(b"srv/file", rename(b"srv/dir", false)).unwrap();
    // The cache must follow a renamed directory.
    f.op(b"srv/mv", mkdir(0o755)).unwrap();
    f.op(b"srv/mv/one", data(b"1", 0o644)).unwrap();
    f.op(b"srv/mv", rename(b"srv/moved", false)).unwrap();
    f.op(b"srv/mv/two", data(b"2", 0o644)).unwrap();
    f.op(b"srv/mv", mkdir(0o755)).unwrap();

    let exp = tempfile::tempdir().unwrap();
    let e = exp.path();
    let w = |p: &str, c: &[u8], mode: u32| {
        let p = e.join(p);
        fs::write(&p, c).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        set_mtime(&p);
    };
    let d = |p: &str, mode: u32| {
        fs::create_dir_all(e.join(p)).unwrap();
        fs::set_permissions(e.join(p), fs::Permissions::from_mode(mode)).unwrap();
    };
    d("srv", 0o755);
    d("srv/data", 0o750);
    d("srv/deep", 0o755);
    d("srv/deep/er", 0o755);
    d("srv/f2", 0o700);
    d("srv/dst", 0o755);
    d("srv/moved", 0o755);
    d("srv/mv", 0o755);
    w("srv/data/a.txt", b"hello WORLD", 0o640);
    let mut sparse = vec![0u8; 20];
    sparse[10..13].copy_from_slice(b"end");
    w("srv/data/sparse", &sparse, 0o600);
    w("srv/deep/er/file", b"deep", 0o600);
    w("srv/data/renamed", b"tmp", 0o644);
    symlink("a.txt", e.join("srv/data/l")).unwrap();
    symlink("/etc/passwd", e.join("srv/data/abs")).unwrap();
    w("srv/data/hard", b"hello WORLD", 0o640);
    w("srv/data/y", b"x", 0o644);
    w("srv/data/z", b"y", 0o644);
    w("srv/d2", b"now a file", 0o644);
    symlink("target", e.join("srv/f3")).unwrap();
    w("srv/dst/s", b"s", 0o644);
    w("srv/dir", b"file", 0o644);
    w("srv/moved/one", b"1", 0o644);
    w("srv/mv/two", b"2", 0o644);
    fs::set_permissions(e.join("srv/mv"), fs::Permissions::from_mode(0o755)).unwrap();

    let diffs = compare(e, &f.root(), opts()).unwrap();
    assert!(diffs.is_empty(), "{diffs:#?}");
    let root = f.root();
    assert_eq!(
        fs::metadata(root.join("srv/data/a.txt")).unwrap().ino(),
        fs::metadata(root.join("srv/data/hard")).unwrap().ino()
    );
    assert_eq!(f.applier.applied_seq(), Some(f.seq));
}

#[test]
fn hostile_paths_are_refused() {
    let mut f = Fixture::new();
    let escape = format!("{}/x", f.outside.path().display());
    for bad in [&b"../x"[..], b"/etc/x", b"a/../../x", escape.as_bytes(), b"a//b", b"./x", b"", b"a\0b"] {
        let e = f.op(bad, data(b"evil", 0o644)).unwrap_err();
        assert!(e.message.contains("refused"), "{}", e.message);
        assert_eq!(e.path, bad);
        let e = f.op(b"ok", rename(bad, false)).unwrap_err();
        assert!(e.message.contains("refused"), "{}", e.message);
        let e = f.op(b"ok", link(bad)).unwrap_err();
        assert!(e.message.contains("refused"), "{}", e.message);
        f.op(bad, op::Kind::Remove(Remove {})).unwrap_err();
        f.op(bad, mkdir(0o777)).unwrap_err();
        f.op(bad, symlink_op(b"/")).unwrap_err();
    }
    f.assert_outside_untouched();
    assert_eq!(fs::read_dir(f.root()).unwrap().count(), 0);
}

#[test]
fn symlinks_in_the_mirror_are_never_followed() {
    let mut f = Fixture::new();
    let out = f.outside.path().to_path_buf();
    let out_b = out.as_os_str().as_encoded_bytes().to_vec();
    let root = f.root();
    let evil = root.join("evil");

    // Writing below the symlink replaces it by a directory.
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"evil/file", data(b"evil", 0o644)).unwrap();
    f.assert_outside_untouched();
    assert!(evil.is_dir() && !evil.is_symlink());
    assert_eq!(fs::read(evil.join("file")).unwrap(), b"evil");

    // Writing to the symlink itself replaces it by a regular file.
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"evil", data(b"replaced", 0o666)).unwrap();
    f.assert_outside_untouched();
    assert!(fs::symlink_metadata(&evil).unwrap().is_file());
    assert_eq!(fs::read(&evil).unwrap(), b"replaced");

    // The same through a symlink to the outside file itself.
    f.op(b"evil", symlink_op(out.join("x").as_os_str().as_encoded_bytes())).unwrap();
    f.op(b"evil", data(b"replaced", 0o666)).unwrap();
    f.assert_outside_untouched();

    // Removing or renaming below the symlink touches nothing: nothing is there.
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"evil/x", op::Kind::Remove(Remove {})).unwrap();
    f.op(b"evil/x", rename(b"stolen", false)).unwrap();
    f.op(b"evil/x", rename(b"stolen", true)).unwrap();
    f.assert_outside_untouched();
    assert!(!root.join("stolen").exists());
    f.op(b"evil/x", link(b"stolen")).unwrap_err();
    f.op(b"evil/x", op::Kind::Setattr(SetAttr { attr: Some(attr(0o777, 0)) })).unwrap_err();
    f.assert_outside_untouched();

    // Setattr on the symlink does not chmod its target.
    f.op(b"evil", op::Kind::Setattr(SetAttr { attr: Some(attr(0o777, 5)) })).unwrap();
    f.assert_outside_untouched();

    // Rename into the symlink: it becomes a directory holding the file.
    f.op(b"a", data(b"a", 0o644)).unwrap();
    f.op(b"a", rename(b"evil/x", false)).unwrap();
    f.assert_outside_untouched();
    assert!(!evil.is_symlink());
    assert_eq!(fs::read(evil.join("x")).unwrap(), b"a");

    // Hard link into the symlink.
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"b", data(b"b", 0o644)).unwrap();
    f.op(b"b", link(b"evil/y")).unwrap();
    f.assert_outside_untouched();
    assert_eq!(fs::read(evil.join("y")).unwrap(), b"b");

    // A hard link onto the symlink replaces the symlink.
    f.op(b"evil", symlink_op(out.join("y").as_os_str().as_encoded_bytes())).unwrap();
    f.op(b"b", link(b"evil")).unwrap();
    f.assert_outside_untouched();
    assert_eq!(fs::read(&evil).unwrap(), b"b");

    // Exchange with a symlink swaps the links, never what they point to.
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"b", rename(b"evil", true)).unwrap();
    f.assert_outside_untouched();
    assert!(fs::symlink_metadata(root.join("b")).unwrap().is_symlink());

    // Mkdir on the symlink replaces it; Remove removes the link only.
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"evil", mkdir(0o700)).unwrap();
    assert!(evil.is_dir() && !evil.is_symlink());
    f.op(b"evil", symlink_op(&out_b)).unwrap();
    f.op(b"evil", op::Kind::Remove(Remove {})).unwrap();
    assert!(fs::symlink_metadata(&evil).is_err());
    // Removing a directory holding a symlink to the outside.
    f.op(b"dir/link", symlink_op(&out_b)).unwrap();
    f.op(b"dir", op::Kind::Remove(Remove {})).unwrap();
    f.assert_outside_untouched();
}

#[test]
fn seqs_must_increase() {
    let mut f = Fixture::new();
    let op = |seq, path: &[u8]| Op { seq, path: path.to_vec(), kind: Some(data(b"x", 0o644)), origin: 0 };
    let batch = OpBatch { ops: vec![op(5, b"a"), op(5, b"b"), op(4, b"c"), op(6, b"d")] };
    let ack = f.applier.apply_batch(&batch, &|| false).unwrap();
    assert_eq!(ack.applied_seq, 6);
    assert_eq!(ack.errors.len(), 2, "{:?}", ack.errors);
    assert_eq!((ack.errors[0].seq, &ack.errors[0].path[..]), (5, &b"b"[..]));
    assert!(ack.errors[0].message.contains("seq"));
    assert_eq!(ack.errors[1].seq, 4);
    let names: Vec<_> = fs::read_dir(f.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2);
    assert!(f.applier.apply_batch(&batch, &|| true).is_none());
}

#[test]
fn errors_name_the_op_and_path() {
    let mut f = Fixture::new();
    let e = f.op(b"srv/missing", link(b"srv/l")).unwrap_err();
    assert_eq!(e.message, "link srv/missing: link source is missing");
    let e = f.op(b"srv/missing", op::Kind::Setattr(SetAttr { attr: Some(attr(0, 0)) })).unwrap_err();
    assert!(e.message.starts_with("setattr srv/missing: "), "{}", e.message);
    f.op(b"d", mkdir(0o755)).unwrap();
    let e = f.op(b"d", rename(b"d/sub", false)).unwrap_err();
    assert!(e.message.starts_with("rename d: "), "{}", e.message);
    let e = f.op(b"d", link(b"e")).unwrap_err();
    assert!(e.message.contains("directory"), "{}", e.message);
    let e = f.applier.apply(&Op { seq: 100, path: b"x".to_vec(), kind: None, origin: 0 }).unwrap_err();
    assert!(e.message.contains("no kind"), "{}", e.message);
}

#[test]
fn ownership_is_applied() {
    let mut f = Fixture::new();
    let mut a = attr(0o4755, 1_600_000_000);
    a.uid = Some(1234);
    a.gid = Some(5678);
    f.op(b"f", op::Kind::Data(FileData { replace: false, truncate_to: None, chunks: vec![], size: 3, attr: Some(a) }))
        .unwrap();
    let md = fs::metadata(f.root().join("f")).unwrap();
    assert_eq!(md.len(), 3);
    if rustix::process::geteuid().is_root() {
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        // Setuid never reaches a file owned by someone else in the
        // mirror, and is still what the listing reports.
        assert_eq!(md.permissions().mode() & 0o7777, 0o1755);
        assert_eq!(kept_mode(&f.root().join("f")).as_deref(), Some("4755"));
        f.op(b"l", symlink_op(b"f")).unwrap();
        f.op(b"l", op::Kind::Setattr(SetAttr { attr: Some(a) })).unwrap();
        let md = fs::symlink_metadata(f.root().join("l")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
    }
}

#[test]
fn tree_ops_of_a_queue_are_applied_once() {
    let mut f = Fixture::new();
    let progress =
        crate::progress::QueueProgress::open(&StoreLayout::new(f._store.path()), &MachineName::new("m").unwrap(), 9)
            .unwrap();
    f.applier = Applier::new(f.applier.mirror().clone(), "m").with_progress(progress);
    let op = |seq, path: &[u8], kind, origin| Op { seq, path: path.to_vec(), kind: Some(kind), origin };
    let first = OpBatch {
        ops: vec![
            op(1, b"a.tmp", data(b"old", 0o644), 0),
            op(2, b"a.tmp", rename(b"a", false), 7),
            op(3, b"a.tmp", data(b"new", 0o644), 0),
        ],
    };
    let ack = f.applier.apply_batch(&first, &|| false).unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    f.applier.sync().unwrap();
    assert_eq!(f.applier.resume_origin(), 7);
    // The ack was lost: a new stream replays the same ops.
    let progress =
        crate::progress::QueueProgress::open(&StoreLayout::new(f._store.path()), &MachineName::new("m").unwrap(), 9)
            .unwrap();
    f.applier = Applier::new(f.applier.mirror().clone(), "m").with_progress(progress);
    assert_eq!(f.applier.resume_origin(), 7);
    let replay = OpBatch { ops: vec![op(1, b"a.tmp", rename(b"a", false), 7)] };
    let ack = f.applier.apply_batch(&replay, &|| false).unwrap();
    assert!(ack.errors.is_empty(), "{:?}", ack.errors);
    assert_eq!(f.applier.skipped, 1);
    // Not moved over `a` a second time.
    assert_eq!(fs::read(f.root().join("a")).unwrap(), b"old");
    assert_eq!(fs::read(f.root().join("a.tmp")).unwrap(), b"new");
}

#[test]
fn a_file_sent_whole_replaces_a_mirror_file_shared_by_other_names() {
    let mut f = Fixture::new();
    f.op(b"a", data(b"shared", 0o644)).unwrap();
    f.op(b"a", link(b"b")).unwrap();
    // Written through: both names change (the source's names are linked).
    let mut through = data(b"through", 0o644);
    if let op::Kind::Data(d) = &mut through {
        d.truncate_to = None;
    }
    f.op(b"a", through).unwrap();
    assert_eq!(fs::read(f.root().join("b")).unwrap(), b"through");
    // Sent whole: the source's `a` is another file now; `b` keeps its bytes.
    let mut whole = data(b"new a", 0o644);
    if let op::Kind::Data(d) = &mut whole {
        d.replace = true;
    }
    f.op(b"a", whole).unwrap();
    assert_eq!(fs::read(f.root().join("a")).unwrap(), b"new a");
    assert_eq!(fs::read(f.root().join("b")).unwrap(), b"through");
    assert_eq!(fs::metadata(f.root().join("b")).unwrap().nlink(), 1);
    f.assert_outside_untouched();
}

#[test]
fn directories_made_for_ops_that_came_first_are_reported() {
    let mut f = Fixture::new();
    f.op(b"d", op::Kind::Mkdir(Mkdir { attr: Some(attr(0o755, 1)) })).unwrap();
    f.op(b"d/f", data(b"1", 0o644)).unwrap();
    assert!(f.applier.resolver.take_implied().is_empty(), "d was sent");
    // A file whose directories were never sent (their op was lost to a
    // rename race): made, and named for the agent to reconcile.
    f.op(b"e/g/h", data(b"2", 0o644)).unwrap();
    f.op(b"e/g/i", data(b"3", 0o644)).unwrap();
    assert_eq!(f.applier.resolver.take_implied(), [b"e/g".to_vec()]);
    assert!(f.applier.resolver.take_implied().is_empty());
    let batch = OpBatch { ops: vec![Op { seq: 10, path: b"k/l".to_vec(), kind: Some(data(b"4", 0o644)), origin: 0 }] };
    let ack = f.applier.apply_batch(&batch, &|| false).unwrap();
    assert_eq!(ack.implied_dirs, [b"k".to_vec()]);
}

/// The modes `ListTree` reports for everything under `root`, by wire path.
pub(crate) fn listed_modes(mirror: &Mirror, root: &[u8]) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    crate::listing::stream(mirror, root, |m| {
        for e in m.entries {
            out.insert(String::from_utf8(e.path).unwrap(), e.attr.unwrap().mode);
        }
        true
    })
    .unwrap();
    out
}

/// The mode kept in the xattr of `p`, if any.
pub(crate) fn kept_mode(p: &Path) -> Option<String> {
    let mut buf = [0u8; 16];
    match rustix::fs::getxattr(p, crate::MODE_XATTR, &mut buf[..]) {
        Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {}: {e}", p.display()),
    }
}

pub(crate) fn disk_mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// No entry of the tree at `root` has a setuid or setgid bit.
pub(crate) fn assert_no_privileged_bits(root: &Path) {
    for e in lifeline_core::tree::scan(root).unwrap() {
        assert_eq!(e.mode & 0o6000, 0, "{} has mode {:o} in the mirror", e.rel.display(), e.mode);
    }
}

#[test]
fn setuid_files_are_stored_without_the_bit_and_listed_with_it() {
    let mut f = Fixture::new();
    let root = f.root();
    f.op(b"bin/su", data(b"#!/bin/true\n", 0o4755)).unwrap();
    f.op(b"bin/wall", data(b"wall", 0o2755)).unwrap();
    assert_no_privileged_bits(&root);
    assert_eq!(disk_mode_of(&root.join("bin/su")), 0o1755, "stripped, with the hint");
    assert_eq!(kept_mode(&root.join("bin/su")).as_deref(), Some("4755"));
    assert_eq!(kept_mode(&root.join("bin/wall")).as_deref(), Some("2755"));
    let modes = listed_modes(f.applier.mirror(), b"bin");
    assert_eq!(modes["bin/su"], 0o4755);
    assert_eq!(modes["bin/wall"], 0o2755);

    // Rewritten whole, with the same mode: still stripped, still listed.
    f.op(b"bin/su", data(b"#!/bin/false\n", 0o4755)).unwrap();
    assert_no_privileged_bits(&root);
    assert_eq!(listed_modes(f.applier.mirror(), b"bin")["bin/su"], 0o4755);

    // A chmod that clears the bits removes the kept mode.
    f.op(b"bin/su", op::Kind::Setattr(SetAttr { attr: Some(attr(0o755, 1)) })).unwrap();
    assert_eq!(disk_mode_of(&root.join("bin/su")), 0o755);
    assert_eq!(kept_mode(&root.join("bin/su")), None);
    assert_eq!(listed_modes(f.applier.mirror(), b"bin")["bin/su"], 0o755);
    // And one that sets them again keeps it again.
    f.op(b"bin/su", op::Kind::Setattr(SetAttr { attr: Some(attr(0o6711, 1)) })).unwrap();
    assert_no_privileged_bits(&root);
    assert_eq!(listed_modes(f.applier.mirror(), b"bin")["bin/su"], 0o6711);

    // The kept mode follows the file through renames and links.
    f.op(b"bin/su", rename(b"bin/su2", false)).unwrap();
    f.op(b"bin/su2", link(b"bin/su3")).unwrap();
    let modes = listed_modes(f.applier.mirror(), b"bin");
    assert_eq!((modes["bin/su2"], modes["bin/su3"]), (0o6711, 0o6711));
    assert_no_privileged_bits(&root);
}

#[test]
fn setgid_directories_are_stored_without_the_bit_and_listed_with_it() {
    let mut f = Fixture::new();
    let root = f.root();
    f.op(b"srv", mkdir(0o755)).unwrap();
    f.op(b"srv/shared", mkdir(0o2775)).unwrap();
    // A directory made inside would inherit a setgid bit from its parent.
    f.op(b"srv/shared/sub", mkdir(0o775)).unwrap();
    f.op(b"srv/shared/f", data(b"x", 0o664)).unwrap();
    assert_no_privileged_bits(&root);
    let modes = listed_modes(f.applier.mirror(), b"srv");
    assert_eq!(modes["srv/shared"], 0o2775);
    assert_eq!(modes["srv/shared/sub"], 0o775);
    assert_eq!(modes["srv/shared/f"], 0o664);
    f.op(b"srv/shared", mkdir(0o775)).unwrap();
    assert_eq!(kept_mode(&root.join("srv/shared")), None);
    assert_eq!(disk_mode_of(&root.join("srv/shared")), 0o775);
    assert_eq!(listed_modes(f.applier.mirror(), b"srv")["srv/shared"], 0o775);
}

#[test]
fn a_machines_own_sticky_modes_are_kept_as_they_are() {
    let mut f = Fixture::new();
    let root = f.root();
    f.op(b"tmp", mkdir(0o1777)).unwrap();
    f.op(b"tmp/f", data(b"x", 0o1644)).unwrap();
    assert_eq!(disk_mode_of(&root.join("tmp")), 0o1777);
    assert_eq!(kept_mode(&root.join("tmp")), None);
    let modes = listed_modes(f.applier.mirror(), b"tmp");
    assert_eq!(modes["tmp/f"], 0o1644);
    // Setuid and sticky both: kept whole.
    f.op(b"tmp/f", op::Kind::Setattr(SetAttr { attr: Some(attr(0o5755, 1)) })).unwrap();
    assert_eq!(disk_mode_of(&root.join("tmp/f")), 0o1755);
    assert_eq!(listed_modes(f.applier.mirror(), b"tmp")["tmp/f"], 0o5755);
}

#[test]
fn a_kept_mode_the_entry_does_not_match_is_ignored() {
    // What a crash between the xattr and the chmod of `set_mode` leaves.
    let mut f = Fixture::new();
    let root = f.root();
    f.op(b"d/a", data(b"x", 0o644)).unwrap();
    f.op(b"d/b", data(b"x", 0o1755)).unwrap();
    for (name, kept) in [("d/a", "4755"), ("d/b", "2700"), ("d/b", "garbage"), ("d/a", "4755")] {
        rustix::fs::setxattr(root.join(name), crate::MODE_XATTR, kept.as_bytes(), rustix::fs::XattrFlags::empty())
            .unwrap();
        let modes = listed_modes(f.applier.mirror(), b"d");
        assert_eq!((modes["d/a"], modes["d/b"]), (0o644, 0o1755), "{name}: {kept}");
    }
    // The machine's own sticky bit later gives `d/a` the hint: its stale
    // kept mode must not come back to life.
    f.op(b"d/a", op::Kind::Setattr(SetAttr { attr: Some(attr(0o1755, 1)) })).unwrap();
    assert_eq!(listed_modes(f.applier.mirror(), b"d")["d/a"], 0o1755);
    assert_eq!(kept_mode(&root.join("d/a")), None);
}

#[test]
fn bits_stored_before_the_fix_are_taken_off_and_kept() {
    let f = Fixture::new();
    let root = f.root();
    fs::create_dir_all(root.join("old/dir")).unwrap();
    fs::write(root.join("old/su"), b"x").unwrap();
    fs::set_permissions(root.join("old/su"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::set_permissions(root.join("old/dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    symlink("su", root.join("old/link")).unwrap();
    assert_eq!(crate::attrs::strip_stored_bits(&root).unwrap(), 2);
    assert_no_privileged_bits(&root);
    let modes = listed_modes(f.applier.mirror(), b"old");
    assert_eq!((modes["old/su"], modes["old/dir"]), (0o4750, 0o2775));
    assert_eq!(crate::attrs::strip_stored_bits(&root).unwrap(), 0, "nothing left");
}

/// What each kind of change keeps (docs/history.md): the records and the
/// attic after each op, and the mirror unchanged by keeping them.
mod kept {
    use super::*;
    use lifeline_history::record::Change;
    use lifeline_history::Clock;

    fn last(f: &mut Fixture) -> lifeline_history::Record {
        f.records().pop().expect("a record")
    }

    #[test]
    fn a_new_file_is_created_and_an_overwrite_keeps_the_old_bytes() {
        let mut f = Fixture::new();
        f.op(b"d/f", data(b"0123456789", 0o644)).unwrap();
        let recs = f.records();
        assert!(matches!(recs[0].change, Some(Change::Created(_))), "{recs:?}");
        assert!(recs.iter().any(|r| r.path == b"d/f" && matches!(r.change, Some(Change::Created(_)))));
        // Overwrite 3 bytes in the middle and append 2.
        f.op(
            b"d/f",
            op::Kind::Data(FileData {
                chunks: vec![Chunk { offset: 4, data: b"abc".to_vec() }, Chunk { offset: 10, data: b"XY".to_vec() }],
                size: 12,
                ..Default::default()
            }),
        )
        .unwrap();
        let r = last(&mut f);
        let Some(Change::Overwritten(o)) = r.change else { panic!("{r:?}") };
        assert_eq!(o.old_size, 10);
        assert_eq!(o.ranges.len(), 1, "the append keeps nothing: {o:?}");
        assert_eq!((o.ranges[0].offset, &o.ranges[0].data[..]), (4, &b"456"[..]));
        assert_eq!(o.attr.unwrap().mode, 0o644);
        assert_eq!(fs::read(f.root().join("d/f")).unwrap(), b"0123abc789XY");
        // Truncation keeps the tail.
        f.op(b"d/f", op::Kind::Data(FileData { truncate_to: Some(5), size: 5, ..Default::default() })).unwrap();
        let Some(Change::Overwritten(o)) = last(&mut f).change else { panic!() };
        assert_eq!((o.old_size, o.ranges[0].offset, &o.ranges[0].data[..]), (12, 5, &b"bc789XY"[..]));
    }

    #[test]
    fn what_is_removed_or_replaced_goes_to_the_attic_whole() {
        let mut f = Fixture::new();
        f.op(b"t", mkdir(0o755)).unwrap();
        f.op(b"t/a", data(b"a", 0o600)).unwrap();
        f.op(b"t/sub", mkdir(0o700)).unwrap();
        f.op(b"t/sub/b", data(b"b", 0o600)).unwrap();
        f.op(b"t", op::Kind::Remove(Remove {})).unwrap();
        assert!(!f.root().join("t").exists());
        let r = last(&mut f);
        let Some(Change::Displaced(d)) = r.change else { panic!("{r:?}") };
        assert_eq!(r.path, b"t");
        assert_eq!(fs::read(f.attic(&d.object).join("sub/b")).unwrap(), b"b", "the whole tree is kept");
        // A rename over a file keeps the file it replaces.
        f.op(b"x", data(b"old x", 0o600)).unwrap();
        f.op(b"y", data(b"new", 0o600)).unwrap();
        f.op(b"y", rename(b"x", false)).unwrap();
        let recs = f.records();
        let n = recs.len();
        let Some(Change::Displaced(d)) = &recs[n - 2].change else { panic!("{recs:?}") };
        assert_eq!(recs[n - 2].path, b"x");
        assert_eq!(fs::read(f.attic(&d.object)).unwrap(), b"old x");
        let Some(Change::Renamed(r)) = &recs[n - 1].change else { panic!("{recs:?}") };
        assert_eq!((&recs[n - 1].path[..], &r.to[..]), (&b"y"[..], &b"x"[..]));
        assert_eq!(fs::read(f.root().join("x")).unwrap(), b"new");
        // A symlink over a file, a setattr.
        f.op(b"x", symlink_op(b"target")).unwrap();
        let Some(Change::Displaced(d)) = last(&mut f).change else { panic!() };
        assert_eq!(fs::read(f.attic(&d.object)).unwrap(), b"new");
        f.op(b"z", data(b"z", 0o640)).unwrap();
        f.op(b"z", op::Kind::Setattr(SetAttr { attr: Some(attr(0o600, 5)) })).unwrap();
        let Some(Change::AttrChanged(a)) = last(&mut f).change else { panic!() };
        assert_eq!((a.mode, a.mtime_sec), (0o640, 1_600_000_000));
    }

    #[test]
    fn a_file_kept_in_the_attic_no_longer_changes_with_its_other_names() {
        let mut f = Fixture::new();
        f.op(b"a", data(b"shared", 0o644)).unwrap();
        f.op(b"a", link(b"b")).unwrap();
        f.op(b"a", op::Kind::Remove(Remove {})).unwrap();
        let Some(Change::Displaced(d)) = last(&mut f).change else { panic!() };
        let mut through = data(b"later", 0o644);
        if let op::Kind::Data(d) = &mut through {
            d.truncate_to = None;
        }
        f.op(b"b", through).unwrap();
        assert_eq!(fs::read(f.root().join("b")).unwrap(), b"later");
        assert_eq!(fs::read(f.attic(&d.object)).unwrap(), b"shared", "the attic's copy changed with b");
        assert_eq!(fs::metadata(f.attic(&d.object)).unwrap().permissions().mode() & 0o777, 0o644);
    }

    /// The next of a seeded sequence (xorshift64).
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// What a tree holds, for comparing: kind, bytes or target, mode.
    fn snapshot(root: &Path) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        if root.symlink_metadata().is_err() {
            return out;
        }
        for e in walkdir::WalkDir::new(root).follow_links(false).follow_root_links(false).sort_by_file_name() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = e.path().symlink_metadata().unwrap();
            let what = if md.file_type().is_symlink() {
                format!("link {}", fs::read_link(e.path()).unwrap().display())
            } else if md.is_dir() {
                format!("dir {:o}", md.mode() & 0o777)
            } else {
                format!("file {:o} {:?}", md.mode() & 0o777, String::from_utf8_lossy(&fs::read(e.path()).unwrap()))
            };
            out.insert(rel, what);
        }
        out
    }

    /// The test at the applier: a seeded workload of every kind of
    /// op over a small tree, its state recorded after each op; then the
    /// tree restored as of 40 of those instants equals what was recorded.
    #[test]
    fn the_tree_as_of_any_instant_comes_back() {
        for seed in (1..9u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            timeline_restores(seed);
        }
    }

    /// Diffs of two instants and the whole tree as of one, against the
    /// same recorded timelines.
    #[test]
    fn diffs_and_whole_trees_match_the_timeline() {
        for seed in (1..4u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let (f, timeline, mut seed) = workload(seed);
            let mut rnd = |n: u64| xorshift(&mut seed) % n;
            let store = StoreLayout::new(f._store.path());
            let machine = MachineName::new("m").unwrap();
            for _ in 0..15 {
                let i = rnd(timeline.len() as u64) as usize;
                let j = i + rnd((timeline.len() - i) as u64) as usize;
                let ((t1, s1), (t2, s2)) = (&timeline[i], &timeline[j]);
                let got = crate::diff::diff(&store, &machine, *t1, *t2, Some(b"w")).unwrap();
                let want: Vec<Vec<u8>> = s1
                    .keys()
                    .chain(s2.keys())
                    .filter(|k| s1.get(*k) != s2.get(*k))
                    .map(|k| if k.is_empty() { b"w".to_vec() } else { format!("w/{k}").into_bytes() })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let shown: Vec<Vec<u8>> =
                    got.iter().filter(|d| d.describe() != "~ mtime").map(|d| d.path.clone()).collect();
                assert_eq!(
                    shown.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
                    want.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(),
                    "diff {i}..{j}"
                );
                let to = tempfile::tempdir().unwrap();
                crate::restore::restore_tree_as_of(&store, &machine, *t1, to.path()).unwrap();
                assert_eq!(&snapshot(&to.path().join("w")), s1, "the whole tree as of {i}");
            }
        }
    }

    /// A seeded workload of every kind of op over a small tree, and the
    /// tree after each op with its instant.
    #[allow(clippy::type_complexity)]
    fn workload(mut seed: u64) -> (Fixture, Vec<(i64, std::collections::BTreeMap<String, String>)>, u64) {
        let mut f = Fixture::new();
        let mut rnd = |n: u64| xorshift(&mut seed) % n;
        let names = ["w/a", "w/b", "w/d/c", "w/d/e", "w/f/g", "w/d", "w/f", "w/h"];
        f.op(b"w", mkdir(0o755)).unwrap();
        let mut timeline = Vec::new();
        for step in 0..300u64 {
            let p = names[rnd(names.len() as u64) as usize].as_bytes();
            let q = names[rnd(names.len() as u64) as usize].as_bytes();
            let content = format!("step {step} {}", "x".repeat(rnd(40) as usize)).into_bytes();
            let kind = match rnd(10) {
                0 | 1 => data(&content, 0o600 + (rnd(2) as u32) * 0o44),
                2 => op::Kind::Data(FileData {
                    chunks: vec![Chunk { offset: rnd(30), data: content[..5].to_vec() }],
                    size: rnd(30) + 5,
                    ..Default::default()
                }),
                3 => op::Kind::Data(FileData { truncate_to: Some(rnd(8)), size: rnd(8), ..Default::default() }),
                4 => op::Kind::Remove(Remove {}),
                5 => mkdir(0o700 + (rnd(2) as u32) * 0o55),
                6 => rename(q, false),
                7 => symlink_op(format!("t{step}").as_bytes()),
                8 => op::Kind::Setattr(SetAttr { attr: Some(attr(0o600 + (rnd(3) as u32) * 0o11, step as i64)) }),
                _ => link(q),
            };
            // Errors (a rename of a missing name, a link of a directory)
            // change nothing, and are part of the workload too.
            let _ = f.op(p, kind);
            timeline.push((f.clock.now_ns(), snapshot(&f.root().join("w"))));
            f.clock.advance(1_000_000);
        }
        f.applier.sync().unwrap();
        (f, timeline, seed)
    }

    fn timeline_restores(seed: u64) {
        let seed0 = seed;
        let (f, timeline, mut seed) = workload(seed);
        let mut rnd = |n: u64| xorshift(&mut seed) % n;
        let store = StoreLayout::new(f._store.path());
        let machine = MachineName::new("m").unwrap();
        for i in 0..40 {
            let (at, want) = &timeline[rnd(timeline.len() as u64) as usize];
            let to = tempfile::tempdir().unwrap();
            crate::restore::restore_as_of(&store, &machine, *at, b"w", to.path())
                .unwrap_or_else(|e| panic!("restore {i} as of {at}: {e:#}"));
            let got = snapshot(&to.path().join("w"));
            if &got != want && std::env::var("LIFELINE_DEBUG_HISTORY").is_ok() {
                let recs =
                    lifeline_history::Journal::open(&store.history_journal(&machine)).records_after(*at).unwrap();
                for r in recs
                    .iter()
                    .filter(|r| {
                        format!("{:?}{:?}", String::from_utf8_lossy(&r.path), r.change)
                            .contains(&std::env::var("LIFELINE_DEBUG_HISTORY").unwrap())
                    })
                    .take(40)
                {
                    eprintln!(
                        "{} {} {:?} {:?}",
                        r.time_ns,
                        r.seq,
                        String::from_utf8_lossy(&r.path),
                        r.change.as_ref().map(|c| format!("{c:?}").chars().take(80).collect::<String>())
                    );
                }
            }
            assert_eq!(&got, want, "seed {seed0}: restore {i} as of {at}");
        }
        // The present, too; the mirror was not touched by the restores.
        let (at, want) = timeline.last().unwrap();
        assert_eq!(&snapshot(&f.root().join("w")), want);
        let to = tempfile::tempdir().unwrap();
        crate::restore::restore_as_of(&store, &machine, *at, b"w", to.path()).unwrap();
        assert_eq!(&snapshot(&to.path().join("w")), want);
    }

    /// Retention over simulated hours: a seeded workload (one op every
    /// 37 s for 3 hours), thinned as configured; the tree as of every
    /// kept point (each instant of the last 30 min, each 5-minute bucket's
    /// end for 2 h, each hour's end beyond) equals what was recorded, an
    /// instant inside a bucket gives its start or itself, and what is
    /// dropped past the last tier moves the horizon, before which restores
    /// are refused.
    #[test]
    fn retention_thins_exactly_as_configured() {
        let seeds: u64 = std::env::var("LIFELINE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
        for seed in (1..seeds).map(|i| i.wrapping_mul(0x2545_f491_4f6c_dd1d)) {
            retention_timeline(seed);
        }
    }

    fn retention_timeline(mut seed: u64) {
        use lifeline_history::retention::{self, Policy};
        const S: i64 = 1_000_000_000;
        let seed0 = seed;
        let mut f = Fixture::new();
        let mut rnd = |n: u64| xorshift(&mut seed) % n;
        let names = ["w/a", "w/b", "w/d/c", "w/d/e", "w/d", "w/f", "w/.a.swp"];
        f.op(b"w", mkdir(0o755)).unwrap();
        let start = f.clock.now_ns();
        let mut timeline = vec![(start, snapshot(&f.root().join("w")))];
        for step in 0..300u64 {
            f.clock.advance(37 * S);
            let p = names[rnd(names.len() as u64) as usize].as_bytes();
            let q = names[rnd(names.len() as u64) as usize].as_bytes();
            let content = format!("step {step} {}", "x".repeat(rnd(40) as usize)).into_bytes();
            let kind = match rnd(13) {
                0..=2 => data(&content, 0o644),
                9 => rename(q, false),
                10 => rename(q, true),
                11 => link(q),
                12 => symlink_op(format!("t{step}").as_bytes()),
                3 => op::Kind::Data(FileData {
                    chunks: vec![Chunk { offset: rnd(30), data: content[..5].to_vec() }],
                    size: rnd(30) + 5,
                    ..Default::default()
                }),
                4 => op::Kind::Remove(Remove {}),
                5 => mkdir(0o755),
                // An editor's save: a new file renamed over the old.
                6 | 7 => {
                    let _ = f.op(b"w/.a.swp", data(&content, 0o644));
                    let _ = f.op(b"w/.a.swp", rename(b"w/a", false));
                    timeline.push((f.clock.now_ns(), snapshot(&f.root().join("w"))));
                    continue;
                }
                _ => op::Kind::Setattr(SetAttr { attr: Some(attr(0o600, step as i64)) }),
            };
            let _ = f.op(p, kind);
            timeline.push((f.clock.now_ns(), snapshot(&f.root().join("w"))));
        }
        f.applier.sync().unwrap();
        let store = StoreLayout::new(f._store.path());
        let machine = MachineName::new("m").unwrap();
        let end = f.clock.now_ns();
        let policy = Policy::parse("30m", "5m:2h,1h:10h", None).unwrap();
        let before = f.records().len();
        let report = retention::apply(&store.history(&machine), &policy, end).unwrap();
        let after = f.records().len();
        assert!(report.records_folded > 0 && after < before * 9 / 10, "seed {seed0}: {before} → {after}: {report}");
        assert_eq!(report.records_dropped, 0);
        assert!(report.objects_freed > 0, "{report}");
        // Idempotent: a second pass at the same instant changes nothing.
        let again = retention::apply(&store.history(&machine), &policy, end).unwrap();
        assert!(!again.changed(), "{again}");

        let state_at = |t: i64| &timeline.iter().rev().find(|(at, _)| *at <= t).unwrap().1;
        let restore = |t: i64| {
            let to = tempfile::tempdir().unwrap();
            crate::restore::restore_as_of(&store, &machine, t, b"w", to.path()).map(|_| snapshot(&to.path().join("w")))
        };
        // The kept points: each bucket's end (the instant before the next
        // one starts), and every instant of the last 30 minutes.
        let mut points: Vec<i64> = Vec::new();
        for (at, _) in &timeline {
            let every = match end - at {
                a if a < 30 * 60 * S => {
                    points.push(*at);
                    continue;
                }
                a if a < 2 * 3600 * S => 300 * S,
                _ => 3600 * S,
            };
            points.push((at.div_euclid(every) + 1) * every - 1);
        }
        points.dedup();
        for (i, t) in points.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            let t = (*t).min(end);
            let got = restore(t).unwrap_or_else(|e| panic!("seed {seed0}: restore as of {t}: {e:#}"));
            assert_eq!(&got, state_at(t), "seed {seed0}: kept point {i} at {t}");
        }
        // Inside a bucket: its start, or the instant itself.
        for (at, _) in timeline.iter().filter(|(at, _)| end - at > 40 * 60 * S).step_by(7) {
            let every = if end - at < 2 * 3600 * S { 300 * S } else { 3600 * S };
            let bucket_start = at.div_euclid(every) * every - 1;
            if bucket_start < start {
                continue; // w itself was made in that bucket
            }
            let got = restore(*at).unwrap();
            assert!(&got == state_at(bucket_start) || &got == state_at(*at), "seed {seed0}: inside a bucket, at {at}");
        }

        // Eight hours later, the first hour is past the last tier (10 h).
        let later = end + 8 * 3600 * S;
        let report = retention::apply(&store.history(&machine), &policy, later).unwrap();
        assert!(report.records_dropped > 0, "{report}");
        let horizon = report.horizon_ns.expect("a horizon");
        assert!(horizon <= later - 10 * 3600 * S && horizon > start, "{report}");
        let e = restore(horizon - 1).unwrap_err();
        assert!(format!("{e:#}").contains("kept since"), "{e:#}");
        let first_kept = points.iter().copied().find(|p| *p >= horizon).unwrap();
        assert_eq!(&restore(first_kept).unwrap(), state_at(first_kept), "seed {seed0}: after the horizon");
        assert_eq!(&restore(end).unwrap(), state_at(end));
        // No attic object is left that no record names, none named is gone.
        let named: std::collections::HashSet<String> = f
            .records()
            .iter()
            .filter_map(|r| match &r.change {
                Some(Change::Displaced(d)) => Some(d.object.clone()),
                _ => None,
            })
            .collect();
        let attic: std::collections::HashSet<String> = fs::read_dir(store.history_attic(&machine))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(attic.is_subset(&named), "orphans: {:?}", attic.difference(&named).collect::<Vec<_>>());
    }

    /// A restore while the machine goes on replicating into what it
    /// restores (the agent's `history` and the tray restore from a live
    /// machine): the tree as of the instant comes back exactly, never an
    /// error for an entry that moved while it was copied.
    #[test]
    fn a_restore_during_replication_is_exact() {
        let mut f = Fixture::new();
        for i in 0..400 {
            f.op(format!("w/d{}/f{i}", i % 8).as_bytes(), data(format!("file {i}").as_bytes(), 0o644)).unwrap();
        }
        f.applier.sync().unwrap();
        let before = snapshot(&f.root().join("w"));
        let at = f.clock.now_ns();
        let store = StoreLayout::new(f._store.path());
        f.clock.advance(1_000);
        // Removes, renames and rewrites in what is restored, one every
        // 2 ms for 300 ms, synced as batches are.
        let busy = std::thread::spawn(move || {
            for i in 0..150 {
                let p = format!("w/d{}/f{i}", i % 8).into_bytes();
                let kind = match i % 3 {
                    0 => op::Kind::Remove(Remove {}),
                    1 => rename(format!("w/moved{i}").as_bytes(), false),
                    _ => data(b"rewritten", 0o600),
                };
                f.op(&p, kind).unwrap();
                f.applier.sync().unwrap();
                f.clock.advance(1_000);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            f
        });
        let machine = MachineName::new("m").unwrap();
        for _ in 0..3 {
            let to = tempfile::tempdir().unwrap();
            crate::restore::restore_as_of(&store, &machine, at, b"w", to.path())
                .unwrap_or_else(|e| panic!("a restore during replication: {e:#}"));
            assert_eq!(snapshot(&to.path().join("w")), before);
        }
        drop(busy.join().unwrap());
    }

    /// The store's layout puts the journal on the mirror's filesystem: one
    /// syncfs makes both durable, and the journal has nothing left to sync.
    #[test]
    fn one_syncfs_makes_the_journal_durable_with_the_mirror() {
        let mut f = Fixture::new();
        assert!(f.applier.history_on_mirror_fs, "the journal and the mirror are on one filesystem here");
        f.op(b"a", data(b"a", 0o600)).unwrap();
        f.applier.sync().unwrap();
        let seg = StoreLayout::new(f._store.path()).history_journal(&MachineName::new("m").unwrap());
        let seg = lifeline_history::Journal::open(&seg).segments().unwrap().remove(0).path;
        let st = rustix::fs::stat(&seg).unwrap();
        assert_eq!(st.st_dev, rustix::fs::fstat(f.applier.mirror().root()).unwrap().st_dev);
        assert_eq!(f.records().len(), 1);
    }

    #[test]
    fn records_carry_their_op_and_are_durable_with_the_batch() {
        let mut f = Fixture::new();
        f.op(b"a", data(b"a", 0o600)).unwrap();
        f.op(b"a", data(b"b", 0o600)).unwrap();
        let recs = f.records();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    }
}

/// What history costs the applier on a burst of new small files (the
/// shape of realtime.py's workload c): `cargo test --release -p
/// lifeline-mirror history_cost -- --ignored --nocapture` (the store in
/// TMPDIR; point it at ext4 for the receiver's case, on a filesystem of its
/// own: each sync is a `syncfs`, which also flushes whatever else is
/// written there). Rounds alternate without and with history. Applying is
/// measured in CPU time (the thread's, from schedstat: wall time on a
/// machine shared with builds measures them), syncing (every 1,000 ops, a
/// group commit, mostly waiting for the disk; `HISTORY_COST_EVERY=100` for
/// the smaller groups of a steady trickle) in wall time.
#[test]
#[ignore]
fn history_cost() {
    const ROUNDS: usize = 5;
    let every: u64 = std::env::var("HISTORY_COST_EVERY").map_or(1000, |v| v.parse().expect("a number of ops"));
    /// The CPU time this thread has run, in seconds.
    fn cpu() -> f64 {
        let s = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        s.split_whitespace().next().unwrap().parse::<u64>().unwrap() as f64 / 1e9
    }
    let mut times: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..2 * ROUNDS {
        let with = round % 2 == 1;
        let store = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(store.path());
        let machine = MachineName::new("m").unwrap();
        let mirror = Mirror::open(&layout, &machine).unwrap();
        let mut applier = Applier::new(mirror, "m");
        if with {
            let clock = std::sync::Arc::new(lifeline_history::SystemClock);
            applier = applier.with_history(History::open(&layout, &machine, clock).unwrap());
        }
        // Settle what the previous round left dirty before timing.
        applier.sync().unwrap();
        let (mut applying, mut syncing) = (0.0, 0.0);
        let mut c = cpu();
        for i in 0..20_000u64 {
            let path = format!("burst/d{}/f{i}", i % 100).into_bytes();
            applier.apply(&Op { seq: i + 1, path, kind: Some(data(&[b'x'; 700], 0o644)), origin: 0 }).unwrap();
            if i % every == every - 1 {
                applying += cpu() - c;
                let t = std::time::Instant::now();
                applier.sync().unwrap();
                syncing += t.elapsed().as_secs_f64();
                c = cpu();
            }
        }
        times[with as usize].push((applying, syncing));
        eprintln!("history {with}: 20,000 new files: applying {applying:.3} s CPU, syncing {syncing:.3} s");
    }
    let median = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let applying = (|t: &(f64, f64)| t.0) as fn(&(f64, f64)) -> f64;
    for (what, f) in [("applying (CPU)", applying), ("syncing", |t| t.1)] {
        let (without, with) = (median(&times[0], f), median(&times[1], f));
        eprintln!("median {what}: {without:.3} s without history, {with:.3} s with: x{:.2}", with / without);
    }
}
