//! The offline path end to end, in qemu (TCG, never KVM): a real receiver on
//! the host's loopback makes boot media for machine pc1 (`bootos make`: the
//! Debian kernel, an initramfs with the static `lifeline-image`, the
//! receiver's CA and a one-time boot token on the kernel command line;
//! network-boot media hold no password: the boot OS's
//! claim brings it over TLS) and, armed, serves it for network boot
//! (`--http-listen`).
//! A VM with pc1's MAC address and a small GPT disk (FAT32 ESP, ext4, swap,
//! unknown) boots through SeaBIOS and the NIC's iPXE ROM, which chains
//! `boot.ipxe` from the receiver (10.0.2.2 is the host inside qemu's user
//! network), gets pc1's script by MAC, loads kernel and initrd over HTTP;
//! the boot OS claims its token, creates the repository, images /dev/vda
//! and powers off. The host restores the image and compares it with the
//! disk. Then the same media booted again is refused (its token was used)
//! with the disk untouched, and the receiver no longer serves it. Last,
//! restore media: the machine, now with a blank disk of the same size,
//! network-boots again and restores the image; every partition checks clean
//! (fsck) with identical files.
//!
//! Needs qemu-system-x86, ipxe-qemu, linux-image-amd64, busybox-static,
//! musl-tools and the rustup target x86_64-unknown-linux-musl
//! (scripts/setup.sh installs them). The static agent is built by
//! `lifeline_testvm::static_build::static_binary` (minutes the first time) unless
//! LIFELINE_BOOTOS_AGENT names one.

use lifeline_testdisk::{BuiltDisk, DiskSpec};
use lifeline_tests::{bin_path, netboot_receiver, Receiver, ReceiverOpts};
use lifeline_testvm::qemu::{Boot, Vm, VmSpec};
use lifeline_testvm::static_build;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// From qemu's start to the backup's end marker.
const TIMEOUT: Duration = Duration::from_secs(240);
const PASSWORD: &str = "boot-os-test-password";
/// qemu's MAC address for the first NIC.
const MAC: &str = "52:54:00:12:34:56";

fn receiver_cli(store: &Path, args: &[&str]) -> String {
    let out = Command::new(bin_path("lifeline-receiver")).arg("--store").arg(store).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lifeline-receiver {args:?} failed: {text}");
    text
}

/// `GET path` from the receiver's network-boot server: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

/// `bootos make pc1` for the receiver at `port` (as the guest reaches it),
/// with `extra` arguments; the command's output.
fn make_media(store: &Path, port: u16, agent: &Path, password: &Path, extra: &[&str]) -> String {
    let url = format!("https://10.0.2.2:{port}");
    let mut args = vec!["bootos", "make", "pc1", "--receiver-url", &url];
    args.extend_from_slice(&["--agent", agent.to_str().unwrap(), "--password-file", password.to_str().unwrap()]);
    args.extend_from_slice(extra);
    receiver_cli(store, &args)
}

/// Reads the console until a line starts with `ok` (returned with its time
/// since qemu started); panics with the console and the receiver's log on a
/// line containing `failed` or at the timeout.
fn wait_for(vm: &mut Vm, ok: &str, failed: &str, rx: &Receiver) -> (Duration, String) {
    wait_for_console(vm, ok, failed, Some(rx))
}

/// [`wait_for`], with or without a receiver.
fn wait_for_console(vm: &mut Vm, ok: &str, failed: &str, rx: Option<&Receiver>) -> (Duration, String) {
    let rx_log = |rx: Option<&Receiver>| rx.map(|r| format!("\nreceiver log:\n{}", r.log_tail(30))).unwrap_or_default();
    loop {
        let Some((at, line)) = vm.next_line(TIMEOUT) else {
            panic!("no {ok} within {TIMEOUT:?}: {}{}", vm.report(), rx_log(rx));
        };
        if line.contains(failed) {
            panic!("{line}\nconsole:\n{}{}", vm.log().join("\n"), rx_log(rx));
        }
        if line.starts_with(ok) {
            return (at, line);
        }
    }
}

/// The `image=NAME` of a marker line.
fn image_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("image="))
        .unwrap_or_else(|| panic!("no image name in {line}"))
        .to_string()
}

