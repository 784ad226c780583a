#!/usr/bin/env bash
# Installs everything a fresh Debian machine lacks to build, run and test Lifeline.
# Safe to run any number of times: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

# Debian packages: build tools, the peers the benchmark compares against, the
# tools the tests use to build and check real filesystems, what boot media are
# made of (GRUB and xorriso for the ISO, OVMF to boot it under UEFI), and a desktop for the
# tray GUI's tests (a D-Bus session bus, a virtual X server with its fonts,
# xdotool/xprop to find and click windows), and for the web console's browser
# test Debian's Chromium (driven by Playwright, below; its chromedriver for
# WebDriver clients) and certutil, which makes that browser trust the
# receiver's own CA.
APT_PACKAGES=(
  build-essential pkg-config clang llvm libelf-dev zlib1g-dev
  protobuf-compiler iproute2 procps psmisc util-linux e2fsprogs dosfstools
  mtools fdisk gdisk rsync lsyncd rsnapshot syncthing bpftool rdiff
  ntfs-3g exfatprogs exfat-fuse xfsprogs btrfs-progs
  qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils zstd
  musl-tools curl ipxe ipxe-qemu grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools ovmf
  dbus-daemon xvfb xfonts-base xdotool x11-utils
  chromium chromium-driver libnss3-tools python3-pip
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

# Rust. Every toolchain is pinned; nothing floats with what the machine has:
# - user space builds with the stable release in rust-toolchain.toml (the
#   musl target for the boot OS's static binaries);
# - the eBPF programs build with the dated nightly in
#   ebpf/lifeline-ebpf/rust-toolchain.toml (rust-src for -Z build-std=core),
#   linked by bpf-linker $BPF_LINKER_VERSION built against that nightly's LLVM.
# The stack a BPF function gets changes between compiler versions, so change
# these only together with tests/tests/verifier.rs passing.
BPF_LINKER_VERSION=0.13.0
CARGO_FUZZ_VERSION=0.13.2
toolchain_of() { sed -n 's/^channel *= *"\(.*\)"/\1/p' "$1"; }
STABLE=$(toolchain_of rust-toolchain.toml)
NIGHTLY=$(toolchain_of ebpf/lifeline-ebpf/rust-toolchain.toml)
if ! command -v rustup >/dev/null; then
  echo "rustup is required (https://rustup.rs); install it and re-run" >&2
  exit 1
fi
for tc in "$STABLE" "$NIGHTLY"; do
  rustup toolchain list | grep -q "^$tc-" || {
    log "installing the Rust toolchain $tc"
    rustup toolchain install "$tc" --profile minimal
  }
done
rustup component list --toolchain "$STABLE" --installed | grep -q '^clippy' || rustup component add --toolchain "$STABLE" clippy rustfmt
rustup component list --toolchain "$NIGHTLY" --installed | grep -q '^rust-src' || {
  log "adding rust-src to $NIGHTLY"
  rustup component add rust-src --toolchain "$NIGHTLY"
}
# The boot OS runs static binaries (no shared libraries there): the musl
# target, with musl-gcc (musl-tools) for the C code of ring and zstd-sys.
rustup target list --toolchain "$STABLE" --installed | grep -q '^x86_64-unknown-linux-musl$' || {
  log "adding the x86_64-unknown-linux-musl target to $STABLE"
  rustup target add --toolchain "$STABLE" x86_64-unknown-linux-musl
}

# bpf-linker must be built against the same LLVM major version as the pinned
# nightly's rustc. rustup ships libLLVM.so.<ver>-rust-... but no plain
# libLLVM.so, so link through a symlink and record the toolchain's lib
# directory as rpath (see shared ENVIRONMENT). A marker names what it was
# built for; anything else is rebuilt.
TC=$(rustc +"$NIGHTLY" --print sysroot)
LLVM_MAJOR=$(rustc +"$NIGHTLY" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
want="bpf-linker $BPF_LINKER_VERSION llvm-$LLVM_MAJOR $NIGHTLY"
have=""
[ -f "$HOME/.cargo/.bpf-linker-built-for" ] && have=$(cat "$HOME/.cargo/.bpf-linker-built-for")
if ! command -v bpf-linker >/dev/null || [ "$have" != "$want" ]; then
  log "building $want (about a minute)"
  LIBDIR="$HOME/.cache/lifeline-llvmlib-$NIGHTLY"
  mkdir -p "$LIBDIR"
  ln -sf "$(ls "$TC"/lib/libLLVM.so.* | head -n1)" "$LIBDIR/libLLVM.so"
  RUSTFLAGS="-L $LIBDIR -C link-arg=-Wl,-rpath,$TC/lib" \
    cargo +"$NIGHTLY" install --locked --force bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features "llvm-$LLVM_MAJOR"
  echo "$want" > "$HOME/.cargo/.bpf-linker-built-for"
fi

# cargo-fuzz runs the filesystem readers' fuzz targets (imaging/disk/fuzz) in CI.
if [ "$(cargo +"$NIGHTLY" fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about a minute)"
  cargo +"$NIGHTLY" install --locked --force cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# Playwright for Python drives Debian's Chromium in the console's browser
# test (tests/console/flow.py). Pinned: its wheel carries the Node driver
# speaking this version's protocol, tested with Chromium 156 from Debian 12.
# Never `playwright install`: that downloads a browser of its own; the test
# launches /usr/bin/chromium.
PLAYWRIGHT_VERSION=1.65.3
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null)" != "$PLAYWRIGHT_VERSION" ]; then
  log "installing Playwright $PLAYWRIGHT_VERSION for Python (no browser download)"
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  # Debian's own python3 refuses pip outside a virtual environment (PEP
  # 668) unless told; a python3 of pyenv or the like does not need it.
  python3 -m pip install -q "playwright==$PLAYWRIGHT_VERSION" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "playwright==$PLAYWRIGHT_VERSION"
fi

# tracefs: aya attaches tracepoints by name through it.
if [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || log "warning: could not mount tracefs"
fi
log "setup complete"
