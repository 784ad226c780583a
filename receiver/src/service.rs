//! The gRPC `Replication` service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lifeline_core::wirepath;
use lifeline_proto::v1::replication_server::{Replication, ReplicationServer};
use lifeline_proto::v1::{Ack, ListTreeRequest, OpBatch, TreeEntries};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use crate::apply::Applier;
use crate::auth::{Authenticator, HeaderAuthenticator, MachineName};
use crate::listing;
use crate::safepath::{self, Mirror};

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
}

struct Inner {
    store: PathBuf,
    auth: Arc<dyn Authenticator>,
    machines: Mutex<HashMap<MachineName, Arc<MachineState>>>,
    shutdown: Arc<Cancel>,
}

/// The `Replication` service over a store directory.
///
/// One Replicate stream per machine applies ops at a time: a new stream from
/// the same machine **replaces** the active one (which ends with
/// `Status::aborted`) once that one has stopped between two ops, so that an
/// agent reconnecting after a network failure never waits for the receiver
/// to notice its old connection is dead.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

impl Receiver {
    /// A receiver keeping the mirrors under `<store>/mirror/`, taking each
    /// request's `x-lifeline-machine` header's word for who it is. Creates
    /// the store if missing and checks the kernel can resolve paths safely.
    pub fn new(store: impl AsRef<Path>) -> anyhow::Result<Receiver> {
        Receiver::with_authenticator(store, Arc::new(HeaderAuthenticator))
    }

    /// Like [`Receiver::new`], with `auth` deciding which machine a request
    /// speaks for.
    pub fn with_authenticator(
        store: impl AsRef<Path>,
        auth: Arc<dyn Authenticator>,
    ) -> anyhow::Result<Receiver> {
        let store = store.as_ref();
        safepath::create_private_dir_all(&store.join("mirror"))?;
        let store = std::fs::canonicalize(store)?;
        probe_openat2(&store.join("mirror"))?;
        Ok(Receiver {
            inner: Arc::new(Inner {
                store,
                auth,
                machines: Mutex::new(HashMap::new()),
                shutdown: Arc::new(Cancel::default()),
            }),
        })
    }

    /// The (canonical) store directory.
    pub fn store(&self) -> &Path {
        &self.inner.store
    }

    /// The tonic service, with Lifeline's message size limits.
    pub fn into_service(self) -> ReplicationServer<Receiver> {
        ReplicationServer::new(self)
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE)
            .max_encoding_message_size(lifeline_proto::MAX_MESSAGE)
    }

    /// Ends every stream (Replicate with `Status::unavailable`), for shutdown.
    pub fn shutdown_streams(&self) {
        self.inner.shutdown.cancel();
    }

    fn machine(&self, name: &MachineName) -> Arc<MachineState> {
        let mut m = self
            .inner
            .machines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.entry(name.clone()).or_default().clone()
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<MachineName, Status> {
        self.inner
            .auth
            .authenticate(req.metadata(), req.extensions())
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

fn probe_openat2(dir: &Path) -> anyhow::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match safepath::open_beneath(
        std::os::fd::AsFd::as_fd(&fd),
        ".",
        OFlags::PATH | OFlags::DIRECTORY,
        Mode::empty(),
    ) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::NOSYS) => {
            anyhow::bail!("this kernel lacks openat2(2) (Linux 5.6 or later is needed)")
        }
        Err(e) => Err(anyhow::anyhow!("openat2 on {}: {e}", dir.display())),
    }
}

