"""Evasion-resistant TCP tracking (issue 9), items 2 and 3: data on a SYN, data at or past a FIN.

Each capture is built here (tests/pcaps.py's Conv) and the expected output is the stream the receiving host
gets: SYN data only once the SYN-ACK acknowledges it (TCP Fast Open, RFC 7413), else the bytes later sent
at those sequence numbers; nothing at or past the sender's FIN (RFC 9293 3.10.7.4). Where the overlap policy
could matter, every policy is run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from mos import ErrorKind, Event, Monitor, Side
from mos.events import Policy
from tests.pcaps import Built, Conv, payload

POLICIES = [p.value for p in Policy]


@dataclass
class Result:
    c2s: bytes
    s2c: bytes
    errors: List[Tuple[Side, int, int, int]] = field(default_factory=list)  # (receiving side, reason, off, len)
    counters: Dict[str, int] = field(default_factory=dict)

    def errors_of(self, kind: ErrorKind) -> List[Tuple[Side, int, int, int]]:
        return [e for e in self.errors if e[1] == kind]


def run(tmp_path: Path, built: Built, policy: str = "first", name: str = "t") -> Result:
    mon = Monitor(policy=policy)
    chunks: Dict[Side, List[Tuple[int, bytes]]] = defaultdict(list)
    errors: List[Tuple[Side, int, int, int]] = []
    mon.on(Event.CONN_NEW_DATA, lambda c, e: chunks[e.side].append((e.offset, bytes(e.data))))
    mon.on(Event.ERROR, lambda c, e: errors.append((e.side, int(e.reason), e.offset, e.length)))
    counters = mon.run_pcap(built.write(tmp_path / f"{name}-{policy}.pcap"))

    def stream(side: Side) -> bytes:
        out = b""
        for off, data in chunks[side]:
            assert off == len(out), "delivery must be contiguous (no gaps in these captures)"
            out += data
        return out

    return Result(stream(Side.SERVER), stream(Side.CLIENT), errors, dict(counters))


# ---------------------------------------------------------------------------------------------------------
# item 2: data on a SYN


def tfo_acked(later: bytes = b"") -> Tuple[Built, bytes]:
    """The SYN carries a request and the SYN-ACK acknowledges it (ISN+1+len): the host has those bytes. A
    sender then writing other bytes at the same sequence numbers (`later`) cannot replace them."""
    c = Conv()
    syn_data = b"GET /tfo HTTP/1.1\r\n\r\n"
    c.tcp(True, "S", payload=syn_data)
    c.tcp(False, "SA")  # ack = ISN + 1 + len(syn_data)
    c.tcp(True, "A")
    if later:
        c.tcp(True, "PA", seq=c.isn[True] + 1, payload=later)
    rest = payload("c", 300)
    c.send(True, rest)
    c.send(False, b"HTTP/1.1 200 OK\r\n\r\n")
    c.close()
    return c.built(), syn_data + rest


@pytest.mark.parametrize("policy", POLICIES)
def test_syn_data_acknowledged_is_delivered(tmp_path, policy):
    built, expected = tfo_acked(later=b"X" * 21)  # same length as the SYN's data, other bytes
    r = run(tmp_path, built, policy)
    assert r.c2s == expected
    assert r.s2c == b"HTTP/1.1 200 OK\r\n\r\n"
    assert r.counters["syn_data_accepted"] == 1
    assert r.counters["syn_data_discarded"] == 0
    assert r.errors_of(ErrorKind.SYN_DATA_DISCARDED) == []


def syn_data_not_acked(decoy: bytes, real: bytes, partial: int = 0) -> Built:
    """The SYN carries `decoy`; the SYN-ACK acknowledges the SYN and `partial` bytes of it (0: only the SYN,
    as a host without Fast Open does). The client then sends `real` from the first byte not acknowledged."""
    c = Conv()
    isn = c.isn[True]
    c.tcp(True, "S", payload=decoy)
    c.tcp(False, "SA", ack=isn + 1 + partial)
    c.nxt[True] = (isn + 1 + partial) % (1 << 32)
    c.tcp(True, "A")
    c.send(True, real)
    c.send(False, b"HTTP/1.1 403 Forbidden\r\n\r\n")
    c.close()
    return c.built()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("real_len", [8, 24, 60])  # shorter than, as long as, longer than the SYN's data
def test_syn_data_not_acknowledged_later_bytes_delivered(tmp_path, policy, real_len):
    decoy = b"GET /index.html HTTP/1.0"  # 24 bytes
    real = payload("GET /etc/passwd ", real_len)
    r = run(tmp_path, syn_data_not_acked(decoy, real), policy)
    assert r.c2s == real
    assert b"index.html" not in r.c2s
    assert r.counters["syn_data_discarded"] == 1
    assert r.counters["syn_data_discarded_bytes"] == len(decoy)
    assert r.counters["syn_data_accepted"] == 0
    assert r.errors_of(ErrorKind.SYN_DATA_DISCARDED) == [(Side.SERVER, ErrorKind.SYN_DATA_DISCARDED, 0, len(decoy))]
    assert ErrorKind.SYN_DATA_DISCARDED.event_name == "stream.syn_data_discarded"


@pytest.mark.parametrize("policy", POLICIES)
def test_syn_data_partly_acknowledged(tmp_path, policy):
    """The SYN-ACK acknowledges 10 of the SYN's 24 bytes: the host has those 10, and the rest is what the
    client sends from there."""
    decoy = b"0123456789abcdefghijklmn"
    real = b"ABCDEFGHIJKLMN and more"
    r = run(tmp_path, syn_data_not_acked(decoy, real, partial=10), policy)
    assert r.c2s == decoy[:10] + real
    assert r.counters["syn_data_accepted"] == 1
    assert r.counters["syn_data_discarded_bytes"] == 14
    assert r.errors_of(ErrorKind.SYN_DATA_DISCARDED) == [(Side.SERVER, ErrorKind.SYN_DATA_DISCARDED, 10, 14)]


def one_sided(resend: bool) -> Tuple[Built, bytes]:
    """Only the client's packets were captured. resend: it sends from ISN+1 again (the server did not take
    the SYN's data); else it goes on past it (it did)."""
    c = Conv()
    isn = c.isn[True]
    syn_data = b"SYNDATA-SYNDATA-"
    c.tcp(True, "S", payload=syn_data)
    c.nxt[False] += 1  # the server's SYN (not captured)
    if resend:
        c.nxt[True] = isn + 1
    c.tcp(True, "A")
    body = payload("one-sided", 200)
    for i in range(0, len(body), 100):
        c.tcp(True, "PA", payload=body[i:i + 100])
    c.tcp(True, "FA")
    built = Built([r for r in c.records])
    return built, (body if resend else syn_data + body)


