"""The Python event API (mos/monitor.py) over small captures built here (scapy, or raw struct frames where
many packets are needed). Every expected value is derived from the packets the test wrote."""

from __future__ import annotations

import socket
import struct
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, fragment

from mos import EndReason, ErrorKind, Event, Filter, Hook, Monitor, Side, TcpState
from mos.stats import accounted
from tests import pcaps
from tests.pcaps import REQ, Built, Conv, payload

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
CLIENT_IP, SERVER_IP = "10.10.0.1", "10.10.0.2"

# ---------------------------------------------------------------------------------------------------------
# helpers


def write(tmp_path: Path, built: Built, name: str = "t") -> Path:
    return built.write(tmp_path / f"{name}.pcap")


def run(tmp_path: Path, mon: Monitor, built: Built, name: str = "t") -> Dict[str, int]:
    return mon.run_pcap(write(tmp_path, built, name))


def merge(*builts: Built) -> Built:
    """The records of several captures in time order (stable for equal times)."""
    recs = sorted((r for b in builts for r in b.records), key=lambda r: r[0])
    return Built(recs)


def decoded(built: Built) -> List[dict]:
    """What each record of a capture holds, decoded by scapy (TCP/IPv4 records only)."""
    out = []
    for ts, frame, _orig in built.records:
        p = Ether(frame)
        if IP not in p or TCP not in p:
            out.append({"ts": ts, "tcp": False})
            continue
        t = p[TCP]
        out.append({
            "ts": ts, "tcp": True, "src": p[IP].src, "dst": p[IP].dst, "sport": t.sport, "dport": t.dport,
            "seq": t.seq, "ack": t.ack, "flags": int(t.flags), "window": t.window,
            "payload": bytes(t.payload), "caplen": len(frame),
        })
    return out


def udp_filler(n: int, t0: float) -> Built:
    """n UDP datagrams (not TCP: no connection) -- used to push later packets into another batch of 256."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frame = bytes(eth / IP(src="10.99.0.1", dst="10.99.0.2") / UDP(sport=9, dport=9) / Raw(b"x" * 8))
    return Built([(t0 + i * 1e-6, frame, len(frame)) for i in range(n)])


def filler_between(built_first: Built, built_rest: Built, filler: int) -> Built:
    """`filler` UDP packets between two parts of a capture (0: none; 300: the rest is in a later batch)."""
    t = built_first.records[-1][0]
    return Built(built_first.records + udp_filler(filler, t + 0.0001).records + built_rest.records)


def spread(built: Built, n: int) -> Built:
    """n UDP datagrams after each record: every batch of 256 packets then holds at most one of the
    capture's packets, so handlers run before the engine sees the next one."""
    if n == 0:
        return built
    recs = []
    for ts, frame, orig in built.records:
        recs.append((ts, frame, orig))
        recs += udp_filler(n, ts + 1e-6).records
    return Built(recs)


def us(ts: float) -> float:
    """A pcap timestamp as the capture stores it (microseconds)."""
    return round(ts, 6)


# Raw frames with struct: scapy costs ~100 us per packet, too slow for thousands of connections.

ETH_HDR = bytes.fromhex("020000000002" "020000000001" "0800")


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_frame(src: str, dst: str, proto: int, l4: bytes, ident: int = 0, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return ETH_HDR + hdr + l4


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int = 0,
              data: bytes = b"", window: int = 65535) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, seq % (1 << 32), ack % (1 << 32), 5 << 4, flags, window, 0, 0)
    # a real checksum: the engine drops what a host would (tests/test_checksum.py)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(l4) + len(data))
    l4 = l4[:16] + struct.pack("!H", _csum(pseudo + l4 + data + b"\0" * (len(data) % 2))) + l4[18:]
    return ipv4_frame(src, dst, 6, l4 + data)


class FastConn:
    """A TCP connection written as raw frames with explicit timestamps (sequence numbers tracked)."""

    def __init__(self, records: list, cip: str, sip: str, cport: int, sport: int, cisn: int = 1000,
                 sisn: int = 90000):
        self.records = records
        self.cip, self.sip, self.cport, self.sport = cip, sip, cport, sport
        self.nxt = {True: cisn, False: sisn}

    def seg(self, ts: float, from_client: bool, flags: int, data: bytes = b"") -> None:
        src, dst, sp, dp = ((self.cip, self.sip, self.cport, self.sport) if from_client
                            else (self.sip, self.cip, self.sport, self.cport))
        ack = self.nxt[not from_client] if flags & ACK else 0
        f = tcp_frame(src, dst, sp, dp, flags, self.nxt[from_client], ack, data)
        self.nxt[from_client] += len(data) + bool(flags & SYN) + bool(flags & FIN)
        self.records.append((ts, f, len(f)))

    def handshake(self, ts: float, dt: float = 1e-6) -> None:
        self.seg(ts, True, SYN)
        self.seg(ts + dt, False, SYN | ACK)
        self.seg(ts + 2 * dt, True, ACK)

    def close(self, ts: float, dt: float = 1e-6) -> None:
        self.seg(ts, True, FIN | ACK)
        self.seg(ts + dt, False, FIN | ACK)
        self.seg(ts + 2 * dt, True, ACK)


def timed_conn(seconds: int, t0: float = 100.0) -> Built:
    """One connection with exactly one packet per second at t0, t0+1, ..., t0+seconds."""
    recs: list = []
    c = FastConn(recs, CLIENT_IP, SERVER_IP, 40100, 80)
    c.seg(t0, True, SYN)
    c.seg(t0 + 1, False, SYN | ACK)
    c.seg(t0 + 2, True, ACK)
    for k in range(3, seconds + 1):
        c.seg(t0 + k, k % 2 == 1, PSH | ACK, f"data-{k}".encode())
    return Built(recs)


def by_side(events: Sequence[Tuple]) -> Dict[Side, List]:
    out: Dict[Side, List] = {Side.CLIENT: [], Side.SERVER: []}
    for e in events:
        out[e[0]].append(e[1:])
    return out


# ---------------------------------------------------------------------------------------------------------
# PKT_IN and packet views


def test_pkt_in_at_both_hooks_once_per_packet(tmp_path):
    b = pcaps.basic_close()
    seen = []
    mon = Monitor()
    for hook in (Hook.SND, Hook.RCV):
        mon.on(Event.PKT_IN, lambda c, e: seen.append((e.hook, e.side, us(e.packet.ts), e.packet.src)), hook=hook)
    run(tmp_path, mon, b)
    expected = []
    for p in decoded(b):
        sender = Side.CLIENT if p["src"] == CLIENT_IP else Side.SERVER
        expected += [(Hook.SND, sender, us(p["ts"]), p["src"]), (Hook.RCV, sender.peer, us(p["ts"]), p["src"])]
    assert seen == expected


def test_pkt_in_rcv_for_accepted_rst_before_conn_end(tmp_path):
    """The in-window RST is processed by both stacks: PKT_IN at SND and at RCV, then CONN_END (RST)."""
    b = pcaps.rst_in_window()
    seen = []
    mon = Monitor()
    for hook in (Hook.SND, Hook.RCV):
        mon.on(Event.PKT_IN, lambda c, e: seen.append(("pkt", e.hook, e.packet.tcp_flags)), hook=hook)
    mon.on(Event.CONN_END, lambda c, e: seen.append(("end", e.reason)))
    run(tmp_path, mon, b)
    pk = decoded(b)
    rst_index = next(i for i, p in enumerate(pk) if p["flags"] & RST)
    expected = []
    for p in pk[: rst_index + 1]:
        expected += [("pkt", Hook.SND, p["flags"]), ("pkt", Hook.RCV, p["flags"])]
    expected.append(("end", EndReason.RST))
    assert seen == expected


