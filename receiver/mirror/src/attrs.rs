//! Setting a mirror entry's attributes (owner, mode, mtime) as the agent
//! sent them, by fd or by name, never following a symlink, and reading back
//! the mode it sent. Used by the applier, by deltas, which set them on the
//! file they rebuilt, and by listings. Setuid and setgid bits are never
//! set on an entry: [`set_mode`] keeps them beside it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use lifeline_proto::v1::Attr;
use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fgetxattr, fremovexattr, fsetxattr, fstat, futimens, statat, utimensat, AtFlags,
    FileType, Gid, Mode, OFlags, Stat, Timespec, Timestamps, Uid, XattrFlags, UTIME_OMIT,
};
use rustix::io::Errno;

use crate::op_error::{Context, OpResult};
use crate::safepath::open_beneath;

/// Sets the attributes of `name` in `dir`, which was just seen to be of type
/// `kind`, never following a symlink.
pub(crate) fn set_attr_existing(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    kind: FileType,
    attr: &Attr,
    with_mtime: bool,
) -> OpResult {
    match kind {
        FileType::Symlink => set_symlink_attr(dir, name, attr, with_mtime),
        FileType::RegularFile | FileType::Directory => {
            let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
            if kind == FileType::Directory {
                flags |= OFlags::DIRECTORY;
            }
            let fd = match open_beneath(dir, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                // Not allowed to open it (only when not running as root, for
                // an entry of ours we may not read): let its owner read it,
                // by name (`name` having just been seen not to be a symlink),
                // then set everything by descriptor.
                Err(Errno::ACCESS) => {
                    let now = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ctx("stat")?.st_mode;
                    if FileType::from_raw_mode(now) != kind {
                        return Err("changed type while being opened".into());
                    }
                    let readable = if kind == FileType::Directory { 0o700 } else { 0o600 };
                    chmodat(dir, name, Mode::from_raw_mode((now & 0o777) | readable), AtFlags::empty())
                        .ctx("chmod to open it")?;
                    open_beneath(dir, name, flags, Mode::empty()).ctx("open")?
                }
                Err(e) => return Err(e).ctx("open"),
            };
            let st = fstat(&fd).ctx("stat")?;
            if FileType::from_raw_mode(st.st_mode) != kind {
                return Err("changed type while being opened".into());
            }
            set_attr_known(fd.as_fd(), attr, &st, with_mtime)
        }
        other => Err(format!("not a file, directory or symlink ({other:?})")),
    }
}

fn owner(attr: &Attr) -> (Option<Uid>, Option<Gid>) {
    // u32::MAX (-1) means "leave as is" to chown(2).
    let uid = attr.uid.filter(|u| *u != u32::MAX).map(Uid::from_raw);
    let gid = attr.gid.filter(|g| *g != u32::MAX).map(Gid::from_raw);
    (uid, gid)
}

fn mtime(attr: &Attr) -> Result<Timestamps, String> {
    if attr.mtime_nsec >= 1_000_000_000 {
        return Err(format!("invalid mtime nanoseconds {}", attr.mtime_nsec));
    }
    Ok(Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: attr.mtime_sec, tv_nsec: attr.mtime_nsec.into() },
    })
}

/// Ignores EPERM from chown: an unprivileged receiver keeps its own ownership.
fn ignore_eperm(r: Result<(), Errno>) -> Result<(), Errno> {
    match r {
        Err(Errno::PERM) => Ok(()),
        r => r,
    }
}

/// Sets ownership, mode and (with `with_mtime`) mtime on an open file or
/// directory whose `fstat` is `st`: ownership and mode only where they differ.
pub(crate) fn set_attr_known(fd: BorrowedFd<'_>, attr: &Attr, st: &Stat, with_mtime: bool) -> OpResult {
    let (uid, gid) = owner(attr);
    let uid = uid.filter(|u| u.as_raw() != st.st_uid);
    let gid = gid.filter(|g| g.as_raw() != st.st_gid);
    if uid.is_some() || gid.is_some() {
        ignore_eperm(fchown(fd, uid, gid)).ctx("chown")?;
    }
    // After the chown, which would clear setuid/setgid bits (the file never
    // has any, but the order keeps it so should that ever change).
    set_mode(fd, attr.mode, st.st_mode & 0o7777)?;
    if with_mtime {
        futimens(fd, &mtime(attr)?).ctx("set mtime")?;
    }
    Ok(())
}

/// Name of the extended attribute that keeps a mirror entry's replicated
/// mode when it has setuid or setgid bits, which the entry itself never has
/// (see [`set_mode`]). Octal text, as `getfattr` shows it. A `user.` one:
/// `trusted.` would need CAP_SYS_ADMIN, and the receiver may run
/// unprivileged; `user.` ones exist on regular files and directories only,
/// the only entries with modes that matter (symlinks' are ignored).
pub const MODE_XATTR: &str = "user.lifeline.mode";

