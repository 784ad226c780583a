#!/usr/bin/env bash
# Fuzzes the parsers of untrusted bytes, each target for SECONDS (default 20):
#
# - on disk (imaging/disk/fuzz): partition tables, each filesystem reader,
#   used-block maps, and a pack's index and trailer (imaging/repo, no seed:
#   it starts from nothing), from a seed corpus of real, small filesystems
#   made by mkfs, so the fuzzer starts past the magic numbers;
# - from the network, the receiver's (receiver/fuzz): TFTP packets (tftp),
#   the network-boot HTTP server from raw connection bytes (netboot_http),
#   Replication requests into the mirror (mirror_replicate), ImageStore
#   requests into the image store (image_store); each target writes its own
#   seeds (valid requests made with the real encoders) into its corpus
#   (LIFELINE_FUZZ_SEEDS) before libFuzzer reads it.
#
# Prints one `test result:` line per target, which scripts/test.sh counts
# with the tests. Crashes are kept in DIR/artifacts/TARGET/ (DIR: the fuzz
# crate; reproduce: cargo +$NIGHTLY fuzz run TARGET FILE in DIR, NIGHTLY from
# ebpf/lifeline-ebpf/rust-toolchain.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
# The pinned nightly (the same as the eBPF programs'; scripts/setup.sh installs it).
NIGHTLY=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' ebpf/lifeline-ebpf/rust-toolchain.toml)
root=$PWD
secs=${1:-20}
corpus=${LIFELINE_FUZZ_CORPUS:-/var/tmp/lifeline-fuzz-corpus}
targets=(layout usedmap ext fat swap ntfs exfat xfs btrfs pack_index)
net_targets=(tftp netboot_http mirror_replicate image_store)
for t in "${targets[@]}" "${net_targets[@]}"; do mkdir -p "$corpus/$t"; done
corpus=$(cd "$corpus" && pwd) # each target runs in its crate's directory

seed() { # seed TARGET NAME SIZE_KIB mkfs-command... (the image path is appended)
  local target=$1 name=$2 kib=$3; shift 3
  local img="$corpus/seed-$name.img"
  [ -f "$corpus/$target/$name" ] && return 0
  head -c $((kib * 1024)) /dev/urandom > "$img"
  if "$@" "$img" >/dev/null 2>&1; then
    # The first MiB: superblocks, group descriptors, boot sectors, first
    # tree nodes; the fuzzer mutates from there.
    head -c 1048576 "$img" > "$corpus/$target/$name"
  else
    echo "fuzz: could not make a $name seed (skipped)" >&2
  fi
  rm -f "$img"
}
seed ext ext2 1024 mkfs.ext2 -q -F -b 1024
seed ext ext4 1024 mkfs.ext4 -q -F -b 1024 -O metadata_csum,64bit
seed fat fat12 1024 mkfs.vfat
seed fat fat16 8192 mkfs.vfat -F 16 -s 1
seed fat fat32 40960 mkfs.vfat -F 32
seed swap swap 1024 mkswap
seed ntfs ntfs 2048 mkfs.ntfs -F -f -q
seed exfat exfat 4096 mkfs.exfat
seed xfs xfs 307200 mkfs.xfs -q -f -K
seed btrfs btrfs 131072 mkfs.btrfs -q -f -K
if [ ! -f "$corpus/layout/gpt" ]; then
  for label in gpt dos; do
    head -c 1048576 /dev/urandom > "$corpus/layout/$label"
    printf 'label: %s\nsize=256K\nsize=256K\n' "$label" | sfdisk -q "$corpus/layout/$label" >/dev/null
  done
fi

status=0
fuzz() { # fuzz DIR TARGET MAX_LEN
  local dir=$1 target=$2 max_len=$3 log
  log=$(mktemp)
  if (cd "$root/$dir" && LIFELINE_FUZZ_SEEDS="$corpus/$target" cargo +"$NIGHTLY" fuzz run "$target" "$corpus/$target" -- \
      -max_total_time="$secs" -max_len="$max_len" -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    echo "test result: ok. 1 passed; 0 failed; fuzz target $target, ${runs:-?} inputs in ${secs} s"
  else
    tail -n 40 "$log"
    echo "test result: FAILED. 0 passed; 1 failed; fuzz target $target (artifacts in $dir/artifacts/$target)"
    status=1
  fi
  rm -f "$log"
}
for target in "${targets[@]}"; do fuzz imaging/disk/fuzz "$target" 1048577; done
# Network messages are small: a TFTP packet, a request head (16 KiB at
# most), a few requests.
for target in "${net_targets[@]}"; do fuzz receiver/fuzz "$target" 65536; done
exit $status
