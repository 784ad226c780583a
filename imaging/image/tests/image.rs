//! Whole disks made by the real tools (sfdisk, mkfs, mtools) on garbage-filled
//! image files, backed up, restored and checked: same partition table,
//! `e2fsck -fn` / `fsck.vfat -n` clean, identical files, unknown partitions
//! byte-identical. Refusals must leave the target untouched.

use std::path::Path;
use std::process::Command;

use lifeline_image::manifest::Content as Stored;
use lifeline_image::{backup, restore, BackupOptions, Rest, RestoreOptions};
use lifeline_repo::{KdfParams, Repo};
use lifeline_testdisk::{garbage_image, run, Content, DiskSpec, PartSpec, MIB};

fn repo(dir: &Path) -> Repo {
    Repo::init_with_kdf(dir.join("repo"), b"pw", KdfParams::insecure_for_tests()).unwrap()
}

fn opts(name: &str) -> BackupOptions {
    BackupOptions { name: Some(name.into()), machine: Some("test-pc".into()), threads: Some(2), ..Default::default() }
}

fn hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

#[test]
fn gpt_disk_restores_onto_garbage_and_onto_a_new_file() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    let m = backup(&r, &disk.path, &opts("pc")).unwrap();
    let h = &m.header;
    assert_eq!(h.table, "gpt");
    let kinds: Vec<String> = h
        .partitions
        .iter()
        .map(|p| match &p.content {
            Stored::UsedBlocks { variant, .. } => variant.clone(),
            Stored::EveryBlock { .. } => "every-block".into(),
        })
        .collect();
    assert_eq!(kinds, ["fat32", "ext4", "swap", "every-block"]);
    assert!(h.warnings.iter().any(|w| w.contains("partition 4")), "{:?}", h.warnings);
    // Used blocks only: far less than the disk, though all of it is non-zero.
    assert!(h.stats.image_bytes < 40 * MIB, "{}", h.stats.image_bytes);

    // Onto an existing disk full of garbage: free space keeps the garbage,
    // everything the filesystems use must be exact.
    let target = t.path().join("target.img");
    garbage_image(&target, 96 * MIB);
    let rep = restore(&r, "pc", &target, &RestoreOptions { read_back: true, ..Default::default() }).unwrap();
    assert!(rep.read_back_seconds.is_some());
    disk.check_copy(&target);

    // Onto a path that does not exist yet: a new (sparse) image file.
    let fresh = t.path().join("fresh.img");
    restore(&r, "pc", &fresh, &RestoreOptions::default()).unwrap();
    assert_eq!(std::fs::metadata(&fresh).unwrap().len(), 96 * MIB);
    disk.check_copy(&fresh);
}

#[test]
fn mbr_disk_with_ext2_ext3_ext4_variants_and_fat16() {
    let t = tempfile::tempdir().unwrap();
    let part = |size_mib, sfdisk_type, content| PartSpec { size_mib, sfdisk_type, content };
    let spec = DiskSpec {
        size_mib: 160,
        label: "dos",
        parts: vec![
            part(24, "L", Content::Ext { mkfs: "mkfs.ext2", opts: vec![] }),
            part(32, "L", Content::Ext { mkfs: "mkfs.ext3", opts: vec!["-b", "1024"] }),
            part(40, "L", Content::Ext { mkfs: "mkfs.ext4", opts: vec!["-O", "bigalloc", "-C", "16384"] }),
            part(32, "6", Content::Fat { bits: 16, opts: vec![] }),
        ],
    };
    let disk = spec.build(t.path(), "disk.img");
    let r = repo(t.path());
    let m = backup(&r, &disk.path, &opts("mbr")).unwrap();
    assert_eq!(m.header.table, "mbr");
    let variants: Vec<String> = m
        .header
        .partitions
        .iter()
        .map(|p| match &p.content {
            Stored::UsedBlocks { variant, .. } => variant.clone(),
            Stored::EveryBlock { reason } => panic!("partition {} read whole: {reason}", p.index),
        })
        .collect();
    assert_eq!(variants, ["ext2", "ext3", "ext4", "fat16"]);
    let target = t.path().join("target.img");
    garbage_image(&target, 160 * MIB);
    restore(&r, "mbr", &target, &RestoreOptions::default()).unwrap();
    disk.check_copy(&target);
}

