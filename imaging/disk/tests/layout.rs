//! Partition tables made by sfdisk on image files, parsed and compared with
//! `sfdisk --json`; GPT damage handled from the backup copy.

mod common;
use common::*;
use lifeline_disk::layout::{read_layout, DiskLayout, LayoutError, PartType, TableKind};
use lifeline_disk::Range;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use lifeline_testdisk::sfdisk;

fn layout_of(img: &Path) -> Result<DiskLayout, LayoutError> {
    let f = File::open(img).unwrap();
    read_layout(&f, f.metadata().unwrap().len(), 512)
}

/// sfdisk's view: (index, start bytes, len bytes, type string, uuid).
fn sfdisk_json(img: &Path) -> Vec<(u32, u64, u64, String, Option<String>)> {
    let out = run("sfdisk", &["--json", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let t = &v["partitiontable"];
    assert_eq!(t["sectorsize"].as_u64().unwrap_or(512), 512);
    t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let digits: String =
                node.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
            (
                digits.parse().unwrap(),
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
                p["type"].as_str().unwrap().to_string(),
                p["uuid"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn assert_keep_disjoint(l: &DiskLayout) {
    let mut all: Vec<Range> = l.keep.clone();
    all.extend(l.partitions.iter().map(|p| p.range()));
    all.sort();
    for w in all.windows(2) {
        assert!(w[0].end <= w[1].start, "overlap {:?} {:?}", w[0], w[1]);
    }
}

#[test]
fn mbr_with_logical_partitions() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "mbr.img");
    File::create(&img).unwrap().set_len(64 * MIB).unwrap();
    // p1, p2 primary; p3 extended; p4 a primary *after* the extended
    // partition; p5, p6 logical inside it.
    sfdisk(&img, "label: dos\n,8M,83,*\n,4M,c\n,40M,5\n,10M,82\n,12M,83\n,8M,83\n");
    let l = layout_of(&img).unwrap();
    assert_eq!(l.table, TableKind::Mbr);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let mut want: Vec<_> = sfdisk_json(&img).into_iter().filter(|p| p.3 != "5").collect();
    want.sort_by_key(|p| p.1);
    assert_eq!(l.partitions.len(), want.len());
    for (p, w) in l.partitions.iter().zip(&want) {
        assert_eq!((p.index, p.start, p.len), (w.0, w.1, w.2), "{p:?} vs {w:?}");
        assert_eq!(p.ptype, PartType::Mbr(u8::from_str_radix(&w.3, 16).unwrap()));
    }
    assert_eq!(l.partitions[0].attrs, 0x80); // bootable flag
    assert!(l.partitions.iter().any(|p| p.index == 6));
    assert_eq!(l.partitions.iter().map(|p| p.index).collect::<Vec<_>>(), [1, 2, 5, 6, 4]);
    // Kept: the MBR + boot loader gap, the EBRs with their gaps; not the
    // unallocated tail after the last partition.
    assert_eq!(l.keep[0], Range::new(0, MIB));
    let ext = sfdisk_json(&img).into_iter().find(|p| p.3 == "5").unwrap();
    let last_end = l.partitions.iter().map(|p| p.start + p.len).max().unwrap();
    assert!(last_end < 64 * MIB);
    assert!(l.keep.iter().all(|r| r.end <= last_end));
    // The first EBR sits at the extended partition's start and is kept.
    assert!(l.keep.iter().any(|r| r.start <= ext.1 && ext.1 + 512 <= r.end));
    assert_keep_disjoint(&l);
}

fn make_gpt(img: &Path) {
    File::create(img).unwrap().set_len(64 * MIB).unwrap();
    sfdisk(img, "label: gpt\nsize=8M, type=U, name=esp\nsize=20M, type=L, name=root\nsize=6M, type=S\n");
}

#[test]
fn gpt_parsed_like_sfdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "gpt.img");
    make_gpt(&img);
    let l = layout_of(&img).unwrap();
    assert_eq!(l.table, TableKind::Gpt);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let want = sfdisk_json(&img);
    assert_eq!(l.partitions.len(), 3);
    for (p, w) in l.partitions.iter().zip(&want) {
        assert_eq!((p.index, p.start, p.len), (w.0, w.1, w.2));
        match p.ptype {
            PartType::Gpt(g) => assert_eq!(g.to_string(), w.3),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.guid.map(|g| g.to_string()), w.4);
    }
    assert_eq!(l.partitions[0].name, "esp");
    assert_eq!(l.partitions[1].name, "root");
    // Keep: protective MBR, primary header + array + gap up to 1 MiB, and the
    // backup array + header (33 sectors) at the end; not the ~29 MiB free tail.
    let size = 64 * MIB;
    assert_eq!(l.keep, vec![Range::new(0, MIB), Range::new(size - 33 * 512, size)]);
    assert_keep_disjoint(&l);
}

fn corrupt(img: &Path, off: u64) {
    let f = OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], off).unwrap();
}

#[test]
fn gpt_damaged_primary_header_uses_backup() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "gpt.img");
    make_gpt(&img);
    let good = layout_of(&img).unwrap();
    corrupt(&img, 512 + 40); // first usable LBA field of the primary header
    let l = layout_of(&img).unwrap();
    assert_eq!(l.partitions, good.partitions);
    assert_eq!(l.keep, good.keep);
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0].contains("primary GPT") && l.warnings[0].contains("header CRC"), "{:?}", l.warnings);
}

