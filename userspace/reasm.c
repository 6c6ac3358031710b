/* Per-direction TCP stream reassembly (see reasm.h for the contract).
 *
 * Data structure
 * --------------
 * Everything a direction holds lives in `struct reasm_buf` (allocated lazily, freed as soon as nothing is
 * held): a sorted array of non-overlapping, non-empty chunks. A chunk is a run of stream bytes owning its
 * own allocation. Chunks entirely below next_off are delivered bytes retained for comparing
 * retransmissions (and because on_data pointed at them); chunks at or above next_off are out-of-order
 * bytes waiting for a hole to fill. No chunk straddles next_off.
 *
 * Common case (in-order data, nothing out of order): the segment is appended to the last retained chunk
 * when it has spare capacity (chunks are allocated with some slack, growing with the amount retained),
 * so a connection streaming in order costs one memcpy per segment and one malloc every few segments.
 * Bytes are never moved once delivered: on_data pointers stay valid until reasm_trim/reasm_release frees
 * them, as the header promises.
 *
 * Borrowed chunks: when a segment's bytes lie in ctx's stable region (a capture file mapped in memory,
 * which outlives every connection of the run), the chunk points at them instead of copying them: no
 * malloc, no memcpy, for in-order and out-of-order bytes alike (one chunk per segment then, since
 * there is no slack to append to). They are accounted as an exact copy would be (bytes plus per-chunk
 * overhead), so dir_limit and max_segments act the same whatever the packet source; memcap is reached
 * a little later than with copies, which also count the slack they were allocated with.
 * reasm_unborrow copies them before the region goes away.
 * Chunks leave the array from the front (trim) by advancing its start, so that the many small chunks
 * of borrowed in-order data cost O(1) each to free.
 *
 * Retention, trim and limits
 * --------------------------
 * - Delivered bytes are freed by reasm_trim (and by reasm_ack once a trim already allowed it) below
 *   min(keep_from, acked_off, keep_from - retain). keep_from is remembered (monotonic) in the buf; the
 *   last `retain` bytes before it (the peek window) stay, so an app reading back what it was handed
 *   finds the same bytes whatever the batch boundaries were. Limits never evict them either.
 * - In-order bytes are always retained when delivered (on_data points at them), whatever the limits:
 *   the engine bounds that memory by calling reasm_trim after handling the events. After each delivery,
 *   and before holding out-of-order bytes, if a limit is exceeded the oldest retained bytes that the
 *   engine already handled (below keep_from) but were not acknowledged yet are evicted, whole chunks at a
 *   time. They were only kept to compare retransmissions: a later retransmission of them is reported
 *   with old_bytes == NULL (REXMIT_UNVERIFIABLE). Evictions count REASM_C_LIMIT_* (once per eviction
 *   round) and REASM_C_BYTES_DROPPED_LIMIT (bytes); on_limit is NOT called for them (nothing is lost
 *   from the stream).
 * - Out-of-order bytes that cannot be held (dir_limit on payload bytes held, ctx->memcap on accounted
 *   memory, max_segments on held out-of-order chunks; 0 means unlimited for each) are reported with
 *   on_limit (one call per refused contiguous range), counted (LIMIT_* once per segment,
 *   BYTES_DROPPED_LIMIT per byte) and become a gap when an ack passes them or at flush. Policy
 *   replacements of bytes already held need no extra room and are still applied (unless the segment
 *   count limit forbids the split they cause, in which case the old bytes stay).
 * - A failed malloc is handled like a memcap hit (on_limit(REASM_LIMIT_MEMCAP), counted).
 * - ctx->mem_used accounts every allocation (payload capacity, chunk array, buf, scratch) plus a rough
 *   per-allocation overhead; it returns to what it was once every direction is released.
 *
 * buffering == 0
 * --------------
 * Nothing is held (d->buf stays NULL): in-order bytes are delivered pointing into the caller's segment
 * (valid only during that reasm_segment call), out-of-order bytes are dropped (counted only as
 * OOO_SEGMENTS, not as a limit) and become a gap once an ack passes them. Their extent is not recorded,
 * so reasm_flush cannot report them: the engine should feed the final ack first. Retransmitted bytes are
 * reported with old_bytes == NULL (unverifiable). If buffering is switched off while data is held, the
 * direction keeps working as buffered until it holds nothing.
 *
 * Retransmissions and overlaps
 * ----------------------------
 * Bytes of a segment below next_off were delivered: the stream never changes, whatever the policy. Those
 * the receiver acknowledged before the segment came (below acked_off) are not compared: the receiver
 * ignores them, and whether a copy is still in memory depends on when the engine's caller handled the
 * events of earlier batches (delivered bytes stay until then), so a verdict on them would depend on batch
 * boundaries; they are reported with old_bytes == NULL (REXMIT_UNVERIFIABLE), one on_rexmit. Delivered
 * bytes not acknowledged yet are still held (trims never free them; only a limit evicts them, see above),
 * so their verdict depends on the packets alone: they are compared with the retained copy (one on_rexmit
 * per maximal run of held bytes or of no-longer-held bytes). Bytes overlapping held out-of-order chunks
 * are reported with one on_rexmit per maximal run of adjacent held chunks; old_bytes is then a copy in
 * a scratch area of the buf (so it stays stable even if the policy replaces the held bytes), freed at the next reasm_trim or reasm_release as the header
 * allows; except for an identical run within one chunk (the common duplicate), where it points into the
 * held chunk. On a scratch allocation failure old_bytes is NULL (counted unverifiable). For delivered bytes old_bytes points into the retained chunk (copied to scratch only if
 * the run spans several chunks). REXMIT_INCONSISTENT counts the bytes that differ.
 *
 * Overlap policy (which copy of held, not yet delivered bytes is kept) follows Suricata's
 * DoHandleDataOverlap() in src/stream-tcp-list.c (read for semantics, not copied). The decision is made
 * per held chunk, comparing the new segment's original bounds [ns, ne) with the original bounds [os, oe)
 * of the segment the held bytes came from (a chunk remembers them); when the bytes are identical nothing
 * changes. "new" wins when:
 *   FIRST, VISTA : never
 *   LAST         : always
 *   BSD, WINDOWS : ns < os                          (new starts before the old segment)
 *   LINUX        : ns < os, or ns == os && ne > oe  (same start, new longer)
 *   OLD_LINUX    : ns < os, or ns == os && ne >= oe
 *   SOLARIS      : ne > oe, or ne == oe && ns <= os (new ends after old; or same end, starts no later)
 * Bytes taken from the new segment become owned by it (its bounds are used for later decisions).
 *
 * Bytes the capture cut (snaplen)
 * ------------------------------
 * reasm_segment_cut offers a segment of which the capture holds only a prefix: the prefix goes the usual
 * way, the rest is known to have been sent and known not to be in the capture. Those bytes become a gap
 * (counted also as SNAPLEN_GAPS / SNAPLEN_GAP_BYTES) as soon as the stream reaches them, without waiting
 * for an acknowledgement as a hole must: only a retransmission could bring them, and waiting would hold
 * every later segment of a capture taken with a small snaplen out of order. Until the stream reaches them
 * (a hole before them), their range is remembered in the buf's cut list (sorted, disjoint, at most
 * max_segments ranges; beyond that a range is left an ordinary hole); a segment bringing those bytes
 * meanwhile fills them, as it fills any hole, and held bytes always win over a cut range when delivery
 * reaches it. Once the gap is delivered, a later copy of those bytes is a retransmission of bytes not
 * held (REXMIT_UNVERIFIABLE), as for any gap. Cut bytes below next_off (a cut retransmission) count as
 * unverifiable retransmitted bytes; cut bytes over held out-of-order bytes change nothing.
 *
 * Callbacks must not call reasm_* on the same direction.
 */
