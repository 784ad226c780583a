//! Repository tests on real files in a temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use lifeline_repo::{ChunkId, ChunkWriter, KdfParams, Repo, RepoError, WriterOptions};
use rand::{Rng, RngCore, SeedableRng};

const PW: &[u8] = b"correct horse battery staple";

fn new_repo(dir: &Path) -> Repo {
    Repo::init_with_kdf(dir, PW, KdfParams::insecure_for_tests()).unwrap()
}

fn random_chunks(seed: u64, n: usize, size: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut v = vec![0u8; size];
            match i % 3 {
                0 => rng.fill_bytes(&mut v), // incompressible
                1 => {
                    // compressible: a few random bytes repeated
                    let pat: [u8; 16] = rng.random();
                    for (j, b) in v.iter_mut().enumerate() {
                        *b = pat[j % 16] ^ (j / 4096) as u8;
                    }
                }
                _ => {
                    // half zeros, half random, odd length
                    rng.fill_bytes(&mut v[..size / 2]);
                    v.truncate(size - 17);
                }
            }
            v
        })
        .collect()
}

fn write_all(repo: &Repo, chunks: &[Vec<u8>], opts: WriterOptions) -> (Vec<ChunkId>, lifeline_repo::WriteStats) {
    let mut w = ChunkWriter::new(repo, opts).unwrap();
    let mut off = 0u64;
    for c in chunks {
        w.push(off, c.clone()).unwrap();
        off += c.len() as u64;
    }
    let (refs, stats) = w.finish().unwrap();
    let mut off = 0u64;
    for (r, c) in refs.iter().zip(chunks) {
        assert_eq!((r.offset, r.len), (off, c.len() as u64), "results in input order");
        off += c.len() as u64;
    }
    (refs.into_iter().map(|r| r.id).collect(), stats)
}

fn pack_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("packs")).unwrap().map(|f| f.unwrap().path()).collect();
    v.sort();
    v
}

/// Every file under `dir` with its contents and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    let mut m = BTreeMap::new();
    fn walk(p: &Path, root: &Path, m: &mut BTreeMap<String, (Vec<u8>, std::time::SystemTime)>) {
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if md.is_dir() {
                m.insert(rel, (vec![], md.modified().unwrap()));
                walk(&e.path(), root, m);
            } else {
                m.insert(rel, (fs::read(e.path()).unwrap(), md.modified().unwrap()));
            }
        }
    }
    walk(dir, dir, &mut m);
    m
}

#[test]
fn round_trip_through_pipeline() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let chunks = random_chunks(1, 300, 64 * 1024);
    let (ids, stats) = write_all(&repo, &chunks, WriterOptions { threads: 3, queue: 4 });
    assert_eq!(stats.chunks, 300);
    assert_eq!(stats.new_chunks, 300);
    assert_eq!(stats.bytes_in, chunks.iter().map(|c| c.len() as u64).sum::<u64>());
    assert!(stats.bytes_stored < stats.bytes_in, "compressible chunks shrink: {stats:?}");
    // Reopen from disk and read everything back.
    drop(repo);
    let repo = Repo::open(t.path(), PW).unwrap();
    for (id, c) in ids.iter().zip(&chunks) {
        assert_eq!(&repo.get_chunk(id).unwrap(), c);
        assert_eq!(repo.chunk_id(c), *id);
    }
    let rep = repo.verify_chunks(&ids, 2);
    assert!(rep.ok(), "{:?}", rep.errors);
    assert_eq!(rep.checked, 300);
    let rep = repo.verify_all_packs(2);
    assert!(rep.ok(), "{:?}", rep.errors);
    assert_eq!(rep.checked, 300);
    // 300 chunks of 64 KiB: grouped ~16 to a group, 3 workers' packs of ≤ 16 MiB.
    assert!(rep.groups < 40, "{rep:?}");
    let packs = pack_files(t.path());
    assert!((3..=6).contains(&packs.len()), "{packs:?}");
    // Raw files contain no plaintext: the incompressible chunk 0 is not visible.
    for p in packs {
        let f = fs::read(p).unwrap();
        assert!(!f.windows(32).any(|w| w == &chunks[0][1000..1032]));
    }
}

#[test]
fn empty_and_single_chunk() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let (ids, stats) = write_all(&repo, &[], WriterOptions::default());
    assert!(ids.is_empty());
    assert_eq!(stats, Default::default());
    let out = repo.put_chunk(b"").unwrap();
    assert!(out.new);
    assert_eq!(repo.get_chunk(&out.id).unwrap(), b"");
    assert!(!repo.put_chunk(b"").unwrap().new);
}

