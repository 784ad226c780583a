//! The receiver's description of its base: one weak and one strong hash per block.

use std::io::{self, Read};

use crate::rolling::weak_hash;
use crate::DeltaError;

/// Smallest block length [`Signature::validate`] accepts. Tiny blocks make a
/// huge signature and a slow diff; 64 bytes is only useful for tests.
pub const MIN_BLOCK_LEN: u32 = 64;
/// Largest block length [`Signature::validate`] accepts. The diff buffers
/// about `block_len + max_literal + 1 MiB` of the new file, so this bounds
/// the agent's memory whatever a receiver sends.
pub const MAX_BLOCK_LEN: u32 = 1 << 20;
/// Shortest strong hash accepted: 64 bits. See [`DEFAULT_STRONG_LEN`].
pub const MIN_STRONG_LEN: u8 = 8;
/// Longest strong hash: a whole blake3 output.
pub const MAX_STRONG_LEN: u8 = 32;
/// Strong hash length to use: 16 bytes of blake3.
///
/// A false match needs a weak match (32 bits) *and* a strong match at a
/// position whose content differs. Even when a whole 1 TiB file changed,
/// that is 2^40 positions × a few candidates: with 128 bits the odds stay
/// below 2^-85, and an attacker who controls the new file cannot find a
/// collision either (2^64 work). 8 bytes would save 40 % of the signature
/// (1.5 instead of 2.5 MiB for 1 GiB in 8 KiB blocks) but
/// leave only a 2^32 birthday margin against crafted data; the whole-file
/// hash would still catch it (and the caller fall back to a full copy), so
/// shorter values are allowed, not recommended.
pub const DEFAULT_STRONG_LEN: u8 = 16;
/// Bytes of [`Signature`] header on the wire: `block_len` (4), `strong_len`
/// (1), `base_len` (8).
pub const HEADER_LEN: usize = 13;

/// Block hashes of a base file, computed by the receiver and sent to the agent.
///
/// Block `i` covers base bytes `i·block_len .. min((i+1)·block_len, base_len)`:
/// all blocks are full except possibly the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub block_len: u32,
    pub strong_len: u8,
    pub base_len: u64,
    /// The [rolling hash](crate::weak_hash) of each block.
    pub weak: Vec<u32>,
    /// blake3 of each block truncated to `strong_len` bytes, concatenated.
    pub strong: Vec<u8>,
}

impl Signature {
    /// Block length chosen for a base of this size.
    ///
    /// Two costs pull in opposite directions: the signature costs
    /// `(4 + strong_len) / block_len` of the base (20 bytes per block), and
    /// every scattered edit costs about `edit + block_len` bytes of literal
    /// (the blocks it touches are resent whole). For `E` edits the sum is
    /// smallest at `block_len = sqrt(20 · base_len / E)`; we size for a few
    /// hundred scattered edits, which gives `sqrt(base_len) / 4` rounded to a
    /// power of two (8 KiB for 1 GiB: signature 2.5 MiB, 256 scattered
    /// 4 KiB edits ≈ 3 MiB of delta; rsync's plain `sqrt` gives 32 KiB and
    /// ≈ 9 MiB of delta). Powers of two also line up with the page writes of
    /// databases and VM images, so an aligned 4 KiB page write costs exactly
    /// one block. Clamped to 1 KiB (small files: signature ≤ 2 % of the base)
    /// and 256 KiB (a 1 TiB image still has a 80 MiB signature, above that the
    /// agent's memory for the signature grows linearly).
    pub fn block_len_for(base_len: u64) -> u32 {
        const MIN: u32 = 1 << 10;
        const MAX: u32 = 1 << 18;
        let target = (base_len as f64).sqrt() / 4.0;
        if target <= MIN as f64 {
            return MIN;
        }
        // Nearest power of two on a log scale.
        let exp = target.log2().round() as u32;
        (1u32 << exp.min(31)).clamp(MIN, MAX)
    }

    /// Number of blocks a base of `base_len` bytes has with `block_len`-byte blocks.
    pub fn block_count(base_len: u64, block_len: u32) -> u64 {
        base_len.div_ceil(block_len as u64)
    }

