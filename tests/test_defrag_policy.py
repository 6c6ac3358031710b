"""Target-based IP defragmentation: which copy of overlapping fragments the datagram keeps, per policy.

The fragments are the Sturges-Novak set (Novak, "Target-Based Fragmentation Reassembly", as extended in
Suricata's defrag tests): nine fragments with holes, then eight that overlap them, starting before / at /
after a held fragment and ending before / at / after it. Here they carry a TCP segment: a first fragment
of the 24-byte TCP header, then the set shifted by those three blocks, so the bytes the server's stack
receives are the reassembled payload. The expected payload of each policy is written out block by block
from the policy's rule (userspace/defrag.c), not taken from a run; they agree with Suricata's tests and
frag3's documentation. Over IPv4 and IPv6 alike (the policies apply to both, as in Suricata).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from scapy.all import IP, TCP, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, Raw

from mos import ErrorKind, Event, Monitor, MosError, Side
from mos.abi import frag_policy_names
from mos.stats import accounted
from tests.pcaps import M32, Built, Conv

BLOCK = 8
HDR_BLOCKS = 3  # the TCP header fragment (24 bytes: 20 + four NOPs)
# (letter, offset, length) in blocks, in the order sent
ORIGINALS = [("A", 0, 3), ("B", 4, 2), ("C", 6, 3), ("D", 10, 1), ("E", 13, 2), ("F", 15, 3), ("G", 18, 2),
             ("H", 20, 2), ("I", 22, 1)]
OVERLAPPING = [("J", 1, 4), ("K", 6, 3), ("L", 9, 3), ("M", 12, 3), ("N", 16, 1), ("O", 19, 1), ("P", 20, 1)]
LAST = ("Q", 22, 2)  # MF clear
# The datagram's 24 payload blocks by policy (a new fragment [a, b) against a held piece [o, e)):
EXPECTED: Dict[str, Optional[str]] = {
    "first": "AAAJBBCCCLDLMEEFFFGGHHIQ",      # held bytes always stay
    "last": "AJJJJBKKKLLLMMMFNFGOPHQQ",       # the new copy always wins
    "bsd": "AAAJJBCCCLLLMMMFFFGGHHIQ",        # new wins iff a < o
    "bsd-right": "AJJJBBKKKLDLMEEFNFGOPHQQ",  # new wins iff a >= o
    "old-linux": "AAAJJBKKKLLLMMMFFFGGPHQQ",  # new wins iff a <= o
    "windows": "AAAJBBCCCLLLMEEFFFGGHHIQ",    # new wins iff a < o and b > e
    "solaris": "AAAJBBCCCLLLMMMFFFGGHHIQ",    # new wins iff a < o and b >= e
    "linux": None,                            # J overlaps A: the datagram is dropped
}
# bytes of each overlapping fragment that differ from what is held when it arrives (every letter differs)
DIFFERING = {"J": 24, "K": 24, "L": 8, "M": 16, "N": 8, "O": 8, "P": 8, "Q": 8}
RETRANSMISSION = b"R" * (24 * BLOCK)  # the segment sent again whole, as the client does when unanswered


def _fill(letter: str, nblocks: int) -> bytes:
    # bytes of a range of their own per letter (no byte of two fragments is equal, so every overlapping
    # byte differs), cycling with a period prime to the block so that a shifted block shows
    base = (ord(letter) - ord("A")) * 9
    return bytes(base + i % 9 for i in range(nblocks * BLOCK))


def _expected_payload(policy: str) -> bytes:
    pattern = EXPECTED[policy]
    assert pattern is not None and len(pattern) == 24
    frags = {f[0]: f for f in ORIGINALS + OVERLAPPING + [LAST]}
    out = b""
    for blk, letter in enumerate(pattern):
        _, off, n = frags[letter]
        assert off <= blk < off + n, (policy, blk, letter)
        out += _fill(letter, n)[(blk - off) * BLOCK:(blk - off + 1) * BLOCK]
    return out


def _frag(c: Conv, ident: int, off_blocks: int, data: bytes, more: bool):  # type: ignore[no-untyped-def]
    src, dst = c.cip, c.sip
    if c.v6:
        return IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(nh=6, offset=off_blocks, m=int(more), id=ident) / Raw(data)
    return IP(src=src, dst=dst, id=ident, proto=6, flags="MF" if more else 0, frag=off_blocks) / Raw(data)


def _capture(v6: bool, sets: Tuple[List[Tuple[str, int, int]], ...] = (ORIGINALS, OVERLAPPING, [LAST]),
             retransmit: bool = True, ident: int = 0x5151, aim: Optional[str] = None) -> Tuple[Built, Conv]:
    """A connection whose request is the fragment set, sent once, then (``retransmit``) again whole. The
    segment's TCP checksum is right for the reassembly of policy ``aim`` (None: for none)."""
    c = Conv(cip="2001:db8::1" if v6 else "10.10.0.1", sip="2001:db8::2" if v6 else "10.10.0.2", cport=40100)
    c.handshake()
    seq = c.nxt[True]
    tcp = TCP(sport=c.cport, dport=c.sport, flags="PA", seq=seq, ack=c.nxt[False], window=65535,
              options=[("NOP", None)] * 4)
    if aim is not None:
        tcp.chksum = TCP(bytes(c.l3(True) / tcp / Raw(_expected_payload(aim)))[40 if v6 else 20:]).chksum
    hdr = bytes(tcp)
    assert len(hdr) == HDR_BLOCKS * BLOCK
    c.emit(bytes(c.l2(True) / _frag(c, ident, 0, hdr, True)))
    for group in sets:
        for letter, off, n in group:
            c.emit(bytes(c.l2(True) / _frag(c, ident, HDR_BLOCKS + off, _fill(letter, n), (letter, off, n) != LAST)))
    c.nxt[True] = (seq + 24 * BLOCK) % M32
    if retransmit:
        c.tcp(True, "PA", seq=seq, payload=RETRANSMISSION)
    c.tcp(False, "A")
    c.close()
    return c.built(end="FIN"), c


