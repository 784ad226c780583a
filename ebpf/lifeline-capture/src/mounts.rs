//! Mapping a (filesystem, path inside it) pair from the kernel to an absolute
//! path, through `/proc/self/mountinfo`.
//!
//! A dentry walk ends at its filesystem's root, so the kernel reports paths
//! relative to that root. A filesystem can be mounted several times, and a
//! mount may show only a subtree (bind mounts): each mountinfo line gives the
//! subtree (`root`) and where it appears (`mount point`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Converts a kernel dev_t (MKDEV: major << 20 | minor) to the encoding
/// `stat(2)` returns in `st_dev`.
pub fn kernel_dev_to_user(dev: u32) -> u64 {
    libc::makedev(dev >> 20, dev & 0xfffff)
}

/// The reverse: the kernel dev_t of a `st_dev`.
pub fn user_dev_to_kernel(dev: u64) -> u32 {
    (libc::major(dev) << 20) | (libc::minor(dev) & 0xfffff)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The subtree of the filesystem this mount shows.
    pub root: PathBuf,
    pub mount_point: PathBuf,
}

/// Mounts by kernel dev_t.
#[derive(Default)]
pub struct MountTable {
    by_dev: HashMap<u32, Vec<Mount>>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

impl MountTable {
    pub fn parse(mountinfo: &str) -> MountTable {
        let mut by_dev: HashMap<u32, Vec<Mount>> = HashMap::new();
        for line in mountinfo.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 5 {
                continue;
            }
            let Some((maj, min)) = f[2].split_once(':') else {
                continue;
            };
            let (Ok(maj), Ok(min)) = (maj.parse::<u32>(), min.parse::<u32>()) else {
                continue;
            };
            by_dev
                .entry((maj << 20) | min)
                .or_default()
                .push(Mount { root: unescape(f[3]), mount_point: unescape(f[4]) });
        }
        MountTable { by_dev }
    }

    pub fn read() -> std::io::Result<MountTable> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
    }

    pub fn knows(&self, dev: u32) -> bool {
        self.by_dev.contains_key(&dev)
    }

    /// Every absolute path under which `fs_path` (relative to the root of the
    /// filesystem `dev`) is visible.
    pub fn absolute_paths(&self, dev: u32, fs_path: &Path) -> Vec<PathBuf> {
        let Some(mounts) = self.by_dev.get(&dev) else {
            return Vec::new();
        };
        mounts
            .iter()
            .filter_map(|m| {
                let rest = fs_path.strip_prefix(&m.root).ok()?;
                Some(if rest.as_os_str().is_empty() { m.mount_point.clone() } else { m.mount_point.join(rest) })
            })
            .collect()
    }
}

/// Joins dentry names into a path relative to the filesystem root (`/a/b`).
pub fn fs_path(walk: &[Vec<u8>]) -> PathBuf {
    let mut p = PathBuf::from("/");
    for c in walk {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 7:3 / /mnt/a\\040b rw shared:2 - ext4 /dev/loop3 rw
31 22 7:3 /sub /srv/bind rw shared:2 - ext4 /dev/loop3 rw
";

    #[test]
    fn maps_paths_through_every_mount() {
        let t = MountTable::parse(INFO);
        let dev = (7 << 20) | 3;
        let mut got = t.absolute_paths(dev, Path::new("/sub/x"));
        got.sort();
        assert_eq!(got, vec![PathBuf::from("/mnt/a b/sub/x"), PathBuf::from("/srv/bind/x")]);
        assert_eq!(t.absolute_paths(dev, Path::new("/other")), vec![PathBuf::from("/mnt/a b/other")]);
        assert_eq!(t.absolute_paths(254 << 20, Path::new("/")), vec![PathBuf::from("/")]);
    }

    #[test]
    fn dev_encodings_round_trip() {
        let user = libc::makedev(259, 300);
        assert_eq!(kernel_dev_to_user(user_dev_to_kernel(user)), user);
        assert_eq!(user_dev_to_kernel(libc::makedev(8, 1)), (8 << 20) | 1);
    }
}
