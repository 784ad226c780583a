//! Setting a mirror entry's attributes (owner, mode, mtime) as the agent
//! sent them, by fd or by name, never following a symlink. Used by the
//! applier and by deltas, which set them on the file they rebuilt.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};

use lifeline_proto::v1::Attr;
use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fstat, futimens, utimensat, AtFlags, FileType, Gid, Mode, OFlags, Timespec,
    Timestamps, Uid, UTIME_OMIT,
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
        FileType::Symlink => set_attr_at(dir, name, attr, false, with_mtime),
        FileType::RegularFile | FileType::Directory => {
            let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
            if kind == FileType::Directory {
                flags |= OFlags::DIRECTORY;
            }
            match open_beneath(dir, name, flags, Mode::empty()) {
                Ok(fd) => {
                    let now = FileType::from_raw_mode(fstat(&fd).ctx("stat")?.st_mode);
                    if now != kind {
                        return Err("changed type while being opened".into());
                    }
                    set_attr_fd(fd.as_fd(), attr, with_mtime)
                }
                // Not allowed to open it (only when not running as root): by
                // name then, `name` having just been seen not to be a symlink.
                Err(Errno::ACCESS) => set_attr_at(dir, name, attr, true, with_mtime),
                Err(e) => Err(e).ctx("open"),
            }
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
/// directory. Ownership first: chown clears setuid/setgid bits.
pub(crate) fn set_attr_fd(fd: BorrowedFd<'_>, attr: &Attr, with_mtime: bool) -> OpResult {
    let (uid, gid) = owner(attr);
    if uid.is_some() || gid.is_some() {
        ignore_eperm(fchown(fd, uid, gid)).ctx("chown")?;
    }
    fchmod(fd, Mode::from_raw_mode(attr.mode & 0o7777)).ctx("chmod")?;
    if with_mtime {
        futimens(fd, &mtime(attr)?).ctx("set mtime")?;
    }
    Ok(())
}

/// Like [`set_attr_fd`] (with mtime) for a file whose `fstat` is `st`:
/// ownership and mode only where they differ.
pub(crate) fn set_attr_known(fd: BorrowedFd<'_>, attr: &Attr, st: &rustix::fs::Stat) -> OpResult {
    let (uid, gid) = owner(attr);
    let uid = uid.filter(|u| u.as_raw() != st.st_uid);
    let gid = gid.filter(|g| g.as_raw() != st.st_gid);
    let chowned = uid.is_some() || gid.is_some();
    if chowned {
        ignore_eperm(fchown(fd, uid, gid)).ctx("chown")?;
    }
    // chown clears setuid/setgid, so the mode goes after it.
    if chowned || st.st_mode & 0o7777 != attr.mode & 0o7777 {
        fchmod(fd, Mode::from_raw_mode(attr.mode & 0o7777)).ctx("chmod")?;
    }
    futimens(fd, &mtime(attr)?).ctx("set mtime")?;
    Ok(())
}

/// Sets attributes by name, never following a symlink: for a symlink
/// ownership and mtime only; `chmod` (for which Linux before 6.6 has no
/// no-follow variant) only when the caller has checked `name` is no symlink.
fn set_attr_at(dir: BorrowedFd<'_>, name: &OsStr, attr: &Attr, chmod: bool, with_mtime: bool) -> OpResult {
    let (uid, gid) = owner(attr);
    if uid.is_some() || gid.is_some() {
        ignore_eperm(chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)).ctx("chown")?;
    }
    if chmod {
        chmodat(dir, name, Mode::from_raw_mode(attr.mode & 0o7777), AtFlags::empty()).ctx("chmod")?;
    }
    if with_mtime {
        utimensat(dir, name, &mtime(attr)?, AtFlags::SYMLINK_NOFOLLOW).ctx("set mtime")?;
    }
    Ok(())
}
