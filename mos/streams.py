"""``mos-xdp streams``: every connection's two reassembled directions, written by the engine in C.

With files (``run_streams``), Python runs once per connection (CONN_END) and once per hole (DATA_GAP),
never per packet or per chunk of data: the bytes go from the reassembly buffers to the files inside the
engine. The table (``stream_table``) runs no Python at all while the capture is read: the engine keeps
the final info of the connections to show, and the totals are its counters.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from .communityid import community_id_of
from .connection import Connection, EventInfo
from .events import Event, Side
from .monitor import Monitor


def _row(i: Dict[str, Any], gaps: Optional[Tuple[List[List[int]], List[List[int]]]]) -> Dict[str, Any]:
    """A connection's row from its info: with its gap lists (the index), or with the bytes lost (the table).
    A UDP flow's bytes are its datagrams' payloads (``c2s_packets`` datagrams), none lost."""
    udp = i["protocol"] == "udp"
    return {
        "id": i["id"],
        "proto": i["protocol"],
        "client": i["client"],
        "server": i["server"],
        "vlan": i["vlan"],
        "c2s_bytes": i["c2s_payload"] if udp else i["c2s_stream"] - i["c2s_gap_bytes"],
        "s2c_bytes": i["s2c_payload"] if udp else i["s2c_stream"] - i["s2c_gap_bytes"],
        **({"c2s_gaps": gaps[0], "s2c_gaps": gaps[1]} if gaps is not None else
           {"c2s_gap_bytes": i["c2s_gap_bytes"], "s2c_gap_bytes": i["s2c_gap_bytes"]}),
        "client_state": i["client_state"],
        "server_state": i["server_state"],
        "end": i["end"],
        "community_id": community_id_of(i),
        "c2s_packets": i["c2s_packets"],
        "s2c_packets": i["s2c_packets"],
        "picked_up": i["picked_up"],
        "rexmit_inconsistent": i["c2s_rexmit_inconsistent"] + i["s2c_rexmit_inconsistent"],
        "first_ts": i["first_ts"],
        "last_ts": i["last_ts"],
    }


def stream_table(
    pcap: str,
    *,
    limit: int = 50,
    policy: str = "first",
    frag_policy: str = "first",
    vlan_in_key: bool = True,
    pickup: bool = True,
    max_conns: int = 1 << 20,
    checksum: str = "auto",
    protocols: Any = ("tcp", "udp"),
    filter: Optional[str] = None,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> Tuple[List[Dict[str, Any]], Dict[str, int], Dict[str, int]]:
    """Reassemble ``pcap`` for a summary: the rows of connections 1..``limit`` (as ``run_streams`` gives
    them, with ``c2s_gap_bytes``/``s2c_gap_bytes`` instead of the gap lists), the totals over all
    connections and UDP flows (``connections``, ``stream_bytes``: TCP's, ``gap_bytes``) and the engine's
    counters."""
    # nothing reads bytes back (no peek window) and no handler acts on a connection (batch order)
    mon = Monitor(policy=policy, frag_policy=frag_policy, vlan_in_key=vlan_in_key, pickup=pickup,
                  max_conns=max_conns, strict=True, checksum=checksum, peek_window=0, order="batch",
                  protocols=protocols, filter=filter)
    mon.log_ended(limit)
    st = mon.run_pcap(pcap, progress=progress)
    rows = [_row(i, None) for i in mon.ended_log()]
    totals = {"connections": st["conns_ended"], "stream_bytes": st["reasm_bytes_delivered"],
              "gap_bytes": st["reasm_bytes_gap"]}
    return rows, totals, st


def run_streams(
    pcap: str,
    outdir: Optional[str],
    *,
    policy: str = "first",
    frag_policy: str = "first",
    vlan_in_key: bool = True,
    pickup: bool = True,
    max_conns: int = 1 << 20,
    checksum: str = "auto",
    protocols: Any = ("tcp", "udp"),
    filter: Optional[str] = None,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """Reassemble ``pcap``; with ``outdir``, write ``<n>.c2s``, ``<n>.s2c`` and ``index.jsonl`` there.

    Returns the index rows (in connection order) and the engine's counters. A UDP flow's files hold its
    datagrams' payloads one after the other.
    """
    # nothing reads bytes back (no peek window) and no handler acts on a connection (batch order)
    mon = Monitor(policy=policy, frag_policy=frag_policy, vlan_in_key=vlan_in_key, pickup=pickup,
                  max_conns=max_conns, strict=True, checksum=checksum, peek_window=0, order="batch",
                  protocols=protocols, filter=filter)
    if outdir is not None:
        os.makedirs(outdir, exist_ok=True)
        for name in os.listdir(outdir):  # a rerun must not append to the previous run's files
            if name == "index.jsonl" or name.endswith((".c2s", ".s2c")):
                os.unlink(os.path.join(outdir, name))
        mon.write_streams(outdir)
    gaps: Dict[int, Tuple[List[List[int]], List[List[int]]]] = {}
    rows: List[Dict[str, Any]] = []

    @mon.on(Event.DATA_GAP)
    def gap(conn: Connection, ev: EventInfo) -> None:
        # the stream the server receives is client-to-server
        g = gaps.setdefault(conn.id, ([], []))
        g[0 if ev.side is Side.SERVER else 1].append([ev.offset, ev.length])

    @mon.on(Event.CONN_END)
    def end(conn: Connection, ev: EventInfo) -> None:
        rows.append(_row(conn.info(), gaps.pop(conn.id, ([], []))))

    st = mon.run_pcap(pcap, progress=progress)
    rows.sort(key=lambda r: r["id"])
    if outdir is not None:
        import json

        with open(os.path.join(outdir, "index.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        for r in rows:  # a direction without bytes still gets its (empty) file
            for d in ("c2s", "s2c"):
                p = os.path.join(outdir, f"{r['id']}.{d}")
                if not os.path.exists(p):
                    open(p, "wb").close()
    return rows, st
