//! Real disks for the imaging tests, made and checked by the real tools.
//!
//! [`DiskSpec`] describes a disk (table, partitions, what is on each);
//! [`DiskSpec::build`] makes it as a garbage-filled image file: the table by
//! `sfdisk`, each filesystem by its own `mkfs` on a garbage-filled file of the
//! partition's size (so nothing a filesystem leaves free is zero, and a used
//! block a reader misses shows up as corruption), filled with a random file
//! tree and placed at the partition's offset. No loop device or mount is
//! needed. [`BuiltDisk::check_copy`] then checks another disk (a restore)
//! against it: same partition table, `e2fsck -fn` / `fsck.vfat -n` clean,
//! every file identical (read with `debugfs` / `mtools`), swap recognised,
//! unknown partitions byte-identical.

use rand::{RngCore, SeedableRng};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const MIB: u64 = 1 << 20;

/// Run a tool; panic with its output if it fails. Returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e} (is it installed? scripts/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image file of `size` bytes full of random garbage.
pub fn garbage_image(path: &Path, size: u64) {
    // /dev/urandom: much faster than an unoptimised RNG in a debug test build.
    let f = File::create(path).unwrap();
    let mut rnd = File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        std::io::Read::read_exact(&mut rnd, &mut buf).unwrap();
        let n = (size - off).min(MIB) as usize;
        f.write_all_at(&buf[..n], off).unwrap();
        off += n as u64;
    }
}

/// A small file tree with random content: (relative path, content).
pub fn make_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rng();
    let mut files = Vec::new();
    for (name, len) in [
        ("a.bin", 1_000_000usize),
        ("small.txt", 37),
        ("empty", 0),
        ("sub/b.bin", 3 * MIB as usize + 123),
        ("sub/deep/c.txt", 5000),
    ] {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        files.push((name.to_string(), data));
    }
    files
}

/// Read `len` bytes at `offset` of `disk` into the file `out`.
pub fn extract(disk: &Path, offset: u64, len: u64, out: &Path) {
    let d = File::open(disk).unwrap();
    let mut buf = vec![0u8; len as usize];
    d.read_exact_at(&mut buf, offset).unwrap();
    std::fs::write(out, buf).unwrap();
}

/// Write the file `data` into `disk` at `offset`.
pub fn put(disk: &Path, data: &Path, offset: u64) {
    let d = OpenOptions::new().write(true).open(disk).unwrap();
    d.write_all_at(&std::fs::read(data).unwrap(), offset).unwrap();
}

/// A loop device on an image file, detached on drop (also when a test fails).
pub struct Loop(pub String);

