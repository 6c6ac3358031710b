"""The XDP side of the live path on veth pairs in private network namespaces.

Topology (module scope, one bcc compile for the whole module)::

    ns "a"  va  10.200.N.1/24  fd00:200:N::1/64   <-- veth -->   vb  10.200.N.2/24  fd00:200:N::2/64  ns "b"
                                                                  ^ xdp_mos attached here (native)

Every address is inside the test's namespaces; nothing leaves the machine. The CLI tests use a second
pair (vc/vd) so that they can attach and detach freely.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import mmap
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from mos._engine import ffi, lib

from mos import xdp
from mos.net import netlink
from mos.net.topology import XDP_END_HOST
from mos.xdp import state as xdp_state
from tests.netns import Netns, Topology, reap_stale, require_root

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
SUBNET = random.randint(1, 250)
A4, B4 = f"10.200.{SUBNET}.1", f"10.200.{SUBNET}.2"
A6, B6 = f"fd00:200:{SUBNET:x}::1", f"fd00:200:{SUBNET:x}::2"


class Live:
    """The module's topology and the program attached on vb."""

    def __init__(self, topo: Topology, a: Netns, b: Netns, va: str, vb: str, prog: xdp.XdpProgram) -> None:
        self.topo, self.a, self.b, self.va, self.vb, self.prog = topo, a, b, va, vb, prog

    def stats(self) -> Dict[str, int]:
        return self.prog.stats()

    def delta(self, before: Dict[str, int]) -> Dict[str, int]:
        after = self.stats()
        return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    require_root()
    reap_stale()
    with Topology() as topo:
        a, b = topo.netns("a"), topo.netns("b")
        va, vb = f"va{topo.tag[-6:]}", f"vb{topo.tag[-6:]}"
        topo.veth(a, va, b, vb, f"{A4}/24", f"{B4}/24", extra_a=[f"{A6}/64"], extra_b=[f"{B6}/64"])
        assert a.ping(B4) and a.ping(B6)  # the first neighbour discovery on a new link can take a second
        with b.entered():
            prog = xdp.XdpProgram.load(vb, debug=True)
        topo.on_close(prog.close)

        def _detach() -> None:
            with b.entered():
                xdp.detach(vb)

        topo.on_close(_detach)
        with b.entered():
            assert prog.attach("native") == "native"
        yield Live(topo, a, b, va, vb, prog)


# ---- frames for BPF_PROG_TEST_RUN ------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def frame(src: str, dst: str, sport: int, dport: int, proto: str = "tcp", vlans: Tuple[int, ...] = (),
          frag: bool = False, truncate: int = 0) -> bytes:
    """An Ethernet frame with optional VLAN tags, IPv4 or IPv6, TCP (SYN) or UDP."""
    v6 = ":" in src
    if proto == "tcp":
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
        pnum = 6
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"mosx"
        pnum = 17
    if v6:
        ext = b""
        nh = pnum
        if frag:
            ext = struct.pack("!BBHI", pnum, 0, 1, 0x1234)  # offset 0, M=1
            nh = 44
        l3 = struct.pack("!IHBB", 6 << 28, len(ext) + len(l4), nh, 64)
        l3 += socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + ext
        ethertype = 0x86DD
    else:
        flags = 0x2000 if frag else 0
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, flags, 64, pnum, 0,
                          socket.inet_aton(src), socket.inet_aton(dst))
        l3 = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        ethertype = 0x0800
    tags = b""
    outer = [0x88A8] + [0x8100] * 8 if len(vlans) > 1 else [0x8100]
    for i, vid in enumerate(vlans):
        tags += struct.pack("!H", outer[i]) + struct.pack("!H", vid)
    eth = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + tags + struct.pack("!H", ethertype)
    data = eth + l3 + l4
    return data[:len(data) - truncate] if truncate else data


# ---- the ABI: Python takes it from the C side --------------------------------------------------------------


def _map_layouts() -> Dict[int, Tuple[str, str, int]]:
    """Each map's key type, value type and entry count as bpf/xdp_mos.c declares it, by enum mos_xdp_map."""
    return {
        lib.MOS_XDP_MAP_CONFIG: ("uint32_t", "struct mos_xdp_config", 1),
        lib.MOS_XDP_MAP_COUNTERS: ("uint32_t", f"uint64_t[{lib.MOS_XDP_C_COUNT}]", 1),
        lib.MOS_XDP_MAP_XSKS: ("uint32_t", "uint32_t", lib.MOS_XSK_MAP_SIZE),
        lib.MOS_XDP_MAP_TX_PORTS: ("uint32_t", "uint32_t", lib.MOS_MAX_SLOTS),
        lib.MOS_XDP_MAP_BLOCK_V4: ("struct mos_xdp_lpm_v4", "uint64_t", lib.MOS_XDP_BLOCK_MAX),
        lib.MOS_XDP_MAP_BLOCK_V6: ("struct mos_xdp_lpm_v6", "uint64_t", lib.MOS_XDP_BLOCK_MAX),
        lib.MOS_XDP_MAP_PORTS: ("uint32_t", "uint8_t", lib.MOS_XDP_PORTS),
        lib.MOS_XDP_MAP_BYPASS: ("struct mos_flow_key", "struct mos_xdp_bypass_entry", lib.MOS_XDP_BYPASS_MAX),
        lib.MOS_XDP_MAP_DEBUG: ("uint32_t", "struct mos_xdp_debug", 1),
        lib.MOS_XDP_MAP_MON_V4: ("struct mos_xdp_lpm_v4", "uint8_t", lib.MOS_XDP_BLOCK_MAX),
        lib.MOS_XDP_MAP_MON_V6: ("struct mos_xdp_lpm_v6", "uint8_t", lib.MOS_XDP_BLOCK_MAX),
        lib.MOS_XDP_MAP_ARP: ("uint32_t", "struct mos_xdp_arp_entry", lib.MOS_XDP_ARP_MAX),
    }


