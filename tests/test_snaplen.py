"""Captures cut by their snaplen (issue 9, item 7).

A capture taken with a small snaplen keeps each packet's headers and only the start of its payload; the
record still says how long the packet was on the wire. Such a packet is no malformation: its TCP header
drives both endpoints' states (the sender's next sequence number and FIN come from the IP length), the
captured bytes enter the stream and the bytes cut become a gap there (DATA_GAP, counted also as
``reasm_snaplen_gaps`` / ``reasm_snaplen_gap_bytes``; ``snaplen_truncated`` counts the packets). A packet
whose headers are cut, or whose IP length exceeds its wire length, stays malformed.

Each capture is built here (tests/pcaps.py's Conv) at full length and then written again with a snaplen; the
expected streams and gaps are computed from the full frames: per data segment, the captured prefix of its
payload and the rest.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, IPv6ExtHdrFragment, Raw, fragment, fragment6

from mos import EndReason, Event, Monitor, Side
from mos.stats import accounted
from tests.conftest import read_index, run_cli
from tests.pcaps import REQ, Built, Conv, payload

RESP_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n"


def http_exchange(v6: bool = False) -> Built:
    """A request in two segments and a response in five, the last carrying the server's FIN, each
    acknowledged; then the client's FIN and the last ACK. No TCP options: at snaplen 54 (IPv4) or 74 (IPv6)
    every header is still whole and every payload byte is cut."""
    c = Conv(cip="2001:db8::1" if v6 else "10.10.0.1", sip="2001:db8::2" if v6 else "10.10.0.2", cport=40100)
    c.handshake()
    req = REQ[:30] + payload("q", 400) + REQ[30:]
    c.send(True, req, mss=300)
    resp = RESP_HEAD + payload("R", 4000)
    chunks = [resp[i:i + 1000] for i in range(0, len(resp), 1000)]
    for chunk in chunks[:-1]:
        c.tcp(False, "PA", payload=chunk)
        c.tcp(True, "A")
    c.tcp(False, "FPA", payload=chunks[-1])
    c.tcp(True, "FA")
    c.tcp(False, "A")
    return c.built(req, resp, end="FIN", extra={"client_state": "CLOSED", "server_state": "TIME_WAIT"})


def cut(built: Built, snaplen: int) -> Built:
    """The same capture taken with `snaplen`: each record keeps its first snaplen bytes and its wire length."""
    recs = [(ts, frame[:snaplen], orig) for ts, frame, orig in built.records]
    return Built(recs, built.c2s, built.s2c, built.client, built.server, end=built.end, extra=dict(built.extra))


@dataclass
class Expect:
    """What a cut capture must give, per receive stream: the delivered (offset, bytes), the gaps."""

    data: Dict[Side, List[Tuple[int, bytes]]] = field(default_factory=lambda: defaultdict(list))
    gaps: Dict[Side, List[Tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))
    truncated: int = 0


def expect(built: Built, snaplen: int) -> Expect:
    """From the full frames of an in-order capture: each segment's captured prefix at its offset, the
    rest of its payload a gap."""
    ex = Expect()
    isn: Dict[bool, int] = {}
    for _ts, frame, _orig in built.records:
        pkt = Ether(frame)
        t = pkt[TCP]
        from_client = t.dport == 80
        if t.flags.S:
            isn[from_client] = t.seq
            continue
        data = bytes(t.payload)
        if not data:
            continue
        start = len(frame) - len(data)  # no padding: these frames are longer than Ethernet's minimum
        got = max(0, min(snaplen, len(frame)) - start)
        off = (t.seq - isn[from_client] - 1) % (1 << 32)
        side = Side.SERVER if from_client else Side.CLIENT
        if got:
            ex.data[side].append((off, data[:got]))
        if got < len(data):
            ex.gaps[side].append((off + got, len(data) - got))
            ex.truncated += 1
    return ex


@dataclass
class Run:
    data: Dict[Side, List[Tuple[int, bytes]]]
    gaps: Dict[Side, List[Tuple[int, int]]]
    errors: List[Tuple[int, int]]
    ends: List[EndReason]
    states: List[Tuple[str, str]]
    stats: Dict[str, int]


def run_api(tmp_path: Path, built: Built, name: str) -> Run:
    return run_api_path(built.write(tmp_path / f"{name}.pcap"))


def run_api_path(path: Path) -> Run:
    """A Monitor over the capture, recording data, gaps, errors, ends with both states, counters."""
    mon = Monitor()
    data: Dict[Side, List[Tuple[int, bytes]]] = defaultdict(list)
    gaps: Dict[Side, List[Tuple[int, int]]] = defaultdict(list)
    errors: List[Tuple[int, int]] = []
    ends: List[EndReason] = []
    states: List[Tuple[str, str]] = []
    mon.on(Event.CONN_NEW_DATA, lambda c, e: data[e.side].append((e.offset, bytes(e.data))))
    mon.on(Event.DATA_GAP, lambda c, e: gaps[e.side].append((e.offset, e.length)))
    mon.on(Event.ERROR, lambda c, e: errors.append((int(e.reason), e.length)))

    @mon.on(Event.CONN_END)
    def end(c, e):
        ends.append(e.reason)
        states.append((c.state(Side.CLIENT).name, c.state(Side.SERVER).name))

    st = mon.run_pcap(path)
    return Run(data, gaps, errors, ends, states, dict(st))


def merged(chunks: List[Tuple[int, bytes]]) -> List[Tuple[int, bytes]]:
    """Adjacent deliveries as one (a held segment may be delivered with its neighbour)."""
    out: List[Tuple[int, bytes]] = []
    for off, b in chunks:
        if out and out[-1][0] + len(out[-1][1]) == off:
            out[-1] = (out[-1][0], out[-1][1] + b)
        else:
            out.append((off, b))
    return out


def no_malformed(st: Dict[str, int]) -> None:
    assert {k: v for k, v in st.items() if k.startswith("malformed_") and v} == {}


CASES = [(False, 128), (False, 96), (False, 64), (False, 54), (True, 128), (True, 100), (True, 74)]


@pytest.mark.parametrize("v6,snaplen", CASES, ids=[f"{'v6' if v else 'v4'}-{s}" for v, s in CASES])
def test_cut_capture_api(tmp_path, v6, snaplen):
    full = http_exchange(v6)
    built = cut(full, snaplen)
    ex = expect(full, snaplen)
    assert ex.truncated > 0
    r = run_api(tmp_path, built, f"cut{snaplen}")
    st = r.stats
    # every packet in the connection, none malformed, the connection closed by both FINs as in full
    no_malformed(st)
    assert st["packets"] == st["conn_packets"] == len(built.records) == accounted(st)
    assert r.ends == [EndReason.FIN]
    assert r.states == [("CLOSED", "TIME_WAIT")]
    assert r.errors == []
    # the captured prefixes at their offsets, the rest gaps exactly where the bytes were cut
    for side in (Side.SERVER, Side.CLIENT):
        assert merged(r.data[side]) == merged(ex.data[side]), side
        assert r.gaps[side] == ex.gaps[side], side
    cut_bytes = sum(n for side in ex.gaps for _o, n in ex.gaps[side])
    assert st["snaplen_truncated"] == ex.truncated
    assert st["reasm_snaplen_gaps"] == st["reasm_gaps"] == sum(len(g) for g in ex.gaps.values())
    assert st["reasm_snaplen_gap_bytes"] == st["reasm_bytes_gap"] == cut_bytes
    assert st["reasm_bytes_delivered"] == len(full.c2s) + len(full.s2c) - cut_bytes
    assert st["reasm_rexmit_bytes"] == 0


@pytest.mark.parametrize("v6,snaplen", [(False, 128), (False, 54), (True, 74)])
def test_cut_capture_streams(tmp_path, v6, snaplen):
    """`mos-xdp streams -o`: the files hold the captured prefixes in order, the index the gaps and the
    close, and --stats shows no malformed packet."""
    full = http_exchange(v6)
    ex = expect(full, snaplen)
    pcap = cut(full, snaplen).write(tmp_path / "cut.pcap")
    out = tmp_path / "out"
    proc = run_cli(pcap, "-o", out, "--stats")
    assert proc.returncode == 0, proc.stderr
    (row,) = read_index(out)
    assert (row["client"], row["server"]) == (full.client, full.server)
    assert row["end"] == "FIN"
    assert (row["client_state"], row["server_state"]) == ("CLOSED", "TIME_WAIT")
    for d, side in (("c2s", Side.SERVER), ("s2c", Side.CLIENT)):
        assert (out / f"1.{d}").read_bytes() == b"".join(b for _o, b in ex.data[side])
        assert [tuple(g) for g in row[f"{d}_gaps"]] == ex.gaps[side]
        assert row[f"{d}_bytes"] + sum(n for _o, n in row[f"{d}_gaps"]) == len(full.c2s if d == "c2s" else full.s2c)
    err = proc.stderr.decode()
    assert "malformed" not in err
    assert f"snaplen_truncated                {ex.truncated}" in err


@pytest.mark.parametrize("v6", [False, True])
def test_full_snaplen_unchanged(tmp_path, v6):
    """Without a cut nothing of this applies: whole streams, no gap, no snaplen counter."""
    full = http_exchange(v6)
    r = run_api(tmp_path, full, "full")
    assert b"".join(b for _o, b in r.data[Side.SERVER]) == full.c2s
    assert b"".join(b for _o, b in r.data[Side.CLIENT]) == full.s2c
    assert dict(r.gaps) == {}
    assert r.ends == [EndReason.FIN] and r.states == [("CLOSED", "TIME_WAIT")]
    st = r.stats
    assert st["snaplen_truncated"] == st["reasm_snaplen_gaps"] == st["reasm_snaplen_gap_bytes"] == 0
    assert st["reasm_gaps"] == 0


# ---------------------------------------------------------------------------------------------------------
# a later copy of the bytes cut


def three_segments(c: Conv) -> Tuple[bytes, bytes, bytes]:
    c.handshake()
    return payload("A", 300), payload("B", 300), payload("C", 300)


def seg(c: Conv, off: int, data: bytes, caplen: int = 0) -> None:
    """A client segment at stream offset `off`, its record cut to `caplen` bytes (0: whole)."""
    frame = bytes(c.l2(True) / c.l3(True) / TCP(sport=c.cport, dport=c.sport, flags="PA",
                                                seq=c.off_seq(True, off), ack=c.nxt[False]) / Raw(data))
    c.emit(frame, caplen=caplen or None)


HDR = 54  # Ethernet + IPv4 + TCP without options


def test_cut_bytes_filled_before_delivery(tmp_path):
    """B arrives cut while A is still missing, then B whole (another copy, e.g. from a second capture
    point): the cut bytes were not in the stream yet, so the whole copy fills them; no gap at all."""
    c = Conv(cport=40101)
    a, b, cc = three_segments(c)
    seg(c, 300, b, caplen=HDR + 40)
    seg(c, 300, b)
    seg(c, 0, a)
    seg(c, 600, cc)
    c.nxt[True] = c.off_seq(True, 900)
    c.tcp(False, "A")
    c.close()
    r = run_api(tmp_path, c.built(), "fill")
    assert b"".join(x for _o, x in merged(r.data[Side.SERVER])) == a + b + cc
    assert dict(r.gaps) == {}
    st = r.stats
    assert st["snaplen_truncated"] == 1
    assert st["reasm_snaplen_gaps"] == st["reasm_gaps"] == 0
    assert st["reasm_rexmit_inconsistent"] == 0 and st["reasm_rexmit_unverifiable"] == 0
    assert r.ends == [EndReason.FIN]


def test_cut_bytes_after_delivery_unverifiable(tmp_path):
    """B arrives cut in order: its cut bytes are a gap at once. A whole copy of B afterwards cannot put them
    back (the stream went past them): its first 40 bytes are compared, the rest is an unverifiable
    retransmission, and the gap stays."""
    c = Conv(cport=40102)
    a, b, cc = three_segments(c)
    seg(c, 0, a)
    seg(c, 300, b, caplen=HDR + 40)
    seg(c, 300, b)
    seg(c, 600, cc)
    c.nxt[True] = c.off_seq(True, 900)
    c.tcp(False, "A")
    c.close()
    r = run_api(tmp_path, c.built(), "after")
    assert merged(r.data[Side.SERVER]) == [(0, a + b[:40]), (600, cc)]
    assert r.gaps[Side.SERVER] == [(340, 260)]
    st = r.stats
    assert st["reasm_snaplen_gaps"] == st["reasm_gaps"] == 1
    assert st["reasm_snaplen_gap_bytes"] == 260
    assert st["reasm_rexmit_bytes"] == 300
    assert st["reasm_rexmit_unverifiable"] == 260 and st["reasm_rexmit_inconsistent"] == 0


def test_cut_behind_a_lost_segment(tmp_path):
    """A is lost, B arrives with its whole payload cut, the server acknowledges both and sends data: A is an
    ordinary gap (an acknowledged hole), B a gap of the capture's, each reported as such."""
    c = Conv(cport=40103)
    a, b, cc = three_segments(c)
    seg(c, 300, b, caplen=HDR)
    c.nxt[True] = c.off_seq(True, 600)
    c.tcp(False, "PA", payload=b"HTTP/1.1 100 Continue\r\n\r\n")
    seg(c, 600, cc)
    c.nxt[True] = c.off_seq(True, 900)
    c.tcp(False, "A")
    c.close()
    r = run_api(tmp_path, c.built(), "lost")
    assert r.gaps[Side.SERVER] == [(0, 300), (300, 300)]
    assert merged(r.data[Side.SERVER]) == [(600, cc)]
    st = r.stats
    assert st["reasm_gaps"] == 2 and st["reasm_bytes_gap"] == 600
    assert st["reasm_snaplen_gaps"] == 1 and st["reasm_snaplen_gap_bytes"] == 300
    assert r.ends == [EndReason.FIN]


