//! btrfs: used blocks from the extent tree, mapped through the chunk tree.
//!
//! btrfs addresses everything by *logical* byte numbers; chunks map logical
//! ranges to physical ranges (stripes) on devices. Allocation is recorded in
//! the extent tree: one `EXTENT_ITEM` (data, or metadata without skinny
//! metadata: key = (start, 168, length)) or `METADATA_ITEM` (key = (start,
//! 169, level), length = nodesize) per allocated extent. So the map is: walk
//! the chunk tree (bootstrapped from the superblock's `sys_chunk_array`), find
//! the extent tree's root in the root tree, and mark every extent's physical
//! copies used. On top, conservatively: the first 1 MiB of the device (boot
//! loader area, primary superblock), every superblock mirror inside the
//! device, whole SYSTEM chunks (the chunk tree), and every tree block this
//! reader read (they are also in the extent tree, but a restore that drops
//! one would be unmountable).
//!
//! Handles: one device, crc32c checksums, single and DUP profiles (DUP: both
//! copies used; a tree block failing its checksum is re-read from the other
//! copy, as the kernel would), skinny and non-skinny metadata, mixed block
//! groups, the free-space tree and the block-group tree (both are ordinary
//! metadata whose blocks are in the extent tree), `metadata_uuid`.
//! Every superblock and tree block read is verified (checksum, fsid, own
//! address, level), so damage is refused rather than turned into a wrong map.
//!
//! Refuses: checksum algorithms other than crc32c (xxhash64, sha256, blake2b;
//! named), multi-device filesystems, RAID profiles (impossible on one device
//! unless degraded), a log tree awaiting replay (fsync'd extents live only in
//! the log until then), unknown incompat or compat_ro feature bits, extent
//! tree v2, zoned, raid-stripe-tree, and inconsistent structures.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::crc32c::crc32c;
use crate::{le16, le32, le64, ReadAt};

pub struct Btrfs;

reader_errors!(NAME);

const NAME: &str = "btrfs";

const SB_OFFSET: u64 = 0x1_0000;
const SB_SIZE: usize = 4096;
/// Superblock copies: primary at 64 KiB, mirrors at 64 MiB, 256 GiB, 1 PiB.
const SB_MIRRORS: [u64; 4] = [0x1_0000, 0x400_0000, 0x40_0000_0000, 0x4_0000_0000_0000];
const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Nothing is allocated in the first MiB; boot loaders may live there.
const RESERVED: u64 = 1 << 20;

const HDR: usize = 101;
const ITEM: usize = 25;
const KEY_PTR: usize = 33;
/// BTRFS_MAX_LEVEL: levels are 0..8.
const MAX_LEVEL: u8 = 8;

const CHUNK_ITEM: u8 = 228;
const ROOT_ITEM: u8 = 132;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const EXTENT_TREE_OBJECTID: u64 = 2;
const FIRST_CHUNK_TREE_OBJECTID: u64 = 256;

const BG_SYSTEM: u64 = 0x2;
const BG_DUP: u64 = 0x20;
const BG_PROFILES: u64 = 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400;

const INCOMPAT_METADATA_UUID: u64 = 0x400;
const INCOMPAT_KNOWN: &[(u64, &str, bool)] = &[
    (0x1, "mixed_backref", true),
    (0x2, "default_subvol", true),
    (0x4, "mixed_groups", true),
    (0x8, "compress_lzo", true),
    (0x10, "compress_zstd", true),
    (0x20, "big_metadata", true),
    (0x40, "extended_iref", true),
    // RAID5/6 and RAID1C3/4 profiles: accepted as features, but any chunk
    // using them is refused below (they cannot be complete on one device).
    (0x80, "raid56", true),
    (0x100, "skinny_metadata", true),
    (0x200, "no_holes", true),
    (0x400, "metadata_uuid", true),
    (0x800, "raid1c34", true),
    (0x1000, "zoned", false),
    (0x2000, "extent_tree_v2", false),
    (0x4000, "raid_stripe_tree", false),
    (0x10000, "simple_quota", false),
];
/// compat_ro: free_space_tree, free_space_tree_valid, verity, block_group_tree.
/// All keep extent items where this reader looks. An unknown bit could move
/// allocation records elsewhere (as block_group_tree moved block groups), so
/// it is refused.
const COMPAT_RO_KNOWN: u64 = 0x1 | 0x2 | 0x4 | 0x8;
/// Superblock flags that mean "not a normal filesystem image": metadump
/// (metadata only, data absent), fsid change in progress.
const SB_FLAGS_BAD: u64 = (1 << 33) | (1 << 34) | (1 << 35) | (1 << 36);

