"""dns_log: DNS queries and their answers over UDP, matched by id within each flow.

    mos-xdp run apps/dns_log.py --pcap trace.pcap [-- --json] [-- --port 5353]
    mos-xdp run apps/dns_log.py --iface veth0 --peer veth1

One line per answered query (client, server, id, name, type, rcode, answers, latency), and one per query
still unanswered when its flow ends (idle timeout or end of input), with rcode and latency ``-``. Messages
are parsed with the standard library alone (RFC 1035, name compression included); a datagram that does not
parse as DNS is counted, not logged.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import sys
from typing import Any, Dict, List, Optional, Tuple

from mos import AppArg, Connection, Event, EventInfo, Monitor, Side

ARGS = [
    AppArg("port", type=int, default=53, help="The DNS server port (the flows whose server uses it are followed)."),
    AppArg("json", type=bool, default=False, help="One JSON object per line instead of text."),
]

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          65: "HTTPS", 255: "ANY"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
NAME_TYPES = (2, 5, 12)  # answers whose data is a domain name
logged: List[Dict[str, Any]] = []
unparsable = 0
_opts: Dict[str, Any] = {"port": 53, "json": False}


class DnsError(ValueError):
    """The bytes are not a DNS message."""


def _name(msg: bytes, off: int) -> Tuple[str, int]:
    """The domain name at ``off`` (compression pointers followed) and the offset past it."""
    labels: List[str] = []
    end = -1
    for _ in range(128):  # bounds a loop of pointers
        if off >= len(msg):
            raise DnsError("name past the end")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsError("pointer past the end")
            if end < 0:
                end = off + 2
            off = (n & 0x3F) << 8 | msg[off + 1]
        elif n == 0:
            return ".".join(labels), (end if end >= 0 else off + 1)
        else:
            if off + 1 + n > len(msg):
                raise DnsError("label past the end")
            labels.append(msg[off + 1 : off + 1 + n].decode("ascii", "replace"))
            off += 1 + n
    raise DnsError("too many labels")


def parse(msg: bytes) -> Dict[str, Any]:
    """A DNS message's id, QR bit, rcode, first question (name, type) and answers (text)."""
    if len(msg) < 12:
        raise DnsError("shorter than a header")
    qid, flags, qd, an = struct.unpack_from("!HHHH", msg)
    off = 12
    name, qtype = "", 0
    for k in range(qd):
        n, off = _name(msg, off)
        if off + 4 > len(msg):
            raise DnsError("question past the end")
        if k == 0:
            name, qtype = n, struct.unpack_from("!H", msg, off)[0]
        off += 4
    answers: List[str] = []
    for _ in range(an):
        _, off = _name(msg, off)
        if off + 10 > len(msg):
            raise DnsError("answer past the end")
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        off += 10
        rdata = msg[off : off + rdlen]
        if len(rdata) != rdlen:
            raise DnsError("answer data past the end")
        if rtype == 1 and rdlen == 4:
            answers.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == 28 and rdlen == 16:
            answers.append(str(ipaddress.IPv6Address(rdata)))
        elif rtype in NAME_TYPES:
            answers.append(_name(msg, off)[0])
        else:
            answers.append(f"{QTYPES.get(rtype, rtype)}:{rdata.hex()}")
        off += rdlen
    return {"id": qid, "response": bool(flags & 0x8000), "rcode": flags & 0xF, "name": name,
            "qtype": QTYPES.get(qtype, str(qtype)), "answers": answers}


def _log(conn: Connection, q: Dict[str, Any], answer: Optional[Dict[str, Any]], latency: Optional[float],
         out: Any = sys.stdout) -> None:
    rec = {"client": conn.client, "server": conn.server, "id": q["id"], "name": q["name"], "qtype": q["qtype"],
           "rcode": RCODES.get(answer["rcode"], str(answer["rcode"])) if answer else None,
           "answers": answer["answers"] if answer else [],
           "latency_ms": round(latency * 1000, 3) if latency is not None else None}
    logged.append(rec)
    if _opts["json"]:
        out.write(json.dumps(rec) + "\n")
    else:
        lat = "-" if latency is None else f"{rec['latency_ms']}ms"
        out.write(f"{rec['client']} -> {rec['server']} id={rec['id']} {rec['name']} {rec['qtype']} "
                  f"{rec['rcode'] or '-'} [{', '.join(rec['answers'])}] {lat}\n")
    out.flush()


def _datagram(conn: Connection, ev: EventInfo) -> None:
    global unparsable
    if conn.protocol != "udp" or ev.data is None:
        return
    try:
        m = parse(ev.data)
    except DnsError:
        unparsable += 1
        return
    pending: Dict[int, Tuple[float, Dict[str, Any]]] = conn.ctx if conn.ctx is not None else {}
    ts = ev.packet.ts if ev.packet is not None else 0.0
    if not m["response"]:
        pending.setdefault(m["id"], (ts, m))  # a retransmitted query keeps its first time
    elif m["id"] in pending:
        t0, q = pending.pop(m["id"])
        _log(conn, q, m, ts - t0)
    conn.ctx = pending or None


def _end(conn: Connection, ev: EventInfo) -> None:
    for _, q in (conn.ctx or {}).values():
        _log(conn, q, None, None)
    conn.ctx = None


def _start(conn: Connection, ev: EventInfo) -> None:
    """Follow only the flows to (or from) the DNS port: the others get no more events."""
    i = conn.info()
    if conn.protocol != "udp" or _opts["port"] not in (i["server_port"], i["client_port"]):
        conn.stop_monitoring()


def init(mon: Monitor, args: Any) -> None:
    """Datagrams received by either side (queries by the server, answers by the client)."""
    _opts.update(port=args.port, json=args.json)
    mon.on(Event.CONN_START, _start)
    mon.on(Event.PKT_IN, _datagram, side=Side.BOTH)
    mon.on(Event.CONN_END, _end)


def finish(mon: Monitor) -> None:
    """A one-line summary on stderr."""
    answered = sum(1 for r in logged if r["rcode"] is not None)
    sys.stderr.write(f"dns_log: {answered} answered, {len(logged) - answered} unanswered, "
                     f"{unparsable} not DNS\n")
