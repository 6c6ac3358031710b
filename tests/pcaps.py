"""Scapy builders of small captures for the `streams` tests.

Each builder returns a :class:`Built`: the packets (as (timestamp, frame bytes, original length) records,
so truncation can be expressed) plus what the engine must make of them (expected bytes per direction,
gaps, client/server, end reason...). ``Built.write(path)`` writes a pcap (LINKTYPE_ETHERNET).
Sequence numbers are handled by :class:`Conv`, which tracks both endpoints like a real stack would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from scapy.all import IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPOption_RR, IPv6, IPv6ExtHdrDestOpt, Raw, fragment

M32 = 1 << 32
CMAC, SMAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


@dataclass
class Built:
    records: List[Tuple[float, bytes, int]]
    c2s: bytes = b""
    s2c: bytes = b""
    client: str = ""
    server: str = ""
    c2s_gaps: List[List[int]] = field(default_factory=list)
    s2c_gaps: List[List[int]] = field(default_factory=list)
    end: Optional[str] = None
    vlan: List[int] = field(default_factory=list)
    extra: Dict[str, object] = field(default_factory=dict)

    def write(self, path) -> Path:
        path = Path(path)
        with open(path, "wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for ts, frame, orig_len in self.records:
                sec = int(ts)
                fh.write(struct.pack("<IIII", sec, int(round((ts - sec) * 1e6)), len(frame), orig_len))
                fh.write(frame)
        return path


class Conv:
    """A TCP conversation between a client and a server, emitting Ethernet frames."""

    def __init__(self, cip="10.10.0.1", sip="10.10.0.2", cport=40000, sport=80, cisn=1000, sisn=500000,
                 vlan: Sequence[int] = (), qinq_outer_ad: bool = False, t0: float = 1000.0):
        self.cip, self.sip, self.cport, self.sport = cip, sip, cport, sport
        self.v6 = ":" in cip
        self.isn = {True: cisn % M32, False: sisn % M32}
        self.nxt = {True: cisn % M32, False: sisn % M32}  # next sequence number each side will send
        self.vlan = list(vlan)
        self.qinq_outer_ad = qinq_outer_ad
        self.t = t0
        self.records: List[Tuple[float, bytes, int]] = []

    # endpoint strings as the index spells them
    @property
    def client(self) -> str:
        return f"[{self.cip}]:{self.cport}" if self.v6 else f"{self.cip}:{self.cport}"

    @property
    def server(self) -> str:
        return f"[{self.sip}]:{self.sport}" if self.v6 else f"{self.sip}:{self.sport}"

    def l2(self, from_client: bool):
        e = Ether(src=CMAC if from_client else SMAC, dst=SMAC if from_client else CMAC)
        for i, v in enumerate(self.vlan):
            if i == 0 and self.qinq_outer_ad and len(self.vlan) > 1:
                e = e / Dot1AD(vlan=v)
            else:
                e = e / Dot1Q(vlan=v)
        return e

    def l3(self, from_client: bool, **kw):
        src, dst = (self.cip, self.sip) if from_client else (self.sip, self.cip)
        return IPv6(src=src, dst=dst, **kw) if self.v6 else IP(src=src, dst=dst, **kw)

    def tcp(self, from_client: bool, flags: str, seq=None, ack=None, payload: bytes = b"", options=None,
            window: int = 65535, advance: bool = True, ip_kw=None, l3=None):
        """Build one segment. seq defaults to the side's next sequence number; ack to the peer's."""
        s = self.nxt[from_client] if seq is None else seq % M32
        a = self.nxt[not from_client] if ack is None else ack % M32
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        t = TCP(sport=sp, dport=dp, flags=flags, seq=s, ack=a if "A" in flags else 0, window=window,
                options=options or [])
        ip = l3 if l3 is not None else self.l3(from_client, **(ip_kw or {}))
        pkt = self.l2(from_client) / ip / t
        if payload:
            pkt = pkt / Raw(payload)
        if advance and seq is None:
            self.nxt[from_client] = (s + len(payload) + ("S" in flags) + ("F" in flags)) % M32
        self.emit(bytes(pkt))
        return pkt

    def emit(self, frame: bytes, orig_len: Optional[int] = None, caplen: Optional[int] = None) -> None:
        self.t += 0.001
        data = frame if caplen is None else frame[:caplen]
        self.records.append((self.t, data, orig_len if orig_len is not None else len(frame)))

    def off_seq(self, from_client: bool, off: int) -> int:
        """Sequence number of stream offset `off` of a side (offset 0 = ISN + 1)."""
        return (self.isn[from_client] + 1 + off) % M32

    # common sequences
    def handshake(self, syn_opts=None, synack_opts=None, win=65535):
        self.tcp(True, "S", options=syn_opts, window=win)
        self.tcp(False, "SA", options=synack_opts, window=win)
        self.tcp(True, "A", window=win)

    def send(self, from_client: bool, data: bytes, mss: int = 1000, ack_each: bool = True, win=65535):
        for i in range(0, len(data), mss):
            self.tcp(from_client, "PA", payload=data[i:i + mss], window=win)
            if ack_each:
                self.tcp(not from_client, "A", window=win)

    def close(self, first_client: bool = True):
        self.tcp(first_client, "FA")
        self.tcp(not first_client, "FA")
        self.tcp(first_client, "A")

    def built(self, c2s: bytes = b"", s2c: bytes = b"", **kw) -> Built:
        return Built(list(self.records), c2s=c2s, s2c=s2c, client=self.client, server=self.server,
                     vlan=list(self.vlan), **kw)


def payload(tag: str, n: int) -> bytes:
    """Deterministic, non-repeating-looking bytes (so misplaced bytes are caught)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += f"{tag}{i:06d}|".encode()
        i += 1
    return bytes(out[:n])


