//! The repository: config and keys, chunk store, manifests, verification.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::format::{self, hex, random_bytes, unhex, ChunkId, CHUNK_MAGIC, MANIFEST_MAGIC};
use crate::{RepoError, Result, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};

const CONFIG: &str = "config";
const CHUNKS: &str = "chunks";
const IMAGES: &str = "images";
const CONFIG_FORMAT: u32 = 1;
const WRAP_AAD: &[u8] = b"lifeline-repo keys v1";
const TMP_PREFIX: &str = ".tmp-";

/// Argon2id cost parameters for turning the password into the key that
/// unwraps the repository keys. Stored in `config`, so a repository opens with
/// the parameters it was created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 128 MiB, 6 passes, 1 lane: about half a second on the 2-core build
    /// machine in a release build (see the `throughput` example), well within
    /// the boot OS's 256 MiB memory target (the memory is freed once the repo is
    /// open). Memory-hardness is what makes guessing expensive on GPUs; one
    /// lane because the boot OS may run on a single core.
    fn default() -> Self {
        KdfParams {
            memory_kib: 128 * 1024,
            iterations: 6,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Very cheap parameters for tests only: they make password guessing fast.
    pub fn insecure_for_tests() -> Self {
        KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        // Bounds on what a config file may ask for: a damaged or hostile config
        // must not make `open` allocate 1 TiB or spin for an hour.
        if !(8..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(format!(
                "Argon2 memory {} KiB out of range",
                self.memory_kib
            ));
        }
        if !(1..=64).contains(&self.iterations) || !(1..=64).contains(&self.parallelism) {
            return Err("Argon2 iterations/parallelism out of range".into());
        }
        Ok(())
    }

    fn derive(&self, password: &[u8], salt: &[u8]) -> std::result::Result<[u8; 32], String> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| e.to_string())?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        a.hash_password_into(password, salt, &mut key)
            .map_err(|e| e.to_string())?;
        Ok(key)
    }
}

/// `DIR/config` (JSON, so it can be inspected without tools).
#[derive(Serialize, Deserialize)]
struct ConfigFile {
    format: u32,
    /// 16 random bytes, hex. Also bound into the key wrapping.
    repo_id: String,
    kdf: KdfConfig,
    keys: WrappedKeys,
}

#[derive(Serialize, Deserialize)]
struct KdfConfig {
    /// "argon2id" (version 0x13).
    algorithm: String,
    #[serde(flatten)]
    params: KdfParams,
    /// 16 random bytes, hex.
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct WrappedKeys {
    /// "xchacha20poly1305".
    cipher: String,
    nonce: String,
    /// Encryption of the 64 bytes `data key || chunk-id key` under the
    /// password-derived key, associated data `"lifeline-repo keys v1" || repo id`.
    sealed: String,
}

struct Keys {
    cipher: XChaCha20Poly1305,
    id_key: [u8; 32],
}

/// An open repository. Cheap to clone (shared state behind an `Arc`); safe to
/// use from many threads.
#[derive(Clone)]
pub struct Repo {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    id: [u8; 16],
    keys: Keys,
    /// Chunks being written right now or waiting in `pending`, so two
    /// workers given the same new data (e.g. the first all-zero chunk) write it
    /// once and count it once.
    in_flight: Mutex<HashSet<ChunkId>>,
    /// Chunk files written under temporary names, not yet durable: see
    /// [`Repo::flush`].
    pending: Mutex<Pending>,
}

/// Written but not yet renamed into place.
#[derive(Default)]
struct Pending {
    files: Vec<(ChunkId, PathBuf)>,
    bytes: u64,
}

/// Pending bytes after which a writer makes the batch durable. Large enough
/// that one `syncfs` covers hundreds of chunk files (a per-file fsync costs a
/// journal commit each: thousands of them for a disk image), small enough that
/// a crash loses little work.
const FLUSH_BYTES: u64 = 128 << 20;

/// What `put_chunk` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: ChunkId,
    /// `false` if the chunk was already stored (deduplicated).
    pub new: bool,
    /// Bytes written to disk (0 when deduplicated).
    pub stored: u64,
}

