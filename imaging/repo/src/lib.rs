//! Lifeline's image repository: a content-addressed store of compressed,
//! encrypted chunks plus one encrypted manifest per image.
//!
//! This is step 3 ("Storage") of the offline path in `DESIGN.md`. The layout is
//! deliberately close to Proxmox Backup Server's: a flat chunk store shared by
//! every image (and every machine) that writes to the repository, and a small
//! per-image index. The imaging crate cuts a disk into fixed-size chunks on the
//! disk's address grid and records the layout, used-block maps and the chunk
//! list in the manifest; this crate does not look inside manifests.
//!
//! ```text
//! DIR/config                 JSON: repo id, Argon2id parameters and salt, wrapped master keys
//! DIR/chunks/<2 hex>/<64 hex> one chunk, named by its keyed id (256 fan-out directories)
//! DIR/images/<name>          one manifest (opaque to this crate), encrypted like a chunk
//! ```
//!
//! # Use
//!
//! ```
//! use lifeline_repo::{ChunkWriter, KdfParams, Repo, WriterOptions};
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("repo");
//! // `Repo::init(dir, pw)` uses the real Argon2id cost; tests use cheap parameters.
//! let repo = Repo::init_with_kdf(&dir, b"secret", KdfParams::insecure_for_tests())?;
//! let mut w = ChunkWriter::new(&repo, WriterOptions::default())?;
//! for (i, block) in [vec![1u8; 4096], vec![0u8; 4096], vec![1u8; 4096]].into_iter().enumerate() {
//!     w.push(i as u64 * 4096, block)?; // blocks while the workers are busy
//! }
//! let (chunks, stats) = w.finish()?; // ids in input order
//! assert_eq!((stats.chunks, stats.new_chunks), (3, 2)); // the repeated block is stored once
//! let manifest: Vec<u8> = chunks.iter().flat_map(|c| c.id.as_bytes().to_vec()).collect();
//! repo.put_manifest("web1:2026-11-22", &manifest)?;
//!
//! let repo = Repo::open(&dir, b"secret")?; // a wrong password fails here
//! assert_eq!(repo.list()?, ["web1:2026-11-22"]);
//! assert_eq!(repo.get_chunk(&chunks[2].id)?, vec![1u8; 4096]);
//! assert!(repo.verify_all_chunk_files(2).ok());
//! # Ok::<(), lifeline_repo::RepoError>(())
//! ```
//!
//! # Why this shape
//!
//! * **Dedup by content.** A chunk's id is a keyed BLAKE3 hash of its plaintext,
//!   so the same bytes always land in the same file, whichever image or machine
//!   wrote them; a second backup of the same disk only writes chunks that
//!   changed. The hash is *keyed* (with a random key kept inside the encrypted
//!   config) so that file names reveal nothing to someone who can list the
//!   repository but does not know the password: without the key they cannot test
//!   whether a known file or disk block is stored.
//! * **Compress, then encrypt.** Encrypted data does not compress. Each chunk is
//!   zstd-compressed (level 3, the same level Clonezilla users pipe partclone
//!   into) and stored raw when compression does not help (random or already
//!   compressed data), so incompressible chunks cost no decompression on restore.
//! * **Authenticated encryption, bound to the name.** XChaCha20-Poly1305 with a
//!   random 24-byte nonce per file: the extended nonce makes random nonces safe
//!   for any number of chunks (no counter to keep consistent across machines
//!   sharing a repository), it is fast in software on CPUs without AES-NI (boot
//!   OS on old hardware), and the chunk id and header are the associated data,
//!   so a file copied or renamed over another id, or a flipped flag, fails
//!   authentication instead of returning the wrong data. After decryption the
//!   keyed hash is checked again, so a chunk can never be returned under an id
//!   it does not match.
//! * **Password → key only wraps keys.** The password goes through Argon2id
//!   (memory-hard, the current recommendation for password hashing) to a key
//!   that only decrypts the random master keys in `config`. Opening with a wrong
//!   password fails authentication of that small blob before any chunk or
//!   manifest is touched — this is the "check data that proves the password" —
//!   and a password change (not yet offered) would only rewrite `config`.
//! * **Crash safety.** Every file is written to a temporary name in its final
//!   directory, fsync'd and renamed, so a file either exists complete or not at
//!   all; a manifest is only written after the chunk directories it references
//!   are fsync'd, so a manifest never outlives its chunks across a power cut.
//!   Leftover `.tmp-*` files from an interrupted run are harmless and ignored.

mod error;
mod format;
mod repo;
mod store;
mod writer;

pub use error::RepoError;
pub use format::{ChunkId, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};

/// Largest chunk blob (a chunk of [`MAX_CHUNK_SIZE`] plus header, nonce, tag).
pub const MAX_BLOB_SIZE: usize = MAX_CHUNK_SIZE + format::OVERHEAD;
/// Largest manifest blob.
pub const MAX_MANIFEST_BLOB_SIZE: usize = MAX_MANIFEST_SIZE + format::OVERHEAD;
pub use repo::{validate_image_name, KdfParams, PutOutcome, Repo, VerifyReport};
pub use store::{ChunkListing, DirStore, Store, StoreLock};
pub use writer::{ChunkRef, ChunkWriter, WriteStats, WriterOptions};

/// Result type of this crate.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;
