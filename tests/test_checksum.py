"""Checksum validation (issue 9, item 4): a packet a host drops for its checksum never enters the engine.

Captures are built here (tests/pcaps.py's Conv); a wrong checksum is written into the frame's bytes after
scapy computed the right one. The stream expected is the one the receiving host gets: without the segment
whose checksum is wrong. Every run checks the accounting partition (each packet in one disposition).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, IPv6ExtHdrDestOpt, Raw, fragment

from mos import ErrorKind, Event, Monitor, MosError, Side
from mos.source import PcapSource
from mos.stats import accounted
from tests.conftest import run_cli
from tests.pcaps import Built, Conv, payload
from tests.test_live import inline  # noqa: F401  (the module-scoped inline topology)

MODES = ("auto", "on", "off")
BAD_COUNTERS = ("bad_checksum_ip", "bad_checksum_tcp", "bad_checksum_udp")


@dataclass
class Result:
    c2s: bytes
    s2c: bytes
    counters: Dict[str, int]
    state: str
    errors: List[Tuple[Optional[int], str, Optional[str]]] = field(default_factory=list)  # conn id, kind, counter
    inconsistent: int = 0

    def bad(self) -> Dict[str, int]:
        return {k: self.counters[k] for k in BAD_COUNTERS if self.counters[k]}


def run(tmp_path: Path, built: Built, checksum: str, name: str = "t", source: Optional[PcapSource] = None) -> Result:
    mon = Monitor(checksum=checksum)
    chunks: Dict[Side, List[Tuple[int, bytes]]] = defaultdict(list)
    errors: List[Tuple[Optional[int], str, Optional[str]]] = []
    rexmits = [0]
    mon.on(Event.CONN_NEW_DATA, lambda c, e: chunks[e.side].append((e.offset, bytes(e.data))))
    mon.on(Event.ERROR, lambda c, e: errors.append((c.id if c else None, e.reason.name, e.bad_checksum)))
    mon.on(Event.REXMIT, lambda c, e: rexmits.__setitem__(0, rexmits[0] + e.inconsistent))
    path = built.write(tmp_path / f"{name}-{checksum}.pcap")
    st = mon.run(source(str(path)) if source else PcapSource(str(path)))
    assert st["packets"] == len(built.records) == accounted(st), st

    def stream(side: Side) -> bytes:
        out = b""
        for off, data in chunks[side]:
            assert off == len(out), "contiguous delivery in these captures"
            out += data
        return out

    return Result(stream(Side.SERVER), stream(Side.CLIENT), dict(st), mon.checksum_state, errors, rexmits[0])


# ---- wrong checksums written into built frames ------------------------------------------------------------

L3_OFF = 14  # Conv's frames: Ethernet, no VLAN


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum16(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    return _fold(sum(struct.unpack(f"!{len(b) // 2}H", b)))


def partial_checksum(frame: bytes) -> int:
    """What a sending host with checksum offload leaves in the TCP/UDP checksum field: the pseudo-header
    sum, not complemented, for the NIC to finish (Linux's CHECKSUM_PARTIAL)."""
    p = Ether(frame)
    if IP in p:
        ip = p[IP]
        l4len = ip.len - ip.ihl * 4
        ph = socket.inet_aton(ip.src) + socket.inet_aton(ip.dst) + struct.pack("!BBH", 0, ip.proto, l4len)
    else:
        ip6 = p[IPv6]
        l4len = len(bytes(p[TCP] if TCP in p else p[UDP]))
        ph = socket.inet_pton(socket.AF_INET6, ip6.src) + socket.inet_pton(socket.AF_INET6, ip6.dst) + \
            struct.pack("!IxxxB", l4len, 6 if TCP in p else 17)
    return _sum16(ph)


def with_l4_checksum(frame: bytes, value: Optional[int] = None) -> bytes:
    """The frame with its TCP (or UDP) checksum replaced: by `value`, else by a wrong one."""
    p = Ether(frame)
    l4 = p[TCP] if TCP in p else p[UDP]
    off = len(frame) - len(bytes(l4)) + (16 if TCP in p else 6)
    old = struct.unpack_from("!H", frame, off)[0]
    new = value if value is not None else old ^ 0x1234
    return frame[:off] + struct.pack("!H", new) + frame[off + 2:]


def with_partial_checksum(frame: bytes) -> bytes:
    """The frame as a local stack offloading its TCP checksum hands it on (CHECKSUM_PARTIAL): the field
    holds the pseudo-header's sum only, for a NIC to finish."""
    p = Ether(frame)
    ip, tcp = p[IP], p[TCP]
    pseudo = bytes(ip)[12:20] + struct.pack("!BBH", 0, 6, len(bytes(tcp)))
    total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return with_l4_checksum(frame, total)


def with_ip_checksum(frame: bytes) -> bytes:
    off = L3_OFF + 10
    old = struct.unpack_from("!H", frame, off)[0]
    return frame[:off] + struct.pack("!H", old ^ 0x0F0F) + frame[off + 2:]


def spoil_last(c: Conv, how=with_l4_checksum) -> None:
    t, frame, orig = c.records[-1]
    c.records[-1] = (t, how(frame), orig)


# ---- the case: a segment the host drops, then the good retransmission ----------------------------

def injected(v6: bool = False, ip_header: bool = False) -> Tuple[Built, bytes, bytes]:
    """A request in three segments; before the second, a copy with other bytes and a wrong checksum (the
    host drops it, so its sender retransmits the real one at the same sequence numbers)."""
    c = Conv(cip="fd00::1", sip="fd00::2") if v6 else Conv()
    c.handshake()
    req = payload("Q", 1500)
    c.tcp(True, "PA", payload=req[:500])
    c.tcp(False, "A")
    evil = payload("X", 500)
    c.tcp(True, "PA", payload=evil, seq=c.nxt[True], advance=False)
    spoil_last(c, with_ip_checksum if ip_header else with_l4_checksum)
    c.tcp(True, "PA", payload=req[500:1000])
    c.tcp(False, "A")
    c.tcp(True, "PA", payload=req[1000:])
    c.tcp(False, "A")
    resp = payload("R", 800)
    c.send(False, resp)
    c.close()
    return c.built(req, resp), req, evil


@pytest.mark.parametrize("v6,ip_header", [(False, False), (False, True), (True, False)],
                         ids=["tcp4", "ip4-header", "tcp6"])
@pytest.mark.parametrize("mode", MODES)
def test_bad_segment_then_good_retransmission(tmp_path, mode, v6, ip_header):
    b, req, evil = injected(v6, ip_header)
    r = run(tmp_path, b, mode)
    if mode == "off":  # the old behaviour: the dropped copy is the stream, the real bytes a mismatch
        assert r.c2s == req[:500] + evil + req[1000:]
        assert r.inconsistent == 1 and r.bad() == {} and r.state == "off"
        assert not [e for e in r.errors if e[1] == "CHECKSUM_INVALID"]
        return
    counter = "bad_checksum_ip" if ip_header else "bad_checksum_tcp"
    assert r.c2s == req and r.s2c == b.s2c
    assert r.inconsistent == 0
    assert r.bad() == {counter: 1}
    assert r.state == "validating"  # one packet in 18: no offloading
    assert r.counters["conn_packets"] == len(b.records) - 1
    # the ERROR names the connection (found without touching it) and the counter
    assert r.errors == [(1, "CHECKSUM_INVALID", counter)]


def test_good_ipv6_with_extension_header_passes(tmp_path):
    """The IPv6 pseudo-header's length is the upper layer's, without the extension headers before it."""
    c = Conv(cip="fd00::1", sip="fd00::2")
    c.handshake()
    data = payload("E", 300)
    c.tcp(True, "PA", payload=data, l3=IPv6(src=c.cip, dst=c.sip) / IPv6ExtHdrDestOpt())
    c.tcp(False, "A")
    c.close()
    r = run(tmp_path, c.built(data, b""), "on")
    assert r.c2s == data and r.bad() == {}


def test_bad_syn_has_no_connection(tmp_path):
    """A SYN with a wrong checksum creates nothing: the ERROR has no connection; the retransmitted SYN opens it."""
    c = Conv()
    c.tcp(True, "S", advance=False)
    spoil_last(c)
    c.handshake()
    c.send(True, b"hello")
    c.close()
    r = run(tmp_path, c.built(b"hello", b""), "on")
    assert r.c2s == b"hello" and r.counters["conns_created"] == 1
    assert r.errors == [(None, "CHECKSUM_INVALID", "bad_checksum_tcp")]


# ---- offloaded checksums: a capture made on the sending host ----------------------------------------------

def offloaded(n_segments: int = 4) -> Built:
    """Every segment the client sent carries the partial checksum its NIC would have finished."""
    c = Conv()
    c.handshake()
    req = payload("O", 600 * n_segments)
    c.send(True, req, mss=600)
    resp = payload("P", 900)
    c.send(False, resp)
    c.close()
    b = c.built(req, resp)
    client_mac = Ether(b.records[0][1]).src
    b.records = [(t, with_l4_checksum(f, partial_checksum(f)) if Ether(f).src == client_mac else f, o)
                 for t, f, o in b.records]
    b.extra["client_packets"] = sum(1 for _, f, _ in b.records if Ether(f).src == client_mac)
    return b


def test_offloaded_capture_auto_turns_validation_off(tmp_path):
    b = offloaded()
    r = run(tmp_path, b, "auto")
    assert r.state == "auto-off" and r.counters["checksum_auto_off"] == 1
    assert r.c2s == b.c2s and r.s2c == b.s2c and r.bad() == {}


def test_offloaded_capture_on_drops_them(tmp_path):
    b = offloaded()
    r = run(tmp_path, b, "on")
    assert r.state == "validating" and r.counters["checksum_auto_off"] == 0
    assert r.bad() == {"bad_checksum_tcp": b.extra["client_packets"]}
    assert r.c2s == b""  # not even the SYN got through: the server's packets are a picked-up connection's


def test_offloaded_capture_off(tmp_path):
    b = offloaded()
    r = run(tmp_path, b, "off")
    assert r.c2s == b.c2s and r.bad() == {} and r.counters["checksum_auto_off"] == 0


class _Unsampled(PcapSource):
    """A capture source that, like a live one, cannot be read ahead: auto decides during the run."""
    checksum_sample = None  # type: ignore[assignment]


def test_auto_without_a_look_ahead_validates_until_its_sample_ends(tmp_path):
    """Live inputs are not read ahead: auto validates from the first packet (no window in which a wrong
    checksum is let in) and switches off after 1000 checked packets, more than one in ten wrong."""
    b = offloaded(n_segments=600)  # 3 + 1200 + ... packets, half of them the client's
    recs = b.records
    client_mac = Ether(recs[0][1]).src
    before = sum(1 for _, f, _ in recs[:1000] if Ether(f).src == client_mac)
    mon = Monitor(checksum="auto")
    path = b.write(tmp_path / "long.pcap")
    st = mon.run(_Unsampled(str(path)))
    assert st["packets"] == len(recs) == accounted(st)
    assert mon.checksum_state == "auto-off" and st["checksum_auto_off"] == 1
    assert st["bad_checksum_tcp"] == before  # the sample's were judged, and dropped
    assert st["conn_packets"] == len(recs) - before
    # read ahead (a capture file), nothing is lost
    r = run(tmp_path, b, "auto", name="long-ahead")
    assert r.bad() == {} and r.c2s == b.c2s


def test_auto_stays_on_below_one_in_ten(tmp_path):
    """A capture with a few injected segments is not mistaken for offloading."""
    b, req, _ = injected()
    r = run(tmp_path, b, "auto")
    assert r.state == "validating" and r.c2s == req


# ---- fragments --------------------------------------------------------------------------------------------

def fragmented(spoil: str) -> Tuple[Built, bytes]:
    """A request sent as one segment in three IPv4 fragments. spoil: 'ip' (a fragment's header checksum
    wrong, then the three fragments again), 'tcp' (the datagram's TCP checksum wrong, then the segment
    again, whole) or ''."""
    c = Conv()
    c.handshake()
    data = payload("F", 1400)
    seq = c.nxt[True]
    seg = c.l3(True, id=77) / TCP(sport=c.cport, dport=c.sport, flags="PA", seq=seq, ack=c.nxt[False]) / Raw(data)
    seg = seg.__class__(bytes(seg))
    if spoil == "tcp":
        seg[TCP].chksum ^= 0x4321
    frags = [bytes(c.l2(True) / f) for f in fragment(seg, fragsize=600)]
    if spoil == "ip":
        frags[1] = with_ip_checksum(frags[1])
    for f in frags:
        c.emit(f)
    if spoil:
        c.tcp(True, "PA", payload=data, seq=seq)  # the retransmission the host asks for
    c.nxt[True] = (seq + len(data)) % (1 << 32)
    c.tcp(False, "A")
    c.close()
    return c.built(data, b""), data


@pytest.mark.parametrize("mode", ("auto", "on"))
def test_fragment_with_bad_ip_header(tmp_path, mode):
    b, data = fragmented("ip")
    r = run(tmp_path, b, mode)
    assert r.c2s == data and r.bad() == {"bad_checksum_ip": 1}
    assert r.counters["frag_held"] == 2 and r.counters["datagrams_reassembled"] == 0


@pytest.mark.parametrize("mode", ("auto", "on"))
def test_datagram_with_bad_tcp_checksum(tmp_path, mode):
    """The TCP checksum is the datagram's: checked after reassembly; its last fragment is counted as rejected."""
    b, data = fragmented("tcp")
    r = run(tmp_path, b, mode)
    assert r.c2s == data and r.bad() == {"bad_checksum_tcp": 1}
    assert r.counters["datagrams_reassembled"] == 1 and r.counters["frag_held"] == 2
    assert r.inconsistent == 0


def test_datagram_with_bad_tcp_checksum_off(tmp_path):
    b, data = fragmented("tcp")
    r = run(tmp_path, b, "off")
    assert r.c2s == data and r.bad() == {} and r.counters["frag_held"] == 3


def test_good_fragments_pass(tmp_path):
    b, data = fragmented("")
    r = run(tmp_path, b, "on")
    assert r.c2s == data and r.bad() == {} and r.counters["frag_held"] == 3


# ---- UDP ---------------------------------------------------------------------------------------------------

def test_udp(tmp_path):
    c = Conv()
    good = bytes(c.l2(True) / IP(src=c.cip, dst=c.sip) / UDP(sport=5000, dport=53) / Raw(b"q" * 33))
    none = bytes(c.l2(True) / IP(src=c.cip, dst=c.sip) / UDP(sport=5000, dport=53, chksum=0) / Raw(b"q" * 33))
    good6 = bytes(c.l2(True) / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5000, dport=53) / Raw(b"r" * 5))
    for f in (good, with_l4_checksum(good), none, good6, with_l4_checksum(good6)):
        c.emit(f)
    b = c.built()
    r = run(tmp_path, b, "on")
    assert r.bad() == {"bad_checksum_udp": 2}
    assert r.counters["udp_packets"] == 3  # checksum 0 over IPv4: none to check (RFC 768)
    assert [e[2] for e in r.errors] == ["bad_checksum_udp"] * 2