def test_python_side_has_no_mirror() -> None:
    """mos.xdp restates no layout and no syscall: no ctypes, no struct formats, no bpf(2) numbers."""
    for path in sorted((ROOT / "mos" / "xdp").glob("*.py")):
        text = path.read_text()
        for banned in ("import ctypes", "import struct", "from struct", "from ctypes", "syscall", "_fields_"):
            assert banned not in text, (path.name, banned)
    # the names Python shows are the C side's name tables, whole
    maps = [ffi.string(lib.mos_xdp_map_name(i)).decode() for i in range(lib.MOS_XDP_MAP_COUNT)]
    counters = [ffi.string(lib.mos_xdp_counter_name(i)).decode() for i in range(lib.MOS_XDP_C_COUNT)]
    assert list(xdp.MAP_NAMES) == maps and len(set(maps)) == len(maps)
    assert list(xdp.COUNTERS) == counters and len(set(counters)) == len(counters)
    assert lib.mos_xdp_map_name(lib.MOS_XDP_MAP_COUNT) == ffi.NULL
    assert lib.mos_xdp_counter_name(lib.MOS_XDP_C_COUNT) == ffi.NULL
    assert xdp.MAP_CONFIG == maps[lib.MOS_XDP_MAP_CONFIG] and xdp.MAP_BYPASS == maps[lib.MOS_XDP_MAP_BYPASS]
    assert sorted(_map_layouts()) == list(range(lib.MOS_XDP_MAP_COUNT))  # every map is checked below
    # the key Python builds is the header's own struct, hashed by the header's own function
    key = xdp.flow_key(xdp.FlowTuple(A4, B4, 40000, 80, "tcp", vlan_key=5))
    assert ffi.typeof(key) is ffi.typeof("struct mos_flow_key *")
    assert len(xdp.raw(key)) == ffi.sizeof("struct mos_flow_key") == lib.MOS_FLOW_KEY_WORDS * 4
    assert xdp.hash_key(key) == lib.mos_flow_hash(key)
    assert xdp.xsk_index(1, 2, 3) == lib.mos_xsk_index(1, 2, 3) == (lib.MOS_MAX_QUEUES + 2) * lib.MOS_MAX_WORKERS + 3


def test_every_abi_map_is_a_map_of_the_program(live: Live) -> None:
    """Each map named by lib.mos_xdp_map_name is one of the loaded program's maps (bcc finds it by that name,
    the kernel calls it so, it is pinned so), with the key and value sizes of the header's types."""
    prog = live.prog
    assert list(prog.maps) == list(xdp.MAP_NAMES)
    with live.b.entered():  # pins are kept per namespace: vb's are b's
        pins = xdp.XdpProgram.pin_dir(live.vb)
    for i, (key_t, value_t, entries) in _map_layouts().items():
        name = ffi.string(lib.mos_xdp_map_name(i)).decode()
        table = prog._bpf.get_table(name.encode())
        pinned = xdp.BpfMap.open(pins / name)
        try:
            m = prog.maps[name]
            assert (pinned.id, pinned.name, m.name) == (m.id, name, name)
            assert (m.key_size, m.value_size) == (ffi.sizeof(key_t), ffi.sizeof(value_t)), name
            leaf = table.sLeaf if m.percpu else table.Leaf  # bcc's Leaf of a per-CPU map holds every CPU's
            assert (ctypes.sizeof(table.Key), ctypes.sizeof(leaf)) == (m.key_size, m.value_size), name
            assert m.max_entries == entries, name
        finally:
            pinned.close()


def test_counter_names_are_the_programs_counter_block(live: Live) -> None:
    """As many names as the per-CPU block has u64 slots, and each name reads the slot the program counts in."""
    m = live.prog.maps[xdp.MAP_COUNTERS]
    assert m.percpu and m.value_size == lib.MOS_XDP_C_COUNT * ffi.sizeof("uint64_t")
    assert len(xdp.COUNTERS) == lib.MOS_XDP_C_COUNT
    assert list(live.stats()) == list(xdp.COUNTERS)
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    before = live.stats()
    assert live.prog.test_run(arp) == xdp.XDP_PASS
    assert live.delta(before) == {"rx": 1, "pass": 1, "pass_not_ip": 1}
    before = live.stats()
    assert live.prog.test_run(frame(A4, B4, 1, 2)[:14] + b"\x45") == xdp.XDP_DROP
    assert live.delta(before) == {"rx": 1, "drop": 1, "drop_malformed": 1}


def _arp(op: int, sha: bytes, spa: str, tpa: str, tha: bytes = bytes(6), vlan: int = 0) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan else b""
    return (b"\xff" * 6 + sha + tag + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha
            + socket.inet_aton(spa) + tha + socket.inet_aton(tpa))


def test_arp_answered_in_xdp(live: Live) -> None:
    """An address given to answer_arp: its requests (VLAN-tagged too) are made into replies and sent back
    (a redirect to the interface asked on) with the interface's MAC; other requests, replies and unknown
    addresses are passed as before; a neighbour lookup from the other end learns the MAC; taken back, it is
    passed again."""
    nat = f"{B4.rsplit('.', 1)[0]}.77"
    with live.b.entered():
        mac = bytes.fromhex(xdp.link_xdp(live.vb).mac.replace(":", ""))
    asker = b"\x02\x11\x22\x33\x44\x55"
    with live.b.entered():
        assert live.prog.answer_arp(nat) == nat
        try:
            before = live.stats()
            act, out = xdp.prog_test_run(live.prog.prog_fd, _arp(1, asker, "10.9.9.9", nat))
            assert act == xdp.XDP_REDIRECT  # back out of the interface asked on, through the DEVMAP
            assert out == (asker + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac
                           + socket.inet_aton(nat) + asker + socket.inet_aton("10.9.9.9"))
            assert live.delta(before) == {"rx": 1, "redirect": 1, "arp_reply": 1}
            act, out = xdp.prog_test_run(live.prog.prog_fd, _arp(1, asker, "10.9.9.9", nat, vlan=7))
            assert act == xdp.XDP_REDIRECT and out[12:16] == b"\x81\x00\x00\x07" and out[6:12] == mac
            for other in (_arp(2, asker, "10.9.9.9", nat), _arp(1, asker, "10.9.9.9", "10.9.9.10"),
                          _arp(1, asker, "10.9.9.9", nat)[:-4]):
                assert live.prog.test_run(other) == xdp.XDP_PASS
            assert live.prog.arp_answers() == {nat: 2}
            # a real neighbour lookup: the reply reaches an end with GRO alone (no XDP program of its own) at once
            live.a.ethtool(live.va, {"gro": True})
            try:
                live.a.ping(nat, timeout=1.0)  # no host has the address: only its ARP is answered
                neigh = live.a.run("ip", "neigh", "show", nat).stdout
            finally:
                live.a.ethtool(live.va, {"gro": False})
            assert mac.hex(":") in neigh, neigh
            with pytest.raises(xdp.XdpError, match="not an IPv4 address"):
                live.prog.answer_arp("2001:db8::1")
        finally:
            assert live.prog.unanswer_arp(nat) is True
        assert live.prog.unanswer_arp(nat) is False
        assert live.prog.test_run(_arp(1, asker, "10.9.9.9", nat)) == xdp.XDP_PASS


