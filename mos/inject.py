"""What an app sends: ``Connection.send`` / ``Connection.reset`` and ``Monitor.send_packet``.

Live, the frames leave through the AF_XDP TX ring of the interface the receiver is behind
(:class:`mos.live.session.LiveSession`); on a capture they are recorded by :class:`SentRecorder`
(``Monitor.sent()``), as they would have been sent. Both build a connection's segments in the engine
(``mos_conn_segment``): the sequence number the receiver expects now, the acknowledgement of what it sent.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .abi import ffi, lib
from .errors import MosError

if TYPE_CHECKING:
    from .connection import Connection
    from .monitor import EnginePort

TCP_FLAGS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}
"""The letters of ``Connection.send``'s ``flags`` (tcpdump's), and their bits."""

FRAME_SIZE = 4096
"""The largest frame that can be sent (an AF_XDP frame): headers and payload."""

NO_PACKET = 0xFFFFFFFF
"""``pkt`` argument of the engine's injection calls when no packet of the connection is being handled."""

MAX_SENT = 65536
"""Frames a capture run keeps (``Monitor.sent()``); later ones are counted, not kept."""

_ERRORS = {
    -1: "connection {id} has ended (or is being reset): nothing can be sent on it",
    -2: "{n} bytes of payload do not fit in a frame ({max} bytes with the headers)",
    -3: "connection {id}: nothing was seen from the sender, its sequence numbers are unknown",
    -4: "no free AF_XDP frame or TX descriptor to send with (counted in inject_failed)",
    -5: "connection {id}: no frame of it was seen to take the link layer from (call this from one of its "
        "handlers)",
}


def flag_bits(flags: str) -> int:
    """The TCP flag bits of a string of :data:`TCP_FLAGS` letters (``"PA"``, ``"RA"``); a MosError for
    anything else."""
    if not isinstance(flags, str):
        raise MosError(f"flags must be a string of TCP flag letters ({''.join(TCP_FLAGS)}), not {flags!r}")
    bits = 0
    for ch in flags.upper():
        if ch not in TCP_FLAGS:
            raise MosError(f"unknown TCP flag {ch!r} in {flags!r} (choose from {', '.join(TCP_FLAGS)})")
        bits |= TCP_FLAGS[ch]
    return bits


def check_payload(payload: object) -> bytes:
    """The payload as bytes; a MosError when it is not bytes-like."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MosError(f"payload must be bytes, not {type(payload).__name__}")
    return bytes(payload)


def fail(rc: int, conn: Connection, n: int = 0) -> MosError:
    """The MosError of an injection call's negative return code."""
    msg = _ERRORS.get(int(rc), "cannot send on connection {id} (error {rc})")
    return MosError(msg.format(id=conn.id, n=n, max=FRAME_SIZE, rc=rc))


def current_packet(port: EnginePort) -> int:
    """The packet being handled, as the engine's injection calls take it."""
    p = port.current_packet()
    return NO_PACKET if p is None else p


class SentRecorder:
    """A capture's injection: the frames that would have been sent, kept in order (at most
    :data:`MAX_SENT`), with the sequence translation a live inline run would have applied (a payload sent
    shifts its sender's later numbers), so that consecutive sends are numbered as they would be live."""

    def __init__(self) -> None:
        self.frames: List[Tuple[float, str, bytes]] = []
        """``(time, interface, frame)`` in the order sent; the interface is "" for a connection's segment."""
        self.dropped = 0
        """Frames past :data:`MAX_SENT`, not kept."""
        self._delta: Dict[Tuple[int, int], int] = {}  # (connection id, sender side) -> bytes inserted
        self._l2: Dict[int, Tuple[bytes, bytes]] = {}  # connection id -> (to client, to server) MACs

    def _keep(self, frame: bytes, iface: str, eng: object) -> None:
        lib.mos_engine_injected(eng, len(frame))
        if len(self.frames) >= MAX_SENT:
            self.dropped += 1
            return
        self.frames.append((time.time(), iface, frame))

    def _macs(self, port: EnginePort, conn: Connection) -> Tuple[bytes, bytes]:
        """The MACs of frames to the client and to the server, from the connection's packet being handled
        when it is an Ethernet one (zeros otherwise)."""
        pv = conn.last_packet
        info = conn.info()
        if pv is not None and pv.l3_offset >= 14 and len(pv.raw) >= 14 and struct.unpack_from(
                "!H", pv.raw, pv.l3_offset - 2)[0] in (0x0800, 0x86DD):
            fwd, rev = pv.raw[0:12], pv.raw[6:12] + pv.raw[0:6]
            from_client = (pv.src, pv.sport) == (info["client_addr"], info["client_port"])
            self._l2[conn.id] = (rev, fwd) if from_client else (fwd, rev)
        return self._l2.get(conn.id, (bytes(12), bytes(12)))

    def send(self, port: EnginePort, conn: Connection, side: int, payload: bytes, flags: int) -> int:
        """Records the segment ``conn.send`` would send to ``side``; returns its length."""
        eng = port.engine
        macs = self._macs(port, conn)[side]
        sender = 1 - side
        buf = ffi.new("uint8_t[]", FRAME_SIZE)
        delta = self._delta.get((conn.id, sender), 0)
        n = lib.mos_conn_segment(eng, conn._slot, conn.id, side, flags, payload, len(payload), macs,
                                 delta & 0xFFFFFFFF, buf, FRAME_SIZE)
        if n < 0:
            raise fail(n, conn, len(payload))
        seglen = len(payload) + bool(flags & TCP_FLAGS["S"]) + bool(flags & TCP_FLAGS["F"])
        if seglen and not flags & TCP_FLAGS["R"]:
            self._delta[(conn.id, sender)] = delta + seglen
        self._keep(bytes(ffi.buffer(buf, n)), "", eng)
        return int(n)

    def reset(self, port: EnginePort, conn: Connection) -> None:
        """Records a RST to each endpoint; the connection ends with reason RST."""
        rst = TCP_FLAGS["R"] | TCP_FLAGS["A"]
        for side in (0, 1):
            self.send(port, conn, side, b"", rst)
        if lib.mos_conn_reset(port.engine, conn._slot, conn.id) != 0:
            raise fail(-1, conn)

    def send_packet(self, port: EnginePort, frame: bytes, iface: Optional[str]) -> None:
        """Records a raw frame."""
        self._keep(frame, iface or "", port.engine)

    def write_pcap(self, path: str) -> int:
        """Writes the recorded frames to a pcap file (Ethernet); returns how many."""
        with open(path, "wb") as f:
            f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, FRAME_SIZE, 1))
            for ts, _, frame in self.frames:
                sec = int(ts)
                f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
                f.write(frame)
        return len(self.frames)


def check_frame(frame: object, iface: Optional[str]) -> bytes:
    """A raw frame for ``send_packet``, checked."""
    data = check_payload(frame)
    if len(data) < 14 or len(data) > FRAME_SIZE:
        raise MosError(f"a frame has 14 to {FRAME_SIZE} bytes, not {len(data)}")
    if iface is not None and not isinstance(iface, str):
        raise MosError(f"iface must be an interface name, not {iface!r}")
    return data
