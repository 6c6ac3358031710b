/* Unit tests for userspace/reasm.c. Plain main(); prints "N passed, N failed", exits non-zero on failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reasm.h"

/* Allocation fault injection (glibc, not under ASan which owns malloc): after g_fail_after more
 * allocations, every allocation fails until g_fail_after is reset to -1. */
static long g_fail_after = -1;
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#define FAULT_INJECTION 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static int fault_now(void)
{
    if (g_fail_after < 0)
        return 0;
    if (g_fail_after == 0)
        return 1;
    g_fail_after--;
    return 0;
}
void *malloc(size_t n) { return fault_now() ? NULL : __libc_malloc(n); }
void *calloc(size_t a, size_t n) { return fault_now() ? NULL : __libc_calloc(a, n); }
void *realloc(void *p, size_t n) { return fault_now() ? NULL : __libc_realloc(p, n); }
#else
#define FAULT_INJECTION 0
#endif

#include "check.h"

/* ---- recorder ------------------------------------------------------------------------------- */

#define STREAM_MAX (1u << 16)
#define MAX_EV 256
#define MAX_PTRS 4096

struct rx_ev {
    uint64_t off;
    uint32_t len;
    int inconsistent;
    int has_old;
    uint8_t old[64], nw[64];
};

struct lim_ev {
    enum reasm_limit why;
    uint64_t off;
    uint32_t len;
};

struct rec {
    uint8_t stream[STREAM_MAX];
    uint8_t is_gap[STREAM_MAX];
    uint64_t next;       /* delivered + gaps */
    uint64_t delivered;  /* bytes delivered via on_data */
    uint64_t gap_bytes;
    int ndata, ngaps;
    int order_errors;
    uint64_t gap_off[MAX_EV], gap_len[MAX_EV];
    struct rx_ev rx[MAX_EV];
    int nrx;
    struct lim_ev lim[MAX_EV];
    int nlim;
    /* pointers handed out by on_data, checked for stability until the next trim */
    const uint8_t *ptr[MAX_PTRS];
    uint64_t ptr_off[MAX_PTRS];
    uint32_t ptr_len[MAX_PTRS];
    int nptr;
    const uint8_t *last_data;
    /* optional model check (fuzz) */
    const uint8_t *expect;        /* byte each delivered offset must have, or NULL */
    int expect_errors;
    const uint8_t *seg_base;      /* current segment, to check new_bytes */
    uint64_t seg_off;
    uint32_t seg_len;
    int rx_errors;
    const uint8_t *old_expect;    /* what old bytes must be for out-of-order overlaps (or NULL) */
};

static void on_data(void *user, void *owner, uint64_t off, const uint8_t *data, uint32_t len)
{
    struct rec *r = user;
    (void)owner;
    if (off != r->next || len == 0)
        r->order_errors++;
    if (off + len <= STREAM_MAX) {
        memcpy(r->stream + off, data, len);
        if (r->expect && memcmp(r->expect + off, data, len) != 0)
            r->expect_errors++;
    }
    r->next = off + len;
    r->delivered += len;
    r->ndata++;
    r->last_data = data;
    if (r->nptr < MAX_PTRS) {
        r->ptr[r->nptr] = data;
        r->ptr_off[r->nptr] = off;
        r->ptr_len[r->nptr] = len;
        r->nptr++;
    }
}

static void on_gap(void *user, void *owner, uint64_t off, uint64_t len)
{
    struct rec *r = user;
    (void)owner;
    if (off != r->next || len == 0)
        r->order_errors++;
    if (r->ngaps < MAX_EV) {
        r->gap_off[r->ngaps] = off;
        r->gap_len[r->ngaps] = len;
    }
    for (uint64_t i = off; i < off + len && i < STREAM_MAX; i++)
        r->is_gap[i] = 1;
    r->ngaps++;
    r->gap_bytes += len;
    r->next = off + len;
}

static void on_rexmit(void *user, void *owner, uint64_t off, uint32_t len, int inconsistent,
                      const uint8_t *old_bytes, const uint8_t *new_bytes)
{
    struct rec *r = user;
    (void)owner;
    if (r->seg_base) {
        /* new_bytes must be the segment's own bytes at that offset */
        if (off < r->seg_off || off + len > r->seg_off + r->seg_len ||
            new_bytes != r->seg_base + (off - r->seg_off))
            r->rx_errors++;
    }
    if (old_bytes) {
        int differ = memcmp(old_bytes, new_bytes, len) != 0;
        if (differ != !!inconsistent)
            r->rx_errors++;
        /* delivered bytes: old must be what was delivered */
        for (uint32_t i = 0; i < len; i++) {
            uint64_t o = off + i;
            if (o >= STREAM_MAX)
                break;
            if (o < r->next) {
                if (!r->is_gap[o] && old_bytes[i] != r->stream[o])
                    r->rx_errors++;
            } else if (r->old_expect && old_bytes[i] != r->old_expect[o]) {
                r->rx_errors++;
            }
        }
    } else if (inconsistent) {
        r->rx_errors++;
    }
    if (r->nrx < MAX_EV) {
        struct rx_ev *e = &r->rx[r->nrx];
        e->off = off;
        e->len = len;
        e->inconsistent = inconsistent;
        e->has_old = old_bytes != NULL;
        uint32_t n = len < 64 ? len : 64;
        if (old_bytes)
            memcpy(e->old, old_bytes, n);
        memcpy(e->nw, new_bytes, n);
    }
    r->nrx++;
}

static void on_limit(void *user, void *owner, enum reasm_limit why, uint64_t off, uint32_t len)
{
    struct rec *r = user;
    (void)owner;
    if (r->nlim < MAX_EV) {
        r->lim[r->nlim].why = why;
        r->lim[r->nlim].off = off;
        r->lim[r->nlim].len = len;
    }
    r->nlim++;
}

static const struct reasm_cb CB = { on_data, on_gap, on_rexmit, on_limit };

static struct rec *rec_new(void)
{
    struct rec *r = calloc(1, sizeof(*r));
    if (!r) {
        perror("calloc");
        exit(2);
    }
    return r;
}

/* All on_data pointers still show the delivered bytes (they must until reasm_trim). */
static int ptrs_stable(struct rec *r)
{
    for (int i = 0; i < r->nptr; i++)
        if (r->ptr_off[i] + r->ptr_len[i] <= STREAM_MAX &&
            memcmp(r->ptr[i], r->stream + r->ptr_off[i], r->ptr_len[i]) != 0)
            return 0;
    return 1;
}

static void trim(struct reasm_ctx *ctx, struct reasm_dir *d, struct rec *r, uint64_t keep_from)
{
    CHECK(ptrs_stable(r));
    r->nptr = 0;
    reasm_trim(ctx, d, keep_from);
}

static void seg(struct reasm_ctx *ctx, struct reasm_dir *d, struct rec *r, uint32_t isn, uint64_t off,
                const uint8_t *data, uint32_t len)
{
    r->seg_base = data;
    r->seg_off = off;
    r->seg_len = len;
    reasm_segment(ctx, d, NULL, isn + (uint32_t)off, data, len);
    r->seg_base = NULL;
}

static void seg_str(struct reasm_ctx *ctx, struct reasm_dir *d, struct rec *r, uint32_t isn, uint64_t off,
                    const char *s)
{
    seg(ctx, d, r, isn, off, (const uint8_t *)s, (uint32_t)strlen(s));
}

static void fill(uint8_t *p, uint32_t len, uint8_t c)
{
    memset(p, c, len);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_inorder(void)
{
    g_test = "inorder";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 1000, REASM_POLICY_BSD, 1);
    CHECK(sizeof(struct reasm_dir) == 32);

    seg_str(&ctx, &d, r, 1000, 0, "Hello, ");
    seg_str(&ctx, &d, r, 1000, 7, "world");
    seg_str(&ctx, &d, r, 1000, 12, "!");
    CHECK_EQ(r->next, 13);
    CHECK(memcmp(r->stream, "Hello, world!", 13) == 0);
    CHECK_EQ(r->ndata, 3);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(d.next_off, 13);
    CHECK_EQ(d.next_seq, 1013);
    CHECK_EQ(reasm_held_bytes(&d), 13);
    CHECK_EQ(reasm_segments(&d, NULL, NULL, 0), 0);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_DELIVERED], 13);
    CHECK_EQ(ctx.counters[REASM_C_SEGMENTS], 3);
    uint8_t tmp[32];
    CHECK_EQ(reasm_copy(&d, 3, 20, tmp), 10);
    CHECK(memcmp(tmp, "lo, world!", 10) == 0);

    /* trimmed without ack: still held (only for rexmit comparison) */
    trim(&ctx, &d, r, 13);
    CHECK_EQ(reasm_held_bytes(&d), 13);
    /* acked part: trim frees below min(keep_from, acked) */
    reasm_ack(&ctx, &d, NULL, 1005);
    CHECK_EQ(d.acked_off, 5);
    CHECK_EQ(reasm_held_bytes(&d), 8);
    CHECK_EQ(reasm_copy(&d, 3, 20, tmp), 0);
    CHECK_EQ(reasm_copy(&d, 5, 20, tmp), 8);
    reasm_ack(&ctx, &d, NULL, 1013);
    CHECK_EQ(reasm_held_bytes(&d), 0);
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    CHECK_EQ(ctx.counters[REASM_C_GAPS], 0);
    reasm_release(&ctx, &d);
    free(r);
}

