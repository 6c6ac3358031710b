"""Attacks on the TCP tracker (a red-team pass over issue 9): what the engine reports as a stream must be
what the receiving host accepted (RFC 9293, RFC 5961, the target's policy).

Each test is one finding of that pass: a capture an evader can produce (built here with tests/pcaps.py's
Conv) on which the engine's streams differed from what a Linux (or Windows) receiver takes. Each asserts
the host's view. The docstrings say what the attacker does, what the host does and why (the Linux
function that decides, or the RFC), and what the engine did before it was fixed.
Every run also checks the accounting (each packet in exactly one disposition) and that no memory is
held once the capture is done.
"""

from __future__ import annotations

from typing import List, Tuple

import pytest
from scapy.all import TCP, Ether

from mos import EndReason, ErrorKind, Side
from tests.conns import JUNK, REQ1, REQ2, RESP, held_nothing, run, ts
from tests.pcaps import Built, Conv, payload

# ---------------------------------------------------------------------------------------------------------
# 1. A RST at the end of an out-of-window segment ends the connection; the rest is absorbed unseen


def rst_after_out_of_window_segment(far: int) -> Built:
    """The client sends a segment `far` bytes past what the server acknowledged, then a RST at its end;
    then it goes on with its request as if nothing happened."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    jseq = c.nxt[True] + far
    c.tcp(True, "PA", seq=jseq, payload=JUNK, advance=False)
    c.tcp(False, "A")  # the server's duplicate ACK: it took nothing
    c.tcp(True, "R", seq=jseq + len(JUNK), advance=False)
    c.send(True, REQ2)
    c.send(False, RESP)
    c.close()
    return c.built()


@pytest.mark.parametrize("policy", ["linux", "windows", "bsd"])
def test_rst_at_end_of_out_of_window_segment_is_not_taken(tmp_path, policy):
    """Attack: the evader (client) first sends a few bytes 1 MB past RCV.NXT (the server's window is 64 KiB,
    no scaling), then a RST whose sequence number is the end of those bytes, then its real request.

    Host: the out-of-window segment fails the acceptability test (RFC 9293 3.10.7.4; Linux
    tcp_validate_incoming -> tcp_sequence() false: a duplicate ACK, the segment is discarded), and so
    does the RST (same test; Linux discards an out-of-window RST silently, RFC 5961 3.2). The connection
    goes on; the server receives REQ1 + REQ2 and the client the response.

    Engine: sender_update() takes the junk segment's end as the client's snd_nxt, and rst_verdict()
    accepts a RST at `S->snd_nxt` before it asks whether the RST is in the window at all. The
    connection ends (RST), its flush delivers the junk bytes (after a 1 MB gap) as what the server
    received; the RST's sender then talks "in its own sequence space" only relative to the inflated
    snd_nxt (1 MB away, more than a window), so no RST_INJECT_SUSPECTED recovery happens: every later
    packet is counted as a late retransmission of the closed connection (`rexmit_after_close`) and
    refreshes its linger. The rest of the conversation is invisible (silent blindness)."""
    r = run(tmp_path, rst_after_out_of_window_segment(far=1_000_000), policy)
    assert r.counters["rst_accepted"] == 0
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    assert JUNK not in r.all(Side.SERVER)
    assert len(r.streams) == 1 and r.ends == {1: EndReason.FIN}
    assert r.counters["rexmit_after_close"] == 0 and r.counters["data_after_close"] == 0
    assert ErrorKind.RST_OUT_OF_WINDOW in r.kinds()
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 2. A RST at the end of an out-of-order segment, no SACK: Linux and the BSDs challenge it


@pytest.mark.parametrize("policy", ["linux", "bsd"])
def test_rst_at_end_of_out_of_order_segment_without_sack(tmp_path, policy):
    """Attack: the client sends junk 2000 bytes past RCV.NXT (inside the window, so it is queued out of
    order), the server answers with a duplicate ACK at RCV.NXT, then the client sends a RST at the end of
    the junk and goes on with its request. The SYNs carry no SACK-permitted option.

    Host: Linux tcp_validate_incoming() resets only for SEG.SEQ == RCV.NXT, or == the right edge of its
    SACK blocks when SACK is in use (tcp_is_sack(tp) && rx_opt.num_sacks): with no SACK negotiated, the
    RST is answered with a challenge ACK (RFC 5961 3.2). FreeBSD's tcp_input resets only at exactly
    last_ack_sent. The connection goes on; the junk stays in the out-of-order queue until the FIN purges
    it (tcp_fin -> skb_rbtree_purge(out_of_order_queue)): never delivered.

    Engine: rst_verdict() takes a RST at the sender's snd_nxt ("bytes on their way"), though the
    receiver's own duplicate ACK after the junk shows they are not on their way but held out of order.
    The connection is reset; what follows is taken up again as a second, picked-up connection, and
    the junk is flushed into the first one's stream (after a gap) as received."""
    r = run(tmp_path, rst_after_out_of_window_segment(far=2000), policy)
    assert r.counters["rst_accepted"] == 0
    assert r.kinds().count(ErrorKind.RST_CHALLENGED) == 1
    assert len(r.streams) == 1 and r.ends == {1: EndReason.FIN}
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 3. A real RST, then the sender talks on: the engine delivers bytes the host refused


