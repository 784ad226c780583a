//! The queue unit's write-ahead log: every file modification message the
//! scheduler takes in is appended here before it is coalesced, and written
//! to the kernel before anything derived from it is sent (so a killed agent
//! loses nothing); a thread of the log's own makes it durable (fdatasync) in
//! groups right after, so disk latency never holds replication back. A
//! power loss can thus cost the last few milliseconds of the log; the
//! reconciliation at start covers them. A change
//! leaves the log once the receiver has acknowledged, durably, every batch
//! that carried it: the scheduler then records a *checkpoint* (the low-water
//! origin below which nothing is needed any more) and whole segments below it
//! are deleted.
//!
//! After a crash, a reboot or a reconnect, the scheduler replays the changes
//! from the checkpoint on (see `Scheduler::resume`), reading the current
//! bytes of the ranges they name.
//!
//! Layout: `<state>/queue/<first origin as 16 hex digits>.wal`, each segment
//! starting with a header (magic, the queue's id) followed by frames
//! `[u32 payload length][u32 crc32 of payload][payload]`. A torn frame at the
//! end of the last segment (a crash mid-append) is cut off when the log is
//! opened; damage anywhere else is reported so that the agent reconciles.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use lifeline_capture::{ChangeKind, FileChange};
use tracing::{info, warn};

const MAGIC: &[u8; 8] = b"LLWAL01\n";
const HEADER_LEN: u64 = 16;
/// A new segment is started past this size, so acknowledged changes can be
/// deleted a segment at a time.
const SEGMENT_BYTES: u64 = 16 << 20;
/// Largest frame accepted when reading (paths are at most 4 KiB each).
const MAX_FRAME: u32 = 64 << 10;

const TAG_CHANGE: u8 = 1;
const TAG_CHECKPOINT: u8 = 2;

/// A change read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub origin: u64,
    pub change: FileChange,
}

pub struct QueueLog {
    dir: PathBuf,
    queue_id: u64,
    /// Segments by first origin; the last one is being appended to.
    segments: Vec<(u64, PathBuf)>,
    out: BufWriter<File>,
    out_len: u64,
    syncer: Syncer,
    next_origin: u64,
    checkpoint: u64,
    /// Appended but not yet written to the kernel.
    dirty: bool,
    /// Part of the log could not be read back: changes may be missing.
    pub damaged: bool,
    /// When the previous run of the agent last wrote the log (None: a new
    /// log). Changes after that, until capture started again, were lost.
    previous_write: Option<std::time::SystemTime>,
    buf: Vec<u8>,
}

fn segment_name(first: u64) -> String {
    format!("{first:016x}.wal")
}

