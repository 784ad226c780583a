#!/usr/bin/env python3
"""What Lifeline's benchmarks share (bench/*.py import it; Python 3.11
standard library only):

- logging, short commands (`sh`), polling (`wait_until`), free ports;
- processes: `Proc` (a long-running child with a log file, stopped with its
  descendants), /proc readers (I/O, CPU, peak memory, loopback bytes,
  listening sockets, how busy the machine is);
- Lifeline's daemons as the benchmarks start them (`machine_add`,
  `start_receiver`, `agent_cmd`, `agent_status`) and the rsync daemon the
  peers use (`start_rsyncd`);
- environments: `Cleanup` (undo stack), `Netns`, scratch filesystems on loop
  devices (`Scratch`: a sparse ext4 image; `Loop`: an image with partitions;
  `Mount`);
- trees: `scan_tree`, `compare_trees`, `wait_identical`, `tree_bytes`;
- data generators from fixed seeds: `rand_file`, `text_file`, `sparse_ish`,
  and the test disk's content (`disk_content`, which bench/imaging-disk.sh
  runs as `python3 bench/lifeline_bench.py disk-content ROOT ESP`);
- the side-by-side tables: `ratio`, `fmt_bytes`, `fmt_mb`, `percentile`.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
# The Lifeline binaries: target/release, or LIFELINE_BIN (a directory holding
# lifeline-agent and lifeline-receiver, e.g. another worktree's build).
BIN = Path(os.environ["LIFELINE_BIN"]) if os.environ.get("LIFELINE_BIN") else REPO / "target" / "release"
MACHINE = "bench"  # Lifeline's machine name at the receiver
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
MB = 1_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:8.1f}s] {msg}", file=sys.stderr, flush=True)


def now() -> float:
    return time.monotonic()


def sh(*cmd: str | Path, check: bool = True, env: dict | None = None,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Runs a short command; its output is captured (text) and shown only on
    failure (RuntimeError, with check)."""
    args = [str(c) for c in cmd]
    p = subprocess.run(args, stdin=None if input is not None else subprocess.DEVNULL, input=input,
                       capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-2000:]}")
    return p


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Polls `pred` until true; returns the seconds waited, raises TimeoutError."""
    start = now()
    while True:
        if pred():
            return now() - start
        if now() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_lines(path: Path, pattern: str) -> list[str]:
    """The lines of a log file matching the regex `pattern`, without colours."""
    if not path.exists():
        return []
    rx = re.compile(pattern)
    return [ANSI.sub("", line).strip() for line in path.read_text(errors="replace").splitlines()
            if rx.search(ANSI.sub("", line))]


# ---------------------------------------------------------------- /proc readers


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io: a process's I/O, including that of its children it has
    reaped (the kernel adds a reaped child's counters to its parent's)."""
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        k, v = line.split(":")
        out[k] = int(v)
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return (utime + stime + cutime + cstime) / CLK_TCK


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """Pids of all living descendants of `pid` (scans /proc: this kernel has
    no /proc/PID/task/TID/children)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        parent[int(d)] = int(stat[stat.rindex(")") + 2:].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def lo_bytes(pid: int) -> int:
    """Bytes sent on the loopback of the network namespace that `pid` is in.
    On lo every byte is transmitted once (and received once), so this counts
    both directions, TCP/IP headers included."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[8])
    raise RuntimeError("no lo in the namespace")


def tcp_listening(pid: int, port: int) -> bool:
    """Whether something in `pid`'s network namespace listens on 127.0.0.1:port."""
    want = f"0100007F:{port:04X}"
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            return True
    return False


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPU time not idle over `interval` seconds."""
    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(f), f[3] + f[4]  # total, idle + iowait

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


# ---------------------------------------------------------------- processes


class Proc:
    """A long-running child process with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], logfile: Path, registry: list["Proc"]) -> None:
        self.name, self.logfile = name, logfile
        self._out = open(logfile, "ab")
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.pid = self.p.pid
        self.registry = registry
        registry.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL; also ends the descendants it leaves behind
        (by pid, only those of this process)."""
        kids = descendants(self.pid) if self.alive() else []
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout:.0f} s: killing it")
                self.p.kill()
                self.p.wait()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._out.close()
        if self in self.registry:
            self.registry.remove(self)


def wait_listening(proc: Proc, port: int, timeout: float) -> None:
    """Waits until `proc` (or another process of its network namespace)
    listens on 127.0.0.1:port; raises if it exits first."""
    wait_until(lambda: tcp_listening(proc.pid, port) or not proc.alive(), timeout, proc.name)
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited: see {proc.logfile}")


# ---------------------------------------------------------------- Lifeline's daemons


def machine_add(bin_dir: Path, store: Path, creds: Path, machine: str = MACHINE) -> None:
    """Registers `machine` at the receiver's store; its token and the CA go to `creds`."""
    sh(bin_dir / "lifeline-receiver", "machine", "add", machine, "--store", store, "--out", creds)


