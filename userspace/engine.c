/* The engine: ties its parts together. Packet dispatch (decode, defragmentation, the flow lookup, a
 * new connection or pick-up, then the TCP tracker), expiry, the reassembly callbacks that turn
 * delivered bytes into events and stream files, and the public mos_engine_* / mos_conn_* API.
 * See mos_engine.h for the model.
 *
 *   flow_table.c     connection records, hash, LRU classes, slots freed after the events
 *   flow_alias.c     a connection's second key past an address translation (a NAT's replies)
 *   translate.c      a translated connection's frames rewritten in place (the engine's NAT)
 *   tcp_tracker.c    both endpoints' TCP state machines, one function per state
 *   event_queue.c    masks, user events and filters, the queued snapshot, anomalies
 *   stream_writer.c  the stream files (streams -o)
 *   arena.c          copies that events point at
 */
#define _GNU_SOURCE
#include "mos_engine.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_state.h"
#include "translate.h"


#define SEC 1000000000ull

static inline struct conn *C(mos_engine_t *e, uint32_t slot) { return ft_conn(&e->ft, slot); }

size_t mos_conn_size(void)
{
    return sizeof(struct conn);
}

static void conn_fill_info(const struct conn *c, struct mos_conn_info *out);

/* ---------------------------------------------------------------------------------------------- */
/* reassembly callbacks: owner is the connection, the side is found from which rx it is */

static void cb_data(void *user, void *owner, uint64_t off, const uint8_t *data, uint32_t len)
{
    mos_engine_t *e = user;
    struct owner *o = owner;
    if (e->streams.dir) /* the stream received by the server is client-to-server */
        stream_writer_append(&e->streams, o->c->id, o->side == MOS_SIDE_SVR ? 0 : 1, data, len);
    struct mos_event t = {0};
    t.off = off;
    t.len = len;
    t.data = data;
    emit(e, o->c, MOS_EV_CONN_NEW_DATA, o->side, MOS_HK_RCV, &t);
}

static void cb_gap(void *user, void *owner, uint64_t off, uint64_t len)
{
    mos_engine_t *e = user;
    struct owner *o = owner;
    o->c->gap_bytes[o->side] += len;
    struct mos_event t = {0};
    t.off = off;
    t.len = len > 0xffffffffu ? 0xffffffffu : (uint32_t)len;
    emit(e, o->c, MOS_EV_DATA_GAP, o->side, MOS_HK_RCV, &t);
}

static void cb_rexmit(void *user, void *owner, uint64_t off, uint32_t len, int inconsistent,
                      const uint8_t *old_bytes, const uint8_t *new_bytes)
{
    mos_engine_t *e = user;
    struct owner *o = owner;
    struct mos_event t = {0};
    t.off = off;
    t.len = len;
    t.inconsistent = (uint8_t)(inconsistent != 0);
    if (inconsistent)
        o->c->inconsistent[o->side]++;
    if (inconsistent && event_wanted(e, o->c, MOS_EV_REXMIT, o->side, MOS_HK_RCV)) {
        /* the packet memory may be gone when Python reads the event: copies live until events_done */
        t.data = arena_copy(&e->evq.arena, old_bytes, len);
        t.data2 = arena_copy(&e->evq.arena, new_bytes, len);
    }
    emit(e, o->c, MOS_EV_REXMIT, o->side, MOS_HK_RCV, &t);
}

static void cb_limit(void *user, void *owner, enum reasm_limit why, uint64_t off, uint32_t len)
{
    mos_engine_t *e = user;
    struct owner *o = owner;
    int kind = why == REASM_LIMIT_MEMCAP ? MOS_ERR_MEMCAP
             : why == REASM_LIMIT_SEGMENTS ? MOS_ERR_SEGMENT_LIMIT : MOS_ERR_BUFFER_LIMIT;
    raise_anomaly(e, o->c, o->side, kind, off, len);
}

/* ---------------------------------------------------------------------------------------------- */
/* connections: the life cycle the flow table does not know (events, counters, reassembly) */

void engine_end_conn(mos_engine_t *e, struct conn *c, int reason, int side)
{
    if (c->flags & CF_ENDED)
        return;
    if (c->flags & CF_RESET_PENDING) { /* the app reset it: whatever ends it first, that is how it ended */
        c->flags &= (uint8_t)~CF_RESET_PENDING;
        reason = MOS_END_RST;
    }
    if (c->key.proto == MOS_IPPROTO_TCP) { /* a UDP flow has no TCP state */
        tcp_end_syn_data(e, c, reason); /* SYN data nothing decided on: before the flush */
        /* Whatever is still held is delivered, holes becoming gaps: the app sees every byte we have. */
        tcp_settle_acks(e, c, 0);
        tcp_settle_acks(e, c, 1);
    }
    struct owner o0 = {c, 0}, o1 = {c, 1};
    if (c->rx[0].initialized)
        reasm_flush(&e->rctx, &c->rx[0], &o0);
    if (c->rx[1].initialized)
        reasm_flush(&e->rctx, &c->rx[1], &o1);
    c->flags |= CF_ENDED | CF_END_PENDING;
    c->end_reason = (uint8_t)reason;
    if (c->id <= e->ended_log_n)
        conn_fill_info(c, &e->ended_log[c->id - 1]);
    struct mos_event t = {0};
    t.reason = (uint32_t)reason;
    emit(e, c, MOS_EV_CONN_END, side, MOS_HK_RCV, &t);
    e->counters[MOS_C_CONNS_ENDED]++;
    e->counters[MOS_C_CONNS_LIVE]--;
    e->ft.live--;
    if (reason == MOS_END_FIN || reason == MOS_END_RST) {
        /* Linger to absorb stragglers (the last ACK, retransmitted FINs) without a new connection. */
        ft_lru_push(&e->ft, c, LRU_CLOSED);
    } else {
        ft_detach(&e->ft, c);
    }
    ft_zombie_add(&e->ft, c);
}

static struct conn *conn_new(mos_engine_t *e, const struct pkt_info *pi, int sender_is_client, uint32_t bucket,
                             int syn_only)
{
    struct conn *c = ft_alloc(&e->ft, pi, sender_is_client, bucket);
    if (!c)
        return NULL;
    c->first_ts = c->last_ts = e->now;
    tcp_flow_start(&c->tcp, pi, syn_only);
    c->rx[0].policy = c->rx[1].policy = e->cfg.policy;
    c->rx[0].buffering = e->cfg.buffer_cli;
    c->rx[1].buffering = e->cfg.buffer_svr;
    e->counters[MOS_C_CONNS_CREATED]++;
    e->counters[MOS_C_CONNS_LIVE]++;
    return c;
}

/* The table holds max_conns live connections: end the least recently used, half-open ones first, then UDP
 * flows (state a peer keeps for them is soft too). */
static int evict_live(mos_engine_t *e)
{
    static const int order[3] = {LRU_HANDSHAKE, LRU_UDP, LRU_EST};
    for (int k = 0; k < 3; k++) {
        uint32_t s = e->ft.lru[order[k]].head;
        if (s) {
            e->counters[MOS_C_CONNS_EVICTED]++;
            engine_end_conn(e, C(e, s), MOS_END_EVICTION, MOS_SIDE_CLI);
            return 1;
        }
    }
    return 0;
}

/* A packet of connection c sent by side s. */
static void process_conn(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    account(e, MOS_C_CONN_PACKETS);
    c->pkts[s]++;
    c->bytes[s] += pi_seg_payload(pi);
    c->last_ts = e->now;
    ft_touch(&e->ft, c);
    if (!(c->monitor & 3))
        e->counters[MOS_C_IGNORED_SIDE]++;
    tcp_track(e, c, s, pi);
    if (c->flags & CF_ENDED)
        return;
    int cls;
    if (tcp_both_fins(&c->tcp))
        cls = LRU_CLOSED;
    else if (c->tcp.end[0].state >= MOS_TCP_ESTABLISHED || c->tcp.end[1].state >= MOS_TCP_ESTABLISHED)
        cls = LRU_EST;
    else
        cls = LRU_HANDSHAKE;
    ft_lru_push(&e->ft, c, cls);
}

/* ---------------------------------------------------------------------------------------------- */
/* dispatch and expiry */

