//! Lifeline's kernel programs.
//!
//! One program on the BTF-enabled `sys_exit` tracepoint (tp_btf) dispatches
//! on the syscall number and returns at once unless it is one of the calls
//! that change a file or the tree (`lifeline_ebpf_common::HOOKED_SYSCALLS`).
//! A single attachment to the raw syscall-exit tracepoint costs less per call
//! than the per-syscall trace events and detaches in one grace period
//! (ninety per-syscall links take seconds), which keeps the on/off switch
//! instant. Being BTF-enabled, it reads the fields of the structures the
//! verifier knows the type of (`regs`, the current task, pointers loaded from
//! them) with plain loads instead of probe reads (`btf_load`).
//!
//! Everything is decided at exit, where the result is known: only calls that
//! succeeded are reported, with the exact range written taken from the return
//! value and the file position (so O_APPEND and short writes are right). The
//! arguments are read from the caller's saved registers, which the x86-64
//! syscall ABI preserves across the call, so no state is kept between entry
//! and exit. Then the cheap filter (the agent's own calls; for fd-based calls
//! anything that is not a regular file on a watched filesystem), the file's
//! identity, its path as a walk of dentry names up to the filesystem's root,
//! and the user-supplied path string for calls that name a path.
//!
//! Records go to user space through one ring buffer; a full ring buffer is
//! counted (`STATS[LOST]`) so the agent knows to reconcile, never silent.
//! Kernel structure offsets come from the agent (read from BTF) through the
//! `CONFIG` global, so the programs run on any kernel with BTF.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated as h,
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use lifeline_ebpf_common::{
    flags, nr, op, part, stat, Config, EventHeader, Run, HEADER_SIZE, MAX_DEPTH, MAX_RECORD, RUN_CLOSED_EMPTY,
    RUN_ENDED, RUN_WINDOW_NS,
};

/// Set by the agent at load time (offsets from BTF, its own pid).
#[no_mangle]
static CONFIG: Config = unsafe { core::mem::zeroed() };

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Devices (kernel dev_t) of the watched filesystems.
#[map]
static WATCHED: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

/// Each task's current run of contiguous writes (see `lifeline_ebpf_common::Run`).
#[map]
static RUNS: LruHashMap<u64, Run> = LruHashMap::with_max_entries(16384, 0);

/// Where a report is decided and its record assembled, `SLOTS_PER_CPU` per
/// CPU. Syscall tracepoints are faultable on recent kernels: a program may be
/// preempted on its CPU by another task's, so a slot is claimed (atomically)
/// before use and released by `emit`.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(SLOTS_PER_CPU, 0);

/// Per-CPU bitmask of claimed SCRATCH slots.
#[map]
static SLOTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SEQ: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Everything larger than a few words lives here, never on the stack: on
/// kernels without private BPF stacks a whole call chain gets 512 bytes, and
/// how much of it the compiler spends on a struct changes with its version
/// (tests/tests/verifier.rs keeps the deepest chain under 448 bytes).
#[repr(C)]
struct Scratch {
    /// What the exit side decided to report, filled in place.
    report: Report,
    /// A run about to be inserted into `RUNS`.
    run: Run,
    /// The record: its header, then its body right behind it (one
    /// contiguous copy into the ring buffer).
    hdr: EventHeader,
    /// Twice the record size, so a read at any masked offset below
    /// `MAX_RECORD` stays inside it whatever its length.
    body: [u8; 2 * MAX_RECORD + 4096],
}

const SLOTS_PER_CPU: u32 = 4;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const MASK: u32 = (MAX_RECORD - 1) as u32;
const NAME_MAX: u32 = 256;
const PATH_MAX: u32 = 4096;
const AT_FDCWD: i64 = -100;
const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_SYMLINK_FOLLOW: u64 = 0x400;
const O_CREAT: u64 = 0o100;
const PROT_WRITE: u64 = 2;
const MAP_SHARED: u64 = 1;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u32 = 0o2000;
const RWF_APPEND: u64 = 0x10;
const FMODE_CREATED: u32 = 1 << 20;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

/// The load-time configuration. Read through a pointer the compiler cannot
/// see through: it would otherwise fold the all-zero initial value, and a copy
/// of the whole struct would not fit the 512-byte stack.
#[inline(always)]
fn cfg() -> &'static Config {
    let p: *const Config = &CONFIG;
    unsafe { &*core::ptr::read_volatile(&p) }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

/// Reads a kernel value at `base + off`; 0-valued on failure (callers treat a
/// null pointer as "give up").
#[inline(always)]
fn kread<T: Copy + Default>(base: u64, off: u32) -> T {
    let mut v = T::default();
    unsafe {
        h::bpf_probe_read_kernel(
            &mut v as *mut T as *mut c_void,
            core::mem::size_of::<T>() as u32,
            (base + off as u64) as *const c_void,
        );
    }
    v
}

