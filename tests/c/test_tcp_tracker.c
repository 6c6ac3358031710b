/* Unit tests for userspace/tcp_tracker.c: the per-state transition functions directly, then both
 * endpoints' state machines driven through the engine on IPv4 packets built here. Plain main(); prints
 * "N passed, N failed", exits non-zero on failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mos_engine.h"
#include "reasm.h"
#include "tcp_tracker.h"

#include "check.h"

/* ---- the transition table ------------------------------------------------------------------- */

static void test_next_state_table(void)
{
    /* the handshake */
    CHECK_EQ(tcp_next_state(MOS_TCP_CLOSED, TCP_IN_SND_SYN), MOS_TCP_SYN_SENT);
    CHECK_EQ(tcp_next_state(MOS_TCP_LISTEN, TCP_IN_RCV_SYN), MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(tcp_next_state(MOS_TCP_LISTEN, TCP_IN_SND_SYNACK), MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(tcp_next_state(MOS_TCP_CLOSED, TCP_IN_SND_SYNACK), MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_SENT, TCP_IN_RCV_SYNACK), MOS_TCP_ESTABLISHED);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_SENT, TCP_IN_SND_ACK_OF_SYN), MOS_TCP_ESTABLISHED);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_RECEIVED, TCP_IN_RCV_ACK_OF_SYN), MOS_TCP_ESTABLISHED);
    /* simultaneous open */
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_SENT, TCP_IN_RCV_SYN), MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_RECEIVED, TCP_IN_RCV_SYNACK), MOS_TCP_ESTABLISHED);
    /* a second SYN changes nothing once the handshake is under way */
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_SENT, TCP_IN_SND_SYN), MOS_TCP_SYN_SENT);
    CHECK_EQ(tcp_next_state(MOS_TCP_ESTABLISHED, TCP_IN_RCV_SYN), MOS_TCP_ESTABLISHED);
    CHECK_EQ(tcp_next_state(MOS_TCP_ESTABLISHED, TCP_IN_RCV_SYNACK), MOS_TCP_ESTABLISHED);
    /* the active close */
    CHECK_EQ(tcp_next_state(MOS_TCP_ESTABLISHED, TCP_IN_SND_FIN), MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_RECEIVED, TCP_IN_SND_FIN), MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_SENT, TCP_IN_SND_FIN), MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(tcp_next_state(MOS_TCP_FIN_WAIT_1, TCP_IN_RCV_ACK_OF_FIN), MOS_TCP_FIN_WAIT_2);
    CHECK_EQ(tcp_next_state(MOS_TCP_FIN_WAIT_2, TCP_IN_RCV_FIN), MOS_TCP_TIME_WAIT);
    CHECK_EQ(tcp_next_state(MOS_TCP_FIN_WAIT_1, TCP_IN_RCV_FIN), MOS_TCP_CLOSING);
    CHECK_EQ(tcp_next_state(MOS_TCP_CLOSING, TCP_IN_RCV_ACK_OF_FIN), MOS_TCP_TIME_WAIT);
    /* the passive close */
    CHECK_EQ(tcp_next_state(MOS_TCP_ESTABLISHED, TCP_IN_RCV_FIN), MOS_TCP_CLOSE_WAIT);
    CHECK_EQ(tcp_next_state(MOS_TCP_SYN_RECEIVED, TCP_IN_RCV_FIN), MOS_TCP_CLOSE_WAIT);
    CHECK_EQ(tcp_next_state(MOS_TCP_CLOSE_WAIT, TCP_IN_SND_FIN), MOS_TCP_LAST_ACK);
    CHECK_EQ(tcp_next_state(MOS_TCP_CLOSE_WAIT, TCP_IN_SND_FIN_CROSSED), MOS_TCP_CLOSING);
    CHECK_EQ(tcp_next_state(MOS_TCP_LAST_ACK, TCP_IN_RCV_ACK_OF_FIN), MOS_TCP_CLOSED);
    /* an ACK of a FIN before any FIN, or a FIN's ACK in TIME_WAIT, changes nothing */
    CHECK_EQ(tcp_next_state(MOS_TCP_ESTABLISHED, TCP_IN_RCV_ACK_OF_FIN), MOS_TCP_ESTABLISHED);
    CHECK_EQ(tcp_next_state(MOS_TCP_TIME_WAIT, TCP_IN_RCV_ACK_OF_FIN), MOS_TCP_TIME_WAIT);
    CHECK_EQ(tcp_next_state(MOS_TCP_TIME_WAIT, TCP_IN_RCV_FIN), MOS_TCP_TIME_WAIT);
    CHECK_EQ(tcp_next_state(MOS_TCP_FIN_WAIT_2, TCP_IN_SND_FIN), MOS_TCP_FIN_WAIT_2);
    /* an acceptable RST closes every state */
    for (int st = MOS_TCP_CLOSED; st <= MOS_TCP_TIME_WAIT; st++)
        CHECK_EQ(tcp_next_state(st, TCP_IN_RST), MOS_TCP_CLOSED);
    /* an out-of-range state is left as it is, not looked up */
    CHECK_EQ(tcp_next_state(MOS_TCP_TIME_WAIT + 1, TCP_IN_RST), MOS_TCP_TIME_WAIT + 1);
}

