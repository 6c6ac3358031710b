"""Who handles what: the global handler table and the per-connection subscription sets.

A subscription is (event, side, hook) -> handlers. The global table is the monitor's; a connection's own
subscriptions are a :class:`SubSet`, an immutable value shared by every connection that has the same
handlers, as in mOS's scalable event system: ``conn.on(...)`` moves the connection from its set to the set
with that handler added, found through a cache on the set (so a million connections subscribing the same
handler in CONN_START create one set and cost 4 bytes each, in C: ``struct conn.sub``). The engine keeps
each set's event masks (``mos_engine_set_sub_mask``), so it queues a connection's events by its set, and
every queued event carries its set's id: dispatch finds the handlers without any per-connection object.

Sets no connection uses any more are collected (the engine says which are still referred to), so that
handlers made per connection (a closure each) do not grow the table without bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Protocol, Tuple

from .abi import ffi, lib
from .errors import MosError
from .events import BUILTIN_EVENTS, MAX_EVENTS, Event, Hook, Side

if TYPE_CHECKING:
    from .connection import Connection, EventInfo

Handler = Callable[["Connection", "EventInfo"], Any]
"""A handler: ``handler(conn, ev)`` (``conn`` is None for ORPHAN events)."""
Key = Tuple[int, int, int]
"""(event, side, hook) of a subscription."""
Flat = List[Tuple[Handler, ...]]
"""Handlers by ``(hook * 2 + side) * MAX_EVENTS + event``: one list index per event in the dispatch."""

_CONN_LEVEL = (int(Event.CONN_START), int(Event.CONN_END))
_AT_SND = int(lib.MOS_EV_AT_SND)


def flat_index(event: int, side: int, hook: int) -> int:
    """The index of (event, side, hook) in a :data:`Flat` table."""
    return (hook * 2 + side) * MAX_EVENTS + event


def sides_of(side: Any) -> Tuple[int, ...]:
    """The sides a subscription with ``side`` covers; a :class:`MosError` for anything but a :class:`Side`."""
    if not isinstance(side, Side):
        raise MosError(f"side must be Side.CLIENT, Side.SERVER or Side.BOTH, not {side!r}")
    return (0, 1) if side is Side.BOTH else (int(side),)


def hook_of(hook: Any) -> int:
    """The engine's number of a hook; a :class:`MosError` for anything but a :class:`Hook`."""
    if not isinstance(hook, Hook):
        raise MosError(f"hook must be Hook.RCV or Hook.SND, not {hook!r}")
    return int(hook)


class Resolver(Protocol):
    """What the tables need to know of the monitor's events: their root built-in event and the event the
    engine must queue for each (itself, or the ancestor whose Python filter derives it)."""

    def root(self, ev: int) -> int: ...

    def c_bit(self, ev: int) -> Optional[int]: ...


def check_hook(resolver: Resolver, event: int, hook: int) -> None:
    """A subscription at a hook the engine never raises ``event`` at is refused (it would never fire)."""
    if hook != Hook.SND:
        return
    root = resolver.root(event)
    if root >= BUILTIN_EVENTS:
        return  # an event of the app's own (alloc_event): raised at the hook of the event it is raised in
    if not _AT_SND & (1 << root):
        at_snd = ", ".join(Event(e).name for e in range(BUILTIN_EVENTS) if _AT_SND & (1 << e))
        raise MosError(f"{Event(root).name} is raised at Hook.RCV only (at Hook.SND: {at_snd}); "
                       f"subscribe with hook=Hook.RCV")


def build_flat(handlers: Dict[Key, Tuple[Handler, ...]], resolver: Resolver) -> Flat:
    """The dispatch table of a handler table. CONN_START/CONN_END (and the events derived from them) are
    per connection: raised with one side, they reach the handlers of both sides, each handler once."""
    flat: Flat = [()] * (4 * MAX_EVENTS)
    for (ev, s, h), hs in handlers.items():
        if hs:
            flat[flat_index(ev, s, h)] = hs
    for (ev, _s, h) in list(handlers):
        if resolver.root(ev) in _CONN_LEVEL:
            both = tuple(dict.fromkeys(handlers.get((ev, 0, h), ()) + handlers.get((ev, 1, h), ())))
            flat[flat_index(ev, 0, h)] = flat[flat_index(ev, 1, h)] = both
    return flat


def masks_of(handlers: Dict[Key, Tuple[Handler, ...]], resolver: Resolver) -> List[List[int]]:
    """The engine masks [hook][side] that make it queue what these handlers need."""
    masks = [[0, 0], [0, 0]]
    for (ev, s, h), hs in handlers.items():
        bit = resolver.c_bit(ev)
        if hs and bit is not None:
            masks[h][s] |= 1 << bit
    return masks


def added(handlers: Dict[Key, Tuple[Handler, ...]], event: int, fn: Handler, sides: Iterable[int],
          hook: int) -> Dict[Key, Tuple[Handler, ...]]:
    """A copy of a handler table with ``fn`` added (once per key)."""
    out = dict(handlers)
    for s in sides:
        cur = out.get((event, s, hook), ())
        if fn not in cur:
            out[(event, s, hook)] = cur + (fn,)
    return out


