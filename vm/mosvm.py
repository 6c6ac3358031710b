#!/usr/bin/env python3
"""Run a command inside a throw-away QEMU guest that sees this machine's files read-only.

The guest boots Debian's own kernel (``linux-image-amd64``, the one whose modules are in ``/lib/modules``)
through QEMU's PVH entry, with a small busybox initramfs built at run time into ``vm/.cache/``. That
initramfs mounts the host's ``/`` read-only over virtio-9p under a tmpfs overlay (so the guest may write
anywhere, and every write vanishes at power-off), mounts one output folder read-write at the same path
as on the host, and runs the command in the host's current directory. The guest has pairs of virtio-net
interfaces wired back to back (``eth0 <-> eth1``, ``eth2 <-> eth3`` ...), so XDP programs run on a real
driver in native mode, and optionally one more interface connected to the host.

The command's output is streamed live; the host side exits with the command's exit code, or with 124 on a
timeout and 125 when the guest fails (kernel panic, boot failure, QEMU error), each with a one-line reason.

This file is standalone (python3 standard library only): ``vm/mos-vm`` runs it without the ``mos`` package
installed, and ``mos/vm.py`` (``mos-xdp vm ...``) imports it.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
"""The project checkout this file belongs to (or, installed, the package data folder that holds it)."""
IN_CHECKOUT = (REPO / "scripts" / "test.sh").is_file()
# An installed copy lives in site-packages: its cache goes to the user's cache folder, its output to the
# current directory, never into the installed package.
_USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mos-xdp" / "vm"
CACHE = REPO / "vm" / ".cache" if IN_CHECKOUT else _USER_CACHE
DEFAULT_OUT = REPO / "vm" / "out" if IN_CHECKOUT else Path.cwd() / "mos-vm-out"
DEFAULT_TIMEOUT = 600.0

EXIT_TIMEOUT = 124
"""Exit code when the run exceeded its time limit (as timeout(1))."""
EXIT_GUEST_FAILED = 125
"""Exit code when the guest panicked, failed to boot, or QEMU failed."""

BOOT_MODULES = ("virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay")
"""Modules the initramfs loads (with their dependencies) before it can mount the root."""

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOST_NET_HELP = "user (QEMU's NAT, no root), tap:IFNAME (root), or udp:LOCALPORT:REMOTEPORT (frames over UDP)"


class VMError(Exception):
    """A problem the user can fix (missing package, bad option); reported as one line."""


def log(msg: str) -> None:
    """Print a one-line message from the host side to stderr."""
    sys.stderr.write(f"mos-vm: {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------------------------------------
# Host prerequisites: QEMU, the guest kernel, its modules, busybox


def find_qemu() -> str:
    """Return the path of qemu-system-x86_64, or raise VMError saying which package installs it."""
    path = shutil.which("qemu-system-x86_64")
    if not path:
        raise VMError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return path


def _version_key(v: str) -> List[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", v)]


def find_kernel(version: Optional[str] = None) -> Tuple[str, Path]:
    """Pick the guest kernel: ``(version, /boot/vmlinuz-version)`` of the newest Debian kernel whose
    modules are installed (or the one named by ``version``)."""
    cands = []
    for p in Path("/boot").glob("vmlinuz-*"):
        ver = p.name[len("vmlinuz-"):]
        if (Path("/lib/modules") / ver / "modules.dep").is_file():
            cands.append((ver, p))
    if version:
        cands = [c for c in cands if c[0] == version]
        if not cands:
            raise VMError(f"no /boot/vmlinuz-{version} with /lib/modules/{version}: apt-get install "
                          f"linux-image-{version}")
    if not cands:
        raise VMError("no guest kernel (/boot/vmlinuz-* + /lib/modules): apt-get install linux-image-amd64")
    return max(cands, key=lambda c: _version_key(c[0]))


def find_busybox() -> Path:
    """Return a statically linked busybox, or raise VMError naming the package."""
    for p in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if p.is_file():
            with open(p, "rb") as f:
                head = f.read(4096)
            # A static binary has no PT_INTERP, so no "ld-linux" loader path in its first page.
            if head[:4] == b"\x7fELF" and b"ld-linux" not in head:
                return p
    raise VMError("no statically linked busybox: apt-get install busybox-static")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _decompress_at(data: bytes, off: int, kind: str) -> Optional[bytes]:
    """Decompress the stream of ``kind`` starting at ``off``; None if it is not a valid one."""
    try:
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[off:])
        if kind == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data[off:])
        if kind == "gzip":
            return gzip.GzipFile(fileobj=io.BytesIO(data[off:])).read()
        if kind == "bzip2":
            import bz2
            return bz2.BZ2Decompressor().decompress(data[off:])
        if kind == "zstd":
            try:
                import zstandard  # type: ignore[import-not-found]
                return zstandard.ZstdDecompressor().decompressobj().decompress(data[off:])
            except ImportError:
                if not shutil.which("zstd"):
                    return None
                r = subprocess.run(["zstd", "-dc"], input=data[off:], capture_output=True)
                return r.stdout or None
    except (lzma.LZMAError, OSError, EOFError, ValueError):
        return None
    return None


_MAGICS = (("xz", b"\xfd7zXZ\x00"), ("gzip", b"\x1f\x8b\x08"), ("zstd", b"\x28\xb5\x2f\xfd"),
           ("bzip2", b"BZh"), ("lzma", b"\x5d\x00\x00\x00"))


def extract_vmlinux(vmlinuz: Path, dest: Path) -> Path:
    """Extract the uncompressed ELF kernel from a bzImage (the approach of the kernel's
    scripts/extract-vmlinux: find a compression magic, decompress, keep the first ELF image)."""
    if dest.is_file():
        return dest
    data = vmlinuz.read_bytes()
    if data[:4] == b"\x7fELF":
        _atomic_write(dest, data)
        return dest
    hits = sorted((off, kind) for kind, magic in _MAGICS for off in _find_all(data, magic))
    for off, kind in hits:
        out = _decompress_at(data, off, kind)
        if out and out[:4] == b"\x7fELF":
            _atomic_write(dest, out)
            return dest
    raise VMError(f"could not extract an ELF kernel from {vmlinuz}")


def _find_all(data: bytes, magic: bytes, limit: int = 64) -> List[int]:
    out, i = [], data.find(magic)
    while i >= 0 and len(out) < limit:
        out.append(i)
        i = data.find(magic, i + 1)
    return out


def module_closure(kver: str, names: Sequence[str]) -> List[str]:
    """Relative paths (in /lib/modules/kver) of ``names`` and their dependencies, in load order.
    Modules built into the kernel are skipped."""
    base = Path("/lib/modules") / kver
    deps: Dict[str, List[str]] = {}
    by_name: Dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        by_name[_mod_name(mod)] = mod
    builtin = set()
    bfile = base / "modules.builtin"
    if bfile.is_file():
        builtin = {_mod_name(x) for x in bfile.read_text().split()}
    order: List[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)

    for n in names:
        key = n.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise VMError(f"kernel module {n} not found for {kver}: reinstall linux-image-{kver}")
    return order


def _mod_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    """A module's ELF bytes (busybox insmod takes no compressed modules)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        out = _decompress_at(data, 0, "zstd")
        if out is None:
            raise VMError(f"cannot decompress {path}: apt-get install zstd")
        return out
    return data


