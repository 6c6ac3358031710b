"""Two network namespaces joined by a veth pair, an HTTP server in one, curl in the other, tcpdump on the
server's veth. Used by tests/test_real_traffic.py; also runnable by hand as a sanity check:

    .venv/bin/python -m tests.tools.netns   (as root)  -> captures one fetch and checks it with dpkt

Everything is bounded in time, and ``close()`` (also on errors, via the context manager) kills what it
started and deletes the namespaces (which deletes the veth pair). Addresses exist only inside the
namespaces: 10.231.0.1/24 (server) and .2 (client); fd00:231::1/64 and ::2 (nodad).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

SERVER4, CLIENT4 = "10.231.0.1", "10.231.0.2"
SERVER6, CLIENT6 = "fd00:231::1", "fd00:231::2"


def sh(*cmd: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, timeout=timeout, check=check)


class NetnsPair:
    def __init__(self, tag: Optional[str] = None):
        tag = tag or str(os.getpid())
        self.ns_srv, self.ns_cli = f"mosrt-{tag}-a", f"mosrt-{tag}-b"
        short = tag[-6:]
        self.if_srv, self.if_cli = f"mrt{short}a", f"mrt{short}b"  # <= 15 chars
        self.procs: List[subprocess.Popen] = []
        self.up = False

    # --- set-up / teardown
    def __enter__(self) -> NetnsPair:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def setup(self) -> None:
        sh("ip", "netns", "add", self.ns_srv)
        sh("ip", "netns", "add", self.ns_cli)
        self.up = True
        sh("ip", "link", "add", self.if_srv, "netns", self.ns_srv, "type", "veth",
           "peer", "name", self.if_cli, "netns", self.ns_cli)
        for ns, dev, a4, a6 in ((self.ns_srv, self.if_srv, SERVER4, SERVER6),
                                (self.ns_cli, self.if_cli, CLIENT4, CLIENT6)):
            self.ns(ns, "ip", "link", "set", "lo", "up")
            self.ns(ns, "ip", "addr", "add", f"{a4}/24", "dev", dev)
            self.ns(ns, "ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            self.ns(ns, "ip", "link", "set", dev, "up")
            # MTU-sized segments in the capture: no TSO/GSO/GRO on either end (best effort per feature)
            for feat in ("tso", "gso", "gro"):
                self.ns(ns, "ethtool", "-K", dev, feat, "off", check=False)
        # wait for both ends to be operationally up (no ping on these machines: the HTTP server start-up
        # check below proves reachability)
        deadline = time.time() + 10
        while time.time() < deadline:
            states = [self.ns(ns, "ip", "-o", "link", "show", "dev", dev).stdout
                      for ns, dev in ((self.ns_srv, self.if_srv), (self.ns_cli, self.if_cli))]
            if all(b"state UP" in st or b"LOWER_UP" in st for st in states):
                return
            time.sleep(0.1)
        raise RuntimeError("veth link between the namespaces did not come up")

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=5)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    p.kill()
                    p.wait(timeout=5)
        self.procs.clear()
        if self.up:
            for ns in (self.ns_srv, self.ns_cli):
                sh("ip", "netns", "del", ns, check=False)
            self.up = False

    # --- helpers
    def ns(self, ns: str, *cmd: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, timeout=timeout, check=check)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def start_http_server(self, directory: Path, port: int = 8080, v6: bool = False) -> subprocess.Popen:
        bind = SERVER6 if v6 else SERVER4
        p = self.popen(self.ns_srv, sys.executable, "-m", "http.server", str(port), "--bind", bind,
                       "--directory", str(directory), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        host = f"[{bind}]" if v6 else bind
        deadline = time.time() + 15
        while time.time() < deadline:
            r = self.ns(self.ns_cli, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                        f"http://{host}:{port}/", check=False)
            if r.stdout.strip() == b"200":
                return p
            time.sleep(0.2)
        raise RuntimeError("http server did not come up")

    def start_capture(self, pcap: Path, port: int) -> subprocess.Popen:
        """tcpdump on the server's veth; returns once tcpdump reports it is listening."""
        p = self.popen(self.ns_srv, "tcpdump", "-i", self.if_srv, "-w", str(pcap), "-s", "0", "-U", "-n",
                       "-B", "65536", "-Z", "root",
                       f"tcp port {port}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 15
        buf = b""
        os.set_blocking(p.stderr.fileno(), False)
        while time.time() < deadline:
            chunk = p.stderr.read() or b""
            buf += chunk
            if b"listening on" in buf:
                return p
            if p.poll() is not None:
                raise RuntimeError(f"tcpdump exited: {buf.decode(errors='replace')}")
            time.sleep(0.05)
        raise RuntimeError("tcpdump did not start listening")

    def stop_capture(self, p: subprocess.Popen, pcap: Optional[Path] = None) -> int:
        """Let tcpdump drain (the file stops growing for 1 s), SIGINT it and wait for it to flush; returns
        the number of packets it says the kernel dropped."""
        if pcap is not None:
            last, stable_since, deadline = -1, time.time(), time.time() + 20
            while time.time() < deadline:
                size = pcap.stat().st_size if pcap.exists() else 0
                if size != last:
                    last, stable_since = size, time.time()
                elif time.time() - stable_since >= 1.0:
                    break
                time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=15)
        os.set_blocking(p.stderr.fileno(), True)
        err = p.stderr.read().decode(errors="replace")
        m = re.search(r"(\d+) packets? dropped by kernel", err)
        return int(m.group(1)) if m else 0

    def fetch(self, url: str, out: Path, timeout: float = 60, rate: str = "20M") -> subprocess.Popen:
        """curl in the client namespace; the rate limit keeps tcpdump from dropping packets on a fast veth."""
        return self.popen(self.ns_cli, "curl", "-sS", "--max-time", str(int(timeout)), "--limit-rate", rate,
                          "-o", str(out), url, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def dpkt_s2c_streams(pcap: Path, server_port: int) -> dict:
    """Sanity check only: per client port, the server->client bytes (unique by sequence number)."""
    import dpkt

    out: dict = {}
    isn: dict = {}
    with open(pcap, "rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            t = ip.data
            if t.sport != server_port:
                continue
            if t.flags & dpkt.tcp.TH_SYN:
                isn[t.dport] = t.seq + 1
                continue
            m = out.setdefault(t.dport, {})
            base = isn.get(t.dport, 0)
            for i, b in enumerate(bytes(t.data)):
                m.setdefault((t.seq - base + i) % (1 << 32), b)
    return {k: bytes(v[o] for o in sorted(v)) for k, v in out.items()}


def main() -> int:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="mosrt-"))
    (work / "www").mkdir()
    blob = os.urandom(3 * 1024 * 1024)
    (work / "www" / "blob.bin").write_bytes(blob)
    with NetnsPair() as pair:
        pair.start_http_server(work / "www", 8080)
        cap = pair.start_capture(work / "cap.pcap", 8080)
        f = pair.fetch(f"http://{SERVER4}:8080/blob.bin", work / "got.bin")
        f.wait(timeout=90)
        time.sleep(0.3)
        dropped = pair.stop_capture(cap, work / "cap.pcap")
    print("dropped by kernel:", dropped, "work dir:", work)
    got = (work / "got.bin").read_bytes()
    streams = dpkt_s2c_streams(work / "cap.pcap", 8080)
    ok = [p for p, s in streams.items() if s.split(b"\r\n\r\n", 1)[-1] == blob]
    print(f"curl got {len(got)} bytes (match={got == blob}); capture streams {len(streams)}; "
          f"reassembled match on ports {ok}")
    return 0 if got == blob and ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