static void test_anomaly_table(void)
{
    /* ERROR reasons keep their numbers: Python and saved results use them */
    CHECK_EQ(MOS_ERR_OUT_OF_WINDOW, 1);
    CHECK_EQ(MOS_ERR_RST_OUT_OF_WINDOW, 2);
    CHECK_EQ(MOS_ERR_BUFFER_LIMIT, 3);
    CHECK_EQ(MOS_ERR_MEMCAP, 4);
    CHECK_EQ(MOS_ERR_SEGMENT_LIMIT, 5);
    CHECK(mos_anomaly_name(0) == NULL);
    CHECK_EQ(MOS_ERR_SYN_DATA_DISCARDED, 6);
    CHECK_EQ(MOS_ERR_DATA_AFTER_FIN, 7);
    CHECK_EQ(MOS_ERR_MALFORMED, 8);
    CHECK_EQ(MOS_ERR_RST_CHALLENGED, 9);
    CHECK_EQ(MOS_ERR_INVALID_TIMESTAMP, 10);
    CHECK_EQ(MOS_ERR_INVALID_ACK, 11);
    CHECK_EQ(MOS_ERR_RST_INJECT_SUSPECTED, 12);
    CHECK_EQ(MOS_ERR_SYNACK_DIFF_SEQ, 16);
    CHECK(mos_anomaly_name(12) && !strcmp(mos_anomaly_name(12), "stream.suspected_rst_inject"));
    CHECK(mos_anomaly_name(18) == NULL); /* past the table's end */
    CHECK(mos_anomaly_name(6) && !strcmp(mos_anomaly_name(6), "stream.syn_data_discarded"));
    CHECK(mos_anomaly_name(7) && !strcmp(mos_anomaly_name(7), "stream.data_after_fin"));
    CHECK(mos_anomaly_name(8) && !strcmp(mos_anomaly_name(8), "decoder.malformed"));
    CHECK(mos_anomaly_name(-1) == NULL);
    CHECK(mos_anomaly_name(1) && !strcmp(mos_anomaly_name(1), "stream.pkt_out_of_window"));
    CHECK(mos_anomaly_name(2) && !strcmp(mos_anomaly_name(2), "stream.rst_out_of_window"));
    CHECK(mos_anomaly_name(3) && !strcmp(mos_anomaly_name(3), "stream.reassembly_buffer_limit"));
}

/* ---- packets through the engine --------------------------------------------------------------- */

#define ISN_C 1000u
#define ISN_S 5000000u
#define MAX_EVS 64

struct ev_rec {
    uint8_t type, side, hook, old_state, new_state;
    uint32_t reason;
    uint64_t off;
    uint32_t len;
};

/* One connection 10.0.0.1:40000 (client) <-> 10.0.0.2:80 (server), fed one packet at a time. */
struct h {
    mos_engine_t *e;
    uint64_t ts;
    uint32_t slot;
    uint64_t id;
    int nev;              /* events of the last packet */
    struct ev_rec ev[MAX_EVS];
    int ends, end_reason; /* CONN_END events so far */
    int errors[32];       /* ERROR events so far, by reason */
    int orphans;
    uint8_t cli, svr;     /* states after the last packet */
};

static int h_policy = REASM_POLICY_FIRST; /* the overlap (target) policy of the next h_open */

static void h_open(struct h *h, int pickup, uint32_t dir_buffer_limit)
{
    memset(h, 0, sizeof(*h));
    struct mos_config cfg;
    mos_config_default(&cfg);
    cfg.policy = (uint8_t)h_policy;
    cfg.max_conns = 64;
    cfg.pickup = (uint8_t)pickup;
    cfg.checksum = MOS_CSUM_OFF; /* the packets built here carry no checksums */
    if (dir_buffer_limit)
        cfg.dir_buffer_limit = dir_buffer_limit;
    char err[128];
    h->e = mos_engine_new(&cfg, err, sizeof(err));
    if (!h->e) {
        fprintf(stderr, "mos_engine_new: %s\n", err);
        exit(2);
    }
    uint64_t m = 1ull << MOS_EV_CONN_START | 1ull << MOS_EV_CONN_END | 1ull << MOS_EV_TCP_STATE_CHANGE |
                 1ull << MOS_EV_ERROR | 1ull << MOS_EV_ORPHAN;
    for (int hook = 0; hook < 2; hook++)
        for (int side = 0; side < 2; side++)
            mos_engine_set_mask(h->e, hook, side, m);
    h->ts = 1000000000ull;
}

static void h_close(struct h *h)
{
    mos_engine_free(h->e);
    h->e = NULL;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }

