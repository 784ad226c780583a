//! Partition table parsing and the "system region" to keep.
//!
//! [`read_layout`] reads MBR (primary, extended and logical partitions) and GPT
//! (protective MBR, primary and backup header + entry array, each with its CRC32
//! checked). A damaged GPT copy is reported in [`DiskLayout::warnings`] naming
//! the copy and the reason, and the other copy is used; both damaged is an error,
//! because guessing a layout and then imaging the wrong bytes would be worse than
//! refusing.
//!
//! ## What `keep` means
//! Imaging stores partitions through their filesystem's used-block map, so
//! everything *outside* partitions has to be listed separately or it is lost on
//! restore. The rule is deliberately simple: **keep every byte outside the
//! partitions, except the unallocated tail after the last partition** (for GPT,
//! the tail ends where the backup entry array begins: the backup array and
//! header are kept). That covers the MBR sector, GPT headers and arrays at both
//! ends, the gap before the first partition (GRUB's core.img on MBR disks, other
//! boot loaders' private areas), EBRs of logical partitions and any gaps between
//! partitions. Gaps between partitions are usually small; the imaging pipeline
//! drops all-zero blocks anyway, so a zeroed gap costs nothing. The tail is
//! skipped because it is where "unallocated space" usually is and it can be
//! large; nothing standard lives there.
//!
//! A disk without any table (or with an MBR listing no partition, which is what
//! a FAT filesystem on the whole disk looks like) is reported as
//! [`TableKind::None`] with one
//! pseudo-partition covering the whole disk (a "superfloppy": a filesystem
//! written straight onto the device), so callers can treat all three cases the
//! same way: probe each partition, image `keep` raw.

use crate::{le16, le32, le64, Range, ReadAt};
use std::fmt;

/// Which partition table the disk carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    None,
    Mbr,
    Gpt,
}

/// A GPT GUID as stored on disk (mixed endian: the first three fields are
/// little endian). `Display` prints the usual textual form, upper case, as
/// `sfdisk`/`sgdisk` do.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// The partition's type as the table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// The whole-disk pseudo-partition of a disk without a table.
    None,
    /// MBR system id byte (0x83 Linux, 0x82 swap, 0x0c FAT32 LBA, ...).
    Mbr(u8),
    /// GPT partition type GUID.
    Gpt(Guid),
}

/// One data partition. Extended-partition containers are not listed: their
/// EBRs and gaps fall into [`DiskLayout::keep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition number as Linux names it: MBR primaries 1..=4, logicals from 5
    /// in chain order; GPT: entry index + 1; 0 for the whole-disk pseudo-partition.
    pub index: u32,
    /// Byte offset from the start of the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    pub ptype: PartType,
    /// GPT partition name (UTF-16 on disk); empty for MBR.
    pub name: String,
    /// GPT unique partition GUID; `None` for MBR.
    pub guid: Option<Guid>,
    /// MBR active flag (0x80) or GPT attribute bits.
    pub attrs: u64,
}

impl Partition {
    pub fn range(&self) -> Range {
        Range::new(self.start, self.start + self.len)
    }
}

/// The result of [`read_layout`].
#[derive(Debug, Clone)]
pub struct DiskLayout {
    pub size: u64,
    pub sector_size: u32,
    pub table: TableKind,
    /// GPT disk GUID (`None` for MBR/none).
    pub disk_guid: Option<Guid>,
    /// MBR disk signature (bytes 440..444), also present on protective MBRs.
    pub mbr_signature: Option<u32>,
    /// Sorted by start.
    pub partitions: Vec<Partition>,
    /// Byte ranges outside partitions that must be imaged raw (see the module
    /// doc for the rule). Sorted, disjoint, non-empty.
    pub keep: Vec<Range>,
    /// Things that are wrong but survivable, e.g. "primary GPT header damaged
    /// (header CRC mismatch); using the backup".
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading the disk: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported logical sector size {0} (expected 512..=65536, a power of two)")]
    SectorSize(u32),
    #[error("disk size {size} is not a multiple of the sector size {sector_size}")]
    Size { size: u64, sector_size: u32 },
    #[error("both GPT copies are damaged: primary: {primary}; backup: {backup}")]
    GptDamaged { primary: String, backup: String },
    #[error("invalid partition table: {0}")]
    Invalid(String),
}

