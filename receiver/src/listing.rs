//! What a machine's mirror holds under a root, for `ListTree`.

use std::io;
use std::os::unix::ffi::OsStrExt;

use lifeline_core::tree::{self, Kind};
use lifeline_proto::v1::{tree_entry, Attr, TreeEntry};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::safepath::{open_beneath, Mirror};

/// Lists the mirror below the (validated) wire path `root`, as wire paths
/// `root/rel`. A root that is missing, not a directory or a symlink (or below
/// one) yields nothing.
///
/// Replication goes on meanwhile: [`tree::scan_fd`] descends only through
/// directory descriptors with O_NOFOLLOW, so a directory swapped for a symlink
/// mid-scan is never followed out of the mirror.
pub fn list(mirror: &Mirror, root: &[u8]) -> io::Result<Vec<TreeEntry>> {
    let dir = match open_beneath(
        mirror.root(),
        root,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in tree::scan_fd(std::os::fd::AsFd::as_fd(&dir))? {
        let kind = match e.kind {
            Kind::File => tree_entry::Kind::File,
            Kind::Dir => tree_entry::Kind::Dir,
            Kind::Symlink => tree_entry::Kind::Symlink,
            Kind::Other => continue,
        };
        let rel = e.rel.as_os_str().as_bytes();
        let mut path = Vec::with_capacity(root.len() + 1 + rel.len());
        path.extend_from_slice(root);
        path.push(b'/');
        path.extend_from_slice(rel);
        out.push(TreeEntry {
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
            symlink_target: e
                .symlink_target
                .map(|t| t.into_encoded_bytes())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}
