//! Applying replicated operations to a machine's mirror.
//!
//! Every path from the network is checked by [`wirepath::validate`], its
//! parent directory is resolved inside the mirror by [`MirrorResolver`] (openat2,
//! never following a symlink), and the operation itself uses the `*at()`
//! syscalls on the final name relative to that directory's fd. Nothing the
//! agent sends can reach outside the machine's mirror.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use lifeline_core::wirepath;
use lifeline_proto::v1::{op, Ack, Attr, FileData, Op, OpBatch, OpError};
use rustix::fs::{fstat, linkat, mkdirat, renameat_with, symlinkat, AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use tracing::{debug, warn};

use crate::alarm::{Overwrite, Watch, SAMPLE};
use crate::attrs::{set_attr_existing, set_attr_known};
use crate::delta::{Deltas, PartialRecord};
use crate::history::History;
use crate::op_error::{Context, OpResult};
use crate::progress::QueueProgress;
use crate::safepath::{kind_at, open_beneath, remove_at, split, Mirror, MirrorResolver, NEW_DIR_MODE};

fn lossy(p: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(p)
}

fn op_name(kind: Option<&op::Kind>) -> &'static str {
    match kind {
        Some(op::Kind::Data(_)) => "write",
        Some(op::Kind::Mkdir(_)) => "mkdir",
        Some(op::Kind::Remove(_)) => "remove",
        Some(op::Kind::Rename(r)) if r.exchange => "exchange",
        Some(op::Kind::Rename(_)) => "rename",
        Some(op::Kind::Symlink(_)) => "symlink",
        Some(op::Kind::Link(_)) => "link",
        Some(op::Kind::Setattr(_)) => "setattr",
        Some(op::Kind::Delta(_)) => "delta",
        None => "op",
    }
}

/// Whether `a` is `b` or one of its ancestors (wire paths).
fn is_ancestor_or_same(a: &[u8], b: &[u8]) -> bool {
    b.starts_with(a) && (a.len() == b.len() || b[a.len()] == b'/')
}

/// Applies the ops of one replication stream, in order, to one mirror.
#[derive(Debug)]
pub struct Applier {
    resolver: MirrorResolver,
    /// The last accepted op seq of the stream.
    last_seq: Option<u64>,
    label: String,
    /// How far the agent's queue was applied (tree ops' origins).
    progress: Option<QueueProgress>,
    /// A readable fd of the mirror's root, for syncfs.
    sync_fd: Option<OwnedFd>,
    /// Ops skipped because an earlier stream applied them.
    pub skipped: u64,
    /// The delta being applied, if any (see [`crate::delta`]).
    deltas: Deltas,
    /// Where what each change replaces is kept (none: nothing is).
    history: Option<History>,
    /// The history's journal is on the mirror's filesystem (as in the
    /// store's layout), so the mirror's `syncfs` makes it durable too.
    history_on_mirror_fs: bool,
    /// The ransomware and mass-deletion detector (none: not watched).
    watch: Option<Watch>,
}

impl Applier {
    /// `label` names the machine in logs.
    pub fn new(mirror: Mirror, label: impl Into<String>) -> Applier {
        Applier {
            resolver: MirrorResolver::new(mirror),
            last_seq: None,
            label: label.into(),
            progress: None,
            sync_fd: None,
            skipped: 0,
            deltas: Deltas::default(),
            history: None,
            history_on_mirror_fs: false,
            watch: None,
        }
    }

    /// Feeds what each op changes to `watch`, which raises alarms.
    pub fn with_watch(mut self, watch: Watch) -> Applier {
        self.watch = Some(watch);
        self
    }

    /// How close the stream came to an alarm, for the log.
    pub fn alarm_peaks(&self) -> String {
        self.watch.as_ref().map_or_else(|| "not watched".into(), Watch::peaks)
    }

    /// The alarm standing for the machine, for its acknowledgements.
    pub fn alarm(&self) -> Option<lifeline_proto::v1::StandingAlarm> {
        self.watch.as_ref().and_then(Watch::standing)
    }

