//! End to end: reconciliation sends a big file that changed while capture was
//! off as an rsync-style delta against the mirror's copy, not whole.
//!
//! Needs root, bpftool and the workspace's binaries (`cargo build --workspace
//! --bins`).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeline_tests::{
    bin_path, require_root, require_tool, summarize, wait_identical, wait_until, Agent, AgentOpts, Receiver, ScratchFs,
    TestDir,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

fn preflight() {
    require_root();
    require_tool("bpftool");
    bin_path("lifeline-receiver");
    bin_path("lifeline-agent");
}

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

struct Rig {
    agent: Agent,
    _receiver: Receiver,
    _fs: ScratchFs,
    dir: TestDir,
    src: PathBuf,
    mirror: PathBuf,
}

impl Rig {
    /// A receiver and an agent replicating `src` on a tmpfs, once `setup`
    /// filled it and the initial sync is done.
    fn start(name: &str, setup: impl FnOnce(&Path)) -> Rig {
        let fs = ScratchFs::tmpfs(512);
        let dir = TestDir::new(name);
        let src = fs.subdir("src");
        setup(&src);
        let receiver = Receiver::start_with_log(&dir.path().join("store"), &dir.path().join("receiver.log"));
        let machine = format!("{name}-{}", std::process::id());
        let mirror = receiver.mirror_of(&machine, &src);
        let mut opts = AgentOpts::new(&receiver, &machine, &[&src], &dir.path().join("state"));
        opts.log = Some(dir.path().join("agent.log"));
        let agent = Agent::start(opts);
        let rig = Rig { agent, _receiver: receiver, _fs: fs, dir, src, mirror };
        rig.agent.wait_status("initial sync done", TIMEOUT, |s| s.initial_sync_done && s.capture == "ebpf");
        rig.assert_identical("initial sync");
        rig
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\nagent status: {:?}\n{}\n--- receiver log ---\n{}",
            self.agent.try_status_json(),
            self.agent.log_tail(60),
            lifeline_tests::tail(&self.dir.path().join("receiver.log"), 60)
        );
    }

    fn assert_identical(&self, what: &str) {
        if let Err(d) = wait_identical(&self.src, &self.mirror, TIMEOUT) {
            self.fail(&format!("{what}: mirror not identical after {TIMEOUT:?}:\n{}", summarize(&d, 20)));
        }
    }

    fn counter(&self, name: &str) -> u64 {
        let v = self.agent.status_json();
        v[name].as_u64().unwrap_or_else(|| self.fail(&format!("status has no counter {name:?}: {v}")))
    }

    fn off(&self) {
        self.agent.ctl("off");
        self.agent.wait_status("capture off", Duration::from_secs(5), |s| s.capture == "off");
    }

    /// `on`, then waits until the reconciliation it starts is done and the
    /// mirror is identical; returns the growth of `bytes_sent`.
    fn on_and_sync(&self) -> u64 {
        let (sent, reconciled) = (self.counter("bytes_sent"), self.counter("reconciliations"));
        self.agent.ctl("on");
        if !wait_until(TIMEOUT, || self.counter("reconciliations") > reconciled) {
            self.fail("`on` started no reconciliation");
        }
        self.assert_identical("after `on`");
        self.agent.wait_status("queue drained", TIMEOUT, |s| s.queue_depth == 0);
        self.counter("bytes_sent") - sent
    }
}

/// A 64 MiB file changed in 40 scattered 4 KiB places while capture was off:
/// `on` reconciles, and the agent sends a delta of a few hundred KiB.
#[test]
fn a_big_file_changed_while_off_is_sent_as_a_delta() {
    preflight();
    const SIZE: u64 = 64 * MIB;
    let rig = Rig::start("delta", |src| {
        fs::write(src.join("big.bin"), random(SIZE as usize, 1)).unwrap();
        fs::write(src.join("small.txt"), b"small before").unwrap();
    });
    rig.off();
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
    let deltas = rig.counter("deltas");
    let sent = rig.on_and_sync();
    let sig = rig.counter("signature_bytes");
    eprintln!(
        "64 MiB file, 40 x 4 KiB changed: sent {sent} bytes ({:.2} % of the file), signature {sig} bytes",
        sent as f64 * 100.0 / SIZE as f64
    );
    if rig.counter("deltas") <= deltas {
        rig.fail("no delta was sent");
    }
    if sent * 20 >= SIZE {
        rig.fail(&format!("{sent} bytes sent for 160 KiB of changes: not a delta (5 % of the file is {})", SIZE / 20));
    }
    if rig.counter("delta_fallbacks") != 0 {
        rig.fail("a delta fell back to the whole file");
    }

    // Capture works again after `on`, and a touch (same content, new mtime)
    // costs next to nothing: one copy op.
    rig.off();
    let t = std::time::SystemTime::now() - Duration::from_secs(3600);
    let f = OpenOptions::new().write(true).open(rig.src.join("big.bin")).unwrap();
    f.set_modified(t).unwrap();
    drop(f);
    let sent = rig.on_and_sync();
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
    preflight();
    const SIZE: u64 = 4 * MIB;
    let rig = Rig::start("delta-fallback", |src| {
        fs::write(src.join("f.bin"), random(SIZE as usize, 2)).unwrap();
        fs::hard_link(src.join("f.bin"), src.join("f.bin.link")).unwrap();
    });
    rig.off();
    let f = OpenOptions::new().write(true).open(rig.src.join("f.bin")).unwrap();
    f.write_all_at(b"changed while off", 1000).unwrap();
    drop(f);
    let fallbacks = rig.counter("delta_fallbacks");
    let sent = rig.on_and_sync();
    if sent < SIZE {
        rig.fail(&format!("only {sent} bytes sent: not the whole file"));
    }
    if rig.counter("delta_fallbacks") <= fallbacks {
        rig.fail("no fallback counted");
    }
    let ino = |n: &str| fs::metadata(rig.mirror.join(n)).unwrap().ino();
    if !wait_until(TIMEOUT, || ino("f.bin") == ino("f.bin.link")) {
        rig.fail("the mirror's f.bin and f.bin.link are no longer one file");
    }
}
