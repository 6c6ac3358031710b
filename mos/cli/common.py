"""What the commands share: the overlap policy choice, building a Monitor, loading an app, the progress bar
and the counters printout."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import click

from ..abi import checksum_mode_names, frag_policy_names
from ..events import Policy

POLICIES = [p.value for p in Policy]
FRAG_POLICIES = list(frag_policy_names())
CHECKSUMS = list(checksum_mode_names())
CHECKSUM_HELP = ("Drop packets with a wrong IPv4, TCP or UDP checksum before the engine: on, off, or auto "
                 "(on, until a sample shows the input has offloaded checksums).")


def make_monitor(policy: str, vlan: bool, pickup: bool, strict: bool = False, **kw: Any) -> Any:
    """A Monitor with the CLI's options."""
    from ..monitor import Monitor

    return Monitor(policy=policy, vlan_in_key=vlan, pickup=pickup, strict=strict, **kw)


def progress_bar(enabled: bool, path: str) -> Tuple[Any, Optional[Callable[[int, int], None]]]:
    """A progress bar over a file's bytes (on a terminal only) and its update callback; (None, None) when off."""
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


def where_in(exc: BaseException, app: Any) -> str:
    """" at FILE:LINE", the app's innermost frame of the exception's traceback (the line an author needs
    to see in a one-line error), or "" when the app's code is not in it (a syntax error says its own)."""
    import os
    import traceback

    app_file = os.path.realpath(str(app))
    line = None
    for fr in traceback.extract_tb(exc.__traceback__):
        if os.path.realpath(fr.filename) == app_file:
            line = fr.lineno
    return f" at {os.path.basename(app_file)}:{line}" if line is not None else ""


def load_app(path: str) -> Any:
    """Import an app file; it must define ``init(monitor)`` (and may define ``finish(monitor)``)."""
    import importlib.util
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise click.ClickException(f"{path}: is a directory, not an app file")
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
        raise click.ClickException(f"{path}: the app failed to import{where_in(exc, p)}: "
                                   f"{type(exc).__name__}: {exc}") from None
    if not callable(getattr(mod, "init", None)):
        raise click.ClickException(f"{path}: an app must define init(monitor)")
    return mod


def print_stats(st: Dict[str, int]) -> None:
    """The non-zero counters on stderr, with the accounted packets."""
    from ..stats import accounted

    click.echo("counters:", err=True)
    for k, v in st.items():
        if v:
            click.echo(f"  {k:32} {v}", err=True)
    click.echo(f"  {'(accounted packets)':32} {accounted(st)} of {st['packets']}", err=True)


def checksum_notice(st: Dict[str, int]) -> None:
    """One line on stderr when checksum auto found offloaded checksums and stopped validating."""
    if st.get("checksum_auto_off"):
        click.echo("mos-xdp: checksum auto: more than one packet in ten has a wrong checksum (offloading, or a "
                   "capture rewritten by a tool): checksums were not validated (--checksum on drops them)",
                   err=True)
