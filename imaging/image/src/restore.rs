//! Image → disk, and checking an image without restoring it.
//!
//! Order matters: everything that can refuse runs before the first byte is
//! written. The password was checked when the repository was opened; then
//! the manifest is decoded (it is authenticated), the target is checked
//! (mounted, too small, other sector size) and every chunk the image needs is
//! read, decrypted and hashed. Only then are the used bytes written, on
//! several threads, each cell from its chunk or as zeros.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lifeline_disk::layout;
use lifeline_repo::{ChunkId, Repo, VerifyReport};
use tracing::{info, warn};

use crate::backup::read_cell;
use crate::device::Disk;
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::util::{human_bytes, is_zero};

/// What to do with the target's bytes the image does not cover (free space
/// of the filesystems, unallocated space).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Rest {
    /// Leave them as they are (fastest; filesystems ignore their free space).
    #[default]
    Keep,
    /// Write zeros (the kernel offloads this where the device can).
    Zero,
    /// Discard (TRIM) them: good for SSDs and thin storage.
    Discard,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub rest: Rest,
    /// Read every written byte back and compare it with the image.
    pub read_back: bool,
    pub threads: usize,
    pub progress: bool,
    /// Told how the restore goes (the receiver's job record).
    pub watcher: Option<crate::progress::Watcher>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            rest: Rest::Keep,
            read_back: false,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: false,
            watcher: None,
        }
    }
}

/// Figures of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// Bytes written from chunks and as zeros.
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub verify_seconds: f64,
    pub write_seconds: f64,
    pub read_back_seconds: Option<f64>,
    /// The GPT was moved to the end of a larger target.
    pub gpt_moved: bool,
    pub warnings: Vec<String>,
}

/// Load and decode an image's manifest.
pub fn load(repo: &Repo, name: &str) -> Result<Manifest> {
    let bytes = repo.get_manifest(name)?;
    Manifest::decode(&bytes).with_context(|| format!("image {name:?}"))
}

/// Check every chunk an image needs (read, decrypt, decompress, hash).
pub fn verify(repo: &Repo, m: &Manifest, threads: usize) -> VerifyReport {
    let ids: Vec<ChunkId> = m.chunks.iter().map(|c| c.1).collect();
    repo.verify_chunks(&ids, threads)
}

