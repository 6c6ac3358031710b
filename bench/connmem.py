"""Memory per tracked connection with nothing buffered: ``sizeof(struct conn)`` and the real RSS growth.

    connmem.py [--conns 200000] [--kind syn|est] [--workdir DIR]

Builds a synthetic capture (no traffic is sent anywhere: the packets are written to a file) of
``--conns`` connections that stay open and hold no data: ``syn`` = half-open (a SYN each), ``est`` =
a completed three-way handshake each. Feeds it to the engine in this process, without ending the
connections, and reads VmRSS before and after. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import struct

from mos._engine import ffi, lib

from mos import Monitor


def csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    opts = struct.pack("!BBH", 2, 4, 1460)  # MSS
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags, 64240, 0, 0) + opts
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp


def build(path: str, n: int, kind: str) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        t = 1_700_000_000 * 1_000_000
        svr = bytes([10, 99, 0, 1])
        for i in range(n):
            cli = bytes([10, 98, (i >> 16) & 0xFF, (i >> 8) & 0xFF])
            sport = 1024 + (i & 0xFF) * 200 + (i >> 24)
            isn, sisn = (i * 2654435761) & 0xFFFFFFFF, (i * 40503) & 0xFFFFFFFF
            pkts = [packet(cli, svr, sport, 80, isn, 0, 0x02)]
            if kind == "est":
                pkts.append(packet(svr, cli, 80, sport, sisn, isn + 1, 0x12))
                pkts.append(packet(cli, svr, sport, 80, isn + 1, sisn + 1, 0x10))
            for p in pkts:
                t += 1  # 1 us apart: nothing times out
                f.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(p), len(p)) + p)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=200_000)
    ap.add_argument("--kind", choices=("syn", "est"), default="syn")
    ap.add_argument("--workdir", default="/tmp")
    a = ap.parse_args()
    path = os.path.join(a.workdir, f"connmem-{a.kind}-{a.conns}.pcap")
    build(path, a.conns, a.kind)
    mon = Monitor()  # default limits: max_conns 1,048,576
    err = ffi.new("char[512]")
    src = lib.mos_pcap_open(path.encode(), err, 512)
    lt = lib.mos_pcap_linktype(src)
    pkts = ffi.new("struct mos_pkt[]", 256)
    # warm up: the first batch (allocations made once, whatever the number of connections)
    n = lib.mos_pcap_next_batch(src, pkts, 256, err, 512)
    mon.feed(lt, pkts, n)
    before = rss_kb()
    live0 = mon.stats()["conns_live"]
    while True:
        n = lib.mos_pcap_next_batch(src, pkts, 256, err, 512)
        if n <= 0:
            break
        mon.feed(lt, pkts, n)
    after = rss_kb()
    st = mon.stats()
    lib.mos_pcap_close(src)
    os.unlink(path)
    added = st["conns_live"] - live0
    print(json.dumps({
        "kind": a.kind, "conns_live": st["conns_live"], "conns_added": added,
        "sizeof_conn": int(lib.mos_conn_size()), "rss_before_kb": before, "rss_after_kb": after,
        "rss_bytes_per_conn": round((after - before) * 1024 / max(added, 1), 1),
        "memory_held": st["memory_held"],
    }))


if __name__ == "__main__":
    main()
