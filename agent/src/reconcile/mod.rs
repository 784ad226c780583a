//! Reconciliation: compares the watched trees with the receiver's mirror and
//! queues every path that differs (size, mtime to the nanosecond, mode, kind,
//! symlink target) or that only the mirror has. Runs at start (the initial
//! sync), after every reconnect, after kernel events were lost, when capture
//! is switched back on, and on `lifeline-agent sync`.
//!
//! It only names paths: the scheduler reads them when it sends, so a change
//! racing with the scan is sent in its newest state, and a path that exists
//! again by then is not removed.
//!
//! A regular file the mirror holds an older regular file of is named as a
//! [`Reconcile::Delta`] with the mirror's size: the dispatcher then hands a
//! big one to the sender as a delta job, sent as an rsync-style delta
//! against the mirror's copy (see `scheduler::dispatcher::DeltaJob` and
//! `sender::signatures`). That is also where content hashes come in: a file
//! whose size is the same and only the mtime differs costs a signature and
//! one copy op when its content is unchanged.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::Context;
use crossbeam_channel::Sender;
use lifeline_core::tree::{self, Kind};
use lifeline_core::wirepath;
use lifeline_proto::v1::{tree_entry, ListTreeRequest, TreeEntries, TreeEntry};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

mod link_groups;

use crate::remote::Remote;
use crate::scheduler::{Reconcile, SchedMsg};
use crate::status::Counters;
use link_groups::{LinkGroups, Name};

/// Waits for requests and reconciles, one at a time (requests made while one
/// runs coalesce into one more run).
pub async fn run(
    remote: Remote,
    roots: Vec<PathBuf>,
    queue: Sender<SchedMsg>,
    counters: Arc<Counters>,
    trigger: Arc<Notify>,
) {
    loop {
        trigger.notified().await;
        if !counters.connected.load(Relaxed) {
            continue; // the next connection triggers it again
        }
        let suspect = counters.suspect_window();
        let started = std::time::Instant::now();
        match reconcile(&remote, &roots, &queue, suspect).await {
            Ok(Outcome { queued: n, raced }) => {
                if raced > 0 {
                    // Paths changed kind or vanished while being compared:
                    // what they are now was queued, and the next pass
                    // compares them (and what is below) again once the tree
                    // has had a moment.
                    info!("{raced} paths changed while being compared; reconciling again in 1 s");
                }
                if !counters.settle_suspect(suspect, started) || raced > 0 {
                    // Changes may still be getting lost (a burst that
                    // overflows the ring): compare again once it is over.
                    let again = trigger.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        again.notify_one();
                    });
                }
                counters.reconciliations.fetch_add(1, Relaxed);
                counters.last_reconcile_ms.store(started.elapsed().as_millis() as u64, Relaxed);
                counters.initial_sync_done.store(true, Relaxed);
                info!("reconciliation queued {n} paths that differ from the mirror");
            }
            Err(e) => {
                let msg = format!("reconciliation failed: {e:#}; it will be retried");
                warn!("{msg}");
                counters.set_error(msg);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                trigger.notify_one();
            }
        }
    }
}

/// What a completed pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Paths queued.
    pub queued: usize,
    /// Directories that vanished, or changed kind, between the mirror's
    /// listing and their comparison (see [`Comparer::compare_dir`]).
    pub raced: usize,
}

async fn reconcile(
    remote: &Remote,
    roots: &[PathBuf],
    queue: &Sender<SchedMsg>,
    suspect_since_ns: i128,
) -> anyhow::Result<Outcome> {
    let mut client = remote.connect().await?;
    let wire_roots: Vec<Vec<u8>> = roots.iter().map(|r| wirepath::from_local(r)).collect::<Result<_, _>>()?;
    let mut req = tonic::Request::new(ListTreeRequest { roots: wire_roots });
    remote.identify(&mut req);
    let mut stream = client.list_tree(req).await?.into_inner();
    // Directories are compared as their listings complete, while the rest
    // still streams in: a change near the top is found in milliseconds,
    // whatever the size of the tree.
    let (tx, rx) = std::sync::mpsc::sync_channel::<TreeEntries>(16);
    let mut comparer = Comparer::new(roots.to_vec(), queue.clone()).suspect_since(suspect_since_ns);
    let worker = tokio::task::spawn_blocking(move || -> anyhow::Result<Outcome> {
        for msg in rx {
            comparer.take(msg)?;
        }
        comparer.finish()
    });
    while let Some(msg) = stream.message().await? {
        if tx.send(msg).is_err() {
            break; // the worker failed; its error follows
        }
    }
    drop(tx);
    worker.await?
}

