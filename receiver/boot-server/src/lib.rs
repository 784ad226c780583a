//! The receiver's boot server: everything about the boot OS a machine boots
//! to be imaged or restored, once the receiver has made it.
//!
//! - [`bootmedia`]: making boot media for one machine (kernel, initramfs
//!   with the static imaging agent, command line with a one-time token;
//!   network boot, ISO, USB image), with `lifeline-bootos`.
//! - [`netboot`]: the network-boot HTTP server (per-MAC iPXE scripts, the
//!   kernel and initrd of armed network-boot media at secret URLs; no
//!   password ever); [`tftp`]: the TFTP server for PXE firmware that needs
//!   it.
//! - [`MediaDownload`]: the `BootMediaStore` service, owners downloading
//!   their media.
//! - [`BootSessionsService`]: the `BootSessions` service, one-time boot
//!   tokens traded for boot sessions (and, for network-boot media, the
//!   repository password, over TLS).
//!
//! Media records, tokens and sessions are in the management database
//! ([`lifeline_store::db::boot`]); their files under
//! [`lifeline_store::StoreLayout::boot_media`].

pub mod bootmedia;
pub mod budget;
pub mod mediadownload;
pub mod netboot;
pub mod sessions;
pub mod tftp;

pub use mediadownload::MediaDownload;
pub use sessions::BootSessionsService;
