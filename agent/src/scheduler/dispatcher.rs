//! The schedule processing unit (the dispatcher): once the scheduler's loop
//! says it is time, takes the coalescer's pending items in order
//! (`Scheduler::dispatch`), holds the queue behind an object that vanished
//! at send time for a few rounds, and turns the items into
//! sequence-numbered wire operations ([`BatchBuilder`]), reading each file's
//! current bytes for the changed ranges at send time. Batches go to the
//! network backup unit (`crate::sender`) over a small channel.

use std::collections::hash_map::{Entry, HashMap};
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeline_core::{nofollow, wirepath};
use lifeline_proto::v1::{self as pb, op::Kind};
use rustix::fs::OFlags;
use tracing::{debug, error, info, warn};

use super::coalescer::{Content, Item, What, NO_ORIGIN};
use super::Scheduler;

/// Files smaller than this are sent whole (see `bench/reconcile.py`): below
/// it the round trip for the signature costs about what the file does.
pub const DELTA_MIN_SIZE: u64 = 256 << 10;

/// What the dispatcher hands the network backup unit, in order.
pub enum Outgoing {
    Batch(OutBatch),
    /// A reconciliation's file to send as a delta: the sender fetches the
    /// signature of the mirror's copy and builds the ops (see [`DeltaJob`]).
    Delta(Box<DeltaJob>),
}

/// A regular file reconciliation found different from the mirror's older
/// copy, big enough for a delta, opened at dispatch. Fetching the copy's
/// signature is a network call, which the scheduler's thread does not make:
/// the sender runs the job ([`DeltaJob::build`]), and the ops it builds keep
/// their place in the order, numbered within the span of sequence numbers
/// the dispatcher set aside for them.
pub struct DeltaJob {
    pub content: Content,
    /// The mirror's name of the file, on the wire.
    pub wire: Vec<u8>,
    file: File,
    md: Metadata,
    /// The job's ops are numbered after `first_seq`, up to `last_seq`
    /// (the next batch's numbers start after it).
    first_seq: u64,
    pub last_seq: u64,
    /// The oldest queue origin the file's entry carries (see
    /// `OutBatch::min_origin`).
    pub min_origin: u64,
    pub epoch: u64,
}

/// Sequence numbers set aside for a delta job of a `size`-byte file: more
/// than it can have ops. Every op of a job but its last two describes at
/// least 16 KiB of the file: a delta piece ends after a MiB of literals,
/// [`DELTA_PIECE_INSTRS`] instructions of a byte or more, or
/// [`DELTA_PIECE_SPAN`] of the file; sent whole, an op holds a MiB. (The
/// receiver only needs the numbers to grow; the unused ones are a gap.)
fn delta_seq_span(size: u64) -> u64 {
    size / DELTA_PIECE_INSTRS as u64 + 4
}

/// A batch ready for the network, with what the sender needs to account for it.
pub struct OutBatch {
    pub batch: pb::OpBatch,
    pub last_seq: u64,
    /// Capture time of the oldest change in the batch.
    pub oldest: Instant,
    pub bytes: u64,
    /// The oldest queue origin the batch carries: the log must keep it until
    /// the batch is acknowledged.
    pub min_origin: u64,
    /// The scheduler's replay epoch it was built in; the sender drops batches
    /// of an older one (their changes are replayed).
    pub epoch: u64,
}

/// Dispatch rounds the queue waits behind an object that vanished at send
/// time before sending past it (about 4 intervals each).
const HOLD_ROUNDS: u32 = 5;
/// ... and only for a change captured this recently.
pub(super) const HOLD_FRESH: Duration = Duration::from_secs(2);

/// A reconciliation's delta waits (with everything after it) while batches
/// are unacknowledged, for at most this long: its signature must describe the
/// mirror after what is already on its way. Otherwise a file found different
/// again before its first delta was applied gets a second delta against the
/// old copy, which the receiver refuses (and the file is sent whole).
const DELTA_WAIT: Duration = Duration::from_secs(3);

