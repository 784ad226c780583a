#!/usr/bin/env python3
"""Real-time replication benchmark: Lifeline against lsyncd + rsync.

One run sets up both tools on the same inputs, runs each workload for one tool
after the other (never both at once), checks that every mirror ended identical
to its source, and prints a markdown table: Lifeline, lsyncd+rsync and their
ratio per metric.

    python3 bench/realtime.py [--quick] [--only a,b,...] [--json out.json]

Run as root from anywhere; see bench/README.md for what is measured and how.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lifeline_bench import (BIN, GIB, MACHINE, MIB, REPO, Cleanup, Netns, Proc, Scratch, agent_cmd,
                            agent_status, compare_trees, cpu_busy, descendants, drop_caches, lo_bytes, log,
                            log_lines, machine_add, now, percentile, proc_cpu_s, proc_io, ratio, sh, start_receiver,
                            start_rsyncd, vm_hwm_kib, wait_identical, wait_until)


# ---------------------------------------------------------------- machine


def foreign_agents(ours: list["Proc"]) -> list[str]:
    """Replication processes on the machine that this run did not start
    (another agent's eBPF programs slow every syscall of every process)."""
    mine = {p.pid for p in ours}
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) not in mine:
            try:
                comm = Path(f"/proc/{d}/comm").read_text().strip()
                state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if comm in ("lifeline-agent", "lsyncd") and state != "Z":
                out.append(f"{comm}[{d}]")
    return out


def quiet_check(procs: list["Proc"], wait_s: float) -> dict:
    """Measures how busy the machine is before a measurement (1 s sample);
    with wait_s > 0, first waits up to that long for it to be quiet."""
    deadline = now() + wait_s
    while True:
        busy, others = cpu_busy(), foreign_agents(procs)
        if (busy < 0.15 and not others) or now() >= deadline:
            return {"cpu_busy_before": round(busy, 3), "foreign_agents": others}
        log(f"  waiting for a quiet machine: CPU {busy:.0%} busy, other agents {others}")
        time.sleep(4)


# ---------------------------------------------------------------- tools


class Tool:
    """One replication tool: a receiving end and a sender. Each workload has a
    fresh source `<src fs>/<workload>/src` and a fresh work directory
    `<dst fs>/<workload>/` (target, logs, state) on another filesystem, so the
    receiver's and the tools' own writes never land on the watched one."""

    name = "?"
    key = "?"
    port = 0

    def __init__(self, src_fs: Scratch, dst_fs: Scratch, netns: Netns, procs: list[Proc]) -> None:
        self.src_fs, self.dst_fs, self.netns, self.procs = src_fs, dst_fs, netns, procs
        self.receiver: Proc | None = None
        self.sender: Proc | None = None
        self.wdir = self.src = Path("/nonexistent")
        self.starts = 0

    # -- per workload
    def new_workload(self, wl: str) -> Path:
        self.wdir = self.dst_fs.mnt / wl
        self.wdir.mkdir()
        self.src = self.src_fs.mnt / wl / "src"
        self.src.mkdir(parents=True)
        self.starts = 0
        return self.src

    def end_workload(self, keep_logs: Path | None = None) -> None:
        self.stop()
        if keep_logs:
            dest = keep_logs / f"{self.wdir.name}-{self.key}"
            dest.mkdir(parents=True, exist_ok=True)
            for f in self.wdir.iterdir():
                if f.is_file():
                    shutil.copy2(f, dest / f.name)
        sh("rm", "-rf", self.wdir, self.src.parent)

    def target_root(self) -> Path:
        raise NotImplementedError

    def target_path(self, p: Path) -> Path:
        return self.target_root() / Path(p).relative_to(self.src)

    # -- processes
    def start_receiver(self) -> None:
        raise NotImplementedError

    def start_sender(self) -> None:
        raise NotImplementedError

    def stop_sender(self) -> None:
        if self.sender:
            self.sender.stop()
            self.sender = None

    def stop_receiver(self) -> None:
        if self.receiver:
            self.receiver.stop()
            self.receiver = None

    def start(self) -> None:
        self.start_receiver()
        self.start_sender()

    def stop(self) -> None:
        self.stop_sender()
        self.stop_receiver()

    def wait_ready(self, timeout: float = 600) -> float:
        """Waits until the sender has finished its start-up sync and a fresh
        canary file written at the top arrived at the target (end to end)."""
        start = now()
        self._wait_started(timeout)
        canary = self.src / f".bench-canary-{self.starts}"
        data = os.urandom(16).hex().encode()
        canary.write_bytes(data)
        t = self.target_path(canary)
        try:
            wait_until(lambda: file_has(t, data), 60, f"{self.name}: canary {canary.name} at the target", 0.002)
        except TimeoutError as e:
            got = t.read_bytes()[:64] if t.is_file() else "nothing"
            raise TimeoutError(f"{e}: source holds {data!r}, target holds {got!r}") from None
        return now() - start

    def _wait_started(self, timeout: float) -> None:
        raise NotImplementedError

    def wait_idle(self, timeout: float = 600) -> None:
        raise NotImplementedError

    # -- measurements
    def sender_pid(self) -> int:
        assert self.sender and self.sender.alive(), f"{self.name} sender is not running"
        return self.sender.pid

    def receiver_pid(self) -> int:
        assert self.receiver and self.receiver.alive(), f"{self.name} receiver is not running"
        return self.receiver.pid

    def counters(self) -> dict[str, float]:
        """Cumulative counters of the running sender and receiver."""
        s, r = proc_io(self.sender_pid()), proc_io(self.receiver_pid())
        return {
            "sender_read_bytes": s["read_bytes"],
            "sender_rchar": s["rchar"],
            "receiver_read_bytes": r["read_bytes"],
            "receiver_write_bytes": r["write_bytes"],
            "net_bytes": lo_bytes(self.receiver_pid()),
            "sender_cpu_s": proc_cpu_s(self.sender_pid()),
            "receiver_cpu_s": proc_cpu_s(self.receiver_pid()),
        }

    def peak_mem_kib(self) -> int:
        return vm_hwm_kib(self.sender_pid())

    def problems(self) -> list[str]:
        """Errors and warnings the tool reported during this workload."""
        return []