    /// Keeps what every change replaces in `history`.
    pub fn with_history(mut self, history: History) -> Applier {
        // Not known (an error): synced on its own, as on another filesystem.
        let mirror_dev = fstat(self.resolver.mirror().root()).map(|st| st.st_dev).ok();
        self.history_on_mirror_fs = mirror_dev.is_some() && history.device().ok() == mirror_dev;
        self.history = Some(history);
        self
    }

    /// Keeps `record` naming the temporary file of the delta being built, and
    /// first removes the one a receiver killed mid-delta left behind.
    pub fn with_partial(mut self, mut record: PartialRecord) -> Applier {
        match record.clean(self.resolver.mirror()) {
            Ok(Some(p)) => {
                warn!(machine = %self.label, "removed {}, left behind by a delta that never finished", lossy(&p).escape_debug())
            }
            Ok(None) => {}
            Err(e) => warn!(machine = %self.label, "cannot remove what an unfinished delta left behind: {e}"),
        }
        self.deltas.set_record(record);
        self
    }

    /// Remembers (and skips) the tree ops of the agent's queue in `progress`.
    pub fn with_progress(mut self, progress: QueueProgress) -> Applier {
        self.progress = Some(progress);
        self
    }

    /// The highest queue origin applied (0: none or not tracked).
    pub fn resume_origin(&self) -> u64 {
        self.progress.as_ref().map_or(0, QueueProgress::applied)
    }

    pub fn mirror(&self) -> &Mirror {
        self.resolver.mirror()
    }

    /// The highest op seq applied so far.
    pub fn applied_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Applies a batch and returns its acknowledgement, which must not be sent
    /// before [`Applier::sync`]. Stops early, returning `None`, when
    /// `cancelled()` turns true between two ops (the stream is going away and
    /// its ack would not be sent).
    pub fn apply_batch(&mut self, batch: &OpBatch, cancelled: &dyn Fn() -> bool) -> Option<Ack> {
        // The operator may have cleared the alarm since the last batch (one
        // small file read per batch).
        if let Some(w) = &mut self.watch {
            w.refresh();
        }
        let mut errors = Vec::new();
        for op in &batch.ops {
            if cancelled() {
                return None;
            }
            if let Err(e) = self.apply(op) {
                // Escaped: paths from the network must not forge log lines.
                warn!(machine = %self.label, seq = op.seq, "{}", e.message.escape_debug());
                errors.push(e);
            }
        }
        Some(Ack {
            applied_seq: self.last_seq.unwrap_or(0),
            errors,
            resume_origin: None,
            implied_dirs: self.resolver.take_implied(),
            alarm: self.alarm(),
        })
    }

    /// Makes everything applied so far durable: file data, directory entries
    /// and the queue progress. One `syncfs` of the mirror's filesystem costs
    /// less than an fsync per file and directory once a batch holds more
    /// than a few files.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.sync_fd.is_none() {
            let fd = rustix::fs::openat(
                self.resolver.mirror().root(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            self.sync_fd = Some(fd);
        }
        // On one filesystem (the store's layout), the mirror's syncfs makes
        // the journal durable with it: one journal commit and one cache
        // flush per group instead of two (`history_cost` measured the
        // journal's own fdatasync at a fifth of the sync time of groups
        // of 100 new files). What it does not keep is the journal's
        // records reaching the disk before the mirror's changes within
        // this call, which promised nothing a power cut keeps anyway:
        // between two syncs the kernel commits the mirror's metadata (ext4
        // every 5 s) before the record's pages are written back. What
        // holds: each record is in the page cache before its change (a
        // SIGKILL loses none), and no batch is acknowledged before both
        // are durable. Elsewhere (a test's store), the journal first.
        if let Some(h) = &mut self.history {
            if !self.history_on_mirror_fs {
                h.sync()?;
            }
        }
        rustix::fs::syncfs(self.sync_fd.as_ref().expect("opened"))?;
        if let Some(h) = &mut self.history {
            h.synced_with_filesystem();
        }
        if let Some(p) = &mut self.progress {
            p.sync()?;
        }
        Ok(())
    }