#include "reasm.h"

#include <stdlib.h>
#include <string.h>

#define ALLOC_OVH     16u            /* rough per-allocation overhead for mem accounting */
#define RETAIN_MIN    2048u          /* smallest retained (in-order) chunk allocation */
#define RETAIN_MAX    65536u         /* largest slack-bearing retained chunk allocation */
#define SCRATCH_MIN   4096u
#define ACK_MAX_AHEAD ((1ull << 31) - 1) /* acks further ahead of next_off are not in sequence space */
#define TMP_STACK     16u

struct chunk {
    uint64_t off;      /* stream offset of the first valid byte */
    int64_t seg_off;   /* original bounds of the segment these bytes came from (overlap policy) */
    int64_t seg_end;
    uint8_t *mem;      /* allocation (owned), or the segment's bytes in the stable region (borrowed) */
    uint32_t skip;     /* bytes trimmed from the front of mem: data = mem + skip */
    uint32_t len;      /* valid bytes (> 0) */
    uint32_t cap;      /* allocation size; borrowed: the bytes accounted, as if copied */
    uint16_t fresh;    /* made by the plan being applied (rollback/accounting); 0 outside apply_plan */
    uint8_t borrowed;  /* mem is not ours: never written, never freed */
    uint8_t pad_;
};

struct scratch {
    struct scratch *next;
    uint32_t used, cap;
    uint8_t data[];
};

struct reasm_buf {
    struct chunk *c;     /* the first live chunk; chunks removed from the front only advance it */
    struct chunk *base;  /* the array's allocation (acap descriptors) */
    uint32_t n, ncap;    /* live chunks, and room from c on */
    uint32_t acap;
    uint64_t held;       /* payload bytes in chunks */
    uint64_t mem;        /* bytes this direction accounts in ctx->mem_used */
    uint64_t keep_from;  /* highest keep_from given to reasm_trim */
    struct scratch *scr;
    struct cut *cuts;    /* ranges the capture cut, ahead of next_off (sorted, disjoint, not adjacent) */
    uint32_t ncuts, cutcap;
};

struct cut {
    uint64_t s, e;
};

/* ---------------------------------------------------------------------------------------------- */

static inline uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t cend(const struct chunk *c) { return c->off + c->len; }
static inline uint8_t *cdata(const struct chunk *c) { return c->mem + c->skip; }

static inline void chunk_set(struct chunk *c, uint64_t off, int64_t so, int64_t se, uint8_t *mem, uint32_t len,
                             uint32_t cap, uint32_t mark)
{
    c->off = off;
    c->seg_off = so;
    c->seg_end = se;
    c->mem = mem;
    c->skip = 0;
    c->len = len;
    c->cap = cap;
    c->fresh = (uint16_t)mark;
    c->borrowed = 0;
    c->pad_ = 0;
}

/* Whether [p, p+len) lies in the stable region (compared as integers: the region is another object). */
static inline int stable(const struct reasm_ctx *ctx, const uint8_t *p, uint32_t len)
{
    uintptr_t a = (uintptr_t)p;
    return ctx->stable_lo && a >= (uintptr_t)ctx->stable_lo && a <= (uintptr_t)ctx->stable_hi &&
           len <= (uintptr_t)ctx->stable_hi - a;
}

/* A chunk holding [p, p+len) by reference; accounted as if copied, so that the limits do not depend
 * on where the packets came from. */
static inline void chunk_borrow(struct chunk *c, uint64_t off, int64_t so, int64_t se, const uint8_t *p,
                                uint32_t len, uint32_t mark)
{
    chunk_set(c, off, so, se, (uint8_t *)(uintptr_t)p, len, len, mark);
    c->borrowed = 1;
}

static inline void acct_add(struct reasm_ctx *ctx, struct reasm_buf *b, uint64_t n)
{
    b->mem += n;
    ctx->mem_used += n;
}

static inline void acct_sub(struct reasm_ctx *ctx, struct reasm_buf *b, uint64_t n)
{
    b->mem -= n;
    ctx->mem_used -= n;
}

