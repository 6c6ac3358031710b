"""``mos-xdp vm ...``: run commands, the test suite, the demo or a shell in a throw-away QEMU guest.

The guest boots Debian's kernel with the host's ``/`` mounted read-only under a tmpfs overlay (so the project
checkout is at the same path and nothing the guest does reaches the host's files), one output folder shared
read-write, and pairs of virtio-net interfaces wired back to back (``eth0 <-> eth1``) for native XDP.

The logic lives in ``vm/mosvm.py`` (standard library only, also run by ``vm/mos-vm`` without this package);
this module loads it from the package data (:func:`mos.resources.data_dir`), and :mod:`mos.cli.vm` wraps it
in a click group. It needs no C engine, so it works before the engine is built.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

from .errors import MosError
from .resources import data_dir


def mosvm() -> ModuleType:
    """Load vm/mosvm.py from the package data (once), or fail with one clear line (a :class:`MosError`)."""
    path = (data_dir("vm") / "mosvm.py").resolve()
    mod = sys.modules.get("mosvm")
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == path:
        return mod
    if not path.is_file():
        raise MosError(f"{path} not found: reinstall mos-xdp")
    spec = importlib.util.spec_from_file_location("mosvm", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["mosvm"] = mod
    spec.loader.exec_module(mod)
    return mod


def run_in_vm(argv: Sequence[str], timeout: Optional[float] = 600.0, out_dir: Optional[str] = None,
              interactive: bool = False, **kwargs: Any) -> int:
    """Boot the guest, run ``argv`` there (in the current directory, same path) and return its exit code.

    ``timeout`` in seconds (None: no limit); ``out_dir`` is the host folder the guest may write
    (default ``vm/out``). Further keyword arguments: ``cwd``, ``env`` (dict), ``mem`` ("2G"), ``cpus``,
    ``wires`` (pairs of back-to-back NICs), ``host_net`` ("user", "tap:IF", "udp:LPORT:RPORT"), ``accel``
    ("auto", "tcg", "kvm"), ``kernel`` (version), ``verbose``. Returns 124 on a timeout, 125 when the guest
    fails (panic, boot failure), after one line on stderr saying why; raises ``mosvm.VMError`` for a fixable
    problem.
    """
    return int(mosvm().run_in_vm(list(argv), timeout=timeout, out_dir=out_dir, interactive=interactive,
                                  **kwargs))
