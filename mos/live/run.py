"""Setting up and tearing down a live run: ``run_live`` (the XDP program, AF_XDP sockets, workers).

The design is described in :mod:`mos.live`; this module attaches the program (unless ``mos-xdp attach``
did), opens the sockets and fills the XSKMAP, runs the app's :func:`~mos.live.on_start` hooks, forks the
workers, runs ``Monitor.run(XskSource(...))`` in each, and undoes it all on the way out.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from mos import xdp
from mos.net import netlink
from mos.xdp import state
from mos.xdp.program import fail_mode

from .. import bpf_filter
from ..abi import ffi, lib, xsk_counter_names
from ..monitor import Monitor
from . import accounting, pitfalls
from .session import LiveError, LiveSession, run_start_hooks, undo_arp
from .source import BATCH, StopFlag, XskSource

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# ---- set-up helpers ------------------------------------------------------------------------------------


def rx_queues(ifname: str) -> int:
    """Receive queues in use on an interface of this network namespace.

    The driver's channel count when it gives one, else the allocated queues (IFLA_NUM_RX_QUEUES). The
    latter is only what was allocated: a veth made without ``numrxqueues`` has one queue per CPU
    allocated and one in use, and an AF_XDP socket cannot bind to the others.
    """
    try:
        allocated = netlink.link_xdp(ifname).num_rx_queues
    except netlink.NetError as e:
        raise LiveError(str(e)) from None
    n = int(lib.mos_xsk_channels_in_use(ifname.encode())) or allocated
    return max(1, min(n, allocated, xdp.MAX_QUEUES))


def _attach(iface: str, peer: Optional[str], workers: int, queues: int, mode: str,
            on_failure: Optional[str]) -> Tuple[xdp.XdpProgram, bool]:
    """The program on ``iface``: attached now, or the one already there (made by ``mos-xdp attach``, or
    left by a run that died: adopted, and said so). Refused when another run's engine serves it.

    Returns (program with pinned maps open, whether this run owns it: it detaches it when it ends).
    """
    lx = xdp.link_xdp(iface)
    if lx.prog_id and xdp.XdpProgram.is_pinned(iface):
        prog = xdp.XdpProgram.open_pinned(iface)
        try:
            return prog, _adopt(prog, iface, peer)
        except BaseException:
            prog.close()
            raise
    loaded = xdp.XdpProgram.load(iface, peer=peer, workers=workers, queues=queues, on_failure=on_failure)
    try:
        loaded.attach(mode, owner="run")
        for w in loaded.warnings:
            sys.stderr.write(f"mos-xdp: warning: {w}\n")
    finally:
        loaded.close()  # the program stays attached and pinned; no bcc object survives into workers
    return xdp.XdpProgram.open_pinned(iface), True


def _adopt(prog: xdp.XdpProgram, iface: str, peer: Optional[str]) -> bool:
    """Takes over the program already on ``iface``; returns whether this run now owns it."""
    st = prog.state
    had = st.get("peer")
    if (had or None) != (peer or None):
        want = f"inline with {peer}" if peer else "passive"
        was = f"inline with {had}" if had else "passive"
        raise LiveError(f"{iface} already has mos-xdp attached ({was}), not {want}: run mos-xdp detach {iface} first")
    engine: Dict[str, Any] = st.get("engine") or {}
    if state.process_alive(engine):
        raise LiveError(f"{iface} is served by another mos-xdp run (pid {engine.get('pid')}): stop it first, "
                        "or run on another interface")
    owner = st.get("owner", "attach")
    if owner == "run" and state.process_alive(st):
        raise LiveError(f"{iface} belongs to a mos-xdp run that is starting or stopping (pid {st['pid']}): "
                        "wait for it, or stop it")
    meets = _traffic_meets(prog)
    if owner == "run":
        sys.stderr.write(f"mos-xdp: {iface}: adopting the XDP program (prog {st.get('prog_id')}) left by a run "
                         f"that died (pid {st.get('pid')}), under which {meets}; this run detaches it when it ends\n")
        st.update({"owner": "run", **state.this_process()})
        state.write_state(iface, st)
        return True
    if engine:
        sys.stderr.write(f"mos-xdp: {iface}: the run that served the program made by mos-xdp attach died (pid "
                         f"{engine.get('pid')}); {meets} until now\n")
    return False


def _traffic_meets(prog: xdp.XdpProgram) -> str:
    """What monitored traffic meets while no engine serves ``prog``, in words."""
    if prog.on_failure() == "drop":
        return "monitored traffic is dropped (on-failure drop)"
    return "monitored traffic passes uninspected (on-failure pass)"


def _counter_lines(prog: xdp.XdpProgram, xsk: Any, workers: int, start: Dict[str, int]) -> List[str]:
    """The run's counters (the program's since the run started) and their balance (:mod:`.accounting`)."""
    lines = ["mos-xdp: stopped; final counters"]
    try:
        d = accounting.delta(prog.stats(), start)
    except (OSError, xdp.XdpError) as e:
        return lines + [f"  xdp: counters unreadable ({e})"]
    lines.append("  xdp:    " + " ".join(f"{k}={v}" for k, v in d.items() if v))
    if prog.state.get(bpf_filter.STATE_KEY):
        lines.append(f"  filter: {d.get('pass_not_monitored', 0)} frames left out in XDP (pass_not_monitored)")
    per_worker = []
    for w in range(workers):
        c = lib.mos_xsk_counters(xsk, w)
        vals = {name: int(c[i]) for i, name in enumerate(xsk_counter_names())} if c != ffi.NULL else {}
        per_worker.append(vals)
        lines.append(f"  af_xdp worker {w}: " + " ".join(f"{k}={v}" for k, v in vals.items() if v))
    bal = accounting.Balance(d, per_worker, int(lib.mos_xsk_rx_pending(xsk)), bool(prog.state.get("peer")))
    lines.append("  " + bal.line())
    return lines


def _veth_checksums(mon: Monitor, iface: str, peer: Optional[str]) -> None:
    """On a veth, frames a local stack sent with checksum offload carry partial checksums (no NIC finishes
    them): they are completed in the frame, so that validation stays on and a forwarded frame is one the
    receiving host accepts. Said in one line; with validation off they are forwarded as they are."""
    veths = [n for n in (iface, peer) if n and netlink.link_xdp(n).kind == "veth"]
    if not veths:
        return
    names = ", ".join(veths)
    if mon.checksum_state == "off":
        if peer:
            sys.stderr.write(f"mos-xdp: checksum off on veth {names}: partial checksums of a sender's offload are "
                             "forwarded as they are, and the receiving host drops them (--checksum auto completes "
                             "them)\n")
        return
    mon.complete_partial_checksums()
    sys.stderr.write(f"mos-xdp: checksums on veth {names}: partial ones (a local sender's offload) are completed "
                     "before the engine and the wire (checksum_completed), all others validated\n")


def _run_worker(mon: Monitor, session: LiveSession, stop: StopFlag, batch: int, deadline: float) -> None:
    mon.run(XskSource(session, stop, batch, deadline))
    c = lib.mos_xsk_counters(session.xsk, session.worker)
    rings = {name: int(c[i]) for i, name in enumerate(xsk_counter_names())} if c != ffi.NULL else {}
    try:
        sys.stderr.write(f"mos-xdp: {accounting.engine_line(mon.stats(), rings, session.worker)}\n")
    except (OSError, ValueError):
        pass


def run_live(mon: Monitor, iface: str, peer: Optional[str] = None, workers: int = 1, *, mode: str = "auto",
             copy: Optional[bool] = None, busy_poll: bool = True, batch: int = BATCH,
             duration: Optional[float] = None, ring: int = 0, forward_malformed: bool = False,
             on_failure: Optional[str] = None) -> Dict[str, int]:
    """Run ``mon`` on live traffic of ``iface`` (inline between ``iface`` and ``peer`` when given).

    ``mode``: XDP attach mode (auto, native, generic); ``copy``: force AF_XDP copy (True) or zero-copy
    (False) mode, None picks; ``duration``: stop after so many seconds (None: on SIGINT/SIGTERM); ``ring``:
    AF_XDP RX/TX descriptors per socket (a power of two, 64..65536; 0: 4096), each interface queue getting
    2 x ``ring`` frames of 4 KiB: a bigger ring rides out longer stalls of the engine at higher rates.
    Inline, frames the engine finds malformed (``malformed_*``) are dropped (``malformed_drop``), never
    forwarded unread; ``forward_malformed`` forwards them instead (fail-open). ``on_failure`` (``pass`` or
    ``drop``): what monitored traffic meets while no engine serves the program -- before the run is ready,
    after it stops, if it crashes (default :func:`mos.xdp.program.default_on_failure`: drop inline, pass
    passive; a program made by ``mos-xdp attach`` keeps its own unless this is given, and gets it back at
    the end).
    Returns the engine's counters (in each worker process when ``workers > 1``, see the module doc).
    Errors a user can act on raise :class:`LiveError` (one line). For the CLI, the environment can set
    ``MOS_XDP_MODE`` (auto, native, generic), ``MOS_XDP_COPY`` (1: copy, 0: zero-copy) and
    ``MOS_XDP_BUSY_POLL`` (0: off) and ``MOS_XDP_FORWARD_MALFORMED`` (1: on) when the arguments are left at
    their defaults.
    """
    if ring and (ring & (ring - 1) or not 64 <= ring <= 65536):
        raise LiveError(f"--ring {ring}: the AF_XDP ring size must be a power of two between 64 and 65536")
    env_mode = os.environ.get("MOS_XDP_MODE")
    if mode == "auto" and env_mode:
        if env_mode not in ("auto", "native", "generic"):
            raise LiveError(f"MOS_XDP_MODE={env_mode!r}: use auto, native or generic")
        mode = env_mode
    env_copy = os.environ.get("MOS_XDP_COPY")
    if copy is None and env_copy in ("0", "1"):
        copy = env_copy == "1"
    if busy_poll and os.environ.get("MOS_XDP_BUSY_POLL") == "0":
        busy_poll = False
    if not forward_malformed and os.environ.get("MOS_XDP_FORWARD_MALFORMED") == "1":
        forward_malformed = True
    try:
        if on_failure is not None:
            fail_mode(on_failure)  # checked before anything is attached
        return _run_live(mon, iface, peer, workers, mode, copy, busy_poll, batch, duration, ring, forward_malformed,
                         on_failure)
    except xdp.XdpError as e:
        raise LiveError(str(e)) from None
    except PermissionError as e:
        raise LiveError(f"permission denied ({e.strerror}): run mos-xdp as root") from None


def _run_live(mon: Monitor, iface: str, peer: Optional[str], workers: int, mode: str, copy: Optional[bool],
              busy_poll: bool, batch: int, duration: Optional[float], ring: int,
              forward_malformed: bool, on_failure: Optional[str]) -> Dict[str, int]:
    xdp.require_root("mos-xdp run --iface")
    if peer is not None and peer == iface:
        raise LiveError("--peer must be another interface than --iface")
    if not 1 <= workers <= xdp.MAX_WORKERS:
        raise LiveError(f"workers must be 1..{xdp.MAX_WORKERS}")
    if not 1 <= batch <= 4096:
        raise LiveError("batch must be 1..4096")
    xdp.ifindex_of(iface)
    if peer is not None:
        xdp.ifindex_of(peer)
    nq = rx_queues(iface)
    npq = rx_queues(peer) if peer else 0
    flags = lib.MOS_XSK_BUSY_POLL if busy_poll else 0
    if copy is True:
        flags |= lib.MOS_XSK_COPY
    elif copy is False:
        flags |= lib.MOS_XSK_ZEROCOPY

    stop = StopFlag()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    parent = os.getpid()
    prog: Optional[xdp.XdpProgram] = None
    attached = False
    xsk: Any = None
    indexes: List[int] = []
    children: List[int] = []
    watch: Optional[pitfalls.PitfallWatch] = None
    restore: Dict[str, int] = {}  # config fields of a program made by `mos-xdp attach`, given back at the end
    start: Dict[str, int] = {}
    exit_code = 0
    try:
        prog, attached = _attach(iface, peer, workers, max(nq, npq), mode, on_failure)
        start = prog.stats()
        err = ffi.new("char[256]")
        raw = lib.mos_xsk_open(iface.encode(), nq, peer.encode() if peer else ffi.NULL, npq, workers, ring,
                               flags, err, 256)
        if raw == ffi.NULL:
            msg = ffi.string(err).decode()
            if "busy" in msg.lower():
                msg += " (another mos-xdp run or AF_XDP program on this interface?)"
            raise LiveError(msg)
        xsk = raw
        lib.mos_xsk_set_forward_malformed(xsk, int(forward_malformed))
        for slot, count in ((0, nq), (1, npq)):
            for q in range(count):
                for w in range(workers):
                    idx = xdp.xsk_index(slot, q, w)
                    prog.set_xsk(idx, lib.mos_xsk_fd(xsk, slot, q, w))
                    indexes.append(idx)
        cfg = prog.config()
        fields = {"workers": workers}
        if on_failure is not None:
            fields["on_failure"] = fail_mode(on_failure)
        if not attached:
            restore = {k: int(getattr(cfg, k)) for k in fields}
        prog.set_config(**fields)
        bpf_filter.undo_recorded(prog)  # what a run that died pushed down
        undo_arp(prog)  # ... and the ARP answers it gave
        if mon.filter is not None:  # what XDP can enforce of it: unmonitored traffic never reaches us
            sys.stderr.write(f"mos-xdp: {bpf_filter.push_down(prog, mon.filter)[0]}\n")
        # from here a crash is told from a clean stop by this record (see mos.xdp.state)
        prog.state["engine"] = {**state.this_process(), "since": time.time()}
        state.write_state(iface, prog.state)
        run_start_hooks(mon, LiveSession(prog, xsk, iface, peer, workers, 0))
        info = ffi.new("struct mos_xsk_info *")
        lib.mos_xsk_info(xsk, info)
        xdp_mode = xdp.link_xdp(iface).mode or "?"
        where = f"{iface} <-> {peer} (inline)" if peer else f"{iface} (passive)"
        sys.stderr.write(
            f"mos-xdp: live on {where}: {xdp_mode} XDP, AF_XDP {'zero-copy' if info.zerocopy else 'copy'} mode"
            f"{', busy polling' if info.busy_poll else ''}, {workers} worker(s), {nq + npq} queue(s), "
            f"{info.umem_bytes >> 20} MiB UMEM; if it stops, {_traffic_meets(prog)}; Ctrl-C to stop\n")
        _veth_checksums(mon, iface, peer)
        for note in pitfalls.startup_notes(iface, peer, xdp_mode):
            sys.stderr.write(note)
        sys.stderr.flush()
        watch = pitfalls.PitfallWatch(iface, peer)
        deadline = time.monotonic() + duration if duration else 0.0

        if workers == 1:
            watch.begin()
            _run_worker(mon, LiveSession(prog, xsk, iface, peer, 1, 0), stop, batch, deadline)
            return mon.stats()

        for w in range(workers):
            pid = os.fork()
            if pid == 0:  # worker: runs, then returns to the caller (the CLI's finish and report)
                stop.flag = False
                _stop_with_parent(parent)
                try:
                    _run_worker(mon, LiveSession(prog, xsk, iface, peer, workers, w), stop, batch, deadline)
                finally:
                    # a late SIGTERM from the parent must not kill the report (the interpreter resets
                    # handlers at exit): keep it pending, it dies with the process
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                return mon.stats()
            children.append(pid)
        watch.begin()  # in the parent only, after the forks (a thread does not survive one)
        exit_code = _wait_workers(children, stop, deadline)
        children = []
    finally:
        if os.getpid() == parent:
            for pid in children:  # set-up failed half-way, or an exception: no worker outlives us
                _kill(pid)
            # a second Ctrl-C or SIGTERM must not cut the teardown short (the program would stay attached)
            for sig in old:
                signal.signal(sig, signal.SIG_IGN)
            if watch is not None:
                watch.end()
            try:
                _teardown(prog, xsk, indexes, attached, iface, workers, restore, start)
            finally:
                for sig, h in old.items():
                    signal.signal(sig, h)
    raise SystemExit(exit_code)


def _stop_with_parent(parent: int) -> None:
    """A worker gets SIGTERM when the parent dies (``kill -9`` of the run): it stops as on Ctrl-C, its sockets
    leave the XSKMAP, and the failure mode applies, rather than inspecting on for a run nobody owns."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