static void test_ooo_fill(void)
{
    g_test = "ooo_fill";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 5, REASM_POLICY_BSD, 1);

    seg_str(&ctx, &d, r, 5, 5, "world");
    CHECK_EQ(r->ndata, 0);
    CHECK_EQ(reasm_held_bytes(&d), 5);
    uint64_t offs[4];
    uint32_t lens[4];
    CHECK_EQ(reasm_segments(&d, offs, lens, 4), 1);
    CHECK_EQ(offs[0], 5);
    CHECK_EQ(lens[0], 5);
    seg_str(&ctx, &d, r, 5, 12, "!!");
    CHECK_EQ(reasm_segments(&d, offs, lens, 4), 2);
    CHECK_EQ(ctx.counters[REASM_C_OOO_SEGMENTS], 2);
    seg_str(&ctx, &d, r, 5, 0, "hello");
    CHECK_EQ(r->next, 10);
    CHECK(memcmp(r->stream, "helloworld", 10) == 0);
    CHECK_EQ(reasm_segments(&d, offs, lens, 4), 1);
    seg_str(&ctx, &d, r, 5, 10, "XY");
    CHECK_EQ(r->next, 14);
    CHECK(memcmp(r->stream, "helloworldXY!!", 14) == 0);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->nrx, 0);
    CHECK_EQ(reasm_segments(&d, offs, lens, 4), 0);
    CHECK_EQ(reasm_held_bytes(&d), 14);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    CHECK(d.buf == NULL);
    free(r);
}

