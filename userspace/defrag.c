/* IPv4 and IPv6 fragment reassembly (see defrag.h for the contract).
 *
 * Design
 * - A datagram in progress (`struct dg`) is found through a chained hash table keyed by a 48-byte
 *   canonical key (family, protocol (IPv4 only), vlan_key, id, src, dst); it also sits on a list
 *   ordered by creation ("first seen") used for expiry and for eviction.
 * - Data is held as a sorted list of non-overlapping pieces. A new fragment adds the bytes no earlier
 *   fragment supplied, and where it overlaps held bytes the policy decides which copy stays (below).
 *   A datagram is complete when the last fragment (MF=0) fixed its end, the offset-0 fragment
 *   supplied the header, and the pieces cover [0, end) exactly.
 *
 * Overlap policies (defrag.h). A new fragment [a, b) is weighed against each held piece [o, e) it
 * overlaps, and either wins the overlapping bytes (the piece is trimmed, split or freed) or loses them:
 *   first: never wins; last: always; bsd: wins iff a < o; bsd-right: iff a >= o; old-linux: iff a <= o;
 *   windows: iff a < o and b > e; solaris: iff a < o and b >= e.
 * A piece is what is held of an earlier fragment, as the kernels hold it: BSD's ip_reass and Linux's
 * ip_frag_queue trim a queued fragment when a later one wins part of it, and later fragments are
 * weighed against what is left (so is a piece here); first and the Windows/Solaris rules of frag3
 * and Suricata, whose hosts' code is not public, are weighed the same way. With the Sturges-Novak
 * fragments every policy gives the datagram Suricata's tests and frag3 expect.
 * linux (since 4.19, inet_frag_queue_insert; RFC 5722 for IPv6): a fragment lying entirely inside a
 * run of held bytes (fragments each queued right after the previous one's end) is a duplicate and
 * ignored, whatever its bytes; any other overlap drops the datagram and the fragment (POLICY_DROPS,
 * the held fragments in FRAGS_DISCARDED). Later fragments of the same id start a new datagram.
 * The policies apply to IPv6 as to IPv4, as in Suricata: an RFC 5722 host is the linux policy, and the
 * others describe stacks that predate it.
 * Every overlapping fragment counts in OVERLAPS; when some of its overlapping bytes differ from the
 * held ones, also in OVERLAPS_DIFFERING (defrag_last_differing says how many, for the engine's
 * anomaly): identical copies (a duplicated packet) change nothing whatever the policy.
 * - Memory: mem_used counts every per-datagram allocation (struct dg, header copy, pieces with their
 *   bookkeeping). The hash bucket array and the fixed output buffer are per-instance overhead and are
 *   not counted (so mem_used returns to 0 once nothing is held).
 *
 * Limits policy (both counted in DEFRAG_C_MEMCAP, which counts fragments dropped for a limit):
 * - memcap: before storing a fragment, the OLDEST datagrams (other than the one being fed) are evicted
 *   until the new bytes fit; their held fragments are added to DEFRAG_C_MEMCAP and
 *   DEFRAG_C_FRAGS_DISCARDED. If the fragment still does not fit (nothing else left to evict), the new
 *   fragment is dropped (DEFRAG_C_MEMCAP += 1, DEFRAG_ERROR) and its datagram is left as it was.
 *   Rationale: under a flood of never-completing fragments the stale datagrams go first, while
 *   datagrams whose fragments arrive close together still complete.
 * - max_datagrams: creating a datagram when max_datagrams are in flight evicts the oldest one the
 *   same way. 0 means no limit (likewise memcap 0 means no cap, timeout 0 means no timeout).
 * - timeout: a datagram whose age (now - first seen) is >= timeout is dropped by defrag_expire, which
 *   defrag_feed also runs first (DEFRAG_C_TIMEOUTS += 1 per datagram, FRAGS_DISCARDED += its held
 *   fragments). The expiry list is in creation order; if packet time goes backwards the walk just
 *   stops early (datagrams then live a bit longer, never shorter).
 *
 * Errors (DEFRAG_ERROR, the fragment is not kept)
 * - DEFRAG_C_BAD_FRAGMENT: truncated headers (len shorter than the IPv4 header / IPv6 header and
 *   extension headers / fragment header, bad IHL, total length < header length), not a fragment at
 *   all (IPv4 with MF=0 and offset 0; IPv6 without a fragment header), truncated capture (len shorter
 *   than the IP total length / 40 + payload length), IPv6 payload length 0 (jumbogram), zero-length
 *   fragment payload, MF set with a payload length not a multiple of 8, a second last fragment with a
 *   different end, a fragment ending past the known end, or a last fragment ending before data
 *   already held.
 * - DEFRAG_C_TOO_BIG: header + reassembled payload would exceed 65535 (IPv6: payload length).
 * - Errors found while parsing the headers (truncated headers, truncated capture, not a fragment,
 *   IPv6 payload length 0) leave held datagrams alone. The others (zero length, misalignment, end
 *   conflicts, too big) also drop the held datagram with the same key, if any (its fragments are
 *   counted in DEFRAG_C_FRAGS_DISCARDED).
 * - DEFRAG_C_MEMCAP: the fragment did not fit under the memcap (see above) or an allocation failed
 *   (then the datagram being built is dropped as well).
 *
 * Output
 * - IPv4: the offset-0 fragment's header (options included), MF and offset cleared (DF and the
 *   reserved bit are kept as sent), total length set, header checksum recomputed, then the payload.
 * - IPv6: the offset-0 fragment's unfragmentable part (IPv6 header and the extension headers before
 *   the fragment header), the next header field that pointed at the fragment header set to the
 *   fragment header's next header, payload length set, then the payload.
 * - An IPv6 atomic fragment (offset 0, M=0, RFC 6946) is reassembled on its own right away (DONE)
 *   without touching held datagrams with the same id.
 * - Trailing bytes beyond the IP total length (Ethernet padding) are ignored.
 */
