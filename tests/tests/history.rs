//! History end to end (issue 15): a real agent replicates a tree to a real
//! receiver through a day's worth of mishaps in a few seconds (files
//! rewritten, removed, a directory renamed, then everything deleted), and
//! `lifeline-receiver history restore --as-of T` brings the tree back as it
//! was at each chosen instant, byte for byte, with its modes; `history
//! list` shows a file's versions.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;
use std::time::{Duration, SystemTime};

use lifeline_tests::{bin_path, preflight, snapshot, Rig, ScratchFs};

/// The receiver's clock now (the same host's), as `history` prints and
/// takes it.
fn now_rfc3339() -> String {
    let d = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    lifeline_history::instant::format(d.as_nanos() as i64)
}

#[test]
fn a_tree_comes_back_as_of_any_instant() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
    let mut rig = Rig::new("history", ScratchFs::tmpfs(256));
    let src = rig.src.clone();
    rig.start_agent();
    rig.wait_ready();
    let settle = |rig: &Rig, what: &str| {
        rig.assert_identical(Duration::from_secs(30), what);
        // The instant is taken once the receiver holds the state.
        std::thread::sleep(Duration::from_millis(20));
        let at = now_rfc3339();
        std::thread::sleep(Duration::from_millis(20));
        (at, snapshot(&src))
    };

    // 1: a small project.
    fs::create_dir_all(src.join("proj/docs")).unwrap();
    fs::write(src.join("proj/a.txt"), b"version one\n").unwrap();
    fs::write(src.join("proj/docs/b.md"), vec![b'b'; 100_000]).unwrap();
    fs::write(src.join("proj/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("proj/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("a.txt", src.join("proj/latest")).unwrap();
    let one = settle(&rig, "step 1");

    // 2: edits in place, a removal, a rename of a directory, a new hard link.
    let mut big = fs::read(src.join("proj/docs/b.md")).unwrap();
    big[50_000..50_010].copy_from_slice(b"0123456789");
    fs::write(src.join("proj/docs/b.md"), &big).unwrap();
    fs::write(src.join("proj/a.txt"), b"version two, longer\n").unwrap();
    fs::remove_file(src.join("proj/run.sh")).unwrap();
    fs::rename(src.join("proj/docs"), src.join("proj/documents")).unwrap();
    fs::hard_link(src.join("proj/a.txt"), src.join("proj/a-link.txt")).unwrap();
    fs::set_permissions(src.join("proj/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let two = settle(&rig, "step 2");

    // 3: everything deleted (the rm -rf that history is for).
    fs::remove_dir_all(src.join("proj")).unwrap();
    let three = settle(&rig, "step 3");
    assert!(!three.1.contains_key("proj"));

    let wire = src.strip_prefix("/").unwrap();
    for (i, (at, want)) in [&one, &two].into_iter().enumerate() {
        let to = rig.dir.path().join(format!("restored-{i}"));
        rig.history_restore(at, &src.join("proj"), &to);
        let proj = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter().filter(|(k, _)| k.starts_with("proj")).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let got = proj(&snapshot(&to.join(wire)));
        let want: BTreeMap<_, _> =
            want.iter().filter(|(k, _)| k.starts_with("proj")).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(got, want, "as of {at} (step {})", i + 1);
    }
    // The versions of a file, and a restore never writes over anything.
    let list =
        rig.receiver_cli(&["history", "list", "--machine", &rig.machine, src.join("proj/a.txt").to_str().unwrap()]);
    assert!(list.matches("written").count() >= 1 && list.contains("now: absent"), "{list}");
    let again = Command::new(bin_path("lifeline-receiver"))
        .arg("--store")
        .arg(rig.receiver.store())
        .args(["history", "restore", "--machine", &rig.machine, "--as-of", &one.0, "--path"])
        .arg(src.join("proj"))
        .arg("--to")
        .arg(rig.dir.path().join("restored-0"))
        .output()
        .unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("never writes over"));
}
