//! Listing a directory tree with the metadata Lifeline replicates, and
//! comparing two listings. The agent lists its watched trees for the initial
//! sync, the receiver lists a machine's mirror for it, and the tests compare
//! source and mirror with the same code.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Devices, FIFOs, sockets: never replicated.
    Other,
}

/// One entry of a listing; `rel` is relative to the listed root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub rel: PathBuf,
    pub kind: Kind,
    pub size: u64,
    /// `mode & 0o7777`.
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub uid: u32,
    pub gid: u32,
    /// `st_dev`: with `ino`, which entries are names of one file.
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub symlink_target: Option<OsString>,
}

impl Entry {
    pub fn from_metadata(rel: PathBuf, md: &fs::Metadata, target: Option<OsString>) -> Entry {
        let ft = md.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Entry {
            rel,
            kind,
            size: if kind == Kind::File { md.len() } else { 0 },
            mode: md.permissions().mode() & 0o7777,
            mtime_sec: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            uid: md.uid(),
            gid: md.gid(),
            dev: md.dev(),
            ino: md.ino(),
            nlink: md.nlink(),
            symlink_target: target,
        }
    }
}

impl Entry {
    /// The same from a `fstatat` result (see [`scan_fd`]).
    pub fn from_stat(rel: PathBuf, st: &rustix::fs::Stat, target: Option<OsString>) -> Entry {
        let kind = match st.st_mode & libc_s_ifmt::MASK {
            libc_s_ifmt::REG => Kind::File,
            libc_s_ifmt::DIR => Kind::Dir,
            libc_s_ifmt::LNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Entry {
            rel,
            kind,
            size: if kind == Kind::File { st.st_size as u64 } else { 0 },
            mode: st.st_mode & 0o7777,
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
            symlink_target: target,
        }
    }
}

/// File type bits of `st_mode`.
mod libc_s_ifmt {
    pub const MASK: u32 = 0o170000;
    pub const REG: u32 = 0o100000;
    pub const DIR: u32 = 0o040000;
    pub const LNK: u32 = 0o120000;
}

/// Lists the directory open as `root` recursively, descending only through
/// `openat(O_NOFOLLOW)` on directory descriptors. Unlike [`scan`], nothing is
/// resolved by path name, so a directory swapped for a symlink while the
/// scan runs is never followed: safe on a tree others write to (the
/// receiver's mirrors). Entries that vanish meanwhile are skipped.
pub fn scan_fd(root: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    scan_fd_into(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn scan_fd_into(dir: std::os::fd::BorrowedFd<'_>, rel: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use rustix::io::Errno;
    for mut entry in list_dir_fd(dir)? {
        let name = entry.rel.clone();
        entry.rel = rel.join(&name);
        let child_rel = entry.rel.clone();
        let is_dir = entry.kind == Kind::Dir;
        out.push(entry);
        if is_dir {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(dir, &name, flags, Mode::empty()) {
                Ok(fd) => scan_fd_into(std::os::fd::AsFd::as_fd(&fd), &child_rel, out)?,
                // Replaced or removed since the stat: skip it.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The entries of the directory open as `dir` (one level, sorted by name;
/// `rel` is the bare name), stat'ed without following symlinks. Entries that
/// vanish meanwhile are skipped.
pub fn list_dir_fd(dir: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<Entry>> {
    use rustix::fs::AtFlags;
    use rustix::io::Errno;
    let mut names = Vec::new();
    // Dir reads from its own duplicate of the descriptor.
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from(std::ffi::OsStr::from_bytes(name)));
        }
    }
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let st = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let target = if st.st_mode & libc_s_ifmt::MASK == libc_s_ifmt::LNK {
            match rustix::fs::readlinkat(dir, &name, Vec::new()) {
                Ok(t) => Some(OsString::from_vec(t.into_bytes())),
                Err(Errno::NOENT | Errno::INVAL) => continue,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        out.push(Entry::from_stat(PathBuf::from(name), &st, target));
    }
    Ok(out)
}

/// Lists `root` recursively (not following symlinks), sorted by path. The root
/// itself is not included. Entries that vanish while listing are skipped.
pub fn scan(root: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let item = match item {
            Ok(i) => i,
            Err(e) if e.io_error().map(|e| e.kind()) == Some(io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        let md = match item.metadata() {
            Ok(m) => m,
            Err(e) if e.io_error().map(|e| e.kind()) == Some(io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(e.into()),
        };
        let target = if md.file_type().is_symlink() {
            match fs::read_link(item.path()) {
                Ok(t) => Some(t.into_os_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let rel = item.path().strip_prefix(root).expect("walkdir stays under root").to_path_buf();
        out.push(Entry::from_metadata(rel, &md, target));
    }
    Ok(out)
}

/// What `compare` checks besides kind and content.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareOptions {
    /// Compare `mode & 0o7777` of files and directories.
    pub mode: bool,
    /// Compare file mtimes (seconds and nanoseconds).
    pub mtime: bool,
}

/// Compares the trees under `a` and `b`: the same paths, kinds, symlink
/// targets, file sizes and file contents, plus what `opts` asks for. Returns
/// one human-readable line per difference (empty when identical).
pub fn compare(a: &Path, b: &Path, opts: CompareOptions) -> io::Result<Vec<String>> {
    let la: BTreeMap<_, _> = scan(a)?.into_iter().map(|e| (e.rel.clone(), e)).collect();
    let lb: BTreeMap<_, _> = scan(b)?.into_iter().map(|e| (e.rel.clone(), e)).collect();
    let mut diffs = Vec::new();
    for (rel, ea) in &la {
        let Some(eb) = lb.get(rel) else {
            diffs.push(format!("{}: only in {}", rel.display(), a.display()));
            continue;
        };
        if ea.kind != eb.kind {
            diffs.push(format!("{}: {:?} vs {:?}", rel.display(), ea.kind, eb.kind));
            continue;
        }
        match ea.kind {
            Kind::Symlink if ea.symlink_target != eb.symlink_target => {
                diffs.push(format!("{}: symlink to {:?} vs {:?}", rel.display(), ea.symlink_target, eb.symlink_target));
            }
            Kind::File => {
                if ea.size != eb.size {
                    diffs.push(format!("{}: size {} vs {}", rel.display(), ea.size, eb.size));
                } else if let Some(off) = first_difference(&a.join(rel), &b.join(rel))? {
                    diffs.push(format!("{}: content differs at byte {off}", rel.display()));
                }
            }
            _ => {}
        }
        if opts.mode && ea.kind != Kind::Symlink && ea.mode != eb.mode {
            diffs.push(format!("{}: mode {:o} vs {:o}", rel.display(), ea.mode, eb.mode));
        }
        if opts.mtime && ea.kind == Kind::File && (ea.mtime_sec, ea.mtime_nsec) != (eb.mtime_sec, eb.mtime_nsec) {
            diffs.push(format!(
                "{}: mtime {}.{:09} vs {}.{:09}",
                rel.display(),
                ea.mtime_sec,
                ea.mtime_nsec,
                eb.mtime_sec,
                eb.mtime_nsec
            ));
        }
    }
    for rel in lb.keys() {
        if !la.contains_key(rel) {
            diffs.push(format!("{}: only in {}", rel.display(), b.display()));
        }
    }
    Ok(diffs)
}

/// The offset of the first differing byte of two files, if any.
pub fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = io::BufReader::with_capacity(1 << 16, fs::File::open(a)?);
    let mut fb = io::BufReader::with_capacity(1 << 16, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(pos + i as u64));
        }
        if na != nb {
            return Ok(Some(pos + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        pos += na as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn identical_trees_compare_equal_and_differences_are_found() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for root in [a.path(), b.path()] {
            fs::create_dir(root.join("d")).unwrap();
            fs::write(root.join("d/f"), b"hello").unwrap();
            symlink("d/f", root.join("l")).unwrap();
        }
        let opts = CompareOptions { mode: true, mtime: false };
        assert!(compare(a.path(), b.path(), opts).unwrap().is_empty());

        fs::write(b.path().join("d/f"), b"hellO").unwrap();
        fs::write(b.path().join("extra"), b"").unwrap();
        let d = compare(a.path(), b.path(), opts).unwrap();
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("content differs at byte 4"));
    }

    #[test]
    fn fd_scan_matches_path_scan() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir_all(a.path().join("d/e")).unwrap();
        fs::write(a.path().join("d/e/f"), b"x").unwrap();
        fs::write(a.path().join("g"), b"yy").unwrap();
        symlink("/etc", a.path().join("d/link")).unwrap();
        let dir = fs::File::open(a.path()).unwrap();
        let by_fd = scan_fd(std::os::fd::AsFd::as_fd(&dir)).unwrap();
        let by_path = scan(a.path()).unwrap();
        assert_eq!(by_fd, by_path);
        // The symlink is listed, never followed.
        assert!(by_fd.iter().all(|e| e.rel == Path::new("d/link") || !e.rel.starts_with("d/link")));
    }
}