def real_rst_then_talk() -> Built:
    """The client resets the connection at exactly RCV.NXT (a RST every target takes), then sends more
    data on the same 4-tuple; the server's stack, which has no connection any more, answers with a RST."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(True, "R", advance=False)
    c.tcp(True, "PA", payload=REQ2)
    c.tcp(False, "R", seq=c.nxt[False], advance=False)  # RFC 9293 3.10.7.1: RST with seq = SEG.ACK
    return c.built()


@pytest.mark.parametrize("policy", ["linux", "windows"])
def test_data_after_a_real_rst_is_refused(tmp_path, policy):
    """Attack (phantom delivery): the client resets at RCV.NXT, then sends REQ2 in its old sequence space.

    Host: the RST at RCV.NXT is acceptable (RFC 5961 3.2): Linux tcp_reset() -> tcp_done(), the socket
    is gone. REQ2 then finds only the listener: tcp_rcv_state_process() in LISTEN returns 1 for a segment
    with ACK, and tcp_v4_do_rcv() answers with a RST (RFC 9293 3.10.7.1: an ACK to a LISTEN gets
    <SEQ=SEG.ACK><CTL=RST>). The server's application never receives REQ2; the capture shows the
    server's refusal.

    Engine: tcp_after_rst() sees the RST's sender talk on in its own sequence space, takes the RST for an
    injected one and delivers REQ2 at once on a new, picked-up connection (RST_INJECT_SUSPECTED), which the
    server's RST then ends: a phantom connection with bytes no host received. Telling the two apart needs
    the peer's answer (an ACK: the RST was not its peer's; a RST: it was), as the held bytes of the other
    direction already wait for one."""
    r = run(tmp_path, real_rst_then_talk(), policy)
    assert r.all(Side.SERVER) == REQ1
    assert REQ2 not in r.all(Side.SERVER)
    assert r.counters["conns_created"] == 1
    assert r.counters["rst_inject_suspected"] == 0
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 4. PAWS: a segment with a stale timestamp is an insertion


def paws_insertion(order_junk_first: bool = True) -> Built:
    """Timestamps negotiated; the client sends, at RCV.NXT, junk with a TSval far older than the last
    one, then the real bytes at the same sequence numbers with a current TSval."""
    c = Conv()
    c.tcp(True, "S", options=ts(100_000))
    c.tcp(False, "SA", options=ts(7_000, 100_000))
    c.tcp(True, "A", options=ts(100_001, 7_000))
    c.tcp(True, "PA", payload=REQ1, options=ts(100_002, 7_000))
    c.tcp(False, "A", options=ts(7_001, 100_002))
    seq = c.nxt[True]
    c.tcp(True, "PA", payload=JUNK[:len(REQ2)], seq=seq, advance=False, options=ts(50_000, 7_001))
    c.tcp(False, "A", options=ts(7_002, 100_002))  # the duplicate ACK PAWS sends
    c.tcp(True, "PA", payload=REQ2, options=ts(100_003, 7_002))
    c.tcp(False, "A", options=ts(7_003, 100_003))
    c.tcp(False, "PA", payload=RESP, options=ts(7_004, 100_003))
    c.tcp(True, "A", options=ts(100_004, 7_004))
    c.tcp(True, "FA", options=ts(100_005, 7_004))
    c.tcp(False, "FA", options=ts(7_005, 100_005))
    c.tcp(True, "A", options=ts(100_006, 7_005))
    return c.built()


@pytest.mark.parametrize("policy", ["linux", "bsd"])
def test_paws_rejected_segment_is_not_delivered(tmp_path, policy):
    """Attack: Ptacek-Newsham insertion by PAWS. The evader sends its decoy at RCV.NXT with TSval 50000
    while the last TSval the server took was 100002, then the real bytes with TSval 100003.

    Host: Linux tcp_validate_incoming() -> tcp_paws_discard(): ts_recent - rcv_tsval > TCP_PAWS_WINDOW
    (1) on a data segment (not a "disordered ack") -> duplicate ACK, segment discarded (RFC 7323 5.3).
    The server receives REQ1 + REQ2.

    FreeBSD tcp_input does the same (TSTMP_LT(to_tsval, ts_recent): drop, ACK).

    Engine: no PAWS check outside SYN_SENT; the decoy is in order, delivered at once, and the real bytes
    become a retransmission that loses (inconsistent REXMIT): the stream shows the decoy."""
    r = run(tmp_path, paws_insertion(), policy)
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 5. A bad TCP checksum is an insertion


def bad_checksum_insertion() -> Built:
    """The client sends a decoy at RCV.NXT with a wrong TCP checksum, then the real bytes there."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    seq = c.nxt[True]
    good = c.tcp(True, "PA", payload=JUNK[:len(REQ2)], seq=seq, advance=False)
    c.records.pop()
    bad = Ether(bytes(good))
    bad[TCP].chksum = (bad[TCP].chksum + 1) & 0xFFFF
    c.emit(bytes(bad))
    c.send(True, REQ2)
    c.send(False, RESP)
    c.close()
    return c.built()


