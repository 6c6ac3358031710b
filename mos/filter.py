"""Filters for user-defined events (:meth:`mos.Monitor.define_event`): run in C, or in Python."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple, Union

from .abi import ffi
from .errors import MosError

if TYPE_CHECKING:
    from .connection import Connection, EventInfo

PyFilter = Callable[[Optional["Connection"], "EventInfo"], bool]
"""A filter written in Python: ``filter(conn, ev) -> bool``."""

_C_FILTER = dict(ffi.typeof("struct mos_filter").fields)
FILTER_MAX_PORTS: int = _C_FILTER["ports"].type.length
FILTER_MAX_PATTERN: int = _C_FILTER["pattern"].type.length


@dataclass(frozen=True)
class Filter:
    """A filter run in C for a user-defined event (:meth:`Monitor.define_event`).

    All given conditions must hold: ``flags`` / ``flags_mask`` on the packet's TCP flags (the flags in
    ``flags_mask`` must equal those in ``flags``; ``flags_mask`` defaults to ``flags``), ``ports``
    (source or destination port in the set), ``contains`` (the new bytes of a CONN_NEW_DATA event, or
    the packet's payload for other events, contain these bytes; at most 64).
    """

    flags: int = 0
    flags_mask: Optional[int] = None
    ports: Tuple[int, ...] = ()
    contains: bytes = b""

    def __post_init__(self) -> None:
        if len(self.ports) > FILTER_MAX_PORTS:
            raise MosError(f"a Filter takes at most {FILTER_MAX_PORTS} ports")
        if len(self.contains) > FILTER_MAX_PATTERN:
            raise MosError(f"a Filter's `contains` is at most {FILTER_MAX_PATTERN} bytes")
        for p in self.ports:
            if not 0 <= p <= 65535:
                raise MosError(f"bad port {p}")

    def _mask(self) -> int:
        return self.flags if self.flags_mask is None else self.flags_mask

    def to_c(self) -> Any:
        """The filter as the engine's ``struct mos_filter``."""
        f = ffi.new("struct mos_filter *")
        f.flags_mask = self._mask() & 0xFF
        f.flags_value = self.flags & self._mask() & 0xFF
        f.nports = len(self.ports)
        for i, p in enumerate(self.ports):
            f.ports[i] = p
        f.pattern_len = len(self.contains)
        for i, b in enumerate(self.contains):
            f.pattern[i] = b
        return f

    def matches(self, conn: Optional[Connection], ev: EventInfo) -> bool:
        """The same test in Python (used when the base event itself is computed in Python)."""
        pkt = ev.packet
        mask = self._mask()
        if mask and (pkt is None or (pkt.tcp_flags & mask) != (self.flags & mask)):
            return False
        if self.ports and (pkt is None or (pkt.sport not in self.ports and pkt.dport not in self.ports)):
            return False
        if self.contains:
            hay = ev.data if ev.data is not None else (pkt.payload if pkt is not None else b"")
            return self.contains in hay
        return True


@dataclass
class UserEvent:
    """A user-defined event: raised when ``base`` is and ``filter`` holds; ``in_c`` when the engine raises it."""

    id: int
    base: int
    filter: Union[Filter, PyFilter, None]
    in_c: bool
