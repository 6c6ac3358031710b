#!/usr/bin/env bash
# The C-facing tests under AddressSanitizer and UndefinedBehaviorSanitizer:
#  1. the C unit tests (tests/c), built with -fsanitize=address,undefined;
#  2. the engine itself built with sanitizers into a scratch directory, loaded into Python with the
#     ASan runtime preloaded, running the test suite but for the netns, VM and slow tests.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
make -s -C tests/c check SAN="$SAN"

scratch=$(mktemp -d /tmp/mos-asan.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/mos"
find mos -name "*.py" -exec cp --parents -t "$scratch/" {} +  # subpackages too (mos/xdp/)
( cd "$here" && MOS_SANITIZE=1 MOS_ABSOLUTE_PATHS=1 .venv/bin/python - "$scratch" <<'PY'
import os, sys, importlib.util
spec = importlib.util.spec_from_file_location("build_engine", "userspace/build_engine.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
out = m.ffibuilder.compile(tmpdir=os.path.join(sys.argv[1], "build"), verbose=False)
import shutil; shutil.copy(out, os.path.join(sys.argv[1], "mos", os.path.basename(out)))
PY
) >/dev/null
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
echo "== engine tests with the sanitized engine"
where=$(cd "$scratch" && LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$scratch:$here" \
    "$here/.venv/bin/python" -c 'import mos._engine as m; print(m.__file__)')
case "$where" in
    "$scratch"/*) ;;
    *) echo "sanitize.sh: the sanitized engine was not the one imported ($where)" >&2; exit 1 ;;
esac
LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
PYTHONPATH="$scratch:$here" MOS_SANITIZED=1 \
    bash -c 'cd "$1" && "$2/.venv/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$2" \
        -m "not netns and not vm and not slow" "$2/tests"' _ "$scratch" "$here"
