//! The gRPC `Replication` service.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lifeline_core::wirepath;
use lifeline_proto::v1::replication_server::{Replication, ReplicationServer};
use lifeline_proto::v1::{Ack, ListTreeRequest, OpBatch, SignatureChunk, SignatureRequest, TreeEntries};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use lifeline_core::credential::MachineName;
use lifeline_store::private::create_private_dir_all;
use lifeline_store::{Authenticator, Quotas, StoreLayout};

use crate::alarm::{Limits, Watch};
use crate::apply::Applier;
use crate::delta::{self, PartialRecord};
use crate::history::History;
use crate::listing;
use crate::progress::QueueProgress;
use crate::safepath::{self, Mirror};
use lifeline_history::{Clock, SystemClock};

/// A one-way "stop" signal, readable from async code and from the applier's
/// blocking thread.
#[derive(Debug, Default)]
pub(crate) struct Cancel {
    flag: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub(crate) fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) async fn cancelled(&self) {
        loop {
            // Created before the check: a cancel() in between still wakes it.
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What the receiver keeps per machine.
#[derive(Default)]
struct MachineState {
    /// Held by the Replicate stream that applies ops; the next one waits for it.
    stream_lock: Arc<tokio::sync::Mutex<()>>,
    /// Cancels the newest Replicate stream.
    active: Mutex<Option<Arc<Cancel>>>,
    /// What the console shows of the machine.
    live: Mutex<Live>,
}

/// What the receiver knows of a machine's replication now (the console's
/// machine list): since the receiver started, nothing is on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// A Replicate stream of the machine is applying its changes.
    pub connected: bool,
    /// When the receiver last made a group of its changes durable.
    pub last_change: Option<std::time::SystemTime>,
    /// Changes (ops) applied since the receiver started.
    pub ops: u64,
}

/// Marks a machine connected while a stream applies its changes.
struct Connected(Arc<MachineState>);

impl Connected {
    fn new(state: Arc<MachineState>) -> Connected {
        state.live.lock().unwrap_or_else(|e| e.into_inner()).connected = true;
        Connected(state)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.live.lock().unwrap_or_else(|e| e.into_inner()).connected = false;
    }
}

struct Inner {
    store: StoreLayout,
    auth: Arc<dyn Authenticator>,
    quotas: Arc<Quotas>,
    /// The receiver's clock, which history is stamped with.
    clock: Arc<dyn Clock>,
    /// Whether history is kept (always, but to measure its cost).
    history: bool,
    machines: Mutex<HashMap<MachineName, Arc<MachineState>>>,
    shutdown: Arc<Cancel>,
    fault: Arc<FaultHook>,
}

/// Test hook for the fault-injection tests (`tests/tests/faults.rs`):
/// with `LIFELINE_FAULT_ABORT_BEFORE_ACK=N` in the environment (read once,
/// when the receiver starts), the process aborts right after applying its
/// N-th group of batches, before that group is synced or acknowledged: the
/// crash window that replay idempotency must cover. Unset: no effect.
#[derive(Debug, Default)]
struct FaultHook {
    abort_before_ack: Option<u64>,
    groups: AtomicU64,
}

impl FaultHook {
    fn from_env() -> FaultHook {
        let abort_before_ack = std::env::var("LIFELINE_FAULT_ABORT_BEFORE_ACK").ok().and_then(|v| v.parse().ok());
        if let Some(n) = abort_before_ack {
            warn!("fault injection armed: the receiver will abort after applying group {n} of batches, before syncing and acknowledging it");
        }
        FaultHook { abort_before_ack, groups: AtomicU64::new(0) }
    }

    /// Called after a group is applied, before it is synced; `origins`: the
    /// queue progress before and after the group.
    fn group_applied(&self, machine: &MachineName, applied_seq: u64, origins: (u64, u64)) {
        let Some(n) = self.abort_before_ack else { return };
        if self.groups.fetch_add(1, Ordering::SeqCst) + 1 == n {
            let (origin_before, applied_origin) = origins;
            error!(%machine, applied_seq, origin_before, applied_origin, "fault injection: aborting after group {n}, before sync and acknowledgement");
            std::process::abort();
        }
    }
}

/// The `Replication` service over a store directory.
///
/// One Replicate stream per machine applies ops at a time: a new stream from
/// the same machine **replaces** the active one (which ends with
/// `Status::aborted`) once that one has stopped between two ops, so that an
/// agent reconnecting after a network failure never waits for the receiver
/// to notice its old connection is dead.
#[derive(Clone)]
pub struct MirrorService {
    inner: Arc<Inner>,
}

impl MirrorService {
    /// The mirrors under `<store>/mirror/` (`store` as the receiver
    /// canonicalised it), with `auth` deciding which
    /// machine a request speaks for. Creates the directory if missing and
    /// checks the kernel can resolve paths safely (openat2) and the
    /// filesystem has user xattrs (where setuid/setgid modes are kept).
    pub fn new(
        store: &StoreLayout,
        auth: Arc<dyn Authenticator>,
        quotas: Arc<Quotas>,
    ) -> anyhow::Result<MirrorService> {
        create_private_dir_all(&store.mirrors())?;
        probe_openat2(&store.mirrors())?;
        crate::attrs::probe_user_xattrs(&store.mirrors())?;
        strip_stored_bits_once(store)?;
        Ok(MirrorService {
            inner: Arc::new(Inner {
                store: store.clone(),
                auth,
                quotas,
                clock: Arc::new(SystemClock),
                history: true,
                machines: Mutex::new(HashMap::new()),
                shutdown: Arc::new(Cancel::default()),
                fault: Arc::new(FaultHook::from_env()),
            }),
        })
    }

    /// Stamps history with `clock` instead of the system's (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> MirrorService {
        Arc::get_mut(&mut self.inner).expect("not shared yet").clock = clock;
        self
    }

    /// Keeps no history: machines' pasts are lost. Only to measure what
    /// keeping it costs (`lifeline-receiver --without-history`).
    pub fn without_history(mut self) -> MirrorService {
        Arc::get_mut(&mut self.inner).expect("not shared yet").history = false;
        self
    }

    /// The tonic service, with Lifeline's message size limits.
    pub fn into_service(self) -> ReplicationServer<MirrorService> {
        ReplicationServer::new(self)
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE)
            .max_encoding_message_size(lifeline_proto::MAX_MESSAGE)
    }

    /// Ends every stream (Replicate with `Status::unavailable`), for shutdown.
    pub fn shutdown_streams(&self) {
        self.inner.shutdown.cancel();
    }

    /// What the receiver knows of `machine`'s replication now.
    pub fn live(&self, machine: &MachineName) -> Live {
        let m = self.inner.machines.lock().unwrap_or_else(|e| e.into_inner()).get(machine).cloned();
        m.map(|s| *s.live.lock().unwrap_or_else(|e| e.into_inner())).unwrap_or_default()
    }

    fn machine(&self, name: &MachineName) -> Arc<MachineState> {
        let mut m = self.inner.machines.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(name.clone()).or_default().clone()
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<MachineName, Status> {
        self.inner.auth.authenticate(req.metadata(), req.extensions())
    }

    async fn open_mirror(&self, machine: &MachineName) -> Result<Mirror, Status> {
        let store = self.inner.store.clone();
        let m = machine.clone();
        tokio::task::spawn_blocking(move || Mirror::open(&store, &m))
            .await
            .map_err(|e| Status::internal(format!("opening the mirror: {e}")))?
            .map_err(|e| {
                error!(%machine, "cannot open the mirror: {e}");
                Status::internal(format!("cannot open the mirror of {machine}: {e}"))
            })
    }
}