/// One qemu at a time: two TCG guests on two cores would only slow each
/// other (and skew the timings printed).
static QEMU: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One test's world: the static agent, machine pc1's disk, a receiver
/// serving network boot with pc1 registered at qemu's MAC address, and the
/// repository password in a file.
struct Site {
    agent: PathBuf,
    /// How long locating (or building) the static agent took.
    agent_time: Duration,
    disk: BuiltDisk,
    store: PathBuf,
    http_port: u16,
    rx: Receiver,
    creds: PathBuf,
    pw: PathBuf,
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let t = Instant::now();
        let agent = static_build::static_binary(root).unwrap_or_else(|e| panic!("{e}"));
        let agent_time = t.elapsed();
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskSpec::pc(96).build(dir.path(), "disk.img");
        let store = dir.path().join("store");
        let (rx, http_port, creds) = netboot_receiver(dir.path(), "pc1", MAC);
        let pw = dir.path().join("password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        Site { agent, agent_time, disk, store, http_port, rx, creds, pw, dir }
    }

    /// `bootos make pc1` network-boot media, armed (network boot serves
    /// nothing else), with `extra` arguments.
    fn make_armed(&self, extra: &[&str]) -> String {
        let made = self.make(&[extra, &["--arm", "--for", "30m"]].concat());
        assert!(made.contains("armed: network boot serves it until"), "{made}");
        made
    }

    /// The URL qemu's DHCP hands the firmware for network boot.
    fn bootfile(&self) -> String {
        format!("http://10.0.2.2:{}/boot.ipxe", self.http_port)
    }

    /// `bootos make pc1` with `extra` arguments (`--receiver-url` unless
    /// `--style local`).
    fn make(&self, extra: &[&str]) -> String {
        if extra.contains(&"local") {
            let mut args = vec!["bootos", "make", "pc1", "--agent", self.agent.to_str().unwrap()];
            args.extend_from_slice(&["--password-file", self.pw.to_str().unwrap()]);
            args.extend_from_slice(extra);
            return receiver_cli(&self.store, &args);
        }
        make_media(&self.store, self.rx.port(), &self.agent, &self.pw, extra)
    }

    /// `bootos make pc1` for attended (menu) media: no password file.
    fn make_attended(&self, extra: &[&str]) -> String {
        let url = format!("https://10.0.2.2:{}", self.rx.port());
        let mut args = vec![
            "bootos",
            "make",
            "pc1",
            "--receiver-url",
            &url,
            "--agent",
            self.agent.to_str().unwrap(),
            "--mode",
            "menu",
        ];
        args.extend_from_slice(extra);
        receiver_cli(&self.store, &args)
    }

    /// Restores `image` (from `repo`: the receiver when `None`) with the
    /// host's lifeline-image into a new file, checks it against the disk,
    /// and says how long the restore took.
    fn restore_and_check(&self, image: &str, repo: Option<&Path>, extra: &[&str]) -> Duration {
        let restored = self.dir.path().join(format!("restored-{image}.img"));
        let mut cmd = Command::new(bin_path("lifeline-image"));
        cmd.args(["restore", "--name", image, "--password-file", self.pw.to_str().unwrap()]).args(extra);
        match repo {
            Some(r) => cmd.arg("--repo").arg(r),
            None => cmd
                .env("LIFELINE_REPO", self.rx.url())
                .env("LIFELINE_TOKEN_FILE", self.creds.join("pc1.token"))
                .env("LIFELINE_CA", self.creds.join("ca.crt")),
        };
        let t = Instant::now();
        let out = cmd.arg(&restored).output().unwrap();
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "host restore of {image} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.disk.check_copy(&restored);
        took
    }
}

