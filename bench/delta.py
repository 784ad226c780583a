#!/usr/bin/env python3
"""Delta benchmark: lifeline-delta (example `lldelta`) against librsync's `rdiff`.

Creates a random base file and a copy with scattered in-place edits (default:
1 GiB, 1 MiB changed in 256 pieces of 4 KiB at random unaligned offsets,
seeded), runs `signature`, `delta` and `patch` of both tools on the same
inputs, checks that both patched outputs equal the new file, and prints a
markdown table: per tool the signature and delta sizes, the time of each step,
the total, and Lifeline/rdiff ratios.

    python3 bench/delta.py                    # 1 GiB, about a minute
    python3 bench/delta.py --size-mib 64      # quick run (edits scaled down)
    python3 bench/delta.py --lldelta-variant 4096:8 --rdiff-variant "-b 8192 -S 16"

All files are written just before use, so every step reads from the page
cache (for both tools alike); outputs are not fsynced (rdiff does not fsync
either). Python 3 standard library only; installs rdiff with apt-get if it is
missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lifeline_bench import KIB, MIB, REPO, log, rand_file

LLDELTA = REPO / "target" / "release" / "examples" / "lldelta"


def run(cmd: list[str | Path]) -> dict:
    """Runs one step; returns wall time, CPU time and stderr."""
    args = [str(c) for c in cmd]
    t = time.monotonic()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {err.strip()}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "stderr": err.strip()}


def ensure_rdiff() -> str:
    if shutil.which("rdiff") is None:
        log("rdiff missing: apt-get install -y rdiff")
        subprocess.run(["apt-get", "install", "-y", "rdiff"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run(["rdiff", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "rdiff"


def make_inputs(base: Path, new: Path, size: int, edits: int, piece: int, seed: int) -> None:
    rng = random.Random(seed)
    log(f"writing {size / MIB:.0f} MiB random base")
    rand_file(base, size, rng)
    shutil.copyfile(base, new)
    # Non-overlapping pieces at random (unaligned) offsets.
    starts: list[int] = []
    while len(starts) < edits:
        at = rng.randrange(0, size - piece + 1)
        if all(abs(at - s) >= piece for s in starts):
            starts.append(at)
    fd = os.open(new, os.O_WRONLY)
    try:
        for at in starts:
            os.pwrite(fd, rng.randbytes(piece), at)
    finally:
        os.close(fd)
    log(f"new file: {edits} pieces of {piece} bytes changed ({edits * piece / MIB:.2f} MiB)")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def same(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def bench_tool(name: str, steps: list[list], sig: Path, delta: Path, out: Path, new: Path) -> dict:
    """One run of the three steps. Dirty pages are written back before each
    step (untimed), so no step pays for the previous one's writeback."""
    r: dict = {"tool": name}
    for step, cmd in zip(("signature", "delta", "patch"), steps):
        os.sync()
        r[step] = run(cmd)
    r["sig_bytes"] = sig.stat().st_size
    r["delta_bytes"] = delta.stat().st_size
    if not same(out, new):
        raise RuntimeError(f"{name}: patched output differs from the new file")
    for p in (sig, delta, out):
        p.unlink()
    return r


