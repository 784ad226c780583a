#!/usr/bin/env python3
"""Per-filesystem imaging benchmark (issue 5): Lifeline (lifeline-image)
against partclone.<fs> | zstd on bare filesystem volumes (no partition table).

For each filesystem (default ntfs, exfat, xfs, btrfs, plus ext4 and vfat as
references) a 2 GiB volume is built once and cached under
/var/tmp/lifeline-bench/fs/<fs>.img: mkfs, 1 GiB of incompressible garbage
written, synced and deleted, then ~600 MB (30 %) of mixed files (Debian
minbase tree, random "photos", generated text, zero-heavy "VM images"), all
from fixed seeds. Then, on a read-only loop device with direct I/O and after
dropping the page cache:

  1. partclone.<fs> -c -s DEV -o - | zstd -T0 -3 > out.zst
  2. lifeline-image backup into a fresh repository (and info --json: the
     reader it picked, used-blocks or every-block and why)
  3. lifeline-image restore onto a zero-filled 2 GiB volume, the filesystem's
     checker on it and a file-by-file compare with the source (both mounted
     read-only)

    python3 bench/imaging_fs.py [--filesystems ntfs,exfat,xfs,btrfs,ext4,vfat]
                                [--json out.json] [--keep] [--rebuild] [--skip-build]

The helpers (loop devices, mounts, cleanup, tree compare, data generators)
come from bench/lifeline_bench.py; timed pipelines and building
lifeline-image from bench/imaging.py. Run as root; see
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imaging as im
from imaging import Lifeline, Step
from lifeline_bench import (GIB, KIB, MB, MIB, Cleanup, Loop, Mount, compare_trees, drop_caches, fmt_mb, log,
                            rand_file, ratio, sh, sparse_ish, text_file, tree_bytes)

FS_BASE = im.BASE / "fs"
SIZE = 2 * GIB
GARBAGE = 16  # files of 64 MiB: 1 GiB of deleted garbage
BUILD_VERSION = 1  # bump to invalidate cached volumes
TARBALL_GLOB = "/var/cache/lifeline-bench/debian-*-minbase.tar"

# How each filesystem is made, mounted, filled and checked.
#   copy: "cp" (cp -a, everything), "rsync-l" (files, dirs, symlinks), "rsync" (files and dirs), "mtools"
FILESYSTEMS: dict[str, dict] = {
    "ntfs": {"mkfs": ["mkfs.ntfs", "-F", "-f", "-q"], "type": "ntfs-3g", "rw": "", "ro": "ro",
             "check": ["ntfsfix", "-n"], "partclone": "partclone.ntfs", "copy": "rsync-l", "pkg": "ntfs-3g"},
    "exfat": {"mkfs": ["mkfs.exfat"], "type": "exfat-fuse", "rw": "", "ro": "ro",
              "check": ["fsck.exfat", "-n"], "partclone": "partclone.exfat", "copy": "rsync",
              "pkg": "exfatprogs"},
    "xfs": {"mkfs": ["mkfs.xfs", "-f", "-K", "-q"], "type": "xfs", "rw": "", "ro": "ro,norecovery,nouuid",
            "check": ["xfs_repair", "-n"], "partclone": "partclone.xfs", "copy": "cp", "pkg": "xfsprogs"},
    "btrfs": {"mkfs": ["mkfs.btrfs", "-f", "-K", "-q"], "type": "btrfs", "rw": "nodiscard", "ro": "ro",
              "check": ["btrfs", "check", "--readonly"], "partclone": "partclone.btrfs", "copy": "cp",
              "pkg": "btrfs-progs"},
    "ext4": {"mkfs": ["mkfs.ext4", "-F", "-q", "-E", "nodiscard"], "type": "ext4", "rw": "", "ro": "ro,noload",
             "check": ["e2fsck", "-fn"], "partclone": "partclone.ext4", "copy": "cp", "pkg": "e2fsprogs"},
    "vfat": {"mkfs": ["mkfs.vfat", "-F", "32"], "type": None, "rw": "", "ro": "",
             "check": ["fsck.vfat", "-n"], "partclone": "partclone.fat", "copy": "mtools", "pkg": "dosfstools"},
}
DEFAULT = "ntfs,exfat,xfs,btrfs,ext4,vfat"
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


class FsMount(Mount):
    """imaging.Mount with a filesystem type (mount -t ntfs-3g / exfat-fuse
    call the FUSE helpers); after unmounting, waits until the FUSE daemon has
    let go of the device."""

    def __init__(self, dev: str, at: Path, cleanup: Cleanup, fstype: str, opts: str) -> None:
        at.mkdir(parents=True, exist_ok=True)
        self.at, self.dev = at, dev
        sh("mount", "-t", fstype, *(["-o", opts] if opts else []), dev, at)
        self.cleanup = cleanup
        self._undo = cleanup.push(f"unmount {at}", self._umount)

    def _umount(self) -> None:
        super()._umount()
        wait_unused(self.dev)


def wait_unused(dev: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.close(os.open(dev, os.O_RDONLY | os.O_EXCL))
            return
        except OSError:
            time.sleep(0.1)
    log(f"warning: {dev} still busy {timeout:.0f} s after unmount")


# ---------------------------------------------------------------- content


def build_content(cleanup: Cleanup) -> Path:
    """The ~600 MB tree copied onto every volume, built once (fixed seeds)."""
    content = FS_BASE / "content"
    marker = FS_BASE / "content.done"
    if marker.exists() and marker.read_text().strip() == str(BUILD_VERSION):
        return content
    shutil.rmtree(content, ignore_errors=True)
    tars = sorted(Path("/").glob(TARBALL_GLOB.lstrip("/")))
    debian = content / "debian"
    debian.mkdir(parents=True)
    if tars:
        log(f"extracting {tars[0]}")
        sh("tar", "-xpf", tars[0], "--numeric-owner", "-C", debian)
    else:  # no cached debootstrap tarball: a copy of part of this machine's /usr
        log("no debootstrap tarball cached (bench/imaging-disk.sh makes one): copying /usr/share/doc instead")
        sh("cp", "-a", "/usr/share/doc", debian)
    rng = random.Random(5005)
    data = content / "data"
    for d in ("photos", "archives", "docs", "logs", "vm"):
        (data / d).mkdir(parents=True)
    total = 0
    i = 0
    while total < 190 * MB:  # incompressible: 64 KiB - 6 MiB
        n = rng.randint(64 * KIB, 6 * MIB)
        rand_file(data / ("photos" if i % 3 else "archives") / f"file-{i:04d}.{'jpg' if i % 3 else 'zip'}", n, rng)
        total += n
        i += 1
    total = 0
    i = 0
    while total < 90 * MB:  # compressible text and logs: 2 KiB - 1 MiB
        n = rng.randint(2 * KIB, MIB)
        text_file(data / ("logs" if i % 4 == 0 else "docs") / f"text-{i:04d}.{'log' if i % 4 == 0 else 'txt'}", n,
                  rng, log_style=i % 4 == 0)
        total += n
        i += 1
    for i in range(6):  # 120 MiB zero-heavy
        sparse_ish(data / "vm" / f"vm-{i}.img", 20 * MIB, rng)
    marker.write_text(f"{BUILD_VERSION}\n")
    return content


def write_garbage(d: Path, seed: int) -> int:
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(GARBAGE):
        rand_file(d / f"garbage-{i:02d}.bin", 64 * MIB, rng)
    return GARBAGE * 64 * MIB


# ---------------------------------------------------------------- volumes


def volume(fs: str, content: Path, cleanup: Cleanup, rebuild: bool) -> tuple[Path, dict]:
    """The cached volume of fs (built if missing) and its build record."""
    spec = FILESYSTEMS[fs]
    img, meta = FS_BASE / f"{fs}.img", FS_BASE / f"{fs}.json"
    if not rebuild and img.exists() and meta.exists():
        rec = json.loads(meta.read_text())
        if rec.get("version") == BUILD_VERSION:
            return img, rec
    log(f"{fs}: building the 2 GiB volume {img}")
    t = time.monotonic()
    tmp = FS_BASE / f"{fs}.img.tmp"
    tmp.unlink(missing_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(SIZE)
    rec: dict = {"version": BUILD_VERSION, "fs": fs, "size": SIZE}
    loop = Loop(tmp, cleanup, read_only=False, direct_io=False)
    try:
        sh(*spec["mkfs"], loop.dev)
        if spec["copy"] == "mtools":
            fill_vfat(loop.dev, content, rec)
        else:
            m = FsMount(loop.dev, FS_BASE / f"mnt-build-{fs}", cleanup, spec["type"], spec["rw"])
            try:
                rec["garbage_bytes"] = write_garbage(m.at / "garbage", 777)
                os.sync()
                shutil.rmtree(m.at / "garbage")
                os.sync()
                if spec["copy"] == "cp":
                    sh("cp", "-a", f"{content}/.", m.at)
                else:  # FUSE filesystems: no device nodes; exFAT: no symlinks, owners or modes either
                    flags = "-rlt" if spec["copy"] == "rsync-l" else "-rt"
                    p = sh("rsync", flags, "--no-specials", "--no-devices", f"{content}/", f"{m.at}/", check=False)
                    if p.returncode not in (0, 23, 24):
                        raise RuntimeError(f"rsync to {fs} failed ({p.returncode}): {p.stderr[-1500:]}")
                    skipped = [line for line in p.stderr.splitlines()
                               if line.strip() and not line.startswith("rsync error:")]
                    rec["copy_skipped"] = len(skipped)
                    rec["copy_skipped_examples"] = skipped[:5]
                os.sync()
                st = os.statvfs(m.at)
                rec["used"] = (st.f_blocks - st.f_bfree) * st.f_frsize
                rec["content_bytes"] = tree_bytes(m.at)
            finally:
                m.unmount()
        r = sh(*spec["check"], loop.dev, check=False)
        rec["check"] = "pass" if r.returncode == 0 else f"FAIL ({r.returncode})"
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(spec['check'])} on the new {fs} volume failed: "
                               f"{(r.stdout + r.stderr)[-1500:]}")
    finally:
        loop.detach()
    rec["allocated_bytes"] = tmp.stat().st_blocks * 512
    rec["build_s"] = round(time.monotonic() - t, 1)
    tmp.rename(img)
    meta.write_text(json.dumps(rec, indent=1) + "\n")
    log(f"{fs}: built in {rec['build_s']} s, {rec['used'] / MB:,.1f} MB used, "
        f"{rec['allocated_bytes'] / MB:,.0f} MB of the image file written")
    return img, rec


def fill_vfat(dev: str, content: Path, rec: dict) -> None:
    """FAT32 without a kernel driver: garbage and content copied with mtools."""
    g = FS_BASE / "garbage-vfat"
    shutil.rmtree(g, ignore_errors=True)
    try:
        rec["garbage_bytes"] = write_garbage(g, 777)
        sh("mcopy", "-s", "-i", dev, g, "::/", env=MTOOLS_ENV)
        sh("mdeltree", "-i", dev, "::/garbage-vfat", env=MTOOLS_ENV)
    finally:
        shutil.rmtree(g, ignore_errors=True)
    # Only regular files: mcopy would follow symlinks (some dangle) and clash on case.
    p = sh("mcopy", "-s", "-D", "oO", "-i", dev, content / "data", "::/", env=MTOOLS_ENV, check=False)
    q = sh("mcopy", "-s", "-D", "oO", "-i", dev, content / "debian" / "usr", "::/", env=MTOOLS_ENV, check=False)
    text = (p.stderr + "\n" + q.stderr).replace("Could not get geometry of device (Inappropriate ioctl for device)", "\n")
    skipped = [line for line in text.splitlines() if line.strip()]
    rec["copy_skipped"] = len(skipped)
    rec["copy_skipped_examples"] = skipped[:5]
    rec["used"] = im.fat_used(dev)
    rec["content_bytes"] = None


# ---------------------------------------------------------------- one filesystem


def partclone_used(logfile: Path) -> int | None:
    """partclone's 'Space in use' (or used blocks × block size) from its log."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return None
    used = bs = None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, w = k.strip().lower(), v.split()
        if k == "space in use" and "=" in v:  # "642.5 MB = 156866 Blocks"
            used = int(v.split("=")[1].split()[0])
        elif k == "block size" and w:  # "4096 Byte"
            bs = int(w[0])
    if used is not None and bs is not None:
        return used * bs
    return None


