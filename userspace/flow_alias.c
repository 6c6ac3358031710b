#include "flow_alias.h"

#include <stdlib.h>
#include <string.h>

static uint32_t key_bucket(const struct flow_table *ft, const struct flow_key *k)
{
    return ft_key_hash(ft, k->addr[0], k->addr[1], k->port[0], k->port[1], k->ip_version, k->proto, k->vlan,
                       k->nvlan);
}

static uint32_t slot_bucket(const struct flow_table *ft, uint32_t slot)
{
    return (slot * 2654435761u) & (ft->nbuckets - 1);
}

static int same_key(const struct flow_key *a, const struct flow_key *b)
{
    return a->ip_version == b->ip_version && a->proto == b->proto && a->nvlan == b->nvlan &&
           !memcmp(a->vlan, b->vlan, sizeof(a->vlan)) && !memcmp(a->addr, b->addr, sizeof(a->addr)) &&
           a->port[0] == b->port[0] && a->port[1] == b->port[1];
}

/* Out of both chains, freed. */
static void unlink_free(struct flow_table *ft, struct ft_alias *a)
{
    struct ft_alias **pp = &ft->alias_buckets[key_bucket(ft, &a->key)];
    while (*pp && *pp != a)
        pp = &(*pp)->next;
    if (*pp)
        *pp = a->next;
    pp = &ft->alias_by_slot[slot_bucket(ft, a->slot)];
    while (*pp && *pp != a)
        pp = &(*pp)->next_slot;
    if (*pp)
        *pp = a->next_slot;
    ft_conn(ft, a->slot)->flags &= (uint8_t)~CF_ALIASED;
    free(a);
    ft->naliases--;
}

const struct ft_alias *fa_get(const struct flow_table *ft, const struct conn *c)
{
    if (!(c->flags & CF_ALIASED))
        return NULL;
    uint32_t s = ft_slot(ft, c);
    for (struct ft_alias *a = ft->alias_by_slot[slot_bucket(ft, s)]; a; a = a->next_slot)
        if (a->slot == s)
            return a;
    return NULL;
}

void fa_remove(struct flow_table *ft, struct conn *c)
{
    struct ft_alias *a = (struct ft_alias *)fa_get(ft, c);
    if (a)
        unlink_free(ft, a);
}

int fa_set(struct flow_table *ft, struct conn *c, int side, const uint8_t *addr, uint16_t port)
{
    struct flow_key k = c->key;
    memcpy(k.addr[side], addr, 16);
    k.port[side] = port;
    if (same_key(&k, &c->key))
        return -2;
    if (!ft->alias_buckets) {
        ft->alias_buckets = calloc(ft->nbuckets, sizeof(*ft->alias_buckets));
        ft->alias_by_slot = calloc(ft->nbuckets, sizeof(*ft->alias_by_slot));
        if (!ft->alias_buckets || !ft->alias_by_slot) {
            free(ft->alias_buckets);
            free(ft->alias_by_slot);
            ft->alias_buckets = ft->alias_by_slot = NULL;
            return -1;
        }
    }
    fa_remove(ft, c);
    uint32_t b = key_bucket(ft, &k);
    for (struct ft_alias *a = ft->alias_buckets[b]; a; a = a->next)
        if (same_key(&a->key, &k)) { /* the newer claim wins */
            unlink_free(ft, a);
            break;
        }
    struct ft_alias *a = malloc(sizeof(*a));
    if (!a)
        return -1;
    memset(a, 0, sizeof(*a));
    a->slot = ft_slot(ft, c);
    a->side = (uint8_t)side;
    a->key = k;
    a->next = ft->alias_buckets[b];
    ft->alias_buckets[b] = a;
    uint32_t sb = slot_bucket(ft, a->slot);
    a->next_slot = ft->alias_by_slot[sb];
    ft->alias_by_slot[sb] = a;
    c->flags |= CF_ALIASED;
    ft->naliases++;
    return 0;
}

int fa_resolve_slow(const struct flow_table *ft, struct pkt_info *pi)
{
    if (pi->is_fragment || (pi->proto != MOS_IPPROTO_TCP && pi->proto != MOS_IPPROTO_UDP))
        return 0;
    for (struct ft_alias *a = ft->alias_buckets[ft_bucket(ft, pi)]; a; a = a->next) {
        int sd = ft_key_match(ft, &a->key, pi);
        if (sd < 0)
            continue;
        const struct flow_key *own = &ft_conn(ft, a->slot)->key;
        memcpy(pi->wire.src, pi->src, 16);
        memcpy(pi->wire.dst, pi->dst, 16);
        pi->wire.sport = pi->sport;
        pi->wire.dport = pi->dport;
        memcpy(pi->src, own->addr[sd], 16);
        memcpy(pi->dst, own->addr[1 - sd], 16);
        pi->sport = own->port[sd];
        pi->dport = own->port[1 - sd];
        pi->aliased = 1;
        return 1;
    }
    return 0;
}

void fa_free(struct flow_table *ft)
{
    for (uint32_t b = 0; ft->alias_buckets && b < ft->nbuckets; b++) {
        struct ft_alias *a = ft->alias_buckets[b];
        while (a) {
            struct ft_alias *n = a->next;
            free(a);
            a = n;
        }
    }
    free(ft->alias_buckets);
    free(ft->alias_by_slot);
    ft->alias_buckets = ft->alias_by_slot = NULL;
    ft->naliases = 0;
}
