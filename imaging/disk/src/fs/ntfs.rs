//! NTFS: used clusters from the `$Bitmap` metadata file.
//!
//! NTFS records cluster allocation in one place, the unnamed `$DATA` stream of
//! MFT record 6 (`$Bitmap`): bit *n* set = cluster *n* in use. Every metadata
//! file (`$MFT`, `$MFTMirr`, `$LogFile`, `$Boot`, the bitmap itself...) lives in
//! allocated clusters, so the bitmap alone gives the map. On top of it we always
//! mark the boot area (the first 8 KiB, `$Boot`'s fixed size) and the backup
//! boot sector, which lies in the sector just past the volume's sector count
//! (the volume is one sector shorter than its partition for exactly that
//! reason) and so belongs to no cluster and to no bitmap bit.
//!
//! The path to the bitmap: boot sector → `$MFT` (record 0, at the boot sector's
//! MFT LCN) → its `$DATA` data runs → records 3 (`$Volume`) and 6 (`$Bitmap`)
//! wherever those runs put them (records are not assumed contiguous) → the
//! bitmap's own data runs → the bitmap, streamed 1 MiB at a time (memory is
//! bounded in the boot OS; a 16 TiB volume with 4 KiB clusters has a 512 MiB
//! bitmap). Every MFT record read has its update sequence (fixup) array
//! checked and applied: a mismatch is a torn or damaged record, refused.
//!
//! Refuses (the caller images every block): an NTFS version other than 1.x,
//! 3.0, 3.1; a volume marked dirty (chkdsk pending, its `$LogFile` may hold
//! allocations not yet in `$Bitmap`); a `$LogFile` that is not clean (Windows
//! hibernated or "fast startup", or a crash: the bitmap on disk may be stale
//! until the log is replayed); a `$Bitmap` that is compressed, encrypted,
//! sparse, described through an attribute list or shorter than the cluster
//! count; data runs pointing outside the volume; any malformed structure.
//!
//! Every on-disk field is treated as hostile: offsets and lengths are checked
//! before use, arithmetic is checked, and nothing is allocated from an
//! unvalidated size.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::ReadAt;

pub struct Ntfs;

reader_errors!(NAME);

const NAME: &str = "ntfs";

/// Fixups protect each 512-byte stride of a multi-sector record, whatever the
/// sector size (`NTFS_BLOCK_SIZE` in ntfs-3g and Windows alike).
const FIXUP_STRIDE: usize = 512;
/// `$Boot` is 8 KiB whatever the cluster size.
const BOOT_AREA: u64 = 8192;

const AT_VOLUME_INFORMATION: u32 = 0x70;
const AT_DATA: u32 = 0x80;
const AT_ATTRIBUTE_LIST: u32 = 0x20;
const AT_END: u32 = 0xFFFF_FFFF;

/// `$VOLUME_INFORMATION` flag: chkdsk must run before the volume is trusted.
const VOLUME_IS_DIRTY: u16 = 0x0001;
/// Attribute flags that change how the stream is stored on disk.
const ATTR_COMPRESSION_MASK: u16 = 0x00FF;
const ATTR_ENCRYPTED: u16 = 0x4000;
const ATTR_SPARSE: u16 = 0x8000;

/// Read the bitmap in pieces of this size.
const CHUNK: u64 = 1 << 20;

// Bounds-checked little-endian reads: `None` past the end of the slice.
fn g16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o.checked_add(2)?)?.try_into().ok()?))
}
fn g32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?))
}
fn g64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

/// Geometry from the boot sector.
struct Vol {
    bps: u64,
    /// Bytes per cluster.
    cluster: u64,
    /// Clusters in the volume (`total_sectors / sectors_per_cluster`, as NTFS
    /// computes it: a partial trailing cluster is not part of the volume).
    clusters: u64,
    rec_size: usize,
}

/// One data run: `len` clusters from `vcn`, at `lcn` (`None`: sparse).
#[derive(Debug, Clone, Copy)]
struct Run {
    vcn: u64,
    len: u64,
    lcn: Option<u64>,
}

/// The "clusters per MFT record" / "clusters per index record" encoding: a
/// positive value counts clusters; a negative one -n means 2^n bytes (used
/// when the record is smaller than a cluster, e.g. 1 KiB records in 4 KiB
/// clusters are stored as -10 = 0xF6).
fn record_size(raw: u8, cluster: u64, what: &str) -> Result<u64, FsError> {
    let v = raw as i8;
    let size = if v > 0 {
        v as u64 * cluster
    } else if (-31..0).contains(&v) {
        1u64 << (-(v as i32))
    } else {
        return Err(damaged(format!("boot sector: {what} size field {raw:#04x}")));
    };
    if !size.is_power_of_two() || !(FIXUP_STRIDE as u64..=65536).contains(&size) {
        return Err(damaged(format!("boot sector: {what} size of {size} bytes")));
    }
    Ok(size)
}

