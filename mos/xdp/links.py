"""Interfaces and the XDP programs attached to them, through ip(8).

To be replaced by pyroute2 (``mos/net/netlink.py``); kept apart so that the swap touches this file only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
from typing import List

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
