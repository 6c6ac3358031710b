"""A tiny reference reassembler (sanity tool, NOT the thing under test).

It models the delivery semantics the engine is specified to have (mOS-like, receiver-side view):
  * each direction is anchored at ISN+1 (or at the first data byte when picked up mid-stream);
  * in-order bytes are delivered at once; bytes ahead of a hole are held (overlaps: first copy wins);
  * when the receiver ACKs past a hole, the hole becomes a gap (never filled) and delivery continues;
    the ACK of a packet is processed before its payload;
  * at RST or end of input every remaining hole becomes a gap and held bytes are delivered.

It is used by tests/tools/check_pcapplusplus_expected.py to show that PcapPlusPlus's expected
outputs are reproducible by an engine with these semantics (so comparing the engine with them is fair).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from .pktparse import Seg

M32 = 1 << 32


def _rel(seq: int, base: int) -> int:
    d = (seq - base) % M32
    return d - M32 if d >= 1 << 31 else d


class Dir:
    def __init__(self, emit: Callable[[str, int, object], None], name: str, deferred: bool = False):
        self.emit, self.name, self.deferred = emit, name, deferred
        self.acked_upto: Optional[int] = None
        self.base: Optional[int] = None  # seq of offset 0
        self.next = 0
        self.held: Dict[int, int] = {}  # offset -> byte
        self.closed = False
        self.fin_off: Optional[int] = None

    def init(self, seq: int) -> None:
        if self.base is None:
            self.base = seq % M32

    def data(self, seq: int, payload: bytes) -> None:
        if not payload or self.closed:
            return
        self.init(seq)
        off = _rel(seq, self.base)
        for i, b in enumerate(payload):
            o = off + i
            if o >= self.next:
                self.held.setdefault(o, b)
        self._drain()

    def _drain(self) -> None:
        out = bytearray()
        while self.next in self.held:
            out.append(self.held.pop(self.next))
            self.next += 1
        if out:
            self.emit("data", self.next - len(out), bytes(out))

    def acked(self, ack: int, now: bool = False) -> None:
        if self.base is None or self.closed:
            return
        upto = _rel(ack, self.base)
        if self.fin_off is not None:
            upto = min(upto, self.fin_off)
        if self.deferred and not now:
            self.acked_upto = max(upto, self.acked_upto or upto)
            return
        while upto > self.next:
            ahead = [o for o in self.held if o >= self.next]
            first = min(ahead) if ahead else None
            if first is None or first >= upto:
                self.emit("gap", self.next, upto - self.next)
                self.next = upto
                self._drain()
                return
            if first > self.next:
                self.emit("gap", self.next, first - self.next)
                self.next = first
            self._drain()

    def flush(self) -> None:
        while self.held:
            first = min(self.held)
            if first > self.next:
                self.emit("gap", self.next, first - self.next)
                self.next = first
            self._drain()
            for o in [o for o in self.held if o < self.next]:
                del self.held[o]


class Conn:
    def __init__(self, first: Seg, on_event, deferred: bool = False):
        self.cli = (first.src, first.sport)
        if not (first.syn and not first.ackf):
            if first.syn and first.ackf:
                self.cli = (first.dst, first.dport)
            elif first.sport < first.dport:
                self.cli = (first.dst, first.dport)
        self.on_event = on_event
        # dirs[0]: client->server bytes (received by the server), dirs[1]: server->client
        self.dirs = [Dir(lambda k, o, d: on_event(k, 0, o, d), "c2s", deferred),
                     Dir(lambda k, o, d: on_event(k, 1, o, d), "s2c", deferred)]
        self.ended = False

    def packet(self, s: Seg) -> None:
        if self.ended:
            return
        d = 0 if (s.src, s.sport) == self.cli else 1
        me, peer = self.dirs[d], self.dirs[1 - d]
        if s.syn:
            me.base = (s.seq + 1) % M32
        if s.ackf:
            peer.acked(s.ack)
        if s.payload and peer.deferred and peer.acked_upto is not None and peer.base is not None:
            # deferred rule (a): the receiver talks -> the holes it acknowledged are gaps
            peer.acked((peer.base + peer.acked_upto) % M32, now=True)
        me.data(s.seq + (1 if s.syn else 0), s.payload)
        if s.fin:
            me.init(s.seq)
            me.fin_off = _rel(s.seq + (1 if s.syn else 0) + len(s.payload), me.base)
            if me.deferred:  # deferred rule (b): the sender's FIN ends its stream; holes become gaps
                me.flush()
        if s.rst:
            self.end()

    def end(self) -> None:
        if not self.ended:
            for d in self.dirs:
                d.flush()
            self.ended = True


def run(segs: List[Seg], deferred: bool = False) -> List[Tuple[Conn, List[Tuple[str, int, int, object]]]]:
    """Returns, per connection in order of first packet, (conn, events) with events (kind, dir, off, data)."""
    conns: Dict[Tuple, Tuple[Conn, list]] = {}
    order = []
    for s in segs:
        if not s.is_tcp:
            continue
        k = s.key
        if k not in conns:
            evs: list = []
            c = Conn(s, lambda kind, d, o, x, evs=evs: evs.append((kind, d, o, x)), deferred)
            conns[k] = (c, evs)
            order.append(k)
        conns[k][0].packet(s)
    for k in order:
        conns[k][0].end()
    return [conns[k] for k in order]


def pcpp_text(events) -> bytes:
    """PcapPlusPlus test-harness format: deliveries concatenated in delivery order; a hole is written
    '[N bytes missing]' right before the next bytes delivered on the same side (adjacent holes summed;
    a hole followed by nothing is not written)."""
    out = bytearray()
    pending = {0: 0, 1: 0}
    for kind, d, _o, x in events:
        if kind == "gap":
            pending[d] += x
            continue
        if pending[d]:
            out += b"[%d bytes missing]" % pending[d]
            pending[d] = 0
        out += x
    return bytes(out)
