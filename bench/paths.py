"""The engine's paths of issue 12 against its TCP path: UDP flows, the monitor filter, aliases.

    .venv/bin/python bench/paths.py [--flows 2000] [--packets 400000] [--runs 5]

Two captures of the same shape, written with ``struct`` (no traffic is sent anywhere) and cached in
``bench/work/``: ``--flows`` flows, each opened then sent ``--packets / --flows`` data packets of 200 bytes
of payload in turn (round robin over the flows, 1 µs apart: nothing times out). ``tcp``: connections
(handshake, then in-order data segments from the client, each acknowledged by the server every other
segment); ``udp``: UDP flows (datagrams both ways alternately). A third, ``alias``: the ``tcp`` capture's
server packets addressed to a NAT address, each connection given its alias (``Connection.set_alias``) by
its CONN_START handler under order ``packet``, as ``apps/nat.py`` does live.

Cases, each in a child process, no other handler (the engine alone, plus the interpreter):

* ``tcp``: the TCP capture, defaults;
* ``tcp-filter-all``: the same with ``filter="tcp"`` (every flow matches: the cost of judging);
* ``tcp-filter-none``: with ``filter="udp"`` (no flow matches: each is remembered as left out, and its
  later packets cost a lookup);
* ``udp``: the UDP capture, defaults (UDP flows are connections);
* ``udp-untracked``: with ``protocols=("tcp",)`` (the datagrams are orphans);
* ``alias``: the alias capture (the CONN_START handler costs one crossing per connection: ``tcp-start``
  is the same handler without the alias, on the ``tcp`` capture, to tell the two apart).

``--runs`` runs each, interleaved; medians of ns per packet of ``Monitor.run``, and each against ``tcp``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from common import MOSPY, WORK, interleaved_runs, ip_checksum, logger, med, report_section

log = logger("paths")

FORMAT = 1
"""Bumped when the captures' layout changes (the cached files' names carry it)."""
SERVER = socket.inet_aton("10.250.0.1")
NAT = socket.inet_aton("10.250.0.48")
SERVER_PORT, CLIENT_PORT, NAT_PORT0 = 80, 40000, 20000
PAYLOAD = bytes(range(200))
SYN, ACK, PSH = 0x02, 0x10, 0x08
ETH_C2S = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
ETH_S2C = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
T0_US = 1_700_000_000 * 1_000_000
TIMEOUT = 900.0
CASES = ("tcp", "tcp-filter-all", "tcp-filter-none", "udp", "udp-untracked", "tcp-start", "alias")


def _l4_checksum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    return ip_checksum(pseudo + seg + (b"\0" if len(seg) % 2 else b""))


def _ip(src: bytes, dst: bytes, proto: int, seg: bytes, eth: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, proto, 0, src, dst)
    return eth + ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:] + seg


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
              data: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    tcp = tcp[:16] + struct.pack("!H", _l4_checksum(src, dst, 6, tcp)) + tcp[18:]
    return _ip(src, dst, 6, tcp, ETH_C2S if dst in (SERVER,) else ETH_S2C)


def udp_frame(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    udp = udp[:6] + struct.pack("!H", _l4_checksum(src, dst, 17, udp) or 0xFFFF) + udp[8:]
    return _ip(src, dst, 17, udp, ETH_C2S if dst == SERVER else ETH_S2C)


def client_addr(i: int) -> bytes:
    return struct.pack("!I", (10 << 24) + (1 << 16) + i)


def build(path: Path, kind: str, flows: int, packets: int) -> None:
    """Write one capture (``tcp``, ``udp`` or ``alias``; see the module's doc)."""
    t = [T0_US]
    per_flow = max(1, packets // flows)

    def rec(frame: bytes) -> bytes:
        t[0] += 1
        return struct.pack("<IIII", t[0] // 1_000_000, t[0] % 1_000_000, len(frame), len(frame)) + frame

    with open(path, "wb") as f:
        f.write(PCAP_HEADER)
        if kind == "udp":
            for k in range(per_flow):
                for i in range(flows):
                    cli = client_addr(i)
                    f.write(rec(udp_frame(cli, SERVER, CLIENT_PORT, 53, PAYLOAD) if k % 2 == 0
                                else udp_frame(SERVER, cli, 53, CLIENT_PORT, PAYLOAD)))
            return
        reply_to = (lambda i: (NAT, NAT_PORT0 + i)) if kind == "alias" else (lambda i: (client_addr(i), CLIENT_PORT))
        seqs = []
        for i in range(flows):
            cli = client_addr(i)
            dst, dport = reply_to(i)
            cseq, sseq = (i * 2654435761 + 1) & 0xFFFFFFFF, (i * 40503 + 8) & 0xFFFFFFFF
            f.write(rec(tcp_frame(cli, SERVER, CLIENT_PORT, SERVER_PORT, (cseq - 1) & 0xFFFFFFFF, 0, SYN))
                    + rec(tcp_frame(SERVER, dst, SERVER_PORT, dport, (sseq - 1) & 0xFFFFFFFF, cseq, SYN | ACK))
                    + rec(tcp_frame(cli, SERVER, CLIENT_PORT, SERVER_PORT, cseq, sseq, ACK)))
            seqs.append([cseq, sseq])
        data_packets = per_flow * 2 // 3  # a third are the server's acknowledgements
        for k in range(data_packets):
            for i in range(flows):
                s = seqs[i]
                cli = client_addr(i)
                f.write(rec(tcp_frame(cli, SERVER, CLIENT_PORT, SERVER_PORT, s[0], s[1], PSH | ACK, PAYLOAD)))
                s[0] = (s[0] + len(PAYLOAD)) & 0xFFFFFFFF
                if k % 2:
                    dst, dport = reply_to(i)
                    f.write(rec(tcp_frame(SERVER, dst, SERVER_PORT, dport, s[1], s[0], ACK)))


def capture(kind: str, flows: int, packets: int) -> Path:
    path = WORK / f"paths-v{FORMAT}-{kind}-{flows}-{packets}.pcap"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        log(f"building {path.name}")
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        build(tmp, kind, flows, packets)
        tmp.rename(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# a case, in a child process

def child(case: str, pcap: str) -> None:
    from mos import Event, Monitor, Side

    kw: Dict[str, Any] = {}
    if case == "tcp-filter-all":
        kw["filter"] = "tcp"
    elif case == "tcp-filter-none":
        kw["filter"] = "udp"
    elif case == "udp-untracked":
        kw["protocols"] = ("tcp",)
    if case in ("alias", "tcp-start"):
        kw["order"] = "packet"
    mon = Monitor(**kw)
    if case in ("alias", "tcp-start"):
        nat = socket.inet_ntoa(NAT)
        nth = [NAT_PORT0]  # connections start in the order of their client index: i's alias port is NAT_PORT0 + i

        def start(conn: Any, ev: Any) -> None:
            port = nth[0]
            nth[0] += 1
            if case == "alias":
                conn.set_alias(Side.CLIENT, nat, port)

        mon.on(Event.CONN_START, start)
    t0 = time.perf_counter()
    st = mon.run_pcap(pcap)
    run_s = time.perf_counter() - t0
    print(json.dumps({"run_s": run_s, "packets": st["packets"], "conns_created": st["conns_created"],
                      "conns_picked_up": st["conns_picked_up"], "alias_packets": st["alias_packets"],
                      "filtered_out": st["filtered_out"], "orphans": st["orphan_untracked_proto"]}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--packets", type=int, default=400_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    caps = {k: capture(k, a.flows, a.packets) for k in ("tcp", "udp", "alias")}
    pcap_of = {"udp": caps["udp"], "udp-untracked": caps["udp"], "alias": caps["alias"]}

    def cmd(case: str) -> List[str]:
        return [str(MOSPY), str(Path(__file__).resolve()), "--child", case, str(pcap_of.get(case, caps["tcp"]))]

    runs, last = interleaved_runs("paths", CASES, a.runs, cmd, TIMEOUT)
    ns: Dict[str, float] = {c: med([r[0] for r in runs[c]]) * 1e9 / last[c]["packets"] for c in CASES}
    lines = [f"{a.flows:,} flows, {last['tcp']['packets']:,} TCP / {last['udp']['packets']:,} UDP packets; "
             f"medians of {a.runs} interleaved runs",
             f"{'case':16} {'ns/pkt':>7} {'x tcp':>6}  {'conns':>6} {'picked':>6} {'alias':>8} {'filtered':>8} "
             f"{'orphans':>8}   runs (run s)"]
    for c in CASES:
        r = last[c]
        lines.append(f"{c:16} {ns[c]:7.0f} {ns[c] / ns['tcp']:6.2f}  {r['conns_created']:6,} {r['conns_picked_up']:6,} "
                     f"{r['alias_packets']:8,} {r['filtered_out']:8,} {r['orphans']:8,}   "
                     + ", ".join(f"{x[0]:.2f}" for x in runs[c]))
    lines.append(f"alias against the same handler without it: {ns['alias'] / ns['tcp-start']:.2f}x")
    report_section("paths", "The engine's paths of issue 12 (UDP flows, filters, aliases)", lines, NOTE)


NOTE = ("`tcp` is the reference: the same number of packets as connections' handshakes and data. A UDP "
        "flow's datagram goes through the flow lookup and its counters but no tracker or reassembly; an "
        "orphan (`udp-untracked`) through the decoder alone. `tcp-filter-all` judges each flow's first "
        "packet with the compiled filter; `tcp-filter-none` leaves every flow out on its first packet and "
        "costs its later packets a lookup in the left-out table. `alias` and `tcp-start` run a CONN_START "
        "handler under order `packet` (a crossing per connection); in `alias` it gives the connection its "
        "alias, and the server's packets, addressed to the alias, are looked up through it.")


if __name__ == "__main__":
    main()
