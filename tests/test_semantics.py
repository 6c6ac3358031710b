"""mOS's semantics whatever the batch boundaries (issue 10, items 1-3).

* peek/ppeek: each receive stream keeps at least its last ``peek_window`` bytes, so ``ppeek`` of a range in
  ``[stream_offset - peek_window, stream_offset)`` (at the event) returns it and ``peek`` returns the bytes
  not peeked yet, in whatever batches the packets came: a TLS ClientHello split in two segments with 400
  other packets between them is read whole at its second segment (batch sizes 1, 7, 256, with and without
  a periodic timer cutting batches, in both orders).
* ``order="connection"`` (the default): what a handler does takes effect from that connection's next
  packet, even inside a batch (``stop_monitoring``, ``off``, per-flow ``on`` in CONN_START, ``set_policy``);
  ``order="batch"`` keeps the old behaviour (from the next batch), ``order="packet"`` (alias ``sync=True``)
  hands events over after every packet. Each connection's events come in its packets' order.
* Per-flow subscriptions: ``conn.on`` in CONN_START over many concurrent connections gets exactly the
  events a global subscription gets (the bench/subscriptions.py scenario at a size CI affords).

Every expected value is derived from the bytes the test wrote into the capture.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import dpkt
import pytest

from mos import Event, Hook, Monitor, MosError, PcapSource, Side
from tests.pcaps import Built, Conv, payload
from tests.tls import client_hello, sni_of

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 7, 256)
ORDERS = ("connection", "batch")
STEP = 0.0001
"""Seconds between two packets of the captures here (a 1 ms periodic timer cuts a batch every 10)."""
TIMER = 0.001


def restamp(records: List[Tuple[float, bytes, int]], t0: float = 1000.0) -> List[Tuple[float, bytes, int]]:
    """The records in the given order, STEP seconds apart (the order, not the builders' clocks, decides)."""
    return [(t0 + i * STEP, frame, wire) for i, (_, frame, wire) in enumerate(records)]


def interleave(*convs: Conv) -> List[Tuple[float, bytes, int]]:
    """The conversations' packets one of each in turn (round robin), so they are all in progress at once."""
    out = []
    queues = [list(c.records) for c in convs]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def client_port(conn: Any) -> int:
    """The client's port of a connection (``ip:port``)."""
    return int(conn.client.rsplit(":", 1)[1])


def source(path: Path, batch: int) -> PcapSource:
    return PcapSource(str(path), batch=batch)


# ---------------------------------------------------------------------------------------------------------
# 1. The straddling ClientHello

HELLO = client_hello("example.test", 1923)
FIRST = 1448
BETWEEN = 400
TARGET_PORT = 50000
OTHERS = 35


def test_client_hello_is_real_looking() -> None:
    """The ClientHello parses as one (dpkt's TLS parser) and spans two segments."""
    records, used = dpkt.ssl.tls_multi_factory(HELLO)
    assert used == len(HELLO) == 1923 and len(records) == 1
    hello = dpkt.ssl.TLSHandshake(records[0].data).data
    assert isinstance(hello, dpkt.ssl.TLSClientHello)
    assert (0, b"\x00\x0f\x00\x00\x0cexample.test") in hello.extensions
    assert sni_of(HELLO) == "example.test" and sni_of(HELLO[:FIRST]) is None


def straddling() -> Tuple[Built, Dict[int, str]]:
    """One connection whose ClientHello is split 1448 + 475, the server acknowledging the first part, and
    exactly BETWEEN packets of OTHERS other TLS connections (their ClientHello in one segment) between
    the two parts; the rest of the others after. Returns the capture and each client port's SNI."""
    target = Conv(cip="10.20.0.1", sip="10.20.0.2", cport=TARGET_PORT, sport=443)
    target.handshake()
    target.tcp(True, "PA", payload=HELLO[:FIRST])
    target.tcp(False, "A")
    before = list(target.records)
    target.records.clear()
    target.tcp(True, "PA", payload=HELLO[FIRST:])
    target.tcp(False, "A")
    target.send(False, payload("H", 3000), mss=1448)  # ServerHello and the rest, acknowledged
    target.close()
    names = {TARGET_PORT: "example.test"}
    others = []
    for i in range(OTHERS):
        port = TARGET_PORT + 1 + i
        names[port] = f"other-{i}.test"
        c = Conv(cip="10.20.0.1", sip="10.20.0.2", cport=port, sport=443, cisn=7000 + 97 * i)
        c.handshake()
        c.send(True, client_hello(names[port], 517, post_quantum=False), mss=1448)
        c.send(False, payload(f"h{i}", 1800), mss=1448)
        c.close()
        others.append(c)
    mixed = interleave(*others)
    assert len(mixed) > BETWEEN
    records = before + mixed[:BETWEEN] + list(target.records) + mixed[BETWEEN:]
    return Built(restamp(records)), names


@dataclass
class SniRun:
    """What an SNI logger saw: the target connection's events (offset, length, what it read) and the SNI
    it found on each connection (by client port)."""

    target: List[Tuple[int, int, bytes]] = field(default_factory=list)
    names: Dict[int, str] = field(default_factory=dict)
    peek_lost: Optional[int] = None
    gaps: int = 0


def sni_logger(path: Path, batch: int, timer: bool, order: str, use_peek: bool) -> SniRun:
    """Run an SNI logger over ``path``. With ``use_peek`` it reads with ``peek()``, and on the target
    connection only at its second event (never before it); else with ``ppeek(SERVER, 0, ...)``."""
    mon = Monitor(order=order)
    out = SniRun()
    got: Dict[Any, bytes] = defaultdict(bytes)
    ticks = [0]

    def data(conn: Any, ev: Any) -> None:
        port = client_port(conn)
        end = ev.offset + ev.length
        assert conn.stream_offset(Side.SERVER) == end
        if port == TARGET_PORT:
            if use_peek:
                read = conn.peek(Side.SERVER) if ev.offset > 0 else b""
                out.peek_lost = conn.peek_lost(Side.SERVER)
            else:
                read = conn.ppeek(Side.SERVER, 0, len(HELLO))
            out.target.append((ev.offset, ev.length, read))
            got[conn] = (got[conn] + read) if use_peek else read
        else:
            got[conn] = (got[conn] + conn.peek(Side.SERVER)) if use_peek else conn.ppeek(Side.SERVER, 0, end)
        name = sni_of(got[conn])
        if name is not None:
            out.names.setdefault(port, name)

    def gap(conn: Any, ev: Any) -> None:
        out.gaps += 1

    mon.on(Event.CONN_NEW_DATA, data, side=Side.SERVER)
    mon.on(Event.DATA_GAP, gap)
    if timer:
        mon.add_timer(TIMER, lambda m: ticks.__setitem__(0, ticks[0] + 1), periodic=True)
    mon.run(source(path, batch))
    assert mon.handler_errors == 0
    if timer:
        assert ticks[0] > BETWEEN * STEP / TIMER / 2  # the timer did cut the batches
    return out


@pytest.fixture(scope="module")
def straddle_pcap(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[int, str]]:
    built, names = straddling()
    return built.write(tmp_path_factory.mktemp("straddle") / "straddle.pcap"), names


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("timer", [False, True], ids=["no-timer", "timer"])
@pytest.mark.parametrize("batch", BATCHES)
def test_straddling_client_hello_ppeek(straddle_pcap: Tuple[Path, Dict[int, str]], batch: int, timer: bool,
                                       order: str) -> None:
    """ppeek(SERVER, 0, 1923) returns the first 1448 bytes at the first event and all 1923 at the second,
    400 packets later; the SNI of every connection is found, and no gap is raised."""
    path, names = straddle_pcap
    r = sni_logger(path, batch, timer, order, use_peek=False)
    assert [(off, ln) for off, ln, _ in r.target] == [(0, FIRST), (FIRST, len(HELLO) - FIRST)]
    assert r.target[0][2] == HELLO[:FIRST]
    assert len(r.target[1][2]) == len(HELLO) and r.target[1][2] == HELLO
    assert r.names == names
    assert r.gaps == 0


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("timer", [False, True], ids=["no-timer", "timer"])
@pytest.mark.parametrize("batch", BATCHES)
def test_straddling_client_hello_peek(straddle_pcap: Tuple[Path, Dict[int, str]], batch: int, timer: bool,
                                      order: str) -> None:
    """peek(SERVER), first called at the second event, returns all 1923 bytes (none peeked before, all
    inside the window), and nothing is counted lost."""
    path, names = straddle_pcap
    r = sni_logger(path, batch, timer, order, use_peek=True)
    assert [(off, ln) for off, ln, _ in r.target] == [(0, FIRST), (FIRST, len(HELLO) - FIRST)]
    assert r.target[1][2] == HELLO
    assert r.peek_lost == 0
    assert r.names == names
    assert r.gaps == 0


# ---------------------------------------------------------------------------------------------------------
# 2. An action takes effect from the connection's next packet

SEGMENTS = 25
SEG = 100


def many_segments(cport: int, tag: str) -> Tuple[Conv, bytes]:
    """A connection whose client sends SEGMENTS segments of SEG bytes, each acknowledged, then closes."""
    c = Conv(cport=cport, cisn=3000 + cport)
    c.handshake()
    data = payload(tag, SEGMENTS * SEG)
    c.send(True, data, mss=SEG)
    c.close()
    return c, data


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, bytes, bytes]:
    """Two such connections, interleaved packet by packet, all in one batch of 256 (port 41000 is "A",
    41001 is "B"); returns the capture and A's and B's bytes."""
    a, da = many_segments(41000, "A")
    b, db = many_segments(41001, "B")
    records = restamp(interleave(a, b))
    assert len(records) <= 256
    return Built(records).write(tmp_path_factory.mktemp("one-batch") / "one.pcap"), da, db