/* A segment from the client (from_cli) or the server; a SYN carries window scale 7. */
static void h_send(struct h *h, int from_cli, uint8_t flags, uint32_t seq, uint32_t ack, const char *data)
{
    uint8_t p[1600];
    uint32_t dlen = data ? (uint32_t)strlen(data) : 0;
    uint32_t thl = (flags & 0x02) ? 24 : 20;
    uint32_t tot = 20 + thl + dlen;
    memset(p, 0, sizeof(p));
    p[0] = 0x45;
    put16(p + 2, (uint16_t)tot);
    p[8] = 64;
    p[9] = 6;
    uint8_t a[4] = {10, 0, 0, 1}, b[4] = {10, 0, 0, 2};
    memcpy(p + 12, from_cli ? a : b, 4);
    memcpy(p + 16, from_cli ? b : a, 4);
    uint8_t *t = p + 20;
    put16(t, from_cli ? 40000 : 80);
    put16(t + 2, from_cli ? 80 : 40000);
    put32(t + 4, seq);
    put32(t + 8, ack);
    t[12] = (uint8_t)((thl / 4) << 4);
    t[13] = flags;
    put16(t + 14, 1024);
    if (thl == 24) {
        t[20] = 3; /* window scale */
        t[21] = 3;
        t[22] = 7;
        t[23] = 1; /* NOP */
    }
    if (dlen)
        memcpy(t + thl, data, dlen);
    struct mos_pkt pk = {p, tot, tot, h->ts};
    h->ts += 1000;
    uint32_t n = mos_engine_feed(h->e, MOS_DLT_IPV4, &pk, 1, 0);
    CHECK_EQ(n, 1);
    const struct mos_event *evs;
    uint32_t ne = mos_engine_events(h->e, &evs);
    h->nev = 0;
    for (uint32_t i = 0; i < ne; i++) {
        const struct mos_event *ev = &evs[i];
        if (h->nev < MAX_EVS) {
            struct ev_rec *r = &h->ev[h->nev++];
            r->type = ev->type;
            r->side = ev->side;
            r->hook = ev->hook;
            r->old_state = ev->old_state;
            r->new_state = ev->side == MOS_SIDE_CLI ? ev->cli_state : ev->svr_state;
            r->reason = ev->reason;
            r->off = ev->off;
            r->len = ev->len;
        }
        if (ev->type == MOS_EV_CONN_START) {
            h->slot = ev->conn;
            h->id = ev->conn_id;
        } else if (ev->type == MOS_EV_CONN_END) {
            h->ends++;
            h->end_reason = (int)ev->reason;
        } else if (ev->type == MOS_EV_ERROR && ev->reason < sizeof(h->errors) / sizeof(h->errors[0])) {
            h->errors[ev->reason]++;
        } else if (ev->type == MOS_EV_ORPHAN) {
            h->orphans++;
        }
    }
    struct mos_conn_info ci;
    if (h->id && mos_conn_info(h->e, h->slot, h->id, &ci) == 0) {
        h->cli = ci.cli_state;
        h->svr = ci.svr_state;
    }
    mos_engine_events_done(h->e);
}

static uint64_t counter(struct h *h, int c) { return mos_engine_counters(h->e)[c]; }

/* The number of TCP_STATE_CHANGE events of the last packet that took `side` to `st` at `hook`. */
static int changed(struct h *h, int side, int st, int hook)
{
    int n = 0;
    for (int i = 0; i < h->nev; i++)
        if (h->ev[i].type == MOS_EV_TCP_STATE_CHANGE && h->ev[i].side == side && h->ev[i].new_state == st &&
            h->ev[i].hook == hook)
            n++;
    return n;
}

#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10
#define CLI 1
#define SVR 0

/* The three packets of the handshake; after it the client's next byte is ISN_C+1, the server's
 * ISN_S+1. */
static void handshake(struct h *h)
{
    h_send(h, CLI, F_SYN, ISN_C, 0, NULL);
    h_send(h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    h_send(h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, NULL);
}

static void test_three_way_handshake(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, NULL);
    CHECK(h.id != 0);
    CHECK_EQ(h.cli, MOS_TCP_SYN_SENT);
    CHECK_EQ(h.svr, MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_SYN_SENT, MOS_HK_SND), 1);       /* the sender's stack */
    CHECK_EQ(changed(&h, MOS_SIDE_SVR, MOS_TCP_SYN_RECEIVED, MOS_HK_RCV), 1);   /* the receiver's */
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_ESTABLISHED, MOS_HK_RCV), 1);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_ESTABLISHED);
    CHECK_EQ(changed(&h, MOS_SIDE_SVR, MOS_TCP_ESTABLISHED, MOS_HK_RCV), 1);
    struct mos_conn_info ci;
    CHECK_EQ(mos_conn_info(h.e, h.slot, h.id, &ci), 0);
    CHECK_EQ(ci.cli_isn, ISN_C);
    CHECK_EQ(ci.svr_isn, ISN_S);
    CHECK_EQ(ci.cli_wscale, 7); /* both SYNs carried the option */
    CHECK_EQ(ci.svr_wscale, 7);
    CHECK_EQ(ci.picked_up, 0);
    CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 1);
    h_close(&h);
}

static void test_simultaneous_open(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, NULL);
    h_send(&h, SVR, F_SYN, ISN_S, 0, NULL); /* the server's SYN crosses the client's */
    CHECK_EQ(h.cli, MOS_TCP_SYN_RECEIVED);
    CHECK_EQ(h.svr, MOS_TCP_SYN_RECEIVED);
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_SYN_RECEIVED);
    h_send(&h, CLI, F_SYN | F_ACK, ISN_C, ISN_S + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.ends, 0);
    h_close(&h);
}

static void test_syn_retransmission(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, NULL);
    h_send(&h, CLI, F_SYN, ISN_C, 0, NULL);
    CHECK_EQ(counter(&h, MOS_C_SYN_REXMIT), 1);
    CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 1);
    CHECK_EQ(h.nev, 0); /* no transition the second time */
    CHECK_EQ(h.cli, MOS_TCP_SYN_SENT);
    struct mos_conn_info ci;
    CHECK_EQ(mos_conn_info(h.e, h.slot, h.id, &ci), 0);
    CHECK_EQ(ci.rexmit_pkts[MOS_SIDE_CLI], 1);
    CHECK_EQ(ci.pkts[MOS_SIDE_CLI], 2);
    /* a SYN with another sequence number is no retransmission */
    h_send(&h, CLI, F_SYN, ISN_C + 7, 0, NULL);
    CHECK_EQ(counter(&h, MOS_C_SYN_REXMIT), 1);
    h_close(&h);
}