/// btrfs checksum of a superblock or tree block: standard CRC32C of
/// everything after the 32-byte checksum field, stored little-endian.
fn csum_ok(b: &[u8]) -> bool {
    !crc32c(!0, &b[32..]) == le32(b, 0)
}

#[derive(Clone, Debug)]
struct Chunk {
    logical: u64,
    length: u64,
    flags: u64,
    /// Physical starts of the copies on our device (1 single, 2 DUP).
    phys: Vec<u64>,
}

struct Fs<'a> {
    part: &'a dyn ReadAt,
    dev_bytes: u64,
    devid: u64,
    nodesize: usize,
    /// fsid stamped in tree blocks (metadata_uuid when that feature is on).
    fsid: [u8; 16],
    /// Sorted by logical start, disjoint.
    chunks: Vec<Chunk>,
    m: UsedMapBuilder,
    sector: u64,
    /// Tree blocks read so far; bounded by what fits the device.
    reads: u64,
    /// Last leaf key seen in the current walk: keys must strictly increase,
    /// so a pointer loop or a block shared by two parents fails at its first
    /// revisited item instead of multiplying the work.
    last_key: Option<(u64, u8, u64)>,
}

impl FsReader for Btrfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        if len < SB_OFFSET + SB_SIZE as u64 {
            return Ok(None);
        }
        let mut sb = vec![0u8; SB_SIZE];
        part.read_exact_at(&mut sb, SB_OFFSET).map_err(io)?;
        if &sb[0x40..0x48] != MAGIC {
            return Ok(None);
        }
        match le16(&sb, 0xC4) {
            0 => {}
            t => {
                let name = match t {
                    1 => "xxhash64",
                    2 => "sha256",
                    3 => "blake2b",
                    _ => "unknown",
                };
                return Err(unsupported(format!("checksum type {t} ({name}); only crc32c is supported")));
            }
        }
        if !csum_ok(&sb) {
            return Err(damaged("superblock checksum mismatch"));
        }
        parse(part, len, &sb).map(Some)
    }
}

