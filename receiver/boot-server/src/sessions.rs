//! The `BootSessions` service: a boot OS trades the one-time boot token on
//! its kernel command line for a boot session, a fresh credential that
//! reaches only its machine's image store and job reports, for
//! [`lifeline_store::db::boot::SESSION_SECS`]. The token works once: a second boot with it, a revoked
//! one, or one presented under another machine's name is refused and
//! audited (see [`lifeline_store::db::boot`]); a token found used already
//! is a `boot token alarm` there and in the log.
//!
//! Unattended network-boot media hold no repository password (their initrd
//! goes over plain HTTP): the claim's reply carries it, over TLS, to the
//! one claimant of the token; it is kept in the media's private directory
//! (`password`, mode 0600; see [`crate::bootmedia`]).

use std::sync::{Arc, Mutex};

use lifeline_core::credential::Credential;
use lifeline_proto::v1::boot_sessions_server::{BootSessions, BootSessionsServer};
use lifeline_proto::v1::{BootSession, ClaimRequest};
use lifeline_store::access::{bearer_credential, db_unavailable};
use lifeline_store::db::boot::{BootMedia, Refusal, BOOT_TOKEN_ALARM};
use lifeline_store::refusals::RefusalAudit;
use lifeline_store::{Db, StoreLayout};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// A claimed boot token: the session's credential and what the media is for.
pub struct BootClaim {
    pub credential: Credential,
    pub expires_unix: i64,
    pub media: BootMedia,
}

/// Claims the boot token the request presents as its credential, from the
/// address `from` (for the audit trail).
pub fn claim(db: &Mutex<Db>, refusals: &RefusalAudit, metadata: &MetadataMap, from: &str) -> Result<BootClaim, Status> {
    let (token, name) = bearer_credential(metadata)?;
    let session = Credential::generate(name.as_str());
    let claimed = db
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .claim_boot(name.as_str(), &token.secret_hash(), &session.secret_hash(), from)
        .map_err(db_unavailable)?;
    match claimed {
        Ok(claimed) => {
            info!(machine = %name, media = claimed.media.id, from, "boot token claimed: boot session opened");
            Ok(BootClaim { credential: session, expires_unix: claimed.expires_unix, media: claimed.media })
        }
        Err(r) => {
            if let Refusal::Used { media, .. } = &r {
                warn!(machine = %name, from, "{BOOT_TOKEN_ALARM}: {r}: someone else may have booted this media");
                refusals.note(Some(name.as_str()), BOOT_TOKEN_ALARM, from, &format!("#{media} claimed before: {r}"));
            }
            warn!(machine = %name, from, "boot token refused: {r}");
            refusals.note(Some(name.as_str()), "boot token refused", from, &r.to_string());
            Err(Status::permission_denied(format!(
                "boot token refused: {r}; make new boot media with `lifeline-receiver bootos make {name}`"
            )))
        }
    }
}

pub struct BootSessionsService {
    db: Arc<Mutex<Db>>,
    refusals: Arc<RefusalAudit>,
    store: StoreLayout,
}

impl BootSessionsService {
    pub fn new(store: &StoreLayout) -> anyhow::Result<BootSessionsService> {
        Ok(BootSessionsService {
            db: Arc::new(Mutex::new(Db::open(store.root())?)),
            refusals: RefusalAudit::open(store.root())?,
            store: store.clone(),
        })
    }

    pub fn into_service(self) -> BootSessionsServer<BootSessionsService> {
        BootSessionsServer::new(self)
    }
}

#[tonic::async_trait]
impl BootSessions for BootSessionsService {
    async fn claim(&self, req: Request<ClaimRequest>) -> Result<Response<BootSession>, Status> {
        let from = req.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        let db = self.db.clone();
        let md = req.metadata().clone();
        let refusals = self.refusals.clone();
        let claim = tokio::task::spawn_blocking(move || claim(&db, &refusals, &md, &from))
            .await
            .map_err(|e| Status::internal(format!("claim task failed: {e}")))??;
        let password = crate::bootmedia::password_of(&self.store, claim.media.id).map_err(|e| {
            warn!(media = claim.media.id, "boot session without its password: {e:#}");
            Status::internal(format!("boot media #{}: the receiver cannot read its password", claim.media.id))
        })?;
        Ok(Response::new(BootSession {
            password: password.unwrap_or_default(),
            credential: claim.credential.token(),
            expires_unix: claim.expires_unix,
            media: claim.media.id as u64,
            mode: claim.media.mode,
            style: claim.media.style,
            image: claim.media.image,
        }))
    }
}
