//! Quotas (issue 14, finding 3: one credential filled the receiver's disk):
//! a real agent writing past its machine's quota is refused with a plain
//! message, the mirror stops at the quota, and once the operator raises it
//! everything that waited on the machine arrives: nothing is lost.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lifeline_tests::{bin_path, preflight, Rig, ScratchFs};

const MIB: u64 = 1 << 20;

/// Bytes allocated under `dir` (what the quota counts).
fn allocated(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn receiver_cli(rig: &Rig, args: &[&str]) -> String {
    let out = Command::new(bin_path("lifeline-receiver"))
        .arg("--store")
        .arg(rig.receiver.store())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "lifeline-receiver {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_machine_over_its_quota_is_refused_and_loses_nothing() {
    preflight(&["bpftool", "lifeline-receiver", "lifeline-agent"]);
    let mut rig = Rig::new("quota", ScratchFs::tmpfs(256));
    fs::write(rig.src.join("first"), vec![1u8; 4096]).unwrap();
    rig.start_agent();
    rig.wait_ready();
    rig.assert_identical(Duration::from_secs(30), "the first file");

    let machine = rig.machine.clone();
    receiver_cli(&rig, &["machine", "set-quota", &machine, "--quota-bytes", "4M"]);
    // Limits are re-read within two seconds.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..16 {
        fs::write(rig.src.join(format!("big-{i}")), vec![i as u8 + 2; MIB as usize]).unwrap();
    }
    let s = rig.wait_agent("the receiver refuses with the quota", Duration::from_secs(30), |s| {
        s.last_error.as_deref().is_some_and(|e| e.contains("has no room for this machine"))
    });
    let e = s.last_error.unwrap();
    assert!(e.contains(&format!("machine {machine} is at its quota")) && e.contains("set-quota"), "{e}");
    let machine_dir = rig.receiver.machine_root(&machine);
    let images = rig.receiver.store().join("images").join(&machine);
    let used = allocated(&machine_dir) + if images.exists() { allocated(&images) } else { 0 };
    assert!(used <= 4 * MIB, "the mirror grew past its quota: {used} bytes allocated");
    let shown = receiver_cli(&rig, &["machine", "show", &machine]);
    assert!(shown.contains("quota bytes 4.0 MiB"), "{shown}");

    // The operator lifts it: what waited on the machine arrives.
    receiver_cli(&rig, &["machine", "set-quota", &machine, "--quota-bytes", "none"]);
    rig.assert_identical(Duration::from_secs(60), "every file once the quota is lifted");
    let audit = receiver_cli(&rig, &["audit"]);
    assert!(audit.contains("quota set"), "{audit}");
}