@pytest.mark.parametrize("resend", [True, False])
def test_syn_data_one_sided_capture(tmp_path, resend):
    built, expected = one_sided(resend)
    r = run(tmp_path, built)
    assert r.c2s == expected
    assert r.counters["syn_data_discarded"] == (1 if resend else 0)
    assert r.counters["syn_data_accepted"] == (0 if resend else 1)


def test_syn_data_nothing_decides_is_kept(tmp_path):
    """Only a SYN with data, then nothing: the end of the capture keeps it (the host may have it)."""
    c = Conv()
    c.tcp(True, "S", payload=b"lonely syn data")
    r = run(tmp_path, c.built())
    assert r.c2s == b"lonely syn data"
    assert r.counters["syn_data_accepted"] == 1


def test_syn_data_refused_by_rst_is_dropped(tmp_path):
    c = Conv()
    c.tcp(True, "S", payload=b"refused")
    c.tcp(True, "R", seq=c.isn[True] + 1)
    r = run(tmp_path, c.built())
    assert r.c2s == b""
    assert r.counters["syn_data_discarded"] == 1


def test_syn_data_retransmitted_syn_after_discard(tmp_path):
    """A retransmitted SYN with data after the SYN-ACK acknowledged only the SYN: dropped again."""
    c = Conv()
    isn = c.isn[True]
    c.tcp(True, "S", payload=b"decoy-1")
    c.tcp(False, "SA", ack=isn + 1)
    c.tcp(True, "S", seq=isn, payload=b"decoy-2", advance=False)
    c.nxt[True] = isn + 1
    c.tcp(True, "A")
    c.send(True, b"the real request")
    c.close()
    r = run(tmp_path, c.built())
    assert r.c2s == b"the real request"
    assert r.counters["syn_data_discarded"] == 2
    assert r.counters["syn_data_discarded_bytes"] == 14


