"""Throw-away network topologies: namespaces, veth pairs between them, addresses, routes, processes.

One helper for the tests, the benchmarks and the demo. A :class:`Topology` names its namespaces
``<prefix><tag>-<label>`` where the tag starts with the creating process's pid, so :func:`reap_stale` can
remove those of a process that was killed before its teardown. Leaving its ``with`` block (normally, on
an exception or on Ctrl-C) stops the processes it started, runs the registered clean-ups, kills whatever
still lives in its namespaces and deletes them, which deletes their veths and the XDP programs on them.

Usage::

    with Topology(prefix="mosx-") as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.veth(a, "va", b, "vb", "10.200.1.1/24", "10.200.1.2/24")
        srv = topo.spawn(b, "python3", "-m", "http.server")   # stopped at teardown
        a.run("curl", "-s", "http://10.200.1.2:8000/")
        with b.entered():        # this thread lives in b for the block (bpf maps, sockets)
            ...

Commands run in a namespace with ``nsenter --net=`` and not ``ip netns exec``: the latter gives each
command a mount namespace of its own with a fresh /sys, where the bpffs pins under /sys/fs/bpf are absent.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from . import netlink as nl

# ethtool -K features of a veth end host whose frames an XDP middle box forwards: checksums in software
# (a frame redirected by XDP never gets an offloaded checksum filled in), MTU-sized frames (no TSO/GSO),
# GRO on (XDP_REDIRECT into a veth needs the peer's NAPI)
XDP_END_HOST = {"gro": True, "tx": False, "tso": False, "gso": False}
# a capture of MTU-sized segments, as on a wire
NO_SEGMENTATION = {"tso": False, "gso": False, "gro": False}


def run(argv: Sequence[str], check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    """Runs a command, output captured as text; RuntimeError with its stderr when it fails and ``check``."""
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5) -> Optional[int]:
    """Sends ``sig`` once, waits up to ``timeout`` seconds, then SIGKILLs; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


class Netns:
    """A named network namespace (under /run/netns) and what runs in it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = nl.netns_path(name)

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    # -- processes

    def cmd(self, *argv: str) -> List[str]:
        """``argv`` wrapped to run in this namespace (``nsenter --net=PATH --``)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
        """Runs a command here (see :func:`run`)."""
        return run(self.cmd(*argv), check=check, timeout=timeout, **kw)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen:
        """Starts a command here in the background (not stopped at teardown: see :meth:`Topology.spawn`)."""
        return subprocess.Popen(self.cmd(*argv), **kw)

    def python(self, code: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Runs Python code here (this interpreter); stdout/stderr captured as text."""
        return self.run(sys.executable, "-c", textwrap.dedent(code), timeout=timeout, check=check)

    def pids(self) -> List[int]:
        """The processes living here."""
        return nl.netns_pids(self.name)

    def entered(self) -> contextlib.AbstractContextManager:
        """Moves the calling thread into this namespace for the ``with`` block, then back (the
        subprocesses it starts meanwhile live here too)."""
        return nl.entered(self.path)

    # -- configuration (netlink, sysctl, ethtool)

    def sysctl(self, **settings: Any) -> None:
        """Sets sysctls of this namespace: ``sysctl(**{"net.ipv6.conf.all.accept_dad": 0})``."""
        self.run("sysctl", "-qw", *(f"{k}={v}" for k, v in settings.items()))

    def addr_add(self, dev: str, *addresses: str) -> None:
        """Adds addresses (``10.0.0.1/24``, ``fd00::1/64``: no duplicate address detection) to ``dev``."""
        for a in addresses:
            nl.addr_add(dev, a, netns=self.name)

    def link_set(self, dev: str, up: Optional[bool] = None, mtu: Optional[int] = None) -> None:
        """Sets ``dev`` up or down and/or its MTU."""
        nl.link_set(dev, netns=self.name, up=up, mtu=mtu)

    def route_add(self, dst: str, gateway: str) -> None:
        """A route to ``dst`` via ``gateway``."""
        nl.route_add(dst, gateway, netns=self.name)

    def links(self) -> List[nl.Link]:
        """The interfaces here, with their XDP programs."""
        return nl.links(netns=self.name)

    def xdp_links(self) -> List[nl.Link]:
        """The interfaces here that have an XDP program attached."""
        return [lk for lk in self.links() if lk.prog_id]

    def ethtool(self, dev: str, features: Dict[str, bool], best_effort: bool = False) -> None:
        """``ethtool -K dev FEATURE on|off ...``; ``best_effort``: one call per feature, failures ignored
        (a driver may not have them all)."""
        args = [[k, "on" if v else "off"] for k, v in features.items()]
        if best_effort:
            for a in args:
                self.run("ethtool", "-K", dev, *a, check=False)
        else:
            self.run("ethtool", "-K", dev, *(x for a in args for x in a))

    def wait_carrier(self, *devs: str, timeout: float = 10) -> None:
        """Waits until each of ``devs`` has a carrier (LOWER_UP); RuntimeError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            carrier = {lk.ifname for lk in self.links() if lk.carrier}
            if carrier.issuperset(devs):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(devs)} in {self.name} did not come up within {timeout:g} s")
            time.sleep(0.05)


