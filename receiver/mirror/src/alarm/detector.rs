//! The ransomware and mass-deletion detector (issue 15; docs/history.md
//! "Alarms"): fed by the applier with what each op changed, it watches a
//! sliding window of the receiver's clock for
//!
//! - (a) files whose beginning is rewritten in place from low-entropy
//!   content to high-entropy content (what encrypting a document does);
//! - (b) renames that add one same new extension in bulk (`x` -> `x.locked`);
//! - (c) mass removals;
//! - (d) content changed with the mtime put back to what it was.
//!
//! Ordinary work must stay quiet, so each signal is narrow: a compiler's
//! or gzip's high-entropy output is *created*, never a rewrite of a
//! low-entropy file; gzip's removal of `x` right after creating `x.gz` is a
//! replacement, not a loss; a package upgrade replaces binaries (created
//! under a temporary name and renamed over, which adds no extension);
//! databases rewrite pages past the start, or high over high, or over empty
//! (zeroed) space, which is not a document.
//!
//! Cost: the applier hands in at most [`SAMPLE`] bytes it already holds per
//! op (the old bytes it read for the history record, the new bytes of the
//! op); no extra read. Memory: every window and set is capped.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use lifeline_history::Clock;

/// How much of a file's beginning is judged (old and new).
pub const SAMPLE: usize = 4096;

/// Samples shorter than this say too little about entropy (a few random
/// bytes cannot show more than log2(n) bits per byte).
const MIN_SAMPLE: usize = 256;

/// Bits per byte at or above which content is taken for encrypted (or
/// compressed): random bytes show ~7.95 on 4 KiB, text 4-5, ELF 5-6.5.
const HIGH_BITS: f64 = 7.5;
/// Below this, content is taken for a document worth encrypting.
const LOW_BITS: f64 = 6.0;

/// When the detector raises, and how long it remembers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The sliding window.
    pub window_ns: i64,
    /// A file removed within this of its creation was a temporary one (a
    /// journal, gzip's original beside its `.gz`): its removal loses
    /// nothing old.
    pub temporary_ns: i64,
    /// (a) low-to-high rewrites in the window.
    pub rewrites: usize,
    /// (b) renames adding one same extension in the window.
    pub renames: usize,
    /// (c) removals in the window not explained by a file created beside
    /// them (gzip).
    pub removals: usize,
    /// (d) content changes with the mtime put back, in the window.
    pub mtime_back: usize,
    /// Signals together: rewrites + renames + 5 x mtimes put back reaching
    /// this raises too (an attack mixing them).
    pub combined: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            window_ns: 60_000_000_000,
            temporary_ns: 10_000_000_000,
            rewrites: 100,
            renames: 100,
            removals: 2000,
            mtime_back: 20,
            combined: 100,
        }
    }
}

/// Entropy of `data` in bits per byte, with the Miller-Madow correction
/// (plain entropy of a short sample is biased low: 512 random bytes show
/// 7.6, not 8).
pub fn entropy_bits(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as f64;
    let (mut h, mut bins) = (0.0, 0u32);
    for &c in counts.iter().filter(|&&c| c > 0) {
        let p = c as f64 / n;
        h -= p * p.log2();
        bins += 1;
    }
    h + (bins as f64 - 1.0) / (2.0 * n * std::f64::consts::LN_2)
}

/// What the beginning of a file looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Looks {
    /// Encrypted or compressed.
    High,
    /// A document: text, code, ordinary binary formats.
    Low,
    /// Too short to say, in between, or mostly one byte (zeroes, free space).
    Unknown,
}

fn looks(sample: &[u8]) -> Looks {
    if sample.len() < MIN_SAMPLE {
        return Looks::Unknown;
    }
    let mut counts = [0u32; 256];
    sample.iter().for_each(|&b| counts[b as usize] += 1);
    if counts.iter().max().copied().unwrap_or(0) as usize * 2 > sample.len() {
        return Looks::Unknown;
    }
    match entropy_bits(sample) {
        h if h >= HIGH_BITS => Looks::High,
        h if h < LOW_BITS => Looks::Low,
        _ => Looks::Unknown,
    }
}

/// Times of events in the window, oldest first, at most `cap` kept (past
/// the limit the alarm is raised anyway).
#[derive(Debug, Default)]
struct Times {
    at: VecDeque<i64>,
}

impl Times {
    fn push(&mut self, t: i64, cap: usize) {
        if self.at.len() >= cap.max(1) {
            self.at.pop_front();
        }
        self.at.push_back(t);
    }

    fn expire(&mut self, before: i64) {
        while self.at.front().is_some_and(|&t| t < before) {
            self.at.pop_front();
        }
    }

    fn len(&self) -> usize {
        self.at.len()
    }

    fn first(&self) -> Option<i64> {
        self.at.front().copied()
    }
}

/// A set of path hashes remembered for the window, at most [`SET_CAP`].
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<(i64, u64)>,
    seen: HashMap<u64, i64>,
}