# ---------------------------------------------------------------------------------------------------------
# item 3: after the FIN


def after_fin() -> Tuple[Built, bytes, int, int]:
    """The client sends a request and its FIN, then: a retransmitted FIN (fine), data after the FIN, data at
    the FIN's own sequence number, and a retransmission of the request straddling the FIN. Returns the
    capture, the stream the server gets, the anomalies expected and their bytes."""
    c = Conv()
    c.handshake()
    req = payload("req", 120)
    c.tcp(True, "PA", payload=req)
    fin_seq = c.nxt[True]
    c.tcp(True, "FA")
    c.tcp(False, "A")
    c.tcp(True, "FA", seq=fin_seq)  # retransmitted FIN, same sequence number
    c.tcp(True, "PA", seq=fin_seq + 1, payload=b"AFTER THE FIN")  # 13 bytes
    c.tcp(True, "PA", seq=fin_seq, payload=b"AT THE FIN")  # 10 bytes
    c.tcp(True, "PA", seq=c.off_seq(True, 100), payload=req[100:] + b"STRADDLING")  # 10 past it
    c.send(False, b"HTTP/1.1 200 OK\r\n\r\n", ack_each=False)
    c.tcp(False, "FA")
    c.tcp(True, "A")
    return c.built(), req, 3, 13 + 10 + 10


@pytest.mark.parametrize("policy", POLICIES)
def test_data_after_fin_not_delivered(tmp_path, policy):
    built, expected, n, nbytes = after_fin()
    r = run(tmp_path, built, policy)
    assert r.c2s == expected
    assert r.s2c == b"HTTP/1.1 200 OK\r\n\r\n"
    assert r.counters["data_after_fin"] == n
    assert r.counters["data_after_fin_bytes"] == nbytes
    errs = r.errors_of(ErrorKind.DATA_AFTER_FIN)
    assert [(e[0], e[2], e[3]) for e in errs] == [(Side.SERVER, 121, 13), (Side.SERVER, 120, 10),
                                                   (Side.SERVER, 120, 10)]
    assert ErrorKind.DATA_AFTER_FIN.event_name == "stream.data_after_fin"


# which copy of overlapping held bytes the host keeps, when the new segment starts before the old one and
# (cut at the FIN) ends where it does: every policy but first and vista takes the new one
NEW_WINS = {"first": False, "vista": False, "last": True, "bsd": True, "linux": True, "old-linux": True,
            "windows": True, "solaris": True}


@pytest.mark.parametrize("policy", POLICIES)
def test_fin_cuts_held_bytes_when_taken(tmp_path, policy):
    """The first 5 bytes are late. Held out of order: [10, 20) ("old"), then [25, 35) past the FIN to come;
    the FIN at 20 arrives out of order too (not taken yet: nothing is cut); a retransmission [5, 20) with
    other bytes overlaps [10, 20) (the policy's call); the 5 late bytes come last, the stream reaches the
    FIN, the receiver takes it and drops what it holds past it."""
    c = Conv()
    c.handshake()
    old = b"O" * 10
    new = b"n" * 15
    c.tcp(True, "PA", seq=c.off_seq(True, 10), payload=old, advance=False)
    c.tcp(True, "PA", seq=c.off_seq(True, 25), payload=b"P" * 10, advance=False)
    c.tcp(True, "FA", seq=c.off_seq(True, 20), advance=False)
    c.tcp(True, "PA", seq=c.off_seq(True, 5), payload=new, advance=False)
    c.tcp(True, "PA", seq=c.off_seq(True, 0), payload=b"HEAD!", advance=False)
    c.nxt[True] = c.off_seq(True, 21)
    c.tcp(False, "FA")
    c.tcp(True, "A")
    r = run(tmp_path, c.built(), policy)
    middle = new[5:15] if NEW_WINS[policy] else old
    assert r.c2s == b"HEAD!" + new[:5] + middle
    assert r.counters["data_after_fin"] == 1  # the held [25, 35), dropped when the FIN was taken
    assert r.counters["data_after_fin_bytes"] == 10
    assert b"P" not in r.c2s
    assert r.counters["fin_superseded"] == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_fin_covered_by_data_before_it_is_taken_is_no_fin(tmp_path, policy):
    """A FIN 10 bytes past the next byte (out of order, so not taken), then data covering its sequence
    number: the receiver's stack drops such a FIN (Linux: the data replaces or covers it in the
    out-of-order queue; BSD's reassembly removes a covered segment), so the bytes past it are the stream
    and the connection ends with the real FIN."""
    c = Conv()
    c.handshake()
    c.send(True, b"A" * 10)
    c.tcp(True, "FA", seq=c.nxt[True] + 10, advance=False)
    c.tcp(False, "A")
    rest = payload("B", 3000)
    c.send(True, rest)
    c.send(False, b"HTTP/1.1 200 OK\r\n\r\n")
    c.close()
    r = run(tmp_path, c.built(), policy)
    assert r.c2s == b"A" * 10 + rest
    assert r.counters["data_after_fin"] == 0
    assert r.counters["fin_superseded"] == 1
    assert r.errors_of(ErrorKind.FIN_SUPERSEDED) == [(Side.SERVER, ErrorKind.FIN_SUPERSEDED, 0, 0)]
    assert ErrorKind.FIN_SUPERSEDED.event_name == "stream.fin_superseded"