/// A directory fd argument: an `int`, whose upper register half is not
/// guaranteed (AT_FDCWD arrives as 0xffffff9c).
#[inline(always)]
fn dfd(v: u64) -> i64 {
    v as i32 as i64
}

/// Reads a field of a kernel structure the verifier knows the type of (a
/// BTF pointer: the tracepoint's `regs`, the current task, and pointers
/// loaded from their fields) with a plain load, which costs a fraction of a
/// probe read. `off` must be a field offset from the read-only config (the
/// verifier checks it against the type). Pointers obtained otherwise (from a
/// probe read, or by indexing an array) need [`kread`].
#[inline(always)]
fn btf_load(base: u64, off: u32) -> u64 {
    unsafe { core::ptr::read_volatile((base + off as u64) as *const u64) }
}

/// [`btf_load`] of a 32-bit field.
#[inline(always)]
fn btf_load_u32(base: u64, off: u32) -> u32 {
    unsafe { core::ptr::read_volatile((base + off as u64) as *const u32) }
}

/// Syscall argument `i` from the caller's saved registers.
#[inline(always)]
fn arg(c: &Config, regs: u64, i: usize) -> u64 {
    kread(regs, c.offsets.regs_args[i])
}

/// Whether the enter/exit programs handle syscall `nr`. Everything else
/// returns before touching a map.
#[inline(always)]
fn hooked(nr: u32) -> bool {
    matches!(
        nr,
        nr::WRITE
            | nr::OPEN
            | nr::CLOSE
            | nr::MMAP
            | nr::PWRITE64
            | nr::WRITEV
            | nr::SENDFILE
            | nr::TRUNCATE
            | nr::FTRUNCATE
            | nr::RENAME
            | nr::MKDIR
            | nr::RMDIR
            | nr::CREAT
            | nr::LINK
            | nr::UNLINK
            | nr::SYMLINK
            | nr::CHMOD
            | nr::FCHMOD
            | nr::CHOWN
            | nr::FCHOWN
            | nr::LCHOWN
            | nr::UTIME
            | nr::SETXATTR
            | nr::LSETXATTR
            | nr::FSETXATTR
            | nr::REMOVEXATTR
            | nr::LREMOVEXATTR
            | nr::FREMOVEXATTR
            | nr::UTIMES
            | nr::OPENAT
            | nr::MKDIRAT
            | nr::FCHOWNAT
            | nr::FUTIMESAT
            | nr::UNLINKAT
            | nr::RENAMEAT
            | nr::LINKAT
            | nr::SYMLINKAT
            | nr::FCHMODAT
            | nr::SPLICE
            | nr::UTIMENSAT
            | nr::FALLOCATE
            | nr::PWRITEV
            | nr::RENAMEAT2
            | nr::COPY_FILE_RANGE
            | nr::PWRITEV2
            | nr::OPENAT2
            | nr::FCHMODAT2
    )
}

/// `struct file *` of descriptor `fd` in the current task, or 0.
#[inline(always)]
fn fd_file(c: &Config, fd: u64) -> u64 {
    // An `unsigned int` argument: only the low half of the register counts.
    let fd = fd & 0xffff_ffff;
    // task -> files -> fdt are typed pointers: plain loads. The array slot
    // is indexed by a variable, so it takes a probe read.
    let task = unsafe { h::bpf_get_current_task_btf() } as u64;
    let files = btf_load(task, c.offsets.task_files);
    if files == 0 {
        return 0;
    }
    let fdt = btf_load(files, c.offsets.files_fdt);
    if fdt == 0 {
        return 0;
    }
    let max = btf_load_u32(fdt, c.offsets.fdt_max_fds);
    if fd >= max as u64 {
        return 0;
    }
    let arr = btf_load(fdt, c.offsets.fdt_fd);
    if arr == 0 {
        return 0;
    }
    kread(arr, (fd * 8) as u32)
}

/// (dev, ino, mode) of a file's inode.
#[inline(always)]
fn file_identity(c: &Config, file: u64) -> (u32, u64, u16) {
    let inode: u64 = kread(file, c.offsets.file_inode);
    if inode == 0 {
        return (0, 0, 0);
    }
    let mode: u16 = kread(inode, c.offsets.inode_mode);
    let ino: u64 = kread(inode, c.offsets.inode_ino);
    let sb: u64 = kread(inode, c.offsets.inode_sb);
    let dev: u32 = if sb == 0 { 0 } else { kread(sb, c.offsets.sb_dev) };
    (dev, ino, mode)
}

#[inline(always)]
fn is_watched(dev: u32) -> bool {
    unsafe { WATCHED.get(dev).is_some() }
}

