//! The `ImageStore` service: whole-disk image repositories kept for machines.
//!
//! Each authenticated machine has its own repository directory,
//! `<store>/images/<machine>/`, laid out and written exactly like a local one
//! ([`lifeline_repo::DirStore`]: chunks made durable in batches, manifests
//! atomically). The machine's name comes from its credential, never from the
//! request, so one machine cannot name another's repository; chunk ids and
//! image names are checked before they become file names. The receiver sees
//! only encrypted blobs: the password and keys stay on the machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeline_proto::v1::image_store_server::{ImageStore, ImageStoreServer};
use lifeline_proto::v1::{
    BootSession, ChunkBlob, JobReply, JobReport, ChunkList, ChunkRequest, ImageBlob, ImageEmpty, ManifestNames, ManifestRequest,
    NamedBlob, PutChunksReply,
};
use lifeline_repo::{ChunkId, DirStore, RepoError, Store, MAX_BLOB_SIZE, MAX_MANIFEST_BLOB_SIZE};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::auth::{Authenticator, MachineName};

/// Chunk ids per `ChunkList` message (32 bytes each: 1 MiB messages).
const IDS_PER_MESSAGE: usize = 32 * 1024;

#[derive(Clone)]
pub struct Images {
    root: PathBuf,
    auth: Arc<dyn Authenticator>,
    /// The management database, for job reports.
    db: Arc<std::sync::Mutex<crate::db::Db>>,
}

impl Images {
    /// Repositories under `<store>/images/`.
    pub fn new(store: &Path, auth: Arc<dyn Authenticator>) -> anyhow::Result<Images> {
        let root = store.join("images");
        crate::safepath::create_private_dir_all(&root)?;
        let db = Arc::new(std::sync::Mutex::new(crate::db::Db::open(store)?));
        Ok(Images { root, auth, db })
    }

    pub fn into_service(self) -> ImageStoreServer<Images> {
        ImageStoreServer::new(self)
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE + (1 << 20))
            .max_encoding_message_size(lifeline_proto::MAX_MESSAGE + (1 << 20))
    }

    /// The requesting machine's store (its name is already validated as a
    /// single safe path component by [`MachineName`]).
    fn store_for<T>(&self, req: &Request<T>) -> Result<(MachineName, DirStore), Status> {
        let m = self.auth.authenticate_images(req.metadata(), req.extensions())?;
        let dir = self.root.join(m.as_str());
        Ok((m, DirStore::new(dir)))
    }
}

/// Run blocking store work off the async threads, mapping errors to statuses.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RepoError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(status)
}

fn status(e: RepoError) -> Status {
    match e {
        RepoError::AlreadyExists { .. } => {
            Status::already_exists("the machine already has an image repository")
        }
        RepoError::NotEmpty { .. } => Status::failed_precondition(e.to_string()),
        RepoError::BadName { .. } | RepoError::TooLarge { .. } => {
            Status::invalid_argument(e.to_string())
        }
        other => {
            warn!(error = %other, "image store");
            Status::internal(format!("receiver storage: {other}"))
        }
    }
}

fn chunk_id(b: &[u8]) -> Result<ChunkId, Status> {
    b.try_into()
        .map(ChunkId)
        .map_err(|_| Status::invalid_argument("a chunk id is 32 bytes"))
}

#[tonic::async_trait]
impl ImageStore for Images {
    async fn get_config(&self, req: Request<ImageEmpty>) -> Result<Response<ImageBlob>, Status> {
        let (m, store) = self.store_for(&req)?;
        match blocking(move || store.load_config()).await? {
            Some(data) => Ok(Response::new(ImageBlob { data })),
            None => Err(Status::not_found(format!(
                "machine {m} has no image repository yet"
            ))),
        }
    }

    async fn create_config(&self, req: Request<ImageBlob>) -> Result<Response<ImageEmpty>, Status> {
        let (m, store) = self.store_for(&req)?;
        let data = req.into_inner().data;
        if data.len() > 1 << 20 {
            return Err(Status::invalid_argument("config larger than 1 MiB"));
        }
        blocking(move || store.create_config(&data)).await?;
        info!(machine = %m, "image repository created");
        Ok(Response::new(ImageEmpty {}))
    }

    type ListChunksStream = tokio_stream::Iter<std::vec::IntoIter<Result<ChunkList, Status>>>;

    async fn list_chunks(
        &self,
        req: Request<ImageEmpty>,
    ) -> Result<Response<Self::ListChunksStream>, Status> {
        let (_, store) = self.store_for(&req)?;
        let listing = blocking(move || store.list_chunks()).await?;
        let mut msgs: Vec<Result<ChunkList, Status>> = listing
            .ids
            .chunks(IDS_PER_MESSAGE)
            .map(|ids| {
                Ok(ChunkList {
                    ids: ids.iter().flat_map(|i| i.0).collect(),
                    stray: vec![],
                    temp_files: 0,
                })
            })
            .collect();
        msgs.push(Ok(ChunkList {
            ids: vec![],
            stray: listing.stray,
            temp_files: listing.temp_files,
        }));
        Ok(Response::new(tokio_stream::iter(msgs)))
    }