static void test_reversed12(void)
{
    g_test = "reversed12";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 77, REASM_POLICY_LINUX, 1);
    uint8_t msg[12 * 10];
    for (unsigned i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)('a' + i % 26);
    for (int i = 11; i >= 0; i--) {
        seg(&ctx, &d, r, 77, (uint64_t)i * 10, msg + i * 10, 10);
        if (i > 0)
            CHECK_EQ(r->next, 0);
    }
    CHECK_EQ(r->next, 120);
    CHECK(memcmp(r->stream, msg, 120) == 0);
    CHECK_EQ(r->ndata, 12);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(ctx.counters[REASM_C_OOO_SEGMENTS], 11);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_BYTES], 0);
    reasm_ack(&ctx, &d, NULL, 77 + 120);
    trim(&ctx, &d, r, 120);
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_rexmit(void)
{
    g_test = "rexmit";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 100, REASM_POLICY_LAST, 1);

    seg_str(&ctx, &d, r, 100, 0, "0123456789");
    /* exact retransmission */
    seg_str(&ctx, &d, r, 100, 0, "0123456789");
    CHECK_EQ(r->nrx, 1);
    CHECK_EQ(r->rx[0].off, 0);
    CHECK_EQ(r->rx[0].len, 10);
    CHECK_EQ(r->rx[0].inconsistent, 0);
    CHECK(r->rx[0].has_old);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_SEGMENTS], 1);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_BYTES], 10);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_INCONSISTENT], 0);
    CHECK_EQ(r->ndata, 1);

    /* different bytes: inconsistent, both versions, stream unchanged (even with LAST) */
    seg_str(&ctx, &d, r, 100, 2, "abcd");
    CHECK_EQ(r->nrx, 2);
    CHECK_EQ(r->rx[1].off, 2);
    CHECK_EQ(r->rx[1].len, 4);
    CHECK_EQ(r->rx[1].inconsistent, 1);
    CHECK(memcmp(r->rx[1].old, "2345", 4) == 0);
    CHECK(memcmp(r->rx[1].nw, "abcd", 4) == 0);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_INCONSISTENT], 4);
    uint8_t tmp[16];
    CHECK_EQ(reasm_copy(&d, 0, 10, tmp), 10);
    CHECK(memcmp(tmp, "0123456789", 10) == 0);
    CHECK_EQ(r->next, 10);

    /* one differing byte counted as one */
    seg_str(&ctx, &d, r, 100, 0, "01x3");
    CHECK_EQ(r->rx[2].inconsistent, 1);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_INCONSISTENT], 5);

    /* shorter rexmit (inside) */
    seg_str(&ctx, &d, r, 100, 3, "34");
    CHECK_EQ(r->rx[3].inconsistent, 0);
    CHECK_EQ(r->rx[3].len, 2);

    /* longer rexmit with new bytes at the tail */
    seg_str(&ctx, &d, r, 100, 6, "6789ABCD");
    CHECK_EQ(r->nrx, 5);
    CHECK_EQ(r->rx[4].off, 6);
    CHECK_EQ(r->rx[4].len, 4);
    CHECK_EQ(r->rx[4].inconsistent, 0);
    CHECK_EQ(r->next, 14);
    CHECK(memcmp(r->stream, "0123456789ABCD", 14) == 0);
    CHECK_EQ(ctx.counters[REASM_C_OVERLAP_SEGMENTS], 1);

    /* longer rexmit, old part different, new tail: stream keeps old, tail appended */
    seg_str(&ctx, &d, r, 100, 12, "zzEF");
    CHECK_EQ(r->rx[5].off, 12);
    CHECK_EQ(r->rx[5].len, 2);
    CHECK_EQ(r->rx[5].inconsistent, 1);
    CHECK(memcmp(r->rx[5].old, "CD", 2) == 0);
    CHECK(memcmp(r->rx[5].nw, "zz", 2) == 0);
    CHECK_EQ(r->next, 16);
    CHECK(memcmp(r->stream, "0123456789ABCDEF", 16) == 0);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->rx_errors, 0);

    /* rexmit after trim+ack: unverifiable */
    reasm_ack(&ctx, &d, NULL, 100 + 8);
    trim(&ctx, &d, r, 16);
    seg_str(&ctx, &d, r, 100, 4, "456789");
    CHECK_EQ(r->nrx, 8);
    CHECK_EQ(r->rx[6].off, 4);
    CHECK_EQ(r->rx[6].len, 4);
    CHECK(!r->rx[6].has_old);
    CHECK_EQ(r->rx[6].inconsistent, 0);
    CHECK_EQ(r->rx[7].off, 8);
    CHECK_EQ(r->rx[7].len, 2);
    CHECK(r->rx[7].has_old);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 4);
    CHECK_EQ(r->rx_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* Rexmit over held out-of-order data spanning adjacent chunks: one report, old is a stable copy. */
static void test_rexmit_ooo_runs(void)
{
    g_test = "rexmit_ooo_runs";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 0, REASM_POLICY_LAST, 1);
    seg_str(&ctx, &d, r, 0, 10, "aaaaa");
    seg_str(&ctx, &d, r, 0, 15, "bbbbb");
    seg_str(&ctx, &d, r, 0, 25, "ccccc");
    /* covers [12,27): adjacent run [12,20), hole [20,25), run [25,27) */
    seg_str(&ctx, &d, r, 0, 12, "XXXXXXXXXXXXXXX");
    CHECK_EQ(r->nrx, 2);
    CHECK_EQ(r->rx[0].off, 12);
    CHECK_EQ(r->rx[0].len, 8);
    CHECK(memcmp(r->rx[0].old, "aaabbbbb", 8) == 0);
    CHECK(memcmp(r->rx[0].nw, "XXXXXXXX", 8) == 0);
    CHECK_EQ(r->rx[0].inconsistent, 1);
    CHECK_EQ(r->rx[1].off, 25);
    CHECK_EQ(r->rx[1].len, 2);
    CHECK(memcmp(r->rx[1].old, "cc", 2) == 0);
    CHECK_EQ(ctx.counters[REASM_C_OVERLAP_SEGMENTS], 1);
    seg_str(&ctx, &d, r, 0, 0, "0123456789");
    CHECK_EQ(r->next, 30);
    CHECK(memcmp(r->stream, "0123456789aaXXXXXXXXXXXXXXXccc", 30) == 0);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->rx_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* Overlap policies: old segment [10,20) held out of order, a new one overlapping it, then flush. */
static void test_policies(void)
{
    static const struct {
        const char *name;
        uint32_t ns, ne;
        uint8_t win[REASM_POLICY_COUNT]; /* 1: new data kept */
    } cases[] = {
        /*                       FIRST LAST BSD LINUX OLD_LINUX WINDOWS VISTA SOLARIS */
        { "before-same-end", 5, 20, { 0, 1, 1, 1, 1, 1, 0, 1 } },
        { "same-start-longer", 10, 25, { 0, 1, 0, 1, 1, 0, 0, 1 } },
        { "identical", 10, 20, { 0, 1, 0, 0, 1, 0, 0, 1 } },
        { "after-longer", 15, 25, { 0, 1, 0, 0, 0, 0, 0, 1 } },
        { "before-shorter", 5, 15, { 0, 1, 1, 1, 1, 1, 0, 0 } },
        { "inside", 12, 18, { 0, 1, 0, 0, 0, 0, 0, 0 } },
        { "envelops", 5, 25, { 0, 1, 1, 1, 1, 1, 0, 1 } },
        { "same-start-shorter", 10, 15, { 0, 1, 0, 0, 0, 0, 0, 0 } },
        { "same-end-after", 15, 20, { 0, 1, 0, 0, 0, 0, 0, 0 } },
    };
    static const char *pname[] = { "FIRST", "LAST", "BSD", "LINUX", "OLD_LINUX", "WINDOWS", "VISTA",
                                   "SOLARIS" };
    char name[96];
    for (unsigned c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (unsigned p = 0; p < REASM_POLICY_COUNT; p++) {
            snprintf(name, sizeof(name), "policy %s %s", pname[p], cases[c].name);
            g_test = name;
            struct reasm_ctx ctx;
            struct rec *r = rec_new();
            struct reasm_dir d;
            uint32_t isn = 0xfffffff8u; /* also crosses the wrap */
            reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
            reasm_dir_init(&d, isn, (uint8_t)p, 1);
            uint8_t old[10], nw[32];
            fill(old, 10, 'o');
            fill(nw, sizeof(nw), 'n');
            seg(&ctx, &d, r, isn, 10, old, 10);
            uint32_t nl = cases[c].ne - cases[c].ns;
            seg(&ctx, &d, r, isn, cases[c].ns, nw, nl);
            /* one inconsistent report for the overlap */
            uint32_t os = cases[c].ns > 10 ? cases[c].ns : 10;
            uint32_t oe = cases[c].ne < 20 ? cases[c].ne : 20;
            CHECK_EQ(r->nrx, 1);
            CHECK_EQ(r->rx[0].off, os);
            CHECK_EQ(r->rx[0].len, oe - os);
            CHECK_EQ(r->rx[0].inconsistent, 1);
            CHECK(r->rx[0].old[0] == 'o' && r->rx[0].nw[0] == 'n');
            reasm_flush(&ctx, &d, NULL);
            uint32_t hi = cases[c].ne > 20 ? cases[c].ne : 20;
            uint32_t lo = cases[c].ns < 10 ? cases[c].ns : 10;
            CHECK_EQ(r->next, hi);
            CHECK_EQ(r->gap_bytes, lo);
            CHECK_EQ(r->order_errors, 0);
            int ok = 1;
            for (uint32_t i = lo; i < hi; i++) {
                uint8_t want;
                if (i >= os && i < oe)
                    want = cases[c].win[p] ? 'n' : 'o';
                else
                    want = (i >= 10 && i < 20) ? 'o' : 'n';
                if (r->stream[i] != want)
                    ok = 0;
            }
            CHECK(ok);
            CHECK_EQ(r->rx_errors, 0);
            reasm_release(&ctx, &d);
            CHECK_EQ(ctx.mem_used, 0);
            free(r);
        }
    }
}

/* After a replacement, the new owner's bounds drive later decisions (BSD: new wins if it starts
 * before the segment that owns the bytes). */
static void test_policy_owner(void)
{
    g_test = "policy_owner";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 0, REASM_POLICY_BSD, 1);
    seg_str(&ctx, &d, r, 0, 10, "AAAAAAAAAA");      /* [10,20) */
    seg_str(&ctx, &d, r, 0, 5, "BBBBBBBBBB");       /* [5,15): starts before A, wins [10,15) */
    seg_str(&ctx, &d, r, 0, 8, "CCCCCCCCCCCC");     /* [8,20): vs B bytes (B starts at 5): keep B;
                                                       vs A bytes [15,20) (A starts 10): C wins */
    seg_str(&ctx, &d, r, 0, 0, "0123456789");       /* [0,10): fills, BSD vs B [5,10): 0 < 5 wins */
    CHECK_EQ(r->next, 20);
    CHECK(memcmp(r->stream, "01234567" "89" "BBBBB" "CCCCC", 20) == 0);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->rx_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_gap_ack(void)
{
    g_test = "gap_ack";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 1, REASM_POLICY_BSD, 1);
    seg_str(&ctx, &d, r, 1, 0, "0123456789");
    seg_str(&ctx, &d, r, 1, 20, "KLMNOPQRST");
    seg_str(&ctx, &d, r, 1, 35, "zzzzz");
    reasm_ack(&ctx, &d, NULL, 1 + 10); /* no hole passed */
    CHECK_EQ(r->ngaps, 0);
    reasm_ack(&ctx, &d, NULL, 1 + 25); /* passes hole [10,20) */
    CHECK_EQ(r->ngaps, 1);
    CHECK_EQ(r->gap_off[0], 10);
    CHECK_EQ(r->gap_len[0], 10);
    CHECK_EQ(r->next, 30);
    CHECK(memcmp(r->stream + 20, "KLMNOPQRST", 10) == 0);
    CHECK_EQ(d.acked_off, 25);
    /* backwards: ignored */
    reasm_ack(&ctx, &d, NULL, 1 + 15);
    CHECK_EQ(d.acked_off, 25);
    /* more than 2^31 ahead is behind in sequence space: ignored */
    reasm_ack(&ctx, &d, NULL, 1 + 30 + (1u << 31) + 5);
    CHECK_EQ(d.acked_off, 25);
    CHECK_EQ(r->next, 30);
    /* passes [30,35), delivers [35,40), then a hole [40,45) up to the ack */
    reasm_ack(&ctx, &d, NULL, 1 + 45);
    CHECK_EQ(r->ngaps, 3);
    CHECK_EQ(r->gap_off[1], 30);
    CHECK_EQ(r->gap_len[1], 5);
    CHECK_EQ(r->gap_off[2], 40);
    CHECK_EQ(r->gap_len[2], 5);
    CHECK_EQ(r->next, 45);
    CHECK_EQ(d.next_off, 45);
    CHECK_EQ(d.next_seq, 46);
    CHECK_EQ(ctx.counters[REASM_C_GAPS], 3);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_GAP], 20);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_DELIVERED], 25);
    CHECK_EQ(r->order_errors, 0);
    /* late segment for a gapped range: retransmission, unverifiable */
    seg_str(&ctx, &d, r, 1, 12, "ab");
    CHECK(!r->rx[0].has_old);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 2);
    trim(&ctx, &d, r, 45);
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_gap_flush(void)
{
    g_test = "gap_flush";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 500, REASM_POLICY_FIRST, 1);
    seg_str(&ctx, &d, r, 500, 0, "aaaaa");
    seg_str(&ctx, &d, r, 500, 10, "bbbbb");
    seg_str(&ctx, &d, r, 500, 20, "ccccc");
    seg_str(&ctx, &d, r, 500, 25, "ddddd");
    reasm_flush(&ctx, &d, NULL);
    CHECK_EQ(r->ngaps, 2);
    CHECK_EQ(r->gap_off[0], 5);
    CHECK_EQ(r->gap_len[0], 5);
    CHECK_EQ(r->gap_off[1], 15);
    CHECK_EQ(r->gap_len[1], 5);
    CHECK_EQ(r->next, 30);
    CHECK(memcmp(r->stream + 20, "cccccddddd", 10) == 0);
    CHECK(memcmp(r->stream + 10, "bbbbb", 5) == 0);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(reasm_segments(&d, NULL, NULL, 0), 0);
    reasm_flush(&ctx, &d, NULL); /* idempotent */
    CHECK_EQ(r->ngaps, 2);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_wrap(void)
{
    g_test = "wrap";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    const uint32_t isn = 0xfffffff0u;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, isn, REASM_POLICY_BSD, 1);
    uint8_t msg[64];
    for (int i = 0; i < 64; i++)
        msg[i] = (uint8_t)(i * 7 + 1);
    seg(&ctx, &d, r, isn, 0, msg, 10);        /* before the wrap */
    seg(&ctx, &d, r, isn, 30, msg + 30, 20);  /* after the wrap (seq 14..33) */
    seg(&ctx, &d, r, isn, 10, msg + 10, 12);  /* crosses 2^32 */
    CHECK_EQ(r->next, 22);
    CHECK_EQ(d.next_seq, (uint32_t)(isn + 22));
    CHECK(d.next_seq < isn);
    seg(&ctx, &d, r, isn, 5, msg + 5, 20);    /* rexmit across the wrap plus new tail */
    CHECK_EQ(r->next, 25);
    CHECK_EQ(r->rx[0].off, 5);
    CHECK_EQ(r->rx[0].len, 17);
    CHECK_EQ(r->rx[0].inconsistent, 0);
    /* ack after the wrap passes the hole [25,30) */
    reasm_ack(&ctx, &d, NULL, isn + 40);
    CHECK_EQ(r->ngaps, 1);
    CHECK_EQ(r->gap_off[0], 25);
    CHECK_EQ(r->gap_len[0], 5);
    CHECK_EQ(r->next, 50);
    CHECK(memcmp(r->stream, msg, 25) == 0);
    CHECK(memcmp(r->stream + 30, msg + 30, 20) == 0);
    CHECK_EQ(d.acked_off, 40);
    seg(&ctx, &d, r, isn, 50, msg + 50, 14);
    CHECK_EQ(r->next, 64);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->rx_errors, 0);

    /* a long stream: offsets keep growing past 2^32 worth of sequence space? exercise the anchor
     * by moving next_off far (gaps are cheap) */
    for (int i = 0; i < 6; i++)
        reasm_ack(&ctx, &d, NULL, d.next_seq + (1u << 30));
    CHECK(d.next_off > (1ull << 32));
    uint64_t base = d.next_off;
    uint32_t s0 = d.next_seq;
    reasm_segment(&ctx, &d, NULL, s0 + 4, msg, 4);
    reasm_segment(&ctx, &d, NULL, s0, msg + 60, 4);
    CHECK_EQ(r->next, base + 8);
    CHECK_EQ(r->order_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_nobuffer(void)
{
    g_test = "nobuffer";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 9, REASM_POLICY_BSD, 0);
    static const uint8_t a[] = "abcdefghij";
    seg(&ctx, &d, r, 9, 0, a, 10);
    CHECK(r->last_data == a); /* zero copy */
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    seg(&ctx, &d, r, 9, 20, a, 10); /* out of order: dropped */
    CHECK(d.buf == NULL);
    CHECK_EQ(r->next, 10);
    CHECK_EQ(ctx.counters[REASM_C_OOO_SEGMENTS], 1);
    seg(&ctx, &d, r, 9, 5, a + 5, 5); /* rexmit: unverifiable */
    CHECK_EQ(r->nrx, 1);
    CHECK(!r->rx[0].has_old);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 5);
    seg(&ctx, &d, r, 9, 8, a, 6); /* partial rexmit + new */
    CHECK_EQ(r->next, 14);
    CHECK(r->last_data == a + 2);
    reasm_ack(&ctx, &d, NULL, 9 + 30);
    CHECK_EQ(r->ngaps, 1);
    CHECK_EQ(r->gap_off[0], 14);
    CHECK_EQ(r->gap_len[0], 16);
    CHECK_EQ(r->order_errors, 0);
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_limits(void)
{
    struct reasm_ctx ctx;
    struct reasm_dir d;
    struct rec *r;
    uint8_t buf[4000];
    memset(buf, 'q', sizeof(buf));

    /* dir_limit: out-of-order data refused beyond 100 held bytes */
    g_test = "limit_dir";
    r = rec_new();
    reasm_ctx_init(&ctx, &CB, r, 0, 100, 0);
    reasm_dir_init(&d, 0, REASM_POLICY_BSD, 1);
    seg(&ctx, &d, r, 0, 10, buf, 80);
    seg(&ctx, &d, r, 0, 100, buf, 50);
    CHECK_EQ(r->nlim, 1);
    CHECK_EQ(r->lim[0].why, REASM_LIMIT_DIR_BUF);
    CHECK_EQ(r->lim[0].off, 100);
    CHECK_EQ(r->lim[0].len, 50);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_DIR_BUF], 1);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_DROPPED_LIMIT], 50);
    CHECK_EQ(reasm_held_bytes(&d), 80);
    /* partially overlapping: only the fresh part is refused, reported per range */
    seg(&ctx, &d, r, 0, 5, buf, 105); /* [5,110): fresh [5,10) and [90,110): 80 + 25 > 100 */
    CHECK_EQ(r->nlim, 3);
    CHECK_EQ(r->lim[1].off, 5);
    CHECK_EQ(r->lim[1].len, 5);
    CHECK_EQ(r->lim[2].off, 90);
    CHECK_EQ(r->lim[2].len, 20);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_DROPPED_LIMIT], 75);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_DIR_BUF], 2);
    seg(&ctx, &d, r, 0, 5, buf, 100); /* [5,105): 80 + 20 fits exactly */
    CHECK_EQ(r->nlim, 3);
    CHECK_EQ(reasm_held_bytes(&d), 100);
    /* in-order data is always taken */
    seg(&ctx, &d, r, 0, 0, buf, 10);
    CHECK_EQ(r->next, 105);
    reasm_ack(&ctx, &d, NULL, 150); /* refused bytes become a gap */
    CHECK_EQ(r->ngaps, 1);
    CHECK_EQ(r->gap_off[0], 105);
    CHECK_EQ(r->gap_len[0], 45);
    CHECK_EQ(r->order_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);

    /* eviction of handled, unacked retained bytes before refusing out-of-order data */
    g_test = "limit_evict";
    r = rec_new();
    reasm_ctx_init(&ctx, &CB, r, 0, 100, 0);
    reasm_dir_init(&d, 0, REASM_POLICY_BSD, 1);
    seg(&ctx, &d, r, 0, 0, buf, 60);
    trim(&ctx, &d, r, 60); /* handled, not acked: kept for rexmit comparison */
    CHECK_EQ(reasm_held_bytes(&d), 60);
    seg(&ctx, &d, r, 0, 70, buf, 60);
    CHECK_EQ(r->nlim, 0);
    CHECK_EQ(reasm_held_bytes(&d), 60);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_DIR_BUF], 1);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_DROPPED_LIMIT], 60);
    seg(&ctx, &d, r, 0, 0, buf, 10); /* rexmit of evicted bytes */
    CHECK(!r->rx[0].has_old);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 10);
    /* unhandled retained bytes are never evicted */
    seg(&ctx, &d, r, 0, 60, buf, 10); /* delivers [60,130), not handled yet (keep_from 60) */
    CHECK_EQ(r->next, 130);
    CHECK_EQ(reasm_held_bytes(&d), 70);
    seg(&ctx, &d, r, 0, 140, buf, 40); /* 70 + 40 > 100 and nothing evictable: refused */
    CHECK_EQ(r->nlim, 1);
    CHECK_EQ(reasm_held_bytes(&d), 70);
    CHECK(ptrs_stable(r));
    trim(&ctx, &d, r, 130);
    seg(&ctx, &d, r, 0, 140, buf, 40); /* now evicts the oldest handled chunk ([60,70)) and holds */
    CHECK_EQ(r->nlim, 1);
    CHECK_EQ(reasm_held_bytes(&d), 100);
    CHECK_EQ(ctx.counters[REASM_C_BYTES_DROPPED_LIMIT], 60 + 40 + 10);
    /* in-order data beyond the limit: delivered and retained, then handled bytes evicted */
    seg(&ctx, &d, r, 0, 130, buf, 10);
    CHECK_EQ(r->next, 180);
    trim(&ctx, &d, r, 180);
    seg(&ctx, &d, r, 0, 180, buf, 120);
    CHECK_EQ(r->next, 300);
    CHECK_EQ(reasm_held_bytes(&d), 120);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);

    /* memcap: global, across directions */
    g_test = "limit_memcap";
    r = rec_new();
    struct reasm_dir d2;
    reasm_ctx_init(&ctx, &CB, r, 4000, 0, 0);
    reasm_dir_init(&d, 0, REASM_POLICY_BSD, 1);
    reasm_dir_init(&d2, 0, REASM_POLICY_BSD, 1);
    seg(&ctx, &d, r, 0, 10, buf, 1000);
    CHECK_EQ(r->nlim, 0);
    CHECK(ctx.mem_used > 1000 && ctx.mem_used < 2000);
    seg(&ctx, &d2, r, 0, 10, buf, 1500);
    CHECK_EQ(r->nlim, 0);
    seg(&ctx, &d2, r, 0, 3000, buf, 1000);
    CHECK_EQ(r->nlim, 1);
    CHECK_EQ(r->lim[0].why, REASM_LIMIT_MEMCAP);
    CHECK_EQ(r->lim[0].off, 3000);
    CHECK_EQ(r->lim[0].len, 1000);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_MEMCAP], 1);
    CHECK(ctx.mem_used <= 4000);
    reasm_release(&ctx, &d);
    seg(&ctx, &d2, r, 0, 3000, buf, 1000); /* room again */
    CHECK_EQ(r->nlim, 1);
    reasm_flush(&ctx, &d2, NULL);
    reasm_release(&ctx, &d2);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);

    /* max_segments */
    g_test = "limit_segments";
    r = rec_new();
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 2);
    reasm_dir_init(&d, 0, REASM_POLICY_LAST, 1);
    seg(&ctx, &d, r, 0, 10, buf, 5);
    seg(&ctx, &d, r, 0, 20, buf, 5);
    seg(&ctx, &d, r, 0, 30, buf, 5);
    CHECK_EQ(r->nlim, 1);
    CHECK_EQ(r->lim[0].why, REASM_LIMIT_SEGMENTS);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_SEGMENTS], 1);
    seg(&ctx, &d, r, 0, 15, buf, 5); /* joins the two held chunks' gap: 3 chunks */
    CHECK_EQ(r->nlim, 2);
    /* replacement not increasing the count still applies (LAST): whole [20,25) replaced */
    seg_str(&ctx, &d, r, 0, 20, "ZZZZZ");
    CHECK_EQ(r->nlim, 2);
    seg(&ctx, &d, r, 0, 0, buf, 10); /* fill: in order, not limited */
    CHECK_EQ(r->next, 15);
    reasm_flush(&ctx, &d, NULL);
    CHECK_EQ(r->next, 25);
    CHECK(memcmp(r->stream + 20, "ZZZZZ", 5) == 0);
    CHECK_EQ(r->order_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

static void test_trim_mem(void)
{
    g_test = "trim_mem";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 12345, REASM_POLICY_BSD, 1);
    uint8_t pkt[1460];
    for (unsigned i = 0; i < sizeof(pkt); i++)
        pkt[i] = (uint8_t)i;
    uint64_t peak = 0;
    for (int i = 0; i < 200; i++) {
        seg(&ctx, &d, r, 12345, (uint64_t)i * 1460, pkt, 1460);
        if (ctx.mem_used > peak)
            peak = ctx.mem_used;
        if (i % 4 == 3) {
            reasm_ack(&ctx, &d, NULL, 12345 + (uint32_t)(i - 1) * 1460);
            trim(&ctx, &d, r, d.next_off);
        }
    }
    CHECK(peak < 64 * 1024);
    CHECK(reasm_held_bytes(&d) <= 4 * 1460);
    CHECK_EQ(r->delivered, 200u * 1460);
    reasm_ack(&ctx, &d, NULL, 12345 + 200u * 1460);
    trim(&ctx, &d, r, d.next_off);
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);

    /* scratch copies (rexmit over several chunks) are freed by trim too */
    seg(&ctx, &d, r, 12345, 200u * 1460 + 100, pkt, 100);
    seg(&ctx, &d, r, 12345, 200u * 1460 + 200, pkt, 100);
    seg(&ctx, &d, r, 12345, 200u * 1460 + 150, pkt, 100);
    CHECK(ctx.mem_used > 0);
    reasm_release(&ctx, &d);
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}


