//! A writer for the cpio "newc" format, the format the Linux kernel unpacks
//! an initramfs from (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each record is a 110-byte ASCII header (`070701` then thirteen 8-digit
//! hex fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
//! devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated name
//! padded with NULs so header + name is a multiple of 4, then the data padded
//! to a multiple of 4. The archive ends with a record named `TRAILER!!!`.
//!
//! Output is deterministic, so the same inputs give a byte-identical boot OS:
//! [`Archive`] keeps entries sorted by path (a parent always sorts before its
//! children), every entry gets uid/gid 0 and the same mtime, and inode numbers
//! are assigned in write order starting at 1. Hard links are not produced
//! (each file is its own inode, nlink 1).

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;

/// File type bits of `st_mode`.
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// The name of the record that ends a newc archive.
pub const TRAILER: &str = "TRAILER!!!";

/// One archive member. Paths are relative (no leading `/`), as the kernel
/// and `cpio -i` expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: permission bits (e.g. `0o755`) and contents.
    File { mode: u32, data: Vec<u8> },
    /// A directory with its permission bits.
    Dir { mode: u32 },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A character device node, e.g. `/dev/console` is `5, 1`.
    CharDev { mode: u32, major: u32, minor: u32 },
    /// A block device node.
    BlockDev { mode: u32, major: u32, minor: u32 },
}

/// Streams newc records to a writer. Most callers want [`Archive`], which
/// sorts entries and creates parent directories; this is the low layer.
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
    mtime: u32,
    written: u64,
}

impl<W: Write> NewcWriter<W> {
    /// A writer stamping every entry with `mtime` (seconds since the epoch;
    /// 0 is fine and keeps builds reproducible).
    pub fn new(out: W, mtime: u32) -> Self {
        NewcWriter { out, next_ino: 1, mtime, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Writes one entry at `path` (relative, `/`-separated).
    pub fn write_entry(&mut self, path: &str, entry: &Entry) -> Result<()> {
        check_path(path)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
            Entry::File { mode, data } => (S_IFREG | (mode & 0o7777), 1, data, (0, 0)),
            Entry::Dir { mode } => (S_IFDIR | (mode & 0o7777), 2, &[], (0, 0)),
            Entry::Symlink { target } => {
                if target.is_empty() || target.contains('\0') {
                    return Err(Error::Invalid(format!(
                        "cpio: symlink {path} has an empty target or one with a NUL byte"
                    )));
                }
                (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0))
            }
            Entry::CharDev { mode, major, minor } => (S_IFCHR | (mode & 0o7777), 1, &[], (*major, *minor)),
            Entry::BlockDev { mode, major, minor } => (S_IFBLK | (mode & 0o7777), 1, &[], (*major, *minor)),
        };
        let size = u32::try_from(data.len()).map_err(|_| {
            Error::Invalid(format!(
                "cpio: {path} is {} bytes; the newc format holds at most 4 GiB per file",
                data.len()
            ))
        })?;
        self.record(ino, mode, nlink, path, data, size, rdev)
    }

