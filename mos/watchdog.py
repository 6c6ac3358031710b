"""The handler watchdog: app code that runs too long is interrupted, and a stop signal ends a run promptly.

Nothing is done per handler call (the dispatch loop is the hot path). :meth:`Monitor.run` starts a
:class:`Watchdog`: a thread (one that does not keep the process alive) that wakes every quarter of the
budget and looks at the stack of the thread running the monitor (``sys._current_frames``). The innermost
frame called from one of the monitor's call sites of app code (the functions marked
:func:`calls_app_code`) is the handler running.
When that same frame object is still there more than the budget after it was first seen, the thread sends
the monitor's thread a real-time signal. The interpreter runs the signal's Python handler in that thread,
between two bytecodes, with the frame it was executing; the handler checks that the stuck frame is still
on the stack and that no frame between it and the point of interruption is the stack's own code (raising
in the middle of the monitor's bookkeeping would corrupt the dispatch: the thread tries again at its next
wake-up), and raises :class:`~mos.errors.HandlerTimeout` there. It unwinds the handler into its call
site's ``except Exception``, which reports it like any exception of a handler. Unlike an asynchronous
exception (``PyThreadState_SetAsyncExc``), a signal also interrupts a blocking call: ``time.sleep``, a
socket's ``recv``, a lock's ``acquire`` (PEP 475 retries the call only when the handler does not raise).

A stop (SIGINT or SIGTERM of a live run, :func:`stop_requested` from its signal handler): the handler
running is interrupted at once, later ones get :data:`STOP_BUDGET` each, and from :data:`STOP_GRACE`
after the signal the monitor calls no handler any more (the watchdog calls its ``on_deadline``, which
counts every call not made). A handler still on the stack :data:`STOP_HARD` after the signal (it caught
HandlerTimeout and carried on) gets ``KeyboardInterrupt``, which ends the run. The thread also hears of
every signal the process handles (the signal module's wakeup fd): one that another thread of the app took
still interrupts a blocking call of the main thread, whose Python handler then runs at once.

Limits: code in C that holds the GIL (a long regular-expression match, a C extension's loop) cannot be
interrupted before it returns to Python; a handler that catches ``BaseException`` and carries on cannot
be stopped by it (with ``--workers``, the parent kills such a worker); it guards runs in the main thread
only (signals are handled there).
"""

from __future__ import annotations

import _thread
import importlib
import os
import select
import sys
import time
from types import CodeType, FrameType
from typing import Any, Callable, Dict, Optional, Set, Type, TypeVar

from .errors import HandlerTimeout, MosError

# The C modules under signal and threading: importing those two (signal's enums, threading's objects) costs
# some 20 million instructions, as much as a run's start-up otherwise (typeshed has no stub of _signal).
signal: Any = importlib.import_module("_signal")

__all__ = ["MIN_BUDGET", "STOP_BUDGET", "STOP_GRACE", "STOP_HARD", "Watchdog", "calls_app_code", "guarded_codes",
           "handler_frame", "is_ours", "stop_requested"]

STOP_BUDGET = 0.1
"""Seconds a handler may run once a stop was requested (whatever ``handler_timeout`` is, 0 included)."""
STOP_GRACE = 1.0
"""Seconds after a stop request from which no handler is called any more."""
STOP_HARD = 1.3
"""Seconds after a stop request from which a handler still running gets KeyboardInterrupt (it swallowed
HandlerTimeout)."""
STOP_TICK = 0.02
"""Seconds between two looks at the stack while stopping."""
MIN_BUDGET = 0.01
"""The smallest ``handler_timeout`` (but 0): the thread wakes every quarter of it."""

F = TypeVar("F", bound=Callable[..., Any])

_GUARDED: Set[CodeType] = set()
_MOS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ours_cache: Dict[CodeType, bool] = {}
_current: Optional[Watchdog] = None  # the watchdog of the run going on in this process (the innermost one)


def calls_app_code(fn: F) -> F:
    """Marks a function that calls app code (handlers, filters, timer callbacks) directly: a frame it
    called is a handler the watchdog may interrupt. Costs nothing at run time (``fn`` is returned as is)."""
    _GUARDED.add(fn.__code__)
    return fn


