//! Hard links in reconciliation: the source's names of one file against the
//! mirror's.
//!
//! The mirror keeps a file's names as links to one file, so a write through
//! any name reaches all of them there too. When that structure diverges (a
//! link op the receiver could not apply, links made while the agent was not
//! running, lost events), a later write through one name leaves the mirror's
//! other copies behind — with their old size and mtime, so no size-and-mtime
//! comparison would ever notice. The receiver's listing says which of its
//! files share an inode (`TreeEntry.link_id`); this compares that with the
//! source's `(st_dev, st_ino)` groups as the names come by:
//!
//! - the first name of a group is compared like any file;
//! - a later name already linked to the first in the mirror costs nothing;
//! - a later name that is not: the first name is sent whole (its mirror copy
//!   may lack writes made through another name) and every name seen so far
//!   is linked to it again;
//! - once the first name was sent (which may give it a new file in the
//!   mirror), every later name is linked to it;
//! - a mirror file shared by names of different source files is split: the
//!   name is sent whole, which gives it its own file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::scheduler::hardlinks::FileId;
use crate::scheduler::Reconcile;

#[derive(Default)]
pub struct LinkGroups {
    groups: HashMap<FileId, Group>,
    /// Which source file each mirror file with several names was first seen
    /// for.
    owners: HashMap<u64, FileId>,
}

struct Group {
    first: PathBuf,
    /// The mirror's `link_id` of the first name (0: not linked there).
    mirror_id: u64,
    /// The first name is queued in this reconciliation: later names are
    /// linked to it whatever the mirror holds.
    sent: bool,
    /// Later names found linked in the mirror, relinked should the first
    /// be sent after all.
    linked: Vec<PathBuf>,
}

/// What to do about one name of a source file with several names.
#[derive(Debug, PartialEq, Eq)]
pub enum Name {
    /// The group's first name: compare it like any file (`forced`: send it
    /// whole whatever the comparison says), then call [`LinkGroups::first_queued`]
    /// if it was queued.
    First { forced: bool },
    /// A later name: queue these (possibly nothing) instead of comparing it.
    Later(Vec<Reconcile>),
}

impl LinkGroups {
    /// A source file with one name whose mirror copy has several: the
    /// mirror shares it with another name it must not (send it whole).
    pub fn wrongly_linked(nlink: u64, mirror_link_id: u64) -> bool {
        nlink == 1 && mirror_link_id != 0
    }

    /// Name `path` of source file `id` (which has several), whose mirror
    /// copy is a regular file with `mirror_link_id` (0: not linked, or not
    /// a regular file, or missing).
    pub fn name(&mut self, id: FileId, path: &Path, mirror_link_id: u64) -> Name {
        let mut mirror_id = mirror_link_id;
        if mirror_id != 0 && *self.owners.entry(mirror_id).or_insert(id) != id {
            mirror_id = 0; // another source file's: never "linked already"
        }
        let Some(g) = self.groups.get_mut(&id) else {
            let forced = mirror_link_id != 0 && mirror_id == 0;
            self.groups.insert(id, Group { first: path.to_path_buf(), mirror_id, sent: forced, linked: Vec::new() });
            return Name::First { forced };
        };
        let link = |to: PathBuf| Reconcile::Link { from: g.first.clone(), to, id };
        if g.sent {
            return Name::Later(vec![link(path.to_path_buf())]);
        }
        if g.mirror_id != 0 && mirror_id == g.mirror_id {
            g.linked.push(path.to_path_buf());
            return Name::Later(Vec::new());
        }
        let mut out = vec![Reconcile::Path(g.first.clone())];
        out.extend(std::mem::take(&mut g.linked).into_iter().map(link));
        out.push(link(path.to_path_buf()));
        g.sent = true;
        Name::Later(out)
    }

    /// The first name of `id` was queued: later names are linked to it.
    pub fn first_queued(&mut self, id: FileId) {
        if let Some(g) = self.groups.get_mut(&id) {
            g.sent = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn names_linked_in_the_mirror_cost_nothing() {
        let mut g = LinkGroups::default();
        assert_eq!(g.name((1, 7), &p("/w/a"), 70), Name::First { forced: false });
        assert_eq!(g.name((1, 7), &p("/w/b"), 70), Name::Later(vec![]));
        assert_eq!(g.name((1, 7), &p("/w/c"), 70), Name::Later(vec![]));
    }

    #[test]
    fn a_name_split_off_in_the_mirror_resends_the_first_and_relinks_every_name() {
        let mut g = LinkGroups::default();
        let id = (1, 7);
        g.name(id, &p("/w/a"), 70);
        assert_eq!(g.name(id, &p("/w/b"), 70), Name::Later(vec![]));
        // The mirror's c is a file of its own (or missing: 0).
        assert_eq!(
            g.name(id, &p("/w/c"), 0),
            Name::Later(vec![
                Reconcile::Path(p("/w/a")),
                Reconcile::Link { from: p("/w/a"), to: p("/w/b"), id },
                Reconcile::Link { from: p("/w/a"), to: p("/w/c"), id },
            ])
        );
        assert_eq!(
            g.name(id, &p("/w/d"), 70),
            Name::Later(vec![Reconcile::Link { from: p("/w/a"), to: p("/w/d"), id }])
        );
    }

    #[test]
    fn once_the_first_name_is_sent_every_later_name_is_linked() {
        let mut g = LinkGroups::default();
        let id = (1, 7);
        g.name(id, &p("/w/a"), 70);
        g.first_queued(id);
        assert_eq!(
            g.name(id, &p("/w/b"), 70),
            Name::Later(vec![Reconcile::Link { from: p("/w/a"), to: p("/w/b"), id }])
        );
    }

    #[test]
    fn a_mirror_file_shared_by_two_source_files_is_split() {
        let mut g = LinkGroups::default();
        assert_eq!(g.name((1, 7), &p("/w/a"), 70), Name::First { forced: false });
        // Another source file whose mirror copy is the same file as a's.
        assert_eq!(g.name((1, 8), &p("/w/x"), 70), Name::First { forced: true });
        assert_eq!(
            g.name((1, 8), &p("/w/y"), 70),
            Name::Later(vec![Reconcile::Link { from: p("/w/x"), to: p("/w/y"), id: (1, 8) }])
        );
        assert!(LinkGroups::wrongly_linked(1, 70));
        assert!(!LinkGroups::wrongly_linked(1, 0));
    }
}
