"""The active middlebox on the live path: ``apps/nat.py`` against Linux's own NAT, and a reset's latency.

    .venv/bin/python bench/nat.py [--runs 3] [--seconds 5] [--conns 300]     # as root

In namespaces it creates (``moslb-*``, addresses in 10.231.0.0/16 only inside them, deleted at the end):
``c`` (client) --veth-- ``m`` (the box) --veth-- ``s`` (server), the end hosts set as the live path needs
(``tx off tso off gso off gro on``). Configurations of the box, interleaved run by run:

* ``kernel``: Linux forwarding (``ip_forward=1``, m's veths addressed, routes on c and s);
* ``kernel NAT``: the same plus nftables masquerade out of the server's side: what a user would otherwise
  pick for a NAT;
* ``mos-xdp``: ``mos-xdp run bench/app_noop.py --iface MI --peer MO`` (inline, no handler; c and s in one
  subnet);
* ``mos-xdp NAT``: ``mos-xdp run apps/nat.py ... -- --ip 10.231.4.48``: every packet through a Python
  handler that rewrites addresses and ports (and the MAC of replies).

Measured for each: one TCP stream (``iperf3 --time S``: Gbit/s), and ``--conns`` short connections one
after the other (connect, 1 byte each way, close: connections per second, the per-connection cost of
setting up a mapping). Then a reset's latency: an inline app resets a download once the client has 1 MiB
(``conn.reset()``), and the time from the call (written by the app) to the client's ``ECONNRESET`` and to
the server's failed send, over ``--runs`` runs. Medians; the report replaces the ``nat`` section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from common import BENCH, MOS, ROOT, WORK, commands_log, logger, med, report_section
from live import (
    IPERF_PORT,
    NET,
    S_INLINE,
    S_ROUTED,
    BenchTopology,
    LiveRun,
    build_inline,
)

log = logger("nat")
NAT_IP = f"{NET}.4.48"
SHORT_PORT, STREAM_PORT = 8300, 8301
MODES = ("kernel", "kernel NAT", "mos-xdp", "mos-xdp NAT")

# s: accepts, answers one byte per connection and closes after the client's; streams for the reset runs.
SERVERS = """
    import json, socket, sys, threading, time
    def short():
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", {short})); srv.listen(128)
        while True:
            c, _ = srv.accept()
            with c:
                if c.recv(1):
                    c.sendall(b"y")
                c.recv(1)
    def stream():
        srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", {stream})); srv.listen(8)
        while True:
            c, _ = srv.accept()
            chunk = bytes(65536)
            try:
                while True:
                    c.sendall(chunk)
            except OSError as e:
                print(json.dumps({{"server_error": type(e).__name__, "t": time.time()}}), flush=True)
            c.close()
    threading.Thread(target=short, daemon=True).start()
    stream()
"""

SHORT_CLIENT = """
    import json, socket, time
    t0 = time.perf_counter()
    for _ in range({n}):
        s = socket.create_connection(({addr!r}, {port}), timeout=5)
        s.sendall(b"x"); s.recv(1); s.close()
    print(json.dumps({{"cps": {n} / (time.perf_counter() - t0)}}))
"""

STREAM_CLIENT = """
    import json, socket, time
    s = socket.create_connection(({addr!r}, {port}), timeout=10)
    got = 0
    try:
        while True:
            b = s.recv(65536)
            if not b:
                print(json.dumps({{"client_error": "EOF", "t": time.time(), "bytes": got}})); break
            got += len(b)
    except OSError as e:
        print(json.dumps({{"client_error": type(e).__name__, "t": time.time(), "bytes": got}}))
