//! Lifeline's agent: captures file changes in the kernel and replicates them
//! to a receiver. See `daemon` for how the pieces fit.

pub mod config;
pub mod control;
pub mod daemon;
pub mod fallback;
pub mod mapped;
pub mod reconcile;
pub mod remote;
pub mod scheduler;
pub mod sender;
pub mod status;