/* First chunk whose end is beyond x (chunk ends are strictly increasing). */
static uint32_t idx_end_gt(const struct reasm_buf *b, uint64_t x)
{
    uint32_t lo = 0, hi = b->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cend(&b->c[mid]) > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static struct reasm_buf *buf_get(struct reasm_ctx *ctx, struct reasm_dir *d)
{
    struct reasm_buf *b = d->buf;
    if (b)
        return b;
    b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->keep_from = d->next_off; /* everything below was freed, hence handled */
    d->buf = b;
    acct_add(ctx, b, sizeof(*b) + ALLOC_OVH);
    return b;
}

static void scratch_free(struct reasm_ctx *ctx, struct reasm_buf *b)
{
    struct scratch *s = b->scr;
    while (s) {
        struct scratch *nx = s->next;
        acct_sub(ctx, b, sizeof(*s) + s->cap + ALLOC_OVH);
        free(s);
        s = nx;
    }
    b->scr = NULL;
}

static void cuts_free(struct reasm_ctx *ctx, struct reasm_buf *b)
{
    if (b->cutcap)
        acct_sub(ctx, b, (uint64_t)b->cutcap * sizeof(*b->cuts) + ALLOC_OVH);
    free(b->cuts);
    b->cuts = NULL;
    b->ncuts = b->cutcap = 0;
}

/* Forget cut ranges below `lim` (the stream is past them: delivered or gapped). */
static void cuts_prune(struct reasm_ctx *ctx, struct reasm_buf *b, uint64_t lim)
{
    uint32_t k = 0;
    while (k < b->ncuts && b->cuts[k].e <= lim)
        k++;
    if (k) {
        b->ncuts -= k;
        memmove(b->cuts, b->cuts + k, (size_t)b->ncuts * sizeof(*b->cuts));
    }
    if (b->ncuts && b->cuts[0].s < lim)
        b->cuts[0].s = lim;
    if (!b->ncuts && b->cutcap)
        cuts_free(ctx, b); /* the common case keeps no list around */
}

static void buf_maybe_free(struct reasm_ctx *ctx, struct reasm_dir *d)
{
    struct reasm_buf *b = d->buf;
    if (!b)
        return;
    if (b->cutcap)
        cuts_prune(ctx, b, d->next_off);
    if (b->n || b->scr || b->ncuts)
        return;
    ctx->mem_used -= b->mem;
    free(b->base);
    free(b);
    d->buf = NULL;
}

/* Make room for `extra` more chunk descriptors. */
static int arr_reserve(struct reasm_ctx *ctx, struct reasm_buf *b, uint32_t extra)
{
    if (b->ncap - b->n >= extra)
        return 0;
    if (b->c != b->base) {
        /* slide the live chunks down over those removed from the front (a slot is slid at most once
         * per time it is filled, so removal from the front stays O(1) amortized) */
        memmove(b->base, b->c, (size_t)b->n * sizeof(*b->c));
        b->c = b->base;
        b->ncap = b->acap;
        if (b->ncap - b->n >= extra)
            return 0;
    }
    uint64_t want = (uint64_t)b->n + extra;
    uint64_t ncap = b->acap ? b->acap : 4;
    while (ncap < want)
        ncap *= 2;
    if (ncap > UINT32_MAX / 2)
        return -1;
    struct chunk *nc = realloc(b->base, (size_t)ncap * sizeof(*nc));
    if (!nc)
        return -1;
    acct_add(ctx, b, (ncap - b->acap) * sizeof(*nc) + (b->acap ? 0 : ALLOC_OVH));
    b->base = b->c = nc;
    b->acap = b->ncap = (uint32_t)ncap;
    return 0;
}

static void arr_remove_front(struct reasm_buf *b, uint32_t k)
{
    if (!k)
        return;
    b->n -= k;
    if (b->n) {
        b->c += k;
        b->ncap -= k;
    } else {
        b->c = b->base;
        b->ncap = b->acap;
    }
}

static void chunk_free_mem(struct reasm_ctx *ctx, struct reasm_buf *b, struct chunk *c)
{
    acct_sub(ctx, b, (uint64_t)c->cap + ALLOC_OVH);
    if (!c->borrowed)
        free(c->mem);
    c->mem = NULL;
}

/* Scratch copy area (freed at the next reasm_trim / reasm_release). */
static uint8_t *scratch_alloc(struct reasm_ctx *ctx, struct reasm_buf *b, uint32_t len)
{
    struct scratch *s = b->scr;
    if (s && s->cap - s->used >= len) {
        uint8_t *p = s->data + s->used;
        s->used += len;
        return p;
    }
    uint32_t cap = len > SCRATCH_MIN ? len : SCRATCH_MIN;
    s = malloc(sizeof(*s) + cap);
    if (!s)
        return NULL;
    s->cap = cap;
    s->used = len;
    s->next = b->scr;
    b->scr = s;
    acct_add(ctx, b, sizeof(*s) + cap + ALLOC_OVH);
    return s->data;
}

/* Copy [off, off+len) from chunks i.. (known contiguous) into dst. */
static void gather(const struct reasm_buf *b, uint32_t i, uint64_t off, uint32_t len, uint8_t *dst)
{
    uint32_t done = 0;
    while (done < len) {
        const struct chunk *c = &b->c[i++];
        uint64_t pos = off + done;
        uint32_t take = (uint32_t)min_u64(cend(c) - pos, (uint64_t)(len - done));
        memcpy(dst + done, cdata(c) + (pos - c->off), take);
        done += take;
    }
}

static uint64_t count_diff(const uint8_t *a, const uint8_t *b, uint32_t len)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < len; i++)
        n += a[i] != b[i];
    return n;
}

static void report_rexmit(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint64_t off,
                          uint32_t len, const uint8_t *old, const uint8_t *nw)
{
    int inconsistent = 0;
    (void)d;
    if (old) {
        if (memcmp(old, nw, len) != 0) {
            inconsistent = 1;
            ctx->counters[REASM_C_REXMIT_INCONSISTENT] += count_diff(old, nw, len);
        }
    } else {
        ctx->counters[REASM_C_REXMIT_UNVERIFIABLE] += len;
    }
    ctx->counters[REASM_C_REXMIT_BYTES] += len;
    if (ctx->cb.on_rexmit)
        ctx->cb.on_rexmit(ctx->user, owner, off, len, inconsistent, old, nw);
}

/* ---------------------------------------------------------------------------------------------- */

static void advance(struct reasm_dir *d, uint64_t len)
{
    d->next_off += len;
    d->next_seq += (uint32_t)len;
}

static void gap_to(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint64_t to)
{
    uint64_t off = d->next_off, len = to - off;
    advance(d, len);
    ctx->counters[REASM_C_GAPS]++;
    ctx->counters[REASM_C_BYTES_GAP] += len;
    if (ctx->cb.on_gap)
        ctx->cb.on_gap(ctx->user, owner, off, len);
}

/* A gap of bytes the capture cut, up to `to`. */
static void gap_cut_to(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint64_t to)
{
    ctx->counters[REASM_C_SNAPLEN_GAPS]++;
    ctx->counters[REASM_C_SNAPLEN_GAP_BYTES] += to - d->next_off;
    gap_to(ctx, d, owner, to);
}

/* The end of the cut range holding next_off, or 0 if none does (ranges behind it are forgotten). */
static uint64_t cut_at_next(struct reasm_ctx *ctx, struct reasm_dir *d)
{
    struct reasm_buf *b = d->buf;
    if (!b->ncuts)
        return 0;
    cuts_prune(ctx, b, d->next_off);
    return b->ncuts && b->cuts[0].s <= d->next_off ? b->cuts[0].e : 0;
}

/* The start of the first cut range at or past next_off, or UINT64_MAX. */
static uint64_t next_cut(struct reasm_ctx *ctx, struct reasm_dir *d)
{
    struct reasm_buf *b = d->buf;
    if (!b || !b->ncuts)
        return UINT64_MAX;
    cuts_prune(ctx, b, d->next_off);
    return b->ncuts ? max_u64(b->cuts[0].s, d->next_off) : UINT64_MAX;
}

/* Deliver held chunks that start at next_off, and the gaps of cut ranges the stream reaches. Returns
 * the bytes delivered. */
static uint64_t deliver_ready(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner)
{
    struct reasm_buf *b = d->buf;
    uint64_t total = 0;
    if (!b)
        return 0;
    for (;;) {
        uint32_t i = idx_end_gt(b, d->next_off);
        while (i < b->n && b->c[i].off == d->next_off) {
            const struct chunk *c = &b->c[i++];
            uint64_t off = c->off;
            uint32_t len = c->len;
            const uint8_t *p = cdata(c);
            advance(d, len);
            total += len;
            ctx->counters[REASM_C_BYTES_DELIVERED] += len;
            if (ctx->cb.on_data)
                ctx->cb.on_data(ctx->user, owner, off, p, len);
        }
        uint64_t to = cut_at_next(ctx, d);
        if (!to)
            break;
        if (i < b->n && b->c[i].off < to)
            to = b->c[i].off; /* held bytes fill the rest of the range */
        gap_cut_to(ctx, d, owner, to);
    }
    return total;
}

/* Free delivered chunks (wholly or their front) below lim. */
/* The peek window: the last ctx->retain delivered bytes stay for the app, whatever the batches. */
static uint64_t window_start(const struct reasm_ctx *ctx, uint64_t end)
{
    return end > ctx->retain ? end - ctx->retain : 0;
}

/* Delivered bytes below this may be freed: handled (below keep_from), acknowledged, out of the window. */
static uint64_t freeable_to(const struct reasm_ctx *ctx, const struct reasm_dir *d)
{
    return min_u64(min_u64(d->buf->keep_from, d->acked_off), window_start(ctx, d->buf->keep_from));
}

