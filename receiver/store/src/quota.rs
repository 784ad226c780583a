//! Quotas: how much of the store a machine may fill, and the free space the
//! store keeps for itself whatever the quotas say (issue 14, finding 3: one
//! credential filled the disk at 122 MiB/s).
//!
//! Every service that writes for a machine (the mirror, the image store)
//! charges what it is about to write to [`Quotas::charge`] first, and writes
//! nothing when it is refused: the refusal is a `RESOURCE_EXHAUSTED` status
//! whose message says what is full and what to do, and the agent keeps its
//! changes queued until there is room.
//!
//! A machine's usage (bytes allocated by its mirror and image repository,
//! entries in its mirror) is measured by walking its directories once, then
//! kept as an estimate that only grows: every charge adds what may be
//! written (data bytes are an upper bound of what they allocate; each data,
//! mkdir, symlink or link op may be a new entry). When the estimate crosses
//! a limit, the directories are walked again for the truth (overwrites and
//! deletions made it smaller), so walks happen only near the limit.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeline_core::credential::MachineName;
use tonic::Status;
use tracing::{info, warn};

use crate::db::quota::Limits;
use crate::{Db, StoreLayout};

/// Free space the store keeps by default (`lifeline-receiver --reserve-free`).
pub const DEFAULT_RESERVE: u64 = 1 << 30;

/// How long limits read from the database are used before reading them
/// again: `machine set-quota` takes effect within this.
const LIMITS_TTL: Duration = Duration::from_secs(2);

/// What a machine fills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

struct MachineUsage {
    limits: Limits,
    limits_read: Instant,
    /// Measured, or None before the first charge against a limit.
    usage: Option<Usage>,
    /// Charged since the last measurement (usage includes it).
    charged_since: bool,
}

/// The quotas of one store, shared by its services.
pub struct Quotas {
    store: StoreLayout,
    reserve: u64,
    db: Mutex<Db>,
    machines: Mutex<HashMap<MachineName, Arc<Mutex<MachineUsage>>>>,
}

impl Quotas {
    /// Quotas over `store`, keeping `reserve` bytes free on its filesystem.
    pub fn new(store: &StoreLayout, reserve: u64) -> anyhow::Result<Quotas> {
        Ok(Quotas {
            store: store.clone(),
            reserve,
            db: Mutex::new(Db::open(store.root())?),
            machines: Mutex::new(HashMap::new()),
        })
    }

    /// Charges `bytes` and `files` that `machine` is about to write: `Ok`,
    /// or the `RESOURCE_EXHAUSTED` status to answer instead of writing.
    /// May walk the machine's directories (blocking: call it off the async
    /// threads).
    pub fn charge(&self, machine: &MachineName, bytes: u64, files: u64) -> Result<(), Status> {
        self.check_reserve(bytes)?;
        let entry = self.machines.lock().unwrap_or_else(|e| e.into_inner()).get(machine).cloned();
        let entry = match entry {
            Some(e) => e,
            None => {
                let e = Arc::new(Mutex::new(MachineUsage {
                    limits: self.read_limits(machine)?,
                    limits_read: Instant::now(),
                    usage: None,
                    charged_since: false,
                }));
                self.machines.lock().unwrap_or_else(|e| e.into_inner()).entry(machine.clone()).or_insert(e).clone()
            }
        };
        let mut m = entry.lock().unwrap_or_else(|e| e.into_inner());
        if m.limits_read.elapsed() >= LIMITS_TTL {
            m.limits = self.read_limits(machine)?;
            m.limits_read = Instant::now();
        }
        if m.limits.is_unlimited() {
            // Nothing to keep count of; measured afresh if a limit is set.
            m.usage = None;
            return Ok(());
        }
        let mut usage = match m.usage {
            Some(u) => u,
            None => self.measure(machine),
        };
        let over = |u: Usage, l: Limits| {
            l.bytes.is_some_and(|b| u.bytes + bytes > b) || l.files.is_some_and(|f| u.files + files > f)
        };
        if over(usage, m.limits) && (m.charged_since || m.usage.is_none()) {
            // The estimate only grows: find out what is really there.
            usage = self.measure(machine);
            m.charged_since = false;
        }
        m.usage = Some(usage);
        if over(usage, m.limits) {
            warn!(%machine, used_bytes = usage.bytes, used_files = usage.files, bytes, files, "quota: refused");
            return Err(Status::resource_exhausted(format!(
                "machine {machine} is at its quota on this receiver: it uses {} and {} entries, may use {}; \
                 nothing was written and the changes wait on the machine. The receiver's operator raises it with \
                 `lifeline-receiver machine set-quota {machine} --bytes SIZE --files N`",
                human_bytes(usage.bytes),
                usage.files,
                crate::db::quota::describe(m.limits),
            )));
        }
        m.usage = Some(Usage { bytes: usage.bytes + bytes, files: usage.files + files });
        m.charged_since = true;
        Ok(())
    }

    /// What `machine` fills now, walking its mirror and image repository.
    pub fn measure(&self, machine: &MachineName) -> Usage {
        let started = Instant::now();
        let mut u = Usage::default();
        let mirror = self.store.mirror(machine);
        add_tree(&mirror, &mut u, true);
        add_tree(&self.store.image_store(machine), &mut u, false);
        info!(%machine, bytes = u.bytes, files = u.files, took_ms = started.elapsed().as_millis() as u64, "quota: usage measured");
        u
    }

