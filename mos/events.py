"""Names a middlebox author thinks in: events, endpoint sides, hook points, end reasons, TCP states.

The numeric values are shared with the C engine (``userspace/mos_engine.h``).
"""

from __future__ import annotations

import enum


class Event(enum.IntEnum):
    """Built-in events, named as in mOS (plus DATA_GAP). User-defined events get ids from 32 up."""

    PKT_IN = 0
    """A packet of a tracked connection, raised at each hook (sender's and receiver's side)."""
    CONN_START = 1
    """A connection began to be tracked (its first packet, normally the client's SYN)."""
    CONN_NEW_DATA = 2
    """New in-order bytes reached a side's receive buffer; ``ev.side`` is the receiving side."""
    REXMIT = 3
    """A segment carried bytes already seen; ``ev.inconsistent`` says whether they differ."""
    TCP_STATE_CHANGE = 4
    """One endpoint's TCP state changed (``ev.side``; ``ev.old_state`` -> ``ev.new_state``)."""
    CONN_END = 5
    """The connection ended; raised exactly once, with ``ev.reason`` (an :class:`EndReason`)."""
    ORPHAN = 6
    """A packet that belongs to no tracked connection (``conn`` is None)."""
    ERROR = 7
    """An anomaly on a connection: out-of-window segment or RST, buffer limit, memory cap."""
    DATA_GAP = 8
    """Bytes that will never arrive: ``ev.offset``/``ev.length`` in the receiving side's stream."""


BUILTIN_EVENTS = len(Event)
USER_EVENT_BASE = 32
MAX_EVENTS = 64


class Side(enum.IntEnum):
    """An endpoint of a connection. ``BOTH`` is for subscriptions only."""

    CLIENT = 0
    SERVER = 1
    BOTH = 2

    @property
    def peer(self) -> Side:
        """The other endpoint."""
        if self is Side.BOTH:
            raise ValueError("Side.BOTH has no peer")
        return Side.SERVER if self is Side.CLIENT else Side.CLIENT


class Hook(enum.IntEnum):
    """When a handler runs, as in mOS: after the sender's stack or after the receiver's stack is updated."""

    SND = 0
    RCV = 1


class EndReason(enum.IntEnum):
    """Why a connection ended."""

    FIN = 1
    RST = 2
    TIMEOUT = 3
    EVICTION = 4
    EOF = 5
    """End of input (end of the capture, or the monitor was stopped)."""


class TcpState(enum.IntEnum):
    """The RFC 9293 TCP states of one endpoint."""

    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10


class ErrorKind(enum.IntEnum):
    """The ``ev.reason`` of an :data:`Event.ERROR`."""

    OUT_OF_WINDOW = 1
    """A data segment entirely outside the receiver's window."""
    RST_OUT_OF_WINDOW = 2
    """A RST whose sequence number is outside the receiver's window (ignored)."""
    BUFFER_LIMIT = 3
    """The side's buffer limit stopped bytes from being held."""
    MEMCAP = 4
    """The global reassembly memory cap stopped bytes from being held."""
    SEGMENT_LIMIT = 5
    """Too many out-of-order segments held on one side."""


class Policy(str, enum.Enum):
    """Overlap policies (which copy of overlapping bytes the stream keeps), as Suricata and Snort name them."""

    FIRST = "first"
    LAST = "last"
    BSD = "bsd"
    LINUX = "linux"
    OLD_LINUX = "old-linux"
    WINDOWS = "windows"
    VISTA = "vista"
    SOLARIS = "solaris"

    @property
    def code(self) -> int:
        """The engine's number for this policy."""
        return list(Policy).index(self)
