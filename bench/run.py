"""mos-xdp benchmark, end to end: peers, capture, timed runs, RESULTS.md.

    bash bench/run.sh [--small] [--size-mb N] [--runs N] [--keep] [--reuse-capture]

Steps (as root, everything on this machine):

1. Peers: tcpflow, libnids (a small counter, ``nids_count.c``), Suricata (bookworm-backports),
   nfstream (PyPI, in ``bench/work/venv``, not the project's ``.venv``).
2. A capture: two network namespaces joined by a veth pair (offloads off: MTU-sized segments, real
   checksums), an HTTP server in one, ``curl --parallel`` in the other downloading and uploading
   bodies of many sizes over many concurrent connections, a ``tbf`` bottleneck on both ends of the
   link (its tail drops are real losses: retransmissions, SACK recovery, holes later filled), and
   tcpdump on the client's end. Then capture loss and reordering are added to the file
   (``pcaptool.py impair``): some data packets dropped, some adjacent data packets swapped.
3. Ground truth from the packets alone (``pcaptool.py truth``).
4. Each tool over the capture ``--runs`` times, interleaved; medians of wall and CPU time, packet
   rates, delivered bytes against the truth. Also: the cost of one Python handler call (mos-xdp and
   nfstream), memory per connection (``connmem.py``).
5. ``bench/RESULTS.md`` (``--small``: ``bench/work/RESULTS-small.md``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from common import BENCH, MOS, MOSPY, ROOT, SECTIONS, WORK, commands_log, logger, med, run_timed, section_pattern
from common import sh as common_sh

from mos.net.topology import Netns, Topology, reap_stale

BVENV = WORK / "venv"
BPY = BVENV / "bin" / "python"
NIDS = WORK / "nids_count"
SHM = Path("/dev/shm")

NS_PREFIX = "mosb-"
ADDR_SRV, ADDR_CLI = "10.203.0.1", "10.203.0.2"  # only inside this benchmark's own namespaces
PORT = 8080

APT = ["tcpflow", "libnids-dev", "libnet1-dev", "libglib2.0-dev", "libpcap-dev", "tcpdump", "curl",
       "ethtool", "iproute2", "gcc"]
BACKPORTS = "deb http://deb.debian.org/debian bookworm-backports main"
BACKPORTS_LIST = Path("/etc/apt/sources.list.d/mos-bench-backports.list")

log = logger("bench")

sh = functools.partial(common_sh, timeout=600)


# --------------------------------------------------------------------------------------------------
# 1. peers

def installed(pkg: str) -> bool:
    r = sh(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
    return "install ok installed" in r.stdout


def install() -> Dict[str, str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not (MOS.exists() and MOSPY.exists()):
        log("the project's .venv is missing: bash scripts/setup.sh")
        subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True)
    missing = [p for p in APT if not installed(p)]
    updated = False
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        if sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=False,
              env=env).returncode != 0:
            sh(["apt-get", "update", "-qq"], env=env)
            updated = True
            sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)
    notes: Dict[str, str] = {}
    if not installed("suricata"):
        if not BACKPORTS_LIST.exists():
            BACKPORTS_LIST.write_text(BACKPORTS + "\n")
            updated = False
        if not updated:
            sh(["apt-get", "update", "-qq"], env=env, check=False)
        log("apt-get install -t bookworm-backports suricata")
        r = sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-t", "bookworm-backports",
                "suricata"], check=False, env=env)
        if r.returncode != 0:
            notes["suricata"] = "could not be installed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    if not BPY.exists() or sh([str(BPY), "-c", "import nfstream"], check=False).returncode != 0:
        log("nfstream into bench/work/venv")
        sh([sys.executable if False else "python3", "-m", "venv", str(BVENV)])
        r = sh([str(BVENV / "bin" / "pip"), "install", "-q", "nfstream"], check=False, timeout=900)
        if r.returncode != 0:
            notes["nfstream"] = "could not be installed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    src = BENCH / "nids_count.c"
    if not NIDS.exists() or NIDS.stat().st_mtime < src.stat().st_mtime:
        sh(["gcc", "-O2", "-Wall", "-o", str(NIDS), str(src), "-lnids", "-lpcap", "-lnet", "-lgthread-2.0",
            "-lglib-2.0"])
    return notes


def versions() -> Dict[str, str]:
    def first(cmd: List[str]) -> str:
        r = sh(cmd, check=False)
        return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]

    def dpkg(p: str) -> str:
        return sh(["dpkg-query", "-W", "-f=${Version}", p], check=False).stdout.strip() or "-"

    v = {
        "mos-xdp": first([str(MOS), "--version"]),
        "libnids": dpkg("libnids-dev"),
        "tcpflow": dpkg("tcpflow"),
        "suricata": dpkg("suricata"),
        "tcpdump": dpkg("tcpdump"),
        "curl": dpkg("curl"),
        "python": platform.python_version(),
    }
    head = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "userspace", "mos"], check=False).stdout.strip()
    v["mos-xdp"] += f" (commit {head or '?'}{', with uncommitted engine/package changes' if dirty else ''})"
    if BPY.exists():
        v["nfstream"] = sh([str(BPY), "-c", "import nfstream; print(nfstream.__version__)"],
                           check=False).stdout.strip() or "-"
    return v


# --------------------------------------------------------------------------------------------------
# 2. the capture

class CaptureLink:
    """The capture's two namespaces (``mosb-<pid>-<hex>-srv``, ``-cli``) on one veth pair: offloads off
    (MTU-sized segments, real checksums) and a token-bucket bottleneck on both ends."""

    def __init__(self, rate: str, limit: str) -> None:
        reap_stale(NS_PREFIX)
        self.topo = Topology(prefix=NS_PREFIX, ipv6=False)
        try:
            t = self.topo
            self.srv, self.cli = t.netns("srv"), t.netns("cli")
            self.if_srv, self.if_cli = t.dev("mbs"), t.dev("mbc")
            t.veth(self.srv, self.if_srv, self.cli, self.if_cli, f"{ADDR_SRV}/24", f"{ADDR_CLI}/24", queues=0,
                   mtu=1500)
            for n, i in self.ends():
                t.ethtool(n, i, {"tso": False, "gso": False, "gro": False, "tx": False})
            commands_log.extend(t.actions)
            for n, i in self.ends():
                # the bottleneck: a token bucket whose queue overflows under the parallel load
                c = n.cmd("tc", "qdisc", "add", "dev", i, "root", "tbf", "rate", rate, "burst", "32kb", "limit", limit)
                sh(c, record=True)
        except BaseException:
            self.topo.close()
            raise

    def ends(self) -> List[Tuple[Netns, str]]:
        """(namespace, interface) of the server's end, then the client's."""
        return [(self.srv, self.if_srv), (self.cli, self.if_cli)]

    def close(self) -> None:
        self.topo.close()


def transfers(target: int, seed: int, up_sizes: List[int]) -> List[Tuple[str, int]]:
    """(kind, size) until the bodies add up to ``target`` bytes: 90% downloads, 10% uploads."""
    rnd = random.Random(seed)
    out: List[Tuple[str, int]] = []
    total = 0
    while total < target:
        if rnd.random() < 0.1:
            n = rnd.choice(up_sizes)
            out.append(("put", n))
        else:
            n = int(10 ** rnd.uniform(2, 6.9))  # 100 B .. 8 MB, log-uniform
            out.append(("get", n))
        total += n
    return out


def build_capture(raw: Path, size_mb: int, conc: int, seed: int, rate: str, limit: str, loss_ppm: int,
                  time_limit: float) -> Dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mosb-", dir=WORK))
    up_sizes = [1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 21]
    nz = bytes([1]) + bytes(range(1, 256))
    rnd = random.Random(seed + 1)
    for n in up_sizes:
        (tmp / f"up{n}").write_bytes(rnd.randbytes(n).translate(nz))
    xs = transfers(size_mb << 20, seed, up_sizes)
    cfg = tmp / "curl.cfg"
    with cfg.open("w") as f:
        per = ('write-out = "%{size_request} %{size_upload} %{size_header} %{size_download} %{http_code}\\n"\n'
               'header = "Expect:"\n')
        for i, (kind, n) in enumerate(xs):
            # `next`: each transfer its own option group (an upload-file pairs with its own URL)
            f.write(("next\n" if i else "") + per)
            if kind == "get":
                f.write(f'url = "http://{ADDR_SRV}:{PORT}/get/{n}"\noutput = "/dev/null"\n')
            else:
                f.write(f'url = "http://{ADDR_SRV}:{PORT}/put"\nupload-file = "{tmp}/up{n}"\n'
                        f'output = "/dev/null"\n')
    link = CaptureLink(rate, limit)
    ns_srv, ns_cli = link.srv, link.cli
    srv = tcpd = None
    xdp: List[subprocess.Popen] = []
    xdp_drops = {}
    try:
        if loss_ppm:
            # real losses on the wire: each end drops a random share of what arrives (XDP, before tcpdump)
            for n, i in link.ends():
                c = n.cmd("/usr/bin/python3", str(BENCH / "lossy_xdp.py"), i, "--per-million", str(loss_ppm),
                       "--lifetime", str(int(time_limit) + 60))
                commands_log.append(shlex.join(c))
                xdp.append(subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for p in xdp:
                assert p.stdout is not None
                if p.stdout.readline().strip() != "attached":
                    raise RuntimeError("lossy_xdp.py could not attach (bcc: python3-bpfcc, kernel headers)")
        srv = subprocess.Popen(ns_srv.cmd("python3", str(BENCH / "httpd.py"), "--port", str(PORT),
                                  "--lifetime", str(int(time_limit) + 30)),
                               stdout=subprocess.PIPE, text=True)
        commands_log.append(shlex.join(srv.args))  # type: ignore[arg-type]
        assert srv.stdout is not None
        srv.stdout.readline()  # "ready"
        tcpd = subprocess.Popen(ns_srv.cmd("tcpdump", "-i", link.if_srv, "-n", "-s", "0", "-B", "262144",
                                   "-w", str(raw), "tcp"), stderr=subprocess.PIPE, text=True)
        commands_log.append(shlex.join(tcpd.args))  # type: ignore[arg-type]
        assert tcpd.stderr is not None
        tcpd.stderr.readline()  # "listening on ..."
        time.sleep(0.3)
        curl = ns_cli.cmd("curl", "-s", "--parallel", "--parallel-max", str(conc), "--max-time", "120",
                  "-K", str(cfg))
        commands_log.append(shlex.join(curl))
        log(f"capture: {len(xs)} transfers, {conc} at a time, bottleneck {rate}")
        t0 = time.perf_counter()
        r = sh(curl, check=False, timeout=time_limit)
        dt = time.perf_counter() - t0
        time.sleep(0.5)
        tcpd.send_signal(signal.SIGINT)
        _, err = tcpd.communicate(timeout=60)
        qdisc = {side: sh(n.cmd("tc", "-s", "qdisc", "show", "dev", i)).stdout
                 for side, (n, i) in zip(("srv", "cli"), link.ends())}
        for side, p in zip(("srv", "cli"), xdp):
            out_x, _ = p.communicate("", timeout=60)
            m = re.search(r"dropped=(\d+)", out_x)
            xdp_drops[side] = int(m.group(1)) if m else -1
    finally:
        for p in (tcpd, srv, *xdp):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        link.close()
        shutil.rmtree(tmp, ignore_errors=True)
    (WORK / (raw.name + ".curl.txt")).write_text(r.stdout + r.stderr)
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
    ok = [ln for ln in lines if len(ln) == 5 and ln[4] == "200"]
    curl_bytes = sum(int(a) + int(b) + int(c) + int(d) for a, b, c, d, _ in ok)
    tc_drops = {n: sum(int(x) for x in re.findall(r"dropped (\d+)", q)) for n, q in qdisc.items()}
    kdrop = re.search(r"(\d+) packets dropped by kernel", err or "")
    return {
        "transfers": len(xs), "transfers_ok": len(ok), "uploads": sum(1 for k, _ in xs if k == "put"),
        "body_bytes": sum(n for _, n in xs), "curl_bytes": curl_bytes, "seconds": round(dt, 1),
        "tbf_drops_server": tc_drops["srv"], "tbf_drops_client": tc_drops["cli"],
        "tcpdump_kernel_drops": int(kdrop.group(1)) if kdrop else -1, "concurrency": conc, "rate": rate,
        "limit": limit, "loss_ppm": loss_ppm, "xdp_drops_server_in": xdp_drops.get("srv", 0),
        "xdp_drops_client_in": xdp_drops.get("cli", 0),
    }


def tiny_pcap(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` packets of a capture: the tools' start-up cost."""
    with src.open("rb") as fi, dst.open("wb") as fo:
        fo.write(fi.read(24))
        for _ in range(n):
            h = fi.read(16)
            if len(h) < 16:
                break
            cap = int.from_bytes(h[8:12], "little")
            fo.write(h + fi.read(cap))


