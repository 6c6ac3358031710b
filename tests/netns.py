"""Network namespaces and veth pairs for tests that send real traffic, cleaned up whatever happens.

Traffic never leaves the machine: every address lives inside namespaces this module creates (use
10.200.0.0/16 and fd00::/8 ULAs). Namespaces are named ``mosx-<pid>-<random>``; :func:`reap_stale`
deletes those of dead test processes (a run killed before its teardown).

Usage::

    from tests.netns import Topology, topology  # the fixture, if wanted

    with Topology() as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.veth(a, "va", b, "vb", "10.200.1.1/24", "10.200.1.2/24")
        assert a.ping("10.200.1.2")
        with b.entered():       # this thread now lives in b's network namespace
            ...

Commands run in a namespace with ``nsenter --net`` (not ``ip netns exec``), so /sys and the bpffs at
/sys/fs/bpf stay the host's: pinned BPF objects are visible inside.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

PREFIX = "mosx-"
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 30,
         **kw: Any) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def reap_stale() -> List[str]:
    """Deletes ``mosx-<pid>-*`` namespaces whose creating process is gone; returns their names."""
    gone = []
    if not NETNS_DIR.is_dir():
        return gone
    for p in NETNS_DIR.iterdir():
        parts = p.name.split("-")
        if not p.name.startswith(PREFIX) or len(parts) < 3 or not parts[1].isdigit():
            continue
        if not Path(f"/proc/{parts[1]}").exists():
            _run(["ip", "netns", "delete", p.name], check=False)
            gone.append(p.name)
    return gone


class Netns:
    """A network namespace created by a :class:`Topology`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = NETNS_DIR / name

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def cmd(self, *argv: str) -> List[str]:
        """``argv`` wrapped to run in this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 30,
            **kw: Any) -> subprocess.CompletedProcess:
        """Runs a command here; RuntimeError with its stderr when it fails and ``check``."""
        return _run(self.cmd(*argv), check=check, timeout=timeout, **kw)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NAME args``."""
        return _run(["ip", "-n", self.name, *args], check=check)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen:
        """Starts a command here in the background."""
        return subprocess.Popen(self.cmd(*argv), **kw)

    def python(self, code: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Runs Python code here (this interpreter); stdout/stderr captured as text."""
        return self.run(sys.executable, "-c", textwrap.dedent(code), timeout=timeout, check=check)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Moves the calling thread into this namespace for the ``with`` block, then back."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        here = os.open(self.path, os.O_RDONLY)
        try:
            _setns(here)
            yield
        finally:
            _setns(back)
            os.close(here)
            os.close(back)

    # -- traffic (all inside the namespace, to addresses of other test namespaces)

    def ping(self, addr: str, timeout: float = 3.0, interval: float = 0.3) -> bool:
        """ICMP/ICMPv6 echo from here (no ping(8) needed), a request every ``interval`` seconds until a
        reply comes back (True) or ``timeout`` passes (False)."""
        code = f"""
            import socket, struct, sys, time
            addr, v6 = {addr!r}, ':' in {addr!r}
            fam = socket.AF_INET6 if v6 else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
            def csum(b):
                b += b'\\0' * (len(b) % 2)
                x = sum(struct.unpack('!%dH' % (len(b) // 2), b))
                x = (x >> 16) + (x & 0xffff); x += x >> 16
                return ~x & 0xffff
            ident, seq = {os.getpid() & 0xFFFF}, 0
            end = time.time() + {timeout}
            while time.time() < end:
                msg = struct.pack('!BBHHH', 128 if v6 else 8, 0, 0, ident, seq) + b'mosx' * 8
                seq += 1
                if not v6:
                    msg = msg[:2] + struct.pack('!H', csum(msg)) + msg[4:]
                s.sendto(msg, (addr, 0))
                next_send = min(end, time.time() + {interval})
                while time.time() < next_send:
                    s.settimeout(max(0.001, next_send - time.time()))
                    try:
                        data = s.recv(2048)
                    except socket.timeout:
                        break
                    icmp = data if v6 else data[(data[0] & 15) * 4:]
                    if icmp[0] == (129 if v6 else 0) and struct.unpack('!H', icmp[4:6])[0] == ident:
                        sys.exit(0)
            sys.exit(1)
        """
        return self.python(code, timeout=timeout + 10, check=False).returncode == 0

    def tcp_connect(self, addr: str, port: int, payload: bytes = b"",
                    timeout: float = 2.0) -> Optional[bytes]:
        """Connects over TCP from here, sends ``payload``, returns what came back (None: no connection)."""
        code = f"""
            import socket, sys
            try:
                s = socket.create_connection(({addr!r}, {port}), timeout={timeout})
                s.sendall({payload!r})
                s.shutdown(socket.SHUT_WR)
                data = b''
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                sys.stdout.write(data.hex())
            except OSError:
                sys.exit(3)
        """
        r = self.python(code, timeout=timeout * 3 + 10, check=False)
        return bytes.fromhex(r.stdout.strip()) if r.returncode == 0 else None

    def udp_send(self, addr: str, port: int, payload: bytes = b"mosx", sport: int = 0) -> None:
        """Sends one UDP datagram from here."""
        fam = "AF_INET6" if ":" in addr else "AF_INET"
        self.python(f"""
            import socket
            s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)
            if {sport}:
                s.bind(('', {sport}))
            s.sendto({payload!r}, ({addr!r}, {port}))
        """)

    @contextlib.contextmanager
    def tcp_echo_server(self, addr: str, port: int) -> Iterator[subprocess.Popen]:
        """A TCP server here that echoes each connection's bytes (reversed, to be recognisable)."""
        fam = "AF_INET6" if ":" in addr else "AF_INET"
        code = textwrap.dedent(f"""
            import socket, sys
            s = socket.socket(socket.{fam}, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(({addr!r}, {port}))
            s.listen(16)
            print('ready', flush=True)
            while True:
                c, _ = s.accept()
                c.settimeout(5)
                data = b''
                try:
                    while True:
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    c.sendall(data[::-1])
                except OSError:
                    pass
                c.close()
        """)
        proc = self.popen(sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            if line.strip() != "ready":
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"echo server in {self.name} did not start: {err.strip()}")
            yield proc
        finally:
            proc.kill()
            proc.wait(timeout=10)


class Topology:
    """Namespaces and veth pairs, all removed on :meth:`close` (also on errors, via ``with``)."""

    def __init__(self) -> None:
        self.tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.namespaces: List[Netns] = []
        self._cleanups: List[Callable[[], Any]] = []

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def netns(self, label: str) -> Netns:
        """Creates ``mosx-<pid>-<random>-<label>`` with its loopback up."""
        ns = Netns(f"{PREFIX}{self.tag}-{label}")
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        # no duplicate address detection: IPv6 (link-local included) is usable as soon as a link is up
        for conf in ("all", "default"):
            ns.run("sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")
        return ns

    def veth(self, a: Netns, name_a: str, b: Netns, name_b: str, addr_a: Optional[str] = None,
             addr_b: Optional[str] = None, queues: int = 1, extra_a: Sequence[str] = (),
             extra_b: Sequence[str] = ()) -> None:
        """A veth pair between two namespaces, up, with optional addresses (``10.200.1.1/24``).

        ``queues`` sets the number of RX/TX queues of both ends (one queue keeps both directions of a flow
        on queue 0); 0 leaves the kernel's default (one per CPU allocated, one in use). Extra addresses go
        in ``extra_a``/``extra_b``.
        """
        q = ["numrxqueues", str(queues), "numtxqueues", str(queues)] if queues else []
        _run(["ip", "link", "add", name_a, "netns", a.name, *q, "type", "veth", "peer", "name", name_b,
              "netns", b.name, *q])
        for ns, name, addrs in ((a, name_a, [addr_a, *extra_a]), (b, name_b, [addr_b, *extra_b])):
            for addr in filter(None, addrs):
                extra = ["nodad"] if ":" in addr else []
                ns.ip("addr", "add", addr, "dev", name, *extra)
            ns.ip("link", "set", name, "up")

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Runs ``fn`` at :meth:`close`, before the namespaces go (last registered first)."""
        self._cleanups.append(fn)

    def close(self) -> None:
        """Runs the clean-ups and deletes every namespace (their veths go with them)."""
        errors = []
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as e:  # keep cleaning
                errors.append(e)
        for ns in reversed(self.namespaces):
            _run(["ip", "netns", "delete", ns.name], check=False)
        deadline = time.time() + 5
        while any(ns.path.exists() for ns in self.namespaces) and time.time() < deadline:
            time.sleep(0.05)
        self.namespaces.clear()
        if errors:
            raise errors[0]


def require_root() -> None:
    """Skips the calling test when not root (namespaces, XDP and raw sockets need it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, XDP)")


@pytest.fixture
def topology() -> Iterator[Topology]:
    """A fresh :class:`Topology` for one test, removed afterwards even when the test fails."""
    require_root()
    reap_stale()
    with Topology() as topo:
        yield topo
