"""Capture post-processing and ground truth for the benchmark (standard library only).

``impair IN OUT --drop P --swap Q --seed S``: copy a pcap, dropping each TCP packet that carries
payload with probability P (capture loss: those bytes are in no packet of OUT, a monitor must skip
them) and swapping a data packet with the next one, when that one carries data too,
with probability Q (reordering; timestamps stay in
file order). Prints what it did as JSON.

``distinct FILE DIR``: the distinct, correct stream bytes in the files that Suricata's ``tcp-data``
logger (``type: dir``) wrote to DIR: each file is aligned against the stream rebuilt from the capture's
packets, and the stream ranges it matches are added up once (a byte logged twice counts once, a byte
that matches nothing counts as wrong).

``truth FILE``: what a capture holds, computed from the packets alone (no reassembly engine):
per direction of each TCP connection, the union of the payload's sequence ranges (``present``: the
most any tool can deliver), the sequence span from the SYN to the highest byte (``exchanged``: what
the endpoints sent each other), packet counts, retransmitted bytes (payload seen more than once).
Prints JSON; ``--per-conn`` adds per-connection rows.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import struct
import sys
from typing import BinaryIO, Dict, Iterator, List, Tuple

PCAP_HDR = struct.Struct("<IHHiIII")
REC_HDR = struct.Struct("<IIII")
ETH_IP = 0x0800


def read_pcap(f: BinaryIO) -> Tuple[bytes, int, Iterator[Tuple[bytes, bytes]]]:
    """The file header, the link type and an iterator of (record header, packet bytes)."""
    hdr = f.read(PCAP_HDR.size)
    magic = struct.unpack_from("<I", hdr)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        sys.exit("pcaptool: only little-endian classic pcap files are handled")
    linktype = PCAP_HDR.unpack(hdr)[6]

    def records() -> Iterator[Tuple[bytes, bytes]]:
        rd = f.read
        while True:
            rh = rd(16)
            if len(rh) < 16:
                return
            caplen = REC_HDR.unpack(rh)[2]
            yield rh, rd(caplen)

    return hdr, linktype, records()


def l3_offset(linktype: int) -> int:
    if linktype == 1:
        return 14
    if linktype == 113:  # Linux cooked
        return 16
    if linktype in (12, 101):  # raw IP
        return 0
    sys.exit(f"pcaptool: link type {linktype} not handled")


def tcp_fields(pkt: bytes, off: int):  # type: ignore[no-untyped-def]
    """(src, dst, sport, dport, seq, flags, payload_len) of an IPv4 TCP packet, else None."""
    if len(pkt) < off + 20 or pkt[off] >> 4 != 4 or pkt[off + 9] != 6:
        return None
    if off == 14 and pkt[12:14] != b"\x08\x00":
        return None
    ihl = (pkt[off] & 15) * 4
    tot = (pkt[off + 2] << 8) | pkt[off + 3]
    t = off + ihl
    if len(pkt) < t + 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", pkt, t)
    thl = (pkt[t + 12] >> 4) * 4
    flags = pkt[t + 13]
    plen = tot - ihl - thl
    return pkt[off + 12:off + 16], pkt[off + 16:off + 20], sport, dport, seq, flags, max(plen, 0)


def impair(src: str, dst: str, drop: float, swap: float, seed: int) -> Dict[str, int]:
    rnd = random.Random(seed)
    stats = {"packets_in": 0, "packets_out": 0, "dropped_data_packets": 0, "dropped_bytes": 0, "swaps": 0}
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        hdr, lt, recs = read_pcap(fi)
        off = l3_offset(lt)
        fo.write(hdr)
        held = None  # a packet waiting to be written after the next one
        for rh, pkt in recs:
            stats["packets_in"] += 1
            f = tcp_fields(pkt, off)
            if f is not None and f[6] > 0 and not f[5] & 0x07 and rnd.random() < drop:  # data, no SYN/FIN/RST
                stats["dropped_data_packets"] += 1
                stats["dropped_bytes"] += f[6]
                continue
            is_data = f is not None and f[6] > 0
            if held is not None and not is_data:  # only data packets trade places
                fo.write(held[0] + held[1])
                stats["packets_out"] += 1
                held = None
            if held is not None:
                hrh, hpkt = held
                # the later packet goes first, with the earlier timestamp (the file stays in time order)
                fo.write(hrh[:8] + rh[8:] + pkt)
                fo.write(rh[:8] + hrh[8:] + hpkt)
                stats["packets_out"] += 2
                stats["swaps"] += 1
                held = None
                continue
            if is_data and rnd.random() < swap:
                held = (rh, pkt)
                continue
            fo.write(rh + pkt)
            stats["packets_out"] += 1
        if held is not None:
            fo.write(held[0] + held[1])
            stats["packets_out"] += 1
    return stats


class Dir:
    __slots__ = ("isn", "starts", "ends", "seen", "pkts", "data_pkts", "syn", "client")

    def __init__(self) -> None:
        self.isn = -1
        self.syn = False
        self.client = False  # sent a SYN without ACK
        self.starts: List[int] = []
        self.ends: List[int] = []
        self.seen = 0  # payload bytes in packets, retransmissions included
        self.pkts = 0
        self.data_pkts = 0

    def add(self, a: int, b: int) -> None:
        """Add [a, b) to the union of covered ranges (in-order data is the fast path)."""
        st, en = self.starts, self.ends
        if not en or a > en[-1]:
            st.append(a)
            en.append(b)
            return
        if a == en[-1]:
            en[-1] = max(en[-1], b)
            return
        i = bisect.bisect_left(en, a)  # first range ending at or after a
        j = bisect.bisect_right(st, b)  # ranges [i, j) touch [a, b)
        if i >= j:
            st.insert(i, a)
            en.insert(i, b)
            return
        na, nb = min(a, st[i]), max(b, en[j - 1])
        st[i:j] = [na]
        en[i:j] = [nb]

    def present(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))

    def exchanged(self) -> int:
        return self.ends[-1] if self.ends else 0


def truth(path: str, per_conn: bool) -> Dict[str, object]:
    dirs: Dict[Tuple[bytes, bytes, int, int], Dir] = {}
    done: List[Dir] = []  # directions of earlier connections on a reused 4-tuple
    total = tcp = 0
    with open(path, "rb") as f:
        _, lt, recs = read_pcap(f)
        off = l3_offset(lt)
        for _rh, pkt in recs:
            total += 1
            fl = tcp_fields(pkt, off)
            if fl is None:
                continue
            tcp += 1
            src, dst, sport, dport, seq, flags, plen = fl
            key = (src, dst, sport, dport)
            d = dirs.get(key)
            if d is not None and flags & 0x02 and d.syn and seq != d.isn:
                # the 4-tuple is reused by a new connection (a new ISN): its bytes are another stream
                done.append(d)
                d = None
            if d is None:
                d = dirs[key] = Dir()
            d.pkts += 1
            if flags & 0x02:  # SYN: the data starts at isn + 1
                d.isn = seq
                d.syn = True
                d.client = d.client or not flags & 0x10
            if plen:
                d.data_pkts += 1
                d.seen += plen
                if d.isn < 0:  # picked up: the first byte seen is offset 0 (data before it is lost)
                    d.isn = (seq - 1) & 0xFFFFFFFF
                a = (seq - d.isn - 1) & 0xFFFFFFFF
                if a > 0xF0000000:  # before the anchor (a picked-up stream's earlier byte): ignore
                    continue
                d.add(a, a + plen)
    every = list(dirs.values()) + done
    out: Dict[str, object] = {
        "packets": total, "tcp_packets": tcp, "directions": len(every),
        "conns": sum(1 for d in every if d.client),
        "present": sum(d.present() for d in every),
        "exchanged": sum(d.exchanged() for d in every),
        "payload_seen": sum(d.seen for d in every),
        "data_packets": sum(d.data_pkts for d in every),
        "holes": sum(len(d.starts) - 1 for d in every if d.starts),
    }
    if per_conn:
        out["per_direction"] = [
            {"src": ".".join(map(str, k[0])) + f":{k[2]}", "dst": ".".join(map(str, k[1])) + f":{k[3]}",
             "present": d.present(), "exchanged": d.exchanged(), "seen": d.seen}
            for k, d in dirs.items()
        ]
    return out


def streams(path: str) -> Dict[Tuple[str, int, str, int], bytearray]:
    """Every direction's stream rebuilt from the packets (holes left as zeros), keyed (src, sport, dst, dport)."""
    out: Dict[Tuple[str, int, str, int], bytearray] = {}
    isn: Dict[Tuple[str, int, str, int], int] = {}
    with open(path, "rb") as f:
        _, lt, recs = read_pcap(f)
        off = l3_offset(lt)
        for _rh, pkt in recs:
            fl = tcp_fields(pkt, off)
            if fl is None:
                continue
            src, dst, sport, dport, seq, flags, plen = fl
            key = (".".join(map(str, src)), sport, ".".join(map(str, dst)), dport)
            if flags & 0x02:
                isn[key] = seq
            if not plen or key not in isn:
                continue
            a = (seq - isn[key] - 1) & 0xFFFFFFFF
            if a > 0xF0000000:
                continue
            buf = out.setdefault(key, bytearray())
            if len(buf) < a + plen:
                buf.extend(bytes(a + plen - len(buf)))
            p0 = len(pkt) - plen  # the payload ends the frame (no Ethernet padding on these lengths)
            buf[a:a + plen] = pkt[p0:p0 + plen]
    return out


