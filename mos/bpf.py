"""The XDP side of the live path: load ``bpf/xdp_mos.c`` with bcc, attach it, pin its maps, drive them.

A program attached by :meth:`XdpProgram.attach` outlives the process: XDP attachment is held by the
interface (netlink), and the maps and the program are pinned under ``/sys/fs/bpf/mos-xdp/<ifname>/``
with a JSON state file in ``/run/mos-xdp/<ifname>.json``. A later process (``mos-xdp status``,
``block``, the engine) reopens them with :meth:`XdpProgram.open_pinned`, which needs neither bcc nor
kernel headers: map access goes through a small ctypes wrapper of the ``bpf(2)`` system call.

The layouts and constants mirror ``bpf/mos_shared.h`` (tests check that they agree). The symmetric
flow hash is reimplemented in :func:`flow_hash` so that tests and tools can predict the steering.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .resources import data_dir

# ---- constants mirrored from bpf/mos_shared.h ----------------------------------------------------------

MAX_QUEUES = 64
MAX_WORKERS = 64
MAX_SLOTS = 2
XSK_MAP_SIZE = MAX_SLOTS * MAX_QUEUES * MAX_WORKERS
BLOCK_MAX = 16384
PORTS = 65536
BYPASS_MAX = 262144

MAP_CONFIG = "mos_config"
MAP_COUNTERS = "mos_counters"
MAP_XSKS = "mos_xsks"
MAP_TX_PORTS = "mos_tx_ports"
MAP_BLOCK_V4 = "mos_block_v4"
MAP_BLOCK_V6 = "mos_block_v6"
MAP_PORTS = "mos_ports"
MAP_BYPASS = "mos_bypass"
MAP_DEBUG = "mos_debug"
MAP_NAMES = (MAP_CONFIG, MAP_COUNTERS, MAP_XSKS, MAP_TX_PORTS, MAP_BLOCK_V4, MAP_BLOCK_V6, MAP_PORTS,
             MAP_BYPASS, MAP_DEBUG)
PROG_NAME = "xdp_mos"
PROG_PIN = "prog"

PROTO_TCP = 1 << 0
PROTO_UDP = 1 << 1
CFG_PORT_FILTER = 1 << 0
CFG_DEBUG = 1 << 1
MODE_PASSIVE = 0
MODE_INLINE = 1
PORT_MONITOR = 1 << 0
PORT_BLOCK = 1 << 1
BYPASS_PASS = 1
BYPASS_DROP = 2
BYPASS_REDIRECT = 3
BYPASS_VERDICTS = {"pass": BYPASS_PASS, "drop": BYPASS_DROP, "redirect": BYPASS_REDIRECT}
HASH_SEED = 0x6D6F7321
FLOW_KEY_WORDS = 11

COUNTERS = (
    "rx", "pass", "drop", "redirect",
    "pass_not_ip", "pass_not_monitored", "pass_no_socket",
    "drop_malformed", "drop_blocked_prefix", "drop_blocked_port",
    "xsk_redirect",
    "bypass_pass", "bypass_drop", "bypass_redirect", "bypass_expired",
    "fragment",
)
"""Counter names in ``enum mos_counter`` order (``MOS_C_RX`` -> ``"rx"``)."""

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

BPF_DIR = Path(os.environ.get("MOS_XDP_BPF_DIR") or data_dir("bpf"))
PIN_ROOT = Path(os.environ.get("MOS_XDP_PIN_ROOT", "/sys/fs/bpf/mos-xdp"))
RUN_DIR = Path(os.environ.get("MOS_XDP_RUN_DIR", "/run/mos-xdp"))
INSTALL_HINT = "apt-get install python3-bpfcc linux-headers-amd64 (then scripts/setup.sh links the headers)"


class XdpError(Exception):
    """An error a user can act on; ``str()`` is one line meant to be printed as is."""


# ---- shared structs ---------------------------------------------------------------------------------


class FlowKey(ctypes.Structure):
    """``struct mos_flow_key``: the canonical (symmetric) key of a connection."""

    _fields_ = [
        ("addr_lo", ctypes.c_uint32 * 4),
        ("addr_hi", ctypes.c_uint32 * 4),
        ("port_lo", ctypes.c_uint16),
        ("port_hi", ctypes.c_uint16),
        ("vlan_key", ctypes.c_uint32),
        ("proto", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 3),
    ]


class Config(ctypes.Structure):
    """``struct mos_config``."""

    _fields_ = [
        ("protocols", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("workers", ctypes.c_uint32),
        ("queues", ctypes.c_uint32),
        ("mode", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("peer_ifindex", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint32),
        ("bypass_idle_ns", ctypes.c_uint64),
    ]


class BypassEntry(ctypes.Structure):
    """``struct mos_bypass_entry``."""

    _fields_ = [
        ("last_seen_ns", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("verdict", ctypes.c_uint32),
        ("_pad0", ctypes.c_uint32),
    ]


class Debug(ctypes.Structure):
    """``struct mos_debug``: the last steering decision (written with ``CFG_DEBUG``)."""

    _fields_ = [
        ("key", FlowKey),
        ("hash", ctypes.c_uint32),
        ("xsk_index", ctypes.c_uint32),
        ("rx_queue", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
        ("seq", ctypes.c_uint64),
    ]


class LpmV4(ctypes.Structure):
    """``struct mos_lpm_v4``."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class LpmV6(ctypes.Structure):
    """``struct mos_lpm_v6``."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


# ---- symmetric flow hash (same as mos_flow_hash in bpf/mos_shared.h) -----------------------------------

Address = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclasses.dataclass(frozen=True)
class FlowTuple:
    """One direction of a connection as seen on the wire. ``proto`` is ``"tcp"``, ``"udp"`` or a number."""

    src: Address
    dst: Address
    sport: int
    dport: int
    proto: Union[str, int] = "tcp"
    vlan_key: int = 0

    def reversed(self) -> FlowTuple:
        """The other direction of the same connection."""
        return FlowTuple(self.dst, self.src, self.dport, self.sport, self.proto, self.vlan_key)


def _proto_number(proto: Union[str, int]) -> int:
    if isinstance(proto, int):
        return proto
    names = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
    if proto.lower() not in names:
        raise XdpError(f"unknown protocol {proto!r}: use tcp or udp")
    return names[proto.lower()]


def _addr16(addr: Address) -> bytes:
    """16 bytes, network order; IPv4 becomes IPv4-mapped IPv6 as in the XDP program."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def flow_key(flow: FlowTuple, fragment: bool = False) -> FlowKey:
    """The canonical key the XDP program builds for ``flow`` (either direction gives the same key)."""
    s, d = _addr16(flow.src), _addr16(flow.dst)
    sport_be = struct.unpack("=H", struct.pack("!H", 0 if fragment else flow.sport))[0]
    dport_be = struct.unpack("=H", struct.pack("!H", 0 if fragment else flow.dport))[0]
    sw, dw = struct.unpack("=4I", s), struct.unpack("=4I", d)
    src_lower = (sw, sport_be) <= (dw, dport_be)
    lo, hi = (s, d) if src_lower else (d, s)
    plo, phi = (sport_be, dport_be) if src_lower else (dport_be, sport_be)
    key = FlowKey()
    ctypes.memmove(key.addr_lo, lo, 16)
    ctypes.memmove(key.addr_hi, hi, 16)
    key.port_lo, key.port_hi = plo, phi
    key.vlan_key = flow.vlan_key
    key.proto = _proto_number(flow.proto)
    return key


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def hash_key(key: FlowKey) -> int:
    """``mos_flow_hash``: Murmur3-32 over the key's 11 native-endian words."""
    words = struct.unpack(f"={FLOW_KEY_WORDS}I", bytes(key))
    h = HASH_SEED
    for k in words:
        k = (k * 0xCC9E2D51) & 0xFFFFFFFF
        k = _rotl32(k, 15)
        k = (k * 0x1B873593) & 0xFFFFFFFF
        h ^= k
        h = _rotl32(h, 13)
        h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= FLOW_KEY_WORDS * 4
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def flow_hash(flow: FlowTuple) -> int:
    """The symmetric hash the XDP program computes: ``flow_hash(f) == flow_hash(f.reversed())``."""
    return hash_key(flow_key(flow))


