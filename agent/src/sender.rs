//! The network backup unit: streams the scheduler's batches to the receiver
//! over gRPC and accounts for the acknowledgements (which the receiver sends
//! once a batch is durable; the scheduler then drops its changes from the
//! queue log). On any connection loss it reconnects with backoff; each new
//! stream starts with the receiver saying how far it applied the queue, and
//! the scheduler replays the log from its checkpoint (batches built for the
//! old stream are dropped here). A reconciliation follows every connection,
//! for what the log cannot know (changes while the agent was not running).
//!
//! An ack may report a reconciliation delta the receiver could not apply
//! (`OpError.delta_failed`: its copy changed since it signed it, or the
//! patched file's hash did not match). The mirror's copy is then as it was,
//! and the path goes straight back to the scheduler as a plain
//! reconciliation finding, which is always sent whole: no waiting for the
//! next reconciliation, and no delta loop. Should the connection break first,
//! the reconciliation that follows every connection finds the file again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline_proto::QUEUE_HEADER;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::remote::Remote;
use crate::scheduler::dispatcher::OutBatch;
use crate::scheduler::SchedMsg;
use crate::status::Counters;

struct InFlight {
    last_seq: u64,
    oldest: Instant,
    ops: u64,
    /// The batch's last few paths, for the status's "last files replicated"
    /// once the receiver acknowledges it.
    paths: Vec<String>,
}

/// The sender's two ends of its links with the scheduler: the batches it
/// sends, and the scheduler's own input channel (the queue unit), on which it
/// tells the scheduler to replay and what the receiver acknowledged.
pub struct SendChannels {
    pub batches: mpsc::Receiver<OutBatch>,
    pub scheduler: crossbeam_channel::Sender<SchedMsg>,
    /// The queue log's id (see `scheduler::queue_log`), which names the
    /// queue to the receiver.
    pub queue_id: u64,
}

