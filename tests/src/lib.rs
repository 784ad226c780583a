//! The harness of Lifeline's end-to-end tests.
//!
//! - [`Receiver`] and [`Agent`] run the real binaries (`lifeline-receiver`,
//!   `lifeline-agent run`) from the same target directory as the test, log to
//!   files and are killed on drop.
//! - [`Rig`] is one end-to-end test's world: a scratch filesystem with the
//!   watched tree, a receiver (on loopback or in a [`NetNs`]) and an agent,
//!   built with [`RigOpts`]; every test that runs both daemons uses it.
//! - [`preflight`] checks, before a test starts, that it runs as root and
//!   that the tools and binaries it needs are there.
//! - [`ScratchFs`] mounts a tmpfs or a loop-device ext4 per test, so each
//!   test's watched tree has a device of its own.
//! - [`wait_identical`] polls [`lifeline_core::tree::compare`] until a mirror
//!   matches its source.
//! - [`attached_tracepoint_programs`] counts, from outside, the eBPF programs a
//!   process holds attached to tracepoints; [`inotify_watches`] the inotify
//!   watches it holds.
//! - [`workload`] is a deterministic randomized file-system workload.
//! - [`desktop`] runs a private D-Bus session bus, Xvfb and `lifeline-gui`,
//!   and takes screenshots of X windows.
//! - [`verifier`] holds the verifier's budget for the kernel programs and
//!   reads the figures `lifeline-agent check-capture` prints.
//! - [`NetNs`] is a network namespace joined by a veth pair whose link a test
//!   can cut; [`log_lines`] and [`log_field`] read the daemons' logs.
//!
//! Everything here needs root (mounts, loop devices, eBPF). Nothing skips:
//! a missing privilege, tool or binary is a loud panic.

mod bpf;
pub mod console;
pub mod desktop;
pub mod history;
mod netns;
mod procs;
mod rig;
mod scratch;
pub mod verifier;
pub mod workload;

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeline_core::tree::{self, CompareOptions};

pub use bpf::{attached_tracepoint_programs, inotify_watches, tracepoint_attachments, TracepointAttachment};
pub use history::snapshot;
pub use netns::NetNs;
pub use procs::{Agent, AgentOpts, AgentStatus, Receiver, ReceiverOpts};
pub use rig::{Rig, RigOpts};
pub use scratch::ScratchFs;

/// Panics unless the process runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "Lifeline's end-to-end tests need root (mount, losetup, eBPF); run them as root (euid is {euid})"
    );
}

/// The one check a test makes before it starts: root, and each of `tools`
/// there. A name starting with `lifeline-` is a workspace binary (built by
/// `cargo build --workspace --bins`, see [`bin_path`]); any other a tool on
/// PATH. A missing one fails the test loudly; nothing skips.
pub fn preflight(tools: &[&str]) {
    require_root();
    for t in tools {
        if t.starts_with("lifeline-") {
            bin_path(t);
        } else {
            require_tool(t);
        }
    }
}

/// Panics unless `tool` is found on PATH (or as an absolute path).
pub fn require_tool(tool: &str) -> PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!("required tool `{tool}` not found on PATH; install it (scripts/setup.sh lists the Debian packages)")
    })
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // sbin directories are not always on PATH under sudo or in CI shells.
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(extra).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Runs `tool args...`, panicking with its stderr unless it succeeds; returns
/// its stdout.
pub fn run_cmd(tool: &str, args: &[&str]) -> String {
    let exe = require_tool(tool);
    let out = Command::new(&exe).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The directory holding the workspace's binaries: the test executable is
/// `target/<profile>/deps/<test>-<hash>`, the binaries are in
/// `target/<profile>/`. `LIFELINE_BIN_DIR` overrides it.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LIFELINE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a parent directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The path of the workspace binary `name`; panics if it was not built.
pub fn bin_path(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} does not exist: run `cargo build --workspace --bins` first (with the same profile as the tests)",
        p.display()
    );
    p
}