def data_events(path: Path, act: Any, order: Optional[str] = None, batch: int = 256, sync: bool = False,
                per_flow: bool = False) -> Dict[int, List[Tuple[int, bytes]]]:
    """Run CONN_NEW_DATA (server side) handlers that call ``act(mon, conn, ev, handler, n)`` (n: the
    connection's events so far, this one included); the events each client port got."""
    kw: Dict[str, Any] = {"sync": True} if sync else {}
    if order is not None:
        kw["order"] = order
    mon = Monitor(**kw)
    got: Dict[int, List[Tuple[int, bytes]]] = defaultdict(list)

    def data(conn: Any, ev: Any) -> None:
        port = client_port(conn)
        got[port].append((ev.offset, bytes(ev.data)))
        act(mon, conn, ev, data, len(got[port]))

    if per_flow:
        mon.on(Event.CONN_START, lambda conn, ev: conn.on(Event.CONN_NEW_DATA, data, side=Side.SERVER))
    else:
        mon.on(Event.CONN_NEW_DATA, data, side=Side.SERVER)
    mon.run(source(path, batch))
    assert mon.handler_errors == 0
    return dict(got)


def all_events(data: bytes) -> List[Tuple[int, bytes]]:
    return [(off, data[off:off + SEG]) for off in range(0, len(data), SEG)]