#include "defrag.h"

#include "checksum.h"
#include "mix.h"
#include "mos_parse.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 48
#define IP_MAXLEN 65535u
#define OUT_MAX (40u + 65535u) /* IPv6 header + the largest payload length */
#define HT_MIN_BUCKETS 64u
#define HT_MAX_BUCKETS (1u << 22)
#define HT_INIT_MAX_BUCKETS (1u << 16) /* larger tables grow on demand */

struct piece {
    struct piece *next;
    uint32_t off;
    uint32_t len : 31;
    uint32_t run_cont : 1; /* queued right at the end of the piece before it (linux's runs) */
    uint8_t data[];
};

struct dg {
    struct dg *hnext;   /* hash chain */
    struct dg **hpprev; /* address of the pointer pointing at this node */
    struct dg *onext;   /* creation-order list */
    struct dg *oprev;
    uint64_t hash;
    uint64_t first_ns;
    struct piece *pieces; /* sorted by offset, non-overlapping */
    struct piece *tail;   /* last piece (fast path for in-order arrival) */
    uint8_t *hdr;         /* header copy from the offset-0 fragment (NULL until seen) */
    uint32_t hdr_len;
    uint32_t nh_off;      /* IPv6: offset in hdr of the next header field to rewrite */
    uint32_t covered;     /* bytes held (sum of piece lengths) */
    uint32_t max_end;     /* highest end offset seen */
    uint32_t last_end;    /* end fixed by the last fragment (valid if have_last) */
    uint32_t nfrags;      /* fragments that contributed bytes */
    uint64_t mem;         /* bytes accounted to this datagram */
    uint8_t have_last;
    uint8_t frag_nh;      /* IPv6: next header from the offset-0 fragment's fragment header */
    uint8_t family;       /* 4 or 6 */
    uint8_t key[KEY_LEN];
};

struct defrag {
    uint64_t memcap;
    uint64_t timeout_ns;
    uint32_t max_datagrams;
    uint32_t count;
    uint64_t mem_used;
    uint64_t seed;
    struct dg **buckets;
    uint32_t nbuckets; /* power of two */
    struct dg *ohead;  /* oldest */
    struct dg *otail;  /* newest */
    uint8_t *out;      /* OUT_MAX bytes, allocated on first use */
    uint8_t policy;    /* enum defrag_policy */
    uint32_t last_differing; /* the last fragment's overlapping bytes that differed */
    uint32_t last_off;       /* and its offset */
    uint64_t c[DEFRAG_C_COUNT];
};

