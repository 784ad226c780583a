//! The gRPC `History` service (proto/history.proto): a machine reads its
//! own history with its own credential, and only reads. Which machine is
//! always the credential's (the `Authenticator` with machine credentials
//! only: a boot session gets nothing); a request names paths, never a
//! machine. Everything answered is bounded: versions and deletions by
//! count, a restore by entries and bytes, each message by `MAX_CHUNK` of
//! data.
//!
//! A restore is made with [`restore::restore_as_of`] into a private scratch
//! directory under `STORE/tmp/`, streamed from there, and removed when the
//! stream ends, however it ends (the client gone included); leftovers of a
//! receiver killed mid-stream are removed when the next one starts.

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lifeline_core::credential::MachineName;
use lifeline_core::{tree, wirepath};
use lifeline_proto::v1::history_server::{History, HistoryServer};
use lifeline_proto::v1::restore_piece::Kind as Piece;
use lifeline_proto::v1::{
    Attr, Deletion, Deletions, ListVersionsRequest, RecentDeletionsRequest, RestorePiece, RestoreRequest,
    RestoredEntry, Version, Versions,
};
use lifeline_store::private::create_private_dir_all;
use lifeline_store::{Authenticator, StoreLayout};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::{listing, restore};

/// The most versions one `ListVersions` answers (the newest).
pub const MAX_VERSIONS: usize = 10_000;
/// `RecentDeletions`' limit when the request gives none, and its largest.
pub const DEFAULT_DELETIONS: usize = 100;
pub const MAX_DELETIONS: usize = 1_000;
/// The most entries and bytes one `Restore` streams: beyond, the machine
/// restores a part at a time (or the operator restores on the receiver).
pub const MAX_RESTORE_ENTRIES: u64 = 1_000_000;
pub const MAX_RESTORE_BYTES: u64 = 64 << 30;

/// The `History` service over a store.
#[derive(Clone)]
pub struct HistoryService {
    store: StoreLayout,
    auth: Arc<dyn Authenticator>,
    /// Names each restore's scratch directory.
    restores: Arc<AtomicU64>,
}

impl HistoryService {
    /// Over `store`, with `auth` deciding which machine a request speaks
    /// for. Removes the scratch restores a previous receiver left.
    pub fn new(store: &StoreLayout, auth: Arc<dyn Authenticator>) -> anyhow::Result<HistoryService> {
        let dir = scratch_dir(store);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => info!("removed the restores a previous receiver left in {}", dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("removing {}: {e}", dir.display())),
        }
        Ok(HistoryService { store: store.clone(), auth, restores: Arc::default() })
    }

    /// The tonic service, with Lifeline's message size limits.
    pub fn into_service(self) -> HistoryServer<HistoryService> {
        HistoryServer::new(self)
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE)
            .max_encoding_message_size(lifeline_proto::MAX_MESSAGE)
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<MachineName, Status> {
        self.auth.authenticate(req.metadata(), req.extensions())
    }

    /// Runs `f` (reading the store) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(StoreLayout) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| Status::internal(format!("reading the history: {e}")))?
    }
}

fn scratch_dir(store: &StoreLayout) -> PathBuf {
    store.scratch().join("history-restores")
}

/// A wire path from a request, or INVALID_ARGUMENT saying what one is.
fn check_path(path: &[u8]) -> Result<(), Status> {
    wirepath::validate(path).map(drop).map_err(|e| {
        Status::invalid_argument(format!(
            "invalid path {:?}: {e}; give the file's absolute path on the machine without its leading '/' \
             (srv/data/report.txt)",
            String::from_utf8_lossy(path)
        ))
    })
}

fn internal(machine: &MachineName, what: &str, e: anyhow::Error) -> Status {
    error!(%machine, "{what}: {e:#}");
    Status::internal(format!("{what}: {e:#} (the receiver's log has more; tell its operator)"))
}

/// A restore's scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            warn!("could not remove the restore scratch {}: {e}", self.0.display());
        }
    }
}

type RestoreStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<RestorePiece, Status>> + Send>>;

#[tonic::async_trait]
impl History for HistoryService {
    type RestoreStream = RestoreStream;

    async fn list_versions(&self, req: Request<ListVersionsRequest>) -> Result<Response<Versions>, Status> {
        let machine = self.authenticate(&req)?;
        let path = req.into_inner().path;
        check_path(&path)?;
        self.blocking(move |store| {
            let (found, truncated) = restore::versions(&store, &machine, &path, MAX_VERSIONS)
                .map_err(|e| internal(&machine, "reading the history", e))?;
            let versions =
                found.into_iter().map(|v| Version { time_ns: v.time_ns, seq: v.seq, what: v.what }).collect();
            let now =
                restore::present(&store, &machine, &path).map_err(|e| internal(&machine, "reading the mirror", e))?;
            Ok(Response::new(Versions { versions, truncated, now: restore::describe(now.as_ref()) }))
        })
        .await
    }

