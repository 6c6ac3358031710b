/* The engine: flow table, both endpoints' TCP state machines, per-direction reassembly glue, event
 * queue. See mos_engine.h for the model; the comments here say why things are done the way they are.
 *
 * Processing of one TCP packet, as in mOS: the sender's stack is updated first (it sent the packet),
 * PKT_IN is raised at the SND hook; then the receiver's stack (window check, reassembly of the bytes
 * into its receive stream, RST/FIN/ACK effects), PKT_IN at the RCV hook, and the events that came out
 * of the packet (data, gaps, retransmissions, end).
 */
#define _GNU_SOURCE
#include "mos_engine.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "decode.h"
#include "defrag.h"
#include "mix.h"
#include "reasm.h"

#define SEC 1000000000ull
#define ACKED_HOLE_PATIENCE (64u << 10) /* bytes sent past an acknowledged hole before it is a gap */
#define NIL 0u

/* One endpoint's TCP stack, as far as a passive observer can tell. */
struct tcp_end {
    uint8_t state;
    uint8_t wscale;       /* from its SYN; 0xff: none */
    uint8_t syn_seen : 1, fin_seen : 1, isn_known : 1, ack_hint : 1, ack_pending : 1, spare : 3;
    uint8_t pad;
    uint32_t isn;
    uint32_t snd_nxt;     /* highest sequence number sent + 1 */
    uint32_t fin_seq;     /* sequence number of its FIN */
    uint32_t max_win;     /* largest window it advertised (scaled) */
    uint32_t hint;        /* ack_hint: what it acknowledged before its receive stream was anchored;
                           * ack_pending: the highest ack past a hole, not yet taken as a gap */
};

enum conn_flags {
    CF_PICKED_UP = 1, CF_ENDED = 2, CF_END_PENDING = 4, CF_WS_OK = 8, CF_EXT = 16, CF_FIN_CLI = 32,
    CF_FIN_SVR = 64, CF_IN_HASH = 128,
};

enum lru_class { LRU_HANDSHAKE = 0, LRU_EST = 1, LRU_CLOSED = 2, LRU_NONE = 3 };

/* A connection: both endpoints' state, both receive streams. 256 bytes or less with nothing held. */
struct conn {
    uint8_t addr[2][16];      /* [MOS_SIDE_CLI], [MOS_SIDE_SVR] */
    uint16_t port[2];
    uint16_t vlan[2];
    uint8_t nvlan, ip_version, end_reason, lru;
    uint8_t flags;
    uint8_t monitor;          /* bit s: side s monitored */
    uint8_t pad[2];
    uint32_t hnext;           /* hash chain / free list */
    uint32_t lprev, lnext;    /* LRU list of its class */
    uint32_t user;
    uint32_t pkts[2];         /* sent by each side */
    uint64_t id;
    uint64_t first_ts, last_ts;
    uint64_t bytes[2];        /* payload sent by each side */
    uint64_t gap_bytes[2];    /* lost in the stream received by each side */
    struct tcp_end end[2];
    struct reasm_dir rx[2];   /* rx[s]: the stream side s receives */
    uint32_t rexmit[2];       /* retransmitted segments sent by each side */
    uint32_t inconsistent[2]; /* retransmissions with differing bytes, in the stream each side receives */
};

struct lru_list {
    uint32_t head, tail;
};

struct conn_ext {
    uint64_t mask[2][2];
};

struct user_event {
    uint8_t defined, base, has_filter, conn_level;
    struct mos_filter f;
};

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    uint8_t data[];
};

struct file_slot {
    uint64_t id;
    int dir;
    FILE *f;
};

struct mos_engine {
    struct mos_config cfg;
    struct conn *conns;       /* [0] unused: slot 0 means none */
    struct conn_ext *ext;
    uint32_t *buckets;
    uint32_t nbuckets;
    uint32_t free_head;
    uint32_t next_unused;     /* slots never used yet start here (lazy pool) */
    uint32_t live;
    uint32_t pool;            /* slots: max_conns plus room for connections ended in a batch */
    uint64_t next_id;
    struct mos_conn_info *ended_log; /* final info of connections 1..ended_log_n (mos_engine_log_ended) */
    uint64_t ended_log_n;
    uint64_t seed;
    struct lru_list lru[3];
    uint64_t now;
    uint64_t last_expire;
    struct reasm_ctx rctx;
    defrag_t *defrag;
    uint64_t gmask[2][2];
    uint64_t user_bases;      /* bit b: some user event has base b */
    struct user_event uev[MOS_EV_MAX];
    struct mos_event *q;
    uint32_t qlen, qcap;
    uint32_t *zombies;        /* ended connections to free after the events are handled */
    uint32_t nzombies, zcap;
    uint32_t *touched;        /* connections whose buffers to trim after the events */
    uint32_t ntouched, tcap;
    struct arena_chunk *arena;
    /* current packet */
    const struct mos_pkt *batch;
    uint32_t batch_n;
    int linktype;
    uint32_t cur_pkt;
    uint8_t cur_flags;
    const struct pkt_info *cur_pi;
    uint8_t no_account;
    uint64_t counters[MOS_C_COUNT];
    /* stream files */
    char *stream_dir;
    struct file_slot *files;
    uint32_t nfiles;
    char errbuf[256];
};

static inline void account(mos_engine_t *e, int counter)
{
    /* every captured packet lands in exactly one disposition counter */
    if (!e->no_account)
        e->counters[counter]++;
}

size_t mos_conn_size(void)
{
    return sizeof(struct conn);
}

/* ---------------------------------------------------------------------------------------------- */
/* sequence arithmetic (RFC 1982 style, 32-bit wrap) */

static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_leq(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }
static inline int seq_geq(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }

/* ---------------------------------------------------------------------------------------------- */
/* event queue */

static inline struct conn *C(mos_engine_t *e, uint32_t slot) { return &e->conns[slot]; }
static inline uint32_t slot_of(mos_engine_t *e, struct conn *c) { return (uint32_t)(c - e->conns); }

static struct mos_event *q_push(mos_engine_t *e)
{
    if (e->qlen == e->qcap) {
        uint32_t ncap = e->qcap * 2;
        struct mos_event *nq = realloc(e->q, (size_t)ncap * sizeof(*nq));
        if (!nq)
            return NULL; /* out of memory: the event is lost, but counted by the caller's absence */
        e->q = nq;
        e->qcap = ncap;
    }
    e->counters[MOS_C_EVENTS_QUEUED]++;
    return &e->q[e->qlen++];
}

static uint64_t conn_mask(mos_engine_t *e, struct conn *c, int hook, int side)
{
    uint64_t m = e->gmask[hook][side];
    if (c && (c->flags & CF_EXT))
        m |= e->ext[slot_of(e, c)].mask[hook][side];
    return m;
}

static int is_conn_level_builtin(int type) { return type == MOS_EV_CONN_START || type == MOS_EV_CONN_END; }

