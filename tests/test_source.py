"""The packet-source interface (mos.source) and the ABI read from cffi (mos.abi).

A source written here in Python (frames from memory, no file) must drive Monitor.run exactly as the pcap
source does: the same events in the same order, the same counters; a source's session is the monitor's
live session for the run only; the event record's format is the C struct's layout.
"""

from __future__ import annotations

import struct
from typing import Any, List, Optional, Tuple

import pytest

from mos import Event, Monitor, MosError, PcapSource, Side
from mos.abi import EVENT_FIELDS, EVENT_FORMAT, EVENT_SIZE, counter_names, ffi, lib, struct_format
from mos.events import BUILTIN_EVENTS, EndReason, OrphanKind
from mos.source import BatchSource
from mos.stats import BATCH_DEPENDENT, ENGINE_COUNTERS, accounted
from tests import pcaps


class MemorySource(BatchSource):
    """Ethernet frames from a list, ``per_batch`` at a time (copied: valid for one batch only)."""

    def __init__(self, records: List[Tuple[float, bytes, int]], per_batch: int = 3) -> None:
        super().__init__(batch=per_batch)
        self.records = records
        self.pos = 0
        self.opened = self.closed = 0
        self._keep: List[Any] = []

    @property
    def linktype(self) -> int:
        return int(lib.MOS_DLT_EN10MB)

    def open(self) -> None:
        self.opened += 1

    def next_batch(self, pkts: Any, n: int) -> int:
        self._keep.clear()
        k = 0
        while k < n and self.pos < len(self.records):
            ts, frame, wirelen = self.records[self.pos]
            buf = ffi.new("uint8_t[]", frame)
            self._keep.append(buf)
            pkts[k].data = buf
            pkts[k].caplen = len(frame)
            pkts[k].wirelen = wirelen
            pkts[k].ts_ns = int(round(ts * 1e9))
            k += 1
            self.pos += 1
        return k

    def progress(self) -> Optional[Tuple[int, int]]:
        return self.pos, len(self.records)

    def close(self) -> None:
        self.closed += 1


def _trace(mon: Monitor) -> List[tuple]:
    seen: List[tuple] = []
    for ev in (Event.CONN_START, Event.CONN_NEW_DATA, Event.TCP_STATE_CHANGE, Event.CONN_END, Event.ORPHAN):
        mon.on(ev, lambda c, e: seen.append((int(e.type), int(e.side), c.id if c else None, e.offset, e.length,
                                              e.data, e.reason if e.type in (Event.CONN_END, Event.ORPHAN) else 0)))
    return seen


def test_a_python_source_drives_monitor_run_as_pcap_does(tmp_path):
    recs = sorted(pcaps.basic_close().records + pcaps.udp_only().records, key=lambda r: r[0])
    built = pcaps.Built(recs)
    # order "packet": the events of different connections (a UDP orphan between TCP events) come in packet
    # order whatever the sources' batches
    ref_mon = Monitor(order="packet", protocols=("tcp",))  # its UDP packets as orphans
    ref = _trace(ref_mon)
    ref_stats = ref_mon.run(PcapSource(str(built.write(tmp_path / "t.pcap"))))
    assert ref and ref_stats["packets"] == len(built.records)

    mon = Monitor(order="packet", protocols=("tcp",))
    got = _trace(mon)
    src = MemorySource(built.records)
    where: List[Tuple[int, int]] = []
    stats = mon.run(src, progress=lambda pos, size: where.append((pos, size)))
    assert got == ref
    strip = BATCH_DEPENDENT
    assert {k: v for k, v in stats.items() if k not in strip} == {k: v for k, v in ref_stats.items() if k not in strip}
    assert accounted(stats) == stats["packets"] == len(built.records)
    assert src.opened == src.closed == 1
    n = len(built.records)
    assert where == [(min(k, n), n) for k in range(3, n + 3, 3)]
    # the orphans' reasons are named kinds, the ends' reasons end reasons
    assert {r[6] for r in got if r[0] == Event.ORPHAN} == {OrphanKind.UNTRACKED_PROTO}
    assert all(isinstance(r[6], EndReason) for r in got if r[0] == Event.CONN_END)


def test_stop_ends_the_run_and_closes_the_source():
    built = pcaps.basic_close()
    mon = Monitor()
    ends: List[int] = []
    mon.on(Event.CONN_START, lambda c, e: mon.stop())
    mon.on(Event.CONN_END, lambda c, e: ends.append(int(e.reason)))
    src = MemorySource(built.records, per_batch=1)
    st = mon.run(src)
    assert src.closed == 1
    assert st["packets"] < len(built.records)  # stopped after the first batch's handlers
    assert ends == [EndReason.EOF]  # and what was open ended at the end of input


