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
//!
//! Reconciliation's big files come as delta jobs: the sender fetches the
//! mirror's signature ([`signatures`]) and the job builds its ops on a
//! blocking thread, which are sent before anything the scheduler dispatched
//! after it. The scheduler set a span of sequence numbers aside for the job
//! and counts it acknowledged once the receiver acknowledged all of it (see
//! `InFlight::acks_up_to`).
//!
//! Acknowledgements and a broken stream go to the scheduler as messages on
//! its input channel (`SchedMsg::Acked`, `SchedMsg::Disconnected`).

pub mod signatures;

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline_proto::QUEUE_HEADER;
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::remote::Remote;
use crate::scheduler::dispatcher::{DeltaJob, OutBatch, Outgoing};
use crate::scheduler::SchedMsg;
use crate::status::Counters;
use signatures::Signatures;

struct InFlight {
    last_seq: u64,
    oldest: Instant,
    ops: u64,
    /// The batch's last few paths, for the status's "last files replicated"
    /// once the receiver acknowledges it.
    paths: Vec<String>,
    /// The scheduler's sequence number this batch's acknowledgement stands
    /// for: its last op's, or past it the end of the numbers set aside for
    /// a delta job that ended with (or sent nothing after) this batch.
    acks_up_to: u64,
}

/// A delta job the sender is running: its batches come before anything
/// else the scheduler dispatched.
struct RunningJob {
    batches: mpsc::Receiver<OutBatch>,
    /// The end of the job's sequence numbers.
    last_seq: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        // The stream broke: the signature is not needed any more (a job
        // already reading its file stops at its next batch).
        self.task.abort();
    }
}

/// Fetches the job's signature, then builds its ops on a blocking thread.
fn start_job(job: DeltaJob, signatures: Signatures) -> RunningJob {
    let (tx, rx) = mpsc::channel(2);
    let last_seq = job.last_seq;
    let task = tokio::spawn(async move {
        let counters = signatures.counters().clone();
        let started = Instant::now();
        let base = match signatures.fetch(&job.wire).await {
            Ok(b) => Some(b),
            Err(e) => {
                counters.delta_fallbacks.fetch_add(1, Relaxed);
                debug!("no signature of {} from the receiver ({e:#}); sending it whole", job.content.remote.display());
                None
            }
        };
        let local = job.content.local.clone();
        let built = tokio::task::spawn_blocking(move || {
            let built = job.build(base, started, &mut |o| {
                if let Outgoing::Batch(b) = o {
                    let _ = tx.blocking_send(b);
                }
            });
            // Accounted for before `tx` goes: once it has, the sender sees
            // the job's end and drops (aborts) this task, which would then
            // never get to count it.
            match built {
                Ok(true) => {
                    counters.deltas.fetch_add(1, Relaxed);
                }
                Ok(false) => {}
                Err(e) => {
                    warn!("cannot read {}: {e}; it will be retried at the next reconciliation", local.display())
                }
            }
            drop(tx);
        })
        .await;
        if let Err(e) = built {
            warn!("the delta job failed: {e}");
        }
    });
    RunningJob { batches: rx, last_seq, task }
}

async fn next_job_batch(job: &mut Option<RunningJob>) -> Option<OutBatch> {
    job.as_mut().expect("only polled while a job runs").batches.recv().await
}

/// Sends one batch and accounts for it.
async fn send_batch(
    b: OutBatch,
    inflight: &mut VecDeque<InFlight>,
    tx: &mpsc::Sender<lifeline_proto::v1::OpBatch>,
    counters: &Counters,
) -> anyhow::Result<()> {
    let ops = b.batch.ops.len() as u64;
    counters.ops_sent.fetch_add(ops, Relaxed);
    counters.count_sent(b.bytes);
    counters.unacked_ops.fetch_add(ops, Relaxed);
    if inflight.is_empty() {
        counters.oldest_unacked_ms.store(counters.ms(b.oldest), Relaxed);
    }
    let paths = recent_paths(&b.batch);
    inflight.push_back(InFlight { last_seq: b.last_seq, oldest: b.oldest, ops, paths, acks_up_to: b.last_seq });
    tx.send(b.batch).await.map_err(|_| anyhow::anyhow!("request stream closed"))
}

/// The sender's two ends of its links with the scheduler: the batches it
/// sends, and the scheduler's own input channel (the queue unit), on which it
/// tells the scheduler to replay and what the receiver acknowledged.
pub struct SendChannels {
    pub batches: mpsc::Receiver<Outgoing>,
    pub scheduler: crossbeam_channel::Sender<SchedMsg>,
    /// The queue log's id (see `scheduler::queue_log`), which names the
    /// queue to the receiver.
    pub queue_id: u64,
}

