//! Pack files: many chunks in one file, compressed and encrypted in groups.
//!
//! ```text
//! offset          size  field
//!      0             8  header: "LLPK", format version (1), 3 zero bytes
//!      8             …  groups, back to back; each: nonce (24) | ciphertext | tag (16)
//!      I             n  index: nonce (24) | ciphertext | tag (16)
//!    I+n             4  n, u32 little-endian
//!  I+n+4             4  "LLPX"
//! ```
//!
//! A *group* is a run of consecutive new chunks of one backup, concatenated
//! and compressed as one zstd frame (stored raw when that is not smaller),
//! then encrypted (XChaCha20-Poly1305, random nonce). Its associated data is
//! the pack id, the group's offset in the pack, its plaintext length and its
//! flags, so a group copied to another place or another pack fails
//! authentication.
//!
//! The *index* (decrypted: see [`PackIndex::encode`]) lists the groups
//! (offset, stored length, plaintext length, flags) and the chunks (id, group,
//! offset and length inside the group's plaintext). Its associated data is the
//! pack id and its own offset, so a pack renamed to another id, or its index
//! pasted onto other groups, is refused. The index sits at the end so a pack is
//! written in one sequential pass; the trailer says where it starts. A pack
//! whose trailer or index does not check out (torn by a crash, damaged) is
//! ignored by reads and reported by verification.

use std::fmt;

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::format::{hex, nonce_bytes, unhex, ChunkId};
use crate::MAX_CHUNK_SIZE;

pub(crate) const HEADER: [u8; 8] = *b"LLPK\x01\0\0\0";
pub(crate) const TRAILER_MAGIC: [u8; 4] = *b"LLPX";
pub(crate) const TRAILER_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes encryption adds to a group or an index.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub(crate) const FLAG_ZSTD: u8 = 1;

/// Plaintext of new chunks compressed together as one group (one zstd
/// frame). Measured on the 2 GiB volumes of `bench/imaging_fs.py` (ext4,
/// XFS, NTFS, exFAT, FAT32), bytes stored ÷ `partclone | zstd -T0 -3`:
/// each 64 KiB cell alone 1.02–1.06; groups of 1 MiB 1.011–1.014, 2 MiB
/// 1.005–1.007, 4 MiB 1.001–1.002 (0.998 for NTFS), 8 MiB with an 8 MiB
/// window 0.989–0.997 on all five. Every frame starts with an empty
/// history; the fewer the frames, the closer to one stream (the index's
/// 44 bytes per chunk, 0.13 %, must be won back too). The cost: restore
/// decompresses a whole group to read one of its cells (sequential restore
/// keeps the last groups, see `index::GroupCache`), and each writer thread
/// holds a batch of this size.
pub const GROUP_BYTES: usize = 8 << 20;
/// zstd window for groups: a group's size.
pub(crate) const GROUP_WINDOW_LOG: u32 = 23;
const _: () = assert!(1 << GROUP_WINDOW_LOG == GROUP_BYTES);
/// A pack is closed once it holds this much: a few groups. One fsync per
/// pack makes durability cheap; packs stay small enough that a prune of a
/// partly used pack keeps little dead data.
pub const PACK_BYTES: u64 = 32 << 20;
/// And once it holds this many chunks (bounds the index of a pack of tiny
/// chunks).
pub(crate) const PACK_CHUNKS: usize = 1 << 16;
/// A group also closes at this many chunks (bounds the index of a pack of
/// tiny chunks).
pub(crate) const GROUP_CHUNKS: usize = 256;
/// Largest group plaintext accepted: a group closes once it reaches
/// [`GROUP_BYTES`], so the last chunk added may take it up to this.
pub const MAX_GROUP_RAW: usize = GROUP_BYTES + MAX_CHUNK_SIZE;
/// Largest index blob accepted.
pub const MAX_INDEX_BLOB: usize = 8 + PACK_CHUNKS * (CHUNK_ENTRY + GROUP_ENTRY) + SEAL_OVERHEAD;
/// Largest pack accepted from a writer (a full pack plus one largest group,
/// its index and framing).
pub const MAX_PACK_SIZE: u64 = PACK_BYTES + (MAX_GROUP_RAW + SEAL_OVERHEAD + MAX_INDEX_BLOB + 64) as u64;

const GROUP_ENTRY: usize = 8 + 4 + 4 + 1;
const CHUNK_ENTRY: usize = 32 + 4 + 4 + 4;

