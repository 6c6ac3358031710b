#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine (as root): set-up first, then ruff and mypy, the
# C-facing tests under ASan/UBSan, then pytest. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy --ignore-missing-imports mos
bash scripts/sanitize.sh
exec .venv/bin/python -m pytest -q "$@"