static void free_below(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t lim)
{
    struct reasm_buf *b = d->buf;
    if (!b)
        return;
    lim = min_u64(lim, d->next_off);
    uint32_t k = 0;
    while (k < b->n && cend(&b->c[k]) <= lim) {
        b->held -= b->c[k].len;
        chunk_free_mem(ctx, b, &b->c[k]);
        k++;
    }
    arr_remove_front(b, k);
    if (b->n && b->c[0].off < lim) {
        struct chunk *c = &b->c[0];
        uint32_t cut = (uint32_t)(lim - c->off);
        c->off += cut;
        c->skip += cut;
        c->len -= cut;
        b->held -= cut;
    }
}

static int over_limit(const struct reasm_ctx *ctx, const struct reasm_buf *b, uint64_t need_held,
                      uint64_t need_mem, enum reasm_limit *why)
{
    if (ctx->dir_limit && b->held + need_held > ctx->dir_limit) {
        *why = REASM_LIMIT_DIR_BUF;
        return 1;
    }
    if (ctx->memcap && ctx->mem_used + need_mem > ctx->memcap) {
        *why = REASM_LIMIT_MEMCAP;
        return 1;
    }
    return 0;
}

static void count_limit(struct reasm_ctx *ctx, enum reasm_limit why)
{
    static const enum reasm_counter ctr[REASM_LIMIT_COUNT] = {
        [REASM_LIMIT_DIR_BUF] = REASM_C_LIMIT_DIR_BUF,
        [REASM_LIMIT_MEMCAP] = REASM_C_LIMIT_MEMCAP,
        [REASM_LIMIT_SEGMENTS] = REASM_C_LIMIT_SEGMENTS,
    };
    ctx->counters[ctr[why]]++;
}

/* Evict retained, already handled (below keep_from) delivered chunks, oldest first, until
 * need_held/need_mem more fit. Returns 1 if they fit, else 0 with *why set. */
static int make_room(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t need_held, uint64_t need_mem,
                     enum reasm_limit *why)
{
    struct reasm_buf *b = d->buf;
    enum reasm_limit first = REASM_LIMIT_DIR_BUF;
    uint64_t dropped = 0;
    uint32_t k = 0;
    int fits;
    uint64_t lim = window_start(ctx, min_u64(b->keep_from, d->next_off));
    for (;;) {
        if (!over_limit(ctx, b, need_held, need_mem, why)) {
            fits = 1;
            break;
        }
        if (!dropped)
            first = *why;
        if (k >= b->n || cend(&b->c[k]) > lim) {
            fits = 0;
            break;
        }
        dropped += b->c[k].len;
        b->held -= b->c[k].len;
        chunk_free_mem(ctx, b, &b->c[k]);
        k++;
    }
    if (k) {
        arr_remove_front(b, k);
        count_limit(ctx, first);
        ctx->counters[REASM_C_BYTES_DROPPED_LIMIT] += dropped;
    }
    return fits;
}

static void limit_hit(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, enum reasm_limit why,
                      uint64_t off, uint32_t len)
{
    ctx->counters[REASM_C_BYTES_DROPPED_LIMIT] += len;
    if (ctx->cb.on_limit)
        ctx->cb.on_limit(ctx->user, owner, why, off, len);
    (void)d;
}

/* ---------------------------------------------------------------------------------------------- */

static int new_wins(unsigned policy, int64_t ns, int64_t ne, int64_t os, int64_t oe)
{
    switch (policy) {
    case REASM_POLICY_LAST:
        return 1;
    case REASM_POLICY_BSD:
    case REASM_POLICY_WINDOWS:
        return ns < os;
    case REASM_POLICY_LINUX:
        return ns < os || (ns == os && ne > oe);
    case REASM_POLICY_OLD_LINUX:
        return ns < os || (ns == os && ne >= oe);
    case REASM_POLICY_SOLARIS:
        return ne > oe || (ne == oe && ns <= os);
    case REASM_POLICY_FIRST:
    case REASM_POLICY_VISTA:
    default:
        return 0;
    }
}

/* Report retransmitted bytes [off, off+len), all below next_off (delivered). */
static void rexmit_delivered(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint64_t off,
                             uint32_t len, const uint8_t *nw)
{
    struct reasm_buf *b = d->buf;
    uint64_t pos = off, e = off + len;
    if (pos < d->acked_off) {
        /* Acknowledged before this copy came: not compared, even if still in memory (see the top). */
        uint64_t ae = min_u64(e, d->acked_off);
        report_rexmit(ctx, d, owner, pos, (uint32_t)(ae - pos), NULL, nw);
        pos = ae;
    }
    uint32_t i = b ? idx_end_gt(b, pos) : 0;
    while (pos < e) {
        if (b && i < b->n && b->c[i].off <= pos) {
            uint32_t j = i;
            uint64_t re = min_u64(e, cend(&b->c[j]));
            while (re < e && j + 1 < b->n && b->c[j + 1].off == cend(&b->c[j])) {
                j++;
                re = min_u64(e, cend(&b->c[j]));
            }
            uint32_t rl = (uint32_t)(re - pos);
            const uint8_t *old;
            if (j == i) {
                old = cdata(&b->c[i]) + (pos - b->c[i].off);
            } else {
                uint8_t *s = scratch_alloc(ctx, b, rl);
                if (s)
                    gather(b, i, pos, rl, s);
                old = s;
            }
            report_rexmit(ctx, d, owner, pos, rl, old, nw + (pos - off));
            pos = re;
            i = j + 1;
        } else {
            uint64_t ne = e;
            if (b && i < b->n && b->c[i].off < e)
                ne = b->c[i].off;
            report_rexmit(ctx, d, owner, pos, (uint32_t)(ne - pos), NULL, nw + (pos - off));
            pos = ne;
        }
    }
}

/* Append in-order bytes at next_off to the retained chunks (no out-of-order chunk exists). Returns a
 * pointer to the stored copy, or NULL on allocation failure. */
static const uint8_t *append_inorder(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t off,
                                     const uint8_t *data, uint32_t len, int64_t so, int64_t se)
{
    struct reasm_buf *b = buf_get(ctx, d);
    if (!b)
        return NULL;
    if (stable(ctx, data, len)) {
        if (arr_reserve(ctx, b, 1))
            return NULL;
        chunk_borrow(&b->c[b->n++], off, so, se, data, len, 0);
        b->held += len;
        acct_add(ctx, b, (uint64_t)len + ALLOC_OVH);
        return data;
    }
    if (b->n) {
        struct chunk *t = &b->c[b->n - 1];
        if (!t->borrowed && cend(t) == off && t->cap - t->skip - t->len >= len) {
            uint8_t *p = cdata(t) + t->len;
            memcpy(p, data, len);
            t->len += len;
            b->held += len;
            return p;
        }
    }
    if (arr_reserve(ctx, b, 1))
        return NULL;
    uint32_t cap = len;
    if (len < RETAIN_MAX) {
        uint64_t want = b->held;
        if (want < RETAIN_MIN)
            want = RETAIN_MIN;
        if (want > RETAIN_MAX)
            want = RETAIN_MAX;
        if (want > cap && !(ctx->memcap && ctx->mem_used + want + ALLOC_OVH > ctx->memcap))
            cap = (uint32_t)want;
    }
    uint8_t *m = malloc(cap);
    if (!m && cap != len) {
        cap = len;
        m = malloc(cap);
    }
    if (!m)
        return NULL;
    memcpy(m, data, len);
    chunk_set(&b->c[b->n++], off, so, se, m, len, cap, 0);
    b->held += len;
    acct_add(ctx, b, (uint64_t)cap + ALLOC_OVH);
    return m;
}

