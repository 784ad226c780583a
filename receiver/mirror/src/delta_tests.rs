use super::*;
use crate::apply::Applier;
use lifeline_delta::{diff, DeltaStats};
use lifeline_proto::v1::{op, CopyRange, DeltaInstr, Op, OpError};
use lifeline_store::StoreLayout;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::path::PathBuf;

struct Fix {
    store: tempfile::TempDir,
    mirror: Mirror,
    applier: Applier,
    seq: u64,
}

fn machine() -> MachineName {
    MachineName::new("m").unwrap()
}

impl Fix {
    fn new() -> Fix {
        let store = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(&StoreLayout::new(store.path()), &machine()).unwrap();
        let applier = Fix::applier(store.path(), &mirror);
        Fix { store, mirror, applier, seq: 0 }
    }

    fn applier(store: &Path, mirror: &Mirror) -> Applier {
        Applier::new(mirror.clone(), "m")
            .with_partial(PartialRecord::open(&StoreLayout::new(store), &machine()).unwrap())
    }

    fn root(&self) -> PathBuf {
        self.mirror.path().to_path_buf()
    }

    fn put(&self, rel: &str, content: &[u8]) {
        let p = self.root().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        fs::read(self.root().join(rel)).unwrap()
    }

    /// The signature the receiver would send for `rel`, reassembled.
    fn signature(&self, rel: &str, block_len: u32) -> (Signature, Vec<u8>) {
        let (file, st) = open_base(&self.mirror, rel.as_bytes()).unwrap();
        let mut msgs = Vec::new();
        send_signature(&file, &st, block_len, 0, |m| {
            msgs.push(m);
            true
        })
        .unwrap();
        let h = msgs[0].header.clone().expect("first message has the header");
        assert!(msgs[1..].iter().all(|m| m.header.is_none()));
        let sig = Signature {
            block_len: h.block_len,
            strong_len: h.strong_len as u8,
            base_len: h.base_len,
            weak: msgs.iter().flat_map(|m| m.weak.iter().copied()).collect(),
            strong: msgs.iter().flat_map(|m| m.strong.iter().copied()).collect(),
        };
        sig.validate().unwrap();
        (sig, h.base_token)
    }

    fn apply(&mut self, rel: &str, d: FileDelta) -> Result<(), OpError> {
        self.seq += 1;
        self.applier.apply(&Op {
            seq: self.seq,
            path: rel.as_bytes().to_vec(),
            origin: 0,
            kind: Some(op::Kind::Delta(d)),
        })
    }

    fn apply_all(&mut self, rel: &str, pieces: Vec<FileDelta>) -> Vec<OpError> {
        pieces.into_iter().filter_map(|p| self.apply(rel, p).err()).collect()
    }