const GPT_SIG: &[u8; 8] = b"EFI PART";
/// Bound on the GPT entry array we are willing to read (the standard one is
/// 16 KiB; 1 MiB leaves plenty of room while refusing absurd headers).
const MAX_GPT_ARRAY: u64 = 1 << 20;

/// Parse the partition table of `disk` (`size` bytes, `sector_size` the logical
/// sector size, 512 or 4096 in practice: for a block device use
/// `BLKSSZGET`, for an image file 512 unless known otherwise).
pub fn read_layout(disk: &dyn ReadAt, size: u64, sector_size: u32) -> Result<DiskLayout, LayoutError> {
    if !(512..=65536).contains(&sector_size) || !sector_size.is_power_of_two() {
        return Err(LayoutError::SectorSize(sector_size));
    }
    let ss = sector_size as u64;
    if size % ss != 0 {
        return Err(LayoutError::Size { size, sector_size });
    }
    let mut layout = DiskLayout {
        size,
        sector_size,
        table: TableKind::None,
        disk_guid: None,
        mbr_signature: None,
        partitions: Vec::new(),
        keep: Vec::new(),
        warnings: Vec::new(),
    };
    if size < 2 * ss {
        whole_disk(&mut layout);
        return Ok(layout);
    }
    let mut mbr = vec![0u8; ss as usize];
    disk.read_exact_at(&mut mbr, 0)?;
    // 0x55AA alone does not make an MBR: a FAT or NTFS boot sector written
    // straight onto the disk (a "superfloppy" USB stick) carries it too. As
    // fdisk and libblkid do, also require every entry's status byte to be 0x00
    // or 0x80 and used entries to start after sector 0; boot code and
    // message text in a filesystem boot sector fail that.
    let mbr_ok = mbr[510] == 0x55
        && mbr[511] == 0xAA
        && (0..4).all(|i| {
            let e = MbrEntry::parse(&mbr[446 + 16 * i..446 + 16 * (i + 1)]);
            matches!(e.status, 0x00 | 0x80) && (e.ptype == 0 || e.lba != 0)
        });
    let entries: Vec<MbrEntry> = if mbr_ok {
        (0..4).map(|i| MbrEntry::parse(&mbr[446 + 16 * i..446 + 16 * (i + 1)])).collect()
    } else {
        Vec::new()
    };
    let protective = entries.iter().any(|e| e.ptype == 0xEE);

    // A disk whose MBR says "protective" must have a GPT. A disk whose MBR
    // signature is missing may still carry a GPT (a wiped sector 0): look for it
    // then too, but a normal MBR is taken at its word (GPT remnants behind a
    // valid MBR are left-overs of an older table, as fdisk treats them).
    if protective || !mbr_ok {
        match read_gpt(disk, size, ss) {
            Ok((gpt, warnings)) => {
                if !mbr_ok {
                    layout.warnings.push("no MBR boot signature (no protective MBR) in front of a GPT".into());
                }
                layout.warnings.extend(warnings);
                layout.mbr_signature = mbr_ok.then(|| le32(&mbr, 440));
                layout.table = TableKind::Gpt;
                layout.disk_guid = Some(gpt.disk_guid);
                layout.partitions = gpt.partitions;
                sort_and_check(&mut layout)?;
                // Tail rule: the unallocated tail runs from the end of the last
                // partition (or of the primary array) to the backup array.
                let last = layout.partitions.iter().map(|p| p.start + p.len).max().unwrap_or(0);
                let tail_start = last.max(gpt.first_usable * ss);
                let tail_end = gpt.backup_array_start.min(size);
                compute_keep(&mut layout, tail_start, tail_end);
                return Ok(layout);
            }
            Err(e) if protective => return Err(e),
            Err(_) => {
                whole_disk(&mut layout);
                return Ok(layout);
            }
        }
    }

    layout.table = TableKind::Mbr;
    layout.mbr_signature = Some(le32(&mbr, 440));
    let mut ext_end = 0u64;
    for (i, e) in entries.iter().enumerate() {
        if e.ptype == 0 || e.count == 0 {
            continue;
        }
        let start = e.lba as u64 * ss;
        let len = e.count as u64 * ss;
        if start + len > size {
            return Err(LayoutError::Invalid(format!(
                "MBR partition {} ends at byte {} beyond the disk ({size} bytes)",
                i + 1,
                start + len
            )));
        }
        if matches!(e.ptype, 0x05 | 0x0F | 0x85) {
            ext_end = ext_end.max(start + len);
            read_logicals(disk, ss, e.lba as u64, e.count as u64, size, &mut layout)?;
        } else {
            layout.partitions.push(Partition {
                index: i as u32 + 1,
                start,
                len,
                ptype: PartType::Mbr(e.ptype),
                name: String::new(),
                guid: None,
                attrs: e.status as u64,
            });
        }
    }
    if layout.partitions.is_empty() && ext_end == 0 {
        // An MBR without a single partition is what a filesystem written on the
        // whole disk looks like (mkfs.vfat leaves the entries zero), and
        // otherwise an empty disk. Treating it as one whole-disk partition is
        // the safe reading: the filesystem reader, or the every-block fallback,
        // decides what is stored, and nothing can be lost.
        whole_disk(&mut layout);
        return Ok(layout);
    }
    sort_and_check(&mut layout)?;
    let last = layout.partitions.iter().map(|p| p.start + p.len).max().unwrap_or(0);
    // The tail starts after the last partition or extended container.
    let tail_start = last.max(ext_end).max(ss);
    compute_keep(&mut layout, tail_start, size);
    Ok(layout)
}