/// Runs forever: connect, stream, and on failure start over.
pub async fn run(remote: Remote, mut channels: SendChannels, counters: Arc<Counters>, reconcile: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    let mut epoch = 0u64;
    let signatures = Signatures::new(remote.clone(), counters.clone());
    loop {
        match stream(&remote, &mut channels, &mut epoch, &signatures, &reconcile).await {
            Ok(()) => return, // the scheduler is gone: shutting down
            Err(e) => {
                let was = counters.connected.swap(false, Relaxed);
                if channels.scheduler.send(SchedMsg::Disconnected).is_err() {
                    return; // shutting down
                }
                counters.unacked_ops.store(0, Relaxed);
                counters.oldest_unacked_ms.store(u64::MAX, Relaxed);
                let full = is_full(&e);
                let msg = if is_refusal(&e) {
                    format!("the receiver {} refused this agent: {e:#}; retrying", remote.endpoint())
                } else if full {
                    format!(
                        "the receiver {} has no room for this machine: {}; retrying every {} s",
                        remote.endpoint(),
                        e.downcast_ref::<tonic::Status>().map_or_else(|| format!("{e:#}"), |s| s.message().to_string()),
                        FULL_RETRY.as_secs()
                    )
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
                if full && !was {
                    warn!("{msg}");
                }
                counters.set_error(msg);
                // A full receiver is not back in half a second: ask again
                // now and then, not in a loop (the changes stay queued).
                tokio::time::sleep(if full { FULL_RETRY } else { backoff }).await;
                // At most half a second apart: a receiver back after a long
                // cut is found at once (attempts are cheap).
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// A credential the receiver does not accept: retrying will not help until an
/// operator acts, so it is worth saying differently.
/// How often an agent asks a receiver that had no room for it again.
const FULL_RETRY: Duration = Duration::from_secs(10);

/// The receiver refused to store more (the machine's quota, or its store's
/// free-space reserve).
fn is_full(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == tonic::Code::ResourceExhausted)
}

fn is_refusal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied))
}

async fn stream(
    remote: &Remote,
    channels: &mut SendChannels,
    epoch: &mut u64,
    signatures: &Signatures,
    reconcile: &Notify,
) -> anyhow::Result<()> {
    let counters: &Counters = signatures.counters();
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
    counters.set_alarm(hello.alarm.as_ref());
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
    let mut job: Option<RunningJob> = None;
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
                if settle.quiet(inflight.is_empty() && job.is_none() && counters.pending.load(Relaxed) == 0) {
                    info!("reconciling: the queue is quiet after a replay");
                    reconcile.notify_one();
                }
            }
            _ = tokio::time::sleep_until(repair.at.unwrap_or_else(far_future)), if repair.at.is_some() => {
                repair.at = None;
                info!("reconciling: the receiver could not apply some ops, or made directories it was not sent");
                reconcile.notify_one();
            }
            b = channels.batches.recv(), if batches_open && job.is_none() => {
                let Some(b) = b else {
                    batches_open = false;
                    if inflight.is_empty() { return Ok(()); }
                    continue;
                };
                match b {
                    // Built for an older stream; replayed.
                    Outgoing::Batch(b) if b.epoch != *epoch => continue,
                    Outgoing::Delta(j) if j.epoch != *epoch => continue,
                    Outgoing::Batch(b) => send_batch(b, &mut inflight, &tx, counters).await?,
                    Outgoing::Delta(j) => job = Some(start_job(*j, signatures.clone())),
                }
            }
            b = next_job_batch(&mut job), if job.is_some() => {
                if let Some(b) = b {
                    send_batch(b, &mut inflight, &tx, counters).await?;
                    continue;
                }
                // The job is done: once what it sent (or, if it sent
                // nothing, what came before it) is acknowledged, so is the
                // span of numbers it had.
                let done = job.take().expect("checked").last_seq;
                match inflight.back_mut() {
                    Some(f) => f.acks_up_to = f.acks_up_to.max(done),
                    None => {
                        if channels.scheduler.send(SchedMsg::Acked { seq: done }).is_err() {
                            anyhow::bail!("the scheduler is gone");
                        }
                    }
                }
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
                counters.set_alarm(ack.alarm.as_ref());
                counters.acked_seq.fetch_max(ack.applied_seq, Relaxed);
                let mut acked = ack.applied_seq;
                while inflight.front().is_some_and(|f| f.last_seq <= ack.applied_seq) {
                    let f = inflight.pop_front().expect("checked");
                    acked = acked.max(f.acks_up_to);
                    counters.replicated(&f.paths);
                    counters.unacked_ops.fetch_sub(f.ops.min(counters.unacked_ops.load(Relaxed)), Relaxed);
                }
                let oldest = inflight.iter().map(|f| f.oldest).min();
                counters.oldest_unacked_ms.store(oldest.map_or(u64::MAX, |t| counters.ms(t)), Relaxed);
                // The scheduler drops what the receiver made durable from its
                // queue log.
                if channels.scheduler.send(SchedMsg::Acked { seq: acked }).is_err() {
                    anyhow::bail!("the scheduler is gone");
                }
                if !batches_open && inflight.is_empty() && job.is_none() {
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
