//! What the applier keeps of what it replaces (docs/history.md): one
//! [`lifeline_history`] journal record before each change, and what is
//! removed or replaced whole moved into the machine's attic, never copied
//! (`rename(2)`, or `link(2)` where the mirror must not show a gap).
//!
//! Every call here runs before the change it records: a receiver killed
//! between the two leaves a record of a change that did not happen (which
//! undoes to what is there), never a change without its record.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use lifeline_core::credential::MachineName;
use lifeline_history::record::{AttrChanged, Created, Displaced, Exchanged, OldRange, Overwritten, Renamed, Shared};
use lifeline_history::{Change, Clock, JournalWriter};
use lifeline_store::StoreLayout;
use rustix::fs::{
    linkat, renameat_with, statat, AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps, Uid,
};

use crate::attrs::{original_mode_at, original_mode_fd};
use crate::op_error::{Context, OpResult};

/// A name for an attic object no other displacement in this store has
/// had: the op's seq (for reading), this process and its start, and a
/// count. Not per stream nor from the op alone: seqs start again with each
/// stream and are the machine's to choose, and an object's name taken
/// again would replace it in the attic, and the record naming it would undo
/// to the wrong thing.
fn object_name(seq: u64) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = *STARTED
        .get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{seq:x}-{}-{started:x}-{n}", std::process::id())
}

