//! ext2/ext3/ext4: used blocks from the block group bitmaps.
//!
//! Handles: 1 KiB..64 KiB blocks, 32- and 64-bit group descriptors (`64bit`),
//! `flex_bg` (bitmaps anywhere: each group's bitmap is read where its
//! descriptor points), uninitialised groups (`BLOCK_UNINIT`: the bitmap block
//! was never written and may hold garbage, so it is not read; the group's own
//! metadata is marked used instead, as the kernel's `ext4_init_block_bitmap`
//! would compute it), `bigalloc` (bitmap bits are clusters of 2^n blocks),
//! `sparse_super` / `sparse_super2` backup placement, `meta_bg` (descriptor
//! blocks spread over the disk, one per meta group).
//!
//! With `metadata_csum` the superblock, every group descriptor and every block
//! bitmap read are verified (CRC32C), so damage is refused rather than turned
//! into a wrong map. (Older `uninit_bg` CRC16 descriptor checksums are not
//! checked yet; descriptors are still range-checked.)
//!
//! Refuses (the caller images every block): an INCOMPAT feature it does not know
//! (named in the error), `RECOVER` (the journal holds allocations not yet in
//! the bitmaps), `JOURNAL_DEV` (an external journal device, not a filesystem),
//! `COMPRESSION`, and inconsistent superblocks/descriptors.
//! RO_COMPAT and COMPAT features never change where allocation is recorded, so
//! unknown ones are accepted.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::crc32c::crc32c;
use crate::{le16, le32, ReadAt};

pub struct Ext;

reader_errors!(NAME);

const NAME: &str = "ext";

const INCOMPAT_COMPRESSION: u32 = 0x1;
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_EA_INODE: u32 = 0x400;
const INCOMPAT_DIRDATA: u32 = 0x1000;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_ENCRYPT: u32 = 0x10000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
/// Features that do not change how block allocation is recorded.
const INCOMPAT_OK: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_DIRDATA
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_ENCRYPT
    | INCOMPAT_CASEFOLD;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_RESIZE_INODE: u32 = 0x10;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

const BG_BLOCK_UNINIT: u16 = 0x2;

struct Sb {
    block_size: u64,
    blocks_count: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    clusters_per_group: u64,
    cluster_ratio: u64,
    inodes_per_group: u64,
    inode_size: u64,
    desc_size: u64,
    groups: u64,
    reserved_gdt: u64,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    backup_bgs: [u32; 2],
    first_meta_bg: u64,
    /// With `metadata_csum`: the checksum seed (from the UUID, or stored with
    /// `csum_seed`). Descriptors and bitmaps are then verified, so a damaged
    /// one is refused instead of producing a wrong map.
    csum_seed: Option<u32>,
}

impl Sb {
    fn parse(b: &[u8], len: u64) -> Result<Sb, FsError> {
        let log_block = le32(b, 0x18);
        let log_cluster = le32(b, 0x1C);
        if log_block > 6 {
            return Err(damaged(format!("block size 2^(10+{log_block}) out of range")));
        }
        let block_size = 1024u64 << log_block;
        let compat = le32(b, 0x5C);
        let incompat = le32(b, 0x60);
        let ro_compat = le32(b, 0x64);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let mut blocks_count = le32(b, 0x4) as u64;
        if is64 {
            blocks_count |= (le32(b, 0x150) as u64) << 32;
        }
        let first_data_block = le32(b, 0x14) as u64;
        let blocks_per_group = le32(b, 0x20) as u64;
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let (cluster_ratio, clusters_per_group) = if bigalloc {
            if log_cluster < log_block || log_cluster - log_block > 16 {
                return Err(damaged(format!("cluster size log {log_cluster} with block log {log_block}")));
            }
            (1u64 << (log_cluster - log_block), le32(b, 0x24) as u64)
        } else {
            (1, blocks_per_group)
        };
        let inodes_per_group = le32(b, 0x28) as u64;
        let rev = le32(b, 0x4C);
        let inode_size = if rev == 0 { 128 } else { le16(b, 0x58) as u64 };
        let desc_size = if is64 { le16(b, 0xFE) as u64 } else { 32 };
        if blocks_per_group == 0 || clusters_per_group == 0 || clusters_per_group > 8 * block_size {
            return Err(damaged(format!("{clusters_per_group} clusters per group with {block_size}-byte blocks")));
        }
        if clusters_per_group * cluster_ratio != blocks_per_group {
            return Err(damaged("blocks per group is not clusters per group × cluster ratio"));
        }
        if blocks_count <= first_data_block || first_data_block > 1 {
            return Err(damaged(format!("block count {blocks_count} with first data block {first_data_block}")));
        }
        if blocks_count.checked_mul(block_size).is_none_or(|b| b > len) {
            return Err(damaged(format!(
                "filesystem of {blocks_count} blocks of {block_size} bytes is larger than its partition ({len} bytes)"
            )));
        }
        if inodes_per_group == 0 || inode_size < 128 || !inode_size.is_power_of_two() || inode_size > block_size {
            return Err(damaged(format!("{inodes_per_group} inodes per group of {inode_size} bytes")));
        }
        if desc_size < 32 || !desc_size.is_power_of_two() || desc_size > 1024 || (is64 && desc_size < 64) {
            return Err(damaged(format!("group descriptor size {desc_size}")));
        }
        let groups = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        let reserved_gdt = if compat & COMPAT_RESIZE_INODE != 0 { le16(b, 0xCE) as u64 } else { 0 };
        Ok(Sb {
            block_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            clusters_per_group,
            cluster_ratio,
            inodes_per_group,
            inode_size,
            desc_size,
            groups,
            reserved_gdt,
            compat,
            incompat,
            ro_compat,
            backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            first_meta_bg: le32(b, 0x104) as u64,
            csum_seed: (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
                if incompat & INCOMPAT_CSUM_SEED != 0 {
                    le32(b, 0x270)
                } else {
                    crc32c(!0, &b[0x68..0x78])
                }
            }),
        })
    }

    /// Does group `g` hold a superblock (and group descriptor) copy?
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == self.backup_bgs[0] as u64 || g == self.backup_bgs[1] as u64;
        }
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        for base in [3u64, 5, 7] {
            let mut p = base;
            while p < g {
                p *= base;
            }
            if p == g {
                return true;
            }
        }
        false
    }

    fn variant(&self) -> &'static str {
        if self.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0
            || self.ro_compat & (RO_COMPAT_HUGE_FILE | RO_COMPAT_BIGALLOC | RO_COMPAT_METADATA_CSUM) != 0
        {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }
}