impl FsReader for Ntfs {
    fn name(&self) -> &'static str {
        NAME
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        if len < 512 {
            return Ok(None);
        }
        let mut b = [0u8; 512];
        part.read_exact_at(&mut b, 0).map_err(io)?;
        if &b[3..11] != b"NTFS    " {
            return Ok(None);
        }
        // The OEM string alone is a strong enough signature to call the
        // partition ours: a missing 0x55AA is then damage, not "someone else's".
        if b[510] != 0x55 || b[511] != 0xAA {
            return Err(damaged("boot sector signature 0x55AA missing"));
        }
        let vol = geometry(&b, len)?;
        let mft_lcn = g64(&b, 0x30).unwrap_or(u64::MAX);
        if mft_lcn >= vol.clusters {
            return Err(damaged(format!("$MFT at cluster {mft_lcn}, outside the volume of {} clusters", vol.clusters)));
        }

        // Record 0 describes $MFT itself: its first extent tells where every
        // other record is. The first records are normally contiguous at the
        // MFT LCN, but nothing requires it, so records 3 and 6 are located
        // through the runs rather than assumed.
        let mut rec = vec![0u8; vol.rec_size];
        part.read_exact_at(&mut rec, mft_lcn * vol.cluster).map_err(io)?;
        fixup(&mut rec, "0 ($MFT)")?;
        let attrs0 = attributes(&rec, "0 ($MFT)")?;
        let mft_data = attrs0
            .iter()
            .find(|a| a.ty == AT_DATA && a.name_len == 0 && a.nonresident && a.lowest_vcn() == Some(0))
            .ok_or_else(|| damaged("MFT record 0 ($MFT) has no non-resident $DATA attribute"))?;
        let mft_runs = decode_runs(mft_data.raw, &vol, "$MFT")?;

        let read_record = |n: u64, what: &str, buf: &mut Vec<u8>| -> Result<(), FsError> {
            read_stream(part, &vol, &mft_runs, n * vol.rec_size as u64, buf, "$MFT")?;
            fixup(buf, what)
        };

        // $Volume: version and dirty flag.
        read_record(3, "3 ($Volume)", &mut rec)?;
        let (major, minor) = {
            let attrs = attributes(&rec, "3 ($Volume)")?;
            let vi = attrs
                .iter()
                .find(|a| a.ty == AT_VOLUME_INFORMATION && !a.nonresident)
                .ok_or_else(|| damaged("MFT record 3 ($Volume) has no $VOLUME_INFORMATION attribute"))?;
            let v = vi
                .resident_value()
                .filter(|v| v.len() >= 12)
                .ok_or_else(|| damaged("$VOLUME_INFORMATION value out of bounds"))?;
            let (major, minor, flags) = (v[8], v[9], u16::from_le_bytes([v[10], v[11]]));
            // 1.x: NT 3.51/4.0; 3.0: Windows 2000; 3.1: XP and later. A newer
            // major version may record allocation differently.
            if !(major == 1 || (major == 3 && minor <= 1)) {
                return Err(unsupported(format!("NTFS version {major}.{minor}")));
            }
            if flags & VOLUME_IS_DIRTY != 0 {
                return Err(unsupported(
                    "volume is marked dirty: its $LogFile must be replayed and chkdsk run \
                     (boot Windows or run chkdsk) before its $Bitmap can be trusted",
                ));
            }
            (major, minor)
        };

        // $LogFile: a log that is not clean holds allocations that may not be
        // in $Bitmap yet.
        read_record(2, "2 ($LogFile)", &mut rec)?;
        check_logfile(part, &vol, &rec)?;

