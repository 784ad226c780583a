//! The agent's side: stream the new file against the base's signature.

use std::io::{self, Read};

use crate::rolling::{self, weak_hash};
use crate::{DeltaOp, DeltaStats, Signature};

/// Literal ops are never longer than this, whatever `max_literal` says: the
/// pending literal is buffered, so this bounds the diff's memory.
pub const MAX_LITERAL_CAP: usize = 16 << 20;

/// How much of the new file is read at once (and fed to the whole-file hash
/// at once, which is where blake3 is fastest).
const READ_CHUNK: usize = 1 << 20;

/// At most this many base blocks with the same weak hash but different
/// content are checked at one position. Real data has next to none; a hostile
/// signature (all weak hashes equal) would otherwise cost a strong hash per
/// block per byte of the new file.
const MAX_CANDIDATES: usize = 8;

/// Streams `new` against `sig`, calling `sink` with each op in order.
///
/// Adjacent copies are merged into one op (a 1 GiB unchanged file is one
/// `Copy`, emitted at the end); literal ops are at most `max_literal` bytes
/// (clamped to `1..=`[`MAX_LITERAL_CAP`]). The returned stats carry the
/// length and blake3 of everything read from `new`, which the receiver checks
/// after patching: a strong-hash collision (or a file changing under the
/// reader) shows there, and the caller falls back to a full copy.
///
/// Matching is rsync's: a rolling weak hash of the window at every position,
/// a table lookup, a strong hash to confirm. Before that, right after a copy
/// of base block `i` (and at the start, for block 0), the window is checked
/// against block `i + 1` directly: databases and VM images change in place, so
/// this almost always hits and costs one blake3 per block, with no rolling
/// and no table lookup. After an edit the rolling search finds the next
/// unchanged block, then the in-place check takes over again. Inserted or
/// deleted bytes are found by the rolling search the same way. The base's
/// last block may be short: it matches where the in-place check expects it
/// (a file that grew) and at the very end of `new` (a file whose tail is
/// unchanged).
///
/// Memory: `sig`, a match table of about 12 bytes per block (entries, buckets)
/// plus a filter of 4–8 bytes per block, and one buffer of
/// `max_literal + block_len + 1 MiB`.
///
/// Errors: `InvalidInput` if `sig` fails [`Signature::validate`], else the
/// errors of `new` and `sink`.
pub fn diff(
    sig: &Signature,
    new: impl Read,
    max_literal: usize,
    sink: impl FnMut(DeltaOp) -> io::Result<()>,
) -> io::Result<DeltaStats> {
    sig.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let max_lit = max_literal.clamp(1, MAX_LITERAL_CAP);
    let index = Index::build(sig);
    let b = sig.block_len as usize;
    let m_len = rolling::pow(b as u64);
    let blocks = sig.blocks();
    let mut input = Input::new(new, max_lit + b + READ_CHUNK);
    let mut out = Emitter { sink, max_lit, pending_copy: None, copied: 0, literal: 0 };
    // Short last block, matched outside the table.
    let tail_block = (sig.base_len % b as u64 != 0).then(|| blocks - 1);
    let mut hint: Option<usize> = (blocks > 0).then_some(0);

    'fresh: loop {
        // A fresh position: nothing pending, `pos == lit`.
        input.fill_to(b)?;
        let avail = input.end - input.pos;
        if avail == 0 {
            break;
        }
        if let Some(h) = hint {
            let hl = sig.len_of(h);
            if avail >= hl && strong_eq(sig, h, &input.buf[input.pos..input.pos + hl]) {
                out.copy(h as u64 * b as u64, hl as u64)?;
                input.pos += hl;
                input.lit = input.pos;
                hint = (h + 1 < blocks).then_some(h + 1);
                continue;
            }
        }
        if avail < b {
            break; // end of input, fewer bytes than a block left
        }
        let mut weak = weak_hash(&input.buf[input.pos..input.pos + b]);
        loop {
            // Examine positions up to `limit`: the window must fit in the
            // buffer and the pending literal must stay below `max_lit`.
            let limit = (input.end - b).min(input.lit + max_lit - 1);
            let (p, w, found) = scan(&input.buf, input.pos, limit, weak, b, m_len, &index, sig);
            input.pos = p;
            weak = w;
            if let Some(i) = found {
                out.literal(&input.buf[input.lit..input.pos])?;
                out.copy(i as u64 * b as u64, b as u64)?;
                input.pos += b;
                input.lit = input.pos;
                hint = (i + 1 < blocks).then_some(i + 1);
                continue 'fresh;
            }
            if input.pos + b == input.end {
                input.fill()?;
                if input.pos + b == input.end {
                    break 'fresh; // end of input
                }
            }
            weak = rolling::roll(weak, input.buf[input.pos], input.buf[input.pos + b], m_len);
            input.pos += 1;
            if input.pos - input.lit == max_lit {
                out.literal(&input.buf[input.lit..input.pos])?;
                input.lit = input.pos;
            }
        }
    }

    // End of input: `buf[lit..end]` is pending literal, shorter than a block
    // plus `max_lit`. Only the base's short last block can still match, and
    // only as the very last bytes.
    let rest = &input.buf[input.lit..input.end];
    let mut tail_copy = None;
    if let Some(t) = tail_block {
        let tl = sig.len_of(t);
        if rest.len() >= tl {
            let cand = &rest[rest.len() - tl..];
            if weak_hash(cand) == sig.weak[t] && strong_eq(sig, t, cand) {
                tail_copy = Some((t, tl));
            }
        }
    }
    match tail_copy {
        Some((t, tl)) => {
            out.literal(&rest[..rest.len() - tl])?;
            out.copy(t as u64 * b as u64, tl as u64)?;
        }
        None => out.literal(rest)?,
    }
    out.flush_copy()?;
    Ok(DeltaStats {
        new_len: input.total,
        copied: out.copied,
        literal: out.literal,
        new_hash: *input.hasher.finalize().as_bytes(),
    })
}

