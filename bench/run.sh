#!/usr/bin/env bash
# The mos-xdp benchmark, end to end (as root): peers, capture, timed runs, bench/RESULTS.md.
#   bash bench/run.sh            # the full run (a 600 MB body capture, 3 runs of each tool)
#   bash bench/run.sh --small    # a quick check, under 2 minutes once the peers are installed
# See bench/run.py --help for the options. Not run by CI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [ ! -x "$root/.venv/bin/mos-xdp" ]; then
    bash "$root/scripts/setup.sh"
fi
exec "$root/.venv/bin/python" "$here/run.py" "$@"