    fn read_limits(&self, machine: &MachineName) -> Result<Limits, Status> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        Ok(db.quota(machine.as_str()).map_err(crate::access::db_unavailable)?.unwrap_or_default())
    }

    /// The store's filesystem keeps `reserve` bytes free after `bytes` more.
    fn check_reserve(&self, bytes: u64) -> Result<(), Status> {
        if self.reserve == 0 {
            return Ok(());
        }
        let free = match rustix::fs::statvfs(self.store.root()) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            Err(e) => {
                warn!("cannot read the free space of the store {}: {e}", self.store.root().display());
                return Ok(());
            }
        };
        if free < self.reserve.saturating_add(bytes) {
            warn!(free, reserve = self.reserve, bytes, "store nearly full: write refused");
            return Err(Status::resource_exhausted(format!(
                "the receiver's store is nearly full ({} free, {} kept in reserve); nothing was written and the \
                 changes wait on the machine. The receiver's operator frees space or grows the disk",
                human_bytes(free),
                human_bytes(self.reserve)
            )));
        }
        Ok(())
    }
}

/// Adds what is under `root` (allocated bytes; and entries when `entries`)
/// to `u`. Never follows a symlink; what vanishes meanwhile is skipped.
fn add_tree(root: &Path, u: &mut Usage, entries: bool) {
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false).into_iter().flatten() {
        if let Ok(md) = e.metadata() {
            u.bytes += md.blocks() * 512;
            if entries {
                u.files += 1;
            }
        }
    }
}

/// "0 B", "512 B", "1.5 KiB", "50.0 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

/// Parses a size: a number with an optional K, M, G, T or P suffix (powers
/// of 1024; "KiB", "GB" and the like are accepted too).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_scaled(s, 1024)
}

/// Parses a count: a number with an optional K, M or G suffix (powers of
/// 1000).
pub fn parse_count(s: &str) -> Result<u64, String> {
    parse_scaled(s, 1000)
}

fn parse_scaled(s: &str, base: u64) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a number (like 500, 50G or 2M)"))?;
    let exp = match suffix.trim().trim_end_matches(['B', 'b']).trim_end_matches('i').to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        _ => return Err(format!("{s:?}: unknown unit {suffix:?} (K, M, G, T or P)")),
    };
    n.checked_mul(base.pow(exp)).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts() {
        assert_eq!(parse_bytes("50G").unwrap(), 50 << 30);
        assert!(parse_bytes("1.5G").is_err());
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert_eq!(parse_bytes("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_count("2M").unwrap(), 2_000_000);
        assert!(parse_bytes("5X").is_err());
        assert_eq!(human_bytes(50 << 30), "50.0 GiB");
        assert_eq!(human_bytes(100), "100 B");
    }

    /// Over the limit only once what is really there is over it: the
    /// estimate grows with every charge, and a walk corrects it.
    #[test]
    fn refuses_only_what_really_exceeds_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(d.path());
        let m = MachineName::new("m1").unwrap();
        let mut db = Db::open(d.path()).unwrap();
        db.add_machine(&m, &[0; 32], "").unwrap();
        let q = Quotas::new(&layout, 0).unwrap();
        // No limit: anything goes.
        q.charge(&m, 1 << 40, 1 << 30).unwrap();
        db.set_quota(&m, Limits { bytes: Some(1 << 20), files: Some(10) }).unwrap();
        std::thread::sleep(LIMITS_TTL);
        let mirror = layout.mirror(&m);
        std::fs::create_dir_all(&mirror).unwrap();
        // Overwriting one 64 KiB file again and again: charged each time,
        // but a walk finds one file, and the writes go on.
        for _ in 0..40 {
            q.charge(&m, 64 << 10, 1).unwrap();
            std::fs::write(mirror.join("f"), vec![1u8; 64 << 10]).unwrap();
        }
        // Twenty more entries do not fit.
        let e = q.charge(&m, 0, 20).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("set-quota m1"), "{}", e.message());
        // Neither does a 2 MiB write.
        assert!(q.charge(&m, 2 << 20, 1).is_err());
        // Raised: it fits.
        db.set_quota(&m, Limits { bytes: Some(8 << 20), files: Some(100) }).unwrap();
        std::thread::sleep(LIMITS_TTL);
        q.charge(&m, 2 << 20, 20).unwrap();
    }

    /// The store keeps its reserve free whatever the quotas say.
    #[test]
    fn the_free_space_reserve_refuses_what_would_eat_into_it() {
        let d = tempfile::tempdir().unwrap();
        let layout = StoreLayout::new(d.path());
        let m = MachineName::new("m1").unwrap();
        Db::open(d.path()).unwrap().add_machine(&m, &[0; 32], "").unwrap();
        let s = rustix::fs::statvfs(d.path()).unwrap();
        let free = s.f_bavail * s.f_frsize;
        // A reserve of all but 64 MiB (other tests write beside this one):
        // 1 MiB fits, 1 GiB does not.
        let q = Quotas::new(&layout, free - (64 << 20)).unwrap();
        q.charge(&m, 1 << 20, 1).unwrap();
        let e = q.charge(&m, 1 << 30, 1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("store is nearly full"), "{}", e.message());
    }
}