#[test]
fn larger_target_gets_the_gpt_backup_at_its_end() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    backup(&r, &disk.path, &opts("pc")).unwrap();
    let target = t.path().join("bigger.img");
    garbage_image(&target, 160 * MIB);
    let rep = restore(&r, "pc", &target, &RestoreOptions { rest: Rest::Zero, ..Default::default() }).unwrap();
    assert!(rep.gpt_moved);
    // check_copy runs `sgdisk -v`, which fails on a GPT whose backup is not at
    // the end of the disk.
    disk.check_copy(&target);
    // --rest zero: the unallocated tail is zeros now.
    let data = std::fs::read(&target).unwrap();
    let tail = &data[(100 * MIB) as usize..(150 * MIB) as usize];
    assert!(tail.iter().all(|&b| b == 0));
}

#[test]
fn second_backup_stores_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let mut disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    let first = backup(&r, &disk.path, &opts("day1")).unwrap();
    let changed = disk.change_some_files(7);
    let second = backup(&r, &disk.path, &opts("day2")).unwrap();
    let (a, b) = (&first.header.stats, &second.header.stats);
    eprintln!(
        "first: {} new bytes ({} stored); second: {} new bytes ({} stored) for {changed} bytes of changed files",
        a.bytes_new, a.bytes_stored, b.bytes_new, b.bytes_stored
    );
    assert!(b.new_chunks > 0);
    // The changed files plus the metadata around them (inode table, bitmaps,
    // directory, journal), at 64 KiB per touched cell.
    assert!(b.bytes_new <= 4 * changed + 2 * MIB, "second backup added {} bytes", b.bytes_new);
    assert!(b.bytes_new * 5 < a.bytes_new, "second {} vs first {}", b.bytes_new, a.bytes_new);
    // Both images restore to their own state.
    let target = t.path().join("day2.img");
    restore(&r, "day2", &target, &RestoreOptions::default()).unwrap();
    disk.check_copy(&target);
}

#[test]
fn luks_partition_is_read_whole_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    // Partition 4 (unknown) gets a LUKS header signature.
    let start = disk.parts[3].0;
    let f = std::fs::OpenOptions::new().write(true).open(&disk.path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"LUKS\xba\xbe\x00\x02", start).unwrap();
    let r = repo(t.path());
    let m = backup(&r, &disk.path, &opts("luks")).unwrap();
    match &m.header.partitions[3].content {
        Stored::EveryBlock { reason } => assert!(reason.contains("LUKS"), "{reason}"),
        c => panic!("{c:?}"),
    }
    let target = t.path().join("t.img");
    restore(&r, "luks", &target, &RestoreOptions::default()).unwrap();
    disk.check_copy(&target);
}

#[test]
fn damaged_chunk_is_caught_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    let m = backup(&r, &disk.path, &opts("pc")).unwrap();
    assert!(lifeline_image::restore::verify(&r, &m, 2).ok());
    // Flip one byte in the middle of the largest pack (inside a group).
    let mut packs: Vec<_> =
        std::fs::read_dir(t.path().join("repo/packs")).unwrap().map(|e| e.unwrap().path()).collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let pack = packs.last().unwrap();
    let mut bytes = std::fs::read(pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(pack, bytes).unwrap();
    let rep = lifeline_image::restore::verify(&r, &m, 2);
    assert_eq!(rep.errors.len(), 1, "one group fails: {:?}", rep.errors);
    let name = pack.file_name().unwrap().to_str().unwrap();
    assert!(rep.errors[0].to_string().contains(name), "{}", rep.errors[0]);
    assert!(rep.errors[0].to_string().contains("authentication failed"));

    let target = t.path().join("target.img");
    garbage_image(&target, 96 * MIB);
    let before = hash(&target);
    let e = restore(&r, "pc", &target, &RestoreOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("damaged"), "{e:#}");
    assert!(format!("{e:#}").contains("Nothing was written"), "{e:#}");
    assert_eq!(hash(&target), before, "target modified by a refused restore");
    // A refused restore to a new path leaves no file behind.
    let fresh = t.path().join("fresh.img");
    assert!(restore(&r, "pc", &fresh, &RestoreOptions::default()).is_err());
    assert!(!fresh.exists());
}

