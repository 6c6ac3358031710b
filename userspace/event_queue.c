#define _GNU_SOURCE
#include "event_queue.h"

#include <stdlib.h>
#include <string.h>

#include "engine_state.h"

int evq_init(struct event_queue *q, uint32_t cap)
{
    memset(q, 0, sizeof(*q));
    q->qcap = cap;
    q->q = malloc((size_t)cap * sizeof(struct mos_event));
    return q->q ? 0 : -1;
}

void evq_free(struct event_queue *q)
{
    arena_reset(&q->arena);
    free(q->q);
    free(q->subs);
    free(q->queued);
    q->q = NULL;
    q->subs = NULL;
    q->queued = NULL;
}

int evq_set_sub(struct event_queue *q, uint32_t sub, int hook, int side, uint64_t mask)
{
    if (sub == 0 || sub >= MOS_MAX_SUBS || hook < 0 || hook > 1 || side < 0 || side > 1)
        return -1;
    if (sub >= q->nsubs) {
        uint32_t n = q->nsubs ? q->nsubs : 16;
        while (n <= sub)
            n *= 2;
        struct sub_masks *ns = realloc(q->subs, (size_t)n * sizeof(*ns));
        if (!ns)
            return -1;
        memset(ns + q->nsubs, 0, (size_t)(n - q->nsubs) * sizeof(*ns));
        q->subs = ns;
        q->nsubs = n;
    }
    q->subs[sub].mask[hook][side] = mask;
    return 0;
}

/* The connection has an event to be handled: with order CONNECTION its later packets wait for it. */
static void mark_queued(mos_engine_t *e, struct conn *c)
{
    struct event_queue *q = &e->evq;
    if (q->nqueued == q->queued_cap) {
        uint32_t n = q->queued_cap ? q->queued_cap * 2 : 256;
        uint32_t *nl = realloc(q->queued, (size_t)n * sizeof(*nl));
        if (!nl)
            return; /* out of memory: its packets go on unheld, as with order BATCH */
        q->queued = nl;
        q->queued_cap = n;
    }
    c->flags |= CF_QUEUED;
    q->queued[q->nqueued++] = ft_slot(&e->ft, c);
}

void evq_clear(struct event_queue *q)
{
    q->qlen = 0;
    arena_reset(&q->arena);
}

static struct mos_event *q_push(mos_engine_t *e)
{
    struct event_queue *q = &e->evq;
    if (q->qlen == q->qcap) {
        uint32_t ncap = q->qcap * 2;
        struct mos_event *nq = realloc(q->q, (size_t)ncap * sizeof(*nq));
        if (!nq)
            return NULL; /* out of memory: the event is lost, but counted by the caller's absence */
        q->q = nq;
        q->qcap = ncap;
    }
    e->counters[MOS_C_EVENTS_QUEUED]++;
    return &q->q[q->qlen++];
}

static uint64_t conn_mask(const mos_engine_t *e, const struct conn *c, int hook, int side)
{
    uint64_t m = e->evq.gmask[hook][side];
    if (c && c->sub)
        m |= e->evq.subs[c->sub].mask[hook][side];
    return m;
}

static int is_conn_level_builtin(int type) { return type == MOS_EV_CONN_START || type == MOS_EV_CONN_END; }

/* CONN_START/CONN_END and the user events derived from them belong to the connection, not a side. */
static int is_conn_level(const struct event_queue *q, int type)
{
    if (type >= MOS_EV_USER_BASE)
        return q->uev[type].conn_level;
    return is_conn_level_builtin(type);
}

int event_wanted(const mos_engine_t *e, const struct conn *c, int type, int side, int hook)
{
    return ((conn_mask(e, c, hook, side) | e->evq.user_bases) & (1ull << type)) != 0;
}

static int memmem_ok(const uint8_t *hay, uint32_t hlen, const uint8_t *pat, uint32_t plen)
{
    if (plen == 0)
        return 1;
    if (!hay || hlen < plen)
        return 0;
    return memmem(hay, hlen, pat, plen) != NULL;
}

static int filter_ok(const mos_engine_t *e, const struct mos_filter *f, const struct mos_event *ev)
{
    const struct pkt_info *pi = e->cur_pi;
    if (f->flags_mask && (!pi || (pi->tcp_flags & f->flags_mask) != f->flags_value))
        return 0;
    if (f->nports) {
        int hit = 0;
        for (int i = 0; i < f->nports && i < (int)(sizeof f->ports / sizeof f->ports[0]) && pi; i++)
            if (pi->sport == f->ports[i] || pi->dport == f->ports[i])
                hit = 1;
        if (!hit)
            return 0;
    }
    if (f->pattern_len) {
        uint32_t plen = f->pattern_len > sizeof f->pattern ? (uint32_t)sizeof f->pattern : f->pattern_len;
        if (ev->type == MOS_EV_CONN_NEW_DATA || (ev->type >= MOS_EV_USER_BASE && ev->data && ev->len))
            return memmem_ok(ev->data, ev->len, f->pattern, plen);
        return pi && memmem_ok(pi->payload, pi->payload_len, f->pattern, plen);
    }
    return 1;
}

