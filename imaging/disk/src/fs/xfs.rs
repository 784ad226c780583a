//! XFS: used blocks are everything the free-space B+tree does not list.
//!
//! XFS keeps no allocation bitmap. Each allocation group (AG) records its free
//! space in two B+trees (by block number, "bnobt", and by size, "cntbt") rooted
//! in the AG's free-space header (AGF, sector 1 of the AG), plus a small free
//! list (AGFL, sector 3) of blocks set aside for btree growth. So the map is
//! built by complement: per AG, walk the bnobt leaves in key order (records are
//! `(start, count)` free extents, sorted) and mark every gap between them used.
//! That gap space is superblock/AG headers, inode chunks, every btree block
//! (the bnobt's own nodes included), the internal log, directories and file
//! data. AGFL blocks are free space too: their content is never read back.
//!
//! Handles: v4 and v5 (CRC) filesystems, 512 B..64 KiB blocks, 512 B..32 KiB sectors,
//! a short last AG, and the v5 incompat features that do not change how free
//! space is recorded (ftype, sparse inodes, meta_uuid, bigtime, nrext64,
//! exchange-range, parent pointers). On v5 the superblock, every AGF, AGFL and
//! bnobt block read is verified (CRC32C, UUID, owner, self address), so damage
//! is refused rather than turned into a wrong map.
//!
//! Refuses: a dirty log (see below), a realtime subvolume (its space is
//! tracked by a separate bitmap inode, not handled), an external log (not on
//! this partition, its state cannot be checked), `NEEDSREPAIR`, unknown
//! incompat/log-incompat feature bits, a superblock mid-mkfs
//! (`sb_inprogress`), and any inconsistent header or btree block.
//!
//! The internal log must be clean (its head holds an unmount record), found as
//! the kernel's `xlog_find_tail` does: every 512-byte log block starts with
//! the cycle number of the pass that wrote it, so the head is where the cycle
//! drops (binary search); the last record header before it must be a lone
//! unmount record ending exactly at the head. A dirty log (crash, or imaged
//! while mounted) may hold allocations the free-space btree does not show
//! yet, so it is refused. Any doubt about the log (torn writes near the head,
//! an unreadable header) is a refusal too: the cost is a full image.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::crc32c::crc32c;
use crate::ReadAt;

pub struct Xfs;

reader_errors!(NAME);

const NAME: &str = "xfs";

const SB_MAGIC: u32 = 0x5846_5342; // "XFSB"
const AGF_MAGIC: u32 = 0x5841_4746; // "XAGF"
const AGFL_MAGIC: u32 = 0x5841_464C; // "XAFL"
const BNO_MAGIC_V4: u32 = 0x4142_5442; // "ABTB"
const BNO_MAGIC_V5: u32 = 0x4142_3342; // "AB3B"

const SB_CRC_OFF: usize = 224;
const AGF_CRC_OFF: usize = 216;
const AGFL_CRC_OFF: usize = 32;
const AGFL_HDR_V5: usize = 36;
const BT_HDR_V4: usize = 16;
const BT_HDR_V5: usize = 56;
const BT_CRC_OFF: usize = 52;

/// The kernel's XFS_BTREE_MAXLEVELS bound for any AG btree; deeper is damage.
const MAX_LEVELS: u32 = 9;
const NULLAGBLOCK: u32 = 0xFFFF_FFFF;

// features2 (v4 and v5): lazy sb counters, attr2, parent (never shipped),
// 32-bit project ids, crc (v5 marker), ftype. None changes free-space records.
const F2_KNOWN: u32 = 0x2 | 0x8 | 0x10 | 0x80 | 0x100 | 0x200;

const INCOMPAT_FTYPE: u32 = 0x1;
const INCOMPAT_SPINODES: u32 = 0x2;
const INCOMPAT_META_UUID: u32 = 0x4;
const INCOMPAT_BIGTIME: u32 = 0x8;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
const INCOMPAT_NREXT64: u32 = 0x20;
const INCOMPAT_EXCHRANGE: u32 = 0x40;
const INCOMPAT_PARENT: u32 = 0x80;
/// Incompat features that leave the AGF/bnobt/AGFL free-space records as they
/// are. Anything else (metadir, zoned, future bits) is refused by name or bit.
const INCOMPAT_OK: u32 = INCOMPAT_FTYPE
    | INCOMPAT_SPINODES
    | INCOMPAT_META_UUID
    | INCOMPAT_BIGTIME
    | INCOMPAT_NREXT64
    | INCOMPAT_EXCHRANGE
    | INCOMPAT_PARENT;

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (be32(b, o) as u64) << 32 | be32(b, o + 4) as u64
}