def test_packet_view_fields_and_last_packet(tmp_path):
    b = pcaps.basic_close()
    views = []
    mon = Monitor()

    @mon.on(Event.PKT_IN)
    def pkt(conn, ev):
        p = ev.packet
        assert conn.last_packet == p
        views.append({
            "ts": us(p.ts), "tcp": True, "src": p.src, "dst": p.dst, "sport": p.sport, "dport": p.dport,
            "seq": p.seq, "ack": p.ack, "flags": p.tcp_flags, "window": p.window, "payload": p.payload,
            "caplen": p.caplen,
        })
        assert ev.tcp_flags == p.tcp_flags and p.proto == 6 and p.ip_version == 4 and p.wirelen == p.caplen

    run(tmp_path, mon, b)
    exp = decoded(b)
    for e in exp:
        e["ts"] = us(e["ts"])
    assert views == exp


def test_packet_view_syn_options(tmp_path):
    b = pcaps.window_scaling()
    syns = []
    mon = Monitor()
    mon.on(Event.PKT_IN, lambda c, e: syns.append((e.packet.tcp_flags, e.packet.mss, e.packet.wscale,
                                                   e.packet.sack_permitted)) if e.packet.tcp_flags & SYN else None)
    run(tmp_path, mon, b)
    assert syns == [(SYN, 1460, 7, True), (SYN | ACK, 1460, 7, True)]


# ---------------------------------------------------------------------------------------------------------
# CONN_START / CONN_NEW_DATA / peek


def two_conns() -> Tuple[Built, Conv, Conv]:
    a = Conv(cport=41000, sport=80, t0=1000.0)
    b = Conv(cip="10.10.0.3", cport=41001, sport=8080, t0=1000.0005)
    for c, tag in ((a, "A"), (b, "B")):
        c.handshake()
        c.send(True, REQ + tag.encode())
        c.send(False, payload(tag, 1500))
        c.close()
    return merge(a.built(), b.built()), a, b


def test_conn_start_once_per_connection_default_hook(tmp_path):
    """CONN_START is not one of the two-hook events (README): a default (RCV) subscription gets it."""
    b, a, c = two_conns()
    starts = []
    mon = Monitor()
    mon.on(Event.CONN_START, lambda conn, ev: starts.append((conn.id, conn.client, conn.server)))
    run(tmp_path, mon, b)
    assert starts == [(1, a.client, a.server), (2, c.client, c.server)]


def test_conn_new_data_sides_offsets_data(tmp_path):
    b = pcaps.basic_close()
    got = []
    mon = Monitor()
    mon.on(Event.CONN_NEW_DATA, lambda c, e: got.append((e.side, e.offset, e.length, e.data)))
    run(tmp_path, mon, b)
    expected, off = [], {Side.CLIENT: 0, Side.SERVER: 0}
    for p in decoded(b):
        if p["payload"]:
            rcv = Side.SERVER if p["src"] == CLIENT_IP else Side.CLIENT
            expected.append((rcv, off[rcv], len(p["payload"]), p["payload"]))
            off[rcv] += len(p["payload"])
    assert got == expected
    assert b"".join(d for s, _, _, d in got if s is Side.SERVER) == b.c2s
    assert b"".join(d for s, _, _, d in got if s is Side.CLIENT) == b.s2c


@pytest.mark.parametrize("gap", [0, 300], ids=["one-batch", "batch-per-packet"])
def test_peek_returns_new_bytes_once_and_ppeek(tmp_path, gap):
    """mOS's peek: in a CONN_NEW_DATA handler the unread bytes are the event's bytes, whether or not the
    engine has already run further packets of the same batch."""
    b = spread(pcaps.basic_close(), gap)
    got = []
    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):
        first = conn.peek(ev.side)
        second = conn.peek(ev.side)
        other = conn.peek(ev.side.peer)
        whole = conn.ppeek(ev.side, ev.offset, ev.length)
        part = conn.ppeek(ev.side, ev.offset + 10, 20)
        got.append((ev.data, first, second, other, whole, part))

    run(tmp_path, mon, b)
    assert len(got) == 4
    for evdata, first, second, other, whole, part in got:
        assert first == evdata
        assert second == b""
        assert other == b""  # everything the peer received was peeked in earlier handlers
        assert whole == evdata
        assert part == evdata[10:30]


def test_side_filtering_and_decorator(tmp_path):
    b = pcaps.basic_close()
    srv, cli = [], []
    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def server_rx(conn, ev):
        srv.append((ev.side, ev.data))

    def client_rx(conn, ev):
        cli.append((ev.side, ev.data))

    assert mon.on(Event.CONN_NEW_DATA, client_rx, side=Side.CLIENT) is client_rx
    assert callable(server_rx) and server_rx.__name__ == "server_rx"
    run(tmp_path, mon, b)
    assert {s for s, _ in srv} == {Side.SERVER} and b"".join(d for _, d in srv) == b.c2s
    assert {s for s, _ in cli} == {Side.CLIENT} and b"".join(d for _, d in cli) == b.s2c


# ---------------------------------------------------------------------------------------------------------
# REXMIT


def test_rexmit_consistent_and_inconsistent(tmp_path):
    b = pcaps.retransmissions()
    rex, data = [], []
    mon = Monitor()
    mon.on(Event.REXMIT, lambda c, e: rex.append((e.side, e.offset, e.length, e.inconsistent, e.old_data,
                                                  e.new_data)))
    mon.on(Event.CONN_NEW_DATA, lambda c, e: data.append((e.side, e.data)))
    st = run(tmp_path, mon, b)
    orig = b.c2s
    assert [r[:4] for r in rex] == [(Side.SERVER, 0, 1000, False), (Side.SERVER, 1000, 1000, True)]
    assert rex[1][4] == orig[1000:2000]
    assert rex[1][5] == b"Z" * 1000
    assert b"".join(d for s, d in data if s is Side.SERVER) == orig  # the first copy is kept
    assert st["reasm_rexmit_segments"] == 2 and st["reasm_rexmit_inconsistent"] == 1000  # bytes


# ---------------------------------------------------------------------------------------------------------
# TCP_STATE_CHANGE


def state_log(mon: Monitor, out: list) -> None:
    for hook in (Hook.SND, Hook.RCV):
        mon.on(Event.TCP_STATE_CHANGE, lambda c, e: out.append((e.side, e.old_state, e.new_state, e.hook)), hook=hook)


def assert_chain(changes: List[Tuple], first_old: TcpState) -> List[TcpState]:
    """Each change starts where the previous one ended; returns the states entered."""
    prev = first_old
    for old, new, _hook in changes:
        assert old == prev, changes
        prev = new
    return [new for _, new, _ in changes]


def test_state_changes_fin_ack_close(tmp_path):
    """RFC 9293 3.10.7.4: a FIN+ACK that acknowledges our FIN is processed ACK first (FIN-WAIT-1 ->
    FIN-WAIT-2, fifth check) then FIN (FIN-WAIT-2 -> TIME-WAIT, eighth check): no CLOSING."""
    b = pcaps.basic_close()
    log: list = []
    mon = Monitor()
    state_log(mon, log)
    run(tmp_path, mon, b)
    sides = by_side(log)
    assert_normal_close(sides)


