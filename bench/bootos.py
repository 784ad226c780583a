#!/usr/bin/env python3
"""Boot OS benchmark (issue 6): inside a qemu VM (TCG) on qemu's user
network, the Lifeline boot OS's unattended backup of a disk to the receiver
against `cat /dev/vda | nc` of the same disk over the same emulated link,
plus the boot OS's size and the time from power-on to the agent ready with
BIOS network boot through iPXE.

The disk: 512 MiB GPT, a 64 MiB FAT32 ESP and an ext4 filesystem holding
copies of /usr/share/doc, /usr/share/man, /usr/lib/python3.11, fonts and
firmware images (about 300 MB, a system disk's mix) over 200 MiB of random
data written and deleted first.

Run as root after `cargo build --workspace --bins` and the static agent
(scripts/test.sh builds both):

    python3 bench/bootos.py [--json OUT]

Prints one table; the target is Lifeline's rate of used data >= 0.8 x the raw
rate, while storing less.
"""
import argparse, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time

from lifeline_bench import free_port, sh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "debug")
AGENT = os.path.join(ROOT, "target/lifeline-bootos-agent/x86_64-unknown-linux-musl/release/lifeline-image")
MAC = "52:54:00:12:34:56"
PASSWORD = "bench-password"
DISK_MIB = 512
# What the ext4 filesystem holds: a system disk's mix (compressed man pages
# and changelogs, Python sources and bytecode, fonts, firmware images).
COPY = ["/usr/share/doc", "/usr/share/man", "/usr/lib/python3.11", "/usr/share/fonts", "/usr/share/qemu"]


def run(*args, input=None):
    return sh(*args, input=input).stdout


def make_disk(path, work):
    with open(path, "wb") as f:
        f.truncate(DISK_MIB << 20)
    # Partitions on loop devices of their own (offset, size): no partition
    # device nodes to wait for.
    esp, root = (1 << 20, 64 << 20), (65 << 20, (DISK_MIB - 66) << 20)
    run("sfdisk", "-q", path, input=f"label: gpt\nstart={esp[0] >> 9}, size={esp[1] >> 9}, type=U\n"
        f"start={root[0] >> 9}, size={root[1] >> 9}, type=L\n")
    part = lambda p: run("losetup", "-f", "--show", "-o", str(p[0]), "--sizelimit", str(p[1]), path).strip()
    l1 = part(esp)
    try:
        run("mkfs.vfat", "-F", "32", "-s", "1", "-n", "ESP", l1)
    finally:
        run("losetup", "-d", l1)
    loop = part(root)
    try:
        run("mkfs.ext4", "-q", "-F", loop)
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt, exist_ok=True)
        run("mount", loop, mnt)
        try:
            # Garbage in what becomes free space, then the files.
            with open(os.path.join(mnt, "garbage"), "wb") as g:
                for _ in range(200):
                    g.write(os.urandom(1 << 20))
            os.sync()
            os.remove(os.path.join(mnt, "garbage"))
            for d in COPY:
                if os.path.isdir(d):
                    dst = mnt + d
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    run("cp", "-a", d, dst)
            used = int(run("df", "--output=used", "-B1", mnt).split()[1])
        finally:
            run("umount", mnt)
        run("fsck.ext4", "-fn", loop)
    finally:
        run("losetup", "-d", loop)
    return used


# The emulated machine, the same for the raw copy and for Lifeline (set by
# --cpu and --smp): qemu's default CPU model (qemu64) has no SSSE3, SSE4,
# AES-NI or AVX, which every x86-64 PC of the last decade has, so software
# fallbacks run in the guest.
VM = []


