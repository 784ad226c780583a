//! The schedule managing unit: coalesces file modification messages into an
//! ordered list of pending work between two dispatches.
//!
//! Tree operations (remove, rename, link) keep their order. Everything whose
//! content is read at send time (file data, directories, symlinks,
//! attributes) is a [`Content`] entry placed where its first change happened,
//! and later changes to the same file merge into it: overlapping ranges merge,
//! a truncation is remembered, a rename re-points the entry's *local* path
//! (where to read) while its *remote* path stays the name the receiver knows
//! at that point of the order, and an unlink cancels it.
//!
//! Every change comes with its *origin*, its position in the queue's log
//! ([`super::queue_log`]). Items remember the oldest origin they carry, so the
//! scheduler knows which part of the log is still needed; remove, rename and
//! link ops carry their origin to the receiver, which remembers the highest
//! it applied. When the log is replayed after a crash or reconnect, those
//! the receiver already applied are not sent again: they only move the
//! pending entries to the names the receiver now uses ([`Coalescer::resume`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeline_capture::{ChangeKind, FileChange};

use super::hardlinks::{FileId, HardLinks};
use super::ranges::RangeSet;

/// What to send for a path, read from the local file system at send time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// Changed ranges of a regular file.
    File {
        ranges: RangeSet,
        truncate_to: Option<u64>,
        full: bool,
    },
    Dir,
    Symlink,
    /// Only attributes (mode, owner, times).
    Attr,
    /// Reconciliation: whatever is at the path now, or remove it if nothing is.
    Check,
    /// Reconciliation of a path the mirror holds an older regular file of
    /// (`base_len` bytes when listed): like `Check`, but a regular file big
    /// enough is sent as a delta against the mirror's copy.
    Delta {
        base_len: u64,
    },
    /// Everything under the path (a tree that appeared from outside).
    Tree,
}

#[derive(Clone, Debug)]
pub struct Content {
    /// Name the receiver knows the object by at this point of the order.
    pub remote: PathBuf,
    /// Where the object is now on the local side (follows renames).
    pub local: PathBuf,
    pub what: What,
    /// Expected inode number (0: any). Guards against reading a different
    /// file that took the name since.
    pub ino: u64,
    /// `st_dev` of that inode (0: unknown).
    pub dev: u64,
    /// When the first change merged into this entry was captured.
    pub since: Instant,
    /// Times it was put back because the local object had vanished.
    pub deferrals: u32,
    /// Oldest queue origin merged into this entry ([`NO_ORIGIN`]: none).
    pub origin: u64,
}

/// Origin of work that did not come from the queue (reconciliation).
pub const NO_ORIGIN: u64 = u64::MAX;

#[derive(Clone, Debug)]
pub enum Item {
    Content(Content),
    Remove {
        path: PathBuf,
        since: Instant,
        origin: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        exchange: bool,
        since: Instant,
        origin: u64,
    },
    /// `verify`: a reconciliation's link, sent only if both names still
    /// denote this file when it is dispatched.
    Link {
        from: PathBuf,
        to: PathBuf,
        since: Instant,
        origin: u64,
        verify: Option<FileId>,
    },
}

impl Item {
    pub fn since(&self) -> Instant {
        match self {
            Item::Content(c) => c.since,
            Item::Remove { since, .. } | Item::Rename { since, .. } | Item::Link { since, .. } => *since,
        }
    }

    /// The oldest queue origin this item carries.
    pub fn origin(&self) -> u64 {
        match self {
            Item::Content(c) => c.origin,
            Item::Remove { origin, .. } | Item::Rename { origin, .. } | Item::Link { origin, .. } => *origin,
        }
    }
}

/// Pending work in order, with an index from local path to content entry.
#[derive(Default)]
pub struct Coalescer {
    items: Vec<Option<Item>>,
    index: BTreeMap<PathBuf, usize>,
    pending_bytes: u64,
    live: usize,
    oldest: Option<Instant>,
    roots: Vec<PathBuf>,
    links: HardLinks,
    /// Tree changes up to this origin are applied at the receiver already.
    remote_done: u64,
}

/// Keys of `index` equal to `p` or below it.
fn under<'a>(index: &'a BTreeMap<PathBuf, usize>, p: &'a Path) -> impl Iterator<Item = (&'a PathBuf, &'a usize)> {
    index.range(p.to_path_buf()..).take_while(move |(k, _)| k.starts_with(p))
}

