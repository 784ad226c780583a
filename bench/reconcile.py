#!/usr/bin/env python3
"""Reconciliation benchmark: Lifeline's reconciliation (deltas against the
mirror's copy, tree comparison) against rsync on the same inputs.

(a) A 1 GiB file of random data is replicated; capture is switched off
    (`lifeline-agent off`), 1 MiB of it is changed in 256 pieces of 4 KiB at
    random unaligned offsets (seeded), and capture is switched on again, which
    reconciles: the file goes as a delta. Measured: bytes the agent sent
    (status `bytes_sent` after − before), signature bytes it received (status
    `signature_bytes`), time from `on` until the receiver acknowledged
    everything (the mirror is then identical; checked byte for byte
    afterwards). rsync: `rsync -a --inplace --no-whole-file --stats` of the
    same change to an rsync daemon holding the original ("Total bytes sent",
    "Total bytes received", wall time). Then the same for a touch (new mtime,
    same content).
(b) A tree of 100,000 small files (100 directories of 1,000), replicated and
    unchanged: time from `lifeline-agent sync` until the reconciliation is
    complete (status `reconciliations` increments), warm (median of
    --repeat runs) and after dropping the page cache; rsync: `rsync -a
    --dry-run --stats` of the same tree to a daemon holding a copy.

(c) (optional, --only c) Where a delta starts to pay: files of 64 KiB, 256
    KiB, 1 MiB and 4 MiB (64 MiB of each, 16 to 1,000 files), 4 KiB changed
    in each while capture was off, reconciled once as deltas and once whole
    (the agent's threshold set by LIFELINE_DELTA_MIN_SIZE): bytes sent and
    received, time until acknowledged.

    python3 bench/reconcile.py [--only a,b,c] [--size-mib 1024] [--files 100000] [--json out.json]

Run as root (eBPF, loop devices). Each side has its own ext4 image (source,
and target + state), as in bench/realtime.py; the helpers come from
bench/lifeline_bench.py. The
page cache is dropped before each measurement of (a), for both tools alike.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from lifeline_bench import (BIN, KIB, MACHINE, MIB, Cleanup, Proc, Scratch, agent_cmd, agent_status, compare_trees,
                            drop_caches, fmt_bytes, free_port, log, machine_add, now, rand_file, ratio, same_bytes, sh,
                            start_receiver, start_rsyncd, wait_until)


class Lifeline:
    """A receiver and an agent watching `src`; state on the target filesystem."""

    def __init__(self, bin_dir: Path, src: Path, work: Path, procs: list[Proc]) -> None:
        self.bin, self.src, self.work, self.procs = bin_dir, src, work, procs
        self.store, self.creds, self.state = work / "store", work / "creds", work / "state"
        self.port = free_port()
        self.receiver: Proc | None = None
        self.agent: Proc | None = None

    def mirror(self) -> Path:
        return self.store / "mirror" / MACHINE / str(self.src).lstrip("/")

    def start(self, delta_min_size: int | None = None) -> None:
        machine_add(self.bin, self.store, self.creds)
        self.receiver = start_receiver(self.bin, self.store, self.port, self.work / "receiver.log", self.procs,
                                       timeout=30)
        cmd = agent_cmd(self.bin, self.port, self.creds, self.src, self.state, "--reconcile-every-s", "0")
        if delta_min_size is not None:
            os.environ["LIFELINE_DELTA_MIN_SIZE"] = str(delta_min_size)
        try:
            self.agent = Proc("lifeline-agent", cmd, self.work / "agent.log", self.procs)
        finally:
            os.environ.pop("LIFELINE_DELTA_MIN_SIZE", None)

    def stop(self) -> None:
        for p in (self.agent, self.receiver):
            if p:
                p.stop()
        self.agent = self.receiver = None

    def ctl(self, *args: str) -> str:
        return sh(self.bin / "lifeline-agent", *args, "--control", self.state / "control.sock").stdout

    def status(self) -> dict:
        if self.agent and not self.agent.alive():
            raise RuntimeError(f"lifeline-agent exited; see {self.agent.logfile}")
        return agent_status(self.bin, self.state) or {}

    def wait_synced(self, timeout: float) -> float:
        streak = 0

        def done() -> bool:
            nonlocal streak
            s = self.status()
            ok = s.get("connected") and s.get("initial_sync_done") and s.get("queue_depth") == 0
            streak = streak + 1 if ok else 0
            return streak >= 3

        return wait_until(done, timeout, "the agent's initial sync", 0.05)

    def wait_reconciled(self, before: dict, timeout: float, interval: float = 0.01) -> float:
        """Seconds until a reconciliation after `before` is complete and
        everything it queued is acknowledged."""
        return wait_until(lambda: (s := self.status()).get("reconciliations", 0) > before["reconciliations"]
                          and s.get("queue_depth") == 0, timeout, "the reconciliation", interval)

    def off(self) -> None:
        self.ctl("off")
        wait_until(lambda: self.status().get("capture") == "off", 10, "capture off")

    def reconcile(self, cmd: str, timeout: float, interval: float = 0.01) -> tuple[dict, float, dict]:
        """`cmd` ("on" or "sync"), then waits as `wait_reconciled` does:
        (status before, seconds, status after)."""
        before = self.status()
        t0 = now()
        self.ctl(cmd)
        self.wait_reconciled(before, timeout, interval)
        wall = now() - t0
        return before, wall, self.status()


class RsyncDaemon:
    def __init__(self, work: Path, procs: list[Proc]) -> None:
        self.dst = work / "rsync-dst"
        self.dst.mkdir(parents=True)
        self.port = free_port()
        self.proc = start_rsyncd(work, self.dst, self.port, procs)

    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.port}/bench/"

    def run(self, src: Path, *opts: str) -> dict:
        t = now()
        p = sh("rsync", *opts, "--stats", f"{src}/", self.url())
        wall = now() - t

        def num(label: str) -> int:
            m = re.search(rf"^{label}: ([\d,]+)", p.stdout, re.M)
            return int(m.group(1).replace(",", "")) if m else -1

        return {"wall_s": wall, "sent": num("Total bytes sent"), "received": num("Total bytes received")}


def keep_logs(cfg: argparse.Namespace, work: Path) -> None:
    if cfg.logs:
        dest = cfg.logs / work.name
        dest.mkdir(parents=True, exist_ok=True)
        for f in work.iterdir():
            if f.is_file():
                shutil.copy2(f, dest / f.name)


def wl_a(cfg: argparse.Namespace, base: Path, src_fs: Scratch, dst_fs: Scratch, bin_dir: Path,
         procs: list[Proc]) -> dict:
    src, work = src_fs.mnt / "a" / "src", dst_fs.mnt / "a"
    src.mkdir(parents=True)
    work.mkdir()
    size = cfg.size_mib * MIB
    big = src / "big.bin"
    log(f"(a) writing a {size // MIB} MiB random file")
    rand_file(big, size, random.Random(0xA))
    ll = Lifeline(bin_dir, src, work, procs)
    rs = RsyncDaemon(work, procs)
    try:
        ll.start()
        t = ll.wait_synced(900)
        log(f"(a) initial sync done in {t:.1f} s")
        if not same_bytes(big, ll.mirror() / "big.bin"):
            raise RuntimeError("the mirror differs after the initial sync")
        rs.run(src, "-a", "--inplace")  # rsync's copy of the original
        ll.off()
        rng = random.Random(0xB)
        pieces = cfg.pieces
        offsets = sorted(rng.sample(range(size - 4 * KIB), pieces))
        fd = os.open(big, os.O_WRONLY)
        for off in offsets:
            os.pwrite(fd, rng.randbytes(4 * KIB), off)
        os.close(fd)
        log(f"(a) changed {pieces} x 4 KiB at random offsets while capture was off")
        out: dict = {"file_mib": size // MIB, "changed_kib": pieces * 4}
        for case in ("change", "touch"):
            if case == "touch":
                ll.off()
                st = big.stat()
                os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns - 3600 * 10**9))
            drop_caches()
            before, wall, after = ll.reconcile("on", 900, 0.02)
            if not same_bytes(big, ll.mirror() / "big.bin"):
                raise RuntimeError(f"({case}) the mirror differs after the reconciliation")
            r = {
                "lifeline_sent": after["bytes_sent"] - before["bytes_sent"],
                "lifeline_received": after.get("signature_bytes", 0) - before.get("signature_bytes", 0),
                "lifeline_s": wall,
                "deltas": after.get("deltas", 0) - before.get("deltas", 0),
                "delta_fallbacks": after.get("delta_fallbacks", 0) - before.get("delta_fallbacks", 0),
            }
            drop_caches()
            rr = rs.run(src, "-a", "--inplace", "--no-whole-file")
            if not same_bytes(big, rs.dst / "big.bin"):
                raise RuntimeError(f"({case}) rsync's copy differs")
            r.update({"rsync_sent": rr["sent"], "rsync_received": rr["received"], "rsync_s": rr["wall_s"]})
            log(f"(a) {case}: Lifeline sent {r['lifeline_sent']:,} B, received {r['lifeline_received']:,} B "
                f"in {wall:.2f} s; rsync sent {rr['sent']:,} B, received {rr['received']:,} B in {rr['wall_s']:.2f} s")
            out[case] = r
        return out
    finally:
        ll.stop()
        rs.proc.stop()
        keep_logs(cfg, work)


def make_tree(root: Path, files: int) -> None:
    per_dir = 1000
    for d in range((files + per_dir - 1) // per_dir):
        dp = root / f"d{d:04d}"
        dp.mkdir()
        for i in range(min(per_dir, files - d * per_dir)):
            fd = os.open(dp / f"f{i:04d}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, b"file %d %d\n" % (d, i))
            os.close(fd)


def wl_b(cfg: argparse.Namespace, base: Path, src_fs: Scratch, dst_fs: Scratch, bin_dir: Path,
         procs: list[Proc]) -> dict:
    src, work = src_fs.mnt / "b" / "src", dst_fs.mnt / "b"
    src.mkdir(parents=True)
    work.mkdir()
    log(f"(b) making {cfg.files:,} files")
    make_tree(src, cfg.files)
    ll = Lifeline(bin_dir, src, work, procs)
    rs = RsyncDaemon(work, procs)
    try:
        ll.start()
        t = ll.wait_synced(1800)
        log(f"(b) initial sync done in {t:.1f} s")
        diffs = compare_trees(src, ll.mirror())
        if diffs:
            raise RuntimeError(f"the mirror differs: {diffs}")
        rs.run(src, "-a")
        out: dict = {"files": cfg.files}

        def lifeline_once() -> float:
            before, wall, after = ll.reconcile("sync", 600)
            out.setdefault("lifeline_sent_per_run", after["bytes_sent"] - before["bytes_sent"])
            return wall

        def rsync_once() -> float:
            return rs.run(src, "-a", "--dry-run")["wall_s"]

        for name, once in (("lifeline", lifeline_once), ("rsync", rsync_once)):
            once()  # warm-up
            warm = [once() for _ in range(cfg.repeat)]
            drop_caches()
            cold = once()
            out[f"{name}_warm_s"] = statistics.median(warm)
            out[f"{name}_warm_all_s"] = warm
            out[f"{name}_cold_s"] = cold
            log(f"(b) {name}: warm median {statistics.median(warm):.3f} s ({', '.join(f'{w:.3f}' for w in warm)}), "
                f"cold {cold:.3f} s")
        return out
    finally:
        ll.stop()
        rs.proc.stop()
        keep_logs(cfg, work)


def wl_c(cfg: argparse.Namespace, base: Path, src_fs: Scratch, dst_fs: Scratch, bin_dir: Path,
         procs: list[Proc]) -> dict:
    """(c) Where deltas start to pay: files of one size, 4 KiB changed in each
    while capture was off, sent as deltas (threshold 0) or whole (threshold
    above the size); bytes sent and time from `on` until acknowledged."""
    out: dict = {}
    for size in cfg.c_sizes:
        n = max(16, min(1000, (64 * MIB) // size))
        for mode, threshold in (("delta", 0), ("whole", 1 << 62)):
            name = f"c-{size // KIB}k-{mode}"
            src, work = src_fs.mnt / name / "src", dst_fs.mnt / name
            src.mkdir(parents=True)
            work.mkdir()
            rng = random.Random(size)
            for i in range(n):
                (src / f"f{i:04d}").write_bytes(rng.randbytes(size))
            ll = Lifeline(bin_dir, src, work, procs)
            try:
                ll.start(threshold)
                ll.wait_synced(600)
                ll.off()
                for i in range(n):
                    fd = os.open(src / f"f{i:04d}", os.O_WRONLY)
                    os.pwrite(fd, rng.randbytes(4 * KIB), rng.randrange(size - 4 * KIB))
                    os.close(fd)
                drop_caches()
                before, wall, after = ll.reconcile("on", 600, 0.02)
                diffs = compare_trees(src, ll.mirror())
                if diffs:
                    raise RuntimeError(f"({name}) the mirror differs: {diffs}")
                r = {"files": n, "sent": after["bytes_sent"] - before["bytes_sent"],
                     "received": after.get("signature_bytes", 0) - before.get("signature_bytes", 0),
                     "deltas": after.get("deltas", 0) - before.get("deltas", 0), "s": wall}
                out[f"{size}-{mode}"] = r
                log(f"(c) {n} files of {size // KIB} KiB, {mode}: sent {r['sent']:,} B, received "
                    f"{r['received']:,} B, {r['deltas']} deltas, {wall:.2f} s")
            finally:
                ll.stop()
                keep_logs(cfg, work)
    return out


def table(res: dict, cfg: argparse.Namespace) -> str:
    lines = ["| workload | metric | Lifeline | rsync | rsync ÷ Lifeline |", "|---|---|---|---|---|"]
    if "a" in res and "error" not in res["a"]:
        a = res["a"]
        for case, title in (("change", f"(a) {a['file_mib']} MiB file, {a['changed_kib']} KiB changed in "
                                       f"{a['changed_kib'] // 4} × 4 KiB"),
                            ("touch", f"(a) {a['file_mib']} MiB file, new mtime only")):
            r = a[case]
            lines.append(f"| {title} | bytes sent by the sender | {fmt_bytes(r['lifeline_sent'])} | "
                         f"{fmt_bytes(r['rsync_sent'])} | {ratio(r['rsync_sent'], r['lifeline_sent'], inf='—')} |")
            lines.append(f"| | bytes received by the sender (signature) | {fmt_bytes(r['lifeline_received'])} | "
                         f"{fmt_bytes(r['rsync_received'])} | {ratio(r['rsync_received'], r['lifeline_received'], inf='—')} |")
            lines.append(f"| | time until identical | {r['lifeline_s']:.2f} s | {r['rsync_s']:.2f} s | "
                         f"{ratio(r['rsync_s'], r['lifeline_s'], inf='—')} |")
    if "b" in res and "error" not in res["b"]:
        b = res["b"]
        title = f"(b) {b['files']:,} unchanged files"
        lines.append(f"| {title} | reconciliation, warm (median of {cfg.repeat}) | {b['lifeline_warm_s']:.3f} s | "
                     f"{b['rsync_warm_s']:.3f} s | {ratio(b['rsync_warm_s'], b['lifeline_warm_s'], inf='—')} |")
        lines.append(f"| | reconciliation, page cache dropped | {b['lifeline_cold_s']:.3f} s | "
                     f"{b['rsync_cold_s']:.3f} s | {ratio(b['rsync_cold_s'], b['lifeline_cold_s'], inf='—')} |")
    if len(lines) == 2:
        lines = []
    if "c" in res and "error" not in res["c"]:
        c = res["c"]
        if lines:
            lines.append("")
        lines.append("| (c) files × size, 4 KiB changed in each | sent as | bytes sent | bytes received | "
                     "time until acknowledged |")
        lines.append("|---|---|---|---|---|")
        for size in cfg.c_sizes:
            for mode in ("delta", "whole"):
                r = c.get(f"{size}-{mode}")
                if r:
                    lines.append(f"| {r['files']} × {size // KIB} KiB | {mode} | {fmt_bytes(r['sent'])} | "
                                 f"{fmt_bytes(r['received'])} | {r['s']:.2f} s |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="a,b", help="workloads to run (a,b,c; c: the delta threshold)")
    ap.add_argument("--size-mib", type=int, default=1024, help="(a) file size (default 1024)")
    ap.add_argument("--pieces", type=int, default=256, help="(a) 4 KiB pieces changed (default 256)")
    ap.add_argument("--files", type=int, default=100_000, help="(b) files in the tree (default 100,000)")
    ap.add_argument("--repeat", type=int, default=5, help="(b) warm runs per tool (default 5)")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--logs", type=Path, help="keep the tools' logs here (set RUST_LOG=debug for timings)")
    ap.add_argument("--image-gib", type=int, default=8, help="size of each sparse scratch image (default 8)")
    cfg = ap.parse_args()
    cfg.c_sizes = [64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB]
    if os.geteuid() != 0:
        sys.exit("run as root: the agent loads eBPF programs, and the benchmark mounts filesystems")
    for exe in ("lifeline-agent", "lifeline-receiver"):
        if not (BIN / exe).exists():
            sys.exit(f"{BIN / exe} is missing: run cargo build --release --bins")
    for tool in ("rsync", "losetup", "mkfs.ext4"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/setup.sh")
    cleanup = Cleanup()
    procs: list[Proc] = []
    results: dict = {}

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        base = Path(tempfile.mkdtemp(prefix="llreconcile."))
        cleanup.push(f"remove {base}", lambda: shutil.rmtree(base, ignore_errors=True))
        # A private copy of the binaries: others may rebuild target/ during the run.
        bin_dir = base / "bin"
        bin_dir.mkdir()
        for exe in ("lifeline-agent", "lifeline-receiver"):
            shutil.copy2(BIN / exe, bin_dir / exe)
        src_fs = Scratch(base, "src", cfg.image_gib, cleanup)
        dst_fs = Scratch(base, "dst", cfg.image_gib, cleanup)
        cleanup.push("stop processes", lambda: [p.stop() for p in list(procs)])
        for wl, fn in (("a", wl_a), ("b", wl_b), ("c", wl_c)):
            if wl not in cfg.only.split(","):
                continue
            try:
                results[wl] = fn(cfg, base, src_fs, dst_fs, bin_dir, procs)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                results[wl] = {"error": f"{type(e).__name__}: {e}"}
                log(f"({wl}) failed: {results[wl]['error']}")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); cleaning up")
    finally:
        cleanup.run()
    print(table(results, cfg))
    for wl, r in results.items():
        if "error" in r:
            print(f"\n({wl}) failed: {r['error']}")
    if cfg.json:
        cfg.json.write_text(json.dumps({"results": results, "kernel": platform.release(),
                                        "cpus": os.cpu_count()}, indent=2, default=str))
    return 0 if results and all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