/* A parsed fragment. */
struct frag {
    uint8_t key[KEY_LEN];
    uint8_t family;
    uint8_t mf;
    uint8_t frag_nh;         /* IPv6 */
    uint32_t off;            /* in bytes */
    uint32_t plen;           /* payload bytes */
    const uint8_t *payload;
    const uint8_t *hdr;      /* IPv4 header / IPv6 unfragmentable part */
    uint32_t hdr_len;
    uint32_t nh_off;         /* IPv6 */
};

enum parse_res {
    P_OK = 0,
    P_BAD_HDR,   /* cannot be parsed or not a fragment: rejected, no datagram touched */
    P_BAD_FRAG,  /* malformed fragment with a known key: rejected, datagram invalidated */
};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)((uint16_t)p[0] << 8 | p[1]); }
static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint64_t key_hash(const defrag_t *df, const uint8_t *key)
{
    uint64_t h = df->seed;
    for (size_t i = 0; i < KEY_LEN; i += 8) {
        uint64_t w;
        memcpy(&w, key + i, 8);
        h = mos_mix64(h ^ w) + 0x9e3779b97f4a7c15ULL;
    }
    return mos_mix64(h);
}

/* ---------------------------------------------------------------- parsing */

static enum parse_res parse_v4(const uint8_t *l3, uint32_t len, uint32_t vlan_key, struct frag *f)
{
    if (len < 20)
        return P_BAD_HDR;
    uint32_t hl = (uint32_t)(l3[0] & 0x0f) * 4u;
    if (hl < 20 || hl > len)
        return P_BAD_HDR;
    uint32_t tot = rd16(l3 + 2);
    if (tot < hl)
        return P_BAD_HDR;
    uint16_t fo = rd16(l3 + 6);
    f->mf = (fo & 0x2000) != 0;
    f->off = (uint32_t)(fo & 0x1fff) * 8u;
    if (!f->mf && f->off == 0)
        return P_BAD_HDR; /* not a fragment */
    if (tot > len)
        return P_BAD_HDR; /* truncated capture */
    f->family = 4;
    f->hdr = l3;
    f->hdr_len = hl;
    f->nh_off = 0;
    f->frag_nh = 0;
    f->payload = l3 + hl;
    f->plen = tot - hl; /* bytes past the total length (padding) are ignored */
    memset(f->key, 0, KEY_LEN);
    f->key[0] = 4;
    f->key[1] = l3[9];
    wr32(f->key + 4, vlan_key);
    wr32(f->key + 8, rd16(l3 + 4));
    memcpy(f->key + 12, l3 + 12, 4);
    memcpy(f->key + 28, l3 + 16, 4);
    return P_OK;
}

static enum parse_res parse_v6(const uint8_t *l3, uint32_t len, uint32_t vlan_key, struct frag *f)
{
    if (len < 40)
        return P_BAD_HDR;
    uint32_t pl = rd16(l3 + 4);
    if (pl == 0)
        return P_BAD_HDR; /* jumbogram or empty: no fragment header to reassemble */
    uint32_t avail = 40u + pl;
    if (avail > len)
        return P_BAD_HDR; /* truncated capture */
    uint8_t nh = l3[6];
    uint32_t nh_off = 6;
    uint32_t off = 40;
    /* the decoder's walk and limit (bpf/mos_parse.h) up to the fragment header, which ends the
     * unfragmentable part (an atomic one too: it is reassembled on its own below) */
    for (int i = 0; nh != MOS_IPPROTO_FRAGMENT; i++) {
        if (!mos_ipv6_is_ext(nh))
            return P_BAD_HDR; /* not a fragment */
        if (i >= MOS_MAX_IPV6_EXT || avail - off < MOS_IPV6_EXT_MIN)
            return P_BAD_HDR;
        uint32_t elen = mos_ipv6_ext_len(nh, l3[off + 1]);
        if (avail - off < elen)
            return P_BAD_HDR;
        nh_off = off;
        nh = l3[off];
        off += elen;
    }
    if (avail - off < 8)
        return P_BAD_HDR;
    const uint8_t *fh = l3 + off;
    uint16_t fo = rd16(fh + 2);
    f->family = 6;
    f->frag_nh = fh[0];
    f->off = (uint32_t)(fo & 0xfff8);
    f->mf = (fo & 1) != 0;
    f->hdr = l3;
    f->hdr_len = off;
    f->nh_off = nh_off;
    f->payload = fh + 8;
    f->plen = avail - off - 8;
    memset(f->key, 0, KEY_LEN);
    f->key[0] = 6;
    wr32(f->key + 4, vlan_key);
    memcpy(f->key + 8, fh + 4, 4);
    memcpy(f->key + 12, l3 + 8, 16);
    memcpy(f->key + 28, l3 + 24, 16);
    return P_OK;
}