@pytest.mark.parametrize("policy", ["linux", "windows", "bsd"])
def test_bad_checksum_segment_is_not_delivered(tmp_path, policy):
    """Attack: the classic insertion (Ptacek & Newsham 1998, 3.1): a decoy segment with a wrong TCP
    checksum at RCV.NXT, then the real bytes.

    Host: every stack drops a segment whose checksum fails (RFC 9293 3.1; Linux tcp_v4_rcv ->
    tcp_checksum_complete -> csum_error, discarded before the socket sees it). The server receives
    REQ1 + REQ2.

    Engine: decode.c never verifies the TCP checksum; the decoy is delivered in order and the real
    bytes lose as an inconsistent retransmission. (Captures taken on the sending host with checksum
    offload carry wrong checksums on every outgoing packet, which is why Suricata checks them in "auto"
    mode: only while most packets' checksums are right. The fix is not to trust every checksum blindly,
    but the engine should at least not let a single bad one win.)"""
    r = run(tmp_path, bad_checksum_insertion(), policy)
    assert r.all(Side.SERVER) == REQ1 + REQ2
    assert r.all(Side.CLIENT) == RESP
    held_nothing(r)



# ---------------------------------------------------------------------------------------------------------
# 6. A connection ended by a RST keeps its reassembly memory through its linger


def reset_floods_then_victim(n: int, size: int) -> Tuple[Built, bytes]:
    """`n` connections each send `size` bytes the server has not acknowledged yet, then reset; then a
    victim connection whose request arrives in two segments, out of order."""
    from tests.pcaps import Built as B

    recs: List[Tuple[float, bytes, int]] = []
    for i in range(n):
        c = Conv(cport=20000 + i, t0=1000.0 + i * 0.1)
        c.handshake()
        c.send(True, payload(f"F{i}-", size), ack_each=False)
        c.tcp(True, "R", advance=False)
        recs += c.records
    v = Conv(cport=30000, t0=1000.0 + n * 0.1 + 1)
    v.handshake()
    first = v.nxt[True]
    v.tcp(True, "PA", seq=first + len(REQ1), payload=REQ2, advance=False)
    v.tcp(True, "PA", payload=REQ1)
    v.nxt[True] += len(REQ2)
    v.tcp(False, "A")
    v.send(False, RESP)
    v.close()
    recs += v.records
    recs.sort(key=lambda r: r[0])
    return B(recs), REQ1 + REQ2