"""

RESET_APP = '''"""Benchmark app (written by bench/nat.py): reset each connection once its client received 1 MiB."""
import json, os, time
from mos import Event, Side
OUT = os.environ["MOS_BENCH_OUT"]
def init(monitor):
    def data(conn, ev):
        if conn.ctx is None and conn.stream_offset(Side.CLIENT) >= 1 << 20:
            conn.ctx = True
            t = time.time()
            conn.reset()
            with open(OUT, "a") as f:
                f.write(json.dumps({"reset": t}) + "\\n")
    monitor.on(Event.CONN_NEW_DATA, data, side=Side.CLIENT)
'''

NFT = """table ip mosbench {
    chain post { type nat hook postrouting priority 100; oifname "{mo}" masquerade; }
}"""


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.topo = BenchTopology()
        t = self.topo
        self.c, self.m, self.s = t.ns("c"), t.ns("m"), t.ns("s")
        self.cd, self.mi, self.mo, self.sd = t.dev("lc"), t.dev("li"), t.dev("lo"), t.dev("ls")
        self.reset_app = WORK / f"nat-reset-app-{t.tag}.py"
        self.procs: List[subprocess.Popen] = []

    def build(self) -> None:
        c, m, s, t = self.c, self.m, self.s, self.topo
        build_inline(t, c, self.cd, m, self.mi, self.mo, s, self.sd)
        commands_log.extend(t.actions)
        WORK.mkdir(parents=True, exist_ok=True)
        self.reset_app.write_text(RESET_APP)
        self.topo.on_close(lambda: self.reset_app.unlink(missing_ok=True))
        self.procs.append(s.popen("iperf3", "--server", "--port", str(IPERF_PORT), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
        code = textwrap.dedent(SERVERS.format(short=SHORT_PORT, stream=STREAM_PORT))
        self.servers = s.popen(sys.executable, "-c", code, stdout=subprocess.PIPE, text=True)
        self.procs.append(self.servers)
        for p in self.procs:
            self.topo.on_close(lambda p=p: (p.kill(), p.wait(timeout=10)))
        self.topo.on_close(lambda: m.run(str(MOS), "detach", self.mi, check=False))
        self.topo.on_close(lambda: m.run("nft", "flush", "ruleset", check=False))
        time.sleep(0.5)

    def _box(self, mode: str, app: Optional[Path] = None, *app_args: str,
             env: Optional[Dict[str, str]] = None) -> Optional[LiveRun]:
        """Sets the box up for ``mode``; the mos-xdp run, if any."""
        m = self.m
        if mode.startswith("kernel"):
            m.run("sysctl", "-qw", "net.ipv4.ip_forward=1", record=True)
            if mode == "kernel NAT":
                m.run("nft", "-f", "-", input=NFT.replace("{mo}", self.mo), record=True)
            return None
        m.run("sysctl", "-qw", "net.ipv4.ip_forward=0", record=True)
        if app is None:
            app = ROOT / "apps" / "nat.py" if mode == "mos-xdp NAT" else BENCH / "app_noop.py"
            app_args = ("--ip", NAT_IP) if mode == "mos-xdp NAT" else ()
        old = {k: os.environ.get(k) for k in (env or {})}
        os.environ.update(env or {})
        try:
            lr = LiveRun(m, app, "--iface", self.mi, "--peer", self.mo, app_args=app_args)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        lr.wait_ready()
        return lr

    def _unbox(self, lr: Optional[LiveRun]) -> str:
        if lr is not None:
            lr.stop()
            if lr.proc.returncode != 0:
                raise RuntimeError(f"mos-xdp run failed: {lr.stderr[-1500:]}")
        self.m.run("nft", "flush", "ruleset", check=False)
        self.m.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
        return lr.stdout if lr is not None else ""

    def once(self, mode: str) -> Dict[str, Any]:
        target = S_ROUTED if mode.startswith("kernel") else S_INLINE
        lr = self._box(mode)
        try:
            r = self.c.run("iperf3", "--client", target, "--port", str(IPERF_PORT), "--time", f"{self.a.seconds:g}",
                           "--json", record=True, check=False, timeout=self.a.seconds + 60)
            short = self.c.run(sys.executable, "-c", textwrap.dedent(SHORT_CLIENT.format(
                n=self.a.conns, addr=target, port=SHORT_PORT)), record=True, timeout=300)
        finally:
            out = self._unbox(lr)
        d = json.loads(r.stdout)
        if "error" in d:
            raise RuntimeError(f"iperf3 ({mode}): {d['error']}")
        res = {"gbps": d["end"]["sum_received"]["bits_per_second"] / 1e9,
               "retransmits": d["end"]["sum_sent"].get("retransmits", 0),
               "cps": json.loads(short.stdout.strip().splitlines()[-1])["cps"]}
        if mode == "mos-xdp NAT":
            res["nat_line"] = next((ln for ln in out.splitlines() if ln.startswith("nat: ")), "")
        return res

    def reset_once(self, out: Path) -> Dict[str, float]:
        out.unlink(missing_ok=True)
        lr = self._box("mos-xdp", self.reset_app, env={"MOS_BENCH_OUT": str(out)})
        try:
            r = self.c.run(sys.executable, "-c", textwrap.dedent(STREAM_CLIENT.format(addr=S_INLINE, port=STREAM_PORT)),
                           record=True, timeout=60)
            assert self.servers.stdout is not None
            srv = json.loads(self.servers.stdout.readline())
        finally:
            self._unbox(lr)
        cli = json.loads(r.stdout.strip().splitlines()[-1])
        t = json.loads(out.read_text().splitlines()[0])["reset"]
        return {"client_ms": (cli["t"] - t) * 1e3, "server_ms": (srv["t"] - t) * 1e3,
                "client_error": cli["client_error"], "server_error": srv["server_error"]}


def install() -> None:
    missing = [p for p, exe in (("nftables", "nft"), ("iperf3", "iperf3")) if shutil.which(exe) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=300, help="short connections per run")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("nat bench: run as root (namespaces, XDP)")
    install()
    b = Bench(a)
    atexit.register(b.topo.close)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res: Dict[str, List[Dict[str, Any]]] = {m: [] for m in MODES}
    resets: List[Dict[str, float]] = []
    try:
        b.build()
        for i in range(a.runs):
            for mode in MODES:
                x = b.once(mode)
                res[mode].append(x)
                log(f"{i + 1}/{a.runs} {mode}: {x['gbps']:.2f} Gbit/s, {x['cps']:.0f} conn/s")
            resets.append(b.reset_once(WORK / f"nat-reset-{b.topo.tag}.jsonl"))
            log(f"{i + 1}/{a.runs} reset: {resets[-1]}")
    finally:
        b.topo.close()
    load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    g = {m: med([x["gbps"] for x in res[m]]) for m in MODES}
    cps = {m: med([x["cps"] for x in res[m]]) for m in MODES}
    lines = [f"machine: {os.cpu_count()} CPUs, load {load0} at the start, {load1} at the end; medians of {a.runs} "
             f"interleaved runs; iperf3 {a.seconds:g} s; {a.conns} short connections per run",
             f"{'box':13} {'Gbit/s':>7} {'x kernel NAT':>12} {'conn/s':>7} {'x kernel NAT':>12}   "
             "runs (Gbit/s; conn/s)"]
    for m in MODES:
        lines.append(f"{m:13} {g[m]:7.2f} {g[m] / g['kernel NAT']:12.2f} {cps[m]:7.0f} "
                     f"{cps[m] / cps['kernel NAT']:12.2f}   "
                     + ", ".join(f"{x['gbps']:.2f}" for x in res[m]) + "; "
                     + ", ".join(f"{x['cps']:.0f}" for x in res[m]))
    lines.append(f"mos-xdp NAT, last run: {res['mos-xdp NAT'][-1].get('nat_line', '')}")
    cms, sms = [r["client_ms"] for r in resets], [r["server_ms"] for r in resets]
    lines.append("reset (conn.reset() in an inline app, during a download): to the client's "
                 f"{resets[0]['client_error']} median {med(cms):.1f} ms (max {max(cms):.1f}), to the server's "
                 f"{resets[0]['server_error']} median {med(sms):.1f} ms (max {max(sms):.1f})")
    report_section("nat", "An active middlebox live: the NAT, a reset (issue 12)", lines, NOTE)


NOTE = ("The kernel's NAT translates in netfilter, in C, once a connection's conntrack entry exists; "
        "`apps/nat.py` runs a Python handler for every packet of every connection (PKT_IN, two or three "
        "`set_last_packet` calls, each fixing the checksums), on one worker here. The mos-xdp rows' "
        "Gbit/s against the no-handler row is what that handler costs; the connections per second include "
        "its CONN_START (a port taken, an alias set) and CONN_END (the port given back).")


if __name__ == "__main__":
    main()
