//! Booting a boot OS in qemu (TCG, never KVM) and reading its serial console:
//! what the tests do, and a way to try a boot OS by hand.
//!
//! The VM is a q35 machine with a virtio NIC on qemu's user network (the
//! host's loopback is 10.0.2.2 from inside) and virtio disks in the order
//! given, plus a boot disk (virtio or a USB stick on xHCI) for USB images.
//! Console lines arrive with the time since qemu started, and
//! [`Vm::type_line`] types on the console (qemu's standard input); the VM
//! is killed (by its own PID) when the [`Vm`] is dropped, however a test
//! ends.

use std::io::Write;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";

/// How the VM boots.
pub enum Boot<'a> {
    /// qemu loads the kernel and initrd itself (`console=ttyS0` in `append`
    /// is needed to see the console).
    Kernel { kernel: &'a Path, initrd: &'a Path, append: &'a str },
    /// The firmware network-boots: SeaBIOS runs the NIC's iPXE ROM, which
    /// gets an address from qemu's DHCP and fetches `bootfile` (an
    /// `http://10.0.2.2:PORT/...` URL reaches the host's loopback).
    Network { bootfile: &'a str },
    /// The firmware boots a CD (a hybrid ISO, see `lifeline_bootos::iso`).
    Cdrom { iso: &'a Path },
    /// The firmware boots a disk image (a USB image, see `lifeline_bootos::usb`),
    /// attached after [`VmSpec::disks`] with the first boot index: as a
    /// virtio disk, or with `usb` as a USB stick on an xHCI controller.
    Disk { image: &'a Path, usb: bool },
}

/// OVMF, Debian's UEFI firmware for qemu (package ovmf).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// What to boot.
pub struct VmSpec<'a> {
    pub boot: Boot<'a>,
    /// UEFI firmware (OVMF) instead of SeaBIOS.
    pub uefi: bool,
    pub memory_mib: u32,
    /// Raw disk images attached as virtio (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: &'a [&'a Path],
}

/// A running VM and the console lines read so far.
pub struct Vm {
    child: Child,
    /// qemu's standard input: the guest's serial console input (-nographic).
    stdin: Option<ChildStdin>,
    /// The UEFI variable store's copy, for as long as the VM runs.
    _vars: Option<tempfile::NamedTempFile>,
    lines: mpsc::Receiver<(Duration, String)>,
    started: Instant,
    log: Vec<String>,
}

impl Vm {
    /// Start qemu. Fails with what to install when qemu is missing.
    pub fn boot(spec: &VmSpec) -> Result<Vm, String> {
        let have = Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success());
        if !have {
            return Err(format!("{QEMU} is missing: apt-get install qemu-system-x86 (scripts/setup.sh installs it)"));
        }
        let mut cmd = Command::new(QEMU);
        cmd.args(["-machine", "q35,accel=tcg", "-nographic", "-no-reboot"]).args(["-m", &spec.memory_mib.to_string()]);
        let netdev = match &spec.boot {
            Boot::Kernel { kernel, initrd, append } => {
                cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).args(["-append", append]);
                "user,id=n0".to_string()
            }
            Boot::Network { bootfile } => {
                cmd.args(["-boot", "n"]);
                format!("user,id=n0,bootfile={bootfile}")
            }
            Boot::Cdrom { iso } => {
                cmd.arg("-cdrom").arg(iso).args(["-boot", "d"]);
                "user,id=n0".to_string()
            }
            Boot::Disk { .. } => "user,id=n0".to_string(),
        };
        let vars = if spec.uefi {
            if !Path::new(OVMF_CODE).exists() {
                return Err(format!("{OVMF_CODE} is missing: apt-get install ovmf (scripts/setup.sh installs it)"));
            }
            let vars =
                tempfile::NamedTempFile::new().map_err(|e| format!("cannot create the UEFI variable store: {e}"))?;
            std::fs::copy(OVMF_VARS, vars.path()).map_err(|e| format!("cannot copy {OVMF_VARS}: {e}"))?;
            cmd.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
            cmd.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.path().display()));
            Some(vars)
        } else {
            None
        };
        cmd.args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
        // Explicit devices, so that the order is the command line's
        // (/dev/vda, /dev/vdb, ... then the boot disk).
        for (i, d) in spec.disks.iter().enumerate() {
            cmd.arg("-drive").arg(format!("file={},if=none,id=disk{i},format=raw", d.display()));
            cmd.arg("-device").arg(format!("virtio-blk-pci,drive=disk{i}"));
        }
        if let Boot::Disk { image, usb } = &spec.boot {
            cmd.arg("-drive").arg(format!("file={},if=none,id=bootdisk,format=raw", image.display()));
            if *usb {
                cmd.args([
                    "-device",
                    "qemu-xhci,id=xhci",
                    "-device",
                    "usb-storage,bus=xhci.0,drive=bootdisk,bootindex=0",
                ]);
            } else {
                cmd.args(["-device", "virtio-blk-pci,drive=bootdisk,bootindex=0"]);
            }
        }
        let started = Instant::now();
        let mut child = cmd
            // The serial console's input: see [`Vm::type_line`].
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {QEMU}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let s = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if tx.send((started.elapsed(), s)).is_err() {
                    break;
                }
            }
        });
        Ok(Vm { child, stdin, _vars: vars, lines, started, log: Vec::new() })
    }

    /// The next console line and when it came (since qemu started), or
    /// `None` once `deadline` (also since qemu started) has passed or the
    /// console closed. Every line is kept in [`Vm::log`].
    pub fn next_line(&mut self, deadline: Duration) -> Option<(Duration, String)> {
        let left = deadline.checked_sub(self.started.elapsed()).unwrap_or_default();
        let (at, line) = self.lines.recv_timeout(left).ok()?;
        self.log.push(line.clone());
        Some((at, line))
    }

    /// Wait up to `timeout` for qemu to exit (after the guest's power-off),
    /// then keep the console lines that are left.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                exited = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        while let Ok((_, line)) = self.lines.try_recv() {
            self.log.push(line);
        }
        exited
    }

    /// Type `text` and Enter on the guest's serial console (as a terminal
    /// would: Enter is a carriage return). Characters are never lost: qemu
    /// hands them to the UART only as fast as it takes them.
    pub fn type_line(&mut self, text: &str) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("qemu's input is closed")?;
        stdin
            .write_all(format!("{text}\r").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| format!("cannot type on the console: {e}"))
    }

    /// Time since qemu started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The console so far, one line per entry.
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// For a failure message: qemu's status, its stderr if it exited, and
    /// the whole console.
    pub fn report(&mut self) -> String {
        let status = self.child.try_wait().ok().flatten();
        let mut err = String::new();
        if status.is_some() {
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
        }
        format!("qemu status {status:?}, stderr {err:?}; console:\n{}", self.log.join("\n"))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
