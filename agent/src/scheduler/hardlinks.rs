//! Names of files known to have several (hard links).
//!
//! Unlinking one name of such a file must not drop data written through it
//! that is still pending: the file lives on under its other names (and on the
//! receiver the names are links to one file too). The coalescer asks this
//! index for a surviving name to send the data under instead.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// `(st_dev, inode)`.
pub type FileId = (u64, u64);

#[derive(Default)]
pub struct HardLinks {
    names: HashMap<FileId, Vec<PathBuf>>,
    by_path: BTreeMap<PathBuf, FileId>,
}

impl HardLinks {
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Records that `path` names the file `id`.
    pub fn add(&mut self, id: FileId, path: &Path) {
        if let Some(old) = self.by_path.insert(path.to_path_buf(), id) {
            if old == id {
                return;
            }
            self.forget(old, path);
        }
        self.names.entry(id).or_default().push(path.to_path_buf());
    }

    fn forget(&mut self, id: FileId, path: &Path) {
        if let Some(v) = self.names.get_mut(&id) {
            v.retain(|p| p != path);
            if v.is_empty() {
                self.names.remove(&id);
            }
        }
    }

    /// A name of `id` other than `not`, if one is known.
    pub fn other_name(&self, id: FileId, not: &Path) -> Option<&Path> {
        self.names.get(&id)?.iter().find(|p| p.as_path() != not).map(PathBuf::as_path)
    }

    /// Every name of `id` known.
    pub fn names_of(&self, id: FileId) -> impl Iterator<Item = &Path> {
        self.names.get(&id).into_iter().flatten().map(PathBuf::as_path)
    }

    /// A name of `id`, if one is known.
    pub fn name_of(&self, id: FileId) -> Option<&Path> {
        self.names.get(&id)?.first().map(PathBuf::as_path)
    }

    /// The name `path` (or, for a directory, every name below it) is gone.
    pub fn remove_under(&mut self, path: &Path) {
        let gone: Vec<(PathBuf, FileId)> = self.under(path).collect();
        for (p, id) in gone {
            self.by_path.remove(&p);
            self.forget(id, &p);
        }
    }

    /// Names at or below `from` move below `to`.
    pub fn rename(&mut self, from: &Path, to: &Path) {
        if self.is_empty() {
            return;
        }
        self.remove_under(to);
        let moved: Vec<(PathBuf, FileId)> = self.under(from).collect();
        for (p, id) in moved {
            self.by_path.remove(&p);
            self.forget(id, &p);
            let rest = p.strip_prefix(from).expect("below from");
            let new = if rest.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rest) };
            self.add(id, &new);
        }
    }

    fn under<'a>(&'a self, p: &'a Path) -> impl Iterator<Item = (PathBuf, FileId)> + 'a {
        self.by_path.range(p.to_path_buf()..).take_while(move |(k, _)| k.starts_with(p)).map(|(k, v)| (k.clone(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_renames_and_unlinks() {
        let mut l = HardLinks::default();
        l.add((1, 7), Path::new("/w/a"));
        l.add((1, 7), Path::new("/w/d/b"));
        l.rename(Path::new("/w/d"), Path::new("/w/e"));
        assert_eq!(l.other_name((1, 7), Path::new("/w/a")), Some(Path::new("/w/e/b")));
        l.remove_under(Path::new("/w/e"));
        assert_eq!(l.other_name((1, 7), Path::new("/w/a")), None);
        // A name reused by another file stops naming the first.
        l.add((1, 7), Path::new("/w/c"));
        l.add((1, 9), Path::new("/w/c"));
        assert_eq!(l.other_name((1, 7), Path::new("/w/a")), None);
    }
}
