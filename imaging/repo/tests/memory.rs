//! Peak memory of the write pipeline does not grow with the input.
//! Its own test binary (own process), so VmHWM measures only this test.

use lifeline_repo::{ChunkWriter, KdfParams, Repo, WriterOptions};
use rand::{RngCore, SeedableRng};

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn one_gib_through_the_pipeline_in_bounded_memory() {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::init_with_kdf(t.path(), b"pw", KdfParams::insecure_for_tests()).unwrap();
    const CHUNK: usize = 1 << 20;
    const TOTAL: usize = 1 << 30;
    let before = vm_hwm_kib();
    let mut w = ChunkWriter::new(&repo, WriterOptions { threads: 2, queue: 2 }).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // Mostly zeros (like a sparse disk), every 32nd chunk random: 32 MiB of
    // data to compress and encrypt, all of it produced on the fly.
    for i in 0..TOTAL / CHUNK {
        let mut c = vec![0u8; CHUNK];
        if i % 32 == 0 {
            rng.fill_bytes(&mut c);
        } else {
            c[..8].copy_from_slice(&((i % 3) as u64).to_le_bytes());
        }
        w.push((i * CHUNK) as u64, c).unwrap();
    }
    let (refs, stats) = w.finish().unwrap();
    let grew_mib = (vm_hwm_kib() - before) / 1024;
    assert_eq!(refs.len(), TOTAL / CHUNK);
    assert_eq!(stats.bytes_in, TOTAL as u64);
    assert_eq!(stats.new_chunks, 32 + 3);
    eprintln!("1 GiB pushed, peak RSS grew by {grew_mib} MiB, {stats:?}");
    // (queue 2 + 2 workers × 2 buffers + 1 being built) × 8 MiB batches ≈
    // 56 MiB, plus allocator slack; far below the 1 GiB that an unbounded
    // queue could hold.
    assert!(grew_mib < 80, "peak RSS grew by {grew_mib} MiB");
}
