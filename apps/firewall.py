"""firewall: drop every connection whose client sends a forbidden pattern, even split across segments.

    mos-xdp run apps/firewall.py --iface IN --peer OUT          # inline: the connection really stops
    mos-xdp run apps/firewall.py --pcap trace.pcap              # offline: reports what it would drop
    mos-xdp run apps/firewall.py --pcap trace.pcap -- --pattern /etc/passwd --pattern evil

``--pattern`` (repeatable, default ``/etc/passwd``): a forbidden byte pattern, matched on the client's
reassembled stream (the bytes the server receives), so a pattern cut across two segments, sent out of
order or retransmitted is still found. A match drops the connection: its current packet, the rest of the
batch, and every later packet in XDP (bypass map, verdict drop). ``--block`` (repeatable): a prefix
dropped in XDP from the start (live only).
"""

from __future__ import annotations

import sys
from typing import List

from mos import AppArg, AppArgs, Connection, Event, EventInfo, Monitor, MosError, Side


def _pattern(text: str) -> bytes:
    if not text:
        raise ValueError("an empty pattern would match every connection")
    return text.encode("utf-8", "surrogateescape")


ARGS = [
    AppArg("pattern", type=_pattern, multiple=True, default=[b"/etc/passwd"], metavar="BYTES",
           help="Drop a connection whose client sends these bytes."),
    AppArg("block", multiple=True, metavar="PREFIX",
           help="Drop this prefix (10.0.0.0/8, an address) in XDP from the start; live only."),
]

PATTERNS: List[bytes] = []
KEEP = 0  # bytes of a client stream kept across data events: a pattern may straddle them
BLOCK: List[str] = []
dropped: List[int] = []


_DROPPED = object()


def _request(conn: Connection, ev: EventInfo) -> None:
    if conn.ctx is _DROPPED:
        return
    tail = conn.ctx or b""
    data = tail + (ev.data or b"")
    hit = next((p for p in PATTERNS if p in data), None)
    conn.ctx = data[-KEEP:] if KEEP else b""
    if hit is None:
        return
    conn.ctx = _DROPPED
    dropped.append(conn.id)
    try:
        conn.drop()
        verb = "dropped"
    except MosError:
        verb = "would drop (not live)"
    print(f"firewall: {verb} connection {conn.id} {conn.client} -> {conn.server}: {hit.decode(errors='replace')!r}",
          flush=True)


def _start(mon: Monitor) -> None:
    for prefix in BLOCK:
        print(f"firewall: blocked {mon.block(prefix.strip())} in XDP", flush=True)


def init(mon: Monitor, args: AppArgs) -> None:
    """Watch every client stream for ``args.pattern``; block ``args.block`` once live."""
    global KEEP
    PATTERNS[:] = args.pattern
    KEEP = max((len(p) for p in PATTERNS), default=1) - 1
    BLOCK[:] = args.block
    mon.on(Event.CONN_NEW_DATA, _request, side=Side.SERVER)
    try:
        from mos import live
    except ImportError:  # a build without the live path
        return
    live.on_start(_start)


def finish(mon: Monitor) -> None:
    """One line: how many connections were dropped."""
    sys.stdout.write(f"firewall: {len(dropped)} connection(s) dropped\n")
