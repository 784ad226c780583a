//! How a failed operation is described: in words, for the agent's log and
//! the operator's, with what was being done. The agent only logs and counts
//! these (a refused op is reconciled later), so a message is all it needs.

use std::io;

use rustix::io::Errno;

/// Why an op failed, in words for the agent's log.
pub(crate) type OpResult = Result<(), String>;

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T> Context<T> for Result<T, Errno> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {}", io::Error::from(e)))
    }
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}