/* ---------------------------------------------------------------- table */

static struct dg *lookup(const defrag_t *df, const uint8_t *key, uint64_t h)
{
    for (struct dg *d = df->buckets[h & (df->nbuckets - 1)]; d; d = d->hnext)
        if (d->hash == h && memcmp(d->key, key, KEY_LEN) == 0)
            return d;
    return NULL;
}

static void bucket_insert(struct dg **buckets, uint32_t nbuckets, struct dg *d)
{
    struct dg **b = &buckets[d->hash & (nbuckets - 1)];
    d->hnext = *b;
    if (*b)
        (*b)->hpprev = &d->hnext;
    d->hpprev = b;
    *b = d;
}

static void maybe_grow(defrag_t *df)
{
    if (df->count <= df->nbuckets || df->nbuckets >= HT_MAX_BUCKETS)
        return;
    uint32_t nb = df->nbuckets * 2u;
    struct dg **nbk = calloc(nb, sizeof(*nbk));
    if (!nbk)
        return; /* keep working with longer chains */
    for (uint32_t i = 0; i < df->nbuckets; i++) {
        struct dg *d = df->buckets[i];
        while (d) {
            struct dg *next = d->hnext;
            bucket_insert(nbk, nb, d);
            d = next;
        }
    }
    free(df->buckets);
    df->buckets = nbk;
    df->nbuckets = nb;
}

static uint64_t dg_overhead(uint32_t hdr_len) { return (uint64_t)sizeof(struct dg) + hdr_len; }
static uint64_t piece_cost(uint32_t len) { return (uint64_t)sizeof(struct piece) + len; }

/* Unlink and free a datagram; `discard` adds its fragments to FRAGS_DISCARDED. Returns its number
 * of held fragments. */
static uint32_t dg_destroy(defrag_t *df, struct dg *d, int discard)
{
    uint32_t n = d->nfrags;
    *d->hpprev = d->hnext;
    if (d->hnext)
        d->hnext->hpprev = d->hpprev;
    if (d->oprev)
        d->oprev->onext = d->onext;
    else
        df->ohead = d->onext;
    if (d->onext)
        d->onext->oprev = d->oprev;
    else
        df->otail = d->oprev;
    struct piece *p = d->pieces;
    while (p) {
        struct piece *next = p->next;
        free(p);
        p = next;
    }
    df->mem_used -= d->mem;
    free(d->hdr);
    free(d);
    df->count--;
    if (discard)
        df->c[DEFRAG_C_FRAGS_DISCARDED] += n;
    return n;
}

static void evict_oldest(defrag_t *df, const struct dg *keep)
{
    struct dg *v = df->ohead;
    if (v == keep)
        v = v->onext;
    if (v)
        df->c[DEFRAG_C_MEMCAP] += dg_destroy(df, v, 1);
}

/* Make `need` more bytes fit under the memcap by evicting the oldest datagrams other than `keep`.
 * Returns 0 when they fit. */
static int make_room(defrag_t *df, uint64_t need, const struct dg *keep)
{
    if (df->memcap == 0)
        return 0;
    if (need + (keep ? keep->mem : 0) > df->memcap)
        return -1; /* would not fit even alone: do not evict anything for it */
    while (df->mem_used + need > df->memcap) {
        if (!df->ohead || (df->ohead == keep && !keep->onext))
            return -1;
        evict_oldest(df, keep);
    }
    return 0;
}

/* ---------------------------------------------------------------- public API */