def assert_normal_close(sides) -> None:
    """The RFC 9293 chains of an active close by the client."""
    T = TcpState
    assert assert_chain(sides[Side.CLIENT], T.CLOSED) == [T.SYN_SENT, T.ESTABLISHED, T.FIN_WAIT_1, T.FIN_WAIT_2,
                                                           T.TIME_WAIT]
    assert assert_chain(sides[Side.SERVER], T.LISTEN) == [T.SYN_RECEIVED, T.ESTABLISHED, T.CLOSE_WAIT, T.LAST_ACK,
                                                           T.CLOSED]


def four_way_close() -> Built:
    c = Conv(cport=41010)
    c.handshake()
    c.send(True, REQ)
    c.tcp(True, "FA")
    c.tcp(False, "A")
    c.tcp(False, "FA")
    c.tcp(True, "A")
    return c.built(REQ, b"")


def test_state_changes_four_way_close(tmp_path):
    log: list = []
    mon = Monitor()
    state_log(mon, log)
    ends = []
    mon.on(Event.CONN_END, lambda c, e: ends.append(e.reason))
    run(tmp_path, mon, four_way_close())
    sides = by_side(log)
    assert_normal_close(sides)
    assert ends == [EndReason.FIN]


def test_state_change_hooks_sender_vs_receiver(tmp_path):
    """At Hook.SND the changing side is the packet's sender (transitions caused by sending: SYN, FIN);
    at Hook.RCV it is the receiver."""
    b = four_way_close()
    snd, rcv = [], []
    mon = Monitor()

    def sender(p) -> Side:
        return Side.CLIENT if p.src == CLIENT_IP else Side.SERVER

    mon.on(Event.TCP_STATE_CHANGE, lambda c, e: snd.append((e.side, sender(e.packet), e.new_state)), hook=Hook.SND)
    mon.on(Event.TCP_STATE_CHANGE, lambda c, e: rcv.append((e.side, sender(e.packet), e.new_state)))
    run(tmp_path, mon, b)
    assert all(side == s for side, s, _ in snd) and snd
    assert all(side == s.peer for side, s, _ in rcv) and rcv
    T = TcpState
    assert [(s, st) for s, _, st in snd] == [(Side.CLIENT, T.SYN_SENT), (Side.CLIENT, T.FIN_WAIT_1),
                                             (Side.SERVER, T.LAST_ACK)]
    assert [(s, st) for s, _, st in rcv] == [
        (Side.SERVER, T.SYN_RECEIVED), (Side.CLIENT, T.ESTABLISHED), (Side.SERVER, T.ESTABLISHED),
        (Side.SERVER, T.CLOSE_WAIT), (Side.CLIENT, T.FIN_WAIT_2), (Side.CLIENT, T.TIME_WAIT), (Side.SERVER, T.CLOSED),
    ]


@pytest.mark.parametrize("gap", [0, 300], ids=["one-batch", "batch-per-packet"])
def test_conn_reads_in_handler_match_event_time(tmp_path, gap):
    """What a handler reads from the connection (states, stream offsets) is as of the event's packet, like
    the snapshot the event carries -- not as of a later packet the engine already processed. (PKT_IN at
    RCV comes after both stacks took the packet; each data segment here delivers one chunk.)"""
    b = spread(pcaps.basic_close(), gap)
    bad = []
    mon = Monitor()

    @mon.on(Event.PKT_IN)
    def pkt(conn, ev):
        now = (conn.state(Side.CLIENT), conn.state(Side.SERVER))
        if now != ev.states:
            bad.append(("state", ev.packet.seq, now, ev.states))

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):
        if conn.stream_offset(ev.side) != ev.offset + ev.length:
            bad.append(("offset", ev.side, ev.offset + ev.length, conn.stream_offset(ev.side)))

    run(tmp_path, mon, b)
    assert bad == []


def simultaneous_close() -> Built:
    """Both FINs cross (RFC 9293 figure 13): the server's FIN does not acknowledge the client's FIN."""
    c = Conv(cport=41011)
    c.handshake()
    c.send(True, REQ)
    cfin, sfin = c.nxt[True], c.nxt[False]
    c.tcp(True, "FA", ack=sfin)
    c.tcp(False, "FA", ack=cfin)  # acks only up to the client's FIN, not the FIN itself
    c.tcp(True, "A", ack=sfin + 1)
    c.tcp(False, "A", ack=cfin + 1)
    return c.built(REQ, b"")


def test_simultaneous_close_first_closer_goes_through_closing(tmp_path):
    log: list = []
    ends = []
    mon = Monitor()
    state_log(mon, log)
    mon.on(Event.CONN_END, lambda c, e: ends.append(e.reason))
    run(tmp_path, mon, simultaneous_close())
    T = TcpState
    cli = by_side(log)[Side.CLIENT]
    assert assert_chain(cli, T.CLOSED) == [T.SYN_SENT, T.ESTABLISHED, T.FIN_WAIT_1, T.CLOSING, T.TIME_WAIT]
    assert ends == [EndReason.FIN]


def test_simultaneous_close_second_closer_rfc_figure_13(tmp_path):
    """The server's FIN carries ack = client FIN's sequence number: it was sent before the client's FIN
    arrived (figure 13). The capture point saw the client's FIN first, so the server's stack took it
    (CLOSE-WAIT) before its own FIN revealed the simultaneous close: a passive observer corrects to
    CLOSING, then TIME-WAIT when its FIN is acknowledged -- not LAST-ACK/CLOSED."""
    log: list = []
    mon = Monitor()
    state_log(mon, log)
    run(tmp_path, mon, simultaneous_close())
    T = TcpState
    srv = by_side(log)[Side.SERVER]
    assert assert_chain(srv, T.LISTEN) == [T.SYN_RECEIVED, T.ESTABLISHED, T.CLOSE_WAIT, T.CLOSING, T.TIME_WAIT]


def test_simultaneous_open_client_states_and_data(tmp_path):
    b = pcaps.simultaneous_open()
    log: list = []
    data = defaultdict(bytes)
    ends = []
    mon = Monitor()
    state_log(mon, log)
    mon.on(Event.CONN_NEW_DATA, lambda c, e: data.__setitem__(e.side, data[e.side] + e.data))
    mon.on(Event.CONN_END, lambda c, e: ends.append(e.reason))
    run(tmp_path, mon, b)
    T = TcpState
    cli = by_side(log)[Side.CLIENT]
    # RFC 9293 figure 8: SYN-SENT, then SYN-RECEIVED on the peer's SYN, ESTABLISHED on its SYN,ACK
    assert assert_chain(cli, T.CLOSED)[:3] == [T.SYN_SENT, T.SYN_RECEIVED, T.ESTABLISHED]
    assert data[Side.SERVER] == b.c2s and data[Side.CLIENT] == b.s2c
    assert ends == [EndReason.FIN]


def test_simultaneous_open_server_states_rfc_figure_8(tmp_path):
    """The 'server' sent a bare SYN (no ACK) after the client's SYN passed the capture point (figure 8).
    A passive observer has already given the client's SYN to the server's stack (SYN-RECEIVED, as a
    listener would); the server's own SYN leaves it there, and the client's SYN-ACK establishes it."""
    log: list = []
    mon = Monitor()
    state_log(mon, log)
    run(tmp_path, mon, pcaps.simultaneous_open())
    T = TcpState
    srv = by_side(log)[Side.SERVER]
    states = [new for _, new, _ in srv]
    assert states[:2] == [T.SYN_RECEIVED, T.ESTABLISHED]


# ---------------------------------------------------------------------------------------------------------
# CONN_END


