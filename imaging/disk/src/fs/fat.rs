//! FAT12/16/32: used clusters from the first FAT.
//!
//! The reserved sectors (boot sector, FAT32 FSInfo and backup boot sector),
//! all FAT copies and the FAT12/16 root directory are always used; a data
//! cluster is used when its FAT entry is non-zero, except entries marking a bad
//! cluster (their content is worthless and reading them may fail). The FAT type
//! is decided by the cluster count, as the Microsoft specification says (not by
//! the label string, which is informational), except that a BPB in the FAT32
//! layout (16-bit FAT size zero) is FAT32 whatever its cluster count, as Linux
//! and dosfstools read it.
//!
//! Recognition requires a boot sector signature, a sane BPB and either a
//! "FAT" type string or a jump instruction, which rules out NTFS and exFAT (their
//! BPB fields are zero). A recognised but inconsistent BPB is an error.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::{le16, le32, ReadAt};

pub struct Fat;

reader_errors!("fat");

impl FsReader for Fat {
    fn name(&self) -> &'static str {
        "fat"
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        if len < 512 {
            return Ok(None);
        }
        let mut b = [0u8; 512];
        part.read_exact_at(&mut b, 0).map_err(io)?;
        let sig = b[510] == 0x55 && b[511] == 0xAA;
        let label16 = &b[54..57] == b"FAT";
        let label32 = &b[82..87] == b"FAT32";
        let jump = b[0] == 0xEB || b[0] == 0xE9;
        if &b[3..11] == b"NTFS    " || &b[3..11] == b"EXFAT   " {
            return Ok(None);
        }
        if !sig || !(jump || label16 || label32) {
            return Ok(None);
        }
        let bps = le16(&b, 11) as u64;
        let spc = b[13] as u64;
        let reserved = le16(&b, 14) as u64;
        let nfats = b[16] as u64;
        let root_entries = le16(&b, 17) as u64;
        let total = match le16(&b, 19) {
            0 => le32(&b, 32) as u64,
            t => t as u64,
        };
        let fat_size = match le16(&b, 22) {
            0 => le32(&b, 36) as u64,
            f => f as u64,
        };
        let plausible = matches!(bps, 512 | 1024 | 2048 | 4096)
            && spc.is_power_of_two()
            && reserved > 0
            && nfats > 0
            && total > 0
            && fat_size > 0;
        if !plausible {
            // A FAT type string with a broken BPB: ours, but damaged. Without the
            // string this is just not a FAT boot sector.
            return if label16 || label32 {
                Err(damaged(format!(
                    "boot sector fields: {bps} bytes/sector, {spc} sectors/cluster, {reserved} reserved, {nfats} FATs, {total} sectors, FAT of {fat_size} sectors"
                )))
            } else {
                Ok(None)
            };
        }
        if total * bps > len {
            return Err(damaged(format!(
                "filesystem of {total} sectors of {bps} bytes is larger than its partition ({len} bytes)"
            )));
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_start = reserved + nfats * fat_size + root_sectors;
        if data_start >= total {
            return Err(damaged("metadata area extends past the end of the filesystem"));
        }
        let clusters = (total - data_start) / spc;
        // A zero 16-bit FAT size means the FAT32 layout, whatever the cluster
        // count: `mkfs.vfat -F 32` makes small FAT32 volumes (ESPs) with fewer
        // than 65525 clusters, and Linux and dosfstools read them as FAT32.
        // Reading their 32-bit FAT as 16-bit entries would give a wrong map.
        let (bits, variant) = if le16(&b, 22) == 0 && root_entries == 0 {
            (32, "fat32")
        } else if clusters < 4085 {
            (12, "fat12")
        } else if clusters < 65525 {
            (16, "fat16")
        } else {
            (32, "fat32")
        };
        let entries = clusters + 2;
        if entries * bits / 8 > fat_size * bps {
            return Err(damaged(format!("{clusters} clusters do not fit a FAT of {fat_size} sectors")));
        }
        let mut m = UsedMapBuilder::new(bps as u32, total);
        m.add(0, data_start);
        let bad = match bits {
            12 => 0xFF7,
            16 => 0xFFF7,
            _ => 0x0FFF_FFF7,
        };
        let fat_off = reserved * bps;
        let mut mark = |c: u64, v: u32| {
            if v != 0 && v != bad {
                m.add(data_start + (c - 2) * spc, spc);
            }
        };
        if bits == 12 {
            let mut fat = vec![0u8; (entries * 3).div_ceil(2) as usize + 1];
            let n = fat.len() - 1;
            part.read_exact_at(&mut fat[..n], fat_off).map_err(io)?;
            for c in 2..entries {
                let o = (c + c / 2) as usize;
                let v = le16(&fat, o) as u32;
                mark(c, if c & 1 == 1 { v >> 4 } else { v & 0xFFF });
            }
        } else {
            // Stream the FAT in 1 MiB pieces: a large FAT32 has a FAT of
            // hundreds of MiB and memory is bounded in the boot OS.
            let esize = bits / 8;
            let per_chunk = (1u64 << 20) / esize;
            let mut buf = vec![0u8; (per_chunk * esize) as usize];
            let mut first = 0u64;
            while first < entries {
                let n = per_chunk.min(entries - first);
                let chunk = &mut buf[..(n * esize) as usize];
                part.read_exact_at(chunk, fat_off + first * esize).map_err(io)?;
                for i in 0..n {
                    let c = first + i;
                    if c < 2 {
                        continue;
                    }
                    let v = if bits == 16 {
                        le16(chunk, (i * 2) as usize) as u32
                    } else {
                        le32(chunk, (i * 4) as usize) & 0x0FFF_FFFF
                    };
                    mark(c, v);
                }
                first += n;
            }
        }
        Ok(Some(m.finish(variant)))
    }
}