class Seen:
    """The stream the server receives and the ERROR events."""

    def __init__(self, mon: Monitor) -> None:
        self.server = b""
        self.errors: List[Tuple[object, ErrorKind, int, int]] = []
        mon.on(Event.CONN_NEW_DATA, self._data, side=Side.SERVER)
        mon.on(Event.ERROR, lambda conn, ev: self.errors.append((conn, ev.reason, ev.offset, ev.length)))

    def _data(self, conn, ev) -> None:  # type: ignore[no-untyped-def]
        self.server += ev.data


def _run(tmp_path: Path, built: Built, policy: str, checksum: str = "off") -> Tuple[Seen, Dict[str, int]]:
    # The segment's TCP checksum can match one reassembly of overlapping fragments only (the one its sender
    # aimed at): what is tested here is which bytes each policy keeps, so checksums are not validated;
    # test_checksum_picks_the_reassembly_it_was_made_for shows the two together.
    mon = Monitor(frag_policy=policy, checksum=checksum)
    seen = Seen(mon)
    st = mon.run_pcap(str(built.write(tmp_path / f"{policy}.pcap")))
    assert accounted(st) == st["packets"] == len(built.records)
    return seen, st


def test_policy_names_come_from_the_engine() -> None:
    assert set(frag_policy_names()) == set(EXPECTED)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_sturges_novak_stream_per_policy(tmp_path: Path, policy: str, v6: bool) -> None:
    built, _ = _capture(v6)
    seen, st = _run(tmp_path, built, policy)
    n_sent = 1 + len(ORIGINALS) + len(OVERLAPPING) + 1
    assert st["frag_fragments"] == n_sent
    ev_off = [(HDR_BLOCKS + off) * BLOCK for _, off, _ in OVERLAPPING + [LAST]]
    ev_len = [DIFFERING[letter] for letter, _, _ in OVERLAPPING + [LAST]]
    if EXPECTED[policy] is None:
        # linux: J overlaps the held A partly: the datagram goes, with the ten fragments held; the rest
        # start a datagram that never completes (no first fragment), so the host takes the retransmission
        assert seen.server == RETRANSMISSION
        assert st["frag_policy_drops"] == 1 and st["frag_datagrams"] == 0
        # the dropped datagram's (header and originals), then the fragments after J, which start a datagram
        # that never completes: discarded at the end of input
        assert st["frag_discarded"] == 1 + len(ORIGINALS) + (len(OVERLAPPING) - 1) + 1
        assert st["frag_overlaps"] == st["frag_overlaps_differing"] == 1
        assert st["frag_error"] == 1 and st["frag_held"] == n_sent - 1
        assert seen.errors == [(None, ErrorKind.DEFRAG_OVERLAP, ev_off[0], ev_len[0])]
        return
    # the datagram the target reassembles is the stream; the later whole copy is a retransmission
    assert seen.server == _expected_payload(policy)
    assert st["frag_datagrams"] == 1 and st["datagrams_reassembled"] == 1 and st["frag_policy_drops"] == 0
    assert st["frag_overlaps"] == st["frag_overlaps_differing"] == len(OVERLAPPING) + 1
    assert st["frag_held"] == n_sent and st["frag_error"] == 0
    assert seen.errors == [(None, ErrorKind.DEFRAG_OVERLAP, o, n) for o, n in zip(ev_off, ev_len)]
    assert st["reasm_rexmit_segments"] == 1  # the whole copy is a retransmission of what the host holds
    assert st["memory_held"] == 0