defrag_t *defrag_new(uint64_t memcap, uint64_t timeout_ns, uint32_t max_datagrams)
{
    defrag_t *df = calloc(1, sizeof(*df));
    if (!df)
        return NULL;
    df->memcap = memcap;
    df->timeout_ns = timeout_ns;
    df->max_datagrams = max_datagrams;
    uint32_t nb = HT_MIN_BUCKETS;
    while (nb < max_datagrams && nb < HT_INIT_MAX_BUCKETS)
        nb *= 2u;
    df->nbuckets = nb;
    df->buckets = calloc(nb, sizeof(*df->buckets));
    if (!df->buckets) {
        free(df);
        return NULL;
    }
    df->seed = mos_random_seed(df);
    return df;
}

int defrag_set_policy(defrag_t *df, unsigned policy)
{
    if (!df || policy >= DEFRAG_POLICY_COUNT)
        return -1;
    df->policy = (uint8_t)policy;
    return 0;
}

void defrag_free(defrag_t *df)
{
    if (!df)
        return;
    while (df->ohead)
        dg_destroy(df, df->ohead, 0);
    free(df->buckets);
    free(df->out);
    free(df);
}

void defrag_expire(defrag_t *df, uint64_t now_ns)
{
    if (!df || df->timeout_ns == 0)
        return;
    while (df->ohead) {
        struct dg *d = df->ohead;
        if (now_ns < d->first_ns || now_ns - d->first_ns < df->timeout_ns)
            break;
        df->c[DEFRAG_C_TIMEOUTS]++;
        dg_destroy(df, d, 1);
    }
}

void defrag_flush(defrag_t *df)
{
    while (df && df->ohead)
        dg_destroy(df, df->ohead, 1); /* counted in discarded: fragments of datagrams never completed */
}

const uint64_t *defrag_counters(const defrag_t *df) { return df->c; }

uint64_t defrag_mem_used(const defrag_t *df) { return df->mem_used; }

uint32_t defrag_last_differing(const defrag_t *df, uint32_t *frag_off)
{
    if (frag_off)
        *frag_off = df->last_off;
    return df->last_differing;
}

static int ensure_out(defrag_t *df)
{
    if (!df->out)
        df->out = malloc(OUT_MAX);
    return df->out ? 0 : -1;
}

/* Write header + payload into df->out and fix the header. hdr_len + plen must fit the limits. */
static uint32_t write_header(defrag_t *df, uint8_t family, const uint8_t *hdr, uint32_t hdr_len,
                             uint32_t nh_off, uint8_t frag_nh, uint32_t plen)
{
    uint8_t *o = df->out;
    memcpy(o, hdr, hdr_len);
    if (family == 4) {
        wr16(o + 2, (uint16_t)(hdr_len + plen));
        wr16(o + 6, (uint16_t)(rd16(o + 6) & 0xc000)); /* keep DF/reserved, clear MF and offset */
        csum_set_ipv4_header(o);
    } else {
        o[nh_off] = frag_nh;
        wr16(o + 4, (uint16_t)(hdr_len - 40u + plen));
    }
    return hdr_len + plen;
}

static uint32_t header_limit(uint8_t family, uint32_t hdr_len)
{
    /* largest payload that still fits: IPv4 total length, IPv6 payload length */
    uint32_t used = family == 4 ? hdr_len : hdr_len - 40u;
    return used >= IP_MAXLEN ? 0 : IP_MAXLEN - used;
}

/* Walk the uncovered parts of [a, b) against the held pieces. With `insert`, allocate and link a
 * piece for each (returns -1 if an allocation fails, leaving the pieces added so far linked).
 * Otherwise count them into *nbytes and *npieces. */
