//! The scheduler, in the design's words (`DESIGN.md`, "Words"):
//!
//! - the queue unit: the channel this thread reads ([`SchedMsg`], fed in
//!   capture order) and its write-ahead log, [`queue_log::QueueLog`];
//! - the schedule managing unit: [`coalescer::Coalescer`];
//! - the schedule processing unit: [`dispatcher`], which dispatches after the
//!   interval, or sooner when enough is pending, and hands sequence-numbered
//!   batches to the network backup unit (`crate::sender`).
//!
//! This module holds the loop that ties them together: it takes in
//! messages, keeps the log's checkpoint, and decides when to dispatch.

pub mod coalescer;
pub mod dispatcher;
pub mod hardlinks;
pub mod queue_log;
pub mod ranges;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{self as channel, RecvTimeoutError};
use lifeline_capture::FileChange;
use tracing::{debug, error, info, warn};

use crate::status::{Controls, Counters};
use coalescer::Coalescer;
use dispatcher::{Outgoing, Unsent, HOLD_FRESH};
use queue_log::QueueLog;

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
    /// The receiver made every op up to `seq` durable: the batches that
    /// carried them leave the scheduler's in-flight list, and their changes
    /// the queue log at the next checkpoint. (From the sender, in the order
    /// it read the acknowledgements: the scheduler reacts to them instead of
    /// polling a figure.)
    Acked { seq: u64 },
    /// The stream to the receiver broke: dispatch holds until the next
    /// `Resume` (batches built meanwhile would be dropped by the sender).
    Disconnected,
}

/// A reconciliation finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconcile {
    /// Send whatever is at the path now (or remove it from the mirror),
    /// whole.
    Path(PathBuf),
    /// The mirror holds an older regular file at the path, `mirror_size`
    /// bytes long: like `Path`, but a big regular file is sent as a delta
    /// against the mirror's copy.
    Delta { path: PathBuf, mirror_size: u64 },
    /// Send the whole tree below the path (the mirror lacks it).
    Tree(PathBuf),
    /// `to` is another name of the file at `from` (`(st_dev, st_ino)` `id`),
    /// which the mirror does not have as a link: link it there.
    Link { from: PathBuf, to: PathBuf, id: (u64, u64) },
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
    /// Reconciliation's files from this size are sent as deltas (none:
    /// always whole); see `dispatcher::DeltaJob`.
    pub delta_min_size: Option<u64>,
    /// The queue log is dropped past this size (see `AgentConfig::queue_max_mib`).
    pub queue_max_bytes: u64,
    /// Where to ask for a reconciliation (for what the scheduler gives up
    /// on); `None` in tests.
    pub reconcile: Option<Arc<tokio::sync::Notify>>,
    /// The control socket's switches (the scheduler obeys `pause`).
    pub controls: Arc<Controls>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            interval: Duration::from_millis(5),
            eager_bytes: 16 << 20,
            eager_items: 20_000,
            vanished_timeout: Duration::from_secs(10),
            delta_min_size: None,
            queue_max_bytes: 1 << 30,
            reconcile: None,
            controls: Arc::default(),
        }
    }
}

/// The scheduler's state between two turns of its loop.
struct Scheduler {
    co: Coalescer,
    queue_log: QueueLog,
    counters: Arc<Counters>,
    opts: SchedulerOptions,
    /// Last op seq handed out.
    seq: u64,
    /// The sender's stream this scheduler builds batches for (0: none yet).
    epoch: u64,
    /// Whether the sender has a stream (between `Resume` and `Disconnected`).
    connected: bool,
    /// Batches sent and not yet acknowledged: (last op seq, oldest origin).
    inflight: VecDeque<(u64, u64)>,
    /// An acknowledgement arrived since the log's checkpoint last moved.
    acked_since_checkpoint: bool,
    last_commit: Instant,
    /// The log was dropped for its size: the coalescer holds more than it.
    log_dropped: bool,
    /// Names whose content was sent past (kept across dispatches: what
    /// refers to them may wait behind another vanished object).
    unsent: Unsent,
}

/// How often the log is made durable while nothing is dispatched, and how
/// often acknowledgements move its checkpoint.
const LOG_SYNC_EVERY: Duration = Duration::from_millis(50);