/// Compares the local trees with the mirror's listing, directory by
/// directory, and queues what differs.
pub struct Comparer {
    roots: Vec<PathBuf>,
    queue: Sender<SchedMsg>,
    /// Mirror entries by parent directory, until the directory completes.
    remote: HashMap<PathBuf, HashMap<OsString, TreeEntry>>,
    completed_roots: HashSet<PathBuf>,
    out: Vec<Reconcile>,
    queued: usize,
    /// Directories that raced with a change of the tree (see
    /// [`Comparer::compare_dir`]); what the mirror lists below them is left
    /// to the next pass.
    raced: HashSet<PathBuf>,
    /// The roots, open (each directory is opened beneath its root).
    root_fds: HashMap<PathBuf, OwnedFd>,
    /// Files modified at or after this time (ns since the epoch) are
    /// compared by content even when size and mtime match: changes to them
    /// may have been lost (see `Counters::suspect`).
    suspect_since_ns: i128,
    links: LinkGroups,
}

impl Comparer {
    pub fn new(roots: Vec<PathBuf>, queue: Sender<SchedMsg>) -> Comparer {
        // A root's own mode is not in the listing: always send it (one op).
        let out = roots.iter().map(|r| Reconcile::Path(r.clone())).collect();
        Comparer {
            roots,
            queue,
            remote: HashMap::new(),
            completed_roots: HashSet::new(),
            out,
            queued: 0,
            raced: HashSet::new(),
            root_fds: HashMap::new(),
            suspect_since_ns: i128::MAX,
            links: LinkGroups::default(),
        }
    }

    /// Compares files modified since `since_ns` by content.
    pub fn suspect_since(mut self, since_ns: i128) -> Comparer {
        self.suspect_since_ns = since_ns;
        self
    }

    pub fn take(&mut self, msg: TreeEntries) -> anyhow::Result<()> {
        for e in msg.entries {
            let path = wirepath::to_local(&e.path);
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            self.remote.entry(parent.to_path_buf()).or_default().insert(name.to_os_string(), e);
        }
        for dir in msg.complete_dirs {
            let dir = wirepath::to_local(&dir);
            let children = self.remote.remove(&dir).unwrap_or_default();
            if self.roots.contains(&dir) {
                self.completed_roots.insert(dir.clone());
            }
            self.compare_dir(&dir, children)?;
        }
        self.flush()
    }

    /// Queues what is left; returns how many paths were queued in all and
    /// how many directories raced.
    pub fn finish(mut self) -> anyhow::Result<Outcome> {
        for root in self.roots.clone() {
            if !self.completed_roots.contains(&root) {
                anyhow::bail!("the receiver's listing ended before {} was complete", root.display());
            }
        }
        self.flush()?;
        Ok(Outcome { queued: self.queued, raced: self.raced.len() })
    }

    /// Opens directory `dir` (below one of the roots) without following a
    /// symlink anywhere below its root: a directory swapped for a symlink
    /// (to an ancestor, to `/`) is never listed through.
    fn open_dir(&mut self, dir: &Path) -> anyhow::Result<std::io::Result<OwnedFd>> {
        use rustix::fs::{Mode, OFlags};
        let Some(root) = self.roots.iter().filter(|r| dir.starts_with(r)).max_by_key(|r| r.as_os_str().len()).cloned()
        else {
            anyhow::bail!("the receiver listed {}, which is outside the watched directories", dir.display());
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW;
        if !self.root_fds.contains_key(&root) {
            // A watched directory itself that cannot be opened is no race:
            // replication of it stopped working.
            let fd = lifeline_core::nofollow::open(&root, flags)
                .with_context(|| format!("cannot open the watched directory {} to compare it", root.display()))?;
            self.root_fds.insert(root.clone(), fd);
        }
        let root_fd = self.root_fds[&root].as_fd();
        let rel = dir.strip_prefix(&root).expect("below the root");
        if rel.as_os_str().is_empty() {
            return Ok(root_fd.try_clone_to_owned());
        }
        let resolve = rustix::fs::ResolveFlags::BENEATH | lifeline_core::nofollow::NO_SYMLINKS;
        Ok(lifeline_core::nofollow::openat2_retrying(root_fd, rel, flags, Mode::empty(), resolve).map_err(Into::into))
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.queued += self.out.len();
            // What the capture missed, for whoever debugs it.
            debug!(items = ?self.out, "differs from the mirror");
            self.queue.send(SchedMsg::Reconcile(std::mem::take(&mut self.out)))?;
        }
        Ok(())
    }

