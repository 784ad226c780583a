//! End to end on a whole disk image: GPT with a FAT32 "EFI" partition, an ext4
//! root, swap and a partition of unknown content. Copy only `keep` plus each
//! partition's used blocks (unknown: the whole partition) into a zeroed disk of
//! the same size, as a restore would; the copy must have the same partition
//! table, clean filesystems and identical files.

mod common;
use common::*;
use lifeline_disk::{fs, layout, Slice};
use lifeline_testdisk::DiskSpec;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

#[test]
fn gpt_disk_copy_of_used_blocks_is_a_working_disk() {
    let t = tempfile::tempdir().unwrap();
    let built = DiskSpec::pc(96).build(t.path(), "disk.img");
    let f = File::open(&built.path).unwrap();
    let lay = layout::read_layout(&f, 96 * MIB, 512).unwrap();
    assert_eq!(lay.partitions.len(), 4);

    let copy = tmp_path(&t, "copy.img");
    let c = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&copy).unwrap();
    c.set_len(96 * MIB).unwrap();
    let copy_range = |start: u64, end: u64| {
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact_at(&mut buf, start).unwrap();
        c.write_all_at(&buf, start).unwrap();
    };
    let mut stored = 0u64;
    for r in &lay.keep {
        copy_range(r.start, r.end);
        stored += r.len();
    }
    let mut kinds = Vec::new();
    for p in &lay.partitions {
        let part = Slice::new(&f, p.start, p.len);
        match fs::probe(&part, p.len).unwrap() {
            Some(d) => {
                kinds.push(d.variant.clone());
                for r in d.map.byte_ranges() {
                    copy_range(p.start + r.start, p.start + r.end);
                    stored += r.len();
                }
            }
            None => {
                kinds.push("unknown".into());
                copy_range(p.start, p.start + p.len);
                stored += p.len;
            }
        }
    }
    assert_eq!(kinds, ["fat32", "ext4", "swap", "unknown"]);
    assert!(stored < 40 * MIB, "stored {stored} of {}", 96 * MIB);
    drop(c);
    built.check_copy(&copy);
    eprintln!("stored {} KiB of a {} KiB disk", stored >> 10, (96 * MIB) >> 10);
}
