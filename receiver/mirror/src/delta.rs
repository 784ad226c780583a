//! rsync-style deltas at the receiver: the signature of a mirror file
//! (`GetSignature`) and rebuilding a file from its base and the pieces of a
//! `FileDelta` (see `proto/lifeline.proto` and the `lifeline-delta` crate).
//!
//! **Signature.** The file is opened with the same openat2 confinement as
//! everything else ([`open_base`]); only a regular file with one link
//! qualifies. The signature is streamed as it is computed, in messages of
//! at most about 1 MiB, headed by a *base token*: the file's device, inode,
//! size, mtime and ctime when it was opened.
//!
//! **Delta.** The pieces of one delta arrive as consecutive ops of one
//! stream. The first piece reopens the target through the applier's
//! confined directory fds and checks it still has the token's identity (a
//! write, rename or attribute change since the signature changes the ctime
//! or the inode): otherwise the delta fails at once. The new file is built
//! in a temporary file next to the target (`.lifeline-delta.<hex>`, created
//! `O_EXCL`, mode 0600) by a [`Patcher`], which reads the base with `pread`,
//! checks every copy range against the base's real length and the output
//! against the announced maximum length; the last piece checks the length
//! and blake3 of what was written, sets the attributes and renames it over
//! the target. Nothing is fsynced here: the stream's group commit syncs the
//! filesystem before the acknowledgement. The ctime check catches a changed
//! base early; the whole-file blake3 is what makes a delta correct whatever
//! happened to the base.
//!
//! A delta that only copies the base in place from start to end (the file's
//! content is unchanged, only its mtime differed: reconciliation's "content
//! hash where needed") writes nothing: the base's blake3 is checked against
//! the announced one and the attributes are set on the base itself.
//!
//! **Leftovers.** On any error the temporary file is removed at once, and
//! when the stream ends mid-delta (the agent went away, a newer stream
//! replaced it) the applier's drop removes it. For a receiver killed
//! mid-delta, `<store>/partial/<machine>` ([`PartialRecord`]) names the
//! temporary file while it exists; the machine's next stream removes it
//! before applying anything.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lifeline_delta::{
    DeltaOp, Patcher, Signature, DEFAULT_STRONG_LEN, MAX_BLOCK_LEN, MAX_STRONG_LEN, MIN_BLOCK_LEN, MIN_STRONG_LEN,
};
use lifeline_proto::v1::{delta_instr, Attr, FileDelta, SignatureChunk, SignatureHeader};
use rustix::fs::{fstat, renameat, unlinkat, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use tonic::Status;
use tracing::{debug, warn};

use lifeline_core::credential::MachineName;
use lifeline_store::private::open_record;
use lifeline_store::StoreLayout;

use crate::attrs::{original_mode_fd, set_attr_known};
use crate::history::History;
use crate::op_error::Context;
use crate::safepath::{open_beneath, split, Mirror};

/// Name prefix of the temporary files deltas are built in.
pub const TEMP_PREFIX: &str = ".lifeline-delta.";

/// A signature message holds at most this many bytes of hashes.
const SIG_MSG_BYTES: usize = 1 << 20;
/// ... and covers at most this much of the base, so that messages keep
/// flowing while a big file is hashed.
const SIG_MSG_SPAN: u64 = 64 << 20;

/// The identity of a version of a file: device, inode, size, mtime, ctime.
#[allow(clippy::unnecessary_cast)] // the field types differ between rustix's backends
pub fn base_token(st: &Stat) -> Vec<u8> {
    let mut t = Vec::with_capacity(56);
    for v in [
        st.st_dev as u64,
        st.st_ino as u64,
        st.st_size as u64,
        st.st_mtime as u64,
        st.st_mtime_nsec as u64,
        st.st_ctime as u64,
        st.st_ctime_nsec as u64,
    ] {
        t.extend_from_slice(&v.to_le_bytes());
    }
    t
}

fn lossy(p: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(p)
}

/// Opens the regular file at the (validated) wire path `path` in the mirror
/// for its signature, never following a symlink or leaving the mirror.
pub fn open_base(mirror: &Mirror, path: &[u8]) -> Result<(File, Stat), Status> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match open_beneath(mirror.root(), path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => {
            return Err(Status::not_found(format!("no file {} in the mirror", lossy(path))))
        }
        Err(Errno::LOOP) => {
            return Err(Status::failed_precondition(format!(
                "{} is a symlink or below one in the mirror, not a regular file",
                lossy(path)
            )))
        }
        Err(e @ (Errno::XDEV | Errno::NXIO)) => {
            return Err(Status::failed_precondition(format!(
                "{} is not a regular file of the mirror: {}",
                lossy(path),
                io::Error::from(e)
            )))
        }
        Err(e) => return Err(Status::internal(format!("opening {}: {}", lossy(path), io::Error::from(e)))),
    };
    let st = fstat(&fd).map_err(|e| Status::internal(format!("stat {}: {}", lossy(path), io::Error::from(e))))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(Status::failed_precondition(format!(
            "{} is not a regular file in the mirror ({kind:?})",
            lossy(path)
        )));
    }
    if st.st_nlink > 1 {
        return Err(Status::failed_precondition(format!(
            "{} has {} hard links in the mirror: a delta would replace it and split them",
            lossy(path),
            st.st_nlink
        )));
    }
    Ok((File::from(fd), st))
}

