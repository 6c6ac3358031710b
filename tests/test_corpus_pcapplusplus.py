"""PcapPlusPlus TcpReassembly corpus, run through the Python API with a recorder that reproduces the output
format of PcapPlusPlus's test harness (Tests/Pcap++Test/Tests/TcpReassemblyTests.cpp and
Packet++/src/TcpReassembly.cpp in seladb/PcapPlusPlus).

PcapPlusPlus output format (what the expected *.txt files are):
  * ONE byte string per connection: every chunk handed to the message-ready callback, concatenated in the
    order the callbacks happened, whatever the direction (the harness does `reassembledData += data`).
    A direction switch starts a new "message" (counted in numOfMessagesFromSide) but adds no separator.
  * A chunk is data that just became in-order on one side.
  * Missing bytes: when PcapPlusPlus gives up on a hole it prepends the ASCII text "[N bytes missing]"
    (N decimal, no newline) to the first held chunk after the hole, i.e. the text appears right before
    the next bytes delivered on that side. Adjacent holes before one chunk are one number; a hole with
    nothing after it is never written.
  * Holes are given up on when the other side sends data, at the side's FIN/RST, or when the connection is
    closed at the end of the capture; data arriving after that for the hole is ignored.
  * Overlaps keep the bytes delivered first (retransmitted bytes never replace delivered ones).

The recorder maps this onto our events: CONN_NEW_DATA appends ev.data to the connection's text; DATA_GAP
adds ev.length to a pending count for ev.side that is written as "[N bytes missing]" right before that
side's next delivered bytes. ev.side is the receiving side, so the sending PcapPlusPlus "side" is its peer.

The ppp_* captures are the captures PcapPlusPlus's harness builds in memory from one_tcp_stream.pcap etc.
(retransmissions added, packets dropped/moved). NOTE: they are not PPP-framed; they use Ethernet
(one_http_stream_rst.pcap is the PPPoE one: QinQ + PPPoE session; ppp_ipv6_out_of_order.pcap uses
LINKTYPE_IPV6 (229); four_ipv6_http_streams.pcap DLT_RAW (12); one_ipv6_http_stream.pcap LINKTYPE_RAW (101)).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from tests.tools.pktparse import Seg, decode, flows_in_order, holes, simple_streams

pytestmark = pytest.mark.corpus

GAP_TEXT = re.compile(rb"\[(\d+) bytes missing\]")


@dataclass(frozen=True)
class Case:
    pcap: str
    expected: Tuple[str, ...]


CASES: List[Case] = [
    Case("one_tcp_stream.pcap", ("one_tcp_stream_output.txt",)),
    Case("one_tcp_stream_max_seq.pcap", ("one_tcp_stream_output.txt",)),
    Case("one_http_stream_fin.pcap", ("one_http_stream_fin_output.txt",)),
    Case("one_http_stream_fin2.pcap", ("one_http_stream_fin2_output.txt",)),
    Case("one_http_stream_rst.pcap", ("one_http_stream_rst_output.txt",)),
    Case("three_http_streams.pcap", tuple(f"three_http_streams_conn_{i}_output.txt" for i in (1, 2, 3))),
    Case("one_ipv6_http_stream.pcap", ("one_ipv6_http_stream.txt",)),
    Case("four_ipv6_http_streams.pcap", tuple(f"one_ipv6_http_stream{i}.txt" for i in (2, 3, 4))),
    Case("ppp_retransmission.pcap", ("one_tcp_stream_retransmission_output.txt",)),
    Case("ppp_missing_data.pcap", ("one_tcp_stream_missing_data_output.txt",)),
    Case("ppp_no_syn.pcap", ("one_tcp_stream_output.txt",)),
    Case("ppp_out_of_order.pcap", ("one_tcp_stream_out_of_order_output.txt",)),
    Case("ppp_out_of_order_missing.pcap", ("one_tcp_stream_missing_data_output_ooo.txt",)),
    Case("ppp_fin2_data_after_fin.pcap", ("one_http_stream_fin2_output2.txt",)),
    Case("ppp_ipv6_out_of_order.pcap", ("one_ipv6_http_stream.txt",)),
]

# numOfMessagesFromSide[0], [1] asserted by PcapPlusPlus's tests for the same input (side 0 = the sender
# of the connection's first packet). Keyed by (capture, expected file).
PCPP_MESSAGES: Dict[Tuple[str, str], Tuple[int, int]] = {
    ("one_tcp_stream.pcap", "one_tcp_stream_output.txt"): (2, 2),
    ("one_tcp_stream_max_seq.pcap", "one_tcp_stream_output.txt"): (2, 2),
    ("one_http_stream_fin.pcap", "one_http_stream_fin_output.txt"): (1, 1),
    ("one_http_stream_fin2.pcap", "one_http_stream_fin2_output.txt"): (1, 1),
    ("one_http_stream_rst.pcap", "one_http_stream_rst_output.txt"): (1, 1),
    ("three_http_streams.pcap", "three_http_streams_conn_1_output.txt"): (1, 1),
    ("three_http_streams.pcap", "three_http_streams_conn_2_output.txt"): (1, 1),
    ("three_http_streams.pcap", "three_http_streams_conn_3_output.txt"): (1, 1),
    ("one_ipv6_http_stream.pcap", "one_ipv6_http_stream.txt"): (3, 3),
    ("four_ipv6_http_streams.pcap", "one_ipv6_http_stream2.txt"): (4, 4),
    ("four_ipv6_http_streams.pcap", "one_ipv6_http_stream3.txt"): (1, 1),
    ("four_ipv6_http_streams.pcap", "one_ipv6_http_stream4.txt"): (3, 3),
    ("ppp_retransmission.pcap", "one_tcp_stream_retransmission_output.txt"): (2, 2),
    ("ppp_missing_data.pcap", "one_tcp_stream_missing_data_output.txt"): (2, 2),
    ("ppp_no_syn.pcap", "one_tcp_stream_output.txt"): (2, 2),
    ("ppp_out_of_order.pcap", "one_tcp_stream_out_of_order_output.txt"): (2, 2),
    ("ppp_out_of_order_missing.pcap", "one_tcp_stream_missing_data_output_ooo.txt"): (2, 2),
    ("ppp_fin2_data_after_fin.pcap", "one_http_stream_fin2_output2.txt"): (1, 1),
    ("ppp_ipv6_out_of_order.pcap", "one_ipv6_http_stream.txt"): (3, 3),
}


def pick_connection(expected: bytes, conns_data: Sequence[Sequence[Tuple[int, bytes]]]) -> Optional[int]:
    """Index of the connection an expected file belongs to: the one whose bytes (concatenated, no gap text)
    share the longest prefix with the expected file with its gap texts removed (at least 32 bytes).
    A capture with a single connection needs no matching."""
    if len(conns_data) == 1:
        return 0
    expected = GAP_TEXT.sub(b"", expected)
    best, best_len = None, 31
    for i, chunks in enumerate(conns_data):
        data = b"".join(x for _d, x in chunks)
        n = 0
        for a, b in zip(data, expected):
            if a != b:
                break
            n += 1
        if n > best_len:
            best, best_len = i, n
    return best


# ---------------------------------------------------------------------------------------------------------
# Deriving facts from the captures themselves (independent decoder in tests/tools/pktparse.py)


def norm_ep(s: str) -> Tuple[ipaddress._BaseAddress, int]:
    """'1.2.3.4:80' / '[2001:db8::1]:80' -> (address, port), whatever the textual IPv6 form."""
    host, _, port = s.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def seg_ep(s: Seg, which: str) -> Tuple[ipaddress._BaseAddress, int]:
    return norm_ep(s.endpoint(which))


def flow_endpoints(flow: List[Seg]) -> frozenset:
    return frozenset({seg_ep(flow[0], "src"), seg_ep(flow[0], "dst")})


def flow_client(flow: List[Seg]) -> Tuple[ipaddress._BaseAddress, int]:
    """The client as the capture shows it: the SYN sender, else the SYN/ACK receiver, else the side whose
    port is higher (server port lower/well-known)."""
    for s in flow:
        if s.syn and not s.ackf:
            return seg_ep(s, "src")
    for s in flow:
        if s.syn and s.ackf:
            return seg_ep(s, "dst")
    s = flow[0]
    return seg_ep(s, "src") if s.sport > s.dport else seg_ep(s, "dst")


def flow_payload_chunks(flow: List[Seg]) -> List[Tuple[int, bytes]]:
    return [(0, s.payload) for s in flow if s.payload]


def fixup_pcpp_header_cut_artifact(expected: bytes, flow: List[Seg]) -> bytes:
    """one_tcp_stream_missing_data_output.txt was produced by PcapPlusPlus's harness from an in-memory
    packet that is NOT the one in ppp_missing_data.pcap: tcpReassemblyAddRetransmissions(packet 3, 20, 0)
    removed only the HttpRequestLayer, so the request body's PayloadLayer stayed and the new payload was
    appended after it. That packet therefore carried [request body][request bytes 20..] at seq+20, and
    the output has the body inserted right after "[20 bytes missing]" and the same number of bytes
    dropped from the start of the next segment (overlap). ppp_missing_data.pcap holds the clean packet
    (request bytes 20.. only). Undo the artifact using the capture's own bytes, and check that it is
    exactly what the file holds (so a different corpus fails loudly here instead of silently passing).
    """
    data = [s for s in flow if s.payload]
    cut = data[0]  # the head-cut request segment, first data segment of the capture
    nxt = next(s for s in data if s.seq == (cut.seq + len(cut.payload)) % (1 << 32))
    body = cut.payload.split(b"\r\n\r\n", 1)[1]
    marker = b"[20 bytes missing]"
    bad = marker + body + cut.payload + nxt.payload[len(body):]
    assert expected.startswith(bad), "PcapPlusPlus header-cut artifact not found where expected"
    return marker + cut.payload + nxt.payload + expected[len(bad):]


def expected_bytes(corpus: Path, case_pcap: str, name: str, flow: List[Seg]) -> bytes:
    exp = (corpus / "pcapplusplus" / name).read_bytes()
    if case_pcap == "ppp_missing_data.pcap":
        exp = fixup_pcpp_header_cut_artifact(exp, flow)
    return exp


def expected_end_reason(flow: List[Seg]) -> str:
    """RST if the capture has a RST for the flow, FIN if both sides sent a FIN, else end of input."""
    if any(s.rst for s in flow):
        return "RST"
    senders = {seg_ep(s, "src") for s in flow if s.fin}
    return "FIN" if len(senders) == 2 else "EOF"


# ---------------------------------------------------------------------------------------------------------
# The recorder app (Python API)


@dataclass
class ConnRecord:
    id: int
    client: str = ""
    server: str = ""
    text: bytearray = field(default_factory=bytearray)  # PcapPlusPlus format
    chunks: List[Tuple[int, bytes]] = field(default_factory=list)  # (receiving side, bytes)
    senders: List[int] = field(default_factory=list)  # sending side (0 client, 1 server) of each chunk
    next_off: Dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    pending_gap: Dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0})
    gaps: Dict[int, List[Tuple[int, int]]] = field(default_factory=lambda: {0: [], 1: []})
    end_reasons: List[object] = field(default_factory=list)
    states: Tuple = ()
    errors: List[str] = field(default_factory=list)

    def messages_from(self, sender: int) -> int:
        runs = [s for i, s in enumerate(self.senders) if i == 0 or self.senders[i - 1] != s]
        return runs.count(sender)


def record(pcap: Path, **monitor_kwargs) -> Tuple[Dict[int, ConnRecord], dict]:
    from mos import Event, Monitor, Side

    mon = Monitor(policy="first", **monitor_kwargs)
    conns: Dict[int, ConnRecord] = {}

    def rec(conn) -> ConnRecord:
        r = conns.get(conn.id)
        if r is None:
            r = conns[conn.id] = ConnRecord(conn.id, str(conn.client), str(conn.server))
        return r

    def on_start(conn, ev):
        rec(conn)

    def on_data(conn, ev):
        r = rec(conn)
        side = int(ev.side)
        data = bytes(ev.data)
        if ev.offset != r.next_off[side] or ev.length != len(data):
            r.errors.append(f"data side {side} at {ev.offset}+{ev.length} (len {len(data)}), "
                            f"expected offset {r.next_off[side]}")
        r.next_off[side] = ev.offset + len(data)
        if not data:
            return
        if r.pending_gap[side]:
            r.text += b"[%d bytes missing]" % r.pending_gap[side]
            r.pending_gap[side] = 0
        r.text += data
        r.chunks.append((side, data))
        r.senders.append(int(Side(side).peer))

    def on_gap(conn, ev):
        r = rec(conn)
        side = int(ev.side)
        if ev.offset != r.next_off[side] or ev.length <= 0:
            r.errors.append(f"gap side {side} at {ev.offset}+{ev.length}, expected offset {r.next_off[side]}")
        r.next_off[side] = ev.offset + ev.length
        r.pending_gap[side] += ev.length
        r.gaps[side].append((ev.offset, ev.length))

    def on_end(conn, ev):
        r = rec(conn)
        r.end_reasons.append(ev.reason)
        r.states = (conn.state(Side.CLIENT), conn.state(Side.SERVER))

    mon.on(Event.CONN_START, on_start)
    mon.on(Event.CONN_NEW_DATA, on_data)
    mon.on(Event.DATA_GAP, on_gap)
    mon.on(Event.CONN_END, on_end)
    mon.run_pcap(str(pcap))
    stats = mon.stats()
    return conns, stats


@functools.cache
def recorded(pcap: str) -> Tuple[Dict[int, ConnRecord], dict]:
    return record(Path(pcap))


def match_record(conns: Dict[int, ConnRecord], flow: List[Seg]) -> ConnRecord:
    want = flow_endpoints(flow)
    found = [r for r in conns.values() if frozenset({norm_ep(r.client), norm_ep(r.server)}) == want]
    got = [(r.client, r.server) for r in found]
    assert len(found) == 1, f"expected one connection {set(want)}, got {got}"
    return found[0]


def _params():
    out = []
    for c in CASES:
        for e in c.expected:
            out.append(pytest.param(c.pcap, e, id=f"{c.pcap}-{e}"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("pcap,expected_name", _params())
def test_pcapplusplus_expected_output(corpus_dir, pcap, expected_name):
    path = corpus_dir / "pcapplusplus" / pcap
    flows = flows_in_order([s for s in decode(path) if s.is_tcp])
    raw_expected = (corpus_dir / "pcapplusplus" / expected_name).read_bytes()
    idx = pick_connection(raw_expected, [flow_payload_chunks(f) for f in flows])
    assert idx is not None, "cannot tell which connection of the capture the expected file belongs to"
    flow = flows[idx]
    expected = expected_bytes(corpus_dir, pcap, expected_name, flow)

    conns, _stats = recorded(str(path))
    assert len(conns) == len(flows), [(r.client, r.server) for r in conns.values()]
    assert sorted(conns) == list(range(1, len(flows) + 1))
    r = match_record(conns, flow)
    assert not r.errors, r.errors
    # roles: the capture's client
    assert norm_ep(r.client) == flow_client(flow)

    got = bytes(r.text)
    if got != expected:
        n = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        lo, hi = max(0, n - 60), n + 60
        pytest.fail(f"text differs at byte {n} (got {len(got)}, expected {len(expected)} bytes):\n"
                    f"got:      {got[lo:hi]!r}\nexpected: {expected[lo:hi]!r}")

    # missing-byte totals written in the expected file == the gaps the engine reported
    exp_missing = sum(int(m) for m in GAP_TEXT.findall(expected))
    assert sum(n for side in (0, 1) for _o, n in r.gaps[side]) >= exp_missing
    # PcapPlusPlus's message counts (side 0 = sender of the first packet)
    first_sender = seg_ep(flow[0], "src")
    side0 = 0 if first_sender == norm_ep(r.client) else 1
    m0, m1 = PCPP_MESSAGES[(pcap, expected_name)]
    assert (r.messages_from(side0), r.messages_from(1 - side0)) == (m0, m1)

    assert len(r.end_reasons) == 1, r.end_reasons
    assert r.end_reasons[0].name == expected_end_reason(flow)


def test_pcapplusplus_missing_data_gap_list(corpus_dir):
    """ppp_missing_data.pcap: 20 bytes cut from one segment's head, 30 from another's tail, two segments
    of 1360 lost; the engine must report exactly these holes (positions derived from the capture)."""
    path = corpus_dir / "pcapplusplus" / "ppp_missing_data.pcap"
    (flow,) = flows_in_order([s for s in decode(path) if s.is_tcp])
    client = flow_client(flow)
    c2s = [s for s in flow if seg_ep(s, "src") == client]
    s2c = [s for s in flow if seg_ep(s, "src") != client]
    exp_c2s, exp_s2c = holes(c2s), holes(s2c)
    assert [n for _o, n in exp_c2s] == [20, 30] and [n for _o, n in exp_s2c] == [1360, 1360]
    conns, _ = recorded(str(path))
    r = conns[1]
    # ev.side is the receiving side: client->server bytes are received by the SERVER (1)
    assert r.gaps[1] == exp_c2s
    assert r.gaps[0] == exp_s2c


def test_pcapplusplus_retransmission_counts(corpus_dir):
    """ppp_retransmission.pcap = one_tcp_stream.pcap + 6 retransmissions; the delivered bytes per
    direction have the original's length (the '*' extensions overlap later bytes: first copy wins)."""
    orig_path = corpus_dir / "pcapplusplus" / "one_tcp_stream.pcap"
    orig = flows_in_order([s for s in decode(orig_path) if s.is_tcp])[0]
    client = flow_client(orig)
    c2s, s2c = simple_streams(orig, (str(client[0]), client[1]))
    conns, stats = recorded(str(corpus_dir / "pcapplusplus" / "ppp_retransmission.pcap"))
    r = conns[1]
    got_c2s = b"".join(x for side, x in r.chunks if side == 1)
    got_s2c = b"".join(x for side, x in r.chunks if side == 0)
    assert (len(got_c2s), len(got_s2c)) == (len(c2s), len(s2c))
    assert isinstance(stats, dict) and stats