def stop_a(mon: Any, conn: Any, ev: Any, handler: Any, n: int) -> None:
    """Stop monitoring connection A at its first event."""
    if client_port(conn) == 41000 and n == 1:
        conn.stop_monitoring()


def test_stop_monitoring_from_next_packet(one_batch: Tuple[Path, bytes, bytes]) -> None:
    """Default order: a stop at A's first event means A's 24 other segments of the same batch raise
    nothing; B, interleaved with A in that batch, gets all its 25."""
    path, da, db = one_batch
    got = data_events(path, stop_a)
    assert got.get(41000) == all_events(da)[:1]
    assert got.get(41001) == all_events(db)


@pytest.mark.parametrize("kw", [{"order": "packet"}, {"sync": True}], ids=["packet", "sync-alias"])
def test_stop_monitoring_packet_order(one_batch: Tuple[Path, bytes, bytes], kw: Dict[str, Any]) -> None:
    """order="packet" (and its old name sync=True): the same as the default."""
    path, da, db = one_batch
    got = data_events(path, stop_a, order=kw.get("order"), sync=kw.get("sync", False))
    assert got.get(41000) == all_events(da)[:1]
    assert got.get(41001) == all_events(db)


def test_stop_monitoring_batch_order_keeps_queued(one_batch: Tuple[Path, bytes, bytes]) -> None:
    """order="batch" (the old behaviour): the stop takes effect from the next batch, so A's 25 events,
    all queued in the one batch, are delivered."""
    path, da, db = one_batch
    got = data_events(path, stop_a, order="batch")
    assert got.get(41000) == all_events(da)
    assert got.get(41001) == all_events(db)


