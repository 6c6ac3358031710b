"""Capture input: classic pcap in both byte orders and timestamp precisions (read from the mapped file),
pcapng and other link types (read through libpcap), truncated and corrupt files."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from scapy.utils import PcapNgWriter

from mos import Event, Monitor
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
