"""firewall: drop every connection whose client sends a forbidden pattern, even split across segments.

    mos-xdp run apps/firewall.py --iface IN --peer OUT          # inline: the connection really stops
    mos-xdp run apps/firewall.py --pcap trace.pcap              # offline: reports what it would drop

``MOS_FIREWALL_PATTERNS``: comma-separated byte patterns (default ``/etc/passwd``); matched on the
client's reassembled stream (the bytes the server receives), so a pattern cut across two segments, sent
out of order or retransmitted is still found. A match drops the connection: its current packet, the
rest of the batch, and every later packet in XDP (bypass map, verdict drop). ``MOS_FIREWALL_BLOCK``:
comma-separated prefixes dropped in XDP from the start (live only).
"""

from __future__ import annotations

import os
import sys
from typing import List

from mos import Connection, Event, EventInfo, Monitor, MosError, Side

PATTERNS: List[bytes] = [p.encode() for p in os.environ.get("MOS_FIREWALL_PATTERNS", "/etc/passwd").split(",") if p]
KEEP = max((len(p) for p in PATTERNS), default=1) - 1
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
    for prefix in filter(None, os.environ.get("MOS_FIREWALL_BLOCK", "").split(",")):
        print(f"firewall: blocked {mon.block(prefix.strip())} in XDP", flush=True)


def init(mon: Monitor) -> None:
    """Watch every client stream; block the configured prefixes once live."""
    mon.on(Event.CONN_NEW_DATA, _request, side=Side.SERVER)
    try:
        from mos import live
    except ImportError:  # a build without the live path
        return
    live.on_start(_start)


def finish(mon: Monitor) -> None:
    """One line: how many connections were dropped."""
    sys.stdout.write(f"firewall: {len(dropped)} connection(s) dropped\n")
