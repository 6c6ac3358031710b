"""The engine's counters as one dict, and the partition of packets into dispositions.

Every packet fed ends in exactly one disposition (:data:`DISPOSITIONS`, or one of the ``malformed_*`` or
``bad_checksum_*`` reasons): :func:`accounted` sums them, and must equal ``stats["packets"]``.
"""

from __future__ import annotations

from typing import Any, Dict

from .abi import counter_names, frag_counter_names, lib, reasm_counter_names

MALFORMED_PREFIX = "malformed_"
BAD_CHECKSUM_PREFIX = "bad_checksum_"
DISPOSITIONS = (
    "conn_packets", "udp_packets", "icmp_error_packets", "orphan_untracked_proto", "orphan_no_conn",
    "orphan_table_full", "frag_held", "frag_error", "filtered_out",
)

BATCH_DEPENDENT = ("event_batches", "packets_held_for_handlers", "memory_held")
"""Counters that tell how a run went (crossings into Python, packets held back for handlers, memory held at
the end), which depend on the batch boundaries; every other counter depends on the packets alone."""

ENGINE_COUNTERS = counter_names()
"""The engine's counter names (``enum mos_counter`` order, from the C name table)."""
REASM_COUNTERS = reasm_counter_names()
FRAG_COUNTERS = frag_counter_names()


def engine_stats(eng: Any) -> Dict[str, int]:
    """Every counter of engine ``eng``: packet dispositions, malformations by reason, reassembly
    (``reasm_*``), fragments (``frag_*``) and ``memory_held``."""
    out: Dict[str, int] = {}
    c = lib.mos_engine_counters(eng)
    for i, name in enumerate(ENGINE_COUNTERS):
        out[name] = int(c[i])
    r = lib.mos_engine_reasm_counters(eng)
    for i, name in enumerate(REASM_COUNTERS):
        out["reasm_" + name] = int(r[i])
    f = lib.mos_engine_frag_counters(eng)
    for i, name in enumerate(FRAG_COUNTERS):
        out["frag_" + name] = int(f[i])
    out["memory_held"] = int(lib.mos_engine_mem_used(eng))
    return out


def accounted(stats: Dict[str, int]) -> int:
    """Packets accounted for by a disposition (must equal ``stats['packets']``)."""
    return sum(stats[k] for k in DISPOSITIONS) + sum(
        v for k, v in stats.items() if k.startswith((MALFORMED_PREFIX, BAD_CHECKSUM_PREFIX))
    )
