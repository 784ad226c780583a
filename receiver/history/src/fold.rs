//! Folding one bucket of records (docs/history.md, "Retention"): the
//! records of a bucket are the undo steps from the state at its end back
//! to the state at its start. Folding rewrites them into fewer steps with
//! the same effect on that whole span, so a restore as of either end of
//! the bucket is unchanged; the states inside it are given up.
//!
//! Three rewrites, applied until none applies. In each, "between" means
//! the records of the bucket stamped between the two named; a record with
//! a `Shared` identity (a file with several names, whose undo reaches its
//! other names too) is never folded and stops every rewrite across it.
//!
//! - **Superseded**: a record whose every path lies within `p`, followed
//!   (older) by `Created p` or `Displaced p` with no rename or exchange
//!   touching `p` between, is dropped: the older record's undo removes or
//!   replaces all of `p`, erasing what the newer one did. A dropped
//!   `Displaced` frees its attic object.
//! - **Renamed from a new name**: `Renamed a → b` followed (older) by
//!   `Created a'` or `Displaced a'` with `a` within `a'`, with nothing
//!   between touching `a'`: undone, `b` moves to `a`, then `a'` goes; so it
//!   is `Created b` (the undo removes `b`). An editor's save (a temporary
//!   file written, renamed over the file) folds this way.
//! - **Written twice**: two `Overwritten` or `AttrChanged` records of one
//!   path, with nothing between touching it, compose into one (the older
//!   one's old bytes win where both kept some).

use crate::record::{AttrChanged, Change, OldRange, Overwritten, Record};

/// A bucket after folding.
#[derive(Debug, Default)]
pub struct Folded {
    /// The records left, in their order.
    pub records: Vec<Record>,
    /// The attic objects no record left names.
    pub freed: Vec<String>,
}

/// How far back (in records) a rewrite looks for its older partner, and
/// how many rounds a bucket gets: folding is an optimisation, so a busy
/// bucket (an hour of a build: hundreds of thousands of records) costs
/// linear time, folding what lies close together, never quadratic.
const LOOKBACK: usize = 1024;
const ROUNDS: usize = 8;

/// Zeros a composed write may have to keep (where a file grew through a
/// hole since the older write); beyond it the two records stay apart.
const MAX_ZEROS: u64 = 1 << 20;

