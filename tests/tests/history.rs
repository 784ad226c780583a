//! History end to end (issue 15): a real agent replicates a tree to a real
//! receiver through a day's worth of mishaps in a few seconds (files
//! rewritten, removed, a directory renamed, then everything deleted), and
//! `lifeline-receiver history restore --as-of T` brings the tree back as it
//! was at each chosen instant, byte for byte, with its modes; `history
//! list` shows a file's versions.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use lifeline_tests::{bin_path, preflight, snapshot, Rig, ScratchFs};

/// A rig on a tmpfs of `mib` MiB with its agent started and ready.
fn started(name: &str, mib: u64) -> Rig {
    let mut rig = Rig::new(name, ScratchFs::tmpfs(mib));
    rig.start_agent();
    rig.wait_ready();
    rig
}

#[test]
fn a_tree_comes_back_as_of_any_instant() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
    let rig = started("history", 256);
    let src = rig.src.clone();
    let settle = |rig: &Rig, what: &str| (rig.settle(what), snapshot(&src));

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
    let list = rig.history(&["list", "--machine", &rig.machine, src.join("proj/a.txt").to_str().unwrap()]);
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

    // What changed from step 1 to step 2, and from 2 to 3, as diffs.
    let d = rig.history(&["diff", "--machine", &rig.machine, &one.0, &two.0]);
    let at = |p: &str| format!("{}  ", src.join(p).display());
    for (p, what) in [
        ("proj/a.txt", "~ content (12 → 20 bytes), mode 644 → 600"),
        ("proj/run.sh", "- file 755"),
        ("proj/docs", "- directory"),
        ("proj/documents/b.md", "+ file 644, 100000 bytes"),
        ("proj/a-link.txt", "+ file 600, 20 bytes"),
    ] {
        assert!(d.lines().any(|l| l.starts_with(&at(p)) && l.contains(what)), "{p}: {what}\n{d}");
    }
    assert!(!d.contains("latest"), "an unchanged symlink is no difference: {d}");
    let d = rig.history(&[
        "diff",
        "--machine",
        &rig.machine,
        &two.0,
        &three.0,
        "--path",
        src.join("proj/documents").to_str().unwrap(),
    ]);
    assert!(d.contains("- file 644, 100000 bytes") && !d.contains("a.txt"), "{d}");

    // The machine's whole tree as of step 2.
    let whole = rig.dir.path().join("whole");
    rig.history(&[
        "restore",
        "--machine",
        &rig.machine,
        "--as-of",
        &two.0,
        "--path",
        "/",
        "--to",
        whole.to_str().unwrap(),
    ]);
    let got: BTreeMap<_, _> = snapshot(&whole.join(wire)).into_iter().filter(|(k, _)| k.starts_with("proj")).collect();
    let want: BTreeMap<_, _> =
        two.1.iter().filter(|(k, _)| k.starts_with("proj")).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(got, want, "the whole tree as of step 2");
}

/// `lifeline-agent history ARGS` with the rig's agent's receiver and
/// credential: whether it succeeded, and what it printed.
fn agent_history(rig: &Rig, args: &[&str]) -> (bool, String) {
    let opts = rig.agent().opts();
    let out = Command::new(bin_path("lifeline-agent"))
        .arg("history")
        .args(["--receiver", &opts.receiver, "--machine", &opts.machine])
        .arg("--token-file")
        .arg(&opts.token_file)
        .arg("--ca")
        .arg(&opts.ca)
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The entries of `dir` named `prefix...`.
fn named(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// On the protected machine (issue 15): `lifeline-agent history PATH
/// --as-of T` puts the version of T next to the live file, byte for byte
/// with its mode, the live file untouched and nothing overwritten; a
/// removed file shows in `--deleted` and comes back under a new name;
/// `--overwrite` puts a version back over the live file.
#[test]
fn the_agent_restores_a_version_next_to_the_live_file() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
    let rig = started("history-agent", 64);
    let src = rig.src.clone();
    let doc = src.join("doc.txt");
    let first: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(&doc, &first).unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(src.join("gone.txt"), b"soon removed\n").unwrap();
    let one = rig.settle("first version");
    fs::write(&doc, b"second version\n").unwrap();
    fs::set_permissions(&doc, fs::Permissions::from_mode(0o600)).unwrap();
    rig.settle("second version");

    let (ok, list) = agent_history(&rig, &[doc.to_str().unwrap()]);
    assert!(ok && list.contains("created") && list.contains("written") && list.contains("now: 15 bytes"), "{list}");

    let (ok, out) = agent_history(&rig, &[doc.to_str().unwrap(), "--as-of", &one]);
    assert!(ok, "{out}");
    let restored = named(&src, "doc.txt.lifeline-");
    assert_eq!(restored.len(), 1, "{out}");
    assert_eq!(fs::read(&restored[0]).unwrap(), first, "the earlier version, byte for byte");
    assert_eq!(fs::metadata(&restored[0]).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::read(&doc).unwrap(), b"second version\n", "the live file untouched");
    // Asked again: the same name is taken, and nothing is written over it.
    let (ok, out) = agent_history(&rig, &[doc.to_str().unwrap(), "--as-of", &one]);
    assert!(!ok && out.contains("never writes over anything"), "{out}");
    assert_eq!(fs::read(&restored[0]).unwrap(), first);

    // A removed file: listed, and back under a new name.
    fs::remove_file(src.join("gone.txt")).unwrap();
    rig.settle("gone.txt removed");
    let (ok, out) = agent_history(&rig, &["--deleted", "--since", "-10m"]);
    assert!(ok && out.contains(src.join("gone.txt").to_str().unwrap()), "{out}");
    assert!(!out.contains("doc.txt"), "doc.txt was never removed: {out}");
    let (ok, out) = agent_history(&rig, &[src.join("gone.txt").to_str().unwrap(), "--as-of", &one]);
    assert!(ok, "{out}");
    let back = named(&src, "gone.txt.lifeline-");
    assert_eq!(back.len(), 1, "{out}");
    assert_eq!(fs::read(&back[0]).unwrap(), b"soon removed\n");
    assert!(!src.join("gone.txt").exists());

    // Asked for: over the live file.
    let (ok, out) = agent_history(&rig, &[doc.to_str().unwrap(), "--as-of", &one, "--overwrite"]);
    assert!(ok, "{out}");
    assert_eq!(fs::read(&doc).unwrap(), first);
    assert_eq!(fs::metadata(&doc).unwrap().mode() & 0o7777, 0o640);
    let leftovers = named(&src, ".doc.txt");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
