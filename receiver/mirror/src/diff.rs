//! What changed in a machine's tree between two instants: the paths the
//! records between them name (and what lies below them) are rebuilt as of
//! each instant, side by side in a scratch directory in the machine's
//! history, and compared entry by entry. Nothing else is read: a diff
//! costs what changed, not the size of the tree.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lifeline_core::credential::MachineName;
use lifeline_store::StoreLayout;

use crate::restore::{rebuild, within, Scratch};

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The wire path (`srv/data/f`).
    pub path: Vec<u8>,
    /// What it was at the first instant, and at the second (`None`: absent).
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

/// An entry of the tree, as far as a diff tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File { mode: u32, size: u64, hash: [u8; 32], mtime: i64 },
    Dir { mode: u32 },
    Symlink { target: Vec<u8> },
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::File { mode, size, .. } => write!(f, "file {mode:o}, {size} bytes"),
            Entry::Dir { mode } => write!(f, "directory {mode:o}"),
            Entry::Symlink { target } => write!(f, "symlink to {}", String::from_utf8_lossy(target)),
        }
    }
}

impl Difference {
    /// `+`, `-` or `~` and what changed, for people.
    pub fn describe(&self) -> String {
        match (&self.before, &self.after) {
            (None, Some(a)) => format!("+ {a}"),
            (Some(b), None) => format!("- {b}"),
            (
                Some(Entry::File { mode: m1, size: s1, hash: h1, .. }),
                Some(Entry::File { mode: m2, size: s2, hash: h2, .. }),
            ) => {
                let mut what = Vec::new();
                if h1 != h2 {
                    what.push(format!("content ({s1} → {s2} bytes)"));
                }
                if m1 != m2 {
                    what.push(format!("mode {m1:o} → {m2:o}"));
                }
                if what.is_empty() {
                    what.push("mtime".into());
                }
                format!("~ {}", what.join(", "))
            }
            (Some(b), Some(a)) => format!("~ {b} → {a}"),
            (None, None) => "=".into(),
        }
    }
}

/// The differences in `machine`'s tree (below `only`, if given) between
/// `from_ns` and `to_ns`, in path order.
pub fn diff(
    store: &StoreLayout,
    machine: &MachineName,
    from_ns: i64,
    to_ns: i64,
    only: Option<&[u8]>,
) -> anyhow::Result<Vec<Difference>> {
    if to_ns < from_ns {
        anyhow::bail!("the second instant is before the first: give them oldest first");
    }
    let work = store.history(machine);
    let before = Scratch::new(&work)?;
    let after = Scratch::new(&work)?;
    // The paths the records between the two instants name.
    let mut candidates = Vec::new();
    rebuild(
        store,
        machine,
        from_ns,
        |records| {
            for r in records.iter().filter(|r| r.time_ns <= to_ns) {
                for p in r.paths() {
                    match only {
                        Some(o) if within(o, p) => candidates.push(o.to_vec()),
                        Some(o) if !within(p, o) => {}
                        _ => candidates.push(p.to_vec()),
                    }
                }
            }
            candidates.sort();
            candidates.dedup();
            candidates.clone()
        },
        &before.0,
    )?;
    rebuild(store, machine, to_ns, |_| candidates.clone(), &after.0)?;
    let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
    for c in candidates.iter().filter(|c| !candidates.iter().any(|o| o != *c && within(c, o))) {
        entries(&before.0, c, &mut old)?;
        entries(&after.0, c, &mut new)?;
    }
    let mut paths: Vec<&Vec<u8>> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    Ok(paths
        .into_iter()
        .filter_map(|p| {
            let (b, a) = (old.get(p).cloned(), new.get(p).cloned());
            (b != a).then(|| Difference { path: p.clone(), before: b, after: a })
        })
        .collect())
}

/// The entries at and below `root/<wire>`, by wire path.
fn entries(root: &Path, wire: &[u8], out: &mut BTreeMap<Vec<u8>, Entry>) -> anyhow::Result<()> {
    let top = root.join(std::ffi::OsStr::from_bytes(wire));
    if top.symlink_metadata().is_err() {
        return Ok(());
    }
    for e in walkdir::WalkDir::new(&top).follow_links(false).follow_root_links(false) {
        let e = e?;
        let rel = e.path().strip_prefix(root).expect("below the root");
        let md = e.path().symlink_metadata()?;
        let entry = if md.file_type().is_symlink() {
            Entry::Symlink { target: fs::read_link(e.path())?.as_os_str().as_bytes().to_vec() }
        } else if md.is_dir() {
            Entry::Dir { mode: md.mode() & 0o7777 }
        } else {
            let mut h = blake3::Hasher::new();
            h.update_reader(fs::File::open(e.path())?)?;
            Entry::File { mode: md.mode() & 0o7777, size: md.len(), hash: *h.finalize().as_bytes(), mtime: md.mtime() }
        };
        out.insert(rel.as_os_str().as_bytes().to_vec(), entry);
    }
    Ok(())
}
