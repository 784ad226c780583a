//! The receiver's store (`lifeline-receiver --store S`) and what every
//! service of the receiver shares about it. The services themselves live in
//! their own crates, each over this one:
//!
//! | crate | what |
//! |---|---|
//! | `lifeline-mirror` | the `Replication` service: each machine's mirror |
//! | `lifeline-images` | the `ImageStore` and `Jobs` services: image repositories, job reports |
//! | `lifeline-boot` | boot media, their download, boot sessions, network boot (HTTP, TFTP) |
//! | `lifeline-receiver` | the binary: composition, TLS, authentication, the CLI |
//!
//! Here:
//! - [`StoreLayout`]: every path under the store, in one place.
//! - [`private`]: creating the store's directories and secret files readable
//!   by the receiver alone.
//! - [`db`]: the management database (machines, audit trail, boot media and
//!   sessions, jobs and images).
//! - [`quota`]: how much of the store each machine may fill, and the free
//!   space the store keeps.
//! - [`refusals`]: refusals written to the audit trail, aggregated.
//! - [`access`]: the [`Authenticator`] seam through which every service
//!   learns which machine a request speaks for; the receiver implements it.
//! - [`throttle`]: warnings a client can trigger, logged at most every 10 s.

pub mod access;
pub mod db;
pub mod layout;
pub mod private;
pub mod quota;
pub mod refusals;
pub mod throttle;

pub use access::{Authenticator, ImageAccess};
pub use db::Db;
pub use layout::StoreLayout;
pub use lifeline_core::credential::MachineName;
pub use quota::Quotas;