/// Streams the signature of `file` (whose `fstat` is `st`) to `send`, which
/// returns false to stop early. `block_len` and `strong_len` 0 choose the
/// defaults; values out of range are `InvalidInput`.
pub fn send_signature(
    file: &File,
    st: &Stat,
    block_len: u32,
    strong_len: u32,
    mut send: impl FnMut(SignatureChunk) -> bool,
) -> io::Result<()> {
    let base_len = st.st_size as u64;
    let bl = if block_len == 0 { Signature::block_len_for(base_len) } else { block_len };
    let sl = if strong_len == 0 { DEFAULT_STRONG_LEN as u32 } else { strong_len };
    if !(MIN_BLOCK_LEN..=MAX_BLOCK_LEN).contains(&bl) || !(MIN_STRONG_LEN as u32..=MAX_STRONG_LEN as u32).contains(&sl)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "block length {bl} or strong hash length {sl} out of range \
                 ({MIN_BLOCK_LEN}..={MAX_BLOCK_LEN}, {MIN_STRONG_LEN}..={MAX_STRONG_LEN})"
            ),
        ));
    }
    let per_msg = ((SIG_MSG_BYTES / (4 + sl as usize)) as u64).min((SIG_MSG_SPAN / bl as u64).max(1)).max(1);
    let mut header = Some(SignatureHeader { block_len: bl, strong_len: sl, base_len, base_token: base_token(st) });
    let zero = ZeroBlock::new(bl, sl as u8);
    let mut at = 0;
    loop {
        let span = (base_len - at).min(per_msg * bl as u64);
        let (weak, strong) = span_signature(file, at, span, &zero)?;
        at += span;
        let left = base_len - at;
        let msg = SignatureChunk { header: header.take(), weak, strong };
        if !send(msg) {
            return Ok(());
        }
        if left == 0 {
            return Ok(());
        }
    }
}

/// The hashes of a block of zeros, computed once per signature.
struct ZeroBlock {
    block_len: u32,
    strong_len: u8,
    weak: u32,
    strong: Vec<u8>,
}

impl ZeroBlock {
    fn new(block_len: u32, strong_len: u8) -> ZeroBlock {
        let sig = Signature::compute(io::repeat(0), block_len.into(), block_len, strong_len)
            .expect("the parameters were checked");
        ZeroBlock { block_len, strong_len, weak: sig.weak[0], strong: sig.strong }
    }
}

