"""mos-xdp's pins and state are root's: 0700 directories and 0600 files, whatever the umask and whatever an
older version left; every command run as an unprivileged user (uid 65534) reads and changes nothing and says
so in one line.

The pins and state of this test go to their own roots (MOS_XDP_PIN_ROOT, MOS_XDP_RUN_DIR), made loose
beforehand as an older version left them, so that tightening is seen.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from mos.net import netlink
from tests.netns import Netns, Topology, reap_stale, require_root

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


class Box:
    """A namespace ``m`` with two interfaces (``dev`` attached, ``spare`` not) and this test's roots."""

    def __init__(self, m: Netns, dev: str, spare: str, pin_root: Path, run_dir: Path, key: str) -> None:
        self.m, self.dev, self.spare, self.pin_root, self.run_dir, self.key = m, dev, spare, pin_root, run_dir, key
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), MOS_XDP_PIN_ROOT=str(pin_root),
                        MOS_XDP_RUN_DIR=str(run_dir))

    @property
    def pins(self) -> Path:
        return self.pin_root / self.key / self.dev

    @property
    def state(self) -> Path:
        return self.run_dir / self.key / f"{self.dev}.json"

    def run(self, *argv: str, user: bool = False, umask: str = "") -> subprocess.CompletedProcess:
        """``argv`` in ``m``, as root or as uid 65534, from / (which every user may enter)."""
        cmd = list(argv)
        if umask:
            cmd = ["sh", "-c", f'umask {umask} && exec "$0" "$@"', *cmd]
        if user:
            cmd = NOBODY + cmd
        return subprocess.run(self.m.cmd(*cmd), capture_output=True, text=True, env=self.env, timeout=120, cwd="/")

    def cli(self, *args: str, user: bool = False, umask: str = "") -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "mos.cli", *args, user=user, umask=umask)


@pytest.fixture(scope="module")
def box() -> Iterator[Box]:
    require_root()
    reap_stale()
    with Topology() as topo:
        m, p = topo.netns("m"), topo.netns("p")
        tag = topo.tag[-6:]
        dev, spare = f"pv{tag}", f"ps{tag}"
        topo.veth(m, dev, p, f"pw{tag}")
        topo.veth(m, spare, p, f"pt{tag}")
        key = f"net-{os.stat(m.path).st_ino}"
        b = Box(m, dev, spare, Path(f"/sys/fs/bpf/mosx-priv-{topo.tag}"), Path(f"/run/mosx-priv-{topo.tag}"), key)
        # as an older version (or a loose umask) left them
        for d, mode in ((b.pin_root, 0o755), (b.pin_root / key, 0o755), (b.run_dir, 0o755), (b.run_dir / key, 0o777)):
            d.mkdir(exist_ok=True)
            d.chmod(mode)

        def _clean() -> None:
            b.cli("detach", dev)
            for d in (b.pin_root / key, b.pin_root, b.run_dir / key, b.run_dir):
                if d.is_dir():
                    d.rmdir()

        topo.on_close(_clean)
        r = b.cli("attach", dev, "--mode", "generic", umask="000")
        assert r.returncode == 0, r.stderr
        r = b.cli("block", "add", "192.0.2.0/24", "--iface", dev)
        assert r.returncode == 0, r.stderr
        yield b


def _mode(p: Path) -> Tuple[int, int]:
    st = p.lstat()
    return stat.S_IMODE(st.st_mode), st.st_uid


def test_state_and_pins_are_roots_only(box: Box) -> None:
    """Made 0700/0600 under umask 000, and the loose directories found tightened."""
    dirs = [box.pin_root, box.pin_root / box.key, box.pins, box.run_dir, box.run_dir / box.key]
    assert {str(d): _mode(d) for d in dirs} == {str(d): (0o700, 0) for d in dirs}
    assert _mode(box.state) == (0o600, 0)
    pins = sorted(box.pins.iterdir())
    assert len(pins) > 5 and {p.name: _mode(p) for p in pins} == {p.name: (0o600, 0) for p in pins}
    assert json.loads(box.state.read_text())["netns"] == os.stat(box.m.path).st_ino


def _snapshot(box: Box) -> Dict[str, Any]:
    """What the commands must not change: files, modes, contents of the state files, XDP programs, block list."""
    files = {}
    for root in (box.pin_root, box.run_dir):
        for p in sorted(root.rglob("*")):
            st = p.lstat()
            content = p.read_bytes() if p.is_file() and root == box.run_dir else None
            files[str(p)] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns, content)
    progs = {lk.ifname: lk.prog_id for lk in netlink.links(netns=box.m.name)}
    r = box.cli("block", "list", "--json", "--iface", box.dev)
    assert r.returncode == 0, r.stderr
    return {"files": files, "progs": progs, "blocked": json.loads(r.stdout)}


def test_unprivileged_user_reads_and_changes_nothing(box: Box) -> None:
    r = box.run(sys.executable, "-c", "import mos.cli.live", user=True)
    assert r.returncode == 0, (
        f"uid 65534 cannot run mos-xdp from {ROOT} with {sys.executable} "
        f"({(r.stderr.strip().splitlines() or ['?'])[-1]}): the checkout and its venv must be readable by every "
        "user (clone under a 0755 path) for this test to run")
    before = _snapshot(box)
    assert before["progs"][box.dev] and before["blocked"]["prefixes"] == {"192.0.2.0/24": 0}
    app = str(ROOT / "apps" / "midstat.py")  # readable by uid 65534, unlike pytest's temporary directory
    dev = box.dev
    cases: List[Tuple[List[str], str]] = [
        (["status"], "mos-xdp status"),
        (["status", "--json"], "mos-xdp status"),
        (["status", dev], "mos-xdp status"),
        (["detach", dev], "mos-xdp detach"),
        (["detach", "--stale"], "mos-xdp detach"),
        (["block", "add", "198.51.100.0/24", "--iface", dev], "mos-xdp block"),
        (["block", "add", "80"], "mos-xdp block"),
        (["block", "del", "192.0.2.0/24", "--iface", dev], "mos-xdp block"),
        (["block", "list"], "mos-xdp block"),
        (["block", "list", "--json", "--iface", dev], "mos-xdp block"),
        (["attach", box.spare, "--mode", "generic"], "mos-xdp attach"),
        (["run", app, "--iface", box.spare], "mos-xdp run --iface"),
        (["run", app, "--iface", dev], "mos-xdp run --iface"),
    ]
    for args, what in cases:
        r = box.cli(*args, user=True)
        assert (r.returncode, r.stdout, r.stderr.splitlines()) == (
            1, "", [f"Error: {what} needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo"]), args
    # nor can it read the state file or list the pins, with any other tool
    for argv in (["cat", str(box.state)], ["ls", str(box.pins)], ["ls", str(box.pin_root)], ["ls", str(box.run_dir)]):
        r = box.run(*argv, user=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr and r.stdout == "", (argv, r.stdout, r.stderr)
    assert _snapshot(box) == before
