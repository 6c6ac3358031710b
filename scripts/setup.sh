#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root): apt packages, kernel headers for bcc,
# the project's .venv with the package installed in editable mode (which builds the C engine via cffi).
# Every other script calls this first; a second run does (almost) nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "mos-xdp setup: run as root (apt packages, XDP and namespaces need it)" >&2
    exit 1
fi

APT_PACKAGES=(
    # engine build
    build-essential pkg-config libpcap-dev libxdp-dev libbpf-dev
    # XDP programs through bcc (Debian's bcc, never PyPI's unrelated "bcc")
    python3-bpfcc linux-headers-amd64
    # real-traffic tests and tools the tests drive
    iproute2 tcpdump curl ethtool tcpreplay
    # the live UDP test: a resolver and a DNS client (tests/test_udp.py)
    dnsmasq bind9-dnsutils
    # vm/
    qemu-system-x86 linux-image-amd64 busybox-static cpio
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine's package lists may be missing or stale: update once and retry on failure.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    }
fi

# bcc compiles XDP programs against the running kernel's headers. These machines have none, so point
# /lib/modules/$(uname -r) at Debian's 6.1 headers (enough for XDP code) -- only when it is absent.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir" ]; then
    arch_hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
    common_hdr=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
    if [ -n "$arch_hdr" ] && [ -n "$common_hdr" ]; then
        log "linking $kdir/{build,source} to $arch_hdr / $common_hdr"
        mkdir -p "$kdir"
        ln -sfn "$arch_hdr" "$kdir/build"
        ln -sfn "$common_hdr" "$kdir/source"
    fi
fi

# The venv uses the machine's python3; bcc (Debian's python3-bpfcc) is made importable by a symlink.
py="${MOS_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$py" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi

# Reinstall (and so rebuild the engine) only when the inputs changed.
sum=$(cat pyproject.toml setup.py userspace/*.c userspace/*.h userspace/*.py bpf/*.h 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ ! -f .venv/.mos-installed ] || [ "$(cat .venv/.mos-installed)" != "$sum" ]; then
    log "installing mos-xdp into .venv (builds the C engine)"
    .venv/bin/pip install -q --disable-pip-version-check -U pip >/dev/null
    # compat mode puts the checkout on sys.path with a plain .pth line: `mos-xdp` starts about 10 ms
    # sooner than with setuptools' import-hook finder. A setuptools without it gets the default mode.
    if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' \
            --config-settings editable_mode=compat >.venv/pip-compat.log 2>&1; then
        .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    fi
    echo "$sum" > .venv/.mos-installed
fi
# Byte-code compiled ahead (a no-op when up to date): with PYTHONDONTWRITEBYTECODE set, as on CI
# machines, every start would otherwise compile the package again (about 15 ms).
.venv/bin/python -m compileall -q mos apps >/dev/null
