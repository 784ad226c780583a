//! Scratch filesystems: a tmpfs or a loop-mounted ext4 per test.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{require_root, require_tool, run_cmd};

/// A filesystem mounted for one test; unmounted (lazily if busy) and its loop
/// device detached on drop.
pub struct ScratchFs {
    mnt: PathBuf,
    loop_dev: Option<String>,
    kind: &'static str,
    // Last, so it is removed after the unmount.
    dir: Option<tempfile::TempDir>,
}

impl ScratchFs {
    /// A tmpfs of `size_mb` MiB.
    pub fn tmpfs(size_mb: u64) -> ScratchFs {
        require_root();
        let (dir, mnt) = Self::mount_point();
        let size = format!("size={size_mb}m,mode=0755");
        run_cmd("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", path_str(&mnt)]);
        ScratchFs::finish(ScratchFs { mnt, loop_dev: None, kind: "tmpfs", dir: Some(dir) })
    }

    /// An ext4 of `size_mb` MiB on a sparse image file attached to a loop
    /// device.
    pub fn ext4(size_mb: u64) -> ScratchFs {
        require_root();
        require_tool("losetup");
        require_tool("mkfs.ext4");
        let (dir, mnt) = Self::mount_point();
        let img = dir.path().join("disk.img");
        let f = fs::File::create(&img).unwrap_or_else(|e| panic!("create {}: {e}", img.display()));
        f.set_len(size_mb << 20).expect("size the image");
        drop(f);
        let dev = run_cmd("losetup", &["-f", "--show", path_str(&img)]).trim().to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        // From here on Drop detaches the device, even if mkfs or mount fails.
        let fs = ScratchFs { mnt, loop_dev: Some(dev.clone()), kind: "ext4", dir: Some(dir) };
        run_cmd("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &dev]);
        run_cmd("mount", &["-t", "ext4", &dev, path_str(&fs.mnt)]);
        ScratchFs::finish(fs)
    }

    fn mount_point() -> (tempfile::TempDir, PathBuf) {
        require_tool("mount");
        require_tool("umount");
        let dir = tempfile::Builder::new()
            .prefix("lifeline-fs-")
            .tempdir()
            .expect("create a directory for the scratch filesystem");
        let mnt = dir.path().canonicalize().expect("canonicalize").join("mnt");
        fs::create_dir(&mnt).unwrap_or_else(|e| panic!("mkdir {}: {e}", mnt.display()));
        (dir, mnt)
    }

    fn finish(fs: ScratchFs) -> ScratchFs {
        let parent = fs.mnt.parent().unwrap().metadata().expect("stat parent").dev();
        let own = fs.mnt.metadata().expect("stat mount point").dev();
        assert_ne!(parent, own, "{} is not a mount point after mounting", fs.mnt.display());
        fs
    }

    /// The mount point (canonical, absolute).
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `path()/rel`, created as a directory (with its parents).
    pub fn subdir(&self, rel: &str) -> PathBuf {
        let p = self.mnt.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// The filesystem's device number (`st_dev`).
    pub fn dev(&self) -> u64 {
        self.mnt.metadata().expect("stat mount point").dev()
    }

    /// `"tmpfs"` or `"ext4"`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The loop device of an ext4 scratch filesystem.
    pub fn loop_device(&self) -> Option<&str> {
        self.loop_dev.as_deref()
    }

    fn is_mounted(&self) -> bool {
        match (self.mnt.parent().and_then(|p| p.metadata().ok()), self.mnt.metadata()) {
            (Some(p), Ok(m)) => p.dev() != m.dev(),
            _ => false,
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

fn quiet(tool: &str, args: &[&str]) -> bool {
    Command::new(tool).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        let mnt = path_str(&self.mnt).to_string();
        if self.is_mounted() {
            let mut done = false;
            for _ in 0..10 {
                if quiet("umount", &[&mnt]) {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done && !quiet("umount", &["-l", &mnt]) {
                eprintln!("warning: could not unmount {mnt}");
            }
        }
        if let Some(dev) = &self.loop_dev {
            // After a lazy unmount the device is still busy; -d then marks it
            // for auto-clear once the last user goes.
            if !quiet("losetup", &["-d", dev]) {
                eprintln!("warning: could not detach {dev}");
            }
        }
        if self.is_mounted() {
            // Still mounted (unmount failed): never delete through it.
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(fs: &ScratchFs) {
        assert_ne!(fs.dev(), fs.path().parent().unwrap().metadata().unwrap().dev());
        let d = fs.subdir("a/b");
        fs::write(d.join("f"), b"hello").unwrap();
        assert_eq!(fs::read(d.join("f")).unwrap(), b"hello");
    }

    #[test]
    fn tmpfs_mounts_and_unmounts() {
        let fs = ScratchFs::tmpfs(16);
        check(&fs);
        let mnt = fs.path().to_path_buf();
        drop(fs);
        assert!(!mnt.exists(), "{} still there after drop", mnt.display());
    }

    #[test]
    fn ext4_mounts_and_unmounts_and_detaches() {
        let fs = ScratchFs::ext4(64);
        check(&fs);
        assert!(fs.path().join("lost+found").is_dir());
        let dev = fs.loop_device().unwrap().to_string();
        let mnt = fs.path().to_path_buf();
        // Busy: a file open on it forces the lazy path.
        let busy = fs::File::open(fs.path().join("a/b/f")).unwrap();
        drop(fs);
        drop(busy);
        assert!(!mnt.exists(), "{} still there after drop", mnt.display());
        let listed = run_cmd("losetup", &["-a"]);
        // Autoclear may take a moment after the last user goes.
        let gone = crate::wait_until(Duration::from_secs(5), || {
            !run_cmd("losetup", &["-a"]).lines().any(|l| l.starts_with(&format!("{dev}:")))
        });
        assert!(gone, "{dev} still attached: {listed}");
    }
}
