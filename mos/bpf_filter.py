"""What of a monitor filter (tcpdump syntax) the XDP program can enforce: the push-down analyser.

The engine judges every flow's first packet with libpcap (userspace/monitor_filter.h): that stays the exact
judge. Live, the XDP program can leave out before userspace what the filter would certainly leave out, with
three tests it has (bpf/xdp_mos.c, ``is_monitored``): the transport protocol, a set of ports (either port of
the packet in it: map PORTS, flag MONITOR) and a set of prefixes (either address in it: maps MON_V4 and
MON_V6). :func:`analyse` finds a :class:`PushDown` that is a sound over-approximation: every packet the full
filter accepts passes it, so nothing the engine would monitor is lost -- and, since each test is symmetric
(either port, either address), neither is the other direction of a flow whose first packet matched.

The analyser parses a conservative subset of libpcap's grammar itself: ``tcp``, ``udp``, ``sctp``, ``icmp``,
``icmp6``, ``ip``, ``ip6``; ``[tcp|udp|sctp] [src|dst] port N`` and ``portrange A-B``; ``[ip|ip6] [src|dst]
host ADDR`` and ``net CIDR`` (or ``net A.B.C``, ``net ADDR mask MASK``); ``and``/``or`` (equal precedence,
left to right, as libpcap has them), ``not``, parentheses, and a bare value taking the qualifiers before it
(``port 80 or 443``). Anything else anywhere (``vlan``, byte offsets, names of hosts, ...) and nothing is
pushed down. A ``not`` pushes nothing for its operand (it is kept as "anything").
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

__all__ = ["PROTOCOLS", "PushDown", "analyse", "push_down"]

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS: Dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmp6": 58}
"""The protocol names the analyser knows, and their IP protocol numbers."""
_PORT_PROTOS = frozenset({6, 17, 132})  # what `port` means without a protocol (libpcap: tcp, udp or sctp)
_FAMILY = {"ip": 4, "ip6": 6}  # qualifiers of a family, not a protocol: they restrict nothing here


class _Unsupported(Exception):
    """Beyond the subset: nothing is pushed down."""


@dataclass(frozen=True)
class PushDown:
    """Tests a packet must pass for the filter to possibly accept it; None: no test of that kind.

    ``protocols``: IP protocol numbers; ``ports``: either port of the packet is one of them; ``prefixes``:
    either address of the packet is in one of them.
    """

    protocols: Optional[FrozenSet[int]] = None
    ports: Optional[FrozenSet[int]] = None
    prefixes: Optional[FrozenSet[Network]] = None

    @property
    def empty(self) -> bool:
        """Nothing to push down."""
        return self.protocols is None and self.ports is None and self.prefixes is None

    def admits(self, proto: int, sport: Optional[int], dport: Optional[int], src: str, dst: str) -> bool:
        """Whether a packet passes every test (``sport``/``dport`` None: a packet without ports, such as an
        IP fragment, which the XDP program lets through to the engine's reassembly)."""
        if self.protocols is not None and proto not in self.protocols:
            return False
        if self.ports is not None and sport is not None and dport is not None and \
                sport not in self.ports and dport not in self.ports:
            return False
        if self.prefixes is not None:
            a, b = _ip(src), _ip(dst)
            if not any(x in n for n in self.prefixes for x in (a, b) if x.version == n.version):
                return False
        return True

    def describe(self) -> str:
        """In words, for the start of a run."""
        if self.empty:
            return "nothing (beyond what the XDP program can prove)"
        parts = []
        if self.protocols is not None:
            names = {v: k for k, v in PROTOCOLS.items()}
            parts.append("protocols " + (",".join(names.get(p, str(p)) for p in sorted(self.protocols)) or "none"))
        if self.ports is not None:
            parts.append("ports " + (_ranges(sorted(self.ports)) or "none"))
        if self.prefixes is not None:
            nets = sorted(self.prefixes, key=lambda n: (n.version, n.network_address, n.prefixlen))
            parts.append("prefixes " + (",".join(str(n) for n in nets) or "none"))
        return ", ".join(parts)


TOP = PushDown()


@functools.lru_cache(maxsize=4096)
def _ip(addr: str) -> Union[ipaddress.IPv4Address, ipaddress.IPv6Address]:
    return ipaddress.ip_address(addr)


def _ranges(ports: Sequence[int]) -> str:
    out: List[str] = []
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == ports[j] + 1:
            j += 1
        out.append(str(ports[i]) if i == j else f"{ports[i]}-{ports[j]}")
        i = j + 1
    return ",".join(out)


def _union(a: Optional[FrozenSet[Any]], b: Optional[FrozenSet[Any]]) -> Optional[FrozenSet[Any]]:
    return None if a is None or b is None else a | b


def _either_or(a: Optional[FrozenSet[Any]], b: Optional[FrozenSet[Any]]) -> Optional[FrozenSet[Any]]:
    """For ``A and B`` of an "either end in the set" test: each side's set alone is sound, their
    intersection is not (``src port 1 and dst port 2``); the smaller is kept."""
    if a is None:
        return b
    if b is None:
        return a
    return a if len(a) <= len(b) else b


def _and(a: PushDown, b: PushDown) -> PushDown:
    protos = b.protocols if a.protocols is None else a.protocols if b.protocols is None else a.protocols & b.protocols
    return PushDown(protos, _either_or(a.ports, b.ports), _either_or(a.prefixes, b.prefixes))


def _or(a: PushDown, b: PushDown) -> PushDown:
    return PushDown(_union(a.protocols, b.protocols), _union(a.ports, b.ports), _union(a.prefixes, b.prefixes))


# ---- the parser ------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[A-Za-z0-9_.:/-]+)")
_AND, _OR, _NOT = ("and", "&&"), ("or", "||"), ("not", "!")
_DIRS = ("src", "dst")
_TYPES = ("host", "net", "port", "portrange")


@dataclass(frozen=True)
class _Qual:
    """A primitive's qualifiers (libpcap: proto, dir, type): what a bare value after and/or takes."""

    proto: Optional[str]
    dir: Optional[str]
    type: str


def _tokens(expr: str) -> List[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise _Unsupported(expr[pos:])
        out.append(m.group(1))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


class _Parser:
    def __init__(self, toks: List[str]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self, k: int = 0) -> Optional[str]:
        j = self.i + k
        return self.toks[j].lower() if j < len(self.toks) else None

    def take(self) -> str:
        if self.i >= len(self.toks):
            raise _Unsupported("end")
        self.i += 1
        return self.toks[self.i - 1]

    def expr(self, q: Optional[_Qual]) -> Tuple[PushDown, Optional[_Qual]]:
        """expr := term ((and|or) (term | value))*: equal precedence, left to right; a bare value takes the
        qualifiers of the expression before it."""
        acc, q = self.term(q, first=True)
        while self.peek() in _AND + _OR:
            op = self.take().lower()
            nxt, q = self.term(q, first=False)
            acc = _and(acc, nxt) if op in _AND else _or(acc, nxt)
        return acc, q

    def term(self, q: Optional[_Qual], first: bool) -> Tuple[PushDown, Optional[_Qual]]:
        t = self.peek()
        if t is None:
            raise _Unsupported("end")
        if t in _NOT:
            self.take()
            _, inner_q = self.term(q, first)
            return TOP, inner_q
        if t == "(":
            self.take()
            inner, _ = self.expr(q)
            if self.peek() != ")":
                raise _Unsupported("(")
            self.take()
            return inner, q  # libpcap: a parenthesised expression keeps the qualifiers from before it
        if t in PROTOCOLS or t in _FAMILY or t in _DIRS or t in _TYPES:
            return self.primitive()
        if q is None or first and q.type == "default":
            raise _Unsupported(t)  # a bare value without qualifiers before it
        return self.value(q), q

    def primitive(self) -> Tuple[PushDown, Optional[_Qual]]:
        proto = None
        t = self.peek()
        if t in PROTOCOLS or t in _FAMILY:
            proto = self.take().lower()
            if self.peek() not in _DIRS + _TYPES:  # a protocol alone: `tcp`
                if proto in _FAMILY:
                    return TOP, None
                return PushDown(protocols=frozenset({PROTOCOLS[proto]})), None
        direction = None
        if self.peek() in _DIRS:
            direction = self.take().lower()
            if self.peek() in _AND + _OR and self.peek(1) in _DIRS:  # `src or dst`, `src and dst`
                direction = f"{direction} {self.take().lower()} {self.take().lower()}"
        typ = self.peek()
        if typ not in _TYPES:
            if typ is None or direction is None:
                raise _Unsupported(str(typ))
            typ = "host"  # `src 10.0.0.1`: libpcap's default type
        else:
            self.take()
        q = _Qual(proto, direction, typ)
        return self.value(q), q

    def value(self, q: _Qual) -> PushDown:
        v = self.take()
        if v in ("(", ")") or v.lower() in _AND + _OR + _NOT:
            raise _Unsupported(v)
        if q.type in ("port", "portrange"):
            if q.proto is not None and q.proto not in ("tcp", "udp", "sctp"):
                raise _Unsupported(q.proto)
            ports = _port_range(v) if q.type == "portrange" else frozenset({_port(v)})
            protos = frozenset({PROTOCOLS[q.proto]}) if q.proto else _PORT_PROTOS
            return PushDown(protocols=protos, ports=ports)
        if q.proto is not None and q.proto not in _FAMILY:
            raise _Unsupported(q.proto)
        if q.type == "host":
            net: Network = ipaddress.ip_network(_address(v))
        else:
            net = _net(v)
            if self.peek() == "mask":
                self.take()
                mask = _address(self.take())
                net = ipaddress.ip_network(f"{net.network_address}/{mask}", strict=False)
        if q.proto is not None and net.version != _FAMILY[q.proto]:
            raise _Unsupported(v)
        return PushDown(prefixes=frozenset({net}))


def _port(v: str) -> int:
    if v.isdigit():
        n = int(v)
        if n > 65535:
            raise _Unsupported(v)
        return n
    # a service name: libpcap looks it up for each protocol; either number may be the one it takes
    found = set()
    for proto in ("tcp", "udp"):
        try:
            found.add(socket.getservbyname(v, proto))
        except OSError:
            pass
    if len(found) != 1:
        raise _Unsupported(v)
    return found.pop()


def _port_range(v: str) -> FrozenSet[int]:
    m = re.fullmatch(r"(\d+)-(\d+)", v)
    if not m:
        raise _Unsupported(v)
    lo, hi = sorted((int(m.group(1)), int(m.group(2))))
    if hi > 65535:
        raise _Unsupported(v)
    return frozenset(range(lo, hi + 1))


def _address(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise _Unsupported(v) from None  # a host name: libpcap resolves it, the analyser does not


def _net(v: str) -> Network:
    """``10.0.0.0/8``, ``2001:db8::/32``, an address, or libpcap's short forms (``10`` is 10.0.0.0/8,
    ``192.168.1`` is 192.168.1.0/24)."""
    if "/" in v:
        addr, _, plen = v.partition("/")
        if not plen.isdigit():
            raise _Unsupported(v)
        try:
            return ipaddress.ip_network(f"{ipaddress.ip_address(addr)}/{plen}", strict=False)
        except ValueError:
            raise _Unsupported(v) from None
    if re.fullmatch(r"\d+(\.\d+){0,2}", v):
        parts = [int(x) for x in v.split(".")]
        if any(x > 255 for x in parts):
            raise _Unsupported(v)
        return ipaddress.ip_network(".".join(map(str, parts + [0] * (4 - len(parts)))) + f"/{8 * len(parts)}")
    return ipaddress.ip_network(_address(v))


def analyse(expr: str) -> PushDown:
    """The part of ``expr`` the XDP program can enforce without leaving out anything the full filter (as
    libpcap compiles it) would accept; :data:`TOP` (nothing) when the expression is beyond the subset.
    ``expr`` must be one that libpcap compiles (the analyser does not judge errors)."""
    try:
        toks = _tokens(expr)
        if not toks:
            return TOP
        p = _Parser(toks)
        pd, _ = p.expr(_Qual(None, None, "default"))
        if p.i != len(toks):
            return TOP
        return pd
    except (_Unsupported, ValueError):
        return TOP


# ---- into the XDP program's maps --------------------------------------------------------------------------

STATE_KEY = "filter_pushdown"
"""What a run pushed down, in the program's state file: undone at its end, or by the next run if it died."""


def push_down(prog: Any, expr: str) -> Tuple[str, Callable[[], None]]:
    """Puts what :func:`analyse` finds of ``expr`` into the maps of ``prog`` (a :class:`mos.xdp.XdpProgram`),
    narrowing what it already monitors; returns a line saying what was pushed down and the function that
    undoes it (at the end of the run). What a run that died pushed down is undone first.

    Ports are pushed only when the program has no monitored port set of its own (``mos-xdp attach --port``):
    two "either port" tests cannot be made one."""
    from mos.xdp import abi

    undo_recorded(prog)
    pd = analyse(expr)
    cfg = prog.config()
    old = {"protocols": int(cfg.protocols), "flags": int(cfg.flags)}
    protocols, flags = old["protocols"], old["flags"]
    notes: List[str] = []
    ports_set: List[int] = []
    prefixes_set: List[str] = []
    ports_pushed = prefixes_pushed = False
    if pd.protocols is not None:
        bits = (abi.PROTO_TCP if 6 in pd.protocols else 0) | (abi.PROTO_UDP if 17 in pd.protocols else 0)
        protocols &= bits
    if pd.ports is not None:
        if flags & abi.CFG_PORT_FILTER:
            notes.append("ports not pushed: the program has its own monitored ports")
        else:
            for port in sorted(pd.ports):
                was = (prog.maps[abi.MAP_PORTS].lookup(port) or b"\0")[0]
                if not was & abi.PORT_MONITOR:
                    prog.monitor_port(port)
                    ports_set.append(port)
            flags |= abi.CFG_PORT_FILTER
            ports_pushed = True
    if pd.prefixes is not None:
        if len(pd.prefixes) > abi.BLOCK_MAX:
            notes.append("prefixes not pushed: too many")
        else:
            for net in pd.prefixes:
                m, key = _mon_key(prog, net)
                m.update(key, 1)
                prefixes_set.append(str(net))
            flags |= lib_flag("CFG_PREFIX_FILTER")
            prefixes_pushed = True
    record = {**old, "ports": ports_set, "prefixes": prefixes_set}
    prog.set_config(protocols=protocols, flags=flags)
    _write_record(prog, record)
    shown = PushDown(pd.protocols, pd.ports if ports_pushed else None, pd.prefixes if prefixes_pushed else None)
    line = f"filter {expr!r}: pushed down to XDP: {shown.describe()}"
    if notes:
        line += f" ({'; '.join(notes)})"
    return line + "; the engine judges the rest", lambda: undo_recorded(prog)


def lib_flag(name: str) -> int:
    """A ``MOS_XDP_`` constant of bpf/mos_shared.h."""
    from mos._engine import lib

    return int(getattr(lib, "MOS_XDP_" + name))


def _mon_key(prog: Any, net: Network) -> Tuple[Any, Any]:
    from mos._engine import ffi, lib
    from mos.xdp import abi

    v4 = net.version == 4
    ctype = abi.LPM_V4 if v4 else abi.LPM_V6
    name = abi.MAP_NAMES[lib.MOS_XDP_MAP_MON_V4 if v4 else lib.MOS_XDP_MAP_MON_V6]
    key = abi.new(ctype, {"prefixlen": net.prefixlen})
    packed = net.network_address.packed
    ffi.memmove(key.addr, packed, len(packed))
    return prog.maps[name], key


def _write_record(prog: Any, record: Optional[Dict[str, Any]]) -> None:
    from mos.xdp import state

    if not prog.state:
        return
    if record is None:
        prog.state.pop(STATE_KEY, None)
    else:
        prog.state[STATE_KEY] = record
    state.write_state(prog.iface, prog.state)


def undo_recorded(prog: Any) -> None:
    """Gives the program back what a push-down recorded in its state took (config, ports, prefixes)."""
    rec = (prog.state or {}).get(STATE_KEY)
    if not rec:
        return
    for port in rec.get("ports", []):
        prog.monitor_port(int(port), on=False)
    for p in rec.get("prefixes", []):
        m, key = _mon_key(prog, ipaddress.ip_network(p))
        m.delete(key)
    prog.set_config(protocols=int(rec["protocols"]), flags=int(rec["flags"]))
    _write_record(prog, None)