#[test]
fn dedup_same_data_and_one_percent_change() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let mut chunks = random_chunks(2, 200, 32 * 1024);
    // Identical chunks inside one image are stored once.
    chunks.push(vec![0u8; 32 * 1024]);
    chunks.push(vec![0u8; 32 * 1024]);
    let opts = WriterOptions { threads: 4, queue: 2 };
    let (ids1, s1) = write_all(&repo, &chunks, opts);
    assert_eq!(s1.chunks, 202);
    assert_eq!(s1.new_chunks, 201);
    assert_eq!(repo.chunk_ids().unwrap().len(), 201);
    let files = pack_files(t.path());

    // Same data again: nothing new, no file written.
    let (ids2, s2) = write_all(&repo, &chunks, opts);
    assert_eq!(ids1, ids2);
    assert_eq!((s2.new_chunks, s2.bytes_stored), (0, 0));
    assert_eq!(pack_files(t.path()), files);

    // A second image with 1% of the chunks changed (2 of 200) stores ~1%.
    let mut changed = chunks.clone();
    changed[10][5] ^= 1;
    changed[150][999] ^= 0x80;
    let repo2 = Repo::open(t.path(), PW).unwrap(); // e.g. another machine
    let (ids3, s3) = write_all(&repo2, &changed, opts);
    assert_eq!(s3.new_chunks, 2);
    assert_eq!(s3.bytes_new, 2 * 32 * 1024);
    assert_eq!(repo2.chunk_ids().unwrap().len(), 203);
    assert_eq!(ids3.iter().zip(&ids1).filter(|(a, b)| a != b).count(), 2);
    assert!(repo.verify_all_packs(2).ok());
}

#[test]
fn wrong_password_refused_and_nothing_changes() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let id = repo.put_chunk(b"some data").unwrap().id;
    repo.put_manifest("img1", b"manifest").unwrap();
    drop(repo);
    let before = snapshot(t.path());
    let err = Repo::open(t.path(), b"not the password").err().expect("wrong password must fail");
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("wrong password for repository {}", t.path().display()));
    assert_eq!(snapshot(t.path()), before);
    // The right password still works.
    let repo = Repo::open(t.path(), PW).unwrap();
    assert_eq!(repo.get_chunk(&id).unwrap(), b"some data");
    assert_eq!(repo.get_manifest("img1").unwrap(), b"manifest");
    // Init refuses an existing repository, open refuses a non-repository.
    assert!(matches!(
        Repo::init_with_kdf(t.path(), PW, KdfParams::insecure_for_tests()),
        Err(RepoError::AlreadyExists { .. })
    ));
    let missing = t.path().join("no-such-repo");
    assert!(matches!(Repo::open(&missing, PW), Err(RepoError::NotARepo { .. })));
    assert!(!missing.exists(), "open creates nothing");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(Repo::open(empty.path(), PW), Err(RepoError::NotARepo { .. })));
    fs::write(empty.path().join("x"), b"").unwrap();
    assert!(matches!(
        Repo::init_with_kdf(empty.path(), PW, KdfParams::insecure_for_tests()),
        Err(RepoError::NotEmpty { .. })
    ));
}

#[test]
fn different_repos_have_different_ids_for_same_data() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (ra, rb) = (new_repo(a.path()), new_repo(b.path()));
    assert_ne!(ra.chunk_id(b"x"), rb.chunk_id(b"x"), "ids are keyed per repository");
    assert_ne!(ra.chunk_id(b"x"), ChunkId(*blake3::hash(b"x").as_bytes()));
}

/// Six chunks, each stored by `put_chunk` in a pack of its own: (id, pack file).
fn corrupt_setup() -> (tempfile::TempDir, Repo, Vec<(ChunkId, std::path::PathBuf)>) {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let mut out = Vec::new();
    for c in random_chunks(3, 6, 8192) {
        let before = pack_files(t.path());
        let id = repo.put_chunk(&c).unwrap().id;
        let new: Vec<_> = pack_files(t.path()).into_iter().filter(|p| !before.contains(p)).collect();
        assert_eq!(new.len(), 1);
        out.push((id, new[0].clone()));
    }
    (t, repo, out)
}

/// Where a pack's index starts (from its trailer).
fn index_at(pack: &[u8]) -> usize {
    let n = pack.len();
    let len = u32::from_le_bytes(pack[n - 8..n - 4].try_into().unwrap()) as usize;
    n - 8 - len
}

