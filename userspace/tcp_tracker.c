/* Both endpoints' TCP state machines; see tcp_tracker.h for the model. */
#include "tcp_tracker.h"

#include "engine_state.h"


#define ACKED_HOLE_PATIENCE (64u << 10) /* bytes sent past an acknowledged hole before it is a gap */

/* ---- one function per state: the next state on an input ---------------------------------------- */

/* Each returns the state its endpoint goes to on an input, its own state when the input changes
 * nothing there. An acceptable RST closes every state (CLOSED's default). */
static int st_closed(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_SND_SYN: return MOS_TCP_SYN_SENT;
    case TCP_IN_SND_SYNACK: /* picked up at the SYN-ACK, or its SYN was not seen */
    case TCP_IN_RCV_SYN: return MOS_TCP_SYN_RECEIVED;
    default: return MOS_TCP_CLOSED;
    }
}

static int st_listen(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_SND_SYNACK:
    case TCP_IN_RCV_SYN: return MOS_TCP_SYN_RECEIVED;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_LISTEN;
    }
}

static int st_syn_sent(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_SND_ACK_OF_SYN: /* the peer's SYN-ACK arrived, though not captured */
    case TCP_IN_RCV_SYNACK: return MOS_TCP_ESTABLISHED;
    case TCP_IN_RCV_SYN: return MOS_TCP_SYN_RECEIVED; /* simultaneous open */
    case TCP_IN_SND_FIN:
    case TCP_IN_SND_FIN_CROSSED: return MOS_TCP_FIN_WAIT_1;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_SYN_SENT;
    }
}

static int st_syn_received(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_RCV_SYNACK: /* simultaneous open: the peer's SYN-ACK acknowledges ours */
    case TCP_IN_RCV_ACK_OF_SYN: return MOS_TCP_ESTABLISHED;
    case TCP_IN_RCV_FIN: return MOS_TCP_CLOSE_WAIT;
    case TCP_IN_SND_FIN:
    case TCP_IN_SND_FIN_CROSSED: return MOS_TCP_FIN_WAIT_1;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_SYN_RECEIVED;
    }
}

static int st_established(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_RCV_FIN: return MOS_TCP_CLOSE_WAIT;
    case TCP_IN_SND_FIN:
    case TCP_IN_SND_FIN_CROSSED: return MOS_TCP_FIN_WAIT_1;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_ESTABLISHED;
    }
}

static int st_fin_wait_1(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_RCV_ACK_OF_FIN: return MOS_TCP_FIN_WAIT_2;
    case TCP_IN_RCV_FIN: return MOS_TCP_CLOSING; /* simultaneous close */
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_FIN_WAIT_1;
    }
}

static int st_fin_wait_2(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_RCV_FIN: return MOS_TCP_TIME_WAIT;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_FIN_WAIT_2;
    }
}

static int st_close_wait(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_SND_FIN: return MOS_TCP_LAST_ACK;
    case TCP_IN_SND_FIN_CROSSED: return MOS_TCP_CLOSING;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_CLOSE_WAIT;
    }
}

static int st_closing(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_RCV_ACK_OF_FIN: return MOS_TCP_TIME_WAIT;
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_CLOSING;
    }
}

static int st_last_ack(enum tcp_input in)
{
    switch (in) {
    case TCP_IN_RCV_ACK_OF_FIN:
    case TCP_IN_RST: return MOS_TCP_CLOSED;
    default: return MOS_TCP_LAST_ACK;
    }
}

static int st_time_wait(enum tcp_input in)
{
    return in == TCP_IN_RST ? MOS_TCP_CLOSED : MOS_TCP_TIME_WAIT;
}

/* A switch rather than a table of pointers: the state functions inline into it, and the usual case
 * (an input that changes nothing: every ACK asks SYN_RECEIVED's question) costs no call. */
static inline int next_state(int state, enum tcp_input in)
{
    switch (state) {
    case MOS_TCP_CLOSED: return st_closed(in);
    case MOS_TCP_LISTEN: return st_listen(in);
    case MOS_TCP_SYN_SENT: return st_syn_sent(in);
    case MOS_TCP_SYN_RECEIVED: return st_syn_received(in);
    case MOS_TCP_ESTABLISHED: return st_established(in);
    case MOS_TCP_FIN_WAIT_1: return st_fin_wait_1(in);
    case MOS_TCP_FIN_WAIT_2: return st_fin_wait_2(in);
    case MOS_TCP_CLOSE_WAIT: return st_close_wait(in);
    case MOS_TCP_CLOSING: return st_closing(in);
    case MOS_TCP_LAST_ACK: return st_last_ack(in);
    case MOS_TCP_TIME_WAIT: return st_time_wait(in);
    default: return state;
    }
}

int tcp_next_state(int state, enum tcp_input in)
{
    return next_state(state, in);
}

static void state_changed(mos_engine_t *e, struct conn *c, int side, int old, int hook)
{
    struct mos_event tm = {0};
    tm.old_state = (uint8_t)old;
    emit(e, c, MOS_EV_TCP_STATE_CHANGE, side, hook, &tm);
}

/* `side`'s stack takes an input; a transition raises TCP_STATE_CHANGE at `hook`. */
static inline void tcp_step(mos_engine_t *e, struct conn *c, int side, enum tcp_input in, int hook)
{
    struct tcp_end *t = &c->tcp.end[side];
    int old = t->state;
    int st = next_state(old, in);
    if (st == old)
        return;
    t->state = (uint8_t)st;
    state_changed(e, c, side, old, hook);
}

/* Segments held apart (after a RST, or just past the window) are kept as records: sequence number,
 * length, bytes; the reassembly they are given to puts them in place. */
struct held_rec {
    uint32_t seq, len;
};

/* Appends one segment to the stash entry `key`: 0, or -1 when it is not held (the entry is then
 * dropped whole if it lost a record's bytes). */
static int hold_segment(mos_engine_t *e, uint32_t key, const struct pkt_info *pi)
{
    struct held_rec h = {pi->seq, pi->payload_len};
    uint32_t rec = (uint32_t)sizeof(h) + pi->payload_len;
    if (e->rctx.memcap && e->rctx.mem_used + rec + sizeof(struct ft_stash) > e->rctx.memcap)
        return -1;
    if (ft_stash_append(&e->ft, &e->rctx, key, (const uint8_t *)&h, sizeof(h)))
        return -1;
    if (ft_stash_append(&e->ft, &e->rctx, key, pi->payload, pi->payload_len)) {
        ft_stash_drop(&e->ft, &e->rctx, key); /* a record without its bytes: nothing can be given back */
        return -1;
    }
    return 0;
}