/* After in-order delivery: evict handled-but-unacked retained bytes if a limit is exceeded. */
static void enforce_after_delivery(struct reasm_ctx *ctx, struct reasm_dir *d)
{
    enum reasm_limit why;
    if (d->buf && (ctx->dir_limit || ctx->memcap))
        (void)make_room(ctx, d, 0, 0, &why);
}

/* ---- general (out-of-order / overlap) path ---------------------------------------------------- */

enum { P_NEW = 0, P_KEEP };

struct piece {
    uint64_t s, e;  /* stream range */
    uint32_t j;     /* P_KEEP: source chunk index */
    uint32_t kind;
};

struct plan {
    struct piece *p;
    uint32_t np;
};

static void plan_new(struct plan *pl, uint64_t s, uint64_t e)
{
    if (pl->np && pl->p[pl->np - 1].kind == P_NEW && pl->p[pl->np - 1].e == s) {
        pl->p[pl->np - 1].e = e;
        return;
    }
    pl->p[pl->np++] = (struct piece){ .s = s, .e = e, .j = 0, .kind = P_NEW };
}

static void plan_keep(struct plan *pl, uint32_t j, uint64_t s, uint64_t e)
{
    pl->p[pl->np++] = (struct piece){ .s = s, .e = e, .j = j, .kind = P_KEEP };
}

/* Plan how chunks [i0, i1) and the segment [off, end) (data) combine. take_fresh: include bytes not
 * held yet; replace: let the policy replace held bytes. Needs room for 2*(i1-i0)+3 pieces. */
static void build_plan(const struct reasm_dir *d, const struct reasm_buf *b, uint32_t i0, uint32_t i1,
                       uint64_t off, uint64_t end, const uint8_t *data, int64_t ns, int64_t ne,
                       int take_fresh, int replace, struct plan *pl)
{
    uint64_t pos = off;
    pl->np = 0;
    for (uint32_t j = i0; j < i1; j++) {
        const struct chunk *c = &b->c[j];
        uint64_t cs = c->off, ce = cend(c);
        if (cs > pos) {
            if (take_fresh)
                plan_new(pl, pos, cs);
            pos = cs;
        }
        uint64_t os = pos, oe = min_u64(end, ce);
        if (replace && new_wins(d->policy, ns, ne, c->seg_off, c->seg_end) &&
            memcmp(cdata(c) + (os - cs), data + (os - off), (size_t)(oe - os)) != 0) {
            if (cs < os)
                plan_keep(pl, j, cs, os);
            plan_new(pl, os, oe);
            if (oe < ce)
                plan_keep(pl, j, oe, ce);
        } else {
            plan_keep(pl, j, cs, ce);
        }
        pos = oe;
    }
    if (pos < end && take_fresh)
        plan_new(pl, pos, end);
}

/* Apply a plan: replace chunks [i0, i1) with the planned pieces. Returns 0, or -1 (nothing changed)
 * if memory could not be allocated. */
static int apply_plan(struct reasm_ctx *ctx, struct reasm_buf *b, uint32_t i0, uint32_t i1,
                      uint64_t off, const uint8_t *data, int64_t ns, int64_t ne, const struct plan *pl,
                      struct chunk *out, uint8_t *reused)
{
    uint32_t k = i1 - i0;
    if (pl->np > k && arr_reserve(ctx, b, pl->np - k))
        return -1;
    memset(reused, 0, k);
    uint32_t prefix_j = UINT32_MAX;
    uint32_t q;
    for (q = 0; q < pl->np; q++) {
        const struct piece *p = &pl->p[q];
        uint32_t len = (uint32_t)(p->e - p->s);
        struct chunk *o = &out[q];
        if (p->kind == P_KEEP) {
            const struct chunk *c = &b->c[p->j];
            *o = *c;
            if (p->s == c->off) {
                /* whole chunk, or its prefix: keeps the allocation */
                reused[p->j - i0] = 1;
                prefix_j = p->j;
                o->len = len;
                continue;
            }
            if (prefix_j != p->j) {
                /* suffix only: keeps the allocation, skipping the replaced front */
                reused[p->j - i0] = 1;
                o->skip += (uint32_t)(p->s - c->off);
                o->off = p->s;
                o->len = len;
                continue;
            }
            /* suffix of a chunk whose prefix is also kept: own copy (or reference) */
            if (c->borrowed) {
                chunk_borrow(o, p->s, c->seg_off, c->seg_end, cdata(c) + (p->s - c->off), len, 1);
                continue;
            }
            uint8_t *m = malloc(len);
            if (!m)
                goto fail;
            memcpy(m, cdata(c) + (p->s - c->off), len);
            o->mem = m;
            o->skip = 0;
            o->off = p->s;
            o->len = len;
            o->cap = len;
            o->fresh = 1; /* marks a fresh allocation (for rollback/accounting) */
            continue;
        }
        if (stable(ctx, data + (p->s - off), len)) {
            chunk_borrow(o, p->s, ns, ne, data + (p->s - off), len, 1);
            continue;
        }
        uint8_t *m = malloc(len);
        if (!m)
            goto fail;
        memcpy(m, data + (p->s - off), len);
        chunk_set(o, p->s, ns, ne, m, len, len, 1); /* marked fresh (for rollback/accounting) */
    }
    /* commit */
    for (uint32_t j = i0; j < i1; j++) {
        b->held -= b->c[j].len;
        if (!reused[j - i0])
            chunk_free_mem(ctx, b, &b->c[j]);
    }
    for (q = 0; q < pl->np; q++) {
        b->held += out[q].len;
        if (out[q].fresh) {
            acct_add(ctx, b, (uint64_t)out[q].cap + ALLOC_OVH);
            out[q].fresh = 0;
        }
    }
    if (pl->np != k)
        memmove(b->c + i0 + pl->np, b->c + i1, (size_t)(b->n - i1) * sizeof(*b->c));
    memcpy(b->c + i0, out, (size_t)pl->np * sizeof(*out));
    b->n = b->n - k + pl->np;
    return 0;
fail:
    for (uint32_t r = 0; r < q; r++)
        if (out[r].fresh && !out[r].borrowed)
            free(out[r].mem);
    return -1;
}

/* Report fresh (not held) ranges of [off, end) around chunks [i0, i1) as refused by a limit. */
static uint64_t refuse_fresh(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, enum reasm_limit why,
                             uint32_t i0, uint32_t i1, uint64_t off, uint64_t end)
{
    struct reasm_buf *b = d->buf;
    uint64_t pos = off, total = 0;
    for (uint32_t j = i0; j <= i1; j++) {
        uint64_t s = j < i1 ? b->c[j].off : end;
        if (s > pos) {
            limit_hit(ctx, d, owner, why, pos, (uint32_t)(s - pos));
            total += s - pos;
        }
        if (j < i1)
            pos = min_u64(end, cend(&b->c[j]));
    }
    return total;
}

