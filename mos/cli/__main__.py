"""``python -m mos.cli``: the ``mos-xdp`` command."""

from . import main

main()
