//! XFS and btrfs readers against real filesystems: mkfs on a garbage-filled
//! image, files put in through a loop mount, one deleted (its freed blocks
//! keep real data), then only the used blocks copied into a zeroed image. The
//! filesystem's own checker must pass on the copy and every remaining file must
//! read back identical from a read-only mount of it. Needs root (loop devices).

mod common;
use common::*;
use lifeline_disk::fs::{Btrfs, FsError, FsReader, UsedMap, Xfs};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn probe_with(r: &dyn FsReader, img: &Path) -> Result<Option<UsedMap>, FsError> {
    let f = File::open(img).unwrap();
    let len = f.metadata().unwrap().len();
    r.probe(&f, len)
}

/// A loop device attached to an image, mounted at `dir`; unmounted and
/// detached on drop (fields drop in order: the mount first), also when an
/// assertion fails mid-test.
struct Mounted {
    mount: lifeline_testdisk::Mount,
    _dev: lifeline_testdisk::Loop,
}

impl Mounted {
    fn new(img: &Path, dir: &Path, opts: &str) -> Mounted {
        let dev = lifeline_testdisk::Loop::new(img, false);
        let o: Vec<&str> = if opts.is_empty() { vec![] } else { vec!["-o", opts] };
        let mount = lifeline_testdisk::Mount::new("mount", &o, &dev.0, dir);
        Mounted { mount, _dev: dev }
    }
}

/// Files written into every filesystem: the shared tree plus a few more (many
/// small files for inode/metadata churn, one larger fragmented-ish file).
fn fill(mnt: &Path, tree_files: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut files = tree_files.to_vec();
    for i in 0..200 {
        files.push((format!("many/f{i:03}"), format!("file {i}\n").repeat(i * 7).into_bytes()));
    }
    let mut big = Vec::with_capacity(7 * MIB as usize);
    for i in 0..(7 * MIB / 8) {
        big.extend_from_slice(&(i * 2654435761).to_le_bytes());
    }
    files.push(("big/seq.bin".into(), big));
    for (name, data) in &files {
        let p = mnt.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    files
}

/// The common case: mkfs, fill, delete, map, copy used, check, compare.
fn fs_case(reader: &dyn FsReader, mkfs: &[&str], size: u64, check: &[&str], ro_opts: &str, expect_variant: &str) {
    fs_case_opts(reader, mkfs, size, "", check, ro_opts, expect_variant)
}

/// [`fs_case`] with mount options for filling (`rw_opts`).
fn fs_case_opts(
    reader: &dyn FsReader,
    mkfs: &[&str],
    size: u64,
    rw_opts: &str,
    check: &[&str],
    ro_opts: &str,
    expect_variant: &str,
) {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let tree_files = make_tree(&tree);
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, size);
    let mut args: Vec<&str> = mkfs[1..].to_vec();
    args.push(img.to_str().unwrap());
    run(mkfs[0], &args);
    let files = {
        let m = Mounted::new(&img, &t.path().join("mnt"), rw_opts);
        let files = fill(&m.mount.0, &tree_files);
        run("sync", &[]);
        // Delete a file so its old blocks hold real, now-free data.
        std::fs::remove_file(m.mount.0.join("a.bin")).unwrap();
        std::fs::remove_file(m.mount.0.join("many/f150")).unwrap();
        run("sync", &[]);
        files
    };
    let map = probe_with(reader, &img).unwrap().expect("filesystem recognised");
    assert_eq!(map.variant, expect_variant);
    let used = map.used_bytes();
    assert!(used < size / 2, "{mkfs:?}: used {used} of {size}");
    assert_eq!(UsedMap::from_bytes(&map.to_bytes()).unwrap(), map);

    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    let mut cargs: Vec<&str> = check[1..].to_vec();
    cargs.push(copy.to_str().unwrap());
    run(check[0], &cargs);
    {
        let m = Mounted::new(&copy, &t.path().join("mnt2"), ro_opts);
        for (name, data) in &files {
            if name == "a.bin" || name == "many/f150" {
                assert!(!m.mount.0.join(name).exists());
                continue;
            }
            let got = std::fs::read(m.mount.0.join(name)).unwrap();
            assert!(got == *data, "{mkfs:?}: {name} differs");
        }
    }
    eprintln!(
        "{mkfs:?}: used {} KiB of {} KiB, {} runs, map {} bytes",
        used >> 10,
        size >> 10,
        map.runs().len(),
        map.to_bytes().len()
    );
}

