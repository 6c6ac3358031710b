"""One worker's live session: the verdicts and XDP control handlers reach through the monitor.

:class:`LiveSession` is the :class:`mos.source.LiveControl` of a live run: ``Connection.drop``,
``bypass``, ``drop_last_packet``, ``set_last_packet`` and ``Monitor.bpf`` / ``block`` end here, with the
monitor's :class:`mos.monitor.EnginePort` telling which packet is being handled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from mos import xdp

from ..abi import lib
from ..errors import MosError
from ..inject import TCP_FLAGS, current_packet, fail

if TYPE_CHECKING:
    from ..connection import Connection
    from ..monitor import EnginePort, Monitor

ARP_STATE_KEY = "arp_answers"
"""Where the program's state file lists the addresses a run answers ARP for (:func:`undo_arp`)."""

LAYERS = {"eth": 0, "ip": 1, "tcp": 2, "udp": 2, "l4": 2, "payload": 3}
"""``set_last_packet`` layers, as ``mos_xsk_header_offset`` numbers them."""


class LiveError(MosError):
    """A user-facing error of the live path (one line)."""


class LiveSession:
    """One worker's view of a live run: the XDP program's maps and this worker's AF_XDP sockets."""

    def __init__(self, prog: xdp.XdpProgram, xsk: Any, iface: str, peer: Optional[str], workers: int,
                 worker: int) -> None:
        self.prog = prog
        self.xsk = xsk
        self.iface = iface
        self.peer = peer
        self.workers = workers
        self.worker = worker

    @property
    def inline(self) -> bool:
        """Inline (bump in the wire) rather than passive."""
        return self.peer is not None

    def drop(self, port: EnginePort, conn: Connection) -> None:
        """The connection's packets are dropped: in XDP from now on (under its alias too), and those of the
        batch being handled."""
        self.prog.bypass(flow_of(conn), "drop")
        alias = alias_flow_of(conn)
        if alias is not None:
            self.prog.bypass(alias, "drop")
        p = port.current_packet()
        if p is not None:
            lib.mos_xsk_drop_flow(self.xsk, port.engine, p)

    def bypass(self, port: EnginePort, conn: Connection) -> None:
        """The connection's later packets skip userspace: passed to the host, or forwarded inline in XDP."""
        if conn.alias is not None:
            raise MosError(f"connection {conn.id} has an alias: bypassed, XDP would forward its packets "
                           "untranslated")
        self.prog.bypass(flow_of(conn), "redirect" if self.inline else "pass")

    def drop_packet(self, port: EnginePort) -> None:
        """Only the packet being handled is dropped."""
        p = port.current_packet()
        if p is None or lib.mos_xsk_verdict(self.xsk, port.engine, p, lib.MOS_VERDICT_DROP) != 0:
            raise MosError("no live packet is being handled")

    def rewrite(self, port: EnginePort, data: bytes, offset: int, layer: str, resize: bool) -> int:
        """Overwrites bytes of the packet being handled (checksums fixed); returns its new length."""
        p = port.current_packet()
        if p is None:
            raise MosError("no live packet is being handled")
        if layer not in LAYERS:
            raise MosError(f"unknown layer {layer!r} (choose from {', '.join(LAYERS)})")
        base = lib.mos_xsk_header_offset(self.xsk, port.engine, p, LAYERS[layer])
        if base < 0:
            raise MosError(f"the packet has no {layer} layer")
        if offset < 0:
            raise MosError("offset must be >= 0")
        start = base + offset
        n = lib.mos_xsk_rewrite(self.xsk, port.engine, p, start, data, len(data),
                                start + len(data) if resize else 0)
        if n == -2:
            raise MosError(f"{start + len(data)} bytes do not fit in an AF_XDP frame")
        if n < 0:
            raise MosError("no live packet is being handled")
        port.packet_changed(p)
        return int(n)


    def answer_arp(self, addr: str) -> str:
        """ARP requests for ``addr`` are answered in XDP for the rest of the run (recorded in the program's
        state, so that the run's end, or a run taking over after a crash, takes them back)."""
        ip = self.prog.answer_arp(addr)
        if self.prog.state is not None:
            answered = self.prog.state.setdefault(ARP_STATE_KEY, [])
            if ip not in answered:
                answered.append(ip)
            xdp.write_state(self.iface, self.prog.state)
        return ip

    # -- what the app sends (mos.inject) -------------------------------------------------------------
    def send(self, port: EnginePort, conn: Connection, side: int, payload: bytes, flags: int) -> int:
        """A segment of ``conn`` to endpoint ``side`` out of the interface it is behind (passive: the
        monitored one); inline, its bytes shift the sender's later sequence numbers. Returns its length."""
        n = lib.mos_xsk_inject(self.xsk, port.engine, current_packet(port), conn._slot, conn.id, side, flags,
                               payload, len(payload))
        if n < 0:
            raise fail(n, conn, len(payload))
        return int(n)

    def reset(self, port: EnginePort, conn: Connection) -> None:
        """A RST to each endpoint, at once (after the frames of the batch already taken by the tracker,
        which its numbers follow); the connection's later frames are dropped (inline) and it ends in the
        engine with reason RST."""
        rst = TCP_FLAGS["R"] | TCP_FLAGS["A"]
        self.send(port, conn, 0, b"", rst)
        self.send(port, conn, 1, b"", rst)
        if self.inline:
            # the connection's frames the tracker has not taken are not sent on: the RSTs' numbers do not
            # cover them (order "batch" took the whole batch before the handlers: those go on)
            if conn._mon.order != "batch":
                lib.mos_xsk_drop_after(self.xsk, port.engine, current_packet(port), conn._slot, conn.id)
            self.prog.bypass(flow_of(conn), "drop")
        if lib.mos_conn_reset(port.engine, conn._slot, conn.id) != 0:
            raise fail(-1, conn)

    def send_packet(self, port: EnginePort, frame: bytes, iface: Optional[str]) -> None:
        """A raw frame out of ``iface`` (the monitored interface by default, or the inline peer)."""
        names = [self.iface] + ([self.peer] if self.peer else [])
        name = iface or self.iface
        if name not in names:
            raise MosError(f"cannot send out of {name!r}: this run has {', '.join(names)}")
        rc = lib.mos_xsk_send(self.xsk, names.index(name), frame, len(frame))
        if rc == -4:
            raise MosError("no free AF_XDP frame or TX descriptor to send with (counted in inject_failed)")
        if rc != 0:
            raise MosError(f"cannot send a frame of {len(frame)} bytes out of {name}")
        lib.mos_engine_injected(port.engine, len(frame))


