//! The crate's error type. Every message says what went wrong and, where
//! there is one, what to do next.

use std::path::{Path, PathBuf};

/// An error from building a boot OS.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        /// What was being done, e.g. "reading modules.dep".
        context: String,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something the build needs is missing from the host; the message says
    /// what to install or which option to pass.
    #[error("{0}")]
    Missing(String),
    /// An input (spec, kernel parameter, archive entry) is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, path: &Path, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), path: path.to_path_buf(), source }
    }
}

/// Adds path context to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(context, path, e))
    }
}