/// Runs forever: connect, stream, and on failure start over.
pub async fn run(remote: Remote, mut channels: SendChannels, counters: Arc<Counters>, reconcile: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    let mut epoch = 0u64;
    loop {
        match stream(&remote, &mut channels, &mut epoch, &counters, &reconcile).await {
            Ok(()) => return, // the scheduler is gone: shutting down
            Err(e) => {
                let was = counters.connected.swap(false, Relaxed);
                if channels.scheduler.send(SchedMsg::Disconnected).is_err() {
                    return; // shutting down
                }
                counters.unacked_ops.store(0, Relaxed);
                counters.oldest_unacked_ms.store(u64::MAX, Relaxed);
                let msg = if is_refusal(&e) {
                    format!("the receiver {} refused this agent: {e:#}; retrying", remote.endpoint())
                } else {
                    format!(
                        "receiver {} unreachable or the stream broke: {e:#}; retrying (check that \
                         lifeline-receiver runs, the address is right and --ca is its CA)",
                        remote.endpoint()
                    )
                };
                if was {
                    warn!("{msg}");
                    // A connection that worked: the next try comes quickly.
                    backoff = Duration::from_millis(100);
                }
                counters.set_error(msg);
                tokio::time::sleep(backoff).await;
                // At most half a second apart: a receiver back after a long
                // cut is found at once (attempts are cheap).
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// A credential the receiver does not accept: retrying will not help until an
/// operator acts, so it is worth saying differently.
fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied))
}

async fn stream(
    remote: &Remote,
    channels: &mut SendChannels,
    epoch: &mut u64,
    counters: &Counters,
    reconcile: &Notify,
) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let (tx, rx) = mpsc::channel(2);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    remote.identify(&mut req);
    req.metadata_mut().insert(QUEUE_HEADER, format!("{:016x}", channels.queue_id).parse()?);
    let mut acks = client.replicate(req).await?.into_inner();
    // The receiver speaks first, once this stream has its turn.
    let hello = acks.message().await?.ok_or_else(|| anyhow::anyhow!("receiver closed the stream at once"))?;
    let Some(applied) = hello.resume_origin else {
        anyhow::bail!("the receiver did not say where to resume (is it older than this agent? upgrade it)");
    };
    *epoch += 1;
    info!(
        "connected to receiver {} as machine {}; it applied the queue up to {applied}",
        remote.endpoint(),
        remote.machine()
    );
    channels
        .scheduler
        .send(SchedMsg::Resume { epoch: *epoch, applied })
        .map_err(|_| anyhow::anyhow!("the scheduler is gone"))?;
    counters.connected.store(true, Relaxed);
    // What the log cannot know (changes while the agent was not running,
    // lost kernel events): reconcile.
    reconcile.notify_one();
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut batches_open = true;
    let mut repair = Repair::new();
    // A replay (the receiver, the agent or the link went away) races the
    // live changes; whatever it left different in the mirror (names of one
    // file split, a directory made with a guessed mode) is found by one more
    // reconciliation once the queue is quiet again.
    let mut settle = Settle::new(applied > 0);
    let mut tick = tokio::time::interval(Settle::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick(), if settle.waiting() => {
                if settle.quiet(inflight.is_empty() && counters.pending.load(Relaxed) == 0) {
                    info!("reconciling: the queue is quiet after a replay");
                    reconcile.notify_one();
                }
            }
            _ = tokio::time::sleep_until(repair.at.unwrap_or_else(far_future)), if repair.at.is_some() => {
                repair.at = None;
                info!("reconciling: the receiver could not apply some ops, or made directories it was not sent");
                reconcile.notify_one();
            }
            b = channels.batches.recv(), if batches_open => {
                let Some(b) = b else {
                    batches_open = false;
                    if inflight.is_empty() { return Ok(()); }
                    continue;
                };
                if b.epoch != *epoch {
                    continue; // built for an older stream; replayed
                }
                let ops = b.batch.ops.len() as u64;
                counters.ops_sent.fetch_add(ops, Relaxed);
                counters.count_sent(b.bytes);
                counters.unacked_ops.fetch_add(ops, Relaxed);
                if inflight.is_empty() {
                    counters.oldest_unacked_ms.store(counters.ms(b.oldest), Relaxed);
                }
                let paths = recent_paths(&b.batch);
                inflight.push_back(InFlight { last_seq: b.last_seq, oldest: b.oldest, ops, paths });
                tx.send(b.batch).await.map_err(|_| anyhow::anyhow!("request stream closed"))?;
            }
            ack = acks.message() => {
                let Some(ack) = ack? else { anyhow::bail!("receiver closed the stream") };
                // Directories in the watched trees made by the receiver for
                // ops that came before the directory's own: modes and times
                // guessed, and nothing else would send them.
                let implied = ack
                    .implied_dirs
                    .iter()
                    .map(|p| lifeline_core::wirepath::to_local(p))
                    .find(|p| counters.watched.iter().any(|w| p.starts_with(w)));
                if let Some(dir) = implied {
                    debug!(dir = %dir.display(), "the receiver made directories it was not sent");
                    repair.needed();
                }
                for e in &ack.errors {
                    if e.delta_failed {
                        // The mirror's copy is as it was: send the file whole
                        // (a `Path` finding is never sent as a delta).
                        let path = lifeline_core::wirepath::to_local(&e.path);
                        info!(
                            "the receiver refused the delta of {} ({}); sending it whole",
                            path.display(),
                            e.message
                        );
                        counters.delta_fallbacks.fetch_add(1, Relaxed);
                        let whole = SchedMsg::Reconcile(vec![crate::scheduler::Reconcile::Path(path)]);
                        if channels.scheduler.send(whole).is_err() {
                            anyhow::bail!("the scheduler is gone");
                        }
                        continue;
                    }
                    let msg = format!(
                        "receiver could not apply op {} on {}: {}",
                        e.seq,
                        String::from_utf8_lossy(&e.path),
                        e.message
                    );
                    warn!("{msg}");
                    counters.set_error(msg);
                    // What the op carried is not in the mirror, and later
                    // changes may have built on it there (a write through a
                    // name whose link failed): until a reconciliation runs
                    // after things are quiet, files changed since the op's
                    // batch was captured are compared by content.
                    let captured = inflight.front().map_or(Instant::now(), |f| f.oldest);
                    counters.suspect(std::time::SystemTime::now() - captured.elapsed());
                    repair.needed();
                }
                counters.acked_seq.fetch_max(ack.applied_seq, Relaxed);
                // The scheduler drops what the receiver made durable from its
                // queue log.
                if channels.scheduler.send(SchedMsg::Acked { seq: ack.applied_seq }).is_err() {
                    anyhow::bail!("the scheduler is gone");
                }
                while inflight.front().is_some_and(|f| f.last_seq <= ack.applied_seq) {
                    let f = inflight.pop_front().expect("checked");
                    counters.replicated(&f.paths);
                    counters.unacked_ops.fetch_sub(f.ops.min(counters.unacked_ops.load(Relaxed)), Relaxed);
                }
                let oldest = inflight.iter().map(|f| f.oldest).min();
                counters.oldest_unacked_ms.store(oldest.map_or(u64::MAX, |t| counters.ms(t)), Relaxed);
                if !batches_open && inflight.is_empty() {
                    return Ok(());
                }
            }
        }
    }
}