/// XFS metadata checksum: CRC32C (seed !0) of the whole buffer with the
/// checksum field read as zero, stored inverted and little-endian (the kernel's
/// `xfs_start_cksum` / `xfs_end_cksum`). `buf.len() >= off + 4` is the caller's
/// guarantee (all buffers here are at least one 512-byte sector).
fn xfs_cksum_ok(buf: &[u8], off: usize) -> bool {
    let mut c = crc32c(!0, &buf[..off]);
    c = crc32c(c, &[0; 4]);
    c = crc32c(c, &buf[off + 4..]);
    let stored = u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
    !c == stored
}

struct Sb {
    block_size: u64,
    block_log: u32,
    sect_size: u64,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
    /// Internal log: first block (linear) and length in blocks.
    log_start: u64,
    log_blocks: u64,
    v5: bool,
    /// UUID stamped in v5 metadata: `sb_meta_uuid` with META_UUID (the user
    /// UUID was changed without rewriting metadata), else `sb_uuid`.
    meta_uuid: [u8; 16],
}

impl Sb {
    fn parse(b: &[u8], len: u64) -> Result<Sb, FsError> {
        let block_size = be32(b, 4) as u64;
        let block_log = b[120] as u32;
        let sect_size = be16(b, 102) as u64;
        let sect_log = b[121] as u32;
        if !(9..=16).contains(&block_log) || block_size != 1u64 << block_log {
            return Err(damaged(format!("block size {block_size} (log {block_log}) out of range")));
        }
        if !(9..=15).contains(&sect_log) || sect_size != 1u64 << sect_log || sect_size > block_size {
            return Err(damaged(format!("sector size {sect_size} (log {sect_log}) out of range")));
        }
        let version = be16(b, 100);
        let v5 = match version & 0xF {
            4 => false,
            5 => true,
            v => return Err(unsupported(format!("superblock version {v}"))),
        };
        let features2 = be32(b, 200);
        // Only meaningful with the MOREBITS version bit, but mkfs zeroes it
        // otherwise; unknown bits either way are refused.
        if features2 & !F2_KNOWN != 0 {
            return Err(unsupported(format!("unknown features2 bits {:#x}", features2 & !F2_KNOWN)));
        }
        if v5 {
            let incompat = be32(b, 216);
            if incompat & INCOMPAT_NEEDSREPAIR != 0 {
                return Err(unsupported("NEEDSREPAIR is set: run xfs_repair before imaging"));
            }
            let unknown = incompat & !INCOMPAT_OK;
            if unknown != 0 {
                return Err(unsupported(format!("unknown incompat feature bits {unknown:#x}")));
            }
            // Log-incompat bits are set while the log holds items only newer
            // code can replay, and cleared once it is clean: a hint of a
            // dirty log, which this reader cannot otherwise see.
            let log_incompat = be32(b, 220);
            if log_incompat != 0 {
                return Err(unsupported(format!(
                    "log incompat feature bits {log_incompat:#x} set: the log may need recovery; mount and unmount once"
                )));
            }
        }
        if b[126] != 0 {
            return Err(damaged("superblock marks mkfs in progress (sb_inprogress)"));
        }
        let dblocks = be64(b, 8);
        let rblocks = be64(b, 16);
        if rblocks != 0 || be64(b, 24) != 0 {
            return Err(unsupported(format!("realtime subvolume of {rblocks} blocks is not supported")));
        }
        let logstart = be64(b, 48);
        if logstart == 0 {
            return Err(unsupported("external log device: its state cannot be checked from this partition"));
        }
        let agblocks = be32(b, 84) as u64;
        let agcount = be32(b, 88) as u64;
        let agblklog = b[124] as u32;
        // The kernel's own limits: an AG is 64 MiB-ish minimum in practice,
        // but anything at least a few blocks with a consistent log is accepted.
        if agblocks < 8 || agblklog > 31 || agblocks > 1u64 << agblklog || agcount == 0 {
            return Err(damaged(format!("{agcount} allocation groups of {agblocks} blocks (log {agblklog})")));
        }
        let full = (agcount - 1).checked_mul(agblocks);
        if full.is_none_or(|f| dblocks <= f || dblocks - f > agblocks) {
            return Err(damaged(format!("{dblocks} blocks do not fit {agcount} allocation groups of {agblocks}")));
        }
        if dblocks.checked_mul(block_size).is_none_or(|b| b > len) {
            return Err(damaged(format!(
                "filesystem of {dblocks} blocks of {block_size} bytes is larger than its partition ({len} bytes)"
            )));
        }
        // AG headers occupy sectors 0..4 of each AG; they must fit the AG.
        if 4 * sect_size > agblocks * block_size {
            return Err(damaged("AG headers larger than an AG"));
        }
        // sb_logstart is an encoded fs block number: AG number in the high
        // bits, AG block in the low `agblklog` bits. The log lies in one AG.
        let log_blocks = be32(b, 96) as u64;
        let (log_ag, log_agbno) = (logstart >> agblklog, logstart & ((1u64 << agblklog) - 1));
        let log_start = log_ag.saturating_mul(agblocks).saturating_add(log_agbno);
        if log_ag >= agcount
            || log_blocks < 2
            || log_agbno.saturating_add(log_blocks) > agblocks
            || log_start + log_blocks > dblocks
        {
            return Err(damaged(format!("log of {log_blocks} blocks at {logstart:#x} outside the filesystem")));
        }
        let mut meta_uuid = [0u8; 16];
        if v5 && be32(b, 216) & INCOMPAT_META_UUID != 0 {
            meta_uuid.copy_from_slice(&b[248..264]);
        } else {
            meta_uuid.copy_from_slice(&b[32..48]);
        }
        Ok(Sb { block_size, block_log, sect_size, dblocks, agblocks, agcount, log_start, log_blocks, v5, meta_uuid })
    }
}

