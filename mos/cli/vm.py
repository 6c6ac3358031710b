"""``mos-xdp vm ...``: run commands, the test suite, the demo or a shell in a throw-away QEMU guest
(:mod:`mos.vm`, which loads ``vm/mosvm.py``)."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional, Sequence

import click

from ..vm import mosvm


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
    m = mosvm()
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
        cmd = mosvm().project_command("test", args)
    except mosvm().VMError as e:
        raise click.ClickException(str(e)) from None
    _launch(cmd, False, opts)


@vm_group.command("demo", context_settings=_PASSTHROUGH)
@_common(1800.0)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def vm_demo(args: Sequence[str], **opts: Any) -> None:
    """Run the live demo (scripts/demo.sh ARGS) in the guest."""
    try:
        cmd = mosvm().project_command("demo", args)
    except mosvm().VMError as e:
        raise click.ClickException(str(e)) from None
    _launch(cmd, False, opts)


@vm_group.command("shell")
@_common(None)
def vm_shell(**opts: Any) -> None:
    """An interactive bash in the guest; 'exit' powers it off, Ctrl-A x kills it."""
    _launch(["bash", "-l"], True, opts)