@pytest.mark.parametrize("policy", ["bsd", "first", "windows"])
def test_checksum_picks_the_reassembly_it_was_made_for(tmp_path: Path, policy: str) -> None:
    """An evader computes the TCP checksum for the reassembly of the target it aims at (bsd here): a host
    of that policy takes the datagram, the others drop it for its checksum and take the retransmission."""
    built, _ = _capture(v6=False, aim="bsd")
    seen, st = _run(tmp_path, built, policy, checksum="on")
    if policy == "bsd":
        assert seen.server == _expected_payload("bsd")
        assert st["bad_checksum_tcp"] == 0
    else:
        assert seen.server == RETRANSMISSION
        assert st["bad_checksum_tcp"] == 1


def test_anomaly_name() -> None:
    assert ErrorKind.DEFRAG_OVERLAP.event_name == "defrag.fragment_overlap"


def _ordered(parts: List[Tuple[int, bytes]], cport: int) -> Tuple[Built, bytes]:
    """A request sent as the header fragment then ``parts`` ((offset in blocks after the header, bytes),
    in the order sent; the one ending furthest is the last fragment). Returns the capture and the request
    the fragments make when each byte is sent once."""
    c = Conv(cport=cport)
    c.handshake()
    seq = c.nxt[True]
    hdr = bytes(TCP(sport=c.cport, dport=c.sport, flags="PA", seq=seq, ack=c.nxt[False], window=65535,
                    options=[("NOP", None)] * 4))
    end = max(off * BLOCK + len(data) for off, data in parts)
    c.emit(bytes(c.l2(True) / _frag(c, 0x77, 0, hdr, True)))
    body = bytearray(end)
    for off, data in parts:
        c.emit(bytes(c.l2(True) / _frag(c, 0x77, HDR_BLOCKS + off, data, off * BLOCK + len(data) < end)))
        body[off * BLOCK:off * BLOCK + len(data)] = data
    c.nxt[True] = (seq + end) % M32
    c.tcp(False, "A")
    c.close()
    return c.built(end="FIN"), bytes(body)


S, T, U, V = (_fill(ch, 2) for ch in "STUV")


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_identical_copies_change_nothing_and_raise_nothing(tmp_path: Path, policy: str) -> None:
    """Each fragment sent twice in a row (a duplicated capture): overlaps, none differing, no anomaly,
    the same bytes under every policy (linux: each copy lies inside the run held, a duplicate)."""
    built, body = _ordered([(0, S), (0, S), (2, T), (2, T), (4, U), (4, U), (6, V)], 40201)
    seen, st = _run(tmp_path, built, policy)
    assert seen.server == body == S + T + U + V
    assert st["frag_overlaps"] == 3 and st["frag_overlaps_differing"] == 0
    assert st["frag_policy_drops"] == 0 and st["frag_datagrams"] == 1
    assert seen.errors == []


def test_linux_ignores_a_differing_copy_inside_a_run(tmp_path: Path) -> None:
    """Linux (inet_frag_queue_insert): a fragment inside a run of held fragments is a duplicate, dropped
    unread, so the first copy stays even when the bytes differ; the anomaly still tells."""
    evil = _fill("Z", 4)
    built, _ = _ordered([(0, S), (2, T), (0, evil), (4, U), (6, V)], 40202)
    seen, st = _run(tmp_path, built, "linux")
    assert seen.server == S + T + U + V
    assert st["frag_policy_drops"] == 0 and st["frag_overlaps"] == st["frag_overlaps_differing"] == 1
    assert seen.errors == [(None, ErrorKind.DEFRAG_OVERLAP, HDR_BLOCKS * BLOCK, 4 * BLOCK)]
    # the other policies that let a new fragment win at the same offset take the new bytes
    seen, _ = _run(tmp_path, built, "last")
    assert seen.server == evil + U + V


def test_linux_drops_an_overlap_across_two_runs(tmp_path: Path) -> None:
    """T then S (S does not extend the run T ends, so it starts one of its own): a copy of both spans
    two runs, which Linux takes as an overlap (the datagram goes) even though its bytes are the same;
    first keeps the datagram. Then the host gets only the retransmission."""
    built, body = _ordered([(2, T), (0, S), (0, S + T), (4, U), (6, V)], 40203)
    seen, st = _run(tmp_path, built, "linux")
    assert seen.server == b""
    assert st["frag_policy_drops"] == 1 and st["frag_datagrams"] == 0
    assert st["frag_overlaps"] == 1 and st["frag_overlaps_differing"] == 0 and seen.errors == []
    seen, st = _run(tmp_path, built, "first")
    assert seen.server == body and st["frag_policy_drops"] == 0