    /// Names in `rel`'s directory that are delta temporary files.
    fn temps(&self, dir: &str) -> Vec<String> {
        fs::read_dir(self.root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    fn record_len(&self) -> u64 {
        fs::metadata(self.store.path().join("partial/m")).unwrap().len()
    }
}

fn attr(mode: u32) -> Attr {
    Attr { mode, mtime_sec: 1_600_000_000, mtime_nsec: 5, uid: None, gid: None }
}

fn instr(op: DeltaOp) -> DeltaInstr {
    DeltaInstr {
        kind: Some(match op {
            DeltaOp::Copy { offset, len } => delta_instr::Kind::Copy(CopyRange { offset, len }),
            DeltaOp::Literal(b) => delta_instr::Kind::Literal(b),
        }),
    }
}

fn copy(offset: u64, len: u64) -> DeltaInstr {
    instr(DeltaOp::Copy { offset, len })
}

fn lit(b: &[u8]) -> DeltaInstr {
    instr(DeltaOp::Literal(b.to_vec()))
}

/// The agent's side: `new` diffed against `sig`, cut into pieces of at most
/// `per_piece` instructions.
fn pieces(sig: &Signature, token: &[u8], new: &[u8], per_piece: usize) -> Vec<FileDelta> {
    let mut ops = Vec::new();
    let stats = diff(sig, new, 4096, |o| {
        ops.push(o);
        Ok(())
    })
    .unwrap();
    cut(sig.base_len, token, ops.into_iter().map(instr).collect(), &stats, per_piece)
}

fn cut(base_len: u64, token: &[u8], instrs: Vec<DeltaInstr>, stats: &DeltaStats, per_piece: usize) -> Vec<FileDelta> {
    let mut out: Vec<FileDelta> =
        instrs.chunks(per_piece.max(1)).map(|c| FileDelta { instrs: c.to_vec(), ..Default::default() }).collect();
    if out.is_empty() {
        out.push(FileDelta::default());
    }
    out[0].first = true;
    out[0].base_len = base_len;
    out[0].base_token = token.to_vec();
    out[0].max_len = stats.new_len;
    let last = out.last_mut().unwrap();
    last.last = true;
    last.new_len = stats.new_len;
    last.new_hash = stats.new_hash.to_vec();
    last.attr = Some(attr(0o640));
    out
}

fn stats_of(new: &[u8]) -> DeltaStats {
    DeltaStats { new_len: new.len() as u64, copied: 0, literal: 0, new_hash: *blake3::hash(new).as_bytes() }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_delta_in_many_pieces_rebuilds_the_file_and_replaces_it_atomically() {
    let mut f = Fix::new();
    let base = random(300 << 10, 1);
    f.put("d/f", &base);
    let ino_before = fs::metadata(f.root().join("d/f")).unwrap().ino();
    let (sig, token) = f.signature("d/f", 1024);
    let mut new = base.clone();
    new[5000..5100].fill(7);
    new.splice(100_000..100_000, b"inserted".iter().copied());
    new.drain(200_000..203_000);
    new.extend_from_slice(b"appended at the end");
    let pieces = pieces(&sig, &token, &new, 1);
    assert!(pieces.len() > 3, "{} pieces", pieces.len());
    let n = pieces.len();
    for (i, p) in pieces.into_iter().enumerate() {
        f.apply("d/f", p).unwrap();
        if i + 1 < n {
            // Until the last piece the mirror holds the old file.
            assert_eq!(f.read("d/f"), base);
        }
    }
    assert_eq!(f.read("d/f"), new);
    let md = fs::metadata(f.root().join("d/f")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 5));
    assert_ne!(md.ino(), ino_before, "replaced by a rename");
    assert!(f.temps("d").is_empty());
    assert_eq!(f.record_len(), 0);
}

#[test]
fn a_file_with_only_a_new_mtime_is_checked_and_not_rewritten() {
    let mut f = Fix::new();
    let base = random(100 << 10, 2);
    f.put("f", &base);
    let ino = fs::metadata(f.root().join("f")).unwrap().ino();
    let (sig, token) = f.signature("f", 0);
    let p = pieces(&sig, &token, &base, 100);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].instrs.len(), 1, "one copy of everything");
    f.apply("f", p.into_iter().next().unwrap()).unwrap();
    let md = fs::metadata(f.root().join("f")).unwrap();
    assert_eq!(md.ino(), ino, "set in place");
    assert_eq!(md.mtime(), 1_600_000_000);
    assert_eq!(f.read("f"), base);
    assert!(f.temps("").is_empty());

    // The same with a wrong hash: refused, nothing changed.
    let (sig, token) = f.signature("f", 0);
    let mut p = pieces(&sig, &token, &base, 100);
    p[0].new_hash[0] ^= 1;
    p[0].attr = Some(attr(0o600));
    let e = f.apply("f", p.remove(0)).unwrap_err();
    assert!(e.delta_failed && e.message.contains("blake3"), "{e:?}");
    assert_eq!(fs::metadata(f.root().join("f")).unwrap().permissions().mode() & 0o777, 0o640);
}

#[test]
fn hostile_copy_ranges_fail_the_delta_and_leave_the_target_alone() {
    let mut f = Fix::new();
    let base = random(64 << 10, 3);
    f.put("d/f", &base);
    let bad: Vec<Vec<DeltaInstr>> = vec![
        // Past the end of the base.
        vec![copy(60 << 10, 8 << 10)],
        // Overflowing a u64.
        vec![copy(u64::MAX - 5, 10)],
        // After some output was written (the temporary file exists).
        vec![lit(b"abc"), copy(1, 1 << 40)],
        // Longer than announced.
        vec![copy(0, 1000), lit(&[0; 2000])],
        // In place, then past the end.
        vec![copy(0, 64 << 10), copy(64 << 10, 1)],
    ];
    for instrs in bad {
        let (sig, token) = f.signature("d/f", 0);
        let _ = sig;
        let mut p = cut(base.len() as u64, &token, vec![lit(b"x")], &stats_of(b"x"), 1);
        p[0].last = false;
        p[0].max_len = 2000;
        p[0].instrs = instrs;
        // Two more pieces: the rest of the delta is ignored, not reported again.
        p.push(FileDelta { instrs: vec![lit(b"more")], ..Default::default() });
        p.push(FileDelta { last: true, new_len: 1, new_hash: stats_of(b"x").new_hash.to_vec(), ..Default::default() });
        let errors = f.apply_all("d/f", p);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].delta_failed, "{errors:?}");
        assert_eq!(f.read("d/f"), base);
        assert!(f.temps("d").is_empty(), "{:?}", f.temps("d"));
        assert_eq!(f.record_len(), 0);
    }
    // A good delta still applies afterwards.
    let (sig, token) = f.signature("d/f", 0);
    let mut new = base.clone();
    new[10] ^= 1;
    assert!(f.apply_all("d/f", pieces(&sig, &token, &new, 2)).is_empty());
    assert_eq!(f.read("d/f"), new);
}

