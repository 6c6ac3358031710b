/* The flow table: connection records in one pool, a hash on the symmetric flow key, LRU lists by
 * class (the expiry order and the eviction order), and the slots whose end is not yet handled.
 *
 * A record is protocol-neutral but for its transport part: the key has the IP protocol, and TCP's
 * endpoint state is one member. A UDP flow needs no state of its own beyond the record's counters and
 * times: its tcp and rx members stay zero (never initialized), so the record does not grow for it. */
#ifndef MOS_FLOW_TABLE_H
#define MOS_FLOW_TABLE_H

#include <stdint.h>
#include <string.h>

#include "decode.h"
#include "mix.h"
#include "reasm.h"
#include "tcp_tracker.h"

#define NIL 0u /* slot 0 is never used: it means none */

struct flow_key {
    uint8_t addr[2][16];      /* [MOS_SIDE_CLI], [MOS_SIDE_SVR]; IPv4 in the first 4 bytes */
    uint16_t port[2];
    uint16_t vlan[MOS_MAX_VLAN];
    uint8_t nvlan, ip_version;
    uint8_t proto;            /* IPPROTO_* */
    uint8_t aux;              /* not part of the key (what would be padding): its owner's (monitor_filter.c) */
};

enum conn_flags {
    CF_PICKED_UP = 1,         /* created mid-stream */
    CF_ENDED = 2,             /* CONN_END raised */
    CF_END_PENDING = 4,       /* ... and not yet handled (mos_engine_events_done) */
    CF_QUEUED = 8,            /* queued an event that is not handled yet (order CONNECTION: its packets wait) */
    CF_IN_HASH = 16,          /* reachable by lookup */
    CF_TOUCHED = 32,          /* in the table's touched list this batch */
    CF_RESET_PENDING = 64,    /* the app reset it (mos_conn_reset): ends with reason RST once its events are handled */
    CF_ALIASED = 128,         /* has an alias (flow_alias.h) */
};

/* LRU_UDP: UDP flows, idle after timeout_udp. LRU_COUNT lists are kept; LRU_NONE is in none. */
enum lru_class { LRU_HANDSHAKE = 0, LRU_EST = 1, LRU_CLOSED = 2, LRU_UDP = 3, LRU_COUNT = 4, LRU_NONE = 4 };

/* A connection (TCP, or a UDP flow): its key, both endpoints' state, both receive streams. Kept small
 * with nothing held (mos_conn_size() says how small), so that a table of a million costs what it holds. */
struct conn {
    struct flow_key key;
    uint8_t end_reason;       /* enum mos_end_reason */
    uint8_t lru;              /* enum lru_class */
    uint8_t flags;            /* enum conn_flags */
    uint8_t monitor;          /* bit s: side s monitored */
    uint32_t hnext;           /* hash chain / free list */
    uint32_t lprev, lnext;    /* LRU list of its class */
    uint32_t sub;             /* subscription set (mos_conn_set_sub), 0: none of its own */
    uint32_t held_q;          /* 1 + its queue of packets held back for its handlers (engine.c), 0: none */
    uint32_t pkts[2];         /* sent by each side */
    uint64_t id;
    uint64_t first_ts, last_ts;
    uint64_t bytes[2];        /* payload sent by each side */
    uint64_t gap_bytes[2];    /* lost in the stream received by each side */
    struct tcp_flow tcp;
    struct reasm_dir rx[2];   /* rx[s]: the stream side s receives */
    uint32_t rexmit[2];       /* retransmitted segments sent by each side */
    uint32_t inconsistent[2]; /* retransmissions with differing bytes, in the stream each side receives */
};

/* Bytes a connection holds apart, by slot, until a later packet tells whether an endpoint took them:
 * a pending SYN's data (tcp_tracker.h, enum tcp_syn_data), or what the receiver of a RST sent after it
 * (tcp_after_rst). Rare, so a chained hash that grows, off the record; one entry per connection. */
struct ft_stash {
    struct ft_stash *next;
    uint32_t slot;
    uint32_t len;
    uint8_t data[];
};

struct lru_list {
    uint32_t head, tail;
};

