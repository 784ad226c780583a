//! The scheduler: the queue unit (a channel fed in capture order), the
//! schedule managing unit ([`coalesce`]) and the schedule processing unit
//! (this loop), which dispatches after the interval, or sooner when enough is
//! pending, and hands sequence-numbered batches to the network backup unit.

pub mod coalesce;
pub mod links;
pub mod dispatch;
pub mod ranges;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use lifeline_capture::FileChange;
use tracing::debug;

use crate::status::Shared;
use coalesce::Coalescer;
use dispatch::{BatchBuilder, OutBatch};

/// What the queue unit carries.
#[derive(Debug)]
pub enum SchedMsg {
    /// A captured change and when the agent received it.
    Change(FileChange, Instant),
    /// What reconciliation found different from the receiver's mirror.
    Reconcile(Vec<Reconcile>),
}

/// A reconciliation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconcile {
    /// Send whatever is at the path now (or remove it from the mirror).
    Path(PathBuf),
    /// Send the whole tree below the path (the mirror lacks it).
    Tree(PathBuf),
}

#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// How long changes are coalesced before they are sent.
    pub interval: Duration,
    /// Dispatch at once when this many bytes of changed ranges are pending.
    pub eager_bytes: u64,
    /// ... or this many items.
    pub eager_items: usize,
    /// Give up on an object that vanished and never reappeared after this long
    /// (reconciliation covers it).
    pub vanished_timeout: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            interval: Duration::from_millis(5),
            eager_bytes: 16 << 20,
            eager_items: 20_000,
            vanished_timeout: Duration::from_secs(10),
        }
    }
}

/// Runs until the queue's senders are gone or the network side hangs up.
pub fn run(
    rx: Receiver<SchedMsg>,
    out: tokio::sync::mpsc::Sender<OutBatch>,
    shared: Arc<Shared>,
    roots: Vec<PathBuf>,
    opts: SchedulerOptions,
) {
    let mut co = Coalescer::new(roots);
    let mut seq = 0u64;
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                apply(&mut co, msg);
                // Take what else is queued before deciding (bounded, so the
                // interval still holds under a flood).
                for msg in rx.try_iter().take(10_000) {
                    apply(&mut co, msg);
                }
                if deadline.is_none() && !co.is_empty() {
                    deadline = Some(Instant::now() + opts.interval);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        publish(&shared, &co);
        let now = Instant::now();
        let due = deadline.is_some_and(|d| now >= d)
            || co.pending_bytes() >= opts.eager_bytes
            || co.len() >= opts.eager_items;
        if co.is_empty() || !due {
            continue;
        }
        if !shared.connected.load(Relaxed) {
            // Keep coalescing until the receiver is back.
            deadline = Some(now + Duration::from_millis(50));
            continue;
        }
        let items = co.take();
        let mut closed = false;
        let mut send = |b: OutBatch| {
            if out.blocking_send(b).is_err() {
                closed = true;
            }
        };
        let mut builder = BatchBuilder::new(&mut seq, &mut send);
        let mut back = Vec::new();
        for item in items {
            if let Some(c) = builder.item(item) {
                back.push(c);
            }
        }
        builder.flush();
        drop(builder);
        if closed {
            return;
        }
        for c in back {
            debug!(local = %c.local.display(), "vanished at send time; deferred");
            if c.since.elapsed() < opts.vanished_timeout {
                co.requeue(c);
            } else {
                debug!("{} vanished and never came back; left to reconciliation", c.local.display());
            }
        }
        // Objects that vanished usually reappear with the next event (a rename
        // in flight); retry them less eagerly than fresh changes.
        deadline = if co.is_empty() { None } else { Some(Instant::now() + opts.interval.max(Duration::from_millis(2)) * 4) };
        publish(&shared, &co);
    }
}

fn apply(co: &mut Coalescer, msg: SchedMsg) {
    match msg {
        SchedMsg::Change(ch, at) => {
            debug!(path = %ch.path.display(), kind = ?ch.kind, ino = ch.ino, "change");
            co.add(&ch, at)
        }
        SchedMsg::Reconcile(items) => {
            let now = Instant::now();
            for item in items {
                match item {
                    Reconcile::Path(p) => co.check(&p, now),
                    Reconcile::Tree(p) => co.tree(&p, now),
                }
            }
        }
    }
}

fn publish(shared: &Shared, co: &Coalescer) {
    shared.pending.store(co.len() as u64, Relaxed);
    shared.oldest_pending_ms.store(co.oldest().map_or(u64::MAX, |t| shared.ms(t)), Relaxed);
}