def test_reset_connections_release_their_memory(tmp_path):
    """Attack (memory cap exhaustion): 20 connections each push 60 KB that the server has not
    acknowledged yet and reset at once; a victim connection's request then arrives out of order.

    Host: each server socket is gone at the RST (tcp_reset -> tcp_done frees its queues); nothing of a
    reset connection is kept, TIME_WAIT or not (a reset connection has no TIME_WAIT: RFC 9293 3.10.7.4,
    "enter the CLOSED state, delete the TCB"). The victim's server receives REQ1 + REQ2.

    Engine: engine_end_conn() flushes the streams of a connection ended by RST and puts the record in
    the closed-linger class with its reassembly buffers still allocated (the bytes were delivered but
    are never trimmed or released until the linger expires, 60 s, extended by every straggler); a
    FIN end, whose last ACK acknowledged everything, holds nothing. So every reset connection keeps up
    to its direction buffer limit (8 MiB by default) against the global memcap: here 20 x 64 KB fill a
    1 MiB memcap and the victim's out-of-order segment is dropped (MEMCAP), and memory_held is not 0
    at the end of the capture."""
    built, expect = reset_floods_then_victim(20, 60_000)
    r = run(tmp_path, built, "linux", memcap=1 << 20)
    victim = max(r.streams)
    assert r.streams[victim][Side.SERVER] == expect
    assert r.counters["reasm_limit_memcap"] == 0
    assert ErrorKind.MEMCAP not in r.kinds()
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 7. The first FIN seen is taken as the FIN, whether the receiver accepted it or not