/// S_ISUID | S_ISGID: never on a mirror entry, whatever the machine sent.
const PRIVILEGED: u32 = 0o6000;

/// S_ISVTX, the hint that an entry's mode is in [`MODE_XATTR`]. See [`set_mode`].
const HINT: u32 = 0o1000;

/// The mode a mirror entry gets on disk for the replicated `mode`.
fn disk_mode(mode: u32) -> u32 {
    let mode = mode & 0o7777;
    if mode & PRIVILEGED == 0 {
        mode
    } else {
        (mode & !PRIVILEGED) | HINT
    }
}

/// Gives the entry open as `fd`, whose mode is `now` (`& 0o7777`), the
/// replicated `mode`. The one place that sets a mirror entry's mode.
///
/// A setuid-root binary copied from a machine must not become one on the
/// receiver host, so the entry gets `mode` without S_ISUID and S_ISGID,
/// never holding them even for an instant (the applier creates files with
/// `& 0o777`, deltas with 0600, directories with 0700), and the full mode
/// goes to [`MODE_XATTR`], for listings (the agent compares modes and would
/// otherwise send the file again forever), restores and history.
///
/// Reading an xattr per entry would triple a `ListTree`'s cost (`list_cost`
/// in `listing.rs`: 100,000 files listed in 0.24 s, one open and fgetxattr
/// each 0.47 s more), so the entry also gets S_ISVTX, which `lstat` shows
/// at no cost: only entries that have it are looked up. The hint is sound
/// because this function is the only writer of both: whenever the xattr
/// is present, the entry has S_ISVTX (the xattr is written before the mode
/// that carries the hint, and removed before a mode without it; a crash in
/// between leaves an xattr that [`original_mode_fd`] sees disagree with the
/// entry's mode, and ignores). S_ISVTX means nothing on a regular file; on a
/// directory it only restricts deleting others' entries, and the receiver
/// owns them all or is root. A machine's own sticky mode (no setuid or
/// setgid) is kept as is, and costs its entry one xattr lookup in listings.
pub(crate) fn set_mode(fd: BorrowedFd<'_>, mode: u32, now: u32) -> OpResult {
    let want = disk_mode(mode);
    if mode & PRIVILEGED != 0 {
        let value = format!("{:o}", mode & 0o7777);
        with_owner_write(fd, now, || fsetxattr(fd, MODE_XATTR, value.as_bytes(), XattrFlags::empty()))
            .map_err(|e| xattr_error(e, "keep the setuid/setgid mode"))?;
    } else if (now | want) & HINT != 0 {
        // Whatever the xattr holds is no longer true; and one a crash left
        // on an entry without the hint must not become true again when the
        // machine's own sticky bit gives it the hint.
        match with_owner_write(fd, now, || fremovexattr(fd, MODE_XATTR)) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(xattr_error(e, "remove the kept mode")),
        }
    }
    if want != now {
        fchmod(fd, Mode::from_raw_mode(want)).ctx("chmod")?;
    }
    Ok(())
}

/// Runs `f` (setting or removing a user xattr, which needs write permission
/// on the entry), once more after giving the owner write permission if
/// that was missing: an unprivileged receiver owns its entries but may have
/// made them read-only. The entry's mode is set right after.
fn with_owner_write(fd: BorrowedFd<'_>, now: u32, f: impl Fn() -> Result<(), Errno>) -> Result<(), Errno> {
    match f() {
        Err(Errno::ACCESS | Errno::PERM) if now & 0o200 == 0 => {
            fchmod(fd, Mode::from_raw_mode((now & !PRIVILEGED) | 0o200))?;
            f()
        }
        r => r,
    }
}

fn xattr_error(e: Errno, what: &str) -> String {
    if e == Errno::NOTSUP {
        format!(
            "{what} in the xattr {MODE_XATTR}: the mirror's filesystem has no user extended attributes \
             (put the store on ext4, XFS, btrfs or tmpfs of Linux 6.6 or later, or mount it with user_xattr)"
        )
    } else {
        format!("{what} in the xattr {MODE_XATTR}: {}", std::io::Error::from(e))
    }
}

