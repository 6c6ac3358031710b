"""A working NAT (issue 12, item 5): ``apps/nat.py`` inline in the topology of tests/test_live.py, and the
engine's aliases it rests on (``Connection.set_alias``), offline.

Live: clients "c" (two addresses) -- mos-xdp running the NAT in "m" -- server "s", which answers every
connection with the address and port it sees it from. So the test checks what the server received (the
NAT address, a port of the range), what the clients received (whole, byte-identical transfers), that the
box answered ARP for an address no host owns, that ports come back and are reused, that several workers
each get the replies of their own connections, and that what the NAT cannot translate is dropped.
"""

# ruff: noqa: F811
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from mos import Event, Monitor, MosError, Side, StaleConnection
from tests.test_live import BIG, CLIENT, CLIENT2, NET, PORT, SERVER, Inline, LiveRun, inline  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent
NAT_APP = str(ROOT / "apps" / "nat.py")
NAT_IP = f"10.211.{NET}.48"
WHOAMI_PORT = 8200

# The server's side of the check: each connection is told the address and port it came from, then the
# server waits for the client to close first (so the client, not the server, keeps TIME_WAIT).
WHOAMI = """
    import socket, threading
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(({addr!r}, {port}))
    srv.listen(64)
    def serve(c, peer):
        with c:
            c.sendall(f"{{peer[0]}} {{peer[1]}}\\n".encode())
            c.settimeout(30)
            try:
                while c.recv(4096):
                    pass
            except OSError:
                pass
    while True:
        c, peer = srv.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""

# A client of WHOAMI: what the server saw, from the given source address (or TIMEOUT).
WHOAMI_CLIENT = """
    import socket, sys
    s = socket.socket()
    s.settimeout({timeout})
    s.bind(({src!r}, 0))
    try:
        s.connect(({addr!r}, {port}))
        print(s.makefile().readline().strip())
    except (socket.timeout, OSError) as e:
        print("TIMEOUT" if isinstance(e, socket.timeout) else f"ERROR {{e}}")
    s.close()
