//! Ransomware and mass-deletion alarms end to end (issue 15), with a real
//! agent and receiver: a simulated ransomware run (2,000 documents
//! rewritten with random bytes and renamed to `.locked`) raises the alarm
//! within 5 s of its start, the tree as of the alarm's last good instant
//! comes back byte for byte, the agent's status says what to do, and the
//! operator clears it (audited); an `rm -rf` of 2,500 files raises it
//! too, and the tree before it comes back; ordinary work (gzip of logs, a cargo
//! build, a build's outputs rewritten, binaries replaced as a package
//! upgrade does, sqlite transactions) raises none.
//!
//! `LIFELINE_ALARM_SCALE=N` multiplies the ordinary workloads (the full-size
//! measurement: bench/false_alarms.sh).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use lifeline_history::alarm::{self, Alarm};
use lifeline_history::instant;
use lifeline_tests::{log_lines, preflight, snapshot, summarize, wait_identical, wait_until, Rig, ScratchFs};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const FILES: usize = 2000;

fn standing(rig: &Rig) -> Option<Alarm> {
    alarm::standing(&rig.receiver.store().join("history").join(&rig.machine)).unwrap()
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64
}

/// The agent's status line for the alarm (`status --json`), if any.
fn agent_alarm(rig: &Rig) -> Option<String> {
    rig.agent().try_status_json().ok().and_then(|v| v["alarm"].as_str().map(str::to_string))
}

/// A document of `n` bytes of text.
fn document(i: usize, n: usize) -> Vec<u8> {
    format!("Document {i}. Minutes of the meeting, the budget, a letter to the bank, notes.\n")
        .bytes()
        .cycle()
        .take(n)
        .collect()
}

/// A rig whose agent replicates `n` documents under `src/<dir>` (in 20
/// directories, of `size(i)` bytes), once the mirror holds them; and their
/// paths.
fn rig_with_documents(name: &str, dir: &str, n: usize, mut size: impl FnMut(usize) -> usize) -> (Rig, Vec<PathBuf>) {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
    let mut rig = Rig::new(name, ScratchFs::tmpfs(512));
    rig.start_agent();
    rig.wait_ready();
    let paths: Vec<PathBuf> = (0..n).map(|i| rig.src.join(format!("{dir}/d{}/f{i}.txt", i % 20))).collect();
    for (i, p) in paths.iter().enumerate() {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, document(i, size(i))).unwrap();
    }
    rig.assert_identical(Duration::from_secs(120), &format!("{n} documents"));
    (rig, paths)
}

#[test]
fn a_ransomware_run_raises_the_alarm_and_the_tree_before_it_comes_back() {
    let mut rng = StdRng::seed_from_u64(15);
    let (rig, paths) = rig_with_documents("alarms", "docs", FILES, |_| rng.random_range(1000..6000));
    let docs = rig.src.join("docs");
    let before = snapshot(&docs);
    assert!(standing(&rig).is_none(), "ordinary writes raised {:?}", standing(&rig));
    let shown = rig.receiver_cli(&["history", "alarm", "show", "--machine", &rig.machine]);
    assert!(shown.contains("no alarm stands"), "{shown}");

    // The attack: each file encrypted in place, then renamed.
    let started_ns = now_ns();
    let started = Instant::now();
    for p in &paths {
        let mut bytes = vec![0u8; fs::metadata(p).unwrap().len() as usize];
        rng.fill_bytes(&mut bytes);
        fs::write(p, &bytes).unwrap();
        let mut locked = p.clone().into_os_string();
        locked.push(".locked");
        fs::rename(p, locked).unwrap();
    }
    let attack_took = started.elapsed();
    if !wait_until(Duration::from_secs(30), || standing(&rig).is_some()) {
        rig.fail("no alarm within 30 s of a ransomware run");
    }
    let a = standing(&rig).unwrap();
    let after = Duration::from_nanos((a.raised_ns - started_ns) as u64);
    println!("alarm raised {after:?} after the run's start (the run took {attack_took:?}): {}", a.reason);
    assert!(after < Duration::from_secs(5), "raised {after:?} after the start: {a:?}");
    assert!(a.last_good_ns >= started_ns - 1 && a.last_good_ns < a.raised_ns, "{a:?} (run started {started_ns})");

    // The tree as of the last good instant, byte for byte (once the mirror
    // holds the whole run: a restore reads the mirror, which must not change
    // under it).
    rig.assert_identical(Duration::from_secs(120), "the ransomware run");
    let to = rig.dir.path().join("restored");
    rig.history_restore(&instant::format(a.last_good_ns), &docs, &to);
    let restored = snapshot(&to.join(docs.strip_prefix("/").unwrap()));
    assert_eq!(restored.len(), before.len());
    assert!(restored == before, "the restored tree differs from the tree before the run");

    // Everyone is told: the receiver's log, the audit trail, the agent.
    assert_eq!(log_lines(rig.receiver.log_path(), "ALARM since").len(), 1, "one alarm, logged once");
    if !wait_until(Duration::from_secs(10), || agent_alarm(&rig).is_some()) {
        rig.fail("the agent's status never showed the alarm");
    }
    let text = agent_alarm(&rig).unwrap();
    assert!(text.contains("restore as of") && text.contains("history alarm clear --machine"), "{text}");
    let human = rig.agent().ctl("status");
    assert!(human.starts_with("ALARM since"), "{human}");

    // The operator clears it; the agent hears of it with its next ack.
    let cleared = rig.receiver_cli(&["history", "alarm", "clear", "--machine", &rig.machine]);
    assert!(cleared.contains("cleared"), "{cleared}");
    assert!(standing(&rig).is_none());
    let audit = rig.receiver_cli(&["audit"]);
    assert!(audit.contains("alarm raised") && audit.contains("alarm cleared"), "{audit}");
    fs::write(rig.src.join("after.txt"), b"back to work\n").unwrap();
    if !wait_until(Duration::from_secs(10), || agent_alarm(&rig).is_none()) {
        rig.fail("the agent's status still shows a cleared alarm");
    }
}