#[test]
fn a_base_changed_since_its_signature_is_refused() {
    let mut f = Fix::new();
    let base = random(64 << 10, 4);
    f.put("f", &base);
    let (sig, token) = f.signature("f", 0);
    let mut new = base.clone();
    new[100] ^= 1;
    let p = pieces(&sig, &token, &new, 1);
    // Same length, other content, written after the signature.
    let other = random(64 << 10, 5);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::OpenOptions::new().write(true).open(f.root().join("f")).unwrap().write_all_at(&other, 0).unwrap();
    let errors = f.apply_all("f", p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].delta_failed && errors[0].message.contains("changed since its signature"), "{errors:?}");
    assert_eq!(f.read("f"), other);
    assert!(f.temps("").is_empty());

    // Replaced by another file (another inode): refused too.
    let (sig, token) = f.signature("f", 0);
    let p = pieces(&sig, &token, &new, 1);
    fs::remove_file(f.root().join("f")).unwrap();
    f.put("f", &other);
    let errors = f.apply_all("f", p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(f.read("f"), other);

    // Gone: refused.
    let (sig, token) = f.signature("f", 0);
    let p = pieces(&sig, &token, &new, 1);
    fs::remove_file(f.root().join("f")).unwrap();
    let errors = f.apply_all("f", p);
    assert!(errors.len() == 1 && errors[0].message.contains("gone"), "{errors:?}");
    assert!(!f.root().join("f").exists());
}

#[test]
fn a_hash_mismatch_replaces_nothing_and_removes_the_temporary_file() {
    let mut f = Fix::new();
    let base = random(200 << 10, 6);
    f.put("d/f", &base);
    let (sig, token) = f.signature("d/f", 1024);
    let mut new = base.clone();
    new[150_000..150_010].fill(1);
    let mut p = pieces(&sig, &token, &new, 1);
    p.last_mut().unwrap().new_hash[31] ^= 0x80;
    let errors = f.apply_all("d/f", p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].delta_failed && errors[0].message.contains("hash mismatch"), "{errors:?}");
    assert_eq!(f.read("d/f"), base);
    assert!(f.temps("d").is_empty());
    // A wrong length likewise.
    let mut p = pieces(&sig, &token, &new, 1);
    p.last_mut().unwrap().new_len -= 1;
    let errors = f.apply_all("d/f", p);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(f.read("d/f"), base);
    assert!(f.temps("d").is_empty());
}

#[test]
fn an_abandoned_or_aborted_delta_leaves_nothing_behind() {
    let mut f = Fix::new();
    let base = random(64 << 10, 7);
    f.put("d/f", &base);
    let (_, token) = f.signature("d/f", 0);
    let start = || FileDelta {
        first: true,
        base_len: 64 << 10,
        base_token: token.clone(),
        max_len: 1 << 20,
        instrs: vec![lit(b"new content")],
        ..Default::default()
    };
    // The agent gives up: no error, nothing changed.
    f.apply("d/f", start()).unwrap();
    assert_eq!(f.temps("d").len(), 1);
    assert!(f.record_len() > 0);
    f.apply("d/f", FileDelta { last: true, abort: true, ..Default::default() }).unwrap();
    assert!(f.temps("d").is_empty());
    assert_eq!(f.read("d/f"), base);

    // Another op in the middle of a delta: dropped; a later piece fails once.
    f.apply("d/f", start()).unwrap();
    f.seq += 1;
    f.applier
        .apply(&Op { seq: f.seq, path: b"d/g".to_vec(), origin: 0, kind: Some(op::Kind::Mkdir(Default::default())) })
        .unwrap();
    assert!(f.temps("d").is_empty());
    let e = f.apply("d/f", FileDelta { instrs: vec![lit(b"x")], ..Default::default() }).unwrap_err();
    assert!(e.delta_failed && e.message.contains("start"), "{e:?}");
    f.apply("d/f", FileDelta { last: true, ..Default::default() }).unwrap();

    // The stream ends mid-delta: the applier's drop removes the file.
    f.apply("d/f", start()).unwrap();
    assert_eq!(f.temps("d").len(), 1);
    let applier = std::mem::replace(&mut f.applier, Applier::new(f.mirror.clone(), "m"));
    drop(applier);
    assert!(f.temps("d").is_empty());
    assert_eq!(f.record_len(), 0);

    // A receiver killed mid-delta (nothing dropped): the next stream's
    // applier removes the file the record names.
    f.applier = Fix::applier(f.store.path(), &f.mirror);
    f.apply("d/f", start()).unwrap();
    assert_eq!(f.temps("d").len(), 1);
    let applier = std::mem::replace(&mut f.applier, Applier::new(f.mirror.clone(), "m"));
    std::mem::forget(applier);
    assert_eq!(f.temps("d").len(), 1);
    let _next = Fix::applier(f.store.path(), &f.mirror);
    assert!(f.temps("d").is_empty());
    assert_eq!(f.record_len(), 0);
    assert_eq!(f.read("d/f"), base);
}

