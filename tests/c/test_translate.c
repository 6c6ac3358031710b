/* Standalone tests for userspace/translate.c: an endpoint rewritten in place keeps every checksum right
 * (IPv4 header, TCP, UDP, UDP's 0 = none, UDP's sum that would come out 0), IPv4 and IPv6, for many
 * addresses and ports; the bytes around are untouched.
 * Prints "N passed, N failed"; exit status 1 on failure. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../userspace/checksum.h"
#include "../../userspace/decode.h"
#include "../../userspace/translate.h"

#include "check.h"

static uint8_t frame[256];

static void wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t rnd_state = 12345;
static uint32_t rnd(void)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return rnd_state >> 8;
}

/* An Ethernet frame with IPv4 or IPv6, TCP (6) or UDP (17), plen payload bytes, every checksum right
 * (udp_zero: UDP over IPv4 without a checksum); decoded into *pi. Returns its length. */
static uint32_t build(struct pkt_info *pi, int v6, uint8_t proto, uint32_t plen, int udp_zero)
{
    memset(frame, 0, sizeof(frame));
    memset(frame, 0xaa, 12);
    wr16(frame + 12, v6 ? 0x86dd : 0x0800);
    uint8_t *l3 = frame + 14;
    uint32_t hl = v6 ? 40 : 20, l4h = proto == 6 ? 20 : 8, l4len = l4h + plen;
    if (v6) {
        l3[0] = 0x60;
        wr16(l3 + 4, l4len);
        l3[6] = proto;
        l3[7] = 64;
        for (int i = 0; i < 32; i++)
            l3[8 + i] = (uint8_t)rnd();
    } else {
        l3[0] = 0x45;
        wr16(l3 + 2, hl + l4len);
        l3[6] = 0x40;
        l3[8] = 64;
        l3[9] = proto;
        for (int i = 0; i < 8; i++)
            l3[12 + i] = (uint8_t)rnd();
    }
    uint8_t *l4 = l3 + hl;
    wr16(l4, rnd() & 0xffff);
    wr16(l4 + 2, rnd() & 0xffff);
    if (proto == 6) {
        l4[12] = 5 << 4;
        l4[13] = 0x18;
    } else {
        wr16(l4 + 4, l4len);
    }
    for (uint32_t i = 0; i < plen; i++)
        l4[l4h + i] = (uint8_t)rnd();
    uint32_t len = 14 + hl + l4len;
    CHECK_EQ(decode_packet(frame, len, MOS_DLT_EN10MB, pi), 0);
    if (!v6)
        csum_set_ipv4_header(l3);
    if (!(proto == 17 && udp_zero && !v6)) {
        l4[proto == 6 ? 16 : 6] = 0xff; /* csum_set_l4 leaves an IPv4 UDP 0 (none) as it is */
        csum_set_l4(pi, l4);
    }
    CHECK_EQ(decode_packet(frame, len, MOS_DLT_EN10MB, pi), 0);
    return len;
}

static void one(int v6, uint8_t proto, int which, int udp_zero)
{
    struct pkt_info pi;
    uint32_t len = build(&pi, v6, proto, rnd() % 64, udp_zero);
    uint8_t before[256];
    memcpy(before, frame, len);
    uint8_t addr[16] = {0};
    for (int i = 0; i < (v6 ? 16 : 4); i++)
        addr[i] = (uint8_t)rnd();
    uint16_t port = (uint16_t)rnd();
    translate_endpoint(&pi, which, addr, port);
    struct pkt_info after;
    CHECK_EQ(decode_packet(frame, len, MOS_DLT_EN10MB, &after), 0);
    const uint8_t *got = which ? after.dst : after.src;
    CHECK(memcmp(got, addr, v6 ? 16 : 4) == 0);
    CHECK_EQ(which ? after.dport : after.sport, port);
    const uint8_t *other = which ? after.src : after.dst;
    CHECK(memcmp(other, which ? pi.src : pi.dst, 16) == 0); /* the other endpoint as it was */
    CHECK_EQ(which ? after.sport : after.dport, which ? pi.sport : pi.dport);
    if (!v6)
        CHECK(csum_ipv4_header_ok(after.l3));
    if (proto == 17 && udp_zero && !v6) {
        CHECK_EQ(csum_l4(&after), CSUM_NONE); /* none stays none */
    } else {
        CHECK_EQ(csum_l4(&after), CSUM_OK);
        if (proto == 17)
            CHECK(after.l4[6] || after.l4[7]); /* a UDP sum of 0 is written 0xffff */
    }
    CHECK(memcmp(frame, before, 14) == 0);                                   /* Ethernet untouched */
    CHECK(memcmp(after.payload, before + (after.payload - frame), after.payload_len) == 0); /* payload too */
}

static void test_many(void)
{
    for (int n = 0; n < 4000; n++)
        one(n & 1, (n & 2) ? 17 : 6, (n >> 2) & 1, (n % 7) == 0);
}

/* A UDP checksum whose update comes out 0 is written 0xffff: find such a rewrite and check it. */
static void test_udp_zero_result(void)
{
    int seen = 0;
    for (int n = 0; n < 200000 && !seen; n++) {
        struct pkt_info pi;
        uint32_t len = build(&pi, 0, 17, 4, 0);
        uint8_t *sum = (uint8_t *)(uintptr_t)pi.l4 + 6;
        uint8_t addr[16] = {0};
        /* aim: new sum 0 <=> the one's-complement sum of the datagram is 0xffff: pick the port for it */
        uint32_t s = (uint32_t)(sum[0] << 8 | sum[1]);
        uint32_t old_port = pi.sport;
        memcpy(addr, pi.src, 4);
        /* keep the address, change only the port: HC' = ~(~HC + ~p + p'); HC' = 0 <=> ~HC + ~p + p' = 0xffff */
        uint32_t want = (0xffffu - (((uint16_t)~s) + (uint16_t)~old_port) % 0xffffu + 0xffffu) % 0xffffu;
        if (want == 0 || want == old_port)
            continue;
        translate_endpoint(&pi, 0, addr, (uint16_t)want);
        struct pkt_info after;
        CHECK_EQ(decode_packet(frame, len, MOS_DLT_EN10MB, &after), 0);
        if (sum[0] == 0xff && sum[1] == 0xff) {
            seen = 1;
            CHECK_EQ(csum_l4(&after), CSUM_OK);
        }
    }
    CHECK(seen);
}

int main(void)
{
    test_many();
    test_udp_zero_result();
    printf("test_translate: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
