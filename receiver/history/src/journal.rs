//! A machine's journal: append-only segment files of [`Record`]s.
//!
//! A segment is `<first record's time, 16 hex digits>.seg`: an 8-byte
//! header, then frames `[len u32][crc32 u32][flags u8][body]` (little
//! endian; the CRC covers flags and body; flag 1: the body is
//! zstd-compressed). A segment is closed at [`SEGMENT_BYTES`] or when the
//! receiver's clock enters a new hour ([`SEGMENT_SPAN_NS`]: retention
//! works on closed segments, so even a quiet machine's get closed), and
//! is never appended to again; only the newest is appended to. Retention
//! rewrites a closed segment whole, as `<time>.t<tier>.seg` (the tier it
//! was thinned to), under the name it had.
//!
//! **Durability.** Each record reaches the page cache before the applier
//! changes the mirror (copied into a shared mapping of the segment, see
//! `tail.rs`, or one `write(2)` for a large one), so a receiver
//! killed at any point has the record of every change the mirror shows;
//! [`JournalWriter::sync`] (with the batch, before its acknowledgement)
//! makes them durable. A frame cut short by a crash (a torn tail), and the
//! zeros the mapping is laid over, can only end the newest segment: on
//! opening, the writer cuts it back to its last whole frame, and readers
//! stop there. A segment is cut to its last frame before the next one is
//! made, so a closed segment never has such a tail.
//!
//! **Append-only for machines.** Nothing a machine sends rewrites or
//! removes a record; only retention (the receiver's own task and the
//! operator's `history prune`, see [`crate::retention`]) rewrites closed
//! segments, under the history's lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;

use crate::clock::Clock;
use crate::record::{Change, Record};
use crate::tail::{Tail, WINDOW};

const HEADER: &[u8; 8] = b"LLHIST1\n";
const FRAME_HEAD: usize = 9;
/// A segment is closed past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// A segment is closed when the clock enters a new span of this length.
/// An hour: retention's tiers (one point a minute, an hour) divide it, so
/// no bucket of theirs spans two segments.
pub const SEGMENT_SPAN_NS: i64 = 3600 * 1_000_000_000;
/// Bodies above this size are compressed if that makes them smaller.
const COMPRESS_ABOVE: usize = 256;
/// Largest frame body read back (a record keeps at most one batch's bytes).
const MAX_BODY: usize = 256 << 20;
const ZSTD: u8 = 1;

/// A segment file: its path, the time it was opened at (no record in it is
/// older, none in the segments before it newer) and the retention tier it
/// was thinned to (0: as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub first_ns: i64,
    pub tier: u32,
}

/// The segments in `dir`, oldest first. Of two files for one segment (a
/// retention pass that died between writing the thinned one and removing
/// the other), the thinned one counts: it was complete before it got its
/// name.
fn segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut out: Vec<Segment> = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
        let (time, tier) = match stem.split_once(".t") {
            Some((time, tier)) => match tier.parse() {
                Ok(tier) => (time, tier),
                Err(_) => continue,
            },
            None => (stem, 0),
        };
        let Ok(first) = u64::from_str_radix(time, 16) else { continue };
        out.push(Segment { path: entry.path(), first_ns: first as i64, tier });
    }
    out.sort_by_key(|s| (s.first_ns, std::cmp::Reverse(s.tier)));
    out.dedup_by_key(|s| s.first_ns);
    Ok(out)
}

fn segment_name(first_ns: i64, tier: u32) -> String {
    match tier {
        0 => format!("{:016x}.seg", first_ns.max(0) as u64),
        t => format!("{:016x}.t{t}.seg", first_ns.max(0) as u64),
    }
}