# --------------------------------------------------------------------------------------------------
# 3. the tools

def suricata_yaml(path: Path, tcp_data: bool) -> None:
    outputs = [
        "  - eve-log:\n      enabled: yes\n      filetype: regular\n      filename: eve.json\n"
        "      types:\n        - stats:\n            totals: yes\n            threads: no\n",
    ]
    if tcp_data:
        outputs.append("  - tcp-data:\n      enabled: yes\n      type: dir\n      filename: tcp-data.log\n")
    path.write_text(
        "%YAML 1.1\n---\n"
        "vars:\n  address-groups:\n    HOME_NET: \"any\"\n    EXTERNAL_NET: \"any\"\n"
        "  port-groups:\n    HTTP_PORTS: \"80\"\n"
        "stats:\n  enabled: yes\n  interval: 3600\n"
        "outputs:\n" + "".join(outputs) +
        "logging:\n  default-log-level: notice\n  outputs:\n    - console:\n        enabled: yes\n"
        "runmode: single\n"
        "max-pending-packets: 1024\n"
        "flow:\n  memcap: 2gb\n  hash-size: 262144\n  prealloc: 10000\n"
        "stream:\n  memcap: 4gb\n  checksum-validation: no\n  midstream: true\n"
        "  reassembly:\n    memcap: 16gb\n    depth: 0\n"
        "app-layer:\n  protocols:\n    http:\n      enabled: yes\n"
        "      libhtp:\n        default-config:\n          request-body-limit: 0\n          response-body-limit: 0\n"
        "detect:\n  profile: low\n"
    )