/// A pack's name: 16 random bytes, 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub(crate) fn random() -> PackId {
        PackId(nonce_bytes())
    }
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
    pub fn from_hex(s: &str) -> Option<PackId> {
        Some(PackId(unhex(s)?.try_into().ok()?))
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", self.to_hex())
    }
}

/// One group as the index records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub offset: u64,
    /// Bytes in the pack (nonce, ciphertext, tag).
    pub stored: u32,
    /// Plaintext bytes (the chunks, concatenated).
    pub raw: u32,
    pub flags: u8,
}

/// One chunk as the index records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkEntry {
    pub id: ChunkId,
    /// Position in [`PackIndex::groups`].
    pub group: u32,
    /// Where the chunk is in the group's plaintext.
    pub offset: u32,
    pub len: u32,
}

/// A pack's index, decrypted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackIndex {
    pub groups: Vec<GroupEntry>,
    pub chunks: Vec<ChunkEntry>,
}

impl PackIndex {
    /// ```text
    /// u32 groups, u32 chunks                       (little-endian throughout)
    /// per group: u64 offset, u32 stored, u32 raw, u8 flags
    /// per chunk: [32] id, u32 group, u32 offset, u32 len
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.groups.len() * GROUP_ENTRY + self.chunks.len() * CHUNK_ENTRY);
        b.extend_from_slice(&(self.groups.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for g in &self.groups {
            b.extend_from_slice(&g.offset.to_le_bytes());
            b.extend_from_slice(&g.stored.to_le_bytes());
            b.extend_from_slice(&g.raw.to_le_bytes());
            b.push(g.flags);
        }
        for c in &self.chunks {
            b.extend_from_slice(&c.id.0);
            b.extend_from_slice(&c.group.to_le_bytes());
            b.extend_from_slice(&c.offset.to_le_bytes());
            b.extend_from_slice(&c.len.to_le_bytes());
        }
        b
    }

    /// Parse and check an index of a pack whose index starts at `index_at`:
    /// groups in order, inside the pack, not overlapping; every chunk inside
    /// its group. The bytes were authenticated, so a failure means a writer
    /// bug, but nothing here trusts them: no panic, no large allocation.
    pub fn parse(b: &[u8], index_at: u64) -> Result<PackIndex, String> {
        let mut r = Reader(b);
        let ng = r.u32()? as usize;
        let nc = r.u32()? as usize;
        let need = ng
            .checked_mul(GROUP_ENTRY)
            .and_then(|g| nc.checked_mul(CHUNK_ENTRY).map(|c| (g, c)))
            .and_then(|(g, c)| g.checked_add(c));
        if need != Some(r.0.len()) {
            return Err("index length does not match its counts".into());
        }
        let mut groups = Vec::with_capacity(ng);
        let mut end = HEADER.len() as u64;
        for _ in 0..ng {
            let g = GroupEntry { offset: r.u64()?, stored: r.u32()?, raw: r.u32()?, flags: r.u8()? };
            let g_end = g.offset.checked_add(u64::from(g.stored));
            if g.offset < end
                || g_end.is_none_or(|e| e > index_at)
                || (g.stored as usize) < SEAL_OVERHEAD
                || g.raw as usize > MAX_GROUP_RAW
                || g.flags & !FLAG_ZSTD != 0
                || (g.flags & FLAG_ZSTD == 0 && g.stored as usize != g.raw as usize + SEAL_OVERHEAD)
            {
                return Err(format!("index: bad group at byte {}", g.offset));
            }
            end = g_end.unwrap();
            groups.push(g);
        }
        let mut chunks = Vec::with_capacity(nc);
        for _ in 0..nc {
            let c = ChunkEntry { id: ChunkId(r.bytes::<32>()?), group: r.u32()?, offset: r.u32()?, len: r.u32()? };
            let fits = groups
                .get(c.group as usize)
                .is_some_and(|g| u64::from(c.offset) + u64::from(c.len) <= u64::from(g.raw));
            if !fits {
                return Err(format!("index: chunk {} outside its group", c.id));
            }
            chunks.push(c);
        }
        Ok(PackIndex { groups, chunks })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("index truncated".into());
        }
        let (a, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(a.try_into().unwrap())
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
}

/// Associated data of a group: binds it to its pack, place, size and flags.
pub(crate) fn group_aad(pack: &PackId, g: &GroupEntry) -> Vec<u8> {
    let mut a = b"lifeline pack group v1".to_vec();
    a.extend_from_slice(&pack.0);
    a.extend_from_slice(&g.offset.to_le_bytes());
    a.extend_from_slice(&g.raw.to_le_bytes());
    a.push(g.flags);
    a
}

/// Associated data of an index: binds it to its pack and place.
pub(crate) fn index_aad(pack: &PackId, index_at: u64) -> Vec<u8> {
    let mut a = b"lifeline pack index v1".to_vec();
    a.extend_from_slice(&pack.0);
    a.extend_from_slice(&index_at.to_le_bytes());
    a
}

/// Compress `plain` if that makes it smaller: (bytes, flags).
pub(crate) fn compress(plain: &[u8], zstd: &mut zstd::bulk::Compressor<'static>) -> (Vec<u8>, u8) {
    if !plain.is_empty() {
        // zstd errors out when the output does not fit: then raw is smaller.
        let mut out = vec![0u8; plain.len() - 1];
        if let Ok(n) = zstd.compress_to_buffer(plain, &mut out[..]) {
            out.truncate(n);
            return (out, FLAG_ZSTD);
        }
    }
    (plain.to_vec(), 0)
}

/// `nonce | ciphertext | tag` of `plain`.
pub(crate) fn seal(cipher: &XChaCha20Poly1305, aad: &[u8], plain: Vec<u8>) -> Vec<u8> {
    let (nonce, body, tag) = seal_parts(cipher, aad, plain);
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + body.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    out
}

/// [`seal`] in three parts, the payload encrypted in place (no copy of a
/// large group).
pub(crate) fn seal_parts(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    mut plain: Vec<u8>,
) -> ([u8; NONCE_LEN], Vec<u8>, [u8; TAG_LEN]) {
    let nonce: [u8; NONCE_LEN] = nonce_bytes();
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, &mut plain)
        .expect("XChaCha20-Poly1305 encrypts any length we produce");
    (nonce, plain, tag.into())
}

