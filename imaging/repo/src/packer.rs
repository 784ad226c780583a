//! Writing packs, and reading their indexes back.

use chacha20poly1305::XChaCha20Poly1305;

use crate::format::ChunkId;
use crate::pack::{self, ChunkEntry, GroupEntry, PackId, PackIndex};
use crate::store::{PackEntry, PackSink, Store};
use crate::{RepoError, Result};

/// A pack being filled with groups, streamed to its store as it grows (so a
/// pack costs no memory beyond the group being added).
pub(crate) struct PackWriter {
    id: PackId,
    sink: Box<dyn PackSink>,
    len: u64,
    index: PackIndex,
}

impl PackWriter {
    pub fn new(store: &dyn Store) -> Result<PackWriter> {
        let id = PackId::random();
        let mut sink = store.create_pack(&id)?;
        sink.write(&pack::HEADER)?;
        Ok(PackWriter { id, sink, len: pack::HEADER.len() as u64, index: PackIndex::default() })
    }

    /// Compress `plain`, the chunks `chunks` (id, length) one after the
    /// other, as one group; encrypt and append it. Returns the bytes it takes
    /// in the pack.
    pub fn add_group(
        &mut self,
        cipher: &XChaCha20Poly1305,
        chunks: &[(ChunkId, usize)],
        plain: &[u8],
        zstd: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<u64> {
        if plain.len() > pack::MAX_GROUP_RAW {
            return Err(RepoError::TooLarge { what: "group", len: plain.len(), max: pack::MAX_GROUP_RAW });
        }
        let group = self.index.groups.len() as u32;
        let mut offset = 0;
        for &(id, len) in chunks {
            self.index.chunks.push(ChunkEntry { id, group, offset: offset as u32, len: len as u32 });
            offset += len;
        }
        debug_assert_eq!(offset, plain.len());
        let (body, flags) = pack::compress(plain, zstd);
        let g = GroupEntry {
            offset: self.len,
            stored: (body.len() + pack::SEAL_OVERHEAD) as u32,
            raw: plain.len() as u32,
            flags,
        };
        let (nonce, body, tag) = pack::seal_parts(cipher, &pack::group_aad(&self.id, &g), body);
        self.index.groups.push(g);
        for part in [&nonce[..], &body, &tag[..]] {
            self.sink.write(part)?;
        }
        self.len += u64::from(g.stored);
        Ok(u64::from(g.stored))
    }

    /// Time to close this pack (before the next group could pass a limit).
    pub fn full(&self) -> bool {
        self.len >= pack::PACK_BYTES || self.index.chunks.len() + pack::GROUP_CHUNKS > pack::PACK_CHUNKS
    }

    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.index.chunks.iter().map(|c| &c.id)
    }

    /// Append the index and the trailer and commit: the pack is durable when
    /// this returns.
    pub fn finish(mut self, cipher: &XChaCha20Poly1305) -> Result<(PackId, PackIndex)> {
        let blob = pack::seal(cipher, &pack::index_aad(&self.id, self.len), self.index.encode());
        self.sink.write(&blob)?;
        self.sink.write(&pack::trailer(blob.len()))?;
        self.sink.commit()?;
        Ok((self.id, self.index))
    }
}

/// Decrypt and parse the index blob of a listed pack.
pub(crate) fn open_index(cipher: &XChaCha20Poly1305, entry: &PackEntry) -> std::result::Result<PackIndex, String> {
    let blob = entry.index.as_ref().map_err(|e| e.clone())?;
    let at = entry.size.checked_sub((blob.len() + pack::TRAILER_LEN) as u64).ok_or("index larger than the pack")?;
    let plain = pack::open(cipher, &pack::index_aad(&entry.id, at), blob).map_err(|e| format!("index: {e}"))?;
    PackIndex::parse(&plain, at)
}