/// The block hashes of `span` bytes of `file` from `start` (a multiple of
/// the block length; `span` too, but at the end of the file).
///
/// The holes of a sparse file are not read: whole blocks in a hole
/// (`SEEK_DATA`) get the hashes of a block of zeros, so that a signature
/// costs what the file holds, not its apparent size (a 1 TiB sparse file
/// with 4 KiB of data cost 13 h before). A filesystem without hole
/// reporting says all is data, and everything is read, as before.
fn span_signature(file: &File, start: u64, span: u64, zero: &ZeroBlock) -> io::Result<(Vec<u32>, Vec<u8>)> {
    let bl = u64::from(zero.block_len);
    let end = start + span;
    let blocks = span.div_ceil(bl) as usize;
    let mut weak = Vec::with_capacity(blocks);
    let mut strong = Vec::with_capacity(blocks * zero.strong.len());
    let mut at = start;
    while at < end {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(d) => d.min(end),
            Err(Errno::NXIO) => end, // nothing but a hole up to the end of the file
            Err(e) => return Err(e.into()),
        };
        // The whole blocks before the data are zeros (a partial last block
        // is hashed as read, below).
        let zeros = (data - at) / bl;
        for _ in 0..zeros {
            weak.push(zero.weak);
            strong.extend_from_slice(&zero.strong);
        }
        at += zeros * bl;
        if at >= end {
            break;
        }
        // Read from here to the block that holds the end of the data.
        let hole = match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data.max(at))) {
            Ok(h) => h.min(end),
            Err(Errno::NXIO) => end,
            Err(e) => return Err(e.into()),
        };
        let stop = (at + (hole - at).div_ceil(bl) * bl).clamp(at + 1, end);
        let sig =
            Signature::compute(Positioned { file, at }.take(stop - at), stop - at, zero.block_len, zero.strong_len)?;
        weak.extend(sig.weak);
        strong.extend(sig.strong);
        at = stop;
    }
    Ok((weak, strong))
}

/// Reads `file` from `at` with `pread`: the signature seeks for holes, so
/// the file's own offset is not to be relied on.
struct Positioned<'a> {
    file: &'a File,
    at: u64,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// `<store>/partial/<machine>`: the wire path of the temporary file a delta
/// is being built in, if any. Written (not synced: the stream's group commit
/// syncs the filesystem) before the temporary file is created and cleared
/// when it is gone, so that a receiver killed mid-delta leaves nothing behind
/// once the machine's next stream starts.
#[derive(Debug)]
pub struct PartialRecord {
    file: File,
    set: bool,
}

impl PartialRecord {
    pub fn open(store: &StoreLayout, machine: &MachineName) -> io::Result<PartialRecord> {
        let file = open_record(&store.partial_delta(machine))?;
        let set = file.metadata()?.len() > 0;
        Ok(PartialRecord { file, set })
    }

    /// Removes the temporary file a previous stream left behind, if the record
    /// names one; returns its wire path.
    pub fn clean(&mut self, mirror: &Mirror) -> io::Result<Option<Vec<u8>>> {
        if !self.set {
            return Ok(None);
        }
        let len = self.file.metadata()?.len().min(lifeline_core::wirepath::MAX_PATH as u64 + 1);
        let mut wire = vec![0u8; len as usize];
        self.file.read_exact_at(&mut wire, 0)?;
        let (dir, name) = split(&wire);
        // Only ever a name this module made: a damaged record removes nothing else.
        let ours =
            name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) && lifeline_core::wirepath::validate(&wire).is_ok();
        let mut removed = None;
        if ours {
            let parent = if dir.is_empty() {
                open_beneath(mirror.root(), ".", OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            } else {
                open_beneath(mirror.root(), dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            };
            match parent {
                Ok(fd) => match unlinkat(&fd, name, AtFlags::empty()) {
                    Ok(()) => removed = Some(wire.clone()),
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                },
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(e.into()),
            }
        } else if !wire.is_empty() {
            warn!("{:?} names no delta temporary file; ignored", lossy(&wire));
        }
        self.clear()?;
        Ok(removed)
    }

    fn set(&mut self, wire: &[u8]) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.write_all_at(wire, 0)?;
        self.set = true;
        Ok(())
    }

