//! Linux swap: only the header page matters.
//!
//! Swap content is meaningless after a reboot, so only the first page (the
//! header with UUID, label, bad-page list and signature) is kept; restore writes
//! zeros elsewhere and the area is immediately usable by `swapon`.
//! Refuses a swap area holding a hibernation image (signature replaced by
//! `S1SUSPEND` & co.): that content is a suspended system and must be kept whole.

use super::{FsError, FsReader, UsedMap, UsedMapBuilder};
use crate::ReadAt;

pub struct Swap;

/// The signature sits in the last 10 bytes of the first page, and the page size
/// is the writer's (4 KiB on x86; 16/64 KiB on some arm64 and ppc64 kernels).
const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];

impl FsReader for Swap {
    fn name(&self) -> &'static str {
        "swap"
    }

    fn probe(&self, part: &dyn ReadAt, len: u64) -> Result<Option<UsedMap>, FsError> {
        for ps in PAGE_SIZES {
            if len < 2 * ps {
                break;
            }
            let mut sig = [0u8; 10];
            part.read_exact_at(&mut sig, ps - 10).map_err(|e| FsError::Io { fs: "swap", source: e })?;
            if &sig == b"SWAPSPACE2" || &sig == b"SWAP-SPACE" {
                let mut m = UsedMapBuilder::new(ps as u32, len / ps);
                m.add(0, 1);
                return Ok(Some(m.finish("swap")));
            }
            if sig.starts_with(b"S1SUSPEND") || sig.starts_with(b"S2SUSPEND") || sig.starts_with(b"ULSUSPEND") {
                return Err(FsError::Unsupported {
                    fs: "swap",
                    msg: "the swap area holds a hibernation image; every block is kept".into(),
                });
            }
        }
        Ok(None)
    }
}