def test_flow_hash_is_symmetric_and_spreads() -> None:
    rnd = random.Random(7)
    workers = 4
    seen = [0] * workers
    for _ in range(2000):
        if rnd.random() < 0.5:
            src, dst = (f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in "ab")
        else:
            src, dst = (f"fd00::{rnd.randrange(1, 65535):x}:{rnd.randrange(65535):x}" for _ in "ab")
        proto = rnd.choice(["tcp", "udp"])
        f = xdp.FlowTuple(src, dst, rnd.randrange(1, 65536), rnd.randrange(1, 65536), proto)
        assert xdp.raw(xdp.flow_key(f)) == xdp.raw(xdp.flow_key(f.reversed()))
        assert xdp.flow_hash(f) == xdp.flow_hash(f.reversed())
        assert xdp.steer(f, workers) == xdp.steer(f.reversed(), workers)
        seen[xdp.flow_hash(f) % workers] += 1
    assert min(seen) > 2000 / workers * 0.8, seen


# ---- classification on real traffic -----------------------------------------------------------------------


def test_attached_native_and_status(live: Live) -> None:
    with live.b.entered():
        infos = xdp.status(live.vb)
    assert len(infos) == 1
    info = infos[0]
    assert info["attached"] and info["ours"] and info["mode"] == "native" and info["pinned"]
    assert info["problem"] is None
    assert info["state"]["prog_id"] == info["prog_id"]


def test_arp_and_icmp_pass(live: Live) -> None:
    netlink.neigh_flush(live.va, netns=live.a.name)
    before = live.stats()
    assert live.a.ping(B4)
    assert live.a.ping(B6)
    d = live.delta(before)
    assert d.get("pass_not_ip", 0) >= 1  # ARP (the neighbour entry was flushed)
    assert d.get("pass_not_monitored", 0) >= 2  # ICMP echo, ICMPv6 echo / neighbour discovery
    assert d.get("drop", 0) == 0


def test_tcp_is_classified_and_steered(live: Live) -> None:
    before = live.stats()
    with live.b.tcp_echo_server(B4, 8080):
        assert live.a.tcp_connect(B4, 8080, b"hello") == b"olleh"  # no AF_XDP socket yet: passed to the host
    d = live.delta(before)
    assert d["pass_no_socket"] >= 3  # SYN, ACK, data, FIN ...
    assert d["pass"] == d["rx"] - d.get("drop", 0) - d.get("redirect", 0)
    last = live.prog.last_steering()
    key = last.key
    assert key.proto == socket.IPPROTO_TCP
    ports = {socket.ntohs(key.port_lo), socket.ntohs(key.port_hi)}
    assert 8080 in ports
    client_port = (ports - {8080}).pop()
    flow = xdp.FlowTuple(A4, B4, client_port, 8080, "tcp")
    assert xdp.raw(key) == xdp.raw(xdp.flow_key(flow))
    assert last.hash == xdp.flow_hash(flow) == xdp.flow_hash(flow.reversed())
    assert last.xsk_index == xdp.steer(flow, 1) == 0


def test_tcp_ipv6_and_udp_classified(live: Live) -> None:
    before = live.stats()
    with live.b.tcp_echo_server(B6, 8081):
        assert live.a.tcp_connect(B6, 8081, b"v6") == b"6v"
    live.a.udp_send(B4, 5353, sport=40001)
    d = live.delta(before)
    assert d["pass_no_socket"] >= 4
    last = live.prog.last_steering()
    assert last.key.proto == socket.IPPROTO_UDP
    assert last.hash == xdp.flow_hash(xdp.FlowTuple(B4, A4, 5353, 40001, "udp"))