def lifeline_part(info: object) -> dict:
    if not isinstance(info, dict) or not info.get("partitions"):
        return {"mode": "?", "info": str(info)[:500]}
    c = info["partitions"][0].get("content", {})
    return {"mode": c.get("mode"), "fs": c.get("fs"), "variant": c.get("variant"), "reason": c.get("reason"),
            "image_bytes": info.get("stats", {}).get("image_bytes"), "partitions": len(info["partitions"]),
            "warnings": info.get("warnings")}


def bench_fs(fs: str, img: Path, vol: dict, work: Path, lifeline_bin: Path | None, cleanup: Cleanup,
             compare: bool) -> dict:
    spec = FILESYSTEMS[fs]
    d = work / fs
    logs = d / "logs"
    logs.mkdir(parents=True)
    res: dict = {"volume": vol}
    src = Loop(img, cleanup, read_only=True)
    try:
        # partclone + zstd
        step = Step(logs, "partclone")
        out = d / "partclone.pcl.zst"
        pclog = logs / "partclone.log"
        try:
            drop_caches()
            step.pipeline([[spec["partclone"], "-q", "-c", "-s", src.dev, "-o", "-", "-L", pclog],
                           ["zstd", "-q", "-T0", "-3"]], stdout=out)
            step.call(os.sync)
            r = step.result()
            r["bytes_stored"] = out.stat().st_size
            r["bytes_read"] = partclone_used(pclog)
        except Exception as e:
            r = {"error": str(e)}
        res["partclone"] = r
        log(f"  {fs} partclone: {im.short(r)}")
        out.unlink(missing_ok=True)

        # Lifeline
        if lifeline_bin is None:
            res["lifeline"] = {"error": "lifeline-image not available"}
            return res
        tool = Lifeline(d)
        tool.logs = logs
        try:
            tool.setup()
            step = Step(logs, "lifeline")
            drop_caches()
            tool.backup(src, step, 1)
            step.call(os.sync)
            r = step.result()
            r["bytes_stored"] = tool.stored()
            r["tool_info"] = tool.after_backup()
            r["reader"] = lifeline_part(r["tool_info"])
            r["bytes_read"] = r["reader"].get("image_bytes")
        except Exception as e:
            r = {"error": str(e)}
        res["lifeline"] = r
        log(f"  {fs} Lifeline: {im.short(r)}")
        if "error" in r:
            return res

        # Restore onto a zero-filled volume, check, compare.
        target = d / "restore.img"
        with open(target, "wb") as f:
            f.truncate(SIZE)
        dst = Loop(target, cleanup, read_only=False)
        try:
            step = Step(logs, "lifeline-restore")
            rr: dict = {}
            try:
                drop_caches()
                tool.restore(dst, step)
                step.call(os.sync)
                rr = step.result()
                c = sh(*spec["check"], dst.dev, check=False)
                rr["check"] = "pass" if c.returncode == 0 else f"FAIL ({c.returncode})"
                if c.returncode:
                    rr["check_output"] = (c.stdout + c.stderr)[-1500:]
                if compare:
                    rr["diff"] = compare_volumes(fs, src.dev, dst.dev, d, cleanup)
                    rr["files_identical"] = not rr["diff"]
                rr["verify"] = tool.verify()
            except Exception as e:
                rr["error"] = str(e)
            res["restore"] = rr
            log(f"  {fs} restore: {im.short(rr)}")
        finally:
            dst.detach()
            target.unlink(missing_ok=True)
    finally:
        src.detach()
    return res


