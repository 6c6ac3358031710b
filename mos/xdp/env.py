"""What XDP control needs from the host, and where it keeps things: the BPF source, the bpffs pins and
the state files; root, bpffs, bcc and the kernel headers, each checked with a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import MosError
from ..resources import data_dir
from .errors import XdpError


def _bpf_dir() -> Path:
    override = os.environ.get("MOS_XDP_BPF_DIR")
    if override:
        return Path(override)
    try:
        return data_dir("bpf")
    except MosError as e:
        raise XdpError(str(e)) from None


BPF_DIR = _bpf_dir()
"""Where ``xdp_mos.c`` and its headers are found (the package data, see :mod:`mos.resources`)."""
PIN_ROOT = Path(os.environ.get("MOS_XDP_PIN_ROOT", "/sys/fs/bpf/mos-xdp"))
RUN_DIR = Path(os.environ.get("MOS_XDP_RUN_DIR", "/run/mos-xdp"))
INSTALL_HINT = "apt-get install python3-bpfcc linux-headers-amd64 (then scripts/setup.sh links the headers)"


def pin_dir(iface: str) -> Path:
    """Where the maps and the program attached to ``iface`` are pinned."""
    return PIN_ROOT / iface


def state_path(iface: str) -> Path:
    """The JSON state file of the program on ``iface``."""
    return RUN_DIR / f"{iface}.json"


def require_root(what: str = "this") -> None:
    """XdpError unless running as root."""
    if os.geteuid() != 0:
        raise XdpError(f"{what} needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")


def _is_bpffs(path: Path) -> bool:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(path) and fields[2] == "bpf":
                return True
    except OSError:
        pass
    return False


def _private_mount_ns() -> bool:
    """Whether this process runs in another mount namespace than its parent, as under ``ip netns exec``
    (which unshares one, mounts a fresh /sys and execs the command): mounts made here die with it."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


def ensure_bpffs(root: Path = PIN_ROOT) -> None:
    """Makes sure ``root`` lies on a bpffs, mounting one at /sys/fs/bpf when nothing is mounted there."""
    mnt = Path("/sys/fs/bpf")
    if root.is_relative_to(mnt) and not _is_bpffs(mnt):
        r = subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0 and not _is_bpffs(mnt):
            why = r.stderr.strip() or "mount failed"
            raise XdpError(f"bpffs unavailable: cannot mount it at {mnt} ({why})")
        if _private_mount_ns():
            sys.stderr.write(
                f"mos-xdp: warning: bpffs was mounted at {mnt} in this process's own mount namespace (ip netns "
                "exec gives each command one): the pins go away when it exits, and other mos-xdp commands will not "
                "find them; enter the network namespace with `nsenter --net=/run/netns/NAME` instead\n")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XdpError(f"bpffs unavailable: cannot create {root} ({e.strerror})") from e


def import_bcc() -> Any:
    """The bcc module (Debian's python3-bpfcc); XdpError with the install hint when it is missing."""
    try:
        import bcc  # noqa: PLC0415 - optional, heavy
    except ImportError as e:
        import importlib.util  # noqa: PLC0415

        debian = Path("/usr/lib/python3/dist-packages/bcc")
        if importlib.util.find_spec("bcc") is None and debian.is_dir():
            # installed, but this Python (a venv) does not see Debian's dist-packages
            raise XdpError(f"bcc (python3-bpfcc) is installed but {sys.executable} cannot import it: link it "
                           f"into this environment (ln -s {debian} {_site_packages()}/bcc; scripts/setup.sh "
                           "does) or make the venv with --system-site-packages") from e
        raise XdpError(f"bcc is not installed (import bcc failed): {INSTALL_HINT}") from e
    return bcc


def _site_packages() -> str:
    import sysconfig  # noqa: PLC0415

    return sysconfig.get_paths()["purelib"]


def require_kernel_headers(release: Optional[str] = None) -> None:
    """XdpError when bcc cannot find the headers of the running kernel (or of ``release``)."""
    build = Path("/lib/modules") / (release or os.uname().release) / "build"
    if not (build / "include").is_dir():
        raise XdpError(f"kernel headers missing ({build}): {INSTALL_HINT}")