# ---- the setting ------------------------------------------------------------------------------------------

def test_bad_setting_is_a_mos_error():
    with pytest.raises(MosError, match="unknown checksum setting 'maybe' \\(choose from auto, on, off\\)"):
        Monitor(checksum="maybe")


def test_error_kind_from_the_engine():
    assert int(ErrorKind.CHECKSUM_INVALID) == 13
    assert ErrorKind.CHECKSUM_INVALID.event_name == "decoder.checksum_invalid"


def test_cli_checksum_option(tmp_path):
    b, req, evil = injected()
    path = b.write(tmp_path / "inj.pcap")
    for mode, want in (("on", req), ("off", req[:500] + evil + req[1000:])):
        out = tmp_path / mode
        proc = run_cli(str(path), "-o", str(out), "--checksum", mode, "--stats")
        assert proc.returncode == 0, proc.stderr
        assert (out / "1.c2s").read_bytes() == want
        assert (b"bad_checksum_tcp" in proc.stderr) == (mode == "on")
    proc = run_cli(str(path), "--checksum", "maybe")
    assert proc.returncode == 2 and b"'maybe' is not one of 'auto', 'on', 'off'" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_cli_says_when_auto_turned_off(tmp_path):
    path = offloaded().write(tmp_path / "off.pcap")
    proc = run_cli(str(path))
    assert proc.returncode == 0
    assert b"checksum auto: more than one packet in ten has a wrong checksum" in proc.stderr
    proc = run_cli(str(path), "--checksum", "on")
    assert b"checksum auto" not in proc.stderr


