//! Retention on the receiver's clock (docs/history.md, "Retention"): every
//! change kept for a window, then thinned to one point per interval in
//! tiers (a minute for a week, an hour for a month, ...), then dropped;
//! bounded by size. While an alarm stands nothing is thinned or dropped.
//!
//! Thinning cuts a closed segment's records into buckets (the records of
//! one tier's interval) and [`fold`]s each; the records left are stamped
//! with the bucket's last instant, so a restore as of any instant gets the
//! state at the last kept point before it, exactly. Dropping moves the
//! journal's horizon first (restores before it are refused), then removes
//! the records and frees the attic objects only they named.
//!
//! Runs under the history's lock, held exclusively: restores take it
//! shared, so none reads a segment or an attic object while it changes.
//! The machine's writer never takes it: retention never touches the
//! newest segment, the only one written to.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use crate::alarm::{self, Alarm};
use crate::fold::fold;
use crate::journal::{read_segment, rewrite_segment, Journal, Segment};
use crate::record::Change;

const NS: i64 = 1_000_000_000;

/// How long what is kept, for one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Every change is kept this long.
    pub keep_all_ns: i64,
    /// Then, while younger than each tier's `until_ns`, one point per its
    /// `every_ns`; older than the last tier, dropped.
    pub tiers: Vec<Tier>,
    /// History (journal and attic) bigger than this drops its oldest
    /// records; a warning past 90 %.
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub every_ns: i64,
    pub until_ns: i64,
}

/// Every change is kept this long, by default.
pub const DEFAULT_KEEP_ALL: &str = "24h";
/// Then one point a minute for a week, an hour for a month, a day for a year.
pub const DEFAULT_THIN: &str = "1m:7d,1h:30d,1d:365d";

impl Default for Policy {
    /// Every change for 24 h, then one point a minute for a week, one an
    /// hour for a month, one a day for a year.
    fn default() -> Policy {
        Policy::parse(DEFAULT_KEEP_ALL, DEFAULT_THIN, None).expect("the default policy parses")
    }
}

impl Policy {
    /// A policy from its settings as operators write them: `keep_all` a
    /// span (`24h`), `thin` tiers `EVERY:UNTIL,...` (`1m:7d,1h:30d`; empty:
    /// dropped after `keep_all`), and the size bound.
    pub fn parse(keep_all: &str, thin: &str, max_bytes: Option<u64>) -> Result<Policy, String> {
        let keep_all_ns = span(keep_all)?;
        let mut tiers: Vec<Tier> = Vec::new();
        for part in thin.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (every, until) =
                part.split_once(':').ok_or_else(|| format!("{part:?}: a tier is EVERY:UNTIL, such as 1m:7d"))?;
            let tier = Tier { every_ns: span(every)?, until_ns: span(until)? };
            let (prev_every, prev_until) = tiers.last().map_or((1, keep_all_ns), |t| (t.every_ns, t.until_ns));
            if tier.until_ns <= prev_until {
                return Err(format!("{part:?}: each tier must last beyond the one before ({})", human(prev_until)));
            }
            if tier.every_ns % prev_every != 0 || SEGMENT_HOUR % tier.every_ns.min(SEGMENT_HOUR) != 0 {
                return Err(format!(
                    "{part:?}: each tier's interval must be a multiple of the one before and divide an hour or be whole hours"
                ));
            }
            if tier.every_ns >= SEGMENT_HOUR && tier.every_ns % SEGMENT_HOUR != 0 {
                return Err(format!("{part:?}: an interval of an hour or more must be whole hours"));
            }
            tiers.push(tier);
        }
        Ok(Policy { keep_all_ns, tiers, max_bytes })
    }

    /// The tier of a record `age_ns` old: 0 kept as it is, `k` thinned by
    /// `tiers[k - 1]`, `tiers.len() + 1` dropped.
    fn tier_of(&self, age_ns: i64) -> usize {
        if age_ns < self.keep_all_ns {
            return 0;
        }
        self.tiers.iter().position(|t| age_ns < t.until_ns).map_or(self.tiers.len() + 1, |k| k + 1)
    }

    /// The tiers as [`Policy::parse`] reads them back.
    pub fn thin_setting(&self) -> String {
        let tiers: Vec<String> =
            self.tiers.iter().map(|t| format!("{}:{}", human(t.every_ns), human(t.until_ns))).collect();
        tiers.join(",")
    }
}