fn flip(img: &Path, off: u64) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, off).unwrap();
}

fn not_mine(reader: &dyn FsReader) {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "rnd.img");
    garbage_image(&img, 4 * MIB);
    assert!(probe_with(reader, &img).unwrap().is_none());
    let ext = tmp_path(&t, "ext.img");
    garbage_image(&ext, 8 * MIB);
    run("mkfs.ext4", &["-F", "-q", ext.to_str().unwrap()]);
    assert!(probe_with(reader, &ext).unwrap().is_none());
    // Tiny partitions must not error either.
    let tiny = tmp_path(&t, "tiny.img");
    garbage_image(&tiny, 4096);
    assert!(probe_with(reader, &tiny).unwrap().is_none());
}

// ---- XFS ----

const XFS_SIZE: u64 = 320 * MIB;

#[test]
fn xfs_v5_default() {
    fs_case(&Xfs, &["mkfs.xfs", "-f", "-q", "-K"], XFS_SIZE, &["xfs_repair", "-n"], "ro,norecovery", "xfs v5");
}

#[test]
fn xfs_v5_1k_blocks() {
    fs_case(
        &Xfs,
        // 1 KiB blocks need an explicit log: the 64 MiB minimum is not
        // picked automatically at this size.
        &["mkfs.xfs", "-f", "-q", "-K", "-b", "size=1024", "-l", "size=64m"],
        XFS_SIZE,
        &["xfs_repair", "-n"],
        "ro,norecovery",
        "xfs v5",
    );
}

/// v4 (no CRCs): this kernel no longer mounts it, so the filesystem is
/// populated by mkfs from a protofile and files are not compared after the
/// copy; `xfs_repair -n` on the copy is the check (it verifies every inode,
/// directory and extent map, so a dropped metadata block fails it).
/// Reverse-mapping btree (its blocks come from the AGFL), free-inode btree,
/// sparse inode chunks, two AGs.
#[test]
fn xfs_v5_rmapbt_sparse_inodes() {
    fs_case(
        &Xfs,
        &["mkfs.xfs", "-f", "-q", "-K", "-m", "rmapbt=1,finobt=1", "-i", "sparse=1", "-d", "agcount=2"],
        XFS_SIZE,
        &["xfs_repair", "-n"],
        "ro,norecovery",
        "xfs v5",
    );
}

#[test]
fn xfs_v4() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let files = make_tree(&tree);
    let proto = t.path().join("proto");
    let mut p = String::from("/dev/null\n0 0\nd--755 0 0\n");
    // Flat: the protofile's nesting is by `$` lines; put every file at the root
    // under a flattened name.
    for (name, _) in &files {
        p += &format!("{} ---644 0 0 {}\n", name.replace('/', "_"), tree.join(name).display());
    }
    p += "$\n";
    std::fs::write(&proto, p).unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, XFS_SIZE);
    run(
        "mkfs.xfs",
        &["-f", "-q", "-K", "-m", "crc=0", "-d", "agcount=3", "-p", proto.to_str().unwrap(), img.to_str().unwrap()],
    );
    let map = probe_with(&Xfs, &img).unwrap().expect("xfs recognised");
    assert_eq!(map.variant, "xfs v4");
    let used = map.used_bytes();
    assert!(used < XFS_SIZE / 2, "v4: used {used}");
    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    run("xfs_repair", &["-n", copy.to_str().unwrap()]);
    eprintln!("xfs v4: used {} KiB of {} KiB, {} runs", used >> 10, XFS_SIZE >> 10, map.runs().len());
}

