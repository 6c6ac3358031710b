"""The event API: a :class:`Monitor` runs the C engine over packets and calls Python handlers.

The C side owns the hot loop: it parses, tracks and reassembles every packet, and queues only the
events someone subscribed to. Python takes the queue once per batch of packets (one crossing per
batch, not per packet) and calls the handlers. Everything a handler can read about a connection is
still there while the batch's events are handled: bytes delivered, connections that just ended.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import struct
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from .events import (
    BUILTIN_EVENTS,
    MAX_EVENTS,
    USER_EVENT_BASE,
    EndReason,
    ErrorKind,
    Event,
    Hook,
    Policy,
    Side,
    TcpState,
)

try:
    from ._engine import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "the mos-xdp C engine is not built; run `bash scripts/setup.sh` (or `pip install -e .`)"
    ) from exc

Handler = Callable[["Connection", "EventInfo"], Any]
PyFilter = Callable[[Optional["Connection"], "EventInfo"], bool]
EventId = Union[Event, int]

_CONN_LEVEL = (int(Event.CONN_START), int(Event.CONN_END))
_BATCH = 256


class MosError(Exception):
    """A user-facing error of the stack (bad input, bad option, bad capture)."""


class StaleConnection(MosError):
    """The connection ended and its slot was reused: a handle kept past its CONN_END."""


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
        if len(self.ports) > 16:
            raise MosError("a Filter takes at most 16 ports")
        if len(self.contains) > 64:
            raise MosError("a Filter's `contains` is at most 64 bytes")
        for p in self.ports:
            if not 0 <= p <= 65535:
                raise MosError(f"bad port {p}")

    def _mask(self) -> int:
        return self.flags if self.flags_mask is None else self.flags_mask

    def to_c(self) -> Any:
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
class _UserEvent:
    id: int
    base: int
    filter: Union[Filter, PyFilter, None]
    in_c: bool


@dataclass(frozen=True)
class PacketView:
    """The decoded headers of a packet (the packet is only readable while its batch is handled)."""

    ts: float
    ip_version: int
    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    tcp_flags: int
    seq: int
    ack: int
    window: int
    mss: int
    wscale: Optional[int]
    sack_permitted: bool
    tsval: Optional[int]
    tsecr: Optional[int]
    vlan: Tuple[int, ...]
    caplen: int
    wirelen: int
    raw: bytes = field(repr=False)
    l3_offset: int = 0
    l4_offset: int = 0
    payload_offset: int = 0
    payload_len: int = 0

    @property
    def payload(self) -> bytes:
        """The transport payload."""
        return self.raw[self.payload_offset : self.payload_offset + self.payload_len]


def _addr(version: int, raw: Any) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, ffi.buffer(raw, 4)[:])
    return socket.inet_ntop(socket.AF_INET6, ffi.buffer(raw, 16)[:])


def info_dict(i: Any) -> Dict[str, Any]:
    """A ``struct mos_conn_info`` as the dict ``Connection.info()`` returns."""
    v = i.ip_version
    ca, sa = _addr(v, i.cli_addr), _addr(v, i.svr_addr)
    return {
        "id": int(i.id),
        "client": endpoint(v, ca, i.cli_port),
        "server": endpoint(v, sa, i.svr_port),
        "client_addr": ca,
        "server_addr": sa,
        "client_port": int(i.cli_port),
        "server_port": int(i.svr_port),
        "ip_version": int(v),
        "vlan": [int(i.vlan[k]) for k in range(i.nvlan)],
        "client_state": TcpState(i.cli_state).name,
        "server_state": TcpState(i.svr_state).name,
        "end": EndReason(i.end_reason).name if i.end_reason else None,
        "picked_up": bool(i.picked_up),
        "client_wscale": None if i.cli_wscale == 0xFF else int(i.cli_wscale),
        "server_wscale": None if i.svr_wscale == 0xFF else int(i.svr_wscale),
        "client_isn": int(i.cli_isn),
        "server_isn": int(i.svr_isn),
        "first_ts": i.first_ts_ns / 1e9,
        "last_ts": i.last_ts_ns / 1e9,
        "c2s_packets": int(i.pkts[0]),
        "s2c_packets": int(i.pkts[1]),
        "c2s_payload": int(i.bytes[0]),
        "s2c_payload": int(i.bytes[1]),
        "c2s_stream": int(i.stream_off[1]),
        "s2c_stream": int(i.stream_off[0]),
        "c2s_gap_bytes": int(i.gap_bytes[1]),
        "s2c_gap_bytes": int(i.gap_bytes[0]),
        "c2s_held": int(i.held_bytes[1]),
        "s2c_held": int(i.held_bytes[0]),
        "c2s_rexmit_packets": int(i.rexmit_pkts[0]),
        "s2c_rexmit_packets": int(i.rexmit_pkts[1]),
        "c2s_rexmit_inconsistent": int(i.rexmit_inconsistent[1]),
        "s2c_rexmit_inconsistent": int(i.rexmit_inconsistent[0]),
    }


def endpoint(version: int, addr: str, port: int) -> str:
    """``ip:port``, with IPv6 addresses in brackets."""
    return f"[{addr}]:{port}" if version == 6 else f"{addr}:{port}"


# struct mos_event, unpacked for a whole queue at once (one crossing per batch)
_EV_FMT = "<8B4I7Q"
_EV_SIZE = struct.calcsize(_EV_FMT)
(_T, _SIDE, _HOOK, _CST, _SST, _OLD, _INC, _FLAGS, _SLOT, _PKT, _REASON, _LEN, _CID, _OFF, _D1, _D2, _TS, _RX0,
 _RX1) = range(19)


class EventInfo:
    """One event as a handler sees it (valid while the batch's events are handled)."""

    __slots__ = ("_f", "_mon", "type")

    def __init__(self, fields: Tuple[int, ...], mon: Monitor, type_: int) -> None:
        self._f = fields
        self._mon = mon
        self.type = type_

    @property
    def event(self) -> Union[Event, int]:
        """The event (an :class:`Event`, or a user event id)."""
        return Event(self.type) if self.type < BUILTIN_EVENTS else self.type

    @property
    def side(self) -> Side:
        """The endpoint whose stack raised the event: the receiving side for data events."""
        return Side(self._f[_SIDE])

    @property
    def hook(self) -> Hook:
        """Whether it was raised after the sender's (SND) or the receiver's (RCV) update."""
        return Hook(self._f[_HOOK])

    @property
    def offset(self) -> int:
        """Stream offset (in ``side``'s receive stream) of the data, gap or retransmission."""
        return self._f[_OFF]

    @property
    def length(self) -> int:
        """Length of the data, gap or retransmission."""
        return self._f[_LEN]

    @property
    def data(self) -> Optional[bytes]:
        """CONN_NEW_DATA: the new bytes. REXMIT (inconsistent): the bytes first seen."""
        p = self._f[_D1]
        return ffi.unpack(ffi.cast("char *", p), self._f[_LEN]) if p else None

    @property
    def old_data(self) -> Optional[bytes]:
        """REXMIT (inconsistent): the bytes first seen."""
        return self.data if self._f[_T] == Event.REXMIT else None

    @property
    def new_data(self) -> Optional[bytes]:
        """REXMIT (inconsistent): the bytes of the retransmission."""
        p = self._f[_D2]
        return ffi.unpack(ffi.cast("char *", p), self._f[_LEN]) if p else None

    @property
    def inconsistent(self) -> bool:
        """REXMIT: the retransmitted bytes differ from the first copy."""
        return bool(self._f[_INC])

    @property
    def reason(self) -> Union[EndReason, ErrorKind, int]:
        """CONN_END: an :class:`EndReason`; ERROR: an :class:`ErrorKind`; ORPHAN: 1 not TCP, 2 no connection."""
        r = self._f[_REASON]
        base = self._mon._root_type(self.type)
        if base == Event.CONN_END:
            return EndReason(r)
        if base == Event.ERROR:
            return ErrorKind(r)
        return r

    @property
    def old_state(self) -> TcpState:
        """TCP_STATE_CHANGE: the state ``side`` left."""
        return TcpState(self._f[_OLD])

    @property
    def new_state(self) -> TcpState:
        """TCP_STATE_CHANGE: the state ``side`` entered."""
        return TcpState(self._f[_CST] if self._f[_SIDE] == 0 else self._f[_SST])

    @property
    def states(self) -> Tuple[TcpState, TcpState]:
        """Both endpoints' states (client, server) when the event was raised."""
        return TcpState(self._f[_CST]), TcpState(self._f[_SST])

    @property
    def tcp_flags(self) -> int:
        """TCP flags of the packet that raised the event (0 when there is none)."""
        return self._f[_FLAGS]

    @property
    def packet(self) -> Optional[PacketView]:
        """The packet that raised the event, decoded."""
        return self._mon._packet_view(self._f[_PKT])

    def __repr__(self) -> str:
        return f"<EventInfo {self.event!r} side={self.side.name} hook={self.hook.name}>"


class Connection:
    """A TCP connection seen by the stack: both endpoints' states and both receive streams.

    ``Side.CLIENT`` is the endpoint that sent the first SYN (or, for a connection picked up mid-stream,
    the one guessed from ports and flags). As in mOS, ``peek(side)`` reads the stream ``side``
    *receives*: ``peek(Side.SERVER)`` gives the bytes the client sent.
    """

    __slots__ = ("_mon", "_slot", "id", "ctx", "_read", "_handlers", "_masks", "_ended", "__weakref__")

    def __init__(self, mon: Monitor, slot: int, conn_id: int) -> None:
        self._mon = mon
        self._slot = slot
        self.id = conn_id
        """Connection id: 1, 2, ... in order of the first packet."""
        self.ctx: Any = None
        """A user context: any object an app wants to keep with the connection."""
        self._read = [0, 0]
        self._handlers: Optional[Dict[Tuple[int, int, int], List[Handler]]] = None
        self._masks: Optional[List[List[int]]] = None
        self._ended = False

    # -- reading ------------------------------------------------------------------------------------
    def _info(self) -> Any:
        info = ffi.new("struct mos_conn_info *")
        if lib.mos_conn_info(self._mon._eng, self._slot, self.id, info) != 0:
            raise StaleConnection(f"connection {self.id} is gone (it ended before this call)")
        return info

    @property
    def alive(self) -> bool:
        """False once the connection's CONN_END has been handled and its slot may be reused."""
        info = ffi.new("struct mos_conn_info *")
        return lib.mos_conn_info(self._mon._eng, self._slot, self.id, info) == 0

    def info(self) -> Dict[str, Any]:
        """Everything known about the connection, as a dict (addresses, states, counters, times)."""
        return info_dict(self._info())

    @property
    def client(self) -> str:
        """The client endpoint, ``ip:port``."""
        i = self._info()
        return endpoint(i.ip_version, _addr(i.ip_version, i.cli_addr), i.cli_port)

    @property
    def server(self) -> str:
        """The server endpoint, ``ip:port``."""
        i = self._info()
        return endpoint(i.ip_version, _addr(i.ip_version, i.svr_addr), i.svr_port)

    def _snapshot(self) -> Optional[Tuple[int, ...]]:
        """The fields of the event being handled, when it is one of this connection's."""
        cur = self._mon._cur_f
        return cur if cur is not None and cur[_CID] == self.id else None

    def state(self, side: Side) -> TcpState:
        """The TCP state of one endpoint (inside a handler: as it was when the event was raised)."""
        s = _one_side(side)
        snap = self._snapshot()
        if snap is not None:
            return TcpState(snap[_CST + s])
        i = self._info()
        return TcpState(i.cli_state if s == 0 else i.svr_state)

    def stream_offset(self, side: Side) -> int:
        """How many bytes ``side`` has received in order, gaps included (inside a handler: at the event)."""
        s = _one_side(side)
        snap = self._snapshot()
        if snap is not None:
            return snap[_RX0 + s]
        return int(self._info().stream_off[s])

    def peek(self, side: Side) -> bytes:
        """The bytes ``side`` received that this app has not peeked yet (gaps skipped), as mOS's mtcp_peek."""
        s = _one_side(side)
        end = self.stream_offset(Side(s))
        start = self._read[s]
        if end <= start:
            return b""
        out = bytearray()
        buf = ffi.new("uint8_t[]", min(end - start, 1 << 20))
        got_start = ffi.new("uint64_t *")
        pos = start
        while pos < end:
            n = lib.mos_conn_peek(self._mon._eng, self._slot, self.id, s, pos, end, buf, len(buf), got_start)
            if n <= 0:
                break
            out += ffi.buffer(buf, n)
            pos = got_start[0] + n
        self._read[s] = end
        return bytes(out)

    def ppeek(self, side: Side, offset: int, length: int) -> bytes:
        """Bytes of ``side``'s receive stream at a stream offset, if still held (may return fewer)."""
        s = _one_side(side)
        if length <= 0:
            return b""
        buf = ffi.new("uint8_t[]", length)
        n = lib.mos_conn_copy(self._mon._eng, self._slot, self.id, s, offset, length, buf)
        if n < 0:
            raise StaleConnection(f"connection {self.id} is gone")
        return bytes(ffi.buffer(buf, n))

    def held_segments(self, side: Side) -> List[Tuple[int, int]]:
        """Out-of-order segments held for ``side``'s receive stream: ``[(offset, length), ...]``."""
        s = _one_side(side)
        n = lib.mos_conn_segments(self._mon._eng, self._slot, self.id, s, ffi.NULL, ffi.NULL, 0)
        if n <= 0:
            return []
        offs = ffi.new("uint64_t[]", n)
        lens = ffi.new("uint32_t[]", n)
        n = lib.mos_conn_segments(self._mon._eng, self._slot, self.id, s, offs, lens, n)
        return [(int(offs[k]), int(lens[k])) for k in range(max(n, 0))]

    def holes(self, side: Side) -> List[Tuple[int, int]]:
        """Holes before held out-of-order segments: ``[(offset, length), ...]`` (may still fill)."""
        pos = self.stream_offset(side)
        out = []
        for off, ln in self.held_segments(side):
            if off > pos:
                out.append((pos, off - pos))
            pos = max(pos, off + ln)
        return out

    # -- acting -------------------------------------------------------------------------------------
    def on(self, event: EventId, handler: Handler, *, side: Side = Side.BOTH, hook: Hook = Hook.RCV) -> None:
        """Subscribe a handler for this connection only (allowed inside a handler)."""
        self._mon._check_event(event)
        if self._handlers is None:
            self._handlers = {}
            self._masks = [[0, 0], [0, 0]]
        _subscribe(self._handlers, event, handler, side, hook)
        self._sync_masks()

    def off(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
            hook: Hook = Hook.RCV) -> None:
        """Unsubscribe a handler of this connection (all of the event's handlers when None)."""
        if not self._handlers:
            return
        _unsubscribe(self._handlers, event, handler, side, hook)
        self._sync_masks()

    def _sync_masks(self) -> None:
        masks = [[0, 0], [0, 0]]
        for (ev, s, h), lst in (self._handlers or {}).items():
            if lst:
                masks[h][s] |= 1 << self._mon._c_bit(ev)
        self._masks = masks
        for h in (0, 1):
            for s in (0, 1):
                lib.mos_conn_set_mask(self._mon._eng, self._slot, self.id, h, s, masks[h][s])

    def stop_monitoring(self, side: Side = Side.BOTH) -> None:
        """Stop monitoring one side or both: no more events or bytes for it (CONN_END still comes)."""
        mask = 3 if Side(side) is Side.BOTH else 1 << int(side)
        if lib.mos_conn_stop(self._mon._eng, self._slot, self.id, mask) != 0:
            raise StaleConnection(f"connection {self.id} is gone")

    def set_policy(self, policy: Union[Policy, str]) -> None:
        """Change the overlap policy of this connection's two streams."""
        p = _policy(policy)
        if lib.mos_conn_set_policy(self._mon._eng, self._slot, self.id, p.code) != 0:
            raise StaleConnection(f"connection {self.id} is gone")

    @property
    def last_packet(self) -> Optional[PacketView]:
        """The packet being handled (headers and payload), during a handler."""
        cur = self._mon._cur_f
        return self._mon._packet_view(cur[_PKT]) if cur is not None else None

    # -- live path verdicts (mos/live.py; live traffic only) -----------------------------------------
    def drop(self) -> None:
        """Live: drop this connection's packets from now on (the current one too), in XDP for later ones."""
        self._mon._live_session().drop(self._mon, self)

    def bypass(self) -> None:
        """Live: later packets skip userspace (passed to the host, or forwarded in XDP when inline)."""
        self._mon._live_session().bypass(self)

    def drop_last_packet(self) -> None:
        """Live, inline: drop only the packet being handled (the verdict is forward by default)."""
        self._mon._live_session().drop_packet(self._mon)

    def set_last_packet(self, data: bytes, offset: int = 0, layer: str = "eth", resize: bool = False) -> int:
        """Live, inline: overwrite bytes of the packet being handled, as mOS's mtcp_setlastpkt.

        ``offset`` counts from the start of ``layer`` (``eth``, ``ip``, ``tcp``/``udp``, ``payload``); the
        IPv4 header and TCP/UDP checksums are recomputed. ``resize`` makes the packet end after ``data``.
        Returns the packet's length. The engine's view of the stream is not changed.
        """
        return int(self._mon._live_session().rewrite(self._mon, bytes(data), offset, layer, resize))

    def __repr__(self) -> str:
        try:
            return f"<Connection {self.id} {self.client} -> {self.server}>"
        except MosError:
            return f"<Connection {self.id} (ended)>"


_HandlerTable = Dict[Tuple[int, int, int], List[Handler]]


def _subscribe(table: _HandlerTable, event: EventId, handler: Handler, side: Side, hook: Hook) -> None:
    for s in _sides(side):
        table.setdefault((int(event), s, int(hook)), []).append(handler)


def _unsubscribe(table: _HandlerTable, event: EventId, handler: Optional[Handler], side: Side,
                 hook: Hook) -> None:
    for s in _sides(side):
        lst = table.get((int(event), s, int(hook)))
        if not lst:
            continue
        if handler is None:
            lst.clear()
        elif handler in lst:
            lst.remove(handler)


def _one_side(side: Side) -> int:
    s = Side(side)
    if s is Side.BOTH:
        raise MosError("this needs Side.CLIENT or Side.SERVER, not Side.BOTH")
    return int(s)


def _sides(side: Side) -> Tuple[int, ...]:
    s = Side(side)
    return (0, 1) if s is Side.BOTH else (int(s),)


def _policy(policy: Union[Policy, str]) -> Policy:
    try:
        return Policy(policy)
    except ValueError:
        names = ", ".join(p.value for p in Policy)
        raise MosError(f"unknown overlap policy {policy!r} (choose from {names})") from None


@dataclass(order=True)
class Timer:
    """A one-shot or periodic timer in packet time (for captures) -- see :meth:`Monitor.add_timer`."""

    due: int
    seq: int
    interval: int = field(compare=False)
    callback: Callable[[Monitor], Any] = field(compare=False)
    periodic: bool = field(compare=False, default=False)
    cancelled: bool = field(compare=False, default=False)

    def cancel(self) -> None:
        """The timer will not fire (again)."""
        self.cancelled = True


class Monitor:
    """The stack as an app sees it: subscribe handlers, then run it over a capture (or live traffic).

    Options: ``policy`` (overlap policy, :class:`Policy`), ``buffer_client`` / ``buffer_server``
    (hold bytes for reassembly on that side; False is mOS's MOS_CLIBUF/MOS_SVRBUF = 0),
    ``vlan_in_key`` (VLAN ids are part of a connection's key), ``pickup`` (track connections already in
    progress), ``max_conns``, ``dir_buffer_limit`` (bytes held per direction), ``max_segments``,
    ``memcap`` (bytes held by reassembly in all), timeouts in seconds (``timeout_syn``,
    ``timeout_established``, ``timeout_closed``), ``frag_memcap``, ``frag_timeout``, ``strict``
    (an exception in a handler stops the run), ``sync``.

    Handlers run once per batch of packets (one crossing between C and Python per batch). Inside a handler
    the event and the connection's state, stream offsets and ``peek`` are as they were when the event was
    raised; what a handler *does* (subscribing, stopping monitoring, timers) takes effect from the next
    batch. ``sync=True`` hands the events over after every packet that raised some, so actions take effect
    from the next packet, at the cost of a crossing per such packet.
    """

    def __init__(
        self,
        *,
        policy: Union[Policy, str] = Policy.FIRST,
        buffer_client: bool = True,
        buffer_server: bool = True,
        vlan_in_key: bool = True,
        pickup: bool = True,
        max_conns: int = 1 << 20,
        dir_buffer_limit: int = 8 << 20,
        max_segments: int = 4096,
        memcap: int = 2 << 30,
        timeout_syn: float = 30.0,
        timeout_established: float = 600.0,
        timeout_closed: float = 10.0,
        frag_memcap: int = 64 << 20,
        frag_timeout: float = 30.0,
        event_queue: int = 8192,
        strict: bool = False,
        stream_dir: Optional[str] = None,
        sync: bool = False,
    ) -> None:
        cfg = ffi.new("struct mos_config *")
        lib.mos_config_default(cfg)
        cfg.policy = _policy(policy).code
        cfg.buffer_cli = int(bool(buffer_client))
        cfg.buffer_svr = int(bool(buffer_server))
        cfg.vlan_in_key = int(bool(vlan_in_key))
        cfg.pickup = int(bool(pickup))
        cfg.sync_events = int(bool(sync))
        for name, val, lo, hi in (
            ("max_conns", max_conns, 1, 1 << 28),
            ("dir_buffer_limit", dir_buffer_limit, 0, (1 << 32) - 1),
            ("max_segments", max_segments, 1, (1 << 32) - 1),
            ("event_queue", event_queue, 64, 1 << 24),
        ):
            if not lo <= int(val) <= hi:
                raise MosError(f"{name} must be between {lo} and {hi}, not {val}")
        cfg.max_conns = int(max_conns)
        cfg.dir_buffer_limit = int(dir_buffer_limit)
        cfg.max_segments = int(max_segments)
        cfg.memcap = int(memcap)
        cfg.event_queue = int(event_queue)
        for tname, tval in (("timeout_syn", timeout_syn), ("timeout_established", timeout_established),
                            ("timeout_closed", timeout_closed), ("frag_timeout", frag_timeout)):
            if tval <= 0:
                raise MosError(f"{tname} must be positive, not {tval}")
        cfg.timeout_syn_ns = int(timeout_syn * 1e9)
        cfg.timeout_est_ns = int(timeout_established * 1e9)
        cfg.timeout_closed_ns = int(timeout_closed * 1e9)
        cfg.frag_memcap = int(frag_memcap)
        cfg.frag_timeout_ns = int(frag_timeout * 1e9)
        err = ffi.new("char[256]")
        eng = lib.mos_engine_new(cfg, err, 256)
        if eng == ffi.NULL:
            raise MosError(ffi.string(err).decode())
        self._eng = ffi.gc(eng, lib.mos_engine_free)
        self.strict = strict
        self._handlers: Dict[Tuple[int, int, int], List[Handler]] = {}
        self._user: Dict[int, _UserEvent] = {}
        self._children: Dict[int, List[_UserEvent]] = {}
        self._conns: Dict[int, Connection] = {}
        self._timers: List[Timer] = []
        self._unanchored: List[Timer] = []
        self._timer_seq = itertools.count()
        self._cur_f: Optional[Tuple[int, ...]] = None
        self._views: Dict[int, PacketView] = {}
        self._running = False
        self._stop = False
        self.handler_errors = 0
        """Exceptions raised by handlers (reported on stderr)."""
        self.read_error: Optional[str] = None
        """Why the last capture ended early (a truncated file), if it did."""
        self._pev = ffi.new("struct mos_event **")
        self._sync_masks()
        if stream_dir is not None:
            self.write_streams(stream_dir)

    # -- subscriptions ------------------------------------------------------------------------------
    def _check_event(self, event: EventId) -> None:
        e = int(event)
        if not (0 <= e < BUILTIN_EVENTS or e in self._user):
            raise MosError(f"unknown event {event!r}")

    def on(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
           hook: Hook = Hook.RCV) -> Any:
        """Subscribe ``handler(conn, ev)`` to an event, for every connection; usable as a decorator.

        ``side`` selects the endpoint whose stack raises the event (the receiving side for data);
        ``hook`` selects mOS's hook point: after the sender's (``Hook.SND``) or the receiver's update
        (``Hook.RCV``, the default; PKT_IN and TCP_STATE_CHANGE exist at both). CONN_START and
        CONN_END are per connection: they reach handlers of either side.
        """
        self._check_event(event)

        def add(fn: Handler) -> Handler:
            _subscribe(self._handlers, event, fn, side, hook)
            self._sync_masks()
            return fn

        return add(handler) if handler is not None else add

    def off(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
            hook: Hook = Hook.RCV) -> None:
        """Unsubscribe a handler (or all of the event's handlers); allowed inside a handler."""
        _unsubscribe(self._handlers, event, handler, side, hook)
        self._sync_masks()

    def define_event(self, base: EventId, filter: Union[Filter, PyFilter, None] = None) -> int:
        """A new event raised when ``base`` is raised and ``filter`` holds; returns its id.

        ``filter`` is a :class:`Filter` (run in C, so most packets never reach Python) or a Python
        callable ``filter(conn, ev) -> bool``. Chainable: ``base`` may be a user-defined event.
        """
        self._check_event(base)
        ids = [i for i in range(USER_EVENT_BASE, MAX_EVENTS) if i not in self._user]
        if not ids:
            raise MosError(f"at most {MAX_EVENTS - USER_EVENT_BASE} user-defined events")
        uid = ids[0]
        base_i = int(base)
        base_in_c = base_i < BUILTIN_EVENTS or self._user[base_i].in_c
        in_c = base_in_c and (filter is None or isinstance(filter, Filter))
        if not (filter is None or isinstance(filter, Filter) or callable(filter)):
            raise MosError("a filter is a mos.Filter or a callable(conn, ev) -> bool")
        ue = _UserEvent(uid, base_i, filter, in_c)
        if in_c:
            cf = filter.to_c() if isinstance(filter, Filter) else ffi.NULL
            if lib.mos_engine_define_event(self._eng, uid, base_i, cf) != 0:
                raise MosError(f"the engine refused event {uid} on base {base_i}")
        else:
            self._children.setdefault(base_i, []).append(ue)
        self._user[uid] = ue
        return uid

    def _c_bit(self, ev: int) -> int:
        """The event the C engine must queue so that ``ev`` can be raised (itself, or an ancestor)."""
        while ev >= USER_EVENT_BASE and not self._user[ev].in_c:
            ev = self._user[ev].base
        return ev

    def _root_type(self, ev: int) -> int:
        while ev >= USER_EVENT_BASE:
            ev = self._user[ev].base
        return ev

    def _sync_masks(self) -> None:
        masks = [[0, 0], [0, 0]]
        for (ev, s, h), lst in self._handlers.items():
            if lst:
                masks[h][s] |= 1 << self._c_bit(ev)
        for h in (0, 1):
            for s in (0, 1):
                lib.mos_engine_set_mask(self._eng, h, s, masks[h][s])
        # dispatch table: (hook, side) -> {type: handlers}
        table: List[List[Dict[int, Tuple[Handler, ...]]]] = [[{}, {}], [{}, {}]]
        for (ev, s, h), lst in self._handlers.items():
            if lst:
                table[h][s][ev] = tuple(lst)
        # CONN_START/CONN_END are per connection: raised with one side, they reach both sides' handlers
        conn_level = [ev for ev in set(table[0][0]) | set(table[0][1]) | set(table[1][0]) | set(table[1][1])
                      if self._root_type(ev) in _CONN_LEVEL]
        for h in (0, 1):
            for ev in conn_level:
                both = tuple(dict.fromkeys(table[h][0].get(ev, ()) + table[h][1].get(ev, ())))
                for s in (0, 1):
                    if both:
                        table[h][s][ev] = both
        self._table = table
        # flat: index (hook * 2 + side) * MAX_EVENTS + event -> handlers (one lookup per event)
        flat: List[Tuple[Handler, ...]] = [()] * (4 * MAX_EVENTS)
        for h in (0, 1):
            for s in (0, 1):
                for ev, hs in table[h][s].items():
                    flat[(h * 2 + s) * MAX_EVENTS + ev] = hs
        self._flat = flat

    # -- timers ------------------------------------------------------------------------------------
    def add_timer(self, delay: float, callback: Callable[[Monitor], Any], *, periodic: bool = False) -> Timer:
        """Call ``callback(monitor)`` after ``delay`` seconds of packet time (every ``delay`` if periodic)."""
        if delay <= 0:
            raise MosError("a timer's delay must be positive")
        ns = int(delay * 1e9)
        cur = self._cur_f
        now = cur[_TS] if cur is not None else int(lib.mos_engine_now(self._eng))
        t = Timer(now + ns, next(self._timer_seq), ns, callback, periodic)
        if now == 0:
            self._unanchored.append(t)  # no packet yet: packet time starts with the first one
        else:
            heapq.heappush(self._timers, t)
        return t

    def _anchor_timers(self, first_ts: int) -> None:
        for t in self._unanchored:
            t.due += first_ts
            heapq.heappush(self._timers, t)
        self._unanchored.clear()

    def _next_due(self) -> int:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].due if self._timers else 0

    def _fire_timers(self, now: int) -> None:
        while self._timers and self._timers[0].due <= now:
            t = heapq.heappop(self._timers)
            if t.cancelled:
                continue
            lib.mos_engine_advance(self._eng, t.due)
            self._dispatch()
            self._call(t.callback, (self,), None)
            if t.periodic and not t.cancelled:
                # after a silence in the traffic, the next tick is the next period after now
                t.due += t.interval * max(1, (now - t.due) // t.interval + 1)
                heapq.heappush(self._timers, t)

    # -- output -------------------------------------------------------------------------------------
    def log_ended(self, max_id: int) -> None:
        """Keep, in C, the final info of connections 1..``max_id`` as they end (no handler: a summary of a
        run then costs no crossing into Python per connection). Read it with :meth:`ended_log`."""
        if not 0 <= max_id <= 1 << 24:
            raise MosError(f"log_ended: {max_id} is not between 0 and {1 << 24}")
        if lib.mos_engine_log_ended(self._eng, max_id) != 0:
            raise MosError(f"log_ended: no memory for {max_id} records")

    def ended_log(self) -> List[Dict[str, Any]]:
        """The info (as :meth:`Connection.info`) of the logged connections that have ended, by id."""
        n = ffi.new("uint64_t *")
        recs = lib.mos_engine_ended_log(self._eng, n)
        return [info_dict(recs[k]) for k in range(n[0]) if recs[k].id]

    def write_streams(self, directory: str, max_open_files: int = 64) -> None:
        """Append every connection's delivered bytes to DIR/<id>.c2s and DIR/<id>.s2c (done in C)."""
        if lib.mos_engine_stream_dir(self._eng, directory.encode(), max_open_files) != 0:
            raise MosError(f"{directory}: not a writable directory")

    # -- running ------------------------------------------------------------------------------------
    def run_pcap(self, path: str, progress: Optional[Callable[[int, int], Any]] = None) -> Dict[str, int]:
        """Run over a pcap or pcapng file; returns the counters. ``progress(pos, size)`` per batch."""
        err = ffi.new("char[512]")
        src = lib.mos_pcap_open(str(path).encode(), err, 512)
        if src == ffi.NULL:
            raise MosError(ffi.string(err).decode())
        try:
            linktype = lib.mos_pcap_linktype(src)
            size = lib.mos_pcap_file_size(src)
            region = ffi.new("const void *[2]")
            if lib.mos_pcap_stable_region(src, region, region + 1):
                # the file is mapped: reassembly holds its bytes by reference, no copy
                lib.mos_engine_set_stable(self._eng, region[0], region[1])
            pkts = ffi.new("struct mos_pkt[]", _BATCH)
            self._running = True
            got = 0
            while not self._stop:
                n = lib.mos_pcap_next_batch(src, pkts, _BATCH, err, 512)
                if n < 0:
                    msg = f"{path}: {ffi.string(err).decode()}"
                    if not got:
                        raise MosError(msg)
                    # a capture cut short (the capturing tool was killed): what came before is good
                    self.read_error = msg
                    sys.stderr.write(f"mos-xdp: warning: {msg}; the {got} packets before it were processed\n")
                    break
                got += n
                if n == 0:
                    break
                self.feed(linktype, pkts, n)
                if progress is not None:
                    progress(lib.mos_pcap_file_pos(src), size)
            self.finish()
        finally:
            self._running = False
            lib.mos_engine_set_stable(self._eng, ffi.NULL, ffi.NULL)  # copies what is still held
            lib.mos_pcap_close(src)
        return self.stats()

    def feed(self, linktype: int, pkts: Any, n: int) -> None:
        """Process a batch of ``struct mos_pkt`` (any packet source): engine, handlers, timers."""
        i = 0
        idle = 0
        if self._unanchored and n:
            self._anchor_timers(int(pkts[0].ts_ns))
        while i < n and not self._stop:
            due = self._next_due()
            k = lib.mos_engine_feed(self._eng, linktype, pkts + i, n - i, due)
            i += k
            self._dispatch()
            if i < n and due and pkts[i].ts_ns >= due:
                self._fire_timers(pkts[i].ts_ns)
                idle = 0
            elif k == 0:
                idle += 1
                if idle > 2:
                    raise MosError("internal error: the engine made no progress")  # pragma: no cover

    def finish(self) -> None:
        """End of input: every connection still open ends (reason EOF, or FIN if both sides closed)."""
        while lib.mos_engine_finish(self._eng) != 0:
            self._dispatch()
        self._dispatch()

    def stop(self) -> None:
        """Stop a run after the current batch (from a handler or a timer)."""
        self._stop = True

    # -- dispatch -----------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], args: Tuple[Any, ...], conn: Optional[Connection]) -> None:
        """Call a handler; an exception is reported with the connection, and the run goes on (unless strict)."""
        try:
            fn(*args)
        except Exception:
            self._handler_failed(fn, conn)

    def _handler_failed(self, fn: Any, conn: Optional[Connection]) -> None:
        """Report the exception being handled (with its traceback and connection); re-raise if strict."""
        self.handler_errors += 1
        where = f"connection {conn.id} ({conn!r})" if conn is not None else "no connection"
        sys.stderr.write(f"mos-xdp: handler {getattr(fn, '__name__', fn)!r} failed on {where}:\n")
        traceback.print_exc(file=sys.stderr)
        if self.strict:
            raise

    def _dispatch(self) -> None:
        pev = self._pev
        n = lib.mos_engine_events(self._eng, pev)
        if not n and not self._views:
            lib.mos_engine_events_done(self._eng)  # nothing for Python: the common case on a busy link
            return
        try:
            if n:
                children = self._children
                conns = self._conns
                call = self._call
                for f in struct.iter_unpack(_EV_FMT, ffi.buffer(pev[0], n * _EV_SIZE)):
                    t = f[0]
                    slot = f[8]
                    conn = None
                    if slot:
                        conn = conns.get(slot)
                        if conn is None or conn.id != f[12]:
                            conn = conns[slot] = Connection(self, slot, f[12])
                    self._cur_f = f
                    info = EventInfo(f, self, t)
                    # (re-read each time: a handler may subscribe or unsubscribe)
                    for fn in self._flat[(f[2] * 2 + f[1]) * 64 + t]:
                        try:
                            fn(conn, info)
                        except Exception:
                            self._handler_failed(fn, conn)
                    if conn is not None:
                        if conn._handlers:
                            for s in ((0, 1) if t in _CONN_LEVEL else (f[1],)):
                                for fn in tuple(conn._handlers.get((t, s, f[2]), ())):
                                    call(fn, (conn, info), conn)
                        if t == 5:  # CONN_END
                            conn._ended = True
                            del conns[slot]
                    if t in children:
                        self._derive(conn, f, t)
        finally:
            self._views.clear()
            self._cur_f = None
            lib.mos_engine_events_done(self._eng)

    def _derive(self, conn: Optional[Connection], f: Tuple[int, ...], t: int) -> None:
        """Python-filtered user events derived from event type ``t``."""
        for ue in self._children.get(t, ()):
            info = EventInfo(f, self, ue.id)
            flt = ue.filter
            try:
                ok = True if flt is None else (
                    flt.matches(conn, info) if isinstance(flt, Filter) else flt(conn, info))
            except Exception:
                self.handler_errors += 1
                sys.stderr.write(f"mos-xdp: filter of event {ue.id} failed:\n")
                traceback.print_exc(file=sys.stderr)
                if self.strict:
                    raise
                ok = False
            if not ok:
                continue
            side, hook = f[_SIDE], f[_HOOK]
            for fn in self._table[hook][side].get(ue.id, ()):
                self._call(fn, (conn, info), conn)
            if conn is not None and conn._handlers:
                for fn in tuple(conn._handlers.get((ue.id, side, hook), ())):
                    self._call(fn, (conn, info), conn)
            if ue.id in self._children:
                self._derive(conn, f, ue.id)

    def _packet_view(self, pkt: int) -> Optional[PacketView]:
        if pkt == 0xFFFFFFFF:
            return None
        v = self._views.get(pkt)
        if v is not None:
            return v
        out = ffi.new("struct mos_pkt_view *")
        if lib.mos_pkt_view(self._eng, pkt, out) != 0:
            return None
        raw = lib.mos_pkt_raw(self._eng, pkt)
        rawb = ffi.unpack(ffi.cast("char *", raw), out.caplen) if raw != ffi.NULL else b""
        ver = out.ip_version
        v = PacketView(
            ts=out.ts_ns / 1e9, ip_version=ver,
            src=_addr(ver, out.src) if ver else "", dst=_addr(ver, out.dst) if ver else "",
            sport=out.sport, dport=out.dport, proto=out.proto, tcp_flags=out.tcp_flags, seq=out.seq,
            ack=out.ack, window=out.window, mss=out.mss, wscale=None if out.wscale == 0xFF else out.wscale,
            sack_permitted=bool(out.sack_perm), tsval=out.tsval if out.has_ts else None,
            tsecr=out.tsecr if out.has_ts else None, vlan=tuple(out.vlan[k] for k in range(out.nvlan)),
            caplen=out.caplen, wirelen=out.wirelen, raw=rawb, l3_offset=out.l3_off, l4_offset=out.l4_off,
            payload_offset=out.payload_off, payload_len=out.payload_len,
        )
        self._views[pkt] = v
        return v

    # -- counters -----------------------------------------------------------------------------------
    def stats(self) -> Dict[str, int]:
        """Engine counters: packet dispositions, malformations by reason, reassembly and fragments."""
        out: Dict[str, int] = {}
        c = lib.mos_engine_counters(self._eng)
        for i in range(lib.MOS_C_COUNT):
            out[ffi.string(lib.mos_counter_name(i)).decode()] = int(c[i])
        r = lib.mos_engine_reasm_counters(self._eng)
        for i, name in enumerate(_REASM_NAMES):
            out["reasm_" + name] = int(r[i])
        f = lib.mos_engine_frag_counters(self._eng)
        for i, name in enumerate(_FRAG_NAMES):
            out["frag_" + name] = int(f[i])
        out["memory_held"] = int(lib.mos_engine_mem_used(self._eng))
        out["handler_errors"] = self.handler_errors
        return out

    def connections(self) -> Iterable[Connection]:
        """Connections that have reached Python and not ended."""
        return list(self._conns.values())

    # -- live path (mos/live.py sets _live while a live run is going on) ----------------------------
    _live: Any = None

    def _live_session(self) -> Any:
        if self._live is None:
            raise MosError("this works on live traffic only (mos-xdp run --iface)")
        return self._live

    def _current_pkt(self) -> Optional[int]:
        """The engine's index of the packet being handled (None outside a packet's handlers)."""
        cur = self._cur_f
        pkt = int(cur[_PKT]) if cur is not None else 0xFFFFFFFF
        return None if pkt == 0xFFFFFFFF else pkt

    @property
    def bpf(self) -> Any:
        """Live: the XDP program (a :class:`mos.bpf.XdpProgram`): ``stats()``, ``bypassed()``, ``blocked()``..."""
        return self._live_session().prog

    def block(self, prefix: str) -> str:
        """Live: drop packets from or to an IP prefix in XDP (``10.0.0.0/8``, ``2001:db8::/32``, an address)."""
        return str(self._live_session().prog.block(prefix))

    def unblock(self, prefix: str) -> bool:
        """Live: stop dropping a prefix; False when it was not blocked."""
        return bool(self._live_session().prog.unblock(prefix))

    def block_port(self, port: int) -> None:
        """Live: drop TCP and UDP packets from or to ``port`` in XDP."""
        self._live_session().prog.block_port(port)

    def unblock_port(self, port: int) -> bool:
        """Live: stop dropping ``port``; False when it was not blocked."""
        return bool(self._live_session().prog.unblock_port(port))


_REASM_NAMES = (
    "segments", "bytes_delivered", "bytes_gap", "gaps", "ooo_segments", "rexmit_segments", "rexmit_bytes",
    "rexmit_inconsistent", "rexmit_unverifiable", "overlap_segments", "limit_dir_buf", "limit_memcap",
    "limit_segments", "bytes_dropped_limit",
)
_FRAG_NAMES = (
    "fragments", "datagrams", "overlaps", "too_big", "bad_fragment", "timeouts", "memcap", "discarded",
)

MALFORMED_PREFIX = "malformed_"
DISPOSITIONS = (
    "conn_packets", "orphan_not_tcp", "orphan_no_conn", "orphan_table_full", "frag_held", "frag_error",
)


def accounted(stats: Dict[str, int]) -> int:
    """Packets accounted for by a disposition (must equal ``stats['packets']``)."""
    return sum(stats[k] for k in DISPOSITIONS) + sum(
        v for k, v in stats.items() if k.startswith(MALFORMED_PREFIX)
    )
