//! Opening paths of a tree that others write to without ever following a
//! symlink on the way.
//!
//! A replicated tree holds symlinks pointing anywhere (to an ancestor, to
//! `/`), and a directory can be swapped for such a symlink at any moment. A
//! path-based `open` or `lstat` follows a symlink in every component but the
//! last, so `tree/a/b` would read `/etc/b` once `a` became a symlink to
//! `/etc`. Everything here resolves with `openat2(2)`
//! `RESOLVE_NO_SYMLINKS`: a symlink anywhere on the way fails with `ELOOP`,
//! which callers treat like a path that vanished ([`is_race`]).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

/// How [`open`] resolves: no symlink anywhere (and so no magic link).
pub const NO_SYMLINKS: ResolveFlags = ResolveFlags::NO_SYMLINKS.union(ResolveFlags::NO_MAGICLINKS);

/// `openat2` with `CLOEXEC`, retrying the `EAGAIN` it returns when it sees a
/// concurrent rename (a bounded number of times).
pub fn openat2_retrying<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    path: P,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match openat2(dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN) if tries < 32 => tries += 1,
            r => return r,
        }
    }
}

/// Opens `path` (absolute, or relative to the working directory) with
/// `flags`, refusing a symlink in any component (`ELOOP`). A trailing
/// symlink opened with `O_PATH | O_NOFOLLOW` is the symlink itself.
///
/// On kernels without `openat2` (before 5.6) it falls back to a plain
/// `open` with `O_NOFOLLOW`, which guards the last component only.
pub fn open(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    match openat2_retrying(CWD, path, flags, Mode::empty(), NO_SYMLINKS) {
        Err(Errno::NOSYS) => Ok(rustix::fs::open(path, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())?),
        r => Ok(r?),
    }
}

/// `lstat` of `path`, refusing a symlink on the way (`ELOOP`); the path
/// itself may be a symlink.
pub fn lstat(path: &Path) -> io::Result<fs::Metadata> {
    fs::File::from(open(path, OFlags::PATH | OFlags::NOFOLLOW)?).metadata()
}

/// The target of the symlink at `path` (`EINVAL`: not a symlink), refusing a
/// symlink on the way.
pub fn read_link(path: &Path) -> io::Result<PathBuf> {
    let fd = open(path, OFlags::PATH | OFlags::NOFOLLOW)?;
    // An empty name reads the link an O_PATH descriptor refers to.
    let target = rustix::fs::readlinkat(&fd, c"", Vec::new())?;
    Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
}

/// Errors that say the path is not (or no longer) what it was when it was
/// named: gone (`ENOENT`), a component that is no longer a directory
/// (`ENOTDIR`), a symlink on the way or a trailing symlink opened with
/// `O_NOFOLLOW` (`ELOOP`). The tree changed meanwhile; nothing is broken.
pub fn is_race(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || matches!(e.raw_os_error(), Some(libc_errno::ENOTDIR | libc_errno::ELOOP))
}

mod libc_errno {
    pub const ENOTDIR: i32 = 20;
    pub const ELOOP: i32 = 40;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn never_follows_a_symlink_on_the_way() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        fs::create_dir(root.join("real")).unwrap();
        fs::write(root.join("real/f"), b"x").unwrap();
        symlink(root.join("real"), root.join("link")).unwrap();
        symlink("/", root.join("slash")).unwrap();

        assert!(lstat(&root.join("real/f")).unwrap().is_file());
        // The trailing symlink is the link itself.
        assert!(lstat(&root.join("link")).unwrap().file_type().is_symlink());
        assert_eq!(read_link(&root.join("link")).unwrap(), root.join("real"));
        // Through a symlink: refused, and seen as a race.
        for p in [root.join("link/f"), root.join("slash/etc")] {
            let e = lstat(&p).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc_errno::ELOOP), "{}", p.display());
            assert!(is_race(&e));
        }
        let e = open(&root.join("link"), OFlags::RDONLY | OFlags::NOFOLLOW).unwrap_err();
        assert!(is_race(&e), "{e}");
        // Below a file: ENOTDIR, a race too.
        let e = lstat(&root.join("real/f/g")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc_errno::ENOTDIR));
        assert!(is_race(&e));
        assert!(read_link(&root.join("real/f")).is_err());
    }
}
