//! NTFS and exFAT readers against real filesystems: mkfs on a garbage-filled
//! image, files put in through the FUSE drivers (on a loop device, so that
//! `umount` waits for the driver to flush: a `fuseblk` mount), one file
//! deleted so freed clusters hold real data, then only the mapped blocks are
//! copied into a zeroed image, which must pass the filesystem's checker and
//! give back every remaining file unchanged.

mod common;
use common::*;
use lifeline_disk::fs::{Exfat, FsError, FsReader, Ntfs, UsedMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use lifeline_testdisk::{Loop, Mount};

/// A FUSE mount (`ntfs-3g`, `mount.exfat-fuse`) of `dev` at `dir`.
fn fuse(prog: &str, dev: &str, dir: &Path, ro: bool) -> Mount {
    let opts: &[&str] = if ro { &["-o", "ro"] } else { &[] };
    Mount::new(prog, opts, dev, dir)
}

fn probe(r: &dyn FsReader, img: &Path) -> Result<Option<UsedMap>, FsError> {
    let f = File::open(img).unwrap();
    let len = f.metadata().unwrap().len();
    r.probe(&f, len)
}

/// Copy the tree into a mounted filesystem, then delete a.bin.
fn fill(prog: &str, img: &Path, tree: &Path, mnt: &Path) {
    let lo = Loop::new(img, false);
    let _m = fuse(prog, &lo.0, mnt, false);
    run("cp", &["-r", &format!("{}/.", tree.display()), mnt.to_str().unwrap()]);
    std::fs::remove_file(mnt.join("a.bin")).unwrap();
}

fn ntfs_case(opts: &[&str], size: u64) {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let files = make_tree(&tree);
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, size);
    let mut args = vec!["-F", "-f", "-q"];
    args.extend_from_slice(opts);
    args.push(img.to_str().unwrap());
    run("mkfs.ntfs", &args);
    fill("ntfs-3g", &img, &tree, &t.path().join("mnt"));

    let map = probe(&Ntfs, &img).unwrap().expect("ntfs recognised");
    assert_eq!(map.variant, "ntfs 3.1");
    assert!(map.total_bytes() <= size);
    let used = map.used_bytes();
    assert!(used < size / 2, "ntfs {opts:?}: used {used} of {size}");
    assert_eq!(UsedMap::from_bytes(&map.to_bytes()).unwrap(), map);

    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    let out = run("ntfsfix", &["-n", copy.to_str().unwrap()]);
    assert!(out.contains("processed successfully"), "{out}");
    for (name, data) in &files {
        if name == "a.bin" {
            continue;
        }
        let got = std::process::Command::new("ntfscat").args([copy.to_str().unwrap(), name]).output().unwrap();
        assert!(got.status.success(), "ntfscat {name}: {:?}", got);
        assert!(got.stdout == *data, "ntfs {opts:?}: {name} differs");
    }
    // And through the driver, read-only: directories resolve, a.bin is gone.
    let lo = Loop::new(&copy, true);
    let mnt = t.path().join("ro");
    let _m = fuse("ntfs-3g", &lo.0, &mnt, true);
    assert!(!mnt.join("a.bin").exists());
    for (name, data) in &files {
        if name != "a.bin" {
            assert!(std::fs::read(mnt.join(name)).unwrap() == *data, "{name}");
        }
    }
    eprintln!(
        "ntfs {opts:?}: used {} KiB of {} KiB, {} blocks of {} B, {} runs",
        used >> 10,
        size >> 10,
        map.total_blocks,
        map.block_size,
        map.runs().len()
    );
}

#[test]
fn ntfs_4k_clusters() {
    ntfs_case(&["-s", "512", "-c", "4096"], 32 * MIB);
}

#[test]
fn ntfs_64k_clusters() {
    ntfs_case(&["-s", "512", "-c", "65536"], 64 * MIB);
}

/// 512-byte clusters: a 1 KiB MFT record spans two clusters.
#[test]
fn ntfs_512_clusters() {
    ntfs_case(&["-s", "512", "-c", "512"], 32 * MIB);
}

#[test]
fn ntfs_4k_sectors() {
    ntfs_case(&["-s", "4096", "-c", "4096"], 32 * MIB);
}

