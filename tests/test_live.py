"""The live path end to end: ``mos-xdp run APP --iface`` on veth pairs in private network namespaces.

Inline topology (module scope)::

    ns "c" lc 10.211.N.1/24 (+.3) <-- veth --> mi [ns "m": mos-xdp inline] mo <-- veth --> ls 10.211.N.2/24 ns "s"

The client and the server sit in one subnet; the middle box is a bump in the wire: ARP and ICMP cross it
in XDP (fail-open), TCP goes through AF_XDP, the engine and the app, and out of the other interface.
veth specifics: the end hosts compute their checksums (``ethtool -K tx off``: a frame forwarded by XDP
never gets an offloaded checksum filled in) and send MTU-sized frames (no TSO/GSO); GRO is on at the
ends so that XDP_REDIRECT into a veth (bypassed connections) works.

Passive mode has its own pair: tcpreplay in ns "a" plays captures into a veth whose other end has
mos-xdp attached. Every run is bounded in time, and every test checks that no XDP program is left.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from mos import xdp
from mos.net.topology import XDP_END_HOST
from tests.netns import Netns, Topology, reap_stale, require_root

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
NET = random.randint(1, 250)
CLIENT, CLIENT2, SERVER = f"10.211.{NET}.1", f"10.211.{NET}.3", f"10.211.{NET}.2"
PORT = 8000
BIG = 24 << 20
SMALL = b"hello world from the mos-xdp server\n" * 4
READY = "mos-xdp: live on"


class LiveRun:
    """``mos-xdp run`` in a namespace, its output collected by threads; stopped with SIGINT."""

    def __init__(self, ns: Netns, *args: str, env: Optional[Dict[str, str]] = None) -> None:
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = ns.popen(sys.executable, "-m", "mos.cli", "run", *args, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=full_env, cwd=str(ROOT))
        self.out: List[str] = []
        self.err: List[str] = []
        self._threads = [threading.Thread(target=self._read, args=(s, d), daemon=True)
                         for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream, dest: List[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            dest.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if any(READY in line for line in self.err):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"mos-xdp run did not start (rc {self.proc.returncode}):\n{self.stderr}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"mos-xdp run did not stop within {timeout}s:\n{self.stderr}")
        for t in self._threads:
            t.join(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def counters(self, prefix: str = "  xdp:") -> Dict[str, int]:
        """A final counters line of stderr (``  xdp: k=v ...``) as a dict."""
        for line in self.err:
            if line.startswith(prefix):
                return {k: int(v) for k, v in (kv.split("=") for kv in line[len(prefix):].split())}
        return {}

    def engine_counters(self) -> Dict[str, int]:
        """The engine counters printed by ``--stats``."""
        out: Dict[str, int] = {}
        on = False
        for line in self.err:
            if line.startswith("counters:"):
                on = True
                continue
            parts = line.split()
            if on and len(parts) == 2 and parts[1].isdigit():
                out[parts[0]] = int(parts[1])
        return out


def xdp_left(ns: Netns) -> List[str]:
    """Interfaces of ``ns`` with an XDP program attached."""
    return [f"{lk.ifname}: xdp {lk.mode} id {lk.prog_id}" for lk in ns.xdp_links()]


class Inline:
    """The inline topology with an HTTP server in "s"."""

    def __init__(self, topo: Topology, c: Netns, m: Netns, s: Netns, mi: str, mo: str, www: Path) -> None:
        self.topo, self.c, self.m, self.s, self.mi, self.mo, self.www = topo, c, m, s, mi, mo, www

    def run(self, app: str, *extra: str, env: Optional[Dict[str, str]] = None) -> LiveRun:
        r = LiveRun(self.m, app, "--iface", self.mi, "--peer", self.mo, *extra, env=env)
        self._current = r
        r.wait_ready()
        return r

    def curl(self, path: str, out: Path, src: str = CLIENT, max_time: float = 60) -> subprocess.CompletedProcess:
        return self.c.run("curl", "-sS", "--interface", src, "-o", str(out), "--max-time", str(max_time),
                          f"http://{SERVER}:{PORT}/{path}", check=False, timeout=max_time + 30)

    def split_request(self, first: bytes, second: bytes, wait: float = 3.0) -> str:
        """A request sent in two writes (TCP_NODELAY, a pause between them); the reply or TIMEOUT/RESET."""
        code = f"""
            import socket, struct, sys, time
            s = socket.create_connection(({SERVER!r}, {PORT}), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # closing aborts (RST): a dropped connection must not retransmit into the next test's run
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
            s.sendall({first!r})
            time.sleep(0.3)
            s.sendall({second!r})
            s.settimeout({wait})
            data = b''
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except socket.timeout:
                print('TIMEOUT' if not data else data.decode(errors='replace'))
                sys.exit(0)
            except ConnectionResetError:
                print('RESET')
                sys.exit(0)
            print(data.decode(errors='replace'))
        """
        return self.c.python(code, timeout=wait + 30).stdout.strip()

    def assert_clean(self) -> None:
        assert xdp_left(self.m) == [], "an XDP program was left attached"
        with self.m.entered():  # pins and state are kept per namespace: mi's are m's
            assert not xdp.XdpProgram.pin_dir(self.mi).exists()
            assert not xdp.XdpProgram.state_path(self.mi).exists()


@pytest.fixture(scope="module")
def inline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inline]:
    require_root()
    reap_stale()
    www = tmp_path_factory.mktemp("www")
    (www / "big.bin").write_bytes(os.urandom(BIG))
    (www / "small.txt").write_bytes(SMALL)
    with Topology() as topo:
        c, m, s = topo.netns("c"), topo.netns("m"), topo.netns("s")
        tag = topo.tag[-6:]
        mi, mo, lc, ls = f"mi{tag}", f"mo{tag}", f"lc{tag}", f"ls{tag}"
        topo.veth(c, lc, m, mi, f"{CLIENT}/24", None, extra_a=[f"{CLIENT2}/24"])
        topo.veth(m, mo, s, ls, None, f"{SERVER}/24")
        for ns, dev in ((c, lc), (s, ls)):
            ns.ethtool(dev, XDP_END_HOST)
        topo.spawn(s, sys.executable, "-m", "http.server", "-b", SERVER, str(PORT), "-d", str(www),
                   stop_signal=signal.SIGKILL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def _leftovers() -> None:
            with m.entered():
                xdp.detach(mi)

        topo.on_close(_leftovers)
        env = Inline(topo, c, m, s, mi, mo, www)
        deadline = time.time() + 10
        # (from the server's own namespace: without mos-xdp running the middle box forwards nothing)
        while s.tcp_connect(SERVER, PORT, b"GET /small.txt HTTP/1.0\r\n\r\n", timeout=1) is None:
            assert time.time() < deadline, "the HTTP server did not come up"
            time.sleep(0.2)
        yield env


def _app(tmp: Path, name: str, body: str) -> str:
    p = tmp / name
    p.write_text(textwrap.dedent(body))
    return str(p)


RECORD_APP = """
    import json, os
    from mos import Event, Side

    OUT = os.environ["MOS_TEST_OUT"]
    BYPASS_AFTER = int(os.environ.get("MOS_TEST_BYPASS_AFTER", "0"))
    REWRITE = os.environ.get("MOS_TEST_REWRITE", "").encode()

    def _ctx(conn):
        if conn.ctx is None:
            conn.ctx = {"events": [], "bypass_packets": None, "data_events": [0, 0]}
        return conn.ctx

    def _start(conn, ev):
        if "CONN_START" not in _ctx(conn)["events"]:
            conn.ctx["events"].append("CONN_START")

    def _data(conn, ev):
        ctx = _ctx(conn)
        ctx["data_events"][int(ev.side)] += 1
        if BYPASS_AFTER and ev.side is Side.CLIENT and ctx["bypass_packets"] is None \\
                and conn.stream_offset(Side.CLIENT) >= BYPASS_AFTER:
            i = conn.info()
            ctx["bypass_packets"] = i["c2s_packets"] + i["s2c_packets"]
            conn.bypass()
        if REWRITE and ev.side is Side.CLIENT:
            payload = conn.last_packet.payload
            at = payload.find(REWRITE)
            while at >= 0:
                conn.set_last_packet(REWRITE.upper(), offset=at, layer="payload")
                ctx["events"].append("REWRITE")
                at = payload.find(REWRITE, at + 1)

    def _end(conn, ev):
        ctx = _ctx(conn)
        i = conn.info()
        rec = {"pid": os.getpid(), "id": conn.id, "client": i["client"], "server": i["server"],
               "end": ev.reason.name, "c2s_packets": i["c2s_packets"], "s2c_packets": i["s2c_packets"],
               "c2s_stream": i["c2s_stream"], "s2c_stream": i["s2c_stream"], "events": ctx["events"] + ["CONN_END"],
               "bypass_packets": ctx["bypass_packets"], "data_events": ctx["data_events"],
               "xdp_rx": conn._mon.bpf.stats()["rx"] if conn._mon._live is not None else None}
        with open(OUT, "a") as f:
            f.write(json.dumps(rec) + "\\n")

    def init(mon):
        if os.environ.get("MOS_TEST_STREAMS"):
            mon.write_streams(os.environ["MOS_TEST_STREAMS"])
        mon.on(Event.CONN_START, _start)
        mon.on(Event.CONN_NEW_DATA, _data)
        mon.on(Event.CONN_END, _end)
"""


def _records(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# ---- inline ---------------------------------------------------------------------------------------------


def test_inline_transfer_is_byte_identical(inline: Inline, tmp_path: Path) -> None:
    """curl fetches 24 MB through the middle box: identical bytes; the app sees the connection's events
    and both reassembled directions (written by the engine)."""
    out, streams = tmp_path / "records.jsonl", tmp_path / "streams"
    streams.mkdir()
    app = _app(tmp_path, "record.py", RECORD_APP)
    run = inline.run(app, "--stats", env={"MOS_TEST_OUT": str(out), "MOS_TEST_STREAMS": str(streams)})
    try:
        t0 = time.time()
        r = inline.curl("big.bin", tmp_path / "big.bin")
        took = time.time() - t0
        assert r.returncode == 0, r.stderr
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert (tmp_path / "big.bin").read_bytes() == (inline.www / "big.bin").read_bytes(), f"took {took:.1f}s"
    [rec] = [x for x in _records(out) if x["server"] == f"{SERVER}:{PORT}"]
    assert rec["events"][0] == "CONN_START" and rec["events"][-1] == "CONN_END" and rec["end"] == "FIN"
    assert rec["s2c_packets"] > BIG // 1500 and rec["c2s_packets"] > 10
    assert rec["xdp_rx"] > rec["s2c_packets"]  # monitor.bpf.stats() from a handler
    c2s = (streams / f"{rec['id']}.c2s").read_bytes()
    s2c = (streams / f"{rec['id']}.s2c").read_bytes()
    assert c2s.startswith(b"GET /big.bin HTTP/1.1\r\n") and c2s.endswith(b"\r\n\r\n")
    head, _, body = s2c.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == (inline.www / "big.bin").read_bytes()
    xdp = run.counters()
    assert xdp["xsk_redirect"] >= rec["c2s_packets"] + rec["s2c_packets"]
    af = run.counters("  af_xdp worker 0:")
    assert af["tx_packets"] == af["rx_packets"] >= xdp["xsk_redirect"] - 5
    assert "detached XDP program" in run.stderr
    inline.assert_clean()


def test_firewall_drops_split_pattern(inline: Inline, tmp_path: Path) -> None:
    """apps/firewall.py drops the connection whose request carries /etc/passwd across two segments; a
    transfer running meanwhile and later connections are untouched."""
    app = str(ROOT / "apps" / "firewall.py")
    run = inline.run(app, "--", "--pattern", "/etc/passwd")
    try:
        ok = inline.split_request(b"GET /sma", b"ll.txt HTTP/1.0\r\n\r\n")
        assert ok.startswith("HTTP/1.0 200") and SMALL.decode().strip() in ok
        big = inline.c.popen("curl", "-sS", "--interface", CLIENT, "-o", str(tmp_path / "big.bin"), "--max-time",
                             "60", f"http://{SERVER}:{PORT}/big.bin", stderr=subprocess.PIPE)
        bad = inline.split_request(b"GET /etc/pa", b"sswd HTTP/1.0\r\n\r\n")
        assert bad in ("TIMEOUT", "RESET"), bad
        assert big.wait(timeout=90) == 0
        after = inline.split_request(b"GET /small", b".txt HTTP/1.0\r\n\r\n")
        assert after.startswith("HTTP/1.0 200")
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert (tmp_path / "big.bin").read_bytes() == (inline.www / "big.bin").read_bytes()
    assert run.stdout.count("firewall: dropped connection") == 1
    assert "'/etc/passwd'" in run.stdout and "firewall: 1 connection(s) dropped" in run.stdout
    xdp = run.counters()
    assert xdp.get("bypass_drop", 0) >= 1  # the client's retransmissions died in XDP
    assert run.counters("  af_xdp worker 0:").get("verdict_drop", 0) >= 1  # the segment with "sswd"
    inline.assert_clean()


def test_block_list_drops_in_xdp(inline: Inline, tmp_path: Path) -> None:
    """A prefix blocked by the app (monitor.block) is dropped in XDP: the engine never sees it."""
    app = str(ROOT / "apps" / "firewall.py")
    run = inline.run(app, "--stats", "--arg", f"block={CLIENT2}/32")
    try:
        blocked = inline.curl("small.txt", tmp_path / "b.txt", src=CLIENT2, max_time=3)
        assert blocked.returncode != 0
        fine = inline.curl("small.txt", tmp_path / "a.txt")
        assert fine.returncode == 0 and (tmp_path / "a.txt").read_bytes() == SMALL
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert f"firewall: blocked {CLIENT2}/32 in XDP" in run.stdout
    assert run.counters()["drop_blocked_prefix"] >= 2  # the SYN and its retransmissions
    eng = run.engine_counters()
    assert eng["conns_created"] == 1, eng  # only CLIENT's connection reached the engine
    inline.assert_clean()


def test_bypass_lets_the_rest_through_xdp(inline: Inline, tmp_path: Path) -> None:
    """After conn.bypass() the transfer completes in XDP while the engine's packet count stops rising."""
    out = tmp_path / "records.jsonl"
    app = _app(tmp_path, "record.py", RECORD_APP)
    run = inline.run(app, env={"MOS_TEST_OUT": str(out), "MOS_TEST_BYPASS_AFTER": str(1 << 20)})
    try:
        r = inline.curl("big.bin", tmp_path / "big.bin")
        assert r.returncode == 0, r.stderr
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert (tmp_path / "big.bin").read_bytes() == (inline.www / "big.bin").read_bytes()
    [rec] = _records(out)
    at = rec["bypass_packets"]
    total = rec["c2s_packets"] + rec["s2c_packets"]
    assert at is not None and at < 2000
    assert total - at <= 256 * 2, (at, total)  # at most the rest of the batch in flight (per direction)
    assert run.counters()["bypass_redirect"] > BIG // 1500 // 2
    inline.assert_clean()


def test_rewrite_fixes_checksums(inline: Inline, tmp_path: Path) -> None:
    """conn.set_last_packet rewrites the server's bytes in flight; the client receives them (so the TCP
    checksum was fixed: a bad one would be dropped and retransmitted forever)."""
    out = tmp_path / "records.jsonl"
    app = _app(tmp_path, "record.py", RECORD_APP)
    run = inline.run(app, env={"MOS_TEST_OUT": str(out), "MOS_TEST_REWRITE": "hello"})
    try:
        r = inline.curl("small.txt", tmp_path / "s.txt", max_time=10)
        assert r.returncode == 0, r.stderr
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    assert (tmp_path / "s.txt").read_bytes() == SMALL.replace(b"hello", b"HELLO")
    assert "REWRITE" in _records(out)[0]["events"]
    inline.assert_clean()


def test_workers_each_connection_reaches_one_worker(inline: Inline, tmp_path: Path) -> None:
    """--workers 2: every connection, both directions, is seen by exactly one worker; both work."""
    out = tmp_path / "records.jsonl"
    app = _app(tmp_path, "record.py", RECORD_APP)
    run = inline.run(app, "--workers", "2", "--stats", env={"MOS_TEST_OUT": str(out)})
    try:
        for i in range(16):
            r = inline.curl("small.txt", tmp_path / f"s{i}.txt", max_time=10)
            assert r.returncode == 0, r.stderr
            assert (tmp_path / f"s{i}.txt").read_bytes() == SMALL
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    recs = _records(out)
    by_client: Dict[str, List[dict]] = {}
    for rec in recs:
        by_client.setdefault(rec["client"], []).append(rec)
    assert len(by_client) == 16, recs
    for client, rs in by_client.items():
        assert len(rs) == 1, (client, rs)  # one worker only: no picked-up half in the other
        assert rs[0]["c2s_packets"] >= 3 and rs[0]["s2c_packets"] >= 3 and rs[0]["end"] == "FIN"
    assert len({r["pid"] for r in recs}) == 2
    assert run.stderr.count("counters:") == 2  # each worker reports its own engine
    inline.assert_clean()


# ---- passive ---------------------------------------------------------------------------------------------


def _streams_app(tmp: Path) -> str:
    return _app(tmp, "streams_app.py", """
        import json, os
        from mos import Event, Side
        from mos.communityid import community_id

        OUT = os.environ["MOS_TEST_STREAMS"]
        rows, gaps = [], {}

        def init(mon):
            mon.write_streams(OUT)

            @mon.on(Event.DATA_GAP)
            def gap(conn, ev):
                g = gaps.setdefault(conn.id, ([], []))
                g[0 if ev.side is Side.SERVER else 1].append([ev.offset, ev.length])

            @mon.on(Event.CONN_END)
            def end(conn, ev):
                i = conn.info()
                c2s, s2c = gaps.pop(conn.id, ([], []))
                rows.append({"id": i["id"], "client": i["client"], "server": i["server"],
                             "c2s_bytes": i["c2s_stream"] - sum(g[1] for g in c2s),
                             "s2c_bytes": i["s2c_stream"] - sum(g[1] for g in s2c),
                             "c2s_gaps": c2s, "s2c_gaps": s2c, "end": ev.reason.name,
                             "community_id": community_id(i["client_addr"], i["server_addr"], i["client_port"],
                                                          i["server_port"])})

        def finish(mon):
            with open(os.path.join(OUT, "index.jsonl"), "w") as f:
                for r in sorted(rows, key=lambda r: r["id"]):
                    f.write(json.dumps(r) + "\\n")
    """)


@pytest.mark.parametrize("queues", [1, 0], ids=["one-queue", "kernel-default-queues"])
def test_passive_replay_gives_the_pcap_streams(tmp_path: Path, queues: int) -> None:
    """tcpreplay plays a capture into a veth; mos-xdp (passive) on the other end gives the same streams as
    `mos-xdp streams` on the file. Also on a veth made without numrxqueues, which has more queues allocated
    than in use (AF_XDP sockets go on the queues in use)."""
    require_root()
    reap_stale()
    from demo.offline import build_demo_pcap

    pcap = build_demo_pcap(tmp_path / "demo.pcap")
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, "-m", "mos.cli", "streams", str(pcap), "-o", str(ref), "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    with Topology() as topo:
        a, b = topo.netns("pa"), topo.netns("pb")
        tag = topo.tag[-6:]
        va, vb = f"pa{tag}", f"pb{tag}"
        topo.veth(a, va, b, vb, queues=queues)
        ring = ["--ring", "256"] if queues == 0 else []  # (and a small ring: 512 frames in all)
        run = LiveRun(b, _streams_app(tmp_path), "--iface", vb, *ring, env={"MOS_TEST_STREAMS": str(live_dir)})
        try:
            run.wait_ready()
            rp = a.run("tcpreplay", "-q", "-i", va, "--pps", "1000", str(pcap), check=False, timeout=60)
            assert rp.returncode == 0, rp.stderr
            time.sleep(1)
        finally:
            rc = run.stop(signal.SIGTERM)
        assert rc == 0, run.stderr
        assert xdp_left(b) == []
    want = [json.loads(x) for x in (ref / "index.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (live_dir / "index.jsonl").read_text().splitlines()]
    keys = ("id", "client", "server", "c2s_bytes", "s2c_bytes", "c2s_gaps", "s2c_gaps", "community_id")
    assert [{k: w[k] for k in keys} for w in want] == [{k: g[k] for k in keys} for g in got]
    assert len(got) >= 5
    for row in want:
        for d in ("c2s", "s2c"):
            mine = live_dir / f"{row['id']}.{d}"
            assert (mine.read_bytes() if mine.exists() else b"") == (ref / f"{row['id']}.{d}").read_bytes()
    counters = run.counters()
    assert counters["xsk_redirect"] == run.counters("  af_xdp worker 0:")["rx_packets"]


# ---- errors ---------------------------------------------------------------------------------------------


def test_user_errors_are_one_line(inline: Inline, tmp_path: Path) -> None:
    app = _app(tmp_path, "noop.py", "def init(mon):\n    pass\n")

    def cli(*args: str, user: bool = False) -> subprocess.CompletedProcess:
        # (nobody cannot read pytest's temporary directory: an app from the checkout then)
        cmd = [sys.executable, "-m", "mos.cli", "run", str(ROOT / "apps" / "midstat.py") if user else app, *args]
        if user:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        return subprocess.run(inline.m.cmd(*cmd), capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd="/")

    cases = [
        (["--iface", "nosuchif0"], "interface nosuchif0 does not exist"),
        (["--iface", inline.mi, "--peer", "nosuchif1"], "interface nosuchif1 does not exist"),
        (["--iface", inline.mi, "--peer", inline.mi], "--peer must be another interface"),
        (["--iface", inline.mi, "--ring", "1000"], "--ring 1000: the AF_XDP ring size must be a power of two"),
    ]
    for args, msg in cases:
        r = cli(*args)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
    r = cli("--iface", inline.mi, user=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        "Error: mos-xdp run --iface needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo"], r.stderr
    inline.assert_clean()
