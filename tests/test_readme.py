"""The README's layout table names every part of the tree, so a newcomer finds each file where the table
says: every top-level directory, every module of the Python package, every C file of the engine and of
the XDP side. A file added without a row, or a row left for a file that is gone, fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Set

ROOT = Path(__file__).resolve().parent.parent


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Layout")
    return text[start:text.index("\n## ", start + 1)]


def _named(layout: str) -> Set[str]:
    """Every path-like word in the table's first column and in backquotes anywhere in the section."""
    return set(re.findall(r"`([^`\s]+)`", layout))


def test_every_part_of_the_tree_has_a_row() -> None:
    layout = _layout()
    named = _named(layout)
    words = " ".join(named)
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
            and p.name not in {"build", "out"} and not p.name.endswith(".egg-info")}
    for d in sorted(tops):
        assert f"{d}/" in words, f"README layout: no row for {d}/"
    for f in sorted((ROOT / "userspace").glob("*.c")) + sorted((ROOT / "bpf").iterdir()):
        assert f.name in words, f"README layout: {f.relative_to(ROOT)} is not named"
    for p in sorted((ROOT / "mos").iterdir()):
        if p.name.startswith("_") or p.name == "__pycache__" or p.suffix == ".so":
            continue
        name = p.name + "/" if p.is_dir() else p.name
        assert name in words, f"README layout: mos/{name} is not named"


def test_every_named_file_exists() -> None:
    for word in _named(_layout()):
        if "/" in word and not word.startswith(("http", "mos-xdp")):
            assert (ROOT / word).exists(), f"README layout names {word}, which is not in the tree"


def test_the_readme_example_finds_a_pattern_split_across_segments(tmp_path: Path) -> None:
    """The app at the top of the README, run as written on a capture where no segment holds the whole
    pattern (``GET /etc/pas`` + ``swd``), alerts once; on a request without the pattern, never."""
    import subprocess
    import sys

    from tests.pcaps import Conv

    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    example = text[start:text.index("```", start)]
    assert 'mon.run_pcap("trace.pcap")' in example
    for request, alerts in ((b"GET /etc/pas", 1), (b"GET /index.html HTTP/1.0\r\n\r\n", 0)):
        c = Conv()
        c.handshake()
        c.send(True, request)
        if alerts:
            c.send(True, b"swd HTTP/1.0\r\n\r\n")
        c.send(False, b"HTTP/1.0 200 OK\r\n\r\n")
        c.close()
        c.built().write(tmp_path / "trace.pcap")
        (tmp_path / "app.py").write_text(example)
        r = subprocess.run([sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("alert 10.10.0.1:40000 -> 10.10.0.2:80") == alerts, r.stdout