fn flip(path: &Path, at: impl FnOnce(&[u8]) -> usize) {
    let mut b = fs::read(path).unwrap();
    let i = at(&b);
    b[i] ^= 0x01;
    fs::write(path, b).unwrap();
}

#[test]
fn flipped_byte_in_a_pack_detected_by_get_and_verify() {
    let (t, repo, c) = corrupt_setup();
    // Group nonce, group payload, group tag: the group fails authentication.
    flip(&c[0].1, |_| 8 + 3);
    flip(&c[1].1, |b| (8 + index_at(b)) / 2);
    flip(&c[2].1, |b| index_at(b) - 1);
    for (id, _) in &c[..3] {
        let err = repo.get_chunk(id).unwrap_err();
        assert!(matches!(&err, RepoError::Corrupt { id: i, .. } if i == id), "{err}");
        assert!(err.to_string().contains(&id.to_hex()));
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }
    // Index and trailer: the pack is unusable, its chunk absent.
    flip(&c[3].1, |b| index_at(b) + 30);
    flip(&c[4].1, |b| b.len() - 1);
    let fresh = Repo::open(t.path(), PW).unwrap();
    for (id, _) in &c[3..5] {
        assert!(matches!(fresh.get_chunk(id), Err(RepoError::MissingChunk { .. })));
        assert!(!fresh.has_chunk(id));
    }
    assert!(fresh.get_chunk(&c[5].0).is_ok());
    let rep = fresh.verify_all_packs(2);
    assert_eq!((rep.checked, rep.errors.len()), (4, 5), "{:?}", rep.errors);
    let unusable = rep.errors.iter().filter(|e| matches!(e, RepoError::CorruptPack { .. })).count();
    assert_eq!(unusable, 2, "{:?}", rep.errors);
    let ids: Vec<ChunkId> = c.iter().map(|c| c.0).collect();
    let rep = fresh.verify_chunks(&ids, 2);
    assert_eq!((rep.checked, rep.errors.len()), (6, 5), "{:?}", rep.errors);
}

/// A pack torn by a crash (on a filesystem that lost the end of a file it
/// had already named) is reported, never read; the next write stores its
/// chunks again.
#[test]
fn truncated_pack_is_reported_and_the_next_backup_stores_its_chunks_again() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let chunks = random_chunks(5, 50, 64 * 1024);
    let one = WriterOptions { threads: 1, queue: 2 };
    let (ids, _) = write_all(&repo, &chunks, one);
    let packs = pack_files(t.path());
    assert_eq!(packs.len(), 1);
    let b = fs::read(&packs[0]).unwrap();
    fs::write(&packs[0], &b[..b.len() / 2]).unwrap();
    fs::write(t.path().join("packs/.tmp-0011"), b"partial").unwrap();

    let repo = Repo::open(t.path(), PW).unwrap();
    let rep = repo.verify_all_packs(2);
    assert_eq!(rep.temp_files, 1);
    assert_eq!(rep.errors.len(), 1, "{:?}", rep.errors);
    assert!(matches!(&rep.errors[0], RepoError::CorruptPack { why, .. } if why.contains("torn")), "{:?}", rep.errors);
    assert!(matches!(repo.get_chunk(&ids[0]), Err(RepoError::MissingChunk { .. })));
    let (ids2, s) = write_all(&repo, &chunks, one);
    assert_eq!(ids2, ids);
    assert_eq!(s.new_chunks, 50);
    assert!(repo.verify_chunks(&ids, 2).ok());
    for (id, c) in ids.iter().zip(&chunks) {
        assert_eq!(&repo.get_chunk(id).unwrap(), c);
    }
}

#[test]
fn swapped_or_renamed_packs_fail_authentication() {
    let (t, _repo, c) = corrupt_setup();
    // Packs 0 and 1 swap names; pack 2 gets a new (valid-looking) name.
    let tmp = t.path().join("packs/x");
    fs::rename(&c[0].1, &tmp).unwrap();
    fs::rename(&c[1].1, &c[0].1).unwrap();
    fs::rename(&tmp, &c[1].1).unwrap();
    fs::rename(&c[2].1, t.path().join("packs").join("11".repeat(16))).unwrap();
    fs::write(t.path().join("packs/notapack"), b"x").unwrap();
    let repo = Repo::open(t.path(), PW).unwrap();
    for (id, _) in &c[..3] {
        assert!(matches!(repo.get_chunk(id), Err(RepoError::MissingChunk { .. })));
    }
    let rep = repo.verify_all_packs(2);
    let auth = rep
        .errors
        .iter()
        .filter(|e| matches!(e, RepoError::CorruptPack { why, .. } if why.contains("authentication failed")))
        .count();
    assert_eq!(auth, 3, "{:?}", rep.errors);
    assert!(rep.errors.iter().any(|e| matches!(e, RepoError::StrayFile { .. })));
    assert_eq!((rep.checked, rep.errors.len()), (3, 4), "{:?}", rep.errors);
}