def test_global_off_from_next_packet(one_batch: Tuple[Path, bytes, bytes]) -> None:
    """mon.off(CONN_NEW_DATA, h) in h's first call: exactly one call (A and B in the same batch)."""
    path, da, _ = one_batch
    calls = []

    def off_at_once(mon: Any, conn: Any, ev: Any, handler: Any, n: int) -> None:
        calls.append(conn.id)
        mon.off(Event.CONN_NEW_DATA, handler, side=Side.SERVER)

    got = data_events(path, off_at_once)
    assert len(calls) == 1
    assert got == {41000: all_events(da)[:1]}


def test_per_flow_off_from_next_packet(one_batch: Tuple[Path, bytes, bytes]) -> None:
    """conn.off of a per-flow handler at A's first event: A gets 1 event, B (its own subscription) 25."""
    path, da, db = one_batch

    def off_a(mon: Any, conn: Any, ev: Any, handler: Any, n: int) -> None:
        if client_port(conn) == 41000:
            conn.off(Event.CONN_NEW_DATA, handler, side=Side.SERVER)

    got = data_events(path, off_a, per_flow=True)
    assert got.get(41000) == all_events(da)[:1]
    assert got.get(41001) == all_events(db)


@pytest.mark.parametrize("batch", BATCHES)
def test_per_flow_on_in_conn_start_sees_first_data(one_batch: Tuple[Path, bytes, bytes], batch: int) -> None:
    """conn.on(CONN_NEW_DATA) in CONN_START gets every data event, the first one included, though the SYN
    and all the data are in the same batch (batch=256)."""
    path, da, db = one_batch
    got = data_events(path, lambda *a: None, batch=batch, per_flow=True)
    assert got.get(41000) == all_events(da)
    assert got.get(41001) == all_events(db)


def overlap_after_first() -> Tuple[Built, bytes, bytes]:
    """In one batch: [0, 100) in order, [200, 300) held out of order with X bytes, another copy of
    [200, 300) with Y bytes, then [100, 200): what [200, 300) ends as depends on the overlap policy
    in force when the copy came. Returns the capture and the stream under "first" and under "last"."""
    c = Conv(cport=41500)
    c.handshake()
    head, mid = payload("h", 100), payload("m", 100)
    c.tcp(True, "PA", payload=head)
    c.tcp(True, "PA", seq=c.off_seq(True, 200), payload=b"X" * 100)
    c.tcp(True, "PA", seq=c.off_seq(True, 200), payload=b"Y" * 100)
    c.tcp(True, "PA", seq=c.off_seq(True, 100), payload=mid)
    c.nxt[True] = c.off_seq(True, 300)
    c.tcp(False, "A")
    c.close()
    return Built(restamp(c.records)), head + mid + b"X" * 100, head + mid + b"Y" * 100


def stream_with(path: Path, policy: str, switch_to: Optional[str], order: Optional[str] = None) -> bytes:
    """The server's stream, with a handler switching the policy to ``switch_to`` at the first event."""
    mon = Monitor(policy=policy, **({"order": order} if order else {}))
    out = bytearray()

    def data(conn: Any, ev: Any) -> None:
        if not out and switch_to is not None:
            conn.set_policy(switch_to)
        out.extend(ev.data)

    mon.on(Event.CONN_NEW_DATA, data, side=Side.SERVER)
    mon.run(source(path, 256))
    assert mon.handler_errors == 0
    return bytes(out)


def test_set_policy_from_next_packet(tmp_path: Path) -> None:
    """set_policy("last") at the first event decides the overlap of packets later in the same batch
    (default order); with order="batch" the copy is judged by the old policy ("first")."""
    built, first, last = overlap_after_first()
    path = built.write(tmp_path / "overlap.pcap")
    assert stream_with(path, "first", None) == first  # the capture does what it says
    assert stream_with(path, "last", None) == last
    assert stream_with(path, "first", "last") == last
    assert stream_with(path, "first", "last", order="batch") == first


# ---------------------------------------------------------------------------------------------------------
# Each connection's events in its packets' order

EVENTS = (Event.CONN_START, Event.CONN_NEW_DATA, Event.TCP_STATE_CHANGE, Event.PKT_IN, Event.CONN_END)
Record = Tuple[Any, ...]


