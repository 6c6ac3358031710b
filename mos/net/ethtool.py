"""An interface's driver statistics and GRO setting through the ethtool ioctl (no ethtool(8) needed).

Acts in the calling thread's network namespace (the socket the ioctl goes through is made there). Failures
are :class:`mos.net.netlink.NetError` with a one-line message.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from typing import Dict

from .netlink import NetError

# <linux/sockios.h>, <linux/ethtool.h>
_SIOCETHTOOL = 0x8946
_ETHTOOL_GGRO = 0x2B
_ETHTOOL_GSTRINGS = 0x1B
_ETHTOOL_GSTATS = 0x1D
_ETHTOOL_GSSET_INFO = 0x37
_ETH_SS_STATS = 1
_ETH_GSTRING_LEN = 32
_IFNAMSIZ = 16


def _ioctl(ifname: str, buf: ctypes.Array) -> None:
    """SIOCETHTOOL on ``ifname`` with ``buf`` (a command struct) as ifr_data."""
    ifr = struct.pack(f"{_IFNAMSIZ}sP", ifname.encode()[:_IFNAMSIZ - 1], ctypes.addressof(buf))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifr)
        except OSError as e:
            raise NetError(f"ethtool on {ifname}: {os.strerror(e.errno) if e.errno else e}") from None


def stats(ifname: str) -> Dict[str, int]:
    """The driver's statistics (what ``ethtool -S IFNAME`` prints), by name; {} when the driver has none."""
    info = ctypes.create_string_buffer(struct.pack("=IIQI", _ETHTOOL_GSSET_INFO, 0, 1 << _ETH_SS_STATS, 0))
    _ioctl(ifname, info)
    mask = struct.unpack_from("=Q", info, 8)[0]
    n = struct.unpack_from("=I", info, 16)[0] if mask & (1 << _ETH_SS_STATS) else 0
    if not n:
        return {}
    strings = ctypes.create_string_buffer(struct.pack("=III", _ETHTOOL_GSTRINGS, _ETH_SS_STATS, n),
                                          12 + n * _ETH_GSTRING_LEN)
    _ioctl(ifname, strings)
    values = ctypes.create_string_buffer(struct.pack("=II", _ETHTOOL_GSTATS, n), 8 + n * 8)
    _ioctl(ifname, values)
    names = [strings.raw[12 + i * _ETH_GSTRING_LEN:12 + (i + 1) * _ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
             for i in range(n)]
    return dict(zip(names, struct.unpack_from(f"={n}Q", values, 8)))


def gro(ifname: str) -> bool:
    """Whether generic receive offload is on (``ethtool -k IFNAME``'s generic-receive-offload)."""
    buf = ctypes.create_string_buffer(struct.pack("=II", _ETHTOOL_GGRO, 0))
    _ioctl(ifname, buf)
    return bool(struct.unpack_from("=I", buf, 4)[0])


__all__ = ["gro", "stats"]
