use std::path::PathBuf;

use crate::{ChunkId, PackId};

/// Everything that can go wrong in the repository. Messages name the
/// repository, chunk or image concerned so they can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The password does not decrypt the repository's keys. Nothing was read
    /// besides `config`, nothing was written.
    #[error("wrong password for repository {repo}")]
    WrongPassword { repo: String },
    #[error("{repo} is not a Lifeline repository (no config); create one with `init`")]
    NotARepo { repo: String },
    #[error("{repo} already holds a Lifeline repository")]
    AlreadyExists { repo: String },
    #[error("{repo} is not empty; refusing to create a repository there")]
    NotEmpty { repo: String },
    #[error("repository config {}: {why}", path.display())]
    BadConfig { path: PathBuf, why: String },
    #[error("chunk {id} is missing from the repository")]
    MissingChunk { id: ChunkId },
    /// The chunk's group does not decrypt or decompress, or the chunk does not
    /// hash back to its id: damaged, truncated, or moved.
    #[error("chunk {id} is corrupt: {why}")]
    Corrupt { id: ChunkId, why: String },
    /// A pack's trailer or index does not check out (torn, damaged, or
    /// renamed from another pack): its chunks are not used.
    #[error("pack {pack} is unusable: {why}")]
    CorruptPack { pack: PackId, why: String },
    /// A pack name was about to be reused: packs are never overwritten.
    #[error("pack {pack} already exists; packs are never overwritten")]
    PackExists { pack: PackId },
    /// An image name was about to be reused: stored images are never
    /// replaced (a stolen credential must not be able to destroy one).
    #[error("an image named {name:?} already exists; stored images are never replaced: choose another name")]
    ImageExists { name: String },
    #[error("image {name} is corrupt: {why}")]
    CorruptManifest { name: String, why: String },
    #[error("no image named {name:?} in the repository")]
    NoSuchImage { name: String },
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("unexpected file in the pack store: {path}")]
    StrayFile { path: String },
    #[error("{what} of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("write pipeline failed: {0}")]
    Pipeline(String),
    /// A remote store (the receiver) failed or refused.
    #[error("{0}")]
    Remote(String),
}

impl RepoError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RepoError {
        let path = path.into();
        move |source| RepoError::Io { what, path, source }
    }
}