def test_cut_out_of_order_delivered_at_flush(tmp_path):
    """Cut ranges held behind a hole that never fills become gaps at the end, in stream order."""
    c = Conv(cport=40104)
    a, b, cc = three_segments(c)
    seg(c, 300, b, caplen=HDR + 100)
    seg(c, 600, cc, caplen=HDR + 10)
    r = run_api(tmp_path, c.built(), "flush")
    assert merged(r.data[Side.SERVER]) == [(300, b[:100]), (600, cc[:10])]
    assert r.gaps[Side.SERVER] == [(0, 300), (400, 200), (610, 290)]
    st = r.stats
    assert st["reasm_snaplen_gaps"] == 2 and st["reasm_snaplen_gap_bytes"] == 490
    assert r.ends == [EndReason.EOF]


# ---------------------------------------------------------------------------------------------------------
# what stays malformed, what is not TCP


def test_headers_cut_still_malformed(tmp_path):
    """A snaplen inside the TCP header: the header cannot be read, so the packet is malformed as ever."""
    full = http_exchange()
    r = run_api(tmp_path, cut(full, 44), "hdr")
    st = r.stats
    assert st["malformed_truncated_tcp"] == len(full.records)
    assert st["conn_packets"] == 0 and st["snaplen_truncated"] == 0


