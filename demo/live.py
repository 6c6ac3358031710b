"""The live demo: the stack live and inline between a client and a server, in network namespaces.

Three namespaces named ``mosdemo-<pid>-cli``, ``-mbx`` and ``-srv``, joined by two veth pairs::

    client 10.77.0.1 [cli0] ---- [mbi<pid>] middle box [mbo<pid>] ---- [srv0] 10.77.0.2:8000 server

The client and the server share one subnet: the middle box is a bump in the wire (ARP crosses it in XDP).
Every address lives inside these namespaces; nothing is configured on the machine's own interfaces.
The server runs ``python3 -m http.server`` on a temporary directory; the middle box runs
``mos-xdp run apps/demo_live.py --iface mbi<pid> --peer mbo<pid> --stats`` (``run_live`` inline: XDP
steers TCP into AF_XDP sockets, the engine and the apps see it, and it is sent out of the other side).
The client then fetches files with curl (one of 20 MiB, compared byte for byte) and sends a request for
``/etc/passwd`` in two writes, which the firewall must drop although neither segment holds the pattern.
The demo prints what the apps printed after each step, the XDP program's counters (read from its pinned
maps with :mod:`mos.xdp`), the final connection table and the engine's counters. The namespaces and veths
are a :class:`mos.net.topology.Topology`.

Everything is bounded in time (``timeout``) and removed on every exit path, Ctrl-C included: processes,
namespaces (their veths and XDP programs go with them), pins under /sys/fs/bpf/mos-xdp and state files.
Namespaces and pins of a demo that was killed outright (SIGKILL) are removed by the next demo.
:class:`CannotRun` means the machine cannot run the live demo (not root, no bcc, no XDP, ...): ``python -m
demo`` then shows the offline demo instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from mos.net import netlink
from mos.net.topology import XDP_END_HOST, Netns, Topology, run
from mos.net.topology import reap_stale as reap_stale_netns

NS_PREFIX = "mosdemo-"
NETNS_DIR = netlink.NETNS_DIR
CLIENT_IP, SERVER_IP, PREFIXLEN, PORT = "10.77.0.1", "10.77.0.2", 24, 8000
CLIENT_IF, SERVER_IF = "cli0", "srv0"
BIG_MIB = 20
PATTERN = "/etc/passwd"
BLOCK_WAIT = 2.0  # seconds the client waits for a reply to the blocked request
READY = "mos-xdp: live on"
APP = Path(__file__).resolve().parent.parent / "apps" / "demo_live.py"

GLOSS = {
    "rx": "frames seen by the XDP program (both interfaces)",
    "redirect": "verdict: redirected (to an AF_XDP socket or out of the other interface)",
    "pass": "verdict: passed to the middle box's own stack",
    "drop": "verdict: dropped",
    "xsk_redirect": "TCP sent to the AF_XDP socket: the engine and the apps",
    "pass_not_ip": "not IP (ARP): forwarded to the other side in XDP (fail-open)",
    "pass_not_monitored": "not monitored (ICMP, other protocols or ports): forwarded in XDP",
    "pass_no_socket": "no AF_XDP socket registered: forwarded in XDP",
    "drop_malformed": "malformed headers: dropped",
    "drop_blocked_prefix": "address in a block list: dropped",
    "drop_blocked_port": "port in a block list: dropped",
    "bypass_drop": "the firewall's verdict on a connection, applied in XDP: dropped",
    "bypass_pass": "a connection's bypass verdict: passed",
    "bypass_redirect": "a connection's bypass verdict: forwarded in XDP, skipping userspace",
    "bypass_expired": "idle bypass entries removed",
    "fragment": "IP fragments",
}


class CannotRun(Exception):
    """This machine cannot run the live demo (the reason is the message); nothing was left behind."""


class DemoFailed(Exception):
    """The live demo ran but something did not happen as it should (or it ran out of time)."""


class _Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C so that everything is cleaned up."""


# ---- environment ---------------------------------------------------------------------------------------------