static void expire(mos_engine_t *e)
{
    e->last_expire = e->now;
    const uint64_t tmo[LRU_COUNT] = {e->cfg.timeout_syn_ns, e->cfg.timeout_est_ns, e->cfg.timeout_closed_ns,
                                     e->cfg.timeout_udp_ns};
    for (int cls = 0; cls < LRU_COUNT; cls++) {
        uint32_t s = e->ft.lru[cls].head;
        while (s) {
            struct conn *c = C(e, s);
            uint32_t next = c->lnext;
            if (c->last_ts + tmo[cls] > e->now)
                break;
            if (c->flags & CF_ENDED) {
                if (c->flags & CF_END_PENDING)
                    break; /* its CONN_END has not been handled yet; next time */
                ft_release(&e->ft, &e->rctx, c);
            } else {
                int both_fin = 0;
                if (c->key.proto == MOS_IPPROTO_TCP) {
                    tcp_settle_acks(e, c, 0);
                    tcp_settle_acks(e, c, 1);
                    both_fin = tcp_both_fins(&c->tcp);
                }
                e->counters[MOS_C_CONNS_TIMED_OUT]++;
                engine_end_conn(e, c, both_fin ? MOS_END_FIN : MOS_END_TIMEOUT, MOS_SIDE_CLI);
                if (both_fin)
                    ft_detach(&e->ft, c);
            }
            s = next;
        }
    }
    if (e->defrag)
        defrag_expire(e->defrag, e->now);
}

enum { PROC_DONE = 0, PROC_RETRY = 1, PROC_HOLD = 2 };

/* The first record of the bucket the packet matches (the flow lookup), or NULL. */
static struct conn *first_match(mos_engine_t *e, const struct pkt_info *pi, uint32_t bucket)
{
    for (uint32_t s = e->ft.buckets[bucket]; s; s = C(e, s)->hnext)
        if (ft_match(&e->ft, C(e, s), pi) >= 0)
            return C(e, s);
    return NULL;
}

