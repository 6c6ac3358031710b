"""Issue 9, item 9: IPv6 extension headers over the walk's limit (``MOS_MAX_IPV6_EXT``, bpf/mos_parse.h).

A packet with more extension headers than both parsers walk is malformed: the engine counts it under
``malformed_too_many_ipv6_ext`` and raises an ERROR of kind MALFORMED (no connection), the XDP program
drops it (``drop_malformed``), and an inline run never forwards it unseen. One header fewer is an ordinary
packet: decoded, steered, reassembled.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from scapy.all import TCP, Ether, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, Raw

from mos import ErrorKind, Event, Monitor, Side, xdp
from mos.stats import accounted
from tests.pcaps import REQ, Built, Conv, payload
from tests.test_live import inline  # noqa: F401  (the module-scoped inline topology)
from tests.test_xdp import A6, B6, Live, live  # noqa: F401  (live: the module-scoped XDP fixture)

ROOT = Path(__file__).resolve().parents[1]
# the one limit, as both parsers compile it (mos_parse.h is not part of the engine's cffi API)
LIMIT = int(re.search(r"MOS_MAX_IPV6_EXT = (\d+)", (ROOT / "bpf/mos_parse.h").read_text()).group(1))  # type: ignore[union-attr]
RESP = payload("X6", 2500)


def _conv(n_ext: int, cport: int = 41000, frag_header: bool = False, tag: str = "6") -> Tuple[Built, bytes]:
    """An IPv6 connection (handshake, request, response, FIN both ways) whose every packet carries
    ``n_ext`` extension headers: destination options, the last one an atomic fragment header when
    ``frag_header``."""
    c = Conv(cip="2001:db8::1", sip="2001:db8::2", cport=cport)
    resp = payload(tag, 2500)

    def l3(fc: bool):  # type: ignore[no-untyped-def]
        ip = c.l3(fc)
        for i in range(n_ext):
            ip = ip / (IPv6ExtHdrFragment(offset=0, m=0, id=7) if frag_header and i == n_ext - 1
                       else IPv6ExtHdrDestOpt())
        return ip

    c.tcp(True, "S", l3=l3(True))
    c.tcp(False, "SA", l3=l3(False))
    c.tcp(True, "A", l3=l3(True))
    c.tcp(True, "PA", payload=REQ, l3=l3(True))
    for i in range(0, len(resp), 1000):
        c.tcp(False, "PA", payload=resp[i:i + 1000], l3=l3(False))
        c.tcp(True, "A", l3=l3(True))
    c.close()  # (the close itself without extension headers: they do not matter to what is tested)
    return c.built(REQ, resp, end="FIN"), resp


class Seen:
    """What an app sees: streams per connection, connections started, ERROR events."""

    def __init__(self, mon: Monitor, subscribe_errors: bool = True) -> None:
        self.streams: Dict[Tuple[int, int], bytes] = defaultdict(bytes)
        self.starts: List[int] = []
        self.errors: List[Tuple[object, int, object, object]] = []
        mon.on(Event.CONN_START, lambda c, e: self.starts.append(c.id))
        mon.on(Event.CONN_NEW_DATA, self._data)
        if subscribe_errors:
            mon.on(Event.ERROR, lambda c, e: self.errors.append((c, e.reason, e.malformed, e.packet)))

    def _data(self, c, e) -> None:  # type: ignore[no-untyped-def]
        self.streams[(c.id, int(e.side))] += e.data


def _run(tmp_path: Path, built: Built, subscribe_errors: bool = True, name: str = "t") -> Tuple[Seen, Dict[str, int]]:
    mon = Monitor()
    seen = Seen(mon, subscribe_errors)
    st = mon.run_pcap(str(built.write(tmp_path / f"{name}.pcap")))
    assert accounted(st) == st["packets"] == len(built.records)
    return seen, st


def test_limit_is_the_shared_one() -> None:
    assert LIMIT == 16


@pytest.mark.parametrize("frag_header", [False, True])
def test_at_the_limit_decoded_and_reassembled(tmp_path: Path, frag_header: bool) -> None:
    built, resp = _conv(LIMIT, frag_header=frag_header)
    seen, st = _run(tmp_path, built)
    assert st["malformed_too_many_ipv6_ext"] == 0 and st["orphan_untracked_proto"] == 0
    assert st["conn_packets"] == len(built.records) and st["conns_created"] == 1
    assert seen.starts == [1]
    assert seen.streams[(1, int(Side.SERVER))] == REQ
    assert seen.streams[(1, int(Side.CLIENT))] == resp
    assert seen.errors == []


@pytest.mark.parametrize("frag_header", [False, True])
def test_over_the_limit_is_malformed_with_an_error_event(tmp_path: Path, frag_header: bool) -> None:
    built, _ = _conv(LIMIT + 1, frag_header=frag_header)
    n_ext = sum(1 for _, f, _ in built.records if IPv6ExtHdrDestOpt in Ether(f))
    assert n_ext == len(built.records) - 3  # all but the three packets of the close
    seen, st = _run(tmp_path, built)
    assert st["malformed_too_many_ipv6_ext"] == n_ext
    assert st["orphan_untracked_proto"] == 0  # never "not TCP"
    # the close (no extension headers) finds no connection: picked up, not the hidden one's bytes
    assert st["conns_created"] <= 1 and not any(seen.streams.values())
    malformed = [e for e in seen.errors if e[1] == ErrorKind.MALFORMED]
    assert len(malformed) == n_ext
    assert all(c is None and name == "malformed_too_many_ipv6_ext" and pkt is None for c, _, name, pkt in malformed)
    assert ErrorKind.MALFORMED.event_name == "decoder.malformed"


def test_hidden_connection_yields_no_connection_and_no_stream(tmp_path: Path) -> None:
    """A connection behind LIMIT + 1 headers next to an ordinary one: only the ordinary one exists,
    for the API and for ``mos-xdp streams``."""
    hidden, _ = _conv(LIMIT + 1, cport=41001, tag="H")
    # the hidden one's close too: every packet of it carries the headers
    hidden.records = [r for r in hidden.records if IPv6ExtHdrDestOpt in Ether(r[1])]
    normal, resp = _conv(0, cport=41002, tag="N")
    t0 = hidden.records[-1][0] + 1
    built = Built(hidden.records + [(t0 + t - normal.records[0][0], f, o) for t, f, o in normal.records])
    seen, st = _run(tmp_path, built)
    assert st["conns_created"] == 1 and seen.starts == [1]
    assert st["malformed_too_many_ipv6_ext"] == len(hidden.records)
    assert dict(seen.streams) == {(1, int(Side.SERVER)): REQ, (1, int(Side.CLIENT)): resp}
    out = tmp_path / "streams"
    pcap = built.write(tmp_path / "mixed.pcap")
    r = subprocess.run([sys.executable, "-m", "mos.cli", "streams",
                        str(pcap), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(index) == 1 and index[0]["client"] == normal.client, index
    assert (out / "1.c2s").read_bytes() == REQ and (out / "1.s2c").read_bytes() == resp
    assert sorted(p.name for p in out.iterdir()) == ["1.c2s", "1.s2c", "index.jsonl"]


def test_no_subscriber_no_event(tmp_path: Path) -> None:
    """Without an ERROR handler a malformed packet queues nothing (the mask decides before any work)."""
    built, _ = _conv(LIMIT + 1)
    seen, st = _run(tmp_path, built, subscribe_errors=False)
    assert st["malformed_too_many_ipv6_ext"] > 0
    with_sub, st2 = _run(tmp_path, built, name="t2")
    assert st2["events_queued"] - st["events_queued"] == st["malformed_too_many_ipv6_ext"]


def test_other_malformations_raise_the_event_too(tmp_path: Path) -> None:
    """A truncated extension header: malformed_truncated_ipv6_ext, same ERROR kind, its own name."""
    c = Conv(cip="2001:db8::1", sip="2001:db8::2", cport=41003)
    pkt = bytes(c.l2(True) / IPv6(src=c.cip, dst=c.sip, nh=60, plen=4) / Raw(b"\x06\x00\x01\x04"))
    built = Built([(1000.0, pkt, len(pkt))])
    seen, st = _run(tmp_path, built)
    assert st["malformed_truncated_ipv6_ext"] == 1
    assert [(c, r, n) for c, r, n, _ in seen.errors] == [(None, ErrorKind.MALFORMED, "malformed_truncated_ipv6_ext")]


# ---- the XDP program (root: BPF_PROG_TEST_RUN on the program attached in test_xdp's topology) ----------


def _frame6(n_ext: int, src: str, dst: str, sport: int = 40123, dport: int = 443, truncate_ext: bool = False) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    ext = b""
    for i in range(n_ext):
        ext += struct.pack("!BB6s", 60 if i < n_ext - 1 else 6, 0, b"\x01\x04\0\0\0\0")  # PadN: 8 bytes
    body = ext + l4
    if truncate_ext:  # the last extension header claims 8 more bytes than the frame holds
        body = ext[:-8] + struct.pack("!BB6s", 6, 1, b"\x01\x04\0\0\0\0")
    l3 = struct.pack("!IHBB", 6 << 28, len(body), 60 if n_ext else 6, 64)
    l3 += socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x86\xdd" + l3 + body


def test_frame_builder_agrees_with_scapy() -> None:
    f = Ether(_frame6(3, "fd00::1", "fd00::2"))
    assert f[IPv6].nh == 60 and f[TCP].dport == 443 and f[TCP].flags == "S"


@pytest.mark.netns
def test_xdp_at_the_limit_steered_over_it_dropped(live: Live) -> None:  # noqa: F811
    for n in (1, LIMIT):
        before = live.stats()
        assert live.prog.test_run(_frame6(n, A6, B6)) == xdp.XDP_PASS  # no socket bound: steered, then passed
        d = live.delta(before)
        assert d.get("pass_no_socket") == 1 and "drop_malformed" not in d, (n, d)
        flow = xdp.FlowTuple(A6, B6, 40123, 443, "tcp")
        assert xdp.raw(live.prog.last_steering().key) == xdp.raw(xdp.flow_key(flow))
    for frame in (_frame6(LIMIT + 1, A6, B6), _frame6(LIMIT + 8, A6, B6), _frame6(2, A6, B6, truncate_ext=True)):
        before = live.stats()
        assert live.prog.test_run(frame) == xdp.XDP_DROP
        d = live.delta(before)
        assert d.get("drop_malformed") == 1 and d.get("drop") == 1 and "pass_not_monitored" not in d, d



@pytest.mark.netns
def test_xdp_vlan_tags_past_the_limit_are_malformed(live: Live) -> None:  # noqa: F811
    """Two tags are walked (MOS_MAX_VLAN, as in the engine); a third is malformed, never passed as 'not IP'
    (inline, that would forward the frame unseen)."""
    inner = _frame6(1, A6, B6)
    for tags, verdict, counter in ((2, xdp.XDP_PASS, "pass_no_socket"), (3, xdp.XDP_DROP, "drop_malformed")):
        vlans = b"".join(struct.pack("!HH", 0x8100, 100 + i) for i in range(tags))
        frame = inner[:12] + vlans + inner[12:]
        before = live.stats()
        assert live.prog.test_run(frame) == verdict, tags
        d = live.delta(before)
        assert d.get(counter) == 1 and "pass_not_ip" not in d, (tags, d)


# ---- inline: nothing the stack could not read crosses the middle box (root, namespaces) -----------------

SNIFF = """
    import json, socket, sys, time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind(({dev!r}, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    seen, end = set(), time.time() + {secs}
    while time.time() < end:
        try:
            f = s.recv(65536)
        except socket.timeout:
            continue
        seen.update(m for m in {markers!r} if m.encode() in f)
    print(json.dumps(sorted(seen)), flush=True)
"""


def _inline_frames(src_mac: str, dst_mac: str) -> Dict[str, bytes]:
    """Frames the client sends straight onto its wire, each with a marker in its TCP payload."""
    from scapy.all import IP

    from tests.test_live import CLIENT, PORT, SERVER

    eth = Ether(src=src_mac, dst=dst_mac)
    v6 = IPv6(src="fd00:211::1", dst="fd00:211::2")

    def ext(n: int):  # type: ignore[no-untyped-def]
        ip = v6
        for _ in range(n):
            ip = ip / IPv6ExtHdrDestOpt()
        return ip

    return {
        # the engine's malformed_bad_tcp_flags (SYN+FIN+RST): XDP steers it, the engine cannot use it
        "MOSX-BADFLAGS": bytes(eth / IP(src=CLIENT, dst=SERVER) / TCP(sport=4242, dport=PORT, flags="SFR")
                               / Raw(b"MOSX-BADFLAGS")),
        # over the limit: XDP's drop_malformed
        "MOSX-EXT17": bytes(eth / ext(LIMIT + 1) / TCP(sport=4243, dport=PORT, flags="S") / Raw(b"MOSX-EXT17")),
        # controls, forwarded: at the limit, and a plain IPv4 SYN
        "MOSX-EXT16": bytes(eth / ext(LIMIT) / TCP(sport=4244, dport=PORT, flags="S") / Raw(b"MOSX-EXT16")),
        "MOSX-PLAIN": bytes(eth / IP(src=CLIENT, dst=SERVER) / TCP(sport=4245, dport=PORT, flags="S")
                            / Raw(b"MOSX-PLAIN")),
    }


def _mac(ns, dev: str) -> str:  # type: ignore[no-untyped-def]
    return str(json.loads(ns.run("ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"])


def send_through(topo, run, frames: Dict[str, bytes]) -> set:  # type: ignore[no-untyped-def]
    """Sends `frames` from the client's wire while `run` (an inline mos-xdp run) is up, and returns the
    markers seen arriving on the server's wire; then stops the run (its exit status is checked)."""
    tag = topo.topo.tag[-6:]
    lc, ls = f"lc{tag}", f"ls{tag}"
    sniff = None
    try:
        code = textwrap.dedent(SNIFF.format(dev=ls, secs=4, markers=sorted(frames)))
        sniff = topo.s.popen(sys.executable, "-c", code, stdout=subprocess.PIPE, text=True)
        assert sniff.stdout is not None and sniff.stdout.readline().strip() == "ready"
        topo.c.python(f"""
            import socket, time
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind(({lc!r}, 0))
            for f in {list(frames.values())!r}:
                s.send(f)
                time.sleep(0.05)
        """)
        out, _ = sniff.communicate(timeout=30)
        seen = set(json.loads(out.strip().splitlines()[-1]))
    finally:
        if sniff is not None and sniff.poll() is None:
            sniff.kill()
            sniff.wait(timeout=10)
        rc = run.stop()
    assert rc == 0, run.stderr
    return seen


@pytest.mark.netns
@pytest.mark.parametrize("forward", [False, True], ids=["default-drop", "forward-malformed"])
def test_inline_malformed_never_forwarded_unseen(inline, tmp_path: Path, forward: bool) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.test_live import _app

    tag = inline.topo.tag[-6:]
    lc, ls = f"lc{tag}", f"ls{tag}"
    frames = _inline_frames(_mac(inline.c, lc), _mac(inline.s, ls))
    app = _app(tmp_path, "noop.py", "def init(mon):\n    pass\n")
    env = {"MOS_XDP_FORWARD_MALFORMED": "1"} if forward else {}
    run = inline.run(app, "--stats", env=env)
    seen = send_through(inline, run, frames)
    xdp_c = run.counters("  xdp:")
    xsk_c = run.counters("  af_xdp worker 0:")
    eng = run.engine_counters()
    assert xdp_c.get("drop_malformed", 0) >= 1, run.stderr  # the 17 headers, in XDP
    assert eng.get("malformed_bad_tcp_flags") == 1 and eng.get("malformed_too_many_ipv6_ext", 0) == 0, run.stderr
    expected = {"MOSX-EXT16", "MOSX-PLAIN"} | ({"MOSX-BADFLAGS"} if forward else set())
    assert seen == expected, (seen, run.stderr)
    assert xsk_c.get("malformed_drop", 0) == (0 if forward else 1), run.stderr
    inline.assert_clean()


def _fragments_v6(n_ext: int, cport: int) -> List[bytes]:
    """One IPv6 TCP SYN (with data) whose extension headers follow a fragment header, in two fragments:
    the reassembled datagram carries ``n_ext`` destination-options headers."""
    c = Conv(cip="2001:db8::1", sip="2001:db8::2", cport=cport)
    chain = IPv6ExtHdrDestOpt()
    for _ in range(n_ext - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    # the TCP checksum scapy computes over the whole datagram (a wrong one is dropped after reassembly)
    body = bytes(IPv6(src=c.cip, dst=c.sip) / chain / TCP(sport=cport, dport=80, flags="S", seq=1000)
                 / Raw(b"F" * 200))[40:]
    cut = (n_ext * 8 + 24) // 8 * 8  # the whole header chain in the first fragment (RFC 8200)
    out = []
    for off, chunk, more in ((0, body[:cut], 1), (cut, body[cut:], 0)):
        fh = struct.pack("!BBHI", 60, 0, (off // 8) << 3 | more, 0xABCD)
        ip = struct.pack("!IHBB", 6 << 28, len(fh) + len(chunk), 44, 64)
        ip += socket.inet_pton(socket.AF_INET6, c.cip) + socket.inet_pton(socket.AF_INET6, c.sip)
        eth = c.l2(True)
        eth.type = 0x86DD
        out.append(bytes(eth) + ip + fh + chunk)
    return out


@pytest.mark.parametrize("n_ext", [LIMIT - 1, LIMIT])
def test_first_fragment_over_the_limit_is_malformed(tmp_path: Path, n_ext: int) -> None:
    """A first fragment's header chain counts as a packet's, its fragment header included (as in the XDP
    program): fragment header + LIMIT - 1 headers is reassembled and starts its connection; one more and
    the first fragment is malformed (with the ERROR event), so the datagram is never reassembled."""
    built = Built([(1000.0 + i / 1000, f, len(f)) for i, f in enumerate(_fragments_v6(n_ext, 41010))])
    seen, st = _run(tmp_path, built)
    assert st["frag_error"] == 0
    if n_ext < LIMIT:
        assert st["frag_held"] == 2 and st["datagrams_reassembled"] == 1 and st["conns_created"] == 1
        assert seen.errors == []
    else:
        assert st["malformed_too_many_ipv6_ext"] == 1 and st["frag_held"] == 1  # the second one waits
        assert st["datagrams_reassembled"] == 0 and st["conns_created"] == 0
        assert [(c, r, n) for c, r, n, _ in seen.errors] == [(None, ErrorKind.MALFORMED, "malformed_too_many_ipv6_ext")]


@pytest.mark.netns
def test_xdp_first_fragment_limit(live: Live) -> None:  # noqa: F811
    """The program counts a first fragment's chain the same way: the engine's verdict and the program's agree."""
    cases = ((LIMIT - 1, xdp.XDP_PASS, "pass_no_socket"), (LIMIT, xdp.XDP_DROP, "drop_malformed"))
    for n_ext, verdict, reason in cases:
        first, second = _fragments_v6(n_ext, 41011)
        before = live.stats()
        assert live.prog.test_run(first) == verdict
        d = live.delta(before)
        assert d.get(reason) == 1, (n_ext, d)
        # a later fragment has no header chain to walk: steered as a fragment whatever the first held
        before = live.stats()
        assert live.prog.test_run(second) == xdp.XDP_PASS
        assert "drop_malformed" not in live.delta(before)