impl FsReader for Ext {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        if len < 2048 {
            return Ok(None);
        }
        let mut sbuf = [0u8; 1024];
        part.read_exact_at(&mut sbuf, 1024).map_err(io)?;
        if le16(&sbuf, 0x38) != 0xEF53 {
            return Ok(None);
        }
        let incompat = le32(&sbuf, 0x60);
        let refuse = |msg: &str| Err(FsError::Unsupported { fs: NAME, msg: msg.into() });
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return refuse("an external journal device (JOURNAL_DEV), not a filesystem");
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return refuse(
                "the journal needs recovery (RECOVER): allocations may be only in the journal; run e2fsck or mount once",
            );
        }
        if incompat & INCOMPAT_COMPRESSION != 0 {
            return refuse("COMPRESSION feature");
        }
        let unknown = incompat & !INCOMPAT_OK;
        if unknown != 0 {
            return Err(FsError::Unsupported { fs: NAME, msg: format!("unknown INCOMPAT feature bits {unknown:#x}") });
        }
        if le32(&sbuf, 0x64) & RO_COMPAT_METADATA_CSUM != 0 {
            let want = le32(&sbuf, 0x3FC);
            let got = crc32c(!0, &sbuf[..0x3FC]);
            if want != got {
                return Err(damaged(format!("superblock checksum mismatch (stored {want:08x}, computed {got:08x})")));
            }
        }
        let sb = Sb::parse(&sbuf, len)?;
        used_map(part, &sb).map(Some)
    }
}

