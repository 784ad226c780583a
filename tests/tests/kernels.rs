//! "Not only this kernel" (issue 21): servers run distribution kernels, so
//! eBPF capture is checked on Debian 12's own kernel (6.1, package
//! `linux-image-amd64`) as well as on the host's.
//!
//! The boot OS builder makes a small initramfs for that kernel holding the
//! static (musl) `lifeline-agent` and a hook in place of the boot OS's usual
//! job; qemu boots it (TCG, never KVM). The hook mounts tracefs and a tmpfs
//! to watch (tmpfs is built into the kernel, so no module is loaded at all),
//! runs `lifeline-agent check-capture --dir` on it, and powers off. The
//! check prints the verifier's figures for the programs, loads and attaches
//! them, has another process write a known range into a new file there, and
//! prints the range the kernel reported. The test asserts that the kernel
//! that ran was 6.1, that the verifier's figures were printed, and that the
//! reported range is exactly the one written; if 6.1's verifier refuses the
//! program, it fails with the verifier's message.
//!
//! Needs qemu-system-x86, linux-image-amd64, busybox-static, musl-tools and
//! the rustup target x86_64-unknown-linux-musl, plus the pinned nightly and
//! bpf-linker every agent build needs (scripts/setup.sh installs them all);
//! fails with what to install when one is missing. The static agent is
//! built by `lifeline_bootos::agent::static_capture_agent` (scripts/test.sh
//! builds it first) unless LIFELINE_STATIC_CAPTURE_AGENT names one.

use lifeline_bootos::agent;
use lifeline_bootos::initramfs::DEFAULT_HOOK;
use lifeline_bootos::modules;
use lifeline_bootos::qemu::{Boot, Vm, VmSpec};
use lifeline_bootos::{BootOs, BootOsSpec, ExtraFile};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// From qemu's start to the hook's end marker. It takes about 20 s under
/// TCG on a quiet machine (see the timings the test prints); the rest is
/// room for a machine whose two cores also build and test other things.
const TIMEOUT: Duration = Duration::from_secs(150);
/// The hook's last line: `KERNEL-CHECK-END rc=N` (the check's exit status).
const END: &str = "KERNEL-CHECK-END rc=";
/// What the check writes: `CHECK_LEN` bytes at `CHECK_OFFSET` of a new file
/// (lifeline-agent check-capture's own figures; a range that ignored the
/// offset, or took the file size for the length, would not match).
const CHECK_OFFSET: u64 = 12288;
const CHECK_LEN: u64 = 4096;
/// Where the agent is inside the VM.
const AGENT: &str = "/bin/lifeline-agent";

/// The hook `/init` execs: everything the check needs that the boot OS's
/// `/init` does not mount, then the check, its status, and power-off.
/// Lines the test reads: `kernel-check: uname VERSION`, the check's own
/// (`verifier: ...`, `capture: ...`) and the end marker.
const HOOK: &str = r#"#!/bin/sh
# Test hook (tests/tests/kernels.rs): does eBPF capture work on this kernel?
export PATH=/bin:/sbin:/usr/bin
echo "kernel-check: uname $(uname -r)"
# aya finds tracepoints through tracefs; the boot OS's /init does not mount it.
mount -t tracefs nodev /sys/kernel/tracing || echo "kernel-check: cannot mount tracefs"
# The watched filesystem: a tmpfs of its own (its own device in the
# programs' WATCHED map). The agent pins nothing, so no bpffs.
mkdir -p /mnt/watched
mount -t tmpfs -o size=16m tmpfs /mnt/watched || echo "kernel-check: cannot mount the tmpfs"
@AGENT@ check-capture --dir /mnt/watched 2>&1
rc=$?
echo "KERNEL-CHECK-END rc=$rc"
sync
poweroff -f
"#;

/// Debian 12's kernel: the newest `/boot/vmlinuz-6.1.*` with its modules.
fn debian_61_kernel() -> (String, PathBuf) {
    let all = modules::installed_kernels(Path::new("/"));
    all.iter()
        .rev()
        .find(|(v, _)| v.starts_with("6.1."))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no Debian 12 kernel (6.1) in /boot: apt-get install linux-image-amd64 \
                 (scripts/setup.sh installs it); kernels found: {:?}",
                all.iter().map(|(v, _)| v).collect::<Vec<_>>()
            )
        })
}