class Tool:
    def __init__(self, name: str, cmd: Callable[[Path], List[str]], parse: Callable[[str, str], Dict[str, Any]],
                 what: str, prep: Optional[Callable[[], None]] = None) -> None:
        self.name, self.cmd, self.parse, self.what, self.prep = name, cmd, parse, what, prep


def kv(text: str) -> Dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


def dir_bytes(d: Path, nonzero: bool = False, skip: Tuple[str, ...] = ()) -> Tuple[int, int]:
    """(bytes, files) under d; with nonzero, only the bytes that are not 0 (holes filled with zeros)."""
    total = files = 0
    for root, _, names in os.walk(d):
        for n in names:
            if n in skip:
                continue
            p = os.path.join(root, n)
            files += 1
            if nonzero:
                with open(p, "rb") as f:
                    while True:
                        b = f.read(1 << 22)
                        if not b:
                            break
                        total += len(b) - b.count(0)
            else:
                total += os.path.getsize(p)
    return total, files


cur_pcap: List[Path] = [Path()]  # the capture being run (for the Suricata byte count)


def make_tools(work: Path) -> List[Tool]:
    mos_o = SHM / "mosb-streams"
    tf_o = SHM / "mosb-tcpflow"
    sur_o = work / "suricata"
    sur_yaml = work / "suricata.yaml"
    sur_yaml_data = work / "suricata-data.yaml"
    suricata_yaml(sur_yaml, False)
    suricata_yaml(sur_yaml_data, True)

    def fresh(d: Path) -> Callable[[], None]:
        def f() -> None:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        return f

    def p_streams(so: str, se: str) -> Dict[str, Any]:
        m = re.search(r"(\d+) connections, (\d+) stream bytes \(\d+ lost in holes\), (\d+) packets", so)
        assert m, so[-500:]
        out: Dict[str, Any] = {"conns": int(m.group(1)), "delivered": int(m.group(2)), "packets": int(m.group(3))}
        counters = {k: int(v) for k, v in re.findall(r"^\s+([a-z_]+)\s+(\d+)$", se, re.M)}
        out["counters"] = {k: counters.get(k, 0) for k in (
            "reasm_bytes_delivered", "reasm_bytes_gap", "reasm_gaps", "reasm_ooo_segments", "reasm_rexmit_segments",
            "reasm_limit_segments", "reasm_limit_dir_buf", "reasm_limit_memcap", "reasm_bytes_dropped_limit",
            "out_of_window", "bad_checksum_ip", "bad_checksum_tcp", "bad_checksum_udp", "checksum_unverifiable",
            "checksum_auto_off")}
        return out

    def p_streams_o(_: str, __: str) -> Dict[str, Any]:
        b, _files = dir_bytes(mos_o, skip=("index.jsonl",))
        conns = sum(1 for _ in open(mos_o / "index.jsonl"))
        return {"delivered": b, "conns": conns}

    def p_app(so: str, _: str) -> Dict[str, Any]:
        d = kv(so)
        return {"delivered": d.get("delivered"), "events": d.get("events"), "packets": d.get("packets")}

    def p_nids(so: str, _: str) -> Dict[str, Any]:
        d = kv(so)
        return {"delivered": d["delivered"], "conns": d["conns"], "packets": d["packets"]}

    def p_tcpflow(_: str, __: str) -> Dict[str, Any]:
        b, files = dir_bytes(tf_o, nonzero=True, skip=("report.xml", "alerts.txt"))
        return {"delivered": b, "files": files}

    def p_suricata(_: str, __: str) -> Dict[str, Any]:
        last = None
        with open(sur_o / "eve.json") as f:
            for line in f:
                if '"event_type":"stats"' in line:
                    last = line
        st = json.loads(last)["stats"] if last else {}
        tcp = st.get("tcp", {})
        out = {k: tcp.get(k) for k in ("sessions", "reassembly_gap", "segment_memcap_drop", "overlap",
                                       "stream_depth_reached", "pkt_on_wrong_thread", "insert_data_normal_fail",
                                       "insert_data_overlap_fail")}
        out["packets"] = st.get("decoder", {}).get("pkts")
        tcpd = sur_o / "tcp"
        if tcpd.exists():
            # the logger can write a byte more than once: count the distinct stream bytes it wrote
            r = sh([sys.executable, str(BENCH / "pcaptool.py"), "distinct", str(cur_pcap[0]), str(tcpd)])
            d = json.loads(r.stdout)
            out.update(delivered=d["distinct"], logged=d["bytes"], wrong=d["wrong"], files=d["files"])
        return out

    def p_nfs(so: str, _: str) -> Dict[str, Any]:
        d = kv(so)
        return {"seen_payload": d["payload"], "flows": d["flows"], "packets": d["packets"],
                "events": d.get("plugin_calls") or None}

    sur = ["suricata", "--runmode", "single", "-k", "none", "-S", "/dev/null", "-l", str(sur_o)]
    return [
        Tool("mos-xdp streams", lambda p: [str(MOS), "streams", str(p), "--no-progress", "--stats"], p_streams,
             "C only; table of connections"),
        Tool("mos-xdp streams (checksum on)",
             lambda p: [str(MOS), "streams", str(p), "--no-progress", "--stats", "--checksum", "on"], p_streams,
             "every checksum validated"),
        Tool("mos-xdp streams (checksum off)",
             lambda p: [str(MOS), "streams", str(p), "--no-progress", "--stats", "--checksum", "off"], p_streams,
             "no checksum validated (the default is auto: the row above)"),
        Tool("mos-xdp streams -o", lambda p: [str(MOS), "streams", str(p), "--no-progress", "-o", str(mos_o)],
             p_streams_o, "C only; writes both directions' files to /dev/shm", prep=fresh(mos_o)),
        Tool("mos-xdp streams -o (checksum off)",
             lambda p: [str(MOS), "streams", str(p), "--no-progress", "-o", str(mos_o), "--checksum", "off"],
             p_streams_o, "the same, no checksum validated", prep=fresh(mos_o)),
        Tool("mos-xdp app (CONN_NEW_DATA)", lambda p: [str(MOS), "run", str(BENCH / "app_count.py"), "--pcap", str(p),
                                                       "--no-progress"],
             p_app, "Python handler per delivered chunk, takes ev.data"),
        Tool("mos-xdp app (CONN_NEW_DATA, checksum off)",
             lambda p: [str(MOS), "run", str(BENCH / "app_count.py"), "--pcap", str(p), "--no-progress",
                        "--checksum", "off"],
             p_app, "the same, no checksum validated"),
        Tool("mos-xdp app (CONN_NEW_DATA, order batch)",
             lambda p: [str(MOS), "run", str(BENCH / "app_count.py"), "--pcap", str(p), "--no-progress",
                        "--order", "batch"],
             p_app, "the same, actions from the next batch (no packet waits for handlers)"),
        Tool("mos-xdp app (no handler)", lambda p: [str(MOS), "run", str(BENCH / "app_noop.py"), "--pcap", str(p),
                                                    "--no-progress"],
             p_app, "baseline for the handler cost"),
        Tool("mos-xdp app (PKT_IN)", lambda p: [str(MOS), "run", str(BENCH / "app_pktin.py"), "--pcap", str(p),
                                                "--no-progress"],
             p_app, "trivial Python handler per packet"),
        Tool("mos-xdp app (PKT_IN, order batch)",
             lambda p: [str(MOS), "run", str(BENCH / "app_pktin.py"), "--pcap", str(p), "--no-progress",
                        "--order", "batch"],
             p_app, "the same, actions from the next batch"),
        Tool("libnids", lambda p: [str(NIDS), str(p)], p_nids, "nids_count.c, checksums off"),
        Tool("tcpflow", lambda p: ["tcpflow", "-r", str(p), "-o", str(tf_o)], p_tcpflow,
             "writes flow files to /dev/shm", prep=fresh(tf_o)),
        Tool("suricata", lambda p: [*sur, "-c", str(sur_yaml), "-r", str(p)], p_suricata,
             "single thread, no rules, depth 0", prep=fresh(sur_o)),
        Tool("suricata + tcp-data", lambda p: [*sur, "-c", str(sur_yaml_data), "-r", str(p)], p_suricata,
             "same, logging every reassembled byte (the count)", prep=fresh(sur_o)),
        Tool("nfstream", lambda p: [str(BPY), str(BENCH / "nfs_count.py"), str(p)], p_nfs,
             "1 meter, no nDPI, payload accounting"),
        Tool("nfstream + plugin", lambda p: [str(BPY), str(BENCH / "nfs_count.py"), str(p), "--plugin"], p_nfs,
             "trivial NFPlugin on_update"),
    ]