/// Rolls the window from `pos` to at most `limit` (inclusive), stopping at the
/// first position whose window matches a base block. Returns the last position
/// examined, its weak hash and the matching block.
#[allow(clippy::too_many_arguments)]
#[inline]
fn scan(
    buf: &[u8],
    mut pos: usize,
    limit: usize,
    mut weak: u32,
    b: usize,
    m_len: u32,
    index: &Index,
    sig: &Signature,
) -> (usize, u32, Option<usize>) {
    loop {
        if index.maybe(weak) {
            if let Some(i) = index.find(weak, &buf[pos..pos + b], sig) {
                return (pos, weak, Some(i));
            }
        }
        if pos >= limit {
            return (pos, weak, None);
        }
        weak = rolling::roll(weak, buf[pos], buf[pos + b], m_len);
        pos += 1;
    }
}

fn strong_eq(sig: &Signature, block: usize, data: &[u8]) -> bool {
    let sl = sig.strong_len as usize;
    blake3::hash(data).as_bytes()[..sl] == *sig.strong_of(block)
}

/// The new file, read through one buffer. `buf[lit..pos]` is the pending
/// literal (bytes no block matched), the window starts at `pos`, `end` is how
/// far the buffer is filled.
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    lit: usize,
    pos: usize,
    end: usize,
    eof: bool,
    total: u64,
    hasher: blake3::Hasher,
}

impl<R: Read> Input<R> {
    fn new(reader: R, cap: usize) -> Self {
        Input { reader, buf: vec![0; cap], lit: 0, pos: 0, end: 0, eof: false, total: 0, hasher: blake3::Hasher::new() }
    }

    /// Reads until at least `n` bytes are available at `pos` or the input ends.
    fn fill_to(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.pos < n && !self.eof {
            self.fill()?;
        }
        Ok(())
    }

    /// Moves `buf[lit..end]` to the front, then reads until the buffer is full
    /// or the input ends. The buffer is sized so that this always frees at
    /// least `READ_CHUNK` bytes (the pending literal is < `max_lit`, the window
    /// ≤ a block).
    fn fill(&mut self) -> io::Result<()> {
        if self.eof {
            return Ok(());
        }
        if self.lit > 0 {
            self.buf.copy_within(self.lit..self.end, 0);
            self.pos -= self.lit;
            self.end -= self.lit;
            self.lit = 0;
        }
        let start = self.end;
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.hasher.update(&self.buf[start..self.end]);
        self.total += (self.end - start) as u64;
        Ok(())
    }
}

/// Turns matches and literal bytes into ops: merges adjacent copies, cuts
/// literals at `max_lit`.
struct Emitter<F> {
    sink: F,
    max_lit: usize,
    pending_copy: Option<(u64, u64)>,
    copied: u64,
    literal: u64,
}

impl<F: FnMut(DeltaOp) -> io::Result<()>> Emitter<F> {
    fn copy(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.copied += len;
        if let Some((o, l)) = &mut self.pending_copy {
            if *o + *l == offset {
                *l += len;
                return Ok(());
            }
        }
        self.flush_copy()?;
        self.pending_copy = Some((offset, len));
        Ok(())
    }