#[test]
fn xfs_damaged_superblock() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, XFS_SIZE);
    run("mkfs.xfs", &["-f", "-q", "-K", img.to_str().unwrap()]);
    assert!(probe_with(&Xfs, &img).unwrap().is_some());
    flip(&img, 0x58); // sb_agcount, covered by the superblock CRC
    let e = probe_with(&Xfs, &img).unwrap_err().to_string();
    assert!(e.contains("superblock checksum mismatch"), "{e}");
}

#[test]
fn xfs_damaged_agf() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, XFS_SIZE);
    run("mkfs.xfs", &["-f", "-q", "-K", img.to_str().unwrap()]);
    flip(&img, 512 + 52); // AG 0's agf_freeblks
    let e = probe_with(&Xfs, &img).unwrap_err().to_string();
    assert!(e.contains("AG 0: AGF checksum mismatch"), "{e}");
}

#[test]
fn xfs_not_mine() {
    not_mine(&Xfs);
}

// ---- btrfs ----

const BTRFS_SIZE: u64 = 256 * MIB;

/// Default profiles on one device: DUP metadata and system, single data.
#[test]
fn btrfs_dup_metadata() {
    fs_case(
        &Btrfs,
        &["mkfs.btrfs", "-f", "-q", "-K"],
        BTRFS_SIZE,
        &["btrfs", "check", "--readonly"],
        "ro",
        "btrfs (dup)",
    );
}

#[test]
fn btrfs_single() {
    fs_case(
        &Btrfs,
        &["mkfs.btrfs", "-f", "-q", "-K", "-m", "single", "-d", "single"],
        BTRFS_SIZE,
        &["btrfs", "check", "--readonly"],
        "ro",
        "btrfs",
    );
}

/// Mixed block groups (data and metadata share chunks), no skinny metadata:
/// tree blocks are then EXTENT_ITEMs rather than METADATA_ITEMs. Mixed
/// defaults to the single profile for everything.
#[test]
fn btrfs_mixed_no_skinny() {
    fs_case(
        &Btrfs,
        &["mkfs.btrfs", "-f", "-q", "-K", "--mixed", "-O", "^skinny-metadata"],
        BTRFS_SIZE,
        &["btrfs", "check", "--readonly"],
        "ro",
        "btrfs",
    );
}

/// zstd-compressed extents (sets the COMPRESS_ZSTD incompat feature): extent
/// items then record the compressed on-disk size.
#[test]
fn btrfs_zstd_compressed() {
    fs_case_opts(
        &Btrfs,
        &["mkfs.btrfs", "-f", "-q", "-K"],
        BTRFS_SIZE,
        "compress-force=zstd",
        &["btrfs", "check", "--readonly"],
        "ro",
        "btrfs (dup)",
    );
}

#[test]
fn btrfs_damaged_superblock() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, BTRFS_SIZE);
    run("mkfs.btrfs", &["-f", "-q", "-K", img.to_str().unwrap()]);
    assert!(probe_with(&Btrfs, &img).unwrap().is_some());
    flip(&img, 0x10000 + 0x50); // root tree address, under the superblock checksum
    let e = probe_with(&Btrfs, &img).unwrap_err().to_string();
    assert!(e.contains("superblock checksum mismatch"), "{e}");
}

#[test]
fn btrfs_not_mine() {
    not_mine(&Btrfs);
}