    async fn recent_deletions(&self, req: Request<RecentDeletionsRequest>) -> Result<Response<Deletions>, Status> {
        let machine = self.authenticate(&req)?;
        let RecentDeletionsRequest { since_ns, limit } = req.into_inner();
        let limit = match limit as usize {
            0 => DEFAULT_DELETIONS,
            n => n.min(MAX_DELETIONS),
        };
        self.blocking(move |store| {
            let (found, truncated) = restore::recent_deletions(&store, &machine, since_ns, limit)
                .map_err(|e| internal(&machine, "reading the history", e))?;
            let deletions =
                found.into_iter().map(|d| Deletion { path: d.path, time_ns: d.time_ns, seq: d.seq }).collect();
            Ok(Response::new(Deletions { deletions, truncated }))
        })
        .await
    }

    async fn restore(&self, req: Request<RestoreRequest>) -> Result<Response<RestoreStream>, Status> {
        let machine = self.authenticate(&req)?;
        let RestoreRequest { path, as_of_ns } = req.into_inner();
        check_path(&path)?;
        let n = self.restores.fetch_add(1, Ordering::Relaxed);
        let dir = scratch_dir(&self.store).join(format!("{machine}.{n}"));
        let m = machine.clone();
        let p = path.clone();
        // The scratch goes with the blocking task: if the client leaves
        // while the restore is made, it is removed when the task ends.
        let (scratch, restored) = self
            .blocking(move |store| {
                create_private_dir_all(&dir).map_err(|e| internal(&m, "creating the restore's scratch", e.into()))?;
                let scratch = Scratch(dir);
                match restore::restore_as_of(&store, &m, as_of_ns, &p, &scratch.0) {
                    Ok(r) => Ok((scratch, r)),
                    Err(e) if e.is::<restore::Absent>() => Err(Status::not_found(format!(
                        "{e}; `history PATH` lists its versions, `history --deleted` what was removed"
                    ))),
                    Err(e) => Err(internal(&m, "restoring", e)),
                }
            })
            .await?;
        let entries = restored.files + restored.dirs + restored.symlinks;
        if entries > MAX_RESTORE_ENTRIES || restored.bytes > MAX_RESTORE_BYTES {
            return Err(Status::out_of_range(format!(
                "{} as of then is {entries} entries and {} bytes, more than one restore streams \
                 ({MAX_RESTORE_ENTRIES} entries, {MAX_RESTORE_BYTES} bytes): restore its subdirectories one by one, \
                 or ask the receiver's operator (`lifeline-receiver history restore`)",
                String::from_utf8_lossy(&path),
                restored.bytes
            )));
        }
        info!(%machine, path = %String::from_utf8_lossy(&path).escape_debug(), as_of_ns, entries, bytes = restored.bytes, "streaming a restore");
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let top = scratch.0.join(std::ffi::OsStr::from_bytes(&path));
            if let Err(e) = stream_tree(&top, &tx) {
                let _ = tx.blocking_send(Err(internal(&machine, "streaming the restore", e)));
            }
            drop(scratch);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends the tree at `top`, parents first; stops quietly once the client is
/// gone.
fn stream_tree(top: &Path, tx: &mpsc::Sender<Result<RestorePiece, Status>>) -> anyhow::Result<()> {
    let send = |kind: Piece| tx.blocking_send(Ok(RestorePiece { kind: Some(kind) })).is_ok();
    let walk = walkdir::WalkDir::new(top).follow_links(false).follow_root_links(false).sort_by_file_name();
    for entry in walk {
        let entry = entry?;
        let md = entry.path().symlink_metadata()?;
        let rel = entry.path().strip_prefix(top).expect("below the walk's root");
        let target = if md.file_type().is_symlink() { Some(std::fs::read_link(entry.path())?.into()) } else { None };
        let e = tree::Entry::from_metadata(rel.to_path_buf(), &md, target);
        let Some(kind) = listing::wire_kind(e.kind) else { continue };
        let is_file = e.kind == tree::Kind::File;
        let header = RestoredEntry {
            path: rel.as_os_str().as_bytes().to_vec(),
            kind: kind as i32,
            size: e.size,
            attr: Some(Attr {
                mode: e.mode,
                mtime_sec: e.mtime_sec,
                mtime_nsec: e.mtime_nsec,
                uid: Some(e.uid),
                gid: Some(e.gid),
            }),
            symlink_target: e.symlink_target.map(|t| t.into_vec()).unwrap_or_default(),
        };
        if !send(Piece::Entry(header)) {
            return Ok(());
        }
        if is_file {
            // The scratch is the receiver's own: nothing else writes there.
            let mut f = File::open(entry.path())?;
            let mut left = md.len();
            while left > 0 {
                let mut buf = vec![0u8; left.min(lifeline_proto::MAX_CHUNK as u64) as usize];
                f.read_exact(&mut buf)?;
                left -= buf.len() as u64;
                if !send(Piece::Data(buf)) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}
