/* Standalone tests for userspace/defrag.c. Prints "N passed, N failed"; exit status 1 on failure. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../userspace/defrag.h"

#include "check.h"

#define C(df, name) (defrag_counters(df)[DEFRAG_C_##name])
#define SEC 1000000000ull

static uint8_t buf[70000];

static uint16_t rd16(const uint8_t *p) { return (uint16_t)((uint16_t)p[0] << 8 | p[1]); }
static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint8_t pat(uint32_t i, uint8_t seed) { return (uint8_t)(i * 7u + seed + (i >> 8)); }

static uint16_t csum(const uint8_t *p, uint32_t len)
{
    uint32_t s = 0;
    for (uint32_t i = 0; i + 1 < len; i += 2)
        s += rd16(p + i);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

/* IPv4 fragment carrying bytes [off, off+plen) of a datagram whose byte i is pat(i, seed).
 * optlen: bytes of IP options (multiple of 4). Returns the packet length. */
static uint32_t v4frag(uint8_t *b, uint16_t id, uint8_t proto, uint32_t off, int mf, uint32_t plen,
                       uint8_t seed, uint32_t optlen)
{
    uint32_t hl = 20 + optlen;
    memset(b, 0, hl);
    b[0] = (uint8_t)(0x40 | (hl / 4));
    wr16(b + 2, (uint16_t)(hl + plen));
    wr16(b + 4, id);
    wr16(b + 6, (uint16_t)((mf ? 0x2000 : 0) | (off / 8)));
    b[8] = 64;
    b[9] = proto;
    b[12] = 10, b[13] = 0, b[14] = 0, b[15] = 1;
    b[16] = 10, b[17] = 0, b[18] = 0, b[19] = 2;
    for (uint32_t i = 0; i < optlen; i++)
        b[20 + i] = i + 1 == optlen ? 0 : 1; /* NOPs then EOL */
    wr16(b + 10, csum(b, hl));
    for (uint32_t i = 0; i < plen; i++)
        b[hl + i] = pat(off + i, seed);
    return hl + plen;
}

/* IPv6 fragment; ext: 0 none, 1 destination options (8 bytes), 2 hop-by-hop + routing (8 + 24). */
static uint32_t v6frag(uint8_t *b, uint32_t id, uint32_t off, int mf, uint32_t plen, uint8_t seed,
                       int ext)
{
    memset(b, 0, 40);
    b[0] = 0x60;
    b[7] = 64;
    b[8] = 0x20, b[9] = 0x01, b[23] = 1;
    b[24] = 0x20, b[25] = 0x01, b[39] = 2;
    uint32_t o = 40;
    uint8_t *prev_nh = b + 6;
    if (ext == 1) {
        *prev_nh = 60;
        memset(b + o, 0, 8);
        b[o + 1] = 0;
        b[o + 2] = 1; /* PadN */
        b[o + 3] = 4;
        prev_nh = b + o;
        o += 8;
    } else if (ext == 2) {
        *prev_nh = 0;
        memset(b + o, 0, 8);
        b[o + 2] = 1, b[o + 3] = 4;
        prev_nh = b + o;
        o += 8;
        *prev_nh = 43;
        memset(b + o, 0, 24);
        b[o + 1] = 2; /* 24 bytes */
        b[o + 2] = 0, b[o + 3] = 1;
        prev_nh = b + o;
        o += 24;
    }
    *prev_nh = 44;
    b[o] = 17; /* UDP */
    b[o + 1] = 0;
    wr16(b + o + 2, (uint16_t)(off | (mf ? 1 : 0)));
    b[o + 4] = (uint8_t)(id >> 24), b[o + 5] = (uint8_t)(id >> 16);
    b[o + 6] = (uint8_t)(id >> 8), b[o + 7] = (uint8_t)id;
    o += 8;
    for (uint32_t i = 0; i < plen; i++)
        b[o + i] = pat(off + i, seed);
    wr16(b + 4, (uint16_t)(o - 40 + plen));
    return o + plen;
}

static int payload_ok(const uint8_t *p, uint32_t n, uint8_t seed)
{
    for (uint32_t i = 0; i < n; i++)
        if (p[i] != pat(i, seed))
            return 0;
    return 1;
}

static int v4_out_ok(const uint8_t *o, uint32_t olen, uint16_t id, uint32_t plen, uint8_t seed,
                     uint32_t hl)
{
    return olen == hl + plen && (o[0] & 0x0f) * 4u == hl && rd16(o + 2) == hl + plen &&
           rd16(o + 4) == id && (rd16(o + 6) & 0x3fff) == 0 && csum(o, hl) == 0 &&
           payload_ok(o + hl, plen, seed);
}