/// Check and decrypt a [`seal`]ed blob.
pub(crate) fn open(cipher: &XChaCha20Poly1305, aad: &[u8], blob: &[u8]) -> Result<Vec<u8>, String> {
    if blob.len() < SEAL_OVERHEAD {
        return Err("shorter than any sealed blob (truncated?)".into());
    }
    let (nonce, rest) = blob.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut plain = body.to_vec();
    cipher
        .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut plain, Tag::from_slice(tag))
        .map_err(|_| "authentication failed: damaged, or moved from another pack or place".to_string())?;
    Ok(plain)
}

/// Decrypt and decompress a group read from its pack.
pub(crate) fn open_group(
    cipher: &XChaCha20Poly1305,
    pack: &PackId,
    g: &GroupEntry,
    blob: &[u8],
) -> Result<Vec<u8>, String> {
    if blob.len() != g.stored as usize {
        return Err(format!("read {} bytes of a {}-byte group (pack truncated?)", blob.len(), g.stored));
    }
    let body = open(cipher, &group_aad(pack, g), blob)?;
    let plain = if g.flags & FLAG_ZSTD != 0 {
        zstd::bulk::decompress(&body, g.raw as usize).map_err(|e| format!("zstd: {e}"))?
    } else {
        body
    };
    if plain.len() != g.raw as usize {
        return Err(format!("group holds {} bytes, its index says {}", plain.len(), g.raw));
    }
    Ok(plain)
}

/// Where the index blob of a pack of `size` bytes is, from the pack's last
/// [`TRAILER_LEN`] bytes: (offset, length). Stores use this to hand out index
/// blobs without the key.
pub fn index_location(size: u64, trailer: &[u8]) -> Result<(u64, usize), String> {
    if size < (HEADER.len() + SEAL_OVERHEAD + TRAILER_LEN) as u64 || trailer.len() != TRAILER_LEN {
        return Err(format!("{size} bytes: too short for a pack (torn write?)"));
    }
    if trailer[4..] != TRAILER_MAGIC {
        return Err("no index trailer at the end (torn write?)".into());
    }
    let len = u32::from_le_bytes(trailer[..4].try_into().unwrap()) as usize;
    let room = size - (HEADER.len() + TRAILER_LEN) as u64;
    if !(SEAL_OVERHEAD..=MAX_INDEX_BLOB).contains(&len) || len as u64 > room {
        return Err(format!("trailer gives an index of {len} bytes, impossible here"));
    }
    Ok((size - TRAILER_LEN as u64 - len as u64, len))
}