#[test]
fn network_boot_backs_up_restores_onto_a_blank_disk_and_refuses_a_used_token() {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new();
    let (disk, store, rx, http_port) = (&site.disk, &site.store, &site.rx, site.http_port);
    let t = Instant::now();
    let made = site.make_armed(&["--mode", "backup"]);
    let make_time = t.elapsed();
    assert!(made.contains("boot media #1 for machine pc1"), "{made}");
    let media = store.join("boot/1");
    let initrd_size = std::fs::metadata(media.join("initrd.img")).unwrap().len();
    // Armed: pc1's script names the files under the media's URL secret.
    let (_, script) = http_get(http_port, &format!("/ipxe/{MAC}"));
    let files = script
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/initrd.img").filter(|u| u.contains("/boot/")))
        .unwrap_or_else(|| panic!("no initrd URL in {script}"));
    let initrd_path = format!("/boot/{}/initrd.img", files.rsplit('/').next().unwrap());

    let bootfile = site.bootfile();
    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Network { bootfile: &bootfile },
        uefi: false,
        memory_mib: 512,
        disks: &[&disk.path],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (mut kernel_at, mut init_at, mut net_at, mut claimed_at, mut ok_line) = (None, None, None, None, None);
    while ok_line.is_none() {
        let Some((at, line)) = vm.next_line(TIMEOUT) else {
            panic!("no LIFELINE-BACKUP-OK within {TIMEOUT:?}: {}\nreceiver log:\n{}", vm.report(), rx.log_tail(30));
        };
        if kernel_at.is_none() && line.contains("Linux version") {
            kernel_at = Some(at);
        }
        if line.starts_with("lifeline: boot OS up") {
            init_at = Some(at);
        }
        if line.starts_with("lifeline: network") {
            net_at = Some(at);
        }
        if line.contains("boot session for media") {
            claimed_at = Some(at);
        }
        if line.contains("LIFELINE-BACKUP-FAILED") {
            panic!("the boot OS backup failed; console:\n{}\nreceiver log:\n{}", vm.log().join("\n"), rx.log_tail(30));
        }
        if line.starts_with("LIFELINE-BACKUP-OK") {
            ok_line = Some((at, line));
        }
    }
    let (ok_at, ok_line) = ok_line.unwrap();
    let exited = vm.wait_exit(Duration::from_secs(20));
    let console = vm.log().join("\n");
    assert!(
        console.contains("lifeline: machine pc1, boot media 1 (backup receiver)"),
        "iPXE did not run pc1's script:\n{console}"
    );
    let image = image_of(&ok_line);
    assert!(image.starts_with("pc1-") && ok_line.contains("disk=/dev/vda"), "{ok_line}\n{console}");
    assert!(exited.is_some(), "qemu did not exit after poweroff -f; console:\n{console}");
    drop(vm);

    // Restore on the host with the host's lifeline-image and compare.
    let restore_time = site.restore_and_check(&image, None, &["--read-back"]);

    // The media's files are no longer served, and pc1's MAC gets a script
    // that says no media is armed (the one every MAC without media gets).
    let (status, _) = http_get(http_port, &initrd_path);
    assert!(status.contains("404"), "a used media's initrd is still served: {status}");
    let (_, script) = http_get(http_port, &format!("/ipxe/{MAC}"));
    assert!(script.contains("no boot media is armed") && !script.contains("lifeline.token"), "{script}");

    // The same media booted again (a copy kept on a stick): refused, disk untouched.
    let before = blake3::hash(&std::fs::read(&disk.path).unwrap());
    let cmdline = std::fs::read_to_string(media.join("cmdline")).unwrap();
    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Kernel {
            kernel: &media.join("vmlinuz"),
            initrd: &media.join("initrd.img"),
            append: cmdline.trim(),
        },
        uefi: false,
        memory_mib: 512,
        disks: &[&disk.path],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let refusal = loop {
        let Some((_, line)) = vm.next_line(TIMEOUT) else {
            panic!("no verdict on the reused token within {TIMEOUT:?}: {}", vm.report());
        };
        assert!(!line.starts_with("LIFELINE-BACKUP-OK"), "a used boot token was accepted:\n{}", vm.log().join("\n"));
        if line.contains("LIFELINE-BACKUP-FAILED") {
            break line;
        }
    };
    assert!(refusal.contains("already used"), "{refusal}");
    vm.wait_exit(Duration::from_secs(20));
    drop(vm);
    assert_eq!(blake3::hash(&std::fs::read(&disk.path).unwrap()), before, "the disk changed");
    let audit = receiver_cli(store, &["audit"]);
    assert!(audit.contains("boot token claimed") && audit.contains("boot token refused"), "{audit}");

    // Restore mode: new media, and the machine with a blank disk of the same
    // size network-boots again and gets its disk back.
    let made = site.make_armed(&["--mode", "restore", "--image", &image]);
    assert!(made.contains("boot media #2 for machine pc1 (restore receiver)"), "{made}");
    let blank = site.dir.path().join("blank.img");
    std::fs::File::create(&blank).unwrap().set_len(std::fs::metadata(&disk.path).unwrap().len()).unwrap();
    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Network { bootfile: &bootfile },
        uefi: false,
        memory_mib: 512,
        disks: &[&blank],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let restored_line = wait_for(&mut vm, "LIFELINE-RESTORE-OK", "LIFELINE-RESTORE-FAILED", rx);
    vm.wait_exit(Duration::from_secs(20));
    drop(vm);
    disk.check_copy(&blank);
    eprintln!("restore in the VM: done at {:.2?}: {}", restored_line.0, restored_line.1);
    // The boot OS reported both jobs to the receiver's database.
    let jobs = receiver_cli(store, &["jobs", "--machine", "pc1"]);
    let ok = |kind: &str| jobs.lines().any(|l| l.contains(kind) && l.contains(" ok ") && l.contains(&image));
    assert!(ok("backup") && ok("restore"), "{jobs}");
    let images = receiver_cli(store, &["images", "--machine", "pc1"]);
    assert!(images.contains(&image) && images.contains("/dev/vda"), "{images}");

    eprintln!(
        "static agent {} ({:.1} MB), located/built in {:.2?}",
        site.agent.display(),
        std::fs::metadata(&site.agent).unwrap().len() as f64 / 1e6,
        site.agent_time
    );
    eprintln!("bootos make: {make_time:.2?}, initramfs {:.2} MB compressed", initrd_size as f64 / 1e6);
    eprintln!(
        "network boot (TCG, -m 512): kernel running at {:.2?}, /init at {:.2?}, network up at {:.2?}, token claimed at {:.2?}, backup done at {ok_at:.2?}",
        kernel_at.unwrap_or_default(),
        init_at.unwrap_or_default(),
        net_at.unwrap_or_default(),
        claimed_at.unwrap_or_default()
    );
    eprintln!("host restore of {image} with --read-back: {restore_time:.2?}");
    eprintln!("reused token: {refusal}");
}

