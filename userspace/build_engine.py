"""cffi (API mode) builder for the C engine: compiled into ``mos._engine`` when the package is installed.

The cdef is read from ``mos_engine.h`` itself so the header stays the one description of the API.
Set ``MOS_SANITIZE=1`` to build with AddressSanitizer and UndefinedBehaviorSanitizer
(``scripts/sanitize.sh`` does, in a scratch copy).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _preprocess(header: Path, *flags: str) -> str:
    cmd = [os.environ.get("CC", "gcc"), "-E", "-P", "-DMOS_CDEF", "-I", str(HERE), "-I", str(HERE.parent / "bpf"),
           *flags, str(header)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


_INT_MACRO = re.compile(r"#define (MOS_\w+) ([-+*/<>()|&~\w][-+*/<>()|&~\s\w]*)$")
_NOT_CONSTANTS = {"MOS_CDEF", "MOS_IN_BPF", "MOS_INLINE"}


def _cdef_from_header(path: Path) -> str:
    """The cdef of the engine's API: its header (and mos_shared.h, which it includes) after the C
    preprocessor, so the X-macro lists expand as the compiler sees them; integer macros are declared
    with ``...`` so that cffi takes their values from the C side."""
    text = _preprocess(path)
    macros = []
    for line in _preprocess(path, "-dM").splitlines():
        m = _INT_MACRO.match(line)
        if m and m.group(1) not in _NOT_CONSTANTS and not m.group(1).endswith("_H"):
            macros.append(f"#define {m.group(1)} ...")
    return text + "\n" + "\n".join(sorted(macros)) + "\n" + (HERE / "libbpf_cdef.h").read_text()


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
    '#include <bpf/bpf.h>\n#include <bpf/libbpf.h>\n#include "mos_engine.h"\n',
    sources=_sources(),
    include_dirs=[_path(HERE), _path(HERE.parent / "bpf")],
    libraries=["pcap", "xdp", "bpf"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