/// A machine's history, as the applier writes it.
pub struct History {
    journal: JournalWriter,
    attic: OwnedFd,
    attic_path: std::path::PathBuf,
    /// The seq of the op being applied (what its records carry).
    seq: u64,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl History {
    /// Opens `machine`'s journal and attic (made, private, if missing).
    pub fn open(store: &StoreLayout, machine: &MachineName, clock: Arc<dyn Clock>) -> io::Result<History> {
        let journal = JournalWriter::open(&store.history_journal(machine), clock)?;
        let attic_path = store.history_attic(machine);
        lifeline_store::private::create_private_dir_all(&attic_path)?;
        let attic = rustix::fs::open(&attic_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(History { journal, attic, attic_path, seq: 0 })
    }

    /// The op the following records belong to.
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    fn record(&mut self, path: &[u8], change: Change) -> Result<i64, String> {
        self.journal.append(self.seq, path, change).map_err(|e| format!("keep its history: {e}"))
    }

    /// Makes the records durable (with the batch).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.journal.sync()
    }

    /// The device of the journal's filesystem.
    pub(crate) fn device(&self) -> io::Result<u64> {
        self.journal.device()
    }

    /// A `syncfs` of the journal's filesystem made the records durable.
    pub(crate) fn synced_with_filesystem(&mut self) {
        self.journal.synced_with_filesystem()
    }

    /// `path` is about to be created where nothing is.
    pub(crate) fn created(&mut self, path: &[u8]) -> OpResult {
        self.record(path, Change::Created(Created {})).map(drop)
    }

    /// A name for the next attic object, recorded as what was at `path`.
    fn displaced(&mut self, path: &[u8], kind: FileType, shared: Option<Shared>) -> Result<String, String> {
        let object = object_name(self.seq);
        let d = Displaced { object: object.clone(), kind: kind.as_raw_mode(), shared };
        self.record(path, Change::Displaced(d))?;
        Ok(object)
    }

    /// Moves what is at `name` in `dir` (the wire path `path`, of kind
    /// `kind`) to the attic instead of removing it.
    pub(crate) fn displace(&mut self, path: &[u8], dir: BorrowedFd<'_>, name: &OsStr, kind: FileType) -> OpResult {
        let shared = match kind {
            FileType::RegularFile => shared(&statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ctx("stat")?),
            _ => None,
        };
        let object = self.displaced(path, kind, shared)?;
        // Never over an object (a name taken would be a bug: the record
        // just written names it).
        match renameat_with(dir, name, &self.attic, object.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(rustix::io::Errno::XDEV) => {
                return Err("keep its history: the store's history/ and mirror/ must be on one filesystem".into())
            }
            Err(e) => return Err(e).ctx("move it to the history's attic"),
        }
        // A file with other names in the mirror would go on changing with
        // them: the attic keeps a copy of it instead.
        unshare(&self.attic_path.join(&object)).ctx("copy a file the mirror still shares into the attic")
    }

    /// Keeps the file at `name` in `dir` (the wire path `path`), which is
    /// about to be replaced by a rename over it: a second name in the
    /// attic, so that the mirror never lacks the name.
    pub(crate) fn keep_replaced_file(&mut self, path: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> OpResult {
        let st = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ctx("stat")?;
        let object = self.displaced(path, FileType::RegularFile, shared(&st))?;
        linkat(dir, name, &self.attic, object.as_str(), AtFlags::empty()).ctx("link it into the history's attic")
    }

    /// `path` is about to be renamed to `to` (nothing is at `to`).
    pub(crate) fn renamed(&mut self, path: &[u8], to: &[u8]) -> OpResult {
        self.record(path, Change::Renamed(Renamed { to: to.to_vec() })).map(drop)
    }

    /// `a` and `b` are about to be exchanged.
    pub(crate) fn exchanged(&mut self, a: &[u8], b: &[u8]) -> OpResult {
        self.record(a, Change::Exchanged(Exchanged { with: b.to_vec() })).map(drop)
    }

    /// The attributes of `name` in `dir` (the wire path `path`) are about
    /// to change.
    pub(crate) fn attr_changing(&mut self, path: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> OpResult {
        let st = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ctx("stat")?;
        let mode = original_mode_at(dir, name, st.st_mode).ctx("read its mode")?;
        let mut a = attrs_of(&st, mode);
        if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile {
            a.shared = shared(&st);
        }
        self.record(path, Change::AttrChanged(a)).map(drop)
    }

    /// The regular file `file` (whose `fstat` is `st`) at `path` is about to
    /// be changed in place: `ranges` (offset, length) overwritten or cut
    /// off, and its attributes set. Keeps the old bytes of the ranges where
    /// the file had any, its length and its attributes. Answers the first
    /// old bytes at offset 0 it read (at most `head` of them), for the
    /// alarm's detector.
    ///
    /// `new` are the bytes about to be written (offset, data; a later one
    /// wins where they overlap): old bytes equal to them are not kept (an
    /// agent sending a file again, a rewrite that changes a few bytes).
    pub(crate) fn overwriting(
        &mut self,
        path: &[u8],
        file: &File,
        st: &Stat,
        ranges: &[(u64, u64)],
        new: &[(u64, &[u8])],
        head: usize,
    ) -> Result<Option<Vec<u8>>, String> {
        let old_size = st.st_size as u64;
        let mut kept = Vec::new();
        let mut old_head = None;
        for (offset, len) in merged(ranges, old_size) {
            let mut data = vec![0u8; len as usize];
            file.read_exact_at(&mut data, offset).ctx("read what it overwrites")?;
            if offset == 0 {
                old_head = Some(data[..data.len().min(head)].to_vec());
            }
            kept.extend(changed(offset, data, new));
        }
        let mode = original_mode_fd(file.as_fd(), st.st_mode).ctx("read its mode")?;
        let change = Overwritten { old_size, ranges: kept, attr: Some(attrs_of(st, mode)), shared: shared(st) };
        self.record(path, Change::Overwritten(change)).map(|_| old_head)
    }
}

/// On an attic copy of a file that had other names in the mirror: the
/// mirror file's identity, `dev:ino` (see `lifeline_history::record::Shared`).
pub const SHARED_XATTR: &str = "user.lifeline.shared";

/// Replaces every regular file under `at` (itself included) that has other
/// names by a copy of it: same bytes, mode, owner, mtime and kept mode.
/// Symlinks are never followed (the walk stays in the attic).
fn unshare(at: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(at).follow_links(false).follow_root_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let md = entry.path().symlink_metadata()?;
        if md.file_type().is_file() && md.nlink() > 1 {
            let copy = entry.path().with_extension("lifeline-unshare");
            std::fs::copy(entry.path(), &copy)?;
            let f = File::open(&copy)?;
            let _ = rustix::fs::fchown(&f, Some(Uid::from_raw(md.uid())), Some(Gid::from_raw(md.gid())));
            rustix::fs::fchmod(&f, Mode::from_raw_mode(md.mode() & 0o7777))?;
            let mut buf = [0u8; 16];
            if let Ok(n) = rustix::fs::getxattr(entry.path(), crate::attrs::MODE_XATTR, &mut buf[..]) {
                rustix::fs::fsetxattr(&f, crate::attrs::MODE_XATTR, &buf[..n], rustix::fs::XattrFlags::empty())?;
            }
            // Which mirror file it was a name of, for restores: writes
            // through its other names are recorded under that identity.
            let id = format!("{}:{}", md.dev(), md.ino());
            rustix::fs::fsetxattr(&f, SHARED_XATTR, id.as_bytes(), rustix::fs::XattrFlags::empty())?;
            let times = Timestamps {
                last_access: Timespec { tv_sec: md.atime(), tv_nsec: md.atime_nsec() as _ },
                last_modification: Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() as _ },
            };
            rustix::fs::futimens(&f, &times)?;
            std::fs::rename(&copy, entry.path())?;
        }
    }
    Ok(())
}

/// Runs of differing bytes shorter than this apart are kept as one (a
/// record per few bytes would cost more than the bytes).
const SAME_GAP: usize = 64;

/// The parts of the old bytes `data` (at `offset`) that the writes `new`
/// change: what they leave as it was, or rewrite with the same bytes, is
/// not kept.
fn changed(offset: u64, data: Vec<u8>, new: &[(u64, &[u8])]) -> Vec<OldRange> {
    let end = offset + data.len() as u64;
    // Which old bytes stay: none, until a write says otherwise (the range
    // is what the op overwrites or cuts off).
    let mut same = vec![false; data.len()];
    let mut touched = false;
    for (at, bytes) in new {
        let (from, to) = ((*at).max(offset), (at + bytes.len() as u64).min(end));
        for p in from..to {
            let i = (p - offset) as usize;
            same[i] = data[i] == bytes[(p - at) as usize];
            touched = true;
        }
    }
    if !touched {
        return vec![OldRange { offset, data }];
    }
    let mut out: Vec<OldRange> = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if same[i] {
            i += 1;
            continue;
        }
        let start = i;
        // A run of changed bytes, with gaps of fewer than SAME_GAP same ones.
        let mut last = i;
        while i < data.len() && i - last <= SAME_GAP {
            if !same[i] {
                last = i;
            }
            i += 1;
        }
        out.push(OldRange { offset: offset + start as u64, data: data[start..=last].to_vec() });
        i = last + 1;
    }
    out
}

