"""Mutated and random packets through the whole engine (run under ASan/UBSan by scripts/sanitize.sh):
nothing crashes, nothing reads out of bounds, and every packet is accounted for."""

from __future__ import annotations

import random
import struct

import pytest

from mos import Event, Monitor
from mos.stats import accounted
from tests import pcaps

LINKTYPES = {1: 0, 12: 14, 113: None, 0: None, 9: None}  # linktype -> bytes of the Ethernet header to cut


def _reframe(frame: bytes, linktype: int) -> bytes:
    """Re-wrap an Ethernet frame's payload for another link type."""
    if linktype == 1:
        return frame
    et = frame[12:14]
    ip = frame[14:]
    if linktype == 12:
        return ip
    if linktype == 113:
        return struct.pack("!HHH8s", 0, 1, 6, b"\0" * 8) + et + ip
    if linktype == 0:
        return struct.pack("<I", 2 if et == b"\x08\x00" else 10) + ip
    if linktype == 9:
        return b"\xff\x03" + (b"\x00\x21" if et == b"\x08\x00" else b"\x00\x57") + ip
    raise ValueError(linktype)


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    op = rng.randrange(5)
    if op == 0 and b:  # flip bits
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif op == 2 and len(b) > 20:  # overwrite a header byte with an extreme value
        b[rng.randrange(min(len(b), 80))] = rng.choice([0, 0xFF, 0x0F, 0xF0, 0x45, 0x60])
    elif op == 3:  # random junk
        b = bytearray(rng.randbytes(rng.randrange(0, 120)))
    # op 4: unchanged (keeps the connections alive so deeper states are reached)
    return bytes(b)


def _write(path, linktype: int, frames) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, f in enumerate(frames):
            fh.write(struct.pack("<IIII", 1000 + i // 1000, (i % 1000) * 1000, len(f), len(f) + 4))
            fh.write(f)


@pytest.mark.parametrize("linktype", sorted(LINKTYPES))
def test_mutated_packets_are_counted_never_crash(tmp_path, linktype):
    rng = random.Random(linktype * 7919 + 1)
    seeds = []
    for build in (pcaps.basic_close, pcaps.out_of_order_fill, pcaps.retransmissions, pcaps.ipv6_ext_header,
                  pcaps.ipv4_options, pcaps.ipv4_fragments, pcaps.window_scaling, pcaps.rst_in_window):
        seeds += [f for _, f, _ in build().records]
    if linktype == 1:
        seeds += [f for _, f, _ in pcaps.vlan_tagged((100, 200), qinq_ad=True).records]
    frames = []
    for _ in range(4000):
        f = _reframe(rng.choice(seeds), linktype)
        frames.append(_mutate(rng, f))
    path = tmp_path / "fuzz.pcap"
    _write(path, linktype, frames)
    mon = Monitor(max_conns=64, dir_buffer_limit=4096, max_segments=16)
    seen = {"n": 0}

    def touch(conn, ev):  # read everything a handler can, so the Python side is exercised too
        seen["n"] += 1
        _ = (ev.side, ev.offset, ev.length, ev.data, ev.new_data, ev.reason, ev.states, ev.packet)
        if conn is not None:
            conn.info()
            conn.peek(ev.side)
            conn.held_segments(ev.side)

    for e in Event:
        mon.on(e, touch)
    st = mon.run_pcap(str(path))
    assert st["packets"] == len(frames)
    assert accounted(st) == st["packets"], st
    assert seen["n"] > 0
    assert sum(v for k, v in st.items() if k.startswith("malformed_")) > 0
