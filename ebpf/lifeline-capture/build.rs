//! Builds the kernel programs (`ebpf/lifeline-ebpf`) for `bpfel-unknown-none`
//! with the dated nightly pinned in `ebpf/lifeline-ebpf/rust-toolchain.toml`
//! and bpf-linker (both installed by `scripts/setup.sh`), and leaves the
//! object in OUT_DIR for `include_bytes!`.
//!
//! The eBPF crate is its own workspace with its own target directory, so this
//! nested cargo never waits on the outer build's lock.
//!
//! `LIFELINE_WITHOUT_EBPF=1` builds without the programs, and so without
//! nightly or bpf-linker: for working on the user-space crates (the
//! scheduler's tests) on a machine without them. Such an agent can only use
//! the inotify fallback, and says so (`Capture::load` fails with the reason).
use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest.join("../lifeline-ebpf").canonicalize()?;
    let common_dir = manifest.join("../lifeline-ebpf-common").canonicalize()?;
    let toolchain_file = ebpf_dir.join("rust-toolchain.toml");
    for p in [ebpf_dir.join("src"), ebpf_dir.join("Cargo.toml"), common_dir.join("src"), toolchain_file.clone()] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR")?).join("lifeline-ebpf.o");
    println!("cargo:rerun-if-env-changed=LIFELINE_WITHOUT_EBPF");
    if env::var_os("LIFELINE_WITHOUT_EBPF").is_some_and(|v| v == "1") {
        println!("cargo:warning=LIFELINE_WITHOUT_EBPF=1: built without the eBPF programs; the agent can only use its inotify fallback");
        std::fs::write(&out, [])?;
        return Ok(());
    }

    // Exactly the pinned toolchain, whatever nightly the machine has besides.
    let channel = pinned_channel(&toolchain_file)?;
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &channel, "cargo", "build", "--release"]).current_dir(&ebpf_dir);
    // The outer cargo's settings (toolchain, wrappers like clippy-driver,
    // flags, target dir) must not leak into the nested BPF build.
    for (var, _) in env::vars_os() {
        let v = var.to_string_lossy();
        let keep = v == "CARGO_HOME";
        if !keep
            && (v.starts_with("CARGO")
                || v.starts_with("RUSTC")
                || v.starts_with("RUSTUP_TOOLCHAIN")
                || v.starts_with("RUSTFLAGS")
                || v.starts_with("RUSTDOCFLAGS")
                || v.ends_with("MAKEFLAGS")
                || v == "MFLAGS")
        {
            cmd.env_remove(&var);
        }
    }
    let status = cmd.status().map_err(|e| {
        anyhow::anyhow!("cannot run rustup to build the eBPF programs ({e}); run scripts/setup.sh first")
    })?;
    if !status.success() {
        anyhow::bail!(
            "building the eBPF programs in {} with {channel} failed; scripts/setup.sh installs \
             that toolchain with rust-src and the bpf-linker it needs",
            ebpf_dir.display()
        );
    }
    let built = ebpf_dir.join("target/bpfel-unknown-none/release/lifeline-ebpf");
    std::fs::copy(&built, &out)?;
    Ok(())
}

/// The `channel` of a rust-toolchain.toml (one `channel = "..."` line).
fn pinned_channel(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .next()
        .ok_or_else(|| anyhow::anyhow!("no channel in {}", file.display()))
}