type AckStream = ReceiverStream<Result<Ack, Status>>;
type TreeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<TreeEntries, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for Receiver {
    type ReplicateStream = AckStream;
    type ListTreeStream = TreeStream;

    async fn replicate(
        &self,
        req: Request<Streaming<OpBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let machine = self.authenticate(&req)?;
        let mirror = self.open_mirror(&machine).await?;
        let state = self.machine(&machine);
        let cancel = Arc::new(Cancel::default());
        let previous = state
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(cancel.clone());
        if let Some(previous) = previous {
            info!(%machine, "new replication stream replaces the active one");
            previous.cancel();
        }
        let (tx, rx) = mpsc::channel(16);
        let stream = Stream {
            machine,
            state,
            cancel,
            shutdown: self.inner.shutdown.clone(),
            tx,
        };
        tokio::spawn(stream.run(req.into_inner(), mirror));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_tree(
        &self,
        req: Request<ListTreeRequest>,
    ) -> Result<Response<TreeStream>, Status> {
        let machine = self.authenticate(&req)?;
        let roots = req.into_inner().roots;
        for root in &roots {
            wirepath::validate(root).map_err(|e| {
                Status::invalid_argument(format!(
                    "invalid root {:?}: {e}",
                    String::from_utf8_lossy(root)
                ))
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

/// One Replicate stream.
struct Stream {
    machine: MachineName,
    state: Arc<MachineState>,
    cancel: Arc<Cancel>,
    shutdown: Arc<Cancel>,
    tx: mpsc::Sender<Result<Ack, Status>>,
}

/// Why a stream stops.
enum Stop {
    Replaced,
    Shutdown,
    /// The agent ended the stream or went away.
    Agent,
}

impl Stream {
    async fn run(self, inbound: Streaming<OpBatch>, mirror: Mirror) {
        let stop = self.apply_all(inbound, mirror).await;
        let status = match stop {
            Stop::Replaced => Some(Status::aborted(
                "replaced by a newer Replicate stream from the same machine",
            )),
            Stop::Shutdown => Some(Status::unavailable("the receiver is shutting down")),
            Stop::Agent => None,
        };
        if let Some(status) = status {
            // Never wait on an agent that does not read its acks.
            let _ = self.tx.try_send(Err(status));
        }
        let mut active = self.state.active.lock().unwrap_or_else(|e| e.into_inner());
        if active
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &self.cancel))
        {
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
            _ = self.tx.closed() => Err(Stop::Agent),
            v = fut => Ok(v),
        }
    }

    async fn apply_all(&self, mut inbound: Streaming<OpBatch>, mirror: Mirror) -> Stop {
        let machine = &self.machine;
        // Wait for the stream this one replaces to stop.
        let _turn = match self
            .or_stop(self.state.stream_lock.clone().lock_owned())
            .await
        {
            Ok(guard) => guard,
            Err(stop) => return stop,
        };
        info!(%machine, mirror = %mirror.path().display(), "replication stream started");
        let mut applier = Some(Applier::new(mirror, machine.as_str()));
        let (mut batches, mut ops) = (0u64, 0u64);
        let stop = loop {
            let batch = match self.or_stop(inbound.message()).await {
                Ok(Ok(Some(batch))) => batch,
                Ok(Ok(None)) => break Stop::Agent,
                Ok(Err(status)) => {
                    info!(%machine, "replication stream broken: {status}");
                    break Stop::Agent;
                }
                Err(stop) => break stop,
            };
            let mut a = applier
                .take()
                .expect("the applier is back after each batch");
            let (cancel, shutdown) = (self.cancel.clone(), self.shutdown.clone());
            let n = batch.ops.len() as u64;
            // The batch is applied even if the agent goes away meanwhile; a
            // replacement or shutdown stops it between two ops.
            let applied = tokio::task::spawn_blocking(move || {
                let ack =
                    a.apply_batch(&batch, &|| cancel.is_cancelled() || shutdown.is_cancelled());
                (a, ack)
            })
            .await;
            let ack = match applied {
                Ok((a, ack)) => {
                    applier = Some(a);
                    ack
                }
                Err(e) => {
                    error!(%machine, "the applier failed: {e}");
                    let _ = self
                        .tx
                        .send(Err(Status::internal("the receiver's applier failed")))
                        .await;
                    break Stop::Agent;
                }
            };
            let Some(ack) = ack else {
                // Interrupted: the next turn of the loop sees why.
                continue;
            };
            batches += 1;
            ops += n;
            if !ack.errors.is_empty() {
                warn!(%machine, applied_seq = ack.applied_seq, errors = ack.errors.len(), "batch applied with errors");
            } else {
                debug!(%machine, applied_seq = ack.applied_seq, ops = n, "batch applied");
            }
            match self.or_stop(self.tx.send(Ok(ack))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Stop::Agent,
                Err(stop) => break stop,
            }
        };
        let how = match stop {
            Stop::Replaced => "replaced",
            Stop::Shutdown => "shutdown",
            Stop::Agent => "ended by the agent",
        };
        info!(%machine, batches, ops, "replication stream stopped: {how}");
        stop
    }
}
