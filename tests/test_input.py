"""Capture input: classic pcap in both byte orders and timestamp precisions (read from the mapped file),
pcapng and other link types (read through libpcap), truncated and corrupt files."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.utils import PcapNgWriter

from mos import Event, Monitor, Side
from mos.stats import BATCH_DEPENDENT
from tests import pcaps

ROOT = Path(__file__).resolve().parents[1]


def _streams(path: Path):
    got = {}
    mon = Monitor()

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):
        got.setdefault(int(ev.side), bytearray()).extend(ev.data)

    @mon.on(Event.PKT_IN)
    def ts(conn, ev):
        got.setdefault("ts", []).append(ev.packet.ts)

    mon.run_pcap(str(path))
    return got, mon


def _write_classic(path: Path, records, *, big_endian: bool, nano: bool) -> None:
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as fh:
        fh.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1))
        for ts, frame, orig in records:
            sec = int(ts)
            frac = round((ts - sec) * (1e9 if nano else 1e6))
            fh.write(struct.pack(e + "IIII", sec, frac, len(frame), orig))
            fh.write(frame)


def test_classic_pcap_all_variants_and_pcapng_agree(tmp_path):
    b = pcaps.out_of_order_fill()
    results = []
    for big in (False, True):
        for nano in (False, True):
            p = tmp_path / f"v-{big}-{nano}.pcap"
            _write_classic(p, b.records, big_endian=big, nano=nano)
            got, _ = _streams(p)
            results.append(got)
    ng = tmp_path / "v.pcapng"
    w = PcapNgWriter(str(ng))
    from scapy.layers.l2 import Ether

    for ts, frame, _ in b.records:
        pkt = Ether(frame)
        pkt.time = ts
        w.write(pkt)
    w.close()
    got, _ = _streams(ng)
    results.append(got)
    assert b.c2s and bytes(results[0][1]) == b.c2s and bytes(results[0].get(0, b"")) == b.s2c
    for r in results[1:]:
        assert r.get(0) == results[0].get(0) and r[1] == results[0][1]
        assert len(r["ts"]) == len(results[0]["ts"])
        assert all(abs(a - b) < 2e-6 for a, b in zip(r["ts"], results[0]["ts"]))  # scapy's pcapng rounds
    assert abs(results[0]["ts"][0] - b.records[0][0]) < 1e-6


def test_truncated_capture_warns_and_keeps_what_came_before(tmp_path):
    b = pcaps.basic_close()
    p = b.write(tmp_path / "t.pcap")
    data = p.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:-7])  # the last record loses its tail
    out = subprocess.run([sys.executable, "-m", "mos.cli", "streams", str(cut), "--no-progress"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr and "truncated" in out.stderr
    assert "1 connections" in out.stdout
    mon = Monitor()
    mon.run_pcap(str(cut))
    assert mon.read_error and mon.stats()["packets"] == len(b.records) - 1


def test_corrupt_capture_is_one_line(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture at all" * 10)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    for f in (bad, empty, tmp_path):
        out = subprocess.run([sys.executable, "-m", "mos.cli", "streams", str(f)], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert out.returncode != 0
        assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr


def _event_log(path: Path, **cfg) -> list:
    """Every stream event of a run, with its bytes: what reassembly decided, in order."""
    log: list = []
    mon = Monitor(**cfg)
    kinds = (Event.CONN_NEW_DATA, Event.REXMIT, Event.DATA_GAP, Event.ERROR, Event.CONN_END)

    def rec(conn, ev):
        log.append((conn.id, int(ev.event), int(ev.side), ev.offset, ev.length, ev.data, ev.old_data,
                    ev.new_data, ev.inconsistent, int(ev.reason)))

    for k in kinds:
        mon.on(k, rec)
    mon.run_pcap(str(path))
    # The peek window's bytes stay whatever the limits; delivered bytes behind it are evicted a whole chunk
    # at a time when a limit needs room, and a mapped capture's chunks (one per segment) are smaller than
    # copies (segments appended into one allocation): how many are evicted may differ, never what is
    # delivered (the events above).
    evictions = ("reasm_limit_dir_buf", "reasm_bytes_dropped_limit") if cfg.get("dir_buffer_limit") else ()
    log.append(tuple(sorted((k, v) for k, v in mon.stats().items() if k not in BATCH_DEPENDENT + evictions)))
    return log


def _write_pcapng(path: Path, records) -> None:
    from scapy.layers.l2 import Ether

    w = PcapNgWriter(str(path))
    for ts, frame, _ in records:
        pkt = Ether(frame)
        pkt.time = ts
        w.write(pkt)
    w.close()


BUILDERS = ["out_of_order_fill", "reversed_segments", "retransmissions", "overlap_new_starts_before",
            "acked_hole", "seq_wrap", "half_close", "midstream_pickup", "syn_with_data", "basic_close"]


@pytest.mark.parametrize("policy", ["first", "last", "linux"])
def test_mapped_capture_held_by_reference_same_as_copied(tmp_path, policy):
    """A classic pcap is mapped and reassembly holds its bytes by reference (no copy); a pcapng file
    goes through libpcap, whose packets are copies valid for one batch, so every byte is copied. Both
    must decide exactly the same: same events, same bytes, same counters, with the limits on bytes and
    segments held too. (Not memcap: a copy in order is allocated with room to grow, which memcap counts;
    bytes held by reference cost no such room.)"""
    for cfg in ({"policy": policy}, {"policy": policy, "dir_buffer_limit": 1500},
                {"policy": policy, "max_segments": 1}):
        for name in BUILDERS:
            b = getattr(pcaps, name)()
            classic = b.write(tmp_path / f"{name}.pcap")
            ng = tmp_path / f"{name}.pcapng"
            _write_pcapng(ng, b.records)
            assert _event_log(classic, **cfg) == _event_log(ng, **cfg), (name, cfg)


def test_bytes_held_by_reference_are_copied_before_the_file_is_closed(tmp_path):
    """A run that stops early (a strict handler raising) closes and unmaps the capture while its
    connections still hold bytes: delivered ones kept until acknowledged, and out-of-order ones behind
    a hole. They must have been copied first (reading them would fault otherwise)."""
    c = pcaps.Conv()
    c.handshake()
    resp = pcaps.payload("H", 3000)
    c.tcp(False, "PA", payload=resp[:1000])                                  # delivered, not acked
    c.tcp(False, "PA", seq=c.off_seq(False, 2000), payload=resp[2000:])      # behind a hole
    c.tcp(True, "PA", payload=pcaps.REQ, ack=c.off_seq(False, 0))            # acks nothing
    c.tcp(True, "PA", payload=b"x" * 10, ack=c.off_seq(False, 0))
    path = c.built().write(tmp_path / "held.pcap")
    mon = Monitor(strict=True)
    seen = []

    @mon.on(Event.CONN_NEW_DATA, side=Side.SERVER)
    def stop(conn, ev):
        seen.append(conn)
        raise KeyError("stop here")

    with pytest.raises(KeyError):
        mon.run_pcap(str(path))
    conn = seen[0]
    assert conn.held_segments(Side.CLIENT) == [(2000, 1000)]
    assert conn.held_bytes(Side.CLIENT, 2000, 1000) == resp[2000:]
    assert conn.ppeek(Side.CLIENT, 0, 1000) == resp[:1000]


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def test_pcapng_whose_first_record_is_empty(tmp_path):
    """A pcapng whose first packet record has length 0 (seen while fuzzing: the copy arena was still NULL,
    so the reader did pointer arithmetic on NULL, which UBSan reports): the empty record is counted as a
    truncated frame, the connection after it is reassembled as usual."""
    built = pcaps.basic_close()
    shb = _pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _pcapng_block(1, struct.pack("<HHI", 1, 0, 65535))  # Ethernet

    def epb(ts: float, frame: bytes, orig: int) -> bytes:
        us = int(round(ts * 1e6))
        return _pcapng_block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(frame), orig) + frame)

    path = tmp_path / "empty-first.pcapng"
    path.write_bytes(shb + idb + epb(999.0, b"", 0) + b"".join(epb(*r) for r in built.records))
    got = {0: bytearray(), 1: bytearray()}
    mon = Monitor()
    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: got[int(ev.side)].extend(ev.data))
    st = mon.run_pcap(str(path))
    assert bytes(got[int(Side.SERVER)]) == built.c2s and bytes(got[int(Side.CLIENT)]) == built.s2c
    assert st["packets"] == len(built.records) + 1 and st["malformed_truncated_l2"] == 1