/* One segment overlapping many held chunks (plan built on the heap), and reasm_segments merging. */
static void test_many_chunks(void)
{
    g_test = "many_chunks";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 3, REASM_POLICY_LAST, 1);
    uint8_t a[200], z[200];
    for (int i = 0; i < 200; i++) {
        a[i] = (uint8_t)('A' + i % 26);
        z[i] = (uint8_t)('a' + i % 26);
    }
    /* 40 chunks of 2 bytes with 1-byte holes: [10+3i, 12+3i) */
    for (int i = 0; i < 40; i++)
        seg(&ctx, &d, r, 3, 10 + 3 * (uint64_t)i, a + 10 + 3 * i, 2);
    CHECK_EQ(reasm_segments(&d, NULL, NULL, 0), 40);
    /* adjacent chunks are reported merged */
    seg(&ctx, &d, r, 3, 12, a + 12, 1);
    CHECK_EQ(reasm_segments(&d, NULL, NULL, 0), 39);
    uint64_t offs[2];
    uint32_t lens[2];
    CHECK_EQ(reasm_segments(&d, offs, lens, 2), 39);
    CHECK_EQ(offs[0], 10);
    CHECK_EQ(lens[0], 5);
    CHECK_EQ(offs[1], 16);
    CHECK_EQ(reasm_next_held(&d, 0), 10);
    CHECK_EQ(reasm_next_held(&d, 12), 12);
    CHECK_EQ(reasm_next_held(&d, 15), 16);
    CHECK_EQ(reasm_next_held(&d, 200), UINT64_MAX);
    /* a different version over everything from 11 on: LAST replaces, 38 reports (runs) */
    seg(&ctx, &d, r, 3, 11, z + 11, 120);
    /* [10,11) still owned by the old segment, [11,131) by the new one: one merged range */
    CHECK_EQ(reasm_segments(&d, offs, lens, 2), 1);
    CHECK_EQ(offs[0], 10);
    CHECK_EQ(lens[0], 121);
    CHECK_EQ(reasm_held_bytes(&d), 121);
    seg(&ctx, &d, r, 3, 0, a, 10);
    CHECK_EQ(r->next, 131);
    CHECK(r->stream[10] == a[10]);
    CHECK(memcmp(r->stream + 11, z + 11, 120) == 0);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->rx_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* Limits refusing the fresh bytes still let the policy replace held ones (no growth). */