/// A shut-down filesystem (log written, never checkpointed, no unmount
/// record) must be refused: the free-space btrees on disk are stale.
#[test]
fn xfs_dirty_log_refused() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    let tree_files = make_tree(&tree);
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, XFS_SIZE);
    run("mkfs.xfs", &["-f", "-q", "-K", img.to_str().unwrap()]);
    {
        let m = Mounted::new(&img, &t.path().join("mnt"), "");
        fill(&m.mount.0, &tree_files);
        // Flush the log, then stop: the metadata is only in the log.
        run("xfs_io", &["-x", "-c", "shutdown -f", m.mount.0.to_str().unwrap()]);
    }
    let e = probe_with(&Xfs, &img).unwrap_err().to_string();
    assert!(e.contains("the log is not clean"), "{e}");
    eprintln!("dirty log: {e}");
    // Mounting replays the log; the clean unmount after it is accepted and the
    // recovered filesystem maps fine.
    drop(Mounted::new(&img, &t.path().join("mnt"), ""));
    let map = probe_with(&Xfs, &img).unwrap().expect("xfs after recovery");
    let copy = tmp_path(&t, "copy.img");
    copy_used(&img, &copy, 0, &map);
    run("xfs_repair", &["-n", copy.to_str().unwrap()]);
}

/// DUP metadata: a damaged first copy of a tree block is read from the
/// second (as the kernel does); both damaged is refused, naming the block.
#[test]
fn btrfs_damaged_tree_block() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, BTRFS_SIZE);
    let i = img.to_str().unwrap();
    run("mkfs.btrfs", &["-f", "-q", "-K", i]);
    let dump = run("btrfs", &["inspect-internal", "dump-tree", "-t", "extent", i]);
    let logical: u64 = dump
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            matches!(w.next(), Some("leaf" | "node")).then(|| w.next().unwrap().parse().unwrap())
        })
        .expect("extent tree root in dump-tree output");
    let map_out = run("btrfs-map-logical", &["-l", &logical.to_string(), i]);
    let phys: Vec<u64> = map_out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let p = w.iter().position(|&x| x == "physical")?;
            w.get(p + 1)?.parse().ok()
        })
        .collect();
    assert_eq!(phys.len(), 2, "{map_out}");
    let before = probe_with(&Btrfs, &img).unwrap().unwrap();
    flip(&img, phys[0] + 200);
    let after = probe_with(&Btrfs, &img).unwrap().expect("second copy used");
    assert_eq!(before, after);
    flip(&img, phys[1] + 200);
    let e = probe_with(&Btrfs, &img).unwrap_err().to_string();
    assert!(e.contains(&format!("tree block at {logical}: checksum mismatch")), "{e}");
}

// ---- hostile input ----

/// CRC32C (Castagnoli), reflected, no final inversion.
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    crc
}

/// How a checksummed region's checksum is stored.
#[derive(Clone, Copy)]
enum Sum {
    /// XFS: CRC32C of the region with the field zeroed, inverted, LE, at `off`.
    Xfs(usize),
    /// btrfs: CRC32C of region[32..], LE at 0.
    Btrfs,
    /// No checksum (XFS v4).
    None,
}

/// A file with random byte changes applied on read, and the checksums of the
/// regions they hit recomputed: so the corruption reaches the parsers behind
/// the checksum checks (what a fuzzer with a checksum fixer would do).
struct Mutated {
    file: File,
    patches: Vec<(u64, u8)>,
    regions: Vec<(u64, usize, Sum)>,
}

impl lifeline_disk::ReadAt for Mutated {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, off)?;
        let end = off + buf.len() as u64;
        for &(p, v) in &self.patches {
            if (off..end).contains(&p) {
                buf[(p - off) as usize] = v;
            }
        }
        for &(s, l, k) in &self.regions {
            if s >= off && s + l as u64 <= end {
                let r = &mut buf[(s - off) as usize..][..l];
                match k {
                    Sum::Xfs(o) => {
                        r[o..o + 4].fill(0);
                        let c = !crc32c(!0, r);
                        r[o..o + 4].copy_from_slice(&c.to_le_bytes());
                    }
                    Sum::Btrfs => {
                        let c = !crc32c(!0, &r[32..]);
                        r[..4].copy_from_slice(&c.to_le_bytes());
                    }
                    Sum::None => {}
                }
            }
        }
        Ok(())
    }
}