@pytest.mark.parametrize("vlans", [(), (10,), (100, 20)])
def test_wire_frames_steered_as_python_predicts(live: Live, vlans: Tuple[int, ...]) -> None:
    """Frames sent on va by a packet socket (so with their VLAN tags in the data: 802.1Q, 802.1ad + 802.1Q)
    reach the program on vb: its recorded key and hash are what Python computes through lib.mos_flow_hash,
    for IPv4 and IPv6, in both directions."""
    vlan_key = 0
    for vid in vlans:
        vlan_key = (vlan_key << 12) | vid
    for src, dst in ((A4, B4), (A6, B6)):
        flow = xdp.FlowTuple(src, dst, 44000 + len(vlans), 6100, "udp", vlan_key=vlan_key)
        for f in (flow, flow.reversed()):
            seq = live.prog.last_steering().seq
            data = frame(str(f.src), str(f.dst), f.sport, f.dport, "udp", vlans=vlans)
            live.a.python(f"""
                import socket
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(({live.va!r}, 0))
                s.send({data!r})
            """)
            deadline = time.time() + 2  # the peer's NAPI poll may run after the sender has returned
            while (d := live.prog.last_steering()).seq == seq and time.time() < deadline:
                time.sleep(0.01)
            assert d.seq == seq + 1
            assert xdp.raw(d.key) == xdp.raw(xdp.flow_key(flow)) and d.key.vlan_key == vlan_key
            assert d.hash == xdp.flow_hash(flow) == xdp.flow_hash(flow.reversed()) == xdp.hash_key(d.key)
            assert d.xsk_index == xdp.steer(flow, 1) and d.slot == 0


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlans", [(), (10,), (100, 20)])
def test_bpf_hash_matches_python_both_directions(live: Live, v6: bool, vlans: Tuple[int, ...]) -> None:
    """BPF_PROG_TEST_RUN on crafted frames: the program's key, hash and XSKMAP index match mos.xdp."""
    live.prog.set_config(workers=4)
    try:
        src, dst = (A6, B6) if v6 else (A4, B4)
        vlan_key = 0
        for vid in vlans:
            vlan_key = (vlan_key << 12) | vid
        indexes = set()
        for sport in (1000, 23456, 61000):
            flow = xdp.FlowTuple(src, dst, sport, 443, "tcp", vlan_key=vlan_key)
            results = []
            for f in (flow, flow.reversed()):
                pkt = frame(str(f.src), str(f.dst), f.sport, f.dport, vlans=vlans)
                assert live.prog.test_run(pkt) == xdp.XDP_PASS
                d = live.prog.last_steering()
                assert d.hash == xdp.hash_key(d.key)  # the program's own key, hashed by lib.mos_flow_hash
                results.append((xdp.raw(d.key), d.hash, d.xsk_index))
            assert results[0] == results[1]
            assert results[0] == (xdp.raw(xdp.flow_key(flow)), xdp.flow_hash(flow), xdp.steer(flow, 4))
            indexes.add(results[0][2])
        assert indexes <= {xdp.xsk_index(0, 0, w) for w in range(4)}
    finally:
        live.prog.set_config(workers=1)


def test_fragments_steer_by_address_pair(live: Live) -> None:
    before = live.stats()
    for v6 in (False, True):
        src, dst = (A6, B6) if v6 else (A4, B4)
        assert live.prog.test_run(frame(src, dst, 1111, 2222, "udp", frag=True)) == xdp.XDP_PASS
        assert xdp.raw(live.prog.last_steering().key) == xdp.raw(
            xdp.flow_key(xdp.FlowTuple(src, dst, 1111, 2222, "udp"), fragment=True))
    assert live.delta(before)["fragment"] == 2


