"""The AF_XDP packet source: received frames go through the engine in C (``mos_xsk_pump``).

:class:`XskSource` is a :class:`mos.source.PacketSource` that does not hand batches to Python: the C pump
receives, feeds the engine and recycles frames on its own, and returns only when a batch raised something
for Python, a timer is due, or a time slice is up. :meth:`XskSource.pump` then runs the handlers through
the monitor's :class:`mos.monitor.EnginePort`, applies the batch's verdicts, and keeps packet time moving
(timers, idle expiry) on the wall clock.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any, Optional, Tuple

from ..abi import ffi, lib
from ..source import BATCH
from ..watchdog import stop_requested
from .session import LiveError, LiveSession, set_current

if TYPE_CHECKING:
    from ..monitor import EnginePort

POLL_MS = 100
TICK_NS = 1_000_000_000
PUMP_NS = 20_000_000  # at most this long in C before Python checks signals, timers, idle expiry


class StopFlag:
    """Set by SIGINT/SIGTERM (a signal handler). The run going on stops promptly whatever its handlers do:
    the one running is interrupted (:func:`mos.watchdog.stop_requested`: HandlerTimeout raised into it
    from here), the next ones get a short budget, and a second from the first signal on none is called."""

    def __init__(self) -> None:
        self.flag = False
        self.signum = 0
        self.at = 0.0
        """When the first signal came (monotonic seconds)."""

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.flag:
            self.at = time.monotonic()
        self.flag = True
        self.signum = signum
        stop_requested(frame, signal.Signals(signum).name)


class XskSource:
    """One worker's AF_XDP sockets as a packet source, until ``stop`` is set or ``deadline`` (monotonic
    seconds, 0: none) passes."""

    read_error: Optional[str] = None

    def __init__(self, session: LiveSession, stop: StopFlag, batch: int = BATCH, deadline: float = 0.0) -> None:
        self.session: Optional[LiveSession] = session
        self._xsk = session.xsk
        self._worker = session.worker
        self._stop = stop
        self._batch = batch
        self._deadline = deadline
        self._pkts = ffi.new("struct mos_pkt[]", batch)
        self._fed = ffi.new("uint32_t *")
        self._next_tick = 0
        self._started = False

    def open(self) -> None:
        """Binds this process to its worker's sockets."""
        if lib.mos_xsk_set_worker(self._xsk, self._worker) != 0:
            raise LiveError(f"bad worker {self._worker}")
        set_current(self.session)

    def stable_region(self) -> Optional[Tuple[Any, Any]]:
        """None: frames go back to the kernel after their batch."""
        return None

    def progress(self) -> Optional[Tuple[int, int]]:
        """None: live traffic has no size."""
        return None

    def pump(self, port: EnginePort) -> bool:
        """Receive and process until Python has something to do; False once the run should stop."""
        if not self._started:
            self._started = True
            now = time.time_ns()
            port.anchor_timers(now)
            self._next_tick = now + TICK_NS
        if self._stop.flag or port.stopped:
            return False
        pkts, fed = self._pkts, self._fed
        # C runs the loop (receive, engine, frames back) until a batch raises something for Python
        n = lib.mos_xsk_pump(self._xsk, port.engine, pkts, self._batch, POLL_MS, port.next_due(), PUMP_NS, fed)
        if n < 0:
            raise LiveError(f"AF_XDP receive failed: {os.strerror(ffi.errno)}")
        try:
            if n:
                port.dispatch()  # the events of the packets the engine took
                if fed[0] < n:  # it stopped early (a timer is due, or the queue filled): the rest
                    port.feed(lib.MOS_DLT_EN10MB, pkts + fed[0], n - fed[0])
        finally:
            if n:
                lib.mos_xsk_done(self._xsk)  # verdicts applied only now: after every handler of the batch ran
        now = time.time_ns()
        due = port.next_due()
        if due and due <= now:
            port.fire_timers(now)
        if now >= self._next_tick:
            port.advance(now)  # idle expiry without packets
            self._next_tick = now + TICK_NS
        return not (self._deadline and time.monotonic() >= self._deadline)

    def close(self) -> None:
        """This process runs no session any more."""
        set_current(None)