const SET_CAP: usize = 32 * 1024;
/// Extensions tracked at once for (b).
const EXT_CAP: usize = 64;

impl Recent {
    fn insert(&mut self, t: i64, key: u64) {
        if self.order.len() >= SET_CAP {
            if let Some((_, k)) = self.order.pop_front() {
                self.seen.remove(&k);
            }
        }
        self.order.push_back((t, key));
        self.seen.insert(key, t);
    }

    fn contains(&self, key: u64) -> bool {
        self.seen.contains_key(&key)
    }

    fn expire(&mut self, before: i64) {
        while let Some(&(t, k)) = self.order.front() {
            if t >= before {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&k) == Some(&t) {
                self.seen.remove(&k);
            }
        }
    }
}

fn key(path: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    h.finish()
}

/// `name` without its last extension, if it has one (`a/x.log.gz` ->
/// `a/x.log`); a leading dot is not an extension.
fn stem(path: &[u8]) -> Option<&[u8]> {
    let name_at = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let dot = path[name_at..].iter().rposition(|&b| b == b'.')?;
    (dot > 0).then(|| &path[..name_at + dot])
}

/// The extension a rename adds (`x.txt` -> `x.txt.locked`: `locked`).
fn added_extension<'a>(from: &[u8], to: &'a [u8]) -> Option<&'a [u8]> {
    let rest = to.strip_prefix(from)?.strip_prefix(b".")?;
    (!rest.is_empty() && rest.len() <= 32 && !rest.contains(&b'.') && !rest.contains(&b'/')).then_some(rest)
}

/// What tripped: the alarm's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// The instant just before the first suspicious op of the window.
    pub last_good_ns: i64,
    pub reason: String,
}

/// An overwrite of an existing regular file, as the applier saw it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Overwrite<'a> {
    /// The old bytes at offset 0 the op replaces (up to [`SAMPLE`]); None
    /// when the op does not write at offset 0.
    pub old_head: Option<&'a [u8]>,
    /// The new bytes at offset 0 (up to [`SAMPLE`]).
    pub new_head: Option<&'a [u8]>,
    /// The file's mtime before the op, and the one the op sets (if any).
    pub old_mtime: (i64, u32),
    pub new_mtime: Option<(i64, u32)>,
}

/// One machine's detector.
pub struct Detector {
    clock: Arc<dyn Clock>,
    limits: Limits,
    /// When the op being applied began (its records are stamped later).
    op_start: i64,
    rewrites: Times,
    renames: HashMap<Vec<u8>, Times>,
    removals: Times,
    mtime_back: Times,
    /// Files created in the last [`Limits::temporary_ns`], by their path
    /// and by their stem: a removal of a file made just before (a temporary
    /// file, a database's journal) loses nothing old, and one of `x` just
    /// after `x.gz` was made is gzip's, not a loss.
    created: Recent,
    /// Files whose content changed in the window, with their old mtime: a
    /// setattr putting it back is (d).
    changed: HashMap<u64, (i64, (i64, u32))>,
    /// An alarm stands: no second one is raised.
    standing: bool,
    /// The most each signal reached in a window, for measuring how far
    /// ordinary work stays from the limits: rewrites, renames, removals,
    /// mtimes put back.
    peaks: [usize; 4],
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").field("standing", &self.standing).finish_non_exhaustive()
    }
}

impl Detector {
    pub fn new(clock: Arc<dyn Clock>, limits: Limits) -> Detector {
        Detector {
            clock,
            limits,
            op_start: 0,
            rewrites: Times::default(),
            renames: HashMap::new(),
            removals: Times::default(),
            mtime_back: Times::default(),
            created: Recent::default(),
            changed: HashMap::new(),
            standing: false,
            peaks: [0; 4],
        }
    }

    /// Whether an alarm stands (set from the alarm file; set when raised).
    /// Once the operator clears one, what led to it is forgotten: the next
    /// alarm is about what comes after.
    pub fn set_standing(&mut self, standing: bool) {
        if self.standing && !standing {
            self.forget();
        }
        self.standing = standing;
    }

    fn forget(&mut self) {
        self.rewrites = Times::default();
        self.renames.clear();
        self.removals = Times::default();
        self.mtime_back = Times::default();
        self.changed.clear();
    }

    pub fn standing(&self) -> bool {
        self.standing
    }

    /// An op begins: taken before its records are written, so that the
    /// instant before it is one the history can restore.
    pub fn begin_op(&mut self) {
        self.op_start = self.clock.now_ns();
        // Before the op is judged: after a quiet spell, what was made long
        // ago is no temporary file any more.
        self.created.expire(self.op_start.saturating_sub(self.limits.temporary_ns));
    }

    /// A regular file was created at `path`.
    pub fn created(&mut self, path: &[u8]) {
        self.created.insert(self.op_start, key(path));
        if let Some(s) = stem(path) {
            self.created.insert(self.op_start, key(s));
        }
    }