def start_receiver(bin_dir: Path, store: Path, port: int, logfile: Path, procs: list[Proc],
                   prefix: list[str] | None = None, timeout: float = 20, extra: list[str] | None = None) -> Proc:
    """`lifeline-receiver` on 127.0.0.1:port (behind `prefix`, e.g. a
    namespace's) with `extra` arguments (e.g. `--without-history`), once it
    listens."""
    cmd = (prefix or []) + [str(bin_dir / "lifeline-receiver"), "--listen", f"127.0.0.1:{port}", "--store", str(store),
                            *(extra or [])]
    p = Proc("lifeline-receiver", cmd, logfile, procs)
    wait_listening(p, port, timeout)
    return p


def agent_cmd(bin_dir: Path, port: int, creds: Path, src: Path, state: Path, *extra: str,
              machine: str = MACHINE) -> list[str]:
    """`lifeline-agent run` watching `src` for the receiver on 127.0.0.1:port."""
    return [str(bin_dir / "lifeline-agent"), "run", "--receiver", f"https://127.0.0.1:{port}",
            "--token-file", str(creds / f"{machine}.token"), "--ca", str(creds / "ca.crt"),
            "--watch", str(src), "--state-dir", str(state), "--interval-ms", "5", *extra]


def agent_status(bin_dir: Path, state: Path) -> dict | None:
    """`lifeline-agent status --json` of the agent whose state directory is
    `state`; None if it does not answer."""
    p = subprocess.run([str(bin_dir / "lifeline-agent"), "status", "--control", str(state / "control.sock"),
                        "--json"], capture_output=True, text=True)
    return json.loads(p.stdout) if p.returncode == 0 else None


def start_rsyncd(work: Path, dst: Path, port: int, procs: list[Proc], prefix: list[str] | None = None,
                 timeout: float = 20) -> Proc:
    """An rsync daemon on 127.0.0.1:port with one module `bench` writing to
    `dst` (config, pid and log files in `work`), once it listens."""
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"pid file = {work}/rsyncd.pid\n"
        "use chroot = no\nuid = root\ngid = root\n"
        f"log file = {work}/rsyncd.log\n"
        "[bench]\n"
        f"    path = {dst}\n"
        "    read only = no\n")
    cmd = (prefix or []) + ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                            "--address=127.0.0.1"]
    p = Proc("rsync-daemon", cmd, work / "rsyncd.out", procs)
    wait_listening(p, port, timeout)
    return p


# ---------------------------------------------------------------- environments