/// Result of a verification run. Verification does not stop at the first
/// problem: it reports all of them.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Chunks read and checked (including failed ones).
    pub checked: u64,
    /// Plaintext bytes of the chunks that checked out.
    pub bytes: u64,
    /// Leftover temporary files from interrupted writes (harmless).
    pub temp_files: u64,
    pub errors: Vec<RepoError>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl Repo {
    /// Create a repository in `dir` (created if missing; must be empty) with
    /// the default Argon2id cost.
    pub fn init(dir: impl AsRef<Path>, password: &[u8]) -> Result<Repo> {
        Self::init_with_kdf(dir, password, KdfParams::default())
    }

    /// Create a repository with explicit Argon2id parameters (tests use
    /// [`KdfParams::insecure_for_tests`]).
    pub fn init_with_kdf(dir: impl AsRef<Path>, password: &[u8], kdf: KdfParams) -> Result<Repo> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join(CONFIG);
        kdf.check().map_err(|why| RepoError::BadConfig {
            path: config_path.clone(),
            why,
        })?;
        fs::create_dir_all(&dir).map_err(RepoError::io("cannot create", &dir))?;
        if config_path.exists() {
            return Err(RepoError::AlreadyExists { dir });
        }
        // Allow re-running an init that crashed before writing `config`.
        for e in fs::read_dir(&dir).map_err(RepoError::io("cannot list", &dir))? {
            let e = e.map_err(RepoError::io("cannot list", &dir))?;
            let n = e.file_name();
            if n != CHUNKS && n != IMAGES && !n.to_string_lossy().starts_with(TMP_PREFIX) {
                return Err(RepoError::NotEmpty { dir });
            }
        }
        let id: [u8; 16] = random_bytes()?;
        let salt: [u8; 16] = random_bytes()?;
        let data_key: [u8; 32] = random_bytes()?;
        let id_key: [u8; 32] = random_bytes()?;
        let wrap_key = kdf
            .derive(password, &salt)
            .map_err(|why| RepoError::BadConfig {
                path: config_path.clone(),
                why,
            })?;
        let nonce: [u8; 24] = random_bytes()?;
        let mut master = [0u8; 64];
        master[..32].copy_from_slice(&data_key);
        master[32..].copy_from_slice(&id_key);
        let aad = wrap_aad(&id);
        let sealed = format::cipher(&wrap_key)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &master,
                    aad: &aad,
                },
            )
            .map_err(|_| RepoError::Pipeline("key wrapping failed".into()))?;
        let cfg = ConfigFile {
            format: CONFIG_FORMAT,
            repo_id: hex(&id),
            kdf: KdfConfig {
                algorithm: "argon2id".into(),
                params: kdf,
                salt: hex(&salt),
            },
            keys: WrappedKeys {
                cipher: "xchacha20poly1305".into(),
                nonce: hex(&nonce),
                sealed: hex(&sealed),
            },
        };
        // Directories first, config last: a repository exists once its config does.
        let chunks = dir.join(CHUNKS);
        for i in 0..256 {
            let d = chunks.join(format!("{i:02x}"));
            fs::create_dir_all(&d).map_err(RepoError::io("cannot create", &d))?;
        }
        let images = dir.join(IMAGES);
        fs::create_dir_all(&images).map_err(RepoError::io("cannot create", &images))?;
        sync_dir(&chunks)?;
        let mut json = serde_json::to_vec_pretty(&cfg).expect("config serialises");
        json.push(b'\n');
        write_atomic(&dir, CONFIG, &json)?;
        sync_dir(&dir)?;
        Ok(Repo::from_keys(dir, id, &data_key, id_key))
    }

    /// Open an existing repository. Only `config` is read; a wrong password is
    /// refused with [`RepoError::WrongPassword`] before anything else happens.
    pub fn open(dir: impl AsRef<Path>, password: &[u8]) -> Result<Repo> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(CONFIG);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::NotARepo { dir })
            }
            Err(e) => {
                return Err(RepoError::Io {
                    what: "cannot read",
                    path,
                    source: e,
                })
            }
        };
        let bad = |why: String| RepoError::BadConfig {
            path: path.clone(),
            why,
        };
        let cfg: ConfigFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if cfg.format != CONFIG_FORMAT {
            return Err(bad(format!("unsupported format {}", cfg.format)));
        }
        if cfg.kdf.algorithm != "argon2id" || cfg.keys.cipher != "xchacha20poly1305" {
            return Err(bad("unsupported KDF or cipher".into()));
        }
        cfg.kdf.params.check().map_err(bad)?;
        let field = |name: &str, s: &str, len: usize| {
            unhex(s)
                .filter(|v| len == 0 || v.len() == len)
                .ok_or_else(|| bad(format!("bad {name}")))
        };
        let id: [u8; 16] = field("repo_id", &cfg.repo_id, 16)?.try_into().unwrap();
        let salt = field("salt", &cfg.kdf.salt, 16)?;
        let nonce = field("nonce", &cfg.keys.nonce, 24)?;
        let sealed = field("sealed keys", &cfg.keys.sealed, 64 + 16)?;
        let wrap_key = cfg.kdf.params.derive(password, &salt).map_err(bad)?;
        let aad = wrap_aad(&id);
        let master = format::cipher(&wrap_key)
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| RepoError::WrongPassword { dir: dir.clone() })?;
        let data_key: [u8; 32] = master[..32].try_into().unwrap();
        let id_key: [u8; 32] = master[32..].try_into().unwrap();
        Ok(Repo::from_keys(dir, id, &data_key, id_key))
    }

    fn from_keys(dir: PathBuf, id: [u8; 16], data_key: &[u8; 32], id_key: [u8; 32]) -> Repo {
        Repo {
            inner: Arc::new(Inner {
                dir,
                id,
                keys: Keys {
                    cipher: format::cipher(data_key),
                    id_key,
                },
                in_flight: Mutex::new(HashSet::new()),
                pending: Mutex::new(Pending::default()),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The repository's random id, hex.
    pub fn id(&self) -> String {
        hex(&self.inner.id)
    }

    /// The id `data` has (or would have) in this repository.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.inner.keys.id_key, data).as_bytes())
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let h = id.to_hex();
        self.inner.dir.join(CHUNKS).join(&h[..2]).join(h)
    }

    /// Whether the chunk is stored (or being stored by this process).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.inner.in_flight.lock().unwrap().contains(id) || self.chunk_path(id).exists()
    }

    /// Store one chunk unless it is already there; durable when this returns.
    /// For many chunks use a [`crate::ChunkWriter`], which does this on several
    /// threads and makes chunks durable in batches.
    pub fn put_chunk(&self, data: &[u8]) -> Result<PutOutcome> {
        let mut z = new_compressor()?;
        let id = self.chunk_id(data);
        let out = self.store_chunk(id, data, &mut z)?;
        self.flush()?;
        Ok(out)
    }

    /// Store `data` under `id` (already computed by the caller) unless present.
    pub(crate) fn store_chunk(
        &self,
        id: ChunkId,
        data: &[u8],
        zstd: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<PutOutcome> {
        if data.len() > MAX_CHUNK_SIZE {
            return Err(RepoError::TooLarge {
                what: "chunk",
                len: data.len(),
                max: MAX_CHUNK_SIZE,
            });
        }
        let path = self.chunk_path(&id);
        let dup = PutOutcome {
            id,
            new: false,
            stored: 0,
        };
        {
            let mut busy = self.inner.in_flight.lock().unwrap();
            // Checking existence under the lock makes "new" exact within this
            // process; across processes/machines two writers of the same chunk
            // both write valid, identical content and the rename is atomic.
            if busy.contains(&id) || path.exists() {
                return Ok(dup);
            }
            busy.insert(id);
        }
        let r = (|| {
            let blob = format::seal(
                &self.inner.keys.cipher,
                CHUNK_MAGIC,
                id.as_bytes(),
                data,
                zstd,
            )?;
            let tmp = write_temp(path.parent().unwrap(), &blob)?;
            let flush = {
                let mut p = self.inner.pending.lock().unwrap();
                p.files.push((id, tmp));
                p.bytes += blob.len() as u64;
                p.bytes >= FLUSH_BYTES
            };
            if flush {
                self.flush()?;
            }
            Ok(PutOutcome {
                id,
                new: true,
                stored: blob.len() as u64,
            })
        })();
        if r.is_err() {
            self.inner.in_flight.lock().unwrap().remove(&id);
        }
        r
    }

    /// Make every chunk written so far durable and visible under its name.
    ///
    /// Chunk files are written under temporary names without an fsync each;
    /// a batch is made durable with one `syncfs` of the repository's
    /// filesystem and only then renamed into place. So a file under a chunk
    /// name is always complete, even after a power cut (a later backup trusts
    /// an existing name and would otherwise reference a torn chunk), while a
    /// disk image costs one journal commit per batch instead of one per chunk.
    /// [`crate::ChunkWriter::finish`] and [`Repo::put_manifest`] call this.
    pub fn flush(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.inner.pending.lock().unwrap());
        if batch.files.is_empty() {
            return Ok(());
        }
        let r = (|| {
            syncfs(&self.inner.dir)?;
            for (id, tmp) in &batch.files {
                let dst = self.chunk_path(id);
                fs::rename(tmp, &dst).map_err(RepoError::io("cannot rename into", &dst))?;
            }
            Ok(())
        })();
        let mut busy = self.inner.in_flight.lock().unwrap();
        for (id, tmp) in &batch.files {
            busy.remove(id);
            if r.is_err() {
                let _ = fs::remove_file(tmp);
            }
        }
        r
    }

    /// Read, decrypt, decompress and check a chunk.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let path = self.chunk_path(id);
        let blob = match read_limited(&path, (MAX_CHUNK_SIZE + format::OVERHEAD) as u64) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(RepoError::Corrupt {
                    id: *id,
                    why: "file larger than any valid chunk".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::MissingChunk { id: *id })
            }
            Err(e) => {
                return Err(RepoError::Io {
                    what: "cannot read chunk",
                    path,
                    source: e,
                })
            }
        };
        let plain = format::open(
            &self.inner.keys.cipher,
            CHUNK_MAGIC,
            id.as_bytes(),
            blob,
            MAX_CHUNK_SIZE,
        )
        .map_err(|why| RepoError::Corrupt { id: *id, why })?;
        // Authentication already binds the file to `id`; the hash check also
        // catches a chunk written under a wrong id by a buggy writer.
        if self.chunk_id(&plain) != *id {
            return Err(RepoError::Corrupt {
                id: *id,
                why: "content does not hash to its id".into(),
            });
        }
        Ok(plain)
    }

    /// Store an image's manifest (opaque bytes) under `name`, replacing any
    /// previous one. The chunk directories are fsync'd first, so after a crash
    /// a manifest never refers to chunks that did not reach the disk.
    pub fn put_manifest(&self, name: &str, data: &[u8]) -> Result<()> {
        validate_image_name(name)?;
        if data.len() > MAX_MANIFEST_SIZE {
            return Err(RepoError::TooLarge {
                what: "manifest",
                len: data.len(),
                max: MAX_MANIFEST_SIZE,
            });
        }
        // Chunks durable and renamed, then the renames themselves durable,
        // before the manifest that refers to them exists.
        self.flush()?;
        syncfs(&self.inner.dir)?;
        let mut z = new_compressor()?;
        let blob = format::seal(
            &self.inner.keys.cipher,
            MANIFEST_MAGIC,
            &manifest_context(name),
            data,
            &mut z,
        )?;
        let images = self.inner.dir.join(IMAGES);
        write_atomic(&images, name, &blob)?;
        sync_dir(&images)
    }

    pub fn get_manifest(&self, name: &str) -> Result<Vec<u8>> {
        validate_image_name(name)?;
        let path = self.inner.dir.join(IMAGES).join(name);
        let blob = match read_limited(&path, (MAX_MANIFEST_SIZE + format::OVERHEAD) as u64) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(RepoError::CorruptManifest {
                    name: name.into(),
                    why: "file too large".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RepoError::NoSuchImage { name: name.into() })
            }
            Err(e) => {
                return Err(RepoError::Io {
                    what: "cannot read image",
                    path,
                    source: e,
                })
            }
        };
        format::open(
            &self.inner.keys.cipher,
            MANIFEST_MAGIC,
            &manifest_context(name),
            blob,
            MAX_MANIFEST_SIZE,
        )
        .map_err(|why| RepoError::CorruptManifest {
            name: name.into(),
            why,
        })
    }

    /// Names of the stored images, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let dir = self.inner.dir.join(IMAGES);
        let mut names = Vec::new();
        for e in fs::read_dir(&dir).map_err(RepoError::io("cannot list", &dir))? {
            let e = e.map_err(RepoError::io("cannot list", &dir))?;
            if let Some(n) = e.file_name().to_str() {
                if validate_image_name(n).is_ok() {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Check the given chunks (typically one image's chunk list; duplicates are
    /// checked once) on `threads` threads.
    pub fn verify_chunks(&self, ids: &[ChunkId], threads: usize) -> VerifyReport {
        let mut uniq: Vec<ChunkId> = ids.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        self.verify_parallel(uniq.len(), threads, |i, rep| {
            rep.checked += 1;
            match self.get_chunk(&uniq[i]) {
                Ok(d) => rep.bytes += d.len() as u64,
                Err(e) => rep.errors.push(e),
            }
        })
    }

    /// Read and check every file in the chunk store: each must decrypt,
    /// decompress and hash back to its file name. Files that are not chunks
    /// (other than leftover temporaries) are reported as stray.
    pub fn verify_all_chunk_files(&self, threads: usize) -> VerifyReport {
        let chunks = self.inner.dir.join(CHUNKS);
        self.verify_parallel(256, threads, |i, rep| {
            let prefix = format!("{i:02x}");
            let d = chunks.join(&prefix);
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) => {
                    return rep.errors.push(RepoError::Io {
                        what: "cannot list",
                        path: d,
                        source: e,
                    })
                }
            };
            for e in rd {
                let e = match e {
                    Ok(e) => e,
                    Err(e) => {
                        return rep.errors.push(RepoError::Io {
                            what: "cannot list",
                            path: d,
                            source: e,
                        })
                    }
                };
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(TMP_PREFIX) {
                    rep.temp_files += 1;
                    continue;
                }
                match ChunkId::from_hex(&name) {
                    Some(id) if name.starts_with(&prefix) => {
                        rep.checked += 1;
                        match self.get_chunk(&id) {
                            Ok(data) => rep.bytes += data.len() as u64,
                            Err(err) => rep.errors.push(err),
                        }
                    }
                    _ => rep.errors.push(RepoError::StrayFile { path: e.path() }),
                }
            }
        })
    }

    fn verify_parallel(
        &self,
        n: usize,
        threads: usize,
        work: impl Fn(usize, &mut VerifyReport) + Sync,
    ) -> VerifyReport {
        let next = AtomicUsize::new(0);
        let reports: Vec<VerifyReport> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    s.spawn(|| {
                        let mut rep = VerifyReport::default();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break rep;
                            }
                            work(i, &mut rep);
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("verify thread panicked"))
                .collect()
        });
        let mut total = VerifyReport::default();
        for r in reports {
            total.checked += r.checked;
            total.bytes += r.bytes;
            total.temp_files += r.temp_files;
            total.errors.extend(r.errors);
        }
        total
    }
}