impl Coalescer {
    pub fn new(roots: Vec<PathBuf>) -> Coalescer {
        Coalescer { roots, ..Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Number of pending items.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Bytes of file ranges pending (a hint for dispatching early).
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    fn watched(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    fn push(&mut self, item: Item) {
        let since = item.since();
        self.oldest = Some(self.oldest.map_or(since, |o| o.min(since)));
        if let Item::Content(c) = &item {
            self.index.insert(c.local.clone(), self.items.len());
        }
        self.items.push(Some(item));
        self.live += 1;
    }

    /// The content entry for `local`, created with `what` if there is none.
    fn entry(&mut self, local: &Path, (dev, ino): (u64, u64), since: Instant, origin: u64, what: What) -> &mut Content {
        let i = match self.index.get(local) {
            Some(&i) => i,
            None => {
                self.push(Item::Content(Content {
                    remote: local.to_path_buf(),
                    local: local.to_path_buf(),
                    what,
                    ino,
                    dev,
                    since,
                    deferrals: 0,
                    origin,
                }));
                self.items.len() - 1
            }
        };
        match &mut self.items[i] {
            Some(Item::Content(c)) => {
                c.origin = c.origin.min(origin);
                if c.ino == 0 {
                    c.ino = ino;
                    c.dev = dev;
                }
                c
            }
            _ => unreachable!("index points at a content entry"),
        }
    }

    /// Makes the entry for `local` a file entry and returns its parts.
    ///
    /// A file with several names has one entry: a change through one name
    /// goes to the entry pending under another name of the same file. With
    /// an entry per name, each carrying a truncation and ranges, the later
    /// entry's truncation would cut off what the earlier one wrote after it
    /// (the names are one file at the receiver too), and the mirror would
    /// keep zeros with the source's size and mtime.
    fn file(
        &mut self,
        local: &Path,
        id: (u64, u64),
        since: Instant,
        origin: u64,
    ) -> (&mut RangeSet, &mut Option<u64>, &mut bool) {
        let other = self.pending_name_of(local, id);
        let local = other.as_deref().unwrap_or(local);
        let in_tree = !self.index.contains_key(local) && self.under_pending_tree(local);
        let c = self.entry(
            local,
            id,
            since,
            origin,
            What::File { ranges: RangeSet::new(), truncate_to: None, full: in_tree },
        );
        if !matches!(c.what, What::File { .. } | What::Check | What::Delta { .. } | What::Tree) {
            c.what = What::File { ranges: RangeSet::new(), truncate_to: None, full: false };
        }
        // A captured change on top of a reconciliation's finding: the
        // ranges alone are not enough, and a delta is not made against a
        // base that ops in flight may be changing.
        if matches!(c.what, What::Check | What::Delta { .. } | What::Tree) {
            c.what = What::File { ranges: RangeSet::new(), truncate_to: None, full: true };
        }
        match &mut c.what {
            What::File { ranges, truncate_to, full } => (ranges, truncate_to, full),
            _ => unreachable!(),
        }
    }

    /// Takes the content entry indexed under `local` out of the order.
    fn take_content(&mut self, local: &Path) -> Option<Content> {
        let i = self.index.remove(local)?;
        let Some(Item::Content(c)) = self.items[i].take() else { return None };
        if let What::File { ranges, .. } = &c.what {
            self.pending_bytes = self.pending_bytes.saturating_sub(ranges.bytes());
        }
        self.live -= 1;
        Some(c)
    }

    /// Drops every content entry at or below `p`.
    fn cancel_under(&mut self, p: &Path) {
        let keys: Vec<PathBuf> = under(&self.index, p).map(|(k, _)| k.clone()).collect();
        for k in keys {
            self.take_content(&k);
        }
    }

    /// Re-points content entries at or below `from` to below `to`.
    fn move_under(&mut self, from: &Path, to: &Path) {
        let keys: Vec<(PathBuf, usize)> = under(&self.index, from).map(|(k, i)| (k.clone(), *i)).collect();
        let mut moved = Vec::with_capacity(keys.len());
        for (k, i) in keys {
            self.index.remove(&k);
            let rest = k.strip_prefix(from).expect("under from");
            // (joining an empty path would append a '/')
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            if let Some(Item::Content(c)) = &mut self.items[i] {
                c.local = new.clone();
            }
            moved.push((new, i));
        }
        self.index.extend(moved);
    }

    /// The receiver applied a tree change already: the entries at or below
    /// `p` are known there by their local names now.
    fn settle_under(&mut self, p: &Path) {
        for (_, &i) in under(&self.index, p) {
            if let Some(Item::Content(c)) = &mut self.items[i] {
                c.remote = c.local.clone();
            }
        }
    }

    /// Pushes a tree op unless the receiver has applied it already.
    fn push_tree_op(&mut self, item: Item) {
        if item.origin() > self.remote_done {
            self.push(item);
        }
    }

    /// Starts a replay of the queue: tree changes up to `applied` (the
    /// receiver's word) are applied there already.
    pub fn resume(&mut self, applied: u64) {
        self.take();
        self.links = HardLinks::default();
        self.remote_done = applied;
    }

    /// Every pending file is to be read whole: the ranges known for it are
    /// not all that changed (the log was written by an agent that stopped,
    /// and the files may have changed while none ran).
    pub fn read_files_whole(&mut self) {
        for item in self.items.iter_mut().flatten() {
            if let Item::Content(Content { what: What::File { full, .. }, .. }) = item {
                *full = true;
            }
        }
    }

    /// The oldest queue origin still pending ([`NO_ORIGIN`]: none).
    pub fn min_origin(&self) -> u64 {
        self.items.iter().flatten().map(Item::origin).min().unwrap_or(NO_ORIGIN)
    }

    /// Adds one file modification message, logged at `origin`.
    pub fn add(&mut self, ch: &FileChange, origin: u64, now: Instant) {
        let p = ch.path.as_path();
        match &ch.kind {
            ChangeKind::Write { offset, len } => {
                let (ranges, _, _) = self.file(p, (ch.dev, ch.ino), now, origin);
                let before = ranges.bytes();
                ranges.insert(*offset, *len);
                let after = ranges.bytes();
                self.pending_bytes += after - before;
            }
            ChangeKind::Truncate { len } => {
                let (_, t, _) = self.file(p, (ch.dev, ch.ino), now, origin);
                *t = Some(t.map_or(*len, |old| old.min(*len)));
            }
            ChangeKind::Open { created, truncated } => {
                let (_, t, _) = self.file(p, (ch.dev, ch.ino), now, origin);
                if *created || *truncated {
                    *t = Some(0);
                }
            }
            ChangeKind::MmapShared => {
                let (_, _, full) = self.file(p, (ch.dev, ch.ino), now, origin);
                *full = true;
            }
            ChangeKind::Attr => {
                self.entry(p, (0, 0), now, origin, What::Attr);
            }
            ChangeKind::Mkdir => {
                self.cancel_under(p);
                self.entry(p, (0, 0), now, origin, What::Dir);
            }
            ChangeKind::Symlink { .. } => {
                self.cancel_under(p);
                self.entry(p, (0, 0), now, origin, What::Symlink);
            }
            ChangeKind::Unlink | ChangeKind::Rmdir => {
                self.keep_data_of_linked_file(p, now, origin);
                self.links.remove_under(p);
                self.cancel_under(p);
                self.push_tree_op(Item::Remove { path: p.to_path_buf(), since: now, origin });
            }
            ChangeKind::Rename { to, exchange } => self.rename(p, to, *exchange, now, origin),
            ChangeKind::Link { to } => {
                if !self.watched(p) {
                    // Linked in from outside the watched trees: new content here.
                    self.check_at(to, now, origin);
                } else if self.watched(to) {
                    self.cancel_under(to);
                    self.push_tree_op(Item::Link {
                        from: p.to_path_buf(),
                        to: to.clone(),
                        since: now,
                        origin,
                        verify: None,
                    });
                    // Both names now denote one file. Which file: the one
                    // whose pending data is queued under `p` (its inode came
                    // with the captured writes), else what the new name is
                    // now — asked only then, because when the queue runs
                    // behind (a backlog, a replay) that name may already
                    // have been renamed or removed.
                    let id = self.file_id(p).or_else(|| {
                        use std::os::unix::fs::MetadataExt;
                        std::fs::symlink_metadata(to).ok().filter(|md| md.is_file()).map(|md| (md.dev(), md.ino()))
                    });
                    if let Some(id) = id {
                        self.links.add(id, p);
                        self.links.add(id, to);
                    }
                }
            }
        }
    }

    /// Whether a directory above `p` is pending as a whole tree: the mirror
    /// lacks it (a reconciliation's finding, or moved in from outside), so
    /// it has nothing of `p` either, and the walk at send time no longer
    /// finds what was renamed out of it.
    fn under_pending_tree(&self, p: &Path) -> bool {
        p.ancestors().skip(1).any(|a| {
            matches!(
                self.index.get(a).and_then(|&i| self.items[i].as_ref()),
                Some(Item::Content(Content { what: What::Tree, .. }))
            )
        })
    }

    /// Whatever is at `p` goes whole when sent: everything below it if it is
    /// a directory now.
    fn whole_at(&mut self, p: &Path, now: Instant, origin: u64) {
        if std::fs::symlink_metadata(p).is_ok_and(|md| md.is_dir()) {
            self.tree_at(p, now, origin);
        } else {
            self.check_at(p, now, origin);
        }
    }

    /// Another name of the file `id` with file data pending, when `p` has
    /// no entry of its own.
    fn pending_name_of(&self, p: &Path, id: (u64, u64)) -> Option<PathBuf> {
        if id.1 == 0 || self.index.contains_key(p) || self.links.is_empty() {
            return None;
        }
        self.links.names_of(id).find(|n| self.file_id(n) == Some(id)).map(Path::to_path_buf)
    }

    /// The `(st_dev, inode)` of the file whose data is pending under `p`, if
    /// the captured changes told it.
    fn file_id(&self, p: &Path) -> Option<(u64, u64)> {
        match self.items[*self.index.get(p)?].as_ref()? {
            Item::Content(c) if c.ino != 0 && matches!(c.what, What::File { .. }) => Some((c.dev, c.ino)),
            _ => None,
        }
    }

    fn rename(&mut self, from: &Path, to: &Path, exchange: bool, now: Instant, origin: u64) {
        let done = origin <= self.remote_done;
        // Out of a tree the mirror lacks: the rename finds nothing there.
        let from_missing = self.under_pending_tree(from);
        let to_missing = exchange && self.under_pending_tree(to);
        match (self.watched(from), self.watched(to)) {
            // Moved out of the watched trees: gone, as far as the mirror goes.
            (true, false) => {
                self.keep_data_of_linked_file(from, now, origin);
                self.links.remove_under(from);
                self.cancel_under(from);
                self.push_tree_op(Item::Remove { path: from.to_path_buf(), since: now, origin });
            }
            // Moved in from outside: a whole new tree to send.
            (false, true) => {
                self.cancel_under(to);
                self.tree_at(to, now, origin);
            }
            (false, false) => {}
            (true, true) if exchange => {
                let tmp = PathBuf::from("\0exchange");
                self.move_under(from, &tmp);
                self.move_under(to, from);
                self.move_under(&tmp, to);
                self.links.rename(from, &tmp);
                self.links.rename(to, from);
                self.links.rename(&tmp, to);
                if done {
                    self.settle_under(from);
                    self.settle_under(to);
                }
                self.push_tree_op(Item::Rename {
                    from: from.to_path_buf(),
                    to: to.to_path_buf(),
                    exchange,
                    since: now,
                    origin,
                });
                if to_missing {
                    self.whole_at(from, now, origin);
                }
                if from_missing {
                    self.whole_at(to, now, origin);
                }
            }
            (true, true) => {
                self.keep_data_of_linked_file(to, now, origin);
                self.cancel_under(to);
                self.move_under(from, to);
                self.links.rename(from, to);
                if done {
                    self.settle_under(to);
                }
                self.push_tree_op(Item::Rename {
                    from: from.to_path_buf(),
                    to: to.to_path_buf(),
                    exchange,
                    since: now,
                    origin,
                });
                if from_missing {
                    self.whole_at(to, now, origin);
                }
            }
        }
    }

    /// `p` is about to lose its name. If it is a file with other names and
    /// data written through `p` is pending, that data still belongs to the
    /// file, so the entry is read through a surviving name from now on. It
    /// stays where it is — it may be what creates the file at the receiver,
    /// before the renames and links that follow refer to it — and a copy
    /// under the surviving name goes to the end of the order (after the link
    /// that made that name), in case the mirror's names of the file are
    /// separate copies (hard links made before the agent started are).
    fn keep_data_of_linked_file(&mut self, p: &Path, now: Instant, origin: u64) {
        if self.links.is_empty() {
            return;
        }
        let Some(&i) = self.index.get(p) else { return };
        let Some(Item::Content(c)) = &mut self.items[i] else { return };
        if c.ino == 0 || !matches!(c.what, What::File { .. }) {
            return;
        }
        let Some(other) = self.links.other_name((c.dev, c.ino), p).map(Path::to_path_buf) else { return };
        // No longer found by name: later changes go to the copy.
        c.local = other.clone();
        let mut copy = c.clone();
        // Writes through the other names after this entry's truncation are
        // not in its ranges (they are in the copy's place): sent as it is,
        // its truncation would cut them off the file both names share at
        // the receiver. It is read whole instead.
        if let What::File { full, .. } = &mut c.what {
            *full = true;
        }
        self.index.remove(p);
        copy.remote = other;
        copy.since = copy.since.min(now);
        copy.origin = copy.origin.min(origin);
        self.requeue_at_end(copy);
    }

    /// Adds `c` at the end, or merges its data into the entry its local path
    /// already has (when that entry is for the same file).
    fn requeue_at_end(&mut self, c: Content) {
        if let Some(&j) = self.index.get(&c.local) {
            if let Some(Item::Content(existing)) = &mut self.items[j] {
                if existing.ino == c.ino || existing.ino == 0 {
                    if let (
                        What::File { ranges, truncate_to, full },
                        What::File { ranges: r2, truncate_to: t2, full: f2 },
                    ) = (&mut existing.what, &c.what)
                    {
                        let before = ranges.bytes();
                        ranges.union(r2);
                        self.pending_bytes += ranges.bytes() - before;
                        *truncate_to = match (*truncate_to, *t2) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        *full |= *f2;
                    }
                    existing.since = existing.since.min(c.since);
                    existing.origin = existing.origin.min(c.origin);
                }
            }
            return;
        }
        if let What::File { ranges, .. } = &c.what {
            self.pending_bytes += ranges.bytes();
        }
        self.push(Item::Content(c));
    }

    /// Reconciliation: send whatever is at `p` now (or remove it).
    pub fn check(&mut self, p: &Path, now: Instant) {
        self.check_at(p, now, NO_ORIGIN)
    }

    fn check_at(&mut self, p: &Path, now: Instant, origin: u64) {
        let c = self.entry(p, (0, 0), now, origin, What::Check);
        // Whatever is at the path when sent: a pending entry's inode guard
        // no longer applies (that inode may be long gone, after a restart).
        (c.dev, c.ino) = (0, 0);
        if let What::File { full, .. } = &mut c.what {
            *full = true;
        } else if !matches!(c.what, What::Tree) {
            c.what = What::Check;
        }
    }

    /// Reconciliation: the mirror holds an older regular file at `p`, of
    /// `base_len` bytes: send a delta against it if `p` is still a regular
    /// file big enough when sent. A path already pending for something
    /// else keeps what it has (sent whole: a captured change, or a failed
    /// delta's retry, which must not become a delta again).
    pub fn check_delta(&mut self, p: &Path, base_len: u64, now: Instant) {
        let c = self.entry(p, (0, 0), now, NO_ORIGIN, What::Delta { base_len });
        (c.dev, c.ino) = (0, 0);
        match &mut c.what {
            What::File { full, .. } => *full = true,
            What::Delta { base_len: b } => *b = base_len,
            What::Check | What::Tree => {}
            _ => c.what = What::Check,
        }
    }

    /// Send everything below `p` (a tree the mirror lacks).
    pub fn tree(&mut self, p: &Path, now: Instant) {
        self.tree_at(p, now, NO_ORIGIN)
    }

    /// Reconciliation: `to` names the file at `from` (`id`) too, and the
    /// mirror's `to` is not a link to its `from`. Queued after whatever is
    /// pending for either name: reconciliation sends `from` whole before, so
    /// what was written through `to` is in it.
    pub fn relink(&mut self, from: PathBuf, to: PathBuf, id: FileId, now: Instant) {
        self.links.add(id, &from);
        self.links.add(id, &to);
        self.push(Item::Link { from, to, since: now, origin: NO_ORIGIN, verify: Some(id) });
    }

    fn tree_at(&mut self, p: &Path, now: Instant, origin: u64) {
        let c = self.entry(p, (0, 0), now, origin, What::Tree);
        c.what = What::Tree;
    }

    /// A file entry whose local name no longer holds its file (`c.ino`) is
    /// re-pointed to a name the file has now, if one is known: the entry
    /// left in place by [`Coalescer::keep_data_of_linked_file`] is not in
    /// the index, so later renames of that name did not move it. Returns
    /// whether it was re-pointed.
    pub fn relocate(&self, c: &mut Content) -> bool {
        if c.ino == 0 || !matches!(c.what, What::File { .. }) {
            return false;
        }
        match self.links.name_of((c.dev, c.ino)) {
            Some(name) if name != c.local => {
                c.local = name.to_path_buf();
                true
            }
            _ => false,
        }
    }

    /// Puts back an entry whose local object had vanished at send time. It is
    /// called right after [`Coalescer::take`], before any new change, so it
    /// goes first (or merges into another put-back entry for the same file).
    pub fn requeue(&mut self, mut c: Content) {
        c.deferrals += 1;
        // Its remote name is wherever the receiver's copy is after the batch
        // that was just sent: the local name as of then.
        c.remote = c.local.clone();
        self.requeue_at_end(c);
    }

    /// Puts back, unchanged and in order, items [`Coalescer::take`] handed out
    /// but that were not sent (they waited behind an object that had
    /// vanished). Called right after `take`, before any new change.
    pub fn restore(&mut self, items: Vec<Item>) {
        for item in items {
            if let Item::Content(Content { what: What::File { ranges, .. }, .. }) = &item {
                self.pending_bytes += ranges.bytes();
            }
            self.push(item);
        }
    }

    /// Hands out everything pending, in order, and starts afresh.
    pub fn take(&mut self) -> Vec<Item> {
        self.index.clear();
        self.pending_bytes = 0;
        self.live = 0;
        self.oldest = None;
        std::mem::take(&mut self.items).into_iter().flatten().collect()
    }

    /// When the oldest pending change was captured (cancelled ones may still
    /// count until the next dispatch).
    pub fn oldest(&self) -> Option<Instant> {
        if self.live == 0 {
            None
        } else {
            self.oldest
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(path: &str, kind: ChangeKind) -> FileChange {
        FileChange { seq: 0, ktime_ns: 0, tgid: 0, path: path.into(), kind, dev: 0, ino: 0 }
    }

    fn co() -> Coalescer {
        Coalescer::new(vec!["/w".into()])
    }

    /// Adds changes at origins 1, 2, ... as the scheduler does.
    fn add_all(c: &mut Coalescer, changes: &[FileChange]) {
        let now = Instant::now();
        for (i, ch) in changes.iter().enumerate() {
            c.add(ch, i as u64 + 1, now);
        }
    }

    fn rename(from: &str, to: &str) -> FileChange {
        ch(from, ChangeKind::Rename { to: to.into(), exchange: false })
    }

    /// What the dispatcher would send, in words.
    fn ops(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Content(c) => format!("data {} (from {})", c.remote.display(), c.local.display()),
                Item::Remove { path, .. } => format!("remove {}", path.display()),
                Item::Rename { from, to, .. } => format!("rename {} {}", from.display(), to.display()),
                Item::Link { from, to, .. } => format!("link {} {}", from.display(), to.display()),
            })
            .collect()
    }

    #[test]
    fn items_remember_their_oldest_origin() {
        let mut c = co();
        add_all(&mut c, &[write("/w/a", 0, 1), write("/w/b", 0, 1), write("/w/a", 1, 1), rename("/w/b", "/w/c")]);
        assert_eq!(c.min_origin(), 1);
        let items = c.take();
        assert_eq!(items.iter().map(Item::origin).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(c.min_origin(), NO_ORIGIN);
        c.check(Path::new("/w/x"), Instant::now());
        assert_eq!(c.min_origin(), NO_ORIGIN, "reconciliation work is not in the log");
    }

    #[test]
    fn a_replay_skips_tree_ops_the_receiver_applied_and_uses_their_names() {
        // Written as a.tmp, renamed to a, then a new a.tmp: the receiver had
        // applied up to the rename (origin 2) when the agent crashed.
        let log = [
            write("/w/a.tmp", 0, 10),
            rename("/w/a.tmp", "/w/a"),
            write("/w/a.tmp", 0, 5),
            ch("/w/old", ChangeKind::Unlink),
        ];
        let mut fresh = co();
        add_all(&mut fresh, &log);
        assert_eq!(
            ops(&fresh.take()),
            ["data /w/a.tmp (from /w/a)", "rename /w/a.tmp /w/a", "data /w/a.tmp (from /w/a.tmp)", "remove /w/old"]
        );
        let mut c = co();
        c.resume(2);
        add_all(&mut c, &log);
        // The rename is not applied twice (it would move the new a.tmp over a).
        assert_eq!(ops(&c.take()), ["data /w/a (from /w/a)", "data /w/a.tmp (from /w/a.tmp)", "remove /w/old"]);
        // Nothing applied: everything again.
        let mut c = co();
        c.resume(0);
        add_all(&mut c, &log);
        assert_eq!(c.take().len(), 4);
    }

    #[test]
    fn changes_through_two_names_of_one_file_share_its_entry() {
        let id = |mut c: FileChange| {
            (c.dev, c.ino) = (1, 34);
            c
        };
        // Written through f, linked as h, truncated through h, then written
        // through f past the truncation.
        let log = [
            id(ch("/w/f", ChangeKind::Open { created: true, truncated: true })),
            id(write("/w/f", 0, 5000)),
            ch("/w/f", ChangeKind::Link { to: "/w/h".into() }),
            id(ch("/w/f", ChangeKind::Open { created: false, truncated: true })),
            id(write("/w/f", 0, 100)),
            id(ch("/w/h", ChangeKind::Truncate { len: 3000 })),
            id(write("/w/f", 3000, 200)),
        ];
        let mut c = co();
        add_all(&mut c, &log);
        let items = c.take();
        assert_eq!(ops(&items), ["data /w/f (from /w/f)", "link /w/f /w/h"], "one entry for the file");
        let Item::Content(Content { what: What::File { ranges, truncate_to, .. }, .. }) = &items[0] else { panic!() };
        assert_eq!(*truncate_to, Some(0));
        assert_eq!(ranges.iter().collect::<Vec<_>>(), [(0, 5000)]);
    }

    /// Reconciliation found a directory the mirror lacks; before its walk,
    /// a file in it is truncated and renamed out of it. Neither the walk
    /// (the file is gone from there) nor a truncation of nothing at the
    /// receiver would give the mirror its content.
    #[test]
    fn names_of_one_file_share_an_entry_after_dispatches_and_renames() {
        let id = |mut c: FileChange| {
            (c.dev, c.ino) = (1, 200);
            c
        };
        let mut c = co();
        add_all(
            &mut c,
            &[
                id(ch("/w/f", ChangeKind::Open { created: true, truncated: false })),
                id(write("/w/f", 0, 100)),
                ch("/w/f", ChangeKind::Link { to: "/w/h".into() }),
            ],
        );
        c.take();
        add_all(&mut c, &[id(write("/w/f", 50, 10)), rename("/w/f", "/w/d/e/r")]);
        c.take();
        add_all(&mut c, &[id(write("/w/h", 90, 20)), rename("/w/d", "/w/g"), id(write("/w/g/e/r", 5, 5))]);
        assert_eq!(ops(&c.take()), ["data /w/h (from /w/h)", "rename /w/d /w/g"]);
    }

    #[test]
    fn a_file_leaving_a_tree_the_mirror_lacks_is_sent_whole() {
        let mut c = co();
        c.tree(Path::new("/w/d"), Instant::now());
        add_all(
            &mut c,
            &[ch("/w/d/f", ChangeKind::Truncate { len: 10 }), rename("/w/d/f", "/w/g"), rename("/w/d/h", "/w/i")],
        );
        let items = c.take();
        assert_eq!(
            ops(&items),
            [
                "data /w/d (from /w/d)",
                "data /w/d/f (from /w/g)",
                "rename /w/d/f /w/g",
                "rename /w/d/h /w/i",
                "data /w/i (from /w/i)"
            ]
        );
        let Item::Content(Content { what: What::File { full, .. }, .. }) = &items[1] else {
            panic!("{:?}", ops(&items))
        };
        assert!(full, "the truncated file is read whole");
        // Elsewhere, a truncation is only a truncation.
        let mut c = co();
        add_all(&mut c, &[ch("/w/e/f", ChangeKind::Truncate { len: 10 }), rename("/w/e/f", "/w/g")]);
        assert_eq!(ops(&c.take()), ["data /w/e/f (from /w/g)", "rename /w/e/f /w/g"]);
    }

    #[test]
    fn a_replayed_directory_rename_settles_the_entries_below() {
        let log =
            [ch("/w/d", ChangeKind::Mkdir), write("/w/d/f", 0, 1), rename("/w/d", "/w/e"), rename("/w/e/f", "/w/e/g")];
        let mut c = co();
        c.resume(3);
        add_all(&mut c, &log);
        assert_eq!(ops(&c.take()), ["data /w/e (from /w/e)", "data /w/e/f (from /w/e/g)", "rename /w/e/f /w/e/g"]);
    }

    fn write(path: &str, offset: u64, len: u64) -> FileChange {
        ch(path, ChangeKind::Write { offset, len })
    }

    #[test]
    fn overlapping_writes_merge_into_one_entry() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a", 0, 10), 1, now);
        c.add(&write("/w/a", 5, 10), 1, now);
        c.add(&write("/w/a", 100, 1), 1, now);
        let items = c.take();
        assert_eq!(items.len(), 1);
        let Item::Content(e) = &items[0] else { panic!() };
        let What::File { ranges, .. } = &e.what else { panic!() };
        assert_eq!(ranges.iter().collect::<Vec<_>>(), vec![(0, 15), (100, 101)]);
        assert!(c.is_empty());
    }

    #[test]
    fn rename_carries_pending_data_to_the_new_name() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a.tmp", 0, 10), 1, now);
        c.add(&ch("/w/a.tmp", ChangeKind::Rename { to: "/w/a".into(), exchange: false }), 1, now);
        c.add(&write("/w/a", 10, 5), 1, now); // merges with the carried entry
        let items = c.take();
        assert_eq!(items.len(), 2, "{items:?}");
        let Item::Content(e) = &items[0] else { panic!() };
        assert_eq!(e.remote, Path::new("/w/a.tmp"));
        assert_eq!(e.local.as_os_str(), "/w/a");
        let What::File { ranges, .. } = &e.what else { panic!() };
        assert_eq!(ranges.bytes(), 15);
        assert!(matches!(&items[1], Item::Rename { to, .. } if to == Path::new("/w/a")));
    }

    #[test]
    fn directory_rename_carries_entries_below_it() {
        let mut c = co();
        let now = Instant::now();
        c.add(&ch("/w/d", ChangeKind::Mkdir), 1, now);
        c.add(&write("/w/d/f", 0, 1), 1, now);
        c.add(&write("/w/d0", 0, 1), 1, now); // not below /w/d
        c.add(&ch("/w/d", ChangeKind::Rename { to: "/w/e".into(), exchange: false }), 1, now);
        let items = c.take();
        let locals: Vec<_> =
            items.iter().filter_map(|i| if let Item::Content(c) = i { Some(c.local.clone()) } else { None }).collect();
        let locals: Vec<_> = locals.iter().map(|p| p.as_os_str().to_owned()).collect();
        assert_eq!(locals, vec!["/w/e", "/w/e/f", "/w/d0"]);
    }

    #[test]
    fn unlink_cancels_pending_data() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a", 0, 10), 1, now);
        c.add(&ch("/w/a", ChangeKind::Unlink), 1, now);
        assert_eq!(c.pending_bytes(), 0);
        let items = c.take();
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0], Item::Remove { .. }));
    }

    #[test]
    fn rename_over_an_existing_name_drops_the_replaced_files_data() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/x", 0, 10), 1, now);
        c.add(&write("/w/x.tmp", 0, 3), 1, now);
        c.add(&ch("/w/x.tmp", ChangeKind::Rename { to: "/w/x".into(), exchange: false }), 1, now);
        let items = c.take();
        assert_eq!(items.len(), 2);
        let Item::Content(e) = &items[0] else { panic!() };
        assert_eq!(e.local, Path::new("/w/x"));
        assert_eq!(e.remote, Path::new("/w/x.tmp"));
    }

    #[test]
    fn moves_across_the_watched_boundary() {
        let mut c = co();
        let now = Instant::now();
        c.add(&ch("/outside/t", ChangeKind::Rename { to: "/w/t".into(), exchange: false }), 1, now);
        c.add(&ch("/w/u", ChangeKind::Rename { to: "/outside/u".into(), exchange: false }), 1, now);
        let items = c.take();
        assert!(matches!(&items[0], Item::Content(Content { what: What::Tree, .. })));
        assert!(matches!(&items[1], Item::Remove { path, .. } if path == Path::new("/w/u")));
    }

    #[test]
    fn truncations_keep_the_lowest_length() {
        let mut c = co();
        let now = Instant::now();
        c.add(&ch("/w/a", ChangeKind::Truncate { len: 100 }), 1, now);
        c.add(&ch("/w/a", ChangeKind::Truncate { len: 10 }), 1, now);
        c.add(&ch("/w/a", ChangeKind::Truncate { len: 50 }), 1, now);
        let Item::Content(e) = &c.take()[0] else { panic!() };
        assert!(matches!(e.what, What::File { truncate_to: Some(10), .. }));
    }

    #[test]
    fn unlinking_one_name_of_a_linked_file_keeps_its_data() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().canonicalize().unwrap();
        let (a, b) = (w.join("a"), w.join("b"));
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, &b).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&a).unwrap();
        let mut c = Coalescer::new(vec![w.clone()]);
        let now = Instant::now();
        c.add(&ch(a.to_str().unwrap(), ChangeKind::Link { to: b.clone() }), 1, now);
        let mut write = ch(b.to_str().unwrap(), ChangeKind::Write { offset: 0, len: 1 });
        (write.dev, write.ino) = (md.dev(), md.ino());
        c.add(&write, 1, now);
        c.add(&ch(b.to_str().unwrap(), ChangeKind::Unlink), 1, now);
        let items = c.take();
        // The data written through b is sent under a, after the link.
        let kinds: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Content(e) => format!("data {}", e.remote.file_name().unwrap().to_string_lossy()),
                Item::Link { .. } => "link".into(),
                Item::Remove { path, .. } => format!("remove {}", path.file_name().unwrap().to_string_lossy()),
                Item::Rename { .. } => "rename".into(),
            })
            .collect();
        // Written to b before it goes (read through a), and to a too, in
        // case the mirror's a and b are separate copies.
        assert_eq!(kinds, ["link", "data b", "data a", "remove b"]);
    }

    #[test]
    fn a_link_seen_late_still_keeps_the_data_of_its_file() {
        // Created as a, linked as b, b renamed to c, a unlinked: when the
        // queue runs behind, b is already gone when the link is taken in.
        // The data that creates the file must still be sent (under a, before
        // the link and rename that need it), not cancelled with a's name.
        let d = tempfile::tempdir().unwrap();
        let w = d.path().canonicalize().unwrap();
        let (a, b, c) = (w.join("a"), w.join("b"), w.join("c"));
        std::fs::write(&c, b"data").unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&c).unwrap();
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let mut co = Coalescer::new(vec![w.clone()]);
        let mut created = ch(&s(&a), ChangeKind::Open { created: true, truncated: false });
        let mut write = ch(&s(&a), ChangeKind::Write { offset: 0, len: 4 });
        (created.dev, created.ino) = (md.dev(), md.ino());
        (write.dev, write.ino) = (md.dev(), md.ino());
        add_all(
            &mut co,
            &[
                created,
                write,
                ch(&s(&a), ChangeKind::Link { to: b.clone() }),
                ch(&s(&b), ChangeKind::Rename { to: c.clone(), exchange: false }),
                ch(&s(&a), ChangeKind::Unlink),
            ],
        );
        let got: Vec<String> = ops(&co.take()).into_iter().map(|o| o.replace(&s(&w), "")).collect();
        assert_eq!(got, ["data /a (from /c)", "link /a /b", "rename /b /c", "data /c (from /c)", "remove /a"]);
    }

    #[test]
    fn data_left_under_a_surviving_name_follows_it_when_renamed() {
        // a written, linked as b, a unlinked (its data now read through b),
        // then b renamed to c: the entry that creates the file must be read
        // through c.
        let d = tempfile::tempdir().unwrap();
        let w = d.path().canonicalize().unwrap();
        let (a, b, c) = (w.join("a"), w.join("b"), w.join("c"));
        std::fs::write(&c, b"data").unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&c).unwrap();
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let mut co = Coalescer::new(vec![w.clone()]);
        let mut write = ch(&s(&a), ChangeKind::Write { offset: 0, len: 4 });
        (write.dev, write.ino) = (md.dev(), md.ino());
        add_all(
            &mut co,
            &[
                write,
                ch(&s(&a), ChangeKind::Link { to: b.clone() }),
                ch(&s(&a), ChangeKind::Unlink),
                ch(&s(&b), ChangeKind::Rename { to: c.clone(), exchange: false }),
            ],
        );
        let items = co.take();
        let Item::Content(mut first) = items[0].clone() else { panic!("{items:?}") };
        assert_eq!((first.remote.as_path(), first.local.as_path()), (a.as_path(), b.as_path()));
        // Read whole: writes through b since are not in its ranges.
        assert!(matches!(first.what, What::File { full: true, .. }), "{:?}", first.what);
        assert!(co.relocate(&mut first));
        assert_eq!(first.local, c);
        assert!(!co.relocate(&mut first), "already there");
    }

    #[test]
    fn a_linked_file_created_then_renamed_over_is_created_before_its_rename() {
        // f created, renamed to r, linked as h, then r81 renamed over r: the
        // data that creates f must come before the rename and the link.
        let d = tempfile::tempdir().unwrap();
        let w = d.path().canonicalize().unwrap();
        let (f, r, h, r81) = (w.join("f"), w.join("r"), w.join("h"), w.join("r81"));
        std::fs::write(&r, b"x").unwrap();
        std::fs::hard_link(&r, &h).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&r).unwrap();
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let mut c = Coalescer::new(vec![w.clone()]);
        let mut created = ch(&s(&f), ChangeKind::Open { created: true, truncated: false });
        (created.dev, created.ino) = (md.dev(), md.ino());
        add_all(
            &mut c,
            &[
                created,
                ch(&s(&f), ChangeKind::Rename { to: r.clone(), exchange: false }),
                ch(&s(&r), ChangeKind::Link { to: h.clone() }),
                ch(&s(&r81), ChangeKind::Rename { to: r.clone(), exchange: false }),
            ],
        );
        let got: Vec<String> = ops(&c.take()).into_iter().map(|o| o.replace(&s(&w), "")).collect();
        assert_eq!(got, ["data /f (from /h)", "rename /f /r", "link /r /h", "data /h (from /h)", "rename /r81 /r",]);
    }

    #[test]
    fn a_delta_finding_yields_to_whole_file_sends() {
        let now = Instant::now();
        let what = |c: &mut Coalescer| {
            let items = c.take();
            let Item::Content(e) = &items[0] else { panic!() };
            e.what.clone()
        };
        let mut c = co();
        c.check_delta(Path::new("/w/a"), 10, now);
        c.check_delta(Path::new("/w/a"), 20, now);
        assert_eq!(what(&mut c), What::Delta { base_len: 20 });
        // A failed delta comes back as a plain check: never a delta again.
        c.check_delta(Path::new("/w/a"), 10, now);
        c.check(Path::new("/w/a"), now);
        c.check_delta(Path::new("/w/a"), 10, now);
        assert_eq!(what(&mut c), What::Check);
        // A captured write on top: the whole file.
        c.check_delta(Path::new("/w/a"), 10, now);
        c.add(&write("/w/a", 0, 1), 1, now);
        assert!(matches!(what(&mut c), What::File { full: true, .. }));
        c.add(&write("/w/a", 0, 1), 1, now);
        c.check_delta(Path::new("/w/a"), 10, now);
        assert!(matches!(what(&mut c), What::File { full: true, .. }));
    }

    #[test]
    fn exchange_swaps_entries() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a", 0, 1), 1, now);
        c.add(&write("/w/b", 0, 2), 1, now);
        c.add(&ch("/w/a", ChangeKind::Rename { to: "/w/b".into(), exchange: true }), 1, now);
        let items = c.take();
        let Item::Content(a) = &items[0] else { panic!() };
        let Item::Content(b) = &items[1] else { panic!() };
        assert_eq!((a.remote.as_path(), a.local.as_path()), (Path::new("/w/a"), Path::new("/w/b")));
        assert_eq!((b.remote.as_path(), b.local.as_path()), (Path::new("/w/b"), Path::new("/w/a")));
    }
}