impl Scheduler {
    /// Sends everything pending; false when the network side is gone.
    pub(super) fn dispatch(&mut self, out: &tokio::sync::mpsc::Sender<Outgoing>) -> bool {
        // What is sent must be in the log first: a crash after sending and
        // before the acknowledgement replays it. (Written now; made durable
        // on the log's own thread within milliseconds, so that fdatasync
        // latency never delays replication.)
        if let Err(e) = self.queue_log.commit() {
            error!("cannot sync the queue log in {}: {e}", self.queue_log.dir().display());
        }
        self.last_commit = Instant::now();
        let mut items = self.co.take().into_iter();
        let mut closed = false;
        let unacked = !self.inflight.is_empty();
        let inflight = &mut self.inflight;
        let mut send = |o: Outgoing| {
            inflight.push_back(match &o {
                Outgoing::Batch(b) => (b.last_seq, b.min_origin),
                Outgoing::Delta(j) => (j.last_seq, j.min_origin),
            });
            if out.blocking_send(o).is_err() {
                closed = true;
            }
        };
        let mut builder = BatchBuilder::new(&mut self.seq, self.epoch, &mut send).with_delta(self.opts.delta_min_size);
        let mut held = Vec::new();
        let mut back = Vec::new();
        let unsent = &mut self.unsent;
        unsent.redirected = false;
        while let Some(item) = items.next() {
            if let Item::Content(c) = &item {
                if unacked && matches!(c.what, What::Delta { .. }) && c.since.elapsed() < DELTA_WAIT {
                    debug!(local = %c.local.display(), "delta waits for the acknowledgement of batches in flight");
                    held.push(item);
                    held.extend(items.by_ref());
                    break;
                }
            }
            let item = unsent.redirect(item);
            // Content sent: the receiver has it under that name now.
            let remote = match &item {
                Item::Content(c) if !unsent.names.is_empty() => Some(c.remote.clone()),
                _ => None,
            };
            let Some(mut c) = builder.item(item) else {
                if let Some(r) = remote {
                    unsent.names.remove(&r);
                }
                continue;
            };
            // A linked file whose entry lost track of its name: read it
            // through the name it has now.
            if self.co.relocate(&mut c) {
                match builder.item(Item::Content(c)) {
                    None => continue,
                    Some(back) => c = back,
                }
            }
            // The object vanished since its change: renamed or replaced, and
            // that event is usually on its way. Later ops may refer to it by
            // the name it had (a link, a rename), so everything after it
            // waits, in order, for a few rounds.
            // Only fresh changes, whose next event is on its way; a backlog
            // (a replay, a long cut) would be held object after object.
            if c.deferrals < HOLD_ROUNDS && c.since.elapsed() < HOLD_FRESH {
                debug!(local = %c.local.display(), "vanished at send time; holding the rest of the queue");
                c.deferrals += 1;
                held.push(Item::Content(c));
                held.extend(items.by_ref());
                break;
            }
            unsent.sent_past(&c);
            back.push(c);
        }
        builder.flush();
        let stale_links = builder.stale_links;
        drop(builder);
        if closed {
            return false;
        }
        self.co.restore(held);
        // Still gone after that: sent past, and retried by its current name.
        let mut given_up = 0;
        let mut oldest_given_up = std::time::SystemTime::now();
        for c in back {
            debug!(local = %c.local.display(), "vanished at send time; deferred");
            if c.since.elapsed() < self.opts.vanished_timeout {
                self.co.requeue(c);
            } else {
                debug!("{} vanished and never came back", c.local.display());
                given_up += 1;
                oldest_given_up = oldest_given_up.min(std::time::SystemTime::now() - c.since.elapsed());
            }
        }
        if self.unsent.redirected || stale_links > 0 {
            // Names linked by a check instead of a link, or a reconciliation's
            // link whose names were renamed since: split in the mirror until
            // a reconciliation links them again.
            if let Some(r) = &self.opts.reconcile {
                r.notify_one();
            }
        }
        if given_up > 0 {
            // Their data may live on under names the queue does not know (or
            // a reconciliation's finding merged into them went with them).
            info!(entries = given_up, "gave up on objects that vanished; reconciling");
            // What they carried may have reached the mirror in part, with
            // the file's current size and mtime: compare by content.
            self.counters.suspect(oldest_given_up);
            if let Some(r) = &self.opts.reconcile {
                r.notify_one();
            }
        }
        true
    }
}

/// Mirror names whose content was sent past because the object had
/// vanished: the receiver has nothing (or an older object) there, until
/// content for the name is sent or a rename or removal moves it on.
///
/// A link from such a name would fail at the receiver ("link source is
/// missing"): that happens when a file is created, renamed, linked and
/// unlinked again before the agent reads it (a busy machine). The link is
/// sent as a check of its new name instead: whatever is there now goes whole,
/// or is removed.
const UNSENT_MAX: usize = 4096;

#[derive(Default)]
pub(super) struct Unsent {
    names: std::collections::HashSet<PathBuf>,
    /// A link became a check.
    redirected: bool,
}

