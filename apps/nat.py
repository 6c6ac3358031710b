"""nat: mOS's ``samples/nat`` on mos-xdp: the box translates its clients to one public address.

    mos-xdp run apps/nat.py --iface LAN --peer WAN -- --ip 10.0.0.48
    mos-xdp run apps/nat.py --iface LAN --peer WAN --workers 2 -- --ip 10.0.0.48 --ports 20000-29999

Inline, as mOS's: each new connection (TCP, or a UDP flow) gets a port of ``--ip`` (``--ports``, default
mOS's 1025-65534); the client's packets leave with that address and port as their source (SNAT), and the
replies, addressed to it, reach the client with its own address, port and MAC (DNAT). mOS's sample
rewrites each packet in a callback; here the app only decides, once per connection
(``Connection.translate``), and the engine rewrites every packet in C, checksums updated incrementally,
and keeps both directions one connection, with both streams, as the client sees it. ARP requests for
``--ip`` are answered in XDP with the box's MAC, so the servers' side can reach an address no host owns.
A port is given back when its connection ends and reused last (first in, first out).

With several workers, a port is taken only if the XDP program steers the replies to it to the worker
that has the connection (mOS picks ports by RSS core alike), so no lock is shared.

Unlike mOS's, which translates whatever it sees: a connection picked up mid-stream (it started before
the NAT, its server knows the client's own address), one to ``--ip`` itself that no mapping covers, and
one that finds no free port are dropped, never forwarded untranslated; each is counted.
"""

from __future__ import annotations

import collections
import ipaddress
import sys
from typing import Deque, Dict, Optional, Tuple

from mos import AppArg, AppArgs, Connection, Event, EventInfo, Monitor, MosError, Side
from mos.xdp import FlowTuple, flow_hash


def _ipv4(text: str) -> str:
    return str(ipaddress.IPv4Address(text))


def _ports(text: str) -> Tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi) <= 65535:
        raise ValueError(f"{text!r}: a port range is LO-HI, 1 <= LO <= HI <= 65535")
    return int(lo), int(hi)


ARGS = [
    AppArg("ip", type=_ipv4, required=True, metavar="ADDR", help="The NAT's public IPv4 address (mOS's -i)."),
    AppArg("ports", type=_ports, default=(1025, 65534), metavar="LO-HI", help="The ports it gives out."),
]

NAT = {"ip": ""}
free: Deque[int] = collections.deque()
pool = [0]  # ports in the range
counts: Dict[str, int] = collections.Counter()


def take_port(server: str, server_port: int, proto: str) -> Optional[int]:
    """The first free port whose replies the XDP program steers to this worker; None: none left."""
    from mos.live import worker

    me, workers = worker()
    for i, port in enumerate(free):
        if workers == 1 or flow_hash(FlowTuple(NAT["ip"], server, port, server_port, proto)) % workers == me:
            del free[i]
            return port
    return None


def _refuse(conn: Connection, why: str) -> None:
    counts[why] += 1
    try:
        conn.drop()
    except MosError:  # a capture: nothing to drop
        conn.stop_monitoring()


def _start(conn: Connection, ev: EventInfo) -> None:
    i = conn.info()
    if i["ip_version"] != 4:
        return  # IPv4 only, as mOS's
    why = "picked up" if i["picked_up"] else "to the NAT address" if i["server_addr"] == NAT["ip"] else ""
    port = None if why else take_port(i["server_addr"], i["server_port"], conn.protocol)
    if port is None:
        _refuse(conn, why or "no free port")
        return
    conn.ctx = port
    conn.translate(Side.CLIENT, NAT["ip"], port)  # the engine rewrites every packet, both ways, in C
    counts["translated"] += 1


def _end(conn: Connection, ev: EventInfo) -> None:
    if conn.ctx is not None:
        free.append(conn.ctx)
        conn.ctx = None


def init(mon: Monitor, args: AppArgs) -> None:
    """Translate every new IPv4 connection's client to ``args.ip``, with a port of ``args.ports``."""
    NAT["ip"] = args.ip
    lo, hi = args.ports
    free.clear()
    free.extend(range(lo, hi + 1))
    pool[0] = hi - lo + 1
    mon.on(Event.CONN_START, _start)
    mon.on(Event.CONN_END, _end)
    try:
        from mos import live
    except ImportError:  # a build without the live path
        return
    live.on_start(_start_live)


def _start_live(mon: Monitor) -> None:
    if not mon.live_session().inline:
        raise MosError("nat translates what it forwards: run it inline (--iface LAN --peer WAN)")
    mon.answer_arp(NAT["ip"])


def finish(mon: Monitor) -> None:
    """One line: connections translated, ports in use, and the refused by reason."""
    refused = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "translated") or "none"
    sys.stdout.write(f"nat: {counts['translated']} connection(s) translated to {NAT['ip']}, "
                     f"{pool[0] - len(free)} port(s) in use at the end; refused: {refused}\n")
    sys.stdout.flush()

