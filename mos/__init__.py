"""mos-xdp: a networking stack for stateful middleboxes.

Both TCP endpoints' state, both directions' byte streams and mOS-style events, for Python apps, over
pcap files or live XDP/AF_XDP traffic. Start with :class:`Monitor`::

    from mos import Monitor, Event, Side

    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)   # bytes the server received
    def request(conn, ev):
        print(conn.id, ev.data[:40])

    mon.run_pcap("trace.pcap")
"""

from .events import EndReason, ErrorKind, Event, Hook, Policy, Side, TcpState

__all__ = [
    "Connection",
    "EndReason",
    "ErrorKind",
    "Event",
    "EventInfo",
    "Filter",
    "Hook",
    "Monitor",
    "MosError",
    "PacketView",
    "Policy",
    "Side",
    "StaleConnection",
    "TcpState",
    "Timer",
]

__version__ = "0.1.0"


def __getattr__(name: str):  # the engine is loaded on first use, so `mos vm` works without a build
    if name in ("Connection", "EventInfo", "Filter", "Monitor", "MosError", "PacketView", "StaleConnection",
                "Timer"):
        from . import monitor

        return getattr(monitor, name)
    raise AttributeError(f"module 'mos' has no attribute {name!r}")