impl FsReader for Xfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        if len < 512 {
            return Ok(None);
        }
        let mut head = [0u8; 512];
        part.read_exact_at(&mut head, 0).map_err(io)?;
        if be32(&head, 0) != SB_MAGIC {
            return Ok(None);
        }
        // The checksum covers one whole sector, which may exceed 512 bytes.
        let sect_size = be16(&head, 102) as u64;
        let v5 = be16(&head, 100) & 0xF == 5;
        if v5 {
            if !(512..=32768).contains(&sect_size) || !sect_size.is_power_of_two() || sect_size > len {
                return Err(damaged(format!("sector size {sect_size}")));
            }
            let mut sb = vec![0u8; sect_size as usize];
            part.read_exact_at(&mut sb, 0).map_err(io)?;
            if !xfs_cksum_ok(&sb, SB_CRC_OFF) {
                return Err(damaged("superblock checksum mismatch"));
            }
        }
        let sb = Sb::parse(&head, len)?;
        check_log_clean(part, &sb)?;
        used_map(part, &sb).map(Some)
    }
}

fn used_map(part: &dyn ReadAt, sb: &Sb) -> Result<UsedMap, FsError> {
    let mut m = UsedMapBuilder::new(sb.block_size as u32, sb.dblocks);
    let mut sect = vec![0u8; sb.sect_size as usize];
    let mut walk = BnoWalk { part, sb, bufs: Vec::new(), reads: 0, root: 0 };
    for agno in 0..sb.agcount {
        let ag_first = agno * sb.agblocks;
        let ag_len = (sb.dblocks - ag_first).min(sb.agblocks);
        let ag_byte = ag_first * sb.block_size;

        // AGF: sector 1 of the AG.
        part.read_exact_at(&mut sect, ag_byte + sb.sect_size).map_err(io)?;
        let agf = &sect;
        let ctx = |what: &str| format!("AG {agno}: {what}");
        if be32(agf, 0) != AGF_MAGIC || be32(agf, 4) != 1 {
            return Err(damaged(ctx("bad AGF magic or version")));
        }
        if sb.v5 {
            if !xfs_cksum_ok(agf, AGF_CRC_OFF) {
                return Err(damaged(ctx("AGF checksum mismatch")));
            }
            if agf[64..80] != sb.meta_uuid {
                return Err(damaged(ctx("AGF belongs to another filesystem (UUID)")));
            }
        }
        if be32(agf, 8) as u64 != agno || be32(agf, 12) as u64 != ag_len {
            return Err(damaged(ctx(&format!(
                "AGF says AG {} of {} blocks, expected {ag_len}",
                be32(agf, 8),
                be32(agf, 12)
            ))));
        }
        let bno_root = be32(agf, 16);
        let bno_level = be32(agf, 28);
        let (flfirst, fllast, flcount) = (be32(agf, 40), be32(agf, 44), be32(agf, 48));
        if bno_level == 0 || bno_level > MAX_LEVELS {
            return Err(damaged(ctx(&format!("free-space btree of {bno_level} levels"))));
        }
        if bno_root as u64 >= ag_len || bno_root == 0 {
            return Err(damaged(ctx(&format!("free-space btree root at block {bno_root} outside the AG"))));
        }

        // AGFL: blocks reserved for btree growth, free for our purposes. Any
        // inconsistency only means they stay marked used (always safe), so a
        // known kernel bug (a 4.5-era AGFL size off by one) is not a refusal.
        part.read_exact_at(&mut sect, ag_byte + 3 * sb.sect_size).map_err(io)?;
        let mut agfl_free: Vec<u64> = Vec::new();
        let agfl_ok = !sb.v5
            || (be32(&sect, 0) == AGFL_MAGIC
                && be32(&sect, 4) as u64 == agno
                && sect[8..24] == sb.meta_uuid
                && xfs_cksum_ok(&sect, AGFL_CRC_OFF));
        if agfl_ok && flcount > 0 {
            let hdr = if sb.v5 { AGFL_HDR_V5 } else { 0 };
            let size = ((sb.sect_size as usize - hdr) / 4) as u32;
            let consistent =
                flfirst < size && fllast < size && flcount <= size && (fllast + size - flfirst) % size + 1 == flcount;
            if consistent {
                for i in 0..flcount {
                    let idx = ((flfirst + i) % size) as usize;
                    let b = be32(&sect, hdr + 4 * idx);
                    if b != NULLAGBLOCK && (b as u64) < ag_len {
                        agfl_free.push(b as u64);
                    }
                }
                agfl_free.sort_unstable();
            }
        }

        // Walk the bnobt in key order; everything between free extents is used.
        let mut emit = Emitter { m: &mut m, ag_first, ag_len, next: 0, agfl: &agfl_free, agfl_i: 0 };
        walk.reads = 0;
        walk.root = bno_root;
        walk.node(agno, ag_len, bno_root, bno_level - 1, &mut emit)?;
        emit.gap_to(ag_len);
    }
    let v = if sb.v5 { "xfs v5" } else { "xfs v4" };
    Ok(m.finish(v))
}