def check_environment() -> None:
    """CannotRun when something the live demo needs is missing (cheap checks, nothing is changed)."""
    if os.geteuid() != 0:
        raise CannotRun("not root: network namespaces and XDP need root")
    for tool in ("nsenter", "curl", "ethtool", "sysctl"):
        if shutil.which(tool) is None:
            raise CannotRun(f"{tool} not found (apt-get install util-linux curl ethtool procps)")
    if not Path("/proc/self/ns/net").exists():
        raise CannotRun("the kernel has no network namespaces")
    if not APP.is_file():
        raise CannotRun(f"{APP} not found (the live demo runs from a checkout)")
    from mos import xdp

    if importlib.util.find_spec("bcc") is None:
        raise CannotRun(f"bcc is not installed: {xdp.INSTALL_HINT}")
    try:
        xdp.require_kernel_headers()
    except xdp.XdpError as e:
        raise CannotRun(str(e)) from None
    try:
        from mos import live  # noqa: F401 - the engine's AF_XDP half must be built
    except ImportError as e:
        raise CannotRun(str(e)) from None


def _remove_leftovers() -> List[str]:
    """Pins and state files of namespaces that are gone (a demo's middle box, after its topology went):
    what ``mos-xdp detach --stale`` removes. Best effort: a pid namespace cannot tell."""
    from mos import xdp

    try:
        return xdp.state.remove_stale()
    except (xdp.XdpError, OSError):
        return []


def reap_stale() -> List[str]:
    """Removes namespaces, pins and state files of demos whose process is gone; returns what it removed."""

    gone = reap_stale_netns(NS_PREFIX)
    gone += _remove_leftovers()
    for p in Path(tempfile.gettempdir()).glob(f"{NS_PREFIX}*-*"):
        pid = p.name[len(NS_PREFIX):].split("-")[0]
        if p.is_dir() and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(str(p))
    return gone


# ---- processes whose output is collected ------------------------------------------------------------------------


class _Log:
    """Lines of the middle box and the server, in the order they were read, read from the main thread.

    The demo has no other thread: a child's parent-death signal is sent again each time a thread of the
    parent that inherited the child exits, and a second SIGTERM would cut the middle box's teardown short.
    """

    def __init__(self) -> None:
        self.lines: List[Tuple[str, str, str]] = []
        self.procs: List[_Proc] = []
        self.last = time.monotonic()
        self.shown = 0

    def pump(self) -> int:
        """Reads what the children wrote since last time; returns the number of new lines."""
        n = 0
        for p in sorted(self.procs, key=lambda p: p.name != "middlebox"):  # what it saw, then the server's log
            for stream, line in p.read():
                self.lines.append((p.name, stream, line.rstrip("\n")))
                n += 1
        if n:
            self.last = time.monotonic()
        return n

    def new(self) -> List[Tuple[str, str, str]]:
        self.pump()
        out = self.lines[self.shown:]
        self.shown = len(self.lines)
        return out

    def settle(self, quiet: float = 0.3, limit: float = 2.0) -> None:
        """Waits until nothing came for ``quiet`` seconds (at most ``limit``)."""
        end = time.monotonic() + limit
        self.pump()
        while time.monotonic() < end and time.monotonic() - self.last < quiet:
            time.sleep(0.05)
            self.pump()


def _die_with_parent(sig: int) -> Callable[[], None]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl  # looked up here: the child only calls it

    def pre() -> None:  # in the child, before exec: ``sig`` when the demo dies (even of SIGKILL)
        prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG

    return pre


