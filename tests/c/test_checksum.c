/* Standalone tests for userspace/checksum.c: the sums against a plain 16-bit reference over every length
 * and alignment, IPv4 and IPv6 pseudo-headers, UDP's zero, a segment the capture cut short.
 * Prints "N passed, N failed"; exit status 1 on failure. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../userspace/checksum.h"

#include "check.h"

static uint8_t frame[2048 + 64];

static void wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* The reference: RFC 1071 over 16-bit words in network order, the odd byte zero-padded. */
static uint32_t ref_sum(const uint8_t *p, uint32_t n, uint32_t s)
{
    for (uint32_t i = 0; i + 1 < n; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1)
        s += (uint32_t)p[n - 1] << 8;
    return s;
}

static uint16_t ref_fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* An IPv4 (or IPv6) packet at frame + shift carrying TCP (proto 6) or UDP (17) with `plen` payload bytes,
 * the transport checksum right; the decoded view in *pi as decode.c would fill it. Returns its length. */
static uint32_t build(struct pkt_info *pi, int v6, uint8_t proto, uint32_t plen, uint32_t shift, uint8_t seed)
{
    uint8_t *l3 = frame + shift;
    uint32_t hl = v6 ? 40 : 20, l4h = proto == 6 ? 20 : 8, l4len = l4h + plen;
    memset(l3, 0, hl + l4len);
    memset(pi, 0, sizeof(*pi));
    if (v6) {
        l3[0] = 0x60;
        wr16(l3 + 4, l4len);
        l3[6] = proto;
        l3[7] = 64;
        for (int i = 0; i < 16; i++) {
            l3[8 + i] = (uint8_t)(0x20 + i + seed);
            l3[24 + i] = (uint8_t)(0x90 - i);
        }
        memcpy(pi->src, l3 + 8, 16);
        memcpy(pi->dst, l3 + 24, 16);
    } else {
        l3[0] = 0x45;
        wr16(l3 + 2, hl + l4len);
        l3[8] = 64;
        l3[9] = proto;
        const uint8_t s[4] = {10, 1, 2, seed}, d[4] = {192, 168, 7, 9};
        memcpy(l3 + 12, s, 4);
        memcpy(l3 + 16, d, 4);
        wr16(l3 + 10, (uint16_t)~ref_fold(ref_sum(l3, 20, 0)));
        memcpy(pi->src, s, 4);
        memcpy(pi->dst, d, 4);
    }
    uint8_t *l4 = l3 + hl;
    wr16(l4, 40000);
    wr16(l4 + 2, 80);
    if (proto == 6)
        l4[12] = 5 << 4;
    else
        wr16(l4 + 4, l4len);
    for (uint32_t i = 0; i < plen; i++)
        l4[l4h + i] = (uint8_t)(i * 13u + seed + (i >> 7));
    uint32_t ph = ref_sum(pi->src, v6 ? 16 : 4, 0);
    ph = ref_sum(pi->dst, v6 ? 16 : 4, ph);
    ph += proto + (l4len & 0xffff) + (l4len >> 16);
    uint16_t c = (uint16_t)~ref_fold(ref_sum(l4, l4len, ph));
    if (proto == 17 && c == 0)
        c = 0xffff; /* RFC 768: a computed 0 is sent as all ones */
    wr16(l4 + (proto == 6 ? 16 : 6), c);
    pi->ip_version = v6 ? 6 : 4;
    pi->proto = proto;
    pi->l3 = l3;
    pi->l3_len = hl + l4len;
    pi->l4 = l4;
    pi->l4_len = l4len;
    return hl + l4len;
}

static void test_every_length_and_alignment(void)
{
    struct pkt_info pi;
    int bad = 0, wrong = 0;
    for (int v6 = 0; v6 < 2; v6++)
        for (int proto = 6; proto <= 17; proto += 11)
            for (uint32_t shift = 0; shift < 8; shift++)
                for (uint32_t plen = 0; plen <= 1500; plen += (plen < 80 ? 1 : 29)) {
                    build(&pi, v6, (uint8_t)proto, plen, shift, (uint8_t)plen);
                    if (!v6 && !csum_ipv4_header_ok(pi.l3))
                        bad++;
                    if (csum_l4(&pi) != CSUM_OK)
                        bad++;
                    /* one bit flipped anywhere in the segment is caught */
                    uint8_t *byte = (uint8_t *)pi.l4 + (plen * 7u) % pi.l4_len;
                    *byte ^= 0x10;
                    if (csum_l4(&pi) != CSUM_BAD)
                        wrong++;
                    *byte ^= 0x10;
                }
    CHECK_EQ(bad, 0);
    CHECK_EQ(wrong, 0);
}

static void test_ipv4_header(void)
{
    struct pkt_info pi;
    build(&pi, 0, 6, 10, 0, 1);
    CHECK(csum_ipv4_header_ok(pi.l3));
    frame[8] ^= 1; /* the TTL */
    CHECK(!csum_ipv4_header_ok(pi.l3));
    frame[8] ^= 1;
    CHECK(csum_ipv4_header_ok(pi.l3));
}

static void test_udp_zero_and_lengths(void)
{
    struct pkt_info pi;
    build(&pi, 0, 17, 33, 0, 3);
    wr16((uint8_t *)pi.l4 + 6, 0);
    CHECK_EQ(csum_l4(&pi), CSUM_NONE); /* over IPv4, 0 is no checksum */
    build(&pi, 1, 17, 33, 0, 3);
    wr16((uint8_t *)pi.l4 + 6, 0);
    CHECK_EQ(csum_l4(&pi), CSUM_BAD); /* over IPv6 it is mandatory */
    build(&pi, 0, 17, 33, 0, 3);
    wr16((uint8_t *)pi.l4 + 4, 8 + 34); /* a UDP length past the datagram */
    CHECK_EQ(csum_l4(&pi), CSUM_BAD);
}

static void test_cut_short_is_unverifiable(void)
{
    struct pkt_info pi;
    for (int v6 = 0; v6 < 2; v6++) {
        build(&pi, v6, 6, 1000, 0, 9);
        pi.l3_len -= 100; /* what was captured ends before the length the IP header gives */
        pi.l4_len -= 100;
        CHECK_EQ(csum_l4(&pi), CSUM_UNVERIFIABLE);
    }
}

static void test_not_tcp_or_udp(void)
{
    struct pkt_info pi;
    build(&pi, 0, 6, 10, 0, 1);
    pi.proto = 1;
    CHECK_EQ(csum_l4(&pi), CSUM_NONE);
}

int main(void)
{
    test_every_length_and_alignment();
    test_ipv4_header();
    test_udp_zero_and_lengths();
    test_cut_short_is_unverifiable();
    test_not_tcp_or_udp();
    printf("test_checksum: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