/// (dev, ino) of `file` if it is a regular file on a watched filesystem: the
/// only files whose data we report. Every write in the system that does not
/// continue a run comes here, most of them to files nobody watches: the
/// filesystem is checked first, with as few reads as possible.
#[inline(always)]
fn watched_regular(c: &Config, file: u64) -> Option<(u32, u64)> {
    if file == 0 {
        return None;
    }
    let inode: u64 = kread(file, c.offsets.file_inode);
    if inode == 0 {
        return None;
    }
    let sb: u64 = kread(inode, c.offsets.inode_sb);
    if sb == 0 {
        return None;
    }
    let dev: u32 = kread(sb, c.offsets.sb_dev);
    if !is_watched(dev) {
        return None;
    }
    let mode: u16 = kread(inode, c.offsets.inode_mode);
    if mode & S_IFMT != S_IFREG {
        return None;
    }
    Some((dev, kread(inode, c.offsets.inode_ino)))
}

#[inline(always)]
fn h_pid_tgid() -> u64 {
    unsafe { h::bpf_get_current_pid_tgid() }
}

/// `sys_exit(struct pt_regs *regs, long ret)`
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    let c = cfg();
    let regs = ctx.arg::<u64>(0);
    // Runs for every syscall: a plain load, not a probe read.
    let nr: u64 = btf_load(regs, c.offsets.regs_orig_ax);
    if hooked(nr as u32) {
        let _ = try_exit(&ctx, c, regs, nr as u32);
    }
    0
}

/// What the exit side reports for one call. Lives in a `Scratch` slot.
struct Report {
    op: u8,
    flags: u8,
    /// fd-based: the file; the path is the file's own dentry walk.
    file: u64,
    offset: u64,
    len: u64,
    aux: u64,
    /// Path-based: (dirfd, user path pointer) of up to two paths.
    paths: [(i64, u64); 2],
    npaths: u8,
    /// User pointer to an auxiliary string (symlink target), or 0.
    aux_str: u64,
    /// Timestamp to report instead of now (a run's t0), or 0.
    ktime: u64,
    /// Identity to report for a record without a file (RUN_END).
    dev: u32,
    ino: u64,
}

// Setters that write in place: a `Report` value built and then copied would
// take its 100 bytes of stack.
impl Report {
    /// An fd-based report.
    #[inline(always)]
    fn set_fd(&mut self, op: u8, file: u64, offset: u64, len: u64) {
        self.op = op;
        self.flags = 0;
        self.file = file;
        self.offset = offset;
        self.len = len;
        self.aux = 0;
        self.npaths = 0;
        self.aux_str = 0;
        self.ktime = 0;
        self.dev = 0;
        self.ino = 0;
    }
    /// A path-based report naming one path.
    #[inline(always)]
    fn set_path(&mut self, op: u8, dirfd: i64, path: u64) {
        self.set_fd(op, 0, 0, 0);
        self.paths[0] = (dirfd, path);
        self.npaths = 1;
    }
    /// A path-based report naming two paths (rename, link).
    #[inline(always)]
    fn set_two(&mut self, op: u8, d0: i64, p0: u64, d1: i64, p1: u64) {
        self.set_path(op, d0, p0);
        self.paths[1] = (d1, p1);
        self.npaths = 2;
    }
}

/// Which names a record carries, so which dentry walks `emit` makes.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Walks {
    /// None (a run's end: the agent knows the file from the run's start).
    Nothing = 0,
    /// The file's own dentries (fd-based calls).
    File = 1,
    /// The paths the call named, each from its base directory.
    Paths = 2,
}

/// A claimed `Scratch` slot of this CPU. `emit` releases it.
#[derive(Clone, Copy)]
struct Slot {
    index: u32,
    s: *mut Scratch,
}

impl Slot {
    #[inline(always)]
    fn report(&self) -> &mut Report {
        unsafe { &mut (*self.s).report }
    }
}

/// Claims a slot, or counts a lost record if every slot of this CPU is held
/// by preempted programs.
#[inline(always)]
fn claim() -> Option<Slot> {
    let mask = SLOTS.get_ptr_mut(0)?;
    let Some(index) = claim_slot(mask) else {
        bump(stat::LOST);
        return None;
    };
    match SCRATCH.get_ptr_mut(index) {
        Some(s) => Some(Slot { index, s }),
        None => {
            release_slot(mask, index);
            None
        }
    }
}

