//! Filesystem readers: which blocks of a partition are in use.
//!
//! ## Extending
//! A reader is one [`FsReader`] implementation in its own file plus one line in
//! [`READERS`]. Nothing else changes: the imaging pipeline calls [`probe`],
//! which tries each reader in order and returns the first [`UsedMap`].
//! The contract for a reader:
//! - `Ok(None)`: "not mine" (no magic). Cheap; read as little as possible.
//! - `Ok(Some(map))`: mine, and `map` lists **every** block whose content matters.
//!   When in doubt, mark a block used: an extra block costs a little space, a
//!   missing one corrupts the restored filesystem.
//! - `Err(e)`: mine, but I cannot vouch for a map (damaged superblock, a feature
//!   I do not know, a journal needing recovery...). The caller then images every
//!   block (dropping all-zero ones) and shows `e` to say why.
//!
//! Readers work on partition-relative offsets (a [`crate::Slice`]) and never
//! read blocks they mark as free: reading is the expensive part of imaging.

/// The error constructors every reader uses, `damaged(msg)`,
/// `unsupported(msg)` and `io(err)`, naming the filesystem `$fs`.
macro_rules! reader_errors {
    ($fs:expr) => {
        #[allow(dead_code)]
        fn damaged(msg: impl Into<String>) -> FsError {
            FsError::Damaged { fs: $fs, msg: msg.into() }
        }
        #[allow(dead_code)]
        fn unsupported(msg: impl Into<String>) -> FsError {
            FsError::Unsupported { fs: $fs, msg: msg.into() }
        }
        fn io(e: std::io::Error) -> FsError {
            FsError::Io { fs: $fs, source: e }
        }
    };
}

mod btrfs;
mod exfat;
mod ext;
mod fat;
mod ntfs;
mod swap;
mod usedmap;
mod xfs;

pub use btrfs::Btrfs;
pub use exfat::Exfat;
pub use ext::Ext;
pub use fat::Fat;
pub use ntfs::Ntfs;
pub use swap::Swap;
pub use usedmap::{UsedMap, UsedMapBuilder, UsedMapDecodeError};
pub use xfs::Xfs;

use crate::ReadAt;

/// Why a reader refused: the filesystem is recognised but no trustworthy map
/// can be made.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{fs}: reading: {source}")]
    Io {
        fs: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Structures are inconsistent (bad superblock, out-of-range pointers...).
    #[error("{fs}: damaged: {msg}")]
    Damaged { fs: &'static str, msg: String },
    /// Valid, but uses something this reader does not handle (an unknown ext4
    /// INCOMPAT feature, a journal needing recovery, hibernation data in swap).
    #[error("{fs}: unsupported: {msg}")]
    Unsupported { fs: &'static str, msg: String },
}

/// One filesystem reader. Implementations are stateless unit structs.
pub trait FsReader: Sync {
    /// Short name recorded in the image ("ext4", "fat32", "swap"...); a reader
    /// handling a family reports the family name here, the map carries no name.
    fn name(&self) -> &'static str;
    /// Look at the partition (`part`, `len` bytes) and return its used-block map,
    /// or `Ok(None)` if the content is not this filesystem. See the module doc.
    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError>;
}

/// The registry, tried in this order. Order matters only where signatures could
/// both match: the strong magics first (ext at 1080, XFS at 0, btrfs at 64 KiB,
/// NTFS and exFAT OEM names at 3, swap at the end of the first page), FAT's
/// boot sector, the weakest signature, last. FAT also rejects NTFS and exFAT
/// boot sectors itself.
pub static READERS: &[&dyn FsReader] = &[&Ext, &Xfs, &Btrfs, &Ntfs, &Exfat, &Swap, &Fat];

/// What [`probe`] found.
#[derive(Debug)]
pub struct Detected {
    /// The reader that recognised the filesystem (for FAT: "fat12"/"fat16"/"fat32"
    /// is in `variant`).
    pub fs: &'static str,
    pub variant: String,
    pub map: UsedMap,
}

/// Try every reader on a partition. `Ok(None)`: no reader recognised it (image
/// every block). `Err`: a reader recognised it but refused (image every block
/// and report the error).
pub fn probe(part: &dyn ReadAt, len: u64) -> Result<Option<Detected>, FsError> {
    for r in READERS {
        if let Some(map) = r.probe(part, len)? {
            return Ok(Some(Detected { fs: r.name(), variant: map.variant.clone(), map }));
        }
    }
    Ok(None)
}
