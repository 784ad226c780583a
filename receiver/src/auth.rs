//! Who is on the other end of a request.
//!
//! Every request carries its machine's credential (see
//! [`lifeline_core::credential`]), over TLS; [`TokenAuthenticator`] checks it
//! against the machines registered in the receiver's database and says which
//! machine the request speaks for. Everything a request may touch is derived
//! from that name alone (its mirror, its queue progress), so one machine can
//! never read or write another's data.

use std::sync::{Arc, Mutex};

use lifeline_core::credential::MachineName;
use lifeline_store::access::{bearer_credential, db_unavailable, refuse};
use lifeline_store::db::boot::SESSION_SECS;
use lifeline_store::refusals::RefusalAudit;
use lifeline_store::throttle::Throttle;
use lifeline_store::{Authenticator, Db, ImageAccess};
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status};

/// Checks the `authorization: Bearer NAME:SECRET` credential against the
/// machines registered in the receiver's database (and, for the image store,
/// against the open boot sessions).
pub struct TokenAuthenticator {
    db: Mutex<Db>,
    /// Refused credentials, for the audit trail (aggregated).
    refusals: Arc<RefusalAudit>,
}

impl TokenAuthenticator {
    /// Checks against `db`; refusals go to its store's audit trail.
    pub fn new(db: Db) -> anyhow::Result<TokenAuthenticator> {
        let store = db.path().parent().unwrap_or(std::path::Path::new(".")).to_path_buf();
        Ok(TokenAuthenticator { db: Mutex::new(db), refusals: RefusalAudit::open(&store)? })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(
        &self,
        metadata: &MetadataMap,
        extensions: &Extensions,
        boot_sessions: bool,
    ) -> Result<ImageAccess, Status> {
        let (cred, name) = bearer_credential(metadata)?;
        let stored = self.db().token_hash(name.as_str()).map_err(db_unavailable)?;
        let Some(stored) = stored else {
            return Err(self.refuse_credential(&name, extensions, "no such machine is registered"));
        };
        if cred.matches(&stored) {
            return Ok(ImageAccess::own(name));
        }
        if boot_sessions {
            match self.db().boot_session(name.as_str(), &cred.secret_hash()).map_err(db_unavailable)? {
                Some(None) => return Ok(ImageAccess::own(name)),
                Some(Some(other)) => {
                    let store_of = MachineName::new(&other)
                        .map_err(|e| Status::internal(format!("boot session names a bad machine: {e}")))?;
                    return Ok(ImageAccess { machine: name, store_of, read_only: true });
                }
                None => {}
            }
        }
        Err(self.refuse_credential(&name, extensions, "the secret is not the machine's, nor an open boot session's"))
    }

    /// Refuses a credential with one message whatever the reason, so that
    /// nobody learns from it which machine names exist here; the reason goes
    /// to the receiver's log (throttled) and its audit trail (aggregated).
    fn refuse_credential(&self, name: &MachineName, extensions: &Extensions, reason: &str) -> Status {
        static REFUSED: Throttle = Throttle::new();
        let from = remote_addr(extensions);
        REFUSED.hit(|more| tracing::warn!(machine = %name, from, more, "credential refused: {reason}"));
        self.refusals.note(Some(name.as_str()), "credential refused", &from, reason);
        refuse_with_one_message(name)
    }
}

/// The address a request came from, for the audit trail.
fn remote_addr(extensions: &Extensions) -> String {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| extensions.get::<TlsConnectInfo<TcpConnectInfo>>().map(TlsConnectInfo::get_ref))
        .and_then(TcpConnectInfo::remote_addr)
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string())
}