# --------------------------------------------------------------------------------------------------
# 4. report

def machine() -> Dict[str, str]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    osr = "?"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME"):
                osr = line.split("=", 1)[1].strip().strip('"')
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "os": osr, "kernel": platform.release(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a quick check: a small capture, 1 run")
    ap.add_argument("--size-mb", type=int, default=None, help="bodies to transfer (default 600; small 30)")
    ap.add_argument("--runs", type=int, default=None, help="runs of each tool (default 3; small 1)")
    ap.add_argument("--concurrency", type=int, default=None, help="parallel transfers (default 96; small 24)")
    ap.add_argument("--rate", default="800mbit", help="tbf bottleneck rate")
    ap.add_argument("--limit", default="200kb", help="tbf queue limit")
    ap.add_argument("--loss-ppm", type=int, default=3000,
                    help="real losses: packets per million dropped by XDP on arrival at each end (0: none)")
    ap.add_argument("--drop", type=float, default=0.002, help="capture loss: data packets dropped from the file")
    ap.add_argument("--swap", type=float, default=0.005, help="data packets swapped with the next one")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--conn-mem", type=int, default=None, help="connections for the memory test (default 200000)")
    ap.add_argument("--keep", action="store_true", help="keep the capture (bench/work/capture.pcap)")
    ap.add_argument("--reuse-capture", action="store_true", help="use bench/work/capture.pcap if it exists")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated tool names to run (default all)")
    ap.add_argument("--results", default=None, help="where to write the report")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (namespaces, tcpdump, apt)")
    size_mb = a.size_mb or (30 if a.small else 600)
    runs = a.runs or (1 if a.small else 3)
    conc = a.concurrency or (24 if a.small else 96)
    conn_mem = a.conn_mem or (20000 if a.small else 200000)
    results = Path(a.results) if a.results else (WORK / "RESULTS-small.md" if a.small else BENCH / "RESULTS.md")
    WORK.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    notes = {} if a.skip_install else install()
    vers = versions()
    tag = "small" if a.small else "full"
    pcap = WORK / f"capture-{tag}.pcap"
    raw = WORK / f"capture-{tag}.raw.pcap"
    cap: Dict[str, Any] = {}
    capinfo = WORK / f"capture-{tag}.json"
    if a.reuse_capture and pcap.exists() and capinfo.exists():
        log(f"reusing {pcap}")
        cap = json.loads(capinfo.read_text())
    else:
        cap = build_capture(raw, size_mb, conc, a.seed, a.rate, a.limit, a.loss_ppm,
                            time_limit=600 if not a.small else 90)
        log(f"capture done: {cap}")
        imp = sh([sys.executable, str(BENCH / "pcaptool.py"), "impair", str(raw), str(pcap), "--drop", str(a.drop),
                  "--swap", str(a.swap), "--seed", str(a.seed)], record=True)
        raw.unlink()
        cap["impair"] = json.loads(imp.stdout)
        log("ground truth")
        tr = sh([sys.executable, str(BENCH / "pcaptool.py"), "truth", str(pcap)], record=True)
        cap["truth"] = json.loads(tr.stdout)
        cap["file_bytes"] = pcap.stat().st_size
        capinfo.write_text(json.dumps(cap))
    truth = cap["truth"]
    npk = truth["packets"]
    log(f"capture {pcap.stat().st_size / 1e6:.0f} MB, {npk} packets, {truth['conns']} connections, "
        f"{truth['present']} bytes present, {truth['exchanged']} exchanged")

    tiny = WORK / "tiny.pcap"
    tiny_pcap(pcap, tiny, 200)
    subprocess.run(["cat", str(pcap)], stdout=subprocess.DEVNULL, check=True)  # into the page cache

    tools = make_tools(WORK)
    if a.only:
        keep = {x.strip() for x in a.only.split(",")}
        tools = [t for t in tools if t.name in keep]
    if "suricata" in notes:
        tools = [t for t in tools if not t.name.startswith("suricata")]
    if "nfstream" in notes:
        tools = [t for t in tools if not t.name.startswith("nfstream")]
    for t in tools:
        commands_log.append(shlex.join(t.cmd(pcap)))

    res: Dict[str, Dict[str, Any]] = {t.name: {"wall": [], "cpu": [], "rss": [], "start": [], "out": None}
                                      for t in tools}
    # start-up cost: each tool over the first 200 packets
    for t in tools:
        for _ in range(max(1, min(runs, 3))):
            if t.prep:
                t.prep()
            w, _c, _r, _so, _se = run_timed(t.cmd(tiny), 300)
            res[t.name]["start"].append(w)
    cur_pcap[0] = pcap
    for r in range(runs):
        for t in tools:
            if t.prep:
                t.prep()
            log(f"run {r + 1}/{runs}: {t.name}")
            w, c, rss, so, se = run_timed(t.cmd(pcap), 1800)
            out = t.parse(so, se)
            res[t.name]["wall"].append(w)
            res[t.name]["cpu"].append(c)
            res[t.name]["rss"].append(rss)
            res[t.name]["out"] = out
            log(f"  {w:.2f} s wall, {c:.2f} s CPU, {rss / 1024:.0f} MiB: {out}")
    for d in (SHM / "mosb-streams", SHM / "mosb-tcpflow"):
        shutil.rmtree(d, ignore_errors=True)

    log("memory per connection")
    mem = []
    for kind in ("syn", "est"):
        r2 = sh([str(MOSPY), str(BENCH / "connmem.py"), "--conns", str(conn_mem), "--kind", kind, "--workdir",
                 str(WORK)], record=True, timeout=900)
        mem.append(json.loads(r2.stdout))

    write_results(results, a, cap, res, tools, mem, vers, notes, pcap, runs, t_start)
    print(results.read_text())
    if not a.keep:
        pcap.unlink(missing_ok=True)
        capinfo.unlink(missing_ok=True)
    tiny.unlink(missing_ok=True)


def write_results(path: Path, a: argparse.Namespace, cap: Dict[str, Any], res: Dict[str, Dict[str, Any]],
                  tools: List[Tool], mem: List[Dict[str, Any]], vers: Dict[str, str], notes: Dict[str, str],
                  pcap: Path, runs: int, t_start: float) -> None:
    truth = cap["truth"]
    npk = truth["packets"]
    present, exchanged = truth["present"], truth["exchanged"]
    m = machine()
    L: List[str] = []
    w = L.append
    w("# mos-xdp benchmark results\n")
    w(f"Generated by `bash bench/run.sh{' --small' if a.small else ''}` on "
      f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} ({(time.time() - t_start) / 60:.0f} min end to end). "
      f"Medians of {runs} run(s) per tool, the tools interleaved run by run.\n")
    w("## Machine\n")
    w(f"- CPU: {m['cpu']}, {m['cores']} cores (shared with other work while this ran: load average at the end "
      f"{m['load']}), memory {m['memory']}")
    w(f"- {m['os']}, kernel {m['kernel']}")
    w("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    for k, v in notes.items():
        w(f"- **{k}**: {v}")
    w("")
    w("## The capture\n")
    imp = cap.get("impair", {})
    w(f"- {cap['file_bytes'] / 1e6:.0f} MB pcap, {npk:,} packets ({truth['data_packets']:,} with payload), "
      f"{truth['conns']:,} TCP connections ({cap['transfers']} transfers, {cap['uploads']} of them uploads, "
      f"{cap['concurrency']} at a time; {cap['transfers_ok']} completed with HTTP 200 in {cap['seconds']} s).")
    w("- Built in two network namespaces joined by a veth pair (10.203.0.1 and .2, nothing else), "
      "`ethtool -K tso off gso off gro off tx off` on both ends (1500-byte MTU segments, real checksums); "
      "a Python HTTP/1.0 server (`bench/httpd.py`, one connection per transfer), `curl --parallel` (one option "
      "group per transfer), and `tcpdump`.")
    w(f"- **Real losses**: no netem in this kernel, so an XDP program (`bench/lossy_xdp.py`, bcc) on each end of "
      f"the veth drops {cap.get('loss_ppm', 0) / 1e4:.2f}% of the packets arriving there, at random "
      f"({cap.get('xdp_drops_server_in', 0):,} dropped arriving at the server, "
      f"{cap.get('xdp_drops_client_in', 0):,} arriving at the client). tcpdump listens on the server's end: a "
      f"server packet lost on its way to the client is in the capture and so is its retransmission (duplicates, "
      f"overlaps); a client packet lost on its way in is missing until the client retransmits it (holes filled "
      f"later, out of order). Both stacks recover for real: fast retransmit, SACK, timeouts. A `tbf` ({cap['rate']}, "
      f"queue {cap['limit']}) on both ends sets the pace (its queue overflowed {cap['tbf_drops_server']:,} times at "
      f"the server and {cap['tbf_drops_client']:,} at the client: local drops the sending stack is told about and "
      f"requeues, not losses on the wire). tcpdump itself dropped {cap['tcpdump_kernel_drops']} packets.")
    w(f"- **Capture loss and reordering** added to the file (`pcaptool.py impair`, seed {a.seed}): "
      f"{imp.get('dropped_data_packets', 0):,} data packets removed ({a.drop:.1%}; "
      f"{imp.get('dropped_bytes', 0):,} bytes that no tool can deliver: the streams have real holes), "
      f"{imp.get('swaps', 0):,} pairs of adjacent data packets swapped ({a.swap:.1%}).")
    w(f"- **Truth**, from the packets alone (`pcaptool.py truth`, no reassembly engine): per direction, the union "
      f"of the payloads' sequence ranges = **{present:,} bytes present** in the capture (the most any tool can "
      f"deliver); the sequence span from SYN to the last byte = {exchanged:,} bytes exchanged by the endpoints "
      f"(curl's own count of request + upload + response header + body bytes: {cap['curl_bytes']:,}); "
      f"payload in packets, retransmitted copies included: {truth['payload_seen']:,}.\n")
    w("## Results\n")
    w(f"Rates are capture packets ({npk:,}) over the median wall time; *net* subtracts the tool's start-up "
      f"(its median wall time over the first 200 packets). Delivered = stream bytes the tool handed to its user "
      f"(see *How each tool's bytes are counted*), as a share of the bytes present.\n")
    w("| tool | wall s (median) | CPU s | start-up s | Mpps | Mpps net | max RSS MiB | delivered bytes | "
      "of present | note |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    summary: Dict[str, Dict[str, float]] = {}
    for t in tools:
        r = res[t.name]
        if not r["wall"]:
            continue
        wall, cpu, st = med(r["wall"]), med(r["cpu"]), med(r["start"])
        out = r["out"] or {}
        dl = out.get("delivered")
        seen = out.get("seen_payload")
        mpps = npk / wall / 1e6
        net = npk / (wall - st) / 1e6 if wall > st * 1.05 else float("nan")  # nan: start-up dominates
        summary[t.name] = {"wall": wall, "cpu": cpu, "start": st, "mpps": mpps, "net": net,
                           "delivered": dl if dl is not None else float("nan"), "events": out.get("events") or 0}
        if dl is not None:
            dls, share = f"{dl:,}", f"{dl / present:.4%}"
        elif seen is not None:
            dls, share = f"({seen:,} seen)", f"({seen / present:.2%})"
        else:
            dls, share = "-", "-"
        net_s = f"{net:.2f}" if net == net else "-"
        w(f"| {t.name} | {wall:.2f} | {cpu:.2f} | {st:.2f} | {mpps:.2f} | {net_s} | {med(r['rss']) / 1024:.0f} | "
          f"{dls} | {share} | {t.what} |")
    w("")
    runs_txt = "; ".join(f"{t.name}: {', '.join(f'{x:.2f}' for x in res[t.name]['wall'])}"
                         for t in tools if res[t.name]["wall"])
    w(f"All runs (wall seconds): {runs_txt}.\n")
    sur = res.get("suricata + tcp-data", {}).get("out") or res.get("suricata", {}).get("out")
    if sur:
        skip = ("delivered", "files", "packets", "logged", "wrong")
        w("Suricata's counters: " + ", ".join(f"tcp.{k} {v}" for k, v in sur.items() if k not in skip and v is not None)
          + f", decoder.pkts {sur.get('packets')}.\n")

    w("## Against the targets\n")
    s = summary
    if "mos-xdp streams" in s and "libnids" in s:
        ms, ln = s["mos-xdp streams"], s["libnids"]
        w(f"- `mos-xdp streams` vs libnids: {ms['mpps']:.2f} vs {ln['mpps']:.2f} Mpps wall "
          f"({ms['mpps'] / ln['mpps']:.2f}x; net of start-up {ms['net']:.2f} vs {ln['net']:.2f} Mpps, "
          f"{ms['net'] / ln['net']:.2f}x; CPU {ms['cpu']:.2f} vs {ln['cpu']:.2f} s). Target: at least as fast: "
          f"**{'met' if ms['mpps'] >= ln['mpps'] else 'not met'}** (wall), "
          f"**{'met' if ms['net'] >= ln['net'] else 'not met'}** (net).")
        w(f"- Bytes: `mos-xdp streams` delivered {ms['delivered'] / present:.4%} of the bytes present, "
          f"libnids {ln['delivered'] / present:.4%} (libnids stops delivering a direction once it stalls: "
          f"at a hole that never fills, and on some connections without one). "
          f"Target: every byte: **{'met' if ms['delivered'] == present else 'not met'}**.")
    ctr = (res.get("mos-xdp streams", {}).get("out") or {}).get("counters") or {}
    if ctr:
        w(f"  Engine counters of that run: {', '.join(f'{k} {v:,}' for k, v in ctr.items())}.")
        if ctr.get("reasm_bytes_dropped_limit"):
            w(f"  **Why bytes are missing**: {ctr['reasm_bytes_dropped_limit']:,} bytes were dropped by the "
              f"per-direction segment limit ({ctr['reasm_limit_segments']:,} segments refused; `max_segments` "
              "defaults to 4096). In a download, when a segment is lost in the capture (but not on the wire), the "
              "client acknowledges past the hole; `userspace/engine.c` (TCP ACK handling at the end of the "
              "receiver update, the `seq_gt(ack, ds->next_seq)` branch) only marks the hole `ack_pending` and "
              "settles it (`settle_acks`) when the acking side sends data or the other side closes. A client that "
              "only downloads never sends data again, so every later segment of the response is held out of order "
              "until the server's FIN; past 4096 held segments (about 5.9 MB) `reasm.c` (`reasm_segment`, "
              "REASM_LIMIT_SEGMENTS) refuses new ones and their bytes are lost, while the whole rest of the "
              "response sits in memory. Settling an acked hole when the limit is reached (or once the receiver "
              "acks well past it) would deliver them.")
    c_on, c_off = s.get("mos-xdp streams (checksum on)"), s.get("mos-xdp streams (checksum off)")
    if c_on and c_off and "mos-xdp streams" in s:
        auto = s["mos-xdp streams"]
        on_ctr = (res["mos-xdp streams (checksum on)"].get("out") or {}).get("counters") or {}
        bad = {k: on_ctr.get(k, 0) for k in ("bad_checksum_ip", "bad_checksum_tcp", "bad_checksum_udp")}
        w(f"- **Checksums**: `mos-xdp streams` with `--checksum auto` (the default) {auto['mpps']:.2f} Mpps, "
          f"`off` {c_off['mpps']:.2f}, `on` {c_on['mpps']:.2f} (wall, medians of the same interleaved runs; CPU "
          f"{auto['cpu']:.2f}, {c_off['cpu']:.2f}, {c_on['cpu']:.2f} s): auto costs "
          f"{1 - auto['mpps'] / c_off['mpps']:.1%} of `off` (CPU {auto['cpu'] / c_off['cpu'] - 1:.1%}), `on` "
          f"{1 - c_on['mpps'] / c_off['mpps']:.1%} (CPU {c_on['cpu'] / c_off['cpu'] - 1:.1%}). Target: auto within "
          f"5% of off: **{'met' if auto['mpps'] >= 0.95 * c_off['mpps'] else 'not met'}**. Packets of the capture "
          f"with a wrong checksum (the `on` run's counters): **{sum(bad.values()):,}** "
          f"({', '.join(f'{k} {v:,}' for k, v in bad.items())}; the capture was made with `tx off`, real "
          f"checksums); checksum_unverifiable {on_ctr.get('checksum_unverifiable', 0):,}. Auto validates this "
          f"capture whole (no wrong checksum in its sample), so it costs what `on` does: reading every payload "
          f"byte, which this row otherwise never does (reassembly holds the mapped bytes by reference): "
          f"{truth['payload_seen'] / max(c_on['cpu'] - c_off['cpu'], 1e-9) / 1e9:.0f} GB/s of payload for the "
          f"CPU time `on` adds, the memory's pace rather than the sum's (`userspace/checksum.c`).")
        for name in ("mos-xdp streams -o", "mos-xdp app (CONN_NEW_DATA)"):
            off_name = name.replace(")", ", checksum off)") if name.endswith(")") else name + " (checksum off)"
            a, o = s.get(name), s.get(off_name)
            if a and o:
                w(f"  Where the payload is read anyway, `{name}`: auto {a['mpps']:.2f} vs off {o['mpps']:.2f} Mpps "
                  f"(auto costs {1 - a['mpps'] / o['mpps']:.1%}; CPU {a['cpu']:.2f} vs {o['cpu']:.2f} s): "
                  f"**{'within' if a['mpps'] >= 0.95 * o['mpps'] else 'not within'} 5%**.")
    nfp = s.get("nfstream + plugin")
    for label, how in (("", "the default order, actions from the connection's next packet"),
                       (", order batch", "order batch, as nfstream's plugins, which observe only")):
        app = s.get(f"mos-xdp app (CONN_NEW_DATA{label})")
        if app and nfp:
            w(f"- Python-handler app ({how}) vs nfstream with a plugin: {app['mpps']:.3f} vs {nfp['mpps']:.3f} "
              f"Mpps (**{app['mpps'] / nfp['mpps']:.1f}x**, net of start-up {app['net'] / nfp['net']:.1f}x). "
              f"Target 5x: **{'met' if app['mpps'] >= 5 * nfp['mpps'] else 'not met'}**.")
    noop = s.get("mos-xdp app (no handler)")
    nf = s.get("nfstream")
    for label, how in ((", order batch", "the call alone"),
                       ("", "the default order: each packet's handlers run before its connection's next packet, "
                            "so a crossing per packet of a connection")):
        pk = s.get(f"mos-xdp app (PKT_IN{label})")
        if noop and pk and pk["events"]:
            per = (pk["wall"] - noop["wall"]) / pk["events"] * 1e6
            perc = (pk["cpu"] - noop["cpu"]) / pk["events"] * 1e6
            w(f"- **Cost of one Python handler call** (mos-xdp, {how}): (PKT_IN handler run - no-handler run) / "
              f"{int(pk['events']):,} calls = **{per:.2f} µs** wall ({perc:.2f} µs CPU).")
    if nf and nfp and nfp["events"]:
        per = (nfp["wall"] - nf["wall"]) / nfp["events"] * 1e6
        perc = (nfp["cpu"] - nf["cpu"]) / nfp["events"] * 1e6
        w(f"- nfstream's plugin path, same way: (with plugin - without) / {int(nfp['events']):,} on_init/on_update "
          f"calls = **{per:.2f} µs** wall ({perc:.2f} µs CPU; nfstream runs its meter in a second process, "
          f"so CPU can exceed wall). Peer figure to beat: about 4 µs.")
    if mem:
        w(f"- **Memory per connection** with nothing buffered: `sizeof(struct conn)` = "
          f"**{mem[0]['sizeof_conn']} bytes** (`lib.mos_conn_size()`); RSS growth measured over "
          + ", ".join(f"{x['conns_added']:,} {'half-open (SYN only)' if x['kind'] == 'syn' else 'established, idle'} "
                      f"connections: **{x['rss_bytes_per_conn']} bytes** each "
                      f"({x['rss_before_kb'] / 1024:.1f} -> {x['rss_after_kb'] / 1024:.1f} MiB)" for x in mem)
          + " (`connmem.py`: synthetic capture, engine fed in-process, VmRSS before/after, connections not ended). "
          "Target 256: " + ("**met** for the structure" if mem[0]["sizeof_conn"] <= 256 else "**not met**")
          + "; the RSS figure adds the flow table's hash buckets and allocator overhead.")
    w("")
    sur_out = res.get("suricata + tcp-data", {}).get("out") or {}
    w("## How each tool's bytes are counted\n")
    w("- **mos-xdp streams**: the table's total (the engine's delivered-bytes counter: `c2s_bytes + s2c_bytes` of "
      "every connection, stream bytes without the holes; the table shows the first 50 connections and runs no "
      "Python while the capture is read). `-o`: the sizes of the `.c2s`/`.s2c` files (holes skipped, not "
      "filled).")
    w("- **mos-xdp app**: `len(ev.data)` summed in a `CONN_NEW_DATA` handler (`bench/app_count.py`).")
    w("- **libnids**: `count_new` of both half-streams summed at every `NIDS_DATA` callback "
      "(`bench/nids_count.c`: checksums not verified, 64K-stream table, port-scan detection off).")
    w("- **tcpflow**: the non-zero bytes of its flow files. tcpflow writes each segment at its offset, so holes "
      "are zero-filled; the served bodies and the uploads have no zero byte (`httpd.py`), nor do HTTP headers, "
      "so the non-zero bytes are exactly the bytes it delivered.")
    w("- **Suricata**: `--runmode single -k none -S /dev/null` (no rules), `stream.reassembly.depth: 0`, memcaps "
      "raised, midstream on (`bench/work/suricata.yaml`, written by run.py). Its stats count gaps, not bytes, so a "
      "second configuration turns on the `tcp-data` streaming logger (`type: dir`), which writes the reassembled "
      "bytes of every stream to a file. It writes some bytes more than once (after gaps), so its files are "
      "aligned against the streams rebuilt from the packets (`pcaptool.py distinct`) and each stream byte is "
      "counted once; bytes that match nothing would count as wrong"
      + (f" (here {sur_out.get('logged', 0):,} bytes logged, {sur_out.get('wrong', 0):,} wrong)" if sur_out else "")
      + ". The logger opens and closes a file per chunk, so its time is not Suricata's speed: the plain row is.")
    w("- **nfstream**: `NFStreamer(n_meters=1, accounting_mode=3, n_dissections=0)`: `bidirectional_bytes` in "
      "payload accounting. nfstream does not reassemble: it counts payload seen in packets, retransmitted "
      "copies included, so it is shown in parentheses as *seen*, not delivered.\n")
    w("## Commands\n")
    w("```sh")
    seen_cmds = set()
    for c in commands_log:
        c2 = c.replace(str(ROOT) + "/", "")
        if c2 not in seen_cmds:
            seen_cmds.add(c2)
            w(c2)
    w("```\n")
    w("Capture details (JSON):\n")
    w("```json")
    w(json.dumps({k: v for k, v in cap.items()}, indent=1))
    w("```")
    # keep the sections other scripts write between their markers (bench/live.py, bench/compare.py)
    old = path.read_text() if path.exists() else ""
    kept = [m.group(0) for name in SECTIONS if (m := section_pattern(name).search(old))]
    path.write_text("\n".join(L) + "\n" + "".join("\n" + k for k in kept))


if __name__ == "__main__":
    main()
