"""The ``mos-xdp`` command line."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import click

from .events import Policy

POLICIES = [p.value for p in Policy]


# Commands that live in their own modules, imported only when used (so `streams` starts fast).
_LAZY = {
    "attach": ("mos.live_cli", "attach"),
    "detach": ("mos.live_cli", "detach"),
    "status": ("mos.live_cli", "status"),
    "block": ("mos.live_cli", "block"),
    "vm": ("mos.vm", "vm_group"),
}


class _Group(click.Group):
    """Lazily loaded subcommands; the stack's own errors become one line and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(_LAZY))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in _LAZY:
            modname, attr = _LAZY[cmd_name]
            try:
                cmd = getattr(importlib.import_module(modname), attr)
            except ImportError as exc:
                raise click.ClickException(f"{cmd_name}: not available ({exc})") from None
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("mos-xdp: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # the reader went away (`mos-xdp streams x.pcap | head`): stop quietly, as other tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as exc:
            from . import monitor

            if isinstance(exc, (monitor.MosError, OSError)):
                raise click.ClickException(str(exc)) from None
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mos-xdp")
def main() -> None:
    """mos-xdp: both TCP endpoints' state, both byte streams and mOS-style events for Python middleboxes."""


def _monitor(policy: str, vlan: bool, pickup: bool, strict: bool = False, **kw: Any) -> Any:
    from .monitor import Monitor

    return Monitor(policy=policy, vlan_in_key=vlan, pickup=pickup, strict=strict, **kw)


def _progress(enabled: bool, path: str) -> Tuple[Any, Optional[Callable[[int, int], None]]]:
    size = os.path.getsize(path) if os.path.exists(path) else 0
    if not enabled or not sys.stderr.isatty() or size == 0:
        return None, None
    bar = click.progressbar(length=size, label=os.path.basename(path), file=sys.stderr)
    bar.__enter__()
    last = [0]

    def update(pos: int, total: int) -> None:
        bar.update(max(0, pos - last[0]))
        last[0] = pos

    return bar, update


def load_app(path: str) -> Any:
    """Import an app file; it must define ``init(monitor)`` (and may define ``finish(monitor)``)."""
    import importlib.util
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise click.ClickException(f"{path}: no such app file")
    spec = importlib.util.spec_from_file_location(f"mos_app_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"{path}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(p.parent.resolve()))
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        raise click.ClickException(f"{path}: the app failed to import: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(mod, "init", None)):
        raise click.ClickException(f"{path}: an app must define init(monitor)")
    return mod


@main.command()
@click.argument("app", metavar="APP.py")
@click.option("--pcap", "pcap", type=click.Path(dir_okay=False), help="Run over this capture file.")
@click.option("--iface", help="Run live on this interface (see `mos-xdp attach`).")
@click.option("--peer", help="Inline mode: the other interface.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--ring", type=click.IntRange(64, 65536), default=4096, show_default=True,
              help="Live: AF_XDP ring descriptors per socket (a power of two); each queue gets 2 x ring "
                   "frames of 4 KiB.")
@click.option("--policy", type=click.Choice(POLICIES), default="first", show_default=True,
              help="Overlap policy.")
@click.option("--no-vlan", is_flag=True, help="VLAN ids are not part of a connection's key.")
@click.option("--no-pickup", is_flag=True, help="Ignore connections already in progress.")
@click.option("--strict", is_flag=True, help="Stop at the first exception in a handler.")
@click.option("--progress/--no-progress", default=True, help="Progress bar (on a terminal).")
@click.option("--stats", "show_stats", is_flag=True, help="Print the engine's counters at the end.")
def run(app: str, pcap: Optional[str], iface: Optional[str], peer: Optional[str], workers: int, ring: int,
        policy: str, no_vlan: bool, no_pickup: bool, strict: bool, progress: bool, show_stats: bool) -> None:
    """Run an app's handlers over a capture (--pcap) or live traffic (--iface)."""
    if bool(pcap) == bool(iface):
        raise click.UsageError("give exactly one of --pcap FILE or --iface IFACE")
    mod = load_app(app)
    mon = _monitor(policy, not no_vlan, not no_pickup, strict)
    try:
        mod.init(mon)
    except Exception as exc:
        raise click.ClickException(f"{app}: init(monitor) failed: {type(exc).__name__}: {exc}") from None
    if iface:
        try:
            from . import live
        except ImportError:
            raise click.ClickException("the live path is not available in this build") from None
        live.run_live(mon, iface, peer=peer, workers=workers, ring=ring)
    else:
        assert pcap is not None
        bar, update = _progress(progress, pcap)
        try:
            mon.run_pcap(pcap, progress=update)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    fin = getattr(mod, "finish", None)
    if callable(fin):
        fin(mon)
    st = mon.stats()
    if show_stats:
        _print_stats(st)
    if mon.handler_errors:
        click.echo(f"mos-xdp: {mon.handler_errors} handler error(s), see above", err=True)
        sys.exit(1)


def _print_stats(st: Dict[str, int]) -> None:
    from .monitor import accounted

    click.echo("counters:", err=True)
    for k, v in st.items():
        if v:
            click.echo(f"  {k:32} {v}", err=True)
    click.echo(f"  {'(accounted packets)':32} {accounted(st)} of {st['packets']}", err=True)


@main.command()
@click.argument("pcap", metavar="FILE")
@click.option("-o", "outdir", type=click.Path(file_okay=False), help="Write <n>.c2s, <n>.s2c and index.jsonl here.")
@click.option("--policy", type=click.Choice(POLICIES), default="first", show_default=True,
              help="Overlap policy.")
@click.option("--no-vlan", is_flag=True, help="VLAN ids are not part of a connection's key.")
@click.option("--no-pickup", is_flag=True, help="Ignore connections already in progress.")
@click.option("--max-conns", type=click.IntRange(1, 1 << 28), default=1 << 20, show_default=True)
@click.option("--progress/--no-progress", default=True, help="Progress bar (on a terminal).")
@click.option("--stats", "show_stats", is_flag=True, help="Print the engine's counters at the end.")
def streams(pcap: str, outdir: Optional[str], policy: str, no_vlan: bool, no_pickup: bool, max_conns: int,
            progress: bool, show_stats: bool) -> None:
    """Reassemble every connection of a capture: files per direction and an index (-o), or a table."""
    from .streams import run_streams, stream_table

    bar, update = _progress(progress, pcap)
    opts: Dict[str, Any] = dict(policy=policy, vlan_in_key=not no_vlan, pickup=not no_pickup, max_conns=max_conns,
                                progress=update)
    try:
        if outdir is None:
            rows, totals, st = stream_table(pcap, limit=TABLE_ROWS, **opts)
        else:
            rows, st = run_streams(pcap, outdir, **opts)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if outdir is None:
        _print_table(rows, totals, st)
    else:
        click.echo(f"{len(rows)} connections, {sum(r['c2s_bytes'] + r['s2c_bytes'] for r in rows)} bytes "
                   f"-> {outdir}/", err=True)
    if show_stats:
        _print_stats(st)


TABLE_ROWS = 50  # connections shown by `streams` without -o (the totals count them all)


def _print_table(rows: List[Dict[str, Any]], totals: Dict[str, int], st: Dict[str, int]) -> None:
    hdr = f"{'id':>5} {'client':>28} {'server':>28} {'c2s':>10} {'s2c':>10} {'lost':>8} " \
          f"{'client state':>12} {'server state':>12} {'end':>8}"
    click.echo(hdr)
    for r in rows:
        lost = r["c2s_gap_bytes"] + r["s2c_gap_bytes"]
        click.echo(f"{r['id']:>5} {r['client']:>28} {r['server']:>28} {r['c2s_bytes']:>10} {r['s2c_bytes']:>10} "
                   f"{lost:>8} {r['client_state']:>12} {r['server_state']:>12} {r['end']:>8}")
    if totals["connections"] > len(rows):
        click.echo(f"... {totals['connections'] - len(rows)} more connections")
    click.echo(f"{totals['connections']} connections, {totals['stream_bytes']} stream bytes "
               f"({totals['gap_bytes']} lost in holes), {st['packets']} packets "
               f"({st['conn_packets']} in connections, {st['orphan_not_tcp']} not TCP, "
               f"{sum(v for k, v in st.items() if k.startswith('malformed_'))} malformed)")


@main.command()
@click.option("--pcap", "offline", is_flag=True,
              help="The offline demo: a capture built here, through the apps (no root needed).")
@click.option("-o", "outdir", type=click.Path(file_okay=False), default=None,
              help="Offline demo (implies --pcap): keep the capture and the streams here.")
@click.option("--timeout", type=click.FloatRange(5, 3600), default=None,
              help="Live demo: stop (and clean up) after so many seconds [default: 60; 180 in `mos-xdp vm`].")
def demo(offline: bool, outdir: Optional[str], timeout: Optional[float]) -> None:
    """Live: a client, mos-xdp inline and a server in network namespaces, real traffic through the apps.

    Falls back to the offline demo (--pcap: a capture with reordering, loss, retransmission, pick-up, RST
    and IPv6) when the live demo cannot run here (not root, no bcc, kernel headers or XDP).
    """
    if not offline and outdir is None:
        from .livedemo import CannotRun, run_demo

        try:
            # the guest of `mos-xdp vm` runs code about 6x slower (bcc alone takes ~30 s there)
            default = 180.0 if os.environ.get("MOS_VM") == "1" else 60.0
            code = run_demo(timeout=timeout or default, echo=click.echo)
        except CannotRun as exc:
            click.echo(f"mos-xdp demo: the live demo cannot run here ({exc}); showing the offline demo "
                       "(mos-xdp demo --pcap)", err=True)
        else:
            sys.exit(code)
    _offline_demo(outdir)


def _offline_demo(outdir: Optional[str]) -> None:
    import tempfile
    from pathlib import Path

    from .demo import build_demo_pcap
    from .streams import run_streams

    tmp = None
    if outdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mos-demo-")
        outdir = tmp.name
    pcap = str(build_demo_pcap(Path(outdir) / "demo.pcap"))
    apps = Path(__file__).resolve().parent.parent / "apps"
    for app in ("midstat.py", "http_log.py"):
        click.secho(f"== mos-xdp run apps/{app} --pcap {pcap}", bold=True)
        mod = load_app(str(apps / app))
        mon = _monitor("first", True, True)
        mod.init(mon)
        mon.run_pcap(pcap)
        mod.finish(mon)
    click.secho(f"== mos-xdp streams {pcap} -o {outdir}/streams", bold=True)
    rows, st = run_streams(pcap, f"{outdir}/streams")
    for r in rows:
        for d in ("c2s", "s2c"):
            r[f"{d}_gap_bytes"] = sum(g[1] for g in r[f"{d}_gaps"])
    totals = {"connections": len(rows), "stream_bytes": sum(r["c2s_bytes"] + r["s2c_bytes"] for r in rows),
              "gap_bytes": st["reasm_bytes_gap"]}
    _print_table(rows[:TABLE_ROWS], totals, st)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
