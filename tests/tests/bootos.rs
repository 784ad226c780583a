//! First light of the unattended network backup from the boot OS: a real
//! receiver on the host's loopback, a boot OS built with the static
//! `lifeline-image` (x86_64-unknown-linux-musl), the receiver's CA and the
//! repository password, booted in qemu (TCG, never KVM) with a small GPT
//! disk (FAT32 ESP + ext4 + swap + unknown) as virtio. The guest reaches the
//! receiver at 10.0.2.2 (qemu's user network maps it to the host's
//! 127.0.0.1), creates the repository, images /dev/vda as `pc1-boot` and
//! powers off; the host then restores the image with its own
//! `lifeline-image` into a new file and compares it with the original disk.
//!
//! Needs qemu-system-x86, linux-image-amd64, busybox-static, musl-tools and
//! the rustup target x86_64-unknown-linux-musl (scripts/setup.sh installs
//! them). The static agent is built by `lifeline_bootos::agent::static_binary`
//! (minutes the first time) unless LIFELINE_BOOTOS_AGENT names one.

use lifeline_bootos::agent;
use lifeline_bootos::qemu::{Vm, VmSpec};
use lifeline_bootos::{BootOs, BootOsSpec};
use lifeline_testdisk::DiskSpec;
use lifeline_tests::{bin_path, Receiver};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// From qemu's start to the backup's end marker.
const TIMEOUT: Duration = Duration::from_secs(240);
const PASSWORD: &str = "boot-os-test-password";

#[test]
fn boot_os_backs_the_disk_up_to_the_receiver() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let t = Instant::now();
    let agent_bin = agent::static_binary(root).unwrap_or_else(|e| panic!("{e}"));
    let agent_time = t.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let disk = DiskSpec::pc(96).build(dir.path(), "disk.img");
    let rx = Receiver::start(&dir.path().join("store"));
    let (token_file, ca) = rx.credentials("pc1");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert!(token.starts_with("pc1:"), "unexpected credential format");

    let spec = BootOsSpec {
        files: agent::unattended_files(&agent_bin, &std::fs::read(&ca).unwrap(), PASSWORD)
            .unwrap_or_else(|e| panic!("{e}")),
        ..BootOsSpec::default()
    };
    let initrd = dir.path().join("initrd.img");
    let t = Instant::now();
    let built = BootOs::build(&spec, &initrd).unwrap_or_else(|e| {
        panic!("building the boot OS failed: {e} (scripts/setup.sh installs linux-image-amd64 and busybox-static)")
    });
    let build_time = t.elapsed();

    let append = format!(
        "console=ttyS0 lifeline.receiver=https://10.0.2.2:{} lifeline.machine=pc1 lifeline.token={token} lifeline.mode=backup lifeline.style=receiver",
        rx.port()
    );
    let mut vm = Vm::boot(&VmSpec {
        kernel: &built.kernel,
        initrd: &initrd,
        append: &append,
        memory_mib: 512,
        disk: Some(&disk.path),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut init_at = None;
    let mut net_at = None;
    let mut ok_line = None;
    while ok_line.is_none() {
        let Some((at, line)) = vm.next_line(TIMEOUT) else {
            panic!(
                "no LIFELINE-BACKUP-OK within {TIMEOUT:?}: {}\nreceiver log:\n{}",
                vm.report(),
                rx.log_tail(30)
            );
        };
        if line.starts_with("lifeline: boot OS up") {
            init_at = Some(at);
        }
        if line.starts_with("lifeline: network") {
            net_at = Some(at);
        }
        if line.contains("LIFELINE-BACKUP-FAILED") {
            panic!(
                "the boot OS backup failed; console:\n{}\nreceiver log:\n{}",
                vm.log().join("\n"),
                rx.log_tail(30)
            );
        }
        if line.starts_with("LIFELINE-BACKUP-OK") {
            ok_line = Some((at, line));
        }
    }
    let (ok_at, ok_line) = ok_line.unwrap();
    // Wait for the power-off (bounded).
    let exited = vm.wait_exit(Duration::from_secs(20));
    let log = vm.log().to_vec();
    let console = log.join("\n");
    eprintln!("--- guest console (lifeline lines) ---");
    for l in log
        .iter()
        .filter(|l| l.starts_with("lifeline") || l.starts_with("LIFELINE"))
    {
        eprintln!("{l}");
    }
    assert!(
        ok_line.contains("image=pc1-boot") && ok_line.contains("disk=/dev/vda"),
        "{ok_line}\n{console}"
    );
    assert!(
        exited.is_some(),
        "qemu did not exit after poweroff -f; console:\n{console}"
    );
    let guest_seconds: u64 = ok_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("seconds="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();

    // Restore on the host with the host's lifeline-image and compare.
    let restored = dir.path().join("restored.img");
    let t = Instant::now();
    let out = Command::new(bin_path("lifeline-image"))
        .args(["restore", "--name", "pc1-boot", "--read-back"])
        .arg(&restored)
        .env("LIFELINE_REPO", rx.url())
        .env("LIFELINE_TOKEN_FILE", &token_file)
        .env("LIFELINE_CA", &ca)
        .env("LIFELINE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    let restore_time = t.elapsed();
    assert!(
        out.status.success(),
        "host restore failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    disk.check_copy(&restored);

    let agent_size = std::fs::metadata(&agent_bin).unwrap().len();
    eprintln!(
        "static agent {} ({:.1} MB), located/built in {agent_time:.2?}",
        agent_bin.display(),
        agent_size as f64 / 1e6
    );
    eprintln!(
        "boot OS: kernel {}, {} modules, initramfs {:.2} MB compressed, built in {build_time:.2?}",
        built.kernel_version,
        built.modules.len(),
        built.compressed_size as f64 / 1e6
    );
    eprintln!(
        "qemu (TCG, -m 512): /init at {:.2?}, network up at {:.2?}, backup done at {ok_at:.2?} (backup in the VM: {guest_seconds} s by the guest clock, init + backup after the lease: {:.2?})",
        init_at.unwrap_or_default(),
        net_at.unwrap_or_default(),
        ok_at.saturating_sub(net_at.unwrap_or_default())
    );
    eprintln!("host restore of pc1-boot with --read-back: {restore_time:.2?}");
}