class Qemu:
    def __init__(self, args):
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nographic", "-no-reboot", "-m", "512"] + VM + args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []

    def wait_line(self, pattern, timeout=600):
        rx = re.compile(pattern)
        while True:
            if time.monotonic() - self.t0 > timeout:
                raise SystemExit(f"no {pattern!r} within {timeout} s:\n" + "\n".join(self.lines[-40:]))
            raw = self.p.stdout.readline()
            if not raw:
                raise SystemExit(f"qemu ended before {pattern!r}:\n" + "\n".join(self.lines[-40:]))
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            if "FAILED" in line:
                raise SystemExit(line + "\n" + "\n".join(self.lines[-40:]))
            if rx.search(line):
                return time.monotonic() - self.t0, line

    def type(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def kill(self):
        self.p.kill()
        self.p.wait()


def raw_rate(media, disk, size):
    """cat /dev/vda | nc to a host socket: seconds for the whole disk."""
    port = free_port()
    srv = socket.socket()
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    got = {}

    def sink():
        c, _ = srv.accept()
        n, t0 = 0, None
        while n < size:
            b = c.recv(1 << 20)
            if not b:
                break
            t0 = t0 or time.monotonic()
            n += len(b)
        got["bytes"], got["secs"] = n, time.monotonic() - t0
        c.close()

    th = threading.Thread(target=sink)
    th.start()
    cmdline = open(os.path.join(media, "cmdline")).read().strip() + " lifeline.shell=1"
    vm = Qemu(["-kernel", os.path.join(media, "vmlinuz"), "-initrd", os.path.join(media, "initrd.img"),
               "-append", cmdline, "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
               "-drive", f"file={disk},if=virtio,format=raw"])
    vm.wait_line("starting a shell")
    time.sleep(1)
    vm.type(f"cat /dev/vda | nc 10.0.2.2 {port}; echo RAW-DONE\n")
    th.join(timeout=900)
    vm.kill()
    srv.close()
    if got.get("bytes") != size:
        raise SystemExit(f"raw transfer got {got.get('bytes')} of {size} bytes")
    return got["secs"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--cpu", help="qemu CPU model for the VM (default: qemu's, qemu64); e.g. max")
    ap.add_argument("--smp", type=int, default=1, help="virtual CPUs (default 1)")
    a = ap.parse_args()
    VM.extend((["-cpu", a.cpu] if a.cpu else []) + ["-smp", str(a.smp)])
    for f in (os.path.join(BIN, "lifeline-receiver"), AGENT):
        if not os.path.exists(f):
            raise SystemExit(f"{f} is missing: run scripts/test.sh (or cargo build --workspace --bins and the static agent) first")
    work = tempfile.mkdtemp(prefix="lifeline-bench-bootos-")
    rx = None
    try:
        disk = os.path.join(work, "disk.img")
        used = make_disk(disk, work)
        size = DISK_MIB << 20
        store = os.path.join(work, "store")
        tls, http = free_port(), free_port()
        log = open(os.path.join(work, "receiver.log"), "w")
        rx = subprocess.Popen([os.path.join(BIN, "lifeline-receiver"), "--store", store, "--listen", f"127.0.0.1:{tls}",
                               "--http-listen", f"127.0.0.1:{http}"], stdout=log, stderr=log)
        time.sleep(1.5)
        rcli = lambda *args: run(os.path.join(BIN, "lifeline-receiver"), "--store", store, *args)
        rcli("machine", "add", "pc1", "--mac", MAC, "--out", os.path.join(work, "creds"))
        pw = os.path.join(work, "pw")
        open(pw, "w").write(PASSWORD + "\n")
        make = lambda: rcli("bootos", "make", "pc1", "--arm", "--receiver-url", f"https://10.0.2.2:{tls}", "--mode", "backup",
                            "--agent", AGENT, "--password-file", pw)
        make()
        media1 = os.path.join(store, "boot", "1")
        initrd_size = os.path.getsize(os.path.join(media1, "initrd.img"))
        kernel_size = os.path.getsize(os.path.join(media1, "vmlinuz"))

        # Lifeline: network boot through iPXE, unattended backup.
        vm = Qemu(["-boot", "n", "-netdev", f"user,id=n0,bootfile=http://10.0.2.2:{http}/boot.ipxe",
                   "-device", "virtio-net-pci,netdev=n0", "-drive", f"file={disk},if=virtio,format=raw"])
        ready, _ = vm.wait_line(r"^lifeline: network ")
        start, _ = vm.wait_line(r"^lifeline-backup: disk ")
        end, ok = vm.wait_line(r"^LIFELINE-BACKUP-OK")
        vm.kill()
        backup_secs = end - start
        jobs = rcli("jobs", "--machine", "pc1")
        images = rcli("images", "--machine", "pc1")
        m = re.search(r"read (\d+) B, stored (\d+) B new", images)
        image_bytes, stored = int(m.group(1)), int(m.group(2))

        # The peer: the same boot OS, a shell, cat | nc over the same link.
        make()
        raw_secs = raw_rate(os.path.join(store, "boot", "2"), disk, size)

        raw_rate_bps = size / raw_secs
        ll_rate = image_bytes / backup_secs
        res = {
            "disk_bytes": size, "fs_used_bytes": used, "image_bytes": image_bytes, "stored_bytes": stored,
            "initrd_bytes": initrd_size, "kernel_bytes": kernel_size,
            "power_on_to_agent_ready_s": round(ready, 2),
            "raw_secs": round(raw_secs, 2), "raw_MBps": round(raw_rate_bps / 1e6, 2),
            "lifeline_secs": round(backup_secs, 2), "lifeline_used_MBps": round(ll_rate / 1e6, 2),
            "rate_ratio": round(ll_rate / raw_rate_bps, 2),
            "wall_ratio": round(backup_secs / raw_secs, 2),
            "bytes_ratio": round(stored / size, 3),
            "vm": " ".join(VM),
        }
        print(f"| disk | used (fs) | raw cat|nc | Lifeline backup | used-data rate ÷ raw rate (≥ 0.8) | wall ÷ raw | stored ÷ raw |")
        print(f"|---|---|---|---|---|---|---|")
        print(f"| {size >> 20} MiB | {used / 1e6:.0f} MB | {raw_secs:.1f} s ({raw_rate_bps / 1e6:.2f} MB/s) | "
              f"{backup_secs:.1f} s ({ll_rate / 1e6:.2f} MB/s of {image_bytes / 1e6:.0f} MB used, {stored / 1e6:.0f} MB stored) | "
              f"{res['rate_ratio']} | {res['wall_ratio']} | {res['bytes_ratio']} |")
        print(f"VM: qemu TCG, {' '.join(VM)}")
        print(f"boot OS: kernel {kernel_size / 1e6:.1f} MB, initramfs {initrd_size / 1e6:.2f} MB (target <= 30 MB); "
              f"power-on to agent ready (network up) with BIOS network boot: {ready:.1f} s (target <= 15 s)")
        if a.json:
            json.dump(res, open(a.json, "w"), indent=1)
    finally:
        if rx:
            rx.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
