//! Reconciliation: compares the watched trees with the receiver's mirror and
//! queues every path that differs (size, mtime to the nanosecond, mode, kind,
//! symlink target) or that only the mirror has. Runs at start (the initial
//! sync), after every reconnect, after kernel events were lost, when capture
//! is switched back on, and on `lifeline-agent sync`.
//!
//! It only names paths: the scheduler reads them when it sends, so a change
//! racing with the scan is sent in its newest state, and a path that exists
//! again by then is not removed.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crossbeam_channel::Sender;
use lifeline_core::tree::{self, Kind};
use lifeline_core::wirepath;
use lifeline_proto::v1::{tree_entry, ListTreeRequest, TreeEntry};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::scheduler::SchedMsg;
use crate::sender::{connect, identify};
use crate::status::Shared;

/// Waits for requests and reconciles, one at a time (requests made while one
/// runs coalesce into one more run).
pub async fn run(
    endpoint: String,
    machine: String,
    roots: Vec<PathBuf>,
    queue: Sender<SchedMsg>,
    shared: Arc<Shared>,
    trigger: Arc<Notify>,
) {
    loop {
        trigger.notified().await;
        if !shared.connected.load(Relaxed) {
            continue; // the next connection triggers it again
        }
        match reconcile(&endpoint, &machine, &roots, &queue).await {
            Ok(n) => {
                shared.reconciliations.fetch_add(1, Relaxed);
                shared.initial_sync_done.store(true, Relaxed);
                info!("reconciliation queued {n} paths that differ from the mirror");
            }
            Err(e) => {
                let msg = format!("reconciliation failed: {e:#}; it will be retried");
                warn!("{msg}");
                shared.set_error(msg);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                trigger.notify_one();
            }
        }
    }
}

async fn reconcile(endpoint: &str, machine: &str, roots: &[PathBuf], queue: &Sender<SchedMsg>) -> anyhow::Result<usize> {
    let mut client = connect(endpoint).await?;
    let wire_roots: Vec<Vec<u8>> = roots.iter().map(|r| wirepath::from_local(r)).collect::<Result<_, _>>()?;
    let mut req = tonic::Request::new(ListTreeRequest { roots: wire_roots });
    identify(&mut req, machine)?;
    let mut stream = client.list_tree(req).await?.into_inner();
    let mut remote: HashMap<PathBuf, TreeEntry> = HashMap::new();
    while let Some(batch) = stream.message().await? {
        for e in batch.entries {
            remote.insert(wirepath::to_local(&e.path), e);
        }
    }
    let roots = roots.to_vec();
    let queue = queue.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut n = 0;
        for root in &roots {
            let paths = differences(root, &remote)?;
            n += paths.len();
            for chunk in paths.chunks(1000) {
                queue.send(SchedMsg::Check(chunk.to_vec()))?;
            }
        }
        Ok(n)
    })
    .await?
}

/// Paths under `root` (and `root` itself) that differ from the mirror's
/// listing, parents before children; for a directory only the mirror has,
/// only the directory.
pub fn differences(root: &Path, remote: &HashMap<PathBuf, TreeEntry>) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![root.to_path_buf()];
    let mut local_paths = HashSet::new();
    for e in tree::scan(root)? {
        let path = root.join(&e.rel);
        if e.kind == Kind::Other {
            continue;
        }
        let same = remote.get(&path).is_some_and(|r| same_entry(&e, r));
        if !same {
            out.push(path.clone());
        }
        local_paths.insert(path);
    }
    let mut extra: Vec<&PathBuf> =
        remote.keys().filter(|p| p.starts_with(root) && p.as_path() != root && !local_paths.contains(*p)).collect();
    extra.sort();
    let mut last: Option<&PathBuf> = None;
    for p in extra {
        if last.is_some_and(|l| p.starts_with(l)) {
            continue; // removed with its directory
        }
        out.push(p.clone());
        last = Some(p);
    }
    Ok(out)
}

fn same_entry(l: &tree::Entry, r: &TreeEntry) -> bool {
    let attr = r.attr.unwrap_or_default();
    match (l.kind, tree_entry::Kind::try_from(r.kind)) {
        (Kind::File, Ok(tree_entry::Kind::File)) => {
            l.size == r.size && l.mode == attr.mode && l.mtime_sec == attr.mtime_sec && l.mtime_nsec == attr.mtime_nsec
        }
        (Kind::Dir, Ok(tree_entry::Kind::Dir)) => l.mode == attr.mode,
        (Kind::Symlink, Ok(tree_entry::Kind::Symlink)) => {
            l.symlink_target.as_ref().map(|t| t.as_bytes()) == Some(&r.symlink_target[..])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_proto::v1::Attr;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn finds_changed_missing_and_extra_paths() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::write(root.join("same"), b"x").unwrap();
        std::fs::write(root.join("changed"), b"xy").unwrap();
        std::fs::write(root.join("new"), b"").unwrap();
        let md = std::fs::metadata(root.join("same")).unwrap();
        let file = |size, md: &std::fs::Metadata| TreeEntry {
            path: Vec::new(),
            kind: tree_entry::Kind::File as i32,
            size,
            attr: Some(Attr {
                mode: md.mode() & 0o7777,
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec() as u32,
                uid: None,
                gid: None,
            }),
            symlink_target: Vec::new(),
        };
        let mut remote = HashMap::new();
        remote.insert(root.join("same"), file(1, &md));
        remote.insert(root.join("changed"), file(1, &md));
        remote.insert(root.join("gone"), file(1, &md));
        remote.insert(root.join("gone/below"), file(1, &md));
        let mut got = differences(root, &remote).unwrap();
        got.sort();
        let mut want = vec![root.to_path_buf(), root.join("changed"), root.join("gone"), root.join("new")];
        want.sort();
        assert_eq!(got, want);
    }
}
