"""``python -m demo [--pcap] [-o DIR] [--timeout S]``: the live demo, or the offline one where it cannot run.

Also runs as ``python demo`` (the directory) from anywhere: the checkout is put on the import path.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

if not __package__:  # `python demo`: import the package from the checkout beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.offline import MissingScapy, run_offline  # noqa: E402


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 5 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{value:g} is not in the range 5..3600")
    return value


def parse(argv: Optional[List[str]]) -> argparse.Namespace:
    """The demo's options (those ``mos-xdp demo`` had)."""
    ap = argparse.ArgumentParser(prog="demo", description=(
        "Live: a client, mos-xdp inline and a server in network namespaces, real traffic through the apps. "
        "Falls back to the offline demo (--pcap: a capture with reordering, loss, retransmission, pick-up, RST "
        "and IPv6) when the live demo cannot run here (not root, no bcc, kernel headers or XDP)."))
    ap.add_argument("--pcap", dest="offline", action="store_true",
                    help="the offline demo: a capture built here, through the apps (no root needed)")
    ap.add_argument("-o", dest="outdir", default=None,
                    help="offline demo (implies --pcap): keep the capture and the streams here")
    ap.add_argument("--timeout", type=_timeout, default=None,
                    help="live demo: stop (and clean up) after so many seconds [default: 60; 180 in `mos-xdp vm`]")
    return ap.parse_args(argv)


def _echo(line: str) -> None:
    print(line, flush=True)  # line by line, also into a pipe: a reader sees each step as it happens


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the demo; returns the exit code."""
    a = parse(argv)
    try:
        if not a.offline and a.outdir is None:
            from demo.live import CannotRun, run_demo

            try:
                # the guest of `mos-xdp vm` runs code about 6x slower (bcc alone takes ~30 s there)
                default = 180.0 if os.environ.get("MOS_VM") == "1" else 60.0
                return run_demo(timeout=a.timeout or default, echo=_echo)
            except CannotRun as exc:
                print(f"mos-xdp demo: the live demo cannot run here ({exc}); showing the offline demo "
                      "(bash scripts/demo.sh --pcap)", file=sys.stderr, flush=True)
        return run_offline(a.outdir)
    except KeyboardInterrupt:
        print("mos-xdp demo: interrupted", file=sys.stderr)
        return 130
    except (MissingScapy, RuntimeError, OSError) as e:
        print(f"mos-xdp demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
