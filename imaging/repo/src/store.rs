//! Where a repository's blobs live.
//!
//! [`crate::Repo`] does everything that needs the keys (hashing, compression,
//! encryption, checks); a [`Store`] only keeps opaque, already encrypted blobs:
//! the config, packs by id and manifests by name. So the same repository
//! works on a local directory ([`DirStore`]: attached storage or a mounted
//! network share) and on Lifeline's receiver over gRPC (the receiver keeps
//! each machine's blobs in a [`DirStore`] of its own and never sees a key or a
//! password).

use crate::format::{hex, nonce_bytes};
use crate::pack::{self, PackId};
use crate::{RepoError, Result};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Blob storage behind a repository. Implementations must be safe to call
/// from several threads (the write pipeline's workers each fill a pack).
pub trait Store: Send + Sync {
    /// Where this is, for messages: a path or a URL.
    fn location(&self) -> String;
    /// The config blob, `None` if there is no repository here.
    fn load_config(&self) -> Result<Option<Vec<u8>>>;
    /// Create the repository with this config. Fails with
    /// [`RepoError::AlreadyExists`] if one exists.
    fn create_config(&self, config: &[u8]) -> Result<()>;
    /// Start writing a new pack. Nothing is visible under its name until
    /// [`PackSink::commit`]; dropping the sink abandons it.
    fn create_pack(&self, id: &PackId) -> Result<Box<dyn PackSink>>;
    /// `len` bytes of a pack from `offset`; an error if the pack is missing
    /// or shorter.
    fn read_pack(&self, id: &PackId, offset: u64, len: u32) -> Result<Vec<u8>>;
    /// Every pack with its size and index blob, plus the names in the pack
    /// area that are not packs and the leftover temporaries.
    fn list_packs(&self) -> Result<PackListing>;
    /// Remove a pack (a prune found no image using any chunk in it).
    fn delete_pack(&self, id: &PackId) -> Result<()>;
    /// Store a manifest durably, once: [`RepoError::ImageExists`] if one of
    /// that name exists (images are never replaced). Packs are durable once
    /// committed, so a manifest never refers to a lost pack.
    fn put_manifest(&self, name: &str, blob: &[u8]) -> Result<()>;
    fn get_manifest(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>>;
    /// Manifest names (unsorted; the caller validates and sorts).
    fn list_manifests(&self) -> Result<Vec<String>>;
    /// Remove an image's manifest (its chunks stay until a prune).
    fn delete_manifest(&self, name: &str) -> Result<()>;
    /// Hold the repository against a prune (shared: backups) or for one
    /// (exclusive), until the guard is dropped. `Ok(None)`: someone holds it
    /// the other way.
    fn lock(&self, exclusive: bool) -> Result<Option<StoreLock>>;
}

/// A pack being written, sequentially.
pub trait PackSink: Send {
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Make the pack durable under its name, then visible. Fails (and keeps
    /// nothing) if a pack of that name exists: a pack is never overwritten.
    fn commit(self: Box<Self>) -> Result<()>;
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

/// One pack as [`Store::list_packs`] found it.
#[derive(Debug, Clone)]
pub struct PackEntry {
    pub id: PackId,
    pub size: u64,
    /// The encrypted index blob from the pack's end, or why it could not be
    /// found (a torn or damaged pack).
    pub index: std::result::Result<Vec<u8>, String>,
}

/// What [`Store::list_packs`] found.
#[derive(Debug, Default)]
pub struct PackListing {
    pub packs: Vec<PackEntry>,
    pub stray: Vec<String>,
    pub temp_files: u64,
}

const CONFIG: &str = "config";
const PACKS: &str = "packs";
const IMAGES: &str = "images";
pub(crate) const TMP_PREFIX: &str = ".tmp-";

/// A repository in a directory:
///
/// ```text
/// DIR/config          JSON: format, repo id, KDF parameters and salt, wrapped keys
/// DIR/packs/<32 hex>  one pack file, named by its random id
/// DIR/images/<name>   one manifest blob
/// DIR/lock            flock(2) between backups and prunes
/// ```
///
/// A pack is written under a temporary name, fsync'd, then linked to its
/// name (which fails if the name exists: never overwritten) and the directory
/// fsync'd: a file under a pack name is complete and durable. One fsync per
/// 32 MiB pack replaced the batched `syncfs` of the one-file-per-chunk layout.
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pack_path(&self, id: &PackId) -> PathBuf {
        self.dir.join(PACKS).join(id.to_hex())
    }

    /// Start a pack; the receiver writes the pieces it is sent through this.
    pub fn create_pack_file(&self, id: &PackId) -> Result<DirPackSink> {
        let dst = self.pack_path(id);
        let dir = self.dir.join(PACKS);
        let tmp = temp_name(&dir);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(RepoError::io("cannot create", &tmp))?;
        Ok(DirPackSink { file, tmp, dst, dir, id: *id, written: 0, head: Vec::new(), tail: Vec::new(), done: false })
    }

    /// The index blob of one pack file (see [`pack::index_location`]).
    fn read_index(path: &Path) -> std::result::Result<(u64, Vec<u8>), String> {
        use std::os::unix::fs::FileExt;
        let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let size = f.metadata().map_err(|e| e.to_string())?.len();
        let mut head = [0u8; 8];
        let mut tail = [0u8; pack::TRAILER_LEN];
        if size >= (head.len() + tail.len()) as u64 {
            f.read_exact_at(&mut head, 0).map_err(|e| e.to_string())?;
            f.read_exact_at(&mut tail, size - pack::TRAILER_LEN as u64).map_err(|e| e.to_string())?;
            if head != pack::HEADER {
                return Err("not a pack file of this version (bad header)".into());
            }
        }
        let (at, len) = pack::index_location(size, &tail)?;
        let mut blob = vec![0u8; len];
        f.read_exact_at(&mut blob, at).map_err(|e| e.to_string())?;
        Ok((size, blob))
    }
}

/// A pack file being written by [`DirStore`]. Dropped before `commit`: the
/// temporary file is removed.
pub struct DirPackSink {
    file: File,
    tmp: PathBuf,
    dst: PathBuf,
    dir: PathBuf,
    id: PackId,
    written: u64,
    /// The first and last bytes written, to check the pack's framing before
    /// it gets its name.
    head: Vec<u8>,
    tail: Vec<u8>,
    done: bool,
}

impl PackSink for DirPackSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.written += data.len() as u64;
        if self.written > pack::MAX_PACK_SIZE {
            return Err(RepoError::TooLarge {
                what: "pack",
                len: self.written as usize,
                max: pack::MAX_PACK_SIZE as usize,
            });
        }
        let need = pack::HEADER.len().saturating_sub(self.head.len());
        self.head.extend_from_slice(&data[..need.min(data.len())]);
        self.tail.extend_from_slice(&data[data.len().saturating_sub(pack::TRAILER_LEN)..]);
        let excess = self.tail.len().saturating_sub(pack::TRAILER_LEN);
        self.tail.drain(..excess);
        self.file.write_all(data).map_err(RepoError::io("cannot write", &self.tmp))?;
        // Start writing back now, while the next group is compressed, so the
        // fsync at the commit has little left to wait for (it blocks a
        // writer thread). Only a hint: errors show at the fsync.
        use std::os::unix::io::AsRawFd;
        // SAFETY: plain syscall on a descriptor we own.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                (self.written - data.len() as u64) as i64,
                data.len() as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<()> {
        // A writer that broke off mid-pack (an upload cut short) must not
        // leave a pack without its index under a pack name.
        if self.head != pack::HEADER {
            return Err(RepoError::CorruptPack { pack: self.id, why: "does not start with a pack header".into() });
        }
        pack::index_location(self.written, &self.tail).map_err(|why| RepoError::CorruptPack { pack: self.id, why })?;
        self.file.sync_all().map_err(RepoError::io("cannot fsync", &self.tmp))?;
        // Pack names are random: only a bug collides.
        if !publish_new(&self.tmp, &self.dst)? {
            return Err(RepoError::PackExists { pack: self.id });
        }
        self.done = true;
        sync_dir(&self.dir)
    }
}

impl Drop for DirPackSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
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
            Ok(None) => Err(RepoError::BadConfig { path, why: "larger than 1 MiB".into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io { what: "cannot read", path, source: e }),
        }
    }

    fn create_config(&self, config: &[u8]) -> Result<()> {
        let dir = &self.dir;
        fs::create_dir_all(dir).map_err(RepoError::io("cannot create", dir))?;
        if dir.join(CONFIG).exists() {
            return Err(RepoError::AlreadyExists { repo: self.location() });
        }
        // Allow re-running an init that crashed before writing `config`.
        for e in fs::read_dir(dir).map_err(RepoError::io("cannot list", dir))? {
            let e = e.map_err(RepoError::io("cannot list", dir))?;
            let n = e.file_name();
            if n != PACKS && n != IMAGES && !n.to_string_lossy().starts_with(TMP_PREFIX) {
                return Err(RepoError::NotEmpty { repo: self.location() });
            }
        }
        // Directories first, config last: a repository exists once its config does.
        for sub in [PACKS, IMAGES] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(RepoError::io("cannot create", &d))?;
        }
        sync_dir(dir)?;
        write_atomic(dir, CONFIG, config)?;
        sync_dir(dir)
    }

    fn create_pack(&self, id: &PackId) -> Result<Box<dyn PackSink>> {
        Ok(Box::new(self.create_pack_file(id)?))
    }

    fn read_pack(&self, id: &PackId, offset: u64, len: u32) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = self.pack_path(id);
        let mut buf = vec![0u8; len as usize];
        File::open(&path)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .map_err(RepoError::io("cannot read pack", &path))?;
        Ok(buf)
    }

    fn list_packs(&self) -> Result<PackListing> {
        let dir = self.dir.join(PACKS);
        let mut out = PackListing::default();
        for e in fs::read_dir(&dir).map_err(RepoError::io("cannot list", &dir))? {
            let e = e.map_err(RepoError::io("cannot list", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                out.temp_files += 1;
                continue;
            }
            let Some(id) = PackId::from_hex(&name) else {
                out.stray.push(e.path().display().to_string());
                continue;
            };
            let (size, index) = match Self::read_index(&e.path()) {
                Ok((size, blob)) => (size, Ok(blob)),
                Err(why) => (e.metadata().map_or(0, |m| m.len()), Err(why)),
            };
            out.packs.push(PackEntry { id, size, index });
        }
        out.packs.sort_by_key(|p| p.id);
        Ok(out)
    }

    fn delete_pack(&self, id: &PackId) -> Result<()> {
        self.remove(&self.pack_path(id))
    }

    /// Write-once: an existing image is never replaced.
    fn put_manifest(&self, name: &str, blob: &[u8]) -> Result<()> {
        let images = self.dir.join(IMAGES);
        let tmp = write_temp(&images, blob)?;
        let dst = images.join(name);
        let published = File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(RepoError::io("cannot fsync", &tmp))
            .and_then(|()| publish_new(&tmp, &dst));
        if !matches!(published, Ok(true)) {
            let _ = fs::remove_file(&tmp);
        }
        if !published? {
            return Err(RepoError::ImageExists { name: name.into() });
        }
        sync_dir(&images)
    }

    fn get_manifest(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(IMAGES).join(name);
        match read_limited(&path, max as u64) {
            Ok(Some(b)) => Ok(Some(b)),
            Ok(None) => Err(RepoError::CorruptManifest { name: name.into(), why: "file too large".into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::Io { what: "cannot read image", path, source: e }),
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
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(RepoError::Io { what: "cannot lock", path, source: e });
        }
        Ok(Some(StoreLock { _file: Some(f) }))
    }
}

impl DirStore {
    fn remove(&self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RepoError::Io { what: "cannot remove", path: path.to_path_buf(), source: e }),
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
    Ok(if buf.len() as u64 > max { None } else { Some(buf) })
}

/// Write `data` to a new temporary file in `dir` (no fsync).
fn write_temp(dir: &Path, data: &[u8]) -> Result<PathBuf> {
    let tmp = temp_name(dir);
    let r = File::create(&tmp).and_then(|mut f| f.write_all(data)).map_err(RepoError::io("cannot write", &tmp));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| tmp)
}

fn temp_name(dir: &Path) -> PathBuf {
    let rnd: [u8; 8] = nonce_bytes();
    dir.join(format!("{TMP_PREFIX}{}", hex(&rnd)))
}

/// Write `dir/name` atomically: temporary file in the same directory, fsync,
/// rename over the final name. Readers see the old file or the new one, never
/// a partial one, even across a crash.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = write_temp(dir, data)?;
    let res = (|| {
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(RepoError::io("cannot fsync", &tmp))?;
        let dst = dir.join(name);
        fs::rename(&tmp, &dst).map_err(RepoError::io("cannot rename into", &dst))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Gives the finished (synced) temporary file `tmp` the name `dst` unless
/// that name exists: `Ok(false)` then, and `tmp` stays for the caller to
/// remove. link(2) refuses an existing name atomically, where rename(2)
/// would replace it; filesystems without hard links (FAT, some shares) get
/// a check-then-rename.
fn publish_new(tmp: &Path, dst: &Path) -> Result<bool> {
    match fs::hard_link(tmp, dst) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) if dst.exists() => Ok(false),
        Err(_) => fs::rename(tmp, dst).map(|()| true).map_err(RepoError::io("cannot rename into", dst)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(RepoError::io("cannot fsync directory", dir))
}