/// Reads the frames of one segment: the records, and where the last whole
/// frame ends. A frame cut short or failing its CRC ends the reading
/// (`torn` says so); the caller decides whether that may only be a tail.
pub(crate) fn read_segment(path: &Path) -> io::Result<(Vec<Record>, u64, bool)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.len() < HEADER.len() || &bytes[..HEADER.len()] != HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a history segment (bad header)", path.display()),
        ));
    }
    let mut at = HEADER.len();
    let mut records = Vec::new();
    loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            return Ok((records, at as u64, false));
        }
        if rest.len() < FRAME_HEAD {
            return Ok((records, at as u64, true));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_BODY || rest.len() < FRAME_HEAD + len || crc32fast::hash(&rest[8..FRAME_HEAD + len]) != crc {
            return Ok((records, at as u64, true));
        }
        let flags = rest[8];
        let body = &rest[FRAME_HEAD..FRAME_HEAD + len];
        let body = if flags & ZSTD != 0 {
            zstd::bulk::decompress(body, MAX_BODY).map_err(|e| bad(path, at, &e.to_string()))?
        } else {
            body.to_vec()
        };
        records.push(Record::decode(body.as_slice()).map_err(|e| bad(path, at, &e.to_string()))?);
        at += FRAME_HEAD + len;
    }
}

fn bad(path: &Path, at: usize, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} at byte {at}: a damaged record: {why}", path.display()))
}