fn exfat_case(opts: &[&str], size: u64) {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let files = make_tree(&tree);
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, size);
    let mut args = opts.to_vec();
    args.push(img.to_str().unwrap());
    run("mkfs.exfat", &args);
    fill("mount.exfat-fuse", &img, &tree, &t.path().join("mnt"));

    let map = probe(&Exfat, &img).unwrap().expect("exfat recognised");
    assert_eq!(map.variant, "exfat 1.00");
    let used = map.used_bytes();
    assert!(used < size / 2, "exfat {opts:?}: used {used} of {size}");
    assert_eq!(UsedMap::from_bytes(&map.to_bytes()).unwrap(), map);

    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    run("fsck.exfat", &["-n", copy.to_str().unwrap()]);
    let lo = Loop::new(&copy, true);
    let mnt = t.path().join("ro");
    let _m = fuse("mount.exfat-fuse", &lo.0, &mnt, true);
    assert!(!mnt.join("a.bin").exists());
    for (name, data) in &files {
        if name != "a.bin" {
            assert!(std::fs::read(mnt.join(name)).unwrap() == *data, "exfat {opts:?}: {name} differs");
        }
    }
    eprintln!(
        "exfat {opts:?}: used {} KiB of {} KiB, {} blocks of {} B, {} runs",
        used >> 10,
        size >> 10,
        map.total_blocks,
        map.block_size,
        map.runs().len()
    );
}

#[test]
fn exfat_default() {
    exfat_case(&[], 32 * MIB);
}

#[test]
fn exfat_32k_clusters() {
    exfat_case(&["-c", "32768"], 64 * MIB);
}

#[test]
fn exfat_512_clusters() {
    exfat_case(&["-c", "512"], 16 * MIB);
}

fn rw(img: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(img).unwrap()
}

/// Offset of attribute `ty` in a (fixed-up on disk: only bytes away from the
/// sector ends are touched) MFT record.
fn find_attr(rec: &[u8], ty: u32) -> usize {
    let mut p = u16::from_le_bytes([rec[0x14], rec[0x15]]) as usize;
    loop {
        let t = u32::from_le_bytes(rec[p..p + 4].try_into().unwrap());
        assert_ne!(t, 0xFFFF_FFFF, "attribute {ty:#x} not found");
        if t == ty {
            return p;
        }
        p += u32::from_le_bytes(rec[p + 4..p + 8].try_into().unwrap()) as usize;
    }
}

#[test]
fn ntfs_damage_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, 16 * MIB);
    run("mkfs.ntfs", &["-F", "-f", "-q", img.to_str().unwrap()]);
    assert!(probe(&Ntfs, &img).unwrap().is_some());
    let f = rw(&img);
    let mut bs = [0u8; 512];
    f.read_exact_at(&mut bs, 0).unwrap();
    let cluster = u16::from_le_bytes([bs[11], bs[12]]) as u64 * bs[13] as u64;
    let mft = u64::from_le_bytes(bs[0x30..0x38].try_into().unwrap()) * cluster;
    let rec_size = 1u64 << -(bs[0x40] as i8);
    assert_eq!(rec_size, 1024);

    // A torn $Bitmap record: the end of its first sector no longer carries the
    // update sequence number.
    let at = mft + 6 * rec_size + 510;
    let mut x = [0u8; 1];
    f.read_exact_at(&mut x, at).unwrap();
    f.write_all_at(&[x[0] ^ 0x5A], at).unwrap();
    let e = probe(&Ntfs, &img).unwrap_err();
    assert!(matches!(e, FsError::Damaged { fs: "ntfs", .. }), "{e}");
    assert!(e.to_string().contains("MFT record 6 ($Bitmap)"), "{e}");
    assert!(e.to_string().contains("fixup"), "{e}");
    f.write_all_at(&x, at).unwrap();
    assert!(probe(&Ntfs, &img).unwrap().is_some());

    // The dirty flag in $Volume's $VOLUME_INFORMATION.
    let mut rec = vec![0u8; rec_size as usize];
    f.read_exact_at(&mut rec, mft + 3 * rec_size).unwrap();
    let a = find_attr(&rec, 0x70);
    let v = a + u16::from_le_bytes([rec[a + 0x14], rec[a + 0x15]]) as usize;
    let at = mft + 3 * rec_size + v as u64 + 10;
    f.write_all_at(&[rec[v + 10] | 1], at).unwrap();
    let e = probe(&Ntfs, &img).unwrap_err();
    assert!(matches!(e, FsError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("dirty"), "{e}");
    // An unknown version.
    f.write_all_at(&[rec[v + 10]], at).unwrap();
    f.write_all_at(&[4], at - 2).unwrap();
    let e = probe(&Ntfs, &img).unwrap_err();
    assert!(e.to_string().contains("NTFS version 4.1"), "{e}");
    f.write_all_at(&[3], at - 2).unwrap();
    assert!(probe(&Ntfs, &img).unwrap().is_some());

    // The volume claiming more sectors than the partition has.
    f.write_all_at(&u64::MAX.to_le_bytes(), 0x28).unwrap();
    let e = probe(&Ntfs, &img).unwrap_err();
    assert!(e.to_string().contains("larger than its partition"), "{e}");
}

