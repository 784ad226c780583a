//! What an image is: the manifest stored (encrypted) in the repository.
//!
//! ```text
//! "LLIM" u8 version=1, 3 zero bytes
//! u32 LE  header length, then the header as JSON (Header below)
//! u32 LE  map count, then per map: u32 LE length + UsedMap::to_bytes()
//! u64 LE  chunk count, then per chunk: u64 LE cell index + 32-byte chunk id
//! ```
//!
//! The header is JSON so `info` can show everything and a later version can
//! add fields without breaking old images; the two bulky parts (used-block
//! maps and the chunk table, which grows with the disk) are binary. The
//! repository encrypts and authenticates the whole manifest under the image's
//! name, so nothing here needs its own checksum.

use lifeline_disk::fs::UsedMap;
use lifeline_disk::Range;
use lifeline_repo::ChunkId;
use serde::{Deserialize, Serialize};

use crate::extents::Extents;

const MAGIC: &[u8; 4] = b"LLIM";
const VERSION: u8 = 1;

/// The JSON part of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: u32,
    pub name: String,
    /// The machine the disk belongs to (its hostname unless given).
    pub machine: String,
    /// When the backup started, Unix seconds (UTC).
    pub created_unix: u64,
    /// Program and version that wrote the image.
    pub tool: String,
    pub source: DiskInfo,
    /// Bytes per cell of the chunk grid (a power of two).
    pub chunk_size: u64,
    /// "gpt", "mbr" or "none".
    pub table: String,
    pub disk_guid: Option<String>,
    pub mbr_signature: Option<u32>,
    /// System region kept raw: every byte outside partitions except the
    /// unallocated tail (see `lifeline_disk::layout`), as `[start, end)`.
    pub keep: Vec<(u64, u64)>,
    pub partitions: Vec<PartRecord>,
    /// Problems found while reading the source that did not stop the backup.
    pub warnings: Vec<String>,
    pub stats: BackupStats,
}

/// The disk an image was taken from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskInfo {
    pub path: String,
    pub size: u64,
    pub sector_size: u32,
    pub model: Option<String>,
    pub serial: Option<String>,
}

/// One partition (or the whole disk of a table-less disk).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartRecord {
    pub index: u32,
    pub start: u64,
    pub len: u64,
    /// "gpt:<type GUID>", "mbr:0x83" or "none".
    pub ptype: String,
    pub name: String,
    pub guid: Option<String>,
    pub attrs: u64,
    pub content: Content,
}

/// How a partition's bytes were chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Content {
    /// A filesystem reader produced the used-block map `map` (index into the
    /// manifest's maps); only those blocks are stored.
    UsedBlocks { fs: String, variant: String, map: u32, block_size: u32, used_blocks: u64, total_blocks: u64 },
    /// Every block was read (all-zero cells are not stored), because no
    /// reader recognised the content, or one recognised it and refused.
    EveryBlock { reason: String },
}

/// Figures of the backup run, for `info` and scripts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStats {
    /// Bytes the image covers (system region + used blocks + every-block
    /// partitions); these were read from the source.
    pub image_bytes: u64,
    /// Cells holding data, and how many of them were all zeros (not stored).
    pub cells: u64,
    pub zero_cells: u64,
    /// Chunks new to the repository, their plaintext bytes and the bytes they
    /// took on disk (compressed, encrypted).
    pub new_chunks: u64,
    pub bytes_new: u64,
    pub bytes_stored: u64,
    pub seconds: f64,
}

/// A decoded manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub header: Header,
    pub maps: Vec<UsedMap>,
    /// (cell index, chunk id), ascending by cell. Cells that hold covered
    /// bytes but are absent here are all zeros.
    pub chunks: Vec<(u64, ChunkId)>,
}

