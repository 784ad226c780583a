//! Resolving wire paths inside a machine's mirror without ever leaving it.
//!
//! Every lookup goes through `openat2(2)` relative to a directory fd we hold,
//! with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV`: the kernel refuses `..` escapes, absolute paths, every
//! symlink (the mirror holds replicated symlinks pointing anywhere) and mount
//! crossings. Operations on the final name then use the `*at()` syscalls
//! relative to the parent directory's fd, never following a symlink. Nothing
//! here takes a path string from the network without [`validate`] first.
//!
//! [`validate`]: lifeline_core::wirepath::validate

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::unix::ffi::OsStrExt;

use rustix::fs::{fstat, mkdirat, openat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use lifeline_core::credential::MachineName;
use lifeline_store::private::create_private_dir_all;
use lifeline_store::StoreLayout;

/// How every path inside a mirror is resolved.
pub const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Mode of directories the receiver creates (the mirror's own directories and
/// missing parents) before a replicated mode is applied.
pub const NEW_DIR_MODE: u32 = 0o700;

/// Opens `path` (relative, already validated) beneath `dir` with [`RESOLVE`],
/// retrying the `EAGAIN` openat2 returns when it sees a concurrent rename.
pub fn open_beneath<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    path: P,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    lifeline_core::nofollow::openat2_retrying(dir, path, flags, mode, RESOLVE)
}

/// The type of `name` in `dir` (not following a symlink), `None` if missing.
pub fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<Option<FileType>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir` whatever it is; a directory recursively.
pub fn remove_at(dir: BorrowedFd<'_>, name: &OsStr, kind: FileType) -> rustix::io::Result<()> {
    if kind == FileType::Directory {
        return remove_tree(dir, name);
    }
    match unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        // It became a directory since it was looked at.
        Err(Errno::ISDIR) => remove_tree(dir, name),
        Err(e) => Err(e),
    }
}

/// Removes the directory `name` in `parent` and everything below it. Never
/// follows a symlink (symlinks inside are unlinked, not followed) and never
/// crosses a mount. Walks iteratively holding two directory fds at most, so
/// that no tree is too deep for it: going back up reopens `..` and checks it
/// is the very directory it came from.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    struct Frame {
        /// Entries still to remove; read in full on opening, so that removing
        /// while reading never skips one.
        pending: Vec<CString>,
        name: CString,
        id: (u64, u64),
    }
    fn open(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<(OwnedFd, Frame)> {
        let fd = open_beneath(dir, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty())?;
        let st = fstat(&fd)?;
        let mut pending = Vec::new();
        let mut entries = Dir::read_from(&fd)?;
        while let Some(entry) = entries.read() {
            let entry = entry?;
            let n = entry.file_name();
            if n != c"." && n != c".." {
                pending.push(n.to_owned());
            }
        }
        let id = (st.st_dev as u64, st.st_ino as u64);
        Ok((fd, Frame { pending, name: name.to_owned(), id }))
    }

    let name = CString::new(name.as_bytes()).map_err(|_| Errno::INVAL)?;
    let (mut cur, frame) = match open(parent, &name) {
        Ok(f) => f,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut stack = vec![frame];
    loop {
        let top = stack.last_mut().expect("stack is never empty here");
        if let Some(child) = top.pending.pop() {
            match unlinkat(&cur, &child, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                // Linux's unlink(2) says EISDIR for a directory.
                Err(Errno::ISDIR) => {
                    let (fd, frame) = open(cur.as_fd(), &child)?;
                    stack.push(frame);
                    cur = fd;
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        let done = stack.pop().expect("stack is never empty here");
        let Some(up) = stack.last() else {
            drop(cur);
            return match unlinkat(parent, &done.name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e),
            };
        };
        // `..` is never a symlink; the check below makes sure it still is the
        // directory we came down from.
        let up_fd = openat(
            &cur,
            c"..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&up_fd)?;
        if (st.st_dev as u64, st.st_ino as u64) != up.id {
            return Err(Errno::STALE);
        }
        cur = up_fd;
        match unlinkat(&cur, &done.name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
}

/// A machine's mirror directory, `<store>/mirror/<machine>/`, held open.
#[derive(Debug, Clone)]
pub struct Mirror {
    root: Arc<OwnedFd>,
    path: PathBuf,
}

impl Mirror {
    /// Opens (creating it if missing) the mirror of `machine` under `store`.
    /// `store` is the receiver's own, trusted directory.
    pub fn open(store: &StoreLayout, machine: &MachineName) -> io::Result<Mirror> {
        let mirrors = store.mirrors();
        create_private_dir_all(&mirrors)?;
        let top = rustix::fs::open(&mirrors, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| with_path(e.into(), "open", &mirrors))?;
        let name = machine.as_str();
        match mkdirat(&top, name, Mode::from_raw_mode(NEW_DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(with_path(e.into(), "create", &mirrors.join(name))),
        }
        let root = open_beneath(top.as_fd(), name, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|e| with_path(e.into(), "open", &mirrors.join(name)))?;
        Ok(Mirror { root: Arc::new(root), path: mirrors.join(name) })
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The mirror's local path (for logs and listings).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// At most this many parent directories stay open in a [`MirrorResolver`]'s cache.
const CACHE_LIMIT: usize = 128;

/// Resolves the parent directories of wire paths in one mirror, caching the
/// open directory fds by wire path.
///
/// The cache holds the invariant "the fd cached for `p` is the directory at
/// `p`". Only this resolver's owner changes the mirror (one replication stream
/// per machine at a time), and a cached path can only change meaning when a
/// directory is removed, replaced or renamed: whoever does that must call
/// [`MirrorResolver::forget_dirs`].
/// How many implied directories one acknowledgement names at most.
pub const IMPLIED_MAX: usize = 16;

#[derive(Debug)]
pub struct MirrorResolver {
    mirror: Mirror,
    cache: HashMap<Vec<u8>, Arc<OwnedFd>>,
    /// Directory paths created (or replaced) on the way to another object
    /// since [`MirrorResolver::take_implied`] (the first [`IMPLIED_MAX`]).
    implied: Vec<Vec<u8>>,
}

/// A wire path split into its parent directory's wire path and final name.
pub fn split(wire: &[u8]) -> (&[u8], &OsStr) {
    match wire.iter().rposition(|b| *b == b'/') {
        Some(i) => (&wire[..i], OsStr::from_bytes(&wire[i + 1..])),
        None => (b"", OsStr::from_bytes(wire)),
    }
}

impl MirrorResolver {
    pub fn new(mirror: Mirror) -> MirrorResolver {
        MirrorResolver { mirror, cache: HashMap::new(), implied: Vec::new() }
    }

    /// The directory paths that had to be created since the last call.
    pub fn take_implied(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.implied)
    }

    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// Forgets every cached directory; to be called after a directory was
    /// removed, replaced or renamed.
    pub fn forget_dirs(&mut self) {
        self.cache.clear();
    }

    /// The directory at wire path `dir` (validated; empty for the mirror's
    /// root), as an `O_PATH` fd. `None` if it does not exist as a directory
    /// in the mirror (missing, or a component is a symlink or not a
    /// directory) and `create` is false. With `create`, missing directories
    /// are made and symlinks or non-directories on the way are replaced by
    /// directories: the source is the truth.
    pub fn dir(&mut self, dir: &[u8], create: bool) -> io::Result<Option<Arc<OwnedFd>>> {
        if dir.is_empty() {
            return Ok(Some(self.mirror.root.clone()));
        }
        if let Some(fd) = self.cache.get(dir) {
            return Ok(Some(fd.clone()));
        }
        let fd = match open_beneath(self.mirror.root(), dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) if !create => return Ok(None),
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                if self.implied.len() < IMPLIED_MAX {
                    self.implied.push(dir.to_vec());
                }
                self.walk_create(dir)?
            }
            Err(e) => return Err(e.into()),
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        let fd = Arc::new(fd);
        self.cache.insert(dir.to_vec(), fd.clone());
        Ok(Some(fd))
    }

    /// Walks `dir` one component at a time from the root, creating or
    /// replacing what is needed.
    fn walk_create(&mut self, dir: &[u8]) -> io::Result<OwnedFd> {
        let mut cur: Option<OwnedFd> = None;
        for comp in dir.split(|b| *b == b'/') {
            let parent = cur.as_ref().map_or(self.mirror.root(), |fd| fd.as_fd());
            cur = Some(step_create(parent, OsStr::from_bytes(comp))?);
        }
        Ok(cur.expect("a non-empty wire path has a component"))
    }
}

/// Opens directory `name` in `dir`, creating it if missing and replacing a
/// symlink or non-directory there by a directory.
fn step_create(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    for _ in 0..8 {
        match open_beneath(dir, name, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => match mkdirat(dir, name, Mode::from_raw_mode(NEW_DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            },
            // A symlink (refused by RESOLVE_NO_SYMLINKS) or not a directory.
            Err(Errno::LOOP | Errno::NOTDIR) => match unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT | Errno::ISDIR) => {}
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("directory {:?} keeps changing while being created", name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn mirror(store: &Path) -> Mirror {
        Mirror::open(&StoreLayout::new(store), &MachineName::new("m").unwrap()).unwrap()
    }

    #[test]
    fn split_wire_paths() {
        assert_eq!(split(b"a"), (&b""[..], OsStr::new("a")));
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], OsStr::new("c")));
    }

    #[test]
    fn dir_replaces_symlinks_and_files_on_the_way() {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let m = mirror(store.path());
        let root = m.path().to_path_buf();
        symlink(outside.path(), root.join("a")).unwrap();
        let mut r = MirrorResolver::new(m);
        assert!(r.dir(b"a/b", false).unwrap().is_none());
        let fd = r.dir(b"a/b", true).unwrap().unwrap();
        assert!(root.join("a/b").is_dir() && !root.join("a").is_symlink());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        rustix::fs::mkdirat(&*fd, "c", Mode::from_raw_mode(0o755)).unwrap();
        assert!(root.join("a/b/c").is_dir());

        fs::write(root.join("f"), b"x").unwrap();
        r.forget_dirs();
        r.dir(b"f/g", true).unwrap().unwrap();
        assert!(root.join("f/g").is_dir());
    }

    #[test]
    fn remove_tree_never_follows_symlinks() {
        let store = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"keep").unwrap();
        let m = mirror(store.path());
        let root = m.path().to_path_buf();
        fs::create_dir_all(root.join("t/a/b")).unwrap();
        fs::write(root.join("t/a/b/f"), b"x").unwrap();
        symlink(outside.path(), root.join("t/a/out")).unwrap();
        symlink(outside.path().join("keep"), root.join("t/keep")).unwrap();
        remove_tree(m.root(), OsStr::new("t")).unwrap();
        assert!(!root.join("t").exists());
        assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"keep");
        // Removing what is missing is fine.
        remove_tree(m.root(), OsStr::new("t")).unwrap();
    }

    #[test]
    fn remove_tree_handles_deep_trees() {
        let store = tempfile::tempdir().unwrap();
        let m = mirror(store.path());
        let mut r = MirrorResolver::new(m);
        let deep = vec!["d"; 1500].join("/");
        r.dir(deep.as_bytes(), true).unwrap().unwrap();
        remove_tree(r.mirror().root(), OsStr::new("d")).unwrap();
        assert_eq!(fs::read_dir(r.mirror().path()).unwrap().count(), 0);
    }
}
