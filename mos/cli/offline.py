"""``mos-xdp run APP --pcap FILE`` and ``mos-xdp streams FILE``: apps and reassembly over captures.

``run`` also takes ``--iface`` (live traffic); that half is :func:`mos.cli.live.run_app_live`.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

import click

from ..abi import lib
from ..app_args import wants_help
from .common import App, checksum_notice, print_stats, progress_bar
from .monitor_options import monitor_kwargs, monitor_options

_LIVE_ONLY = ("peer", "workers", "ring", "on_failure")


@click.command(epilog="App arguments: --arg KEY=VALUE (repeatable), or everything after --, such as "
                      "`mos-xdp run apps/firewall.py --pcap f.pcap -- --pattern /etc/passwd`; "
                      "--app-help (or -- --help) lists what an app takes.")
@click.argument("app", metavar="APP.py")
@click.argument("app_argv", nargs=-1, type=click.UNPROCESSED, metavar="[-- APP-ARGS...]")
@click.option("--pcap", "pcap", type=click.Path(dir_okay=False), help="Run over this capture file.")
@click.option("--iface", help="Run live on this interface (see `mos-xdp attach`).")
@click.option("--peer", help="Inline mode: the other interface.")
@click.option("--workers", type=click.IntRange(1, lib.MOS_MAX_WORKERS), default=1, show_default=True)
@click.option("--ring", type=click.IntRange(64, 65536), default=4096, show_default=True,
              help="Live: AF_XDP ring descriptors per socket (a power of two); each queue gets 2 x ring "
                   "frames of 4 KiB.")
@click.option("--on-failure", type=click.Choice(["pass", "drop"]),
              help="Live: what monitored traffic meets while no engine serves it (before start, after a stop, "
                   "after a crash): drop (fail closed) or pass (fail open, uninspected). Default: drop inline, "
                   "pass passive; a program made by `mos-xdp attach` keeps its own.")
@click.option("--sent-pcap", type=click.Path(dir_okay=False),
              help="With --pcap: write the frames the app sent (conn.send, conn.reset, send_packet) to FILE.")
@click.option("--arg", "arg_pairs", multiple=True, metavar="KEY=VALUE", help="An argument for the app (repeatable).")
@click.option("--app-help", is_flag=True, help="Print the arguments the app takes, and exit.")
@monitor_options()
@click.option("--progress/--no-progress", default=True, help="Progress bar (on a terminal).")
@click.option("--stats", "show_stats", is_flag=True, help="Print the engine's counters at the end.")
def run(app: str, app_argv: Tuple[str, ...], pcap: Optional[str], iface: Optional[str], peer: Optional[str],
        workers: int, ring: int, on_failure: Optional[str], sent_pcap: Optional[str], arg_pairs: Tuple[str, ...],
        app_help: bool, progress: bool, show_stats: bool,
        **options: Any) -> None:
    """Run an app's handlers over a capture (--pcap) or live traffic (--iface)."""
    from ..monitor import Monitor

    if app_help or wants_help(app_argv):
        click.echo(App(app).help())
        return
    if bool(pcap) == bool(iface):
        raise click.UsageError("give exactly one of --pcap FILE or --iface IFACE")
    if sent_pcap and iface:
        raise click.UsageError("--sent-pcap: for captures (--pcap); live, the frames are sent")
    if pcap:
        ctx = click.get_current_context()
        live_only = [f"--{n}" for n in _LIVE_ONLY
                     if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if live_only:
            raise click.UsageError(f"{', '.join(live_only)}: for live runs (--iface), not with --pcap")
    the_app = App(app)
    args = the_app.parse(arg_pairs, app_argv)
    kw = monitor_kwargs(options)
    strict = bool(kw.get("strict"))
    mon = Monitor(**kw)
    the_app.init(mon, args)
    try:
        if iface:
            from .live import run_app_live

            run_app_live(mon, iface, peer, workers, ring, on_failure)
        else:
            assert pcap is not None
            bar, update = progress_bar(progress, pcap)
            try:
                mon.run_pcap(pcap, progress=update)
            finally:
                if bar is not None:
                    bar.__exit__(None, None, None)
    except Exception:
        if not (strict and mon.handler_errors):
            raise
        # the handler's traceback is printed already, with its connection: one line more, no second trace
        raise click.ClickException("stopped at the first handler error (--strict)") from None
    the_app.finish(mon)
    if sent_pcap:
        try:
            n = mon.write_sent(sent_pcap)
        except OSError as e:
            raise click.ClickException(f"cannot write {sent_pcap}: {e.strerror}") from None
        click.echo(f"mos-xdp: {n} frame(s) the app sent written to {sent_pcap}", err=True)
    st = mon.stats()
    checksum_notice(st)
    if show_stats:
        print_stats(st)
    if mon.handler_errors:
        click.echo(f"mos-xdp: {mon.handler_errors} handler error(s), see above", err=True)
        sys.exit(1)


@click.command()
@click.argument("pcap", metavar="FILE")
@click.option("-o", "outdir", type=click.Path(file_okay=False), help="Write <n>.c2s, <n>.s2c and index.jsonl here.")
@monitor_options(streams=True)
@click.option("--progress/--no-progress", default=True, help="Progress bar (on a terminal).")
@click.option("--stats", "show_stats", is_flag=True, help="Print the engine's counters at the end.")
def streams(pcap: str, outdir: Optional[str], progress: bool, show_stats: bool, **options: Any) -> None:
    """Reassemble every connection of a capture: files per direction and an index (-o), or a table."""
    from ..streams import run_streams, stream_table

    bar, update = progress_bar(progress, pcap)
    opts: Dict[str, Any] = dict(monitor_kwargs(options), progress=update)
    try:
        if outdir is None:
            rows, totals, st = stream_table(pcap, limit=TABLE_ROWS, **opts)
        else:
            rows, st = run_streams(pcap, outdir, **opts)
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"cannot write the streams to {outdir}: {e.strerror or e}{where}") from None
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    if outdir is None:
        _print_table(rows, totals, st)
    else:
        click.echo(f"{len(rows)} connections, {sum(r['c2s_bytes'] + r['s2c_bytes'] for r in rows)} bytes "
                   f"-> {outdir}/", err=True)
    checksum_notice(st)
    if show_stats:
        print_stats(st)