@pytest.mark.parametrize("after_frag", ["dstopts", "none"])
def test_ipv6_fragments_of_one_datagram_share_a_key(live: Live, after_frag: str) -> None:
    """Every fragment of an IPv6 datagram reaches the engine under one key, whatever follows the fragment
    header. With destination options after it (RFC 8200 lets the first fragment carry extension headers of
    the fragmentable part), a later fragment's next header is 60, not TCP: the program used to take that
    for the protocol, so the later fragments were passed as not monitored (inline: forwarded unseen while
    the engine held the first) and keyed apart from the first. A later fragment's bytes are never read as a
    TCP header either: here they would be a malformed one (data offset 0)."""
    from scapy.all import TCP, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, Raw

    nh = 60 if after_frag == "dstopts" else socket.IPPROTO_TCP
    first_l4 = bytes(IPv6ExtHdrDestOpt(nh=socket.IPPROTO_TCP)) if nh == 60 else b""
    first_l4 += bytes(TCP(sport=40000, dport=443, flags="PA", seq=1, ack=1)) + b"x" * 4
    first_l4 += b"\0" * (-len(first_l4) % 8)
    bad_tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0, 0x18, 65535, 0, 0)  # doff 0

    def frag(off: int, more: bool, data: bytes) -> bytes:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IPv6(src=A6, dst=B6)
                     / IPv6ExtHdrFragment(nh=nh, offset=off, m=int(more), id=0xABCD) / Raw(data))

    before = live.stats()
    keys = []
    for f in (frag(0, True, first_l4), frag(len(first_l4) // 8, True, bad_tcp + b"y" * 12),
              frag(len(first_l4) // 8 + 4, False, b"z" * 8)):
        seq = live.prog.last_steering().seq
        assert live.prog.test_run(f) == xdp.XDP_PASS  # no socket here: passed after steering
        d = live.prog.last_steering()
        assert d.seq == seq + 1  # steered, not passed as unmonitored or dropped before
        keys.append(xdp.raw(d.key))
    assert keys[0] == keys[1] == keys[2] == xdp.raw(xdp.flow_key(xdp.FlowTuple(A6, B6, 0, 0, nh), fragment=True))
    d = live.delta(before)
    assert d["fragment"] == 3 and d["pass_no_socket"] == 3
    assert "pass_not_monitored" not in d and "drop_malformed" not in d


def test_malformed_dropped(live: Live) -> None:
    before = live.stats()
    assert live.prog.test_run(frame(A4, B4, 1, 2, truncate=30)) == xdp.XDP_DROP  # IPv4 header cut
    assert live.prog.test_run(frame(A4, B4, 1, 2, truncate=10)) == xdp.XDP_DROP  # TCP header cut
    assert live.prog.test_run(frame(A6, B6, 1, 2, "udp", truncate=6)) == xdp.XDP_DROP
    assert live.prog.test_run(frame(A4, B4, 1, 2)[:14] + b"\x45") == xdp.XDP_DROP  # one byte of IPv4
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28
    assert live.prog.test_run(arp) == xdp.XDP_PASS
    d = live.delta(before)
    assert d["drop_malformed"] == 4 and d["pass_not_ip"] == 1


# ---- fast drop ------------------------------------------------------------------------------------------


def test_block_prefix_v4_and_v6(live: Live) -> None:
    prog = live.prog
    before = live.stats()
    prog.block(f"10.200.{SUBNET}.0/30")
    prog.block(f"{A6}/128")
    try:
        assert f"10.200.{SUBNET}.0/30" in prog.blocked()["prefixes"]
        assert not live.a.ping(B4, timeout=0.8)
        assert not live.a.ping(B6, timeout=0.8)
        with live.b.tcp_echo_server(B4, 8082):
            assert live.a.tcp_connect(B4, 8082, timeout=1) is None
        d = live.delta(before)
        assert d["drop_blocked_prefix"] >= 3
        assert prog.blocked()["prefixes"][f"10.200.{SUBNET}.0/30"] >= 2  # per-prefix hit count
    finally:
        assert prog.unblock(f"10.200.{SUBNET}.0/30")
        assert prog.unblock(f"{A6}/128")
    assert not prog.unblock(f"{A6}/128")
    assert prog.blocked()["prefixes"] == {}
    assert live.a.ping(B4) and live.a.ping(B6)


def test_block_port(live: Live) -> None:
    prog = live.prog
    before = live.stats()
    prog.block_port(8083)
    try:
        assert prog.blocked()["ports"] == [8083]
        with live.b.tcp_echo_server(B4, 8083), live.b.tcp_echo_server(B4, 8084):
            assert live.a.tcp_connect(B4, 8083, timeout=1) is None
            assert live.a.tcp_connect(B4, 8084, b"ok") == b"ko"
        assert live.delta(before)["drop_blocked_port"] >= 1
    finally:
        assert prog.unblock_port(8083)
    assert prog.blocked()["ports"] == []
    with live.b.tcp_echo_server(B4, 8083):
        assert live.a.tcp_connect(B4, 8083, b"ok") == b"ko"


def test_port_filter_limits_monitoring(live: Live) -> None:
    prog = live.prog
    prog.monitor_port(8085)
    cfg = prog.config()
    prog.set_config(flags=cfg.flags | xdp.CFG_PORT_FILTER)
    try:
        before = live.stats()
        assert prog.test_run(frame(A4, B4, 40000, 8086)) == xdp.XDP_PASS
        assert live.delta(before) == {"rx": 1, "pass": 1, "pass_not_monitored": 1}
        before = live.stats()
        assert prog.test_run(frame(B4, A4, 8085, 40000)) == xdp.XDP_PASS
        assert live.delta(before) == {"rx": 1, "pass": 1, "pass_no_socket": 1}
    finally:
        prog.set_config(flags=cfg.flags)
        prog.monitor_port(8085, on=False)


# ---- bypass ---------------------------------------------------------------------------------------------


def test_bypass_verdicts_and_expiry(live: Live) -> None:
    prog = live.prog
    flow = xdp.FlowTuple(A4, B4, 40002, 5000, "udp")
    prog.bypass(flow.reversed(), "pass")  # entered from the other direction: the key is symmetric
    try:
        before = live.stats()
        live.a.udp_send(B4, 5000, sport=40002)
        d = live.delta(before)
        assert d["bypass_pass"] == 1 and "pass_no_socket" not in d
        [(key, entry)] = prog.bypassed()
        assert xdp.raw(key) == xdp.raw(xdp.flow_key(flow)) and entry.packets == 1 and entry.bytes > 0

        prog.bypass(flow, "drop")
        before = live.stats()
        assert prog.test_run(frame(B4, A4, 5000, 40002, "udp")) == xdp.XDP_DROP
        assert live.delta(before) == {"rx": 1, "drop": 1, "bypass_drop": 1}

        prog.bypass(flow, "redirect")  # no peer (passive mode): falls back to pass
        before = live.stats()
        assert prog.test_run(frame(A4, B4, 40002, 5000, "udp")) == xdp.XDP_PASS
        assert live.delta(before)["bypass_pass"] == 1

        # idle expiry: the program ignores and deletes a stale entry ...
        old = prog.config().bypass_idle_ns
        prog.set_config(bypass_idle_ns=50_000_000)
        prog.bypass(flow, "drop")
        time.sleep(0.1)
        before = live.stats()
        assert prog.test_run(frame(A4, B4, 40002, 5000, "udp")) == xdp.XDP_PASS
        assert live.delta(before) == {"rx": 1, "pass": 1, "pass_no_socket": 1, "bypass_expired": 1}
        assert prog.bypassed() == []
        # ... and userspace sweeps what the program has not met
        prog.bypass(flow, "drop")
        assert prog.expire_bypass(now_ns=time.monotonic_ns() + 10**9) == 1
        prog.set_config(bypass_idle_ns=old)
    finally:
        prog.unbypass(flow)
    assert prog.bypassed() == []


# ---- AF_XDP: frames really reach a socket ---------------------------------------------------------------

AF_XDP, SOL_XDP = 44, 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_UMEM_REG, XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING = 1, 2, 4, 5, 6
XDP_PGOFF_RX_RING, XDP_UMEM_PGOFF_FILL_RING = 0, 0x100000000
XDP_SHARED_UMEM, XDP_COPY = 1 << 0, 1 << 1


class XskReceiver:
    """A minimal AF_XDP socket (copy mode, RX only) in pure Python, for tests."""

    NFRAMES, FRAME = 64, 2048
    _libc = ctypes.CDLL(None, use_errno=True)

    def __init__(self, ifindex: int, queue: int = 0, shared_with: Optional[XskReceiver] = None) -> None:
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        n = self.NFRAMES
        self.owner = shared_with or self
        if shared_with is None:
            self.umem = mmap.mmap(-1, n * self.FRAME)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(self.umem))
            reg = struct.pack("=QQIIII", addr, n * self.FRAME, self.FRAME, 0, 0, 0)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_FILL_RING, n)
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_COMPLETION_RING, n)
        self.sock.setsockopt(SOL_XDP, XDP_RX_RING, n)
        offs = struct.unpack("=16Q", self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, 128))
        self.rx_off = offs[0:4]
        fd = self.sock.fileno()
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self.rx = mmap.mmap(fd, self.rx_off[2] + n * 16, mmap.MAP_SHARED, prot, offset=XDP_PGOFF_RX_RING)
        if shared_with is None:
            self.fr_off = offs[8:12]
            self.fill = mmap.mmap(fd, self.fr_off[2] + n * 8, mmap.MAP_SHARED, prot,
                                  offset=XDP_UMEM_PGOFF_FILL_RING)
            half = n // 2  # the second half of the UMEM for a socket sharing it
            for i in range(half):
                struct.pack_into("=Q", self.fill, self.fr_off[2] + i * 8, i * self.FRAME)
            struct.pack_into("=I", self.fill, self.fr_off[0], half)
        flags, shared_fd = (XDP_SHARED_UMEM, shared_with.sock.fileno()) if shared_with else (XDP_COPY, 0)
        sxdp = ctypes.create_string_buffer(struct.pack("=HHIII", AF_XDP, flags, ifindex, queue, shared_fd))
        deadline = time.time() + 3
        while self._libc.bind(fd, sxdp, 16) != 0:
            err = ctypes.get_errno()
            # EBUSY: a socket closed just before still holds the queue (released by a kernel work item)
            if err != errno.EBUSY or time.time() > deadline:
                raise OSError(err, f"AF_XDP bind: {os.strerror(err)}")
            time.sleep(0.05)
        self.consumed = 0

    def frames(self) -> List[bytes]:
        """Frames received since the last call (their buffers are not recycled: fine for a test)."""
        prod = struct.unpack_from("=I", self.rx, self.rx_off[0])[0]
        out = []
        while self.consumed != prod:
            slot = self.rx_off[2] + (self.consumed % self.NFRAMES) * 16
            addr, length, _ = struct.unpack_from("=QII", self.rx, slot)
            out.append(bytes(self.owner.umem[addr:addr + length]))
            self.consumed += 1
        struct.pack_into("=I", self.rx, self.rx_off[1], self.consumed)
        return out

    def close(self) -> None:
        """Unmaps the rings (each mapping holds the socket open) and closes the socket."""
        for m in (getattr(self, "rx", None), getattr(self, "fill", None)):
            if m is not None:
                m.close()
        self.sock.close()


