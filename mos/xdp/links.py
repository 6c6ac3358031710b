"""Interfaces and the XDP programs attached to them, as XDP control reports them: the netlink calls are
:mod:`mos.net.netlink` (pyroute2); this adds the program's name and turns netlink errors into XdpError."""

from __future__ import annotations

import dataclasses
from typing import List

from mos.net import netlink

from .errors import XdpError
from .maps import prog_name_by_id


@dataclasses.dataclass
class LinkXdp:
    """An interface and the XDP program attached to it (``prog_id`` 0: none)."""

    ifname: str
    ifindex: int
    prog_id: int = 0
    mode: str = ""  # "native", "generic", "offload", "multi"
    prog_name: str = ""
    mac: str = ""  # the interface's Ethernet address, "" when it has none


def _with_name(lk: netlink.Link) -> LinkXdp:
    name = (prog_name_by_id(lk.prog_id) or "") if lk.prog_id else ""
    return LinkXdp(lk.ifname, lk.ifindex, lk.prog_id, lk.mode, name, lk.mac)


def links() -> List[LinkXdp]:
    """Every interface of the current network namespace, with its XDP program."""
    try:
        return [_with_name(lk) for lk in netlink.links()]
    except netlink.NetError as e:
        raise XdpError(str(e)) from None


def link_xdp(ifname: str) -> LinkXdp:
    """The XDP state of one interface; XdpError when it does not exist."""
    try:
        return _with_name(netlink.link_xdp(ifname))
    except netlink.NetError as e:
        raise XdpError(str(e)) from None


def xdp_remove(ifname: str, mode: str = "") -> None:
    """Detaches whatever XDP program ``ifname`` has (in ``mode``, or every mode); best effort."""
    try:
        netlink.xdp_detach(ifname, mode)
    except netlink.NetError:
        pass  # already gone, or the interface with it: what the caller wanted


def ifindex_of(ifname: str) -> int:
    """The interface's index; XdpError when it does not exist."""
    try:
        return netlink.ifindex(ifname)
    except netlink.NetError as e:
        raise XdpError(str(e)) from None