fn used_map(part: &dyn ReadAt, sb: &Sb) -> Result<UsedMap, FsError> {
    let bs = sb.block_size;
    // Group descriptor table: the block right after the one holding the
    // superblock (byte 1024). Not `first_data_block + 1`: bigalloc with 1 KiB
    // blocks has first_data_block 0 yet the superblock in block 1.
    let gdt_start = 1024 / bs + 1;
    let gdt_blocks = (sb.groups * sb.desc_size).div_ceil(bs);
    let mut gdt = vec![0u8; (gdt_blocks * bs) as usize];
    let meta_bg = sb.incompat & INCOMPAT_META_BG != 0;
    let descs_per_block = bs / sb.desc_size;
    let mut meta_gdt: Vec<u64> = Vec::new();
    if !meta_bg {
        part.read_exact_at(&mut gdt, gdt_start * bs).map_err(io)?;
    } else {
        // META_BG: descriptor blocks before `first_meta_bg` follow the
        // superblock as usual; descriptor block i after that lives in the first
        // group of meta group i (after its superblock backup, if any), with
        // copies in the second and last group of the meta group (as
        // e2fsprogs' ext2fs_descriptor_block_loc2 computes).
        for i in 0..gdt_blocks {
            let loc = if i < sb.first_meta_bg {
                gdt_start + i
            } else {
                let g = i * descs_per_block;
                if g == 0 {
                    gdt_start
                } else {
                    sb.first_data_block + g * sb.blocks_per_group + sb.has_super(g) as u64
                }
            };
            if loc >= sb.blocks_count {
                return Err(damaged(format!("descriptor block {i} at block {loc} outside the filesystem")));
            }
            meta_gdt.push(loc);
            let o = (i * bs) as usize;
            part.read_exact_at(&mut gdt[o..o + bs as usize], loc * bs).map_err(io)?;
        }
    }

    let mut m = UsedMapBuilder::new(bs as u32, sb.blocks_count);
    // Everything before the first group (block 0 with 1 KiB blocks: boot sector
    // area) plus the primary superblock and descriptors, even if a bitmap
    // wrongly claimed otherwise.
    m.add(0, gdt_start + if meta_bg { sb.first_meta_bg.min(gdt_blocks) } else { gdt_blocks });
    for &b in &meta_gdt {
        m.add(b, 1);
    }
    let itable_blocks = (sb.inodes_per_group * sb.inode_size).div_ceil(bs);
    let is64 = sb.incompat & INCOMPAT_64BIT != 0;
    let mut bitmap = vec![0u8; bs as usize];
    let mut uninit_meta: Vec<(u64, u64)> = Vec::new();
    for g in 0..sb.groups {
        let d = &gdt[(g * sb.desc_size) as usize..((g + 1) * sb.desc_size) as usize];
        let hi = |o: usize| if is64 { (le32(d, o) as u64) << 32 } else { 0 };
        let block_bitmap = le32(d, 0x0) as u64 | hi(0x20);
        let inode_bitmap = le32(d, 0x4) as u64 | hi(0x24);
        let inode_table = le32(d, 0x8) as u64 | hi(0x28);
        if let Some(seed) = sb.csum_seed {
            let mut c = crc32c(seed, &(g as u32).to_le_bytes());
            c = crc32c(c, &d[..0x1E]);
            c = crc32c(c, &[0, 0]);
            if d.len() > 0x20 {
                c = crc32c(c, &d[0x20..]);
            }
            if (c & 0xFFFF) as u16 != le16(d, 0x1E) {
                return Err(damaged(format!("group {g}: descriptor checksum mismatch")));
            }
        }
        let flags = le16(d, 0x12);
        for (what, b, n) in [
            ("block bitmap", block_bitmap, 1),
            ("inode bitmap", inode_bitmap, 1),
            ("inode table", inode_table, itable_blocks),
        ] {
            if b < sb.first_data_block || b + n > sb.blocks_count {
                return Err(damaged(format!("group {g}: {what} at block {b} outside the filesystem")));
            }
        }
        let group_first = sb.first_data_block + g * sb.blocks_per_group;
        let group_clusters = ((sb.blocks_count - group_first).div_ceil(sb.cluster_ratio)).min(sb.clusters_per_group);
        if flags & BG_BLOCK_UNINIT != 0 && g != 0 {
            // Never initialised: no data blocks in use, only this group's own
            // metadata. Mark it used (conservatively the whole backup
            // superblock + GDT + reserved GDT area, plus the bitmaps and inode
            // table wherever flex_bg put them).
            if sb.has_super(g) {
                m.add(group_first, 1 + gdt_blocks + sb.reserved_gdt);
            }
            if meta_bg && matches!(g % descs_per_block, x if x == 0 || x == 1 || x == descs_per_block - 1) {
                // Possible meta_bg descriptor copy right after the (optional)
                // superblock backup.
                m.add(group_first, 2);
            }
            uninit_meta.push((block_bitmap, 1));
            uninit_meta.push((inode_bitmap, 1));
            uninit_meta.push((inode_table, itable_blocks));
            continue;
        }
        part.read_exact_at(&mut bitmap, block_bitmap * bs).map_err(io)?;
        if let Some(seed) = sb.csum_seed {
            let c = crc32c(seed, &bitmap[..(sb.clusters_per_group / 8) as usize]);
            let mut want = le16(d, 0x18) as u32;
            let mut got = c & 0xFFFF;
            if sb.desc_size >= 0x3C {
                want |= (le16(d, 0x38) as u32) << 16;
                got = c;
            }
            if want != got {
                return Err(damaged(format!("group {g}: block bitmap checksum mismatch")));
            }
        }
        // Scan bits; one bit per cluster (= block without bigalloc).
        let mut c = 0u64;
        while c < group_clusters {
            let byte = bitmap[(c / 8) as usize];
            if byte == 0 && c % 8 == 0 {
                c += 8;
                continue;
            }
            if byte == 0xFF && c % 8 == 0 && c + 8 <= group_clusters {
                m.add(group_first + c * sb.cluster_ratio, 8 * sb.cluster_ratio);
                c += 8;
                continue;
            }
            if byte & (1 << (c % 8)) != 0 {
                m.add(group_first + c * sb.cluster_ratio, sb.cluster_ratio);
            }
            c += 1;
        }
    }
    for (s, n) in uninit_meta {
        m.add(s, n);
    }
    Ok(m.finish(sb.variant()))
}
