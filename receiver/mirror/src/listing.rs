//! What a machine's mirror holds under a root, for `ListTree`.

use std::io;
use std::os::unix::ffi::OsStrExt;

use lifeline_core::tree::{self, Kind};
use lifeline_proto::v1::{tree_entry, Attr, TreeEntries, TreeEntry};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::os::fd::AsFd;

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
                msg.entries.push(entry(path, kind, e));
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

fn wire_kind(k: Kind) -> Option<tree_entry::Kind> {
    match k {
        Kind::File => Some(tree_entry::Kind::File),
        Kind::Dir => Some(tree_entry::Kind::Dir),
        Kind::Symlink => Some(tree_entry::Kind::Symlink),
        Kind::Other => None,
    }
}

fn entry(path: Vec<u8>, kind: tree_entry::Kind, e: tree::Entry) -> TreeEntry {
    let linked = kind == tree_entry::Kind::File && e.nlink > 1;
    TreeEntry {
        link_id: if linked { e.ino } else { 0 },
        path,
        kind: kind as i32,
        size: e.size,
        attr: Some(Attr {
            mode: e.mode,
            mtime_sec: e.mtime_sec,
            mtime_nsec: e.mtime_nsec,
            uid: Some(e.uid),
            gid: Some(e.gid),
        }),
        symlink_target: e.symlink_target.map(|t| t.into_encoded_bytes()).unwrap_or_default(),
    }
}
