"""``python -m mos.live_cli attach|detach|status|block``: the XDP-side commands of :mod:`mos.cli.live`
as a group of their own (what ``tests/test_xdp.py`` runs; ``mos-xdp`` has the same commands)."""

from __future__ import annotations

import click

from .cli.live import attach, block, detach, status

COMMANDS = [attach, detach, status, block]
"""The XDP-side commands."""


@click.group(name="mos-xdp")
def cli() -> None:
    """mos-xdp live path (XDP side)."""


for _cmd in COMMANDS:
    cli.add_command(_cmd)


def main() -> None:
    """Entry point for ``python -m mos.live_cli``."""
    cli()


if __name__ == "__main__":
    main()