/// Runs until the queue's senders are gone or the network side hangs up.
pub fn run(
    rx: channel::Receiver<SchedMsg>,
    out: tokio::sync::mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
    roots: Vec<PathBuf>,
    opts: SchedulerOptions,
    queue_log: QueueLog,
) {
    let mut s = Scheduler {
        co: Coalescer::new(roots),
        queue_log,
        counters,
        opts,
        seq: 0,
        epoch: 0,
        connected: false,
        inflight: VecDeque::new(),
        acked_since_checkpoint: false,
        last_commit: Instant::now(),
        log_dropped: false,
        unsent: Unsent::default(),
    };
    let mut deadline: Option<Instant> = None;
    loop {
        let mut wait = deadline.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(Instant::now()));
        // The log waits to be made durable, or its checkpoint to move past
        // what was acknowledged.
        if s.acked_since_checkpoint || s.queue_log.is_dirty() {
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
                let _ = s.queue_log.commit();
                return;
            }
        }
        s.housekeeping();
        publish(&s.counters, &s.co);
        let now = Instant::now();
        let due = deadline.is_some_and(|d| now >= d)
            || s.co.pending_bytes() >= s.opts.eager_bytes
            || s.co.len() >= s.opts.eager_items;
        if s.co.is_empty() || !due {
            continue;
        }
        // Paused (the GUI's or CLI's `pause`): hold sending exactly as while
        // disconnected; changes are still captured, logged and coalesced.
        if s.epoch == 0 || !s.connected || s.opts.controls.paused() {
            // Keep coalescing until the receiver is back (or resumed).
            deadline = Some(now + Duration::from_millis(50));
            continue;
        }
        if !s.dispatch(&out) {
            return;
        }
        // Objects that vanished usually reappear with the next event (a rename
        // in flight); retry them less eagerly than fresh changes.
        deadline = if s.co.is_empty() {
            None
        } else {
            Some(Instant::now() + s.opts.interval.max(Duration::from_millis(2)) * 4)
        };
        publish(&s.counters, &s.co);
    }
}

impl Scheduler {
    fn apply(&mut self, msg: SchedMsg, deadline: &mut Option<Instant>) {
        match msg {
            SchedMsg::Change(ch, at) => {
                debug!(path = %ch.path.display(), kind = ?ch.kind, ino = ch.ino, "change");
                let origin = match self.queue_log.append(&ch) {
                    Ok(o) => o,
                    Err(e) => {
                        let msg = format!(
                            "cannot write the queue log in {}: {e}; changes are kept in memory only until \
                             this is fixed (free space on that filesystem)",
                            self.queue_log.dir().display()
                        );
                        error!("{msg}");
                        self.counters.set_error(msg);
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
                        Reconcile::Delta { path, mirror_size } => self.co.check_delta(&path, mirror_size, now),
                        Reconcile::Tree(p) => self.co.tree(&p, now),
                        Reconcile::Link { from, to, id } => self.co.relink(from, to, id, now),
                    }
                }
            }
            SchedMsg::Acked { seq } => {
                while self.inflight.front().is_some_and(|&(last, _)| last <= seq) {
                    self.inflight.pop_front();
                    self.acked_since_checkpoint = true;
                }
            }
            SchedMsg::Disconnected => self.connected = false,
            SchedMsg::Resume { epoch, applied } if self.log_dropped => {
                // The log lacks what it dropped; the coalescer still holds it
                // all but the batches that were in flight, which the
                // reconciliation after this connection finds.
                self.epoch = epoch;
                self.connected = true;
                self.inflight.clear();
                self.unsent = Unsent::default();
                self.log_dropped = false;
                info!(epoch, receiver_applied = applied, "resuming without a replay (the queue log was dropped)");
                *deadline = Some(Instant::now());
            }
            SchedMsg::Resume { epoch, applied } => {
                // The first replay of this process: the log was written before
                // it started.
                let first = self.epoch == 0;
                self.epoch = epoch;
                self.connected = true;
                self.inflight.clear();
                self.unsent = Unsent::default();
                self.co.resume(applied);
                let now = Instant::now();
                let replayed_at = now.checked_sub(HOLD_FRESH * 5).unwrap_or(now);
                let (mut n, mut already) = (0u64, 0u64);
                let co = &mut self.co;
                let replayed = self.queue_log.replay(|l| {
                    n += 1;
                    if l.origin <= applied && is_tree_change(&l.change.kind) {
                        // Applied by the receiver though not (yet) acknowledged:
                        // not sent again (`Coalescer::resume`).
                        already += 1;
                    }
                    // Old changes: not held for when they vanished (below).
                    co.add(&l.change, l.origin, replayed_at)
                });
                if let Err(e) = replayed {
                    error!("cannot read the queue log back: {e}; a reconciliation covers what it held");
                }
                if first {
                    // What changed while no agent ran is not in the log: the
                    // logged ranges are only part of it. Sending a file's
                    // current size and mtime with only those ranges would make
                    // stale bytes look current to reconciliation.
                    self.co.read_files_whole();
                }
                self.counters.replays.fetch_add(1, Relaxed);
                info!(
                    epoch,
                    receiver_applied = applied,
                    changes = n,
                    tree_ops_already_applied = already,
                    "replaying the unacknowledged queue"
                );
                *deadline = Some(now);
            }
        }
    }

