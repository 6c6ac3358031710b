"""The suricata-verify captures of the shared corpus: every stream direction its EXPECTED.tsv lists (those on
which Suricata 7.0.10 and Wireshark agree, with no hole) must come out of the engine byte for byte, under
the overlap policy the row names. Directions the two disagreed on are not judged here (the corpus README).

A direction's bytes are what the engine delivered for it (CONN_NEW_DATA of the receiving side, in order),
over every connection of the capture with that 4-tuple, in the order the connections started."""

from __future__ import annotations

import csv
import hashlib
import ipaddress
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from mos import Event, Monitor, Side


def _rows(corpus: Path) -> List[Dict[str, str]]:
    with (corpus / "suricata-verify" / "EXPECTED.tsv").open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _norm(endpoint: str) -> Tuple[str, int]:
    """("address in one spelling", port) from ``ip:port`` or ``[ip6]:port`` or a full IPv6 ``a:b:...:port``."""
    addr, _, port = endpoint.rpartition(":")
    return str(ipaddress.ip_address(addr.strip("[]"))), int(port)


def _directions(pcap: Path, policy: str) -> Dict[Tuple[Tuple[str, int], Tuple[str, int]], bytes]:
    """Bytes delivered per direction (sender, receiver) of every connection of ``pcap``."""
    chunks: Dict[Tuple[int, int], List[bytes]] = defaultdict(list)
    ends: Dict[int, Tuple[Tuple[str, int], Tuple[str, int]]] = {}
    mon = Monitor(policy=policy)

    @mon.on(Event.CONN_START)
    def start(conn, ev):  # type: ignore[no-untyped-def]
        ends[conn.id] = (_norm(conn.client), _norm(conn.server))

    @mon.on(Event.CONN_NEW_DATA)
    def data(conn, ev):  # type: ignore[no-untyped-def]
        chunks[(conn.id, int(ev.side))].append(ev.data)

    mon.run_pcap(str(pcap))
    out: Dict[Tuple[Tuple[str, int], Tuple[str, int]], bytes] = defaultdict(bytes)
    for cid in sorted(ends):
        cli, svr = ends[cid]
        out[(cli, svr)] += b"".join(chunks[(cid, int(Side.SERVER))])  # what the server received: the client's
        out[(svr, cli)] += b"".join(chunks[(cid, int(Side.CLIENT))])
    return out


def test_every_listed_direction_byte_for_byte(corpus_dir: Path) -> None:
    rows = _rows(corpus_dir)
    assert len(rows) == 171
    runs: Dict[Tuple[str, str], Dict] = {}
    wrong = []
    for r in rows:
        key = (r["pcap"], r["policy"])
        if key not in runs:
            runs[key] = _directions(corpus_dir / "suricata-verify" / r["pcap"], r["policy"])
        src, dst = r["direction"].split("->")
        got = runs[key].get((_norm(src), _norm(dst)), b"")
        if len(got) != int(r["bytes"]) or hashlib.sha256(got).hexdigest() != r["sha256"]:
            wrong.append(f"{r['pcap']} {r['policy']} {r['direction']}: {len(got)} bytes, expected {r['bytes']}")
    assert not wrong, "\n".join(wrong)