/// Random corruption of the structures each reader parses, with checksums
/// fixed up, must give `Ok` or `Err`, never a panic or a hang.
fn fuzz(reader: &dyn FsReader, img: &Path, regions: Vec<(u64, usize, Sum)>, rounds: usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let len = std::fs::metadata(img).unwrap().len();
    let mut m = Mutated { file: File::open(img).unwrap(), patches: vec![], regions };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..rounds {
        m.patches.clear();
        for _ in 0..rng.random_range(1..6) {
            let (s, l, _) = m.regions[rng.random_range(0..m.regions.len())];
            let o = s + rng.random_range(0..l as u64);
            let v = if rng.random_bool(0.5) {
                rng.random()
            } else {
                // Small values and all-ones hit counts and bounds harder.
                [0u8, 1, 2, 0x7F, 0x80, 0xFF][rng.random_range(0..6)]
            };
            m.patches.push((o, v));
        }
        match reader.probe(&m, len) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    eprintln!("fuzz {}: {ok} ok, {err} refused", reader.name());
}

#[test]
fn xfs_corrupted_metadata_never_panics() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    for v5 in [true, false] {
        garbage_image(&img, XFS_SIZE);
        let i = img.to_str().unwrap();
        let crc = if v5 { "crc=1" } else { "crc=0" };
        run("mkfs.xfs", &["-f", "-q", "-K", "-m", crc, "-b", "size=1024", "-l", "size=64m", i]);
        let f = File::open(&img).unwrap();
        let mut sb = [0u8; 512];
        f.read_exact_at(&mut sb, 0).unwrap();
        let be32 = |b: &[u8], o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        let bs = be32(&sb, 4) as u64;
        let agblocks = be32(&sb, 84) as u64;
        let agcount = be32(&sb, 88) as u64;
        let mut regions = vec![];
        let sum = |o| if v5 { Sum::Xfs(o) } else { Sum::None };
        for ag in 0..agcount {
            let base = ag * agblocks * bs;
            let mut agf = [0u8; 512];
            f.read_exact_at(&mut agf, base + 512).unwrap();
            let root = be32(&agf, 16) as u64;
            regions.push((base, 512, sum(224))); // superblock (copy)
            regions.push((base + 512, 512, sum(216))); // AGF
            regions.push((base + 1536, 512, sum(32))); // AGFL
            regions.push((base + root * bs, bs as usize, sum(52))); // bnobt root
        }
        fuzz(&Xfs, &img, regions, 1500);
    }
}

#[test]
fn btrfs_corrupted_metadata_never_panics() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, BTRFS_SIZE);
    let i = img.to_str().unwrap();
    // Single metadata: one copy per tree block, so corruption is not
    // side-stepped by reading the other DUP copy.
    run("mkfs.btrfs", &["-f", "-q", "-K", "-m", "single", "-d", "single", i]);
    {
        // Some content so the trees have more than a few items.
        let tree = t.path().join("tree");
        let files = make_tree(&tree);
        let m = Mounted::new(&img, &t.path().join("mnt"), "");
        fill(&m.mount.0, &files);
    }
    let mut regions = vec![(0x10000u64, 4096usize, Sum::Btrfs)];
    for tree in ["chunk", "root", "extent"] {
        let dump = run("btrfs", &["inspect-internal", "dump-tree", "-t", tree, i]);
        for l in dump.lines() {
            let mut w = l.split_whitespace();
            if !matches!(w.next(), Some("leaf" | "node")) {
                continue;
            }
            let Some(Ok(logical)) = w.next().map(str::parse::<u64>) else {
                continue;
            };
            let out = run("btrfs-map-logical", &["-l", &logical.to_string(), i]);
            for p in out.lines().filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let p = w.iter().position(|&x| x == "physical")?;
                w.get(p + 1)?.parse::<u64>().ok()
            }) {
                regions.push((p, 16384, Sum::Btrfs));
            }
        }
    }
    regions.dedup_by_key(|r| r.0);
    assert!(regions.len() >= 4, "{}", regions.len());
    fuzz(&Btrfs, &img, regions, 3000);
}