REQ = b"GET /index.html HTTP/1.1\r\nHost: example.test\r\n\r\n"


# ---------------------------------------------------------------------------------------------------------
# Builders


def basic_close() -> Built:
    """3-way handshake, request, 3-segment response, FIN from the client then the server."""
    c = Conv()
    c.handshake()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2500\r\n\r\n" + payload("R", 2500)
    c.send(True, REQ)
    c.send(False, resp)
    c.close(first_client=True)
    return c.built(REQ, resp, end="FIN", extra={"client_state": "TIME_WAIT", "server_state": "CLOSED"})


def handshake_retransmissions() -> Built:
    c = Conv(cport=40001)
    syn_seq = c.nxt[True]
    c.tcp(True, "S")
    c.tcp(True, "S", seq=syn_seq)  # duplicate SYN
    sa_seq = c.nxt[False]
    c.tcp(False, "SA")
    c.tcp(False, "SA", seq=sa_seq)  # duplicate SYN/ACK
    c.tcp(True, "A")
    resp = payload("H", 1500)
    c.send(True, REQ)
    c.send(False, resp)
    c.close()
    return c.built(REQ, resp, end="FIN")


def simultaneous_open() -> Built:
    """Both sides send a SYN before either SYN/ACK (RFC 9293 3.5 simultaneous open)."""
    c = Conv(cip="10.10.1.1", sip="10.10.1.2", cport=5000, sport=6000)
    c.tcp(True, "S")
    c.tcp(False, "S")
    c.tcp(True, "SA", seq=c.isn[True])
    c.tcp(False, "SA", seq=c.isn[False])
    a, b = payload("A", 700), payload("B", 900)
    c.send(True, a)
    c.send(False, b)
    c.close()
    return c.built(a, b, end="FIN")


