"""What the commands share: loading an app and calling its ``init``, the progress bar and the counters
printout. The Monitor's options are :mod:`mos.cli.monitor_options`."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import click

from ..app_args import AppArgs, app_help, declared_args, parse_app_args


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


class App:
    """An app file, imported: its module, its declared arguments and how its ``init`` is called."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.module = _import_app(path)
        self.args_decl = declared_args(self.module, path)
        self.takes_args = _init_takes_args(self.module.init, path)
        if self.args_decl is not None and not self.takes_args:
            raise click.ClickException(f"{path}: declares ARGS but init(monitor) takes no args: "
                                       "define init(monitor, args)")

    def help(self) -> str:
        """The app's ``--app-help`` text."""
        return app_help(self.args_decl, os.path.basename(self.path), self.module.__doc__)

    def parse(self, pairs: Sequence[str], argv: Sequence[str]) -> AppArgs:
        """The app's arguments from ``--arg`` pairs and the words after ``--`` (a MosError if wrong)."""
        args = parse_app_args(self.args_decl, pairs, argv)
        if args and not self.takes_args:
            given = ", ".join(pairs) or " ".join(argv)
            raise click.ClickException(f"{self.path}: init(monitor) takes no arguments, given {given}")
        return args

    def init(self, mon: Any, args: AppArgs) -> None:
        """Call the app's ``init`` in the form it was written for; its exception is one line."""
        try:
            if self.takes_args:
                self.module.init(mon, args)
            else:
                self.module.init(mon)
        except Exception as exc:
            form = "init(monitor, args)" if self.takes_args else "init(monitor)"
            raise click.ClickException(f"{self.path}: {form} failed{where_in(exc, self.path)}: "
                                       f"{type(exc).__name__}: {exc}") from None

    def finish(self, mon: Any) -> None:
        """The app's ``finish(monitor)``, if it has one."""
        fin = getattr(self.module, "finish", None)
        if callable(fin):
            fin(mon)


def _import_app(path: str) -> Any:
    """Import an app file; it must define ``init``."""
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
        raise click.ClickException(f"{path}: an app must define init(monitor) or init(monitor, args)")
    return mod


def _init_takes_args(init: Callable[..., Any], path: str) -> bool:
    """Whether ``init`` is the two-argument form, decided once from its signature."""
    try:
        sig = inspect.signature(init)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: the original form
        return False
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        return True
    required = [p for p in positional if p.default is p.empty]
    if not positional or len(required) > 2:
        raise click.ClickException(f"{path}: init must take (monitor) or (monitor, args), not {sig}")
    return len(positional) >= 2


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