fn whole_disk(layout: &mut DiskLayout) {
    layout.table = TableKind::None;
    layout.partitions = vec![Partition {
        index: 0,
        start: 0,
        len: layout.size,
        ptype: PartType::None,
        name: String::new(),
        guid: None,
        attrs: 0,
    }];
    layout.keep.clear();
}

struct MbrEntry {
    status: u8,
    ptype: u8,
    lba: u32,
    count: u32,
}

impl MbrEntry {
    fn parse(b: &[u8]) -> Self {
        MbrEntry { status: b[0], ptype: b[4], lba: le32(b, 8), count: le32(b, 12) }
    }
}

/// Walk the EBR chain of an extended partition. Each EBR's first entry is a
/// logical partition relative to that EBR; its second entry points to the next
/// EBR relative to the start of the extended partition.
fn read_logicals(
    disk: &dyn ReadAt,
    ss: u64,
    ext_lba: u64,
    ext_count: u64,
    size: u64,
    layout: &mut DiskLayout,
) -> Result<(), LayoutError> {
    let mut ebr_rel = 0u64;
    let mut index = 5u32;
    let mut seen = std::collections::HashSet::new();
    let mut buf = vec![0u8; ss as usize];
    loop {
        if !seen.insert(ebr_rel) || seen.len() > 256 {
            layout.warnings.push("EBR chain loops or is too long; stopped following it".into());
            return Ok(());
        }
        if ebr_rel >= ext_count {
            return Err(LayoutError::Invalid(format!(
                "EBR at relative sector {ebr_rel} lies outside the extended partition"
            )));
        }
        let ebr_lba = ext_lba + ebr_rel;
        disk.read_exact_at(&mut buf, ebr_lba * ss)?;
        if buf[510] != 0x55 || buf[511] != 0xAA {
            if ebr_rel == 0 {
                // An empty extended partition (never initialised): no logicals.
                return Ok(());
            }
            return Err(LayoutError::Invalid(format!("EBR at sector {ebr_lba} has no boot signature")));
        }
        let first = MbrEntry::parse(&buf[446..462]);
        let next = MbrEntry::parse(&buf[462..478]);
        if first.ptype != 0 && first.count != 0 {
            let start = (ebr_lba + first.lba as u64) * ss;
            let len = first.count as u64 * ss;
            if start + len > size || start + len > (ext_lba + ext_count) * ss {
                return Err(LayoutError::Invalid(format!(
                    "logical partition {index} ends beyond its extended partition"
                )));
            }
            layout.partitions.push(Partition {
                index,
                start,
                len,
                ptype: PartType::Mbr(first.ptype),
                name: String::new(),
                guid: None,
                attrs: first.status as u64,
            });
            index += 1;
        }
        if next.ptype == 0 || next.lba == 0 {
            return Ok(());
        }
        ebr_rel = next.lba as u64;
    }
}