def compare_volumes(fs: str, a: str, b: str, d: Path, cleanup: Cleanup) -> list[str]:
    spec = FILESYSTEMS[fs]
    if spec["copy"] == "mtools":  # as imaging.check_restored: copy both trees out
        ta, tb = d / "cmp-src", d / "cmp-dst"
        try:
            for dev, t in ((a, ta), (b, tb)):
                t.mkdir(parents=True)
                sh("mcopy", "-s", "-n", "-m", "-i", dev, "::/", t, env=MTOOLS_ENV)
            return compare_trees(ta, tb, limit=5, meta=True)
        finally:
            shutil.rmtree(ta, ignore_errors=True)
            shutil.rmtree(tb, ignore_errors=True)
    ma = FsMount(a, d / "cmp-src", cleanup, spec["type"], spec["ro"])
    try:
        mb = FsMount(b, d / "cmp-dst", cleanup, spec["type"], spec["ro"])
        try:
            return compare_trees(ma.at, mb.at, limit=5, meta=True)
        finally:
            mb.unmount()
    finally:
        ma.unmount()


# ---------------------------------------------------------------- report


def verdict(x: float | None, limit: float) -> str:
    return "" if x is None else (" ✓" if x <= limit else " ✗")


def table(results: dict[str, dict]) -> str:
    head = ["fs", "used MB", "partclone wall s", "CPU s", "stored MB", "read MB",
            "Lifeline wall s", "CPU s", "peak RSS MiB", "stored MB", "read MB", "reader",
            "wall ÷ partclone (≤ 0.6)", "bytes ÷ partclone (≤ 1)", "restore check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fs, res in results.items():
        if "error" in res:
            lines.append(f"| {fs} | volume not built: {res['error'][:200]} |" + " |" * (len(head) - 2))
            continue
        vol, pc, ll, rs = res["volume"], res.get("partclone", {}), res.get("lifeline", {}), res.get("restore", {})
        row = [fs, fmt_mb(vol.get("used"))]
        if "error" in pc:
            row += ["failed", "", "", ""]
        else:
            row += [f"{pc['wall_s']:.1f}", f"{pc['cpu_s']:.1f}", fmt_mb(pc["bytes_stored"]), fmt_mb(pc.get("bytes_read"))]
        if "error" in ll:
            row += ["failed", "", "", "", "", ""]
        else:
            rd = ll.get("reader", {})
            reader = f"{rd.get('fs')} used-blocks" if rd.get("mode") == "used-blocks" else \
                f"**{rd.get('mode')}**: {rd.get('reason')}"
            row += [f"{ll['wall_s']:.1f}", f"{ll['cpu_s']:.1f}", f"{ll['peak_rss_kib'] / 1024:,.0f}",
                    fmt_mb(ll["bytes_stored"]), fmt_mb(ll.get("bytes_read")), reader]
        ok = "error" not in pc and "error" not in ll
        w = ll["wall_s"] / pc["wall_s"] if ok and pc["wall_s"] else None
        b = ll["bytes_stored"] / pc["bytes_stored"] if ok and pc["bytes_stored"] else None
        row += [ratio(ll.get("wall_s"), pc.get("wall_s")) + verdict(w, 0.6),
                ratio(ll.get("bytes_stored"), pc.get("bytes_stored")) + verdict(b, 1.0)]
        if not rs:
            row.append("—")
        elif "error" in rs:
            row.append("**error**")
        else:
            ident = {True: "files identical", False: "**files differ**", None: "not compared"}[rs.get("files_identical")]
            row.append(f"{'checker ' + rs.get('check', '?')}, {ident}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filesystems", default=DEFAULT, help=f"comma-separated, among {','.join(FILESYSTEMS)}")
    ap.add_argument("--json", type=Path, help="write all results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (repositories, logs)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached volumes")
    ap.add_argument("--skip-build", action="store_true", help="don't cargo build lifeline-image")
    ap.add_argument("--no-compare", action="store_true", help="after a restore only run the checker")
    cfg = ap.parse_args()
    fss = [f for f in cfg.filesystems.split(",") if f]
    for f in fss:
        if f not in FILESYSTEMS:
            ap.error(f"unknown filesystem {f!r}; choose from {','.join(FILESYSTEMS)}")
    if os.geteuid() != 0:
        sys.exit("run as root: loop devices, mounts, drop_caches")
    installed = im.ensure_peers()
    need = {FILESYSTEMS[f]["partclone"]: "partclone" for f in fss}
    need.update({FILESYSTEMS[f]["check"][0]: FILESYSTEMS[f]["pkg"] for f in fss})
    need.update({"ntfs-3g": "ntfs-3g", "mount.exfat-fuse": "exfat-fuse", "rsync": "rsync"})
    missing = sorted({pkg for exe, pkg in need.items() if shutil.which(exe) is None})
    if missing:
        log(f"installing missing packages: apt-get install -y {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        installed += missing
    FS_BASE.mkdir(parents=True, exist_ok=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    cleanup = Cleanup()
    work = Path(tempfile.mkdtemp(prefix="fsrun.", dir=im.BASE))
    if not cfg.keep:
        cleanup.push(f"remove {work}", lambda: shutil.rmtree(work, ignore_errors=True))
    log(f"work directory {work}")
    results: dict[str, dict] = {}
    info: dict = {"installed": installed, "size": SIZE}
    notes: list[str] = []
    interrupted = False
    t_start = time.monotonic()
    try:
        exe, why = im.find_lifeline(cfg, work)
        if exe is None:
            notes.append(f"Lifeline skipped: {why}")
            log(notes[-1])
        Lifeline.bin = exe
        vs = im.versions([])
        if exe is not None:
            vs["lifeline"] = Lifeline(work / "version").version()
        vs["partclone"] = (sh("partclone.ext4", "-v", check=False).stdout.strip().splitlines() or ["?"])[0]
        vs["zstd"] = sh("zstd", "--version").stdout.strip()
        info["versions"] = vs
        content = build_content(cleanup)
        vols = {}
        for fs in fss:
            try:
                vols[fs] = volume(fs, content, cleanup, cfg.rebuild)
            except Exception as e:
                results[fs] = {"error": str(e)}
                log(f"{fs}: volume not built: {e}")
        for fs in fss:
            if fs not in vols:
                continue
            img, vol = vols[fs]
            log(f"{fs}: benchmark")
            results[fs] = bench_fs(fs, img, vol, work, exe, cleanup, not cfg.no_compare)
            if not cfg.keep:
                shutil.rmtree(work / fs, ignore_errors=True)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        cleanup.run()
    info["run_s"] = round(time.monotonic() - t_start, 1)
    if cfg.keep:
        log(f"kept {work}")

    print(f"\n2 GiB volumes, each with 1 GiB of deleted garbage under ~600 MB of files; page cache dropped "
          f"before each run; read-only loop devices with direct I/O. Stored: partclone's .zst / Lifeline's "
          f"repository; read: partclone's used blocks / Lifeline's image_bytes; ✓/✗: issue 5's targets "
          f"(Lifeline wall ≤ 0.6× and bytes ≤ 1× partclone + zstd)\n")
    print(table(results))
    print()
    for n in notes:
        print(f"- {n}")
    for fs, res in results.items():
        if "error" in res:
            continue
        vol = res["volume"]
        if vol.get("copy_skipped"):
            print(f"- {fs}: {vol['copy_skipped']} files or symlinks the filesystem cannot hold were not copied (e.g. "
                  f"{'; '.join(vol.get('copy_skipped_examples', [])[:2])})")
        for k in ("partclone", "lifeline", "restore"):
            r = res.get(k, {})
            if "error" in r:
                print(f"- {fs} {k} failed: {r['error'][:1500]}")
        rd = res.get("lifeline", {}).get("reader", {})
        if rd.get("mode") and rd.get("mode") != "used-blocks":
            print(f"- {fs}: lifeline-image imaged every block: {rd.get('reason')}")
        rs = res.get("restore", {})
        if rs.get("diff"):
            print(f"- {fs} restore: differences: {rs['diff']}")
        if rs.get("check_output"):
            print(f"- {fs} restore: checker output: {rs['check_output']}")
        if rs.get("verify", {}).get("rc"):
            print(f"- {fs} restore: lifeline-image verify failed: {rs['verify']}")
    print(f"\nRun time {info['run_s']:.0f} s", flush=True)
    if cfg.json:
        cfg.json.write_text(json.dumps({"info": info, "results": results, "notes": notes,
                                        "config": {k: str(v) for k, v in vars(cfg).items()}},
                                       indent=1, default=str) + "\n")
        log(f"wrote {cfg.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
