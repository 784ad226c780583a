//! The `BootMediaStore` service: a machine's owner downloads its boot media
//! (the ISO or the USB image `lifeline-receiver bootos make` wrote) over the
//! receiver's TLS port, with the machine's own credential.
//!
//! * Only the requesting machine's media are listed and served: the
//!   machine comes from the credential, and another machine's media id is
//!   answered NOT_FOUND exactly as an id that does not exist.
//! * A boot session (the boot OS's credential) is not enough: it is made
//!   for the image store only.
//! * Media that was used or revoked is not served (its one-time token is
//!   dead), nor media made for network boot only (no file).
//! * Every download and every refusal is in the audit trail.
//!
//! The files travel encrypted by TLS; they hold the media's one-time token
//! and, for unattended media, the repository password (`holds_password`).

use std::sync::{Arc, Mutex};

use lifeline_proto::v1::boot_media_store_server::{BootMediaStore, BootMediaStoreServer};
use lifeline_proto::v1::{BootMediaChunk, BootMediaInfo, BootMediaList, BootMediaRequest, ListBootMediaRequest};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use lifeline_store::db::boot::BootMedia;
use lifeline_store::{Authenticator, Db, StoreLayout};

/// Bytes per message.
const PIECE: usize = 1 << 20;

#[derive(Clone)]
pub struct MediaDownload {
    store: StoreLayout,
    auth: Arc<dyn Authenticator>,
    db: Arc<Mutex<Db>>,
}

/// The file of a media kind, if it has one.
pub fn media_file(kind: &str) -> Option<&'static str> {
    match kind {
        "iso" => Some("boot.iso"),
        "usb" => Some("usb.img"),
        _ => None,
    }
}

impl MediaDownload {
    pub fn new(store: &StoreLayout, auth: Arc<dyn Authenticator>) -> anyhow::Result<MediaDownload> {
        let db = Arc::new(Mutex::new(Db::open(store.root())?));
        Ok(MediaDownload { store: store.clone(), auth, db })
    }

    pub fn into_service(self) -> BootMediaStoreServer<MediaDownload> {
        BootMediaStoreServer::new(self)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self, m: &BootMedia) -> BootMediaInfo {
        let file = media_file(&m.kind).unwrap_or("");
        let size = if file.is_empty() {
            0
        } else {
            std::fs::metadata(self.store.boot_media(m.id).join(file)).map_or(0, |x| x.len())
        };
        BootMediaInfo {
            id: m.id as u64,
            kind: m.kind.clone(),
            mode: m.mode.clone(),
            style: m.style.clone(),
            image: m.image.clone(),
            created_at: m.created_at.clone(),
            file: file.to_string(),
            size,
            used: m.used_at.is_some(),
            revoked: m.revoked,
            holds_password: m.mode != "menu" && m.kind != "netboot",
        }
    }
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("management database: {e:#}"))
}

#[tonic::async_trait]
impl BootMediaStore for MediaDownload {
    async fn list_boot_media(&self, req: Request<ListBootMediaRequest>) -> Result<Response<BootMediaList>, Status> {
        let machine = self.auth.authenticate(req.metadata(), req.extensions())?;
        let media = self.db().boot_media_of(Some(machine.as_str())).map_err(internal)?;
        Ok(Response::new(BootMediaList { media: media.iter().map(|m| self.info(m)).collect() }))
    }

    type DownloadBootMediaStream = ReceiverStream<Result<BootMediaChunk, Status>>;

    async fn download_boot_media(
        &self,
        req: Request<BootMediaRequest>,
    ) -> Result<Response<Self::DownloadBootMediaStream>, Status> {
        let machine = self.auth.authenticate(req.metadata(), req.extensions())?;
        let id = req.get_ref().id;
        let media = i64::try_from(id).ok().map(|id| self.db().boot_media(id)).transpose().map_err(internal)?.flatten();
        let refuse = |why: &str, status: Status| {
            warn!(machine = %machine, media = id, "boot media download refused: {why}");
            let _ =
                self.db().audit(Some(machine.as_str()), "boot media download refused", &format!("media #{id}: {why}"));
            Err(status)
        };
        let m = match media {
            Some(m) if m.machine == machine.as_str() => m,
            // Another machine's media is answered as a missing one.
            Some(_) => {
                return refuse(
                    "another machine's media",
                    Status::not_found(format!("machine {machine} has no boot media #{id}")),
                )
            }
            None => {
                return refuse("no such media", Status::not_found(format!("machine {machine} has no boot media #{id}")))
            }
        };
        let Some(file) = media_file(&m.kind) else {
            return refuse(
                "network boot only",
                Status::failed_precondition(format!(
                    "boot media #{id} is for network boot: it has no file (make --kind iso or usb)"
                )),
            );
        };
        if !m.usable() {
            let why = if m.revoked { "revoked" } else { "its one-time token was used" };
            return refuse(
                why,
                Status::failed_precondition(format!(
                    "boot media #{id} is {why}: it would boot to a refusal; make new media (lifeline-receiver bootos make {machine})",
                    why = if m.revoked { "revoked" } else { "used (its one-time token works once)" }
                )),
            );
        }
        let path = self.store.boot_media(m.id).join(file);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                return refuse(
                    &format!("{}: {e}", path.display()),
                    Status::not_found(format!("boot media #{id}'s file is missing")),
                )
            }
        };
        let info = self.info(&m);
        info!(machine = %machine, media = id, bytes = info.size, "boot media download");
        let _ = self.db().audit(
            Some(machine.as_str()),
            "boot media downloaded",
            &format!("media #{id} ({} {}, {} bytes)", m.kind, m.mode, info.size),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut f = f;
            let mut first = Some(info);
            loop {
                let mut buf = vec![0u8; PIECE];
                let n = match read_full(&mut f, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!("reading the media: {e}"))));
                        return;
                    }
                };
                buf.truncate(n);
                if n == 0 && first.is_none() {
                    return;
                }
                if tx.blocking_send(Ok(BootMediaChunk { info: first.take(), data: buf })).is_err() || n == 0 {
                    return;
                }
            }
            fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
                let mut got = 0;
                while got < buf.len() {
                    match f.read(&mut buf[got..])? {
                        0 => break,
                        n => got += n,
                    }
                }
                Ok(got)
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
