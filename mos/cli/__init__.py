"""The ``mos-xdp`` command line (click), one module per command group:

* :mod:`mos.cli.offline`: ``run APP --pcap FILE`` and ``streams FILE`` (captures);
* :mod:`mos.cli.live`: ``run APP --iface IFACE`` (its live half), ``attach``, ``detach``, ``status``,
  ``block`` (the XDP side);
* :mod:`mos.cli.vm`: ``vm`` (a throw-away QEMU guest).

Each command's module is imported only when the command runs, so ``vm`` works without the C engine and
``streams`` does not load the live path.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, List, Optional

import click

from ..errors import MosError

__all__ = ["main"]

# command -> (module, attribute)
_COMMANDS = {
    "run": ("mos.cli.offline", "run"),
    "streams": ("mos.cli.offline", "streams"),
    "attach": ("mos.cli.live", "attach"),
    "detach": ("mos.cli.live", "detach"),
    "status": ("mos.cli.live", "status"),
    "block": ("mos.cli.live", "block"),
    "vm": ("mos.cli.vm", "vm_group"),
}


class _Group(click.Group):
    """Lazily loaded subcommands; the stack's own errors become one line and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in _COMMANDS:
            modname, attr = _COMMANDS[cmd_name]
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
        except (MosError, OSError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mos-xdp")
def main() -> None:
    """mos-xdp: both TCP endpoints' state, both byte streams and mOS-style events for Python middleboxes."""