    /// Hashes `base_len` bytes read from `base` (bytes after them are not
    /// read). Memory: the signature itself plus one buffer of about 1 MiB;
    /// no allocation per block.
    ///
    /// Fails with `UnexpectedEof` if `base` ends early and `InvalidInput` if
    /// `block_len` or `strong_len` is out of the accepted ranges.
    pub fn compute(mut base: impl Read, base_len: u64, block_len: u32, strong_len: u8) -> io::Result<Signature> {
        check_params(block_len, strong_len).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let blocks = Self::block_count(base_len, block_len);
        if blocks > u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{base_len} bytes in {block_len}-byte blocks is more than 2^32 blocks"),
            ));
        }
        let bl = block_len as usize;
        let sl = strong_len as usize;
        // Reserve up front for plausible sizes only, so a bogus base_len fails
        // on EOF instead of on a huge allocation.
        let reserve = blocks.min(1 << 20) as usize;
        let mut weak = Vec::with_capacity(reserve);
        let mut strong = Vec::with_capacity(reserve * sl);
        let chunk = bl * ((1usize << 20) / bl).max(1);
        let mut buf = vec![0u8; chunk];
        let mut left = base_len;
        while left > 0 {
            let want = (chunk as u64).min(left) as usize;
            let mut got = 0;
            while got < want {
                match base.read(&mut buf[got..want]) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("base ended after {} of its {base_len} bytes", base_len - left + got as u64),
                        ))
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            for block in buf[..want].chunks(bl) {
                weak.push(weak_hash(block));
                strong.extend_from_slice(&blake3::hash(block).as_bytes()[..sl]);
            }
            left -= want as u64;
        }
        Ok(Signature { block_len, strong_len, base_len, weak, strong })
    }

    /// Checks a signature received from the network before it is used:
    /// parameters in range and vectors exactly as long as `base_len` implies.
    /// [`diff`](crate::diff) calls it itself.
    pub fn validate(&self) -> Result<(), DeltaError> {
        check_params(self.block_len, self.strong_len)?;
        let blocks = Self::block_count(self.base_len, self.block_len);
        if blocks > u32::MAX as u64 {
            return Err(DeltaError::InvalidSignature(format!(
                "a {}-byte base in {}-byte blocks would have {blocks} blocks, more than 2^32",
                self.base_len, self.block_len
            )));
        }
        if self.weak.len() as u64 != blocks {
            return Err(DeltaError::InvalidSignature(format!(
                "{} weak hashes for a {}-byte base in {}-byte blocks, which has {blocks} blocks",
                self.weak.len(),
                self.base_len,
                self.block_len
            )));
        }
        let strong_bytes = blocks * self.strong_len as u64;
        if self.strong.len() as u64 != strong_bytes {
            return Err(DeltaError::InvalidSignature(format!(
                "{} bytes of strong hashes, expected {blocks} blocks × {} bytes = {strong_bytes}",
                self.strong.len(),
                self.strong_len
            )));
        }
        Ok(())
    }

    /// Bytes this signature costs on the wire: header plus `4 + strong_len`
    /// per block.
    pub fn wire_size(&self) -> usize {
        HEADER_LEN + self.weak.len() * (4 + self.strong_len as usize)
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.weak.len()
    }

    /// Length of block `i` (the last one may be short).
    pub(crate) fn len_of(&self, i: usize) -> usize {
        let start = i as u64 * self.block_len as u64;
        (self.base_len - start).min(self.block_len as u64) as usize
    }

    /// The strong hash of block `i`.
    pub(crate) fn strong_of(&self, i: usize) -> &[u8] {
        let sl = self.strong_len as usize;
        &self.strong[i * sl..(i + 1) * sl]
    }
}

fn check_params(block_len: u32, strong_len: u8) -> Result<(), DeltaError> {
    if !(MIN_BLOCK_LEN..=MAX_BLOCK_LEN).contains(&block_len) {
        return Err(DeltaError::InvalidSignature(format!(
            "block length {block_len} is outside {MIN_BLOCK_LEN}..={MAX_BLOCK_LEN}"
        )));
    }
    if !(MIN_STRONG_LEN..=MAX_STRONG_LEN).contains(&strong_len) {
        return Err(DeltaError::InvalidSignature(format!(
            "strong hash length {strong_len} is outside {MIN_STRONG_LEN}..={MAX_STRONG_LEN}"
        )));
    }
    Ok(())
}