/* Held back for its connection's handlers (order CONNECTION): the connection, and for a datagram its copy. */
static int hold_back(mos_engine_t *e, struct conn *c, const uint8_t *dg, uint32_t dglen,
                     const struct pkt_info *pi, struct held_dg *own)
{
    e->holder = c;
    memset(&e->holder_dg, 0, sizeof(e->holder_dg));
    if (dg) {
        if (own && own->data) {
            e->holder_dg = *own; /* held again: the copy goes with it */
            own->data = NULL;
        } else if ((e->holder_dg.data = malloc(dglen ? dglen : 1)) != NULL) {
            memcpy(e->holder_dg.data, dg, dglen);
        } else {
            return 0; /* no memory for the copy: processed now, as with order BATCH */
        }
        e->holder_dg.len = dglen;
        e->holder_dg.nvlan = pi->nvlan;
        memcpy(e->holder_dg.vlan, pi->vlan, sizeof(pi->vlan));
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* ICMP errors: the flow of the packet they quote */

/* ICMP's protocol numbers (the decoder's pi->proto). */
enum { MOS_IPPROTO_ICMP = 1, MOS_IPPROTO_ICMPV6 = 58 };

/* ICMP types that quote the packet they answer (RFC 792, RFC 4443). */
#define MOS_ICMP4_UNREACH 3
#define MOS_ICMP4_TIME_EXCEEDED 11
#define MOS_ICMP4_PARAM_PROBLEM 12
#define MOS_ICMP6_UNREACH 1
#define MOS_ICMP6_PACKET_TOO_BIG 2
#define MOS_ICMP6_TIME_EXCEEDED 3
#define MOS_ICMP6_PARAM_PROBLEM 4

static uint16_t icmp_rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static int is_error_type(uint8_t proto, uint8_t type)
{
    if (proto == MOS_IPPROTO_ICMP)
        return type == MOS_ICMP4_UNREACH || type == MOS_ICMP4_TIME_EXCEEDED || type == MOS_ICMP4_PARAM_PROBLEM;
    return type == MOS_ICMP6_UNREACH || type == MOS_ICMP6_PACKET_TOO_BIG || type == MOS_ICMP6_TIME_EXCEEDED ||
           type == MOS_ICMP6_PARAM_PROBLEM;
}

/* The quoted IPv6 header's transport: extension headers walked (a non-first fragment has no ports). */
static int quote6(const uint8_t *b, uint32_t len, struct pkt_info *q, uint32_t *l4)
{
    if (len < 40 || (b[0] >> 4) != 6)
        return 0;
    uint8_t nh = b[6];
    uint32_t off = 40;
    for (int n = 0; n < MOS_MAX_IPV6_EXT; n++) {
        if (mos_ipv6_is_ext(nh)) {
            if (off + 2 > len)
                return 0;
            uint8_t next = b[off];
            off += mos_ipv6_ext_len(nh, b[off + 1]);
            nh = next;
        } else if (nh == MOS_IPPROTO_FRAGMENT) {
            if (off + 8 > len || (icmp_rd16(b + off + 2) & 0xfff8))
                return 0;
            nh = b[off];
            off += 8;
        } else {
            break;
        }
    }
    q->ip_version = 6;
    q->proto = nh;
    memcpy(q->src, b + 8, 16);
    memcpy(q->dst, b + 24, 16);
    *l4 = off;
    return 1;
}

static int quote4(const uint8_t *b, uint32_t len, struct pkt_info *q, uint32_t *l4)
{
    if (len < 20 || (b[0] >> 4) != 4)
        return 0;
    uint32_t hl = (uint32_t)(b[0] & 15) * 4;
    if (hl < 20 || (icmp_rd16(b + 6) & 0x1fff))
        return 0; /* a non-first fragment quoted: no ports */
    q->ip_version = 4;
    q->proto = b[9];
    memcpy(q->src, b + 12, 4);
    memcpy(q->dst, b + 16, 4);
    *l4 = hl;
    return 1;
}

/* pi is an ICMP or ICMPv6 error quoting the head of a TCP or UDP packet: its flow goes into q (addresses,
 * ports, protocol, IP version as the quoted packet had them; pi's VLAN ids), its type and code into *type
 * and *code, and 1 is returned. 0 for any other packet (or a quote too short to name the flow). */
static int icmp_error_quote(const struct pkt_info *pi, struct pkt_info *q, uint8_t *type, uint8_t *code)
{
    int v4 = pi->ip_version == 4 && pi->proto == MOS_IPPROTO_ICMP;
    int v6 = pi->ip_version == 6 && pi->proto == MOS_IPPROTO_ICMPV6;
    if ((!v4 && !v6) || pi->is_fragment || !pi->l4 || pi->l4_len < 8 || !is_error_type(pi->proto, pi->l4[0]))
        return 0;
    memset(q, 0, sizeof(*q));
    const uint8_t *b = pi->l4 + 8; /* type, code, checksum, 4 bytes (unused, MTU, pointer), then the quote */
    uint32_t len = pi->l4_len - 8, l4 = 0;
    if (!(v4 ? quote4(b, len, q, &l4) : quote6(b, len, q, &l4)))
        return 0;
    if ((q->proto != MOS_IPPROTO_TCP && q->proto != MOS_IPPROTO_UDP) || l4 + 4 > len)
        return 0;
    q->sport = icmp_rd16(b + l4);
    q->dport = icmp_rd16(b + l4 + 2);
    q->nvlan = pi->nvlan;
    memcpy(q->vlan, pi->vlan, sizeof(q->vlan));
    *type = pi->l4[0];
    *code = pi->l4[1];
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* UDP flows (a record with no transport state: counters, times, events) and ICMP errors */

/* The packet's protocol has flows in the table: TCP always, UDP unless turned off (mos_config.udp). */
static inline int tracked_proto(const mos_engine_t *e, uint8_t proto)
{
    return proto == MOS_IPPROTO_TCP || (proto == MOS_IPPROTO_UDP && e->cfg.udp);
}

/* Bytes an event of c points at: the packet's own, valid until the events are handled, except those of a
 * reassembled datagram, whose memory goes once the packet is processed: copied then, when wanted. */
static const uint8_t *event_bytes(mos_engine_t *e, struct conn *c, int type, int side, int hook,
                                  const uint8_t *p, uint32_t len)
{
    if (!e->no_account || !p || !event_wanted(e, c, type, side, hook))
        return p;
    return arena_copy(&e->evq.arena, p, len);
}

/* A datagram of UDP flow c sent by side s: PKT_IN at the sender's hook and the receiver's, with the
 * payload (ev.data); appended to the stream file of its direction (streams -o). */
static void udp_datagram(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    account(e, MOS_C_UDP_PACKETS);
    c->pkts[s]++;
    c->bytes[s] += pi_seg_payload(pi);
    c->last_ts = e->now;
    if (!(c->monitor & 3))
        e->counters[MOS_C_IGNORED_SIDE]++;
    else if (e->streams.dir && (c->monitor & (1u << (1 - s))))
        stream_writer_append(&e->streams, c->id, s == MOS_SIDE_CLI ? 0 : 1, pi->payload, pi->payload_len);
    struct mos_event t = {0};
    t.len = pi->payload_len;
    t.data = event_bytes(e, c, MOS_EV_PKT_IN, s, MOS_HK_SND, pi->payload, pi->payload_len);
    emit(e, c, MOS_EV_PKT_IN, s, MOS_HK_SND, &t);
    if (t.data == pi->payload)
        t.data = event_bytes(e, c, MOS_EV_PKT_IN, 1 - s, MOS_HK_RCV, pi->payload, pi->payload_len);
    emit(e, c, MOS_EV_PKT_IN, 1 - s, MOS_HK_RCV, &t);
    if (!(c->flags & CF_ENDED))
        ft_lru_push(&e->ft, c, LRU_UDP);
}

/* A packet no connection takes: counted under its disposition, ORPHAN raised with its kind. */
static void orphan(mos_engine_t *e, int counter, uint32_t kind)
{
    account(e, counter);
    struct mos_event t = {0};
    t.reason = kind;
    emit(e, NULL, MOS_EV_ORPHAN, 0, MOS_HK_RCV, &t);
}

/* A new UDP flow for the packet, its sender the client, CONN_START raised: where flows of UDP are made.
 * NULL when every slot is taken; *retry then says whether slots come back once the batch's events are
 * handled (the packet is offered again), as for TCP. */
static struct conn *udp_flow_new(mos_engine_t *e, const struct pkt_info *pi, uint32_t bucket, int *retry)
{
    *retry = 0;
    if (e->ft.live >= e->cfg.max_conns)
        evict_live(e);
    struct conn *c = ft_alloc(&e->ft, pi, 1, bucket);
    if (!c && ft_free_lingering(&e->ft, &e->rctx))
        c = ft_alloc(&e->ft, pi, 1, bucket);
    if (!c) {
        *retry = e->ft.nzombies && !e->no_account; /* a reassembled datagram cannot be offered again */
        return NULL;
    }
    c->first_ts = c->last_ts = e->now;
    e->counters[MOS_C_CONNS_CREATED]++;
    e->counters[MOS_C_CONNS_LIVE]++;
    emit(e, c, MOS_EV_CONN_START, MOS_SIDE_CLI, MOS_HK_RCV, NULL);
    return c;
}

/* A UDP packet: its flow's (from the bucket's record `start` on), or a new flow's. */
static int udp_packet(mos_engine_t *e, const struct mos_pkt *p, const struct pkt_info *pi, uint32_t bucket,
                      uint32_t start)
{
    for (uint32_t s = start; s; s = C(e, s)->hnext) {
        struct conn *c = C(e, s);
        int side = ft_match(&e->ft, c, pi);
        if (side >= 0 && !(c->flags & CF_ENDED)) {
            udp_datagram(e, c, side, pi);
            if (c->flags & CF_ALIASED)
                translate_packet(e, c, side, pi, p);
            return PROC_DONE;
        }
    }
    if (monitor_filter_skip(e, p, pi, 1))
        return PROC_DONE;
    int retry;
    struct conn *c = udp_flow_new(e, pi, bucket, &retry);
    if (!c) {
        if (retry)
            return PROC_RETRY;
        orphan(e, MOS_C_ORPHAN_TABLE_FULL, MOS_ORPHAN_TABLE_FULL);
        return PROC_DONE;
    }
    udp_datagram(e, c, MOS_SIDE_CLI, pi);
    return PROC_DONE;
}

/* An ICMP error quoting a packet of a tracked flow: ICMP_ERROR on that flow (reason: type << 8 | code,
 * data: the ICMP message), raised at the side that sent the quoted packet, to which the error goes.
 * 0 when it quotes none (an orphan). The flow's idle time is not refreshed: its endpoints did not talk.
 * icmp_error_flow finds the flow (NULL: none), its *side and the event's *reason. */
static struct conn *icmp_error_flow(mos_engine_t *e, const struct pkt_info *pi, int *side, uint32_t *reason)
{
    struct pkt_info q;
    uint8_t type, code;
    if (!icmp_error_quote(pi, &q, &type, &code) || !tracked_proto(e, q.proto))
        return NULL;
    fa_resolve(&e->ft, &q); /* it quotes what the far side of a translation sent */
    uint32_t bucket = ft_bucket(&e->ft, &q);
    for (uint32_t s = e->ft.buckets[bucket]; s; s = C(e, s)->hnext) {
        struct conn *c = C(e, s);
        *side = ft_match(&e->ft, c, &q);
        if (*side >= 0 && !(c->flags & CF_ENDED)) {
            *reason = (uint32_t)type << 8 | code;
            return c;
        }
    }
    return NULL;
}

static int icmp_error(mos_engine_t *e, const struct pkt_info *pi)
{
    int side;
    uint32_t reason;
    struct conn *c = icmp_error_flow(e, pi, &side, &reason);
    if (!c)
        return 0;
    account(e, MOS_C_ICMP_ERROR_PACKETS);
    struct mos_event t = {0};
    t.reason = reason;
    t.len = pi->l4_len;
    t.data = event_bytes(e, c, MOS_EV_ICMP_ERROR, side, MOS_HK_RCV, pi->l4, pi->l4_len);
    emit(e, c, MOS_EV_ICMP_ERROR, side, MOS_HK_RCV, &t);
    return 1;
}

/* dg: a datagram held back (the packet is its last fragment, already consumed), else NULL. */
static int process_packet(mos_engine_t *e, const struct mos_pkt *p, struct held_dg *dg_held)
{
    struct pkt_info pi;
    e->cur_pi = NULL;
    e->cur_flags = 0;
    uint32_t bucket = 0, start = NIL;
    int looked = 0, r;
    const uint8_t *dg = NULL;
    uint32_t dglen = 0;
    if (dg_held) {
        memset(&pi, 0, sizeof(pi));
        pi.nvlan = dg_held->nvlan;
        memcpy(pi.vlan, dg_held->vlan, sizeof(pi.vlan));
        e->no_account = 1; /* its fragments were accounted for */
        if (decode_ip(dg_held->data, dg_held->len, &pi) != 0)
            return PROC_DONE; /* (it was read once: cannot happen) */
        goto datagram;
    }
    r = decode_captured(p->data, p->caplen, p->wirelen, e->linktype, &pi);
    e->no_account = 0;
    if (r) {
        raise_malformed(e, r);
        if (e->drop_sink)
            e->drop_sink(e->drop_arg, p, MOS_XSK_C_MALFORMED_DROP); /* inline AF_XDP: the frame is dropped, not forwarded */
        return PROC_DONE;
    }
    if (fa_resolve(&e->ft, &pi))
        e->counters[MOS_C_ALIAS_PACKETS]++;
    /* Order CONNECTION: a packet whose connection waits for its handlers (an event of it is queued) is
     * held back, before anything is counted or changed: it is processed whole when resumed. The lookup
     * is the one the packet needs anyway. A fragment is not: only the datagram its last one completes
     * (below), copied, since the fragments are consumed. */
    if (e->evq.nqueued && !e->hold_off && !pi.is_fragment && pi.ip_version && tracked_proto(e, pi.proto)) {
        bucket = ft_bucket(&e->ft, &pi);
        struct conn *c = first_match(e, &pi, bucket);
        if (c && (c->flags & CF_QUEUED) && hold_back(e, c, NULL, 0, &pi, NULL))
            return PROC_HOLD;
        start = c ? ft_slot(&e->ft, c) : NIL;
        looked = 1;
    } else if (e->evq.nqueued && !e->hold_off && !pi.is_fragment && pi.ip_version && pi.proto != MOS_IPPROTO_TCP &&
               pi.proto != MOS_IPPROTO_UDP) {
        /* an ICMP error comes after the packets of its flow held before it */
        int side;
        uint32_t reason;
        struct conn *c = icmp_error_flow(e, &pi, &side, &reason);
        if (c && (c->flags & CF_QUEUED) && hold_back(e, c, NULL, 0, &pi, NULL))
            return PROC_HOLD;
    }
    if (pi.payload_cut)
        e->counters[MOS_C_SNAPLEN_TRUNCATED]++;
    if (checksum_reject(e, &pi, p, 0))
        return PROC_DONE; /* a host drops it: it must not touch any connection */
    if (pi.is_fragment) {
        uint32_t vkey = e->cfg.vlan_in_key ? ((uint32_t)pi.vlan[0] << 16 | pi.vlan[1]) : 0;
        int dr = defrag_feed(e->defrag, pi.l3, pi.l3_len, vkey, e->now, &dg, &dglen);
        uint32_t foff, differ = defrag_last_differing(e->defrag, &foff);
        if (differ) /* before the flow lookup: no connection, as MALFORMED */
            raise_anomaly(e, NULL, MOS_SIDE_CLI, MOS_ERR_DEFRAG_OVERLAP, foff, differ);
        if (dr == DEFRAG_ERROR) {
            e->counters[MOS_C_FRAG_ERROR]++;
            return PROC_DONE;
        }
        e->counters[MOS_C_FRAG_HELD]++;
        if (dr != DEFRAG_DONE)
            return PROC_DONE;
        e->counters[MOS_C_DATAGRAMS_REASSEMBLED]++;
        /* the datagram was accounted for by its fragments: don't count it a second time */
        e->no_account = 1;
        r = decode_ip(dg, dglen, &pi);
        if (r || pi.is_fragment) {
            /* its last fragment is then counted as rejected: a datagram the decoder cannot read (more
             * extension headers than the limit, ...) under its malformed_* reason, with the ERROR
             * event and, inline, dropped (the host then cannot reassemble it either) */
            e->counters[MOS_C_FRAG_HELD]--;
            if (!r) {
                e->counters[MOS_C_FRAG_ERROR]++;
                return PROC_DONE;
            }
            raise_malformed(e, r);
            if (e->drop_sink)
                e->drop_sink(e->drop_arg, p, MOS_XSK_C_MALFORMED_DROP);
            return PROC_DONE;
        }
        if (checksum_reject(e, &pi, p, 1))
            return PROC_DONE;
    datagram:
        if (fa_resolve(&e->ft, &pi))
            e->counters[MOS_C_ALIAS_PACKETS]++;
        if (e->evq.nqueued && !e->hold_off && pi.ip_version && tracked_proto(e, pi.proto)) {
            bucket = ft_bucket(&e->ft, &pi);
            struct conn *c = first_match(e, &pi, bucket);
            if (c && (c->flags & CF_QUEUED) &&
                hold_back(e, c, dg_held ? dg_held->data : dg, dg_held ? dg_held->len : dglen, &pi, dg_held))
                return PROC_HOLD;
            start = c ? ft_slot(&e->ft, c) : NIL;
            looked = 1;
        }
    }
    e->cur_pi = &pi;
    e->cur_flags = pi.tcp_flags;
    if (pi.ip_version == 0 || pi.proto != MOS_IPPROTO_TCP) {
        if (pi.ip_version && pi.proto == MOS_IPPROTO_UDP && e->cfg.udp) {
            if (!looked) {
                bucket = ft_bucket(&e->ft, &pi);
                start = e->ft.buckets[bucket];
            }
            if (udp_packet(e, p, &pi, bucket, start) == PROC_RETRY)
                return PROC_RETRY;
            goto fixup;
        }
        if (pi.ip_version && icmp_error(e, &pi))
            goto fixup;
        if (monitor_filter_skip(e, p, &pi, 0))
            goto fixup;
        orphan(e, MOS_C_ORPHAN_UNTRACKED_PROTO, MOS_ORPHAN_UNTRACKED_PROTO);
        goto fixup;
    }
    if (!looked) {
        bucket = ft_bucket(&e->ft, &pi);
        start = e->ft.buckets[bucket];
    }
    int recover_side = -1;
    struct rst_held held;
    memset(&held, 0, sizeof(held));
    for (uint32_t s = start; s; s = C(e, s)->hnext) {
        struct conn *c = C(e, s);
        int side = ft_match(&e->ft, c, &pi);
        if (side < 0)
            continue;
        if (c->flags & CF_ENDED) {
            int new_syn = tcp_syn_starts_anew(c, side, &pi);
            /* Past its linger the record is gone, whether or not expiry could free it yet (its end
             * may wait for the batch's events): what follows must not depend on batch boundaries. */
            int gone = c->last_ts + e->cfg.timeout_closed_ns <= e->now;
            if (gone) {
                /* a new connection below */
            } else if (!new_syn && c->end_reason == MOS_END_RST && tcp_after_rst(e, c, side, &pi)) {
                /* The RST's sender talks on after a RST we took: its stack did not send it (injected,
                 * or taken under another policy than the target's). The conversation is followed again,
                 * as a connection picked up here, with what its peer sent meanwhile. */
                recover_side = side;
                tcp_rst_held_take(e, c, &held);
            } else if (!new_syn) {
                /* A closed connection's straggler: a late retransmission (its TIME_WAIT absorbs it,
                 * no phantom connection), or packets the endpoints' stacks no longer take. */
                account(e, MOS_C_CONN_PACKETS);
                if ((c->flags & CF_ALIASED) && e->drop_sink) /* the app's translation ended with it */
                    e->drop_sink(e->drop_arg, p, MOS_XSK_C_UNTRANSLATED_DROP);
                if (tcp_is_late_rexmit(c, side, &pi))
                    e->counters[MOS_C_REXMIT_AFTER_CLOSE]++;
                else if (pi_seg_payload(&pi))
                    e->counters[MOS_C_DATA_AFTER_CLOSE]++;
                c->last_ts = e->now;
                ft_lru_push(&e->ft, c, LRU_CLOSED);
                goto fixup;
            }
            if (c->flags & CF_END_PENDING) {
                /* its end is not handled yet: out of the table now, freed after the events */
                ft_detach(&e->ft, c);
            } else {
                ft_release(&e->ft, &e->rctx, c);
            }
            break; /* port reuse (or a conversation taken up after a RST): a new connection below */
        }
        process_conn(e, c, side, &pi);
        if (c->flags & CF_ALIASED)
            translate_packet(e, c, side, &pi, p);
        goto fixup;
    }
    if (recover_side < 0 && monitor_filter_skip(e, p, &pi, 1))
        goto fixup;
    {
        int syn_only = (pi.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
        if (!syn_only && !e->cfg.pickup && recover_side < 0) {
            orphan(e, MOS_C_ORPHAN_NO_CONN, MOS_ORPHAN_NO_CONN);
            goto fixup;
        }
        int cli = syn_only ? 1 : recover_side >= 0 ? recover_side == MOS_SIDE_CLI : tcp_guess_sender_is_client(&pi);
        if (e->ft.live >= e->cfg.max_conns)
            evict_live(e);
        struct conn *c = conn_new(e, &pi, cli, bucket, syn_only);
        if (!c && ft_free_lingering(&e->ft, &e->rctx))
            c = conn_new(e, &pi, cli, bucket, syn_only);
        if (!c) {
            /* Slots of connections that ended in this batch come back once its events are handled.
             * A reassembled datagram cannot be offered again (its fragments are consumed). */
            if (e->ft.nzombies && !e->no_account)
                return PROC_RETRY;
            orphan(e, MOS_C_ORPHAN_TABLE_FULL, MOS_ORPHAN_TABLE_FULL);
            goto fixup;
        }
        int sside = cli ? MOS_SIDE_CLI : MOS_SIDE_SVR;
        if (!syn_only) {
            c->flags |= CF_PICKED_UP; /* already in progress: tcp_flow_start guessed both states */
            e->counters[MOS_C_CONNS_PICKED_UP]++;
        }
        emit(e, c, MOS_EV_CONN_START, sside, MOS_HK_RCV, NULL);
        if (recover_side >= 0) {
            raise_anomaly(e, c, 1 - sside, MOS_ERR_RST_INJECT_SUSPECTED, 0, held.bytes);
            tcp_rst_held_give(e, c, &held);
        }
        process_conn(e, c, sside, &pi);
    }
fixup:
    e->cur_pi = NULL;
    e->no_account = 0;
    return PROC_DONE;
}

/* ---------------------------------------------------------------------------------------------- */
/* API */

void mos_config_default(struct mos_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_conns = 1u << 20;
    cfg->event_queue = 8192;
    cfg->vlan_in_key = 1;
    cfg->pickup = 1;
    cfg->policy = REASM_POLICY_FIRST;
    cfg->frag_policy = DEFRAG_POLICY_FIRST;
    cfg->checksum = MOS_CSUM_AUTO;
    cfg->buffer_cli = 1;
    cfg->buffer_svr = 1;
    cfg->dir_buffer_limit = 8u << 20;
    cfg->max_segments = 4096;
    cfg->memcap = 2ull << 30;
    cfg->timeout_syn_ns = 30 * SEC;
    cfg->timeout_est_ns = 600 * SEC;
    cfg->timeout_closed_ns = 60 * SEC; /* Linux and BSD TIME_WAIT (2 MSL) */
    cfg->udp = 1;
    cfg->timeout_udp_ns = 60 * SEC;    /* Suricata's and Zeek's UDP inactivity timeout */
    cfg->frag_memcap = 64u << 20;
    cfg->frag_timeout_ns = 30 * SEC;
    cfg->frag_max = 4096;
    cfg->order = MOS_ORDER_CONNECTION;
    cfg->peek_window = 64u << 10;
}

static void tune_malloc(void)
{
#ifdef __GLIBC__
    /* Reassembly frees and allocates buffers at a high rate. glibc gives the top of the heap back to
     * the kernel once 128 KiB of it are free, which turns the next allocations into page faults (about
     * a tenth of the time on a capture with reordering); keep up to 32 MiB instead. */
    static int done;
    if (!done) {
        done = 1;
        mallopt(M_TRIM_THRESHOLD, 32 << 20);
        mallopt(M_TOP_PAD, 4 << 20);
    }
#endif
}

mos_engine_t *mos_engine_new(const struct mos_config *cfg, char *err, size_t errlen)
{
    if (cfg->max_conns < 1 || cfg->max_conns > (1u << 28)) {
        snprintf(err, errlen, "max_conns must be between 1 and %u", 1u << 28);
        return NULL;
    }
    if (cfg->policy >= REASM_POLICY_COUNT) {
        snprintf(err, errlen, "unknown overlap policy %u", cfg->policy);
        return NULL;
    }
    if (cfg->frag_policy >= DEFRAG_POLICY_COUNT) {
        snprintf(err, errlen, "unknown fragment overlap policy %u", cfg->frag_policy);
        return NULL;
    }
    if (cfg->order >= MOS_ORDER_COUNT) {
        snprintf(err, errlen, "unknown handler order %u", cfg->order);
        return NULL;
    }
    if (cfg->checksum >= MOS_CSUM_MODE_COUNT) {
        snprintf(err, errlen, "unknown checksum setting %u", cfg->checksum);
        return NULL;
    }
    tune_malloc();
    mos_engine_t *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->cfg = *cfg;
    if (e->cfg.event_queue < 64)
        e->cfg.event_queue = 64;
    int ft_ok = ft_init(&e->ft, cfg->max_conns, cfg->vlan_in_key);
    /* room past the limit: feeding stops at event_queue, but one packet may raise several events */
    int q_ok = evq_init(&e->evq, e->cfg.event_queue + 256);
    e->defrag = defrag_new(cfg->frag_memcap, cfg->frag_timeout_ns, cfg->frag_max);
    if (e->defrag)
        defrag_set_policy(e->defrag, cfg->frag_policy);
    if (ft_ok || q_ok || !e->defrag) {
        snprintf(err, errlen, "out of memory for a table of %u connections", cfg->max_conns);
        mos_engine_free(e);
        return NULL;
    }
    static const struct reasm_cb cb = {cb_data, cb_gap, cb_rexmit, cb_limit};
    reasm_ctx_init(&e->rctx, &cb, e, cfg->memcap, cfg->dir_buffer_limit, cfg->max_segments);
    /* the window is part of what a direction holds: at most half its limit, so that out-of-order bytes
     * keep room */
    if (e->cfg.dir_buffer_limit && e->cfg.peek_window > e->cfg.dir_buffer_limit / 2)
        e->cfg.peek_window = e->cfg.dir_buffer_limit / 2;
    if (!e->cfg.buffer_cli && !e->cfg.buffer_svr)
        e->cfg.peek_window = 0;
    e->rctx.retain = e->cfg.peek_window;
    e->evq.hold = cfg->order == MOS_ORDER_CONNECTION;
    return e;
}

void mos_engine_free(mos_engine_t *e)
{
    if (!e)
        return;
    ft_release_streams(&e->ft, &e->rctx);
    ft_free(&e->ft);
    stream_writer_open(&e->streams, NULL, 0);
    evq_free(&e->evq);
    for (uint32_t k = 0; k < e->nheld_slots; k++)
        free(e->held[k].dg.data);
    free(e->held);
    free(e->hq);
    defrag_free(e->defrag);
    free(e->ended_log);
    monitor_filter_free(e);
    free(e);
}

void mos_engine_set_mask(mos_engine_t *e, int hook, int side, uint64_t mask)
{
    if (hook >= 0 && hook < 2 && side >= 0 && side < 2)
        e->evq.gmask[hook][side] = mask;
}

int mos_engine_define_event(mos_engine_t *e, int id, int base, const struct mos_filter *f)
{
    return evq_define(&e->evq, id, base, f);
}

int mos_engine_stream_dir(mos_engine_t *e, const char *dir, uint32_t max_open_files)
{
    return stream_writer_open(&e->streams, dir, max_open_files);
}

static int grow(void **arr, uint32_t *cap, size_t size)
{
    uint32_t n = *cap ? *cap * 2 : 256;
    void *na = realloc(*arr, (size_t)n * size);
    if (!na)
        return -1;
    *arr = na;
    *cap = n;
    return 0;
}

/* Packet i waits behind the queued events of connection c: appended to c's queue. */
static int hold(mos_engine_t *e, uint32_t i, struct conn *c)
{
    if (e->nheld_slots == e->held_cap && grow((void **)&e->held, &e->held_cap, sizeof(*e->held)))
        return -1;
    if (!c->held_q) {
        if (e->nhq == e->hq_cap && grow((void **)&e->hq, &e->hq_cap, sizeof(*e->hq)))
            return -1;
        e->hq[e->nhq++] = (struct held_queue){ft_slot(&e->ft, c), c->id, NO_HELD, NO_HELD};
        c->held_q = e->nhq;
    }
    struct held_queue *q = &e->hq[c->held_q - 1];
    uint32_t k = e->nheld_slots++;
    e->held[k] = (struct held_pkt){i, NO_HELD, e->holder_dg};
    e->holder_dg.data = NULL;
    if (q->tail == NO_HELD)
        q->head = k;
    else
        e->held[q->tail].next = k;
    q->tail = k;
    e->nheld++;
    e->counters[MOS_C_PACKETS_HELD]++;
    return 0;
}

/* One packet of the batch: PROC_DONE (counted), PROC_RETRY (nothing done: offer it again after the
 * events), or PROC_HOLD (nothing done, held back: resumed after the events). */
static int feed_one(mos_engine_t *e, uint32_t i, int resumed, struct held_dg *dg)
{
    const struct mos_pkt *p = &e->batch[i];
    uint64_t save_now = e->now;
    /* Packet time never goes back, but a packet held back (earlier than what came since) is processed
     * at its own time, and the clock restored after it. */
    if (resumed || p->ts_ns > e->now)
        e->now = p->ts_ns;
    if (!resumed && e->now - e->last_expire >= SEC)
        expire(e);
    e->cur_pkt = i;
    int r = process_packet(e, p, dg);
    if (r == PROC_HOLD && hold(e, i, e->holder) != 0) {
        e->hold_off = 1; /* no memory to hold it: processed now, as with order BATCH */
        struct held_dg copy = e->holder_dg;
        e->holder_dg.data = NULL;
        r = process_packet(e, p, copy.data ? &copy : NULL);
        free(copy.data);
        e->hold_off = 0;
    }
    if (resumed || r == PROC_RETRY)
        e->now = save_now;
    if (r == PROC_DONE) {
        e->counters[MOS_C_PACKETS]++;
        e->counters[MOS_C_BYTES] += p->wirelen;
    }
    return r;
}

static void resume(mos_engine_t *e)
{
    e->cur_pi = NULL;
    uint32_t n0 = e->nhq, qi = 0;
    int stop = 0;
    /* Each connection's packets in order, until one queues events again (then the rest wait for the next
     * round); connections in the order of their first held packet. Queues made meanwhile (a packet that
     * started a connection again) wait for the next round. */
    for (; qi < n0 && !stop; qi++) {
        struct held_queue *q = &e->hq[qi];
        struct conn *c = C(e, q->slot);
        int mine = c->id == q->id;
        while (q->head != NO_HELD) {
            if (mine && (c->flags & CF_QUEUED))
                break;
            if (e->evq.qlen >= e->cfg.event_queue) {
                stop = 1;
                break;
            }
            uint32_t k = q->head;
            if (mine)
                c->held_q = 0; /* processed as any packet: held again behind a new queue if need be */
            struct held_dg dg = e->held[k].dg; /* (hold() may move held[]) */
            e->held[k].dg.data = NULL;
            int r = feed_one(e, e->held[k].pkt, 1, dg.data ? &dg : NULL);
            if (r == PROC_RETRY)
                e->held[k].dg = dg; /* not processed: it stays, with its copy */
            else
                free(dg.data); /* NULL when it was held again (the copy went with it) */
            q = &e->hq[qi]; /* hold() may have moved the queues */
            mine = mine && c->id == q->id; /* (its record may have been freed, and taken again) */
            if (mine)
                c->held_q = qi + 1;
            if (r == PROC_RETRY) {
                stop = 1;
                break;
            }
            q->head = e->held[k].next;
            e->nheld--;
        }
        if (q->head == NO_HELD)
            q->tail = NO_HELD;
    }
    /* keep the queues still holding packets, in order */
    uint32_t w = 0;
    for (uint32_t r = 0; r < e->nhq; r++) {
        struct held_queue *q = &e->hq[r];
        struct conn *c = C(e, q->slot);
        int mine = c->id == q->id && c->held_q == r + 1;
        if (q->head == NO_HELD) {
            if (mine)
                c->held_q = 0;
            continue;
        }
        e->hq[w] = *q;
        if (mine)
            c->held_q = w + 1;
        w++;
    }
    e->nhq = w;
    if (!e->nheld)
        e->nheld_slots = 0;
}

int64_t mos_engine_next(mos_engine_t *e, const struct mos_event **evs)
{
    mos_engine_events_done(e);
    if (!e->nheld) /* the CONN_END of a connection the handlers reset may be queued: its own round */
        return e->evq.qlen ? (int64_t)mos_engine_events(e, evs) : -1;
    resume(e);
    return mos_engine_events(e, evs);
}

uint32_t mos_engine_feed(mos_engine_t *e, int linktype, const struct mos_pkt *pkts, uint32_t n,
                         uint64_t stop_ts_ns)
{
    if (e->nheld)
        return 0; /* the held packets of the last batch come first (mos_engine_resume) */
    e->batch = pkts;
    e->batch_n = n;
    e->linktype = linktype;
    e->counters[MOS_C_EVENT_BATCHES]++;
    for (uint32_t i = 0; i < n; i++) {
        if (stop_ts_ns && pkts[i].ts_ns >= stop_ts_ns)
            return i;
        if (e->evq.qlen >= e->cfg.event_queue)
            return i;
        if (e->nheld && pkts[i].ts_ns > e->now && pkts[i].ts_ns - e->last_expire >= SEC)
            return i; /* expiry judges idle time: not while packets of earlier times are held back */
        if (feed_one(e, i, 0, NULL) == PROC_RETRY)
            return i;
        if (e->cfg.order == MOS_ORDER_PACKET && e->evq.qlen)
            return i + 1; /* handlers run before the next packet (exact, but a crossing per packet) */
    }
    return n;
}

void mos_engine_set_stable(mos_engine_t *e, const void *lo, const void *hi)
{
    if (e->rctx.stable_lo && (e->rctx.stable_lo != lo || e->rctx.stable_hi != hi)) {
        for (uint32_t s = 1; s < e->ft.next_unused; s++) {
            struct conn *c = C(e, s);
            for (int side = 0; side < 2; side++) {
                if (!c->rx[side].buf)
                    continue;
                struct owner o = {c, side};
                reasm_unborrow(&e->rctx, &c->rx[side], &o);
            }
        }
    }
    e->rctx.stable_lo = lo && hi ? lo : NULL;
    e->rctx.stable_hi = lo && hi ? hi : NULL;
}

void mos_engine_advance(mos_engine_t *e, uint64_t now_ns)
{
    if (now_ns > e->now)
        e->now = now_ns;
    e->cur_pkt = UINT32_MAX;
    expire(e);
}

uint32_t mos_engine_finish(mos_engine_t *e)
{
    e->cur_pkt = UINT32_MAX;
    e->cur_pi = NULL;
    e->cur_flags = 0;
    for (int cls = 0; cls < LRU_COUNT; cls++) {
        uint32_t s = e->ft.lru[cls].head;
        while (s) {
            struct conn *c = C(e, s);
            uint32_t next = c->lnext;
            if (!(c->flags & CF_ENDED)) {
                if (e->evq.qlen >= e->cfg.event_queue)
                    return e->ft.live ? e->ft.live : 1;
                int both_fin = 0;
                if (c->key.proto == MOS_IPPROTO_TCP) {
                    tcp_settle_acks(e, c, 0);
                    tcp_settle_acks(e, c, 1);
                    both_fin = tcp_both_fins(&c->tcp);
                }
                engine_end_conn(e, c, both_fin ? MOS_END_FIN : MOS_END_EOF, MOS_SIDE_CLI);
                ft_detach(&e->ft, c);
            }
            s = next;
        }
    }
    /* Fragments and bytes held after a RST wait for packets that will not come now: nothing is held
     * past the end. */
    defrag_flush(e->defrag);
    for (uint32_t s = e->ft.lru[LRU_CLOSED].head; s && e->ft.nstash; s = C(e, s)->lnext)
        tcp_rst_held_drop(e, C(e, s));
    stream_writer_flush(&e->streams);
    return 0;
}

uint32_t mos_engine_events(mos_engine_t *e, const struct mos_event **evs)
{
    *evs = e->evq.q;
    return e->evq.qlen;
}

/* Connections the handlers reset (mos_conn_reset) end once their events are handled, their CONN_END
 * queued for the next round. A reset connection is in the touched list (mos_conn_reset puts it there);
 * at most RESET_BATCH per round, the others stay flagged and are listed again. */
#define RESET_BATCH 64
static void resets_end(mos_engine_t *e, const uint32_t *slots, uint32_t n)
{
    e->cur_pkt = UINT32_MAX; /* no packet raised these */
    e->cur_pi = NULL;
    e->cur_flags = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct conn *c = C(e, slots[i]);
        c->flags &= (uint8_t)~CF_RESET_PENDING;
        if (c->flags & CF_ENDED)
            continue;
        /* each endpoint took a RST at its rcv_nxt: both are CLOSED, as a RST leaves them */
        c->tcp.end[0].state = c->tcp.end[1].state = MOS_TCP_CLOSED;
        engine_end_conn(e, c, MOS_END_RST, MOS_SIDE_CLI);
    }
}

void mos_engine_events_done(mos_engine_t *e)
{
    struct flow_table *ft = &e->ft;
    uint32_t resets[RESET_BATCH];
    uint32_t nresets = 0;
    for (uint32_t i = 0; i < ft->nzombies; i++) {
        struct conn *c = C(e, ft->zombies[i]);
        if (!(c->flags & CF_ENDED))
            continue;
        c->flags &= (uint8_t)~CF_END_PENDING;
        if (!(c->flags & CF_IN_HASH)) {
            ft_release(ft, &e->rctx, c);
        } else {
            /* Lingering (TIME_WAIT): its stragglers are judged on the TCP state alone, so its streams'
             * memory goes back now, not when the linger ends. */
            reasm_release(&e->rctx, &c->rx[0]);
            reasm_release(&e->rctx, &c->rx[1]);
        }
    }
    ft->nzombies = 0;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < ft->ntouched; i++) {
        struct conn *c = C(e, ft->touched[i]);
        if ((c->flags & CF_RESET_PENDING) && nresets == RESET_BATCH) {
            ft->touched[kept++] = ft->touched[i]; /* stays listed (and touched): the next round ends it */
            continue;
        }
        c->flags &= (uint8_t)~CF_TOUCHED;
        if (c->flags & CF_RESET_PENDING)
            resets[nresets++] = ft->touched[i];
        if (c->rx[0].buf)
            reasm_trim(&e->rctx, &c->rx[0], c->rx[0].next_off);
        if (c->rx[1].buf)
            reasm_trim(&e->rctx, &c->rx[1], c->rx[1].next_off);
    }
    ft->ntouched = kept;
    for (uint32_t i = 0; i < e->evq.nqueued; i++)
        C(e, e->evq.queued[i])->flags &= (uint8_t)~CF_QUEUED;
    e->evq.nqueued = 0;
    evq_clear(&e->evq);
    if (nresets)
        resets_end(e, resets, nresets);
}

const uint64_t *mos_engine_counters(const mos_engine_t *e) { return e->counters; }
const uint64_t *mos_engine_reasm_counters(const mos_engine_t *e) { return e->rctx.counters; }
const uint64_t *mos_engine_frag_counters(const mos_engine_t *e) { return defrag_counters(e->defrag); }
uint64_t mos_engine_mem_used(const mos_engine_t *e) { return e->rctx.mem_used + defrag_mem_used(e->defrag); }
uint64_t mos_engine_now(const mos_engine_t *e) { return e->now; }
uint32_t mos_engine_peek_window(const mos_engine_t *e) { return e->cfg.peek_window; }

static struct conn *conn_get(const mos_engine_t *e, uint32_t slot, uint64_t id)
{
    if (slot == 0 || slot >= e->ft.next_unused)
        return NULL;
    struct conn *c = ft_conn(&e->ft, slot);
    return c->id == id && id != 0 ? c : NULL;
}

static void conn_fill_info(const struct conn *c, struct mos_conn_info *out)
{
    memset(out, 0, sizeof(*out));
    out->id = c->id;
    const struct flow_key *k = &c->key;
    const struct tcp_end *t = c->tcp.end;
    out->ip_version = k->ip_version;
    out->cli_state = t[0].state;
    out->svr_state = t[1].state;
    out->end_reason = c->end_reason;
    out->nvlan = k->nvlan;
    out->vlan[0] = k->vlan[0];
    out->vlan[1] = k->vlan[1];
    out->picked_up = (c->flags & CF_PICKED_UP) != 0;
    out->monitor_mask = c->monitor;
    out->cli_wscale = t[0].ws_ok ? t[0].wscale : 0xff;
    out->svr_wscale = t[1].ws_ok ? t[1].wscale : 0xff;
    out->proto = k->proto;
    memcpy(out->cli_addr, k->addr[0], 16);
    memcpy(out->svr_addr, k->addr[1], 16);
    out->cli_port = k->port[0];
    out->svr_port = k->port[1];
    out->cli_isn = t[0].isn;
    out->svr_isn = t[1].isn;
    out->first_ts_ns = c->first_ts;
    out->last_ts_ns = c->last_ts;
    for (int s = 0; s < 2; s++) {
        out->pkts[s] = c->pkts[s];
        out->bytes[s] = c->bytes[s];
        out->stream_off[s] = c->rx[s].next_off;
        out->gap_bytes[s] = c->gap_bytes[s];
        out->held_bytes[s] = reasm_held_bytes(&c->rx[s]);
        out->rexmit_pkts[s] = c->rexmit[s];
        out->rexmit_inconsistent[s] = c->inconsistent[s];
    }
}

int mos_conn_info(const mos_engine_t *e, uint32_t slot, uint64_t id, struct mos_conn_info *out)
{
    const struct conn *c = conn_get(e, slot, id);
    if (!c)
        return -1;
    conn_fill_info(c, out);
    return 0;
}

int mos_engine_log_ended(mos_engine_t *e, uint64_t max_id)
{
    free(e->ended_log);
    e->ended_log = NULL;
    e->ended_log_n = 0;
    if (max_id == 0)
        return 0;
    if (max_id > MOS_ENDED_LOG_MAX)
        return -1;
    e->ended_log = calloc((size_t)max_id, sizeof(*e->ended_log));
    if (!e->ended_log)
        return -1;
    e->ended_log_n = max_id;
    return 0;
}

const struct mos_conn_info *mos_engine_ended_log(const mos_engine_t *e, uint64_t *n)
{
    *n = e->ended_log_n;
    return e->ended_log;
}

int mos_engine_set_sub_mask(mos_engine_t *e, uint32_t sub, int hook, int side, uint64_t mask)
{
    return evq_set_sub(&e->evq, sub, hook, side, mask);
}

int mos_conn_set_sub(mos_engine_t *e, uint32_t slot, uint64_t id, uint32_t sub)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || (sub && sub >= e->evq.nsubs))
        return -1;
    c->sub = sub;
    return 0;
}

