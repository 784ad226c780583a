//! A raw USB disk image of a boot OS: write it to a stick with `dd` and it
//! boots under BIOS and UEFI, and unlike the ISO it is an ordinary writable
//! FAT filesystem with room to spare.
//!
//! Layout (made without root, from GRUB's images and mtools):
//!
//! * sector 0: an MBR holding GRUB's `boot.img` and one active partition
//!   (type 0x0c, FAT32 LBA) from 1 MiB to the end;
//! * sectors 1..2047: GRUB's BIOS core (`grub-mkimage -O i386-pc`, with
//!   `biosdisk`, `part_msdos`, `fat` and what `linux` needs built in), which
//!   `boot.img` loads (its default block list points at sector 1 and 2);
//! * the FAT32 filesystem (label `LIFELINEOS`): `EFI/BOOT/BOOTX64.EFI`
//!   (GRUB's x86_64-efi core, the removable-media path UEFI firmware looks
//!   for), `boot/vmlinuz`, `boot/initrd.img`, `boot/grub/grub.cfg` and the
//!   marker `boot/lifeline-usb.id` that both cores search for to find the
//!   filesystem, whatever the disk's number.
//!
//! Needs Debian's grub-pc-bin, grub-efi-amd64-bin and mtools
//! (scripts/setup.sh installs them).

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// What making a USB image needs, for error messages.
pub const PACKAGES: &str = "grub-common grub-pc-bin grub-efi-amd64-bin mtools";
/// The FAT filesystem's label.
pub const LABEL: &str = "LIFELINEOS";
/// Free space left on the stick's filesystem.
pub const SPARE_BYTES: u64 = 8 << 20;
/// Where the FAT partition starts.
const PART_START: u64 = 1 << 20;
const MIB: u64 = 1 << 20;
/// GRUB modules in both cores: enough to find the filesystem, read its
/// grub.cfg and boot Linux, on the serial console and the screen.
const MODULES: &[&str] = &[
    "part_msdos",
    "part_gpt",
    "fat",
    "search",
    "search_fs_file",
    "configfile",
    "normal",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
];
const EARLY_CFG: &str = "search --no-floppy --file --set=root /boot/lifeline-usb.id\nset prefix=($root)/boot/grub\n";

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out =
        cmd.output().map_err(|e| Error::Missing(format!("cannot run {what} ({e}): apt-get install {PACKAGES}")))?;
    if !out.status.success() {
        return Err(Error::Missing(format!(
            "{what} failed ({}): {} (it needs {PACKAGES})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Writes a raw USB disk image to `out` that boots `kernel` with `initrd`
/// and `cmdline` under BIOS and UEFI; `title` names GRUB's entry. Returns
/// its size.
pub fn make_usb(kernel: &Path, initrd: &Path, cmdline: &str, title: &str, out: &Path) -> Result<u64> {
    let cfg = crate::iso::grub_cfg(cmdline, title)?;
    let work =
        tempfile::tempdir().map_err(|e| Error::io("cannot create a temporary directory", Path::new("/tmp"), e))?;
    let w = |name: &str| work.path().join(name);
    let early = w("early.cfg");
    std::fs::write(&early, EARLY_CFG).map_err(|e| Error::io("cannot write", &early, e))?;
    let core = w("core.img");
    run(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-o"])
            .arg(&core)
            .arg("-c")
            .arg(&early)
            .args(["-p", "/boot/grub", "biosdisk"])
            .args(MODULES),
        "grub-mkimage -O i386-pc",
    )?;
    let efi = w("BOOTX64.EFI");
    run(
        Command::new("grub-mkimage")
            .args(["-O", "x86_64-efi", "-o"])
            .arg(&efi)
            .arg("-c")
            .arg(&early)
            .args(["-p", "/boot/grub", "efi_gop", "efi_uga"])
            .args(MODULES),
        "grub-mkimage -O x86_64-efi",
    )?;
    let core_bytes = std::fs::read(&core).map_err(|e| Error::io("cannot read", &core, e))?;
    if core_bytes.len() as u64 > PART_START - 512 || core_bytes.len() < 512 {
        return Err(Error::Invalid(format!(
            "GRUB's BIOS core is {} bytes: it must fit before 1 MiB",
            core_bytes.len()
        )));
    }
    let boot_img_path = Path::new("/usr/lib/grub/i386-pc/boot.img");
    let boot_img = std::fs::read(boot_img_path).map_err(|e| {
        Error::io(format!("cannot read GRUB's MBR code (apt-get install {PACKAGES})"), boot_img_path, e)
    })?;
    if boot_img.len() != 512 {
        return Err(Error::Invalid(format!("{} is not one sector", boot_img_path.display())));
    }
    let grub_cfg = w("grub.cfg");
    std::fs::write(&grub_cfg, cfg).map_err(|e| Error::io("cannot write", &grub_cfg, e))?;
    let id = w("lifeline-usb.id");
    std::fs::write(&id, format!("{title}\n")).map_err(|e| Error::io("cannot write", &id, e))?;

    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(|e| Error::io("cannot read", p, e));
    let payload = len(kernel)? + len(initrd)? + len(&efi)? + 64 * 1024;
    // FAT32 with 512-byte clusters needs at least 65525 clusters (~33 MiB).
    let fat_bytes = ((payload + payload / 8 + SPARE_BYTES).div_ceil(MIB) * MIB).max(40 * MIB);
    let total = PART_START + fat_bytes;
    let sectors = fat_bytes / 512;

    // The MBR: GRUB's boot code, one active FAT32 (LBA) partition.
    let mut mbr = [0u8; 512];
    mbr[..440].copy_from_slice(&boot_img[..440]);
    // As grub-bios-setup does for a hard disk: no check of the BIOS's drive number.
    mbr[0x66] = 0x90;
    mbr[0x67] = 0x90;
    // The disk signature: from the title, so the same media is the same bytes.
    let sig = blake_ish(title.as_bytes());
    mbr[440..444].copy_from_slice(&sig.to_le_bytes());
    let e = &mut mbr[446..462];
    e[0] = 0x80;
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = 0x0c;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&((PART_START / 512) as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;

    let _ = std::fs::remove_file(out);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(out).map_err(|e| Error::io("cannot create", out, e))?;
        f.set_len(total).map_err(|e| Error::io("cannot size", out, e))?;
        f.write_all(&mbr).map_err(|e| Error::io("cannot write", out, e))?;
        f.seek(SeekFrom::Start(512))
            .and_then(|_| f.write_all(&core_bytes))
            .map_err(|e| Error::io("cannot write", out, e))?;
        f.sync_all().map_err(|e| Error::io("cannot write", out, e))?;
    }
    let img = format!("{}@@{PART_START}", out.display());
    run(
        Command::new("mformat")
            .args(["-i", &img, "-F", "-c", "1", "-v", LABEL, "-N", &format!("{sig:08x}")])
            .args(["-T", &sectors.to_string(), "-h", "64", "-s", "32", "-H", &(PART_START / 512).to_string(), "::"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", "0"),
        "mformat",
    )?;
    run(
        Command::new("mmd")
            .args(["-i", &img, "::/EFI", "::/EFI/BOOT", "::/boot", "::/boot/grub"])
            .env("SOURCE_DATE_EPOCH", "0"),
        "mmd",
    )?;
    for (src, dest) in [
        (efi.as_path(), "::/EFI/BOOT/BOOTX64.EFI"),
        (kernel, "::/boot/vmlinuz"),
        (initrd, "::/boot/initrd.img"),
        (grub_cfg.as_path(), "::/boot/grub/grub.cfg"),
        (id.as_path(), "::/boot/lifeline-usb.id"),
    ] {
        run(Command::new("mcopy").args(["-i", &img, "-o"]).arg(src).arg(dest).env("SOURCE_DATE_EPOCH", "0"), "mcopy")?;
    }
    Ok(total)
}

/// A 32-bit FNV-1a hash (the disk signature and volume serial).
fn blake_ish(b: &[u8]) -> u32 {
    b.iter().fold(0x811c_9dc5u32, |h, &x| (h ^ x as u32).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usb_image_layout() {
        // No skipping: scripts/setup.sh installs grub-common and mtools, and
        // make_usb says which is missing.
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        let i = dir.path().join("initrd");
        std::fs::write(&k, vec![1u8; 300_000]).unwrap();
        std::fs::write(&i, vec![2u8; 200_000]).unwrap();
        let out = dir.path().join("usb.img");
        let size = make_usb(&k, &i, "console=ttyS0 lifeline.machine=pc1", "Lifeline test", &out).unwrap();
        assert_eq!(size, std::fs::metadata(&out).unwrap().len());
        let b = std::fs::read(&out).unwrap();
        assert_eq!(&b[510..512], &[0x55, 0xaa]);
        assert_eq!(b[446], 0x80);
        assert_eq!(b[450], 0x0c);
        assert_eq!(u32::from_le_bytes(b[454..458].try_into().unwrap()), 2048);
        // The files are there, on a FAT filesystem labelled LIFELINEOS.
        let img = format!("{}@@{PART_START}", out.display());
        let ls = Command::new("mdir").args(["-i", &img, "-b", "-/", "::/"]).output().unwrap();
        let ls = String::from_utf8_lossy(&ls.stdout);
        for f in ["BOOTX64.EFI", "vmlinuz", "initrd.img", "grub.cfg", "lifeline-usb.id"] {
            assert!(ls.contains(f), "{f} missing:\n{ls}");
        }
        let got = Command::new("mtype").args(["-i", &img, "::/boot/initrd.img"]).output().unwrap().stdout;
        assert_eq!(got, vec![2u8; 200_000]);
        let label = Command::new("mlabel").args(["-i", &img, "-s", "::"]).output().unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains(LABEL));
        // Same input, same bytes.
        let again = dir.path().join("again.img");
        make_usb(&k, &i, "console=ttyS0 lifeline.machine=pc1", "Lifeline test", &again).unwrap();
        assert!(std::fs::read(&again).unwrap() == b, "the USB image is not reproducible");
    }
}
