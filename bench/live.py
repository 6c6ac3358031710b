"""mos-xdp live-path benchmark, end to end: XDP fast drop, AF_XDP receive, inline forwarding on veth.

    bash bench/live.sh [--runs N] [--seconds S] [--no-profile] [--results FILE]

Everything runs as root on this machine, in network namespaces this script creates (``moslb-<pid><hex>-*``,
addresses 10.231.0.0/16 only inside them, deleted at the end whatever happens):

* ``g`` (generator) --veth-- ``r`` (receiver): trafgen (netsniff-ng; AF_PACKET TX ring, qdisc bypass) on
  CPU 0 sends 60-byte UDP frames (10.231.1.2:4000 -> 10.231.1.1:9, to a MAC that is not the receiver's,
  like traffic seen on a monitoring port) to the receiver's veth, where

  1. **fast drop**: a bare ``return XDP_DROP`` program (bcc) against ``xdp_mos`` with the sender's prefix in
     its block list; extra rows: a bare ``XDP_PASS`` against ``xdp_mos`` passing the (unmonitored) traffic,
     and ``xdp_mos`` redirecting into the AF_XDP socket of ``mos-xdp run`` (no-handler app). The sender
     runs flat out; the rate is what the receiving veth ran through XDP per second (``ethtool -S``:
     ``rx_queue_0_xdp_packets``, the same counter whatever the program), over a 5 s window after 1 s of
     warm-up. During the warm-up second ``kernel.bpf_stats_enabled`` is on: the program's own run time per
     packet (``run_time_ns / run_cnt`` of its ``bpf_prog_info``) gives the classification cost in ns.
  2. **AF_XDP receive**: ``mos-xdp run bench/app_noop.py --iface`` (passive, native XDP, copy mode) against
     ``tcpdump -w /dev/null -B 16384`` (AF_PACKET, TPACKET_V3, a 16 MiB ring like the engine's UMEM), both
     on CPU 1, for the same sender runs: 100 kpps, 300 kpps, and flat out; sent = the sender veth's TX
     packets, received = the engine's packet count / tcpdump's "captured".

* ``c`` (client) --veth-- ``m`` (middle box) --veth-- ``s`` (server):

  3. **inline forwarding**: ``iperf3 -t 5`` TCP from c to s through ``mos-xdp run --iface MI --peer MO``
     (no-handler app; and an app calling ``conn.bypass()`` once the handshake is done) against plain kernel
     forwarding (``ip_forward=1`` in m, addresses on m's veths, routes on c and s). The end hosts use
     ``ethtool -K tx off tso off gso off gro on`` (the live path's veth requirements), in every mode.

Each measurement is bounded, ``--runs`` (3) runs, configurations interleaved run by run, medians reported.
Then one extra run of the mos-xdp AF_XDP and inline configurations under ``perf record -a`` shows where the
CPU time goes. The report replaces the section between ``<!-- live:begin -->`` and ``<!-- live:end -->`` of
``bench/RESULTS.md`` (bench/run.py keeps that section when it rewrites the file).

``live.py --bare-xdp IFACE ACTION`` is the bare program's loader (used internally, inside a namespace).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import functools
import json
import os
import platform
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import (
    BENCH,
    MOS,
    MOSPY,
    RESULTS,
    ROOT,
    WORK,
    commands_log,
    ip_checksum,
    logger,
    markers,
    med,
    write_section,
)
from common import sh as common_sh

from mos.net import netlink
from mos.net.topology import XDP_END_HOST, Netns, Topology

BEGIN, END = markers("live")

APT = ["iperf3", "netsniff-ng", "tcpdump", "ethtool", "iproute2", "util-linux", "linux-perf"]
SENDER_CPU, CONSUMER_CPU = 0, 1
FOREIGN_MAC = "02:00:00:00:00:01"
NET = "10.231"
GEN_ADDR, RCV_ADDR = f"{NET}.1.2", f"{NET}.1.1"
SENDER_PREFIX = f"{NET}.1.0/24"
C_ROUTED, M_LEFT, M_RIGHT, S_ROUTED = f"{NET}.2.1", f"{NET}.2.254", f"{NET}.3.254", f"{NET}.3.1"
C_INLINE, S_INLINE = f"{NET}.4.1", f"{NET}.4.2"
IPERF_PORT = 5201
READY = "mos-xdp: live on"
RX_RATES: List[Optional[int]] = [100_000, 300_000, None]  # None: flat out
# The XDP frame sender runs flat out only: each BPF_PROG_TEST_RUN call has a fixed cost of some 25 ms (its
# page pool set up and torn down), so it cannot pace frames smoothly at a fixed rate.
SENDER_RATES: Dict[str, List[Optional[int]]] = {"trafgen": RX_RATES, "xdp": [None]}
BIG_RING = 16384
# flat out with frames, mos-xdp also with a bigger AF_XDP ring (`--ring`): it rides out the engine's stalls
SENDER_TOOLS = {"trafgen": ("af_xdp", "af_packet"), "xdp": ("af_xdp", "af_xdp_big", "af_packet")}
TOOL_LABELS = {"af_xdp": "mos-xdp (AF_XDP)", "af_xdp_big": f"mos-xdp (AF_XDP), `--ring {BIG_RING}`",
               "af_packet": "tcpdump (AF_PACKET)"}

log = logger("live")

sh = functools.partial(common_sh, timeout=120)


# --------------------------------------------------------------------------------------------------
# the bare XDP program (run as `live.py --bare-xdp IFACE ACTION` inside the receiver's namespace)

BARE_PROG = "int bare(struct xdp_md *ctx) { return XDP_%s; }"
GEN_PROG = "int gen(struct xdp_md *ctx) { return bpf_redirect(%d, 0); }"


def udp_frame() -> bytes:
    """The 60-byte frame both senders send (trafgen builds the same from trafgen_cfg)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0, socket.inet_aton(GEN_ADDR),
                     socket.inet_aton(RCV_ADDR))
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    mac = bytes.fromhex(FOREIGN_MAC.replace(":", ""))
    return mac + bytes.fromhex("020000000002") + b"\x08\x00" + ip + struct.pack("!HHHH", 4000, 9, 26, 0) + b"A" * 18


def xdp_frames_main(iface: str, rate: int) -> None:
    """The NIC-like sender: XDP frames (no skb) pushed into IFACE's peer, like a NIC driver's RX ring.

    BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (what xdp-trafficgen does) runs a program that
    redirects to IFACE, on a page-pool frame filled with the packet, `repeat` times per call: veth's
    ndo_xdp_xmit queues the frames to its peer, whose NAPI poll (on this CPU) runs the peer's XDP program on
    the frame itself, or builds an skb around it for the stack. Until SIGINT; `rate` 0 is flat out.
    """
    from bcc import BPF  # noqa: PLC0415 - only this helper needs bcc

    sys.path.insert(0, str(ROOT))
    from mos import xdp  # noqa: PLC0415

    b = BPF(text=GEN_PROG % socket.if_nametoindex(iface))
    fd = b.load_func(b"gen", BPF.XDP).fd
    frame = udp_frame()
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def run(repeat: int) -> None:
        try:
            xdp.prog_test_run(fd, frame, repeat, live_frames=True, batch_size=64)
        except InterruptedError:
            pass  # a signal, checked by the loop

    print("sending", flush=True)
    if not rate:
        while not stop:
            run(1 << 21)  # about a second of frames: the call's fixed cost (~25 ms) stays small
        return
    tick = 0.1  # bursts: see SENDER_RATES
    per = max(1, round(rate * tick))
    nxt = time.perf_counter()
    while not stop:
        run(per)
        nxt += tick
        d = nxt - time.perf_counter()
        if d > 0:
            time.sleep(d)