impl Unsent {
    fn sent_past(&mut self, c: &Content) {
        if self.names.len() >= UNSENT_MAX {
            // Names nothing referred to again; a link from one of them
            // fails at the receiver and is repaired by reconciliation.
            self.names.clear();
        }
        self.names.insert(c.remote.clone());
    }

    /// `item`, or what to send instead; follows the names through renames.
    fn redirect(&mut self, item: Item) -> Item {
        if self.names.is_empty() {
            return item;
        }
        match item {
            Item::Rename { ref from, ref to, exchange, .. } => {
                let (f, t) = (self.names.remove(from), self.names.remove(to));
                if f {
                    self.names.insert(to.clone());
                }
                if t && exchange {
                    self.names.insert(from.clone());
                }
                item
            }
            Item::Remove { ref path, .. } => {
                self.names.remove(path);
                item
            }
            Item::Link { from, to, since, origin, verify: None } if self.names.contains(&from) => {
                debug!(from = %from.display(), to = %to.display(), "link source never reached the receiver; sending the new name whole");
                self.redirected = true;
                self.names.remove(&to);
                Item::Content(Content {
                    remote: to.clone(),
                    local: to,
                    what: What::Check,
                    ino: 0,
                    dev: 0,
                    since,
                    deferrals: HOLD_ROUNDS,
                    origin,
                })
            }
            other => other,
        }
    }
}

/// Flush a batch once it holds this many data bytes or ops.
const BATCH_BYTES: usize = 4 << 20;
const BATCH_OPS: usize = 4096;

pub fn attr_of(md: &Metadata) -> pb::Attr {
    pb::Attr {
        mode: md.mode() & 0o7777,
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        uid: Some(md.uid()),
        gid: Some(md.gid()),
    }
}

/// Accumulates ops into batches and hands full ones to `out`.
pub struct BatchBuilder<'a> {
    seq: &'a mut u64,
    ops: Vec<pb::Op>,
    bytes: usize,
    oldest: Option<Instant>,
    min_origin: u64,
    /// Origin of the item being sent.
    item_origin: u64,
    epoch: u64,
    out: &'a mut dyn FnMut(Outgoing),
    /// Files from this size are sent as delta jobs (none: always whole).
    delta_min_size: Option<u64>,
    /// Reconciliation's links not sent because a name no longer denotes
    /// the file: another reconciliation must look again.
    pub stale_links: usize,
}