/// A receiver with its store in `dir/store`, serving network boot
/// (`--http-listen`) on a free loopback port, with machine `name` registered
/// at MAC address `mac` (its credential and the CA in `dir/creds`): the
/// receiver, the HTTP port and the credentials directory.
pub fn netboot_receiver(dir: &Path, name: &str, mac: &str) -> (Receiver, u16, PathBuf) {
    let store = dir.join("store");
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut opts = ReceiverOpts::new(&store);
    opts.env = vec![("LIFELINE_HTTP_LISTEN".into(), format!("127.0.0.1:{http}"))];
    let rx = Receiver::start_opts(opts);
    let creds = dir.join("creds");
    let out = Command::new(bin_path("lifeline-receiver"))
        .arg("--store")
        .arg(&store)
        .args(["machine", "add", name, "--mac", mac, "--out"])
        .arg(&creds)
        .output()
        .unwrap();
    assert!(out.status.success(), "machine add {name}: {}", String::from_utf8_lossy(&out.stderr));
    (rx, http, creds)
}

/// The last `n` lines of a (log) file, or a note why there are none.
pub fn tail(path: &Path, n: usize) -> String {
    const WINDOW: u64 = 256 * 1024;
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A per-test scratch directory on the host filesystem for logs, receiver
/// stores and state directories. Removed on drop, except when the thread is
/// panicking: then it is kept and its path printed, so logs can be read.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lifeline-{name}-"))
            .tempdir()
            .expect("create a scratch directory");
        let path = dir.path().canonicalize().expect("canonicalize scratch directory");
        TestDir { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/rel`, created as a directory.
    pub fn subdir(&self, rel: &str) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                eprintln!("test failed: kept its scratch directory {}", kept.display());
            }
        }
    }
}

/// Compares two trees the way the tests require (contents, kinds, symlink
/// targets and modes; not mtimes). An I/O error while comparing (a file
/// vanishing under a concurrent writer) is reported as a difference.
pub fn differences(src: &Path, mirror: &Path) -> Vec<String> {
    let opts = CompareOptions { mode: true, mtime: false };
    match tree::compare(src, mirror, opts) {
        Ok(d) => d,
        Err(e) => vec![format!("comparing {} with {} failed: {e}", src.display(), mirror.display())],
    }
}

/// Polls [`differences`] until the trees are identical or `timeout` passes;
/// returns the last differences on timeout. A mirror that does not exist yet
/// counts as empty.
pub fn wait_identical(src: &Path, mirror: &Path, timeout: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let d = if mirror.is_dir() {
            differences(src, mirror)
        } else {
            let mut d = vec![format!("mirror {} does not exist (yet)", mirror.display())];
            d.extend(differences(src, mirror));
            d
        };
        if d.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines of a log file that contain `needle` (none if it cannot be
/// read).
pub fn log_lines(path: &Path, needle: &str) -> Vec<String> {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).lines().filter(|l| l.contains(needle)).map(str::to_string).collect())
        .unwrap_or_default()
}

/// The number in ` key=NUMBER` in a log line (tracing's `key=value`
/// fields).
pub fn log_field(line: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}=");
    line.match_indices(&pat).filter(|(i, _)| *i == 0 || line.as_bytes()[i - 1] == b' ').find_map(|(i, _)| {
        let rest = &line[i + pat.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// At most `n` lines of `diffs`, with a count of the rest.
pub fn summarize(diffs: &[String], n: usize) -> String {
    let mut s = diffs.iter().take(n).cloned().collect::<Vec<_>>().join("\n");
    if diffs.len() > n {
        s.push_str(&format!("\n... and {} more", diffs.len() - n));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_is_the_profile_directory() {
        let d = bin_dir();
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name == "debug" || name == "release" || d.join("deps").is_dir(), "{}", d.display());
    }

    #[test]
    fn log_fields_are_found_by_key() {
        let l = "INFO x: replication stream stopped machine=m batches=3 ops=10 skipped=2";
        assert_eq!(log_field(l, "skipped"), Some(2));
        assert_eq!(log_field(l, "ops"), Some(10));
        assert_eq!(log_field(l, "machine"), None);
        assert_eq!(log_field("xops=4 ops=5", "ops"), Some(5));
    }

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        fs::write(&p, (0..100).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        assert_eq!(tail(&p, 2), "line 98\nline 99");
        assert!(tail(&dir.path().join("missing"), 2).contains("cannot read"));
    }

    #[test]
    fn wait_identical_reports_differences_and_sees_equality() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("f"), b"x").unwrap();
        let d = wait_identical(a.path(), b.path(), Duration::from_millis(50)).unwrap_err();
        assert!(d[0].contains("only in"), "{d:?}");
        fs::write(b.path().join("f"), b"x").unwrap();
        wait_identical(a.path(), b.path(), Duration::from_secs(1)).unwrap();
    }
}
