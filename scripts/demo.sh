#!/usr/bin/env bash
# The main job on its embedded default, for a fresh Debian 12 machine (as root): set-up, then the demo.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
exec .venv/bin/python -m demo "$@"
