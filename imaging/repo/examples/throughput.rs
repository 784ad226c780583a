//! Measure the repository on this machine:
//! `cargo run --release -p lifeline-repo --example throughput -- [MiB] [DIR|''] [THREADS]`
//!
//! Prints the Argon2id unlock time with the default parameters, then the
//! pipeline rate for a first backup (all chunks new), a second backup of the
//! same data (all deduplicated) and a read-back of every chunk. The data is a
//! disk-like mix of 4 MiB chunks: one third random (incompressible), one third
//! compressible text-like bytes, one third mostly zeros.

use std::time::Instant;

use lifeline_repo::{ChunkWriter, Repo, WriterOptions};
use rand::{Rng, RngCore, SeedableRng};

const CHUNK: usize = 4 << 20;

fn chunk(i: usize) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(i as u64);
    let mut c = vec![0u8; CHUNK];
    match i % 3 {
        0 => rng.fill_bytes(&mut c),
        1 => {
            let words: Vec<&[u8]> = ["the ", "lifeline ", "backup ", "disk ", "block ", "0x1f ", "\n", "usr/lib "]
                .iter()
                .map(|s| s.as_bytes())
                .collect();
            let mut at = 0;
            while at < CHUNK {
                let w = words[rng.random_range(0..words.len())];
                let n = w.len().min(CHUNK - at);
                c[at..at + n].copy_from_slice(&w[..n]);
                at += n;
            }
        }
        _ => rng.fill_bytes(&mut c[..CHUNK / 16]),
    }
    c
}

fn rate(bytes: u64, secs: f64) -> String {
    format!("{:.0} MB/s", bytes as f64 / secs / 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1024);
    let tmp = tempfile::tempdir().unwrap();
    let dir =
        args.get(2).filter(|s| !s.is_empty()).map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().join("repo"));
    let n = mib * (1 << 20) / CHUNK;
    let mut opts = WriterOptions::default();
    if let Some(t) = args.get(3) {
        opts.threads = t.parse().unwrap();
        opts.queue = 2 * opts.threads;
    }
    println!("{} MiB in {} chunks of 4 MiB, {} worker threads, queue {}", n * 4, n, opts.threads, opts.queue);

    let t = Instant::now();
    let repo = Repo::init(&dir, b"pw").unwrap();
    println!("init (Argon2id default params): {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let _ = Repo::open(&dir, b"wrong").err().unwrap();
    println!("open with a wrong password refused in {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let repo2 = Repo::open(&dir, b"pw").unwrap();
    println!("open: {:.2} s", t.elapsed().as_secs_f64());
    drop(repo2);

    // Time spent generating the input, to subtract from the pipeline's time.
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(chunk(i));
    }
    let gen = t.elapsed().as_secs_f64();
    println!("(generating the input alone: {gen:.2} s)");

    for pass in ["first backup", "second backup (all dedup)"] {
        let t = Instant::now();
        let mut w = ChunkWriter::new(&repo, opts).unwrap();
        for i in 0..n {
            w.push((i * CHUNK) as u64, chunk(i)).unwrap();
        }
        let (_, s) = w.finish().unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{pass}: {:.2} s, {} in, {} new chunks, {} stored (ratio {:.2}); \
             {} including input generation",
            secs,
            s.bytes_in,
            s.new_chunks,
            s.bytes_stored,
            s.bytes_stored as f64 / s.bytes_in.max(1) as f64,
            rate(s.bytes_in, secs),
        );
    }
    let t = Instant::now();
    let rep = repo.verify_all_packs(opts.threads);
    let secs = t.elapsed().as_secs_f64();
    assert!(rep.ok());
    println!("verify_all_packs: {} chunks, {} in {:.2} s: {}", rep.checked, rep.bytes, secs, rate(rep.bytes, secs));
    let t = Instant::now();
    let mut bytes = 0u64;
    let ids: Vec<_> = (0..n).map(|i| repo.chunk_id(&chunk(i))).collect();
    let hash_gen = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for id in &ids {
        bytes += repo.get_chunk(id).unwrap().len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "get_chunk, one thread: {bytes} bytes in {secs:.2} s: {} (ids computed beforehand in {hash_gen:.2} s)",
        rate(bytes, secs)
    );
}
