//! The scheduler: the queue unit (a channel fed in capture order), the
//! schedule managing unit ([`coalesce`]) and the schedule processing unit
//! (this loop), which dispatches after the interval, or sooner when enough is
//! pending, and hands sequence-numbered batches to the network backup unit.

pub mod coalesce;
pub mod links;
pub mod dispatch;
pub mod ranges;
pub mod wal;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use lifeline_capture::FileChange;
use tracing::{debug, error, info};

use crate::status::Shared;
use coalesce::{Coalescer, Item};
use dispatch::{BatchBuilder, OutBatch};
use wal::Wal;

/// What the queue unit carries.
#[derive(Debug)]
pub enum SchedMsg {
    /// A captured change and when the agent received it.
    Change(FileChange, Instant),
    /// What reconciliation found different from the receiver's mirror.
    Reconcile(Vec<Reconcile>),
    /// A new stream to the receiver, which has applied the queue's tree ops
    /// up to origin `applied`: replay the log from its checkpoint, and build
    /// batches for stream `epoch` from now on.
    Resume { epoch: u64, applied: u64 },
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

/// The schedule processing unit's state between two turns of its loop.
struct Scheduler {
    co: Coalescer,
    wal: Wal,
    shared: Arc<Shared>,
    opts: SchedulerOptions,
    /// Last op seq handed out.
    seq: u64,
    /// The sender's stream this scheduler builds batches for (0: none yet).
    epoch: u64,
    /// Batches sent and not yet acknowledged: (last op seq, oldest origin).
    inflight: VecDeque<(u64, u64)>,
    last_commit: Instant,
}

/// Dispatch rounds the queue waits behind an object that vanished at send
/// time before sending past it (about 4 intervals each).
const HOLD_ROUNDS: u32 = 5;

/// How often the log is made durable while nothing is dispatched, and how
/// often acknowledgements move its checkpoint.
const LOG_SYNC_EVERY: Duration = Duration::from_millis(50);

/// Runs until the queue's senders are gone or the network side hangs up.
pub fn run(
    rx: Receiver<SchedMsg>,
    out: tokio::sync::mpsc::Sender<OutBatch>,
    shared: Arc<Shared>,
    roots: Vec<PathBuf>,
    opts: SchedulerOptions,
    wal: Wal,
) {
    let mut s = Scheduler {
        co: Coalescer::new(roots),
        wal,
        shared,
        opts,
        seq: 0,
        epoch: 0,
        inflight: VecDeque::new(),
        last_commit: Instant::now(),
    };
    let mut deadline: Option<Instant> = None;
    loop {
        let mut wait = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
        if !s.inflight.is_empty() || s.wal.is_dirty() {
            wait = wait.min(LOG_SYNC_EVERY);
        }
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                s.apply(msg, &mut deadline);
                // Take what else is queued before deciding (bounded, so the
                // interval still holds under a flood).
                for msg in rx.try_iter().take(10_000) {
                    s.apply(msg, &mut deadline);
                }
                if deadline.is_none() && !s.co.is_empty() {
                    deadline = Some(Instant::now() + s.opts.interval);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = s.wal.commit();
                return;
            }
        }
        s.housekeeping();
        publish(&s.shared, &s.co);
        let now = Instant::now();
        let due = deadline.is_some_and(|d| now >= d)
            || s.co.pending_bytes() >= s.opts.eager_bytes
            || s.co.len() >= s.opts.eager_items;
        if s.co.is_empty() || !due {
            continue;
        }
        if s.epoch == 0 || !s.shared.connected.load(Relaxed) {
            // Keep coalescing until the receiver is back.
            deadline = Some(now + Duration::from_millis(50));
            continue;
        }
        if !s.dispatch(&out) {
            return;
        }
        // Objects that vanished usually reappear with the next event (a rename
        // in flight); retry them less eagerly than fresh changes.
        deadline = if s.co.is_empty() { None } else { Some(Instant::now() + s.opts.interval.max(Duration::from_millis(2)) * 4) };
        publish(&s.shared, &s.co);
    }
}