KILL_AFTER = 1.5
"""Seconds after a stop signal (or a SIGTERM of its own) a worker has to exit before it is killed: it stops
its handlers within ~1.3 s whatever they do (mos.watchdog), unless one catches BaseException."""


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + KILL_AFTER
        while time.monotonic() < end:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _wait_workers(children: List[int], stop: StopFlag, deadline: float) -> int:
    """Waits for the workers; a signal or the end of one of them stops them all. Returns an exit code.

    After a stop signal, a worker that has not exited :data:`KILL_AFTER` later is killed (said on stderr):
    the run ends within 2 s. Otherwise (the duration is up, a worker ended) they have a minute for their
    app's finish()."""
    code = 0
    alive = set(children)
    stopping = 0.0
    kill_at = 0.0
    while alive:
        now = time.monotonic()
        if not stopping and (stop.flag or (deadline and now >= deadline + 1)):
            stopping, kill_at = now, now + 60
            for pid in alive:
                os.kill(pid, signal.SIGTERM)
        if stop.flag:
            kill_at = min(kill_at, stop.at + KILL_AFTER)
        if stopping and now > kill_at:
            for pid in alive:  # a worker stuck in a handler or an app's finish(): no more waiting
                os.kill(pid, signal.SIGKILL)
            waited = now - (stop.at if stop.flag else stopping)
            sys.stderr.write(f"mos-xdp: worker(s) {', '.join(map(str, sorted(alive)))} did not exit "
                             f"{waited:.1f} s after being told to stop: killed (SIGKILL)\n")
            kill_at = float("inf")
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.02)
            continue
        if pid in alive:
            alive.discard(pid)
            rc = os.waitstatus_to_exitcode(status)
            if rc != 0:
                code = code or (rc if rc > 0 else 1)
            if not stopping:  # a worker ended: its connections would go nowhere, stop the others
                stopping, kill_at = time.monotonic(), time.monotonic() + 60
                for other in alive:
                    os.kill(other, signal.SIGTERM)
    return code


