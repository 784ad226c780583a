//! The contract between Lifeline's kernel programs (`lifeline-ebpf`) and the
//! agent's capture layer (`lifeline-capture`): the record layout that travels
//! through the ring buffer, the operation codes, the syscalls hooked and the
//! kernel structure offsets the agent computes from BTF at load time.
//!
//! # Record layout
//! Each ring-buffer record is an [`EventHeader`] followed by a body:
//! for each of the header's two [`PathPart`]s, `walk_len` bytes of dentry
//! names (leaf first, each NUL-terminated: the walk from the object up to its
//! filesystem's root) then `tail_len` bytes of a user-supplied path string
//! (NUL-terminated, relative to the walked directory: the dirfd's, the
//! working directory, or for a tail starting with `/` the caller's root
//! directory); then `aux_len` bytes of an auxiliary string (a symlink's
//! target).
#![no_std]

/// Operation codes (`EventHeader::op`).
pub mod op {
    /// Bytes `[offset, offset + len)` of the file were written.
    pub const WRITE: u8 = 1;
    /// The file's length was set to `offset`.
    pub const TRUNCATE: u8 = 2;
    /// The file was opened with O_CREAT or O_TRUNC (see `flags`).
    pub const OPEN: u8 = 3;
    pub const MKDIR: u8 = 4;
    pub const UNLINK: u8 = 5;
    pub const RMDIR: u8 = 6;
    /// path 0 was renamed to path 1 (`aux` holds renameat2 flags).
    pub const RENAME: u8 = 7;
    /// path 1 became a hard link to path 0.
    pub const LINK: u8 = 8;
    /// path 0 became a symlink whose target is the aux string.
    pub const SYMLINK: u8 = 9;
    /// Mode, owner, times or xattrs of the object changed.
    pub const ATTR: u8 = 10;
    /// A shared writable mapping of the file was created: its writes bypass
    /// the syscalls, so the agent must re-read the file later.
    pub const MMAP_SHARED: u8 = 11;
}

/// Bits of `EventHeader::flags`.
pub mod flags {
    /// OPEN: the open created the file (FMODE_CREATED).
    pub const CREATED: u8 = 1;
    /// OPEN: the open truncated the file (O_TRUNC).
    pub const TRUNCATED: u8 = 2;
    /// A path did not fit the record or its walk exceeded the depth limit,
    /// or a string the call named could not be read.
    pub const PATH_INCOMPLETE: u8 = 4;
    /// WRITE: the range came from fallocate (may be a hole punched).
    pub const FALLOCATE: u8 = 8;
    /// WRITE: this write opened a run (see [`Run`]): later contiguous writes
    /// by the same task to the same file within [`RUN_WINDOW_NS`] only extend
    /// the run. `aux` is the task's pid_tgid and `ktime_ns` the run's `t0`.
    pub const RUN_OPEN: u8 = 16;
    /// WRITE without a path: the run (`aux`, `ktime_ns` as for RUN_OPEN) ended;
    /// `[offset, offset + len)` is what its suppressed writes covered.
    pub const RUN_END: u8 = 32;
    /// Path-based records: the call resolved the final component of path 0
    /// through a symlink (chmod, chown, setxattr, utimes, fchmodat; fchownat,
    /// utimensat and fchmodat2 without AT_SYMLINK_NOFOLLOW; linkat with
    /// AT_SYMLINK_FOLLOW), so the object changed is the link's target. Absent,
    /// a symlink named there is the object itself (lchown, lsetxattr,
    /// AT_SYMLINK_NOFOLLOW, link): following it would name another file,
    /// perhaps one in a watched tree that nothing changed.
    pub const FOLLOW: u8 = 64;
}

/// A task's current run of contiguous writes to one file (map `RUNS`, by
/// pid_tgid). Only its task changes it; the agent reads it once the window
/// is over, when `end` can no longer grow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// `struct file *` the run writes through.
    pub file: u64,
    pub ino: u64,
    pub dev: u32,
    /// 0 while open; [`RUN_ENDED`] once its RUN_END record was emitted;
    /// [`RUN_CLOSED_EMPTY`] when it ended having absorbed nothing (no record:
    /// the agent finds it so in the map).
    pub ended: u32,
    pub start: u64,
    /// End of the run's first write (reported with RUN_OPEN).
    pub first_end: u64,
    pub end: u64,
    /// When the run opened (bpf_ktime_get_ns).
    pub t0: u64,
    /// The descriptor written through: the fast path checks that it still
    /// refers to `file`.
    pub fd: u32,
    pub _pad: u32,
}

pub const RUN_ENDED: u32 = 1;
pub const RUN_CLOSED_EMPTY: u32 = 2;

/// How long a run may absorb writes. A write that extends a run but finds,
/// after extending it, that the window has closed reports itself as well, so
/// a reader that looks after the window never misses a byte.
pub const RUN_WINDOW_NS: u64 = 2_000_000;

/// Bits of `PathPart::flags`.
pub mod part {
    /// The walk reached the filesystem's root (the path is complete).
    pub const ROOTED: u16 = 1;
    /// The tail is absolute: relative to the caller's root directory, which
    /// the walk names (a chrooted process's `/` is not the agent's).
    pub const ABSOLUTE: u16 = 2;
    /// The part is present.
    pub const PRESENT: u16 = 4;
}

