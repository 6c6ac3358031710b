/* The event queue: which events are wanted (masks per hook and side, global and per connection), user
 * events derived from others through filters evaluated in C, the snapshot each event carries, and the
 * anomalies (ERROR events) with their counters. Python takes the whole queue in one crossing. */
#ifndef MOS_EVENT_QUEUE_H
#define MOS_EVENT_QUEUE_H

#include <stdint.h>

#include "arena.h"
#include "mos_engine.h"

struct conn;

struct user_event {
    uint8_t defined, base, has_filter, conn_level;
    struct mos_filter f;
};

/* A subscription set's masks (mos_conn_set_sub): shared by the connections with the same handlers. */
struct sub_masks {
    uint64_t mask[2][2];      /* [hook][side] */
};

struct event_queue {
    uint64_t gmask[2][2];     /* [hook][side] */
    struct sub_masks *subs;   /* [0] is the empty set */
    uint32_t nsubs;
    uint8_t hold;             /* order CONNECTION: a connection that queues an event is marked CF_QUEUED */
    uint32_t *queued;         /* ... and its slot listed here, until the events are handled */
    uint32_t nqueued, queued_cap;
    uint64_t user_bases;      /* bit b: some user event has base b */
    struct user_event uev[MOS_EV_MAX];
    struct mos_event *q;
    uint32_t qlen, qcap;
    struct arena arena;       /* bytes that queued events point at */
};

/* Room for cap events (it grows past that when a packet raises many). Returns 0 or -1. */
int evq_init(struct event_queue *q, uint32_t cap);
void evq_free(struct event_queue *q);
/* The events were handled: empty the queue, free the copies they pointed at. */
void evq_clear(struct event_queue *q);
int evq_define(struct event_queue *q, int id, int base, const struct mos_filter *f);
/* Set the masks of subscription set `sub` (the table grows to it). Returns 0 or -1. */
int evq_set_sub(struct event_queue *q, uint32_t sub, int hook, int side, uint64_t mask);

/* Would an event of `type` raised by `side` at `hook` be queued or derive a user event? For callers
 * that must prepare something (a copy) before raising it. */
int event_wanted(const mos_engine_t *e, const struct conn *c, int type, int side, int hook);
/* Queues an event if anyone wants it (tmpl: its type-specific fields, or NULL), then derives user
 * events from it. c is NULL for packets of no connection. */
void emit(mos_engine_t *e, struct conn *c, int type, int side, int hook, const struct mos_event *tmpl);
/* An anomaly of enum mos_error_kind seen by `side`'s stack: counted, and an ERROR event. */
void raise_anomaly(mos_engine_t *e, struct conn *c, int side, int kind, uint64_t off, uint32_t len);
/* A packet the decoder rejected, `counter` its malformed_* reason: counted there, and an ERROR event of
 * kind MALFORMED with no connection whose len is `counter`. */
void raise_malformed(mos_engine_t *e, int counter);

#endif
