//! Whole-disk images kept by a real receiver process over gRPC + TLS, with
//! the real `lifeline-image` binary: back up, list, verify, restore, and the
//! receiver's isolation between machines and refusal of strangers.

use std::path::{Path, PathBuf};
use std::process::Command;

use lifeline_testdisk::{garbage_image, DiskSpec, MIB};
use lifeline_tests::bin_path;
use lifeline_tests::Receiver;

/// `lifeline-image` as `machine` against the receiver; (success, stdout+stderr).
fn image(rx: &Receiver, creds: &(PathBuf, PathBuf), pw: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("lifeline-image"))
        .args(args)
        .env("LIFELINE_REPO", rx.url())
        .env("LIFELINE_TOKEN_FILE", &creds.0)
        .env("LIFELINE_CA", &creds.1)
        .env("LIFELINE_PASSWORD", pw)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

#[test]
fn images_on_the_receiver_back_up_restore_and_stay_private() {
    let t = tempfile::tempdir().unwrap();
    let mut disk = DiskSpec::pc(96).build(t.path(), "disk.img");
    let rx = Receiver::start(&t.path().join("store"));
    let web = rx.credentials("web1");
    let db = rx.credentials("db1");

    assert!(image(&rx, &web, "pw-web", &["init"]).0);
    let (ok, out) = image(&rx, &web, "pw-web", &["backup", "--name", "day1", disk.path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let changed = disk.change_some_files(3);
    let (ok, out) = image(&rx, &web, "pw-web", &["--json", "backup", "--name", "day2", disk.path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).unwrap();
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    let added = j["stats"]["bytes_new"].as_u64().unwrap();
    assert!(added <= 4 * changed + 2 * MIB, "second backup over the network added {added} bytes");
    let (ok, out) = image(&rx, &web, "pw-web", &["list"]);
    assert!(ok && out.contains("day1") && out.contains("day2"), "{out}");
    let (ok, out) = image(&rx, &web, "pw-web", &["verify"]);
    assert!(ok && out.contains("day2: ok"), "{out}");

    // The receiver holds only ciphertext: no file of the tree appears in it.
    let secret = &disk.files.iter().find(|f| f.0 == "a.bin").unwrap().1[..64];
    for e in walkdir(&t.path().join("store/images")) {
        let data = std::fs::read(&e).unwrap();
        assert!(!data.windows(64).any(|w| w == secret), "{} holds plaintext", e.display());
    }

    // Another machine sees nothing of web1's and cannot read its image.
    let (ok, out) = image(&rx, &db, "pw-web", &["list"]);
    assert!(!ok && out.contains("not a Lifeline repository"), "{out}");
    assert!(image(&rx, &db, "pw-db", &["init"]).0);
    let (ok, out) = image(&rx, &db, "pw-db", &["list"]);
    assert!(ok && !out.contains("day1"), "{out}");
    let target = t.path().join("target.img");
    garbage_image(&target, 96 * MIB);
    let before = hash(&target);
    let (ok, out) = image(&rx, &db, "pw-db", &["restore", "--name", "day2", target.to_str().unwrap()]);
    assert!(!ok && out.contains("no image named"), "{out}");
    // A stranger's credential is refused.
    let forged = t.path().join("forged.token");
    std::fs::write(&forged, format!("web1:{}\n", "0".repeat(64))).unwrap();
    let (ok, out) = image(&rx, &(forged, web.1.clone()), "pw-web", &["list"]);
    assert!(!ok && out.contains("refused the credential"), "{out}");
    // A wrong password reads nothing.
    let (ok, out) = image(&rx, &web, "wrong", &["restore", "--name", "day2", target.to_str().unwrap()]);
    assert!(!ok && out.contains("wrong password"), "{out}");
    assert_eq!(hash(&target), before, "a refused restore wrote to the target");

    let (ok, out) = image(&rx, &web, "pw-web", &["restore", "--name", "day2", "--read-back", target.to_str().unwrap()]);
    assert!(ok, "{out}");
    disk.check_copy(&target);

    // The receiver's management database: the jobs as the machines reported
    // them (the refused restores as failed, with why), and web1's images.
    let receiver = |args: &[&str]| {
        let o = Command::new(bin_path("lifeline-receiver"))
            .arg("--store")
            .arg(t.path().join("store"))
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let jobs = receiver(&["jobs"]);
    let lines: Vec<&str> = jobs.lines().collect();
    let has = |m: &str, kind: &str, state: &str, extra: &str| {
        lines.iter().any(|l| {
            l.contains(&format!(" {m} ")) && l.contains(kind) && l.contains(&format!(" {state} ")) && l.contains(extra)
        })
    };
    assert!(has("web1", "backup", "ok", "day1") && has("web1", "backup", "ok", "day2"), "{jobs}");
    assert!(has("web1", "restore", "ok", "day2") && has("web1", "restore", "failed", "wrong password"), "{jobs}");
    assert!(has("db1", "restore", "failed", "no image named"), "{jobs}");
    let images = receiver(&["images"]);
    assert!(images.contains("day1") && images.contains("day2") && !images.contains("db1"), "{images}");
    assert_eq!(receiver(&["images", "--machine", "db1"]).trim(), "", "db1 made no image");
}

fn walkdir(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The receiver is SIGKILLed in the middle of a backup: the backup fails with
/// an error naming the receiver, no image appears, the repository stays
/// consistent, and the next backup after the restart succeeds and restores.
#[test]
fn receiver_killed_mid_backup_leaves_no_image_and_the_next_backup_works() {
    let t = tempfile::tempdir().unwrap();
    // A large partition of unknown content is read and sent whole: seconds
    // of upload to interrupt.
    let spec = DiskSpec {
        size_mib: 300,
        label: "gpt",
        parts: vec![
            lifeline_testdisk::PartSpec {
                size_mib: 32,
                sfdisk_type: "L",
                content: lifeline_testdisk::Content::Ext { mkfs: "mkfs.ext4", opts: vec![] },
            },
            lifeline_testdisk::PartSpec {
                size_mib: 260,
                sfdisk_type: "L",
                content: lifeline_testdisk::Content::Unknown,
            },
        ],
    };
    let disk = spec.build(t.path(), "disk.img");
    let mut rx = Receiver::start(&t.path().join("store"));
    let web = rx.credentials("web1");
    assert!(image(&rx, &web, "pw", &["init"]).0);
    let child = Command::new(bin_path("lifeline-image"))
        .args(["backup", "--name", "cut", disk.path.to_str().unwrap()])
        .env("LIFELINE_REPO", rx.url())
        .env("LIFELINE_TOKEN_FILE", &web.0)
        .env("LIFELINE_CA", &web.1)
        .env("LIFELINE_PASSWORD", "pw")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few MiB of packs arrived (committed ones and the ones
    // still streaming), then kill the receiver.
    let packs = t.path().join("store/images/web1/packs");
    let bytes = || -> u64 { walkdir(&packs).iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum() };
    let start = std::time::Instant::now();
    while bytes() < 24 * MIB && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rx.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the backup succeeded although the receiver died: {text}");
    assert!(text.contains("receiver"), "{text}");

    rx.restart();
    let (ok, out) = image(&rx, &web, "pw", &["list"]);
    assert!(ok && !out.contains("cut"), "{out}");
    let (ok, out) = image(&rx, &web, "pw", &["verify", "--all-chunks"]);
    assert!(ok, "{out}");
    let (ok, out) = image(&rx, &web, "pw", &["backup", "--name", "again", disk.path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let target = t.path().join("target.img");
    let (ok, out) = image(&rx, &web, "pw", &["restore", "--name", "again", target.to_str().unwrap()]);
    assert!(ok, "{out}");
    disk.check_copy(&target);
}
