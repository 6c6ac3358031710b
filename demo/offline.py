"""The offline demo: a capture built here (HTTP over TCP with the usual trouble), through the stack's apps.

The capture has several HTTP/1.1 connections, one with a request line split across segments sent out
of order with a retransmission, one with a lost server segment (a hole), one already in progress when
the capture starts, one reset, and IPv6. The demo runs what a user would type, ``mos-xdp run
apps/midstat.py --pcap F``, ``mos-xdp run apps/http_log.py --pcap F`` and ``mos-xdp streams F``, so a
newcomer sees reassembled connections and events. Building the capture needs scapy (a test and demo
dependency, not one of the library's).
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "apps"
STEP_TIMEOUT = 120  # seconds for each command over the small capture (it takes well under one)


class MissingScapy(Exception):
    """scapy is not installed: the demo's capture cannot be built."""

SERVER4, CLIENT4 = "192.0.2.80", "198.51.100.7"
SERVER6, CLIENT6 = "2001:db8::80", "2001:db8::7"


def _conn(ip: Any, cli: str, srv: str, sport: int, path: str, host: str, body: bytes, t0: float,
          *, split: bool = False, lose: bool = False, reset: bool = False,
          midstream: bool = False) -> List[Tuple[float, Any]]:
    """Packets of one HTTP exchange (scapy), with timestamps."""
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether

    pk: List[Tuple[float, Any]] = []
    cisn, sisn = random.randrange(1 << 32), random.randrange(1 << 32)
    t = [t0]

    def add(src: str, dst: str, sp: int, dp: int, flags: str, seq: int, ack: int, data: bytes = b"",
            opts: Optional[List[Any]] = None) -> None:
        t[0] += 0.001
        tcp = TCP(sport=sp, dport=dp, flags=flags, seq=seq % (1 << 32), ack=ack % (1 << 32), window=65535,
                  options=opts or [])
        # explicit MACs: scapy would otherwise try to resolve them (ARP on this machine's network)
        macs = ("02:00:00:00:00:01", "02:00:00:00:00:02") if src == cli else ("02:00:00:00:00:02", "02:00:00:00:00:01")
        pk.append((t[0], Ether(src=macs[0], dst=macs[1]) / ip(src=src, dst=dst) / tcp / data))

    c, s = cisn + 1, sisn + 1
    if not midstream:
        add(cli, srv, sport, 80, "S", cisn, 0, opts=[("MSS", 1460), ("WScale", 7), ("SAckOK", b"")])
        add(srv, cli, 80, sport, "SA", sisn, c, opts=[("MSS", 1460), ("WScale", 7), ("SAckOK", b"")])
        add(cli, srv, sport, 80, "A", c, s)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mos-xdp-demo\r\n\r\n".encode()
    if split:  # request line cut in three, sent out of order, one piece retransmitted
        a, b = req[:9], req[9:20]
        rest = req[20:]
        add(cli, srv, sport, 80, "PA", c + 9, s, b)
        add(cli, srv, sport, 80, "PA", c + 20, s, rest)
        add(cli, srv, sport, 80, "PA", c, s, a)
        add(cli, srv, sport, 80, "PA", c + 9, s, b)
    else:
        add(cli, srv, sport, 80, "PA", c, s, req)
    c += len(req)
    resp = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    segs = [resp[i : i + 1400] for i in range(0, len(resp), 1400)]
    off = 0
    for k, seg in enumerate(segs):
        if not (lose and k == 1):
            add(srv, cli, 80, sport, "A", s + off, c, seg)
        off += len(seg)
        add(cli, srv, sport, 80, "A", c, s + off)
    s += off
    if reset:
        add(cli, srv, sport, 80, "R", c, 0)
        return pk
    add(cli, srv, sport, 80, "FA", c, s)
    add(srv, cli, 80, sport, "FA", s, c + 1)
    add(cli, srv, sport, 80, "A", c + 1, s + 1)
    return pk


def build_demo_pcap(path: Path, seed: int = 7) -> Path:
    """Write the demo capture to ``path`` (deterministic for a given seed); MissingScapy without scapy."""
    if importlib.util.find_spec("scapy") is None:
        raise MissingScapy("scapy is not installed (the demo builds its capture with it): "
                           ".venv/bin/pip install scapy, or apt-get install python3-scapy")
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapWriter

    random.seed(seed)
    body = bytes(random.randrange(32, 127) for _ in range(6000))
    pk: List[Tuple[float, Any]] = []
    pk += _conn(IP, CLIENT4, SERVER4, 40001, "/index.html", "www.example.com", body, 1000.0)
    pk += _conn(IP, CLIENT4, SERVER4, 40002, "/split/request?x=1", "www.example.com", body[:3000], 1000.2,
                split=True)
    pk += _conn(IP, CLIENT4, SERVER4, 40003, "/lossy", "www.example.com", body, 1000.4, lose=True)
    pk += _conn(IP, CLIENT4, SERVER4, 40004, "/already/running", "www.example.com", body[:2000], 1000.6,
                midstream=True)
    pk += _conn(IP, CLIENT4, SERVER4, 40005, "/reset", "www.example.com", body[:1000], 1000.8, reset=True)
    pk += _conn(IPv6, CLIENT6, SERVER6, 40006, "/v6", "[2001:db8::80]", body[:2500], 1001.0)
    pk.sort(key=lambda x: x[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    w = PcapWriter(str(path), linktype=1, sync=True)
    for ts, p in pk:
        p.time = ts
        w.write(p)
    w.close()
    return path


def mos_xdp(*args: str) -> Tuple[List[str], Dict[str, str]]:
    """The command line of ``mos-xdp ARGS`` (the CLI module under this interpreter, the console script's
    code) and its environment.

    When this user may not reach the interpreter by its path (a venv whose interpreter lives under
    root's home, the demo run as nobody), the running binary is started as /proc/self/exe, which needs no
    access to the path, with this process's import path.
    """
    if os.access(sys.executable, os.X_OK):
        return [sys.executable, "-m", "mos.cli", *args], dict(os.environ)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return ["/proc/self/exe", "-m", "mos.cli", *args], env


def _step(title: str, *args: str) -> None:
    """Shows the command as a user would type it, then runs it with its output on ours."""
    print(f"\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"== {title}", flush=True)
    argv, env = mos_xdp(*args)
    r = subprocess.run(argv, env=env, timeout=STEP_TIMEOUT)
    if r.returncode != 0:
        raise RuntimeError(f"mos-xdp {' '.join(args)} exited {r.returncode}")


def run_offline(outdir: Optional[str] = None) -> int:
    """Builds the capture (in ``outdir``, kept, or a temporary directory) and runs the apps and
    ``mos-xdp streams`` over it; returns the exit code."""
    with tempfile.TemporaryDirectory(prefix="mos-demo-") as tmp:
        out = Path(outdir or tmp)
        pcap = str(build_demo_pcap(out / "demo.pcap"))
        for app in ("midstat.py", "http_log.py"):
            _step(f"mos-xdp run apps/{app} --pcap {pcap}", "run", str(APPS / app), "--pcap", pcap,
                  "--no-progress")
        streams = str(out / "streams")
        _step(f"mos-xdp streams {pcap} -o {streams}", "streams", pcap, "-o", streams, "--no-progress")
        _step(f"mos-xdp streams {pcap}", "streams", pcap, "--no-progress")
    return 0