/// Turns the sorted stream of free extents of one AG into used runs.
struct Emitter<'a> {
    m: &'a mut UsedMapBuilder,
    ag_first: u64,
    ag_len: u64,
    /// First AG block not yet accounted for.
    next: u64,
    /// AGFL blocks (sorted): free although absent from the bnobt.
    agfl: &'a [u64],
    agfl_i: usize,
}

impl Emitter<'_> {
    /// Mark `[next, end)` used, except AGFL blocks in it.
    fn gap_to(&mut self, end: u64) {
        let mut s = self.next;
        while self.agfl_i < self.agfl.len() && self.agfl[self.agfl_i] < end {
            let b = self.agfl[self.agfl_i];
            self.agfl_i += 1;
            if b < s {
                continue; // duplicate, or inside a free extent already
            }
            self.m.add(self.ag_first + s, b - s);
            s = b + 1;
        }
        if s < end {
            self.m.add(self.ag_first + s, end - s);
        }
        self.next = self.next.max(end);
    }

    fn free(&mut self, agno: u64, start: u64, count: u64) -> Result<(), FsError> {
        // Records must be sorted, disjoint and inside the AG: otherwise the tree
        // is damaged and complementing it would drop used blocks.
        if count == 0 || start < self.next || start + count > self.ag_len {
            return Err(damaged(format!(
                "AG {agno}: free extent {start}+{count} overlaps, is out of order or outside the AG"
            )));
        }
        self.gap_to(start);
        self.next = start + count;
        Ok(())
    }
}