class Cleanup:
    """A stack of undo actions, run in reverse order even after errors."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> Callable[[], None]:
        self.actions.append((what, fn))
        return fn

    def now(self, fn: Callable[[], None]) -> None:
        """Runs one pushed action now and forgets it."""
        for i in range(len(self.actions) - 1, -1, -1):
            if self.actions[i][1] is fn:
                del self.actions[i]
                break
        fn()

    def run(self) -> None:
        while self.actions:
            what, fn = self.actions.pop()
            try:
                fn()
            except Exception as e:  # keep undoing the rest
                log(f"cleanup: {what} failed: {e}")


def umount_retrying(at: Path, tries: int = 20, pause: float = 0.25) -> None:
    """umount, retried while busy, lazily at last."""
    for _ in range(tries):
        if sh("umount", at, check=False).returncode == 0:
            return
        time.sleep(pause)
    sh("umount", "-l", at)


class Scratch:
    """A sparse ext4 image on its own loop device, mounted at `mnt`."""

    def __init__(self, base: Path, name: str, size_gib: int, cleanup: Cleanup) -> None:
        self.image = base / f"{name}.img"
        self.mnt = base / name
        self.mnt.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_gib * GIB)
        cleanup.push(f"remove {self.image}", lambda: self.image.unlink(missing_ok=True))
        sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.image)
        self.dev = sh("losetup", "-f", "--show", "--direct-io=on", self.image).stdout.strip()
        cleanup.push(f"detach {self.dev}", lambda: sh("losetup", "-d", self.dev))
        sh("mount", "-o", "noatime", self.dev, self.mnt)
        cleanup.push(f"unmount {self.mnt}", self.unmount)

    def unmount(self) -> None:
        umount_retrying(self.mnt, 20, 0.5)


class Loop:
    """An image file on a loop device with partitions (-P), direct I/O."""

    def __init__(self, image: Path, cleanup: Cleanup, read_only: bool, direct_io: bool = True) -> None:
        args = ["losetup", "--find", "--show", "-P"]
        if direct_io:
            args.append("--direct-io=on")
        if read_only:
            args.append("-r")
        self.dev = sh(*args, image).stdout.strip()
        self.cleanup = cleanup
        self._undo = cleanup.push(f"detach {self.dev}", self._detach)
        self.add_parts()

    def add_parts(self) -> None:
        # Kernels without a GPT parser (CONFIG_EFI_PARTITION unset) see no
        # partitions even with -P: partx adds them from user space (libblkid);
        # where the kernel found them, partx -a just fails harmlessly.
        sh("partx", "-a", self.dev, check=False)
        self.wait_parts()

    def part(self, n: int) -> str:
        return f"{self.dev}p{n}"

    def parts(self) -> list[int]:
        base = Path(self.dev).name
        return sorted(int(p.name[len(base) + 1:]) for p in Path("/sys/block", base).glob(f"{base}p*"))

    def wait_parts(self, timeout: float = 5) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(Path(self.part(n)).exists() for n in self.parts()):
                return
            time.sleep(0.05)

    def reread(self) -> None:
        """Makes the kernel read the partition table again (after a raw restore)."""
        sh("blockdev", "--rereadpt", self.dev, check=False)
        if not self.parts():
            self.add_parts()
        else:
            sh("partx", "-u", self.dev, check=False)
            self.wait_parts()

    def _detach(self) -> None:
        for _ in range(20):
            if sh("losetup", "-d", self.dev, check=False).returncode == 0:
                return
            time.sleep(0.25)
        sh("losetup", "-d", self.dev)

    def detach(self) -> None:
        self.cleanup.now(self._undo)


class Mount:
    def __init__(self, dev: str, at: Path, cleanup: Cleanup, opts: str = "ro") -> None:
        at.mkdir(parents=True, exist_ok=True)
        self.at = at
        sh("mount", "-o", opts, dev, at)
        self.cleanup = cleanup
        self._undo = cleanup.push(f"unmount {at}", self._umount)

    def _umount(self) -> None:
        umount_retrying(self.at)

    def unmount(self) -> None:
        self.cleanup.now(self._undo)


class Netns:
    """A network namespace of our own with only its loopback up; the tool's
    sender and receiver both run in it, so its lo carries only their traffic."""

    def __init__(self, name: str, cleanup: Cleanup) -> None:
        self.name = name
        sh("ip", "netns", "add", name)
        cleanup.push(f"delete netns {name}", lambda: sh("ip", "netns", "del", name))
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def link(self, up: bool) -> None:
        """Cuts (or restores) the namespace's only network: its loopback,
        which carries the tool's sender-receiver traffic."""
        sh("ip", "-n", self.name, "link", "set", "lo", "up" if up else "down")

    def prefix(self) -> list[str]:
        # Enter only the network namespace (not `ip netns exec`, which also
        # makes a new mount namespace, changing mount ids the agent resolves).
        return ["nsenter", f"--net=/run/netns/{self.name}", "--"]


# ---------------------------------------------------------------- trees


def scan_tree(root: Path, meta: bool = False) -> dict[str, tuple] | None:
    """rel path -> (kind, size or symlink target or None); with `meta` also
    the mode (and owner, except for symlinks) and a device's number. None if
    root is missing."""
    if not root.is_dir():
        return None
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel)) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False) if meta else None
                if e.is_symlink():
                    out[r] = ("symlink", os.readlink(e.path)) + ((st.st_mode,) if st else ())
                    continue
                if e.is_dir(follow_symlinks=False):
                    out[r] = ("dir", None)
                    stack.append(r)
                elif e.is_file(follow_symlinks=False):
                    out[r] = ("file", e.stat(follow_symlinks=False).st_size)
                else:  # device nodes, fifos, sockets: never opened
                    out[r] = ("other", st.st_rdev if st else None)
                if st:
                    out[r] += (st.st_mode, st.st_uid, st.st_gid)
    return out


