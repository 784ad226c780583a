//! "Not only this kernel" (issue 21): servers run distribution kernels, so
//! eBPF capture is checked on Debian 12's own kernel (6.1, package
//! `linux-image-amd64`) as well as on the host's.
//!
//! The boot OS builder makes a small initramfs for that kernel holding the
//! static (musl) `lifeline-agent` and a hook in place of the boot OS's usual
//! job; qemu boots it (TCG, never KVM) with an ext4 virtio disk. The hook
//! mounts tracefs, runs `lifeline-agent check-capture --dir` on a tmpfs and
//! on the ext4 filesystem (an anonymous device and a real block device: the
//! programs key watched filesystems by device number), and powers off. Each
//! check prints the verifier's figures for the programs, loads and attaches
//! them, has another process write a known range into a new file there, and
//! prints the range the kernel reported. The test asserts that the kernel
//! that ran was 6.1, that the verifier's figures were printed, and that each
//! reported range is exactly the one written; if 6.1's verifier refuses the
//! program, it fails with the verifier's message.
//!
//! Needs qemu-system-x86, linux-image-amd64, busybox-static, e2fsprogs,
//! musl-tools and the rustup target x86_64-unknown-linux-musl, plus the
//! pinned nightly and bpf-linker every agent build needs (scripts/setup.sh
//! installs them all); fails with what to install when one is missing. The
//! static agent is built by `lifeline_testvm::static_build::static_capture_agent`
//! (scripts/test.sh builds it first) unless LIFELINE_STATIC_CAPTURE_AGENT
//! names one.

use lifeline_bootos::initramfs::DEFAULT_HOOK;
use lifeline_bootos::modules;
use lifeline_bootos::{BootOs, BootOsSpec, ExtraFile};
use lifeline_testvm::qemu::{Boot, Vm, VmSpec};
use lifeline_testvm::static_build;
// What check-capture writes: CHECK_LEN bytes at CHECK_OFFSET of a new file
// (a range that ignored the offset, or took the file size for the length,
// would not match).
use lifeline_capture::selfcheck::{CHECK_LEN, CHECK_OFFSET};
use lifeline_tests::verifier::{figures, INSN_BUDGET, STACK_BUDGET};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// From qemu's start to the hook's end marker. It takes about 20 s under
/// TCG on a quiet machine (see the timings the test prints); the rest is
/// room for a machine whose two cores also build and test other things.
const TIMEOUT: Duration = Duration::from_secs(150);
/// The hook's last line, after every check.
const END: &str = "KERNEL-CHECK-END";
/// The kernel modules the VM loads (their dependencies are added): the
/// virtio disk and ext4. BPF, BTF, tracefs and tmpfs are built into
/// Debian's kernel.
const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];
/// Where the agent is inside the VM.
const AGENT: &str = "/bin/lifeline-agent";

/// The hook `/init` execs: what the check needs that the boot OS's `/init`
/// does not mount, the check on each watched filesystem, and power-off.
/// Lines the test reads: `kernel-check: uname VERSION`, per filesystem
/// `kernel-check: dir DIR on MAJ:MIN` then the check's own (`verifier:
/// ...`, `capture: ...`) and `KERNEL-CHECK-DONE dir=DIR rc=N`, and last the
/// end marker.
const HOOK: &str = r#"#!/bin/sh
# Test hook (tests/tests/kernels.rs): does eBPF capture work on this kernel?
export PATH=/bin:/sbin:/usr/bin
echo "kernel-check: uname $(uname -r)"
# aya finds tracepoints through tracefs; the boot OS's /init does not mount it.
mount -t tracefs nodev /sys/kernel/tracing || echo "kernel-check: cannot mount tracefs"
# The agent pins nothing, so no bpffs.
check() {
	# The device as the kernel numbers it (mountinfo's MAJ:MIN): the
	# programs' WATCHED map is keyed by it.
	echo "kernel-check: dir $1 on $(grep " $1 " /proc/self/mountinfo | cut -d' ' -f3)"
	@AGENT@ check-capture --dir "$1" 2>&1
	echo "KERNEL-CHECK-DONE dir=$1 rc=$?"
}
mkdir -p /mnt/tmpfs /mnt/ext4
if mount -t tmpfs -o size=16m tmpfs /mnt/tmpfs; then
	check /mnt/tmpfs
