"""Netlink through pyroute2: interfaces, their XDP programs, addresses, routes and network namespaces.

Every function acts in the caller's network namespace, or in the named one (``netns="NAME"``, a namespace
under /run/netns, as ``ip netns`` makes them; it is never created implicitly). Failures are
:class:`NetError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from pyroute2 import IPRoute
from pyroute2 import netns as _pyr_netns
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000

# <linux/if_link.h> XDP_FLAGS_*: the attach mode of a program
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS = {"generic": 1 << 1, "native": 1 << 2, "offload": 1 << 3}
# pyroute2 decodes IFLA_XDP_ATTACHED (XDP_ATTACHED_*) to iproute2's keywords; older versions give the number
_ATTACHED = {"xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "multi",
             1: "native", 2: "generic", 3: "offload", 4: "multi"}
_IFA_F_NODAD = 0x02
_IFF_UP, _IFF_LOWER_UP = 1 << 0, 1 << 16


class NetError(Exception):
    """A netlink request failed, or names something that does not exist (the message says which)."""


@dataclass
class Link:
    """An interface and the XDP program attached to it (``prog_id`` 0: none; ``mode`` "" then)."""

    ifname: str
    ifindex: int
    prog_id: int = 0
    mode: str = ""  # "native", "generic", "offload", "multi"
    up: bool = False  # administratively (IFF_UP)
    carrier: bool = False  # IFF_LOWER_UP: a veth has it once both ends are up
    mtu: int = 0
    num_rx_queues: int = 1  # allocated receive queues (IFLA_NUM_RX_QUEUES), not always the ones in use
    kind: str = ""  # IFLA_INFO_KIND: "veth", "bridge", ...; "" for a physical device
    mac: str = ""  # IFLA_ADDRESS, "aa:bb:cc:dd:ee:ff"; "" when the link has none

    @property
    def name(self) -> str:
        """The interface name (``ifname``)."""
        return self.ifname


def netns_path(name: str) -> Path:
    """Where ``ip netns`` (and :func:`netns_create`) binds the namespace ``name``."""
    return NETNS_DIR / name


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def entered(path: Path) -> Iterator[None]:
    """The calling thread lives in the network namespace at ``path`` for the ``with`` block, then goes
    back (what it creates meanwhile, sockets and subprocesses, stays there)."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        here = os.open(path, os.O_RDONLY)
        try:
            _setns(here)
            try:
                yield
            finally:
                _setns(back)
        finally:
            os.close(here)
    finally:
        os.close(back)


