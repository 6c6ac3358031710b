"""Minimal, independent pcap/pcapng decoder used to DERIVE test expectations from captures.

It is deliberately small and separate from the engine: tests use it to read what a capture contains
(TCP segments with their real payload length taken from the IP length fields, never the Ethernet
padding) and compute expected streams/counts from the packets themselves.

Link types: EN10MB (1, incl. PPPoE sessions and MPLS), RAW (12, 101, 14), IPV4 (228), IPV6 (229),
PPP (9), PPP_HDLC (50), LINUX_SLL (113), NULL/LOOP (0, 108). 802.1Q/802.1ad/QinQ tags
(0x8100, 0x88a8, 0x9100) are collected into ``vlan``. IPv4 fragments are returned with
``frag=True`` and no TCP fields.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import dpkt

VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
IPV6_EXT = (0, 43, 60, 51, 135)  # hop-by-hop, routing, dest opts, AH, mobility (not 44 = fragment)


@dataclass
class Seg:
    """One decoded packet (TCP fields only when ``proto == 6`` and not a fragment)."""

    index: int
    ts: float
    version: int = 0
    src: str = ""
    dst: str = ""
    proto: int = -1
    vlan: List[int] = field(default_factory=list)
    sport: int = 0
    dport: int = 0
    seq: int = 0
    ack: int = 0
    flags: int = 0
    win: int = 0
    options: bytes = b""
    payload: bytes = b""
    frag: bool = False
    malformed: str = ""

    @property
    def is_tcp(self) -> bool:
        return self.proto == 6 and not self.frag and not self.malformed

    @property
    def syn(self) -> bool:
        return bool(self.flags & 0x02)

    @property
    def fin(self) -> bool:
        return bool(self.flags & 0x01)

    @property
    def rst(self) -> bool:
        return bool(self.flags & 0x04)

    @property
    def ackf(self) -> bool:
        return bool(self.flags & 0x10)

    def endpoint(self, which: str) -> str:
        ip, port = (self.src, self.sport) if which == "src" else (self.dst, self.dport)
        return f"[{ip}]:{port}" if self.version == 6 else f"{ip}:{port}"

    @property
    def key(self) -> Tuple:
        """Direction-free 5-tuple (plus VLAN ids) of the packet."""
        a, b = (self.src, self.sport), (self.dst, self.dport)
        return (tuple(self.vlan), self.proto) + tuple(sorted([a, b]))


def _records(path: Path) -> Iterator[Tuple[float, int, bytes]]:
    with open(path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        if magic == b"\x0a\x0d\x0d\x0a":
            rd = dpkt.pcapng.Reader(fh)
        else:
            rd = dpkt.pcap.Reader(fh)
        dl = rd.datalink()
        for ts, buf in rd:
            yield float(ts), dl, bytes(buf)


def _l3_from_link(dl: int, buf: bytes, vlan: List[int]) -> Tuple[Optional[int], bytes]:
    """Return (ethertype-ish: 4/6 or None, l3 bytes)."""
    if dl == 1:
        if len(buf) < 14:
            return None, b""
        et = struct.unpack("!H", buf[12:14])[0]
        off = 14
        while et in VLAN_TPIDS and len(buf) >= off + 4:
            tci, et = struct.unpack("!HH", buf[off:off + 4])
            vlan.append(tci & 0x0FFF)
            off += 4
        if et == 0x8864 and len(buf) >= off + 8:  # PPPoE session: 6-byte header + PPP protocol
            proto = struct.unpack("!H", buf[off + 6:off + 8])[0]
            et = {0x0021: 0x0800, 0x0057: 0x86DD}.get(proto, 0)
            off += 8
        if et in (0x8847, 0x8848):  # MPLS: pop labels down to the bottom of the stack
            while len(buf) >= off + 4:
                bos = buf[off + 2] & 1
                off += 4
                if bos:
                    break
            if len(buf) > off and buf[off] >> 4 in (4, 6):
                return buf[off] >> 4, buf[off:]
            return None, b""
        if et == 0x0800:
            return 4, buf[off:]
        if et == 0x86DD:
            return 6, buf[off:]
        return None, b""
    if dl in (12, 14, 101, 228, 229):
        if not buf:
            return None, b""
        return buf[0] >> 4, buf
    if dl in (9, 50):  # PPP, PPP in HDLC framing
        off = 0
        if buf[:2] == b"\xff\x03":
            off = 2
        proto = buf[off]
        if proto & 1:  # compressed protocol field
            off += 1
        else:
            proto = struct.unpack("!H", buf[off:off + 2])[0]
            off += 2
        if proto == 0x21:
            return 4, buf[off:]
        if proto == 0x57:
            return 6, buf[off:]
        return None, b""
    if dl == 113:
        et = struct.unpack("!H", buf[14:16])[0]
        return ({0x0800: 4, 0x86DD: 6}.get(et), buf[16:])
    if dl in (0, 108):
        fam = struct.unpack("<I", buf[:4])[0]
        if fam > 0xFFFF:
            fam = struct.unpack(">I", buf[:4])[0]
        return (4 if fam == 2 else 6 if fam in (10, 24, 28, 30) else None), buf[4:]
    return None, b""


def _tcp(seg: Seg, l4: bytes) -> None:
    if len(l4) < 20:
        seg.malformed = "short tcp header"
        return
    sport, dport, seq, ack, off_fl, win = struct.unpack("!HHIIHH", l4[:16])
    doff = (off_fl >> 12) * 4
    if doff < 20 or doff > len(l4):
        seg.malformed = "bad tcp data offset"
        return
    seg.sport, seg.dport, seg.seq, seg.ack, seg.win = sport, dport, seq, ack, win
    seg.flags = off_fl & 0x1FF
    seg.options = l4[20:doff]
    seg.payload = l4[doff:]


def decode(path) -> List[Seg]:
    """All packets of a capture, decoded (see module docstring)."""
    out: List[Seg] = []
    for i, (ts, dl, buf) in enumerate(_records(Path(path))):
        seg = Seg(index=i, ts=ts)
        ver, l3 = _l3_from_link(dl, buf, seg.vlan)
        out.append(seg)
        if ver == 4 and len(l3) >= 20:
            ihl = (l3[0] & 0x0F) * 4
            tot = struct.unpack("!H", l3[2:4])[0]
            if ihl < 20 or tot < ihl:
                seg.malformed = "bad ipv4 header"
                continue
            seg.version = 4
            seg.proto = l3[9]
            seg.src = socket.inet_ntop(socket.AF_INET, l3[12:16])
            seg.dst = socket.inet_ntop(socket.AF_INET, l3[16:20])
            fl = struct.unpack("!H", l3[6:8])[0]
            if fl & 0x3FFF:
                seg.frag = True
                continue
            if len(l3) < tot:
                seg.malformed = "truncated"
                continue
            if seg.proto == 6:
                _tcp(seg, l3[ihl:tot])
        elif ver == 6 and len(l3) >= 40:
            seg.version = 6
            plen = struct.unpack("!H", l3[4:6])[0]
            nh = l3[6]
            seg.src = socket.inet_ntop(socket.AF_INET6, l3[8:24])
            seg.dst = socket.inet_ntop(socket.AF_INET6, l3[24:40])
            if len(l3) < 40 + plen:
                seg.malformed = "truncated"
                continue
            body = l3[40:40 + plen]
            while nh in IPV6_EXT and len(body) >= 8:
                hl = (body[1] + 2) * 4 if nh == 51 else (body[1] + 1) * 8
                nh, body = body[0], body[hl:]
            if nh == 44:
                seg.frag = True
                seg.proto = body[0] if body else -1
                continue
            seg.proto = nh
            if nh == 6:
                _tcp(seg, body)
        else:
            seg.malformed = "not ip"
    return out


def tcp_segments(path) -> List[Seg]:
    return [s for s in decode(path) if s.is_tcp]


def flows_in_order(segs: List[Seg], vlan_in_key: bool = True) -> List[List[Seg]]:
    """Group TCP segments by 5-tuple (optionally with VLAN ids) in order of first packet."""
    groups: dict = {}
    for s in segs:
        k = s.key if vlan_in_key else s.key[1:]
        groups.setdefault(k, []).append(s)
    return list(groups.values())


def simple_streams(flow: List[Seg], client: Tuple[str, int]) -> Tuple[bytes, bytes]:
    """Each direction's bytes for a capture WITHOUT loss: every sequence byte taken once, first copy wins.

    Only valid when the caller checked the flow has no holes (see :func:`holes`).
    """
    res = []
    for is_c2s in (True, False):
        segs = [s for s in flow if ((s.src, s.sport) == client) == is_c2s]
        buf = _seqmap(segs)
        res.append(bytes(buf[k] for k in sorted(buf)))
    return res[0], res[1]


def _seqmap(segs: List[Seg]) -> dict:
    """Map relative sequence offset -> byte (first copy wins), relative to ISN+1 or first byte."""
    base = None
    for s in segs:
        if s.syn:
            base = (s.seq + 1) & 0xFFFFFFFF
            break
    if base is None:
        data = [s for s in segs if s.payload]
        if not data:
            return {}
        base = data[0].seq
    out: dict = {}
    for s in segs:
        start = (s.seq + (1 if s.syn else 0) - base) & 0xFFFFFFFF
        if start >= 1 << 31:
            start -= 1 << 32
        for i, b in enumerate(s.payload):
            if start + i >= 0:
                out.setdefault(start + i, b)
    return out


def holes(segs: List[Seg]) -> List[Tuple[int, int]]:
    """Holes [offset, length] between the bytes seen in one direction (relative to ISN+1/first byte)."""
    m = _seqmap(segs)
    if not m:
        return []
    ks = sorted(m)
    out = []
    prev = 0 if ks[0] >= 0 else ks[0]
    for k in ks:
        if k > prev:
            out.append((prev, k - prev))
        prev = k + 1
    return out
