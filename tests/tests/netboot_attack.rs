//! Network boot against an attacker on the network (issue 14, finding 1),
//! over real sockets on loopback, no VM: a receiver serving network boot
//! (`--http-listen`) with machine pc1 registered at a MAC address, boot
//! media made for it (the host's Debian kernel, busybox, and a stand-in
//! for the static agent), and an attacker who can speak HTTP to the
//! network-boot port and gRPC to the receiver.
//!
//! - Media not armed: its machine's script carries no token and its files
//!   are not served, by sequential id or otherwise.
//! - Armed: the script carries the token and a 32-hex-digit URL secret; the
//!   files are served there only, never at `/boot/<id>/`. ISO and USB media
//!   are never served and cannot be armed.
//! - The initrd served holds no repository password (unpacked and searched),
//!   where the ISO media's own initrd does; every media file is 0600 in a
//!   0700 directory.
//! - After the window closes (or `bootos disarm`), nothing is served.
//! - The claim's reply (TLS) carries the password to the claimant of the
//!   token, once; the real machine finding its token claimed (a second
//!   claim, or asking for its script from another address) raises a
//!   `boot token alarm` in the audit trail.
//!
//! Needs linux-image-amd64 and busybox-static (scripts/setup.sh installs
//! them), as `lifeline-receiver bootos make` does.

use lifeline_tests::{bin_path, netboot_receiver, Receiver};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PASSWORD: &str = "netboot-attack-test-password";
const MAC: &str = "52:54:00:ab:cd:ef";

/// `lifeline-receiver --store STORE ARGS`: (success, stdout and stderr).
fn cli(store: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("lifeline-receiver")).arg("--store").arg(store).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn cli_ok(store: &Path, args: &[&str]) -> String {
    let (ok, text) = cli(store, args);
    assert!(ok, "lifeline-receiver {args:?} failed: {text}");
    text
}

/// `GET path` from local address `from`: (status line, body).
fn get_from(from: Ipv4Addr, port: u16, path: &str) -> (String, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
        sock.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap().into_std().unwrap()
    });
    let mut s = s;
    s.set_nonblocking(false).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    (head.lines().next().unwrap_or("").to_string(), buf[end..].to_vec())
}

fn get(port: u16, path: &str) -> (String, Vec<u8>) {
    get_from(Ipv4Addr::LOCALHOST, port, path)
}

fn script(port: u16) -> String {
    let (status, body) = get(port, &format!("/ipxe/{MAC}"));
    assert!(status.contains("200"), "{status}");
    String::from_utf8(body).unwrap()
}

/// Whether the gzip-compressed cpio `initrd` holds `needle` anywhere.
fn initrd_holds(initrd: &[u8], needle: &str) -> bool {
    let mut cpio = Vec::new();
    flate2::read::MultiGzDecoder::new(initrd).read_to_end(&mut cpio).expect("a gzip initrd");
    assert!(cpio.starts_with(b"070701"), "not a cpio archive");
    cpio.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The URL secret in a machine's script (`/boot/<secret>/vmlinuz`).
fn url_secret(script: &str) -> String {
    let at = script.find("/boot/").unwrap_or_else(|| panic!("no /boot/ URL in {script}")) + "/boot/".len();
    script[at..].split('/').next().unwrap().to_string()
}

/// One test's world: the receiver with network boot, pc1 registered at
/// [`MAC`], the password file and a stand-in agent.
struct Site {
    dir: tempfile::TempDir,
    store: PathBuf,
    rx: Receiver,
    http: u16,
    creds: PathBuf,
    pw: PathBuf,
    agent: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let (rx, http, creds) = netboot_receiver(dir.path(), "pc1", MAC);
        let pw = dir.path().join("password");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        // The boot OS is never booted here: any non-ELF file stands in for
        // the static lifeline-image.
        let agent = dir.path().join("agent");
        std::fs::write(&agent, "#!/bin/sh\nexit 1\n").unwrap();
        Site { dir, store, rx, http, creds, pw, agent }
    }

    /// `bootos make pc1` unattended backup media with `extra` arguments.
    fn make(&self, extra: &[&str]) -> String {
        let url = self.rx.url();
        let mut args = vec!["bootos", "make", "pc1", "--receiver-url", &url, "--agent"];
        args.extend_from_slice(&[self.agent.to_str().unwrap(), "--password-file", self.pw.to_str().unwrap()]);
        args.extend_from_slice(extra);
        cli_ok(&self.store, &args)
    }

    /// `lifeline-image claim` with boot token `token`: (success, output,
    /// the password it received if any).
    fn claim(&self, token: &str, n: u32) -> (bool, String, Option<String>) {
        let tok = self.dir.path().join(format!("boot-{n}.token"));
        std::fs::write(&tok, format!("{token}\n")).unwrap();
        let session = self.dir.path().join(format!("session-{n}.token"));
        let pw_out = self.dir.path().join(format!("password-{n}"));
        let out = Command::new(bin_path("lifeline-image"))
            .args(["claim", "--repo", &self.rx.url()])
            .arg("--token-file")
            .arg(&tok)
            .arg("--ca")
            .arg(self.creds.join("ca.crt"))
            .arg("--out")
            .arg(&session)
            .arg("--password-out")
            .arg(&pw_out)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let pw = std::fs::read_to_string(&pw_out).ok();
        if pw.is_some() {
            let mode = std::fs::metadata(&pw_out).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "the received password is readable by others");
        }
        (out.status.success(), text, pw)
    }

    fn audit(&self) -> String {
        cli_ok(&self.store, &["audit", "--last", "200"])
    }
}