fn try_exit(ctx: &BtfTracePointContext, c: &Config, regs: u64, nr: u32) -> Option<()> {
    let ret = ctx.arg::<i64>(1);
    if ret < 0 || (h_pid_tgid() >> 32) as u32 == c.agent_tgid {
        return None;
    }
    if nr == nr::CLOSE {
        if let Some(p) = RUNS.get_ptr_mut(h_pid_tgid()) {
            let run = unsafe { &mut *p };
            if run.ended == 0 {
                if run.end == run.first_end {
                    // Absorbed nothing: no record needed (most small files).
                    run.ended = RUN_CLOSED_EMPTY;
                } else {
                    end_run(ctx, h_pid_tgid(), run);
                }
            }
        }
        return None;
    }
    // Arguments are read when needed: each read costs.
    let a = |i: usize| arg(c, regs, i);
    let a0 = btf_load(regs, c.offsets.regs_args[0]);
    if matches!(nr, nr::WRITE | nr::WRITEV | nr::PWRITE64 | nr::PWRITEV) && extend_run(c, nr, ret as u64, a0, || a(3)) {
        return Some(());
    }
    // Which descriptor an fd-based call changed, if it is one; anything that
    // is not a regular file on a watched filesystem stops here.
    let fd = match nr {
        nr::WRITE
        | nr::PWRITE64
        | nr::WRITEV
        | nr::PWRITEV
        | nr::PWRITEV2
        | nr::FTRUNCATE
        | nr::FALLOCATE
        | nr::FCHMOD
        | nr::FCHOWN
        | nr::FSETXATTR
        | nr::FREMOVEXATTR
        | nr::SENDFILE => Some(a(0)),
        nr::COPY_FILE_RANGE | nr::SPLICE => Some(a(2)),
        nr::UTIMENSAT if a(1) == 0 => Some(a(0)),
        nr::MMAP => {
            // Only shared, writable mappings write to the file.
            if a(2) & PROT_WRITE == 0 || a(3) & MAP_SHARED == 0 {
                return None;
            }
            Some(a(4))
        }
        _ => None,
    };
    let (file, ident) = match fd {
        Some(fd) => {
            let f = fd_file(c, fd);
            (f, watched_regular(c, f)?)
        }
        None => (0, (0, 0)),
    };
    let off = &c.offsets;
    let pos = || kread::<i64>(file, off.file_pos) as u64;
    let size = || {
        let inode: u64 = kread(file, off.file_inode);
        kread::<i64>(inode, off.inode_size) as u64
    };
    let append = || kread::<u32>(file, off.file_flags) & O_APPEND != 0;
    let n = ret as u64;
    // fd-based reports walk the file's own dentries; the others walk the
    // paths they name (see `emit`).
    let kind = if fd.is_some() { Walks::File } else { Walks::Paths };
    let fd = fd.unwrap_or(0) as u32;
    match nr {
        nr::WRITE | nr::WRITEV | nr::SENDFILE => {
            if n == 0 {
                return None;
            }
            return write(ctx, &Written { fd, file, dev: ident.0, ino: ident.1, start: pos().wrapping_sub(n), n });
        }
        nr::PWRITE64 | nr::PWRITEV | nr::PWRITEV2 => {
            if n == 0 {
                return None;
            }
            // pwrite on an O_APPEND file appends (Linux); pwritev2 with offset
            // -1 uses and advances the file position.
            let start = if append() || (nr == nr::PWRITEV2 && a(5) & RWF_APPEND != 0) {
                size().wrapping_sub(n)
            } else if nr == nr::PWRITEV2 && a(3) as i64 == -1 {
                pos().wrapping_sub(n)
            } else {
                a(3)
            };
            return write(ctx, &Written { fd, file, dev: ident.0, ino: ident.1, start, n });
        }
        nr::COPY_FILE_RANGE | nr::SPLICE => {
            if n == 0 {
                return None;
            }
            // off_out: NULL means the file position; otherwise the kernel
            // advanced *off_out by the bytes copied.
            let end = if a(3) == 0 {
                pos()
            } else {
                let mut v = 0u64;
                unsafe { h::bpf_probe_read_user(&mut v as *mut u64 as *mut c_void, 8, a(3) as *const c_void) };
                v
            };
            return write(ctx, &Written { fd, file, dev: ident.0, ino: ident.1, start: end.wrapping_sub(n), n });
        }
        _ => {}
    }
    // An open that created or truncated a watched regular file: the filters
    // run before a slot is claimed.
    let (opened, oflags) = match nr {
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT => {
            let f = fd_file(c, n);
            watched_regular(c, f)?;
            let oflags = match nr {
                nr::OPEN => a(1),
                nr::OPENAT => a(2),
                nr::CREAT => O_CREAT | O_TRUNC,
                _ => {
                    let mut v = 0u64;
                    unsafe { h::bpf_probe_read_user(&mut v as *mut u64 as *mut c_void, 8, a(2) as *const c_void) };
                    v
                }
            };
            if oflags & (O_CREAT | O_TRUNC) == 0 {
                return None; // opening changes nothing
            }
            (f, oflags)
        }
        _ => (0, 0),
    };
    let kind = if opened != 0 { Walks::File } else { kind };
    let slot = claim()?;
    let r = slot.report();
    // Every arm sets the report; `emit` sends it and releases the slot.
    match nr {
        nr::FTRUNCATE => r.set_fd(op::TRUNCATE, file, a(1), 0),
        nr::FALLOCATE => {
            r.set_fd(op::WRITE, file, a(2), a(3));
            r.flags = flags::FALLOCATE;
            r.aux = a(1);
        }
        nr::FCHMOD | nr::FCHOWN | nr::FSETXATTR | nr::FREMOVEXATTR => r.set_fd(op::ATTR, file, 0, 0),
        nr::UTIMENSAT if a(1) == 0 => r.set_fd(op::ATTR, file, 0, 0),
        nr::MMAP => r.set_fd(op::MMAP_SHARED, file, 0, 0),
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT => {
            r.set_fd(op::OPEN, opened, 0, 0);
            if kread::<u32>(opened, off.file_mode) & FMODE_CREATED != 0 {
                r.flags |= flags::CREATED;
            }
            if oflags & O_TRUNC != 0 {
                r.flags |= flags::TRUNCATED;
            }
            r.aux = oflags;
        }
        nr::TRUNCATE => {
            r.set_path(op::TRUNCATE, AT_FDCWD, a(0));
            r.offset = a(1);
        }
        nr::MKDIR => r.set_path(op::MKDIR, AT_FDCWD, a(0)),
        nr::MKDIRAT => r.set_path(op::MKDIR, dfd(a(0)), a(1)),
        nr::RMDIR => r.set_path(op::RMDIR, AT_FDCWD, a(0)),
        nr::UNLINK => r.set_path(op::UNLINK, AT_FDCWD, a(0)),
        nr::UNLINKAT => {
            let o = if a(2) & AT_REMOVEDIR != 0 { op::RMDIR } else { op::UNLINK };
            r.set_path(o, dfd(a(0)), a(1))
        }
        nr::RENAME => r.set_two(op::RENAME, AT_FDCWD, a(0), AT_FDCWD, a(1)),
        nr::RENAMEAT => r.set_two(op::RENAME, dfd(a(0)), a(1), dfd(a(2)), a(3)),
        nr::RENAMEAT2 => {
            r.set_two(op::RENAME, dfd(a(0)), a(1), dfd(a(2)), a(3));
            r.aux = a(4);
        }
        nr::LINK => r.set_two(op::LINK, AT_FDCWD, a(0), AT_FDCWD, a(1)),
        nr::LINKAT => {
            r.set_two(op::LINK, dfd(a(0)), a(1), dfd(a(2)), a(3));
            if a(4) & AT_SYMLINK_FOLLOW != 0 {
                r.flags = flags::FOLLOW;
            }
        }
        nr::SYMLINK => {
            r.set_path(op::SYMLINK, AT_FDCWD, a(1));
            r.aux_str = a(0);
        }
        nr::SYMLINKAT => {
            r.set_path(op::SYMLINK, dfd(a(1)), a(2));
            r.aux_str = a(0);
        }
        // Whether the call follows a final symlink decides which object
        // changed: the agent must not follow one the call did not.
        nr::CHMOD | nr::CHOWN | nr::SETXATTR | nr::REMOVEXATTR | nr::UTIMES | nr::UTIME => {
            r.set_path(op::ATTR, AT_FDCWD, a(0));
            r.flags = flags::FOLLOW;
        }
        nr::LCHOWN | nr::LSETXATTR | nr::LREMOVEXATTR => r.set_path(op::ATTR, AT_FDCWD, a(0)),
        nr::FCHMODAT | nr::FUTIMESAT => {
            r.set_path(op::ATTR, dfd(a(0)), a(1));
            r.flags = flags::FOLLOW;
        }
        nr::FCHMODAT2 | nr::FCHOWNAT | nr::UTIMENSAT => {
            // The flags argument: fchownat(dfd, path, uid, gid, flags),
            // utimensat(dfd, path, times, flags), fchmodat2(dfd, path, mode, flags).
            let at_flags = if nr == nr::FCHOWNAT { a(4) } else { a(3) };
            r.set_path(op::ATTR, dfd(a(0)), a(1));
            if at_flags & AT_SYMLINK_NOFOLLOW == 0 {
                r.flags = flags::FOLLOW;
            }
        }
        // Not reported: `emit` releases the slot and sends nothing.
        _ => r.op = 0,
    }
    emit(ctx, slot.index, kind as u32)
}

