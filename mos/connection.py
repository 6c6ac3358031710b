"""What handlers see: :class:`Connection` (both endpoints and both receive streams), :class:`EventInfo`
(one event, read from the engine's unpacked record) and :class:`PacketView` (a packet's decoded headers).

Handlers get these from :class:`mos.Monitor`; they are valid while the batch's events are handled, and a
:class:`Connection` stays usable (through the engine's slot and id) until its CONN_END.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Union

from .abi import (
    EV_CLI_STATE,
    EV_CONN_ID,
    EV_DATA,
    EV_DATA2,
    EV_FLAGS,
    EV_HOOK,
    EV_INCONSISTENT,
    EV_LEN,
    EV_OFF,
    EV_OLD_STATE,
    EV_PKT,
    EV_REASON,
    EV_RX_OFF0,
    EV_SIDE,
    EV_SVR_STATE,
    EV_TYPE,
    NO_PACKET,
    NO_WSCALE,
    ffi,
    lib,
)
from .errors import MosError, StaleConnection
from .events import (
    BUILTIN_EVENTS,
    PROTOCOL_NAMES,
    EndReason,
    ErrorKind,
    Event,
    Hook,
    OrphanKind,
    Policy,
    Side,
    TcpState,
    policy_of,
)
from .inject import check_payload, flag_bits
from .stats import ENGINE_COUNTERS
from .subscriptions import Handler, hook_of, sides_of

if TYPE_CHECKING:
    from .monitor import Monitor

EventId = Union[Event, int]


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


def addr_str(version: int, raw: Any) -> str:
    """An address of the engine's (4 or 16 bytes of a cdata array) as text."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, ffi.buffer(raw, 4)[:])
    return socket.inet_ntop(socket.AF_INET6, ffi.buffer(raw, 16)[:])