/// A machine's journal, for reading.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(dir: &Path) -> Journal {
        Journal { dir: dir.to_path_buf() }
    }

    pub fn segments(&self) -> io::Result<Vec<Segment>> {
        segments(&self.dir)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The instant before which retention dropped records: the tree as of
    /// an earlier instant cannot be told any more. `None`: nothing dropped.
    pub fn horizon(&self) -> io::Result<Option<i64>> {
        match fs::read_to_string(horizon_file(&self.dir)) {
            Ok(s) => s.trim().parse().map(Some).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{} is damaged", horizon_file(&self.dir).display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves the horizon to `ns` (never back), durably, before the records
    /// older than it are dropped.
    pub(crate) fn set_horizon(&self, ns: i64) -> io::Result<()> {
        if self.horizon()?.is_some_and(|h| h >= ns) {
            return Ok(());
        }
        let tmp = self.dir.join(".horizon.tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        writeln!(f, "{ns}")?;
        f.sync_all()?;
        fs::rename(&tmp, horizon_file(&self.dir))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Every record stamped after `after_ns`, oldest first. Segments wholly
    /// older are not read. A damaged frame is an error, except at the end
    /// of the newest segment (a write a crash cut short).
    pub fn records_after(&self, after_ns: i64) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        self.for_each_after(after_ns, |r| out.push(r))?;
        Ok(out)
    }

    /// [`Journal::records_after`], handing each record to `f` instead of
    /// keeping them: a reader that keeps little of each (a listing) holds
    /// one segment's records at a time, never the whole journal.
    pub fn for_each_after(&self, after_ns: i64, mut f: impl FnMut(Record)) -> io::Result<()> {
        let segs = self.segments()?;
        for (i, seg) in segs.iter().enumerate() {
            // The next segment starts no later than this one's last record.
            if segs.get(i + 1).is_some_and(|next| next.first_ns <= after_ns) {
                continue;
            }
            let (records, end, torn) = read_segment(&seg.path)?;
            if torn && i + 1 < segs.len() {
                return Err(bad(&seg.path, end as usize, "a closed segment ends in a damaged frame"));
            }
            records.into_iter().filter(|r| r.time_ns > after_ns).for_each(&mut f);
        }
        Ok(())
    }
}

/// A machine's journal, for appending (one writer per machine: the
/// machine's applier).
pub struct JournalWriter {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    file: File,
    /// When the current segment was opened.
    opened_ns: i64,
    /// Where the last frame ends.
    size: u64,
    /// The segment file's length: zeros from `size` on.
    len: u64,
    /// The mapped window the next frames are copied to (none: not mapped
    /// yet, or a large frame was written past it).
    tail: Option<Tail>,
    last_ns: i64,
    /// A segment was created since the last sync: the directory needs one.
    dir_dirty: bool,
    file_dirty: bool,
}

impl JournalWriter {
    /// Opens the journal in `dir` (made, 0700, if missing), cutting a torn
    /// tail off its newest segment.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> io::Result<JournalWriter> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let segs = segments(dir)?;
        if let Some(last) = segs.last() {
            let (records, end, torn) = read_segment(&last.path)?;
            let file = OpenOptions::new().read(true).write(true).open(&last.path)?;
            if torn {
                // Only the frame being written when the receiver died (its
                // change never reached the mirror: the record goes first,
                // or its batch was never acknowledged and comes again),
                // and the zeros the mapped window lay over.
                file.set_len(end)?;
                file.sync_data()?;
            }
            let last_ns = records.last().map_or(last.first_ns, |r| r.time_ns);
            return Ok(JournalWriter {
                dir: dir.to_path_buf(),
                clock,
                file,
                opened_ns: last.first_ns,
                size: end,
                len: end,
                tail: None,
                last_ns,
                dir_dirty: false,
                file_dirty: false,
            });
        }
        let now = clock.now_ns();
        let file = new_segment(dir, now)?;
        Ok(JournalWriter {
            dir: dir.to_path_buf(),
            clock,
            file,
            opened_ns: now,
            size: HEADER.len() as u64,
            len: HEADER.len() as u64,
            tail: None,
            last_ns: now,
            dir_dirty: true,
            file_dirty: true,
        })
    }

    /// Appends what a change at `path` (op `seq`) replaces, stamped now (never
    /// before the previous record), and hands it to the kernel; answers the
    /// stamp. Call before changing the mirror.
    pub fn append(&mut self, seq: u64, path: &[u8], change: Change) -> io::Result<i64> {
        let time_ns = self.clock.now_ns().max(self.last_ns);
        let record = Record { time_ns, seq, path: path.to_vec(), change: Some(change) };
        let frame = frame(&record);
        if self.size >= SEGMENT_BYTES
            || time_ns.div_euclid(SEGMENT_SPAN_NS) != self.opened_ns.div_euclid(SEGMENT_SPAN_NS)
        {
            // Cut to its last frame and durable before the next segment
            // exists: only the newest may end in zeros or a torn frame.
            self.tail = None;
            self.file.set_len(self.size)?;
            self.file.sync_data()?;
            self.file = new_segment(&self.dir, time_ns)?;
            self.opened_ns = time_ns;
            self.size = HEADER.len() as u64;
            self.len = self.size;
            self.dir_dirty = true;
        }
        self.put(&frame)?;
        self.last_ns = time_ns;
        self.file_dirty = true;
        Ok(time_ns)
    }

    /// Puts `frame` after the last one, in the page cache when it returns.
    fn put(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = frame.len();
        if !self.tail.as_ref().is_some_and(|t| t.holds(self.size, n)) {
            self.tail = None;
            if n > WINDOW / 2 {
                // A large record (the old bytes of a large overwrite): one
                // write(2) costs little beside it, and a window of its own
                // would be mostly zeros.
                self.file.write_all_at(frame, self.size)?;
                self.size += n as u64;
                self.len = self.len.max(self.size);
                return Ok(());
            }
            let (tail, len) = Tail::map(&self.file, self.size, self.len)?;
            self.tail = Some(tail);
            self.len = len;
        }
        self.tail.as_mut().expect("mapped above").put(self.size, frame);
        self.size += n as u64;
        Ok(())
    }

    /// The device of the filesystem the journal is on.
    pub fn device(&self) -> io::Result<u64> {
        Ok(rustix::fs::fstat(&self.file)?.st_dev)
    }

    /// Tells the writer that the caller's `syncfs` of the journal's
    /// filesystem ([`JournalWriter::device`]), begun after the last append,
    /// succeeded: every record is durable, [`JournalWriter::sync`] has
    /// nothing left to do.
    pub fn synced_with_filesystem(&mut self) {
        self.file_dirty = false;
        self.dir_dirty = false;
    }

    /// Makes every appended record durable (with the batch, before its
    /// acknowledgement).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.file_dirty {
            self.file.sync_data()?;
            self.file_dirty = false;
        }
        if self.dir_dirty {
            File::open(&self.dir)?.sync_all()?;
            self.dir_dirty = false;
        }
        Ok(())
    }
}