    fn clear(&mut self) -> io::Result<()> {
        if self.set {
            self.file.set_len(0)?;
            self.set = false;
        }
        Ok(())
    }
}

/// Where the applier is in the deltas of its stream.
#[derive(Default)]
enum State {
    #[default]
    Idle,
    Open(Box<OpenDelta>),
    /// The delta for this path failed (reported once); its remaining pieces
    /// are ignored.
    Failed(Vec<u8>),
}

/// The applier's delta state: at most one delta is open per stream.
#[derive(Default)]
pub(crate) struct Deltas {
    state: State,
    record: Option<PartialRecord>,
}

impl std::fmt::Debug for Deltas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Idle => "idle".to_string(),
            State::Open(o) => format!("open for {}", lossy(&o.path)),
            State::Failed(p) => format!("failed for {}", lossy(p)),
        };
        f.debug_struct("Deltas").field("state", &state).finish()
    }
}

/// A delta being applied.
struct OpenDelta {
    /// Wire path of the target.
    path: Vec<u8>,
    /// The target's parent directory and its name there.
    dir: Arc<OwnedFd>,
    dir_wire: Vec<u8>,
    name: OsString,
    st: Stat,
    /// The base's mode as the machine sent it (see `attrs::set_mode`), for a
    /// delta that carries no attributes.
    base_mode: u32,
    base_len: u64,
    max_len: u64,
    /// The base, until the output is started.
    base: Option<File>,
    /// Leading bytes of the new file that are the base's own bytes at the
    /// same offsets, not written yet (nothing is written while the delta
    /// only copies the base in place).
    same: u64,
    out: Option<Building>,
    started: std::time::Instant,
}

struct Building {
    temp: OsString,
    patcher: Patcher<File, File>,
}

impl Drop for OpenDelta {
    fn drop(&mut self) {
        if let Some(b) = self.out.take() {
            let _ = unlinkat(&self.dir, &b.temp, AtFlags::empty());
        }
    }
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn temp_name() -> OsString {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let n = NONCE.fetch_add(1, Ordering::Relaxed);
    let x = t ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    OsString::from(format!("{TEMP_PREFIX}{x:016x}"))
}

impl Deltas {
    /// Keeps the crash record in `record` from now on.
    pub(crate) fn set_record(&mut self, record: PartialRecord) {
        self.record = Some(record);
    }

    /// Another kind of op arrives: a delta still open was abandoned by its
    /// sender (which never does that); drop it.
    pub(crate) fn interrupt(&mut self, label: &str) {
        match std::mem::take(&mut self.state) {
            State::Idle => {}
            State::Failed(_) => {}
            State::Open(o) => {
                warn!(machine = %label, "delta for {} abandoned mid-way; dropped", lossy(&o.path).escape_debug());
                self.close(o);
            }
        }
    }

    /// Drops an open delta (removing its temporary file) and clears the record.
    fn close(&mut self, o: Box<OpenDelta>) {
        drop(o);
        if let Some(r) = &mut self.record {
            if let Err(e) = r.clear() {
                warn!("cannot clear the delta record: {e}");
            }
        }
    }

