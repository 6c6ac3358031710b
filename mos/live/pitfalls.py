"""Set-ups where a live run would fail in silence, found and told in one line each.

- **A veth peer that cannot take XDP redirects.** XDP forwards what the engine does not take (ARP, ICMP,
  bypassed connections, inline) by redirecting it into the other interface; into a veth that works only
  when the veth's other end has NAPI, that is GRO on or an XDP program of its own. Otherwise the kernel
  drops every such frame, counted in the receiving veth's ``rx_queue_N_drops``: ARP never crosses, so no
  connection starts and nothing tells why. :class:`PitfallWatch` reads those counters once a second and
  says which end needs ``ethtool -K ... gro on``.
- **Generic XDP behind GRO.** In generic (skb) mode XDP runs after GRO, so frames bigger than the MTU reach
  the program, and AF_XDP drops those larger than its frame: said at start (:func:`startup_notes`).

Partial checksums of a local sender's offload are not a pitfall any more: the engine completes them
(:meth:`mos.monitor.Monitor.complete_partial_checksums`).
"""

from __future__ import annotations

import sys
import threading
from typing import Dict, List, Optional

from mos.net import ethtool, netlink

CHECK_S = 1.0


def _redirect_drops(ifname: str) -> Optional[int]:
    """The veth's receive-queue drops (frames its XDP program redirected that the kernel could not send on),
    None when the interface is no veth or has no such counter."""
    try:
        st = ethtool.stats(ifname)
    except netlink.NetError:
        return None
    drops = [v for k, v in st.items() if k.startswith("rx_queue_") and k.endswith("_drops") and "xdp" not in k]
    return sum(drops) if drops else None


class PitfallWatch:
    """Watches the interfaces of a run for frames the kernel drops after XDP redirected them (a thread)."""

    def __init__(self, iface: str, peer: Optional[str]) -> None:
        self.pairs = [(iface, peer), (peer, iface)] if peer else [(iface, None)]
        self.start: Dict[str, int] = {}
        for rx, _ in self.pairs:
            assert rx is not None
            if netlink.link_xdp(rx).kind == "veth":
                n = _redirect_drops(rx)
                if n is not None:
                    self.start[rx] = n
        self.told: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mos-pitfalls", daemon=True)

    def begin(self) -> None:
        """Starts watching (only veths are watched; nothing to do otherwise)."""
        if self.start:
            self._thread.start()

    def end(self) -> None:
        """Stops watching; a last check first, so that a short run is told too."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=2 * CHECK_S)
            self.check()

    def _loop(self) -> None:
        while not self._stop.wait(CHECK_S):
            self.check()

    def check(self) -> List[str]:
        """Says (once per interface) what drops frames; returns the lines said so far."""
        for rx, to in self.pairs:
            assert rx is not None
            if rx not in self.start or rx in self.told:
                continue
            n = _redirect_drops(rx)
            if n is None or n <= self.start[rx]:
                continue
            self.told.append(rx)
            lost = n - self.start[rx]
            if to:
                line = (f"mos-xdp: frames XDP forwards from {rx} into {to} are dropped by the kernel ({lost} "
                        f"so far, {rx} rx_queue drops): the other end of veth {to} needs GRO or an XDP program to "
                        f"receive them: on its host, ethtool -K <that interface> gro on\n")
            else:
                line = f"mos-xdp: frames arriving on {rx} are dropped by the kernel after XDP ({lost} so far)\n"
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
        return self.told


def startup_notes(iface: str, peer: Optional[str], xdp_mode: str) -> List[str]:
    """One line per interface where generic XDP sits behind GRO (frames bigger than AF_XDP's are dropped)."""
    notes: List[str] = []
    if xdp_mode != "generic":
        return notes
    for name in filter(None, (iface, peer)):
        try:
            on = ethtool.gro(name)
        except netlink.NetError:
            continue
        if on:
            notes.append(f"mos-xdp: {name}: generic XDP runs after GRO, so merged frames bigger than an AF_XDP "
                         f"frame are dropped (k_rx_dropped): ethtool -K {name} gro off\n")
    return notes
