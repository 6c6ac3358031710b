"""What the benchmark scripts share: running a command (and recording it for RESULTS.md), timing a child
process, interleaved runs, medians, logging."""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
VENV = ROOT / ".venv"
MOS = VENV / "bin" / "mos-xdp"
MOSPY = VENV / "bin" / "python"
RESULTS = BENCH / "RESULTS.md"
SECTIONS = ("live", "compare", "semantics", "subscriptions", "paths", "nat")
"""The sections of RESULTS.md other scripts write between their markers; bench/run.py keeps them."""

commands_log: List[str] = []
"""The commands that produced the figures, in order, for the report."""


def logger(tag: str):  # type: ignore[no-untyped-def]
    """A function printing time-stamped progress lines on stderr."""

    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def sh(cmd: List[str], check: bool = True, timeout: float = 600, record: bool = False,
       **kw: Any) -> subprocess.CompletedProcess:
    """Run a command (output captured); a failure raises with the end of what it printed."""
    if record:
        commands_log.append(shlex.join(cmd))
    r = subprocess.run(cmd, timeout=timeout, text=True, capture_output=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-1500:]}")
    return r


def ip_checksum(header: bytes) -> int:
    """The Internet checksum of an (even-length) header whose checksum field is zero (RFC 1071)."""
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def med(xs: List[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(xs) if xs else float("nan")


def run_timed(cmd: List[str], timeout: float) -> Tuple[float, float, int, str, str]:
    """Wall seconds, CPU seconds (user + system, children included), max RSS KiB, stdout, stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        so, se = out.read(), err.read()
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}: {se[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, so, se


def interleaved_runs(name: str, cases: Sequence[str], runs: int, cmd_of: Callable[[str], List[str]],
                     timeout: float) -> Tuple[Dict[str, List[Tuple[float, float, int]]], Dict[str, Dict[str, Any]]]:
    """Each case's child ``runs`` times, the cases interleaved (a noisy machine slows them alike). A child
    prints a JSON line last, with ``run_s``. Returns per case its (run s, wall s, peak RSS bytes) runs, and
    its last JSON result; a failing child ends the benchmark with its last error line."""
    log = logger(name)
    out: Dict[str, List[Tuple[float, float, int]]] = {c: [] for c in cases}
    last: Dict[str, Dict[str, Any]] = {}
    for r in range(runs):
        for case in cases:
            try:
                wall, _cpu, rss_kb, so, _se = run_timed(cmd_of(case), timeout)
            except RuntimeError as e:
                raise SystemExit(f"{name}: {str(e).strip().splitlines()[-1]}") from None
            res = json.loads(so.strip().splitlines()[-1])
            out[case].append((res["run_s"], wall, rss_kb * 1024))
            last[case] = res
            log(f"run {r + 1}/{runs} {case}: {res['run_s']:.2f} s, {rss_kb / 1024:.0f} MiB")
    return out, last


def markers(name: str) -> Tuple[str, str]:
    """The begin and end markers of a RESULTS.md section."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def section_pattern(name: str) -> re.Pattern[str]:
    begin, end = markers(name)
    return re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)


def write_section(name: str, section: str, path: Path = RESULTS) -> None:
    """Replace the section ``name`` (``section`` includes its markers) of ``path``, or append it."""
    text = path.read_text() if path.exists() else ""
    pat = section_pattern(name)
    text = pat.sub(lambda _m: section, text, count=1) if pat.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def report_section(name: str, title: str, lines: List[str], note: str = "") -> None:
    """Print a benchmark's report and keep it as the section ``name`` of RESULTS.md, under ``title``, with
    the command that produced it and when (``note``: what the figures mean, in a paragraph after)."""
    for line in lines:
        print(line)
    begin, end = markers(name)
    cmd = shlex.join([".venv/bin/python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    body = [begin, f"## {title}", "", f"`{cmd}`, {time.strftime('%Y-%m-%d %H:%M')}:", "", "```text", *lines, "```"]
    if note:
        body += ["", note]
    write_section(name, "\n".join(body + [end]) + "\n")