#[test]
fn a_damaged_record_removes_nothing_but_delta_files() {
    let f = Fix::new();
    f.put("keep", b"user data");
    fs::write(f.store.path().join("partial/m"), b"keep").unwrap();
    let _a = Fix::applier(f.store.path(), &f.mirror);
    assert_eq!(f.read("keep"), b"user data");
    assert_eq!(f.record_len(), 0);
}

#[test]
fn signatures_only_of_regular_files_inside_the_mirror() {
    let f = Fix::new();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"outside").unwrap();
    f.put("d/f", b"inside");
    fs::create_dir(f.root().join("dir")).unwrap();
    symlink(outside.path().join("secret"), f.root().join("link")).unwrap();
    symlink(outside.path(), f.root().join("linkdir")).unwrap();
    f.put("two", b"linked");
    fs::hard_link(f.root().join("two"), f.root().join("two.b")).unwrap();
    let code = |p: &str| open_base(&f.mirror, p.as_bytes()).err().map(|s| s.code());
    assert_eq!(code("d/f"), None);
    assert_eq!(code("missing"), Some(tonic::Code::NotFound));
    assert_eq!(code("d/f/below"), Some(tonic::Code::NotFound));
    assert_eq!(code("dir"), Some(tonic::Code::FailedPrecondition));
    assert_eq!(code("link"), Some(tonic::Code::FailedPrecondition));
    assert_eq!(code("linkdir/secret"), Some(tonic::Code::FailedPrecondition));
    assert_eq!(code("two"), Some(tonic::Code::FailedPrecondition));

    // Chunked: a 4 MiB file in 64-byte blocks has 1.25 MiB of hashes.
    f.put("big", &random(4 << 20, 8));
    let (file, st) = open_base(&f.mirror, b"big").unwrap();
    let mut n = 0;
    let mut size = 0;
    send_signature(&file, &st, 64, 16, |m| {
        n += 1;
        size += m.weak.len() * 4 + m.strong.len();
        assert!(m.weak.len() * 4 + m.strong.len() <= SIG_MSG_BYTES);
        true
    })
    .unwrap();
    assert!(n >= 2 && size == (4 << 20) / 64 * 20, "{n} messages, {size} bytes");
    // An empty file: one message, the header alone.
    f.put("empty", b"");
    let (file, st) = open_base(&f.mirror, b"empty").unwrap();
    let mut msgs = Vec::new();
    send_signature(&file, &st, 0, 0, |m| {
        msgs.push(m);
        true
    })
    .unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].header.as_ref().unwrap().base_len, 0);
    // Out of range parameters.
    let e = send_signature(&file, &st, 3, 0, |_| true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

/// The signature of a sparse file (holes skipped, issue 14 finding 7) is
/// the signature of its bytes read in full: data at the start, inside a
/// block, across a block boundary, at the end in a partial last block, and
/// holes of whole and partial blocks between.
#[test]
fn sparse_files_sign_as_their_bytes() {
    let f = Fix::new();
    let path = f.root().join("sparse");
    let file = fs::File::create(&path).unwrap();
    let bl = 4096u64;
    let len = 1000 * bl + 123;
    file.set_len(len).unwrap();
    for (at, n) in [(0, 10), (5 * bl + 100, 50), (40 * bl - 7, 20), (300 * bl, 3 * bl), (len - 60, 60)] {
        file.write_all_at(&random(n as usize, at), at).unwrap();
    }
    drop(file);
    for block_len in [4096, 64 << 10] {
        let (sig, _) = f.signature("sparse", block_len);
        let full = Signature::compute(fs::read(&path).unwrap().as_slice(), len, block_len, DEFAULT_STRONG_LEN).unwrap();
        assert_eq!(sig, full, "block length {block_len}");
    }
    // A file of holes only, with a partial last block.
    fs::File::create(f.root().join("holes")).unwrap().set_len(10 * bl + 1).unwrap();
    let (sig, _) = f.signature("holes", 4096);
    assert_eq!(sig, Signature::compute(io::repeat(0), 10 * bl + 1, 4096, DEFAULT_STRONG_LEN).unwrap());
}

/// A 1 TiB sparse file with 4 KiB of data: its signature costs what the
/// file holds (issue 14: 13 hours when every hole was read and hashed).
/// Without hole-skipping this test would not end within CI's time.
#[test]
fn a_huge_sparse_file_is_signed_by_its_data() {
    let f = Fix::new();
    let path = f.root().join("huge");
    let file = fs::File::create(&path).unwrap();
    let len = 1u64 << 40;
    file.set_len(len).unwrap();
    let data = random(4096, 3);
    file.write_all_at(&data, len / 2).unwrap();
    drop(file);
    let (sig, _) = f.signature("huge", 0);
    let bl = u64::from(sig.block_len);
    assert_eq!(sig.weak.len() as u64, len / bl);
    let zero = Signature::compute(io::repeat(0), bl, sig.block_len, DEFAULT_STRONG_LEN).unwrap();
    let mut block = vec![0u8; bl as usize];
    block[..4096].copy_from_slice(&data);
    let with_data = Signature::compute(block.as_slice(), bl, sig.block_len, DEFAULT_STRONG_LEN).unwrap();
    let i = (len / 2 / bl) as usize;
    assert_eq!(sig.weak[i], with_data.weak[0]);
    assert_eq!(sig.weak[0], zero.weak[0]);
    assert_eq!(sig.weak[i + 1], zero.weak[0]);
}

#[test]
fn a_delta_keeps_setuid_off_the_rebuilt_file_and_in_its_listing() {
    use crate::apply::tests::{assert_no_privileged_bits, kept_mode, listed_modes};
    let mut f = Fix::new();
    let base = random(64 << 10, 3);
    f.seq += 1;
    let whole = lifeline_proto::v1::FileData {
        replace: false,
        truncate_to: Some(0),
        chunks: vec![lifeline_proto::v1::Chunk { offset: 0, data: base.clone() }],
        size: base.len() as u64,
        attr: Some(attr(0o4755)),
    };
    f.applier
        .apply(&Op { seq: f.seq, path: b"bin/su".to_vec(), origin: 0, kind: Some(op::Kind::Data(whole)) })
        .unwrap();
    assert_no_privileged_bits(&f.root());

    // Rebuilt with the mode sent again.
    let mut new = base.clone();
    new[100..200].fill(1);
    let (sig, token) = f.signature("bin/su", 1024);
    let mut p = pieces(&sig, &token, &new, 100);
    p.last_mut().unwrap().attr = Some(attr(0o4755));
    assert!(f.apply_all("bin/su", p).is_empty());
    assert_eq!(f.read("bin/su"), new);
    assert_no_privileged_bits(&f.root());
    assert_eq!(kept_mode(&f.root().join("bin/su")).as_deref(), Some("4755"));
    assert_eq!(listed_modes(&f.mirror, b"bin")["bin/su"], 0o4755);

    // Rebuilt with no attributes: the base's mode as sent, not as stored.
    new[300..400].fill(2);
    let (sig, token) = f.signature("bin/su", 1024);
    let mut p = pieces(&sig, &token, &new, 100);
    p.last_mut().unwrap().attr = None;
    assert!(f.apply_all("bin/su", p).is_empty());
    assert_eq!(f.read("bin/su"), new);
    assert_no_privileged_bits(&f.root());
    assert_eq!(listed_modes(&f.mirror, b"bin")["bin/su"], 0o4755);

    // Unchanged content, setgid now: set in place.
    let (sig, token) = f.signature("bin/su", 1024);
    let mut p = pieces(&sig, &token, &new, 100);
    p.last_mut().unwrap().attr = Some(attr(0o2755));
    assert!(f.apply_all("bin/su", p).is_empty());
    assert_no_privileged_bits(&f.root());
    assert_eq!(listed_modes(&f.mirror, b"bin")["bin/su"], 0o2755);
}