TABLE_ROWS = 50  # connections shown by `streams` without -o (the totals count them all)


def _print_table(rows: List[Dict[str, Any]], totals: Dict[str, int], st: Dict[str, int]) -> None:
    from ..stats import MALFORMED_PREFIX

    hdr = f"{'id':>5} {'proto':>5} {'client':>28} {'server':>28} {'c2s':>10} {'s2c':>10} {'lost':>8} " \
          f"{'client state':>12} {'server state':>12} {'end':>8}"
    click.echo(hdr)
    for r in rows:
        lost = r["c2s_gap_bytes"] + r["s2c_gap_bytes"]
        click.echo(f"{r['id']:>5} {r['proto']:>5} {r['client']:>28} {r['server']:>28} {r['c2s_bytes']:>10} "
                   f"{r['s2c_bytes']:>10} {lost:>8} {r['client_state'] or '-':>12} {r['server_state'] or '-':>12} "
                   f"{r['end']:>8}")
    if totals["connections"] > len(rows):
        click.echo(f"... {totals['connections'] - len(rows)} more connections")
    click.echo(f"{totals['connections']} connections, {totals['stream_bytes']} stream bytes "
               f"({totals['gap_bytes']} lost in holes), {st['packets']} packets "
               f"({st['conn_packets']} in TCP connections, {st['udp_packets']} in UDP flows, "
               f"{st['orphan_untracked_proto']} of other protocols, "
               f"{sum(v for k, v in st.items() if k.startswith(MALFORMED_PREFIX))} malformed)")