def test_ip_length_beyond_wire_length_malformed(tmp_path):
    """A record whose IP length exceeds the wire length it declares: the packet lied, no snaplen explains it."""
    c = Conv(cport=40105)
    c.handshake()
    frame = bytes(c.l2(True) / c.l3(True) / TCP(sport=c.cport, dport=c.sport, flags="PA", seq=c.nxt[True],
                                                ack=c.nxt[False]) / Raw(b"x" * 200))
    c.emit(frame[:120], orig_len=150)
    r = run_api(tmp_path, c.built(), "lie")
    assert r.stats["malformed_truncated_payload"] == 1 and r.stats["snaplen_truncated"] == 0


def test_udp_cut_not_malformed(tmp_path):
    c = Conv(cport=40106)
    frame = bytes(c.l2(True) / c.l3(True) / UDP(sport=5353, dport=5353) / Raw(b"u" * 300))
    c.emit(frame, caplen=64)
    st = run_api(tmp_path, c.built(), "udp").stats
    assert st["udp_packets"] == 1 == st["snaplen_truncated"]
    no_malformed(st)


@pytest.mark.parametrize("v6", [False, True])
def test_fragment_cut_rejected_not_malformed(tmp_path, v6):
    """A fragment cut by the snaplen cannot be reassembled: defragmentation rejects it (frag_error, counted
    as a bad fragment), it is no malformed packet; the datagram's other fragment waits and times out."""
    c = Conv(cip="2001:db8::1" if v6 else "10.10.0.1", sip="2001:db8::2" if v6 else "10.10.0.2", cport=40107)
    c.handshake()
    t = TCP(sport=c.cport, dport=c.sport, flags="PA", seq=c.nxt[True], ack=c.nxt[False]) / Raw(payload("F", 1200))
    if v6:
        frags = fragment6(IPv6(src=c.cip, dst=c.sip) / IPv6ExtHdrFragment() / t, 700)
    else:
        frags = fragment(IP(src=c.cip, dst=c.sip) / t, fragsize=640)
    assert len(frags) == 2
    for i, f in enumerate(frags):
        frame = bytes(c.l2(True) / f)
        c.emit(frame, caplen=128 if i == 0 else None)
    st = run_api(tmp_path, c.built(), "frag").stats
    no_malformed(st)
    assert st["frag_error"] == 1 and st["frag_bad_fragment"] == 1 and st["frag_held"] == 1
    assert st["snaplen_truncated"] == 1
    assert st["packets"] == accounted(st)