#[test]
fn ebpf_capture_works_on_debian_12_kernel_6_1() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let (version, kernel) = debian_61_kernel();
    let t = Instant::now();
    let agent = agent::static_capture_agent(root).unwrap_or_else(|e| panic!("{e}"));
    let agent_time = t.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    let spec = BootOsSpec {
        kernel: Some(kernel.clone()),
        kernel_version: Some(version.clone()),
        // Nothing the check needs is a module in Debian's kernel: BPF,
        // BTF, tracefs and tmpfs are built in. No modules also means no NIC,
        // so /init's DHCP finds no interface and costs no time.
        modules: Vec::new(),
        files: vec![
            ExtraFile::executable(AGENT, &agent),
            ExtraFile::bytes(DEFAULT_HOOK, 0o755, HOOK.replace("@AGENT@", AGENT)),
        ],
        ..BootOsSpec::default()
    };
    let t = Instant::now();
    let built = BootOs::build(&spec, &initrd).unwrap_or_else(|e| {
        panic!("building the initramfs failed: {e} (scripts/setup.sh installs busybox-static)")
    });
    let build_time = t.elapsed();

    // quiet: kernel messages would interleave with the check's lines on the
    // one serial console. panic=-1 with -no-reboot: a kernel panic ends qemu
    // at once instead of waiting for the timeout.
    let append = "console=ttyS0 quiet panic=-1";
    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Kernel {
            kernel: &kernel,
            initrd: &initrd,
            append,
        },
        uefi: false,
        memory_mib: 512,
        disks: &[],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut rc = None;
    let mut end_at = Duration::ZERO;
    while rc.is_none() {
        let Some((at, line)) = vm.next_line(TIMEOUT) else {
            panic!("no {END:?} line within {TIMEOUT:?}: {}", vm.report());
        };
        if let Some(n) = line.strip_prefix(END) {
            rc = Some(n.trim().to_string());
            end_at = at;
        }
    }
    let exited = vm.wait_exit(Duration::from_secs(20));
    let log = vm.log().to_vec();
    let console = log.join("\n");
    let rc = rc.unwrap();

    // The check's verdict first: a refusal must show the verifier's message.
    let capture = log.iter().find(|l| l.starts_with("capture: ")).cloned();
    if rc != "0"
        || !capture
            .as_deref()
            .is_some_and(|l| l.starts_with("capture: ebpf ok:"))
    {
        panic!(
            "eBPF capture does not work on kernel {version}: check-capture exited with {rc}; \
             its output (with the verifier's message if it refused the program):\n{}\n\nconsole:\n{console}",
            log.iter()
                .skip_while(|l| !l.starts_with("kernel-check: uname"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let capture = capture.unwrap();

    let uname = log
        .iter()
        .find_map(|l| l.strip_prefix("kernel-check: uname "))
        .unwrap_or_else(|| panic!("no uname line; console:\n{console}"));
    assert!(
        uname.starts_with("6.1.") && uname == version,
        "the VM ran kernel {uname}, not {version}; console:\n{console}"
    );

    let verifier: Vec<&String> = log.iter().filter(|l| l.starts_with("verifier: ")).collect();
    assert!(
        verifier.iter().any(|l| l.starts_with("verifier: sys_exit:")
            && l.contains("bytes of stack")
            && l.contains("instructions processed")),
        "no verifier figures for sys_exit; console:\n{console}"
    );

    // capture: ebpf ok: write PATH offset O len L [...]
    let words: Vec<&str> = capture.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no `{key} N` in {capture:?}"))
    };
    let path = words
        .iter()
        .position(|w| *w == "write")
        .and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| panic!("no `write PATH` in {capture:?}"));
    assert!(
        path.starts_with("/mnt/watched/"),
        "the write was reported at {path}, not under the watched /mnt/watched: {capture}"
    );
    assert_eq!(
        (after("offset"), after("len")),
        (CHECK_OFFSET, CHECK_LEN),
        "the kernel reported another range than the one written: {capture}"
    );
    assert!(
        exited.is_some(),
        "qemu did not exit after poweroff -f; console:\n{console}"
    );

    eprintln!("--- kernel {version}: check-capture in the VM ---");
    for l in &verifier {
        eprintln!("{l}");
    }
    eprintln!("{capture}");
    eprintln!(
        "static agent ready in {agent_time:.2?}; initramfs {:.2} MB built in {build_time:.2?}; \
         qemu (TCG, -m 512): check done at {end_at:.2?}, exited at {:.2?}",
        built.compressed_size as f64 / 1e6,
        vm.elapsed()
    );
}
