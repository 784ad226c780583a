//! Where everything lives under a receiver's store directory. Every path of
//! the store is built here and nowhere else, so that what a directory holds,
//! and who may touch it, can be read in one place:
//!
//! ```text
//! <store>/receiver.db         the management database (db)
//! <store>/tls/                the receiver's CA and server certificate
//! <store>/mirror/<machine>/   each machine's mirror (lifeline-mirror)
//! <store>/queues/<machine>    how far each agent queue was applied
//! <store>/partial/<machine>   the delta being applied, if a stream broke off
//! <store>/images/<machine>/   each machine's image repository (lifeline-image-store)
//! <store>/boot/<id>/          the files of boot media <id> (lifeline-boot-server)
//! <store>/removed/<machine>-<unix time>/   a removed machine's data, kept
//! ```
//!
//! Everything under a machine's name is derived from a [`MachineName`], a
//! single safe path component, so one machine's paths never reach another's.

use std::path::{Path, PathBuf};

use lifeline_core::credential::MachineName;

/// The paths of one store directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreLayout {
    root: PathBuf,
}

impl StoreLayout {
    pub fn new(root: impl Into<PathBuf>) -> StoreLayout {
        StoreLayout { root: root.into() }
    }

    /// The store at `root`, created (mode 0700) if missing; an existing one
    /// left readable by others is tightened to 0700. Every command that
    /// writes to a store opens it this way.
    pub fn create(root: impl Into<PathBuf>) -> std::io::Result<StoreLayout> {
        let layout = StoreLayout::new(root);
        crate::private::create_private_dir_all(&layout.root)?;
        crate::private::tighten(&layout.root, crate::private::PRIVATE_DIR_MODE)?;
        Ok(layout)
    }

    /// The store directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The management database (SQLite).
    pub fn database(&self) -> PathBuf {
        self.root.join("receiver.db")
    }

    /// The receiver's generated TLS identity (CA and server certificate).
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// The generated CA's certificate: what agents trust with `--ca`.
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }

    /// The directory holding every machine's mirror.
    pub fn mirrors(&self) -> PathBuf {
        self.root.join("mirror")
    }

    /// `machine`'s mirror: its watched trees, under their absolute paths.
    pub fn mirror(&self, machine: &MachineName) -> PathBuf {
        self.mirrors().join(machine.as_str())
    }

    /// How far `machine`'s agent queue has been applied.
    pub fn queue_progress(&self, machine: &MachineName) -> PathBuf {
        self.root.join("queues").join(machine.as_str())
    }

    /// The delta `machine` was sending when its stream broke off, if any.
    pub fn partial_delta(&self, machine: &MachineName) -> PathBuf {
        self.root.join("partial").join(machine.as_str())
    }

    /// The directory holding every machine's image repository.
    pub fn image_stores(&self) -> PathBuf {
        self.root.join("images")
    }

    /// `machine`'s image repository.
    pub fn image_store(&self, machine: &MachineName) -> PathBuf {
        self.image_stores().join(machine.as_str())
    }

    /// `machine`'s history (docs/history.md): what each change to its
    /// mirror replaced.
    pub fn history(&self, machine: &MachineName) -> PathBuf {
        self.root.join("history").join(machine.as_str())
    }

    /// The journal of `machine`'s history.
    pub fn history_journal(&self, machine: &MachineName) -> PathBuf {
        self.history(machine).join("journal")
    }

    /// Where what was removed or replaced whole in `machine`'s mirror is
    /// kept.
    pub fn history_attic(&self, machine: &MachineName) -> PathBuf {
        self.history(machine).join("attic")
    }

    /// The receiver's own scratch space (restores being streamed to a
    /// machine): private, emptied when the receiver starts.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Everything the store keeps under `machine`'s name.
    fn machine_data(&self, machine: &MachineName) -> [(&'static str, PathBuf); 5] {
        [
            ("mirror", self.mirror(machine)),
            ("history", self.history(machine)),
            ("images", self.image_store(machine)),
            ("queues", self.queue_progress(machine)),
            ("partial", self.partial_delta(machine)),
        ]
    }

    /// The store holds data under `machine`'s name (a mirror, images...).
    pub fn has_machine_data(&self, machine: &MachineName) -> bool {
        self.machine_data(machine).iter().any(|(_, p)| p.symlink_metadata().is_ok())
    }

    /// Moves the data of the removed machine `machine` out of its name, to
    /// `<store>/removed/<machine>-<unix time>/`, so that a machine
    /// registered later under the same name starts empty instead of
    /// inheriting it. Returns where it went, if there was any.
    pub fn retire_machine_data(&self, machine: &MachineName) -> std::io::Result<Option<PathBuf>> {
        if !self.has_machine_data(machine) {
            return Ok(None);
        }
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let to = self.root.join("removed").join(format!("{machine}-{secs}"));
        crate::private::create_private_dir_all(&to)?;
        for (what, from) in self.machine_data(machine) {
            if from.symlink_metadata().is_ok() {
                std::fs::rename(&from, to.join(what))?;
            }
        }
        Ok(Some(to))
    }

    /// The directory holding every boot medium's files.
    pub fn boot_media_dir(&self) -> PathBuf {
        self.root.join("boot")
    }

    /// The files of boot media `id` (kernel, initrd, command line, ISO or
    /// USB image).
    pub fn boot_media(&self, id: i64) -> PathBuf {
        self.boot_media_dir().join(id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_paths_stay_one_component_below_their_directory() {
        let l = StoreLayout::new("/s");
        let m = MachineName::new("web-1").unwrap();
        assert_eq!(l.mirror(&m), Path::new("/s/mirror/web-1"));
        assert_eq!(l.image_store(&m), Path::new("/s/images/web-1"));
        assert_eq!(l.queue_progress(&m), Path::new("/s/queues/web-1"));
        assert_eq!(l.partial_delta(&m), Path::new("/s/partial/web-1"));
        assert_eq!(l.boot_media(7), Path::new("/s/boot/7"));
        assert_eq!(l.ca_cert(), Path::new("/s/tls/ca.crt"));
    }

    /// A removed machine's data leaves its name: a new machine of that name
    /// starts empty (issue 14, finding 6).
    #[test]
    fn retired_data_leaves_the_name() {
        let d = tempfile::tempdir().unwrap();
        let l = StoreLayout::new(d.path());
        let m = MachineName::new("m1").unwrap();
        assert_eq!(l.retire_machine_data(&m).unwrap(), None);
        std::fs::create_dir_all(l.mirror(&m).join("srv")).unwrap();
        std::fs::create_dir_all(l.image_store(&m)).unwrap();
        std::fs::write(l.image_store(&m).join("config"), b"c").unwrap();
        assert!(l.has_machine_data(&m));
        let to = l.retire_machine_data(&m).unwrap().unwrap();
        assert!(!l.has_machine_data(&m));
        assert!(to.join("mirror/srv").is_dir());
        assert_eq!(std::fs::read(to.join("images/config")).unwrap(), b"c");
    }
}