# --------------------------------------------------------------------------------------------------------
# The initramfs (newc cpio written here: no external tool needed)


class Cpio:
    """A minimal writer of the "newc" cpio format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1000

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self.ino += 1
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{x:08x}" for x in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        self.buf.write(hdr.encode() + nb)
        self.buf.write(b"\0" * ((4 - (110 + len(nb)) % 4) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * ((4 - len(data) % 4) % 4))

    def dir(self, name: str) -> None:
        """Add a directory."""
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        """Close the archive and return its bytes."""
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * ((512 - len(data) % 512) % 512)


# Stage 1, /init in the initramfs (busybox sh, PID 1): load modules, build the overlay root, switch to it.
INIT_SH = r"""#!/bin/sh
export PATH=/bin
fail() {
  echo "mos-vm guest: $*"; echo "@@MOSVM-BOOTFAIL@@"; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger
}
mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
  || fail "mount proc/sys/dev"
for m in $(cat /etc/mosvm-modules); do insmod "/lib/mosvm/$m" || fail "insmod $m"; done
. /mosvm/config
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=$MOSVM_CACHE hostroot /lower \
  || fail "mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir -p /rw/upper /rw/work || fail "tmpfs"
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay"
R=/newroot
mount -o move /proc $R/proc && mount -o move /sys $R/sys && mount -o move /dev $R/dev || fail "move mounts"
mount -t tmpfs -o mode=0755 tmpfs $R/run || fail "tmpfs /run"
mkdir -p $R/run/mosvm "$R$MOSVM_OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none hostout "$R$MOSVM_OUT" \
  || fail "mount the output folder $MOSVM_OUT"
