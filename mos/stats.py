"""The engine's counters as one dict, and the partition of packets into dispositions.

Every packet fed ends in exactly one disposition (:data:`DISPOSITIONS`, or one of the ``malformed_*``
reasons): :func:`accounted` sums them, and must equal ``stats["packets"]``.
"""

from __future__ import annotations

from typing import Any, Dict

from .abi import counter_names, lib

MALFORMED_PREFIX = "malformed_"
DISPOSITIONS = (
    "conn_packets", "orphan_not_tcp", "orphan_no_conn", "orphan_table_full", "frag_held", "frag_error",
)

ENGINE_COUNTERS = counter_names()
"""The engine's counter names (``enum mos_counter`` order, from the C name table)."""
# The reassembly and defragmentation counter arrays have no C name table (nor are their enums in the
# cffi interface): the order is that of enum reasm_counter (reasm.h) and enum defrag_counter (defrag.h).
REASM_COUNTERS = (
    "segments", "bytes_delivered", "bytes_gap", "gaps", "ooo_segments", "rexmit_segments", "rexmit_bytes",
    "rexmit_inconsistent", "rexmit_unverifiable", "overlap_segments", "limit_dir_buf", "limit_memcap",
    "limit_segments", "bytes_dropped_limit",
)
FRAG_COUNTERS = (
    "fragments", "datagrams", "overlaps", "too_big", "bad_fragment", "timeouts", "memcap", "discarded",
)


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
        v for k, v in stats.items() if k.startswith(MALFORMED_PREFIX)
    )
