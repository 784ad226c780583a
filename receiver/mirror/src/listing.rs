//! What a machine's mirror holds under a root, for `ListTree`.

use std::io;
use std::os::unix::ffi::OsStrExt;

use lifeline_core::tree::{self, Kind};
use lifeline_proto::v1::{tree_entry, Attr, TreeEntries, TreeEntry};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::os::fd::AsFd;

use crate::attrs::original_mode_at;
use crate::safepath::{open_beneath, Mirror};

/// Largest number of entries in one `TreeEntries` message.
pub const LIST_CHUNK: usize = 1000;

/// Lists the mirror below the (validated) wire path `root` breadth-first, as
/// wire paths `root/rel`, handing out messages of at most [`LIST_CHUNK`]
/// entries that name the directories they complete (see `TreeEntries`).
/// `send` returns false to stop early. A root that is missing, not a
/// directory, or a symlink (or below one) is completed with no entries.
///
/// Replication goes on meanwhile: each directory is opened with openat2
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` from the mirror's root, and its
/// entries are read by descriptor, so a directory swapped for a symlink
/// mid-scan is never followed out of the mirror.
pub fn stream(mirror: &Mirror, root: &[u8], mut send: impl FnMut(TreeEntries) -> bool) -> io::Result<()> {
    let mut msg = TreeEntries::default();
    let mut queue: VecDeque<Vec<u8>> = VecDeque::from([root.to_vec()]);
    while let Some(dir) = queue.pop_front() {
        let fd = match open_beneath(mirror.root(), dir.as_slice(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
            Ok(fd) => Some(fd),
            // Gone or replaced since it was listed: nothing below it.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(fd) = fd {
            for e in tree::list_dir_fd(fd.as_fd())? {
                let Some(kind) = wire_kind(e.kind) else { continue };
                let name = e.rel.as_os_str().as_bytes();
                let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
                path.extend_from_slice(&dir);
                path.push(b'/');
                path.extend_from_slice(name);
                if e.kind == Kind::Dir {
                    queue.push_back(path.clone());
                }
                // The mode the machine sent, not the one without setuid and
                // setgid bits that the entry has: the agent compares modes.
                // Costs an xattr read only for entries with the hint.
                let mode = original_mode_at(fd.as_fd(), e.rel.as_os_str(), e.mode | kind_bits(e.kind))?;
                msg.entries.push(entry(path, kind, mode, e));
                if msg.entries.len() >= LIST_CHUNK && !send(std::mem::take(&mut msg)) {
                    return Ok(());
                }
            }
        }
        msg.complete_dirs.push(dir);
    }
    if (!msg.entries.is_empty() || !msg.complete_dirs.is_empty()) && !send(msg) {
        return Ok(());
    }
    Ok(())
}

/// The kind a listing (or a restore) sends; `None`: never sent.
pub(crate) fn wire_kind(k: Kind) -> Option<tree_entry::Kind> {
    match k {
        Kind::File => Some(tree_entry::Kind::File),
        Kind::Dir => Some(tree_entry::Kind::Dir),
        Kind::Symlink => Some(tree_entry::Kind::Symlink),
        Kind::Other => None,
    }
}

/// The file-type bits of `st_mode` for `k` (a listing's entries keep only
/// `mode & 0o7777`).
fn kind_bits(k: Kind) -> u32 {
    match k {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
        Kind::Other => 0,
    }
}

fn entry(path: Vec<u8>, kind: tree_entry::Kind, mode: u32, e: tree::Entry) -> TreeEntry {
    let linked = kind == tree_entry::Kind::File && e.nlink > 1;
    TreeEntry {
        link_id: if linked { e.ino } else { 0 },
        path,
        kind: kind as i32,
        size: e.size,
        attr: Some(Attr { mode, mtime_sec: e.mtime_sec, mtime_nsec: e.mtime_nsec, uid: Some(e.uid), gid: Some(e.gid) }),
        symlink_target: e.symlink_target.map(|t| t.into_encoded_bytes()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_core::credential::MachineName;
    use lifeline_store::StoreLayout;
    use std::time::Instant;

    /// What a `ListTree` of 100,000 files costs (100 directories of 1,000
    /// plain files, on the filesystem of the temporary directory), and what
    /// one extended-attribute read per file would add to it. Run with
    /// `cargo test --release -p lifeline-mirror list_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn list_cost() {
        let store =
            tempfile::tempdir_in(std::env::var_os("LIST_COST_DIR").unwrap_or_else(|| "/var/tmp".into())).unwrap();
        let mirror = Mirror::open(&StoreLayout::new(store.path()), &MachineName::new("m").unwrap()).unwrap();
        let top = mirror.path().join("t");
        for d in 0..100 {
            let dir = top.join(format!("d{d:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..1000 {
                std::fs::write(dir.join(format!("f{f:04}")), b"x").unwrap();
            }
        }
        let mut best = std::time::Duration::MAX;
        let mut n = 0;
        for _ in 0..7 {
            n = 0;
            let t = Instant::now();
            stream(&mirror, b"t", |m| {
                n += m.entries.len();
                true
            })
            .unwrap();
            best = best.min(t.elapsed());
        }
        assert_eq!(n, 100_100);
        eprintln!("ListTree of {n} entries: best of 7 {best:?}");
        // One xattr read per file, by descriptor from its directory's (what
        // a listing without a hint would do, getxattrat(2) being 6.13+).
        let mut best = std::time::Duration::MAX;
        for _ in 0..7 {
            let t = Instant::now();
            for d in 0..100 {
                let dir = open_beneath(
                    mirror.root(),
                    format!("t/d{d:03}").as_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )
                .unwrap();
                for f in 0..1000 {
                    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
                    let fd = open_beneath(dir.as_fd(), format!("f{f:04}").as_str(), flags, Mode::empty()).unwrap();
                    let r = rustix::fs::fgetxattr(&fd, "user.lifeline.mode", &mut [0u8; 16][..]);
                    assert_eq!(r.err(), Some(Errno::NODATA));
                }
            }
            best = best.min(t.elapsed());
        }
        eprintln!("open + fgetxattr per file, {n} files: best of 7 {best:?}");
        // 1% of them setuid (what `set_mode` leaves): those are read.
        for d in 0..100 {
            for f in (0..1000).step_by(100) {
                let p = top.join(format!("d{d:03}/f{f:04}"));
                rustix::fs::setxattr(&p, crate::MODE_XATTR, b"4755", rustix::fs::XattrFlags::empty()).unwrap();
                rustix::fs::chmod(&p, Mode::from_raw_mode(0o1755)).unwrap();
            }
        }
        let mut best = std::time::Duration::MAX;
        for _ in 0..7 {
            let mut setuid = 0;
            let t = Instant::now();
            stream(&mirror, b"t", |m| {
                setuid += m.entries.iter().filter(|e| e.attr.unwrap().mode == 0o4755).count();
                true
            })
            .unwrap();
            best = best.min(t.elapsed());
            assert_eq!(setuid, 1000);
        }
        eprintln!("ListTree of {n} entries, 1,000 of them setuid: best of 7 {best:?}");
    }
}