    /// Applies one op; the error says what failed on which path.
    pub fn apply(&mut self, op: &Op) -> Result<(), OpError> {
        let fail = |message: String| OpError { seq: op.seq, path: op.path.clone(), message, delta_failed: false };
        if let Some(prev) = self.last_seq {
            if op.seq <= prev {
                return Err(fail(format!(
                    "{} {}: op seq {} is not above the previous seq {prev}, skipped",
                    op_name(op.kind.as_ref()),
                    lossy(&op.path),
                    op.seq
                )));
            }
        }
        self.last_seq = Some(op.seq);
        if op.origin != 0 {
            if let Some(p) = &self.progress {
                if op.origin <= p.applied() {
                    // Applied by an earlier stream; its ack was lost.
                    debug!(machine = %self.label, origin = op.origin, "already applied; skipped");
                    self.skipped += 1;
                    return Ok(());
                }
            }
        }
        if let Some(h) = &mut self.history {
            h.set_seq(op.seq);
        }
        if let Some(w) = &mut self.watch {
            w.detector().begin_op();
        }
        let is_delta = matches!(op.kind, Some(op::Kind::Delta(_)));
        let result = self.apply_kind(op).map_err(|e| OpError {
            delta_failed: is_delta,
            ..fail(format!("{} {}: {e}", op_name(op.kind.as_ref()), lossy(&op.path)))
        });
        if let Some(w) = &mut self.watch {
            w.after_op();
        }
        if op.origin != 0 {
            if let Some(p) = &mut self.progress {
                if let Err(e) = p.record(op.origin) {
                    warn!(machine = %self.label, "cannot record the queue progress: {e}");
                }
            }
        }
        result
    }

    fn apply_kind(&mut self, op: &Op) -> OpResult {
        let Some(kind) = &op.kind else {
            return Err("the op has no kind (newer agent?)".into());
        };
        if !matches!(kind, op::Kind::Delta(_)) {
            self.deltas.interrupt(&self.label);
        }
        wirepath::validate(&op.path).map_err(|e| format!("refused: {e}"))?;
        let path = &op.path[..];
        match kind {
            op::Kind::Delta(d) => {
                let (dir, _) = split(path);
                let resolver = &mut self.resolver;
                let history = self.history.as_mut();
                self.deltas.apply(path, d, history, || resolver.dir(dir, false).ctx("open parent directory"))
            }
            op::Kind::Data(d) => self.file_data(path, d),
            op::Kind::Mkdir(m) => self.mkdir(path, m.attr.as_ref()),
            op::Kind::Remove(_) => self.remove(path),
            op::Kind::Rename(r) => {
                wirepath::validate(&r.to).map_err(|e| format!("refused target: {e}"))?;
                if r.exchange {
                    self.exchange(path, &r.to)
                } else {
                    self.rename(path, &r.to)
                }
            }
            op::Kind::Symlink(s) => self.symlink(path, &s.target),
            op::Kind::Link(l) => {
                wirepath::validate(&l.to).map_err(|e| format!("refused target: {e}"))?;
                self.link(path, &l.to)
            }
            op::Kind::Setattr(s) => match &s.attr {
                Some(attr) => self.setattr(path, attr),
                None => Ok(()),
            },
        }
    }

    /// The parent directory of `path`, created if missing.
    fn parent_create(&mut self, path: &[u8]) -> Result<Arc<OwnedFd>, String> {
        let (dir, _) = split(path);
        if self.history.is_some() && !dir.is_empty() && self.resolver.dir(dir, false).ctx("open parent")?.is_none() {
            self.keep_before_making(dir)?;
        }
        let fd = self.resolver.dir(dir, true).ctx("create parent directories")?;
        Ok(fd.expect("created when missing"))
    }

