"""`mos-xdp streams` on small synthetic captures (tests/pcaps.py): each behaviour is one capture whose
expected streams/index fields are computed by the builder from the packets it wrote."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import shutil
import socket
import struct
import subprocess
import sys

import pytest

from tests import pcaps
from tests.conftest import read_index, run_cli

SIMPLE = [
    "basic_close",
    "handshake_retransmissions",
    "simultaneous_open",
    "split_handshake",
    "half_close",
    "rst_in_window",
    "rst_out_of_window",
    "window_scaling",
    "seq_wrap",
    "syn_with_data",
    "midstream_pickup",
    "out_of_order_fill",
    "reversed_segments",
    "retransmissions",
    "acked_hole",
    "ipv6_ext_header",
    "vlan_tagged",
    "qinq_tagged",
    "ipv4_options",
    "ipv4_fragments",
    "damaged_packets",
]


def community_id_v1(row: dict) -> str:
    """Community ID v1 (seed 0) of a TCP row, computed independently from its client/server fields."""

    def split(ep):
        host, _, port = ep.rpartition(":")
        return ipaddress.ip_address(host.strip("[]")), int(port)

    (a, ap), (b, bp) = split(row["client"]), split(row["server"])
    if (a.packed, ap) > (b.packed, bp):
        (a, ap), (b, bp) = (b, bp), (a, ap)
    data = struct.pack("!H", 0) + a.packed + b.packed + struct.pack("!BBHH", 6, 0, ap, bp)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


@pytest.mark.parametrize("name", SIMPLE)
def test_streams_builder(tmp_path, run_streams, name):
    built = pcaps.BUILDERS[name]()
    pcap = built.write(tmp_path / f"{name}.pcap")
    rows, out = run_streams(pcap, "--protocols", "tcp")  # the TCP connection alone (UDP: tests/test_udp.py)
    assert len(rows) == 1, rows
    r = rows[0]
    assert r["id"] == 1
    assert (r["client"], r["server"]) == (built.client, built.server)
    assert (out / "1.c2s").read_bytes() == built.c2s
    assert (out / "1.s2c").read_bytes() == built.s2c
    assert r["c2s_bytes"] == len(built.c2s) and r["s2c_bytes"] == len(built.s2c)
    assert [list(g) for g in r["c2s_gaps"]] == built.c2s_gaps
    assert [list(g) for g in r["s2c_gaps"]] == built.s2c_gaps
    assert r["vlan"] == built.vlan
    if built.end:
        assert r["end"] == built.end
    for k in ("client_state", "server_state"):
        if k in built.extra:
            assert r[k] == built.extra[k]
    assert r["community_id"] == community_id_v1(r)


def test_vlan_ids_not_in_key(tmp_path, run_streams):
    """--no-vlan: the VLAN-tagged copy and an untagged copy of one connection are the same flow."""
    tagged = pcaps.vlan_tagged((100,))
    plain = pcaps.Conv(cport=40016)
    plain.handshake()
    plain.send(True, pcaps.REQ)
    both = pcaps.Built(tagged.records + plain.records)
    both.records.sort(key=lambda r: r[0])
    pcap = both.write(tmp_path / "mixed.pcap")
    rows, _ = run_streams(pcap)
    assert sorted(tuple(r["vlan"]) for r in rows) == [(), (100,)]
    rows, _ = run_streams(pcap, "--no-vlan")
    assert len(rows) == 1


def test_midstream_no_pickup(tmp_path, run_streams):
    pcap = pcaps.midstream_pickup().write(tmp_path / "pickup.pcap")
    rows, _ = run_streams(pcap, "--no-pickup")
    assert rows == []


@pytest.mark.parametrize("builder", ["overlap_exact", "overlap_new_starts_before"])
def test_overlap_policies(tmp_path, run_streams, builder):
    built = pcaps.BUILDERS[builder]()
    pcap = built.write(tmp_path / f"{builder}.pcap")
    by_policy = built.extra["by_policy"]
    results = {}
    for policy, expected in by_policy.items():
        rows, out = run_streams(pcap, "--policy", policy)
        (r,) = rows
        results[policy] = (out / "1.c2s").read_bytes()
        assert results[policy] == expected, (policy, results[policy])
        assert r["c2s_gaps"] == []
    assert len(set(by_policy.values())) == 2  # the case really distinguishes the policies


def test_retransmission_flags(tmp_path):
    """Python API: one exact and one inconsistent retransmission of delivered client bytes."""
    from mos import Event, Monitor

    built = pcaps.retransmissions()
    pcap = built.write(tmp_path / "rexmit.pcap")
    seen = []
    mon = Monitor(policy="first")
    mon.on(Event.REXMIT, lambda conn, ev: seen.append((bool(ev.inconsistent), bytes(ev.old_data or b""),
                                                       bytes(ev.new_data or b""))))
    mon.run_pcap(str(pcap))
    flags = [s[0] for s in seen]
    assert flags.count(True) == 1 and False in flags
    inc = [s for s in seen if s[0]][0]
    assert inc[1] == built.c2s[1000:2000] and inc[2] == b"Z" * 1000


def test_rst_out_of_window_raises_error(tmp_path):
    from mos import Event, Monitor
    from mos.events import ErrorKind as EK

    pcap = pcaps.rst_out_of_window().write(tmp_path / "rst_oow.pcap")
    errors, ends = [], []
    mon = Monitor()
    mon.on(Event.ERROR, lambda conn, ev: errors.append(ev.reason))
    mon.on(Event.CONN_END, lambda conn, ev: ends.append(ev.reason))
    mon.run_pcap(str(pcap))
    assert int(EK.RST_OUT_OF_WINDOW) in [int(e) for e in errors]
    assert [e.name for e in ends] == ["FIN"]


def test_acked_hole_gap_event(tmp_path):
    from mos import Event, Monitor, Side

    built = pcaps.acked_hole()
    pcap = built.write(tmp_path / "hole.pcap")
    gaps, data = [], []
    mon = Monitor()
    mon.on(Event.DATA_GAP, lambda conn, ev: gaps.append((ev.side, ev.offset, ev.length)))
    mon.on(Event.CONN_NEW_DATA, lambda conn, ev: data.append((ev.side, ev.offset, bytes(ev.data))))
    mon.run_pcap(str(pcap))
    assert gaps == [(Side.CLIENT, 1000, 1000)]  # the client receives the server's stream
    s2c = b"".join(d for side, _o, d in data if side == Side.CLIENT)
    assert s2c == built.s2c


def test_damaged_packets_counted(tmp_path):
    from mos import Monitor

    built = pcaps.damaged_packets()
    pcap = built.write(tmp_path / "damaged.pcap")
    mon = Monitor()
    mon.run_pcap(str(pcap))
    stats = mon.stats()
    assert isinstance(stats, dict)
    words = ("malform", "trunc", "invalid", "bad", "short", "skip", "drop", "error")
    bad_keys = [k for k in stats if any(w in k.lower() for w in words)]
    assert bad_keys, f"no counter for damaged packets in {sorted(stats)}"
    assert sum(int(stats[k]) for k in bad_keys) >= built.extra["damaged"]


def test_udp_only_no_connections(tmp_path, run_streams):
    pcap = pcaps.udp_only().write(tmp_path / "udp.pcap")
    rows, out = run_streams(pcap, "--protocols", "tcp")
    assert rows == []
    assert sorted(p.name for p in out.iterdir()) == ["index.jsonl"]


def test_several_connections_in_order(tmp_path, run_streams):
    """Connections are numbered by their first packet; interleaving must not mix their bytes."""
    parts = [pcaps.basic_close(), pcaps.seq_wrap(), pcaps.ipv6_ext_header()]
    recs = []
    for i, b in enumerate(parts):
        # shift each capture by i * 0.0005 s so packets interleave but first packets keep this order
        recs += [(t + i * 0.0005, f, n) for t, f, n in b.records]
    recs.sort(key=lambda r: r[0])
    pcap = pcaps.Built(recs).write(tmp_path / "three.pcap")
    rows, out = run_streams(pcap)
    assert [(r["client"], r["server"]) for r in rows] == [(b.client, b.server) for b in parts]
    for r, b in zip(rows, parts):
        assert (out / f"{r['id']}.c2s").read_bytes() == b.c2s
        assert (out / f"{r['id']}.s2c").read_bytes() == b.s2c


def test_summary_without_output_dir(tmp_path):
    built = pcaps.basic_close()
    pcap = built.write(tmp_path / "basic.pcap")
    proc = run_cli(pcap)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert built.client.split(":")[0] in text and built.server.split(":")[0] in text


def test_table_agrees_with_the_index(tmp_path, run_streams):
    """Without -o the engine keeps the first connections' final info in C and the totals are its counters
    (no Python per event); rows and totals must be those of the index, past the rows shown too."""
    from mos.streams import stream_table

    recs = []
    for k in range(60):  # 60 conversations of three kinds (holes too), each on its own client port
        b = [pcaps.basic_close, pcaps.acked_hole, pcaps.out_of_order_fill][k % 3]()
        cport = int(b.client.rpartition(":")[2])
        recs += [(t + k * 0.01, _with_client_port(f, cport, 20000 + k), n) for t, f, n in b.records]
    recs.sort(key=lambda r: r[0])
    pcap = pcaps.Built(recs).write(tmp_path / "many.pcap")
    index, _ = run_streams(pcap)
    assert len(index) == 60
    rows, totals, st = stream_table(str(pcap), limit=50)
    assert len(rows) == 50
    assert totals["connections"] == 60
    assert totals["stream_bytes"] == sum(r["c2s_bytes"] + r["s2c_bytes"] for r in index)
    assert totals["gap_bytes"] == sum(g[1] for r in index for g in r["c2s_gaps"] + r["s2c_gaps"]) > 0
    for row, full in zip(rows, index):
        for key, v in row.items():
            if key.endswith("_gap_bytes"):
                assert v == sum(g[1] for g in full[key.replace("_bytes", "s")])
            else:
                assert v == full[key], key
    proc = run_cli(pcap)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert "... 10 more connections" in text
    assert f"60 connections, {totals['stream_bytes']} stream bytes ({totals['gap_bytes']} lost in holes)" in text


def _with_client_port(frame: bytes, old: int, port: int) -> bytes:
    """The frame with the client's port replaced, checksums recomputed by scapy."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    p = Ether(frame)
    t = p[TCP]
    if t.sport == old:
        t.sport = port
    if t.dport == old:
        t.dport = port
    del p[IP].chksum, t.chksum
    return bytes(p)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty", "bad_policy", "bad_option", "unwritable"])
