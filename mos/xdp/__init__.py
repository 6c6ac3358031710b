"""XDP control: load ``bpf/xdp_mos.c`` with bcc, attach it, pin its maps, drive them through libbpf.

One idea per module:

- :mod:`.abi` -- the program's names, limits and struct types, all taken from ``bpf/mos_shared.h``
  through the cffi module (nothing restated in Python)
- :mod:`.steering` -- the symmetric flow key, its hash and the XSKMAP index a connection goes to
- :mod:`.maps` -- BPF objects and map elements through libbpf (:class:`BpfMap`)
- :mod:`.program` -- :class:`XdpProgram`: load, attach, pins, config, counters, block lists, ports,
  bypass, AF_XDP sockets, test runs
- :mod:`.state` -- what an attach leaves (pins, state file) and :func:`detach`
- :mod:`.status` -- :func:`status`: what is attached where, leftovers included
- :mod:`.links` -- interfaces and their XDP programs (netlink)
- :mod:`.env` -- paths, and what the host must provide (root, bpffs, bcc, kernel headers)
"""

from __future__ import annotations

from .abi import (
    BLOCK_MAX,
    BYPASS_DROP,
    BYPASS_MAX,
    BYPASS_PASS,
    BYPASS_REDIRECT,
    BYPASS_VERDICTS,
    CFG_DEBUG,
    CFG_PORT_FILTER,
    COUNTER_KINDS,
    COUNTERS,
    FAIL_MODES,
    FLOW_KEY_WORDS,
    HASH_SEED,
    MAP_BLOCK_V4,
    MAP_BLOCK_V6,
    MAP_BYPASS,
    MAP_CONFIG,
    MAP_COUNTERS,
    MAP_DEBUG,
    MAP_NAMES,
    MAP_PORTS,
    MAP_TX_PORTS,
    MAP_XSKS,
    MAX_QUEUES,
    MAX_SLOTS,
    MAX_WORKERS,
    MODE_INLINE,
    MODE_PASSIVE,
    PORT_BLOCK,
    PORT_MONITOR,
    PORTS,
    PROG_NAME,
    PROG_PIN,
    PROTO_TCP,
    PROTO_UDP,
    XDP_ABORTED,
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    XSK_MAP_SIZE,
    raw,
)
from .env import (
    BPF_DIR,
    INSTALL_HINT,
    PIN_ROOT,
    RUN_DIR,
    ensure_bpffs,
    netns_key,
    private_dir,
    require_kernel_headers,
    require_root,
)
from .errors import XdpError
from .links import LinkXdp, ifindex_of, link_xdp, links, xdp_remove
from .maps import BpfMap, obj_get, obj_pin, prog_fd_by_id, prog_info, prog_name_by_id, prog_test_run
from .program import XdpProgram, default_on_failure, fail_mode
from .state import detach, process_alive, read_state, remove_pins, remove_stale, stale, write_state
from .status import status
from .steering import FlowTuple, flow_hash, flow_key, hash_key, steer, xsk_index

__all__ = [
    "BLOCK_MAX", "BPF_DIR", "BYPASS_DROP", "BYPASS_MAX", "BYPASS_PASS", "BYPASS_REDIRECT", "BYPASS_VERDICTS",
    "CFG_DEBUG", "CFG_PORT_FILTER", "COUNTERS", "FLOW_KEY_WORDS", "HASH_SEED", "INSTALL_HINT", "MAP_BLOCK_V4",
    "MAP_BLOCK_V6", "MAP_BYPASS", "MAP_CONFIG", "MAP_COUNTERS", "MAP_DEBUG", "MAP_NAMES", "MAP_PORTS",
    "MAP_TX_PORTS", "MAP_XSKS", "MAX_QUEUES", "MAX_SLOTS", "MAX_WORKERS", "MODE_INLINE", "MODE_PASSIVE",
    "PIN_ROOT", "PORTS", "PORT_BLOCK", "PORT_MONITOR", "PROG_NAME", "PROG_PIN", "PROTO_TCP", "PROTO_UDP",
    "RUN_DIR", "XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_REDIRECT", "XDP_TX", "XSK_MAP_SIZE",
    "BpfMap", "FlowTuple", "LinkXdp", "XdpError", "XdpProgram",
    "detach", "ensure_bpffs", "flow_hash", "flow_key", "hash_key", "ifindex_of", "link_xdp", "links", "obj_get",
    "obj_pin", "prog_fd_by_id", "prog_info", "prog_name_by_id", "prog_test_run", "raw", "read_state",
    "require_kernel_headers", "require_root", "status", "steer", "xdp_remove", "xsk_index",
    "remove_pins", "COUNTER_KINDS", "FAIL_MODES", "default_on_failure", "fail_mode", "netns_key", "private_dir",
    "process_alive", "remove_stale", "stale", "write_state",
]
