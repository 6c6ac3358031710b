"""What a capture delivered, connection by connection: the shared runner of the TCP evasion tests
(tests/test_evasion_tcp_state.py, tests/test_evasion_tcp_attacks.py, tests/test_evasion_pass2.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from mos import EndReason, ErrorKind, Event, Monitor, Side
from mos.stats import accounted
from tests.pcaps import Built, payload

REQ1 = b"GET /index.html HTTP/1.1\r\nHost: a\r\n"
REQ2 = b"X-Evil: GET /etc/passwd\r\n\r\n"
RESP = payload("R", 900)
JUNK = b"JUNKJUNKJUNKJUNKJUNKJUNKJUNK\r\n\r\n"


@dataclass
class Conns:
    """What a run delivered, connection by connection (in the order they started)."""

    streams: Dict[int, Dict[Side, bytes]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(bytes)))
    gaps: Dict[int, Dict[Side, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    ends: Dict[int, EndReason] = field(default_factory=dict)
    errors: List[Tuple[Optional[int], ErrorKind, int]] = field(default_factory=list)  # (conn id, kind, len)
    counters: Dict[str, int] = field(default_factory=dict)

    def all(self, side: Side) -> bytes:
        """Every connection's stream received by `side`, one after the other."""
        return b"".join(self.streams[i][side] for i in sorted(self.streams))

    def kinds(self) -> List[ErrorKind]:
        """The ERROR events' reasons, in order."""
        return [k for _, k, _ in self.errors]


def run(tmp_path: Path, built: Built, policy: str = "first", contiguous: bool = False, **kw: object) -> Conns:
    """Run `built` through a Monitor with `policy`; collect bytes, gaps, ends and anomalies, and check the
    accounting partition. `contiguous`: every delivery follows the last (captures without gaps)."""
    mon = Monitor(policy=policy, **kw)  # type: ignore[arg-type]
    out = Conns()

    def data(c, e):  # type: ignore[no-untyped-def]
        if contiguous:
            assert e.offset == len(out.streams[c.id][e.side]), "contiguous delivery (no gaps in this capture)"
        out.streams[c.id][e.side] += bytes(e.data)

    def gap(c, e):  # type: ignore[no-untyped-def]
        out.gaps[c.id][e.side] += e.length

    mon.on(Event.CONN_NEW_DATA, data)
    mon.on(Event.DATA_GAP, gap)
    mon.on(Event.CONN_END, lambda c, e: out.ends.__setitem__(c.id, e.reason))
    mon.on(Event.ERROR, lambda c, e: out.errors.append((c.id if c else None, e.reason, e.length)))
    out.counters = dict(mon.run_pcap(built.write(tmp_path / f"t-{policy}.pcap")))
    assert mon.handler_errors == 0
    assert accounted(out.counters) == out.counters["packets"] == len(built.records)
    return out


def held_nothing(r: Conns) -> None:
    """Nothing is held once the capture is done (every connection ended)."""
    assert r.counters["memory_held"] == 0


def ts(val: int, ecr: int = 0) -> list:
    """A timestamps option (RFC 7323)."""
    return [("Timestamp", (val, ecr))]