/* The client closes first; the server sends data after the client's FIN, then closes. */
static void test_close_client_first(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "hello");
    h_send(&h, CLI, F_FIN | F_ACK, ISN_C + 6, ISN_S + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(h.svr, MOS_TCP_CLOSE_WAIT);
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_FIN_WAIT_1, MOS_HK_SND), 1);
    CHECK_EQ(changed(&h, MOS_SIDE_SVR, MOS_TCP_CLOSE_WAIT, MOS_HK_RCV), 1);
    h_send(&h, SVR, F_ACK, ISN_S + 1, ISN_C + 7, NULL);
    CHECK_EQ(h.cli, MOS_TCP_FIN_WAIT_2);
    h_send(&h, SVR, F_ACK, ISN_S + 1, ISN_C + 7, "bye"); /* half-closed: the server still sends */
    CHECK_EQ(h.cli, MOS_TCP_FIN_WAIT_2);
    CHECK_EQ(h.svr, MOS_TCP_CLOSE_WAIT);
    h_send(&h, SVR, F_FIN | F_ACK, ISN_S + 4, ISN_C + 7, NULL);
    CHECK_EQ(h.svr, MOS_TCP_LAST_ACK);
    CHECK_EQ(h.cli, MOS_TCP_TIME_WAIT);
    CHECK_EQ(h.ends, 0);
    h_send(&h, CLI, F_ACK, ISN_C + 7, ISN_S + 5, NULL);
    CHECK_EQ(h.svr, MOS_TCP_CLOSED);
    CHECK_EQ(h.ends, 1);
    CHECK_EQ(h.end_reason, MOS_END_FIN);
    struct mos_conn_info ci;
    CHECK_EQ(mos_conn_info(h.e, h.slot, h.id, &ci), 0); /* lingers for stragglers */
    CHECK_EQ(ci.stream_off[MOS_SIDE_SVR], 5);
    CHECK_EQ(ci.stream_off[MOS_SIDE_CLI], 3);
    /* a retransmitted last ACK is absorbed by the lingering connection, no new one */
    h_send(&h, CLI, F_ACK, ISN_C + 7, ISN_S + 5, NULL);
    CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 1);
    CHECK_EQ(h.ends, 1);
    h_close(&h);
}

/* The server closes first, the client after sending more. */
static void test_close_server_first(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, SVR, F_FIN | F_ACK, ISN_S + 1, ISN_C + 1, NULL);
    CHECK_EQ(h.svr, MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(h.cli, MOS_TCP_CLOSE_WAIT);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 2, "more");
    CHECK_EQ(h.svr, MOS_TCP_FIN_WAIT_2);
    h_send(&h, CLI, F_FIN | F_ACK, ISN_C + 5, ISN_S + 2, NULL);
    CHECK_EQ(h.cli, MOS_TCP_LAST_ACK);
    CHECK_EQ(h.svr, MOS_TCP_TIME_WAIT);
    h_send(&h, SVR, F_ACK, ISN_S + 2, ISN_C + 6, NULL);
    CHECK_EQ(h.cli, MOS_TCP_CLOSED);
    CHECK_EQ(h.ends, 1);
    CHECK_EQ(h.end_reason, MOS_END_FIN);
    h_close(&h);
}

/* Both FINs cross: each is sent before the other arrived. */
static void test_simultaneous_close(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, CLI, F_FIN | F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(h.svr, MOS_TCP_CLOSE_WAIT);
    /* the server's FIN does not acknowledge the client's: it was sent before that arrived */
    h_send(&h, SVR, F_FIN | F_ACK, ISN_S + 1, ISN_C + 1, NULL);
    CHECK_EQ(h.svr, MOS_TCP_CLOSING);
    CHECK_EQ(h.cli, MOS_TCP_CLOSING);
    h_send(&h, SVR, F_ACK, ISN_S + 2, ISN_C + 2, NULL);
    CHECK_EQ(h.cli, MOS_TCP_TIME_WAIT);
    CHECK_EQ(h.ends, 0);
    h_send(&h, CLI, F_ACK, ISN_C + 2, ISN_S + 2, NULL);
    CHECK_EQ(h.svr, MOS_TCP_TIME_WAIT);
    CHECK_EQ(h.ends, 1);
    CHECK_EQ(h.end_reason, MOS_END_FIN);
    h_close(&h);
}

/* A FIN that acknowledges the peer's FIN is a passive close (LAST_ACK), not a crossing. */
static void test_fin_ack_chain(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, CLI, F_FIN | F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    h_send(&h, SVR, F_FIN | F_ACK, ISN_S + 1, ISN_C + 2, NULL);
    CHECK_EQ(h.svr, MOS_TCP_LAST_ACK);
    /* the client went FIN_WAIT_1 -> FIN_WAIT_2 (its FIN acknowledged) -> TIME_WAIT (the server's FIN) */
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_FIN_WAIT_2, MOS_HK_RCV), 1);
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_TIME_WAIT, MOS_HK_RCV), 1);
    CHECK_EQ(h.cli, MOS_TCP_TIME_WAIT);
    h_send(&h, CLI, F_ACK, ISN_C + 2, ISN_S + 2, NULL);
    CHECK_EQ(h.svr, MOS_TCP_CLOSED);
    CHECK_EQ(h.ends, 1);
    h_close(&h);
}