def flow_of(conn: Connection) -> xdp.FlowTuple:
    """The connection or UDP flow as the XDP program keys it (client -> server, its protocol, VLAN ids folded
    as the program does)."""
    i = conn.info()
    vlan_key = 0
    for vid in i["vlan"]:
        vlan_key = (vlan_key << 12) | (vid & 0xFFF)
    return xdp.FlowTuple(i["client_addr"], i["server_addr"], i["client_port"], i["server_port"], i["protocol"],
                         vlan_key)


def undo_arp(prog: xdp.XdpProgram) -> None:
    """Stops answering ARP for what a run recorded (:meth:`LiveSession.answer_arp`)."""
    for ip in (prog.state or {}).pop(ARP_STATE_KEY, []):
        prog.unanswer_arp(ip)


def alias_flow_of(conn: Connection) -> Optional[xdp.FlowTuple]:
    """The connection under its alias (``Connection.set_alias``) as the XDP program keys it, or None."""
    alias = conn.alias
    if alias is None:
        return None
    flow = flow_of(conn)
    side, addr, port = alias
    if int(side) == 0:
        return xdp.FlowTuple(addr, flow.dst, port, flow.dport, flow.proto, flow.vlan_key)
    return xdp.FlowTuple(flow.src, addr, flow.sport, port, flow.proto, flow.vlan_key)


# ---- the session of this process, and the hooks apps register before a run -----------------------------

_current: Optional[LiveSession] = None
_on_start: List[Callable[[Monitor], Any]] = []


def on_start(fn: Callable[[Monitor], Any]) -> Callable[[Monitor], Any]:
    """Registers ``fn(monitor)`` to run once the live run is set up, before traffic reaches the app and
    before workers are forked (usable as a decorator).

    The place for what needs the XDP program, e.g. ``monitor.block("10.0.0.0/8")`` from an app's ``init``.
    """
    _on_start.append(fn)
    return fn


def worker() -> Tuple[int, int]:
    """``(index, count)`` of the worker running in this process (``(0, 1)`` outside a live run)."""
    return (_current.worker, _current.workers) if _current is not None else (0, 1)


def set_current(session: Optional[LiveSession]) -> None:
    """The session this process runs (what :func:`worker` answers from); None after the run."""
    global _current
    _current = session


def run_start_hooks(mon: Monitor, session: LiveSession) -> None:
    """Runs the :func:`on_start` hooks with ``session`` as the monitor's live session."""
    if not _on_start:
        return
    set_current(session)
    try:
        with mon.session(session):
            for fn in _on_start:
                fn(mon)
    finally:
        set_current(None)