    /// Applies one piece of a delta for the (validated) wire path `path`.
    /// `parent` opens the parent directory of `path` (`None`: missing).
    /// An error means the delta failed; its other pieces are then ignored.
    pub(crate) fn apply(
        &mut self,
        path: &[u8],
        d: &FileDelta,
        history: Option<&mut History>,
        parent: impl FnOnce() -> Result<Option<Arc<OwnedFd>>, String>,
    ) -> Result<(), String> {
        let mut open = match std::mem::take(&mut self.state) {
            State::Open(o) if !d.first && o.path == path => o,
            State::Failed(p) if !d.first && p == path => {
                if !d.last {
                    self.state = State::Failed(p);
                }
                return Ok(());
            }
            previous => {
                if let State::Open(o) = previous {
                    warn!("delta for {} abandoned mid-way by a new one; dropped", lossy(&o.path).escape_debug());
                    self.close(o);
                }
                if !d.first {
                    if !d.last {
                        self.state = State::Failed(path.to_vec());
                    }
                    return Err("a piece of a delta whose start was not seen (a broken stream?)".into());
                }
                if d.abort {
                    return Ok(());
                }
                match self.start(path, d, parent) {
                    Ok(o) => o,
                    Err(e) => {
                        if !d.last {
                            self.state = State::Failed(path.to_vec());
                        }
                        return Err(e);
                    }
                }
            }
        };
        if d.abort {
            self.close(open);
            return Ok(());
        }
        let r = self.pieces(&mut open, d);
        let r = r.and_then(|()| if d.last { self.finish(&mut open, d, history) } else { Ok(()) });
        match r {
            Ok(()) if !d.last => {
                self.state = State::Open(open);
                Ok(())
            }
            Ok(()) => {
                self.close(open);
                Ok(())
            }
            Err(e) => {
                self.close(open);
                if !d.last {
                    self.state = State::Failed(path.to_vec());
                }
                Err(e)
            }
        }
    }

    /// The first piece: checks the base is the one the signature described.
    fn start(
        &mut self,
        path: &[u8],
        d: &FileDelta,
        parent: impl FnOnce() -> Result<Option<Arc<OwnedFd>>, String>,
    ) -> Result<Box<OpenDelta>, String> {
        let (dir_wire, name) = split(path);
        let Some(dir) = parent()? else {
            return Err("the base is gone from the mirror (its directory is missing)".into());
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = match open_beneath(dir.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err("the base is gone from the mirror".into()),
            Err(Errno::LOOP) => return Err("the base is now a symlink".into()),
            Err(e) => return Err(e).ctx("open the base"),
        };
        let st = fstat(&fd).ctx("stat the base")?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err("the base is no longer a regular file".into());
        }
        if st.st_size as u64 != d.base_len || base_token(&st) != d.base_token {
            return Err(format!(
                "the mirror's copy changed since its signature (now {} bytes, signed {}): \
                 the delta does not apply to it",
                st.st_size, d.base_len
            ));
        }
        if st.st_nlink > 1 {
            return Err("the base has several hard links: a delta would split them".into());
        }
        let base_mode = original_mode_fd(fd.as_fd(), st.st_mode).ctx("read the base's mode")?;
        Ok(Box::new(OpenDelta {
            path: path.to_vec(),
            dir,
            dir_wire: dir_wire.to_vec(),
            name: name.to_os_string(),
            st,
            base_mode,
            base_len: st.st_size as u64,
            max_len: d.max_len,
            base: Some(File::from(fd)),
            same: 0,
            out: None,
            started: std::time::Instant::now(),
        }))
    }

