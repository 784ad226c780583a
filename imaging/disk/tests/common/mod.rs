//! Helpers shared by the integration tests: real tools on real image files.
#![allow(dead_code)]

use lifeline_disk::fs::UsedMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[allow(unused_imports)]
pub use lifeline_testdisk::{garbage_image, make_tree, run, MIB};

/// Copy only the used byte ranges of `map` (partition at `offset` in `src`)
/// into a new zero-filled file of the same size as `src`: what a restore does.
pub fn copy_used(src: &Path, dst: &Path, offset: u64, map: &UsedMap) {
    let s = File::open(src).unwrap();
    let size = s.metadata().unwrap().len();
    let d = OpenOptions::new().create(true).truncate(true).write(true).open(dst).unwrap();
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
