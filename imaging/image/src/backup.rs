//! Disk → image.
//!
//! ```text
//! scan (layout + used-block maps) → extents → cells of the chunk grid
//!   → read each cell's used bytes (unused = zeros) → ChunkWriter (hash,
//!     dedup, zstd, encrypt, write on N threads) → manifest
//! ```
//!
//! Reading happens on the calling thread, in disk order, one cell at a time;
//! the repository's bounded pipeline does the CPU work. Memory stays at a few
//! cells per worker whatever the disk size; only the chunk table (40 bytes per
//! stored cell) grows with the disk.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lifeline_disk::ReadAt;
use lifeline_repo::{ChunkWriter, Repo, RepoError, WriterOptions};
use tracing::{info, warn};

use crate::device::Disk;
use crate::extents::Cell;
use crate::manifest::{image_extents, BackupStats, DiskInfo, Header, Manifest};
use crate::progress::Progress;
use crate::scan::{scan, table_string};
use crate::util::{format_utc, hostname, is_zero, now_unix};

/// Cells whose reads are announced to the kernel ahead of reading them
/// (16 × 64 KiB cells: 1 MiB in flight).
const READ_AHEAD_CELLS: usize = 16;

/// Choices for one backup.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Image name; default `<machine>-<UTC date and time>`.
    pub name: Option<String>,
    /// Machine recorded in the image; default this host's name.
    pub machine: Option<String>,
    /// Cell size of the chunk grid; default from the disk size
    /// ([`default_chunk_size`]).
    pub chunk_size: Option<u64>,
    /// Worker threads; default one per CPU.
    pub threads: Option<usize>,
    /// Draw progress on a terminal.
    pub progress: bool,
    /// Image a disk with filesystems mounted read-write (the image may then
    /// be inconsistent).
    pub allow_mounted: bool,
    /// Told how the backup goes (the receiver's job record).
    pub watcher: Option<crate::progress::Watcher>,
}

/// The cell size for a disk of `size` bytes: 64 KiB up to 64 GiB (a fine grid
/// makes the next backup store little: a changed file costs one small cell),
/// then growing so a disk never has more than about a million cells (the
/// chunk table stays ≤ 40 MiB in memory and the repository's file count
/// sane), up to 4 MiB.
pub fn default_chunk_size(size: u64) -> u64 {
    (size >> 20).next_power_of_two().clamp(64 << 10, 4 << 20)
}