/// Image names become file names: only `A-Z a-z 0-9 . _ - + = , : @`, 1–200
/// bytes, not starting with `.` (reserved for temporaries) and never `..`.
/// So no `/`, no path escape, nothing a shell or a network share mangles.
pub fn validate_image_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(RepoError::BadName {
            name: name.into(),
            why,
        })
    };
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1 to 200 bytes long");
    }
    if name.starts_with('.') || name.contains("..") {
        return bad("must not start with '.' or contain '..'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+=,:@".contains(&b))
    {
        return bad("only letters, digits and . _ - + = , : @ are allowed (no '/')");
    }
    Ok(())
}

fn manifest_context(name: &str) -> Vec<u8> {
    let mut c = b"image:".to_vec();
    c.extend_from_slice(name.as_bytes());
    c
}

fn wrap_aad(id: &[u8; 16]) -> Vec<u8> {
    let mut a = WRAP_AAD.to_vec();
    a.extend_from_slice(id);
    a
}

pub(crate) fn new_compressor() -> Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(format::ZSTD_LEVEL)
        .map_err(|e| RepoError::Pipeline(format!("zstd: {e}")))
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

/// Write `dir/name` atomically: temporary file in the same directory, fsync,
/// rename over the final name. Readers see the old file or the new one, never
/// a partial one, even across a crash.
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let rnd: [u8; 8] = random_bytes()?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", hex(&rnd)));
    let res = (|| {
        let mut f = File::create(&tmp).map_err(RepoError::io("cannot create", &tmp))?;
        f.write_all(data)
            .map_err(RepoError::io("cannot write", &tmp))?;
        f.sync_all().map_err(RepoError::io("cannot fsync", &tmp))?;
        let dst = dir.join(name);
        fs::rename(&tmp, &dst).map_err(RepoError::io("cannot rename into", &dst))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Write `data` to a new temporary file in `dir` (no fsync: see [`Repo::flush`]).
fn write_temp(dir: &Path, data: &[u8]) -> Result<PathBuf> {
    let rnd: [u8; 8] = random_bytes()?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", hex(&rnd)));
    let r = File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .map_err(RepoError::io("cannot write", &tmp));
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map(|()| tmp)
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
