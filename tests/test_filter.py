"""Monitor filters in tcpdump syntax (``Monitor(filter=...)``, ``--filter``): offline on captures built here,
the XDP push-down analyser (a property test against libpcap), and live in network namespaces.

Every expectation is derived from the packets the test wrote."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw

from mos import Event, Monitor, Side
from mos.abi import lib
from mos.errors import MosError
from mos.stats import accounted
from tests import pcaps
from tests.conftest import REPO, read_index, run_cli
from tests.pcaps import Built, Conv, payload

# ---------------------------------------------------------------------------------------------------------
# helpers


def merge(*builts: Built) -> Built:
    """The records of several captures in time order."""
    return Built(sorted((r for b in builts for r in b.records), key=lambda r: r[0]))


def conversation(cip: str, sip: str, cport: int, sport: int, t0: float, req: bytes = b"GET / HTTP/1.0\r\n\r\n",
                 resp: bytes = b"") -> Tuple[Built, int]:
    """A complete TCP conversation (handshake, a request, a response, close); its packet count."""
    c = Conv(cip=cip, sip=sip, cport=cport, sport=sport, t0=t0)
    c.handshake()
    c.send(True, req)
    c.send(False, resp or payload("R", 1500))
    c.close()
    return c.built(), len(c.records)


def sport(conn) -> int:  # type: ignore[no-untyped-def]
    """The server's port of a connection."""
    return int(conn.server.rsplit(":", 1)[1])


class Seen:
    """What a monitor's handlers saw: connections started (by server port), PKT_IN per side, orphans."""

    def __init__(self, mon: Monitor) -> None:
        self.starts: List[int] = []
        self.pkt_in: Counter = Counter()
        self.orphans = 0
        self.bytes: Dict[Tuple[int, str], int] = Counter()

        @mon.on(Event.CONN_START)
        def start(conn, ev) -> None:  # type: ignore[no-untyped-def]
            self.starts.append(sport(conn))

        @mon.on(Event.PKT_IN)
        def pkt(conn, ev) -> None:  # type: ignore[no-untyped-def]
            self.pkt_in[(sport(conn), ev.side)] += 1

        @mon.on(Event.CONN_NEW_DATA)
        def data(conn, ev) -> None:  # type: ignore[no-untyped-def]
            self.bytes[(sport(conn), ev.side)] += ev.length

        @mon.on(Event.ORPHAN)
        def orphan(conn, ev) -> None:  # type: ignore[no-untyped-def]
            self.orphans += 1


def run(tmp_path: Path, built: Built, **kw: object) -> Tuple[Seen, Dict[str, int]]:
    mon = Monitor(**kw)  # type: ignore[arg-type]
    seen = Seen(mon)
    st = mon.run_pcap(built.write(tmp_path / "f.pcap"))
    assert accounted(st) == st["packets"], st
    return seen, st


def two_flows() -> Tuple[Built, int, int]:
    a, na = conversation("10.10.0.1", "10.10.0.2", 40000, 80, 1000.0)
    b, nb = conversation("10.9.0.1", "192.168.1.2", 5555, 8000, 1000.0005)
    return merge(a, b), na, nb


# ---------------------------------------------------------------------------------------------------------
# the engine's filter, offline


def test_no_filter_sees_both(tmp_path: Path) -> None:
    built, na, nb = two_flows()
    seen, st = run(tmp_path, built)
    assert sorted(seen.starts) == [80, 8000]
    assert st["filtered_out"] == 0 and st["filter_evaluated"] == 0 and st["conn_packets"] == na + nb


@pytest.mark.parametrize("expr, monitored", [
    ("tcp port 80", 80), ("port 8000", 8000), ("net 10.9.0.0/16", 8000), ("host 10.10.0.2 and tcp", 80),
    ("tcp and (port 80 or port 1)", 80), ("src host 10.9.0.1", 8000),
])
def test_only_matching_flows_raise_events(tmp_path: Path, expr: str, monitored: int) -> None:
    built, na, nb = two_flows()
    n_mon, n_out = (na, nb) if monitored == 80 else (nb, na)
    seen, st = run(tmp_path, built, filter=expr)
    assert seen.starts == [monitored]
    assert sum(seen.pkt_in.values()) == n_mon and {p for p, _ in seen.pkt_in} == {monitored}
    assert st["conn_packets"] == n_mon and st["filtered_out"] == n_out
    # one judgement per flow: the first packet; the filtered flow's later packets are not judged again
    assert st["filter_evaluated"] == 2 and st["filtered_flows"] == 1


