#!/usr/bin/env python3
"""History benchmark (issue 15): what Lifeline's history costs, against
rsnapshot and Syncthing's staggered versioning on the same workload.

1. Storage: a seeded tree (text, incompressible binaries, a few large files),
   then rounds of typical changes (4 KiB pages written into large files, log
   appends, editor saves, whole-file rewrites, deletions, renames, new
   files). Lifeline (receiver + the real eBPF agent), rsnapshot (one snapshot
   per round) and Syncthing (A sendonly -> B receiveonly with staggered
   versioning) all follow the same source; after each round each is brought
   up to date and its history measured. Table: history bytes per byte
   changed, and the granularity each keeps.
2. Restore: a 10,000-file tree replicated, changed, then restored with
   `lifeline-receiver history restore --as-of <before>` (the tree, and the
   whole machine with --path /), timed (best of 3) and compared with what it
   was.
3. Cost on replication (--replication): bench/realtime.py --only a,c with and
   without --without-history, side by side.

    sudo python3 bench/history.py [--quick] [--json out.json] [--replication]

Python 3.11 standard library only; see bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from lifeline_bench import (BIN, KIB, MACHINE, MIB, REPO, Cleanup, Proc, Scratch, agent_cmd, agent_status,
                            compare_trees, free_port, log, log_lines, machine_add, now, ratio, same_bytes,
                            scan_tree, sh, start_receiver, text_file, tree_bytes, wait_identical, wait_until)

TEXT_SUFFIXES = (".txt", ".log", ".md", ".csv", ".conf")


def kind_of(rel: str) -> str:
    """'text' (compressible) or 'binary' (incompressible), by the name the
    generator gave it."""
    return "text" if rel.endswith(TEXT_SUFFIXES) else "binary"


def utc_instant(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def du(path: Path, apparent: bool, *more: Path) -> int:
    """`du -s -B1` (hard links counted once across all the paths given; the
    total of the first path's line when one path)."""
    args = ["du", "-s", "-B1", "-c"] + (["--apparent-size"] if apparent else []) + [str(path)] + [str(m) for m in more]
    out = sh(*args).stdout.strip().splitlines()
    return int(out[-1].split()[0])


def text_bytes(rng: random.Random, size: int, log_style: bool = False) -> bytes:
    words = ("the backup of a disk image keeps every used block once and skips free space so that restore "
             "writes what was there before log entry error warning info request response user system kernel "
             "service started stopped volume partition filesystem table index node extent bitmap chunk").split()
    out, n, i = [], 0, rng.randrange(1 << 20)
    while n < size:
        if log_style:
            line = f"2026-12-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i * 7) % 60:02d} host " \
                   f"{rng.choice(words)}[{rng.randrange(1, 40000)}]: " + " ".join(rng.choices(words, k=rng.randint(4, 14)))
        else:
            line = " ".join(rng.choices(words, k=rng.randint(6, 18))).capitalize() + "."
        out.append(line + "\n")
        n += len(line) + 1
        i += 1
    return "".join(out).encode()[:size]


# ---------------------------------------------------------------- the workload


class Changes:
    """What one round did: bytes written and bytes removed (files unlinked or
    replaced, tails truncated away), each split text/binary; the paths it
    touched (to compare them byte for byte at the targets)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.written = {"text": 0, "binary": 0}
        self.removed = {"text": 0, "binary": 0}
        self.file_changes = 0  # files created, written, replaced or removed (what per-file versioning sees)
        self.touched: set[str] = set()

    def total(self, k: str | None = None) -> int:
        if k:
            return self.written[k] + self.removed[k]
        return sum(self.written.values()) + sum(self.removed.values())


class Workload:
    """The seeded tree under `root` and the rounds of changes."""

    KINDS = ["pages", "appends", "editor", "rewrite", "delete", "rename", "new"]
    TITLES = {"pages": "4 KiB pages written in place into large files", "appends": "appends to logs",
              "editor": "editor saves (temp + rename over)", "rewrite": "whole-file rewrites in place (O_TRUNC)",
              "delete": "deletions (files and a directory)", "rename": "renames (files and a directory)",
              "new": "new files"}

    def __init__(self, root: Path, quick: bool) -> None:
        self.root, self.quick = root, quick
        self.rng = random.Random(15)
        self.round = 0
        self.writes: dict[str, int] = {}  # write(2) calls per file (pages, appends): the versions to expect

    def files(self) -> dict[str, int]:
        out = {}
        for d, dirs, files in os.walk(self.root):
            dirs[:] = [x for x in dirs if not x.startswith(".st")]
            for f in files:
                p = os.path.join(d, f)
                out[os.path.relpath(p, self.root)] = os.lstat(p).st_size
        return out

    def build(self) -> dict:
        rng, q = self.rng, self.quick
        n_text, n_bin, n_logs = (400, 60, 8) if q else (1700, 280, 20)
        big = {"data/db.sqlite.db": (16 if q else 64) * MIB, "data/vm.img": (16 if q else 100) * MIB}
        big_log = (8 if q else 50) * MIB
        for i in range(n_text):
            size = int(min(MIB, max(2 * KIB, rng.lognormvariate(math.log(8 * KIB), 1.3))))
            self.write_new(f"d{i % 40:02d}/note-{i:04d}.txt", text_bytes(rng, size))
        for i in range(n_bin):
            size = int(min(4 * MIB, max(4 * KIB, rng.lognormvariate(math.log(64 * KIB), 1.4))))
            self.write_new(f"d{i % 40:02d}/blob-{i:04d}.bin", rng.randbytes(size))
        for i in range(n_logs):
            self.write_new(f"var/log/app-{i:02d}.log", text_bytes(rng, rng.randint(64 * KIB, MIB), True))
        for rel, size in big.items():
            p = self.root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                for _ in range(size // (4 * MIB)):
                    f.write(rng.randbytes(4 * MIB))
        text_file(self.root / "var/log/big.log", big_log, rng, log_style=True)
        os.sync()
        fs = self.files()
        by = {"text": 0, "binary": 0}
        for rel, size in fs.items():
            by[kind_of(rel)] += size
        return {"files": len(fs), "bytes": sum(fs.values()), "text_bytes": by["text"], "binary_bytes": by["binary"]}

    def write_new(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def content(self, rel: str, size: int) -> bytes:
        return text_bytes(self.rng, size, rel.endswith(".log")) if kind_of(rel) == "text" else self.rng.randbytes(size)

    def pick(self, n: int, pred=lambda rel, size: True) -> list[str]:
        cands = sorted(rel for rel, size in self.files().items() if pred(rel, size))
        return self.rng.sample(cands, min(n, len(cands)))

    def apply(self, kind: str) -> Changes:
        """One round of one kind of change; returns what it changed."""
        self.round += 1
        c = Changes(kind)
        rng, q, root = self.rng, self.quick, self.root
        s = 1 if not q else 0.5
        if kind == "pages":  # a database and a VM image: 4 KiB pages at random aligned offsets, one pwrite each
            for rel, n in (("data/db.sqlite.db", int(256 * s)), ("data/vm.img", int(64 * s))):
                p = root / rel
                blocks = p.stat().st_size // 4096
                fd = os.open(p, os.O_WRONLY)
                try:
                    for _ in range(n):
                        os.pwrite(fd, rng.randbytes(4096), rng.randrange(blocks) * 4096)
                        self.writes[rel] = self.writes.get(rel, 0) + 1
                        c.written["binary"] += 4096
                    os.fsync(fd)
                finally:
                    os.close(fd)
                c.touched.add(rel)
                c.file_changes += 1
        elif kind == "appends":  # loggers: many small appends
            for rel in self.pick(int(10 * s) or 1, lambda r, z: r.endswith(".log")):
                with open(root / rel, "ab") as f:
                    for _ in range(rng.randint(10, 40)):
                        data = text_bytes(rng, rng.randint(100, 3000), True)
                        f.write(data)
                        f.flush()  # one write(2) per append
                        self.writes[rel] = self.writes.get(rel, 0) + 1
                        c.written["text"] += len(data)
                c.touched.add(rel)
                c.file_changes += 1
        elif kind == "editor":  # write .name.swp, fsync, rename over the old file
            for rel in self.pick(int(25 * s), lambda r, z: r.endswith(".txt") and z <= MIB):
                p = root / rel
                old = p.read_bytes()
                at = rng.randrange(len(old) + 1)
                new = old[:at] + text_bytes(rng, rng.randint(50, 2000)) + old[at + rng.randint(0, 500):]
                tmp = p.with_name(f".{p.name}.swp")
                with open(tmp, "wb") as f:
                    f.write(new)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, p)
                c.written["text"] += len(new)
                c.removed["text"] += len(old)
                c.touched.add(rel)
                c.file_changes += 1
        elif kind == "rewrite":  # open(O_TRUNC) and write new content of about the same size
            half = int(8 * s)
            for rel in self.pick(half, lambda r, z: z <= 4 * MIB and "data/" not in r and kind_of(r) == "text") + \
                    self.pick(half, lambda r, z: z <= 4 * MIB and "data/" not in r and kind_of(r) == "binary"):
                p = root / rel
                old = p.stat().st_size
                new = self.content(rel, max(1024, int(old * rng.uniform(0.8, 1.2))))
                with open(p, "wb") as f:
                    f.write(new)
                k = kind_of(rel)
                c.removed[k] += old
                c.written[k] += len(new)
                c.touched.add(rel)
                c.file_changes += 1
        elif kind == "delete":
            for rel in self.pick(int(25 * s), lambda r, z: "data/" not in r and "var/" not in r):
                p = root / rel
                c.removed[kind_of(rel)] += p.stat().st_size
                p.unlink()
                c.file_changes += 1
            dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.startswith("d"))
            victim = root / rng.choice(dirs)
            for d, _, files in os.walk(victim):
                for f in files:
                    p = Path(d) / f
                    c.removed[kind_of(f)] += p.stat().st_size
                    c.file_changes += 1
            shutil.rmtree(victim)
        elif kind == "rename":  # no byte changes: the names move
            for rel in self.pick(int(20 * s), lambda r, z: "data/" not in r and "var/" not in r):
                p = root / rel
                to_dir = root / f"d{rng.randrange(40):02d}"
                to_dir.mkdir(exist_ok=True)
                to = to_dir / f"renamed-{self.round}-{p.name}"
                os.rename(p, to)
                c.touched.add(str(to.relative_to(root)))
            dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.startswith("d")
                          and "-moved" not in d.name)
            if dirs:
                d = rng.choice(dirs)
                os.rename(root / d, root / f"{d}-moved{self.round}")
        elif kind == "new":
            for i in range(int(40 * s)):
                text = i % 4 != 0
                d = f"new-{self.round}" if i % 2 else f"d{rng.randrange(40):02d}"
                rel = f"{d}/created-{self.round}-{i:03d}" + (".txt" if text else ".bin")
                size = rng.randint(KIB, 64 * KIB) if text else rng.randint(16 * KIB, MIB)
                data = self.content(rel, size)
                self.write_new(rel, data)
                c.written[kind_of(rel)] += len(data)
                c.touched.add(rel)
                c.file_changes += 1
        else:
            raise ValueError(kind)
        c.touched = {t for t in c.touched if (root / t).exists()}
        return c


# ---------------------------------------------------------------- the tools


def scan(root: Path, skip=lambda rel: False) -> dict[str, tuple] | None:
    s = scan_tree(root)
    return None if s is None else {k: v for k, v in s.items() if not skip(k)}


def st_skip(rel: str) -> bool:
    first = rel.split("/", 1)[0]
    name = rel.rsplit("/", 1)[-1]
    return first in (".stfolder", ".stversions") or name.startswith(".syncthing.") or name == ".stignore"


def same_as(src: Path, dst: Path, touched: set[str], skip=lambda rel: False) -> list[str]:
    """Cheap equality: names, kinds and sizes of the whole tree, bytes of the
    files the round touched."""
    try:
        a, b = scan(src, skip), scan(dst, skip)
    except FileNotFoundError as e:
        return [f"changing: {e.filename}"]
    if a != b:
        if a is None or b is None:
            return ["missing tree"]
        d = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
        return [f"differs: {sorted(d)[:3]} ({len(d)} paths)"]
    return [f"content differs: {t}" for t in sorted(touched) if not same_bytes(src / t, dst / t)][:3]


class Tool:
    name = "?"
    key = "?"
    granularity = "?"

    def history_bytes(self) -> tuple[int, int]:
        """(apparent, allocated) bytes of history."""
        raise NotImplementedError

    def sync(self, touched: set[str], timeout: float) -> float:
        """Brings the tool up to date with the source; seconds it took."""
        raise NotImplementedError

    def extra(self) -> dict:
        return {}


class Lifeline(Tool):
    name, key = "Lifeline", "lifeline"
    granularity = "every op the agent sends (receiver clock, µs); writes it merges into one op are one version"

    def __init__(self, bin_dir: Path, src: Path, work: Path, procs: list[Proc], receiver_args: list[str]) -> None:
        self.bin, self.src, self.work, self.procs = bin_dir, src, work, procs
        self.store = work / "store"
        self.store.mkdir(parents=True)
        self.store.chmod(0o700)  # as the receiver wants its store (else it warns and tightens it)
        self.port = free_port()
        self.receiver = start_receiver(bin_dir, self.store, self.port, work / "receiver.log", procs,
                                       extra=receiver_args)
        creds = work / "credentials"
        machine_add(bin_dir, self.store, creds)
        self.state = work / "state"
        self.agent = Proc("lifeline-agent", agent_cmd(bin_dir, self.port, creds, src, self.state), work / "agent.log",
                          procs)
        self.mirror = self.store / "mirror" / MACHINE / str(src).lstrip("/")
        self.hist = self.store / "history" / MACHINE

    def status(self) -> dict:
        if not self.agent.alive():
            raise RuntimeError(f"lifeline-agent exited: {log_lines(self.agent.logfile, '.')[-3:]}")
        return agent_status(self.bin, self.state) or {}

    def wait_started(self, timeout: float = 600) -> None:
        def ok() -> bool:
            s = self.status()
            return bool(s.get("connected") and s.get("initial_sync_done") and s.get("queue_depth") == 0)

        wait_until(ok, timeout, "lifeline-agent initial sync", 0.05)

    def sync(self, touched: set[str], timeout: float) -> float:
        start, last = now(), ["?"]

        def ok() -> bool:
            if self.status().get("queue_depth") != 0:
                return False
            last[:] = same_as(self.src, self.mirror, touched)
            return not last

        try:
            wait_until(ok, timeout, "Lifeline's mirror to equal the source", 0.02)
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {last}") from None
        return now() - start

    def history_bytes(self) -> tuple[int, int]:
        if not self.hist.exists():
            return 0, 0
        return tree_bytes(self.hist), du(self.hist, False)

    def extra(self) -> dict:
        j, a = self.hist / "journal", self.hist / "attic"
        s = self.status()
        return {"journal_bytes": tree_bytes(j) if j.exists() else 0, "attic_bytes": tree_bytes(a) if a.exists() else 0,
                "attic_objects": sum(len(f) for _, _, f in os.walk(a)) if a.exists() else 0,
                "agent_kernel_lost": s.get("kernel_lost"), "agent_last_error": s.get("last_error")}

    def problems(self) -> list[str]:
        return [f"{f}: {l}" for f in ("agent.log", "receiver.log")
                for l in log_lines(self.work / f, r"\b(WARN|ERROR|panicked)\b")]


class Rsnapshot(Tool):
    name, key = "rsnapshot", "rsnapshot"
    granularity = "one point per run (here: one per round)"

    def __init__(self, src: Path, work: Path, keep: int) -> None:
        self.src, self.work = src, work
        self.root = work / "snapshots"
        self.conf = work / "rsnapshot.conf"
        work.mkdir(parents=True)
        lines = [("config_version", "1.2"), ("snapshot_root", f"{self.root}/"), ("no_create_root", "0"),
                 ("cmd_rsync", shutil.which("rsync") or "/usr/bin/rsync"), ("link_dest", "1"),
                 ("lockfile", f"{work}/rsnapshot.pid"), ("logfile", f"{work}/rsnapshot.log"),
                 ("verbose", "2"), ("loglevel", "3"), ("retain", f"alpha\t{keep}"),
                 ("backup", f"{src}/\tlocalhost/")]
        self.conf.write_text("".join(f"{k}\t{v}\n" for k, v in lines))
        sh("rsnapshot", "-c", self.conf, "configtest")
        self.runs = 0
        self.run_s: list[float] = []

    def newest(self) -> Path:
        return self.root / "alpha.0"

    def sync(self, touched: set[str], timeout: float) -> float:
        t = now()
        sh("rsnapshot", "-c", self.conf, "alpha")
        self.runs += 1
        dt = now() - t
        self.run_s.append(dt)
        copy = self.newest() / "localhost" / str(self.src).lstrip("/")
        d = same_as(self.src, copy, touched)
        if d:
            raise RuntimeError(f"rsnapshot's newest snapshot differs from the source: {d}")
        return dt

    def history_bytes(self) -> tuple[int, int]:
        if not self.newest().exists():
            return 0, 0
        # all snapshots (hard links counted once) minus the newest alone
        return (du(self.root, True) - du(self.newest(), True), du(self.root, False) - du(self.newest(), False))

    def extra(self) -> dict:
        return {"snapshots": self.runs, "run_s": [round(x, 2) for x in self.run_s]}


class Syncthing(Tool):
    name, key = "Syncthing", "syncthing"
    granularity = "one version per file per sync, thinned (staggered: 1 per 30 s in the first hour)"

    def __init__(self, src: Path, work: Path, procs: list[Proc]) -> None:
        self.src, self.work, self.procs = src, work, procs
        work.mkdir(parents=True)
        self.dst = work / "folder"
        self.dst.mkdir()
        (self.dst / ".stfolder").mkdir()
        (src / ".stfolder").mkdir(exist_ok=True)
        env = dict(os.environ, STNODEFAULTFOLDER="1", STNOUPGRADE="1")
        self.ids, self.homes, self.guis, self.keys, self.ports = {}, {}, {}, {}, {}
        for n in ("a", "b"):
            home = work / f"home-{n}"
            out = sh("syncthing", "generate", f"--home={home}", env=env)
            dev = next(l.split("Device ID:")[1].strip() for l in (out.stdout + out.stderr).splitlines()
                       if "Device ID:" in l)
            self.ids[n], self.homes[n] = dev, home
            self.guis[n], self.ports[n] = free_port(), free_port()
            self.keys[n] = os.urandom(16).hex()
        for n in ("a", "b"):
            self.homes[n].joinpath("config.xml").write_text(self.config(n))
        self.procs_ = {}
        for n in ("a", "b"):
            cmd = ["syncthing", "serve", f"--home={self.homes[n]}", "--no-browser", "--no-restart",
                   "--no-upgrade", "--no-default-folder", f"--gui-address=127.0.0.1:{self.guis[n]}",
                   f"--gui-apikey={self.keys[n]}"]
            self.procs_[n] = Proc(f"syncthing-{n}", cmd, work / f"syncthing-{n}.log", procs)
        self.versions = self.dst / ".stversions"

    def config(self, me: str) -> str:
        other = "b" if me == "a" else "a"
        path = self.src if me == "a" else self.dst
        ftype = "sendonly" if me == "a" else "receiveonly"
        versioning = """<versioning type="staggered">
            <param key="maxAge" val="31536000"></param>
            <cleanupIntervalS>3600</cleanupIntervalS>
            <fsPath></fsPath>
            <fsType>basic</fsType>
        </versioning>""" if me == "b" else "<versioning></versioning>"
        devs = "".join(f"""
    <device id="{self.ids[n]}" name="{n}" compression="metadata" introducer="false">
        <address>tcp://127.0.0.1:{self.ports[n]}</address>
        <autoAcceptFolders>false</autoAcceptFolders>
    </device>""" for n in ("a", "b"))
        return f"""<configuration version="36">
    <folder id="bench" label="bench" path="{path}" type="{ftype}" rescanIntervalS="10" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">
        <filesystemType>basic</filesystemType>
        <device id="{self.ids[me]}"></device>
        <device id="{self.ids[other]}"></device>
        <minDiskFree unit="%">0</minDiskFree>
        {versioning}
        <markerName>.stfolder</markerName>
    </folder>{devs}
    <gui enabled="true" tls="false" debugging="false">
        <address>127.0.0.1:{self.guis[me]}</address>
        <apikey>{self.keys[me]}</apikey>
    </gui>
    <options>
        <listenAddress>tcp://127.0.0.1:{self.ports[me]}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <startBrowser>false</startBrowser>
        <urAccepted>-1</urAccepted>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <setLowPriority>false</setLowPriority>
        <reconnectionIntervalS>1</reconnectionIntervalS>
        <minHomeDiskFree unit="%">0</minHomeDiskFree>
    </options>
</configuration>
"""

    def api(self, n: str, path: str) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self.guis[n]}{path}", headers={"X-API-Key": self.keys[n]})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def alive(self) -> None:
        for n, p in self.procs_.items():
            if not p.alive():
                raise RuntimeError(f"syncthing {n} exited: {log_lines(p.logfile, '.')[-3:]}")

    def wait_connected(self, timeout: float = 60) -> None:
        def ok() -> bool:
            self.alive()
            try:
                c = self.api("a", "/rest/system/connections")["connections"]
            except OSError:
                return False
            return bool(c.get(self.ids["b"], {}).get("connected"))

        wait_until(ok, timeout, "Syncthing A and B to connect", 0.2)

    def sync(self, touched: set[str], timeout: float) -> float:
        start, last = now(), ["?"]

        def ok() -> bool:
            self.alive()
            last[:] = same_as(self.src, self.dst, touched, st_skip)
            return not last

        try:
            wait_until(ok, timeout, "Syncthing B to equal A", 0.1)
        except TimeoutError as e:
            raise TimeoutError(f"{e}: {last}") from None
        return now() - start

    def history_bytes(self) -> tuple[int, int]:
        if not self.versions.exists():
            return 0, 0
        return tree_bytes(self.versions), du(self.versions, False)

    def extra(self) -> dict:
        n = sum(len(f) for _, _, f in os.walk(self.versions)) if self.versions.exists() else 0
        return {"versions_kept": n, "version": sh("syncthing", "--version", check=False).stdout.strip()}

    def problems(self) -> list[str]:
        return [f"syncthing-{n}.log: {l}" for n in ("a", "b")
                for l in log_lines(self.work / f"syncthing-{n}.log", r"WARNING|panic")][:20]


# ---------------------------------------------------------------- parts


def part_storage(cfg, base: Path, src_fs: Scratch, dst_fs: Scratch, procs: list[Proc]) -> dict:
    src = src_fs.mnt / "h"
    src.mkdir()
    wl = Workload(src, cfg.quick)
    t = now()
    tree = wl.build()
    log(f"storage: tree of {tree['files']:,} files, {tree['bytes'] / MIB:,.1f} MiB "
        f"({tree['text_bytes'] / MIB:,.1f} text, {tree['binary_bytes'] / MIB:,.1f} binary) in {now() - t:.1f} s")
    kinds = [k for _ in range(cfg.cycles) for k in Workload.KINDS]
    tools: list[Tool] = []
    failed: dict[str, str] = {}
    ll = Lifeline(cfg.bin, src, dst_fs.mnt / "lifeline", procs, [])
    tools.append(ll)
    if "rsnapshot" in cfg.peers:
        tools.append(Rsnapshot(src, dst_fs.mnt / "rsnapshot", len(kinds) + 1))
    if "syncthing" in cfg.peers:
        try:
            tools.append(Syncthing(src, dst_fs.mnt / "syncthing", procs))
        except Exception as e:
            failed["syncthing"] = f"{type(e).__name__}: {e}"
            log(f"storage: Syncthing did not start: {failed['syncthing']}")
    # Initial copies.
    t = now()
    ll.wait_started()
    log(f"storage: Lifeline's initial sync done in {now() - t:.1f} s")
    for tool in list(tools):
        try:
            if isinstance(tool, Syncthing):
                tool.wait_connected()
            d = tool.sync(set(), 900)
            log(f"storage: {tool.name} up to date ({d:.1f} s)")
        except Exception as e:
            failed[tool.key] = f"{type(e).__name__}: {e}"
            log(f"storage: {tool.name} failed its initial copy: {failed[tool.key]}")
            tools.remove(tool)
    base_hist = {t.key: t.history_bytes() for t in tools}
    log(f"storage: history after the initial copy: { {k: v[0] for k, v in base_hist.items()} }")
    rounds = []
    prev = dict(base_hist)
    for i, kind in enumerate(kinds):
        time.sleep(cfg.pause)
        c = wl.apply(kind)
        r = {"round": i + 1, "kind": kind, "written": dict(c.written), "removed": dict(c.removed),
             "changed": c.total(), "file_changes": c.file_changes, "tools": {}}
        for tool in list(tools):
            try:
                dt = tool.sync(c.touched, cfg.timeout)
            except Exception as e:
                failed[tool.key] = f"round {i + 1} ({kind}): {type(e).__name__}: {e}"
                log(f"storage: {tool.name} failed: {failed[tool.key]}")
                tools.remove(tool)
                continue
            h = tool.history_bytes()
            r["tools"][tool.key] = {"sync_s": round(dt, 3), "history": h[0], "history_alloc": h[1],
                                    "added": h[0] - prev[tool.key][0], "added_alloc": h[1] - prev[tool.key][1]}
            prev[tool.key] = h
        rounds.append(r)
        log(f"storage: round {i + 1}/{len(kinds)} {kind}: {c.total() / KIB:,.0f} KiB changed; history added "
            + ", ".join(f"{k} {v['added'] / KIB:,.0f} KiB ({v['sync_s']:.1f} s)" for k, v in r["tools"].items()))
    # Granularity: the versions `history list` shows of the files written
    # many times, against the write(2) calls made.
    versions = {}
    if ll in tools:
        for rel, n in sorted(wl.writes.items(), key=lambda kv: -kv[1])[:4]:
            p = sh(ll.bin / "lifeline-receiver", "--store", ll.store, "history", "list", "--machine", MACHINE,
                   src / rel, check=False)
            listed = [l for l in p.stdout.splitlines() if " op " in l]
            versions[rel] = {"writes": n, "versions_listed": len(listed)}
        log(f"storage: versions listed against write(2)s: {versions}")
    # Final full check of every byte.
    final = {}
    for tool in tools:
        if isinstance(tool, Lifeline):
            final[tool.key] = compare_trees(src, tool.mirror)
        elif isinstance(tool, Rsnapshot):
            final[tool.key] = compare_trees(src, tool.newest() / "localhost" / str(src).lstrip("/"))
        elif isinstance(tool, Syncthing):
            s, d = scan(src, st_skip), scan(tool.dst, st_skip)
            final[tool.key] = ([] if s == d else ["names or sizes differ"]) or \
                [f"content differs: {k}" for k, v in s.items() if v[0] == "file" and
                 not same_bytes(src / k, tool.dst / k)][:3]
    # Granularity against the writer's pace: 20 pwrite(2)s of 4 KiB into a
    # new file (after everything above was measured), spaced 20 ms, 5 ms,
    # 1 ms apart: how many versions does `history list` show of each?
    paced = {}
    if ll in tools:
        for gap_ms in (20, 5, 1):
            rel = f"paced/every-{gap_ms}ms.bin"
            (src / "paced").mkdir(exist_ok=True)
            (src / rel).write_bytes(wl.rng.randbytes(MIB))
            ll.sync({rel}, cfg.timeout)
            time.sleep(0.5)  # what the creation still sends (see the README) lands before the paced writes
            fd = os.open(src / rel, os.O_WRONLY)
            try:
                t0, t_first = now(), time.time()
                for k in range(20):
                    time.sleep(max(0.0, t0 + k * gap_ms / 1000 - now()))
                    os.pwrite(fd, wl.rng.randbytes(4096), wl.rng.randrange(256) * 4096)
            finally:
                os.close(fd)
            ll.sync({rel}, cfg.timeout)
            p = sh(ll.bin / "lifeline-receiver", "--store", ll.store, "history", "list", "--machine", MACHINE,
                   src / rel, check=False)
            listed = [l for l in p.stdout.splitlines() if " op " in l and "created with" not in l]
            # less its creation (and what follows it before the first paced write)
            after = [l for l in listed if l.split()[0] > utc_instant(t_first)]
            paced[gap_ms] = {"writes": 20, "versions_listed": len(after), "listing": listed}
        log(f"storage: versions of 20 paced writes: {paced}")
    out = {"tree": tree, "rounds": rounds, "lifeline_paced": paced, "baseline": {k: {"history": v[0], "history_alloc": v[1]}
                                                         for k, v in base_hist.items()},
           "failed": failed, "final_differences": final, "lifeline_versions": versions,
           "extra": {t.key: t.extra() for t in tools}, "granularity": {t.key: t.granularity for t in tools},
           "tools": [t.key for t in tools],
           "problems": {t.key: t.problems() for t in tools if hasattr(t, "problems")}}
    for tool in tools:
        if isinstance(tool, Syncthing):
            for p in tool.procs_.values():
                p.stop()
    ll.agent.stop()
    ll.receiver.stop()
    return out


def part_restore(cfg, base: Path, src_fs: Scratch, dst_fs: Scratch, procs: list[Proc]) -> dict:
    src = src_fs.mnt / "r"
    tree = src / "srv" / "data"
    rng = random.Random(1515)
    n = cfg.restore_files
    for i in range(n):
        d = tree / f"d{i % 100:03d}"
        if i < 100:
            d.mkdir(parents=True)
        size = rng.randint(KIB, 8 * KIB)
        (d / f"f{i:05d}").write_bytes(f"{i}\n".encode() + (rng.randbytes(size) if i % 2 else text_bytes(rng, size)))
    os.sync()
    work = dst_fs.mnt / "restore"
    ll = Lifeline(cfg.bin, src, work / "lifeline", procs, [])
    t = now()
    ll.wait_started()
    wait_identical(src, ll.mirror, 300, 0.2)
    log(f"restore: {n:,} files replicated in {now() - t:.1f} s")
    expected = work / "expected"
    sh("cp", "-a", tree, expected)
    time.sleep(0.05)
    as_of = utc_instant(time.time())
    time.sleep(0.05)
    # The changes: rewrites, deletions, a directory renamed, new files.
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    rng.shuffle(files)
    rewritten, deleted = files[:n // 10], files[n // 10:n // 10 + n // 20]
    for p in rewritten:
        p.write_bytes(rng.randbytes(rng.randint(KIB, 8 * KIB)))
    for p in deleted:
        p.unlink()
    moved = sorted(d for d in tree.iterdir() if d.is_dir())[0]
    os.rename(moved, tree / "renamed-dir")
    (tree / "new").mkdir()
    for i in range(200):
        (tree / "new" / f"new-{i}").write_bytes(rng.randbytes(2 * KIB))
    ll.sync(set(), 300)
    wait_identical(src, ll.mirror, 300, 0.2)
    log(f"restore: changed {len(rewritten)} rewritten, {len(deleted)} deleted, {moved.name} renamed, 200 new; "
        f"restoring as of {as_of}")
    recv = ll.bin / "lifeline-receiver"
    out: dict = {"files": n, "as_of": as_of, "rewritten": len(rewritten), "deleted": len(deleted), "renamed_dir": 1,
                 "new": 200}
    for label, path in (("tree", str(tree)), ("whole", "/")):
        times, diffs, said = [], [], ""
        for k in range(cfg.restore_tries):
            to = work / f"{label}-{k}"
            t = now()
            p = sh(recv, "--store", ll.store, "history", "restore", "--machine", MACHINE, "--as-of", as_of,
                   "--path", path, "--to", to)
            times.append(now() - t)
            said = p.stdout.strip()
            diffs = compare_trees(expected, to / str(tree).lstrip("/"), meta=False)
            if diffs:
                log(f"restore ({label}): restored tree differs from the recorded one: {diffs[:3]}")
            shutil.rmtree(to)
        out[label] = {"best_s": min(times), "times_s": [round(x, 3) for x in times], "identical": not diffs,
                      "differences": diffs, "receiver_said": said}
        log(f"restore ({label}): best {min(times):.3f} s of {[round(x, 3) for x in times]}; "
            f"identical: {not diffs}; {said}")
    out["problems"] = ll.problems()
    ll.agent.stop()
    ll.receiver.stop()
    return out


def part_replication(cfg, base: Path) -> dict:
    """bench/realtime.py --only a,c --tools lifeline, with and without
    history, `cfg.replication_runs` times each, alternating (without first)."""
    out: dict = {"with": [], "without": []}
    for i in range(cfg.replication_runs):
        for label, extra in (("without", ["--receiver-arg=--without-history"]), ("with", [])):
            j = base / f"realtime-{label}-{i}.json"
            cmd = [sys.executable, str(REPO / "bench" / "realtime.py"), "--only", "a,c", "--tools", "lifeline",
                   "--skip-build", "--bin", str(cfg.bin), "--json", str(j), *extra] + (["--quick"] if cfg.quick else [])
            log(f"replication: {' '.join(cmd)}")
            subprocess.run(cmd, check=False)
            out[label].append(json.loads(j.read_text())["results"] if j.exists() else {})
    return out


# ---------------------------------------------------------------- report


def fb(n: float) -> str:
    if n >= MIB:
        return f"{n / MIB:,.2f} MiB"
    if n >= KIB:
        return f"{n / KIB:,.1f} KiB"
    return f"{n:,.0f} B"


def report(res: dict) -> str:
    lines = []
    st = res.get("storage")
    if st:
        rounds = st["rounds"]
        written = {k: sum(r["written"][k] for r in rounds) for k in ("text", "binary")}
        removed = {k: sum(r["removed"][k] for r in rounds) for k in ("text", "binary")}
        changed = sum(written.values()) + sum(removed.values())
        inc = written["binary"] + removed["binary"]
        tr = st["tree"]
        lines += [f"### Storage per byte changed",
                  "",
                  f"Tree: {tr['files']:,} files, {fb(tr['bytes'])} ({fb(tr['text_bytes'])} compressible text, "
                  f"{fb(tr['binary_bytes'])} incompressible). {len(rounds)} rounds. Bytes changed: {fb(changed)} = "
                  f"written {fb(sum(written.values()))} (text {fb(written['text'])}, binary {fb(written['binary'])}) "
                  f"+ removed or truncated away {fb(sum(removed.values()))} (text {fb(removed['text'])}, "
                  f"binary {fb(removed['binary'])}); incompressible part {fb(inc)}.",
                  "",
                  "| tool | history bytes (apparent) | allocated | bytes changed | history ÷ changed | "
                  "allocated ÷ changed | file versions kept | granularity |",
                  "|---|---|---|---|---|---|---|---|"]
        fc = sum(r["file_changes"] for r in rounds)
        for key in st["tools"]:
            h = sum(r["tools"].get(key, {}).get("added", 0) for r in rounds)
            ha = sum(r["tools"].get(key, {}).get("added_alloc", 0) for r in rounds)
            ex = st["extra"].get(key, {})
            kept = {"lifeline": f"every op the agent sent ({fc} file changes; see the versions listed below)",
                    "rsnapshot": f"{len(rounds)} snapshots",
                    "syncthing": f"{ex.get('versions_kept', '?')} versions of {fc} file changes"}.get(key, "")
            lines.append(f"| {NAMES[key]} | {fb(h)} | {fb(ha)} | {fb(changed)} | {ratio(h, changed)} | "
                         f"{ratio(ha, changed)} | {kept} | {st['granularity'][key]} |")
        for key, why in st["failed"].items():
            lines.append(f"| {NAMES.get(key, key)} | failed: {why} | | | | | | |")
        lines += ["", "Per kind of change (history added by the rounds of that kind ÷ bytes they changed):", "",
                  "| change | bytes changed (text / binary) | " + " | ".join(NAMES[k] for k in st["tools"]) + " |",
                  "|---|---|" + "---|" * len(st["tools"])]
        for kind in Workload.KINDS:
            rs = [r for r in rounds if r["kind"] == kind]
            if not rs:
                continue
            t = sum(r["written"]["text"] + r["removed"]["text"] for r in rs)
            b = sum(r["written"]["binary"] + r["removed"]["binary"] for r in rs)
            cells = []
            for key in st["tools"]:
                h = sum(r["tools"].get(key, {}).get("added", 0) for r in rs)
                cells.append(f"{fb(h)} ({ratio(h, t + b, inf='∞')})")
            lines.append(f"| {Workload.TITLES[kind]} | {fb(t)} / {fb(b)} | " + " | ".join(cells) + " |")
        ll = st["extra"].get("lifeline", {})
        if ll:
            lines += ["", f"Lifeline's history: journal {fb(ll['journal_bytes'])}, attic {fb(ll['attic_bytes'])} "
                          f"({ll['attic_objects']} objects); after the initial copy (not counted above): "
                          f"{fb(st['baseline']['lifeline']['history'])}."]
        for rel, v in st.get("lifeline_versions", {}).items():
            lines.append(f"Granularity: `history list` shows {v['versions_listed']} versions of {rel}, written by "
                         f"{v['writes']} write(2) calls (plus its initial creation).")
        if st.get("lifeline_paced"):
            lines.append("Versions `history list` shows of 20 `pwrite(2)`s of 4 KiB into a 1 MiB file, by the time "
                         "between writes: " + ", ".join(f"{g} ms apart: {v['versions_listed']}"
                                                          for g, v in st["lifeline_paced"].items()) + ".")
        rs = st["extra"].get("rsnapshot")
        if rs:
            lines.append(f"rsnapshot runs: {', '.join(f'{x:.1f}' for x in rs['run_s'])} s.")
        bad = {k: v for k, v in st["final_differences"].items() if v}
        lines.append(f"Load average before/after: {st.get('load_avg')}; {st.get('seconds')} s.")
        lines.append("Every tool's copy identical to the source at the end: " + ("yes" if not bad else f"**NO**: {bad}"))
    rt = res.get("restore")
    if rt:
        lines += ["", "### Restore as of an instant", "",
                  f"{rt['files']:,}-file tree replicated; then {rt['rewritten']:,} files rewritten, {rt['deleted']:,} "
                  f"deleted, a directory renamed, {rt['new']} new; restored as of before the changes (best of "
                  f"{len(rt['tree']['times_s'])}).", "",
                  "| restore | best | all runs | identical to the recorded tree |", "|---|---|---|---|"]
        for label, what in (("tree", "`--path <the tree>`"), ("whole", "`--path /` (the whole tree)")):
            r = rt[label]
            lines.append(f"| {what} | {r['best_s']:.3f} s | {', '.join(f'{x:.3f}' for x in r['times_s'])} s | "
                         f"{'yes' if r['identical'] else '**NO**'} |")
        lines.append(f"\nLoad average before/after: {rt.get('load_avg')}.")
    rp = res.get("replication")
    if rp:
        n = len(rp.get("with", []))
        lines += ["", f"### Cost on replication (bench/realtime.py, Lifeline alone, median of {n} runs each)", "",
                  "| workload | metric | with history | --without-history | with ÷ without | runs with | runs without |",
                  "|---|---|---|---|---|---|---|"]
        for wl, key, label, unit in (("a", "lag_p50_ms", "lag p50", "ms"), ("a", "lag_p99_ms", "lag p99", "ms"),
                                     ("a", "lag_max_ms", "lag max", "ms"),
                                     ("c", "complete_after_last_write_s", "last write → target complete", "s"),
                                     ("c", "complete_after_first_write_s", "first write → target complete", "s"),
                                     ("c", "writer_s", "writer time for the burst", "s"),
                                     ("c", "cpu_s", "CPU time, sender + receiver", "s")):
            xs = {m: [r.get(wl, {}).get("lifeline", {}).get(key) for r in rp.get(m, [])] for m in ("with", "without")}
            xs = {m: [x for x in v if isinstance(x, (int, float))] for m, v in xs.items()}
            a, b = (statistics.median(xs[m]) if xs[m] else None for m in ("with", "without"))
            f = (lambda v: "—" if v is None else f"{v:.1f} ms") if unit == "ms" else \
                (lambda v: "—" if v is None else f"{v:.3f} s")
            lines.append(f"| ({wl}) | {label} | {f(a)} | {f(b)} | {ratio(a, b)} | "
                         f"{', '.join(f(x) for x in xs['with'])} | {', '.join(f(x) for x in xs['without'])} |")
        noisy = [f"{m} #{i + 1} ({wl}): CPU {r[wl]['lifeline']['noise']['cpu_busy_before']:.0%} busy"
                 + (f", other agents {r[wl]['lifeline']['noise']['foreign_agents']}"
                    if r[wl]["lifeline"]["noise"]["foreign_agents"] else "")
                 for m in ("with", "without") for i, r in enumerate(rp.get(m, [])) for wl in ("a", "c")
                 if wl in r and "noise" in r[wl].get("lifeline", {})
                 and (r[wl]["lifeline"]["noise"]["cpu_busy_before"] >= 0.15 or r[wl]["lifeline"]["noise"]["foreign_agents"])]
        if noisy:
            lines.append("\nNot quiet before: " + "; ".join(noisy) + ".")
    return "\n".join(lines)


NAMES = {"lifeline": "Lifeline", "rsnapshot": "rsnapshot", "syncthing": "Syncthing (staggered)"}


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size: a smaller tree (about 500 files, 40 MiB "
                    "large files instead of 214), half the changes per round, one cycle of rounds")
    ap.add_argument("--cycles", type=int, default=None, help="cycles of the 7 kinds of rounds (default 2; 1 quick)")
    ap.add_argument("--only", default="storage,restore", help="parts: storage,restore,replication "
                    "(default storage,restore; replication runs bench/realtime.py twice, about 3 minutes more)")
    ap.add_argument("--replication", action="store_true", help="also run the replication part")
    ap.add_argument("--replication-runs", type=int, default=3,
                    help="realtime.py runs with and without history, alternating (default 3 each; medians)")
    ap.add_argument("--peers", default="rsnapshot,syncthing", help="peers in the storage part (default both)")
    ap.add_argument("--bin", type=Path, default=None, metavar="DIR",
                    help="lifeline-agent and lifeline-receiver from DIR (default target/release or $LIFELINE_BIN)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between rounds (default 1)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds a tool has to catch up after a round")
    ap.add_argument("--restore-files", type=int, default=10_000)
    ap.add_argument("--restore-tries", type=int, default=3)
    ap.add_argument("--image-gib", type=int, default=16)
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, stores) in /tmp")
    cfg = ap.parse_args()
    cfg.only = [p for p in cfg.only.split(",") if p] + (["replication"] if cfg.replication else [])
    cfg.peers = [p for p in cfg.peers.split(",") if p]
    if cfg.cycles is None:
        cfg.cycles = 1 if cfg.quick else 2
    cfg.src_bin = (cfg.bin or BIN).resolve()
    return cfg


def main() -> int:
    cfg = parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the agent loads eBPF programs, and the benchmark mounts filesystems")
    for exe in ("lifeline-agent", "lifeline-receiver"):
        if not (cfg.src_bin / exe).exists():
            sys.exit(f"{cfg.src_bin / exe} is missing: cargo build --release --bins (or --bin DIR)")
    for tool, pkg in (("rsnapshot", "rsnapshot"), ("syncthing", "syncthing")):
        if tool in cfg.peers and not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y {pkg} (scripts/setup.sh installs it)")
    cleanup = Cleanup()
    procs: list[Proc] = []
    res: dict = {}

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    interrupted = False
    try:
        base = Path(tempfile.mkdtemp(prefix="llhist."))
        if not cfg.keep:
            cleanup.push(f"remove {base}", lambda: shutil.rmtree(base, ignore_errors=True))
        (base / "bin").mkdir()
        for exe in ("lifeline-agent", "lifeline-receiver"):
            shutil.copy2(cfg.src_bin / exe, base / "bin" / exe)
        cfg.bin = base / "bin"
        built = {exe: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((cfg.src_bin / exe).stat().st_mtime))
                 for exe in ("lifeline-agent", "lifeline-receiver")}
        git = sh("git", "-C", REPO, "describe", "--always", "--dirty", check=False).stdout.strip()
        res["versions"] = {"bench_commit": git, "binaries": str(cfg.src_bin), "built": built,
                           "rsnapshot": sh("rsnapshot", "--version", check=False).stdout.strip()[:60]
                           if shutil.which("rsnapshot") else None,
                           "syncthing": sh("syncthing", "--version", check=False).stdout.strip()[:60]
                           if shutil.which("syncthing") else None}
        log(f"binaries from {cfg.src_bin} (built {built}), work in {base}")
        if "storage" in cfg.only or "restore" in cfg.only:
            src_fs = Scratch(base, "src", cfg.image_gib, cleanup)
            dst_fs = Scratch(base, "dst", cfg.image_gib, cleanup)
            for part, fn in (("storage", part_storage), ("restore", part_restore)):
                if part in cfg.only:
                    t = now()
                    load0 = os.getloadavg()[0]
                    try:
                        res[part] = fn(cfg, base, src_fs, dst_fs, procs)
                        res[part]["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                        res[part]["seconds"] = round(now() - t, 1)
                    except KeyboardInterrupt:
                        raise
                    except Exception as e:
                        log(f"{part} failed: {type(e).__name__}: {e}")
                        res[f"{part}_error"] = f"{type(e).__name__}: {e}"
                    for p in list(procs):
                        p.stop(5)
                    log(f"{part}: {now() - t:.0f} s")
            if cfg.keep:
                for d in (src_fs.mnt, dst_fs.mnt):
                    for f in d.rglob("*.log"):
                        if f.stat().st_size < 64 * MIB and "src" not in f.parts:
                            dest = base / "logs" / f.relative_to(d.parent)
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(f, dest)
        if "replication" in cfg.only:
            res["replication"] = part_replication(cfg, base)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        for p in list(procs):
            try:
                p.stop(5)
            except Exception as e:
                log(f"cleanup: stopping {p.name} failed: {e}")
        cleanup.run()
    sys.stderr.flush()
    print()
    print(report(res))
    for part in ("storage", "restore"):
        if f"{part}_error" in res:
            print(f"\n{part} failed: {res[part + '_error']}")
        probs = res.get(part, {}).get("problems")
        if isinstance(probs, dict):
            probs = [f"{k}: {p}" for k, ps in probs.items() for p in ps]
        if probs:
            print(f"\nReported problems ({part}):")
            for p in probs[:15]:
                print(f"- {p}")
    if cfg.json:
        cfg.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(cfg).items()}, **res}, indent=1,
                                       default=str) + "\n")
        log(f"wrote {cfg.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
