//! A repository kept by Lifeline's receiver: a [`Store`] over the
//! `ImageStore` gRPC service.
//!
//! Everything secret stays here: packs and manifests are encrypted by
//! [`lifeline_repo::Repo`] before they reach this store, and the receiver keeps
//! opaque blobs in the machine's own directory. A pack is streamed to the
//! receiver while the backup fills it (one `PutPack` stream per pack, in
//! 1 MiB pieces) and is durable when the receiver answers; the packs'
//! indexes are listed once, so a second backup asks nothing per chunk.
//! Restore reads one group of chunks per request.

use std::sync::Mutex;

use lifeline_proto::client::Connection;
use lifeline_proto::v1::boot_sessions_client::BootSessionsClient;
use lifeline_proto::v1::image_store_client::ImageStoreClient;
use lifeline_proto::v1::jobs_client::JobsClient;
use lifeline_proto::v1::{
    BootSession, ClaimRequest, ImageBlob, ImageEmpty, JobReport, ManifestRequest, NamedBlob, PackPiece, PackRange,
};
use lifeline_repo::{PackEntry, PackId, PackListing, PackSink, RepoError, Result, Store};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Bytes per `PutPack` message.
const PIECE: usize = 1 << 20;
/// Pieces queued for the upload stream before `write` waits.
const UPLOAD_QUEUE: usize = 4;
/// Largest `ReadPack` answer asked for at once (below the message limit).
const READ_PIECE: u32 = 16 << 20;

pub struct RemoteStore {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    client: ImageStoreClient<Channel>,
}

/// One pack on its way: the open `PutPack` stream.
struct RemotePackSink {
    rt: tokio::runtime::Handle,
    conn: Connection,
    id: PackId,
    tx: Option<mpsc::Sender<PackPiece>>,
    reply: Option<tokio::task::JoinHandle<std::result::Result<tonic::Response<ImageEmpty>, Status>>>,
    buf: Vec<u8>,
    first: bool,
}

/// A receiver's refusal as a message for the user.
fn remote_error(conn: &Connection, what: &str, s: Status) -> RepoError {
    let msg = match s.code() {
        Code::Unauthenticated | Code::PermissionDenied => format!(
            "the receiver at {} refused the credential of machine {}: {} (check --token-file, or issue a new one with `lifeline-receiver machine reissue`)",
            conn.endpoint(),
            conn.machine(),
            s.message()
        ),
        Code::Unavailable => format!(
            "{what}: the receiver at {} is unreachable: {}",
            conn.endpoint(),
            s.message()
        ),
        _ => format!("{what}: receiver {}: {}", conn.endpoint(), s.message()),
    };
    RepoError::Remote(msg)
}

impl RemotePackSink {
    fn send_piece(&mut self) -> Result<()> {
        let data = std::mem::take(&mut self.buf);
        let id = if std::mem::take(&mut self.first) { self.id.0.to_vec() } else { vec![] };
        let sent = self.tx.as_ref().expect("open").blocking_send(PackPiece { id, data });
        if sent.is_err() {
            // The stream ended early: the receiver refused; its answer says why.
            self.tx = None;
            return Err(self.wait().err().unwrap_or_else(|| {
                RepoError::Remote(format!("the receiver at {} closed the upload", self.conn.endpoint()))
            }));
        }
        Ok(())
    }

    fn wait(&mut self) -> Result<()> {
        let Some(reply) = self.reply.take() else {
            return Err(RepoError::Remote("upload already ended".into()));
        };
        match self.rt.block_on(reply) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) if s.code() == Code::AlreadyExists => Err(RepoError::PackExists { pack: self.id }),
            Ok(Err(s)) => Err(remote_error(&self.conn, "uploading a pack", s)),
            Err(e) => Err(RepoError::Remote(format!("upload task failed: {e}"))),
        }
    }
}

impl PackSink for RemotePackSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(data);
        while self.buf.len() >= PIECE {
            let rest = self.buf.split_off(PIECE);
            self.send_piece()?;
            self.buf = rest;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        if !self.buf.is_empty() || self.first {
            self.send_piece()?;
        }
        self.tx = None; // ends the stream: the receiver commits and answers
        self.wait()
    }
}

impl Drop for RemotePackSink {
    fn drop(&mut self) {
        // Not committed: break the stream off, so the receiver drops it.
        if let Some(r) = self.reply.take() {
            r.abort();
        }
    }
}

/// The boot OS's first call: trades the one-time boot token `conn` carries
/// for a boot session (see `BootSessions.Claim`).
pub fn claim_boot(conn: &Connection) -> std::result::Result<BootSession, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the network runtime: {e}"))?;
    rt.block_on(async {
        let mut client = BootSessionsClient::new(conn.channel().await?);
        match client.claim(conn.request(ClaimRequest {})).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(format!("the receiver {} refused the boot token: {}", conn.endpoint(), s.message())),
        }
    })
}

/// Tells the receiver how a backup or restore goes (`Jobs.Report`):
/// started, progress, ended. Reporting never fails the job: a report that
/// does not get through is logged and the next one tries again.
pub struct JobReporter {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    /// The connection, kept from one report to the next.
    client: Mutex<Option<JobsClient<Channel>>>,
    job: Mutex<u64>,
    kind: String,
}

