#include "flow_table.h"

#include "flow_alias.h"

#include <stdlib.h>
#include <string.h>


int ft_init(struct flow_table *ft, uint32_t max_conns, int vlan_in_key)
{
    memset(ft, 0, sizeof(*ft));
    uint32_t nb = 1;
    while (nb < max_conns)
        nb <<= 1;
    ft->nbuckets = nb;
    ft->vlan_in_key = (uint8_t)(vlan_in_key != 0);
    /* Room past max_conns for connections that ended in a batch and are freed after its events; calloc'd
     * memory is only committed when touched, so a big table costs what it holds. */
    ft->pool = max_conns + (max_conns / 8 > 4096 ? 4096 : max_conns / 8) + 64;
    ft->conns = calloc((size_t)ft->pool + 1, sizeof(struct conn));
    ft->buckets = calloc(nb, sizeof(uint32_t));
    ft->next_unused = 1;
    ft->seed = mos_random_seed(ft);
    return ft->conns && ft->buckets ? 0 : -1;
}

void ft_release_streams(struct flow_table *ft, struct reasm_ctx *rctx)
{
    for (uint32_t s = 1; ft->conns && s < ft->next_unused; s++) {
        reasm_release(rctx, &ft->conns[s].rx[0]);
        reasm_release(rctx, &ft->conns[s].rx[1]);
    }
    for (uint32_t b = 0; b < ft->nstash_buckets; b++) {
        struct ft_stash *x = ft->stash[b];
        while (x) {
            struct ft_stash *nx = x->next;
            rctx->mem_used -= sizeof(*x) + x->len;
            free(x);
            x = nx;
        }
        ft->stash[b] = NULL;
    }
    ft->nstash = 0;
}

/* ---- the stash: rare (SYN data, bytes after a RST), so a plain chained hash, grown when chains get long */

static uint32_t stash_bucket(uint32_t slot, uint32_t nb) { return (slot * 2654435761u) & (nb - 1); }

static void stash_grow(struct flow_table *ft)
{
    uint32_t nb = ft->nstash_buckets ? ft->nstash_buckets * 2 : 64;
    struct ft_stash **t = calloc(nb, sizeof(*t));
    if (!t)
        return; /* chains get longer, nothing breaks */
    for (uint32_t b = 0; b < ft->nstash_buckets; b++) {
        struct ft_stash *x = ft->stash[b];
        while (x) {
            struct ft_stash *nx = x->next;
            uint32_t h = stash_bucket(x->slot, nb);
            x->next = t[h];
            t[h] = x;
            x = nx;
        }
    }
    free(ft->stash);
    ft->stash = t;
    ft->nstash_buckets = nb;
}

int ft_stash_put(struct flow_table *ft, struct reasm_ctx *rctx, uint32_t slot, const uint8_t *p, uint32_t len)
{
    if (ft->nstash >= 2 * ft->nstash_buckets)
        stash_grow(ft);
    if (!ft->nstash_buckets)
        return -1;
    struct ft_stash *x = malloc(sizeof(*x) + len);
    if (!x)
        return -1;
    x->slot = slot;
    x->len = len;
    memcpy(x->data, p, len);
    uint32_t h = stash_bucket(slot, ft->nstash_buckets);
    x->next = ft->stash[h];
    ft->stash[h] = x;
    ft->nstash++;
    rctx->mem_used += sizeof(*x) + len;
    return 0;
}

int ft_stash_append(struct flow_table *ft, struct reasm_ctx *rctx, uint32_t slot, const uint8_t *p, uint32_t len)
{
    if (!ft->nstash_buckets)
        return ft_stash_put(ft, rctx, slot, p, len);
    struct ft_stash **pp = &ft->stash[stash_bucket(slot, ft->nstash_buckets)];
    while (*pp && (*pp)->slot != slot)
        pp = &(*pp)->next;
    if (!*pp)
        return ft_stash_put(ft, rctx, slot, p, len);
    struct ft_stash *x = *pp;
    if (len > UINT32_MAX - x->len)
        return -1;
    struct ft_stash *nx = realloc(x, sizeof(*x) + x->len + len);
    if (!nx)
        return -1;
    memcpy(nx->data + nx->len, p, len);
    nx->len += len;
    *pp = nx;
    rctx->mem_used += len;
    return 0;
}

struct ft_stash *ft_stash_get(const struct flow_table *ft, uint32_t slot)
{
    if (!ft->nstash_buckets)
        return NULL;
    for (struct ft_stash *x = ft->stash[stash_bucket(slot, ft->nstash_buckets)]; x; x = x->next)
        if (x->slot == slot)
            return x;
    return NULL;
}