#[inline(always)]
fn now() -> u64 {
    unsafe { h::bpf_ktime_get_ns() }
}

/// The hot path: a plain write continuing the task's open run through the
/// same descriptor, which still refers to the same open file. Extends the
/// run and returns true; anything else returns false for the full path.
#[inline(always)]
fn extend_run(c: &Config, nr: u32, n: u64, fd: u64, pos_arg: impl Fn() -> u64) -> bool {
    let Some(p) = RUNS.get_ptr_mut(h_pid_tgid()) else { return false };
    let run = unsafe { &mut *p };
    let fd = fd & 0xffff_ffff;
    if run.ended != 0 || run.fd as u64 != fd || n == 0 {
        return false;
    }
    // task -> files -> fdt -> fd[] -> file: proves the descriptor still names
    // the run's open file (so its inode is the run's too). fd tables only
    // grow, so the bound was checked when the run opened.
    let task = unsafe { h::bpf_get_current_task_btf() } as u64;
    let files = btf_load(task, c.offsets.task_files);
    let fdt = btf_load(files, c.offsets.files_fdt);
    let arr = btf_load(fdt, c.offsets.fdt_fd);
    let file: u64 = kread(arr, (fd * 8) as u32);
    if file != run.file {
        return false;
    }
    let start = match nr {
        nr::WRITE | nr::WRITEV => (kread::<i64>(file, c.offsets.file_pos) as u64).wrapping_sub(n),
        _ => {
            if kread::<u32>(file, c.offsets.file_flags) & O_APPEND != 0 {
                return false; // pwrite appending: let the full path work it out
            }
            pos_arg()
        }
    };
    let t = now();
    if run.end != start || t.wrapping_sub(run.t0) >= RUN_WINDOW_NS {
        return false;
    }
    unsafe { core::ptr::write_volatile(&mut run.end, start + n) };
    // Extended after the window closed: the agent may have read the run
    // already, so let the full path report this write too.
    now().wrapping_sub(run.t0) < RUN_WINDOW_NS
}