else
	echo "KERNEL-CHECK-DONE dir=/mnt/tmpfs rc=cannot-mount"
fi
if mount -t ext4 /dev/vda /mnt/ext4; then
	check /mnt/ext4
	umount /mnt/ext4
else
	echo "KERNEL-CHECK-DONE dir=/mnt/ext4 rc=cannot-mount"
fi
echo "KERNEL-CHECK-END"
sync
poweroff -f
"#;

/// Debian 12's kernel: the newest `/boot/vmlinuz-6.1.*` with its modules.
fn debian_61_kernel() -> (String, PathBuf) {
    let all = modules::installed_kernels(Path::new("/"));
    all.iter().rev().find(|(v, _)| v.starts_with("6.1.")).cloned().unwrap_or_else(|| {
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
    let agent = static_build::static_capture_agent(root).unwrap_or_else(|e| panic!("{e}"));
    let agent_time = t.elapsed();

    let dir = tempfile::tempdir().unwrap();
    // The ext4 filesystem on a virtio disk: a real block device (major
    // 254), where tmpfs has major 0 and would hide a wrong dev_t encoding
    // between the kernel's s_dev and stat(2)'s st_dev.
    let disk = dir.path().join("ext4.img");
    std::fs::File::create(&disk).unwrap().set_len(32 << 20).unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk).output().unwrap_or_else(|e| {
        panic!("cannot run mkfs.ext4: {e}; apt-get install e2fsprogs (scripts/setup.sh installs it)")
    });
    assert!(mkfs.status.success(), "mkfs.ext4 failed: {}", String::from_utf8_lossy(&mkfs.stderr));

    let initrd = dir.path().join("initrd.img");
    let spec = BootOsSpec {
        kernel: Some(kernel.clone()),
        kernel_version: Some(version.clone()),
        // No NIC driver: /init's DHCP finds no interface and costs no time.
        modules: WANTED_MODULES.iter().map(|m| m.to_string()).collect(),
        files: vec![
            ExtraFile::executable(AGENT, &agent),
            ExtraFile::bytes(DEFAULT_HOOK, 0o755, HOOK.replace("@AGENT@", AGENT)),
        ],
        ..BootOsSpec::default()
    };
    let t = Instant::now();
    let built = BootOs::build(&spec, &initrd)
        .unwrap_or_else(|e| panic!("building the initramfs failed: {e} (scripts/setup.sh installs busybox-static)"));
    let build_time = t.elapsed();

    // quiet: kernel messages would interleave with the check's lines on the
    // one serial console. panic=-1 with -no-reboot: a kernel panic ends qemu
    // at once instead of waiting for the timeout.
    let append = "console=ttyS0 quiet panic=-1";
    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Kernel { kernel: &kernel, initrd: &initrd, append },
        uefi: false,
        memory_mib: 512,
        disks: &[&disk],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let end_at = loop {
        let Some((at, line)) = vm.next_line(TIMEOUT) else {
            panic!("no {END:?} line within {TIMEOUT:?}: {}", vm.report());
        };
        if line.starts_with(END) {
            break at;
        }
    };
    let exited = vm.wait_exit(Duration::from_secs(20));
    let log = vm.log().to_vec();
    let console = log.join("\n");

    let uname = log
        .iter()
        .find_map(|l| l.strip_prefix("kernel-check: uname "))
        .unwrap_or_else(|| panic!("no uname line; console:\n{console}"));
    assert!(
        uname.starts_with("6.1.") && uname == version,
        "the VM ran kernel {uname}, not {version}; console:\n{console}"
    );
    // Drivers for CPU features TCG's CPU lacks (crc32c-intel) fail to load,
    // as on real hardware without them; the ones the test needs must not.
    let modules = log
        .iter()
        .find(|l| l.starts_with("lifeline: modules:"))
        .unwrap_or_else(|| panic!("no modules line; console:\n{console}"));
    let failed = modules.split("not loaded:").nth(1).unwrap_or("");
    for m in WANTED_MODULES {
        assert!(!failed.split_whitespace().any(|f| f == *m), "{m} failed to load: {modules}\nconsole:\n{console}");
    }

    let tmpfs = Check::of(&log, "/mnt/tmpfs", &version);
    let ext4 = Check::of(&log, "/mnt/ext4", &version);
    assert_eq!(tmpfs.dev.0, 0, "tmpfs should be on an anonymous device (major 0): {:?}", tmpfs.dev);
    assert_ne!(ext4.dev.0, 0, "the ext4 check must be on a real block device (major not 0): {:?}", ext4.dev);
    assert!(exited.is_some(), "qemu did not exit after poweroff -f; console:\n{console}");

    eprintln!("--- kernel {version}: check-capture in the VM ---");
    for c in [&tmpfs, &ext4] {
        eprintln!("{} on {}:{}", c.dir, c.dev.0, c.dev.1);
        for l in &c.verifier {
            eprintln!("  {l}");
        }
        eprintln!("  {}", c.capture);
    }
    eprintln!(
        "static agent ready in {agent_time:.2?}; initramfs {:.2} MB ({} modules) built in {build_time:.2?}; \
         qemu (TCG, -m 512): checks done at {end_at:.2?}, exited at {:.2?}",
        built.compressed_size as f64 / 1e6,
        built.modules.len(),
        vm.elapsed()
    );
}

/// One run of check-capture in the VM, from its part of the console.
struct Check {
    dir: &'static str,
    /// The watched filesystem's device (major, minor) as the kernel numbers it.
    dev: (u32, u32),
    /// `verifier: ...` lines.
    verifier: Vec<String>,
    /// `capture: ebpf ok: write PATH offset O len L ...`
    capture: String,
}

impl Check {
    /// The run on `dir`: it passed, printed the verifier's figures for
    /// `sys_exit`, and reported the write under `dir` with the exact range
    /// written. Panics with the run's output (the verifier's message when
    /// it refused the program) otherwise.
    fn of(log: &[String], dir: &'static str, version: &str) -> Check {
        let console = log.join("\n");
        let head = format!("kernel-check: dir {dir} on ");
        let done = format!("KERNEL-CHECK-DONE dir={dir} rc=");
        let end = log
            .iter()
            .position(|l| l.starts_with(&done))
            .unwrap_or_else(|| panic!("no {done:?} line; console:\n{console}"));
        let rc = &log[end][done.len()..];
        let start = log[..end].iter().rposition(|l| l.starts_with(&head)).unwrap_or(end);
        let out = &log[start..=end];
        let capture = out.iter().find(|l| l.starts_with("capture: "));
        if rc != "0" || !capture.is_some_and(|l| l.starts_with("capture: ebpf ok:")) {
            panic!(
                "eBPF capture does not work on kernel {version} ({dir}): check-capture ended \
                 with rc={rc}; its output (with the verifier's message if it refused the \
                 program):\n{}\n\nconsole:\n{console}",
                out.join("\n")
            );
        }
        let capture = capture.unwrap().clone();
        let dev = log[start][head.len()..]
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or_else(|| panic!("no MAJ:MIN in {:?}", log[start]));
        let verifier: Vec<String> = out.iter().filter(|l| l.starts_with("verifier: ")).cloned().collect();
        assert!(
            verifier.iter().any(|l| l.starts_with("verifier: sys_exit:")
                && l.contains("bytes of stack")
                && l.contains("instructions processed")),
            "no verifier figures for sys_exit ({dir}):\n{}",
            out.join("\n")
        );
        // The margin the host's verifier test keeps, kept on this kernel too:
        // its verifier walks more instructions for the same program.
        for l in &verifier {
            let (stack, insns) = figures(l).unwrap_or_else(|| panic!("no stack or instruction figure: {l}"));
            assert!(
                stack > 0 && stack <= STACK_BUDGET as u64,
                "on kernel {version} the deepest call chain uses {stack} bytes of stack, over the \
                 {STACK_BUDGET}-byte budget (the kernel refuses 512): {l}"
            );
            assert!(
                insns <= INSN_BUDGET,
                "on kernel {version} the verifier processed {insns} instructions, over \
                 {INSN_BUDGET} (its limit is 1,000,000): {l}"
            );
        }

        // capture: ebpf ok: write PATH offset O len L [...]
        let words: Vec<&str> = capture.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .copied()
                .unwrap_or_else(|| panic!("no `{key} ...` in {capture:?}"))
        };
        let number =
            |key: &str| after(key).parse::<u64>().unwrap_or_else(|_| panic!("`{key}` is not a number in {capture:?}"));
        let path = Path::new(after("write"));
        assert_eq!(
            path.parent(),
            Some(Path::new(dir)),
            "the write was reported at {}, not in the watched {dir}: {capture}",
            path.display()
        );
        assert_eq!(
            (number("offset"), number("len")),
            (CHECK_OFFSET, CHECK_LEN),
            "the kernel reported another range than the one written ({dir}): {capture}"
        );
        Check { dir, dev, verifier, capture }
    }
}