struct Gpt {
    disk_guid: Guid,
    first_usable: u64,
    partitions: Vec<Partition>,
    backup_array_start: u64,
}

struct GptHeader {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Read and check one GPT header + entry array at `lba`. The error string says
/// what is wrong, for the warning or the final error.
fn read_gpt_copy(disk: &dyn ReadAt, size: u64, ss: u64, lba: u64) -> Result<(GptHeader, Vec<u8>), String> {
    let mut buf = vec![0u8; ss as usize];
    disk.read_exact_at(&mut buf, lba * ss).map_err(|e| format!("reading sector {lba}: {e}"))?;
    if &buf[0..8] != GPT_SIG {
        return Err(format!("no \"EFI PART\" signature at sector {lba}"));
    }
    let hsize = le32(&buf, 12) as u64;
    if hsize < 92 || hsize > ss {
        return Err(format!("header size {hsize} out of range"));
    }
    let stored = le32(&buf, 16);
    let mut h = buf[..hsize as usize].to_vec();
    h[16..20].fill(0);
    let crc = crc32fast::hash(&h);
    if crc != stored {
        return Err(format!("header CRC mismatch (stored {stored:08x}, computed {crc:08x})"));
    }
    let hdr = GptHeader {
        my_lba: le64(&buf, 24),
        alternate_lba: le64(&buf, 32),
        first_usable: le64(&buf, 40),
        last_usable: le64(&buf, 48),
        disk_guid: Guid(buf[56..72].try_into().unwrap()),
        entries_lba: le64(&buf, 72),
        num_entries: le32(&buf, 80),
        entry_size: le32(&buf, 84),
        entries_crc: le32(&buf, 88),
    };
    if hdr.my_lba != lba {
        return Err(format!("header says it is at sector {} but was read at {lba}", hdr.my_lba));
    }
    let sectors = size / ss;
    if hdr.entry_size < 128 || hdr.entry_size % 8 != 0 {
        return Err(format!("entry size {} invalid", hdr.entry_size));
    }
    let array_len = hdr.num_entries as u64 * hdr.entry_size as u64;
    if array_len > MAX_GPT_ARRAY {
        return Err(format!("entry array of {array_len} bytes is implausibly large"));
    }
    if hdr.first_usable > hdr.last_usable + 1 || hdr.last_usable >= sectors {
        return Err(format!(
            "usable range {}..={} does not fit a disk of {sectors} sectors",
            hdr.first_usable, hdr.last_usable
        ));
    }
    let array_sectors = array_len.div_ceil(ss);
    if hdr.entries_lba == 0 || hdr.entries_lba + array_sectors > sectors {
        return Err(format!("entry array at sector {} lies outside the disk", hdr.entries_lba));
    }
    let mut arr = vec![0u8; array_len as usize];
    disk.read_exact_at(&mut arr, hdr.entries_lba * ss).map_err(|e| format!("reading the entry array: {e}"))?;
    let crc = crc32fast::hash(&arr);
    if crc != hdr.entries_crc {
        return Err(format!("entry array CRC mismatch (stored {:08x}, computed {crc:08x})", hdr.entries_crc));
    }
    Ok((hdr, arr))
}

fn read_gpt(disk: &dyn ReadAt, size: u64, ss: u64) -> Result<(Gpt, Vec<String>), LayoutError> {
    let last_lba = size / ss - 1;
    let primary = read_gpt_copy(disk, size, ss, 1);
    // The backup lives where the primary says; if the primary is unreadable (or
    // points somewhere odd, e.g. the disk was enlarged), fall back to the last
    // sector, which is where it must be on an unmodified disk.
    let mut backup_lba = last_lba;
    if let Ok((h, _)) = &primary {
        if h.alternate_lba <= last_lba && h.alternate_lba > 1 {
            backup_lba = h.alternate_lba;
        }
    }
    let mut backup = read_gpt_copy(disk, size, ss, backup_lba);
    if backup.is_err() && backup_lba != last_lba {
        backup = read_gpt_copy(disk, size, ss, last_lba);
    }
    let mut warnings = Vec::new();
    let (hdr, arr, other) = match (primary, backup) {
        (Ok((h, a)), Ok((bh, ba))) => {
            if a != ba || h.first_usable != bh.first_usable || h.last_usable != bh.last_usable {
                warnings.push("primary and backup GPT are both valid but differ; using the primary".into());
            }
            (h, a, Some(bh))
        }
        (Ok((h, a)), Err(e)) => {
            warnings.push(format!("backup GPT (at the end of the disk) is damaged: {e}; using the primary"));
            (h, a, None)
        }
        (Err(e), Ok((h, a))) => {
            warnings.push(format!("primary GPT (sector 1) is damaged: {e}; using the backup"));
            (h, a, None)
        }
        (Err(primary), Err(backup)) => return Err(LayoutError::GptDamaged { primary, backup }),
    };
    let mut partitions = Vec::new();
    let es = hdr.entry_size as usize;
    for i in 0..hdr.num_entries as usize {
        let e = &arr[i * es..i * es + 128];
        let tguid = Guid(e[0..16].try_into().unwrap());
        if tguid.is_zero() {
            continue;
        }
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first || first < hdr.first_usable || last > hdr.last_usable {
            return Err(LayoutError::Invalid(format!(
                "GPT entry {} spans sectors {first}..={last}, outside the usable range {}..={}",
                i + 1,
                hdr.first_usable,
                hdr.last_usable
            )));
        }
        let name_u16: Vec<u16> = (0..36).map(|k| le16(e, 56 + 2 * k)).take_while(|&c| c != 0).collect();
        partitions.push(Partition {
            index: i as u32 + 1,
            start: first * ss,
            len: (last - first + 1) * ss,
            ptype: PartType::Gpt(tguid),
            name: String::from_utf16_lossy(&name_u16),
            guid: Some(Guid(e[16..32].try_into().unwrap())),
            attrs: le64(e, 48),
        });
    }
    // Where the backup array starts: from the backup header if we read it,
    // otherwise where a standard layout puts it (just below the last sector).
    let array_sectors = (hdr.num_entries as u64 * hdr.entry_size as u64).div_ceil(ss);
    let backup_array_start = match (&other, hdr.my_lba) {
        (Some(b), 1) => b.entries_lba * ss,
        (_, 1) => (hdr.alternate_lba.min(last_lba).saturating_sub(array_sectors)) * ss,
        _ => hdr.entries_lba * ss, // we are the backup
    };
    Ok((Gpt { disk_guid: hdr.disk_guid, first_usable: hdr.first_usable, partitions, backup_array_start }, warnings))
}

fn sort_and_check(layout: &mut DiskLayout) -> Result<(), LayoutError> {
    layout.partitions.sort_by_key(|p| (p.start, p.index));
    for w in layout.partitions.windows(2) {
        if w[0].start + w[0].len > w[1].start {
            return Err(LayoutError::Invalid(format!("partitions {} and {} overlap", w[0].index, w[1].index)));
        }
    }
    Ok(())
}

/// Complement of the partitions over the disk, minus the unallocated tail
/// `[tail_start, tail_end)` (see the module doc).
fn compute_keep(layout: &mut DiskLayout, tail_start: u64, tail_end: u64) {
    let mut keep = Vec::new();
    let mut pos = 0u64;
    for p in &layout.partitions {
        if p.start > pos {
            keep.push(Range::new(pos, p.start));
        }
        pos = pos.max(p.start + p.len);
    }
    if layout.size > pos {
        keep.push(Range::new(pos, layout.size));
    }
    if tail_start >= tail_end {
        layout.keep = keep;
        return;
    }
    let mut out = Vec::new();
    for r in keep {
        // r minus [tail_start, tail_end)
        let a = Range::new(r.start, r.end.min(tail_start));
        let b = Range::new(r.start.max(tail_end), r.end);
        for x in [a, b] {
            if !x.is_empty() {
                out.push(x);
            }
        }
    }
    layout.keep = out;
}

/// The sectors to write so that a GPT copied from a disk of `old_size` bytes
/// fits a larger disk of `new_size` bytes: the backup entry array and header
/// move to the new end, the primary header points at them and its last usable
/// sector grows, and a protective MBR covers the whole new disk. Partitions
/// are not touched; the new space is left unallocated.
///
/// `disk` must hold the copied primary GPT (sector 1 and its entry array),
/// which is read and checked here; the caller writes the returned
/// `(byte offset, bytes)` pairs. The old backup header sector is overwritten
/// with zeros so no stale GPT copy remains in the middle of the new disk.
pub fn gpt_resized(
    disk: &dyn ReadAt,
    old_size: u64,
    new_size: u64,
    sector_size: u32,
) -> Result<Vec<(u64, Vec<u8>)>, LayoutError> {
    let ss = sector_size as u64;
    if new_size < old_size || new_size % ss != 0 {
        return Err(LayoutError::Invalid(format!(
            "cannot move a GPT from a disk of {old_size} bytes to one of {new_size}"
        )));
    }
    let (hdr, arr) = read_gpt_copy(disk, old_size, ss, 1)
        .map_err(|e| LayoutError::Invalid(format!("primary GPT of the restored image unusable: {e}")))?;
    let mut sector = vec![0u8; ss as usize];
    disk.read_exact_at(&mut sector, ss)?;
    let hsize = le32(&sector, 12) as usize;
    let new_last = new_size / ss - 1;
    let array_sectors = (arr.len() as u64).div_ceil(ss);
    let backup_entries = new_last - array_sectors;
    let seal = |h: &mut Vec<u8>| {
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..hsize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    };
    let mut primary = sector.clone();
    primary[32..40].copy_from_slice(&new_last.to_le_bytes());
    primary[48..56].copy_from_slice(&(backup_entries - 1).to_le_bytes());
    seal(&mut primary);
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&new_last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
    seal(&mut backup);
    let mut writes = Vec::new();
    let mut mbr = vec![0u8; ss as usize];
    disk.read_exact_at(&mut mbr, 0)?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE {
        // Protective MBR: one 0xEE entry from sector 1 to the end (capped).
        let count = (new_size / ss - 1).min(u32::MAX as u64) as u32;
        mbr[446 + 12..446 + 16].copy_from_slice(&count.to_le_bytes());
        writes.push((0, mbr));
    }
    let old_backup = hdr.alternate_lba.min(old_size / ss - 1);
    if old_backup > 1 && old_backup != new_last {
        writes.push((old_backup * ss, vec![0u8; ss as usize]));
    }
    writes.push((ss, primary));
    let mut entries = arr;
    entries.resize((array_sectors * ss) as usize, 0);
    writes.push((backup_entries * ss, entries));
    writes.push((new_last * ss, backup));
    Ok(writes)
}
