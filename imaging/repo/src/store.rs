//! Where a repository's blobs live.
//!
//! [`crate::Repo`] does everything that needs the keys (hashing, compression,
//! encryption, checks); a [`Store`] only keeps opaque, already encrypted blobs:
//! the config, chunks by id and manifests by name. So the same repository
//! works on a local directory ([`DirStore`]: attached storage or a mounted
//! network share) and on Lifeline's receiver over gRPC (the receiver keeps
//! each machine's blobs in a [`DirStore`] of its own and never sees a key or a
//! password).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::format::{hex, nonce_bytes, ChunkId};
use crate::{RepoError, Result};

/// Blob storage behind a repository. Implementations must be safe to call
/// from several threads (the write pipeline's workers call `put_chunk`
/// concurrently).
pub trait Store: Send + Sync {
    /// Where this is, for messages: a path or a URL.
    fn location(&self) -> String;
    /// The config blob, `None` if there is no repository here.
    fn load_config(&self) -> Result<Option<Vec<u8>>>;
    /// Create the repository with this config. Fails with
    /// [`RepoError::AlreadyExists`] if one exists.
    fn create_config(&self, config: &[u8]) -> Result<()>;
    fn has_chunk(&self, id: &ChunkId) -> Result<bool>;
    /// Store a chunk blob. It need not be durable or visible before
    /// [`Store::flush`]; a store may batch.
    fn put_chunk(&self, id: &ChunkId, blob: Vec<u8>) -> Result<()>;
    /// Make every chunk put so far durable and visible.
    fn flush(&self) -> Result<()>;
    /// A chunk blob, `None` if absent. `max` bounds what is read.
    fn get_chunk(&self, id: &ChunkId, max: usize) -> Result<Option<Vec<u8>>>;
    /// Store a manifest durably, replacing one of the same name. Called after
    /// `flush`, so it never refers to chunks that are not durable.
    fn put_manifest(&self, name: &str, blob: &[u8]) -> Result<()>;
    fn get_manifest(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>>;
    /// Manifest names (unsorted; the caller validates and sorts).
    fn list_manifests(&self) -> Result<Vec<String>>;
    /// Every chunk id stored, plus names in the chunk area that are not
    /// chunks (reported by a full verification) and leftover temporaries.
    fn list_chunks(&self) -> Result<ChunkListing>;
    /// Remove an image's manifest (its chunks stay until a prune).
    fn delete_manifest(&self, name: &str) -> Result<()>;
    /// Remove a chunk (a prune found no image using it).
    fn delete_chunk(&self, id: &ChunkId) -> Result<()>;
    /// Hold the repository against a prune (shared: backups) or for one
    /// (exclusive), until the guard is dropped. `Ok(None)`: someone holds it
    /// the other way.
    fn lock(&self, exclusive: bool) -> Result<Option<StoreLock>>;
}

/// Held by [`Store::lock`]; released on drop.
pub struct StoreLock {
    _file: Option<File>,
}

impl StoreLock {
    /// A lock that holds nothing (stores that serialise otherwise).
    pub fn none() -> StoreLock {
        StoreLock { _file: None }
    }
}

/// What [`Store::list_chunks`] found.
#[derive(Debug, Default)]
pub struct ChunkListing {
    pub ids: Vec<ChunkId>,
    pub stray: Vec<String>,
    pub temp_files: u64,
}

const CONFIG: &str = "config";
const CHUNKS: &str = "chunks";
const IMAGES: &str = "images";
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// Pending bytes after which [`DirStore::put_chunk`] makes the batch durable.
/// Large enough that one `syncfs` covers hundreds of chunk files (a per-file
/// fsync costs a journal commit each: thousands for a disk image), small
/// enough that a crash loses little work.
const FLUSH_BYTES: u64 = 128 << 20;

/// A repository in a directory:
///
/// ```text
/// DIR/config                  JSON: repo id, KDF parameters and salt, wrapped keys
/// DIR/chunks/<2 hex>/<64 hex> one chunk blob, named by its id (256 fan-out directories)
/// DIR/images/<name>           one manifest blob
/// ```
///
/// Chunk files are written under temporary names without an fsync each; a
/// batch is made durable with one `syncfs` of the filesystem and only then
/// renamed into place. So a file under a chunk name is always complete, even
/// after a power cut (a later backup trusts an existing name and would
/// otherwise reference a torn chunk), at one journal commit per batch.
pub struct DirStore {
    dir: PathBuf,
    pending: Mutex<Pending>,
}

/// Written under temporary names, not yet durable.
#[derive(Default)]
struct Pending {
    files: Vec<(PathBuf, PathBuf)>,
    bytes: u64,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore {
            dir: dir.into(),
            pending: Mutex::new(Pending::default()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = id.to_hex();
        self.dir.join(CHUNKS).join(&h[..2]).join(h)
    }
}

impl Store for DirStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn load_config(&self) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(CONFIG);
        match read_limited(&path, 1 << 20) {
            Ok(Some(b)) => Ok(Some(b)),
            Ok(None) => Err(RepoError::BadConfig {
                path,
                why: "larger than 1 MiB".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io {
                what: "cannot read",
                path,
                source: e,
            }),
        }
    }

