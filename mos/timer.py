"""Timers in packet time: :class:`Timer` and the queue :class:`mos.Monitor` keeps them in."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List


@dataclass(order=True)
class Timer:
    """A one-shot or periodic timer in packet time (for captures) -- see :meth:`Monitor.add_timer`."""

    due: int
    seq: int
    interval: int = field(compare=False)
    callback: Callable[..., Any] = field(compare=False)
    periodic: bool = field(compare=False, default=False)
    cancelled: bool = field(compare=False, default=False)
    conn: Any = field(compare=False, default=None)
    """The connection of a per-connection timer (:meth:`Connection.add_timer`), else None."""
    with_now: bool = field(compare=False, default=True)
    """The callback takes the time it fires at (``callback(monitor or conn, now)``)."""

    def cancel(self) -> None:
        """The timer will not fire (again)."""
        self.cancelled = True


class TimerQueue:
    """Timers by due time (ns). Timers added before the first packet wait unanchored: packet time starts
    with the first packet, so their delay counts from it."""

    def __init__(self) -> None:
        self._heap: List[Timer] = []
        self._unanchored: List[Timer] = []
        self._seq = itertools.count()

    def add(self, now: int, delay_ns: int, callback: Callable[..., Any], periodic: bool) -> Timer:
        """A timer due ``delay_ns`` after ``now`` (0: no packet yet, anchored later)."""
        t = Timer(now + delay_ns, next(self._seq), delay_ns, callback, periodic)
        if now == 0:
            self._unanchored.append(t)
        else:
            heapq.heappush(self._heap, t)
        return t

    @property
    def unanchored(self) -> bool:
        """Some timers wait for the first packet's time."""
        return bool(self._unanchored)

    def anchor(self, first_ts: int) -> None:
        """Packet time starts at ``first_ts``: the waiting timers become due relative to it."""
        for t in self._unanchored:
            t.due += first_ts
            heapq.heappush(self._heap, t)
        self._unanchored.clear()

    def next_due(self) -> int:
        """The earliest due time, or 0 when no timer is pending."""
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
        return heap[0].due if heap else 0

    def pop_due(self, now: int) -> Iterator[Timer]:
        """The timers due at ``now``, in order; a periodic one is re-armed after the caller ran it (the
        next tick after a silence in the traffic is the next period after ``now``)."""
        heap = self._heap
        while heap and heap[0].due <= now:
            t = heapq.heappop(heap)
            if t.cancelled:
                continue
            yield t
            if t.periodic and not t.cancelled:
                t.due += t.interval * max(1, (now - t.due) // t.interval + 1)
                heapq.heappush(heap, t)
