"""``python -m demo`` (what scripts/demo.sh runs): the live demo (namespaces, mos-xdp inline, real
traffic) and the offline one (``--pcap``).

The live demo runs as a subprocess, bounded in time; each test checks what a newcomer must see (HTTP
requests, the dropped connection, both sides' TCP states, XDP and engine counters) and that nothing is
left behind: namespaces, the XDP program, pins, state files, temporary files.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest

from demo.live import CLIENT_IP, NETNS_DIR, NS_PREFIX, PORT, SERVER_IP
from mos import xdp

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120  # the demo's own limit is 60 s; it takes about 5 s here
SERVER = f"{SERVER_IP}:{PORT}"
STATES = {"CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING",
          "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK"}


def _cmd(*args: str) -> List[str]:
    # the demo's directory, runnable from any working directory (scripts/demo.sh runs `python -m demo`)
    return [sys.executable, str(ROOT / "demo"), *args]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOS_XDP_")}
    return dict(env, PYTHONUNBUFFERED="1", **extra)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, XDP)")


def _leftovers(pid: int, prog_id: Optional[int] = None) -> List[str]:
    """What a demo run by ``pid`` left behind (waits a little for the kernel to free the program)."""
    end = time.time() + 5
    while True:
        left = [str(p) for p in NETNS_DIR.glob(f"{NS_PREFIX}{pid}-*")]
        # pins and state go by namespace (net-<inode>/) and the demo's namespaces are gone: look in every one
        left += [str(p) for p in xdp.PIN_ROOT.glob(f"*/mbi{pid}")]
        left += [str(p) for p in xdp.RUN_DIR.glob(f"*/mbi{pid}.json")]
        left += [str(p) for p in Path("/tmp").glob(f"{NS_PREFIX}{pid}-*")]
        if prog_id and xdp.prog_name_by_id(prog_id) is not None:
            left.append(f"XDP program {prog_id}")
        if not left or time.time() > end:
            return left
        time.sleep(0.2)


def _table(out: str) -> List[List[str]]:
    """The rows of the final connection table (midstat): id client server client-state server-state end."""
    m = re.search(r"^\s+-- (\d+) connections\n\s+id\s+client.*\n((?:\s+\d+\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\n)*)",
                  out, re.M)
    assert m, out
    rows = [line.split() for line in m.group(2).splitlines()]
    assert len(rows) == int(m.group(1)), out
    return rows


def _counter(out: str, name: str) -> int:
    m = re.search(rf"^\s+{name}\s+(\d+)\b", out, re.M)
    return int(m.group(1)) if m else 0


def test_live_demo(tmp_path: Path) -> None:
    """`mos-xdp demo` as root: real traffic through mos-xdp inline, the apps' output, the counters; clean."""
    _require_root()
    t0 = time.time()
    proc = subprocess.Popen(_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=str(tmp_path))
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"mos-xdp demo did not finish within {TIMEOUT} s:\n{out}\n{err}")
    took = time.time() - t0
    m = re.search(r"XDP program id (\d+)", out)
    prog_id = int(m.group(1)) if m else None
    assert _leftovers(proc.pid, prog_id) == []
    assert proc.returncode == 0, f"{out}\n{err}"
    assert "cannot run here" not in err, err  # the live demo ran, no fallback
    assert f"mos-xdp: live on mbi{proc.pid} <-> mbo{proc.pid} (inline)" in out
    assert "live demo OK" in out
    # http_log: the requests, read from the reassembled client streams
    for path in ("/index.html", "/big.bin", "/etc/passwd", "/notes.txt"):
        assert re.search(rf"middlebox> \d+ GET {re.escape(SERVER)} {re.escape(path)}$", out, re.M), (path, out)
    assert "http_log: 4 requests, 0 unparsable streams" in out
    # firewall: the split request's connection is dropped, the client gets no reply, the server nothing
    dropped = re.findall(rf"firewall: dropped connection (\d+) {re.escape(CLIENT_IP)}:\d+ -> {re.escape(SERVER)}: "
                         r"'/etc/passwd'", out)
    assert len(dropped) == 1, out
    assert "no reply within" in out and "never reached the server" in out
    assert "firewall: 1 connection(s) dropped" in out
    assert re.search(r"-> 200, 20971520 bytes .* identical to the server's file", out), out
    # midstat: both sides' final states; the three fetches closed with FIN, the dropped one never ended
    rows = _table(out)
    assert len(rows) == 4, rows
    for cid, cli, srv, cstate, sstate, end in rows:
        assert cli.startswith(f"{CLIENT_IP}:") and srv == SERVER and {cstate, sstate} <= STATES, rows
        if cid == dropped[0]:
            assert (cstate, sstate, end) == ("ESTABLISHED", "ESTABLISHED", "EOF"), rows
        else:
            assert end == "FIN" and "TIME_WAIT" in (cstate, sstate), rows
    # XDP counters (per reason) and engine counters, every packet accounted for
    assert "XDP program counters" in out
    assert _counter(out, "xsk_redirect") > 14000 and _counter(out, "bypass_drop") >= 1, out
    assert _counter(out, "rx") >= _counter(out, "xsk_redirect") + _counter(out, "bypass_drop")
    assert re.search(r"af_xdp worker 0: rx_packets=\d+", out), out
    m = re.search(r"\(accounted packets\)\s+(\d+) of (\d+)", out)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) > 14000, out
    assert _counter(out, "conns_created") == 4
    assert took < 45, f"the live demo took {took:.1f} s"


