//! A tiny rdiff-like CLI over lifeline-delta, for `bench/delta.py`.
//!
//! ```text
//! lldelta signature [--block-len N] [--strong-len N] BASE SIG
//! lldelta delta SIG NEW DELTA
//! lldelta patch BASE DELTA OUT
//! ```
//!
//! File formats (little-endian), private to this tool:
//! - signature: `block_len u32, strong_len u8, base_len u64`, then every weak
//!   hash (u32), then the strong hashes: exactly [`Signature::wire_size`] bytes.
//! - delta: ops, each `b'C' offset u64 len u64` or `b'L' len u32 bytes`, then
//!   `b'E' new_len u64 blake3[32]`.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::process::ExitCode;
use std::time::Instant;

use lifeline_delta::{diff, DeltaOp, Patcher, Signature, DEFAULT_STRONG_LEN, MAX_LITERAL_CAP};

/// The wire's chunk limit, which the agent will pass as `max_literal`.
const MAX_LITERAL: usize = 1 << 20;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("signature") => signature(&args[1..]),
        Some("delta") if args.len() == 4 => delta(&args[1], &args[2], &args[3]),
        Some("patch") if args.len() == 4 => patch(&args[1], &args[2], &args[3]),
        _ => Err("usage: lldelta signature [--block-len N] [--strong-len N] BASE SIG | delta SIG NEW DELTA | patch BASE DELTA OUT".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lldelta: {e}");
            ExitCode::FAILURE
        }
    }
}

fn signature(args: &[String]) -> Result<()> {
    let mut block_len = None;
    let mut strong_len = DEFAULT_STRONG_LEN;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--block-len" => block_len = Some(it.next().ok_or("--block-len N")?.parse()?),
            "--strong-len" => strong_len = it.next().ok_or("--strong-len N")?.parse()?,
            _ => files.push(a),
        }
    }
    let [base, out] = files[..] else {
        return Err("signature [--block-len N] [--strong-len N] BASE SIG".into());
    };
    let t = Instant::now();
    let base = File::open(base)?;
    let base_len = base.metadata()?.len();
    let block_len = block_len.unwrap_or_else(|| Signature::block_len_for(base_len));
    let sig = Signature::compute(base, base_len, block_len, strong_len)?;
    let mut w = BufWriter::new(File::create(out)?);
    w.write_all(&sig.block_len.to_le_bytes())?;
    w.write_all(&[sig.strong_len])?;
    w.write_all(&sig.base_len.to_le_bytes())?;
    for weak in &sig.weak {
        w.write_all(&weak.to_le_bytes())?;
    }
    w.write_all(&sig.strong)?;
    w.flush()?; // no fsync: rdiff does not either
    eprintln!(
        "signature: {} blocks of {} bytes, {} bytes, {:.3} s",
        sig.blocks(),
        sig.block_len,
        sig.wire_size(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn read_signature(path: &str) -> Result<Signature> {
    let mut r = BufReader::new(File::open(path)?);
    let block_len = u32::from_le_bytes(read_array(&mut r)?);
    let [strong_len] = read_array(&mut r)?;
    let base_len = u64::from_le_bytes(read_array(&mut r)?);
    if block_len == 0 {
        return Err("signature with block length 0".into());
    }
    let blocks = Signature::block_count(base_len, block_len);
    // Never allocate more than the file can hold.
    let file_len = std::fs::metadata(path)?.len();
    if blocks.saturating_mul(4 + strong_len as u64) > file_len {
        return Err(format!("signature file {path} is too short for {blocks} blocks").into());
    }
    let mut weak = Vec::with_capacity(blocks as usize);
    for _ in 0..blocks {
        weak.push(u32::from_le_bytes(read_array(&mut r)?));
    }
    let mut strong = vec![0; blocks as usize * strong_len as usize];
    r.read_exact(&mut strong)?;
    let sig = Signature { block_len, strong_len, base_len, weak, strong };
    sig.validate()?;
    Ok(sig)
}

fn delta(sig: &str, new: &str, out: &str) -> Result<()> {
    let t = Instant::now();
    let sig = read_signature(sig)?;
    let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
    let mut ops = 0u64;
    let stats = diff(&sig, File::open(new)?, MAX_LITERAL, |op| {
        ops += 1;
        match op {
            DeltaOp::Copy { offset, len } => {
                w.write_all(b"C")?;
                w.write_all(&offset.to_le_bytes())?;
                w.write_all(&len.to_le_bytes())
            }
            DeltaOp::Literal(data) => {
                w.write_all(b"L")?;
                w.write_all(&(data.len() as u32).to_le_bytes())?;
                w.write_all(&data)
            }
        }
    })?;
    w.write_all(b"E")?;
    w.write_all(&stats.new_len.to_le_bytes())?;
    w.write_all(&stats.new_hash)?;
    w.flush()?; // no fsync: rdiff does not either
    eprintln!(
        "delta: {} bytes new, {} copied, {} literal, {ops} ops, {:.3} s",
        stats.new_len,
        stats.copied,
        stats.literal,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn patch(base: &str, delta: &str, out: &str) -> Result<()> {
    let t = Instant::now();
    let base = File::open(base)?;
    let base_len = base.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, File::open(delta)?);
    let mut p = Patcher::new(base, base_len, BufWriter::with_capacity(1 << 20, File::create(out)?));
    loop {
        let [tag] = read_array(&mut r)?;
        match tag {
            b'C' => {
                let offset = u64::from_le_bytes(read_array(&mut r)?);
                let len = u64::from_le_bytes(read_array(&mut r)?);
                p.push(&DeltaOp::Copy { offset, len })?;
            }
            b'L' => {
                let len = u32::from_le_bytes(read_array(&mut r)?) as usize;
                if len > MAX_LITERAL_CAP {
                    return Err(format!("literal of {len} bytes in the delta").into());
                }
                let mut data = vec![0; len];
                r.read_exact(&mut data)?;
                p.push(&DeltaOp::Literal(data))?;
            }
            b'E' => {
                let new_len = u64::from_le_bytes(read_array(&mut r)?);
                let hash: [u8; 32] = read_array(&mut r)?;
                let mut w = p.finish(new_len, &hash)?;
                w.flush()?; // no fsync: rdiff does not either
                eprintln!("patch: {new_len} bytes, {:.3} s", t.elapsed().as_secs_f64());
                return Ok(());
            }
            other => return Err(format!("bad op tag {other:#x} in the delta").into()),
        }
    }
}

fn read_array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut a = [0; N];
    r.read_exact(&mut a)?;
    Ok(a)
}
