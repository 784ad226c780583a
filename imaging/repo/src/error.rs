use std::path::PathBuf;

use crate::ChunkId;

/// Everything that can go wrong in the repository. Messages name the
/// repository, chunk or image concerned so they can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The password does not decrypt the repository's keys. Nothing was read
    /// besides `config`, nothing was written.
    #[error("wrong password for repository {}", dir.display())]
    WrongPassword { dir: PathBuf },
    #[error("{} is not a Lifeline repository (no config file)", dir.display())]
    NotARepo { dir: PathBuf },
    #[error("{} already holds a Lifeline repository", dir.display())]
    AlreadyExists { dir: PathBuf },
    #[error("{} is not empty; refusing to create a repository there", dir.display())]
    NotEmpty { dir: PathBuf },
    #[error("repository config {}: {why}", path.display())]
    BadConfig { path: PathBuf, why: String },
    #[error("chunk {id} is missing from the repository")]
    MissingChunk { id: ChunkId },
    /// The chunk file exists but does not decrypt, decompress or hash back to
    /// its id: damaged, truncated, or a file stored under another id.
    #[error("chunk {id} is corrupt: {why}")]
    Corrupt { id: ChunkId, why: String },
    #[error("image {name} is corrupt: {why}")]
    CorruptManifest { name: String, why: String },
    #[error("no image named {name:?} in the repository")]
    NoSuchImage { name: String },
    #[error("invalid image name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("unexpected file in the chunk store: {}", path.display())]
    StrayFile { path: PathBuf },
    #[error("{what} of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
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
}

impl RepoError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> RepoError {
        let path = path.into();
        move |source| RepoError::Io { what, path, source }
    }
}
