//! The history of a machine's mirror (DESIGN.md 5b; `docs/history.md`).
//!
//! The mirror is the present. Before the applier changes it, what the
//! change replaces is appended to the machine's [`journal`]: the old bytes
//! of ranges overwritten in place and of a truncated tail, the old length,
//! old attributes, a rename's old name, and, for what is removed or
//! replaced whole, the name of the object it was moved to (the attic,
//! beside the journal: a rename, never a copy). Each record is stamped with
//! the receiver's [`clock`]. The mirror and the records newer than an
//! instant give the tree as of that instant: undo them, newest first.
//!
//! - [`alarm`]: the alarm standing for a machine, which holds retention.
//! - [`clock`]: the receiver's clock, injectable for tests.
//! - [`instant`]: instants as people write them (ISO 8601, `-10m`) and
//!   as listings print them.
//! - [`record`]: one journal record: what a change replaced.
//! - [`journal`]: append-only segment files of records, written through
//!   before the mirror changes, synced with the batch, read back in order
//!   up to a torn tail; `tail`: its appending end, mapped.
//! - [`retention`]: thinning and dropping on the receiver's clock, bounded
//!   by size, held by a standing alarm; [`fold`]: how a bucket's records
//!   become fewer with the same effect.

pub mod alarm;
pub mod clock;
pub mod fold;
pub mod instant;
pub mod journal;
pub mod record;
pub mod retention;
mod tail;

pub use clock::{Clock, ManualClock, SystemClock};
pub use journal::{Journal, JournalWriter};
pub use record::{Change, Record};