def test_errors_are_one_line(tmp_path, kind):
    pcap = tmp_path / "x.pcap"
    args = [pcap]
    if kind == "missing":
        pass
    elif kind == "corrupt":
        pcap.write_bytes(b"this is not a capture file at all" * 10)
    elif kind == "empty":
        pcap.write_bytes(b"")
    else:
        pcaps.basic_close().write(pcap)
        args += {"bad_policy": ["--policy", "no-such-policy"], "bad_option": ["--no-such-option"],
                 "unwritable": []}[kind]
    out = "/proc/no-such-dir/out" if kind == "unwritable" else tmp_path / "out"
    proc = run_cli(*args, "-o", out)
    assert proc.returncode != 0
    err = proc.stderr.decode().strip()
    assert err and "Traceback" not in err
    if kind in ("missing", "corrupt", "empty", "unwritable"):
        assert len(err.splitlines()) == 1, err


def test_console_script(tmp_path):
    exe = shutil.which("mos-xdp", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe is None:
        pytest.skip("mos-xdp console script not installed in this environment")
    pcap = pcaps.basic_close().write(tmp_path / "b.pcap")
    out = tmp_path / "o"
    out.mkdir()
    subprocess.run([exe, "streams", str(pcap), "-o", str(out)], check=True, timeout=120, capture_output=True)
    rows = read_index(out)
    assert len(rows) == 1 and json.dumps(rows[0])


def test_index_is_plain_jsonl(tmp_path, run_streams):
    pcap = pcaps.basic_close().write(tmp_path / "b.pcap")
    _rows, out = run_streams(pcap)
    lines = (out / "index.jsonl").read_text().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    for key in ("id", "client", "server", "vlan", "c2s_bytes", "s2c_bytes", "c2s_gaps", "s2c_gaps",
                "client_state", "server_state", "end", "community_id"):
        assert key in row, key
    socket.inet_aton(row["client"].split(":")[0])