impl Loop {
    pub fn new(img: &Path, read_only: bool) -> Loop {
        let mut args = vec!["-f", "--show"];
        if read_only {
            args.push("-r");
        }
        args.push(img.to_str().unwrap());
        Loop(run("losetup", &args).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mounted filesystem, unmounted on drop. `prog` is `mount` (with `-t
/// TYPE` in `opts`) or a FUSE driver (`ntfs-3g`, `mount.exfat-fuse`).
pub struct Mount(pub PathBuf);

impl Mount {
    pub fn new(prog: &str, opts: &[&str], dev: &str, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let mut args: Vec<&str> = opts.to_vec();
        args.extend([dev, dir.to_str().unwrap()]);
        run(prog, &args);
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Filesystems the kernel or a FUSE driver mounts: made by their mkfs,
/// filled through a mount, checked by their own checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    Ntfs,
    Exfat,
    Xfs,
    Btrfs,
}

impl Mounted {
    fn mkfs(self, img: &str) {
        match self {
            Mounted::Ntfs => run("mkfs.ntfs", &["-F", "-f", "-q", img]),
            Mounted::Exfat => run("mkfs.exfat", &[img]),
            Mounted::Xfs => run("mkfs.xfs", &["-q", "-f", img]),
            Mounted::Btrfs => run("mkfs.btrfs", &["-q", "-f", img]),
        };
    }

    fn mount(self, dev: &str, dir: &Path, read_only: bool) -> Mount {
        let ro = if read_only { "ro" } else { "rw" };
        match self {
            Mounted::Ntfs => Mount::new("ntfs-3g", &["-o", ro], dev, dir),
            Mounted::Exfat => Mount::new("mount.exfat-fuse", &["-o", ro], dev, dir),
            Mounted::Xfs if read_only => Mount::new("mount", &["-t", "xfs", "-o", "ro,norecovery"], dev, dir),
            Mounted::Xfs => Mount::new("mount", &["-t", "xfs"], dev, dir),
            Mounted::Btrfs => Mount::new("mount", &["-t", "btrfs", "-o", ro], dev, dir),
        }
    }

    /// The filesystem's own checker, read-only; panics if it finds a problem.
    fn check(self, img: &str) {
        match self {
            Mounted::Ntfs => {
                let out = run("ntfsfix", &["-n", img]);
                assert!(out.contains("processed successfully"), "ntfsfix: {out}");
            }
            Mounted::Exfat => {
                run("fsck.exfat", &["-n", img]);
            }
            Mounted::Xfs => {
                run("xfs_repair", &["-n", "-f", img]);
            }
            Mounted::Btrfs => {
                run("btrfs", &["check", "--readonly", img]);
            }
        }
    }
}

/// What a partition holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// A filesystem made by its mkfs and filled with the tree through a mount.
    Mounted(Mounted),
    /// `mkfs` program (mkfs.ext2/3/4) and its options; filled with the tree.
    Ext {
        mkfs: &'static str,
        opts: Vec<&'static str>,
    },
    /// `mkfs.vfat -F bits` plus options; filled with the tree.
    Fat {
        bits: u32,
        opts: Vec<&'static str>,
    },
    Swap,
    /// Random bytes no reader recognises; must come back byte for byte.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct PartSpec {
    pub size_mib: u64,
    /// sfdisk type: "U" (EFI), "L" (Linux), "S" (swap), or a hex id / GUID.
    pub sfdisk_type: &'static str,
    pub content: Content,
}

/// A disk to build.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub size_mib: u64,
    /// "gpt" or "dos".
    pub label: &'static str,
    pub parts: Vec<PartSpec>,
}

/// A built disk and what it must contain.
pub struct BuiltDisk {
    pub path: PathBuf,
    pub size: u64,
    /// (start, len, content) per partition, in table order.
    pub parts: Vec<(u64, u64, Content)>,
    /// The tree put on every filesystem at build time.
    pub files: Vec<(String, Vec<u8>)>,
    /// What the ext filesystems hold now (after [`BuiltDisk::change_some_files`]).
    pub ext_files: Vec<(String, Vec<u8>)>,
    work: PathBuf,
}

impl DiskSpec {
    /// A typical small PC disk: GPT, FAT32 ESP, ext4 root, swap, a partition
    /// of unknown content, unallocated space at the end.
    pub fn pc(size_mib: u64) -> DiskSpec {
        DiskSpec {
            size_mib,
            label: "gpt",
            parts: vec![
                PartSpec { size_mib: 40, sfdisk_type: "U", content: Content::Fat { bits: 32, opts: vec!["-s", "1"] } },
                PartSpec { size_mib: 32, sfdisk_type: "L", content: Content::Ext { mkfs: "mkfs.ext4", opts: vec![] } },
                PartSpec { size_mib: 8, sfdisk_type: "S", content: Content::Swap },
                PartSpec { size_mib: 4, sfdisk_type: "L", content: Content::Unknown },
            ],
        }
    }

    /// Build the disk as `dir/name` (work files go next to it).
    pub fn build(&self, dir: &Path, name: &str) -> BuiltDisk {
        let path = dir.join(name);
        let work = dir.join(format!("{name}.work"));
        std::fs::create_dir_all(&work).unwrap();
        let size = self.size_mib * MIB;
        garbage_image(&path, size);
        let mut script = format!("label: {}\n", self.label);
        for p in &self.parts {
            script += &format!("size={}M, type={}\n", p.size_mib, p.sfdisk_type);
        }
        sfdisk(&path, &script);
        let starts = partition_starts(&path);
        assert_eq!(starts.len(), self.parts.len());
        let tree = work.join("tree");
        let files = make_tree(&tree);
        let mut parts = Vec::new();
        for (i, (p, &(start, len))) in self.parts.iter().zip(&starts).enumerate() {
            let img = work.join(format!("p{}", i + 1));
            garbage_image(&img, len);
            let s = img.to_str().unwrap();
            match &p.content {
                Content::Ext { mkfs, opts } => {
                    let mut a = vec!["-F", "-q", "-E", "nodiscard", "-d", tree.to_str().unwrap()];
                    a.extend(opts);
                    a.push(s);
                    run(mkfs, &a);
                }
                Content::Fat { bits, opts } => {
                    let b = bits.to_string();
                    let mut a = vec!["-F", b.as_str()];
                    a.extend(opts);
                    a.push(s);
                    run("mkfs.vfat", &a);
                    for e in std::fs::read_dir(&tree).unwrap() {
                        run("mcopy", &["-s", "-i", s, e.unwrap().path().to_str().unwrap(), "::/"]);
                    }
                }
                Content::Swap => {
                    run("mkswap", &[s]);
                }
                Content::Mounted(kind) => {
                    kind.mkfs(s);
                    let lo = Loop::new(&img, false);
                    let mnt = work.join("mnt");
                    let _m = kind.mount(&lo.0, &mnt, false);
                    run("cp", &["-r", &format!("{}/.", tree.display()), mnt.to_str().unwrap()]);
                }
                Content::Unknown => {}
            }
            put(&path, &img, start);
            std::fs::remove_file(&img).unwrap();
            parts.push((start, len, p.content.clone()));
        }
        BuiltDisk { path, size, parts, ext_files: files.clone(), files, work }
    }
}

/// Write a partition table with `sfdisk` from its script format.
pub fn sfdisk(img: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .args(["-q", img.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk (scripts/setup.sh installs it)");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed on {script}");
}

/// (start, len) in bytes of each partition, from `sfdisk --json`.
pub fn partition_starts(disk: &Path) -> Vec<(u64, u64)> {
    let json = run("sfdisk", &["--json", disk.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ss = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["start"].as_u64().unwrap() * ss, p["size"].as_u64().unwrap() * ss))
        .collect()
}

impl BuiltDisk {
    /// Change a few files on the ext partition (rewrite one, add one): what
    /// a day of use does. Updates [`BuiltDisk::files`]. Returns bytes written.
    pub fn change_some_files(&mut self, seed: u64) -> u64 {
        let (start, len) = self.ext_part().expect("an ext partition");
        let img = self.work.join("edit");
        extract(&self.path, start, len, &img);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; 200_000];
        rng.fill_bytes(&mut data);
        let new = self.work.join("new.bin");
        std::fs::write(&new, &data).unwrap();
        let s = img.to_str().unwrap();
        run("debugfs", &["-w", "-R", "rm /small.txt", s]);
        run("debugfs", &["-w", "-R", &format!("write {} /small.txt", new.display()), s]);
        run("debugfs", &["-w", "-R", &format!("write {} /added.bin", new.display()), s]);
        put(&self.path, &img, start);
        std::fs::remove_file(&img).unwrap();
        for f in self.ext_files.iter_mut().filter(|f| f.0 == "small.txt") {
            f.1 = data.clone();
        }
        self.ext_files.push(("added.bin".into(), data));
        400_000
    }

    fn ext_part(&self) -> Option<(u64, u64)> {
        self.parts.iter().find(|p| matches!(p.2, Content::Ext { .. })).map(|p| (p.0, p.1))
    }

    /// Check that `copy` holds this disk: same table, clean filesystems,
    /// identical files, swap recognised, unknown partitions identical.
    pub fn check_copy(&self, copy: &Path) {
        // Same partitions (a larger copy differs only in its last usable
        // sector), and a GPT that sgdisk finds consistent.
        let table = |p: &Path| {
            let v: serde_json::Value = serde_json::from_str(&run("sfdisk", &["--json", p.to_str().unwrap()])).unwrap();
            let t = &v["partitiontable"];
            let parts: Vec<String> = t["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| format!("{} {} {} {}", p["start"], p["size"], p["type"], p["uuid"]))
                .collect();
            (t["label"].to_string(), t["id"].to_string(), parts)
        };
        let (label, _, _) = table(copy);
        assert_eq!(table(&self.path), table(copy), "partition tables differ");
        if label.contains("gpt") {
            let v = run("sgdisk", &["-v", copy.to_str().unwrap()]);
            assert!(v.contains("No problems found"), "sgdisk -v: {v}");
        }
        let out = self.work.join("out");
        for (i, (start, len, content)) in self.parts.iter().enumerate() {
            let p = self.work.join(format!("check-p{}", i + 1));
            extract(copy, *start, *len, &p);
            let s = p.to_str().unwrap();
            match content {
                Content::Ext { .. } => {
                    run("e2fsck", &["-fn", s]);
                    for (name, data) in &self.ext_files {
                        let _ = std::fs::remove_file(&out);
                        run("debugfs", &["-R", &format!("dump /{name} {}", out.display()), s]);
                        assert!(std::fs::read(&out).unwrap() == *data, "partition {}: {name} differs", i + 1);
                    }
                }
                Content::Fat { .. } => {
                    run("fsck.vfat", &["-n", s]);
                    for (name, data) in &self.files {
                        let _ = std::fs::remove_file(&out);
                        run("mcopy", &["-n", "-i", s, &format!("::/{name}"), out.to_str().unwrap()]);
                        assert!(std::fs::read(&out).unwrap() == *data, "partition {}: {name} differs", i + 1);
                    }
                }
                Content::Mounted(kind) => {
                    kind.check(s);
                    let lo = Loop::new(&p, true);
                    let mnt = self.work.join("check-mnt");
                    let m = kind.mount(&lo.0, &mnt, true);
                    for (name, data) in &self.files {
                        let got = std::fs::read(mnt.join(name)).unwrap();
                        assert!(got == *data, "partition {} ({kind:?}): {name} differs", i + 1);
                    }
                    drop(m);
                }
                Content::Swap => {
                    let t = run("blkid", &["-p", "-o", "value", "-s", "TYPE", s]);
                    assert_eq!(t.trim(), "swap", "partition {}", i + 1);
                }
                Content::Unknown => {
                    let o = self.work.join("orig");
                    extract(&self.path, *start, *len, &o);
                    assert!(std::fs::read(&o).unwrap() == std::fs::read(&p).unwrap(), "partition {} differs", i + 1);
                    std::fs::remove_file(&o).unwrap();
                }
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
}