static int memmem_ok(const uint8_t *hay, uint32_t hlen, const uint8_t *pat, uint32_t plen)
{
    if (plen == 0)
        return 1;
    if (!hay || hlen < plen)
        return 0;
    return memmem(hay, hlen, pat, plen) != NULL;
}

static int filter_ok(mos_engine_t *e, const struct mos_filter *f, const struct mos_event *ev)
{
    const struct pkt_info *pi = e->cur_pi;
    if (f->flags_mask && (!pi || (pi->tcp_flags & f->flags_mask) != f->flags_value))
        return 0;
    if (f->nports) {
        int hit = 0;
        for (int i = 0; i < f->nports && i < 16 && pi; i++)
            if (pi->sport == f->ports[i] || pi->dport == f->ports[i])
                hit = 1;
        if (!hit)
            return 0;
    }
    if (f->pattern_len) {
        uint32_t plen = f->pattern_len > 64 ? 64 : f->pattern_len;
        if (ev->type == MOS_EV_CONN_NEW_DATA || (ev->type >= MOS_EV_USER_BASE && ev->data && ev->len))
            return memmem_ok(ev->data, ev->len, f->pattern, plen);
        return pi && memmem_ok(pi->payload, pi->payload_len, f->pattern, plen);
    }
    return 1;
}

static void raise_user(mos_engine_t *e, struct conn *c, const struct mos_event *base);

/* CONN_START/CONN_END and the user events derived from them belong to the connection, not a side. */
static int is_conn_level(const mos_engine_t *e, int type)
{
    if (type >= MOS_EV_USER_BASE)
        return e->uev[type].conn_level;
    return is_conn_level_builtin(type);
}

/* Queue an event if anyone wants it, then derive user events from it. */
static void emit(mos_engine_t *e, struct conn *c, int type, int side, int hook, const struct mos_event *tmpl)
{
    uint64_t bit = 1ull << type;
    int wanted;
    int conn_level = is_conn_level(e, type);
    if (conn_level)
        wanted = ((conn_mask(e, c, hook, 0) | conn_mask(e, c, hook, 1)) & bit) != 0;
    else
        wanted = (conn_mask(e, c, hook, side) & bit) != 0;
    if (c && !(c->monitor & (1u << side)) && !conn_level)
        return; /* that side is no longer monitored */
    int derived = (e->user_bases & bit) != 0;
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
        ev.conn = slot_of(e, c);
        ev.conn_id = c->id;
        ev.cli_state = c->end[0].state;
        ev.svr_state = c->end[1].state;
        ev.rx_off[0] = c->rx[0].next_off;
        ev.rx_off[1] = c->rx[1].next_off;
    }
    if (wanted) {
        struct mos_event *q = q_push(e);
        if (q)
            *q = ev;
    }
    if (derived)
        raise_user(e, c, &ev);
}

static void raise_user(mos_engine_t *e, struct conn *c, const struct mos_event *base)
{
    for (int id = MOS_EV_USER_BASE; id < MOS_EV_MAX; id++) {
        struct user_event *u = &e->uev[id];
        if (!u->defined || u->base != base->type)
            continue;
        if (u->has_filter && !filter_ok(e, &u->f, base))
            continue;
        emit(e, c, id, base->side, base->hook, base);
    }
}

static void emit_simple(mos_engine_t *e, struct conn *c, int type, int side, int hook)
{
    emit(e, c, type, side, hook, NULL);
}

/* ---------------------------------------------------------------------------------------------- */
/* arena for copies that events point at (inconsistent retransmissions) */

static uint8_t *arena_copy(mos_engine_t *e, const uint8_t *src, uint32_t len)
{
    struct arena_chunk *a = e->arena;
    if (!a || a->cap - a->used < len) {
        size_t cap = len > (1u << 20) ? len : (1u << 20);
        a = malloc(sizeof(*a) + cap);
        if (!a)
            return NULL;
        a->cap = cap;
        a->used = 0;
        a->next = e->arena;
        e->arena = a;
    }
    uint8_t *p = a->data + a->used;
    memcpy(p, src, len);
    a->used += len;
    return p;
}