/* Drives a connection to one of the stages below, then an in-window RST from `from_cli`. */
enum stage { ST_SYN_SENT, ST_SYN_RECEIVED, ST_ESTABLISHED, ST_FIN_WAIT_1, ST_FIN_WAIT_2, ST_LAST_ACK, ST_COUNT };

static void to_stage(struct h *h, enum stage st)
{
    h_send(h, CLI, F_SYN, ISN_C, 0, NULL);
    if (st == ST_SYN_SENT)
        return;
    h_send(h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    if (st == ST_SYN_RECEIVED)
        return;
    h_send(h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    if (st == ST_ESTABLISHED)
        return;
    h_send(h, CLI, F_FIN | F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    if (st == ST_FIN_WAIT_1)
        return;
    h_send(h, SVR, F_ACK, ISN_S + 1, ISN_C + 2, NULL);
    if (st == ST_FIN_WAIT_2)
        return;
    h_send(h, SVR, F_FIN | F_ACK, ISN_S + 1, ISN_C + 2, NULL);
}

static void test_rst_each_state(void)
{
    static const uint8_t cli_st[ST_COUNT] = {MOS_TCP_SYN_SENT, MOS_TCP_ESTABLISHED, MOS_TCP_ESTABLISHED,
                                             MOS_TCP_FIN_WAIT_1, MOS_TCP_FIN_WAIT_2, MOS_TCP_TIME_WAIT};
    static const uint8_t svr_st[ST_COUNT] = {MOS_TCP_SYN_RECEIVED, MOS_TCP_SYN_RECEIVED, MOS_TCP_ESTABLISHED,
                                             MOS_TCP_CLOSE_WAIT, MOS_TCP_CLOSE_WAIT, MOS_TCP_LAST_ACK};
    for (int st = 0; st < ST_COUNT; st++) {
        struct h h;
        h_open(&h, 1, 0);
        to_stage(&h, (enum stage)st);
        CHECK_EQ(h.cli, cli_st[st]);
        CHECK_EQ(h.svr, svr_st[st]);
        CHECK_EQ(h.ends, 0);
        if (st == ST_SYN_SENT) {
            /* the server refuses: RST+ACK acknowledging the SYN, the only RST a SYN_SENT takes */
            h_send(&h, SVR, F_RST | F_ACK, 0, ISN_C + 1, NULL);
        } else {
            uint32_t seq = ISN_S + 1 + (st == ST_LAST_ACK ? 1u : 0u);
            h_send(&h, SVR, F_RST, seq, 0, NULL);
        }
        CHECK_EQ(h.cli, MOS_TCP_CLOSED);
        CHECK_EQ(h.svr, MOS_TCP_CLOSED);
        CHECK_EQ(h.ends, 1);
        CHECK_EQ(h.end_reason, MOS_END_RST);
        CHECK_EQ(counter(&h, MOS_C_RST_ACCEPTED), 1);
        CHECK_EQ(h.errors[MOS_ERR_RST_OUT_OF_WINDOW], 0);
        h_close(&h);
    }
}

static void test_rst_out_of_window(void)
{
    struct h h;
    h_open(&h, 1, 0);
    /* SYN_SENT takes no RST without an ACK of its SYN */
    h_send(&h, CLI, F_SYN, ISN_C, 0, NULL);
    h_send(&h, SVR, F_RST, 0, 0, NULL);
    CHECK_EQ(h.cli, MOS_TCP_SYN_SENT);
    CHECK_EQ(h.ends, 0);
    CHECK_EQ(h.errors[MOS_ERR_RST_OUT_OF_WINDOW], 1);
    h_send(&h, SVR, F_RST | F_ACK, 0, ISN_C + 99, NULL); /* acknowledges something else: discarded */
    CHECK_EQ(h.errors[MOS_ERR_INVALID_ACK], 1);
    CHECK_EQ(h.errors[MOS_ERR_RST_OUT_OF_WINDOW], 1);
    CHECK_EQ(h.cli, MOS_TCP_SYN_SENT);
    h_send(&h, SVR, F_FIN | F_ACK, 0, 1, NULL); /* a FIN that acknowledges no SYN of the client's */
    CHECK_EQ(h.errors[MOS_ERR_INVALID_ACK], 2);
    CHECK_EQ(counter(&h, MOS_C_INVALID_ACK), 2);
    CHECK_EQ(h.cli, MOS_TCP_SYN_SENT);
    CHECK_EQ(h.svr, MOS_TCP_SYN_RECEIVED); /* the server's state is not the forger's */
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    /* established: a RST far from the next expected byte is ignored, and counted by the anomaly table */
    h_send(&h, SVR, F_RST, ISN_S + 10000000u, 0, NULL);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.ends, 0);
    CHECK_EQ(h.errors[MOS_ERR_RST_OUT_OF_WINDOW], 2);
    CHECK_EQ(counter(&h, MOS_C_RST_OUT_OF_WINDOW), 2);
    CHECK_EQ(counter(&h, MOS_C_RST_ACCEPTED), 0);
    /* in the window but not at the next byte: the target (RFC 5961) answers with a challenge ACK */
    h_send(&h, CLI, F_RST, ISN_C + 7, 0, NULL);
    CHECK_EQ(h.ends, 0);
    CHECK_EQ(h.errors[MOS_ERR_RST_CHALLENGED], 1);
    CHECK_EQ(counter(&h, MOS_C_RST_CHALLENGED), 1);
    /* at the next byte: taken */
    h_send(&h, CLI, F_RST, ISN_C + 1, 0, NULL);
    CHECK_EQ(h.ends, 1);
    CHECK_EQ(h.end_reason, MOS_END_RST);
    h_close(&h);
}

/* Which in-window RSTs end the connection depends on the target: old Linux and Solaris take any,
 * the others (RFC 5961) only the one at RCV.NXT. */
static void test_rst_policy(void)
{
    static const struct { int policy, takes_in_window; } cases[] = {
        {REASM_POLICY_FIRST, 0}, {REASM_POLICY_LAST, 0}, {REASM_POLICY_BSD, 0}, {REASM_POLICY_LINUX, 0},
        {REASM_POLICY_OLD_LINUX, 1}, {REASM_POLICY_WINDOWS, 0}, {REASM_POLICY_VISTA, 0},
        {REASM_POLICY_SOLARIS, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct h h;
        h_policy = cases[i].policy;
        h_open(&h, 1, 0);
        handshake(&h);
        h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "hello");
        h_send(&h, SVR, F_RST, ISN_S + 1 + 100, 0, NULL);
        CHECK_EQ(h.ends, cases[i].takes_in_window);
        CHECK_EQ(h.errors[MOS_ERR_RST_CHALLENGED], !cases[i].takes_in_window);
        if (!h.ends) {
            h_send(&h, SVR, F_RST | F_ACK, ISN_S + 1, ISN_C + 6, NULL);
            CHECK_EQ(h.ends, 1);
        }
        /* both go on talking after the RST: the client's data, acknowledged by the server */
        h_send(&h, CLI, F_ACK, ISN_C + 6, ISN_S + 1, "more");
        CHECK_EQ(h.errors[MOS_ERR_RST_INJECT_SUSPECTED], 0);
        h_send(&h, SVR, F_ACK, ISN_S + 1, ISN_C + 10, NULL);
        CHECK_EQ(h.errors[MOS_ERR_RST_INJECT_SUSPECTED], 1);
        CHECK_EQ(counter(&h, MOS_C_RST_INJECT_SUSPECTED), 1);
        CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 2);
        h_close(&h);
    }
    h_policy = REASM_POLICY_FIRST;
}

/* After a RST, what its receiver sends is held; it is dropped if the RST's sender resets again, and a
 * late retransmission of a closed connection is absorbed, not a new connection. */
static void test_after_close(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, SVR, F_RST, ISN_S + 1, 0, NULL);
    CHECK_EQ(h.ends, 1);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "in flight"); /* crossing the RST */
    h_send(&h, SVR, F_RST, ISN_S + 1, 0, NULL);                /* the server's stack has no socket */
    CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 1);
    CHECK_EQ(h.errors[MOS_ERR_RST_INJECT_SUSPECTED], 0);
    h_close(&h);

    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, SVR, F_ACK, ISN_S + 1, ISN_C + 1, "response");
    h_send(&h, SVR, F_FIN | F_ACK, ISN_S + 9, ISN_C + 1, NULL);
    h_send(&h, CLI, F_FIN | F_ACK, ISN_C + 1, ISN_S + 10, NULL);
    h_send(&h, SVR, F_ACK, ISN_S + 10, ISN_C + 2, NULL);
    CHECK_EQ(h.ends, 1);
    h.ts += 30ull * 1000000000ull; /* 30 s later: past the old 10 s linger, inside TIME_WAIT */
    h_send(&h, SVR, F_ACK, ISN_S + 1, ISN_C + 2, "response");
    h_send(&h, SVR, F_FIN | F_ACK, ISN_S + 9, ISN_C + 2, NULL);
    CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 1);
    CHECK_EQ(counter(&h, MOS_C_REXMIT_AFTER_CLOSE), 2);
    CHECK_EQ(counter(&h, MOS_C_DATA_AFTER_CLOSE), 0);
    h_close(&h);
}