def test_reverse_direction_only_match_monitors_both_sides(tmp_path: Path) -> None:
    """``dst port 8000`` matches only the client's packets; the connection's both directions are monitored
    (mOS: the filter judges the flow's first packet)."""
    built, na, nb = two_flows()
    seen, st = run(tmp_path, built, filter="dst port 8000")
    assert seen.starts == [8000]
    assert seen.pkt_in[(8000, Side.CLIENT)] > 0 and seen.pkt_in[(8000, Side.SERVER)] > 0
    assert seen.bytes[(8000, Side.SERVER)] == len(b"GET / HTTP/1.0\r\n\r\n")  # received by the server
    assert seen.bytes[(8000, Side.CLIENT)] == 1500
    assert st["conn_packets"] == nb and st["filtered_out"] == na
    # a filter matching only the server's direction: the SYN does not match, the flow is left out whole
    seen, st = run(tmp_path, built, filter="src port 8000")
    assert seen.starts == [] and st["filtered_out"] == na + nb


def test_orphans_filtered(tmp_path: Path) -> None:
    """UDP as orphans (protocols tcp) and TCP orphans (pick-up off) are judged one by one; UDP flows by
    their first datagram."""
    recs: List[Tuple[float, bytes, int]] = []
    t = 1000.0
    for port in (53, 53, 123, 53, 5353):
        t += 0.001
        f = bytes(Ether(src=pcaps.CMAC, dst=pcaps.SMAC) / IP(src="10.0.0.1", dst="10.0.0.2") /
                  UDP(sport=40000, dport=port) / Raw(b"x" * 8))
        recs.append((t, f, len(f)))
    mid = pcaps.midstream_pickup()  # no SYN: orphans without pick-up
    built = merge(Built(recs), mid)
    n_mid = len(mid.records)
    seen, st = run(tmp_path, built, filter="udp port 53", pickup=False, protocols=("tcp",))
    assert seen.orphans == 3 and st["orphan_untracked_proto"] == 3 and st["filtered_out"] == 2 + n_mid
    # UDP flows (the default): the flow to port 53 is one connection, its 3 datagrams; the others left out
    seen, st = run(tmp_path, built, filter="udp port 53", pickup=False)
    assert seen.starts == [53] and st["udp_packets"] == 3 and st["filtered_out"] == 2 + n_mid
    seen, st = run(tmp_path, built, filter="tcp", pickup=False)
    assert seen.orphans == n_mid and st["orphan_no_conn"] == n_mid and st["filtered_out"] == 5
    assert seen.starts == []


def test_fragments_judged_as_datagrams(tmp_path: Path) -> None:
    """A datagram reassembled from fragments is judged whole (its ports are in its first fragment)."""
    b = pcaps.ipv4_fragments()
    seen, st = run(tmp_path, b, filter="tcp port 80")
    assert seen.starts == [80] and st["filtered_out"] == 0
    assert seen.bytes[(80, Side.SERVER)] == len(b.c2s) and seen.bytes[(80, Side.CLIENT)] == len(b.s2c)
    seen, st = run(tmp_path, b, filter="tcp port 81")
    assert seen.starts == [] and st["conn_packets"] == 0 and st["filtered_out"] > 0


def test_vlan_needs_the_vlan_keyword(tmp_path: Path) -> None:
    """As with tcpdump, a tagged frame's ports are matched after ``vlan``."""
    b = pcaps.vlan_tagged((100,))
    seen, _ = run(tmp_path, b, filter="tcp port 80")
    assert seen.starts == []
    seen, _ = run(tmp_path, b, filter="vlan 100 and tcp port 80")
    assert seen.starts == [80]


def test_syn_judged_again_and_idle_entry_ends(tmp_path: Path) -> None:
    """A remembered flow's new SYN is judged again; an entry idle past its timeout is gone."""
    c = Conv(cport=41000, sport=80)
    c.handshake()
    c.send(True, b"abc")
    c.t += 100  # past timeout_syn? no: both ends were seen, so timeout_established applies
    c.send(True, b"def")
    c.t += 1000  # past timeout_established: a new flow, judged again
    c.send(True, b"ghi")
    seen, st = run(tmp_path, c.built(), filter="tcp[tcpflags] & tcp-syn != 0 and port 1")
    assert st["filtered_out"] == len(c.records) and st["filtered_flows"] == 2
    # SYN, then the packet after the idle time (its own "first packet")
    assert st["filter_evaluated"] == 2
    d = Conv(cport=41001, sport=80)
    d.tcp(True, "S")
    d.tcp(True, "S")  # a new attempt on a remembered flow: judged again
    d.tcp(True, "A")
    seen, st = run(tmp_path, d.built(), filter="port 1")
    assert st["filter_evaluated"] == 2 and st["filtered_out"] == 3 and st["filtered_flows"] == 1