/* Segment bytes [off, end) with off >= next_off, where out-of-order chunks may exist. Returns whether
 * some bytes overlapped held out-of-order data, and sets *fresh to the bytes not held before. */
static int segment_general(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint64_t off,
                           uint64_t end, const uint8_t *data, int64_t ns, int64_t ne, uint64_t *fresh)
{
    struct reasm_buf *b = buf_get(ctx, d);
    uint32_t len = (uint32_t)(end - off);
    *fresh = len;
    if (!b) {
        count_limit(ctx, REASM_LIMIT_MEMCAP);
        limit_hit(ctx, d, owner, REASM_LIMIT_MEMCAP, off, len);
        return 0;
    }
    uint32_t i0 = idx_end_gt(b, off), i1 = i0;
    uint64_t overlapped = 0;
    while (i1 < b->n && b->c[i1].off < end) {
        overlapped += min_u64(end, cend(&b->c[i1])) - max_u64(off, b->c[i1].off);
        i1++;
    }
    uint32_t k = i1 - i0;
    *fresh = len - overlapped;

    /* report overlaps with held out-of-order bytes, one call per run of adjacent chunks */
    for (uint32_t j = i0; j < i1;) {
        uint32_t js = j;
        while (j + 1 < i1 && b->c[j + 1].off == cend(&b->c[j]))
            j++;
        uint64_t rs = max_u64(off, b->c[js].off), re = min_u64(end, cend(&b->c[j]));
        uint32_t rl = (uint32_t)(re - rs);
        const uint8_t *nw = data + (rs - off);
        const uint8_t *old = NULL;
        if (js == j && memcmp(cdata(&b->c[js]) + (rs - b->c[js].off), nw, rl) == 0) {
            /* identical and in one chunk (the usual duplicate): nothing will be replaced */
            old = cdata(&b->c[js]) + (rs - b->c[js].off);
        } else {
            uint8_t *copy = scratch_alloc(ctx, b, rl);
            if (copy)
                gather(b, js, rs, rl, copy);
            old = copy;
        }
        report_rexmit(ctx, d, owner, rs, rl, old, nw);
        j++;
    }

    struct piece pstack[2 * TMP_STACK + 3];
    struct chunk ostack[2 * TMP_STACK + 3];
    uint8_t rstack[TMP_STACK];
    struct piece *pieces = pstack;
    struct chunk *out = ostack;
    uint8_t *reused = rstack;
    void *heap = NULL;
    if (k > TMP_STACK) {
        size_t np = 2 * (size_t)k + 3;
        heap = malloc(np * (sizeof(struct piece) + sizeof(struct chunk)) + k);
        if (!heap) {
            if (*fresh) {
                count_limit(ctx, REASM_LIMIT_MEMCAP);
                refuse_fresh(ctx, d, owner, REASM_LIMIT_MEMCAP, i0, i1, off, end);
            }
            return k > 0;
        }
        out = heap;
        pieces = (struct piece *)(out + np);
        reused = (uint8_t *)(pieces + np);
    }

    const int inorder = off == d->next_off;
    const uint32_t ooo_now = b->n - idx_end_gt(b, d->next_off);
    struct plan pl = { pieces, 0 };
    enum reasm_limit why = REASM_LIMIT_MEMCAP;
    int done = 0;

    /* tier 1: fresh bytes plus whatever the policy replaces. Bytes that become in order right away
     * are not subject to the limits (they are delivered, and retained like any in-order bytes). */
    build_plan(d, b, i0, i1, off, end, data, ns, ne, 1, 1, &pl);
    uint64_t nsegs = (uint64_t)ooo_now - k + pl.np;
    if (!inorder && ctx->max_segments && nsegs > ctx->max_segments && nsegs > ooo_now) {
        why = REASM_LIMIT_SEGMENTS;
    } else {
        int room = 1;
        if (!inorder && *fresh) {
            uint64_t need_mem = *fresh + (uint64_t)pl.np * ALLOC_OVH;
            uint64_t want_n = (uint64_t)b->n - k + pl.np;
            if (want_n > b->acap) {
                uint64_t ncap = b->acap ? b->acap : 4;
                while (ncap < want_n)
                    ncap *= 2;
                need_mem += (ncap - b->acap) * sizeof(struct chunk) + ALLOC_OVH;
            }
            room = make_room(ctx, d, *fresh, need_mem, &why);
            /* make_room may have evicted delivered chunks: indexes shift */
            uint32_t ni0 = idx_end_gt(b, off);
            if (ni0 != i0) {
                i0 = ni0;
                i1 = ni0 + k;
                build_plan(d, b, i0, i1, off, end, data, ns, ne, 1, 1, &pl);
            }
        }
        if (room) {
            done = apply_plan(ctx, b, i0, i1, off, data, ns, ne, &pl, out, reused) == 0;
            if (!done)
                why = REASM_LIMIT_MEMCAP;
        }
    }
    int refused = 0;
    if (!done && *fresh) {
        count_limit(ctx, why);
        refuse_fresh(ctx, d, owner, why, i0, i1, off, end);
        refused = 1;
    }
    /* tier 2: without the fresh bytes, only the policy's replacements (no growth in bytes held) */
    if (!done && k) {
        build_plan(d, b, i0, i1, off, end, data, ns, ne, 0, 1, &pl);
        int any_new = 0;
        for (uint32_t q = 0; q < pl.np; q++)
            any_new |= pl.p[q].kind == P_NEW;
        nsegs = (uint64_t)ooo_now - k + pl.np;
        if (any_new) {
            if (pl.np > k && ctx->max_segments && nsegs > ctx->max_segments) {
                if (!refused)
                    count_limit(ctx, REASM_LIMIT_SEGMENTS);
                /* tier 3: the held bytes stay as they are */
            } else {
                (void)apply_plan(ctx, b, i0, i1, off, data, ns, ne, &pl, out, reused);
            }
        }
    }
    free(heap);
    return k > 0;
}

/* ---------------------------------------------------------------------------------------------- */

void reasm_ctx_init(struct reasm_ctx *ctx, const struct reasm_cb *cb, void *user, uint64_t memcap,
                    uint32_t dir_limit, uint32_t max_segments)
{
    memset(ctx, 0, sizeof(*ctx));
    if (cb)
        ctx->cb = *cb;
    ctx->user = user;
    ctx->memcap = memcap;
    ctx->dir_limit = dir_limit;
    ctx->max_segments = max_segments;
}

void reasm_dir_init(struct reasm_dir *d, uint32_t seq, uint8_t policy, uint8_t buffering)
{
    memset(d, 0, sizeof(*d));
    d->next_seq = seq;
    d->policy = policy < REASM_POLICY_COUNT ? policy : REASM_POLICY_BSD;
    d->buffering = buffering;
    d->initialized = 1;
}

