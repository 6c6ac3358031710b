"""Pins and state per network namespace: two namespaces with an interface of the same name each keep their
own program, maps, block list and status; a namespace that goes away leaves pins that `status` reports from
anywhere and `detach --stale` removes.

Topology (module scope)::

    ns "n1"  dev  10.203.S.2/24  <-- veth -->  p1  10.203.S.1/24  ns "p"
    ns "n2"  dev  10.204.S.2/24  <-- veth -->  p2  10.204.S.1/24  ns "p"

``dev`` is the same name in n1 and n2. Everything goes through the CLI (``nsenter --net=``), as an operator
would; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from mos import xdp
from mos.net import netlink
from mos.xdp.env import netns_cookie, netns_key
from mos.xdp.state import read_state
from tests.netns import Netns, Topology, reap_stale, require_root
from tests.test_xdp import frame

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
S = random.randint(1, 250)


def cli(ns: Netns, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``mos-xdp ARGS`` in ``ns``, captured."""
    r = subprocess.run(ns.cmd(sys.executable, "-m", "mos.cli", *args), capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def status(ns: Netns, *args: str) -> List[Dict[str, Any]]:
    """``mos-xdp status --json`` in ``ns``."""
    return list(json.loads(cli(ns, "status", *args, "--json").stdout))


def prog_of(ns: Netns, dev: str) -> int:
    """The id of the XDP program attached to ``dev`` in ``ns`` (0: none)."""
    return netlink.link_xdp(dev, netns=ns.name).prog_id


class Pair:
    """The module's namespaces: ``n1`` and ``n2`` each with an interface ``dev``, their peers in ``p``."""

    def __init__(self, topo: Topology, n1: Netns, n2: Netns, p: Netns, dev: str) -> None:
        self.topo, self.n1, self.n2, self.p, self.dev = topo, n1, n2, p, dev

    def addr(self, ns: Netns, end: int) -> str:
        """The address of ``ns``'s ``dev`` (end 2) or of its peer in p (end 1)."""
        return f"10.{203 if ns is self.n1 else 204}.{S}.{end}"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    require_root()
    reap_stale()
    with Topology() as topo:
        n1, n2, p = topo.netns("n1"), topo.netns("n2"), topo.netns("p")
        tag = topo.tag[-6:]
        dev = f"vx{tag}"
        topo.veth(n1, dev, p, f"p1{tag}", f"10.203.{S}.2/24", f"10.203.{S}.1/24")
        topo.veth(n2, dev, p, f"p2{tag}", f"10.204.{S}.2/24", f"10.204.{S}.1/24")
        for ns in (n1, n2):
            topo.on_close(lambda ns=ns: cli(ns, "detach", dev, check=False))
        yield Pair(topo, n1, n2, p, dev)


def test_same_name_in_two_namespaces(pair: Pair) -> None:
    n1, n2, dev = pair.n1, pair.n2, pair.dev
    for ns in (n1, n2):
        assert pair.p.ping(pair.addr(ns, 2))
        cli(ns, "attach", dev, "--mode", "native")
    # the second attach left the first alone: two programs, each with its own pins and state
    id1, id2 = prog_of(n1, dev), prog_of(n2, dev)
    assert id1 and id2 and id1 != id2
    with n1.entered():
        pins1, state1 = xdp.XdpProgram.pin_dir(dev), read_state(dev)
    with n2.entered():
        pins2, state2 = xdp.XdpProgram.pin_dir(dev), read_state(dev)
    assert pins1 != pins2 and pins1.name == pins2.name == dev
    assert (pins1 / xdp.MAP_CONFIG).exists() and (pins2 / xdp.MAP_CONFIG).exists()
    assert (state1["prog_id"], state2["prog_id"]) == (id1, id2)
    with n1.entered():
        sp1 = xdp.XdpProgram.state_path(dev)
    private = [xdp.PIN_ROOT, pins1.parent, pins1, pins2, xdp.RUN_DIR, sp1.parent]
    assert {str(d): oct(d.stat().st_mode & 0o777) for d in private} == {str(d): "0o700" for d in private}
    assert sp1.stat().st_mode & 0o777 == 0o600
    # status in each namespace lists its own program only
    for ns, prog_id in ((n1, id1), (n2, id2)):
        mine = [i for i in status(ns) if not i["stale"]]
        assert [(i["iface"], i["prog_id"], i["problem"]) for i in mine] == [(dev, prog_id, None)]
        assert mine[0]["netns"] == f"net-{os.stat(ns.path).st_ino}"
        [info] = status(ns, dev)
        assert info["prog_id"] == prog_id and info["pinned"] and info["problem"] is None

    # block add in n1 lands in n1's maps only; each namespace's block list defaults to its own interface
    blocked = pair.addr(n1, 1)
    cli(n1, "block", "add", blocked)
    assert json.loads(cli(n1, "block", "list", "--json").stdout)["prefixes"] == {f"{blocked}/32": 0}
    assert json.loads(cli(n2, "block", "list", "--json").stdout) == {"prefixes": {}, "ports": []}
    syn = frame(blocked, pair.addr(n1, 2), 40000, 80)
    with n1.entered(), xdp.XdpProgram.open_pinned(dev) as prog:
        assert prog.test_run(syn) == xdp.XDP_DROP
    with n2.entered(), xdp.XdpProgram.open_pinned(dev) as prog:
        assert prog.test_run(syn) == xdp.XDP_PASS  # passive, no engine: failure mode pass
    assert not pair.p.ping(pair.addr(n1, 2), timeout=0.8)
    assert pair.p.ping(pair.addr(n2, 2))

    # detach in n2 leaves n1's program attached, with its pins, state and block list
    assert "detached XDP program" in cli(n2, "detach", dev).stdout
    assert prog_of(n2, dev) == 0 and not pins2.exists()
    assert prog_of(n1, dev) == id1 and (pins1 / xdp.MAP_CONFIG).exists()
    [info] = status(n1, dev)
    assert info["attached"] and info["problem"] is None and info["state"]["prog_id"] == id1
    hits = json.loads(cli(n1, "block", "list", "--json").stdout)["prefixes"]
    assert list(hits) == [f"{blocked}/32"] and hits[f"{blocked}/32"] >= 2  # the test run and the pings
    assert [i for i in status(n2) if not i["stale"]] == []
    r = cli(n2, "block", "list", check=False)
    assert r.returncode == 1 and r.stderr.strip() == (
        "Error: no mos-xdp program is attached in this network namespace: run mos-xdp attach IFACE first")
    cli(n1, "detach", dev)
    assert prog_of(n1, dev) == 0 and not pins1.exists()


def test_state_of_another_namespace_is_not_the_callers(pair: Pair) -> None:
    """A state file that records another namespace (a dead one whose inode the kernel gave to this one)
    is not this namespace's: not read, reported as a gone namespace's leftover, and removable."""
    n1, dev = pair.n1, pair.dev
    with n1.entered():
        sp = xdp.XdpProgram.state_path(dev)
        mine = netns_cookie()
        assert mine, "the kernel has no SO_NETNS_COOKIE"
        sp.parent.mkdir(parents=True, exist_ok=True)
        sp.write_text(json.dumps({"iface": dev, "prog_id": 1, "netns": netlink.netns_id(),
                                  "netns_cookie": mine + 1000, "owner": "attach"}))
        assert read_state(dev) == {}
    try:
        [info] = status(n1, dev)
        assert info["state"] == {} and "no longer exists" in info["problem"]
        stale = [i for i in status(n1) if i["stale"] and i["netns"] == sp.parent.name]
        assert [(i["iface"], i["reused"], i["state_path"]) for i in stale] == [(dev, True, str(sp))]
        # from another namespace too
        assert [i["iface"] for i in status(pair.p) if i["stale"] and i["netns"] == sp.parent.name] == [dev]
        r = cli(n1, "block", "list", "--iface", dev, check=False)
        assert r.returncode == 1 and "left by a network namespace that no longer exists" in r.stderr
        assert f"removed state {sp}" in cli(pair.p, "detach", "--stale").stdout
        assert not sp.exists()
    finally:
        sp.unlink(missing_ok=True)


def test_stale_pins_of_a_gone_namespace(pair: Pair) -> None:
    n3 = pair.topo.netns("n3")
    dev = pair.dev  # the same name again
    pair.topo.veth(n3, dev, pair.p, f"p3{pair.topo.tag[-6:]}", f"10.205.{S}.2/24", f"10.205.{S}.1/24")
    cli(n3, "attach", dev, "--mode", "native")
    prog_id = prog_of(n3, dev)
    with n3.entered():
        key, pins, sp = netns_key(), xdp.XdpProgram.pin_dir(dev), xdp.XdpProgram.state_path(dev)
    assert pins.is_dir() and sp.is_file()

    def stale_here(ns: Netns) -> List[Dict[str, Any]]:
        return [i for i in status(ns) if i["stale"] and i["netns"] == key]

    assert stale_here(pair.n1) == []  # alive: not stale, and not listed in another namespace's status
    assert [i["iface"] for i in status(n3)] == [dev]
    netlink.netns_delete(n3.name)  # nothing runs in it: it goes, and its veth with it
    # reported from any namespace, the root one too, with the command that removes it
    for ns in (pair.n1, pair.p):
        [entry] = stale_here(ns)
        assert entry["iface"] == dev and entry["pin_dir"] == str(pins) and entry["state_path"] == str(sp)
        assert entry["state"]["prog_id"] == prog_id  # ("reused" when a new namespace took its inode since)
        assert "no longer exists" in entry["problem"] and "mos-xdp detach --stale" in entry["problem"]
    text = subprocess.run([sys.executable, "-m", "mos.cli", "status"], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120).stdout
    assert any(line.startswith("stale: ") and key in line and "mos-xdp detach --stale" in line
               for line in text.splitlines()), text
    assert xdp.prog_name_by_id(prog_id) == xdp.PROG_NAME  # the pins keep it loaded

    out = cli(pair.n1, "detach", "--stale").stdout
    assert f"removed pins {pins}" in out and f"removed state {sp}" in out
    assert not pins.exists() and not sp.exists() and not pins.parent.exists() and not sp.parent.exists()
    assert stale_here(pair.p) == []
    deadline = time.time() + 10
    while xdp.prog_name_by_id(prog_id) is not None and time.time() < deadline:
        time.sleep(0.1)
    assert xdp.prog_name_by_id(prog_id) is None, "the program outlived its pins"
    r = cli(pair.p, "detach", "--stale")
    assert "no pins or state of a gone network namespace" in r.stdout
    r = cli(pair.p, "detach", check=False)
    assert r.returncode == 2 and "give IFACE or --stale" in r.stderr