@contextlib.contextmanager
def _ipr(netns: Optional[str]) -> Iterator[Any]:
    """An IPRoute socket in the caller's namespace or in ``netns`` (which must exist).

    The socket is made in this thread, moved into the namespace for the moment: pyroute2's own
    ``IPRoute(netns=)`` forks a helper, which would run the caller's signal handlers and atexit hooks.
    """
    if netns is not None and not netns_path(netns).exists():
        raise NetError(f"network namespace {netns} does not exist")
    try:
        if netns is None:
            ipr = IPRoute()
        else:
            with entered(netns_path(netns)):
                ipr = IPRoute()
    except OSError as e:
        raise NetError(f"cannot open a netlink socket{_where(netns)}: {e.strerror or e}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def _where(netns: Optional[str]) -> str:
    return f" in namespace {netns}" if netns else ""


def _fail(what: str, e: NetlinkError, netns: Optional[str]) -> NetError:
    return NetError(f"{what}{_where(netns)}: {os.strerror(e.code) if e.code else e}")


def _index(ipr: Any, name: str, netns: Optional[str]) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise NetError(f"interface {name} does not exist{_where(netns)}")
    return int(found[0])


def _on_link(name: str, netns: Optional[str], what: str, call: Callable[[Any, int], Any]) -> Any:
    """``call(ipr, ifindex)`` on the interface ``name``; a netlink error becomes NetError("what: why")."""
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        try:
            return call(ipr, idx)
        except NetlinkError as e:
            raise _fail(what, e, netns) from None


def _link(msg: Any) -> Link:
    flags = int(msg["flags"])
    lk = Link(str(msg.get("IFLA_IFNAME")), int(msg["index"]), up=bool(flags & _IFF_UP),
              carrier=bool(flags & _IFF_LOWER_UP), mtu=int(msg.get("IFLA_MTU") or 0),
              num_rx_queues=int(msg.get("IFLA_NUM_RX_QUEUES") or 1), mac=str(msg.get("IFLA_ADDRESS") or ""))
    info = msg.get("IFLA_LINKINFO")
    if info is not None:
        lk.kind = str(info.get("IFLA_INFO_KIND") or "")
    xdp = msg.get("IFLA_XDP")
    if xdp is not None:
        attached = xdp.get("IFLA_XDP_ATTACHED")
        if attached:
            lk.mode = _ATTACHED.get(attached, str(attached))
            lk.prog_id = int(xdp.get("IFLA_XDP_PROG_ID") or 0)
    return lk


# ---- interfaces -------------------------------------------------------------------------------------------


def ifindex(name: str, netns: Optional[str] = None) -> int:
    """The index of interface ``name``; NetError ("interface X does not exist") when there is none."""
    if netns is None:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            raise NetError(f"interface {name} does not exist") from None
    with _ipr(netns) as ipr:
        return _index(ipr, name, netns)


def links(netns: Optional[str] = None) -> List[Link]:
    """Every interface of the namespace, with its XDP program id and mode (IFLA_XDP)."""
    with _ipr(netns) as ipr:
        try:
            return [_link(m) for m in ipr.get_links()]
        except NetlinkError as e:
            raise _fail("cannot list interfaces", e, netns) from None


def link_xdp(name: str, netns: Optional[str] = None) -> Link:
    """One interface and its XDP program; NetError when it does not exist."""
    return _on_link(name, netns, f"cannot read interface {name}",
                    lambda ipr, idx: _link(ipr.get_links(idx)[0]))


def link_stats(name: str, netns: Optional[str] = None) -> Dict[str, int]:
    """The interface's 64-bit counters (IFLA_STATS64: ``rx_packets``, ``tx_dropped``, ...)."""
    stats = _on_link(name, netns, f"cannot read interface {name}",
                     lambda ipr, idx: ipr.get_links(idx)[0].get("IFLA_STATS64") or {})
    return {k: int(v) for k, v in stats.items() if isinstance(v, int)}


def link_set(name: str, netns: Optional[str] = None, up: Optional[bool] = None,
             mtu: Optional[int] = None) -> None:
    """Sets the interface up or down and/or its MTU."""
    kw: Dict[str, Any] = {}
    if up is not None:
        kw["state"] = "up" if up else "down"
    if mtu is not None:
        kw["mtu"] = mtu
    _on_link(name, netns, f"cannot set {name} {kw}", lambda ipr, idx: ipr.link("set", index=idx, **kw))


def link_delete(name: str, netns: Optional[str] = None) -> None:
    """Deletes an interface (both ends, for a veth); NetError when it does not exist."""
    _on_link(name, netns, f"cannot delete {name}", lambda ipr, idx: ipr.link("del", index=idx))


def veth_add(name: str, peer: str, netns: Optional[str] = None, peer_netns: Optional[str] = None,
             queues: int = 0) -> None:
    """A veth pair ``name`` -- ``peer``, each end created directly in its namespace (so the names need
    not be free in the caller's). ``queues`` > 0 sets both ends' RX and TX queue counts."""
    for ns in (netns, peer_netns):
        if ns is not None and not netns_path(ns).exists():
            raise NetError(f"network namespace {ns} does not exist")
    q = {"num_rx_queues": queues, "num_tx_queues": queues} if queues else {}
    end: Dict[str, Any] = {"ifname": name, **q}
    other: Dict[str, Any] = {"ifname": peer, **q}
    if netns is not None:
        end["net_ns_fd"] = netns
    if peer_netns is not None:
        other["net_ns_fd"] = peer_netns
    with _ipr(None) as ipr:
        try:
            ipr.link("add", kind="veth", peer=other, **end)
        except NetlinkError as e:
            raise _fail(f"cannot create veth pair {name}/{peer}", e, None) from None


def addr_add(name: str, address: str, netns: Optional[str] = None) -> None:
    """Adds ``address`` (``10.0.0.1/24``, ``fd00::1/64``) to the interface; IPv6 ones without duplicate
    address detection (usable at once)."""
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise NetError(f"not an address with a prefix length: {address!r}") from None
    kw: Dict[str, Any] = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen}
    if iface.version == 6:
        kw["IFA_FLAGS"] = _IFA_F_NODAD
    _on_link(name, netns, f"cannot add {address} to {name}", lambda ipr, idx: ipr.addr("add", index=idx, **kw))


def addresses(name: str, netns: Optional[str] = None) -> List[str]:
    """The interface's addresses, as ``ADDR/PREFIXLEN``."""
    msgs = _on_link(name, netns, f"cannot read the addresses of {name}", lambda ipr, idx: ipr.get_addr(index=idx))
    return [f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs]


