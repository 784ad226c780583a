//! The repository: config and keys, chunk store, manifests, verification.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::format::{self, hex, random_bytes, unhex, ChunkId, MANIFEST_MAGIC};
use crate::index::{Group, GroupCache, Index};
use crate::pack::{self, PackId};
use crate::packer::{open_index, PackWriter};
use crate::store::{DirStore, Store};
use crate::{RepoError, Result, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};

/// 2: packs (`packs/`). 1 was one file per chunk (`chunks/`), not read any
/// more.
const CONFIG_FORMAT: u32 = 2;
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
        KdfParams { memory_kib: 128 * 1024, iterations: 6, parallelism: 1 }
    }
}

impl KdfParams {
    /// Very cheap parameters for tests only: they make password guessing fast.
    pub fn insecure_for_tests() -> Self {
        KdfParams { memory_kib: 64, iterations: 1, parallelism: 1 }
    }

    fn check(&self) -> std::result::Result<(), String> {
        // Bounds on what a config file may ask for: a damaged or hostile config
        // must not make `open` allocate 1 TiB or spin for an hour.
        if !(8..=4 * 1024 * 1024).contains(&self.memory_kib) {
            return Err(format!("Argon2 memory {} KiB out of range", self.memory_kib));
        }
        if !(1..=64).contains(&self.iterations) || !(1..=64).contains(&self.parallelism) {
            return Err("Argon2 iterations/parallelism out of range".into());
        }
        Ok(())
    }

    fn derive(&self, password: &[u8], salt: &[u8]) -> std::result::Result<[u8; 32], String> {
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| e.to_string())?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        a.hash_password_into(password, salt, &mut key).map_err(|e| e.to_string())?;
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
    /// Which pack holds each chunk; built from the packs' indexes on first
    /// use (see [`crate::index`]), then kept up to date by this process's
    /// writes.
    index: RwLock<Option<Index>>,
    /// New chunks claimed by a writer whose pack is not committed yet, so two
    /// workers given the same new data (e.g. the same block in two places)
    /// store it once and count it once.
    in_flight: Mutex<HashSet<ChunkId>>,
    cache: GroupCache,
}

/// What `put_chunk` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    pub id: ChunkId,
    /// `false` if the chunk was already stored (deduplicated).
    pub new: bool,
    /// Bytes written to the store (0 when deduplicated).
    pub stored: u64,
}

/// Result of a verification run. Verification does not stop at the first
/// problem: it reports all of them.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Chunks checked (including failed ones).
    pub checked: u64,
    /// Groups read (each read and decompressed once, whatever number of its
    /// chunks was checked).
    pub groups: u64,
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

/// What [`Repo::prune_packs`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub packs_deleted: u64,
    pub packs_kept: u64,
    /// Chunks in the deleted packs.
    pub chunks_deleted: u64,
    /// Chunks some image uses.
    pub chunks_used: u64,
    /// Chunks no image uses, kept because their pack also holds used ones
    /// (packs are not rewritten: see [`Repo::prune_packs`]).
    pub chunks_unused_kept: u64,
    /// Bytes of the deleted packs.
    pub bytes_freed: u64,
    /// Packs whose index cannot be read: kept, since they might hold used
    /// chunks; `verify --all-chunks` reports them.
    pub packs_unreadable: u64,
}