void mos_engine_set_subs(mos_engine_t *e, uint32_t n, const uint32_t *slots, const uint64_t *ids,
                         const uint32_t *subs)
{
    for (uint32_t i = 0; i < n; i++)
        (void)mos_conn_set_sub(e, slots[i], ids[i], subs[i]);
}

uint32_t mos_engine_live_conns(const mos_engine_t *e, uint32_t *slots, uint64_t *ids, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t s = 1; s < e->ft.next_unused; s++) {
        const struct conn *c = ft_conn(&e->ft, s);
        if (!c->id || (c->flags & CF_ENDED))
            continue;
        if (slots && ids) {
            if (n >= max)
                break;
            slots[n] = s;
            ids[n] = c->id;
        }
        n++;
    }
    return n;
}

int64_t mos_conn_get_sub(const mos_engine_t *e, uint32_t slot, uint64_t id)
{
    const struct conn *c = conn_get(e, slot, id);
    return c ? (int64_t)c->sub : -1;
}

void mos_engine_subs_in_use(const mos_engine_t *e, uint8_t *used, uint32_t n)
{
    memset(used, 0, n);
    for (uint32_t s = 1; s < e->ft.next_unused; s++) {
        uint32_t k = ft_conn(&e->ft, s)->sub;
        if (k < n)
            used[k] = 1;
    }
    for (uint32_t i = 0; i < e->evq.qlen; i++)
        if (e->evq.q[i].sub < n)
            used[e->evq.q[i].sub] = 1;
}

