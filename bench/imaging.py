#!/usr/bin/env python3
"""Disk-imaging benchmark: Lifeline (lifeline-image) against partclone + zstd
(what Clonezilla does), dd | zstd and restic, on the same disk in one run.

The test disk (bench/imaging-disk.sh) is a 4 GiB GPT image like a real
machine's: FAT32 ESP, ext4 root with a Debian minbase tree, mixed data and
1 GiB of deleted garbage in its free space, swap, unallocated space. Phases,
each tool after the other, page cache dropped before every timed run:

  1. full backup of the disk (loop device, read-only, direct I/O);
  2. second backup after ~1 % of the root's files changed (for partclone and
     dd another full image; for restic and Lifeline the repository growth);
  3. restore of the second backup onto a fresh zero-filled disk, then
     e2fsck -fn / fsck.vfat -n and a file-by-file compare with the source.

    python3 bench/imaging.py [--disk IMG] [--size 4G] [--only partclone,dd,restic,lifeline]
                             [--json out.json] [--keep]

Run as root; see bench/README.md. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from lifeline_bench import (GIB, KIB, MB, MIB, REPO, Cleanup, Loop, Mount, compare_trees, drop_caches, fmt_mb, log,
                            ratio, sh, tree_bytes)

DISK_SCRIPT = Path(__file__).resolve().parent / "imaging-disk.sh"
BASE = Path("/var/tmp/lifeline-bench")
PASSWORD = "lifeline-bench-password"

TOOLS = {  # key -> label
    "partclone": "partclone + zstd",
    "dd": "dd + zstd",
    "restic": "restic",
    "lifeline": "Lifeline",
}

# command -> Debian package
PEERS = {"partclone.ext4": "partclone", "partclone.vfat": "partclone", "restic": "restic", "zstd": "zstd",
         "debootstrap": "debootstrap", "sgdisk": "gdisk", "mkfs.vfat": "dosfstools", "fsck.vfat": "dosfstools", "mcopy": "mtools",
         "e2fsck": "e2fsprogs", "dumpe2fs": "e2fsprogs", "losetup": "util-linux", "blkid": "util-linux"}


# ---------------------------------------------------------------- timed runs


class Step:
    """Accumulates one tool's timed run: wall time, CPU time (user + system of
    every process, from wait4), the peak RSS of the largest process."""

    def __init__(self, logdir: Path, name: str) -> None:
        self.logdir, self.name = logdir, name
        self.wall = self.cpu = 0.0
        self.peak_rss_kib = 0
        self.procs: list[dict] = []

    def pipeline(self, cmds: list[list[str | Path]], stdin: str | Path | None = None,
                 stdout: str | Path | None = None, stdout_mode: str = "wb", env: dict | None = None) -> None:
        """Runs cmds[0] | cmds[1] | ... with stdin/stdout redirected to files
        (None: /dev/null), waits for all, adds their cost; raises on failure."""
        cmds = [[str(c) for c in cmd] for cmd in cmds]
        self.logdir.mkdir(parents=True, exist_ok=True)
        errs = [open(self.logdir / f"{self.name}.{len(self.procs) + i}.{Path(c[0]).name}.stderr", "wb+")
                for i, c in enumerate(cmds)]
        fin = open(stdin, "rb") if stdin is not None else subprocess.DEVNULL
        fout = open(stdout, stdout_mode) if stdout is not None else subprocess.DEVNULL
        popens: list[subprocess.Popen] = []
        t = time.monotonic()
        try:
            prev = fin
            for i, cmd in enumerate(cmds):
                last = i == len(cmds) - 1
                p = subprocess.Popen(cmd, stdin=prev, stdout=fout if last else subprocess.PIPE, stderr=errs[i],
                                     env=env)
                if i > 0:
                    prev.close()  # our copy of the pipe: let the writer get SIGPIPE
                prev = p.stdout if not last else None
                popens.append(p)
            results = []
            for p in popens:
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                results.append((p, ru))
        finally:
            for p in popens:  # only after an exception: don't leave our children running
                if p.returncode is None:
                    p.kill()
                    p.wait()
            if stdin is not None:
                fin.close()
            if stdout is not None:
                fout.close()
        wall = time.monotonic() - t
        self.wall += wall
        failed = []
        for (p, ru), err in zip(results, errs):
            cpu = ru.ru_utime + ru.ru_stime
            self.cpu += cpu
            self.peak_rss_kib = max(self.peak_rss_kib, ru.ru_maxrss)
            err.seek(0)
            tail = err.read()[-4000:].decode(errors="replace").strip()
            err.close()
            self.procs.append({"cmd": " ".join(p.args), "rc": p.returncode, "cpu_s": round(cpu, 3),
                               "maxrss_kib": ru.ru_maxrss})
            if p.returncode != 0:
                failed.append(f"{' '.join(p.args)} exited {p.returncode}: {tail[-800:]}")
        if failed:
            raise RuntimeError("; ".join(failed))

    def run(self, *cmd: str | Path, **kw) -> None:
        self.pipeline([list(cmd)], **kw)

    def call(self, fn: Callable[[], None]) -> None:
        """Times something done in this process (e.g. a sync) into wall only."""
        t = time.monotonic()
        fn()
        self.wall += time.monotonic() - t

    def result(self) -> dict:
        return {"wall_s": round(self.wall, 3), "cpu_s": round(self.cpu, 3), "peak_rss_kib": self.peak_rss_kib,
                "processes": self.procs}


# ---------------------------------------------------------------- environment


# ---------------------------------------------------------------- environment


def fs_type(dev: str) -> str:
    return sh("blkid", "-o", "value", "-s", "TYPE", dev, check=False).stdout.strip()


# ---------------------------------------------------------------- tools


class Tool:
    key = ""
    incremental = False  # does a second backup store only what changed?

    def __init__(self, work: Path) -> None:
        self.dir = work / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs = work / "logs"

    def setup(self) -> None:
        pass

    def stored(self) -> int:
        return tree_bytes(self.dir)

    def backup(self, src: Loop, step: Step, n: int) -> None:
        raise NotImplementedError

    def restore(self, dst: Loop, step: Step) -> None:
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def after_backup(self) -> object:
        """What the tool says about the backup just made (untimed), for the JSON."""
        return None


class Partclone(Tool):
    """Clonezilla's way: the partition table with sgdisk --backup, each
    filesystem's used blocks with partclone.<fs> piped through zstd; swap only
    as its UUID and label (Clonezilla runs mkswap on restore)."""
    key = "partclone"
    PART = {"vfat": "vfat", "ext4": "ext4", "ext3": "ext3", "ext2": "ext2"}

    def backup(self, src: Loop, step: Step, n: int) -> None:
        out = self.dir / f"backup-{n}"
        out.mkdir()
        step.run("sgdisk", f"--backup={out / 'gpt.sgdisk'}", src.dev)
        for p in src.parts():
            dev = src.part(p)
            fs = fs_type(dev)
            if fs == "swap":
                info = sh("blkid", "-o", "export", dev).stdout
                (out / f"p{p}.swap-info").write_text(info)
            elif fs in self.PART:
                (out / f"p{p}.fs").write_text(fs + "\n")
                step.pipeline([[f"partclone.{self.PART[fs]}", "-q", "-c", "-s", dev, "-o", "-",
                                "-L", self.logs / f"partclone-b{n}-p{p}.log"],
                               ["zstd", "-q", "-T0", "-3"]], stdout=out / f"p{p}.pcl.zst")
            else:  # Clonezilla's fallback for unknown filesystems
                step.pipeline([[f"partclone.dd", "-q", "-c", "-s", dev, "-o", "-",
                                "-L", self.logs / f"partclone-b{n}-p{p}.log"],
                               ["zstd", "-q", "-T0", "-3"]], stdout=out / f"p{p}.dd.zst")
        self.last = out

    def stored_backup(self, n: int) -> int:
        return tree_bytes(self.dir / f"backup-{n}")

    def restore(self, dst: Loop, step: Step) -> None:
        src = self.last
        step.run("sgdisk", f"--load-backup={src / 'gpt.sgdisk'}", dst.dev)
        step.call(dst.reread)
        for f in sorted(src.glob("p*.*")):
            p = int(f.name[1:].split(".")[0])
            dev = dst.part(p)
            if f.name.endswith(".pcl.zst"):
                fs = (src / f"p{p}.fs").read_text().strip()
                step.pipeline([["zstd", "-q", "-dc", f],
                               [f"partclone.{self.PART[fs]}", "-q", "-r", "-s", "-", "-o", dev,
                                "-L", self.logs / f"partclone-r-p{p}.log"]])
            elif f.name.endswith(".dd.zst"):
                step.pipeline([["zstd", "-q", "-dc", f],
                               ["partclone.dd", "-q", "-r", "-s", "-", "-o", dev,
                                "-L", self.logs / f"partclone-r-p{p}.log"]])
            elif f.name.endswith(".swap-info"):
                kv = dict(line.split("=", 1) for line in f.read_text().split() if "=" in line)
                args = ["mkswap"]
                if kv.get("UUID"):
                    args += ["-U", kv["UUID"]]
                if kv.get("LABEL"):
                    args += ["-L", kv["LABEL"]]
                step.run(*args, dev)

    def version(self) -> str:
        return sh("partclone.ext4", "-v", check=False).stdout.strip().splitlines()[0] + "; " + \
            sh("zstd", "--version").stdout.strip()


class DdZstd(Tool):
    key = "dd"

    def backup(self, src: Loop, step: Step, n: int) -> None:
        self.last = self.dir / f"backup-{n}.img.zst"
        step.pipeline([["dd", f"if={src.dev}", "bs=4M", "status=none"], ["zstd", "-q", "-T0", "-3"]],
                      stdout=self.last)

    def stored_backup(self, n: int) -> int:
        return (self.dir / f"backup-{n}.img.zst").stat().st_size

    def restore(self, dst: Loop, step: Step) -> None:
        step.pipeline([["zstd", "-q", "-dc", self.last],
                       ["dd", f"of={dst.dev}", "bs=4M", "iflag=fullblock", "oflag=direct", "status=none"]])

    def version(self) -> str:
        return sh("dd", "--version").stdout.splitlines()[0] + "; " + sh("zstd", "--version").stdout.strip()


class Restic(Tool):
    key = "restic"
    incremental = True

    def env(self) -> dict:
        return dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_REPOSITORY=str(self.dir / "repo"),
                    RESTIC_CACHE_DIR=str(self.dir.parent / "restic-cache"))

    def setup(self) -> None:
        # Format 2 (compression, default "auto" = zstd) is "stable" from 0.14 on; ask for it explicitly.
        sh("restic", "init", "--repository-version", "2", env=self.env())

    def stored(self) -> int:
        return tree_bytes(self.dir / "repo")

    def backup(self, src: Loop, step: Step, n: int) -> None:
        # restic 0.14 has --stdin (--stdin-from-command came with 0.17).
        step.run("restic", "backup", "-q", "--host", "bench", "--stdin", "--stdin-filename", "disk.img",
                 stdin=src.dev, env=self.env())

    def restore(self, dst: Loop, step: Step) -> None:
        step.run("restic", "dump", "-q", "latest", "/disk.img", stdout=dst.dev, stdout_mode="r+b", env=self.env())

    def version(self) -> str:
        return sh("restic", "version").stdout.strip()


class Lifeline(Tool):
    """lifeline-image. Its interface is still being written: every invocation
    is in `cmd` below, the one place to adjust."""
    key = "lifeline"
    incremental = True
    bin: Path | None = None
    name = ""  # the last image backed up; names must be unique in a repository

    def env(self) -> dict:
        return dict(os.environ, LIFELINE_PASSWORD=PASSWORD)

    def cmd(self, action: str, *args: str | Path) -> list[str | Path]:
        repo = self.dir / "repo"
        if action == "init":
            return [self.bin, "init", "--repo", repo]
        if action == "backup":  # args: image name, source device
            name, dev = args
            return [self.bin, "backup", "-q", "--repo", repo, "--name", name, dev]
        if action == "restore":  # args: image name, target device
            name, dev = args
            return [self.bin, "restore", "-q", "--repo", repo, "--name", name, dev]
        if action == "verify":  # args: image name
            return [self.bin, "verify", "-q", "--repo", repo, "--name", *args]
        if action == "info":  # args: image name
            return [self.bin, "info", "--json", "--repo", repo, "--name", *args]
        raise ValueError(action)

    def setup(self) -> None:
        sh(*self.cmd("init"), env=self.env())

    def stored(self) -> int:
        return tree_bytes(self.dir / "repo")

    def backup(self, src: Loop, step: Step, n: int) -> None:
        self.name = f"disk-{n}"
        step.run(*self.cmd("backup", self.name, src.dev), env=self.env())

    def restore(self, dst: Loop, step: Step) -> None:
        step.run(*self.cmd("restore", self.name, dst.dev), env=self.env())

    def after_backup(self) -> object:
        p = sh(*self.cmd("info", self.name), check=False, env=self.env())
        try:
            return json.loads(p.stdout)
        except ValueError:
            return (p.stdout + p.stderr).strip()[-2000:]

    def verify(self) -> dict:
        p = sh(*self.cmd("verify", self.name), check=False, env=self.env())
        return {"rc": p.returncode, "output": (p.stdout + p.stderr).strip()[-2000:]}

    def version(self) -> str:
        p = sh(self.bin, "--version", check=False)
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"


def find_lifeline(cfg: argparse.Namespace, work: Path) -> tuple[Path | None, str]:
    """Builds lifeline-image if its crate exists; returns a private copy of the
    binary (others rebuild target/ during the run) or None and why not."""
    exe = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "release" / "lifeline-image"
    crate = [p for pat in ("*/Cargo.toml", "*/*/Cargo.toml") for p in REPO.glob(pat)
             if p.parts[len(REPO.parts)] != "target" and 'name = "lifeline-image"' in p.read_text(errors="replace")]
    if not cfg.skip_build:
        if not crate:
            return None, "no crate named lifeline-image in the workspace yet"
        log("cargo build --release -p lifeline-image")
        p = subprocess.run(["cargo", "build", "--release", "-p", "lifeline-image"], cwd=REPO,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if p.returncode != 0:
            return None, "cargo build --release -p lifeline-image failed: " + " / ".join(
                line.strip() for line in p.stderr.strip().splitlines()[-12:] if line.strip())[-700:]
    if not exe.exists():
        return None, f"{exe} does not exist"
    (work / "bin").mkdir(exist_ok=True)
    copy = work / "bin" / "lifeline-image"
    shutil.copy2(exe, copy)
    return copy, ""


# ---------------------------------------------------------------- the disk


def ensure_peers() -> list[str]:
    missing = sorted({pkg for exe, pkg in PEERS.items() if shutil.which(exe) is None})
    if missing:
        log(f"installing missing packages: apt-get install -y {' '.join(missing)}")
        print(f"installing: {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
    return missing


def used_bytes(disk: Loop, base: Path, cleanup: Cleanup) -> dict:
    """Bytes in use on the ext4 root and the FAT ESP (statvfs of read-only mounts,
    as df shows them), and dumpe2fs's figure for the root."""
    out = {}
    for p in disk.parts():
        dev = disk.part(p)
        fs = fs_type(dev)
        if fs == "vfat":  # without mounting (not every kernel has vfat): what df would show
            out[f"p{p}_vfat"] = fat_used(dev)
        if fs != "ext4":
            continue
        m = Mount(dev, base / f"used-p{p}", cleanup, "ro,noload")
        try:
            st = os.statvfs(m.at)
            out[f"p{p}_{fs}"] = (st.f_blocks - st.f_bfree) * st.f_frsize
        finally:
            m.unmount()
        if fs == "ext4":
            h = {}
            for line in sh("dumpe2fs", "-h", dev).stdout.splitlines():
                k, _, v = line.partition(":")
                h[k.strip()] = v.strip()
            out[f"p{p}_ext4_dumpe2fs"] = (int(h["Block count"]) - int(h["Free blocks"])) * int(h["Block size"])
    out["used"] = sum(v for k, v in out.items() if not k.endswith("dumpe2fs"))
    return out


