//! Which machine a request speaks for: the seam between the receiver's
//! services and its authentication.
//!
//! Every service (mirror, images, boot) asks an [`Authenticator`] before it
//! touches anything, and derives everything a request may touch from the
//! [`MachineName`] it answers, so one machine can never reach another's
//! data. The receiver's implementation (`lifeline_receiver::auth`) checks
//! credentials against the management database; tests may bring their own.

use lifeline_core::credential::{Credential, MachineName, BEARER};
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status};

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

/// The request's credential (not yet checked) and the machine it names,
/// from its `authorization: Bearer NAME:SECRET` header. A request that also
/// names a machine in `x-lifeline-machine` must name the same one.
pub fn bearer_credential(metadata: &MetadataMap) -> Result<(Credential, MachineName), Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        refuse(
            "no credential: start the agent with --token-file (the file `lifeline-receiver machine add NAME` writes)"
                .into(),
        )
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

/// Refuses a request as unauthenticated, and logs why (at most every
/// [`crate::throttle::WARN_EVERY`]: anyone can make a refusal).
pub fn refuse(msg: String) -> Status {
    static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new();
    REFUSED.hit(|more| {
        tracing::warn!("authentication refused: {} ({more} more since the last warning)", msg.escape_debug())
    });
    Status::unauthenticated(msg)
}

/// The database failed: the request may be retried, and the operator reads why.
pub fn db_unavailable(e: anyhow::Error) -> Status {
    tracing::error!("cannot read the machine database: {e:#}");
    Status::unavailable("the receiver cannot read its machine database; try again later")
}
