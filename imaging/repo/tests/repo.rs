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

fn write_all(
    repo: &Repo,
    chunks: &[Vec<u8>],
    opts: WriterOptions,
) -> (Vec<ChunkId>, lifeline_repo::WriteStats) {
    let mut w = ChunkWriter::new(repo, opts).unwrap();
    let mut off = 0u64;
    for c in chunks {
        w.push(off, c.clone()).unwrap();
        off += c.len() as u64;
    }
    let (refs, stats) = w.finish().unwrap();
    let mut off = 0u64;
    for (r, c) in refs.iter().zip(chunks) {
        assert_eq!(
            (r.offset, r.len),
            (off, c.len() as u64),
            "results in input order"
        );
        off += c.len() as u64;
    }
    (refs.into_iter().map(|r| r.id).collect(), stats)
}

fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for d in fs::read_dir(dir.join("chunks")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
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
    let (ids, stats) = write_all(
        &repo,
        &chunks,
        WriterOptions {
            threads: 3,
            queue: 4,
        },
    );
    assert_eq!(stats.chunks, 300);
    assert_eq!(stats.new_chunks, 300);
    assert_eq!(
        stats.bytes_in,
        chunks.iter().map(|c| c.len() as u64).sum::<u64>()
    );
    assert!(
        stats.bytes_stored < stats.bytes_in,
        "compressible chunks shrink: {stats:?}"
    );
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
    let rep = repo.verify_all_chunk_files(2);
    assert!(rep.ok(), "{:?}", rep.errors);
    assert_eq!(rep.checked, 300);
    // Raw files contain no plaintext: the incompressible chunk 0 is not visible.
    let f = fs::read(
        chunk_files(t.path())
            .into_iter()
            .find(|p| p.ends_with(ids[0].to_hex()))
            .unwrap(),
    )
    .unwrap();
    assert!(!f.windows(32).any(|w| w == &chunks[0][1000..1032]));
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
    let opts = WriterOptions {
        threads: 4,
        queue: 2,
    };
    let (ids1, s1) = write_all(&repo, &chunks, opts);
    assert_eq!(s1.chunks, 202);
    assert_eq!(s1.new_chunks, 201);
    let files = chunk_files(t.path());
    assert_eq!(files.len(), 201);

    // Same data again: nothing new, no file written.
    let (ids2, s2) = write_all(&repo, &chunks, opts);
    assert_eq!(ids1, ids2);
    assert_eq!((s2.new_chunks, s2.bytes_stored), (0, 0));
    assert_eq!(chunk_files(t.path()), files);

    // A second image with 1% of the chunks changed (2 of 200) stores ~1%.
    let mut changed = chunks.clone();
    changed[10][5] ^= 1;
    changed[150][999] ^= 0x80;
    let repo2 = Repo::open(t.path(), PW).unwrap(); // e.g. another machine
    let (ids3, s3) = write_all(&repo2, &changed, opts);
    assert_eq!(s3.new_chunks, 2);
    assert_eq!(s3.bytes_new, 2 * 32 * 1024);
    assert_eq!(chunk_files(t.path()).len(), 203);
    assert_eq!(ids3.iter().zip(&ids1).filter(|(a, b)| a != b).count(), 2);
    assert!(repo.verify_all_chunk_files(2).ok());
}

#[test]
fn wrong_password_refused_and_nothing_changes() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let id = repo.put_chunk(b"some data").unwrap().id;
    repo.put_manifest("img1", b"manifest").unwrap();
    drop(repo);
    let before = snapshot(t.path());
    let err = Repo::open(t.path(), b"not the password")
        .err()
        .expect("wrong password must fail");
    assert!(matches!(err, RepoError::WrongPassword { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("wrong password for repository {}", t.path().display())
    );
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
    assert!(matches!(
        Repo::open(&missing, PW),
        Err(RepoError::NotARepo { .. })
    ));
    assert!(!missing.exists(), "open creates nothing");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Repo::open(empty.path(), PW),
        Err(RepoError::NotARepo { .. })
    ));
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
    assert_ne!(
        ra.chunk_id(b"x"),
        rb.chunk_id(b"x"),
        "ids are keyed per repository"
    );
    assert_ne!(ra.chunk_id(b"x"), ChunkId(*blake3::hash(b"x").as_bytes()));
}

fn corrupt_setup() -> (tempfile::TempDir, Repo, Vec<ChunkId>) {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let chunks = random_chunks(3, 6, 8192);
    let (ids, _) = write_all(
        &repo,
        &chunks,
        WriterOptions {
            threads: 2,
            queue: 2,
        },
    );
    (t, repo, ids)
}

fn path_of(dir: &Path, id: &ChunkId) -> std::path::PathBuf {
    let h = id.to_hex();
    dir.join("chunks").join(&h[..2]).join(h)
}

#[test]
fn flipped_byte_detected_by_get_and_verify() {
    let (t, repo, ids) = corrupt_setup();
    for (k, at) in [(0usize, 5usize), (1, 20), (2, 100), (3, usize::MAX)] {
        // header flag, nonce, payload, tag
        let p = path_of(t.path(), &ids[k]);
        let mut b = fs::read(&p).unwrap();
        let at = at.min(b.len() - 1);
        b[at] ^= 0x01;
        fs::write(&p, b).unwrap();
        let err = repo.get_chunk(&ids[k]).unwrap_err();
        assert!(
            matches!(&err, RepoError::Corrupt { id, .. } if *id == ids[k]),
            "{err}"
        );
        assert!(err.to_string().contains(&ids[k].to_hex()));
    }
    let rep = repo.verify_all_chunk_files(2);
    assert_eq!((rep.checked, rep.errors.len()), (6, 4));
    let rep = repo.verify_chunks(&ids, 2);
    assert_eq!(rep.errors.len(), 4);
    assert!(repo.get_chunk(&ids[4]).is_ok());
}

