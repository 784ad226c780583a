//! Making boot media for one machine (`lifeline-receiver bootos make`): the
//! kernel, an initramfs with the static agent and the receiver's CA
//! (lifeline-bootos builds it), and the kernel command line naming the
//! receiver, the machine and a fresh one-time boot token.
//!
//! Each media lives in `STORE/boot/<id>/` (mode 0700, every file 0600):
//! `vmlinuz`, `initrd.img` and `cmdline` (it holds the token), and for kind
//! `iso` a hybrid `boot.iso` (BIOS and UEFI; a CD, or a USB stick written
//! with `dd`), for kind `usb` a raw disk image `usb.img` (MBR + FAT, BIOS
//! and UEFI, with room to spare; see `lifeline_bootos::usb`).
//!
//! Where the repository password of unattended media goes:
//! - ISO and USB media are carried by hand and never served: their
//!   initramfs holds it.
//! - Network-boot media go over plain HTTP: their initramfs holds **no**
//!   password. It stays in `password` (0600) beside them, and the boot OS
//!   gets it in the reply of its claim (`BootSessions.Claim`, over TLS, once,
//!   see [`crate::sessions`]). Local-style unattended media never claim, so
//!   they cannot be network-boot media.
//! - Attended media (mode menu) hold none: the menu asks for it.
//!
//! The network-boot server ([`crate::netboot`]) serves network-boot media
//! to the machine's MAC address only while armed (`bootos arm`, see
//! [`lifeline_store::db::boot`]) and under a random URL secret, until the
//! token is used.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lifeline_bootos::cmdline::BootParams;
/// What media are made for and how they reach the image store (the boot
/// OS builder's own types: the kernel command line carries them).
pub use lifeline_bootos::cmdline::{Mode, Style};
use lifeline_bootos::{agent, BootOs, BootOsSpec};
use lifeline_core::credential::Credential;

use lifeline_core::credential::MachineName;
use lifeline_store::db::boot::BootMedia;
use lifeline_store::private::{create_private_dir_all, write_private};
use lifeline_store::{Db, StoreLayout};

/// What to make.
pub struct MediaSpec {
    pub machine: MachineName,
    /// The receiver's address as the booted machine reaches it (style
    /// receiver).
    pub receiver_url: Option<String>,
    pub mode: Mode,
    pub style: Style,
    pub image: Option<String>,
    /// Restore media reading another machine's images (a replacement
    /// machine, a cloned disk): its boot session may read that machine's
    /// image store and never write to it. The password is that machine's
    /// repository password.
    pub image_of: Option<MachineName>,
    /// The receiver's CA certificate (PEM), which the boot OS trusts.
    pub ca_pem: Vec<u8>,
    /// The static `lifeline-image` for the boot OS.
    pub agent: PathBuf,
    /// The repository password: unattended backup and restore need it (it
    /// goes into the initramfs); attended media (mode menu) must have none,
    /// the menu asks for it.
    pub password: Option<String>,
    /// The kernel (default: the newest installed `/boot/vmlinuz-*`).
    pub kernel: Option<PathBuf>,
    pub kind: String,
}

/// Made media: its record and files.
pub struct Made {
    pub media: BootMedia,
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The whole kernel command line, token included.
    pub cmdline: String,
    pub initrd_bytes: u64,
    /// The file to write to a CD or USB stick: the hybrid ISO (`boot.iso`,
    /// kind `iso`) or the raw USB disk image (`usb.img`, kind `usb`).
    pub iso: Option<PathBuf>,
}

