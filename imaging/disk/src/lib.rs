//! # lifeline-disk: what to image on a disk
//!
//! The first building block of the offline imaging engine (issue 4). It answers
//! two questions, natively from on-disk structures (no mounting, no external
//! tools), for a block device or an image file:
//!
//! 1. [`layout`]: where are the partitions, and which bytes *outside* them must be
//!    kept (MBR, GPT headers and arrays at both ends, boot loader gaps, EBRs)?
//! 2. [`fs`]: inside one partition, which blocks does the filesystem actually use?
//!    The answer is a [`fs::UsedMap`], the "address correspondence table" of the
//!    design: used blocks are read and stored, all others are never read and are
//!    restored as zeros.
//!
//! Everything reads through the tiny [`ReadAt`] trait, so the same code runs on a
//! `File` opened on `/dev/sda`, on an image file, or on a partition-relative
//! [`Slice`] of either.

mod crc32c;
pub mod fs;
pub mod layout;

use std::io;

/// Positional, exact reads. This is all the layout parser and the filesystem
/// readers need; it is object safe so readers take `&dyn ReadAt` and the
/// registry in [`fs`] stays a plain list of trait objects.
pub trait ReadAt {
    /// Fill `buf` entirely from byte offset `off`, or fail (a short read past the
    /// end is an error: a truncated image must not look like zeros).
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, off)
    }
}

/// Adapter for anything implementing `std::os::unix::fs::FileExt` (a block
/// device, an image file, a wrapper counting reads...). A blanket impl of
/// [`ReadAt`] for every `FileExt` would forbid the impl for [`Slice`], hence the
/// newtype.
pub struct FileExtReader<F>(pub F);

impl<F: std::os::unix::fs::FileExt> ReadAt for FileExtReader<F> {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, off)
    }
}

/// In-memory disks (handy for small structures; the tests use real image files).
impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let start = usize::try_from(off).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, off)
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end")
}

/// A window `[offset, offset + len)` of another reader: a partition seen from
/// the filesystem reader, which only ever thinks in partition-relative offsets.
/// Reads crossing the window's end fail, so a filesystem claiming to be larger
/// than its partition is caught rather than reading the neighbour.
pub struct Slice<'a> {
    inner: &'a dyn ReadAt,
    offset: u64,
    len: u64,
}

impl<'a> Slice<'a> {
    pub fn new(inner: &'a dyn ReadAt, offset: u64, len: u64) -> Self {
        Slice { inner, offset, len }
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl ReadAt for Slice<'_> {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let end = off.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        self.inner.read_exact_at(buf, self.offset + off)
    }
}

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Size in bytes and logical sector size of an opened disk: for a block device
/// from the kernel (`BLKGETSIZE64`, `BLKSSZGET`), for an image file its length
/// and 512. This is what [`layout::read_layout`] needs next to the reader.
pub fn disk_geometry(file: &std::fs::File) -> io::Result<(u64, u32)> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::io::AsRawFd;
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok((meta.len(), 512));
    }
    let fd = file.as_raw_fd();
    let mut size: u64 = 0;
    let mut ssz: libc::c_int = 0;
    // SAFETY: both ioctls write one value of the given type through the pointer.
    let r = unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let r = unsafe { libc::ioctl(fd, BLKSSZGET as _, &mut ssz as *mut libc::c_int) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((size, ssz as u32))
}

/// `_IOR(0x12, 114, size_t)` and `_IO(0x12, 104)` from `<linux/fs.h>`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
