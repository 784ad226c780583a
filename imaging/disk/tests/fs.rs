//! Filesystem readers against real filesystems made by mkfs on garbage-filled
//! image files. The decisive check: copy only the used blocks into a zeroed
//! image; fsck must pass and every file must read back identical.

mod common;
use common::*;
use lifeline_disk::fs::{self, FsError};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn probe_file(img: &Path) -> Result<Option<fs::Detected>, FsError> {
    let f = File::open(img).unwrap();
    let len = f.metadata().unwrap().len();
    fs::probe(&f, len)
}

/// mkfs.`kind` with `opts` on a garbage image populated from a tree, then the
/// used-blocks-only copy must be fsck-clean with identical files.
fn ext_case(mkfs: &str, opts: &[&str], size: u64, expect_variant: &str) {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let files = make_tree(&tree);
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, size);
    let mut args = vec!["-F", "-q", "-E", "nodiscard", "-d", tree.to_str().unwrap()];
    args.extend_from_slice(opts);
    args.push(img.to_str().unwrap());
    run(mkfs, &args);
    // Delete a file so its old blocks hold real, now-free data.
    run("debugfs", &["-w", "-R", "rm /a.bin", img.to_str().unwrap()]);
    let det = probe_file(&img).unwrap().expect("ext recognised");
    assert_eq!(det.fs, "ext");
    assert_eq!(det.variant, expect_variant);
    let map = det.map;
    let used = map.used_bytes();
    assert!(used < size / 2, "{mkfs} {opts:?}: used {used} of {size}");
    // Serialization round trip on a real map.
    assert_eq!(fs::UsedMap::from_bytes(&map.to_bytes()).unwrap(), map);

    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    run("e2fsck", &["-fn", copy.to_str().unwrap()]);
    for (name, data) in &files {
        if name == "a.bin" {
            continue;
        }
        let out = t.path().join("out");
        let _ = std::fs::remove_file(&out);
        run("debugfs", &["-R", &format!("dump /{name} {}", out.display()), copy.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == *data, "{mkfs} {opts:?}: {name} differs");
    }
    eprintln!("{mkfs} {opts:?}: used {} KiB of {} KiB, map {} bytes", used >> 10, size >> 10, map.to_bytes().len());
}

#[test]
fn ext2() {
    ext_case("mkfs.ext2", &[], 24 * MIB, "ext2");
}

#[test]
fn ext3() {
    ext_case("mkfs.ext3", &[], 24 * MIB, "ext3");
}

#[test]
fn ext4_default() {
    ext_case("mkfs.ext4", &[], 32 * MIB, "ext4");
}

#[test]
fn ext4_1k_blocks_no_flex_bg() {
    ext_case("mkfs.ext4", &["-b", "1024", "-O", "^flex_bg"], 24 * MIB, "ext4");
}

#[test]
fn ext4_64bit_small_groups() {
    // -g 2048 makes many groups, most of them BLOCK_UNINIT, and with 64bit the
    // descriptors are 64 bytes.
    ext_case("mkfs.ext4", &["-O", "64bit", "-g", "2048", "-N", "512"], 40 * MIB, "ext4");
}

#[test]
fn ext4_bigalloc_4k_blocks() {
    ext_case("mkfs.ext4", &["-b", "4096", "-O", "bigalloc", "-C", "65536"], 64 * MIB, "ext4");
}

#[test]
fn ext4_bigalloc() {
    ext_case("mkfs.ext4", &["-O", "bigalloc", "-C", "16384"], 48 * MIB, "ext4");
}

/// ext4's superblock checksum (CRC32C, reflected, seed !0, no final xor), so a
/// test can edit a field and still present a "valid" superblock.
fn fix_sb_csum(sb: &mut [u8; 1024]) {
    let mut crc = !0u32;
    for &b in &sb[..0x3FC] {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    sb[0x3FC..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn ext_unknown_incompat_and_damage_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, 16 * MIB);
    run("mkfs.ext4", &["-F", "-q", "-E", "nodiscard", img.to_str().unwrap()]);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let mut sb = [0u8; 1024];
    f.read_exact_at(&mut sb, 1024).unwrap();
    let check = |edit: &dyn Fn(&mut [u8; 1024]), fix: bool, want: &str| {
        let mut bad = sb;
        edit(&mut bad);
        if fix {
            fix_sb_csum(&mut bad);
        }
        f.write_all_at(&bad, 1024).unwrap();
        let e = probe_file(&img).unwrap_err();
        assert!(e.to_string().contains(want), "want {want:?}, got {e}");
        f.write_all_at(&sb, 1024).unwrap();
        e
    };
    // INCOMPAT bit 0x80000000: unknown, named in the error.
    let e = check(&|b| b[0x63] |= 0x80, true, "0x80000000");
    assert!(matches!(e, FsError::Unsupported { .. }));
    check(&|b| b[0x60] |= 0x04, true, "recovery"); // RECOVER
                                                   // Block count larger than the partition.
    let e = check(&|b| b[0x4..0x8].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()), true, "larger than its partition");
    assert!(matches!(e, FsError::Damaged { .. }));
    // Any edit without fixing the checksum (metadata_csum).
    check(&|b| b[0x4] ^= 1, false, "superblock checksum mismatch");

    // A flipped bit in group 0's block bitmap is caught by its checksum.
    assert!(probe_file(&img).unwrap().is_some());
    let bs = 1024u64 << u32::from_le_bytes(sb[0x18..0x1C].try_into().unwrap());
    let gdt = (1024 / bs + 1) * bs;
    let mut d = [0u8; 4];
    f.read_exact_at(&mut d, gdt).unwrap();
    let bitmap = u32::from_le_bytes(d) as u64 * bs;
    let mut x = [0u8; 1];
    f.read_exact_at(&mut x, bitmap + 100).unwrap();
    f.write_all_at(&[x[0] ^ 0x10], bitmap + 100).unwrap();
    let e = probe_file(&img).unwrap_err();
    assert!(e.to_string().contains("group 0: block bitmap checksum mismatch"), "{e}");
}