impl<'a> BatchBuilder<'a> {
    pub fn new(seq: &'a mut u64, epoch: u64, out: &'a mut dyn FnMut(Outgoing)) -> BatchBuilder<'a> {
        BatchBuilder {
            seq,
            ops: Vec::new(),
            bytes: 0,
            oldest: None,
            min_origin: NO_ORIGIN,
            item_origin: NO_ORIGIN,
            epoch,
            out,
            delta_min_size: None,
            stale_links: 0,
        }
    }

    /// Sends reconciliation's files from `min_size` bytes as delta jobs.
    pub fn with_delta(mut self, min_size: Option<u64>) -> BatchBuilder<'a> {
        self.delta_min_size = min_size;
        self
    }

    fn push(&mut self, path: &Path, kind: Kind, since: Instant) {
        self.push_op(path, kind, since, 0)
    }

    /// `origin`: the queue origin of a tree op (remove, rename, link), which
    /// the receiver remembers so a replay does not apply it twice; 0 for
    /// everything that is idempotent anyway.
    fn push_op(&mut self, path: &Path, kind: Kind, since: Instant, origin: u64) {
        let Ok(wire) = wirepath::from_local(path) else {
            warn!("cannot name {} on the wire; skipped", path.display());
            return;
        };
        *self.seq += 1;
        // Reconciliation's ops are not in the log: nothing to guard.
        let origin = if origin == NO_ORIGIN { 0 } else { origin };
        debug!(seq = *self.seq, path = %path.display(), op = kind_name(&kind), "op");
        self.bytes += match &kind {
            Kind::Data(d) => d.chunks.iter().map(|c| c.data.len()).sum::<usize>(),
            // Literals, copy instructions, hash, attributes: all of it.
            Kind::Delta(d) => prost::Message::encoded_len(d),
            _ => 0,
        } + wire.len();
        self.oldest = Some(self.oldest.map_or(since, |o| o.min(since)));
        self.min_origin = self.min_origin.min(self.item_origin);
        self.ops.push(pb::Op { seq: *self.seq, path: wire, kind: Some(kind), origin });
        if self.bytes >= BATCH_BYTES || self.ops.len() >= BATCH_OPS {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        (self.out)(Outgoing::Batch(OutBatch {
            last_seq: *self.seq,
            oldest: self.oldest.take().unwrap_or_else(Instant::now),
            bytes: std::mem::take(&mut self.bytes) as u64,
            batch: pb::OpBatch { ops },
            min_origin: std::mem::replace(&mut self.min_origin, NO_ORIGIN),
            epoch: self.epoch,
        }));
    }

    fn wire(p: &Path) -> Vec<u8> {
        wirepath::from_local(p).unwrap_or_default()
    }

    /// Sends one item; returns the content entry back when its local object
    /// has vanished (renamed or replaced since), to be tried again.
    pub fn item(&mut self, item: Item) -> Option<Content> {
        self.item_origin = item.origin();
        match item {
            Item::Content(c) => match self.content(&c) {
                Ok(()) => None,
                Err(e) if is_vanished(&e) => Some(c),
                Err(e) => {
                    warn!("cannot read {}: {e}; it will be retried at the next reconciliation", c.local.display());
                    None
                }
            },
            Item::Remove { path, since, origin } => {
                self.push_op(&path, Kind::Remove(pb::Remove {}), since, origin);
                None
            }
            Item::Rename { from, to, exchange, since, origin } => {
                self.push_op(&from, Kind::Rename(pb::Rename { to: Self::wire(&to), exchange }), since, origin);
                None
            }
            Item::Link { from, to, since, origin, verify } => {
                if let Some(id) = verify {
                    use std::os::unix::fs::MetadataExt;
                    let is_it = |p: &Path| nofollow::lstat(p).is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == id);
                    if !is_it(&from) || !is_it(&to) {
                        // Renamed, replaced or removed since the comparison:
                        // the events on their way say what to do, and the
                        // next reconciliation looks again.
                        debug!(from = %from.display(), to = %to.display(), "no longer one file; not linked");
                        self.stale_links += 1;
                        return None;
                    }
                }
                self.push_op(&from, Kind::Link(pb::Link { to: Self::wire(&to) }), since, origin);
                None
            }
        }
    }

    fn content(&mut self, c: &Content) -> io::Result<()> {
        match &c.what {
            What::File { ranges, truncate_to, full } => {
                let ranges: Vec<(u64, u64)> = ranges.iter().collect();
                self.file(c, &ranges, *full, *truncate_to)
            }
            What::Dir => {
                let md = nofollow::lstat(&c.local)?;
                if !md.is_dir() {
                    return Err(vanished());
                }
                self.push(&c.remote, Kind::Mkdir(pb::Mkdir { attr: Some(attr_of(&md)) }), c.since);
                Ok(())
            }
            What::Symlink => self.symlink(c),
            What::Attr => {
                let md = nofollow::lstat(&c.local)?;
                if md.file_type().is_symlink() {
                    return Ok(());
                }
                if c.ino != 0 && md.ino() != c.ino {
                    return Err(vanished());
                }
                self.push(&c.remote, Kind::Setattr(pb::SetAttr { attr: Some(attr_of(&md)) }), c.since);
                Ok(())
            }
            What::Check => self.check(&c.local, &c.remote, c.since),
            What::Delta { base_len } => self.delta_or_check(c, *base_len),
            What::Tree => {
                // Listed by descriptor (openat O_NOFOLLOW from the tree's own
                // directory descriptors): a directory swapped for a symlink
                // meanwhile is sent as the symlink, never walked through.
                let fd = match nofollow::open(&c.local, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW) {
                    Ok(fd) => fd,
                    // No longer a directory (or gone): whatever it is now.
                    Err(e) if nofollow::is_race(&e) => return self.check(&c.local, &c.remote, c.since),
                    Err(e) => return Err(e),
                };
                self.check(&c.local, &c.remote, c.since)?;
                // Names of one file below the root are linked in the mirror
                // too (names elsewhere: the next reconciliation links them).
                let mut names: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
                // Depth first, each directory checked (sent) before what is
                // in it; a directory that cannot be read is skipped, not the
                // whole tree (the next reconciliation finds it again).
                let mut dirs = vec![(std::path::PathBuf::new(), fd)];
                let mut entries = Vec::new();
                while let Some((rel, dir)) = dirs.pop() {
                    let listed = match lifeline_core::tree::list_dir_fd(std::os::fd::AsFd::as_fd(&dir)) {
                        Ok(l) => l,
                        Err(err) => {
                            debug!("cannot list {}: {err}", c.local.join(&rel).display());
                            continue;
                        }
                    };
                    for mut e in listed {
                        if e.kind == lifeline_core::tree::Kind::Dir {
                            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                            match rustix::fs::openat(&dir, &e.rel, flags, rustix::fs::Mode::empty()) {
                                Ok(sub) => dirs.push((rel.join(&e.rel), sub)),
                                Err(err) => debug!("cannot open {}: {err}", c.local.join(&rel).join(&e.rel).display()),
                            }
                        }
                        e.rel = rel.join(&e.rel);
                        entries.push(e);
                    }
                }
                for e in entries {
                    let remote = c.remote.join(&e.rel);
                    if e.kind == lifeline_core::tree::Kind::File && e.nlink > 1 {
                        match names.entry((e.dev, e.ino)) {
                            Entry::Occupied(first) => {
                                let to = Self::wire(&remote);
                                self.push(first.get(), Kind::Link(pb::Link { to }), c.since);
                                continue;
                            }
                            Entry::Vacant(v) => {
                                v.insert(remote.clone());
                            }
                        }
                    }
                    self.check(&c.local.join(&e.rel), &remote, c.since)?;
                }
                Ok(())
            }
        }
    }

    /// Whatever is at `local` now, sent whole; nothing there: remove it.
    fn check(&mut self, local: &Path, remote: &Path, since: Instant) -> io::Result<()> {
        let md = match nofollow::lstat(local) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.push(remote, Kind::Remove(pb::Remove {}), since);
                return Ok(());
            }
            // Something on the way is no longer a directory (a file, a
            // symlink): the path is not in the tree by this name, and the
            // mirror's copy goes with whatever replaced that directory
            // (its own change is queued).
            Err(e) if nofollow::is_race(&e) => {
                debug!(local = %local.display(), "below a path that is no longer a directory ({e}); not sent");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let c = Content {
            remote: remote.to_path_buf(),
            local: local.to_path_buf(),
            what: What::Check,
            ino: md.ino(),
            dev: md.dev(),
            since,
            deferrals: 0,
            origin: NO_ORIGIN,
        };
        let ft = md.file_type();
        if ft.is_file() {
            self.file(&c, &[], true, None)
        } else if ft.is_dir() {
            self.push(remote, Kind::Mkdir(pb::Mkdir { attr: Some(attr_of(&md)) }), since);
            Ok(())
        } else if ft.is_symlink() {
            self.symlink(&c)
        } else {
            // FIFOs, sockets, devices are not replicated.
            self.push(remote, Kind::Remove(pb::Remove {}), since);
            Ok(())
        }
    }

    fn symlink(&mut self, c: &Content) -> io::Result<()> {
        let target = nofollow::read_link(&c.local).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                vanished()
            } else {
                e
            }
        })?;
        use std::os::unix::ffi::OsStrExt;
        self.push(&c.remote, Kind::Symlink(pb::Symlink { target: target.as_os_str().as_bytes().to_vec() }), c.since);
        Ok(())
    }

    /// The changed ranges (or all of it) of a regular file, in ops of at
    /// most `MAX_CHUNK` bytes.
    fn file(&mut self, c: &Content, ranges: &[(u64, u64)], all: bool, truncate_to: Option<u64>) -> io::Result<()> {
        let f = open_file(&c.local)?;
        let md = f.metadata()?;
        if !md.is_file() || (c.ino != 0 && md.ino() != c.ino) {
            return Err(vanished());
        }
        self.opened_file(c, &f, &md, ranges, all, truncate_to)
    }

    /// [`Self::file`] once `f` is open and `md` its metadata.
    fn opened_file(
        &mut self,
        c: &Content,
        f: &File,
        md: &Metadata,
        ranges: &[(u64, u64)],
        all: bool,
        truncate_to: Option<u64>,
    ) -> io::Result<()> {
        let size = md.len();
        let attr = attr_of(md);
        let whole = [(0, size)];
        let regrown: Vec<(u64, u64)>;
        let ranges = match truncate_to {
            _ if all => &whole[..],
            // Cut to `t` and longer again now: what lies past `t` was written
            // since, through another name of the file (an entry of its own,
            // maybe sent before this one: hard links the queue does not know
            // of) or is a hole. This op's truncation would cut it off at the
            // receiver, so it goes too (its data, not its holes: a file cut
            // and extended to a large size is mostly hole).
            Some(t) if t < size => {
                let mut set = super::ranges::RangeSet::new();
                for &(start, end) in ranges.iter().chain(&data_extents(f, t, size)) {
                    set.insert(start, end - start);
                }
                regrown = set.iter().collect();
                &regrown[..]
            }
            _ => ranges,
        };
        let mut chunks = Vec::new();
        let mut held = 0usize;
        let mut truncate_to = truncate_to;
        // The first op of a file sent whole (reconciliation: the source's
        // file at this name may not be the one the mirror's names share)
        // replaces the mirror's file if other names share it (see
        // FileData.replace). Live truncations keep writing through: the
        // source's names still share the file.
        let mut replace = all;
        // Only the last op carries the attributes (the mtime): if the stream
        // breaks between two ops of a file, the mirror's copy has its size but
        // not its mtime, so reconciliation sees it differ. (A reconciliation's
        // ops are not in the queue log, so no replay would resend the rest.)
        let mut emit = |this: &mut Self, chunks: Vec<pb::Chunk>, truncate_to: Option<u64>, last: bool| {
            let attr = last.then_some(attr);
            let data = pb::FileData { truncate_to, chunks, size, attr, replace: std::mem::take(&mut replace) };
            this.push(&c.remote, Kind::Data(data), c.since);
        };
        for &(start, end) in ranges {
            let end = end.min(size);
            let mut off = start;
            while off < end {
                let want = ((end - off) as usize).min(lifeline_proto::MAX_CHUNK - held);
                let data = read_at(f, off, want)?;
                if data.is_empty() {
                    break; // shrank meanwhile; its truncation is on its way
                }
                let n = data.len();
                chunks.push(pb::Chunk { offset: off, data });
                held += n;
                off += n as u64;
                if held >= lifeline_proto::MAX_CHUNK {
                    emit(self, std::mem::take(&mut chunks), truncate_to.take(), false);
                    held = 0;
                }
            }
        }
        // Always a last op, empty if the data ended on an op boundary: it
        // sets the size and the attributes.
        emit(self, chunks, truncate_to, true);
        Ok(())
    }
}

