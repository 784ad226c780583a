//! Lifeline's boot OS builder (DESIGN.md, "Boot OS creation").
//!
//! A boot OS is a Linux kernel (by default the Debian kernel installed on
//! the receiver host) plus an initramfs this crate writes: busybox for the
//! shell and DHCP, the storage and network drivers the hardware needs
//! (resolved through the kernel's `modules.dep`), the Lifeline agent and a
//! generated `/init`. The kernel command line carries the machine's
//! identity and the receiver's address ([`cmdline::BootParams`]).
//!
//! ```no_run
//! use lifeline_bootos::{BootOs, BootOsSpec, ExtraFile, cmdline::{BootParams, Mode}};
//! # fn main() -> Result<(), lifeline_bootos::Error> {
//! let mut spec = BootOsSpec::default(); // newest /boot/vmlinuz-*, default drivers
//! spec.files.push(ExtraFile::executable("/bin/lifeline-image", "target/x86_64-unknown-linux-musl/release/lifeline-image"));
//! let built = BootOs::build(&spec, std::path::Path::new("initrd.img"))?;
//! let mut params = BootParams::new("pc1");
//! params.receiver = Some("https://10.0.2.2:7700".into());
//! params.mode = Mode::Backup;
//! println!("kernel {} initrd {} ({} bytes) append \"console=ttyS0 {}\"",
//!     built.kernel.display(), built.initramfs.display(), built.compressed_size, params.to_cmdline()?);
//! # Ok(()) }
//! ```
//!
//! Modules: [`agent`] (the static `lifeline-image` and the unattended
//! backup hook), [`cpio`] (the newc archive writer), [`modules`] (module
//! resolution), [`cmdline`] (kernel parameters), [`initramfs`] (assembly,
//! `/init`, compression), [`iso`] (a hybrid BIOS and UEFI ISO for CD or
//! USB), [`usb`] (a raw USB disk image, BIOS and UEFI, FAT with room to
//! spare). Booting one in a VM for tests is `lifeline-testvm`'s (beside
//! this crate), so that nothing test-only ships in the receiver.

pub mod agent;
pub mod cmdline;
pub mod cpio;
mod error;
pub mod initramfs;
pub mod iso;
pub mod modules;
pub mod usb;

pub use error::{Error, Result};
pub use initramfs::{BootOs, BootOsSpec, Built, ExtraFile, Source};
