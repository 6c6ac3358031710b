/* Monitor filters (monitor_filter.h): libpcap compiles the expression, bpf_filter runs it, and a table of
 * flows left out keeps their later packets from being judged again. */
#define _GNU_SOURCE
#include "monitor_filter.h"

#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_state.h"
#include "mix.h"

#define SNAPLEN 262144 /* libpcap's own maximum: the filter never sees a packet cut by it */

struct mos_bpf {
    struct bpf_program prog;
};

/* libpcap numbers link types by DLT_*; the engine's RAW_101 is the file format's LINKTYPE_RAW. */
static int pcap_dlt(int linktype)
{
    return linktype == MOS_DLT_RAW_101 ? DLT_RAW : linktype;
}

static int compile(const char *expr, int linktype, struct bpf_program *prog, char *err, size_t errlen)
{
    pcap_t *pd = pcap_open_dead(pcap_dlt(linktype), SNAPLEN);
    if (!pd) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int r = pcap_compile(pd, prog, expr, 1, PCAP_NETMASK_UNKNOWN);
    if (r != 0)
        snprintf(err, errlen, "%s", pcap_geterr(pd));
    pcap_close(pd);
    return r ? -1 : 0;
}

mos_bpf_t *mos_bpf_compile(const char *expr, int linktype, char *err, size_t errlen)
{
    mos_bpf_t *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (compile(expr, linktype, &f->prog, err, errlen) != 0) {
        free(f);
        return NULL;
    }
    return f;
}

int mos_bpf_match(const mos_bpf_t *f, const uint8_t *data, uint32_t caplen, uint32_t wirelen)
{
    return bpf_filter(f->prog.bf_insns, data, wirelen, caplen) != 0;
}

void mos_bpf_free(mos_bpf_t *f)
{
    if (!f)
        return;
    pcap_freecode(&f->prog);
    free(f);
}

/* ---- the engine's filter ------------------------------------------------------------------------ */

/* A flow left out: its key, both ways, and when it was last seen. 64 bytes (a connection takes 264
 * before it holds any byte). */
struct mf_entry {
    struct flow_key key;  /* [0]: the sender of its first packet; key.aux: packets seen from both ends (the
                           * idle timeout of an established connection) */
    uint32_t hnext;       /* hash chain / free list (0: none; slot 0 is never used) */
    uint32_t lprev, lnext;/* least recently seen first */
    uint64_t last_ts;
};

struct monitor_filter {
    char *expr;
    int linktype;
    int broken;               /* recompiling for the feed's link type failed: every packet goes through */
    struct bpf_program link;  /* for frames of `linktype` */
    struct bpf_program raw;   /* for datagrams reassembled from fragments (raw IP) ... */
    int raw_ok;               /* ... unless the expression needs the link layer: then the last fragment's frame */
    struct mf_entry *ents;    /* [0] unused */
    uint32_t nalloc, cap, next_unused, free_head, count;
    uint32_t *buckets;
    uint32_t nbuckets;        /* a power of two, 0 before the first entry */
    uint32_t lru_head, lru_tail;
    uint64_t seed;
};

static void release_progs(struct monitor_filter *f)
{
    pcap_freecode(&f->link);
    if (f->raw_ok)
        pcap_freecode(&f->raw);
    f->raw_ok = 0;
}

static void forget_flows(struct monitor_filter *f)
{
    free(f->ents);
    free(f->buckets);
    f->ents = NULL;
    f->buckets = NULL;
    f->nalloc = f->next_unused = f->free_head = f->count = f->nbuckets = 0;
    f->lru_head = f->lru_tail = 0;
}

void monitor_filter_free(mos_engine_t *e)
{
    struct monitor_filter *f = e->filter;
    if (!f)
        return;
    release_progs(f);
    forget_flows(f);
    free(f->expr);
    free(f);
    e->filter = NULL;
}

/* Both programs for `linktype`; f is left as it was on failure. */
static int compile_for(struct monitor_filter *f, const char *expr, int linktype, char *err, size_t errlen)
{
    struct bpf_program link, raw;
    if (compile(expr, linktype, &link, err, errlen) != 0)
        return -1;
    char ignored[PCAP_ERRBUF_SIZE];
    int raw_ok = compile(expr, DLT_RAW, &raw, ignored, sizeof(ignored)) == 0;
    if (f->link.bf_insns)
        release_progs(f);
    f->link = link;
    f->raw = raw;
    f->raw_ok = raw_ok;
    f->linktype = linktype;
    f->broken = 0;
    return 0;
}