impl BatchBuilder<'_> {
    /// Reconciliation found the mirror's copy of a regular file different:
    /// a delta against that copy if the file is still a regular file, big
    /// enough, and the receiver signs its copy; else what [`Self::check`]
    /// sends. A file whose size is the same and mtime differs costs a
    /// signature and one copy op when its content is unchanged: this is the
    /// "content hash where needed" of reconciliation.
    ///
    /// Here the file is only opened: the ops before it go out, and the file
    /// follows as a [`DeltaJob`] for the sender, which fetches the signature.
    fn delta_or_check(&mut self, c: &Content, base_len: u64) -> io::Result<()> {
        let Some(min) = self.delta_min_size else {
            return self.check(&c.local, &c.remote, c.since);
        };
        let md = match nofollow::lstat(&c.local) {
            Ok(md) => md,
            Err(e) if nofollow::is_race(&e) => return self.check(&c.local, &c.remote, c.since),
            Err(e) => return Err(e),
        };
        // Mostly new content (the mirror's copy is small next to it): whole.
        if !md.is_file() || md.len() < min || base_len < min / 4 {
            return self.check(&c.local, &c.remote, c.since);
        }
        let f = open_file(&c.local)?;
        let md = f.metadata()?;
        if !md.is_file() {
            return self.check(&c.local, &c.remote, c.since);
        }
        // Read once, start to end: a bigger readahead.
        // SAFETY: a valid fd; the call only gives the kernel a hint.
        unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
        let whole = Content { ino: md.ino(), dev: md.dev(), ..c.clone() };
        let Ok(wire) = wirepath::from_local(&c.remote) else {
            return self.opened_file(&whole, &f, &md, &[], true, None);
        };
        // What came before goes out while the receiver hashes its copy.
        self.flush();
        let first_seq = *self.seq;
        *self.seq += delta_seq_span(md.len());
        let job = DeltaJob {
            content: whole,
            wire,
            file: f,
            md,
            first_seq,
            last_seq: *self.seq,
            min_origin: self.item_origin,
            epoch: self.epoch,
        };
        (self.out)(Outgoing::Delta(Box::new(job)));
        Ok(())
    }
}

