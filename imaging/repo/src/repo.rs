//! The repository: config and keys, chunk store, manifests, verification.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::format::{self, hex, random_bytes, unhex, ChunkId, CHUNK_MAGIC, MANIFEST_MAGIC};
use crate::store::{DirStore, Store};
use crate::{RepoError, Result, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};

const CONFIG_FORMAT: u32 = 1;
const WRAP_AAD: &[u8] = b"lifeline-repo keys v1";

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
    store: Arc<dyn Store>,
    id: [u8; 16],
    keys: Keys,
    /// Chunks written by this process since the last [`Repo::flush`] (or
    /// being written right now), so two workers given the same new data (e.g.
    /// the first all-zero chunk) write it once and count it once, even while
    /// the store has not made it visible yet.
    in_flight: Mutex<HashSet<ChunkId>>,
    /// Those of `in_flight` handed to the store; [`Repo::flush`] forgets
    /// them once the store has made them visible.
    unflushed: Mutex<Vec<ChunkId>>,
}

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
        Self::init_in(Arc::new(DirStore::new(dir.as_ref())), password, kdf)
    }

    /// Create a repository in any [`Store`] (a directory, the receiver).
    pub fn init_in(store: Arc<dyn Store>, password: &[u8], kdf: KdfParams) -> Result<Repo> {
        let config_name = || PathBuf::from(format!("{}/config", store.location()));
        kdf.check().map_err(|why| RepoError::BadConfig {
            path: config_name(),
            why,
        })?;
        let id: [u8; 16] = random_bytes()?;
        let salt: [u8; 16] = random_bytes()?;
        let data_key: [u8; 32] = random_bytes()?;
        let id_key: [u8; 32] = random_bytes()?;
        let wrap_key = kdf
            .derive(password, &salt)
            .map_err(|why| RepoError::BadConfig {
                path: config_name(),
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
        let mut json = serde_json::to_vec_pretty(&cfg).expect("config serialises");
        json.push(b'\n');
        store.create_config(&json)?;
        Ok(Repo::from_keys(store, id, &data_key, id_key))
    }

    /// Open an existing repository. Only `config` is read; a wrong password is
    /// refused with [`RepoError::WrongPassword`] before anything else happens.
    pub fn open(dir: impl AsRef<Path>, password: &[u8]) -> Result<Repo> {
        Self::open_in(Arc::new(DirStore::new(dir.as_ref())), password)
    }

    /// Open a repository in any [`Store`].
    pub fn open_in(store: Arc<dyn Store>, password: &[u8]) -> Result<Repo> {
        let path = PathBuf::from(format!("{}/config", store.location()));
        let Some(text) = store.load_config()? else {
            return Err(RepoError::NotARepo {
                repo: store.location(),
            });
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
            .map_err(|_| RepoError::WrongPassword {
                repo: store.location(),
            })?;
        let data_key: [u8; 32] = master[..32].try_into().unwrap();
        let id_key: [u8; 32] = master[32..].try_into().unwrap();
        Ok(Repo::from_keys(store, id, &data_key, id_key))
    }

    fn from_keys(
        store: Arc<dyn Store>,
        id: [u8; 16],
        data_key: &[u8; 32],
        id_key: [u8; 32],
    ) -> Repo {
        Repo {
            inner: Arc::new(Inner {
                store,
                id,
                keys: Keys {
                    cipher: format::cipher(data_key),
                    id_key,
                },
                in_flight: Mutex::new(HashSet::new()),
                unflushed: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Where the repository is (a path or a URL), for messages.
    pub fn location(&self) -> String {
        self.inner.store.location()
    }

    /// The repository's random id, hex.
    pub fn id(&self) -> String {
        hex(&self.inner.id)
    }

    /// The id `data` has (or would have) in this repository.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.inner.keys.id_key, data).as_bytes())
    }

    /// Whether the chunk is stored (or being stored by this process).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.inner.in_flight.lock().unwrap().contains(id)
            || self.inner.store.has_chunk(id).unwrap_or(false)
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
        let dup = PutOutcome {
            id,
            new: false,
            stored: 0,
        };
        if !self.inner.in_flight.lock().unwrap().insert(id) {
            return Ok(dup);
        }
        // Across processes or machines sharing a store, two writers of the
        // same chunk both write valid, identical content; the store's rename
        // (or the receiver's create) is atomic.
        let r = (|| {
            if self.inner.store.has_chunk(&id)? {
                return Ok(dup);
            }
            let blob = format::seal(
                &self.inner.keys.cipher,
                CHUNK_MAGIC,
                id.as_bytes(),
                data,
                zstd,
            )?;
            let stored = blob.len() as u64;
            self.inner.store.put_chunk(&id, blob)?;
            self.inner.unflushed.lock().unwrap().push(id);
            Ok(PutOutcome {
                id,
                new: true,
                stored,
            })
        })();
        if !matches!(r, Ok(PutOutcome { new: true, .. })) {
            self.inner.in_flight.lock().unwrap().remove(&id);
        }
        r
    }

    /// Make every chunk written so far durable and visible (the store batches
    /// writes; see [`DirStore`]). [`crate::ChunkWriter::finish`] and
    /// [`Repo::put_manifest`] call this.
    pub fn flush(&self) -> Result<()> {
        // Only chunks already handed to the store are visible after its
        // flush; one another thread is writing right now stays in flight.
        let done = std::mem::take(&mut *self.inner.unflushed.lock().unwrap());
        self.inner.store.flush()?;
        let mut busy = self.inner.in_flight.lock().unwrap();
        for id in &done {
            busy.remove(id);
        }
        Ok(())
    }

    /// Read, decrypt, decompress and check a chunk.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let blob = self
            .inner
            .store
            .get_chunk(id, MAX_CHUNK_SIZE + format::OVERHEAD)?
            .ok_or(RepoError::MissingChunk { id: *id })?;
        let plain = format::open(
            &self.inner.keys.cipher,
            CHUNK_MAGIC,
            id.as_bytes(),
            blob,
            MAX_CHUNK_SIZE,
        )
        .map_err(|why| RepoError::Corrupt { id: *id, why })?;
        // Authentication already binds the blob to `id`; the hash check also
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
    /// previous one. Chunks are made durable first, so after a crash a
    /// manifest never refers to chunks that did not reach the disk.
    pub fn put_manifest(&self, name: &str, data: &[u8]) -> Result<()> {
        validate_image_name(name)?;
        if data.len() > MAX_MANIFEST_SIZE {
            return Err(RepoError::TooLarge {
                what: "manifest",
                len: data.len(),
                max: MAX_MANIFEST_SIZE,
            });
        }
        self.flush()?;
        let mut z = new_compressor()?;
        let blob = format::seal(
            &self.inner.keys.cipher,
            MANIFEST_MAGIC,
            &manifest_context(name),
            data,
            &mut z,
        )?;
        self.inner.store.put_manifest(name, &blob)
    }

    pub fn get_manifest(&self, name: &str) -> Result<Vec<u8>> {
        validate_image_name(name)?;
        let blob = self
            .inner
            .store
            .get_manifest(name, MAX_MANIFEST_SIZE + format::OVERHEAD)?
            .ok_or_else(|| RepoError::NoSuchImage { name: name.into() })?;
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
        let mut names: Vec<String> = self
            .inner
            .store
            .list_manifests()?
            .into_iter()
            .filter(|n| validate_image_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Remove an image (its manifest). Its chunks stay until
    /// a prune finds no image using them.
    pub fn delete_manifest(&self, name: &str) -> Result<()> {
        validate_image_name(name)?;
        if !self.list()?.iter().any(|n| n == name) {
            return Err(RepoError::NoSuchImage { name: name.into() });
        }
        self.inner.store.delete_manifest(name)
    }

    /// Every chunk id stored (for a prune).
    pub fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        Ok(self.inner.store.list_chunks()?.ids)
    }

    /// Remove a chunk no image uses any more.
    pub fn delete_chunk(&self, id: &ChunkId) -> Result<()> {
        self.inner.store.delete_chunk(id)
    }

    /// See [`Store::lock`].
    pub fn lock(&self, exclusive: bool) -> Result<Option<crate::StoreLock>> {
        self.inner.store.lock(exclusive)
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

    /// Read and check every chunk in the store: each must decrypt, decompress
    /// and hash back to its name. Names that are not chunks (other than
    /// leftover temporaries) are reported as stray.
    pub fn verify_all_chunk_files(&self, threads: usize) -> VerifyReport {
        let listing = match self.inner.store.list_chunks() {
            Ok(l) => l,
            Err(e) => {
                return VerifyReport {
                    errors: vec![e],
                    ..Default::default()
                }
            }
        };
        let mut rep = self.verify_chunks(&listing.ids, threads);
        rep.temp_files = listing.temp_files;
        rep.errors.extend(
            listing
                .stray
                .into_iter()
                .map(|path| RepoError::StrayFile { path }),
        );
        rep
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