int mos_conn_proto(const mos_engine_t *e, uint32_t slot, uint64_t id)
{
    const struct conn *c = conn_get(e, slot, id);
    return c ? c->key.proto : -1;
}

int mos_conn_alive(const mos_engine_t *e, uint32_t slot, uint64_t id)
{
    const struct conn *c = conn_get(e, slot, id);
    return c && (!(c->flags & CF_ENDED) || (c->flags & CF_END_PENDING));
}

int mos_conn_set_buffering(mos_engine_t *e, uint32_t slot, uint64_t id, int side, int on)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || side < 0 || side > 1)
        return -1;
    /* Off: nothing more is held; what is held stays until it is delivered and handled (reasm.c). */
    c->rx[side].buffering = on && (c->monitor & (1u << side)) ? 1 : 0;
    return 0;
}

/* ---- injection ---------------------------------------------------------------------------------- */

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v); }

/* What the engine knows of `side`'s sequence numbers: 0 when nothing of it was seen. */
static int seq_known(const struct tcp_end *t) { return t->snd_nxt != 0 || t->isn_known; }

int64_t mos_conn_snd_nxt(const mos_engine_t *e, uint32_t slot, uint64_t id, int side)
{
    const struct conn *c = conn_get(e, slot, id);
    if (!c || side < 0 || side > 1 || !seq_known(&c->tcp.end[side]))
        return -1;
    return c->tcp.end[side].snd_nxt;
}