/// The signature of the mirror's copy and the token naming that version.
pub struct BaseSignature {
    pub sig: lifeline_delta::Signature,
    pub token: Vec<u8>,
}

impl DeltaJob {
    /// The job's ops, handed to `out` in batches: a delta against `base`,
    /// or with no signature (the receiver could not sign its copy) the file
    /// whole. Reads the file (blocking). Returns whether it was a delta.
    pub fn build(
        self,
        base: Option<BaseSignature>,
        started: Instant,
        out: &mut dyn FnMut(Outgoing),
    ) -> io::Result<bool> {
        let mut seq = self.first_seq;
        let mut builder = BatchBuilder::new(&mut seq, self.epoch, out);
        let built = match base {
            Some(base) => builder.delta(&self.content, &self.file, &self.md, base, started).map(|()| true),
            None => builder.opened_file(&self.content, &self.file, &self.md, &[], true, None).map(|()| false),
        };
        builder.flush();
        drop(builder);
        debug_assert!(seq <= self.last_seq, "a delta job outgrew its sequence numbers");
        built
    }
}

impl BatchBuilder<'_> {
    /// The delta of `f` (`md`, as `c`) against the mirror's copy `base`.
    fn delta(&mut self, c: &Content, f: &File, md: &Metadata, base: BaseSignature, started: Instant) -> io::Result<()> {
        let signed = started.elapsed();
        let size = md.len();
        let attr = attr_of(md);
        let mut piece = pb::FileDelta {
            first: true,
            base_len: base.sig.base_len,
            base_token: base.token,
            max_len: size,
            ..Default::default()
        };
        let mut literal = 0usize;
        let mut covered = 0u64;
        let mut pushed = false;
        let since = c.since;
        let diffed = {
            let this = &mut *self;
            let piece = &mut piece;
            let pushed = &mut pushed;
            lifeline_delta::diff(&base.sig, io::Read::take(f, size), lifeline_proto::MAX_CHUNK, |op| {
                piece.instrs.push(pb::DeltaInstr {
                    kind: Some(match op {
                        lifeline_delta::DeltaOp::Copy { offset, len } => {
                            covered += len;
                            pb::delta_instr::Kind::Copy(pb::CopyRange { offset, len })
                        }
                        lifeline_delta::DeltaOp::Literal(data) => {
                            literal += data.len();
                            covered += data.len() as u64;
                            pb::delta_instr::Kind::Literal(data)
                        }
                    }),
                });
                // Pieces of about one chunk of literals, many copies, or a
                // good part of the file, each sent at once: the receiver
                // patches while the rest of the file is read and diffed.
                if literal >= lifeline_proto::MAX_CHUNK
                    || piece.instrs.len() >= DELTA_PIECE_INSTRS
                    || covered >= DELTA_PIECE_SPAN
                {
                    let next = pb::FileDelta::default();
                    this.push(&c.remote, Kind::Delta(std::mem::replace(piece, next)), since);
                    this.flush();
                    *pushed = true;
                    literal = 0;
                    covered = 0;
                }
                Ok(())
            })
        };
        match diffed {
            Ok(stats) => {
                piece.last = true;
                piece.new_len = stats.new_len;
                piece.new_hash = stats.new_hash.to_vec();
                piece.attr = Some(attr);
                self.push(&c.remote, Kind::Delta(piece), since);
                debug!(
                    "delta of {}: {} bytes copied, {} literal; signature of {} bytes in {:?}, diff in {:?}",
                    c.remote.display(),
                    stats.copied,
                    stats.literal,
                    base.sig.wire_size(),
                    signed,
                    started.elapsed() - signed,
                );
                Ok(())
            }
            Err(e) => {
                if pushed {
                    // The receiver drops what it built; the target stays.
                    let abort = pb::FileDelta { last: true, abort: true, ..Default::default() };
                    self.push(&c.remote, Kind::Delta(abort), since);
                }
                Err(e)
            }
        }
    }
}