def _udp_ports(f: bytes) -> Tuple[int, int]:
    return struct.unpack_from("!HH", f, 14 + 20)


def test_frames_reach_af_xdp_socket(live: Live) -> None:
    """With a socket at mos_xsk_index(0, 0, 0) the monitored traffic goes to it, the rest to the host."""
    prog = live.prog
    with live.b.entered():
        ifindex = socket.if_nametoindex(live.vb)
        xsk = XskReceiver(ifindex, 0)
    try:
        prog.set_xsk(xdp.xsk_index(0, 0, 0), xsk.sock.fileno())
        before = live.stats()
        for sport in (41000, 41001, 41002):
            live.a.udp_send(B4, 6000, sport=sport)
        assert live.a.ping(B4)  # ICMP still reaches the host
        deadline = time.time() + 3
        got: List[bytes] = []
        while len(got) < 3 and time.time() < deadline:
            got += xsk.frames()
            time.sleep(0.02)
        assert sorted(_udp_ports(f) for f in got) == [(41000, 6000), (41001, 6000), (41002, 6000)]
        d = live.delta(before)
        assert d["xsk_redirect"] == 3 and d["redirect"] == 3
    finally:
        prog.clear_xsk(xdp.xsk_index(0, 0, 0))
        xsk.close()


def test_two_workers_share_one_queue(live: Live) -> None:
    """The steering design on a single-queue NIC: 2 sockets bound to queue 0 with XDP_SHARED_UMEM; every
    flow lands on the worker its symmetric hash picks, in both directions."""
    prog = live.prog
    with live.b.entered():
        ifindex = socket.if_nametoindex(live.vb)
        w0 = XskReceiver(ifindex, 0)
        w1 = XskReceiver(ifindex, 0, shared_with=w0)
    workers = [w0, w1]
    prog.set_config(workers=2)
    try:
        for w, sock in enumerate(workers):
            prog.set_xsk(xdp.xsk_index(0, 0, w), sock.sock.fileno())
        sports = list(range(42000, 42012))
        for sport in sports:
            live.a.udp_send(B4, 6001, sport=sport)
        expected = {sport: xdp.flow_hash(xdp.FlowTuple(A4, B4, sport, 6001, "udp")) % 2 for sport in sports}
        assert set(expected.values()) == {0, 1}
        seen: Dict[int, int] = {}
        deadline = time.time() + 3
        while len(seen) < len(sports) and time.time() < deadline:
            for w, sock in enumerate(workers):
                for f in sock.frames():
                    seen[_udp_ports(f)[0]] = w
            time.sleep(0.02)
        assert seen == expected
    finally:
        prog.set_config(workers=1)
        for w in range(2):
            prog.clear_xsk(xdp.xsk_index(0, 0, w))
        w1.close()
        w0.close()


# ---- the CLI in a subprocess ----------------------------------------------------------------------------