        // $Bitmap.
        read_record(6, "6 ($Bitmap)", &mut rec)?;
        let attrs = attributes(&rec, "6 ($Bitmap)")?;
        if attrs.iter().any(|a| a.ty == AT_ATTRIBUTE_LIST) {
            // The $DATA extents would be spread over other MFT records; a
            // bitmap that fragmented is rare enough to image whole instead.
            return Err(unsupported("$Bitmap is described through an attribute list"));
        }
        let data = attrs
            .iter()
            .find(|a| a.ty == AT_DATA && a.name_len == 0)
            .ok_or_else(|| damaged("MFT record 6 ($Bitmap) has no unnamed $DATA attribute"))?;
        if !data.nonresident {
            return Err(damaged("$Bitmap's $DATA is resident"));
        }
        if data.flags & (ATTR_COMPRESSION_MASK | ATTR_ENCRYPTED | ATTR_SPARSE) != 0 {
            return Err(unsupported(format!(
                "$Bitmap's $DATA is compressed, encrypted or sparse (flags {:#06x})",
                data.flags
            )));
        }
        let raw = data.raw;
        let (data_size, init_size) = match (g64(raw, 0x30), g64(raw, 0x38)) {
            (Some(d), Some(i)) => (d, i),
            _ => return Err(damaged("$Bitmap's $DATA header truncated")),
        };
        let need = vol.clusters.div_ceil(8);
        if data_size < need || init_size < need {
            return Err(damaged(format!(
                "$Bitmap holds {} bytes ({} initialised), {need} needed for {} clusters",
                data_size, init_size, vol.clusters
            )));
        }
        if data.lowest_vcn() != Some(0) {
            return Err(damaged("$Bitmap's $DATA does not start at VCN 0"));
        }
        let runs = decode_runs(raw, &vol, "$Bitmap")?;

        // The map's unit. The cluster is the natural one, but the backup boot
        // sector sits after the last whole cluster (the volume's sector count
        // is not a multiple of the cluster's, and even when it is, the backup
        // is the sector right after). Marking the whole cluster holding it is
        // right only if that cluster lies entirely inside the partition (the
        // usual case: partitions are MiB-aligned and the volume is one sector
        // shorter); otherwise the map's last block would reach past the
        // partition, so use sectors, which describe every byte exactly.
        let total_sectors = g64(&b, 0x28).unwrap_or(0);
        let backup = total_sectors * vol.bps; // geometry() checked it fits in len
        let backup_inside = backup + vol.bps <= len;
        let (unit, total_blocks) = if !backup_inside {
            (vol.cluster, vol.clusters)
        } else if (vol.clusters + 1) * vol.cluster <= len {
            (vol.cluster, vol.clusters + 1)
        } else {
            (vol.bps, total_sectors + 1)
        };
        let per = vol.cluster / unit; // blocks per cluster
        let mut m = UsedMapBuilder::new(unit as u32, total_blocks);
        m.add(0, BOOT_AREA.div_ceil(unit));
        if backup_inside {
            m.add(backup / unit, 1);
        }

        // Stream the bitmap; bits past the cluster count (the bitmap is
        // rounded up to 8 bytes) are padding and ignored.
        let mut buf = vec![0u8; CHUNK as usize];
        let mut off = 0u64;
        while off < need {
            let n = CHUNK.min(need - off) as usize;
            let chunk = &mut buf[..n];
            read_stream(part, &vol, &runs, off, chunk, "$Bitmap")?;
            for (i, &byte) in chunk.iter().enumerate() {
                if byte == 0 {
                    continue;
                }
                let first = (off + i as u64) * 8;
                if byte == 0xFF && first + 8 <= vol.clusters {
                    m.add(first * per, 8 * per);
                    continue;
                }
                for bit in 0..8 {
                    let c = first + bit;
                    if byte & (1 << bit) != 0 && c < vol.clusters {
                        m.add(c * per, per);
                    }
                }
            }
            off += n as u64;
        }
        Ok(Some(m.finish(format!("ntfs {major}.{minor}"))))
    }
}