fn fat_case(fat_bits: &str, size: u64, extra: &[&str], expect: &str) {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let files = make_tree(&tree);
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, size);
    let mut args = vec!["-F", fat_bits];
    args.extend_from_slice(extra);
    args.push(img.to_str().unwrap());
    run("mkfs.vfat", &args);
    let i = img.to_str().unwrap();
    for e in std::fs::read_dir(&tree).unwrap() {
        let p = e.unwrap().path();
        run("mcopy", &["-s", "-i", i, p.to_str().unwrap(), "::/"]);
    }
    run("mdel", &["-i", i, "::/a.bin"]);
    let det = probe_file(&img).unwrap().expect("fat recognised");
    assert_eq!(det.fs, "fat");
    assert_eq!(det.variant, expect);
    let map = det.map;
    let used = map.used_bytes();
    assert!(used < size / 2, "{expect}: used {used} of {size}");
    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    run("fsck.vfat", &["-n", copy.to_str().unwrap()]);
    for (name, data) in &files {
        if name == "a.bin" {
            continue;
        }
        let out = t.path().join("out");
        let _ = std::fs::remove_file(&out);
        run("mcopy", &["-n", "-i", copy.to_str().unwrap(), &format!("::/{name}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == *data, "{expect}: {name} differs");
    }
    eprintln!("{expect}: used {} KiB of {} KiB", used >> 10, size >> 10);
}

#[test]
fn fat12() {
    fat_case("12", 8 * MIB, &[], "fat12");
}

#[test]
fn fat16() {
    fat_case("16", 32 * MIB, &[], "fat16");
}

#[test]
fn fat32() {
    fat_case("32", 64 * MIB, &["-s", "1"], "fat32");
}

/// `mkfs.vfat -F 32` on a small partition (an ESP) makes FAT32 with fewer
/// clusters than the specification's FAT32 minimum; it is still FAT32 (32-bit
/// FAT entries, root directory in a cluster chain).
/// (mtools reads such a volume as FAT16, so no files are copied in: the test
/// checks the root directory's cluster is in the map and fsck passes.)
#[test]
fn fat32_with_few_clusters() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, 32 * MIB);
    run("mkfs.vfat", &["-F", "32", "-s", "8", img.to_str().unwrap()]);
    let det = probe_file(&img).unwrap().expect("fat recognised");
    assert_eq!(det.variant, "fat32");
    let b = std::fs::read(&img).unwrap();
    let (reserved, fat_size, root_cluster) = (
        u16::from_le_bytes([b[14], b[15]]) as u64,
        u32::from_le_bytes(b[36..40].try_into().unwrap()) as u64,
        u32::from_le_bytes(b[44..48].try_into().unwrap()) as u64,
    );
    let root_sector = reserved + 2 * fat_size + (root_cluster - 2) * 8;
    assert!(det.map.is_used(root_sector), "root directory cluster missing from the map");
    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &det.map);
    run("fsck.vfat", &["-n", copy.to_str().unwrap()]);
}

#[test]
fn swap_header_only() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "swap.img");
    garbage_image(&img, 16 * MIB);
    run("mkswap", &["-L", "lifeswap", img.to_str().unwrap()]);
    let det = probe_file(&img).unwrap().expect("swap recognised");
    assert_eq!(det.fs, "swap");
    assert_eq!(det.map.used_bytes(), 4096);
    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &det.map);
    // The copy is still a swap area with the same label.
    let out = run("swaplabel", &[copy.to_str().unwrap()]);
    assert!(out.contains("lifeswap"), "{out}");
}

#[test]
fn unknown_content_is_none() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "rand.img");
    garbage_image(&img, 4 * MIB);
    // Make sure random data does not accidentally look like a boot sector.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0u8; 2], 510).unwrap();
    assert!(probe_file(&img).unwrap().is_none());
}

#[test]
fn ext4_meta_bg() {
    // 1 KiB blocks and small groups: 40 groups, 64-byte descriptors, 16 per
    // block, so three descriptor blocks spread over the meta groups.
    ext_case("mkfs.ext4", &["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"], 40 * MIB, "ext4");
}

#[test]
fn fat_damaged_boot_sector_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, 16 * MIB);
    run("mkfs.vfat", &["-F", "16", img.to_str().unwrap()]);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0u8], 13).unwrap(); // sectors per cluster = 0
    let e = probe_file(&img).unwrap_err();
    assert!(matches!(e, FsError::Damaged { fs: "fat", .. }), "{e}");
}