void reasm_segment(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint32_t seq,
                   const uint8_t *data, uint32_t len)
{
    ctx->counters[REASM_C_SEGMENTS]++;
    if (!d->initialized) {
        /* picked up mid-stream without reasm_dir_init: anchor here */
        d->next_seq = seq;
        d->initialized = 1;
    }
    if (len == 0)
        return;

    const int64_t ns = reasm_seq_to_off(d, seq);
    const int64_t ne = ns + (int64_t)len;
    if (ne <= 0) {
        /* entirely before the start of the stream: nothing to compare with */
        ctx->counters[REASM_C_REXMIT_SEGMENTS]++;
        ctx->counters[REASM_C_REXMIT_BYTES] += len;
        ctx->counters[REASM_C_REXMIT_UNVERIFIABLE] += len;
        return;
    }
    int seen = 0;
    if (ns < 0) {
        uint32_t skip = (uint32_t)-ns;
        ctx->counters[REASM_C_REXMIT_BYTES] += skip;
        ctx->counters[REASM_C_REXMIT_UNVERIFIABLE] += skip;
        data += skip;
        len -= skip;
        seen = 1;
    }
    uint64_t off = ns < 0 ? 0 : (uint64_t)ns, end = (uint64_t)ne;

    if (off < d->next_off) {
        uint64_t re = min_u64(end, d->next_off);
        rexmit_delivered(ctx, d, owner, off, (uint32_t)(re - off), data);
        seen = 1;
        if (end <= d->next_off) {
            ctx->counters[REASM_C_REXMIT_SEGMENTS]++;
            return;
        }
        uint32_t cut = (uint32_t)(d->next_off - off);
        data += cut;
        len -= cut;
        off = d->next_off;
    }

    struct reasm_buf *b = d->buf;
    if (!d->buffering && !b) {
        if (off == d->next_off) {
            advance(d, len);
            ctx->counters[REASM_C_BYTES_DELIVERED] += len;
            if (seen)
                ctx->counters[REASM_C_OVERLAP_SEGMENTS]++;
            if (ctx->cb.on_data)
                ctx->cb.on_data(ctx->user, owner, off, data, len);
        } else {
            ctx->counters[REASM_C_OOO_SEGMENTS]++; /* not held: becomes a gap when acked past */
        }
        return;
    }

    if (off == d->next_off && (!b || ((!b->n || cend(&b->c[b->n - 1]) <= d->next_off) && !b->ncuts))) {
        /* fast path: in order, nothing out of order held */
        if (seen)
            ctx->counters[REASM_C_OVERLAP_SEGMENTS]++;
        const uint8_t *p = append_inorder(ctx, d, off, data, len, ns, ne);
        if (!p) {
            count_limit(ctx, REASM_LIMIT_MEMCAP);
            limit_hit(ctx, d, owner, REASM_LIMIT_MEMCAP, off, len);
            buf_maybe_free(ctx, d);
            return;
        }
        advance(d, len);
        ctx->counters[REASM_C_BYTES_DELIVERED] += len;
        if (ctx->cb.on_data)
            ctx->cb.on_data(ctx->user, owner, off, p, len);
        enforce_after_delivery(ctx, d);
        return;
    }

    if (off > d->next_off)
        ctx->counters[REASM_C_OOO_SEGMENTS]++;
    uint64_t fresh = 0;
    seen |= segment_general(ctx, d, owner, off, end, data, ns, ne, &fresh);
    if (seen)
        ctx->counters[fresh ? REASM_C_OVERLAP_SEGMENTS : REASM_C_REXMIT_SEGMENTS]++;
    if (deliver_ready(ctx, d, owner))
        enforce_after_delivery(ctx, d);
    buf_maybe_free(ctx, d);
}

/* Remember [s, e) as cut, merged with the ranges it touches. Returns 0, or -1 (limit, or no memory). */
static int cut_add(struct reasm_ctx *ctx, struct reasm_buf *b, uint64_t s, uint64_t e)
{
    uint32_t i = 0, j;
    while (i < b->ncuts && b->cuts[i].e < s)
        i++;
    j = i;
    while (j < b->ncuts && b->cuts[j].s <= e)
        j++;
    if (j > i) {
        /* [i, j) touch [s, e): one range */
        b->cuts[i].s = min_u64(b->cuts[i].s, s);
        b->cuts[i].e = max_u64(b->cuts[j - 1].e, e);
        memmove(b->cuts + i + 1, b->cuts + j, (size_t)(b->ncuts - j) * sizeof(*b->cuts));
        b->ncuts -= j - i - 1;
        return 0;
    }
    if (ctx->max_segments && b->ncuts >= ctx->max_segments)
        return -1;
    if (b->ncuts == b->cutcap) {
        uint32_t ncap = b->cutcap ? 2 * b->cutcap : 4;
        uint64_t grow = (uint64_t)(ncap - b->cutcap) * sizeof(*b->cuts) + (b->cutcap ? 0 : ALLOC_OVH);
        if (ncap > UINT32_MAX / 2 || (ctx->memcap && ctx->mem_used + grow > ctx->memcap))
            return -1;
        struct cut *nc = realloc(b->cuts, (size_t)ncap * sizeof(*nc));
        if (!nc)
            return -1;
        acct_add(ctx, b, grow);
        b->cuts = nc;
        b->cutcap = ncap;
    }
    memmove(b->cuts + i + 1, b->cuts + i, (size_t)(b->ncuts - i) * sizeof(*b->cuts));
    b->cuts[i] = (struct cut){ s, e };
    b->ncuts++;
    return 0;
}

void reasm_segment_cut(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint32_t seq,
                       const uint8_t *data, uint32_t len, uint32_t cut)
{
    reasm_segment(ctx, d, owner, seq, data, len);
    if (!cut)
        return;
    int64_t cs = reasm_seq_to_off(d, seq + len), ce = cs + (int64_t)cut;
    uint64_t s = cs < 0 ? 0 : (uint64_t)cs, e = ce < 0 ? 0 : (uint64_t)ce;
    uint64_t seen = (uint64_t)(ce - cs) - (e - s); /* before the start of the stream */
    if (s < d->next_off)
        seen += min_u64(e, d->next_off) - s;
    if (seen) {
        /* a retransmission the capture cut: nothing to compare it with */
        ctx->counters[REASM_C_REXMIT_BYTES] += seen;
        ctx->counters[REASM_C_REXMIT_UNVERIFIABLE] += seen;
        if (!len && e <= d->next_off)
            ctx->counters[REASM_C_REXMIT_SEGMENTS]++;
    }
    s = max_u64(s, d->next_off);
    if (s >= e)
        return;
    struct reasm_buf *b = d->buf;
    if (s == d->next_off) {
        /* in order: a gap now, up to the bytes held past it, if any (without a buf: no allocation) */
        uint64_t to = e;
        if (b) {
            uint32_t i = idx_end_gt(b, s);
            if (i < b->n && b->c[i].off < to)
                to = b->c[i].off;
        }
        gap_cut_to(ctx, d, owner, to);
        if (b && deliver_ready(ctx, d, owner))
            enforce_after_delivery(ctx, d);
        s = d->next_off;
        if (s >= e) {
            buf_maybe_free(ctx, d);
            return;
        }
    }
    if (!b && !d->buffering)
        return; /* nothing held out of order: an ordinary hole, a gap once acknowledged */
    b = buf_get(ctx, d);
    if (b && cut_add(ctx, b, s, e) == 0 && deliver_ready(ctx, d, owner))
        enforce_after_delivery(ctx, d);
    buf_maybe_free(ctx, d);
}