/// Builds the boot OS for `spec.machine` and records it.
pub fn make(store: &StoreLayout, db: &mut Db, spec: &MediaSpec) -> anyhow::Result<Made> {
    if db.token_hash(spec.machine.as_str())?.is_none() {
        anyhow::bail!(
            "machine {} is not registered (`lifeline-receiver machine add {}` registers it)",
            spec.machine,
            spec.machine
        );
    }
    if let Some(other) = &spec.image_of {
        if spec.mode != Mode::Restore || spec.image.is_none() || spec.style != Style::Receiver {
            anyhow::bail!("--image-of is for restore media with the receiver: give --mode restore and --image NAME");
        }
        if db.token_hash(other.as_str())?.is_none() {
            anyhow::bail!("machine {other} (--image-of) is not registered (see `lifeline-receiver machine list`)");
        }
    }
    let ca_pem = &spec.ca_pem;
    let netboot = spec.kind == "netboot";
    if netboot && spec.mode != Mode::Menu && spec.style == Style::Local {
        anyhow::bail!(
            "unattended local-style media would carry the repository password, and network boot serves nothing secret: make them --kind iso or usb, or --mode menu"
        );
    }
    let files = match (spec.mode, &spec.password) {
        (Mode::Menu, None) => agent::attended_files(&spec.agent, ca_pem),
        (Mode::Menu, Some(_)) => anyhow::bail!(
            "attended (menu) boot media never hold the repository password (whoever boots it types it): leave out --password-file"
        ),
        // Its password comes with the boot session, over TLS.
        (_, Some(pw)) if netboot => {
            agent::check_password(pw)?;
            agent::attended_files(&spec.agent, ca_pem)
        }
        (_, Some(pw)) => agent::unattended_files(&spec.agent, ca_pem, pw)?,
        (_, None) => anyhow::bail!(
            "unattended {} media need the repository password (--password-file): it goes into the boot OS",
            spec.mode.as_str()
        ),
    };
    let token = Credential::generate(spec.machine.as_str());
    let mut params = BootParams::new(spec.machine.as_str());
    if spec.style == Style::Receiver && spec.receiver_url.is_none() {
        anyhow::bail!(
            "boot media for jobs with the receiver need --receiver-url (how the machine reaches this receiver)"
        );
    }
    params.receiver = spec.receiver_url.clone();
    params.mode = spec.mode;
    params.style = spec.style;
    params.image = spec.image.clone();
    let public = params.to_cmdline()?;
    params.token = Some(token.token());
    let cmdline = format!("console=tty0 console=ttyS0 {}", params.to_cmdline()?);

    // Built beside its final place, renamed once recorded.
    let boot = store.boot_media_dir();
    create_private_dir_all(&boot)?;
    let tmp = tempdir_in(&boot)?;
    let initrd = tmp.join("initrd.img");
    let os_spec = BootOsSpec { files, kernel: spec.kernel.clone(), ..BootOsSpec::default() };
    let built = BootOs::build(&os_spec, &initrd).context("building the boot OS")?;
    std::fs::copy(&built.kernel, tmp.join("vmlinuz"))
        .with_context(|| format!("cannot copy the kernel {}", built.kernel.display()))?;
    write_private(&tmp.join("cmdline"), &format!("{cmdline}\n"))?;
    if let (true, Mode::Backup | Mode::Restore, Some(pw)) = (netboot, spec.mode, &spec.password) {
        write_private(&tmp.join(PASSWORD_FILE), &format!("{pw}\n"))?;
    }
    let iso = match spec.kind.as_str() {
        "netboot" => None,
        "iso" => {
            let iso = tmp.join("boot.iso");
            let title =
                format!("Lifeline boot OS for {} ({} {})", spec.machine, spec.mode.as_str(), spec.style.as_str());
            lifeline_bootos::iso::make_iso(&built.kernel, &initrd, &cmdline, &title, &iso).context("making the ISO")?;
            // Holds the token and the password, like the initramfs.
            std::fs::set_permissions(&iso, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Some("boot.iso")
        }
        "usb" => {
            let img = tmp.join("usb.img");
            let title =
                format!("Lifeline boot OS for {} ({} {})", spec.machine, spec.mode.as_str(), spec.style.as_str());
            lifeline_bootos::usb::make_usb(&built.kernel, &initrd, &cmdline, &title, &img)
                .context("making the USB image")?;
            // Holds the token (and for unattended media the password).
            std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Some("usb.img")
        }
        other => anyhow::bail!("unknown boot media kind {other:?} (netboot, iso or usb)"),
    };
    // The kernel and initrd were made readable by all: the token, and for
    // ISO and USB media the password, are nobody's business but root's.
    for f in std::fs::read_dir(&tmp)? {
        std::fs::set_permissions(f?.path(), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }

    let mut media = BootMedia {
        image: spec.image.clone().unwrap_or_default(),
        cmdline: public,
        image_of: spec.image_of.as_ref().map(|m| m.as_str().to_string()),
        url_secret: netboot.then(|| format!("{:032x}", rand::random::<u128>())),
        ..BootMedia::new(spec.machine.as_str(), &spec.kind, spec.mode.as_str(), spec.style.as_str())
    };
    let id = match db.add_boot_media(&media, &token.secret_hash()) {
        Ok(id) => id,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    media.id = id;
    let dir = store.boot_media(id);
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a removed database
    std::fs::rename(&tmp, &dir).with_context(|| format!("cannot move the boot media to {}", dir.display()))?;
    Ok(Made {
        media,
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        iso: iso.map(|f| dir.join(f)),
        dir,
        cmdline,
        initrd_bytes: built.compressed_size,
    })
}

/// Where network-boot media keep the repository password their initrd
/// does not hold.
const PASSWORD_FILE: &str = "password";

/// The repository password of network-boot media `id` for its claimant
/// (`None`: the media has none to give: attended, ISO or USB).
pub fn password_of(store: &StoreLayout, id: i64) -> anyhow::Result<Option<String>> {
    let p = store.boot_media(id).join(PASSWORD_FILE);
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s.trim_end_matches('\n').to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// The whole kernel command line of media `id` (token included).
pub fn cmdline_of(store: &StoreLayout, id: i64) -> anyhow::Result<String> {
    let p = store.boot_media(id).join("cmdline");
    Ok(std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?.trim().to_string())
}

fn tempdir_in(dir: &Path) -> anyhow::Result<PathBuf> {
    // Made private before the first file lands, as is the directory above.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    for _ in 0..16 {
        let p = dir.join(format!(".new-{:016x}", rand::random::<u64>()));
        match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", p.display())),
        }
    }
    anyhow::bail!("cannot create a temporary directory in {}", dir.display())
}