cp /bin/busybox /mosvm/* $R/run/mosvm/ || fail "copy stage 2"
exec switch_root $R /run/mosvm/busybox sh /run/mosvm/stage2
fail "switch_root"
"""

# Stage 2 (busybox sh, PID 1 in the overlay root): mounts, network, run the command, report, power off.
STAGE2_SH = r"""B=/run/mosvm/busybox
export PATH=/run/mosvm/bin
$B mkdir -p /run/mosvm/bin && $B --install -s /run/mosvm/bin
. /run/mosvm/config
mkdir -p /dev/pts /dev/shm /sys/fs/bpf /sys/kernel/debug /sys/kernel/tracing /sys/fs/cgroup
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t bpf -o mode=700 bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ln -sf /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
hostname mosvm
ulimit -l unlimited 2>/dev/null
ip link set lo up
# Name the interfaces by their MAC address (52:54:00:6d:6f:NN -> ethNN), then bring them up.
for d in /sys/class/net/*; do
  n=${d##*/}; a=$(cat $d/address)
  case $a in 52:54:00:6d:6f:*) i=$((0x${a##*:})); [ "$n" = "eth$i" ] || ip link set "$n" name "tmp$i" ;; esac
done
for d in /sys/class/net/tmp*; do [ -e "$d" ] && ip link set "${d##*/}" name "eth${d##*/tmp}"; done
# The wired NICs carry only what the command sends: no IPv6 link-local chatter (sysctl re-enables it).
for d in /sys/class/net/eth*; do
  n=${d##*/}
  [ "$n" = "$MOSVM_HOSTNET_USER" ] || echo 1 > /proc/sys/net/ipv6/conf/$n/disable_ipv6
  ip link set "$n" up
done
if [ -n "$MOSVM_HOSTNET_USER" ]; then
  ip addr add 10.0.2.15/24 dev "$MOSVM_HOSTNET_USER" && ip route add default via 10.0.2.2
  echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
# The command runs under the host's /bin/sh: busybox's sh would prefer its own applets (ip, ping ...).
SH=/bin/sh; [ -x /bin/sh ] || SH=sh
if [ -n "$MOSVM_INTERACTIVE" ]; then
  stty -F /dev/ttyS0 sane rows "$MOSVM_ROWS" cols "$MOSVM_COLS" 2>/dev/null
  printf '%s\n' "$MOSVM_START"
  setsid -c env -i $SH /run/mosvm/cmd </dev/ttyS0 >/dev/ttyS0 2>&1
  rc=$?
else
  stty -F /dev/ttyS0 -onlcr -echo 2>/dev/null
  printf '%s\n' "$MOSVM_START" >/dev/ttyS0
  setsid env -i $SH /run/mosvm/cmd </dev/null >/dev/ttyS0 2>&1
  rc=$?
fi
sync
printf '\n%s%s@@\n' "$MOSVM_MARK" "$rc" >/dev/ttyS0
poweroff -f
sleep 10
echo o > /proc/sysrq-trigger
"""


def base_initramfs(kver: str) -> Path:
    """Build (once, cached in vm/.cache) the initramfs holding busybox, /init and the boot modules."""
    busybox = find_busybox()
    mods = module_closure(kver, BOOT_MODULES)
    base = Path("/lib/modules") / kver
    key = hashlib.sha256("\0".join([INIT_SH, kver, str(busybox.stat().st_mtime), *mods]).encode()).hexdigest()
    dest = CACHE / f"initramfs-{kver}-{key[:12]}.cpio"
    if dest.is_file():
        return dest
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "etc", "lib", "lib/mosvm", "mosvm"):
        c.dir(d)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in ("sh", "mount", "insmod", "mkdir", "cat", "cp", "poweroff", "switch_root", "echo", "sleep"):
        c.symlink(f"bin/{applet}", "busybox")
    names = []
    for m in mods:
        name = _mod_name(m) + ".ko"
        c.file(f"lib/mosvm/{name}", _read_module(base / m))
        names.append(name)
    c.file("etc/mosvm-modules", ("\n".join(names) + "\n").encode())
    c.file("init", INIT_SH.encode(), 0o755)
    _atomic_write(dest, c.finish())
    for old in CACHE.glob(f"initramfs-{kver}-*.cpio"):
        if old != dest:
            old.unlink(missing_ok=True)
    return dest


def run_initramfs(config: Dict[str, str], cmd_script: str) -> bytes:
    """The per-run cpio appended to the base initramfs: stage 2, its settings and the command."""
    c = Cpio()
    c.dir("mosvm")
    lines = [f"{k}={shlex.quote(v)}" for k, v in sorted(config.items())]
    c.file("mosvm/config", ("\n".join(lines) + "\n").encode())
    c.file("mosvm/stage2", STAGE2_SH.encode(), 0o755)
    c.file("mosvm/cmd", cmd_script.encode(), 0o755)
    return c.finish()


def command_script(argv: Sequence[str], cwd: str, env: Dict[str, str]) -> str:
    """The guest-side script that sets the environment, enters ``cwd`` and execs ``argv``."""
    lines = []
    for k, v in env.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    lines.append(f"cd {shlex.quote(cwd)} || exit 126")
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# Accelerator: TCG unless KVM really runs a guest here


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def probe_boot(qemu: str, vmlinux: Path, accel_args: List[str], budget: float) -> bool:
    """Whether the kernel boots with ``accel_args`` as far as its "cannot mount root" panic within
    ``budget`` seconds (there is no initramfs, so that panic is the expected end)."""
    cmd = [qemu, *accel_args, "-M", "pc", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config",
           "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(vmlinux),
           "-append", "console=ttyS0 panic=-1 quiet loglevel=1 root=/dev/nonexistent"]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=budget)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return r.returncode == 0 and b"Kernel panic" in r.stdout


def kvm_works(qemu: str, vmlinux: Path, budget: float = 8.0) -> bool:
    """Whether KVM can boot this kernel: a probe boot without root fs, which must reach the kernel's
    "cannot mount root" panic quickly. The answer is cached per host boot in vm/.cache."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    key = hashlib.sha256(f"{_boot_id()}|{qemu}|{vmlinux}|{os.uname().release}".encode()).hexdigest()[:16]
    cache = CACHE / f"kvm-probe-{key}"
    if cache.is_file():
        return cache.read_text().strip() == "yes"
    ok = probe_boot(qemu, vmlinux, ["-accel", "kvm", "-cpu", "host"], budget)
    for old in CACHE.glob("kvm-probe-*"):
        old.unlink(missing_ok=True)
    _atomic_write(cache, b"yes\n" if ok else b"no\n")
    return ok


# --------------------------------------------------------------------------------------------------------
# Running


def qemu_opt(value: str) -> str:
    """Escape a value for a QEMU -option list (a comma is written twice)."""
    return value.replace(",", ",,")


def _host_net_args(spec: str, index: int) -> List[str]:
    mac = f"52:54:00:6d:6f:{index:02x}"
    if spec == "user":
        nd = "user,id=hostnet"
    elif spec.startswith("tap:") and len(spec) > 4:
        nd = f"tap,id=hostnet,ifname={spec[4:]},script=no,downscript=no"
    elif spec.startswith("udp:"):
        parts = spec.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts[1:]):
            raise VMError(f"bad --host-net {spec!r}: expected udp:LOCALPORT:REMOTEPORT")
        nd = f"socket,id=hostnet,udp=127.0.0.1:{parts[2]},localaddr=127.0.0.1:{parts[1]}"
    else:
        raise VMError(f"bad --host-net {spec!r}: expected {HOST_NET_HELP}")
    return ["-netdev", nd, "-device", f"virtio-net-pci,netdev=hostnet,mac={mac}"]


class _Stream:
    """Forwards guest console bytes to stdout, hiding boot output before the start marker and cutting the
    exit-code marker out of the stream (holding back only bytes that might begin a marker)."""

    def __init__(self, start: bytes, mark: bytes, show_boot: bool, out: io.BufferedWriter) -> None:
        self.start, self.mark, self.show_boot, self.out = start, mark, show_boot, out
        self.started = False
        self.pending = b""
        self.boot_log = bytearray()
        self.shown = 0
        self.out_closed = False
        self.tail = bytearray()
        self.rc: Optional[int] = None

    def _emit(self, data: bytes) -> None:
        if data and not self.out_closed:
            try:
                self.out.write(data)
                self.out.flush()
            except BrokenPipeError:
                self.out_closed = True  # e.g. piped into head: keep running, stop printing

    def feed(self, data: bytes) -> None:
        """Take the next chunk of console output."""
        self.tail += data
        del self.tail[:-65536]
        if not self.started:
            self.boot_log += data
            i = self.boot_log.find(self.start)
            if self.show_boot:
                # Show the boot log as it comes, except what may be (the beginning of) the start marker.
                upto = i if i >= 0 else max(self.shown, len(self.boot_log) - len(self.start))
                self._emit(bytes(self.boot_log[self.shown:upto]))
                self.shown = upto
            if i < 0:
                return
            self.started = True
            data = bytes(self.boot_log[i + len(self.start):])
            for nl in (b"\r\n", b"\n"):
                if data.startswith(nl):
                    data = data[len(nl):]
                    break
        if self.rc is not None:
            return
        buf = self.pending + data
        i = buf.find(self.mark)
        if i >= 0:
            j = buf.find(b"@@", i + len(self.mark))
            if j < 0:
                self.pending = buf
                return
            body = buf[:i]
            # The guest printed "\n" before the marker: drop it, it is not the command's.
            for nl in (b"\r\n", b"\n"):
                if body.endswith(nl):
                    body = body[: -len(nl)]
                    break
            self._emit(body)
            try:
                self.rc = int(buf[i + len(self.mark):j])
            except ValueError:
                self.rc = EXIT_GUEST_FAILED
            self.pending = b""
            return
        hold = 0
        for k in range(min(len(self.mark) + 2, len(buf)), 0, -1):
            if (b"\r\n" + self.mark).startswith(buf[-k:]) or (b"\n" + self.mark).startswith(buf[-k:]):
                hold = k
                break
        self._emit(buf[: len(buf) - hold])
        self.pending = buf[len(buf) - hold:]

    def flush(self) -> None:
        """Emit anything held back (at the end of the run)."""
        self._emit(self.pending)
        self.pending = b""


def _panic_line(text: bytes) -> Optional[str]:
    m = re.search(rb"Kernel panic - not syncing:[^\r\n]*", text)
    return m.group(0).decode(errors="replace").strip() if m else None


def run_in_vm(
    argv: Sequence[str],
    *,
    timeout: Optional[float] = DEFAULT_TIMEOUT,
    out_dir: Optional[str] = None,
    interactive: bool = False,
    cwd: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    mem: str = "2G",
    cpus: Optional[int] = None,
    wires: int = 1,
    host_net: Optional[str] = None,
    accel: str = "auto",
    kernel: Optional[str] = None,
    verbose: bool = False,
    cache_mode: str = "loose",
) -> int:
    """Boot the guest, run ``argv`` in it (in ``cwd``, default the current directory), return its exit code.

    ``timeout`` (seconds, None for no limit) bounds the whole run; ``out_dir`` (default vm/out) is the one
    host folder the guest can write, at the same path. ``wires`` pairs of virtio-net interfaces are wired back
    to back (eth0<->eth1, eth2<->eth3 ...); ``host_net`` adds one more interface connected to the host.
    ``interactive`` connects the terminal to the command (for a shell). ``cache_mode`` is the 9p cache of
    the read-only root ("loose" is fast; files the host changes during the run may look stale). Returns 124
    on a timeout and 125 when the guest or QEMU fails, after printing one line saying why. Raises VMError
    for a fixable problem.
    """
    if os.environ.get("MOS_VM") == "1":
        raise VMError("already inside the mos-xdp VM (nested guests are not supported)")
    if not argv:
        raise VMError("no command given")
    if wires < 1:
        raise VMError("--wires must be at least 1")
    if accel not in ("auto", "tcg", "kvm"):
        raise VMError(f"bad accelerator {accel!r}: auto, tcg or kvm")
    host_net_args = _host_net_args(host_net, 2 * wires) if host_net else []
    qemu = find_qemu()
    kver, vmlinuz = find_kernel(kernel)
    CACHE.mkdir(parents=True, exist_ok=True)
    vmlinux = extract_vmlinux(vmlinuz, CACHE / f"vmlinux-{kver}")
    initrd_base = base_initramfs(kver)

    out = Path(out_dir or DEFAULT_OUT).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VMError(f"cannot create the output folder {out}: {e.strerror}") from None
    if out == Path("/"):
        raise VMError("the output folder cannot be /")
    workdir = Path(cwd or os.getcwd()).resolve()

    use_kvm = accel == "kvm" or (accel == "auto" and kvm_works(qemu, vmlinux))
    if cpus is None:
        cpus = min(2, os.cpu_count() or 1) if use_kvm else 1

    nonce = secrets.token_hex(8)
    start = f"@@MOSVM-START-{nonce}@@".encode()
    mark = f"@@MOSVM-EXIT-{nonce}:".encode()
    n_if = 2 * wires
    config = {
        "MOSVM_CACHE": cache_mode,
        "MOSVM_OUT": str(out),
        "MOSVM_START": start.decode(),
        "MOSVM_MARK": mark.decode(),
        "MOSVM_INTERACTIVE": "1" if interactive else "",
        "MOSVM_HOSTNET_USER": f"eth{n_if}" if host_net == "user" else "",
    }
    if interactive:
        size = shutil.get_terminal_size((80, 24))
        config.update(MOSVM_ROWS=str(size.lines), MOSVM_COLS=str(size.columns))
    term = os.environ.get("TERM", "dumb") if (interactive or sys.stdout.isatty()) else "dumb"
    genv = {"PATH": GUEST_PATH, "HOME": "/root", "TERM": term, "LANG": "C.UTF-8", "MOS_VM": "1",
            "MOS_VM_OUT": str(out), "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash"}
    genv.update(env or {})

    qargs = [qemu, "-M", "pc", "-m", mem, "-smp", str(cpus), "-nodefaults", "-no-user-config",
             "-display", "none", "-no-reboot", "-kernel", str(vmlinux)]
    qargs += ["-accel", "kvm", "-cpu", "host"] if use_kvm else ["-accel", "tcg", "-cpu", "max"]
    cmdline = "console=ttyS0 panic=-1 rdinit=/init i8042.noaux i8042.nokbd random.trust_cpu=on"
    cmdline += "" if verbose else " quiet loglevel=1"
    qargs += ["-append", cmdline]
    qargs += ["-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
              "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
              "-fsdev", f"local,id=hostout,path={qemu_opt(str(out))},security_model=none,multidevs=remap",
              "-device", "virtio-9p-pci,fsdev=hostout,mount_tag=hostout"]
    for w in range(wires):
        for side in (0, 1):
            i = 2 * w + side
            qargs += ["-netdev", f"hubport,id=wire{i},hubid={w}",
                      "-device", f"virtio-net-pci,netdev=wire{i},mac=52:54:00:6d:6f:{i:02x}"]
    qargs += host_net_args
    if interactive:
        qargs += ["-chardev", "stdio,id=con,mux=on,signal=off", "-serial", "chardev:con",
                  "-mon", "chardev=con,mode=readline"]
    else:
        qargs += ["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"]

    fd, initrd = tempfile.mkstemp(dir=str(CACHE), prefix="run-", suffix=".cpio")
    with os.fdopen(fd, "wb") as f:
        with open(initrd_base, "rb") as b:
            shutil.copyfileobj(b, f)
        f.write(run_initramfs(config, command_script(argv, str(workdir), genv)))
    qargs += ["-initrd", initrd]
    if verbose:
        log(f"{'KVM' if use_kvm else 'TCG'}, kernel {kver}, {cpus} vCPU, {mem} RAM, out {out}")
        log(" ".join(shlex.quote(a) for a in qargs))

    try:
        return _supervise(qargs, interactive, timeout, start, mark, verbose)
    finally:
        os.unlink(initrd)


def _supervise(qargs: List[str], interactive: bool, timeout: Optional[float], start: bytes, mark: bytes,
               verbose: bool) -> int:
    saved_tty = None
    if interactive and sys.stdin.isatty():
        saved_tty = termios.tcgetattr(sys.stdin.fileno())
        log("interactive shell: type 'exit' to power off (Ctrl-A x kills the guest)")
    errlog = tempfile.TemporaryFile()
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(qargs, stdin=None if interactive else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=errlog,
                                start_new_session=not interactive)
    except OSError as e:
        raise VMError(f"cannot start QEMU: {e}") from None
    stream = _Stream(start, mark, verbose, sys.stdout.buffer)
    fdo = proc.stdout.fileno()  # type: ignore[union-attr]
    fl = fcntl.fcntl(fdo, fcntl.F_GETFL)
    fcntl.fcntl(fdo, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    timed_out = False
    interrupted = False
    marked_at: Optional[float] = None
    try:
        while True:
            now = time.monotonic()
            if timeout is not None and now - t0 > timeout:
                timed_out = True
                break
            if marked_at is not None and now - marked_at > 10:
                break  # the command finished; the guest is just slow to power off
            wait = 0.5 if timeout is None else max(0.0, min(0.5, timeout - (now - t0)))
            try:
                r, _, _ = select.select([fdo], [], [], wait)
            except InterruptedError:
                continue
            if r:
                try:
                    data = os.read(fdo, 65536)
                except OSError as e:
                    if e.errno == errno.EAGAIN:
                        continue
                    raise
                if not data:
                    break
                stream.feed(data)
                if stream.rc is not None and marked_at is None:
                    marked_at = time.monotonic()
            elif proc.poll() is not None:
                # QEMU exited: drain what is left in the pipe.
                try:
                    while True:
                        data = os.read(fdo, 65536)
                        if not data:
                            break
                        stream.feed(data)
                except OSError:
                    pass
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if proc.poll() is None:
            _kill(proc)
        if saved_tty is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved_tty)
    stream.flush()
    elapsed = time.monotonic() - t0
    if verbose:
        log(f"guest ran for {elapsed:.1f} s")
    if stream.rc is not None:
        return stream.rc
    if interrupted:
        log("interrupted; guest killed")
        return 130
    if timed_out:
        log(f"timed out after {timeout:g} s; guest killed (hung or still running; raise --timeout if needed)")
        return EXIT_TIMEOUT
    errlog.seek(0)
    err = errlog.read().decode(errors="replace").strip()
    panic = _panic_line(bytes(stream.tail))
    if panic:
        where = "while running the command" if stream.started else "while booting"
        log(f"guest kernel panic {where}: {panic}")
        return EXIT_GUEST_FAILED
    if not stream.started:
        if not verbose:
            sys.stdout.buffer.write(bytes(stream.boot_log[-4000:]))
            sys.stdout.flush()
        if b"@@MOSVM-BOOTFAIL@@" in stream.boot_log:
            log("guest failed to boot (see its last messages above)")
        else:
            detail = err.splitlines()[-1] if err else f"QEMU exited with status {proc.returncode}"
            log(f"guest failed to boot: {detail}")
        return EXIT_GUEST_FAILED
    if err and proc.returncode:
        log(f"QEMU failed: {err.splitlines()[-1]}")
    elif interactive:
        log("guest stopped before the shell exited (Ctrl-A x, or it crashed)")
    else:
        log("guest stopped without reporting the command's exit code (crashed or powered off)")
    return EXIT_GUEST_FAILED


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.terminate()
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------------------------------------
# Command line of vm/mos-vm (mos-xdp vm ... offers the same through click)


def _add_common(p: argparse.ArgumentParser, timeout: Optional[float]) -> None:
    p.add_argument("--timeout", type=float, default=timeout,
                   help=f"seconds before the guest is killed (0: none; default {timeout or 'none'})")
    p.add_argument("--out", metavar="DIR",
                   help=f"host folder the guest may write, same path (default {DEFAULT_OUT})")
    p.add_argument("--mem", default="2G", help="guest RAM (default 2G)")
    p.add_argument("--cpus", type=int, help="vCPUs (default 1 under TCG, 2 under KVM)")
    p.add_argument("--wires", type=int, default=1, help="pairs of back-to-back virtio-net NICs (default 1)")
    p.add_argument("--host-net", metavar="SPEC", help=f"one more NIC to the host: {HOST_NET_HELP}")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                   help="auto uses KVM only if a probe boot works (default auto)")
    p.add_argument("--kernel", metavar="VERSION", help="guest kernel version (default newest in /boot)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment variable")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the kernel's boot log and QEMU's command")


def parse_env(items: Sequence[str]) -> Dict[str, str]:
    """Turn K=V strings into a dict, raising VMError on a malformed one."""
    env = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise VMError(f"bad --env {it!r}: expected NAME=VALUE")
        env[k] = v
    return env


def project_command(what: str, args: Sequence[str]) -> List[str]:
    """The guest command of ``vm test`` / ``vm demo``: the project's script with ``args``."""
    script = {"test": "scripts/test.sh", "demo": "scripts/demo.sh"}[what]
    if not (REPO / script).is_file():
        raise VMError(f"{script} not found: `vm {what}` runs the checkout's {script}; use `vm run -- ...` "
                      "with an installed package")
    return ["bash", str(REPO / script), *args]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of vm/mos-vm: ``run -- CMD...``, ``test [ARGS]``, ``demo [ARGS]``, ``shell``."""
    ap = argparse.ArgumentParser(
        prog="mos-vm", description="Run commands in a throw-away QEMU guest that sees this machine's files "
        "read-only, with virtio-net interfaces wired back to back.")
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("run", help="run COMMAND in the guest and exit with its exit code")
    _add_common(p, DEFAULT_TIMEOUT)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command (after --)")
    for name, hlp in (("test", "run scripts/test.sh in the guest"),
                      ("demo", "run scripts/demo.sh in the guest")):
        p = sub.add_parser(name, help=hlp)
        _add_common(p, 1800.0)
        p.add_argument("command", nargs=argparse.REMAINDER, help="arguments for the script")
    p = sub.add_parser("shell", help="an interactive shell in the guest")
    _add_common(p, None)
    a = ap.parse_args(argv)
    cmd = list(getattr(a, "command", []))
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        if a.what in ("test", "demo"):
            cmd = project_command(a.what, cmd)
        elif a.what == "shell":
            cmd = ["bash", "-l"]
        elif not cmd:
            raise VMError("no command: mos-vm run -- COMMAND [ARGS...]")
        return run_in_vm(cmd, timeout=a.timeout or None, out_dir=a.out, interactive=a.what == "shell",
                         env=parse_env(a.env), mem=a.mem, cpus=a.cpus, wires=a.wires, host_net=a.host_net,
                         accel=a.accel, kernel=a.kernel, verbose=a.verbose)
    except VMError as e:
        log(str(e))
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