/// Validate the BPB and derive the geometry.
fn geometry(b: &[u8; 512], len: u64) -> Result<Vol, FsError> {
    let bps = u16::from_le_bytes([b[11], b[12]]) as u64;
    if !bps.is_power_of_two() || !(256..=4096).contains(&bps) {
        return Err(damaged(format!("boot sector: {bps} bytes per sector")));
    }
    // Sectors per cluster: up to 128 as is; above, Windows 10's large clusters
    // (128 KiB..2 MiB with 512-byte sectors) store 2^(256 - value).
    let raw = b[13];
    let spc: u64 = match raw {
        0 => return Err(damaged("boot sector: 0 sectors per cluster")),
        1..=0x80 => raw as u64,
        _ if 256 - raw as u32 <= 12 => 1 << (256 - raw as u32),
        _ => return Err(damaged(format!("boot sector: sectors per cluster field {raw:#04x}"))),
    };
    if !spc.is_power_of_two() {
        return Err(damaged(format!("boot sector: {spc} sectors per cluster")));
    }
    let cluster = bps * spc;
    if cluster > 2 << 20 {
        return Err(damaged(format!("boot sector: clusters of {cluster} bytes")));
    }
    let rec_size = record_size(b[0x40], cluster, "MFT record")?;
    // Index records are not read, but a nonsense size means a nonsense BPB.
    record_size(b[0x44], cluster, "index record")?;
    let total_sectors = u64::from_le_bytes(b[0x28..0x30].try_into().unwrap_or([0; 8]));
    match total_sectors.checked_mul(bps) {
        Some(bytes) if bytes <= len => {}
        _ => {
            return Err(damaged(format!(
                "volume of {total_sectors} sectors of {bps} bytes is larger than its partition ({len} bytes)"
            )))
        }
    }
    let clusters = total_sectors / spc;
    if clusters < 16 {
        return Err(damaged(format!("volume of {clusters} clusters")));
    }
    Ok(Vol { bps, cluster, clusters, rec_size: rec_size as usize })
}

/// Check and apply the update sequence array of a multi-sector record (MFT
/// record or log restart page): the last two bytes of every 512-byte stride
/// were replaced on write by the update sequence number, their real value
/// saved in the array. A stride whose last two bytes are not the USN was not
/// written together with the rest (a torn write) or was damaged since.
fn fixup_with(buf: &mut [u8], magic: &[u8; 4], what: &str) -> Result<(), FsError> {
    if buf.get(0..4) != Some(&magic[..]) {
        return Err(damaged(format!(
            "{what}: bad magic {:?} (want {:?})",
            String::from_utf8_lossy(buf.get(0..4).unwrap_or(&[])),
            String::from_utf8_lossy(magic)
        )));
    }
    let usa_ofs = g16(buf, 4).unwrap_or(0) as usize;
    let usa_count = g16(buf, 6).unwrap_or(0) as usize;
    let strides = buf.len() / FIXUP_STRIDE;
    if usa_count != strides + 1 || usa_ofs < 8 || usa_ofs + 2 * usa_count > FIXUP_STRIDE - 2 {
        return Err(damaged(format!(
            "{what}: update sequence array of {usa_count} entries at {usa_ofs} does not fit {strides} sectors"
        )));
    }
    let usn = [buf[usa_ofs], buf[usa_ofs + 1]];
    for i in 1..=strides {
        let end = i * FIXUP_STRIDE - 2;
        if buf[end..end + 2] != usn {
            return Err(damaged(format!(
                "{what}: update sequence (fixup) mismatch in sector {}: torn write or damage",
                i - 1
            )));
        }
        let saved = usa_ofs + 2 * i;
        buf[end] = buf[saved];
        buf[end + 1] = buf[saved + 1];
    }
    Ok(())
}

fn fixup(rec: &mut [u8], n: &str) -> Result<(), FsError> {
    if rec.get(0..4) == Some(b"BAAD") {
        return Err(damaged(format!("MFT record {n} is marked BAAD (a failed multi-sector transfer)")));
    }
    fixup_with(rec, b"FILE", &format!("MFT record {n}"))?;
    // Flags: 0x0001 = in use. A system file's record not in use is damage.
    if g16(rec, 0x16).unwrap_or(0) & 1 == 0 {
        return Err(damaged(format!("MFT record {n} is not in use")));
    }
    Ok(())
}

/// One attribute of an MFT record (a view into the fixed-up record).
struct Attr<'a> {
    ty: u32,
    nonresident: bool,
    name_len: u8,
    flags: u16,
    /// The whole attribute, header included, bounded by its length.
    raw: &'a [u8],
}

impl<'a> Attr<'a> {
    fn lowest_vcn(&self) -> Option<u64> {
        g64(self.raw, 0x10)
    }
    fn resident_value(&self) -> Option<&'a [u8]> {
        let vlen = g32(self.raw, 0x10)? as usize;
        let voff = g16(self.raw, 0x14)? as usize;
        self.raw.get(voff..voff.checked_add(vlen)?)
    }
}