def align(data: bytes, truth: bytes) -> Tuple[int, int]:
    """(distinct truth bytes matched, bytes of data matching nothing)."""
    starts: List[int] = []
    ends: List[int] = []
    d = Dir()
    d.starts, d.ends = starts, ends
    p = hint = wrong = 0
    W = 48
    n, m = len(data), len(truth)
    while p < n:
        w = data[p:p + W]
        if len(w) < W:  # a short tail: match it at the hint
            if truth[hint:hint + len(w)] == w:
                d.add(hint, hint + len(w))
            else:
                wrong += len(w)
            break
        j = truth.find(w, max(0, hint - (1 << 16)))
        if j < 0:
            j = truth.find(w)
        if j < 0:
            wrong += 1
            p += 1
            continue
        k = W
        step = 1 << 16
        while step >= 1:  # extend the match: doubling steps down to one byte
            while p + k + step <= n and j + k + step <= m and data[p + k:p + k + step] == truth[j + k:j + k + step]:
                k += step
            step //= 2
        d.add(j, j + k)
        p += k
        hint = j + k
    return d.present(), wrong


def distinct(pcap: str, ddir: str) -> Dict[str, int]:
    st = streams(pcap)
    total = matched = wrong = files = 0
    for name in os.listdir(ddir):
        m = re.match(r"(.+)_(\d+)-(.+)_(\d+)-\d*-(ts|tc)\.data$", name)
        if not m:
            continue
        src, sp, dst, dp, d = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        key = (src, sp, dst, dp) if d == "ts" else (dst, dp, src, sp)
        with open(os.path.join(ddir, name), "rb") as f:
            data = f.read()
        files += 1
        total += len(data)
        a, b = align(data, bytes(st.get(key, b"")))
        matched += a
        wrong += b
    return {"files": files, "bytes": total, "distinct": matched, "wrong": wrong}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("impair")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--drop", type=float, default=0.002)
    p.add_argument("--swap", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=1)
    q = sub.add_parser("distinct")
    q.add_argument("pcap")
    q.add_argument("dir")
    t = sub.add_parser("truth")
    t.add_argument("pcap")
    t.add_argument("--per-conn", action="store_true")
    a = ap.parse_args()
    if a.cmd == "impair":
        print(json.dumps(impair(a.src, a.dst, a.drop, a.swap, a.seed)))
    elif a.cmd == "distinct":
        print(json.dumps(distinct(a.pcap, a.dir)))
    else:
        print(json.dumps(truth(a.pcap, a.per_conn)))


if __name__ == "__main__":
    main()