/// A delta piece holds at most this many instructions (besides about
/// `MAX_CHUNK` of literals) ...
const DELTA_PIECE_INSTRS: usize = 16 << 10;
/// ... and describes about this much of the new file at most.
const DELTA_PIECE_SPAN: u64 = 64 << 20;

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Data(_) => "data",
        Kind::Mkdir(_) => "mkdir",
        Kind::Remove(_) => "remove",
        Kind::Rename(_) => "rename",
        Kind::Symlink(_) => "symlink",
        Kind::Link(_) => "link",
        Kind::Setattr(_) => "setattr",
        Kind::Delta(_) => "delta",
    }
}

fn read_at(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The parts of `[start, end)` of `f` that hold data (`SEEK_DATA` /
/// `SEEK_HOLE`); all of it where the filesystem cannot tell.
fn data_extents(f: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let seek = |off: u64, whence| {
        // SAFETY: lseek on a descriptor this function borrows; no memory involved.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as u64)
        }
    };
    let mut out = Vec::new();
    let mut off = start;
    while off < end {
        let data = match seek(off, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break, // only a hole is left
            Err(_) => return vec![(start, end)],
        };
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(end).min(end);
        out.push((data, hole));
        off = hole.max(data + 1);
    }
    out
}

/// Opens the regular file at `local` for reading, refusing a symlink
/// anywhere on the way (`ELOOP`, seen as vanished); never blocks on a FIFO.
fn open_file(local: &Path) -> io::Result<File> {
    Ok(File::from(nofollow::open(local, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK)?))
}

fn vanished() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the object changed kind or identity")
}

