#!/usr/bin/env bash
# Installs everything a fresh Debian machine lacks to build, run and test Lifeline.
# Safe to run any number of times: every step checks before it acts.
set -euo pipefail

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# Debian packages: build tools, the peers the benchmark compares against, the
# tools the tests use to build and check real filesystems, what boot media are
# made of (GRUB and xorriso for the ISO, OVMF to boot it under UEFI), and a desktop for the
# tray GUI's tests (a D-Bus session bus, a virtual X server with its fonts,
# xdotool/xprop to find and click windows).
APT_PACKAGES=(
  build-essential pkg-config clang llvm libelf-dev zlib1g-dev
  protobuf-compiler iproute2 procps psmisc util-linux e2fsprogs dosfstools
  mtools fdisk gdisk rsync lsyncd bpftool rdiff
  ntfs-3g exfatprogs exfat-fuse xfsprogs btrfs-progs
  qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils zstd
  musl-tools curl ipxe ipxe-qemu grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools ovmf
  dbus-daemon xvfb xfonts-base xdotool x11-utils
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: the stable toolchain builds user space; a nightly with rust-src builds the
# eBPF programs (-Z build-std=core for bpfel-unknown-none).
if ! command -v rustup >/dev/null; then
  echo "rustup is required (https://rustup.rs); install it and re-run" >&2
  exit 1
fi
rustup toolchain list | grep -q '^nightly' || {
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal -c rust-src
}
rustup component list --toolchain nightly --installed | grep -q '^rust-src' || {
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
}
# The boot OS runs a static lifeline-image (no shared libraries there): the musl
# target, with musl-gcc (musl-tools) for the C code of ring and zstd-sys.
rustup target list --installed | grep -q '^x86_64-unknown-linux-musl$' || {
  log "adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
}

# bpf-linker must be built against the same LLVM major version as nightly's rustc.
# rustup ships libLLVM.so.<ver>-rust-... but no plain libLLVM.so, so link through a
# symlink and record the toolchain's lib directory as rpath (see shared ENVIRONMENT).
TC=$(rustc +nightly --print sysroot)
LLVM_MAJOR=$(rustc +nightly -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
want="llvm-$LLVM_MAJOR"
have=""
[ -f "$HOME/.cargo/.bpf-linker-llvm" ] && have=$(cat "$HOME/.cargo/.bpf-linker-llvm")
if ! command -v bpf-linker >/dev/null || [ "$have" != "$want" ]; then
  log "building bpf-linker for $want (about a minute)"
  LIBDIR="$HOME/.cache/lifeline-llvmlib"
  mkdir -p "$LIBDIR"
  ln -sf "$(ls "$TC"/lib/libLLVM.so.* | head -n1)" "$LIBDIR/libLLVM.so"
  RUSTFLAGS="-L $LIBDIR -C link-arg=-Wl,-rpath,$TC/lib" \
    cargo +nightly install --locked --force bpf-linker --no-default-features --features "$want"
  echo "$want" > "$HOME/.cargo/.bpf-linker-llvm"
fi

# cargo-fuzz runs the filesystem readers' fuzz targets (imaging/disk/fuzz) in CI.
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (about a minute)"
  cargo +nightly install --locked cargo-fuzz
fi

# tracefs: aya attaches tracepoints by name through it.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || log "warning: could not mount tracefs"
fi
log "setup complete"
