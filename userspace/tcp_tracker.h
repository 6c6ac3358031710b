/* Both endpoints' TCP state machines, as a passive observer can follow them.
 *
 * A packet is taken as mOS takes it: first by its sender's stack (it sent the packet: SYN, FIN, its
 * highest sequence number, its window), PKT_IN at the SND hook; then by the receiver's stack (window
 * check, the bytes into its receive stream, the RST/ACK/FIN effects), PKT_IN at the RCV hook.
 *
 * What a packet means to one endpoint is reduced to an input (enum tcp_input); each state has one
 * function that maps an input to the next state (as Suricata's stream-tcp.c has a function per state,
 * and mOS's tcp_in.c a handler per state), so each state's transitions are read in one place. Window checks, reassembly and acknowledgements stay in the sender/receiver updates. */
#ifndef MOS_TCP_TRACKER_H
#define MOS_TCP_TRACKER_H

#include <stdint.h>

#include "decode.h"

/* One endpoint's TCP stack. */
struct tcp_end {
    uint8_t state;        /* enum mos_tcp_state */
    uint8_t wscale;       /* from its SYN; 0xff: none */
    uint8_t syn_seen : 1, fin_seen : 1, isn_known : 1, ack_hint : 1, ack_pending : 1,
        fin_taken : 1,    /* its FIN is in order in the peer's receive stream: the peer's stack took it */
        ws_ok : 1,        /* window scaling is on (both SYNs carried the option: RFC 7323) */
        fin_cut : 1;      /* held bytes past its FIN were dropped (once, when its FIN was taken) */
    uint8_t syn_data : 2, /* enum tcp_syn_data: what became of the data on its SYN */
        hs_ts : 1,        /* hs is its TSval as the peer holds it: its first SYN's, then TS.Recent */
        hs_alt : 1,       /* hs is the ISN of a later SYN-ACK of it, other than the first one's */
        rst_sent : 1,     /* it sent the RST that ended the connection (as far as we took it) */
        talked : 1,       /* it sent a packet other than a RST, in its own sequence space, after that RST */
        sack_perm : 1,    /* its SYN carried SACK-permitted */
        ts_ok : 1;        /* timestamps are on (both SYNs carried them): PAWS applies */
    uint32_t hs;          /* the handshake's word (hs_ts, hs_alt): the peer's answer tells which SYN
                           * (SYN-ACK) it took; then, with timestamps, the peer's TS.Recent of it */
    uint32_t isn;
    uint32_t snd_nxt;     /* highest sequence number sent + 1 */
    uint32_t fin_seq;     /* sequence number of its FIN */
    uint32_t max_win;     /* largest window it advertised (scaled) */
    uint32_t hint;        /* ack_hint: what it acknowledged before its receive stream was anchored;
                           * ack_pending: the highest ack past a hole, not yet taken as a gap */
};

/* Data on a SYN (without ACK) is the peer's only once the peer acknowledges it (TCP Fast Open, RFC
 * 7413); until a packet tells, a copy waits in the flow table's SYN stash (ft_stash_*), apart from the
 * record: few connections have one, and the record stays small. */
enum tcp_syn_data {
    TCP_SYND_NONE = 0,   /* no SYN data seen */
    TCP_SYND_PENDING,    /* in the SYN stash: not known yet whether the peer took it */
    TCP_SYND_ACCEPTED,   /* acknowledged (at least in part): in the peer's receive stream */
    TCP_SYND_DISCARDED,  /* the peer acknowledged only the SYN: the bytes were dropped */
};

/* The TCP part of a flow: end[MOS_SIDE_CLI], end[MOS_SIDE_SVR]. */
struct tcp_flow {
    struct tcp_end end[2];
};

/* Sequence arithmetic (RFC 1982 style, 32-bit wrap). */
static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_leq(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }
static inline int seq_geq(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }

/* What a packet tells one endpoint's state machine (the sequence checks are made before). */
enum tcp_input {
    TCP_IN_SND_SYN,         /* it sent its first SYN */
    TCP_IN_SND_SYNACK,      /* it sent its first SYN-ACK */
    TCP_IN_SND_ACK_OF_SYN,  /* it acknowledged the peer's SYN (the peer's SYN-ACK was not captured) */
    TCP_IN_SND_FIN,         /* it sent its first FIN */
    TCP_IN_SND_FIN_CROSSED, /* its first FIN, not acknowledging the peer's FIN: sent before that one
                             * arrived (a simultaneous close the capture point saw in the other order) */
    TCP_IN_RCV_SYN,         /* it received a SYN */
    TCP_IN_RCV_SYNACK,      /* it received a SYN-ACK that acknowledges its SYN */
    TCP_IN_RCV_FIN,         /* the peer's FIN is in order in its receive stream */
    TCP_IN_RCV_ACK_OF_SYN,  /* its SYN was acknowledged */
    TCP_IN_RCV_ACK_OF_FIN,  /* its FIN was acknowledged */
    TCP_IN_RST,             /* an acceptable RST */
    TCP_IN_COUNT
};

/* The state an endpoint in `state` goes to on `in` (the same state: no transition). */
int tcp_next_state(int state, enum tcp_input in);

struct conn;
struct reasm_ctx;

/* Sets both endpoints' states of a new connection: a SYN's receiver listens; a connection picked up
 * mid-stream gets a guess (no events for the guess). */
void tcp_flow_start(struct tcp_flow *t, const struct pkt_info *pi, int syn_only);
/* Who is the client of a connection picked up mid-stream: 1 if the packet's sender. */
int tcp_guess_sender_is_client(const struct pkt_info *pi);
/* Both directions of one packet sent by `side`; may end the connection (RST, both FINs acknowledged). */
void tcp_track(mos_engine_t *e, struct conn *c, int side, const struct pkt_info *pi);
/* Holes that `side` acknowledged in the stream it receives become gaps now (the connection moves on or
 * ends). */
void tcp_settle_acks(mos_engine_t *e, struct conn *c, int side);

/* The connection ends: SYN data still pending is settled (kept, unless the end is a RST). */
void tcp_end_syn_data(mos_engine_t *e, struct conn *c, int reason);
/* A SYN sent by `s` after its connection ended starts a new one (port reuse), rather than being a late
 * retransmission of the old one's. */
int tcp_syn_starts_anew(const struct conn *c, int s, const struct pkt_info *pi);

/* A packet sent by `s` after its connection ended lies inside what `s` had sent: a late retransmission
 * (of data or FIN, as a host resends when the last ACK was lost), which its peer's TIME_WAIT absorbs. */
int tcp_is_late_rexmit(const struct conn *c, int s, const struct pkt_info *pi);

/* A packet sent by `s` after the connection ended by a RST we took. The RST was not the endpoints'
 * (injected, or taken under another policy than the target's) if both go on talking in their own
 * sequence spaces (Suricata's "suspected RST inject"): returns 1 then, the conversation is to be
 * followed again. One side talking is not enough: a real RST crosses data already on its way, and a
 * host that reset can still send more, which its peer then refuses with another RST. What each side
 * sends in order meanwhile is held (it may be the bytes the RST was to hide), so following again loses
 * none; a second RST drops what is held. */
int tcp_after_rst(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi);

/* The bytes held after a RST, moved from the ended record `old` (copies in the event arena) to the
 * record `c` that follows the conversation again: they enter the stream their receiver gets. */
struct rst_held {
    const uint8_t *data[2]; /* by sender: records (tcp_tracker.c, struct held_rec) */
    uint32_t seq[2], len[2]; /* where the sender's bytes had stopped; the records' size */
    uint32_t bytes;          /* the payload they hold, both sides */
};
void tcp_rst_held_take(mos_engine_t *e, struct conn *old, struct rst_held *h);
void tcp_rst_held_give(mos_engine_t *e, struct conn *c, const struct rst_held *h);
/* Nothing will follow (a second RST, the end of input): what is held is dropped, undelivered. */
void tcp_rst_held_drop(mos_engine_t *e, struct conn *c);

/* Some side's SYN data is pending (its copy is in the flow table's stash). */
static inline int tcp_syn_data_pending(const struct tcp_flow *t);

static inline int tcp_syn_data_pending(const struct tcp_flow *t)
{
    return t->end[0].syn_data == TCP_SYND_PENDING || t->end[1].syn_data == TCP_SYND_PENDING;
}

/* Both FINs were taken: nothing more will be delivered. */
static inline int tcp_both_fins(const struct tcp_flow *t)
{
    return t->end[0].fin_taken && t->end[1].fin_taken;
}

#endif