fn is_vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(libc::ELOOP)
        || e.raw_os_error() == Some(libc::ENOTDIR)
        || e.raw_os_error() == Some(libc::ENXIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The data ops `what` at `local` becomes.
    fn data_ops(local: &Path, what: What) -> Vec<pb::FileData> {
        let c = Content {
            remote: local.to_path_buf(),
            local: local.to_path_buf(),
            what,
            ino: 0,
            dev: 0,
            since: Instant::now(),
            deferrals: 0,
            origin: NO_ORIGIN,
        };
        let mut batches = Vec::new();
        let mut out = |o: Outgoing| match o {
            Outgoing::Batch(b) => batches.push(b),
            Outgoing::Delta(_) => unreachable!("no delta jobs without a minimum size"),
        };
        let mut seq = 0;
        let mut builder = BatchBuilder::new(&mut seq, 1, &mut out);
        assert!(builder.item(Item::Content(c)).is_none());
        builder.flush();
        drop(builder);
        batches
            .into_iter()
            .flat_map(|b| b.batch.ops)
            .map(|op| match op.kind {
                Some(Kind::Data(d)) => d,
                other => panic!("not a data op: {other:?}"),
            })
            .collect()
    }

    /// A file sent in several ops gets its attributes (mtime) with the last
    /// one only: a stream broken between them leaves the mirror's mtime
    /// different, which reconciliation notices.
    #[test]
    fn only_the_last_op_of_a_file_carries_its_mtime() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("big");
        let len = 2 * lifeline_proto::MAX_CHUNK + 12345;
        fs::write(&local, vec![7u8; len]).unwrap();
        let data = data_ops(&local, What::Check);
        assert_eq!(data.len(), 3, "one op per MiB");
        assert!(data.iter().all(|d| d.size == len as u64));
        let with_attr: Vec<bool> = data.iter().map(|d| d.attr.is_some()).collect();
        assert_eq!(with_attr, [false, false, true]);
        assert!(data[0].replace && !data[1].replace && !data[2].replace);
        let sent: usize = data.iter().flat_map(|d| &d.chunks).map(|c| c.data.len()).sum();
        assert_eq!(sent, len);
    }

    /// A file cut to 3000 bytes and written past that through another name
    /// (an entry of its own, sent before): the data past the cut goes with
    /// the truncation, the hole does not.
    #[test]
    fn a_truncation_sends_what_was_written_past_it_since() {
        let d = tempfile::tempdir().unwrap();
        let local = d.path().join("f");
        let f = File::create(&local).unwrap();
        f.write_all_at(&[1u8; 3000], 0).unwrap();
        f.write_all_at(&[2u8; 200], 3000).unwrap();
        f.write_all_at(&[3u8; 100], 50 << 20).unwrap(); // after a 50 MiB hole
        let mut ranges = super::super::ranges::RangeSet::new();
        ranges.insert(0, 10);
        let data = data_ops(&local, What::File { ranges, truncate_to: Some(3000), full: false });
        let chunks: Vec<(u64, usize)> =
            data.into_iter().flat_map(|d| d.chunks).map(|c| (c.offset, c.data.len())).collect();
        let sent: usize = chunks.iter().map(|c| c.1).sum();
        assert!(chunks.contains(&(0, 10)), "{chunks:?}");
        assert!(chunks.iter().any(|&(o, n)| o <= 3000 && o + n as u64 >= 3200), "the data past the cut: {chunks:?}");
        assert!(chunks.iter().any(|&(o, n)| o <= 50 << 20 && o + n as u64 >= (50 << 20) + 100), "{chunks:?}");
        assert!(sent < 1 << 20, "the hole is not sent: {sent} bytes");
    }
}