fn io_err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl QueueLog {
    /// Opens the log in `dir` (created if missing), cutting off a torn tail.
    pub fn open(dir: &Path) -> io::Result<QueueLog> {
        // The log holds the names of changed files: for root's eyes only.
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut segments = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else { continue };
            match u64::from_str_radix(hex, 16) {
                Ok(first) => segments.push((first, e.path())),
                Err(_) => warn!("ignoring {} in the queue directory", e.path().display()),
            }
        }
        segments.sort();
        if segments.is_empty() {
            let queue_id = rand::random::<u64>() | 1;
            let path = dir.join(segment_name(1));
            let out = create_segment(&path, queue_id)?;
            sync_dir(dir)?;
            info!(queue = %format!("{queue_id:016x}"), "new queue log in {}", dir.display());
            return Ok(QueueLog {
                dir: dir.to_path_buf(),
                queue_id,
                segments: vec![(1, path)],
                syncer: Syncer::start(&out)?,
                out: BufWriter::with_capacity(256 << 10, out),
                out_len: HEADER_LEN,
                next_origin: 1,
                checkpoint: 1,
                dirty: false,
                damaged: false,
                previous_write: None,
                buf: Vec::new(),
            });
        }
        let mut queue_id = None;
        let mut next_origin = segments[0].0;
        let mut checkpoint = segments[0].0;
        let mut damaged = false;
        let mut last_len = 0;
        let n = segments.len();
        for (i, (first, path)) in segments.iter().enumerate() {
            next_origin = next_origin.max(*first);
            let scan = scan_segment(path, |rec| match rec {
                Record::Change(l) => next_origin = next_origin.max(l.origin + 1),
                Record::Checkpoint(c) => checkpoint = checkpoint.max(c),
            })?;
            match queue_id {
                None => queue_id = Some(scan.queue_id),
                Some(q) if q != scan.queue_id => {
                    return Err(io_err(format!(
                        "queue segment {} belongs to another queue; move the queue directory {} away to start afresh",
                        path.display(),
                        dir.display()
                    )))
                }
                _ => {}
            }
            if let Some(bad) = scan.bad {
                if i + 1 == n {
                    warn!("queue log {}: cutting off a torn tail at byte {} ({bad})", path.display(), scan.good_len);
                    OpenOptions::new().write(true).open(path)?.set_len(scan.good_len)?;
                } else {
                    warn!(
                        "queue log {}: damaged at byte {} ({bad}); changes may be missing, a reconciliation follows",
                        path.display(),
                        scan.good_len
                    );
                    damaged = true;
                }
            }
            last_len = scan.good_len;
        }
        let last = &segments[n - 1].1;
        let previous_write = fs::metadata(last).and_then(|m| m.modified()).ok();
        let out = OpenOptions::new().append(true).open(last)?;
        let queue_id = queue_id.expect("at least one segment");
        info!(
            queue = %format!("{queue_id:016x}"),
            unacknowledged = next_origin.saturating_sub(checkpoint),
            "queue log opened"
        );
        Ok(QueueLog {
            dir: dir.to_path_buf(),
            queue_id,
            segments,
            syncer: Syncer::start(&out)?,
            out: BufWriter::with_capacity(256 << 10, out),
            out_len: last_len,
            next_origin,
            checkpoint,
            dirty: false,
            damaged,
            previous_write,
            buf: Vec::new(),
        })
    }

    /// Identifies this log: the receiver remembers how far it got per queue,
    /// and a queue started afresh must not inherit that.
    pub fn queue_id(&self) -> u64 {
        self.queue_id
    }

    pub fn previous_write(&self) -> Option<std::time::SystemTime> {
        self.previous_write
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The origin the next change will get.
    pub fn next_origin(&self) -> u64 {
        self.next_origin
    }

    /// Changes below this origin are acknowledged.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Appends a change (buffered) and returns its origin.
    pub fn append(&mut self, ch: &FileChange) -> io::Result<u64> {
        let origin = self.next_origin;
        self.buf.clear();
        self.buf.push(TAG_CHANGE);
        encode_change(&mut self.buf, origin, ch);
        self.write_frame()?;
        self.next_origin += 1;
        Ok(origin)
    }

    fn write_frame(&mut self) -> io::Result<()> {
        let crc = crc32fast::hash(&self.buf);
        self.out.write_all(&(self.buf.len() as u32).to_le_bytes())?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&self.buf)?;
        self.out_len += 8 + self.buf.len() as u64;
        self.dirty = true;
        Ok(())
    }

    /// Whether appended changes still wait for [`QueueLog::commit`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Writes everything appended so far to the kernel (it survives the agent
    /// being killed) and has the log's thread make it durable.
    pub fn commit(&mut self) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.out.flush()?;
        self.dirty = false;
        self.syncer.request();
        Ok(())
    }

    /// Makes everything appended so far durable before returning.
    pub fn commit_durably(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.dirty = false;
        self.out.get_ref().sync_data()
    }

    /// Records that changes below `low_water` are acknowledged, makes it
    /// durable, and deletes segments holding nothing else. Rolls over to a
    /// new segment when the current one is big.
    pub fn set_checkpoint(&mut self, low_water: u64) -> io::Result<()> {
        let low_water = low_water.min(self.next_origin);
        let advanced = low_water > self.checkpoint;
        if advanced {
            self.checkpoint = low_water;
        }
        let roll = self.out_len >= SEGMENT_BYTES;
        if roll {
            self.commit_durably()?;
            let first = self.next_origin;
            let path = self.dir.join(segment_name(first));
            let file = create_segment(&path, self.queue_id)?;
            sync_dir(&self.dir)?;
            self.syncer = Syncer::start(&file)?;
            self.out = BufWriter::with_capacity(256 << 10, file);
            self.out_len = HEADER_LEN;
            self.segments.push((first, path));
        }
        // A new segment always starts with the checkpoint, so it survives the
        // deletion of the older ones.
        if advanced || roll {
            self.buf.clear();
            self.buf.push(TAG_CHECKPOINT);
            self.buf.extend_from_slice(&self.checkpoint.to_le_bytes());
            self.write_frame()?;
        }
        self.commit()?;
        // A segment can go once the next one starts at or below the
        // checkpoint: all it holds is older.
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[1].0 <= self.checkpoint {
            let (_, path) = self.segments.remove(0);
            fs::remove_file(&path)?;
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Calls `f` for every logged change at or after the checkpoint, in
    /// order (what a replay must send again).
    pub fn replay(&mut self, mut f: impl FnMut(Logged)) -> io::Result<()> {
        self.out.flush()?;
        let from = self.checkpoint;
        for (i, (_, path)) in self.segments.iter().enumerate() {
            // Segments entirely below the checkpoint hold nothing to replay.
            if self.segments.get(i + 1).is_some_and(|(next, _)| *next <= from) {
                continue;
            }
            scan_segment(path, |rec| {
                if let Record::Change(l) = rec {
                    if l.origin >= from {
                        f(l)
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Drops everything logged so far (the log outgrew its limit while the
    /// receiver was away): a new segment starts, with the checkpoint at the
    /// next origin. What was dropped is left to reconciliation.
    pub fn discard(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.dirty = false;
        let first = self.next_origin;
        // The current segment stays if no change was appended since it began.
        if self.segments.last().is_none_or(|(f, _)| *f != first) {
            let path = self.dir.join(segment_name(first));
            let file = create_segment(&path, self.queue_id)?;
            self.syncer = Syncer::start(&file)?;
            self.out = BufWriter::with_capacity(256 << 10, file);
            self.out_len = HEADER_LEN;
            self.segments.push((first, path));
        }
        let keep = self.segments.pop().expect("the current segment");
        for (_, old) in std::mem::replace(&mut self.segments, vec![keep]) {
            fs::remove_file(&old)?;
        }
        self.checkpoint = first;
        self.buf.clear();
        self.buf.push(TAG_CHECKPOINT);
        self.buf.extend_from_slice(&first.to_le_bytes());
        self.write_frame()?;
        self.commit_durably()?;
        sync_dir(&self.dir)
    }

    /// Bytes the log takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        let older: u64 = self.segments[..self.segments.len() - 1]
            .iter()
            .filter_map(|(_, p)| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        older + self.out_len
    }
}

/// The log's own thread, which fdatasyncs the segment being appended to
/// whenever asked (requests made while it syncs are served by one more).
struct Syncer {
    tx: crossbeam_channel::Sender<()>,
}

impl Syncer {
    fn start(file: &File) -> io::Result<Syncer> {
        let file = file.try_clone()?;
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        std::thread::Builder::new().name("queue-sync".into()).spawn(move || {
            // Ends when the QueueLog moves to another segment or goes away.
            while rx.recv().is_ok() {
                if let Err(e) = file.sync_data() {
                    tracing::error!("cannot make the queue log durable: {e}");
                }
            }
        })?;
        Ok(Syncer { tx })
    }

    fn request(&self) {
        // Full: a sync is already due and covers this write too.
        let _ = self.tx.try_send(());
    }
}

fn create_segment(path: &Path, queue_id: u64) -> io::Result<File> {
    let mut f = OpenOptions::new().create_new(true).append(true).mode(0o600).open(path)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&queue_id.to_le_bytes());
    f.write_all(&header)?;
    f.sync_all()?;
    Ok(f)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

enum Record {
    Change(Logged),
    Checkpoint(u64),
}

struct Scan {
    queue_id: u64,
    /// Bytes up to the end of the last good frame.
    good_len: u64,
    /// Why reading stopped early.
    bad: Option<String>,
}

fn scan_segment(path: &Path, mut f: impl FnMut(Record)) -> io::Result<Scan> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC {
        return Err(io_err(format!("{} is not a Lifeline queue segment (bad header); move it away", path.display())));
    }
    let queue_id = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let mut pos = HEADER_LEN as usize;
    let mut bad = None;
    while pos < data.len() {
        let Some(head) = data.get(pos..pos + 8) else {
            bad = Some("truncated frame header".to_string());
            break;
        };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_FRAME {
            bad = Some(format!("impossible frame length {len}"));
            break;
        }
        let Some(payload) = data.get(pos + 8..pos + 8 + len as usize) else {
            bad = Some("truncated frame".to_string());
            break;
        };
        if crc32fast::hash(payload) != crc {
            bad = Some("checksum mismatch".to_string());
            break;
        }
        match decode(payload) {
            Some(rec) => f(rec),
            None => {
                bad = Some("undecodable record".to_string());
                break;
            }
        }
        pos += 8 + len as usize;
    }
    Ok(Scan { queue_id, good_len: pos as u64, bad })
}

// ---- record encoding ------------------------------------------------------

const K_WRITE: u8 = 1;
const K_TRUNCATE: u8 = 2;
const K_OPEN: u8 = 3;
const K_MKDIR: u8 = 4;
const K_UNLINK: u8 = 5;
const K_RMDIR: u8 = 6;
const K_RENAME: u8 = 7;
const K_LINK: u8 = 8;
const K_SYMLINK: u8 = 9;
const K_ATTR: u8 = 10;
const K_MMAP: u8 = 11;

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    b.extend_from_slice(&(v.len() as u32).to_le_bytes());
    b.extend_from_slice(v);
}

fn encode_change(b: &mut Vec<u8>, origin: u64, ch: &FileChange) {
    put_u64(b, origin);
    put_u64(b, ch.dev);
    put_u64(b, ch.ino);
    put_bytes(b, ch.path.as_os_str().as_bytes());
    match &ch.kind {
        ChangeKind::Write { offset, len } => {
            b.push(K_WRITE);
            put_u64(b, *offset);
            put_u64(b, *len);
        }
        ChangeKind::Truncate { len } => {
            b.push(K_TRUNCATE);
            put_u64(b, *len);
        }
        ChangeKind::Open { created, truncated } => {
            b.push(K_OPEN);
            b.push(*created as u8 | (*truncated as u8) << 1);
        }
        ChangeKind::Mkdir => b.push(K_MKDIR),
        ChangeKind::Unlink => b.push(K_UNLINK),
        ChangeKind::Rmdir => b.push(K_RMDIR),
        ChangeKind::Rename { to, exchange } => {
            b.push(K_RENAME);
            put_bytes(b, to.as_os_str().as_bytes());
            b.push(*exchange as u8);
        }
        ChangeKind::Link { to } => {
            b.push(K_LINK);
            put_bytes(b, to.as_os_str().as_bytes());
        }
        ChangeKind::Symlink { target } => {
            b.push(K_SYMLINK);
            put_bytes(b, target);
        }
        ChangeKind::Attr => b.push(K_ATTR),
        ChangeKind::MmapShared => b.push(K_MMAP),
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(v)
    }

    fn u64(&mut self) -> Option<u64> {
        let v = self.0.get(..8)?;
        self.0 = &self.0[8..];
        Some(u64::from_le_bytes(v.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let v = self.0.get(4..4 + len)?.to_vec();
        self.0 = &self.0[4 + len..];
        Some(v)
    }

    fn path(&mut self) -> Option<PathBuf> {
        Some(PathBuf::from(std::ffi::OsString::from_vec(self.bytes()?)))
    }
}

fn decode(payload: &[u8]) -> Option<Record> {
    let mut c = Cursor(payload);
    let rec = match c.u8()? {
        TAG_CHECKPOINT => Record::Checkpoint(c.u64()?),
        TAG_CHANGE => {
            let origin = c.u64()?;
            let dev = c.u64()?;
            let ino = c.u64()?;
            let path = c.path()?;
            let kind = match c.u8()? {
                K_WRITE => ChangeKind::Write { offset: c.u64()?, len: c.u64()? },
                K_TRUNCATE => ChangeKind::Truncate { len: c.u64()? },
                K_OPEN => {
                    let f = c.u8()?;
                    ChangeKind::Open { created: f & 1 != 0, truncated: f & 2 != 0 }
                }
                K_MKDIR => ChangeKind::Mkdir,
                K_UNLINK => ChangeKind::Unlink,
                K_RMDIR => ChangeKind::Rmdir,
                K_RENAME => ChangeKind::Rename { to: c.path()?, exchange: c.u8()? != 0 },
                K_LINK => ChangeKind::Link { to: c.path()? },
                K_SYMLINK => ChangeKind::Symlink { target: c.bytes()? },
                K_ATTR => ChangeKind::Attr,
                K_MMAP => ChangeKind::MmapShared,
                _ => return None,
            };
            Record::Change(Logged { origin, change: FileChange { seq: 0, ktime_ns: 0, tgid: 0, path, kind, dev, ino } })
        }
        _ => return None,
    };
    c.0.is_empty().then_some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log names every changed file: readable by its owner only
    /// (issue 14, finding 7: it was 0644).
    #[test]
    fn the_log_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("queue");
        let _log = QueueLog::open(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let segments: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(!segments.is_empty());
        for s in segments {
            assert_eq!(mode(&s), 0o600, "{}", s.display());
        }
    }

    fn change(path: &str, kind: ChangeKind) -> FileChange {
        FileChange { seq: 0, ktime_ns: 0, tgid: 0, path: path.into(), kind, dev: 7, ino: 42 }
    }

    fn all_kinds() -> Vec<FileChange> {
        vec![
            change("/w/a", ChangeKind::Write { offset: 5, len: 4096 }),
            change("/w/a", ChangeKind::Truncate { len: 3 }),
            change("/w/b", ChangeKind::Open { created: true, truncated: false }),
            change("/w/d", ChangeKind::Mkdir),
            change("/w/b", ChangeKind::Unlink),
            change("/w/d", ChangeKind::Rmdir),
            change("/w/a", ChangeKind::Rename { to: "/w/c".into(), exchange: true }),
            change("/w/c", ChangeKind::Link { to: "/w/e".into() }),
            change("/w/s", ChangeKind::Symlink { target: b"../x\xff".to_vec() }),
            change("/w/c", ChangeKind::Attr),
            change("/w/é", ChangeKind::MmapShared),
        ]
    }

    fn replayed(w: &mut QueueLog) -> Vec<Logged> {
        let mut v = Vec::new();
        w.replay(|l| v.push(l)).unwrap();
        v
    }

    #[test]
    fn changes_survive_reopening_and_checkpoints_drop_them() {
        let d = tempfile::tempdir().unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        let id = w.queue_id();
        for ch in all_kinds() {
            w.append(&ch).unwrap();
        }
        w.commit().unwrap();
        drop(w);
        let mut w = QueueLog::open(d.path()).unwrap();
        assert_eq!(w.queue_id(), id);
        let got = replayed(&mut w);
        assert_eq!(got.iter().map(|l| l.change.clone()).collect::<Vec<_>>(), all_kinds());
        assert_eq!(got.iter().map(|l| l.origin).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
        w.set_checkpoint(5).unwrap();
        drop(w);
        let mut w = QueueLog::open(d.path()).unwrap();
        assert_eq!(w.checkpoint(), 5);
        assert_eq!(w.next_origin(), 12);
        assert_eq!(replayed(&mut w).first().unwrap().origin, 5);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        w.append(&change("/w/a", ChangeKind::Mkdir)).unwrap();
        w.append(&change("/w/b", ChangeKind::Mkdir)).unwrap();
        w.commit().unwrap();
        drop(w);
        let seg = d.path().join(segment_name(1));
        let len = fs::metadata(&seg).unwrap().len();
        // A crash in the middle of the second frame.
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        assert!(!w.damaged);
        assert_eq!(replayed(&mut w).len(), 1);
        assert_eq!(w.next_origin(), 2);
        w.append(&change("/w/c", ChangeKind::Mkdir)).unwrap();
        w.commit().unwrap();
        drop(w);
        let mut w = QueueLog::open(d.path()).unwrap();
        let paths: Vec<_> = replayed(&mut w).into_iter().map(|l| l.change.path).collect();
        assert_eq!(paths, [PathBuf::from("/w/a"), PathBuf::from("/w/c")]);
    }

    #[test]
    fn flipped_bits_are_detected() {
        let d = tempfile::tempdir().unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        w.append(&change("/w/a", ChangeKind::Mkdir)).unwrap();
        w.commit().unwrap();
        drop(w);
        let seg = d.path().join(segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0x40;
        fs::write(&seg, bytes).unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        assert!(replayed(&mut w).is_empty(), "a corrupt frame must not be replayed");
    }

    #[test]
    fn discarding_keeps_numbering_and_drops_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        for _ in 0..10 {
            w.append(&change("/w/a", ChangeKind::Attr)).unwrap();
        }
        w.discard().unwrap();
        assert!(replayed(&mut w).is_empty());
        let o = w.append(&change("/w/b", ChangeKind::Attr)).unwrap();
        assert_eq!(o, 11);
        w.commit().unwrap();
        drop(w);
        let mut w = QueueLog::open(d.path()).unwrap();
        let got = replayed(&mut w);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].origin, 11);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let d = tempfile::tempdir().unwrap();
        let mut w = QueueLog::open(d.path()).unwrap();
        let long = "/w/".to_string() + &"x".repeat(4000);
        let mut last = 0;
        while w.segments.len() < 3 {
            for _ in 0..1000 {
                last = w.append(&change(&long, ChangeKind::Attr)).unwrap();
            }
            // Nothing acknowledged yet: rolls over, deletes nothing.
            w.set_checkpoint(2).unwrap();
        }
        assert!(w.disk_bytes() > 2 * SEGMENT_BYTES);
        w.set_checkpoint(last + 1).unwrap();
        assert_eq!(w.segments.len(), 1);
        assert!(replayed(&mut w).is_empty());
        drop(w);
        let w = QueueLog::open(d.path()).unwrap();
        assert_eq!(w.next_origin(), last + 1);
        assert_eq!(w.checkpoint(), last + 1);
        let files = fs::read_dir(d.path()).unwrap().count();
        assert_eq!(files, 1);
    }
}