/* Two SYN-ACKs with different ISNs: the one the client acknowledges anchors the server's stream. */
static void test_second_synack(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, NULL);
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S + 777777u, ISN_C + 1, NULL);
    CHECK_EQ(h.errors[MOS_ERR_SYNACK_DIFF_SEQ], 1);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 777777u + 1, NULL);
    CHECK_EQ(counter(&h, MOS_C_SYNACK_REANCHORED), 1);
    CHECK_EQ(h.svr, MOS_TCP_ESTABLISHED);
    h_send(&h, SVR, F_ACK, ISN_S + 777777u + 1, ISN_C + 1, "data");
    CHECK_EQ(h.errors[MOS_ERR_OUT_OF_WINDOW], 0);
    struct mos_conn_info ci;
    CHECK_EQ(mos_conn_info(h.e, h.slot, h.id, &ci), 0);
    CHECK_EQ(ci.gap_bytes[MOS_SIDE_CLI], 0);
    h_close(&h);
}

static void test_data_out_of_window(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "in window");
    CHECK_EQ(h.errors[MOS_ERR_OUT_OF_WINDOW], 0);
    /* far beyond twice any window the server allowed (1024 << 7 is below the 65535 floor) */
    uint32_t far = 400000;
    h_send(&h, CLI, F_ACK, ISN_C + 1 + far, ISN_S + 1, "insert");
    CHECK_EQ(h.errors[MOS_ERR_OUT_OF_WINDOW], 1);
    CHECK_EQ(counter(&h, MOS_C_OUT_OF_WINDOW), 1);
    int found = 0;
    for (int i = 0; i < h.nev; i++)
        if (h.ev[i].type == MOS_EV_ERROR) {
            found = 1;
            CHECK_EQ(h.ev[i].side, MOS_SIDE_SVR); /* the receiver's stack raises it */
            CHECK_EQ(h.ev[i].off, far);
            CHECK_EQ(h.ev[i].len, 6);
        }
    CHECK(found);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    h_close(&h);
}

