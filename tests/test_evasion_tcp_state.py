"""Evasion-resistant TCP tracking (issue 9), items 1, 5 and 6: which RSTs end a connection, forged answers to
a SYN, a second SYN-ACK with another ISN, late retransmissions after the close.

Each capture is built here (tests/pcaps.py's Conv); the expected output is what the receiving host takes:
a RST only where the target's policy takes one (RFC 5961: at exactly RCV.NXT, but for old Linux and
Solaris), nothing a SYN_SENT endpoint discards, the stream anchored on the SYN-ACK the client acknowledged,
and no second connection from a retransmission its TIME_WAIT absorbs. When the endpoints go on talking
after a RST the engine took, the conversation is followed again (a second connection, an anomaly), so no
byte the host received goes unseen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import pytest

from mos import EndReason, ErrorKind, Side
from mos.events import Policy
from tests.conns import REQ1, REQ2, RESP, Conns
from tests.conns import run as run_conns
from tests.pcaps import Built, Conv

POLICIES = [p.value for p in Policy]
TAKES_ANY_IN_WINDOW = {"old-linux", "solaris"}  # the others follow RFC 5961


def run(tmp_path: Path, built: Built, policy: str = "first", **kw: object) -> Conns:
    """tests.conns.run, with every delivery contiguous (these captures have no gaps)."""
    return run_conns(tmp_path, built, policy, contiguous=True, **kw)


# ---------------------------------------------------------------------------------------------------------
# item 1: RST acceptance follows the target's policy


def rst_in_window(exact: bool, spoofed_from_client: bool) -> Built:
    """A RST spoofed from one side, in the window (at the next byte if `exact`, else 700 bytes past it), in
    the middle of a request; the endpoints go on as if nothing happened (a target that took it would not)."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    sender = spoofed_from_client
    seq = c.nxt[sender] + (0 if exact else 700)
    c.tcp(sender, "R", seq=seq, advance=False)
    c.send(True, REQ2)
    c.send(False, RESP)
    c.close()
    return c.built()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("spoofed_from_client", [True, False])
def test_rst_in_window_not_at_the_next_byte(tmp_path, policy, spoofed_from_client):
    r = run(tmp_path, rst_in_window(exact=False, spoofed_from_client=spoofed_from_client), policy)
    # whatever the policy, every byte the endpoints exchanged is seen
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    if policy in TAKES_ANY_IN_WINDOW:
        # the target would take it; the endpoints' talking on after it says it was not theirs
        assert r.counters["rst_accepted"] == 1
        assert len(r.streams) == 2 and r.ends[1] == EndReason.RST and r.ends[2] == EndReason.FIN
        assert ErrorKind.RST_INJECT_SUSPECTED in r.kinds()
        assert r.counters["rst_inject_suspected"] == 1
    else:
        # RFC 5961: a challenge ACK, the connection goes on
        assert r.counters["rst_accepted"] == 0
        assert r.kinds() == [ErrorKind.RST_CHALLENGED]
        assert r.counters["rst_challenged"] == 1
        assert len(r.streams) == 1 and r.ends[1] == EndReason.FIN


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("spoofed_from_client", [True, False])
def test_rst_at_the_next_byte_then_talk_goes_on(tmp_path, policy, spoofed_from_client):
    """An injected RST at exactly RCV.NXT is what every target takes; the real endpoints go on talking (the
    request's second half is the attack): the conversation is followed again, none of its bytes lost."""
    r = run(tmp_path, rst_in_window(exact=True, spoofed_from_client=spoofed_from_client), policy)
    assert r.counters["rst_accepted"] == 1
    assert r.ends[1] == EndReason.RST
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    assert r.streams[1][Side.SERVER] == REQ1
    assert REQ2 in r.streams[2][Side.SERVER]
    assert r.counters["rst_inject_suspected"] == 1
    (cid, kind, held), = [e for e in r.errors if e[1] == ErrorKind.RST_INJECT_SUSPECTED]
    assert cid == 2
    # the client's REQ2 came before the server said anything: held until the server's ACK showed that
    # both ends go on, then delivered first
    assert held == len(REQ2)
    assert ErrorKind.RST_INJECT_SUSPECTED.event_name == "stream.suspected_rst_inject"