/// USB image, ISO and UEFI network boot under UEFI (OVMF): the same boot OS
/// on the raw USB image booted from a USB stick (xHCI), on a hybrid ISO booted
/// from CD, then network boot (OVMF runs the NIC's EFI iPXE), each with
/// media of its own (a token works once), backs the disk up unattended; the
/// last image restores identical. (The ISO under BIOS is the local style
/// test's boot, the USB image under BIOS the menu test's.)
#[test]
fn iso_under_bios_and_uefi_and_uefi_network_boot_back_up() {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new();
    let (disk, rx) = (&site.disk, &site.rx);
    let bootfile = site.bootfile();
    let mut image = String::new();
    for (id, kind, uefi) in [(1, "usb", true), (2, "iso", true), (3, "netboot", true)] {
        let args = ["--mode", "backup", "--kind", kind];
        let made = if kind == "netboot" { site.make_armed(&args) } else { site.make(&args) };
        assert!(made.contains(&format!("boot media #{id} for machine pc1")), "{made}");
        let iso = site.store.join(format!("boot/{id}/{}", if kind == "usb" { "usb.img" } else { "boot.iso" }));
        let boot = match kind {
            "iso" => Boot::Cdrom { iso: &iso },
            "usb" => Boot::Disk { image: &iso, usb: true },
            _ => Boot::Network { bootfile: &bootfile },
        };
        let mut vm =
            Vm::boot(&VmSpec { boot, uefi, memory_mib: 512, disks: &[&disk.path] }).unwrap_or_else(|e| panic!("{e}"));
        let (at, line) = wait_for(&mut vm, "LIFELINE-BACKUP-OK", "LIFELINE-BACKUP-FAILED", rx);
        vm.wait_exit(Duration::from_secs(20));
        let size = std::fs::metadata(&iso).map(|m| format!(" ({:.1} MB)", m.len() as f64 / 1e6)).unwrap_or_default();
        eprintln!("{kind}{size} under {}: backup done at {at:.2?}: {line}", if uefi { "UEFI" } else { "BIOS" });
        image = image_of(&line);
    }
    site.restore_and_check(&image, None, &[]);
}

