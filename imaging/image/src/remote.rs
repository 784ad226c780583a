//! A repository kept by Lifeline's receiver: a [`Store`] over the
//! `ImageStore` gRPC service.
//!
//! Everything secret stays here: chunks and manifests are encrypted by
//! [`lifeline_repo::Repo`] before they reach this store, and the receiver keeps
//! opaque blobs in the machine's own directory. Chunks are sent on one
//! client stream per batch (the receiver makes them durable when the stream
//! ends, at [`Store::flush`]); the ids already stored are listed once, so a
//! second backup asks nothing per chunk.

use std::collections::HashSet;
use std::sync::Mutex;

use lifeline_proto::client::Connection;
use lifeline_proto::v1::image_store_client::ImageStoreClient;
use lifeline_proto::v1::{
    BootSession, ChunkBlob, JobReport, ChunkRequest, ImageBlob, ImageEmpty, ManifestRequest, NamedBlob, PutChunksReply,
};
use lifeline_repo::{ChunkId, ChunkListing, RepoError, Result, Store};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Chunks queued for the open upload stream before `put_chunk` waits.
const UPLOAD_QUEUE: usize = 16;

pub struct RemoteStore {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    client: ImageStoreClient<Channel>,
    /// Chunk ids the receiver holds (listed on first use) or was sent.
    known: Mutex<Option<HashSet<ChunkId>>>,
    upload: Mutex<Option<Upload>>,
}

/// The open `PutChunks` stream.
struct Upload {
    tx: mpsc::Sender<ChunkBlob>,
    reply: tokio::task::JoinHandle<std::result::Result<tonic::Response<PutChunksReply>, Status>>,
}

/// The boot OS's first call: trades the one-time boot token `conn` carries
/// for a boot session (see `ImageStore.ClaimBoot`).
pub fn claim_boot(conn: &Connection) -> std::result::Result<BootSession, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the network runtime: {e}"))?;
    rt.block_on(async {
        let mut client = ImageStoreClient::new(conn.channel().await?);
        match client.claim_boot(conn.request(ImageEmpty {})).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(format!("the receiver {} refused the boot token: {}", conn.endpoint(), s.message())),
        }
    })
}

/// Tells the receiver how a backup or restore goes (`ImageStore.ReportJob`):
/// started, progress, ended. Reporting never fails the job: a report that
/// does not get through is logged and the next one tries again.
pub struct JobReporter {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    /// The connection, kept from one report to the next.
    client: Mutex<Option<ImageStoreClient<Channel>>>,
    job: Mutex<u64>,
    kind: String,
}

impl JobReporter {
    /// Starts job `kind` (backup, restore) of `image` (may be empty: named
    /// at the end) on `disk`.
    pub fn start(conn: &Connection, kind: &str, image: &str, disk: &str) -> Option<JobReporter> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let r = JobReporter { rt, conn: conn.clone(), client: Mutex::new(None), job: Mutex::new(0), kind: kind.to_string() };
        r.send(JobReport { state: "running".into(), image: image.into(), disk: disk.into(), ..Default::default() });
        Some(r)
    }

    pub fn progress(&self, done: u64, total: u64) {
        self.send(JobReport { state: "running".into(), done_bytes: done, total_bytes: total, ..Default::default() });
    }

    /// The end: `Ok` with the image, disk and byte counts, or the error.
    pub fn finish(&self, outcome: std::result::Result<JobReport, String>) {
        let r = match outcome {
            Ok(r) => JobReport { state: "ok".into(), ..r },
            Err(message) => JobReport { state: "failed".into(), message, ..Default::default() },
        };
        self.send(r);
    }

    fn send(&self, mut r: JobReport) {
        let mut job = self.job.lock().unwrap_or_else(|e| e.into_inner());
        r.job = *job;
        r.kind = self.kind.clone();
        let conn = &self.conn;
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let sent = self.rt.block_on(async {
            if client.is_none() {
                *client = Some(ImageStoreClient::new(conn.channel().await?));
            }
            let c = client.as_mut().expect("connected");
            c.report_job(conn.request(r)).await.map(|x| x.into_inner().job).map_err(|s| s.message().to_string())
        });
        match sent {
            Ok(id) => *job = id,
            Err(e) => {
                *client = None;
                tracing::warn!("cannot report the {} to the receiver: {e}", self.kind);
            }
        }
    }
}

impl RemoteStore {
    /// Connect to the receiver (TLS, credential checked on the first call).
    pub fn connect(conn: Connection) -> Result<RemoteStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("image-remote")
            .enable_all()
            .build()
            .map_err(|e| RepoError::Remote(format!("cannot start the network runtime: {e}")))?;
        let channel = rt.block_on(conn.channel()).map_err(RepoError::Remote)?;
        let size = lifeline_proto::MAX_MESSAGE + (1 << 20);
        let client = ImageStoreClient::new(channel)
            .max_decoding_message_size(size)
            .max_encoding_message_size(size);
        Ok(RemoteStore {
            rt,
            conn,
            client,
            known: Mutex::new(None),
            upload: Mutex::new(None),
        })
    }

    fn err(&self, what: &str, s: Status) -> RepoError {
        let msg = match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => format!(
                "the receiver at {} refused the credential of machine {}: {} (check --token-file, or issue a new one with `lifeline-receiver machine reissue`)",
                self.conn.endpoint(),
                self.conn.machine(),
                s.message()
            ),
            Code::Unavailable => format!(
                "{what}: the receiver at {} is unreachable: {}",
                self.conn.endpoint(),
                s.message()
            ),
            _ => format!("{what}: receiver {}: {}", self.conn.endpoint(), s.message()),
        };
        RepoError::Remote(msg)
    }

    fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    ) -> Result<Option<T>> {
        match self.rt.block_on(f) {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.err(what, s)),
        }
    }

    fn load_known(&self) -> Result<()> {
        if self.known.lock().unwrap().is_some() {
            return Ok(());
        }
        let l = self.list_chunks()?;
        *self.known.lock().unwrap() = Some(l.ids.into_iter().collect());
        Ok(())
    }
}