def info_dict(i: Any) -> Dict[str, Any]:
    """A ``struct mos_conn_info`` as the dict ``Connection.info()`` returns."""
    v = i.ip_version
    ca, sa = addr_str(v, i.cli_addr), addr_str(v, i.svr_addr)
    tcp = i.proto == _TCP  # a UDP flow has no TCP states nor sequence numbers
    return {
        "protocol": PROTOCOL_NAMES.get(int(i.proto), str(i.proto)),
        "id": int(i.id),
        "client": endpoint(v, ca, i.cli_port),
        "server": endpoint(v, sa, i.svr_port),
        "client_addr": ca,
        "server_addr": sa,
        "client_port": int(i.cli_port),
        "server_port": int(i.svr_port),
        "ip_version": int(v),
        "vlan": [int(i.vlan[k]) for k in range(i.nvlan)],
        "client_state": TcpState(i.cli_state).name if tcp else None,
        "server_state": TcpState(i.svr_state).name if tcp else None,
        "end": EndReason(i.end_reason).name if i.end_reason else None,
        "picked_up": bool(i.picked_up),
        "client_wscale": None if i.cli_wscale == NO_WSCALE else int(i.cli_wscale),
        "server_wscale": None if i.svr_wscale == NO_WSCALE else int(i.svr_wscale),
        "client_isn": int(i.cli_isn) if tcp else None,
        "server_isn": int(i.svr_isn) if tcp else None,
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


_TCP = socket.IPPROTO_TCP


def endpoint(version: int, addr: str, port: int) -> str:
    """``ip:port``, with IPv6 addresses in brackets."""
    return f"[{addr}]:{port}" if version == 6 else f"{addr}:{port}"



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
        return Side(self._f[EV_SIDE])

    @property
    def hook(self) -> Hook:
        """Whether it was raised after the sender's (SND) or the receiver's (RCV) update."""
        return Hook(self._f[EV_HOOK])

    @property
    def offset(self) -> int:
        """Stream offset (in ``side``'s receive stream) of the data, gap or retransmission."""
        return self._f[EV_OFF]

    @property
    def length(self) -> int:
        """Length of the data, gap or retransmission."""
        return self._f[EV_LEN]

    @property
    def data(self) -> Optional[bytes]:
        """CONN_NEW_DATA: the new bytes. REXMIT (inconsistent): the bytes first seen. PKT_IN of a UDP flow:
        the datagram's payload (the whole datagram when it came in fragments). ICMP_ERROR: the ICMP message."""
        p = self._f[EV_DATA]
        return ffi.unpack(ffi.cast("char *", p), self._f[EV_LEN]) if p else None

    @property
    def old_data(self) -> Optional[bytes]:
        """REXMIT (inconsistent): the bytes first seen."""
        return self.data if self._f[EV_TYPE] == Event.REXMIT else None

    @property
    def new_data(self) -> Optional[bytes]:
        """REXMIT (inconsistent): the bytes of the retransmission."""
        p = self._f[EV_DATA2]
        return ffi.unpack(ffi.cast("char *", p), self._f[EV_LEN]) if p else None

    @property
    def inconsistent(self) -> bool:
        """REXMIT: the retransmitted bytes differ from the first copy."""
        return bool(self._f[EV_INCONSISTENT])

    @property
    def reason(self) -> Union[EndReason, ErrorKind, OrphanKind, int]:
        """CONN_END: an :class:`EndReason`; ERROR: an :class:`ErrorKind`; ORPHAN: an :class:`OrphanKind`."""
        r = self._f[EV_REASON]
        base = self._mon.root(self.type)
        if base == Event.CONN_END:
            return EndReason(r)
        if base == Event.ERROR:
            return ErrorKind(r)
        if base == Event.ORPHAN:
            return OrphanKind(r)
        return r

    @property
    def icmp_type(self) -> Optional[int]:
        """ICMP_ERROR: the ICMP (or ICMPv6) type of the error; None for any other event."""
        if self._mon.root(self.type) != Event.ICMP_ERROR:
            return None
        return int(self._f[EV_REASON] >> 8)

    @property
    def icmp_code(self) -> Optional[int]:
        """ICMP_ERROR: the ICMP (or ICMPv6) code of the error; None for any other event."""
        if self._mon.root(self.type) != Event.ICMP_ERROR:
            return None
        return int(self._f[EV_REASON] & 0xFF)

    @property
    def malformed(self) -> Optional[str]:
        """ERROR of kind ``MALFORMED``: the counter the packet was counted under (``malformed_*``, as in
        :meth:`Monitor.stats`); None for any other event."""
        if self._mon.root(self.type) != Event.ERROR or self._f[EV_REASON] != ErrorKind.MALFORMED:
            return None
        names = ENGINE_COUNTERS
        return names[self._f[EV_LEN]] if self._f[EV_LEN] < len(names) else None

    @property
    def bad_checksum(self) -> Optional[str]:
        """ERROR of kind ``CHECKSUM_INVALID``: the counter the packet was counted under (``bad_checksum_ip``,
        ``bad_checksum_tcp``, ``bad_checksum_udp``); None for any other event."""
        if self._mon.root(self.type) != Event.ERROR or self._f[EV_REASON] != ErrorKind.CHECKSUM_INVALID:
            return None
        names = ENGINE_COUNTERS
        return names[self._f[EV_LEN]] if self._f[EV_LEN] < len(names) else None

    @property
    def old_state(self) -> TcpState:
        """TCP_STATE_CHANGE: the state ``side`` left."""
        return TcpState(self._f[EV_OLD_STATE])

    @property
    def new_state(self) -> TcpState:
        """TCP_STATE_CHANGE: the state ``side`` entered."""
        return TcpState(self._f[EV_CLI_STATE + self._f[EV_SIDE]])

    @property
    def states(self) -> Tuple[TcpState, TcpState]:
        """Both endpoints' states (client, server) when the event was raised."""
        return TcpState(self._f[EV_CLI_STATE]), TcpState(self._f[EV_SVR_STATE])

    @property
    def tcp_flags(self) -> int:
        """TCP flags of the packet that raised the event (0 when there is none)."""
        return self._f[EV_FLAGS]

    @property
    def packet(self) -> Optional[PacketView]:
        """The packet that raised the event, decoded."""
        return self._mon._packet_view(self._f[EV_PKT])

    def derived(self, type_: int) -> EventInfo:
        """The same event seen as the user event ``type_`` derived from it."""
        return EventInfo(self._f, self._mon, type_)

    def __repr__(self) -> str:
        return f"<EventInfo {self.event!r} side={self.side.name} hook={self.hook.name}>"


class RaisedEventInfo(EventInfo):
    """An event the app raised (:meth:`Connection.raise_event`): its ``data`` is the object it was raised
    with; the rest (side, hook, packet, states) is the event being handled when it was raised."""

    __slots__ = ("_data",)

    def __init__(self, fields: Tuple[int, ...], mon: Monitor, type_: int, data: Any) -> None:
        super().__init__(fields, mon, type_)
        self._data = data

    @property
    def data(self) -> Any:
        """The object given to :meth:`Connection.raise_event`."""
        return self._data

    def derived(self, type_: int) -> EventInfo:
        """The same event seen as the user event ``type_`` derived from it (with the same data)."""
        return RaisedEventInfo(self._f, self._mon, type_, self._data)


class ConnState:
    """What Python keeps of a connection beyond the engine's record, made only when an app needs it
    (a context, a peek position, a timer): most connections have none, so cost no Python memory."""

    __slots__ = ("id", "ctx", "read", "lost", "timers")

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.ctx: Any = None
        self.read = [0, 0]
        self.lost = [0, 0]
        self.timers: List[Any] = []


class Connection:
    """A TCP connection seen by the stack (both endpoints' states and both receive streams), or a UDP flow
    (:attr:`protocol` ``"udp"``: datagrams both ways between two endpoints, its client the sender of the
    first one; ``ctx``, subscriptions, timers, ``info()``, ``drop()``, ``bypass()`` and the packet rewrites
    work on it, the stream and TCP state methods raise a :class:`MosError`).

    ``Side.CLIENT`` is the endpoint that sent the first SYN (or, for a connection picked up mid-stream,
    the one guessed from ports and flags). As in mOS, ``peek(side)`` reads the stream ``side``
    *receives*: ``peek(Side.SERVER)`` gives the bytes the client sent.

    A Connection is a handle (the engine's slot and the connection's id): handlers of different events
    may get different objects for one connection; they compare equal and hash alike, and ``ctx``, peek
    positions, subscriptions and timers belong to the connection, not to the object.
    """

    __slots__ = ("_mon", "_slot", "id")

    def __init__(self, mon: Monitor, slot: int, conn_id: int) -> None:
        self._mon = mon
        self._slot = slot
        self.id = conn_id
        """Connection id: 1, 2, ... in order of the first packet."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Connection) and other.id == self.id and other._mon is self._mon

    def __hash__(self) -> int:
        return hash(self.id)

    # -- Python state -------------------------------------------------------------------------------
    def _state(self, make: bool = False) -> Optional[ConnState]:
        states = self._mon._states
        st = states.get(self._slot)
        if st is not None and st.id == self.id:
            return st
        if not make:
            return None
        if not self.alive:
            raise StaleConnection(f"connection {self.id} is gone (it ended before this call)")
        st = states[self._slot] = ConnState(self.id)
        self._mon._need_end(self)  # its CONN_END reaches Python, which drops the state there
        return st

    @property
    def ctx(self) -> Any:
        """A user context: any object an app wants to keep with the connection (None until set; dropped
        once its CONN_END has been handled)."""
        st = self._state()
        return st.ctx if st is not None else None

    @ctx.setter
    def ctx(self, value: Any) -> None:
        st = self._state(make=value is not None)
        if st is not None:
            st.ctx = value

    # -- reading ------------------------------------------------------------------------------------
    def _info(self) -> Any:
        info = ffi.new("struct mos_conn_info *")
        if lib.mos_conn_info(self._mon._eng, self._slot, self.id, info) != 0:
            raise StaleConnection(f"connection {self.id} is gone (it ended before this call)")
        return info

    @property
    def protocol(self) -> str:
        """``"tcp"`` or ``"udp"``."""
        p = lib.mos_conn_proto(self._mon._eng, self._slot, self.id)
        if p < 0:
            raise StaleConnection(f"connection {self.id} is gone (it ended before this call)")
        return PROTOCOL_NAMES.get(p, str(p))

    @property
    def community_id(self) -> str:
        """The Community ID v1 of the connection or flow (as Zeek and Suricata print it)."""
        from .communityid import community_id_of

        return community_id_of(self.info())

    def _tcp_only(self, what: str) -> None:
        """A :class:`MosError` when this is not a TCP connection: ``what`` needs TCP's streams or states."""
        p = lib.mos_conn_proto(self._mon._eng, self._slot, self.id)
        if p != _TCP and p >= 0:
            raise MosError(f"{what}() needs a TCP connection: connection {self.id} is a "
                           f"{PROTOCOL_NAMES.get(p, str(p)).upper()} flow (its datagrams: ev.data in PKT_IN)")

    @property
    def alive(self) -> bool:
        """True until the connection's CONN_END has been handled (during its CONN_END handlers too)."""
        return bool(lib.mos_conn_alive(self._mon._eng, self._slot, self.id))

    def info(self) -> Dict[str, Any]:
        """Everything known about the connection, as a dict (addresses, states, counters, times)."""
        return info_dict(self._info())

    @property
    def client(self) -> str:
        """The client endpoint, ``ip:port``."""
        i = self._info()
        return endpoint(i.ip_version, addr_str(i.ip_version, i.cli_addr), i.cli_port)

    @property
    def server(self) -> str:
        """The server endpoint, ``ip:port``."""
        i = self._info()
        return endpoint(i.ip_version, addr_str(i.ip_version, i.svr_addr), i.svr_port)

    def _snapshot(self) -> Optional[Tuple[int, ...]]:
        """The fields of the event being handled, when it is one of this connection's."""
        cur = self._mon._cur[0]
        return cur if cur is not None and cur[EV_CONN_ID] == self.id else None

    def state(self, side: Side) -> TcpState:
        """The TCP state of one endpoint (inside a handler: as it was when the event was raised)."""
        s = _one_side(side)
        self._tcp_only("state")
        snap = self._snapshot()
        if snap is not None:
            return TcpState(snap[EV_CLI_STATE + s])
        i = self._info()
        return TcpState(i.cli_state if s == 0 else i.svr_state)

    def stream_offset(self, side: Side) -> int:
        """How many bytes ``side`` has received in order, gaps included (inside a handler: at the event)."""
        s = _one_side(side)
        self._tcp_only("stream_offset")
        return self._offset(s)

    def _offset(self, s: int) -> int:
        snap = self._snapshot()
        if snap is not None:
            return int(snap[EV_RX_OFF0 + s])
        return int(self._info().stream_off[s])

    def window(self, side: Side) -> Tuple[int, int]:
        """The stream offsets ``[start, end)`` that :meth:`ppeek` can read in ``side``'s receive stream: the
        last ``peek_window`` bytes before the stream offset (inside a handler: at the event), whatever the
        batch boundaries. Gaps in it read as missing; with buffering off nothing is held."""
        s = _one_side(side)
        self._tcp_only("window")
        return self._window(s)

    def _window(self, s: int) -> Tuple[int, int]:
        end = self._offset(s)
        return max(0, end - self._mon._peek_window), end

    def peek(self, side: Side) -> bytes:
        """The bytes ``side`` received that this app has not peeked yet, as mOS's mtcp_peek: from the last
        peek's end to the stream offset (inside a handler: at the event). Gaps are skipped (DATA_GAP says
        where); bytes that left the :meth:`window` before being peeked are skipped and counted in
        :meth:`peek_lost`."""
        s = _one_side(side)
        self._tcp_only("peek")
        start, end = self._window(s)
        st = self._state(make=True)
        assert st is not None
        pos = st.read[s]
        if pos < start:
            st.lost[s] += start - pos
            pos = start
        if end <= pos:
            return b""
        out = bytearray()
        buf = ffi.new("uint8_t[]", min(end - pos, 1 << 20))
        got_start = ffi.new("uint64_t *")
        while pos < end:
            n = lib.mos_conn_peek(self._mon._eng, self._slot, self.id, s, pos, end, buf, len(buf), got_start)
            if n <= 0:
                break
            out += ffi.buffer(buf, n)
            pos = got_start[0] + n
        st.read[s] = end
        return bytes(out)

    def peek_lost(self, side: Side) -> int:
        """Bytes of ``side``'s receive stream that :meth:`peek` skipped because they had left the window
        (``Monitor(peek_window=...)``) before this app peeked them."""
        self._tcp_only("peek_lost")
        st = self._state()
        return st.lost[_one_side(side)] if st is not None else 0

    def ppeek(self, side: Side, offset: int, length: int) -> bytes:
        """The bytes of ``side``'s receive stream from stream offset ``offset``, at most ``length``, as mOS's
        mtcp_ppeek: those in the :meth:`window`, up to the first byte not held (a gap) or the window's end;
        b"" when ``offset`` is outside it. The result depends on the stream alone, never on batch boundaries.
        Bytes held out of order past the stream offset are read with :meth:`held_bytes`."""
        s = _one_side(side)
        self._tcp_only("ppeek")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise MosError(f"ppeek: offset must be a stream offset (an int >= 0), not {offset!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise MosError(f"ppeek: length must be an int >= 0, not {length!r}")
        start, end = self._window(s)
        if offset < start or offset >= end or length == 0:
            return b""
        return self._copy(s, offset, min(length, end - offset))

    def held_bytes(self, side: Side, offset: int, length: int) -> bytes:
        """Bytes held out of order past the stream offset (see :meth:`held_segments`), from ``offset`` up to
        the first byte not held: what may still become ``side``'s stream, if the holes before it fill."""
        s = _one_side(side)
        self._tcp_only("held_bytes")
        if not isinstance(offset, int) or offset < self._offset(s) or length <= 0:
            return b""
        return self._copy(s, offset, length)

    def _copy(self, s: int, offset: int, length: int) -> bytes:
        buf = ffi.new("uint8_t[]", length)
        n = lib.mos_conn_copy(self._mon._eng, self._slot, self.id, s, offset, length, buf)
        if n < 0:
            raise StaleConnection(f"connection {self.id} is gone")
        return bytes(ffi.buffer(buf, n))

    def held_segments(self, side: Side) -> List[Tuple[int, int]]:
        """Out-of-order segments held for ``side``'s receive stream: ``[(offset, length), ...]``."""
        s = _one_side(side)
        self._tcp_only("held_segments")
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
        """Subscribe a handler for this connection only (allowed inside a handler); it gets the
        connection's events from its next packet. Connections subscribing the same handlers share one
        subscription set, so this costs no memory per connection."""
        mon = self._mon
        key = ("+", event, handler, side, hook)
        if key not in mon._checked:
            mon._check_subscription(event, handler, side, hook)
            if len(mon._checked) < 4096:  # (a closure per connection is checked each time)
                mon._checked.add(key)
        mon._move_sub(self, key)

    def off(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
            hook: Hook = Hook.RCV) -> None:
        """Unsubscribe a handler of this connection (all of the event's handlers when None), at once."""
        ev = self._mon._check_event(event)
        sides_of(side), hook_of(hook)
        self._mon._move_sub(self, ("-", ev, handler, side, hook))

    def raise_event(self, event: EventId, data: Any = None) -> None:
        """Raise an event of the app's (:meth:`Monitor.alloc_event`) on this connection, as mOS's
        mtcp_raise_event: its handlers (and the events defined on it) run right after the handler that
        raised it returns, before the next event, with ``ev.data`` set to ``data``."""
        self._mon._raise(self, event, data)

    def add_timer(self, delay: float, callback: Callable[[Connection, float], Any], *,
                  periodic: bool = False) -> Any:
        """Call ``callback(conn, now)`` after ``delay`` seconds of packet time (every ``delay`` if periodic);
        cancelled when the connection ends. Returns the :class:`~mos.timer.Timer`."""
        if not callable(callback):
            raise MosError(f"add_timer: callback must be callable, not {callback!r}")
        st = self._state(make=True)
        assert st is not None
        t = self._mon._add_timer(delay, callback, periodic, Connection(self._mon, self._slot, self.id))
        st.timers = [x for x in st.timers if not x.cancelled] + [t]
        return t

    def stop_monitoring(self, side: Side = Side.BOTH) -> None:
        """Stop monitoring one side or both: no more events or bytes for it, from now on (the events the
        current packet raised after this one too); CONN_END still comes."""
        mask = 0
        for s in _sides(side):
            mask |= 1 << s
        if lib.mos_conn_stop(self._mon._eng, self._slot, self.id, mask) != 0:
            raise StaleConnection(f"connection {self.id} is gone")
        if self._mon.order != "batch":  # the events this packet raised before it are not handed over either
            self._mon._stopped_now[self._slot] = self._mon._stopped_now.get(self._slot, 0) | mask

    def set_buffering(self, side: Side, on: bool) -> None:
        """Hold ``side``'s receive stream for reassembly (on) or not, from the connection's next packet: as
        mOS's MOS_CLIBUF/MOS_SVRBUF on one connection. Off, out-of-order bytes are not held (they become
        gaps), in-order bytes are still delivered and peek/ppeek read nothing more."""
        self._tcp_only("set_buffering")
        for s in _sides(side):
            if lib.mos_conn_set_buffering(self._mon._eng, self._slot, self.id, s, int(bool(on))) != 0:
                raise StaleConnection(f"connection {self.id} is gone")

    def set_policy(self, policy: Union[Policy, str], side: Side = Side.BOTH) -> None:
        """Change the overlap policy of this connection's receive streams (``side``'s, or both)."""
        p = policy_of(policy)
        self._tcp_only("set_policy")
        if not isinstance(side, Side):
            raise MosError(f"side must be a mos.Side, not {side!r}")
        if lib.mos_conn_set_policy(self._mon._eng, self._slot, self.id, int(side), p.code) != 0:
            raise StaleConnection(f"connection {self.id} is gone")

    @property
    def last_packet(self) -> Optional[PacketView]:
        """The packet being handled (headers and payload), during a handler."""
        cur = self._mon._cur[0]
        return self._mon._packet_view(cur[EV_PKT]) if cur is not None else None

    # -- aliases: a translated endpoint (NAT) ------------------------------------------------------
    def set_alias(self, side: Side, addr: str, port: int) -> None:
        """From now on, packets between ``addr:port`` and the other endpoint are this connection's too,
        as if ``side``'s endpoint had sent or been sent them: what a NAT needs once it translates
        ``side``'s address (SNAT: ``Side.CLIENT`` with the public address and port it gave the
        connection; DNAT: ``Side.SERVER`` with the address the client connected to).

        The replies to the translated address then reach this connection (its other side), not a new
        one; its streams, states and events are the conversation the untranslated host has. One alias per
        connection (setting another replaces it); when a new connection claims an alias another one
        holds, the newer wins (a NAT reuses a port after the connection that had it ended). The alias goes
        when the connection ends. Works on a capture as live; packets that carried an alias are counted
        in ``alias_packets``.
        """
        self._set_alias(side, addr, port, translate=False)

    def _set_alias(self, side: Side, addr: str, port: int, translate: bool) -> None:
        s = _one_side(side)
        info = self._info()
        raw = _packed_addr(addr, int(info.ip_version))
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
            raise MosError(f"port must be an integer in 0..65535, not {port!r}")
        if translate:
            cur = self._mon._cur[0]
            pkt = cur[EV_PKT] if cur is not None and cur[EV_CONN_ID] == self.id else NO_PACKET
            rc = lib.mos_conn_translate(self._mon._eng, self._slot, self.id, s, raw, port, pkt)
            if rc == 0 and pkt != NO_PACKET:
                self._mon.port.packet_changed(pkt)
        else:
            rc = lib.mos_conn_alias(self._mon._eng, self._slot, self.id, s, raw, port)
        if rc == -1:
            raise StaleConnection(f"connection {self.id} has ended: it cannot take an alias")
        if rc == -2:
            raise MosError("no memory for an alias")
        if rc == -3:
            raise MosError(f"{endpoint(int(info.ip_version), addr, port)} is the connection's own endpoint, "
                           "not an alias")

    def translate(self, side: Side, addr: str, port: int) -> None:
        """NAT: ``side``'s endpoint is known past the box as ``addr:port``. Live inline, the engine rewrites
        the connection's frames as they cross, in C (no handler runs per packet): those ``side`` sends
        leave from ``addr:port`` (SNAT, for ``Side.CLIENT``), and those sent to ``addr:port`` go on to
        ``side``'s own address, port and MAC (the MAC of its frames); the IPv4 header and TCP/UDP
        checksums are updated incrementally. The packet being handled is rewritten too, so call it from
        the handler of the connection's first packet (CONN_START). It sets the alias
        (:meth:`set_alias`), so both directions stay one connection; on a capture that is all it does.
        A frame of the connection that cannot be rewritten in place (an IPv6 packet with extension
        headers, a datagram reassembled from fragments) is dropped (``untranslated_drop``), never
        forwarded with its own address. Counted in ``translated_packets``.
        """
        self._set_alias(side, addr, port, translate=True)

    @property
    def alias(self) -> Optional[Tuple[Side, str, int]]:
        """``(side, addr, port)`` of the connection's alias (:meth:`set_alias`), or None."""
        raw = ffi.new("uint8_t[16]")
        port = ffi.new("uint16_t *")
        s = lib.mos_conn_get_alias(self._mon._eng, self._slot, self.id, raw, port)
        if s < 0:
            return None
        return Side(s), addr_str(int(self._info().ip_version), raw), int(port[0])

    # -- live path verdicts (the live source's session, mos.source.LiveControl) ---------------------
    def drop(self) -> None:
        """Live: drop this connection's packets from now on (the current one too), in XDP for later ones."""
        self._mon.live_session().drop(self._mon.port, self)

    def bypass(self) -> None:
        """Live: later packets skip userspace (passed to the host, or forwarded in XDP when inline)."""
        self._mon.live_session().bypass(self._mon.port, self)

    def drop_last_packet(self) -> None:
        """Live, inline: drop only the packet being handled (the verdict is forward by default)."""
        self._mon.live_session().drop_packet(self._mon.port)

    def set_last_packet(self, data: bytes, offset: int = 0, layer: str = "eth", resize: bool = False) -> int:
        """Live, inline: overwrite bytes of the packet being handled, as mOS's mtcp_setlastpkt.

        ``offset`` counts from the start of ``layer`` (``eth``, ``ip``, ``tcp``/``udp``, ``payload``); the
        IP length (IPv4 total length, IPv6 payload length) and the IPv4 header and TCP/UDP checksums follow
        every rewrite. ``resize`` makes the packet end after ``data``: bytes inserted or removed (the
        payload grows or shrinks, as MOS_INSERT/MOS_CHOMP). From that packet on, the sender's sequence
        numbers in that direction and the receiver's acknowledgements (SACK blocks too) are translated,
        as a NAT ALG does, so the endpoints stay in sync; a retransmission of the resized segment is
        rewritten alike. Returns the packet's length. The engine's view of the stream is not changed: it
        is what the sender sent.
        """
        return int(self._mon.live_session().rewrite(self._mon.port, bytes(data), offset, layer, resize))

    # -- sending (live: AF_XDP TX; a capture: recorded, Monitor.sent) --------------------------------
    def send(self, side: Side, payload: bytes = b"", flags: str = "PA") -> int:
        """Send a TCP segment to endpoint ``side`` as its peer would now, as mOS's mtcp_sendpkt: the
        sequence number ``side`` expects (its peer's next, translated as the run translates it), the
        acknowledgement of what ``side`` sent, the connection's addresses, ports, VLANs and the MACs of
        its frames. ``flags``: TCP flag letters (``"PA"``, ``"A"``, ``"FA"``, ``"RA"``).

        Live it leaves at once (after the frames of the batch being handled) out of the interface
        ``side`` is behind; inline, the bytes sent shift the peer's later sequence numbers (and ``side``'s
        acknowledgements back), so both endpoints stay in sync. The engine's streams keep what the
        endpoints themselves sent. On a capture the frame is recorded (:meth:`Monitor.sent`). Returns the
        frame's length.
        """
        self._tcp_only("send")
        s = _one_side(side)
        bits = flag_bits(flags)
        data = check_payload(payload)
        return int(self._mon._injector().send(self._mon.port, self, s, data, bits))

    def reset(self) -> None:
        """Reset the connection: a RST to each endpoint at once, with the sequence number each expects
        (RFC 5961: exactly its rcv_nxt, so it is taken, not challenged). Live inline, the connection's
        later frames are dropped. The connection ends in the engine with reason RST (its CONN_END comes
        once the events being handled are done; counted in ``conns_reset``)."""
        self._tcp_only("reset")
        inj = self._mon._injector()
        if not self.alive or self.info()["end"] is not None:
            raise MosError(f"connection {self.id} has ended: it cannot be reset")
        inj.reset(self._mon.port, self)

    def __repr__(self) -> str:
        try:
            return f"<Connection {self.id} {self.client} -> {self.server}>"
        except MosError:
            return f"<Connection {self.id} (ended)>"


def _packed_addr(addr: str, version: int) -> bytes:
    """``addr`` as the engine keys it (16 bytes, IPv4 in the first 4); it must be of ``version``."""
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    try:
        packed = socket.inet_pton(fam, str(addr))
    except (OSError, TypeError):
        raise MosError(f"{addr!r} is not an IPv{version} address (the connection is IPv{version})") from None
    return packed.ljust(16, b"\0")


def _one_side(side: Side) -> int:
    if not isinstance(side, Side):
        raise MosError(f"side must be Side.CLIENT or Side.SERVER, not {side!r}")
    if side is Side.BOTH:
        raise MosError("this needs Side.CLIENT or Side.SERVER, not Side.BOTH")
    return int(side)


def _sides(side: Side) -> Tuple[int, ...]:
    if not isinstance(side, Side):
        raise MosError(f"side must be Side.CLIENT, Side.SERVER or Side.BOTH, not {side!r}")
    return (0, 1) if side is Side.BOTH else (int(side),)