#[derive(Debug, thiserror::Error)]
#[error("image manifest is invalid: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(&self.header).expect("header serialises");
        let mut out = Vec::with_capacity(64 + json.len() + self.chunks.len() * 40);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&(self.maps.len() as u32).to_le_bytes());
        for m in &self.maps {
            let b = m.to_bytes();
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&b);
        }
        out.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        for (cell, id) in &self.chunks {
            out.extend_from_slice(&cell.to_le_bytes());
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    /// Decode and check everything restore relies on: sizes, map references,
    /// ranges inside the disk, chunk cells in order and inside the image.
    pub fn decode(b: &[u8]) -> Result<Manifest, ManifestError> {
        let err = |s: &str| ManifestError(s.to_string());
        let mut r = Reader { b, p: 0 };
        if r.take(4).ok_or(err("truncated"))? != MAGIC {
            return Err(err("not an image manifest (bad magic)"));
        }
        let v = r.take(4).ok_or(err("truncated"))?;
        if v[0] != VERSION {
            return Err(ManifestError(format!(
                "format version {} is not supported by this program (it reads {VERSION}); use a newer lifeline-image",
                v[0]
            )));
        }
        let jlen = r.u32().ok_or(err("truncated"))? as usize;
        let json = r.take(jlen).ok_or(err("truncated header"))?;
        let header: Header = serde_json::from_slice(json).map_err(|e| ManifestError(format!("header: {e}")))?;
        let nmaps = r.u32().ok_or(err("truncated"))?;
        let mut maps = Vec::new();
        for _ in 0..nmaps {
            let n = r.u32().ok_or(err("truncated map"))? as usize;
            let m = UsedMap::from_bytes(r.take(n).ok_or(err("truncated map"))?)
                .map_err(|e| ManifestError(format!("used-block map: {e}")))?;
            maps.push(m);
        }
        let nchunks = r.u64().ok_or(err("truncated"))?;
        if nchunks > (b.len() as u64) / 40 {
            return Err(err("chunk count larger than the manifest"));
        }
        let mut chunks = Vec::with_capacity(nchunks as usize);
        for _ in 0..nchunks {
            let cell = r.u64().ok_or(err("truncated chunk table"))?;
            let id: [u8; 32] = r.take(32).ok_or(err("truncated chunk table"))?.try_into().unwrap();
            chunks.push((cell, ChunkId(id)));
        }
        if r.p != b.len() {
            return Err(err("trailing bytes"));
        }
        let m = Manifest { header, maps, chunks };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let h = &self.header;
        let bad = |s: String| Err(ManifestError(s));
        if !h.chunk_size.is_power_of_two() || !(4096..=(64 << 20)).contains(&h.chunk_size) {
            return bad(format!("chunk size {} invalid", h.chunk_size));
        }
        if !h.source.sector_size.is_power_of_two() || h.source.sector_size < 512 {
            return bad(format!("sector size {} invalid", h.source.sector_size));
        }
        let size = h.source.size;
        for &(s, e) in &h.keep {
            if s >= e || e > size {
                return bad(format!("kept range {s}..{e} outside the disk"));
            }
        }
        for p in &h.partitions {
            if p.start.checked_add(p.len).is_none_or(|e| e > size) {
                return bad(format!("partition {} outside the disk", p.index));
            }
            if let Content::UsedBlocks { map, .. } = p.content {
                if map as usize >= self.maps.len() {
                    return bad(format!("partition {} refers to a missing map", p.index));
                }
            }
        }
        let cells = size.div_ceil(h.chunk_size);
        for w in self.chunks.windows(2) {
            if w[0].0 >= w[1].0 {
                return bad("chunk table not in ascending cell order".into());
            }
        }
        if self.chunks.last().is_some_and(|c| c.0 >= cells) {
            return bad("chunk table refers to a cell past the end of the disk".into());
        }
        Ok(())
    }

    /// The bytes this image covers (see [`Extents`]). Backup computes the
    /// same set from the same records, so what is read is what is restored.
    pub fn extents(&self) -> Extents {
        image_extents(&self.header.keep, &self.header.partitions, &self.maps)
    }

    /// Chunk id for a cell, if the cell was stored.
    pub fn chunk_for(&self, cell: u64) -> Option<ChunkId> {
        self.chunks.binary_search_by_key(&cell, |c| c.0).ok().map(|i| self.chunks[i].1)
    }

    pub fn created(&self) -> String {
        crate::util::format_utc(self.header.created_unix)
    }
}