def split_handshake() -> Built:
    """Split handshake: SYN; the server answers with a bare SYN; the client SYN/ACKs; the server ACKs."""
    c = Conv(cport=40002)
    c.tcp(True, "S")
    c.tcp(False, "S")
    c.tcp(True, "SA", seq=c.isn[True])
    c.tcp(False, "A")
    c.send(True, REQ)
    resp = payload("S", 1200)
    c.send(False, resp)
    c.close()
    return c.built(REQ, resp, end="FIN")


def half_close() -> Built:
    """The client sends its request and FIN; the server keeps sending, then closes."""
    c = Conv(cport=40003)
    c.handshake()
    c.send(True, REQ)
    c.tcp(True, "FA")
    c.tcp(False, "A")
    resp = payload("HC", 3000)
    c.send(False, resp, ack_each=True)
    c.tcp(False, "FA")
    c.tcp(True, "A")
    return c.built(REQ, resp, end="FIN", extra={"client_state": "TIME_WAIT", "server_state": "CLOSED"})


def rst_in_window() -> Built:
    """Server RST at its next sequence number (accepted): the connection ends by RST; later data is
    not part of any stream."""
    c = Conv(cport=40004)
    c.handshake()
    c.send(True, REQ)
    resp = payload("X", 800)
    c.send(False, resp)
    c.tcp(False, "R", ack=0)
    c.tcp(True, "PA", payload=b"after-reset")  # sent after the RST: not delivered
    return c.built(REQ, resp, end="RST")


def rst_out_of_window() -> Built:
    """A RST far outside the receiver's window is ignored (ERROR event); the connection goes on."""
    c = Conv(cport=40005)
    c.handshake()
    c.send(True, REQ)
    c.tcp(False, "R", seq=(c.nxt[False] + 50_000_000) % M32, ack=0, advance=False)
    resp = payload("W", 1200)
    c.send(False, resp)
    c.close()
    return c.built(REQ, resp, end="FIN")


def window_scaling() -> Built:
    """wscale 7 on both SYNs and a window field of 1024 (= 128 KiB): the server sends 100 kB before the
    client ACKs -- beyond an unscaled 65535 window, inside the scaled one."""
    c = Conv(cport=40006)
    opts = [("MSS", 1460), ("WScale", 7), ("NOP", None), ("SAckOK", b"")]
    c.tcp(True, "S", options=opts, window=65535)
    c.tcp(False, "SA", options=opts, window=65535)
    c.tcp(True, "A", window=1024)
    c.send(True, REQ, win=1024)
    resp = payload("WS", 100_000)
    c.send(False, resp, mss=1400, ack_each=False, win=1024)
    c.tcp(True, "A", window=1024)
    c.close()
    return c.built(REQ, resp, end="FIN")


def seq_wrap() -> Built:
    """Both ISNs just below 2^32: both streams cross the sequence wrap."""
    c = Conv(cport=40007, cisn=M32 - 10, sisn=M32 - 1)
    c.handshake()
    req = payload("Q", 3000)
    resp = payload("P", 5000)
    c.send(True, req, mss=1000)
    c.send(False, resp, mss=1400)
    c.close()
    return c.built(req, resp, end="FIN")


def syn_with_data() -> Built:
    """TCP Fast Open style: the SYN carries the request (with a TFO cookie option); the SYN/ACK acks it."""
    c = Conv(cport=40008)
    c.tcp(True, "S", payload=REQ, options=[("MSS", 1460), ("TFO", b"\x01\x02\x03\x04\x05\x06\x07\x08")])
    c.tcp(False, "SA")
    c.tcp(True, "A")
    resp = payload("T", 900)
    c.send(False, resp)
    c.close()
    return c.built(REQ, resp, end="FIN")


def midstream_pickup() -> Built:
    """No handshake: the capture starts with the server's data (port 80 -> 51000). Roles from ports."""
    c = Conv(cport=51000, sport=80)
    first = payload("M1", 1200)
    c.tcp(False, "PA", payload=first)
    c.tcp(True, "A")
    req = b"GET /next HTTP/1.1\r\n\r\n"
    c.send(True, req)
    second = payload("M2", 800)
    c.send(False, second)
    return c.built(req, first + second, end="EOF")


