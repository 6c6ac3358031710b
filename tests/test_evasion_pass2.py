"""Second red-team pass over issue 9 (checksums, snaplen, PAWS, the window band, RST follow-again,
SYN_SENT discards, FIN superseded): each test is one confirmed finding, asserting what the receiving
host does. The docstrings say the attack (or the legit traffic), what the host does (the Linux function
or RFC section) and what the engine did before it was fixed.
"""

from __future__ import annotations

from mos import EndReason, ErrorKind, Side
from tests.conns import JUNK, REQ1, REQ2, RESP, held_nothing, run, ts
from tests.pcaps import Built, Conv, payload

# ---------------------------------------------------------------------------------------------------------
# 1. PAWS against a TS.Recent of 0: every segment of the connection dropped


def syn_tsval_zero(later: int) -> Built:
    """Both SYNs carry TSval 0 (TSecr 0); the segments that follow carry TSvals from `later` on."""
    c = Conv()
    c.tcp(True, "S", options=ts(0))
    c.tcp(False, "SA", options=ts(0, 0))
    c.tcp(True, "A", options=ts(later, 0))
    c.tcp(True, "PA", payload=REQ1 + REQ2, options=ts(later + 1, 0))
    c.tcp(False, "A", options=ts(later + 7, later + 1))
    c.tcp(False, "PA", payload=RESP, options=ts(later + 8, later + 1))
    c.tcp(True, "A", options=ts(later + 2, later + 8))
    c.tcp(True, "FA", options=ts(later + 3, later + 8))
    c.tcp(False, "FA", options=ts(later + 9, later + 3))
    c.tcp(True, "A", options=ts(later + 4, later + 9))
    return c.built()