/// Keep ranges + per partition its used blocks (clipped to the partition) or
/// all of it.
pub fn image_extents(keep: &[(u64, u64)], parts: &[PartRecord], maps: &[UsedMap]) -> Extents {
    let mut v: Vec<Range> = keep.iter().map(|&(s, e)| Range::new(s, e)).collect();
    for p in parts {
        match &p.content {
            Content::UsedBlocks { map, .. } => {
                let end = p.start + p.len;
                v.extend(
                    maps[*map as usize]
                        .byte_ranges()
                        .map(|r| Range::new((p.start + r.start).min(end), (p.start + r.end).min(end))),
                );
            }
            Content::EveryBlock { .. } => v.push(Range::new(p.start, p.start + p.len)),
        }
    }
    Extents::from_ranges(v)
}

struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.p..self.p.checked_add(n)?)?;
        self.p += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_disk::fs::UsedMapBuilder;

    fn sample() -> Manifest {
        let mut b = UsedMapBuilder::new(4096, 100);
        b.add(0, 3);
        b.add(50, 10);
        Manifest {
            header: Header {
                format: 1,
                name: "pc1".into(),
                machine: "pc1".into(),
                created_unix: 1_790_000_000,
                tool: "test".into(),
                source: DiskInfo {
                    path: "/dev/x".into(),
                    size: 1 << 20,
                    sector_size: 512,
                    model: None,
                    serial: Some("S1".into()),
                },
                chunk_size: 65536,
                table: "mbr".into(),
                disk_guid: None,
                mbr_signature: Some(7),
                keep: vec![(0, 1024)],
                partitions: vec![PartRecord {
                    index: 1,
                    start: 4096,
                    len: 409600,
                    ptype: "mbr:0x83".into(),
                    name: String::new(),
                    guid: None,
                    attrs: 0,
                    content: Content::UsedBlocks {
                        fs: "ext".into(),
                        variant: "ext4".into(),
                        map: 0,
                        block_size: 4096,
                        used_blocks: 13,
                        total_blocks: 100,
                    },
                }],
                warnings: vec![],
                stats: BackupStats::default(),
            },
            maps: vec![b.finish("ext4")],
            chunks: vec![(0, ChunkId([1; 32])), (3, ChunkId([2; 32]))],
        }
    }

    #[test]
    fn roundtrip_and_extents() {
        let m = sample();
        let b = m.encode();
        assert_eq!(Manifest::decode(&b).unwrap(), m);
        assert_eq!(
            m.extents().ranges(),
            &[Range::new(0, 1024), Range::new(4096, 4096 + 3 * 4096), Range::new(4096 + 50 * 4096, 4096 + 60 * 4096)]
        );
        assert_eq!(m.chunk_for(3), Some(ChunkId([2; 32])));
        assert_eq!(m.chunk_for(2), None);
    }

    #[test]
    fn damaged_manifests_are_refused() {
        let b = sample().encode();
        for cut in [3, 10, b.len() - 1] {
            assert!(Manifest::decode(&b[..cut]).is_err());
        }
        let mut m = sample();
        m.chunks.swap(0, 1);
        assert!(Manifest::decode(&m.encode()).is_err());
        let mut m = sample();
        m.header.partitions[0].len = 1 << 30;
        assert!(Manifest::decode(&m.encode()).is_err());
        let mut m = sample();
        m.chunks.push((1 << 40, ChunkId([0; 32])));
        assert!(Manifest::decode(&m.encode()).is_err());
    }
}