static void test_limit_replace(void)
{
    g_test = "limit_replace";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    uint8_t o[10], n[20];
    memset(o, 'o', sizeof(o));
    memset(n, 'n', sizeof(n));
    reasm_ctx_init(&ctx, &CB, r, 0, 12, 0);
    reasm_dir_init(&d, 0, REASM_POLICY_LAST, 1);
    seg(&ctx, &d, r, 0, 10, o, 10);
    seg(&ctx, &d, r, 0, 5, n, 20); /* [5,25): fresh 10 bytes refused, [10,20) replaced */
    CHECK_EQ(r->nlim, 2);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_DIR_BUF], 1);
    CHECK_EQ(reasm_held_bytes(&d), 10);
    reasm_flush(&ctx, &d, NULL);
    CHECK_EQ(r->next, 20);
    CHECK(memcmp(r->stream + 10, "nnnnnnnnnn", 10) == 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);

    /* a replacement that would split a chunk beyond max_segments: old bytes stay, counted */
    g_test = "limit_replace_split";
    r = rec_new();
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 1);
    reasm_dir_init(&d, 0, REASM_POLICY_LAST, 1);
    seg(&ctx, &d, r, 0, 10, o, 10);
    seg(&ctx, &d, r, 0, 12, n, 3);
    CHECK_EQ(ctx.counters[REASM_C_LIMIT_SEGMENTS], 1);
    CHECK_EQ(r->nlim, 0); /* no byte was refused */
    CHECK_EQ(r->nrx, 1);
    reasm_flush(&ctx, &d, NULL);
    CHECK(memcmp(r->stream + 10, "oooooooooo", 10) == 0);
    /* whole-chunk replacement is allowed (count unchanged) */
    reasm_release(&ctx, &d);
    reasm_dir_init(&d, 0, REASM_POLICY_LAST, 1);
    memset(r, 0, sizeof(*r));
    seg(&ctx, &d, r, 0, 10, o, 10);
    seg(&ctx, &d, r, 0, 10, n, 10);
    reasm_flush(&ctx, &d, NULL);
    CHECK(memcmp(r->stream + 10, "nnnnnnnnnn", 10) == 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* Segments before the first byte, mid-stream pickup, large segments, ack/copy on empty dirs. */
static void test_edges(void)
{
    g_test = "edges";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 1000, REASM_POLICY_BSD, 1);
    uint8_t tmp[8];
    CHECK_EQ(reasm_copy(&d, 0, 8, tmp), 0);
    CHECK_EQ(reasm_next_held(&d, 0), UINT64_MAX);
    CHECK_EQ(reasm_held_bytes(&d), 0);
    reasm_flush(&ctx, &d, NULL);
    reasm_trim(&ctx, &d, 100);
    reasm_ack(&ctx, &d, NULL, 1000); /* no progress */
    CHECK_EQ(d.acked_off, 0);
    reasm_segment(&ctx, &d, NULL, 990, (const uint8_t *)"0123456789", 10); /* all before the start */
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 10);
    reasm_segment(&ctx, &d, NULL, 995, (const uint8_t *)"0123456789", 10); /* straddles the start */
    CHECK_EQ(r->next, 5);
    CHECK(memcmp(r->stream, "56789", 5) == 0);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 15);
    reasm_segment(&ctx, &d, NULL, 1005, NULL, 0); /* empty */
    CHECK_EQ(r->next, 5);
    /* large in-order segments */
    static uint8_t big[200000];
    for (unsigned i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 31);
    reasm_segment(&ctx, &d, NULL, 1005, big, sizeof(big));
    reasm_segment(&ctx, &d, NULL, 1005 + sizeof(big), big, 100);
    CHECK_EQ(d.next_off, 5 + sizeof(big) + 100);
    CHECK_EQ(reasm_held_bytes(&d), 5 + sizeof(big) + 100);
    CHECK_EQ(r->order_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);

    /* picked up mid-stream without reasm_dir_init (zeroed direction) */
    struct reasm_dir z;
    memset(&z, 0, sizeof(z));
    memset(r, 0, sizeof(*r));
    reasm_ack(&ctx, &z, NULL, 5); /* ignored: not initialized */
    CHECK_EQ(z.acked_off, 0);
    z.buffering = 1;
    reasm_segment(&ctx, &z, NULL, 0xfffffffeu, (const uint8_t *)"abcd", 4);
    CHECK_EQ(r->next, 4);
    CHECK_EQ(z.next_seq, 2);
    reasm_release(&ctx, &z);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* Every allocation failing at some point: nothing leaks, the stream stays ordered, lost bytes are
 * reported as limits and become gaps. */