class Topology:
    """Namespaces, veth pairs and processes, all removed by :meth:`close` (also on errors and Ctrl-C, via
    ``with``; at interpreter exit too, if still open).

    ``prefix``: the start of the namespaces' names; ``tag``: what follows it (default: the pid and random
    hex, so that concurrent topologies never collide); ``ipv6``: False disables IPv6 in each namespace
    (no router solicitations or MLD reports in counters), True turns duplicate address detection off.
    ``actions`` records, in ``ip``/``ethtool`` form, what was set up (for a benchmark's report).
    """

    netns_type: Type[Netns] = Netns

    def __init__(self, prefix: str = "mosx-", tag: Optional[str] = None, ipv6: bool = True) -> None:
        self.prefix = prefix
        self.tag = tag or f"{os.getpid()}-{secrets.token_hex(3)}"
        self.ipv6 = ipv6
        self.namespaces: List[Netns] = []
        self.actions: List[str] = []
        self._cleanups: List[Callable[[], Any]] = []
        self._short = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        atexit.register(self.close)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dev(self, label: str) -> str:
        """An interface name unique on the host (``label`` + 9 characters: keep ``label`` <= 6): a name in
        one namespace's listing says which test made it, whichever namespace it is read from."""
        name = f"{label}{self._short}"
        if len(name) > 15:
            raise ValueError(f"interface name {name!r} longer than 15 characters")
        return name

    def netns(self, label: str) -> Netns:
        """Creates ``<prefix><tag>-<label>`` with its loopback up (replacing a leftover of that name, which
        can only be a dead process's since the tag holds the pid)."""
        ns = self.netns_type(f"{self.prefix}{self.tag}-{label}")
        if ns.path.exists():
            _remove_netns(ns.name)
        nl.netns_create(ns.name)
        self.namespaces.append(ns)
        self.actions.append(f"ip netns add {ns.name}")
        key, value = ("accept_dad", 0) if self.ipv6 else ("disable_ipv6", 1)
        settings = {f"net.ipv6.conf.{c}.{key}": value for c in ("all", "default")}
        ns.sysctl(**settings)
        self.actions.append(" ".join(ns.cmd("sysctl", "-qw", *(f"{k}={v}" for k, v in settings.items()))))
        return ns

    def veth(self, a: Netns, name_a: str, b: Netns, name_b: str, addr_a: Optional[str] = None,
             addr_b: Optional[str] = None, queues: int = 1, extra_a: Sequence[str] = (),
             extra_b: Sequence[str] = (), mtu: Optional[int] = None, up: bool = True) -> None:
        """A veth pair ``a:name_a`` -- ``b:name_b``, with optional addresses (``10.200.1.1/24``), up.

        ``queues`` sets the number of RX/TX queues of both ends (one queue keeps both directions of a flow
        on queue 0); 0 leaves the kernel's default. Extra addresses go in ``extra_a``/``extra_b``.
        """
        nl.veth_add(name_a, name_b, netns=a.name, peer_netns=b.name, queues=queues)
        q = f" numrxqueues {queues} numtxqueues {queues}" if queues else ""
        self.actions.append(f"ip link add {name_a} netns {a.name}{q} type veth peer name {name_b} "
                            f"netns {b.name}{q}")
        for ns, name, addrs in ((a, name_a, [addr_a, *extra_a]), (b, name_b, [addr_b, *extra_b])):
            for addr in filter(None, addrs):
                ns.addr_add(name, addr)
                self.actions.append(f"ip -n {ns.name} addr add {addr} dev {name}")
            if up or mtu:
                ns.link_set(name, up=up or None, mtu=mtu)
                self.actions.append(f"ip -n {ns.name} link set {name}" + (" up" if up else "")
                                    + (f" mtu {mtu}" if mtu else ""))

    def ethtool(self, ns: Netns, dev: str, features: Dict[str, bool], best_effort: bool = False) -> None:
        """:meth:`Netns.ethtool`, recorded in :attr:`actions`."""
        ns.ethtool(dev, features, best_effort=best_effort)
        self.actions.append(" ".join(ns.cmd("ethtool", "-K", dev))
                            + "".join(f" {k} {'on' if v else 'off'}" for k, v in features.items()))

    def route(self, ns: Netns, dst: str, gateway: str) -> None:
        """:meth:`Netns.route_add`, recorded in :attr:`actions`."""
        ns.route_add(dst, gateway)
        self.actions.append(f"ip -n {ns.name} route add {dst} via {gateway}")

    def spawn(self, ns: Netns, *argv: str, stop_signal: int = signal.SIGTERM, **popen_kw: Any) -> subprocess.Popen:
        """Starts ``argv`` in ``ns``; :meth:`close` stops it (``stop_signal``, then SIGKILL after 5 s)."""
        proc = ns.popen(*argv, **popen_kw)
        self.on_close(lambda: stop_process(proc, stop_signal))
        return proc

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Runs ``fn`` at :meth:`close`, before the namespaces go (last registered first)."""
        self._cleanups.append(fn)

    def close(self) -> None:
        """Runs the clean-ups (spawned processes included), kills what still lives in the namespaces and
        deletes them (idempotent). A second Ctrl-C cannot cut it short. Raises the first clean-up error."""
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        errors: List[BaseException] = []
        try:
            while self._cleanups:
                try:
                    self._cleanups.pop()()
                except Exception as e:  # keep cleaning
                    errors.append(e)
            for ns in reversed(self.namespaces):
                try:
                    _remove_netns(ns.name)
                except (nl.NetError, OSError) as e:
                    errors.append(e)
            self.namespaces.clear()
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            atexit.unregister(self.close)
        if errors:
            raise errors[0]


def _remove_netns(name: str) -> None:
    """Kills the processes in the namespace (they would keep it and its veths alive), then deletes it."""
    for _ in range(3):
        pids = [p for p in nl.netns_pids(name) if p != os.getpid()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    nl.netns_delete(name)


def reap_stale(prefix: str) -> List[str]:
    """Deletes ``<prefix><pid>-*`` namespaces whose creating process is gone (and the processes still
    in them); returns their names."""
    gone = []
    for name in nl.netns_list():
        pid = name[len(prefix):].split("-")[0] if name.startswith(prefix) else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(nl.NetError, OSError):
                _remove_netns(name)
                gone.append(name)
    return gone


__all__ = ["NO_SEGMENTATION", "Netns", "Topology", "XDP_END_HOST", "reap_stale", "run", "stop_process"]
