"""Where the package's data files are: the BPF source and headers (``bpf``) and the VM tooling (``vm``).

An installed package carries copies in ``mos/_data/<name>/`` (``setup.py``'s build step puts them there);
a checkout (or an editable install) uses the top-level ``<name>/`` directory beside the package.
"""

from __future__ import annotations

from pathlib import Path

from .errors import MosError

NAMES = ("bpf", "vm")
_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The directory of package data ``name`` (one of :data:`NAMES`): the installed copy when present,
    else the checkout's; a :class:`MosError` when neither exists."""
    if name not in NAMES:
        raise ValueError(f"unknown package data {name!r} (choose from {', '.join(NAMES)})")
    for where in (_PKG / "_data" / name, _PKG.parent / name):
        if where.is_dir():
            return where
    raise MosError(f"the package's {name}/ files are missing (looked in {_PKG / '_data' / name} and "
                   f"{_PKG.parent / name}): reinstall mos-xdp")
