//! Lifeline's image repository: a content-addressed store of compressed,
//! encrypted chunks, kept in pack files, plus one encrypted manifest per image.
//!
//! This is step 3 ("Storage") of the offline path in `DESIGN.md`. Chunks are
//! addressed like Proxmox Backup Server's (fixed-size cells on the disk's
//! address grid, shared by every image that writes to the repository) and
//! stored like restic's and borg's (many chunks per pack file). The imaging
//! crate cuts a disk into cells and records the layout, used-block maps and
//! the chunk list in the manifest; this crate does not look inside manifests.
//!
//! ```text
//! DIR/config           JSON: format (2), repo id, Argon2id parameters and salt, wrapped keys
//! DIR/packs/<32 hex>   a pack: groups of chunks, then its encrypted index (see `pack`)
//! DIR/images/<name>    one manifest (opaque to this crate), encrypted
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
//! assert!(repo.verify_all_packs(2).ok());
//! # Ok::<(), lifeline_repo::RepoError>(())
//! ```
//!
//! # Why this shape
//!
//! * **Dedup by content.** A chunk's id is a keyed BLAKE3 hash of its plaintext,
//!   so the same bytes always get the same id, whichever image or machine
//!   wrote them; a second backup of the same disk only stores chunks that
//!   changed (one changed 64 KiB cell costs that cell). The hash is *keyed*
//!   (with a random key kept inside the encrypted config) so that ids reveal
//!   nothing to someone who can read the repository but does not know the
//!   password: without the key they cannot test whether a known file or disk
//!   block is stored.
//! * **Packs, not a file per chunk.** A file per 64 KiB chunk cost an open,
//!   write, rename, close and stat each (~9,500 of each per 600 MiB backed
//!   up) and compressed each cell alone, without zstd's window over its
//!   neighbours (2–6 % larger than `partclone | zstd`). Now the new chunks
//!   among 8 MiB of consecutive cells are compressed together as one zstd
//!   frame (a *group*), and groups are appended to 32 MiB packs written
//!   sequentially with one fsync each. Dedup stays per chunk: the pack's
//!   index names every chunk and where it is inside its group.
//! * **Compress, then encrypt.** Encrypted data does not compress. Groups are
//!   zstd-compressed (level 3, the level Clonezilla users pipe partclone into)
//!   and stored raw when compression does not help (random or already
//!   compressed data), so incompressible data costs no decompression on
//!   restore.
//! * **Authenticated encryption, bound to the place.** XChaCha20-Poly1305 with
//!   a random 24-byte nonce per group, index and manifest: the extended nonce
//!   makes random nonces safe for any number of them (no counter to keep
//!   consistent across machines sharing a repository), and it is fast in
//!   software on CPUs without AES-NI (boot OS on old hardware). A group's
//!   associated data is its pack id, offset, length and flags; an index's is
//!   its pack id and offset; a manifest's is its name. So a group moved or
//!   swapped, a pack renamed, a manifest copied under another name, fails
//!   authentication instead of returning the wrong data. After decryption
//!   every chunk's keyed hash is checked again, so a chunk can never be
//!   returned under an id it does not match.
//! * **An index built from the packs.** Each pack ends with the index of its
//!   own chunks; opening a repository for chunks reads every pack's index
//!   (one small read per pack) into a map in memory. There is no separate
//!   index file that could disagree with the packs or be lost.
//! * **Password → key only wraps keys.** The password goes through Argon2id
//!   (memory-hard, the current recommendation for password hashing) to a key
//!   that only decrypts the random master keys in `config`. Opening with a wrong
//!   password fails authentication of that small blob before any pack or
//!   manifest is touched — this is the "check data that proves the password" —
//!   and a password change (not yet offered) would only rewrite `config`.
//! * **Crash safety.** A pack is written under a temporary name, fsync'd and
//!   linked to its final name (never replacing one), and its chunks count as
//!   stored only then; a manifest is written (atomically, after fsync) only
//!   after the packs it refers to. So a manifest never outlives its chunks
//!   across a power cut. Leftover `.tmp-*` files of an interrupted run are
//!   harmless and ignored; a pack damaged or torn anyway is left out of the
//!   index (its chunks are stored again by the next backup) and reported by
//!   verification.
//! * **Prune deletes whole packs.** A pack is deleted once no image uses any
//!   chunk in it; partly used packs are kept whole (no repacking yet).

mod error;
mod format;
mod index;
pub mod pack;
mod packer;
mod repo;
mod store;
mod writer;

pub use error::RepoError;
pub use format::{ChunkId, MAX_CHUNK_SIZE, MAX_MANIFEST_SIZE};
pub use pack::PackId;

/// Largest manifest blob.
pub const MAX_MANIFEST_BLOB_SIZE: usize = MAX_MANIFEST_SIZE + format::OVERHEAD;
pub use repo::{validate_image_name, KdfParams, PruneStats, PutOutcome, Repo, VerifyReport};
pub use store::{DirPackSink, DirStore, PackEntry, PackListing, PackSink, Store, StoreLock};
pub use writer::{ChunkRef, ChunkWriter, WriteStats, WriterOptions};

/// Result type of this crate.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;
