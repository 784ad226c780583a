//! Boots a built boot OS in qemu (TCG; never KVM) with the host's Debian
//! kernel, a virtio disk and a virtio NIC on qemu's user network, and checks
//! the serial console: modules loaded, `lifeline.*` parameters parsed, the
//! disk listed, a DHCP lease of 10.0.2.15, then the hook's ready marker.
//!
//! Needs qemu-system-x86, linux-image-amd64 and busybox-static (installed by
//! scripts/setup.sh); fails loudly when they are missing.

use lifeline_bootos::cmdline::{BootParams, Mode};
use lifeline_bootos::{BootOs, BootOsSpec, ExtraFile};
use lifeline_testvm::qemu::{Boot, Vm, VmSpec};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(90);
const MARKER: &str = "LIFELINE-BOOTOS-READY machine=";

const HOOK: &str = r#"#!/bin/sh
# Test hook: report, then power off.
if [ -z "$LIFELINE_IFACE" ]; then
	echo "LIFELINE-BOOTOS-NONET"
	poweroff -f
fi
echo "hook: $LIFELINE_IFACE $(ip -4 -o addr show dev "$LIFELINE_IFACE")"
echo "hook: block devices: $(ls /dev | grep -E '^(vd|sd|nvme)' | tr '\n' ' ')"
echo "LIFELINE-BOOTOS-READY machine=$LIFELINE_MACHINE"
poweroff -f
"#;

#[test]
fn boots_in_qemu_with_network_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = BootOsSpec::default();
    spec.files.push(ExtraFile::bytes("/lifeline-hook", 0o755, HOOK));
    let initrd = dir.path().join("initrd.img");
    let t = Instant::now();
    let built = BootOs::build(&spec, &initrd).unwrap_or_else(|e| {
        panic!("building the boot OS failed: {e} (scripts/setup.sh installs linux-image-amd64 and busybox-static)")
    });
    let build_time = t.elapsed();

    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk).unwrap().set_len(16 << 20).unwrap();

    let mut params = BootParams::new("pc1");
    params.receiver = Some("https://10.0.2.2:7700".into());
    params.mode = Mode::Backup;
    let append = format!("console=ttyS0 {}", params.to_cmdline().unwrap());

    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Kernel { kernel: &built.kernel, initrd: &initrd, append: &append },
        uefi: false,
        memory_mib: 256,
        disks: &[&disk],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut init_at = None;
    let mut ready_at = None;
    while ready_at.is_none() {
        let Some((at, line)) = vm.next_line(TIMEOUT) else {
            panic!("no {MARKER} line within {TIMEOUT:?}: {}", vm.report());
        };
        if line.starts_with("lifeline: boot OS up") {
            init_at = Some(at);
        }
        if line.contains("LIFELINE-BOOTOS-NONET") {
            panic!("no DHCP lease in the guest; console:\n{}", vm.log().join("\n"));
        }
        if line.starts_with(MARKER) {
            ready_at = Some(at);
        }
    }
    let ready_at = ready_at.unwrap();
    // Wait for the power-off (bounded), then collect what's left.
    let exited = vm.wait_exit(Duration::from_secs(20));
    let exit_at = vm.elapsed();
    let log = vm.log().to_vec();
    let console = log.join("\n");
    let find = |prefix: &str| {
        log.iter()
            .find(|l| l.starts_with(prefix))
            .cloned()
            .unwrap_or_else(|| panic!("no {prefix:?} line; console:\n{console}"))
    };

    assert!(find(MARKER).ends_with("machine=pc1"), "{console}");
    let net = find("lifeline: network");
    assert!(net.contains("eth0 10.0.2.15/"), "expected a lease of 10.0.2.15 on eth0: {net}\n{console}");
    let disks = find("lifeline: disks:");
    assert!(disks.split_whitespace().any(|d| d == "vda"), "vda not listed: {disks}\n{console}");
    assert!(find("hook: block devices:").contains("vda"), "{console}");
    for p in ["machine=pc1", "receiver=https://10.0.2.2:7700", "mode=backup", "style=receiver"] {
        find(&format!("lifeline: param {p}"));
    }
    let mods = find("lifeline: modules:");
    for m in ["virtio_net", "virtio_blk", "virtio_pci", "sd_mod", "nvme", "ahci", "e1000"] {
        let failed = mods.split("not loaded:").nth(1).unwrap_or("");
        assert!(!failed.split_whitespace().any(|f| f == m), "{m} failed to load: {mods}\n{console}");
    }
    assert!(exited.is_some(), "qemu did not exit after poweroff -f; console:\n{console}");

    eprintln!("--- guest console (lifeline lines) ---");
    for l in log.iter().filter(|l| l.starts_with("lifeline") || l.starts_with("hook") || l.starts_with("LIFELINE")) {
        eprintln!("{l}");
    }
    eprintln!(
        "boot OS: kernel {} ({}), {} modules, initramfs {} bytes compressed ({:.2} MB), {} uncompressed, built in {:.2?}",
        built.kernel.display(),
        built.kernel_version,
        built.modules.len(),
        built.compressed_size,
        built.compressed_size as f64 / 1e6,
        built.uncompressed_size,
        build_time
    );
    eprintln!(
        "qemu (TCG, -m 256): /init at {:.2?}, ready marker at {:.2?}, exited at {:.2?}",
        init_at.unwrap_or_default(),
        ready_at,
        exit_at
    );
    assert!(built.compressed_size <= 30_000_000, "initramfs over 30 MB: {}", built.compressed_size);
    if ready_at > Duration::from_secs(15) {
        eprintln!("WARNING: ready after {ready_at:.2?}, over the 15 s target (2 shared cores, TCG)");
    }
}