/// The local style, with no receiver in reach: ISO media with
/// `lifeline.style=local` images the machine's disk into a repository on a
/// second disk whose filesystem is labelled LIFELINE (a USB disk, say); the
/// host mounts that disk and restores the image from it, identical. The
/// machine's own disk is not written.
#[test]
fn local_style_images_the_disk_onto_an_attached_lifeline_disk() {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new();
    let (disk, dir) = (&site.disk, &site.dir);
    let made = site.make(&["--style", "local", "--mode", "backup", "--kind", "iso"]);
    assert!(made.contains("boot media #1 for machine pc1 (backup local)"), "{made}");
    let backup_disk = dir.path().join("lifeline-disk.img");
    std::fs::File::create(&backup_disk).unwrap().set_len(256 << 20).unwrap();
    lifeline_testdisk::run("mkfs.ext4", &["-q", "-F", "-L", "LIFELINE", backup_disk.to_str().unwrap()]);
    let before = blake3::hash(&std::fs::read(&disk.path).unwrap());

    let iso = site.store.join("boot/1/boot.iso");
    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Cdrom { iso: &iso },
        uefi: false,
        memory_mib: 512,
        disks: &[&disk.path, &backup_disk],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (at, line) = wait_for_console(&mut vm, "LIFELINE-BACKUP-OK", "LIFELINE-BACKUP-FAILED", None);
    vm.wait_exit(Duration::from_secs(20));
    let console = vm.log().join("\n");
    assert!(line.contains("disk=/dev/vda"), "the machine's disk is vda, LIFELINE is on vdb: {line}\n{console}");
    eprintln!("local style from ISO (BIOS): backup done at {at:.2?}: {line}");
    drop(vm);
    assert_eq!(blake3::hash(&std::fs::read(&disk.path).unwrap()), before, "the backup wrote to the machine's disk");

    let dev = lifeline_testdisk::Loop::new(&backup_disk, true);
    let mnt = lifeline_testdisk::Mount::new("mount", &["-o", "ro"], &dev.0, &dir.path().join("mnt"));
    site.restore_and_check(&image_of(&line), Some(&mnt.0.join("lifeline-images")), &[]);
    drop(mnt);
    drop(dev);
}

/// TFTP for PXE firmware that must chain-load iPXE: the receiver serves
/// Debian's iPXE binaries byte for byte (with and without the blksize and
/// tsize options PXE ROMs use), and nothing outside that directory.
#[test]
fn tftp_serves_the_ipxe_binaries_and_nothing_else() {
    let ipxe = Path::new("/usr/lib/ipxe/undionly.kpxe");
    let want = std::fs::read(ipxe)
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install ipxe; scripts/setup.sh does)", ipxe.display()));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut opts = ReceiverOpts::new(&dir.path().join("store"));
    opts.env = vec![("LIFELINE_TFTP_LISTEN".into(), format!("127.0.0.1:{port}"))];
    let _rx = Receiver::start_opts(opts);
    let fetch = |name: &str, extra: &[&str]| {
        let out = dir.path().join("got");
        let _ = std::fs::remove_file(&out);
        let st = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(&out)
            .args(extra)
            .arg(format!("tftp://127.0.0.1:{port}/{name}"))
            .status()
            .unwrap();
        st.success().then(|| std::fs::read(&out).unwrap())
    };
    // The UDP port may open a moment after the TLS one.
    let mut got = None;
    for _ in 0..20 {
        got = fetch("undionly.kpxe", &[]);
        if got.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(got.as_deref() == Some(&want[..]), "undionly.kpxe in 512-byte blocks differs");
    let got = fetch("undionly.kpxe", &["--tftp-blksize", "1432"]);
    assert!(got.as_deref() == Some(&want[..]), "undionly.kpxe in 1428-byte blocks differs");
    assert!(fetch("../../etc/passwd", &["--path-as-is"]).is_none(), "a path outside the TFTP root was served");
    assert!(fetch("no-such-file", &[]).is_none());
}

/// Reads the console up to the menu's question containing `q` (a line
/// starting with `? `) and returns the numbered items shown since the
/// previous question. Panics on another question, a failure marker, or the
/// timeout.
fn until_question(vm: &mut Vm, q: &str, rx: &Receiver) -> Vec<String> {
    let mut items = Vec::new();
    loop {
        let Some((_, line)) = vm.next_line(MENU_TIMEOUT) else {
            panic!("no question {q:?} within {MENU_TIMEOUT:?}: {}\nreceiver log:\n{}", vm.report(), rx.log_tail(30));
        };
        if line.contains("-FAILED") {
            panic!("{line}\nconsole:\n{}\nreceiver log:\n{}", vm.log().join("\n"), rx.log_tail(30));
        }
        if let Some(question) = line.strip_prefix("? ") {
            assert!(question.contains(q), "asked {question:?} instead of {q:?}; console:\n{}", vm.log().join("\n"));
            return items;
        }
        let t = line.trim_start();
        if let Some((n, _)) = t.split_once(") ") {
            if n.parse::<u32>().is_ok() {
                items.push(t.to_string());
            }
        }
    }
}