/// A write: `[start, start + n)` of the file `file` (identity `dev`, `ino`).
#[derive(Clone, Copy)]
struct Written {
    fd: u32,
    file: u64,
    dev: u32,
    ino: u64,
    start: u64,
    n: u64,
}

/// A write of `[start, start + n)` through `file`: extends the task's run
/// when it continues it, else reports it and opens a new run.
// Separate BPF functions (not inlined) keep each frame's stack small: the
// verifier allows 512 bytes for a whole call chain.
#[inline(never)]
fn write(ctx: &BtfTracePointContext, w: &Written) -> Option<()> {
    let Written { fd, file, dev, ino, start, n } = *w;
    let key = h_pid_tgid();
    let t = now();
    if let Some(p) = RUNS.get_ptr_mut(key) {
        let run = unsafe { &mut *p };
        if run.ended == 0
            && run.file == file
            && run.ino == ino
            && run.dev == dev
            && run.end == start
            && t.wrapping_sub(run.t0) < RUN_WINDOW_NS
        {
            unsafe { core::ptr::write_volatile(&mut run.end, start + n) };
            if now().wrapping_sub(run.t0) < RUN_WINDOW_NS {
                return Some(());
            }
            // Extended after the window closed: the agent may have read the
            // run already, so this write reports itself too.
            let slot = claim()?;
            slot.report().set_fd(op::WRITE, file, start, n);
            return emit(ctx, slot.index, Walks::File as u32);
        }
        if run.ended == 0 {
            end_run(ctx, key, run);
        }
    }
    let slot = claim()?;
    let s = unsafe { &mut *slot.s };
    // Field by field, in the slot: a `Run` literal would be built on the stack.
    let run = &mut s.run;
    run.file = file;
    run.ino = ino;
    run.dev = dev;
    run.ended = 0;
    run.start = start;
    run.first_end = start + n;
    run.end = start + n;
    run.t0 = t;
    run.fd = fd;
    run._pad = 0;
    let r = &mut s.report;
    r.set_fd(op::WRITE, file, start, n);
    // Insert before reporting, so the agent finds the run when it looks.
    if RUNS.insert(key, &s.run, 0).is_ok() {
        r.flags = flags::RUN_OPEN;
        r.aux = key;
        r.ktime = t;
    }
    emit(ctx, slot.index, Walks::File as u32)
}

/// Reports the end of a run: the range its suppressed writes covered.
#[inline(never)]
fn end_run(ctx: &BtfTracePointContext, key: u64, run: &mut Run) {
    run.ended = RUN_ENDED;
    let Some(slot) = claim() else { return };
    let r = slot.report();
    r.set_fd(op::WRITE, 0, run.first_end, run.end - run.first_end);
    r.flags = flags::RUN_END;
    r.aux = key;
    r.ktime = run.t0;
    r.dev = run.dev;
    r.ino = run.ino;
    let _ = emit(ctx, slot.index, Walks::Nothing as u32);
}