static int walk_gaps(defrag_t *df, struct dg *d, const uint8_t *data, uint32_t a, uint32_t b,
                     int insert, uint32_t *nbytes, uint32_t *npieces)
{
    struct piece **pp = &d->pieces;
    uint32_t cur = a;
    if (d->tail && d->tail->off + d->tail->len <= a)
        pp = &d->tail->next; /* fast path: beyond everything held */
    while (cur < b) {
        struct piece *p = *pp;
        if (p && p->off + p->len <= cur) {
            pp = &p->next;
            continue;
        }
        if (p && p->off <= cur) {
            cur = p->off + p->len;
            pp = &p->next;
            continue;
        }
        uint32_t gap_end = (p && p->off < b) ? p->off : b;
        uint32_t glen = gap_end - cur;
        if (insert) {
            struct piece *n = malloc(sizeof(*n) + glen);
            if (!n)
                return -1;
            n->off = cur;
            n->len = glen;
            n->run_cont = 0;
            memcpy(n->data, data + (cur - a), glen);
            n->next = p;
            *pp = n;
            if (!p)
                d->tail = n;
            pp = &n->next;
            df->mem_used += piece_cost(glen);
            d->mem += piece_cost(glen);
            d->covered += glen;
        } else {
            *nbytes += glen;
            (*npieces)++;
        }
        cur = gap_end;
    }
    return 0;
}

/* The bytes of [a, b) that overlap held pieces, and how many of them differ from the held copy. */
static void scan_overlap(const struct dg *d, const uint8_t *data, uint32_t a, uint32_t b, uint32_t *ov,
                         uint32_t *differ)
{
    *ov = *differ = 0;
    if (d->tail && d->tail->off + d->tail->len <= a)
        return; /* beyond everything held: the in-order case costs one comparison */
    for (const struct piece *p = d->pieces; p && p->off < b; p = p->next) {
        uint32_t x = p->off > a ? p->off : a, y = p->off + p->len < b ? p->off + p->len : b;
        if (x >= y)
            continue;
        *ov += y - x;
        for (uint32_t i = x; i < y; i++)
            *differ += p->data[i - p->off] != data[i - a];
    }
}

/* linux: [a, b) lies inside one run of held pieces (each queued at the end of the one before). */
static int inside_run(const struct dg *d, uint32_t a, uint32_t b)
{
    const struct piece *p = d->pieces;
    while (p && p->off + p->len <= a)
        p = p->next;
    if (!p || p->off > a)
        return 0;
    while (p->off + p->len < b) {
        const struct piece *n = p->next;
        if (!n || !n->run_cont || n->off != p->off + p->len)
            return 0;
        p = n;
    }
    return 1;
}

static int new_wins(unsigned policy, uint32_t a, uint32_t b, uint32_t o, uint32_t e)
{
    switch (policy) {
    case DEFRAG_POLICY_LAST: return 1;
    case DEFRAG_POLICY_BSD: return a < o;
    case DEFRAG_POLICY_BSD_RIGHT: return a >= o;
    case DEFRAG_POLICY_OLD_LINUX: return a <= o;
    case DEFRAG_POLICY_WINDOWS: return a < o && b > e;
    case DEFRAG_POLICY_SOLARIS: return a < o && b >= e;
    default: return 0; /* first (linux never gets here) */
    }
}

/* Shrink a piece's allocation to its length (after a trim), relinking it through *pp. */
static struct piece *refit(struct dg *d, struct piece **pp, struct piece *p)
{
    struct piece *q = realloc(p, sizeof(*p) + p->len);
    if (!q)
        return p; /* the larger block still holds the bytes */
    *pp = q;
    if (d->tail == p)
        d->tail = q;
    return q;
}

/* Take from the held pieces the bytes of [a, b) the new fragment wins under the policy, so that the
 * gap walk then stores the new copy there. *won_first says whether the fragment won byte a. Returns
 * -1 when a split's allocation fails (the datagram is then inconsistent: the caller drops it). */
