"""Benchmark app: a Python handler on CONN_NEW_DATA that takes every delivered chunk's bytes."""

from mos import Event

_state = {"bytes": 0, "events": 0}


def init(monitor):
    def on_data(conn, ev):
        _state["bytes"] += len(ev.data)
        _state["events"] += 1

    monitor.on(Event.CONN_NEW_DATA, on_data)


def finish(monitor):
    st = monitor.stats()
    print(f"delivered={_state['bytes']} events={_state['events']} packets={st['packets']}")