/// Appends the dentry names from `dentry` up to its filesystem's root (leaf
/// first, each NUL-terminated) at `*cur`. Returns (bytes, rooted).
#[inline(always)]
fn walk(c: &Config, body: *mut u8, cur: &mut u32, dentry: u64) -> (u32, bool) {
    let start = *cur;
    let mut d = dentry;
    let mut rooted = false;
    for _ in 0..MAX_DEPTH {
        if d == 0 {
            break;
        }
        let parent: u64 = kread(d, c.offsets.dentry_parent);
        if parent == d || parent == 0 {
            rooted = true;
            break;
        }
        let name: u64 = kread(d, c.offsets.dentry_name_ptr);
        let at = *cur & MASK;
        let r = unsafe {
            h::bpf_probe_read_kernel_str(body.add(at as usize) as *mut c_void, NAME_MAX, name as *const c_void)
        };
        if r <= 0 {
            break;
        }
        *cur = at + r as u32;
        d = parent;
    }
    (*cur - start, rooted)
}

/// Appends a NUL-terminated user string at `*cur`; returns its length.
#[inline(always)]
fn user_str(body: *mut u8, cur: &mut u32, ptr: u64) -> u32 {
    let at = *cur & MASK;
    let r = unsafe { h::bpf_probe_read_user_str(body.add(at as usize) as *mut c_void, PATH_MAX, ptr as *const c_void) };
    if r <= 0 {
        return 0;
    }
    *cur = at + r as u32;
    r as u32
}

/// The dentry a path-based call's path starts from: the task's root
/// directory for an absolute path (a chrooted task's `/` is its own), else
/// the directory `dirfd` names, or the current working directory.
#[inline(always)]
fn base_dentry(c: &Config, dirfd: i64, absolute: bool) -> u64 {
    if absolute || dirfd == AT_FDCWD {
        let task = unsafe { h::bpf_get_current_task() };
        let fs: u64 = kread(task, c.offsets.task_fs);
        if fs == 0 {
            return 0;
        }
        kread(fs, if absolute { c.offsets.fs_root_dentry } else { c.offsets.fs_pwd_dentry })
    } else {
        let f = fd_file(c, dirfd as u64);
        if f == 0 {
            return 0;
        }
        kread(f, c.offsets.file_dentry)
    }
}

#[inline(always)]
fn dentry_dev(c: &Config, dentry: u64) -> u32 {
    let sb: u64 = kread(dentry, c.offsets.dentry_sb);
    if sb == 0 {
        return 0;
    }
    kread(sb, c.offsets.sb_dev)
}

/// Sends the report of slot `index` of this CPU (claimed by `claim`) as one
/// record, then releases the slot.
///
/// `walks` is a constant at every call site, so the verifier checks only the
/// path assembly each site can reach: it checks a function once per call
/// site, and the dentry walks are most of what it processes (6.1's verifier
/// took 442,503 instructions when every site could reach every walk).
#[inline(never)]
fn emit(ctx: &BtfTracePointContext, index: u32, walks: u32) -> Option<()> {
    let mask = SLOTS.get_ptr_mut(0)?;
    let ret = match SCRATCH.get_ptr_mut(index) {
        Some(s) => emit_in(ctx, cfg(), unsafe { &mut *s }, walks),
        None => None,
    };
    release_slot(mask, index);
    ret
}

#[inline(always)]
fn claim_slot(mask: *mut u64) -> Option<u32> {
    for i in 0..SLOTS_PER_CPU {
        let bit = 1u64 << i;
        if atomic_fetch_or(mask, bit) & bit == 0 {
            return Some(i);
        }
    }
    None
}

#[inline(always)]
fn release_slot(mask: *mut u64, slot: u32) {
    atomic_fetch_and(mask, !(1u64 << slot));
}

// BPF_ATOMIC with BPF_FETCH (kernel >= 5.12). core's atomics are not available
// for the bpf target, so these say it in BPF assembly.
#[inline(always)]
fn atomic_fetch_add(p: *mut u64, mut v: u64) -> u64 {
    unsafe { core::arch::asm!("{v} = atomic_fetch_add((u64 *)({p} + 0), {v})", p = in(reg) p, v = inout(reg) v) };
    v
}

#[inline(always)]
fn atomic_fetch_or(p: *mut u64, mut v: u64) -> u64 {
    unsafe { core::arch::asm!("{v} = atomic_fetch_or((u64 *)({p} + 0), {v})", p = in(reg) p, v = inout(reg) v) };
    v
}