static void raise_user(mos_engine_t *e, struct conn *c, const struct mos_event *base)
{
    for (int id = MOS_EV_USER_BASE; id < MOS_EV_MAX; id++) {
        struct user_event *u = &e->evq.uev[id];
        if (!u->defined || u->base != base->type)
            continue;
        if (u->has_filter && !filter_ok(e, &u->f, base))
            continue;
        emit(e, c, id, base->side, base->hook, base);
    }
}

void emit(mos_engine_t *e, struct conn *c, int type, int side, int hook, const struct mos_event *tmpl)
{
    uint64_t bit = 1ull << type;
    int wanted;
    int conn_level = is_conn_level(&e->evq, type);
    if (conn_level)
        wanted = ((conn_mask(e, c, hook, 0) | conn_mask(e, c, hook, 1)) & bit) != 0;
    else
        wanted = (conn_mask(e, c, hook, side) & bit) != 0;
    if (c && !(c->monitor & (1u << side)) && !conn_level)
        return; /* that side is no longer monitored */
    int derived = (e->evq.user_bases & bit) != 0;
    if (!wanted && !derived)
        return;
    struct mos_event ev;
    if (tmpl)
        ev = *tmpl;
    else
        memset(&ev, 0, sizeof(ev));
    ev.type = (uint8_t)type;
    ev.side = (uint8_t)side;
    ev.hook = (uint8_t)hook;
    ev.pkt = e->cur_pkt;
    ev.flags = e->cur_flags;
    ev.ts_ns = e->now;
    if (c) {
        ev.conn = ft_slot(&e->ft, c);
        ev.conn_id = c->id;
        ev.cli_state = c->tcp.end[0].state;
        ev.svr_state = c->tcp.end[1].state;
        ev.rx_off[0] = c->rx[0].next_off;
        ev.rx_off[1] = c->rx[1].next_off;
        ev.sub = c->sub;
    }
    if (wanted) {
        struct mos_event *q = q_push(e);
        if (q)
            *q = ev;
        if (q && c && e->evq.hold && !(c->flags & CF_QUEUED))
            mark_queued(e, c);
    }
    if (derived)
        raise_user(e, c, &ev);
}

int evq_define(struct event_queue *q, int id, int base, const struct mos_filter *f)
{
    if (id < MOS_EV_USER_BASE || id >= MOS_EV_MAX || base < 0 || base >= MOS_EV_MAX || base == id)
        return -1;
    if (base >= MOS_EV_USER_BASE && !q->uev[base].defined)
        return -1;
    struct user_event *u = &q->uev[id];
    u->defined = 1;
    u->base = (uint8_t)base;
    u->has_filter = f != NULL;
    u->conn_level = (uint8_t)is_conn_level(q, base);
    if (f)
        u->f = *f;
    q->user_bases |= 1ull << base;
    return 0;
}

/* ---- anomalies: one table (MOS_ANOMALIES) gives each its counter and its name ------------------- */

static const uint8_t anomaly_counter[] = {
#define MOS_X_(id, num, counter, name) [num] = MOS_C_##counter,
    MOS_ANOMALIES(MOS_X_)
#undef MOS_X_
};

static const char *const anomaly_name[] = {
#define MOS_X_(id, num, counter, name) [num] = name,
    MOS_ANOMALIES(MOS_X_)
#undef MOS_X_
};

/* The counters (and MOS_C_MAL_BY_REASON, one past them) fit the table's byte: checked here, so that a new
 * counter past 254 fails to build. */
_Static_assert(MOS_C_MAL_BY_REASON <= 255, "anomaly_counter holds counter ids in a byte");

void raise_anomaly(mos_engine_t *e, struct conn *c, int side, int kind, uint64_t off, uint32_t len)
{
    if (kind > 0 && (size_t)kind < sizeof(anomaly_counter) / sizeof(anomaly_counter[0]) && anomaly_name[kind]) {
        uint8_t ctr = anomaly_counter[kind];
        /* MALFORMED: the caller's len is the malformed_* counter (raise_malformed) */
        if (ctr == MOS_C_MAL_BY_REASON)
            ctr = len < MOS_C_COUNT ? (uint8_t)len : 0xff;
        if (ctr < MOS_C_COUNT)
            e->counters[ctr]++;
    }
    struct mos_event t = {0};
    t.reason = (uint32_t)kind;
    t.off = off;
    t.len = len;
    emit(e, c, MOS_EV_ERROR, side, MOS_HK_RCV, &t);
}

void raise_malformed(mos_engine_t *e, int counter)
{
    /* no connection, side 0 (as ORPHAN): an app subscribes with a global ERROR handler; emit queues
     * nothing when no mask wants ERROR, so a malformed packet costs a counter and a mask test */
    raise_anomaly(e, NULL, MOS_SIDE_CLI, MOS_ERR_MALFORMED, 0, (uint32_t)counter);
}

const char *mos_anomaly_name(int kind)
{
    if (kind <= 0 || (size_t)kind >= sizeof(anomaly_name) / sizeof(anomaly_name[0]))
        return NULL;
    return anomaly_name[kind];
}