    /// Writes the `TRAILER!!!` record and returns the inner writer. An
    /// archive without it is incomplete: always call this. The
    /// kernel accepts concatenated archives, so nothing may follow but
    /// another archive.
    pub fn finish(mut self) -> Result<W> {
        self.record(0, 0, 1, TRAILER, &[], 0, (0, 0))?;
        self.out.flush().map_err(|e| Error::Invalid(format!("cpio: flushing the archive: {e}")))?;
        Ok(self.out)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        name: &str,
        data: &[u8],
        size: u32,
        rdev: (u32, u32),
    ) -> Result<()> {
        let namesize = name.len() as u32 + 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        debug_assert_eq!(header.len(), 110);
        let mut buf = Vec::with_capacity(112 + name.len());
        buf.extend_from_slice(header.as_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        buf.resize(pad4(buf.len()), 0);
        self.put(&buf)?;
        if !data.is_empty() {
            self.put(data)?;
            let pad = pad4(data.len()) - data.len();
            self.put(&[0u8; 3][..pad])?;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| Error::Invalid(format!("cpio: writing the archive: {e}")))?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

fn check_path(path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.ends_with('/')
        || path.contains('\0')
        || path == TRAILER
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::Invalid(format!(
            "cpio: bad archive path {path:?}: use a relative path like \"bin/sh\" without \".\", \"..\" or empty components"
        )));
    }
    Ok(())
}

/// An in-memory file tree written as one deterministic newc archive.
///
/// Paths may be given with or without a leading `/`. Adding an entry creates
/// missing parent directories (mode 0755). Adding a path twice replaces the
/// earlier entry, except that a directory can only be replaced by a
/// directory (to change its mode), and an implied parent never replaces an
/// explicit one.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `path`, creating its parent directories.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let path = path.trim_start_matches('/');
        check_path(path)?;
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => {
                    return Err(Error::Invalid(format!(
                        "cpio: cannot add {path}: {parent} is already a file, not a directory"
                    )))
                }
            }
        }
        if matches!(self.entries.get(path), Some(Entry::Dir { .. })) && !matches!(entry, Entry::Dir { .. }) {
            return Err(Error::Invalid(format!("cpio: cannot add {path}: it is already a directory")));
        }
        self.entries.insert(path.to_string(), entry);
        Ok(())
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Entry::Dir { mode })
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Result<()> {
        self.insert(path, Entry::File { mode, data: data.into() })
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Entry::Symlink { target: target.to_string() })
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, Entry::CharDev { mode, major, minor })
    }

    /// Adds a block device node.
    pub fn block_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, Entry::BlockDev { mode, major, minor })
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    /// Whether `path` is present.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Number of entries (directories included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates entries in archive order (sorted by path).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// Writes the archive (entries in path order, then the trailer) with
    /// every mtime set to `mtime`; returns the writer and the bytes written.
    pub fn write_to<W: Write>(&self, out: W, mtime: u32) -> Result<(W, u64)> {
        let mut w = NewcWriter::new(out, mtime);
        for (path, entry) in &self.entries {
            w.write_entry(path, entry)?;
        }
        let n_before_trailer = w.written();
        let out = w.finish()?;
        // Trailer: 110-byte header + "TRAILER!!!\0" padded = 124 bytes.
        Ok((out, n_before_trailer + 124))
    }

    /// The archive as bytes (mtime 0).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.write_to(Vec::new(), 0)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::process::{Command, Stdio};

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n".to_vec()).unwrap();
        a.file("etc/empty", 0o600, Vec::new()).unwrap();
        a.file("etc/odd", 0o644, b"abcde".to_vec()).unwrap();
        a.file("etc/four", 0o640, b"1234".to_vec()).unwrap();
        a.dir("tmp", 0o1777).unwrap();
        a.symlink("bin/sh", "hello").unwrap();
        a.symlink("lib64", "/lib").unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.char_dev("dev/null", 0o666, 1, 3).unwrap();
        a.block_dev("dev/vda", 0o660, 253, 0).unwrap();
        a
    }

    #[test]
    fn header_layout_and_padding() {
        let mut a = Archive::new();
        a.file("a", 0o644, b"xyz".to_vec()).unwrap();
        let bytes = a.to_bytes().unwrap();
        // header 110 + "a\0" = 112 (aligned), data 3 -> 4, trailer 110+11 -> 124
        assert_eq!(bytes.len(), 112 + 4 + 124);
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000001"); // ino
        assert_eq!(&bytes[14..22], b"000081A4"); // S_IFREG|0644
        assert_eq!(&bytes[54..62], b"00000003"); // filesize
        assert_eq!(&bytes[94..102], b"00000002"); // namesize incl. NUL
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..116], b"xyz\0");
        assert_eq!(&bytes[116 + 110..116 + 120], b"TRAILER!!!");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn deterministic_regardless_of_insertion_order() {
        let a = sample().to_bytes().unwrap();
        let mut b = Archive::new();
        b.block_dev("dev/vda", 0o660, 253, 0).unwrap();
        b.symlink("lib64", "/lib").unwrap();
        b.char_dev("dev/null", 0o666, 1, 3).unwrap();
        b.file("etc/four", 0o640, b"1234".to_vec()).unwrap();
        b.dir("tmp", 0o1777).unwrap();
        b.file("etc/odd", 0o644, b"abcde".to_vec()).unwrap();
        b.char_dev("dev/console", 0o600, 5, 1).unwrap();
        b.file("etc/empty", 0o600, Vec::new()).unwrap();
        b.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n".to_vec()).unwrap();
        b.symlink("bin/sh", "hello").unwrap();
        assert_eq!(a, b.to_bytes().unwrap());
    }

    #[test]
    fn rejects_bad_paths() {
        let mut a = Archive::new();
        for p in ["", "a/../b", "a//b", "./a", "a/", TRAILER] {
            assert!(a.file(p, 0o644, Vec::new()).is_err(), "{p:?} accepted");
        }
        a.file("f", 0o644, Vec::new()).unwrap();
        assert!(a.file("f/g", 0o644, Vec::new()).is_err());
        a.file("d/x", 0o644, Vec::new()).unwrap();
        assert!(a.symlink("d", "elsewhere").is_err());
        a.dir("d", 0o700).unwrap(); // changing a directory's mode is fine
    }

    /// Round trip through the real GNU cpio (Debian package `cpio`).
    #[test]
    fn extracts_with_real_cpio() {
        let a = sample();
        let bytes = a.to_bytes().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-idv", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio not found: apt-get install cpio (scripts/setup.sh installs it)");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "cpio failed: {}", String::from_utf8_lossy(&out.stderr));
        let root = dir.path();
        let is_root = is_root();
        for (path, entry) in a.iter() {
            let p = root.join(path);
            let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
            match entry {
                Entry::File { mode, data } => {
                    assert!(md.is_file(), "{path}");
                    assert_eq!(md.permissions().mode() & 0o7777, *mode, "{path}");
                    assert_eq!(&std::fs::read(&p).unwrap(), data, "{path}");
                }
                Entry::Dir { mode } => {
                    assert!(md.is_dir(), "{path}");
                    assert_eq!(md.permissions().mode() & 0o7777, *mode, "{path}");
                }
                Entry::Symlink { target } => {
                    assert!(md.file_type().is_symlink(), "{path}");
                    assert_eq!(std::fs::read_link(&p).unwrap().to_str().unwrap(), target);
                }
                Entry::CharDev { major, minor, .. } | Entry::BlockDev { major, minor, .. } => {
                    if !is_root {
                        continue; // cpio cannot mknod without root
                    }
                    let ft = md.file_type();
                    assert!(
                        matches!(entry, Entry::CharDev { .. }) && ft.is_char_device()
                            || matches!(entry, Entry::BlockDev { .. }) && ft.is_block_device(),
                        "{path}"
                    );
                    let rdev = md.rdev();
                    // glibc's gnu_dev_major/minor.
                    let maj = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32;
                    let min = ((rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00)) as u32;
                    assert_eq!((maj, min), (*major, *minor), "{path}");
                }
            }
        }
        // And cpio's own listing agrees on the count (dirs included).
        let listed = String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.contains("block")).count();
        assert_eq!(listed, a.len());
    }

    fn is_root() -> bool {
        // Avoid a libc dependency: /proc/self/status has the effective uid.
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }
}