def same_bytes(a: Path, b: Path) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(MIB), fb.read(MIB)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def compare_trees(src: Path, dst: Path, limit: int = 10, meta: bool = False) -> list[str]:
    """Differences between a source tree and its copy (names, kinds, sizes,
    symlink targets, file contents; with `meta` also modes, owners and
    device numbers); [] when identical. Times are never compared."""
    try:
        s, d = scan_tree(src, meta), scan_tree(dst, meta)
    except FileNotFoundError as e:
        # A file vanished while listed (a tool's temporary file): not yet
        # settled, which is a difference for now.
        return [f"changing while compared: {e.filename}"]
    if s is None:
        return [f"source {src} missing"]
    if d is None:
        return [f"target {dst} missing"]
    diffs = []
    for rel, (kind, *val) in s.items():
        other = d.get(rel)
        if other is None:
            diffs.append(f"missing at target: {rel}")
        elif other[0] != kind:
            diffs.append(f"{rel}: {kind} at source, {other[0]} at target")
        elif list(other[1:]) != val:
            shown = (val[0], other[1]) if not meta else (tuple(val), other[1:])
            diffs.append(f"{rel}: {kind} differs ({shown[0]!r} vs {shown[1]!r})")
        if len(diffs) >= limit:
            return diffs
    for rel in d.keys() - s.keys():
        diffs.append(f"only at target: {rel}")
        if len(diffs) >= limit:
            return diffs
    if diffs:
        return diffs
    for rel, (kind, *_) in s.items():
        if kind == "file" and not same_bytes(src / rel, dst / rel):
            diffs.append(f"content differs: {rel}")
            if len(diffs) >= limit:
                break
    return diffs


def wait_identical(src: Path, dst: Path, timeout: float, interval: float = 0.1) -> float:
    last: list[str] = []

    def ok() -> bool:
        nonlocal last
        last = compare_trees(src, dst, limit=3)
        return not last

    try:
        return wait_until(ok, timeout, f"{dst} to equal {src}", interval)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; still: {last}") from None


def tree_bytes(path: Path) -> int:
    """Sum of the apparent sizes of the files under path (or of one file)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except FileNotFoundError:
                pass
    return total


# ---------------------------------------------------------------- data generators
#
# Everything from random.Random with fixed seeds: two runs write the same
# bytes. The chunk sizes do not change the bytes (randbytes of a multiple of
# 4 bytes consumes whole 32-bit outputs).


def rand_file(path: Path, size: int, rng: random.Random) -> None:
    """`size` incompressible bytes (its directory made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            f.write(rng.randbytes(n))
            left -= n


WORDS = ("the backup of a disk image keeps every used block once and skips free space so that restore "
         "writes what was there before log entry error warning info request response user system kernel "
         "service started stopped volume partition filesystem table index node extent bitmap chunk").split()


def text_file(path: Path, size: int, rng: random.Random, log_style: bool) -> None:
    """Compressible text from a small vocabulary: sentences, or log lines."""
    out, n, i = [], 0, 0
    while n < size:
        if log_style:
            line = f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} host " \
                   f"{rng.choice(WORDS)}[{rng.randrange(1, 40000)}]: " + " ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
        else:
            line = " ".join(rng.choices(WORDS, k=rng.randint(6, 18))).capitalize() + "."
        out.append(line)
        n += len(line) + 1
        i += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out)[:size])


VOCAB_RNG = random.Random(7)
VOCAB = ["".join(VOCAB_RNG.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(VOCAB_RNG.randint(2, 11)))
         for _ in range(5000)]