class Lifeline(Tool):
    name, key, port = "Lifeline", "lifeline", 7700
    bin = BIN  # replaced by a private copy (others may rebuild target/ meanwhile)
    receiver_args: list[str] = []  # --receiver-arg

    def target_root(self) -> Path:
        return self.wdir / "store" / "mirror" / MACHINE / str(self.src).lstrip("/")

    def start_receiver(self) -> None:
        store = self.wdir / "store"
        store.mkdir(exist_ok=True)
        self.receiver = start_receiver(self.bin, store, self.port, self.wdir / "receiver.log", self.procs,
                                       self.netns.prefix(), extra=self.receiver_args)

    def start_sender(self) -> None:
        self.starts += 1
        self.state = self.wdir / "state"
        creds = self.wdir / "credentials"
        token = creds / f"{MACHINE}.token"
        if not token.exists():
            machine_add(self.bin, self.wdir / "store", creds)
        cmd = self.netns.prefix() + agent_cmd(self.bin, self.port, creds, self.src, self.state)
        self.sender = Proc("lifeline-agent", cmd, self.wdir / "agent.log", self.procs)

    def status(self) -> dict | None:
        if self.sender and not self.sender.alive():
            tail = log_lines(self.sender.logfile, ".")[-3:]
            raise RuntimeError(f"lifeline-agent exited unexpectedly (code {self.sender.p.returncode}); "
                               f"log ends: {tail}")
        return agent_status(self.bin, self.state)

    def _wait_started(self, timeout: float) -> None:
        def synced() -> bool:
            if not self.sender.alive():
                raise RuntimeError(f"lifeline-agent exited: see {self.sender.logfile}")
            s = self.status()
            return bool(s and s["connected"] and s["initial_sync_done"] and s["queue_depth"] == 0)

        wait_until(synced, timeout, "lifeline-agent initial sync", 0.02)

    def wait_idle(self, timeout: float = 600) -> None:
        streak = 0

        def idle() -> bool:
            nonlocal streak
            s = self.status()
            streak = streak + 1 if s and s["queue_depth"] == 0 else 0
            return streak >= 3

        wait_until(idle, timeout, "lifeline-agent queue to drain", 0.05)

    def problems(self) -> list[str]:
        out = []
        if self.sender and self.sender.alive():
            s = self.status() or {}
            if s.get("last_error"):
                out.append(f"agent last_error: {s['last_error']}")
            if s.get("kernel_lost"):
                out.append(f"agent kernel_lost={s['kernel_lost']} (reconciliations={s.get('reconciliations')})")
        for f in ("agent.log", "receiver.log"):
            out += [f"{f}: {l}" for l in log_lines(self.wdir / f, r"\b(WARN|ERROR|panicked)\b")]
        return out

    def counters(self) -> dict[str, float]:
        c = super().counters()
        s = self.status() or {}
        c["agent_bytes_sent"] = s.get("bytes_sent", 0)
        c["agent_ops_sent"] = s.get("ops_sent", 0)
        c["kernel_events"] = s.get("kernel_events", 0)
        c["kernel_lost"] = s.get("kernel_lost", 0)
        return c


class Lsyncd(Tool):
    name, key, port = "lsyncd+rsync", "lsyncd", 8730

    def target_root(self) -> Path:
        return self.wdir / "dst"

    def start_receiver(self) -> None:
        dst = self.wdir / "dst"
        dst.mkdir(exist_ok=True)
        self.receiver = start_rsyncd(self.wdir, dst, self.port, self.procs, self.netns.prefix())

    def start_sender(self) -> None:
        self.starts += 1
        self.lsyncd_log = self.wdir / f"lsyncd-{self.starts}.log"
        conf = self.wdir / f"lsyncd-{self.starts}.conf.lua"
        conf.write_text(f"""settings {{
    logfile = "{self.lsyncd_log}",
    statusFile = "{self.wdir}/lsyncd.status",
    nodaemon = true,
    inotifyMode = "CloseWrite or Modify",
}}
sync {{
    default.rsync,
    source = "{self.src}",
    target = "rsync://127.0.0.1:{self.port}/bench/",
    delay = 0,
}}
""")
        cmd = self.netns.prefix() + ["lsyncd", str(conf)]
        self.sender = Proc("lsyncd", cmd, self.wdir / f"lsyncd-{self.starts}.out", self.procs)

    def _wait_started(self, timeout: float) -> None:
        def started() -> bool:
            if not self.sender.alive():
                raise RuntimeError(f"lsyncd exited: see {self.sender.logfile}")
            return bool(log_lines(self.lsyncd_log, r"Startup of .* finished"))

        wait_until(started, timeout, "lsyncd start-up sync", 0.02)

    def wait_idle(self, timeout: float = 600) -> None:
        """Idle: neither lsyncd nor the rsync daemon has a child for 0.3 s
        (children must also be reaped for their I/O to count)."""
        streak = 0

        def idle() -> bool:
            nonlocal streak
            busy = descendants(self.sender_pid()) or descendants(self.receiver_pid())
            streak = 0 if busy else streak + 1
            return streak >= 6

        wait_until(idle, timeout, "lsyncd and rsync to finish", 0.05)

    def problems(self) -> list[str]:
        out = []
        for i in range(1, self.starts + 1):
            f = self.wdir / f"lsyncd-{i}.log"
            out += [f"{f.name}: {l}" for l in log_lines(f, r"Error|error|exitcode: [1-9]|Fail")]
        out += [f"rsyncd.log: {l}" for l in log_lines(self.wdir / "rsyncd.log", r"error|ERROR")]
        return out