    /// One directory: local entries against the mirror's.
    ///
    /// The tree goes on changing while the mirror's listing streams in. A
    /// directory that is gone, or no longer a directory (a file, a symlink,
    /// something on the way replaced), when its turn comes is a race, not a
    /// failure: the path itself is queued, so whatever it is now is sent (or
    /// removed), and the pass counts it so that another pass compares it
    /// again. Only a real failure (an I/O error, the receiver gone) ends the
    /// pass with an error.
    fn compare_dir(&mut self, dir: &Path, mut remote: HashMap<OsString, TreeEntry>) -> anyhow::Result<()> {
        if dir.ancestors().skip(1).any(|a| self.raced.contains(a)) {
            return Ok(());
        }
        let listed = match self.open_dir(dir)? {
            Ok(fd) => tree::list_dir_fd(fd.as_fd()),
            Err(e) => Err(e),
        };
        let local = match listed {
            Ok(l) => l,
            Err(e) if lifeline_core::nofollow::is_race(&e) => {
                debug!(dir = %dir.display(), "changed while being compared ({e}); queued as it is now");
                self.raced.insert(dir.to_path_buf());
                self.out.push(Reconcile::Path(dir.to_path_buf()));
                return Ok(());
            }
            Err(e) => return Err(e).with_context(|| format!("cannot list {} to compare it", dir.display())),
        };
        for e in local {
            if e.kind == Kind::Other {
                continue;
            }
            let path = dir.join(&e.rel);
            let r = remote.remove(e.rel.as_os_str());
            let mirror_link_id =
                r.as_ref().filter(|r| r.kind == tree_entry::Kind::File as i32).map_or(0, |r| r.link_id);
            let mut forced = false;
            if e.kind == Kind::File && e.nlink > 1 {
                match self.links.name((e.dev, e.ino), &path, mirror_link_id) {
                    Name::Later(items) => {
                        self.out.extend(items);
                        continue;
                    }
                    Name::First { forced: f } => forced = f,
                }
            } else if e.kind == Kind::File {
                forced = LinkGroups::wrongly_linked(e.nlink, mirror_link_id);
            }
            // Sent whole (`Path`): a file of its own in the mirror.
            let verdict = if forced { Some(Reconcile::Path(path)) } else { self.judge(&e, path, r) };
            if let Some(v) = verdict {
                if e.kind == Kind::File && e.nlink > 1 {
                    self.links.first_queued((e.dev, e.ino));
                }
                self.out.push(v);
            }
        }
        // Only in the mirror: removed when sent (it is checked again then).
        let mut extra: Vec<PathBuf> = remote.into_keys().map(|n| dir.join(n)).collect();
        extra.sort();
        self.out.extend(extra.into_iter().map(Reconcile::Path));
        if self.out.len() >= 1000 {
            self.flush()?;
        }
        Ok(())
    }

    /// What to queue for local entry `e` at `path`, whose mirror entry is
    /// `r`; `None`: the same.
    fn judge(&self, e: &tree::Entry, path: PathBuf, r: Option<TreeEntry>) -> Option<Reconcile> {
        match r {
            Some(r) if same_entry(e, &r) && !self.suspect(e) => None,
            // A directory the mirror lacks (or holds as something else):
            // everything below it, without waiting for a listing.
            Some(r) if e.kind == Kind::Dir && r.kind != tree_entry::Kind::Dir as i32 => Some(Reconcile::Tree(path)),
            None if e.kind == Kind::Dir => Some(Reconcile::Tree(path)),
            // An older copy of a regular file: a delta may be sent.
            Some(r) if e.kind == Kind::File && r.kind == tree_entry::Kind::File as i32 => {
                Some(Reconcile::Delta { path, mirror_size: r.size })
            }
            _ => Some(Reconcile::Path(path)),
        }
    }