# ---------------------------------------------------------------------------------------------------------
# Captures with no expected output: must run cleanly, with what the packets say


def test_one_tcp_rst(corpus_dir):
    from mos import EndReason, TcpState

    path = corpus_dir / "pcapplusplus" / "one_tcp_rst.pcap"
    (flow,) = flows_in_order([s for s in decode(path) if s.is_tcp])
    assert [bool(s.rst) for s in flow] == [False, True] and all(not s.payload for s in flow)
    conns, _ = recorded(str(path))
    assert list(conns) == [1]
    r = conns[1]
    assert norm_ep(r.client) == flow_client(flow)
    assert r.chunks == [] and r.gaps == {0: [], 1: []}
    assert r.end_reasons == [EndReason.RST]
    assert r.states == (TcpState.CLOSED, TcpState.CLOSED)


def test_fin_rst_close(corpus_dir):
    from mos import EndReason

    path = corpus_dir / "pcapplusplus" / "one_tcp_stream_fin_rst_close_packet.pcap"
    (flow,) = flows_in_order([s for s in decode(path) if s.is_tcp])
    client = flow_client(flow)
    for direction in (True, False):
        assert holes([s for s in flow if (seg_ep(s, "src") == client) == direction]) == []
    c2s, s2c = simple_streams(flow, (str(client[0]), client[1]))
    assert c2s and s2c
    conns, _ = recorded(str(path))
    assert list(conns) == [1]
    r = conns[1]
    assert not r.errors, r.errors
    assert b"".join(x for side, x in r.chunks if side == 1) == c2s
    assert b"".join(x for side, x in r.chunks if side == 0) == s2c
    # the client's FIN is followed by its RST: the connection ends by RST
    assert r.end_reasons == [EndReason.RST]