int64_t mos_conn_segment(const mos_engine_t *e, uint32_t slot, uint64_t id, int to_side, uint8_t tcp_flags,
                         const uint8_t *payload, uint32_t len, const uint8_t *macs, uint32_t seq_delta,
                         uint8_t *out, uint32_t cap)
{
    const struct conn *c = conn_get(e, slot, id);
    if (!c || (c->flags & (CF_ENDED | CF_RESET_PENDING)) || to_side < 0 || to_side > 1)
        return -1;
    int from = 1 - to_side;
    const struct tcp_end *P = &c->tcp.end[from], *R = &c->tcp.end[to_side];
    if (!seq_known(P))
        return -3;
    const struct flow_key *k = &c->key;
    uint32_t l2 = 14u + 4u * k->nvlan, l3len = k->ip_version == 6 ? 40u : 20u;
    uint64_t total = (uint64_t)l2 + l3len + 20u + len;
    if (total > cap || total > 65535u)
        return -2;
    uint8_t *p = out;
    memset(p, 0, (size_t)total - len);
    if (macs)
        memcpy(p, macs, 12);
    uint32_t at = 12;
    for (uint32_t v = 0; v < k->nvlan; v++, at += 4) {
        put16(p + at, 0x8100);
        put16(p + at + 2, k->vlan[v] & 0x0fffu);
    }
    put16(p + at, k->ip_version == 6 ? 0x86dd : 0x0800);
    uint8_t *ip = p + l2, *tcp = ip + l3len;
    uint32_t ipl = l3len + 20u + len;
    if (k->ip_version == 6) {
        ip[0] = 0x60;
        put16(ip + 4, ipl - 40u);
        ip[6] = MOS_IPPROTO_TCP;
        ip[7] = 64;
        memcpy(ip + 8, k->addr[from], 16);
        memcpy(ip + 24, k->addr[to_side], 16);
    } else {
        ip[0] = 0x45;
        put16(ip + 2, ipl);
        ip[6] = 0x40; /* DF */
        ip[8] = 64;
        ip[9] = MOS_IPPROTO_TCP;
        memcpy(ip + 12, k->addr[from], 4);
        memcpy(ip + 16, k->addr[to_side], 4);
    }
    put16(tcp, k->port[from]);
    put16(tcp + 2, k->port[to_side]);
    put32(tcp + 4, P->snd_nxt + seq_delta);
    /* a RST is taken on its sequence number alone (RFC 5961: exactly rcv_nxt); its ACK bit, when asked
     * for, acknowledges what the engine saw of the receiver */
    put32(tcp + 8, (tcp_flags & TCP_ACK) ? R->snd_nxt : 0);
    tcp[12] = 5u << 4;
    tcp[13] = tcp_flags;
    uint32_t win = (tcp_flags & TCP_RST) ? 0 : P->max_win >> (P->ws_ok && P->wscale != 0xff ? P->wscale : 0);
    put16(tcp + 14, win > 65535u ? 65535u : win);
    if (len)
        memcpy(tcp + 20, payload, len);
    struct pkt_info pi;
    if (decode_packet(p, (uint32_t)total, MOS_DLT_EN10MB, &pi) != 0)
        return -2; /* cannot happen: we built it */
    if (k->ip_version == 4)
        csum_set_ipv4_header(ip);
    csum_set_l4(&pi, tcp);
    return (int64_t)total;
}