    /// With history, before the resolver makes the directories of `dir`:
    /// the first one missing is recorded as created, and a non-directory
    /// in the way (which the resolver would remove) goes to the attic.
    fn keep_before_making(&mut self, dir: &[u8]) -> OpResult {
        let mut end = 0;
        while end < dir.len() {
            end = dir[end..].iter().position(|b| *b == b'/').map_or(dir.len(), |i| end + i);
            let prefix = &dir[..end];
            let (up, name) = split(prefix);
            let Some(parent) = self.resolver.dir(up, false).ctx("open parent")? else {
                return Ok(()); // cannot happen: each step leaves a directory
            };
            match kind_at(parent.as_fd(), name).ctx("stat")? {
                Some(FileType::Directory) => {}
                Some(kind) => return self.remove_existing(prefix, parent.as_fd(), name, kind),
                None => return self.history.as_mut().expect("kept").created(prefix),
            }
            end += 1;
        }
        Ok(())
    }

    /// The parent directory of `path` if it exists (as a real directory).
    fn parent(&mut self, path: &[u8]) -> Result<Option<Arc<OwnedFd>>, String> {
        let (dir, _) = split(path);
        self.resolver.dir(dir, false).ctx("open parent directory")
    }

    /// Removes whatever is at `name` in `dir` (the wire path `path`): moves
    /// it to the history's attic, if history is kept; forgets cached
    /// directories if it was one.
    fn remove_existing(&mut self, path: &[u8], dir: BorrowedFd<'_>, name: &OsStr, kind: FileType) -> OpResult {
        if kind == FileType::Directory {
            self.resolver.forget_dirs();
        }
        match &mut self.history {
            Some(h) => h.displace(path, dir, name, kind),
            None => remove_at(dir, name, kind).ctx("remove what is there"),
        }
    }

