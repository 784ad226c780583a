//! Lifeline's agent: captures file changes in the kernel and replicates them
//! to a receiver. See `daemon` for how the pieces fit.
//!
//! The design's words (`DESIGN.md`, "The real-time path" and "Words") and
//! where they are here:
//!
//! | design | module |
//! |---|---|
//! | file modification message | `lifeline_capture::FileChange`, carried as [`scheduler::SchedMsg::Change`] |
//! | queue unit (persistent, write-ahead) | the scheduler's input channel ([`scheduler::SchedMsg`]) and [`scheduler::queue_log::QueueLog`] |
//! | schedule managing unit | [`scheduler::coalescer::Coalescer`] |
//! | schedule processing unit | [`scheduler::dispatcher`] (dispatch rounds, batches, delta jobs) |
//! | network backup unit (agent side) | [`sender`], with [`sender::signatures`] for deltas |
//! | acknowledgements | [`scheduler::SchedMsg::Acked`], from the sender to the scheduler |
//! | reconciliation | [`reconcile`] (and [`fallback`], [`mapped`] for what eBPF cannot see) |
//! | control: status / on, off, pause / forced sync | [`control`]: [`status::Counters`] / [`status::Controls`] / the reconciliation trigger |

pub mod config;
pub mod control;
pub mod daemon;
pub mod fallback;
pub mod history;
pub mod mapped;
pub mod reconcile;
pub mod remote;
pub mod scheduler;
pub mod sender;
pub mod status;