fn parse(part: &dyn ReadAt, len: u64, sb: &[u8]) -> Result<UsedMap, FsError> {
    if le64(sb, 0x30) != SB_OFFSET {
        return Err(damaged("superblock records another position (bytenr)"));
    }
    let flags = le64(sb, 0x38);
    if flags & SB_FLAGS_BAD != 0 {
        return Err(unsupported(format!(
            "superblock flags {flags:#x}: a metadump image or an fsid change in progress"
        )));
    }
    let incompat = le64(sb, 0xBC);
    let mut rest = incompat;
    for &(bit, name, ok) in INCOMPAT_KNOWN {
        if incompat & bit != 0 && !ok {
            return Err(unsupported(format!("incompat feature {name} ({bit:#x})")));
        }
        rest &= !bit;
    }
    if rest != 0 {
        return Err(unsupported(format!("unknown incompat feature bits {rest:#x}")));
    }
    let compat_ro = le64(sb, 0xB4);
    if compat_ro & !COMPAT_RO_KNOWN != 0 {
        return Err(unsupported(format!("unknown compat_ro feature bits {:#x}", compat_ro & !COMPAT_RO_KNOWN)));
    }
    let num_devices = le64(sb, 0x88);
    let devid = le64(sb, 0xC9);
    if num_devices != 1 {
        return Err(unsupported(format!("device {devid} of {num_devices}; multi-device btrfs is not supported")));
    }
    if le64(sb, 0x60) != 0 {
        return Err(unsupported(
            "a log tree awaits replay (fsync'd data not yet in the extent tree); mount once to replay it",
        ));
    }
    let sector = le32(sb, 0x90) as u64;
    let nodesize = le32(sb, 0x94) as u64;
    if !(4096..=65536).contains(&sector) || !sector.is_power_of_two() {
        return Err(damaged(format!("sector size {sector}")));
    }
    if !(sector..=65536).contains(&nodesize) || !nodesize.is_power_of_two() {
        return Err(damaged(format!("node size {nodesize}")));
    }
    let dev_bytes = le64(sb, 0xD1);
    if dev_bytes > len || dev_bytes < RESERVED {
        return Err(damaged(format!("device size {dev_bytes} does not fit the partition ({len} bytes)")));
    }
    let mut fsid = [0u8; 16];
    let fsid_off = if incompat & INCOMPAT_METADATA_UUID != 0 { 0x23B } else { 0x20 };
    fsid.copy_from_slice(&sb[fsid_off..fsid_off + 16]);

    let mut fs = Fs {
        part,
        dev_bytes,
        devid,
        nodesize: nodesize as usize,
        fsid,
        chunks: Vec::new(),
        m: UsedMapBuilder::new(sector as u32, dev_bytes.div_ceil(sector)),
        sector,
        reads: 0,
        last_key: None,
    };
    fs.mark(0, RESERVED);
    for off in SB_MIRRORS {
        if off + SB_SIZE as u64 <= dev_bytes {
            fs.mark(off, SB_SIZE as u64);
        }
    }

    // Bootstrap: the SYSTEM chunks that hold the chunk tree.
    let sys_len = le32(sb, 0xA0) as usize;
    let sys = sb
        .get(0x32B..0x32B + sys_len)
        .filter(|_| sys_len <= 2048)
        .ok_or_else(|| damaged(format!("sys_chunk_array of {sys_len} bytes")))?;
    let mut o = 0;
    let mut boot = Vec::new();
    while o < sys.len() {
        let key = sys.get(o..o + 17).ok_or_else(|| damaged("sys_chunk_array truncated"))?;
        if key[8] != CHUNK_ITEM {
            return Err(damaged(format!("sys_chunk_array holds key type {}", key[8])));
        }
        let logical = le64(key, 9);
        let (c, n) = fs.chunk(logical, &sys[o + 17..])?;
        boot.push(c);
        o += 17 + n;
    }
    fs.set_chunks(boot)?;

    // The chunk tree proper (it also lists the system chunks).
    let mut chunks = Vec::new();
    let chunk_root = le64(sb, 0x58);
    let chunk_level = sb[0xC7];
    fs.walk_tree(chunk_root, chunk_level, &mut |fs, obj, typ, off, data| {
        if typ == CHUNK_ITEM && obj == FIRST_CHUNK_TREE_OBJECTID {
            chunks.push(fs.chunk(off, data)?.0);
        }
        Ok(())
    })?;
    fs.set_chunks(chunks)?;
    // Whole SYSTEM chunks: small, and they hold the chunk tree.
    let sys_copies: Vec<(u64, u64)> = fs
        .chunks
        .iter()
        .filter(|c| c.flags & BG_SYSTEM != 0)
        .flat_map(|c| c.phys.iter().map(move |&p| (p, c.length)))
        .collect();
    for (p, l) in sys_copies {
        fs.mark(p, l);
    }

    // Root tree: find the extent tree's root item.
    let mut extent_root: Option<(u64, u8)> = None;
    fs.walk_tree(le64(sb, 0x50), sb[0xC6], &mut |_, obj, typ, _, data| {
        if obj == EXTENT_TREE_OBJECTID && typ == ROOT_ITEM {
            if data.len() < 239 {
                return Err(damaged("extent tree root item too short"));
            }
            extent_root = Some((le64(data, 176), data[238]));
        }
        Ok(())
    })?;
    let (er, el) = extent_root.ok_or_else(|| damaged("no extent tree in the root tree"))?;

    let ns = nodesize;
    fs.walk_tree(er, el, &mut |fs, obj, typ, off, _| match typ {
        EXTENT_ITEM => fs.mark_logical(obj, off),
        METADATA_ITEM => fs.mark_logical(obj, ns),
        _ => Ok(()),
    })?;

    let dup = fs.chunks.iter().any(|c| c.flags & BG_DUP != 0);
    let variant = if dup { "btrfs (dup)" } else { "btrfs" };
    Ok(fs.m.finish(variant))
}