    /// With history: records that `name` in `dir` (the wire path `path`) is
    /// about to be created, or moves what is there to the attic. Answers
    /// whether something was there.
    fn make_room(&mut self, path: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, String> {
        if self.history.is_none() {
            return Ok(false);
        }
        match kind_at(dir, name).ctx("stat")? {
            Some(kind) => self.remove_existing(path, dir, name, kind).map(|()| true),
            None => self.history.as_mut().expect("checked").created(path).map(|()| false),
        }
    }

    /// Every syscall here costs (file creation on a journaled filesystem is
    /// what limits a burst of small files), so what `fstat` shows already
    /// right is not done again: no truncation that changes nothing, no
    /// chown/chmod to what the file has.
    fn file_data(&mut self, path: &[u8], d: &FileData) -> OpResult {
        let dir = self.parent_create(path)?;
        let (_, name) = split(path);
        // With history, what is there decides what is kept: nothing (a new
        // file), its old bytes (a file), or the whole of it (anything else,
        // moved to the attic below).
        let mut fresh = false;
        if let Some(h) = &mut self.history {
            if kind_at(dir.as_fd(), name).ctx("stat")?.is_none() {
                h.created(path)?;
                fresh = true;
            }
        }
        // Created with its final permissions (as far as the umask allows);
        // the mirror's root is private, so nobody sees it half-written.
        let create_mode = Mode::from_raw_mode(d.attr.as_ref().map_or(0o600, |a| a.mode & 0o777));
        // Read too, with history: the bytes a write replaces are kept.
        let access = if self.history.is_some() { OFlags::RDWR } else { OFlags::WRONLY };
        let flags = access | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let mut opened = open_beneath(dir.as_fd(), name, flags, create_mode);
        if let Err(Errno::LOOP | Errno::ISDIR | Errno::NXIO | Errno::NOTDIR) = opened {
            // Not a regular file there (a symlink, a directory, a FIFO...):
            // the source says it is one now.
            if let Some(kind) = kind_at(dir.as_fd(), name).ctx("stat")? {
                self.remove_existing(path, dir.as_fd(), name, kind)?;
                fresh = true;
            }
            opened = open_beneath(dir.as_fd(), name, flags, create_mode);
        }
        let mut fd = opened.ctx("open")?;
        let mut st = fstat(&fd).ctx("stat")?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err("open: not a regular file".into());
        }
        if d.replace && st.st_nlink > 1 {
            // Other names share this file here; the source's file at this
            // name is sent whole and may not be theirs any more.
            drop(fd);
            match &mut self.history {
                Some(h) => h.displace(path, dir.as_fd(), name, FileType::RegularFile)?,
                None => rustix::fs::unlinkat(&dir, name, AtFlags::empty()).ctx("unlink the shared file")?,
            }
            fresh = true;
            fd = open_beneath(dir.as_fd(), name, flags | OFlags::EXCL, create_mode).ctx("open")?;
            st = fstat(&fd).ctx("stat")?;
        }
        let file = File::from(fd);
        // The new bytes at offset 0, which the detector judges.
        let new_head = d.chunks.iter().find(|c| c.offset == 0).map(|c| &c.data[..c.data.len().min(SAMPLE)]);
        let mut old_head = None;
        if let (false, Some(h)) = (fresh, &mut self.history) {
            // What this op overwrites or cuts off (`overwriting` keeps only
            // what lies within the old length).
            let mut ranges = Vec::with_capacity(d.chunks.len() + 2);
            if let Some(t) = d.truncate_to {
                ranges.push((t, u64::MAX - t));
            }
            ranges.extend(d.chunks.iter().map(|c| (c.offset, c.data.len() as u64)));
            ranges.push((d.size, u64::MAX - d.size));
            let new: Vec<(u64, &[u8])> = d.chunks.iter().map(|c| (c.offset, &c.data[..])).collect();
            let head = if new_head.is_some() { SAMPLE } else { 0 };
            old_head = h.overwriting(path, &file, &st, &ranges, &new, head)?;
        }
        if let Some(w) = &mut self.watch {
            if fresh || st.st_size == 0 {
                w.detector().created(path);
            } else {
                w.detector().overwrote(
                    path,
                    &Overwrite {
                        old_head: old_head.as_deref().filter(|_| new_head.is_some()),
                        new_head,
                        old_mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
                        new_mtime: d.attr.as_ref().map(|a| (a.mtime_sec, a.mtime_nsec)),
                    },
                );
            }
        }
        let mut len = st.st_size as u64;
        if let Some(t) = d.truncate_to {
            if t < len {
                file.set_len(t).ctx("truncate")?;
                len = t;
            }
        }
        for c in &d.chunks {
            file.write_all_at(&c.data, c.offset).ctx(&format!("write {} bytes at {}", c.data.len(), c.offset))?;
            len = len.max(c.offset + c.data.len() as u64);
        }
        if len != d.size {
            file.set_len(d.size).ctx("set length")?;
        }
        if let Some(attr) = &d.attr {
            set_attr_known(file.as_fd(), attr, &st, true)?;
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &[u8], attr: Option<&Attr>) -> OpResult {
        let dir = self.parent_create(path)?;
        let (_, name) = split(path);
        match kind_at(dir.as_fd(), name).ctx("stat")? {
            Some(FileType::Directory) => {
                if let (Some(h), Some(_)) = (&mut self.history, attr) {
                    h.attr_changing(path, dir.as_fd(), name)?;
                }
            }
            existing => {
                match existing {
                    Some(kind) => self.remove_existing(path, dir.as_fd(), name, kind)?,
                    None => {
                        if let Some(h) = &mut self.history {
                            h.created(path)?;
                        }
                    }
                }
                match mkdirat(&dir, name, Mode::from_raw_mode(NEW_DIR_MODE)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e).ctx("mkdir"),
                }
            }
        }
        match attr {
            Some(attr) => set_attr_existing(dir.as_fd(), name, FileType::Directory, attr, false),
            None => Ok(()),
        }
    }

