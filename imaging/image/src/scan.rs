//! Look at a source disk: its layout and, per partition, which bytes matter.

use lifeline_disk::fs::{self, UsedMap};
use lifeline_disk::layout::{self, DiskLayout, PartType, TableKind};
use lifeline_disk::{ReadAt, Slice};
use tracing::info;

use crate::manifest::{Content, PartRecord};

/// What [`scan`] found.
pub struct Scan {
    pub layout: DiskLayout,
    pub partitions: Vec<PartRecord>,
    pub maps: Vec<UsedMap>,
    pub warnings: Vec<String>,
}

impl Scan {
    /// The bytes a backup of this disk reads.
    pub fn extents(&self) -> crate::extents::Extents {
        let keep: Vec<(u64, u64)> = self.layout.keep.iter().map(|r| (r.start, r.end)).collect();
        crate::manifest::image_extents(&keep, &self.partitions, &self.maps)
    }
}

/// Read the partition table and ask the filesystem readers about each
/// partition. Never fails because of a partition's content: a partition no
/// reader can vouch for is imaged block by block, and the reason is recorded.
pub fn scan(disk: &dyn ReadAt, size: u64, sector_size: u32) -> Result<Scan, layout::LayoutError> {
    let layout = layout::read_layout(disk, size, sector_size)?;
    let mut warnings = layout.warnings.clone();
    let mut partitions = Vec::new();
    let mut maps = Vec::new();
    for p in &layout.partitions {
        let part = Slice::new(disk, p.start, p.len);
        let content = match fs::probe(&part, p.len) {
            Ok(Some(d)) => {
                let c = Content::UsedBlocks {
                    fs: d.fs.to_string(),
                    variant: d.variant.clone(),
                    map: maps.len() as u32,
                    block_size: d.map.block_size,
                    used_blocks: d.map.used_blocks(),
                    total_blocks: d.map.total_blocks,
                };
                info!(
                    partition = p.index,
                    fs = %d.variant,
                    used = d.map.used_bytes(),
                    size = p.len,
                    "used blocks from the filesystem's own metadata"
                );
                maps.push(d.map);
                c
            }
            Ok(None) => {
                let reason = match recognise(&part) {
                    Some(what) => format!(
                        "{what}: its contents cannot be read without its key or a reader, \
                         so every block is read and all-zero blocks are dropped"
                    ),
                    None => "no filesystem reader recognises this content, so every block \
                             is read and all-zero blocks are dropped"
                        .to_string(),
                };
                warnings.push(format!("partition {}: {reason}", p.index));
                Content::EveryBlock { reason }
            }
            Err(e) => {
                let reason = format!(
                    "{e}; the used-block map cannot be trusted, so every block is read \
                     and all-zero blocks are dropped"
                );
                warnings.push(format!("partition {}: {reason}", p.index));
                Content::EveryBlock { reason }
            }
        };
        partitions.push(PartRecord {
            index: p.index,
            start: p.start,
            len: p.len,
            ptype: ptype_string(&p.ptype),
            name: p.name.clone(),
            guid: p.guid.map(|g| g.to_string()),
            attrs: p.attrs,
            content,
        });
    }
    Ok(Scan { layout, partitions, maps, warnings })
}

pub fn table_string(t: TableKind) -> &'static str {
    match t {
        TableKind::None => "none",
        TableKind::Mbr => "mbr",
        TableKind::Gpt => "gpt",
    }
}

fn ptype_string(t: &PartType) -> String {
    match t {
        PartType::None => "none".into(),
        PartType::Mbr(id) => format!("mbr:0x{id:02x}"),
        PartType::Gpt(g) => format!("gpt:{g}"),
    }
}

/// A readable name for a recorded partition type, for `info`.
pub fn ptype_name(t: &str) -> &'static str {
    match t {
        "gpt:C12A7328-F81F-11D2-BA4B-00A0C93EC93B" | "mbr:0xef" => "EFI system",
        "gpt:0FC63DAF-8483-4772-8E79-3D69D8477DE4" | "mbr:0x83" => "Linux filesystem",
        "gpt:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "gpt:933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux /home",
        "gpt:BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux /boot (XBOOTLDR)",
        "gpt:0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" | "mbr:0x82" => "Linux swap",
        "gpt:21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "gpt:E6D6D379-F507-44C2-A23C-238F2A3DF928" | "mbr:0x8e" => "Linux LVM",
        "gpt:A19D880F-05FC-4D3B-A006-743F0F84911E" | "mbr:0xfd" => "Linux RAID",
        "gpt:CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "gpt:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" | "mbr:0x07" => "Microsoft basic data",
        "gpt:E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "gpt:DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" | "mbr:0x27" => "Windows recovery",
        "mbr:0x0b" | "mbr:0x0c" => "FAT32",
        "mbr:0x04" | "mbr:0x06" | "mbr:0x0e" => "FAT16",
        "mbr:0x01" => "FAT12",
        "none" => "whole disk",
        _ => "",
    }
}

/// Content we know but cannot map, named in the reason.
fn recognise(part: &dyn ReadAt) -> Option<&'static str> {
    let mut b = [0u8; 8];
    part.read_exact_at(&mut b, 0).ok()?;
    if &b[..6] == b"LUKS\xba\xbe" {
        return Some("LUKS encrypted volume");
    }
    let mut lvm = [0u8; 8];
    if part.read_exact_at(&mut lvm, 512 + 24).is_ok() && &lvm == b"LVM2 001" {
        return Some("LVM physical volume");
    }
    None
}
