//! A deterministic, randomized file-system workload.
//!
//! [`run_workload`] applies `ops` operations to a directory: the same seed
//! gives the same final tree, byte for byte (modes included), on any
//! filesystem that supports what it does (tmpfs and ext4 do). A model of the
//! live paths keeps every operation valid: it only renames, unlinks or
//! removes what exists, removes non-empty directories by deleting their
//! contents first, and names every new entry uniquely (`f12`, `d7`, ...).
//!
//! The mix covers the system calls a change capture must see: `write`,
//! `pwrite` (inside and beyond EOF, making holes), `O_APPEND` writes,
//! `writev`, `pwritev`, `truncate` up and down, `ftruncate`, `fallocate`
//! (extending, keep-size, punching holes), `rename` (files over files,
//! across directories, directories), `unlink`, `mkdir`, `rmdir`, `symlink`
//! (relative, absolute, dangling), `link`, `chmod`/`fchmod`, the
//! write-temp-then-rename save, bursts of 50 same-size rewrites of one file,
//! and one file kept open for the whole run and written to again and again.
//!
//! With [`WorkloadOptions::hazards`] it also changes the kind of existing
//! names (file to directory, directory to file, either to a symlink, a
//! symlink to either), makes symlinks to ancestors, to the root and to `/`,
//! and deep directory chains (see [`OpKind::HAZARDS`]); without it, a seed
//! gives the same run as before those existed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// The kinds of operation, as counted in [`WorkloadStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `O_CREAT|O_EXCL` and `write` of the whole content (sometimes empty).
    CreateFile,
    /// `O_TRUNC` and `write`: a full rewrite.
    Write,
    /// `pwrite` inside the file.
    Pwrite,
    /// `pwrite` beyond EOF, leaving a hole.
    PwriteHole,
    /// `write` on an `O_APPEND` fd.
    Append,
    /// `truncate(path)` to a larger size.
    TruncateUp,
    /// `truncate(path)` to a smaller size.
    TruncateDown,
    /// `ftruncate` on an open fd, up or down.
    Ftruncate,
    /// `writev` at the fd's position (after `lseek`).
    Writev,
    /// `pwritev` at an offset.
    Pwritev,
    /// `fallocate` growing the file or keeping its size.
    Fallocate,
    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`.
    PunchHole,
    /// `rename` of a file over another existing file.
    RenameOverFile,
    /// `rename` of a file within its directory.
    RenameFile,
    /// `rename` of a file into another directory.
    RenameFileAcrossDirs,
    /// `rename` of a directory (with its subtree), possibly to another parent.
    RenameDir,
    /// `unlink` of a regular file.
    Unlink,
    /// `unlink` of a symlink.
    UnlinkSymlink,
    Mkdir,
    /// `rmdir` of an empty directory.
    Rmdir,
    /// A non-empty directory removed by deleting its contents first.
    RemoveTree,
    SymlinkRelative,
    SymlinkAbsolute,
    SymlinkDangling,
    HardLink,
    /// `chmod` or `fchmod` of a file.
    ChmodFile,
    /// `chmod` of a directory.
    ChmodDir,
    /// Write `x.tmp` (sometimes `fsync`), `rename` it over `x`.
    SaveViaRename,
    /// 50 rewrites of 4 KiB of one file, each different, within moments.
    SameSizeOverwrites,
    /// A write (or truncate) to the file kept open for the whole run.
    HeldWrite,
    /// A file's name becomes a directory (with a file in it).
    FileToDir,
    /// An empty directory's name becomes a file.
    DirToFile,
    /// A file's or an empty directory's name becomes a symlink to an
    /// ancestor, to the root or to `/`.
    ToSymlink,
    /// A symlink's name becomes a directory or a file.
    SymlinkToDirOrFile,
    /// A new symlink to an ancestor (`..`, `../..`), to its own directory
    /// (`.`), to the root by absolute path, or to `/`.
    SymlinkToAncestor,
    /// A chain of 10 to 16 nested directories with a file at the bottom.
    DeepTree,
}

impl OpKind {
    /// What runs with [`WorkloadOptions::hazards`] add to [`OpKind::ALL`].
    pub const HAZARDS: [OpKind; 6] = [
        OpKind::FileToDir,
        OpKind::DirToFile,
        OpKind::ToSymlink,
        OpKind::SymlinkToDirOrFile,
        OpKind::SymlinkToAncestor,
        OpKind::DeepTree,
    ];

    pub const ALL: [OpKind; 30] = [
        OpKind::CreateFile,
        OpKind::Write,
        OpKind::Pwrite,
        OpKind::PwriteHole,
        OpKind::Append,
        OpKind::TruncateUp,
        OpKind::TruncateDown,
        OpKind::Ftruncate,
        OpKind::Writev,
        OpKind::Pwritev,
        OpKind::Fallocate,
        OpKind::PunchHole,
        OpKind::RenameOverFile,
        OpKind::RenameFile,
        OpKind::RenameFileAcrossDirs,
        OpKind::RenameDir,
        OpKind::Unlink,
        OpKind::UnlinkSymlink,
        OpKind::Mkdir,
        OpKind::Rmdir,
        OpKind::RemoveTree,
        OpKind::SymlinkRelative,
        OpKind::SymlinkAbsolute,
        OpKind::SymlinkDangling,
        OpKind::HardLink,
        OpKind::ChmodFile,
        OpKind::ChmodDir,
        OpKind::SaveViaRename,
        OpKind::SameSizeOverwrites,
        OpKind::HeldWrite,
    ];

    /// Relative frequency (per mille-ish) when the operation is possible.
    fn weight(self) -> u32 {
        use OpKind::*;
        match self {
            CreateFile => 100,
            Write => 50,
            Pwrite => 50,
            PwriteHole => 15,
            Append => 40,
            TruncateUp => 15,
            TruncateDown => 20,
            Ftruncate => 20,
            Writev => 25,
            Pwritev => 25,
            Fallocate => 15,
            PunchHole => 10,
            RenameOverFile => 25,
            RenameFile => 25,
            RenameFileAcrossDirs => 25,
            RenameDir => 12,
            Unlink => 45,
            UnlinkSymlink => 10,
            Mkdir => 40,
            Rmdir => 10,
            RemoveTree => 4,
            SymlinkRelative => 15,
            SymlinkAbsolute => 10,
            SymlinkDangling => 8,
            HardLink => 15,
            ChmodFile => 25,
            ChmodDir => 10,
            SaveViaRename => 35,
            SameSizeOverwrites => 3,
            HeldWrite => 50,
            FileToDir => 14,
            DirToFile => 10,
            ToSymlink => 12,
            SymlinkToDirOrFile => 10,
            SymlinkToAncestor => 10,
            DeepTree => 3,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Operations performed, by kind.
    pub counts: BTreeMap<OpKind, usize>,
    /// Bytes handed to write-like calls.
    pub bytes_written: u64,
    /// Live entries at the end (of the workload's own model).
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
}

impl WorkloadStats {
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// The hazards (see [`OpKind::HAZARDS`]) that never happened.
    pub fn missing_hazards(&self) -> Vec<OpKind> {
        OpKind::HAZARDS.iter().copied().filter(|k| !self.counts.contains_key(k)).collect()
    }

    /// The kinds of [`OpKind::ALL`] that never happened.
    pub fn missing_kinds(&self) -> Vec<OpKind> {
        OpKind::ALL.iter().copied().filter(|k| !self.counts.contains_key(k)).collect()
    }
}

/// How fast to go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pacing {
    /// As fast as possible.
    #[default]
    None,
    /// At most this many operations per second.
    OpsPerSec(u32),
    /// `ops` operations as fast as possible, then a pause, and again.
    Bursts { ops: usize, pause: Duration },
}

/// A run's parameters.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub seed: u64,
    pub ops: usize,
    pub pacing: Pacing,
    /// Put before every name the run creates, so that several runs can share
    /// one directory.
    pub prefix: String,
    /// Incremented after every operation (to watch a run from outside).
    pub progress: Option<Arc<AtomicUsize>>,
    /// Checked before every operation: the run ends early once it is set.
    pub stop: Option<Arc<AtomicBool>>,
    /// Also the [`OpKind::HAZARDS`].
    pub hazards: bool,
}

impl WorkloadOptions {
    pub fn new(seed: u64, ops: usize) -> WorkloadOptions {
        WorkloadOptions {
            seed,
            ops,
            pacing: Pacing::None,
            prefix: String::new(),
            progress: None,
            stop: None,
            hazards: false,
        }
    }
}

/// Runs `ops` operations seeded by `seed` against `root` (which must exist),
/// as fast as possible.
pub fn run_workload(root: &Path, seed: u64, ops: usize) -> WorkloadStats {
    run_workload_with(root, &WorkloadOptions::new(seed, ops))
}

/// Runs a workload with pacing and a name prefix.
pub fn run_workload_with(root: &Path, opts: &WorkloadOptions) -> WorkloadStats {
    let mut w = Workload::new(root, opts);
    let start = Instant::now();
    for i in 0..opts.ops {
        if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            break;
        }
        match opts.pacing {
            Pacing::None => {}
            Pacing::OpsPerSec(n) => {
                let due = start + Duration::from_secs_f64(i as f64 / f64::from(n.max(1)));
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Pacing::Bursts { ops, pause } => {
                if i > 0 && ops > 0 && i % ops == 0 {
                    std::thread::sleep(pause);
                }
            }
        }
        let kind = w.step();
        *w.stats.counts.entry(kind).or_default() += 1;
        if let Some(p) = &opts.progress {
            p.fetch_add(1, Ordering::SeqCst);
        }
    }
    w.finish()
}

/// A workload running on a thread of its own, in rounds, until stopped:
/// round `r` is [`run_workload_with`] with seed `seed + r` and name prefix
/// `<prefix>r<r>-`, so that a test can inject faults for as long as it needs
/// while files keep changing.
pub struct Background {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
    handle: Option<JoinHandle<(usize, WorkloadStats)>>,
    started: Instant,
}

/// What a [`Background`] workload did.
#[derive(Clone, Debug, Default)]
pub struct BackgroundStats {
    pub rounds: usize,
    pub ops: usize,
    pub bytes_written: u64,
    pub took: Duration,
    /// Operations by kind, over all rounds.
    pub counts: BTreeMap<OpKind, usize>,
}

impl Background {
    /// Starts rounds of `round` (its `ops`, pacing and prefix) against `root`.
    pub fn start(root: &Path, round: WorkloadOptions) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicUsize::new(0));
        let (root, s, p) = (root.to_path_buf(), stop.clone(), progress.clone());
        let handle = std::thread::Builder::new()
            .name("workload".into())
            .spawn(move || {
                let mut total = WorkloadStats::default();
                let mut r = 0;
                while !s.load(Ordering::SeqCst) {
                    let mut o = round.clone();
                    o.seed = round.seed.wrapping_add(r as u64);
                    o.prefix = format!("{}r{r}-", round.prefix);
                    o.progress = Some(p.clone());
                    o.stop = Some(s.clone());
                    let st = run_workload_with(&root, &o);
                    for (k, n) in st.counts {
                        *total.counts.entry(k).or_default() += n;
                    }
                    total.bytes_written += st.bytes_written;
                    r += 1;
                }
                (r, total)
            })
            .expect("spawn the workload thread");
        Background { stop, progress, handle: Some(handle), started: Instant::now() }
    }

    /// Operations done so far.
    pub fn ops(&self) -> usize {
        self.progress.load(Ordering::SeqCst)
    }

    /// Whether the thread still runs (false after a panic in it).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Waits (up to `timeout`) until the workload is in the middle of a
    /// burst: an operation completed within the last millisecond or two.
    /// Returns whether it was.
    pub fn wait_mid_burst(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last = self.ops();
        while Instant::now() < deadline && self.is_running() {
            std::thread::sleep(Duration::from_millis(1));
            let now = self.ops();
            if now != last {
                return true;
            }
            last = now;
        }
        false
    }

    /// Stops after the current operation and returns what was done; panics
    /// if the workload thread panicked.
    pub fn stop(mut self) -> BackgroundStats {
        self.stop.store(true, Ordering::SeqCst);
        let (rounds, stats) = match self.handle.take().expect("not stopped yet").join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        };
        BackgroundStats {
            rounds,
            ops: stats.total(),
            bytes_written: stats.bytes_written,
            took: self.started.elapsed(),
            counts: stats.counts,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A regular file of the model: its path and which inode it is (hard links
/// share one).
#[derive(Clone, Debug)]
struct ModelFile {
    rel: PathBuf,
    ino: u64,
}

struct Workload {
    root: PathBuf,
    rng: StdRng,
    prefix: String,
    files: Vec<ModelFile>,
    /// Directories, relative; the root itself is not listed.
    dirs: Vec<PathBuf>,
    symlinks: Vec<PathBuf>,
    next_name: u64,
    next_ino: u64,
    held: File,
    stats: WorkloadStats,
    hazards: bool,
}

const FILE_MODES: [u32; 8] = [0o644, 0o600, 0o755, 0o640, 0o444, 0o664, 0o400, 0o700];
const DIR_MODES: [u32; 6] = [0o755, 0o700, 0o750, 0o775, 0o711, 0o555];
const MAX_DEPTH: usize = 6;

fn ctx<T>(r: io::Result<T>, what: &str, p: &Path) -> T {
    r.unwrap_or_else(|e| panic!("workload: {what} {}: {e}", p.display()))
}

fn depth(rel: &Path) -> usize {
    rel.components().count()
}

/// `target` (relative to the root) as seen from directory `from` (relative
/// to the root).
fn relative_from(from: &Path, target: &Path) -> PathBuf {
    let mut p = PathBuf::new();
    for _ in from.components() {
        p.push("..");
    }
    p.push(target);
    p
}

impl Workload {
    fn new(root: &Path, opts: &WorkloadOptions) -> Workload {
        let held_path = root.join(format!("{}held.log", opts.prefix));
        let held =
            ctx(OpenOptions::new().read(true).write(true).create_new(true).open(&held_path), "create", &held_path);
        Workload {
            root: root.to_path_buf(),
            rng: StdRng::seed_from_u64(opts.seed),
            prefix: opts.prefix.clone(),
            files: Vec::new(),
            dirs: Vec::new(),
            symlinks: Vec::new(),
            next_name: 0,
            next_ino: 0,
            held,
            stats: WorkloadStats::default(),
            hazards: opts.hazards,
        }
    }

    fn finish(self) -> WorkloadStats {
        let mut stats = self.stats;
        stats.files = self.files.len();
        stats.dirs = self.dirs.len();
        stats.symlinks = self.symlinks.len();
        // `self.held` closes here: the writer kept it open until the end.
        stats
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn name(&mut self, kind: &str) -> String {
        self.next_name += 1;
        format!("{}{kind}{}", self.prefix, self.next_name)
    }

    fn new_ino(&mut self) -> u64 {
        self.next_ino += 1;
        self.next_ino
    }

    /// Mostly small sizes, a few up to 4 MiB.
    fn size(&mut self) -> usize {
        match self.rng.random_range(0..100) {
            0..10 => self.rng.random_range(0..=64),
            10..88 => self.rng.random_range(0..=64 << 10),
            88..98 => self.rng.random_range(64 << 10..=512 << 10),
            _ => self.rng.random_range(512 << 10..=4 << 20),
        }
    }

    fn data(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if self.rng.random_bool(0.3) {
            // Compressible text-like content.
            let line = format!("line of seed text {} ", self.rng.random::<u32>());
            for (i, b) in v.iter_mut().enumerate() {
                *b = line.as_bytes()[i % line.len()];
            }
        } else {
            self.rng.fill_bytes(&mut v);
        }
        self.stats.bytes_written += len as u64;
        v
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.random_range(0..v.len())].clone())
        }
    }

    fn pick_file(&mut self) -> Option<ModelFile> {
        let files = std::mem::take(&mut self.files);
        let f = self.pick(&files);
        self.files = files;
        f
    }

    /// A directory (possibly the root, as ""), not deeper than `max_depth`.
    fn pick_dir(&mut self, max_depth: usize) -> PathBuf {
        let candidates: Vec<PathBuf> = std::iter::once(PathBuf::new())
            .chain(self.dirs.iter().filter(|d| depth(d) <= max_depth).cloned())
            .collect();
        candidates[self.rng.random_range(0..candidates.len())].clone()
    }

    fn len_of(&self, rel: &Path) -> u64 {
        let p = self.abs(rel);
        ctx(fs::metadata(&p), "stat", &p).len()
    }

    fn open_rw(&self, rel: &Path) -> File {
        let p = self.abs(rel);
        ctx(OpenOptions::new().read(true).write(true).open(&p), "open", &p)
    }

    fn has_children(&self, dir: &Path) -> bool {
        let under = |p: &Path| p.parent() == Some(dir);
        self.files.iter().any(|f| under(&f.rel))
            || self.dirs.iter().any(|d| under(d))
            || self.symlinks.iter().any(|s| under(s))
    }

    fn choose_kind(&mut self) -> OpKind {
        // Without hazards, the same draws as before they existed.
        let extra: &[OpKind] = if self.hazards { &OpKind::HAZARDS } else { &[] };
        let total: u32 = OpKind::ALL.iter().chain(extra).map(|k| k.weight()).sum();
        let mut x = self.rng.random_range(0..total);
        for &k in OpKind::ALL.iter().chain(extra) {
            if x < k.weight() {
                return k;
            }
            x -= k.weight();
        }
        unreachable!()
    }

    /// One operation; returns the kind actually performed (an impossible
    /// choice, such as unlinking with no file, falls back to creating).
    fn step(&mut self) -> OpKind {
        let kind = self.choose_kind();
        match self.try_op(kind) {
            Some(k) => k,
            None => {
                if self.rng.random_bool(0.2) && self.dirs.len() < 40 {
                    self.mkdir()
                } else {
                    self.create_file()
                }
            }
        }
    }

    fn try_op(&mut self, kind: OpKind) -> Option<OpKind> {
        use OpKind::*;
        match kind {
            CreateFile => Some(self.create_file()),
            Mkdir => Some(self.mkdir()),
            HeldWrite => Some(self.held_write()),
            Write | Pwrite | PwriteHole | Append | TruncateUp | TruncateDown | Ftruncate | Writev | Pwritev
            | Fallocate | PunchHole | ChmodFile | SameSizeOverwrites | HardLink => {
                let f = self.pick_file()?;
                Some(self.file_op(kind, &f.rel))
            }
            SaveViaRename => Some(self.save_via_rename()),
            RenameOverFile => self.rename_over_file(),
            RenameFile | RenameFileAcrossDirs => self.rename_file(kind),
            RenameDir => self.rename_dir(),
            Unlink => {
                let f = self.pick_file()?;
                let p = self.abs(&f.rel);
                ctx(fs::remove_file(&p), "unlink", &p);
                self.files.retain(|x| x.rel != f.rel);
                Some(Unlink)
            }
            UnlinkSymlink => {
                let links = self.symlinks.clone();
                let l = self.pick(&links)?;
                let p = self.abs(&l);
                ctx(fs::remove_file(&p), "unlink", &p);
                self.symlinks.retain(|x| *x != l);
                Some(UnlinkSymlink)
            }
            Rmdir => {
                let empty: Vec<PathBuf> = self.dirs.iter().filter(|d| !self.has_children(d)).cloned().collect();
                let d = self.pick(&empty)?;
                let p = self.abs(&d);
                ctx(fs::remove_dir(&p), "rmdir", &p);
                self.dirs.retain(|x| *x != d);
                Some(Rmdir)
            }
            RemoveTree => self.remove_tree(),
            SymlinkRelative | SymlinkAbsolute | SymlinkDangling => Some(self.symlink(kind)),
            FileToDir | DirToFile | ToSymlink | SymlinkToDirOrFile | SymlinkToAncestor | DeepTree => self.hazard(kind),
            ChmodDir => {
                let dirs = self.dirs.clone();
                let d = self.pick(&dirs)?;
                let mode = DIR_MODES[self.rng.random_range(0..DIR_MODES.len())];
                let p = self.abs(&d);
                ctx(fs::set_permissions(&p, fs::Permissions::from_mode(mode)), "chmod", &p);
                Some(ChmodDir)
            }
        }
    }

    fn create_file(&mut self) -> OpKind {
        let dir = self.pick_dir(MAX_DEPTH);
        let rel = dir.join(self.name("f"));
        let p = self.abs(&rel);
        let size = self.size();
        let data = self.data(size);
        let mut f = ctx(OpenOptions::new().write(true).create_new(true).open(&p), "create", &p);
        ctx(f.write_all(&data), "write", &p);
        let ino = self.new_ino();
        self.files.push(ModelFile { rel, ino });
        OpKind::CreateFile
    }

    fn mkdir(&mut self) -> OpKind {
        let parent = self.pick_dir(MAX_DEPTH - 1);
        let rel = parent.join(self.name("d"));
        let p = self.abs(&rel);
        ctx(fs::create_dir(&p), "mkdir", &p);
        self.dirs.push(rel);
        OpKind::Mkdir
    }

    fn file_op(&mut self, kind: OpKind, rel: &Path) -> OpKind {
        use OpKind::*;
        let p = self.abs(rel);
        match kind {
            Write => {
                let size = self.size();
                let data = self.data(size);
                let mut f = ctx(OpenOptions::new().write(true).truncate(true).open(&p), "open", &p);
                ctx(f.write_all(&data), "write", &p);
            }
            Pwrite => {
                let len = self.len_of(rel);
                let off = self.rng.random_range(0..=len);
                let n = self.rng.random_range(1..=16 << 10);
                let data = self.data(n);
                ctx(self.open_rw(rel).write_all_at(&data, off), "pwrite", &p);
            }
            PwriteHole => {
                let len = self.len_of(rel);
                let off = len + self.rng.random_range(1..=1 << 20);
                let n = self.rng.random_range(1..=8 << 10);
                let data = self.data(n);
                ctx(self.open_rw(rel).write_all_at(&data, off), "pwrite", &p);
            }
            Append => {
                let n = self.rng.random_range(1..=8 << 10);
                let data = self.data(n);
                let mut f = ctx(OpenOptions::new().append(true).open(&p), "open O_APPEND", &p);
                ctx(f.write_all(&data), "append", &p);
            }
            TruncateUp | TruncateDown => {
                let len = self.len_of(rel);
                let to = if kind == TruncateUp {
                    len + self.rng.random_range(1..=256 << 10)
                } else {
                    self.rng.random_range(0..=len)
                };
                let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths");
                // SAFETY: a valid C string.
                let r = unsafe { libc::truncate(c.as_ptr(), to as libc::off_t) };
                ctx(if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }, "truncate", &p);
            }
            Ftruncate => {
                let len = self.len_of(rel);
                let to = if self.rng.random_bool(0.5) {
                    len + self.rng.random_range(1..=64 << 10)
                } else {
                    self.rng.random_range(0..=len)
                };
                ctx(self.open_rw(rel).set_len(to), "ftruncate", &p);
            }
            Writev | Pwritev => {
                let len = self.len_of(rel);
                let off = self.rng.random_range(0..=len + if kind == Pwritev { 64 << 10 } else { 0 });
                let parts = self.rng.random_range(2..=4);
                let bufs: Vec<Vec<u8>> = (0..parts)
                    .map(|_| {
                        let n = self.rng.random_range(0..=8 << 10);
                        self.data(n)
                    })
                    .collect();
                let mut f = self.open_rw(rel);
                if kind == Writev {
                    ctx(f.seek(SeekFrom::Start(off)), "lseek", &p);
                }
                vectored_write(&f, &bufs, (kind == Pwritev).then_some(off), &p);
            }
            Fallocate => {
                let len = self.len_of(rel);
                let off = self.rng.random_range(0..=len);
                let n = self.rng.random_range(1..=256 << 10);
                let keep = self.rng.random_bool(0.4);
                let f = self.open_rw(rel);
                let mode = if keep { libc::FALLOC_FL_KEEP_SIZE } else { 0 };
                if fallocate(&f, mode, off, n as u64).is_err() {
                    // Not supported here: what it would have shown.
                    if !keep && off + n as u64 > len {
                        ctx(f.set_len(off + n as u64), "ftruncate", &p);
                    }
                }
            }
            PunchHole => {
                let len = self.len_of(rel);
                let off = self.rng.random_range(0..=len);
                let n = self.rng.random_range(1..=128 << 10);
                let f = self.open_rw(rel);
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                if fallocate(&f, mode, off, n as u64).is_err() && off < len {
                    let zeros = vec![0u8; (len - off).min(n as u64) as usize];
                    ctx(f.write_all_at(&zeros, off), "pwrite", &p);
                }
            }
            ChmodFile => {
                let mode = FILE_MODES[self.rng.random_range(0..FILE_MODES.len())];
                if self.rng.random_bool(0.5) {
                    ctx(fs::set_permissions(&p, fs::Permissions::from_mode(mode)), "chmod", &p);
                } else {
                    let f = ctx(File::open(&p), "open", &p);
                    ctx(f.set_permissions(fs::Permissions::from_mode(mode)), "fchmod", &p);
                }
            }
            SameSizeOverwrites => {
                ctx(self.open_rw(rel).set_len(4096), "ftruncate", &p);
                let held = self.open_rw(rel);
                for i in 0..50 {
                    let data = self.data(4096);
                    if i % 2 == 0 {
                        ctx(held.write_all_at(&data, 0), "pwrite", &p);
                    } else {
                        let mut f = ctx(OpenOptions::new().write(true).truncate(true).open(&p), "open", &p);
                        ctx(f.write_all(&data), "write", &p);
                    }
                }
            }
            HardLink => {
                let dir = self.pick_dir(MAX_DEPTH);
                let new_rel = dir.join(self.name("h"));
                let q = self.abs(&new_rel);
                ctx(fs::hard_link(&p, &q), "link", &q);
                let ino = self.files.iter().find(|f| f.rel == rel).expect("in model").ino;
                self.files.push(ModelFile { rel: new_rel, ino });
            }
            _ => unreachable!("{kind:?} is not a file op"),
        }
        kind
    }

    fn held_write(&mut self) -> OpKind {
        let len = ctx(self.held.metadata(), "fstat", Path::new("held.log")).len();
        let r = self.rng.random_range(0..10);
        if r == 0 && len > 0 {
            let to = self.rng.random_range(0..len);
            ctx(self.held.set_len(to), "ftruncate", Path::new("held.log"));
        } else {
            let off = if r < 4 { len } else { self.rng.random_range(0..=len + 4096) };
            let n = self.rng.random_range(1..=4096);
            let data = self.data(n);
            ctx(self.held.write_all_at(&data, off), "pwrite", Path::new("held.log"));
        }
        OpKind::HeldWrite
    }

    fn save_via_rename(&mut self) -> OpKind {
        let existing = if self.rng.random_bool(0.7) { self.pick_file() } else { None };
        let rel = match &existing {
            Some(f) => f.rel.clone(),
            None => {
                let dir = self.pick_dir(MAX_DEPTH);
                dir.join(self.name("s"))
            }
        };
        let p = self.abs(&rel);
        let mut tmp = p.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let size = self.size();
        let data = self.data(size);
        let mut f = ctx(OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp), "create", &tmp);
        ctx(f.write_all(&data), "write", &tmp);
        if self.rng.random_bool(0.25) {
            ctx(f.sync_all(), "fsync", &tmp);
        }
        drop(f);
        ctx(fs::rename(&tmp, &p), "rename", &tmp);
        let ino = self.new_ino();
        match self.files.iter_mut().find(|f| f.rel == rel) {
            Some(f) => f.ino = ino,
            None => self.files.push(ModelFile { rel, ino }),
        }
        OpKind::SaveViaRename
    }

    fn rename_over_file(&mut self) -> Option<OpKind> {
        if self.files.len() < 2 {
            return None;
        }
        let i = self.rng.random_range(0..self.files.len());
        let mut j = self.rng.random_range(0..self.files.len() - 1);
        if j >= i {
            j += 1;
        }
        let (a, b) = (self.files[i].clone(), self.files[j].clone());
        let (pa, pb) = (self.abs(&a.rel), self.abs(&b.rel));
        ctx(fs::rename(&pa, &pb), "rename", &pa);
        if a.ino != b.ino {
            // Hard links of one inode: rename does nothing (POSIX).
            self.files.retain(|f| f.rel != b.rel);
            let f = self.files.iter_mut().find(|f| f.rel == a.rel).expect("in model");
            f.rel = b.rel;
        }
        Some(OpKind::RenameOverFile)
    }

    fn rename_file(&mut self, kind: OpKind) -> Option<OpKind> {
        let f = self.pick_file()?;
        let dir = if kind == OpKind::RenameFileAcrossDirs {
            let d = self.pick_dir(MAX_DEPTH);
            if Some(d.as_path()) == f.rel.parent() {
                return None;
            }
            d
        } else {
            f.rel.parent().unwrap_or(Path::new("")).to_path_buf()
        };
        let to = dir.join(self.name("r"));
        let (pa, pb) = (self.abs(&f.rel), self.abs(&to));
        ctx(fs::rename(&pa, &pb), "rename", &pa);
        self.files.iter_mut().find(|x| x.rel == f.rel).expect("in model").rel = to;
        Some(kind)
    }

    fn rename_dir(&mut self) -> Option<OpKind> {
        let dirs = self.dirs.clone();
        let d = self.pick(&dirs)?;
        let subtree_depth =
            self.dirs.iter().filter(|x| x.starts_with(&d)).map(|x| depth(x) - depth(&d)).max().unwrap_or(0);
        let parents: Vec<PathBuf> = std::iter::once(PathBuf::new())
            .chain(self.dirs.iter().cloned())
            .filter(|p| !p.starts_with(&d) && depth(p) + 1 + subtree_depth <= MAX_DEPTH)
            .collect();
        let parent = self.pick(&parents)?;
        let to = parent.join(self.name("d"));
        let (pa, pb) = (self.abs(&d), self.abs(&to));
        ctx(fs::rename(&pa, &pb), "rename", &pa);
        let moved = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix(&d) {
                *p = if rest.as_os_str().is_empty() { to.clone() } else { to.join(rest) };
            }
        };
        self.files.iter_mut().for_each(|f| moved(&mut f.rel));
        self.dirs.iter_mut().for_each(moved);
        self.symlinks.iter_mut().for_each(moved);
        Some(OpKind::RenameDir)
    }

    fn remove_tree(&mut self) -> Option<OpKind> {
        let full: Vec<PathBuf> = self.dirs.iter().filter(|d| self.has_children(d)).cloned().collect();
        let d = self.pick(&full)?;
        let inside = |p: &Path| p.starts_with(&d) && p != d;
        for f in self.files.iter().filter(|f| inside(&f.rel)) {
            let p = self.abs(&f.rel);
            ctx(fs::remove_file(&p), "unlink", &p);
        }
        for s in self.symlinks.iter().filter(|s| inside(s)) {
            let p = self.abs(s);
            ctx(fs::remove_file(&p), "unlink", &p);
        }
        let mut sub: Vec<PathBuf> = self.dirs.iter().filter(|x| x.starts_with(&d)).cloned().collect();
        sub.sort_by_key(|x| std::cmp::Reverse(depth(x)));
        for x in &sub {
            let p = self.abs(x);
            ctx(fs::remove_dir(&p), "rmdir", &p);
        }
        self.files.retain(|f| !f.rel.starts_with(&d));
        self.symlinks.retain(|s| !s.starts_with(&d));
        self.dirs.retain(|x| !x.starts_with(&d));
        Some(OpKind::RemoveTree)
    }

    fn symlink(&mut self, kind: OpKind) -> OpKind {
        let dir = self.pick_dir(MAX_DEPTH);
        let rel = dir.join(self.name("l"));
        let targets: Vec<PathBuf> = self.files.iter().map(|f| f.rel.clone()).chain(self.dirs.iter().cloned()).collect();
        let target: PathBuf = match (kind, self.pick(&targets)) {
            (OpKind::SymlinkRelative, Some(t)) => relative_from(&dir, &t),
            (OpKind::SymlinkRelative, None) => PathBuf::from("."),
            (OpKind::SymlinkAbsolute, Some(t)) if self.rng.random_bool(0.8) => self.abs(&t),
            (OpKind::SymlinkAbsolute, _) => PathBuf::from("/etc/hostname"),
            _ => {
                let n = self.name("missing");
                if self.rng.random_bool(0.5) {
                    PathBuf::from(format!("../{n}/x"))
                } else {
                    PathBuf::from(format!("/nonexistent/lifeline/{n}"))
                }
            }
        };
        let p = self.abs(&rel);
        ctx(symlink(&target, &p), "symlink", &p);
        self.symlinks.push(rel);
        kind
    }
}

impl Workload {
    /// A target for a symlink at `rel` that leads out of the tree or loops:
    /// an ancestor, its own directory, the root by absolute path, or `/`.
    fn hazardous_target(&mut self, rel: &Path) -> PathBuf {
        let up = depth(rel).saturating_sub(1);
        match self.rng.random_range(0..5) {
            0 => PathBuf::from(".."),
            1 => PathBuf::from("../".repeat(up + 1).trim_end_matches('/')),
            2 => PathBuf::from("."),
            3 => self.root.clone(),
            _ => PathBuf::from("/"),
        }
    }

    /// Removes the model's entry at `rel` (a file name, an empty directory or
    /// a symlink) from the disk and the model.
    fn remove_entry(&mut self, rel: &Path) {
        let p = self.abs(rel);
        if self.dirs.iter().any(|d| d == rel) {
            ctx(fs::remove_dir(&p), "rmdir", &p);
            self.dirs.retain(|d| d != rel);
        } else {
            ctx(fs::remove_file(&p), "unlink", &p);
            self.files.retain(|f| f.rel != rel);
            self.symlinks.retain(|s| s != rel);
        }
    }

    fn empty_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().filter(|d| !self.has_children(d)).cloned().collect()
    }

    fn new_file_at(&mut self, rel: PathBuf) {
        let p = self.abs(&rel);
        let len = self.rng.random_range(0..=8 << 10);
        let data = self.data(len);
        ctx(fs::write(&p, &data), "create", &p);
        let ino = self.new_ino();
        self.files.push(ModelFile { rel, ino });
    }

    fn hazard(&mut self, kind: OpKind) -> Option<OpKind> {
        use OpKind::*;
        match kind {
            FileToDir => {
                let files: Vec<PathBuf> =
                    self.files.iter().filter(|f| depth(&f.rel) <= MAX_DEPTH).map(|f| f.rel.clone()).collect();
                let rel = self.pick(&files)?;
                self.remove_entry(&rel);
                let p = self.abs(&rel);
                ctx(fs::create_dir(&p), "mkdir", &p);
                self.dirs.push(rel.clone());
                let inner = rel.join(self.name("f"));
                self.new_file_at(inner);
            }
            DirToFile => {
                let empty = self.empty_dirs();
                let rel = self.pick(&empty)?;
                self.remove_entry(&rel);
                self.new_file_at(rel);
            }
            ToSymlink => {
                let mut names: Vec<PathBuf> = self.files.iter().map(|f| f.rel.clone()).collect();
                names.extend(self.empty_dirs());
                let rel = self.pick(&names)?;
                self.remove_entry(&rel);
                let target = self.hazardous_target(&rel);
                let p = self.abs(&rel);
                ctx(symlink(&target, &p), "symlink", &p);
                self.symlinks.push(rel);
            }
            SymlinkToDirOrFile => {
                let links = self.symlinks.clone();
                let rel = self.pick(&links)?;
                self.remove_entry(&rel);
                if self.rng.random_bool(0.5) && depth(&rel) <= MAX_DEPTH {
                    let p = self.abs(&rel);
                    ctx(fs::create_dir(&p), "mkdir", &p);
                    self.dirs.push(rel);
                } else {
                    self.new_file_at(rel);
                }
            }
            SymlinkToAncestor => {
                let dir = self.pick_dir(MAX_DEPTH);
                let rel = dir.join(self.name("l"));
                let target = self.hazardous_target(&rel);
                let p = self.abs(&rel);
                ctx(symlink(&target, &p), "symlink", &p);
                self.symlinks.push(rel);
            }
            DeepTree => {
                let mut rel = self.pick_dir(2);
                for _ in 0..self.rng.random_range(10..=16) {
                    rel = rel.join(self.name("d"));
                    let p = self.abs(&rel);
                    ctx(fs::create_dir(&p), "mkdir", &p);
                    self.dirs.push(rel.clone());
                }
                let bottom = rel.join(self.name("f"));
                self.new_file_at(bottom);
            }
            _ => unreachable!("not a hazard: {kind:?}"),
        }
        Some(kind)
    }
}

fn fallocate(f: &File, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: a plain syscall on an fd we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `writev` at the current position (`off` None) or `pwritev` at `off`, until
/// everything is written.
fn vectored_write(f: &File, bufs: &[Vec<u8>], off: Option<u64>, p: &Path) {
    let iov: Vec<libc::iovec> =
        bufs.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
    let total: usize = bufs.iter().map(Vec::len).sum();
    // SAFETY: the iovecs point into `bufs`, alive for the call.
    let n = unsafe {
        match off {
            None => libc::writev(f.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int),
            Some(o) => libc::pwritev(f.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, o as libc::off_t),
        }
    };
    let n = ctx(if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }, "writev", p);
    if n < total {
        // Short write (rare on local filesystems): finish with plain writes.
        let all: Vec<u8> = bufs.concat();
        match off {
            None => {
                let mut g = f;
                ctx(g.write_all(&all[n..]), "write", p);
            }
            Some(o) => ctx(f.write_all_at(&all[n..], o + n as u64), "pwrite", p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_core::tree::{compare, CompareOptions};

    #[test]
    fn same_seed_same_tree_and_every_kind_occurs() {
        // Absolute symlink targets name the root, so both runs use the same
        // root path: the first tree is moved aside before the second run.
        let t = tempfile::tempdir().unwrap();
        let (root, first) = (t.path().join("root"), t.path().join("first"));
        fs::create_dir(&root).unwrap();
        let sa = run_workload(&root, 42, 3000);
        fs::rename(&root, &first).unwrap();
        fs::create_dir(&root).unwrap();
        let sb = run_workload(&root, 42, 3000);
        assert_eq!(sa, sb);
        assert_eq!(sa.total(), 3000);
        assert!(sa.missing_kinds().is_empty(), "never happened: {:?}\n{sa:?}", sa.missing_kinds());
        assert!(sa.files > 20 && sa.dirs > 3 && sa.symlinks > 3, "{sa:?}");
        let d = compare(&first, &root, CompareOptions { mode: true, mtime: false }).unwrap();
        assert!(d.is_empty(), "same seed, different trees:\n{}", crate::summarize(&d, 30));
    }

    #[test]
    fn different_seeds_differ_and_prefixes_share_a_root() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        run_workload(a.path(), 1, 300);
        run_workload(b.path(), 2, 300);
        let d = compare(a.path(), b.path(), CompareOptions::default()).unwrap();
        assert!(!d.is_empty());
        let mut o = WorkloadOptions::new(3, 200);
        o.prefix = "second-".into();
        o.pacing = Pacing::Bursts { ops: 50, pause: Duration::from_millis(1) };
        let s = run_workload_with(a.path(), &o);
        assert_eq!(s.total(), 200);
    }

    #[test]
    fn relative_symlink_targets_climb_to_the_root() {
        assert_eq!(relative_from(Path::new(""), Path::new("a/f")), PathBuf::from("a/f"));
        assert_eq!(relative_from(Path::new("x/y"), Path::new("a/f")), PathBuf::from("../../a/f"));
    }
}