@pytest.mark.parametrize("name,reason", [
    ("basic_close", EndReason.FIN), ("half_close", EndReason.FIN), ("rst_in_window", EndReason.RST),
    ("rst_out_of_window", EndReason.FIN), ("midstream_pickup", EndReason.EOF),
])
def test_conn_end_once_with_reason(tmp_path, name, reason):
    b = pcaps.BUILDERS[name]()
    ends = []
    mon = Monitor()
    mon.on(Event.CONN_END, lambda c, e: ends.append((c.id, e.reason, c.info()["end"], c.alive)))
    run(tmp_path, mon, b)
    assert ends == [(1, reason, reason.name, True)]


def test_conn_end_timeout_in_packet_time(tmp_path):
    a = Conv(cport=41020, t0=1000.0)
    a.handshake()
    a.send(True, REQ)
    late = Conv(cport=41021, t0=1010.0)  # 10 s of silence on `a`, more than timeout_established=5
    late.handshake()
    late.send(True, REQ)
    late.close()
    log = []
    mon = Monitor(timeout_established=5)
    mon.on(Event.CONN_END, lambda c, e: log.append(("end", c.id, e.reason)))
    mon.on(Event.PKT_IN, lambda c, e: log.append(("pkt", c.id)))
    st = run(tmp_path, mon, merge(a.built(), late.built()))
    n_a = len(a.records)
    assert log[:n_a] == [("pkt", 1)] * n_a
    assert log[n_a] == ("end", 1, EndReason.TIMEOUT)  # before the late connection's first packet
    assert log[n_a + 1] == ("pkt", 2)
    assert [x for x in log if x[0] == "end"] == [("end", 1, EndReason.TIMEOUT), ("end", 2, EndReason.FIN)]
    assert st["conns_timed_out"] == 1


def test_conn_end_eviction_least_recently_used(tmp_path):
    """max_conns=2: A and B are established, A sends again (B is now the least recently used); C's SYN
    evicts B, and C is tracked."""
    a, b, c = (Conv(cip=f"10.10.5.{i}", cport=42000 + i, t0=1000.0 + i) for i in range(3))
    a.handshake()
    b.handshake()
    a.t = 1003.0
    a.send(True, REQ)
    c.t = 1004.0
    c.handshake()
    c.send(True, REQ)
    c.close()
    a.t = 1005.0
    a.close()
    log = []
    mon = Monitor(max_conns=2)
    mon.on(Event.CONN_END, lambda conn, e: log.append(("end", conn.id, e.reason)))
    mon.on(Event.PKT_IN, lambda conn, e: log.append(("pkt", conn.id)) if e.packet.tcp_flags == SYN else None)
    data = []
    mon.on(Event.CONN_NEW_DATA, lambda conn, e: data.append((conn.id, conn.client, e.data)))
    st = run(tmp_path, mon, merge(a.built(), b.built(), c.built()))
    assert log == [("pkt", 1), ("pkt", 2), ("end", 2, EndReason.EVICTION), ("pkt", 3),
                   ("end", 3, EndReason.FIN), ("end", 1, EndReason.FIN)]
    assert data == [(1, a.client, REQ), (3, c.client, REQ)]
    assert st["conns_evicted"] == 1 and st["orphan_table_full"] == 0


def test_conn_end_eviction_prefers_half_open(tmp_path):
    """A half-open connection (SYN only) older than an established one is evicted first -- it is both the
    least recently used (README) and half-open (engine comment: 'preferring closed, then half-open')."""
    h = Conv(cip="10.10.6.1", cport=42100, t0=1000.0)
    h.tcp(True, "S")
    e = Conv(cip="10.10.6.2", cport=42101, t0=1001.0)
    e.handshake()
    n = Conv(cip="10.10.6.3", cport=42102, t0=1002.0)
    n.handshake()
    ends = []
    mon = Monitor(max_conns=2)
    mon.on(Event.CONN_END, lambda conn, ev: ends.append((conn.id, ev.reason)))
    run(tmp_path, mon, merge(h.built(), e.built(), n.built()))
    assert ends[0] == (1, EndReason.EVICTION)
    assert sorted(ends[1:]) == [(2, EndReason.EOF), (3, EndReason.EOF)]


# ---------------------------------------------------------------------------------------------------------
# ORPHAN / ERROR / DATA_GAP


def test_orphan_udp(tmp_path):
    b = pcaps.udp_only()
    got = []
    mon = Monitor(protocols=("tcp",))  # UDP flows are tests/test_udp.py's
    mon.on(Event.ORPHAN, lambda c, e: got.append((c, e.reason, e.packet.proto, e.packet.sport, e.packet.dport)))
    st = run(tmp_path, mon, b)
    sports = [Ether(f)[UDP].sport for _, f, _ in b.records]
    dports = [Ether(f)[UDP].dport for _, f, _ in b.records]
    assert got == [(None, 1, 17, s, d) for s, d in zip(sports, dports)]
    assert st["orphan_untracked_proto"] == len(b.records) == accounted(st) == st["packets"]


def test_orphan_midstream_without_pickup(tmp_path):
    mid = pcaps.midstream_pickup()
    normal = pcaps.basic_close()
    got, ends = [], []
    mon = Monitor(pickup=False)
    mon.on(Event.ORPHAN, lambda c, e: got.append((c, e.reason, e.packet.sport, e.packet.dport)))
    mon.on(Event.CONN_END, lambda c, e: ends.append((c.client, e.reason)))
    st = run(tmp_path, mon, Built(mid.records + [(t + 100, f, o) for t, f, o in normal.records]))
    exp = [(None, 2, p["sport"], p["dport"]) for p in decoded(mid)]
    assert got == exp
    assert ends == [(normal.client, EndReason.FIN)]
    assert st["orphan_no_conn"] == len(mid.records) and st["conns_created"] == 1


def test_error_rst_out_of_window_does_not_end(tmp_path):
    b = pcaps.rst_out_of_window()
    errs, ends = [], []
    data = defaultdict(bytes)
    mon = Monitor()
    mon.on(Event.ERROR, lambda c, e: errs.append((e.side, e.reason, e.packet.tcp_flags & RST, c.alive, *e.states)))
    mon.on(Event.CONN_END, lambda c, e: ends.append(e.reason))
    mon.on(Event.CONN_NEW_DATA, lambda c, e: data.__setitem__(e.side, data[e.side] + e.data))
    st = run(tmp_path, mon, b)
    est = TcpState.ESTABLISHED
    assert errs == [(Side.CLIENT, ErrorKind.RST_OUT_OF_WINDOW, RST, True, est, est)]
    assert ends == [EndReason.FIN]
    assert data[Side.CLIENT] == b.s2c and data[Side.SERVER] == b.c2s
    assert st["rst_out_of_window"] == 1 and st["rst_accepted"] == 0


def buffer_limit_capture(seg: int = 500, nseg: int = 12, tail: bytes = b"TAIL-" * 60,
                         filler: int = 0) -> Tuple[Built, bytes]:
    """Client data [0, seg*nseg) sent hole-first (segments 1..n-1, then 0); the server acks it all; the
    client then sends `tail` at the next offset (after `filler` UDP packets) and closes."""
    c = Conv(cport=41030)
    c.handshake()
    data = payload("L", seg * nseg)
    for i in list(range(1, nseg)) + [0]:
        c.tcp(True, "PA", seq=c.off_seq(True, i * seg), payload=data[i * seg:(i + 1) * seg])
    c.nxt[True] = c.off_seq(True, len(data))
    c.tcp(False, "A")
    first = c.built()
    c.records.clear()
    c.tcp(True, "PA", payload=tail)
    c.tcp(False, "A")
    c.close()
    b = filler_between(first, c.built(), filler)
    b.c2s = data + tail
    return b, data