const SEGMENT_HOUR: i64 = crate::journal::SEGMENT_SPAN_NS;

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every change for {}", human(self.keep_all_ns))?;
        for t in &self.tiers {
            write!(f, ", then one point per {} until {} old", human(t.every_ns), human(t.until_ns))?;
        }
        write!(f, ", then dropped")?;
        if let Some(b) = self.max_bytes {
            write!(f, "; at most {b} bytes")?;
        }
        Ok(())
    }
}

/// A span such as `90s`, `30m`, `24h`, `7d`, `2w`.
fn span(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: i64 =
        s[..at].parse().map_err(|_| format!("{s:?}: a span is a number and a unit (90s, 30m, 24h, 7d, 2w)"))?;
    let unit = match &s[at..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("{s:?}: the unit is s, m, h, d or w")),
    };
    match n.checked_mul(unit * NS) {
        Some(ns) if ns > 0 => Ok(ns),
        _ => Err(format!("{s:?}: a span is at least 1s and at most a few centuries")),
    }
}

/// A span in the biggest unit that divides it.
fn human(ns: i64) -> String {
    let s = ns / NS;
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s % n == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// What a retention pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Records read from the segments it thinned.
    pub records_read: u64,
    /// Records folded into others.
    pub records_folded: u64,
    /// Records dropped: older than the last tier, or for the size bound.
    pub records_dropped: u64,
    pub objects_freed: u64,
    /// The history's size (journal and attic) before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Restores before this instant are refused.
    pub horizon_ns: Option<i64>,
    /// Nothing was thinned or dropped: this alarm stands.
    pub held: Option<Alarm>,
    /// The size bound is near (past 90 %) or passed.
    pub warning: Option<String>,
}

impl Report {
    /// Whether anything was removed.
    pub fn changed(&self) -> bool {
        self.records_folded + self.records_dropped + self.objects_freed > 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = &self.held {
            write!(
                f,
                "held by the alarm raised at {} ({}): nothing thinned; ",
                crate::instant::format(a.raised_ns),
                a.reason
            )?;
        }
        write!(
            f,
            "{} records folded, {} dropped, {} attic objects freed; {} → {} bytes",
            self.records_folded, self.records_dropped, self.objects_freed, self.bytes_before, self.bytes_after
        )?;
        if let Some(h) = self.horizon_ns {
            write!(f, "; kept since {}", crate::instant::format(h))?;
        }
        if let Some(w) = &self.warning {
            write!(f, "; {w}")?;
        }
        Ok(())
    }
}

/// The history's lock file (restores hold it shared, retention exclusive).
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    fn take(history_dir: &Path, how: rustix::fs::FlockOperation) -> io::Result<Lock> {
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700).create(history_dir)?;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(history_dir.join("lock"))?;
        rustix::fs::flock(&f, how)?;
        Ok(Lock { _file: f })
    }

    /// For reading the journal and the attic together (a restore).
    pub fn shared(history_dir: &Path) -> io::Result<Lock> {
        Lock::take(history_dir, rustix::fs::FlockOperation::LockShared)
    }

    fn exclusive(history_dir: &Path) -> io::Result<Lock> {
        Lock::take(history_dir, rustix::fs::FlockOperation::LockExclusive)
    }
}