/// `ranges` cut to `[0, size)`, sorted and merged.
fn merged(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = ranges
        .iter()
        .filter_map(|&(off, len)| {
            let end = off.saturating_add(len).min(size);
            (off < end).then_some((off, end))
        })
        .collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in spans {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// The identity of a file with several names, for its records.
#[allow(clippy::unnecessary_cast)] // the field types differ between rustix's backends
fn shared(st: &Stat) -> Option<Shared> {
    (st.st_nlink > 1).then_some(Shared { dev: st.st_dev as u64, ino: st.st_ino as u64 })
}

#[allow(clippy::unnecessary_cast)] // the field types differ between rustix's backends
fn attrs_of(st: &Stat, mode: u32) -> AttrChanged {
    AttrChanged {
        mode,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as u32,
        shared: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{changed, merged, object_name};

    #[test]
    fn bytes_written_again_as_they_were_are_not_kept() {
        let old = b"0123456789abcdefghij".to_vec();
        // The same bytes again: nothing kept.
        assert!(changed(0, old.clone(), &[(0, &old[..])]).is_empty());
        // Two bytes changed far apart, the rest the same: two small runs.
        let mut new = old.clone();
        new[1] = b'X';
        new[18] = b'Y';
        let far: Vec<u8> = (0..200u8).collect();
        let mut far_new = far.clone();
        far_new[5] = 0xff;
        far_new[150] = 0xff;
        let kept = changed(0, far.clone(), &[(0, &far_new[..])]);
        assert_eq!(kept.iter().map(|r| (r.offset, r.data.len())).collect::<Vec<_>>(), [(5, 1), (150, 1)]);
        // Close together: one run.
        let kept = changed(0, old.clone(), &[(0, &new[..])]);
        assert_eq!(kept.iter().map(|r| (r.offset, r.data.clone())).collect::<Vec<_>>(), [(1, old[1..=18].to_vec())]);
        // A cut tail no write covers is kept whole; a later write wins.
        let kept = changed(10, old[10..].to_vec(), &[(0, b"zz"), (12, b"cd"), (12, b"CD")]);
        assert_eq!(kept.iter().map(|r| (r.offset, r.data.clone())).collect::<Vec<_>>(), [(10, old[10..].to_vec())]);
    }

    #[test]
    fn ranges_are_cut_to_the_old_length_and_merged() {
        assert_eq!(merged(&[(10, 5), (0, 4), (12, 10), (100, 5)], 50), [(0, 4), (10, 12)]);
        assert_eq!(merged(&[(40, 20)], 50), [(40, 10)], "what lies past the old end keeps nothing");
        assert!(merged(&[(50, 10)], 50).is_empty(), "an append keeps nothing");
        assert_eq!(merged(&[(4, 4), (0, 4)], 8), [(0, 8)], "touching ranges are one");
    }

    /// Each stream starts its seqs again: the same op seq in two streams
    /// (or twice in one, as a machine may send) never names one object.
    #[test]
    fn attic_names_never_repeat() {
        let names: std::collections::HashSet<_> = (0..1000).map(|i| object_name(i % 2)).collect();
        assert_eq!(names.len(), 1000);
    }
}