#[test]
fn too_small_target_is_refused_untouched() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    backup(&r, &disk.path, &opts("pc")).unwrap();
    let target = t.path().join("small.img");
    garbage_image(&target, 95 * MIB);
    let before = hash(&target);
    let e = restore(&r, "pc", &target, &RestoreOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("too small"), "{e:#}");
    assert_eq!(hash(&target), before);
}

/// A mounted target is refused (needs root for the loop device and mount).
#[test]
fn mounted_target_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    backup(&r, &disk.path, &opts("pc")).unwrap();
    let target = t.path().join("mounted.img");
    garbage_image(&target, 96 * MIB);
    run("mkfs.ext4", &["-q", "-F", target.to_str().unwrap()]);
    let dev = run("losetup", &["--find", "--show", target.to_str().unwrap()]).trim().to_string();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").args([dev.as_str(), mnt.to_str().unwrap()]).status().unwrap().success();
    let result = restore(&r, "pc", Path::new(&dev), &RestoreOptions::default());
    // Nor the image file under the loop device.
    let via_file = restore(&r, "pc", &target, &RestoreOptions::default());
    if mounted {
        let _ = Command::new("umount").arg(&mnt).status();
    }
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(mounted, "could not mount the test filesystem");
    let e = result.unwrap_err();
    assert!(format!("{e:#}").contains("in use") || format!("{e:#}").contains("mounted"), "{e:#}");
    let e = via_file.unwrap_err();
    assert!(format!("{e:#}").contains("is attached to /dev/loop"), "{e:#}");
    // Still the ext4 made above.
    run("e2fsck", &["-fn", target.to_str().unwrap()]);
}

/// The CLI end to end: init, backup, list, info, verify, restore; a wrong
/// password is refused and changes nothing.
#[test]
fn cli_end_to_end_and_wrong_password() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let repo = t.path().join("repo");
    let cli = |pw: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lifeline-image"))
            .args(args)
            .env("LIFELINE_REPO", &repo)
            .env("LIFELINE_PASSWORD", pw)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert!(cli("right", &["init"]).0);
    let (ok, out) = cli("right", &["--json", "backup", "--name", "pc1", disk.path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).expect("JSON result");
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(j["stats"]["bytes_stored"].as_u64().unwrap() > 0);
    let (ok, out) = cli("right", &["list"]);
    assert!(ok && out.contains("pc1"), "{out}");
    let (ok, out) = cli("right", &["info", "--name", "pc1"]);
    assert!(ok && out.contains("ext4") && out.contains("fat32") && out.contains("every block"), "{out}");
    let (ok, out) = cli("right", &["verify"]);
    assert!(ok && out.contains("pc1: ok"), "{out}");

    let target = t.path().join("target.img");
    garbage_image(&target, 96 * MIB);
    let before = hash(&target);
    let (ok, out) = cli("wrong", &["restore", "--name", "pc1", target.to_str().unwrap()]);
    assert!(!ok && out.contains("password"), "{out}");
    assert_eq!(hash(&target), before, "wrong password modified the target");
    let (ok, out) = cli("right", &["restore", "--name", "pc1", "--read-back", target.to_str().unwrap()]);
    assert!(ok, "{out}");
    disk.check_copy(&target);
    // An existing name is not overwritten.
    let (ok, out) = cli("right", &["backup", "--name", "pc1", disk.path.to_str().unwrap()]);
    assert!(!ok && out.contains("already exists"), "{out}");
}