static void arena_reset(mos_engine_t *e)
{
    while (e->arena) {
        struct arena_chunk *n = e->arena->next;
        free(e->arena);
        e->arena = n;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* stream files (mos-xdp streams -o): appended in C so no Python runs per event */

static void stream_write(mos_engine_t *e, struct conn *c, int rxside, const uint8_t *data, uint32_t len)
{
    /* the stream received by the server is client-to-server */
    int dir = rxside == MOS_SIDE_SVR ? 0 : 1;
    uint32_t h = (uint32_t)((c->id * 2 + (uint64_t)dir) % e->nfiles);
    struct file_slot *fs = &e->files[h];
    if (!fs->f || fs->id != c->id || fs->dir != dir) {
        if (fs->f)
            fclose(fs->f);
        char path[4096];
        snprintf(path, sizeof(path), "%s/%llu.%s", e->stream_dir, (unsigned long long)c->id,
                 dir == 0 ? "c2s" : "s2c");
        fs->f = fopen(path, "ab");
        fs->id = c->id;
        fs->dir = dir;
        if (!fs->f)
            return;
    }
    fwrite(data, 1, len, fs->f);
}

static void stream_files_close(mos_engine_t *e)
{
    for (uint32_t i = 0; e->files && i < e->nfiles; i++)
        if (e->files[i].f) {
            fclose(e->files[i].f);
            e->files[i].f = NULL;
        }
}

int mos_engine_stream_dir(mos_engine_t *e, const char *dir, uint32_t max_open_files)
{
    stream_files_close(e);
    free(e->files);
    free(e->stream_dir);
    e->files = NULL;
    e->stream_dir = NULL;
    if (!dir)
        return 0;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    e->nfiles = max_open_files ? max_open_files : 64;
    e->files = calloc(e->nfiles, sizeof(*e->files));
    e->stream_dir = strdup(dir);
    if (!e->files || !e->stream_dir) {
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* reassembly callbacks: owner is the connection, the side is found from which rx it is */

struct owner {
    struct conn *c;
    int side;
};

static void cb_data(void *user, void *owner, uint64_t off, const uint8_t *data, uint32_t len)
{
    mos_engine_t *e = user;
    struct owner *o = owner;
    if (e->stream_dir)
        stream_write(e, o->c, o->side, data, len);
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
    uint64_t bit = 1ull << MOS_EV_REXMIT;
    if (inconsistent && ((conn_mask(e, o->c, MOS_HK_RCV, o->side) | e->user_bases) & bit)) {
        t.data = arena_copy(e, old_bytes, len);
        t.data2 = arena_copy(e, new_bytes, len);
    }
    emit(e, o->c, MOS_EV_REXMIT, o->side, MOS_HK_RCV, &t);
}

static void cb_limit(void *user, void *owner, enum reasm_limit why, uint64_t off, uint32_t len)
{
    mos_engine_t *e = user;
    struct owner *o = owner;
    struct mos_event t = {0};
    t.off = off;
    t.len = len;
    t.reason = why == REASM_LIMIT_MEMCAP ? MOS_ERR_MEMCAP
             : why == REASM_LIMIT_SEGMENTS ? MOS_ERR_SEGMENT_LIMIT : MOS_ERR_BUFFER_LIMIT;
    emit(e, o->c, MOS_EV_ERROR, o->side, MOS_HK_RCV, &t);
}

/* ---------------------------------------------------------------------------------------------- */
/* flow table */

static uint64_t addr_hash(const uint8_t *a, uint64_t seed)
{
    uint64_t w0, w1;
    memcpy(&w0, a, 8);
    memcpy(&w1, a + 8, 8);
    return mos_mix64(w0 ^ seed) ^ mos_mix64(w1 + seed * 3);
}

/* Symmetric: both directions of a connection hash alike. The seed is random so that a sender cannot
 * aim packets at one bucket. */
static uint32_t flow_hash(mos_engine_t *e, const struct pkt_info *pi, int with_vlan)
{
    uint64_t ha = addr_hash(pi->src, e->seed) + pi->sport;
    uint64_t hb = addr_hash(pi->dst, e->seed) + pi->dport;
    uint64_t h = mos_mix64((ha ^ hb) + (ha + hb) * 0x9e3779b97f4a7c15ull + pi->ip_version);
    if (with_vlan)
        h = mos_mix64(h ^ ((uint64_t)pi->vlan[0] << 16 | pi->vlan[1]) ^ ((uint64_t)pi->nvlan << 40));
    return (uint32_t)h;
}

/* Returns the side of the packet's sender (0 client, 1 server), or -1 if not this connection. */
static int conn_match(mos_engine_t *e, const struct conn *c, const struct pkt_info *pi)
{
    if (c->ip_version != pi->ip_version)
        return -1;
    if (e->cfg.vlan_in_key &&
        (c->nvlan != pi->nvlan || c->vlan[0] != pi->vlan[0] || c->vlan[1] != pi->vlan[1]))
        return -1;
    size_t alen = pi->ip_version == 4 ? 4 : 16;
    if (c->port[0] == pi->sport && c->port[1] == pi->dport && !memcmp(c->addr[0], pi->src, alen) &&
        !memcmp(c->addr[1], pi->dst, alen))
        return 0;
    if (c->port[1] == pi->sport && c->port[0] == pi->dport && !memcmp(c->addr[1], pi->src, alen) &&
        !memcmp(c->addr[0], pi->dst, alen))
        return 1;
    return -1;
}

static void lru_unlink(mos_engine_t *e, struct conn *c)
{
    if (c->lru == LRU_NONE)
        return;
    struct lru_list *l = &e->lru[c->lru];
    if (c->lprev)
        C(e, c->lprev)->lnext = c->lnext;
    else
        l->head = c->lnext;
    if (c->lnext)
        C(e, c->lnext)->lprev = c->lprev;
    else
        l->tail = c->lprev;
    c->lprev = c->lnext = NIL;
    c->lru = LRU_NONE;
}

static void lru_push(mos_engine_t *e, struct conn *c, int cls)
{
    lru_unlink(e, c);
    struct lru_list *l = &e->lru[cls];
    uint32_t s = slot_of(e, c);
    c->lru = (uint8_t)cls;
    c->lprev = l->tail;
    c->lnext = NIL;
    if (l->tail)
        C(e, l->tail)->lnext = s;
    else
        l->head = s;
    l->tail = s;
}

static uint32_t bucket_of(mos_engine_t *e, struct conn *c)
{
    struct pkt_info k;
    memcpy(k.src, c->addr[0], 16);
    memcpy(k.dst, c->addr[1], 16);
    k.sport = c->port[0];
    k.dport = c->port[1];
    k.ip_version = c->ip_version;
    k.vlan[0] = c->vlan[0];
    k.vlan[1] = c->vlan[1];
    k.nvlan = c->nvlan;
    return flow_hash(e, &k, e->cfg.vlan_in_key) & (e->nbuckets - 1);
}

static void hash_remove(mos_engine_t *e, struct conn *c)
{
    if (!(c->flags & CF_IN_HASH))
        return;
    uint32_t s = slot_of(e, c);
    uint32_t *pp = &e->buckets[bucket_of(e, c)];
    while (*pp && *pp != s)
        pp = &C(e, *pp)->hnext;
    if (*pp == s)
        *pp = c->hnext;
    c->hnext = NIL;
    c->flags &= (uint8_t)~CF_IN_HASH;
}

static void conn_free(mos_engine_t *e, struct conn *c)
{
    hash_remove(e, c);
    lru_unlink(e, c);
    reasm_release(&e->rctx, &c->rx[0]);
    reasm_release(&e->rctx, &c->rx[1]);
    uint32_t s = slot_of(e, c);
    if (c->flags & CF_EXT)
        memset(&e->ext[s], 0, sizeof(e->ext[s]));
    memset(c, 0, sizeof(*c));
    c->lru = LRU_NONE;
    c->hnext = e->free_head;
    e->free_head = s;
}

static void zombie_add(mos_engine_t *e, struct conn *c)
{
    if (e->nzombies == e->zcap) {
        uint32_t ncap = e->zcap ? e->zcap * 2 : 256;
        uint32_t *nz = realloc(e->zombies, ncap * sizeof(*nz));
        if (!nz)
            return; /* the slot is then reclaimed by linger expiry instead */
        e->zombies = nz;
        e->zcap = ncap;
    }
    e->zombies[e->nzombies++] = slot_of(e, c);
}

static void touch(mos_engine_t *e, struct conn *c)
{
    /* called once per connection per batch at most: reasm buffers to trim after the events */
    if (e->ntouched == e->tcap) {
        uint32_t ncap = e->tcap ? e->tcap * 2 : 1024;
        uint32_t *nt = realloc(e->touched, ncap * sizeof(*nt));
        if (!nt)
            return;
        e->touched = nt;
        e->tcap = ncap;
    }
    e->touched[e->ntouched++] = slot_of(e, c);
}

/* ---------------------------------------------------------------------------------------------- */
/* TCP state */

static void set_state(mos_engine_t *e, struct conn *c, int side, int st, int hook)
{
    struct tcp_end *t = &c->end[side];
    if (t->state == st)
        return;
    struct mos_event tm = {0};
    tm.old_state = t->state;
    t->state = (uint8_t)st;
    emit(e, c, MOS_EV_TCP_STATE_CHANGE, side, hook, &tm);
}

static void check_fin(mos_engine_t *e, struct conn *c, int snd, int hook);
static void conn_fill_info(const struct conn *c, struct mos_conn_info *out);

/* Holes that side `s` acknowledged (in the stream it receives) become gaps now. */
static void settle_acks(mos_engine_t *e, struct conn *c, int s)
{
    struct tcp_end *S = &c->end[s];
    if (!S->ack_pending)
        return;
    S->ack_pending = 0;
    struct owner o = {c, s};
    if (c->rx[s].initialized) {
        reasm_ack(&e->rctx, &c->rx[s], &o, S->hint);
        check_fin(e, c, 1 - s, MOS_HK_RCV);
    }
}

static void end_conn(mos_engine_t *e, struct conn *c, int reason, int side)
{
    if (c->flags & CF_ENDED)
        return;
    /* Whatever is still held is delivered, holes becoming gaps: the app sees every byte we have. */
    settle_acks(e, c, 0);
    settle_acks(e, c, 1);
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
    e->live--;
    if (reason == MOS_END_FIN || reason == MOS_END_RST) {
        /* Linger to absorb stragglers (the last ACK, retransmitted FINs) without a new connection. */
        lru_push(e, c, LRU_CLOSED);
    } else {
        hash_remove(e, c);
        lru_unlink(e, c);
    }
    zombie_add(e, c);
}

static struct conn *conn_new(mos_engine_t *e, const struct pkt_info *pi, int sender_is_client,
                             uint32_t bucket)
{
    uint32_t s = e->free_head;
    if (s)
        e->free_head = C(e, s)->hnext;
    else if (e->next_unused <= e->pool)
        s = e->next_unused++;
    else
        return NULL;
    struct conn *c = C(e, s);
    memset(c, 0, sizeof(*c));
    int cs = sender_is_client ? 0 : 1;
    memcpy(c->addr[cs], pi->src, 16);
    memcpy(c->addr[1 - cs], pi->dst, 16);
    c->port[cs] = pi->sport;
    c->port[1 - cs] = pi->dport;
    c->vlan[0] = pi->vlan[0];
    c->vlan[1] = pi->vlan[1];
    c->nvlan = pi->nvlan;
    c->ip_version = pi->ip_version;
    c->id = ++e->next_id;
    c->first_ts = c->last_ts = e->now;
    c->monitor = 3;
    c->lru = LRU_NONE;
    c->end[0].wscale = c->end[1].wscale = 0xff;
    c->rx[0].policy = c->rx[1].policy = e->cfg.policy;
    c->rx[0].buffering = e->cfg.buffer_cli;
    c->rx[1].buffering = e->cfg.buffer_svr;
    c->hnext = e->buckets[bucket];
    e->buckets[bucket] = s;
    c->flags |= CF_IN_HASH;
    e->live++;
    e->counters[MOS_C_CONNS_CREATED]++;
    e->counters[MOS_C_CONNS_LIVE]++;
    return c;
}

/* The table holds max_conns live connections: end the least recently used, half-open ones first. */
static int evict_live(mos_engine_t *e)
{
    static const int order[2] = {LRU_HANDSHAKE, LRU_EST};
    for (int k = 0; k < 2; k++) {
        uint32_t s = e->lru[order[k]].head;
        if (s) {
            e->counters[MOS_C_CONNS_EVICTED]++;
            end_conn(e, C(e, s), MOS_END_EVICTION, MOS_SIDE_CLI);
            return 1;
        }
    }
    return 0;
}

/* Every slot is taken (live, lingering after a close, or ended this batch): free the oldest lingering
 * connection whose end was handled. */
static int free_lingering(mos_engine_t *e)
{
    for (uint32_t s = e->lru[LRU_CLOSED].head; s; s = C(e, s)->lnext) {
        struct conn *c = C(e, s);
        if ((c->flags & CF_ENDED) && !(c->flags & CF_END_PENDING)) {
            conn_free(e, c);
            return 1;
        }
    }
    return 0;
}

/* Who is the server of a connection seen mid-stream? A SYN-ACK's sender; else the well-known port;
 * else the lower port (ephemeral ports are high); else the destination. */
static int guess_sender_is_client(const struct pkt_info *pi)
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

static uint32_t scaled_win(const struct conn *c, int side, const struct pkt_info *pi)
{
    const struct tcp_end *t = &c->end[side];
    if ((pi->tcp_flags & TCP_SYN) || !(c->flags & CF_WS_OK) || t->wscale == 0xff)
        return pi->window;
    return (uint32_t)pi->window << t->wscale;
}

/* Anchor the stream `rx_s` receives at sequence number seq (first byte). */
static void rx_init(mos_engine_t *e, struct conn *c, int rx_s, uint32_t seq)
{
    struct reasm_dir *d = &c->rx[rx_s];
    uint8_t policy = d->policy, buffering = d->buffering;
    reasm_dir_init(d, seq, policy, buffering);
    (void)e;
}

/* The FIN sent by `snd` is in order in the stream the peer receives: the peer's stack takes it. */
static void check_fin(mos_engine_t *e, struct conn *c, int snd, int hook)
{
    int rcv = 1 - snd;
    struct tcp_end *s = &c->end[snd];
    uint8_t flag = snd == 0 ? CF_FIN_CLI : CF_FIN_SVR;
    if (!s->fin_seen || (c->flags & flag))
        return;
    struct reasm_dir *d = &c->rx[rcv];
    if (d->initialized && seq_lt(d->next_seq, s->fin_seq))
        return; /* bytes before the FIN are still missing */
    c->flags |= flag;
    struct tcp_end *r = &c->end[rcv];
    switch (r->state) {
    case MOS_TCP_SYN_RECEIVED:
    case MOS_TCP_ESTABLISHED:
        set_state(e, c, rcv, MOS_TCP_CLOSE_WAIT, hook);
        break;
    case MOS_TCP_FIN_WAIT_1:
        set_state(e, c, rcv, MOS_TCP_CLOSING, hook);
        break;
    case MOS_TCP_FIN_WAIT_2:
        set_state(e, c, rcv, MOS_TCP_TIME_WAIT, hook);
        break;
    default:
        break;
    }
}

/* `rcv` learns that its FIN (or SYN) was acknowledged by `ack`. */
static void rcv_ack_effects(mos_engine_t *e, struct conn *c, int rcv, uint32_t ack, int hook)
{
    struct tcp_end *r = &c->end[rcv];
    if (r->state == MOS_TCP_SYN_RECEIVED && r->isn_known && seq_geq(ack, r->isn + 1))
        set_state(e, c, rcv, MOS_TCP_ESTABLISHED, hook);
    if (!r->fin_seen || seq_lt(ack, r->fin_seq + 1))
        return;
    switch (r->state) {
    case MOS_TCP_FIN_WAIT_1:
        set_state(e, c, rcv, MOS_TCP_FIN_WAIT_2, hook);
        break;
    case MOS_TCP_CLOSING:
        set_state(e, c, rcv, MOS_TCP_TIME_WAIT, hook);
        break;
    case MOS_TCP_LAST_ACK:
        set_state(e, c, rcv, MOS_TCP_CLOSED, hook);
        break;
    default:
        break;
    }
}

/* The sender's stack: what sending this packet says about it. */
static void sender_update(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    struct tcp_end *t = &c->end[s];
    uint8_t f = pi->tcp_flags;
    if (f & TCP_RST)
        return; /* a RST only counts once the receiver's window check accepts it */
    uint32_t seglen = pi->payload_len + ((f & TCP_SYN) ? 1u : 0u) + ((f & TCP_FIN) ? 1u : 0u);
    if (f & TCP_SYN) {
        if (!t->syn_seen) {
            t->syn_seen = 1;
            t->isn = pi->seq;
            t->isn_known = 1;
            t->wscale = pi->wscale;
            t->snd_nxt = pi->seq + seglen;
            if (!(f & TCP_ACK)) {
                if (t->state == MOS_TCP_CLOSED)
                    set_state(e, c, s, MOS_TCP_SYN_SENT, MOS_HK_SND);
            } else {
                if (t->state == MOS_TCP_LISTEN || t->state == MOS_TCP_CLOSED)
                    set_state(e, c, s, MOS_TCP_SYN_RECEIVED, MOS_HK_SND);
            }
            /* RFC 7323: scaling is on only if both SYNs carried the option. */
            if (c->end[0].wscale != 0xff && c->end[1].wscale != 0xff)
                c->flags |= CF_WS_OK;
        } else if (pi->seq == t->isn) {
            e->counters[MOS_C_SYN_REXMIT]++;
            c->rexmit[s]++;
        }
    } else if ((f & TCP_ACK) && t->state == MOS_TCP_SYN_SENT && c->end[1 - s].isn_known &&
               pi->ack == c->end[1 - s].isn + 1) {
        /* The peer's SYN-ACK was not captured, but this ACK shows it arrived. */
        set_state(e, c, s, MOS_TCP_ESTABLISHED, MOS_HK_SND);
    }
    if ((f & TCP_FIN) && !t->fin_seen) {
        t->fin_seen = 1;
        t->fin_seq = pi->seq + pi->payload_len + ((f & TCP_SYN) ? 1u : 0u);
        switch (t->state) {
        case MOS_TCP_SYN_SENT:
        case MOS_TCP_SYN_RECEIVED:
        case MOS_TCP_ESTABLISHED:
            set_state(e, c, s, MOS_TCP_FIN_WAIT_1, MOS_HK_SND);
            break;
        case MOS_TCP_CLOSE_WAIT:
            if ((f & TCP_ACK) && c->end[1 - s].fin_seen && seq_leq(pi->ack, c->end[1 - s].fin_seq))
                /* This FIN does not acknowledge the peer's: it was sent before the peer's FIN arrived
                 * (a simultaneous close the capture point saw in the other order). */
                set_state(e, c, s, MOS_TCP_CLOSING, MOS_HK_SND);
            else
                set_state(e, c, s, MOS_TCP_LAST_ACK, MOS_HK_SND);
            break;
        default:
            break;
        }
    }
    if (!t->snd_nxt || seq_gt(pi->seq + seglen, t->snd_nxt))
        t->snd_nxt = pi->seq + seglen;
    uint32_t w = scaled_win(c, s, pi);
    if (w > t->max_win)
        t->max_win = w;
}

static int rst_acceptable(struct conn *c, int r, const struct pkt_info *pi)
{
    struct tcp_end *R = &c->end[r];
    struct reasm_dir *d = &c->rx[r];
    if (R->state == MOS_TCP_SYN_SENT)
        return (pi->tcp_flags & TCP_ACK) ? pi->ack == R->isn + 1 : 0;
    if (!d->initialized)
        return 1; /* nothing to check against (picked up, or no data yet) */
    uint32_t wnd = R->max_win ? R->max_win : 65535;
    /* RFC 9293 3.10.7.x: RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND; one byte before RCV.NXT is allowed for
     * the stacks that send RST with the sequence number of an acknowledged FIN. */
    return seq_geq(pi->seq, d->next_seq - 1) && seq_lt(pi->seq, d->next_seq + wnd + 1);
}

/* The receiver's stack: window check, the bytes into its receive stream, RST/FIN/ACK effects. */
static void receiver_update(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    int r = 1 - s;
    struct tcp_end *R = &c->end[r];
    struct tcp_end *S = &c->end[s];
    uint8_t f = pi->tcp_flags;
    struct owner os = {c, s}, orr = {c, r};

    if (pi->payload_len)
        settle_acks(e, c, s);     /* the acking side moved on: what it acked and we lack is lost */
    if (f & (TCP_FIN | TCP_RST))
        settle_acks(e, c, r);     /* the sender is done: holes the receiver acked will not fill */

    if (f & TCP_RST) {
        if (rst_acceptable(c, r, pi)) {
            e->counters[MOS_C_RST_ACCEPTED]++;
            set_state(e, c, s, MOS_TCP_CLOSED, MOS_HK_SND);
            set_state(e, c, r, MOS_TCP_CLOSED, MOS_HK_RCV);
            emit_simple(e, c, MOS_EV_PKT_IN, r, MOS_HK_RCV);
            end_conn(e, c, MOS_END_RST, r);
        } else {
            e->counters[MOS_C_RST_OUT_OF_WINDOW]++;
            struct mos_event t = {0};
            t.reason = MOS_ERR_RST_OUT_OF_WINDOW;
            emit(e, c, MOS_EV_ERROR, r, MOS_HK_RCV, &t);
        }
        return;
    }
    if (f & TCP_SYN) {
        if (!(f & TCP_ACK)) {
            if (R->state == MOS_TCP_LISTEN || R->state == MOS_TCP_CLOSED || R->state == MOS_TCP_SYN_SENT)
                set_state(e, c, r, MOS_TCP_SYN_RECEIVED, MOS_HK_RCV);
        } else if ((R->state == MOS_TCP_SYN_SENT || R->state == MOS_TCP_SYN_RECEIVED) && R->isn_known &&
                   pi->ack == R->isn + 1) {
            set_state(e, c, r, MOS_TCP_ESTABLISHED, MOS_HK_RCV);
        }
        if (!c->rx[r].initialized && (c->monitor & (1u << r)))
            rx_init(e, c, r, pi->seq + 1);
    }
    uint32_t plen = pi->payload_len;
    if (plen && (c->monitor & (1u << r))) {
        uint32_t dseq = pi->seq + ((f & TCP_SYN) ? 1u : 0u);
        struct reasm_dir *d = &c->rx[r];
        if (!d->initialized) {
            /* Picked up mid-stream: anchor at what the receiver already acknowledged when that is just
             * before this segment (the bytes between were lost), else at this segment. */
            if (R->ack_hint && seq_lt(R->hint, dseq) && dseq - R->hint < (1u << 20))
                rx_init(e, c, r, R->hint);
            else
                rx_init(e, c, r, dseq);
        }
        if (R->ack_pending) {
            /* The sender is well past what the receiver acknowledged (64 KiB: reordering at a capture
             * point does not reach that far, and waiting longer holds every later segment out of order),
             * or waiting would hold too much: the acknowledged hole is lost. */
            if ((seq_geq(dseq, R->hint) && dseq - R->hint >= ACKED_HOLE_PATIENCE) ||
                reasm_held_bytes(d) > e->cfg.dir_buffer_limit / 2)
                settle_acks(e, c, r);
        }
        int64_t off = reasm_seq_to_off(d, dseq);
        if (off - (int64_t)d->next_off > (1 << 30) && R->ack_pending) {
            /* Far ahead of what we have, and the receiver acknowledged past a hole: the hole is lost
             * (settling it keeps the 32-bit sequence anchor close to the data). */
            settle_acks(e, c, r);
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
            e->counters[MOS_C_OUT_OF_WINDOW]++;
            struct mos_event t = {0};
            t.reason = MOS_ERR_OUT_OF_WINDOW;
            t.off = (uint64_t)off;
            t.len = plen;
            emit(e, c, MOS_EV_ERROR, r, MOS_HK_RCV, &t);
        }
        uint64_t before = e->rctx.counters[REASM_C_REXMIT_SEGMENTS];
        reasm_segment(&e->rctx, d, &orr, dseq, pi->payload, plen);
        if (e->rctx.counters[REASM_C_REXMIT_SEGMENTS] != before)
            c->rexmit[s]++;
    }
    if (f & TCP_ACK) {
        struct reasm_dir *ds = &c->rx[s];
        if (ds->initialized) {
            /* the FIN takes a sequence number but is no byte of the stream */
            uint32_t ack = pi->ack;
            if (c->end[r].fin_seen && seq_gt(ack, c->end[r].fin_seq))
                ack = c->end[r].fin_seq;
            uint32_t swnd = S->max_win > 65535 ? S->max_win : 65535;
            if (seq_gt(ack, ds->next_seq) && ack - ds->next_seq > 2 * swnd + 65536u) {
                /* A hole larger than any window: no reordering explains it, the bytes were lost. */
                if (!S->ack_pending || seq_gt(ack, S->hint))
                    S->hint = ack;
                S->ack_pending = 1;
                settle_acks(e, c, s);
            } else if (seq_gt(ack, ds->next_seq)) {
                /* An ack past a hole: the bytes may still come (a capture point sees reordering the
                 * endpoint did not), so the hole becomes a gap only when the conversation moves on:
                 * the acking side sends data, or the other side closes (see settle_acks). */
                if (!S->ack_pending || seq_gt(ack, S->hint))
                    S->hint = ack;
                S->ack_pending = 1;
                reasm_ack(&e->rctx, ds, &os, ds->next_seq);
                if (c->end[r].fin_seen)
                    settle_acks(e, c, s); /* the sender is done: nothing more will come */
            } else {
                reasm_ack(&e->rctx, ds, &os, ack);
            }
            check_fin(e, c, r, MOS_HK_RCV);
        } else {
            S->ack_hint = 1;
            S->hint = pi->ack;
        }
        rcv_ack_effects(e, c, r, pi->ack, MOS_HK_RCV);
    }
    /* RFC 9293 3.10.7.4: the ACK is processed before the FIN */
    if (S->fin_seen)
        check_fin(e, c, s, MOS_HK_RCV); /* this FIN, or an earlier one whose missing bytes just came */
}

static int is_closed_state(int st) { return st == MOS_TCP_TIME_WAIT || st == MOS_TCP_CLOSED; }

static void process_tcp(mos_engine_t *e, struct conn *c, int s, const struct pkt_info *pi)
{
    account(e, MOS_C_CONN_PACKETS);
    c->pkts[s]++;
    c->bytes[s] += pi->payload_len;
    c->last_ts = e->now;
    if (!c->pad[0]) {
        c->pad[0] = 1;
        touch(e, c);
    }
    if (!(c->monitor & 3))
        e->counters[MOS_C_IGNORED_SIDE]++;
    sender_update(e, c, s, pi);
    emit_simple(e, c, MOS_EV_PKT_IN, s, MOS_HK_SND);
    receiver_update(e, c, s, pi);
    if (c->flags & CF_ENDED)
        return; /* RST */
    emit_simple(e, c, MOS_EV_PKT_IN, 1 - s, MOS_HK_RCV);
    int both_fin = (c->flags & (CF_FIN_CLI | CF_FIN_SVR)) == (CF_FIN_CLI | CF_FIN_SVR);
    if (both_fin && is_closed_state(c->end[0].state) && is_closed_state(c->end[1].state)) {
        end_conn(e, c, MOS_END_FIN, s);
        return;
    }
    int cls;
    if (both_fin)
        cls = LRU_CLOSED;
    else if (c->end[0].state >= MOS_TCP_ESTABLISHED || c->end[1].state >= MOS_TCP_ESTABLISHED)
        cls = LRU_EST;
    else
        cls = LRU_HANDSHAKE;
    lru_push(e, c, cls);
}

static void expire(mos_engine_t *e)
{
    e->last_expire = e->now;
    const uint64_t tmo[3] = {e->cfg.timeout_syn_ns, e->cfg.timeout_est_ns, e->cfg.timeout_closed_ns};
    for (int cls = 0; cls < 3; cls++) {
        uint32_t s = e->lru[cls].head;
        while (s) {
            struct conn *c = C(e, s);
            uint32_t next = c->lnext;
            if (c->last_ts + tmo[cls] > e->now)
                break;
            if (c->flags & CF_ENDED) {
                if (c->flags & CF_END_PENDING)
                    break; /* its CONN_END has not been handled yet; next time */
                conn_free(e, c);
            } else {
                settle_acks(e, c, 0);
                settle_acks(e, c, 1);
                int both_fin = (c->flags & (CF_FIN_CLI | CF_FIN_SVR)) == (CF_FIN_CLI | CF_FIN_SVR);
                e->counters[MOS_C_CONNS_TIMED_OUT]++;
                end_conn(e, c, both_fin ? MOS_END_FIN : MOS_END_TIMEOUT, MOS_SIDE_CLI);
                if (both_fin)
                    lru_unlink(e, c), hash_remove(e, c);
            }
            s = next;
        }
    }
    if (e->defrag)
        defrag_expire(e->defrag, e->now);
}

enum { PROC_DONE = 0, PROC_RETRY = 1 };

static int process_packet(mos_engine_t *e, const struct mos_pkt *p)
{
    struct pkt_info pi;
    e->cur_pi = NULL;
    e->cur_flags = 0;
    int r = decode_packet(p->data, p->caplen, e->linktype, &pi);
    e->no_account = 0;
    if (r) {
        e->counters[r]++;
        return PROC_DONE;
    }
    if (pi.is_fragment) {
        const uint8_t *dg;
        uint32_t dglen;
        uint32_t vkey = e->cfg.vlan_in_key ? ((uint32_t)pi.vlan[0] << 16 | pi.vlan[1]) : 0;
        int dr = defrag_feed(e->defrag, pi.l3, pi.l3_len, vkey, e->now, &dg, &dglen);
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
            e->counters[MOS_C_FRAG_ERROR]++;
            e->counters[MOS_C_FRAG_HELD]--; /* its last fragment is then counted as rejected */
            return PROC_DONE;
        }
    }
    e->cur_pi = &pi;
    e->cur_flags = pi.tcp_flags;
    if (pi.ip_version == 0 || pi.proto != 6) {
        account(e, MOS_C_ORPHAN_NOT_TCP);
        struct mos_event t = {0};
        t.reason = MOS_ORPHAN_NOT_TCP;
        emit(e, NULL, MOS_EV_ORPHAN, 0, MOS_HK_RCV, &t);
        goto fixup;
    }
    uint32_t bucket = flow_hash(e, &pi, e->cfg.vlan_in_key) & (e->nbuckets - 1);
    for (uint32_t s = e->buckets[bucket]; s; s = C(e, s)->hnext) {
        struct conn *c = C(e, s);
        int side = conn_match(e, c, &pi);
        if (side < 0)
            continue;
        if (c->flags & CF_ENDED) {
            int new_syn = (pi.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN &&
                          (!c->end[side].isn_known || pi.seq != c->end[side].isn);
            if (!new_syn) {
                account(e, MOS_C_CONN_PACKETS);
                if (pi.payload_len)
                    e->counters[MOS_C_DATA_AFTER_CLOSE]++;
                c->last_ts = e->now;
                lru_push(e, c, LRU_CLOSED);
                goto fixup;
            }
            if (c->flags & CF_END_PENDING) {
                /* its end is not handled yet: out of the table now, freed after the events */
                hash_remove(e, c);
                lru_unlink(e, c);
            } else {
                conn_free(e, c);
            }
            break; /* port reuse: a new connection below */
        }
        process_tcp(e, c, side, &pi);
        goto fixup;
    }
    {
        int syn_only = (pi.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
        if (!syn_only && !e->cfg.pickup) {
            account(e, MOS_C_ORPHAN_NO_CONN);
            struct mos_event t = {0};
            t.reason = MOS_ORPHAN_NO_CONN;
            emit(e, NULL, MOS_EV_ORPHAN, 0, MOS_HK_RCV, &t);
            goto fixup;
        }
        int cli = syn_only ? 1 : guess_sender_is_client(&pi);
        if (e->live >= e->cfg.max_conns)
            evict_live(e);
        struct conn *c = conn_new(e, &pi, cli, bucket);
        if (!c && free_lingering(e))
            c = conn_new(e, &pi, cli, bucket);
        if (!c) {
            /* Slots of connections that ended in this batch come back once its events are handled.
             * A reassembled datagram cannot be offered again (its fragments are consumed). */
            if (e->nzombies && !e->no_account)
                return PROC_RETRY;
            account(e, MOS_C_ORPHAN_TABLE_FULL);
            struct mos_event t = {0};
            t.reason = MOS_ORPHAN_TABLE_FULL;
            emit(e, NULL, MOS_EV_ORPHAN, 0, MOS_HK_RCV, &t);
            goto fixup;
        }
        int sside = cli ? MOS_SIDE_CLI : MOS_SIDE_SVR;
        if (syn_only) {
            c->end[MOS_SIDE_SVR].state = MOS_TCP_LISTEN;
        } else {
            /* Already in progress: guess both states (no events for the guess). */
            c->flags |= CF_PICKED_UP;
            e->counters[MOS_C_CONNS_PICKED_UP]++;
            if ((pi.tcp_flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) {
                c->end[MOS_SIDE_CLI].state = MOS_TCP_SYN_SENT;
                c->end[MOS_SIDE_SVR].state = MOS_TCP_LISTEN;
            } else {
                c->end[MOS_SIDE_CLI].state = MOS_TCP_ESTABLISHED;
                c->end[MOS_SIDE_SVR].state = MOS_TCP_ESTABLISHED;
            }
        }
        emit_simple(e, c, MOS_EV_CONN_START, sside, MOS_HK_RCV);
        process_tcp(e, c, sside, &pi);
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
    cfg->buffer_cli = 1;
    cfg->buffer_svr = 1;
    cfg->dir_buffer_limit = 8u << 20;
    cfg->max_segments = 4096;
    cfg->memcap = 2ull << 30;
    cfg->timeout_syn_ns = 30 * SEC;
    cfg->timeout_est_ns = 600 * SEC;
    cfg->timeout_closed_ns = 10 * SEC;
    cfg->frag_memcap = 64u << 20;
    cfg->frag_timeout_ns = 30 * SEC;
    cfg->frag_max = 4096;
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
    tune_malloc();
    mos_engine_t *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->cfg = *cfg;
    if (e->cfg.event_queue < 64)
        e->cfg.event_queue = 64;
    uint32_t nb = 1;
    while (nb < cfg->max_conns)
        nb <<= 1;
    e->nbuckets = nb;
    /* calloc'd memory is only committed when touched, so a big table costs what it holds */
    e->pool = cfg->max_conns + (cfg->max_conns / 8 > 4096 ? 4096 : cfg->max_conns / 8) + 64;
    e->conns = calloc((size_t)e->pool + 1, sizeof(struct conn));
    e->ext = calloc((size_t)e->pool + 1, sizeof(struct conn_ext));
    e->buckets = calloc(nb, sizeof(uint32_t));
    e->qcap = e->cfg.event_queue + 256;
    e->q = malloc((size_t)e->qcap * sizeof(struct mos_event));
    e->defrag = defrag_new(cfg->frag_memcap, cfg->frag_timeout_ns, cfg->frag_max);
    if (!e->conns || !e->ext || !e->buckets || !e->q || !e->defrag) {
        snprintf(err, errlen, "out of memory for a table of %u connections", cfg->max_conns);
        mos_engine_free(e);
        return NULL;
    }
    e->next_unused = 1;
    e->seed = mos_random_seed(e);
    static const struct reasm_cb cb = {cb_data, cb_gap, cb_rexmit, cb_limit};
    reasm_ctx_init(&e->rctx, &cb, e, cfg->memcap, cfg->dir_buffer_limit, cfg->max_segments);
    return e;
}

void mos_engine_free(mos_engine_t *e)
{
    if (!e)
        return;
    if (e->conns) {
        for (uint32_t s = 1; s < e->next_unused; s++) {
            reasm_release(&e->rctx, &e->conns[s].rx[0]);
            reasm_release(&e->rctx, &e->conns[s].rx[1]);
        }
    }
    mos_engine_stream_dir(e, NULL, 0);
    arena_reset(e);
    defrag_free(e->defrag);
    free(e->conns);
    free(e->ext);
    free(e->buckets);
    free(e->q);
    free(e->zombies);
    free(e->touched);
    free(e->ended_log);
    free(e);
}

void mos_engine_set_mask(mos_engine_t *e, int hook, int side, uint64_t mask)
{
    if (hook >= 0 && hook < 2 && side >= 0 && side < 2)
        e->gmask[hook][side] = mask;
}

int mos_engine_define_event(mos_engine_t *e, int id, int base, const struct mos_filter *f)
{
    if (id < MOS_EV_USER_BASE || id >= MOS_EV_MAX || base < 0 || base >= MOS_EV_MAX || base == id)
        return -1;
    if (base >= MOS_EV_USER_BASE && !e->uev[base].defined)
        return -1;
    struct user_event *u = &e->uev[id];
    u->defined = 1;
    u->base = (uint8_t)base;
    u->has_filter = f != NULL;
    u->conn_level = (uint8_t)is_conn_level(e, base);
    if (f)
        u->f = *f;
    e->user_bases |= 1ull << base;
    return 0;
}

uint32_t mos_engine_feed(mos_engine_t *e, int linktype, const struct mos_pkt *pkts, uint32_t n,
                         uint64_t stop_ts_ns)
{
    e->batch = pkts;
    e->batch_n = n;
    e->linktype = linktype;
    e->counters[MOS_C_EVENT_BATCHES]++;
    for (uint32_t i = 0; i < n; i++) {
        const struct mos_pkt *p = &pkts[i];
        if (stop_ts_ns && p->ts_ns >= stop_ts_ns)
            return i;
        if (e->qlen >= e->cfg.event_queue)
            return i;
        uint64_t save_now = e->now;
        if (p->ts_ns > e->now)
            e->now = p->ts_ns; /* packet time never goes back */
        if (e->now - e->last_expire >= SEC)
            expire(e);
        e->cur_pkt = i;
        if (process_packet(e, p) == PROC_RETRY) {
            e->now = save_now;
            return i;
        }
        e->counters[MOS_C_PACKETS]++;
        e->counters[MOS_C_BYTES] += p->wirelen;
        if (e->cfg.sync_events && e->qlen)
            return i + 1; /* handlers run before the next packet (exact, but a crossing per packet) */
    }
    return n;
}

void mos_engine_set_stable(mos_engine_t *e, const void *lo, const void *hi)
{
    if (e->rctx.stable_lo && (e->rctx.stable_lo != lo || e->rctx.stable_hi != hi)) {
        for (uint32_t s = 1; s < e->next_unused; s++) {
            struct conn *c = &e->conns[s];
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
    for (int cls = 0; cls < 3; cls++) {
        uint32_t s = e->lru[cls].head;
        while (s) {
            struct conn *c = C(e, s);
            uint32_t next = c->lnext;
            if (!(c->flags & CF_ENDED)) {
                if (e->qlen >= e->cfg.event_queue)
                    return e->live ? e->live : 1;
                settle_acks(e, c, 0);
                settle_acks(e, c, 1);
                int both_fin = (c->flags & (CF_FIN_CLI | CF_FIN_SVR)) == (CF_FIN_CLI | CF_FIN_SVR);
                end_conn(e, c, both_fin ? MOS_END_FIN : MOS_END_EOF, MOS_SIDE_CLI);
                hash_remove(e, c);
                lru_unlink(e, c);
            }
            s = next;
        }
    }
    stream_files_close(e);
    return 0;
}

uint32_t mos_engine_events(mos_engine_t *e, const struct mos_event **evs)
{
    *evs = e->q;
    return e->qlen;
}

void mos_engine_events_done(mos_engine_t *e)
{
    for (uint32_t i = 0; i < e->nzombies; i++) {
        struct conn *c = C(e, e->zombies[i]);
        if (!(c->flags & CF_ENDED))
            continue;
        c->flags &= (uint8_t)~CF_END_PENDING;
        if (!(c->flags & CF_IN_HASH))
            conn_free(e, c);
    }
    e->nzombies = 0;
    for (uint32_t i = 0; i < e->ntouched; i++) {
        struct conn *c = C(e, e->touched[i]);
        c->pad[0] = 0;
        if (c->rx[0].buf)
            reasm_trim(&e->rctx, &c->rx[0], c->rx[0].next_off);
        if (c->rx[1].buf)
            reasm_trim(&e->rctx, &c->rx[1], c->rx[1].next_off);
    }
    e->ntouched = 0;
    e->qlen = 0;
    arena_reset(e);
}

const uint64_t *mos_engine_counters(const mos_engine_t *e) { return e->counters; }
const uint64_t *mos_engine_reasm_counters(const mos_engine_t *e) { return e->rctx.counters; }
const uint64_t *mos_engine_frag_counters(const mos_engine_t *e) { return defrag_counters(e->defrag); }
uint64_t mos_engine_mem_used(const mos_engine_t *e) { return e->rctx.mem_used + defrag_mem_used(e->defrag); }
uint64_t mos_engine_now(const mos_engine_t *e) { return e->now; }

static struct conn *conn_get(const mos_engine_t *e, uint32_t slot, uint64_t id)
{
    if (slot == 0 || slot >= e->next_unused)
        return NULL;
    struct conn *c = &e->conns[slot];
    return c->id == id && id != 0 ? c : NULL;
}

static void conn_fill_info(const struct conn *c, struct mos_conn_info *out)
{
    memset(out, 0, sizeof(*out));
    out->id = c->id;
    out->ip_version = c->ip_version;
    out->cli_state = c->end[0].state;
    out->svr_state = c->end[1].state;
    out->end_reason = c->end_reason;
    out->nvlan = c->nvlan;
    out->vlan[0] = c->vlan[0];
    out->vlan[1] = c->vlan[1];
    out->picked_up = (c->flags & CF_PICKED_UP) != 0;
    out->monitor_mask = c->monitor;
    out->cli_wscale = (c->flags & CF_WS_OK) ? c->end[0].wscale : 0xff;
    out->svr_wscale = (c->flags & CF_WS_OK) ? c->end[1].wscale : 0xff;
    memcpy(out->cli_addr, c->addr[0], 16);
    memcpy(out->svr_addr, c->addr[1], 16);
    out->cli_port = c->port[0];
    out->svr_port = c->port[1];
    out->cli_isn = c->end[0].isn;
    out->svr_isn = c->end[1].isn;
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

int mos_conn_set_mask(mos_engine_t *e, uint32_t slot, uint64_t id, int hook, int side, uint64_t mask)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || hook < 0 || hook > 1 || side < 0 || side > 1)
        return -1;
    e->ext[slot].mask[hook][side] = mask;
    c->flags |= CF_EXT;
    return 0;
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

int mos_conn_set_policy(mos_engine_t *e, uint32_t slot, uint64_t id, int policy)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c || policy < 0 || policy >= REASM_POLICY_COUNT)
        return -1;
    c->rx[0].policy = c->rx[1].policy = (uint8_t)policy;
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

int mos_conn_user(mos_engine_t *e, uint32_t slot, uint64_t id, uint32_t *get, const uint32_t *set)
{
    struct conn *c = conn_get(e, slot, id);
    if (!c)
        return -1;
    if (get)
        *get = c->user;
    if (set)
        c->user = *set;
    return 0;
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
    if (decode_packet(p->data, p->caplen, e->linktype, &pi) != 0)
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