def _teardown(prog: Optional[xdp.XdpProgram], xsk: Any, indexes: List[int], attached: bool, iface: str,
              workers: int, restore: Dict[str, int], start: Dict[str, int]) -> None:
    """Sockets out of the XSKMAP first (from then on the failure mode applies), then the counters and their
    balance, then the sockets closed and the program detached (when this run owns it) or given back its
    settings (when `mos-xdp attach` made it)."""
    report: List[str] = []
    if prog is not None:
        for idx in indexes:
            try:
                prog.clear_xsk(idx)
            except OSError:
                pass
        if xsk is not None:
            time.sleep(0.02)  # frames the program sent to a socket just before reach its ring (NAPI ends)
            report = _counter_lines(prog, xsk, workers, start)
    if xsk is not None:
        lib.mos_xsk_close(xsk)
    if prog is not None:
        if attached:
            prog.close()
            try:
                report += [f"mos-xdp: {line}" for line in xdp.detach(iface)]
            except xdp.XdpError as e:
                report.append(f"mos-xdp: {e}")
        else:
            try:
                bpf_filter.undo_recorded(prog)  # the filter's push-down first: restore has the config before it
                undo_arp(prog)
                if restore:
                    prog.set_config(**restore)
                prog.state.pop("engine", None)
                state.write_state(iface, prog.state)
                report.append(f"mos-xdp: {iface}: the program made by mos-xdp attach stays; {_traffic_meets(prog)}")
            except (OSError, xdp.XdpError) as e:
                report.append(f"mos-xdp: cannot give the program on {iface} back its settings: {e}")
            prog.close()
    try:
        # read before detaching, printed after: a closed stderr must not stop the detach
        sys.stderr.write("".join(line + "\n" for line in report))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