/* The next record of held segments in buf[0, n) from *at: its bytes (NULL past the last one). */
static const uint8_t *next_held(const uint8_t *buf, uint32_t n, uint32_t *at, struct held_rec *hr)
{
    if (n - *at < sizeof(*hr))
        return NULL;
    memcpy(hr, buf + *at, sizeof(*hr));
    *at += (uint32_t)sizeof(*hr);
    if (hr->len > n - *at)
        return NULL;
    const uint8_t *p = buf + *at;
    *at += hr->len;
    return p;
}

/* A held segment `s` sent enters the stream its peer receives (bytes that live until the events are
 * handled), as it would have on arrival. */
static void give_segment(mos_engine_t *e, struct conn *c, int s, uint32_t seq, const uint8_t *p, uint32_t len)
{
    struct tcp_end *S = &c->tcp.end[s];
    struct reasm_dir *d = &c->rx[1 - s];
    struct owner o = {c, 1 - s};
    if (seq_gt(seq + len, S->snd_nxt))
        S->snd_nxt = seq + len;
    if (d->initialized && (c->monitor & (1u << (1 - s))))
        reasm_segment(&e->rctx, d, &o, seq, p, len);
}

/* A stream nothing was delivered from starts again at `seq` (its sender's ISN turned out another). */
static void restart_unread_stream(mos_engine_t *e, struct reasm_dir *d, uint32_t seq)
{
    if (d->initialized && d->next_off == 0) {
        uint8_t policy = d->policy, buffering = d->buffering;
        reasm_release(&e->rctx, d);
        reasm_dir_init(d, seq, policy, buffering);
    }
}

/* ---- a new connection --------------------------------------------------------------------------- */