class _Control:
    """A stand-in live control: records what handlers asked for through the monitor."""

    def __init__(self) -> None:
        self.prog = self
        self.calls: List[tuple] = []

    def drop(self, port: Any, conn: Any) -> None:
        self.calls.append(("drop", conn.id, port.current_packet() is not None))

    def bypass(self, port: Any, conn: Any) -> None:
        self.calls.append(("bypass", conn.id))

    def drop_packet(self, port: Any) -> None:
        self.calls.append(("drop_packet", port.current_packet()))

    def rewrite(self, port: Any, data: bytes, offset: int, layer: str, resize: bool) -> int:
        self.calls.append(("rewrite", data, offset, layer, resize))
        return 60

    def block(self, prefix: str) -> str:
        self.calls.append(("block", prefix))
        return prefix


def test_a_source_session_is_the_live_session_for_the_run_only():
    built = pcaps.basic_close()
    mon = Monitor()
    with pytest.raises(MosError, match="live traffic only"):
        mon.block("10.0.0.0/8")
    control = _Control()
    src = MemorySource(built.records)
    src.session = control

    def on_start(c: Any, e: Any) -> None:
        c.drop()
        c.bypass()
        c.drop_last_packet()
        assert c.set_last_packet(b"x", 2, "payload") == 60
        assert mon.block("10.1.0.0/16") == "10.1.0.0/16"
        assert mon.bpf is control

    mon.on(Event.CONN_START, on_start)
    mon.run(src)
    assert [c[0] for c in control.calls] == ["drop", "bypass", "drop_packet", "rewrite", "block"]
    assert control.calls[0] == ("drop", 1, True)
    assert isinstance(control.calls[2][1], int)
    with pytest.raises(MosError, match="live traffic only"):
        mon.bpf  # noqa: B018 - the property raises outside the run


def test_the_event_format_is_the_c_layout():
    assert EVENT_SIZE == ffi.sizeof("struct mos_event") == struct.calcsize(EVENT_FORMAT)
    fields = dict(ffi.typeof("struct mos_event").fields)
    names = list(EVENT_FIELDS)
    for name, f in fields.items():
        if f.type.kind == "array":
            assert [f"{name}{k}" for k in range(f.type.length)] == [n for n in names if n.startswith(name)
                                                                    and n[len(name):].isdigit()]
        else:
            assert name in names
    # a record written through cffi reads back field by field through the format
    ev = ffi.new("struct mos_event *")
    values = {}
    for i, (name, f) in enumerate(sorted(fields.items(), key=lambda nf: nf[1].offset)):
        if f.type.kind == "primitive":
            v = (i * 37 + 1) % (1 << (8 * ffi.sizeof(f.type)))
            setattr(ev, name, v)
            values[name] = v
    ev.rx_off[0], ev.rx_off[1] = 11, 1 << 40
    got = dict(zip(EVENT_FIELDS, struct.unpack(EVENT_FORMAT, ffi.buffer(ev))))
    for name, v in values.items():
        assert got[name] == v, name
    assert (got["rx_off0"], got["rx_off1"]) == (11, 1 << 40)


def test_struct_format_pads_and_rejects_what_it_cannot_express():
    fmt, names = struct_format("struct mos_pkt")
    assert struct.calcsize(fmt) == ffi.sizeof("struct mos_pkt")
    assert names == ("data", "caplen", "wirelen", "ts_ns")
    fmt, names = struct_format("struct mos_xsk_info")
    assert struct.calcsize(fmt) == ffi.sizeof("struct mos_xsk_info")


def test_names_and_numbers_come_from_the_engine():
    assert ENGINE_COUNTERS == counter_names()
    assert len(ENGINE_COUNTERS) == lib.MOS_C_COUNT and ENGINE_COUNTERS[lib.MOS_C_PACKETS] == "packets"
    assert BUILTIN_EVENTS == len(Event) == lib.MOS_EV_BUILTIN_COUNT
    assert int(Event.CONN_END) == lib.MOS_EV_CONN_END and int(Side.SERVER) == lib.MOS_SIDE_SVR
    assert int(OrphanKind.TABLE_FULL) == lib.MOS_ORPHAN_TABLE_FULL