@pytest.mark.parametrize("filler", [0, 300], ids=["sync", "next-batch"])
def test_error_buffer_limit_then_gap_then_delivery(tmp_path, filler):
    """dir_buffer_limit=2000: 4 of the 11 early segments are held, 7 dropped (ERROR BUFFER_LIMIT); the
    hole fills, the server acks everything: [2500, 6000) is a gap and the tail sent afterwards is
    delivered -- the bytes already delivered and acknowledged do not count against the limit, whether
    or not the tail comes in the same batch of packets."""
    b, data = buffer_limit_capture(filler=filler)
    total = len(b.c2s)
    ev = []
    mon = Monitor(sync=filler == 0, dir_buffer_limit=2000)
    mon.on(Event.CONN_NEW_DATA, lambda c, e: ev.append(("data", e.offset, e.length, e.data)), side=Side.SERVER)
    mon.on(Event.DATA_GAP, lambda c, e: ev.append(("gap", e.offset, e.length, None)), side=Side.SERVER)
    mon.on(Event.ERROR, lambda c, e: ev.append(("err", e.offset, e.length, e.reason)), side=Side.SERVER)
    st = run(tmp_path, mon, b)
    errs = [e for e in ev if e[0] == "err"]
    gaps = [e for e in ev if e[0] == "gap"]
    assert errs and all(e[3] == ErrorKind.BUFFER_LIMIT for e in errs)
    assert len(gaps) == 1
    _, k, glen, _ = gaps[0]
    assert 0 < k < len(data) and k + glen == len(data)  # the bytes the limit dropped, up to the tail
    assert sum(e[2] for e in errs) == glen and all(k <= e[1] < len(data) for e in errs)
    # data and gap tile the stream in order; the data are the right bytes; the tail comes after the gap
    pos = 0
    for kind, off, ln, d in (e for e in ev if e[0] != "err"):
        assert off == pos, ev
        if kind == "data":
            assert d == b.c2s[off:off + ln]
        pos = off + ln
    assert pos == total
    assert ev.index(gaps[0]) < max(i for i, e in enumerate(ev) if e[0] == "data")
    assert ev[-1][0] == "data" and ev[-1][1] + ev[-1][2] == total
    assert st["reasm_limit_dir_buf"] == len(errs) and st["reasm_bytes_dropped_limit"] == glen


def test_data_gap_acked_hole(tmp_path):
    b = pcaps.acked_hole()
    ev = []
    mon = Monitor()
    mon.on(Event.CONN_NEW_DATA, lambda c, e: ev.append(("data", e.offset, e.length)), side=Side.CLIENT)
    mon.on(Event.DATA_GAP, lambda c, e: ev.append(("gap", e.offset, e.length)), side=Side.CLIENT)
    run(tmp_path, mon, b)
    assert ev == [("data", 0, 1000), ("gap", 1000, 1000), ("data", 2000, 1000)]


# ---------------------------------------------------------------------------------------------------------
# subscriptions


def test_mon_off_inside_handler_stops_later_calls(tmp_path):
    b = pcaps.basic_close()
    calls = []
    mon = Monitor()

    def pkt(conn, ev):
        calls.append(ev.packet.seq)
        if len(calls) == 2:
            mon.off(Event.PKT_IN, pkt)

    mon.on(Event.PKT_IN, pkt)
    run(tmp_path, mon, b)
    assert len(calls) == 2


def test_mon_off_all_handlers_of_event(tmp_path):
    b = pcaps.basic_close()
    calls = []
    mon = Monitor()
    mon.on(Event.CONN_NEW_DATA, lambda c, e: calls.append("x"))
    mon.on(Event.CONN_NEW_DATA, lambda c, e: calls.append("y"))
    mon.off(Event.CONN_NEW_DATA)
    mon.on(Event.CONN_END, lambda c, e: calls.append("end"))
    run(tmp_path, mon, b)
    assert calls == ["end"]


@pytest.mark.parametrize("filler", [0, 300], ids=["sync", "next-batch"])
def test_conn_on_inside_handler_only_that_connection(tmp_path, filler):
    """A per-connection subscription made in a handler gets that connection's later events only, whether
    those events come in the same batch of packets or a later one."""
    a, b = Conv(cport=41040, sport=80, t0=1000.0), Conv(cip="10.10.0.3", cport=41041, sport=8080, t0=1000.0005)
    for c in (a, b):
        c.handshake()
    first = merge(a.built(), b.built())
    a.records.clear()
    b.records.clear()
    for c, tag in ((a, "A"), (b, "B")):
        c.send(True, REQ + tag.encode())
        c.send(False, payload(tag, 1200))
        c.close()
    cap = filler_between(first, merge(a.built(), b.built()), filler)
    got = []

    def per_conn(conn, ev):
        got.append((conn.id, ev.side, ev.data))

    mon = Monitor(sync=filler == 0)

    @mon.on(Event.PKT_IN)
    def pkt(conn, ev):
        if ev.packet.tcp_flags == SYN and conn.info()["server_port"] == 8080:
            conn.on(Event.CONN_NEW_DATA, per_conn)

    run(tmp_path, mon, cap)
    assert [g[0] for g in got] == [2] * len(got) and got
    assert b"".join(d for _, s, d in got if s is Side.SERVER) == REQ + b"B"
    assert b"".join(d for _, s, d in got if s is Side.CLIENT) == payload("B", 1200)


def test_conn_off_inside_per_connection_handler(tmp_path):
    c = Conv(cport=41050)
    c.handshake()
    first = c.built()
    c.records.clear()
    c.send(True, payload("Q", 3000))
    c.close()
    cap = filler_between(first, c.built(), 300)
    got = []

    def per_conn(conn, ev):
        got.append(ev.offset)
        conn.off(Event.CONN_NEW_DATA, per_conn)

    mon = Monitor()
    mon.on(Event.PKT_IN, lambda conn, ev: conn.on(Event.CONN_NEW_DATA, per_conn) if ev.packet.tcp_flags == SYN
           else None)
    run(tmp_path, mon, cap)
    assert got == [0]


# ---------------------------------------------------------------------------------------------------------
# user-defined events


def filter_capture() -> Tuple[Built, Conv, Conv]:
    a = Conv(cport=41060, sport=80, t0=1000.0)
    b = Conv(cip="10.10.0.3", cport=41061, sport=8080, t0=1000.0005)
    a.handshake()
    b.handshake()
    for c, msgs in ((a, [(True, b"hello"), (True, b"my secret here"), (False, b"ok"), (True, b"bye")]),
                    (b, [(True, b"secret2 data"), (True, b"plain"), (False, b"secret reply")])):
        for from_client, m in msgs:
            c.tcp(from_client, "PA", payload=m)
            c.tcp(not from_client, "A")
        c.close()
    return merge(a.built(), b.built()), a, b


def data_events(b: Built) -> List[Tuple[int, Side, bytes]]:
    """(conn id, receiving side, bytes) of each data segment, in capture order (ids by first packet)."""
    ids: Dict[Tuple, int] = {}
    out = []
    for p in decoded(b):
        key = tuple(sorted([(p["src"], p["sport"]), (p["dst"], p["dport"])]))
        ids.setdefault(key, len(ids) + 1)
        if p["payload"]:
            out.append((ids[key], Side.SERVER if p["dport"] in (80, 8080) else Side.CLIENT, p["payload"]))
    return out


