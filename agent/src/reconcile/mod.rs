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
//! [`Reconcile::Delta`] with the mirror's size: the dispatcher then sends a
//! big one as an rsync-style delta against the mirror's copy (see
//! `scheduler::delta`). That is also where content hashes come in: a file
//! whose size is the same and only the mtime differs costs a signature and
//! one copy op when its content is unchanged.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::Sender;
use lifeline_core::tree::{self, Kind};
use lifeline_core::wirepath;
use lifeline_proto::v1::{tree_entry, ListTreeRequest, TreeEntries, TreeEntry};
use tokio::sync::Notify;
use tracing::{info, warn};

mod links;

use crate::scheduler::{Reconcile, SchedMsg};
use links::{LinkGroups, Name};
use crate::remote::Remote;
use crate::status::Shared;

/// Waits for requests and reconciles, one at a time (requests made while one
/// runs coalesce into one more run).
pub async fn run(
    remote: Remote,
    roots: Vec<PathBuf>,
    queue: Sender<SchedMsg>,
    shared: Arc<Shared>,
    trigger: Arc<Notify>,
) {
    loop {
        trigger.notified().await;
        if !shared.connected.load(Relaxed) {
            continue; // the next connection triggers it again
        }
        let suspect = shared.suspect_window();
        let started = std::time::Instant::now();
        match reconcile(&remote, &roots, &queue, suspect).await {
            Ok(n) => {
                if !shared.settle_suspect(suspect, started) {
                    // Changes may still be getting lost (a burst that
                    // overflows the ring): compare again once it is over.
                    let again = trigger.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        again.notify_one();
                    });
                }
                shared.reconciliations.fetch_add(1, Relaxed);
                shared.initial_sync_done.store(true, Relaxed);
                info!("reconciliation queued {n} paths that differ from the mirror");
            }
            Err(e) => {
                let msg = format!("reconciliation failed: {e:#}; it will be retried");
                warn!("{msg}");
                shared.set_error(msg);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                trigger.notify_one();
            }
        }
    }
}

async fn reconcile(remote: &Remote, roots: &[PathBuf], queue: &Sender<SchedMsg>, suspect_since_ns: i128) -> anyhow::Result<usize> {
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
    let worker = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
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
    /// Files modified at or after this time (ns since the epoch) are
    /// compared by content even when size and mtime match: changes to them
    /// may have been lost (see `Shared::suspect`).
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
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { continue };
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

    /// Queues what is left; returns how many paths were queued in all.
    pub fn finish(mut self) -> anyhow::Result<usize> {
        for root in self.roots.clone() {
            if !self.completed_roots.contains(&root) {
                anyhow::bail!("the receiver's listing ended before {} was complete", root.display());
            }
        }
        self.flush()?;
        Ok(self.queued)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.queued += self.out.len();
            self.queue.send(SchedMsg::Reconcile(std::mem::take(&mut self.out)))?;
        }
        Ok(())
    }

    /// One directory: local entries against the mirror's.
    fn compare_dir(&mut self, dir: &Path, mut remote: HashMap<OsString, TreeEntry>) -> anyhow::Result<()> {
        let local = match std::fs::File::open(dir) {
            Ok(f) => tree::list_dir_fd(f.as_fd())?,
            // Gone (or no longer a directory) locally: its parent's
            // comparison already queued it.
            Err(_) => return Ok(()),
        };
        for e in local {
            if e.kind == Kind::Other {
                continue;
            }
            let path = dir.join(&e.rel);
            let r = remote.remove(e.rel.as_os_str());
            let mirror_link_id = r.as_ref().filter(|r| r.kind == tree_entry::Kind::File as i32).map_or(0, |r| r.link_id);
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
        let file = |n: &str, link_id: u64| TreeEntry { link_id, ..entry(&root.join(n), &md(n), tree_entry::Kind::File, md(n).len()) };
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
        assert_eq!(c.finish().unwrap(), 5);
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
}
