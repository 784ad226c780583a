//! Logic shared by Lifeline's agent, receiver and tests.
//!
//! - [`wirepath`]: the relative, validated paths that travel between agent and
//!   receiver, and their mapping to absolute paths on either side.
//! - [`credential`]: a machine's credential (token) and how it is checked.
//! - [`tree`]: listing a directory tree with the metadata replication keeps
//!   (kind, size, mode, mtime, symlink target), and comparing two listings.

pub mod credential;
pub mod tree;
pub mod wirepath;