    /// Moves the log's checkpoint past what was acknowledged, and makes the
    /// log durable now and then while nothing is sent.
    fn housekeeping(&mut self) {
        if self.last_commit.elapsed() < LOG_SYNC_EVERY {
            return;
        }
        self.last_commit = Instant::now();
        self.acked_since_checkpoint = false;
        let low_water = self
            .inflight
            .iter()
            .map(|&(_, o)| o)
            .chain([self.co.min_origin(), self.queue_log.next_origin()])
            .min()
            .expect("not empty");
        if let Err(e) = self.queue_log.set_checkpoint(low_water) {
            error!("cannot update the queue log in {}: {e}", self.queue_log.dir().display());
        }
        let bytes = self.queue_log.disk_bytes();
        if bytes > self.opts.queue_max_bytes {
            let msg = format!(
                "the queue log reached {} MiB while the receiver was unreachable (limit {} MiB, \
                 --queue-max-mib); dropped: the reconciliation after the next connection finds what it held",
                bytes >> 20,
                self.opts.queue_max_bytes >> 20
            );
            warn!("{msg}");
            self.counters.set_error(msg);
            if let Err(e) = self.queue_log.discard() {
                error!("cannot drop the queue log in {}: {e}", self.queue_log.dir().display());
            }
            self.log_dropped = true;
        }
        self.counters.queue_log_bytes.store(self.queue_log.disk_bytes(), Relaxed);
        self.counters.unacked_changes.store(self.queue_log.next_origin() - self.queue_log.checkpoint(), Relaxed);
    }
}

/// Changes that become remove, rename or link ops: applied once only.
fn is_tree_change(kind: &lifeline_capture::ChangeKind) -> bool {
    use lifeline_capture::ChangeKind::*;
    matches!(kind, Unlink | Rmdir | Rename { .. } | Link { .. })
}

