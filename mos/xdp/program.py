"""The mos-xdp XDP program on one interface: load (bcc), attach, pin, and drive its maps.

A program attached by :meth:`XdpProgram.attach` outlives the process: XDP attachment is held by the
interface, and the maps and the program are pinned under ``/sys/fs/bpf/mos-xdp/net-<netns>/<ifname>/``
with a state file in ``/run/mos-xdp/net-<netns>/<ifname>.json``, keyed by the network namespace (see
:mod:`mos.xdp.env`), both root's only. A later process (``mos-xdp status``, ``block``, the
engine) reopens them with :meth:`XdpProgram.open_pinned`, which needs neither bcc nor kernel headers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .._engine import ffi
from ..net import netlink
from . import abi
from .env import (
    BPF_DIR,
    PIN_ROOT,
    ensure_bpffs,
    import_bcc,
    pin_dir,
    private_dir,
    require_kernel_headers,
    require_root,
    state_path,
)
from .errors import XdpError
from .links import ifindex_of, link_xdp, xdp_remove
from .maps import BpfMap, obj_get, obj_pin, prog_info, prog_test_run
from .state import detach, read_state, remove_pins, this_process, write_state
from .steering import FlowTuple, flow_key

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def fail_mode(name: str) -> int:
    """The ``enum mos_xdp_fail_mode`` value of ``pass`` or ``drop``."""
    try:
        return abi.FAIL_MODES.index(name)
    except ValueError:
        raise XdpError(f"unknown failure mode {name!r}: use {' or '.join(abi.FAIL_MODES)}") from None


def default_on_failure(inline: bool) -> str:
    """What monitored traffic meets while no engine serves it, unless the operator says otherwise.

    Inline, ``drop`` (fail closed): the box is there to stop what it has not inspected, and a crash must not
    open the wire. Passive, ``pass``: the box only watches; dropping would cut the host's own traffic off
    for a monitor's failure, and let through, the traffic is only unobserved, which ``mos-xdp status`` says.
    """
    return "drop" if inline else "pass"


def _parse_prefix(prefix: str) -> Network:
    try:
        return ipaddress.ip_network(prefix, strict=False)
    except ValueError as e:
        raise XdpError(f"not an IP prefix or port: {prefix!r}") from e


def _ipv4(addr: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(addr))
    except ValueError:
        raise XdpError(f"{addr!r} is not an IPv4 address (ARP answers are for IPv4)") from None


def _check_port(port: int) -> int:
    if not 0 < port < abi.PORTS:
        raise XdpError(f"port out of range: {port}")
    return port


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null meanwhile (C libraries print there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class XdpProgram:
    """The mos-xdp XDP program on one interface (and its inline peer).

    Get one with :meth:`load` (compile with bcc, not yet attached) then :meth:`attach`, or with
    :meth:`open_pinned` for a program attached by an earlier process. Map methods work in both cases.
    Structs read from the maps are cffi objects of ``bpf/mos_shared.h``'s types (see :mod:`mos.xdp.abi`).
    """

    def __init__(self, iface: str, maps: Dict[str, BpfMap], state: Optional[Dict[str, Any]] = None) -> None:
        self.iface = iface
        self.maps = maps
        self.state: Dict[str, Any] = dict(state or {})
        self.warnings: List[str] = []
        self._bpf: Any = None
        self._fn: Any = None
        self.prog_fd = -1

    # -- paths

    @staticmethod
    def pin_dir(iface: str) -> Path:
        """Where the maps of the program on ``iface`` are pinned."""
        return pin_dir(iface)

    @staticmethod
    def is_pinned(iface: str) -> bool:
        """Whether a program's maps are pinned for ``iface`` (what :meth:`open_pinned` reopens)."""
        return (pin_dir(iface) / abi.MAP_CONFIG).exists()

    @staticmethod
    def state_path(iface: str) -> Path:
        """The JSON state file of the program on ``iface``."""
        return state_path(iface)

    # -- loading

    @classmethod
    def load(cls, iface: str, *, peer: Optional[str] = None, workers: int = 1, queues: int = 1,
             protocols: int = abi.PROTO_TCP | abi.PROTO_UDP, monitor_ports: Optional[List[int]] = None,
             bypass_idle_s: float = 300.0, debug: bool = False, on_failure: Optional[str] = None,
             src_file: Optional[Path] = None) -> XdpProgram:
        """Compiles ``bpf/xdp_mos.c`` with bcc and fills the config map; nothing is attached yet.

        ``peer`` selects inline mode (unmonitored traffic and bypass-redirects go to the other interface);
        ``monitor_ports`` restricts monitoring to flows with one of these ports; ``bypass_idle_s`` is the
        idle time after which a bypass entry is ignored (0: never). ``on_failure`` (``pass`` or ``drop``,
        see :func:`default_on_failure`) is what monitored traffic meets while no engine serves it.
        """
        fail = fail_mode(on_failure if on_failure is not None else default_on_failure(peer is not None))
        require_root("loading an XDP program")
        ifindex = ifindex_of(iface)
        peer_ifindex = ifindex_of(peer) if peer else 0
        if not 1 <= workers <= abi.MAX_WORKERS:
            raise XdpError(f"workers must be 1..{abi.MAX_WORKERS}")
        if not 1 <= queues <= abi.MAX_QUEUES:
            raise XdpError(f"queues must be 1..{abi.MAX_QUEUES}")
        bcc = import_bcc()
        require_kernel_headers()
        src = Path(src_file or BPF_DIR / "xdp_mos.c")
        if not src.is_file():
            raise XdpError(f"XDP program source missing: {src}")
        try:
            b = bcc.BPF(src_file=str(src).encode(), cflags=[f"-I{src.parent}", "-Wno-unused-function"])
            fn = b.load_func(abi.PROG_NAME.encode(), bcc.BPF.XDP)
        except Exception as e:  # bcc raises bare Exception
            raise XdpError(f"cannot compile/load {src.name}: {e} (compiler output above)") from e
        maps = {name: BpfMap(os.dup(b.get_table(name.encode()).map_fd), name) for name in abi.MAP_NAMES}
        prog = cls(iface, maps)
        prog._bpf, prog._fn, prog.prog_fd = b, fn, fn.fd
        cfg = abi.new(abi.CONFIG, {
            "protocols": protocols, "flags": abi.CFG_DEBUG if debug else 0, "workers": workers, "queues": queues,
            "mode": abi.MODE_INLINE if peer else abi.MODE_PASSIVE, "ifindex": ifindex,
            "peer_ifindex": peer_ifindex, "bypass_idle_ns": int(bypass_idle_s * 1e9), "on_failure": fail})
        if monitor_ports:
            cfg.flags |= abi.CFG_PORT_FILTER
            for port in monitor_ports:
                prog._port_flags(port, set_bits=abi.PORT_MONITOR)
        maps[abi.MAP_CONFIG].update(0, cfg)
        maps[abi.MAP_TX_PORTS].update(0, ifindex)
        if peer:
            maps[abi.MAP_TX_PORTS].update(1, peer_ifindex)
        prog.state = {"iface": iface, "ifindex": ifindex, "peer": peer, "peer_ifindex": peer_ifindex,
                      "workers": workers, "queues": queues, "netns": netlink.netns_id(),
                      "on_failure": abi.FAIL_MODES[fail]}
        return prog

    def attach(self, mode: str = "auto", owner: str = "attach") -> str:
        """Attaches the loaded program to the interface (and the peer), pins it, writes the state file.

        ``mode``: ``native`` (driver XDP; XdpError if unsupported), ``generic`` (skb) or ``auto`` (native,
        else generic with a warning in :attr:`warnings`). ``owner``: ``attach`` (it stays until ``mos-xdp
        detach``) or ``run`` (a run attaches it for itself; see :mod:`mos.xdp.state`). Returns the mode used.
        """
        if owner not in ("attach", "run"):
            raise XdpError(f"unknown owner {owner!r}: attach or run")
        if self._fn is None:
            raise XdpError("attach() needs a program from XdpProgram.load()")
        if mode not in ("auto", "native", "generic"):
            raise XdpError(f"unknown XDP mode {mode!r}: use auto, native or generic")
        ifaces = [self.iface] + ([self.state["peer"]] if self.state.get("peer") else [])
        for name in ifaces:
            lx = link_xdp(name)
            if lx.prog_id:
                other = f"another XDP program ({lx.prog_name or '?'})"
                what = "mos-xdp" if lx.prog_name == abi.PROG_NAME else other
                raise XdpError(f"{name} already has {what} attached (prog id {lx.prog_id}): "
                               f"run mos-xdp detach {name} first")
        ensure_bpffs()
        pins = self.pin_dir(self.iface)
        if pins.exists():
            remove_pins(pins)
        used = ""
        done: List[Tuple[str, str]] = []
        try:
            for name in ifaces:
                used = self._attach_one(name, mode if not used else used)
                done.append((name, used))
            private_dir(pins, PIN_ROOT)
            for mname, m in self.maps.items():
                obj_pin(m.fd, pins / mname)
            obj_pin(self.prog_fd, pins / abi.PROG_PIN)
        except BaseException:
            for name, attached_mode in done:
                xdp_remove(name, attached_mode)
            remove_pins(pins)
            raise
        self.state.update({"mode": used, "prog_id": prog_info(self.prog_fd)["id"], "pin_dir": str(pins),
                           "attached_at": time.time(), "owner": owner, **this_process()})
        write_state(self.iface, self.state)
        return used

    def _attach_one(self, ifname: str, mode: str) -> str:
        bcc = import_bcc()
        flags = bcc.XDPFlags
        tries = {"native": [("native", flags.DRV_MODE)], "generic": [("generic", flags.SKB_MODE)],
                 "auto": [("native", flags.DRV_MODE), ("generic", flags.SKB_MODE)]}[mode]
        errors = []
        for name, mode_flag in tries:
            try:
                with _stderr_silenced():  # libbcc also prints the netlink error: keep to one line
                    bcc.BPF.attach_xdp(ifname.encode(), self._fn, mode_flag | flags.UPDATE_IF_NOEXIST)
            except Exception as e:  # bcc raises bare Exception
                errors.append(str(e).split(": ")[-1])
                continue
            if mode == "auto" and name == "generic":
                self.warnings.append(f"native XDP unsupported on {ifname} ({errors[0]}): using generic mode")
            return name
        if mode == "native":
            raise XdpError(f"native XDP unsupported on {ifname} ({errors[0]}): try --mode generic")
        raise XdpError(f"cannot attach XDP to {ifname}: {'; '.join(errors)}")

    @classmethod
    def open_pinned(cls, iface: str) -> XdpProgram:
        """Reopens the maps pinned by :meth:`attach` (no bcc needed). XdpError when nothing is pinned."""
        pins = cls.pin_dir(iface)
        if not cls.is_pinned(iface):
            raise XdpError(f"no mos-xdp program pinned for {iface} ({pins}): run mos-xdp attach {iface}")
        maps: Dict[str, BpfMap] = {}
        for name in abi.MAP_NAMES:
            try:
                maps[name] = BpfMap.open(pins / name)
            except OSError as e:
                for m in maps.values():
                    m.close()
                raise XdpError(f"cannot open pinned map {pins / name}: {e.strerror}") from e
        return cls(iface, maps, read_state(iface))

    def close(self) -> None:
        """Closes this process's fds; an attached program stays attached and pinned."""
        for m in self.maps.values():
            m.close()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = self._fn = None
            self.prog_fd = -1

    def __enter__(self) -> XdpProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detach(self) -> List[str]:
        """Detaches from the interface (and the peer), removes pins and state; returns what it did."""
        return detach(self.iface, self.state)

    # -- config

    def config(self) -> Any:
        """The current ``struct mos_xdp_config`` (a copy: change it with :meth:`set_config`)."""
        return abi.from_bytes(abi.CONFIG, self.maps[abi.MAP_CONFIG].lookup(0) or b"")

    def on_failure(self) -> str:
        """The program's failure mode now (``pass`` or ``drop``)."""
        v = int(self.config().on_failure)
        return abi.FAIL_MODES[v] if 0 <= v < len(abi.FAIL_MODES) else str(v)

    def set_on_failure(self, name: str) -> None:
        """Sets the failure mode (config map and state file)."""
        self.set_config(on_failure=fail_mode(name))
        if self.state:
            self.state["on_failure"] = name
            write_state(self.iface, self.state)

    def set_config(self, **fields: int) -> Any:
        """Changes fields of the config entry (e.g. ``workers=4``, ``bypass_idle_ns=...``); returns it."""
        cfg = self.config()
        known = abi.field_names(abi.CONFIG)
        for name, value in fields.items():
            if name not in known:
                raise XdpError(f"unknown config field {name}")
            setattr(cfg, name, value)
        self.maps[abi.MAP_CONFIG].update(0, cfg)
        return cfg

    # -- counters

    def stats(self) -> Dict[str, int]:
        """Every counter, summed over CPUs, by name (see :data:`mos.xdp.abi.COUNTERS`)."""
        m = self.maps[abi.MAP_COUNTERS]
        # one per-CPU value holds all of that CPU's counters (the program's counter block): one lookup
        buf = m.value_buffer()
        m.lookup_into(0, buf)
        stride = m.slot // 8
        words = ffi.unpack(ffi.cast("uint64_t *", buf), stride * m.ncpus)
        return {name: sum(words[i::stride]) for i, name in enumerate(abi.COUNTERS)}

    # -- block lists

    def block(self, prefix: str) -> str:
        """Drops packets from or to ``prefix`` (``10.0.0.0/8``, ``2001:db8::/32``, a bare address)."""
        net = _parse_prefix(prefix)
        m, key = self._lpm(net)
        if m.lookup(key) is None:
            m.update(key, 0)
        return str(net)

    def unblock(self, prefix: str) -> bool:
        """Removes a prefix from the block lists; False when it was not there."""
        net = _parse_prefix(prefix)
        m, key = self._lpm(net)
        return m.delete(key)

    def _lpm(self, net: Network) -> Tuple[BpfMap, Any]:
        ctype, name = (abi.LPM_V4, abi.MAP_BLOCK_V4) if net.version == 4 else (abi.LPM_V6, abi.MAP_BLOCK_V6)
        key = abi.new(ctype, {"prefixlen": net.prefixlen})
        packed = net.network_address.packed
        ffi.memmove(key.addr, packed, len(packed))
        return self.maps[name], key

    def _port_flags(self, port: int, set_bits: int = 0, clear_bits: int = 0) -> int:
        m = self.maps[abi.MAP_PORTS]
        old = (m.lookup(_check_port(port)) or b"\0")[0]
        new = (old | set_bits) & ~clear_bits & 0xFF
        if new != old:
            m.update(port, new)
        return new

    def monitor_port(self, port: int, on: bool = True) -> None:
        """Adds ``port`` to (or removes it from) the monitored set (used with ``CFG_PORT_FILTER``)."""
        if on:
            self._port_flags(port, set_bits=abi.PORT_MONITOR)
        else:
            self._port_flags(port, clear_bits=abi.PORT_MONITOR)

    def block_port(self, port: int) -> None:
        """Drops TCP and UDP packets from or to ``port``."""
        self._port_flags(port, set_bits=abi.PORT_BLOCK)

    def unblock_port(self, port: int) -> bool:
        """Stops dropping ``port``; False when it was not blocked."""
        was = bool((self.maps[abi.MAP_PORTS].lookup(_check_port(port)) or b"\0")[0] & abi.PORT_BLOCK)
        self._port_flags(port, clear_bits=abi.PORT_BLOCK)
        return was

    def blocked(self) -> Dict[str, Any]:
        """``{"prefixes": {prefix: hits}, "ports": [port, ...]}``."""
        prefixes: Dict[str, int] = {}
        for name, ctype in ((abi.MAP_BLOCK_V4, abi.LPM_V4), (abi.MAP_BLOCK_V6, abi.LPM_V6)):
            for k, v in self.maps[name].items():
                key = abi.from_bytes(ctype, k)
                addr = ipaddress.ip_address(bytes(ffi.buffer(key.addr)))
                prefixes[f"{addr}/{key.prefixlen}"] = int.from_bytes(v, sys.byteorder)
        ports = [port for port, flags in enumerate(self._ports_raw()) if flags & abi.PORT_BLOCK]
        return {"prefixes": prefixes, "ports": ports}

    def _ports_raw(self) -> bytes:
        """The port flag array (one byte per port)."""
        return self.maps[abi.MAP_PORTS].array_values()

    # -- ARP answers (a NAT's public address)

    def answer_arp(self, addr: str) -> str:
        """Answers ARP requests for the IPv4 address ``addr`` in XDP, whether or not an engine runs: the
        reply goes back out of the interface asked on, with that interface's MAC (what a NAT needs for
        the address it translates to, which no host owns). Returns the address."""
        ip = _ipv4(addr)
        macs = b""
        for name in (self.iface, self.state.get("peer") or self.iface):
            mac = link_xdp(name).mac
            if len(mac) != 17:
                raise XdpError(f"{name} has no Ethernet address to answer ARP with")
            macs += bytes.fromhex(mac.replace(":", ""))
        entry = abi.new(abi.ARP_ENTRY, {"mac": list(macs)})
        self.maps[abi.MAP_ARP].update(ip.packed, entry)
        return str(ip)

    def unanswer_arp(self, addr: str) -> bool:
        """Stops answering ARP for ``addr``; False when it was not answered."""
        return self.maps[abi.MAP_ARP].delete(_ipv4(addr).packed)

    def arp_answers(self) -> Dict[str, int]:
        """``{address: replies sent}`` of the addresses answered for."""
        return {str(ipaddress.IPv4Address(k)): int(abi.from_bytes(abi.ARP_ENTRY, v).replies)
                for k, v in self.maps[abi.MAP_ARP].items()}

    # -- bypass

    def bypass(self, flow: FlowTuple, verdict: Union[str, int] = "pass") -> None:
        """Lets ``flow``'s connection (both directions) skip userspace: ``pass``, ``drop`` or ``redirect``."""
        v = abi.BYPASS_VERDICTS.get(verdict, 0) if isinstance(verdict, str) else int(verdict)
        if v not in abi.BYPASS_VERDICTS.values():
            raise XdpError(f"unknown bypass verdict {verdict!r}: use pass, drop or redirect")
        entry = abi.new(abi.BYPASS_ENTRY, {"last_seen_ns": time.monotonic_ns(), "verdict": v})
        self.maps[abi.MAP_BYPASS].update(flow_key(flow), entry)

    def unbypass(self, flow: FlowTuple) -> bool:
        """Sends the connection back through userspace; False when it was not bypassed."""
        return self.maps[abi.MAP_BYPASS].delete(flow_key(flow))

    def bypassed(self) -> List[Tuple[Any, Any]]:
        """Every bypass entry: (``struct mos_flow_key``, ``struct mos_xdp_bypass_entry``) pairs."""
        return [(abi.from_bytes(abi.FLOW_KEY, k), abi.from_bytes(abi.BYPASS_ENTRY, v))
                for k, v in self.maps[abi.MAP_BYPASS].items()]

    def expire_bypass(self, now_ns: Optional[int] = None) -> int:
        """Deletes entries idle for longer than the configured timeout; returns how many."""
        idle = self.config().bypass_idle_ns
        if not idle:
            return 0
        now = time.monotonic_ns() if now_ns is None else now_ns
        m = self.maps[abi.MAP_BYPASS]
        n = 0
        for k, v in m.items():
            if now - abi.from_bytes(abi.BYPASS_ENTRY, v).last_seen_ns > idle and m.delete(k):
                n += 1
        return n

    # -- AF_XDP sockets and debug

    def set_xsk(self, index: int, fd: int) -> None:
        """Puts an AF_XDP socket fd in the XSKMAP at ``index`` (see :func:`mos.xdp.steering.xsk_index`)."""
        self.maps[abi.MAP_XSKS].update(index, fd)

    def clear_xsk(self, index: int) -> bool:
        """Removes the socket at ``index``."""
        return self.maps[abi.MAP_XSKS].delete(index)

    def last_steering(self) -> Any:
        """The last steering decision, a ``struct mos_xdp_debug`` (recorded only when loaded with
        ``debug=True``)."""
        return abi.from_bytes(abi.DEBUG, self.maps[abi.MAP_DEBUG].lookup(0) or b"")

    def test_run(self, frame: bytes) -> int:
        """Runs the program on one frame without sending anything (BPF_PROG_TEST_RUN); returns the action."""
        fd = self.prog_fd
        opened = False
        if fd < 0:
            fd, opened = obj_get(self.pin_dir(self.iface) / abi.PROG_PIN), True
        try:
            return prog_test_run(fd, frame)[0]
        finally:
            if opened:
                os.close(fd)