def user_events(tmp_path, define) -> Tuple[list, Built]:
    b, _, _ = filter_capture()
    got = []
    mon = Monitor()
    uid = define(mon)
    mon.on(uid, lambda c, e: got.append((c.id, e.side, e.data, e.event)))
    run(tmp_path, mon, b)
    assert all(x[3] == uid for x in got)
    return [x[:3] for x in got], b


def test_user_event_c_filter_contains(tmp_path):
    got, b = user_events(tmp_path, lambda m: m.define_event(Event.CONN_NEW_DATA, Filter(contains=b"secret")))
    assert got == [e for e in data_events(b) if b"secret" in e[2]] and len(got) == 3


def test_user_event_c_filter_ports(tmp_path):
    got, b = user_events(tmp_path, lambda m: m.define_event(Event.CONN_NEW_DATA, Filter(ports=(8080,))))
    assert got == [e for e in data_events(b) if e[0] == 2] and len(got) == 3


def test_user_event_python_filter(tmp_path):
    got, b = user_events(tmp_path, lambda m: m.define_event(Event.CONN_NEW_DATA, lambda c, e: e.side is Side.CLIENT))
    assert got == [e for e in data_events(b) if e[1] is Side.CLIENT] and len(got) == 2


def test_user_event_c_filter_syn_flags(tmp_path):
    b, _, _ = filter_capture()
    got = []
    mon = Monitor()
    uid = mon.define_event(Event.PKT_IN, Filter(flags=SYN, flags_mask=SYN | ACK))
    mon.on(uid, lambda c, e: got.append((c.id, e.packet.tcp_flags, e.hook)))
    run(tmp_path, mon, b)
    assert got == [(1, SYN, Hook.RCV), (2, SYN, Hook.RCV)]


@pytest.mark.parametrize("chain", ["c-c", "c-py", "py-c", "py-py"])
def test_user_event_chains(tmp_path, chain):
    def define(m: Monitor) -> int:
        f1 = Filter(ports=(8080,)) if chain[0] == "c" else (lambda c, e: c.info()["server_port"] == 8080)
        e1 = m.define_event(Event.CONN_NEW_DATA, f1)
        f2 = Filter(contains=b"secret") if chain.endswith("-c") else (lambda c, e: b"secret" in e.data)
        return m.define_event(e1, f2)

    got, b = user_events(tmp_path, define)
    assert got == [e for e in data_events(b) if e[0] == 2 and b"secret" in e[2]] and len(got) == 2


def test_user_event_on_conn_end_rst_only(tmp_path):
    rst = pcaps.rst_in_window()
    fin = pcaps.basic_close()
    got = []
    mon = Monitor()
    uid = mon.define_event(Event.CONN_END, Filter(flags=RST))
    mon.on(uid, lambda c, e: got.append((c.client, e.reason)))
    run(tmp_path, mon, Built(fin.records + [(t + 100, f, o) for t, f, o in rst.records]))
    assert got == [(rst.client, EndReason.RST)]


# ---------------------------------------------------------------------------------------------------------
# stop_monitoring and buffering switches


@pytest.mark.parametrize("filler", [0, 300], ids=["sync", "next-batch"])
def test_stop_monitoring_server_side(tmp_path, filler):
    c = Conv(cport=41070)
    c.handshake()
    req1, resp1, req2, resp2 = b"REQ-ONE" * 10, payload("R1", 900), b"REQ-TWO" * 10, payload("R2", 700)
    c.send(True, req1)
    c.send(False, resp1)
    first = c.built()
    c.records.clear()
    c.send(True, req2)
    c.send(False, resp2)
    c.close()
    cap = filler_between(first, c.built(), filler)
    srv, cli, ends = [], [], []
    mon = Monitor(sync=filler == 0, protocols=("tcp",))  # the UDP filler stays out of the events

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def server_rx(conn, ev):
        srv.append(ev.data)
        conn.stop_monitoring(Side.SERVER)

    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: cli.append(ev.data), side=Side.CLIENT)
    mon.on(Event.CONN_END, lambda conn, ev: ends.append(ev.reason))
    run(tmp_path, mon, cap)
    assert srv == [req1]
    assert b"".join(cli) == resp1 + resp2
    assert ends == [EndReason.FIN]


def test_buffer_server_off_in_order_delivery(tmp_path):
    b = pcaps.basic_close()
    got, held = [], []
    mon = Monitor(buffer_server=False)

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):
        got.append((ev.side, ev.data))
        held.append(conn.held_segments(Side.SERVER))

    run(tmp_path, mon, b)
    assert b"".join(d for s, d in got if s is Side.SERVER) == b.c2s
    assert b"".join(d for s, d in got if s is Side.CLIENT) == b.s2c
    assert all(h == [] for h in held)


def test_buffer_server_off_out_of_order_becomes_gap(tmp_path):
    """Segments 0, 2, 1, 3 with nothing held for the server: 2 and 3 arrive ahead of the stream and are
    lost; [2000, 4000) is a gap once acknowledged."""
    b = pcaps.out_of_order_fill()
    ev, held = [], []
    mon = Monitor(buffer_server=False)
    mon.on(Event.CONN_NEW_DATA, lambda c, e: ev.append(("data", e.offset, e.length, e.data)), side=Side.SERVER)
    mon.on(Event.DATA_GAP, lambda c, e: ev.append(("gap", e.offset, e.length, None)), side=Side.SERVER)
    mon.on(Event.PKT_IN, lambda c, e: held.append(c.held_segments(Side.SERVER)), side=Side.SERVER)
    run(tmp_path, mon, b)
    assert ev == [("data", 0, 1000, b.c2s[:1000]), ("data", 1000, 1000, b.c2s[1000:2000]), ("gap", 2000, 2000, None)]
    assert held and all(h == [] for h in held)


def test_buffer_client_off_server_side_still_reassembles(tmp_path):
    b = pcaps.out_of_order_fill()
    got = []
    mon = Monitor(buffer_client=False)
    mon.on(Event.CONN_NEW_DATA, lambda c, e: got.append(e.data), side=Side.SERVER)
    run(tmp_path, mon, b)
    assert b"".join(got) == b.c2s


# ---------------------------------------------------------------------------------------------------------
# per-connection state: ctx, identity, info(), held segments


def test_ctx_and_identity_across_events_and_batches(tmp_path):
    a, b = Conv(cport=41080, t0=1000.0), Conv(cip="10.10.0.3", cport=41081, t0=1000.0005)
    for c, tag in ((a, "A"), (b, "B")):
        c.handshake()
        c.send(True, payload(tag, 90_000), mss=500)  # 180 segments + acks each: several batches of 256
        c.close()
    cap = merge(a.built(), b.built())
    objs: Dict[int, set] = defaultdict(set)
    done = {}
    mon = Monitor()

    @mon.on(Event.PKT_IN)
    def pkt(conn, ev):
        if conn.ctx is None:
            conn.ctx = {"n": 0, "bytes": 0}
        conn.ctx["n"] += 1
        objs[conn.id].add(conn)

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):
        conn.ctx["bytes"] += ev.length
        objs[conn.id].add(conn)

    @mon.on(Event.CONN_END)
    def end(conn, ev):
        done[conn.id] = dict(conn.ctx)
        objs[conn.id].add(conn)

    run(tmp_path, mon, cap)
    assert done == {1: {"n": len(a.records), "bytes": 90_000}, 2: {"n": len(b.records), "bytes": 90_000}}
    # one connection each: the handles handlers got compare equal and hash alike (one set element)
    assert all(len(s) == 1 for s in objs.values()) and len(objs) == 2


