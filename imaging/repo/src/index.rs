//! The repository-wide index (which pack and group holds each chunk) and the
//! cache of decompressed groups that makes sequential reads cheap.
//!
//! The index is built from the packs' own indexes each time a repository is
//! first used for chunks (there is no cache file to go stale). Memory: ~60
//! bytes per chunk in the hash map (32-byte id + 12-byte location, plus the
//! map's slack) and 32 per group: ~70 MiB for a million 64 KiB cells (a
//! 64 GiB disk), the most a disk has (see `lifeline-image`'s chunk size).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use crate::format::ChunkId;
use crate::pack::{GroupEntry, PackId, PackIndex};

/// Where a chunk is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkLoc {
    /// Position in [`Index::groups`].
    pub group: u32,
    /// Inside the group's plaintext.
    pub offset: u32,
    pub len: u32,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    pub pack: PackId,
    pub entry: GroupEntry,
}

#[derive(Default)]
pub(crate) struct Index {
    pub groups: Vec<Group>,
    pub chunks: HashMap<ChunkId, ChunkLoc>,
}

impl Index {
    /// Add a pack's chunks. A chunk stored twice (two writers raced, or it
    /// was rewritten after its pack was damaged) is read from the first pack
    /// added.
    pub fn add(&mut self, pack: PackId, ix: &PackIndex) {
        let base = self.groups.len() as u32;
        self.groups.extend(ix.groups.iter().map(|&entry| Group { pack, entry }));
        for c in &ix.chunks {
            self.chunks.entry(c.id).or_insert(ChunkLoc { group: base + c.group, offset: c.offset, len: c.len });
        }
    }

    pub fn locate(&self, id: &ChunkId) -> Option<(Group, ChunkLoc)> {
        let loc = *self.chunks.get(id)?;
        Some((self.groups[loc.group as usize], loc))
    }
}

type Slot = Arc<OnceLock<Result<Arc<Vec<u8>>, String>>>;

/// The last few decompressed groups. Restore reads cell after cell, on
/// several threads; the cells of one group are read from one decompression.
/// A group asked for by two threads at once is loaded once (the second waits
/// on the first); a failed load is not kept, so the next read tries again.
pub(crate) struct GroupCache {
    slots: Mutex<VecDeque<((PackId, u64), Slot)>>,
}

/// Groups kept (up to 8 MiB each): restore threads take cells in disk
/// order, so they work in one or two groups at a time.
const CACHED_GROUPS: usize = 4;

impl GroupCache {
    pub fn new() -> GroupCache {
        GroupCache { slots: Mutex::new(VecDeque::new()) }
    }

    pub fn get(&self, g: &Group, load: impl FnOnce() -> Result<Vec<u8>, String>) -> Result<Arc<Vec<u8>>, String> {
        let key = (g.pack, g.entry.offset);
        let slot = {
            let mut s = self.slots.lock().unwrap();
            match s.iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot: Slot = Arc::default();
                    s.push_back((key, slot.clone()));
                    if s.len() > CACHED_GROUPS {
                        s.pop_front();
                    }
                    slot
                }
            }
        };
        let r = slot.get_or_init(|| load().map(Arc::new)).clone();
        if r.is_err() {
            self.slots.lock().unwrap().retain(|(_, s)| !Arc::ptr_eq(s, &slot));
        }
        r
    }

    pub fn clear(&self) {
        self.slots.lock().unwrap().clear();
    }
}
