//! End to end: reconciliation sends a big file that changed while capture was
//! off as an rsync-style delta against the mirror's copy, not whole.
//!
//! Needs root, bpftool and the workspace's binaries (`cargo build --workspace
//! --bins`).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use lifeline_tests::{preflight, wait_until, Rig, RigOpts, ScratchFs};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
const TOOLS: &[&str] = &["bpftool", "lifeline-receiver", "lifeline-agent"];

/// Deterministic pseudo-random bytes (xorshift).
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A receiver and an agent replicating `src` on a tmpfs, once `setup`
/// filled it and the initial sync is done.
fn start(name: &str, setup: impl FnOnce(&Path)) -> Rig {
    let mut rig = RigOpts::new(name, ScratchFs::tmpfs(512)).sync_timeout(TIMEOUT).build();
    setup(&rig.src);
    rig.start_agent();
    rig.wait_ready();
    rig.assert_identical(TIMEOUT, "initial sync");
    rig
}

fn counter(rig: &Rig, name: &str) -> u64 {
    let v = rig.agent().status_json();
    v[name].as_u64().unwrap_or_else(|| rig.fail(&format!("status has no counter {name:?}: {v}")))
}

fn off(rig: &Rig) {
    rig.agent().ctl("off");
    rig.agent().wait_status("capture off", Duration::from_secs(5), |s| s.capture == "off");
}

/// `on`, then waits until the reconciliation it starts is done and the
/// mirror is identical; returns the growth of `bytes_sent`.
fn on_and_sync(rig: &Rig) -> u64 {
    let (sent, reconciled) = (counter(rig, "bytes_sent"), counter(rig, "reconciliations"));
    rig.agent().ctl("on");
    if !wait_until(TIMEOUT, || counter(rig, "reconciliations") > reconciled) {
        rig.fail("`on` started no reconciliation");
    }
    rig.assert_identical(TIMEOUT, "after `on`");
    rig.agent().wait_status("queue drained", TIMEOUT, |s| s.queue_depth == 0);
    counter(rig, "bytes_sent") - sent
}

/// A 64 MiB file changed in 40 scattered 4 KiB places while capture was off:
/// `on` reconciles, and the agent sends a delta of a few hundred KiB.
#[test]
fn a_big_file_changed_while_off_is_sent_as_a_delta() {
    preflight(TOOLS);
    const SIZE: u64 = 64 * MIB;
    let rig = start("delta", |src| {
        fs::write(src.join("big.bin"), random(SIZE as usize, 1)).unwrap();
        fs::write(src.join("small.txt"), b"small before").unwrap();
    });
    off(&rig);
    let f = OpenOptions::new().write(true).open(rig.src.join("big.bin")).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..40u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Anywhere, not only on block boundaries.
        let off = x % (SIZE - 4096);
        f.write_all_at(&random(4096, i + 7), off).unwrap();
    }
    drop(f);
    fs::write(rig.src.join("small.txt"), b"small after, and longer").unwrap();
    let deltas = counter(&rig, "deltas");
    let sent = on_and_sync(&rig);
    let sig = counter(&rig, "signature_bytes");
    eprintln!(
        "64 MiB file, 40 x 4 KiB changed: sent {sent} bytes ({:.2} % of the file), signature {sig} bytes",
        sent as f64 * 100.0 / SIZE as f64
    );
    if counter(&rig, "deltas") <= deltas {
        rig.fail("no delta was sent");
    }
    if sent * 20 >= SIZE {
        rig.fail(&format!("{sent} bytes sent for 160 KiB of changes: not a delta (5 % of the file is {})", SIZE / 20));
    }
    if counter(&rig, "delta_fallbacks") != 0 {
        rig.fail("a delta fell back to the whole file");
    }

    // Capture works again after `on`, and a touch (same content, new mtime)
    // costs next to nothing: one copy op.
    off(&rig);
    let t = std::time::SystemTime::now() - Duration::from_secs(3600);
    let f = OpenOptions::new().write(true).open(rig.src.join("big.bin")).unwrap();
    f.set_modified(t).unwrap();
    drop(f);
    let sent = on_and_sync(&rig);
    eprintln!("touched 64 MiB file: sent {sent} bytes");
    if sent > 64 << 10 {
        rig.fail(&format!("{sent} bytes sent for a new mtime"));
    }
    let mirror_mtime = fs::metadata(rig.mirror.join("big.bin")).unwrap().modified().unwrap();
    if mirror_mtime != t {
        rig.fail("the mirror's mtime was not updated");
    }
}

/// The receiver refuses to sign a file with several hard links in the mirror
/// (a delta replaces the file): the agent falls back to sending it whole,
/// and links the other name to it again.
#[test]
fn without_a_signature_the_file_is_sent_whole() {
    use std::os::unix::fs::MetadataExt;
    preflight(TOOLS);
    const SIZE: u64 = 4 * MIB;
    let rig = start("delta-fallback", |src| {
        fs::write(src.join("f.bin"), random(SIZE as usize, 2)).unwrap();
        fs::hard_link(src.join("f.bin"), src.join("f.bin.link")).unwrap();
    });
    off(&rig);
    let f = OpenOptions::new().write(true).open(rig.src.join("f.bin")).unwrap();
    f.write_all_at(b"changed while off", 1000).unwrap();
    drop(f);
    let fallbacks = counter(&rig, "delta_fallbacks");
    let sent = on_and_sync(&rig);
    if sent < SIZE {
        rig.fail(&format!("only {sent} bytes sent: not the whole file"));
    }
    if counter(&rig, "delta_fallbacks") <= fallbacks {
        rig.fail("no fallback counted");
    }
    let ino = |n: &str| fs::metadata(rig.mirror.join(n)).unwrap().ino();
    if !wait_until(TIMEOUT, || ino("f.bin") == ino("f.bin.link")) {
        rig.fail("the mirror's f.bin and f.bin.link are no longer one file");
    }
}