static int yield_to_new(defrag_t *df, struct dg *d, uint32_t a, uint32_t b, int *won_first)
{
    struct piece **pp = &d->pieces, *prev = NULL;
    *won_first = 0;
    while (*pp && (*pp)->off < b) {
        struct piece *p = *pp;
        uint32_t o = p->off, e = p->off + p->len;
        if (e <= a || !new_wins(df->policy, a, b, o, e)) {
            prev = p;
            pp = &p->next;
            continue;
        }
        uint32_t x = o > a ? o : a, y = e < b ? e : b;
        if (x == a)
            *won_first = 1;
        uint32_t cut = y - x;
        df->mem_used -= cut;
        d->mem -= cut;
        d->covered -= cut;
        if (x == o && y == e) { /* all of it */
            *pp = p->next;
            if (d->tail == p)
                d->tail = prev;
            df->mem_used -= sizeof(*p);
            d->mem -= sizeof(*p);
            free(p);
            continue;
        }
        if (x == o) { /* its front */
            memmove(p->data, p->data + cut, e - y);
            p->off = y;
            p->len = e - y;
        } else if (y == e) { /* its back */
            p->len = x - o;
        } else { /* its middle: the tail becomes a piece of its own */
            struct piece *t = malloc(sizeof(*t) + (e - y));
            if (!t)
                return -1;
            t->off = y;
            t->len = e - y;
            t->run_cont = 0;
            memcpy(t->data, p->data + (y - o), e - y);
            t->next = p->next;
            p->next = t;
            if (d->tail == p)
                d->tail = t;
            p->len = x - o;
            df->mem_used += sizeof(*t);
            d->mem += sizeof(*t);
        }
        p->run_cont = 0;
        p = refit(d, pp, p);
        prev = p;
        pp = &p->next;
    }
    return 0;
}

static int reject(defrag_t *df, enum defrag_counter why, struct dg *d)
{
    df->c[why]++;
    if (d)
        dg_destroy(df, d, 1);
    return DEFRAG_ERROR;
}