impl JobReporter {
    /// Starts job `kind` (backup, restore) of `image` (may be empty: named
    /// at the end) on `disk`.
    pub fn start(conn: &Connection, kind: &str, image: &str, disk: &str) -> Option<JobReporter> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let r = JobReporter {
            rt,
            conn: conn.clone(),
            client: Mutex::new(None),
            job: Mutex::new(0),
            kind: kind.to_string(),
        };
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
                *client = Some(JobsClient::new(conn.channel().await?));
            }
            let c = client.as_mut().expect("connected");
            c.report(conn.request(r)).await.map(|x| x.into_inner().job).map_err(|s| s.message().to_string())
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
        let client = ImageStoreClient::new(channel).max_decoding_message_size(size).max_encoding_message_size(size);
        Ok(RemoteStore { rt, conn, client })
    }

    fn err(&self, what: &str, s: Status) -> RepoError {
        remote_error(&self.conn, what, s)
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
}

impl Store for RemoteStore {
    fn location(&self) -> String {
        format!("{} (machine {})", self.conn.endpoint(), self.conn.machine())
    }

    fn load_config(&self) -> Result<Option<Vec<u8>>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageEmpty {});
        Ok(self.call("reading the repository config", c.get_config(req))?.map(|b| b.data))
    }

    fn create_config(&self, config: &[u8]) -> Result<()> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageBlob { data: config.to_vec() });
        match self.rt.block_on(c.create_config(req)) {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Err(RepoError::AlreadyExists { repo: self.location() }),
            Err(s) => Err(self.err("creating the repository", s)),
        }
    }

    fn create_pack(&self, id: &PackId) -> Result<Box<dyn PackSink>> {
        let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
        let mut c = self.client.clone();
        let req = self.conn.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = self.rt.spawn(async move { c.put_pack(req).await });
        Ok(Box::new(RemotePackSink {
            rt: self.rt.handle().clone(),
            conn: self.conn.clone(),
            id: *id,
            tx: Some(tx),
            reply: Some(reply),
            buf: Vec::with_capacity(PIECE),
            first: true,
        }))
    }

    fn read_pack(&self, id: &PackId, offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        while out.len() < len as usize {
            let want = (len - out.len() as u32).min(READ_PIECE);
            let mut c = self.client.clone();
            let req = self.conn.request(PackRange { id: id.0.to_vec(), offset: offset + out.len() as u64, len: want });
            let Some(b) = self.call("reading a pack", c.read_pack(req))? else {
                return Err(RepoError::Remote(format!("pack {id} is not on the receiver")));
            };
            if b.data.len() != want as usize {
                return Err(RepoError::Remote(format!(
                    "the receiver sent {} bytes of pack {id} for {want}",
                    b.data.len()
                )));
            }
            out.extend_from_slice(&b.data);
        }
        Ok(out)
    }

    fn put_manifest(&self, name: &str, blob: &[u8]) -> Result<()> {
        let mut c = self.client.clone();
        let req = self.conn.request(NamedBlob { name: name.into(), data: blob.to_vec() });
        match self.rt.block_on(c.put_manifest(req)) {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Err(RepoError::ImageExists { name: name.into() }),
            Err(s) => Err(self.err("storing the image manifest", s)),
        }
    }

    fn get_manifest(&self, name: &str, _max: usize) -> Result<Option<Vec<u8>>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ManifestRequest { name: name.into() });
        Ok(self.call("reading the image manifest", c.get_manifest(req))?.map(|b| b.data))
    }

    fn list_manifests(&self) -> Result<Vec<String>> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageEmpty {});
        Ok(self.call("listing images", c.list_manifests(req))?.map(|n| n.names).unwrap_or_default())
    }

    /// Machines do not delete what the receiver keeps for them: a machine
    /// taken over by ransomware must not be able to destroy its own backups.
    /// Retention is the receiver administrator's (not yet available).
    fn delete_manifest(&self, _name: &str) -> Result<()> {
        Err(RepoError::Remote(
            "images on the receiver cannot be deleted by the machine; retention is managed on the receiver".into(),
        ))
    }

    fn delete_pack(&self, _id: &PackId) -> Result<()> {
        Err(RepoError::Remote(
            "packs on the receiver cannot be deleted by the machine; retention is managed on the receiver".into(),
        ))
    }

    /// The receiver never prunes behind a backup's back (see above).
    fn lock(&self, _exclusive: bool) -> Result<Option<lifeline_repo::StoreLock>> {
        Ok(Some(lifeline_repo::StoreLock::none()))
    }

    fn list_packs(&self) -> Result<PackListing> {
        let mut c = self.client.clone();
        let req = self.conn.request(ImageEmpty {});
        self.rt.block_on(async {
            let mut stream = c.list_packs(req).await.map_err(|s| self.err("listing packs", s))?.into_inner();
            let mut out = PackListing::default();
            while let Some(m) = stream.next().await {
                let m = m.map_err(|s| self.err("listing packs", s))?;
                for p in m.packs {
                    let id = <[u8; 16]>::try_from(&p.id[..])
                        .map(PackId)
                        .map_err(|_| RepoError::Remote("malformed pack list from the receiver".into()))?;
                    let index = if p.error.is_empty() { Ok(p.index) } else { Err(p.error) };
                    out.packs.push(PackEntry { id, size: p.size, index });
                }
                out.stray.extend(m.stray);
                out.temp_files += m.temp_files;
            }
            Ok(out)
        })
    }
}