/* A reassembly limit is an anomaly too: the ERROR reason and its counter come from one table. */
static void test_buffer_limit_anomaly(void)
{
    struct h h;
    h_open(&h, 1, 4096);
    handshake(&h);
    char chunk[1001];
    memset(chunk, 'x', 1000);
    chunk[1000] = 0;
    /* out of order (the first byte missing): every byte is held, past the 4096-byte limit */
    for (uint32_t i = 0; i < 8; i++)
        h_send(&h, CLI, F_ACK, ISN_C + 2 + i * 1000, ISN_S + 1, chunk);
    CHECK(h.errors[MOS_ERR_BUFFER_LIMIT] >= 1);
    CHECK_EQ(counter(&h, MOS_C_BUFFER_LIMIT), (uint64_t)h.errors[MOS_ERR_BUFFER_LIMIT]);
    CHECK_EQ(counter(&h, MOS_C_MEMCAP), 0);
    h_close(&h);
}

static void test_pickup_mid_stream(void)
{
    struct h h;
    h_open(&h, 1, 0);
    /* data from the ephemeral port to port 80: the sender is the client */
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "GET /");
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_ESTABLISHED);
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_ESTABLISHED, MOS_HK_SND), 0); /* the guess raises nothing */
    struct mos_conn_info ci;
    CHECK_EQ(mos_conn_info(h.e, h.slot, h.id, &ci), 0);
    CHECK_EQ(ci.picked_up, 1);
    CHECK_EQ(ci.cli_port, 40000);
    CHECK_EQ(ci.svr_port, 80);
    CHECK_EQ(counter(&h, MOS_C_CONNS_PICKED_UP), 1);
    /* the first packet seen is the server's: the client is still the ephemeral port */
    struct h g;
    h_open(&g, 1, 0);
    h_send(&g, SVR, F_ACK, ISN_S + 1, ISN_C + 1, "HTTP/1.1");
    CHECK_EQ(mos_conn_info(g.e, g.slot, g.id, &ci), 0);
    CHECK_EQ(ci.cli_port, 40000);
    h_send(&g, SVR, F_FIN | F_ACK, ISN_S + 9, ISN_C + 1, NULL);
    CHECK_EQ(g.svr, MOS_TCP_FIN_WAIT_1);
    CHECK_EQ(g.cli, MOS_TCP_CLOSE_WAIT);
    h_close(&g);
    h_close(&h);
}

static void test_pickup_at_synack(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL); /* the SYN was not captured */
    CHECK_EQ(h.cli, MOS_TCP_SYN_SENT);
    CHECK_EQ(h.svr, MOS_TCP_SYN_RECEIVED);
    /* the client's ACK shows it got the SYN-ACK: both established */
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, NULL);
    CHECK_EQ(h.cli, MOS_TCP_ESTABLISHED);
    CHECK_EQ(h.svr, MOS_TCP_ESTABLISHED);
    CHECK_EQ(changed(&h, MOS_SIDE_CLI, MOS_TCP_ESTABLISHED, MOS_HK_SND), 1);
    CHECK_EQ(changed(&h, MOS_SIDE_SVR, MOS_TCP_ESTABLISHED, MOS_HK_RCV), 1);
    h_close(&h);
}

static void test_no_pickup(void)
{
    struct h h;
    h_open(&h, 0, 0);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "GET /");
    CHECK_EQ(h.id, 0);
    CHECK_EQ(h.orphans, 1);
    CHECK_EQ(counter(&h, MOS_C_ORPHAN_NO_CONN), 1);
    CHECK_EQ(counter(&h, MOS_C_CONNS_CREATED), 0);
    h_close(&h);
}


/* Bytes delivered so far to `side` (its receive stream, gaps included). */
static uint64_t delivered(struct h *h, int side)
{
    struct mos_conn_info ci;
    CHECK_EQ(mos_conn_info(h->e, h->slot, h->id, &ci), 0);
    return ci.stream_off[side];
}

/* The ERROR event of the last packet with `reason` (its index), or -1. */
static int error_ev(struct h *h, uint32_t reason)
{
    for (int i = 0; i < h->nev; i++)
        if (h->ev[i].type == MOS_EV_ERROR && h->ev[i].reason == reason)
            return i;
    return -1;
}

/* TCP Fast Open: the SYN-ACK acknowledges the SYN's data, which enters the server's stream then. */
static void test_syn_data_acked(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, "hello");
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 0); /* held: not known yet whether the server takes it */
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 6, NULL);
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 5);
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_ACCEPTED), 1);
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_DISCARDED), 0);
    CHECK_EQ(h.errors[MOS_ERR_SYN_DATA_DISCARDED], 0);
    h_send(&h, CLI, F_ACK, ISN_C + 6, ISN_S + 1, "more");
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 9);
    h_close(&h);
}