static void test_alloc_failures(void)
{
    if (!FAULT_INJECTION)
        return;
    char name[64];
    for (long k = 0; k < 40; k++) {
        snprintf(name, sizeof(name), "alloc_fail after %ld", k);
        g_test = name;
        struct reasm_ctx ctx;
        struct rec *r = rec_new();
        struct reasm_dir d;
        uint8_t msg[400];
        for (int i = 0; i < 400; i++)
            msg[i] = (uint8_t)(i * 13 + 5);
        reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
        reasm_dir_init(&d, 7, REASM_POLICY_LAST, 1);
        g_fail_after = k;
        static const uint16_t plan[][2] = { { 100, 50 }, { 200, 40 }, { 0, 60 }, { 120, 100 },
                                            { 300, 20 }, { 60, 10 },  { 70, 40 }, { 110, 30 },
                                            { 250, 60 }, { 260, 5 },  { 330, 70 } };
        for (unsigned i = 0; i < sizeof(plan) / sizeof(plan[0]); i++)
            seg(&ctx, &d, r, 7, plan[i][0], msg + plan[i][0], plan[i][1]);
        g_fail_after = -1;
        reasm_flush(&ctx, &d, NULL);
        reasm_ack(&ctx, &d, NULL, 7 + 400);
        CHECK_EQ(r->next, 400);
        CHECK_EQ(r->order_errors, 0);
        CHECK_EQ(r->rx_errors, 0);
        int bad = 0;
        for (int i = 0; i < 400; i++)
            if (!r->is_gap[i] && r->stream[i] != msg[i])
                bad++;
        CHECK_EQ(bad, 0);
        /* the plan leaves holes [240,250) and [320,330); anything more was refused and reported */
        CHECK(r->gap_bytes >= 20);
        if (r->gap_bytes > 20)
            CHECK(ctx.counters[REASM_C_LIMIT_MEMCAP] > 0 && r->nlim > 0);
        if (k >= 30)
            CHECK_EQ(r->gap_bytes, 20);
        reasm_release(&ctx, &d);
        CHECK_EQ(ctx.mem_used, 0);
        free(r);
    }
}

/* ---- fuzz --------------------------------------------------------------------------------- */

static uint64_t rng_state;
static uint32_t rnd(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}
static uint32_t rnd_n(uint32_t n) { return n ? rnd() % n : 0; }

struct fseg {
    uint32_t off, len;
    int version; /* 0: original bytes, else an alternative version */
};

#define FUZZ_MAX 6000
#define FUZZ_SEGS 1200

/* The segments' source bytes; with `borrow`, the stable region reassembly may hold by reference. */
struct fsrc {
    uint8_t orig[FUZZ_MAX];
    uint8_t alt[3][FUZZ_MAX];
};

/* borrow: the sources are a stable region (held by reference); at a random point the region goes
 * away (reasm_unborrow, then its bytes are overwritten) and the rest comes from a copy. */