def bare_xdp_main(iface: str, action: str) -> None:
    from bcc import BPF  # noqa: PLC0415 - only this helper needs bcc

    b = BPF(text=BARE_PROG % action)
    fn = b.load_func(b"bare", BPF.XDP)
    b.attach_xdp(iface, fn, 1 << 2)  # XDP_FLAGS_DRV_MODE: native, as xdp_mos
    print("attached", flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        b.remove_xdp(iface, 1 << 2)


# --------------------------------------------------------------------------------------------------
# namespaces

class Ns(Netns):
    """A benchmark namespace: the commands run here can be recorded for the report."""

    def run(self, *argv: str, check: bool = True, record: bool = False, timeout: float = 120,
            **kw: Any) -> subprocess.CompletedProcess:
        return sh(self.cmd(*argv), check=check, record=record, timeout=timeout, **kw)

    def popen(self, *argv: str, record: bool = True, **kw: Any) -> subprocess.Popen:
        c = self.cmd(*argv)
        if record:
            commands_log.append(shlex.join(c))
        return subprocess.Popen(c, **kw)


class BenchTopology(Topology):
    """The run's namespaces (``moslb-<pid>-<hex>-<label>``, IPv4 only); clean-up errors are logged."""

    netns_type = Ns

    def __init__(self) -> None:
        super().__init__(prefix="moslb-", ipv6=False)

    def ns(self, label: str) -> Ns:
        n = self.netns(label)
        assert isinstance(n, Ns)
        return n

    def close(self) -> None:
        try:
            super().close()
        except Exception as e:  # the figures are saved; a failed clean-up must not hide them
            log(f"clean-up: {e}")


def link_stats(ns: Ns, dev: str) -> Dict[str, int]:
    """TX/RX packets (netlink) and the driver's counters (ethtool -S: veth's per-queue XDP counters)."""
    st = netlink.link_stats(dev, netns=ns.name)
    out = {k: st[k] for k in ("tx_packets", "rx_packets", "tx_dropped", "rx_dropped")}
    for line in ns.run("ethtool", "-S", dev, record=True).stdout.splitlines():
        k, _, v = line.strip().partition(":")
        if v.strip().isdigit():
            out[k.strip()] = int(v)
    return out


def xdp_prog_id(ns: Ns, dev: str) -> int:
    return netlink.link_xdp(dev, netns=ns.name).prog_id


def prog_runtime(prog_id: int) -> Tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded BPF program (bpf_prog_info, counted while bpf_stats_enabled)."""
    sys.path.insert(0, str(ROOT))
    from mos import xdp  # noqa: PLC0415

    fd = xdp.prog_fd_by_id(prog_id)
    try:
        info = xdp.prog_info(fd)
    finally:
        os.close(fd)
    return int(info["run_time_ns"]), int(info["run_cnt"])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def bpf_stats(on: bool) -> None:
    commands_log.append(f"sysctl -w kernel.bpf_stats_enabled={int(on)}")
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n" if on else "0\n")


# --------------------------------------------------------------------------------------------------
# the sender

SENDERS = ("trafgen", "xdp")
SENDER_LABELS = {"trafgen": "trafgen (skbs)", "xdp": "XDP frames (NIC-like)"}


class Sender:
    """On CPU 0, flat out or at a fixed rate; its own process group, stopped with SIGINT.

    kind "trafgen": trafgen's AF_PACKET TX ring (each frame an skb, which veth must copy into a page before
    the peer's XDP program runs); kind "xdp": xdp_frames_main (frames, as a NIC driver hands them to XDP).
    """

    def __init__(self, ns: Ns, dev: str, cfg: Path, rate: Optional[int] = None, kind: str = "trafgen") -> None:
        if kind == "xdp":
            argv = ["taskset", "-c", str(SENDER_CPU), str(MOSPY), str(Path(__file__).resolve()), "--xdp-frames",
                    dev, str(rate or 0)]
        else:
            argv = ["taskset", "-c", str(SENDER_CPU), "trafgen", "--no-sock-mem", "--dev", dev, "--conf", str(cfg),
                    "--cpus", "1", "--no-cpu-stats"]
            if rate:
                argv += ["--rate", f"{rate}pps"]
        self.kind = kind
        self.log = tempfile.TemporaryFile("w+")
        self.proc = ns.popen(*argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if kind == "xdp":
            end = time.time() + 60
            while time.time() < end and self.proc.poll() is None:
                self.log.seek(0)
                if "sending" in self.log.read():
                    break
                time.sleep(0.05)
            else:
                self.log.seek(0)
                raise RuntimeError(f"the XDP frame sender did not start: {self.log.read()[-1500:]}")

    @staticmethod
    def sent(stats: Dict[str, int], kind: str) -> int:
        """Frames sent, from the sender veth's counters (for XDP frames: queued to the peer, or dropped
        because its ring was full, which is the receiver's loss)."""
        if kind == "xdp":
            return stats.get("tx_queue_0_xdp_xmit", 0) + stats.get("tx_queue_0_xdp_xmit_errors", 0)
        return stats["tx_packets"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # trafgen's worker may outlive its parent for a moment: the group must be empty
        for _ in range(50):
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)


def trafgen_cfg(path: Path) -> None:
    path.write_text(
        "{\n"
        f"  eth(da={FOREIGN_MAC}, type=0x0800),\n"
        f"  ipv4(saddr={GEN_ADDR}, daddr={RCV_ADDR}, proto=17, ttl=64),\n"
        "  udp(sport=4000, dport=9),\n"
        "  fill(0x41, 18)\n"
        "}\n")


# --------------------------------------------------------------------------------------------------
# mos-xdp run, in the background

class LiveRun:
    def __init__(self, ns: Ns, app: Path, *args: str, cpu: Optional[int] = None,
                 app_args: Tuple[str, ...] = ()) -> None:
        argv = [str(MOS), "run", str(app), *args, "--stats", "--no-progress", *(("--", *app_args) if app_args else ())]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        self.out = tempfile.TemporaryFile("w+")
        self.err = tempfile.TemporaryFile("w+")
        self.proc = ns.popen(*argv, stdout=self.out, stderr=self.err)
        self.stdout = self.stderr = ""

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.time() + timeout
        while time.time() < end:
            self.err.seek(0)
            if READY in self.err.read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mos-xdp run did not start: {self.stderr[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.out.seek(0)
        self.err.seek(0)
        self.stdout, self.stderr = self.out.read(), self.err.read()

    def counters(self, prefix: str) -> Dict[str, int]:
        for line in self.stderr.splitlines():
            if line.startswith(prefix):
                return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line[len(prefix):])}
        return {}

    def engine_packets(self) -> int:
        m = re.search(r"packets=(\d+)", self.stdout)
        return int(m.group(1)) if m else -1


BYPASS_APP = '''"""Benchmark app (written by bench/live.py): bypass each connection once its handshake is done."""

from mos import Event, TcpState

_bypassed = [0]


def init(monitor):
    def changed(conn, ev):
        if ev.states == (TcpState.ESTABLISHED, TcpState.ESTABLISHED) and conn.ctx is None:
            conn.ctx = True
            conn.bypass()
            _bypassed[0] += 1

    monitor.on(Event.TCP_STATE_CHANGE, changed)


def finish(monitor):
    print(f"events={_bypassed[0]} packets={monitor.stats()['packets']}")
'''


# --------------------------------------------------------------------------------------------------
# the benchmark

def build_inline(t: Topology, c: Ns, cd: str, m: Ns, mi: str, mo: str, s: Ns, sd: str) -> None:
    """c --veth-- m --veth-- s, for both ways through m: routed (m's veths addressed, routes on c and s, for
    kernel forwarding) and inline (C_INLINE and S_INLINE in one subnet, for mos-xdp), the end hosts as the
    live path needs them."""
    t.veth(c, cd, m, mi, f"{C_ROUTED}/24", f"{M_LEFT}/24", extra_a=[f"{C_INLINE}/24"])
    t.veth(m, mo, s, sd, f"{M_RIGHT}/24", f"{S_ROUTED}/24", extra_b=[f"{S_INLINE}/24"])
    t.route(c, f"{NET}.3.0/24", M_LEFT)
    t.route(s, f"{NET}.2.0/24", M_RIGHT)
    for n, d in ((c, cd), (s, sd)):
        t.ethtool(n, d, XDP_END_HOST)


class Live:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.topo = BenchTopology()
        t = self.topo
        self.g, self.r = t.ns("g"), t.ns("r")
        self.c, self.m, self.s = t.ns("c"), t.ns("m"), t.ns("s")
        self.gd, self.rd = t.dev("lg"), t.dev("lr")
        self.cd, self.mi, self.mo, self.sd = t.dev("lc"), t.dev("li"), t.dev("lo"), t.dev("ls")
        self.cfg = WORK / f"live-udp-{t.tag}.trafgen"
        self.bypass_app = WORK / f"live-app-bypass-{t.tag}.py"
        self.noop_app = BENCH / "app_noop.py"
        self.iperf: Optional[subprocess.Popen] = None
        self.profiles: Dict[str, str] = {}

    # -- set-up

    def build(self) -> None:
        g, r, c, m, s = self.g, self.r, self.c, self.m, self.s
        t = self.topo
        t.veth(g, self.gd, r, self.rd, f"{GEN_ADDR}/24", f"{RCV_ADDR}/24")
        t.ethtool(g, self.gd, XDP_END_HOST)
        trafgen_cfg(self.cfg)

        build_inline(t, c, self.cd, m, self.mi, self.mo, s, self.sd)
        commands_log.extend(t.actions)  # the set-up, in ip/ethtool form, for the report
        self.bypass_app.write_text(BYPASS_APP)
        self.iperf = s.popen("iperf3", "--server", "--port", str(IPERF_PORT), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)

        def _stop_iperf() -> None:
            if self.iperf is not None and self.iperf.poll() is None:
                self.iperf.terminate()
                self.iperf.wait(timeout=10)

        self.topo.on_close(_stop_iperf)
        self.topo.on_close(lambda: self.cfg.unlink(missing_ok=True))
        self.topo.on_close(lambda: self.bypass_app.unlink(missing_ok=True))
        # leftovers of an interrupted mos-xdp run (pins live in the host's bpffs)
        for n, d in ((r, self.rd), (m, self.mi)):
            self.topo.on_close(lambda n=n, d=d: n.run(str(MOS), "detach", d, check=False))
        time.sleep(0.5)

    # -- 1. fast drop

    def _attach_bare(self, action: str) -> Callable[[], None]:
        p = self.r.popen(str(MOSPY), str(Path(__file__).resolve()), "--bare-xdp", self.rd, action,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdin is not None
        if p.stdout.readline().strip() != "attached":
            p.kill()
            raise RuntimeError("the bare XDP program did not attach (bcc, kernel headers?)")

        def stop() -> None:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(timeout=30)

        return stop

    def _attach_mos(self, block: bool) -> Callable[[], None]:
        self.r.run(str(MOS), "attach", self.rd, "--mode", "native", "--port", "80", record=True)
        if block:
            self.r.run(str(MOS), "block", "add", SENDER_PREFIX, "--iface", self.rd, record=True)

        def stop() -> None:
            self.r.run(str(MOS), "detach", self.rd, record=True)

        return stop

    def _run_mos_xsk(self) -> Callable[[], None]:
        lr = LiveRun(self.r, self.noop_app, "--iface", self.rd, cpu=CONSUMER_CPU)
        lr.wait_ready()

        def stop() -> None:
            lr.stop()
            if lr.proc.returncode != 0:
                raise RuntimeError(f"mos-xdp run failed: {lr.stderr[-1500:]}")

        return stop

    def drop_configs(self) -> List[Tuple[str, str, Callable[[], Callable[[], None]]]]:
        return [
            ("bare XDP_DROP", "drop", lambda: self._attach_bare("DROP")),
            ("xdp_mos, sender's prefix in the block list", "drop", lambda: self._attach_mos(True)),
            ("bare XDP_PASS", "pass", lambda: self._attach_bare("PASS")),
            ("xdp_mos, unmonitored (UDP port 9, `--port 80`): XDP_PASS", "pass", lambda: self._attach_mos(False)),
            ("xdp_mos -> AF_XDP (`mos-xdp run`, no-handler app, CPU 1)", "redirect", self._run_mos_xsk),
        ]

    def fast_drop_once(self, setup: Callable[[], Callable[[], None]], kind: str = "trafgen",
                       profile: Optional[str] = None) -> Dict[str, float]:
        stop = setup()
        snd: Optional[Sender] = None
        try:
            pid = xdp_prog_id(self.r, self.rd)
            snd = Sender(self.g, self.gd, self.cfg, kind=kind)
            rt0 = prog_runtime(pid)
            bpf_stats(True)
            time.sleep(1.0)  # warm-up; the program's run time is measured meanwhile
            bpf_stats(False)
            rt1 = prog_runtime(pid)
            r0, s0, t0 = link_stats(self.r, self.rd), link_stats(self.g, self.gd), time.perf_counter()
            perf = self._perf_start(profile) if profile else None
            time.sleep(self.a.seconds)
            r1, s1, t1 = link_stats(self.r, self.rd), link_stats(self.g, self.gd), time.perf_counter()
            if perf is not None:
                self._perf_stop(profile or "", perf)
        finally:
            bpf_stats(False)
            if snd is not None:
                snd.stop()
            stop()
        dt = t1 - t0
        runs = rt1[1] - rt0[1]
        q = "rx_queue_0_"
        return {
            "xdp_pps": (r1[q + "xdp_packets"] - r0[q + "xdp_packets"]) / dt,
            "drop_pps": (r1[q + "xdp_drops"] - r0[q + "xdp_drops"]) / dt,
            "redirect_pps": (r1[q + "xdp_redirect"] - r0[q + "xdp_redirect"]) / dt,
            "sent_pps": (Sender.sent(s1, kind) - Sender.sent(s0, kind)) / dt,
            "ns_per_pkt": (rt1[0] - rt0[0]) / runs if runs else float("nan"),
        }

    def fast_drop(self) -> List[Dict[str, Any]]:
        cfgs = self.drop_configs()
        res: Dict[Tuple[str, str], List[Dict[str, float]]] = {}
        for i in range(self.a.runs):
            for kind in SENDERS:
                for name, _, setup in cfgs:
                    x = self.fast_drop_once(setup, kind)
                    res.setdefault((kind, name), []).append(x)
                    log(f"fast drop {i + 1}/{self.a.runs} {kind} {name}: {x['xdp_pps'] / 1e6:.3f} Mpps through "
                        f"XDP, {x['ns_per_pkt']:.0f} ns/packet in the program")
        rows = []
        for kind in SENDERS:
            for name, verdict, _ in cfgs:
                xs = res[(kind, name)]
                rows.append({"sender": kind, "name": name, "verdict": verdict, "runs": xs,
                             **{k: med([x[k] for x in xs]) for k in xs[0]}})
        return rows

    # -- 2. AF_XDP receive against AF_PACKET

    def rx_once(self, tool: str, rate: Optional[int], kind: str = "trafgen", profile: Optional[str] = None
                ) -> Dict[str, Any]:
        lr: Optional[LiveRun] = None
        td: Optional[subprocess.Popen] = None
        td_err = tempfile.TemporaryFile("w+")
        # XDP frames reach a veth through its NAPI poll, which runs when the veth has an XDP program (the
        # AF_XDP case) or GRO on: for tcpdump, GRO on (the frames then become skbs in that poll, as a NIC
        # driver's would); for trafgen's skbs, the default (off: the backlog, as before)
        gro = tool == "af_packet" and kind == "xdp"
        if gro:
            self.r.run("ethtool", "-K", self.rd, "gro", "on", record=True)
        if tool.startswith("af_xdp"):
            ring = ["--ring", str(BIG_RING)] if tool == "af_xdp_big" else []
            lr = LiveRun(self.r, self.noop_app, "--iface", self.rd, *ring, cpu=CONSUMER_CPU)
            lr.wait_ready()
        else:
            td = self.r.popen("taskset", "-c", str(CONSUMER_CPU), "tcpdump", "-i", self.rd, "-n", "-B", "16384",
                              "-w", "/dev/null", stdout=subprocess.DEVNULL, stderr=td_err)
            end = time.time() + 30
            while time.time() < end:
                td_err.seek(0)
                if "listening on" in td_err.read():
                    break
                time.sleep(0.05)
        try:
            rpid = (lr.proc if lr is not None else td).pid  # type: ignore[union-attr]
            c0 = proc_cpu(rpid)
            s0 = link_stats(self.g, self.gd)
            r0 = link_stats(self.r, self.rd)
            t0 = time.perf_counter()
            snd = Sender(self.g, self.gd, self.cfg, rate, kind=kind)
            try:
                perf = None
                if profile:
                    time.sleep(1.0)
                    perf = self._perf_start(profile)
                    time.sleep(self.a.seconds - 1.0)
                    self._perf_stop(profile, perf)
                else:
                    time.sleep(self.a.seconds)
            finally:
                snd.stop()
            t1 = time.perf_counter()
            s1 = link_stats(self.g, self.gd)
            r1 = link_stats(self.r, self.rd)
            time.sleep(1.0)  # let the receiver drain its ring
            c1 = proc_cpu(rpid)
        finally:
            if lr is not None:
                lr.stop()
            if td is not None:
                td.send_signal(signal.SIGINT)
                td.wait(timeout=30)
            if gro:
                self.r.run("ethtool", "-K", self.rd, "gro", "off", record=True)
        dt = t1 - t0
        sent = Sender.sent(s1, kind) - Sender.sent(s0, kind)
        out: Dict[str, Any] = {"sent": sent, "seconds": dt, "sent_pps": sent / dt, "receiver_cpu": (c1 - c0) / dt,
                               "veth_rx_dropped": r1["rx_dropped"] - r0["rx_dropped"],
                               "xmit_errors": s1.get("tx_queue_0_xdp_xmit_errors", 0)
                               - s0.get("tx_queue_0_xdp_xmit_errors", 0)}
        if lr is not None:
            if lr.proc.returncode != 0:
                raise RuntimeError(f"mos-xdp run failed: {lr.stderr[-1500:]}")
            got = lr.engine_packets()
            xdp, af = lr.counters("  xdp:"), lr.counters("  af_xdp worker 0:")
            out.update(received=got, xsk_redirect=xdp.get("xsk_redirect", 0),
                       **{k: af.get(k, 0) for k in ("k_rx_dropped", "k_rx_ring_full", "k_rx_fill_ring_empty_descs",
                                                    "polls")})
            out["lost_where"] = (f"XDP redirected {out['xsk_redirect']:,}; AF_XDP RX ring full "
                                 f"{out['k_rx_ring_full']:,}, fill ring empty {out['k_rx_fill_ring_empty_descs']:,}")
        else:
            td_err.seek(0)
            err = td_err.read()
            m = re.search(r"(\d+) packets captured", err)
            d = re.search(r"(\d+) packets dropped by kernel", err)
            got = int(m.group(1)) if m else -1
            out.update(received=got, kernel_dropped=int(d.group(1)) if d else -1)
            out["lost_where"] = f"tcpdump: {out['kernel_dropped']:,} dropped by kernel (ring full)"
        out["received_pps"] = got / dt
        out["loss"] = 1 - got / sent if sent else float("nan")
        return out

    def rx(self) -> Dict[Tuple[str, Optional[int], str], Dict[str, Any]]:
        res: Dict[Tuple[str, Optional[int], str], List[Dict[str, Any]]] = {}
        for i in range(self.a.runs):
            for kind in SENDERS:
                for rate in SENDER_RATES[kind]:
                    for tool in SENDER_TOOLS[kind]:
                        x = self.rx_once(tool, rate, kind)
                        res.setdefault((kind, rate, tool), []).append(x)
                        log(f"receive {i + 1}/{self.a.runs} {kind} {tool} at {rate or 'max'} pps: sent "
                            f"{x['sent_pps'] / 1e3:.0f} kpps, received {x['received_pps'] / 1e3:.0f} kpps, "
                            f"loss {x['loss']:.3%}")
        out = {}
        for key, xs in res.items():
            row: Dict[str, Any] = {"runs": xs}
            for k in ("sent_pps", "received_pps", "loss", "receiver_cpu"):
                row[k] = med([x[k] for x in xs])
            # the run whose received rate is the median, for its loss details
            row["median_run"] = sorted(xs, key=lambda x: x["received_pps"])[len(xs) // 2]
            out[key] = row
        return out

    # -- 3. inline forwarding

    def iperf_once(self, mode: str, profile: Optional[str] = None) -> Dict[str, Any]:
        lr: Optional[LiveRun] = None
        if mode == "kernel":
            self.m.run("sysctl", "-qw", "net.ipv4.ip_forward=1", record=True)
            target = S_ROUTED
        else:
            self.m.run("sysctl", "-qw", "net.ipv4.ip_forward=0", record=True)
            app = self.noop_app if mode == "mos" else self.bypass_app
            lr = LiveRun(self.m, app, "--iface", self.mi, "--peer", self.mo)
            lr.wait_ready()
            target = S_INLINE
        try:
            perf = None
            if profile:
                p = self.c.popen("iperf3", "--client", target, "--port", str(IPERF_PORT), "--time",
                                 f"{self.a.seconds:g}", "--json", stdout=subprocess.PIPE, text=True, record=False)
                time.sleep(1.0)
                perf = self._perf_start(profile)
                time.sleep(max(1.0, self.a.seconds - 2.0))
                self._perf_stop(profile, perf)
                js, _ = p.communicate(timeout=self.a.seconds + 60)
            else:
                r = self.c.run("iperf3", "--client", target, "--port", str(IPERF_PORT), "--time", f"{self.a.seconds:g}",
                               "--json", record=True, check=False, timeout=self.a.seconds + 60)
                js = r.stdout
        finally:
            if lr is not None:
                lr.stop()
            self.m.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
        d = json.loads(js)
        if "error" in d:
            raise RuntimeError(f"iperf3 ({mode}): {d['error']}")
        end = d["end"]
        out: Dict[str, Any] = {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                               "retransmits": end["sum_sent"].get("retransmits", 0),
                               "cpu_sender": end.get("cpu_utilization_percent", {}).get("host_total", 0.0)}
        if lr is not None:
            if lr.proc.returncode != 0:
                raise RuntimeError(f"mos-xdp run failed: {lr.stderr[-1500:]}")
            out["xdp"] = lr.counters("  xdp:")
            out["af_xdp"] = lr.counters("  af_xdp worker 0:")
            out["engine_packets"] = lr.engine_packets()
        return out

    def inline(self) -> Dict[str, Dict[str, Any]]:
        modes = ("kernel", "mos", "mos-bypass")
        res: Dict[str, List[Dict[str, Any]]] = {m: [] for m in modes}
        for i in range(self.a.runs):
            for mode in modes:
                x = self.iperf_once(mode)
                res[mode].append(x)
                log(f"inline {i + 1}/{self.a.runs} {mode}: {x['gbps']:.2f} Gbit/s, {x['retransmits']} retransmits")
        out = {}
        for mode, xs in res.items():
            out[mode] = {"runs": xs, "gbps": med([x["gbps"] for x in xs]),
                         "retransmits": med([x["retransmits"] for x in xs]),
                         "median_run": sorted(xs, key=lambda x: x["gbps"])[len(xs) // 2]}
        return out

    # -- profiles

    def _perf_start(self, name: str) -> subprocess.Popen:
        data = WORK / f"live-perf-{name}.data"
        c = ["perf", "record", "-a", "-F", "997", "-o", str(data), "--", "sleep", "3"]
        commands_log.append(shlex.join(c))
        return subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _perf_stop(self, name: str, p: subprocess.Popen) -> None:
        p.wait(timeout=60)
        data = WORK / f"live-perf-{name}.data"
        def rep(sort: str, limit: str, n: int) -> List[str]:
            r = sh(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "--percent-limit",
                    limit], check=False, timeout=300)
            return [re.sub(r"\s+-\s+-\s*$", "", ln.rstrip()) for ln in r.stdout.splitlines()
                    if ln.strip() and not ln.startswith("#")][:n]

        self.profiles[name] = "\n".join(["by CPU and command (share of both CPUs' samples):",
                                         *rep("cpu,comm", "2", 8), "",
                                         "by command and symbol:", *rep("comm,symbol", "1.2", 30)])
        data.unlink(missing_ok=True)
        Path(str(data) + ".old").unlink(missing_ok=True)

    def profile(self) -> None:
        log("profiles (perf record -a, 3 s)")
        for kind in SENDERS:
            self.rx_once("af_xdp", None, kind, profile=f"af_xdp_max_{kind}")
            self.rx_once("af_packet", None, kind, profile=f"af_packet_max_{kind}")
        self.iperf_once("mos", profile="inline_mos")
        self.iperf_once("kernel", profile="inline_kernel")


# --------------------------------------------------------------------------------------------------
# report

def machine() -> Dict[str, str]:
    cpu = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    osr = "?"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME"):
                osr = line.split("=", 1)[1].strip().strip('"')
    return {"cpu": cpu, "cores": str(os.cpu_count()), "os": osr, "kernel": platform.release(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def dpkg(p: str) -> str:
    return sh(["dpkg-query", "-W", "-f=${Version}", p], check=False).stdout.strip() or "-"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def report(a: argparse.Namespace, drop: List[Dict[str, Any]],
           rx: Dict[Tuple[str, Optional[int], str], Dict[str, Any]],
           inl: Dict[str, Dict[str, Any]], profiles: Dict[str, str], load_start: str, t_start: float,
           tag: str, load_end: Optional[str] = None, t_end: Optional[float] = None) -> str:
    m = machine()
    if load_end:
        m["load"] = load_end
    L: List[str] = []
    w = L.append
    w(BEGIN)
    w("## Live path (XDP, AF_XDP, inline)\n")
    t_end = t_end or time.time()
    w(f"Generated by `bash bench/live.sh` on {datetime.datetime.fromtimestamp(t_end).strftime('%Y-%m-%d %H:%M')} "
      f"({(t_end - t_start) / 60:.0f} min end to end; this section is replaced by each run of bench/live.py "
      f"and kept by bench/run.py). Medians of {a.runs} runs of {a.seconds:g} s, the configurations interleaved run "
      "by run. Everything on veth pairs between network namespaces created for the run (`moslb-*`, addresses in "
      f"{NET}.0.0/16 only inside them).\n")
    w(f"- Machine: {m['cpu']}, {m['cores']} cores **shared with other work** (load average {load_start} at the "
      f"start, {m['load']} at the end), {m['os']}, kernel {m['kernel']}. veth: native XDP, AF_XDP copy mode.")
    w(f"- Versions: trafgen (netsniff-ng) {dpkg('netsniff-ng')}, iperf3 {dpkg('iperf3')}, tcpdump {dpkg('tcpdump')}, "
      f"bcc {dpkg('python3-bpfcc')}, libxdp {dpkg('libxdp1')}; mos-xdp at commit "
      f"{sh(['git', '-C', str(ROOT), 'rev-parse', '--short', 'HEAD'], check=False).stdout.strip() or '?'}.")
    w(f"- Senders, both pinned to CPU {SENDER_CPU}, both sending the same 60-byte UDP frames {GEN_ADDR}:4000 -> "
      f"{RCV_ADDR}:9 addressed to a MAC that is not the receiver's ({FOREIGN_MAC}: traffic of a monitoring port, "
      "which the host stack discards early):\n"
      "  - **trafgen (skbs)**: netsniff-ng's trafgen, AF_PACKET TX ring with qdisc bypass. Each frame is an "
      "skb; before the receiving veth can run XDP on it, veth copies it into a page of its own "
      "(`veth_xdp_rcv_skb` -> `skb_pp_cow_data`), a cost no NIC has.\n"
      "  - **XDP frames (NIC-like)**: `bench/live.py --xdp-frames` (bcc): `BPF_PROG_TEST_RUN` with "
      "`BPF_F_TEST_XDP_LIVE_FRAMES`, what xdp-trafficgen does, runs `bpf_redirect(veth)` on page-pool frames; "
      "veth queues them to its peer, whose NAPI poll runs the peer's XDP program on the frame itself (or, "
      "for tcpdump, GRO on, builds an skb around it for the stack), as a NIC driver does with its RX ring. "
      "It runs flat out only (each call has a fixed cost of ~25 ms, so it cannot pace at a fixed rate). "
      "xdp-trafficgen itself (xdp-tools 1.3.1) fails to load on this kernel (BTF of `xdp_redirect_map_err`); "
      "pktgen needs a kernel module.\n"
      "  On veth the receiving side's work (the peer's NAPI poll running XDP, or the backlog for the stack) runs "
      "on the **sender's CPU**: the flat-out figures below are what one CPU does sending and receiving.\n")

    # 1
    w("### 1. Fast drop\n")
    w(f"Sender flat out; rate = packets the receiving veth ran through XDP per second (`ethtool -S`: "
      f"`rx_queue_0_xdp_packets`, the same counter whatever the program) over {a.seconds:g} s after 1 s of "
      "warm-up. ns/packet = the program's own run time (`bpf_prog_info.run_time_ns / run_cnt`, "
      "`kernel.bpf_stats_enabled=1` during the warm-up second only).\n")
    w("| sender | XDP program | verdict | Mpps through XDP | of the bare program's | ns/packet in the program | "
      "sender Mpps |")
    w("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    kinds = [k for k in SENDERS if any(r.get("sender", "trafgen") == k for r in drop)]
    by_kind = {k: [r for r in drop if r.get("sender", "trafgen") == k] for k in kinds}
    for k in kinds:
        base = {r["verdict"]: r for r in by_kind[k] if r["name"].startswith("bare")}
        for r in by_kind[k]:
            b = base.get(r["verdict"]) or base["drop"]
            w(f"| {SENDER_LABELS[k]} | {r['name']} | {r['verdict']} | {r['xdp_pps'] / 1e6:.3f} | "
              f"{r['xdp_pps'] / b['xdp_pps']:.1%} | {r['ns_per_pkt']:.0f} | {r['sent_pps'] / 1e6:.3f} |")
    w("")
    w("All runs (Mpps through XDP): " + "; ".join(
        f"{SENDER_LABELS[r.get('sender', 'trafgen')]}, {r['name']}: "
        + ", ".join(f"{x['xdp_pps'] / 1e6:.3f}" for x in r["runs"]) for r in drop) + ".\n")
    by_rate, by_time = [], []
    for k in kinds:
        rows = by_kind[k]
        bd = next(r for r in rows if r["name"].startswith("bare") and r["verdict"] == "drop")
        md = next(r for r in rows if "block list" in r["name"])
        cost = 1 - md["xdp_pps"] / bd["xdp_pps"]
        extra_ns = md["ns_per_pkt"] - bd["ns_per_pkt"]
        per_pkt_total = 1e9 / bd["xdp_pps"]
        share = extra_ns / per_pkt_total
        spread = (min(x["xdp_pps"] for x in bd["runs"]) / 1e6, max(x["xdp_pps"] for x in bd["runs"]) / 1e6)
        by_rate.append((k, cost))
        by_time.append((k, share))
        w(f"- {SENDER_LABELS[k]}: xdp_mos drops {md['xdp_pps'] / 1e6:.3f} Mpps against {bd['xdp_pps'] / 1e6:.3f} "
          f"Mpps for the bare program ({-cost:+.1%}; the bare program's own runs spread over "
          f"{spread[0]:.3f}-{spread[1]:.3f} Mpps). Time, which noise does not blur: {md['ns_per_pkt']:.0f} ns per "
          f"packet in xdp_mos against {bd['ns_per_pkt']:.0f} ns for `return XDP_DROP`: +{extra_ns:.0f} ns "
          f"(parsing, two LPM-trie lookups, the per-CPU counters) out of {per_pkt_total:.0f} ns per packet for the "
          f"whole path on the sender's CPU, i.e. **{share:.1%}** of the bare drop rate.")
    rate_ok = all(c < 0.10 for _, c in by_rate)
    w(f"- **Target: classification costs less than 10% of the bare drop rate**: by rate, the target's own "
      f"measure, {verdict(rate_ok)} ("
      + ", ".join(f"{SENDER_LABELS[k]} {c:.1%}" for k, c in by_rate) + "). Cross-check by the program's run time: "
      + ", ".join(f"{SENDER_LABELS[k]} {sh_:.1%}" for k, sh_ in by_time)
      + (". On the NIC-like path, where the whole per-packet path is short, the two measures straddle the 10% "
         "line: about 10 ns of the difference is the LPM-trie lookup of the block list (measured by replacing it "
         "with an array lookup), the rest parsing and the counters."
         if any(sh_ >= 0.10 for _, sh_ in by_time) else "."))
    for k in kinds:
        rows = by_kind[k]
        mp = next(r for r in rows if "unmonitored" in r["name"])
        mx = next(r for r in rows if r["verdict"] == "redirect")
        bp = next(r for r in rows if r["name"].startswith("bare") and r["verdict"] == "pass")
        w(f"- {SENDER_LABELS[k]}: unmonitored traffic passed to the stack at {mp['xdp_pps'] / 1e6:.3f} Mpps "
          f"against {bp['xdp_pps'] / 1e6:.3f} Mpps for a bare XDP_PASS ({mp['ns_per_pkt']:.0f} against "
          f"{bp['ns_per_pkt']:.0f} ns in the program; the port filter adds two array lookups); redirect into the "
          f"engine's AF_XDP socket at {mx['xdp_pps'] / 1e6:.3f} Mpps, {mx['ns_per_pkt']:.0f} ns in the program (the "
          "hash and the XSKMAP lookup; the copy into the UMEM happens after the program, in the kernel's redirect).")
    w("")

    # 2
    w("### 2. AF_XDP receive into the engine against AF_PACKET (tcpdump)\n")
    w(f"`mos-xdp run bench/app_noop.py --iface R --stats` (passive: native XDP, AF_XDP copy mode, busy polling, "
      f"no handler, the engine decodes every packet) against `tcpdump -i R -n -B 16384 -w /dev/null` "
      f"(TPACKET_V3, a 16 MiB ring), each pinned to CPU {CONSUMER_CPU}, over the same sender runs "
      f"({a.seconds:g} s; trafgen at 100 kpps and 300 kpps with its `--rate`, then each sender flat out). Received "
      "= the engine's packet count / tcpdump's \"captured\"; loss = 1 - received / sent (trafgen: the sender "
      "veth's TX packets; XDP frames: the frames the sender veth queued to its peer plus those it dropped because "
      "the peer's ring was full); receiver CPU = its user + system time over the run (the kernel's receive work "
      "runs on the sender's CPU and is not in it).\n")
    w("| sender | offered | receiver | sent kpps | received kpps | loss (median) | loss per run | receiver CPU | "
      "where the losses are (all runs) |")
    w("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |")
    rkinds = [k for k in SENDERS if any(key[0] == k for key in rx)]
    for k in rkinds:
        for rate in SENDER_RATES[k]:
            for tool in (t for t in SENDER_TOOLS[k] if (k, rate, t) in rx):
                label = TOOL_LABELS[tool]
                r = rx[(k, rate, tool)]
                per = ", ".join(f"{x['loss']:.3%}" for x in r["runs"])
                if tool.startswith("af_xdp"):
                    where = ("AF_XDP RX ring full " + "/".join(f"{x['k_rx_ring_full']:,}" for x in r["runs"])
                             + ", fill ring empty "
                             + "/".join(f"{x['k_rx_fill_ring_empty_descs']:,}" for x in r["runs"]))
                else:
                    where = "dropped by kernel (ring full) " + "/".join(f"{x['kernel_dropped']:,}" for x in r["runs"])
                if k == "xdp":
                    where += "; sender's veth ring full " + "/".join(
                        f"{x.get('xmit_errors', 0):,}" for x in r["runs"])
                w(f"| {SENDER_LABELS[k]} | {f'{rate // 1000} kpps' if rate else 'flat out'} | {label} | "
                  f"{r['sent_pps'] / 1e3:.0f} | {r['received_pps'] / 1e3:.0f} | {r['loss']:.3%} | {per} | "
                  f"{r['receiver_cpu']:.0%} | {where} |")
    w("")
    # at a fixed offered rate both must get the sender's packets out at that rate and lose no more
    fixed_ok = all(rx[(k, rt, "af_xdp")]["loss"] <= rx[(k, rt, "af_packet")]["loss"] + 1e-4
                   and rx[(k, rt, "af_xdp")]["sent_pps"] >= 0.95 * rx[(k, rt, "af_packet")]["sent_pps"]
                   for k in rkinds for rt in SENDER_RATES[k] if rt)
    flat = {k: (rx[(k, None, "af_xdp")], rx[(k, None, "af_packet")]) for k in rkinds}
    flat_ok = {k: x["received_pps"] >= p["received_pps"] for k, (x, p) in flat.items()}
    w("- **Target: AF_XDP receive at least matches AF_PACKET**: at the fixed rates (trafgen), "
      f"{verdict(fixed_ok)} (the sender reaching the offered rate with each receiver, and loss compared); flat "
      "out, " + "; ".join(
          f"{SENDER_LABELS[k]}: {x['received_pps'] / 1e3:.0f} against {p['received_pps'] / 1e3:.0f} kpps received "
          f"({x['received_pps'] / p['received_pps']:.0%}), {verdict(flat_ok[k])}" for k, (x, p) in flat.items()) + ".")
    if "xdp" in flat and "trafgen" in flat:
        (fx, fp), (tx, tp) = flat["xdp"], flat["trafgen"]
        ns_tx, ns_tp = 1e9 / tx["sent_pps"], 1e9 / tp["sent_pps"]
        w(f"  With frames as a NIC delivers them, AF_XDP receives {fx['received_pps'] / fp['received_pps']:.2f}x "
          "what AF_PACKET does: XDP redirects each frame into the UMEM with one copy and no skb, where the "
          "stack path builds an skb, runs the packet taps (`tpacket_rcv` copies it into tcpdump's ring) and "
          "drops it in IP. With trafgen's skbs the order flips "
          f"({tx['received_pps'] / 1e3:.0f} against {tp['received_pps'] / 1e3:.0f} kpps): the sender's CPU, which "
          f"carries the receive work on veth, spends {ns_tx:.0f} ns per packet with mos-xdp on the receiver "
          f"against {ns_tp:.0f} ns with tcpdump, because veth's native XDP first copies each skb into a page "
          "(`skb_pp_cow_data`, in the profile below) and copy-mode AF_XDP then copies it again into the UMEM; "
          "tcpdump's path has the one copy of `tpacket_rcv`. That extra copy is veth's, for skbs only: a NIC, "
          "like the frame sender, hands XDP its own pages.")
        lost = [x["k_rx_ring_full"] for x in fx["runs"]]
        if any(lost):
            w(f"  Flat out with frames, the engine (CPU {CONSUMER_CPU}, {fx['receiver_cpu']:.0%} busy) lost "
              f"{fx['loss']:.3%} (median) of {fx['sent_pps'] / 1e3:.0f} kpps to a full AF_XDP RX ring "
              f"({'/'.join(f'{n:,}' for n in lost)} frames in the three runs). It is not short of CPU: the 4096 "
              f"descriptors of the default ring last {4096 / fx['sent_pps'] * 1e3:.1f} ms at that rate, and the "
              "engine sometimes waits longer than that to run again (woken from poll(), or preempted on this "
              "shared machine). tcpdump's sender is slower (the stack path costs more on CPU 0) and its 16 MiB "
              "ring holds 100 ms of it.")
        big = rx.get(("xdp", None, "af_xdp_big"))
        if big:
            per_run = ", ".join(f"{x['loss']:.3%}" for x in big["runs"])
            w(f"  With `--ring {BIG_RING}` (4x the descriptors, 2 x {BIG_RING} frames = "
              f"{2 * BIG_RING * 4096 >> 20} MiB of UMEM): {big['received_pps'] / 1e3:.0f} kpps received, loss "
              f"{big['loss']:.3%} (median; runs: {per_run}).")
    w("")

    # 3
    w("### 3. Inline forwarding (iperf3, one TCP stream)\n")
    w(f"`iperf3 --client S --time {a.seconds:g} --json` from ns c to ns s across ns m. Kernel: `ip_forward=1` in m, "
      "m's veths addressed, routes on c and s. mos-xdp: `mos-xdp run APP --iface MI --peer MO` in m (native XDP on "
      "both, AF_XDP copy mode, one worker, not pinned), c and s in one subnet; bypass: an app that calls "
      "`conn.bypass()` when both ends are ESTABLISHED (the rest of the connection is redirected between the veths "
      "in XDP). End hosts: `ethtool -K tx off tso off gso off gro on` in every mode (1500-byte frames).\n")
    w("| path through m | Gbit/s (median) | of kernel forwarding | retransmits | runs (Gbit/s) | "
      "counters (median run) |")
    w("| --- | ---: | ---: | ---: | --- | --- |")
    kern = inl["kernel"]["gbps"]
    labels = {"kernel": "kernel forwarding", "mos": "mos-xdp inline, no-handler app",
              "mos-bypass": "mos-xdp inline, `conn.bypass()` after the handshake"}
    for mode, r in inl.items():
        mr = r["median_run"]
        ctr = ""
        if "xdp" in mr:
            keep = ("xsk_redirect", "bypass_redirect", "pass_not_ip")
            ctr = ", ".join(f"{k} {mr['xdp'].get(k, 0):,}" for k in keep if mr["xdp"].get(k))
            af = mr["af_xdp"]
            ctr += "; AF_XDP " + ", ".join(f"{k} {af.get(k, 0):,}" for k in ("rx_packets", "tx_packets", "tx_ring_full",
                                                                             "kicks", "polls") if af.get(k))
        w(f"| {labels[mode]} | {r['gbps']:.2f} | {r['gbps'] / kern:.0%} | {r['retransmits']:.0f} | "
          + ", ".join(f"{x['gbps']:.2f}" for x in r["runs"]) + f" | {ctr or '-'} |")
    w("")
    mos = inl["mos"]["gbps"]
    w(f"- **Target: inline forwarding at least half of kernel forwarding**: {mos:.2f} against {kern:.2f} Gbit/s "
      f"({mos / kern:.0%}): {verdict(mos >= kern / 2)}. With bypass after the handshake: "
      f"{inl['mos-bypass']['gbps']:.2f} Gbit/s ({inl['mos-bypass']['gbps'] / kern:.0%}). Where the inline time "
      "goes (profile below): the `mos-xdp` process carries the copy-mode AF_XDP work of both directions "
      "(`__xsk_generic_xmit` builds an skb and copies each frame out of the UMEM, and the receiving end's TCP "
      "stack runs in its context), plus the engine; with bypass the packets never leave XDP "
      "(`bpf_redirect_map` into the peer veth) and skip m's IP stack: as fast as kernel forwarding or faster.\n")

    if profiles:
        w("### Where the time goes\n")
        w("`perf record -a -F 997` for 3 s in the middle of one extra run of each (both CPUs, so the other work "
          "on the machine shows too; shares are of the samples taken, an idle CPU may go unsampled), "
          "`perf report --no-children --sort cpu,comm` and `--sort comm,symbol` (entries of "
          "1.2% or more; softirq work is charged to the command it interrupted, so the sender (`trafgen`, or `python3` "
          "sending XDP frames) includes the "
          "receiving veth's NAPI poll, XDP and AF_XDP/AF_PACKET delivery):\n")
        names = {"af_xdp_max_trafgen": "mos-xdp (AF_XDP) receiving, trafgen flat out",
                 "af_packet_max_trafgen": "tcpdump (AF_PACKET) receiving, trafgen flat out",
                 "af_xdp_max_xdp": "mos-xdp (AF_XDP) receiving, XDP frames flat out",
                 "af_packet_max_xdp": "tcpdump (AF_PACKET) receiving, XDP frames flat out",
                 "inline_mos": "iperf3 through mos-xdp inline (no-handler app)",
                 "inline_kernel": "iperf3 through kernel forwarding"}
        for k, txt in profiles.items():
            w(f"<details><summary>{names.get(k, k)}</summary>\n\n```\n{txt}\n```\n</details>\n")

    w("### Commands (live section)\n")
    w("```sh")
    seen = set()
    for c in commands_log:
        c2 = c.replace(str(ROOT) + "/", "")
        c2 = c2.replace(tag, "TAG")
        if c2 not in seen:
            seen.add(c2)
            w(c2)
    w("```")
    w(END)
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------------

def installed(pkg: str) -> bool:
    return "install ok installed" in sh(["dpkg-query", "-W", "-f=${Status}", pkg], check=False).stdout


def install() -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not (MOS.exists() and MOSPY.exists()):
        log("the project's .venv is missing: bash scripts/setup.sh")
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True)
    missing = [p for p in APT if not installed(p)]
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        if sh(cmd, check=False, env=env, timeout=900).returncode != 0:
            sh(["apt-get", "update", "-qq"], env=env, timeout=900)
            sh(cmd, env=env, timeout=900)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-xdp":
        bare_xdp_main(sys.argv[2], sys.argv[3])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--xdp-frames":
        xdp_frames_main(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    ap.add_argument("--no-profile", action="store_true", help="skip the perf profiles")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--only", default="drop,rx,inline", help="comma-separated parts to run (drop, rx, inline)")
    ap.add_argument("--results", default=str(RESULTS), help="the file whose live section is replaced")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the section from the last full run's figures (bench/work/live-results.json)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("live bench: run as root (namespaces, XDP, apt)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("live bench: needs 2 CPUs (sender on CPU 0, receivers on CPU 1)")
    saved = WORK / "live-results.json"
    if a.report_only:
        d = json.loads(saved.read_text())
        commands_log[:] = d["commands"]
        a.runs, a.seconds = d["runs"], d["seconds"]
        rx_d = {(k[0], k[1], k[2]): k[3] for k in d["rx"]}
        section = report(a, d["drop"], rx_d, d["inline"], d["profiles"], d["load_start"], d["t_start"], d["tag"],
                         d.get("load_end"), d.get("t_end"))
        write_section("live", section, Path(a.results))
        print(section)
        return
    t_start = time.time()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    WORK.mkdir(parents=True, exist_ok=True)
    if not a.skip_install:
        install()
    parts = {x.strip() for x in a.only.split(",")}
    stats_before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    bench = Live(a)
    atexit.register(bench.topo.close)
    atexit.register(lambda: bpf_stats(stats_before == "1"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        bench.build()
        drop = bench.fast_drop() if "drop" in parts else []
        rx = bench.rx() if "rx" in parts else {}
        inl = bench.inline() if "inline" in parts else {}
        if not a.no_profile:
            bench.profile()
    finally:
        bench.topo.close()
        bpf_stats(stats_before == "1")
    if not (drop and rx and inl):
        print(json.dumps({"drop": drop, "rx": {str(k): v for k, v in rx.items()}, "inline": inl,
                          "profiles": bench.profiles}, indent=1,
                         default=str))
        log("partial run (--only): bench/RESULTS.md left alone")
        return
    saved.write_text(json.dumps({
        "runs": a.runs, "seconds": a.seconds, "drop": drop, "rx": [[k[0], k[1], k[2], v] for k, v in rx.items()],
        "inline": inl, "profiles": bench.profiles, "load_start": load_start, "t_start": t_start,
        "tag": bench.topo.tag, "commands": commands_log, "load_end": machine()["load"], "t_end": time.time()},
        indent=1))
    section = report(a, drop, rx, inl, bench.profiles, load_start, t_start, bench.topo.tag)
    write_section("live", section, Path(a.results))
    print(section)


if __name__ == "__main__":
    main()
