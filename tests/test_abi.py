"""The name tables Python reads from C (userspace/abi.c, generated from the X-macro lists that also give
the enums): each is as long as its enum, has no empty or repeated name, and the Python enums built on
them agree with the engine (policies by number, anomalies by name)."""

from __future__ import annotations

from typing import Callable, Tuple

import pytest

from mos.abi import (
    counter_names,
    frag_counter_names,
    lib,
    name_table,
    policy_names,
    reasm_counter_names,
    xsk_counter_names,
)
from mos.events import ErrorKind, Policy
from mos.stats import engine_stats


@pytest.mark.parametrize("names, count", [
    (counter_names, lib.MOS_C_COUNT),
    (reasm_counter_names, lib.mos_reasm_counter_count()),
    (frag_counter_names, lib.mos_frag_counter_count()),
    (xsk_counter_names, lib.MOS_XSK_C_COUNT),
    (lambda: name_table(lib.mos_xdp_counter_name), lib.MOS_XDP_C_COUNT),
    (lambda: name_table(lib.mos_xdp_map_name), lib.MOS_XDP_MAP_COUNT),
])
def test_name_table_matches_its_enum(names: Callable[[], Tuple[str, ...]], count: int) -> None:
    got = names()
    assert len(got) == count
    assert all(got) and len(set(got)) == len(got)


def test_engine_stats_has_every_counter_once() -> None:
    from mos import Monitor

    st = engine_stats(Monitor()._eng)
    n = lib.MOS_C_COUNT + lib.mos_reasm_counter_count() + lib.mos_frag_counter_count() + 1  # + memory_held
    assert len(st) == n


def test_policies_by_engine_number() -> None:
    assert [p.value for p in sorted(Policy, key=lambda p: p.code)] == list(policy_names())


def test_anomaly_names_are_stream_events() -> None:
    names = [k.event_name for k in ErrorKind]
    # Suricata's families: stream.* for the TCP tracker and reassembly, decoder.* for the packet decoder,
    # defrag.* for IP defragmentation
    assert all(n.startswith(("stream.", "decoder.", "defrag.")) for n in names)
    assert len(set(names)) == len(names)
    assert ErrorKind.OUT_OF_WINDOW.event_name == "stream.pkt_out_of_window"


def test_every_anomaly_of_the_engine_is_an_error_kind() -> None:
    """An ERROR reason the engine can raise and Python does not know would fail in the handler."""
    from mos._engine import ffi

    raised = {i for i in range(256) if lib.mos_anomaly_name(i) != ffi.NULL}
    assert raised == {int(k) for k in ErrorKind}
