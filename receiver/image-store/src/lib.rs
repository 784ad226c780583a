//! The receiver's image store: each machine's whole-disk image repository
//! under `<store>/images/<machine>/`, kept as the opaque, encrypted blobs
//! the machine's imaging tool writes (the receiver never holds a password),
//! and the jobs that make and restore them.
//!
//! - [`ImageStoreService`]: the `ImageStore` service (config, packs,
//!   manifests), for the machine's own credential and its boot sessions;
//!   a cross-machine restore session only reads.
//! - [`JobsService`]: the `Jobs` service, backup and restore progress for the
//!   management database.

mod jobs;
mod service;

pub use jobs::JobsService;
pub use service::ImageStoreService;
