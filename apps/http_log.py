"""http_log: method, host and URL of every HTTP request, from the reassembled client stream.

    mos-xdp run apps/http_log.py --pcap trace.pcap

Works on the byte stream the server received, so a request line split across segments, arriving out
of order or retransmitted is read correctly. Pipelined requests and request bodies (Content-Length)
are followed; a hole in the stream ends parsing of that connection (counted as `unparsable`).
"""

from __future__ import annotations

import sys
from typing import Optional

from mos import Connection, Event, EventInfo, Monitor, Side

MAX_HEADER = 64 * 1024
METHODS = {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"}
requests = []
unparsable = 0


class _Parser:
    __slots__ = ("buf", "skip", "dead")

    def __init__(self) -> None:
        self.buf = b""
        self.skip = 0  # body bytes still to pass over
        self.dead = False


def _parse(conn: Connection, p: _Parser, out=sys.stdout) -> None:
    global unparsable
    while True:
        if p.skip:
            n = min(p.skip, len(p.buf))
            p.buf = p.buf[n:]
            p.skip -= n
            if p.skip:
                return
        end = p.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(p.buf) > MAX_HEADER:
                p.dead = True
                unparsable += 1
            return
        head, p.buf = p.buf[:end], p.buf[end + 4 :]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] not in METHODS or not parts[2].startswith(b"HTTP/"):
            p.dead = True
            unparsable += 1
            return
        host: Optional[bytes] = None
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"host":
                host = value.strip()
            elif key == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        rec = (conn.id, parts[0].decode(), (host or b"-").decode("latin-1"), parts[1].decode("latin-1"))
        requests.append(rec)
        out.write(f"{rec[0]} {rec[1]} {rec[2]} {rec[3]}\n")
        p.skip = length


def _data(conn: Connection, ev: EventInfo) -> None:
    p = conn.ctx
    if p is None:
        p = conn.ctx = _Parser()
    if p.dead:
        return
    p.buf += conn.peek(Side.SERVER)
    _parse(conn, p)


def _gap(conn: Connection, ev: EventInfo) -> None:
    global unparsable
    p = conn.ctx
    if p is not None and not p.dead:
        p.dead = True  # a hole: we cannot know where the next request starts
        unparsable += 1


def init(mon: Monitor) -> None:
    """Follow the stream the server receives (the client's bytes)."""
    mon.on(Event.CONN_NEW_DATA, _data, side=Side.SERVER)
    mon.on(Event.DATA_GAP, _gap, side=Side.SERVER)


def finish(mon: Monitor) -> None:
    """A one-line summary on stderr."""
    sys.stderr.write(f"http_log: {len(requests)} requests, {unparsable} unparsable streams\n")