    /// Equal size and mtime prove nothing for a file modified while changes
    /// could be lost: a write in the same timestamp tick as the copy the
    /// mirror got leaves both unchanged.
    /// (A file with several names whose copies in the mirror are not linked
    /// is sent whole: see [`links`].)
    fn suspect(&self, e: &tree::Entry) -> bool {
        e.kind == Kind::File && (e.mtime_sec as i128) * 1_000_000_000 + e.mtime_nsec as i128 >= self.suspect_since_ns
    }
}

fn same_entry(l: &tree::Entry, r: &TreeEntry) -> bool {
    let attr = r.attr.unwrap_or_default();
    match (l.kind, tree_entry::Kind::try_from(r.kind)) {
        (Kind::File, Ok(tree_entry::Kind::File)) => {
            l.size == r.size && l.mode == attr.mode && l.mtime_sec == attr.mtime_sec && l.mtime_nsec == attr.mtime_nsec
        }
        (Kind::Dir, Ok(tree_entry::Kind::Dir)) => l.mode == attr.mode,
        (Kind::Symlink, Ok(tree_entry::Kind::Symlink)) => {
            l.symlink_target.as_ref().map(|t| t.as_bytes()) == Some(&r.symlink_target[..])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_proto::v1::Attr;
    use std::os::unix::fs::MetadataExt;

    fn entry(path: &Path, md: &std::fs::Metadata, kind: tree_entry::Kind, size: u64) -> TreeEntry {
        TreeEntry {
            path: wirepath::from_local(path).unwrap(),
            kind: kind as i32,
            size,
            attr: Some(Attr {
                mode: md.mode() & 0o7777,
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                uid: None,
                gid: None,
            }),
            symlink_target: Vec::new(),
            link_id: 0,
        }
    }

    fn findings(c: Comparer, rx: crossbeam_channel::Receiver<SchedMsg>) -> Vec<Reconcile> {
        c.finish().unwrap();
        let mut got = Vec::new();
        for m in rx.try_iter() {
            let SchedMsg::Reconcile(items) = m else { panic!() };
            got.extend(items);
        }
        got
    }

    /// Hard links: names linked in the mirror as in the source cost nothing
    /// (even unchanged, they used to be compared by content every time); a
    /// name split off in the mirror has the first name sent whole and every
    /// name linked again; a mirror file shared by two source files is split.
    #[test]
    fn relinks_names_the_mirror_holds_as_separate_files() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(root.join("a"), b"data").unwrap();
        std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::fs::hard_link(root.join("a"), root.join("c")).unwrap();
        std::fs::write(root.join("x"), b"other").unwrap();
        std::fs::write(root.join("y"), b"more").unwrap();
        let md = |n: &str| std::fs::metadata(root.join(n)).unwrap();
        let file = |n: &str, link_id: u64| TreeEntry {
            link_id,
            ..entry(&root.join(n), &md(n), tree_entry::Kind::File, md(n).len())
        };
        let wire = |p: &Path| wirepath::from_local(p).unwrap();
        let id = (md("a").dev(), md("a").ino());

        // All linked as in the source: nothing to do.
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut c = Comparer::new(vec![root.clone()], tx);
        let all = vec![file("a", 9), file("b", 9), file("c", 9), file("x", 0), file("y", 0)];
        c.take(TreeEntries { entries: all, complete_dirs: vec![wire(&root)] }).unwrap();
        assert_eq!(findings(c, rx), vec![Reconcile::Path(root.clone())]);

        // c is a file of its own in the mirror; x shares the mirror's file
        // with y, which the source does not.
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut c = Comparer::new(vec![root.clone()], tx);
        let split = vec![file("a", 9), file("b", 9), file("c", 0), file("x", 5), file("y", 5)];
        c.take(TreeEntries { entries: split, complete_dirs: vec![wire(&root)] }).unwrap();
        let link = |to: &str| Reconcile::Link { from: root.join("a"), to: root.join(to), id };
        assert_eq!(
            findings(c, rx),
            vec![
                Reconcile::Path(root.clone()),
                Reconcile::Path(root.join("a")),
                link("b"),
                link("c"),
                Reconcile::Path(root.join("x")),
                Reconcile::Path(root.join("y")),
            ]
        );
    }

    #[test]
    fn finds_changed_missing_and_extra_paths_directory_by_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::write(root.join("same"), b"x").unwrap();
        std::fs::write(root.join("changed"), b"xy").unwrap();
        std::fs::create_dir(root.join("newdir")).unwrap();
        std::fs::write(root.join("newdir/inner"), b"").unwrap();
        std::fs::create_dir(root.join("both")).unwrap();
        std::fs::write(root.join("both/new"), b"").unwrap();
        let md = std::fs::metadata(root.join("same")).unwrap();
        let dmd = std::fs::metadata(root.join("both")).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut c = Comparer::new(vec![root.clone()], tx);
        let wire = |p: &Path| wirepath::from_local(p).unwrap();
        c.take(TreeEntries {
            entries: vec![
                entry(&root.join("same"), &md, tree_entry::Kind::File, 1),
                entry(&root.join("changed"), &md, tree_entry::Kind::File, 1),
                entry(&root.join("gone"), &md, tree_entry::Kind::Dir, 0),
                entry(&root.join("both"), &dmd, tree_entry::Kind::Dir, 0),
            ],
            complete_dirs: vec![wire(&root)],
        })
        .unwrap();
        // Nothing below "both" is judged before its listing completes.
        c.take(TreeEntries { entries: vec![], complete_dirs: vec![wire(&root.join("both"))] }).unwrap();
        assert_eq!(c.finish().unwrap(), Outcome { queued: 5, raced: 0 });
        let mut got = Vec::new();
        for m in rx.try_iter() {
            let SchedMsg::Reconcile(items) = m else { panic!() };
            got.extend(items);
        }
        assert_eq!(
            got,
            vec![
                Reconcile::Path(root.clone()),
                Reconcile::Delta { path: root.join("changed"), mirror_size: 1 },
                Reconcile::Tree(root.join("newdir")),
                Reconcile::Path(root.join("gone")),
                Reconcile::Path(root.join("both/new")),
            ]
        );
    }

    /// The mirror's listing of `mirror` (a copy of `src`), as the receiver
    /// streams it: breadth-first, each directory completed once its entries
    /// are out (so a parent completes before its children), named by the
    /// source's paths; in messages of `chunk` entries.
    fn listing(src: &Path, mirror: &Path, chunk: usize) -> Vec<TreeEntries> {
        let wire = |rel: &Path| {
            wirepath::from_local(&if rel.as_os_str().is_empty() { src.to_path_buf() } else { src.join(rel) }).unwrap()
        };
        let mut out = Vec::new();
        let mut msg = TreeEntries::default();
        let mut queue = std::collections::VecDeque::from([PathBuf::new()]);
        while let Some(dir) = queue.pop_front() {
            let fd = std::fs::File::open(mirror.join(&dir)).unwrap();
            for e in tree::list_dir_fd(fd.as_fd()).unwrap() {
                let rel = dir.join(&e.rel);
                let md = std::fs::symlink_metadata(mirror.join(&rel)).unwrap();
                let kind = match e.kind {
                    Kind::File => tree_entry::Kind::File,
                    Kind::Dir => {
                        queue.push_back(rel.clone());
                        tree_entry::Kind::Dir
                    }
                    Kind::Symlink => tree_entry::Kind::Symlink,
                    Kind::Other => continue,
                };
                let mut te = entry(&src.join(&rel), &md, kind, e.size);
                te.path = wire(&rel);
                te.symlink_target = e.symlink_target.map(|t| t.as_bytes().to_vec()).unwrap_or_default();
                msg.entries.push(te);
                if msg.entries.len() >= chunk {
                    out.push(std::mem::take(&mut msg));
                }
            }
            msg.complete_dirs.push(wire(&dir));
        }
        out.push(msg);
        out
    }

    /// A stand-in for the dispatcher and the receiver: makes `mirror`'s copy
    /// of each queued path what the source's is now (`Tree`: the whole
    /// subtree), never following a symlink on either side.
    fn apply(src: &Path, mirror: &Path, items: &[Reconcile]) {
        fn remove(m: &Path) {
            match std::fs::symlink_metadata(m) {
                Ok(md) if md.is_dir() => std::fs::remove_dir_all(m).unwrap(),
                Ok(_) => std::fs::remove_file(m).unwrap(),
                Err(_) => {}
            }
        }
        fn one(src: &Path, mirror: &Path, p: &Path, tree: bool) {
            let rel = p.strip_prefix(src).unwrap();
            let m = mirror.join(rel);
            // The parent is not a directory (yet) in the mirror: its own
            // item makes it one.
            if !rel.as_os_str().is_empty()
                && !std::fs::symlink_metadata(m.parent().unwrap()).is_ok_and(|md| md.is_dir())
            {
                return;
            }
            let md = match lifeline_core::nofollow::lstat(p) {
                Ok(md) => md,
                Err(e) if lifeline_core::nofollow::is_race(&e) => return remove(&m),
                Err(e) => panic!("{}: {e}", p.display()),
            };
            let mm = std::fs::symlink_metadata(&m).ok();
            if md.is_dir() {
                if !mm.as_ref().is_some_and(|x| x.is_dir()) {
                    remove(&m);
                    std::fs::create_dir(&m).unwrap();
                }
                std::fs::set_permissions(&m, md.permissions()).unwrap();
                if tree {
                    let Ok(fd) =
                        lifeline_core::nofollow::open(p, rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY)
                    else {
                        return;
                    };
                    for e in tree::list_dir_fd(fd.as_fd()).unwrap_or_default() {
                        one(src, mirror, &p.join(&e.rel), true);
                    }
                }
            } else if md.file_type().is_symlink() {
                let Ok(t) = lifeline_core::nofollow::read_link(p) else {
                    return;
                };
                remove(&m);
                std::os::unix::fs::symlink(t, &m).unwrap();
            } else if md.is_file() {
                let Ok(data) = std::fs::read(p) else { return };
                remove(&m);
                std::fs::write(&m, &data).unwrap();
                let f = std::fs::File::options().write(true).open(&m).unwrap();
                f.set_times(std::fs::FileTimes::new().set_modified(md.modified().unwrap())).unwrap();
                f.set_permissions(md.permissions()).unwrap();
            }
        }
        for item in items {
            match item {
                Reconcile::Tree(p) => one(src, mirror, p, true),
                Reconcile::Path(p) | Reconcile::Delta { path: p, .. } => one(src, mirror, p, false),
                Reconcile::Link { to, .. } => one(src, mirror, to, false),
            }
        }
    }

    /// One pass over the listing, fed in messages with `pause` between them
    /// (while the tree changes).
    fn pass(src: &Path, mirror: &Path, pause: std::time::Duration) -> anyhow::Result<(Outcome, Vec<Reconcile>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut c = Comparer::new(vec![src.to_path_buf()], tx);
        for msg in listing(src, mirror, 4) {
            c.take(msg)?;
            std::thread::sleep(pause);
        }
        let outcome = c.finish()?;
        let items = rx.try_iter().flat_map(|m| match m {
            SchedMsg::Reconcile(items) => items,
            _ => panic!("only findings are queued"),
        });
        Ok((outcome, items.collect()))
    }

    /// A scratch directory holding an empty `src` (canonical) and `mirror`.
    fn src_and_mirror() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        let src = d.path().join("src").canonicalize().unwrap();
        let mirror = d.path().join("mirror");
        std::fs::create_dir(&mirror).unwrap();
        (d, src, mirror)
    }

    /// A directory of the mirror's listing that is, by the time it is
    /// compared, a file, a symlink to `/`, a symlink to its parent, or gone:
    /// the pass goes on, the path is queued as it is now, the race is
    /// counted; nothing is listed through the symlinks.
    #[test]
    fn a_directory_that_changed_kind_or_vanished_is_requeued_not_fatal() {
        let (_d, src, mirror) = src_and_mirror();
        for name in ["file", "slash", "parent", "gone", "kept"] {
            std::fs::create_dir_all(mirror.join(name).join("sub")).unwrap();
            std::fs::write(mirror.join(name).join("inner"), b"x").unwrap();
            std::fs::create_dir_all(src.join(name).join("sub")).unwrap();
            std::fs::write(src.join(name).join("inner"), b"x").unwrap();
        }
        let listed = listing(&src, &mirror, 1000);
        // Between the listing and the comparison:
        std::fs::remove_dir_all(src.join("file")).unwrap();
        std::fs::write(src.join("file"), b"now a file").unwrap();
        std::fs::remove_dir_all(src.join("slash")).unwrap();
        std::os::unix::fs::symlink("/", src.join("slash")).unwrap();
        std::fs::remove_dir_all(src.join("parent")).unwrap();
        std::os::unix::fs::symlink("..", src.join("parent")).unwrap();
        std::fs::remove_dir_all(src.join("gone")).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut c = Comparer::new(vec![src.clone()], tx);
        for msg in listed {
            c.take(msg).expect("a race is no failure");
        }
        let outcome = c.finish().unwrap();
        // Each of the four; not their `sub` (the mirror lists it, below a
        // path that is no longer a directory: the next pass sees to it).
        assert_eq!(outcome.raced, 4, "{outcome:?}");
        let got: Vec<Reconcile> = rx
            .try_iter()
            .flat_map(|m| match m {
                SchedMsg::Reconcile(items) => items,
                _ => panic!("only findings are queued"),
            })
            .collect();
        for name in ["file", "slash", "parent", "gone"] {
            assert!(got.contains(&Reconcile::Path(src.join(name))), "{name} not requeued: {got:?}");
            for below in ["sub", "inner", "proc", "etc"] {
                let p = src.join(name).join(below);
                assert!(
                    !got.iter().any(|r| matches!(r, Reconcile::Path(x) | Reconcile::Tree(x) if x.starts_with(&p))),
                    "{} was compared through a path that is no longer a directory: {got:?}",
                    p.display()
                );
            }
        }
        assert!(!got.iter().any(|r| matches!(r, Reconcile::Path(x) if x.starts_with(src.join("kept")))), "{got:?}");
    }

    /// Type changes (file, directory, symlink to `/`, to the parent, to the
    /// root), renames of directories being listed, and deletions, racing
    /// with passes of the comparison: no pass fails, and once the tree is
    /// still, at most a few passes bring the mirror to the source.
    #[test]
    fn passes_racing_with_type_changes_renames_and_deletions_converge() {
        use rand::{Rng, SeedableRng};
        let (_d, src, mirror) = src_and_mirror();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let changes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let racer = {
            let (src, stop, changes) = (src.clone(), stop.clone(), changes.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(0x21_04);
                let names = ["a", "b", "c", "a/x", "a/y", "b/x", "b/y/z", "c/x/y"];
                let clear = |p: &Path| match std::fs::symlink_metadata(p) {
                    Ok(md) if md.is_dir() => {
                        let _ = std::fs::remove_dir_all(p);
                    }
                    Ok(_) => {
                        let _ = std::fs::remove_file(p);
                    }
                    Err(_) => {}
                };
                while !stop.load(Relaxed) {
                    let p = src.join(names[rng.random_range(0..names.len())]);
                    let q = src.join(names[rng.random_range(0..names.len())]);
                    let _ = match rng.random_range(0..6) {
                        0 => {
                            clear(&p);
                            std::fs::write(&p, vec![b'f'; rng.random_range(0..3000)])
                        }
                        1 => {
                            clear(&p);
                            std::fs::create_dir(&p).and_then(|_| std::fs::write(p.join("f"), b"in a directory"))
                        }
                        2 => {
                            clear(&p);
                            let targets = [PathBuf::from("/"), PathBuf::from(".."), src.clone(), PathBuf::from("a")];
                            std::os::unix::fs::symlink(&targets[rng.random_range(0..targets.len())], &p)
                        }
                        3 | 4 => std::fs::rename(&p, &q),
                        _ => {
                            clear(&p);
                            Ok(())
                        }
                    };
                    changes.fetch_add(1, Relaxed);
                    std::thread::sleep(std::time::Duration::from_micros(rng.random_range(0..400)));
                }
            })
        };
        let mut raced = 0;
        let mut passes_racing = 0;
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(2) {
            passes_racing += 1;
            let (o, items) = pass(&src, &mirror, std::time::Duration::from_millis(1))
                .unwrap_or_else(|e| panic!("a pass failed while the tree changed: {e:#}"));
            raced += o.raced;
            apply(&src, &mirror, &items);
        }
        stop.store(true, Relaxed);
        racer.join().unwrap();
        let mut passes = 0;
        loop {
            let (o, items) = pass(&src, &mirror, std::time::Duration::ZERO).unwrap();
            apply(&src, &mirror, &items);
            passes += 1;
            if o.raced == 0 && items == vec![Reconcile::Path(src.clone())] {
                break;
            }
            assert!(passes < 5, "still finding differences after {passes} passes on a still tree: {items:?}");
        }
        let diffs = tree::compare(&src, &mirror, tree::CompareOptions { mode: true, mtime: false }).unwrap();
        assert!(diffs.is_empty(), "the mirror did not converge: {diffs:?}");
        eprintln!(
            "{passes_racing} passes raced {} changes ({raced} directories changed while compared); \
             converged {passes} passes after the tree stood still",
            changes.load(Relaxed)
        );
    }
}
