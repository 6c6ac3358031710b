"""The live half of the CLI: ``mos-xdp run APP --iface`` (:func:`run_app_live`) and ``mos-xdp
attach|detach|status|block``, the XDP side of the live path.

Every error a user can meet is one line and a non-zero exit (click.ClickException).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, List, Optional, TypeVar

import click

from mos import xdp
from mos.xdp.abi import FAIL_MODES
from mos.xdp.env import netns_key
from mos.xdp.program import default_on_failure
from mos.xdp.state import foreign_state, remove_stale
from mos.xdp.status import stale_status, traffic_without_engine

F = TypeVar("F", bound=Callable[..., Any])


def run_app_live(mon: Any, iface: str, peer: Optional[str], workers: int, ring: int,
                 on_failure: Optional[str] = None) -> None:
    """``run --iface``: the monitor an app initialised, on live traffic (returns in each worker process)."""
    try:
        from .. import live
    except ImportError:
        raise click.ClickException("the live path is not available in this build") from None
    live.run_live(mon, iface, peer=peer, workers=workers, ring=ring, on_failure=on_failure)


def _one_line_errors(fn: F) -> F:
    """Turns XdpError and OSError (bpf syscalls, files) into click's one-line error and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except xdp.XdpError as e:
            raise click.ClickException(str(e)) from e
        except PermissionError as e:
            raise click.ClickException(f"permission denied ({e.strerror}): run mos-xdp as root") from e
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from e

    return wrapper  # type: ignore[return-value]


def _protocols(value: str) -> int:
    bits = 0
    for name in filter(None, (p.strip().lower() for p in value.split(","))):
        if name not in ("tcp", "udp"):
            raise click.BadParameter(f"unknown protocol {name!r}: use tcp, udp or tcp,udp")
        bits |= xdp.PROTO_TCP if name == "tcp" else xdp.PROTO_UDP
    return bits


@click.command()
@click.argument("iface")
@click.option("--peer", metavar="IFACE2", help="Inline mode: the other interface of the pair.")
@click.option("--mode", type=click.Choice(["auto", "native", "generic"]), default="auto", show_default=True,
              help="XDP mode: native (driver), generic (skb), auto (native, else generic with a warning).")
@click.option("--queues", type=click.IntRange(1, xdp.MAX_QUEUES), default=1, show_default=True,
              help="Receive queues the engine binds AF_XDP sockets to.")
@click.option("--workers", type=click.IntRange(1, xdp.MAX_WORKERS), default=1, show_default=True,
              help="Workers (AF_XDP sockets) per queue; the symmetric flow hash picks one.")
@click.option("--protocols", default="tcp,udp", show_default=True, help="Monitored protocols.")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              help="Monitor only flows with this port (repeatable); default: every port.")
@click.option("--bypass-idle", type=click.FloatRange(0), default=300.0, show_default=True,
              help="Seconds after which an idle bypass entry is ignored (0: never).")
@click.option("--on-failure", type=click.Choice(FAIL_MODES), default=None,
              help="What monitored traffic meets while no engine (mos-xdp run) serves it. Default: "
                   f"{default_on_failure(True)} inline (--peer), {default_on_failure(False)} passive.")
@click.option("--debug", is_flag=True, help="Record the last steering decision in the mos_debug map.")
@_one_line_errors
def attach(iface: str, peer: Optional[str], mode: str, queues: int, workers: int, protocols: str,
           ports: List[int], bypass_idle: float, on_failure: Optional[str], debug: bool) -> None:
    """Load the XDP program, attach it to IFACE and pin its maps (it stays after this command exits)."""
    xdp.require_root("mos-xdp attach")
    if peer == iface:
        raise click.BadParameter("the peer must be another interface", param_hint="--peer")
    prog = xdp.XdpProgram.load(iface, peer=peer, workers=workers, queues=queues,
                               protocols=_protocols(protocols), monitor_ports=list(ports),
                               bypass_idle_s=bypass_idle, debug=debug, on_failure=on_failure)
    with prog:
        used = prog.attach(mode)
        for w in prog.warnings:
            click.echo(f"warning: {w}", err=True)
        where = f"{iface} and {peer} (inline)" if peer else iface
        click.echo(f"attached xdp_mos (prog {prog.state['prog_id']}, {used}) to {where}; "
                   f"maps pinned in {prog.state['pin_dir']}; until mos-xdp run serves it, "
                   f"{traffic_without_engine(prog.state.get('on_failure'))}")


@click.command()
@click.argument("iface", required=False)
@click.option("--stale", is_flag=True,
              help="Instead of IFACE: remove the pins and state of network namespaces that no longer exist.")
@_one_line_errors
def detach(iface: Optional[str], stale: bool) -> None:
    """Detach mos-xdp from IFACE (and its peer) and remove its pins; also cleans up after a crash."""
    xdp.require_root("mos-xdp detach")
    if bool(iface) == stale:
        raise click.UsageError("give IFACE or --stale (not both)")
    done = remove_stale() if stale else xdp.detach(iface or "")
    for line in done:
        click.echo(line)
    if not done:
        click.echo("no pins or state of a gone network namespace" if stale else f"nothing of mos-xdp on {iface}")


