//! Who is on the other end of a request.
//!
//! Every request carries its machine's credential (see
//! [`lifeline_core::credential`]), over TLS; [`TokenAuthenticator`] checks it
//! against the machines registered in the receiver's database and says which
//! machine the request speaks for. Everything a request may touch is derived
//! from that name alone (its mirror, its queue progress), so one machine can
//! never read or write another's data.

use std::fmt;
use std::sync::Mutex;

use lifeline_core::credential::{Credential, BEARER};

use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status};

use crate::db::Db;

/// Longest machine name accepted.
pub const MAX_MACHINE_NAME: usize = 64;

/// A machine's name, safe to use as a single path component: 1 to 64 bytes
/// of `[A-Za-z0-9._-]`, and neither `.` nor `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineName(String);

impl MachineName {
    pub fn new(name: &str) -> Result<MachineName, String> {
        if name.is_empty() || name.len() > MAX_MACHINE_NAME {
            return Err(format!("machine name {name:?} must be 1 to {MAX_MACHINE_NAME} characters long"));
        }
        if name == "." || name == ".." {
            return Err(format!("machine name {name:?} is not allowed"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(format!("machine name {name:?} may only contain letters, digits, '.', '_' and '-'"));
        }
        Ok(MachineName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decides which machine a request speaks for, or refuses it (normally with
/// `Status::unauthenticated`).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, metadata: &MetadataMap, extensions: &Extensions) -> Result<MachineName, Status>;

    /// For the image store: like [`Authenticator::authenticate`], and a
    /// boot session's credential is good too; says whose images the request
    /// may use, and how.
    fn authenticate_images(&self, metadata: &MetadataMap, extensions: &Extensions) -> Result<ImageAccess, Status> {
        self.authenticate(metadata, extensions).map(ImageAccess::own)
    }

    /// Turns the request's one-time boot token into a boot session (see
    /// [`crate::bootdb`]).
    fn claim_boot(&self, _metadata: &MetadataMap, _from: &str) -> Result<BootClaim, Status> {
        Err(Status::unimplemented("this receiver does not take boot tokens"))
    }
}

/// What an image store request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAccess {
    /// The machine the request speaks for (its jobs, its audit lines).
    pub machine: MachineName,
    /// Whose image store it uses: its own, or for a cross-machine restore
    /// (restore media made with `--image-of`) the other machine's.
    pub store_of: MachineName,
    /// Reading only: a cross-machine restore never writes to the other
    /// machine's store.
    pub read_only: bool,
}

impl ImageAccess {
    pub fn own(machine: MachineName) -> ImageAccess {
        ImageAccess { store_of: machine.clone(), machine, read_only: false }
    }
}

/// A claimed boot token: the session's credential and what the media is for.
pub struct BootClaim {
    pub credential: Credential,
    pub expires_unix: i64,
    pub media: crate::bootdb::BootMedia,
}

/// Checks the `authorization: Bearer NAME:SECRET` credential against the
/// machines registered in the receiver's database. A request that also names
/// a machine in `x-lifeline-machine` must name the same one.
pub struct TokenAuthenticator {
    db: Mutex<Db>,
}

impl TokenAuthenticator {
    pub fn new(db: Db) -> TokenAuthenticator {
        TokenAuthenticator { db: Mutex::new(db) }
    }
}

fn refuse(msg: String) -> Status {
    tracing::warn!("authentication refused: {}", msg.escape_debug());
    Status::unauthenticated(msg)
}

impl TokenAuthenticator {
    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request's credential (not yet checked) and the machine it names.
    fn credential(metadata: &MetadataMap) -> Result<(Credential, MachineName), Status> {
        let value = metadata.get("authorization").ok_or_else(|| {
            refuse("no credential: start the agent with --token-file (the file `lifeline-receiver machine add NAME` writes)".into())
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix(BEARER))
            .ok_or_else(|| refuse("the authorization header must be `Bearer NAME:SECRET`".into()))?;
        let cred = Credential::parse(token).map_err(|e| refuse(format!("malformed credential: {e}")))?;
        let name = MachineName::new(cred.machine()).map_err(|e| refuse(format!("malformed credential: {e}")))?;
        if let Some(claimed) = metadata.get(lifeline_proto::MACHINE_HEADER) {
            if claimed.as_bytes() != name.as_str().as_bytes() {
                return Err(refuse(format!(
                    "the credential is machine {name}'s, but the request speaks for {:?}",
                    String::from_utf8_lossy(claimed.as_bytes())
                )));
            }
        }
        Ok((cred, name))
    }

    fn check(&self, metadata: &MetadataMap, boot_sessions: bool) -> Result<ImageAccess, Status> {
        let (cred, name) = Self::credential(metadata)?;
        let stored = self.db().token_hash(name.as_str()).map_err(db_unavailable)?;
        let Some(stored) = stored else {
            return Err(refuse(format!(
                "machine {name} is not registered at this receiver (`lifeline-receiver machine add {name}` registers it)"
            )));
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
        Err(refuse(format!(
            "wrong credential for machine {name} (was it reissued? use the token file `machine add`/`machine reissue` wrote; \
             a boot OS's session lasts {} h)",
            crate::bootdb::SESSION_SECS / 3600
        )))
    }
}

fn db_unavailable(e: anyhow::Error) -> Status {
    tracing::error!("cannot read the machine database: {e:#}");
    Status::unavailable("the receiver cannot read its machine database; try again later")
}

impl Authenticator for TokenAuthenticator {
    fn authenticate(&self, metadata: &MetadataMap, _extensions: &Extensions) -> Result<MachineName, Status> {
        self.check(metadata, false).map(|a| a.machine)
    }

    fn authenticate_images(&self, metadata: &MetadataMap, _extensions: &Extensions) -> Result<ImageAccess, Status> {
        self.check(metadata, true)
    }

    fn claim_boot(&self, metadata: &MetadataMap, from: &str) -> Result<BootClaim, Status> {
        let (token, name) = Self::credential(metadata)?;
        let session = Credential::generate(name.as_str());
        let claimed = self
            .db()
            .claim_boot(name.as_str(), &token.secret_hash(), &session.secret_hash(), from)
            .map_err(db_unavailable)?;
        match claimed {
            Ok(claimed) => {
                tracing::info!(machine = %name, media = claimed.media.id, from, "boot token claimed: boot session opened");
                Ok(BootClaim { credential: session, expires_unix: claimed.expires_unix, media: claimed.media })
            }
            Err(r) => {
                tracing::warn!(machine = %name, from, "boot token refused: {r}");
                Err(Status::permission_denied(format!(
                    "boot token refused: {r}; make new boot media with `lifeline-receiver bootos make {name}`"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names() {
        for good in ["web-1", "db.example.org", "A_b-9", "..a", "a..", "...", &"x".repeat(64)] {
            assert!(MachineName::new(good).is_ok(), "{good} refused");
        }
        for bad in ["", ".", "..", "../m2", "a/b", "a b", "é", "a\0", &"x".repeat(65)] {
            assert!(MachineName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

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
        let auth = TokenAuthenticator::new(db);
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
        assert!(refused(request(Some(&forged), None)).contains("wrong credential for machine m1"));
        // m1's credential claiming to be m2.
        assert!(refused(request(Some(&m1.token()), Some("m2"))).contains("speaks for"));
        let stranger = Credential::generate("m3");
        assert!(refused(request(Some(&stranger.token()), None)).contains("not registered"));
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
        let media = crate::bootdb::BootMedia {
            id: 0,
            machine: "m1".into(),
            kind: "netboot".into(),
            mode: "backup".into(),
            style: "receiver".into(),
            image: String::new(),
            cmdline: String::new(),
            created_at: String::new(),
            used_at: None,
            used_from: String::new(),
            revoked: false,
            image_of: None,
        };
        db.add_boot_media(&media, &boot.secret_hash()).unwrap();
        // Restore media of m2 reading m1's images.
        let restore = Credential::generate("m2");
        let from_m1 = crate::bootdb::BootMedia {
            machine: "m2".into(),
            mode: "restore".into(),
            image_of: Some("m1".into()),
            ..media.clone()
        };
        db.add_boot_media(&from_m1, &restore.secret_hash()).unwrap();
        let auth = TokenAuthenticator::new(db);
        let ext = Extensions::new();
        // The boot token itself is no credential.
        assert!(auth.authenticate_images(&request(Some(&boot.token()), None), &ext).is_err());
        // Presented as m2's: refused, and still unused.
        let foreign = format!("m2:{}", boot.token().split_once(':').unwrap().1);
        let e = auth.claim_boot(&request(Some(&foreign), None), "x").err().unwrap();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let session = auth.claim_boot(&request(Some(&boot.token()), None), "10.0.2.15").ok().unwrap().credential;
        let e = auth.claim_boot(&request(Some(&boot.token()), None), "10.0.2.15").err().unwrap();
        assert!(e.message().contains("already used"), "{}", e.message());
        let md = request(Some(&session.token()), None);
        assert_eq!(auth.authenticate_images(&md, &ext).unwrap(), ImageAccess::own(MachineName::new("m1").unwrap()));
        let e = auth.authenticate(&md, &ext).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // The machine's own credential still works everywhere.
        let md = request(Some(&m1.token()), None);
        assert!(auth.authenticate(&md, &ext).is_ok() && auth.authenticate_images(&md, &ext).is_ok());
        // m2's restore session reads m1's store, and only reads.
        let s2 = auth.claim_boot(&request(Some(&restore.token()), None), "10.0.2.16").ok().unwrap().credential;
        let a = auth.authenticate_images(&request(Some(&s2.token()), None), &ext).unwrap();
        assert_eq!((a.machine.as_str(), a.store_of.as_str(), a.read_only), ("m2", "m1", true));
        assert!(auth.authenticate(&request(Some(&s2.token()), None), &ext).is_err());
    }
}