static void fuzz(int iterations, int with_limits, int with_versions, int borrow)
{
    static struct fsrc srcs[2];
    static uint8_t first[FUZZ_MAX], last[FUZZ_MAX], seen[FUZZ_MAX];
    static uint8_t held_before[FUZZ_MAX];
    static struct fseg segs[FUZZ_SEGS];
    char name[64];
    for (int it = 0; it < iterations; it++) {
        snprintf(name, sizeof(name), "fuzz%s%s%s #%d", with_limits ? " limits" : "",
                 with_versions ? " versions" : "", borrow ? " borrow" : "", it);
        g_test = name;
        struct fsrc *S = &srcs[0];
        uint8_t *orig = S->orig;
        uint8_t(*alt)[FUZZ_MAX] = S->alt;
        uint32_t n = 1 + rnd_n(FUZZ_MAX);
        for (uint32_t i = 0; i < n; i++) {
            orig[i] = (uint8_t)rnd();
            for (int v = 0; v < 3; v++)
                alt[v][i] = (uint8_t)rnd();
        }
        uint8_t policy = with_versions ? (rnd_n(2) ? REASM_POLICY_FIRST : REASM_POLICY_LAST)
                                       : (uint8_t)rnd_n(REASM_POLICY_COUNT);
        uint32_t isn = rnd_n(4) == 0 ? 0xffffffffu - rnd_n(3 * n) : rnd();
        /* segmentation: a covering pass plus random duplicates with other boundaries */
        uint32_t ns = 0, maxseg = 1 + rnd_n(400);
        if (maxseg < n / (FUZZ_SEGS / 2) + 1)
            maxseg = n / (FUZZ_SEGS / 2) + 1;
        for (uint32_t off = 0; off < n && ns < FUZZ_SEGS;) {
            uint32_t l = 1 + rnd_n(maxseg);
            if (l > n - off)
                l = n - off;
            segs[ns++] = (struct fseg){ off, l, 0 };
            off += l;
        }
        uint32_t dups = rnd_n(ns + 1);
        for (uint32_t i = 0; i < dups && ns < FUZZ_SEGS; i++) {
            uint32_t off = rnd_n(n);
            uint32_t l = 1 + rnd_n(maxseg);
            if (l > n - off)
                l = n - off;
            segs[ns++] = (struct fseg){ off, l, with_versions ? (int)rnd_n(4) : 0 };
        }
        for (uint32_t i = ns; i > 1; i--) {
            uint32_t j = rnd_n(i);
            struct fseg t = segs[i - 1];
            segs[i - 1] = segs[j];
            segs[j] = t;
        }

        struct reasm_ctx ctx;
        struct rec *r = rec_new();
        struct reasm_dir d;
        uint32_t dir_limit = with_limits ? 1 + rnd_n(3000) : 0;
        uint64_t memcap = with_limits && rnd_n(2) ? 2000 + rnd_n(8000) : 0;
        uint32_t maxsegs = with_limits && rnd_n(2) ? 1 + rnd_n(20) : 0;
        reasm_ctx_init(&ctx, &CB, r, memcap, dir_limit, maxsegs);
        if (borrow) {
            ctx.stable_lo = (const uint8_t *)&srcs[0];
            ctx.stable_hi = (const uint8_t *)(&srcs[0] + 1);
        }
        uint32_t switch_at = borrow && rnd_n(2) ? rnd_n(ns) : UINT32_MAX;
        reasm_dir_init(&d, isn, policy, 1);
        memset(seen, 0, n);
        if (with_versions) {
            r->expect = policy == REASM_POLICY_FIRST ? first : last;
            r->old_expect = held_before;
        } else {
            r->expect = orig;
        }
        uint32_t contig = 0;
        int reported = 0;
        for (uint32_t i = 0; i < ns; i++) {
            if (i == switch_at) {
                trim(&ctx, &d, r, r->next);
                uint64_t before = ctx.mem_used;
                reasm_unborrow(&ctx, &d, NULL);
                ctx.stable_lo = ctx.stable_hi = NULL;
                CHECK(ctx.mem_used <= before + 64 * 1024);
                srcs[1] = srcs[0];
                memset(&srcs[0], 0xa5, sizeof(srcs[0])); /* anything still borrowed now reads garbage */
                S = &srcs[1];
                orig = S->orig;
                alt = S->alt;
                if (!with_versions)
                    r->expect = orig;
            }
            const uint8_t *src = segs[i].version ? alt[segs[i].version - 1] : orig;
            /* model: first/last version of each byte, and the version held before this segment */
            for (uint32_t k = segs[i].off; k < segs[i].off + segs[i].len; k++) {
                held_before[k] = policy == REASM_POLICY_FIRST ? first[k] : last[k];
                if (!seen[k])
                    first[k] = src[k];
                last[k] = src[k];
                seen[k] = 1;
            }
            seg(&ctx, &d, r, isn, segs[i].off, src + segs[i].off, segs[i].len);
            if (!with_limits) {
                /* everything contiguous from the start has been delivered */
                while (contig < n && seen[contig])
                    contig++;
                if (r->next != contig && !reported) {
                    reported = 1;
                    fprintf(stderr, "  seg %u/%u [%u,%u) policy %u: next %llu contig %u\n", i, ns,
                            segs[i].off, segs[i].off + segs[i].len, policy,
                            (unsigned long long)r->next, contig);
                }
                CHECK_EQ(r->next, contig);
            }
            if (rnd_n(8) == 0) {
                /* receiver acks what was delivered (never beyond) */
                uint32_t upto = (uint32_t)(d.next_off - rnd_n((uint32_t)d.next_off + 1));
                reasm_ack(&ctx, &d, NULL, isn + upto);
            }
            if (rnd_n(4) == 0)
                trim(&ctx, &d, r, r->next - rnd_n((uint32_t)r->next + 1));
            if (memcap)
                CHECK(ctx.mem_used <= memcap + 64 * 1024);
        }
        reasm_flush(&ctx, &d, NULL);
        CHECK(ptrs_stable(r));
        CHECK_EQ(r->order_errors, 0);
        CHECK_EQ(r->expect_errors, 0);
        CHECK_EQ(r->rx_errors, 0);
        CHECK_EQ(reasm_segments(&d, NULL, NULL, 0), 0);
        if (!with_limits) {
            CHECK_EQ(r->next, n);
            CHECK_EQ(r->gap_bytes, 0);
            CHECK_EQ(r->delivered, n);
            if (!with_versions)
                CHECK(memcmp(r->stream, orig, n) == 0);
            if (!with_versions)
                CHECK_EQ(ctx.counters[REASM_C_REXMIT_INCONSISTENT], 0);
            CHECK_EQ(ctx.counters[REASM_C_BYTES_DROPPED_LIMIT], 0);
        } else {
            /* the end may be missing (refused tail held nowhere): ack the end */
            reasm_ack(&ctx, &d, NULL, isn + n);
            CHECK_EQ(r->next, n);
            CHECK_EQ(r->delivered + r->gap_bytes, n);
            if (r->gap_bytes)
                CHECK(ctx.counters[REASM_C_BYTES_DROPPED_LIMIT] > 0);
            int bad = 0;
            for (uint32_t k = 0; k < n; k++)
                if (!r->is_gap[k] && r->stream[k] != orig[k])
                    bad++;
            CHECK_EQ(bad, 0);
        }
        CHECK_EQ(ctx.counters[REASM_C_BYTES_DELIVERED], r->delivered);
        CHECK_EQ(ctx.counters[REASM_C_BYTES_GAP], r->gap_bytes);
        reasm_release(&ctx, &d);
        CHECK(d.buf == NULL);
        CHECK_EQ(ctx.mem_used, 0);
        free(r);
    }
}


/* reasm_drop_from: held bytes from an offset on go (a FIN's), the straddling chunk is cut, delivered bytes
 * stay, memory is given back, and later segments fill the rest. */
static void test_drop_from(void)
{
    g_test = "drop_from";
    /* the stream's bytes at their offsets ('.' never sent); one array, so it can be the stable region */
    static const uint8_t src[] = "abcdefghij..mn......uvw";
    for (int borrow = 0; borrow < 2; borrow++) {
        struct reasm_ctx ctx;
        struct rec *r = rec_new();
        struct reasm_dir d;
        reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
        if (borrow) { /* bytes held by reference: dropping them must not free them */
            ctx.stable_lo = src;
            ctx.stable_hi = src + sizeof(src);
        }
        /* a direction that buffers nothing holds nothing to drop: buffering on */
        reasm_dir_init(&d, 100, REASM_POLICY_FIRST, 1);
        CHECK_EQ(reasm_drop_from(&ctx, &d, 0), 0); /* nothing held */
        seg(&ctx, &d, r, 100, 0, src, 3);        /* [0, 3) delivered */
        seg(&ctx, &d, r, 100, 5, src + 5, 5);    /* [5, 10) held */
        seg(&ctx, &d, r, 100, 12, src + 12, 2);  /* [12, 14) */
        seg(&ctx, &d, r, 100, 20, src + 20, 3);  /* [20, 23) */
        CHECK_EQ(reasm_held_bytes(&d), 3 + 10);
        CHECK_EQ(reasm_drop_from(&ctx, &d, 8), 2 + 2 + 3);
        CHECK_EQ(reasm_held_bytes(&d), 3 + 3);
        uint64_t offs[4] = {0};
        uint32_t lens[4] = {0};
        CHECK_EQ(reasm_segments(&d, offs, lens, 4), 1);
        CHECK_EQ(offs[0], 5);
        CHECK_EQ(lens[0], 3);
        CHECK_EQ(reasm_drop_from(&ctx, &d, 1), 3); /* below next_off: from next_off, delivered bytes stay */
        CHECK_EQ(r->next, 3);
        seg(&ctx, &d, r, 100, 3, src + 3, 2);
        CHECK_EQ(r->next, 5);
        CHECK(memcmp(r->stream, "abcde", 5) == 0);
        CHECK_EQ(r->order_errors, 0);
        reasm_release(&ctx, &d);
        CHECK_EQ(ctx.mem_used, 0);
        CHECK(d.buf == NULL);
        free(r);
    }
}

/* Segments of which the capture holds a prefix (reasm_segment_cut): the rest is a gap once the stream
 * reaches it, unless held bytes fill it first. */
