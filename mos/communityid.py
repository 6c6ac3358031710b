"""Community ID v1 (https://github.com/corelight/community-id-spec), the flow hash Zeek and Suricata print."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from typing import Any, Dict

from .events import PROTOCOLS


def community_id(src: str, dst: str, sport: int, dport: int, proto: int = 6, seed: int = 0) -> str:
    """The ``1:<base64>`` Community ID of a flow; the same for both directions."""
    return community_id_packed(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, sport, dport,
                               proto, seed)


def community_id_packed(a: bytes, b: bytes, sport: int, dport: int, proto: int = 6, seed: int = 0) -> str:
    """The same from packed addresses (4 or 16 bytes)."""
    if (a, sport) > (b, dport):
        a, b, sport, dport = b, a, dport, sport
    data = struct.pack("!H", seed) + a + b + struct.pack("!BBHH", proto, 0, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def community_id_of(info: Dict[str, Any], seed: int = 0) -> str:
    """The Community ID of a connection or UDP flow from its ``Connection.info()`` dict."""
    a = ipaddress.ip_address(info["client_addr"]).packed
    b = ipaddress.ip_address(info["server_addr"]).packed
    return community_id_packed(a, b, info["client_port"], info["server_port"], PROTOCOLS[info["protocol"]], seed)
