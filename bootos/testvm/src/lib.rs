//! Test support for the tests that boot something: never linked into a
//! Lifeline binary (the boot OS builder itself is `lifeline-bootos`).
//!
//! - [`qemu`]: boots a kernel and initramfs, a CD or a disk image in a qemu
//!   VM (TCG) and reads its serial console.
//! - [`static_build`]: static (musl) builds of `lifeline-image` and
//!   `lifeline-agent` for a boot OS or a VM.

pub mod qemu;
pub mod static_build;