impl Drop for JournalWriter {
    /// Leaves the segment without the zeros past its last frame (readers
    /// would stop at them anyway; a killed writer's are cut on opening).
    fn drop(&mut self) {
        self.tail = None;
        if self.len > self.size {
            let _ = self.file.set_len(self.size);
        }
    }
}

/// `record` as a frame.
fn frame(record: &Record) -> Vec<u8> {
    let body = record.encode_to_vec();
    let (flags, body) = match body.len() > COMPRESS_ABOVE {
        true => match zstd::bulk::compress(&body, 1) {
            Ok(z) if z.len() < body.len() => (ZSTD, z),
            _ => (0, body),
        },
        false => (0, body),
    };
    let mut frame = Vec::with_capacity(FRAME_HEAD + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[flags]);
    crc.update(&body);
    frame.extend_from_slice(&crc.finalize().to_le_bytes());
    frame.push(flags);
    frame.extend_from_slice(&body);
    frame
}

/// Replaces the closed segment `seg` of the journal in `dir` by `records`,
/// thinned to `tier`: written whole and synced under its new name, then
/// the old file removed (a crash between the two leaves both, and readers
/// take the thinned one). No records: the segment is removed.
pub(crate) fn rewrite_segment(dir: &Path, seg: &Segment, records: &[Record], tier: u32) -> io::Result<()> {
    if !records.is_empty() {
        let name = segment_name(seg.first_ns, tier);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        let mut bytes = HEADER.to_vec();
        for r in records {
            bytes.extend_from_slice(&frame(r));
        }
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(&name))?;
        File::open(dir)?.sync_all()?;
        if dir.join(&name) == seg.path {
            return Ok(());
        }
    }
    fs::remove_file(&seg.path)?;
    File::open(dir)?.sync_all()
}

/// The file keeping the journal's horizon.
fn horizon_file(dir: &Path) -> PathBuf {
    dir.join("horizon")
}