    /// Feeds a piece's instructions to the patcher.
    fn pieces(&mut self, o: &mut OpenDelta, d: &FileDelta) -> Result<(), String> {
        for instr in &d.instrs {
            let op = match &instr.kind {
                Some(delta_instr::Kind::Copy(c)) => DeltaOp::Copy { offset: c.offset, len: c.len },
                Some(delta_instr::Kind::Literal(b)) => DeltaOp::Literal(b.clone()),
                None => return Err("a delta instruction of no known kind (newer agent?)".into()),
            };
            if o.out.is_none() {
                if let DeltaOp::Copy { offset, len } = op {
                    // Still the base in place: nothing to write yet.
                    if offset == o.same && offset.checked_add(len).is_some_and(|e| e <= o.base_len && e <= o.max_len) {
                        o.same += len;
                        continue;
                    }
                }
                self.begin_output(o)?;
            }
            let b = o.out.as_mut().expect("started");
            b.patcher.push(&op).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Creates the temporary file and writes the base's leading bytes that
    /// were copied in place so far.
    fn begin_output(&mut self, o: &mut OpenDelta) -> Result<(), String> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::NOCTTY;
        let mut tries = 0;
        let (temp, fd) = loop {
            let temp = temp_name();
            if let Some(r) = &mut self.record {
                let mut wire = o.dir_wire.clone();
                if !wire.is_empty() {
                    wire.push(b'/');
                }
                wire.extend_from_slice(temp.as_bytes());
                r.set(&wire).map_err(|e| format!("record the temporary file: {e}"))?;
            }
            match open_beneath(o.dir.as_fd(), temp.as_os_str(), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => break (temp, fd),
                Err(Errno::EXIST) if tries < 8 => tries += 1,
                Err(e) => return Err(e).ctx("create the temporary file"),
            }
        };
        let base = o.base.take().expect("the base is there until the output starts");
        let patcher = Patcher::new(base, o.base_len, File::from(fd)).with_max_len(o.max_len);
        o.out = Some(Building { temp, patcher });
        if o.same > 0 {
            let b = o.out.as_mut().expect("just set");
            b.patcher.push(&DeltaOp::Copy { offset: 0, len: o.same }).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The last piece: checks what was built and puts it in place.
    fn finish(&mut self, o: &mut OpenDelta, d: &FileDelta, history: Option<&mut History>) -> Result<(), String> {
        let hash: [u8; 32] = d.new_hash[..]
            .try_into()
            .map_err(|_| format!("the delta's hash has {} bytes, not 32", d.new_hash.len()))?;
        let attr = d.attr.unwrap_or_else(|| attr_of(&o.st, o.base_mode));
        if o.out.is_none() && o.same == d.new_len && o.same == o.base_len {
            // Unchanged content: check it, set the attributes in place.
            let base = o.base.as_ref().expect("not started");
            let got = hash_file(base, o.base_len).map_err(|e| format!("read the base: {e}"))?;
            if got != hash {
                return Err("the base's blake3 is not the announced one (the mirror's copy differs in \
                            content from what its signature said)"
                    .into());
            }
            let st = fstat(base).ctx("stat the base")?;
            if let Some(h) = history {
                h.attr_changing(&o.path, o.dir.as_fd(), &o.name)?;
            }
            set_attr_known(base.as_fd(), &attr, &st, true)?;
            debug!(
                "delta of {}: content unchanged, checked in {:?}",
                lossy(&o.path).escape_debug(),
                o.started.elapsed()
            );
            return Ok(());
        }
        if o.out.is_none() {
            self.begin_output(o)?;
        }
        let Building { temp, patcher } = o.out.take().expect("started");
        let result = (|| {
            let file = patcher.finish(d.new_len, &hash).map_err(|e| e.to_string())?;
            let st = fstat(&file).ctx("stat the new file")?;
            set_attr_known(file.as_fd(), &attr, &st, true)?;
            // The file replaced is kept whole (a second name in the attic:
            // the mirror never lacks the name).
            if let Some(h) = history {
                h.keep_replaced_file(&o.path, o.dir.as_fd(), &o.name)?;
            }
            renameat(&o.dir, &temp, &o.dir, &o.name).ctx("rename over the target")
        })();
        if result.is_err() {
            let _ = unlinkat(&o.dir, &temp, AtFlags::empty());
        } else {
            debug!("delta applied to {} in {:?}", lossy(&o.path).escape_debug(), o.started.elapsed());
        }
        result
    }
}

impl Drop for Deltas {
    fn drop(&mut self) {
        if let State::Open(o) = std::mem::take(&mut self.state) {
            self.close(o);
        }
    }
}

#[allow(clippy::unnecessary_cast)] // the field types differ between rustix's backends
fn attr_of(st: &Stat, mode: u32) -> Attr {
    Attr {
        mode,
        mtime_sec: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as u32,
        uid: Some(st.st_uid),
        gid: Some(st.st_gid),
    }
}

/// blake3 of the first `len` bytes of `f` (positioned reads).
fn hash_file(f: &File, len: u64) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