    fn remove(&mut self, path: &[u8]) -> OpResult {
        let Some(dir) = self.parent(path)? else {
            return Ok(());
        };
        let (_, name) = split(path);
        match kind_at(dir.as_fd(), name).ctx("stat")? {
            None => Ok(()),
            Some(kind) => {
                if let Some(w) = &mut self.watch {
                    // A tree removed whole (`rm -rf` arrives as one op) counts
                    // what it held: a walk that stops at the limit.
                    let entries = match kind {
                        FileType::Directory => {
                            let at = self.resolver.mirror().path().join(std::ffi::OsStr::from_bytes(path));
                            let walk = walkdir::WalkDir::new(at).follow_links(false).follow_root_links(false);
                            walk.into_iter().take(w.detector().removal_cap()).count()
                        }
                        _ => 1,
                    };
                    w.detector().removed(path, entries);
                }
                self.remove_existing(path, dir.as_fd(), name, kind)
            }
        }
    }

    /// Moves `from` (which exists, of kind `kind`, in `from_dir`) to `to`,
    /// replacing what is there.
    fn move_to(&mut self, from_dir: &Arc<OwnedFd>, from: &[u8], kind: FileType, to: &[u8]) -> OpResult {
        if is_ancestor_or_same(to, from) || is_ancestor_or_same(from, to) {
            if from == to {
                return Ok(());
            }
            return Err(format!("cannot move to {}: one contains the other", lossy(to)));
        }
        let to_dir = self.parent_create(to).map_err(|e| format!("{} {e}", lossy(to)))?;
        let (_, from_name) = split(from);
        let (_, to_name) = split(to);
        if kind == FileType::Directory {
            self.resolver.forget_dirs();
        }
        if self.history.is_some() {
            // What the rename would replace is kept first, so the rename
            // itself replaces nothing.
            if let Some(k) = kind_at(to_dir.as_fd(), to_name).ctx("stat target")? {
                self.remove_existing(to, to_dir.as_fd(), to_name, k).map_err(|e| format!("{}: {e}", lossy(to)))?;
            }
            self.history.as_mut().expect("checked").renamed(from, to)?;
        }
        if let Some(w) = &mut self.watch {
            w.detector().renamed(from, to);
        }
        let mut replaced = false;
        loop {
            match renameat_with(from_dir, from_name, &to_dir, to_name, RenameFlags::empty()) {
                Ok(()) => return Ok(()),
                // What is at `to` cannot be replaced by the source as it is
                // (directory vs non-directory, or a non-empty directory): the
                // source is the truth, so it goes.
                Err(Errno::ISDIR | Errno::NOTDIR | Errno::NOTEMPTY | Errno::EXIST) if !replaced => {
                    replaced = true;
                    if let Some(k) = kind_at(to_dir.as_fd(), to_name).ctx("stat target")? {
                        self.remove_existing(to, to_dir.as_fd(), to_name, k)
                            .map_err(|e| format!("{}: {e}", lossy(to)))?;
                    }
                }
                Err(e) => return Err(e).ctx(&format!("rename to {}", lossy(to))),
            }
        }
    }

    /// The kind of what is at `path`, with its parent directory; `None` when
    /// it does not exist in the mirror.
    fn lookup(&mut self, path: &[u8]) -> Result<Option<(Arc<OwnedFd>, FileType)>, String> {
        let Some(dir) = self.parent(path)? else {
            return Ok(None);
        };
        let (_, name) = split(path);
        Ok(kind_at(dir.as_fd(), name).ctx("stat")?.map(|k| (dir, k)))
    }

    fn rename(&mut self, from: &[u8], to: &[u8]) -> OpResult {
        match self.lookup(from)? {
            Some((dir, kind)) => self.move_to(&dir, from, kind, to),
            None => {
                debug!(machine = %self.label, "rename {}: source missing, nothing to do", lossy(from));
                Ok(())
            }
        }
    }