def xsk_index(slot: int, queue: int, worker: int) -> int:
    """``mos_xsk_index``: where worker ``worker``'s socket bound to (slot's interface, queue) goes."""
    return (slot * MAX_QUEUES + queue) * MAX_WORKERS + worker


def steer(flow: FlowTuple, workers: int, queue: int = 0, slot: int = 0) -> int:
    """The XSKMAP index the program picks for ``flow`` arriving on ``queue`` of ``slot``'s interface."""
    workers = min(max(workers, 1), MAX_WORKERS)
    return xsk_index(slot, queue, flow_hash(flow) % workers)


# ---- the bpf(2) system call ----------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_PROG_TEST_RUN = 10
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_MAP_TYPE_PERCPU_ARRAY = 6
_BPF_MAP_TYPE_PERCPU_HASH = 5
_BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_ATTR_SIZE = 128

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise XdpError(f"unsupported architecture {os.uname().machine}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def _attr(fmt: str, *values: Any) -> ctypes.Array:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr_of(buf: Optional[ctypes.Array]) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def obj_get(path: Union[str, Path]) -> int:
    """Opens a pinned BPF object (map or program); returns a new fd."""
    p = ctypes.create_string_buffer(os.fsencode(str(path)))
    return _bpf(_BPF_OBJ_GET, _attr("=QII", ctypes.addressof(p), 0, 0))


def obj_pin(fd: int, path: Union[str, Path]) -> None:
    """Pins a BPF object under bpffs."""
    p = ctypes.create_string_buffer(os.fsencode(str(path)))
    _bpf(_BPF_OBJ_PIN, _attr("=QII", ctypes.addressof(p), fd, 0))


def _obj_info(fd: int) -> bytes:
    info = ctypes.create_string_buffer(256)
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return info.raw


def prog_info(fd: int) -> Dict[str, Any]:
    """``struct bpf_prog_info`` of a program fd: id, type and name."""
    raw = _obj_info(fd)
    ptype, pid = struct.unpack_from("=II", raw, 0)
    return {"type": ptype, "id": pid, "name": raw[64:80].split(b"\0", 1)[0].decode()}


def prog_fd_by_id(prog_id: int) -> int:
    """Opens a loaded program by id."""
    return _bpf(_BPF_PROG_GET_FD_BY_ID, _attr("=III", prog_id, 0, 0))


def prog_name_by_id(prog_id: int) -> Optional[str]:
    """The name of a loaded program, or None when it cannot be opened."""
    try:
        fd = prog_fd_by_id(prog_id)
    except OSError:
        return None
    try:
        return str(prog_info(fd)["name"])
    finally:
        os.close(fd)


def prog_test_run(fd: int, frame: bytes, repeat: int = 1) -> Tuple[int, bytes]:
    """Runs an XDP program once on ``frame`` (BPF_PROG_TEST_RUN); returns (XDP action, output frame).

    Redirects are not carried out: the action tells what the program decided.
    """
    data_in = ctypes.create_string_buffer(frame, len(frame))
    data_out = ctypes.create_string_buffer(len(frame) + 512)
    attr = _attr("=IIIIQQII", fd, 0, len(frame), ctypes.sizeof(data_out), ctypes.addressof(data_in),
                 ctypes.addressof(data_out), repeat, 0)
    _bpf(_BPF_PROG_TEST_RUN, attr)
    retval, _size_in, size_out = struct.unpack_from("=III", attr, 4)
    return retval, data_out.raw[:size_out]


def _possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class BpfMap:
    """A BPF map reached through its fd; keys and values are bytes (ctypes structs are accepted)."""

    def __init__(self, fd: int, name: str = "") -> None:
        raw = _obj_info(fd)
        self.fd = fd
        self.type, self.id, self.key_size, self.value_size, self.max_entries, self.flags = struct.unpack_from(
            "=6I", raw, 0)
        self.name = name or raw[24:40].split(b"\0", 1)[0].decode()
        self.percpu = self.type in (_BPF_MAP_TYPE_PERCPU_ARRAY, _BPF_MAP_TYPE_PERCPU_HASH,
                                    _BPF_MAP_TYPE_LRU_PERCPU_HASH)
        self.ncpus = _possible_cpus() if self.percpu else 1
        self._slot = (self.value_size + 7) // 8 * 8 if self.percpu else self.value_size

    @classmethod
    def open(cls, path: Union[str, Path]) -> BpfMap:
        """Opens a pinned map."""
        return cls(obj_get(path))

    def close(self) -> None:
        """Closes the fd (the map lives on while pinned or used by a program)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _key(self, key: Union[bytes, ctypes.Structure, int]) -> ctypes.Array:
        if isinstance(key, int):
            key = key.to_bytes(self.key_size, "little")
        data = bytes(key)
        if len(data) != self.key_size:
            raise ValueError(f"{self.name}: key of {len(data)} bytes, map wants {self.key_size}")
        return ctypes.create_string_buffer(data, len(data))

    def lookup(self, key: Union[bytes, ctypes.Structure, int]) -> Optional[bytes]:
        """The value (per-CPU maps: all CPUs' values, each padded to 8 bytes), or None."""
        k = self._key(key)
        v = ctypes.create_string_buffer(self._slot * self.ncpus)
        try:
            _bpf(_BPF_MAP_LOOKUP_ELEM,
                 _attr("=IIQQQ", self.fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return v.raw

    def lookup_percpu(self, key: Union[bytes, ctypes.Structure, int]) -> List[bytes]:
        """A per-CPU map's value, one bytes object per possible CPU."""
        raw = self.lookup(key) or b""
        return [raw[i * self._slot:i * self._slot + self.value_size] for i in range(len(raw) // self._slot)]

    def update(self, key: Union[bytes, ctypes.Structure, int], value: Union[bytes, ctypes.Structure, int],
               flags: int = 0) -> None:
        """Inserts or replaces an entry (per-CPU maps: the same value on every CPU)."""
        if isinstance(value, int):
            value = value.to_bytes(self.value_size, "little")
        data = bytes(value)
        if self.percpu:
            data = (data.ljust(self._slot, b"\0")) * self.ncpus
        k = self._key(key)
        v = ctypes.create_string_buffer(data, len(data))
        _bpf(_BPF_MAP_UPDATE_ELEM,
             _attr("=IIQQQ", self.fd, 0, ctypes.addressof(k), ctypes.addressof(v), flags))

    def delete(self, key: Union[bytes, ctypes.Structure, int]) -> bool:
        """Removes an entry; False when it was absent."""
        k = self._key(key)
        try:
            _bpf(_BPF_MAP_DELETE_ELEM, _attr("=IIQ", self.fd, 0, ctypes.addressof(k)))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINVAL):
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterates over the keys (BPF_MAP_GET_NEXT_KEY)."""
        prev: Optional[ctypes.Array] = None
        while True:
            nxt = ctypes.create_string_buffer(self.key_size)
            try:
                _bpf(_BPF_MAP_GET_NEXT_KEY,
                     _attr("=IIQQ", self.fd, 0, _addr_of(prev), ctypes.addressof(nxt)))
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return
                raise
            yield nxt.raw
            prev = nxt

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        """Iterates over (key, value) pairs; entries deleted meanwhile are skipped."""
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v


# ---- interfaces and their XDP programs -------------------------------------------------------------------


@dataclasses.dataclass
class LinkXdp:
    """An interface and the XDP program attached to it (``prog_id`` 0: none)."""

    ifname: str
    ifindex: int
    prog_id: int = 0
    mode: str = ""  # "native", "generic", "offload", "multi"
    prog_name: str = ""


_XDP_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}


def links() -> List[LinkXdp]:
    """Every interface of the current network namespace, with its XDP program (from ``ip -d -j link``)."""
    try:
        out = subprocess.run(["ip", "-d", "-j", "link", "show"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise XdpError(f"cannot list interfaces with ip(8): {e}") from e
    result = []
    for link in json.loads(out.stdout or "[]"):
        lx = LinkXdp(link["ifname"], int(link["ifindex"]))
        xdp = link.get("xdp")
        if xdp:
            lx.mode = _XDP_MODES.get(int(xdp.get("mode", 0)), str(xdp.get("mode")))
            prog = xdp.get("prog") or {}
            if not prog and xdp.get("attached"):
                prog = xdp["attached"][0].get("prog", {})
            lx.prog_id = int(prog.get("id", 0))
            lx.prog_name = str(prog.get("name", "")) or (prog_name_by_id(lx.prog_id) or "")
        result.append(lx)
    return result


def link_xdp(ifname: str) -> LinkXdp:
    """The XDP state of one interface; XdpError when it does not exist."""
    for lx in links():
        if lx.ifname == ifname:
            return lx
    raise XdpError(f"interface {ifname} does not exist (ip link show {ifname})")


def xdp_remove(ifname: str, mode: str = "") -> None:
    """Detaches whatever XDP program ``ifname`` has (in ``mode``, or every mode)."""
    keywords = {"native": ["xdpdrv"], "generic": ["xdpgeneric"], "offload": ["xdpoffload"]}.get(
        mode, ["xdpgeneric", "xdpdrv"])
    for kw in keywords:
        subprocess.run(["ip", "link", "set", "dev", ifname, kw, "off"], capture_output=True)


# ---- environment checks -----------------------------------------------------------------------------------

_BPF_FS_MAGIC = 0xCAFE4A11


def require_root(what: str = "this") -> None:
    """XdpError unless running as root."""
    if os.geteuid() != 0:
        raise XdpError(f"{what} needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")


def _is_bpffs(path: Path) -> bool:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(path) and fields[2] == "bpf":
                return True
    except OSError:
        pass
    return False


def _private_mount_ns() -> bool:
    """Whether this process runs in another mount namespace than its parent, as under ``ip netns exec``
    (which unshares one, mounts a fresh /sys and execs the command): mounts made here die with it."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


def ensure_bpffs(root: Path = PIN_ROOT) -> None:
    """Makes sure ``root`` lies on a bpffs, mounting one at /sys/fs/bpf when nothing is mounted there."""
    mnt = Path("/sys/fs/bpf")
    if root.is_relative_to(mnt) and not _is_bpffs(mnt):
        r = subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0 and not _is_bpffs(mnt):
            why = r.stderr.strip() or "mount failed"
            raise XdpError(f"bpffs unavailable: cannot mount it at {mnt} ({why})")
        if _private_mount_ns():
            sys.stderr.write(
                f"mos-xdp: warning: bpffs was mounted at {mnt} in this process's own mount namespace (ip netns "
                "exec gives each command one): the pins go away when it exits, and other mos-xdp commands will not "
                "find them; enter the network namespace with `nsenter --net=/run/netns/NAME` instead\n")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XdpError(f"bpffs unavailable: cannot create {root} ({e.strerror})") from e


def _import_bcc() -> Any:
    try:
        import bcc  # noqa: PLC0415 - optional, heavy
    except ImportError as e:
        raise XdpError(f"bcc is not installed (import bcc failed): {INSTALL_HINT}") from e
    return bcc


def require_kernel_headers(release: Optional[str] = None) -> None:
    """XdpError when bcc cannot find the headers of the running kernel (or of ``release``)."""
    build = Path("/lib/modules") / (release or os.uname().release) / "build"
    if not (build / "include").is_dir():
        raise XdpError(f"kernel headers missing ({build}): {INSTALL_HINT}")


def ifindex_of(ifname: str) -> int:
    """The interface's index; XdpError when it does not exist."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError as e:
        raise XdpError(f"interface {ifname} does not exist (ip link show {ifname})") from e


def _netns_id() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


# ---- the program --------------------------------------------------------------------------------------


def _parse_prefix(prefix: str) -> Union[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError as e:
        raise XdpError(f"not an IP prefix or port: {prefix!r}") from e


def _check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise XdpError(f"port out of range: {port}")
    return port


class XdpProgram:
    """The mos-xdp XDP program on one interface (and its inline peer).

    Get one with :meth:`load` (compile with bcc, not yet attached) then :meth:`attach`, or with
    :meth:`open_pinned` for a program attached by an earlier process. Map methods work in both cases.
    """

    def __init__(self, iface: str, maps: Dict[str, BpfMap], state: Optional[Dict[str, Any]] = None) -> None:
        self.iface = iface
        self.maps = maps
        self.state: Dict[str, Any] = dict(state or {})
        self.warnings: List[str] = []
        self._bpf: Any = None
        self._fn: Any = None
        self.prog_fd = -1

    # -- paths

    @staticmethod
    def pin_dir(iface: str) -> Path:
        """Where the maps of the program on ``iface`` are pinned."""
        return PIN_ROOT / iface

    @staticmethod
    def state_path(iface: str) -> Path:
        """The JSON state file of the program on ``iface``."""
        return RUN_DIR / f"{iface}.json"

    # -- loading

    @classmethod
    def load(cls, iface: str, *, peer: Optional[str] = None, workers: int = 1, queues: int = 1,
             protocols: int = PROTO_TCP | PROTO_UDP, monitor_ports: Optional[List[int]] = None,
             bypass_idle_s: float = 300.0, debug: bool = False,
             src_file: Optional[Path] = None) -> XdpProgram:
        """Compiles ``bpf/xdp_mos.c`` with bcc and fills the config map; nothing is attached yet.

        ``peer`` selects inline mode (unmonitored traffic and bypass-redirects go to the other interface);
        ``monitor_ports`` restricts monitoring to flows with one of these ports; ``bypass_idle_s`` is the
        idle time after which a bypass entry is ignored (0: never).
        """
        require_root("loading an XDP program")
        ifindex = ifindex_of(iface)
        peer_ifindex = ifindex_of(peer) if peer else 0
        if not 1 <= workers <= MAX_WORKERS:
            raise XdpError(f"workers must be 1..{MAX_WORKERS}")
        if not 1 <= queues <= MAX_QUEUES:
            raise XdpError(f"queues must be 1..{MAX_QUEUES}")
        bcc = _import_bcc()
        require_kernel_headers()
        src = Path(src_file or BPF_DIR / "xdp_mos.c")
        if not src.is_file():
            raise XdpError(f"XDP program source missing: {src}")
        try:
            b = bcc.BPF(src_file=str(src).encode(), cflags=[f"-I{src.parent}", "-Wno-unused-function"])
            fn = b.load_func(PROG_NAME.encode(), bcc.BPF.XDP)
        except Exception as e:  # bcc raises bare Exception
            raise XdpError(f"cannot compile/load {src.name}: {e} (compiler output above)") from e
        maps = {name: BpfMap(os.dup(b.get_table(name.encode()).map_fd), name) for name in MAP_NAMES}
        prog = cls(iface, maps)
        prog._bpf, prog._fn, prog.prog_fd = b, fn, fn.fd
        cfg = Config(protocols=protocols, flags=(CFG_DEBUG if debug else 0), workers=workers, queues=queues,
                     mode=MODE_INLINE if peer else MODE_PASSIVE, ifindex=ifindex, peer_ifindex=peer_ifindex,
                     bypass_idle_ns=int(bypass_idle_s * 1e9))
        if monitor_ports:
            cfg.flags |= CFG_PORT_FILTER
            for port in monitor_ports:
                prog._port_flags(port, set_bits=PORT_MONITOR)
        maps[MAP_CONFIG].update(0, cfg)
        maps[MAP_TX_PORTS].update(0, ifindex)
        if peer:
            maps[MAP_TX_PORTS].update(1, peer_ifindex)
        prog.state = {"iface": iface, "ifindex": ifindex, "peer": peer, "peer_ifindex": peer_ifindex,
                      "workers": workers, "queues": queues, "netns": _netns_id()}
        return prog

    def attach(self, mode: str = "auto") -> str:
        """Attaches the loaded program to the interface (and the peer), pins it, writes the state file.

        ``mode``: ``native`` (driver XDP; XdpError if unsupported), ``generic`` (skb) or ``auto`` (native,
        else generic with a warning in :attr:`warnings`). Returns the mode used.
        """
        if self._fn is None:
            raise XdpError("attach() needs a program from XdpProgram.load()")
        if mode not in ("auto", "native", "generic"):
            raise XdpError(f"unknown XDP mode {mode!r}: use auto, native or generic")
        ifaces = [self.iface] + ([self.state["peer"]] if self.state.get("peer") else [])
        for name in ifaces:
            lx = link_xdp(name)
            if lx.prog_id:
                other = f"another XDP program ({lx.prog_name or '?'})"
                what = "mos-xdp" if lx.prog_name == PROG_NAME else other
                raise XdpError(f"{name} already has {what} attached (prog id {lx.prog_id}): "
                               f"run mos-xdp detach {name} first")
        ensure_bpffs()
        pins = self.pin_dir(self.iface)
        if pins.exists():
            _remove_pins(pins)
        used = ""
        done: List[Tuple[str, str]] = []
        try:
            for name in ifaces:
                used = self._attach_one(name, mode if not used else used)
                done.append((name, used))
            pins.mkdir(parents=True, exist_ok=True)
            for mname, m in self.maps.items():
                obj_pin(m.fd, pins / mname)
            obj_pin(self.prog_fd, pins / PROG_PIN)
        except BaseException:
            for name, attached_mode in done:
                xdp_remove(name, attached_mode)
            _remove_pins(pins)
            raise
        self.state.update({"mode": used, "prog_id": prog_info(self.prog_fd)["id"], "pin_dir": str(pins),
                           "attached_at": time.time(), "pid": os.getpid()})
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path(self.iface).with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1) + "\n")
        tmp.replace(self.state_path(self.iface))
        return used

    def _attach_one(self, ifname: str, mode: str) -> str:
        bcc = _import_bcc()
        tries = {"native": [("native", XDP_FLAGS_DRV_MODE)], "generic": [("generic", XDP_FLAGS_SKB_MODE)],
                 "auto": [("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)]}[mode]
        errors = []
        for name, flags in tries:
            try:
                with _stderr_silenced():  # libbcc also prints the netlink error: keep to one line
                    bcc.BPF.attach_xdp(ifname.encode(), self._fn, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
            except Exception as e:  # bcc raises bare Exception
                errors.append(str(e).split(": ")[-1])
                continue
            if mode == "auto" and name == "generic":
                self.warnings.append(f"native XDP unsupported on {ifname} ({errors[0]}): using generic mode")
            return name
        if mode == "native":
            raise XdpError(f"native XDP unsupported on {ifname} ({errors[0]}): try --mode generic")
        raise XdpError(f"cannot attach XDP to {ifname}: {'; '.join(errors)}")

    @classmethod
    def open_pinned(cls, iface: str) -> XdpProgram:
        """Reopens the maps pinned by :meth:`attach` (no bcc needed). XdpError when nothing is pinned."""
        pins = cls.pin_dir(iface)
        if not (pins / MAP_CONFIG).exists():
            raise XdpError(f"no mos-xdp program pinned for {iface} ({pins}): run mos-xdp attach {iface}")
        maps = {}
        for name in MAP_NAMES:
            try:
                maps[name] = BpfMap.open(pins / name)
            except OSError as e:
                for m in maps.values():
                    m.close()
                raise XdpError(f"cannot open pinned map {pins / name}: {e.strerror}") from e
        state: Dict[str, Any] = {}
        try:
            state = json.loads(cls.state_path(iface).read_text())
        except (OSError, ValueError):
            pass
        return cls(iface, maps, state)

    def close(self) -> None:
        """Closes this process's fds; an attached program stays attached and pinned."""
        for m in self.maps.values():
            m.close()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = self._fn = None
            self.prog_fd = -1

    def __enter__(self) -> XdpProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detach(self) -> List[str]:
        """Detaches from the interface (and the peer), removes pins and state; returns what it did."""
        return detach(self.iface, self.state)

    # -- config

    def config(self) -> Config:
        """The current config entry."""
        raw = self.maps[MAP_CONFIG].lookup(0)
        return Config.from_buffer_copy(raw or bytes(ctypes.sizeof(Config)))

    def set_config(self, **fields: int) -> Config:
        """Changes fields of the config entry (e.g. ``workers=4``, ``bypass_idle_ns=...``); returns it."""
        cfg = self.config()
        for name, value in fields.items():
            if name not in {f[0] for f in Config._fields_}:
                raise XdpError(f"unknown config field {name}")
            setattr(cfg, name, value)
        self.maps[MAP_CONFIG].update(0, cfg)
        return cfg

    # -- counters

    def stats(self) -> Dict[str, int]:
        """Every counter, summed over CPUs, by name (see :data:`COUNTERS`)."""
        # one value per CPU holding all of that CPU's counters (struct mos_counter_block in xdp_mos.c)
        per_cpu = [struct.unpack_from(f"={len(COUNTERS)}Q", v) for v in self.maps[MAP_COUNTERS].lookup_percpu(0)]
        return {name: sum(c[i] for c in per_cpu) for i, name in enumerate(COUNTERS)}

    # -- block lists

    def block(self, prefix: str) -> str:
        """Drops packets from or to ``prefix`` (``10.0.0.0/8``, ``2001:db8::/32``, a bare address)."""
        net = _parse_prefix(prefix)
        m, key = self._lpm(net)
        if m.lookup(key) is None:
            m.update(key, 0)
        return str(net)

    def unblock(self, prefix: str) -> bool:
        """Removes a prefix from the block lists; False when it was not there."""
        net = _parse_prefix(prefix)
        m, key = self._lpm(net)
        return m.delete(key)

    def _lpm(self, net: Union[ipaddress.IPv4Network, ipaddress.IPv6Network]) -> Tuple[BpfMap, bytes]:
        if net.version == 4:
            return self.maps[MAP_BLOCK_V4], struct.pack("=I", net.prefixlen) + net.network_address.packed
        return self.maps[MAP_BLOCK_V6], struct.pack("=I", net.prefixlen) + net.network_address.packed

    def _port_flags(self, port: int, set_bits: int = 0, clear_bits: int = 0) -> int:
        m = self.maps[MAP_PORTS]
        old = (m.lookup(_check_port(port)) or b"\0")[0]
        new = (old | set_bits) & ~clear_bits & 0xFF
        if new != old:
            m.update(port, bytes([new]))
        return new

    def monitor_port(self, port: int, on: bool = True) -> None:
        """Adds ``port`` to (or removes it from) the monitored set (used with ``CFG_PORT_FILTER``)."""
        if on:
            self._port_flags(port, set_bits=PORT_MONITOR)
        else:
            self._port_flags(port, clear_bits=PORT_MONITOR)

    def block_port(self, port: int) -> None:
        """Drops TCP and UDP packets from or to ``port``."""
        self._port_flags(port, set_bits=PORT_BLOCK)

    def unblock_port(self, port: int) -> bool:
        """Stops dropping ``port``; False when it was not blocked."""
        was = bool((self.maps[MAP_PORTS].lookup(_check_port(port)) or b"\0")[0] & PORT_BLOCK)
        self._port_flags(port, clear_bits=PORT_BLOCK)
        return was

    def blocked(self) -> Dict[str, Any]:
        """``{"prefixes": {prefix: hits}, "ports": [port, ...]}``."""
        prefixes: Dict[str, int] = {}
        for name, size in ((MAP_BLOCK_V4, 4), (MAP_BLOCK_V6, 16)):
            for k, v in self.maps[name].items():
                plen = struct.unpack_from("=I", k)[0]
                addr = ipaddress.ip_address(k[4:4 + size])
                prefixes[f"{addr}/{plen}"] = struct.unpack("=Q", v)[0]
        ports = []
        for port, flags in enumerate(self._ports_raw()):
            if flags & PORT_BLOCK:
                ports.append(port)
        return {"prefixes": prefixes, "ports": ports}

    def _ports_raw(self) -> bytes:
        """The port flag array (one byte per port)."""
        m = self.maps[MAP_PORTS]
        out = bytearray(PORTS)
        for p in range(1, PORTS):
            v = m.lookup(p)
            if v and v[0]:
                out[p] = v[0]
        return bytes(out)

    # -- bypass

    def bypass(self, flow: FlowTuple, verdict: Union[str, int] = "pass") -> None:
        """Lets ``flow``'s connection (both directions) skip userspace: ``pass``, ``drop`` or ``redirect``."""
        v = BYPASS_VERDICTS.get(verdict, 0) if isinstance(verdict, str) else int(verdict)
        if v not in BYPASS_VERDICTS.values():
            raise XdpError(f"unknown bypass verdict {verdict!r}: use pass, drop or redirect")
        entry = BypassEntry(last_seen_ns=time.monotonic_ns(), verdict=v)
        self.maps[MAP_BYPASS].update(flow_key(flow), entry)

    def unbypass(self, flow: FlowTuple) -> bool:
        """Sends the connection back through userspace; False when it was not bypassed."""
        return self.maps[MAP_BYPASS].delete(flow_key(flow))

    def bypassed(self) -> List[Tuple[FlowKey, BypassEntry]]:
        """Every bypass entry."""
        return [(FlowKey.from_buffer_copy(k), BypassEntry.from_buffer_copy(v))
                for k, v in self.maps[MAP_BYPASS].items()]

    def expire_bypass(self, now_ns: Optional[int] = None) -> int:
        """Deletes entries idle for longer than the configured timeout; returns how many."""
        idle = self.config().bypass_idle_ns
        if not idle:
            return 0
        now = time.monotonic_ns() if now_ns is None else now_ns
        n = 0
        for k, v in self.maps[MAP_BYPASS].items():
            if now - BypassEntry.from_buffer_copy(v).last_seen_ns > idle and self.maps[MAP_BYPASS].delete(k):
                n += 1
        return n

    # -- AF_XDP sockets and debug

    def set_xsk(self, index: int, fd: int) -> None:
        """Puts an AF_XDP socket fd in the XSKMAP at ``index`` (see :func:`xsk_index`)."""
        self.maps[MAP_XSKS].update(index, struct.pack("=I", fd))

    def clear_xsk(self, index: int) -> bool:
        """Removes the socket at ``index``."""
        return self.maps[MAP_XSKS].delete(index)

    def last_steering(self) -> Debug:
        """The last steering decision (recorded only when loaded with ``debug=True``)."""
        return Debug.from_buffer_copy(self.maps[MAP_DEBUG].lookup(0) or bytes(ctypes.sizeof(Debug)))

    def test_run(self, frame: bytes) -> int:
        """Runs the program on one frame without sending anything (BPF_PROG_TEST_RUN); returns the action."""
        fd = self.prog_fd
        opened = False
        if fd < 0:
            fd, opened = obj_get(self.pin_dir(self.iface) / PROG_PIN), True
        try:
            return prog_test_run(fd, frame)[0]
        finally:
            if opened:
                os.close(fd)


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null meanwhile (C libraries print there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ---- detaching and status ------------------------------------------------------------------------------


def _remove_pins(pins: Path) -> None:
    if not pins.is_dir():
        return
    for p in pins.iterdir():
        try:
            p.unlink()
        except OSError:
            pass
    try:
        pins.rmdir()
    except OSError:
        pass


def read_state(iface: str) -> Dict[str, Any]:
    """The state file of ``iface`` ({} when absent or unreadable)."""
    try:
        return dict(json.loads(XdpProgram.state_path(iface).read_text()))
    except (OSError, ValueError):
        return {}


def detach(iface: str, state: Optional[Dict[str, Any]] = None) -> List[str]:
    """Removes mos-xdp from ``iface`` (and its peer): XDP program, pins, state file. Works after a crash.

    A program that is not mos-xdp's is left alone (XdpError). Returns a line per action taken.
    """
    state = state if state is not None else read_state(iface)
    done = []
    names = [iface] + ([state["peer"]] if state.get("peer") else [])
    all_links = {lx.ifname: lx for lx in links()}
    if iface not in all_links and not state and not XdpProgram.pin_dir(iface).exists():
        raise XdpError(f"interface {iface} does not exist (ip link show {iface})")
    for name in names:
        lx = all_links.get(name)
        if lx is None or not lx.prog_id:
            continue
        if lx.prog_name != PROG_NAME and lx.prog_id != state.get("prog_id"):
            raise XdpError(f"{name} has another XDP program ({lx.prog_name or '?'}, id {lx.prog_id}), "
                           "not mos-xdp's: left alone")
        xdp_remove(name, lx.mode)
        if link_xdp(name).prog_id:
            raise XdpError(f"cannot detach XDP program {lx.prog_id} from {name}")
        done.append(f"detached XDP program {lx.prog_id} ({lx.mode}) from {name}")
    pins = XdpProgram.pin_dir(iface)
    if pins.exists():
        _remove_pins(pins)
        done.append(f"removed pins {pins}")
    sp = XdpProgram.state_path(iface)
    if sp.exists():
        sp.unlink()
        done.append(f"removed state {sp}")
    return done


def status(iface: Optional[str] = None) -> List[Dict[str, Any]]:
    """What mos-xdp has on each interface of this namespace (or on ``iface``).

    One dict per interface that has an XDP program, mos-xdp pins or a state file: ``iface``,
    ``attached`` (bool), ``prog_id``, ``prog_name``, ``mode``, ``ours`` (the program is xdp_mos),
    ``pinned``, ``state``, ``counters`` (when pinned maps can be read), and ``problem``: None or a
    sentence for a leftover (a program without pins/state after a crash, pins without a program, ...).
    """
    all_links = links()
    names = {lx.ifname for lx in all_links if lx.prog_id}
    if PIN_ROOT.is_dir():
        names |= {p.name for p in PIN_ROOT.iterdir() if p.is_dir()}
    if RUN_DIR.is_dir():
        names |= {p.stem for p in RUN_DIR.glob("*.json")}
    peers = {read_state(n).get("peer") for n in names} - {None}
    if iface is not None:
        if iface not in names:
            link_xdp(iface)  # XdpError when the interface does not exist
        names = {iface}
    by_name = {lx.ifname: lx for lx in all_links}
    result = []
    for name in sorted(names):
        if name in peers and iface is None and not XdpProgram.pin_dir(name).exists():
            continue  # reported with its main interface
        lx = by_name.get(name)
        st = read_state(name)
        pinned = (XdpProgram.pin_dir(name) / MAP_CONFIG).exists()
        info: Dict[str, Any] = {
            "iface": name, "exists": lx is not None, "attached": bool(lx and lx.prog_id),
            "prog_id": lx.prog_id if lx else 0, "prog_name": lx.prog_name if lx else "",
            "mode": lx.mode if lx else "", "pinned": pinned, "state": st, "counters": None, "problem": None,
        }
        info["ours"] = info["prog_name"] == PROG_NAME or (bool(st) and info["prog_id"] == st.get("prog_id"))
        if pinned:
            try:
                with XdpProgram.open_pinned(name) as prog:
                    info["counters"] = prog.stats()
            except (XdpError, OSError) as e:
                info["problem"] = f"pinned maps unreadable: {e}"
        if info["attached"] and not info["ours"]:
            info["problem"] = f"another XDP program ({info['prog_name'] or '?'}) is attached, not mos-xdp's"
        elif info["attached"] and not (pinned and st):
            info["problem"] = ("mos-xdp program left attached without pins/state (crashed run?): "
                               f"run mos-xdp detach {name}")
        elif info["attached"] and st.get("prog_id") != info["prog_id"]:
            info["problem"] = (f"attached program {info['prog_id']} is not the one recorded "
                               f"({st.get('prog_id')}): run mos-xdp detach {name}")
        elif not info["attached"] and (pinned or st):
            info["problem"] = f"pins/state left without an attached program: run mos-xdp detach {name}"
        result.append(info)
    return result