/// For the fuzz target `pack_index` (`imaging/disk/fuzz`): the first 8
/// bytes are where the index would start, the rest a decrypted index. Index
/// bytes are only parsed once authenticated, but a writer bug must still
/// give an error, never a panic or a huge allocation; an index that parses
/// encodes back to the same bytes. The trailer check runs on the last bytes.
#[doc(hidden)]
pub fn fuzz_index(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (at, rest) = data.split_at(8);
    let index_at = u64::from_le_bytes(at.try_into().unwrap());
    if let Ok(ix) = PackIndex::parse(rest, index_at) {
        assert_eq!(ix.encode(), rest);
    }
    let _ = index_location(index_at, &data[data.len().saturating_sub(TRAILER_LEN)..]);
}

/// The trailer for an index blob of `len` bytes.
pub(crate) fn trailer(len: usize) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..4].copy_from_slice(&(len as u32).to_le_bytes());
    t[4..].copy_from_slice(&TRAILER_MAGIC);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PackIndex {
        PackIndex {
            groups: vec![
                GroupEntry { offset: 8, stored: 100, raw: 200, flags: FLAG_ZSTD },
                GroupEntry { offset: 108, stored: 90, raw: 50, flags: 0 },
            ],
            chunks: vec![
                ChunkEntry { id: ChunkId([1; 32]), group: 0, offset: 0, len: 150 },
                ChunkEntry { id: ChunkId([2; 32]), group: 0, offset: 150, len: 50 },
                ChunkEntry { id: ChunkId([3; 32]), group: 1, offset: 0, len: 50 },
            ],
        }
    }

    #[test]
    fn index_round_trip_and_checks() {
        let ix = sample();
        let b = ix.encode();
        assert_eq!(PackIndex::parse(&b, 198).unwrap(), ix);
        // Groups past the index, truncations, trailing bytes: refused, no panic.
        assert!(PackIndex::parse(&b, 197).is_err());
        for n in 0..b.len() {
            assert!(PackIndex::parse(&b[..n], 198).is_err(), "{n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(PackIndex::parse(&longer, 198).is_err());
        let mut bad = ix.clone();
        bad.chunks[2].len = 51;
        assert!(PackIndex::parse(&bad.encode(), 198).is_err());
        let mut bad = ix.clone();
        bad.groups[1].offset = 100; // overlaps group 0
        assert!(PackIndex::parse(&bad.encode(), 198).is_err());
        let mut bad = ix.clone();
        bad.groups[1].offset = u64::MAX - 10; // offset + stored overflows
        assert!(PackIndex::parse(&bad.encode(), 198).is_err());
        let mut huge = vec![0xff; 8];
        huge.extend_from_slice(&[0; 16]);
        assert!(PackIndex::parse(&huge, 1 << 40).is_err());
    }

    #[test]
    fn trailer_checks() {
        let t = trailer(100);
        assert_eq!(index_location(1000, &t).unwrap(), (892, 100));
        assert!(index_location(100, &t).is_err());
        assert!(index_location(1000, &[0; 8]).is_err());
        assert!(index_location(1000, &trailer(10)).is_err());
        assert!(index_location(10, &trailer(40)).is_err());
    }

    #[test]
    fn groups_are_bound_to_pack_and_place() {
        let c = crate::format::cipher(&[9; 32]);
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        let plain = vec![5u8; 10_000];
        let (body, flags) = compress(&plain, &mut z);
        assert_eq!(flags, FLAG_ZSTD);
        let p = PackId([1; 16]);
        let g = GroupEntry { offset: 8, stored: (body.len() + SEAL_OVERHEAD) as u32, raw: 10_000, flags };
        let blob = seal(&c, &group_aad(&p, &g), body);
        assert_eq!(open_group(&c, &p, &g, &blob).unwrap(), plain);
        assert!(open_group(&c, &PackId([2; 16]), &g, &blob).is_err());
        assert!(open_group(&c, &p, &GroupEntry { offset: 9, ..g }, &blob).is_err());
        assert!(open_group(&c, &p, &g, &blob[..blob.len() - 1]).is_err());
        let (raw, f) = compress(&[1, 2, 3], &mut z);
        assert_eq!((raw, f), (vec![1, 2, 3], 0));
    }
}