def test_filtered_flows_cost_memory(tmp_path: Path) -> None:
    """A flow left out costs one small entry (not a connection), and the table stops at max_conns."""
    recs = []
    for i in range(3000):
        f = bytes(Ether(src=pcaps.CMAC, dst=pcaps.SMAC) / IP(src=f"10.1.{i // 250}.{i % 250 + 1}", dst="10.2.0.1") /
                  TCP(sport=1024 + i, dport=9999, flags="S"))
        recs.append((1000 + i * 1e-4, f, len(f)))
    mon = Monitor(filter="port 80", max_conns=2000)
    st = mon.run_pcap(Built(recs).write(tmp_path / "m.pcap"))
    assert st["filtered_out"] == 3000 and st["filtered_flows"] == 3000 and st["conns_created"] == 0
    assert lib.mos_engine_filtered_flows(mon._eng) == 2000  # the least recently seen made room
    entry = lib.mos_filter_entry_size()
    assert entry * 4 <= lib.mos_conn_size()
    mem = lib.mos_engine_filter_mem(mon._eng)
    assert 2000 * entry <= mem <= 2001 * entry + 4096 * 4 + 4096


def test_link_types(tmp_path: Path) -> None:
    """The filter is compiled for the capture's link type (raw IP here); a primitive that type cannot
    have is a one-line error."""
    a, na = conversation("10.10.0.1", "10.10.0.2", 40000, 80, 1000.0)
    path = tmp_path / "raw.pcap"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for ts, frame, _ in a.records:
            ip = frame[14:]
            fh.write(struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(ip), len(ip)) + ip)
    mon = Monitor(filter="tcp port 80")
    seen = Seen(mon)
    st = mon.run_pcap(str(path))
    assert seen.starts == [80] and st["conn_packets"] == na
    with pytest.raises(MosError, match=r"^filter 'ether host 1:2:3:4:5:6' for link type \d+: .*ethernet"):
        Monitor(filter="ether host 1:2:3:4:5:6").run_pcap(str(path))


@pytest.mark.parametrize("expr, words", [("tcp port", "syntax error"), ("port 99999", "port"),
                                         ("host 1.2.3.4.5", ""), ("tcp and", "syntax error")])
def test_bad_expression_api(expr: str, words: str) -> None:
    with pytest.raises(MosError) as ei:
        Monitor(filter=expr)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"filter {expr!r}: ") and words in msg
    with pytest.raises(MosError, match="tcpdump syntax"):
        Monitor(filter=80)  # type: ignore[arg-type]


def test_empty_filter_is_none(tmp_path: Path) -> None:
    built, na, nb = two_flows()
    seen, st = run(tmp_path, built, filter="")
    assert sorted(seen.starts) == [80, 8000] and st["filter_evaluated"] == 0