#[inline(always)]
fn atomic_fetch_and(p: *mut u64, mut v: u64) -> u64 {
    unsafe { core::arch::asm!("{v} = atomic_fetch_and((u64 *)({p} + 0), {v})", p = in(reg) p, v = inout(reg) v) };
    v
}

#[inline(always)]
fn emit_in(ctx: &BtfTracePointContext, c: &Config, s: &mut Scratch, walks: u32) -> Option<()> {
    let r = &s.report;
    if r.op == 0 {
        return None;
    }
    // The header is written in place, field by field (see `Scratch`).
    let hdr = &mut s.hdr;
    hdr.op = r.op;
    hdr.flags = r.flags;
    hdr.aux_len = 0;
    hdr.offset = r.offset;
    hdr.len = r.len;
    hdr.aux = r.aux;
    hdr.tgid = (h_pid_tgid() >> 32) as u32;
    hdr.ktime_ns = if r.ktime != 0 { r.ktime } else { now() };
    hdr.dev = r.dev;
    hdr.ino = r.ino;
    hdr.mode = 0;
    for p in hdr.parts.iter_mut() {
        p.dev = 0;
        p.walk_len = 0;
        p.tail_len = 0;
        p.flags = 0;
        p._pad = [0; 3];
    }
    let body = s.body.as_mut_ptr();
    let mut cur = 0u32;
    if walks == Walks::File as u32 && r.file != 0 {
        let (dev, ino, mode) = file_identity(c, r.file);
        hdr.dev = dev;
        hdr.ino = ino;
        hdr.mode = mode as u32;
        let dentry: u64 = kread(r.file, c.offsets.file_dentry);
        let (len, rooted) = walk(c, body, &mut cur, dentry);
        let p = &mut hdr.parts[0];
        p.dev = dev;
        p.walk_len = len as u16;
        p.flags = part::PRESENT | if rooted { part::ROOTED } else { 0 };
    } else if walks == Walks::Paths as u32 {
        for i in 0..2 {
            if i >= r.npaths as usize {
                break;
            }
            let (dirfd, ptr) = r.paths[i];
            // An absolute path starts at the task's root: peek at its
            // first byte.
            let mut first = 0u8;
            unsafe { h::bpf_probe_read_user(&mut first as *mut u8 as *mut c_void, 1, ptr as *const c_void) };
            let absolute = first == b'/';
            let base = base_dentry(c, dirfd, absolute);
            let p = &mut hdr.parts[i];
            p.flags = part::PRESENT | if absolute { part::ABSOLUTE } else { 0 };
            p.dev = dentry_dev(c, base);
            let (len, rooted) = walk(c, body, &mut cur, base);
            p.walk_len = len as u16;
            if rooted {
                p.flags |= part::ROOTED;
            }
            p.tail_len = user_str(body, &mut cur, ptr) as u16;
            if p.tail_len == 0 {
                // Unreadable (the kernel has read it, so rare): without it
                // the record would name the base directory itself.
                hdr.flags |= flags::PATH_INCOMPLETE;
            }
        }
        if r.aux_str != 0 {
            hdr.aux_len = user_str(body, &mut cur, r.aux_str) as u16;
            if hdr.aux_len == 0 {
                hdr.flags |= flags::PATH_INCOMPLETE;
            }
        }
    }
    let mut size = HEADER_SIZE as u32 + cur;
    if size > MAX_RECORD as u32 {
        size = MAX_RECORD as u32;
        hdr.flags |= flags::PATH_INCOMPLETE;
        warn!(ctx, "lifeline: path too long for one record (op {})", r.op);
    }
    hdr.seq = next_seq();
    // Wake the reader only when it has caught up (the ring was empty); while
    // it is behind, it drains everything at its next pass anyway. One wakeup
    // per write would cost more than the write itself.
    let ring = &EVENTS as *const RingBuf as *mut c_void;
    let pending = unsafe { h::bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) };
    let wake = if pending == 0 { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    // The bound must sit on the very register passed as the length: LLVM
    // checks `size > MAX_RECORD` on a copy, which 6.18's verifier follows
    // but 6.1's does not ("R3 unbounded memory access"). The mask changes no
    // value (size <= MAX_RECORD) and stays inside `Scratch` (the header, then
    // 2 * MAX_RECORD + 4096 bytes).
    let size = (core::hint::black_box(size) as u64) & (2 * MAX_RECORD as u64 - 1);
    let ret = unsafe { h::bpf_ringbuf_output(ring, hdr as *mut EventHeader as *mut c_void, size, wake) };
    if ret < 0 {
        bump(stat::LOST);
    } else {
        bump(stat::EMITTED);
    }
    Some(())
}

#[inline(always)]
fn next_seq() -> u64 {
    match SEQ.get_ptr_mut(0) {
        Some(p) => atomic_fetch_add(p, 1),
        None => 0,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