def test_run_cli_has_the_option(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("def init(monitor):\n    pass\n")
    b, _, _ = injected()
    path = b.write(tmp_path / "inj.pcap")
    proc = subprocess.run([sys.executable, "-m", "mos.cli", "run", str(app), "--pcap", str(path), "--checksum",
                           "on", "--stats", "--no-progress"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"bad_checksum_tcp" in proc.stderr


# ---- inline (AF_XDP): a frame with a wrong checksum is dropped, not forwarded -------------------------------

@pytest.mark.netns
@pytest.mark.parametrize("mode", ["on", "auto"])
def test_inline_bad_checksum_dropped(inline, tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Frames with a wrong TCP or IPv4 header checksum never reach the server's wire (counted in
    malformed_drop), with `on` and with `auto` on a veth alike; a frame whose TCP checksum is a local
    sender's partial one (checksum offload on a veth) is completed and forwarded, and the server takes it."""
    from tests.test_evasion_ip6 import _mac, send_through
    from tests.test_live import CLIENT, PORT, SERVER, _app

    tag = inline.topo.tag[-6:]
    lc, ls = f"lc{tag}", f"ls{tag}"
    eth = Ether(src=_mac(inline.c, lc), dst=_mac(inline.s, ls))

    def seg(marker: str, sport: int) -> bytes:
        return bytes(eth / IP(src=CLIENT, dst=SERVER) / TCP(sport=sport, dport=PORT, flags="S") / Raw(marker.encode()))

    frames = {"MOSX-BADSUM": with_l4_checksum(seg("MOSX-BADSUM", 4250)),
              "MOSX-BADIP": with_ip_checksum(seg("MOSX-BADIP", 4251)),
              "MOSX-GOOD": seg("MOSX-GOOD", 4252),
              "MOSX-PARTIAL": with_partial_checksum(seg("MOSX-PARTIAL", 4253))}
    app = _app(tmp_path, "noop.py", "def init(mon):\n    pass\n")
    run = inline.run(app, "--stats", "--checksum", mode)
    seen = send_through(inline, run, frames)
    eng = run.engine_counters()
    xsk_c = run.counters("  af_xdp worker 0:")
    assert seen == {"MOSX-GOOD", "MOSX-PARTIAL"}, (seen, run.stderr)
    assert eng.get("bad_checksum_tcp") == 1 and eng.get("bad_checksum_ip") == 1, run.stderr
    assert eng.get("checksum_completed", 0) >= 1 and not eng.get("checksum_auto_off"), run.stderr
    assert xsk_c.get("malformed_drop", 0) == 2, run.stderr
    assert "partial ones (a local sender's offload) are completed" in run.stderr
