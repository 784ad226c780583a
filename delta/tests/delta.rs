//! Round trips, delta-size bounds, hostile input. Sizes stay small: these run
//! in debug builds.

use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use lifeline_delta::{diff, DeltaError, DeltaOp, DeltaStats, Patcher, Signature, DEFAULT_STRONG_LEN};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// An in-memory base for the patcher.
struct Mem(Vec<u8>);

impl FileExt for Mem {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<usize> {
        unreachable!("the patcher never writes the base")
    }
}

/// A reader that returns at most a few bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    rng: StdRng,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.rng.random_range(1..=7).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn random(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rng.fill_bytes(&mut v);
    v
}

fn sig_of(base: &[u8], block_len: u32) -> Signature {
    let sig = Signature::compute(base, base.len() as u64, block_len, DEFAULT_STRONG_LEN).unwrap();
    sig.validate().unwrap();
    sig
}

fn diff_ops(sig: &Signature, new: impl Read, max_lit: usize) -> (Vec<DeltaOp>, DeltaStats) {
    let mut ops = Vec::new();
    let stats = diff(sig, new, max_lit, |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap();
    (ops, stats)
}

fn patch(base: &[u8], ops: &[DeltaOp], stats: &DeltaStats) -> Result<Vec<u8>, DeltaError> {
    let mut p = Patcher::new(Mem(base.to_vec()), base.len() as u64, Vec::new());
    for op in ops {
        p.push(op)?;
    }
    p.finish(stats.new_len, &stats.new_hash)
}

/// Checks the op stream's own invariants: literal ops non-empty and at most
/// `max_lit`, no two copies that should have been merged, counters adding up.
fn check_ops(ops: &[DeltaOp], stats: &DeltaStats, max_lit: usize) {
    let (mut copied, mut literal) = (0, 0);
    let mut prev_copy_end: Option<u64> = None;
    for op in ops {
        match op {
            DeltaOp::Copy { offset, len } => {
                assert!(*len > 0);
                assert_ne!(prev_copy_end, Some(*offset), "adjacent copies not merged: {ops:?}");
                prev_copy_end = Some(offset + len);
                copied += len;
            }
            DeltaOp::Literal(d) => {
                assert!(!d.is_empty() && d.len() <= max_lit, "literal of {} bytes", d.len());
                prev_copy_end = None;
                literal += d.len() as u64;
            }
        }
    }
    assert_eq!((copied, literal), (stats.copied, stats.literal));
    assert_eq!(copied + literal, stats.new_len);
}

/// Diffs `new` against `base`, patches, asserts the result is `new` byte for
/// byte; returns the stats.
fn roundtrip_with(base: &[u8], new: &[u8], block_len: u32, max_lit: usize) -> DeltaStats {
    let sig = sig_of(base, block_len);
    let (ops, stats) = diff_ops(&sig, new, max_lit);
    check_ops(&ops, &stats, max_lit);
    assert_eq!(stats.new_len, new.len() as u64);
    assert_eq!(stats.new_hash, *blake3::hash(new).as_bytes());
    let out = patch(base, &ops, &stats).unwrap();
    assert!(out == new, "patched output differs from the new file");
    // The same through a reader that returns a few bytes per call.
    let trickle = Trickle { data: new, rng: StdRng::seed_from_u64(7) };
    let (ops2, stats2) = diff_ops(&sig, trickle, max_lit);
    assert_eq!((&ops2, &stats2), (&ops, &stats), "short reads changed the delta");
    stats
}

fn roundtrip(base: &[u8], new: &[u8], block_len: u32) -> DeltaStats {
    roundtrip_with(base, new, block_len, 1 << 20)
}

#[test]
fn identical_files_are_one_copy() {
    let mut rng = StdRng::seed_from_u64(1);
    for len in [1usize, 63, 64, 65, 128, 1000, 4096, 10_000] {
        let data = random(&mut rng, len);
        let sig = sig_of(&data, 64);
        let (ops, stats) = diff_ops(&sig, &data[..], 1 << 20);
        assert_eq!(ops, vec![DeltaOp::Copy { offset: 0, len: len as u64 }], "len {len}");
        assert_eq!(stats.literal, 0);
        assert_eq!(patch(&data, &ops, &stats).unwrap(), data);
    }
}

#[test]
fn empty_files() {
    let mut rng = StdRng::seed_from_u64(2);
    let data = random(&mut rng, 1000);
    // Empty base: everything literal.
    let s = roundtrip(&[], &data, 64);
    assert_eq!(s.literal, 1000);
    // Empty new: no ops at all.
    let sig = sig_of(&data, 64);
    let (ops, stats) = diff_ops(&sig, &[][..], 1 << 20);
    assert!(ops.is_empty());
    assert_eq!(stats.new_len, 0);
    assert_eq!(patch(&data, &ops, &stats).unwrap(), b"");
    // Both empty.
    let s = roundtrip(&[], &[], 64);
    assert_eq!((s.new_len, s.copied, s.literal), (0, 0, 0));
}

#[test]
fn one_byte_files() {
    assert_eq!(roundtrip(b"a", b"a", 64).copied, 1);
    assert_eq!(roundtrip(b"a", b"b", 64).literal, 1);
    assert_eq!(roundtrip(b"", b"b", 64).literal, 1);
    assert_eq!(roundtrip(b"a", b"", 64).new_len, 0);
    // The base's only (short) block found at the end of a longer file.
    let s = roundtrip(b"a", b"xyza", 64);
    assert_eq!((s.copied, s.literal), (1, 3));
}

#[test]
fn in_place_edits_cost_only_the_touched_blocks() {
    let mut rng = StdRng::seed_from_u64(3);
    let block = 1024u32;
    let base = random(&mut rng, 1 << 20);
    let mut new = base.clone();
    let edits = 8;
    for _ in 0..edits {
        let at = rng.random_range(0..new.len() - 4096);
        rng.fill_bytes(&mut new[at..at + 4096]);
    }
    let s = roundtrip(&base, &new, block);
    // An unaligned 4 KiB edit touches 5 blocks of 1 KiB.
    assert!(s.literal <= edits * 5 * block as u64, "literal {}", s.literal);
    assert!(s.literal >= edits * 4096 - 4096, "literal {}", s.literal);
}

#[test]
fn in_place_edits_8mib_with_default_block_len() {
    let mut rng = StdRng::seed_from_u64(4);
    let base = random(&mut rng, 8 << 20);
    let block = Signature::block_len_for(base.len() as u64);
    assert_eq!(block, 1024);
    let mut new = base.clone();
    for _ in 0..4 {
        let at = rng.random_range(0..new.len() - 4096);
        rng.fill_bytes(&mut new[at..at + 4096]);
    }
    let sig = sig_of(&base, block);
    let (ops, stats) = diff_ops(&sig, &new[..], 1 << 20);
    assert!(stats.literal <= 4 * (4096 + 2 * block as u64), "literal {}", stats.literal);
    // Copy, literal, copy, ... : few ops.
    assert!(ops.len() <= 9, "{} ops", ops.len());
    assert_eq!(patch(&base, &ops, &stats).unwrap(), new);
}

#[test]
fn aligned_page_writes_cost_one_block_each() {
    let mut rng = StdRng::seed_from_u64(5);
    let base = random(&mut rng, 1 << 20);
    let mut new = base.clone();
    for page in [3usize, 50, 51, 200] {
        rng.fill_bytes(&mut new[page * 4096..(page + 1) * 4096]);
    }
    let s = roundtrip(&base, &new, 4096);
    assert_eq!(s.literal, 4 * 4096);
}

#[test]
fn inserts_and_deletes_are_found_by_rolling() {
    let mut rng = StdRng::seed_from_u64(6);
    let block = 256u32;
    let base = random(&mut rng, 200_000);
    // Insert a few bytes at several places.
    let mut new = base.clone();
    let mut inserted = 0;
    for _ in 0..5 {
        let at = rng.random_range(0..new.len());
        let n = rng.random_range(1..100);
        let ins = random(&mut rng, n);
        new.splice(at..at, ins);
        inserted += n as u64;
    }
    let s = roundtrip(&base, &new, block);
    assert!(s.literal <= inserted + 5 * 2 * block as u64, "insert: literal {}", s.literal);
    // Delete a few ranges.
    let mut new = base.clone();
    for _ in 0..5 {
        let at = rng.random_range(0..new.len() - 1000);
        let n = rng.random_range(1..1000);
        new.drain(at..at + n);
    }
    let s = roundtrip(&base, &new, block);
    assert!(s.literal <= 5 * 2 * block as u64, "delete: literal {}", s.literal);
    // One byte inserted at the very start shifts everything.
    let mut new = vec![0x42];
    new.extend_from_slice(&base);
    let s = roundtrip(&base, &new, block);
    assert_eq!(s.literal, 1);
}

#[test]
fn appends_truncations_and_short_last_block() {
    let mut rng = StdRng::seed_from_u64(7);
    let block = 100u32;
    let base = random(&mut rng, 1050); // 10 full blocks + 50 bytes
                                       // Appended: the short last block is found in place, mid-stream.
    let mut new = base.clone();
    new.extend_from_slice(&random(&mut rng, 333));
    let s = roundtrip(&base, &new, block);
    assert_eq!((s.copied, s.literal), (1050, 333));
    // Prepended: rolling finds the full blocks, then the short one follows in place.
    let mut new = random(&mut rng, 17);
    new.extend_from_slice(&base);
    let s = roundtrip(&base, &new, block);
    assert_eq!((s.copied, s.literal), (1050, 17));
    // The tail unchanged, a full block in the middle changed.
    let mut new = base.clone();
    rng.fill_bytes(&mut new[300..400]);
    let s = roundtrip(&base, &new, block);
    assert_eq!(s.literal, 100);
    // Truncated at a block boundary, and in the middle of a block.
    let s = roundtrip(&base, &base[..500], block);
    assert_eq!(s.literal, 0);
    let s = roundtrip(&base, &base[..550], block);
    assert_eq!(s.literal, 50);
    // Grown from an exact multiple of the block length.
    let base = random(&mut rng, 1000);
    let mut new = base.clone();
    new.extend_from_slice(b"tail");
    let s = roundtrip(&base, &new, block);
    assert_eq!((s.copied, s.literal), (1000, 4));
    let s = roundtrip(&base, &base[..999], block);
    assert_eq!(s.literal, 99);
}

#[test]
fn unrelated_data_is_all_literal_and_respects_max_literal() {
    let mut rng = StdRng::seed_from_u64(8);
    let base = random(&mut rng, 50_000);
    let new = random(&mut rng, 70_000);
    let s = roundtrip_with(&base, &new, 64, 1000);
    assert_eq!(s.literal, 70_000);
    // Tiny literal limits exercise the buffer's flush and refill paths.
    for max_lit in [1usize, 2, 63, 64, 65, 4097] {
        let mut new = base.clone();
        rng.fill_bytes(&mut new[10_000..20_000]);
        new.splice(30_000..30_000, random(&mut rng, 5000));
        roundtrip_with(&base, &new, 64, max_lit);
    }
}

#[test]
fn repetitive_data() {
    // Zeros: every block identical, matched in sequence by the in-place check.
    let base = vec![0u8; 100_000];
    let mut new = vec![0u8; 150_000];
    new[77_777] = 1;
    let sig = sig_of(&base, 128);
    let (ops, stats) = diff_ops(&sig, &new[..], 1 << 20);
    check_ops(&ops, &stats, 1 << 20);
    assert!(stats.literal <= 2 * 128, "literal {}", stats.literal);
    assert_eq!(patch(&base, &ops, &stats).unwrap(), new);
    // A short period, shifted by one byte.
    let base: Vec<u8> = (0..60_000u32).map(|i| b"abcdefg"[i as usize % 7]).collect();
    let new = base[1..].to_vec();
    let s = roundtrip(&base, &new, 64);
    assert!(s.literal <= 64, "literal {}", s.literal);
}

#[test]
fn random_edits_fuzz() {
    let mut rng = StdRng::seed_from_u64(9);
    for round in 0..150 {
        let block = rng.random_range(64u32..300);
        let base_len = rng.random_range(0..5000);
        let base = random(&mut rng, base_len);
        let mut new = base.clone();
        for _ in 0..rng.random_range(0..6) {
            let at = rng.random_range(0..=new.len());
            match rng.random_range(0..4) {
                0 => {
                    let n = rng.random_range(0..200).min(new.len() - at);
                    rng.fill_bytes(&mut new[at..at + n]);
                }
                1 => {
                    let n = rng.random_range(0..200);
                    new.splice(at..at, random(&mut rng, n));
                }
                2 => {
                    let n = rng.random_range(0..500).min(new.len() - at);
                    new.drain(at..at + n);
                }
                _ => {
                    // Move a range elsewhere (reordered blocks).
                    let n = rng.random_range(0..800).min(new.len() - at);
                    let moved: Vec<u8> = new.drain(at..at + n).collect();
                    let to = rng.random_range(0..=new.len());
                    new.splice(to..to, moved);
                }
            }
        }
        let max_lit = if round % 3 == 0 { rng.random_range(1..200) } else { 1 << 20 };
        roundtrip_with(&base, &new, block, max_lit);
    }
}

#[test]
fn block_len_for_choices() {
    assert_eq!(Signature::block_len_for(0), 1024);
    assert_eq!(Signature::block_len_for(1 << 20), 1024);
    assert_eq!(Signature::block_len_for(1 << 30), 8192);
    assert_eq!(Signature::block_len_for(4 << 30), 16384);
    assert_eq!(Signature::block_len_for(1 << 40), 1 << 18);
    assert_eq!(Signature::block_len_for(u64::MAX), 1 << 18);
    let mut prev = 0;
    for shift in 0..64 {
        let b = Signature::block_len_for(1u64 << shift);
        assert!(b.is_power_of_two() && b >= prev);
        prev = b;
    }
}

#[test]
fn signature_sizes_and_short_base() {
    let data = vec![7u8; 1000];
    let sig = sig_of(&data, 128);
    assert_eq!(sig.weak.len(), 8);
    assert_eq!(sig.strong.len(), 8 * 16);
    assert_eq!(sig.wire_size(), 13 + 8 * 20);
    // Bytes beyond base_len are not read.
    let sig2 = Signature::compute(&[7u8; 5000][..], 1000, 128, 16).unwrap();
    assert_eq!(sig, sig2);
    // A base shorter than announced.
    let e = Signature::compute(&data[..], 1001, 128, 16).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    // Bad parameters.
    for (b, s) in [(0, 16), (63, 16), ((1 << 20) + 1, 16), (128, 7), (128, 33)] {
        let e = Signature::compute(&data[..], 1000, b, s).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{b} {s}");
    }
}

#[test]
fn validate_rejects_inconsistent_signatures() {
    let good = sig_of(&vec![1u8; 1000], 128);
    let bad = |f: &dyn Fn(&mut Signature)| {
        let mut s = good.clone();
        f(&mut s);
        let e = s.validate().unwrap_err();
        assert!(matches!(e, DeltaError::InvalidSignature(_)), "{e}");
        // diff refuses it too, before reading anything.
        let e = diff(&s, &b"x"[..], 1 << 20, |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        e.to_string()
    };
    assert!(bad(&|s| s.block_len = 0).contains("block length 0"));
    assert!(bad(&|s| s.block_len = 2 << 20).contains("block length"));
    assert!(bad(&|s| s.strong_len = 4).contains("strong hash length 4"));
    assert!(bad(&|s| s.strong_len = 33).contains("strong hash length 33"));
    assert!(bad(&|s| s.base_len = 2000).contains("weak hashes"));
    assert!(bad(&|s| s.base_len = 1 << 60).contains("more than 2^32"));
    assert!(bad(&|s| s.base_len = 0).contains("weak hashes"));
    assert!(bad(&|s| {
        s.weak.pop();
    })
    .contains("7 weak hashes"));
    assert!(bad(&|s| s.strong.push(0)).contains("strong hashes"));
    assert!(bad(&|s| s.strong_len = 8).contains("strong hashes"));
    good.validate().unwrap();
    let empty = Signature { block_len: 64, strong_len: 16, base_len: 0, weak: vec![], strong: vec![] };
    empty.validate().unwrap();
}

#[test]
fn hostile_signature_all_weak_equal_still_terminates_correctly() {
    // Every block claims the same weak hash with a different strong hash: the
    // candidate cap keeps the diff linear, and results stay correct.
    let mut rng = StdRng::seed_from_u64(10);
    let base = random(&mut rng, 64 * 500);
    let mut sig = sig_of(&base, 64);
    let w = sig.weak[0];
    sig.weak.iter_mut().for_each(|x| *x = w);
    let new = random(&mut rng, 100_000);
    let (ops, stats) = diff_ops(&sig, &new[..], 1 << 20);
    check_ops(&ops, &stats, 1 << 20);
    assert_eq!(patch(&base, &ops, &stats).unwrap(), new);
    // A signature whose strong hash of one block is wrong: that block is not
    // copied, the rest are, and the result is still right.
    let mut sig = sig_of(&base, 64);
    sig.strong[5 * 16] ^= 1;
    let (ops, stats) = diff_ops(&sig, &base[..], 1 << 20);
    assert_eq!(stats.literal, 64);
    assert_eq!(patch(&base, &ops, &stats).unwrap(), base);
}

fn hostile(base_len: usize, ops: &[DeltaOp]) -> DeltaError {
    let mut p = Patcher::new(Mem(vec![9; base_len]), base_len as u64, Vec::new());
    for op in ops {
        if let Err(e) = p.push(op) {
            // After a failure nothing more is accepted.
            assert!(matches!(p.push(&DeltaOp::Literal(vec![1])), Err(DeltaError::Failed)));
            return e;
        }
    }
    panic!("ops accepted: {ops:?}");
}

#[test]
fn patcher_rejects_hostile_ops() {
    let e = hostile(150, &[DeltaOp::Copy { offset: 100, len: 100 }]);
    assert!(matches!(e, DeltaError::CopyOutOfRange { offset: 100, end: 200, base_len: 150 }));
    assert_eq!(e.to_string(), "delta copies base bytes 100..200 but the base has only 150 bytes");
    let e = hostile(150, &[DeltaOp::Copy { offset: 150, len: 1 }]);
    assert!(matches!(e, DeltaError::CopyOutOfRange { .. }));
    let e = hostile(0, &[DeltaOp::Copy { offset: 0, len: 1 }]);
    assert!(matches!(e, DeltaError::CopyOutOfRange { .. }));
    let e = hostile(150, &[DeltaOp::Copy { offset: u64::MAX, len: 2 }]);
    assert!(matches!(e, DeltaError::CopyOverflow { .. }), "{e}");
    let e = hostile(150, &[DeltaOp::Copy { offset: 1, len: u64::MAX }]);
    assert!(matches!(e, DeltaError::CopyOverflow { .. }), "{e}");
    // Nothing was written by the refused op.
    let mut p = Patcher::new(Mem(vec![9; 10]), 10, Vec::new());
    p.push(&DeltaOp::Copy { offset: 0, len: 4 }).unwrap();
    assert!(p.push(&DeltaOp::Copy { offset: 5, len: 6 }).is_err());
    assert_eq!(p.written(), 4);
}

#[test]
fn patcher_limits_output_length() {
    let mk = || Patcher::new(Mem(vec![9; 1000]), 1000, Vec::new()).with_max_len(100);
    let mut p = mk();
    p.push(&DeltaOp::Copy { offset: 0, len: 60 }).unwrap();
    p.push(&DeltaOp::Literal(vec![1; 40])).unwrap();
    let e = p.push(&DeltaOp::Literal(vec![1])).unwrap_err();
    assert!(matches!(e, DeltaError::TooLong { written: 100, len: 1, max_len: 100 }), "{e}");
    let mut p = mk();
    let e = p.push(&DeltaOp::Copy { offset: 0, len: 101 }).unwrap_err();
    assert!(matches!(e, DeltaError::TooLong { .. }));
    // Without a limit the written counter still cannot overflow.
    let mut p = Patcher::new(Mem(vec![]), u64::MAX, io::sink());
    p.push(&DeltaOp::Literal(vec![1])).unwrap();
    let e = p.push(&DeltaOp::Copy { offset: 0, len: u64::MAX }).unwrap_err();
    assert!(matches!(e, DeltaError::TooLong { .. }), "{e}");
}

#[test]
fn patcher_checks_final_length_and_hash() {
    let mut rng = StdRng::seed_from_u64(11);
    let base = random(&mut rng, 5000);
    let mut new = base.clone();
    new[2500] ^= 1;
    let sig = sig_of(&base, 256);
    let (ops, stats) = diff_ops(&sig, &new[..], 1 << 20);
    // Wrong announced length.
    let mut wrong = stats.clone();
    wrong.new_len += 1;
    let e = patch(&base, &ops, &wrong).unwrap_err();
    assert!(matches!(e, DeltaError::LengthMismatch { written: 5000, expected: 5001 }), "{e}");
    // Wrong announced hash.
    let mut wrong = stats.clone();
    wrong.new_hash[0] ^= 1;
    let e = patch(&base, &ops, &wrong).unwrap_err();
    assert!(e.to_string().starts_with("patched file hash mismatch"), "{e}");
    // A base that differs from the one the signature was made of (what a
    // strong-hash collision would look like): the final hash catches it.
    let mut other = base.clone();
    other[10] ^= 1;
    let e = patch(&other, &ops, &stats).unwrap_err();
    assert!(matches!(e, DeltaError::HashMismatch { .. }), "{e}");
    // Dropping an op.
    let e = patch(&base, &ops[1..], &stats).unwrap_err();
    assert!(matches!(e, DeltaError::LengthMismatch { .. }), "{e}");
    assert_eq!(patch(&base, &ops, &stats).unwrap(), new);
}

#[test]
fn patcher_reports_a_base_shorter_than_declared() {
    let mut p = Patcher::new(Mem(vec![1; 100]), 1000, Vec::new());
    let e = p.push(&DeltaOp::Copy { offset: 50, len: 100 }).unwrap_err();
    assert!(matches!(e, DeltaError::BaseTruncated { offset: 50, base_len: 1000 }), "{e}");
}

#[test]
fn real_files() {
    let mut rng = StdRng::seed_from_u64(12);
    let dir = tempfile::tempdir().unwrap();
    let base_data = random(&mut rng, 300_000);
    let mut new_data = base_data.clone();
    new_data.splice(1000..1000, b"inserted".iter().copied());
    rng.fill_bytes(&mut new_data[200_000..201_000]);
    std::fs::write(dir.path().join("base"), &base_data).unwrap();
    std::fs::write(dir.path().join("new"), &new_data).unwrap();

    let base = std::fs::File::open(dir.path().join("base")).unwrap();
    let base_len = base.metadata().unwrap().len();
    let block = Signature::block_len_for(base_len);
    let sig = Signature::compute(io::BufReader::new(&base), base_len, block, DEFAULT_STRONG_LEN).unwrap();
    let mut ops = Vec::new();
    let new = std::fs::File::open(dir.path().join("new")).unwrap();
    let stats = diff(&sig, new, 1 << 20, |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap();
    assert!(stats.literal < 5 * block as u64, "literal {}", stats.literal);
    let out = std::fs::File::create(dir.path().join("out")).unwrap();
    let mut p = Patcher::new(base, base_len, io::BufWriter::new(out)).with_max_len(stats.new_len);
    for op in &ops {
        p.push(op).unwrap();
    }
    let mut out = p.finish(stats.new_len, &stats.new_hash).unwrap();
    out.flush().unwrap();
    drop(out);
    assert!(std::fs::read(dir.path().join("out")).unwrap() == new_data);
}

#[test]
fn sink_errors_stop_the_diff() {
    let data = vec![5u8; 10_000];
    let sig = sig_of(&data, 64);
    let e =
        diff(&sig, &b"something else entirely"[..], 1 << 20, |_| Err(io::Error::other("network down"))).unwrap_err();
    assert_eq!(e.to_string(), "network down");
}