def summarize(runs: list[dict]) -> dict:
    """Median time per step over the runs; sizes are the same in every run."""
    r = {"tool": runs[0]["tool"], "runs": runs}
    for key in ("sig_bytes", "delta_bytes"):
        assert len({x[key] for x in runs}) == 1, key
        r[key] = runs[0][key]
    for step in ("signature", "delta", "patch"):
        r[step] = {k: statistics.median(x[step][k] for x in runs) for k in ("wall_s", "cpu_s")}
        r[step]["stderr"] = runs[0][step]["stderr"]
    r["total_s"] = sum(r[s]["wall_s"] for s in ("signature", "delta", "patch"))
    r["cpu_s"] = sum(r[s]["cpu_s"] for s in ("signature", "delta", "patch"))
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="directory for the files (default: a new one under /tmp, removed at the end)")
    ap.add_argument("--size-mib", type=int, default=1024, help="base file size (default 1024)")
    ap.add_argument("--edits", type=int, help="changed pieces (default 256 per GiB, at least 1)")
    ap.add_argument("--piece-kib", type=int, default=4, help="size of each changed piece (default 4)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool, tools interleaved; the median is shown (default 3)")
    ap.add_argument("--lldelta-variant", action="append", default=[], metavar="BLOCK:STRONG",
                    help="also run lldelta with this block length and strong hash length (repeatable)")
    ap.add_argument("--rdiff-variant", action="append", default=[], metavar="ARGS",
                    help='also run rdiff with these signature options, e.g. "-b 8192 -S 16" (repeatable)')
    ap.add_argument("--skip-build", action="store_true", help="don't run cargo build first")
    ap.add_argument("--keep", action="store_true", help="keep the base and new files")
    ap.add_argument("--json", help="also write every number to this file")
    a = ap.parse_args()

    size = a.size_mib * MIB
    piece = a.piece_kib * KIB
    edits = a.edits if a.edits is not None else max(1, round(256 * size / (1024 * MIB)))
    if edits * piece * 2 > size:
        ap.error("too many edits for this size")
    rdiff_version = ensure_rdiff()
    if not a.skip_build:
        log("cargo build --release -p lifeline-delta --examples")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "lifeline-delta", "--examples"], cwd=REPO, check=True)

    own_dir = a.dir is None
    d = Path(tempfile.mkdtemp(prefix="lifeline-delta-bench-", dir="/tmp") if own_dir else a.dir)
    d.mkdir(parents=True, exist_ok=True)
    base, new = d / "base", d / "new"
    sig, delta, out = d / "sig", d / "delta", d / "out"
    results = []
    try:
        make_inputs(base, new, size, edits, piece, a.seed)
        tools: list[tuple[str, list[list]]] = []
        for v in [""] + a.lldelta_variant:
            opts = []
            if v:
                b, s = v.split(":")
                opts = ["--block-len", b, "--strong-len", s]
            tools.append((f"lldelta {v}".strip(), [
                [LLDELTA, "signature", *opts, base, sig],
                [LLDELTA, "delta", sig, new, delta],
                [LLDELTA, "patch", base, delta, out],
            ]))
        for v in [""] + a.rdiff_variant:
            opts = v.split()
            tools.append((f"rdiff {v}".strip(), [
                ["rdiff", "-f", *opts, "signature", base, sig],
                ["rdiff", "-f", "delta", sig, new, delta],
                ["rdiff", "-f", "patch", base, delta, out],
            ]))
        runs: dict[str, list[dict]] = {name: [] for name, _ in tools}
        for i in range(a.repeat):
            for name, steps in tools:
                log(f"run {i + 1}/{a.repeat}: {name}")
                runs[name].append(bench_tool(name, steps, sig, delta, out, new))
        results = [summarize(runs[name]) for name, _ in tools]
    finally:
        for p in (sig, delta, out) + (() if a.keep else (base, new)):
            p.unlink(missing_ok=True)
        if own_dir and not a.keep:
            shutil.rmtree(d, ignore_errors=True)

    def mib(n: int) -> str:
        return f"{n / MIB:.2f} MiB"

    def speed(s: float) -> str:
        return f"{size / 1e6 / s:.0f} MB/s"

    print(f"\n{a.size_mib} MiB base, {edits} × {a.piece_kib} KiB changed at random offsets (seed {a.seed}); "
          f"median of {a.repeat} runs; {cpu_model()}, {os.cpu_count()} CPUs; {rdiff_version}\n")
    cols = ["tool", "signature", "delta", "t signature", "t delta", "t patch", "total", "CPU",
            "signature speed", "delta speed"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print(f"| {r['tool']} | {mib(r['sig_bytes'])} | {mib(r['delta_bytes'])} | "
              f"{r['signature']['wall_s']:.2f} s | {r['delta']['wall_s']:.2f} s | {r['patch']['wall_s']:.2f} s | "
              f"{r['total_s']:.2f} s | {r['cpu_s']:.2f} s | "
              f"{speed(r['signature']['wall_s'])} | {speed(r['delta']['wall_s'])} |")
    ll = results[0]
    rd = next(r for r in results if r["tool"] == "rdiff")

    def ratio(key: str, sub: str | None = None) -> str:
        x, y = (ll[key], rd[key]) if sub is None else (ll[key][sub], rd[key][sub])
        return f"{x / y:.2f}×" if y else "-"

    print(f"| **Lifeline / rdiff** | {ratio('sig_bytes')} | {ratio('delta_bytes')} | "
          f"{ratio('signature', 'wall_s')} | {ratio('delta', 'wall_s')} | {ratio('patch', 'wall_s')} | "
          f"{ratio('total_s')} | {ratio('cpu_s')} | | |")
    print(f"\nEvery patched output was identical to the new file (cmp, {a.repeat} runs per tool).")
    print("\nlldelta's own report:")
    for step in ("signature", "delta", "patch"):
        print(f"  {ll[step]['stderr']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"size": size, "edits": edits, "piece": piece, "seed": a.seed,
                                            "rdiff": rdiff_version, "results": results}, indent=2))

    return 0


if __name__ == "__main__":
    sys.exit(main())
