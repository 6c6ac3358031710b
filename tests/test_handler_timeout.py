"""A stuck handler does not stop everything (mos/watchdog.py): ``Monitor(handler_timeout=...)``,
``run --handler-timeout``, and SIGINT/SIGTERM ending a run within 2 s whatever the handlers do.

Offline, over a generated capture of a few connections where one request (``GET /stuck``) makes the app's
handler loop or sleep: it is interrupted (HandlerTimeout, reported and counted like any handler error) and
the other connections' events are still delivered. Every way app code is called (global and per-connection
handlers, raised events, Python filters, timer callbacks) is covered, so a refactoring that moves a call
out of the watchdog's sight fails here.

Live, inline in namespaces (the topology of tests/test_live.py, its helpers imported): a handler looping on
one connection stalls the others for a budget only; SIGTERM to ``mos-xdp run`` exits within 2 s of the
signal (measured from the signal, start-up excluded) with XDP detached and the counters printed, with one
worker or two.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from mos import Event, HandlerTimeout, Monitor, MosError, Side, xdp
from mos import watchdog as wd
from mos.live.source import StopFlag
from mos.monitor import Monitor as MonitorClass
from mos.net.topology import XDP_END_HOST
from tests import test_live as tl
from tests.netns import Topology, reap_stale, require_root
from tests.pcaps import Built, Conv

ROOT = Path(__file__).resolve().parent.parent
N_CONNS = 6
STUCK = 2  # the index of the connection whose request is GET /stuck
BIG = 8 << 20


def _capture(path: Path, n: int = N_CONNS, stuck: int = STUCK) -> Path:
    recs: List[Any] = []
    for i in range(n):
        c = Conv(cport=41000 + i, t0=1000.0 + i)
        c.handshake()
        c.send(True, b"GET /stuck HTTP/1.0\r\n\r\n" if i == stuck else f"GET /ok{i} HTTP/1.0\r\n\r\n".encode())
        c.send(False, b"HTTP/1.0 200 OK\r\n\r\nhello")
        c.close()
        recs += c.records
    recs.sort(key=lambda r: r[0])
    return Built(recs).write(path)


@pytest.fixture(scope="module")
def pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _capture(tmp_path_factory.mktemp("wd") / "conns.pcap")


def _stuck(how: str) -> None:
    if how == "loop":
        while True:
            pass
    elif how == "sleep":
        time.sleep(60)
    elif how == "lock":
        lk = threading.Lock()
        lk.acquire()
        lk.acquire()
    else:
        raise AssertionError(how)


# ---- offline --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["loop", "sleep", "lock"])
def test_stuck_handler_is_interrupted_and_the_run_goes_on(pcap: Path, how: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    mon = Monitor(handler_timeout=0.2)
    seen: List[bytes] = []

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def request(conn: Any, ev: Any) -> None:
        if ev.data.startswith(b"GET /stuck"):
            _stuck(how)
        seen.append(ev.data.split()[1])

    t0 = time.monotonic()
    st = mon.run_pcap(str(pcap))
    took = time.monotonic() - t0
    assert 0.2 <= took < 0.2 * 1.25 + 1.0, took  # never before the budget; within a quarter of it after
    assert seen == [f"/ok{i}".encode() for i in range(N_CONNS) if i != STUCK]
    assert st["handler_timeouts"] == st["handler_errors"] == mon.handler_errors == 1
    assert st["conns_ended"] == N_CONNS and st["handler_calls_skipped_at_stop"] == 0
    err = capsys.readouterr().err
    assert "HandlerTimeout: ran longer than handler_timeout (0.2 s)" in err
    assert "failed on connection 3 (10.10.0.1:41002 -> 10.10.0.2:80)" in err
    # the traceback ends on the app's line that was running, not in the watchdog
    files = [line for line in err[:err.index("HandlerTimeout:")].splitlines() if line.startswith("  File ")]
    assert files[-1].endswith(", in _stuck") and not any("mos/watchdog.py" in f for f in files), files
    assert "failed 1 time, 1 of them timed out" in err


def _every_path(mon: Monitor, hang: Callable[[], None], log: List[str]) -> None:
    """Hangs once in each kind of app code a monitor calls; ``log`` gets what ran after."""
    raised = mon.alloc_event()

    def once(name: str) -> None:
        if name not in log:
            log.append(name)
            hang()
        log.append(name + " after")  # (never reached the first time)

    @mon.on(Event.CONN_START)
    def start(conn: Any, ev: Any) -> None:
        if conn.client.endswith(":41000"):
            once("global handler")
            return
        if conn.client.endswith(":41001"):
            conn.on(Event.CONN_NEW_DATA, lambda c, e: once("connection handler"), side=Side.SERVER)
        if conn.client.endswith(":41002"):
            conn.raise_event(raised)
        if conn.client.endswith(":41003"):
            mon.add_timer(0.0005, lambda m: once("timer callback"))

    mon.on(raised, lambda c, e: once("raised event handler"))

    def flt(conn: Any, ev: Any) -> bool:
        if conn.client.endswith(":41004"):
            once("python filter")
        return False

    mon.on(mon.define_event(Event.CONN_NEW_DATA, flt), lambda c, e: None)


def test_every_kind_of_app_code_is_guarded(pcap: Path) -> None:
    """Global and per-connection handlers, a raised event's handler, a timer callback, a Python filter:
    each hangs once and is interrupted (5 timeouts), and the run completes."""
    mon = Monitor(handler_timeout=0.05)
    log: List[str] = []

    def hang() -> None:
        while True:
            pass

    _every_path(mon, hang, log)
    st = mon.run_pcap(str(pcap))
    kinds = ["global handler", "connection handler", "raised event handler", "timer callback", "python filter"]
    assert sorted(x for x in log if not x.endswith(" after")) == sorted(kinds)
    assert st["handler_timeouts"] == 5 and st["conns_ended"] == N_CONNS
    assert "python filter after" in log  # the same filter on the connection's later data events ran again


def test_the_registry_names_the_call_sites() -> None:
    """The functions that call app code are the ones the watchdog knows (a rename keeps the mark; a new
    call site without it fails test_every_kind_of_app_code_is_guarded)."""
    assert wd.guarded_codes() == {MonitorClass._dispatch.__code__, MonitorClass._call.__code__,
                                  MonitorClass._derive.__code__}
    for code in wd.guarded_codes():
        assert wd.is_ours(code) and getattr(MonitorClass, code.co_name).__code__ is code


def test_no_interruption_between_handlers(tmp_path: Path) -> None:
    """Many short handlers in a run far longer than the budget: none is interrupted (the monitor's own code
    between them never is), every event arrives."""
    pcap = _capture(tmp_path / "many.pcap", n=60, stuck=-1)
    mon = Monitor(handler_timeout=0.01)
    got: List[int] = []

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn: Any, ev: Any) -> None:
        time.sleep(0.004)
        got.append(conn.id)

    t0 = time.monotonic()
    st = mon.run_pcap(str(pcap))
    assert time.monotonic() - t0 > 0.4  # 120 events of 4 ms
    assert st["handler_errors"] == 0 and len(got) == 120


def test_zero_disables(pcap: Path) -> None:
    mon = Monitor(handler_timeout=0)
    slow: List[float] = []

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def request(conn: Any, ev: Any) -> None:
        if ev.data.startswith(b"GET /stuck"):
            t = time.monotonic()
            time.sleep(0.3)
            slow.append(time.monotonic() - t)

    st = mon.run_pcap(str(pcap))
    assert st["handler_timeouts"] == 0 and st["handler_errors"] == 0 and slow and slow[0] >= 0.3


def test_strict_stops_at_a_timeout(pcap: Path) -> None:
    mon = Monitor(handler_timeout=0.05, strict=True)
    mon.on(Event.CONN_NEW_DATA, lambda c, e: _stuck("sleep"), side=Side.SERVER)
    with pytest.raises(HandlerTimeout):
        mon.run_pcap(str(pcap))
    assert mon.stats()["handler_timeouts"] == 1


@pytest.mark.parametrize("bad", [-1, -0.5, 0.001, float("nan"), float("inf"), "1", True, None])
def test_bad_values(bad: Any) -> None:
    with pytest.raises(MosError, match="handler_timeout must be 0 .no limit. or a number of seconds"):
        Monitor(handler_timeout=bad)
    mon = Monitor()
    assert mon.handler_timeout == 1.0
    with pytest.raises(MosError, match="handler_timeout must be"):
        mon.handler_timeout = bad
    mon.handler_timeout = 2
    assert mon.handler_timeout == 2.0


def test_not_in_the_main_thread(pcap: Path) -> None:
    """A run in another thread has no watchdog (signals are handled in the main thread only): a slow
    handler is not interrupted, and nothing breaks."""
    mon = Monitor(handler_timeout=0.05)
    mon.on(Event.CONN_NEW_DATA, lambda c, e: time.sleep(0.1) if e.data.startswith(b"GET /stuck") else None)
    out: Dict[str, int] = {}
    t = threading.Thread(target=lambda: out.update(mon.run_pcap(str(pcap))))
    t.start()
    t.join(timeout=30)
    assert out["handler_timeouts"] == 0 and out["conns_ended"] == N_CONNS


def test_the_signal_handler_is_put_back_and_the_thread_ends(pcap: Path) -> None:
    before = {s: signal.getsignal(s) for s in range(signal.SIGRTMIN, signal.SIGRTMAX + 1)}
    threads = _thread._count()
    Monitor(handler_timeout=0.05).run_pcap(str(pcap))
    assert {s: signal.getsignal(s) for s in before} == before
    end = time.monotonic() + 2
    while _thread._count() > threads and time.monotonic() < end:
        time.sleep(0.01)  # (it released its lock just before returning)
    assert _thread._count() == threads


# ---- stopping (the live path's StopFlag, in process) ----------------------------------------------------


class _StopSoon:
    """SIGUSR1 handled by a live run's StopFlag, sent ``after`` seconds once ``ready`` is set: to the
    process (``kill``), or to a thread other than the main one (``elsewhere``: as kill(1) may do when an
    app has threads; the main thread hears of it through the watchdog)."""

    def __init__(self, after: float = 0.05, elsewhere: bool = False) -> None:
        self.flag = StopFlag()
        self.ready = threading.Event()
        self.sent = 0.0
        self._after = after
        self._elsewhere = elsewhere
        self._old = signal.signal(signal.SIGUSR1, self.flag)
        self._t = threading.Thread(target=self._send, daemon=True)
        self._t.start()

    def _send(self) -> None:
        if self.ready.wait(20):
            time.sleep(self._after)
            self.sent = time.monotonic()
            if self._elsewhere:
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # this thread takes it
            else:
                os.kill(os.getpid(), signal.SIGUSR1)

    def close(self) -> None:
        self._t.join(timeout=30)
        signal.signal(signal.SIGUSR1, self._old)


@pytest.fixture(params=[False, True], ids=["to-the-process", "to-another-thread"])
def stop_soon(request: pytest.FixtureRequest) -> Iterator[_StopSoon]:
    s = _StopSoon(elsewhere=request.param)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("how", ["loop", "sleep"])
def test_a_stop_signal_interrupts_the_handler_at_once(pcap: Path, how: str, stop_soon: _StopSoon) -> None:
    """No budget (handler_timeout=0): the stop signal alone interrupts the stuck handler, at once."""
    mon = Monitor(handler_timeout=0)
    done: List[float] = []

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def request(conn: Any, ev: Any) -> None:
        if ev.data.startswith(b"GET /stuck"):
            stop_soon.ready.set()
            try:
                _stuck(how)
            finally:
                done.append(time.monotonic())

    st = mon.run_pcap(str(pcap))
    assert stop_soon.flag.flag and done and done[0] - stop_soon.sent < 0.05
    assert st["handler_timeouts"] == 1 and st["conns_ended"] == N_CONNS


def test_stopping_budget_then_no_more_handlers(tmp_path: Path, stop_soon: _StopSoon,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """After the signal each handler has 0.1 s; from 1 s after it none is called, each call not made is
    counted and said; the handlers are back for the next run."""
    pcap = _capture(tmp_path / "many.pcap", n=40, stuck=0)
    mon = Monitor(handler_timeout=0)
    calls: List[float] = []
    filtered: List[float] = []

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn: Any, ev: Any) -> None:
        stop_soon.ready.set()
        calls.append(time.monotonic())
        time.sleep(5)

    def flt(conn: Any, ev: Any) -> bool:
        filtered.append(time.monotonic())
        return False

    mon.on(mon.define_event(Event.CONN_NEW_DATA, flt), lambda c, e: None)

    t0 = time.monotonic()
    st = mon.run_pcap(str(pcap))
    took = time.monotonic() - stop_soon.sent
    assert took < wd.STOP_GRACE + 0.3, took
    assert time.monotonic() - t0 < 3
    after = [c for c in calls if c > stop_soon.sent]
    assert 5 <= len(after) <= wd.STOP_GRACE / wd.STOP_BUDGET + 1  # each interrupted after its 0.1 s
    assert all(c < stop_soon.sent + wd.STOP_GRACE + 0.05 for c in after)
    assert st["handler_timeouts"] == len(calls)
    assert len(calls) - 1 <= len(filtered) <= len(calls)  # the filter ran after each handler, until the deadline
    # 2 data events a connection, each a handler and a filter: every call not made is counted
    assert st["handler_calls_skipped_at_stop"] == 2 * 80 - len(calls) - len(filtered)
    assert "handler call(s) not made" in capsys.readouterr().err
    before = len(calls), len(filtered)
    mon.handler_timeout = 0.02
    mon.run_pcap(str(pcap))  # the handlers are back for the next run (each interrupted, but called)
    assert (len(calls), len(filtered)) == (before[0] + 80, before[1] + 80)


def test_a_handler_that_swallows_the_interruption_is_ended(pcap: Path, stop_soon: _StopSoon) -> None:
    """One that catches HandlerTimeout and carries on gets KeyboardInterrupt STOP_HARD after the signal."""
    mon = Monitor(handler_timeout=0)

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def request(conn: Any, ev: Any) -> None:
        if ev.data.startswith(b"GET /stuck"):
            stop_soon.ready.set()
            while True:
                try:
                    time.sleep(0.01)
                except Exception:
                    pass

    with pytest.raises(KeyboardInterrupt):
        mon.run_pcap(str(pcap))
    took = time.monotonic() - stop_soon.sent
    assert wd.STOP_HARD <= took < wd.STOP_HARD + 0.2, took


# ---- the command line, offline ---------------------------------------------------------------------------

STUCK_APP = """
    import os, time
    from mos import Event, Side

    HOW = os.environ.get("MOS_TEST_HOW", "loop")
    MARK = os.environ["MOS_TEST_MARK"]

    def init(mon):
        @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
        def request(conn, ev):
            if b"/stuck" in ev.data:
                with open(MARK, "a") as f:
                    f.write(f"{os.getpid()}\\n")
                if HOW == "loop":
                    while True:
                        pass
                elif HOW == "sleep":
                    time.sleep(60)
                elif HOW == "swallow":
                    while True:
                        try:
                            time.sleep(0.01)
                        except Exception:
                            pass
                elif HOW == "deaf":
                    while True:
                        try:
                            time.sleep(0.01)
                        except BaseException:
                            pass

    def finish(mon):
        print("app finish ran")
