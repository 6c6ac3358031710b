"""midstat: mOS's netstat-like table of connections, with both endpoints' TCP states.

    mos-xdp run apps/midstat.py --pcap trace.pcap

    mos-xdp run apps/midstat.py --pcap trace.pcap -- --interval 0

Prints the table of live connections every ``--interval`` seconds of packet time (default 1; 0 turns it
off), and at the end every connection seen with its final states and why it ended.
"""

from __future__ import annotations

import sys
from typing import Dict, List

from mos import AppArg, AppArgs, Connection, Event, EventInfo, Hook, Monitor


def _seconds(text: str) -> float:
    why = "expected seconds, a number of 0 or more"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(why) from None
    if not value >= 0:  # NaN too
        raise ValueError(why)
    return value


ARGS = [AppArg("interval", type=_seconds, default=1.0, metavar="SECONDS",
               help="Print the live connections every SECONDS of packet time (0: only the final table).")]

_rows: Dict[int, List[str]] = {}
_order: List[int] = []
_ended: Dict[int, str] = {}


def _row(conn: Connection, ev: EventInfo) -> None:
    cli, svr = ev.states
    if conn.id not in _rows:
        _order.append(conn.id)
        _rows[conn.id] = [conn.client, conn.server, "", ""]
    _rows[conn.id][2] = cli.name
    _rows[conn.id][3] = svr.name


def _end(conn: Connection, ev: EventInfo) -> None:
    _row(conn, ev)
    _ended[conn.id] = ev.reason.name


def _table(ids: List[int], title: str, out=sys.stdout) -> None:
    out.write(f"{title}\n{'id':>6}  {'client':<28} {'server':<28} {'client state':<13} {'server state':<13} end\n")
    for cid in ids:
        c, s, cs, ss = _rows[cid]
        out.write(f"{cid:>6}  {c:<28} {s:<28} {cs:<13} {ss:<13} {_ended.get(cid, '-')}\n")
    out.flush()


def _tick(mon: Monitor) -> None:
    live = [cid for cid in _order if cid not in _ended]
    _table(live, f"-- {len(live)} live connections")


def init(mon: Monitor, args: AppArgs) -> None:
    """Subscribe to the connection life-cycle and, unless ``args.interval`` is 0, print the live table
    periodically."""
    mon.on(Event.CONN_START, _row)
    mon.on(Event.TCP_STATE_CHANGE, _row)
    mon.on(Event.TCP_STATE_CHANGE, _row, hook=Hook.SND)  # also after the sender's update
    mon.on(Event.CONN_END, _end)
    if args.interval > 0:
        mon.add_timer(args.interval, _tick, periodic=True)


def finish(mon: Monitor) -> None:
    """The final table: every connection, its final states and end reason."""
    _table(_order, f"-- {len(_order)} connections")
