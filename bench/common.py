"""What the benchmark scripts share: running a command (and recording it for RESULTS.md), logging."""

from __future__ import annotations

import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
VENV = ROOT / ".venv"
MOS = VENV / "bin" / "mos-xdp"
MOSPY = VENV / "bin" / "python"

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
