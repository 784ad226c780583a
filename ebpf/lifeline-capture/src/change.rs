//! File modification messages: kernel records resolved to absolute paths and
//! filtered to the watched trees.
//!
//! How a record names its file, and why each rule is exact:
//! - fd-based calls (the write family, ftruncate, fchmod, opens that create
//!   or truncate): the kernel walks the open file's own dentries up to its
//!   filesystem's root; mountinfo turns (filesystem, path) into an absolute
//!   path. How the caller named the file does not matter.
//! - path-based calls (mkdir, unlink, rename, link, symlink, chmod, ...,
//!   and their `*at` forms): the kernel walks the directory the path starts
//!   from at the moment of the call — the dirfd's, the working directory, or
//!   for a path starting with `/` the caller's root (a chrooted process's
//!   `/` is its own) — and sends the path string as given. Joined here, with
//!   symlinks on the way resolved as the caller resolved them (inside its
//!   root); a final symlink is followed only when the call followed it
//!   ([`flags::FOLLOW`]): changing a symlink's own owner or times, or
//!   hard-linking a symlink, names the symlink, never its target.
//! - a base this process cannot see (another mount namespace's root or
//!   directory) is outside the watched trees, unless the record's absolute
//!   path would read as a watched one here: then it is a gap, and the trees
//!   are reconciled rather than a guess sent either way.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use lifeline_core::wirepath::normalize;
use lifeline_ebpf_common::{flags, op};

use crate::mounts::{fs_path, kernel_dev_to_user, MountTable};
use crate::record::{RawEvent, RawPath};

/// What happened to the file at `FileChange::path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Bytes `[offset, offset + len)` changed (write family, fallocate).
    Write {
        offset: u64,
        len: u64,
    },
    /// The length was set to `len`.
    Truncate {
        len: u64,
    },
    /// Opened with O_CREAT or O_TRUNC.
    Open {
        created: bool,
        truncated: bool,
    },
    Mkdir,
    Unlink,
    Rmdir,
    /// Renamed to `to` (`exchange`: the two were swapped).
    Rename {
        to: PathBuf,
        exchange: bool,
    },
    /// `to` became a hard link to this file.
    Link {
        to: PathBuf,
    },
    /// Became a symlink to `target`.
    Symlink {
        target: Vec<u8>,
    },
    /// Mode, owner, times or xattrs changed.
    Attr,
    /// Mapped shared and writable: later writes bypass syscalls.
    MmapShared,
}

/// A file modification message: one change to one path, in kernel order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    /// The kernel's sequence number.
    pub seq: u64,
    pub ktime_ns: u64,
    pub tgid: u32,
    pub path: PathBuf,
    pub kind: ChangeKind,
    /// `st_dev` and inode number of the object, when the kernel knew them
    /// (fd-based calls and opens), else 0.
    pub dev: u64,
    pub ino: u64,
}

const RENAME_EXCHANGE: u64 = 2;