def spurious_fin(far: int, after: bytes) -> Built:
    """The client sends a bare FIN `far` bytes past RCV.NXT (the server answers with a duplicate ACK),
    then `after`, then the real close."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(True, "FA", seq=c.nxt[True] + far, advance=False)
    c.tcp(False, "A")
    c.send(True, after)
    c.send(False, RESP)
    c.close()
    return c.built()


BULK = payload("K", 150_000)


@pytest.mark.parametrize("far, after", [(10, REQ2), (100_000, BULK)], ids=["out-of-order", "out-of-window"])
def test_spurious_fin_does_not_end_the_stream(tmp_path, far, after):
    """Attack: a FIN the server does not take, before the bytes to hide: either 10 bytes past RCV.NXT
    (queued out of order; the next data segment covers its sequence number), or 100 KB past it (out of a
    64 KiB window).

    Host: out of window, Linux tcp_validate_incoming() drops the FIN (tcp_sequence() false, duplicate
    ACK). Out of order, it is queued (tcp_data_queue_ofo); when the in-order data covering it arrives,
    tcp_ofo_queue() finds its end_seq not after rcv_nxt and drops it without calling tcp_fin()
    (SKB_DROP_REASON_TCP_OFO_DROP). Either way the FIN means nothing: the server receives every byte
    that follows, and the connection ends with the real FINs.

    Engine: sender_update() records the first FIN it sees (fin_seen, fin_seq) and never a later one.
    Every byte past the spurious FIN's sequence number is dropped as DATA_AFTER_FIN ("the receiver ignores
    them"), which hides the rest of the request; the real FIN is ignored, so the connection does not end
    by FIN but at EOF (live: at the idle timeout, 10 minutes later)."""
    r = run(tmp_path, spurious_fin(far, after), "linux")
    assert r.all(Side.SERVER) == REQ1 + after
    assert r.all(Side.CLIENT) == RESP
    assert r.counters["data_after_fin"] == 0
    assert r.ends == {1: EndReason.FIN}
    held_nothing(r)


def test_bytes_held_after_a_rst_are_freed(tmp_path):
    """The client resets at RCV.NXT (a real RST); the server's response, already on its way, crosses it;
    nothing follows.

    Host: the client's socket is gone; the response is answered by a RST and dropped (tcp_v4_rcv finds
    no socket). Nothing is kept anywhere.

    Engine: tcp_after_rst() holds the server's in-order bytes in the SYN stash of the closed record, in
    case the RST was injected and the conversation is taken up again. Nobody takes it up; the stash is
    dropped only when the record is released at the end of its linger. mos_engine_finish() ends the live
    connections but does not release lingering records, so memory_held stays at 916 after the capture
    (900 bytes and the stash header), and in a live run each such record keeps its 64 KiB allowance for
    the linger, renewed by every straggler."""
    c = Conv()
    c.handshake()
    c.send(True, REQ1)
    c.tcp(True, "R", advance=False)
    c.tcp(False, "PA", payload=RESP)
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ1 and r.all(Side.CLIENT) == b""
    assert r.ends == {1: EndReason.RST}
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 8. A decoy just past the receiver's window wins over the real bytes


def decoy_past_window(off: int) -> Tuple[Built, bytes]:
    """The client first sends 1000 bytes of decoy at stream offset `off` (past the server's 65535-byte
    window, which never grows: no scaling), then 80 KB of real data in 1000-byte segments, each acked."""
    c = Conv()
    c.handshake()
    data = payload("D", 80_000)
    c.tcp(True, "PA", seq=c.nxt[True] + off, payload=b"J" * 1000, advance=False)
    c.tcp(False, "A")  # the server's duplicate ACK: it took nothing
    c.send(True, data, mss=1000)
    c.send(False, RESP)
    c.close()
    return c.built(), data


@pytest.mark.parametrize("policy", ["linux", "windows", "bsd"])
def test_decoy_past_the_window_does_not_win(tmp_path, policy):
    """Attack: insertion by window. The evader sends its decoy at RCV.NXT + 70000 while the server's
    window is 65535 (advertised on every segment, never scaled), then the real bytes; the real segment
    at offset 70000 has the decoy's start and length.

    Host: the decoy fails the acceptability test (RFC 9293 3.10.7.4: RCV.NXT =< SEG.SEQ < RCV.NXT +
    RCV.WND; Linux tcp_sequence() against rcv_nxt + tcp_receive_window()): a duplicate ACK, dropped,
    never queued. When the real bytes arrive at offset 70000 (the window has moved with the ACKs), they
    are the stream.

    Engine: receive_data() holds out-of-window data "as Zeek does", and raises OUT_OF_WINDOW only past
    2 x window + 64 KiB, so here silently. The held decoy is then the "old" segment of an overlap with
    the real one (same start, same length), and every policy keeps old bytes in that case: the
    stream shows 1000 x "J" where the host has the real data, and no anomaly says so."""
    built, data = decoy_past_window(70_000)
    r = run(tmp_path, built, policy)
    assert r.all(Side.SERVER) == data
    assert r.all(Side.CLIENT) == RESP
    held_nothing(r)


# ---------------------------------------------------------------------------------------------------------
# 9. A new handshake with the same ISN after a RST is taken for an injected RST


def test_same_isn_syn_after_rst_is_a_new_connection(tmp_path):
    """A client aborts its half-open connection (RST at ISN+1 after the SYN-ACK) and connects again on
    the same 4-tuple with the same ISN (a raw-socket client, or a stack whose ISN clock did not move);
    the server answers with a new SYN-ACK (another ISN), the handshake completes and the request goes.

    Host: the RST removes the request socket (Linux tcp_check_req: RST -> the request is dropped); the
    new SYN reaches the listener and makes a new connection (tcp_conn_request), whose SYN-ACK is in the
    capture. Nothing was injected.

    Engine: the closed-connection branch of process_packet() calls a SYN "new" only if its ISN differs
    from the old one, so this SYN and the server's new SYN-ACK are absorbed as stragglers of the reset
    record; the client's next segment is then in the RST sender's sequence space, so tcp_after_rst()
    takes the first RST for an injected one: RST_INJECT_SUSPECTED is raised and the new connection is a
    pick-up, though its whole handshake was seen (a false alarm and wrong counters; the bytes are
    right)."""
    c = Conv()
    isn = c.isn[True]
    c.tcp(True, "S")
    c.tcp(False, "SA")
    c.tcp(True, "R", advance=False)
    c.nxt[True] = isn
    c.isn[False] = c.nxt[False] = 777_000
    c.handshake()
    c.send(True, REQ2)
    c.send(False, RESP)
    c.close()
    r = run(tmp_path, c.built(), "linux")
    assert r.all(Side.SERVER) == REQ2 and r.all(Side.CLIENT) == RESP
    assert r.counters["rst_inject_suspected"] == 0
    assert ErrorKind.RST_INJECT_SUSPECTED not in r.kinds()
    assert r.counters["conns_created"] == 2 and r.counters["conns_picked_up"] == 0
    assert r.ends == {1: EndReason.RST, 2: EndReason.FIN}
    held_nothing(r)
