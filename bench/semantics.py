"""The cost of the default event order (issue 10, item 2) against the batch and packet orders.

    .venv/bin/python bench/semantics.py [--pcap bench/work/capture-full.pcap] [--runs 5]

``Monitor(order="connection")`` (the default) makes what a handler does take effect from that connection's
next packet; ``order="batch"`` from the next batch (the old default); ``order="packet"`` (``sync=True``)
hands the events over after every packet that raised some. Each order runs the benchmark capture (the
one ``bash bench/run.sh`` leaves in ``bench/work/capture-full.pcap``) with a CONN_NEW_DATA handler that
counts the bytes (as ``bench/app_count.py``), in its own process, ``--runs`` times, the orders interleaved
run by run; medians of the run's time (``Monitor.run``, measured in the child), the child's wall time and
peak RSS. The target (issue 10): the default at most 1.2x the batch order's time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from common import MOSPY, ROOT, WORK, interleaved_runs, med

ORDERS = {
    "connection": "actions from the connection's next packet (the default)",
    "batch": "actions from the next batch",
    "packet": "events handed over after every packet",
}
TARGET = 1.2
"""The default order's time over the batch order's, at most (issue 10)."""
TIMEOUT = 1800.0
"""Seconds one child may run (a stuck run is killed)."""
DEFAULT_PCAP = WORK / "capture-full.pcap"


def child(order: str, pcap: str) -> None:
    """One run of one order: prints ``{"run_s", "bytes", "events", "batches"}`` as JSON."""
    from mos import Event, Monitor, PcapSource

    mon = Monitor(order=order)
    seen = [0, 0]

    def data(conn: Any, ev: Any) -> None:
        seen[0] += len(ev.data)
        seen[1] += 1

    mon.on(Event.CONN_NEW_DATA, data)
    t0 = time.perf_counter()
    st = mon.run(PcapSource(pcap))
    run_s = time.perf_counter() - t0
    print(json.dumps({"run_s": run_s, "bytes": seen[0], "events": seen[1], "batches": st["event_batches"],
                      "packets": st["packets"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pcap", default=str(DEFAULT_PCAP), help=f"the capture (default {DEFAULT_PCAP})")
    ap.add_argument("--runs", type=int, default=5, help="runs of each order, interleaved (default 5)")
    ap.add_argument("--child", choices=sorted(ORDERS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.pcap)
        return
    if a.runs < 1:
        raise SystemExit("semantics: --runs must be at least 1")
    pcap = Path(a.pcap)
    if not pcap.is_file():
        where = pcap.relative_to(ROOT) if pcap.is_relative_to(ROOT) else pcap
        raise SystemExit(f"semantics: no capture at {where}: build the benchmark capture with "
                         f"`sudo bash bench/run.sh` (it leaves bench/work/capture-full.pcap), or pass --pcap FILE")
    runs, last = interleaved_runs("semantics", ORDERS, a.runs, lambda order: [
        str(MOSPY), __file__, "--child", order, "--pcap", str(pcap)], TIMEOUT)
    outputs = {o: {k: res[k] for k in ("bytes", "events", "batches", "packets")} for o, res in last.items()}
    delivered = {(o["bytes"], o["events"]) for o in outputs.values()}
    if len(delivered) != 1:  # the handler acts on nothing: every order must hand it the same bytes
        raise SystemExit(f"semantics: the orders delivered different bytes/events: {outputs}")
    report(pcap, runs, outputs, a.runs)


def report(pcap: Path, runs: Dict[str, List[Tuple[float, float, int]]], outputs: Dict[str, Dict[str, int]],
           nruns: int) -> None:
    """The table of medians and the ratios to the batch order."""
    m = {o: (med([x[0] for x in v]), med([x[1] for x in v]), med([float(x[2]) for x in v]))
         for o, v in runs.items()}
    any_out = next(iter(outputs.values()))
    print(f"{pcap}: {any_out['packets']:,} packets, a CONN_NEW_DATA handler counting bytes "
          f"({any_out['events']:,} events, {any_out['bytes']:,} bytes); medians of {nruns} interleaved runs")
    print(f"{'order':<11} {'run s':>7} {'wall s':>7} {'peak RSS MiB':>13} {'crossings':>10} {'x batch':>8}"
          f"   runs (run s)")
    for o, (run_s, wall, rss) in m.items():
        print(f"{o:<11} {run_s:>7.2f} {wall:>7.2f} {rss / 2 ** 20:>13.0f} {outputs[o]['batches']:>10,} "
              f"{run_s / m['batch'][0]:>8.2f}   " + ", ".join(f"{x[0]:.2f}" for x in runs[o]))
    ratio = m["connection"][0] / m["batch"][0]
    print(f"connection/batch time {ratio:.2f}: target <= {TARGET:g}: {'met' if ratio <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