fn refuse_with_one_message(name: &MachineName) -> Status {
    refuse(format!(
        "credential refused for machine {name}: unknown here, or not its current secret (was it reissued? use the \
         token file `lifeline-receiver machine add`/`machine reissue` wrote; a boot OS's session lasts {} h)",
        SESSION_SECS / 3600
    ))
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&self, metadata: &MetadataMap, extensions: &Extensions) -> Result<MachineName, Status> {
        self.check(metadata, extensions, false).map(|a| a.machine)
    }

    fn authenticate_images(&self, metadata: &MetadataMap, extensions: &Extensions) -> Result<ImageAccess, Status> {
        self.check(metadata, extensions, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_core::credential::Credential;

    fn request(token: Option<&str>, header: Option<&str>) -> MetadataMap {
        let mut md = MetadataMap::new();
        if let Some(t) = token {
            md.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(h) = header {
            md.insert(lifeline_proto::MACHINE_HEADER, h.parse().unwrap());
        }
        md
    }

    #[test]
    fn token_authenticator() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(d.path()).unwrap();
        let (m1, m2) = (Credential::generate("m1"), Credential::generate("m2"));
        db.add_machine(&MachineName::new("m1").unwrap(), &m1.secret_hash(), "").unwrap();
        db.add_machine(&MachineName::new("m2").unwrap(), &m2.secret_hash(), "").unwrap();
        let auth = TokenAuthenticator::new(db).unwrap();
        let ext = Extensions::new();
        let ok = |md: MetadataMap| auth.authenticate(&md, &ext).map(|m| m.as_str().to_string());
        let refused = |md: MetadataMap| {
            let e = auth.authenticate(&md, &ext).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            e.message().to_string()
        };
        assert_eq!(ok(request(Some(&m1.token()), None)).unwrap(), "m1");
        assert_eq!(ok(request(Some(&m2.token()), Some("m2"))).unwrap(), "m2");
        assert!(refused(request(None, Some("m1"))).contains("no credential"));
        assert!(refused(request(Some("m1"), None)).contains("malformed"));
        // m2's secret presented as m1's.
        let forged = format!("m1:{}", m2.token().split_once(':').unwrap().1);
        let wrong_secret = refused(request(Some(&forged), None));
        assert!(wrong_secret.contains("credential refused for machine m1"), "{wrong_secret}");
        // m1's credential claiming to be m2.
        assert!(refused(request(Some(&m1.token()), Some("m2"))).contains("speaks for"));
        let stranger = Credential::generate("m3");
        // An unknown machine gets the very same answer: no oracle for names.
        let unknown = refused(request(Some(&stranger.token()), None));
        assert_eq!(unknown, wrong_secret.replace("machine m1", "machine m3"));
        let evil = Credential::generate("../m1");
        assert!(refused(request(Some(&evil.token()), None)).contains("malformed"));
    }

    /// A boot token is claimed once; the session it opens works for the
    /// machine's image store only, never for replication; another machine's
    /// name with it gets nothing.
    #[test]
    fn boot_sessions_are_for_images_only() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::open(d.path()).unwrap();
        let m1 = Credential::generate("m1");
        db.add_machine(&MachineName::new("m1").unwrap(), &m1.secret_hash(), "").unwrap();
        db.add_machine(&MachineName::new("m2").unwrap(), &Credential::generate("m2").secret_hash(), "").unwrap();
        let boot = Credential::generate("m1");
        let media = lifeline_store::db::boot::BootMedia::new("m1", "netboot", "backup", "receiver");
        db.add_boot_media(&media, &boot.secret_hash()).unwrap();
        // Restore media of m2 reading m1's images.
        let restore = Credential::generate("m2");
        let from_m1 = lifeline_store::db::boot::BootMedia {
            machine: "m2".into(),
            mode: "restore".into(),
            image_of: Some("m1".into()),
            ..media.clone()
        };
        db.add_boot_media(&from_m1, &restore.secret_hash()).unwrap();
        let auth = TokenAuthenticator::new(db).unwrap();
        // Boot tokens are claimed by the boot server, over its own connection.
        let sessions = Mutex::new(Db::open(d.path()).unwrap());
        let refusals = RefusalAudit::open(d.path()).unwrap();
        let claim =
            |md: &MetadataMap, from: &str| lifeline_boot_server::sessions::claim(&sessions, &refusals, md, from);
        let ext = Extensions::new();
        // The boot token itself is no credential.
        assert!(auth.authenticate_images(&request(Some(&boot.token()), None), &ext).is_err());
        // Presented as m2's: refused, and still unused.
        let foreign = format!("m2:{}", boot.token().split_once(':').unwrap().1);
        let e = claim(&request(Some(&foreign), None), "x").err().unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let session = claim(&request(Some(&boot.token()), None), "10.0.2.15").ok().unwrap().credential;
        let e = claim(&request(Some(&boot.token()), None), "10.0.2.15").err().unwrap();
        assert!(e.message().contains("already used"), "{}", e.message());
        let md = request(Some(&session.token()), None);
        assert_eq!(auth.authenticate_images(&md, &ext).unwrap(), ImageAccess::own(MachineName::new("m1").unwrap()));
        let e = auth.authenticate(&md, &ext).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // The machine's own credential still works everywhere.
        let md = request(Some(&m1.token()), None);
        assert!(auth.authenticate(&md, &ext).is_ok() && auth.authenticate_images(&md, &ext).is_ok());
        // m2's restore session reads m1's store, and only reads.
        let s2 = claim(&request(Some(&restore.token()), None), "10.0.2.16").ok().unwrap().credential;
        let a = auth.authenticate_images(&request(Some(&s2.token()), None), &ext).unwrap();
        assert_eq!((a.machine.as_str(), a.store_of.as_str(), a.read_only), ("m2", "m1", true));
        assert!(auth.authenticate(&request(Some(&s2.token()), None), &ext).is_err());
    }
}