def test_fin_retransmission_same_seq_is_fine(tmp_path):
    c = Conv()
    c.handshake()
    c.send(True, b"request")
    fin_seq = c.nxt[True]
    c.tcp(True, "FA")
    c.tcp(True, "FA", seq=fin_seq)
    c.tcp(True, "PA", seq=fin_seq - 7, payload=b"request")  # the data again, ending at the FIN
    c.tcp(False, "FA")
    c.tcp(True, "A")
    r = run(tmp_path, c.built())
    assert r.c2s == b"request"
    assert r.counters["data_after_fin"] == 0
    assert r.errors_of(ErrorKind.DATA_AFTER_FIN) == []


def test_fin_behind_the_stream_cuts_nothing(tmp_path):
    """A FIN whose sequence number is behind bytes already received (an old duplicate, or an insertion the
    host ignores as such) must not make the engine drop what follows."""
    c = Conv()
    c.handshake()
    c.send(True, b"0123456789")
    c.tcp(True, "FA", seq=c.off_seq(True, 2), advance=False)
    c.send(True, b"more bytes")
    r = run(tmp_path, c.built())
    assert r.c2s == b"0123456789more bytes"
    assert r.counters["data_after_fin"] == 0


def test_many_pending_syn_data(tmp_path):
    """300 SYNs with data waiting at once (the stash grows), then each decided by its SYN-ACK: the odd ones
    acknowledged, the even ones not; nothing is left held."""
    recs = []
    expected = {}
    convs = []
    t = 1000.0
    for i in range(300):
        c = Conv(cport=20000 + i, t0=t)
        c.tcp(True, "S", payload=f"syn-{i:04d}".encode())
        convs.append(c)
        t += 0.0001
    for i, c in enumerate(convs):
        isn = c.isn[True]
        c.t = t
        if i % 2:
            c.tcp(False, "SA")
            expected[c.cport] = f"syn-{i:04d}".encode() + b"+rest"
        else:
            c.tcp(False, "SA", ack=isn + 1)
            c.nxt[True] = isn + 1
            expected[c.cport] = b"+rest"
        c.tcp(True, "PA", payload=b"+rest")
        c.close()
        t = c.t
    for c in convs:
        recs.extend(c.records)
    recs.sort(key=lambda r: r[0])
    mon = Monitor()
    got: Dict[int, bytes] = defaultdict(bytes)

    def on_data(conn, ev):
        got[int(str(conn.client).rsplit(":", 1)[1])] += bytes(ev.data)

    mon.on(Event.CONN_NEW_DATA, on_data, side=Side.SERVER)
    counters = mon.run_pcap(Built(recs).write(tmp_path / "many.pcap"))
    assert dict(got) == expected
    assert counters["syn_data_accepted"] == 150
    assert counters["syn_data_discarded"] == 150
    assert mon.stats()["memory_held"] == 0
