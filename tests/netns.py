"""Network namespaces and veth pairs for tests that send real traffic, cleaned up whatever happens.

The plumbing is :mod:`mos.net.topology`; this module adds the tests' traffic helpers (ping, TCP, UDP, an
echo server) and a fixture. Traffic never leaves the machine: every address lives inside namespaces the
test creates (use 10.200.0.0/16 and fd00::/8 ULAs). Namespaces are named ``mosx-<pid>-<random>-<label>``;
:func:`reap_stale` deletes those of dead test processes (a run killed before its teardown).

Usage::

    from tests.netns import Topology, topology  # the fixture, if wanted

    with Topology() as topo:
        a, b = topo.netns("a"), topo.netns("b")
        topo.veth(a, "va", b, "vb", "10.200.1.1/24", "10.200.1.2/24")
        assert a.ping("10.200.1.2")
        with b.entered():       # this thread now lives in b's network namespace
            ...
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from typing import Iterator, List, Optional

import pytest

from mos.net import topology as _topo

PREFIX = "mosx-"


def reap_stale() -> List[str]:
    """Deletes ``mosx-<pid>-*`` namespaces whose creating process is gone; returns their names."""
    return _topo.reap_stale(PREFIX)


class Netns(_topo.Netns):
    """A test namespace: :class:`mos.net.topology.Netns` and traffic from it."""

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


class Topology(_topo.Topology):
    """:class:`mos.net.topology.Topology` of test namespaces (``mosx-`` names, IPv6 without DAD)."""

    netns_type = Netns

    def __init__(self) -> None:
        super().__init__(prefix=PREFIX)

    def netns(self, label: str) -> Netns:
        """Creates ``mosx-<pid>-<random>-<label>`` with its loopback up."""
        ns = super().netns(label)
        assert isinstance(ns, Netns)
        return ns


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
