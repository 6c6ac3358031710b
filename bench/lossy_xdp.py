"""Real losses on the benchmark's veth link: an XDP program that drops a random share of the packets
arriving on an interface (no netem in this kernel). Run with Debian's python3 (bcc), inside the
namespace of the interface; it attaches, prints ``attached`` and waits for stdin to close (or
``--lifetime`` seconds), then detaches.

    ip netns exec NS /usr/bin/python3 lossy_xdp.py DEV --per-million 5000
"""

from __future__ import annotations

import argparse
import select
import sys
import time

from bcc import BPF  # Debian's python3-bpfcc

PROG = r"""
#include <uapi/linux/bpf.h>
BPF_ARRAY(dropped, u64, 1);
int lossy(struct xdp_md *ctx) {
    if (bpf_get_prandom_u32() % 1000000 < PER_MILLION) {
        int k = 0;
        u64 *n = dropped.lookup(&k);
        if (n)
            __sync_fetch_and_add(n, 1);
        return XDP_DROP;
    }
    return XDP_PASS;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dev")
    ap.add_argument("--per-million", type=int, default=5000)
    ap.add_argument("--lifetime", type=float, default=900)
    a = ap.parse_args()
    b = BPF(text=PROG, cflags=[f"-DPER_MILLION={a.per_million}u"])
    fn = b.load_func("lossy", BPF.XDP)
    b.attach_xdp(a.dev, fn, 0)
    print("attached", flush=True)
    try:
        end = time.time() + a.lifetime
        while time.time() < end:
            r, _, _ = select.select([sys.stdin], [], [], 1.0)
            if r and not sys.stdin.read(1):
                break
    finally:
        n = b["dropped"][0].value
        b.remove_xdp(a.dev, 0)
        print(f"dropped={n}", flush=True)


if __name__ == "__main__":
    main()