def test_info_fields(tmp_path):
    b = pcaps.basic_close()
    infos = []
    mon = Monitor()
    mon.on(Event.CONN_END, lambda c, e: infos.append(c.info()))
    run(tmp_path, mon, b)
    pk = decoded(b)
    cli = [p for p in pk if p["src"] == CLIENT_IP]
    srv = [p for p in pk if p["src"] == SERVER_IP]
    (i,) = infos
    expected = {
        "id": 1, "client": b.client, "server": b.server, "client_addr": CLIENT_IP, "server_addr": SERVER_IP,
        "client_port": 40000, "server_port": 80, "ip_version": 4, "vlan": [], "client_state": "TIME_WAIT",
        "server_state": "CLOSED", "end": "FIN", "picked_up": False, "client_wscale": None, "server_wscale": None,
        "client_isn": cli[0]["seq"], "server_isn": srv[0]["seq"], "first_ts": us(pk[0]["ts"]),
        "last_ts": us(pk[-1]["ts"]), "c2s_packets": len(cli), "s2c_packets": len(srv),
        "c2s_payload": len(b.c2s), "s2c_payload": len(b.s2c), "c2s_stream": len(b.c2s), "s2c_stream": len(b.s2c),
        "c2s_gap_bytes": 0, "s2c_gap_bytes": 0, "c2s_rexmit_packets": 0, "s2c_rexmit_packets": 0,
    }
    got = {k: (us(v) if k.endswith("_ts") else v) for k, v in i.items() if k in expected}
    assert got == expected
    assert (cli[0]["seq"], srv[0]["seq"]) == (1000, 500000)


def test_info_window_scale_and_pickup(tmp_path):
    infos = {}
    for name in ("window_scaling", "midstream_pickup"):
        b = pcaps.BUILDERS[name]()
        mon = Monitor()
        mon.on(Event.CONN_END, lambda c, e, name=name: infos.__setitem__(name, c.info()))
        run(tmp_path, mon, b, name)
        assert (infos[name]["client"], infos[name]["server"]) == (b.client, b.server)
    ws, mid = infos["window_scaling"], infos["midstream_pickup"]
    assert (ws["client_wscale"], ws["server_wscale"], ws["picked_up"]) == (7, 7, False)
    assert (mid["picked_up"], mid["client_port"], mid["server_port"]) == (True, 51000, 80)
    assert mid["client_wscale"] is None and mid["server_wscale"] is None


def test_info_window_scale_only_one_side_is_off(tmp_path):
    """RFC 7323: scaling is in effect only if both SYNs carry the option."""
    c = Conv(cport=41090)
    c.tcp(True, "S", options=[("WScale", 7)])
    c.tcp(False, "SA")
    c.tcp(True, "A")
    c.close()
    infos = []
    mon = Monitor()
    mon.on(Event.CONN_END, lambda conn, e: infos.append((conn.info()["client_wscale"], conn.info()["server_wscale"])))
    run(tmp_path, mon, c.built())
    assert infos == [(None, None)]


@pytest.mark.parametrize("gap", [0, 300], ids=["sync", "batch-per-packet"])
def test_held_segments_and_holes_during_out_of_order(tmp_path, gap):
    c = Conv(cport=41100)
    c.handshake()
    data = payload("H", 5000)
    order = (0, 4, 2, 1, 3)
    for i in order:
        c.tcp(True, "PA", seq=c.off_seq(True, i * 1000), payload=data[i * 1000:(i + 1) * 1000])
    c.nxt[True] = c.off_seq(True, 5000)
    c.tcp(False, "A")
    c.close()
    snaps = []
    got = []
    mon = Monitor(sync=gap == 0)

    @mon.on(Event.PKT_IN, side=Side.SERVER)
    def pkt(conn, ev):
        if ev.packet.payload:
            snaps.append((conn.stream_offset(Side.SERVER), conn.held_segments(Side.SERVER), conn.holes(Side.SERVER),
                          conn.info()["c2s_held"] >= sum(n for _, n in conn.held_segments(Side.SERVER))))

    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: got.append(ev.data), side=Side.SERVER)
    run(tmp_path, mon, spread(c.built(), gap))
    assert [s[:3] for s in snaps] == [
        (1000, [], []),
        (1000, [(4000, 1000)], [(1000, 3000)]),
        (1000, [(2000, 1000), (4000, 1000)], [(1000, 1000), (3000, 1000)]),
        (3000, [(4000, 1000)], [(3000, 1000)]),
        (5000, [], []),
    ]
    assert all(s[3] for s in snaps)
    assert b"".join(got) == data


# ---------------------------------------------------------------------------------------------------------
# timers (packet time)


def timer_log(mon: Monitor, log: list) -> None:
    mon.on(Event.PKT_IN, lambda c, e: log.append(round(e.packet.ts - 100.0, 3)))


def test_timer_one_shot_fires_once_between_the_right_packets(tmp_path):
    log: list = []
    mon = Monitor()
    timer_log(mon, log)
    args = []
    mon.add_timer(2.5, lambda m: (log.append("T"), args.append(m)))
    run(tmp_path, mon, timed_conn(6))
    assert log == [0.0, 1.0, 2.0, "T", 3.0, 4.0, 5.0, 6.0]
    assert args == [mon]


@pytest.mark.parametrize("gap", [0, 300], ids=["sync", "batch-per-packet"])
def test_timer_added_inside_handler_counts_from_now(tmp_path, gap):
    """A timer added in a handler counts from the packet time of the event being handled."""
    log: list = []
    mon = Monitor(sync=gap == 0, protocols=("tcp",))  # the UDP filler stays out of the events
    timer_log(mon, log)

    @mon.on(Event.PKT_IN)
    def pkt(conn, ev):
        if round(ev.packet.ts - 100.0) == 3:
            mon.add_timer(1.5, lambda m: log.append("T"))

    run(tmp_path, mon, spread(timed_conn(7), gap))
    assert log == [0.0, 1.0, 2.0, 3.0, 4.0, "T", 5.0, 6.0, 7.0]


def test_timer_periodic_count_and_placement(tmp_path):
    log: list = []
    mon = Monitor()
    timer_log(mon, log)
    mon.add_timer(1.3, lambda m: log.append("T"), periodic=True)
    run(tmp_path, mon, timed_conn(9))
    # ticks at 1.3, 2.6, 3.9, 5.2, 6.5, 7.8 s of packet time (the capture spans 9 s)
    expected: list = []
    ticks = [1.3 * k for k in range(1, 7)]
    for k in range(10):
        expected += ["T"] * sum(1 for t in ticks if k - 1 < t <= k)
        expected.append(float(k))
    assert log == expected and log.count("T") == 6


def test_timer_cancel(tmp_path):
    log: list = []
    mon = Monitor()
    timer_log(mon, log)
    one = mon.add_timer(4.5, lambda m: log.append("one"))
    ticks = []

    def tick(m):
        ticks.append(1)
        if len(ticks) == 3:
            per.cancel()

    per = mon.add_timer(1.0, tick, periodic=True)

    @mon.on(Event.PKT_IN)
    def pkt(conn, ev):
        if round(ev.packet.ts - 100.0) == 2:
            one.cancel()

    run(tmp_path, mon, timed_conn(8))
    assert "one" not in log and len(ticks) == 3


# ---------------------------------------------------------------------------------------------------------
# handler errors