class _Proc:
    """A child in a namespace, in its own session (Ctrl-C reaches only the demo, which stops it), sent
    ``death_signal`` if the demo dies without cleaning up.

    Its output goes to files in ``outdir``, not to pipes: if the demo is killed, the child's last writes
    (the middle box's teardown report) must not fail and cut its clean-up short.
    """

    def __init__(self, name: str, argv: List[str], log: _Log, outdir: Path, env: Optional[Dict[str, str]] = None,
                 death_signal: int = signal.SIGKILL) -> None:
        self.name = name
        self.log = log
        paths = {stream: outdir / f"{name}.{stream}" for stream in ("out", "err")}
        with open(paths["out"], "wb") as out, open(paths["err"], "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                         start_new_session=True, preexec_fn=_die_with_parent(death_signal))
        self.files = {n: open(p, encoding="utf-8", errors="replace") for n, p in paths.items()}
        self.partial = {n: "" for n in paths}
        self.out: List[str] = []
        self.err: List[str] = []
        log.procs.append(self)

    def read(self) -> List[Tuple[str, str]]:
        """New complete lines (the last, unterminated one too once the process has exited)."""
        exited = self.proc.poll() is not None  # checked before reading: nothing written before exit is missed
        got = []
        for stream, f in self.files.items():
            if f.closed:
                continue
            while True:
                chunk = f.readline()
                if not chunk:
                    break
                self.partial[stream] += chunk
                if chunk.endswith("\n"):
                    got.append((stream, self.partial[stream]))
                    self.partial[stream] = ""
            if exited and self.partial[stream]:
                got.append((stream, self.partial[stream] + "\n"))
                self.partial[stream] = ""
        for stream, line in got:
            (self.out if stream == "out" else self.err).append(line)
        return got

    def wait_for(self, text: str, where: List[str], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.log.pump()
            if any(text in line for line in where):
                return True
            if self.proc.poll() is not None:
                self.log.pump()
                return any(text in line for line in where)
            time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> Optional[int]:
        """Signals the process (once: a second signal could cut its clean-up short), waits, then kills its
        whole process group if needed; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # it, if still there, and anything it left in its group
        self.proc.wait(timeout=10)
        self.log.pump()
        return self.proc.returncode

    def close(self) -> None:
        for f in self.files.values():
            f.close()


# ---- the demo -------------------------------------------------------------------------------------------------

BLOCKED_CLIENT = """
import socket, struct, sys, time
s = socket.create_connection(({server!r}, {port}), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))  # close = RST
s.sendall({first!r})
time.sleep(0.3)
s.sendall({second!r})
s.settimeout({wait})
try:
    data = s.recv(65536)
except socket.timeout:
    print('TIMEOUT')
except ConnectionResetError:
    print('RESET')
else:
    print('REPLY', repr(data[:40]))
"""


class LiveDemo:
    """One run of the live demo; :meth:`run` returns the exit code (0: everything worked)."""

    def __init__(self, timeout: float = 60.0, echo: Callable[[str], Any] = print, big_mib: int = BIG_MIB) -> None:
        self.timeout = timeout
        self.echo = echo
        self.big_mib = big_mib
        pid = os.getpid()
        # IPv4 only: no router solicitations or MLD in the counters
        self.topo = Topology(prefix=NS_PREFIX, tag=str(pid), ipv6=False)
        self.ns: Dict[str, Netns] = {}
        self.mbi, self.mbo = f"mbi{pid}", f"mbo{pid}"
        self.procs: List[_Proc] = []
        self.mbx: Optional[_Proc] = None
        self.log = _Log()
        self.tmp: Optional[Path] = None
        self.deadline = 0.0
        self.t0 = 0.0
        self.problems: List[str] = []

    # -- helpers

    def left(self, cap: float = 1e9) -> float:
        """Seconds left before the overall deadline (DemoFailed when none), at most ``cap``."""
        rest = self.deadline - time.monotonic()
        if rest <= 0:
            raise DemoFailed(f"the demo ran out of time ({self.timeout:g} s)")
        return min(rest, cap)

    def nsexec(self, key: str, *argv: str) -> List[str]:
        return self.ns[key].cmd(*argv)

    def show(self, indent: str = "   ") -> None:
        """Prints what the middle box and the server printed since last time."""
        for who, _stream, line in self.log.new():
            self.echo(f"{indent}{who + '>':<10} {line}")

    # -- set-up

    def _topology(self) -> None:
        self.left()
        try:
            for key in ("cli", "mbx", "srv"):
                self.ns[key] = self.topo.netns(key)
        except (netlink.NetError, RuntimeError) as e:
            raise CannotRun(f"cannot create a network namespace ({e})") from None
        cli, mbx, srv = self.ns["cli"], self.ns["mbx"], self.ns["srv"]
        try:
            self.topo.veth(cli, CLIENT_IF, mbx, self.mbi, f"{CLIENT_IP}/{PREFIXLEN}")
            self.topo.veth(mbx, self.mbo, srv, SERVER_IF, None, f"{SERVER_IP}/{PREFIXLEN}")
        except netlink.NetError as e:
            raise CannotRun(f"cannot create veth pairs ({e})") from None
        for ns, dev in ((cli, CLIENT_IF), (srv, SERVER_IF)):
            ns.ethtool(dev, XDP_END_HOST)

    def _files(self) -> Dict[str, bytes]:
        assert self.tmp is not None
        www = self.tmp / "www"
        www.mkdir()
        files = {
            "index.html": b"<!doctype html>\n<title>mos-xdp demo</title>\n<h1>Hello from the server namespace</h1>\n"
                          b"<p>This page crossed a middle box running mos-xdp inline.</p>\n",
            "notes.txt": b"mos-xdp: both TCP endpoints' states, both byte streams, mOS-style events.\n" * 20,
            "big.bin": os.urandom(self.big_mib << 20),
        }
        for name, data in files.items():
            (www / name).write_bytes(data)
        return files

    def _server(self) -> None:
        assert self.tmp is not None
        srv = _Proc("server", self.nsexec("srv", sys.executable, "-u", "-m", "http.server", str(PORT), "--bind",
                                          SERVER_IP, "--directory", str(self.tmp / "www")), self.log, self.tmp)
        self.procs.append(srv)
        if not srv.wait_for("Serving HTTP", srv.out, self.left(15)):
            raise DemoFailed(f"the HTTP server did not start: {''.join(srv.err).strip()[-300:]}")

    def _middlebox(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(APP.parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = self.nsexec("mbx", sys.executable, "-m", "mos.cli", "run", str(APP), "--iface", self.mbi,
                           "--peer", self.mbo, "--stats", "--no-progress", "--", "--interval", "0",
                           f"--pattern={PATTERN}")
        # SIGTERM if the demo dies: the run stops cleanly and detaches its XDP program
        assert self.tmp is not None
        self.mbx = _Proc("middlebox", argv, self.log, self.tmp, env=env, death_signal=signal.SIGTERM)
        self.procs.append(self.mbx)
        budget = self.left()
        if not self.mbx.wait_for(READY, self.mbx.err, budget):
            running = self.mbx.proc.poll() is None
            self.mbx.stop(signal.SIGINT, timeout=10)
            errs = [line.strip() for line in self.mbx.err if line.strip()]
            if running:
                raise DemoFailed(f"the middle box did not start within {budget:.0f} s")
            why = next((e for e in reversed(errs) if e.startswith(("Error:", "mos-xdp:"))), errs[-1] if errs else "?")
            raise CannotRun(f"the middle box could not start: {why.removeprefix('Error: ')}")

    # -- traffic

    def _curl(self, name: str, data: bytes, note: str = "") -> None:
        assert self.tmp is not None
        out = self.tmp / f"got-{name}"
        url = f"http://{SERVER_IP}:{PORT}/{name}"
        t = time.monotonic()
        r = run(self.nsexec("cli", "curl", "-sS", "-o", str(out), "-w", "%{http_code}", "--max-time",
                             f"{max(1.0, self.left(60)):.1f}", url), timeout=self.left(65), check=False)
        took = time.monotonic() - t
        got = out.read_bytes() if out.exists() else b""
        if r.returncode != 0 or r.stdout.strip() != "200":
            msg = f"curl {url} failed: {(r.stderr.strip() or 'HTTP ' + r.stdout.strip())}"
            self.problems.append(msg)
            self.echo(f"== client: {msg}")
        elif got != data:
            msg = f"curl {url}: {len(got)} bytes differ from the server's {len(data)}"
            self.problems.append(msg)
            self.echo(f"== client: {msg}")
        else:
            digest = hashlib.sha256(got).hexdigest()[:16]
            rate = f", {len(got) / took / 1e6:.0f} MB/s" if len(got) > 1 << 20 else ""
            self.echo(f"== client: curl {url}{note}\n   -> 200, {len(got)} bytes in {took:.2f} s{rate}, "
                      f"identical to the server's file (sha256 {digest}...)")
        out.unlink(missing_ok=True)

    def _blocked(self) -> None:
        first = b"GET " + PATTERN[:7].encode()
        second = PATTERN[7:].encode() + f" HTTP/1.1\r\nHost: {SERVER_IP}:{PORT}\r\n\r\n".encode()
        code = BLOCKED_CLIENT.format(server=SERVER_IP, port=PORT, first=first, second=second, wait=BLOCK_WAIT)
        self.echo(f"== client: GET {PATTERN} in two writes, {first.decode()!r} then {second.decode()[:15]!r}...\n"
                  f"   (TCP_NODELAY, 0.3 s apart: two segments, neither holds {PATTERN!r})")
        r = run(self.nsexec("cli", sys.executable, "-c", textwrap.dedent(code)), timeout=self.left(20), check=False)
        got = r.stdout.strip()
        if got == "TIMEOUT":
            self.echo(f"   -> no reply within {BLOCK_WAIT:g} s: the middle box dropped the connection")
        else:
            msg = f"the {PATTERN} request was not blocked: {got or r.stderr.strip()[-200:]}"
            self.problems.append(msg)
            self.echo(f"   -> {msg}")

    # -- report

    def _xdp_counters(self) -> Dict[str, int]:
        from mos import xdp

        try:
            with self.ns["mbx"].entered(), xdp.XdpProgram.open_pinned(self.mbi) as prog:
                return prog.stats()
        except (xdp.XdpError, OSError) as e:
            self.problems.append(f"cannot read the XDP counters: {e}")
            return {}

    def _print_xdp(self, st: Dict[str, int]) -> None:
        self.echo(f"\n== XDP program counters on {self.mbi} and {self.mbo} (mos.xdp XdpProgram.stats(), per reason)")
        for k, v in st.items():
            if v:
                self.echo(f"   {k:<20} {v:>8}  {GLOSS.get(k, '')}")

    def _final_report(self) -> None:
        """The middle box's last words, by kind: the apps' reports, the counters, its teardown."""
        reports, counters, teardown, other = [], [], [], []
        in_counters = False
        for who, stream, line in self.log.new():
            if who != "middlebox":
                continue
            if stream == "out" or line.startswith("http_log:"):
                reports.append(line)
            elif line.startswith("counters:"):
                in_counters = True
                counters.append("engine (mos-xdp run --stats):")
            elif in_counters and line.startswith("  "):
                counters.append(line)
            elif line.startswith("  af_xdp"):
                counters.append(line.strip())
            elif line.startswith(("mos-xdp: detached", "mos-xdp: removed")):
                teardown.append(line[len("mos-xdp: "):])
            elif not line.startswith(("  xdp:", "mos-xdp: stopped")):
                other.append(line)
        self.echo("\n== the middle box stopped (SIGINT): the apps' reports and the final connection table")
        summaries = [line for line in reports if line.startswith(("firewall:", "http_log:"))]
        for line in summaries + [line for line in reports if line not in summaries] + other:
            self.echo(f"   {line}")
        assert self.mbx is not None
        dropped = [line.split()[3] for line in self.mbx.out if line.startswith("firewall: dropped connection")]
        for cid in dropped:
            self.echo(f"   (connection {cid}: dropped by the firewall, in XDP from then on: the middle box saw "
                      "no more of it, it ends at EOF when the run stops)")
        self.echo("\n== counters: AF_XDP sockets and the engine (every packet accounted for)")
        for line in counters:
            self.echo(f"   {line}")
        self.echo("\n== teardown by the middle box: " + ("; ".join(teardown) or "nothing reported"))

    # -- the whole run

    def run(self) -> int:
        """The demo; returns 0 when every check passed. CannotRun when this machine cannot run it."""
        check_environment()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.timeout
        old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

        def _term(signum: int, _frame: Any) -> None:
            raise _Interrupted(signum)

        for s in old:
            signal.signal(s, _term)
        try:
            try:
                return self._run()
            finally:
                self.cleanup()
        except _Interrupted:
            raise KeyboardInterrupt from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _run(self) -> int:
        sys.stderr.write("mos-xdp demo: setting up the live demo (namespaces, HTTP server, XDP program compiled "
                         "by bcc)...\n")
        sys.stderr.flush()
        reap_stale()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{NS_PREFIX}{os.getpid()}-"))
        self._topology()
        files = self._files()
        ns = self.ns
        self._server()
        t = time.monotonic()
        self._middlebox()
        from mos import xdp

        self.echo(textwrap.dedent(f"""\
            == mos-xdp live demo: a middle box running mos-xdp inline between a client and a server
               network namespaces {ns['cli'].name}, {ns['mbx'].name}, {ns['srv'].name}:

               client {CLIENT_IP} [{CLIENT_IF}] --- [{self.mbi}] middle box [{self.mbo}] --- [{SERVER_IF}] \
server {SERVER_IP}:{PORT}

               server:     python3 -m http.server {PORT} (index.html, notes.txt, big.bin: {self.big_mib} MiB)
               middle box: mos-xdp run apps/demo_live.py --iface {self.mbi} --peer {self.mbo} --stats
                           (apps/midstat.py + apps/http_log.py + apps/firewall.py dropping {PATTERN!r})"""))
        with self.ns["mbx"].entered():
            prog_id = xdp.read_state(self.mbi).get("prog_id", "?")
        self.echo(f"\n== middle box up in {time.monotonic() - t:.1f} s (bcc compiled and attached XDP program id "
                  f"{prog_id}); after each step, the apps' and the server's lines")
        self.show()
        self.echo("")
        self._curl("index.html", files["index.html"])
        self.log.settle()
        self.show()
        self._curl("big.bin", files["big.bin"], note=f" ({self.big_mib} MiB)")
        self.log.settle()
        self.show()
        self._blocked()
        self.log.settle()
        self.show()
        if not any(PATTERN in line for line in self.procs[0].err):
            self.echo(f"   {'server>':<10} (nothing: the request's second segment never reached the server)")
        else:
            self.problems.append(f"the server received the {PATTERN} request")
        self._curl("notes.txt", files["notes.txt"], note="  (other connections still go through)")
        self.log.settle()
        self.show()
        xdp = self._xdp_counters()
        self.log.settle(quiet=0.3, limit=1.0)
        self.show()
        assert self.mbx is not None
        rc = self.mbx.stop(signal.SIGINT, timeout=self.left(20))
        self._print_xdp(xdp)
        self._final_report()
        out = "".join(self.mbx.out)
        if rc != 0:
            self.problems.append(f"the middle box exited with {rc}")
        if out.count("firewall: dropped connection") != 1:
            self.problems.append("the firewall did not report exactly one dropped connection")
        if f"GET {SERVER_IP}:{PORT} /big.bin" not in out:
            self.problems.append("http_log did not report the requests")
        if xdp and not xdp.get("bypass_drop"):
            self.problems.append("no packet was dropped in XDP")
        took = time.monotonic() - self.t0
        if self.problems:
            self.echo(f"\n== live demo FAILED ({took:.1f} s): " + "; ".join(self.problems))
            return 1
        self.echo(f"\n== live demo OK ({took:.1f} s): 3 fetches byte-identical through the middle box, the split "
                  f"{PATTERN} request dropped inline. The offline demo: bash scripts/demo.sh --pcap")
        return 0

    def cleanup(self) -> None:
        """Stops the processes, removes the XDP program, pins, namespaces and files (idempotent)."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            for p in reversed(self.procs):
                with contextlib.suppress(Exception):
                    p.stop(signal.SIGINT if p is self.mbx else signal.SIGTERM, timeout=10)
                p.close()
            self.procs.clear()
            from mos import xdp

            mbx = self.ns.get("mbx")
            if mbx is not None and mbx.path.exists():
                with contextlib.suppress(Exception), mbx.entered():
                    xdp.detach(self.mbi)
            self.topo.close()
            _remove_leftovers()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
        finally:
            signal.signal(signal.SIGINT, old)


def run_demo(timeout: float = 60.0, echo: Callable[[str], Any] = print) -> int:
    """Runs the live demo; returns its exit code. CannotRun when this machine cannot run it."""
    try:
        return LiveDemo(timeout=timeout, echo=echo).run()
    except subprocess.TimeoutExpired as e:
        cmd = e.cmd[e.cmd.index("--") + 1:] if "--" in e.cmd else e.cmd
        echo(f"\n== live demo FAILED: {os.path.basename(cmd[0])} did not finish in time "
             f"(the demo's limit: {timeout:g} s, --timeout)")
        return 1
    except (DemoFailed, RuntimeError, OSError, subprocess.SubprocessError) as e:
        echo(f"\n== live demo FAILED: {e}")
        return 1


__all__ = ["CannotRun", "DemoFailed", "LiveDemo", "check_environment", "reap_stale", "run_demo"]
