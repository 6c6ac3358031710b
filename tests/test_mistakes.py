"""User mistakes fail loudly, with one clear MosError (issue 10, item 5), and a failing handler does not
bury the run in tracebacks: mos/handler_errors.py, mos/filter.py, and the Monitor / Connection checks.

Captures are built here with scapy (tests/pcaps.py); every expected count is derived from what the test
wrote."""

from __future__ import annotations

import dataclasses
import functools
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import mos.handler_errors as he_mod
from mos import Event, Filter, Hook, Monitor, MosError, Side
from mos.abi import ffi
from mos.filter import FILTER_MAX_PATTERN, FILTER_MAX_PORTS
from mos.handler_errors import HandlerErrors
from tests.pcaps import Built, Conv

TRACEBACK = "Traceback (most recent call last)"
SYN, ACK = 0x02, 0x10

# ---------------------------------------------------------------------------------------------------------
# helpers


def raised(fn: Callable[..., Any], *args: Any) -> Tuple[type, BaseException, Any]:
    """sys.exc_info() of calling fn(*args), which must raise."""
    try:
        fn(*args)
    except Exception:
        info = sys.exc_info()
        assert info[0] is not None and info[1] is not None
        return info  # type: ignore[return-value]
    raise AssertionError(f"{fn} did not raise")


def boom(msg: str = "boom") -> None:
    raise ValueError(msg)


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def errors(first: int = 5, interval: float = 5.0) -> Tuple[HandlerErrors, io.StringIO, Clock]:
    out = io.StringIO()
    clock = Clock()
    return HandlerErrors(first=first, interval=interval, clock=clock, out=out), out, clock


def many_segments(n: int, conns: int = 1) -> Built:
    """`conns` connections one after the other, each a handshake then `n` one-byte client segments
    (n CONN_NEW_DATA events each) and a close."""
    records = []
    t0 = 1000.0
    for k in range(conns):
        c = Conv(cport=42000 + k, t0=t0)
        c.handshake()
        for i in range(n):
            c.tcp(True, "PA", payload=bytes([65 + i % 26]))
        c.tcp(False, "A")
        c.close()
        records += c.records
        t0 = c.t + 0.001
    return Built(records)