#[test]
fn swapped_and_truncated_and_missing_detected() {
    let (t, repo, ids) = corrupt_setup();
    // Chunk 0's file copied over chunk 1's name: authenticates under the wrong id.
    fs::copy(path_of(t.path(), &ids[0]), path_of(t.path(), &ids[1])).unwrap();
    let err = repo.get_chunk(&ids[1]).unwrap_err();
    assert!(
        matches!(&err, RepoError::Corrupt { id, .. } if *id == ids[1]),
        "{err}"
    );
    // Truncated files, including to a few bytes and to nothing.
    for (k, keep) in [(2usize, 40usize), (3, 0), (4, 3000)] {
        let p = path_of(t.path(), &ids[k]);
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..keep.min(b.len() - 1)]).unwrap();
        let err = repo.get_chunk(&ids[k]).unwrap_err();
        assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");
    }
    // Missing file.
    fs::remove_file(path_of(t.path(), &ids[5])).unwrap();
    assert!(matches!(
        repo.get_chunk(&ids[5]),
        Err(RepoError::MissingChunk { .. })
    ));
    let rep = repo.verify_chunks(&ids, 3);
    assert_eq!(rep.errors.len(), 5);
    // A chunk file renamed to another (valid-looking) id, and a stray file.
    let fake = ChunkId([0x11; 32]);
    fs::rename(path_of(t.path(), &ids[0]), path_of(t.path(), &fake)).unwrap();
    fs::write(t.path().join("chunks/ab/notachunk"), b"x").unwrap();
    fs::write(t.path().join("chunks/ab/.tmp-0011"), b"x").unwrap();
    let rep = repo.verify_all_chunk_files(2);
    assert_eq!(rep.temp_files, 1);
    assert!(rep
        .errors
        .iter()
        .any(|e| matches!(e, RepoError::Corrupt { id, .. } if *id == fake)));
    assert!(rep
        .errors
        .iter()
        .any(|e| matches!(e, RepoError::StrayFile { .. })));
    assert_eq!(rep.errors.len(), 1 + 3 + 1 + 1, "{:?}", rep.errors);
}

#[test]
fn manifests() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    assert!(repo.list().unwrap().is_empty());
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    repo.put_manifest("web1:2026-11-22T05:00:00", &big).unwrap();
    repo.put_manifest("b", b"second").unwrap();
    repo.put_manifest("b", b"replaced").unwrap();
    assert_eq!(repo.list().unwrap(), vec!["b", "web1:2026-11-22T05:00:00"]);
    assert_eq!(repo.get_manifest("web1:2026-11-22T05:00:00").unwrap(), big);
    assert_eq!(repo.get_manifest("b").unwrap(), b"replaced");
    assert!(matches!(
        repo.get_manifest("nope"),
        Err(RepoError::NoSuchImage { .. })
    ));
    for bad in [
        "",
        "a/b",
        "..",
        "../x",
        "x/../y",
        ".hidden",
        "a..b",
        "a b",
        "a\0b",
        "/abs",
        &"x".repeat(201),
    ] {
        assert!(
            matches!(repo.put_manifest(bad, b"x"), Err(RepoError::BadName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(repo.get_manifest(bad), Err(RepoError::BadName { .. })),
            "{bad:?}"
        );
    }
    // A manifest renamed to another name, or damaged, is refused.
    fs::copy(t.path().join("images/b"), t.path().join("images/c")).unwrap();
    assert!(matches!(
        repo.get_manifest("c"),
        Err(RepoError::CorruptManifest { .. })
    ));
    let p = t.path().join("images/b");
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 3] ^= 4;
    fs::write(&p, b).unwrap();
    assert!(matches!(
        repo.get_manifest("b"),
        Err(RepoError::CorruptManifest { .. })
    ));
    // Manifests are not readable without the key.
    let raw = fs::read(t.path().join("images/web1:2026-11-22T05:00:00")).unwrap();
    assert!(raw.len() < big.len(), "compressed");
    assert!(!raw.windows(64).any(|w| w == &big[4000..4064]), "encrypted");
}

#[test]
fn pipeline_reports_io_errors() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    // Make the chunk directories unusable: replace one fan-out dir by a file.
    let data = vec![7u8; 1000];
    let id = repo.chunk_id(&data);
    let d = t.path().join("chunks").join(&id.to_hex()[..2]);
    fs::remove_dir(&d).unwrap();
    fs::write(&d, b"").unwrap();
    let mut w = ChunkWriter::new(
        &repo,
        WriterOptions {
            threads: 2,
            queue: 1,
        },
    )
    .unwrap();
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
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    chunks
                        .iter()
                        .filter(|c| repo.put_chunk(c).unwrap().new)
                        .count()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(new, 10, "each chunk counted new exactly once");
    assert_eq!(chunk_files(t.path()).len(), 10, "no temporaries left");
}
