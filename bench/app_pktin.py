"""Benchmark app: a trivial Python handler on PKT_IN (receive hook): one call per packet of a connection."""

from mos import Event

_calls = [0]


def init(monitor):
    def on_pkt(conn, ev):
        _calls[0] += 1

    monitor.on(Event.PKT_IN, on_pkt)


def finish(monitor):
    print(f"events={_calls[0]} packets={monitor.stats()['packets']}")
