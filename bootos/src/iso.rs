//! A bootable ISO of a boot OS, for CD or USB stick, under BIOS and UEFI.
//!
//! GRUB's `grub-mkrescue` does the hard part: an ISO 9660 image with El
//! Torito entries for BIOS (GRUB's i386-pc core) and UEFI (an EFI system
//! partition image holding GRUB's x86_64-efi core), and an isohybrid MBR and
//! GPT so that the same bytes written to a USB stick (`dd`) boot too. This
//! module writes the tree it packs: the kernel, the initramfs and a
//! `grub.cfg` that boots them at once with the boot OS's command line, on
//! the serial console and the screen alike.
//!
//! Needs Debian's grub-common, grub-pc-bin, grub-efi-amd64-bin, xorriso and
//! mtools (scripts/setup.sh installs them).

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// What `grub-mkrescue` needs, for error messages.
pub const PACKAGES: &str = "grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools";

/// The `grub.cfg` that boots `/boot/vmlinuz` with `/boot/initrd.img` and
/// `cmdline` at once, on the serial console and the screen alike (the ISO
/// and the USB image share it).
pub fn grub_cfg(cmdline: &str, title: &str) -> Result<String> {
    // grub.cfg is a script: keep the command line to plain words.
    let plain = |s: &str| !s.chars().any(|c| matches!(c, '"' | '\'' | '\\' | '$' | ';' | '\n' | '{' | '}' | '`'));
    if !plain(cmdline) || !plain(title) {
        return Err(Error::Invalid(format!(
            "the kernel command line or title holds characters GRUB would interpret: {cmdline:?}"
        )));
    }
    Ok(format!(
        "# Lifeline boot OS, written by lifeline-bootos.\n\
         set timeout=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         menuentry \"{title}\" {{\n\
         \tlinux /boot/vmlinuz {cmdline}\n\
         \tinitrd /boot/initrd.img\n\
         }}\n"
    ))
}

/// Writes a hybrid ISO to `out` that boots `kernel` with `initrd` and
/// `cmdline`; `title` names the boot menu's entry. Returns its size.
pub fn make_iso(kernel: &Path, initrd: &Path, cmdline: &str, title: &str, out: &Path) -> Result<u64> {
    let cfg = grub_cfg(cmdline, title)?;
    let tree =
        tempfile::tempdir().map_err(|e| Error::io("cannot create a temporary directory", Path::new("/tmp"), e))?;
    let boot = tree.path().join("boot");
    let grub = boot.join("grub");
    std::fs::create_dir_all(&grub).map_err(|e| Error::io("cannot create", &grub, e))?;
    std::fs::copy(kernel, boot.join("vmlinuz")).map_err(|e| Error::io("cannot copy the kernel", kernel, e))?;
    std::fs::copy(initrd, boot.join("initrd.img")).map_err(|e| Error::io("cannot copy the initramfs", initrd, e))?;
    let cfg_path = grub.join("grub.cfg");
    std::fs::write(&cfg_path, cfg).map_err(|e| Error::io("cannot write", &cfg_path, e))?;
    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .arg(tree.path())
        // Reproducible, and no volume date that changes every build.
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .map_err(|e| Error::Missing(format!("cannot run grub-mkrescue ({e}): apt-get install {PACKAGES}")))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(Error::Missing(format!(
            "grub-mkrescue failed ({}): {} (it needs {PACKAGES})",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    std::fs::metadata(out).map(|m| m.len()).map_err(|e| Error::io("grub-mkrescue wrote no", out, e))
}
