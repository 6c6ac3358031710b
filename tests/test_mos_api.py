"""The rest of mOS's event API (issue 10, item 4): the app's own events (alloc_event / raise_event),
monitor.now, per-connection timers, per-side buffering and overlap policy, conn.alive."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import pytest

from mos import Event, Monitor, MosError, PcapSource, Side
from tests.pcaps import REQ, Conv, basic_close, payload


def _capture(tmp_path: Path, name: str = "c.pcap") -> str:
    return str(basic_close().write(tmp_path / name))


def test_alloc_event_raised_by_a_handler_reaches_its_handlers_in_order(tmp_path: Path) -> None:
    mon = Monitor()
    req = mon.alloc_event()
    derived = mon.define_event(req, lambda conn, ev: ev.data.startswith(b"GET"))
    log: List[Any] = []

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def data(conn, ev):
        log.append(("data", ev.offset))
        conn.raise_event(req, ev.data)
        log.append(("after raise", ev.offset))

    mon.on(req, lambda conn, ev: log.append(("req", ev.data, ev.event)))
    mon.on(derived, lambda conn, ev: log.append(("get", len(ev.data))))
    mon.on(Event.CONN_END, lambda conn, ev: log.append(("end",)))
    mon.run(PcapSource(_capture(tmp_path)))
    assert log == [("data", 0), ("after raise", 0), ("req", REQ, req), ("get", len(REQ)), ("end",)]


def test_raise_event_misuse(tmp_path: Path) -> None:
    mon = Monitor()
    errors: List[str] = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        for bad in (Event.CONN_NEW_DATA, 99):
            try:
                conn.raise_event(bad)
            except MosError as exc:
                errors.append(str(exc))

    mon.run(PcapSource(_capture(tmp_path)))
    assert len(errors) == 2 and "alloc_event" in errors[0] and "unknown event" in errors[1]
    assert mon.handler_errors == 0


def test_now_is_packet_time_and_timers_receive_it(tmp_path: Path) -> None:
    c = Conv(t0=2000.0)
    c.handshake()
    c.send(True, REQ)
    c.t += 3.0
    c.send(False, payload("R", 100))
    c.close()
    path = str(c.built().write(tmp_path / "t.pcap"))
    mon = Monitor()
    seen: List[Any] = []
    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: seen.append(("data", round(mon.now, 6),
                                                                 round(ev.packet.ts, 6))))
    mon.add_timer(1.0, lambda m, now: seen.append(("timer", round(now, 6), round(m.now, 6))))
    mon.add_timer(1.5, lambda m: seen.append(("old form", round(m.now, 6))))
    mon.run(PcapSource(path))
    data = [s for s in seen if s[0] == "data"]
    assert all(s[1] == s[2] for s in data) and len(data) == 2
    t0 = min(s[1] for s in data) - 0.01  # the first packet (SYN) is a little before the request
    timer = next(s for s in seen if s[0] == "timer")
    assert timer[1] == timer[2] and 2000.9 < timer[1] < 2001.1 + 0.01 and timer[1] > t0
    assert any(s[0] == "old form" for s in seen)


def test_connection_timer_fires_with_conn_and_is_cancelled_at_the_end(tmp_path: Path) -> None:
    c = Conv(t0=3000.0)
    c.handshake()
    c.send(True, REQ)
    for _ in range(6):
        c.t += 0.5
        c.send(False, payload("R", 10))
    c.close()
    c.t += 5.0
    other = Conv(cport=40001, t0=c.t)  # packets after the end: the clock goes on
    other.handshake()
    other.close()
    recs = sorted(c.built().records + other.built().records, key=lambda r: r[0])
    from tests.pcaps import Built

    path = str(Built(recs).write(tmp_path / "timer.pcap"))
    mon = Monitor()
    fired: List[Any] = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        if conn.id == 1:
            conn.add_timer(1.0, lambda cn, now: fired.append((cn.id, cn.alive)), periodic=True)

    mon.run(PcapSource(path))
    assert fired and all(f == (1, True) for f in fired)
    assert len(fired) <= 4  # about 3 s of life, none after its end although time went on 5 s more


def test_alive_and_ctx_after_the_end(tmp_path: Path) -> None:
    mon = Monitor()
    kept: List[Any] = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        conn.ctx = "mine"
        kept.append(conn)

    @mon.on(Event.CONN_END)
    def end(conn, ev):
        kept.append((conn.alive, conn.ctx))

    mon.run(PcapSource(_capture(tmp_path)))
    conn, (alive_in_end, ctx_in_end) = kept
    assert alive_in_end is True and ctx_in_end == "mine"
    assert conn.alive is False and conn.ctx is None


def test_set_buffering_per_side(tmp_path: Path) -> None:
    mon = Monitor()
    got: List[Any] = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        conn.set_buffering(Side.CLIENT, False)  # the bytes the client receives: not held

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):
        got.append((ev.side, len(ev.data), len(conn.ppeek(ev.side, ev.offset, ev.length))))

    mon.run(PcapSource(_capture(tmp_path)))
    srv = [g for g in got if g[0] == Side.SERVER]
    cli = [g for g in got if g[0] == Side.CLIENT]
    assert srv and all(g[1] == g[2] for g in srv)  # held: readable back
    assert cli and all(g[1] > 0 and g[2] == 0 for g in cli)  # delivered in ev.data, nothing held


def test_set_policy_per_side_and_mistakes(tmp_path: Path) -> None:
    mon = Monitor()
    errs: List[str] = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        conn.set_policy("last", Side.SERVER)
        for bad in (("nope", Side.SERVER), ("last", 1)):
            try:
                conn.set_policy(*bad)
            except MosError as exc:
                errs.append(str(exc))

    mon.run(PcapSource(_capture(tmp_path)))
    assert len(errs) == 2 and "nope" in errs[0] and "Side" in errs[1]


def test_connections_lists_the_live_ones(tmp_path: Path) -> None:
    mon = Monitor()
    seen: List[Any] = []
    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: seen.append([c.id for c in mon.connections()]))
    mon.run(PcapSource(_capture(tmp_path)))
    assert seen and all(s == [1] for s in seen) and mon.connections() == []


@pytest.mark.parametrize("bad", [0, -1, "1"])
def test_connection_timer_mistakes(tmp_path: Path, bad: Any) -> None:
    mon = Monitor()
    errs: List[str] = []

    @mon.on(Event.CONN_START)
    def start(conn, ev):
        for args in ((bad, lambda c, n: None), (1.0, None)):
            try:
                conn.add_timer(*args)
            except MosError as exc:
                errs.append(str(exc))

    mon.run(PcapSource(_capture(tmp_path)))
    assert len(errs) == 2 and "delay" in errs[0] and "callable" in errs[1]