    async fn put_chunks(
        &self,
        req: Request<Streaming<ChunkBlob>>,
    ) -> Result<Response<PutChunksReply>, Status> {
        let (_, store) = self.store_for(&req)?;
        let store = Arc::new(store);
        let mut stream = req.into_inner();
        let mut reply = PutChunksReply::default();
        while let Some(msg) = stream.next().await {
            let ChunkBlob { id, blob } = msg?;
            let id = chunk_id(&id)?;
            if blob.len() > MAX_BLOB_SIZE {
                return Err(Status::invalid_argument(
                    "chunk blob larger than any valid chunk",
                ));
            }
            let s = store.clone();
            // Never overwrite: a stored chunk is immutable (its name is its
            // content's keyed hash).
            let new = blocking(move || {
                if s.has_chunk(&id)? {
                    return Ok(false);
                }
                s.put_chunk(&id, blob).map(|()| true)
            })
            .await?;
            if new {
                reply.stored += 1;
            } else {
                reply.present += 1;
            }
        }
        let s = store.clone();
        blocking(move || s.flush()).await?;
        Ok(Response::new(reply))
    }

    async fn get_chunk(&self, req: Request<ChunkRequest>) -> Result<Response<ImageBlob>, Status> {
        let (_, store) = self.store_for(&req)?;
        let id = chunk_id(&req.get_ref().id)?;
        match blocking(move || store.get_chunk(&id, MAX_BLOB_SIZE)).await? {
            Some(data) => Ok(Response::new(ImageBlob { data })),
            None => Err(Status::not_found(format!("chunk {id} is not stored"))),
        }
    }

    async fn put_manifest(&self, req: Request<NamedBlob>) -> Result<Response<ImageEmpty>, Status> {
        let (m, store) = self.store_for(&req)?;
        let NamedBlob { name, data } = req.into_inner();
        lifeline_repo::validate_image_name(&name).map_err(status)?;
        if data.len() > MAX_MANIFEST_BLOB_SIZE {
            return Err(Status::invalid_argument("manifest too large"));
        }
        let n = name.clone();
        blocking(move || store.put_manifest(&n, &data)).await?;
        info!(machine = %m, image = %name, "image stored");
        Ok(Response::new(ImageEmpty {}))
    }

    async fn get_manifest(
        &self,
        req: Request<ManifestRequest>,
    ) -> Result<Response<ImageBlob>, Status> {
        let (_, store) = self.store_for(&req)?;
        let name = req.into_inner().name;
        lifeline_repo::validate_image_name(&name).map_err(status)?;
        let n = name.clone();
        match blocking(move || store.get_manifest(&n, MAX_MANIFEST_BLOB_SIZE)).await? {
            Some(data) => Ok(Response::new(ImageBlob { data })),
            None => Err(Status::not_found(format!("no image named {name:?}"))),
        }
    }

    async fn list_manifests(
        &self,
        req: Request<ImageEmpty>,
    ) -> Result<Response<ManifestNames>, Status> {
        let (_, store) = self.store_for(&req)?;
        let names = blocking(move || {
            if store.load_config()?.is_none() {
                return Ok(vec![]);
            }
            store.list_manifests()
        })
        .await?;
        Ok(Response::new(ManifestNames { names }))
    }

    async fn claim_boot(&self, req: Request<ImageEmpty>) -> Result<Response<BootSession>, Status> {
        let from = req.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        let auth = self.auth.clone();
        let md = req.metadata().clone();
        let claim = tokio::task::spawn_blocking(move || auth.claim_boot(&md, &from))
            .await
            .map_err(|e| Status::internal(format!("claim task failed: {e}")))??;
        info!(machine = claim.media.machine, media = claim.media.id, "boot session opened");
        Ok(Response::new(BootSession {
            credential: claim.credential.token(),
            expires_unix: claim.expires_unix,
            media: claim.media.id as u64,
            mode: claim.media.mode,
            style: claim.media.style,
            image: claim.media.image,
        }))
    }

    async fn report_job(&self, req: Request<JobReport>) -> Result<Response<JobReply>, Status> {
        let m = self.auth.authenticate_images(req.metadata(), req.extensions())?;
        let r = req.into_inner();
        let limit = |s: String| s.chars().take(1000).collect::<String>();
        let report = crate::jobsdb::Report {
            kind: r.kind,
            state: r.state,
            image: limit(r.image),
            disk: limit(r.disk),
            disk_size: r.disk_size,
            done_bytes: r.done_bytes,
            total_bytes: r.total_bytes,
            message: limit(r.message),
            stored_bytes: r.stored_bytes,
        };
        let db = self.db.clone();
        let machine = m.as_str().to_string();
        let job = i64::try_from(r.job).map_err(|_| Status::invalid_argument("no such job"))?;
        let id = tokio::task::spawn_blocking(move || {
            db.lock().unwrap_or_else(|e| e.into_inner()).report_job(&machine, job, &report)
        })
        .await
        .map_err(|e| Status::internal(format!("job task failed: {e}")))?
        .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        Ok(Response::new(JobReply { job: id as u64 }))
    }
}
