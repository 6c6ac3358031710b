"""Two network namespaces joined by a veth pair, an HTTP server in one, curl in the other, tcpdump on the
server's veth. Used by tests/test_real_traffic.py; also runnable by hand as a sanity check:

    .venv/bin/python -m tests.tools.netns   (as root)  -> captures one fetch and checks it with dpkt

The namespaces, the veth pair and the processes are a :class:`mos.net.topology.Topology`: everything is
bounded in time, and ``close()`` (also on errors, via the context manager) stops what it started and
deletes the namespaces (which deletes the veth pair). Addresses exist only inside the namespaces:
10.231.0.1/24 (server) and .2 (client); fd00:231::1/64 and ::2 (no DAD).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from mos.net.topology import NO_SEGMENTATION, Topology, reap_stale

SERVER4, CLIENT4 = "10.231.0.1", "10.231.0.2"
SERVER6, CLIENT6 = "fd00:231::1", "fd00:231::2"
PREFIX = "mosrt-"


class NetnsPair:
    """A server and a client namespace on one veth link, MTU-sized segments on it."""

    def __init__(self) -> None:
        self.topo = Topology(prefix=PREFIX)
        self.if_srv, self.if_cli = self.topo.dev("rts"), self.topo.dev("rtc")

    def __enter__(self) -> NetnsPair:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> None:
        reap_stale(PREFIX)
        self.ns_srv, self.ns_cli = self.topo.netns("a"), self.topo.netns("b")
        self.topo.veth(self.ns_srv, self.if_srv, self.ns_cli, self.if_cli, f"{SERVER4}/24", f"{CLIENT4}/24",
                       queues=0, extra_a=[f"{SERVER6}/64"], extra_b=[f"{CLIENT6}/64"])
        for ns, dev in ((self.ns_srv, self.if_srv), (self.ns_cli, self.if_cli)):
            ns.ethtool(dev, NO_SEGMENTATION, best_effort=True)
        # (no ping on these machines: the HTTP server start-up check below proves reachability)
        for ns, dev in ((self.ns_srv, self.if_srv), (self.ns_cli, self.if_cli)):
            ns.wait_carrier(dev)

    def close(self) -> None:
        self.topo.close()

    def start_http_server(self, directory: Path, port: int = 8080, v6: bool = False) -> subprocess.Popen:
        bind = SERVER6 if v6 else SERVER4
        p = self.topo.spawn(self.ns_srv, sys.executable, "-m", "http.server", str(port), "--bind", bind,
                            "--directory", str(directory), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        host = f"[{bind}]" if v6 else bind
        deadline = time.time() + 15
        while time.time() < deadline:
            r = self.ns_cli.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                                f"http://{host}:{port}/", check=False, timeout=20)
            if r.stdout.strip() == "200":
                return p
            time.sleep(0.2)
        raise RuntimeError("http server did not come up")

    def start_capture(self, pcap: Path, port: int) -> subprocess.Popen:
        """tcpdump on the server's veth; returns once tcpdump reports it is listening."""
        p = self.topo.spawn(self.ns_srv, "tcpdump", "-i", self.if_srv, "-w", str(pcap), "-s", "0", "-U", "-n",
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
        return self.topo.spawn(self.ns_cli, "curl", "-sS", "--max-time", str(int(timeout)), "--limit-rate", rate,
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