/// Probe with `bytes` written at `off` (checksum of `region` fixed up).
fn probe_patched(
    reader: &dyn FsReader,
    img: &Path,
    region: (u64, usize, Sum),
    off: u64,
    bytes: &[u8],
) -> Result<Option<UsedMap>, FsError> {
    let m = Mutated {
        file: File::open(img).unwrap(),
        patches: bytes.iter().enumerate().map(|(i, &b)| (off + i as u64, b)).collect(),
        regions: vec![region],
    };
    reader.probe(&m, std::fs::metadata(img).unwrap().len())
}

/// Valid superblocks (checksums right) asking for something unsupported are
/// refused, and the message names it.
#[test]
fn xfs_unsupported_features_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, XFS_SIZE);
    run("mkfs.xfs", &["-f", "-q", "-K", img.to_str().unwrap()]);
    let sb = (0, 512, Sum::Xfs(224));
    let f = File::open(&img).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, 216).unwrap();
    let incompat = u32::from_be_bytes(b);
    for (off, bytes, want) in [
        (216u64, (incompat | 0x8000).to_be_bytes().to_vec(), "unknown incompat feature bits 0x8000"),
        (216, (incompat | 0x10).to_be_bytes().to_vec(), "NEEDSREPAIR"),
        (220, 1u32.to_be_bytes().to_vec(), "log incompat"),
        (16, 1000u64.to_be_bytes().to_vec(), "realtime"),
        (48, 0u64.to_be_bytes().to_vec(), "external log"),
        (100, 0xb4a6u16.to_be_bytes().to_vec(), "superblock version 6"),
        (88, 1000u32.to_be_bytes().to_vec(), "allocation groups"),
    ] {
        let e = probe_patched(&Xfs, &img, sb, off, &bytes).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    // Control: the fixed-up checksum alone changes nothing.
    assert!(probe_patched(&Xfs, &img, sb, 0, b"XFSB").unwrap().is_some());
}

#[test]
fn btrfs_unsupported_features_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = tmp_path(&t, "fs.img");
    garbage_image(&img, BTRFS_SIZE);
    run("mkfs.btrfs", &["-f", "-q", "-K", img.to_str().unwrap()]);
    let sb = (0x10000, 4096, Sum::Btrfs);
    let f = File::open(&img).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 0x10000 + 0xBC).unwrap();
    let incompat = u64::from_le_bytes(b);
    let s = 0x10000u64;
    for (off, bytes, want) in [
        (s + 0xBC, (incompat | 1 << 40).to_le_bytes().to_vec(), "unknown incompat feature bits 0x10000000000"),
        (s + 0xBC, (incompat | 0x2000).to_le_bytes().to_vec(), "extent_tree_v2"),
        (s + 0xB4, (1u64 << 20).to_le_bytes().to_vec(), "unknown compat_ro"),
        (s + 0xC4, 1u16.to_le_bytes().to_vec(), "xxhash64"),
        (s + 0x88, 2u64.to_le_bytes().to_vec(), "device 1 of 2; multi-device btrfs is not supported"),
        (s + 0x60, 0x1234_0000u64.to_le_bytes().to_vec(), "log tree"),
        (s + 0x70 + 0x61, 0u64.to_le_bytes().to_vec(), "device size"),
    ] {
        let e = probe_patched(&Btrfs, &img, sb, off, &bytes).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(probe_patched(&Btrfs, &img, sb, s + 0x40, b"_BHRfS_M").unwrap().is_some());
}
