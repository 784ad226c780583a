//! Builds the kernel programs (`ebpf/lifeline-ebpf`) for `bpfel-unknown-none`
//! with the dated nightly pinned in `ebpf/lifeline-ebpf/rust-toolchain.toml`
//! and bpf-linker (both installed by `scripts/setup.sh`), and leaves the
//! object in OUT_DIR for `include_bytes!`.
//!
//! The eBPF crate is its own workspace with its own target directory, so this
//! nested cargo never waits on the outer build's lock.
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
