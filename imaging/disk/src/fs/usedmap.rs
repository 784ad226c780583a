//! The used-block map ("address correspondence table").

use crate::Range;

/// Which blocks of a partition are used, as sorted, merged runs of blocks.
///
/// Runs rather than a bitmap: real filesystems allocate in long extents, so a
/// few thousand runs describe a large partition, and iteration over used byte
/// ranges (what the imaging pipeline does) is direct. The last block may be
/// partial when the partition length is not a multiple of `block_size`;
/// byte ranges are clipped to `total_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedMap {
    /// Bytes per block (the filesystem's block, cluster or sector unit).
    pub block_size: u32,
    /// Blocks covered by the map (the filesystem's size, which may be smaller
    /// than its partition: the rest of the partition is unused).
    pub total_blocks: u64,
    /// Free-form detail from the reader, e.g. "ext4", "fat32"; recorded with the
    /// map for `info`.
    pub variant: String,
    runs: Vec<(u64, u64)>, // (first block, count), sorted, disjoint, non-adjacent
}

/// Collects used runs in any order; [`UsedMapBuilder::finish`] sorts and merges.
pub struct UsedMapBuilder {
    block_size: u32,
    total_blocks: u64,
    runs: Vec<(u64, u64)>,
}

impl UsedMapBuilder {
    pub fn new(block_size: u32, total_blocks: u64) -> Self {
        assert!(block_size > 0);
        UsedMapBuilder { block_size, total_blocks, runs: Vec::new() }
    }

    /// Mark `count` blocks from `start` used (clipped to the map; empty is fine).
    pub fn add(&mut self, start: u64, count: u64) {
        let end = start.saturating_add(count).min(self.total_blocks);
        if start >= end {
            return;
        }
        if let Some(last) = self.runs.last_mut() {
            // Cheap merge of the common in-order case keeps memory low while
            // scanning bitmaps.
            if last.0 + last.1 == start {
                last.1 += end - start;
                return;
            }
        }
        self.runs.push((start, end - start));
    }

    pub fn finish(mut self, variant: impl Into<String>) -> UsedMap {
        self.runs.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.runs.len());
        for (s, c) in self.runs {
            if let Some(last) = merged.last_mut() {
                if s <= last.0 + last.1 {
                    let end = (last.0 + last.1).max(s + c);
                    last.1 = end - last.0;
                    continue;
                }
            }
            merged.push((s, c));
        }
        UsedMap { block_size: self.block_size, total_blocks: self.total_blocks, variant: variant.into(), runs: merged }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("used-block map: {0}")]
pub struct UsedMapDecodeError(&'static str);

const MAGIC: &[u8; 4] = b"LLU1";

impl UsedMap {
    /// Used runs as (first block, block count).
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }
    pub fn used_blocks(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
    pub fn total_bytes(&self) -> u64 {
        self.total_blocks * self.block_size as u64
    }
    pub fn used_bytes(&self) -> u64 {
        self.byte_ranges().map(|r| r.len()).sum()
    }
    pub fn is_used(&self, block: u64) -> bool {
        let i = self.runs.partition_point(|r| r.0 + r.1 <= block);
        self.runs.get(i).is_some_and(|r| r.0 <= block)
    }
    /// Used byte ranges, partition-relative, in ascending order.
    pub fn byte_ranges(&self) -> impl Iterator<Item = Range> + '_ {
        let bs = self.block_size as u64;
        self.runs.iter().map(move |&(s, c)| Range::new(s * bs, (s + c) * bs))
    }

    /// Compact serialization: magic, block size, total blocks, run count, then
    /// each run as LEB128 varints (gap since the previous run's end, length).
    /// Runs are usually long and close, so a map costs a few bytes per extent.
    /// The variant string is prefixed by its length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.runs.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        put_varint(&mut out, self.total_blocks);
        put_varint(&mut out, self.variant.len() as u64);
        out.extend_from_slice(self.variant.as_bytes());
        put_varint(&mut out, self.runs.len() as u64);
        let mut prev_end = 0;
        for &(s, c) in &self.runs {
            put_varint(&mut out, s - prev_end);
            put_varint(&mut out, c);
            prev_end = s + c;
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<UsedMap, UsedMapDecodeError> {
        let e = UsedMapDecodeError;
        if b.len() < 8 || &b[..4] != MAGIC {
            return Err(e("bad magic"));
        }
        let block_size = u32::from_le_bytes(b[4..8].try_into().unwrap());
        if block_size == 0 {
            return Err(e("zero block size"));
        }
        let mut p = 8;
        let total_blocks = get_varint(b, &mut p).ok_or(e("truncated"))?;
        let vlen = get_varint(b, &mut p).ok_or(e("truncated"))? as usize;
        let variant = b.get(p..p.checked_add(vlen).ok_or(e("truncated"))?).ok_or(e("truncated"))?;
        let variant = String::from_utf8(variant.to_vec()).map_err(|_| e("variant not UTF-8"))?;
        p += vlen;
        let n = get_varint(b, &mut p).ok_or(e("truncated"))?;
        let mut runs = Vec::with_capacity(n.min(1 << 20) as usize);
        let mut prev_end = 0u64;
        for _ in 0..n {
            let gap = get_varint(b, &mut p).ok_or(e("truncated"))?;
            let c = get_varint(b, &mut p).ok_or(e("truncated"))?;
            let s = prev_end.checked_add(gap).ok_or(e("overflow"))?;
            let end = s.checked_add(c).ok_or(e("overflow"))?;
            if c == 0 || end > total_blocks || (!runs.is_empty() && gap == 0) {
                return Err(e("runs not sorted, empty, adjacent or out of range"));
            }
            runs.push((s, c));
            prev_end = end;
        }
        if p != b.len() {
            return Err(e("trailing bytes"));
        }
        Ok(UsedMap { block_size, total_blocks, variant, runs })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], p: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*p)?;
        *p += 1;
        v |= ((x & 0x7f) as u64) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_roundtrip() {
        let mut b = UsedMapBuilder::new(4096, 1000);
        b.add(10, 5);
        b.add(0, 2);
        b.add(15, 3); // adjacent to 10..15
        b.add(12, 1); // inside
        b.add(990, 100); // clipped
        b.add(500, 0);
        let m = b.finish("test");
        assert_eq!(m.runs(), &[(0, 2), (10, 8), (990, 10)]);
        assert_eq!(m.used_blocks(), 20);
        assert_eq!(m.used_bytes(), 20 * 4096);
        assert!(m.is_used(0) && m.is_used(17) && !m.is_used(18) && m.is_used(999) && !m.is_used(5));
        let bytes = m.to_bytes();
        assert_eq!(UsedMap::from_bytes(&bytes).unwrap(), m);
        assert!(UsedMap::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    }
}