/// The console parsing on its own (no VM): a good run passes, and a wrong
/// range, a write elsewhere or a refusal fail with what went wrong.
mod parsing {
    use super::Check;

    const FIGURES: &str = "verifier: sys_exit: deepest call chain 336 bytes of stack (112+72+24+112+0; limit 512), 129664 instructions processed (limit 1000000)";

    fn console(capture: &str, rc: u32) -> Vec<String> {
        [
            "kernel-check: uname 6.1.0-57-amd64",
            "kernel-check: dir /mnt/ext4 on 254:0",
            FIGURES,
            capture,
            &format!("KERNEL-CHECK-DONE dir=/mnt/ext4 rc={rc}"),
            "KERNEL-CHECK-END",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_good_run() {
        let c = Check::of(
            &console("capture: ebpf ok: write /mnt/ext4/f offset 12288 len 4096 (seen after 3.1 ms)", 0),
            "/mnt/ext4",
            "6.1",
        );
        assert_eq!(c.dev, (254, 0));
        assert_eq!(c.verifier.len(), 1);
    }

    #[test]
    #[should_panic(expected = "over 300000")]
    fn too_many_instructions() {
        let mut log = console("capture: ebpf ok: write /mnt/ext4/f offset 12288 len 4096", 0);
        log[2] = FIGURES.replace("129664", "312345");
        Check::of(&log, "/mnt/ext4", "6.1");
    }

    #[test]
    #[should_panic(expected = "another range than the one written")]
    fn a_wrong_range() {
        Check::of(&console("capture: ebpf ok: write /mnt/ext4/f offset 0 len 16384", 0), "/mnt/ext4", "6.1");
    }

    #[test]
    #[should_panic(expected = "not in the watched /mnt/ext4")]
    fn a_write_elsewhere() {
        Check::of(&console("capture: ebpf ok: write /tmp/f offset 12288 len 4096", 0), "/mnt/ext4", "6.1");
    }

    #[test]
    #[should_panic(expected = "R3 unbounded memory access")]
    fn a_refusal_shows_the_verifier() {
        let mut log = console(
            "capture: ebpf FAILED: the kernel's verifier refused sys_exit (Permission denied (os error 13)):",
            1,
        );
        log.insert(4, "R3 unbounded memory access, use 'var &= const' or 'if (var < const)'".into());
        Check::of(&log, "/mnt/ext4", "6.1");
    }
}