def _segments(c: Conv, from_client: bool, data: bytes, mss: int) -> List[Tuple[int, bytes]]:
    return [(i, data[i:i + mss]) for i in range(0, len(data), mss)]


def out_of_order_fill() -> Built:
    """c2s segments 0, 2, 1, 3 (the hole left by segment 1 is filled)."""
    c = Conv(cport=40009)
    c.handshake()
    data = payload("O", 4000)
    segs = _segments(c, True, data, 1000)
    for i in (0, 2, 1, 3):
        off, chunk = segs[i]
        c.tcp(True, "PA", seq=c.off_seq(True, off), payload=chunk)
    c.nxt[True] = c.off_seq(True, len(data))
    c.tcp(False, "A")
    c.close()
    return c.built(data, b"", end="FIN")


def reversed_segments() -> Built:
    """Server sends a 6-segment message in reverse order."""
    c = Conv(cport=40010)
    c.handshake()
    c.send(True, REQ)
    data = payload("V", 6000)
    for off, chunk in reversed(_segments(c, False, data, 1000)):
        c.tcp(False, "A", seq=c.off_seq(False, off), payload=chunk)
    c.nxt[False] = c.off_seq(False, len(data))
    c.tcp(True, "A")
    c.close()
    return c.built(REQ, data, end="FIN")


def retransmissions() -> Built:
    """An exact retransmission and an inconsistent one (same sequence range, other bytes) of delivered data:
    the stream keeps the bytes delivered first whatever the policy."""
    c = Conv(cport=40011)
    c.handshake()
    data = payload("E", 2000)
    c.tcp(True, "PA", payload=data[:1000])
    c.tcp(True, "PA", seq=c.off_seq(True, 0), payload=data[:1000])  # exact
    c.tcp(False, "A")
    c.tcp(True, "PA", payload=data[1000:])
    c.tcp(True, "PA", seq=c.off_seq(True, 1000), payload=b"Z" * 1000)  # inconsistent
    c.tcp(False, "A")
    c.close()
    return c.built(data, b"", end="FIN", extra={"inconsistent": True})


def overlap_exact(tag: str = "") -> Built:
    """A hole at [0,10) while two different copies of [10,30) are held; then the hole fills.
    first -> the first copy; last -> the second copy."""
    c = Conv(cport=40012)
    c.handshake()
    head, first, second, tail = b"0123456789", b"A" * 20, b"B" * 20, b"-tail-"
    c.tcp(True, "PA", seq=c.off_seq(True, 10), payload=first)
    c.tcp(True, "PA", seq=c.off_seq(True, 10), payload=second)
    c.tcp(True, "PA", seq=c.off_seq(True, 0), payload=head)
    c.tcp(True, "PA", seq=c.off_seq(True, 30), payload=tail)
    c.nxt[True] = c.off_seq(True, 36)
    c.tcp(False, "A")
    c.close()
    b = c.built(head + first + tail, b"", end="FIN")
    b.extra["by_policy"] = {"first": head + first + tail, "last": head + second + tail}
    return b


def overlap_new_starts_before() -> Built:
    """Old held segment [10,20) 'A'*10; a new segment [5,15) 'b'*10 starts BEFORE it and overlaps its head.
    first: old bytes keep [10,15); bsd/linux (Snort/Suricata target-based): a new segment that starts
    before the original wins the overlap -> [10,15) from the new one. Hole [0,5) filled last."""
    c = Conv(cport=40013)
    c.handshake()
    old, new, head = b"A" * 10, b"b" * 10, b"01234"
    c.tcp(True, "PA", seq=c.off_seq(True, 10), payload=old)
    c.tcp(True, "PA", seq=c.off_seq(True, 5), payload=new)
    c.tcp(True, "PA", seq=c.off_seq(True, 0), payload=head)
    c.nxt[True] = c.off_seq(True, 20)
    c.tcp(False, "A")
    c.close()
    first = head + b"b" * 5 + b"A" * 10
    newwins = head + b"b" * 10 + b"A" * 5
    b = c.built(first, b"", end="FIN")
    b.extra["by_policy"] = {"first": first, "last": newwins, "bsd": newwins, "linux": newwins}
    return b