/// The attributes of a fixed-up MFT record, each bounded inside the record's
/// used bytes.
fn attributes<'a>(rec: &'a [u8], n: &str) -> Result<Vec<Attr<'a>>, FsError> {
    let bad = |m: &str| damaged(format!("MFT record {n}: {m}"));
    let used = g32(rec, 0x18).unwrap_or(0) as usize;
    if used > rec.len() {
        return Err(bad("used size larger than the record"));
    }
    let rec = &rec[..used];
    let mut p = g16(rec, 0x14).unwrap_or(0) as usize;
    let mut out = Vec::new();
    loop {
        let ty = g32(rec, p).ok_or_else(|| bad("attributes run past the record's end"))?;
        if ty == AT_END {
            return Ok(out);
        }
        let alen = g32(rec, p + 4).unwrap_or(0) as usize;
        // An attribute header is at least 24 bytes, 8-byte aligned.
        if alen < 24 || alen % 8 != 0 || p + alen > rec.len() {
            return Err(bad(&format!("attribute {ty:#x} at {p} has length {alen}")));
        }
        let raw = &rec[p..p + alen];
        let nonresident = raw[8] != 0;
        if nonresident && alen < 0x40 {
            return Err(bad(&format!("non-resident attribute {ty:#x} too short")));
        }
        out.push(Attr { ty, nonresident, name_len: raw[9], flags: g16(raw, 0x0C).unwrap_or(0), raw });
        p += alen;
    }
}

/// Decode a non-resident attribute's mapping pairs into runs. Each pair: a
/// header byte (low nibble: size of the length field, high nibble: size of
/// the LCN field), the run length (unsigned), then the LCN as a signed delta
/// from the previous run's LCN; no LCN field means a sparse run. A zero
/// header ends the list. Runs must lie inside the volume and cover the VCN
/// range the attribute claims.
fn decode_runs(attr: &[u8], vol: &Vol, what: &str) -> Result<Vec<Run>, FsError> {
    let bad = |m: String| damaged(format!("{what} data runs: {m}"));
    let lowest = g64(attr, 0x10).unwrap_or(u64::MAX);
    let highest = g64(attr, 0x18).unwrap_or(0);
    let mut p = g16(attr, 0x20).unwrap_or(0) as usize;
    if p < 0x40 || p >= attr.len() || lowest > highest {
        return Err(bad(format!("mapping pairs at {p}, VCNs {lowest}..={highest}")));
    }
    let mut vcn = lowest;
    let mut lcn: i64 = 0;
    let mut runs = Vec::new();
    loop {
        let h = *attr.get(p).ok_or_else(|| bad("mapping pairs run past the attribute".into()))?;
        if h == 0 {
            break;
        }
        let (ls, os) = ((h & 0xF) as usize, (h >> 4) as usize);
        if ls == 0 || ls > 8 || os > 8 {
            return Err(bad(format!("bad mapping pair header {h:#04x}")));
        }
        let field =
            attr.get(p + 1..p + 1 + ls + os).ok_or_else(|| bad("mapping pairs run past the attribute".into()))?;
        let mut rl = [0u8; 8];
        rl[..ls].copy_from_slice(&field[..ls]);
        let rlen = u64::from_le_bytes(rl);
        if rlen == 0 || rlen > vol.clusters {
            return Err(bad(format!("run of {rlen} clusters")));
        }
        let run_lcn = if os == 0 {
            None
        } else {
            // Sign-extend the delta from its top byte.
            let fill = if field[ls + os - 1] & 0x80 != 0 { 0xFF } else { 0 };
            let mut d = [fill; 8];
            d[..os].copy_from_slice(&field[ls..ls + os]);
            lcn = lcn.checked_add(i64::from_le_bytes(d)).ok_or_else(|| bad("LCN overflow".into()))?;
            match u64::try_from(lcn) {
                Ok(l) if l.checked_add(rlen).is_some_and(|e| e <= vol.clusters) => Some(l),
                _ => {
                    return Err(bad(format!(
                        "run of {rlen} clusters at LCN {lcn} points outside the volume of {} clusters",
                        vol.clusters
                    )))
                }
            }
        };
        runs.push(Run { vcn, len: rlen, lcn: run_lcn });
        vcn = vcn.checked_add(rlen).ok_or_else(|| bad("VCN overflow".into()))?;
        p += 1 + ls + os;
    }
    if vcn.checked_sub(1) != Some(highest) {
        return Err(bad(format!("runs cover VCNs {lowest}..{vcn}, the attribute claims {lowest}..={highest}")));
    }
    Ok(runs)
}