#[test]
fn network_boot_serves_no_password_and_only_armed_media_at_their_secret_url() {
    let site = Site::new();
    let (store, http) = (&site.store, site.http);
    // Media #1: network boot, not armed.
    let made = site.make(&["--mode", "backup"]);
    assert!(made.contains("boot media #1 for machine pc1") && made.contains("bootos arm 1"), "{made}");
    // Media #2 and #3: ISO and USB, carried by hand.
    assert!(site.make(&["--kind", "iso"]).contains("boot media #2"));
    assert!(site.make(&["--kind", "usb"]).contains("boot media #3"));

    // At rest: every file 0600, every media directory 0700.
    let boot = store.join("boot");
    assert_eq!(std::fs::metadata(&boot).unwrap().permissions().mode() & 0o777, 0o700);
    for id in 1..=3 {
        let dir = boot.join(id.to_string());
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            let mode = f.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", f.path().display());
        }
    }

    // Not armed: the machine has media, yet its script carries no token and
    // no file is served, by id or otherwise.
    let s = script(http);
    assert!(!s.contains("lifeline.token") && !s.contains("/boot/"), "an unarmed media's script: {s}");
    // It says what to run, and nothing about the machine (a MAC unknown
    // to the receiver gets the very same script).
    assert!(s.contains("bootos arm ID") && !s.contains("pc1"), "the script says what to run: {s}");
    let by_id = |what: &str| {
        for id in 1..=3 {
            for f in ["vmlinuz", "initrd.img", "cmdline", "password"] {
                let (status, body) = get(http, &format!("/boot/{id}/{f}"));
                assert!(status.contains("404") && body.len() < 200, "{what}: /boot/{id}/{f} served: {status}");
            }
        }
    };
    by_id("not armed");

    // ISO and USB media cannot be armed, and an unknown id is refused.
    for id in ["2", "3", "9"] {
        let (ok, text) = cli(store, &["bootos", "arm", id]);
        assert!(!ok, "bootos arm {id}: {text}");
    }

    // Armed: the script carries the token and the media's URL secret; the
    // files are served at that secret only.
    let armed = cli_ok(store, &["bootos", "arm", "1", "--for", "1h"]);
    assert!(armed.contains("armed until"), "{armed}");
    assert!(cli_ok(store, &["bootos", "list"]).contains("armed until"));
    let s = script(http);
    assert!(s.contains("lifeline.token=pc1:"), "an armed media's script: {s}");
    let secret = url_secret(&s);
    assert!(secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "URL secret {secret:?}");
    by_id("armed");
    for f in ["cmdline", "password", "../1/cmdline"] {
        let (status, _) = get(http, &format!("/boot/{secret}/{f}"));
        assert!(status.contains("404"), "/boot/{secret}/{f} served: {status}");
    }
    let (status, kernel) = get(http, &format!("/boot/{secret}/vmlinuz"));
    assert!(status.contains("200") && kernel == std::fs::read(boot.join("1/vmlinuz")).unwrap(), "{status}");
    let (status, initrd) = get(http, &format!("/boot/{secret}/initrd.img"));
    assert!(status.contains("200") && initrd == std::fs::read(boot.join("1/initrd.img")).unwrap(), "{status}");

    // The served initrd holds no password; the ISO's (carried by hand) does,
    // which shows the search would find it.
    assert!(!initrd_holds(&initrd, PASSWORD), "the network-boot initrd holds the repository password");
    assert!(initrd_holds(&std::fs::read(boot.join("2/initrd.img")).unwrap(), PASSWORD));

    // Disarmed, or the window closed: nothing is served.
    cli_ok(store, &["bootos", "disarm", "1"]);
    assert!(!script(http).contains("lifeline.token"));
    assert!(get(http, &format!("/boot/{secret}/initrd.img")).0.contains("404"));
    cli_ok(store, &["bootos", "arm", "1", "--for", "2s"]);
    assert!(script(http).contains("lifeline.token"));
    std::thread::sleep(Duration::from_millis(3100));
    let s = script(http);
    assert!(!s.contains("lifeline.token") && !s.contains(&secret), "after the window: {s}");
    assert!(get(http, &format!("/boot/{secret}/vmlinuz")).0.contains("404"), "served after the window");
    assert!(get(http, &format!("/boot/{secret}/initrd.img")).0.contains("404"), "served after the window");
    let audit = site.audit();
    assert!(audit.contains("boot media armed") && audit.contains("boot media disarmed"), "{audit}");
}