    fn exchange(&mut self, a: &[u8], b: &[u8]) -> OpResult {
        let la = self.lookup(a)?;
        let lb = self.lookup(b).map_err(|e| format!("{}: {e}", lossy(b)))?;
        match (la, lb) {
            (Some((da, ka)), Some((db, kb))) => {
                if a == b {
                    return Ok(());
                }
                if is_ancestor_or_same(a, b) || is_ancestor_or_same(b, a) {
                    return Err(format!("cannot exchange with {}: one contains the other", lossy(b)));
                }
                if ka == FileType::Directory || kb == FileType::Directory {
                    self.resolver.forget_dirs();
                }
                let (_, na) = split(a);
                let (_, nb) = split(b);
                if let Some(h) = &mut self.history {
                    h.exchanged(a, b)?;
                }
                renameat_with(&da, na, &db, nb, RenameFlags::EXCHANGE).ctx(&format!("exchange with {}", lossy(b)))
            }
            (Some((da, ka)), None) => self.move_to(&da, a, ka, b),
            (None, Some((db, kb))) => self.move_to(&db, b, kb, a),
            (None, None) => {
                debug!(machine = %self.label, "exchange {}: both sides missing", lossy(a));
                Ok(())
            }
        }
    }

    fn symlink(&mut self, path: &[u8], target: &[u8]) -> OpResult {
        if target.is_empty() || target.contains(&0) {
            return Err("symlink target is empty or contains a NUL byte".into());
        }
        let dir = self.parent_create(path)?;
        let (_, name) = split(path);
        self.make_room(path, dir.as_fd(), name)?;
        let mut replaced = false;
        loop {
            match symlinkat(target, &dir, name) {
                Ok(()) => return Ok(()),
                Err(Errno::EXIST) if !replaced => {
                    replaced = true;
                    if let Some(k) = kind_at(dir.as_fd(), name).ctx("stat")? {
                        self.remove_existing(path, dir.as_fd(), name, k)?;
                    }
                }
                Err(e) => return Err(e).ctx("symlink"),
            }
        }
    }

    fn link(&mut self, path: &[u8], to: &[u8]) -> OpResult {
        let Some((dir, kind)) = self.lookup(path)? else {
            return Err("link source is missing".into());
        };
        if kind == FileType::Directory {
            return Err("link source is a directory".into());
        }
        if is_ancestor_or_same(to, path) {
            if to == path {
                return Ok(());
            }
            return Err(format!("cannot link to {}: it contains the source", lossy(to)));
        }
        let to_dir = self.parent_create(to).map_err(|e| format!("{} {e}", lossy(to)))?;
        let (_, name) = split(path);
        let (_, to_name) = split(to);
        if self.history.is_some() {
            let src = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ctx("stat")?;
            match rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(dst) if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino) => return Ok(()),
                _ => {
                    self.make_room(to, to_dir.as_fd(), to_name).map_err(|e| format!("{}: {e}", lossy(to)))?;
                }
            }
        }
        let mut replaced = false;
        loop {
            match linkat(&dir, name, &to_dir, to_name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(Errno::EXIST) if !replaced => {
                    replaced = true;
                    let src = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).ctx("stat")?;
                    match rustix::fs::statat(&to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(dst) if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino) => return Ok(()),
                        Ok(dst) => {
                            let k = FileType::from_raw_mode(dst.st_mode);
                            self.remove_existing(to, to_dir.as_fd(), to_name, k)
                                .map_err(|e| format!("{}: {e}", lossy(to)))?;
                        }
                        Err(Errno::NOENT) => {}
                        Err(e) => return Err(e).ctx(&format!("stat {}", lossy(to))),
                    }
                }
                Err(e) => return Err(e).ctx(&format!("link to {}", lossy(to))),
            }
        }
    }

    fn setattr(&mut self, path: &[u8], attr: &Attr) -> OpResult {
        let Some((dir, kind)) = self.lookup(path)? else {
            return Err("no such file or directory".into());
        };
        let (_, name) = split(path);
        if let Some(h) = &mut self.history {
            h.attr_changing(path, dir.as_fd(), name)?;
        }
        if let Some(w) = &mut self.watch {
            w.detector().mtime_set(path, (attr.mtime_sec, attr.mtime_nsec));
        }
        set_attr_existing(dir.as_fd(), name, kind, attr, true)
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
pub(crate) mod tests;
