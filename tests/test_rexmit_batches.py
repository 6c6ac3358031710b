"""Retransmission verdicts do not depend on batch boundaries (issue 9, item 8).

The engine hands events to Python once per batch and keeps delivered bytes until that batch's handlers are
done; how many packets a batch holds depends on the source's batch size and on timers (a timer due cuts the
batch at its time). A verdict on a retransmission (consistent, inconsistent, unverifiable) must be a
function of the capture and the settings alone. The rule: bytes the receiver acknowledged before a copy of
them arrived are not compared (the receiver ignores that copy: ``reasm_rexmit_unverifiable``), whatever is
still in memory; bytes delivered and not acknowledged yet are held, so a copy of them is always compared.

Each capture is run through `mos-xdp streams`, through a Monitor with batch sizes 1, 7, 64 and the default,
and through a Monitor with a periodic timer; the counters and every REXMIT/DATA_GAP/NEW_DATA event must be
the same in all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from scapy.all import TCP, Raw

from mos import Event, Monitor
from mos.source import BATCH, PcapSource
from mos.stats import BATCH_DEPENDENT, accounted
from tests import pcaps
from tests.conftest import run_cli
from tests.pcaps import Built, Conv, payload

BATCHES = [1, 7, 64, BATCH]
# how a run is cut into batches: a batch size, or a periodic timer (seconds of packet time) at the default size
CUTS: List[Tuple[str, float]] = [("batch", b) for b in BATCHES] + [("timer", 0.0005), ("timer", 0.003)]
NOT_VERDICTS = BATCH_DEPENDENT


def rexmit(c: Conv, off: int, data: bytes) -> None:
    """A client segment at stream offset `off` (a retransmission when off is behind the sender)."""
    c.emit(bytes(c.l2(True) / c.l3(True) / TCP(sport=c.cport, dport=c.sport, flags="PA",
                                               seq=c.off_seq(True, off), ack=c.nxt[False]) / Raw(data)))


def acked_then_changed() -> Built:
    """A request the server acknowledges, then a copy of it with other bytes, then the rest of the
    exchange: the server had acknowledged the bytes, so it ignores the copy; nothing to compare."""
    c = Conv(cport=40200)
    c.handshake()
    req = payload("Q", 120)
    c.send(True, req)                       # data, then the server's ACK
    rexmit(c, 0, b"X" * 120)                # the same sequence numbers, other bytes
    c.send(False, payload("R", 400))
    c.close()
    return c.built(req)


def unacked_then_changed() -> Built:
    """A request, a copy of it with other bytes before any acknowledgement, then the ACK: the bytes are held
    (not acknowledged yet), so the copy is compared and found inconsistent."""
    c = Conv(cport=40201)
    c.handshake()
    req = payload("Q", 120)
    c.send(True, req, ack_each=False)
    rexmit(c, 0, req[:50] + b"Y" * 20 + req[70:])
    c.tcp(False, "A")
    c.send(False, payload("R", 400))
    c.close()
    return c.built(req)


def mixed() -> Built:
    """Both cases in one connection, with the server's ACK covering half of a later segment: a copy
    straddling the ack point is unverifiable before it and compared after it."""
    c = Conv(cport=40202)
    c.handshake()
    a, b = payload("A", 200), payload("B", 200)
    c.send(True, a)                                       # acked
    c.tcp(True, "PA", payload=b)                          # [200, 400), not acked yet
    c.tcp(False, "A", ack=c.off_seq(True, 300))           # half of it acknowledged
    rexmit(c, 150, b"Z" * 200)                            # [150, 350): 150 acked, 50 held and different
    c.tcp(False, "A")
    c.send(False, payload("R", 300))
    c.close()
    return c.built(a + b)


BUILDERS = {"acked_then_changed": acked_then_changed, "unacked_then_changed": unacked_then_changed,
            "mixed": mixed, "retransmissions": pcaps.retransmissions}


def observe(pcap: Path, cut: Tuple[str, float], policy: str = "first") -> Tuple[Dict[str, int], List[tuple]]:
    """The counters (less the batch-dependent ones) and every verdict-bearing event, in order, of one run."""
    mon = Monitor(policy=policy)
    evs: List[tuple] = []
    mon.on(Event.REXMIT, lambda c, e: evs.append(("rexmit", c.id, int(e.side), e.offset, e.length,
                                                  e.inconsistent)))
    mon.on(Event.DATA_GAP, lambda c, e: evs.append(("gap", c.id, int(e.side), e.offset, e.length)))
    mon.on(Event.CONN_NEW_DATA, lambda c, e: evs.append(("data", c.id, int(e.side), e.offset, bytes(e.data))))
    mon.on(Event.CONN_END, lambda c, e: evs.append(("end", c.id, int(e.reason))))
    kind, n = cut
    if kind == "timer":
        mon.add_timer(n, lambda m: None, periodic=True)
        st = mon.run(PcapSource(str(pcap)))
    else:
        st = mon.run(PcapSource(str(pcap), batch=int(n)))
    assert st["packets"] == accounted(st)
    # each connection's events in its packet order; different connections' interleave by batch (order
    # "connection"), so they are compared connection by connection
    return {k: v for k, v in st.items() if k not in NOT_VERDICTS}, sorted(evs, key=lambda e: e[1])


def streams_counters(pcap: Path) -> Dict[str, int]:
    proc = run_cli(pcap, "--stats")
    assert proc.returncode == 0, proc.stderr
    out = {}
    for line in proc.stderr.decode().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def sweep(pcap: Path, policy: str = "first") -> Tuple[Dict[str, int], List[tuple]]:
    """Runs every cut; all must agree. Returns the common result."""
    first = observe(pcap, CUTS[0], policy)
    for cut in CUTS[1:]:
        got = observe(pcap, cut, policy)
        assert got[0] == first[0], (pcap.name, cut, {k: (first[0][k], v) for k, v in got[0].items()
                                                      if first[0].get(k) != v})
        assert got[1] == first[1], (pcap.name, cut)
    return first


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_verdicts_independent_of_batches(tmp_path, name):
    pcap = BUILDERS[name]().write(tmp_path / f"{name}.pcap")
    st, _ = sweep(pcap)
    # streams (its own batches, no Python per packet) says the same
    cli = streams_counters(pcap)
    for k in ("reasm_rexmit_inconsistent", "reasm_rexmit_unverifiable", "reasm_rexmit_bytes"):
        assert cli.get(k, 0) == st[k], k


def test_acked_bytes_are_not_compared(tmp_path):
    """The reproducer of the issue: before, `streams` (the request, its ACK and the copy in one batch) said
    inconsistent and a Monitor whose batch ended between the ACK and the copy said unverifiable."""
    st, evs = sweep(acked_then_changed().write(tmp_path / "a.pcap"))
    assert st["reasm_rexmit_inconsistent"] == 0
    assert st["reasm_rexmit_unverifiable"] == 120 == st["reasm_rexmit_bytes"]
    assert [e for e in evs if e[0] == "rexmit"] == [("rexmit", 1, 1, 0, 120, False)]


def test_unacked_bytes_are_compared(tmp_path):
    """An IDS still flags an inconsistent copy of bytes the receiver has not acknowledged, in every cut."""
    st, evs = sweep(unacked_then_changed().write(tmp_path / "u.pcap"))
    assert st["reasm_rexmit_inconsistent"] == 20
    assert st["reasm_rexmit_unverifiable"] == 0
    assert [e for e in evs if e[0] == "rexmit"] == [("rexmit", 1, 1, 0, 120, True)]


def test_copy_straddling_the_ack_point(tmp_path):
    st, evs = sweep(mixed().write(tmp_path / "m.pcap"))
    assert [e for e in evs if e[0] == "rexmit"] == [("rexmit", 1, 1, 150, 150, False),
                                                     ("rexmit", 1, 1, 300, 50, True)]
    assert st["reasm_rexmit_unverifiable"] == 150 and st["reasm_rexmit_inconsistent"] == 50


@pytest.mark.corpus
def test_corpus_suricata_verify_sweep(corpus_dir):
    """Every suricata-verify capture of the corpus: the same counters and events whatever the batches."""
    pcaps_sv = sorted((corpus_dir / "suricata-verify").glob("*/*.pcap"))
    assert len(pcaps_sv) > 20
    for pcap in pcaps_sv:
        sweep(pcap)


@pytest.mark.corpus
@pytest.mark.parametrize("capture", ["zeek/traces/tcp/reassembly.pcap", "pcapplusplus/ppp_retransmission.pcap",
                                     "zeek/traces/tcp/retransmit-fast009.pcap", "zeek/traces/tcp/ssh-dups.pcap"])
def test_corpus_retransmission_captures_sweep(corpus_dir, capture):
    sweep(corpus_dir / capture)