/// Takes setuid/setgid bits off what receivers from before they were kept
/// out of mirrors stored (mirrors, and removed machines' data), once per
/// store: the mirrors' directory is marked when it is done. Runs before
/// any stream is served.
fn strip_stored_bits_once(store: &StoreLayout) -> anyhow::Result<()> {
    const DONE: &str = "user.lifeline.setuid-stripped";
    let mirrors = store.mirrors();
    let fd = rustix::fs::open(
        &mirrors,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    if rustix::fs::fgetxattr(&fd, DONE, &mut [0u8; 4][..]).is_ok() {
        return Ok(());
    }
    for dir in [mirrors.clone(), store.root().join("removed")] {
        let n = crate::attrs::strip_stored_bits(&dir)?;
        if n > 0 {
            tracing::warn!("{n} entries under {} had setuid/setgid bits (stored before they were kept out of mirrors): now kept in the xattr {}", dir.display(), crate::MODE_XATTR);
        }
    }
    rustix::fs::fsetxattr(&fd, DONE, b"1", rustix::fs::XattrFlags::empty())?;
    Ok(())
}

fn probe_openat2(dir: &Path) -> anyhow::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    match safepath::open_beneath(std::os::fd::AsFd::as_fd(&fd), ".", OFlags::PATH | OFlags::DIRECTORY, Mode::empty()) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::NOSYS) => {
            anyhow::bail!("this kernel lacks openat2(2) (Linux 5.6 or later is needed)")
        }
        Err(e) => Err(anyhow::anyhow!("openat2 on {}: {e}", dir.display())),
    }
}