#[test]
fn exfat_damage_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, 16 * MIB);
    run("mkfs.exfat", &[img.to_str().unwrap()]);
    assert!(probe(&Exfat, &img).unwrap().is_some());
    let f = rw(&img);
    // One byte of boot code: the boot checksum no longer matches.
    let mut x = [0u8; 1];
    f.read_exact_at(&mut x, 300).unwrap();
    f.write_all_at(&[x[0] ^ 1], 300).unwrap();
    let e = probe(&Exfat, &img).unwrap_err();
    assert!(matches!(e, FsError::Damaged { fs: "exfat", .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    f.write_all_at(&x, 300).unwrap();
    // VolumeDirty (VolumeFlags is outside the checksum).
    f.write_all_at(&[0x02], 106).unwrap();
    let e = probe(&Exfat, &img).unwrap_err();
    assert!(e.to_string().contains("dirty"), "{e}");
    f.write_all_at(&[0x00], 106).unwrap();
    assert!(probe(&Exfat, &img).unwrap().is_some());
}

/// Other filesystems, and each other's, are "not mine".
#[test]
fn foreign_is_none() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    let i = img.to_str().unwrap();
    for (mkfs, args) in [
        ("mkfs.ext4", vec!["-F", "-q", i]),
        ("mkfs.vfat", vec!["-F", "32", i]),
        ("mkfs.exfat", vec![i]),
        ("mkfs.ntfs", vec!["-F", "-f", "-q", i]),
    ] {
        garbage_image(&img, 16 * MIB);
        run(mkfs, &args);
        if mkfs != "mkfs.ntfs" {
            assert!(probe(&Ntfs, &img).unwrap().is_none(), "{mkfs}");
        }
        if mkfs != "mkfs.exfat" {
            assert!(probe(&Exfat, &img).unwrap().is_none(), "{mkfs}");
        }
    }
    // The FAT reader also leaves them alone.
    assert!(lifeline_disk::fs::Fat.probe(&File::open(&img).unwrap(), 16 * MIB).unwrap().is_none());
}

/// Hostile metadata must give an error or a map, never a panic: flip random
/// bytes in the structures the readers parse (boot sectors, the first MFT
/// records, the exFAT FAT and root directory) of real images.
#[test]
fn corrupted_metadata_never_panics() {
    use rand::Rng;
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    let i = img.to_str().unwrap();
    let mut rng = rand::rng();
    for (mkfs, args) in [("mkfs.ntfs", vec!["-F", "-f", "-q", i]), ("mkfs.exfat", vec![i])] {
        garbage_image(&img, 8 * MIB);
        run(mkfs, &args);
        let orig = std::fs::read(&img).unwrap();
        // Where the metadata is: NTFS's $MFT start, exFAT's first 2 MiB
        // (boot regions, FAT and, for small volumes, the first clusters).
        let (start, span) = if mkfs == "mkfs.ntfs" {
            let c = u16::from_le_bytes([orig[11], orig[12]]) as usize * orig[13] as usize;
            let mft = u64::from_le_bytes(orig[0x30..0x38].try_into().unwrap()) as usize * c;
            (mft, 8 * 1024)
        } else {
            let heap = u32::from_le_bytes(orig[88..92].try_into().unwrap()) as usize * 512;
            (heap, 16 * 4096)
        };
        for _ in 0..3000 {
            let mut d = orig.clone();
            for _ in 0..rng.random_range(1..8) {
                let o = if rng.random_bool(0.3) { rng.random_range(0..512) } else { start + rng.random_range(0..span) };
                d[o] = rng.random();
            }
            let len = d.len() as u64;
            let _ = Ntfs.probe(&d, len);
            let _ = Exfat.probe(&d, len);
        }
    }
}