struct flow_table {
    struct conn *conns;       /* [0] unused */
    uint32_t *buckets;
    uint32_t nbuckets;        /* a power of two */
    uint32_t free_head;
    uint32_t next_unused;     /* slots never used yet start here (lazy pool) */
    uint32_t live;            /* not ended */
    uint32_t pool;            /* slots: max_conns plus room for connections ended in a batch */
    uint64_t next_id;
    uint64_t seed;
    uint8_t vlan_in_key;
    struct lru_list lru[LRU_COUNT];
    uint32_t *zombies;        /* ended connections to free after the events are handled */
    uint32_t nzombies, zcap;
    uint32_t *touched;        /* connections whose buffers to trim after the events */
    uint32_t ntouched, tcap;
    struct ft_stash **stash;  /* held bytes, by slot (NULL until the first) */
    uint32_t nstash_buckets, nstash;
    struct ft_alias **alias_buckets, **alias_by_slot; /* flow_alias.h: nbuckets each, NULL until the first */
    uint32_t naliases;
};

/* Bytes of a slot's connection held apart (at most one entry per connection); they are accounted in
 * rctx. put, append (to the entry, made if none): 0, or -1 when memory is short. */
/* The stash key of a slot's entry: the slot itself (SYN data), or k = the side that sent them (bytes after
 * a RST), 2 + that side (segments just past the window). Slots stay below 2^29 (ft_init's pool). */
enum { FT_STASH_KEYS = 4 };
static inline uint32_t ft_stash_key(uint32_t slot, int k) { return slot | (uint32_t)(k + 1) << 29; }
int ft_stash_put(struct flow_table *ft, struct reasm_ctx *rctx, uint32_t slot, const uint8_t *p, uint32_t len);
int ft_stash_append(struct flow_table *ft, struct reasm_ctx *rctx, uint32_t slot, const uint8_t *p, uint32_t len);
struct ft_stash *ft_stash_get(const struct flow_table *ft, uint32_t slot);
void ft_stash_drop(struct flow_table *ft, struct reasm_ctx *rctx, uint32_t slot);

static inline struct conn *ft_conn(const struct flow_table *ft, uint32_t slot) { return &ft->conns[slot]; }
static inline uint32_t ft_slot(const struct flow_table *ft, const struct conn *c)
{
    return (uint32_t)(c - ft->conns);
}

/* Returns 0, or -1 when memory is short (ft_free then frees what was taken). */
int ft_init(struct flow_table *ft, uint32_t max_conns, int vlan_in_key);
/* Frees the table; the streams of the records are the caller's (ft_release_streams first). */
void ft_free(struct flow_table *ft);
/* Every record's held bytes go back to rctx. */
void ft_release_streams(struct flow_table *ft, struct reasm_ctx *rctx);

/* One address, seeded: the half of the key hash either endpoint contributes. */
static inline uint64_t ft_addr_hash(const uint8_t *a, uint64_t seed)
{
    uint64_t w0, w1;
    memcpy(&w0, a, 8);
    memcpy(&w1, a + 8, 8);
    return mos_mix64(w0 ^ seed) ^ mos_mix64(w1 + seed * 3);
}

/* Inline, as the lookup is: the hash runs for every packet.
 * Symmetric: both directions of a connection hash alike. The seed is random so that a sender cannot
 * aim packets at one bucket. The flow table and the monitor filter's table of flows left out both key
 * flows so (each with its own seed). */
static inline uint64_t flow_hash_seeded(uint64_t seed, int vlan_in_key, const uint8_t *src, const uint8_t *dst,
                                        uint16_t sport, uint16_t dport, uint8_t ip_version, uint8_t proto,
                                        const uint16_t *vlan, uint8_t nvlan)
{
    uint64_t ha = ft_addr_hash(src, seed) + sport;
    uint64_t hb = ft_addr_hash(dst, seed) + dport;
    uint64_t h = mos_mix64((ha ^ hb) + (ha + hb) * 0x9e3779b97f4a7c15ull + ((uint64_t)proto << 8 | ip_version));
    if (vlan_in_key)
        h = mos_mix64(h ^ ((uint64_t)vlan[0] << 16 | vlan[1]) ^ ((uint64_t)nvlan << 40));
    return h;
}

static inline uint32_t ft_key_hash(const struct flow_table *ft, const uint8_t *src, const uint8_t *dst,
                                   uint16_t sport, uint16_t dport, uint8_t ip_version, uint8_t proto,
                                   const uint16_t *vlan, uint8_t nvlan)
{
    return (uint32_t)flow_hash_seeded(ft->seed, ft->vlan_in_key, src, dst, sport, dport, ip_version, proto, vlan,
                                      nvlan) & (ft->nbuckets - 1);
}