def test_unidirectional_with_missing_packet(corpus_dir):
    from mos import EndReason

    path = corpus_dir / "pcapplusplus" / "unidirectional_tcp_stream_with_missing_packet.pcap"
    (flow,) = flows_in_order([s for s in decode(path) if s.is_tcp])
    client = flow_client(flow)
    assert all(seg_ep(s, "src") == client for s in flow)  # one-sided
    exp_holes = holes(flow)
    assert len(exp_holes) == 1
    off, ln = exp_holes[0]
    data = b"".join(s.payload for s in sorted((s for s in flow if s.payload), key=lambda s: s.seq))
    conns, _ = recorded(str(path))
    assert list(conns) == [1]
    r = conns[1]
    assert not r.errors, r.errors
    assert norm_ep(r.client) == client
    got = b"".join(x for side, x in r.chunks if side == 1)
    assert got == data and len(got) == sum(len(s.payload) for s in flow)
    assert r.gaps[1] == [(off, ln)] and r.gaps[0] == []
    assert got[:off] == data[:off]
    assert [x for side, x in r.chunks if side == 0] == []
    assert r.end_reasons == [EndReason.EOF]


def test_ip4_bad_fragment_runs_cleanly(corpus_dir):
    path = corpus_dir / "pcapplusplus" / "ip4_bad_fragment.pcap"
    assert not [s for s in decode(path) if s.is_tcp]
    conns, stats = recorded(str(path))
    assert conns == {}
    assert isinstance(stats, dict)