def test_rst_crossing_data_is_not_a_conversation(tmp_path):
    """A real RST: the client's data already on its way is answered by another RST (no socket). One
    connection, the data in flight not delivered, nothing held afterwards."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(False, "R", advance=False)
    c.tcp(True, "PA", payload=REQ2)
    c.tcp(False, "R", seq=c.nxt[False], advance=False)
    r = run(tmp_path, c.built())
    assert len(r.streams) == 1 and r.ends[1] == EndReason.RST
    assert r.all(Side.SERVER) == REQ1
    assert r.counters["rst_inject_suspected"] == 0
    assert r.counters["conns_created"] == 1
    assert r.counters["memory_held"] == 0


def handshake_with_forged_answers(with_ts: bool) -> Tuple[Built, bytes, bytes]:
    """suricata-verify's bug-3286 evasion, rebuilt: the client's SYN is answered first by a forged RST-ACK
    and a forged FIN-ACK (both acknowledging the SYN, with a timestamp that echoes none of the client's),
    the client resets, then the real server's SYN-ACK comes and the conversation happens."""
    c = Conv()
    ts_syn = 1_821_165_629
    syn_opts = [("MSS", 1460), ("Timestamp", (ts_syn, 0))] if with_ts else [("MSS", 1460)]
    forged = [("Timestamp", (100, 100))]
    c.tcp(True, "S", options=syn_opts)
    c.tcp(False, "RA", seq=c.isn[False] - 5000, options=forged, advance=False)
    c.tcp(False, "FA", seq=c.isn[False] - 5000, options=forged, advance=False)
    c.tcp(True, "R", advance=False)
    real = [("Timestamp", (77_000, ts_syn))] if with_ts else []
    c.tcp(False, "SA", options=real)
    c.tcp(True, "A")
    req = b"GET / HTTP/1.1\r\nHost: 192.168.1.90\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nTHIS_IS_A_TEST"
    c.send(True, req)
    c.send(False, resp)
    return c.built(), req, resp


@pytest.mark.parametrize("policy", ["linux", "windows", "first", "old-linux"])
@pytest.mark.parametrize("with_ts", [True, False])
def test_forged_answers_to_a_syn_are_discarded(tmp_path, policy, with_ts):
    built, req, resp = handshake_with_forged_answers(with_ts)
    r = run(tmp_path, built, policy)
    assert r.all(Side.SERVER) == req
    assert r.all(Side.CLIENT) == resp
    assert r.counters["invalid_timestamp"] == 2
    assert ErrorKind.INVALID_TIMESTAMP.event_name == "stream.pkt_invalid_timestamp"
    # the client's own RST (at ISN+1: the server's SYN_RECEIVED takes it) ends the first record; the
    # client then talks on, so the conversation is taken up again
    assert r.counters["rst_accepted"] == 1
    assert r.counters["rst_inject_suspected"] == 1


def test_answer_that_acknowledges_no_syn_is_discarded(tmp_path):
    c = Conv()
    c.tcp(True, "S")
    c.tcp(False, "RA", seq=7, ack=c.isn[True] + 1000, advance=False)  # acknowledges nothing sent
    c.tcp(False, "SA")
    c.tcp(True, "A")
    c.send(True, REQ1)
    c.close()
    r = run(tmp_path, c.built())
    assert r.all(Side.SERVER) == REQ1
    assert r.kinds() == [ErrorKind.INVALID_ACK]
    assert r.counters["invalid_ack"] == 1
    assert r.ends == {1: EndReason.FIN}


def test_rst_acknowledging_syn_data_ends_the_connection(tmp_path):
    """A server refusing a SYN that carried data answers RST-ACK with ack = ISN+1+len: that RST is taken."""
    c = Conv()
    data = b"GET /tfo HTTP/1.1\r\n\r\n"
    c.tcp(True, "S", payload=data)
    c.tcp(False, "RA", seq=0, ack=c.nxt[True], advance=False)
    r = run(tmp_path, c.built())
    assert r.counters["rst_accepted"] == 1
    assert r.ends == {1: EndReason.RST}
    assert r.all(Side.SERVER) == b""  # a refused connection took nothing
    assert r.counters["invalid_ack"] == 0


# ---------------------------------------------------------------------------------------------------------
# item 6: a second SYN-ACK with another ISN


@pytest.mark.parametrize("acked", ["second", "first"])
def test_second_synack_with_another_isn(tmp_path, acked):
    c = Conv(sisn=500_000)
    c.tcp(True, "S")
    c.tcp(False, "SA")  # ISN 500000
    first_nxt = c.nxt[False]
    other = 800_000_000
    c.tcp(False, "SA", seq=other, advance=False)
    if acked == "second":
        c.isn[False] = other
        c.nxt[False] = other + 1
    else:
        c.nxt[False] = first_nxt
    c.tcp(True, "A")
    c.send(True, REQ1)
    c.send(False, RESP)
    c.close()
    r = run(tmp_path, c.built())
    assert r.all(Side.CLIENT) == RESP
    assert r.all(Side.SERVER) == REQ1
    assert len(r.streams) == 1
    assert r.counters["reasm_bytes_gap"] == 0
    assert r.kinds() == [ErrorKind.SYNACK_DIFF_SEQ]
    assert r.counters["synack_diff_seq"] == 1
    assert r.counters["synack_reanchored"] == (1 if acked == "second" else 0)
    assert ErrorKind.SYNACK_DIFF_SEQ.event_name == "stream.3whs_synack_resend_with_diff_seq"


# ---------------------------------------------------------------------------------------------------------
# item 5: late retransmissions after the close


def late_retransmission(after: float) -> Built:
    """The server's response and FIN retransmitted `after` seconds after the close (its last ACK lost)."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    resp_seq = c.nxt[False]
    c.send(False, RESP, mss=2000)
    fin_seq = c.nxt[False]
    c.close(first_client=False)
    c.t += after
    c.tcp(False, "PA", seq=resp_seq, payload=RESP)
    c.tcp(False, "FA", seq=fin_seq)
    c.tcp(True, "A")  # the client's TIME_WAIT answers
    return c.built()


def test_late_retransmission_is_no_new_connection(tmp_path):
    r = run(tmp_path, late_retransmission(15.0))
    assert r.counters["conns_created"] == 1
    assert r.counters["conns_picked_up"] == 0
    assert r.all(Side.CLIENT) == RESP  # not twice
    assert r.counters["rexmit_after_close"] == 2
    assert r.counters["data_after_close"] == 0


def test_time_wait_is_what_timeout_closed_sets(tmp_path):
    """Past the TIME_WAIT set (5 s here), the record is gone: the same retransmission is then a
    connection picked up mid-stream, as for any packet of an unknown connection."""
    r = run(tmp_path, late_retransmission(15.0), timeout_closed=5.0)
    assert r.counters["conns_created"] == 2
    assert r.counters["conns_picked_up"] == 1
