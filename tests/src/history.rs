//! History in end-to-end tests: trees compared by what they hold, instants
//! as the receiver's clock stamps them, and the operator's `history`
//! commands on a rig's receiver.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::Rig;

/// What a tree holds, for comparing: kind, mode, bytes (hashed) or target.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false).follow_root_links(false).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = e.path().symlink_metadata().unwrap();
        let what = if md.file_type().is_symlink() {
            format!("link {}", fs::read_link(e.path()).unwrap().display())
        } else if md.is_dir() {
            format!("dir {:o}", md.mode() & 0o7777)
        } else {
            format!("file {:o} {}", md.mode() & 0o7777, blake3::hash(&fs::read(e.path()).unwrap()))
        };
        out.insert(rel, what);
    }
    out
}

/// The receiver's clock now (the same host's), as `history` prints and
/// takes it.
pub fn now_instant() -> String {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    lifeline_history::instant::format(d.as_nanos() as i64)
}

impl Rig {
    /// Waits until the receiver holds the source's state; then the instant
    /// (taken once the receiver holds it, before anything changes again).
    pub fn settle(&self, what: &str) -> String {
        self.assert_identical(Duration::from_secs(30), what);
        std::thread::sleep(Duration::from_millis(20));
        let at = now_instant();
        std::thread::sleep(Duration::from_millis(20));
        at
    }

    /// `lifeline-receiver --store STORE history ARGS`, which must succeed;
    /// what it printed.
    pub fn history(&self, args: &[&str]) -> String {
        let args: Vec<&str> = std::iter::once("history").chain(args.iter().copied()).collect();
        self.receiver_cli(&args)
    }

    /// The source tree as it was at `at`, restored from the receiver's
    /// history into `to`.
    pub fn restored_source(&self, at: &str, to: &Path) -> BTreeMap<String, String> {
        let src = self.src.to_str().unwrap();
        self.history(&[
            "restore",
            "--machine",
            &self.machine,
            "--as-of",
            at,
            "--path",
            src,
            "--to",
            to.to_str().unwrap(),
        ]);
        snapshot(&to.join(self.src.strip_prefix("/").unwrap()))
    }
}
