//! The receiver's side: apply ops that came from the network to the base.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::{hex, DeltaError, DeltaOp};

/// Size of the buffer copies go through (allocated on the first copy).
const COPY_BUF: usize = 256 << 10;

/// Writes the new file from the base and a stream of untrusted ops.
///
/// Every op is checked before anything is written: a copy must lie inside
/// the base's declared length (with overflow-checked arithmetic) and the
/// output must stay within [`with_max_len`](Self::with_max_len) if set.
/// [`finish`](Self::finish) then checks the length and blake3 the agent
/// announced, so a wrong, truncated or colliding delta never passes as the
/// new file. On any error the output is incomplete and must be discarded
/// (the patcher refuses further ops).
///
/// The base is read with positioned reads (`pread`): ops may copy from
/// anywhere in any order, and the patcher never moves a shared file offset.
pub struct Patcher<B: FileExt, W: Write> {
    base: B,
    base_len: u64,
    out: W,
    hasher: blake3::Hasher,
    written: u64,
    max_len: u64,
    buf: Vec<u8>,
    failed: bool,
}

impl<B: FileExt, W: Write> Patcher<B, W> {
    /// `base_len`: the base's length as the receiver knows it (its own
    /// `stat`), never a length from the network.
    pub fn new(base: B, base_len: u64, out: W) -> Self {
        Patcher {
            base,
            base_len,
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
            max_len: u64::MAX,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// Fails any op that would make the output longer than `max_len`, as soon
    /// as it arrives: with the announced length set here, a hostile stream
    /// cannot fill the disk before `finish` notices.
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Applies one op.
    pub fn push(&mut self, op: &DeltaOp) -> Result<(), DeltaError> {
        if self.failed {
            return Err(DeltaError::Failed);
        }
        let r = self.apply(op);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn apply(&mut self, op: &DeltaOp) -> Result<(), DeltaError> {
        match *op {
            DeltaOp::Copy { offset, len } => {
                let end = offset.checked_add(len).ok_or(DeltaError::CopyOverflow { offset, len })?;
                if end > self.base_len {
                    return Err(DeltaError::CopyOutOfRange { offset, end, base_len: self.base_len });
                }
                self.reserve(len)?;
                if self.buf.is_empty() {
                    self.buf = vec![0; COPY_BUF];
                }
                let mut at = offset;
                while at < end {
                    let n = (end - at).min(COPY_BUF as u64) as usize;
                    let chunk = &mut self.buf[..n];
                    self.base.read_exact_at(chunk, at).map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            DeltaError::BaseTruncated { offset: at, base_len: self.base_len }
                        } else {
                            DeltaError::Io(e)
                        }
                    })?;
                    self.out.write_all(chunk)?;
                    self.hasher.update(chunk);
                    at += n as u64;
                }
                self.written += len;
            }
            DeltaOp::Literal(ref data) => {
                self.reserve(data.len() as u64)?;
                self.out.write_all(data)?;
                self.hasher.update(data);
                self.written += data.len() as u64;
            }
        }
        Ok(())
    }

    fn reserve(&self, len: u64) -> Result<(), DeltaError> {
        match self.written.checked_add(len) {
            Some(total) if total <= self.max_len => Ok(()),
            _ => Err(DeltaError::TooLong { written: self.written, len, max_len: self.max_len }),
        }
    }

    /// Flushes the output and checks its length and blake3 against what the
    /// agent announced ([`DeltaStats`](crate::DeltaStats)). Returns the
    /// output, which the caller then syncs and renames over the base.
    pub fn finish(mut self, expect_len: u64, expect_hash: &[u8; 32]) -> Result<W, DeltaError> {
        if self.failed {
            return Err(DeltaError::Failed);
        }
        self.out.flush()?;
        if self.written != expect_len {
            return Err(DeltaError::LengthMismatch { written: self.written, expected: expect_len });
        }
        let got = self.hasher.finalize();
        if got.as_bytes() != expect_hash {
            return Err(DeltaError::HashMismatch { expected: hex(expect_hash), got: hex(got.as_bytes()) });
        }
        Ok(self.out)
    }
}