def cli(ns: Netns, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(ns.cmd(sys.executable, "-m", "mos.cli", *args), capture_output=True, text=True,
                       env=env, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def xdp_links(ns: Netns) -> List[str]:
    """The interfaces with an XDP program, one ``INDEX: NAME: xdp MODE id PROG_ID`` line each."""
    return [f"{lk.ifindex}: {lk.ifname}: xdp {lk.mode} id {lk.prog_id}" for lk in ns.xdp_links()]


@pytest.fixture
def pair(live: Live) -> Iterator[Tuple[Netns, str]]:
    """A second veth pair in the module's namespaces, for attaching and detaching through the CLI."""
    tag = live.topo.tag[-6:]
    vc, vd = f"vc{tag}", f"vd{tag}"
    live.topo.veth(live.a, vc, live.b, vd, f"10.201.{SUBNET}.1/24", f"10.201.{SUBNET}.2/24")
    try:
        yield live.b, vd
    finally:
        cli(live.b, "detach", vd, check=False)
        with contextlib.suppress(netlink.NetError):
            netlink.link_delete(vc, netns=live.a.name)


def test_cli_attach_status_block_detach(live: Live, pair: Tuple[Netns, str]) -> None:
    ns, vd = pair
    r = cli(ns, "attach", vd, "--mode", "native", "--workers", "2")
    assert "native" in r.stdout
    # the attaching process has exited: the program stays, its maps are pinned
    assert len(xdp_links(ns)) == 2  # vb (module fixture) and vd
    [info] = json.loads(cli(ns, "status", vd, "--json").stdout)
    assert info["attached"] and info["ours"] and info["mode"] == "native" and info["problem"] is None
    assert info["state"]["workers"] == 2
    assert f"{vd}: mos-xdp attached" in cli(ns, "status").stdout

    assert live.a.ping(f"10.201.{SUBNET}.2")
    cli(ns, "block", "add", f"10.201.{SUBNET}.1", "9999", "--iface", vd)
    listed = json.loads(cli(ns, "block", "list", "--iface", vd, "--json").stdout)
    assert listed == {"prefixes": {f"10.201.{SUBNET}.1/32": 0}, "ports": [9999]}
    assert not live.a.ping(f"10.201.{SUBNET}.2", timeout=0.8)
    [info] = json.loads(cli(ns, "status", vd, "--json").stdout)
    assert info["counters"]["drop_blocked_prefix"] >= 1
    cli(ns, "block", "del", f"10.201.{SUBNET}.1", "9999", "--iface", vd)
    assert live.a.ping(f"10.201.{SUBNET}.2")
    r = cli(ns, "block", "del", "9999", "--iface", vd, check=False)
    assert r.returncode != 0 and r.stderr.strip() == "Error: port 9999 was not blocked"

    r = cli(ns, "attach", vd, check=False)
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1
    assert "already has mos-xdp attached" in r.stderr

    r = cli(ns, "detach", vd)
    assert "detached XDP program" in r.stdout
    assert [line for line in xdp_links(ns) if vd in line] == []
    with ns.entered():
        assert not xdp.XdpProgram.pin_dir(vd).exists() and not xdp.XdpProgram.state_path(vd).exists()


def test_cli_finds_program_left_by_a_crash(live: Live, pair: Tuple[Netns, str]) -> None:
    ns, vd = pair
    cli(ns, "attach", vd, "--mode", "generic")
    # a crash between attaching and pinning: the program is attached, pins and state are gone
    with ns.entered():
        xdp.remove_pins(xdp.XdpProgram.pin_dir(vd))
        xdp.XdpProgram.state_path(vd).unlink()
    infos = {i["iface"]: i for i in json.loads(cli(ns, "status", "--json").stdout)}
    assert infos[vd]["attached"] and infos[vd]["mode"] == "generic"
    assert "crashed run" in infos[vd]["problem"]
    assert "crashed run" in cli(ns, "status", vd).stdout
    r = cli(ns, "detach", vd)
    assert "detached XDP program" in r.stdout
    assert [line for line in xdp_links(ns) if vd in line] == []


def _dead_process() -> Dict[str, int]:
    """``{"pid", "pid_start"}`` of a process that has exited (as a state file records processes)."""
    p = subprocess.Popen(["true"])
    rec = {"pid": p.pid, "pid_start": xdp_state.process_start(p.pid) or 1}
    p.wait()
    return rec


def test_cli_status_tells_engine_and_failure_mode(live: Live, pair: Tuple[Netns, str]) -> None:
    """What traffic meets without an engine, the engine a run records, and a dead run as a problem."""
    ns, vd = pair
    assert "monitored traffic passes uninspected" in cli(ns, "attach", vd, "--mode", "generic").stdout
    [info] = json.loads(cli(ns, "status", vd, "--json").stdout)
    # mos-xdp attach, no engine: passive defaults to pass; not a problem, but the line says it
    assert (info["on_failure"], info["engine"], info["problem"]) == ("pass", None, None)
    assert info["state"]["owner"] == "attach"
    assert "  no engine: monitored traffic passes uninspected (on-failure pass)" in cli(ns, "status", vd).stdout
    cli(ns, "detach", vd)
    cli(ns, "attach", vd, "--mode", "generic", "--on-failure", "drop")

    def set_state(**fields: Any) -> Dict[str, Any]:
        with ns.entered():
            st = xdp.read_state(vd)
            st.update(fields)
            st = {k: v for k, v in st.items() if v is not None}
            xdp_state.write_state(vd, st)
        [info] = json.loads(cli(ns, "status", vd, "--json").stdout)
        return dict(info)

    me = xdp_state.this_process()
    info = set_state(engine={**me, "since": time.time()})
    assert (info["on_failure"], info["engine"], info["problem"]) == ("drop", {"pid": me["pid"], "alive": True}, None)
    assert f"  engine: run pid {me['pid']}" in cli(ns, "status", vd).stdout
    # (b) the engine's process is dead (kill -9 of the run): what traffic meets now, and the fixes
    dead = _dead_process()
    info = set_state(engine={**dead, "since": time.time()})
    assert info["engine"] == {"pid": dead["pid"], "alive": False}
    for part in (f"engine (mos-xdp run, pid {dead['pid']}) is gone", "monitored traffic is dropped (on-failure drop)",
                 f"mos-xdp detach {vd}", "start mos-xdp run again (it adopts the program)"):
        assert part in info["problem"], info["problem"]
    text = cli(ns, "status", vd).stdout
    assert "  no engine: monitored traffic is dropped (on-failure drop)" in text and "  problem: its engine" in text
    # (a) a run attached it for itself and died before its engine started; with failure mode pass
    with ns.entered(), xdp.XdpProgram.open_pinned(vd) as prog:
        prog.set_on_failure("pass")
    info = set_state(engine=None, owner="run", **dead)
    assert info["engine"] is None and info["on_failure"] == "pass"
    assert f"the mos-xdp run that attached it (pid {dead['pid']}) is gone" in info["problem"]
    assert "monitored traffic passes uninspected (on-failure pass)" in info["problem"]
    # the same, its run alive: no problem
    assert set_state(**me)["problem"] is None
    r = cli(ns, "attach", vd, "--on-failure", "maybe", check=False)
    assert r.returncode == 2 and "'maybe' is not one of 'pass', 'drop'" in r.stderr


def test_cli_warns_when_pins_live_in_a_private_mount_namespace(live: Live, pair: Tuple[Netns, str]) -> None:
    """`ip netns exec` gives each command a mount namespace of its own (and a fresh /sys, without bpffs): pins
    made there go away with it. attach says so, and what it leaves is found and removed like a crash's."""
    ns, vd = pair
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "mos.cli", "attach", vd,
                        "--mode", "generic"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "own mount namespace" in r.stderr and "nsenter --net=/run/netns/NAME" in r.stderr
    infos = {i["iface"]: i for i in json.loads(cli(ns, "status", "--json").stdout)}
    assert infos[vd]["attached"] and "crashed run" in infos[vd]["problem"]
    assert "detached XDP program" in cli(ns, "detach", vd).stdout
    assert [line for line in xdp_links(ns) if vd in line] == []


def test_cli_errors_are_one_line(live: Live) -> None:
    ns = live.b
    cases = [
        (["attach", "nosuchif0"], "interface nosuchif0 does not exist"),
        (["attach", "lo", "--mode", "native"], "native XDP unsupported on lo"),
        (["status", "nosuchif0"], "interface nosuchif0 does not exist"),
        (["block", "add", "not-a-prefix", "--iface", live.vb], "not an IP prefix or port"),
        (["block", "list", "--iface", "nosuchif0"], "no mos-xdp program pinned for nosuchif0"),
    ]
    for args, msg in cases:
        r = cli(ns, *args, check=False)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
    assert [line for line in xdp_links(ns) if ": lo:" in line] == []
    # bcc missing (a stand-in package that fails to import) and kernel headers missing
    with tempfile.TemporaryDirectory() as fake:
        (Path(fake) / "bcc").mkdir()
        (Path(fake) / "bcc" / "__init__.py").write_text("raise ImportError('no bcc here')\n")
        r = subprocess.run(ns.cmd(sys.executable, "-m", "mos.cli", "attach", live.vb),
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=f"{fake}:{ROOT}"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "bcc is not installed" in r.stderr
    assert "apt-get install python3-bpfcc linux-headers-amd64" in r.stderr
    with pytest.raises(xdp.XdpError, match="kernel headers missing.*linux-headers-amd64"):
        xdp.require_kernel_headers("0.0.0-no-such-kernel")
    # not root
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                        "mos.cli", "status"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd="/")
    assert r.returncode == 1 and r.stderr.strip() == (
        "Error: mos-xdp status needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")


# ---- inline mode ----------------------------------------------------------------------------------------


def test_inline_forwards_unmonitored_and_bypass_redirects() -> None:
    """a --- [vi (XDP) | middle | vo (XDP)] --- c: the program forwards between its two interfaces."""
    require_root()
    with Topology() as topo:
        a, m, c = topo.netns("ia"), topo.netns("im"), topo.netns("ic")
        tag = topo.tag[-6:]
        vi, vo = f"vi{tag}", f"vo{tag}"
        a4, c4 = f"10.202.{SUBNET}.1", f"10.202.{SUBNET}.2"
        topo.veth(a, f"xa{tag}", m, vi, f"{a4}/24")
        topo.veth(m, vo, c, f"xc{tag}", None, f"{c4}/24")
        for ns, dev in ((a, f"xa{tag}"), (c, f"xc{tag}")):
            # veth: XDP_REDIRECT into a veth needs NAPI (GRO) on its peer; a redirected frame never gets
            # an offloaded checksum filled in, so the senders compute checksums themselves
            ns.ethtool(dev, XDP_END_HOST)
        with m.entered():
            prog = xdp.XdpProgram.load(vi, peer=vo)
        topo.on_close(prog.close)

        def _detach() -> None:
            with m.entered():
                xdp.detach(vi)

        topo.on_close(_detach)
        with m.entered():
            assert prog.attach("native") == "native"
            assert {lx.ifname for lx in xdp.links() if lx.prog_id} == {vi, vo}
        assert prog.on_failure() == "drop"  # inline: fail closed unless told otherwise
        before = start = prog.stats()
        assert a.ping(c4)  # ARP and ICMP cross the middle box through XDP_REDIRECT (devmap)
        with c.tcp_echo_server(c4, 8090):
            # no engine socket, failure mode drop: monitored traffic stops in XDP
            assert a.tcp_connect(c4, 8090, b"inline", timeout=0.5) is None
            d = {k: v - before[k] for k, v in prog.stats().items()}
            assert d["drop_no_socket"] >= 1 and d["pass_no_socket"] == 0 and d["xsk_redirect"] == 0
            with m.entered():
                prog.set_on_failure("pass")
            assert prog.on_failure() == "pass"
            before = prog.stats()
            assert a.tcp_connect(c4, 8090, b"inline") == b"enilni"  # failure mode pass: forwarded unseen
        d = {k: v - before[k] for k, v in prog.stats().items()}
        assert d["pass"] == 0 and d["redirect"] == d["rx"] and d["drop_no_socket"] == 0 and d["pass_no_socket"] >= 6
        d = {k: v - start[k] for k, v in prog.stats().items()}
        assert d["pass_not_ip"] >= 2 and d["pass_not_monitored"] >= 2  # ARP, ICMP: forwarded in both modes

        a.udp_send(c4, 7000, sport=43000)
        flow = xdp.FlowTuple(a4, c4, 43000, 7000, "udp")
        prog.bypass(flow, "redirect")
        before = prog.stats()
        a.udp_send(c4, 7000, sport=43000)
        c.udp_send(a4, 43000, sport=7000)
        d = {k: v - before[k] for k, v in prog.stats().items()}
        assert d["bypass_redirect"] == 2 and d["redirect"] == d["rx"]  # + ICMP port unreachables
        [(_key, entry)] = prog.bypassed()
        assert entry.packets == 2
        with m.entered():
            assert xdp.status(vi)[0]["state"]["peer"] == vo