def guarded_codes() -> Set[CodeType]:
    """The code objects marked with :func:`calls_app_code` (a copy)."""
    return set(_GUARDED)


def is_ours(code: CodeType) -> bool:
    """Code of this package (the monitor's bookkeeping: never interrupted)."""
    got = _ours_cache.get(code)
    if got is None:
        got = _ours_cache[code] = os.path.abspath(code.co_filename).startswith(_MOS_DIR)
    return got


def handler_frame(frame: Optional[FrameType]) -> Optional[FrameType]:
    """The innermost frame of the stack from ``frame`` that a :func:`calls_app_code` function called and
    that is not this package's code: the app's handler running; None between handlers."""
    f = frame
    while f is not None:
        back = f.f_back
        if back is not None and back.f_code in _GUARDED and not is_ours(f.f_code):
            return f
        f = back
    return None


def _can_raise(frame: Optional[FrameType], target: FrameType) -> bool:
    """``target`` is on the stack from ``frame``, with only app code between (raising from ``frame``
    unwinds app code alone until the call site's ``except``)."""
    f = frame
    while f is not None:
        if f is target:
            return True
        if is_ours(f.f_code):
            return False
        f = f.f_back
    return False


def _free_signal() -> int:
    """A real-time signal without a handler (SIGALRM and the first real-time ones are left to apps)."""
    for sig in range(signal.SIGRTMIN + 4, signal.SIGRTMAX + 1):
        if signal.getsignal(sig) == signal.SIG_DFL:
            return sig
    raise MosError("no free real-time signal for the handler watchdog")