/* The key of a decoded packet's flow; cs: 0 when its sender is the client, 1 when the server. */
static inline void flow_key_of(struct flow_key *k, const struct pkt_info *pi, int cs)
{
    memcpy(k->addr[cs], pi->src, 16);
    memcpy(k->addr[1 - cs], pi->dst, 16);
    k->port[cs] = pi->sport;
    k->port[1 - cs] = pi->dport;
    memcpy(k->vlan, pi->vlan, sizeof(k->vlan));
    k->nvlan = pi->nvlan;
    k->ip_version = pi->ip_version;
    k->proto = pi->proto;
}

/* The bucket of a decoded packet's flow (both directions alike). */
static inline uint32_t ft_bucket(const struct flow_table *ft, const struct pkt_info *pi)
{
    return ft_key_hash(ft, pi->src, pi->dst, pi->sport, pi->dport, pi->ip_version, pi->proto, pi->vlan,
                       pi->nvlan);
}

/* The side of the packet's sender (0: addr[0]'s endpoint, 1: addr[1]'s) under key k, or -1 if the packet
 * is not k's. Inline: it runs for every packet and every record of its bucket. */
static inline int flow_key_match(const struct flow_key *k, const struct pkt_info *pi, int vlan_in_key)
{
    if (k->ip_version != pi->ip_version || k->proto != pi->proto)
        return -1;
    if (vlan_in_key && (k->nvlan != pi->nvlan || memcmp(k->vlan, pi->vlan, sizeof(k->vlan))))
        return -1;
    size_t alen = pi->ip_version == 4 ? 4 : 16;
    if (k->port[0] == pi->sport && k->port[1] == pi->dport && !memcmp(k->addr[0], pi->src, alen) &&
        !memcmp(k->addr[1], pi->dst, alen))
        return 0;
    if (k->port[1] == pi->sport && k->port[0] == pi->dport && !memcmp(k->addr[1], pi->src, alen) &&
        !memcmp(k->addr[0], pi->dst, alen))
        return 1;
    return -1;
}

static inline int ft_key_match(const struct flow_table *ft, const struct flow_key *k, const struct pkt_info *pi)
{
    return flow_key_match(k, pi, ft->vlan_in_key);
}

/* The side of the packet's sender in connection c, or -1 if not c's packet. */
static inline int ft_match(const struct flow_table *ft, const struct conn *c, const struct pkt_info *pi)
{
    return ft_key_match(ft, &c->key, pi);
}

/* A new record for the packet's flow in `bucket`, live and in the hash; NULL when every slot is
 * taken. */
struct conn *ft_alloc(struct flow_table *ft, const struct pkt_info *pi, int sender_is_client, uint32_t bucket);
/* Back to the free list, its held bytes to rctx. */
void ft_release(struct flow_table *ft, struct reasm_ctx *rctx, struct conn *c);
/* Every slot is taken: free the oldest lingering connection whose end was handled. 1 if one was. */
int ft_free_lingering(struct flow_table *ft, struct reasm_ctx *rctx);

static inline void ft_lru_unlink(struct flow_table *ft, struct conn *c)
{
    if (c->lru == LRU_NONE)
        return;
    struct lru_list *l = &ft->lru[c->lru];
    if (c->lprev)
        ft_conn(ft, c->lprev)->lnext = c->lnext;
    else
        l->head = c->lnext;
    if (c->lnext)
        ft_conn(ft, c->lnext)->lprev = c->lprev;
    else
        l->tail = c->lprev;
    c->lprev = c->lnext = NIL;
    c->lru = LRU_NONE;
}

void ft_lru_push(struct flow_table *ft, struct conn *c, int cls);
void ft_hash_remove(struct flow_table *ft, struct conn *c);
/* Out of the table's lookups and lists (it stays allocated until freed). */
static inline void ft_detach(struct flow_table *ft, struct conn *c)
{
    ft_hash_remove(ft, c);
    ft_lru_unlink(ft, c);
}
/* c ended: its slot is freed once the batch's events are handled. */
void ft_zombie_add(struct flow_table *ft, struct conn *c);
int ft_touched_grow(struct flow_table *ft);
/* c got packets this batch: its delivered bytes are trimmed once the events are handled. Inline: it is
 * on every packet's path. */
static inline void ft_touch(struct flow_table *ft, struct conn *c)
{
    if (c->flags & CF_TOUCHED)
        return;
    if (ft->ntouched == ft->tcap && ft_touched_grow(ft))
        return; /* no memory: its buffers are trimmed the next time it is listed */
    c->flags |= CF_TOUCHED;
    ft->touched[ft->ntouched++] = ft_slot(ft, c);
}

#endif
