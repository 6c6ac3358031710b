"""The cost of the default event order (issue 10, item 2) against the batch and packet orders.

    .venv/bin/python bench/semantics.py [--pcap bench/work/capture-full.pcap] [--runs 5] [--old DIR]

``Monitor(order="connection")`` (the default) makes what a handler does take effect from that connection's
next packet; ``order="batch"`` from the next batch (the old default); ``order="packet"`` (``sync=True``)
hands the events over after every packet that raised some. Each order runs the benchmark capture (the
one ``bash bench/run.sh`` leaves in ``bench/work/capture-full.pcap``) with a CONN_NEW_DATA handler that
counts the bytes (as ``bench/app_count.py``), in its own process, ``--runs`` times, the orders interleaved
run by run; medians of the run's time (``Monitor.run``, measured in the child), the child's wall time and
peak RSS. The target (issue 10): the default at most 1.2x the time of the batch mode from before it.
``--old DIR``: a checkout of that earlier mos-xdp with its own build in ``DIR/.venv`` (``bench/compare.py
--old REV`` makes one in ``bench/work/old-REV``) runs as the case ``old`` (its default, batch mode), and the
default is judged against it; without it, against this build's batch order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from common import MOSPY, ROOT, WORK, interleaved_runs, med, report_section

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
NOTE = ("`connection` is the default: a handler's actions take effect from its connection's next packet, so "
        "within a batch a connection's later packets wait for its handlers; each round of a batch is one "
        "crossing into Python, and a bulk transfer has a round per data event of its busiest connection. "
        "`old` (with `--old`) is the build from before issue 10, whose only mode was `batch`.")


def child(order: str, pcap: str) -> None:
    """One run of one order (``old``: an earlier build's default): prints ``{"run_s", "bytes", "events",
    "batches"}`` as JSON."""
    from mos import Event, Monitor, PcapSource

    mon = Monitor() if order == "old" else Monitor(order=order)
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
    ap.add_argument("--old", help="a checkout of an earlier build (with DIR/.venv): its batch mode as the baseline")
    ap.add_argument("--child", choices=sorted(ORDERS) + ["old"], help=argparse.SUPPRESS)
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
    cases = list(ORDERS)
    if a.old:
        old_py = Path(a.old) / ".venv" / "bin" / "python"
        if not old_py.is_file():
            raise SystemExit(f"semantics: no build of the old tree at {old_py} (bench/compare.py --old REV makes one)")
        cases.append("old")
    runs, last = interleaved_runs("semantics", cases, a.runs, lambda case: [
        str(old_py if case == "old" else MOSPY), __file__, "--child", case, "--pcap", str(pcap)], TIMEOUT)
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
    base = "old" if "old" in m else "batch"
    lines = [f"{pcap.name}: {any_out['packets']:,} packets, a CONN_NEW_DATA handler counting bytes "
             f"({any_out['events']:,} events, {any_out['bytes']:,} bytes); medians of {nruns} interleaved runs",
             f"{'order':<11} {'run s':>7} {'wall s':>7} {'peak RSS MiB':>13} {'feeds':>10} {'x ' + base:>8}"
             f"   runs (run s)"]
    for o, (run_s, wall, rss) in m.items():
        lines.append(f"{o:<11} {run_s:>7.2f} {wall:>7.2f} {rss / 2 ** 20:>13.0f} {outputs[o]['batches']:>10,} "
                     f"{run_s / m[base][0]:>8.2f}   " + ", ".join(f"{x[0]:.2f}" for x in runs[o]))
    for b in dict.fromkeys(("batch", base)):
        ratio = m["connection"][0] / m[b][0]
        verdict = f": target <= {TARGET:g}: {'met' if ratio <= TARGET else 'NOT met'}" if b == base else ""
        lines.append(f"connection/{b} time {ratio:.2f}{verdict}")
    report_section("semantics", "What the default order costs (issue 10)", lines, NOTE)

if __name__ == "__main__":
    main()