void tcp_flow_start(struct tcp_flow *t, const struct pkt_info *pi, int syn_only)
{
    t->end[0].wscale = t->end[1].wscale = 0xff;
    if (syn_only) {
        t->end[MOS_SIDE_SVR].state = MOS_TCP_LISTEN;
    } else if ((pi->tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) {
        t->end[MOS_SIDE_CLI].state = MOS_TCP_SYN_SENT;
        t->end[MOS_SIDE_SVR].state = MOS_TCP_LISTEN;
    } else {
        t->end[MOS_SIDE_CLI].state = MOS_TCP_ESTABLISHED;
        t->end[MOS_SIDE_SVR].state = MOS_TCP_ESTABLISHED;
    }
}

/* A SYN-ACK's sender is the server; else the well-known port; else the lower port (ephemeral ports
 * are high); else the destination. */
int tcp_guess_sender_is_client(const struct pkt_info *pi)
{
    if ((pi->tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
        return 0;
    if ((pi->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        return 1;
    if (pi->sport < 1024 && pi->dport >= 1024)
        return 0;
    if (pi->dport < 1024 && pi->sport >= 1024)
        return 1;
    if (pi->sport != pi->dport)
        return pi->sport > pi->dport;
    return 1;
}

/* ---- acknowledgements and FINs ------------------------------------------------------------------ */

static inline void take_fin(mos_engine_t *e, struct conn *c, int snd, int hook);
static void cut_after_fin(mos_engine_t *e, struct conn *c, int s);

/* Inline tests before the calls: most packets have neither a pending ack nor a FIN to take. */
static inline void settle(mos_engine_t *e, struct conn *c, int s)
{
    if (c->tcp.end[s].ack_pending)
        tcp_settle_acks(e, c, s);
}

void tcp_settle_acks(mos_engine_t *e, struct conn *c, int s)
{
    struct tcp_end *S = &c->tcp.end[s];
    if (!S->ack_pending)
        return;
    S->ack_pending = 0;
    struct owner o = {c, s};
    if (c->rx[s].initialized) {
        reasm_ack(&e->rctx, &c->rx[s], &o, S->hint);
        take_fin(e, c, 1 - s, MOS_HK_RCV);
    }
}

/* The FIN sent by `snd` is in order in the stream the peer receives: the peer's stack takes it. */
static void take_fin_slow(mos_engine_t *e, struct conn *c, int snd, int hook)
{
    int rcv = 1 - snd;
    struct tcp_end *s = &c->tcp.end[snd];
    struct reasm_dir *d = &c->rx[rcv];
    if (d->initialized && seq_lt(d->next_seq, s->fin_seq))
        return; /* bytes before the FIN are still missing */
    s->fin_taken = 1;
    if (!s->fin_cut)
        cut_after_fin(e, c, snd);
    tcp_step(e, c, rcv, TCP_IN_RCV_FIN, hook);
}

static inline void take_fin(mos_engine_t *e, struct conn *c, int snd, int hook)
{
    const struct tcp_end *s = &c->tcp.end[snd];
    if (s->fin_seen && !s->fin_taken)
        take_fin_slow(e, c, snd, hook);
}

/* `rcv` learns that its SYN or its FIN was acknowledged by `ack`. */
static void rcv_ack_effects(mos_engine_t *e, struct conn *c, int rcv, uint32_t ack, int hook)
{
    struct tcp_end *r = &c->tcp.end[rcv];
    if (r->isn_known && seq_geq(ack, r->isn + 1))
        tcp_step(e, c, rcv, TCP_IN_RCV_ACK_OF_SYN, hook);
    if (r->fin_seen && seq_geq(ack, r->fin_seq + 1))
        tcp_step(e, c, rcv, TCP_IN_RCV_ACK_OF_FIN, hook);
}

static uint32_t scaled_win(const struct tcp_end *t, const struct pkt_info *pi)
{
    if ((pi->tcp_flags & TCP_SYN) || !t->ws_ok || t->wscale == 0xff)
        return pi->window;
    return (uint32_t)pi->window << t->wscale;
}

/* ---- the sender's stack: what sending this packet says about it ---------------------------------- */

static void syn_data_decide(mos_engine_t *e, struct conn *c, int s, uint32_t n);
static void fin_superseded(mos_engine_t *e, struct conn *c, int s);

static void syn_resent_with_new_isn(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi,
                                    uint32_t seglen)
{
    struct tcp_end *t = &c->tcp.end[s];
    struct reasm_dir *d = &c->rx[1 - s];
    if (t->syn_data == TCP_SYND_PENDING)
        syn_data_decide(e, c, s, 0); /* the peer never had that SYN */
    t->syn_data = TCP_SYND_NONE;
    t->isn = pi->seq;
    t->snd_nxt = pi->seq + seglen;
    t->wscale = pi->wscale;
    t->sack_perm = pi->sack_perm ? 1 : 0;
    t->hs_ts = pi->has_ts ? 1 : 0;
    t->hs = pi->has_ts ? pi->tsval : 0;
    e->counters[MOS_C_SYN_ISN_CHANGED]++;
    restart_unread_stream(e, d, pi->seq + 1);
}

/* The peer acknowledged the later SYN-ACK of `p` (its ISN in hs): that one began p's stream, so the
 * stream p sends is anchored on it. Bytes already delivered on the first anchor cannot move (they
 * stay, the anomaly raised when the second SYN-ACK came says why); bytes held on it are dropped. */
static void synack_reanchor(mos_engine_t *e, struct conn *c, int p)
{
    struct tcp_end *P = &c->tcp.end[p];
    struct reasm_dir *d = &c->rx[1 - p];
    P->hs_alt = 0;
    P->isn = P->hs;
    P->snd_nxt = P->hs + 1;
    e->counters[MOS_C_SYNACK_REANCHORED]++;
    restart_unread_stream(e, d, P->isn + 1);
}

static void sender_update(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    struct tcp_end *t = &c->tcp.end[s];
    struct tcp_end *peer = &c->tcp.end[1 - s];
    uint8_t f = pi->tcp_flags;
    if (f & TCP_RST)
        return; /* a RST only counts once the receiver's window check accepts it */
    uint32_t seglen = pi_seg_payload(pi) + ((f & TCP_SYN) ? 1u : 0u) + ((f & TCP_FIN) ? 1u : 0u);
    if (f & TCP_SYN) {
        if (!t->syn_seen) {
            t->syn_seen = 1;
            t->isn = pi->seq;
            t->isn_known = 1;
            t->wscale = pi->wscale;
            t->snd_nxt = pi->seq + seglen;
            t->sack_perm = pi->sack_perm ? 1 : 0;
            if (pi->has_ts) {
                t->hs = pi->tsval;
                t->hs_ts = 1;
                /* RFC 7323 3.2: timestamps are on only if both SYNs carried them (PAWS then applies) */
                if (peer->syn_seen && peer->hs_ts)
                    t->ts_ok = peer->ts_ok = 1;
            }
            tcp_step(e, c, s, (f & TCP_ACK) ? TCP_IN_SND_SYNACK : TCP_IN_SND_SYN, MOS_HK_SND);
            /* RFC 7323: scaling is on only if both SYNs carried the option. */
            if (t->wscale != 0xff && peer->wscale != 0xff)
                t->ws_ok = peer->ws_ok = 1;
        } else if (pi->seq == t->isn) {
            e->counters[MOS_C_SYN_REXMIT]++;
            c->rexmit[s]++;
        } else if (!(f & TCP_ACK) && t->state == MOS_TCP_SYN_SENT && !peer->syn_seen) {
            /* Another SYN with another ISN before any answer: a new attempt (a new socket on the same
             * port, or a first SYN that never reached the peer): the answer acknowledges this one. */
            syn_resent_with_new_isn(e, c, s, pi, seglen);
        } else if ((f & TCP_ACK) && t->state == MOS_TCP_SYN_RECEIVED) {
            /* A SYN-ACK with another ISN before the peer acknowledged one: which the peer took, its
             * acknowledgement tells (synack_reanchor). The handshake word holds that ISN now, so this
             * end's timestamps are no longer followed (PAWS off for it: rare, and never wrong). */
            if (!t->hs_alt || t->hs != pi->seq)
                raise_anomaly(e, c, 1 - s, MOS_ERR_SYNACK_DIFF_SEQ, 0, 0);
            t->hs = pi->seq;
            t->hs_alt = 1;
            t->hs_ts = 0;
        }
    } else if (f & TCP_ACK) {
        if (peer->hs_alt && pi->ack == peer->hs + 1)
            synack_reanchor(e, c, 1 - s);
        else if (peer->isn_known && pi->ack == peer->isn + 1)
            peer->hs_alt = 0; /* it took the first SYN-ACK */
        if (peer->isn_known && pi->ack == peer->isn + 1)
            tcp_step(e, c, s, TCP_IN_SND_ACK_OF_SYN, MOS_HK_SND);
    }
    if ((f & TCP_FIN) && t->fin_seen && !t->fin_taken &&
        seq_leq(pi->seq, t->fin_seq) && seq_gt(pi->seq + pi_seg_payload(pi), t->fin_seq))
        fin_superseded(e, c, s); /* its bytes cover the earlier FIN: that one is no FIN, this one is */
    if ((f & TCP_FIN) && !t->fin_seen &&
        !(c->rx[1 - s].initialized &&
          seq_lt(pi->seq + pi_seg_payload(pi) + ((f & TCP_SYN) ? 1u : 0u), c->rx[1 - s].next_seq))) {
        /* (a FIN behind bytes the peer's stream already has is an old duplicate or an insertion its
         * stack drops as unacceptable: not this sender's FIN) */
        t->fin_seen = 1;
        t->fin_seq = pi->seq + pi_seg_payload(pi) + ((f & TCP_SYN) ? 1u : 0u);
        int crossed = (f & TCP_ACK) && peer->fin_seen && seq_leq(pi->ack, peer->fin_seq);
        tcp_step(e, c, s, crossed ? TCP_IN_SND_FIN_CROSSED : TCP_IN_SND_FIN, MOS_HK_SND);
    }
    if (!t->snd_nxt || seq_gt(pi->seq + seglen, t->snd_nxt))
        t->snd_nxt = pi->seq + seglen;
    uint32_t w = scaled_win(t, pi);
    if (w > t->max_win)
        t->max_win = w;
}

/* ---- the receiver's stack ------------------------------------------------------------------------ */

/* What the receiver of a RST does with it. */
enum rst_verdict { RST_TAKEN, RST_CHALLENGED, RST_OUT_OF_WINDOW };

/* Old Linux (before 3.6) and Solaris take any RST inside the window; the others only one at exactly
 * RCV.NXT (RFC 5961 section 3: Linux since 3.6, Windows, the BSDs), answering one elsewhere in the
 * window with a challenge ACK. Suricata's RST validation draws the same line between its policies. */
static int rst_needs_exact_seq(int policy)
{
    return policy != REASM_POLICY_OLD_LINUX && policy != REASM_POLICY_SOLARIS;
}

/* A RST sent by `s`, as its receiver's stack takes it under the connection's target policy. */
static enum rst_verdict rst_verdict(const struct conn *c, int s, const struct pkt_info *pi)
{
    int r = 1 - s;
    const struct tcp_end *R = &c->tcp.end[r];
    const struct tcp_end *S = &c->tcp.end[s];
    const struct reasm_dir *d = &c->rx[r];
    if (R->state == MOS_TCP_SYN_SENT) /* RFC 9293 3.10.7.3: it must acknowledge the SYN (the ACK was checked) */
        return (pi->tcp_flags & TCP_ACK) ? RST_TAKEN : RST_OUT_OF_WINDOW;
    uint32_t nxt;
    if (d->initialized)
        nxt = d->next_seq + (S->fin_taken ? 1u : 0u); /* the FIN takes a sequence number, no byte */
    else if (S->snd_nxt)
        nxt = S->snd_nxt; /* its stream is not followed: what it sent tells */
    else
        return RST_TAKEN; /* nothing to check against (picked up at this RST) */
    uint32_t wnd = R->max_win ? R->max_win : 65535;
    /* RFC 9293 3.10.7.4: RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND; one byte before RCV.NXT is allowed for
     * the stacks that send RST with the sequence number of an acknowledged FIN. */
    int in_window = seq_geq(pi->seq, nxt - 1) && seq_lt(pi->seq, nxt + wnd + 1);
    if (!rst_needs_exact_seq(d->policy))
        return in_window ? RST_TAKEN : RST_OUT_OF_WINDOW;
    /* Exactly RCV.NXT, as far as the capture tells it: where the stream we follow is; where the
     * receiver acknowledged past a hole the capture missed; with SACK, where the sender's bytes end
     * (the right edge of the receiver's last SACK block, which Linux takes too: tcp_validate_incoming;
     * without SACK, bytes held past a hole leave RCV.NXT where it is). */
    if (pi->seq == nxt || (R->ack_pending && pi->seq == R->hint))
        return RST_TAKEN;
    if (S->snd_nxt && pi->seq == S->snd_nxt && R->sack_perm && S->sack_perm && in_window)
        return RST_TAKEN;
    return in_window ? RST_CHALLENGED : RST_OUT_OF_WINDOW;
}

static void receive_data(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi);

/* ---- data on a SYN (RFC 7413) and data past a FIN (RFC 9293 3.10.7.4) ---------------------------- */

static void syn_data_discarded(mos_engine_t *e, struct conn *c, int r, uint64_t off, uint32_t len)
{
    e->counters[MOS_C_SYN_DATA_DISCARDED_BYTES] += len;
    raise_anomaly(e, c, r, MOS_ERR_SYN_DATA_DISCARDED, off, len);
}

/* The SYN sent by `s` had data, in the stash: the peer took its first `n` bytes (the SYN-ACK
 * acknowledged ISN+1+n), the rest it dropped. The bytes taken enter its receive stream now. */
static void syn_data_decide(mos_engine_t *e, struct conn *c, int s, uint32_t n)
{
    struct tcp_end *S = &c->tcp.end[s];
    int r = 1 - s;
    struct reasm_dir *d = &c->rx[r];
    uint32_t slot = ft_slot(&e->ft, c);
    const struct ft_stash *x = ft_stash_get(&e->ft, slot);
    uint32_t len = x ? x->len : 0;
    if (n > len)
        n = len;
    S->syn_data = n ? TCP_SYND_ACCEPTED : TCP_SYND_DISCARDED;
    if (n) {
        e->counters[MOS_C_SYN_DATA_ACCEPTED]++;
        if (d->initialized && (c->monitor & (1u << r))) {
            /* Events point at delivered bytes until the batch's events are handled: the copy they see
             * lives in the event arena, so that the stash entry can go now. */
            const uint8_t *p = arena_copy(&e->evq.arena, x->data, n);
            struct owner o = {c, r};
            if (p)
                reasm_segment(&e->rctx, d, &o, S->isn + 1, p, n);
            else
                raise_anomaly(e, c, r, MOS_ERR_MEMCAP, (uint64_t)reasm_seq_to_off(d, S->isn + 1), n);
        }
    }
    if (n < len)
        syn_data_discarded(e, c, r, n, len - n);
    ft_stash_drop(&e->ft, &e->rctx, slot);
}

/* The payload of a SYN without ACK sent by `s`: held until the peer's acknowledgement (or the sender's
 * next segment) tells whether the peer took it. */
static void syn_data_in(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    struct tcp_end *S = &c->tcp.end[s];
    uint32_t len = pi->payload_len;
    switch (S->syn_data) {
    case TCP_SYND_ACCEPTED:
        receive_data(e, c, s, pi); /* a retransmitted SYN of bytes the peer has: a retransmission */
        return;
    case TCP_SYND_PENDING:
        return; /* a retransmitted SYN: the first one's bytes are decided with it */
    case TCP_SYND_NONE:
        if (pi->seq != S->isn)
            break; /* a SYN of another ISN: no data of this connection */
        if (tcp_syn_data_pending(&c->tcp) ||
            (e->rctx.memcap && e->rctx.mem_used + len + sizeof(struct ft_stash) > e->rctx.memcap) ||
            ft_stash_put(&e->ft, &e->rctx, ft_slot(&e->ft, c), pi->payload, len)) {
            /* no room (or the other side's SYN data still waits: one entry per connection) */
            raise_anomaly(e, c, 1 - s, MOS_ERR_MEMCAP, 0, len);
            S->syn_data = TCP_SYND_DISCARDED;
            return;
        }
        S->syn_data = TCP_SYND_PENDING;
        return;
    default:
        break;
    }
    /* the peer dropped this SYN's data before (it acknowledged only the SYN): it drops it again */
    syn_data_discarded(e, c, 1 - s, 0, len);
}

/* A segment (data or FIN) of `s` at `seq` while its SYN data is pending: no acknowledgement was seen
 * (one-sided capture, or the SYN-ACK was missed), so the sender's own sequence numbers tell. Sending
 * at ISN+1 again means the peer did not take those bytes (the sender resends them); starting at or
 * past their end means it did. */
static void syn_data_by_seq(mos_engine_t *e, struct conn *c, int s, uint32_t seq)
{
    const struct tcp_end *S = &c->tcp.end[s];
    uint32_t n = seq_gt(seq, S->isn + 1) ? seq - (S->isn + 1) : 0;
    syn_data_decide(e, c, s, n);
}

void tcp_end_syn_data(mos_engine_t *e, struct conn *c, int reason)
{
    for (int s = 0; s < 2; s++) {
        if (c->tcp.end[s].syn_data != TCP_SYND_PENDING)
            continue;
        /* Nothing told: kept (the peer may have it; an IDS would rather see bytes the host may have
         * received), unless the connection was reset (a refused connection took nothing). */
        syn_data_decide(e, c, s, reason == MOS_END_RST ? 0 : UINT32_MAX);
    }
}

/* The FIN `s` sent is no FIN after all (fin_superseded's caller says why): its state goes back to what it
 * was before, and a later FIN is taken as its FIN. */
static void fin_superseded(mos_engine_t *e, struct conn *c, int s)
{
    struct tcp_end *S = &c->tcp.end[s];
    S->fin_seen = 0;
    S->fin_cut = 0;
    raise_anomaly(e, c, 1 - s, MOS_ERR_FIN_SUPERSEDED, 0, 0);
    int old = S->state, st = old;
    if (old == MOS_TCP_FIN_WAIT_1)
        st = MOS_TCP_ESTABLISHED;
    else if (old == MOS_TCP_LAST_ACK || old == MOS_TCP_CLOSING)
        st = MOS_TCP_CLOSE_WAIT;
    if (st != old) {
        S->state = (uint8_t)st;
        state_changed(e, c, s, old, MOS_HK_RCV);
    }
}

static void data_after_fin(mos_engine_t *e, struct conn *c, int r, uint64_t off, uint32_t len)
{
    e->counters[MOS_C_DATA_AFTER_FIN_BYTES] += len;
    raise_anomaly(e, c, r, MOS_ERR_DATA_AFTER_FIN, off, len);
}

/* The FIN of `s` was just taken: bytes held past it in the peer's receive stream never will be (Linux
 * purges its out-of-order queue when it takes a FIN; RFC 9293 3.10.7.4 ignores them). */
static void cut_after_fin(mos_engine_t *e, struct conn *c, int s)
{
    int r = 1 - s;
    struct reasm_dir *d = &c->rx[r];
    c->tcp.end[s].fin_cut = 1;
    if (!d->initialized || !d->buf)
        return;
    int64_t off = reasm_seq_to_off(d, c->tcp.end[s].fin_seq);
    if (off < (int64_t)d->next_off)
        return; /* a FIN behind bytes already in the stream: an old duplicate the receiver ignores */
    uint64_t n = reasm_drop_from(&e->rctx, d, (uint64_t)off);
    if (n)
        data_after_fin(e, c, r, (uint64_t)off, n > 0xffffffffu ? 0xffffffffu : (uint32_t)n);
}

/* The payload into the receive stream of `r`, with the window check. */
static void receive_data(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    int r = 1 - s;
    struct tcp_end *R = &c->tcp.end[r];
    struct owner orr = {c, r};
    uint32_t plen = pi_seg_payload(pi); /* what the sender sent; the capture may hold only a prefix */
    uint32_t dseq = pi->seq + ((pi->tcp_flags & TCP_SYN) ? 1u : 0u);
    struct reasm_dir *d = &c->rx[r];
    const struct tcp_end *S = &c->tcp.end[s];
    if (S->fin_seen && !S->fin_taken && seq_leq(dseq, S->fin_seq) && seq_gt(dseq + plen, S->fin_seq)) {
        /* Bytes at the sequence number of a FIN the receiver has not taken yet (it was out of order):
         * its stack drops that FIN (Linux: the data replaces it in the out-of-order queue, or covers it;
         * BSD's reassembly removes a segment a later one covers), and these bytes are the stream. */
        fin_superseded(e, c, s);
    } else if (S->fin_seen && !S->fin_taken) {
        /* past a FIN not taken yet: held, dropped if the FIN is taken (cut_after_fin) */
    } else if (S->fin_seen && seq_gt(dseq + plen, S->fin_seq) &&
        (!d->initialized || seq_leq(d->next_seq, S->fin_seq))) {
        /* Bytes at or past the sender's FIN: the receiver ignores them (RFC 9293 3.10.7.4), a
         * retransmission straddling the FIN keeps its part before it. Not for a FIN behind bytes
         * already in the stream (the stream never passes a FIN it saw): an old duplicate or an
         * insertion the receiver ignores, which must not blind us to what follows. */
        uint32_t keep = seq_gt(S->fin_seq, dseq) ? S->fin_seq - dseq : 0;
        if (d->initialized)
            data_after_fin(e, c, r, (uint64_t)reasm_seq_to_off(d, dseq + keep), plen - keep);
        else
            data_after_fin(e, c, r, 0, plen - keep);
        plen = keep;
        if (!plen)
            return;
    }
    if (!d->initialized) {
        /* Picked up mid-stream: anchor at what the receiver already acknowledged when that is just
         * before this segment (the bytes between were lost), else at this segment. */
        if (R->ack_hint && seq_lt(R->hint, dseq) && dseq - R->hint < (1u << 20))
            reasm_dir_init(d, R->hint, d->policy, d->buffering);
        else
            reasm_dir_init(d, dseq, d->policy, d->buffering);
    }
    if (R->ack_pending) {
        /* The sender is well past what the receiver acknowledged (64 KiB: reordering at a capture
         * point does not reach that far, and waiting longer holds every later segment out of order),
         * or waiting would hold too much: the acknowledged hole is lost. */
        if ((seq_geq(dseq, R->hint) && dseq - R->hint >= ACKED_HOLE_PATIENCE) ||
            reasm_held_bytes(d) > e->cfg.dir_buffer_limit / 2)
            tcp_settle_acks(e, c, r);
    }
    int64_t off = reasm_seq_to_off(d, dseq);
    if (off - (int64_t)d->next_off > (1 << 30) && R->ack_pending) {
        /* Far ahead of what we have, and the receiver acknowledged past a hole: the hole is lost
         * (settling it keeps the 32-bit sequence anchor close to the data). */
        tcp_settle_acks(e, c, r);
        off = reasm_seq_to_off(d, dseq);
    }
    uint64_t wnd = R->max_win > 65535 ? R->max_win : 65535;
    uint64_t base = d->next_off;
    if (R->ack_pending) {
        int64_t acked = reasm_seq_to_off(d, R->hint);
        if (acked > (int64_t)base)
            base = (uint64_t)acked;
    }
    if (off > (int64_t)(base + 2 * wnd + (1u << 16))) {
        /* Beyond anything the receiver allowed: flagged (it may be an insertion attempt), yet held,
         * as Zeek does, because captures miss window updates and the receiver's ACKs decide. */
        raise_anomaly(e, c, r, MOS_ERR_OUT_OF_WINDOW, (uint64_t)off, plen);
    }
    uint64_t before = e->rctx.counters[REASM_C_REXMIT_SEGMENTS];
    uint32_t got = pi->payload_len < plen ? pi->payload_len : plen;
    if (got < plen) /* the snaplen cut the rest: a gap in the stream, unless a retransmission fills it */
        reasm_segment_cut(&e->rctx, d, &orr, dseq, pi->payload, got, plen - got);
    else
        reasm_segment(&e->rctx, d, &orr, dseq, pi->payload, plen);
    if (e->rctx.counters[REASM_C_REXMIT_SEGMENTS] != before)
        c->rexmit[s]++;
}

static void band_taken(mos_engine_t *e, struct conn *c, int r, uint32_t ack);

/* The ACK of `s` into the stream it receives: delivered bytes, holes it acknowledged, its peer's
 * SYN/FIN acknowledged. */
static void receive_ack(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    int r = 1 - s;
    struct tcp_end *S = &c->tcp.end[s];
    struct tcp_end *R = &c->tcp.end[r];
    struct reasm_dir *ds = &c->rx[s];
    struct owner os = {c, s};
    if (__builtin_expect(e->ft.nstash != 0, 0))
        band_taken(e, c, s, pi->ack);
    if (R->syn_data == TCP_SYND_PENDING && R->isn_known && seq_geq(pi->ack, R->isn + 1))
        syn_data_decide(e, c, r, pi->ack - (R->isn + 1)); /* it took what it acknowledged */
    if (ds->initialized) {
        /* the FIN takes a sequence number but is no byte of the stream */
        uint32_t ack = pi->ack;
        if (R->fin_seen && seq_gt(ack, R->fin_seq))
            ack = R->fin_seq;
        uint32_t swnd = S->max_win > 65535 ? S->max_win : 65535;
        if (seq_gt(ack, ds->next_seq) && ack - ds->next_seq > 2 * swnd + 65536u) {
            /* A hole larger than any window: no reordering explains it, the bytes were lost. */
            if (!S->ack_pending || seq_gt(ack, S->hint))
                S->hint = ack;
            S->ack_pending = 1;
            tcp_settle_acks(e, c, s);
        } else if (seq_gt(ack, ds->next_seq)) {
            /* An ack past a hole: the bytes may still come (a capture point sees reordering the
             * endpoint did not), so the hole becomes a gap only when the conversation moves on:
             * the acking side sends data, or the other side closes (see tcp_settle_acks). */
            if (!S->ack_pending || seq_gt(ack, S->hint))
                S->hint = ack;
            S->ack_pending = 1;
            reasm_ack(&e->rctx, ds, &os, ds->next_seq);
            if (R->fin_seen)
                tcp_settle_acks(e, c, s); /* the sender is done: nothing more will come */
        } else {
            reasm_ack(&e->rctx, ds, &os, ack);
        }
        take_fin(e, c, r, MOS_HK_RCV);
    } else {
        S->ack_hint = 1;
        S->hint = pi->ack;
    }
    rcv_ack_effects(e, c, r, pi->ack, MOS_HK_RCV);
}

/* The receiver's stack: window check, the bytes into its receive stream, RST/FIN/ACK effects. */
static void receiver_update(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    int r = 1 - s;
    struct tcp_end *R = &c->tcp.end[r];
    uint8_t f = pi->tcp_flags;

    if (pi_seg_payload(pi))
        settle(e, c, s); /* the acking side moved on: what it acked and we lack is lost */
    if (f & (TCP_FIN | TCP_RST))
        settle(e, c, r); /* the sender is done: holes the receiver acked will not fill */

    if (f & TCP_RST) {
        switch (rst_verdict(c, s, pi)) {
        case RST_TAKEN:
            e->counters[MOS_C_RST_ACCEPTED]++;
            c->tcp.end[s].rst_sent = 1;
            tcp_step(e, c, s, TCP_IN_RST, MOS_HK_SND);
            tcp_step(e, c, r, TCP_IN_RST, MOS_HK_RCV);
            emit(e, c, MOS_EV_PKT_IN, r, MOS_HK_RCV, NULL);
            engine_end_conn(e, c, MOS_END_RST, r);
            break;
        case RST_CHALLENGED:
            raise_anomaly(e, c, r, MOS_ERR_RST_CHALLENGED, 0, 0);
            break;
        case RST_OUT_OF_WINDOW:
            raise_anomaly(e, c, r, MOS_ERR_RST_OUT_OF_WINDOW, 0, 0);
            break;
        }
        return;
    }
    if (f & TCP_SYN) {
        if (!(f & TCP_ACK))
            tcp_step(e, c, r, TCP_IN_RCV_SYN, MOS_HK_RCV);
        else if (R->isn_known && pi->ack == R->isn + 1)
            tcp_step(e, c, r, TCP_IN_RCV_SYNACK, MOS_HK_RCV);
        if (!c->rx[r].initialized && (c->monitor & (1u << r)))
            reasm_dir_init(&c->rx[r], pi->seq + 1, c->rx[r].policy, c->rx[r].buffering);
    }
    struct tcp_end *S = &c->tcp.end[s];
    if (S->syn_data == TCP_SYND_PENDING && !(f & TCP_SYN) && (pi_seg_payload(pi) || (f & TCP_FIN)))
        syn_data_by_seq(e, c, s, pi->seq);
    if (pi_seg_payload(pi) && (c->monitor & (1u << r))) {
        if ((f & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
            /* a SYN's bytes the capture cut are not stashed: if the peer takes them, its ack passes
             * a hole that becomes a gap like any other */
            if (pi->payload_len)
                syn_data_in(e, c, s, pi);
        } else {
            receive_data(e, c, s, pi);
        }
    }
    if (f & TCP_ACK)
        receive_ack(e, c, s, pi);
    /* RFC 9293 3.10.7.4: the ACK is processed before the FIN */
    if (c->tcp.end[s].fin_seen)
        take_fin(e, c, s, MOS_HK_RCV); /* this FIN, or an earlier one whose missing bytes just came */
}

static int is_closed_state(int st) { return st == MOS_TCP_TIME_WAIT || st == MOS_TCP_CLOSED; }

/* How far past its first SYN's TSval an answer's TSecr may be: the SYN's retransmissions (a minute or
 * two) at any timestamp clock up to 1 kHz (RFC 7323 asks for 1 ms to 1 s). */
#define TS_SYN_SPAN (1u << 20)

/* A packet with ACK to an endpoint in SYN_SENT, which discards it unless it acknowledges its SYN
 * (RFC 9293 3.10.7.3: ISS < SEG.ACK =< SND.NXT) and echoes one of its SYNs' timestamps (Linux
 * checks TSecr against when it sent its first SYN; a SYN without timestamps is echoed none, as
 * Suricata checks): what an attacker forges to answer a SYN before the server does (a RST or FIN
 * that would end the connection for us, not for the client). Such a packet changes nothing, for
 * either endpoint: its sender may not be the peer at all. */
static int syn_sent_discards(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    int r = 1 - s;
    const struct tcp_end *R = &c->tcp.end[r];
    if (!(pi->tcp_flags & TCP_ACK) || R->state != MOS_TCP_SYN_SENT || !R->isn_known)
        return 0;
    if (!seq_gt(pi->ack, R->isn) || seq_gt(pi->ack, R->snd_nxt)) {
        raise_anomaly(e, c, r, MOS_ERR_INVALID_ACK, 0, 0);
        return 1;
    }
    if (pi->has_ts && pi->tsecr && (!R->hs_ts || !seq_geq(pi->tsecr, R->hs) || pi->tsecr - R->hs > TS_SYN_SPAN)) {
        raise_anomaly(e, c, r, MOS_ERR_INVALID_TIMESTAMP, 0, 0);
        return 1;
    }
    return 0;
}

/* A data or FIN segment that starts just past the receiver's window: its stack discards it (RFC 9293
 * 3.10.7.4; Linux tcp_sequence()), so it changes nothing for either endpoint here (a forged segment's
 * sequence numbers would otherwise move its sender's, and its bytes win overlaps with the real ones the
 * stream reaches next). The window is the largest the receiver advertised (64 KiB at least), past the
 * furthest point it acknowledged or the stream reached. Only where the window is known: both SYNs seen
 * (else the scale is not), and the receiver's stream followed. Further out, the capture more likely
 * missed the receiver's ACKs than an attacker aims there: such bytes are held and flagged, as Zeek
 * does (receive_data), and the receiver's ACKs decide. */
static int beyond_window_slow(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    uint8_t f = pi->tcp_flags;
    if ((f & (TCP_SYN | TCP_RST)) || !(pi_seg_payload(pi) || (f & TCP_FIN)))
        return 0;
    int r = 1 - s;
    const struct tcp_end *R = &c->tcp.end[r];
    const struct reasm_dir *d = &c->rx[r];
    if (!R->syn_seen || !c->tcp.end[s].syn_seen || !d->initialized)
        return 0;
    uint64_t base = d->next_off > d->acked_off ? d->next_off : d->acked_off;
    if (R->ack_pending) {
        int64_t h = reasm_seq_to_off(d, R->hint);
        if (h > (int64_t)base)
            base = (uint64_t)h;
    }
    /* no less than the largest unscaled window: a capture misses window updates, and no host is harmed
     * by what a 64 KiB window would let in */
    uint32_t wnd = R->max_win > 65535 ? R->max_win : 65535;
    int64_t off = reasm_seq_to_off(d, pi->seq);
    if (off <= (int64_t)(base + wnd) || off > (int64_t)(base + 2 * (uint64_t)wnd + (1u << 16)))
        return 0; /* in the window; or so far past it that the capture missed much (receive_data) */
    raise_anomaly(e, c, r, MOS_ERR_OUT_OF_WINDOW, (uint64_t)off, pi->payload_len);
    /* Its bytes wait apart, out of the stream: if the receiver's ACK later passes their start, it had
     * them after all (the capture missed both directions for more than a window) and they go in then;
     * a decoy the host dropped waits until the end, after the real bytes at its place. */
    if (pi->payload_len && !pi->payload_cut && !(f & TCP_FIN) && (c->monitor & (1u << r))) {
        uint32_t key = ft_stash_key(ft_slot(&e->ft, c), 2 + s);
        const struct ft_stash *x = e->ft.nstash ? ft_stash_get(&e->ft, key) : NULL;
        if ((x ? x->len : 0) + pi->payload_len + sizeof(struct held_rec) <= wnd)
            hold_segment(e, key, pi);
    }
    return 1;
}

/* The receiver `r` acknowledged `ack`: segments held just past its window whose start it passed were
 * taken; they enter its stream (copies in the event arena: events point at them), the others wait. */
static void band_taken(mos_engine_t *e, struct conn *c, int r, uint32_t ack)
{
    int s = 1 - r;
    uint32_t key = ft_stash_key(ft_slot(&e->ft, c), 2 + s);
    const struct ft_stash *x = ft_stash_get(&e->ft, key);
    if (!x)
        return;
    uint32_t n = x->len, at = 0, taken = 0;
    struct held_rec hr;
    while (next_held(x->data, n, &at, &hr))
        taken += seq_gt(ack, hr.seq);
    if (!taken)
        return;
    const uint8_t *copy = arena_copy(&e->evq.arena, x->data, n); /* the records, waiting ones too */
    ft_stash_drop(&e->ft, &e->rctx, key);
    if (!copy) {
        raise_anomaly(e, c, r, MOS_ERR_MEMCAP, 0, n);
        return;
    }
    const uint8_t *p;
    for (at = 0; (p = next_held(copy, n, &at, &hr));) {
        if (seq_gt(ack, hr.seq)) {
            e->counters[MOS_C_OUT_OF_WINDOW_TAKEN]++;
            give_segment(e, c, s, hr.seq, p, hr.len);
        } else {
            struct pkt_info again = {0};
            again.seq = hr.seq;
            again.payload = p;
            again.payload_len = hr.len;
            hold_segment(e, key, &again); /* not yet */
        }
    }
}

/* PAWS (RFC 7323 5.3): with timestamps on, a segment whose TSval is older than the last one its receiver
 * took from its sender is discarded (Linux tcp_paws_discard, FreeBSD tcp_input): the insertion of a decoy
 * at the right sequence numbers with a stale timestamp changes nothing, here as there. The receiver's
 * TS.Recent is kept in the sender's handshake word (its SYN's TSval to start with) and moves, as Linux's
 * tcp_replace_ts_recent, only with segments at the stream's left edge. A RST is exempt (as in Linux);
 * so is a pure ACK (Linux lets a reordered duplicate ACK through). */
static int paws_discards(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    struct tcp_end *S = &c->tcp.end[s];
    uint8_t f = pi->tcp_flags;
    if (!pi->has_ts || (f & (TCP_SYN | TCP_RST)))
        return 0;
    /* (a TS.Recent of 0 is none: some stacks send their SYNs with TSval 0, Linux and FreeBSD skip PAWS) */
    if (S->hs && (int32_t)(S->hs - pi->tsval) > 1 && (pi_seg_payload(pi) || (f & TCP_FIN))) {
        const struct reasm_dir *d = &c->rx[1 - s];
        raise_anomaly(e, c, 1 - s, MOS_ERR_INVALID_TIMESTAMP,
                      d->initialized ? (uint64_t)reasm_seq_to_off(d, pi->seq) : 0, pi_seg_payload(pi));
        return 1;
    }
    const struct reasm_dir *d = &c->rx[1 - s];
    if ((!S->hs || seq_gt(pi->tsval, S->hs)) && (!d->initialized || seq_leq(pi->seq, d->next_seq)))
        S->hs = pi->tsval;
    return 0;
}

/* Most segments start where the stream is: in the window, nothing more to ask. */
static inline int beyond_window(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    if (__builtin_expect(pi->seq == c->rx[1 - s].next_seq, 1))
        return 0;
    return beyond_window_slow(e, c, s, pi);
}

void tcp_track(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    if (__builtin_expect(c->tcp.end[1 - s].state == MOS_TCP_SYN_SENT, 0) && syn_sent_discards(e, c, s, pi))
        return;
    if (beyond_window(e, c, s, pi))
        return;
    if (c->tcp.end[s].ts_ok && c->tcp.end[s].hs_ts && paws_discards(e, c, s, pi))
        return;
    sender_update(e, c, s, pi);
    emit(e, c, MOS_EV_PKT_IN, s, MOS_HK_SND, NULL);
    receiver_update(e, c, s, pi);
    if (c->flags & CF_ENDED)
        return; /* RST */
    emit(e, c, MOS_EV_PKT_IN, 1 - s, MOS_HK_RCV, NULL);
    if (tcp_both_fins(&c->tcp) && is_closed_state(c->tcp.end[0].state) && is_closed_state(c->tcp.end[1].state))
        engine_end_conn(e, c, MOS_END_FIN, s);
}

int tcp_syn_starts_anew(const struct conn *c, int s, const struct pkt_info *pi)
{
    const struct tcp_end *S = &c->tcp.end[s], *R = &c->tcp.end[1 - s];
    if ((pi->tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) != TCP_SYN)
        return 0;
    if (!S->isn_known || pi->seq != S->isn)
        return 1; /* another ISN */
    /* The old ISN: after a RST that ended an answered handshake, nothing is left for a retransmitted SYN
     * to reach; after FINs, a receiver that closed second keeps no TIME_WAIT, and one in TIME_WAIT takes
     * a SYN past what it had received (RFC 6191, Linux tcp_timewait_state_process). */
    if (c->end_reason == MOS_END_RST)
        return R->isn_known;
    if (c->end_reason == MOS_END_FIN)
        return R->state != MOS_TCP_TIME_WAIT || seq_gt(pi->seq, S->snd_nxt);
    return 0;
}

int tcp_is_late_rexmit(const struct conn *c, int s, const struct pkt_info *pi)
{
    const struct tcp_end *S = &c->tcp.end[s];
    uint8_t f = pi->tcp_flags;
    if (!S->snd_nxt || (f & (TCP_SYN | TCP_RST)))
        return 0;
    uint32_t seglen = pi_seg_payload(pi) + ((f & TCP_FIN) ? 1u : 0u);
    return seglen ? seq_leq(pi->seq + seglen, S->snd_nxt) : 0;
}

/* What each side may send after a RST and be held: its receiver's window (64 KiB at least), within the
 * direction's buffer limit. Held as records (sequence number, length, bytes), in any order: the
 * reassembly of the connection that follows puts them in place. */
static uint32_t rst_hold_limit(const mos_engine_t *e, const struct conn *c, int s)
{
    uint32_t w = c->tcp.end[1 - s].max_win > 65535 ? c->tcp.end[1 - s].max_win : 65535;
    return w < e->cfg.dir_buffer_limit ? w : e->cfg.dir_buffer_limit;
}

void tcp_rst_held_drop(mos_engine_t *e, struct conn *c)
{
    uint32_t slot = ft_slot(&e->ft, c);
    for (int k = 0; k < 2 && e->ft.nstash; k++)
        ft_stash_drop(&e->ft, &e->rctx, ft_stash_key(slot, k));
}

int tcp_after_rst(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    struct tcp_end *S = &c->tcp.end[s];
    uint32_t slot = ft_slot(&e->ft, c);
    uint32_t wnd = c->tcp.end[1 - s].max_win > 65535 ? c->tcp.end[1 - s].max_win : 65535;
    int in_space = S->snd_nxt && seq_geq(pi->seq, S->snd_nxt - wnd) && seq_leq(pi->seq, S->snd_nxt + wnd);
    if (pi->tcp_flags & TCP_RST) {
        if (in_space) { /* reset again (a RST far from its sender's numbers is no host's): refused */
            tcp_rst_held_drop(e, c);
            c->tcp.end[0].talked = c->tcp.end[1].talked = 0;
        }
        return 0;
    }
    if ((pi->tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK) && !S->syn_seen) {
        /* the server's answer to the SYN, after a RST that ended the handshake: it talks on, and its
         * sequence space starts here */
        S->syn_seen = S->isn_known = 1;
        S->isn = pi->seq;
        S->snd_nxt = pi->seq + 1;
        S->talked = 1;
        return c->tcp.end[1 - s].talked;
    }
    if ((pi->tcp_flags & TCP_SYN) || !in_space)
        return 0; /* in its own sequence space: its stack, not a stranger on a reused port */
    S->talked = 1;
    if (c->tcp.end[1 - s].talked)
        return 1; /* this packet is then processed on the connection that follows */
    if (!pi->payload_len || pi->payload_cut || !(c->monitor & (1u << (1 - s))))
        return 0; /* (bytes the capture cut could not be given back: only whole segments are held) */
    uint32_t key = ft_stash_key(slot, s);
    const struct ft_stash *x = e->ft.nstash ? ft_stash_get(&e->ft, key) : NULL;
    uint32_t held = x ? x->len : 0, limit = rst_hold_limit(e, c, s);
    uint32_t rec = (uint32_t)sizeof(struct held_rec) + pi->payload_len;
    if (!seq_geq(pi->seq, S->snd_nxt) || pi->seq + pi->payload_len - S->snd_nxt > limit || held + rec > limit + 4096u)
        return 0; /* behind what it had sent, or more than its peer's window: not held */
    hold_segment(e, key, pi);
    return 0;
}

void tcp_rst_held_take(mos_engine_t *e, struct conn *old, struct rst_held *h)
{
    memset(h, 0, sizeof(*h));
    uint32_t slot = ft_slot(&e->ft, old);
    for (int k = 0; k < 2; k++) {
        uint32_t key = ft_stash_key(slot, k);
        const struct ft_stash *x = e->ft.nstash ? ft_stash_get(&e->ft, key) : NULL;
        if (!x)
            continue;
        h->seq[k] = old->tcp.end[k].snd_nxt;
        h->data[k] = arena_copy(&e->evq.arena, x->data, x->len);
        h->len[k] = h->data[k] ? x->len : 0;
        struct held_rec hr;
        for (uint32_t at = 0; next_held(h->data[k], h->len[k], &at, &hr);)
            h->bytes += hr.len;
        if (!h->data[k])
            raise_anomaly(e, old, 1 - k, MOS_ERR_MEMCAP, 0, x->len);
        ft_stash_drop(&e->ft, &e->rctx, key);
    }
}

void tcp_rst_held_give(mos_engine_t *e, struct conn *c, const struct rst_held *h)
{
    for (int k = 0; k < 2; k++) {
        if (!h->len[k])
            continue;
        struct reasm_dir *d = &c->rx[1 - k];
        if ((c->monitor & (1u << (1 - k))) && !d->initialized)
            reasm_dir_init(d, h->seq[k], d->policy, d->buffering); /* where its stream had stopped */
        c->tcp.end[k].snd_nxt = h->seq[k];
        struct held_rec hr;
        const uint8_t *p;
        for (uint32_t at = 0; (p = next_held(h->data[k], h->len[k], &at, &hr));)
            give_segment(e, c, k, hr.seq, p, hr.len);
    }
}
