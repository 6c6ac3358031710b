"""``mos-xdp vm ...``: run commands, the test suite, the demo or a shell in a throw-away QEMU guest.

The guest boots Debian's kernel with the host's ``/`` mounted read-only under a tmpfs overlay (so the project
checkout is at the same path and nothing the guest does reaches the host's files), one output folder shared
read-write, and pairs of virtio-net interfaces wired back to back (``eth0 <-> eth1``) for native XDP.

The logic lives in ``vm/mosvm.py`` (standard library only, also run by ``vm/mos-vm`` without this package);
this module loads it from the checkout and wraps it in a click group. It imports no other ``mos`` module, so
it works before the C engine is built.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Sequence

import click

_MOSVM_PATH = Path(__file__).resolve().parent.parent / "vm" / "mosvm.py"


def _mosvm() -> ModuleType:
    """Load vm/mosvm.py from the checkout (once), or fail with one clear line."""
    mod = sys.modules.get("mosvm")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == _MOSVM_PATH:
        return mod
    if not _MOSVM_PATH.is_file():
        raise click.ClickException(f"{_MOSVM_PATH} not found: 'mos-xdp vm' needs the project checkout "
                                   "(install with pip install -e .)")
    spec = importlib.util.spec_from_file_location("mosvm", _MOSVM_PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mosvm"] = mod
    spec.loader.exec_module(mod)
    return mod


def run_in_vm(argv: Sequence[str], timeout: Optional[float] = 600.0, out_dir: Optional[str] = None,
              interactive: bool = False, **kwargs: Any) -> int:
    """Boot the guest, run ``argv`` there (in the current directory, same path) and return its exit code.

    ``timeout`` in seconds (None: no limit); ``out_dir`` is the host folder the guest may write
    (default ``vm/out``). Further keyword arguments: ``cwd``, ``env`` (dict), ``mem`` ("2G"), ``cpus``,
    ``wires`` (pairs of back-to-back NICs), ``host_net`` ("user", "tap:IF", "udp:LPORT:RPORT"), ``accel``
    ("auto", "tcg", "kvm"), ``kernel`` (version), ``verbose``. Returns 124 on a timeout, 125 when the guest
    fails (panic, boot failure), after one line on stderr saying why; raises ``mosvm.VMError`` for a fixable
    problem.
    """
    return int(_mosvm().run_in_vm(list(argv), timeout=timeout, out_dir=out_dir, interactive=interactive,
                                  **kwargs))


def _common(default_timeout: Optional[float]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        opts = [
            click.option("--timeout", type=float, default=default_timeout, show_default=True,
                         help="Seconds before the guest is killed (0: no limit)."),
            click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                         help="Host folder the guest may write, at the same path (default vm/out)."),
            click.option("--mem", default="2G", show_default=True, help="Guest RAM."),
            click.option("--cpus", type=int, default=None, help="vCPUs (default 1 under TCG, 2 under KVM)."),
            click.option("--wires", type=int, default=1, show_default=True,
                         help="Pairs of virtio-net NICs wired back to back (eth0<->eth1, eth2<->eth3 ...)."),
            click.option("--host-net", default=None, metavar="SPEC",
                         help="One more NIC to the host: user, tap:IFNAME or udp:LOCALPORT:REMOTEPORT."),
            click.option("--accel", type=click.Choice(["auto", "tcg", "kvm"]), default="auto",
                         show_default=True,
                         help="auto uses KVM only when a probe boot works."),
            click.option("--kernel", default=None, metavar="VERSION",
                         help="Guest kernel (default newest in /boot)."),
            click.option("--env", "env", multiple=True, metavar="K=V", help="Extra environment variable."),
            click.option("-v", "--verbose", is_flag=True,
                         help="Show the kernel's boot log and QEMU's command."),
        ]
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def _launch(argv: Sequence[str], interactive: bool, opts: Dict[str, Any]) -> None:
    m = _mosvm()
    timeout = opts.pop("timeout")
    try:
        env = m.parse_env(opts.pop("env"))
        rc = m.run_in_vm(list(argv), timeout=timeout or None, interactive=interactive, env=env, **opts)
    except m.VMError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        click.echo("mos-vm: interrupted", err=True)
        rc = 130
    sys.exit(rc)


_PASSTHROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@click.group("vm")
def vm_group() -> None:
    """Run commands in a throw-away QEMU guest (host files read-only, wired virtio-net NICs)."""


@vm_group.command("run", context_settings=_PASSTHROUGH)
@_common(600.0)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def vm_run(command: Sequence[str], **opts: Any) -> None:
    """Run COMMAND in the guest (mos-xdp vm run -- COMMAND...) and exit with its exit code."""
    _launch(command, False, opts)


@vm_group.command("test", context_settings=_PASSTHROUGH)
@_common(1800.0)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def vm_test(args: Sequence[str], **opts: Any) -> None:
    """Run the project's test suite (scripts/test.sh ARGS) in the guest."""
    try:
        cmd = _mosvm().project_command("test", args)
    except _mosvm().VMError as e:
        raise click.ClickException(str(e)) from None
    _launch(cmd, False, opts)


@vm_group.command("demo", context_settings=_PASSTHROUGH)
@_common(1800.0)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def vm_demo(args: Sequence[str], **opts: Any) -> None:
    """Run the live demo (scripts/demo.sh ARGS) in the guest."""
    try:
        cmd = _mosvm().project_command("demo", args)
    except _mosvm().VMError as e:
        raise click.ClickException(str(e)) from None
    _launch(cmd, False, opts)


@vm_group.command("shell")
@_common(None)
def vm_shell(**opts: Any) -> None:
    """An interactive bash in the guest; 'exit' powers it off, Ctrl-A x kills it."""
    _launch(["bash", "-l"], True, opts)
