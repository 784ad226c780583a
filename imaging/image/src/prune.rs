//! Removing images and the chunks no image uses any more.
//!
//! `forget` removes an image's manifest only. `prune` then reads every
//! remaining manifest (so it needs the password), collects the chunks they
//! use and deletes every pack holding none of them. A pack holding both used
//! and unused chunks is kept whole (packs are not rewritten yet), so its dead
//! chunks stay until the last used one in it is pruned too; the report counts
//! them. It holds the repository exclusively: backups
//! hold it shared, because a backup relies on chunks that already exist
//! (deduplication) and a prune running beside it could delete one of them
//! before the backup's manifest is written.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use lifeline_repo::{ChunkId, PruneStats, Repo};
use tracing::info;

use crate::restore::load;

/// What a prune did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    pub images: usize,
    #[serde(flatten)]
    pub packs: PruneStats,
}

/// Remove image `name` (its chunks stay until [`prune`]).
pub fn forget(repo: &Repo, name: &str) -> Result<()> {
    repo.delete_manifest(name)?;
    info!(image = name, "image forgotten");
    Ok(())
}

/// Delete every pack no image uses a chunk of.
pub fn prune(repo: &Repo) -> Result<PruneReport> {
    let Some(_lock) = repo.lock(true)? else {
        bail!("a backup is writing to {}; prune when it has finished", repo.location());
    };
    let names = repo.list()?;
    let mut used: HashSet<ChunkId> = HashSet::new();
    for n in &names {
        // An image that cannot be read might still use any chunk: deleting
        // nothing is the only safe answer.
        let m = load(repo, n)
            .with_context(|| format!("cannot read image {n:?}, so nothing was pruned; verify the repository"))?;
        used.extend(m.chunks.iter().map(|c| c.1));
    }
    let report = PruneReport { images: names.len(), packs: repo.prune_packs(&used)? };
    info!(?report, "prune done");
    Ok(report)
}
