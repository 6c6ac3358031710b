"""Which AF_XDP socket the program picks for a connection: the symmetric flow key, its hash, the XSKMAP index.

The key is built and hashed by the header's own functions (``mos_flow_key_make``, ``mos_flow_hash``,
``mos_xsk_index`` in ``bpf/mos_shared.h``, compiled into the cffi module), so a prediction made here is
the program's decision by construction, not by a second implementation.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from typing import Any, Union

from .._engine import ffi, lib
from . import abi
from .errors import XdpError

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


_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96, where IPv4 addresses sit in an IPv6 key


def _addr_words(addr: Address) -> Any:
    """The address as the four network-order words the key holds; IPv4 becomes IPv4-mapped IPv6, as in
    the XDP program."""
    if isinstance(addr, str):
        # inet_pton: a tenth of ipaddress's time, and this runs for every bypass insert
        try:
            if ":" in addr:
                return ffi.from_buffer("uint32_t[]", socket.inet_pton(socket.AF_INET6, addr))
            return ffi.from_buffer("uint32_t[]", _V4_MAPPED + socket.inet_pton(socket.AF_INET, addr))
        except OSError:
            addr = ipaddress.ip_address(addr)  # ValueError for what is no address; other spellings pass
    packed = addr.packed if addr.version == 6 else _V4_MAPPED + addr.packed
    return ffi.from_buffer("uint32_t[]", packed)


def flow_key(flow: FlowTuple, fragment: bool = False) -> Any:
    """The canonical ``struct mos_flow_key`` the XDP program builds for ``flow`` (either direction gives
    the same key); ``fragment``: as for an IP fragment, whose key carries no ports."""
    key = abi.new(abi.FLOW_KEY)
    sport, dport = (0, 0) if fragment else (socket.htons(flow.sport), socket.htons(flow.dport))
    lib.mos_flow_key_make(key, _addr_words(flow.src), _addr_words(flow.dst), sport, dport, flow.vlan_key,
                          _proto_number(flow.proto))
    return key


def hash_key(key: Any) -> int:
    """``mos_flow_hash`` of a ``struct mos_flow_key`` (a pointer, or a struct field such as ``debug.key``)."""
    if ffi.typeof(key).kind == "struct":
        key = ffi.addressof(key)
    return int(lib.mos_flow_hash(key))


def flow_hash(flow: FlowTuple) -> int:
    """The symmetric hash the XDP program computes: ``flow_hash(f) == flow_hash(f.reversed())``."""
    return int(lib.mos_flow_hash(flow_key(flow)))


def xsk_index(slot: int, queue: int, worker: int) -> int:
    """``mos_xsk_index``: where worker ``worker``'s socket bound to (slot's interface, queue) goes."""
    return int(lib.mos_xsk_index(slot, queue, worker))


def steer(flow: FlowTuple, workers: int, queue: int = 0, slot: int = 0) -> int:
    """The XSKMAP index the program picks for ``flow`` arriving on ``queue`` of ``slot``'s interface."""
    workers = min(max(workers, 1), abi.MAX_WORKERS)
    return xsk_index(slot, queue, flow_hash(flow) % workers)