/// One retention pass over the history in `history_dir` (its `journal/`
/// and `attic/`) at `now_ns` (the receiver's clock).
pub fn apply(history_dir: &Path, policy: &Policy, now_ns: i64) -> io::Result<Report> {
    let _lock = Lock::exclusive(history_dir)?;
    let journal = Journal::open(&history_dir.join("journal"));
    let attic = history_dir.join("attic");
    let mut report = Report { bytes_before: size(history_dir)?, ..Report::default() };
    report.held = alarm::standing(history_dir)?;
    if report.held.is_none() {
        thin(&journal, &attic, policy, now_ns, &mut report)?;
        if let Some(max) = policy.max_bytes {
            bound(&journal, &attic, max, &mut report)?;
        }
        report.objects_freed += sweep(&journal, &attic)?;
    }
    report.bytes_after = size(history_dir)?;
    report.horizon_ns = journal.horizon()?;
    if let Some(max) = policy.max_bytes {
        if report.bytes_after > max {
            report.warning = Some(format!(
                "history is {} bytes, over its bound of {max}: an alarm holds it (clear the alarm, or raise the bound)",
                report.bytes_after
            ));
        } else if report.bytes_after > max / 10 * 9 {
            report.warning = Some(format!(
                "history is {} bytes, past 90 % of its bound of {max}: the oldest records go first when it is reached",
                report.bytes_after
            ));
        }
    }
    Ok(report)
}

/// Thins and drops by age, segment by segment (never the newest).
fn thin(journal: &Journal, attic: &Path, policy: &Policy, now_ns: i64, report: &mut Report) -> io::Result<()> {
    let segs = journal.segments()?;
    let dropped = policy.tiers.len() + 1;
    for (i, seg) in segs.iter().enumerate().take(segs.len().saturating_sub(1)) {
        // No record of `seg` is younger than the next segment's start.
        let least = policy.tier_of(now_ns - segs[i + 1].first_ns);
        if least == 0 {
            break;
        }
        if seg.tier as usize >= least {
            continue;
        }
        let (records, _, torn) = read_segment(&seg.path)?;
        if torn {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} ends in a damaged frame: retention leaves it as it is", seg.path.display()),
            ));
        }
        report.records_read += records.len() as u64;
        let before = records.len() as u64;
        let mut kept = Vec::new();
        let mut freed = Vec::new();
        let mut horizon = None;
        let mut dropped_here = 0;
        let mut bucket: Vec<crate::Record> = Vec::new();
        let mut key = None;
        let exists = |o: &str| attic.join(o).symlink_metadata().is_ok();
        let flush = |bucket: &mut Vec<crate::Record>, kept: &mut Vec<crate::Record>, freed: &mut Vec<String>| {
            let Some(last) = bucket.last().map(|r| r.time_ns) else { return };
            let f = fold(std::mem::take(bucket), &exists);
            freed.extend(f.freed);
            kept.extend(f.records.into_iter().map(|r| crate::Record { time_ns: last, ..r }));
        };
        let mut tier_left = usize::MAX;
        for r in records {
            let t = policy.tier_of(now_ns - r.time_ns);
            if t == dropped {
                horizon = Some(r.time_ns);
                freed.extend(object(&r));
                dropped_here += 1;
                continue;
            }
            tier_left = tier_left.min(t);
            if t == 0 {
                flush(&mut bucket, &mut kept, &mut freed);
                key = None;
                kept.push(r);
                continue;
            }
            let k = (t, r.time_ns.div_euclid(policy.tiers[t - 1].every_ns));
            if key != Some(k) {
                flush(&mut bucket, &mut kept, &mut freed);
                key = Some(k);
            }
            bucket.push(r);
        }
        flush(&mut bucket, &mut kept, &mut freed);
        report.records_dropped += dropped_here;
        report.records_folded += before - dropped_here - kept.len() as u64;
        if let Some(h) = horizon {
            journal.set_horizon(h)?;
        }
        let tier = if kept.is_empty() { 0 } else { tier_left.min(dropped - 1) as u32 };
        rewrite_segment(journal.dir(), seg, &kept, tier)?;
        report.objects_freed += free(attic, &freed)?;
    }
    Ok(())
}