/* The SYN-ACK acknowledges only the SYN: its data is dropped, the bytes sent later at ISN+1 count. */
static void test_syn_data_not_acked(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, "evil");
    h_send(&h, SVR, F_SYN | F_ACK, ISN_S, ISN_C + 1, NULL);
    int i = error_ev(&h, MOS_ERR_SYN_DATA_DISCARDED);
    CHECK(i >= 0);
    if (i >= 0) {
        CHECK_EQ(h.ev[i].side, MOS_SIDE_SVR);
        CHECK_EQ(h.ev[i].off, 0);
        CHECK_EQ(h.ev[i].len, 4);
    }
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_DISCARDED), 1);
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_DISCARDED_BYTES), 4);
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_ACCEPTED), 0);
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 0);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "good");
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 4);
    CHECK_EQ(h.errors[MOS_ERR_SYN_DATA_DISCARDED], 1);
    CHECK_EQ(mos_engine_reasm_counters(h.e)[REASM_C_REXMIT_SEGMENTS], 0); /* not a retransmission */
    h_close(&h);
}

/* No SYN-ACK seen (one-sided capture): the client's own next segment tells. */
static void test_syn_data_one_sided(void)
{
    struct h h;
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, "evil");
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, NULL); /* a pure ACK decides nothing */
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 0);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "good"); /* resent at ISN+1: the server dropped it */
    CHECK_EQ(h.errors[MOS_ERR_SYN_DATA_DISCARDED], 1);
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 4);
    h_close(&h);

    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, "tfo!");
    h_send(&h, CLI, F_ACK, ISN_C + 5, ISN_S + 1, "next"); /* continues past it: the server took it */
    CHECK_EQ(h.errors[MOS_ERR_SYN_DATA_DISCARDED], 0);
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_ACCEPTED), 1);
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 8);
    h_close(&h);

    /* nothing tells before the end: kept; a RST end: dropped */
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, "kept");
    while (mos_engine_finish(h.e))
        mos_engine_events_done(h.e);
    mos_engine_events_done(h.e);
    CHECK_EQ(counter(&h, MOS_C_SYN_DATA_ACCEPTED), 1);
    CHECK_EQ(mos_engine_reasm_counters(h.e)[REASM_C_BYTES_DELIVERED], 4);
    h_close(&h);
    h_open(&h, 1, 0);
    h_send(&h, CLI, F_SYN, ISN_C, 0, "lost");
    h_send(&h, CLI, F_RST, ISN_C + 1, 0, NULL);
    CHECK_EQ(h.ends, 1);
    CHECK_EQ(h.errors[MOS_ERR_SYN_DATA_DISCARDED], 1);
    CHECK_EQ(mos_engine_reasm_counters(h.e)[REASM_C_BYTES_DELIVERED], 0);
    h_close(&h);
}

/* Bytes at or past the sender's FIN are not delivered: data after the FIN, the tail of a
 * retransmission straddling it, bytes held out of order past it. A retransmitted FIN is fine. */
static void test_data_after_fin(void)
{
    struct h h;
    h_open(&h, 1, 0);
    handshake(&h);
    h_send(&h, CLI, F_ACK, ISN_C + 10, ISN_S + 1, "held"); /* out of order, past the FIN to come */
    h_send(&h, CLI, F_ACK | F_FIN, ISN_C + 1, ISN_S + 1, "abc"); /* FIN at ISN_C+4 */
    int i = error_ev(&h, MOS_ERR_DATA_AFTER_FIN);
    CHECK(i >= 0);
    if (i >= 0) {
        CHECK_EQ(h.ev[i].side, MOS_SIDE_SVR);
        CHECK_EQ(h.ev[i].off, 3);
        CHECK_EQ(h.ev[i].len, 4);
    }
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 3);
    h_send(&h, CLI, F_ACK | F_FIN, ISN_C + 1, ISN_S + 1, "abc"); /* the FIN retransmitted: fine */
    CHECK_EQ(h.errors[MOS_ERR_DATA_AFTER_FIN], 1);
    h_send(&h, CLI, F_ACK, ISN_C + 5, ISN_S + 1, "xyz"); /* after the FIN */
    CHECK_EQ(h.errors[MOS_ERR_DATA_AFTER_FIN], 2);
    h_send(&h, CLI, F_ACK, ISN_C + 1, ISN_S + 1, "abcdef"); /* straddles it: "def" is cut */
    CHECK_EQ(h.errors[MOS_ERR_DATA_AFTER_FIN], 3);
    i = error_ev(&h, MOS_ERR_DATA_AFTER_FIN);
    CHECK(i >= 0 && h.ev[i].off == 3 && h.ev[i].len == 3);
    CHECK_EQ(delivered(&h, MOS_SIDE_SVR), 3);
    CHECK_EQ(counter(&h, MOS_C_DATA_AFTER_FIN), 3);
    CHECK_EQ(counter(&h, MOS_C_DATA_AFTER_FIN_BYTES), 4 + 3 + 3);
    CHECK_EQ(h.svr, MOS_TCP_CLOSE_WAIT);
    h_close(&h);
}

int main(void)
{
    test_next_state_table();
    test_anomaly_table();
    test_three_way_handshake();
    test_simultaneous_open();
    test_syn_retransmission();
    test_close_client_first();
    test_close_server_first();
    test_simultaneous_close();
    test_fin_ack_chain();
    test_rst_each_state();
    test_rst_out_of_window();
    test_rst_policy();
    test_after_close();
    test_second_synack();
    test_data_out_of_window();
    test_buffer_limit_anomaly();
    test_pickup_mid_stream();
    test_pickup_at_synack();
    test_no_pickup();
    test_syn_data_acked();
    test_syn_data_not_acked();
    test_syn_data_one_sided();
    test_data_after_fin();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