/// `p` (at or below `root`) resolved as a process whose root directory is
/// `root` resolves it: every symlink on the way, absolute targets included,
/// stays inside `root` (openat2's RESOLVE_IN_ROOT), where resolving it here
/// would follow an absolute target into this process's tree (a chroot's
/// `/srv -> /data` is not the host's `/data`).
fn canonicalize_in_root(root: &Path, p: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let rel = p.strip_prefix(root).map_err(|_| std::io::Error::other("outside the caller's root"))?;
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let root_fd = std::fs::File::open(root)?;
    let rel = std::ffi::CString::new(rel.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // struct open_how: flags, mode, resolve.
    let how: [u64; 3] = [(libc::O_PATH | libc::O_CLOEXEC) as u64, 0, RESOLVE_IN_ROOT];
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root_fd.as_raw_fd(), rel.as_ptr(), how.as_ptr(), std::mem::size_of_val(&how))
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Turns records into [`FileChange`]s for the watched roots.
pub struct PathResolver {
    mounts: MountTable,
    roots: Vec<PathBuf>,
    /// Kernel dev_t of the filesystems the roots are on.
    watched_devs: Vec<u32>,
    /// When mountinfo was last re-read for a filesystem it lacked.
    reread_at: Option<std::time::Instant>,
}

/// Why a record produced no change.
#[derive(Debug, PartialEq, Eq)]
pub enum Unresolved {
    /// Outside every watched tree: not ours.
    Outside,
    /// The kernel could not give a complete path (too deep, too long, or a
    /// filesystem this process cannot see). The tree needs a rescan.
    Incomplete,
}

impl PathResolver {
    /// `roots` must be canonical absolute paths.
    pub fn new(roots: Vec<PathBuf>) -> std::io::Result<PathResolver> {
        use std::os::unix::fs::MetadataExt;
        let mut watched_devs = Vec::new();
        for r in &roots {
            watched_devs.push(crate::mounts::user_dev_to_kernel(std::fs::metadata(r)?.dev()));
        }
        Ok(PathResolver { mounts: MountTable::read()?, roots, watched_devs, reread_at: None })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    pub fn is_watched(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| p.starts_with(r))
    }

    fn base(&mut self, raw: &RawPath) -> Option<PathBuf> {
        if !raw.rooted {
            return None;
        }
        if !self.mounts.knows(raw.dev) {
            // A filesystem mounted since we last looked, or one only another
            // mount namespace sees (a container's). Look again, but not for
            // every event of a busy container.
            let stale = self.reread_at.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(1));
            if stale {
                self.reread_at = Some(std::time::Instant::now());
                if let Ok(m) = MountTable::read() {
                    self.mounts = m;
                }
            }
        }
        let candidates = self.mounts.absolute_paths(raw.dev, &fs_path(&raw.walk));
        // Several mounts can show the same file; prefer the one we watch.
        let watched = candidates.iter().find(|c| self.is_watched(c) || self.roots.iter().any(|r| r.starts_with(c)));
        watched.or(candidates.first()).cloned()
    }

    /// The absolute path of one path of a record. Paths the caller named are
    /// joined to their base lexically, then the parent directory is resolved
    /// through the filesystem when it still exists, so a symlinked directory in
    /// the caller's path is not mistaken for the link itself.
    fn path(&mut self, raw: &RawPath, follow_final: bool) -> Option<PathBuf> {
        let (root, lexical) = match (&raw.tail, raw.absolute) {
            // Absolute in the caller's root, which the kernel walked: a
            // chrooted process's `/x` is `<its root>/x` here.
            (Some(t), true) => {
                let rel = &t[t.iter().position(|b| *b != b'/').unwrap_or(t.len())..];
                let root = self.base(raw)?;
                let lexical = normalize(&root.join(OsStr::from_bytes(rel)));
                (Some(root), lexical)
            }
            (Some(t), false) => (None, normalize(&self.base(raw)?.join(OsStr::from_bytes(t)))),
            (None, _) => return self.base(raw),
        };
        // Symlinks on the way resolve as the caller's did: inside its root.
        let canonicalize = |p: &Path| match &root {
            Some(r) if r != Path::new("/") => canonicalize_in_root(r, p),
            _ => std::fs::canonicalize(p),
        };
        if follow_final {
            if let Ok(p) = canonicalize(&lexical) {
                return Some(p);
            }
        }
        match (lexical.parent(), lexical.file_name()) {
            (Some(parent), Some(name)) => match canonicalize(parent) {
                Ok(p) => Some(p.join(name)),
                Err(_) => Some(lexical),
            },
            _ => Some(lexical),
        }
    }

    /// Why a path could not be resolved: a filesystem we do not watch (and
    /// may not even see, in another mount namespace) is simply outside; only
    /// a path on a watched filesystem we failed to name is a gap.
    fn why(&self, raw: &RawPath) -> Unresolved {
        if self.watched_devs.contains(&raw.dev) {
            return Unresolved::Incomplete;
        }
        // An absolute path from a root we cannot see (another mount
        // namespace's: a container's) may reach a watched tree through that
        // namespace's own mounts (a bind mount of it at the same path, say).
        // Where it would read as a watched path here, say so rather than
        // guess either way: the tree is reconciled.
        let lexically_watched =
            || raw.tail.as_ref().is_some_and(|t| self.is_watched(&normalize(Path::new(OsStr::from_bytes(t)))));
        if raw.absolute && lexically_watched() {
            Unresolved::Incomplete
        } else {
            Unresolved::Outside
        }
    }

    pub fn resolve(&mut self, ev: &RawEvent) -> Result<FileChange, Unresolved> {
        let h = &ev.header;
        if h.flags & flags::PATH_INCOMPLETE != 0 {
            return Err(Unresolved::Incomplete);
        }
        let first = ev.paths.first().ok_or(Unresolved::Incomplete)?;
        // Follow a final symlink only where the call did (the kernel says
        // so): a symlink's own owner or times changed, or a hard link made
        // to a symlink, names the symlink, never the file it points to — a
        // restore copying a machine's symlinks (absolute targets into the
        // watched tree) would otherwise be taken for changes of the tree.
        // An empty path (AT_EMPTY_PATH) names the walked object itself.
        let follow = h.flags & flags::FOLLOW != 0 && first.tail.as_ref().is_some_and(|t| !t.is_empty());
        let path = self.path(first, follow).ok_or_else(|| self.why(first))?;
        let second = match ev.paths.get(1) {
            Some(p) => Some(self.path(p, false).ok_or_else(|| self.why(p))?),
            None => None,
        };
        let kind = match h.op {
            op::WRITE => ChangeKind::Write { offset: h.offset, len: h.len },
            op::TRUNCATE => ChangeKind::Truncate { len: h.offset },
            op::OPEN => {
                ChangeKind::Open { created: h.flags & flags::CREATED != 0, truncated: h.flags & flags::TRUNCATED != 0 }
            }
            op::MKDIR => ChangeKind::Mkdir,
            op::UNLINK => ChangeKind::Unlink,
            op::RMDIR => ChangeKind::Rmdir,
            op::RENAME => ChangeKind::Rename {
                to: second.clone().ok_or(Unresolved::Incomplete)?,
                exchange: h.aux & RENAME_EXCHANGE != 0,
            },
            op::LINK => ChangeKind::Link { to: second.clone().ok_or(Unresolved::Incomplete)? },
            op::SYMLINK => ChangeKind::Symlink { target: ev.aux_str.clone().unwrap_or_default() },
            op::ATTR => ChangeKind::Attr,
            op::MMAP_SHARED => ChangeKind::MmapShared,
            _ => return Err(Unresolved::Incomplete),
        };
        let inside = self.is_watched(&path) || second.as_deref().is_some_and(|s| self.is_watched(s));
        if !inside {
            return Err(Unresolved::Outside);
        }
        Ok(FileChange {
            seq: h.seq,
            ktime_ns: h.ktime_ns,
            tgid: h.tgid,
            path,
            kind,
            dev: if h.ino != 0 { kernel_dev_to_user(h.dev) } else { 0 },
            ino: h.ino,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_ebpf_common::EventHeader;

    /// The kernel dev_t of the filesystem of `/`, as the kernel reports
    /// it for a task whose root is ours.
    fn root_dev() -> u32 {
        use std::os::unix::fs::MetadataExt;
        crate::mounts::user_dev_to_kernel(std::fs::metadata("/").unwrap().dev())
    }

    /// A path-based record naming `path` (absolute, from our root) as its
    /// first path and, for a link, `to` as its second.
    fn record(op: u8, flags: u8, path: &Path, to: Option<&Path>) -> RawEvent {
        let part = |p: &Path| RawPath {
            dev: root_dev(),
            tail: Some(p.as_os_str().as_bytes().to_vec()),
            rooted: true,
            absolute: true,
            ..RawPath::default()
        };
        let header = EventHeader { op, flags, ..EventHeader::default() };
        RawEvent { header, paths: std::iter::once(path).chain(to).map(part).collect(), aux_str: None }
    }

    /// A symlink outside the watched tree pointing into it: the symlink's
    /// own attributes changing (no FOLLOW) is nothing of the tree; the
    /// target's changing through it (FOLLOW) is the target's change.
    #[test]
    fn a_final_symlink_is_followed_only_when_the_call_followed_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let (watched, outside) = (base.join("watched"), base.join("outside"));
        std::fs::create_dir_all(&watched).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(watched.join("x"), b"x").unwrap();
        std::os::unix::fs::symlink(watched.join("x"), outside.join("l")).unwrap();
        let mut r = PathResolver::new(vec![watched.clone()]).unwrap();

        let nofollow = record(op::ATTR, 0, &outside.join("l"), None);
        assert_eq!(r.resolve(&nofollow), Err(Unresolved::Outside));
        let follow = record(op::ATTR, flags::FOLLOW, &outside.join("l"), None);
        assert_eq!(r.resolve(&follow).unwrap().path, watched.join("x"));

        // linkat(AT_SYMLINK_FOLLOW) of a symlink inside the tree: the new
        // name is a link to the target file, not to the symlink.
        std::os::unix::fs::symlink("x", watched.join("s")).unwrap();
        let link = record(op::LINK, flags::FOLLOW, &watched.join("s"), Some(&watched.join("n")));
        let ch = r.resolve(&link).unwrap();
        assert_eq!(ch.path, watched.join("x"));
        assert_eq!(ch.kind, ChangeKind::Link { to: watched.join("n") });
        let link = record(op::LINK, 0, &watched.join("s"), Some(&watched.join("n")));
        assert_eq!(r.resolve(&link).unwrap().path, watched.join("s"));
    }

    /// An absolute path is relative to the caller's root: from a process
    /// chrooted into `dir` (the kernel walked `dir` as its root), `/<path>`
    /// is `dir/<path>`, not the watched tree of the same name; from a root
    /// this process cannot see, a path that reads as watched is a gap.
    #[test]
    fn absolute_paths_start_at_the_callers_root() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let watched = base.join("watched");
        std::fs::create_dir_all(&watched).unwrap();
        let chroot = base.join("chroot");
        std::fs::create_dir_all(chroot.join(watched.strip_prefix("/").unwrap())).unwrap();
        let mut r = PathResolver::new(vec![watched.clone()]).unwrap();

        let x = watched.join("x");
        let ours = record(op::UNLINK, 0, &x, None);
        assert_eq!(r.resolve(&ours).unwrap().path, x);

        // The walk of the chroot's directory (from /, names reversed as the
        // decoder leaves them: root first).
        let mut chrooted = record(op::UNLINK, 0, &x, None);
        chrooted.paths[0].walk = chroot.iter().skip(1).map(|c| c.as_bytes().to_vec()).collect();
        assert_eq!(r.resolve(&chrooted), Err(Unresolved::Outside));

        // Through a symlink in the chroot whose absolute target is, in our
        // root, the watched tree: the chroot's own copy is meant.
        std::os::unix::fs::symlink(&watched, chroot.join("jump")).unwrap();
        let mut jump = record(op::UNLINK, 0, Path::new("/jump/x"), None);
        jump.paths[0].walk = chrooted.paths[0].walk.clone();
        let in_chroot = chroot.join(watched.strip_prefix("/").unwrap());
        assert_eq!(r.resolve(&jump), Err(Unresolved::Outside));
        assert_eq!(canonicalize_in_root(&chroot, &chroot.join("jump")).unwrap(), in_chroot);

        let mut unseen = record(op::UNLINK, 0, &x, None);
        unseen.paths[0].dev = u32::MAX;
        assert_eq!(r.resolve(&unseen), Err(Unresolved::Incomplete));
        let mut unseen = record(op::UNLINK, 0, &base.join("elsewhere"), None);
        unseen.paths[0].dev = u32::MAX;
        assert_eq!(r.resolve(&unseen), Err(Unresolved::Outside));
    }
}
