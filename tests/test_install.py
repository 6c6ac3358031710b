"""A regular (non-editable) `pip install .` gives a working package: the engine, the CLI and the package data.

The install goes into a throw-away venv that borrows the project venv's packages (cffi, click, setuptools,
wheel) through a .pth line, without build isolation or an index: no network, and only the engine's
compilation to wait for. The source is a copy of the tracked files, so the checkout gets no build/ or
egg-info, and everything the test runs starts outside the checkout, so nothing can come from it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from pcaps import basic_close, ipv6_ext_header

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _copy_tree(dst: Path) -> None:
    """The files of the checkout an sdist would hold: tracked and new ones, not build output."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, check=True, timeout=30).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ directory of a venv with mos-xdp installed from a copy of the tree (not editable)."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    _copy_tree(src)
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    # the project venv's site-packages, appended to sys.path (its own .pth files, such as the editable
    # install's path to the checkout, are not processed from there)
    (Path(purelib) / "mos-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", str(src)], capture_output=True, text=True, timeout=600,
                       cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(src)  # the installed copy must stand alone
    return venv / "bin"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOS_XDP_BPF_DIR")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_installed_package_is_the_copy_and_has_its_data(installed, tmp_path):
    code = ("import json, mos, mos.resources as r, mos._engine as e; "
            "print(json.dumps([mos.__file__, e.__file__, str(r.data_dir('bpf')), str(r.data_dir('vm')), "
            "sorted(p.name for p in r.data_dir('bpf').iterdir())]))")
    r = subprocess.run([str(installed / "python"), "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    mos_file, engine_file, bpf_dir, vm_dir, bpf_files = json.loads(r.stdout)
    venv = str(installed.parent)
    for p in (mos_file, engine_file, bpf_dir, vm_dir):
        assert p.startswith(venv), (p, venv)
    assert bpf_dir.endswith("mos/_data/bpf") and vm_dir.endswith("mos/_data/vm")
    assert "xdp_mos.c" in bpf_files
    # every source and header of the checkout's bpf/ ships (a glob, not a list)
    assert sorted(p.name for p in (REPO / "bpf").iterdir() if p.suffix in (".c", ".h")) == \
        sorted(f for f in bpf_files if f.endswith((".c", ".h")))
    assert (Path(vm_dir) / "mosvm.py").is_file()


def test_installed_cli_streams_and_run(installed, tmp_path):
    pcap = tmp_path / "t.pcap"
    built = basic_close()
    built.write(pcap)
    out = tmp_path / "out"
    r = subprocess.run([str(installed / "mos-xdp"), "streams", str(pcap), "-o", str(out), "--no-progress"],
                       capture_output=True, timeout=120, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    assert (out / "1.c2s").read_bytes() == built.c2s
    assert (out / "1.s2c").read_bytes() == built.s2c
    table = subprocess.run([str(installed / "mos-xdp"), "streams", str(pcap), "--no-progress"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env())
    assert table.returncode == 0, table.stderr
    assert "1 connections" in table.stdout and "TIME_WAIT" in table.stdout

    app = tmp_path / "count.py"
    app.write_text("from mos import Event\n_n = [0]\n"
                   "def count(conn, ev):\n    _n[0] += 1\n"
                   "def init(monitor):\n    monitor.on(Event.CONN_NEW_DATA, count)\n"
                   "def finish(monitor):\n    print('events', _n[0])\n")
    v6 = ipv6_ext_header().write(tmp_path / "v6.pcap")
    r = subprocess.run([str(installed / "mos-xdp"), "run", str(app), "--pcap", str(v6), "--no-progress"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) > 0


def test_installed_cli_live_and_vm_commands_load(installed, tmp_path):
    for cmd in (["attach", "--help"], ["status", "--help"], ["block", "--help"], ["vm", "run", "--help"]):
        r = subprocess.run([str(installed / "mos-xdp"), *cmd], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=_env())
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage:" in r.stdout
    # the demo left the package
    r = subprocess.run([str(installed / "mos-xdp"), "demo"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=_env())
    assert r.returncode != 0 and "No such command 'demo'" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="loading an XDP program needs root")
def test_installed_package_compiles_and_runs_its_xdp_program(installed, tmp_path):
    """The live path of an installed copy: bcc compiles the shipped xdp_mos.c (from the package data, not
    a checkout) and the program runs on a frame (BPF_PROG_TEST_RUN; nothing is attached)."""
    code = ("import json; from mos import xdp; p = xdp.XdpProgram.load('lo'); "
            "arp = bytes(12) + b'\\x08\\x06' + bytes(28); "
            "print(json.dumps([str(xdp.BPF_DIR), p.test_run(arp), p.stats()['pass_not_ip']])); p.close()")
    r = subprocess.run([str(installed / "python"), "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    bpf_dir, action, passed = json.loads(r.stdout.strip().splitlines()[-1])
    assert bpf_dir.startswith(str(installed.parent)) and bpf_dir.endswith("mos/_data/bpf")
    assert action == 2 and passed == 1  # XDP_PASS, counted as not IP