/// Folds one bucket (`records` in journal order). `object_exists` says
/// whether an attic object is there: a `Displaced` whose object is not
/// (its move failed) undoes nothing, so it supersedes nothing.
pub fn fold(records: Vec<Record>, object_exists: &dyn Fn(&str) -> bool) -> Folded {
    let mut recs: Vec<Option<Record>> = records.into_iter().map(Some).collect();
    let mut freed = Vec::new();
    for _ in 0..ROUNDS {
        let mut changed = false;
        for j in (0..recs.len()).rev() {
            if recs[j].is_none() {
                continue;
            }
            if let Some(object) = superseded(&recs, j, object_exists) {
                freed.extend(object);
                recs[j] = None;
                changed = true;
            } else if let Some(created) = renamed_from_new(&recs, j, object_exists) {
                recs[j] = Some(created);
                changed = true;
            } else if let Some((i, merged)) = written_twice(&recs, j) {
                recs[i] = None;
                recs[j] = Some(merged);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    Folded { records: recs.into_iter().flatten().collect(), freed }
}

/// `a` is `b` or below it.
fn within(a: &[u8], b: &[u8]) -> bool {
    a == b || (a.starts_with(b) && a.get(b.len()) == Some(&b'/'))
}

fn related(a: &[u8], b: &[u8]) -> bool {
    within(a, b) || within(b, a)
}

fn is_move(r: &Record) -> bool {
    matches!(r.change, Some(Change::Renamed(_) | Change::Exchanged(_)))
}

fn is_shared(r: &Record) -> bool {
    r.shared().is_some()
}

/// The path a record's undo removes whole (and may put something else
/// at): `Created`, or `Displaced` whose object is there.
fn clears<'a>(r: &'a Record, object_exists: &dyn Fn(&str) -> bool) -> Option<&'a [u8]> {
    match &r.change {
        Some(Change::Created(_)) => Some(&r.path),
        Some(Change::Displaced(d)) if d.shared.is_none() && object_exists(&d.object) => Some(&r.path),
        _ => None,
    }
}

/// The live records stamped between `i` and `j` (exclusive).
fn between(recs: &[Option<Record>], i: usize, j: usize) -> impl Iterator<Item = &Record> {
    recs[i + 1..j].iter().flatten()
}

/// The older record whose undo erases what `recs[j]`'s undo does: `Some`
/// (with the attic object `recs[j]` named, if any) when `recs[j]` can go.
fn superseded(recs: &[Option<Record>], j: usize, object_exists: &dyn Fn(&str) -> bool) -> Option<Option<String>> {
    let r = recs[j].as_ref()?;
    if is_shared(r) {
        return None;
    }
    let mine = r.paths();
    for i in (j.saturating_sub(LOOKBACK)..j).rev() {
        let Some(k) = &recs[i] else { continue };
        if let Some(p) = clears(k, object_exists) {
            let blocked =
                || between(recs, i, j).any(|x| is_shared(x) || (is_move(x) && x.paths().iter().any(|q| related(q, p))));
            if mine.iter().all(|m| within(m, p)) && !blocked() {
                return Some(match &r.change {
                    Some(Change::Displaced(d)) => Some(d.object.clone()),
                    _ => None,
                });
            }
        }
        // Past a record that moves or shares what `r` acts on, no older
        // record can supersede it.
        if is_shared(k) || (is_move(k) && k.paths().iter().any(|q| mine.iter().any(|m| related(q, m)))) {
            return None;
        }
    }
    None
}

/// `recs[j]` = `Renamed a → b` whose `a` an older record removes whole:
/// answers `Created b` in its place.
fn renamed_from_new(recs: &[Option<Record>], j: usize, object_exists: &dyn Fn(&str) -> bool) -> Option<Record> {
    let r = recs[j].as_ref()?;
    let Some(Change::Renamed(x)) = &r.change else { return None };
    let a = &r.path[..];
    for i in (j.saturating_sub(LOOKBACK)..j).rev() {
        let Some(k) = &recs[i] else { continue };
        if let Some(p) = clears(k, object_exists) {
            if within(a, p) {
                let blocked = between(recs, i, j).any(|x| {
                    is_shared(x)
                        || (is_move(x) && x.paths().iter().any(|q| related(q, p)))
                        || x.paths().iter().any(|q| within(q, p))
                });
                if blocked {
                    return None;
                }
                return Some(Record {
                    change: Some(Change::Created(Default::default())),
                    path: x.to.clone(),
                    ..r.clone()
                });
            }
        }
        if is_shared(k) || k.paths().iter().any(|q| related(q, a)) {
            return None;
        }
    }
    None
}

/// `recs[j]`, a write or an attribute change, and the older one of the
/// same path it composes with: the index of the older and the composition.
fn written_twice(recs: &[Option<Record>], j: usize) -> Option<(usize, Record)> {
    let r = recs[j].as_ref()?;
    if is_shared(r) || !matches!(r.change, Some(Change::Overwritten(_) | Change::AttrChanged(_))) {
        return None;
    }
    for i in (j.saturating_sub(LOOKBACK)..j).rev() {
        let Some(k) = &recs[i] else { continue };
        if is_shared(k) {
            return None;
        }
        if k.path == r.path && matches!(k.change, Some(Change::Overwritten(_) | Change::AttrChanged(_))) {
            let change = compose(r.change.as_ref()?, k.change.as_ref()?)?;
            return Some((i, Record { change: Some(change), ..r.clone() }));
        }
        if k.paths().iter().any(|q| related(q, &r.path)) {
            return None;
        }
    }
    None
}

/// The one undo step equal to undoing `newer`, then `older` (of one file).
fn compose(newer: &Change, older: &Change) -> Option<Change> {
    Some(match (newer, older) {
        (Change::AttrChanged(_), Change::AttrChanged(a1)) => Change::AttrChanged(a1.clone()),
        (Change::AttrChanged(a2), Change::Overwritten(o1)) => {
            Change::Overwritten(Overwritten { attr: o1.attr.clone().or(Some(a2.clone())), ..o1.clone() })
        }
        (Change::Overwritten(o2), Change::AttrChanged(a1)) => {
            Change::Overwritten(Overwritten { attr: Some(AttrChanged { shared: None, ..a1.clone() }), ..o2.clone() })
        }
        (Change::Overwritten(o2), Change::Overwritten(o1)) => {
            // Undoing o2 leaves the file o2.old_size long with its ranges;
            // undoing o1 then sets o1.old_size (cutting, or growing with
            // zeros) and writes its ranges over all of that.
            let (s1, s2) = (o1.old_size, o2.old_size);
            let mut ranges = clip(&o2.ranges, s1);
            if s2 < s1 {
                let uncovered = s1 - s2 - covered(&o1.ranges, s2, s1);
                if uncovered > MAX_ZEROS {
                    return None;
                }
                ranges = overlay(ranges, &[OldRange { offset: s2, data: vec![0; (s1 - s2) as usize] }]);
                ranges = overlay(ranges, &o1.ranges);
            } else {
                ranges = overlay(ranges, &o1.ranges);
            }
            Change::Overwritten(Overwritten {
                old_size: s1,
                ranges,
                attr: o1.attr.clone().or(o2.attr.clone()),
                shared: None,
            })
        }
        _ => return None,
    })
}

/// `ranges` cut to `[0, size)`.
fn clip(ranges: &[OldRange], size: u64) -> Vec<OldRange> {
    ranges
        .iter()
        .filter(|r| r.offset < size)
        .map(|r| {
            let end = (r.offset + r.data.len() as u64).min(size);
            OldRange { offset: r.offset, data: r.data[..(end - r.offset) as usize].to_vec() }
        })
        .filter(|r| !r.data.is_empty())
        .collect()
}

/// How many bytes of `[start, end)` `ranges` cover (they do not overlap).
fn covered(ranges: &[OldRange], start: u64, end: u64) -> u64 {
    ranges.iter().map(|r| (r.offset + r.data.len() as u64).min(end).saturating_sub(r.offset.max(start))).sum()
}

/// `base` with `top` written over it: sorted, not overlapping, `top` wins.
fn overlay(base: Vec<OldRange>, top: &[OldRange]) -> Vec<OldRange> {
    let mut out: Vec<OldRange> = Vec::new();
    for b in base {
        // The parts of `b` no range of `top` covers.
        let mut pieces = vec![(b.offset, b.offset + b.data.len() as u64)];
        for t in top {
            let (ts, te) = (t.offset, t.offset + t.data.len() as u64);
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    if te <= s || ts >= e {
                        vec![(s, e)]
                    } else {
                        [(s, ts.max(s)), (te.min(e), e)].into_iter().filter(|(s, e)| s < e).collect()
                    }
                })
                .collect();
        }
        for (s, e) in pieces {
            out.push(OldRange { offset: s, data: b.data[(s - b.offset) as usize..(e - b.offset) as usize].to_vec() });
        }
    }
    out.extend(top.iter().cloned());
    out.sort_by_key(|r| r.offset);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Created, Displaced, Renamed};

    fn rec(t: i64, path: &str, change: Change) -> Record {
        Record { time_ns: t, seq: t as u64, path: path.as_bytes().to_vec(), change: Some(change) }
    }
    fn created(t: i64, p: &str) -> Record {
        rec(t, p, Change::Created(Created {}))
    }
    fn displaced(t: i64, p: &str, object: &str) -> Record {
        rec(t, p, Change::Displaced(Displaced { object: object.into(), kind: 0o100000, shared: None }))
    }
    fn renamed(t: i64, p: &str, to: &str) -> Record {
        rec(t, p, Change::Renamed(Renamed { to: to.as_bytes().to_vec() }))
    }
    fn written(t: i64, p: &str, old_size: u64, ranges: &[(u64, &[u8])]) -> Record {
        let ranges = ranges.iter().map(|(o, d)| OldRange { offset: *o, data: d.to_vec() }).collect();
        rec(t, p, Change::Overwritten(Overwritten { old_size, ranges, attr: None, shared: None }))
    }
    fn all(_: &str) -> bool {
        true
    }
    fn summary(f: &Folded) -> Vec<String> {
        f.records
            .iter()
            .map(|r| {
                let what = match &r.change {
                    Some(Change::Created(_)) => "created".to_string(),
                    Some(Change::Displaced(d)) => format!("displaced {}", d.object),
                    Some(Change::Renamed(x)) => format!("renamed {}", String::from_utf8_lossy(&x.to)),
                    Some(Change::Overwritten(o)) => format!("written {} {:?}", o.old_size, o.ranges),
                    other => format!("{other:?}"),
                };
                format!("{} {} {what}", r.time_ns, String::from_utf8_lossy(&r.path))
            })
            .collect()
    }

    #[test]
    fn an_editors_saves_fold_to_the_first_version() {
        let mut recs = Vec::new();
        for i in 0..10 {
            let t = i * 10;
            recs.push(created(t + 1, "d/.f.swp"));
            recs.push(written(t + 2, "d/.f.swp", 0, &[]));
            recs.push(displaced(t + 3, "d/f", &format!("o{i}")));
            recs.push(renamed(t + 4, "d/.f.swp", "d/f"));
        }
        let f = fold(recs, &all);
        assert_eq!(summary(&f), ["1 d/.f.swp created", "3 d/f displaced o0"]);
        assert_eq!(f.freed, (1..10).rev().map(|i| format!("o{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn a_tree_made_and_filled_folds_to_its_creation() {
        let recs = vec![created(1, "d"), created(2, "d/a"), written(3, "d/a", 0, &[]), renamed(4, "d/a", "d/b")];
        assert_eq!(summary(&fold(recs, &all)), ["1 d created"]);
    }

    #[test]
    fn writes_compose_and_the_older_bytes_win() {
        // "0123456789" had 2..5 overwritten (01ABC56789), then was cut to 4
        // and grew to 6.
        let recs =
            vec![written(1, "f", 10, &[(2, b"234")]), written(2, "f", 10, &[(4, b"C56789")]), written(3, "f", 4, &[])];
        let f = fold(recs, &all);
        assert_eq!(f.records.len(), 1);
        let Some(Change::Overwritten(o)) = &f.records[0].change else { panic!() };
        assert_eq!(o.old_size, 10);
        let mut file = [b'?'; 10];
        for r in &o.ranges {
            file[r.offset as usize..r.offset as usize + r.data.len()].copy_from_slice(&r.data);
        }
        assert_eq!(&file[2..], b"23456789");
    }

    #[test]
    fn renames_and_shared_files_stop_folding() {
        // d/f was renamed out of d before d was made anew: removing d does
        // not erase what was done to d/f.
        let recs = vec![created(1, "d"), renamed(2, "x", "d"), written(3, "d/f", 3, &[(0, b"abc")])];
        assert_eq!(fold(recs.clone(), &all).records.len(), 3);
        let mut shared = written(3, "d/f", 3, &[(0, b"abc")]);
        if let Some(Change::Overwritten(o)) = &mut shared.change {
            o.shared = Some(crate::record::Shared { dev: 1, ino: 2 });
        }
        assert_eq!(fold(vec![created(1, "d"), shared], &all).records.len(), 2);
        // A displacement whose object is not there undoes nothing.
        let recs = vec![displaced(1, "f", "gone"), written(2, "f", 3, &[(0, b"abc")])];
        assert_eq!(fold(recs, &|o| o != "gone").records.len(), 2);
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::record::Created;

    /// A busy bucket: 200,000 records (files made, written page by page,
    /// some removed). `cargo test --release -p lifeline-history fold_cost
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn fold_cost() {
        let mut recs = Vec::new();
        for i in 0..200_000i64 {
            let f = format!("db/f{}", i % 500);
            let change = match i % 50 {
                0 => Change::Created(Created {}),
                _ => Change::Overwritten(Overwritten {
                    old_size: 1 << 20,
                    ranges: vec![OldRange { offset: ((i * 7919) % 256) as u64 * 4096, data: vec![i as u8; 4096] }],
                    attr: None,
                    shared: None,
                }),
            };
            recs.push(Record { time_ns: i, seq: i as u64, path: f.into_bytes(), change: Some(change) });
        }
        let t = std::time::Instant::now();
        let f = fold(recs, &|_| true);
        eprintln!("200,000 records → {} in {:?}", f.records.len(), t.elapsed());
    }
}
