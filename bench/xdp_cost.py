"""The XDP program's own cost per frame, by verdict path, through BPF_PROG_TEST_RUN (no interface, no
sender: the program runs `repeat` times on one frame in the kernel, so the figure is the program and the
test-run loop only). Prints one JSON object: {case: ns per frame}. bench/compare.py runs it under two
builds of mos-xdp, alternating, to compare the program old against new in the same run.

    .venv/bin/python bench/xdp_cost.py [--repeat 2000000]

Works with either Python layout (``mos.xdp``, or the older ``mos.bpf``), so an old checkout's venv can run
this file from the new tree with PYTHONPATH pointing at the old tree.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time
from typing import Any, Dict

from common import ip_checksum

try:
    from mos import xdp as ctl  # type: ignore[attr-defined]
except ImportError:  # an older tree
    from mos import bpf as ctl  # type: ignore[attr-defined, no-redef]


def frame4(src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    l4 = (struct.pack("!HHHH", sport, dport, 8 + 18, 0) + bytes(18) if proto == 17 else
          struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + bytes(6))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + l4


def frame6(src: str, dst: str, sport: int, dport: int) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + bytes(6)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), 6, 64, socket.inet_pton(socket.AF_INET6, src),
                     socket.inet_pton(socket.AF_INET6, dst))
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x86\xdd" + ip + l4


CASES = {
    "drop, blocked prefix (IPv4 UDP)": frame4("10.231.9.2", "10.231.1.1", 17, 4000, 9),
    "pass, unmonitored port (IPv4 UDP)": frame4("10.231.1.2", "10.231.1.1", 17, 4000, 9),
    "steer, no socket (IPv4 TCP :80)": frame4("10.231.1.2", "10.231.1.1", 6, 40000, 80),
    "steer, no socket (IPv6 TCP :80)": frame6("fd00::2", "fd00::1", 40000, 80),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=2_000_000)
    args = ap.parse_args()
    prog = ctl.XdpProgram.load("lo", monitor_ports=[80])
    prog.block("10.231.9.0/24")
    out: Dict[str, Any] = {}
    for name, frame in CASES.items():
        ctl.prog_test_run(prog.prog_fd, frame, 1000)  # warm
        t = time.perf_counter()
        ctl.prog_test_run(prog.prog_fd, frame, args.repeat)
        out[name] = (time.perf_counter() - t) / args.repeat * 1e9
    prog.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