#[test]
fn gpt_damaged_primary_array_uses_backup() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "gpt.img");
    make_gpt(&img);
    let good = layout_of(&img).unwrap();
    corrupt(&img, 1024 + 128 + 60); // second entry's name
    let l = layout_of(&img).unwrap();
    assert_eq!(l.partitions, good.partitions);
    assert!(l.warnings[0].contains("primary GPT") && l.warnings[0].contains("entry array CRC"), "{:?}", l.warnings);
}

#[test]
fn gpt_damaged_backup_uses_primary() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "gpt.img");
    make_gpt(&img);
    let good = layout_of(&img).unwrap();
    corrupt(&img, 64 * MIB - 512 + 40);
    let l = layout_of(&img).unwrap();
    assert_eq!(l.partitions, good.partitions);
    assert_eq!(l.keep, good.keep);
    assert!(l.warnings[0].contains("backup GPT"), "{:?}", l.warnings);
}

#[test]
fn gpt_both_damaged_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "gpt.img");
    make_gpt(&img);
    corrupt(&img, 512 + 40);
    corrupt(&img, 64 * MIB - 512 + 40);
    match layout_of(&img) {
        Err(e @ LayoutError::GptDamaged { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("primary") && msg.contains("backup"), "{msg}");
        }
        other => panic!("expected GptDamaged, got {other:?}"),
    }
}

#[test]
fn no_table_is_one_whole_disk_partition() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "raw.img");
    File::create(&img).unwrap().set_len(4 * MIB).unwrap();
    let l = layout_of(&img).unwrap();
    assert_eq!(l.table, TableKind::None);
    assert_eq!(l.partitions.len(), 1);
    assert_eq!((l.partitions[0].start, l.partitions[0].len), (0, 4 * MIB));
    assert!(l.keep.is_empty());
}

#[test]
fn geometry_of_an_image_file() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "g.img");
    File::create(&img).unwrap().set_len(8 * MIB).unwrap();
    let f = File::open(&img).unwrap();
    assert_eq!(lifeline_disk::disk_geometry(&f).unwrap(), (8 * MIB, 512));
}

/// On a loop device with 4 KiB logical sectors (needs root and loop devices,
/// like the project's other real-kernel tests): geometry from the kernel, and
/// a GPT written by sfdisk with 4 KiB sectors parses like sfdisk reads it.
#[test]
fn gpt_on_a_4k_sector_loop_device() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "loop.img");
    File::create(&img).unwrap().set_len(64 * MIB).unwrap();
    let out = Command::new("losetup").args(["-f", "--show", "--sector-size", "4096", img.to_str().unwrap()]).output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
        other => panic!("cannot attach a 4 KiB-sector loop device (run as root with loop devices): {other:?}"),
    };
    // Detached when the test ends, even on panic.
    let _guard = lifeline_testdisk::Loop(dev.clone());
    let f = OpenOptions::new().read(true).write(true).open(&dev).unwrap();
    assert_eq!(lifeline_disk::disk_geometry(&f).unwrap(), (64 * MIB, 4096));
    sfdisk(Path::new(&dev), "label: gpt\nsize=8M, type=L\nsize=16M, type=S\n");
    let l = read_layout(&f, 64 * MIB, 4096).unwrap();
    assert_eq!(l.table, TableKind::Gpt);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let want = sfdisk_json_ss(Path::new(&dev), 4096);
    assert_eq!(l.partitions.len(), 2);
    for (p, w) in l.partitions.iter().zip(&want) {
        assert_eq!((p.start, p.len), (w.0, w.1));
    }
    // 128 entries of 128 bytes = 4 sectors of 4 KiB, plus the header sector.
    assert_eq!(*l.keep.last().unwrap(), Range::new(64 * MIB - 5 * 4096, 64 * MIB));
    // Read as 512-byte sectors there is no valid GPT: the protective MBR makes
    // that an error rather than a silent "no table".
    assert!(read_layout(&f, 64 * MIB, 512).is_err());
}

fn sfdisk_json_ss(dev: &Path, ss: u64) -> Vec<(u64, u64)> {
    let out = run("sfdisk", &["--json", dev.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap() * ss, p["size"].as_u64().unwrap() * ss))
        .collect()
}

/// A FAT filesystem written on the whole disk has a 0x55AA boot sector but no
/// partition table: it must come out as one whole-disk partition, and its
/// boot code must not be read as partition entries.
#[test]
fn superfloppy_fat_is_not_an_mbr() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fat.img");
    File::create(&img).unwrap().set_len(40 * MIB).unwrap();
    run("mkfs.vfat", &["-F", "32", "-s", "1", img.to_str().unwrap()]);
    let l = layout_of(&img).unwrap();
    assert_eq!(l.table, TableKind::None);
    assert_eq!((l.partitions[0].start, l.partitions[0].len), (0, 40 * MIB));
    let f = File::open(&img).unwrap();
    let det = lifeline_disk::fs::probe(&f, 40 * MIB).unwrap().unwrap();
    assert_eq!(det.variant, "fat32");
}
