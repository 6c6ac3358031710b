"""Lines of code of mOS's C samples against their mos-xdp ports (non-blank, non-comment; Python docstrings
are comments too), for the README's table: the mOS paper's claim is modular development in far fewer
lines.

    .venv/bin/python bench/sample_lines.py MOS_CHECKOUT     # a clone of mos-stack/mOS-networking-stack
"""

from __future__ import annotations

import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [("samples/midstat/midstat.c", "apps/midstat.py"),
         ("samples/simple_firewall/simple_firewall.c", "apps/simple_firewall.py"),
         ("samples/nat/nat.c", "apps/nat.py")]


def c_lines(text: str) -> int:
    """Non-blank lines of C once /* */ and // comments are removed (string literals kept as they are)."""
    out, i, n, in_str = [], 0, len(text), ""
    while i < n:
        ch = text[i]
        if in_str:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif ch == in_str:
                in_str = ""
        elif ch in "\"'":
            in_str = ch
            out.append(ch)
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("\n" * text.count("\n", i, end))
            i = end
            continue
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        else:
            out.append(ch)
        i += 1
    return sum(1 for line in "".join(out).splitlines() if line.strip())


def py_lines(text: str) -> int:
    """Non-blank lines of Python without comments and docstrings (a string statement on its own)."""
    code = set()
    prev = tokenize.NEWLINE
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                        tokenize.ENDMARKER):
            if tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                prev = tok.type
            continue
        docstring = tok.type == tokenize.STRING and prev in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        prev = tok.type
        if not docstring:
            code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code)


def main() -> int:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: bench/sample_lines.py MOS_CHECKOUT", file=sys.stderr)
        return 2
    mos = Path(sys.argv[1])
    print("| mOS sample (C) | lines | mos-xdp app (Python) | lines | ratio |")
    print("|---|---|---|---|---|")
    for c, py in PAIRS:
        cp, pp = mos / c, ROOT / py
        if not cp.is_file():
            print(f"{c}: not in {mos}", file=sys.stderr)
            return 1
        nc = c_lines(cp.read_text(errors="replace"))
        if not pp.is_file():
            print(f"| `{c}` | {nc} | `{py}` | (not ported yet) | |")
            continue
        npy = py_lines(pp.read_text())
        print(f"| `{c}` | {nc} | `{py}` | {npy} | {nc / npy:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