static int feed(defrag_t *df, const uint8_t *p, uint32_t len, uint32_t vlan, uint64_t now,
                const uint8_t **o, uint32_t *ol)
{
    return defrag_feed(df, p, len, vlan, now, o, ol);
}

static void test_v4_in_order(void)
{
    defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    n = v4frag(buf, 77, 17, 0, 1, 24, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    CHECK(o == NULL && ol == 0);
    CHECK(defrag_mem_used(df) > 24);
    n = v4frag(buf, 77, 17, 24, 1, 24, 1, 0);
    CHECK(feed(df, buf, n, 0, 2, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 77, 17, 48, 0, 13, 1, 0);
    CHECK(feed(df, buf, n, 0, 3, &o, &ol) == DEFRAG_DONE);
    CHECK(o != NULL && v4_out_ok(o, ol, 77, 61, 1, 20));
    CHECK(o[9] == 17 && o[8] == 64);
    CHECK(C(df, FRAGMENTS) == 3 && C(df, DATAGRAMS) == 1 && C(df, OVERLAPS) == 0);
    CHECK(defrag_mem_used(df) == 0);
    defrag_free(df);
}

static void test_v4_reversed_with_options(void)
{
    defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    int r;
    /* 5 fragments of 40 bytes, the first with 12 bytes of options; fed last to first */
    for (int k = 4; k >= 0; k--) {
        n = v4frag(buf, 9, 6, (uint32_t)k * 40, k != 4, 40, 3, k == 0 ? 12 : 0);
        r = feed(df, buf, n, 0, 10, &o, &ol);
        CHECK(r == (k == 0 ? DEFRAG_DONE : DEFRAG_HELD));
    }
    CHECK(v4_out_ok(o, ol, 9, 200, 3, 32));
    CHECK(o[20] == 1 && o[31] == 0); /* options copied from the first fragment */
    CHECK(defrag_mem_used(df) == 0 && C(df, DATAGRAMS) == 1);
    defrag_free(df);
}

static void test_v4_df_kept_and_padding_ignored(void)
{
    defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    n = v4frag(buf, 5, 17, 0, 1, 8, 4, 0);
    buf[6] |= 0x40; /* DF */
    memset(buf + n, 0xee, 30); /* Ethernet padding after the total length */
    CHECK(feed(df, buf, n + 30, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 5, 17, 8, 0, 4, 4, 0);
    buf[6] |= 0x40;
    memset(buf + n, 0xee, 30);
    CHECK(feed(df, buf, n + 30, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 32 && payload_ok(o + 20, 12, 4) && rd16(o + 6) == 0x4000 && csum(o, 20) == 0);
    defrag_free(df);
}

static void test_v4_overlaps_first_wins(void)
{
    defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    /* A [0,16) seed 1, C [32,48) seed 1, B [8,56) seed 2 (covers a hole and overlaps both sides),
     * D [56,64) last seed 1. Result: A, B, C, B, D. */
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 1, 17, 32, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 1, 17, 8, 1, 48, 2, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    CHECK(C(df, OVERLAPS) == 1);
    n = v4frag(buf, 1, 17, 56, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 84);
    int ok = 1;
    for (uint32_t i = 0; i < 64; i++) {
        uint8_t seed = (i >= 16 && i < 32) || (i >= 48 && i < 56) ? 2 : 1;
        if (o[20 + i] != pat(i, seed))
            ok = 0;
    }
    CHECK(ok);
    CHECK(defrag_mem_used(df) == 0 && C(df, DATAGRAMS) == 1);

    /* last fragment overlapping held data (different bytes): the held bytes win */
    n = v4frag(buf, 2, 17, 0, 1, 32, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 2, 17, 24, 0, 20, 9, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 64 && payload_ok(o + 20, 32, 1));
    CHECK(o[20 + 32] == pat(32, 9) && o[63] == pat(43, 9));
    CHECK(C(df, OVERLAPS) == 2);

    /* a last fragment entirely covered by held data still fixes the end */
    n = v4frag(buf, 3, 17, 0, 1, 40, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 3, 17, 32, 0, 8, 5, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 60 && payload_ok(o + 20, 40, 1));
    CHECK(defrag_mem_used(df) == 0);
    defrag_free(df);
}

static void test_v4_duplicates(void)
{
    defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    n = v4frag(buf, 11, 17, 0, 1, 16, 6, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    uint64_t mem = defrag_mem_used(df);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    CHECK(defrag_mem_used(df) == mem); /* nothing new stored */
    CHECK(C(df, OVERLAPS) == 1);
    n = v4frag(buf, 11, 17, 16, 0, 16, 6, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(v4_out_ok(o, ol, 11, 32, 6, 20));
    /* the same last fragment again after completion starts a new datagram */
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    CHECK(defrag_mem_used(df) > 0);
    defrag_free(df); /* frees the held one (checked by ASan) */
}

static void test_v6_ext_headers(void)
{
    for (int ext = 0; ext <= 2; ext++) {
        defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
        const uint8_t *o;
        uint32_t ol, n;
        uint32_t ulen = ext == 0 ? 40 : ext == 1 ? 48 : 72;
        /* reversed: [96,100) last, [48,96), [0,48) */
        n = v6frag(buf, 0xdeadbeef, 96, 0, 4, 7, ext);
        CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
        n = v6frag(buf, 0xdeadbeef, 48, 1, 48, 7, ext);
        CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
        n = v6frag(buf, 0xdeadbeef, 0, 1, 48, 7, ext);
        CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
        CHECK(ol == ulen + 100);
        CHECK(rd16(o + 4) == ulen - 40 + 100);
        CHECK(memcmp(o, buf, 4) == 0 && memcmp(o + 7, buf + 7, 33) == 0);
        if (ext == 0)
            CHECK(o[6] == 17);
        if (ext == 1)
            CHECK(o[6] == 60 && o[40] == 17 && o[42] == 1 && o[43] == 4);
        if (ext == 2)
            CHECK(o[6] == 0 && o[40] == 43 && o[48] == 17 && o[49] == 2);
        CHECK(payload_ok(o + ulen, 100, 7));
        CHECK(defrag_mem_used(df) == 0 && C(df, DATAGRAMS) == 1);
        defrag_free(df);
    }
}

static void test_v6_atomic_and_mixed(void)
{
    defrag_t *df = defrag_new(1 << 20, 30 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    /* a held datagram with id 5 ... */
    n = v6frag(buf, 5, 0, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    /* ... an atomic fragment with the same id is reassembled on its own */
    n = v6frag(buf, 5, 0, 0, 10, 2, 1);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 58 && rd16(o + 4) == 18 && o[6] == 60 && o[40] == 17 && payload_ok(o + 48, 10, 2));
    n = v6frag(buf, 5, 16, 0, 3, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 59 && payload_ok(o + 40, 19, 1));
    /* IPv4 and IPv6 with the same numbers do not mix */
    n = v4frag(buf, 6, 17, 0, 1, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v6frag(buf, 6, 8, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    defrag_free(df);
}

static void test_timeout(void)
{
    defrag_t *df = defrag_new(1 << 20, 10 * SEC, 100);
    const uint8_t *o;
    uint32_t ol, n;
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 100 * SEC, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 1, 17, 16, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 105 * SEC, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 2, 17, 0, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 106 * SEC, &o, &ol) == DEFRAG_HELD);
    defrag_expire(df, 110 * SEC - 1);
    CHECK(C(df, TIMEOUTS) == 0);
    defrag_expire(df, 110 * SEC); /* age of datagram 1 == timeout: dropped */
    CHECK(C(df, TIMEOUTS) == 1 && C(df, FRAGS_DISCARDED) == 2);
    uint64_t mem_one = defrag_mem_used(df);
    CHECK(mem_one > 0);
    /* the rest of datagram 1 now starts a new datagram that cannot complete */
    n = v4frag(buf, 1, 17, 32, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 111 * SEC, &o, &ol) == DEFRAG_HELD);
    /* feeding expires too */
    n = v4frag(buf, 3, 17, 0, 1, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 200 * SEC, &o, &ol) == DEFRAG_HELD);
    CHECK(C(df, TIMEOUTS) == 3 && C(df, FRAGS_DISCARDED) == 4);
    defrag_expire(df, 300 * SEC);
    CHECK(C(df, TIMEOUTS) == 4 && defrag_mem_used(df) == 0);
    /* time going backwards does not expire anything early nor crash */
    n = v4frag(buf, 4, 17, 0, 1, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 500 * SEC, &o, &ol) == DEFRAG_HELD);
    defrag_expire(df, 400 * SEC);
    CHECK(C(df, TIMEOUTS) == 4);
    defrag_free(df);
}

static void test_memcap(void)
{
    const uint8_t *o;
    uint32_t ol, n;
    /* measure one datagram with one 1000-byte fragment */
    defrag_t *df = defrag_new(0, 0, 0);
    n = v4frag(buf, 1, 17, 0, 1, 1000, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    uint64_t one = defrag_mem_used(df);
    defrag_free(df);

    /* room for two such datagrams: the third evicts the oldest */
    df = defrag_new(2 * one + 100, 0, 0);
    for (uint16_t id = 1; id <= 3; id++) {
        n = v4frag(buf, id, 17, 0, 1, 1000, 1, 0);
        CHECK(feed(df, buf, n, 0, id, &o, &ol) == DEFRAG_HELD);
    }
    CHECK(C(df, MEMCAP) == 1 && C(df, FRAGS_DISCARDED) == 1);
    CHECK(defrag_mem_used(df) == 2 * one);
    /* datagram 1 was evicted: its last fragment alone does not complete it */
    n = v4frag(buf, 1, 17, 1000, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 4, &o, &ol) == DEFRAG_HELD); /* evicts datagram 2 to fit */
    CHECK(C(df, MEMCAP) == 2);
    /* datagram 3 is still there and completes */
    n = v4frag(buf, 3, 17, 1000, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 5, &o, &ol) == DEFRAG_DONE);
    CHECK(v4_out_ok(o, ol, 3, 1008, 1, 20));
    /* a fragment bigger than the whole cap is dropped without evicting anything */
    uint64_t before = defrag_mem_used(df);
    n = v4frag(buf, 9, 17, 0, 1, 4000, 1, 0);
    CHECK(feed(df, buf, n, 0, 6, &o, &ol) == DEFRAG_ERROR);
    CHECK(C(df, MEMCAP) == 3 && defrag_mem_used(df) == before);
    /* a datagram growing past the cap on its own: the new fragment is dropped, the datagram kept */
    defrag_free(df);
    df = defrag_new(one + 500, 0, 0);
    n = v4frag(buf, 1, 17, 0, 1, 1000, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 1, 17, 1000, 1, 1000, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_ERROR);
    CHECK(C(df, MEMCAP) == 1 && defrag_mem_used(df) == one);
    n = v4frag(buf, 1, 17, 1000, 0, 100, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(v4_out_ok(o, ol, 1, 1100, 1, 20) && defrag_mem_used(df) == 0);
    defrag_free(df);
}

static void test_max_datagrams(void)
{
    defrag_t *df = defrag_new(0, 0, 2);
    const uint8_t *o;
    uint32_t ol, n;
    for (uint16_t id = 1; id <= 3; id++) {
        n = v4frag(buf, id, 17, 0, 1, 16, (uint8_t)id, 0);
        CHECK(feed(df, buf, n, 0, id, &o, &ol) == DEFRAG_HELD);
        /* a second fragment of an existing datagram creates nothing */
        n = v4frag(buf, id, 17, 16, 1, 16, (uint8_t)id, 0);
        CHECK(feed(df, buf, n, 0, id, &o, &ol) == DEFRAG_HELD);
    }
    CHECK(C(df, MEMCAP) == 2 && C(df, FRAGS_DISCARDED) == 2); /* datagram 1: two fragments */
    for (uint16_t id = 2; id <= 3; id++) {
        n = v4frag(buf, id, 17, 32, 0, 1, (uint8_t)id, 0);
        CHECK(feed(df, buf, n, 0, 10, &o, &ol) == DEFRAG_DONE);
        CHECK(v4_out_ok(o, ol, id, 33, (uint8_t)id, 20));
    }
    n = v4frag(buf, 1, 17, 32, 0, 1, 1, 0);
    CHECK(feed(df, buf, n, 0, 10, &o, &ol) == DEFRAG_HELD);
    defrag_free(df);
}

static void test_too_big(void)
{
    defrag_t *df = defrag_new(0, 0, 0);
    const uint8_t *o;
    uint32_t ol, n;
    /* offset 65528 + 16 bytes */
    n = v4frag(buf, 1, 17, 65528, 0, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_ERROR);
    CHECK(C(df, TOO_BIG) == 1 && defrag_mem_used(df) == 0);
    /* exactly 65535 is fine: 20 + 65512 + 3 */
    n = v4frag(buf, 2, 17, 0, 1, 65512, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 2, 17, 65512, 0, 3, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(v4_out_ok(o, ol, 2, 65515, 1, 20));
    /* a too-big fragment invalidates the held datagram */
    n = v4frag(buf, 3, 17, 0, 1, 64, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 3, 17, 65512, 0, 24, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_ERROR);
    CHECK(C(df, TOO_BIG) == 2 && C(df, FRAGS_DISCARDED) == 1 && defrag_mem_used(df) == 0);
    /* too big only with the first fragment's 40 bytes of options: detected at completion */
    n = v4frag(buf, 4, 17, 65496 - 8, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 4, 17, 32, 1, 65488 - 32, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 4, 17, 0, 1, 32, 1, 40);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_ERROR);
    CHECK(C(df, TOO_BIG) == 3 && defrag_mem_used(df) == 0);
    /* IPv6: 8 bytes of destination options + 65528 + 8 > 65535 */
    n = v6frag(buf, 1, 65528, 0, 8, 1, 1);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_ERROR);
    CHECK(C(df, TOO_BIG) == 4);
    /* IPv6 exactly 65535 */
    n = v6frag(buf, 2, 0, 1, 65520, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v6frag(buf, 2, 65520, 0, 15, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 40 + 65535 && rd16(o + 4) == 65535 && payload_ok(o + 40, 65535, 1));
    CHECK(defrag_mem_used(df) == 0);
    defrag_free(df);
}

static void test_bad_fragments(void)
{
    defrag_t *df = defrag_new(0, 0, 0);
    const uint8_t *o;
    uint32_t ol, n;
    uint64_t bad = 0;
#define EXPECT_BAD(len_)                                                                           \
    do {                                                                                           \
        CHECK(feed(df, buf, (len_), 0, 1, &o, &ol) == DEFRAG_ERROR);                               \
        CHECK(C(df, BAD_FRAGMENT) == ++bad);                                                       \
    } while (0)
    /* zero-length payload */
    n = v4frag(buf, 1, 17, 8, 1, 0, 1, 0);
    EXPECT_BAD(n);
    /* MF with a length not a multiple of 8 */
    n = v4frag(buf, 1, 17, 0, 1, 12, 1, 0);
    EXPECT_BAD(n);
    /* truncated headers */
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 0);
    EXPECT_BAD(19);
    EXPECT_BAD(0);
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 20);
    EXPECT_BAD(30); /* shorter than the 40-byte header */
    /* caplen shorter than the total length */
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 0);
    EXPECT_BAD(n - 1);
    /* IHL < 5, total length < header length, not a fragment, not IP */
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 0);
    buf[0] = 0x44;
    EXPECT_BAD(n);
    n = v4frag(buf, 1, 17, 0, 1, 16, 1, 0);
    wr16(buf + 2, 19);
    EXPECT_BAD(n);
    n = v4frag(buf, 1, 17, 0, 0, 16, 1, 0);
    EXPECT_BAD(n);
    buf[0] = 0x55;
    EXPECT_BAD(n);
    CHECK(defrag_feed(df, NULL, 0, 0, 1, &o, &ol) == DEFRAG_ERROR);
    bad++;
    /* IPv6: no fragment header, truncated extension header, truncated capture, payload length 0 */
    n = v6frag(buf, 1, 0, 1, 16, 1, 1);
    buf[40] = 17;
    EXPECT_BAD(n);
    n = v6frag(buf, 1, 0, 1, 16, 1, 2);
    wr16(buf + 4, 20);
    EXPECT_BAD(60); /* ends in the routing header */
    wr16(buf + 4, 36);
    EXPECT_BAD(76); /* ends in the fragment header */
    wr16(buf + 4, (uint16_t)(n - 40));
    EXPECT_BAD(n - 1); /* truncated capture */
    EXPECT_BAD(39);
    n = v6frag(buf, 1, 0, 1, 16, 1, 0);
    wr16(buf + 4, 0);
    EXPECT_BAD(n);
    n = v6frag(buf, 1, 8, 1, 12, 1, 0);
    EXPECT_BAD(n);
    n = v6frag(buf, 1, 8, 1, 0, 1, 0);
    EXPECT_BAD(n);
    CHECK(defrag_mem_used(df) == 0 && C(df, FRAGMENTS) == bad);

    /* inconsistent datagrams are dropped as a whole */
    uint64_t disc = C(df, FRAGS_DISCARDED);
    /* a second last fragment with a different end */
    n = v4frag(buf, 2, 17, 0, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 2, 17, 32, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 2, 17, 32, 0, 9, 1, 0);
    EXPECT_BAD(n);
    CHECK(C(df, FRAGS_DISCARDED) == disc + 2 && defrag_mem_used(df) == 0);
    /* a fragment past the known end */
    n = v4frag(buf, 3, 17, 16, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 3, 17, 16, 1, 16, 1, 0);
    EXPECT_BAD(n);
    CHECK(defrag_mem_used(df) == 0);
    /* a last fragment ending before held data */
    n = v4frag(buf, 4, 17, 32, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 4, 17, 8, 0, 8, 1, 0);
    EXPECT_BAD(n);
    CHECK(defrag_mem_used(df) == 0);
    /* a malformed fragment of a held datagram drops it; a truncated capture does not */
    n = v4frag(buf, 5, 17, 0, 1, 16, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 5, 17, 16, 1, 16, 1, 0);
    EXPECT_BAD(n - 1);
    CHECK(defrag_mem_used(df) > 0);
    n = v4frag(buf, 5, 17, 16, 1, 12, 1, 0);
    EXPECT_BAD(n);
    CHECK(defrag_mem_used(df) == 0 && C(df, DATAGRAMS) == 0);
#undef EXPECT_BAD
    defrag_free(df);
}