    /// An existing regular file at `path` is being written.
    pub fn overwrote(&mut self, path: &[u8], w: &Overwrite<'_>) {
        let t = self.op_start;
        if let (Some(old), Some(new)) = (w.old_head, w.new_head) {
            if looks(old) == Looks::Low && looks(new) == Looks::High {
                self.rewrites.push(t, self.limits.rewrites * 2);
            }
        }
        // Only a write at offset 0 is judged: the later pieces of a file
        // sent in several ops carry the mtime the first one set.
        let (Some(old), Some(new)) = (w.old_head, w.new_head) else { return };
        if old == new {
            return;
        }
        let k = key(path);
        if w.new_mtime == Some(w.old_mtime) {
            self.mtime_back.push(t, self.limits.mtime_back * 2);
            return;
        }
        if self.changed.len() < SET_CAP {
            self.changed.entry(k).or_insert((t, w.old_mtime));
        }
    }

    /// A setattr on `path` sets its mtime to `mtime`.
    pub fn mtime_set(&mut self, path: &[u8], mtime: (i64, u32)) {
        if let Some((_, old)) = self.changed.remove(&key(path)) {
            if old == mtime {
                self.mtime_back.push(self.op_start, self.limits.mtime_back * 2);
            }
        }
    }

    /// `from` was renamed to `to`.
    pub fn renamed(&mut self, from: &[u8], to: &[u8]) {
        let Some(ext) = added_extension(from, to) else { return };
        let t = self.op_start;
        if !self.renames.contains_key(ext) && self.renames.len() >= EXT_CAP {
            // The extension seen longest ago makes room.
            let oldest = self.renames.iter().min_by_key(|(_, v)| v.at.back().copied().unwrap_or(i64::MIN));
            if let Some(k) = oldest.map(|(k, _)| k.clone()) {
                self.renames.remove(&k);
            }
        }
        self.renames.entry(ext.to_vec()).or_default().push(t, self.limits.renames * 2);
    }

    /// How many entries of a removed directory are worth counting (see
    /// [`Detector::removed`]): past the limit, more changes nothing.
    pub fn removal_cap(&self) -> usize {
        self.limits.removals
    }

    /// Something at `path` was removed: `entries` of them (a directory
    /// removed whole counts what it held, up to [`Detector::removal_cap`]).
    pub fn removed(&mut self, path: &[u8], entries: usize) {
        if !self.created.contains(key(path)) {
            for _ in 0..entries.clamp(1, self.limits.removals) {
                self.removals.push(self.op_start, self.limits.removals * 2);
            }
        }
    }

    /// After an op: the alarm to raise, once (None while one stands).
    pub fn check(&mut self) -> Option<Trip> {
        self.expire(self.clock.now_ns().saturating_sub(self.limits.window_ns));
        let l = &self.limits;
        let (ext, renames) =
            self.renames.iter().max_by_key(|(_, v)| v.len()).map_or((&b""[..], 0), |(k, v)| (k.as_slice(), v.len()));
        let (a, c, d) = (self.rewrites.len(), self.removals.len(), self.mtime_back.len());
        for (peak, now) in self.peaks.iter_mut().zip([a, renames, c, d]) {
            *peak = (*peak).max(now);
        }
        if self.standing {
            return None;
        }
        let tripped = a >= l.rewrites
            || renames >= l.renames
            || c >= l.removals
            || d >= l.mtime_back
            || a + renames + 5 * d >= l.combined;
        if !tripped {
            return None;
        }
        let mut parts = Vec::new();
        if a > 0 {
            parts.push(format!("{a} files rewritten from plain to high-entropy content"));
        }
        if renames > 0 {
            parts.push(format!("{renames} files renamed to .{}", String::from_utf8_lossy(ext)));
        }
        if c > 0 {
            parts.push(format!("{c} removals"));
        }
        if d > 0 {
            parts.push(format!("{d} files changed with their mtime put back"));
        }
        let secs = l.window_ns / 1_000_000_000;
        let first = [self.rewrites.first(), self.removals.first(), self.mtime_back.first()]
            .into_iter()
            .chain(self.renames.values().map(Times::first))
            .flatten()
            .min()
            .unwrap_or(self.op_start);
        self.standing = true;
        Some(Trip { last_good_ns: first - 1, reason: format!("{} within {secs} s", parts.join(", ")) })
    }

    /// The most each signal reached in a window, against its limit.
    pub fn peaks(&self) -> String {
        let [a, b, c, d] = self.peaks;
        let l = &self.limits;
        format!(
            "rewrites {a}/{}, renames {b}/{}, removals {c}/{}, mtimes put back {d}/{}",
            l.rewrites, l.renames, l.removals, l.mtime_back
        )
    }

    fn expire(&mut self, before: i64) {
        self.rewrites.expire(before);
        self.removals.expire(before);
        self.mtime_back.expire(before);
        self.renames.retain(|_, v| {
            v.expire(before);
            v.len() > 0
        });
        if self.changed.len() > SET_CAP / 2 {
            self.changed.retain(|_, (t, _)| *t >= before);
        }
    }
}

#[cfg(test)]
#[path = "detector_tests.rs"]
pub(in crate::alarm) mod tests;
