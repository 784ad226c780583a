#!/usr/bin/env bash
# Builds the test disk of the imaging benchmark (bench/imaging.py): an image
# file laid out like a real machine's disk, made on a loop device.
#
#   bench/imaging-disk.sh OUT_FILE [SIZE]        # SIZE default 4G (at least 3G)
#
# GPT (fixed GUIDs):
#   p1  EFI system partition, FAT32, 256 MiB: EFI/BOOT + EFI/debian with a
#       10 MiB "kernel", a 24 MiB "initrd" (random bytes) and a few text files
#   p2  ext4 root, SIZE - 913 MiB (3183 MiB for 4G): a Debian minbase tree
#       (debootstrap, cached as a tarball under /var/cache/lifeline-bench/)
#       plus about 450 MB of mixed data (random "photos", generated text and
#       logs, zero-heavy "VM images"), about 650 MB used in all; and 1 GiB of
#       deleted files (3/4 random, 1/4 text) lying in its free space
#   p3  Linux swap, 256 MiB (mkswap)
#   about 400 MiB unallocated at the end
#
# Every byte of data comes from Python's random.Random with fixed seeds
# (bench/lifeline_bench.py's generators, disk_content), and the filesystems
# get fixed UUIDs, so two builds hold the same files with the
# same contents (block placement may differ slightly). Needs root, python3,
# sgdisk (gdisk), mkfs.vfat/fsck.vfat (dosfstools), mcopy (mtools), e2fsprogs,
# util-linux and,
# the first time, debootstrap and network access to the Debian mirror named
# in /etc/apt/sources.list* (suite: this machine's codename; override with
# DEBIAN_SUITE=..., DEBIAN_MIRROR=...).
set -euo pipefail

OUT=${1:?usage: $0 OUT_FILE [SIZE default 4G]}
SIZE=${2:-4G}
CACHE=/var/cache/lifeline-bench
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '[imaging-disk] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "run as root (loop devices, mounts)" >&2; exit 1; }
for t in sgdisk mkfs.vfat fsck.vfat mcopy mkfs.ext4 e2fsck mkswap losetup partx python3 tar; do
    command -v "$t" >/dev/null || { echo "$t is missing (apt-get install -y gdisk dosfstools mtools e2fsprogs)" >&2; exit 1; }
done

total_mib=$(( $(numfmt --from=iec "$SIZE") / 1048576 ))
esp_mib=256 swap_mib=256 free_mib=400
root_mib=$(( total_mib - 1 - esp_mib - swap_mib - free_mib - 1 ))   # 1 MiB before p1, 1 MiB for the backup GPT
[ "$root_mib" -ge 1800 ] || { echo "SIZE $SIZE is too small (need at least 3G)" >&2; exit 1; }

# ---------------------------------------------------------------- debootstrap cache
os_codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-stable}")
SUITE=${DEBIAN_SUITE:-$os_codename}
if [ -z "${DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
TARBALL=$CACHE/debian-$SUITE-minbase.tar
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install -y debootstrap)" >&2; exit 1; }
    mkdir -p "$CACHE"
    tmp=$(mktemp -d /var/tmp/lifeline-debootstrap.XXXXXX)
    log "debootstrap --variant=minbase $SUITE from $DEBIAN_MIRROR (cached as $TARBALL)"
    debootstrap --variant=minbase "$SUITE" "$tmp" "$DEBIAN_MIRROR" >"$tmp.log" 2>&1 \
        || { tail -20 "$tmp.log" >&2; rm -rf "$tmp"; exit 1; }
    tar --numeric-owner --xattrs -C "$tmp" -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    rm -rf "$tmp" "$tmp.log"
fi

# ---------------------------------------------------------------- the disk
mkdir -p "$(dirname "$OUT")"
TMPIMG=$OUT.building
MNT=$(mktemp -d /tmp/lifeline-disk.XXXXXX)
DEV=
cleanup() {
    set +e
    mountpoint -q "$MNT/root" && umount "$MNT/root"
    [ -n "$DEV" ] && losetup -d "$DEV"
    rm -rf "$MNT"
    rm -f "$TMPIMG"
}
trap cleanup EXIT

rm -f "$TMPIMG"
truncate -s "$SIZE" "$TMPIMG"
log "GPT on $SIZE: ESP ${esp_mib} MiB, root ${root_mib} MiB, swap ${swap_mib} MiB, ~${free_mib} MiB unallocated"
sgdisk -Z -o -U 6b2c6a7e-5d4f-4b8e-9a51-1f0c2d3e4a50 \
    -n 1:2048:+${esp_mib}M -t 1:ef00 -c 1:"EFI system partition" -u 1:6b2c6a7e-5d4f-4b8e-9a51-1f0c2d3e4a51 \
    -n 2:0:+${root_mib}M -t 2:8304 -c 2:root -u 2:6b2c6a7e-5d4f-4b8e-9a51-1f0c2d3e4a52 \
    -n 3:0:+${swap_mib}M -t 3:8200 -c 3:swap -u 3:6b2c6a7e-5d4f-4b8e-9a51-1f0c2d3e4a53 \
    "$TMPIMG" >/dev/null
DEV=$(losetup --find --show -P "$TMPIMG")
# Kernels built without a GPT parser (CONFIG_EFI_PARTITION unset, as here)
# find no partitions: partx adds them from user space (libblkid).
partx -a "$DEV" 2>/dev/null || true
for i in 1 2 3; do   # wait for the partition nodes
    for _ in $(seq 50); do [ -b "${DEV}p$i" ] && break; sleep 0.1; done
done

mkfs.vfat -F 32 -n EFI -i 4C1FE5B1 "${DEV}p1" >/dev/null
mkfs.ext4 -q -F -L root -U 1d7c4f52-0c39-4c8e-b7a1-52f0e6d9a0c2 \
    -E hash_seed=0b5e4d3c-2a19-4f08-9e7d-6c5b4a392817,lazy_itable_init=0,lazy_journal_init=0 "${DEV}p2"
mkswap -L swap -U 5a1e0c3b-7d2f-4e69-8b14-90c3d2e1f0a7 "${DEV}p3" >/dev/null

mkdir -p "$MNT/root" "$MNT/esp"
mount -o noatime "${DEV}p2" "$MNT/root"

log "root: Debian $SUITE minbase from $TARBALL"
tar --numeric-owner --xattrs -xpf "$TARBALL" -C "$MNT/root"

log "root: mixed data, ESP files, then 1 GiB of garbage deleted again"
python3 "$HERE/lifeline_bench.py" disk-content "$MNT/root" "$MNT/esp"

# The ESP's files go in with mtools: not every kernel has vfat (this one does
# not), and mcopy needs none.
MTOOLS_SKIP_CHECK=1 mcopy -s -Q -m -i "${DEV}p1" "$MNT/esp"/* ::/ 2>"$MNT/mcopy.err" \
    || { cat "$MNT/mcopy.err" >&2; exit 1; }
df -B1 --output=target,used,size "$MNT/root" | sed 's/^/[imaging-disk] /' >&2
umount "$MNT/root"
log "fsck"
e2fsck -fn "${DEV}p2" >/dev/null
fsck.vfat -n "${DEV}p1" >/dev/null
losetup -d "$DEV"
DEV=
mv "$TMPIMG" "$OUT"
log "done: $OUT"