static void test_vlan_and_protocol_keys(void)
{
    defrag_t *df = defrag_new(0, 0, 0);
    const uint8_t *o;
    uint32_t ol, n;
    /* same addresses and id on VLAN 10 and VLAN 20 (different contents), interleaved */
    n = v4frag(buf, 42, 17, 0, 1, 16, 10, 0);
    CHECK(feed(df, buf, n, 10, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 42, 17, 16, 1, 16, 20, 0);
    CHECK(feed(df, buf, n, 20, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 42, 17, 16, 1, 16, 10, 0);
    CHECK(feed(df, buf, n, 10, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 42, 17, 0, 1, 16, 20, 0);
    CHECK(feed(df, buf, n, 20, 1, &o, &ol) == DEFRAG_HELD);
    CHECK(C(df, OVERLAPS) == 0);
    n = v4frag(buf, 42, 17, 32, 0, 5, 20, 0);
    CHECK(feed(df, buf, n, 20, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(v4_out_ok(o, ol, 42, 37, 20, 20));
    n = v4frag(buf, 42, 17, 32, 0, 5, 10, 0);
    CHECK(feed(df, buf, n, 10, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(v4_out_ok(o, ol, 42, 37, 10, 20));
    /* same id, different protocol: separate datagrams */
    n = v4frag(buf, 43, 17, 0, 1, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    n = v4frag(buf, 43, 6, 8, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 0, 1, &o, &ol) == DEFRAG_HELD);
    /* IPv6 vlan keys too */
    n = v6frag(buf, 7, 0, 1, 8, 1, 0);
    CHECK(feed(df, buf, n, 1, 1, &o, &ol) == DEFRAG_HELD);
    n = v6frag(buf, 7, 8, 0, 8, 2, 0);
    CHECK(feed(df, buf, n, 2, 1, &o, &ol) == DEFRAG_HELD);
    n = v6frag(buf, 7, 8, 0, 8, 1, 0);
    CHECK(feed(df, buf, n, 1, 1, &o, &ol) == DEFRAG_DONE);
    CHECK(ol == 56 && payload_ok(o + 40, 16, 1));
    defrag_free(df);
}

static void test_many_concurrent(void)
{
    /* 5000 datagrams in flight (table growth), completed in another order */
    defrag_t *df = defrag_new(0, 0, 0);
    const uint8_t *o;
    uint32_t ol, n;
    int ok = 1;
    for (uint32_t i = 0; i < 5000; i++) {
        n = v6frag(buf, i, 0, 1, 16, (uint8_t)i, 0);
        if (feed(df, buf, n, i & 3, 1, &o, &ol) != DEFRAG_HELD)
            ok = 0;
    }
    CHECK(ok);
    for (uint32_t j = 0; j < 5000; j++) {
        uint32_t i = (j * 7919u) % 5000u;
        n = v6frag(buf, i, 16, 0, 4, (uint8_t)i, 0);
        if (feed(df, buf, n, i & 3, 2, &o, &ol) != DEFRAG_DONE || ol != 60 ||
            !payload_ok(o + 40, 20, (uint8_t)i))
            ok = 0;
    }
    CHECK(ok);
    CHECK(defrag_mem_used(df) == 0 && C(df, DATAGRAMS) == 5000);
    defrag_free(df);
}

static uint32_t rng_state = 12345;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* Random fragmentations (with overlaps carrying the same bytes) fed in random order must rebuild
 * the datagram exactly once. */
struct rfrag {
    uint32_t off, len;
    int mf;
};

static void test_random_fragmentations(void)
{
    int ok = 1;
    for (int iter = 0; iter < 300; iter++) {
        defrag_t *df = defrag_new(4u << 20, 0, 0);
        int v6 = iter & 1;
        uint32_t total = 400 + rnd() % 2600; /* > the longest first fragment */
        uint8_t seed = (uint8_t)rnd();
        struct rfrag fr[64];
        int nf = 0;
        uint32_t off = 0;
        while (off < total && nf < 60) {
            uint32_t len = 8 * (1 + rnd() % 40);
            if (off + len >= total || nf == 59)
                len = total - off;
            fr[nf].off = off;
            fr[nf].len = len;
            fr[nf].mf = off + len < total;
            nf++;
            if (!fr[nf - 1].mf)
                break;
            /* sometimes go back a little to create an overlap */
            uint32_t back = (rnd() % 4 == 0) ? 8 * (rnd() % 4) : 0;
            off = off + len > back && off + len - back > off ? off + len - back : off + len;
        }
        /* a few duplicates */
        int nd = (int)(rnd() % 3);
        for (int k = 0; k < nd && nf < 64; k++) {
            struct rfrag dup = fr[rnd() % (uint32_t)nf];
            fr[nf++] = dup;
        }
        for (int k = nf - 1; k > 0; k--) {
            int j = (int)(rnd() % (uint32_t)(k + 1));
            struct rfrag t = fr[k];
            fr[k] = fr[j];
            fr[j] = t;
        }
        int done = 0;
        for (int k = 0; k < nf; k++) {
            const uint8_t *o;
            uint32_t ol, n;
            n = v6 ? v6frag(buf, 99, fr[k].off, fr[k].mf, fr[k].len, seed, (int)(rnd() % 3))
                   : v4frag(buf, 99, 17, fr[k].off, fr[k].mf, fr[k].len, seed, fr[k].off ? 0 : 8);
            int r = feed(df, buf, n, 0, 1, &o, &ol);
            if (r == DEFRAG_ERROR) {
                fprintf(stderr, "iter %d v6 %d frag %d off %u len %u mf %d total %u\n", iter, v6, k,
                        fr[k].off, fr[k].len, fr[k].mf, total);
                ok = 0;
            }
            if (r == DEFRAG_DONE) {
                done++;
                uint32_t hl = v6 ? ol - total : 28;
                if (ol != hl + total || !payload_ok(o + hl, total, seed))
                    ok = 0;
                if (!v6 && !v4_out_ok(o, ol, 99, total, seed, 28))
                    ok = 0;
            }
        }
        if (done != 1 && !(done >= 1 && nd > 0))
            ok = 0;
        defrag_free(df);
    }
    CHECK(ok);
}

/* Overlap policies against a byte-level model: each held byte knows the fragment it came from, a piece is
 * a maximal run of bytes of one fragment, and a new fragment [a, b) wins the bytes of a piece [o, e) it
 * overlaps by the policy's rule (defrag.c). Random overlapping fragments over IPv4, every policy but linux
 * (whose drops test_defrag_policy.py covers); memory returns to 0 each time. */
static int model_wins(unsigned pol, uint32_t a, uint32_t b, uint32_t o, uint32_t e)
{
    switch (pol) {
    case DEFRAG_POLICY_LAST: return 1;
    case DEFRAG_POLICY_BSD: return a < o;
    case DEFRAG_POLICY_BSD_RIGHT: return a >= o;
    case DEFRAG_POLICY_OLD_LINUX: return a <= o;
    case DEFRAG_POLICY_WINDOWS: return a < o && b > e;
    case DEFRAG_POLICY_SOLARIS: return a < o && b >= e;
    default: return 0;
    }
}

static void test_policies_against_model(void)
{
    enum { SPAN = 256, NFR = 12 };
    int ok = 1, done_total = 0;
    CHECK(defrag_set_policy(NULL, 0) == -1);
    for (int iter = 0; iter < 3000 && ok; iter++) {
        unsigned pol = (unsigned)iter % DEFRAG_POLICY_COUNT;
        if (pol == DEFRAG_POLICY_LINUX)
            continue;
        defrag_t *df = defrag_new(1 << 20, 0, 0);
        CHECK(defrag_set_policy(df, DEFRAG_POLICY_COUNT) == -1 && defrag_set_policy(df, pol) == 0);
        int owner[SPAN];
        uint8_t val[SPAN];
        for (int i = 0; i < SPAN; i++)
            owner[i] = -1;
        const uint8_t *o = NULL;
        uint32_t ol = 0;
        int r = DEFRAG_HELD;
        for (int k = 0; k <= NFR && r != DEFRAG_DONE; k++) {
            /* the last two cover everything, so the datagram completes with the last */
            uint32_t off = k == NFR ? SPAN - 8 : k == NFR - 1 ? 0 : (rnd() % (SPAN / 8)) * 8;
            uint32_t len = k == NFR ? 8 : k == NFR - 1 ? SPAN - 8 : (1 + rnd() % ((SPAN - off) / 8)) * 8;
            int mf = k != NFR;
            if (mf && off + len == SPAN)
                len -= 8; /* only the last fragment ends the datagram */
            if (len == 0)
                continue;
            uint32_t n = v4frag(buf, 7, 17, off, mf, len, (uint8_t)(k * 31 + 1), 0);
            /* the model */
            uint32_t a = off, b = off + len;
            int win[SPAN] = {0};
            for (uint32_t i = a; i < b; i++) {
                if (owner[i] < 0 || win[i])
                    continue;
                uint32_t ps = i, pe = i; /* the piece holding byte i */
                while (ps > 0 && owner[ps - 1] == owner[i])
                    ps--;
                while (pe < SPAN && owner[pe] == owner[i])
                    pe++;
                int w = model_wins(pol, a, b, ps, pe);
                for (uint32_t j = i; j < pe && j < b; j++)
                    win[j] = w ? 1 : -1;
            }
            for (uint32_t i = a; i < b; i++) {
                if (owner[i] < 0 || win[i] == 1) {
                    owner[i] = k;
                    val[i] = pat(i, (uint8_t)(k * 31 + 1));
                }
            }
            r = defrag_feed(df, buf, n, 0, 0, &o, &ol);
            if (r == DEFRAG_ERROR) {
                fprintf(stderr, "policy %u iter %d fragment %d [%u, %u) rejected\n", pol, iter, k, a, b);
                ok = 0;
            }
        }
        if (r != DEFRAG_DONE || ol != 20 + SPAN || memcmp(o + 20, val, SPAN) != 0) {
            fprintf(stderr, "policy %u iter %d: r %d len %u\n", pol, iter, r, ol);
            ok = 0;
        }
        done_total += r == DEFRAG_DONE;
        if (defrag_mem_used(df) != 0)
            ok = 0;
        defrag_free(df);
    }
    CHECK(ok && done_total > 2000);
}

/* Garbage in: never crash or read out of bounds (run under ASan/UBSan). */
static void test_garbage(void)
{
    defrag_t *df = defrag_new(1 << 16, SEC, 64);
    for (int iter = 0; iter < 20000; iter++) {
        uint32_t len = rnd() % 200;
        uint8_t *p = malloc(len ? len : 1); /* exact size so ASan sees any overread */
        if (!p)
            break;
        for (uint32_t i = 0; i < len; i++)
            p[i] = (uint8_t)rnd();
        if (len > 0)
            p[0] = (uint8_t)((rnd() & 1 ? 0x40 : 0x60) | (p[0] & 0x0f));
        if (len >= 8 && (p[0] >> 4) == 6 && (rnd() & 1)) {
            p[6] = 44;
            wr16(p + 4, (uint16_t)(len > 40 ? len - 40 : 0));
        }
        if (len >= 20 && (p[0] >> 4) == 4 && (rnd() & 1)) {
            p[0] = 0x45;
            wr16(p + 2, (uint16_t)len);
        }
        const uint8_t *o;
        uint32_t ol;
        if (defrag_feed(df, p, len, rnd() % 2, (uint64_t)iter * 1000000, &o, &ol) == DEFRAG_DONE) {
            volatile uint8_t x = 0;
            for (uint32_t i = 0; i < ol; i++)
                x ^= o[i];
            (void)x;
        }
        free(p);
    }
    CHECK(defrag_mem_used(df) <= (1 << 16));
    defrag_expire(df, UINT64_MAX);
    CHECK(defrag_mem_used(df) == 0);
    defrag_free(df);
    defrag_free(NULL);
}

int main(void)
{
    test_v4_in_order();
    test_v4_reversed_with_options();
    test_v4_df_kept_and_padding_ignored();
    test_v4_overlaps_first_wins();
    test_v4_duplicates();
    test_v6_ext_headers();
    test_v6_atomic_and_mixed();
    test_timeout();
    test_memcap();
    test_max_datagrams();
    test_too_big();
    test_bad_fragments();
    test_vlan_and_protocol_keys();
    test_many_concurrent();
    test_random_fragmentations();
    test_policies_against_model();
    test_garbage();
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
