"""The ABI of ``bpf/xdp_mos.c`` as Python sees it: every name, limit and layout comes from the C side.

``bpf/mos_shared.h`` is part of the cffi module's cdef (``userspace/build_engine.py``), so the constants
below are the header's own enum values, the map and counter names come from the name tables generated
from its X-macro lists (``userspace/abi.c``), and structs are cffi objects of the header's types:
``ffi.new("struct mos_xdp_config *")``, sized by ``ffi.sizeof``. No value of the header is restated;
the only names written here are the program's entry point (bcc loads the function by it) and its pin.
"""

from __future__ import annotations

import functools
from typing import Any, Tuple

from .._engine import ffi, lib
from ..abi import name_table

# ---- limits ---------------------------------------------------------------------------------------------

MAX_QUEUES: int = lib.MOS_MAX_QUEUES
MAX_WORKERS: int = lib.MOS_MAX_WORKERS
MAX_SLOTS: int = lib.MOS_MAX_SLOTS
XSK_MAP_SIZE: int = lib.MOS_XSK_MAP_SIZE
BLOCK_MAX: int = lib.MOS_XDP_BLOCK_MAX
PORTS: int = lib.MOS_XDP_PORTS
BYPASS_MAX: int = lib.MOS_XDP_BYPASS_MAX
HASH_SEED: int = lib.MOS_HASH_SEED
FLOW_KEY_WORDS: int = lib.MOS_FLOW_KEY_WORDS

# ---- flags ----------------------------------------------------------------------------------------------

PROTO_TCP: int = lib.MOS_XDP_PROTO_TCP
PROTO_UDP: int = lib.MOS_XDP_PROTO_UDP
CFG_PORT_FILTER: int = lib.MOS_XDP_CFG_PORT_FILTER
CFG_DEBUG: int = lib.MOS_XDP_CFG_DEBUG
MODE_PASSIVE: int = lib.MOS_XDP_MODE_PASSIVE
MODE_INLINE: int = lib.MOS_XDP_MODE_INLINE
PORT_MONITOR: int = lib.MOS_XDP_PORT_MONITOR
PORT_BLOCK: int = lib.MOS_XDP_PORT_BLOCK
BYPASS_PASS: int = lib.MOS_XDP_BYPASS_PASS
BYPASS_DROP: int = lib.MOS_XDP_BYPASS_DROP
BYPASS_REDIRECT: int = lib.MOS_XDP_BYPASS_REDIRECT
BYPASS_VERDICTS = {"pass": BYPASS_PASS, "drop": BYPASS_DROP, "redirect": BYPASS_REDIRECT}

# XDP actions, as the kernel's enum xdp_action (through libbpf's headers) numbers them
XDP_ABORTED: int = lib.XDP_ABORTED
XDP_DROP: int = lib.XDP_DROP
XDP_PASS: int = lib.XDP_PASS
XDP_TX: int = lib.XDP_TX
XDP_REDIRECT: int = lib.XDP_REDIRECT

# ---- names ----------------------------------------------------------------------------------------------


MAP_NAMES = name_table(lib.mos_xdp_map_name)
"""The program's maps in ``enum mos_xdp_map`` order, as the kernel names them and as they are pinned."""
MAP_CONFIG, MAP_COUNTERS, MAP_XSKS, MAP_TX_PORTS, MAP_BLOCK_V4, MAP_BLOCK_V6, MAP_PORTS, MAP_BYPASS, MAP_DEBUG = (
    MAP_NAMES[lib.MOS_XDP_MAP_CONFIG], MAP_NAMES[lib.MOS_XDP_MAP_COUNTERS], MAP_NAMES[lib.MOS_XDP_MAP_XSKS],
    MAP_NAMES[lib.MOS_XDP_MAP_TX_PORTS], MAP_NAMES[lib.MOS_XDP_MAP_BLOCK_V4], MAP_NAMES[lib.MOS_XDP_MAP_BLOCK_V6],
    MAP_NAMES[lib.MOS_XDP_MAP_PORTS], MAP_NAMES[lib.MOS_XDP_MAP_BYPASS], MAP_NAMES[lib.MOS_XDP_MAP_DEBUG])
MAP_ARP = MAP_NAMES[lib.MOS_XDP_MAP_ARP]

COUNTERS = name_table(lib.mos_xdp_counter_name)
"""Counter names in ``enum mos_xdp_counter`` order (``MOS_XDP_C_RX`` -> ``"rx"``)."""
COUNTER_KINDS = {name: name_table(lib.mos_xdp_counter_kind_name)[lib.mos_xdp_counter_kind(i)]
                 for i, name in enumerate(COUNTERS)}
"""Each counter's kind (``total``, ``verdict``, ``reason``, ``note``): how the counters add up (see the header)."""
FAIL_MODES = name_table(lib.mos_xdp_fail_mode_name)
"""What monitored traffic meets without an engine socket, by ``enum mos_xdp_fail_mode``: ``pass``, ``drop``."""

PROG_NAME = "xdp_mos"
"""The program's entry point in ``bpf/xdp_mos.c`` (and so its name in the kernel)."""
PROG_PIN = "prog"
"""The program's pin beside its maps'."""

# ---- structs --------------------------------------------------------------------------------------------

FLOW_KEY = "struct mos_flow_key"
CONFIG = "struct mos_xdp_config"
BYPASS_ENTRY = "struct mos_xdp_bypass_entry"
ARP_ENTRY = "struct mos_xdp_arp_entry"
DEBUG = "struct mos_xdp_debug"
LPM_V4 = "struct mos_xdp_lpm_v4"
LPM_V6 = "struct mos_xdp_lpm_v6"


@functools.cache
def _pointer(ctype: str) -> Any:
    return ffi.typeof(f"{ctype} *")


def new(ctype: str, init: Any = None) -> Any:
    """A zeroed (or ``init``-filled) instance of ``ctype``, e.g. ``new(CONFIG, {"workers": 2})``: a cffi
    pointer whose fields read and write as attributes."""
    return ffi.new(_pointer(ctype), init)


def from_bytes(ctype: str, data: bytes) -> Any:
    """A new instance of ``ctype`` holding a copy of ``data`` (a map key or value as read); zero-filled
    when ``data`` is shorter."""
    p = ffi.new(_pointer(ctype))
    ffi.memmove(p, data, min(len(data), ffi.sizeof(ctype)))
    return p


def raw(obj: Any) -> bytes:
    """The bytes of a struct, given as a pointer (what :func:`new` returns) or as a struct field
    (``debug.key``)."""
    if ffi.typeof(obj).kind == "struct":
        obj = ffi.addressof(obj)
    return bytes(ffi.buffer(obj))


def sizeof(ctype: str) -> int:
    """The size of ``ctype`` in bytes, as the C compiler lays it out."""
    return int(ffi.sizeof(ctype))


def field_names(ctype: str) -> Tuple[str, ...]:
    """The fields of a struct type, in declaration order."""
    return tuple(name for name, _ in ffi.typeof(ctype).fields)
