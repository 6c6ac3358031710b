"""Shared fixtures: the third-party corpus, the `streams` CLI runner, markers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
# /work/main/tests/conftest.py -> /work/shared/corpus; in CI the clone has shared/ beside it the same way.
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
STREAMS_TIMEOUT = 300


def pytest_configure(config):
    for line in (
        "netns: needs root and network namespaces",
        "slow: long-running test (real traffic, VM boots)",
        "corpus: uses the third-party capture corpus in ../shared/corpus",
    ):
        config.addinivalue_line("markers", line)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The read-only third-party corpus (skips when the shared/ directory is not beside the clone)."""
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    return CORPUS


def streams_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "mos.cli", "streams", *map(str, args)]


def run_cli(*args: str, timeout: float = STREAMS_TIMEOUT) -> subprocess.CompletedProcess:
    """`python -m mos.cli streams ARGS...`, captured (bytes), bounded in time."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(streams_cmd(*args), capture_output=True, timeout=timeout, cwd=REPO, env=env)


def read_index(outdir: Path) -> List[dict]:
    lines = (outdir / "index.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def stream_bytes(outdir: Path, n: int, direction: str) -> bytes:
    """Bytes of connection n's 'c2s' or 's2c' file (a missing file reads as empty only if the index
    says the stream is empty; the caller asserts that)."""
    p = outdir / f"{n}.{direction}"
    return p.read_bytes()


def _run_streams_into(outdir: Path, pcap, *args: str) -> Tuple[List[dict], Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    proc = run_cli(pcap, "-o", outdir, *args)
    assert proc.returncode == 0, (
        f"mos-xdp streams {pcap} {' '.join(map(str, args))} exited {proc.returncode}\n"
        f"stderr:\n{proc.stderr.decode(errors='replace')}"
    )
    rows = read_index(outdir)
    # invariants every index must satisfy
    for i, row in enumerate(rows, 1):
        assert row["id"] == i, rows
        for d in ("c2s", "s2c"):
            data = (outdir / f"{i}.{d}").read_bytes()
            assert row[f"{d}_bytes"] == len(data), (row, d, len(data))
    return rows, outdir


@pytest.fixture
def run_streams(tmp_path) -> Callable[..., Tuple[List[dict], Path]]:
    """run_streams(pcap, *args) -> (index rows, output dir). Each call gets a fresh output directory."""
    counter = [0]

    def run(pcap, *args: str) -> Tuple[List[dict], Path]:
        counter[0] += 1
        outdir = tmp_path / f"streams-{counter[0]}"
        return _run_streams_into(outdir, pcap, *args)

    return run
