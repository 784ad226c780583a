//! Files mapped shared and writable: their writes go through memory, not
//! through any system call the capture sees. The capture reports the
//! `mmap`; from then on this watcher keeps an eye on the file for as long as
//! the mapping process has it mapped:
//!
//! - every [`TICK`], if the file's mtime or size moved (the kernel updates
//!   mtime at the first write fault after each writeback, so `msync` and the
//!   periodic writeback both show), it is queued for a check (sent whole, or
//!   as a delta when big);
//! - when the mapping is gone (`munmap`, the process closed or exited), it is
//!   checked one last time, catching the writes since the last mtime change.
//!
//! A big file is not re-checked more often than it can be read: at most
//! every `size / RECHECK_RATE`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel as channel;
use tracing::debug;

use crate::scheduler::{Reconcile, SchedMsg};

pub const TICK: Duration = Duration::from_millis(500);
/// Bytes per second a mapped file is re-read at most.
const RECHECK_RATE: u64 = 100 << 20;

/// A shared writable mapping the capture reported: process and file.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub tgid: u32,
    pub path: PathBuf,
}

struct Watched {
    /// (mtime ns, size) when last checked.
    seen: (i128, u64),
    last_check: Instant,
}

/// Runs on a thread of its own until `mappings` closes.
pub fn run(mappings: channel::Receiver<Mapping>, queue: channel::Sender<SchedMsg>) {
    let mut watched: HashMap<(u32, PathBuf), Watched> = HashMap::new();
    loop {
        match mappings.recv_timeout(TICK) {
            Ok(m) => {
                let seen = stamp(&m.path);
                watched.entry((m.tgid, m.path)).or_insert(Watched { seen, last_check: Instant::now() });
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        }
        let mut checks = Vec::new();
        watched.retain(|(tgid, path), w| {
            let now_stamp = stamp(path);
            if !still_mapped(*tgid, path) {
                debug!(tgid, path = %path.display(), "shared mapping gone; final check");
                checks.push(Reconcile::Path(path.clone()));
                return false;
            }
            let min_gap = Duration::from_secs_f64(now_stamp.1 as f64 / RECHECK_RATE as f64).max(TICK);
            if now_stamp != w.seen && w.last_check.elapsed() >= min_gap {
                debug!(tgid, path = %path.display(), "mapped file changed");
                checks.push(Reconcile::Path(path.clone()));
                w.seen = now_stamp;
                w.last_check = Instant::now();
            }
            true
        });
        if !checks.is_empty() && queue.send(SchedMsg::Reconcile(checks)).is_err() {
            return;
        }
    }
}

fn stamp(path: &Path) -> (i128, u64) {
    match std::fs::metadata(path) {
        Ok(md) => (md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128, md.len()),
        Err(_) => (0, 0),
    }
}

/// Whether process `tgid` still maps `path` (its /proc maps name the file).
fn still_mapped(tgid: u32, path: &Path) -> bool {
    let Ok(maps) = std::fs::read(format!("/proc/{tgid}/maps")) else { return false };
    let want = path.as_os_str().as_encoded_bytes();
    maps.split(|&b| b == b'\n').any(|line| {
        // The path is the last field; a deleted file shows " (deleted)".
        line.ends_with(want) && line.len() > want.len() && line[line.len() - want.len() - 1] == b' '
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_of_this_process_is_seen_and_its_end_noticed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().canonicalize().unwrap().join("m.dat");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let me = std::process::id();
        assert!(!still_mapped(me, &p));
        use std::os::fd::AsRawFd;
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        assert!(still_mapped(me, &p));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (qtx, qrx) = crossbeam_channel::unbounded();
        let t = std::thread::spawn(move || run(rx, qtx));
        tx.send(Mapping { tgid: me, path: p.clone() }).unwrap();
        std::thread::sleep(TICK * 2);
        assert!(qrx.try_recv().is_err(), "nothing changed yet");
        unsafe { libc::munmap(addr, 4096) };
        let got = qrx.recv_timeout(TICK * 4).expect("final check after munmap");
        let SchedMsg::Reconcile(items) = got else { panic!() };
        assert_eq!(items, [Reconcile::Path(p)]);
        drop(tx);
        t.join().unwrap();
    }
}