/// Where one path of an event comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PathPart {
    /// Kernel dev_t (MKDEV encoding) of the walked dentry's superblock.
    pub dev: u32,
    pub walk_len: u16,
    pub tail_len: u16,
    pub flags: u16,
    pub _pad: [u16; 3],
}

/// Fixed head of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// Global sequence number, in the order the syscalls returned.
    pub seq: u64,
    pub ktime_ns: u64,
    pub tgid: u32,
    pub op: u8,
    pub flags: u8,
    pub aux_len: u16,
    /// Inode number and kernel dev_t of the object, when known (fd-based ops
    /// and opens); 0 otherwise.
    pub ino: u64,
    pub dev: u32,
    /// `i_mode` of the object when known.
    pub mode: u32,
    pub offset: u64,
    pub len: u64,
    /// Operation-specific: renameat2 flags, open flags.
    pub aux: u64,
    pub parts: [PathPart; 2],
}

pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();
/// Largest record the kernel emits (header + body).
pub const MAX_RECORD: usize = 8192;
/// Deepest directory nesting a dentry walk follows.
pub const MAX_DEPTH: u32 = 96;

/// Offsets (in bytes) of the kernel structure fields the programs read,
/// computed by the agent from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub task_files: u32,
    pub task_fs: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_dentry: u32,
    pub file_pos: u32,
    pub file_flags: u32,
    pub file_mode: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_size: u32,
    pub sb_dev: u32,
    pub dentry_parent: u32,
    pub dentry_name_len: u32,
    pub dentry_name_ptr: u32,
    pub dentry_inode: u32,
    pub dentry_sb: u32,
    pub fs_pwd_dentry: u32,
    /// The task's root directory (`chroot`): where its absolute paths start.
    pub fs_root_dentry: u32,
    /// `struct pt_regs` fields holding the syscall number and arguments
    /// (x86_64 syscall ABI: di, si, dx, r10, r8, r9).
    pub regs_orig_ax: u32,
    pub regs_args: [u32; 6],
    pub _pad: u32,
}

/// Load-time configuration of the programs (a read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    pub offsets: Offsets,
    /// The agent's own process id: its I/O is never reported.
    pub agent_tgid: u32,
    pub _pad: u32,
}

/// Indexes into the per-CPU counters map `STATS`.
pub mod stat {
    pub const EMITTED: u32 = 0;
    /// Records dropped because the ring buffer was full.
    pub const LOST: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Config {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Run {}

/// x86_64 syscall numbers of the calls hooked. The program sits on the
/// `sys_exit` tracepoint (tp_btf) and returns at once for any other number.
pub mod nr {
    pub const WRITE: u32 = 1;
    pub const OPEN: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const MMAP: u32 = 9;
    pub const PWRITE64: u32 = 18;
    pub const WRITEV: u32 = 20;
    pub const SENDFILE: u32 = 40;
    pub const TRUNCATE: u32 = 76;
    pub const FTRUNCATE: u32 = 77;
    pub const RENAME: u32 = 82;
    pub const MKDIR: u32 = 83;
    pub const RMDIR: u32 = 84;
    pub const CREAT: u32 = 85;
    pub const LINK: u32 = 86;
    pub const UNLINK: u32 = 87;
    pub const SYMLINK: u32 = 88;
    pub const CHMOD: u32 = 90;
    pub const FCHMOD: u32 = 91;
    pub const CHOWN: u32 = 92;
    pub const FCHOWN: u32 = 93;
    pub const LCHOWN: u32 = 94;
    pub const UTIME: u32 = 132;
    pub const SETXATTR: u32 = 188;
    pub const LSETXATTR: u32 = 189;
    pub const FSETXATTR: u32 = 190;
    pub const REMOVEXATTR: u32 = 197;
    pub const LREMOVEXATTR: u32 = 198;
    pub const FREMOVEXATTR: u32 = 199;
    pub const UTIMES: u32 = 235;
    pub const OPENAT: u32 = 257;
    pub const MKDIRAT: u32 = 258;
    pub const FCHOWNAT: u32 = 260;
    pub const FUTIMESAT: u32 = 261;
    pub const UNLINKAT: u32 = 263;
    pub const RENAMEAT: u32 = 264;
    pub const LINKAT: u32 = 265;
    pub const SYMLINKAT: u32 = 266;
    pub const FCHMODAT: u32 = 268;
    pub const SPLICE: u32 = 275;
    pub const UTIMENSAT: u32 = 280;
    pub const FALLOCATE: u32 = 285;
    pub const PWRITEV: u32 = 296;
    pub const RENAMEAT2: u32 = 316;
    pub const COPY_FILE_RANGE: u32 = 326;
    pub const PWRITEV2: u32 = 328;
    pub const OPENAT2: u32 = 437;
    pub const FCHMODAT2: u32 = 452;
}

/// The calls hooked, by name (for documentation and diagnostics).
pub const HOOKED_SYSCALLS: &[&str] = &[
    "write",
    "pwrite64",
    "writev",
    "pwritev",
    "pwritev2",
    "ftruncate",
    "truncate",
    "fallocate",
    "copy_file_range",
    "sendfile64",
    "splice",
    "open",
    "openat",
    "openat2",
    "creat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "utimensat",
    "utimes",
    "utime",
    "futimesat",
    "mmap",
    // Ends the task's write run.
    "close",
];