def removed(handlers: Dict[Key, Tuple[Handler, ...]], event: int, fn: Optional[Handler], sides: Iterable[int],
            hook: int) -> Dict[Key, Tuple[Handler, ...]]:
    """A copy of a handler table without ``fn`` (all of the key's handlers when None)."""
    out = dict(handlers)
    for s in sides:
        key = (event, s, hook)
        cur = out.get(key, ())
        rest = () if fn is None else tuple(h for h in cur if h != fn)
        if rest:
            out[key] = rest
        else:
            out.pop(key, None)
    return out


class SubSet:
    """A set of per-connection subscriptions shared by the connections that have them (copy on write)."""

    __slots__ = ("id", "handlers", "flat", "end", "_next", "__weakref__")

    def __init__(self, sid: int, handlers: Dict[Key, Tuple[Handler, ...]], end: bool, flat: Flat) -> None:
        self.id = sid
        """Its number in the engine (0: the empty set)."""
        self.handlers = handlers
        """(event, side, hook) -> handlers."""
        self.flat = flat
        """The handlers by dispatch index."""
        self.end = end
        """Its connections need their CONN_END to reach Python (their Python state is cleaned up there)."""
        self._next: Dict[Any, SubSet] = {}

    @property
    def empty(self) -> bool:
        """No handler and nothing to clean up."""
        return not self.handlers and not self.end


class SubSets:
    """The per-connection subscription sets of one engine: interned by content, transitions cached."""

    def __init__(self, eng: Any, resolver: Resolver, pending: Dict[int, Tuple[int, int]]) -> None:
        self._eng = eng
        self._resolver = resolver
        self._pending = pending  # slot -> (id, set): moves the engine is not told of yet, sets in use too
        self._by_key: Dict[Any, SubSet] = {}
        self.empty = SubSet(0, {}, False, [()] * (4 * MAX_EVENTS))
        self.by_id: List[Optional[SubSet]] = [self.empty]
        """Sets by id (None: free), indexed with an event's ``sub`` field in the dispatch."""
        self._free: List[int] = []
        self._live_after_gc = 1

    def _intern(self, handlers: Dict[Key, Tuple[Handler, ...]], end: bool) -> SubSet:
        key = (frozenset(handlers.items()), end)
        got = self._by_key.get(key)
        if got is not None:
            return got
        if not handlers and not end:
            return self.empty
        if not self._free and len(self.by_id) >= max(1024, 2 * self._live_after_gc):
            self.collect()
        if self._free:
            sid = self._free.pop()
        else:
            sid = len(self.by_id)
            if sid >= lib.MOS_MAX_SUBS:
                raise MosError(f"more than {lib.MOS_MAX_SUBS} distinct per-connection subscription sets "
                               "in use: subscribe one handler function and keep per-connection state in conn.ctx")
            self.by_id.append(None)
        masks = masks_of(handlers, self._resolver)
        if end:
            masks[Hook.RCV][0] |= 1 << int(Event.CONN_END)
        for h in (0, 1):
            for s in (0, 1):
                if lib.mos_engine_set_sub_mask(self._eng, sid, h, s, masks[h][s]) != 0:
                    raise MosError("out of memory for per-connection subscriptions")
        sub = SubSet(sid, handlers, end, build_flat(handlers, self._resolver))
        self.by_id[sid] = sub
        self._by_key[key] = sub
        return sub

    def step(self, cur: SubSet, key: Any) -> SubSet:
        """The set after ``key`` is applied to ``cur``: ``("+", event, fn, side, hook)`` adds a handler,
        ``("-", event, fn or None, side, hook)`` removes it (all of the key's when None), ``"end"`` makes
        its connections' CONN_END reach Python. Cached on ``cur``: the common case is one dict lookup."""
        nxt = cur._next.get(key)
        if nxt is not None and self.by_id[nxt.id] is nxt:
            return nxt
        if key == "end":
            nxt = cur if cur.end else self._intern(cur.handlers, True)
        else:
            op, event, fn, side, hook = key
            change = added if op == "+" else removed
            nxt = self._intern(change(cur.handlers, int(event), fn, sides_of(side), hook_of(hook)), cur.end)
        cur._next[key] = nxt
        return nxt

    def collect(self) -> None:
        """Free the sets no connection and no queued event refers to (their ids are reused)."""
        n = len(self.by_id)
        used = ffi.new("uint8_t[]", n)
        lib.mos_engine_subs_in_use(self._eng, used, n)
        for _, sid in self._pending.values():
            used[sid] = 1
        live = 1
        for sid in range(1, n):
            sub = self.by_id[sid]
            if sub is None:
                continue
            if used[sid]:
                live += 1
                continue
            self.by_id[sid] = None
            self._by_key.pop((frozenset(sub.handlers.items()), sub.end), None)
            self._free.append(sid)
        self._live_after_gc = live

    def __len__(self) -> int:
        return len(self.by_id) - len(self._free)


__all__ = ["Flat", "Handler", "Key", "Resolver", "SubSet", "SubSets", "added", "build_flat", "check_hook",
           "flat_index", "hook_of", "masks_of", "removed", "sides_of"]