def small_capture() -> Built:
    """One connection: a request and a two-segment response."""
    c = Conv()
    c.handshake()
    c.send(True, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(False, b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1500)
    c.close()
    return c.built()


def run(tmp_path: Path, mon: Monitor, built: Built, name: str = "t") -> Dict[str, int]:
    return mon.run_pcap(built.write(tmp_path / f"{name}.pcap"))


def in_handler(tmp_path: Path, action: Callable[[Any], Any], event: Event = Event.CONN_NEW_DATA) -> List[Any]:
    """Run `action(conn)` in the first `event` handler call; returns [the exception it raised, or its result]."""
    got: List[Any] = []
    mon = Monitor()

    def h(conn: Any, ev: Any) -> None:
        if got:
            return
        try:
            got.append(action(conn))
        except Exception as exc:  # the assertion is on what was raised, outside the monitor's reporting
            got.append(exc)

    mon.on(event, h)
    run(tmp_path, mon, small_capture())
    assert len(got) == 1 and mon.handler_errors == 0
    return got


# ---------------------------------------------------------------------------------------------------------
# HandlerErrors: the first failures in full, then counted


def test_first_failures_printed_in_full_with_their_connection():
    he, out, _ = errors()
    for i in range(5):
        he.report(boom, f"connection {i + 1} (10.0.0.1:4000 -> 10.0.0.2:80)", raised(boom, f"boom {i}"))
    text = out.getvalue()
    assert text.count(TRACEBACK) == 5 and he.count == 5
    for i in range(5):
        assert f"failed on connection {i + 1} (10.0.0.1:4000 -> 10.0.0.2:80)" in text
        assert f"ValueError: boom {i}" in text
    assert "'boom'" in text and "in boom" in text  # the handler's name and its frame


def test_after_the_first_failures_no_traceback():
    he, out, clock = errors()
    for i in range(1000):
        he.report(boom, f"connection {i}", raised(boom))
        clock.t += 0.001  # 1 s in all: less than the interval, so no periodic line either
    text = out.getvalue()
    assert he.count == 1000
    assert text.count(TRACEBACK) == 5
    assert "connection 4:" in text and "connection 5" not in text
    assert len(text) < 5 * 1000  # five tracebacks and one notice, nothing per failure after


def test_no_traceback_formatted_after_the_first(monkeypatch):
    """The hot path: past the first failures, report() formats nothing."""
    calls = []
    real = he_mod.traceback.format_exception

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(he_mod.traceback, "format_exception", counting)
    monkeypatch.setattr(he_mod.traceback, "print_exception", lambda *a, **kw: calls.append(1))
    he, _, _ = errors()
    info = raised(boom)
    for _ in range(10_000):
        he.report(boom, "connection 1", info)
    assert len(calls) == 5 and he.count == 10_000


def test_report_is_cheap_after_the_first():
    """A handler failing on every event: each further report costs about a dictionary lookup."""
    he = HandlerErrors(out=io.StringIO())
    info = raised(boom)
    n = 200_000
    t = time.perf_counter()
    for _ in range(n):
        he.report(boom, "connection 1", info)
    per = (time.perf_counter() - t) / n
    assert he.count == n
    assert per < 10e-6, f"{per * 1e6:.1f} us per report"  # formatting a traceback costs tens of us


def test_periodic_line_every_interval_per_handler():
    he, out, clock = errors(first=2, interval=5.0)

    def other(conn: Any, ev: Any) -> None:
        raise KeyError("k")

    for _ in range(2):
        he.report(boom, "connection 1", raised(boom))
        he.report(other, "connection 2", raised(other, None, None))
    base = out.getvalue()
    # 12 s of failures, 10 per second of each handler
    for _ in range(120):
        clock.t += 0.1
        he.report(boom, "connection 1", raised(boom))
        he.report(other, "connection 2", raised(other, None, None))
    lines = out.getvalue()[len(base):].splitlines()
    boom_lines = [ln for ln in lines if "'boom'" in ln]
    other_lines = [ln for ln in lines if "'other'" in ln]
    assert len(boom_lines) == 2 and len(other_lines) == 2 and len(lines) == 4  # at 5 s and 10 s
    # the counts add up: 2 in full, then the two lines' "more", then what is left for the summary
    more = [int(ln.split(" failed ")[1].split()[0]) for ln in boom_lines]
    assert sum(more) <= 120 and more[0] >= 45 and more[1] == 50
    assert "ValueError" in boom_lines[0] and "KeyError" in other_lines[0]
    assert he.count == 2 * 122


def test_no_periodic_line_before_the_interval():
    he, out, clock = errors(first=1, interval=5.0)
    he.report(boom, "c", raised(boom))
    before = out.getvalue()
    for _ in range(49):
        clock.t += 0.1
        he.report(boom, "c", raised(boom))
    assert out.getvalue() == before
    clock.t += 0.2
    he.report(boom, "c", raised(boom))
    assert "50 more times" in out.getvalue()[len(before):]


def test_summary_totals_per_handler():
    he, out, _ = errors()

    def h(conn: Any, ev: Any) -> None:
        raise ZeroDivisionError("division by zero")

    for i in range(100_284):
        he.report(h, "connection 3 (10.0.0.1:1 -> 10.0.0.2:80)" if i == 0 else f"connection {i}", raised(h, 0, 0)
                  if i < 3 else (ZeroDivisionError, ZeroDivisionError("z"), None))
    he.report(boom, "no connection", raised(boom), what="timer callback")
    before = len(out.getvalue())
    lines = he.summary()
    assert len(lines) == 2
    assert lines[0].startswith("mos-xdp: handler 'h' failed 100284 times ")
    assert "first on connection 3 (10.0.0.1:1 -> 10.0.0.2:80)" in lines[0]
    assert "ZeroDivisionError: division by zero" in lines[0]
    assert lines[1].startswith("mos-xdp: timer callback 'boom' failed 1 time ")
    assert out.getvalue()[before:] == "".join(ln + "\n" for ln in lines)
    assert he.totals() == [("h", 100_284), ("boom", 1)]
    assert he.count == 100_285


def test_summary_of_no_failure_is_silent():
    he, out, _ = errors()
    assert he.summary() == [] and out.getvalue() == "" and he.count == 0


def test_closures_made_per_connection_are_one_handler():
    """conn.on(..., lambda ...) in CONN_START makes a function per connection: one handler, 5 tracebacks."""
    he, out, _ = errors()

    def make(k: int) -> Callable[[Any, Any], None]:
        return lambda c, e: boom(f"conn {k}")

    class App:
        def on_data(self, c: Any, e: Any) -> None:
            boom("method")

        def __call__(self, c: Any, e: Any) -> None:
            boom("call")

    def plain(tag: str, c: Any, e: Any) -> None:
        boom(tag)

    for k in range(100):
        fns = (make(k), App().on_data, App(), functools.partial(plain, "p"))
        for fn in fns:
            he.report(fn, f"connection {k}", raised(fn, None, None))
    assert out.getvalue().count(TRACEBACK) == 4 * 5
    names = [n for n, _ in he.totals()]
    assert [c for _, c in he.totals()] == [100] * 4
    assert names[0].startswith("<lambda> (")
    assert "test_mistakes.py:" in names[0]  # a lambda is named by where it is
    assert names[1:] == ["App.on_data", "App", "plain"]


def test_distinct_handlers_each_get_their_first_failures():
    he, out, _ = errors(first=2)

    def a(c: Any, e: Any) -> None:
        boom("a")

    def b(c: Any, e: Any) -> None:
        boom("b")

    for _ in range(10):
        he.report(a, "x", raised(a, None, None))
        he.report(b, "y", raised(b, None, None))
    text = out.getvalue()
    assert text.count("ValueError: a") == 2 and text.count("ValueError: b") == 2
    assert [n for n, _ in he.totals()] == ["a", "b"]


def test_default_output_is_stderr_at_the_time(capsys):
    he = HandlerErrors()
    he.report(boom, "connection 7", raised(boom, "to stderr"))
    err = capsys.readouterr().err
    assert "failed on connection 7" in err and "ValueError: to stderr" in err


def test_what_names_the_kind_of_code():
    he, out, _ = errors()
    he.report(boom, "connection 1", raised(boom), what="filter of event 33")
    assert out.getvalue().startswith("mos-xdp: filter of event 33 'boom' failed on connection 1:\n")
    he.report(boom, "connection 2", raised(boom))  # the same function as a handler: reported apart
    assert [ln.split(" 'boom'")[0] for ln in he.summary()] == ["mos-xdp: filter of event 33", "mos-xdp: handler"]


def test_bad_settings_refused():
    with pytest.raises(ValueError):
        HandlerErrors(first=-1)
    with pytest.raises(ValueError):
        HandlerErrors(interval=-1.0)


# ---------------------------------------------------------------------------------------------------------
# Filter: argument mistakes are one MosError naming the argument


def test_filter_limits_are_the_c_structs():
    fields = dict(ffi.typeof("struct mos_filter").fields)
    assert FILTER_MAX_PORTS == fields["ports"].type.length
    assert FILTER_MAX_PATTERN == fields["pattern"].type.length


def test_filter_contains_str_is_utf8():
    assert Filter(contains="GET /") == Filter(contains=b"GET /")
    assert Filter(contains="GET /").contains == b"GET /"
    assert Filter(contains="héllo").contains == "héllo".encode()
    assert Filter(contains=bytearray(b"ab")).contains == b"ab"
    assert Filter(contains=memoryview(b"ab")).contains == b"ab"


@pytest.mark.parametrize("bad", [5, 3.5, None, [b"a"], ("a",)])
def test_filter_contains_wrong_type(bad):
    with pytest.raises(MosError, match=r"Filter\(contains=\.\.\.\) takes bytes"):
        Filter(contains=bad)


def test_filter_contains_too_long():
    Filter(contains=b"x" * FILTER_MAX_PATTERN)
    with pytest.raises(MosError, match=rf"contains.*at most {FILTER_MAX_PATTERN} bytes.*not {FILTER_MAX_PATTERN + 1}"):
        Filter(contains=b"x" * (FILTER_MAX_PATTERN + 1))
    # the limit is on the encoded bytes: two bytes per é
    n = FILTER_MAX_PATTERN // 2 + 1
    with pytest.raises(MosError, match=rf"not {2 * n}"):
        Filter(contains="é" * n)


def test_filter_one_port():
    assert Filter(ports=80).ports == (80,)
    assert Filter(ports=[80, 443]).ports == (80, 443)
    assert Filter(ports=range(8000, 8003)).ports == (8000, 8001, 8002)
    assert Filter(ports={443}).ports == (443,)
    assert Filter(ports=(80, 80, 443)).ports == (80, 443)  # a set of ports: the same one twice is one


@pytest.mark.parametrize("bad", ["80", b"80", 80.0, None, True])
def test_filter_ports_wrong_type(bad):
    with pytest.raises(MosError, match=r"Filter\(ports=\.\.\.\) takes a port number or a list"):
        Filter(ports=bad)


@pytest.mark.parametrize("bad", [[80, "443"], [80.5], [None], [False]])
def test_filter_port_items_wrong_type(bad):
    with pytest.raises(MosError, match=r"Filter\(ports=\.\.\.\): every port is an int"):
        Filter(ports=bad)


@pytest.mark.parametrize("bad", [70000, -1, 65536, [80, 1 << 20]])
def test_filter_ports_out_of_range(bad):
    with pytest.raises(MosError, match=r"Filter\(ports=\.\.\.\): port -?\d+ is not between 0 and 65535"):
        Filter(ports=bad)


def test_filter_too_many_ports():
    Filter(ports=range(1, FILTER_MAX_PORTS + 1))
    with pytest.raises(MosError, match=rf"ports.*at most {FILTER_MAX_PORTS} ports.*not {FILTER_MAX_PORTS + 1}"):
        Filter(ports=range(1, FILTER_MAX_PORTS + 2))


@pytest.mark.parametrize("arg", ["flags", "flags_mask"])
@pytest.mark.parametrize("bad", ["SA", 2.0, True, b"\x02", [2]])
def test_filter_flags_wrong_type(arg, bad):
    with pytest.raises(MosError, match=rf"Filter\({arg}=\.\.\.\) takes an int"):
        Filter(**{arg: bad})


@pytest.mark.parametrize("arg", ["flags", "flags_mask"])
@pytest.mark.parametrize("bad", [0x100, -1])
def test_filter_flags_out_of_range(arg, bad):
    with pytest.raises(MosError, match=rf"Filter\({arg}=\.\.\.\): .* is not between 0 and 0xff"):
        Filter(**{arg: bad, "flags_mask": 0xFF} if arg == "flags" else {arg: bad})


def test_filter_flags_outside_mask():
    """Bits of flags outside flags_mask would never be compared: the filter would not test what it says."""
    Filter(flags=SYN, flags_mask=SYN | ACK)
    Filter(flags=0, flags_mask=ACK)  # "ACK not set"
    with pytest.raises(MosError, match=r"flags has bits outside flags_mask \(0x2\)"):
        Filter(flags=SYN, flags_mask=ACK)


def test_filter_is_frozen_and_hashable():
    f = Filter(ports=80, contains="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.ports = (81,)  # type: ignore[misc]
    assert hash(f) == hash(Filter(ports=(80,), contains=b"a"))


def filter_capture() -> Built:
    """Two connections (ports 80 and 8080) whose client sends `secret` and a 64-byte marker."""
    recs = []
    for k, sport in enumerate((80, 8080)):
        c = Conv(cip=f"10.10.0.{k + 1}", cport=43000 + k, sport=sport, t0=1000.0 + k)
        c.handshake()
        for m in (b"hello", b"my secret here", b"M" * 63 + b"!", b"M" * 64):
            c.tcp(True, "PA", payload=m)
            c.tcp(False, "A")
        c.close()
        recs += c.records
    return Built(sorted(recs, key=lambda r: r[0]))


def user_event_data(tmp_path: Path, flt: Filter, base: Event = Event.CONN_NEW_DATA) -> List[Tuple[int, bytes]]:
    mon = Monitor()
    uid = mon.define_event(base, flt)
    got: List[Tuple[int, bytes]] = []
    mon.on(uid, lambda c, e: got.append((c.info()["server_port"], bytes(e.data))))
    run(tmp_path, mon, filter_capture())
    return got


def test_filter_str_and_one_port_in_the_engine(tmp_path):
    assert user_event_data(tmp_path, Filter(contains="secret")) == [(80, b"my secret here"), (8080, b"my secret here")]
    got = user_event_data(tmp_path, Filter(ports=8080))
    assert len(got) == 4 and {p for p, _ in got} == {8080}


def test_filter_longest_pattern_in_the_engine(tmp_path):
    """A pattern of the full C length is compared whole: its last byte counts."""
    pat = b"M" * (FILTER_MAX_PATTERN - 1) + b"!"
    assert FILTER_MAX_PATTERN == 64  # the capture's markers are built for 64 (the test fails if it changes)
    assert user_event_data(tmp_path, Filter(contains=pat)) == [(80, pat), (8080, pat)]


# ---------------------------------------------------------------------------------------------------------
# Monitor.on / Connection.on: type mistakes and hooks the engine never raises an event at


def h(conn: Any, ev: Any) -> None:
    """A handler that does nothing."""


def test_on_event_name_as_str():
    mon = Monitor()
    with pytest.raises(MosError, match=r"Event\.CONN_NEW_DATA"):
        mon.on("CONN_NEW_DATA", h)  # type: ignore[arg-type]


def test_on_handler_not_callable():
    mon = Monitor()
    with pytest.raises(MosError, match="handler must be callable"):
        mon.on(Event.CONN_NEW_DATA, 5)  # type: ignore[arg-type]
    with pytest.raises(MosError, match="handler must be callable"):
        mon.on(Event.CONN_NEW_DATA)(5)  # the decorator form


def test_on_hook_the_event_is_never_raised_at():
    mon = Monitor()
    with pytest.raises(MosError, match=r"CONN_START.*Hook\.RCV"):
        mon.on(Event.CONN_START, h, hook=Hook.SND)


def test_on_hooks_the_engine_raises_at_still_accepted(tmp_path):
    mon = Monitor()
    seen: Dict[Tuple[str, str], int] = {}

    def count(c: Any, e: Any) -> None:
        k = (e.event.name, e.hook.name)
        seen[k] = seen.get(k, 0) + 1

    for ev in (Event.PKT_IN, Event.TCP_STATE_CHANGE):
        for hook in (Hook.SND, Hook.RCV):
            mon.on(ev, count, hook=hook)
    mon.on(Event.CONN_START, count)
    run(tmp_path, mon, small_capture())
    assert set(seen) == {("PKT_IN", "SND"), ("PKT_IN", "RCV"), ("TCP_STATE_CHANGE", "SND"),
                         ("TCP_STATE_CHANGE", "RCV"), ("CONN_START", "RCV")}


@pytest.mark.parametrize("side", ["client", 0.5, None])
def test_on_side_wrong_type(side):
    mon = Monitor()
    with pytest.raises(MosError, match="side"):
        mon.on(Event.CONN_NEW_DATA, h, side=side)  # type: ignore[arg-type]


def test_conn_on_type_mistakes(tmp_path):
    """The same checks on a connection's own subscriptions."""
    for action in (lambda c: c.on("CONN_NEW_DATA", h), lambda c: c.on(Event.CONN_NEW_DATA, 5),
                   lambda c: c.on(Event.CONN_NEW_DATA, h, side="client")):
        (exc,) = in_handler(tmp_path, action, Event.CONN_START)
        assert isinstance(exc, MosError), repr(exc)


# ---------------------------------------------------------------------------------------------------------
# ppeek arguments


def test_ppeek_negative_offset(tmp_path):
    (exc,) = in_handler(tmp_path, lambda c: c.ppeek(Side.SERVER, -5, 10))
    assert isinstance(exc, MosError) and "offset" in str(exc), repr(exc)


def test_ppeek_negative_length(tmp_path):
    (exc,) = in_handler(tmp_path, lambda c: c.ppeek(Side.SERVER, 0, -1))
    assert isinstance(exc, MosError) and "length" in str(exc), repr(exc)


def test_ppeek_both_sides(tmp_path):
    (exc,) = in_handler(tmp_path, lambda c: c.ppeek(Side.BOTH, 0, 1))
    assert isinstance(exc, MosError) and "Side.BOTH" in str(exc), repr(exc)


def test_ppeek_wrong_types(tmp_path):
    for action in (lambda c: c.ppeek(Side.SERVER, "0", 10), lambda c: c.ppeek(Side.SERVER, 0, 1.5)):
        (exc,) = in_handler(tmp_path, action)
        assert isinstance(exc, MosError), repr(exc)


def test_ppeek_valid_still_works(tmp_path):
    assert in_handler(tmp_path, lambda c: c.ppeek(Side.SERVER, 0, 0)) == [b""]
    assert in_handler(tmp_path, lambda c: c.ppeek(Side.SERVER, 0, 3)) == [b"GET"]


# ---------------------------------------------------------------------------------------------------------
# add_timer arguments


def test_add_timer_callback_not_callable():
    mon = Monitor()
    with pytest.raises(MosError, match="callback must be callable"):
        mon.add_timer(1, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", ["1", None, [1]])
def test_add_timer_delay_wrong_type(delay):
    mon = Monitor()
    with pytest.raises(MosError, match="delay"):
        mon.add_timer(delay, lambda m: None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# unknown Monitor attributes


def test_unknown_monitor_attribute():
    mon = Monitor()
    with pytest.raises(MosError, match=r"buffer_client.*Monitor\(") as ei:
        mon.buffer_client = False  # type: ignore[attr-defined]
    assert isinstance(ei.value, MosError)
    with pytest.raises(MosError, match="strcit"):
        mon.strcit = True  # type: ignore[attr-defined]


def test_known_monitor_attribute_still_settable(tmp_path):
    mon = Monitor()
    mon.strict = True

    @mon.on(Event.CONN_NEW_DATA)
    def bad(conn: Any, ev: Any) -> None:
        raise KeyError("strict on")

    with pytest.raises(KeyError, match="strict on"):
        run(tmp_path, mon, small_capture())
    assert mon.handler_errors == 1


# ---------------------------------------------------------------------------------------------------------
# a handler that fails on every event, over a capture

N_EVENTS = 1200


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many_segments(N_EVENTS).write(tmp_path_factory.mktemp("flood") / "flood.pcap")


def failing_run(pcap: Path, capsys: Any, setup: Callable[[Monitor, List[int]], None],
                **kw: Any) -> Tuple[Monitor, str, int]:
    """Run `pcap` with what `setup` subscribes (appending to calls each time it fails); the stderr."""
    capsys.readouterr()
    mon = Monitor(**kw)
    calls: List[int] = []
    setup(mon, calls)
    st = mon.run_pcap(str(pcap))
    err = capsys.readouterr().err
    assert st["handler_errors"] == mon.handler_errors
    return mon, err, len(calls)


def test_handler_failing_on_every_event(flood, capsys):
    def setup(mon: Monitor, calls: List[int]) -> None:
        @mon.on(Event.CONN_NEW_DATA)
        def bad(conn: Any, ev: Any) -> None:
            calls.append(1)
            raise ValueError(f"boom at {ev.offset}")

    mon, err, n = failing_run(flood, capsys, setup)
    assert n == N_EVENTS and mon.handler_errors == n
    assert 1 <= err.count(TRACEBACK) <= 5
    assert len(err) < 20_000, f"{len(err)} bytes of stderr for {n} failures"
    assert "connection 1" in err and "ValueError: boom at 0" in err
    assert f"'bad' failed {n} times" in err  # the summary at the end


def test_per_connection_closures_failing_are_one_handler(tmp_path, capsys):
    conns, per = 30, 40
    pcap = many_segments(per, conns).write(tmp_path / "many.pcap")

    def setup(mon: Monitor, calls: List[int]) -> None:
        def start(conn: Any, ev: Any) -> None:
            def bad(c: Any, e: Any) -> None:
                calls.append(1)
                raise ValueError("per connection")
            conn.on(Event.CONN_NEW_DATA, bad)
        mon.on(Event.CONN_START, start)

    # sync: the subscription made in CONN_START covers the connection's next packet (item 2 of issue 10
    # makes that the default; this test is about the reporting, not about when an action takes effect)
    mon, err, n = failing_run(pcap, capsys, setup, sync=True)
    assert n == conns * per == mon.handler_errors
    assert 1 <= err.count(TRACEBACK) <= 5 and len(err) < 20_000
    assert f"failed {n} times" in err


def test_python_filter_failing_on_every_event(flood, capsys):
    def setup(mon: Monitor, calls: List[int]) -> None:
        def flt(c: Any, e: Any) -> bool:
            calls.append(1)
            raise ZeroDivisionError("filter")
        mon.on(mon.define_event(Event.CONN_NEW_DATA, flt), h)

    mon, err, n = failing_run(flood, capsys, setup)
    assert n == N_EVENTS == mon.handler_errors
    assert 1 <= err.count(TRACEBACK) <= 5 and len(err) < 20_000
    assert f"failed {n} times" in err


def test_timer_callback_failing_every_time(flood, capsys):
    def setup(mon: Monitor, calls: List[int]) -> None:
        def tick(m: Monitor) -> None:
            calls.append(1)
            raise RuntimeError("tick")
        mon.add_timer(0.0005, tick, periodic=True)  # the capture's packets are 1 ms apart

    mon, err, n = failing_run(flood, capsys, setup)
    assert n >= 1000 and mon.handler_errors == n
    assert 1 <= err.count(TRACEBACK) <= 5 and len(err) < 20_000
    assert f"failed {n} times" in err


def best_of(k: int, fn: Callable[[], None]) -> float:
    best: Optional[float] = None
    for _ in range(k):
        t = time.perf_counter()
        fn()
        d = time.perf_counter() - t
        best = d if best is None or d < best else best
    assert best is not None
    return best


def test_failing_handler_does_not_slow_the_run(flood, capsys):
    """A handler failing on every event costs about what the exception does (not a traceback each)."""
    def timed(fail: bool) -> Callable[[], None]:
        def go() -> None:
            mon = Monitor()

            def handler(conn: Any, ev: Any) -> None:
                if fail:
                    raise ValueError("x")

            mon.on(Event.CONN_NEW_DATA, handler)
            mon.run_pcap(str(flood))
        return go

    ok = best_of(3, timed(False))
    bad = best_of(3, timed(True))
    capsys.readouterr()
    # a traceback each (tens of us) would be about 0.08 s here; counting, a few ms
    assert bad < 4 * ok + 0.02, f"{bad:.3f} s failing against {ok:.3f} s"