"""


@pytest.fixture(scope="module")
def nat_net(inline: Inline) -> Iterator[Inline]:  # noqa: F811
    """The inline topology with the whoami server in "s"."""
    inline.topo.spawn(inline.s, sys.executable, "-c", textwrap.dedent(WHOAMI.format(addr=SERVER, port=WHOAMI_PORT)),
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield inline


def whoami(net: Inline, src: str = CLIENT, timeout: float = 5) -> str:
    code = WHOAMI_CLIENT.format(src=src, addr=SERVER, port=WHOAMI_PORT, timeout=timeout)
    return str(net.c.python(textwrap.dedent(code), timeout=timeout + 30).stdout.strip())


def seen_from(line: str) -> Tuple[str, int]:
    addr, port = line.split()
    return addr, int(port)


def _nat(net: Inline, *extra: str, ports: str = "") -> LiveRun:
    args = ["--", "--ip", NAT_IP] + (["--ports", ports] if ports else [])
    return net.run(NAT_APP, *extra, *args)


def _finish_line(run: LiveRun) -> str:
    out = run.stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("nat: ")]
    assert lines, out
    return lines[-1]


# ---- live ---------------------------------------------------------------------------------------------


@pytest.mark.netns
def test_nat_several_curl_clients(nat_net: Inline, tmp_path: Path) -> None:
    """Curl from two client addresses at once, small and 24 MB files: each transfer whole and identical;
    the server saw only the NAT address; the box answered ARP for it; the engine made one connection per
    transfer (no picked-up halves: the replies joined their connections through the alias)."""
    net = nat_net
    run = _nat(net, "--stats")
    try:
        results: Dict[str, subprocess.CompletedProcess] = {}
        jobs = [("big1", "big.bin", CLIENT), ("big2", "big.bin", CLIENT2), ("s1", "small.txt", CLIENT),
                ("s2", "small.txt", CLIENT2), ("s3", "small.txt", CLIENT)]
        threads = [threading.Thread(target=lambda n=n, p=p, s=s: results.__setitem__(n, net.curl(p, tmp_path / n, s)))
                   for n, p, s in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        seen = [seen_from(whoami(net, src)) for src in (CLIENT, CLIENT2)]
        neigh = net.s.run("ip", "neigh", "show", NAT_IP).stdout
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    for name, path, _ in jobs:
        assert name in results, f"curl {name} did not finish in time"
        assert results[name].returncode == 0, (name, results[name].stderr)
        assert hashlib.sha256((tmp_path / name).read_bytes()).digest() == \
            hashlib.sha256((net.www / path).read_bytes()).digest(), name
    assert all(addr == NAT_IP and 1025 <= port <= 65534 for addr, port in seen), seen
    assert seen[0][1] != seen[1][1]
    mo_mac = re.search(r"link/ether (\S+)", net.m.run("ip", "-o", "link", "show", "dev", net.mo).stdout).group(1)  # type: ignore[union-attr]
    assert mo_mac in neigh, (neigh, mo_mac)  # the server side learnt the box's MAC for the NAT address
    assert f"nat: {len(jobs) + 2} connection(s) translated to {NAT_IP}, 0 port(s) in use at the end; refused: none" \
        in run.stdout, run.stdout
    eng = run.engine_counters()
    assert eng.get("conns_picked_up", 0) == 0 and eng["conns_created"] == len(jobs) + 2, eng
    assert eng["alias_packets"] > (2 * BIG) // 1500, eng  # the replies, which carried the NAT's address
    assert eng["translated_packets"] == eng["conn_packets"], eng  # every packet rewritten, in the engine
    assert run.counters().get("arp_reply", 0) >= 1
    net.assert_clean()


@pytest.mark.netns
def test_nat_reuses_ports(nat_net: Inline) -> None:
    """Two ports for six connections one after the other: each gets a port back once the last ended."""
    net = nat_net
    run = _nat(net, ports="40000-40001")
    try:
        seen = [seen_from(whoami(net)) for _ in range(6)]
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    assert {addr for addr, _ in seen} == {NAT_IP}
    assert [port for _, port in seen] == [40000, 40001] * 3, seen  # first in, first out
    assert "refused: none" in _finish_line(run)


@pytest.mark.netns
def test_nat_no_free_port_and_unsolicited_are_dropped(nat_net: Inline) -> None:
    """With one port held by an open connection, the next connection is dropped (not forwarded with the
    client's own address); a connection from the server's side to the NAT address meets nothing."""
    net = nat_net
    run = _nat(net, ports="40000-40000")
    holder = None
    try:
        code = textwrap.dedent(f"""
            import socket, sys, time
            s = socket.create_connection(({SERVER!r}, {WHOAMI_PORT}), timeout=5)
            print(s.makefile().readline().strip(), flush=True)
            time.sleep(30)
        """)
        holder = net.c.popen(sys.executable, "-c", code, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None
        first = holder.stdout.readline().strip()
        second = whoami(net, timeout=2)
        inbound = net.s.python(textwrap.dedent(f"""
            import socket
            s = socket.socket(); s.settimeout(2)
            try:
                s.connect(({NAT_IP!r}, 40000)); print("CONNECTED")
            except (socket.timeout, OSError) as e:
                print("TIMEOUT" if isinstance(e, socket.timeout) else f"ERROR {{e}}")
        """), timeout=30).stdout.strip()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
            time.sleep(0.5)  # its close crosses the NAT before the stop (a handler the stop interrupts is an error)
        code_ = run.stop()
    assert code_ == 0, run.stderr
    assert seen_from(first) == (NAT_IP, 40000)
    assert second == "TIMEOUT"
    assert inbound == "TIMEOUT"
    line = _finish_line(run)
    assert "no free port" in line and "to the NAT address" in line, line


@pytest.mark.netns
def test_nat_two_workers(nat_net: Inline, tmp_path: Path) -> None:
    """Two workers: a port is taken only if the replies to it are steered to the worker that has the
    connection, so every connection works, whichever worker has it."""
    net = nat_net
    run = _nat(net, "--workers", "2")
    try:
        seen = [whoami(net, src) for src in (CLIENT, CLIENT2) * 4]
        r = net.curl("big.bin", tmp_path / "big")
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    assert all(seen_from(s)[0] == NAT_IP for s in seen), seen
    assert r.returncode == 0 and (tmp_path / "big").stat().st_size == BIG
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("nat: ")]
    assert len(lines) == 2, run.stdout  # one report per worker
    total = sum(int(re.search(r"nat: (\d+) connection", ln).group(1)) for ln in lines)  # type: ignore[union-attr]
    assert total == len(seen) + 1 and all("refused: none" in ln for ln in lines), lines
    net.assert_clean()


# ---- offline: the aliases ------------------------------------------------------------------------------

C, S, N = "10.0.0.1", "10.0.0.2", "10.0.0.48"


def _translated_capture(path: Path, proto: str = "tcp") -> None:
    """What a NAT box sees: the client's packets as it sent them, the server's addressed to N:40000."""
    pk: List = []

    def c2s(flags: str, seq: int, ack: int, data: bytes = b"") -> None:
        l4 = TCP(sport=5000, dport=80, flags=flags, seq=seq, ack=ack) if proto == "tcp" else UDP(sport=5000, dport=53)
        pk.append(Ether() / IP(src=C, dst=S) / l4 / Raw(data))

    def s2n(flags: str, seq: int, ack: int, data: bytes = b"") -> None:
        l4 = TCP(sport=80, dport=40000, flags=flags, seq=seq, ack=ack) if proto == "tcp" else UDP(sport=53, dport=40000)
        pk.append(Ether() / IP(src=S, dst=N) / l4 / Raw(data))

    if proto == "tcp":
        c2s("S", 100, 0)
        s2n("SA", 900, 101)
        c2s("A", 101, 901)
        c2s("PA", 101, 901, b"GET / HTTP/1.0\r\n\r\n")
        s2n("PA", 901, 119, b"HTTP/1.0 200 OK\r\n\r\nhello")
        s2n("FA", 925, 119)
        c2s("FA", 119, 926)
        s2n("A", 926, 120)
    else:
        c2s("", 0, 0, b"query")
        s2n("", 0, 0, b"answer")
    for i, p in enumerate(pk):
        p.time = 1 + i * 0.01
    wrpcap(str(path), pk)


def _aliasing_monitor(order: str = "packet") -> Tuple[Monitor, Dict[str, object]]:
    m = Monitor(order=order)
    seen: Dict[str, object] = {"data": {0: b"", 1: b""}, "ends": [], "pkt_sides": []}

    def start(conn, ev):  # type: ignore[no-untyped-def]
        conn.set_alias(Side.CLIENT, N, 40000)
        seen["alias"] = conn.alias

    def data(conn, ev):  # type: ignore[no-untyped-def]
        seen["data"][int(ev.side)] += ev.data or b""  # type: ignore[index]

    def pkt(conn, ev):  # type: ignore[no-untyped-def]
        seen["pkt_sides"].append((int(ev.side), ev.packet.dst))  # type: ignore[attr-defined]

    m.on(Event.CONN_START, start)
    m.on(Event.CONN_NEW_DATA, data)
    m.on(Event.PKT_IN, pkt)
    m.on(Event.CONN_END, lambda c, ev: seen["ends"].append((c.info()["end"], c.info()["client_addr"])))  # type: ignore[attr-defined]
    return m, seen


def test_alias_joins_the_replies_to_their_connection(tmp_path: Path) -> None:
    """The server's packets to the alias are the connection's: one connection, both streams, a FIN close;
    handlers see the packets as they were on the wire."""
    _translated_capture(tmp_path / "nat.pcap")
    m, seen = _aliasing_monitor()
    st = m.run_pcap(str(tmp_path / "nat.pcap"))
    assert seen["alias"] == (Side.CLIENT, N, 40000)
    assert seen["data"] == {0: b"HTTP/1.0 200 OK\r\n\r\nhello", 1: b"GET / HTTP/1.0\r\n\r\n"}
    assert seen["ends"] == [("FIN", C)]
    assert (0, N) in seen["pkt_sides"]  # received by the client: the reply, as addressed on the wire
    assert st["conns_created"] == 1 and st["conns_picked_up"] == 0 and st["alias_packets"] == 4
    assert st["bad_checksum_tcp"] == 0  # the checksums cover the wire's addresses, not the connection's


def test_alias_udp_flow(tmp_path: Path) -> None:
    """A UDP flow's answer to the alias joins the flow."""
    _translated_capture(tmp_path / "udp.pcap", "udp")
    m, seen = _aliasing_monitor()
    st = m.run_pcap(str(tmp_path / "udp.pcap"))
    assert st["conns_created"] == 1 and st["alias_packets"] == 1 and st["udp_packets"] == 2
    assert [s for s, _ in seen["pkt_sides"]] == [1, 0]  # type: ignore[attr-defined]


def test_alias_without_it_the_replies_are_another_connection(tmp_path: Path) -> None:
    """The control: no alias, and the replies make a picked-up one-sided connection of their own."""
    _translated_capture(tmp_path / "nat.pcap")
    st = Monitor().run_pcap(str(tmp_path / "nat.pcap"))
    assert st["conns_created"] == 2 and st["conns_picked_up"] == 1 and st["alias_packets"] == 0


def test_alias_newest_claim_wins_and_goes_with_its_connection(tmp_path: Path) -> None:
    """Two connections claim one alias: the second takes it; a connection that ended cannot take one."""
    pk = []
    for i, cport in enumerate((5000, 5001)):
        pk.append(Ether() / IP(src=C, dst=S) / TCP(sport=cport, dport=80, flags="S", seq=100 + i))
    pk.append(Ether() / IP(src=S, dst=N) / TCP(sport=80, dport=40000, flags="SA", seq=900, ack=102))
    for i, p in enumerate(pk):
        p.time = 1 + i * 0.01
    wrpcap(str(tmp_path / "two.pcap"), pk)
    m = Monitor(order="packet")
    got: Dict[int, List[int]] = {}
    conns = []

    def start(conn, ev):  # type: ignore[no-untyped-def]
        if conn.info()["client_addr"] == C:
            conn.set_alias(Side.CLIENT, N, 40000)
            conns.append(conn)

    def pkt(conn, ev):  # type: ignore[no-untyped-def]
        got.setdefault(conn.info()["client_port"], []).append(int(ev.side))

    m.on(Event.CONN_START, start)
    m.on(Event.PKT_IN, pkt)
    st = m.run_pcap(str(tmp_path / "two.pcap"))
    assert got == {5000: [1], 5001: [1, 0]}, got  # the SYN-ACK went to the newer claimant
    assert st["conns_created"] == 2
    assert conns[0].alive is False
    with pytest.raises(StaleConnection):
        conns[0].set_alias(Side.CLIENT, N, 40001)


def test_alias_bad_input(tmp_path: Path) -> None:
    """A bad address, port or side, or the connection's own endpoint: one clear error each."""
    _translated_capture(tmp_path / "nat.pcap")
    m = Monitor(order="packet")
    errors: List[str] = []

    def start(conn, ev):  # type: ignore[no-untyped-def]
        for args in ((Side.CLIENT, "2001:db8::1", 1), (Side.CLIENT, N, 70000), (Side.BOTH, N, 1),
                     (Side.CLIENT, C, 5000), (Side.CLIENT, "not an address", 1)):
            try:
                conn.set_alias(*args)
            except MosError as e:
                errors.append(str(e))

    m.on(Event.CONN_START, start)
    m.run_pcap(str(tmp_path / "nat.pcap"))
    assert len(errors) >= 5 and all("\n" not in e for e in errors), errors
    assert "not an IPv4 address" in errors[0]
    assert "0..65535" in errors[1]
    assert "Side.CLIENT or Side.SERVER" in errors[2]
    assert "own endpoint" in errors[3]


def test_nat_app_offline_refuses_what_it_cannot_translate(tmp_path: Path) -> None:
    """On a capture the app judges as live: here the replies to a port it did not give out are a
    picked-up connection, refused."""
    def run_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mos.cli", "run", *args], capture_output=True, text=True,
                              cwd=str(ROOT), timeout=120)

    _translated_capture(tmp_path / "nat.pcap")
    r = run_cli(NAT_APP, "--pcap", str(tmp_path / "nat.pcap"), "--", "--ip", N)
    assert r.returncode == 0, r.stderr
    assert "nat: 1 connection(s) translated to 10.0.0.48, 0 port(s) in use at the end; refused: picked up 1" \
        in r.stdout
    bad = run_cli(NAT_APP, "--pcap", str(tmp_path / "nat.pcap"), "--", "--ip", N, "--ports", "9-2")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "LO-HI" in bad.stderr


@pytest.mark.netns
def test_nat_refuses_a_passive_run(nat_net: Inline) -> None:
    """A NAT must forward what it translates: a passive run is refused in one line, nothing left attached."""
    import os

    net = nat_net
    r = net.m.run(sys.executable, "-m", "mos.cli", "run", NAT_APP, "--iface", net.mi, "--", "--ip", NAT_IP,
                  check=False, timeout=120, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode != 0
    assert "run it inline" in r.stderr and "Traceback" not in r.stderr, r.stderr
    net.assert_clean()
