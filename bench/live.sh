#!/usr/bin/env bash
# The mos-xdp live-path benchmark, end to end (as root): XDP fast drop, AF_XDP receive, inline forwarding,
# on veth pairs between network namespaces it creates; replaces the live section of bench/RESULTS.md.
#   bash bench/live.sh                      # 3 runs of 5 s per configuration, perf profiles (about 8 minutes)
#   bash bench/live.sh --runs 1 --seconds 3 # a quick check
# See bench/live.py --help for the options. Not run by CI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [ ! -x "$root/.venv/bin/mos-xdp" ]; then
    bash "$root/scripts/setup.sh"
fi
exec "$root/.venv/bin/python" "$here/live.py" "$@"