/// One reconciliation once the queue has been quiet for a moment after a
/// replay.
struct Settle {
    waiting: bool,
    quiet_ticks: u32,
}

impl Settle {
    const TICK: Duration = Duration::from_millis(250);
    /// Quiet for this many ticks in a row.
    const QUIET: u32 = 4;

    fn new(after_replay: bool) -> Settle {
        Settle { waiting: after_replay, quiet_ticks: 0 }
    }

    fn waiting(&self) -> bool {
        self.waiting
    }

    /// One tick: whether to reconcile now.
    fn quiet(&mut self, idle: bool) -> bool {
        self.quiet_ticks = if idle { self.quiet_ticks + 1 } else { 0 };
        if self.quiet_ticks >= Self::QUIET {
            self.waiting = false;
        }
        !self.waiting
    }
}

/// Ops the receiver could not apply leave the mirror different from the
/// source (a link whose source is missing there, a name it could not
/// create): a reconciliation finds what differs and sends it again. It runs
/// a moment after the errors, so one run covers a burst of them, and further
/// apart while errors keep coming, so that one that persists (a full disk on
/// the receiver) does not keep the trees being compared. Each error also
/// marks the files changed since its batch as suspect (compared by
/// content), and reconciliation repeats until one runs after the errors
/// stop (see `Counters::settle_suspect`).
struct Repair {
    /// When to reconcile (None: not asked for).
    at: Option<tokio::time::Instant>,
    /// Earliest time for the next one.
    next: tokio::time::Instant,
    spacing: Duration,
    last_error: tokio::time::Instant,
}

impl Repair {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    fn new() -> Repair {
        let now = tokio::time::Instant::now();
        Repair { at: None, next: now, spacing: Self::FIRST, last_error: now }
    }

    fn needed(&mut self) {
        let now = tokio::time::Instant::now();
        if now - self.last_error > Self::MAX {
            self.spacing = Self::FIRST; // quiet for long: errors are news again
        }
        self.last_error = now;
        if self.at.is_none() {
            let at = (now + Self::FIRST).max(self.next);
            self.at = Some(at);
            self.next = at + self.spacing;
            self.spacing = (self.spacing * 2).min(Self::MAX);
        }
    }
}

/// The last distinct paths a batch changes (no more than the status keeps),
/// as local paths for display.
fn recent_paths(batch: &lifeline_proto::v1::OpBatch) -> Vec<String> {
    use lifeline_proto::v1::op::Kind;
    let mut paths: Vec<String> = Vec::new();
    for op in batch.ops.iter().rev() {
        // A rename or link is about its new name.
        let wire = match &op.kind {
            Some(Kind::Rename(r)) => &r.to,
            Some(Kind::Link(l)) => &l.to,
            _ => &op.path,
        };
        let p = lifeline_core::wirepath::to_local(wire).display().to_string();
        if !paths.contains(&p) {
            paths.push(p);
            if paths.len() == crate::status::RECENT_FILES {
                break;
            }
        }
    }
    paths.reverse();
    paths
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_waits_for_a_quiet_queue_once() {
        assert!(!Settle::new(false).waiting(), "no replay, nothing to settle");
        let mut s = Settle::new(true);
        let ticks: Vec<bool> = [true, true, false, true, true, true].iter().map(|&idle| s.quiet(idle)).collect();
        assert_eq!(ticks, [false, false, false, false, false, false], "a busy tick starts the count again");
        assert!(s.quiet(true), "four quiet ticks in a row");
        assert!(!s.waiting(), "once");
    }
}