void reasm_ack(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint32_t ack)
{
    if (!d->initialized)
        return;
    int64_t a = reasm_seq_to_off(d, ack);
    if (a <= 0 || (uint64_t)a <= d->acked_off)
        return; /* backwards, or no progress */
    if ((uint64_t)a > d->next_off + ACK_MAX_AHEAD)
        return; /* implausible: ignore */
    uint64_t ua = (uint64_t)a;
    d->acked_off = ua;
    while (d->next_off < ua) {
        uint64_t to = ua;
        struct reasm_buf *b = d->buf;
        if (b) {
            uint32_t i = idx_end_gt(b, d->next_off);
            if (i < b->n && b->c[i].off < to)
                to = b->c[i].off;
            to = min_u64(to, next_cut(ctx, d)); /* counted as the capture's gap, not a lost one */
        }
        if (to > d->next_off)
            gap_to(ctx, d, owner, to);
        deliver_ready(ctx, d, owner);
    }
    if (d->buf) {
        free_below(ctx, d, freeable_to(ctx, d));
        buf_maybe_free(ctx, d);
    }
}

void reasm_flush(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner)
{
    struct reasm_buf *b;
    while ((b = d->buf) != NULL) {
        uint32_t i = idx_end_gt(b, d->next_off);
        uint64_t to = min_u64(i < b->n ? b->c[i].off : UINT64_MAX, next_cut(ctx, d));
        if (to == UINT64_MAX)
            break;
        if (to > d->next_off)
            gap_to(ctx, d, owner, to);
        deliver_ready(ctx, d, owner);
    }
    buf_maybe_free(ctx, d);
}

void reasm_trim(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t keep_from)
{
    struct reasm_buf *b = d->buf;
    if (!b)
        return;
    if (keep_from > b->keep_from)
        b->keep_from = keep_from;
    scratch_free(ctx, b);
    free_below(ctx, d, freeable_to(ctx, d));
    buf_maybe_free(ctx, d);
}

uint64_t reasm_drop_from(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t off)
{
    struct reasm_buf *b = d->buf;
    if (!b)
        return 0;
    if (off < d->next_off)
        off = d->next_off; /* delivered bytes are the stream's already */
    uint64_t dropped = 0;
    /* chunks are sorted and disjoint: drop from the tail, cutting the one that straddles off */
    while (b->n) {
        struct chunk *c = &b->c[b->n - 1];
        if (cend(c) <= off)
            break;
        if (c->off >= off) {
            dropped += c->len;
            b->held -= c->len;
            chunk_free_mem(ctx, b, c);
            b->n--;
            continue;
        }
        uint32_t cut = (uint32_t)(cend(c) - off);
        c->len -= cut; /* the allocation stays as it is (accounted by cap) */
        b->held -= cut;
        dropped += cut;
        break;
    }
    if (!b->n) {
        b->c = b->base;
        b->ncap = b->acap;
    }
    while (b->ncuts && b->cuts[b->ncuts - 1].s >= off)
        b->ncuts--;
    if (b->ncuts && b->cuts[b->ncuts - 1].e > off)
        b->cuts[b->ncuts - 1].e = off;
    buf_maybe_free(ctx, d);
    return dropped;
}

void reasm_release(struct reasm_ctx *ctx, struct reasm_dir *d)
{
    struct reasm_buf *b = d->buf;
    if (!b)
        return;
    scratch_free(ctx, b);
    cuts_free(ctx, b);
    for (uint32_t i = 0; i < b->n; i++)
        chunk_free_mem(ctx, b, &b->c[i]);
    b->n = 0;
    b->held = 0;
    buf_maybe_free(ctx, d);
}

uint64_t reasm_unborrow(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner)
{
    struct reasm_buf *b = d->buf;
    uint64_t copied = 0;
    if (!b)
        return 0;
    uint32_t w = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        struct chunk c = b->c[i];
        if (c.borrowed) {
            uint8_t *m = malloc(c.len);
            if (!m) {
                /* dropped like a memcap hit: delivered bytes only lose their comparison copy, held
                 * ones become a hole */
                b->held -= c.len;
                chunk_free_mem(ctx, b, &c);
                count_limit(ctx, REASM_LIMIT_MEMCAP);
                if (c.off >= d->next_off)
                    limit_hit(ctx, d, owner, REASM_LIMIT_MEMCAP, c.off, c.len);
                else
                    ctx->counters[REASM_C_BYTES_DROPPED_LIMIT] += c.len;
                continue;
            }
            memcpy(m, cdata(&c), c.len);
            acct_sub(ctx, b, c.cap);
            acct_add(ctx, b, c.len);
            c.mem = m;
            c.skip = 0;
            c.cap = c.len;
            c.borrowed = 0;
            copied += c.len;
        }
        b->c[w++] = c;
    }
    b->n = w;
    buf_maybe_free(ctx, d);
    return copied;
}

uint32_t reasm_copy(const struct reasm_dir *d, uint64_t off, uint32_t len, uint8_t *dst)
{
    const struct reasm_buf *b = d->buf;
    uint32_t done = 0;
    if (!b)
        return 0;
    uint32_t i = idx_end_gt(b, off);
    while (done < len && i < b->n && b->c[i].off <= off + done) {
        const struct chunk *c = &b->c[i++];
        uint64_t pos = off + done;
        uint32_t take = (uint32_t)min_u64(cend(c) - pos, (uint64_t)(len - done));
        memcpy(dst + done, cdata(c) + (pos - c->off), take);
        done += take;
    }
    return done;
}

uint64_t reasm_held_bytes(const struct reasm_dir *d)
{
    return d->buf ? d->buf->held : 0;
}

/* Held out-of-order ranges above next_off; adjacent chunks are merged into one (off, len) pair. */
uint32_t reasm_segments(const struct reasm_dir *d, uint64_t *offs, uint32_t *lens, uint32_t max)
{
    const struct reasm_buf *b = d->buf;
    uint32_t count = 0;
    if (!b)
        return 0;
    uint32_t i = idx_end_gt(b, d->next_off);
    while (i < b->n) {
        uint64_t s = b->c[i].off, e = cend(&b->c[i]);
        i++;
        while (i < b->n && b->c[i].off == e && e - s + b->c[i].len <= UINT32_MAX) {
            e = cend(&b->c[i]);
            i++;
        }
        if (count < max) {
            if (offs)
                offs[count] = s;
            if (lens)
                lens[count] = (uint32_t)(e - s);
        }
        count++;
    }
    return count;
}

/* The lowest held offset >= off (retained delivered bytes or out-of-order), or UINT64_MAX. */
uint64_t reasm_next_held(const struct reasm_dir *d, uint64_t off)
{
    const struct reasm_buf *b = d->buf;
    if (!b)
        return UINT64_MAX;
    uint32_t i = idx_end_gt(b, off);
    if (i >= b->n)
        return UINT64_MAX;
    return max_u64(b->c[i].off, off);
}
