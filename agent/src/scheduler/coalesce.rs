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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lifeline_capture::{ChangeKind, FileChange};

use super::links::Links;
use super::ranges::RangeSet;

/// What to send for a path, read from the local file system at send time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// Changed ranges of a regular file.
    File { ranges: RangeSet, truncate_to: Option<u64>, full: bool },
    Dir,
    Symlink,
    /// Only attributes (mode, owner, times).
    Attr,
    /// Reconciliation: whatever is at the path now, or remove it if nothing is.
    Check,
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
}

#[derive(Clone, Debug)]
pub enum Item {
    Content(Content),
    Remove { path: PathBuf, since: Instant },
    Rename { from: PathBuf, to: PathBuf, exchange: bool, since: Instant },
    Link { from: PathBuf, to: PathBuf, since: Instant },
}

impl Item {
    pub fn since(&self) -> Instant {
        match self {
            Item::Content(c) => c.since,
            Item::Remove { since, .. } | Item::Rename { since, .. } | Item::Link { since, .. } => *since,
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
    links: Links,
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
    fn entry(&mut self, local: &Path, (dev, ino): (u64, u64), since: Instant, what: What) -> &mut Content {
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
                }));
                self.items.len() - 1
            }
        };
        match &mut self.items[i] {
            Some(Item::Content(c)) => {
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
    fn file(&mut self, local: &Path, id: (u64, u64), since: Instant) -> (&mut RangeSet, &mut Option<u64>, &mut bool) {
        let c = self.entry(local, id, since, What::File { ranges: RangeSet::new(), truncate_to: None, full: false });
        if !matches!(c.what, What::File { .. } | What::Check | What::Tree) {
            c.what = What::File { ranges: RangeSet::new(), truncate_to: None, full: false };
        }
        if matches!(c.what, What::Check | What::Tree) {
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

    /// Adds one file modification message.
    pub fn add(&mut self, ch: &FileChange, now: Instant) {
        let p = ch.path.as_path();
        match &ch.kind {
            ChangeKind::Write { offset, len } => {
                let (ranges, _, _) = self.file(p, (ch.dev, ch.ino), now);
                let before = ranges.bytes();
                ranges.insert(*offset, *len);
                let after = ranges.bytes();
                self.pending_bytes += after - before;
            }
            ChangeKind::Truncate { len } => {
                let (_, t, _) = self.file(p, (ch.dev, ch.ino), now);
                *t = Some(t.map_or(*len, |old| old.min(*len)));
            }
            ChangeKind::Open { created, truncated } => {
                let (_, t, _) = self.file(p, (ch.dev, ch.ino), now);
                if *created || *truncated {
                    *t = Some(0);
                }
            }
            ChangeKind::MmapShared => {
                let (_, _, full) = self.file(p, (ch.dev, ch.ino), now);
                *full = true;
            }
            ChangeKind::Attr => {
                self.entry(p, (0, 0), now, What::Attr);
            }
            ChangeKind::Mkdir => {
                self.cancel_under(p);
                self.entry(p, (0, 0), now, What::Dir);
            }
            ChangeKind::Symlink { .. } => {
                self.cancel_under(p);
                self.entry(p, (0, 0), now, What::Symlink);
            }
            ChangeKind::Unlink | ChangeKind::Rmdir => {
                self.keep_data_of_linked_file(p, now);
                self.links.remove_under(p);
                self.cancel_under(p);
                self.push(Item::Remove { path: p.to_path_buf(), since: now });
            }
            ChangeKind::Rename { to, exchange } => self.rename(p, to, *exchange, now),
            ChangeKind::Link { to } => {
                if !self.watched(p) {
                    // Linked in from outside the watched trees: new content here.
                    self.check(to, now);
                } else if self.watched(to) {
                    self.cancel_under(to);
                    self.push(Item::Link { from: p.to_path_buf(), to: to.clone(), since: now });
                    // Both names now denote one file (learnt from the new
                    // name, which exists unless it is already gone again).
                    if let Ok(md) = std::fs::symlink_metadata(to) {
                        use std::os::unix::fs::MetadataExt;
                        if md.is_file() {
                            self.links.add((md.dev(), md.ino()), p);
                            self.links.add((md.dev(), md.ino()), to);
                        }
                    }
                }
            }
        }
    }

    fn rename(&mut self, from: &Path, to: &Path, exchange: bool, now: Instant) {
        match (self.watched(from), self.watched(to)) {
            // Moved out of the watched trees: gone, as far as the mirror goes.
            (true, false) => {
                self.keep_data_of_linked_file(from, now);
                self.links.remove_under(from);
                self.cancel_under(from);
                self.push(Item::Remove { path: from.to_path_buf(), since: now });
            }
            // Moved in from outside: a whole new tree to send.
            (false, true) => {
                self.cancel_under(to);
                self.tree(to, now);
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
                self.push(Item::Rename { from: from.to_path_buf(), to: to.to_path_buf(), exchange, since: now });
            }
            (true, true) => {
                self.keep_data_of_linked_file(to, now);
                self.cancel_under(to);
                self.move_under(from, to);
                self.links.rename(from, to);
                self.push(Item::Rename { from: from.to_path_buf(), to: to.to_path_buf(), exchange, since: now });
            }
        }
    }

    /// `p` is about to lose its name. If it is a file with other names and
    /// data written through `p` is pending, that data still belongs to the
    /// file: it moves to the end of the order under a surviving name (after
    /// the link that made that name, and after anything else so far).
    fn keep_data_of_linked_file(&mut self, p: &Path, now: Instant) {
        if self.links.is_empty() {
            return;
        }
        let Some(&i) = self.index.get(p) else { return };
        let Some(Item::Content(c)) = &self.items[i] else { return };
        if c.ino == 0 || !matches!(c.what, What::File { .. }) {
            return;
        }
        let Some(other) = self.links.other_name((c.dev, c.ino), p).map(Path::to_path_buf) else { return };
        let mut c = self.take_content(p).expect("indexed content entry");
        c.local = other.clone();
        c.remote = other;
        c.since = c.since.min(now);
        self.requeue_at_end(c);
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
        let c = self.entry(p, (0, 0), now, What::Check);
        if let What::File { full, .. } = &mut c.what {
            *full = true;
        } else if !matches!(c.what, What::Tree) {
            c.what = What::Check;
        }
    }

    /// Send everything below `p` (a tree the mirror lacks).
    pub fn tree(&mut self, p: &Path, now: Instant) {
        let c = self.entry(p, (0, 0), now, What::Tree);
        c.what = What::Tree;
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

    fn write(path: &str, offset: u64, len: u64) -> FileChange {
        ch(path, ChangeKind::Write { offset, len })
    }

    #[test]
    fn overlapping_writes_merge_into_one_entry() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a", 0, 10), now);
        c.add(&write("/w/a", 5, 10), now);
        c.add(&write("/w/a", 100, 1), now);
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
        c.add(&write("/w/a.tmp", 0, 10), now);
        c.add(&ch("/w/a.tmp", ChangeKind::Rename { to: "/w/a".into(), exchange: false }), now);
        c.add(&write("/w/a", 10, 5), now); // merges with the carried entry
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
        c.add(&ch("/w/d", ChangeKind::Mkdir), now);
        c.add(&write("/w/d/f", 0, 1), now);
        c.add(&write("/w/d0", 0, 1), now); // not below /w/d
        c.add(&ch("/w/d", ChangeKind::Rename { to: "/w/e".into(), exchange: false }), now);
        let items = c.take();
        let locals: Vec<_> = items
            .iter()
            .filter_map(|i| if let Item::Content(c) = i { Some(c.local.clone()) } else { None })
            .collect();
        let locals: Vec<_> = locals.iter().map(|p| p.as_os_str().to_owned()).collect();
        assert_eq!(locals, vec!["/w/e", "/w/e/f", "/w/d0"]);
    }

    #[test]
    fn unlink_cancels_pending_data() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a", 0, 10), now);
        c.add(&ch("/w/a", ChangeKind::Unlink), now);
        assert_eq!(c.pending_bytes(), 0);
        let items = c.take();
        assert_eq!(items.len(), 1);
        assert!(matches!(&items[0], Item::Remove { .. }));
    }

    #[test]
    fn rename_over_an_existing_name_drops_the_replaced_files_data() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/x", 0, 10), now);
        c.add(&write("/w/x.tmp", 0, 3), now);
        c.add(&ch("/w/x.tmp", ChangeKind::Rename { to: "/w/x".into(), exchange: false }), now);
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
        c.add(&ch("/outside/t", ChangeKind::Rename { to: "/w/t".into(), exchange: false }), now);
        c.add(&ch("/w/u", ChangeKind::Rename { to: "/outside/u".into(), exchange: false }), now);
        let items = c.take();
        assert!(matches!(&items[0], Item::Content(Content { what: What::Tree, .. })));
        assert!(matches!(&items[1], Item::Remove { path, .. } if path == Path::new("/w/u")));
    }

    #[test]
    fn truncations_keep_the_lowest_length() {
        let mut c = co();
        let now = Instant::now();
        c.add(&ch("/w/a", ChangeKind::Truncate { len: 100 }), now);
        c.add(&ch("/w/a", ChangeKind::Truncate { len: 10 }), now);
        c.add(&ch("/w/a", ChangeKind::Truncate { len: 50 }), now);
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
        c.add(&ch(a.to_str().unwrap(), ChangeKind::Link { to: b.clone() }), now);
        let mut write = ch(b.to_str().unwrap(), ChangeKind::Write { offset: 0, len: 1 });
        (write.dev, write.ino) = (md.dev(), md.ino());
        c.add(&write, now);
        c.add(&ch(b.to_str().unwrap(), ChangeKind::Unlink), now);
        let items = c.take();
        // The data written through b is sent under a, after the link.
        let kinds: Vec<String> = items
            .iter()
            .map(|i| match i {
                Item::Content(e) => format!("data {}", e.local.file_name().unwrap().to_string_lossy()),
                Item::Link { .. } => "link".into(),
                Item::Remove { path, .. } => format!("remove {}", path.file_name().unwrap().to_string_lossy()),
                Item::Rename { .. } => "rename".into(),
            })
            .collect();
        assert_eq!(kinds, ["link", "data a", "remove b"]);
    }

    #[test]
    fn exchange_swaps_entries() {
        let mut c = co();
        let now = Instant::now();
        c.add(&write("/w/a", 0, 1), now);
        c.add(&write("/w/b", 0, 2), now);
        c.add(&ch("/w/a", ChangeKind::Rename { to: "/w/b".into(), exchange: true }), now);
        let items = c.take();
        let Item::Content(a) = &items[0] else { panic!() };
        let Item::Content(b) = &items[1] else { panic!() };
        assert_eq!((a.remote.as_path(), a.local.as_path()), (Path::new("/w/a"), Path::new("/w/b")));
        assert_eq!((b.remote.as_path(), b.local.as_path()), (Path::new("/w/b"), Path::new("/w/a")));
    }
}
