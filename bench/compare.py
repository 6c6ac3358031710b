"""Old against new: the same commands run by two builds of mos-xdp on the same packets, counted in
instructions under callgrind (a count does not depend on what else the machine does, unlike wall time on
these shared 2-core machines), split into start-up and per-packet work.

    .venv/bin/python bench/compare.py --old REV     # REV: a git revision, checked out and set up in
                                                    # bench/work/old-REV (its own .venv and build)
    .venv/bin/python bench/compare.py --old /path/to/checkout --packets 50000

The packets are the first N of ``bench/work/capture-full.pcap`` (``bash bench/run.sh --keep`` leaves it) or
of ``--capture``; start-up is measured on its first 200 packets, and per-packet work is the difference.
The report replaces the section between ``<!-- compare:begin -->`` and ``<!-- compare:end -->`` of
``bench/RESULTS.md`` (bench/run.py keeps that section when it rewrites the file).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from common import RESULTS, markers, write_section
from pcaptool import read_pcap

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"

BEGIN, END = markers("compare")
STARTUP_PACKETS = 200

COMMANDS: List[Tuple[str, List[str]]] = [
    ("mos-xdp streams", ["streams", "CAP", "--no-progress"]),
    # the engine's own work apart from checksum validation (a build from before it has none to turn off)
    ("mos-xdp streams, checksum off", ["streams", "CAP", "--no-progress", "--checksum", "off"]),
    ("mos-xdp app (no handler)", ["run", "bench/app_noop.py", "--pcap", "CAP", "--no-progress"]),
    ("mos-xdp app (CONN_NEW_DATA)", ["run", "bench/app_count.py", "--pcap", "CAP", "--no-progress"]),
    ("mos-xdp app (PKT_IN)", ["run", "bench/app_pktin.py", "--pcap", "CAP", "--no-progress"]),
]


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def head(src: Path, n: int, dst: Path) -> int:
    """The first n records of a classic pcap file into dst; returns how many there were."""
    with src.open("rb") as f, dst.open("wb") as out:
        hdr, _, records = read_pcap(f)
        out.write(hdr)
        k = 0
        for rh, data in itertools.islice(records, n):
            out.write(rh + data)
            k += 1
    return k


def checkout(old: str) -> Path:
    """A checkout with a built .venv: the directory given, or the revision set up under bench/work."""
    p = Path(old)
    if (p / ".venv" / "bin" / "mos-xdp").exists():
        return p.resolve()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", old], capture_output=True, text=True,
                         check=True).stdout.strip()
    d = WORK / f"old-{rev}"
    if not d.exists():
        log(f"checking out {rev} into {d}")
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(d), rev], check=True)
    if not (d / ".venv" / "bin" / "mos-xdp").exists():
        log(f"setting up {d} (its own .venv and engine build)")
        subprocess.run(["bash", str(d / "scripts" / "setup.sh")], check=True)
    return d


def instructions(tree: Path, argv: List[str], cap: Path) -> int:
    """Instructions callgrind counts for one run of tree's mos-xdp (the whole process)."""
    exe = tree / ".venv" / "bin"
    if "--checksum" in argv and "--checksum" not in subprocess.run(
            [str(exe / "mos-xdp"), argv[0], "--help"], capture_output=True, text=True, cwd=tree).stdout:
        i = argv.index("--checksum")
        argv = argv[:i] + argv[i + 2:]
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(exe / "python"),
           str(exe / "mos-xdp"), *[str(cap) if a == "CAP" else a for a in argv]]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise SystemExit(f"compare: {' '.join(cmd)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return int(m.group(1))


def xdp_costs(tree: Path, repeat: int) -> Dict[str, float]:
    """ns per frame of tree's XDP program on each path (bench/xdp_cost.py, run with tree's venv)."""
    r = subprocess.run([str(tree / ".venv" / "bin" / "python"), str(BENCH / "xdp_cost.py"), "--repeat", str(repeat)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(tree)))
    if r.returncode != 0:
        raise SystemExit(f"compare: xdp_cost.py failed for {tree}: {r.stderr.strip().splitlines()[-1:]}")
    return {k: float(v) for k, v in json.loads(r.stdout).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="a git revision, or a checkout with a built .venv")
    ap.add_argument("--new", default=str(ROOT), help="the checkout to compare (default: this one)")
    ap.add_argument("--capture", default=str(WORK / "capture-full.pcap"))
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--xdp-runs", type=int, default=7, help="alternating runs of bench/xdp_cost.py per build")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    src = Path(args.capture)
    if not src.exists():
        raise SystemExit(f"compare: {src} not found (bash bench/run.sh --keep makes it)")
    old, new = checkout(args.old), Path(args.new).resolve()
    WORK.mkdir(exist_ok=True)
    big, small = WORK / "compare-head.pcap", WORK / "compare-startup.pcap"
    n = head(src, args.packets, big)
    head(src, STARTUP_PACKETS, small)
    revs = {t: subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() for t in (old, new)}
    rows: List[Dict[str, float]] = []
    for label, argv in COMMANDS:
        c = {}
        for name, tree in (("old", old), ("new", new)):
            c[name + "_all"] = instructions(tree, argv, big)
            c[name + "_start"] = instructions(tree, argv, small)
            c[name + "_pkt"] = (c[name + "_all"] - c[name + "_start"]) / (n - STARTUP_PACKETS)
        log(f"{label}: per packet {c['old_pkt']:.0f} -> {c['new_pkt']:.0f}, "
            f"start-up {c['old_start'] / 1e6:.1f}M -> {c['new_start'] / 1e6:.1f}M")
        rows.append({"label": label, **c})  # type: ignore[dict-item]
    lines = [BEGIN, "## Old against new (instructions, callgrind)", "",
             f"`.venv/bin/python bench/compare.py --old {args.old} --packets {args.packets}`: the first "
             f"{n:,} packets of `{src.name}`, old = {revs[old]}, new = {revs[new]}. Start-up is the count on the "
             f"first {STARTUP_PACKETS} packets; per packet = (all - start-up) / the other packets. Counts are "
             "exact and repeatable (the same binary on the same input), unlike wall time on this machine.", "",
             "| command | per packet, old | per packet, new | new/old | start-up old (M) | start-up new (M) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['old_pkt']:.0f} | {r['new_pkt']:.0f} | {r['new_pkt'] / r['old_pkt']:.3f} | "
                     f"{r['old_start'] / 1e6:.1f} | {r['new_start'] / 1e6:.1f} |")
    runs: Dict[str, Dict[str, List[float]]] = {"old": {}, "new": {}}
    for _ in range(args.xdp_runs):
        for name, tree in (("old", old), ("new", new)):
            for case, ns in xdp_costs(tree, 2_000_000).items():
                runs[name].setdefault(case, []).append(ns)
    lines += ["", f"The XDP program on each path (`bench/xdp_cost.py`: BPF_PROG_TEST_RUN, 2,000,000 repetitions on "
              f"one frame; {args.xdp_runs} runs of each build, alternating; medians, ns per frame including the "
              "test-run loop; wall time, so noisier than the counts above):", "",
              "| path | old ns | new ns | new/old | runs old | runs new |", "| --- | ---: | ---: | ---: | --- | --- |"]
    for case in runs["old"]:
        o, nw = statistics.median(runs["old"][case]), statistics.median(runs["new"][case])
        lines.append(f"| {case} | {o:.1f} | {nw:.1f} | {nw / o:.3f} | "
                     f"{', '.join(f'{x:.0f}' for x in runs['old'][case])} | "
                     f"{', '.join(f'{x:.0f}' for x in runs['new'][case])} |")
        log(f"xdp {case}: {o:.1f} -> {nw:.1f} ns")
    lines.append(END)
    section = "\n".join(lines) + "\n"
    path = Path(args.results)
    write_section("compare", section, path)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