impl Store for RemoteStore {
    fn location(&self) -> String {
        format!("{} (machine {})", self.conn.endpoint(), self.conn.machine())
    }

    fn load_config(&self) -> Result<Option<Vec<u8>>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageEmpty {});
        Ok(self
            .call("reading the repository config", c.get_config(req))?
            .map(|b| b.data))
    }

    fn create_config(&self, config: &[u8]) -> Result<()> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageBlob {
            data: config.to_vec(),
        });
        match self.rt.block_on(c.create_config(req)) {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Err(RepoError::AlreadyExists {
                repo: self.location(),
            }),
            Err(s) => Err(self.err("creating the repository", s)),
        }
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.load_known()?;
        Ok(self.known.lock().unwrap().as_ref().unwrap().contains(id))
    }

    fn put_chunk(&self, id: &ChunkId, blob: Vec<u8>) -> Result<()> {
        let tx = {
            let mut up = self.upload.lock().unwrap();
            if up.is_none() {
                let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
                let mut c = self.client.clone();
                let req = self
                    .conn
                    .request(tokio_stream::wrappers::ReceiverStream::new(rx));
                let reply = self.rt.spawn(async move { c.put_chunks(req).await });
                *up = Some(Upload { tx, reply });
            }
            up.as_ref().unwrap().tx.clone()
        };
        if tx
            .blocking_send(ChunkBlob {
                id: id.0.to_vec(),
                blob,
            })
            .is_err()
        {
            // The stream ended early: the receiver refused; flush says why.
            return self.flush().and(Err(RepoError::Remote(format!(
                "the receiver at {} closed the upload",
                self.conn.endpoint()
            ))));
        }
        if let Some(k) = self.known.lock().unwrap().as_mut() {
            k.insert(*id);
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let Some(up) = self.upload.lock().unwrap().take() else {
            return Ok(());
        };
        drop(up.tx);
        match self.rt.block_on(up.reply) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(self.err("uploading chunks", s)),
            Err(e) => Err(RepoError::Remote(format!("upload task failed: {e}"))),
        }
    }

    fn get_chunk(&self, id: &ChunkId, _max: usize) -> Result<Option<Vec<u8>>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ChunkRequest { id: id.0.to_vec() });
        Ok(self
            .call("reading a chunk", c.get_chunk(req))?
            .map(|b| b.data))
    }

    fn put_manifest(&self, name: &str, blob: &[u8]) -> Result<()> {
        self.flush()?;
        let mut c = self.client.clone();
        let req = self.conn.request(NamedBlob {
            name: name.into(),
            data: blob.to_vec(),
        });
        self.call("storing the image manifest", c.put_manifest(req))?;
        Ok(())
    }

    fn get_manifest(&self, name: &str, _max: usize) -> Result<Option<Vec<u8>>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ManifestRequest { name: name.into() });
        Ok(self
            .call("reading the image manifest", c.get_manifest(req))?
            .map(|b| b.data))
    }

    fn list_manifests(&self) -> Result<Vec<String>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageEmpty {});
        Ok(self
            .call("listing images", c.list_manifests(req))?
            .map(|n| n.names)
            .unwrap_or_default())
    }

    /// Machines do not delete what the receiver keeps for them: a machine
    /// taken over by ransomware must not be able to destroy its own backups.
    /// Retention is the receiver administrator's (not yet available).
    fn delete_manifest(&self, _name: &str) -> Result<()> {
        Err(RepoError::Remote(
            "images on the receiver cannot be deleted by the machine; retention is managed on the receiver".into(),
        ))
    }

    fn delete_chunk(&self, _id: &ChunkId) -> Result<()> {
        Err(RepoError::Remote(
            "chunks on the receiver cannot be deleted by the machine; retention is managed on the receiver".into(),
        ))
    }

    /// The receiver never prunes behind a backup's back (see above).
    fn lock(&self, _exclusive: bool) -> Result<Option<lifeline_repo::StoreLock>> {
        Ok(Some(lifeline_repo::StoreLock::none()))
    }

    fn list_chunks(&self) -> Result<ChunkListing> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageEmpty {});
        self.rt.block_on(async {
            let mut stream = c
                .list_chunks(req)
                .await
                .map_err(|s| self.err("listing chunks", s))?
                .into_inner();
            let mut out = ChunkListing::default();
            while let Some(m) = stream.next().await {
                let m = m.map_err(|s| self.err("listing chunks", s))?;
                if m.ids.len() % 32 != 0 {
                    return Err(RepoError::Remote(
                        "malformed chunk list from the receiver".into(),
                    ));
                }
                out.ids
                    .extend(m.ids.chunks(32).map(|c| ChunkId(c.try_into().unwrap())));
                out.stray.extend(m.stray);
                out.temp_files += m.temp_files;
            }
            Ok(out)
        })
    }
}