/// Read `buf.len()` bytes at byte offset `off` of a non-resident stream.
fn read_stream(
    part: &dyn ReadAt,
    vol: &Vol,
    runs: &[Run],
    mut off: u64,
    buf: &mut [u8],
    what: &str,
) -> Result<(), FsError> {
    let mut done = 0usize;
    while done < buf.len() {
        let vcn = off / vol.cluster;
        let run = runs
            .iter()
            .find(|r| r.vcn <= vcn && vcn - r.vcn < r.len)
            .ok_or_else(|| damaged(format!("{what}: byte {off} is not covered by its data runs")))?;
        let lcn = run.lcn.ok_or_else(|| damaged(format!("{what}: byte {off} lies in a sparse run")))?;
        let in_run = off - run.vcn * vol.cluster; // bytes into the run
        let avail = run.len * vol.cluster - in_run;
        let n = avail.min((buf.len() - done) as u64) as usize;
        part.read_exact_at(&mut buf[done..done + n], lcn * vol.cluster + in_run).map_err(io)?;
        done += n;
        off += n as u64;
    }
    Ok(())
}

/// Refuse unless `$LogFile` says the volume was cleanly unmounted, with the
/// test ntfs-3g applies before mounting read-write: the log is empty (all
/// 0xFF, as ntfs-3g and mkntfs leave it), or the newer of the two restart
/// areas has no client in use or has the "volume is clean" flag (Windows 8+
/// sets it on clean shutdown; not on hibernation / fast startup).
fn check_logfile(part: &dyn ReadAt, vol: &Vol, rec: &[u8]) -> Result<(), FsError> {
    let attrs = attributes(rec, "2 ($LogFile)")?;
    let data = attrs
        .iter()
        .find(|a| a.ty == AT_DATA && a.name_len == 0 && a.nonresident)
        .ok_or_else(|| damaged("MFT record 2 ($LogFile) has no non-resident $DATA attribute"))?;
    let runs = decode_runs(data.raw, vol, "$LogFile")?;
    let size = g64(data.raw, 0x30).unwrap_or(0);
    // Restart pages: one at 0, the second one page later. The page size is
    // in the page itself; 4 KiB is what every Windows version writes, and the
    // first page tells us if it differs.
    let mut newest: Option<(u64, u16, u16)> = None; // (current LSN, in-use list, flags)
    let mut page_off = 0u64;
    let mut page_size = 4096u64;
    let mut all_ff = true;
    for _ in 0..2 {
        if page_off + page_size > size {
            break;
        }
        let mut page = vec![0u8; page_size as usize];
        read_stream(part, vol, &runs, page_off, &mut page, "$LogFile")?;
        if page.iter().all(|&x| x == 0xFF) {
            page_off += page_size;
            continue;
        }
        all_ff = false;
        // "CHKD": chkdsk touched the log; ntfs-3g treats it like RSTR.
        let magic: [u8; 4] = if page.get(0..4) == Some(b"CHKD") { *b"CHKD" } else { *b"RSTR" };
        let sys_page = g32(&page, 0x10).unwrap_or(0) as u64;
        if page_off == 0 && sys_page != page_size {
            if !sys_page.is_power_of_two() || !(512..=65536).contains(&sys_page) {
                return Err(damaged(format!("$LogFile: restart page size {sys_page}")));
            }
            page_size = sys_page;
            page.resize(page_size as usize, 0);
            read_stream(part, vol, &runs, 0, &mut page, "$LogFile")?;
        }
        if fixup_with(&mut page, &magic, "$LogFile restart page").is_err() {
            // A damaged copy: the other restart page is the one to use.
            page_off += page_size;
            continue;
        }
        let ra = g16(&page, 0x18).unwrap_or(0) as usize;
        match (g64(&page, ra), g16(&page, ra + 0x0C), g16(&page, ra + 0x0E)) {
            (Some(lsn), Some(in_use), Some(flags)) => {
                if newest.is_none_or(|n| lsn > n.0) {
                    newest = Some((lsn, in_use, flags));
                }
            }
            _ => return Err(damaged("$LogFile: restart area out of bounds")),
        }
        page_off += page_size;
    }
    const LOGFILE_NO_CLIENT: u16 = 0xFFFF;
    const RESTART_VOLUME_IS_CLEAN: u16 = 0x0002;
    match newest {
        None if all_ff => Ok(()),
        None => Err(damaged("$LogFile: no valid restart page")),
        Some((_, in_use, flags)) if in_use == LOGFILE_NO_CLIENT || flags & RESTART_VOLUME_IS_CLEAN != 0 => Ok(()),
        Some(_) => Err(unsupported(
            "$LogFile is not clean (Windows hibernated, used fast startup, or crashed): \
             allocations may be missing from $Bitmap until Windows replays the log \
             (shut Windows down fully, or run chkdsk)",
        )),
    }
}
