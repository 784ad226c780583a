//! Logic shared by Lifeline's agent, receiver and tests.
//!
//! - [`wirepath`]: the relative, validated paths that travel between agent and
//!   receiver, and their mapping to absolute paths on either side.
//! - [`credential`]: a machine's credential (token) and how it is checked.
//! - [`tree`]: listing a directory tree with the metadata replication keeps
//!   (kind, size, mode, mtime, symlink target), and comparing two listings.
//! - [`nofollow`]: opening paths of a tree others write to without following
//!   a symlink on the way.

pub mod credential;
pub mod nofollow;
pub mod tree;
pub mod wirepath;