type AckStream = ReceiverStream<Result<Ack, Status>>;
type TreeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<TreeEntries, Status>> + Send>>;
type SignatureStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<SignatureChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for MirrorService {
    type ReplicateStream = AckStream;
    type ListTreeStream = TreeStream;
    type GetSignatureStream = SignatureStream;

    async fn replicate(&self, req: Request<Streaming<OpBatch>>) -> Result<Response<AckStream>, Status> {
        let machine = self.authenticate(&req)?;
        let queue_id = queue_id(req.metadata())?;
        let mirror = self.open_mirror(&machine).await?;
        let state = self.machine(&machine);
        let cancel = Arc::new(Cancel::default());
        let previous = state.active.lock().unwrap_or_else(|e| e.into_inner()).replace(cancel.clone());
        if let Some(previous) = previous {
            info!(%machine, "new replication stream replaces the active one");
            previous.cancel();
        }
        let (tx, rx) = mpsc::channel(16);
        let revoked = Arc::new(Revoked::default());
        tokio::spawn(recheck_credential(
            self.inner.auth.clone(),
            (req.metadata().clone(), req.extensions().clone()),
            machine.clone(),
            Arc::downgrade(&revoked),
        ));
        let stream = Stream {
            machine,
            revoked,
            queue_id,
            store: self.inner.store.clone(),
            quotas: self.inner.quotas.clone(),
            clock: self.inner.clock.clone(),
            history: self.inner.history,
            state,
            cancel,
            shutdown: self.inner.shutdown.clone(),
            fault: self.inner.fault.clone(),
            tx,
        };
        tokio::spawn(stream.run(req.into_inner(), mirror));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    /// Authenticated and confined like `ListTree`; see [`delta`].
    async fn get_signature(&self, req: Request<SignatureRequest>) -> Result<Response<SignatureStream>, Status> {
        let machine = self.authenticate(&req)?;
        let SignatureRequest { path, block_len, strong_len } = req.into_inner();
        wirepath::validate(&path)
            .map_err(|e| Status::invalid_argument(format!("invalid path {:?}: {e}", String::from_utf8_lossy(&path))))?;
        let mirror = self.open_mirror(&machine).await?;
        let p = path.clone();
        let (file, st) = tokio::task::spawn_blocking(move || delta::open_base(&mirror, &p))
            .await
            .map_err(|e| Status::internal(format!("opening the base: {e}")))??;
        debug!(%machine, path = %String::from_utf8_lossy(&path).escape_debug(), size = st.st_size, "signature");
        let (tx, rx) = mpsc::channel::<Result<SignatureChunk, Status>>(4);
        let shutdown = self.inner.shutdown.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let sent = delta::send_signature(&file, &st, block_len, strong_len, |msg| {
                !shutdown.is_cancelled() && tx.blocking_send(Ok(msg)).is_ok()
            });
            debug!(%machine, "signature of {} bytes computed in {:?}", st.st_size, started.elapsed());
            if let Err(e) = sent {
                let shown = String::from_utf8_lossy(&path);
                let status = if e.kind() == std::io::ErrorKind::InvalidInput {
                    Status::invalid_argument(e.to_string())
                } else {
                    error!(%machine, "signature of {}: {e}", shown.escape_debug());
                    Status::internal(format!("signature of {shown}: {e}"))
                };
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_tree(&self, req: Request<ListTreeRequest>) -> Result<Response<TreeStream>, Status> {
        let machine = self.authenticate(&req)?;
        let roots = req.into_inner().roots;
        for root in &roots {
            wirepath::validate(root).map_err(|e| {
                Status::invalid_argument(format!("invalid root {:?}: {e}", String::from_utf8_lossy(root)))
            })?;
        }
        let mirror = Arc::new(self.open_mirror(&machine).await?);
        debug!(%machine, roots = roots.len(), "listing");
        let (tx, rx) = mpsc::channel::<Result<TreeEntries, Status>>(4);
        let shutdown = self.inner.shutdown.clone();
        tokio::task::spawn_blocking(move || {
            for root in roots {
                let sent = listing::stream(&mirror, &root, |msg| {
                    !shutdown.is_cancelled() && tx.blocking_send(Ok(msg)).is_ok()
                });
                if let Err(e) = sent {
                    let root = String::from_utf8_lossy(&root);
                    error!(%machine, "listing {root}: {e}");
                    let _ = tx.blocking_send(Err(Status::internal(format!("listing {root}: {e}"))));
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The agent's queue id from the Replicate stream's metadata (0: none given,
/// tree ops are then not tracked).
fn queue_id(md: &tonic::metadata::MetadataMap) -> Result<u64, Status> {
    let Some(v) = md.get(lifeline_proto::QUEUE_HEADER) else { return Ok(0) };
    v.to_str()
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| Status::invalid_argument(format!("{} must be 16 hex digits", lifeline_proto::QUEUE_HEADER)))
}

/// How often an open Replicate stream checks its credential again: a
/// machine removed or reissued stops replicating within this.
pub const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Set once a stream's credential no longer holds: why.
#[derive(Default)]
struct Revoked {
    cancel: Cancel,
    why: Mutex<Option<Status>>,
}

/// Checks the credential of a Replicate stream every [`RECHECK_EVERY`]
/// until the stream is gone, and marks it revoked
/// when the credential is refused (removed, reissued).
async fn recheck_credential(
    auth: Arc<dyn Authenticator>,
    (metadata, extensions): (tonic::metadata::MetadataMap, tonic::Extensions),
    machine: MachineName,
    revoked: std::sync::Weak<Revoked>,
) {
    let mut every = tokio::time::interval(RECHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if revoked.strong_count() == 0 {
            return;
        }
        // The database is read off the async threads.
        let (a, md, ext) = (auth.clone(), metadata.clone(), extensions.clone());
        let checked = tokio::task::spawn_blocking(move || a.authenticate(&md, &ext).map(drop)).await;
        let Some(revoked) = revoked.upgrade() else { return };
        match checked {
            Ok(Ok(())) => {}
            // The database failed (or the check did): the credential may still hold.
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {}
            Err(_) => {}
            Ok(Err(status)) => {
                warn!(%machine, "credential no longer valid, ending its replication stream: {}", status.message());
                *revoked.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(Status::unauthenticated(format!(
                    "{} (the stream was open when the credential was revoked)",
                    status.message()
                )));
                revoked.cancel.cancel();
                return;
            }
        }
    }
}

/// Group commit: after a batch, the next one is applied before syncing if it
/// has already arrived, up to these limits, so a burst costs one sync per
/// group instead of one per batch.
const GROUP_BYTES: usize = 32 << 20;
const GROUP_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// One Replicate stream.
struct Stream {
    machine: MachineName,
    /// Set when the stream's credential is revoked or reissued.
    revoked: Arc<Revoked>,
    queue_id: u64,
    store: StoreLayout,
    quotas: Arc<Quotas>,
    clock: Arc<dyn Clock>,
    history: bool,
    state: Arc<MachineState>,
    cancel: Arc<Cancel>,
    shutdown: Arc<Cancel>,
    fault: Arc<FaultHook>,
    tx: mpsc::Sender<Result<Ack, Status>>,
}

/// Why a stream stops.
enum Stop {
    Replaced,
    Shutdown,
    /// Its credential was removed or reissued.
    Revoked,
    /// The agent ended the stream or went away.
    Agent,
}

impl Stream {
    async fn run(self, inbound: Streaming<OpBatch>, mirror: Mirror) {
        let stop = self.apply_all(inbound, mirror).await;
        let status = match stop {
            Stop::Replaced => Some(Status::aborted("replaced by a newer Replicate stream from the same machine")),
            Stop::Shutdown => Some(Status::unavailable("the receiver is shutting down")),
            Stop::Revoked => self.revoked.why.lock().unwrap_or_else(|e| e.into_inner()).take(),
            Stop::Agent => None,
        };
        if let Some(status) = status {
            // Never wait on an agent that does not read its acks.
            let _ = self.tx.try_send(Err(status));
        }
        let mut active = self.state.active.lock().unwrap_or_else(|e| e.into_inner());
        if active.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.cancel)) {
            *active = None;
        }
    }

    /// Waits for what comes first: `fut`, a replacement, shutdown, or the
    /// agent going away.
    async fn or_stop<T>(&self, fut: impl std::future::Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Stop::Replaced),
            _ = self.shutdown.cancelled() => Err(Stop::Shutdown),
            _ = self.revoked.cancel.cancelled() => Err(Stop::Revoked),
            _ = self.tx.closed() => Err(Stop::Agent),
            v = fut => Ok(v),
        }
    }

    async fn apply_all(&self, mut inbound: Streaming<OpBatch>, mirror: Mirror) -> Stop {
        let machine = &self.machine;
        // Wait for the stream this one replaces to stop.
        let _turn = match self.or_stop(self.state.stream_lock.clone().lock_owned()).await {
            Ok(guard) => guard,
            Err(stop) => return stop,
        };
        let _connected = Connected::new(self.state.clone());
        let opened = {
            let (store, m, q) = (self.store.clone(), machine.clone(), self.queue_id);
            tokio::task::spawn_blocking(move || (q != 0).then(|| QueueProgress::open(&store, &m, q)).transpose()).await
        };
        let partial = {
            let (store, m, mirror, clock) = (self.store.clone(), machine.clone(), mirror.clone(), self.clock.clone());
            let keep = self.history;
            tokio::task::spawn_blocking(move || {
                let mut a = Applier::new(mirror, m.as_str());
                if keep {
                    // History is kept or nothing is applied: a change whose
                    // past could not be kept would be lost for good.
                    let history = History::open(&store, &m, clock.clone()).map_err(|e| {
                        format!("cannot open the history of machine {m} in {}: {e}", store.root().display())
                    })?;
                    a = a.with_history(history).with_watch(Watch::new(&store, &m, clock, Limits::default()));
                }
                Ok::<_, String>(match PartialRecord::open(&store, &m) {
                    // Removes what a delta of a killed receiver left behind.
                    Ok(r) => a.with_partial(r),
                    Err(e) => {
                        warn!(machine = %m, "cannot open the delta record: {e}; a receiver killed mid-delta may leave a temporary file");
                        a
                    }
                })
            })
            .await
        };
        let mut a = match partial {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                error!(%machine, "{e}");
                let _ = self.tx.send(Err(Status::internal(e))).await;
                return Stop::Agent;
            }
            Err(e) => {
                let _ = self.tx.send(Err(Status::internal(format!("opening the mirror: {e}")))).await;
                return Stop::Agent;
            }
        };
        match opened {
            Ok(Ok(Some(p))) => a = a.with_progress(p),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                error!(%machine, "cannot open the queue progress record: {e}");
                let _ =
                    self.tx.send(Err(Status::internal(format!("cannot open the queue progress record: {e}")))).await;
                return Stop::Agent;
            }
            Err(e) => {
                let _ = self.tx.send(Err(Status::internal(format!("opening the progress record: {e}")))).await;
                return Stop::Agent;
            }
        }
        let resume = a.resume_origin();
        info!(%machine, mirror = %a.mirror().path().display(), queue = %format!("{:016x}", self.queue_id), resume, "replication stream started");
        let hello = Ack {
            applied_seq: 0,
            errors: Vec::new(),
            resume_origin: Some(resume),
            implied_dirs: Vec::new(),
            alarm: a.alarm(),
        };
        match self.or_stop(self.tx.send(Ok(hello))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Stop::Agent,
            Err(stop) => return stop,
        }
        let mut applier = Some(a);
        let (mut batches, mut ops, mut syncs) = (0u64, 0u64, 0u64);
        // Ops of this stream already counted in the machine's live state.
        let mut counted = 0u64;
        let mut next: Option<OpBatch> = None;
        let stop = 'stream: loop {
            let batch = match next.take() {
                Some(b) => b,
                None => match self.or_stop(inbound.message()).await {
                    Ok(Ok(Some(batch))) => batch,
                    Ok(Ok(None)) => break Stop::Agent,
                    Ok(Err(status)) => {
                        info!(%machine, "replication stream broken: {status}");
                        break Stop::Agent;
                    }
                    Err(stop) => break stop,
                },
            };
            // Apply this batch and any that already wait, then sync once.
            let group_start = std::time::Instant::now();
            let origin_before = applier.as_ref().map_or(0, Applier::resume_origin);
            let mut group_bytes = 0usize;
            let mut pending: Option<Ack> = None;
            let mut end_after: Option<Stop> = None;
            // A quota refusal: the batch is not applied, what the group
            // applied before it is synced and acknowledged, then the stream
            // ends with the refusal (the agent keeps the rest queued).
            let mut refused: Option<Status> = None;
            let mut batch = batch;
            loop {
                if let Err(status) = self.charge(&batch).await {
                    refused = Some(status);
                    end_after = Some(Stop::Agent);
                    break;
                }
                group_bytes += batch.ops.iter().map(|o| o.path.len() + data_len(o)).sum::<usize>();
                let n = batch.ops.len() as u64;
                let (ack, back) =
                    self.apply_blocking(applier.take().expect("the applier is back after each batch"), batch).await;
                let Some(back) = back else { break 'stream Stop::Agent };
                applier = Some(back);
                let Some(ack) = ack else {
                    // Interrupted by a replacement or shutdown: nothing more is acknowledged.
                    continue 'stream;
                };
                batches += 1;
                ops += n;
                pending = Some(match pending {
                    None => ack,
                    Some(mut p) => {
                        p.applied_seq = ack.applied_seq;
                        p.errors.extend(ack.errors);
                        let room = crate::safepath::IMPLIED_MAX.saturating_sub(p.implied_dirs.len());
                        p.implied_dirs.extend(ack.implied_dirs.into_iter().take(room));
                        p.alarm = ack.alarm;
                        p
                    }
                });
                if group_bytes >= GROUP_BYTES || group_start.elapsed() >= GROUP_TIME {
                    break;
                }
                // Ready already? (polled once: `message()` is cancel-safe)
                match tokio::time::timeout(std::time::Duration::ZERO, inbound.message()).await {
                    Ok(Ok(Some(b))) => batch = b,
                    Ok(Ok(None)) => {
                        end_after = Some(Stop::Agent);
                        break;
                    }
                    Ok(Err(status)) => {
                        info!(%machine, "replication stream broken: {status}");
                        end_after = Some(Stop::Agent);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if pending.is_none() {
                // Refused before anything of this group was applied.
                let _ = self.tx.send(Err(refused.take().expect("only a refusal applies nothing"))).await;
                break Stop::Agent;
            }
            let mut a = applier.take().expect("the applier is back");
            self.fault.group_applied(
                machine,
                pending.as_ref().map_or(0, |p| p.applied_seq),
                (origin_before, a.resume_origin()),
            );
            let synced = tokio::task::spawn_blocking(move || {
                let r = a.sync();
                (a, r)
            })
            .await;
            match synced {
                Ok((a, Ok(()))) => applier = Some(a),
                Ok((_, Err(e))) => {
                    // Not durable: not acknowledged. The agent replays it.
                    error!(%machine, "cannot make the mirror durable: {e}");
                    let _ = self
                        .tx
                        .send(Err(Status::internal(format!(
                            "the receiver cannot make the mirror durable ({e}); check its disk"
                        ))))
                        .await;
                    break Stop::Agent;
                }
                Err(e) => {
                    error!(%machine, "sync task failed: {e}");
                    break Stop::Agent;
                }
            }
            syncs += 1;
            let ack = pending.expect("at least one batch applied");
            {
                let mut live = self.state.live.lock().unwrap_or_else(|e| e.into_inner());
                live.last_change = Some(std::time::SystemTime::now());
                live.ops += ops - counted;
                counted = ops;
            }
            if !ack.errors.is_empty() {
                warn!(%machine, applied_seq = ack.applied_seq, errors = ack.errors.len(), "batch applied with errors");
            } else {
                debug!(%machine, applied_seq = ack.applied_seq, "acknowledged");
            }
            match self.or_stop(self.tx.send(Ok(ack))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Stop::Agent,
                Err(stop) => break stop,
            }
            if let Some(refusal) = refused {
                let _ = self.tx.send(Err(refusal)).await;
            }
            if let Some(stop) = end_after {
                break stop;
            }
        };
        let how = match stop {
            Stop::Replaced => "replaced",
            Stop::Shutdown => "shutdown",
            Stop::Revoked => "credential revoked",
            Stop::Agent => "ended by the agent",
        };
        let skipped = applier.as_ref().map_or(0, |a| a.skipped);
        // How close ordinary work came to an alarm (false-alarm margins).
        let alarm_peaks = applier.as_ref().map_or_else(String::new, Applier::alarm_peaks);
        info!(%machine, batches, ops, syncs, skipped, %alarm_peaks, "replication stream stopped: {how}");
        stop
    }

    /// Charges what `batch` may add to the machine's quota (see
    /// [`lifeline_store::quota`]): data bytes, the full length of a delta's
    /// new file, one entry per op that may create one.
    async fn charge(&self, batch: &OpBatch) -> Result<(), Status> {
        use lifeline_proto::v1::op::Kind;
        let (mut bytes, mut files) = (0u64, 0u64);
        for op in &batch.ops {
            bytes += data_len(op) as u64;
            match &op.kind {
                Some(Kind::Data(_) | Kind::Mkdir(_) | Kind::Symlink(_) | Kind::Link(_)) => files += 1,
                Some(Kind::Delta(d)) if d.first => {
                    files += 1;
                    bytes += d.max_len;
                }
                _ => {}
            }
        }
        let (quotas, machine) = (self.quotas.clone(), self.machine.clone());
        tokio::task::spawn_blocking(move || quotas.charge(&machine, bytes, files))
            .await
            .map_err(|e| Status::internal(format!("quota task failed: {e}")))?
    }

    /// Applies `batch` on a blocking thread. Gives the applier back (None if
    /// that thread failed, which ends the stream) and the ack (None if a
    /// replacement or shutdown interrupted it).
    async fn apply_blocking(&self, mut a: Applier, batch: OpBatch) -> (Option<Ack>, Option<Applier>) {
        let (cancel, shutdown, revoked) = (self.cancel.clone(), self.shutdown.clone(), self.revoked.clone());
        // The batch is applied even if the agent goes away meanwhile; a
        // replacement or shutdown stops it between two ops.
        let applied = tokio::task::spawn_blocking(move || {
            let ack = a.apply_batch(&batch, &|| {
                cancel.is_cancelled() || shutdown.is_cancelled() || revoked.cancel.is_cancelled()
            });
            (a, ack)
        })
        .await;
        match applied {
            Ok((a, ack)) => (ack, Some(a)),
            Err(e) => {
                error!(machine = %self.machine, "the applier failed: {e}");
                let _ = self.tx.send(Err(Status::internal("the receiver's applier failed"))).await;
                (None, None)
            }
        }
    }
}

fn data_len(op: &lifeline_proto::v1::Op) -> usize {
    match &op.kind {
        Some(lifeline_proto::v1::op::Kind::Data(d)) => d.chunks.iter().map(|c| c.data.len()).sum(),
        // Its literals (its copies fill a temporary file that no ack waits
        // for until the delta's last piece).
        Some(lifeline_proto::v1::op::Kind::Delta(d)) => d
            .instrs
            .iter()
            .map(|i| match &i.kind {
                Some(lifeline_proto::v1::delta_instr::Kind::Literal(b)) => b.len(),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}
