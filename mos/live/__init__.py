"""The live path: XDP steers packets into AF_XDP sockets, the engine reads them in place (``run --iface``).

``run_live(monitor, iface, peer=None, workers=1)`` attaches the XDP program ``xdp_mos.c`` (through :mod:`mos.xdp`,
unless ``mos-xdp attach`` already did), creates the AF_XDP sockets (``userspace/xsk.c``, libxdp), puts
them into the program's XSKMAP and loops: receive a batch, feed it to the engine (handlers run), then
recycle the frames -- passive mode -- or send each one out of the other interface unless the app dropped
it -- inline mode, ``peer`` given. SIGINT and SIGTERM stop the run: connections end (EOF), what ``run``
attached is detached, and the final counters are printed on stderr.

Design (see also the comments of ``userspace/xsk.c`` and ``bpf/xdp_mos.c``):

* **One UMEM** for the run. Each (interface, receive queue) has its fill and completion ring; each worker
  has one socket per (interface, queue), every queue of both interfaces served. Inline forwarding puts
  the received descriptor in the other interface's TX ring: no copy in userspace (the kernel copies in
  copy mode; with zero-copy drivers nothing is copied at all).
* **Copy or zero-copy**: zero-copy when the drivers support it, else copy (veth: copy). Both interfaces
  of a pair must use the same mode (one UMEM), so one lacking zero-copy makes both copy.
* **Workers** (``workers > 1``): processes forked after the sockets exist, each with its own engine (a copy
  of the monitor the app initialised). The XDP program sends a connection (both directions, any queue)
  to worker ``flow_hash % workers``: each worker owns a socket on every queue of both interfaces, so the
  receiving queue does not matter. Workers of one queue share its fill/completion ring (the kernel
  requires it), guarded by a lock in shared memory. Each worker process returns from :func:`run_live`
  (the CLI then runs the app's ``finish`` there: one report per worker); the parent exits when they end.
* **Time**: packets are stamped with CLOCK_REALTIME when received; idle expiry and timers advance once a
  second without packets.
* **Monitor interface**: each worker runs ``Monitor.run(XskSource(session, ...))``
  (:mod:`mos.live.source`): the C pump ``mos_xsk_pump`` keeps the receive/engine/recycle loop in C, and the
  source reaches the monitor only through the :class:`mos.monitor.EnginePort` it is handed. The
  :class:`LiveSession` (:mod:`mos.live.session`) is the source's ``session``: what ``Connection.drop`` and
  ``Monitor.block`` & co. act on.

Modules: :mod:`mos.live.session` (verdicts, ``on_start``, ``worker``), :mod:`mos.live.source` (the AF_XDP
source), :mod:`mos.live.run` (``run_live``: set-up, workers, teardown).
"""

from __future__ import annotations

from .run import run_live, rx_queues
from .session import LiveError, LiveSession, flow_of, on_start, worker
from .source import XskSource

__all__ = ["LiveError", "LiveSession", "XskSource", "flow_of", "on_start", "run_live", "rx_queues", "worker"]