def test_bad_expression_cli(tmp_path: Path) -> None:
    built, _, _ = two_flows()
    pcap = built.write(tmp_path / "f.pcap")
    for cmd in (["streams", str(pcap)], ["run", "apps/midstat.py", "--pcap", str(pcap)]):
        proc = subprocess.run([sys.executable, "-m", "mos.cli", *cmd, "--filter", "tcp port"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "tcp port" in lines[0] and "syntax error" in lines[0], proc.stderr


def test_streams_filter_output(tmp_path: Path) -> None:
    built, na, nb = two_flows()
    pcap = built.write(tmp_path / "f.pcap")
    out = tmp_path / "out"
    proc = run_cli(pcap, "-o", out, "--filter", "dst port 8000", "--stats")
    assert proc.returncode == 0, proc.stderr
    rows = read_index(out)
    assert [r["server"] for r in rows] == ["192.168.1.2:8000"]
    assert (out / f"{rows[0]['id']}.c2s").read_bytes() == b"GET / HTTP/1.0\r\n\r\n"
    assert len((out / f"{rows[0]['id']}.s2c").read_bytes()) == 1500
    stats = proc.stdout.decode() + proc.stderr.decode()
    assert f"filtered_out {na}" in " ".join(stats.split())
    # the table (no -o)
    proc = run_cli(pcap, "--filter", "tcp port 80")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert "10.10.0.2:80" in text and "192.168.1.2:8000" not in text


# ---------------------------------------------------------------------------------------------------------
# the push-down analyser

from mos.bpf_filter import PushDown, analyse  # noqa: E402

V4 = ["10.0.0.1", "10.1.2.3", "192.168.1.5", "172.16.0.9", "8.8.8.8", "10.9.0.1"]
V6 = ["2001:db8::1", "2001:db8:1::5", "fe80::1", "::1"]
PORTS = [22, 53, 80, 443, 1000, 1005, 8000, 8080, 40000]


@pytest.mark.parametrize("expr, protocols, ports, prefixes", [
    ("tcp port 80 and net 10.0.0.0/8", {6}, {80}, {"10.0.0.0/8"}),
    ("tcp or udp port 53", {6, 17}, None, None),
    ("port 80 or 443", {6, 17, 132}, {80, 443}, None),
    ("tcp dst port 8000", {6}, {8000}, None),
    ("host 10.0.0.1 and not host 10.0.0.2", None, None, {"10.0.0.1/32"}),
    ("udp portrange 1000-1002 or tcp port 22", {6, 17}, {22, 1000, 1001, 1002}, None),
    ("net 10 or net 192.168.1", None, None, {"10.0.0.0/8", "192.168.1.0/24"}),
    ("ip6 net 2001:db8::/32 and tcp", {6}, None, {"2001:db8::/32"}),
    ("src port 1 and dst port 2", {6, 17, 132}, {1}, None),  # either port: one side only, never their meet
    ("tcp and (port 80 or port 8080)", {6}, {80, 8080}, None),
    ("tcp port http", {6}, {80}, None),
    ("icmp", {1}, None, None),
])
def test_pushdown_of(expr: str, protocols, ports, prefixes) -> None:  # type: ignore[no-untyped-def]
    import ipaddress

    pd = analyse(expr)
    assert pd.protocols == (None if protocols is None else frozenset(protocols))
    assert pd.ports == (None if ports is None else frozenset(ports))
    assert pd.prefixes == (None if prefixes is None else frozenset(ipaddress.ip_network(p) for p in prefixes))


@pytest.mark.parametrize("expr", ["not port 22", "vlan 100 and tcp port 80", "tcp[13] & 2 != 0", "ip",
                                  "host localhost", "less 100", "ether host 1:2:3:4:5:6 and tcp port 80",
                                  "tcp port 80 and greater 60", ""])
def test_nothing_pushed(expr: str) -> None:
    assert analyse(expr).empty


def _frames(rng) -> List[Tuple[bytes, int, Optional[int], Optional[int], str, str]]:  # type: ignore[no-untyped-def]
    from scapy.all import ICMP, ICMPv6EchoRequest, IPv6

    out = []
    for _ in range(300):
        v6 = rng.random() < 0.3
        src, dst = rng.sample(V6 if v6 else V4, 2)
        l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
        kind = rng.choice(["tcp", "udp", "icmp"])
        sp, dp = rng.choice(PORTS), rng.choice(PORTS)
        if kind == "tcp":
            pkt, proto, ports = l3 / TCP(sport=sp, dport=dp, flags=rng.choice(["S", "A", "PA"])), 6, (sp, dp)
        elif kind == "udp":
            pkt, proto, ports = l3 / UDP(sport=sp, dport=dp), 17, (sp, dp)
        else:
            pkt, proto, ports = l3 / (ICMPv6EchoRequest() if v6 else ICMP()), 58 if v6 else 1, (None, None)
        out.append((bytes(Ether(src=pcaps.CMAC, dst=pcaps.SMAC) / pkt), proto, ports[0], ports[1], src, dst))
    return out


def _expressions(rng, n: int) -> List[str]:  # type: ignore[no-untyped-def]
    def atom() -> str:
        r = rng.random()
        if r < 0.15:
            return rng.choice(["tcp", "udp", "icmp", "ip", "ip6", "icmp6"])
        if r < 0.5:
            q = " ".join(x for x in (rng.choice(["", "tcp", "udp"]), rng.choice(["", "src", "dst"])) if x)
            p = rng.choice(PORTS)
            if rng.random() < 0.2:
                return f"{q} portrange {p}-{p + rng.randint(0, 10)}".strip()
            more = f" or {rng.choice(PORTS)}" if rng.random() < 0.3 else ""
            return f"{q} port {p}{more}".strip()
        if r < 0.75:
            d = rng.choice(["", "src ", "dst "])
            return f"{d}host {rng.choice(V4 + V6)}"
        d = rng.choice(["", "src ", "dst "])
        return f"{d}net " + rng.choice(["10.0.0.0/8", "10", "192.168.1", "172.16.0.0/12", "2001:db8::/32",
                                        "10.1.2.0/24", "0.0.0.0/0"])

    def expr(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return atom()
        r = rng.random()
        if r < 0.15:
            return f"not {expr(depth - 1)}"
        if r < 0.3:
            return f"({expr(depth - 1)})"
        return f"{expr(depth - 1)} {rng.choice(['and', 'or'])} {expr(depth - 1)}"

    return [expr(3) for _ in range(n)]


def test_pushdown_is_sound_against_libpcap() -> None:
    """For random frames and random expressions of the subset: whatever libpcap's filter accepts, the
    pushed-down tests accept too (the XDP program can only leave out what the filter would)."""
    import random as _random

    from mos.abi import ffi

    rng = _random.Random(12)
    frames = [(ffi.from_buffer(f), len(f), *rest) for f, *rest in _frames(rng)]
    err = ffi.new("char[256]")
    checked = pushed = 0
    for expr in _expressions(rng, 2000):
        f = lib.mos_bpf_compile(expr.encode(), lib.MOS_DLT_EN10MB, err, 256)
        if f == ffi.NULL:
            continue  # (say, ip6 host 10.0.0.1): libpcap refuses it, the engine would too
        try:
            pd = analyse(expr)
            pushed += not pd.empty
            for frame, n, proto, sp, dp, src, dst in frames:
                if lib.mos_bpf_match(f, frame, n, n):
                    checked += 1
                    assert pd.admits(proto, sp, dp, src, dst), (expr, pd, proto, sp, dp, src, dst)
        finally:
            lib.mos_bpf_free(f)
    assert checked > 20000 and pushed > 1000  # the test exercised the analyser


def test_pushdown_admits_other_direction() -> None:
    """Each test is symmetric: a flow's reply passes whatever its first packet passed."""
    pd = analyse("tcp dst port 80 and src net 10.0.0.0/8")
    assert pd.admits(6, 40000, 80, "10.0.0.1", "1.2.3.4") and pd.admits(6, 80, 40000, "1.2.3.4", "10.0.0.1")
    assert not pd.admits(6, 40000, 81, "10.0.0.1", "1.2.3.4") and not pd.admits(17, 40000, 80, "10.0.0.1", "1.2.3.4")
    assert isinstance(pd, PushDown) and "ports 80" in pd.describe()


# ---------------------------------------------------------------------------------------------------------
# live: the push-down in the inline topology of tests/test_live.py

from tests.test_live import CLIENT, PORT, SERVER, Inline, inline  # noqa: E402,F401

OTHER_PORT = PORT + 1


@pytest.mark.netns
def test_live_filter_pushes_down(inline: Inline, tmp_path: Path) -> None:  # noqa: F811
    """``--filter "tcp port 8000"``: XDP sends only port 8000 to the engine; a transfer on another port
    crosses the middle box in XDP (pass_not_monitored), and the engine never sees it."""
    import signal as _signal

    inline.topo.spawn(inline.s, sys.executable, "-m", "http.server", "-b", SERVER, str(OTHER_PORT), "-d",
                      str(inline.www), stop_signal=_signal.SIGKILL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    run = inline.run(str(REPO / "apps" / "midstat.py"), "--stats", "--filter", f"tcp port {PORT}")
    try:
        assert f"filter 'tcp port {PORT}': pushed down to XDP: protocols tcp, ports {PORT}" in run.stderr
        other = tmp_path / "other.bin"
        for _ in range(50):  # the second server may still be starting
            r = inline.c.run("curl", "-sS", "--interface", CLIENT, "-o", str(other), "--max-time", "10",
                             f"http://{SERVER}:{OTHER_PORT}/big.bin", check=False, timeout=60)
            if r.returncode == 0:
                break
        assert r.returncode == 0, r.stderr
        assert other.read_bytes() == (inline.www / "big.bin").read_bytes()
        mine = inline.curl("small.txt", tmp_path / "small.txt")
        assert mine.returncode == 0 and (tmp_path / "small.txt").read_bytes() == pcaps_small(inline)
    finally:
        rc = run.stop()
    assert rc == 0, run.stderr
    xdp_c = run.counters()
    eng = run.engine_counters()
    big = (inline.www / "big.bin").stat().st_size
    assert xdp_c["pass_not_monitored"] > big // 1500, xdp_c  # the other transfer, in XDP
    # only the monitored connection reached the engine: a dozen packets, not the big transfer
    assert 5 <= xdp_c["xsk_redirect"] < 100, xdp_c
    assert eng["conns_created"] == 1 and eng.get("filtered_out", 0) == 0, eng  # (zeros are not printed)
    assert f"filter: {xdp_c['pass_not_monitored']} frames left out in XDP" in run.stderr
    inline.assert_clean()


def pcaps_small(env: Inline) -> bytes:
    return (env.www / "small.txt").read_bytes()