/// Restore image `name` onto `target` (a block device, an existing image
/// file, or a path where a new image file is created).
pub fn restore(repo: &Repo, name: &str, target: &Path, opts: &RestoreOptions) -> Result<RestoreReport> {
    let m = load(repo, name)?;
    let h = &m.header;
    let src_size = h.source.size;
    let mut report = RestoreReport::default();

    // 1. The target.
    let (disk, created) = Disk::open_target(target, src_size)?;
    let refuse = |why: String| -> Result<RestoreReport> {
        if created {
            let _ = std::fs::remove_file(target);
        }
        bail!("{why}. Nothing was written to {}", target.display())
    };
    let mounted = disk.mounts();
    if !mounted.is_empty() {
        let list: Vec<String> = mounted.into_iter().map(|m| m.0).collect();
        return refuse(format!(
            "{} has mounted filesystems ({}); unmount them first",
            target.display(),
            list.join(", ")
        ));
    }
    let loops = disk.loop_devices_backed_by_this();
    if !loops.is_empty() {
        return refuse(format!(
            "{} is attached to {} (losetup -a); detach it first (losetup -d)",
            target.display(),
            loops.join(", ")
        ));
    }
    if disk.size < src_size {
        return refuse(format!(
            "{} is too small: {} bytes ({}), the image needs {} bytes ({})",
            target.display(),
            disk.size,
            human_bytes(disk.size),
            src_size,
            human_bytes(src_size)
        ));
    }
    if disk.is_block_device() && disk.sector_size != h.source.sector_size && h.table != "none" {
        return refuse(format!(
            "{} has {}-byte sectors but the image was taken from a disk with {}-byte sectors; \
             its partition table would point to the wrong places",
            target.display(),
            disk.sector_size,
            h.source.sector_size
        ));
    }
    let gpt_move = h.table == "gpt" && disk.size > src_size;

    // 2. Every chunk, before anything is written.
    let t = Instant::now();
    let rep = verify(repo, &m, opts.threads);
    report.verify_seconds = t.elapsed().as_secs_f64();
    if !rep.ok() {
        let first: Vec<String> = rep.errors.iter().take(3).map(|e| e.to_string()).collect();
        return refuse(format!(
            "image {name:?} is damaged: {} of {} chunks failed verification ({}); restore \
             another image, or repair the repository from a copy",
            rep.errors.len(),
            rep.checked,
            first.join("; ")
        ));
    }
    info!(chunks = rep.checked, seconds = report.verify_seconds, "image verified");

    // 3. Write.
    let t = Instant::now();
    let extents = m.extents();
    let progress = Progress::start("restore", extents.bytes(), opts.progress).watched(opts.watcher.clone());
    let cells = Mutex::new(extents.cells(h.chunk_size, src_size));
    let counter = progress.counter();
    let results: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<(u64, u64)> {
                    let (mut written, mut zeroed) = (0, 0);
                    loop {
                        let Some(cell) = cells.lock().unwrap().next() else {
                            return Ok((written, zeroed));
                        };
                        match m.chunk_for(cell.index) {
                            Some(id) => {
                                let data = repo.get_chunk(&id)?;
                                if data.len() as u64 != cell.len {
                                    bail!(
                                        "chunk of cell {} has {} bytes, expected {}",
                                        cell.index,
                                        data.len(),
                                        cell.len
                                    );
                                }
                                for r in &cell.used {
                                    let at = (r.start - cell.start) as usize;
                                    write_at(&disk, &data[at..at + r.len() as usize], r.start)?;
                                    written += r.len();
                                }
                            }
                            None if created => {} // a new sparse file reads as zeros already
                            None => {
                                for r in &cell.used {
                                    disk.zero(r.start, r.len()).with_context(|| {
                                        format!("cannot zero {} at byte {}", target.display(), r.start)
                                    })?;
                                    zeroed += r.len();
                                }
                            }
                        }
                        counter.add(cell.used_bytes());
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("restore worker panicked")).collect()
    });
    progress.finish();
    for r in results {
        let (w, z) = r?;
        report.bytes_written += w;
        report.bytes_zeroed += z;
    }
    if opts.rest != Rest::Keep {
        for r in extents.complement(disk.size) {
            match opts.rest {
                Rest::Zero if !created => disk.zero(r.start, r.len()),
                Rest::Discard => disk.discard(r.start, r.len()),
                _ => Ok(()),
            }
            .with_context(|| format!("cannot clear {} at byte {}", target.display(), r.start))?;
        }
    }
    disk.sync().with_context(|| format!("cannot flush {}", target.display()))?;
    report.write_seconds = t.elapsed().as_secs_f64();

    // 4. Read back what was written (before the GPT is moved, so the first
    // cell still matches the image).
    if opts.read_back {
        let t = Instant::now();
        disk.drop_cache();
        let progress = Progress::start("read back", extents.bytes(), opts.progress).watched(opts.watcher.clone());
        for cell in extents.cells(h.chunk_size, src_size) {
            let buf = read_cell(&disk, &cell)?;
            let ok = match m.chunk_for(cell.index) {
                Some(id) => repo.chunk_id(&buf) == id,
                None => is_zero(&buf),
            };
            if !ok {
                bail!(
                    "read-back of {} differs from the image at bytes {}..{}: the device did not \
                     store what was written; check it (dmesg, smartctl) before trusting it",
                    target.display(),
                    cell.start,
                    cell.start + cell.len
                );
            }
            progress.add(cell.used_bytes());
        }
        progress.finish();
        report.read_back_seconds = Some(t.elapsed().as_secs_f64());
    }

    // 5. A larger disk: move the GPT's backup copy to the new end.
    if gpt_move {
        let writes = layout::gpt_resized(&disk, src_size, disk.size, h.source.sector_size)
            .context("cannot move the GPT to the end of the larger disk")?;
        for (off, bytes) in writes {
            write_at(&disk, &bytes, off)?;
        }
        disk.sync()?;
        report.gpt_moved = true;
        report.warnings.push(format!(
            "the target is {} larger than the source; the space after the last partition is unallocated",
            human_bytes(disk.size - src_size)
        ));
    }
    if let Err(e) = disk.reread_partitions() {
        let w = format!(
            "the kernel did not re-read the partition table of {} ({e}); run `partprobe` or reboot",
            target.display()
        );
        warn!("{w}");
        report.warnings.push(w);
    }
    Ok(report)
}

fn write_at(disk: &Disk, data: &[u8], off: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    disk.file.write_all_at(data, off).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
            " (no space left: the filesystem holding the target file is full)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot write {} at byte {off}: {e}{hint}", disk.path.display())
    })
}