def fat_used(dev: str) -> int:
    """Used clusters × cluster size, from fsck.fat -n -v."""
    text = sh("fsck.vfat", "-n", "-v", dev, check=False).stdout
    per = used = None
    for line in text.splitlines():
        w = line.split()
        if len(w) >= 4 and w[1:4] == ["bytes", "per", "cluster"]:
            per = int(w[0])
        if "clusters" in line and "/" in line and "files," in line:
            used = int(line.rsplit(",", 1)[1].split("/")[0])
    if per is None or used is None:
        raise RuntimeError(f"cannot read fsck.vfat -v output: {text[-500:]}")
    return per * used


def mutate(image: Path, base: Path, cleanup: Cleanup, seed: int = 4242) -> dict:
    """Changes a deterministic ~1 % of the regular files of the ext4 root, on
    a read-write attachment of the image: rewrites some in place, appends to
    some, deletes a few and creates a few new ones."""
    loop = Loop(image, cleanup, read_only=False, direct_io=False)
    try:
        root = next(p for p in loop.parts() if fs_type(loop.part(p)) == "ext4")
        m = Mount(loop.part(root), base / "mutate", cleanup, "rw,noatime")
        try:
            files = []
            for d, dirs, names in os.walk(m.at):
                dirs.sort()
                for n in sorted(names):
                    f = os.path.join(d, n)
                    if os.path.isfile(f) and not os.path.islink(f) and "lost+found" not in f:
                        files.append(f)
            rng = random.Random(seed)
            picked = rng.sample(files, max(4, len(files) // 100))
            st = {"files": len(files), "rewritten": 0, "appended": 0, "deleted": 0, "created": 0,
                  "bytes_rewritten": 0, "bytes_appended": 0, "bytes_created": 0, "bytes_deleted": 0}
            for i, f in enumerate(picked):
                size = os.path.getsize(f)
                kind = i % 10
                if kind < 5:  # rewrite in place: the whole file up to 256 KiB, else 1-4 pieces of 4-64 KiB
                    with open(f, "r+b") as fh:
                        if size <= 256 * KIB:
                            data = rng.randbytes(size)
                            fh.write(data)
                            st["bytes_rewritten"] += size
                        else:
                            for _ in range(rng.randint(1, 4)):
                                n = rng.randint(4 * KIB, 64 * KIB)
                                fh.seek(rng.randrange(0, size - n))
                                fh.write(rng.randbytes(n))
                                st["bytes_rewritten"] += n
                    st["rewritten"] += 1
                elif kind < 8:  # append
                    n = rng.randint(100, 64 * KIB)
                    with open(f, "ab") as fh:
                        fh.write(rng.randbytes(n))
                    st["bytes_appended"] += n
                    st["appended"] += 1
                else:  # delete
                    os.unlink(f)
                    st["bytes_deleted"] += size
                    st["deleted"] += 1
            new = Path(m.at) / "home" / "user" / "new"
            new.mkdir(parents=True, exist_ok=True)
            for i in range(max(2, len(picked) // 10)):
                n = rng.randint(4 * KIB, 2 * MIB)
                (new / f"file-{i:03d}.bin").write_bytes(rng.randbytes(n))
                st["bytes_created"] += n
                st["created"] += 1
            st["bytes_changed"] = st["bytes_rewritten"] + st["bytes_appended"] + st["bytes_created"]
            os.sync()
        finally:
            m.unmount()
    finally:
        loop.detach()
    return st


def check_restored(dst: Loop, src_image: Path, base: Path, cleanup: Cleanup) -> dict:
    """fsck of the restored filesystems, then a file-by-file compare with the
    source disk (both mounted read-only)."""
    out: dict = {}
    dst.reread()
    parts = dst.parts()
    out["partitions"] = len(parts)
    src = Loop(src_image, cleanup, read_only=True)
    try:
        identical = True
        for p in src.parts():
            fs = fs_type(src.part(p))
            if fs not in ("ext4", "vfat", "swap"):
                continue
            if p not in parts:
                out[f"p{p}"] = "missing"
                identical = False
                continue
            dfs = fs_type(dst.part(p))
            if fs == "swap":
                out["swap"] = "ok" if dfs == "swap" else f"not swap ({dfs or 'nothing'})"
                continue
            fsck = ["e2fsck", "-fn"] if fs == "ext4" else ["fsck.vfat", "-n"]
            r = sh(*fsck, dst.part(p), check=False)
            out[f"fsck_{fs}"] = "pass" if r.returncode == 0 else f"FAIL ({r.returncode})"
            if r.returncode != 0:
                out[f"fsck_{fs}_output"] = (r.stdout + r.stderr)[-1500:]
                identical = False
                continue
            if fs == "vfat":  # no vfat in every kernel: copy both trees out with mtools
                a, b = base / f"cmp-src-p{p}", base / f"cmp-dst-p{p}"
                try:
                    for dev, d in ((src.part(p), a), (dst.part(p), b)):
                        d.mkdir(parents=True)
                        sh("mcopy", "-s", "-n", "-m", "-i", dev, "::/", d,
                           env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
                    d = compare_trees(a, b, limit=5, meta=True)
                finally:
                    shutil.rmtree(a, ignore_errors=True)
                    shutil.rmtree(b, ignore_errors=True)
            else:
                ma = Mount(src.part(p), base / f"cmp-src-p{p}", cleanup, "ro,noload")
                try:
                    mb = Mount(dst.part(p), base / f"cmp-dst-p{p}", cleanup, "ro,noload")
                    try:
                        d = compare_trees(ma.at, mb.at, limit=5, meta=True)
                    finally:
                        mb.unmount()
                finally:
                    ma.unmount()
            if d:
                out[f"diff_{fs}"] = d
                identical = False
        out["files_identical"] = identical
    finally:
        src.detach()
    return out


# ---------------------------------------------------------------- report


def phase_table(phase: str, res: dict[str, dict], used: int) -> str:
    bytes_key = "bytes_added" if phase == "second" else ("bytes_stored" if phase == "full" else None)
    head = ["tool", "wall s", "CPU s", "peak RSS MiB"]
    if bytes_key:
        head.append("stored MB" if phase == "full" else "added MB")
    head.append("used MB/s")
    head += ["wall ÷ partclone"] + (["bytes ÷ partclone"] if bytes_key else [])
    if phase == "second":
        head += ["wall ÷ restic", "added ÷ restic"]
    if phase == "restore":
        head += ["e2fsck", "fsck.vfat", "files identical"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pc, rs = res.get("partclone", {}), res.get("restic", {})
    for key, label in TOOLS.items():
        r = res.get(key)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {label} | failed (see below) |" + " |" * (len(head) - 2))
            continue
        row = [label, f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['peak_rss_kib'] / 1024:,.1f}"]
        if bytes_key:
            row.append(fmt_mb(r.get(bytes_key)))
        row.append(f"{used / MB / r['wall_s']:,.0f}" if r["wall_s"] > 0 else "—")
        row.append(ratio(r["wall_s"], pc.get("wall_s")))
        if bytes_key:
            row.append(ratio(r.get(bytes_key), pc.get(bytes_key)))
        if phase == "second":
            row += [ratio(r["wall_s"], rs.get("wall_s")), ratio(r.get(bytes_key), rs.get(bytes_key))]
        if phase == "restore":
            c = r.get("check", {})
            row += [c.get("fsck_ext4", "—"), c.get("fsck_vfat", "—"),
                    {True: "yes", None: "not compared"}.get(c.get("files_identical"), "**NO**")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--disk", type=Path, help=f"test disk image (default {BASE}/disk.img, built if missing)")
    ap.add_argument("--size", default="4G", help="size of a disk to build (default 4G)")
    ap.add_argument("--only", default="", help=f"comma-separated tools ({','.join(TOOLS)}); default all")
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (repositories, images, logs)")
    ap.add_argument("--skip-build", action="store_true", help="don't cargo build lifeline-image")
    ap.add_argument("--no-compare", action="store_true", help="after restores only fsck, no file-by-file compare")
    cfg = ap.parse_args()
    cfg.only = [t for t in cfg.only.split(",") if t] or list(TOOLS)
    for t in cfg.only:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}; choose from {','.join(TOOLS)}")
    return cfg


def versions(tools: list[Tool]) -> dict:
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    out = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "lifeline_commit": git.stdout.strip()}
    for t in tools:
        try:
            out[t.key] = t.version()
        except Exception as e:
            out[t.key] = f"? ({e})"
    return out


def main() -> int:
    cfg = parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: loop devices, mounts, drop_caches")
    installed = ensure_peers()
    BASE.mkdir(parents=True, exist_ok=True)
    disk = cfg.disk or BASE / "disk.img"
    if not disk.exists():
        log(f"building the test disk {disk} ({cfg.size}) with {DISK_SCRIPT.name}")
        subprocess.run(["bash", DISK_SCRIPT, disk, cfg.size], check=True, stdin=subprocess.DEVNULL)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    cleanup = Cleanup()
    work = Path(tempfile.mkdtemp(prefix="run.", dir=BASE))
    if not cfg.keep:
        cleanup.push(f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
    log(f"work directory {work}")
    mnt = work / "mnt"
    results: dict = {"full": {}, "second": {}, "restore": {}}
    notes: list[str] = []
    info: dict = {"disk": str(disk), "installed": installed}
    tools: list[Tool] = []
    interrupted = False
    t_start = time.monotonic()
    try:
        # The run changes a copy; the built disk stays as it was for the next run.
        image = work / "disk.img"
        log(f"copying {disk} to {image}")
        sh("cp", "--sparse=always", "--reflink=auto", disk, image)
        info["disk_size"] = image.stat().st_size

        classes = {"partclone": Partclone, "dd": DdZstd, "restic": Restic, "lifeline": Lifeline}
        for key in cfg.only:
            if key == "lifeline":
                exe, why = find_lifeline(cfg, work)
                if exe is None:
                    msg = f"Lifeline skipped: {why}"
                    log(msg)
                    notes.append(msg)
                    continue
                Lifeline.bin = exe
            tool = classes[key](work)
            tool.setup()
            tools.append(tool)
        info["versions"] = versions(tools)

        src = Loop(image, cleanup, read_only=True)
        info["used"] = used_bytes(src, mnt, cleanup)
        used = info["used"]["used"]
        log(f"used bytes: {used / MB:,.1f} MB ({info['used']})")
        layout = sh("sgdisk", "-p", src.dev).stdout
        info["layout"] = layout

        # Phase 1: full backup.
        for tool in tools:
            log(f"full backup: {TOOLS[tool.key]}")
            step = Step(tool.logs, f"{tool.key}-backup1")
            before = tool.stored()
            try:
                drop_caches()
                tool.backup(src, step, 1)
                step.call(os.sync)
                r = step.result()
                r["bytes_stored"] = tool.stored() - before
                r["tool_info"] = tool.after_backup()
            except Exception as e:
                r = {"error": str(e)}
            results["full"][tool.key] = r
            log(f"  {TOOLS[tool.key]}: {short(r)}")
        src.detach()

        # Phase 2: ~1 % of the files change, then a second backup.
        log("changing ~1 % of the root's files")
        info["changes"] = mutate(image, mnt, cleanup)
        log(f"  {info['changes']}")
        src = Loop(image, cleanup, read_only=True)
        for tool in tools:
            log(f"second backup: {TOOLS[tool.key]}")
            step = Step(tool.logs, f"{tool.key}-backup2")
            before = tool.stored()
            try:
                drop_caches()
                tool.backup(src, step, 2)
                step.call(os.sync)
                r = step.result()
                r["bytes_added"] = tool.stored() - before
                r["bytes_stored_total"] = tool.stored()
                r["tool_info"] = tool.after_backup()
            except Exception as e:
                r = {"error": str(e)}
            results["second"][tool.key] = r
            log(f"  {TOOLS[tool.key]}: {short(r)}")
        src.detach()

        # Phase 3: restore onto a fresh zero-filled disk of the same size.
        for tool in tools:
            if "error" in results["second"].get(tool.key, {}):
                results["restore"][tool.key] = {"error": "no second backup to restore"}
                continue
            log(f"restore: {TOOLS[tool.key]}")
            target = work / f"restore-{tool.key}.img"
            with open(target, "wb") as f:
                f.truncate(info["disk_size"])
            dst = Loop(target, cleanup, read_only=False)
            step = Step(tool.logs, f"{tool.key}-restore")
            try:
                drop_caches()
                tool.restore(dst, step)
                step.call(os.sync)  # buffered writes to the device count until on disk
                r = step.result()
                r["check"] = check_restored(dst, image, mnt, cleanup) if not cfg.no_compare else \
                    fsck_only(dst)
                if isinstance(tool, Lifeline):
                    r["verify"] = tool.verify()
            except Exception as e:
                r = {"error": str(e)}
            finally:
                dst.detach()
                target.unlink(missing_ok=True)
            results["restore"][tool.key] = r
            log(f"  {TOOLS[tool.key]}: {short(r)}")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        cleanup.run()
    info["run_s"] = round(time.monotonic() - t_start, 1)
    if cfg.keep:
        log(f"kept {work}")

    used = info.get("used", {}).get("used", 0)
    titles = {"full": "Full backup", "second": "Second backup after ~1 % of the files changed",
              "restore": "Restore of the second backup onto a zero-filled disk"}
    print()
    if "used" in info:
        ch = info.get("changes", {})
        print(f"Disk {info['disk_size'] / GIB:.1f} GiB, {used / MB:,.1f} MB used (ext4 + FAT); "
              f"used MB/s = used bytes ÷ wall time; ratios: tool ÷ partclone+zstd (below 1: fewer seconds/bytes "
              f"than partclone+zstd)")
        if ch:
            print(f"Changes before the second backup: {ch['rewritten']} files rewritten, {ch['appended']} appended, "
                  f"{ch['deleted']} deleted, {ch['created']} created of {ch['files']:,} files; "
                  f"{ch['bytes_changed'] / MB:,.1f} MB written ({ch['bytes_deleted'] / MB:,.1f} MB deleted)")
    for phase in ("full", "second", "restore"):
        if results[phase]:
            print(f"\n### {titles[phase]}\n")
            print(phase_table(phase, results[phase], used) if used else json.dumps(results[phase], default=str))
    print()
    for n in notes:
        print(f"- {n}")
    if "partclone" in results["full"]:
        print("- partclone + zstd stores swap as its UUID and label only and restores it with mkswap, as "
              "Clonezilla does")
    for phase, res in results.items():
        for key, r in res.items():
            if "error" in r:
                print(f"- {phase} {TOOLS[key]} failed: {r['error'][:1500]}")
            for k, v in r.get("check", {}).items():
                if k.startswith("diff_") or k.endswith("_output"):
                    print(f"- restore {TOOLS[key]}: {k}: {v}")
    print(f"\nRun time {info['run_s']:.0f} s", flush=True)
    if cfg.json:
        cfg.json.write_text(json.dumps({"info": info, "results": results, "notes": notes,
                                        "config": {k: str(v) for k, v in vars(cfg).items()}},
                                       indent=1, default=str) + "\n")
        log(f"wrote {cfg.json}")
    return 130 if interrupted else 0


def fsck_only(dst: Loop) -> dict:
    dst.reread()
    out = {}
    for p in dst.parts():
        fs = fs_type(dst.part(p))
        if fs in ("ext4", "vfat"):
            r = sh(*(["e2fsck", "-fn"] if fs == "ext4" else ["fsck.vfat", "-n"]), dst.part(p), check=False)
            out[f"fsck_{fs}"] = "pass" if r.returncode == 0 else f"FAIL ({r.returncode})"
    out["files_identical"] = None
    return out


def short(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("processes", "tool_info")}


if __name__ == "__main__":
    sys.exit(main())