/// The mode the machine sent for the mirror entry open as `fd`, whose `fstat`
/// mode is `st_mode`: what [`MODE_XATTR`] keeps for an entry with the hint
/// (see [`set_mode`]), else the entry's own. For listings, restores and
/// history, which must see what the machine has.
pub fn original_mode_fd(fd: BorrowedFd<'_>, st_mode: u32) -> std::io::Result<u32> {
    let now = st_mode & 0o7777;
    if now & HINT == 0 {
        return Ok(now);
    }
    let mut buf = [0u8; 16];
    match fgetxattr(fd, MODE_XATTR, &mut buf[..]) {
        Ok(n) => {
            let kept = std::str::from_utf8(&buf[..n]).ok().and_then(|t| u32::from_str_radix(t, 8).ok());
            // One that the entry's mode does not match was left by a crash
            // between the two writes of `set_mode`: the entry's mode is the
            // truth then (and the machine will send it again).
            Ok(kept.filter(|&m| m & !0o7777 == 0 && disk_mode(m) == now).unwrap_or(now))
        }
        // Not one this receiver stripped (a machine's own sticky bit), or
        // one it cannot read (an unprivileged receiver's entry it may not
        // read): the entry's mode, which at worst makes the machine send
        // the entry again.
        Err(Errno::NODATA | Errno::NOTSUP | Errno::ACCESS | Errno::RANGE) => Ok(now),
        Err(e) => Err(e.into()),
    }
}

/// [`original_mode_fd`] for the entry `name` in `dir` whose `lstat` mode is
/// `st_mode`, opening it only if it has the hint (never following a
/// symlink). An entry gone since is reported with `st_mode`.
pub fn original_mode_at(dir: BorrowedFd<'_>, name: &OsStr, st_mode: u32) -> std::io::Result<u32> {
    let now = st_mode & 0o7777;
    let kind = FileType::from_raw_mode(st_mode);
    if now & HINT == 0 || !matches!(kind, FileType::RegularFile | FileType::Directory) {
        return Ok(now);
    }
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    match open_beneath(dir, name, flags, Mode::empty()) {
        Ok(fd) => original_mode_fd(fd.as_fd(), fstat(&fd)?.st_mode),
        Err(Errno::NOENT | Errno::LOOP | Errno::ACCESS) => Ok(now),
        Err(e) => Err(e.into()),
    }
}

/// Checks the store's filesystem has user extended attributes, without
/// which the mirror could not keep setuid/setgid bits off its files, by
/// setting and removing one on the mirrors' directory `dir`: a receiver
/// refuses to start rather than store such bits or lose them.
pub fn probe_user_xattrs(dir: &std::path::Path) -> anyhow::Result<()> {
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let name = "user.lifeline.probe";
    match fsetxattr(&fd, name, b"1", XattrFlags::empty()).and_then(|()| fremovexattr(&fd, name)) {
        Ok(()) => Ok(()),
        Err(e) => anyhow::bail!(
            "{}: the store's filesystem must support user extended attributes (the mirror keeps setuid and \
             setgid bits in them, never on its files): put the store on ext4, XFS, btrfs or tmpfs of Linux 6.6 \
             or later, or mount it with user_xattr ({})",
            dir.display(),
            std::io::Error::from(e)
        ),
    }
}

/// Sets a symlink's ownership and (with `with_mtime`) mtime by name,
/// never following it (a symlink's mode means nothing).
fn set_symlink_attr(dir: BorrowedFd<'_>, name: &OsStr, attr: &Attr, with_mtime: bool) -> OpResult {
    let (uid, gid) = owner(attr);
    if uid.is_some() || gid.is_some() {
        ignore_eperm(chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)).ctx("chown")?;
    }
    if with_mtime {
        utimensat(dir, name, &mtime(attr)?, AtFlags::SYMLINK_NOFOLLOW).ctx("set mtime")?;
    }
    Ok(())
}

/// Gives every entry under `dir` that still has S_ISUID or S_ISGID (written
/// by a receiver from before they were kept out of mirrors) what
/// [`set_mode`] would have: the bits off, its mode in [`MODE_XATTR`].
/// Returns how many. Meant to run once, before any stream is served (it
/// walks the tree by path; each entry is opened beneath `dir`, never
/// through a symlink).
pub fn strip_stored_bits(dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    if !dir.is_dir() {
        return Ok(0);
    }
    let top = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("open {}", dir.display()))?;
    let mut stripped = 0;
    for e in lifeline_core::tree::scan(dir).with_context(|| format!("walk {}", dir.display()))? {
        if e.mode & PRIVILEGED == 0
            || !matches!(e.kind, lifeline_core::tree::Kind::File | lifeline_core::tree::Kind::Dir)
        {
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let path = dir.join(&e.rel);
        let fd = match open_beneath(top.as_fd(), e.rel.as_path(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(err) => return Err(err).with_context(|| format!("open {}", path.display())),
        };
        let now = fstat(&fd).with_context(|| format!("stat {}", path.display()))?.st_mode & 0o7777;
        set_mode(fd.as_fd(), now, now).map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        stripped += 1;
    }
    Ok(stripped)
}