@pytest.fixture(scope="module")
def three_interleaved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three connections interleaved packet by packet, data both ways, in one batch of 256."""
    convs = []
    for i in range(3):
        c = Conv(cport=42000 + i, cisn=11 + 1000 * i)
        c.handshake()
        c.send(True, payload(f"q{i}", 700 + 300 * i), mss=200)
        c.send(False, payload(f"r{i}", 900), mss=300)
        c.close(first_client=i != 1)
        convs.append(c)
    records = restamp(interleave(*convs))
    assert len(records) <= 256
    return Built(records).write(tmp_path_factory.mktemp("three") / "three.pcap")


def per_connection(path: Path, batch: int, order: str, stop_b_at: int = 0) -> Dict[int, List[Record]]:
    """Every event of EVENTS (both sides, both hooks) per client port, as (event, side, hook, offset,
    length, data, client state, server state, the side's stream offset). ``stop_b_at``: connection B
    (port 42001) stops monitoring its server side at its n-th server-side data event. Connections are
    looked up by equality and hash (the same connection may come as different objects)."""
    mon = Monitor(order=order)
    seen: Dict[Any, List[Record]] = {}
    ids: Dict[Any, int] = {}
    ports: Dict[Any, int] = {}
    server_data: Dict[Any, int] = defaultdict(int)

    def record(conn: Any, ev: Any) -> None:
        if conn not in seen:
            seen[conn] = []
            ids[conn] = conn.id
            ports[conn] = client_port(conn)
        assert ids[conn] == conn.id and hash(conn) == hash(next(k for k in seen if k == conn))
        side = ev.side
        seen[conn].append((ev.event, side, ev.hook, ev.offset, ev.length, bytes(ev.data or b""),
                           conn.state(Side.CLIENT), conn.state(Side.SERVER), conn.stream_offset(side)))
        if ev.event == Event.CONN_NEW_DATA and side is Side.SERVER and client_port(conn) == 42001:
            server_data[conn] += 1
            if server_data[conn] == stop_b_at:
                conn.stop_monitoring(Side.SERVER)

    for e in EVENTS:
        for hook in (Hook.SND, Hook.RCV) if e in (Event.PKT_IN, Event.TCP_STATE_CHANGE) else (Hook.RCV,):
            mon.on(e, record, hook=hook)
    mon.run(source(path, batch))
    assert mon.handler_errors == 0
    assert sorted(ports.values()) == [42000, 42001, 42002], "one key per connection: equal and hash by id"
    return {ports[k]: recs for k, recs in seen.items()}


@pytest.mark.parametrize("batch,order", [(1, "connection"), (7, "connection"), (256, "connection"),
                                         (256, "batch"), (256, "packet")])
def test_each_connection_in_its_packet_order(three_interleaved: Path, batch: int, order: str) -> None:
    """With the three connections' packets interleaved in one batch, each connection's events come in
    the order (and with the states and offsets) they come with one packet at a time."""
    reference = per_connection(three_interleaved, 1, "packet")
    assert all(any(r[0] == Event.CONN_NEW_DATA for r in recs) for recs in reference.values())
    assert per_connection(three_interleaved, batch, order) == reference


@pytest.mark.parametrize("batch", BATCHES)
def test_action_in_interleaved_batch_as_packet_by_packet(three_interleaved: Path, batch: int) -> None:
    """A stop of B's server side at its 2nd data event, in a batch where A and C go on: every connection's
    events are those of one packet at a time (order="packet"), B's later server-side data never raised."""
    reference = per_connection(three_interleaved, 1, "packet", stop_b_at=2)
    b_data = [r for r in reference[42001] if r[0] == Event.CONN_NEW_DATA and r[1] is Side.SERVER]
    assert len(b_data) == 2
    assert per_connection(three_interleaved, batch, "connection", stop_b_at=2) == reference


def test_connections_equal_by_id(one_batch: Tuple[Path, bytes, bytes]) -> None:
    """The connection of CONN_END equals (and hashes as) the one of CONN_START; two connections differ."""
    path, _, _ = one_batch
    mon = Monitor()
    starts: List[Any] = []
    ends: List[Any] = []
    mon.on(Event.CONN_START, lambda conn, ev: starts.append(conn))
    mon.on(Event.CONN_END, lambda conn, ev: ends.append(conn))
    mon.run(source(path, 256))
    assert len(starts) == len(ends) == 2
    assert [e.id for e in ends] == [s.id for s in starts]
    for s, e in zip(starts, ends):
        assert s == e and hash(s) == hash(e) and e in set(starts)
    assert starts[0] != starts[1]
    assert len({*starts, *ends}) == 2


def test_order_must_be_known() -> None:
    """A misspelt order is one clear MosError naming the choices."""
    with pytest.raises(MosError, match="connection"):
        Monitor(order="per-connection")


# ---------------------------------------------------------------------------------------------------------
# 3. Per-flow subscriptions over many concurrent connections (bench/subscriptions.py at CI size)

CONNS = 20_000


@pytest.fixture(scope="module")
def many_conns(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, bytes]:
    """bench/subscriptions.py's capture (every handshake, then one data segment each) for CONNS."""
    bench = str(REPO / "bench")
    sys.path.insert(0, bench)  # subscriptions.py imports its neighbour common.py
    try:
        spec = importlib.util.spec_from_file_location("bench_subscriptions", REPO / "bench" / "subscriptions.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(bench)
    path = tmp_path_factory.mktemp("many") / "many.pcap"
    mod.build(path, CONNS)
    return path, mod.DATA


def subscribed_run(path: Path, case: str) -> Dict[str, Dict[int, List[bytes]]]:
    """The data events a global handler and/or a per-flow one (subscribed in CONN_START) got, by
    connection id; ``case``: "global", "per-flow" or "both"."""
    mon = Monitor()
    got: Dict[str, Dict[int, List[bytes]]] = {}

    def handler(kind: str) -> Any:
        by_conn = got.setdefault(kind, defaultdict(list))
        return lambda conn, ev: by_conn[conn.id].append(bytes(ev.data))

    if case in ("global", "both"):
        mon.on(Event.CONN_NEW_DATA, handler("global"))
    if case in ("per-flow", "both"):
        per_flow = handler("per-flow")
        mon.on(Event.CONN_START, lambda conn, ev: conn.on(Event.CONN_NEW_DATA, per_flow))
    st = mon.run(PcapSource(str(path)))
    assert mon.handler_errors == 0
    assert st["conns_created"] == CONNS and st["conns_live"] == 0
    return {kind: dict(by_conn) for kind, by_conn in got.items()}


@pytest.mark.parametrize("case", ["global", "per-flow", "both"])
def test_per_flow_as_many_events_as_global(many_conns: Tuple[Path, bytes], case: str) -> None:
    """conn.on(CONN_NEW_DATA) in CONN_START on 20,000 concurrent connections: exactly one data event per
    connection, with its bytes, as one global subscription gets; both in one monitor too."""
    path, data = many_conns
    got = subscribed_run(path, case)
    assert sorted(got) == (["global", "per-flow"] if case == "both" else [case])
    expected = {i: [data] for i in range(1, CONNS + 1)}
    for kind, by_conn in got.items():
        assert len(by_conn) == CONNS, kind
        assert by_conn == expected, kind


# ---------------------------------------------------------------------------------------------------------
# The peek window

STREAM = payload("W", 300_000)
MSS = 1448
WINDOW = 65536


@pytest.fixture(scope="module")
def long_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One connection: 300 KB from the client in order, MSS-sized segments each acknowledged."""
    c = Conv(cport=43000)
    c.handshake()
    c.send(True, STREAM, mss=MSS)
    c.close()
    return Built(restamp(c.records)).write(tmp_path_factory.mktemp("long") / "long.pcap")


def ppeek_probes(end: int, window: int) -> List[Tuple[int, int, bytes]]:
    """(offset, length, what ppeek must return) at an event whose stream offset is ``end``: ranges inside
    the window are returned up to ``end``, a range starting below it is b"" (even if it reaches in)."""
    lo = max(0, end - window)
    probes = [
        (lo, end - lo, STREAM[lo:end]),             # the whole window
        (lo + 7, 33, STREAM[lo + 7:lo + 40]),
        (end - 10, 100, STREAM[end - 10:end]),     # up to the first byte not held
        (end, 10, b""),
    ]
    if lo > 0:
        probes += [(lo - 1, 10, b""), (max(0, lo - 1000), 2000, b""), (0, 100, b"")]
    return probes


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("batch", BATCHES)
def test_ppeek_window(long_stream: Path, batch: int, order: str) -> None:
    """At every event of a 300 KB stream, with peek_window=65536: ppeek inside [offset - 64 KiB, offset)
    returns the bytes sent, older offsets b"", whatever the batch size and order."""
    mon = Monitor(peek_window=WINDOW, order=order)
    wrong: List[Tuple[int, int, int, int]] = []  # (stream offset, probe offset, length, bytes got)
    ends: List[int] = []

    def data(conn: Any, ev: Any) -> None:
        end = ev.offset + ev.length
        ends.append(end)
        for off, n, want in ppeek_probes(end, WINDOW):
            got = conn.ppeek(Side.SERVER, off, n)
            if got != want:
                wrong.append((end, off, n, len(got)))

    mon.on(Event.CONN_NEW_DATA, data, side=Side.SERVER)
    st = mon.run(source(long_stream, batch))
    assert mon.handler_errors == 0
    assert ends == [min(o + MSS, len(STREAM)) for o in range(0, len(STREAM), MSS)]
    assert wrong == [], f"{len(wrong)} wrong ppeeks, the first: {wrong[:5]}"
    assert st["memory_held"] == 0


def expected_peeks(ends: List[int], every: int, window: int) -> List[Tuple[int, bytes, int]]:
    """(stream offset, what peek returns, peek_lost after it) for a peek at every ``every``-th event."""
    out = []
    read = lost = 0
    for k, end in enumerate(ends, 1):
        if k % every:
            continue
        start = max(read, end - window)
        lost += start - read
        out.append((end, STREAM[start:end], lost))
        read = end
    return out


@pytest.mark.parametrize("window", [WINDOW, 8192])
@pytest.mark.parametrize("batch", BATCHES)
def test_peek_every_tenth_event(long_stream: Path, batch: int, window: int) -> None:
    """peek() at every 10th event: with a 64 KiB window (more than 10 segments) it returns every byte once
    and loses nothing; with 8 KiB, each call returns the window's last 8 KiB and peek_lost counts the bytes
    skipped."""
    mon = Monitor(peek_window=window)
    calls: List[Tuple[int, bytes, int]] = []
    ends: List[int] = []

    def data(conn: Any, ev: Any) -> None:
        ends.append(ev.offset + ev.length)
        if len(ends) % 10 == 0:
            calls.append((ends[-1], conn.peek(Side.SERVER), conn.peek_lost(Side.SERVER)))

    mon.on(Event.CONN_NEW_DATA, data, side=Side.SERVER)
    mon.run(source(long_stream, batch))
    assert mon.handler_errors == 0
    want = expected_peeks(ends, 10, window)
    assert len(calls) == len(want) == len(STREAM) // MSS // 10
    for (end, got, lost), (w_end, w_got, w_lost) in zip(calls, want):
        assert (end, len(got), lost) == (w_end, len(w_got), w_lost)
        assert got == w_got, f"peek at stream offset {end}: wrong bytes"
    if window == WINDOW:
        assert want[-1][2] == 0 and b"".join(g for _, g, _ in calls) == STREAM[:calls[-1][0]]
    else:
        assert want[-1][2] > 0 and all(len(g) == window for _, g, _ in calls)



def _fragmented_rst_after_data(tmp_path: Path) -> str:
    """The client sends two data segments back to back, then a RST in IPv4 fragments right behind them (at
    the sequence number after both): a host takes the data, then the RST at RCV.NXT."""
    from scapy.layers.inet import TCP, fragment  # noqa: PLC0415 (scapy is slow to import: only here)

    c = Conv(cport=41900)
    c.handshake()
    c.tcp(True, "PA", payload=payload("D", 300))
    c.tcp(True, "PA", payload=payload("E", 300))
    seg = c.l3(True, id=0x77) / TCP(sport=c.cport, dport=c.sport, flags="R", seq=c.nxt[True], ack=0)
    seg = seg.__class__(bytes(seg))
    for fr in fragment(seg, fragsize=8):
        c.emit(bytes(c.l2(True) / fr))
    return str(c.built().write(tmp_path / "fragrst.pcap"))


@pytest.mark.parametrize("order", ["connection", "packet", "batch"])
def test_a_datagram_from_fragments_waits_behind_its_connections_held_packets(tmp_path: Path, order: str) -> None:
    """A datagram completed by its last fragment belongs to a connection like any packet: it must not pass
    that connection's packets held back for its handlers (the engine would take the RST before the data
    and reject it as out of place, where the host took the data, then the RST)."""
    path = _fragmented_rst_after_data(tmp_path)
    mon = Monitor(order=order)
    log: List[Any] = []
    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: log.append(("data", ev.offset, ev.length)), side=Side.SERVER)
    mon.on(Event.CONN_END, lambda conn, ev: log.append(("end", ev.reason.name)))
    st = mon.run(PcapSource(path))
    assert log == [("data", 0, 300), ("data", 300, 300), ("end", "RST")], log
    assert st["datagrams_reassembled"] == 1
