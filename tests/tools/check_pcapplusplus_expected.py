"""Sanity check: PcapPlusPlus's expected outputs vs the reference model (tests/tools/refmodel.py), with
the same connection matching and expected-file handling as tests/test_corpus_pcapplusplus.py.

Run: .venv/bin/python -m tests.tools.check_pcapplusplus_expected [--deferred] [CORPUS_DIR]
--deferred: an ACKed hole becomes a gap only when the receiver next sends data, at the sender's FIN/RST,
or at the end (otherwise: as soon as the ACK passes it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.test_corpus_pcapplusplus import (
    CASES,
    expected_bytes,
    flow_endpoints,
    flow_payload_chunks,
    pick_connection,
)

from .pktparse import decode, flows_in_order
from .refmodel import pcpp_text, run


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    corpus = Path(args[0]) if args else Path(__file__).resolve().parents[3] / "shared" / "corpus"
    deferred = "--deferred" in sys.argv
    bad = 0
    for case in CASES:
        path = corpus / "pcapplusplus" / case.pcap
        segs = decode(path)
        flows = flows_in_order([s for s in segs if s.is_tcp])
        model = run(segs, deferred=deferred)
        for exp_name in case.expected:
            raw = (corpus / "pcapplusplus" / exp_name).read_bytes()
            idx = pick_connection(raw, [flow_payload_chunks(f) for f in flows])
            exp = expected_bytes(corpus, case.pcap, exp_name, flows[idx])
            want = flow_endpoints(flows[idx])
            (conn, evs), = [(c, e) for c, e in model
                            if {(c.cli[0], c.cli[1])} <= {(str(a), p) for a, p in want}]
            got = pcpp_text(evs)
            ok = got == exp
            bad += not ok
            print(f"{'OK ' if ok else 'BAD'} {case.pcap} flow#{idx} {exp_name} got={len(got)} exp={len(exp)}")
            if not ok:
                n = next((i for i, (a, b) in enumerate(zip(got, exp)) if a != b), min(len(got), len(exp)))
                print("   first diff at", n, got[max(0, n - 40):n + 40], exp[max(0, n - 40):n + 40])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