#[test]
fn prune_deletes_unused_packs_and_keeps_partly_used_ones() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let one = WriterOptions { threads: 1, queue: 2 };
    let a = random_chunks(6, 10, 32 * 1024);
    let b = random_chunks(7, 10, 32 * 1024);
    let (ids_a, _) = write_all(&repo, &a, one);
    let (ids_b, _) = write_all(&repo, &b, one);
    assert_eq!(pack_files(t.path()).len(), 2);
    let used: std::collections::HashSet<ChunkId> = [ids_a[3]].into();
    let st = repo.prune_packs(&used).unwrap();
    assert_eq!(
        (st.packs_deleted, st.packs_kept, st.chunks_deleted, st.chunks_used, st.chunks_unused_kept),
        (1, 1, 10, 1, 9),
        "{st:?}"
    );
    assert!(st.bytes_freed > 0);
    assert_eq!(pack_files(t.path()).len(), 1);
    assert_eq!(repo.get_chunk(&ids_a[3]).unwrap(), a[3]);
    assert!(matches!(repo.get_chunk(&ids_b[0]), Err(RepoError::MissingChunk { .. })));
    assert!(repo.verify_all_packs(2).ok());
    // What was pruned is stored again when it comes back.
    let (_, s) = write_all(&repo, &b, one);
    assert_eq!(s.new_chunks, 10);
}

/// Cells are grouped for compression but deduplicated one by one: a second
/// backup with one changed cell stores that cell only.
#[test]
fn grouped_chunks_deduplicated_across_two_backups() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let cells = random_chunks(8, 64, 64 * 1024);
    let opts = WriterOptions { threads: 2, queue: 2 };
    let (ids1, s1) = write_all(&repo, &cells, opts);
    assert_eq!(s1.new_chunks, 64);
    let rep = repo.verify_all_packs(2);
    assert!(rep.ok() && rep.groups <= 6, "{rep:?}");
    let packs1 = pack_files(t.path());

    let mut changed = cells.clone();
    changed[33][100] ^= 1;
    let repo = Repo::open(t.path(), PW).unwrap();
    let (ids2, s2) = write_all(&repo, &changed, opts);
    assert_eq!((s2.new_chunks, s2.bytes_new), (1, 64 * 1024));
    assert!(s2.bytes_stored <= 64 * 1024 + 64, "{s2:?}");
    assert_eq!(pack_files(t.path()).len(), packs1.len() + 1);
    assert_eq!(ids1.iter().zip(&ids2).filter(|(a, b)| a != b).count(), 1);
    for (id, c) in ids2.iter().zip(&changed) {
        assert_eq!(&repo.get_chunk(id).unwrap(), c);
    }
}

#[test]
fn old_format_is_refused_clearly() {
    let t = tempfile::tempdir().unwrap();
    new_repo(t.path());
    let p = t.path().join("config");
    let text = fs::read_to_string(&p).unwrap().replace("\"format\": 2", "\"format\": 1");
    fs::write(&p, text).unwrap();
    let err = Repo::open(t.path(), PW).err().unwrap();
    assert!(err.to_string().contains("format 1"), "{err}");
    assert!(err.to_string().contains("no longer supported"), "{err}");
}

