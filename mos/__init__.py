"""mos-xdp: a networking stack for stateful middleboxes.

Both TCP endpoints' state, both directions' byte streams and mOS-style events, for Python apps, over
pcap files or live XDP/AF_XDP traffic. Start with :class:`Monitor`::

    from mos import Monitor, Event, Side

    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)   # bytes the server received
    def request(conn, ev):
        print(conn.id, ev.data[:40])

    mon.run_pcap("trace.pcap")

The layers: :mod:`mos.abi` (the C engine's layouts and names), :mod:`mos.events`, :mod:`mos.filter`,
:mod:`mos.connection`, :mod:`mos.timer`, :mod:`mos.monitor` (the event API), :mod:`mos.source` (packet
sources: pcap here, AF_XDP in :mod:`mos.live`), :mod:`mos.stats`, and the ``mos-xdp`` CLI in :mod:`mos.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AppArg",
    "AppArgs",
    "Connection",
    "EndReason",
    "ErrorKind",
    "Event",
    "EventInfo",
    "Filter",
    "HandlerTimeout",
    "Hook",
    "Monitor",
    "MosError",
    "OrphanKind",
    "PacketSource",
    "PacketView",
    "PcapSource",
    "Policy",
    "Side",
    "StaleConnection",
    "TcpState",
    "Timer",
]

__version__ = "0.1.0"

# Where each public name lives. Loaded on first use: `mos-xdp vm` imports this package without needing
# the C engine, which every module below but errors and app_args loads.
_WHERE = {
    "AppArg": "app_args", "AppArgs": "app_args",
    "Connection": "connection", "EventInfo": "connection", "PacketView": "connection",
    "EndReason": "events", "ErrorKind": "events", "Event": "events", "Hook": "events", "OrphanKind": "events",
    "Policy": "events", "Side": "events", "TcpState": "events",
    "Filter": "filter",
    "Monitor": "monitor",
    "HandlerTimeout": "errors", "MosError": "errors", "StaleConnection": "errors",
    "PacketSource": "source", "PcapSource": "source",
    "Timer": "timer",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'mos' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