/// The number of the item containing `text`.
fn item(items: &[String], text: &str) -> String {
    let it = items.iter().find(|i| i.contains(text)).unwrap_or_else(|| panic!("no item {text:?} in {items:#?}"));
    it.split_once(')').unwrap().0.to_string()
}

/// Answers the question containing `q` with the item containing `text`.
fn choose(vm: &mut Vm, q: &str, text: &str, rx: &Receiver) {
    let items = until_question(vm, q, rx);
    vm.type_line(&item(&items, text)).unwrap();
}

fn answer(vm: &mut Vm, q: &str, a: &str, rx: &Receiver) {
    until_question(vm, q, rx);
    vm.type_line(a).unwrap();
}

/// From qemu's start to the end of the menu session.
const MENU_TIMEOUT: Duration = Duration::from_secs(420);

/// The attended menu, from the raw USB image on a USB stick (xHCI) under
/// BIOS: attended media
/// hold no password. On the serial console the test picks backup, the
/// machine's disk (not the USB stick), the receiver, the default name, and
/// types a new repository's password twice (never echoed); the backup
/// reports to the receiver and restores identical on the host. Back in the
/// menu, a restore with a wrong password is refused and the machine's disk
/// is untouched; then power off from the menu.
#[test]
fn menu_backs_up_with_a_typed_password_and_refuses_a_wrong_one() {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::new();
    let (disk, rx) = (&site.disk, &site.rx);
    // Attended media must not hold the password: refused with one.
    let url = format!("https://10.0.2.2:{}", rx.port());
    let out = Command::new(bin_path("lifeline-receiver"))
        .arg("--store")
        .arg(&site.store)
        .args(["bootos", "make", "pc1", "--mode", "menu", "--receiver-url", &url, "--agent"])
        .arg(&site.agent)
        .arg("--password-file")
        .arg(&site.pw)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("never hold the repository password")
    );
    let made = site.make_attended(&["--kind", "usb"]);
    assert!(made.contains("boot media #1 for machine pc1 (menu receiver)") && made.contains("holds none"), "{made}");
    let media = site.store.join("boot/1");
    let initrd = std::fs::read(media.join("initrd.img")).unwrap();
    let mut cpio = Vec::new();
    flate2::read::GzDecoder::new(&initrd[..]).read_to_end(&mut cpio).unwrap();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&cpio, PASSWORD.as_bytes()) && !contains(&cpio, b"etc/lifeline/password\0"),
        "attended media hold the password"
    );
    let usb = media.join("usb.img");
    let usb_size = std::fs::metadata(&usb).unwrap().len();
    let before = blake3::hash(&std::fs::read(&disk.path).unwrap());

    let mut vm = Vm::boot(&VmSpec {
        boot: Boot::Disk { image: &usb, usb: true },
        uefi: false,
        memory_mib: 512,
        disks: &[&disk.path],
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let items = until_question(&mut vm, "What do you want to do?", rx);
    let menu_at = vm.elapsed();
    assert!(
        vm.log().iter().any(|l| l.contains("Receiver https://10.0.2.2") && l.contains("connected")),
        "{}",
        vm.log().join("\n")
    );
    vm.type_line(&item(&items, "Back up a disk")).unwrap();
    // The machine's disk, not the USB stick (sda, on the xHCI controller).
    let items = until_question(&mut vm, "Which disk do you want to back up?", rx);
    assert!(items.iter().any(|i| i.contains("/dev/sda")), "the USB stick is not listed: {items:#?}");
    vm.type_line(&item(&items, "/dev/vda  100.7 MB")).unwrap();
    choose(&mut vm, "Where should the image go?", "The receiver", rx);
    answer(&mut vm, "Image name", "", rx);
    answer(&mut vm, "Repository password", PASSWORD, rx);
    answer(&mut vm, "Type the password again", PASSWORD, rx);
    answer(&mut vm, "Start the backup?", "yes", rx);
    let t = vm.elapsed();
    let (ok_at, ok_line) = wait_for(&mut vm, "LIFELINE-BACKUP-OK", "LIFELINE-BACKUP-FAILED", rx);
    let backup_time = ok_at - t;
    let image = image_of(&ok_line);
    assert!(image.starts_with("pc1-") && ok_line.contains("disk=/dev/vda"), "{ok_line}");
    choose(&mut vm, "What now?", "Back to the menu", rx);
    choose(&mut vm, "What do you want to do?", "Restore an image", rx);
    choose(&mut vm, "Where are the images?", "The receiver", rx);
    answer(&mut vm, "Repository password", "not-the-password", rx);
    let (_, refused) = wait_for(&mut vm, "LIFELINE-RESTORE-FAILED", "LIFELINE-RESTORE-OK", rx);
    assert!(refused.contains("wrong password"), "{refused}");
    choose(&mut vm, "What do you want to do?", "Power off", rx);
    let exited = vm.wait_exit(Duration::from_secs(30));
    let console = vm.log().join("\n");
    assert!(exited.is_some(), "qemu did not exit after power off from the menu; console:\n{console}");
    assert!(!console.contains(PASSWORD) && !console.contains("not-the-password"), "a password was echoed:\n{console}");
    drop(vm);
    assert_eq!(blake3::hash(&std::fs::read(&disk.path).unwrap()), before, "the machine's disk changed");
    site.restore_and_check(&image, None, &[]);
    let jobs = receiver_cli(&site.store, &["jobs", "--machine", "pc1"]);
    assert!(jobs.lines().any(|l| l.contains("backup") && l.contains(" ok ") && l.contains(&image)), "{jobs}");
    eprintln!(
        "menu from the USB image ({:.1} MB) under BIOS: menu at {menu_at:.2?}, attended backup took {backup_time:.2?} (done at {ok_at:.2?}): {ok_line}",
        usb_size as f64 / 1e6
    );
}

/// The owner's download: machine pc1 lists and downloads its USB image over
/// the receiver's TLS port with its own credential, byte for byte the
/// receiver's file, and is told it holds the password; pc2's media is
/// refused to pc1 (as if it did not exist), and so is network-boot media.
/// Both refusals are audited.
#[test]
fn owner_downloads_its_media_and_not_another_machines() {
    let site = Site::new();
    let creds2 = site.dir.path().join("creds2");
    receiver_cli(&site.store, &["machine", "add", "pc2", "--out", creds2.to_str().unwrap()]);
    assert!(site.make(&["--mode", "backup", "--kind", "usb"]).contains("boot media #1 for machine pc1"));
    let url = format!("https://10.0.2.2:{}", site.rx.port());
    let pw = site.pw.to_str().unwrap();
    let agent = site.agent.to_str().unwrap();
    receiver_cli(&site.store, &["bootos", "make", "pc2", "--receiver-url", &url, "--agent", agent, "--mode", "menu"]);
    receiver_cli(
        &site.store,
        &["bootos", "make", "pc1", "--receiver-url", &url, "--agent", agent, "--password-file", pw],
    );
    let media = |creds: &Path, machine: &str, args: &[&str]| {
        let out = Command::new(bin_path("lifeline-image"))
            .args(["boot-media", "--repo", &site.rx.url()])
            .arg("--token-file")
            .arg(creds.join(format!("{machine}.token")))
            .arg("--ca")
            .arg(creds.join("ca.crt"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, list) = media(&site.creds, "pc1", &["list"]);
    assert!(
        ok && list.contains("#1") && list.contains("usb.img") && list.contains("#3") && !list.contains("#2"),
        "{list}"
    );
    let got = site.dir.path().join("pc1-usb.img");
    let (ok, text) = media(&site.creds, "pc1", &["download", "1", "--out", got.to_str().unwrap()]);
    assert!(ok && text.contains("holds the repository password"), "{text}");
    assert!(
        std::fs::read(&got).unwrap() == std::fs::read(site.store.join("boot/1/usb.img")).unwrap(),
        "the download differs"
    );
    let other = site.dir.path().join("pc2.iso");
    let (ok, text) = media(&site.creds, "pc1", &["download", "2", "--out", other.to_str().unwrap()]);
    assert!(!ok && text.contains("has no boot media #2") && !other.exists(), "{text}");
    let (ok, text) = media(&site.creds, "pc1", &["download", "3", "--out", other.to_str().unwrap()]);
    assert!(!ok && text.contains("network boot"), "{text}");
    let (ok, list) = media(&creds2, "pc2", &["list"]);
    assert!(ok && list.contains("#2") && list.contains("holds no password") && !list.contains("#1"), "{list}");
    let audit = receiver_cli(&site.store, &["audit"]);
    assert!(audit.contains("boot media downloaded") && audit.contains("boot media download refused"), "{audit}");
}

/// Restore media made for pc2 from pc1's image (a replacement machine):
/// its boot session reads pc1's images and restores one identical, and
/// can write nothing to pc1's store. No VM: the boot OS's own calls
/// (`claim`, `restore`, `backup`) run on the host with its session.
#[test]
fn restore_media_of_another_machine_reads_its_images_and_writes_nothing() {
    let site = Site::new();
    let image = |creds: &Path, token: &str, args: &[&str]| {
        let out = Command::new(bin_path("lifeline-image"))
            .args(args)
            .env("LIFELINE_REPO", site.rx.url())
            .env("LIFELINE_TOKEN_FILE", creds.join(token))
            .env("LIFELINE_CA", site.creds.join("ca.crt"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let pw = site.pw.to_str().unwrap();
    let disk = site.disk.path.to_str().unwrap();
    for args in [vec!["init", "--password-file", pw], vec!["backup", "--name", "pc1-img", "--password-file", pw, disk]]
    {
        let (ok, out) = image(&site.creds, "pc1.token", &args);
        assert!(ok, "pc1's {}: {out}", args[0]);
    }
    let creds2 = site.dir.path().join("creds2");
    receiver_cli(&site.store, &["machine", "add", "pc2", "--out", creds2.to_str().unwrap()]);
    let url = format!("https://10.0.2.2:{}", site.rx.port());
    let agent = site.agent.to_str().unwrap();
    let make = |extra: &[&str]| {
        let mut args = vec!["bootos", "make", "pc2", "--receiver-url", &url, "--agent", agent, "--password-file", pw];
        args.extend_from_slice(extra);
        receiver_cli(&site.store, &args)
    };
    // Session of boot media `id`: the token from its command line, claimed.
    let session = |id: u32| {
        let cmdline = std::fs::read_to_string(site.store.join(format!("boot/{id}/cmdline"))).unwrap();
        let token = cmdline.split_whitespace().find_map(|p| p.strip_prefix("lifeline.token=")).expect("a token");
        let boot = creds2.join(format!("boot-{id}.token"));
        std::fs::write(&boot, token).unwrap();
        let out = creds2.join(format!("session-{id}.token"));
        let (ok, text) = image(&creds2, &format!("boot-{id}.token"), &["claim", "--out", out.to_str().unwrap()]);
        assert!(ok, "claim: {text}");
        format!("session-{id}.token")
    };

    assert!(make(&["--mode", "restore", "--image", "pc1-img", "--image-of", "pc1"])
        .contains("boot media #1 for machine pc2"));
    let s1 = session(1);
    let restored = site.dir.path().join("pc2-disk.img");
    let (ok, text) =
        image(&creds2, &s1, &["restore", "--name", "pc1-img", "--password-file", pw, restored.to_str().unwrap()]);
    assert!(ok, "pc2 restoring pc1's image: {text}");
    site.disk.check_copy(&restored);
    let (ok, text) =
        image(&creds2, &s1, &["backup", "--name", "pc2-into-pc1", "--password-file", pw, restored.to_str().unwrap()]);
    assert!(!ok && text.contains("never write"), "a backup into pc1's store through pc2's restore session: {text}");
    let (ok, list) = image(&site.creds, "pc1.token", &["list", "--password-file", pw]);
    assert!(ok && list.contains("pc1-img") && !list.contains("pc2-into-pc1"), "{list}");

    // pc2's own media see pc2's images only (none), and --image-of is for restores.
    assert!(make(&["--mode", "backup"]).contains("boot media #2 for machine pc2"));
    let s2 = session(2);
    let (ok, text) = image(&creds2, &s2, &["list", "--password-file", pw]);
    assert!(!ok || !text.contains("pc1-img"), "pc2's own session sees pc1's images: {text}");
    let out = Command::new(bin_path("lifeline-receiver"))
        .arg("--store")
        .arg(&site.store)
        .args(["bootos", "make", "pc2", "--receiver-url", &url, "--agent", agent, "--password-file", pw])
        .args(["--mode", "backup", "--image-of", "pc1"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--image-of is for restore"));
}