    fn create_config(&self, config: &[u8]) -> Result<()> {
        let dir = &self.dir;
        fs::create_dir_all(dir).map_err(RepoError::io("cannot create", dir))?;
        if dir.join(CONFIG).exists() {
            return Err(RepoError::AlreadyExists {
                repo: self.location(),
            });
        }
        // Allow re-running an init that crashed before writing `config`.
        for e in fs::read_dir(dir).map_err(RepoError::io("cannot list", dir))? {
            let e = e.map_err(RepoError::io("cannot list", dir))?;
            let n = e.file_name();
            if n != CHUNKS && n != IMAGES && !n.to_string_lossy().starts_with(TMP_PREFIX) {
                return Err(RepoError::NotEmpty {
                    repo: self.location(),
                });
            }
        }
        // Directories first, config last: a repository exists once its config does.
        let chunks = dir.join(CHUNKS);
        for i in 0..256 {
            let d = chunks.join(format!("{i:02x}"));
            fs::create_dir_all(&d).map_err(RepoError::io("cannot create", &d))?;
        }
        let images = dir.join(IMAGES);
        fs::create_dir_all(&images).map_err(RepoError::io("cannot create", &images))?;
        sync_dir(&chunks)?;
        write_atomic(dir, CONFIG, config)?;
        sync_dir(dir)
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.chunk_path(id).exists())
    }

    fn put_chunk(&self, id: &ChunkId, blob: Vec<u8>) -> Result<()> {
        let path = self.chunk_path(id);
        let tmp = write_temp(path.parent().unwrap(), &blob)?;
        let flush = {
            let mut p = self.pending.lock().unwrap();
            p.files.push((tmp, path));
            p.bytes += blob.len() as u64;
            p.bytes >= FLUSH_BYTES
        };
        if flush {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap());
        if batch.files.is_empty() {
            return Ok(());
        }
        let r = (|| {
            syncfs(&self.dir)?;
            for (tmp, dst) in &batch.files {
                fs::rename(tmp, dst).map_err(RepoError::io("cannot rename into", dst))?;
            }
            Ok(())
        })();
        if r.is_err() {
            for (tmp, _) in &batch.files {
                let _ = fs::remove_file(tmp);
            }
        }
        r
    }