def vocab_text_bytes(rng: random.Random, size: int, log_style: bool) -> bytes:
    out, n, t = [], 0, 1767225600 + rng.randrange(10_000_000)
    while n < size:
        words = rng.choices(VOCAB, k=rng.randint(4, 18))
        if log_style:
            t += rng.randint(0, 5)
            line = f"2026-{t % 12 + 1:02d}-{t % 28 + 1:02d}T{t // 3600 % 24:02d}:{t // 60 % 60:02d}:{t % 60:02d} host " \
                   f"{rng.choice(VOCAB)}[{rng.randint(100, 99999)}]: {' '.join(words)}\n"
        else:
            line = " ".join(words).capitalize() + ".\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def vocab_text_file(path: Path, size: int, rng: random.Random, log_style: bool = False) -> None:
    """Text from a 5,000-word made-up vocabulary, 1 MiB at a time: the test
    disk's documents and logs (less compressible than `text_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        while size:
            n = min(size, MIB)
            f.write(vocab_text_bytes(rng, n, log_style))
            size -= n


def sparse_ish(path: Path, size: int, rng: random.Random, density: int = 8) -> None:
    """A 'VM image': 4 KiB blocks, one in `density` random, the others zero
    (written as real zeros, not holes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    zero = bytes(4096)
    with open(path, "wb") as f:
        for _ in range(size // 4096):
            f.write(rng.randbytes(4096) if rng.randrange(density) == 0 else zero)


def disk_content(root: Path, esp: Path) -> None:
    """The mixed data of bench/imaging-disk.sh's test disk on its root
    filesystem (mounted at `root`), its ESP's files (in the directory `esp`),
    then 1 GiB of garbage written to the root's free space and deleted."""
    rng = random.Random(2026)
    home = root / "home" / "user"
    # ~200 MB of incompressible "photos" and archives, 1-6 MiB each.
    for i in range(64):
        rand_file(home / "Pictures" / f"IMG_{1000 + i}.jpg", rng.randint(MIB, 6 * MIB), rng)
    for i in range(8):
        rand_file(home / "Downloads" / f"archive-{i}.tar.gz", rng.randint(64 << 10, 4 * MIB), rng)
    # ~120 MB of text: documents and logs (compressible), many small files too.
    for i in range(600):
        vocab_text_file(home / "Documents" / f"notes-{i // 100}" / f"note-{i:04d}.txt", rng.randint(256, 64 << 10),
                        rng)
    for i in range(40):
        vocab_text_file(home / "Documents" / "reports" / f"report-{i:03d}.txt", rng.randint(256 << 10, 2 * MIB), rng)
    for name in ("syslog", "syslog.1", "auth.log", "kern.log", "dpkg.log", "daemon.log"):
        vocab_text_file(root / "var" / "log" / name, rng.randint(2 * MIB, 10 * MIB), rng, log_style=True)
    for i in range(200):
        vocab_text_file(root / "srv" / "www" / f"page-{i:03d}.html", rng.randint(1 << 10, 32 << 10), rng)
    # ~120 MB of zero-heavy files.
    for name, size in (("vm-a.img", 48 * MIB), ("vm-b.img", 40 * MIB), ("swapfile-old", 32 * MIB)):
        sparse_ish(root / "var" / "lib" / "vm" / name, size, rng)

    # The ESP: a kernel and an initrd (random bytes), boot loader files.
    rand_file(esp / "EFI" / "debian" / "vmlinuz", 10 * MIB, rng)
    rand_file(esp / "EFI" / "debian" / "initrd.img", 24 * MIB, rng)
    rand_file(esp / "EFI" / "BOOT" / "BOOTX64.EFI", 900 << 10, rng)
    rand_file(esp / "EFI" / "debian" / "grubx64.efi", 2 * MIB, rng)
    vocab_text_file(esp / "EFI" / "debian" / "grub.cfg", 8 << 10, rng)
    vocab_text_file(esp / "loader" / "loader.conf", 200, rng)
    vocab_text_file(esp / "loader" / "entries" / "debian.conf", 400, rng)

    # 1 GiB of garbage in free space: written, flushed, deleted.
    g = root / "garbage"
    g.mkdir()
    for i in range(16):
        (vocab_text_file if i % 4 == 3 else rand_file)(g / f"g{i:02d}", 64 * MIB, rng)
    os.sync()
    for p in sorted(g.iterdir()):
        p.unlink()
    g.rmdir()
    os.sync()


# ---------------------------------------------------------------- tables


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ratio(a: float | None, b: float | None, inf: str = "∞") -> str:
    """a ÷ b for a side-by-side table: "—" without both figures, `inf` for
    something against nothing, 1.00 for nothing against nothing."""
    if a is None or b is None:
        return "—"
    if b == 0:
        return inf if a else "1.00"
    return f"{a / b:,.2f}"


def fmt_bytes(n: float) -> str:
    return f"{n / MIB:,.2f} MiB" if n >= MIB else f"{n / KIB:,.1f} KiB" if n >= KIB else f"{n:,.0f} B"


def fmt_mb(v: int | None) -> str:
    return "—" if v is None else f"{v / MB:,.1f}"


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "disk-content":
        disk_content(Path(argv[1]), Path(argv[2]))
        return 0
    print("usage: lifeline_bench.py disk-content ROOT ESP   (the test disk's data; see bench/imaging-disk.sh)\n\n"
          + (__doc__ or ""), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
