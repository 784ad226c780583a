//! rsync-style deltas: bring an old copy of a file up to date by sending
//! only what changed, streaming, with bounded memory.
//!
//! The protocol, between the receiver (holds the old copy, the *base*) and the
//! agent (holds the new file):
//!
//! 1. The receiver computes a [`Signature`] of its base (a weak rolling hash
//!    and a truncated blake3 per block, block length from
//!    [`Signature::block_len_for`]) and sends it.
//! 2. The agent [`validate`](Signature::validate)s it and streams the new file
//!    through [`diff`], which emits [`DeltaOp`]s: copy a range of the base, or
//!    literal bytes. It ends with [`DeltaStats`]: the new length and blake3.
//! 3. The receiver feeds the ops to a [`Patcher`] writing a new file next to
//!    the base, and [`finish`](Patcher::finish) checks length and hash. A
//!    mismatch (a strong-hash collision, astronomically unlikely, or a file
//!    that changed while the agent read it) means: fall back to a full copy.
//!
//! Nothing is trusted across the wire: the agent checks the signature, the
//! patcher checks every op (ranges inside the base, no overflow, output no
//! longer than announced) and the final hash; errors are [`DeltaError`]s,
//! never panics.
//!
//! Costs for a 1 GiB file with 256 scattered 4 KiB edits (8 KiB blocks, 16-byte
//! strong hashes): signature 2.5 MiB, delta ≈ 3 MiB; see `bench/delta.py`.

mod diff;
mod patch;
mod rolling;
mod signature;

pub use diff::{diff, MAX_LITERAL_CAP};
pub use patch::Patcher;
pub use rolling::weak_hash;
pub use signature::{
    Signature, DEFAULT_STRONG_LEN, HEADER_LEN, MAX_BLOCK_LEN, MAX_STRONG_LEN, MIN_BLOCK_LEN, MIN_STRONG_LEN,
};

/// What the receiver should do to rebuild the new file, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaOp {
    /// Append `len` bytes of the base starting at `offset`.
    Copy { offset: u64, len: u64 },
    /// Append these bytes.
    Literal(Vec<u8>),
}

/// The outcome of a [`diff`]: what the receiver checks after patching, and
/// counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaStats {
    /// Length of the new content (everything read from `new`).
    pub new_len: u64,
    /// Bytes covered by copies.
    pub copied: u64,
    /// Bytes sent as literals.
    pub literal: u64,
    /// blake3 of the whole new content.
    pub new_hash: [u8; 32],
}

/// Why a signature or a delta was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("invalid signature: {0}")]
    InvalidSignature(String),
    #[error("delta copies base bytes {offset}..{end} but the base has only {base_len} bytes")]
    CopyOutOfRange { offset: u64, end: u64, base_len: u64 },
    #[error("delta copies {len} bytes from base offset {offset}: the range overflows a 64-bit offset")]
    CopyOverflow { offset: u64, len: u64 },
    #[error(
        "delta makes the output longer than the announced {max_len} bytes ({written} written, next op adds {len})"
    )]
    TooLong { written: u64, len: u64, max_len: u64 },
    #[error("base ended at byte {offset} but was declared to have {base_len} bytes (changed while patching?)")]
    BaseTruncated { offset: u64, base_len: u64 },
    #[error("patched file has {written} bytes but the delta announced {expected}")]
    LengthMismatch { written: u64, expected: u64 },
    #[error("patched file hash mismatch: got blake3 {got}, the delta announced {expected}")]
    HashMismatch { expected: String, got: String },
    #[error("the patcher already failed; its output is incomplete")]
    Failed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
