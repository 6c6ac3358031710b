"""An inline mos-xdp that crashes fails the way the operator chose, says so, and is cleaned up by the next
command; every frame of a run is accounted for.

The topology is test_live.py's (curl in ns "c", the middle box in "m", http.server in "s"). ``kill -9`` of
``mos-xdp run`` mid-transfer: the kernel takes the dead engine's AF_XDP sockets out of the XSKMAP, and the
XDP program left attached applies the failure mode to monitored traffic: ``drop`` stops it, ``pass`` lets
it through uninspected (a request the firewall app would stop reaches the server).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from mos import xdp
from tests.netns import Topology, reap_stale, require_root

# ruff: noqa: F811 (the tests take the imported fixture `inline` as their argument)
from tests.test_live import CLIENT, PORT, ROOT, SERVER, SMALL, Inline, LiveRun, inline  # noqa: F401

pytestmark = pytest.mark.netns

FIREWALL = str(ROOT / "apps" / "firewall.py")


def _xdp_counters(env: Inline) -> Dict[str, int]:
    with env.m.entered():
        with xdp.XdpProgram.open_pinned(env.mi) as prog:
            return prog.stats()


def _get(env: Inline, path: str, max_time: float = 3) -> str:
    """A plain HTTP/1.0 GET from the client: the status line, or ``FAILED``."""
    r = env.c.run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--interface", CLIENT, "--max-time",
                  str(max_time), f"http://{SERVER}:{PORT}/{path}", check=False, timeout=max_time + 20)
    return r.stdout.strip() if r.returncode == 0 else "FAILED"


def _mos(env: Inline, *args: str) -> subprocess.CompletedProcess:
    return env.m.run(sys.executable, "-m", "mos.cli", *args, check=False, timeout=60, cwd=str(ROOT),
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _kill9_mid_transfer(env: Inline, tmp_path: Path, mode: str) -> int:
    """A firewall run with ``--on-failure mode``, killed by SIGKILL while curl downloads; returns its pid."""
    run = env.run(FIREWALL, "--on-failure", mode, "--", "--pattern", "/etc/passwd")
    assert f"if it stops, monitored traffic {'is dropped' if mode == 'drop' else 'passes'}" in run.stderr
    out = tmp_path / "big.bin"
    curl = env.c.popen("curl", "-sS", "--interface", CLIENT, "--limit-rate", "2M", "-o", str(out), "--max-time",
                       "6", f"http://{SERVER}:{PORT}/big.bin", stderr=subprocess.PIPE)
    try:
        end = time.time() + 10
        while not (out.exists() and out.stat().st_size > 512 << 10):
            assert time.time() < end and curl.poll() is None, "the transfer did not start"
            time.sleep(0.05)
        pid = run.proc.pid
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(timeout=10)
        size = out.stat().st_size
        assert curl.wait(timeout=30) != 0  # 24 MiB at 2 MB/s: cut by --max-time whatever the mode
    finally:
        if curl.poll() is None:
            curl.kill()
    assert out.stat().st_size > size if mode == "pass" else True  # pass: the transfer went on, uninspected
    return pid


@pytest.mark.parametrize("mode", ["drop", "pass"])
def test_kill9_fails_as_chosen_and_is_cleaned_up(inline: Inline, tmp_path: Path, mode: str) -> None:
    """kill -9 mid-transfer: monitored traffic stops (drop) or passes uninspected (pass), status names the
    dead run and the fix; the next run adopts the program and detaches it (drop case), or detach removes
    it (pass case)."""
    pid = _kill9_mid_transfer(inline, tmp_path, mode)
    with inline.m.entered():
        assert xdp.link_xdp(inline.mi).prog_id, "the program stays attached after SIGKILL"
    before = _xdp_counters(inline)
    if mode == "drop":
        assert _get(inline, "small.txt") == "FAILED"  # fail closed: nothing monitored crosses
        assert _get(inline, "etc/passwd") == "FAILED"
    else:
        assert _get(inline, "small.txt") == "200"
        assert _get(inline, "etc/passwd") == "404"  # reached the server: nothing inspected it
    d = {k: v - before[k] for k, v in _xdp_counters(inline).items()}
    assert d[f"{mode}_no_socket"] >= 2 and d[f"{'pass' if mode == 'drop' else 'drop'}_no_socket"] == 0
    assert d["xsk_redirect"] == 0

    st = _mos(inline, "status", inline.mi, "--json")
    assert st.returncode == 0, st.stderr
    [info] = json.loads(st.stdout)
    assert info["problem"] and f"pid {pid}" in info["problem"] and f"detach {inline.mi}" in info["problem"], info
    assert ("dropped" if mode == "drop" else "uninspected") in info["problem"]

    if mode == "drop":
        run = inline.run(FIREWALL, "--", "--pattern", "/etc/passwd")
        assert re.search(rf"adopting the XDP program .* left by a run that died \(pid {pid}\)", run.stderr), run.stderr
        try:
            assert _get(inline, "small.txt", max_time=10) == "200"  # inspected again
        finally:
            assert run.stop() == 0, run.stderr
        assert "detached XDP program" in run.stderr  # it adopted it, so it removed it
    else:
        r = _mos(inline, "detach", inline.mi)
        assert r.returncode == 0 and "detached XDP program" in r.stdout, r.stdout + r.stderr
    inline.assert_clean()


def test_attached_program_stays_and_gets_its_settings_back(inline: Inline, tmp_path: Path) -> None:
    """A program made by `mos-xdp attach` (fail open) serves a run that asks for drop; after the run it
    stays, with pass again, and says so; a second run while one serves it is refused in one line."""
    r = _mos(inline, "attach", inline.mi, "--peer", inline.mo, "--on-failure", "pass")
    assert r.returncode == 0, r.stderr
    try:
        run = inline.run(FIREWALL, "--on-failure", "drop")
        try:
            with inline.m.entered():
                with xdp.XdpProgram.open_pinned(inline.mi) as prog:
                    assert prog.on_failure() == "drop"
            second = LiveRun(inline.m, FIREWALL, "--iface", inline.mi, "--peer", inline.mo)
            second.proc.wait(timeout=60)
            rc = second.stop()
            assert rc != 0 and f"served by another mos-xdp run (pid {run.proc.pid})" in second.stderr, second.stderr
            assert _get(inline, "small.txt", max_time=10) == "200"
        finally:
            assert run.stop() == 0, run.stderr
        assert "the program made by mos-xdp attach stays; monitored traffic passes uninspected" in run.stderr
        with inline.m.entered():
            with xdp.XdpProgram.open_pinned(inline.mi) as prog:
                assert prog.on_failure() == "pass" and "engine" not in prog.state
        assert _get(inline, "small.txt") == "200"  # fail open, as attached
    finally:
        _mos(inline, "detach", inline.mi)
    inline.assert_clean()


def test_every_frame_is_accounted_for(inline: Inline, tmp_path: Path) -> None:
    """A run with a transfer, ARP, ICMP and a dropped connection: the XDP verdicts and reasons sum to rx,
    every frame sent to the engine was received or dropped at a ring, and the engine counted each."""
    run = inline.run(FIREWALL, "--stats", "--", "--pattern", "/etc/passwd")
    try:
        assert inline.c.ping(SERVER)
        assert _get(inline, "big.bin", max_time=60) == "200"
        assert inline.split_request(b"GET /etc/pa", b"sswd HTTP/1.0\r\n\r\n") in ("TIMEOUT", "RESET")
        assert _get(inline, "small.txt") == "200"
    finally:
        assert run.stop() == 0, run.stderr
    [line] = [x for x in run.err if "balance: xdp rx" in x]
    assert line.rstrip().endswith(": ok"), line
    m = re.search(r"to the engine (\d+) = received (\d+) \+ ring drops (\d+) \+ unread at stop (\d+)", line)
    assert m and int(m.group(1)) > len(SMALL) and int(m.group(1)) == sum(int(g) for g in m.groups()[1:])
    [eng] = [x for x in run.err if "balance: worker 0:" in x]
    assert eng.rstrip().endswith("ok"), eng
    xdp_c = run.counters()
    assert xdp_c["rx"] == xdp_c.get("pass", 0) + xdp_c.get("drop", 0) + xdp_c.get("redirect", 0)
    inline.assert_clean()


def test_veth_with_default_offloads_says_what_to_change_then_works(tmp_path: Path) -> None:
    """End hosts with veth's default offloads (GRO off, checksum offload and TSO on): the run says in one
    line that frames XDP forwards are dropped and which setting fixes it; with GRO on at the ends (checksum
    offload still on) a transfer is byte-identical, the partial checksums completed by the engine."""
    require_root()
    reap_stale()
    www = tmp_path / "www"
    www.mkdir()
    (www / "f.bin").write_bytes(os.urandom(4 << 20))
    net = f"10.212.{random.randint(1, 250)}"
    client, server = f"{net}.1", f"{net}.2"
    with Topology() as topo:
        c, m, s = topo.netns("c"), topo.netns("m"), topo.netns("s")
        tag = topo.tag[-6:]
        mi, mo, lc, ls = f"mi{tag}", f"mo{tag}", f"lc{tag}", f"ls{tag}"
        topo.veth(c, lc, m, mi, f"{client}/24", None)
        topo.veth(m, mo, s, ls, None, f"{server}/24")
        topo.spawn(s, sys.executable, "-m", "http.server", "-b", server, str(PORT), "-d", str(www),
                   stop_signal=signal.SIGKILL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def _leftovers() -> None:
            with m.entered():
                xdp.detach(mi)

        topo.on_close(_leftovers)
        url = f"http://{server}:{PORT}/f.bin"
        run = LiveRun(m, FIREWALL, "--iface", mi, "--peer", mo, "--stats")
        try:
            run.wait_ready()
            r = c.run("curl", "-sS", "-o", "/dev/null", "--max-time", "3", url, check=False, timeout=30)
            assert r.returncode != 0  # ARP cannot cross: nothing connects
            end = time.time() + 5
            said = f"frames XDP forwards from {mi} into {mo} are dropped by the kernel"
            while not any(said in x for x in run.err) and time.time() < end:
                time.sleep(0.2)
            [line] = [x for x in run.err if said in x]  # once, however many frames
            assert f"the other end of veth {mo} needs GRO" in line and "ethtool -K" in line, line
            for ns, dev in ((c, lc), (s, ls)):
                ns.ethtool(dev, {"gro": True})  # what the line says; tx checksum offload and TSO stay on
                ns.run("ip", "neigh", "flush", "dev", dev)  # the failed ARP entry would keep failing a while
            assert "tx-checksumming: on" in c.run("ethtool", "-k", lc).stdout
            out = tmp_path / "f.out"
            r = c.run("curl", "-sS", "-o", str(out), "--max-time", "30", url, check=False, timeout=60)
            assert r.returncode == 0, r.stderr
        finally:
            assert run.stop() == 0, run.stderr
        assert out.read_bytes() == (www / "f.bin").read_bytes()
        assert "partial ones (a local sender's offload) are completed" in run.stderr
        completed = run.engine_counters().get("checksum_completed", 0)
        assert completed > 100, run.stderr  # every segment of both ends carried a partial checksum
        assert not run.engine_counters().get("bad_checksum_tcp"), run.stderr
        with m.entered():
            assert not xdp.link_xdp(mi).prog_id


def test_kill9_of_a_multi_worker_run_stops_its_workers(inline: Inline, tmp_path: Path) -> None:
    """kill -9 of the parent of a two-worker run: the workers stop too (SIGTERM on their parent's death),
    so their sockets go and the failure mode (drop) applies, rather than an engine nobody owns."""
    run = inline.run(FIREWALL, "--workers", "2")
    assert _get(inline, "small.txt", max_time=10) == "200"
    workers = [p for p in inline.m.pids() if p != run.proc.pid and _is_mos_run(p)]
    assert len(workers) == 2, workers
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(timeout=10)
    end = time.time() + 10
    while any(os.path.exists(f"/proc/{p}") and _is_mos_run(p) for p in workers):
        assert time.time() < end, "the workers outlived their parent"
        time.sleep(0.1)
    before = _xdp_counters(inline)
    assert _get(inline, "small.txt") == "FAILED"
    assert _xdp_counters(inline)["drop_no_socket"] > before["drop_no_socket"]
    r = _mos(inline, "detach", inline.mi)
    assert r.returncode == 0, r.stderr
    inline.assert_clean()


def _is_mos_run(pid: int) -> bool:
    try:
        return b"mos.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