def test_handler_exception_counted_reported_and_run_continues(tmp_path, capsys):
    b = pcaps.basic_close()
    ends = []
    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA)
    def bad(conn, ev):
        raise ValueError(f"boom at {ev.offset}")

    mon.on(Event.CONN_END, lambda c, e: ends.append(e.reason))
    st = run(tmp_path, mon, b)
    n_data = sum(1 for p in decoded(b) if p["payload"])
    assert mon.handler_errors == n_data == st["handler_errors"]
    assert ends == [EndReason.FIN]
    err = capsys.readouterr().err
    assert err.count("Traceback (most recent call last)") == n_data
    assert "connection 1" in err and "'bad'" in err


def test_handler_exception_strict_reraises(tmp_path):
    b = pcaps.basic_close()
    calls = []
    mon = Monitor(strict=True)

    @mon.on(Event.CONN_NEW_DATA)
    def bad(conn, ev):
        calls.append(1)
        raise KeyError("strict")

    with pytest.raises(KeyError, match="strict"):
        run(tmp_path, mon, b)
    assert calls == [1] and mon.handler_errors == 1


def test_python_filter_exception_counted(tmp_path, capsys):
    b = pcaps.basic_close()
    mon = Monitor()
    uid = mon.define_event(Event.CONN_NEW_DATA, lambda c, e: 1 / 0)
    got = []
    mon.on(uid, lambda c, e: got.append(1))
    run(tmp_path, mon, b)
    assert got == [] and mon.handler_errors == 4
    assert "ZeroDivisionError" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# stats: every packet accounted for


def test_stats_malformed_by_reason(tmp_path):
    c = Conv(cport=41110)
    c.handshake()
    c.send(True, REQ)
    ok_tcp = bytes(c.l2(True) / c.l3(True) / TCP(sport=c.cport, dport=c.sport, flags="A", seq=c.nxt[True],
                                                 ack=c.nxt[False]))
    # 1. TCP header cut short inside a consistent IP datagram (IP total length 20 + 10)
    ip = bytearray(ok_tcp[14:14 + 30])
    ip[2:4] = struct.pack("!H", 30)
    c.emit(ok_tcp[:14] + bytes(ip))
    # 2. IHL 3
    bad_ihl = bytearray(ok_tcp)
    bad_ihl[14] = 0x43
    c.emit(bytes(bad_ihl))
    # 3. TCP data offset 4
    bad_doff = bytearray(ok_tcp)
    bad_doff[14 + 20 + 12] = 0x40
    c.emit(bytes(bad_doff))
    # 4. shorter than its IP total length, on the wire too (a snaplen cut is no malformation:
    # tests/test_snaplen.py)
    big = bytes(c.l2(False) / c.l3(False) / TCP(sport=c.sport, dport=c.cport, flags="PA", seq=c.nxt[False],
                                                 ack=c.nxt[True]) / Raw(b"!" * 500))
    c.emit(big, orig_len=100, caplen=100)
    # 5. runt Ethernet frame; 6. IP version 5 in an IPv4 ethertype
    c.emit(b"\x02\x00\x00\x00\x00\x01\x02")
    bad_ver = bytearray(ok_tcp)
    bad_ver[14] = 0x55
    c.emit(bytes(bad_ver))
    c.close()
    b = c.built()
    mon = Monitor()
    ends = []
    mon.on(Event.CONN_END, lambda conn, e: ends.append(e.reason))
    st = run(tmp_path, mon, b)
    assert st["packets"] == len(b.records) == accounted(st)
    assert {k: v for k, v in st.items() if k.startswith("malformed_") and v} == {
        "malformed_truncated_tcp": 1, "malformed_bad_ip_hlen": 1, "malformed_bad_tcp_hlen": 1,
        "malformed_truncated_payload": 1, "malformed_truncated_l2": 1, "malformed_bad_ip_version": 1,
    }
    assert st["conn_packets"] == len(b.records) - 6
    assert ends == [EndReason.FIN]


def test_stats_fragments_accounted(tmp_path):
    b = pcaps.ipv4_fragments()
    n_frag = sum(1 for _, f, _ in b.records if Ether(f)[IP].flags.MF or Ether(f)[IP].frag)
    data = defaultdict(bytes)
    mon = Monitor()
    mon.on(Event.CONN_NEW_DATA, lambda c, e: data.__setitem__(e.side, data[e.side] + e.data))
    st = run(tmp_path, mon, b)
    assert st["packets"] == len(b.records) == accounted(st)
    assert st["frag_held"] == n_frag and st["frag_error"] == 0
    assert st["datagrams_reassembled"] == 2 == st["frag_datagrams"]
    assert st["conn_packets"] == len(b.records) - n_frag
    assert data[Side.SERVER] == b.c2s and data[Side.CLIENT] == b.s2c


def test_stats_damaged_builder_accounted(tmp_path):
    b = pcaps.damaged_packets()
    mon = Monitor()
    st = run(tmp_path, mon, b)
    assert st["packets"] == len(b.records) == accounted(st)
    assert sum(v for k, v in st.items() if k.startswith("malformed_")) == b.extra["damaged"]
    assert st["udp_packets"] == b.extra["udp"]


def test_stats_bad_fragment_rejected_accounted(tmp_path):
    """A fragment with MF set and a length not a multiple of 8 is rejected (frag_error), still accounted."""
    seg = IP(src=CLIENT_IP, dst=SERVER_IP, id=7) / TCP(sport=41120, dport=80, flags="PA") / Raw(b"y" * 1200)
    seg = seg.__class__(bytes(seg))
    frags = fragment(seg, fragsize=400)
    bad = bytearray(bytes(frags[0]))
    bad = bad[:-3]  # 3 bytes shorter: not a multiple of 8
    bad[2:4] = struct.pack("!H", len(bad))
    frame = ETH_HDR + bytes(bad)
    st = run(tmp_path, Monitor(), Built([(1.0, frame, len(frame))]))
    assert st["packets"] == 1 == accounted(st) and st["frag_error"] == 1 and st["frag_bad_fragment"] == 1


# ---------------------------------------------------------------------------------------------------------
# many connections


def test_two_thousand_connections_conn_end_ids(tmp_path):
    n = 2000
    recs: list = []
    conns = [FastConn(recs, f"10.20.{i // 250}.{i % 250 + 1}", "10.30.0.1", 10000 + i, 443, cisn=i * 7919,
                      sisn=i * 104729) for i in range(n)]
    t = 1000.0
    for c in conns:  # open all (first packets in id order)
        c.handshake(t)
        t += 1e-5
    for c in conns:
        c.seg(t, True, PSH | ACK, b"hi")
        t += 1e-5
    for c in reversed(conns):  # close in reverse order
        c.close(t)
        t += 1e-5
    ends = []
    mon = Monitor()
    mon.on(Event.CONN_END, lambda c, e: ends.append((c.id, c.info()["client_port"], e.reason)))
    st = run(tmp_path, mon, Built(recs))
    assert len(ends) == n
    assert sorted(ends) == [(i + 1, 10000 + i, EndReason.FIN) for i in range(n)]
    assert [e[0] for e in ends] == list(range(n, 0, -1))
    assert st["conns_created"] == n and st["conns_live"] == 0 and accounted(st) == st["packets"] == len(recs)
    assert Counter(e[2] for e in ends) == {EndReason.FIN: n}


def test_per_connection_handler_of_both_sides_runs_once_per_connection_event(tmp_path):
    """conn.on(CONN_END, h) subscribes both sides by default; CONN_START/CONN_END are not per side, so h
    runs once per connection, as a monitor-wide handler does."""
    path = pcaps.basic_close().write(tmp_path / "t.pcap")
    mon = Monitor(sync=True)
    calls = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        conn.on(Event.CONN_END, lambda c, e: calls.append(c.id))

    mon.run_pcap(str(path))
    assert calls == [1]