    fn get_chunk(&self, id: &ChunkId, max: usize) -> Result<Option<Vec<u8>>> {
        let path = self.chunk_path(id);
        match read_limited(&path, max as u64) {
            Ok(Some(b)) => Ok(Some(b)),
            Ok(None) => Err(RepoError::Corrupt {
                id: *id,
                why: "file larger than any valid chunk".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io {
                what: "cannot read chunk",
                path,
                source: e,
            }),
        }
    }

    fn put_manifest(&self, name: &str, blob: &[u8]) -> Result<()> {
        // The renames of the chunks it refers to must be durable first.
        self.flush()?;
        syncfs(&self.dir)?;
        let images = self.dir.join(IMAGES);
        write_atomic(&images, name, blob)?;
        sync_dir(&images)
    }

    fn get_manifest(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(IMAGES).join(name);
        match read_limited(&path, max as u64) {
            Ok(Some(b)) => Ok(Some(b)),
            Ok(None) => Err(RepoError::CorruptManifest {
                name: name.into(),
                why: "file too large".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io {
                what: "cannot read image",
                path,
                source: e,
            }),
        }
    }

    fn list_manifests(&self) -> Result<Vec<String>> {
        let dir = self.dir.join(IMAGES);
        let mut names = Vec::new();
        for e in fs::read_dir(&dir).map_err(RepoError::io("cannot list", &dir))? {
            let e = e.map_err(RepoError::io("cannot list", &dir))?;
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    fn delete_manifest(&self, name: &str) -> Result<()> {
        let images = self.dir.join(IMAGES);
        self.remove(&images.join(name))?;
        sync_dir(&images)
    }

    fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        self.remove(&self.chunk_path(id))
    }

    /// `flock(2)` on `DIR/lock`: works across processes on one machine and,
    /// on NFS, across machines sharing the directory.
    fn lock(&self, exclusive: bool) -> Result<Option<StoreLock>> {
        use std::os::unix::io::AsRawFd;
        let path = self.dir.join("lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(RepoError::io("cannot open", &path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(RepoError::Io {
                what: "cannot lock",
                path,
                source: e,
            });
        }
        Ok(Some(StoreLock { _file: Some(f) }))
    }

    fn list_chunks(&self) -> Result<ChunkListing> {
        let chunks = self.dir.join(CHUNKS);
        let mut out = ChunkListing::default();
        for i in 0..256 {
            let prefix = format!("{i:02x}");
            let d = chunks.join(&prefix);
            for e in fs::read_dir(&d).map_err(RepoError::io("cannot list", &d))? {
                let e = e.map_err(RepoError::io("cannot list", &d))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_PREFIX) {
                    out.temp_files += 1;
                    continue;
                }
                match ChunkId::from_hex(&name) {
                    Some(id) if name.starts_with(&prefix) => out.ids.push(id),
                    _ => out.stray.push(e.path().display().to_string()),
                }
            }
        }
        Ok(out)
    }
}

impl DirStore {
    fn remove(&self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RepoError::Io {
                what: "cannot remove",
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }
}

/// Read a whole file unless it is longer than `max` (then `Ok(None)`).
fn read_limited(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut buf)?;
    Ok(if buf.len() as u64 > max {
        None
    } else {
        Some(buf)
    })
}

/// Write `data` to a new temporary file in `dir` (no fsync).
fn write_temp(dir: &Path, data: &[u8]) -> Result<PathBuf> {
    let rnd: [u8; 8] = nonce_bytes();
    let tmp = dir.join(format!("{TMP_PREFIX}{}", hex(&rnd)));
    let r = File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .map_err(RepoError::io("cannot write", &tmp));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| tmp)
}

/// Write `dir/name` atomically: temporary file in the same directory, fsync,
/// rename over the final name. Readers see the old file or the new one, never
/// a partial one, even across a crash.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = write_temp(dir, data)?;
    let res = (|| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(RepoError::io("cannot fsync", &tmp))?;
        let dst = dir.join(name);
        fs::rename(&tmp, &dst).map_err(RepoError::io("cannot rename into", &dst))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Flush everything written on the filesystem holding `dir` (`syncfs(2)`).
fn syncfs(dir: &Path) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    let f = File::open(dir).map_err(RepoError::io("cannot open", dir))?;
    // SAFETY: plain syscall on a file descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(RepoError::Io {
            what: "cannot sync the filesystem of",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(RepoError::io("cannot fsync directory", dir))
}