fn publish(counters: &Counters, co: &Coalescer) {
    counters.pending.store(co.len() as u64, Relaxed);
    counters.oldest_pending_ms.store(co.oldest().map_or(u64::MAX, |t| counters.ms(t)), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_capture::ChangeKind;
    use lifeline_proto::v1 as pb;
    use std::path::Path;

    /// A scheduler on a thread of its own, replicating `root`.
    struct Running {
        tx: crossbeam_channel::Sender<SchedMsg>,
        out_rx: tokio::sync::mpsc::Receiver<Outgoing>,
        counters: Arc<Counters>,
        thread: std::thread::JoinHandle<()>,
    }

    fn start(root: &Path, log_dir: &Path, opts: SchedulerOptions) -> Running {
        let queue_log = QueueLog::open(log_dir).unwrap();
        let counters = Arc::new(Counters::new("r".into(), "m".into(), vec![]));
        let (tx, rx) = crossbeam_channel::unbounded();
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
        let (c2, r2) = (counters.clone(), vec![root.to_path_buf()]);
        let thread = std::thread::spawn(move || run(rx, out_tx, c2, r2, opts, queue_log));
        Running { tx, out_rx, counters, thread }
    }

    fn change(path: &Path) -> SchedMsg {
        let ch = FileChange { seq: 0, ktime_ns: 0, tgid: 0, path: path.into(), kind: ChangeKind::Attr, dev: 0, ino: 0 };
        SchedMsg::Change(ch, Instant::now())
    }

    /// A file created, renamed and linked, and gone before the agent read
    /// it (a busy machine): its content is sent past, so the link would find
    /// no source at the receiver; the link's name is checked instead.
    #[test]
    fn a_link_from_a_name_whose_content_was_never_sent_becomes_a_check() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let (tmp, a, link) = (root.join("a.tmp"), root.join("a"), root.join("a.link0"));
        std::fs::write(&a, b"a later file took the name").unwrap();
        let Running { tx, mut out_rx, counters, thread: t } =
            start(&root, &d.path().join("queue"), SchedulerOptions::default());
        counters.connected.store(true, Relaxed);
        tx.send(SchedMsg::Resume { epoch: 1, applied: 0 }).unwrap();
        // Captured long enough ago that nothing waits for the vanished file.
        let at = Instant::now() - HOLD_FRESH * 2;
        let ino = u64::MAX - 1; // no file on this disk has it
        let ch = |path: &Path, kind| {
            SchedMsg::Change(FileChange { seq: 0, ktime_ns: 0, tgid: 0, path: path.into(), kind, dev: 0, ino }, at)
        };
        for msg in [
            ch(&tmp, ChangeKind::Open { created: true, truncated: true }),
            ch(&tmp, ChangeKind::Write { offset: 0, len: 10 }),
            ch(&tmp, ChangeKind::Rename { to: a.clone(), exchange: false }),
            ch(&a, ChangeKind::Link { to: link.clone() }),
        ] {
            tx.send(msg).unwrap();
        }
        let mut ops = Vec::new();
        // Until the link or what replaces it.
        let done = |o: &pb::Op| o.path.ends_with(b"a.link0") || matches!(o.kind, Some(pb::op::Kind::Link(_)));
        while !ops.iter().any(done) {
            let Outgoing::Batch(b) = out_rx.blocking_recv().expect("batches") else { panic!("a delta job") };
            ops.extend(b.batch.ops);
        }
        let kinds: Vec<(String, &str)> = ops
            .iter()
            .map(|o| {
                let name = String::from_utf8_lossy(o.path.rsplit(|&c| c == b'/').next().unwrap()).into_owned();
                let kind = match &o.kind {
                    Some(pb::op::Kind::Rename(_)) => "rename",
                    Some(pb::op::Kind::Link(_)) => "link",
                    Some(pb::op::Kind::Remove(_)) => "remove",
                    Some(pb::op::Kind::Data(_)) => "data",
                    _ => "other",
                };
                (name, kind)
            })
            .collect();
        assert_eq!(kinds, [("a.tmp".to_string(), "rename"), ("a.link0".to_string(), "remove")], "ops: {kinds:?}");
        drop(tx);
        drop(out_rx);
        t.join().unwrap();
    }

    #[test]
    fn a_log_over_its_limit_is_dropped_and_the_coalescer_keeps_the_work() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let files: Vec<PathBuf> = (0..200).map(|i| root.join(format!("f{i}"))).collect();
        for f in &files {
            std::fs::write(f, b"x").unwrap();
        }
        let opts = SchedulerOptions { queue_max_bytes: 4096, ..Default::default() };
        let Running { tx, mut out_rx, counters, thread: t } = start(&root, &root.join("queue"), opts);
        // The receiver is away: the log grows past 4 KiB and is dropped.
        for f in &files {
            tx.send(change(f)).unwrap();
        }
        let dropped = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            counters.last_error.lock().unwrap().as_deref().is_some_and(|e| e.contains("dropped"))
        });
        assert!(dropped, "no drop reported: {:?}", counters.last_error.lock().unwrap());
        assert!(counters.queue_log_bytes.load(Relaxed) < 4096);
        // Back: everything still goes out, without a replay.
        counters.connected.store(true, Relaxed);
        tx.send(SchedMsg::Resume { epoch: 1, applied: 0 }).unwrap();
        let mut sent = std::collections::HashSet::new();
        while sent.len() < files.len() {
            let Outgoing::Batch(b) = out_rx.blocking_recv().expect("batches") else { panic!("a delta job") };
            assert_eq!(b.epoch, 1);
            sent.extend(b.batch.ops.iter().map(|o| o.path.clone()));
        }
        assert_eq!(counters.replays.load(Relaxed), 0);
        drop(tx);
        drop(out_rx);
        t.join().unwrap();
    }

    /// Changes leave the queue log once an acknowledgement message covers
    /// the batch that carried them, and not before.
    #[test]
    fn an_acknowledgement_message_moves_the_logs_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let file = root.join("f");
        std::fs::write(&file, b"x").unwrap();
        let Running { tx, mut out_rx, counters, thread: t } =
            start(&root, &root.join("queue"), SchedulerOptions::default());
        tx.send(SchedMsg::Resume { epoch: 1, applied: 0 }).unwrap();
        tx.send(change(&file)).unwrap();
        let Outgoing::Batch(b) = out_rx.blocking_recv().expect("a batch") else { panic!("a delta job") };
        let unacked = |n: u64| {
            (0..100).any(|_| {
                std::thread::sleep(Duration::from_millis(20));
                counters.unacked_changes.load(Relaxed) == n
            })
        };
        assert!(unacked(1), "logged: {}", counters.unacked_changes.load(Relaxed));
        tx.send(SchedMsg::Acked { seq: b.last_seq - 1 }).unwrap();
        // Several checkpoint periods.
        std::thread::sleep(LOG_SYNC_EVERY * 4);
        assert_eq!(counters.unacked_changes.load(Relaxed), 1, "not covered yet");
        tx.send(SchedMsg::Acked { seq: b.last_seq }).unwrap();
        assert!(unacked(0), "acknowledged: {}", counters.unacked_changes.load(Relaxed));
        drop(tx);
        drop(out_rx);
        t.join().unwrap();
    }
}
