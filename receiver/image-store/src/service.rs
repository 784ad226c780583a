//! The `ImageStore` service: whole-disk image repositories kept for machines.
//!
//! Each authenticated machine has its own repository directory,
//! `<store>/images/<machine>/`, laid out and written exactly like a local one
//! ([`lifeline_repo::DirStore`]: each pack written to a temporary file as its
//! pieces arrive, fsync'd and linked to its name, never over an existing one;
//! manifests atomically). The machine's name comes from its credential, never
//! from the request, so one machine cannot name another's repository; pack
//! ids and image names are checked before they become file names, and sizes
//! against the format's limits. The receiver sees only encrypted blobs: the
//! password and keys stay on the machine.

use std::sync::Arc;

use lifeline_proto::v1::image_store_server::{ImageStore, ImageStoreServer};
use lifeline_proto::v1::{
    ImageBlob, ImageEmpty, ManifestNames, ManifestRequest, NamedBlob, PackInfo, PackList, PackPiece, PackRange,
};
use lifeline_repo::pack::MAX_PACK_SIZE;
use lifeline_repo::{DirStore, PackId, PackSink, RepoError, Store, MAX_MANIFEST_BLOB_SIZE};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use lifeline_core::credential::MachineName;
use lifeline_store::private::create_private_dir_all;
use lifeline_store::{Authenticator, ImageAccess, Quotas, StoreLayout};

/// Index bytes per `PackList` message (about).
const LIST_BYTES: usize = 1 << 20;
/// Largest `ReadPack` answer.
const MAX_READ: u32 = 16 << 20;

#[derive(Clone)]
pub struct ImageStoreService {
    store: StoreLayout,
    auth: Arc<dyn Authenticator>,
    quotas: Arc<Quotas>,
}

impl ImageStoreService {
    /// Repositories under `<store>/images/`.
    pub fn new(
        store: &StoreLayout,
        auth: Arc<dyn Authenticator>,
        quotas: Arc<Quotas>,
    ) -> anyhow::Result<ImageStoreService> {
        create_private_dir_all(&store.image_stores())?;
        Ok(ImageStoreService { store: store.clone(), auth, quotas })
    }

    /// Charges `bytes` the machine is about to store to its quota (see
    /// [`lifeline_store::quota`]).
    async fn charge(&self, machine: &MachineName, bytes: usize) -> Result<(), Status> {
        let (quotas, machine) = (self.quotas.clone(), machine.clone());
        tokio::task::spawn_blocking(move || quotas.charge(&machine, bytes as u64, 0))
            .await
            .map_err(|e| Status::internal(format!("quota task failed: {e}")))?
    }

    pub fn into_service(self) -> ImageStoreServer<ImageStoreService> {
        ImageStoreServer::new(self)
            .max_decoding_message_size(lifeline_proto::MAX_MESSAGE + (1 << 20))
            .max_encoding_message_size(lifeline_proto::MAX_MESSAGE + (1 << 20))
    }

    /// The store the request may read: the requesting machine's, or the
    /// machine's whose images its restore media reads (names are validated
    /// as single safe path components by [`MachineName`]).
    fn store_for<T>(&self, req: &Request<T>) -> Result<(MachineName, DirStore), Status> {
        Ok(self.open(self.auth.authenticate_images(req.metadata(), req.extensions())?))
    }

    /// The store the request may write: its own machine's only.
    fn store_to_write<T>(&self, req: &Request<T>) -> Result<(MachineName, DirStore), Status> {
        let a = self.auth.authenticate_images(req.metadata(), req.extensions())?;
        if a.read_only {
            return Err(Status::permission_denied(format!(
                "this boot session of machine {} restores machine {}'s images: it may read them, never write \
                 (make backup media for {} to back it up)",
                a.machine, a.store_of, a.machine
            )));
        }
        Ok(self.open(a))
    }

    /// The requesting machine and the store `a` gives it.
    fn open(&self, a: ImageAccess) -> (MachineName, DirStore) {
        (a.machine, DirStore::new(self.store.image_store(&a.store_of)))
    }
}

/// Run blocking store work off the async threads, mapping errors to statuses.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, RepoError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("store task failed: {e}")))?
        .map_err(status)
}

fn status(e: RepoError) -> Status {
    match e {
        RepoError::AlreadyExists { .. } => Status::already_exists("the machine already has an image repository"),
        RepoError::NotEmpty { .. } => Status::failed_precondition(e.to_string()),
        RepoError::BadName { .. } | RepoError::TooLarge { .. } | RepoError::CorruptPack { .. } => {
            Status::invalid_argument(e.to_string())
        }
        RepoError::PackExists { .. } | RepoError::ImageExists { .. } => Status::already_exists(e.to_string()),
        other => {
            warn!(error = %other, "image store");
            Status::internal(format!("receiver storage: {other}"))
        }
    }
}

fn pack_id(b: &[u8]) -> Result<PackId, Status> {
    b.try_into().map(PackId).map_err(|_| Status::invalid_argument("a pack id is 16 bytes"))
}

#[tonic::async_trait]
impl ImageStore for ImageStoreService {
    async fn get_config(&self, req: Request<ImageEmpty>) -> Result<Response<ImageBlob>, Status> {
        let (m, store) = self.store_for(&req)?;
        match blocking(move || store.load_config()).await? {
            Some(data) => Ok(Response::new(ImageBlob { data })),
            None => Err(Status::not_found(format!("machine {m} has no image repository yet"))),
        }
    }