    fn literal(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        self.literal += data.len() as u64;
        for piece in data.chunks(self.max_lit) {
            (self.sink)(DeltaOp::Literal(piece.to_vec()))?;
        }
        Ok(())
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((offset, len)) = self.pending_copy.take() {
            (self.sink)(DeltaOp::Copy { offset, len })?;
        }
        Ok(())
    }
}

/// Full base blocks by weak hash.
///
/// `entries` holds `(weak, block)` sorted by weak, so all candidates for a
/// weak hash are adjacent; `starts` cuts it into buckets by the weak hash's
/// top bits (about one entry per bucket; a bucket a hostile signature filled
/// is binary-searched). Blocks identical to an earlier block (same weak and
/// strong: runs of zeros, say) are dropped: the first one serves, and the
/// in-place check still finds the others in sequence. In front sits a Bloom
/// filter, 32–64 bits per block, small enough to stay in cache: in changed data
/// nearly all positions stop there.
struct Index {
    filter: Vec<u64>,
    filter_bits: u32,
    bucket_shift: u32,
    starts: Vec<u32>,
    entries: Vec<(u32, u32)>,
}

impl Index {
    fn build(sig: &Signature) -> Index {
        let full = (sig.base_len / sig.block_len as u64) as usize;
        let bits = usize::BITS - full.max(2).next_power_of_two().leading_zeros() - 1; // ceil(log2)
        let bucket_bits = bits.clamp(1, 31);
        let filter_bits = (bits + 5).clamp(12, 32);
        let mut entries: Vec<(u32, u32)> = (0..full).map(|i| (sig.weak[i], i as u32)).collect();
        entries.sort_unstable();
        // Drop duplicates and cap candidates per weak value.
        let mut kept: Vec<(u32, u32)> = Vec::with_capacity(entries.len());
        let mut run_start = 0;
        for &(w, i) in &entries {
            if kept.get(run_start).is_none_or(|&(rw, _)| rw != w) {
                run_start = kept.len();
            }
            let run = &kept[run_start..];
            if run.len() >= MAX_CANDIDATES
                || run.iter().any(|&(_, j)| sig.strong_of(j as usize) == sig.strong_of(i as usize))
            {
                continue;
            }
            kept.push((w, i));
        }
        let entries = kept;
        let mut filter = vec![0u64; (1usize << filter_bits) / 64];
        let bucket_shift = 32 - bucket_bits;
        let mut starts = vec![0u32; (1usize << bucket_bits) + 1];
        for &(w, _) in &entries {
            let (a, b) = filter_slots(w, filter_bits);
            filter[a / 64] |= 1 << (a % 64);
            filter[b / 64] |= 1 << (b % 64);
            starts[(w >> bucket_shift) as usize + 1] += 1;
        }
        for k in 1..starts.len() {
            starts[k] += starts[k - 1];
        }
        Index { filter, filter_bits, bucket_shift, starts, entries }
    }

    /// False if no full block has this weak hash; true if one probably has.
    #[inline(always)]
    fn maybe(&self, weak: u32) -> bool {
        let (a, b) = filter_slots(weak, self.filter_bits);
        self.filter[a / 64] & (1 << (a % 64)) != 0 && self.filter[b / 64] & (1 << (b % 64)) != 0
    }

    /// The first block whose weak and strong hashes match `window`.
    fn find(&self, weak: u32, window: &[u8], sig: &Signature) -> Option<usize> {
        let bucket = (weak >> self.bucket_shift) as usize;
        let slice = &self.entries[self.starts[bucket] as usize..self.starts[bucket + 1] as usize];
        let first = slice.partition_point(|&(w, _)| w < weak);
        let mut strong: Option<blake3::Hash> = None;
        for &(w, i) in &slice[first..] {
            if w != weak {
                break;
            }
            let s = strong.get_or_insert_with(|| blake3::hash(window));
            if s.as_bytes()[..sig.strong_len as usize] == *sig.strong_of(i as usize) {
                return Some(i as usize);
            }
        }
        None
    }
}

/// The two filter bits of a weak hash (a Bloom filter with k = 2), from
/// disjoint bits of a multiplicative mix, so the filter is uniform even if
/// the weak hashes' top bits are not. At 32 bits per block this lets 0.4 % of
/// non-matching positions through, against 3 % with a single bit.
#[inline(always)]
fn filter_slots(weak: u32, bits: u32) -> (usize, usize) {
    let h = (weak as u64 ^ 0x5bd1_e995).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mask = (1u64 << bits) - 1;
    ((h >> (64 - bits)) as usize, ((h >> (64 - 2 * bits)) & mask) as usize)
}
