//! Helpers shared by the integration tests: real tools on real image files.
#![allow(dead_code)]

use lifeline_disk::fs::UsedMap;
use rand::RngCore;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

/// Run a tool; panic with its output if it fails. Returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An image file of `size` bytes full of random garbage, so that anything a
/// filesystem leaves free is non-zero: a used block missed by a reader then
/// shows up as corruption in the copy.
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

/// Copy only the used byte ranges of `map` (partition at `offset` in `src`)
/// into a new zero-filled file of the same size as `src`: what a restore does.
pub fn copy_used(src: &Path, dst: &Path, offset: u64, map: &UsedMap) {
    let s = File::open(src).unwrap();
    let size = s.metadata().unwrap().len();
    let d = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dst)
        .unwrap();
    d.set_len(size).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for r in map.byte_ranges() {
        let mut pos = r.start;
        while pos < r.end {
            let n = (r.end - pos).min(MIB) as usize;
            s.read_exact_at(&mut buf[..n], offset + pos).unwrap();
            d.write_all_at(&buf[..n], offset + pos).unwrap();
            pos += n as u64;
        }
    }
}

pub fn tmp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
