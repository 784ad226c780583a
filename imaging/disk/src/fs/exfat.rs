//! exFAT: used clusters from the allocation bitmap.
//!
//! Unlike FAT, exFAT does not record allocation in the FAT: a contiguous file
//! is flagged `NoFatChain` and leaves its FAT entries untouched (often
//! garbage), so the FAT cannot be used as a map. Allocation lives in the
//! allocation bitmap, a system file found through a directory entry (type
//! 0x81) of the root directory: bit *i* set = cluster *i* + 2 in use.
//!
//! Always used: the main and backup boot regions (sectors 0..=11 and 12..=23:
//! boot sector, extended boot sectors, OEM parameters, boot checksum) and
//! every FAT copy. In the cluster heap, the clusters whose bitmap bit is set.
//! The map's unit is the sector: the FAT and the cluster heap are placed in
//! sectors and the heap need not start on a cluster boundary.
//!
//! The boot checksum (sector 11) is verified over sectors 0..=10, so a damaged
//! or half-written boot region is refused rather than trusted. The root
//! directory is followed through the active FAT (it never uses `NoFatChain`);
//! so are the allocation bitmap and the up-case table, which must be marked
//! in the bitmap (they are allocated clusters; a bitmap that does not cover
//! them, or the root directory, cannot be right). With two FATs (TexFAT) there
//! are two bitmaps; `VolumeFlags` bit 0 (`ActiveFat`) selects the FAT and the
//! bitmap (`BitmapFlags` bit 0) that describe the volume.
//!
//! Refuses (the caller images every block): a FileSystemRevision major other
//! than 1, a volume marked dirty, a failing boot checksum, sizes or cluster
//! numbers out of range, broken cluster chains. On "dirty": exFAT has no
//! journal, and a volume not cleanly unmounted may hold clusters that a
//! directory entry uses but the bitmap does not have yet. Marking those
//! conservatively would mean walking every directory and file (the FAT alone
//! misses `NoFatChain` files), so the volume is refused instead, with a
//! message saying to check it (fsck.exfat / chkdsk) first.
//!
//! Every on-disk field is hostile: offsets are bounds-checked, arithmetic is
//! checked, cluster chains are bounded by the cluster count.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::ReadAt;

pub struct Exfat;

reader_errors!(NAME);

const NAME: &str = "exfat";

/// VolumeFlags bits.
const ACTIVE_FAT: u16 = 0x1;
const VOLUME_DIRTY: u16 = 0x2;

/// Directory entry types (InUse bit 7 set).
const ENTRY_END: u8 = 0x00;
const ENTRY_BITMAP: u8 = 0x81;
const ENTRY_UPCASE: u8 = 0x82;

/// FAT values.
const FAT_EOC: u32 = 0xFFFF_FFFF;

