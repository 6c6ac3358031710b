"""The event API: a :class:`Monitor` runs the C engine over packets and calls Python handlers.

The C side owns the hot loop: it parses, tracks and reassembles every packet, and queues only the
events someone subscribed to. Python takes the queue once per batch of packets (one crossing per
batch, not per packet) and calls the handlers. Everything a handler can read about a connection is
still there while the batch's events are handled: bytes delivered, connections that just ended.

Packets come from a :class:`mos.source.PacketSource` (:meth:`Monitor.run`); the monitor hands the source
an :class:`EnginePort`, the declared way in (see :mod:`mos.source`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import struct
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

from .abi import (
    EV_CONN,
    EV_CONN_ID,
    EV_HOOK,
    EV_PKT,
    EV_SIDE,
    EV_SUB,
    EV_TS,
    EV_TYPE,
    EVENT_FORMAT,
    EVENT_SIZE,
    NO_PACKET,
    NO_WSCALE,
    checksum_mode_names,
    ffi,
    frag_policy_names,
    lib,
    order_names,
)
from .connection import (
    Connection,
    ConnState,
    EventId,
    EventInfo,
    PacketView,
    RaisedEventInfo,
    addr_str,
    info_dict,
)
from .errors import MosError
from .errors import StaleConnection as StaleConnectionError
from .events import BUILTIN_EVENTS, MAX_EVENTS, PROTOCOLS, USER_EVENT_BASE, Event, Hook, Policy, Side, policy_of
from .filter import Filter, PyFilter, UserEvent
from .handler_errors import HandlerErrors
from .inject import SentRecorder, check_frame
from .source import LiveControl, PacketSource, PcapSource
from .stats import engine_stats
from .subscriptions import (
    Flat,
    Handler,
    Key,
    SubSets,
    added,
    build_flat,
    check_hook,
    hook_of,
    masks_of,
    removed,
    sides_of,
)
from .timer import Timer, TimerQueue
from .watchdog import MIN_BUDGET, STOP_GRACE, Watchdog, calls_app_code

__all__ = ["EnginePort", "Monitor"]


class EnginePort:
    """What a :class:`~mos.source.PacketSource` is handed by :meth:`Monitor.run`: the one way a source
    moves packets into the monitor's engine and lets handlers and timers run.

    A batch source calls :meth:`feed`. A source that runs the engine from C itself (the AF_XDP pump)
    takes :attr:`engine`, stops its C loop at :meth:`next_due`, then calls :meth:`dispatch` for the
    events its packets raised, and :meth:`fire_timers` / :meth:`advance` as its clock goes.
    """

    __slots__ = ("_mon", "engine")

    def __init__(self, mon: Monitor) -> None:
        self._mon = mon
        self.engine: Any = mon._eng
        """The engine (``mos_engine_t *``) for C-side loops such as ``mos_xsk_pump``."""

    @property
    def stopped(self) -> bool:
        """A handler or timer called :meth:`Monitor.stop`."""
        return self._mon._stop

    def feed(self, linktype: int, pkts: Any, n: int) -> None:
        """Process ``n`` packets of ``pkts`` (``struct mos_pkt[]``): engine, handlers, timers in order."""
        self._mon.feed(linktype, pkts, n)

    def dispatch(self) -> None:
        """Run the handlers of the events the engine queued, then the packets held back for them (order
        ``connection``) and their events, until none is held."""
        self._mon._dispatch(drain=True)

    def next_due(self) -> int:
        """Packet time (ns) of the next timer, 0 when none: the engine must stop before it."""
        return self._mon._timers.next_due()

    def fire_timers(self, now: int) -> None:
        """Fire the timers due at ``now`` (ns)."""
        self._mon._fire_timers(now)

    def anchor_timers(self, now: int) -> None:
        """Packet time starts at ``now`` (a live source's clock): timers added before count from it."""
        if self._mon._timers.unanchored:
            self._mon._timers.anchor(now)

    def advance(self, now: int) -> None:
        """Move packet time to ``now`` without a packet (idle expiry), then run the events it raised."""
        lib.mos_engine_advance(self._mon._eng, now)
        self._mon._dispatch(drain=True)

    def current_packet(self) -> Optional[int]:
        """The engine's index of the packet being handled (None outside a packet's handlers)."""
        cur = self._mon._cur[0]
        pkt = int(cur[EV_PKT]) if cur is not None else NO_PACKET
        return None if pkt == NO_PACKET else pkt

    def packet_changed(self, pkt: int) -> None:
        """The bytes of packet ``pkt`` were rewritten: a view of it read before is stale."""
        self._mon._views.pop(pkt, None)


def frag_policy_code(name: str) -> int:
    """The engine's number of an IP fragment overlap policy; a :class:`MosError` naming the choices otherwise."""
    names = frag_policy_names()
    if name not in names:
        raise MosError(f"unknown fragment overlap policy {name!r} (choose from {', '.join(names)})")
    return names.index(name)
def protocols_of(protocols: Any) -> Tuple[str, ...]:
    """The protocols a monitor tracks, from a sequence of names or a comma-separated string; a
    :class:`MosError` naming the choices otherwise. TCP is always tracked (the engine is a TCP stack)."""
    names = protocols.split(",") if isinstance(protocols, str) else protocols
    try:
        out = tuple(str(n).strip().lower() for n in names)
    except TypeError:
        out = ()
    bad = [n for n in out if n not in PROTOCOLS]
    if bad or not out:
        raise MosError(f"protocols: {', '.join(bad) if bad else repr(protocols)} is not a choice "
                       f"(choose from {', '.join(PROTOCOLS)}, e.g. protocols=('tcp', 'udp'))")
    if "tcp" not in out:
        raise MosError("protocols must include 'tcp' (UDP flows come in addition to TCP connections)")
    return out


CHECKSUM_MODES = checksum_mode_names()
ORDERS = order_names()
"""When handlers run (``connection``, ``batch``, ``packet``), from the engine's table."""
"""The checksum settings (``auto``, ``on``, ``off``), from the engine's table."""
_CHECKSUM_STATES = {lib.MOS_CSUM_STATE_OFF: "off", lib.MOS_CSUM_STATE_VALIDATING: "validating",
                    lib.MOS_CSUM_STATE_SAMPLING: "sampling", lib.MOS_CSUM_STATE_AUTO_OFF: "auto-off"}


class Monitor:
    """The stack as an app sees it: subscribe handlers, then run it over a capture (or live traffic).

    Options: ``policy`` (overlap policy, :class:`Policy`), ``frag_policy`` (which copy of overlapping
    IP fragments the datagram keeps: a name of :func:`mos.abi.frag_policy_names`), ``buffer_client`` /
    ``buffer_server`` (hold bytes for reassembly on that side; False is mOS's MOS_CLIBUF/MOS_SVRBUF = 0),
    ``vlan_in_key`` (VLAN ids are part of a connection's key), ``pickup`` (track connections already in
    progress), ``max_conns``, ``dir_buffer_limit`` (bytes held per direction), ``max_segments``,
    ``memcap`` (bytes held by reassembly in all), timeouts in seconds (``timeout_syn``,
    ``timeout_established``, ``timeout_closed``, ``timeout_udp``: a UDP flow's idle end), ``protocols``
    (whose flows are connections: ``("tcp", "udp")``, as Zeek and Suricata track both; ``("tcp",)``
    makes UDP packets ORPHAN), ``frag_memcap``, ``frag_timeout``, ``strict``
    (an exception in a handler stops the run), ``checksum`` (``auto``, ``on``, ``off``: which packets
    with a wrong IPv4, TCP or UDP checksum are dropped before the engine; :attr:`checksum_state`),
    ``peek_window`` (bytes of each stream kept behind its end for :meth:`Connection.peek` and
    :meth:`Connection.ppeek`, whatever the batch boundaries; at most half of ``dir_buffer_limit``),
    ``handler_timeout`` (seconds an event handler, timer callback or Python filter may run before it is
    interrupted with :class:`~mos.errors.HandlerTimeout`, reported like any exception of a handler; 0: no
    limit; see :mod:`mos.watchdog`), ``filter`` (a tcpdump expression, compiled with libpcap, judging the
    first packet of each flow and each orphan as mOS's monitor filter does: a flow whose first packet does
    not match is not monitored and its packets are counted ``filtered_out``; both directions of a matching
    flow are) and ``order``:

    * ``"connection"`` (the default, mOS's model): what a handler does (stop monitoring, subscribe or
      unsubscribe, change a policy or buffering, drop) takes effect from the connection's next packet.
      Packets still cross into Python once per batch: within a batch, once a packet of a connection has
      queued an event, that connection's later packets wait until the handlers ran (other connections
      go on), so each connection's events come in its packet order, but events of different
      connections may come out of their global order, and global subscriptions made in a handler act
      from the next batch for the other connections' packets already processed.
    * ``"batch"``: actions take effect from the next batch (the connection's later packets of the batch
      were processed before its handlers ran); the fastest.
    * ``"packet"`` (``sync=True``): events are handed over after every packet that raised some: global
      packet order, at the cost of a crossing per such packet.

    Inside a handler the event and the connection's state, stream offsets and ``peek`` are as they were
    when the event was raised.
    """

    _SETTABLE = frozenset({"strict", "handler_errors", "read_error", "port"})

    def __init__(
        self,
        *,
        policy: Union[Policy, str] = Policy.FIRST,
        frag_policy: str = "first",
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
        timeout_closed: Optional[float] = None,
        timeout_udp: float = 60.0,
        protocols: Union[Tuple[str, ...], List[str], str] = ("tcp", "udp"),
        frag_memcap: int = 64 << 20,
        frag_timeout: float = 30.0,
        event_queue: int = 8192,
        strict: bool = False,
        stream_dir: Optional[str] = None,
        order: str = "connection",
        sync: bool = False,
        checksum: str = "auto",
        peek_window: int = 64 << 10,
        handler_timeout: float = 1.0,
        filter: Optional[str] = None,
    ) -> None:
        cfg = ffi.new("struct mos_config *")
        lib.mos_config_default(cfg)
        cfg.policy = policy_of(policy).code
        cfg.frag_policy = frag_policy_code(frag_policy)
        cfg.buffer_cli = int(bool(buffer_client))
        cfg.buffer_svr = int(bool(buffer_server))
        cfg.vlan_in_key = int(bool(vlan_in_key))
        cfg.pickup = int(bool(pickup))
        if order not in ORDERS:
            raise MosError(f"unknown order {order!r} (choose from {', '.join(ORDERS)})")
        if sync:
            if order not in ("connection", "packet"):
                raise MosError(f"sync=True is order='packet', not order={order!r}")
            order = "packet"
        cfg.order = ORDERS.index(order)
        self.order = order
        if checksum not in CHECKSUM_MODES:
            raise MosError(f"unknown checksum setting {checksum!r} (choose from {', '.join(CHECKSUM_MODES)})")
        cfg.checksum = CHECKSUM_MODES.index(checksum)
        for name, val, lo, hi in (
            ("max_conns", max_conns, 1, 1 << 28),
            ("dir_buffer_limit", dir_buffer_limit, 0, (1 << 32) - 1),
            ("max_segments", max_segments, 1, (1 << 32) - 1),
            ("event_queue", event_queue, 64, 1 << 24),
            ("peek_window", peek_window, 0, (1 << 32) - 1),
            ("memcap", memcap, 0, 1 << 62),
            ("frag_memcap", frag_memcap, 0, 1 << 62),
        ):
            if not isinstance(val, int) or isinstance(val, bool):
                raise MosError(f"{name} must be an int, not {val!r}")
            if not lo <= val <= hi:
                raise MosError(f"{name} must be between {lo} and {hi}, not {val}")
        cfg.max_conns = max_conns
        cfg.dir_buffer_limit = dir_buffer_limit
        cfg.max_segments = max_segments
        cfg.memcap = memcap
        cfg.event_queue = event_queue
        cfg.peek_window = peek_window
        cfg.udp = int("udp" in protocols_of(protocols))
        for tname, tval in (("timeout_syn", timeout_syn), ("timeout_established", timeout_established),
                            ("timeout_closed", timeout_closed), ("timeout_udp", timeout_udp),
                            ("frag_timeout", frag_timeout)):
            if tval is not None and (not isinstance(tval, (int, float)) or isinstance(tval, bool) or tval <= 0):
                raise MosError(f"{tname} must be a positive number of seconds, not {tval!r}")
        cfg.timeout_syn_ns = int(timeout_syn * 1e9)
        cfg.timeout_est_ns = int(timeout_established * 1e9)
        cfg.timeout_udp_ns = int(timeout_udp * 1e9)
        if timeout_closed is not None:  # else the engine's TIME_WAIT default
            cfg.timeout_closed_ns = int(timeout_closed * 1e9)
        cfg.frag_memcap = frag_memcap
        cfg.frag_timeout_ns = int(frag_timeout * 1e9)
        err = ffi.new("char[256]")
        eng = lib.mos_engine_new(cfg, err, 256)
        if eng == ffi.NULL:
            raise MosError(ffi.string(err).decode())
        self._eng = ffi.gc(eng, lib.mos_engine_free)
        self._peek_window = int(lib.mos_engine_peek_window(self._eng))
        self.filter: Optional[str] = None
        """The monitor filter (tcpdump syntax), None for none."""
        self._filter_linktype = -1
        if filter is not None:
            self._set_filter(filter, lib.MOS_DLT_EN10MB)
        self.strict = strict
        """An exception in a handler stops the run (it is re-raised)."""
        self._handlers: Dict[Key, Tuple[Handler, ...]] = {}
        self._user: Dict[int, UserEvent] = {}
        self._children: Dict[int, List[UserEvent]] = {}
        self._states: Dict[int, ConnState] = {}
        self._checked: Set[Any] = set()  # subscriptions already checked (conn.on in CONN_START: once)
        self._moved: Dict[int, Tuple[int, int]] = {}  # slot -> (id, set) moved in this dispatch
        self._subs = SubSets(self._eng, self, self._moved)
        self._stopped_now: Dict[int, int] = {}
        self._raised: List[Tuple[Connection, int, Any]] = []
        self._timers = TimerQueue()
        self._timer_now: Optional[int] = None
        self._cur: List[Optional[Tuple[int, ...]]] = [None]
        """The event being handled (its unpacked record): a list, set in place once per event."""
        self._views: Dict[int, PacketView] = {}
        self._errors = HandlerErrors()
        self.handler_timeout = handler_timeout
        self._skipped = 0  # handler calls not made: the run was stopping, past its deadline
        self._silenced: Optional[Dict[int, Tuple[Any, Any]]] = None  # id -> (owner, its handler table)
        self._stop = False
        self.read_error: Optional[str] = None
        """Why the last capture ended early (a truncated file), if it did."""
        self._pev = ffi.new("struct mos_event **")
        self._live: Optional[LiveControl] = None
        self._recorder: Optional[SentRecorder] = None  # a capture's frames sent by the app (self.sent())
        self.port = EnginePort(self)
        """The engine port a packet source is handed (see :mod:`mos.source`)."""
        self._sync_masks()
        if stream_dir is not None:
            self.write_streams(stream_dir)
        self._ready = True

    def __setattr__(self, name: str, value: Any) -> None:
        # a misspelt or misplaced option (mon.buffer_client = False) would otherwise do nothing, silently
        if (name[0] != "_" and name not in self._SETTABLE and type(self) is Monitor and "_ready" in self.__dict__
                and not hasattr(self, name)):
            raise MosError(f"Monitor has no attribute {name!r}: options are given to Monitor(...), e.g. "
                           f"Monitor({name}=...) if it is one")
        object.__setattr__(self, name, value)

    @property
    def handler_errors(self) -> int:
        """Exceptions raised by handlers, filters and timer callbacks (reported on stderr)."""
        return self._errors.count

    @property
    def handler_timeout(self) -> float:
        """Seconds a handler, timer callback or Python filter may run in :meth:`run` before it is
        interrupted with :class:`~mos.errors.HandlerTimeout` (0: no limit); read when a run starts."""
        return self._handler_timeout

    @handler_timeout.setter
    def handler_timeout(self, value: float) -> None:
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf
                or 0 < value < MIN_BUDGET):
            raise MosError(f"handler_timeout must be 0 (no limit) or a number of seconds of at least "
                           f"{MIN_BUDGET:g}, not {value!r}")
        self._handler_timeout = float(value)

    # -- events ---------------------------------------------------------------------------------------
    def _check_event(self, event: Any) -> int:
        """The number of an event of this monitor; a :class:`MosError` that says what is wrong otherwise."""
        if isinstance(event, str):
            hint = f" (did you mean Event.{event}?)" if event in Event.__members__ else ""
            raise MosError(f"event must be a mos.Event or an id from define_event/alloc_event, not the "
                           f"string {event!r}{hint}")
        if not isinstance(event, int) or isinstance(event, bool):
            raise MosError(f"event must be a mos.Event or an id from define_event/alloc_event, not {event!r}")
        e = int(event)
        if not (0 <= e < BUILTIN_EVENTS or e in self._user):
            raise MosError(f"unknown event {event!r} (not a built-in event, nor defined on this monitor)")
        return e

    def _check_subscription(self, event: Any, handler: Any, side: Any, hook: Any) -> int:
        e = self._check_event(event)
        if not callable(handler):
            raise MosError(f"handler must be callable (a function handler(conn, ev)), not {handler!r}")
        sides_of(side)
        check_hook(self, e, hook_of(hook))
        return e

    def root(self, ev: int) -> int:
        """The built-in event a user event derives from (itself for a built-in one, or for an event of
        :meth:`alloc_event`)."""
        while ev >= USER_EVENT_BASE and self._user[ev].base >= 0:
            ev = self._user[ev].base
        return ev


    def c_bit(self, ev: int) -> Optional[int]:
        """The event the engine must queue so that ``ev`` can be raised (itself, or the ancestor whose
        Python filter derives it); None for an event only the app raises."""
        while ev >= USER_EVENT_BASE and not self._user[ev].in_c:
            ev = self._user[ev].base
            if ev < 0:
                return None
        return ev

    # -- subscriptions --------------------------------------------------------------------------------
    def on(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
           hook: Hook = Hook.RCV) -> Any:
        """Subscribe ``handler(conn, ev)`` to an event, for every connection; usable as a decorator.

        ``side`` selects the endpoint whose stack raises the event (the receiving side for data);
        ``hook`` selects mOS's hook point: after the sender's (``Hook.SND``) or the receiver's update
        (``Hook.RCV``, the default; only PKT_IN and TCP_STATE_CHANGE are raised at SND too). CONN_START
        and CONN_END are per connection: they reach handlers of either side.
        """
        if handler is None:
            self._check_event(event)
            return lambda fn: self.on(event, fn, side=side, hook=hook)
        ev = self._check_subscription(event, handler, side, hook)
        self._handlers = added(self._handlers, ev, handler, sides_of(side), hook_of(hook))
        self._sync_masks()
        return handler

    def off(self, event: EventId, handler: Optional[Handler] = None, *, side: Side = Side.BOTH,
            hook: Hook = Hook.RCV) -> None:
        """Unsubscribe a handler (or all of the event's handlers); allowed inside a handler, at once."""
        ev = self._check_event(event)
        self._handlers = removed(self._handlers, ev, handler, sides_of(side), hook_of(hook))
        self._sync_masks()

    def _sync_masks(self) -> None:
        masks = masks_of(self._handlers, self)
        for h in (0, 1):
            for s in (0, 1):
                lib.mos_engine_set_mask(self._eng, h, s, masks[h][s])
        self._flat = build_flat(self._handlers, self)

    def _move_sub(self, conn: Connection, key: Any) -> None:
        """Move a connection to the subscription set its current one becomes with ``key`` (SubSets.step).

        During a dispatch the move is noted (the rest of the dispatch reads it) and the engine is told of
        every move at once when the events are done (one crossing, not one per subscription), before any
        later packet is processed; outside one, the engine is told at once."""
        slot = conn._slot
        moved = self._moved
        m = moved.get(slot)
        f = self._cur[0]
        if m is not None and m[0] == conn.id:
            cur = m[1]
        elif f is not None and f[EV_CONN_ID] == conn.id:  # the event being handled says which set it is in
            cur = f[EV_SUB]
        else:
            cur = lib.mos_conn_get_sub(self._eng, slot, conn.id)
            if cur < 0:
                raise StaleConnectionError(f"connection {conn.id} is gone (it ended before this call)")
        subs = self._subs
        cur_set = subs.by_id[cur]
        assert cur_set is not None
        nxt = subs.step(cur_set, key)
        if nxt is cur_set:
            return
        if f is not None:
            moved[slot] = (conn.id, nxt.id)
        elif lib.mos_conn_set_sub(self._eng, slot, conn.id, nxt.id) != 0:
            raise StaleConnectionError(f"connection {conn.id} is gone (it ended before this call)")

    def _apply_moves(self) -> None:
        """Tell the engine the subscription sets connections moved to during the dispatch."""
        moved = self._moved
        n = len(moved)
        slots = ffi.new("uint32_t[]", list(moved))
        ids = ffi.new("uint64_t[]", [m[0] for m in moved.values()])
        subs = ffi.new("uint32_t[]", [m[1] for m in moved.values()])
        lib.mos_engine_set_subs(self._eng, n, slots, ids, subs)
        moved.clear()

    def _need_end(self, conn: Connection) -> None:
        self._move_sub(conn, "end")

    def define_event(self, base: EventId, filter: Union[Filter, PyFilter, None] = None) -> int:
        """A new event raised when ``base`` is raised and ``filter`` holds; returns its id.

        ``filter`` is a :class:`Filter` (run in C, so most packets never reach Python) or a Python
        callable ``filter(conn, ev) -> bool``. Chainable: ``base`` may be a user-defined event.
        """
        base_i = self._check_event(base)
        if not (filter is None or isinstance(filter, Filter) or callable(filter)):
            raise MosError("a filter is a mos.Filter or a callable(conn, ev) -> bool")
        uid = self._new_event_id()
        base_in_c = base_i < BUILTIN_EVENTS or self._user[base_i].in_c
        in_c = base_in_c and (filter is None or isinstance(filter, Filter))
        ue = UserEvent(uid, base_i, filter, in_c)
        if in_c:
            cf = filter.to_c() if isinstance(filter, Filter) else ffi.NULL
            if lib.mos_engine_define_event(self._eng, uid, base_i, cf) != 0:
                raise MosError(f"the engine refused event {uid} on base {base_i}")
        else:
            self._children.setdefault(base_i, []).append(ue)
        self._user[uid] = ue
        return uid

    def alloc_event(self) -> int:
        """A new event with no base, raised only by the app with :meth:`Connection.raise_event` (mOS's
        mtcp_alloc_event); handlers subscribe to it and events can be defined on it as on any other."""
        uid = self._new_event_id()
        self._user[uid] = UserEvent(uid, -1, None, False)
        return uid

    def _new_event_id(self) -> int:
        ids = [i for i in range(USER_EVENT_BASE, MAX_EVENTS) if i not in self._user]
        if not ids:
            raise MosError(f"at most {MAX_EVENTS - USER_EVENT_BASE} user-defined events")
        return ids[0]

    def _raise(self, conn: Connection, event: EventId, data: Any) -> None:
        ev = self._check_event(event)
        if ev < USER_EVENT_BASE or self._user[ev].base >= 0:
            raise MosError("raise_event raises events of alloc_event only (the engine raises the others)")
        if self._cur[0] is None:
            raise MosError("raise_event is called from a handler (it is raised with the event being handled)")
        self._raised.append((conn, ev, data))

    def _deliver_raised(self, f: Tuple[int, ...]) -> None:
        """The events raised by the handlers that just ran, in order (and those they raise in turn)."""
        k = 0
        while k < len(self._raised):
            conn, ev, data = self._raised[k]
            k += 1
            self._deliver(conn, f, ev, RaisedEventInfo(f, self, ev, data))
        self._raised.clear()

    def _deliver(self, conn: Optional[Connection], f: Tuple[int, ...], ev: int, info: EventInfo) -> None:
        """Run the handlers of user event ``ev`` (global, then the connection's), then derive its events."""
        idx = (f[EV_HOOK] * 2 + f[EV_SIDE]) * MAX_EVENTS + ev
        for fn in self._flat[idx]:
            self._call(fn, (conn, info), conn)
        if conn is not None:
            sub = self._sub_of(f)
            if sub:
                sset = self._subs.by_id[sub]
                if sset is not None:
                    for fn in sset.flat[idx]:
                        self._call(fn, (conn, info), conn)
        if ev in self._children:
            self._derive(conn, f, ev, info)

    def _sub_of(self, f: Tuple[int, ...]) -> int:
        moved = self._moved.get(f[EV_CONN]) if self._moved else None
        return moved[1] if moved is not None and moved[0] == f[EV_CONN_ID] else f[EV_SUB]

    # -- timers ------------------------------------------------------------------------------------
    def add_timer(self, delay: float, callback: Callable[..., Any], *, periodic: bool = False) -> Timer:
        """Call ``callback(monitor, now)`` (or ``callback(monitor)``) after ``delay`` seconds of packet time
        (every ``delay`` if periodic); ``now`` is :attr:`now` when it fires."""
        if not callable(callback):
            raise MosError(f"add_timer: callback must be callable, not {callback!r}")
        return self._add_timer(delay, callback, periodic, None, _positional_args(callback) >= 2)

    def _add_timer(self, delay: float, callback: Callable[..., Any], periodic: bool, conn: Optional[Connection],
                   with_now: bool = True) -> Timer:
        """A timer calling ``callback(conn or monitor, now)`` (without ``now`` unless ``with_now``)."""
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay <= 0:
            raise MosError(f"add_timer: delay must be a positive number of seconds, not {delay!r}")
        cur = self._cur[0]
        now = cur[EV_TS] if cur is not None else int(lib.mos_engine_now(self._eng))
        t = self._timers.add(now, int(delay * 1e9), callback, periodic)
        t.conn = conn
        t.with_now = with_now
        return t

    def _fire_timers(self, now: int) -> None:
        for t in self._timers.pop_due(now):
            lib.mos_engine_advance(self._eng, t.due)
            self._dispatch(drain=True)
            if self._silenced is not None:
                self._skipped += 1
                continue
            self._timer_now = t.due
            try:
                first = self if t.conn is None else t.conn
                args = (first, t.due / 1e9) if t.with_now else (first,)
                self._call(t.callback, args, t.conn, "timer callback")
            finally:
                self._timer_now = None

    @property
    def now(self) -> float:
        """The current time in seconds, as mOS's mtcp_cb_get_ts: the time of the packet whose event is being
        handled, or the due time of the timer firing, else the engine's latest packet time."""
        cur = self._cur[0]
        if cur is not None:
            return float(cur[EV_TS]) / 1e9
        if self._timer_now is not None:
            return self._timer_now / 1e9
        return int(lib.mos_engine_now(self._eng)) / 1e9

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
    def run(self, source: PacketSource, progress: Optional[Callable[[int, int], Any]] = None) -> Dict[str, int]:
        """Run over a packet source until its input ends or :meth:`stop`; returns the counters.

        Every connection still open at the end ends (EOF). ``progress(pos, size)`` is called after each
        step when the source knows its size. A source with a ``session`` (live) is this monitor's
        :meth:`live_session` for the run.
        """
        source.open()
        dog = self._watchdog()
        try:
            sample = getattr(source, "checksum_sample", None)
            if sample is not None and self.checksum_state == "sampling":
                sample(self._eng)  # a capture: decided on its start before its first packet is judged
            region = source.stable_region()
            if region is not None:
                # the packets stay readable until close: reassembly holds their bytes by reference, no copy
                lib.mos_engine_set_stable(self._eng, region[0], region[1])
            with self.session(source.session):
                port = self.port
                while not self._stop and source.pump(port):
                    if progress is not None:
                        where = source.progress()
                        if where is not None:
                            progress(*where)
                if source.read_error is not None:
                    self.read_error = source.read_error
                self.finish()
        finally:
            if dog is not None:
                dog.stop()
                self._unsilence()
            lib.mos_engine_set_stable(self._eng, ffi.NULL, ffi.NULL)  # copies what is still held
            source.close()
            self._errors.summary()
        return self.stats()

    def _watchdog(self) -> Optional[Watchdog]:
        """The run's watchdog, started (:mod:`mos.watchdog`); None outside the main thread (signals, which
        it interrupts handlers with, are handled there only)."""
        dog = Watchdog(self._handler_timeout, self._silence)
        return dog if dog.start() else None

    def _silence(self) -> None:
        """The run is stopping and its deadline passed: no app code is called any more, each call not made
        is counted (``handler_calls_skipped_at_stop``). Called from the watchdog's thread, again at each of
        its looks (a set made meanwhile gets its turn); :meth:`_unsilence` puts everything back after the run.

        The handler tables (the global one, each per-connection set's) and the Python filters are replaced
        by ones of the same shape whose entries count instead of calling: the dispatch reads them at each
        event, so it needs no test of its own. Timers are skipped in :meth:`_fire_timers`."""
        done = self._silenced
        if done is None:
            done = self._silenced = {}
            done[id(self._flat)] = (self, self._flat)
            self._flat = self._skipping(self._flat)
            children = self._children
            done[id(children)] = (self, children)
            self._children = {t: [UserEvent(ue.id, ue.base, self._skip_filter, ue.in_c) for ue in ues]
                              for t, ues in children.items()}
        for sset in self._subs.by_id:
            if sset is not None and sset.handlers and id(sset) not in done:
                done[id(sset)] = (sset, sset.flat)
                sset.flat = self._skipping(sset.flat)

    def _unsilence(self) -> None:
        """What :meth:`_silence` replaced, back (the run is over), and one line about the calls not made."""
        done, self._silenced = self._silenced, None
        if done is None:
            return
        for owner, table in done.values():
            if owner is not self:
                owner.flat = table
            elif isinstance(table, dict):
                self._children = table
            else:
                self._flat = table
        if self._skipped:
            sys.stderr.write(f"mos-xdp: stopping: {self._skipped} handler call(s) not made, from {STOP_GRACE:g} s "
                             f"after the stop signal (handler_calls_skipped_at_stop)\n")

    def _skipping(self, flat: Flat) -> Flat:
        """A handler table of the same shape as ``flat`` whose entries count the calls instead of making them."""
        skip = self._skip_call
        return [(skip,) * len(hs) if hs else hs for hs in flat]

    def _skip_call(self, *_args: Any) -> None:
        self._skipped += 1

    def _skip_filter(self, *_args: Any) -> bool:
        self._skipped += 1
        return False

    def run_pcap(self, path: str, progress: Optional[Callable[[int, int], Any]] = None) -> Dict[str, int]:
        """Run over a pcap or pcapng file (:class:`~mos.source.PcapSource`); returns the counters."""
        return self.run(PcapSource(path), progress)

    def _set_filter(self, expr: str, linktype: int) -> None:
        """The engine's monitor filter for packets of ``linktype`` (userspace/monitor_filter.h); a one-line
        :class:`MosError` quoting libpcap when it does not compile."""
        if not isinstance(expr, str):
            raise MosError(f"filter must be a string in tcpdump syntax, not {expr!r}")
        err = ffi.new("char[256]")
        if lib.mos_engine_set_filter(self._eng, expr.encode(), linktype, err, 256) != 0:
            msg = ffi.string(err).decode(errors="replace")
            on = "" if linktype == lib.MOS_DLT_EN10MB else f" for link type {linktype}"
            raise MosError(f"filter {expr!r}{on}: {msg}")
        self.filter = expr or None
        self._filter_linktype = linktype

    def feed(self, linktype: int, pkts: Any, n: int) -> None:
        """Process a batch of ``struct mos_pkt`` (any packet source): engine, handlers, timers."""
        if self.filter is not None and linktype != self._filter_linktype:
            self._set_filter(self.filter, linktype)  # an input of another link type: its error said here
        i = 0
        idle = 0
        timers = self._timers
        if n and timers.unanchored:
            timers.anchor(int(pkts[0].ts_ns))
        while i < n and not self._stop:
            due = timers.next_due()
            k = lib.mos_engine_feed(self._eng, linktype, pkts + i, n - i, due)
            i += k
            self._dispatch(drain=True)
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
    @calls_app_code
    def _call(self, fn: Callable[..., Any], args: Tuple[Any, ...], conn: Optional[Connection],
              what: str = "handler") -> None:
        """Call a handler; an exception is reported with the connection, and the run goes on (unless strict)."""
        try:
            fn(*args)
        except Exception:
            self._handler_failed(fn, conn, what)

    def _handler_failed(self, fn: Any, conn: Optional[Connection], what: str = "handler") -> None:
        """Report the exception being handled (with its connection); re-raise if strict."""
        self._errors.report(fn, _where(conn), sys.exc_info(), what=what)
        if self.strict:
            raise

    @calls_app_code
    def _dispatch(self, drain: bool = False) -> None:
        """Run the handlers of the queued events. With ``drain`` (after a feed), then process the packets
        held back for them (order ``connection``) and handle their events, round after round in this one
        call, until none is held: the batch is then done."""
        pev = self._pev
        eng = self._eng
        n = lib.mos_engine_events(eng, pev)
        if not n and not self._views:
            # nothing for Python: the common case on a busy link
            if not drain:
                lib.mos_engine_events_done(eng)
                return
            n = lib.mos_engine_next(eng, pev)
            if n < 0:
                return
        # field indexes and event numbers as locals: the loop below runs once per event
        i_type, i_side, i_hook, i_slot, i_cid, i_sub = EV_TYPE, EV_SIDE, EV_HOOK, EV_CONN, EV_CONN_ID, EV_SUB
        conn_end, max_ev, conn_level = _CONN_END, MAX_EVENTS, _CONN_LEVEL
        children = self._children
        subs = self._subs.by_id
        states = self._states
        moved = self._moved
        stopped = self._stopped_now
        failed = self._handler_failed
        cur = self._cur
        views = self._views
        raised = self._raised
        unpack = _EVENT.iter_unpack
        conns: Dict[int, Connection] = {}  # the handles of this call's connections, by slot (not kept)
        while True:
            try:
                for f in unpack(ffi.buffer(pev[0], n * EVENT_SIZE)):
                    t = f[i_type]
                    slot = f[i_slot]
                    if stopped and slot in stopped and t not in conn_level and stopped[slot] >> f[i_side] & 1:
                        continue  # raised by the packet before a handler stopped monitoring that side
                    idx = (f[i_hook] * 2 + f[i_side]) * max_ev + t
                    if slot:
                        conn = conns.get(slot)
                        if conn is None or conn.id != f[i_cid]:
                            conn = conns[slot] = Connection(self, slot, f[i_cid])
                    else:
                        conn = None
                    cur[0] = f
                    info = EventInfo(f, self, t)
                    # (re-read each time: a handler may subscribe or unsubscribe)
                    for fn in self._flat[idx]:
                        try:
                            fn(conn, info)
                        except Exception:
                            failed(fn, conn)
                    sub = f[i_sub]
                    if moved:
                        m = moved.get(slot)
                        if m is not None and m[0] == f[i_cid]:
                            sub = m[1]
                    if sub:
                        sset = subs[sub]
                        if sset is not None:
                            for fn in sset.flat[idx]:
                                try:
                                    fn(conn, info)
                                except Exception:
                                    failed(fn, conn)
                    if t == conn_end and slot in states:
                        self._ended(slot, f[i_cid])
                    if raised:
                        self._deliver_raised(f)
                    if t in children:
                        self._derive(conn, f, t, info)
            finally:
                if views:
                    views.clear()
                cur[0] = None
                if raised:
                    raised.clear()
                if moved:
                    self._apply_moves()
                if stopped:
                    stopped.clear()
                if drain:
                    n = lib.mos_engine_next(eng, pev)  # the events of the next round, -1: none held
                else:
                    lib.mos_engine_events_done(eng)
                    n = -1
            if n < 0:
                return

    def _ended(self, slot: int, conn_id: int) -> None:
        """A connection's CONN_END was handled: its Python state goes, its timers are cancelled."""
        st = self._states.get(slot)
        if st is not None and st.id == conn_id:
            for t in st.timers:
                t.cancel()
            del self._states[slot]

    @calls_app_code
    def _derive(self, conn: Optional[Connection], f: Tuple[int, ...], t: int, base: EventInfo) -> None:
        """Python-filtered user events derived from event type ``t``."""
        for ue in self._children.get(t, ()):
            info = base.derived(ue.id)
            flt = ue.filter
            try:
                ok = True if flt is None else (
                    flt.matches(conn, info) if isinstance(flt, Filter) else flt(conn, info))
            except Exception:
                self._handler_failed(flt, conn, f"filter of event {ue.id}")
                ok = False
            if ok:
                self._deliver(conn, f, ue.id, info)

    def _packet_view(self, pkt: int) -> Optional[PacketView]:
        if pkt == NO_PACKET:
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
            src=addr_str(ver, out.src) if ver else "", dst=addr_str(ver, out.dst) if ver else "",
            sport=out.sport, dport=out.dport, proto=out.proto, tcp_flags=out.tcp_flags, seq=out.seq,
            ack=out.ack, window=out.window, mss=out.mss, wscale=None if out.wscale == NO_WSCALE else out.wscale,
            sack_permitted=bool(out.sack_perm), tsval=out.tsval if out.has_ts else None,
            tsecr=out.tsecr if out.has_ts else None, vlan=tuple(out.vlan[k] for k in range(out.nvlan)),
            caplen=out.caplen, wirelen=out.wirelen, raw=rawb, l3_offset=out.l3_off, l4_offset=out.l4_off,
            payload_offset=out.payload_off, payload_len=out.payload_len,
        )
        self._views[pkt] = v
        return v

    # -- checksums ----------------------------------------------------------------------------------
    @property
    def checksum_state(self) -> str:
        """Where checksum validation stands: ``off``; ``validating`` (``on``, or ``auto`` found no
        offloading); ``sampling`` (``auto`` before its decision: validating meanwhile); ``auto-off``
        (``auto`` found offloaded checksums and stopped validating; ``checksum_auto_off`` is 1)."""
        return _CHECKSUM_STATES[lib.mos_engine_checksum_state(self._eng)]

    def complete_partial_checksums(self) -> None:
        """The packets are writable frames that may come from a local stack offloading its checksums (a
        veth, live): a TCP/UDP checksum holding only the pseudo-header's sum is completed in the frame
        (``checksum_completed``) rather than judged wrong; every other checksum is validated as the setting
        says."""
        lib.mos_engine_checksum_complete(self._eng, 1)

    # -- counters -----------------------------------------------------------------------------------
    def stats(self) -> Dict[str, int]:
        """Engine counters: packet dispositions, malformations by reason, reassembly and fragments; then the
        app code's: ``handler_errors`` (exceptions of handlers, filters, timer callbacks), ``handler_timeouts``
        (those that were a HandlerTimeout) and ``handler_calls_skipped_at_stop`` (not made: the run was
        stopping, past its deadline; see :mod:`mos.watchdog`)."""
        out = engine_stats(self._eng)
        out["handler_errors"] = self.handler_errors
        out["handler_timeouts"] = self._errors.timeouts
        out["handler_calls_skipped_at_stop"] = self._skipped
        return out

    def connections(self) -> List[Connection]:
        """The connections being tracked (not ended)."""
        n = lib.mos_engine_live_conns(self._eng, ffi.NULL, ffi.NULL, 0)
        slots = ffi.new("uint32_t[]", max(n, 1))
        ids = ffi.new("uint64_t[]", max(n, 1))
        n = lib.mos_engine_live_conns(self._eng, slots, ids, n)
        return [Connection(self, int(slots[k]), int(ids[k])) for k in range(n)]

    # -- live path: the session of the source being run ---------------------------------------------
    @contextlib.contextmanager
    def session(self, control: Optional[LiveControl]) -> Iterator[None]:
        """Within the block, ``control`` answers this monitor's live calls (:meth:`bpf`, :meth:`block`,
        ``Connection.drop`` ...). :meth:`run` does it for a source's ``session``; a live source does it to
        run set-up hooks before traffic. None leaves the current one."""
        if control is None:
            yield
            return
        prev, self._live = self._live, control
        try:
            yield
        finally:
            self._live = prev

    def live_session(self) -> LiveControl:
        """The live control of the run going on; a :class:`MosError` on a capture."""
        if self._live is None:
            raise MosError("this works on live traffic only (mos-xdp run --iface)")
        return self._live

    # -- sending (mos.inject) ---------------------------------------------------------------------
    def _injector(self) -> Any:
        """Where what the app sends goes: the live session, or a capture's recorder."""
        if self._live is not None:
            return self._live
        if self._recorder is None:
            self._recorder = SentRecorder()
        return self._recorder

    def send_packet(self, frame: bytes, iface: Optional[str] = None) -> None:
        """Send a raw Ethernet frame out of ``iface`` (live: the monitored interface by default, or the
        inline peer); on a capture it is recorded (:meth:`sent`)."""
        self._injector().send_packet(self.port, check_frame(frame, iface), iface)

    def sent(self) -> List[bytes]:
        """A capture: the frames the app sent (``Connection.send`` / ``reset``, :meth:`send_packet`), in
        order, as they would have been sent (``injected_packets`` in :meth:`stats` counts them all)."""
        return [f for _, _, f in self._recorder.frames] if self._recorder is not None else []

    def write_sent(self, path: str) -> int:
        """A capture: writes :meth:`sent` to a pcap file; returns the number of frames."""
        return (self._recorder or SentRecorder()).write_pcap(path)

    @property
    def bpf(self) -> Any:
        """Live: the XDP program (a :class:`mos.xdp.XdpProgram`): ``stats()``, ``bypassed()``, ``blocked()``..."""
        return self.live_session().prog

    def block(self, prefix: str) -> str:
        """Live: drop packets from or to an IP prefix in XDP (``10.0.0.0/8``, ``2001:db8::/32``, an address)."""
        return str(self.live_session().prog.block(prefix))

    def unblock(self, prefix: str) -> bool:
        """Live: stop dropping a prefix; False when it was not blocked."""
        return bool(self.live_session().prog.unblock(prefix))

    def answer_arp(self, addr: str) -> str:
        """Live: ARP requests for the IPv4 address ``addr`` are answered in XDP, with the MAC of the
        interface asked on, for the rest of the run (also while no engine runs): the address a NAT
        translates to, which no host owns. Call it from an :func:`mos.on_start` hook. Returns it."""
        return str(self.live_session().answer_arp(addr))

    def block_port(self, port: int) -> None:
        """Live: drop TCP and UDP packets from or to ``port`` in XDP."""
        self.live_session().prog.block_port(port)

    def unblock_port(self, port: int) -> bool:
        """Live: stop dropping ``port``; False when it was not blocked."""
        return bool(self.live_session().prog.unblock_port(port))


_CONN_END = int(Event.CONN_END)
_EVENT = struct.Struct(EVENT_FORMAT)
_CONN_LEVEL = (int(Event.CONN_START), int(Event.CONN_END))


def _where(conn: Optional[Connection]) -> str:
    if conn is None:
        return "no connection"
    try:
        return f"connection {conn.id} ({conn.client} -> {conn.server})"
    except MosError:
        return f"connection {conn.id}"


def _positional_args(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``; 1 if it cannot be told)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    n = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return 1 << 10
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n
