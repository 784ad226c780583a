//! Files and directories of the store that only the receiver may read: the
//! store holds every machine's data and the receiver's keys.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;

/// Mode of every directory the receiver creates in its store.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))
}

/// Makes `path` (a directory or file the store created) readable by its
/// owner only if an older receiver, or a hand-made store, left it open to
/// others: `mode` is 0700 for directories, 0600 for files.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let now = fs::metadata(path)?.permissions().mode() & 0o7777;
    if now & 0o077 != 0 {
        tracing::warn!(
            "{} was mode {now:o}: tightened to {mode:o} (the store is for the receiver alone)",
            path.display()
        );
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Opens a per-machine record file of the store (a machine's queue
/// progress, its partial delta) for reading and writing, creating it with
/// mode 0600 (and its directory with 0700), never following a symlink.
pub fn open_record(path: &Path) -> io::Result<fs::File> {
    if let Some(dir) = path.parent() {
        create_private_dir_all(dir)?;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes a secret (a key, a machine's credential, a boot token) readable by
/// its owner only, whole or not at all.
pub fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    write_file(path, data, 0o600)
}

/// Writes a file anyone may read (a certificate), whole or not at all.
pub fn write_public(path: &Path, data: &str) -> anyhow::Result<()> {
    write_file(path, data, 0o644)
}

/// Written whole to a temporary name, then renamed: never half a key.
fn write_file(path: &Path, data: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