impl Scheduler {
    fn apply(&mut self, msg: SchedMsg, deadline: &mut Option<Instant>) {
        match msg {
            SchedMsg::Change(ch, at) => {
                debug!(path = %ch.path.display(), kind = ?ch.kind, ino = ch.ino, "change");
                let origin = match self.wal.append(&ch) {
                    Ok(o) => o,
                    Err(e) => {
                        let msg = format!(
                            "cannot write the queue log in {}: {e}; changes are kept in memory only until \
                             this is fixed (free space on that filesystem)",
                            self.wal.dir().display()
                        );
                        error!("{msg}");
                        self.shared.set_error(msg);
                        // Unguarded: applied again on a replay, which is safe.
                        0
                    }
                };
                self.co.add(&ch, origin, at)
            }
            SchedMsg::Reconcile(items) => {
                let now = Instant::now();
                for item in items {
                    match item {
                        Reconcile::Path(p) => self.co.check(&p, now),
                        Reconcile::Tree(p) => self.co.tree(&p, now),
                    }
                }
            }
            SchedMsg::Resume { epoch, applied } => {
                self.epoch = epoch;
                self.inflight.clear();
                self.co.resume(applied);
                let now = Instant::now();
                let mut n = 0u64;
                let co = &mut self.co;
                let replayed = self.wal.replay(|l| {
                    n += 1;
                    co.add(&l.change, l.origin, now)
                });
                if let Err(e) = replayed {
                    error!("cannot read the queue log back: {e}; a reconciliation covers what it held");
                }
                self.shared.replays.fetch_add(1, Relaxed);
                info!(epoch, receiver_applied = applied, changes = n, "replaying the unacknowledged queue");
                *deadline = Some(now);
            }
        }
    }

    /// Forgets acknowledged batches, moves the log's checkpoint, and makes
    /// the log durable now and then while nothing is sent.
    fn housekeeping(&mut self) {
        let acked = self.shared.acked_seq.load(Relaxed);
        while self.inflight.front().is_some_and(|&(last, _)| last <= acked) {
            self.inflight.pop_front();
        }
        if self.last_commit.elapsed() < LOG_SYNC_EVERY {
            return;
        }
        self.last_commit = Instant::now();
        let low_water = self
            .inflight
            .iter()
            .map(|&(_, o)| o)
            .chain([self.co.min_origin(), self.wal.next_origin()])
            .min()
            .expect("not empty");
        if let Err(e) = self.wal.set_checkpoint(low_water) {
            error!("cannot update the queue log in {}: {e}", self.wal.dir().display());
        }
        self.shared.queue_log_bytes.store(self.wal.disk_bytes(), Relaxed);
        self.shared.unacked_changes.store(self.wal.next_origin() - self.wal.checkpoint(), Relaxed);
    }

    /// Sends everything pending; false when the network side is gone.
    fn dispatch(&mut self, out: &tokio::sync::mpsc::Sender<OutBatch>) -> bool {
        // What is sent must be in the log first: a crash after sending and
        // before the acknowledgement replays it. (Written now; made durable
        // on the log's own thread within milliseconds, so that fdatasync
        // latency never delays replication.)
        if let Err(e) = self.wal.commit() {
            error!("cannot sync the queue log in {}: {e}", self.wal.dir().display());
        }
        self.last_commit = Instant::now();
        let mut items = self.co.take().into_iter();
        let mut closed = false;
        let inflight = &mut self.inflight;
        let mut send = |b: OutBatch| {
            inflight.push_back((b.last_seq, b.min_origin));
            if out.blocking_send(b).is_err() {
                closed = true;
            }
        };
        let mut builder = BatchBuilder::new(&mut self.seq, self.epoch, &mut send);
        let mut held = Vec::new();
        let mut back = Vec::new();
        while let Some(item) = items.next() {
            let Some(mut c) = builder.item(item) else { continue };
            // The object vanished since its change: renamed or replaced, and
            // that event is usually on its way. Later ops may refer to it by
            // the name it had (a link, a rename), so everything after it
            // waits, in order, for a few rounds.
            if c.deferrals < HOLD_ROUNDS {
                debug!(local = %c.local.display(), "vanished at send time; holding the rest of the queue");
                c.deferrals += 1;
                held.push(Item::Content(c));
                held.extend(items.by_ref());
                break;
            }
            back.push(c);
        }
        builder.flush();
        drop(builder);
        if closed {
            return false;
        }
        self.co.restore(held);
        // Still gone after that: sent past, and retried by its current name.
        for c in back {
            debug!(local = %c.local.display(), "vanished at send time; deferred");
            if c.since.elapsed() < self.opts.vanished_timeout {
                self.co.requeue(c);
            } else {
                debug!("{} vanished and never came back; left to reconciliation", c.local.display());
            }
        }
        true
    }
}

fn publish(shared: &Shared, co: &Coalescer) {
    shared.pending.store(co.len() as u64, Relaxed);
    shared.oldest_pending_ms.store(co.oldest().map_or(u64::MAX, |t| shared.ms(t)), Relaxed);
}
