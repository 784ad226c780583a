//! The receiver's mirror: for every machine, a copy of its watched trees
//! under `<store>/mirror/<machine>/`, kept by applying the operations its
//! agent streams over gRPC (the receiver's half of the design's network
//! backup unit).
//!
//! - [`MirrorService`]: the `Replication` service (`Replicate`, `ListTree`,
//!   `GetSignature`): one stream per machine at a time, group commits,
//!   acknowledgements only once applied ops are durable.
//! - [`apply`]: applying ops to a mirror ([`apply::Applier`]);
//!   [`delta`]: rsync-style signatures and deltas against mirror files;
//!   `attrs`: owner, mode and mtime as sent; setuid and setgid bits kept
//!   in the xattr [`MODE_XATTR`], never on the entry ([`original_mode_fd`],
//!   [`original_mode_at`] read back the mode sent).
//! - [`safepath`]: resolving paths inside a mirror without ever leaving it
//!   (openat2); [`listing`]: `ListTree`.
//! - [`history`]: what the applier keeps of what it replaces (a journal
//!   record before each change; what is removed moved to the attic).
//! - [`restore`]: a tree as of an instant, from the mirror and its history;
//!   [`diff`]: what changed between two instants.
//! - [`HistoryService`]: the read-only `History` service, a machine's own
//!   history over gRPC.
//! - [`progress`]: how far each agent queue was applied
//!   ([`progress::QueueProgress`]), so that replays apply nothing twice.
//!
//! Which machine a request speaks for comes from the
//! [`lifeline_store::Authenticator`] it is built with; where things live
//! from [`lifeline_store::StoreLayout`].

pub mod alarm;
pub mod apply;
mod attrs;
pub mod delta;
pub mod diff;
pub mod history;
pub mod history_api;
pub mod listing;
mod op_error;
pub mod progress;
pub mod restore;
pub mod safepath;
mod service;

pub use attrs::{original_mode_at, original_mode_fd, probe_user_xattrs, MODE_XATTR};
pub use history_api::HistoryService;
pub use listing::LIST_CHUNK;
pub use service::{Live, MirrorService};