#[test]
fn the_claim_brings_the_password_once_and_a_claimed_token_raises_an_alarm() {
    let site = Site::new();
    let (store, http) = (&site.store, site.http);
    let made = site.make(&["--mode", "backup", "--arm"]);
    assert!(made.contains("armed"), "{made}");
    // The one-time token, as the armed script hands it to whoever asks.
    let s = script(http);
    let token = s
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lifeline.token="))
        .unwrap_or_else(|| panic!("no token in {s}"))
        .to_string();

    // The claimant gets the session and, over TLS, the password.
    let (ok, text, pw) = site.claim(&token, 1);
    assert!(ok && text.contains("with the repository password"), "{text}");
    assert_eq!(pw.as_deref().map(str::trim_end), Some(PASSWORD));
    assert!(!site.audit().contains("boot token alarm"));

    // The real machine boots, inside the window, from another address: its
    // script request finds the token claimed from 127.0.0.1. No token for it.
    let (status, body) = get_from(Ipv4Addr::new(127, 0, 0, 2), http, &format!("/ipxe/{MAC}"));
    assert!(status.contains("200") && !String::from_utf8_lossy(&body).contains("lifeline.token"));
    let audit = site.audit();
    assert!(audit.lines().any(|l| l.contains("boot token alarm") && l.contains("127.0.0.2")), "{audit}");
    // The machine itself asking again from where it claimed: no alarm.
    let alarms = |a: &str| a.lines().filter(|l| l.contains("boot token alarm")).count();
    script(http);
    assert_eq!(alarms(&site.audit()), 1);

    // A second claim of the token (the real machine's boot OS): refused,
    // no password, and an alarm.
    let (ok, text, pw) = site.claim(&token, 2);
    assert!(!ok && text.contains("already used") && pw.is_none(), "{text}");
    let audit = site.audit();
    assert_eq!(alarms(&audit), 2, "{audit}");
    assert!(site.rx.log_tail(50).contains("boot token alarm"), "no warning in the log");

    // ISO media carry their password: the claim sends none.
    site.make(&["--kind", "iso"]);
    let cmdline = std::fs::read_to_string(store.join("boot/2/cmdline")).unwrap();
    let iso_token = cmdline.split_whitespace().find_map(|w| w.strip_prefix("lifeline.token=")).unwrap();
    let (ok, text, pw) = site.claim(iso_token, 3);
    assert!(ok && pw.is_none(), "{text}");
}
