"""What XDP control needs from the host, and where it keeps things: the BPF source, the bpffs pins and
the state files; root, bpffs, bcc and the kernel headers, each checked with a one-line error.

Pins and state files are kept per network namespace and interface, as interface names are only unique
within a namespace: ``PIN_ROOT/net-<inode>/<ifname>/`` and ``RUN_DIR/net-<inode>/<ifname>.json``, where
the inode is that of the *calling thread's* namespace (:func:`mos.net.netlink.netns_id`). Every directory
of these trees is root's and 0700 (:func:`private_dir`): pins (0600) and state files (0600) tell and
change what the program does, so no other user reaches them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import MosError
from ..net import netlink
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


PRIVATE_MODE = 0o700
"""The mode of every directory mos-xdp makes (the roots, each namespace's, each interface's pin dir)."""
NETNS_PREFIX = "net-"
_SO_NETNS_COOKIE = 71  # <asm-generic/socket.h> (Linux 5.14); Python's socket module does not name it


def netns_key(netns: Optional[int] = None) -> str:
    """The directory, under :data:`PIN_ROOT` and :data:`RUN_DIR`, of the network namespace whose inode is
    ``netns`` (by default the calling thread's)."""
    ino = netlink.netns_id() if netns is None else netns
    if not ino:
        raise XdpError("cannot tell this thread's network namespace (/proc/thread-self/ns/net unreadable)")
    return f"{NETNS_PREFIX}{ino}"


def netns_of_key(name: str) -> Optional[int]:
    """The namespace inode a directory name made by :func:`netns_key` stands for (None for another name)."""
    rest = name[len(NETNS_PREFIX):]
    return int(rest) if name.startswith(NETNS_PREFIX) and rest.isdigit() else None


def netns_cookie() -> int:
    """The calling thread's network namespace cookie (SO_NETNS_COOKIE; 0 on kernels without it).

    Unlike the inode, which the kernel gives again to a later namespace, a cookie is never reused: the
    state file records it, so that a namespace does not take a dead one's leftovers for its own.
    """
    try:
        # a socket belongs to the namespace of the thread that makes it
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, _SO_NETNS_COOKIE, 8), sys.byteorder)
    except OSError:
        return 0


def pin_dir(iface: str, netns: Optional[int] = None) -> Path:
    """Where the maps and the program attached to ``iface`` are pinned (the interface of the calling
    thread's namespace, or of the namespace whose inode is ``netns``)."""
    return PIN_ROOT / netns_key(netns) / iface


def state_path(iface: str, netns: Optional[int] = None) -> Path:
    """The JSON state file of the program on ``iface`` (of the calling thread's namespace, or ``netns``)."""
    return RUN_DIR / netns_key(netns) / f"{iface}.json"


def private_dir(path: Path, root: Path) -> Path:
    """Makes ``root`` and every directory from it down to ``path`` root's only: created 0700 whatever the
    umask, tightened to 0700 when they exist looser (as an older version left them). XdpError when one is
    not a directory or belongs to another user (it was not made by mos-xdp: nothing is put in it)."""
    parts = path.relative_to(root).parts
    root.parent.mkdir(parents=True, exist_ok=True)
    for d in [root, *(root.joinpath(*parts[:i + 1]) for i in range(len(parts)))]:
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, PRIVATE_MODE)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise XdpError(f"{d} is not a directory: remove it")
        if st.st_uid != os.geteuid():
            raise XdpError(f"{d} belongs to uid {st.st_uid}, not to mos-xdp's user: remove it")
        if stat.S_IMODE(st.st_mode) != PRIVATE_MODE:
            os.chmod(d, PRIVATE_MODE)
    return path


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
    """Makes sure ``root`` lies on a bpffs, mounting one at /sys/fs/bpf when nothing is mounted there, and
    that it and the calling thread's namespace directory in it exist, private (:func:`private_dir`)."""
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
        private_dir(root / netns_key(), root)
    except OSError as e:
        raise XdpError(f"bpffs unavailable: cannot create {e.filename or root} ({e.strerror})") from e


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
