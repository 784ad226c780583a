//! History retention as the operator runs it: per-machine settings in the
//! management database, `history show`, `history prune` (audited), and an
//! alarm that holds it. The thinning itself is tested over simulated hours
//! in `lifeline-mirror` (`retention_thins_exactly_as_configured`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lifeline_history::record::{Change, Created, Displaced};
use lifeline_history::{JournalWriter, ManualClock};
use lifeline_store::StoreLayout;

fn receiver(store: &Path, args: &[&str]) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lifeline-receiver")).arg("--store").arg(store).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

const S: i64 = 1_000_000_000;

#[test]
fn the_operator_sets_shows_and_prunes_a_machines_history() {
    let d = tempfile::tempdir().unwrap();
    let store = d.path().join("store");
    let creds = d.path().join("creds");
    assert!(receiver(&store, &["machine", "add", "m", "--out", creds.to_str().unwrap()]).0);

    // Bad settings are refused with what to write instead.
    let (ok, out) = receiver(&store, &["machine", "set-history", "m", "--thin", "7m:2d"]);
    assert!(!ok && out.contains("multiple"), "{out}");
    let (ok, out) = receiver(&store, &["machine", "set-history", "nobody", "--keep-all", "1h"]);
    assert!(!ok && out.contains("no machine nobody"), "{out}");
    let (ok, out) =
        receiver(&store, &["machine", "set-history", "m", "--keep-all", "2h", "--thin", "1h:1d", "--max-size", "1G"]);
    assert!(ok, "{out}");
    assert!(out.contains("every change for 2h, then one point per 1h until 1d old, then dropped"), "{out}");

    // A history two days old: a removal a day and a half ago (its object in
    // the attic), records an hour apart since.
    let layout = StoreLayout::new(&store);
    let m = lifeline_core::credential::MachineName::new("m").unwrap();
    std::fs::create_dir_all(layout.mirror(&m)).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let clock = Arc::new(ManualClock::at(now - 48 * 3600 * S));
    let mut j = JournalWriter::open(&layout.history_journal(&m), clock.clone()).unwrap();
    std::fs::create_dir_all(layout.history_attic(&m)).unwrap();
    std::fs::write(layout.history_attic(&m).join("1-1-1"), b"old").unwrap();
    for h in 0..48 {
        let change = match h {
            12 => Change::Displaced(Displaced { object: "1-1-1".into(), kind: 0o100000, shared: None }),
            _ => Change::Created(Created {}),
        };
        j.append(h, format!("srv/f{h}").as_bytes(), change).unwrap();
        clock.advance(3600 * S);
    }
    j.sync().unwrap();
    drop(j);

    let (ok, out) = receiver(&store, &["history", "show", "--machine", "m"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("every change for 2h") && out.contains("nothing dropped yet") && out.contains("alarm: none"),
        "{out}"
    );

    // An alarm holds retention: nothing is dropped.
    let alarm = lifeline_history::alarm::Alarm { raised_ns: now, last_good_ns: now - S, reason: "test".into() };
    lifeline_history::alarm::raise(&layout.history(&m), &alarm).unwrap();
    let (ok, out) = receiver(&store, &["history", "prune", "--machine", "m"]);
    assert!(ok && out.contains("held by the alarm") && out.contains("0 dropped"), "{out}");
    lifeline_history::alarm::clear(&layout.history(&m)).unwrap();

    let (ok, out) = receiver(&store, &["history", "prune", "--machine", "m"]);
    assert!(ok, "{out}");
    // Older than a day: 23 or 24 records (the hours before the cut), the
    // removal among them, its object freed.
    assert!(out.contains(" dropped, 1 attic objects freed"), "{out}");
    assert!(!layout.history_attic(&m).join("1-1-1").exists());
    let (_, out) = receiver(&store, &["history", "show", "--machine", "m"]);
    assert!(out.contains("retention dropped what is older"), "{out}");
    let (_, audit) = receiver(&store, &["audit"]);
    assert!(audit.contains("history retention set") && audit.contains("history thinned"), "{audit}");
    assert!(audit.contains("the operator's history prune"), "{audit}");

    // A restore before the horizon is refused, and says from when it can.
    let (ok, out) = receiver(
        &store,
        &[
            "history",
            "restore",
            "--machine",
            "m",
            "--as-of",
            "-47h",
            "--path",
            "/srv",
            "--to",
            d.path().join("r").to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("kept since"), "{out}");
}