/// The other filesystems users restore: NTFS and exFAT (Windows machines,
/// made by ntfs-3g's and exfatprogs' mkfs), XFS and btrfs (Linux servers),
/// each read through its own used-block map, restored onto garbage and
/// checked by its own checker with every file compared.
#[test]
fn ntfs_exfat_xfs_btrfs_disk_round_trip() {
    use lifeline_testdisk::Mounted;
    let t = tempfile::tempdir().unwrap();
    let part = |size_mib, sfdisk_type, kind| PartSpec { size_mib, sfdisk_type, content: Content::Mounted(kind) };
    let spec = DiskSpec {
        size_mib: 580,
        label: "gpt",
        parts: vec![
            part(48, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", Mounted::Ntfs),
            part(32, "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", Mounted::Exfat),
            part(310, "L", Mounted::Xfs),
            part(180, "L", Mounted::Btrfs),
        ],
    };
    let disk = spec.build(t.path(), "disk.img");
    let r = repo(t.path());
    let m = backup(&r, &disk.path, &opts("mixed")).unwrap();
    let got: Vec<(String, String)> = m
        .header
        .partitions
        .iter()
        .map(|p| match &p.content {
            Stored::UsedBlocks { fs, .. } => (fs.clone(), String::new()),
            Stored::EveryBlock { reason } => ("every-block".into(), reason.clone()),
        })
        .collect();
    let fs: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(fs, ["ntfs", "exfat", "xfs", "btrfs"], "{got:?}");
    assert!(
        m.header.stats.image_bytes < 200 * MIB,
        "image covers {} bytes of a 580 MiB disk",
        m.header.stats.image_bytes
    );
    let target = t.path().join("target.img");
    garbage_image(&target, 580 * MIB);
    restore(&r, "mixed", &target, &RestoreOptions::default()).unwrap();
    disk.check_copy(&target);
}

/// A damaged superblock is never guessed around: the partition is imaged
/// block by block, the backup says why, and the restore gives the same bytes
/// back.
#[test]
fn damaged_superblocks_fall_back_to_every_block_with_a_warning() {
    use lifeline_testdisk::Mounted;
    let t = tempfile::tempdir().unwrap();
    let spec = DiskSpec {
        size_mib: 500,
        label: "gpt",
        parts: vec![
            PartSpec { size_mib: 310, sfdisk_type: "L", content: Content::Mounted(Mounted::Xfs) },
            PartSpec { size_mib: 150, sfdisk_type: "L", content: Content::Mounted(Mounted::Btrfs) },
        ],
    };
    let disk = spec.build(t.path(), "disk.img");
    // Flip a byte of each filesystem's label: covered by the superblock's
    // checksum (XFS: sb_fname at 108; btrfs: label at 0x12b of the copy at 64 KiB).
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&disk.path).unwrap();
    use std::os::unix::fs::FileExt;
    for at in [disk.parts[0].0 + 108, disk.parts[1].0 + 65536 + 0x12b] {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    }
    drop(f);
    let r = repo(t.path());
    let m = backup(&r, &disk.path, &opts("damaged")).unwrap();
    for (i, fs) in [(0, "xfs"), (1, "btrfs")] {
        match &m.header.partitions[i].content {
            Stored::EveryBlock { reason } => {
                assert!(reason.contains(fs) && reason.contains("checksum"), "{reason}")
            }
            c => panic!("partition {} mapped despite its damaged superblock: {c:?}", i + 1),
        }
        assert!(
            m.header.warnings.iter().any(|w| w.contains(&format!("partition {}", i + 1))),
            "{:?}",
            m.header.warnings
        );
    }
    let target = t.path().join("target.img");
    garbage_image(&target, 500 * MIB);
    restore(&r, "damaged", &target, &RestoreOptions::default()).unwrap();
    let (a, b) = (std::fs::read(&disk.path).unwrap(), std::fs::read(&target).unwrap());
    for &(start, len, _) in &disk.parts {
        let range = start as usize..(start + len) as usize;
        assert!(a[range.clone()] == b[range], "partition at {start} not restored byte for byte");
    }
}