int defrag_feed(defrag_t *df, const uint8_t *l3, uint32_t len, uint32_t vlan_key, uint64_t now_ns,
                const uint8_t **out, uint32_t *out_len)
{
    if (out)
        *out = NULL;
    if (out_len)
        *out_len = 0;
    if (!df)
        return DEFRAG_ERROR;
    df->c[DEFRAG_C_FRAGMENTS]++;
    df->last_differing = 0;
    defrag_expire(df, now_ns);

    struct frag f;
    enum parse_res pr = P_BAD_HDR;
    if (l3 && len >= 1) {
        if ((l3[0] >> 4) == 4)
            pr = parse_v4(l3, len, vlan_key, &f);
        else if ((l3[0] >> 4) == 6)
            pr = parse_v6(l3, len, vlan_key, &f);
    }
    if (pr != P_OK)
        return reject(df, DEFRAG_C_BAD_FRAGMENT, NULL);

    uint64_t h = key_hash(df, f.key);
    struct dg *d = lookup(df, f.key, h);

    if (f.plen == 0 || (f.mf && (f.plen & 7u) != 0))
        return reject(df, DEFRAG_C_BAD_FRAGMENT, d);
    uint32_t end = f.off + f.plen; /* < 2^17 */
    if (end > header_limit(f.family, f.hdr_len))
        return reject(df, DEFRAG_C_TOO_BIG, d);

    /* IPv6 atomic fragment: a datagram on its own (RFC 6946). */
    if (f.family == 6 && f.off == 0 && !f.mf) {
        if (ensure_out(df) != 0)
            return reject(df, DEFRAG_C_MEMCAP, NULL);
        uint32_t n = write_header(df, 6, f.hdr, f.hdr_len, f.nh_off, f.frag_nh, f.plen);
        memcpy(df->out + f.hdr_len, f.payload, f.plen);
        df->c[DEFRAG_C_DATAGRAMS]++;
        if (out)
            *out = df->out;
        if (out_len)
            *out_len = n;
        return DEFRAG_DONE;
    }

    if (d) {
        if (!f.mf) {
            if (d->have_last ? end != d->last_end : d->max_end > end)
                return reject(df, DEFRAG_C_BAD_FRAGMENT, d);
        } else if (d->have_last && end > d->last_end) {
            return reject(df, DEFRAG_C_BAD_FRAGMENT, d);
        }
    }

    uint32_t ov = 0;
    int won_first = 0, yielded = 0;
    if (d) {
        uint32_t differ;
        scan_overlap(d, f.payload, f.off, end, &ov, &differ);
        if (ov) {
            df->c[DEFRAG_C_OVERLAPS]++;
            if (differ) {
                df->c[DEFRAG_C_OVERLAPS_DIFFERING]++;
                df->last_differing = differ;
                df->last_off = f.off;
            }
            if (df->policy == DEFRAG_POLICY_LINUX && !inside_run(d, f.off, end))
                return reject(df, DEFRAG_C_POLICY_DROPS, d);
            if (df->policy != DEFRAG_POLICY_FIRST && df->policy != DEFRAG_POLICY_LINUX) {
                yielded = 1;
                if (yield_to_new(df, d, f.off, end, &won_first) != 0)
                    return reject(df, DEFRAG_C_MEMCAP, d);
            }
        }
    }
    struct piece *old_tail = d ? d->tail : NULL;

    /* What would be stored. */
    uint32_t nbytes = 0, npieces = 0;
    if (d) {
        walk_gaps(df, d, f.payload, f.off, end, 0, &nbytes, &npieces);
    } else {
        nbytes = f.plen;
        npieces = 1;
    }
    int want_hdr = f.off == 0 && (!d || !d->hdr || won_first); /* a winning first fragment: its header too */
    uint64_t need = (uint64_t)npieces * sizeof(struct piece) + nbytes;
    if (!d)
        need += dg_overhead(0);
    if (want_hdr)
        need += f.hdr_len;

    if (!d && df->max_datagrams) {
        while (df->count >= df->max_datagrams && df->ohead)
            evict_oldest(df, NULL);
    }
    if (need > 0 && make_room(df, need, d) != 0) /* a datagram the policy changed is not the one held */
        return reject(df, DEFRAG_C_MEMCAP, yielded ? d : NULL);

    if (!d) {
        d = calloc(1, sizeof(*d));
        if (!d)
            return reject(df, DEFRAG_C_MEMCAP, NULL);
        memcpy(d->key, f.key, KEY_LEN);
        d->hash = h;
        d->family = f.family;
        d->first_ns = now_ns;
        bucket_insert(df->buckets, df->nbuckets, d);
        d->oprev = df->otail;
        if (df->otail)
            df->otail->onext = d;
        else
            df->ohead = d;
        df->otail = d;
        df->count++;
        df->mem_used += dg_overhead(0);
        d->mem = dg_overhead(0);
        maybe_grow(df);
    }
    if (want_hdr) {
        uint8_t *h = malloc(f.hdr_len);
        if (!h) {
            df->c[DEFRAG_C_MEMCAP]++;
            dg_destroy(df, d, 1);
            return DEFRAG_ERROR;
        }
        if (d->hdr) {
            df->mem_used -= d->hdr_len;
            d->mem -= d->hdr_len;
            free(d->hdr);
        }
        d->hdr = h;
        memcpy(d->hdr, f.hdr, f.hdr_len);
        d->hdr_len = f.hdr_len;
        d->nh_off = f.nh_off;
        d->frag_nh = f.frag_nh;
        df->mem_used += f.hdr_len;
        d->mem += f.hdr_len;
    }
    if (nbytes > 0) {
        if (walk_gaps(df, d, f.payload, f.off, end, 1, NULL, NULL) != 0) {
            df->c[DEFRAG_C_MEMCAP]++;
            dg_destroy(df, d, 1);
            return DEFRAG_ERROR;
        }
        d->nfrags++;
        if (!ov && old_tail && d->tail != old_tail && old_tail->off + old_tail->len == f.off)
            d->tail->run_cont = 1;
    }
    if (end > d->max_end)
        d->max_end = end;
    if (!f.mf) {
        d->have_last = 1;
        d->last_end = end;
    }

    if (!d->have_last || !d->hdr || d->covered != d->last_end)
        return DEFRAG_HELD;

    /* Complete: pieces are contiguous from 0 to last_end. */
    if (d->last_end > header_limit(d->family, d->hdr_len))
        return reject(df, DEFRAG_C_TOO_BIG, d);
    if (ensure_out(df) != 0) {
        df->c[DEFRAG_C_MEMCAP]++;
        dg_destroy(df, d, 1);
        return DEFRAG_ERROR;
    }
    uint32_t n = write_header(df, d->family, d->hdr, d->hdr_len, d->nh_off, d->frag_nh,
                              d->last_end);
    for (struct piece *p = d->pieces; p; p = p->next)
        memcpy(df->out + d->hdr_len + p->off, p->data, p->len);
    dg_destroy(df, d, 0);
    df->c[DEFRAG_C_DATAGRAMS]++;
    if (out)
        *out = df->out;
    if (out_len)
        *out_len = n;
    return DEFRAG_DONE;
}
