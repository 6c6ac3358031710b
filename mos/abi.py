"""The one place the Python side reads the C engine's ABI (``mos._engine``, built by cffi from
``userspace/mos_engine.h``).

Layouts, field indexes, enum values and counter names all come from the compiled module, so a change of
the C side's struct or enum is picked up here and nowhere else needs editing:

* :data:`EVENT_FORMAT` / :data:`EVENT_SIZE`: a :mod:`struct` format of ``struct mos_event`` built from
  cffi's field offsets and types (the dispatch unpacks a whole event queue with it in one call), and
  ``EV_<FIELD>`` the index of each field in an unpacked tuple (array fields give ``EV_<FIELD><k>``);
* :func:`counter_names` / :func:`xsk_counter_names`: the engine's and the AF_XDP path's counter names,
  from ``mos_counter_name`` / ``mos_xsk_counter_name``;
* enum values as ``lib.MOS_*`` (re-exported as :data:`lib`).
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List, Tuple

try:
    from ._engine import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "the mos-xdp C engine is not built; run `bash scripts/setup.sh` (or `pip install .`)"
    ) from exc

__all__ = ["EVENT_FIELDS", "EVENT_FORMAT", "EVENT_SIZE", "NO_PACKET", "NO_WSCALE", "counter_names", "ffi", "lib",
           "struct_format", "xsk_counter_names", "name_table", "reasm_counter_names",
           "frag_counter_names", "policy_names", "frag_policy_names", "checksum_mode_names",
           "order_names"]

# struct codes by (size, signed); pointers are unpacked as unsigned addresses
_CODES = {(1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
          (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q"}


def _code(ctype: Any) -> str:
    size = ffi.sizeof(ctype)
    signed = ctype.kind == "primitive" and not ctype.cname.startswith(("uint", "unsigned", "size_t", "_Bool"))
    try:
        return _CODES[(size, signed and ctype.cname != "char")]
    except KeyError:
        raise TypeError(f"no struct code for C type {ctype.cname}") from None


def struct_format(cname: str) -> Tuple[str, Tuple[str, ...]]:
    """A little-endian-native :mod:`struct` format for a C struct of scalars, pointers and arrays of
    them, with the name of each unpacked value (``name`` or, for an array, ``name0``, ``name1``, ...).

    Padding is taken from cffi's offsets, so the format's size is the struct's ``sizeof``.
    """
    ctype = ffi.typeof(cname)
    fmt = ["="]
    names: List[str] = []
    pos = 0
    for name, fld in sorted(ctype.fields, key=lambda nf: nf[1].offset):
        if fld.bitsize != -1:
            raise TypeError(f"{cname}.{name}: bit fields have no struct format")
        if fld.offset > pos:
            fmt.append(f"{fld.offset - pos}x")
        t = fld.type
        if t.kind == "array":
            fmt.append(f"{t.length}{_code(t.item)}")
            names += [f"{name}{k}" for k in range(t.length)]
        else:
            fmt.append(_code(t))
            names.append(name)
        pos = fld.offset + ffi.sizeof(t)
    if ffi.sizeof(ctype) > pos:
        fmt.append(f"{ffi.sizeof(ctype) - pos}x")
    out = "".join(fmt)
    if struct.calcsize(out) != ffi.sizeof(ctype):  # pragma: no cover - a layout cffi and struct disagree on
        raise TypeError(f"{cname}: struct format {out} is {struct.calcsize(out)} bytes, not {ffi.sizeof(ctype)}")
    return out, tuple(names)


EVENT_FORMAT, EVENT_FIELDS = struct_format("struct mos_event")
"""``struct mos_event`` as a :mod:`struct` format, and the names of its unpacked values."""
EVENT_SIZE = struct.calcsize(EVENT_FORMAT)

_EV: Dict[str, int] = {name: i for i, name in enumerate(EVENT_FIELDS)}
# Index of each field in an unpacked event (what the dispatch and EventInfo read).
EV_TYPE = _EV["type"]
EV_SIDE = _EV["side"]
EV_HOOK = _EV["hook"]
EV_CLI_STATE = _EV["cli_state"]
EV_SVR_STATE = _EV["svr_state"]
EV_OLD_STATE = _EV["old_state"]
EV_INCONSISTENT = _EV["inconsistent"]
EV_FLAGS = _EV["flags"]
EV_CONN = _EV["conn"]
EV_PKT = _EV["pkt"]
EV_REASON = _EV["reason"]
EV_LEN = _EV["len"]
EV_CONN_ID = _EV["conn_id"]
EV_OFF = _EV["off"]
EV_DATA = _EV["data"]
EV_DATA2 = _EV["data2"]
EV_TS = _EV["ts_ns"]
EV_RX_OFF0 = _EV["rx_off0"]
EV_RX_OFF1 = _EV["rx_off1"]
EV_SUB = _EV["sub"]
if EV_SVR_STATE != EV_CLI_STATE + 1 or EV_RX_OFF1 != EV_RX_OFF0 + 1:  # pragma: no cover
    # Connection.state/stream_offset index these pairs by side
    raise TypeError("struct mos_event: the per-side snapshot fields are not adjacent")

NO_PACKET = 0xFFFFFFFF
"""``mos_event.pkt`` of an event raised by no packet (a timer, expiry, end of input)."""
NO_WSCALE = 0xFF
"""A ``wscale`` field of ``mos_conn_info`` / ``mos_pkt_view`` when no window-scale option was seen."""


def name_table(name_of: Callable[[int], Any]) -> Tuple[str, ...]:
    """A C name table (``const char *f(int i)``, NULL past the end; generated in userspace/abi.c from the
    same X-macro list as its enum), as a tuple indexed by the enum's values."""
    out: List[str] = []
    while True:
        p = name_of(len(out))
        if p == ffi.NULL:
            return tuple(out)
        out.append(ffi.string(p).decode())


def counter_names() -> Tuple[str, ...]:
    """The engine's counter names, in ``enum mos_counter`` order."""
    return name_table(lib.mos_counter_name)


def reasm_counter_names() -> Tuple[str, ...]:
    """The reassembly counter names, in the order of ``mos_engine_reasm_counters``."""
    return name_table(lib.mos_reasm_counter_name)


def frag_counter_names() -> Tuple[str, ...]:
    """The defragmentation counter names, in the order of ``mos_engine_frag_counters``."""
    return name_table(lib.mos_frag_counter_name)


def xsk_counter_names() -> Tuple[str, ...]:
    """The AF_XDP path's per-worker counter names, in ``enum mos_xsk_counter`` order."""
    return name_table(lib.mos_xsk_counter_name)


def policy_names() -> Tuple[str, ...]:
    """The overlap policies' names, indexed by the engine's policy number."""
    return name_table(lib.mos_policy_name)


def frag_policy_names() -> Tuple[str, ...]:
    """The IP fragment overlap policies' names (``DEFRAG_POLICIES``), indexed by the engine's number."""
    return name_table(lib.mos_frag_policy_name)


def checksum_mode_names() -> Tuple[str, ...]:
    """The checksum settings' names (``auto``, ``on``, ``off``), indexed by ``enum mos_checksum_mode``."""
    return name_table(lib.mos_checksum_mode_name)


def order_names() -> Tuple[str, ...]:
    """When handlers run (``connection``, ``batch``, ``packet``), indexed by ``enum mos_order``."""
    return name_table(lib.mos_order_name)
