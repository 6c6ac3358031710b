"""Engine limits seen through the API: per-direction buffer limit, held-segment limit, global reassembly
memcap, flow table capacity (eviction), defragmentation memcap and timeout. Each limit hit is counted in
stats() and raises an ERROR event; every packet stays accounted for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Tuple

import pytest

from mos import EndReason, ErrorKind, Event, Monitor, MosError, Side
from mos.stats import accounted
from tests.pcaps import Built, payload
from tests.test_api import ACK, FIN, PSH, FastConn, ipv4_frame

CIP, SIP = "10.40.0.1", "10.40.0.2"


def run(tmp_path: Path, mon: Monitor, records: list, name: str = "t") -> dict:
    return mon.run_pcap(Built(records).write(tmp_path / f"{name}.pcap"))


def ooo_conn(recs: list, t: float, cport: int, offsets: List[int], seg: int, data: bytes,
             cip: str = CIP) -> Tuple[FastConn, float]:
    """A handshake, then client segments of `seg` bytes at the given stream offsets (in that order)."""
    c = FastConn(recs, cip, SIP, cport, 80)
    c.handshake(t)
    base = c.nxt[True]
    t += 0.001
    for off in offsets:
        c.nxt[True] = base + off
        c.seg(t, True, PSH | ACK, data[off:off + seg])
        t += 0.001
    c.nxt[True] = base + len(data)
    return c, t


def error_log(mon: Monitor) -> list:
    errs: list = []
    mon.on(Event.ERROR, lambda c, e: errs.append((c.id, e.side, e.reason, e.offset, e.length)))
    return errs


# ---------------------------------------------------------------------------------------------------------
# reassembly limits


def test_dir_buffer_limit(tmp_path):
    """Limit 4000, 500-byte segments at offsets 500..10000 ahead of a hole at 0: the first 8 are held
    (4000 bytes), the other 12 are refused (ERROR BUFFER_LIMIT each); then the hole fills and the
    receiver acks everything: [4500, 10500) is a gap."""
    seg, n = 500, 21
    data = payload("B", seg * n)
    recs: list = []
    c, t = ooo_conn(recs, 1000.0, 43000, [i * seg for i in range(1, n)] + [0], seg, data)
    c.seg(t, False, ACK)
    c.close(t + 0.001)
    mon = Monitor(dir_buffer_limit=4000)
    errs = error_log(mon)
    got: list = []
    gaps: list = []
    mon.on(Event.CONN_NEW_DATA, lambda conn, e: got.append((e.offset, e.data)), side=Side.SERVER)
    mon.on(Event.DATA_GAP, lambda conn, e: gaps.append((e.offset, e.length)), side=Side.SERVER)
    st = run(tmp_path, mon, recs)
    held = 4000 // seg
    refused = list(range(1 + held, n))
    assert errs == [(1, Side.SERVER, ErrorKind.BUFFER_LIMIT, i * seg, seg) for i in refused]
    assert st["reasm_limit_dir_buf"] == len(refused) and st["reasm_limit_memcap"] == 0
    assert st["reasm_bytes_dropped_limit"] == len(refused) * seg == st["reasm_bytes_gap"]
    assert gaps == [((1 + held) * seg, len(refused) * seg)]
    assert b"".join(d for _, d in got) == data[:(1 + held) * seg]
    assert st["memory_held"] == 0 and accounted(st) == st["packets"]


def test_max_segments(tmp_path):
    """max_segments=4: ten separate 100-byte segments (100-byte holes between them): 4 held, 6 refused."""
    seg = 100
    data = payload("S", 2200)
    offsets = [200 * k for k in range(1, 11)]
    recs: list = []
    ooo_conn(recs, 1000.0, 43010, offsets, seg, data)
    mon = Monitor(max_segments=4)
    errs = error_log(mon)
    held: list = []
    mon.on(Event.PKT_IN, lambda conn, e: held.append(len(conn.held_segments(Side.SERVER))), side=Side.SERVER)
    st = run(tmp_path, mon, recs)
    assert errs == [(1, Side.SERVER, ErrorKind.SEGMENT_LIMIT, off, seg) for off in offsets[4:]]
    assert st["reasm_limit_segments"] == 6 and st["reasm_bytes_dropped_limit"] == 600
    assert st["reasm_limit_dir_buf"] == 0 and st["reasm_limit_memcap"] == 0
    assert max(held) <= 4
    assert st["memory_held"] == 0 and accounted(st) == st["packets"]


def test_memcap_across_connections(tmp_path):
    """A global cap of 7000 bytes: three connections each hold 3000 out-of-order bytes; the first fits,
    the third cannot hold everything. Refused bytes raise ERROR MEMCAP on their own connection."""
    seg = 500
    data = payload("M", 3500)
    recs: list = []
    t = 1000.0
    for k in range(3):
        _, t = ooo_conn(recs, t, 43020 + k, [i * seg for i in range(1, 7)], seg, data, cip=f"10.40.1.{k + 1}")
    # no peek window: only out-of-order bytes are held; order "packet": which connection meets the global cap
    # first follows packet order
    mon = Monitor(memcap=7000, peek_window=0, order="packet")
    errs = error_log(mon)
    mem: list = []
    mon.on(Event.PKT_IN, lambda conn, e: mem.append(mon.stats()["memory_held"]))
    ends: list = []
    mon.on(Event.CONN_END, lambda conn, e: ends.append((conn.id, e.reason)))
    st = run(tmp_path, mon, recs)
    assert errs and all(e[2] == ErrorKind.MEMCAP and e[1] == Side.SERVER for e in errs)
    per_conn = Counter(e[0] for e in errs)
    assert per_conn[1] == 0 and per_conn[3] >= 1
    assert st["reasm_limit_memcap"] == len(errs) and st["reasm_limit_dir_buf"] == 0
    assert st["reasm_bytes_dropped_limit"] == sum(e[4] for e in errs)
    assert max(mem) <= 7000
    assert sorted(ends) == [(1, EndReason.EOF), (2, EndReason.EOF), (3, EndReason.EOF)]
    assert st["memory_held"] == 0 and accounted(st) == st["packets"]


# ---------------------------------------------------------------------------------------------------------
# flow table


def established(recs: list, n: int, t: float = 1000.0, dt: float = 1e-4) -> List[FastConn]:
    conns = []
    for i in range(n):
        c = FastConn(recs, f"10.41.{i // 200}.{i % 200 + 1}", SIP, 20000 + i, 80, cisn=i * 1000)
        c.handshake(t)
        c.seg(t + 3e-6, True, PSH | ACK, b"x")
        conns.append(c)
        t += dt
    return conns


def test_flow_table_eviction_under_pressure(tmp_path):
    """max_conns=64 and 1000 established connections, one after the other: each new one evicts the least
    recently used; the last 64 end at EOF."""
    n, cap = 1000, 64
    recs: list = []
    established(recs, n)
    ends: list = []
    mon = Monitor(max_conns=cap)
    mon.on(Event.CONN_END, lambda c, e: ends.append((c.id, c.info()["client_port"], e.reason)))
    st = run(tmp_path, mon, recs)
    assert ends == [(i + 1, 20000 + i, EndReason.EVICTION) for i in range(n - cap)] + [
        (i + 1, 20000 + i, EndReason.EOF) for i in range(n - cap, n)]
    assert st["conns_evicted"] == n - cap and st["conns_created"] == n and st["conns_live"] == 0
    assert st["orphan_table_full"] == 0 and st["conn_packets"] == len(recs) == st["packets"] == accounted(st)


def test_flow_table_closed_connections_reused_without_eviction(tmp_path):
    """max_conns=8 and 200 connections opened and closed one after the other: the closed ones' slots are
    taken back silently (no EVICTION), every connection ends once with FIN."""
    n = 200
    recs: list = []
    t = 1000.0
    for i in range(n):
        c = FastConn(recs, CIP, SIP, 30000 + i, 80)
        c.handshake(t)
        c.seg(t + 3e-6, True, PSH | ACK, b"req")
        c.close(t + 4e-6)
        t += 1e-4
    ends: list = []
    mon = Monitor(max_conns=8)
    mon.on(Event.CONN_END, lambda c, e: ends.append((c.id, e.reason)))
    st = run(tmp_path, mon, recs)
    assert ends == [(i + 1, EndReason.FIN) for i in range(n)]
    assert st["conns_evicted"] == 0 and st["conns_created"] == n and accounted(st) == st["packets"]


def test_flow_table_lingering_closed_slot_before_live(tmp_path):
    """max_conns=3: A closed (lingering), B and C live; D's SYN takes A's slot, B and C are not evicted."""
    recs: list = []
    a = FastConn(recs, "10.42.0.1", SIP, 31000, 80)
    a.handshake(1000.0)
    a.close(1000.01)
    for k, ip in enumerate(("10.42.0.2", "10.42.0.3", "10.42.0.4")):
        FastConn(recs, ip, SIP, 31001 + k, 80).handshake(1000.1 + k * 0.1)
    ends: list = []
    mon = Monitor(max_conns=3)
    mon.on(Event.CONN_END, lambda c, e: ends.append((c.id, e.reason)))
    st = run(tmp_path, mon, recs)
    assert ends[0] == (1, EndReason.FIN)
    assert sorted(ends[1:]) == [(2, EndReason.EOF), (3, EndReason.EOF), (4, EndReason.EOF)]
    assert st["conns_evicted"] == 0


# ---------------------------------------------------------------------------------------------------------
# defragmentation limits


def first_fragment(ident: int, size: int = 1480) -> bytes:
    """Offset 0, MF set: a datagram that never completes (UDP header + payload)."""
    return ipv4_frame("10.43.0.1", "10.43.0.2", 17, b"\x00\x35\x00\x35" + b"\x00" * 4 + b"f" * (size - 8),
                      ident=ident, frag=0x2000)


def complete_fragments(ident: int) -> List[bytes]:
    body = b"\x00\x35\x00\x35\x00\x00\x00\x00" + b"g" * 1992  # 2000 bytes: 1000 + 1000
    return [ipv4_frame("10.43.0.1", "10.43.0.2", 17, body[:1000], ident=ident, frag=0x2000),
            ipv4_frame("10.43.0.1", "10.43.0.2", 17, body[1000:], ident=ident, frag=1000 // 8)]


def test_frag_memcap_evicts_stale_datagrams(tmp_path):
    memcap = 20_000
    frames = [first_fragment(i + 1) for i in range(40)] + complete_fragments(999)
    recs = [(1000.0 + i * 1e-4, f, len(f)) for i, f in enumerate(frames)]
    mon = Monitor(frag_memcap=memcap, protocols=("tcp",))  # the datagram as an orphan: its proto is seen
    orphans: list = []
    mon.on(Event.ORPHAN, lambda c, e: orphans.append((e.reason, e.packet.proto)))
    st = run(tmp_path, mon, recs)
    assert st["packets"] == len(frames) == accounted(st)
    assert st["frag_held"] + st["frag_error"] == len(frames)
    assert st["frag_fragments"] == len(frames)
    assert st["frag_memcap"] >= 40 - memcap // 1480 and st["frag_discarded"] >= st["frag_memcap"] - st["frag_error"]
    assert st["datagrams_reassembled"] == 1 and orphans == [(1, 17)]  # the complete datagram still completes
    assert st["memory_held"] <= memcap


def test_frag_timeout(tmp_path):
    frag_a, frag_b = complete_fragments(77)
    recs: list = [(1000.0, frag_a, len(frag_a))]
    c = FastConn(recs, CIP, SIP, 43100, 80)
    c.handshake(1005.0)  # packet time moves on: the held fragment is older than the 2 s timeout
    recs.append((1005.5, frag_b, len(frag_b)))
    mon = Monitor(frag_timeout=2)
    st = run(tmp_path, mon, recs)
    assert st["frag_timeouts"] == 1 and st["datagrams_reassembled"] == 0
    assert st["packets"] == len(recs) == accounted(st)
    assert st["frag_held"] + st["frag_error"] == 2


# ---------------------------------------------------------------------------------------------------------
# options


@pytest.mark.parametrize("kw", [{"max_conns": 0}, {"max_segments": 0}, {"dir_buffer_limit": -1},
                                {"timeout_established": 0}, {"frag_timeout": -1}, {"policy": "nope"}])
def test_bad_limits_rejected(kw):
    with pytest.raises(MosError):
        Monitor(**kw)


def test_limits_do_not_affect_in_order_traffic(tmp_path):
    """Tiny limits, in-order data: nothing needs holding, nothing is refused."""
    recs: list = []
    c = FastConn(recs, CIP, SIP, 43200, 80)
    c.handshake(1000.0)
    data = payload("I", 20_000)
    t = 1000.01
    for i in range(0, len(data), 1000):
        c.seg(t, True, PSH | ACK, data[i:i + 1000])
        c.seg(t + 1e-5, False, ACK)
        t += 0.001
    c.seg(t, True, FIN | ACK)
    c.seg(t + 1e-5, False, FIN | ACK)
    c.seg(t + 2e-5, True, ACK)
    got: list = []
    mon = Monitor(dir_buffer_limit=1000, max_segments=1, memcap=4096)
    errs = error_log(mon)
    mon.on(Event.CONN_NEW_DATA, lambda conn, e: got.append(e.data), side=Side.SERVER)
    st = run(tmp_path, mon, recs)
    assert b"".join(got) == data and errs == []
    assert st["reasm_limit_dir_buf"] == st["reasm_limit_segments"] == st["reasm_limit_memcap"] == 0
