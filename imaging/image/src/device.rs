//! The disk being imaged or restored: a block device or an image file.
//!
//! Everything that touches the kernel's view of a device lives here: size and
//! sector size, model and serial from sysfs, "is anything on it mounted?",
//! exclusive opening, zeroing, discarding and re-reading the partition table.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An opened disk.
pub struct Disk {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    pub sector_size: u32,
    /// `Some((major, minor))` for a block device.
    pub devno: Option<(u32, u32)>,
}

impl Disk {
    /// Open for reading (backups).
    pub fn open_source(path: &Path) -> Result<Disk> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Self::from_file(path, file)
    }

    /// Open for writing (restores). A block device is opened exclusively
    /// (`O_EXCL`): the kernel refuses while a filesystem on it is mounted or
    /// another program holds it. A missing path is created as an image file
    /// of `create_size` bytes (sparse, so it reads as zeros).
    pub fn open_target(path: &Path, create_size: u64) -> Result<(Disk, bool)> {
        let created = !path.exists();
        if created {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("cannot create the image file {}", path.display()))?;
            f.set_len(create_size).with_context(|| format!("cannot size {}", path.display()))?;
        }
        let is_block = std::fs::metadata(path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .file_type()
            .is_block_device();
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if is_block {
            opts.custom_flags(libc::O_EXCL);
        }
        let file = match opts.open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
                "{} is in use (a filesystem on it is mounted, or another program holds it); \
                 unmount it first — restoring over a mounted disk would corrupt it",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot open {} for writing", path.display())),
        };
        Ok((Self::from_file(path, file)?, created))
    }

    fn from_file(path: &Path, file: File) -> Result<Disk> {
        let (size, sector_size) = lifeline_disk::disk_geometry(&file)
            .with_context(|| format!("cannot read the size of {}", path.display()))?;
        let meta = file.metadata()?;
        let devno = meta.file_type().is_block_device().then(|| (libc::major(meta.rdev()), libc::minor(meta.rdev())));
        Ok(Disk { path: path.to_path_buf(), file, size, sector_size, devno })
    }

    pub fn is_block_device(&self) -> bool {
        self.devno.is_some()
    }

    /// `/sys/dev/block/MAJ:MIN`, the device's sysfs directory.
    fn sysfs(&self) -> Option<PathBuf> {
        let (ma, mi) = self.devno?;
        std::fs::canonicalize(format!("/sys/dev/block/{ma}:{mi}")).ok()
    }

    /// Model and serial as the kernel reports them (absent for loop devices
    /// and image files).
    pub fn model_serial(&self) -> (Option<String>, Option<String>) {
        let Some(dir) = self.sysfs() else {
            return (None, None);
        };
        let read = |p: PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let model = read(dir.join("device/model"));
        let serial = read(dir.join("device/serial")).or_else(|| read(dir.join("serial")));
        (model, serial)
    }

    /// Mount points of filesystems on this device or its partitions, with
    /// whether they are mounted read-write. Found through
    /// `/proc/self/mountinfo` (device numbers), so it also catches a mount
    /// through another device node name.
    pub fn mounts(&self) -> Vec<(String, bool)> {
        let Some((ma, mi)) = self.devno else {
            return Vec::new();
        };
        let mut devs = vec![format!("{ma}:{mi}")];
        if let Some(dir) = self.sysfs() {
            // Partitions are subdirectories holding a `partition` file.
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.path().join("partition").exists() {
                        if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                            devs.push(d.trim().to_string());
                        }
                    }
                }
            }
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut out = Vec::new();
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 5 && devs.iter().any(|d| d == f[2]) {
                let rw = f[5].split(',').any(|o| o == "rw");
                out.push((f[4].to_string(), rw));
            }
        }
        out
    }

    /// Loop devices whose backing file is this (image) file: restoring into
    /// a file a mounted loop device reads from would corrupt that mount.
    pub fn loop_devices_backed_by_this(&self) -> Vec<String> {
        if self.is_block_device() {
            return Vec::new();
        }
        let Ok(me) = std::fs::canonicalize(&self.path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in std::fs::read_dir("/sys/block").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                if Path::new(b.trim()) == me {
                    out.push(format!("/dev/{name}"));
                }
            }
        }
        out
    }

    /// Write zeros over `[off, off + len)`: the kernel's write-zeroes for a
    /// block device (offloaded where the device can), a zero-range fallocate
    /// for a file; plain writes where neither works.
    pub fn zero(&self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let ok = if self.is_block_device() {
            aligned(off, len, self.sector_size) && {
                let range = [off, len];
                // SAFETY: BLKZEROOUT reads a [u64; 2] through the pointer.
                unsafe { libc::ioctl(fd, BLKZEROOUT as _, range.as_ptr()) == 0 }
            }
        } else {
            // SAFETY: plain syscall on our descriptor.
            unsafe {
                libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off as i64, len as i64) == 0
            }
        };
        if ok {
            return Ok(());
        }
        let buf = vec![0u8; (1 << 20).min(len) as usize];
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(buf.len() as u64) as usize;
            self.file.write_all_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Tell the device `[off, off + len)` is unused (TRIM). For a file: punch
    /// a hole. Best effort: devices that cannot discard keep their data.
    pub fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        if !self.is_block_device() {
            return self.zero(off, len);
        }
        if len == 0 || !aligned(off, len, self.sector_size) {
            return Ok(());
        }
        let range = [off, len];
        // SAFETY: BLKDISCARD reads a [u64; 2] through the pointer.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ask the kernel to start reading these ranges now (readahead); reads
    /// of them later find the data in the page cache. Best effort.
    pub fn will_need(&self, ranges: &[lifeline_disk::Range]) {
        for r in ranges {
            // SAFETY: plain syscall on our descriptor; the result is advisory.
            unsafe {
                libc::posix_fadvise(self.file.as_raw_fd(), r.start as i64, r.len() as i64, libc::POSIX_FADV_WILLNEED);
            }
        }
    }

    /// Flush written data to stable storage.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// Drop this device's cached pages so the next reads come from the media
    /// (used before reading a restore back).
    pub fn drop_cache(&self) {
        let fd = self.file.as_raw_fd();
        // SAFETY: plain syscalls on our descriptor; failures only mean the
        // read-back may be served from cache.
        unsafe {
            if self.is_block_device() {
                libc::ioctl(fd, BLKFLSBUF as _, 0);
            }
            libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }

    /// Ask the kernel to re-read the partition table after a restore, so the
    /// restored partitions appear as devices.
    pub fn reread_partitions(&self) -> io::Result<()> {
        if !self.is_block_device() {
            return Ok(());
        }
        // SAFETY: BLKRRPART takes no argument.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), BLKRRPART as _, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl lifeline_disk::ReadAt for Disk {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, off)
    }
}

fn aligned(off: u64, len: u64, ss: u32) -> bool {
    off % ss as u64 == 0 && len % ss as u64 == 0
}

// From <linux/fs.h>: _IO(0x12, 95), _IO(0x12, 119), _IO(0x12, 127), _IO(0x12, 97).
const BLKRRPART: libc::c_ulong = 0x125F;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127F;
const BLKFLSBUF: libc::c_ulong = 0x1261;