/// The specification's limit on a directory's size.
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Read bitmaps and directories in pieces of at most this size (clusters go
/// up to 32 MiB; memory is bounded in the boot OS).
const CHUNK: u64 = 1 << 20;

fn g16(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn g32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn g64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// The boot sector's checksum algorithm (exFAT specification 3.4): a rotate
/// right and add over every byte of sectors 0..=10, skipping VolumeFlags
/// (bytes 106, 107) and PercentInUse (112) of sector 0, which change at run
/// time without the checksum being rewritten.
fn boot_checksum(region: &[u8]) -> u32 {
    let mut sum = 0u32;
    for (i, &b) in region.iter().enumerate() {
        if i == 106 || i == 107 || i == 112 {
            continue;
        }
        sum = sum.rotate_right(1).wrapping_add(b as u32);
    }
    sum
}

/// Volume geometry, all in sectors unless said otherwise.
struct Geo {
    bps: u64,
    spc_shift: u32,
    fat_base: u64, // byte offset of the active FAT
    heap: u64,
    count: u64,
    vol_bytes: u64,
}

impl Geo {
    fn cluster_bytes(&self) -> u64 {
        self.bps << self.spc_shift
    }
    /// Byte offset of a (valid) cluster.
    fn cluster_off(&self, c: u64) -> u64 {
        (self.heap + ((c - 2) << self.spc_shift)) * self.bps
    }
    fn valid(&self, c: u64) -> bool {
        (2..self.count + 2).contains(&c)
    }

    /// The cluster chain from `first` through the active FAT, as runs of
    /// contiguous clusters (first, count). Stops at end of chain, or after
    /// `limit` clusters when given (an object of known size). A chain longer
    /// than the cluster count loops.
    fn chain(&self, part: &dyn ReadAt, first: u64, limit: Option<u64>, what: &str) -> Result<Vec<(u64, u64)>, FsError> {
        if !self.valid(first) {
            return Err(damaged(format!("{what}: first cluster {first} out of range")));
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut c = first;
        let mut n = 0u64;
        // Chains are mostly sequential: read the FAT a 4 KiB block at a time.
        let mut cached: Option<u64> = None;
        let mut block = [0u8; 4096];
        loop {
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == c => r.1 += 1,
                _ => runs.push((c, 1)),
            }
            n += 1;
            if limit.is_some_and(|l| n >= l) {
                return Ok(runs);
            }
            if n > self.count {
                return Err(damaged(format!("{what}: cluster chain loops")));
            }
            // Without a size (the root directory), the chain is bounded by the
            // specification's largest directory, so a looping FAT costs at
            // most that many reads.
            if limit.is_none() && n * self.cluster_bytes() > MAX_DIR_BYTES {
                return Err(damaged(format!("{what}: cluster chain longer than 256 MiB (or looping)")));
            }
            // The boot sector checks guarantee the FAT holds count + 2
            // entries, so entry `c` is inside it, and the FAT is inside the
            // volume; the block is clipped to the volume's end.
            let pos = self.fat_base + c * 4;
            let bi = pos / 4096;
            let blen = 4096.min(self.vol_bytes.saturating_sub(bi * 4096)) as usize;
            if cached != Some(bi) {
                part.read_exact_at(&mut block[..blen], bi * 4096).map_err(io)?;
                cached = Some(bi);
            }
            let o = (pos % 4096) as usize;
            let next = g32(&block[..blen], o);
            if next == FAT_EOC {
                if limit.is_some() {
                    return Err(damaged(format!(
                        "{what}: cluster chain ends after {n} clusters, shorter than its size"
                    )));
                }
                return Ok(runs);
            }
            if !self.valid(next as u64) {
                return Err(damaged(format!("{what}: FAT entry of cluster {c} is {next:#x}, not a cluster")));
            }
            c = next as u64;
        }
    }

    /// Stream the bytes of a chain (first `total` bytes) to `f` in pieces of
    /// at most [`CHUNK`] bytes; `f` returns false to stop early.
    fn stream(
        &self,
        part: &dyn ReadAt,
        runs: &[(u64, u64)],
        total: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, FsError>,
    ) -> Result<(), FsError> {
        let mut buf = vec![0u8; CHUNK.min(total.max(1)) as usize];
        let mut pos = 0u64; // bytes delivered so far
        for &(c, n) in runs {
            let start = self.cluster_off(c);
            let run_bytes = n * self.cluster_bytes();
            let mut o = 0u64;
            while o < run_bytes && pos < total {
                let k = (run_bytes - o).min(total - pos).min(buf.len() as u64) as usize;
                part.read_exact_at(&mut buf[..k], start + o).map_err(io)?;
                if !f(pos, &buf[..k])? {
                    return Ok(());
                }
                o += k as u64;
                pos += k as u64;
            }
        }
        Ok(())
    }
}

impl FsReader for Exfat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        if len < 512 {
            return Ok(None);
        }
        let mut b = [0u8; 512];
        part.read_exact_at(&mut b, 0).map_err(io)?;
        if &b[3..11] != b"EXFAT   " {
            return Ok(None);
        }
        // The file system name is the signature; past it, anything wrong is
        // damage to our filesystem, not someone else's.
        if b[510] != 0x55 || b[511] != 0xAA {
            return Err(damaged("boot sector signature 0x55AA missing"));
        }
        if b[11..64].iter().any(|&x| x != 0) {
            return Err(damaged("boot sector: MustBeZero field (BPB area) is not zero"));
        }
        let bps_shift = b[108] as u32;
        let spc_shift = b[109] as u32;
        if !(9..=12).contains(&bps_shift) || bps_shift + spc_shift > 25 {
            return Err(damaged(format!(
                "boot sector: 2^{bps_shift} bytes per sector, 2^{spc_shift} sectors per cluster"
            )));
        }
        let bps = 1u64 << bps_shift;
        if len < 24 * bps {
            return Err(damaged("partition smaller than the boot regions"));
        }

        // Boot checksum: sector 11 repeats the checksum of sectors 0..=10.
        let mut region = vec![0u8; (12 * bps) as usize];
        part.read_exact_at(&mut region, 0).map_err(io)?;
        let sum = boot_checksum(&region[..(11 * bps) as usize]);
        let stored = &region[(11 * bps) as usize..];
        if stored.chunks_exact(4).any(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) != sum) {
            return Err(damaged(format!(
                "main boot region checksum mismatch (computed {sum:#010x}, sector 11 holds {:#010x})",
                g32(stored, 0)
            )));
        }

        let rev = g16(&b, 104);
        if rev >> 8 != 1 {
            return Err(unsupported(format!("file system revision {}.{:02}", rev >> 8, rev & 0xFF)));
        }
        let flags = g16(&b, 106);
        if flags & VOLUME_DIRTY != 0 {
            return Err(unsupported(
                "volume is marked dirty (not cleanly unmounted): its allocation bitmap may \
                 miss clusters in use; check it (fsck.exfat, chkdsk) or mount and unmount it cleanly first",
            ));
        }
        let vol_len = g64(&b, 72);
        let fat_offset = g32(&b, 80) as u64;
        let fat_length = g32(&b, 84) as u64;
        let heap = g32(&b, 88) as u64;
        let count = g32(&b, 92) as u64;
        let root = g32(&b, 96) as u64;
        let nfats = b[110] as u64;
        let sizes = format!(
            "volume of {vol_len} sectors, FAT at {fat_offset} of {fat_length} sectors x{nfats}, \
             heap at {heap} of {count} clusters of 2^{spc_shift} sectors"
        );
        match vol_len.checked_mul(bps) {
            Some(bytes) if bytes <= len => {}
            _ => return Err(damaged(format!("{sizes}: larger than its partition ({len} bytes)"))),
        }
        // All of these are u32-derived, so the products below cannot overflow
        // a u64 (count < 2^32, shift <= 25).
        let ok = (1..=2).contains(&nfats)
            && fat_offset >= 24
            && (1..=0xFFFF_FFF5).contains(&count)
            && fat_length * bps >= (count + 2) * 4
            && fat_offset + fat_length * nfats <= heap
            && heap + (count << spc_shift) <= vol_len;
        if !ok {
            return Err(damaged(format!("boot sector sizes out of range: {sizes}")));
        }
        let active = (flags & ACTIVE_FAT) as u64;
        if active >= nfats {
            return Err(damaged("second FAT active on a volume with one FAT"));
        }
        let geo = Geo {
            bps,
            spc_shift,
            fat_base: (fat_offset + active * fat_length) * bps,
            heap,
            count,
            vol_bytes: vol_len * bps,
        };

        // Root directory: find the allocation bitmap(s) and the up-case table.
        let root_runs = geo.chain(part, root, None, "root directory")?;
        let root_bytes: u64 = root_runs.iter().map(|r| r.1).sum::<u64>() * geo.cluster_bytes();
        if root_bytes > MAX_DIR_BYTES {
            return Err(damaged("root directory larger than 256 MiB"));
        }
        let mut bitmaps: [Option<(u64, u64)>; 2] = [None, None]; // (first cluster, bytes)
        let mut upcase: Option<(u64, u64)> = None;
        geo.stream(part, &root_runs, root_bytes, |_, chunk| {
            for e in chunk.chunks_exact(32) {
                match e[0] {
                    ENTRY_END => return Ok(false),
                    ENTRY_BITMAP => {
                        let i = (e[1] & 1) as usize;
                        if bitmaps[i].is_some() {
                            return Err(damaged(format!("two allocation bitmaps for FAT {i}")));
                        }
                        bitmaps[i] = Some((g32(e, 20) as u64, g64(e, 24)));
                    }
                    ENTRY_UPCASE => upcase = Some((g32(e, 20) as u64, g64(e, 24))),
                    _ => {}
                }
            }
            Ok(true)
        })?;
        let (bm_first, bm_len) = bitmaps[active as usize]
            .ok_or_else(|| damaged(format!("no allocation bitmap for FAT {active} in the root directory")))?;
        let need = count.div_ceil(8);
        if bm_len < need {
            return Err(damaged(format!("allocation bitmap of {bm_len} bytes, {need} needed for {count} clusters")));
        }
        let (up_first, up_len) = upcase.ok_or_else(|| damaged("no up-case table in the root directory"))?;
        // 65536 UTF-16 code units at most (the specification's full table).
        if up_len == 0 || up_len > 131072 {
            return Err(damaged(format!("up-case table of {up_len} bytes")));
        }
        let clusters_of = |bytes: u64| bytes.div_ceil(geo.cluster_bytes()).max(1);
        let bm_runs = geo.chain(part, bm_first, Some(clusters_of(need)), "allocation bitmap")?;

        let spc = 1u64 << spc_shift;
        let mut m = UsedMapBuilder::new(bps as u32, vol_len);
        m.add(0, 24); // main and backup boot regions
        m.add(fat_offset, fat_length * nfats);
        geo.stream(part, &bm_runs, need, |pos, chunk| {
            for (i, &byte) in chunk.iter().enumerate() {
                if byte == 0 {
                    continue;
                }
                let first = (pos + i as u64) * 8; // bit index = cluster - 2
                if byte == 0xFF && first + 8 <= count {
                    m.add(heap + first * spc, 8 * spc);
                    continue;
                }
                for bit in 0..8 {
                    let idx = first + bit;
                    if byte & (1 << bit) != 0 && idx < count {
                        m.add(heap + idx * spc, spc);
                    }
                }
            }
            Ok(true)
        })?;
        let map = m.finish(format!("exfat {}.{:02}", rev >> 8, rev & 0xFF));

        // The system files' own clusters must be allocated in the bitmap; if
        // not, the bitmap is not what it claims and nothing in it is trusted.
        let check = |runs: &[(u64, u64)], what: &str| -> Result<(), FsError> {
            for &(c, n) in runs {
                for k in c..c + n {
                    if !map.is_used(heap + (k - 2) * spc) {
                        return Err(damaged(format!("{what} cluster {k} is free in the allocation bitmap")));
                    }
                }
            }
            Ok(())
        };
        check(&root_runs, "root directory")?;
        check(&bm_runs, "allocation bitmap")?;
        if let Some((first, bytes)) = bitmaps[1 - active as usize].filter(|_| nfats == 2) {
            let runs = geo.chain(part, first, Some(clusters_of(bytes.min(need))), "second allocation bitmap")?;
            check(&runs, "second allocation bitmap")?;
        }
        let up_runs = geo.chain(part, up_first, Some(clusters_of(up_len)), "up-case table")?;
        check(&up_runs, "up-case table")?;
        Ok(Some(map))
    }
}
