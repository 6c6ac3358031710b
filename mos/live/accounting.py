"""Every frame of a live run accounted for: the XDP program's counters, the AF_XDP rings' and the engine's
add up (``mos-xdp run`` prints the balance when it stops).

Three equations, each over the run (the program's counters are read as differences from the run's start,
since a program made by ``mos-xdp attach`` outlives runs):

1. **In XDP**, every frame the program saw has exactly one verdict and exactly one reason (the counter
   kinds of ``bpf/mos_shared.h``): ``rx = pass + drop + redirect = sum of the reasons``.
2. **Into userspace**, every frame the program sent to an AF_XDP socket (``xsk_redirect``) was received by a
   worker (``rx_packets``), dropped by the kernel at the socket (``k_rx_dropped``: no free frame or too
   big; ``k_rx_ring_full``: the engine did not keep up), or left unread in a ring when the run stopped.
3. **In each worker**, every frame received is one the engine counted (``packets``, which its dispositions
   partition, see :func:`mos.stats.accounted`); inline, each was then sent on (``tx_packets``), dropped by a
   verdict (``verdict_drop``) or lost to a full TX ring (``tx_ring_full``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping

from mos import xdp

RING_DROPS = ("k_rx_dropped", "k_rx_ring_full")
"""The kernel's per-socket counts of frames it could not put in an RX ring (XDP_STATISTICS)."""


def delta(now: Mapping[str, int], start: Mapping[str, int]) -> Dict[str, int]:
    """Counters since ``start``."""
    return {k: v - start.get(k, 0) for k, v in now.items()}


@dataclass
class Balance:
    """The run's figures and the equations they must satisfy; :attr:`problems` lists those that do not."""

    xdp: Dict[str, int]
    workers: List[Dict[str, int]]
    unread: int
    inline: bool
    problems: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        kinds = xdp.abi.COUNTER_KINDS
        rx = self.xdp.get("rx", 0)
        verdicts = sum(v for k, v in self.xdp.items() if kinds.get(k) == "verdict")
        reasons = sum(v for k, v in self.xdp.items() if kinds.get(k) == "reason")
        if not rx == verdicts == reasons:
            self.problems.append(f"xdp: rx {rx} but verdicts {verdicts}, reasons {reasons}")
        out = self.xdp.get("xsk_redirect", 0)
        if out != self.received + self.ring_drops + self.unread:
            self.problems.append(f"sent to the engine {out} but received {self.received} + ring drops "
                                 f"{self.ring_drops} + unread {self.unread}")
        if self.inline:
            for w, c in enumerate(self.workers):
                done = c.get("tx_packets", 0) + c.get("verdict_drop", 0) + c.get("tx_ring_full", 0)
                if done != c.get("rx_packets", 0):
                    self.problems.append(f"worker {w}: received {c.get('rx_packets', 0)} but sent on, dropped "
                                         f"or lost {done}")

    @property
    def received(self) -> int:
        """Frames the workers took from their RX rings."""
        return sum(c.get("rx_packets", 0) for c in self.workers)

    @property
    def ring_drops(self) -> int:
        """Frames the kernel dropped at the sockets."""
        return sum(c.get(k, 0) for c in self.workers for k in RING_DROPS)

    def line(self) -> str:
        """One line: the equations with their figures, and ``ok`` or what does not add up."""
        x = self.xdp
        verdicts = " + ".join(f"{k} {v}" for k, v in x.items() if xdp.abi.COUNTER_KINDS.get(k) == "verdict"
                              and (v or k != "tx"))  # tx (an ARP reply's fallback) only when there was one
        head = (f"balance: xdp rx {x.get('rx', 0)} = {verdicts}; to the engine {x.get('xsk_redirect', 0)} = "
                f"received {self.received} + ring drops {self.ring_drops} + unread at stop {self.unread}")
        return head + (": ok" if not self.problems else ": DOES NOT ADD UP: " + "; ".join(self.problems))


def engine_line(engine: Mapping[str, int], rings: Mapping[str, int], worker: int) -> str:
    """Equation 3's first half for one worker: the engine counted every frame the worker received."""
    from ..stats import accounted

    got, counted, parts = rings.get("rx_packets", 0), engine.get("packets", 0), accounted(dict(engine))
    ok = got == counted == parts
    return (f"balance: worker {worker}: received {got}, engine packets {counted}, in a disposition {parts}: "
            + ("ok" if ok else "DOES NOT ADD UP"))
