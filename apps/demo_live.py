"""demo_live: midstat, http_log and firewall together on one monitor (the middle box of `mos-xdp demo`).

    mos-xdp run apps/demo_live.py --iface IN --peer OUT --stats      # inline, what the live demo runs
    mos-xdp run apps/demo_live.py --pcap trace.pcap                  # offline: the firewall only reports

Prints each HTTP request (``http_log``), drops a connection whose client sends a forbidden pattern even
when it is split across segments (``firewall``, ``--pattern``, default ``/etc/passwd``), and at the end
the table of connections with both endpoints' TCP states (``midstat``; ``--interval``). It takes the
arguments of the three apps (``--app-help`` lists them).

The three apps were written alone and each keeps its per-connection state in ``conn.ctx``; to share a
monitor, each one is given a view of the monitor whose handlers see a ``conn.ctx`` of their own.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

# the app's directory is on sys.path when `mos-xdp run` loads it
import firewall
import http_log
import midstat

from mos import AppArg, AppArgs, Monitor

APPS = (midstat, http_log, firewall)
ARGS: List[AppArg] = [a for app in APPS for a in getattr(app, "ARGS", [])]


class _Contexts(dict):  # type: ignore[type-arg]
    """What ``conn.ctx`` really holds: each app's own context, by app name."""


class AppView:
    """The monitor as one app sees it: its handlers get their own ``conn.ctx``; the rest is the monitor."""

    def __init__(self, mon: Monitor, name: str) -> None:
        self._mon = mon
        self._name = name
        self._wrapped: Dict[Tuple[Any, ...], Callable[..., Any]] = {}

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._mon, attr)

    def _wrap(self, key: Tuple[Any, ...], fn: Callable[..., Any]) -> Callable[..., Any]:
        name = self._name

        def handler(conn: Any, ev: Any) -> Any:
            store = conn.ctx
            if not isinstance(store, _Contexts):
                store = _Contexts()
            conn.ctx = store.get(name)
            try:
                return fn(conn, ev)
            finally:
                store[name] = conn.ctx
                conn.ctx = store

        handler.__name__ = handler.__qualname__ = f"{name}.{getattr(fn, '__name__', 'handler')}"
        self._wrapped[key] = handler
        return handler

    def on(self, event: Any, handler: Any = None, **kw: Any) -> Any:
        """``Monitor.on`` with the app's own ``conn.ctx``."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._mon.on(event, self._wrap((event, fn, *sorted(kw.items())), fn), **kw)
            return fn

        return add(handler) if handler is not None else add

    def off(self, event: Any, handler: Any = None, **kw: Any) -> None:
        """``Monitor.off`` for a handler subscribed through this view."""
        fn = self._wrapped.pop((event, handler, *sorted(kw.items())), handler) if handler is not None else None
        self._mon.off(event, fn, **kw)


def init(mon: Monitor, args: AppArgs) -> None:
    """Initialise the three apps on the same monitor, each with its own per-connection context and the
    arguments it declares."""
    for app in APPS:
        view = AppView(mon, app.__name__)
        declared = getattr(app, "ARGS", None)
        if declared is None:
            app.init(view)
        else:
            app.init(view, AppArgs({a.key: args[a.key] for a in declared}))


def finish(mon: Monitor) -> None:
    """The apps' reports: dropped connections, request count, then the final connection table."""
    for app in (firewall, http_log, midstat):
        app.finish(mon)
