"""Filters for user-defined events (:meth:`mos.Monitor.define_event`): run in C, or in Python."""

from __future__ import annotations

import operator
from collections import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Tuple, Union

from .abi import ffi
from .errors import MosError

if TYPE_CHECKING:
    from .connection import Connection, EventInfo

PyFilter = Callable[[Optional["Connection"], "EventInfo"], bool]
"""A filter written in Python: ``filter(conn, ev) -> bool``."""

_C_FILTER = dict(ffi.typeof("struct mos_filter").fields)


def _c_max(field: str) -> int:
    """The largest value the C struct's unsigned integer field ``field`` holds."""
    return (1 << (8 * ffi.sizeof(_C_FILTER[field].type))) - 1


# an array's length, unless its count field is narrower (one byte each today): whichever runs out first
FILTER_MAX_PORTS: int = min(_C_FILTER["ports"].type.length, _c_max("nports"))
FILTER_MAX_PATTERN: int = min(_C_FILTER["pattern"].type.length, _c_max("pattern_len"))
FILTER_MAX_FLAGS: int = min(_c_max("flags_mask"), _c_max("flags_value"))
FILTER_MAX_PORT: int = (1 << (8 * ffi.sizeof(_C_FILTER["ports"].type.item))) - 1

Ports = Union[int, Iterable[int]]
"""One port, or any iterable of them."""
Pattern = Union[bytes, bytearray, memoryview, str]
"""Bytes to look for; a ``str`` is encoded as UTF-8."""


def _is_index(val: object) -> bool:
    """An integer (int, or a type such as numpy's that says it is one), but not a bool."""
    return not isinstance(val, bool) and hasattr(type(val), "__index__")


def _int_arg(name: str, val: object, hi: int) -> int:
    """``val`` as an int in [0, hi], or one MosError naming the argument."""
    # bool is an int subclass: Filter(flags=True) is a mistake, not 0x01
    if not _is_index(val):
        raise MosError(f"Filter({name}=...) takes an int (TCP flag bits, 0 to {hi:#x}), "
                       f"not {type(val).__name__} {val!r}")
    val = operator.index(val)  # type: ignore[arg-type]
    if not 0 <= val <= hi:
        raise MosError(f"Filter({name}=...): {val:#x} is not between 0 and {hi:#x} (the TCP flags byte)")
    return val


def _ports_arg(ports: object) -> Tuple[int, ...]:
    """``ports`` as a tuple of distinct ports (one int is one port), or one MosError."""
    if _is_index(ports):
        items: Iterable[object] = (ports,)
    elif isinstance(ports, (str, bytes, bytearray)) or not isinstance(ports, abc.Iterable):
        # a str is iterable too: Filter(ports="80") would otherwise fail on its characters
        raise MosError(f"Filter(ports=...) takes a port number or a list of them, "
                       f"not {type(ports).__name__} {ports!r}")
    else:
        items = ports
    out = []
    for item in items:
        if not _is_index(item):
            raise MosError(f"Filter(ports=...): every port is an int, not {type(item).__name__} {item!r}")
        p = operator.index(item)  # type: ignore[arg-type]
        if not 0 <= p <= FILTER_MAX_PORT:
            raise MosError(f"Filter(ports=...): port {p} is not between 0 and {FILTER_MAX_PORT}")
        out.append(p)
    uniq = tuple(dict.fromkeys(out))
    if len(uniq) > FILTER_MAX_PORTS:
        raise MosError(f"Filter(ports=...): at most {FILTER_MAX_PORTS} ports (the engine's limit), "
                       f"not {len(uniq)}; use a Python filter for more")
    return uniq


def _pattern_arg(contains: object) -> bytes:
    """``contains`` as bytes (a str as its UTF-8 encoding), or one MosError."""
    if isinstance(contains, str):
        pat = contains.encode()
    elif isinstance(contains, (bytes, bytearray, memoryview)):
        pat = bytes(contains)
    else:
        raise MosError(f"Filter(contains=...) takes bytes (or a str, matched as UTF-8), "
                       f"not {type(contains).__name__} {contains!r}")
    if len(pat) > FILTER_MAX_PATTERN:
        raise MosError(f"Filter(contains=...): at most {FILTER_MAX_PATTERN} bytes (the engine's limit), "
                       f"not {len(pat)}; use a Python filter for a longer pattern")
    return pat


@dataclass(frozen=True, init=False)
class Filter:
    """A filter run in C for a user-defined event (:meth:`Monitor.define_event`).

    All given conditions must hold: ``flags`` / ``flags_mask`` on the packet's TCP flags (the flags in
    ``flags_mask`` must equal those in ``flags``; ``flags_mask`` defaults to ``flags``), ``ports``
    (source or destination port in the set: one port or an iterable of at most :data:`FILTER_MAX_PORTS`),
    ``contains`` (the new bytes of a CONN_NEW_DATA event, or the packet's payload for other events,
    contain these bytes; at most :data:`FILTER_MAX_PATTERN`).

    ``contains`` may be a ``str``: it is matched as its UTF-8 bytes. Protocols a filter looks into
    (HTTP, SMTP, TLS SNI) are ASCII on the wire, and UTF-8 is the one encoding that agrees with ASCII
    and is the usual one for the rest, so encoding is what ``Filter(contains="GET /")`` can only mean;
    refusing it would only make the user write ``b"GET /"``. The field itself always holds bytes.
    Every mistake in the arguments raises one :class:`~mos.errors.MosError` naming the argument.
    """

    flags: int
    flags_mask: Optional[int]
    ports: Tuple[int, ...]
    contains: bytes

    def __init__(self, *, flags: int = 0, flags_mask: Optional[int] = None, ports: Ports = (),
                 contains: Pattern = b"") -> None:
        fl = _int_arg("flags", flags, FILTER_MAX_FLAGS)
        mask = None if flags_mask is None else _int_arg("flags_mask", flags_mask, FILTER_MAX_FLAGS)
        if mask is not None and fl & ~mask:
            # those bits would never be compared: the filter would not test what it says
            raise MosError(f"Filter(flags={fl:#x}, flags_mask={mask:#x}): flags has bits outside flags_mask "
                           f"({fl & ~mask:#x}); flags_mask selects the bits compared, flags their values")
        # frozen: the normalised values are set once, here
        object.__setattr__(self, "flags", fl)
        object.__setattr__(self, "flags_mask", mask)
        object.__setattr__(self, "ports", _ports_arg(ports))
        object.__setattr__(self, "contains", _pattern_arg(contains))

    def _mask(self) -> int:
        return self.flags if self.flags_mask is None else self.flags_mask

    def to_c(self) -> Any:
        """The filter as the engine's ``struct mos_filter``."""
        f = ffi.new("struct mos_filter *")
        f.flags_mask = self._mask()
        f.flags_value = self.flags
        f.nports = len(self.ports)
        for i, p in enumerate(self.ports):
            f.ports[i] = p
        f.pattern_len = len(self.contains)
        ffi.memmove(f.pattern, self.contains, len(self.contains))
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
