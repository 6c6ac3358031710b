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
    NO_WSCALE,
    ffi,
    lib,
)
from .errors import MosError, StaleConnection
from .events import BUILTIN_EVENTS, EndReason, ErrorKind, Event, Hook, OrphanKind, Policy, Side, TcpState, policy_of
from .stats import ENGINE_COUNTERS

if TYPE_CHECKING:
    from .monitor import Monitor

Handler = Callable[["Connection", "EventInfo"], Any]
"""A handler: ``handler(conn, ev)`` (``conn`` is None for ORPHAN events)."""
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
        "client_wscale": None if i.cli_wscale == NO_WSCALE else int(i.cli_wscale),
        "server_wscale": None if i.svr_wscale == NO_WSCALE else int(i.svr_wscale),
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
        """CONN_NEW_DATA: the new bytes. REXMIT (inconsistent): the bytes first seen."""
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
        base = self._mon._root_type(self.type)
        if base == Event.CONN_END:
            return EndReason(r)
        if base == Event.ERROR:
            return ErrorKind(r)
        if base == Event.ORPHAN:
            return OrphanKind(r)
        return r

    @property
    def malformed(self) -> Optional[str]:
        """ERROR of kind ``MALFORMED``: the counter the packet was counted under (``malformed_*``, as in
        :meth:`Monitor.stats`); None for any other event."""
        if self._mon._root_type(self.type) != Event.ERROR or self._f[EV_REASON] != ErrorKind.MALFORMED:
            return None
        names = ENGINE_COUNTERS
        return names[self._f[EV_LEN]] if self._f[EV_LEN] < len(names) else None

    @property
    def bad_checksum(self) -> Optional[str]:
        """ERROR of kind ``CHECKSUM_INVALID``: the counter the packet was counted under (``bad_checksum_ip``,
        ``bad_checksum_tcp``, ``bad_checksum_udp``); None for any other event."""
        if self._mon._root_type(self.type) != Event.ERROR or self._f[EV_REASON] != ErrorKind.CHECKSUM_INVALID:
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

    def __repr__(self) -> str:
        return f"<EventInfo {self.event!r} side={self.side.name} hook={self.hook.name}>"


class Connection:
    """A TCP connection seen by the stack: both endpoints' states and both receive streams.

    ``Side.CLIENT`` is the endpoint that sent the first SYN (or, for a connection picked up mid-stream,
    the one guessed from ports and flags). As in mOS, ``peek(side)`` reads the stream ``side``
    *receives*: ``peek(Side.SERVER)`` gives the bytes the client sent.
    """

    __slots__ = ("_mon", "_slot", "id", "ctx", "_read", "_handlers", "_ended", "__weakref__")

    def __init__(self, mon: Monitor, slot: int, conn_id: int) -> None:
        self._mon = mon
        self._slot = slot
        self.id = conn_id
        """Connection id: 1, 2, ... in order of the first packet."""
        self.ctx: Any = None
        """A user context: any object an app wants to keep with the connection."""
        self._read = [0, 0]
        self._handlers: Optional[Dict[Tuple[int, int, int], List[Handler]]] = None
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
        return endpoint(i.ip_version, addr_str(i.ip_version, i.cli_addr), i.cli_port)

    @property
    def server(self) -> str:
        """The server endpoint, ``ip:port``."""
        i = self._info()
        return endpoint(i.ip_version, addr_str(i.ip_version, i.svr_addr), i.svr_port)

    def _snapshot(self) -> Optional[Tuple[int, ...]]:
        """The fields of the event being handled, when it is one of this connection's."""
        cur = self._mon._cur_f
        return cur if cur is not None and cur[EV_CONN_ID] == self.id else None

    def state(self, side: Side) -> TcpState:
        """The TCP state of one endpoint (inside a handler: as it was when the event was raised)."""
        s = _one_side(side)
        snap = self._snapshot()
        if snap is not None:
            return TcpState(snap[EV_CLI_STATE + s])
        i = self._info()
        return TcpState(i.cli_state if s == 0 else i.svr_state)

    def stream_offset(self, side: Side) -> int:
        """How many bytes ``side`` has received in order, gaps included (inside a handler: at the event)."""
        s = _one_side(side)
        snap = self._snapshot()
        if snap is not None:
            return snap[EV_RX_OFF0 + s]
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
        subscribe(self._handlers, event, handler, side, hook)
        self._sync_masks()

    def off(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
            hook: Hook = Hook.RCV) -> None:
        """Unsubscribe a handler of this connection (all of the event's handlers when None)."""
        if not self._handlers:
            return
        unsubscribe(self._handlers, event, handler, side, hook)
        self._sync_masks()

    def _sync_masks(self) -> None:
        masks = [[0, 0], [0, 0]]
        for (ev, s, h), lst in (self._handlers or {}).items():
            if lst:
                masks[h][s] |= 1 << self._mon._c_bit(ev)
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
        p = policy_of(policy)
        if lib.mos_conn_set_policy(self._mon._eng, self._slot, self.id, p.code) != 0:
            raise StaleConnection(f"connection {self.id} is gone")

    @property
    def last_packet(self) -> Optional[PacketView]:
        """The packet being handled (headers and payload), during a handler."""
        cur = self._mon._cur_f
        return self._mon._packet_view(cur[EV_PKT]) if cur is not None else None

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
        IPv4 header and TCP/UDP checksums are recomputed. ``resize`` makes the packet end after ``data``.
        Returns the packet's length. The engine's view of the stream is not changed.
        """
        return int(self._mon.live_session().rewrite(self._mon.port, bytes(data), offset, layer, resize))

    def __repr__(self) -> str:
        try:
            return f"<Connection {self.id} {self.client} -> {self.server}>"
        except MosError:
            return f"<Connection {self.id} (ended)>"



HandlerTable = Dict[Tuple[int, int, int], List[Handler]]


def subscribe(table: HandlerTable, event: EventId, handler: Handler, side: Side, hook: Hook) -> None:
    for s in _sides(side):
        table.setdefault((int(event), s, int(hook)), []).append(handler)


def unsubscribe(table: HandlerTable, event: EventId, handler: Optional[Handler], side: Side,
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