#[test]
fn manifests() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    assert!(repo.list().unwrap().is_empty());
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    repo.put_manifest("web1:2026-11-22T05:00:00", &big).unwrap();
    repo.put_manifest("b", b"second").unwrap();
    // Write-once: an image is never replaced.
    assert!(matches!(repo.put_manifest("b", b"replaced"), Err(RepoError::ImageExists { .. })));
    assert_eq!(repo.list().unwrap(), vec!["b", "web1:2026-11-22T05:00:00"]);
    assert_eq!(repo.get_manifest("web1:2026-11-22T05:00:00").unwrap(), big);
    assert_eq!(repo.get_manifest("b").unwrap(), b"second");
    assert!(matches!(repo.get_manifest("nope"), Err(RepoError::NoSuchImage { .. })));
    for bad in ["", "a/b", "..", "../x", "x/../y", ".hidden", "a..b", "a b", "a\0b", "/abs", &"x".repeat(201)] {
        assert!(matches!(repo.put_manifest(bad, b"x"), Err(RepoError::BadName { .. })), "{bad:?}");
        assert!(matches!(repo.get_manifest(bad), Err(RepoError::BadName { .. })), "{bad:?}");
    }
    // A manifest renamed to another name, or damaged, is refused.
    fs::copy(t.path().join("images/b"), t.path().join("images/c")).unwrap();
    assert!(matches!(repo.get_manifest("c"), Err(RepoError::CorruptManifest { .. })));
    let p = t.path().join("images/b");
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 3] ^= 4;
    fs::write(&p, b).unwrap();
    assert!(matches!(repo.get_manifest("b"), Err(RepoError::CorruptManifest { .. })));
    // Manifests are not readable without the key.
    let raw = fs::read(t.path().join("images/web1:2026-11-22T05:00:00")).unwrap();
    assert!(raw.len() < big.len(), "compressed");
    assert!(!raw.windows(64).any(|w| w == &big[4000..4064]), "encrypted");
}

#[test]
fn pipeline_reports_io_errors() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    // Make the pack directory unusable: replace it by a file.
    let data = vec![7u8; 1000];
    let d = t.path().join("packs");
    fs::remove_dir(&d).unwrap();
    fs::write(&d, b"").unwrap();
    let mut w = ChunkWriter::new(&repo, WriterOptions { threads: 2, queue: 1 }).unwrap();
    w.push(0, data).unwrap();
    let err = w.finish().unwrap_err();
    assert!(matches!(err, RepoError::Io { .. }), "{err}");
}

#[test]
fn concurrent_writers_store_each_chunk_once() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let chunks = random_chunks(4, 10, 16 * 1024);
    let new: usize = std::thread::scope(|s| {
        let hs: Vec<_> =
            (0..6).map(|_| s.spawn(|| chunks.iter().filter(|c| repo.put_chunk(c).unwrap().new).count())).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(new, 10, "each chunk counted new exactly once");
    assert_eq!(repo.chunk_ids().unwrap().len(), 10);
    assert!(pack_files(t.path()).iter().all(|p| !p.to_string_lossy().contains(".tmp-")), "no temporaries left");
}

/// The store refuses to name a pack that was cut short (no trailer), and
/// never overwrites a pack.
#[test]
fn store_commits_only_whole_packs_and_never_overwrites() {
    use lifeline_repo::{DirStore, PackId, Store};
    let t = tempfile::tempdir().unwrap();
    new_repo(t.path());
    let store = DirStore::new(t.path());
    let id = PackId([7; 16]);
    let mut s = store.create_pack(&id).unwrap();
    s.write(b"LLPK\x01\0\0\0").unwrap();
    s.write(&[1u8; 5000]).unwrap();
    assert!(matches!(s.commit(), Err(RepoError::CorruptPack { .. })));
    assert!(pack_files(t.path()).is_empty(), "nothing named, no temporary left");
    // Framing only (an index of 40 zero bytes): enough for the store.
    let mut framed = b"LLPK\x01\0\0\0".to_vec();
    framed.extend_from_slice(&[0u8; 40]);
    framed.extend_from_slice(&40u32.to_le_bytes());
    framed.extend_from_slice(b"LLPX");
    for (i, expect_ok) in [(0, true), (1, false)] {
        let mut s = store.create_pack(&id).unwrap();
        s.write(&framed[..10]).unwrap();
        s.write(&framed[10..]).unwrap();
        let r = s.commit();
        assert_eq!(r.is_ok(), expect_ok, "attempt {i}: {r:?}");
        if !expect_ok {
            assert!(matches!(r, Err(RepoError::PackExists { .. })));
        }
    }
    assert_eq!(pack_files(t.path()).len(), 1);
    assert_eq!(store.read_pack(&id, 0, 8).unwrap(), b"LLPK\x01\0\0\0");
    assert!(store.read_pack(&id, 50, 100).is_err(), "beyond the end");
    // The repository reports it (its index does not authenticate).
    let repo = Repo::open(t.path(), PW).unwrap();
    let rep = repo.verify_all_packs(1);
    assert!(matches!(&rep.errors[..], [RepoError::CorruptPack { .. }]), "{:?}", rep.errors);
}