int mos_conn_reset(mos_engine_t *e, uint32_t slot, uint64_t id)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || (c->flags & (CF_ENDED | CF_RESET_PENDING)))
        return -1;
    c->flags |= CF_RESET_PENDING;
    ft_touch(&e->ft, c); /* how mos_engine_events_done finds it */
    e->counters[MOS_C_CONNS_RESET]++;
    return 0;
}

int mos_conn_alias(mos_engine_t *e, uint32_t slot, uint64_t id, int side, const uint8_t *addr, uint16_t port)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || (c->flags & CF_ENDED) || !(c->flags & CF_IN_HASH))
        return -1;
    if (side != MOS_SIDE_CLI && side != MOS_SIDE_SVR)
        return -4;
    int r = fa_set(&e->ft, c, side, addr, port);
    return r == -1 ? -2 : r == -2 ? -3 : 0;
}

int mos_conn_translate(mos_engine_t *e, uint32_t slot, uint64_t id, int side, const uint8_t *addr, uint16_t port,
                       uint32_t pkt)
{
    int r = mos_conn_alias(e, slot, id, side, addr, port);
    if (r)
        return r;
    struct conn *c = conn_get(e, slot, id);
    ((struct ft_alias *)fa_get(&e->ft, c))->translate = 1;
    if (pkt >= e->batch_n || !e->batch)
        return 0;
    const struct mos_pkt *p = &e->batch[pkt];
    struct pkt_info pi;
    if (decode_captured(p->data, p->caplen, p->wirelen, e->linktype, &pi) || pi.is_fragment)
        return 0;
    fa_resolve(&e->ft, &pi);
    int sender = ft_match(&e->ft, c, &pi);
    if (sender >= 0)
        translate_packet(e, c, sender, &pi, p);
    return 0;
}

