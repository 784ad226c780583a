//! Proves, in about a second, that capture works on this machine: the
//! verifier accepts the programs (with its figures), they attach, and a write
//! by another process comes back with its exact byte range.
//!
//! `lifeline-agent check-capture` runs it; `scripts/test.sh` runs that
//! first, so a machine whose kernel refuses the programs stops the test run
//! in seconds with the verifier's message rather than after every eBPF test
//! has failed; the qemu test runs it on other kernels.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::verifier::VerifierReport;
use crate::{Capture, CaptureMsg, CaptureOptions, ChangeKind, PathResolver};

/// Where the check writes in its file: past the start, so a range that
/// ignored the offset would show.
pub const CHECK_OFFSET: u64 = 12288;
pub const CHECK_LEN: u64 = 4096;

/// What the check saw.
#[derive(Debug)]
pub struct SelfCheck {
    pub verifier: Vec<VerifierReport>,
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// From the write to its record reaching user space.
    pub latency: Duration,
}

/// Runs the check in `dir` (any directory on the filesystem to test). Must
/// be called before the process starts other threads: the write comes from
/// a forked child, because the programs never report the agent's own I/O.
pub fn run(dir: &Path) -> anyhow::Result<SelfCheck> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}: not a directory", dir.display()))?;
    let verifier = crate::verifier_reports()?;
    let mut capture = Capture::load(&CaptureOptions { ring_buffer_bytes: 1 << 20 })?;
    capture.set_watched(std::slice::from_ref(&dir))?;
    capture.attach()?;
    let reader = capture.take_reader().expect("a fresh capture has its reader");
    let resolver = PathResolver::new(vec![dir.clone()])?;

    let path = dir.join(format!(".lifeline-capture-check-{}", std::process::id()));
    let started = Instant::now();
    write_from_child(&path)?;
    // The reader blocks until records come; it runs on its own thread and
    // stops when this side hangs up.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || reader.run(resolver, move |msg| tx.send(msg).is_ok()));
    let deadline = started + Duration::from_secs(5);
    let mut seen = None;
    let mut others = Vec::new();
    while let Ok(msg) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let CaptureMsg::Change(c) = &msg {
            if c.path == path {
                if let ChangeKind::Write { offset, len } = c.kind {
                    seen = Some((offset, len, started.elapsed()));
                    break;
                }
            }
        }
        others.push(format!("{msg:?}"));
    }
    let _ = std::fs::remove_file(&path);
    capture.detach()?;
    let Some((offset, len, latency)) = seen else {
        bail!(
            "the programs loaded and attached, but no write to {} came back within 5 s \
             (other records: {}); is tracefs mounted and {} on a local filesystem?",
            path.display(),
            if others.is_empty() { "none".to_string() } else { others.join("; ") },
            dir.display()
        );
    };
    if (offset, len) != (CHECK_OFFSET, CHECK_LEN) {
        bail!(
            "a write of {CHECK_LEN} bytes at offset {CHECK_OFFSET} to {} came back as {len} bytes at {offset}",
            path.display()
        );
    }
    Ok(SelfCheck { verifier, path, offset, len, latency })
}

/// Creates `path` and writes `CHECK_LEN` bytes at `CHECK_OFFSET` from a
/// child process (raw system calls only between fork and exit).
fn write_from_child(path: &Path) -> anyhow::Result<()> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let buf = vec![0x5a_u8; CHECK_LEN as usize];
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => unsafe {
            let fd = libc::open(cpath.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o600);
            let ok = fd >= 0
                && libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), CHECK_OFFSET as libc::off_t) == CHECK_LEN as isize;
            libc::_exit(if ok { 0 } else { 1 })
        },
        child => {
            let mut status = 0;
            if unsafe { libc::waitpid(child, &mut status, 0) } < 0 {
                bail!("waitpid: {}", std::io::Error::last_os_error());
            }
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                bail!("the child could not write {}", path.display());
            }
            Ok(())
        }
    }
}
