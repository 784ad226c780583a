//! On-disk format of manifest files ("blobs"), chunk ids and hex. Chunks
//! live in packs: see [`crate::pack`].
//!
//! ```text
//! offset  size  field
//!      0     4  magic: "LLMF" (manifest)
//!      4     1  format version (1)
//!      5     1  flags: bit 0 = payload is zstd-compressed; other bits must be 0
//!      6     2  reserved, must be 0
//!      8     4  plaintext length, u32 little-endian (bounds decompression)
//!     12    24  XChaCha20-Poly1305 nonce (random)
//!     36     n  encrypted payload (compressed or raw plaintext)
//!   36+n    16  Poly1305 tag
//! ```
//!
//! Associated data = the 12 header bytes followed by the blob's context,
//! `"image:" + name` for a manifest. So the
//! header cannot be altered (e.g. the compressed flag flipped) and a blob is
//! only valid under the name it was written for.

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

/// Largest chunk accepted. The imaging crate uses 64 KiB to 4 MiB; the bound
/// keeps a damaged length field from making us allocate gigabytes.
pub const MAX_CHUNK_SIZE: usize = 64 << 20;
/// Largest manifest accepted (a chunk list of a 16 TiB disk at 4 MiB chunks is
/// ~130 MiB).
pub const MAX_MANIFEST_SIZE: usize = 1 << 30;

#[cfg(test)]
pub(crate) const CHUNK_MAGIC: [u8; 4] = *b"LLCK";
pub(crate) const MANIFEST_MAGIC: [u8; 4] = *b"LLMF";
const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const HEADER_LEN: usize = 12;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a blob adds to its payload.
pub(crate) const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// zstd level: 3 is zstd's default and what `zstd -3` in the benchmarks uses;
/// higher levels cost much more CPU for a few percent on disk data.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// A chunk's id: keyed BLAKE3 of its plaintext, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
    pub fn from_hex(s: &str) -> Option<ChunkId> {
        let v = unhex(s)?;
        Some(ChunkId(v.try_into().ok()?))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl FromStr for ChunkId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ChunkId::from_hex(s).ok_or_else(|| format!("not a chunk id (64 hex digits): {s:?}"))
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None, // lower case only: one spelling per id, one file name per chunk
    };
    s.as_bytes().chunks(2).map(|p| Some(nib(p[0])? << 4 | nib(p[1])?)).collect()
}

/// Unpredictable bytes for nonces and temporary names, from the thread's
/// CSPRNG (ChaCha, seeded and periodically reseeded from the OS): a
/// `getrandom` system call per chunk showed up in profiles of disk imaging.
/// Keys and salts use [`random_bytes`] straight from the OS.
pub(crate) fn nonce_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], crate::RepoError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| crate::RepoError::Random(e.to_string()))?;
    Ok(b)
}

pub(crate) fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

/// Compress (if it helps) and encrypt `plain` into a blob.
/// `zstd` is a reusable compression context (one per worker thread: creating
/// one per chunk costs more than compressing a small chunk).
pub(crate) fn seal(
    cipher: &XChaCha20Poly1305,
    magic: [u8; 4],
    context: &[u8],
    plain: &[u8],
    zstd: &mut zstd::bulk::Compressor<'static>,
) -> Result<Vec<u8>, crate::RepoError> {
    let len = u32::try_from(plain.len()).map_err(|_| crate::RepoError::TooLarge {
        what: "blob",
        len: plain.len(),
        max: u32::MAX as usize,
    })?;
    let nonce: [u8; NONCE_LEN] = nonce_bytes();
    let mut out = Vec::with_capacity(OVERHEAD + plain.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&[VERSION, 0, 0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&nonce);
    // Compress straight into the output buffer; fall back to raw when the
    // result is not smaller (zstd errors out when the destination is too small).
    let start = out.len();
    let mut compressed = false;
    if !plain.is_empty() {
        out.resize(start + plain.len() - 1, 0);
        if let Ok(n) = zstd.compress_to_buffer(plain, &mut out[start..]) {
            out.truncate(start + n);
            compressed = true;
        }
    }
    if !compressed {
        out.truncate(start);
        out.extend_from_slice(plain);
    } else {
        out[5] = FLAG_ZSTD;
    }
    let aad = aad(&out[..HEADER_LEN], context);
    let (head, body) = out.split_at_mut(HEADER_LEN + NONCE_LEN);
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&head[HEADER_LEN..]), &aad, body)
        .map_err(|_| crate::RepoError::Pipeline("encryption failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + context.len());
    a.extend_from_slice(header);
    a.extend_from_slice(context);
    a
}

/// Check, decrypt and decompress a blob. The error is a short reason for
/// `RepoError::Corrupt` / `CorruptManifest`.
pub(crate) fn open(
    cipher: &XChaCha20Poly1305,
    magic: [u8; 4],
    context: &[u8],
    mut blob: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, String> {
    if blob.len() < OVERHEAD {
        return Err(format!("file is {} bytes, shorter than any valid blob (truncated?)", blob.len()));
    }
    if blob[..4] != magic {
        return Err("bad magic (not a Lifeline chunk/manifest file)".into());
    }
    if blob[4] != VERSION {
        return Err(format!("unknown format version {}", blob[4]));
    }
    let flags = blob[5];
    if flags & !FLAG_ZSTD != 0 || blob[6] != 0 || blob[7] != 0 {
        return Err("unknown flags in header".into());
    }
    let len = u32::from_le_bytes(blob[8..12].try_into().unwrap()) as usize;
    if len > max {
        return Err(format!("header claims {len} bytes, more than the maximum {max}"));
    }
    let aad = aad(&blob[..HEADER_LEN], context);
    let tag_at = blob.len() - TAG_LEN;
    let tag = Tag::clone_from_slice(&blob[tag_at..]);
    let nonce = XNonce::clone_from_slice(&blob[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
    let body = &mut blob[HEADER_LEN + NONCE_LEN..tag_at];
    cipher
        .decrypt_in_place_detached(&nonce, &aad, body, &tag)
        .map_err(|_| "authentication failed: the file is damaged or belongs to another id".to_string())?;
    let body = &blob[HEADER_LEN + NONCE_LEN..tag_at];
    let plain = if flags & FLAG_ZSTD != 0 {
        zstd::bulk::decompress(body, len).map_err(|e| format!("zstd: {e}"))?
    } else {
        body.to_vec()
    };
    if plain.len() != len {
        return Err(format!("length {} does not match the header's {len}", plain.len()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("AB"), None);
        assert!("zz".parse::<ChunkId>().is_err());
    }

    #[test]
    fn seal_open_compressible_and_not() {
        let c = cipher(&[7; 32]);
        let mut z = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        for plain in
            [vec![], vec![0u8; 100_000], (0..5000u32).map(|i| (i.wrapping_mul(2654435761u32) >> 13) as u8).collect()]
        {
            let blob = seal(&c, CHUNK_MAGIC, b"ctx", &plain, &mut z).unwrap();
            assert!(blob.len() <= plain.len() + OVERHEAD);
            assert_eq!(open(&c, CHUNK_MAGIC, b"ctx", blob.clone(), 1 << 20).unwrap(), plain);
            assert!(open(&c, CHUNK_MAGIC, b"other", blob.clone(), 1 << 20).is_err());
            assert!(open(&c, MANIFEST_MAGIC, b"ctx", blob, 1 << 20).is_err());
        }
    }
}