int mos_conn_get_alias(const mos_engine_t *e, uint32_t slot, uint64_t id, uint8_t *addr, uint16_t *port)
{
    struct conn *c = conn_get(e, slot, id);
    const struct ft_alias *a = c ? fa_get(&e->ft, c) : NULL;
    if (!a)
        return -1;
    memcpy(addr, a->key.addr[a->side], 16);
    *port = a->key.port[a->side];
    return a->side;
}

void mos_engine_injected(mos_engine_t *e, uint32_t bytes)
{
    e->counters[MOS_C_INJECTED_PACKETS]++;
    e->counters[MOS_C_INJECTED_BYTES] += bytes;
}

int mos_conn_stop(mos_engine_t *e, uint32_t slot, uint64_t id, int side_mask)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c)
        return -1;
    for (int s = 0; s < 2; s++) {
        if (!(side_mask & (1 << s)))
            continue;
        c->monitor &= (uint8_t)~(1u << s);
        /* Nothing more is held for that side; what is held now is kept until the events are done. */
        c->rx[s].buffering = 0;
    }
    return 0;
}

int mos_conn_set_policy(mos_engine_t *e, uint32_t slot, uint64_t id, int side, int policy)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || policy < 0 || policy >= REASM_POLICY_COUNT || side < 0 || side > 2)
        return -1;
    for (int s = 0; s < 2; s++)
        if (side == 2 || side == s)
            c->rx[s].policy = (uint8_t)policy;
    return 0;
}

int64_t mos_conn_copy(const mos_engine_t *e, uint32_t slot, uint64_t id, int side, uint64_t off,
                      uint32_t len, uint8_t *dst)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || side < 0 || side > 1)
        return -1;
    return reasm_copy(&c->rx[side], off, len, dst);
}

int64_t mos_conn_segments(const mos_engine_t *e, uint32_t slot, uint64_t id, int side, uint64_t *offs,
                          uint32_t *lens, uint32_t max)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || side < 0 || side > 1)
        return -1;
    return reasm_segments(&c->rx[side], offs, lens, max);
}

int mos_pkt_view(const mos_engine_t *e, uint32_t pkt, struct mos_pkt_view *out)
{
    if (!e->batch || pkt >= e->batch_n)
        return -1;
    const struct mos_pkt *p = &e->batch[pkt];
    struct pkt_info pi;
    memset(out, 0, sizeof(*out));
    out->caplen = p->caplen;
    out->wirelen = p->wirelen;
    out->ts_ns = p->ts_ns;
    if (decode_captured(p->data, p->caplen, p->wirelen, e->linktype, &pi) != 0)
        return -1;
    out->ip_version = pi.ip_version;
    out->proto = pi.proto;
    out->tcp_flags = pi.tcp_flags;
    out->nvlan = pi.nvlan;
    out->vlan[0] = pi.vlan[0];
    out->vlan[1] = pi.vlan[1];
    out->sport = pi.sport;
    out->dport = pi.dport;
    memcpy(out->src, pi.src, 16);
    memcpy(out->dst, pi.dst, 16);
    out->seq = pi.seq;
    out->ack = pi.ack;
    out->window = pi.window;
    out->mss = pi.mss;
    out->wscale = pi.wscale;
    out->sack_perm = pi.sack_perm;
    out->has_ts = pi.has_ts;
    out->tsval = pi.tsval;
    out->tsecr = pi.tsecr;
    if (pi.l3)
        out->l3_off = (uint32_t)(pi.l3 - p->data);
    if (pi.l4 && pi.l4 >= p->data && pi.l4 < p->data + p->caplen)
        out->l4_off = (uint32_t)(pi.l4 - p->data);
    if (pi.payload && pi.payload >= p->data && pi.payload <= p->data + p->caplen) {
        out->payload_off = (uint32_t)(pi.payload - p->data);
        out->payload_len = pi.payload_len;
    }
    return 0;
}

int64_t mos_conn_peek(const mos_engine_t *e, uint32_t slot, uint64_t id, int side, uint64_t from,
                      uint64_t end, uint8_t *dst, uint32_t cap, uint64_t *start)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || side < 0 || side > 1)
        return -1;
    uint64_t off = reasm_next_held(&c->rx[side], from);
    if (off >= end)
        return 0;
    uint64_t want = end - off;
    if (want > cap)
        want = cap;
    *start = off;
    return reasm_copy(&c->rx[side], off, (uint32_t)want, dst);
}

const uint8_t *mos_pkt_raw(const mos_engine_t *e, uint32_t pkt)
{
    if (!e->batch || pkt >= e->batch_n)
        return NULL;
    return e->batch[pkt].data;
}
