//! The detector on a [`ManualClock`]: each signal trips alone, each
//! ordinary pattern stays quiet, the window forgets, one alarm at a time.

use super::*;
use lifeline_history::ManualClock;

const SEC: i64 = 1_000_000_000;
const T0: i64 = 1_800_000_000 * SEC;

/// Bytes no compressor shrinks (xorshift; the tests need no rand).
pub(in crate::alarm) fn random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text(i: usize, n: usize) -> Vec<u8> {
    let line = format!("{i}: the quick brown fox jumps over the lazy dog, log line of an ordinary day\n");
    line.bytes().cycle().take(n).collect()
}

fn detector() -> (Arc<ManualClock>, Detector) {
    let clock = Arc::new(ManualClock::at(T0));
    (clock.clone(), Detector::new(clock, Limits::default()))
}

/// Runs `n` ops of `each` 10 ms apart; the first trip, if any.
fn run(clock: &ManualClock, d: &mut Detector, n: usize, mut each: impl FnMut(&mut Detector, usize)) -> Option<Trip> {
    let mut trip = None;
    for i in 0..n {
        clock.advance(10_000_000);
        d.begin_op();
        each(d, i);
        if let Some(t) = d.check() {
            trip.get_or_insert(t);
        }
    }
    trip
}

fn path(i: usize, ext: &str) -> Vec<u8> {
    format!("home/u/docs/f{i}.{ext}").into_bytes()
}

fn rewrite(d: &mut Detector, p: &[u8], old: &[u8], new: &[u8], mtimes: ((i64, u32), (i64, u32))) {
    let w = Overwrite { old_head: Some(old), new_head: Some(new), old_mtime: mtimes.0, new_mtime: Some(mtimes.1) };
    d.overwrote(p, &w);
}

const M0: (i64, u32) = (1_700_000_000, 5);
const M1: (i64, u32) = (1_800_000_000, 7);

#[test]
fn entropy_tells_random_from_text_and_zeroes() {
    assert!(entropy_bits(&random(1, 4096)) > 7.9, "{}", entropy_bits(&random(1, 4096)));
    assert!(entropy_bits(&random(2, 512)) > 7.5, "corrected for short samples: {}", entropy_bits(&random(2, 512)));
    assert!(entropy_bits(&text(3, 4096)) < 5.0);
    assert_eq!(looks(&random(4, 4096)), Looks::High);
    assert_eq!(looks(&text(5, 4096)), Looks::Low);
    assert_eq!(looks(&vec![0u8; 4096]), Looks::Unknown, "free space is no document");
    assert_eq!(looks(&random(6, 100)), Looks::Unknown, "too short to say");
}

#[test]
fn ransomware_rewrites_trip_with_the_instant_before_the_first() {
    let (clock, mut d) = detector();
    run(&clock, &mut d, 50, |d, i| d.created(&path(i, "txt")));
    let first_bad = clock.now_ns() + 10_000_000;
    let trip =
        run(&clock, &mut d, 150, |d, i| rewrite(d, &path(i, "txt"), &text(i, 4096), &random(i as u64, 4096), (M0, M1)))
            .expect("raised");
    assert_eq!(trip.last_good_ns, first_bad - 1);
    assert!(trip.reason.contains("100 files rewritten"), "{}", trip.reason);
    assert!(d.check().is_none() && d.standing(), "one alarm while it stands");
}

#[test]
fn bulk_renames_to_one_new_extension_trip_alone() {
    let (clock, mut d) = detector();
    let trip =
        run(&clock, &mut d, 120, |d, i| d.renamed(&path(i, "txt"), &[path(i, "txt"), b".locked".to_vec()].concat()))
            .expect("raised");
    assert!(trip.reason.contains("renamed to .locked"), "{}", trip.reason);
}

#[test]
fn mass_removals_trip_alone() {
    let (clock, mut d) = detector();
    assert!(run(&clock, &mut d, 2100, |d, i| d.removed(&path(i, "txt"), 1)).is_some());
    let (clock, mut d) = detector();
    assert!(
        run(&clock, &mut d, 2, |d, i| d.removed(&path(i, "dir"), 1500)).is_some(),
        "directories count what they held"
    );
}

#[test]
fn files_removed_soon_after_they_were_made_are_temporary_later_not() {
    let (clock, mut d) = detector();
    assert!(run(&clock, &mut d, 3000, |d, i| {
        d.created(&path(i, "tmp"));
        d.removed(&path(i, "tmp"), 1);
    })
    .is_none());
    run(&clock, &mut d, 2100, |d, i| d.created(&path(i, "txt")));
    clock.advance(11 * SEC);
    let trip = run(&clock, &mut d, 2100, |d, i| d.removed(&path(i, "txt"), 1)).expect("raised");
    assert_eq!(trip.last_good_ns, T0 + 5100 * 10_000_000 + 11 * SEC + 10_000_000 - 1, "from the first removal");
}