def test_a_winning_first_fragment_brings_its_header(tmp_path: Path) -> None:
    """A second offset-0 fragment that wins (last) replaces the first one's header too: here the first
    one's TCP header names another port (another connection), and the segment goes where the winner says."""
    c = Conv(cport=40204)
    c.handshake()
    seq = c.nxt[True]

    def hdr(dport: int) -> bytes:
        return bytes(TCP(sport=c.cport, dport=dport, flags="PA", seq=seq, ack=c.nxt[False], window=65535,
                         options=[("NOP", None)] * 4))

    c.emit(bytes(c.l2(True) / _frag(c, 0x78, 0, hdr(c.sport + 1) + S, True)))
    c.emit(bytes(c.l2(True) / _frag(c, 0x78, 0, hdr(c.sport) + T, True)))
    c.emit(bytes(c.l2(True) / _frag(c, 0x78, HDR_BLOCKS + 2, U, False)))
    c.nxt[True] = (seq + 4 * BLOCK) % M32
    c.tcp(False, "A")
    c.close()
    built = c.built(end="FIN")
    seen, st = _run(tmp_path, built, "last")
    assert seen.server == T + U and st["conns_created"] == 1
    seen, st = _run(tmp_path, built, "first")  # the first header: a connection of its own (picked up)
    assert seen.server == S + U and st["conns_created"] == 2


def test_ipv6_options_after_the_fragment_header(tmp_path: Path) -> None:
    """Destination options after the fragment header (part of the fragmentable part, so in the first
    fragment; the later ones' fragment headers name them, next header 60): the datagram is walked past them
    to TCP, whatever order the fragments come in. (The XDP side of this: tests/test_xdp.py.)"""
    c = Conv(cip="2001:db8::1", sip="2001:db8::2", cport=40300)
    c.handshake()
    seq = c.nxt[True]
    body = bytes(IPv6ExtHdrDestOpt(nh=6)) + bytes(TCP(sport=c.cport, dport=c.sport, flags="PA", seq=seq,
                                                      ack=c.nxt[False], window=65535, options=[("NOP", None)] * 4))
    body += S + T + U
    cuts = [(0, 32), (32, 56), (56, len(body))]
    for a, b in reversed(cuts):
        f = IPv6(src=c.cip, dst=c.sip) / IPv6ExtHdrFragment(nh=60, offset=a // BLOCK, m=int(b < len(body)), id=9) \
            / Raw(body[a:b])
        c.emit(bytes(c.l2(True) / f))
    c.nxt[True] = (seq + 3 * 2 * BLOCK) % M32
    c.tcp(False, "A")
    c.close()
    seen, st = _run(tmp_path, c.built(end="FIN"), "first")
    assert seen.server == S + T + U
    assert st["frag_datagrams"] == 1 and st["frag_held"] == 3 and st["conn_packets"] == len(c.records) - 3


def test_streams_cli_frag_policy(tmp_path: Path) -> None:
    exe = shutil.which("mos-xdp", path=str(Path(sys.executable).parent))
    assert exe
    pcap = _capture(False)[0].write(tmp_path / "novak.pcap")
    for policy in ("bsd", "linux"):
        out = tmp_path / policy
        subprocess.run([exe, "streams", str(pcap), "-o", str(out), "--frag-policy", policy, "--checksum", "off"],
                       check=True, timeout=120, capture_output=True)
        want = RETRANSMISSION if EXPECTED[policy] is None else _expected_payload(policy)
        assert (out / "1.c2s").read_bytes() == want
    r = subprocess.run([exe, "streams", str(pcap), "--frag-policy", "nope"], timeout=120, capture_output=True,
                       text=True)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([exe, "run", "apps/midstat.py", "--pcap", str(pcap), "--frag-policy", "nope"], timeout=120,
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_monitor_rejects_an_unknown_policy() -> None:
    with pytest.raises(MosError, match="unknown fragment overlap policy 'vista'.*old-linux"):
        Monitor(frag_policy="vista")


def test_incomplete_datagram_is_not_held_past_the_end(tmp_path: Path) -> None:
    """A datagram whose last fragment never comes: at the end of input its fragments are discarded
    (counted), and nothing stays held."""
    built, _ = _capture(v6=False, sets=(ORIGINALS,), retransmit=False)
    seen, st = _run(tmp_path, built, "first")
    assert st["memory_held"] == 0
    assert st["frag_discarded"] == 1 + len(ORIGINALS)  # the header fragment and the originals
    assert st["frag_datagrams"] == 0