void ft_stash_drop(struct flow_table *ft, struct reasm_ctx *rctx, uint32_t slot)
{
    if (!ft->nstash_buckets)
        return;
    struct ft_stash **pp = &ft->stash[stash_bucket(slot, ft->nstash_buckets)];
    for (; *pp; pp = &(*pp)->next) {
        struct ft_stash *x = *pp;
        if (x->slot != slot)
            continue;
        *pp = x->next;
        rctx->mem_used -= sizeof(*x) + x->len;
        free(x);
        ft->nstash--;
        return;
    }
}

void ft_free(struct flow_table *ft)
{
    free(ft->conns);
    free(ft->buckets);
    free(ft->zombies);
    free(ft->touched);
    free(ft->stash); /* its entries went with ft_release_streams */
    fa_free(ft);
    memset(ft, 0, sizeof(*ft));
}

static uint32_t bucket_of(const struct flow_table *ft, const struct conn *c)
{
    const struct flow_key *k = &c->key;
    return ft_key_hash(ft, k->addr[0], k->addr[1], k->port[0], k->port[1], k->ip_version, k->proto, k->vlan,
                    k->nvlan);
}

void ft_lru_push(struct flow_table *ft, struct conn *c, int cls)
{
    ft_lru_unlink(ft, c);
    struct lru_list *l = &ft->lru[cls];
    uint32_t s = ft_slot(ft, c);
    c->lru = (uint8_t)cls;
    c->lprev = l->tail;
    c->lnext = NIL;
    if (l->tail)
        ft_conn(ft, l->tail)->lnext = s;
    else
        l->head = s;
    l->tail = s;
}

void ft_hash_remove(struct flow_table *ft, struct conn *c)
{
    if (c->flags & CF_ALIASED)
        fa_remove(ft, c); /* out of every lookup */
    if (!(c->flags & CF_IN_HASH))
        return;
    uint32_t s = ft_slot(ft, c);
    uint32_t *pp = &ft->buckets[bucket_of(ft, c)];
    while (*pp && *pp != s)
        pp = &ft_conn(ft, *pp)->hnext;
    if (*pp == s)
        *pp = c->hnext;
    c->hnext = NIL;
    c->flags &= (uint8_t)~CF_IN_HASH;
}

void ft_release(struct flow_table *ft, struct reasm_ctx *rctx, struct conn *c)
{
    ft_detach(ft, c);
    reasm_release(rctx, &c->rx[0]);
    reasm_release(rctx, &c->rx[1]);
    uint32_t s = ft_slot(ft, c);
    if (ft->nstash) {
        ft_stash_drop(ft, rctx, s);
        for (int k = 0; k < FT_STASH_KEYS; k++)
            ft_stash_drop(ft, rctx, ft_stash_key(s, k));
    }
    memset(c, 0, sizeof(*c));
    c->lru = LRU_NONE;
    c->hnext = ft->free_head;
    ft->free_head = s;
}

void ft_zombie_add(struct flow_table *ft, struct conn *c)
{
    if (ft->nzombies == ft->zcap) {
        uint32_t ncap = ft->zcap ? ft->zcap * 2 : 256;
        uint32_t *nz = realloc(ft->zombies, ncap * sizeof(*nz));
        if (!nz)
            return; /* the slot is then reclaimed by linger expiry instead */
        ft->zombies = nz;
        ft->zcap = ncap;
    }
    ft->zombies[ft->nzombies++] = ft_slot(ft, c);
}

int ft_touched_grow(struct flow_table *ft)
{
    uint32_t ncap = ft->tcap ? ft->tcap * 2 : 1024;
    uint32_t *nt = realloc(ft->touched, ncap * sizeof(*nt));
    if (!nt)
        return -1;
    ft->touched = nt;
    ft->tcap = ncap;
    return 0;
}

struct conn *ft_alloc(struct flow_table *ft, const struct pkt_info *pi, int sender_is_client, uint32_t bucket)
{
    uint32_t s = ft->free_head;
    if (s)
        ft->free_head = ft_conn(ft, s)->hnext;
    else if (ft->next_unused <= ft->pool)
        s = ft->next_unused++;
    else
        return NULL;
    struct conn *c = ft_conn(ft, s);
    memset(c, 0, sizeof(*c));
    flow_key_of(&c->key, pi, sender_is_client ? 0 : 1);
    c->id = ++ft->next_id;
    c->monitor = 3;
    c->lru = LRU_NONE;
    c->hnext = ft->buckets[bucket];
    ft->buckets[bucket] = s;
    c->flags |= CF_IN_HASH;
    ft->live++;
    return c;
}

int ft_free_lingering(struct flow_table *ft, struct reasm_ctx *rctx)
{
    for (uint32_t s = ft->lru[LRU_CLOSED].head; s; s = ft_conn(ft, s)->lnext) {
        struct conn *c = ft_conn(ft, s);
        if ((c->flags & CF_ENDED) && !(c->flags & CF_END_PENDING)) {
            ft_release(ft, rctx, c);
            return 1;
        }
    }
    return 0;
}