def test_live_demo_interrupted_cleans_up() -> None:
    """Ctrl-C once the middle box is up (traffic flowing): exit 130, nothing left behind."""
    _require_root()
    proc = subprocess.Popen(_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: List[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("== client: curl") and "big.bin" in line:
                up.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        assert up.wait(TIMEOUT), "".join(lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    t.join(timeout=10)
    err = proc.stderr.read() if proc.stderr else ""
    m = re.search(r"XDP program id (\d+)", "".join(lines))
    assert _leftovers(proc.pid, int(m.group(1)) if m else None) == []
    assert proc.returncode == 130, "".join(lines) + err
    assert "interrupted" in err


def test_live_demo_falls_back_when_the_middle_box_cannot_start() -> None:
    """The middle box fails to start (here: a bad MOS_XDP_MODE): one line, the offline demo, exit 0, clean."""
    _require_root()
    proc = subprocess.Popen(_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(MOS_XDP_MODE="bogus"))
    out, err = proc.communicate(timeout=TIMEOUT)
    assert _leftovers(proc.pid) == []
    assert proc.returncode == 0, out + err
    notes = [line for line in err.splitlines() if "cannot run here" in line]
    assert len(notes) == 1 and "MOS_XDP_MODE" in notes[0], err
    assert "== mos-xdp streams" in out and "live demo" not in out


def test_demo_falls_back_when_not_root() -> None:
    """Not root: the offline demo, after one line saying why."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv not found")
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *_cmd()]
    else:
        cmd = _cmd()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the live demo cannot run here (not root" in proc.stderr
    assert "GET www.example.com /split/request?x=1" in proc.stdout + proc.stderr


def test_demo_pcap() -> None:
    """`mos-xdp demo --pcap`: the offline demo, as before."""
    proc = subprocess.run(_cmd("--pcap"), capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cannot run here" not in proc.stderr and "live demo" not in proc.stdout
    out = proc.stdout
    assert "== mos-xdp run apps/midstat.py" in out and "== mos-xdp run apps/http_log.py" in out
    for path in ("/index.html", "/split/request?x=1", "/lossy", "/already/running", "/reset", "/v6"):
        assert re.search(rf"^\d+ GET \S+ {re.escape(path)}$", out, re.M), (path, out)
    assert "6 connections" in out and "TIME_WAIT" in out
