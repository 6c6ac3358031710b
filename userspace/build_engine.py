"""cffi (API mode) builder for the C engine: compiled into ``mos._engine`` when the package is installed.

The cdef is read from ``mos_engine.h`` itself so the header stays the one description of the API.
Set ``MOS_SANITIZE=1`` to build with AddressSanitizer and UndefinedBehaviorSanitizer
(``scripts/sanitize.sh`` does, in a scratch copy).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _cdef_from_header(path: Path) -> str:
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


# setuptools wants paths relative to setup.py; a direct ffibuilder.compile() in a scratch directory
# (scripts/sanitize.sh) needs them absolute.
ABSOLUTE = bool(os.environ.get("MOS_ABSOLUTE_PATHS"))


def _path(p: Path) -> str:
    return str(p if ABSOLUTE else p.relative_to(HERE.parent))


def _sources() -> list[str]:
    return sorted(_path(p) for p in HERE.glob("*.c") if not p.name.startswith("_"))


CFLAGS = ["-std=c11", "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
LDFLAGS: list[str] = []
if os.environ.get("MOS_SANITIZE"):
    CFLAGS += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-O1"]
    LDFLAGS += ["-fsanitize=address,undefined"]

ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header(HERE / "mos_engine.h"))
ffibuilder.set_source(
    "mos._engine",
    '#include "mos_engine.h"\n',
    sources=_sources(),
    include_dirs=[_path(HERE), _path(HERE.parent / "bpf")],
    libraries=["pcap", "xdp", "bpf"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