# ---------------------------------------------------------------- workloads
#
# Each takes (tool, cfg) with the receiver already running and returns a dict
# of metrics; the runner then waits for the tool to be idle and compares the
# whole source tree with the target.


class Poller(threading.Thread):
    """Checks pending items every `interval` s; an item is (key, check(), t_written)
    and done when check() is true; its lag is the time of that check minus
    t_written."""

    def __init__(self, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pending: dict[object, tuple[Callable[[], bool], float]] = {}
        self.lags: dict[object, float] = {}
        self.lock = threading.Lock()
        self.stopped = False

    def add(self, key: object, check: Callable[[], bool], t_written: float) -> None:
        with self.lock:
            self.pending[key] = (check, t_written)

    def run(self) -> None:
        while not self.stopped:
            with self.lock:
                items = list(self.pending.items())
            for key, (check, t_w) in items:
                if check():
                    t = now()
                    with self.lock:
                        self.lags[key] = t - t_w
                        del self.pending[key]
            time.sleep(self.interval)

    def drain(self, timeout: float) -> int:
        """Waits for all pending items; returns how many never completed."""
        try:
            wait_until(lambda: not self.pending, timeout, "all writes at the target", 0.01)
        except TimeoutError:
            pass
        self.stopped = True
        self.join()
        return len(self.pending)


def file_has(path: Path, data: bytes, offset: int | None = None) -> bool:
    """Whether the file holds `data` (whole content, or at `offset`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if offset is None:
            return os.read(fd, len(data) + 1) == data
        return os.pread(fd, len(data), offset) == data
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, flags: int = os.O_CREAT | os.O_WRONLY | os.O_EXCL,
               offset: int | None = None) -> float:
    """Writes with one write(2)/pwrite(2); returns the time it returned."""
    fd = os.open(path, flags, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        t = now()
    finally:
        os.close(fd)
    return t


def lag_stats(lags: list[float], prefix: str = "lag") -> dict[str, float]:
    ms = [x * 1000 for x in lags]
    return {f"{prefix}_p50_ms": percentile(ms, 50), f"{prefix}_p99_ms": percentile(ms, 99),
            f"{prefix}_max_ms": max(ms) if ms else math.nan, f"{prefix}_samples": len(ms)}


def wl_a(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(a) small files at 20 per second; lag from write(2) returning to
    identical content at the target, checked every 1 ms."""
    d = tool.src / "a"
    d.mkdir()
    tool.start_sender()
    tool.wait_ready()
    rng = random.Random(0xA)
    n = 20 * cfg.a_seconds
    poller = Poller()
    poller.start()
    c0 = tool.counters()
    start = now() + 0.05
    for i in range(n):
        data = f"file {i}\n".encode() + rng.randbytes(1024)
        path = d / f"f{i:05d}"
        t_next = start + i / 20
        time.sleep(max(0.0, t_next - now()))
        t_w = write_file(path, data)
        target = tool.target_path(path)
        poller.add(i, lambda target=target, data=data: file_has(target, data), t_w)
    missing = poller.drain(60)
    tool.wait_idle()
    c1 = tool.counters()
    r = lag_stats(list(poller.lags.values()))
    r["lags_ms"] = sorted(round(x * 1000, 2) for x in poller.lags.values())
    r.update(files=n, missing_after_60s=missing, net_bytes=c1["net_bytes"] - c0["net_bytes"],
             bytes_written=n * 1024)
    return r


def wl_b(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(b) a 1 GiB file, then 100 4-KiB overwrites at random (4 KiB aligned)
    offsets, one every 100 ms."""
    big = tool.src / "big.dat"
    rng = random.Random(0xB)
    with open(big, "wb") as f:
        for _ in range(cfg.b_size // (4 * MIB)):
            f.write(rng.randbytes(4 * MIB))
    tool.start_sender()
    t_init = tool.wait_ready()
    t_init += wait_identical(tool.src, tool.target_root(), 900, 0.5)
    tool.wait_idle()
    drop_caches()
    c0 = tool.counters()
    blocks = rng.sample(range(cfg.b_size // 4096), cfg.b_writes)
    target = tool.target_path(big)
    # One pass opens the target once and reads every pending offset (lsyncd
    # replaces the whole file by a rename, Lifeline writes in place).
    pending: dict[int, tuple[int, bytes, float]] = {}
    lags: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() or pending:
            with lock:
                items = list(pending.items())
            if items:
                try:
                    fd = os.open(target, os.O_RDONLY)
                except OSError:
                    fd = -1
                if fd >= 0:
                    try:
                        for k, (off, data, t_w) in items:
                            if os.pread(fd, 4096, off) == data:
                                t = now()
                                with lock:
                                    lags.append(t - t_w)
                                    del pending[k]
                    finally:
                        os.close(fd)
            if stop.is_set() and now() > deadline:
                return
            time.sleep(0.001)

    deadline = math.inf
    th = threading.Thread(target=poll, daemon=True)
    th.start()
    start = now() + 0.05
    for i, blk in enumerate(blocks):
        data = rng.randbytes(4096)
        time.sleep(max(0.0, start + i * 0.1 - now()))
        t_w = write_file(big, data, os.O_WRONLY, blk * 4096)
        with lock:
            pending[i] = (blk * 4096, data, t_w)
    deadline = now() + 300
    stop.set()
    th.join()
    missing = len(pending)
    tool.wait_idle()
    c1 = tool.counters()
    changed = cfg.b_writes * 4096
    r = lag_stats(lags)
    r["lags_ms"] = sorted(round(x * 1000, 2) for x in lags)
    r.update(
        initial_copy_s=t_init,
        writes=cfg.b_writes, missing_after_300s=missing, bytes_changed=changed,
        sender_disk_read_per_changed=(c1["sender_read_bytes"] - c0["sender_read_bytes"]) / changed,
        sender_rchar_per_changed=(c1["sender_rchar"] - c0["sender_rchar"]) / changed,
        net_per_changed=(c1["net_bytes"] - c0["net_bytes"]) / changed,
        receiver_disk_read_per_changed=(c1["receiver_read_bytes"] - c0["receiver_read_bytes"]) / changed,
        receiver_write_per_changed=(c1["receiver_write_bytes"] - c0["receiver_write_bytes"]) / changed,
        cpu_s=(c1["sender_cpu_s"] - c0["sender_cpu_s"]) + (c1["receiver_cpu_s"] - c0["receiver_cpu_s"]),
    )
    r["raw_counters"] = {k: c1[k] - c0[k] for k in c1}
    return r


def wl_c(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(c) a burst of 20,000 1-KiB files in 200 directories; time from the last
    write returning until the target tree is complete and identical."""
    tool.start_sender()
    tool.wait_ready()
    rng = random.Random(0xC)
    files = []
    for di in range(200):
        for fi in range(cfg.c_files // 200):
            rel = f"c/d{di:03d}/f{fi:03d}"
            files.append((rel, f"{rel}\n".encode().ljust(16) + rng.randbytes(1024 - 16)))
    (tool.src / "c").mkdir()
    c0 = tool.counters()
    t_first = now()
    made = set()
    for rel, data in files:
        parent = rel.rsplit("/", 1)[0]
        if parent not in made:
            (tool.src / parent).mkdir()
            made.add(parent)
        t_last = write_file(tool.src / rel, data)
    # Cheap check first: each file present with its size, in write order,
    # stopping at the first one missing (the next pass resumes there).
    troot = tool.target_root()
    remaining = [(troot / rel, len(data)) for rel, data in files]
    i = 0
    deadline = now() + 600
    while i < len(remaining) and now() < deadline:
        while i < len(remaining):
            try:
                if os.stat(remaining[i][0]).st_size != remaining[i][1]:
                    break
            except OSError:
                break
            i += 1
        else:
            break
        time.sleep(0.001)
    t_done = now()
    # Then every byte; if anything still differs, keep comparing.
    if compare_trees(tool.src, troot, 3):
        wait_identical(tool.src, troot, max(1.0, deadline - now()), 0.05)
        t_done = now()
    tool.wait_idle()
    c1 = tool.counters()
    return {
        "files": len(files), "writer_s": t_last - t_first, "complete_after_last_write_s": t_done - t_last,
        "complete_after_first_write_s": t_done - t_first,
        "peak_mem_kib": tool.peak_mem_kib(), "net_bytes": c1["net_bytes"] - c0["net_bytes"],
        "cpu_s": (c1["sender_cpu_s"] - c0["sender_cpu_s"]) + (c1["receiver_cpu_s"] - c0["receiver_cpu_s"]),
    }


def make_dirs(root: Path, n: int) -> None:
    """n directories: 100 at the top, the rest spread evenly below them."""
    per = n // 100 - 1
    for t in range(100):
        top = root / f"t{t:02d}"
        top.mkdir()
        for s in range(per):
            (top / f"s{s:04d}").mkdir()


def wl_d(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(d) start-up: a tree of N directories exists and is mirrored before the
    sender starts; from its start until a file written at the top right after
    is at the target."""
    make_dirs(tool.src, cfg.d_dirs)
    # Mirror the tree with the tool itself, then stop its sender.
    t = now()
    tool.start_sender()
    tool.wait_ready(1200)
    wait_identical(tool.src, tool.target_root(), 1200, 1.0)
    tool.wait_idle()
    first_copy = now() - t
    tool.stop_sender()
    data = b"new file after start\n" + os.urandom(32)
    path = tool.src / "new-file.txt"
    target = tool.target_path(path)
    t0 = now()
    tool.start_sender()
    write_file(path, data)
    wait_until(lambda: file_has(target, data), 600, "the new file at the target", 0.001)
    visible = now() - t0
    ready = tool.wait_ready(1200)
    tool.wait_idle()
    return {"dirs": cfg.d_dirs, "initial_copy_s": first_copy, "new_file_visible_s": visible,
            "start_sync_done_s": visible + ready, "peak_mem_kib": tool.peak_mem_kib()}


def wl_e(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(e) writer slowdown: dd of 200,000 4-KiB writes into one file with no
    tool running (A) and with the tool running (B), alternated. Each round
    also runs the same dd into a file on the target filesystem, which the tool
    does not watch, with and without the tool: what a running tool costs
    every other writer on the machine."""
    watched = tool.src / "e.dat"
    unwatched = tool.wdir / "e-unwatched.dat"

    def dd(f: Path) -> tuple[float, float]:
        """Wall seconds and CPU seconds (user + system) of one dd."""
        f.unlink(missing_ok=True)
        os.sync()
        time.sleep(0.2)
        t = now()
        p = subprocess.Popen(["dd", "if=/dev/zero", f"of={f}", "bs=4k", f"count={cfg.e_writes}", "conv=notrunc",
                              "status=none"])
        _, status, ru = os.wait4(p.pid, 0)
        wall = now() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"dd exited {p.returncode}")
        return wall, ru.ru_utime + ru.ru_stime

    runs: dict[str, list[tuple[float, float]]] = {"A": [], "B": [], "A_other_fs": [], "B_other_fs": []}
    catch_up = []
    for _ in range(cfg.e_rounds):
        runs["A"].append(dd(watched))
        runs["A_other_fs"].append(dd(unwatched))
        watched.unlink(missing_ok=True)
        tool.start_sender()
        tool.wait_ready()
        runs["B_other_fs"].append(dd(unwatched))
        runs["B"].append(dd(watched))
        t = now()
        wait_identical(tool.src, tool.target_root(), 600, 0.2)
        catch_up.append(now() - t)
        tool.wait_idle()
        tool.stop_sender()
    unwatched.unlink(missing_ok=True)
    # Leave the sender running for the runner's final comparison.
    tool.start_sender()
    tool.wait_ready()

    def med(k: str, i: int) -> float:
        return statistics.median(x[i] for x in runs[k])

    r = {f"{k}_{what}_s": [round(x[i], 4) for x in v] for k, v in runs.items() for i, what in ((0, "wall"), (1, "cpu"))}
    r.update(
        median_no_tool_s=med("A", 0), median_with_tool_s=med("B", 0),
        slowdown_pct=(med("B", 0) / med("A", 0) - 1) * 100,
        cpu_slowdown_pct=(med("B", 1) / med("A", 1) - 1) * 100,
        other_fs_slowdown_pct=(med("B_other_fs", 0) / med("A_other_fs", 0) - 1) * 100,
        replicated_after_dd_s=catch_up, median_replicated_after_dd_s=statistics.median(catch_up))
    return r


def wl_f(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(f) 50 same-size 4-KiB in-place overwrites of one file within one
    second; after 5 s, is the last one at the target?"""
    f = tool.src / "f.dat"
    rng = random.Random(0xF)
    f.write_bytes(rng.randbytes(4096))
    tool.start_sender()
    tool.wait_ready()
    wait_identical(tool.src, tool.target_root(), 60)
    tool.wait_idle()
    t = now()
    for i in range(50):
        data = rng.randbytes(4096)
        write_file(f, data, os.O_WRONLY, 0)
        time.sleep(max(0.0, t + (i + 1) * 0.018 - now()))
    span = now() - t
    time.sleep(5)
    ok = file_has(tool.target_path(f), data)
    return {"overwrites": 50, "span_s": span, "final_content": "ok" if ok else "lost"}


def wl_g(tool: Tool, cfg: argparse.Namespace) -> dict:
    """(g) 100 writes/s (new 1 KiB files and appends to 20 logs) while the
    network is cut for 30 s (the loopback of the tool's namespace set down);
    the writes stop when it returns. Time from the link's return until the
    target is identical."""
    d = tool.src / "g"
    d.mkdir()
    logs = [d / f"log{i:02d}" for i in range(20)]
    for p in logs:
        p.write_bytes(b"")
    tool.start_sender()
    tool.wait_ready()
    rng = random.Random(0x6)
    stop = threading.Event()
    count = [0]

    def writer() -> None:
        start, i = now(), 0
        while not stop.is_set():
            time.sleep(max(0.0, start + i / 100 - now()))
            if i % 2:
                with open(rng.choice(logs), "ab") as f:
                    f.write(f"line {i}\n".encode() + rng.randbytes(100))
            else:
                write_file(d / f"f{i:06d}", rng.randbytes(1024))
            i += 1
        count[0] = i

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(3)
    tool.netns.link(False)
    try:
        time.sleep(cfg.g_cut)
    finally:
        stop.set()
        th.join()
        tool.netns.link(True)
    t_up = now()
    wait_identical(tool.src, tool.target_root(), 120, interval=0.02)
    complete = now() - t_up
    return {"writes": count[0], "cut_s": cfg.g_cut, "complete_after_link_up_s": complete}


WORKLOADS: dict[str, tuple[str, Callable[[Tool, argparse.Namespace], dict]]] = {
    "a": ("small files, 20/s", wl_a),
    "b": ("1 GiB file, 4 KiB overwrites", wl_b),
    "c": ("burst of 20,000 files", wl_c),
    "d": ("start-up on a big tree", wl_d),
    "e": ("writer slowdown", wl_e),
    "f": ("same-size overwrites within 1 s", wl_f),
    "g": ("network cut under 100 writes/s", wl_g),
}


# ---------------------------------------------------------------- report


def fmt(v: object, unit: str) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.1f} s"
    if unit == "x":
        return f"{v:,.2f}×" if v < 100 else f"{v:,.0f}×"
    if unit == "MiB":
        return f"{v / MIB:,.1f} MiB"
    if unit == "KiB":
        return f"{v / 1024:,.1f} MiB"
    if unit == "%":
        return f"{v:+.1f} %"
    return f"{v}"


ROWS = [  # workload, metric key, label, unit
    ("a", "lag_p50_ms", "lag p50", "ms"),
    ("a", "lag_p99_ms", "lag p99", "ms"),
    ("a", "lag_max_ms", "lag max", "ms"),
    ("a", "peak_mem_kib", "sender peak memory (VmHWM)", "KiB"),
    ("b", "lag_p50_ms", "lag p50", "ms"),
    ("b", "lag_p99_ms", "lag p99", "ms"),
    ("b", "lag_max_ms", "lag max", "ms"),
    ("b", "sender_disk_read_per_changed", "sender bytes read from disk / byte changed", "x"),
    ("b", "net_per_changed", "bytes on the wire / byte changed", "x"),
    ("b", "receiver_disk_read_per_changed", "receiver bytes read from disk / byte changed", "x"),
    ("b", "receiver_write_per_changed", "receiver bytes written / byte changed", "x"),
    ("b", "cpu_s", "CPU time, sender + receiver", "s"),
    ("b", "initial_copy_s", "initial copy of the 1 GiB file", "s"),
    ("b", "peak_mem_kib", "sender peak memory (VmHWM, includes the initial copy)", "KiB"),
    ("c", "complete_after_last_write_s", "last write → target complete", "s"),
    ("c", "complete_after_first_write_s", "first write → target complete", "s"),
    ("c", "writer_s", "writer time for the burst", "s"),
    ("c", "peak_mem_kib", "sender peak memory (VmHWM)", "KiB"),
    ("c", "net_bytes", "bytes on the wire", "MiB"),
    ("c", "cpu_s", "CPU time, sender + receiver", "s"),
    ("d", "new_file_visible_s", "start → new file at target", "s"),
    ("d", "start_sync_done_s", "start → start-up sync done", "s"),
    ("d", "peak_mem_kib", "sender peak memory (VmHWM)", "KiB"),
    ("d", "initial_copy_s", "first copy of the tree (not start-up)", "s"),
    ("e", "median_no_tool_s", "dd, no tool (median)", "s"),
    ("e", "median_with_tool_s", "dd, tool running (median)", "s"),
    ("e", "slowdown_pct", "writer slowdown (wall time)", "%"),
    ("e", "cpu_slowdown_pct", "writer slowdown (dd's own CPU time)", "%"),
    ("e", "other_fs_slowdown_pct", "slowdown of the same dd on an unwatched filesystem", "%"),
    ("e", "median_replicated_after_dd_s", "dd end → file at target (median)", "s"),
    ("f", "final_content", "final content after 5 s", ""),
    ("g", "complete_after_link_up_s", "link back → target complete", "s"),
    ("g", "writes", "writes during the run", ""),
]


def table(results: dict, tools: list[Tool], cfg: argparse.Namespace) -> tuple[str, list[dict]]:
    a_ = f"{cfg.a_seconds} s"
    titles = {"a": f"(a) small files 20/s for {a_}", "b": "(b) 1 GiB file, 100 × 4 KiB overwrites",
              "c": f"(c) burst of {cfg.c_files:,} files", "d": f"(d) start-up, {cfg.d_dirs:,} dirs",
              "e": f"(e) {cfg.e_writes:,} × 4 KiB dd, {cfg.e_rounds} rounds A/B",
              "f": "(f) 50 same-size overwrites in 1 s",
              "g": f"(g) {cfg.g_cut} s network cut, 100 writes/s"}
    ll, ls = tools[0].key, tools[1].key
    lines = ["| workload | metric | Lifeline | lsyncd+rsync | lsyncd ÷ Lifeline |", "|---|---|---|---|---|"]
    rows = []
    order = [(wl, key, label, unit) for wl, key, label, unit in ROWS]
    for wl in WORKLOADS:  # each workload's rows, then whether its mirrors ended identical
        last = max((i for i, r in enumerate(order) if r[0] == wl), default=None)
        if last is not None:
            order.insert(last + 1, (wl, "identical", "mirror identical at the end", "bool"))
    for wl, key, label, unit in order:
        if wl not in results:
            continue
        if unit == "bool":
            cells = ["yes" if results[wl].get(t.key, {}).get("identical") else "**NO**" for t in tools]
            lines.append(f"| {titles[wl]} | {label} | {cells[0]} | {cells[1]} | — |")
            continue
        a = results[wl].get(ll, {}).get(key)
        b = results[wl].get(ls, {}).get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and unit != "%":
            r = ratio(b, a, inf="∞ (Lifeline 0)")
        elif unit == "%" and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            r = ratio(b, a) if a > 0 and b > 0 else "—"
        else:
            r = "—"
        lines.append(f"| {titles[wl]} | {label} | {fmt(a, unit)} | {fmt(b, unit)} | {r} |")
        rows.append({"workload": wl, "metric": key, "label": label, "unit": unit, "lifeline": a, "lsyncd": b,
                     "ratio": r})
    return "\n".join(lines), rows


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs: (a) 10 s, (d) 10,000 dirs, (e) 3 rounds")
    ap.add_argument("--only", default="", help="comma-separated workloads to run (a,b,c,d,e,f); default all")
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--logs", type=Path, help="keep every tool's logs and configs here, per workload")
    ap.add_argument("--tools", default="lifeline,lsyncd",
                    help="tools to run (default lifeline,lsyncd); one alone prints a one-column table")
    ap.add_argument("--skip-build", action="store_true",
                    help="don't run scripts/setup.sh and cargo build (binaries must already be built)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="before each measurement wait up to S seconds for the CPU to be <15%% busy with no "
                         "other lifeline-agent/lsyncd running (default 0: just record how busy it was)")
    ap.add_argument("--receiver-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for lifeline-receiver (repeatable), e.g. "
                         "--receiver-arg=--without-history to measure what history costs")
    ap.add_argument("--bin", type=Path, default=None, metavar="DIR",
                    help="take lifeline-agent and lifeline-receiver from DIR (default: target/release, or "
                         "$LIFELINE_BIN); copied to a private directory at the start")
    ap.add_argument("--image-gib", type=int, default=8, help="size of each sparse scratch image (default 8)")
    cfg = ap.parse_args()
    cfg.only = [w for w in cfg.only.split(",") if w] or list(WORKLOADS)
    for w in cfg.only:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {','.join(WORKLOADS)}")
    cfg.a_seconds = 10 if cfg.quick else 30
    cfg.b_size, cfg.b_writes = GIB, 100
    cfg.c_files = 20_000
    cfg.d_dirs = 10_000 if cfg.quick else 100_000
    cfg.e_writes, cfg.e_rounds = 200_000, (3 if cfg.quick else 5)
    cfg.g_cut = 10 if cfg.quick else 30
    if cfg.bin:
        global BIN
        BIN = cfg.bin.resolve()
    return cfg


def preflight(cfg: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: the agent loads eBPF programs, and the benchmark mounts filesystems")
    if not cfg.skip_build:
        log("scripts/setup.sh, then cargo build --release --bins")
        subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, check=True)
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=REPO, check=True)
    for exe in (BIN / "lifeline-agent", BIN / "lifeline-receiver"):
        if not exe.exists():
            sys.exit(f"{exe} is missing: run cargo build --release --bins")
    for tool in ("lsyncd", "rsync", "nsenter", "ip", "losetup", "mkfs.ext4", "dd"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/setup.sh")
    others = foreign_agents([])
    if others:
        log(f"note: other replication processes are running ({', '.join(others)}): their eBPF "
            "programs or CPU use can disturb the numbers (see --wait-quiet)")


def versions() -> dict:
    def first(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            return (p.stdout or p.stderr).splitlines()[0].strip()
        except Exception as e:
            return str(e)

    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    built = {exe: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((BIN / exe).stat().st_mtime))
             for exe in ("lifeline-agent", "lifeline-receiver")}
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "lifeline_commit": git.stdout.strip(),
            "lifeline_binaries": str(BIN), "lifeline_binaries_built": built,
            "lsyncd": first(["lsyncd", "--version"]), "rsync": first(["rsync", "--version"]),
            "python": platform.python_version()}


def main() -> int:
    cfg = parse_args()
    preflight(cfg)
    sys.setswitchinterval(0.0005)  # let the poller threads run promptly
    cleanup = Cleanup()
    procs: list[Proc] = []
    interrupted = False

    def on_signal(signum, frame):  # Ctrl-C and kill: unwind through finally
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    results: dict[str, dict[str, dict]] = {}
    tools: list[Tool] = []
    run_versions: dict = {}
    try:
        base = Path(tempfile.mkdtemp(prefix="llbench."))
        cleanup.push(f"remove {base}", lambda: shutil.rmtree(base, ignore_errors=True))
        # A private copy of the binaries: others may rebuild target/ during the run.
        (base / "bin").mkdir()
        for exe in ("lifeline-agent", "lifeline-receiver"):
            shutil.copy2(BIN / exe, base / "bin" / exe)
        Lifeline.bin = base / "bin"
        Lifeline.receiver_args = list(cfg.receiver_arg)
        if cfg.receiver_arg:
            log(f"lifeline-receiver with {' '.join(cfg.receiver_arg)}")
        run_versions = versions()
        log(f"Lifeline {run_versions['lifeline_commit']} (binaries built {run_versions['lifeline_binaries_built']})")
        # inotify: lsyncd watches every directory (100,000 in (d)).
        watches = Path("/proc/sys/fs/inotify/max_user_watches")
        old = watches.read_text().strip()
        if int(old) < 1_048_576:
            watches.write_text("1048576\n")
            cleanup.push("restore max_user_watches", lambda: watches.write_text(old + "\n"))
            log(f"raised fs.inotify.max_user_watches {old} -> 1048576 for lsyncd (restored at the end)")
        for cls in (Lifeline, Lsyncd):
            if cls.key not in cfg.tools.split(","):
                continue
            src_fs = Scratch(base, f"{cls.key}-src", cfg.image_gib, cleanup)
            dst_fs = Scratch(base, f"{cls.key}-dst", cfg.image_gib, cleanup)
            netns = Netns(f"llb{os.getpid()}-{cls.key[:2]}", cleanup)
            tools.append(cls(src_fs, dst_fs, netns, procs))
            log(f"{cls.name}: source ext4 on {src_fs.dev} at {src_fs.mnt}, target ext4 on {dst_fs.dev} at "
                f"{dst_fs.mnt}, netns {netns.name}")
        for wl in cfg.only:
            title, fn = WORKLOADS[wl]
            results[wl] = {}
            for tool in tools:
                log(f"({wl}) {title}: {tool.name}")
                tool.new_workload(wl)
                r: dict = {}
                noise = quiet_check(procs, cfg.wait_quiet)
                try:
                    tool.start_receiver()
                    r = fn(tool, cfg)
                    if tool.sender is None:
                        tool.start_sender()
                        tool.wait_ready()
                    tool.wait_idle()
                    r.setdefault("peak_mem_kib", tool.peak_mem_kib())
                    diffs = compare_trees(tool.src, tool.target_root())
                    r["identical"] = not diffs
                    if diffs:
                        r["differences"] = diffs
                        log(f"  {tool.name}: mirror differs: {diffs[:3]}")
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    r["error"] = f"{type(e).__name__}: {e}"
                    r["identical"] = False
                    log(f"  {tool.name} failed: {r['error']}")
                r["noise"] = noise
                r["problems"] = tool.problems()
                for p in r["problems"][:5]:
                    log(f"  {tool.name} reported: {p}")
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                         if k not in ("problems", "raw_counters", "differences", "lags_ms", "noise")}
                log(f"  {tool.name}: {shown}")
                results[wl][tool.key] = r
                tool.end_workload(cfg.logs)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        for p in list(procs):  # first, so nothing holds the mounts
            try:
                p.stop(5)
            except Exception as e:
                log(f"cleanup: stopping {p.name} failed: {e}")
        cleanup.run()
    results = {wl: res for wl, res in results.items() if res}  # an interrupted workload has none
    if not results:
        return 130 if interrupted else 1
    if len(tools) == 2:
        md, rows = table(results, tools, cfg)
        sys.stderr.flush()
        print()
        print(f"Lifeline vs lsyncd+rsync ({'quick' if cfg.quick else 'full'} run; lower is better everywhere; "
              "ratio > 1: Lifeline better)")
        print()
        print(md, flush=True)
    else:  # --tools lifeline (or lsyncd) alone: one column
        t = tools[0]
        rows = []
        print(f"\n{t.name} alone ({'quick' if cfg.quick else 'full'} run"
              + (f", lifeline-receiver {' '.join(cfg.receiver_arg)}" if cfg.receiver_arg and t.key == "lifeline"
                 else "") + ")\n")
        print(f"| workload | metric | {t.name} |\n|---|---|---|")
        for wl, key, label, unit in ROWS + [(w, "identical", "mirror identical at the end", "bool") for w in WORKLOADS]:
            v = results.get(wl, {}).get(t.key, {}).get(key)
            if v is None:
                continue
            print(f"| ({wl}) | {label} | {('yes' if v else '**NO**') if unit == 'bool' else fmt(v, unit)} |")
            rows.append({"workload": wl, "metric": key, "label": label, "unit": unit, t.key: v})
        sys.stdout.flush()
    problems = {wl: {t: r.get("problems", []) + ([r["error"]] if "error" in r else [])
                     for t, r in res.items()} for wl, res in results.items()}
    noisy = [f"({wl}) {t}: CPU {r['noise']['cpu_busy_before']:.0%} busy before"
             + (f", other agents running: {', '.join(r['noise']['foreign_agents'])}"
                if r['noise']['foreign_agents'] else "")
             for wl, res in results.items() for t, r in res.items()
             if "noise" in r and (r["noise"]["cpu_busy_before"] >= 0.15 or r["noise"]["foreign_agents"])]
    if noisy:
        print("\nThe machine was not quiet for these measurements (numbers less reliable):")
        for n in noisy:
            print(f"- {n}")
    if any(p for res in problems.values() for p in res.values()):
        print("\nReported problems:")
        for wl, res in problems.items():
            for t, ps in res.items():
                for p in ps[:10]:
                    print(f"- ({wl}) {t}: {p}")
                if len(ps) > 10:
                    print(f"- ({wl}) {t}: ... {len(ps) - 10} more")
    if cfg.json:
        cfg.json.write_text(json.dumps({
            "mode": "quick" if cfg.quick else "full", "versions": run_versions,
            "config": {k: v for k, v in vars(cfg).items() if k not in ("json",)},
            "rows": rows, "results": results}, indent=1, default=str) + "\n")
        log(f"wrote {cfg.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