"""


def _write_app(tmp: Path) -> str:
    p = tmp / "stuck_app.py"
    p.write_text(textwrap.dedent(STUCK_APP))
    return str(p)


def _cli(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mos.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the handler never got stuck"
        time.sleep(0.02)


def test_cli_handler_timeout(pcap: Path, tmp_path: Path) -> None:
    app = _write_app(tmp_path)
    env = {"MOS_TEST_MARK": str(tmp_path / "mark"), "MOS_TEST_HOW": "sleep"}
    r = _cli("run", app, "--pcap", str(pcap), "--handler-timeout", "0.2", "--stats", "--no-progress", env=env)
    assert r.returncode == 1, r.stderr  # a handler error, as for any exception
    assert "HandlerTimeout: ran longer than handler_timeout (0.2 s)" in r.stderr
    assert " handler_timeouts " in r.stderr.replace("handler_timeouts", " handler_timeouts ")
    assert "app finish ran" in r.stdout and "1 handler error(s)" in r.stderr
    for bad, msg in (("-1", "Invalid value for '--handler-timeout'"), ("0.001", "handler_timeout must be 0")):
        r = _cli("run", app, "--pcap", str(pcap), "--handler-timeout", bad, env=env)
        assert r.returncode == 2 if bad == "-1" else r.returncode == 1
        assert msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "--handler-timeout" in _cli("run", "--help").stdout
    assert "--handler-timeout" not in _cli("streams", "--help").stdout  # no app code runs there


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_offline_signal_during_a_stuck_handler(pcap: Path, tmp_path: Path, sig: int) -> None:
    """Ctrl-C (or SIGTERM) while a handler is stuck, with no budget: the run ends at once."""
    app = _write_app(tmp_path)
    mark = tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, "-m", "mos.cli", "run", app, "--pcap", str(pcap), "--handler-timeout",
                             "0", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), MOS_TEST_MARK=str(mark)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(mark, proc)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 1.0, took
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "mos-xdp: interrupted" in err, err
    else:
        assert proc.returncode == -signal.SIGTERM


# ---- live, inline in namespaces --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tl.Inline]:
    """tests/test_live.py's inline topology: client, mos-xdp in the middle, http.server (its own subnet)."""
    require_root()
    reap_stale()
    www = tmp_path_factory.mktemp("www")
    (www / "big.bin").write_bytes(os.urandom(BIG))
    (www / "small.txt").write_bytes(tl.SMALL)
    (www / "stuck").write_bytes(b"never served while the handler is stuck\n")
    with Topology() as topo:
        c, m, s = topo.netns("c"), topo.netns("m"), topo.netns("s")
        tag = topo.tag[-6:]
        mi, mo, lc, ls = f"mi{tag}", f"mo{tag}", f"lc{tag}", f"ls{tag}"
        topo.veth(c, lc, m, mi, f"{tl.CLIENT}/24", None, extra_a=[f"{tl.CLIENT2}/24"])
        topo.veth(m, mo, s, ls, None, f"{tl.SERVER}/24")
        for ns, dev in ((c, lc), (s, ls)):
            ns.ethtool(dev, XDP_END_HOST)
        topo.spawn(s, sys.executable, "-m", "http.server", "-b", tl.SERVER, str(tl.PORT), "-d", str(www),
                   stop_signal=signal.SIGKILL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def _leftovers() -> None:
            with m.entered():
                xdp.detach(mi)

        topo.on_close(_leftovers)
        deadline = time.time() + 10
        while s.tcp_connect(tl.SERVER, tl.PORT, b"GET /small.txt HTTP/1.0\r\n\r\n", timeout=1) is None:
            assert time.time() < deadline, "the HTTP server did not come up"
            time.sleep(0.2)
        yield tl.Inline(topo, c, m, s, mi, mo, www)


def _stuck_curl(inline: tl.Inline, out: Path) -> subprocess.Popen:
    """curl GET /stuck in the background (bounded): its request makes the app's handler hang."""
    return inline.c.popen("curl", "-sS", "--interface", tl.CLIENT, "-o", str(out), "--max-time", "8",
                          f"http://{tl.SERVER}:{tl.PORT}/stuck", stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.netns
def test_live_stuck_handler_stalls_the_others_for_a_budget_only(inline: tl.Inline, tmp_path: Path) -> None:
    """A handler loops forever on one connection's request: it is interrupted after --handler-timeout, and
    transfers on other connections complete meanwhile, in bounded time."""
    mark = tmp_path / "mark"
    run = inline.run(_write_app(tmp_path), "--handler-timeout", "0.5", "--stats",
                     env={"MOS_TEST_MARK": str(mark), "MOS_TEST_HOW": "loop"})
    stuck = None
    try:
        stuck = _stuck_curl(inline, tmp_path / "stuck.out")
        _wait_for(mark, run.proc, timeout=20)
        t0 = time.monotonic()
        for i in range(3):
            r = inline.curl("small.txt", tmp_path / f"s{i}.txt", max_time=10)
            assert r.returncode == 0 and (tmp_path / f"s{i}.txt").read_bytes() == tl.SMALL, r.stderr
        r = inline.curl("big.bin", tmp_path / "big.bin", max_time=30)
        assert r.returncode == 0, r.stderr
        took = time.monotonic() - t0
        assert stuck.wait(timeout=15) == 0  # its request passed once the handler was interrupted
    finally:
        if stuck is not None:
            _reap(stuck)
        rc = run.stop()
    assert rc == 1, run.stderr  # a handler error, reported as such
    assert (tmp_path / "big.bin").read_bytes() == (inline.www / "big.bin").read_bytes()
    assert took < 20, took
    assert "HandlerTimeout: ran longer than handler_timeout (0.5 s)" in run.stderr
    eng = run.engine_counters()
    assert eng["handler_timeouts"] == 1 and eng["handler_errors"] == 1, eng
    inline.assert_clean()


def _sigterm_exit(run: tl.LiveRun) -> float:
    """SIGTERM the run; seconds from the signal to the process's exit."""
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    try:
        run.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        run.kill()
        pytest.fail(f"mos-xdp run did not exit 30 s after SIGTERM:\n{run.stderr}")
    took = time.monotonic() - t0
    run.stop()  # (collects the output)
    return took


@pytest.mark.netns
@pytest.mark.parametrize("how,workers", [("loop", 1), ("sleep", 1), ("swallow", 1), ("loop", 2), ("deaf", 2)])
def test_live_sigterm_ends_a_stuck_run_within_2s(inline: tl.Inline, tmp_path: Path, how: str,
                                                 workers: int) -> None:
    """No budget (--handler-timeout 0), a handler stuck: SIGTERM ends the run within 2 s of the signal,
    XDP detached and the counters printed. ``swallow`` catches HandlerTimeout (KeyboardInterrupt ends it);
    ``deaf`` catches everything: with workers the parent kills that worker, and says so."""
    mark = tmp_path / "mark"
    extra = ["--workers", str(workers)] if workers > 1 else []
    run = inline.run(_write_app(tmp_path), "--handler-timeout", "0", *extra,
                     env={"MOS_TEST_MARK": str(mark), "MOS_TEST_HOW": how})
    stuck = _stuck_curl(inline, tmp_path / "stuck.out")
    try:
        _wait_for(mark, run.proc, timeout=20)
        time.sleep(0.2)
        took = _sigterm_exit(run)
    finally:
        run.kill()
        _reap(stuck)
    err = run.stderr
    assert took < 2.0, f"{took:.2f} s from SIGTERM to exit:\n{err}"
    assert "mos-xdp: stopped; final counters" in err and "detached XDP program" in err, err
    inline.assert_clean()
    if how == "deaf":
        assert "did not exit" in err and "killed (SIGKILL)" in err, err
        assert run.proc.returncode == 1
    elif how == "swallow":
        assert run.proc.returncode == 130 and "mos-xdp: interrupted" in err, err
        assert "a handler is still running 1.3 s after the stop signal" in err
    else:
        assert "HandlerTimeout: interrupted: the run is stopping (SIGTERM)" in err, err
        assert run.proc.returncode == 1 and "app finish ran" in run.stdout, err
    sys.stderr.write(f"[{how}, {workers} worker(s)] SIGTERM to exit: {took:.2f} s\n")