struct BnoWalk<'a> {
    part: &'a dyn ReadAt,
    sb: &'a Sb,
    /// One block buffer per level, reused (depth <= MAX_LEVELS).
    bufs: Vec<Vec<u8>>,
    /// Blocks read in this AG; a tree cannot have more blocks than the AG, so
    /// more means a pointer loop and the walk is refused. (A block reached
    /// twice fails sooner: only the root leaf may be empty, and a revisited
    /// leaf's records are out of order.)
    reads: u64,
    /// This AG's bnobt root.
    root: u32,
}

impl BnoWalk<'_> {
    fn node(&mut self, agno: u64, ag_len: u64, agbno: u32, level: u32, emit: &mut Emitter) -> Result<(), FsError> {
        let sb = self.sb;
        let bs = sb.block_size as usize;
        if agbno as u64 >= ag_len || agbno == 0 {
            return Err(damaged(format!("AG {agno}: free-space btree pointer {agbno} outside the AG")));
        }
        self.reads += 1;
        if self.reads > ag_len {
            return Err(damaged(format!("AG {agno}: free-space btree has more blocks than the AG (a loop)")));
        }
        let lvl = level as usize;
        while self.bufs.len() <= lvl {
            self.bufs.push(vec![0u8; bs]);
        }
        // Take the level's buffer out so the recursion can borrow `self`.
        let mut buf = std::mem::take(&mut self.bufs[lvl]);
        let daddr_blocks = agno * sb.agblocks + agbno as u64;
        let r = self
            .part
            .read_exact_at(&mut buf, daddr_blocks * sb.block_size)
            .map_err(io)
            .and_then(|()| self.parse_node(agno, ag_len, agbno, level, daddr_blocks, &buf, emit));
        self.bufs[lvl] = buf;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn parse_node(
        &mut self,
        agno: u64,
        ag_len: u64,
        agbno: u32,
        level: u32,
        fsblock: u64,
        b: &[u8],
        emit: &mut Emitter,
    ) -> Result<(), FsError> {
        let sb = self.sb;
        let at = |what: &str| damaged(format!("AG {agno}: free-space btree block {agbno}: {what}"));
        let (magic, hdr) = if sb.v5 { (BNO_MAGIC_V5, BT_HDR_V5) } else { (BNO_MAGIC_V4, BT_HDR_V4) };
        if be32(b, 0) != magic {
            return Err(at("bad magic"));
        }
        if sb.v5 {
            if !xfs_cksum_ok(b, BT_CRC_OFF) {
                return Err(at("checksum mismatch"));
            }
            if b[32..48] != sb.meta_uuid {
                return Err(at("UUID of another filesystem"));
            }
            if be64(b, 16) != fsblock << (sb.block_log - 9) {
                return Err(at("block address does not match its location"));
            }
            if be32(b, 48) as u64 != agno {
                return Err(at("owned by another AG"));
            }
        }
        if be16(b, 4) as u32 != level {
            return Err(at(&format!("level {} where {level} expected", be16(b, 4))));
        }
        let n = be16(b, 6) as usize;
        let space = b.len() - hdr;
        if level == 0 {
            if n > space / 8 || (n == 0 && agbno != self.root) {
                return Err(at(&format!("{n} records")));
            }
            for i in 0..n {
                let o = hdr + 8 * i;
                emit.free(agno, be32(b, o) as u64, be32(b, o + 4) as u64)?;
            }
        } else {
            // Node: keys (8 bytes each) for maxrecs slots, then pointers.
            let maxrecs = space / 12;
            if n == 0 || n > maxrecs {
                return Err(at(&format!("{n} pointers in a node of {maxrecs}")));
            }
            let ptrs = hdr + 8 * maxrecs;
            for i in 0..n {
                let child = be32(b, ptrs + 4 * i);
                self.node(agno, ag_len, child, level - 1, emit)?;
            }
        }
        Ok(())
    }
}

const LOG_MAGIC: u32 = 0xFEED_BABE;
/// Largest log record: 256 KiB of data plus its extended cycle headers.
const LOG_MAX_RECORD_BBS: u64 = 2 * (256 * 1024 / 512);
/// How far past the head torn writes can reach: the kernel keeps at most 8
/// in-core logs of up to 256 KiB in flight (XLOG_MAX_ICLOGS * record size).
const LOG_WRITE_WINDOW_BBS: u64 = 8 * (256 * 1024 / 512);
const XLOG_UNMOUNT_TRANS: u8 = 0x20;