def test_paws_ignores_a_ts_recent_of_zero(tmp_path):
    """Legit traffic (and an evasion): some stacks send their SYN and SYN-ACK with TSval 0, and their
    later segments with their real clock, which for a random per-connection offset (Linux, RFC 7323
    5.4) is "older" than 0 in 32-bit serial arithmetic half of the time (here 0x90000000).

    Host: Linux tcp_paws_check() accepts any TSval when ts_recent is 0 ("Some OSes send SYN and SYNACK
    messages with tsval=0 tsecr=0, then following tcp messages have valid values. Ignore 0 value");
    FreeBSD tcp_input applies PAWS only when tp->ts_recent is non-zero. Both ends get every byte and
    the FINs.

    Engine: paws_discards() compares with the SYN's TSval 0: (int32_t)(0 - 0x90000000) > 1, so every
    data segment and FIN of both sides is discarded (INVALID_TIMESTAMP), and TS.Recent never moves
    (seq_gt(0x90000000, 0) is false): both streams are empty and the connection ends at EOF. An evader
    needs only a client that sends TSval 0 on its SYN."""
    r = run(tmp_path, syn_tsval_zero(0x9000_0000), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    assert ErrorKind.INVALID_TIMESTAMP not in r.kinds()
    assert r.ends == {1: EndReason.FIN}
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 2. A retried SYN with another ISN: the connection is blind


def syn_retried_with_new_isn(delta: int) -> Built:
    """A first SYN (ISN A) that the server never answers (lost past the capture point, or sent with a
    TTL that dies before the server), then a SYN with ISN A + delta that the server answers."""
    c = Conv(cisn=1_000_000)
    c.tcp(True, "S")
    c.isn[True] = c.nxt[True] = 1_000_000 + delta
    c.tcp(True, "S")
    c.tcp(False, "SA")
    c.tcp(True, "A")
    c.send(True, REQ1 + REQ2)
    c.send(False, RESP)
    c.close()
    return c.built()


def test_retried_syn_with_a_lower_isn_is_followed(tmp_path):
    """Attack: the evader sends a SYN with ISN A that does not reach the server, then its real SYN with
    ISN A - 500000 (a client that reconnects from the same port with a new socket does the same: each
    connect() draws a new ISN).

    Host: the server only knows the second SYN; its SYN-ACK acknowledges ISN B + 1, the client accepts it
    (RFC 9293 3.10.7.3: ISS < SEG.ACK =< SND.NXT for the client's current ISS), the connection runs.

    Engine: sender_update() keeps the first SYN's ISN (a SYN with another seq is neither a new SYN nor a
    retransmission) and syn_sent_discards() drops the SYN-ACK and every later packet of the server as
    INVALID_ACK (ack B + 1 is not after A): the client stays SYN_SENT, nothing of either direction is
    delivered, and the connection ends at EOF. (With a higher ISN the bytes come through after a
    phantom 500000-byte gap.)"""
    r = run(tmp_path, syn_retried_with_new_isn(-500_000), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    assert r.counters["invalid_ack"] == 0
    assert r.ends == {1: EndReason.FIN}
    held_nothing(r)


def test_retried_syn_with_a_higher_isn_has_no_phantom_gap(tmp_path):
    """The same with ISN A + 500000. Host: as above. Engine: the server's stream is anchored at A + 1,
    so the request comes after a 500000-byte gap (DATA_GAP) that no host saw."""
    r = run(tmp_path, syn_retried_with_new_isn(500_000), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.counters["reasm_bytes_gap"] == 0
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 3. Port reuse with the same ISN after a FIN close: the new connection is invisible


def test_same_isn_syn_after_a_fin_close_is_a_new_connection(tmp_path):
    """Attack: the evader's client closes a connection first (FIN, FIN, ACK: the server's side is CLOSED
    after LAST_ACK, the client's in TIME_WAIT, which its raw socket ignores), then a second later opens
    a new one on the same 4-tuple with the old ISN and sends the request to hide.

    Host: the server has no socket for the 4-tuple any more; the SYN reaches the listener
    (tcp_v4_rcv -> tcp_conn_request), which answers with a SYN-ACK of a new ISN acknowledging the SYN;
    the handshake completes and the server receives REQ2.

    Engine: process_packet()'s closed branch calls a SYN new only if its ISN differs (or after a RST):
    the SYN, the server's SYN-ACK and every later packet are stragglers of the lingering record
    (rexmit_after_close / data_after_close), each refreshing its 60 s linger, so a whole connection
    goes unseen without any anomaly. The server's SYN-ACK with a new ISN that acknowledges the SYN says
    a new connection began."""
    c = Conv()
    isn = c.isn[True]
    c.handshake()
    c.send(True, REQ1)
    c.send(False, RESP)
    c.close(first_client=True)
    c.t += 1.0
    c.nxt[True] = isn
    c.isn[False] = c.nxt[False] = 900_000
    c.handshake()
    c.send(True, REQ2)
    c.send(False, RESP)
    c.close(first_client=True)
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.counters["conns_created"] == 2
    assert r.ends == {1: EndReason.FIN, 2: EndReason.FIN}
    assert r.counters["data_after_close"] == 0
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 4. RST follow-again: what is held before both ends talk can be lost


def test_bogus_second_rst_does_not_drop_held_bytes(tmp_path):
    """Attack: a RST at RCV.NXT that does not reach the server (TTL-limited), the request to hide, then a
    second RST 3 MB out of any window; the server acknowledges the request and answers.

    Host: the server never saw the first RST; the second is out of window (RFC 5961 3.2, Linux
    tcp_validate_incoming -> tcp_sequence() false: discarded). It receives REQ1 + REQ2.

    Engine: tcp_after_rst() drops everything held on any RST of the 4-tuple, whatever its sequence number
    (and forgets who talked): REQ2, held until the server talks, is gone when the conversation is
    followed again (RST_INJECT_SUSPECTED with length 0)."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(True, "R", advance=False)
    c.tcp(True, "PA", payload=REQ2)
    c.tcp(True, "R", seq=c.nxt[True] + 3_000_000, advance=False)
    c.tcp(False, "A")
    c.send(False, RESP)
    c.close()
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    held_nothing(r)


def test_reordered_bytes_after_an_unseen_rst_are_held(tmp_path):
    """Attack: a TTL-limited RST at RCV.NXT, then the request to hide in two segments sent in reverse
    order, then the server acknowledges both.

    Host: never saw the RST; queues the second segment out of order (tcp_data_queue_ofo) and delivers
    both when the first comes: REQ1 + REQ2.

    Engine: tcp_after_rst() holds only a segment at exactly the sender's snd_nxt + what is held; the
    first-sent (later) segment is dropped as data_after_close, and after the follow-again it is a
    17-byte gap: the end of REQ2 is unseen."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(True, "R", advance=False)
    s = c.nxt[True]
    c.tcp(True, "PA", seq=s + 10, payload=REQ2[10:], advance=False)
    c.tcp(True, "PA", seq=s, payload=REQ2[:10], advance=False)
    c.nxt[True] = s + len(REQ2)
    c.tcp(False, "A")
    c.send(False, RESP)
    c.close()
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.counters["reasm_bytes_gap"] == 0
    held_nothing(r)


BIG = payload("B", 100_000)


def test_burst_past_64k_after_an_unseen_rst_is_seen(tmp_path):
    """Attack: a TTL-limited RST at RCV.NXT, then 100 KB in one burst before the server's first ACK
    (window scaling negotiated; a capture point near the client sees the burst an RTT before the
    server's answer).

    Host: never saw the RST; receives REQ1 + the 100 KB.

    Engine: tcp_after_rst() holds 64 KiB (RST_HOLD_LIMIT) of the RST sender's bytes until its peer
    talks; the rest is dropped as data_after_close, and after the follow-again it is a 35000-byte gap:
    whatever the evader puts past 64 KiB is unseen."""
    c = Conv()
    c.handshake(syn_opts=[("WScale", 7)], synack_opts=[("WScale", 7)])
    c.send(True, REQ1)
    c.tcp(True, "R", advance=False)
    c.send(True, BIG, mss=1000, ack_each=False)
    c.tcp(False, "A")
    c.send(False, RESP)
    c.close()
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ1 + BIG
    assert r.counters["reasm_bytes_gap"] == 0
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 5. FIN superseded: the FIN of the superseding segment is lost


def test_fin_on_the_superseding_segment_is_taken(tmp_path):
    """Attack: a bare FIN 10 bytes past RCV.NXT (queued out of order by the server), then REQ2 with the
    FIN flag (covering the first FIN's sequence number), then junk just past the real FIN.

    Host: Linux queues REQ2+FIN in order, tcp_fin() moves it to CLOSE_WAIT, and tcp_ofo_queue() drops
    the stale FIN; the junk at rcv_nxt in CLOSE_WAIT is not queued (tcp_rcv_state_process step 7:
    !before(seq, rcv_nxt) -> break; RFC 9293 3.10.7.4 ignores text after a FIN). The server receives
    REQ1 + REQ2; the connection ends by FINs.

    Engine: sender_update() ignores the new segment's FIN (a FIN is already recorded), then
    receive_data() finds the old FIN covered and fin_superseded() clears it: no FIN is left, the junk is
    delivered as stream bytes, the server never reaches CLOSE_WAIT and the connection ends at EOF (a
    1-byte phantom gap where the real FIN was)."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(True, "FA", seq=c.nxt[True] + 10, advance=False)
    c.tcp(False, "A")
    c.tcp(True, "FPA", payload=REQ2)
    c.tcp(False, "A")
    c.tcp(True, "PA", payload=JUNK, seq=c.nxt[True], advance=False)
    c.tcp(False, "A")
    c.send(False, RESP)
    c.tcp(False, "FA")
    c.tcp(True, "A")
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert JUNK not in r.all(Side.SERVER)
    assert r.ends == {1: EndReason.FIN}
    assert r.counters["reasm_bytes_gap"] == 0
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 6. The window band drops legit data after a capture loss


def test_data_after_a_capture_loss_larger_than_the_window_is_kept(tmp_path):
    """Legit traffic: the capture misses 70 KB of a transfer, both directions (a capture buffer
    overrun), with a 64 KiB window; the next segment it sees starts 70 KB past the stream, then the
    server's ACK of it (which says the host took it: it waited apart until then).

    Host: received everything (the loss was the capture's); the segment is in its window.

    Engine: beyond_window() takes the first segment after the loss for one just past the window (base +
    wnd < off <= base + 2 wnd + 64 KiB: its base is the last ACK the capture saw) and discards it
    (OUT_OF_WINDOW); the server's ACK then makes its 1000 bytes part of a gap. A loss of 150 KB (past
    the band) keeps the segment: what is dropped depends on how much the capture lost."""
    c = Conv()
    c.handshake()
    data = payload("D", 200_000)
    c.send(True, data[:50_000])
    n = len(c.records)
    c.send(True, data[50_000:120_000])
    del c.records[n:]
    c.send(True, data[120_000:], mss=1000)
    c.send(False, RESP)
    c.close()
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == data[:50_000] + data[120_000:]
    assert r.gaps[1][Side.SERVER] == 70_000
    held_nothing(r)
    assert r.counters["out_of_window_taken"] == 1