# ---------------------------------------------------------------------------------------------------------
# a real capture, written again with a snaplen


def rewrite_pcap(src: Path, dst: Path, snaplen: int) -> int:
    """Copy a classic pcap with every record cut to snaplen bytes (wire lengths kept). Returns the count of
    records cut."""
    raw = src.read_bytes()
    magic = raw[:4]
    end = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    hdr = bytearray(raw[:24])
    struct.pack_into(end + "I", hdr, 16, snaplen)
    out = bytearray(hdr)
    pos, n = 24, 0
    while pos + 16 <= len(raw):
        sec, frac, incl, orig = struct.unpack_from(end + "IIII", raw, pos)
        data = raw[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        keep = data[:snaplen]
        n += len(keep) < len(data)
        out += struct.pack(end + "IIII", sec, frac, len(keep), orig) + keep
    dst.write_bytes(bytes(out))
    return n


CORPUS_CAPTURES = ["pcapplusplus/one_http_stream_fin.pcap", "pcapplusplus/one_tcp_stream.pcap",
                   "pcapplusplus/one_ipv6_http_stream.pcap"]


def streams_by_side(r: Run) -> Dict[Side, bytes]:
    out = {}
    for side, chunks in r.data.items():
        buf = bytearray()
        for off, b in chunks:
            if len(buf) < off + len(b):
                buf.extend(b"\0" * (off + len(b) - len(buf)))
            buf[off:off + len(b)] = b
        out[side] = bytes(buf)
    return out


@pytest.mark.corpus
@pytest.mark.parametrize("capture", CORPUS_CAPTURES)
@pytest.mark.parametrize("snaplen", [128, 96])
def test_corpus_capture_cut(corpus_dir, tmp_path, capture, snaplen):
    """A corpus capture written again at a snaplen: every packet is still used (the same packets in
    connections, the same ends and states as the full capture, nothing malformed); each byte delivered is
    the full capture's byte at that offset, and delivered bytes and gaps cover the full streams exactly."""
    src = corpus_dir / capture
    cut_path = tmp_path / "cut.pcap"
    ncut = rewrite_pcap(src, cut_path, snaplen)
    assert ncut > 0
    mon_full = run_api_path(src)
    mon_cut = run_api_path(cut_path)
    no_malformed(mon_cut.stats)
    assert mon_cut.stats["conn_packets"] == mon_full.stats["conn_packets"]
    assert mon_cut.stats["packets"] == accounted(mon_cut.stats)
    assert mon_cut.ends == mon_full.ends and mon_cut.states == mon_full.states
    assert mon_cut.stats["snaplen_truncated"] == ncut
    full_streams = streams_by_side(mon_full)
    for side, chunks in mon_cut.data.items():
        for off, b in chunks:
            assert full_streams[side][off:off + len(b)] == b
    for side in (Side.SERVER, Side.CLIENT):
        covered = sorted([(o, len(b)) for o, b in mon_cut.data[side]] + mon_cut.gaps[side])
        pos = 0
        for o, n in covered:
            assert o == pos, (side, covered)
            pos += n
        assert pos == len(full_streams.get(side, b""))
    delivered = sum(len(b) for chunks in mon_cut.data.values() for _o, b in chunks)
    total = sum(len(s) for s in full_streams.values())
    assert mon_cut.stats["reasm_snaplen_gap_bytes"] == total - delivered > 0
    assert mon_full.stats["reasm_gaps"] == 0