/// Drops the oldest closed segments while the history is over `max`.
fn bound(journal: &Journal, attic: &Path, max: u64, report: &mut Report) -> io::Result<()> {
    let history_dir = attic.parent().expect("the attic is in the history's directory");
    let segs = journal.segments()?;
    for seg in segs.iter().take(segs.len().saturating_sub(1)) {
        if size(history_dir)? <= max {
            break;
        }
        drop_segment(journal, attic, seg, report)?;
    }
    Ok(())
}

fn drop_segment(journal: &Journal, attic: &Path, seg: &Segment, report: &mut Report) -> io::Result<()> {
    let (records, _, _) = read_segment(&seg.path)?;
    if let Some(last) = records.last() {
        journal.set_horizon(last.time_ns)?;
    }
    report.records_dropped += records.len() as u64;
    let freed: Vec<String> = records.iter().filter_map(object).collect();
    rewrite_segment(journal.dir(), seg, &[], 0)?;
    report.objects_freed += free(attic, &freed)?;
    Ok(())
}

/// The attic object a record names.
fn object(r: &crate::Record) -> Option<String> {
    match &r.change {
        Some(Change::Displaced(d)) => Some(d.object.clone()),
        _ => None,
    }
}

fn free(attic: &Path, objects: &[String]) -> io::Result<u64> {
    let mut n = 0;
    for o in objects {
        // Names are the applier's own (no `/`); anything else is not ours
        // to remove.
        if o.is_empty() || o.contains(['/', '.']) {
            continue;
        }
        let p = attic.join(o);
        let r = match p.symlink_metadata() {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(_) => continue,
        };
        r?;
        n += 1;
    }
    Ok(n)
}

/// Frees attic objects no record names (left by a pass that died after
/// rewriting a segment). The attic is listed before the journal is read:
/// the applier writes an object's record before the object, so every
/// object listed has its record in what is read after.
fn sweep(journal: &Journal, attic: &Path) -> io::Result<u64> {
    let mut listed = Vec::new();
    match fs::read_dir(attic) {
        Ok(entries) => {
            for e in entries {
                if let Some(name) = e?.file_name().to_str() {
                    if !name.contains('.') {
                        listed.push(name.to_string());
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    }
    if listed.is_empty() {
        return Ok(0);
    }
    let named: HashSet<String> = journal.records_after(i64::MIN)?.iter().filter_map(object).collect();
    let orphans: Vec<String> = listed.into_iter().filter(|o| !named.contains(o)).collect();
    free(attic, &orphans)
}

/// Bytes the files under `dir` (a history) take.
pub fn size(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = match e {
            Ok(e) => e,
            // Removed while walked (a restore's scratch, a freed object).
            Err(e) if e.io_error().is_some_and(|e| e.kind() == io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(io::Error::other(e)),
        };
        if let Ok(md) = e.path().symlink_metadata() {
            total += md.blocks() * 512;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_as_operators_write_them() {
        let p = Policy::default();
        assert_eq!(p.keep_all_ns, 24 * 3600 * NS);
        assert_eq!(p.tiers.len(), 3);
        assert_eq!(p.tier_of(3600 * NS), 0);
        assert_eq!(p.tier_of(25 * 3600 * NS), 1);
        assert_eq!(p.tier_of(8 * 86400 * NS), 2);
        assert_eq!(p.tier_of(400 * 86400 * NS), 4);
        assert_eq!(Policy::parse(&human(p.keep_all_ns), &p.thin_setting(), None).unwrap(), p);
        assert_eq!(p.thin_setting(), DEFAULT_THIN);
        for (k, t) in [("0h", ""), ("1h", "1m"), ("1h", "1m:30m"), ("1h", "7m:2h"), ("1h", "1m:2h,90m:1d"), ("1x", "")]
        {
            assert!(Policy::parse(k, t, None).is_err(), "{k} {t}");
        }
    }
}
