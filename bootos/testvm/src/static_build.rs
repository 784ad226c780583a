//! Static (musl) builds of the workspace's binaries, for the tests that put
//! them into a boot OS or a VM: `lifeline-image` for the boot OS tests
//! ([`static_binary`]), `lifeline-agent` for the capture check on other
//! kernels ([`static_capture_agent`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of the boot OS's static binaries (no shared libraries
/// there).
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The static `lifeline-image` for the boot OS.
///
/// If `LIFELINE_BOOTOS_AGENT` names a file, that file is used. Otherwise
/// builds it with [`static_build`] (minutes the first time, about a second
/// when up to date).
pub fn static_binary(workspace_root: &Path) -> anyhow::Result<PathBuf> {
    static_build(workspace_root, "lifeline-image", "LIFELINE_BOOTOS_AGENT")
}

/// The static `lifeline-agent` (the capture daemon, with the eBPF programs
/// built in), for a VM that checks capture on another kernel than the
/// host's (tests/tests/kernels.rs).
///
/// If `LIFELINE_STATIC_CAPTURE_AGENT` names a file, that file is used.
/// Otherwise builds it with [`static_build`]. Besides the musl target it
/// needs what every agent build needs: the pinned nightly and bpf-linker
/// that `lifeline-capture`'s build script compiles the eBPF programs with.
pub fn static_capture_agent(workspace_root: &Path) -> anyhow::Result<PathBuf> {
    static_build(workspace_root, "lifeline-agent", "LIFELINE_STATIC_CAPTURE_AGENT")
}

/// A static (musl) build of the workspace package `package`, whose binary
/// has the same name.
///
/// If the environment variable `override_var` names a file, that file is
/// used. Otherwise runs `cargo build --release --target
/// x86_64-unknown-linux-musl -p PACKAGE` in `workspace_root` (cargo from
/// `$CARGO`, else `cargo` on the PATH; a no-op when it is up to date) and
/// returns the binary. `scripts/test.sh` runs the same command first, so
/// that tests find it built.
///
/// The build gets a target directory of its own,
/// `<target dir>/lifeline-bootos-agent` (the target dir being
/// `$CARGO_TARGET_DIR` or `<workspace_root>/target`), so that calling this
/// from a test that `cargo test` runs never waits for the lock cargo holds
/// on the main target directory. It is built without debug information
/// and stripped (the workspace's release profile keeps line tables). The
/// first build takes minutes (a release build of the whole gRPC/TLS
/// stack); later calls take about a second.
pub fn static_build(workspace_root: &Path, package: &str, override_var: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(override_var) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            anyhow::bail!("{override_var}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { workspace_root.join(d) })
        .unwrap_or_else(|| workspace_root.join("target"));
    let target_dir = base.join("lifeline-bootos-agent");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // Run from a test, the environment carries the CARGO_* variables cargo
    // sets for the test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...); build
    // scripts that watch such variables would then rebuild on every call.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME" {
                cmd.env_remove(k);
            }
        }
    }
    let out = cmd
        .args(["build", "--release", "--target", TARGET, "-p", package])
        .env("CARGO_TARGET_DIR", &target_dir)
        // No debug information: it would make the agent 60 MB instead of
        // about 10 and the initramfs three times as large.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .current_dir(workspace_root)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}; install Rust with rustup", Path::new(&cargo).display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        anyhow::bail!(
            "building the static {package} failed (needs `rustup target add {TARGET}` and musl-tools; scripts/setup.sh installs them):\n{tail}"
        );
    }
    let bin = target_dir.join(TARGET).join("release").join(package);
    if !bin.is_file() {
        anyhow::bail!("cargo built {package} but {} does not exist", bin.display());
    }
    Ok(bin)
}
