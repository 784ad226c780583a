//! Removing images and the chunks no image uses any more.
//!
//! `forget` removes an image's manifest only. `prune` then reads every
//! remaining manifest (so it needs the password), collects the chunks they
//! use and deletes the rest. It holds the repository exclusively: backups
//! hold it shared, because a backup relies on chunks that already exist
//! (deduplication) and a prune running beside it could delete one of them
//! before the backup's manifest is written.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use lifeline_repo::{ChunkId, Repo};
use tracing::info;

use crate::restore::load;

/// What a prune did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    pub images: usize,
    pub chunks_kept: usize,
    pub chunks_deleted: usize,
}

/// Remove image `name` (its chunks stay until [`prune`]).
pub fn forget(repo: &Repo, name: &str) -> Result<()> {
    repo.delete_manifest(name)?;
    info!(image = name, "image forgotten");
    Ok(())
}

/// Delete every chunk no image uses.
pub fn prune(repo: &Repo) -> Result<PruneReport> {
    let Some(_lock) = repo.lock(true)? else {
        bail!(
            "a backup is writing to {}; prune when it has finished",
            repo.location()
        );
    };
    let names = repo.list()?;
    let mut used: HashSet<ChunkId> = HashSet::new();
    for n in &names {
        // An image that cannot be read might still use any chunk: deleting
        // nothing is the only safe answer.
        let m = load(repo, n).with_context(|| {
            format!("cannot read image {n:?}, so nothing was pruned; verify the repository")
        })?;
        used.extend(m.chunks.iter().map(|c| c.1));
    }
    let mut report = PruneReport {
        images: names.len(),
        ..Default::default()
    };
    for id in repo.chunk_ids()? {
        if used.contains(&id) {
            report.chunks_kept += 1;
        } else {
            repo.delete_chunk(&id)?;
            report.chunks_deleted += 1;
        }
    }
    info!(?report, "prune done");
    Ok(report)
}
