//! # lifeline-image: whole-disk imaging
//!
//! The engine of Lifeline's offline path (`DESIGN.md`, "The offline path"):
//! a disk (block device or image file) becomes an *image* in a
//! [`lifeline_repo`] repository, and an image becomes a disk again.
//!
//! * [`scan`](scan::scan) reads the partition table and asks the filesystem
//!   readers of [`lifeline_disk::fs`] which blocks each partition uses. A
//!   partition no reader can vouch for (unknown, encrypted, damaged) is read
//!   block by block, with the reason recorded and shown.
//! * [`backup`](backup::backup) reads exactly those bytes, cell by cell on a
//!   fixed grid over the whole disk (unused bytes count as zeros and are never
//!   read), and hands each cell to the repository, which deduplicates,
//!   compresses and encrypts it. Because cells sit on the disk's address grid,
//!   the next backup of the same disk produces the same chunks wherever
//!   nothing changed and stores only the rest.
//! * The [`manifest`] records the disk description, layout, used-block maps
//!   (the "address correspondence table") and the chunk of every cell.
//! * [`restore`](restore::restore) refuses before writing anything if the
//!   target is mounted, too small or of another sector size, or if any chunk
//!   fails verification; then writes only the image's bytes, moves a GPT's
//!   backup copy to the end of a larger disk and optionally zeroes or discards
//!   the rest.
//!
//! Repositories live in a local directory ([`lifeline_repo::DirStore`]) or
//! on Lifeline's receiver ([`remote::RemoteStore`], over gRPC).
//!
//! The CLI (`lifeline-image`, `src/main.rs`) is a thin layer over these.

pub mod backup;
pub mod device;
pub mod extents;
pub mod manifest;
pub mod progress;
pub mod prune;
pub mod remote;
pub mod restore;
pub mod scan;
pub mod util;

pub use backup::{backup, default_chunk_size, BackupOptions};
pub use manifest::Manifest;
pub use restore::{restore, Rest, RestoreOptions, RestoreReport};
