//! The fallback capture where eBPF cannot be loaded (not root, no BTF, a
//! locked-down kernel): the `notify` crate's watcher (inotify on Linux).
//!
//! It knows which paths changed but not which bytes, and sees nothing of
//! writes through shared mappings: every changed path is queued as a
//! reconciliation finding (the whole file is sent), and reconciliation runs
//! every 10 seconds by default. inotify's own limits apply (a watch per directory, an event
//! queue that can overflow: an overflow triggers a reconciliation).

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::Sender;
use notify::event::{CreateKind, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::warn;

use crate::scheduler::{Reconcile, SchedMsg};

/// Watches `roots` recursively until the returned watcher is dropped.
///
/// `notify` keeps reporting events inside a directory renamed within the
/// trees under the directory's old path; the rename itself sends the moved
/// tree whole, and later changes inside it are caught by the (frequent, in
/// this mode) periodic reconciliation.
pub fn watch(roots: &[PathBuf], queue: Sender<SchedMsg>, reconcile: Arc<Notify>) -> anyhow::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if ev.need_rescan() => {
            warn!("the file-change watcher lost events (queue overflow); reconciling");
            reconcile.notify_one();
        }
        Ok(ev) => {
            let items = findings(&ev);
            if !items.is_empty() {
                let _ = queue.send(SchedMsg::Reconcile(items));
            }
        }
        Err(e) => {
            warn!("file-change watcher: {e}; reconciling");
            reconcile.notify_one();
        }
    })?;
    for root in roots {
        watcher.watch(root, RecursiveMode::Recursive).map_err(|e| {
            anyhow::anyhow!("cannot watch {} with inotify: {e} (raise fs.inotify.max_user_watches?)", root.display())
        })?;
    }
    Ok(watcher)
}

fn is_dir(p: &std::path::Path) -> bool {
    // (not Path::is_dir(): that follows a symlink to a directory)
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// What an event asks to be sent: a new directory whole (files may have
/// appeared in it before its watch did), anything else as it is now.
fn findings(ev: &notify::Event) -> Vec<Reconcile> {
    match ev.kind {
        EventKind::Access(_) => Vec::new(),
        EventKind::Create(CreateKind::Folder) => ev.paths.iter().cloned().map(Reconcile::Tree).collect(),
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Create(_) => ev
            .paths
            .iter()
            .map(|p| if is_dir(p) { Reconcile::Tree(p.clone()) } else { Reconcile::Path(p.clone()) })
            .collect(),
        _ => ev.paths.iter().cloned().map(Reconcile::Path).collect(),
    }
}