def acked_hole() -> Built:
    """Server segment [1000,2000) never captured, but the client ACKs past it: gap [1000, 1000] in s2c,
    delivery continues with [2000, 3000)."""
    c = Conv(cport=40014)
    c.handshake()
    c.send(True, REQ)
    data = payload("G", 3000)
    c.tcp(False, "A", payload=data[:1000])
    c.tcp(False, "A", seq=c.off_seq(False, 2000), payload=data[2000:], advance=False)
    c.nxt[False] = c.off_seq(False, 3000)
    c.tcp(True, "A")  # acks 3000: the hole is acknowledged
    c.close()
    return c.built(REQ, data[:1000] + data[2000:], s2c_gaps=[[1000, 1000]], end="FIN")


def ipv6_ext_header() -> Built:
    """IPv6 with a Destination Options extension header before TCP."""
    c = Conv(cip="2001:db8::1", sip="2001:db8::2", cport=40015)
    ip_kw: dict = {}
    resp = payload("6", 1500)

    def l3(fc):
        return c.l3(fc, **ip_kw) / IPv6ExtHdrDestOpt()

    c.tcp(True, "S", l3=l3(True))
    c.tcp(False, "SA", l3=l3(False))
    c.tcp(True, "A", l3=l3(True))
    c.tcp(True, "PA", payload=REQ, l3=l3(True))
    c.tcp(False, "PA", payload=resp, l3=l3(False))
    c.tcp(True, "FA", l3=l3(True))
    c.tcp(False, "FA", l3=l3(False))
    c.tcp(True, "A", l3=l3(True))
    return c.built(REQ, resp, end="FIN")


def vlan_tagged(vlans: Sequence[int] = (100,), qinq_ad: bool = False) -> Built:
    c = Conv(cport=40016, vlan=vlans, qinq_outer_ad=qinq_ad)
    c.handshake()
    resp = payload("VL", 1800)
    c.send(True, REQ)
    c.send(False, resp)
    c.close()
    return c.built(REQ, resp, end="FIN")


def ipv4_options() -> Built:
    """Every IPv4 header carries a Record Route option (IHL 10)."""
    c = Conv(cport=40017)
    kw = {"options": [IPOption_RR(routers=["1.2.3.4", "5.6.7.8"])]}
    c.tcp(True, "S", ip_kw=kw)
    c.tcp(False, "SA", ip_kw=kw)
    c.tcp(True, "A", ip_kw=kw)
    resp = payload("OP", 1200)
    c.tcp(True, "PA", payload=REQ, ip_kw=kw)
    c.tcp(False, "PA", payload=resp, ip_kw=kw)
    c.close()
    return c.built(REQ, resp, end="FIN")


def ipv4_fragments() -> Built:
    """The request and the response travel in IPv4 fragments (the response's fragments out of order)."""
    c = Conv(cport=40018)
    c.handshake()
    req = payload("FQ", 1800)
    resp = payload("FR", 2600)
    for from_client, data, rev in ((True, req, False), (False, resp, True)):
        sp, dp = (c.cport, c.sport) if from_client else (c.sport, c.cport)
        seg = c.l3(from_client, id=0x1234 if from_client else 0x4321) / TCP(
            sport=sp, dport=dp, flags="PA", seq=c.nxt[from_client], ack=c.nxt[not from_client]) / Raw(data)
        seg = seg.__class__(bytes(seg))  # fix checksums before fragmenting
        frags = fragment(seg, fragsize=600)
        for f in (reversed(frags) if rev else frags):
            c.emit(bytes(c.l2(from_client) / f))
        c.nxt[from_client] = (c.nxt[from_client] + len(data)) % M32
        c.tcp(not from_client, "A")
    c.close()
    return c.built(req, resp, end="FIN")