int mos_engine_set_filter(mos_engine_t *e, const char *expr, int linktype, char *err, size_t errlen)
{
    if (!expr || !*expr) {
        monitor_filter_free(e);
        return 0;
    }
    struct monitor_filter *f = e->filter;
    int fresh = !f;
    if (fresh && !(f = calloc(1, sizeof(*f)))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char *copy = strdup(expr);
    if (!copy || compile_for(f, expr, linktype, err, errlen) != 0) {
        if (!copy)
            snprintf(err, errlen, "out of memory");
        free(copy);
        if (fresh)
            free(f);
        return -1;
    }
    free(f->expr);
    f->expr = copy;
    forget_flows(f);
    f->cap = e->cfg.max_conns;
    f->seed = mos_random_seed(f);
    e->filter = f;
    return 0;
}

uint64_t mos_engine_filtered_flows(const mos_engine_t *e)
{
    return e->filter ? e->filter->count : 0;
}

uint64_t mos_engine_filter_mem(const mos_engine_t *e)
{
    const struct monitor_filter *f = e->filter;
    if (!f)
        return 0;
    return (uint64_t)f->nalloc * sizeof(struct mf_entry) + (uint64_t)f->nbuckets * sizeof(uint32_t) +
           ((uint64_t)f->link.bf_len + (f->raw_ok ? f->raw.bf_len : 0)) * sizeof(struct bpf_insn);
}

size_t mos_filter_entry_size(void)
{
    return sizeof(struct mf_entry);
}

/* Symmetric, as the flow table's (flow_hash_seeded): both directions of a flow hash alike. */
static uint32_t mf_hash(const struct monitor_filter *f, const struct flow_key *k, int vlan_in_key)
{
    return (uint32_t)flow_hash_seeded(f->seed, vlan_in_key, k->addr[0], k->addr[1], k->port[0], k->port[1],
                                      k->ip_version, k->proto, k->vlan, k->nvlan) & (f->nbuckets - 1);
}

static uint32_t mf_packet_hash(const struct monitor_filter *f, const struct pkt_info *pi, int vlan_in_key)
{
    return (uint32_t)flow_hash_seeded(f->seed, vlan_in_key, pi->src, pi->dst, pi->sport, pi->dport, pi->ip_version,
                                      pi->proto, pi->vlan, pi->nvlan) & (f->nbuckets - 1);
}

static void lru_unlink(struct monitor_filter *f, uint32_t s)
{
    struct mf_entry *m = &f->ents[s];
    if (m->lprev)
        f->ents[m->lprev].lnext = m->lnext;
    else
        f->lru_head = m->lnext;
    if (m->lnext)
        f->ents[m->lnext].lprev = m->lprev;
    else
        f->lru_tail = m->lprev;
    m->lprev = m->lnext = 0;
}

static void lru_append(struct monitor_filter *f, uint32_t s)
{
    struct mf_entry *m = &f->ents[s];
    m->lprev = f->lru_tail;
    m->lnext = 0;
    if (f->lru_tail)
        f->ents[f->lru_tail].lnext = s;
    else
        f->lru_head = s;
    f->lru_tail = s;
}

static uint32_t *chain_of(struct monitor_filter *f, uint32_t s, int vlan_in_key)
{
    return &f->buckets[mf_hash(f, &f->ents[s].key, vlan_in_key)];
}

static void mf_remove(struct monitor_filter *f, uint32_t s, int vlan_in_key)
{
    for (uint32_t *pp = chain_of(f, s, vlan_in_key); *pp; pp = &f->ents[*pp].hnext) {
        if (*pp == s) {
            *pp = f->ents[s].hnext;
            break;
        }
    }
    lru_unlink(f, s);
    f->ents[s].hnext = f->free_head;
    f->free_head = s;
    f->count--;
}

static uint64_t mf_timeout(const struct mf_entry *m, const struct mos_config *cfg)
{
    return m->key.aux ? cfg->timeout_est_ns : cfg->timeout_syn_ns;
}

/* A slot for a new entry: a free one, a new one (the table grows by doubling up to max_conns), or the
 * least recently seen. 0 when memory is short. */
static uint32_t mf_slot(struct monitor_filter *f, int vlan_in_key)
{
    if (f->free_head) {
        uint32_t s = f->free_head;
        f->free_head = f->ents[s].hnext;
        return s;
    }
    if (f->next_unused == 0)
        f->next_unused = 1;
    if (f->next_unused >= f->nalloc && f->nalloc <= f->cap) {
        uint32_t n = f->nalloc ? f->nalloc * 2 : 256;
        if (n > f->cap + 1)
            n = f->cap + 1;
        struct mf_entry *ne = n > f->nalloc ? realloc(f->ents, (size_t)n * sizeof(*ne)) : NULL;
        if (ne) {
            f->ents = ne;
            f->nalloc = n;
        }
    }
    if (f->next_unused < f->nalloc)
        return f->next_unused++;
    if (!f->lru_head)
        return 0;
    uint32_t s = f->lru_head;
    mf_remove(f, s, vlan_in_key);
    f->free_head = f->ents[s].hnext;
    return s;
}

/* One bucket per entry at most: rehash when the table outgrows its buckets. */
static int mf_rehash(struct monitor_filter *f, int vlan_in_key)
{
    uint32_t n = f->nbuckets ? f->nbuckets * 2 : 256;
    uint32_t *nb = calloc(n, sizeof(*nb));
    if (!nb)
        return -1;
    free(f->buckets);
    f->buckets = nb;
    f->nbuckets = n;
    for (uint32_t s = f->lru_head; s; s = f->ents[s].lnext) {
        uint32_t *b = chain_of(f, s, vlan_in_key);
        f->ents[s].hnext = *b;
        *b = s;
    }
    return 0;
}

static void mf_insert(struct monitor_filter *f, const struct pkt_info *pi, uint64_t now, int vlan_in_key)
{
    if ((f->count + 1 > f->nbuckets) && mf_rehash(f, vlan_in_key) != 0 && !f->nbuckets)
        return; /* no memory: not remembered, its next packet is judged again */
    uint32_t s = mf_slot(f, vlan_in_key);
    if (!s)
        return;
    struct mf_entry *m = &f->ents[s];
    memset(m, 0, sizeof(*m));
    flow_key_of(&m->key, pi, 0);
    m->last_ts = now;
    uint32_t *b = &f->buckets[mf_packet_hash(f, pi, vlan_in_key)];
    m->hnext = *b;
    *b = s;
    lru_append(f, s);
    f->count++;
}

static int judge(struct monitor_filter *f, const struct mos_pkt *p, const struct pkt_info *pi)
{
    const uint8_t *l3 = pi->l3;
    int datagram = l3 && (l3 < p->data || l3 >= p->data + p->caplen);
    if (datagram && f->raw_ok)
        return bpf_filter(f->raw.bf_insns, l3, pi->l3_len, pi->l3_len) != 0;
    return bpf_filter(f->link.bf_insns, p->data, p->wirelen, p->caplen) != 0;
}

int monitor_filter_skip(mos_engine_t *e, const struct mos_pkt *p, const struct pkt_info *pi, int flow)
{
    struct monitor_filter *f = e->filter;
    if (!f || f->broken)
        return 0;
    if (f->linktype != e->linktype) {
        char err[PCAP_ERRBUF_SIZE];
        if (compile_for(f, f->expr, e->linktype, err, sizeof(err)) != 0) {
            f->broken = 1;
            return 0;
        }
        forget_flows(f);
    }
    int vk = e->cfg.vlan_in_key;
    uint32_t hit = 0;
    int side = -1;
    flow = flow && pi->ip_version;
    if (flow && f->count) {
        /* idle entries go back, two per packet at most, oldest first */
        for (int k = 0; k < 2 && f->lru_head; k++) {
            const struct mf_entry *old = &f->ents[f->lru_head];
            if (old->last_ts + mf_timeout(old, &e->cfg) > e->now)
                break;
            mf_remove(f, f->lru_head, vk);
        }
        for (uint32_t s = f->count ? f->buckets[mf_packet_hash(f, pi, vk)] : 0; s; s = f->ents[s].hnext) {
            if ((side = flow_key_match(&f->ents[s].key, pi, vk)) >= 0) {
                hit = s;
                break;
            }
        }
        if (hit && f->ents[hit].last_ts + mf_timeout(&f->ents[hit], &e->cfg) <= e->now) {
            mf_remove(f, hit, vk); /* idle past its timeout: a new flow */
            hit = 0;
        }
    }
    int syn_only = pi->proto == 6 && (pi->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
    if (!hit || syn_only) {
        e->counters[MOS_C_FILTER_EVALUATED]++;
        if (judge(f, p, pi)) {
            if (hit)
                mf_remove(f, hit, vk); /* a new attempt that matches: monitored from here */
            return 0;
        }
    }
    if (hit) {
        struct mf_entry *m = &f->ents[hit];
        m->last_ts = e->now;
        m->key.aux |= side == 1;
        lru_unlink(f, hit);
        lru_append(f, hit);
    } else if (flow) {
        mf_insert(f, pi, e->now, vk);
        e->counters[MOS_C_FILTERED_FLOWS]++;
    }
    account(e, MOS_C_FILTERED_OUT);
    return 1;
}
