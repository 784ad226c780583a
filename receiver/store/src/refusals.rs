//! Refusals in the audit trail, aggregated (issue 14, finding 6: every bogus
//! boot claim cost a write transaction and an audit row, 3,000 in 2.6 s).
//!
//! The first refusal of a kind (event and machine) is written at once, so
//! an attack shows in the trail when it starts; the repeats of that kind
//! within the next [`WINDOW`] are counted and written as one row when the
//! window ends ("N more in 60 s from ADDRESSES; last: ..."). A flood of
//! attempts thus costs at most two rows a minute per kind, and no write per
//! attempt. A background thread writes due rows even when the attempts have
//! stopped; dropping the aggregator writes what is pending.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::Db;

/// How long repeats of one kind of refusal are counted before their row.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Most source addresses named in one row.
const MAX_NAMED: usize = 8;

/// Most distinct source addresses counted per kind (memory stays bounded
/// whatever a flood forges).
const MAX_COUNTED: usize = 4096;

#[derive(Debug)]
struct Pending {
    since: Instant,
    repeats: u64,
    sources: BTreeSet<String>,
    last: String,
}

type Key = (Option<String>, String);

/// Aggregates refusals into the audit trail of one store.
pub struct RefusalAudit {
    db: Mutex<Db>,
    window: Duration,
    pending: Mutex<HashMap<Key, Pending>>,
}

impl RefusalAudit {
    /// Aggregates into the database of the store at `store`, over [`WINDOW`].
    pub fn open(store: &std::path::Path) -> anyhow::Result<Arc<RefusalAudit>> {
        RefusalAudit::with_window(store, WINDOW)
    }

    /// Like [`RefusalAudit::open`], over `window`.
    pub fn with_window(store: &std::path::Path, window: Duration) -> anyhow::Result<Arc<RefusalAudit>> {
        let audit =
            Arc::new(RefusalAudit { db: Mutex::new(Db::open(store)?), window, pending: Mutex::new(HashMap::new()) });
        let weak = Arc::downgrade(&audit);
        std::thread::Builder::new().name("refusal-audit".into()).spawn(move || flusher(weak, window))?;
        Ok(audit)
    }

    /// One refusal of `event` (about `machine`, if the request named one)
    /// from the address `from`; `detail` says why.
    pub fn note(&self, machine: Option<&str>, event: &str, from: &str, detail: &str) {
        let key = (machine.map(str::to_owned), event.to_owned());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.write_due(&mut pending, false);
        match pending.get_mut(&key) {
            Some(p) => {
                p.repeats += 1;
                if p.sources.len() < MAX_COUNTED {
                    p.sources.insert(from.to_owned());
                }
                p.last = detail.to_owned();
            }
            None => {
                self.write(machine, event, &format!("from {from}: {detail}"));
                let p = Pending { since: Instant::now(), repeats: 0, sources: BTreeSet::new(), last: String::new() };
                pending.insert(key, p);
            }
        }
    }

    /// Writes every pending count now.
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.write_due(&mut pending, true);
    }

    /// Writes the counts whose window has ended (all with `all`), and forgets
    /// those kinds: their next refusal is written at once again.
    fn write_due(&self, pending: &mut HashMap<Key, Pending>, all: bool) {
        let due: Vec<Key> =
            pending.iter().filter(|(_, p)| all || p.since.elapsed() >= self.window).map(|(k, _)| k.clone()).collect();
        for key in due {
            let p = pending.remove(&key).expect("listed");
            if p.repeats == 0 {
                continue;
            }
            let n = p.sources.len();
            let mut sources = p.sources.into_iter().take(MAX_NAMED).collect::<Vec<_>>().join(", ");
            if n > MAX_NAMED {
                let at_least = if n >= MAX_COUNTED { "at least " } else { "" };
                sources = format!("{at_least}{n} addresses ({sources}, ...)");
            }
            let detail = format!(
                "{} more in {} s from {sources}; last: {}",
                p.repeats,
                p.since.elapsed().as_secs().max(1),
                p.last
            );
            self.write(key.0.as_deref(), &format!("{} (repeated)", key.1), &detail);
        }
    }

    fn write(&self, machine: Option<&str>, event: &str, detail: &str) {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = db.audit(machine, event, detail) {
            tracing::warn!("cannot write {event:?} to the audit trail: {e:#}");
        }
    }
}

impl Drop for RefusalAudit {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes due rows every `window` while the aggregator lives.
fn flusher(audit: Weak<RefusalAudit>, window: Duration) {
    let tick = (window / 4).max(Duration::from_millis(50));
    loop {
        std::thread::sleep(tick);
        let Some(audit) = audit.upgrade() else { return };
        let mut pending = audit.pending.lock().unwrap_or_else(|e| e.into_inner());
        audit.write_due(&mut pending, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(store: &std::path::Path, event: &str) -> Vec<String> {
        let db = Db::open(store).unwrap();
        db.audit_trail(10_000).unwrap().into_iter().filter(|a| a.event.starts_with(event)).map(|a| a.detail).collect()
    }

    #[test]
    fn a_flood_of_refusals_is_two_rows() {
        let d = tempfile::tempdir().unwrap();
        let audit = RefusalAudit::with_window(d.path(), Duration::from_millis(300)).unwrap();
        for i in 0..3000 {
            audit.note(Some("pc1"), "boot token refused", &format!("10.0.0.{}", i % 20), "unknown token");
        }
        // The first at once, the rest once the window ends (the background
        // thread writes it: no further refusal is needed).
        assert_eq!(rows(d.path(), "boot token refused").len(), 1);
        std::thread::sleep(Duration::from_millis(800));
        let r = rows(d.path(), "boot token refused");
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[1].starts_with("2999 more in 1 s from 20 addresses (10.0.0.0, 10.0.0.1,"), "{}", r[1]);
        assert!(r[1].ends_with(", ...); last: unknown token"), "{}", r[1]);
        // Another kind, and the same kind after its window: written at once.
        audit.note(None, "credential refused", "10.0.0.9", "no such machine");
        audit.note(Some("pc1"), "boot token refused", "10.0.0.1", "unknown token");
        assert_eq!(rows(d.path(), "credential refused").len(), 1);
        assert_eq!(rows(d.path(), "boot token refused").len(), 3);
        // Pending repeats are written when the aggregator goes.
        audit.note(Some("pc1"), "boot token refused", "10.0.0.1", "unknown token");
        drop(audit);
        assert_eq!(rows(d.path(), "boot token refused").len(), 4);
    }
}