def _format_status(info: dict) -> List[str]:
    st = info["state"]
    name = info["iface"]
    if info["attached"]:
        who = "mos-xdp" if info["ours"] else f"XDP program {info['prog_name'] or '?'}"
        head = f"{name}: {who} attached (prog {info['prog_id']}, {info['mode']})"
    else:
        head = f"{name}: no XDP program attached"
    if st:
        kind = f"inline with {st['peer']}" if st.get("peer") else "passive"
        head += f", {kind}, workers {st.get('workers')}, queues {st.get('queues')}"
        if st.get("owner"):
            head += f", made by mos-xdp {st['owner']}"
    lines = [head]
    if info["pinned"]:
        lines.append(f"  maps pinned in {xdp.XdpProgram.pin_dir(name)}")
    if info["attached"] and info["ours"] and info["on_failure"]:
        engine = info["engine"]
        if engine and engine["alive"]:
            lines.append(f"  engine: run pid {engine['pid']}")
        else:
            lines.append(f"  no engine: {traffic_without_engine(info['on_failure'])}")
    c = info["counters"]
    if c:
        verdicts = ("rx", "pass", "drop", "redirect")
        lines.append("  " + "  ".join(f"{k}={c[k]}" for k in verdicts))
        lines.append("  " + "  ".join(f"{k}={v}" for k, v in c.items() if k not in verdicts))
    if info["problem"]:
        lines.append(f"  problem: {info['problem']}")
    return lines


@click.command()
@click.argument("iface", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_one_line_errors
def status(iface: Optional[str], as_json: bool) -> None:
    """Show mos-xdp on IFACE or every interface of this network namespace: program, mode, counters, engine,
    leftovers of a crashed run; without IFACE, also the pins of network namespaces that are gone."""
    xdp.require_root("mos-xdp status")
    infos = xdp.status(iface)
    stale = []
    if iface is None:
        try:
            stale = stale_status()
        except xdp.XdpError as e:  # the caller's own status stands without it
            click.echo(f"warning: stale pins not looked for: {e}", err=True)
    if as_json:
        click.echo(json.dumps(infos + stale, indent=1))
        return
    if not infos:
        click.echo("no XDP program attached and no mos-xdp pins in this network namespace")
    for info in infos:
        for line in _format_status(info):
            click.echo(line)
    for entry in stale:
        click.echo(f"stale: {entry['problem']}")


def _pick_iface(iface: Optional[str]) -> str:
    """IFACE, or the only interface of the caller's namespace with mos-xdp pins; XdpError when its pins
    are a gone namespace's."""
    if not iface:
        ns_pins = xdp.PIN_ROOT / netns_key()
        pinned = sorted(p.name for p in ns_pins.iterdir() if xdp.XdpProgram.is_pinned(p.name)) \
            if ns_pins.is_dir() else []
        if not pinned:
            raise xdp.XdpError("no mos-xdp program is attached in this network namespace: "
                               "run mos-xdp attach IFACE first")
        if len(pinned) > 1:
            raise xdp.XdpError(f"several interfaces have mos-xdp ({', '.join(pinned)}): pass --iface")
        iface = pinned[0]
    if foreign_state(iface):
        raise xdp.XdpError(f"the pins of {iface} were left by a network namespace that no longer exists: "
                           f"run mos-xdp detach {iface}")
    return iface


def _is_port(target: str) -> bool:
    return target.isdigit()


iface_option = click.option("--iface", help="Interface mos-xdp is attached to (default: the only one).")


@click.group()
def block() -> None:
    """Drop IP prefixes or TCP/UDP ports in XDP."""


@block.command("add")
@click.argument("targets", nargs=-1, required=True, metavar="PREFIX_OR_PORT...")
@iface_option
@_one_line_errors
def block_add(targets: List[str], iface: Optional[str]) -> None:
    """Block prefixes (10.0.0.0/8, 2001:db8::/32, an address) or ports (80)."""
    xdp.require_root("mos-xdp block")
    with xdp.XdpProgram.open_pinned(_pick_iface(iface)) as prog:
        for t in targets:
            if _is_port(t):
                prog.block_port(int(t))
                click.echo(f"blocked port {int(t)}")
            else:
                click.echo(f"blocked {prog.block(t)}")


@block.command("del")
@click.argument("targets", nargs=-1, required=True, metavar="PREFIX_OR_PORT...")
@iface_option
@_one_line_errors
def block_del(targets: List[str], iface: Optional[str]) -> None:
    """Unblock prefixes or ports."""
    xdp.require_root("mos-xdp block")
    with xdp.XdpProgram.open_pinned(_pick_iface(iface)) as prog:
        for t in targets:
            ok = prog.unblock_port(int(t)) if _is_port(t) else prog.unblock(t)
            what = f"port {int(t)}" if _is_port(t) else t
            if not ok:
                raise xdp.XdpError(f"{what} was not blocked")
            click.echo(f"unblocked {what}")


@block.command("list")
@iface_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_one_line_errors
def block_list(iface: Optional[str], as_json: bool) -> None:
    """List blocked prefixes (with the packets they dropped) and ports."""
    xdp.require_root("mos-xdp block")
    with xdp.XdpProgram.open_pinned(_pick_iface(iface)) as prog:
        blocked = prog.blocked()
    if as_json:
        click.echo(json.dumps(blocked, indent=1))
        return
    for prefix, hits in blocked["prefixes"].items():
        click.echo(f"{prefix}\t{hits} packets")
    for port in blocked["ports"]:
        click.echo(f"port {port}")
    if not blocked["prefixes"] and not blocked["ports"]:
        click.echo("nothing blocked")