def route_add(dst: str, gateway: str, netns: Optional[str] = None) -> None:
    """A route to the prefix ``dst`` (``10.0.3.0/24``) via ``gateway``."""
    with _ipr(netns) as ipr:
        try:
            ipr.route("add", dst=dst, gateway=gateway)
        except NetlinkError as e:
            raise _fail(f"cannot add a route to {dst} via {gateway}", e, netns) from None


def neigh_flush(name: str, netns: Optional[str] = None) -> None:
    """Forgets the interface's neighbour (ARP/NDP) entries."""
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        for m in ipr.get_neighbours(ifindex=idx):
            with contextlib.suppress(NetlinkError):  # an entry may go away on its own meanwhile
                ipr.neigh("del", ifindex=idx, dst=m.get("NDA_DST"), family=m["family"])


# ---- XDP ---------------------------------------------------------------------------------------------------


def _xdp_flags(mode: str) -> int:
    try:
        return XDP_FLAGS[mode]
    except KeyError:
        raise NetError(f"unknown XDP mode {mode!r} (native, generic or offload)") from None


def xdp_attach(name: str, prog_fd: int, mode: str = "native", netns: Optional[str] = None,
               replace: bool = True) -> None:
    """Attaches the XDP program ``prog_fd`` to the interface in ``mode`` (IFLA_XDP); with ``replace``
    False, NetError if a program is attached already."""
    flags = _xdp_flags(mode) | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
    attrs = [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", flags)]
    _on_link(name, netns, f"cannot attach an XDP program to {name} ({mode})",
             lambda ipr, idx: ipr.link("set", index=idx, xdp={"attrs": attrs}))


def xdp_detach(name: str, mode: str = "", netns: Optional[str] = None) -> None:
    """Detaches whatever XDP program the interface has in ``mode`` ("" : generic, then native), as
    ``ip link set dev NAME xdpgeneric off`` / ``xdpdrv off`` do; nothing attached is not an error."""
    modes = [mode] if mode else ["generic", "native"]
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        for m in modes:
            attrs = [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", _xdp_flags(m))]
            try:
                ipr.link("set", index=idx, xdp={"attrs": attrs})
            except NetlinkError as e:
                if mode:  # asked for one mode: say why it failed; "every mode" is best effort
                    raise _fail(f"cannot detach the XDP program of {name} ({m})", e, netns) from None


# ---- network namespaces ------------------------------------------------------------------------------------


def netns_id() -> int:
    """The calling thread's network namespace, as the inode of /proc/thread-self/ns/net (0 when unreadable).

    The thread's, not the process's: :func:`entered` moves one thread (setns), and /proc/self names the
    thread-group leader, which may live elsewhere.
    """
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


def netns_list() -> List[str]:
    """The names of the namespaces under /run/netns."""
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def netns_create(name: str) -> Path:
    """Creates the named namespace (as ``ip netns add``) with its loopback up; returns its path."""
    if netns_path(name).exists():
        raise NetError(f"network namespace {name} exists already")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        # a new namespace for this thread only, bound to its name, then back: no helper process
        if libc.unshare(_CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetError(f"cannot create network namespace {name}: {os.strerror(err)}")
        try:
            _pyr_netns.attach(name, "thread-self")
        except OSError as e:
            with contextlib.suppress(OSError):
                netns_path(name).unlink()
            raise NetError(f"cannot create network namespace {name}: {e.strerror or e}") from None
        finally:
            _setns(back)
    finally:
        os.close(back)
    link_set("lo", netns=name, up=True)
    return netns_path(name)


def netns_delete(name: str) -> None:
    """Removes the named namespace (as ``ip netns delete``); a missing one is not an error. Its
    interfaces go with it once no process lives in it any more (see :func:`netns_pids`)."""
    if netns_path(name).exists():
        try:
            _pyr_netns.remove(name)
        except OSError as e:
            raise NetError(f"cannot delete network namespace {name}: {e.strerror or e}") from None


def netns_pids(name: str) -> List[int]:
    """The processes living in the named namespace (as ``ip netns pids``)."""
    try:
        st = os.stat(netns_path(name))
    except OSError:
        return []
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ns = os.stat(p / "ns" / "net")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if (ns.st_ino, ns.st_dev) == (st.st_ino, st.st_dev):
            pids.append(int(p.name))
    return pids


__all__ = ["Link", "NETNS_DIR", "NetError", "addr_add", "addresses", "ifindex", "link_delete", "link_set",
           "entered", "link_stats", "link_xdp", "links", "neigh_flush", "netns_create", "netns_delete", "netns_id",
           "netns_list", "netns_path", "netns_pids", "route_add", "veth_add", "xdp_attach", "xdp_detach"]
