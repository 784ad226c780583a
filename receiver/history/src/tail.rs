//! The appending end of the newest journal segment, mapped into memory.
//!
//! Why: a record must be in the page cache before the applier changes the
//! mirror (a receiver killed by SIGKILL must not lose it), and one
//! `write(2)` per record was most of what history added to a burst of new
//! small files (`lifeline-mirror`'s `history_cost`: about 3.5 µs of CPU of
//! the 4.5 µs history cost each new file). A copy into a `MAP_SHARED`
//! mapping of the file is in the page cache once the copy is done, so it
//! outlives the process exactly as a `write(2)` does, with no syscall; a
//! buffer of the process's own would not (it dies with it).
//!
//! The window is mapped over zeros written past the data with `write(2)`:
//! real blocks, so a full disk is an error returned here and not a SIGBUS
//! at a later page fault, and `fdatasync` of the segment has no extents to
//! convert. Readers see the zeros after the last frame as a torn tail (a
//! zero frame head fails its CRC), which the newest segment is allowed to
//! have; the writer cuts them off when it closes the segment or opens it
//! again.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// How much of the file one mapping covers (and how far ahead zeros are
/// written): a few thousand small records per `mmap`.
pub(crate) const WINDOW: usize = 256 << 10;

/// A writable shared mapping of `[start, start + WINDOW)` of a segment.
pub(crate) struct Tail {
    ptr: NonNull<u8>,
    start: u64,
}

// The mapping is plain memory owned by this value (the applier moves its
// journal between threads, never shares it).
unsafe impl Send for Tail {}

impl Tail {
    /// Maps the window of `file` that holds offset `at`, after making sure
    /// the file has bytes (zeros where it had none) up to its end. `len` is
    /// the file's length; answers the mapping and the new length.
    pub(crate) fn map(file: &File, at: u64, len: u64) -> io::Result<(Tail, u64)> {
        let page = rustix::param::page_size() as u64;
        let start = at - at % page;
        let end = start + WINDOW as u64;
        if end > len {
            zero_fill(file, len, end)?;
        }
        // SAFETY: a fresh mapping (no address asked for) of a file this
        // process writes only through it and `write(2)` past its data; it
        // is unmapped once, on drop.
        let ptr = unsafe {
            mmap(std::ptr::null_mut(), WINDOW, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, file, start)?
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap answered a null mapping"))?;
        Ok((Tail { ptr, start }, len.max(end)))
    }

    /// Whether `n` bytes at file offset `at` lie inside the window.
    pub(crate) fn holds(&self, at: u64, n: usize) -> bool {
        at >= self.start && at + n as u64 <= self.start + WINDOW as u64
    }

    /// Copies `bytes` to file offset `at` (which [`Tail::holds`] them).
    pub(crate) fn put(&mut self, at: u64, bytes: &[u8]) {
        assert!(self.holds(at, bytes.len()), "a journal frame outside the mapped window");
        let off = (at - self.start) as usize;
        // SAFETY: the range is inside the mapping (checked above), which
        // nothing else in this process aliases.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len()) }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), WINDOW) };
    }
}

/// Writes zeros to `[from, to)` of `file`.
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