static void test_snaplen_cut(void)
{
    g_test = "snaplen_cut";
    static const uint8_t src[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 3);
    reasm_dir_init(&d, 50, REASM_POLICY_FIRST, 1);
    /* in order: [0, 4) delivered, [4, 10) a gap now */
    reasm_segment_cut(&ctx, &d, NULL, 50, src, 4, 6);
    CHECK_EQ(r->next, 10);
    CHECK_EQ(r->ngaps, 1);
    CHECK_EQ(r->gap_off[0], 4);
    CHECK_EQ(r->gap_len[0], 6);
    CHECK_EQ(ctx.counters[REASM_C_SNAPLEN_GAPS], 1);
    CHECK_EQ(ctx.counters[REASM_C_SNAPLEN_GAP_BYTES], 6);
    CHECK_EQ(ctx.counters[REASM_C_GAPS], 1);
    /* a whole copy afterwards: [4, 10) is behind the stream, not comparable */
    seg(&ctx, &d, r, 50, 0, src, 10);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 6);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_INCONSISTENT], 0);
    /* out of order behind a hole [10, 12): [12, 14) held, [14, 20) remembered as cut */
    reasm_segment_cut(&ctx, &d, NULL, 50 + 12, src + 12, 2, 6);
    CHECK_EQ(r->next, 10);
    /* a copy of [16, 18) fills part of the cut range before the stream reaches it */
    seg(&ctx, &d, r, 50, 16, src + 16, 2);
    /* a cut retransmission (no byte captured) of [20, 24) out of order, adjacent: merged */
    reasm_segment_cut(&ctx, &d, NULL, 50 + 20, src + 20, 0, 4);
    /* the hole fills: [10, 14) data, [14, 16) gap, [16, 18) data, [18, 24) gap */
    seg(&ctx, &d, r, 50, 10, src + 10, 2);
    CHECK_EQ(r->next, 24);
    CHECK_EQ(r->ngaps, 3);
    CHECK_EQ(r->gap_off[1], 14);
    CHECK_EQ(r->gap_len[1], 2);
    CHECK_EQ(r->gap_off[2], 18);
    CHECK_EQ(r->gap_len[2], 6);
    CHECK(memcmp(r->stream + 10, src + 10, 4) == 0);
    CHECK(memcmp(r->stream + 16, src + 16, 2) == 0);
    CHECK_EQ(ctx.counters[REASM_C_SNAPLEN_GAP_BYTES], 6 + 2 + 6);
    /* an ack past a hole stops at a cut range: the hole is an ordinary gap, the range the capture's */
    reasm_segment_cut(&ctx, &d, NULL, 50 + 28, src + 28, 0, 4);   /* [28, 32) cut */
    reasm_segment_cut(&ctx, &d, NULL, 50 + 34, src + 34, 1, 2);   /* [34, 35) held, [35, 37) cut */
    reasm_segment_cut(&ctx, &d, NULL, 50 + 40, src + 40, 1, 2);   /* [41, 43) cut */
    /* a fourth range is over the limit of 3 (max_segments): left an ordinary hole */
    reasm_segment_cut(&ctx, &d, NULL, 50 + 44, src + 44, 0, 1);
    uint64_t snap_before = ctx.counters[REASM_C_SNAPLEN_GAP_BYTES];
    reasm_ack(&ctx, &d, NULL, 50 + 33);
    CHECK_EQ(r->next, 33);
    CHECK_EQ(r->gap_off[3], 24);
    CHECK_EQ(r->gap_len[3], 4);
    CHECK_EQ(r->gap_off[4], 28);
    CHECK_EQ(r->gap_len[4], 4);
    CHECK_EQ(ctx.counters[REASM_C_SNAPLEN_GAP_BYTES], snap_before + 4);
    /* the sender's FIN at 42: cut ranges past it go with the held bytes */
    reasm_drop_from(&ctx, &d, 42);
    reasm_flush(&ctx, &d, NULL);
    CHECK_EQ(r->next, 42); /* [33, 34) gap, [34, 35) data, [35, 37) cut, [37, 40) gap, [40, 41) data, [41, 42) cut */
    CHECK_EQ(ctx.counters[REASM_C_SNAPLEN_GAP_BYTES], snap_before + 4 + 2 + 1);
    CHECK_EQ(r->order_errors, 0);
    CHECK_EQ(r->rx_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    CHECK(d.buf == NULL);

    /* without buffering, an in-order cut is a gap and nothing is allocated */
    memset(r, 0, sizeof(*r));
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 7, REASM_POLICY_FIRST, 0);
    reasm_segment_cut(&ctx, &d, NULL, 7, src, 3, 5);
    CHECK_EQ(r->next, 8);
    CHECK(d.buf == NULL);
    reasm_segment_cut(&ctx, &d, NULL, 7 + 10, src, 3, 5); /* out of order: a hole like any other */
    CHECK(d.buf == NULL);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* A copy of bytes the receiver acknowledged before it came is not compared, even while the bytes are
 * still held (no trim yet: the caller has not handled the events); bytes not acknowledged are. */
static void test_rexmit_acked(void)
{
    g_test = "rexmit_acked";
    struct reasm_ctx ctx;
    struct rec *r = rec_new();
    struct reasm_dir d;
    reasm_ctx_init(&ctx, &CB, r, 0, 0, 0);
    reasm_dir_init(&d, 1, REASM_POLICY_FIRST, 1);
    seg_str(&ctx, &d, r, 1, 0, "0123456789");
    reasm_ack(&ctx, &d, NULL, 1 + 4);       /* [0, 4) acknowledged, all 10 bytes still held */
    CHECK_EQ(reasm_held_bytes(&d), 10);
    seg_str(&ctx, &d, r, 1, 2, "XXXXXX");   /* [2, 4) acked: not compared; [4, 8) compared */
    CHECK_EQ(r->nrx, 2);
    CHECK_EQ(r->rx[0].off, 2);
    CHECK_EQ(r->rx[0].len, 2);
    CHECK_EQ(r->rx[0].has_old, 0);
    CHECK_EQ(r->rx[1].off, 4);
    CHECK_EQ(r->rx[1].len, 4);
    CHECK_EQ(r->rx[1].has_old, 1);
    CHECK_EQ(r->rx[1].inconsistent, 1);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_UNVERIFIABLE], 2);
    CHECK_EQ(ctx.counters[REASM_C_REXMIT_INCONSISTENT], 4);
    CHECK_EQ(r->rx_errors, 0);
    reasm_release(&ctx, &d);
    CHECK_EQ(ctx.mem_used, 0);
    free(r);
}

/* Random segments of one stream, each cut at a random point, in random order, with random acks and
 * trims, limits on or off: delivery stays in order, every byte delivered is the stream's, every position
 * ends delivered or in a gap, and memory returns to zero. */
static void fuzz_cut(int iterations)
{
    static uint8_t src[2048];
    char name[64];
    for (int it = 0; it < iterations; it++) {
        snprintf(name, sizeof(name), "fuzz_cut #%d", it);
        g_test = name;
        uint32_t n = 1 + rnd_n(sizeof(src));
        for (uint32_t i = 0; i < n; i++)
            src[i] = (uint8_t)rnd();
        struct cseg { uint32_t off, len, cut; } sg[64];
        uint32_t ns = 0;
        for (uint32_t off = 0; off < n && ns < 64;) {
            uint32_t l = 1 + rnd_n(200);
            if (l > n - off)
                l = n - off;
            sg[ns].off = off;
            sg[ns].len = l;
            sg[ns].cut = rnd_n(3) ? rnd_n(l + 1) : 0;
            ns++;
            off += l;
        }
        for (uint32_t i = 0; i < 12 && ns < 64; i++, ns++) { /* copies, whole or cut */
            sg[ns].off = rnd_n(n);
            sg[ns].len = 1 + rnd_n(n - sg[ns].off);
            sg[ns].cut = rnd_n(2) ? rnd_n(sg[ns].len + 1) : 0;
        }
        for (uint32_t i = ns; i > 1; i--) {
            uint32_t j = rnd_n(i);
            struct cseg t = sg[i - 1];
            sg[i - 1] = sg[j];
            sg[j] = t;
        }
        struct reasm_ctx ctx;
        struct rec *r = rec_new();
        struct reasm_dir d;
        int limits = rnd_n(3) == 0;
        reasm_ctx_init(&ctx, &CB, r, limits ? 3000 + rnd_n(6000) : 0, limits ? 1 + rnd_n(1500) : 0,
                       limits ? 1 + rnd_n(6) : 0);
        uint32_t isn = rnd();
        reasm_dir_init(&d, isn, (uint8_t)rnd_n(REASM_POLICY_COUNT), rnd_n(8) ? 1 : 0);
        r->expect = src;
        for (uint32_t i = 0; i < ns; i++) {
            uint32_t got = sg[i].len - sg[i].cut;
            reasm_segment_cut(&ctx, &d, NULL, isn + sg[i].off, src + sg[i].off, got, sg[i].cut);
            if (rnd_n(4) == 0)
                reasm_ack(&ctx, &d, NULL, isn + rnd_n(n + 1));
            if (rnd_n(4) == 0)
                trim(&ctx, &d, r, r->next);
        }
        reasm_flush(&ctx, &d, NULL);
        reasm_ack(&ctx, &d, NULL, isn + n);
        CHECK_EQ(r->next, n);
        CHECK_EQ(r->order_errors, 0);
        CHECK_EQ(r->expect_errors, 0);
        CHECK_EQ(r->delivered + r->gap_bytes, n);
        CHECK(ctx.counters[REASM_C_SNAPLEN_GAP_BYTES] <= ctx.counters[REASM_C_BYTES_GAP]);
        reasm_release(&ctx, &d);
        CHECK_EQ(ctx.mem_used, 0);
        CHECK(d.buf == NULL);
        free(r);
    }
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 300;
    rng_state = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x5eed1234ull;
    test_inorder();
    test_ooo_fill();
    test_reversed12();
    test_rexmit();
    test_rexmit_ooo_runs();
    test_policies();
    test_policy_owner();
    test_gap_ack();
    test_gap_flush();
    test_wrap();
    test_nobuffer();
    test_limits();
    test_trim_mem();
    test_many_chunks();
    test_limit_replace();
    test_edges();
    test_alloc_failures();
    test_drop_from();
    test_snaplen_cut();
    test_rexmit_acked();
    for (int borrow = 0; borrow < 2; borrow++) {
        fuzz(iters, 0, 0, borrow);
        fuzz(iters, 0, 1, borrow);
        fuzz(iters, 1, 0, borrow);
    }
    fuzz_cut(iters);
    printf("test_reasm: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