    async fn create_config(&self, req: Request<ImageBlob>) -> Result<Response<ImageEmpty>, Status> {
        let (m, store) = self.store_to_write(&req)?;
        let data = req.into_inner().data;
        if data.len() > 1 << 20 {
            return Err(Status::invalid_argument("config larger than 1 MiB"));
        }
        self.charge(&m, data.len()).await?;
        blocking(move || store.create_config(&data)).await?;
        info!(machine = %m, "image repository created");
        Ok(Response::new(ImageEmpty {}))
    }

    type ListPacksStream = tokio_stream::Iter<std::vec::IntoIter<Result<PackList, Status>>>;

    async fn list_packs(&self, req: Request<ImageEmpty>) -> Result<Response<Self::ListPacksStream>, Status> {
        let (_, store) = self.store_for(&req)?;
        let listing = blocking(move || store.list_packs()).await?;
        let mut msgs: Vec<Result<PackList, Status>> = Vec::new();
        let mut cur = PackList::default();
        let mut bytes = 0;
        for p in listing.packs {
            let (index, error) = match p.index {
                Ok(b) => (b, String::new()),
                Err(e) => (vec![], e),
            };
            bytes += index.len() + 64;
            cur.packs.push(PackInfo { id: p.id.0.to_vec(), size: p.size, index, error });
            if bytes >= LIST_BYTES {
                msgs.push(Ok(std::mem::take(&mut cur)));
                bytes = 0;
            }
        }
        cur.stray = listing.stray;
        cur.temp_files = listing.temp_files;
        msgs.push(Ok(cur));
        Ok(Response::new(tokio_stream::iter(msgs)))
    }

    async fn put_pack(&self, req: Request<Streaming<PackPiece>>) -> Result<Response<ImageEmpty>, Status> {
        let (m, store) = self.store_to_write(&req)?;
        let mut stream = req.into_inner();
        let Some(first) = stream.next().await else {
            return Err(Status::invalid_argument("an empty pack upload"));
        };
        let PackPiece { id, data } = first?;
        let id = pack_id(&id)?;
        // Written to a temporary file as pieces arrive (no pack is held in
        // memory); dropped before the commit, the temporary file goes.
        let mut sink = blocking(move || store.create_pack_file(&id)).await?;
        let mut piece = data;
        loop {
            // Refused mid-pack: the temporary file goes with the sink.
            self.charge(&m, piece.len()).await?;
            sink = blocking(move || sink.write(&piece).map(|()| sink)).await?;
            match stream.next().await {
                Some(p) => {
                    let p = p?;
                    if !p.id.is_empty() {
                        return Err(Status::invalid_argument("the pack id goes in the first piece only"));
                    }
                    piece = p.data;
                }
                None => break,
            }
        }
        blocking(move || Box::new(sink).commit()).await?;
        tracing::debug!(machine = %m, pack = %id, "pack stored");
        Ok(Response::new(ImageEmpty {}))
    }

    async fn read_pack(&self, req: Request<PackRange>) -> Result<Response<ImageBlob>, Status> {
        let (_, store) = self.store_for(&req)?;
        let PackRange { id, offset, len } = req.into_inner();
        let id = pack_id(&id)?;
        if len > MAX_READ || offset.saturating_add(u64::from(len)) > MAX_PACK_SIZE {
            return Err(Status::invalid_argument("range outside any valid pack"));
        }
        let read = tokio::task::spawn_blocking(move || store.read_pack(&id, offset, len))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?;
        let data = match read {
            Ok(d) => d,
            Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found(format!("no pack {id}")));
            }
            Err(RepoError::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Status::out_of_range(format!("beyond the end of pack {id}")));
            }
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(ImageBlob { data }))
    }

    async fn put_manifest(&self, req: Request<NamedBlob>) -> Result<Response<ImageEmpty>, Status> {
        let (m, store) = self.store_to_write(&req)?;
        let NamedBlob { name, data } = req.into_inner();
        lifeline_repo::validate_image_name(&name).map_err(status)?;
        if data.len() > MAX_MANIFEST_BLOB_SIZE {
            return Err(Status::invalid_argument("manifest too large"));
        }
        self.charge(&m, data.len()).await?;
        let n = name.clone();
        blocking(move || store.put_manifest(&n, &data)).await.inspect_err(|s| {
            if s.code() == tonic::Code::AlreadyExists {
                warn!(machine = %m, image = %name, "refused to replace a stored image (write-once)");
            }
        })?;
        info!(machine = %m, image = %name, "image stored");
        Ok(Response::new(ImageEmpty {}))
    }

    async fn get_manifest(&self, req: Request<ManifestRequest>) -> Result<Response<ImageBlob>, Status> {
        let (_, store) = self.store_for(&req)?;
        let name = req.into_inner().name;
        lifeline_repo::validate_image_name(&name).map_err(status)?;
        let n = name.clone();
        match blocking(move || store.get_manifest(&n, MAX_MANIFEST_BLOB_SIZE)).await? {
            Some(data) => Ok(Response::new(ImageBlob { data })),
            None => Err(Status::not_found(format!("no image named {name:?}"))),
        }
    }

    async fn list_manifests(&self, req: Request<ImageEmpty>) -> Result<Response<ManifestNames>, Status> {
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
}