type Visit<'v, 'a> = dyn FnMut(&mut Fs<'a>, u64, u8, u64, &[u8]) -> Result<(), FsError> + 'v;

impl<'a> Fs<'a> {
    /// Mark physical bytes `[off, off + len)` used (sector-rounded).
    fn mark(&mut self, off: u64, len: u64) {
        let s = off / self.sector;
        let e = off.saturating_add(len).div_ceil(self.sector);
        self.m.add(s, e - s);
    }

    /// Parse a chunk item at the start of `d` (logical start `logical`);
    /// returns it and its size in bytes.
    fn chunk(&self, logical: u64, d: &[u8]) -> Result<(Chunk, usize), FsError> {
        if d.len() < 48 {
            return Err(damaged(format!("chunk item at {logical} truncated")));
        }
        let length = le64(d, 0);
        let flags = le64(d, 24);
        let n = le16(d, 44) as usize;
        let size = 48 + 32 * n;
        if n == 0 || d.len() < size {
            return Err(damaged(format!("chunk at {logical}: {n} stripes in {} bytes", d.len())));
        }
        if length == 0 || logical.checked_add(length).is_none() {
            return Err(damaged(format!("chunk at {logical} of {length} bytes")));
        }
        let profile = flags & BG_PROFILES;
        let want = match profile {
            0 => 1,
            BG_DUP => 2,
            _ => {
                return Err(unsupported(format!(
                "chunk at {logical} uses a RAID profile (flags {flags:#x}), impossible on one device unless degraded"
            )))
            }
        };
        if n != want {
            return Err(damaged(format!("chunk at {logical}: {n} stripes for its profile")));
        }
        let mut phys = Vec::with_capacity(n);
        for i in 0..n {
            let s = &d[48 + 32 * i..];
            let (dev, off) = (le64(s, 0), le64(s, 8));
            if dev != self.devid {
                return Err(damaged(format!("chunk at {logical} on device {dev}, this is device {}", self.devid)));
            }
            if off.checked_add(length).is_none_or(|e| e > self.dev_bytes) {
                return Err(damaged(format!("chunk at {logical}: stripe at {off} beyond the device")));
            }
            phys.push(off);
        }
        Ok((Chunk { logical, length, flags, phys }, size))
    }

    fn set_chunks(&mut self, mut c: Vec<Chunk>) -> Result<(), FsError> {
        c.sort_by_key(|c| c.logical);
        for w in c.windows(2) {
            if w[0].logical + w[0].length > w[1].logical {
                return Err(damaged(format!("chunks at {} and {} overlap", w[0].logical, w[1].logical)));
            }
        }
        self.chunks = c;
        Ok(())
    }

    /// Physical starts of every copy of logical `[l, l + len)`.
    fn map(&self, l: u64, len: u64) -> Result<Vec<u64>, FsError> {
        let i = self.chunks.partition_point(|c| c.logical <= l);
        let c = i
            .checked_sub(1)
            .map(|i| &self.chunks[i])
            .filter(|c| l.checked_add(len).is_some_and(|e| e <= c.logical + c.length))
            .ok_or_else(|| damaged(format!("logical range {l}+{len} is not inside one chunk")))?;
        Ok(c.phys.iter().map(|p| p + (l - c.logical)).collect())
    }

    fn mark_logical(&mut self, l: u64, len: u64) -> Result<(), FsError> {
        for p in self.map(l, len)? {
            self.mark(p, len);
        }
        Ok(())
    }

    /// Read and verify the tree block at logical `l`, expected at `level`;
    /// on a bad copy try the next (DUP). Marks every copy used.
    fn read_node(&mut self, l: u64, level: u8, buf: &mut [u8]) -> Result<(), FsError> {
        self.reads += 1;
        if self.reads > self.dev_bytes / self.nodesize as u64 {
            return Err(damaged("more tree blocks than fit the device (a loop)"));
        }
        let copies = self.map(l, self.nodesize as u64)?;
        let mut why = String::new();
        for &p in &copies {
            self.mark(p, self.nodesize as u64);
        }
        for &p in &copies {
            self.part.read_exact_at(buf, p).map_err(io)?;
            why = if !csum_ok(buf) {
                "checksum mismatch".into()
            } else if buf[0x20..0x30] != self.fsid {
                "fsid of another filesystem".into()
            } else if le64(buf, 0x30) != l {
                "block address does not match its location".into()
            } else if buf[0x64] != level {
                format!("level {} where {level} expected", buf[0x64])
            } else {
                return Ok(());
            };
        }
        Err(damaged(format!("tree block at {l}: {why}")))
    }

    /// Depth-first walk of the tree rooted at logical `root` (level `level`),
    /// calling `visit(fs, objectid, type, offset, item data)` for each leaf
    /// item, in key order.
    fn walk_tree(&mut self, root: u64, level: u8, visit: &mut Visit<'_, 'a>) -> Result<(), FsError> {
        self.last_key = None;
        self.walk(root, level, true, visit)
    }

    fn walk(&mut self, root: u64, level: u8, is_root: bool, visit: &mut Visit<'_, 'a>) -> Result<(), FsError> {
        if level >= MAX_LEVEL {
            return Err(damaged(format!("tree of level {level}")));
        }
        let mut buf = vec![0u8; self.nodesize];
        self.read_node(root, level, &mut buf)?;
        let n = le32(&buf, 0x60) as usize;
        if level == 0 {
            // Only a root leaf (an empty tree) may be empty.
            if n > (self.nodesize - HDR) / ITEM || (n == 0 && !is_root) {
                return Err(damaged(format!("leaf at {root}: {n} items")));
            }
            for i in 0..n {
                let it = HDR + ITEM * i;
                let (obj, typ, off) = (le64(&buf, it), buf[it + 8], le64(&buf, it + 9));
                if self.last_key.is_some_and(|k| k >= (obj, typ, off)) {
                    return Err(damaged(format!("leaf at {root}: keys out of order (a loop or a shared block)")));
                }
                self.last_key = Some((obj, typ, off));
                let (doff, dlen) = (le32(&buf, it + 17) as usize, le32(&buf, it + 21) as usize);
                let data = doff
                    .checked_add(HDR)
                    .and_then(|s| Some(s..s.checked_add(dlen)?))
                    .and_then(|r| buf.get(r))
                    .ok_or_else(|| damaged(format!("leaf at {root}: item {i} outside the block")))?;
                visit(self, obj, typ, off, data)?;
            }
        } else {
            if n == 0 || n > (self.nodesize - HDR) / KEY_PTR {
                return Err(damaged(format!("node at {root}: {n} pointers")));
            }
            for i in 0..n {
                let child = le64(&buf, HDR + KEY_PTR * i + 17);
                self.walk(child, level - 1, false, visit)?;
            }
        }
        Ok(())
    }
}