/// Back up `source` (a block device or an image file) into `repo`.
pub fn backup(repo: &Repo, source: &Path, opts: &BackupOptions) -> Result<Manifest> {
    let started = Instant::now();
    let created_unix = now_unix();
    let machine = opts.machine.clone().unwrap_or_else(hostname);
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(&machine, created_unix),
    };
    lifeline_repo::validate_image_name(&name)?;
    match repo.get_manifest(&name) {
        Err(RepoError::NoSuchImage { .. }) => {}
        Ok(_) => {
            bail!("an image named {name:?} already exists in the repository; choose another name")
        }
        Err(e) => return Err(e.into()),
    }

    let Some(_lock) = repo.lock(false)? else {
        bail!("a prune is running on {}; back up when it has finished", repo.location());
    };
    let disk = Disk::open_source(source)?;
    let rw: Vec<String> = disk.mounts().into_iter().filter(|m| m.1).map(|m| m.0).collect();
    if !rw.is_empty() {
        if !opts.allow_mounted {
            bail!(
                "{} has filesystems mounted read-write ({}): an image of a disk that changes while it \
                 is read is not consistent. Unmount them, image from Lifeline's boot OS, or pass \
                 --allow-mounted to take the risk",
                source.display(),
                rw.join(", ")
            );
        }
        warn!(mounts = rw.join(", "), "imaging a disk with filesystems mounted read-write");
    }
    let (model, serial) = disk.model_serial();
    let s = scan(&disk, disk.size, disk.sector_size)
        .with_context(|| format!("cannot read the partition table of {}", source.display()))?;
    let chunk_size = opts.chunk_size.unwrap_or_else(|| default_chunk_size(disk.size));
    if !chunk_size.is_power_of_two() || !(4096..=(16 << 20)).contains(&chunk_size) {
        bail!("chunk size {chunk_size} must be a power of two from 4 KiB to 16 MiB");
    }
    let mut header = Header {
        format: 1,
        name: name.clone(),
        machine,
        created_unix,
        tool: concat!("lifeline-image ", env!("CARGO_PKG_VERSION")).into(),
        source: DiskInfo {
            path: source.display().to_string(),
            size: disk.size,
            sector_size: disk.sector_size,
            model,
            serial,
        },
        chunk_size,
        table: table_string(s.layout.table).into(),
        disk_guid: s.layout.disk_guid.map(|g| g.to_string()),
        mbr_signature: s.layout.mbr_signature,
        keep: s.layout.keep.iter().map(|r| (r.start, r.end)).collect(),
        partitions: s.partitions,
        warnings: s.warnings,
        stats: BackupStats::default(),
    };
    let extents = image_extents(&header.keep, &header.partitions, &s.maps);
    let total = extents.bytes();
    info!(
        image = %name,
        source = %source.display(),
        bytes = total,
        disk = disk.size,
        chunk_size,
        "backup starts"
    );

    let threads = opts.threads.unwrap_or_else(|| WriterOptions::default().threads);
    let mut writer = ChunkWriter::new(repo, WriterOptions { threads, queue: threads })?;
    let progress = Progress::start("backup", total, opts.progress).watched(opts.watcher.clone());
    let mut stats = BackupStats::default();
    // Reads are synchronous and small (a cell's used runs); announcing the
    // next cells' runs to the kernel (readahead) keeps the device busy while
    // this thread waits on the current one.
    let mut cells = extents.cells(chunk_size, disk.size);
    let mut ahead: std::collections::VecDeque<Cell> = std::collections::VecDeque::new();
    loop {
        while ahead.len() < READ_AHEAD_CELLS {
            let Some(c) = cells.next() else { break };
            disk.will_need(&c.used);
            ahead.push_back(c);
        }
        let Some(cell) = ahead.pop_front() else { break };
        let buf = read_cell(&disk, &cell)
            .with_context(|| format!("cannot read {} at byte {}", source.display(), cell.start))?;
        progress.add(cell.used_bytes());
        stats.cells += 1;
        if is_zero(&buf) {
            stats.zero_cells += 1;
            continue;
        }
        writer.push(cell.start, buf)?;
    }
    let (refs, w) = writer.finish()?;
    progress.finish();
    stats.image_bytes = total;
    stats.new_chunks = w.new_chunks;
    stats.bytes_new = w.bytes_new;
    stats.bytes_stored = w.bytes_stored;
    stats.seconds = started.elapsed().as_secs_f64();
    header.stats = stats;
    let manifest =
        Manifest { header, maps: s.maps, chunks: refs.iter().map(|r| (r.offset / chunk_size, r.id)).collect() };
    repo.put_manifest(&name, &manifest.encode())?;
    info!(image = %name, seconds = manifest.header.stats.seconds, "backup done");
    Ok(manifest)
}

/// A cell as the image stores it: its used bytes read from the disk, the
/// rest zeros. Backup chunks this; restore's read-back compares it.
pub(crate) fn read_cell(disk: &dyn ReadAt, cell: &Cell) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; cell.len as usize];
    for r in &cell.used {
        let at = (r.start - cell.start) as usize;
        disk.read_exact_at(&mut buf[at..at + r.len() as usize], r.start)?;
    }
    Ok(buf)
}

/// `web1-2026-11-22T063015Z`: sorts by date, valid as an image name.
fn default_name(machine: &str, unix: u64) -> String {
    let t = format_utc(unix); // "YYYY-MM-DD HH:MM:SS UTC"
    let stamp = format!("{}T{}{}{}Z", &t[..10], &t[11..13], &t[14..16], &t[17..19]);
    let m: String =
        machine.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    format!("{}-{stamp}", m.trim_start_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_grows_with_the_disk() {
        assert_eq!(default_chunk_size(4 << 30), 64 << 10);
        assert_eq!(default_chunk_size(64 << 30), 64 << 10);
        assert_eq!(default_chunk_size(256 << 30), 256 << 10);
        assert_eq!(default_chunk_size(1 << 40), 1 << 20);
        assert_eq!(default_chunk_size(16 << 40), 4 << 20);
        assert_eq!(default_name("web 1", 0), "web_1-1970-01-01T000000Z");
    }
}
