//! The agent's control socket: gRPC over a Unix socket (`status`, `on`, `off`,
//! `sync`, `pause`, `resume`, and the tray's recent deletions and their
//! restore). Who may switch backup off is decided by the socket's
//! permissions. Its clients connect with
//! `lifeline_proto::control_client::client`.

use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lifeline_capture::Capture;
use lifeline_proto::control::v1::agent_control_server::{AgentControl, AgentControlServer};
use lifeline_proto::control::v1::{
    AgentStatus, DeletedFile, DeletedFiles, RecentDeletionsRequest, RestoreDeletedRequest, RestoredDeleted,
    SetCaptureRequest, SetPausedRequest, StatusRequest, SyncRequest,
};
use tokio::net::UnixListener;
use tokio::sync::Notify;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::status::{CaptureMode, Controls, Counters};

pub struct ControlService {
    /// What `status` reports.
    pub counters: Arc<Counters>,
    /// What `on`, `off`, `pause` and `resume` switch.
    pub controls: Arc<Controls>,
    /// The loaded eBPF programs (None when running on the fallback watcher).
    pub capture: Arc<Mutex<Option<Capture>>>,
    /// The fallback watcher (None with eBPF).
    pub watcher: Option<Arc<crate::fallback::Watcher>>,
    pub reconcile: Arc<Notify>,
    /// The receiver, whose History service answers for recent deletions.
    pub remote: Option<crate::remote::Remote>,
}

impl ControlService {
    /// The counters and the switches' positions.
    fn status(&self) -> AgentStatus {
        let mut status = self.counters.snapshot();
        self.controls.report(&mut status);
        status
    }
}

#[tonic::async_trait]
impl AgentControl for ControlService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<AgentStatus>, Status> {
        Ok(Response::new(self.status()))
    }

    async fn set_capture(&self, req: Request<SetCaptureRequest>) -> Result<Response<AgentStatus>, Status> {
        let enabled = req.into_inner().enabled;
        {
            let mut cap = self.capture.lock().unwrap();
            let was = self.controls.capture_mode();
            let on = match (cap.as_mut(), &self.watcher) {
                (Some(cap), _) => {
                    let result = if enabled { cap.attach() } else { cap.detach() };
                    result.map_err(|e| Status::internal(format!("{e:#}")))?;
                    CaptureMode::Ebpf
                }
                (None, Some(watcher)) => {
                    // Off drops every watch, on watches the trees again.
                    if (was == CaptureMode::Off) == enabled {
                        watcher.set_enabled(enabled);
                    }
                    CaptureMode::Notify
                }
                (None, None) => return Err(Status::internal("the agent has no capture to switch")),
            };
            self.controls.set_capture_mode(if enabled { on } else { CaptureMode::Off });
            if !enabled && was != CaptureMode::Off {
                // What is written from now on is only found by comparing.
                self.counters.suspect(std::time::SystemTime::now());
            }
        }
        if enabled {
            // Catch up with what changed while capture was off.
            self.reconcile.notify_one();
        }
        info!("automatic backup switched {}", if enabled { "on" } else { "off" });
        Ok(Response::new(self.status()))
    }

    async fn sync(&self, _: Request<SyncRequest>) -> Result<Response<AgentStatus>, Status> {
        self.reconcile.notify_one();
        Ok(Response::new(self.status()))
    }

    async fn recent_deletions(&self, req: Request<RecentDeletionsRequest>) -> Result<Response<DeletedFiles>, Status> {
        let remote = self.remote()?;
        let limit = match req.into_inner().limit {
            0 => 10,
            n => n.min(100),
        };
        let week_ago = lifeline_history::instant::parse("-7d", now_ns()).unwrap_or(0);
        let (found, _) = crate::history::deletions(remote, week_ago, limit).await.map_err(unavailable)?;
        let files = found
            .into_iter()
            .map(|d| {
                let local = lifeline_core::wirepath::to_local(&d.path);
                DeletedFile {
                    path: local.to_string_lossy().into_owned(),
                    raw_path: local.into_os_string().into_encoded_bytes(),
                    removed_ns: d.time_ns,
                }
            })
            .collect();
        Ok(Response::new(DeletedFiles { files }))
    }

    async fn restore_deleted(&self, req: Request<RestoreDeletedRequest>) -> Result<Response<RestoredDeleted>, Status> {
        let remote = self.remote()?;
        let RestoreDeletedRequest { raw_path, removed_ns } = req.into_inner();
        let path = PathBuf::from(std::ffi::OsString::from_vec(raw_path));
        if !path.is_absolute() || lifeline_core::wirepath::normalize(&path) != path {
            return Err(Status::invalid_argument(format!("{} is not an absolute, normal path", path.display())));
        }
        // The agent writes as root: never through a directory that a
        // symlink stands for (one planted where the file was).
        let parent = path.parent().unwrap_or(Path::new("/"));
        match std::fs::canonicalize(parent) {
            Ok(real) if real == parent => {}
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "{} leads through a symlink now: restore it with `lifeline-agent history {} --as-of ... --to DIR`",
                    parent.display(),
                    path.display()
                )))
            }
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "{}: {e}; restore the directory it was in first",
                    parent.display()
                )))
            }
        }
        let stamp = crate::history::local_time(now_ns(), true);
        let target = crate::history::Target::beside(&path, &format!("restored-{stamp}")).map_err(unavailable)?;
        // As it was just before the removal.
        crate::history::restore(remote, &path, removed_ns - 1, &target).await.map_err(unavailable)?;
        info!("restored {} as {}", path.display(), target.dest.display());
        Ok(Response::new(RestoredDeleted { restored_to: target.dest.to_string_lossy().into_owned() }))
    }

    async fn set_paused(&self, req: Request<SetPausedRequest>) -> Result<Response<AgentStatus>, Status> {
        // The scheduler reads the flag before each dispatch (see
        // scheduler::run): nothing else to do here. Resuming needs no
        // reconciliation: every change went into the queue log meanwhile.
        let paused = req.into_inner().paused;
        let was = self.controls.set_paused(paused);
        if was != paused {
            info!("sending {}", if paused { "paused" } else { "resumed" });
        }
        Ok(Response::new(self.status()))
    }
}

impl ControlService {
    fn remote(&self) -> Result<&crate::remote::Remote, Status> {
        self.remote.as_ref().ok_or_else(|| Status::failed_precondition("this agent has no receiver to ask"))
    }
}

fn now_ns() -> i64 {
    use lifeline_history::Clock;
    lifeline_history::SystemClock.now_ns()
}

/// A history call that failed, said for the tray.
fn unavailable(e: anyhow::Error) -> Status {
    Status::unavailable(format!("{e:#}"))
}

/// Inode of the socket this process created, so shutdown never removes a
/// successor's socket at the same path.
static SOCKET_INO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes the control socket if it is still the one this process made.
pub fn remove_socket(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let ours = SOCKET_INO.load(std::sync::atomic::Ordering::Relaxed);
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == ours) {
        let _ = std::fs::remove_file(path);
    }
}

/// Serves the control socket at `path` until the process ends.
pub async fn serve(path: PathBuf, service: ControlService) -> anyhow::Result<()> {
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot create the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    {
        use std::os::unix::fs::MetadataExt;
        SOCKET_INO.store(std::fs::symlink_metadata(&path)?.ino(), std::sync::atomic::Ordering::Relaxed);
    }
    info!("control socket at {}", path.display());
    if let Err(e) = Server::builder()
        .add_service(AgentControlServer::new(service))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
    {
        warn!("control socket stopped: {e}");
    }
    Ok(())
}