struct Log<'a> {
    part: &'a dyn ReadAt,
    /// Byte offset of log block (BB) 0 and the log's length in BBs.
    base: u64,
    bbs: u64,
}

impl Log<'_> {
    fn read_bb(&self, bb: u64, buf: &mut [u8; 512]) -> Result<(), FsError> {
        self.part.read_exact_at(buf, self.base + (bb % self.bbs) * 512).map_err(io)
    }
    /// The cycle stamped on a BB: in a record header it is `h_cycle`, in any
    /// other block the first word (its original content is saved in the
    /// header's cycle data).
    fn cycle(&self, bb: u64) -> Result<u32, FsError> {
        let mut b = [0u8; 512];
        self.read_bb(bb, &mut b)?;
        Ok(if be32(&b, 0) == LOG_MAGIC { be32(&b, 4) } else { be32(&b, 0) })
    }
}

fn dirty(msg: impl std::fmt::Display) -> FsError {
    unsupported(format!(
        "the log is not clean ({msg}): it may hold allocations not yet in the free-space btrees; mount and unmount once (or xfs_repair) before imaging"
    ))
}

/// Refuse unless the internal log ends with an unmount record (see module doc).
fn check_log_clean(part: &dyn ReadAt, sb: &Sb) -> Result<(), FsError> {
    let log = Log { part, base: sb.log_start * sb.block_size, bbs: sb.log_blocks * (sb.block_size / 512) };
    let n = log.bbs;
    let first = log.cycle(0)?;
    let last = log.cycle(n - 1)?;
    if first == 0 {
        // Totally zeroed log (fresh from xfs_repair -L or some mkfs): nothing
        // to recover, as the kernel's xlog_find_zeroed decides.
        return Ok(());
    }
    // Head: first BB not written in the current pass (`first`'s cycle).
    let head = if first == last {
        // The current pass covered the whole log: the head is at its end
        // (wrapping to 0). Torn writes would show as older cycles just before.
        for bb in n.saturating_sub(LOG_WRITE_WINDOW_BBS)..n {
            if log.cycle(bb)? != first {
                return Err(dirty("a hole in the last written blocks"));
            }
        }
        n
    } else {
        if last.wrapping_add(1) != first && last != 0 {
            return Err(dirty(format!("log cycles {first} and {last}")));
        }
        // Binary search for the first BB whose cycle differs from `first`;
        // BBs before it are of the current pass, after it of the previous.
        let (mut lo, mut hi) = (0u64, n - 1); // cycle(lo) == first, cycle(hi) != first
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.cycle(mid)? == first {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // Torn writes: no block of the current pass may follow the head.
        for bb in hi..(hi + LOG_WRITE_WINDOW_BBS).min(n) {
            if log.cycle(bb)? == first {
                return Err(dirty("blocks of the current pass past the head"));
            }
        }
        hi
    };
    // Last record header before the head.
    let mut b = [0u8; 512];
    let mut rec = None;
    for back in 1..=LOG_MAX_RECORD_BBS.min(n) {
        let bb = (head + n - back) % n;
        log.read_bb(bb, &mut b)?;
        if be32(&b, 0) == LOG_MAGIC {
            rec = Some(bb);
            break;
        }
    }
    let rec = rec.ok_or_else(|| dirty("no record header before the head"))?;
    let version = be32(&b, 8);
    let h_len = be32(&b, 12) as u64;
    let num_ops = be32(&b, 40);
    let h_size = be32(&b, 320) as u64;
    // v2 logs with in-core logs over 32 KiB carry extra header BBs.
    let hblks = if version & 2 != 0 && h_size > 32 * 1024 { h_size.div_ceil(32 * 1024) } else { 1 };
    if hblks > 8 || h_len > 256 * 1024 {
        return Err(dirty("implausible last record header"));
    }
    let end = (rec + hblks + h_len.div_ceil(512)) % n;
    if end != head % n || num_ops != 1 {
        return Err(dirty("the last record is not an unmount record"));
    }
    log.read_bb(rec + hblks, &mut b)?;
    // xlog_op_header: tid, len, clientid, flags (byte 9).
    if b[9] & XLOG_UNMOUNT_TRANS == 0 {
        return Err(dirty("the last record is not an unmount record"));
    }
    Ok(())
}
