"""How exceptions raised by an app's code (handlers, Python filters, timer callbacks) are reported.

A :class:`~mos.errors.HandlerTimeout` (the watchdog interrupted a handler that ran too long, or that was
running at a stop signal: :mod:`mos.watchdog`) is one of them, reported the same way; it is also counted
apart (:attr:`HandlerErrors.timeouts`).

A handler that fails on every event must not bury the run in tracebacks or slow it down: each handler's
first few failures are printed in full with the connection they failed on; after that, its failures are
only counted, with at most one line per handler every few seconds of wall-clock time saying how many
more there were, and the totals at the end (:meth:`HandlerErrors.summary`).

"A handler" is its code, not the function object: closures made per connection
(``conn.on(Event.CONN_NEW_DATA, lambda c, e: ...)``) are one handler, reported as one.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple, Type, Union

from .errors import HandlerTimeout
from .watchdog import is_ours

__all__ = ["ExcInfo", "HandlerErrors", "FIRST_TRACEBACKS", "REPORT_INTERVAL"]

ExcInfo = Union[Tuple[Type[BaseException], BaseException, Optional[TracebackType]], Tuple[None, None, None]]
"""What :func:`sys.exc_info` returns."""

FIRST_TRACEBACKS = 5
"""Failures of one handler printed in full, with their traceback."""
REPORT_INTERVAL = 5.0
"""Seconds (wall clock) between two lines about one handler's further failures."""


@dataclass
class _Record:
    """One handler's failures."""

    name: str
    what: str
    first_on: str
    first_error: str
    count: int = 0
    reported: int = 0
    """Failures already told about (in full, in a periodic line)."""
    last_line: float = 0.0
    last_type: Optional[type] = None
    timeouts: int = 0


def _target(fn: Any) -> Any:
    """The function behind a callable: a partial's, a bound method's."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__func__", fn)


def _code(f: Any) -> Any:
    """The code object of a function, or of a Python class's ``__call__`` for a callable instance."""
    code = getattr(f, "__code__", None)
    if code is None:
        call = next((k.__dict__["__call__"] for k in type(f).__mro__ if "__call__" in k.__dict__), None)
        code = getattr(call, "__code__", None)
    return code


def _key(fn: Any) -> Any:
    """What makes two callables one handler: their code (closures, bound methods and partials of one
    function share it, so handlers made per connection are one handler, not a handler each)."""
    f = _target(fn)
    code = _code(f)
    if code is not None:
        return code
    try:
        hash(f)
    except TypeError:
        return id(f)
    return f


def _name(fn: Any) -> str:
    """A handler's name as an author finds it: qualified name (from its innermost enclosing function),
    and file:line for a lambda."""
    f = _target(fn)
    name = str(getattr(f, "__qualname__", None) or getattr(type(f), "__qualname__", None) or repr(fn))
    name = name.rsplit("<locals>.", 1)[-1]  # "App.on_data", not "init.<locals>.App.on_data"
    code = _code(f)
    if code is not None and "<lambda>" in name:
        name = f"{name} ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})"
    return name


def _trim_watchdog(tb: Optional[TracebackType]) -> None:
    """Leave the signal handler that raised a HandlerTimeout (this package's code) out of the end of its
    traceback: the last line shown is then the line of the app's code that was interrupted."""
    last_app = None
    while tb is not None:
        if not is_ours(tb.tb_frame.f_code):
            last_app = tb
        tb = tb.tb_next
    if last_app is not None:
        last_app.tb_next = None


def _one_line(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "no exception"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().replace("\n", " ")


class HandlerErrors:
    """Counts and reports the exceptions of an app's handlers, filters and timer callbacks.

    ``first``: failures of each handler printed in full; ``interval``: seconds between two lines about
    one handler's further failures; ``clock``: the wall clock (seconds, monotonic; injectable for tests);
    ``out``: where to write (default: :data:`sys.stderr` at the time of writing).

    Past a handler's first failures, :meth:`report` formats nothing: a dictionary lookup, two additions
    and a clock read, so a handler failing on every event costs the run about what the exception does.
    """

    def __init__(self, *, first: int = FIRST_TRACEBACKS, interval: float = REPORT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, out: Optional[TextIO] = None) -> None:
        if first < 0 or interval < 0:
            raise ValueError("first and interval must not be negative")
        self.first = first
        self.interval = interval
        self._clock = clock
        self._out = out
        self._by: Dict[Any, _Record] = {}
        self.count = 0
        """Failures reported, of every handler."""
        self.timeouts = 0
        """Those of them that were a :class:`~mos.errors.HandlerTimeout`."""

    def _write(self, text: str) -> None:
        (self._out if self._out is not None else sys.stderr).write(text)

    def report(self, fn: Any, conn_desc: str, exc_info: ExcInfo, *, what: str = "handler") -> None:
        """Count one failure of ``fn`` on ``conn_desc`` (e.g. ``"connection 3 (10.0.0.1:4000 -> ...)"``
        or ``"no connection"``); print it in full if it is among ``fn``'s first, else at most a line.

        ``exc_info`` is :func:`sys.exc_info` inside the ``except``; ``what`` names the kind of code in
        messages (``"handler"``, ``"filter of event 33"``, ``"timer callback"``).
        """
        self.count += 1
        key = (what, _key(fn))  # one function used as a handler and as a filter: two reports
        rec = self._by.get(key)
        if rec is None:
            rec = self._by[key] = _Record(_name(fn), what, conn_desc, _one_line(exc_info[1]),
                                          last_line=self._clock())
        rec.count += 1
        exc_type = exc_info[0]
        if exc_type is not None and issubclass(exc_type, HandlerTimeout):
            self.timeouts += 1
            rec.timeouts += 1
            _trim_watchdog(exc_info[2])
        if rec.count <= self.first:
            self._write(f"mos-xdp: {what} {rec.name!r} failed on {conn_desc}:\n")
            self._write("".join(traceback.format_exception(*exc_info)))
            rec.reported = rec.count
            if rec.count == self.first:
                rec.last_line = self._clock()  # the periodic lines count from the last traceback
                self._write(f"mos-xdp: further failures of {what} {rec.name!r} are counted, reported every "
                            f"{self.interval:g} s and summed up at the end\n")
            return
        rec.last_type = exc_type
        now = self._clock()
        if now - rec.last_line >= self.interval:
            self._periodic(rec, now)

    def _periodic(self, rec: _Record, now: float) -> None:
        more = rec.count - rec.reported
        last = f" (last: {rec.last_type.__name__})" if rec.last_type is not None else ""
        self._write(f"mos-xdp: {rec.what} {rec.name!r} failed {more} more time{'s' if more != 1 else ''} "
                    f"in {now - rec.last_line:.0f} s{last}; {rec.count} in all\n")
        rec.reported = rec.count
        rec.last_line = now

    def totals(self) -> List[Tuple[str, int]]:
        """``(handler name, failures)`` of every handler that failed, in the order they first failed."""
        return [(r.name, r.count) for r in self._by.values()]

    def summary(self) -> List[str]:
        """Write and return one line per handler that failed, with its total (nothing if none failed).

        The totals are since this object was made: calling it again (a second run) repeats earlier ones."""
        lines = [f"mos-xdp: {r.what} {r.name!r} failed {r.count} time{'s' if r.count != 1 else ''}"
                 f"{f', {r.timeouts} of them timed out' if r.timeouts else ''} "
                 f"(first on {r.first_on}: {r.first_error})" for r in self._by.values()]
        for line in lines:
            self._write(line + "\n")
        return lines