/// Forgetting an image and pruning frees exactly the chunks no other image
/// uses; the remaining image still verifies and restores; a prune does not
/// run beside a backup.
#[test]
fn forget_and_prune_free_only_unused_chunks() {
    use lifeline_image::prune::{forget, prune};
    let t = tempfile::tempdir().unwrap();
    let mut disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    backup(&r, &disk.path, &opts("day1")).unwrap();
    disk.change_some_files(11);
    let day2 = backup(&r, &disk.path, &opts("day2")).unwrap();
    let before = r.chunk_ids().unwrap().len();
    let packs_before = r.pack_ids().unwrap().len();
    assert!(forget(&r, "nope").is_err());
    {
        // A backup in progress holds the repository shared.
        let _backup = r.lock(false).unwrap().unwrap();
        let e = prune(&r).unwrap_err();
        assert!(format!("{e:#}").contains("a backup is writing"), "{e:#}");
    }
    forget(&r, "day1").unwrap();
    assert_eq!(r.list().unwrap(), ["day2"]);
    // day2's own pack (its changed cells) is all used; day1's packs hold
    // cells day2 shares, so they stay whole: nothing is deleted yet.
    let rep = prune(&r).unwrap().packs;
    let mut wanted: Vec<_> = day2.chunks.iter().map(|c| c.1).collect();
    wanted.sort();
    wanted.dedup();
    assert_eq!(rep.chunks_used as usize, wanted.len(), "{rep:?}");
    assert_eq!(rep.chunks_used + rep.chunks_unused_kept + rep.chunks_deleted, before as u64, "{rep:?}");
    assert_eq!(rep.packs_kept + rep.packs_deleted, packs_before as u64);
    assert!(rep.chunks_unused_kept > 0, "day1's changed cells: {rep:?}");
    // Once day2 is forgotten as well, every pack goes.
    let day3 = backup(&r, &disk.path, &opts("day3")).unwrap();
    assert_eq!(day3.header.stats.new_chunks, 0);
    forget(&r, "day2").unwrap();
    let rep = prune(&r).unwrap().packs;
    assert_eq!(rep.chunks_deleted, 0, "day3 uses what day2 used: {rep:?}");
    assert!(lifeline_image::restore::verify(&r, &day3, 2).ok());
    forget(&r, "day3").unwrap();
    let rep = prune(&r).unwrap().packs;
    assert_eq!((rep.packs_kept, rep.packs_deleted), (0, packs_before as u64), "{rep:?}");
    assert!(r.pack_ids().unwrap().is_empty());
    backup(&r, &disk.path, &opts("day2")).unwrap();
    let day2 = lifeline_image::restore::load(&r, "day2").unwrap();
    assert!(lifeline_image::restore::verify(&r, &day2, 2).ok());
    let target = t.path().join("t.img");
    restore(&r, "day2", &target, &RestoreOptions::default()).unwrap();
    disk.check_copy(&target);
}

/// A pack torn by a crash (here: cut in half under its name) is reported by
/// a full verification and never read; the image using it fails its check
/// (so a restore would refuse before writing), and the next backup stores
/// the lost cells again and restores.
#[test]
fn torn_pack_is_reported_and_the_next_backup_works() {
    let t = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let r = repo(t.path());
    backup(&r, &disk.path, &opts("one")).unwrap();
    let mut packs: Vec<_> =
        std::fs::read_dir(t.path().join("repo/packs")).unwrap().map(|e| e.unwrap().path()).collect();
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let pack = packs.last().unwrap();
    let bytes = std::fs::read(pack).unwrap();
    std::fs::write(pack, &bytes[..bytes.len() / 2]).unwrap();

    let r = Repo::open(t.path().join("repo"), b"pw").unwrap();
    let all = r.verify_all_packs(2);
    assert_eq!(all.errors.len(), 1, "{:?}", all.errors);
    assert!(all.errors[0].to_string().contains("torn"), "{}", all.errors[0]);
    let one = lifeline_image::restore::load(&r, "one").unwrap();
    assert!(!lifeline_image::restore::verify(&r, &one, 2).ok());
    let target = t.path().join("target.img");
    garbage_image(&target, 96 * MIB);
    let before = hash(&target);
    assert!(restore(&r, "one", &target, &RestoreOptions::default()).is_err());
    assert_eq!(hash(&target), before, "a refused restore wrote");

    let two = backup(&r, &disk.path, &opts("two")).unwrap();
    assert!(two.header.stats.new_chunks > 0);
    assert!(lifeline_image::restore::verify(&r, &two, 2).ok());
    restore(&r, "two", &target, &RestoreOptions::default()).unwrap();
    disk.check_copy(&target);
}