class Watchdog:
    """Interrupts app code that runs longer than ``budget`` seconds (0: only when stopping) in the thread
    that made it (the main thread); see the module's description. ``on_deadline`` is called (from the
    watchdog's thread, repeatedly: it must be idempotent) once no handler may be called any more."""

    def __init__(self, budget: float, on_deadline: Callable[[], None]) -> None:
        self.budget = budget
        self._on_deadline = on_deadline
        self._main = _thread.get_ident()
        self._sig = _free_signal()
        self._prev: Any = None
        self._running = _thread.allocate_lock()  # held by the thread while it runs
        self._rfd, self._wfd = -1, -1
        self._wakeup = False
        self._exit = False
        self._cand: Optional[FrameType] = None  # the handler frame seen at the last look
        self._since = 0.0  # when it was first seen (or last interrupted)
        self._target: Optional[FrameType] = None  # the frame the signal in flight is meant for
        self._exc: Type[BaseException] = HandlerTimeout
        self._why = ""
        self._outer: Optional[Watchdog] = None
        self.stop_at = 0.0
        """When a stop was requested (monotonic seconds), 0: not stopping."""

    # -- the monitor's thread ----------------------------------------------------------------------------
    def start(self) -> bool:
        """Install the signal's handler and start the thread; False (nothing done) outside the main
        thread, where signals cannot be handled."""
        global _current
        try:
            self._prev = signal.signal(self._sig, self._on_signal)
        except ValueError:
            return False
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A signal that lands on another thread of the app (SIGTERM from kill(1)) has its Python handler run
        # by the main thread only when that thread next runs bytecode: not while a handler sleeps or waits
        # in a recv. With the pipe as the wakeup fd (unless someone has one), the thread hears of every
        # signal and pokes the main thread, which then runs the handler (StopFlag: the stop) at once.
        self._wakeup = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False) == -1
        if not self._wakeup:
            signal.set_wakeup_fd(-1)  # (it returned someone else's, e.g. asyncio's: theirs back)
        # the thread takes none of the process's signals: SIGINT or SIGTERM landing on it would not
        # interrupt a blocking call of the main thread (EINTR), so a stuck sleep would not see the stop
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        self._running.acquire()
        try:
            _thread.start_new_thread(self._loop, ())
        except BaseException:
            self._running.release()
            self._restore()
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._outer, _current = _current, self
        return True

    def stop(self) -> None:
        """Stop the thread and put the signal's handler back."""
        global _current
        if _current is self:
            _current = self._outer
        self._exit = True
        self._wake()
        if self._running.acquire(timeout=5):
            self._restore()  # (the thread is gone: no signal of it can be in flight)
            self._running.release()
        else:  # pragma: no cover - a thread that did not end: its late signal must not kill the process
            signal.signal(self._sig, signal.SIG_IGN)
        self._cand = self._target = None

    def _restore(self) -> None:
        """The signal's old disposition, the wakeup fd as it was; the pipe closed."""
        if self._wakeup:
            theirs = signal.set_wakeup_fd(-1)
            if theirs != self._wfd:  # (set meanwhile by the app: it keeps it)
                signal.set_wakeup_fd(theirs)
        signal.signal(self._sig, self._prev if self._prev is not None else signal.SIG_DFL)
        os.close(self._rfd)
        os.close(self._wfd)

    def request_stop(self, frame: Optional[FrameType], why: str) -> None:
        """A stop signal came (its handler calls this, in the monitor's thread, with the frame it
        interrupted): interrupt the handler running now if it can be done from here, else the thread
        does it at its next look (every :data:`STOP_TICK` from now on)."""
        if not self.stop_at:
            self.stop_at = time.monotonic()
            self._wake()
        h = handler_frame(frame)
        if h is not None and _can_raise(frame, h):
            raise HandlerTimeout(f"interrupted: the run is stopping ({why})")

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        target = self._target
        if target is None or not _can_raise(frame, target):
            return  # it returned meanwhile, or the stack is in the monitor's code now: the thread retries
        self._target = None
        if self._exc is KeyboardInterrupt:
            sys.stderr.write(f"mos-xdp: a handler is still running {STOP_HARD:g} s after the stop signal (it "
                             f"caught HandlerTimeout and carried on): the run ends here\n")
        raise self._exc(self._why)

    # -- the watchdog's thread ---------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            os.write(self._wfd, b"\0")  # (a pipe: safe from a signal handler, unlike a lock; 0 is no signal)
        except OSError:
            pass

    def _interval(self) -> Optional[float]:
        if self.stop_at:
            return STOP_TICK
        return self.budget / 4 if self.budget else None

    def _loop(self) -> None:
        try:
            while not self._exit:
                ready, _, _ = select.select([self._rfd], [], [], self._interval())
                if ready:
                    try:
                        got = os.read(self._rfd, 64)
                    except OSError:
                        got = b""
                    if self._exit:
                        return
                    if any(b and b != self._sig for b in got):  # a signal (the wakeup fd's bytes)
                        signal.pthread_kill(self._main, self._sig)  # (no target: it only interrupts)
                if self._exit:
                    return
                self._tick()
        finally:
            self._running.release()

    def _tick(self) -> None:
        if _current is not self:
            return  # a run inside a handler of this one: its own watchdog looks after it
        now = time.monotonic()
        stopping = self.stop_at
        if stopping and now - stopping >= STOP_GRACE:
            self._on_deadline()
        top = sys._current_frames().get(self._main)
        h = handler_frame(top)
        del top
        if h is not self._cand:
            self._cand, self._since = h, now
            self._target = None
            return
        if h is None:
            return
        limit = STOP_BUDGET if stopping else self.budget
        if not limit or now - self._since < limit:
            return
        self._since = now  # one interruption per limit while it stays (a handler may catch it)
        if stopping and now - stopping >= STOP_HARD:
            self._exc, self._why = KeyboardInterrupt, "the run is stopping and a handler does not return"
        elif stopping:
            self._exc, self._why = HandlerTimeout, f"interrupted: the run is stopping ({STOP_BUDGET:g} s budget)"
        else:
            self._exc, self._why = HandlerTimeout, f"ran longer than handler_timeout ({self.budget:g} s)"
        self._target = h
        signal.pthread_kill(self._main, self._sig)


def stop_requested(frame: Optional[FrameType], why: str) -> None:
    """Called by a stop signal's handler (SIGINT, SIGTERM; ``why`` names it) with the frame it
    interrupted: the run going on in this process, if any, stops promptly (:meth:`Watchdog.request_stop`:
    may raise HandlerTimeout, from the signal handler, into the app's code it interrupted)."""
    dog = _current
    if dog is not None:
        dog.request_stop(frame, why)