/// `LIFELINE_ALARM_SCALE`, default 1.
fn scale() -> usize {
    std::env::var("LIFELINE_ALARM_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Log files written, then compressed by gzip (which creates `x.log.gz`
/// and removes `x.log`).
fn gzip_logs(dir: &Path, settle: &dyn Fn(&str)) {
    fs::create_dir_all(dir).unwrap();
    let n = 300 * scale();
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("app-{i}.log");
        let lines: String = (0..200)
            .map(|l| {
                format!(
                    "2026-12-07T10:{:02}:{:02}Z INFO app[{i}]: request {l} served in {} ms\n",
                    l % 60,
                    i % 60,
                    l * 7 % 300
                )
            })
            .collect();
        fs::write(dir.join(&name), lines).unwrap();
        names.push(name);
    }
    settle("logs written");
    run(Command::new("gzip").current_dir(dir).args(&names));
}

/// A small crate built, edited, built again, inside the watched tree.
fn cargo_build(dir: &Path, settle: &dyn Fn(&str)) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("Cargo.toml"), "[package]\nname = \"small\"\nversion = \"0.1.0\"\nedition = \"2021\"\n")
        .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for round in 0..2 * scale() {
        let fns: String =
            (0..50).map(|f| format!("fn f{f}(x: u64) -> u64 {{ x.wrapping_mul({}) ^ {f} }}\n", round + 3)).collect();
        let calls: String = (0..50).map(|f| format!("    s = s.wrapping_add(f{f}(s));\n")).collect();
        fs::write(
            dir.join("src/main.rs"),
            format!("{fns}fn main() {{\n    let mut s = 1u64;\n{calls}    println!(\"{{s}}\");\n}}\n"),
        )
        .unwrap();
        run(Command::new(&cargo)
            .args(["build", "--offline", "-j", "1", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR"));
        settle("a build");
    }
}

/// A Rust build's outputs at scale: files of this workspace's
/// `target/debug/deps` (rlibs, rmetas, objects, dep-info, binaries) copied
/// in, then each rewritten in place with another output of its kind, as a
/// rebuild does.
fn rust_outputs(dir: &Path, settle: &dyn Fn(&str)) {
    fs::create_dir_all(dir).unwrap();
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/deps");
    let mut files: Vec<(std::path::PathBuf, u64)> = fs::read_dir(&deps)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file() && m.len() < 8 << 20).map(|m| (e.path(), m.len())))
        .collect();
    files.sort();
    let budget = 40u64 << 20;
    let mut total = 0;
    files.retain(|(_, len)| {
        total += len;
        total <= budget * scale() as u64
    });
    let ext = |p: &Path| p.extension().map(|e| e.to_os_string()).unwrap_or_default();
    for (p, _) in &files {
        fs::copy(p, dir.join(p.file_name().unwrap())).unwrap();
    }
    settle("first build");
    for (i, (p, _)) in files.iter().enumerate() {
        let next = files[i + 1..].iter().chain(&files[..i]).find(|(q, _)| ext(q) == ext(p));
        if let Some((q, _)) = next {
            fs::copy(q, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// Binaries installed, then upgraded as dpkg does: each new version
/// written beside the old (`name.dpkg-new`) and renamed over it.
fn package_upgrade(dir: &Path, settle: &dyn Fn(&str)) {
    fs::create_dir_all(dir).unwrap();
    let mut bins: Vec<_> = fs::read_dir("/usr/bin")
        .unwrap()
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && (10_000..2_000_000).contains(&m.len())))
        .map(|e| e.path())
        .collect();
    bins.sort();
    bins.truncate(100 * scale() + 1);
    // Copied as 0755: setuid/setgid modes are another test's business.
    let install = |from: &Path, to: &Path| {
        fs::copy(from, to).unwrap();
        fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
    };
    for (i, b) in bins.iter().enumerate().skip(1) {
        install(b, &dir.join(format!("tool{i}")));
    }
    settle("version 1 installed");
    for i in 1..bins.len() {
        // The next version: another binary's bytes.
        let new = dir.join(format!("tool{i}.dpkg-new"));
        install(&bins[i - 1], &new);
        fs::rename(&new, dir.join(format!("tool{i}"))).unwrap();
    }
}

/// A few thousand sqlite transactions, in rollback-journal and WAL modes.
fn sqlite_writes(dir: &Path, _settle: &dyn Fn(&str)) {
    fs::create_dir_all(dir).unwrap();
    for mode in ["DELETE", "WAL"] {
        let mut sql =
            format!("PRAGMA journal_mode={mode};\nCREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB);\n");
        for i in 0..1500 * scale() {
            sql.push_str(&format!(
                "BEGIN; INSERT INTO t(name, body) VALUES ('customer {i}, 12 Long Street', randomblob({})); \
                 UPDATE t SET name = 'customer {i} moved' WHERE id = {}; COMMIT;\n",
                100 + i % 900,
                i / 2 + 1
            ));
        }
        let script = dir.join(format!("{mode}.sql.in"));
        fs::write(&script, sql).unwrap();
        run(Command::new("sh").arg("-c").arg(format!(
            "sqlite3 '{}' < '{}' >/dev/null",
            dir.join(format!("{mode}.db")).display(),
            script.display()
        )));
        fs::remove_file(script).unwrap();
    }
}

type Workload = fn(&Path, &dyn Fn(&str));

#[test]
fn ordinary_work_raises_no_alarm() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent", "gzip", "sqlite3"]);
    let mut rig = Rig::new("alarms-ordinary", ScratchFs::tmpfs(2048));
    rig.start_agent();
    rig.wait_ready();
    let workloads: [(&str, Workload); 5] = [
        ("gzip", gzip_logs),
        ("cargo-build", cargo_build),
        ("rust-outputs", rust_outputs),
        ("package-upgrade", package_upgrade),
        ("sqlite", sqlite_writes),
    ];
    let mut report = Vec::new();
    for (name, workload) in workloads {
        let started = Instant::now();
        // The workload's changes applied before the next step. A linker
        // writes through a shared mapping, which only a reconciliation sees:
        // asked for when the mirror lags. What still differs then is a
        // replication matter, not this test's: said, not failed on (the
        // alarm is what is checked).
        let settle = |what: &str| {
            if let Err(d) = wait_identical(&rig.src, &rig.mirror, Duration::from_secs(20)) {
                println!("{name}: {what}: {} differences after 20 s (writes through mappings?); a sync", d.len());
                rig.agent().ctl("sync");
                if let Err(d) = wait_identical(&rig.src, &rig.mirror, Duration::from_secs(60)) {
                    println!("{name}: {what}: still {} differences after a sync: {}", d.len(), summarize(&d, 4));
                }
            }
        };
        workload(&rig.src.join(name), &settle);
        settle("done");
        // A new stream for each workload: the receiver logs how close the
        // one that ends came to an alarm.
        let stops = log_lines(rig.receiver.log_path(), "replication stream stopped").len();
        rig.agent_mut().restart();
        rig.wait_ready();
        let line =
            rig.nth_log_line(rig.receiver.log_path(), "replication stream stopped", stops, Duration::from_secs(10));
        let peaks = line.split("alarm_peaks=").nth(1).unwrap_or(&line);
        report.push(format!("{name}: {peaks} (took {:.1?})", started.elapsed()));
        if let Some(a) = standing(&rig) {
            rig.fail(&format!("{name} raised an alarm: {a:?}"));
        }
    }
    println!("false-alarm margins (scale {}):\n  {}", scale(), report.join("\n  "));
    assert!(log_lines(rig.receiver.log_path(), "ALARM since").is_empty());
}

#[test]
fn a_mass_deletion_raises_the_alarm() {
    let (rig, _) = rig_with_documents("alarms-rm", "data", 2500, |_| 100);
    let data = rig.src.join("data");
    let before = snapshot(&data);
    // Files removed within 10 s of their creation are taken for temporary.
    std::thread::sleep(Duration::from_secs(11));
    fs::remove_dir_all(&data).unwrap();
    if !wait_until(Duration::from_secs(10), || standing(&rig).is_some()) {
        rig.fail("no alarm within 10 s of rm -rf of 2,500 files");
    }
    let a = standing(&rig).unwrap();
    assert!(a.reason.contains("removals"), "{a:?}");
    rig.assert_identical(Duration::from_secs(60), "the removal");
    let to = rig.dir.path().join("restored");
    rig.history_restore(&instant::format(a.last_good_ns), &data, &to);
    let restored = snapshot(&to.join(data.strip_prefix("/").unwrap()));
    let missing: Vec<_> = before.keys().filter(|k| !restored.contains_key(*k)).take(5).collect();
    let differing: Vec<_> = before.iter().filter(|(k, v)| restored.get(*k).is_some_and(|r| r != *v)).take(5).collect();
    assert!(
        restored == before,
        "the tree before the rm -rf: {} of {} entries; missing {missing:?}, differing {differing:?}",
        restored.len(),
        before.len()
    );
}