fn new_segment(dir: &Path, first_ns: i64) -> io::Result<File> {
    // Read too: a shared writable mapping needs it.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(segment_name(first_ns, 0)))?;
    file.write_all(HEADER)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::record::{Created, OldRange, Overwritten, Renamed};

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::at(1_000_000_000))
    }

    #[test]
    fn records_come_back_in_order_after_an_instant() {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let mut w = JournalWriter::open(dir.path(), c.clone()).unwrap();
        let big = vec![7u8; 100_000];
        for i in 0..10u64 {
            let change = match i % 3 {
                0 => Change::Created(Created {}),
                1 => Change::Renamed(Renamed { to: format!("/b{i}").into_bytes() }),
                _ => Change::Overwritten(Overwritten {
                    old_size: 5,
                    ranges: vec![OldRange { offset: 0, data: big.clone() }],
                    attr: None,
                    shared: None,
                }),
            };
            w.append(i + 1, format!("/a{i}").as_bytes(), change).unwrap();
            c.advance(10);
        }
        w.sync().unwrap();
        // Stopped, so the file ends at its last frame (no mapped zeros).
        drop(w);
        let j = Journal::open(dir.path());
        let all = j.records_after(i64::MIN).unwrap();
        assert_eq!(all.len(), 10);
        assert!(all.windows(2).all(|p| p[0].time_ns < p[1].time_ns));
        assert_eq!(all[2].kept_bytes(), 100_000, "a compressed record reads back whole");
        let seg_len = fs::metadata(&j.segments().unwrap()[0].path).unwrap().len();
        assert!(seg_len < 10_000, "old bytes are compressed: {seg_len} bytes");
        let later = j.records_after(all[4].time_ns).unwrap();
        assert_eq!(later, all[5..].to_vec());
    }

    #[test]
    fn a_clock_going_back_does_not_reorder_records() {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let mut w = JournalWriter::open(dir.path(), c.clone()).unwrap();
        let t1 = w.append(1, b"/a", Change::Created(Created {})).unwrap();
        c.set(5);
        let t2 = w.append(2, b"/b", Change::Created(Created {})).unwrap();
        assert!(t2 >= t1);
    }

    #[test]
    fn a_torn_tail_is_cut_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let mut w = JournalWriter::open(dir.path(), c.clone()).unwrap();
        for i in 0..3u64 {
            w.append(i, b"/f", Change::Created(Created {})).unwrap();
        }
        w.sync().unwrap();
        drop(w);
        let seg = Journal::open(dir.path()).segments().unwrap()[0].path.clone();
        let whole = fs::metadata(&seg).unwrap().len();
        // A crash in the middle of the fourth frame.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        assert_eq!(Journal::open(dir.path()).records_after(i64::MIN).unwrap().len(), 3, "readers stop at the tear");
        let mut w = JournalWriter::open(dir.path(), c.clone()).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), whole, "the writer cut the tear off");
        w.append(9, b"/g", Change::Created(Created {})).unwrap();
        let all = Journal::open(dir.path()).records_after(i64::MIN).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2, 9]);
    }

    #[test]
    fn damage_inside_a_closed_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let mut w = JournalWriter::open(dir.path(), c.clone()).unwrap();
        w.append(1, b"/a", Change::Created(Created {})).unwrap();
        // Force a second segment: the clock enters a new hour.
        c.advance(SEGMENT_SPAN_NS);
        w.append(2, b"/b", Change::Created(Created {})).unwrap();
        drop(w);
        let segs = Journal::open(dir.path()).segments().unwrap();
        assert_eq!(segs.len(), 2);
        let mut bytes = fs::read(&segs[0].path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        fs::write(&segs[0].path, bytes).unwrap();
        let e = Journal::open(dir.path()).records_after(i64::MIN).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        // Reading only after the first segment does not touch it.
        assert_eq!(Journal::open(dir.path()).records_after(segs[1].first_ns).unwrap().len(), 0);
    }

    /// What `records_outlive_a_sigkill`'s child writes: small records over
    /// several mapped windows, with large ones (written, not mapped) among
    /// them.
    fn sigkill_record(i: u64) -> Change {
        let len = if i % 500 == 7 { 200_000 } else { (i % 90) as usize };
        Change::Overwritten(Overwritten {
            old_size: i,
            ranges: vec![OldRange { offset: i, data: (0..len).map(|b| (b as u64 * 7 + i) as u8).collect() }],
            attr: None,
            shared: None,
        })
    }
    const SIGKILL_RECORDS: u64 = 3_000;

    /// Run by `records_outlive_a_sigkill` in a child process: appends the
    /// records, then the process kills itself with SIGKILL (no sync, no
    /// drop, nothing of Rust's runs after it).
    #[test]
    #[ignore]
    fn sigkill_child() {
        let Some(dir) = std::env::var_os("LIFELINE_SIGKILL_JOURNAL") else { return };
        let mut w = JournalWriter::open(Path::new(&dir), clock()).unwrap();
        for i in 0..SIGKILL_RECORDS {
            w.append(i, format!("/f{i}").as_bytes(), sigkill_record(i)).unwrap();
        }
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL).unwrap();
        unreachable!("killed");
    }

    /// The invariant the mapped tail must keep: a record appended is in the
    /// page cache when `append` returns, so a writer killed by SIGKILL right
    /// after loses none; the zeros past the last frame are cut on opening
    /// and appending goes on after the last record.
    #[test]
    fn records_outlive_a_sigkill() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "journal::tests::sigkill_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env("LIFELINE_SIGKILL_JOURNAL", dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(9), "the child was to die of SIGKILL: {status:?}");
        let seg = Journal::open(dir.path()).segments().unwrap()[0].path.clone();
        let all = Journal::open(dir.path()).records_after(i64::MIN).unwrap();
        assert_eq!(all.len() as u64, SIGKILL_RECORDS, "every record appended before the kill is there");
        for (i, r) in all.iter().enumerate() {
            assert_eq!((r.seq, r.change.clone()), (i as u64, Some(sigkill_record(i as u64))), "record {i}");
        }
        let (_, end, torn) = read_segment(&seg).unwrap();
        assert!(torn && fs::metadata(&seg).unwrap().len() > end, "the killed writer left the mapped window's zeros");
        let mut w = JournalWriter::open(dir.path(), clock()).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), end, "opening cut them");
        w.append(SIGKILL_RECORDS, b"/after", Change::Created(Created {})).unwrap();
        let all = Journal::open(dir.path()).records_after(i64::MIN).unwrap();
        assert_eq!(all.len() as u64, SIGKILL_RECORDS + 1);
        assert_eq!(all.last().unwrap().path, b"/after");
    }

    /// Only the newest segment may end in zeros: one that is closed ends
    /// at its last frame, durably, before the next is made; a writer that
    /// stops leaves none either.
    #[test]
    fn a_closed_segment_ends_at_its_last_frame() {
        let dir = tempfile::tempdir().unwrap();
        let c = clock();
        let mut w = JournalWriter::open(dir.path(), c.clone()).unwrap();
        for i in 0..100u64 {
            w.append(i, b"/a", Change::Created(Created {})).unwrap();
        }
        c.advance(SEGMENT_SPAN_NS);
        w.append(100, b"/b", Change::Created(Created {})).unwrap();
        let segs = Journal::open(dir.path()).segments().unwrap();
        assert_eq!(segs.len(), 2);
        let (records, end, torn) = read_segment(&segs[0].path).unwrap();
        assert_eq!((records.len(), torn), (100, false));
        assert_eq!(fs::metadata(&segs[0].path).unwrap().len(), end);
        assert!(fs::metadata(&segs[1].path).unwrap().len() > read_segment(&segs[1].path).unwrap().1, "mapped ahead");
        drop(w);
        let (records, end, torn) = read_segment(&segs[1].path).unwrap();
        assert_eq!((records.len(), torn), (1, false));
        assert_eq!(fs::metadata(&segs[1].path).unwrap().len(), end);
    }

    #[test]
    fn the_journal_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("history/m");
        let mut w = JournalWriter::open(&j, clock()).unwrap();
        w.append(1, b"/a", Change::Created(Created {})).unwrap();
        assert_eq!(fs::metadata(&j).unwrap().permissions().mode() & 0o777, 0o700);
        let seg = &Journal::open(&j).segments().unwrap()[0].path;
        assert_eq!(fs::metadata(seg).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

/// What one small record costs to append (a new file's `Created`), in
/// CPU time: `cargo test --release -p lifeline-history append_cost --
/// --ignored --nocapture` (TMPDIR on the filesystem to measure).
#[cfg(test)]
#[test]
#[ignore]
fn append_cost() {
    use crate::record::Created;
    fn cpu() -> f64 {
        let s = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        s.split_whitespace().next().unwrap().parse::<u64>().unwrap() as f64 / 1e9
    }
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), Arc::new(crate::SystemClock)).unwrap();
        let c = cpu();
        for i in 0..20_000u64 {
            w.append(i, format!("burst/d{}/f{i}", i % 100).as_bytes(), Change::Created(Created {})).unwrap();
        }
        let took = cpu() - c;
        w.sync().unwrap();
        eprintln!("20,000 appends: {took:.4} s CPU, {:.2} µs each", took / 20_000.0 * 1e6);
    }
}