#[test]
fn content_changed_with_its_mtime_put_back_trips_alone() {
    // In one op (the agent saw the final mtime) and as a setattr after it.
    let (clock, mut d) = detector();
    assert!(run(&clock, &mut d, 10, |d, i| rewrite(d, &path(i, "doc"), &text(i, 4096), &text(i + 1, 4096), (M0, M0)))
        .is_none());
    let trip = run(&clock, &mut d, 20, |d, i| {
        let p = path(100 + i, "doc");
        rewrite(d, &p, &text(i, 4096), &text(i + 1, 4096), (M0, M1));
        d.mtime_set(&p, M0);
    })
    .expect("raised");
    assert!(trip.reason.contains("20 files changed with their mtime put back"), "{}", trip.reason);
}

#[test]
fn signals_add_up() {
    let (clock, mut d) = detector();
    let trip = run(&clock, &mut d, 60, |d, i| {
        let p = path(i, "txt");
        rewrite(d, &p, &text(i, 4096), &random(i as u64, 4096), (M0, M1));
        d.renamed(&p, &[p.clone(), b".enc".to_vec()].concat());
    });
    assert!(trip.is_some_and(|t| t.reason.contains("50 files rewritten") && t.reason.contains("50 files renamed")));
}

#[test]
fn the_window_forgets() {
    let (clock, mut d) = detector();
    for _ in 0..10 {
        run(&clock, &mut d, 90, |d, i| rewrite(d, &path(i, "txt"), &text(i, 4096), &random(i as u64, 4096), (M0, M1)));
        clock.advance(61 * SEC);
        assert!(d.check().is_none());
    }
}

#[test]
fn a_build_creating_high_entropy_objects_is_quiet() {
    let (clock, mut d) = detector();
    let trip = run(&clock, &mut d, 5000, |d, i| {
        let p = format!("src/target/debug/deps/crate{i}.o").into_bytes();
        d.created(&p);
        // Rebuilt objects written over their previous build: high over high.
        rewrite(d, &p, &random(i as u64, 4096), &random(i as u64 + 1, 4096), (M0, M1));
        // Incremental session directories renamed from -working.
        d.renamed(format!("inc/s-{i}-working").as_bytes(), format!("inc/s-{i}-final").as_bytes());
    });
    assert!(trip.is_none(), "{trip:?}");
}

#[test]
fn gzip_of_logs_is_quiet() {
    let (clock, mut d) = detector();
    let trip = run(&clock, &mut d, 3000, |d, i| {
        d.created(&path(i, "log.gz"));
        d.removed(&path(i, "log"), 1);
    });
    assert!(trip.is_none(), "{trip:?}");
    assert!(d.peaks().contains("removals 0/2000"), "{}", d.peaks());
}

#[test]
fn package_upgrades_are_quiet() {
    let (clock, mut d) = detector();
    let trip = run(&clock, &mut d, 3000, |d, i| {
        let bin = format!("usr/bin/tool{i}").into_bytes();
        let new = [bin.clone(), b".dpkg-new".to_vec()].concat();
        d.created(&new);
        d.renamed(&new, &bin);
        // An in-place rewrite of a binary: ELF over ELF.
        let elf = |s: usize| [b"\x7fELF".to_vec(), text(s, 2048), random(s as u64, 2044)].concat();
        rewrite(d, &bin, &elf(i), &elf(i + 1), (M0, M1));
    });
    assert!(trip.is_none(), "{trip:?}");
}

#[test]
fn database_page_writes_are_quiet() {
    let (clock, mut d) = detector();
    let trip = run(&clock, &mut d, 5000, |d, i| {
        let db = b"var/lib/app/data.sqlite".as_slice();
        // Page 1 (header, schema) rewritten low over low each commit.
        rewrite(d, db, &text(i, 4096), &text(i + 1, 4096), (M0, (M0.0 + i as i64, 0)));
        // Pages past the start: not judged (no offset 0).
        d.overwrote(db, &Overwrite { old_head: None, new_head: None, old_mtime: M0, new_mtime: Some(M1) });
        // Free (zeroed) pages at the start of a preallocated file filled.
        rewrite(d, b"var/lib/app/prealloc", &vec![0; 4096], &random(i as u64, 4096), (M0, M1));
        // The journal created and removed each transaction.
        d.created(b"var/lib/app/data.sqlite-journal");
        d.removed(b"var/lib/app/data.sqlite-journal", 1);
    });
    assert!(trip.is_none(), "{trip:?}");
}

#[test]
fn memory_stays_bounded() {
    let (clock, mut d) = detector();
    d.set_standing(true);
    run(&clock, &mut d, 200_000, |d, i| {
        d.created(&path(i, "a.b"));
        d.renamed(&path(i, "x"), &[path(i, "x"), format!(".e{}", i % 500).into_bytes()].concat());
        d.removed(&path(i, "x"), 1);
    });
    assert!(d.created.order.len() <= SET_CAP && d.created.seen.len() <= SET_CAP);
    assert!(d.renames.len() <= EXT_CAP);
    assert!(d.removals.len() <= Limits::default().removals * 2);
}
