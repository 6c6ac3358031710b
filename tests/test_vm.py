"""Tests of vm/ (``mos-xdp vm``, ``vm/mos-vm``): the QEMU guest's exit codes, isolation, native XDP on its
wired virtio-net NICs, timeouts and panics. Tests marked ``vm`` boot the guest (about 4 s each under TCG);
the others check the host-side pieces without booting."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
MOS_VM = REPO / "vm" / "mos-vm"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


mosvm = _load("mosvm", REPO / "vm" / "mosvm.py")


def _can_boot() -> str:
    """Why the guest cannot boot here ('' if it can)."""
    if os.environ.get("MOS_VM") == "1":
        return "already inside the VM"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86 not installed"
    try:
        mosvm.find_kernel()
        mosvm.find_busybox()
    except mosvm.VMError as e:
        return str(e)
    return ""


needs_vm = pytest.mark.skipif(bool(_can_boot()), reason=_can_boot() or "ok")


def mos_vm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run vm/mos-vm (the script, without the package) and capture its output."""
    return subprocess.run([str(MOS_VM), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------------------- booting


@pytest.mark.vm
@needs_vm
def test_exit_code_output_and_isolation(tmp_path: Path) -> None:
    """One boot: output streams back without boot noise, the exit code comes through, writes to host paths
    stay in the guest, the output folder is shared, the checkout is at the same path, NICs are named."""
    canary = tmp_path / "canary.txt"
    canary.write_text("host\n")
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        echo "hello from $(hostname)"
        echo guest > {canary}
        echo "guest sees: $(cat {canary})"
        rm -f {REPO / 'pyproject.toml'} && echo removed
        echo result > "$MOS_VM_OUT/result.txt"
        test -f {REPO / 'vm' / 'mosvm.py'} && echo checkout-visible
        echo "cwd=$(pwd)"
        echo "nics=$(ls /sys/class/net | tr '\\n' ' ')"
        mount | grep -q ' /sys/fs/bpf type bpf' && echo bpffs
        exit 3
    """)
    r = mos_vm("run", "--out", str(out), "--wires", "2", "--host-net", "user", "--", "sh", "-c", script)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "hello from mosvm" in r.stdout
    assert "guest sees: guest" in r.stdout and "removed" in r.stdout
    assert "checkout-visible" in r.stdout and "bpffs" in r.stdout
    assert f"cwd={os.getcwd()}" in r.stdout
    assert "nics=eth0 eth1 eth2 eth3 eth4 lo" in r.stdout
    assert "Linux version" not in r.stdout and "MOSVM" not in r.stdout
    assert canary.read_text() == "host\n"
    assert (REPO / "pyproject.toml").is_file()
    assert (out / "result.txt").read_text() == "result\n"


XDP_CHECK = r'''
import ctypes, re, subprocess
from bcc import BPF

b = BPF(text="""
BPF_ARRAY(counts, u64, 1);
int count_pkts(struct xdp_md *ctx) {
    int k = 0;
    u64 *v = counts.lookup(&k);
    if (v) __sync_fetch_and_add(v, 1);
    return XDP_PASS;
}
""")
fn = b.load_func("count_pkts", BPF.XDP)
def sh(c):
    subprocess.run(c, shell=True, check=True)
# eth0 (root namespace) <-> eth1 (namespace "peer"): addresses that exist only inside the guest.
sh("ip netns add peer && ip link set eth1 netns peer")
sh("ip addr add 192.0.2.1/24 dev eth0 && ip link set eth0 up")
sh("ip -n peer addr add 192.0.2.2/24 dev eth1 && ip -n peer link set eth1 up")
b.attach_xdp("eth0", fn, 1 << 2)  # XDP_FLAGS_DRV_MODE: native, in virtio_net
mode = subprocess.run(["ip", "-d", "link", "show", "eth0"], capture_output=True, text=True).stdout
print("native" if re.search(r"\bxdp\b", mode) and "xdpgeneric" not in mode else "not-native: " + mode)
sh("busybox ping -c 3 -i 0.2 -W 2 192.0.2.2")
print("count", b["counts"][ctypes.c_int(0)].value)
b.remove_xdp("eth0", 1 << 2)
'''


@pytest.mark.vm
@needs_vm
def test_native_xdp_on_wired_virtio_nics(tmp_path: Path) -> None:
    """An XDP program attached in native (driver) mode on eth0 counts the packets ping exchanges with eth1."""
    prog = tmp_path / "xdp_check.py"
    prog.write_text(XDP_CHECK)
    r = mos_vm("run", "--out", str(tmp_path / "out"), "--", "/usr/bin/python3", str(prog))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "native" in r.stdout.split(), r.stdout
    m = re.search(r"^count (\d+)$", r.stdout, re.M)
    assert m and int(m.group(1)) >= 3, r.stdout


@pytest.mark.vm
@needs_vm
def test_timeout_kills_a_hung_guest(tmp_path: Path) -> None:
    """A command that never ends is killed at --timeout, with one clear line and exit code 124."""
    r = mos_vm("run", "--timeout", "12", "--out", str(tmp_path / "out"), "--",
               "sh", "-c", "echo started; sleep 1000")
    assert r.returncode == mosvm.EXIT_TIMEOUT, r.stdout + r.stderr
    assert "started" in r.stdout
    assert "timed out after 12 s" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.vm
@needs_vm
def test_kernel_panic_is_reported(tmp_path: Path) -> None:
    """A guest kernel panic ends the run with a message naming it and exit code 125."""
    r = mos_vm("run", "--out", str(tmp_path / "out"), "--", "sh", "-c", "echo c > /proc/sysrq-trigger")
    assert r.returncode == mosvm.EXIT_GUEST_FAILED, r.stdout + r.stderr
    assert "guest kernel panic" in r.stderr and "sysrq triggered crash" in r.stderr


@pytest.mark.vm
@needs_vm
def test_accelerator_probe_recognises_a_working_boot() -> None:
    """The KVM probe's test (a boot that reaches the no-root panic) passes with TCG, which always works, so a
    failing KVM probe means KVM itself failed. The run then falls back to TCG."""
    kver, vmlinuz = mosvm.find_kernel()
    mosvm.CACHE.mkdir(parents=True, exist_ok=True)
    vmlinux = mosvm.extract_vmlinux(vmlinuz, mosvm.CACHE / f"vmlinux-{kver}")
    qemu = mosvm.find_qemu()
    assert mosvm.probe_boot(qemu, vmlinux, ["-accel", "tcg", "-cpu", "max"], 60)
    assert isinstance(mosvm.kvm_works(qemu, vmlinux), bool)


# ------------------------------------------------------------------------------------------ without booting


def test_stream_hides_boot_and_cuts_the_exit_marker() -> None:
    """Console parsing: boot output hidden, the command's bytes passed through, the exit marker parsed even
    when split across reads."""
    out = io.BytesIO()
    s = mosvm._Stream(b"@@S@@", b"@@E-x:", False, out)  # type: ignore[arg-type]
    data = b"[ 1.0] boot noise\n@@S@@\nline one\nno newline at end\n@@E-x:42@@\n"
    for i in range(0, len(data), 3):
        s.feed(data[i:i + 3])
    s.flush()
    assert s.rc == 42
    assert out.getvalue() == b"line one\nno newline at end"


def test_cpio_and_module_closure() -> None:
    """The initramfs writer emits newc entries; the boot modules resolve with dependencies first."""
    c = mosvm.Cpio()
    c.file("init", b"#!/bin/sh\n", 0o755)
    data = c.finish()
    assert data.startswith(b"070701") and b"TRAILER!!!" in data and len(data) % 512 == 0
    try:
        kver, _ = mosvm.find_kernel()
    except mosvm.VMError:
        pytest.skip("no guest kernel installed")
    mods = [mosvm._mod_name(m) for m in mosvm.module_closure(kver, mosvm.BOOT_MODULES)]
    for m in ("virtio_net", "9p", "overlay"):
        assert m in mods
    assert mods.index("virtio") < mods.index("virtio_net") and mods.index("9pnet") < mods.index("9p")


def test_cli_errors_are_one_line() -> None:
    """User mistakes give one line and a non-zero exit, no traceback (script and click group)."""
    r = mos_vm("run", "--host-net", "bogus", "--", "true")
    assert r.returncode != 0 and "bad --host-net" in r.stderr and "Traceback" not in r.stderr
    r = mos_vm("run")
    assert r.returncode != 0 and "no command" in r.stderr

    click_testing = pytest.importorskip("click.testing")
    from mos.cli import vm
    res = click_testing.CliRunner().invoke(vm.vm_group, ["run", "--host-net", "bogus", "--", "true"])
    assert res.exit_code != 0 and "bad --host-net" in res.output
    res = click_testing.CliRunner().invoke(vm.vm_group, ["--help"])
    assert res.exit_code == 0 and all(c in res.output for c in ("run", "test", "demo", "shell"))