/// One group to check and the chunks to check in it.
struct GroupCheck {
    group: Group,
    chunks: Vec<(ChunkId, u32, u32)>,
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
        kdf.check().map_err(|why| RepoError::BadConfig { path: config_name(), why })?;
        let id: [u8; 16] = random_bytes()?;
        let salt: [u8; 16] = random_bytes()?;
        let data_key: [u8; 32] = random_bytes()?;
        let id_key: [u8; 32] = random_bytes()?;
        let wrap_key = kdf.derive(password, &salt).map_err(|why| RepoError::BadConfig { path: config_name(), why })?;
        let nonce: [u8; 24] = random_bytes()?;
        let mut master = [0u8; 64];
        master[..32].copy_from_slice(&data_key);
        master[32..].copy_from_slice(&id_key);
        let aad = wrap_aad(&id);
        let sealed = format::cipher(&wrap_key)
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &master, aad: &aad })
            .map_err(|_| RepoError::Pipeline("key wrapping failed".into()))?;
        let cfg = ConfigFile {
            format: CONFIG_FORMAT,
            repo_id: hex(&id),
            kdf: KdfConfig { algorithm: "argon2id".into(), params: kdf, salt: hex(&salt) },
            keys: WrappedKeys { cipher: "xchacha20poly1305".into(), nonce: hex(&nonce), sealed: hex(&sealed) },
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
            return Err(RepoError::NotARepo { repo: store.location() });
        };
        let bad = |why: String| RepoError::BadConfig { path: path.clone(), why };
        let cfg: ConfigFile = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if cfg.format == 1 {
            return Err(bad("repository format 1 (one file per chunk) is no longer supported; \
                 create a new repository with `init`"
                .into()));
        }
        if cfg.format != CONFIG_FORMAT {
            return Err(bad(format!(
                "unsupported repository format {} (this version reads format {CONFIG_FORMAT})",
                cfg.format
            )));
        }
        if cfg.kdf.algorithm != "argon2id" || cfg.keys.cipher != "xchacha20poly1305" {
            return Err(bad("unsupported KDF or cipher".into()));
        }
        cfg.kdf.params.check().map_err(bad)?;
        let field = |name: &str, s: &str, len: usize| {
            unhex(s).filter(|v| len == 0 || v.len() == len).ok_or_else(|| bad(format!("bad {name}")))
        };
        let id: [u8; 16] = field("repo_id", &cfg.repo_id, 16)?.try_into().unwrap();
        let salt = field("salt", &cfg.kdf.salt, 16)?;
        let nonce = field("nonce", &cfg.keys.nonce, 24)?;
        let sealed = field("sealed keys", &cfg.keys.sealed, 64 + 16)?;
        let wrap_key = cfg.kdf.params.derive(password, &salt).map_err(bad)?;
        let aad = wrap_aad(&id);
        let master = format::cipher(&wrap_key)
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: &aad })
            .map_err(|_| RepoError::WrongPassword { repo: store.location() })?;
        let data_key: [u8; 32] = master[..32].try_into().unwrap();
        let id_key: [u8; 32] = master[32..].try_into().unwrap();
        Ok(Repo::from_keys(store, id, &data_key, id_key))
    }

    fn from_keys(store: Arc<dyn Store>, id: [u8; 16], data_key: &[u8; 32], id_key: [u8; 32]) -> Repo {
        Repo {
            inner: Arc::new(Inner {
                store,
                id,
                keys: Keys { cipher: format::cipher(data_key), id_key },
                index: RwLock::new(None),
                in_flight: Mutex::new(HashSet::new()),
                cache: GroupCache::new(),
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
            || self.with_index(|ix| ix.chunks.contains_key(id)).unwrap_or(false)
    }

    /// Run `f` on the index, building it from the packs on first use.
    fn with_index<R>(&self, f: impl FnOnce(&Index) -> R) -> Result<R> {
        if let Some(ix) = self.inner.index.read().unwrap().as_ref() {
            return Ok(f(ix));
        }
        let mut w = self.inner.index.write().unwrap();
        if w.is_none() {
            let listing = self.inner.store.list_packs()?;
            let mut ix = Index::default();
            // Unusable packs are left out: their chunks count as absent (a
            // backup stores them again) and verification reports them.
            for p in &listing.packs {
                if let Ok(pi) = open_index(&self.inner.keys.cipher, p) {
                    ix.add(p.id, &pi);
                }
            }
            *w = Some(ix);
        }
        Ok(f(w.as_ref().unwrap()))
    }

    /// Forget the index (after packs were deleted); the next use rebuilds it.
    fn reset_index(&self) {
        *self.inner.index.write().unwrap() = None;
        self.inner.cache.clear();
    }

    /// `true` if `id` is neither stored nor being stored: the caller then
    /// owns writing it (and must [`Repo::commit_pack`] or [`Repo::release`]).
    fn claim(&self, id: ChunkId) -> Result<bool> {
        // Checked under the in-flight lock: a committing writer adds to the
        // index before it leaves the in-flight set, so no chunk is missed
        // between the two.
        let mut busy = self.inner.in_flight.lock().unwrap();
        if busy.contains(&id) || self.with_index(|ix| ix.chunks.contains_key(&id))? {
            return Ok(false);
        }
        busy.insert(id);
        Ok(true)
    }

    fn release<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut busy = self.inner.in_flight.lock().unwrap();
        for id in ids {
            busy.remove(id);
        }
    }

    /// Store one chunk unless it is already there; durable when this returns
    /// (in a pack of its own). For many chunks use a [`crate::ChunkWriter`],
    /// which groups them and fills packs on several threads.
    pub fn put_chunk(&self, data: &[u8]) -> Result<PutOutcome> {
        let mut z = new_compressor()?;
        let mut pack = None;
        let (ids, stored) = self.store_batch(data, &[data.len()], &mut pack, &mut z)?;
        if let Some(p) = pack {
            self.commit_pack(p)?;
        }
        Ok(PutOutcome { id: ids[0].0, new: ids[0].1, stored })
    }

    /// Hash the chunks of `data` (consecutive, of lengths `lens`), and add
    /// those not stored yet as one group to `pack` (opened if needed,
    /// committed when full). Returns each chunk's id and whether it was new,
    /// and the bytes added to the pack.
    pub(crate) fn store_batch(
        &self,
        data: &[u8],
        lens: &[usize],
        pack: &mut Option<PackWriter>,
        zstd: &mut zstd::bulk::Compressor<'static>,
    ) -> Result<(Vec<(ChunkId, bool)>, u64)> {
        let mut out = Vec::with_capacity(lens.len());
        let mut new: Vec<(ChunkId, &[u8])> = Vec::new();
        let r = (|| {
            let mut at = 0;
            for &len in lens {
                let chunk = &data[at..at + len];
                at += len;
                if len > MAX_CHUNK_SIZE {
                    return Err(RepoError::TooLarge { what: "chunk", len, max: MAX_CHUNK_SIZE });
                }
                let id = self.chunk_id(chunk);
                let fresh = self.claim(id)?;
                out.push((id, fresh));
                if fresh {
                    new.push((id, chunk));
                }
            }
            if new.is_empty() {
                return Ok(0);
            }
            // All new (a first backup): the batch is the group as it is.
            let joined;
            let plain = if new.len() == lens.len() {
                &data[..at]
            } else {
                joined = new.iter().flat_map(|c| c.1).copied().collect::<Vec<u8>>();
                &joined[..]
            };
            if pack.is_none() {
                *pack = Some(PackWriter::new(&*self.inner.store)?);
            }
            let p = pack.as_mut().unwrap();
            let chunks: Vec<(ChunkId, usize)> = new.iter().map(|c| (c.0, c.1.len())).collect();
            let stored = p.add_group(&self.inner.keys.cipher, &chunks, plain, zstd)?;
            if p.full() {
                self.commit_pack(pack.take().unwrap())?;
            }
            Ok(stored)
        })();
        match r {
            Ok(stored) => Ok((out, stored)),
            Err(e) => {
                // Nothing of this batch or of the open pack will be stored.
                self.release(new.iter().map(|c| &c.0));
                if let Some(p) = pack.take() {
                    self.release(p.chunk_ids());
                }
                Err(e)
            }
        }
    }

    /// Close and commit a pack; its chunks are then in the index.
    pub(crate) fn commit_pack(&self, p: PackWriter) -> Result<()> {
        let ids: Vec<ChunkId> = p.chunk_ids().copied().collect();
        let r = p.finish(&self.inner.keys.cipher);
        if let Ok((id, ix)) = &r {
            // The index was built when the chunks were claimed; were it not,
            // building it would list this pack.
            if let Some(index) = self.inner.index.write().unwrap().as_mut() {
                index.add(*id, ix);
            }
        }
        self.release(&ids);
        r.map(|_| ())
    }

    /// Read, decrypt, decompress and check a chunk. The last few groups read
    /// stay decompressed, so reading the chunks of a group one after the
    /// other decompresses it once.
    pub fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (group, loc) = self.with_index(|ix| ix.locate(id))?.ok_or(RepoError::MissingChunk { id: *id })?;
        let plain = self.inner.cache.get(&group, || self.load_group(&group)).map_err(|why| RepoError::Corrupt {
            id: *id,
            why: format!("{why} (pack {}, group at byte {})", group.pack, group.entry.offset),
        })?;
        let data = &plain[loc.offset as usize..(loc.offset + loc.len) as usize];
        // Authentication already binds the group to its place; the hash check
        // also catches a chunk indexed under a wrong id by a buggy writer.
        if self.chunk_id(data) != *id {
            return Err(RepoError::Corrupt { id: *id, why: "content does not hash to its id".into() });
        }
        Ok(data.to_vec())
    }

    fn load_group(&self, g: &Group) -> std::result::Result<Vec<u8>, String> {
        let blob = self.inner.store.read_pack(&g.pack, g.entry.offset, g.entry.stored).map_err(|e| e.to_string())?;
        pack::open_group(&self.inner.keys.cipher, &g.pack, &g.entry, &blob)
    }

    /// Store an image's manifest (opaque bytes) under `name`, replacing any
    /// previous one. Packs are durable once committed (before their chunks
    /// are reported stored), so after a crash a manifest never refers to
    /// chunks that did not reach the disk.
    pub fn put_manifest(&self, name: &str, data: &[u8]) -> Result<()> {
        validate_image_name(name)?;
        if data.len() > MAX_MANIFEST_SIZE {
            return Err(RepoError::TooLarge { what: "manifest", len: data.len(), max: MAX_MANIFEST_SIZE });
        }
        let mut z = new_compressor()?;
        let blob = format::seal(&self.inner.keys.cipher, MANIFEST_MAGIC, &manifest_context(name), data, &mut z)?;
        self.inner.store.put_manifest(name, &blob)
    }

    pub fn get_manifest(&self, name: &str) -> Result<Vec<u8>> {
        validate_image_name(name)?;
        let blob = self
            .inner
            .store
            .get_manifest(name, MAX_MANIFEST_SIZE + format::OVERHEAD)?
            .ok_or_else(|| RepoError::NoSuchImage { name: name.into() })?;
        format::open(&self.inner.keys.cipher, MANIFEST_MAGIC, &manifest_context(name), blob, MAX_MANIFEST_SIZE)
            .map_err(|why| RepoError::CorruptManifest { name: name.into(), why })
    }

    /// Names of the stored images, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> =
            self.inner.store.list_manifests()?.into_iter().filter(|n| validate_image_name(n).is_ok()).collect();
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

    /// Every chunk id stored in a readable pack, listed afresh.
    pub fn chunk_ids(&self) -> Result<Vec<ChunkId>> {
        let listing = self.inner.store.list_packs()?;
        Ok(listing
            .packs
            .iter()
            .filter_map(|p| open_index(&self.inner.keys.cipher, p).ok())
            .flat_map(|ix| ix.chunks.into_iter().map(|c| c.id))
            .collect())
    }

    /// The packs in the store (readable or not).
    pub fn pack_ids(&self) -> Result<Vec<PackId>> {
        Ok(self.inner.store.list_packs()?.packs.iter().map(|p| p.id).collect())
    }

    /// Delete every pack none of whose chunks is in `used` (the chunks of
    /// every image left). A pack holding at least one used chunk is kept
    /// whole: packs are not rewritten ("repacked") to drop their unused
    /// chunks, so some dead data stays until every chunk of its pack is dead
    /// (counted in [`PruneStats::chunks_unused_kept`]). A backup of the same
    /// disk reuses most of a pack's cells, so this is usually little. Hold
    /// the exclusive lock while calling this.
    pub fn prune_packs(&self, used: &HashSet<ChunkId>) -> Result<PruneStats> {
        let listing = self.inner.store.list_packs()?;
        let mut st = PruneStats::default();
        let r = (|| {
            for p in &listing.packs {
                let Ok(ix) = open_index(&self.inner.keys.cipher, p) else {
                    st.packs_unreadable += 1;
                    continue;
                };
                let n = ix.chunks.len() as u64;
                let in_use = ix.chunks.iter().filter(|c| used.contains(&c.id)).count() as u64;
                if in_use == 0 {
                    self.inner.store.delete_pack(&p.id)?;
                    st.packs_deleted += 1;
                    st.chunks_deleted += n;
                    st.bytes_freed += p.size;
                } else {
                    st.packs_kept += 1;
                    st.chunks_used += in_use;
                    st.chunks_unused_kept += n - in_use;
                }
            }
            Ok(())
        })();
        self.reset_index();
        r.map(|()| st)
    }

    /// See [`Store::lock`].
    pub fn lock(&self, exclusive: bool) -> Result<Option<crate::StoreLock>> {
        self.inner.store.lock(exclusive)
    }

    /// Check the given chunks (typically one image's chunk list; duplicates are
    /// checked once) on `threads` threads: each group holding one of them is
    /// read, decrypted and decompressed once, and each wanted chunk in it
    /// hashed.
    pub fn verify_chunks(&self, ids: &[ChunkId], threads: usize) -> VerifyReport {
        let mut uniq: Vec<ChunkId> = ids.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        let mut missing = Vec::new();
        let plan = self.with_index(|ix| {
            let mut by_group: BTreeMap<u32, Vec<(ChunkId, u32, u32)>> = BTreeMap::new();
            for id in &uniq {
                match ix.chunks.get(id) {
                    Some(l) => by_group.entry(l.group).or_default().push((*id, l.offset, l.len)),
                    None => missing.push(RepoError::MissingChunk { id: *id }),
                }
            }
            by_group
                .into_iter()
                .map(|(g, chunks)| GroupCheck { group: ix.groups[g as usize], chunks })
                .collect::<Vec<_>>()
        });
        let plan = match plan {
            Ok(p) => p,
            Err(e) => return VerifyReport { errors: vec![e], ..Default::default() },
        };
        let mut rep = self.verify_plan(&plan, threads);
        rep.checked += missing.len() as u64;
        rep.errors.extend(missing);
        rep
    }

    /// Read and check every pack in the store: its index must decrypt, and
    /// every chunk of every group decrypt, decompress and hash back to its
    /// id. Packs whose index cannot be read (torn, damaged, renamed) and
    /// names that are not packs (other than leftover temporaries) are
    /// reported.
    pub fn verify_all_packs(&self, threads: usize) -> VerifyReport {
        let listing = match self.inner.store.list_packs() {
            Ok(l) => l,
            Err(e) => return VerifyReport { errors: vec![e], ..Default::default() },
        };
        let mut plan = Vec::new();
        let mut errors = Vec::new();
        for p in &listing.packs {
            match open_index(&self.inner.keys.cipher, p) {
                Ok(ix) => {
                    let mut checks: Vec<GroupCheck> = ix
                        .groups
                        .iter()
                        .map(|&entry| GroupCheck { group: Group { pack: p.id, entry }, chunks: vec![] })
                        .collect();
                    for c in &ix.chunks {
                        checks[c.group as usize].chunks.push((c.id, c.offset, c.len));
                    }
                    plan.extend(checks);
                }
                Err(why) => errors.push(RepoError::CorruptPack { pack: p.id, why }),
            }
        }
        let mut rep = self.verify_plan(&plan, threads);
        rep.temp_files = listing.temp_files;
        rep.errors.extend(errors);
        rep.errors.extend(listing.stray.into_iter().map(|path| RepoError::StrayFile { path }));
        rep
    }

    fn verify_plan(&self, plan: &[GroupCheck], threads: usize) -> VerifyReport {
        self.verify_parallel(plan.len(), threads, |i, rep| {
            let GroupCheck { group, chunks } = &plan[i];
            rep.groups += 1;
            rep.checked += chunks.len() as u64;
            let plain = match self.load_group(group) {
                Ok(p) => p,
                Err(why) => {
                    // One error per group: its chunks all fail for one reason.
                    let first = chunks.first().map_or(ChunkId([0; 32]), |c| c.0);
                    rep.errors.push(RepoError::Corrupt {
                        id: first,
                        why: format!(
                            "{why} (pack {}, group at byte {} holding {} of the chunks checked)",
                            group.pack,
                            group.entry.offset,
                            chunks.len()
                        ),
                    });
                    return;
                }
            };
            for &(id, off, len) in chunks {
                let data = &plain[off as usize..(off + len) as usize];
                if self.chunk_id(data) == id {
                    rep.bytes += len as u64;
                } else {
                    rep.errors.push(RepoError::Corrupt { id, why: "content does not hash to its id".into() });
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
            hs.into_iter().map(|h| h.join().expect("verify thread panicked")).collect()
        });
        let mut total = VerifyReport::default();
        for r in reports {
            total.checked += r.checked;
            total.groups += r.groups;
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
    let bad = |why| Err(RepoError::BadName { name: name.into(), why });
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1 to 200 bytes long");
    }
    if name.starts_with('.') || name.contains("..") {
        return bad("must not start with '.' or contain '..'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+=,:@".contains(&b)) {
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
    let mut z =
        zstd::bulk::Compressor::new(format::ZSTD_LEVEL).map_err(|e| RepoError::Pipeline(format!("zstd: {e}")))?;
    // Level 3 looks back 2 MiB; a window as large as a group lets a match
    // reach anywhere in it (decompression needs no more memory than the
    // group it produces anyway).
    z.set_parameter(zstd::zstd_safe::CParameter::WindowLog(pack::GROUP_WINDOW_LOG))
        .map_err(|e| RepoError::Pipeline(format!("zstd: {e}")))?;
    Ok(z)
}