def damaged_packets() -> Built:
    """A clean connection interleaved with damaged packets that must be counted and skipped:
    a frame shorter than its IP total length says (on the wire too: not a snaplen cut, which
    tests/test_snaplen.py covers), an IPv4 header with IHL 3, a TCP header with
    data offset 4, a frame shorter than an Ethernet header, and UDP datagrams (not TCP: ignored)."""
    c = Conv(cport=40019)
    c.handshake()
    c.send(True, REQ)
    resp = payload("D", 2000)
    c.tcp(False, "PA", payload=resp[:1000])
    # 1. a later segment whose IP total length exceeds the frame (80 bytes on the wire): its bytes must
    # not be delivered from it
    full = bytes(c.l2(False) / c.l3(False) / TCP(sport=c.sport, dport=c.cport, flags="PA",
                                                  seq=c.nxt[False], ack=c.nxt[True]) / Raw(b"!" * 1000))
    c.emit(full, orig_len=80, caplen=80)
    # 2. bad IHL (3 -> 12 bytes) ; 3. TCP data offset 4
    bad_ihl = bytearray(bytes(c.l2(True) / c.l3(True) / TCP(sport=c.cport, dport=c.sport, flags="A")))
    bad_ihl[14] = 0x43
    c.emit(bytes(bad_ihl))
    bad_doff = bytearray(bytes(c.l2(True) / c.l3(True) / TCP(sport=c.cport, dport=c.sport, flags="PA",
                                                             seq=c.nxt[True]) / Raw(b"BAD-DOFF")))
    bad_doff[14 + 20 + 12] = 0x40
    c.emit(bytes(bad_doff))
    # 4. runt frame
    c.emit(b"\x02\x00\x00\x00\x00\x01\x02")
    # 5. UDP both ways
    for fc in (True, False):
        c.emit(bytes(c.l2(fc) / c.l3(fc) / UDP(sport=5353, dport=5353) / Raw(b"udp-payload")))
    c.tcp(False, "PA", payload=resp[1000:])
    c.tcp(True, "A")
    c.close()
    return c.built(REQ, resp, end="FIN", extra={"damaged": 4, "udp": 2})


def udp_only() -> Built:
    c = Conv(cport=40020)
    for fc in (True, False, True):
        c.emit(bytes(c.l2(fc) / c.l3(fc) / UDP(sport=c.cport, dport=53) / Raw(b"\x12\x34" * 10)))
    return c.built()


BUILDERS = {
    "basic_close": basic_close,
    "handshake_retransmissions": handshake_retransmissions,
    "simultaneous_open": simultaneous_open,
    "split_handshake": split_handshake,
    "half_close": half_close,
    "rst_in_window": rst_in_window,
    "rst_out_of_window": rst_out_of_window,
    "window_scaling": window_scaling,
    "seq_wrap": seq_wrap,
    "syn_with_data": syn_with_data,
    "midstream_pickup": midstream_pickup,
    "out_of_order_fill": out_of_order_fill,
    "reversed_segments": reversed_segments,
    "retransmissions": retransmissions,
    "overlap_exact": overlap_exact,
    "overlap_new_starts_before": overlap_new_starts_before,
    "acked_hole": acked_hole,
    "ipv6_ext_header": ipv6_ext_header,
    "vlan_tagged": vlan_tagged,
    "qinq_tagged": lambda: vlan_tagged((200, 300), qinq_ad=True),
    "ipv4_options": ipv4_options,
    "ipv4_fragments": ipv4_fragments,
    "damaged_packets": damaged_packets,
}
