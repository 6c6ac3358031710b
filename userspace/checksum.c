/* See checksum.h.
 *
 * The sum: RFC 1071's one's complement sum, in the machine's byte order (the folded result is the same
 * as 16-bit words in network order, byte-swapped; a correct packet folds to 0xffff in either order),
 * loaded 64 bits (AVX2: 256 bits) at a time. Measured on 1480 bytes in cache (gcc -O2, the benchmark
 * machine, best of three): 30 ns with AVX2, 60 ns without, against about 190 ns for 64-bit words with
 * the carry added back after each and 450 ns for a loop of 16-bit words. Over a capture the cost is
 * reading the payload at all: the engine otherwise never touches the bytes it holds by reference
 * (bench/RESULTS.md).
 *
 * The auto setting is Suricata's checksum-validation auto mode (ChecksumAutoModeCheck: after a sample of
 * 1000 packets, offloading is assumed, and validation switched off, when more than one in ten had a
 * wrong checksum), with packets validated from the first one: the sample is no window in which an
 * injected segment with a wrong checksum gets through. A capture file is sampled before it is run
 * (mos_engine_checksum_sample), so that a capture with offloaded checksums loses none of its first
 * packets, and one shorter than the sample is judged as a whole. The evidence is any wrong checksum, as
 * in Suricata: captures made on a sending host hold partial sums, but captures rewritten by tools
 * (anonymised addresses, zeroed fields) hold anything. */
#include "checksum.h"

#include <string.h>

#include "engine_state.h"

/* Suricata's CHECKSUM_SAMPLE_COUNT and CHECKSUM_INVALID_RATIO (one in ten) */
#define CSUM_SAMPLE 1000u
#define CSUM_OFFLOAD_RATIO 10u

/* The 32-bit halves of 64-bit loads, in two accumulators: no carry to add back per word (a 64 KiB
 * datagram sums to less than 2^47), and two independent chains. */
static uint64_t sum_scalar(const uint8_t *p, uint32_t n, uint64_t s)
{
    uint64_t a = s, b = 0;
    while (n >= 32) {
        uint64_t w[4];
        memcpy(w, p, 32);
        a += (w[0] & 0xffffffffu) + (w[0] >> 32);
        b += (w[1] & 0xffffffffu) + (w[1] >> 32);
        a += (w[2] & 0xffffffffu) + (w[2] >> 32);
        b += (w[3] & 0xffffffffu) + (w[3] >> 32);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        a += (w & 0xffffffffu) + (w >> 32);
        p += 8;
        n -= 8;
    }
    /* fixed-size loads for the tail (a variable-length memcpy is a call) */
    if (n >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        b += w;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        a += w;
        p += 2;
        n -= 2;
    }
    if (n) {
        /* the tail starts at an even offset: an odd last byte is the high half of a zero-padded word */
        const uint8_t t[2] = {p[0], 0};
        uint16_t w;
        memcpy(&w, t, 2);
        b += w;
    }
    return a + b;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same sum 64 bytes at a time with AVX2 (checked once at start-up): the 16-bit halves of 32-bit
 * lanes, which cannot overflow in a datagram (under 2^28 per lane). */
typedef uint32_t v8u __attribute__((vector_size(32)));

__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, uint32_t n, uint64_t s)
{
    const v8u lo = {0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff};
    v8u a = {0}, b = {0};
    while (n >= 64) {
        v8u w, x;
        memcpy(&w, p, 32);
        memcpy(&x, p + 32, 32);
        a += (w & lo) + (w >> 16);
        b += (x & lo) + (x >> 16);
        p += 64;
        n -= 64;
    }
    a += b;
    for (int i = 0; i < 8; i++)
        s += a[i];
    return sum_scalar(p, n, s);
}

static int use_avx2;

__attribute__((constructor)) static void pick_sum(void)
{
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") != 0;
}

static inline uint64_t sum_bytes(const uint8_t *p, uint32_t n, uint64_t s)
{
    return use_avx2 && n >= 128 ? sum_avx2(p, n, s) : sum_scalar(p, n, s);
}
#else
static inline uint64_t sum_bytes(const uint8_t *p, uint32_t n, uint64_t s) { return sum_scalar(p, n, s); }
#endif

static inline uint16_t fold(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return (uint16_t)s;
}

static inline uint32_t rd16(const uint8_t *p) { return (uint32_t)(p[0] << 8 | p[1]); }

int csum_ipv4_header_ok(const uint8_t *l3)
{
    return fold(sum_bytes(l3, (uint32_t)(l3[0] & 0x0f) * 4, 0)) == 0xffff;
}

/* The pseudo-header's sum (RFC 9293 3.1, RFC 8200 8.1) for l4len bytes of protocol proto. */
static uint64_t pseudo_sum(const struct pkt_info *pi, uint32_t l4len)
{
    uint8_t tail[8] = {0};
    uint32_t alen = pi->ip_version == 4 ? 4 : 16;
    uint64_t s = sum_bytes(pi->aliased ? pi->wire.src : pi->src, alen, 0);
    s = sum_bytes(pi->aliased ? pi->wire.dst : pi->dst, alen, s);
    if (pi->ip_version == 4) {
        tail[1] = pi->proto;
        tail[2] = (uint8_t)(l4len >> 8);
        tail[3] = (uint8_t)l4len;
        return sum_bytes(tail, 4, s);
    }
    tail[0] = (uint8_t)(l4len >> 24);
    tail[1] = (uint8_t)(l4len >> 16);
    tail[2] = (uint8_t)(l4len >> 8);
    tail[3] = (uint8_t)l4len;
    tail[7] = pi->proto;
    return sum_bytes(tail, 8, s);
}

enum csum_verdict csum_l4(const struct pkt_info *pi)
{
    if ((pi->proto != MOS_IPPROTO_TCP && pi->proto != MOS_IPPROTO_UDP) || !pi->l4)
        return CSUM_NONE;
    /* The sum covers the datagram as its IP header gives it: a capture cut short cannot be checked. */
    uint32_t declared = pi->ip_version == 4 ? rd16(pi->l3 + 2) : 40 + rd16(pi->l3 + 4);
    if (declared > pi->l3_len)
        return CSUM_UNVERIFIABLE;
    uint32_t l4len = (uint32_t)(pi->l3 + declared - pi->l4);
    if (pi->proto == MOS_IPPROTO_UDP) {
        if (l4len < 8)
            return CSUM_BAD;
        if (pi->ip_version == 4 && pi->l4[6] == 0 && pi->l4[7] == 0)
            return CSUM_NONE; /* RFC 768: no checksum (over IPv6 it is mandatory, RFC 8200 8.1) */
        uint32_t ulen = rd16(pi->l4 + 4);
        if (ulen < 8 || ulen > l4len)
            return CSUM_BAD; /* the host rejects a UDP length its datagram does not hold */
        l4len = ulen;
    } else if (l4len < 20) {
        return CSUM_BAD;
    }
    return fold(sum_bytes(pi->l4, l4len, pseudo_sum(pi, l4len))) == 0xffff ? CSUM_OK : CSUM_BAD;
}

void csum_set_ipv4_header(uint8_t *l3)
{
    l3[10] = l3[11] = 0;
    uint16_t c = (uint16_t)~fold(sum_bytes(l3, (uint32_t)(l3[0] & 0x0f) * 4, 0));
    memcpy(l3 + 10, &c, 2); /* the sum is in the machine's order: stored so, it is right on the wire */
}

void csum_set_l4(const struct pkt_info *pi, uint8_t *l4)
{
    uint32_t off = pi->proto == MOS_IPPROTO_TCP ? 16 : 6, n = pi->l4_len;
    if ((pi->proto != MOS_IPPROTO_TCP && pi->proto != MOS_IPPROTO_UDP) || n < off + 2)
        return;
    if (pi->proto == MOS_IPPROTO_UDP && pi->ip_version == 4 && l4[6] == 0 && l4[7] == 0)
        return; /* IPv4 UDP without a checksum stays so */
    l4[off] = l4[off + 1] = 0;
    uint16_t c = (uint16_t)~fold(sum_bytes(l4, n, pseudo_sum(pi, n)));
    if (pi->proto == MOS_IPPROTO_UDP && c == 0)
        c = 0xffff; /* RFC 768: a computed 0 is sent as all ones */
    memcpy(l4 + off, &c, 2);
}

/* A local stack that offloads the transport checksum leaves the pseudo-header's sum in the field for the
 * NIC to finish (CHECKSUM_PARTIAL). On a veth no NIC does: the frame reaches XDP so, and a host it is
 * forwarded to drops it. Such a field is completed in place, and the packet is then as good as its bytes. */
static int complete_partial(const struct pkt_info *pi)
{
    if ((pi->proto != MOS_IPPROTO_TCP && pi->proto != MOS_IPPROTO_UDP) || !pi->l4 || pi->is_fragment)
        return 0;
    uint32_t declared = pi->ip_version == 4 ? rd16(pi->l3 + 2) : 40 + rd16(pi->l3 + 4);
    if (declared > pi->l3_len)
        return 0;
    uint32_t l4len = (uint32_t)(pi->l3 + declared - pi->l4), off = pi->proto == MOS_IPPROTO_TCP ? 16 : 6;
    if (l4len < off + 2 || (pi->proto == MOS_IPPROTO_UDP && rd16(pi->l4 + 4) != l4len))
        return 0;
    uint16_t stored, partial = fold(pseudo_sum(pi, l4len));
    memcpy(&stored, pi->l4 + off, 2);
    if (stored != partial && !(stored == 0 && partial == 0xffff) && !(stored == 0xffff && partial == 0))
        return 0;
    struct pkt_info whole = *pi;
    whole.l4_len = l4len;
    /* the frame is writable when completion is on (a live run's UMEM frame, see mos_engine_checksum_complete) */
    csum_set_l4(&whole, (uint8_t *)(uintptr_t)pi->l4);
    return csum_l4(pi) == CSUM_OK;
}

/* ---- the setting ------------------------------------------------------------------------------ */

/* The packet's checksums: the bad_checksum_* counter of the first wrong one, or 0; *checked tells
 * whether any was checked (a packet of the sample). */
static int judge(mos_engine_t *e, const struct pkt_info *pi, int datagram, int *checked)
{
    *checked = 0;
    if (pi->ip_version == 4 && !datagram) {
        *checked = 1;
        if (!csum_ipv4_header_ok(pi->l3))
            return MOS_C_BAD_CHECKSUM_IP;
    }
    if (pi->is_fragment || pi->ip_version == 0)
        return 0; /* the transport sum is the datagram's, checked after reassembly */
    switch (csum_l4(pi)) {
    case CSUM_OK:
        *checked = 1;
        return 0;
    case CSUM_BAD:
        *checked = 1;
        if (e->csum.complete && !datagram && complete_partial(pi)) {
            e->counters[MOS_C_CHECKSUM_COMPLETED]++;
            return 0;
        }
        return pi->proto == MOS_IPPROTO_TCP ? MOS_C_BAD_CHECKSUM_TCP : MOS_C_BAD_CHECKSUM_UDP;
    case CSUM_UNVERIFIABLE:
        e->counters[MOS_C_CHECKSUM_UNVERIFIABLE]++;
        return 0;
    case CSUM_NONE:
        break;
    }
    return 0;
}

static void decide(mos_engine_t *e)
{
    struct csum_state *cs = &e->csum;
    cs->decided = 1;
    if (cs->bad * CSUM_OFFLOAD_RATIO > cs->sampled) {
        cs->off = 1;
        e->counters[MOS_C_CHECKSUM_AUTO_OFF]++;
    }
}

/* auto: one packet of the sample; its last one decides */
static void sample_one(mos_engine_t *e, int bad)
{
    struct csum_state *cs = &e->csum;
    cs->sampled++;
    cs->bad += bad != 0;
    if (cs->sampled >= CSUM_SAMPLE)
        decide(e);
}

static int reject(mos_engine_t *e, const struct pkt_info *pi, const struct mos_pkt *p, int counter)
{
    /* The connection, when it exists, is named in the ERROR (whose host is sent segments it will drop):
     * a read-only lookup, no state of it is touched. */
    struct conn *c = NULL;
    int side = MOS_SIDE_CLI;
    if (pi->proto == MOS_IPPROTO_TCP && !pi->is_fragment) {
        uint32_t bucket = ft_bucket(&e->ft, pi);
        for (uint32_t s = e->ft.buckets[bucket]; s; s = ft_conn(&e->ft, s)->hnext) {
            struct conn *k = ft_conn(&e->ft, s);
            int sd = ft_match(&e->ft, k, pi);
            if (sd >= 0 && !(k->flags & CF_ENDED)) {
                c = k;
                side = sd ? MOS_SIDE_CLI : MOS_SIDE_SVR; /* the receiving side, as for data anomalies */
                break;
            }
        }
    }
    if (e->no_account)
        e->counters[MOS_C_FRAG_HELD]--; /* a datagram: its last fragment is counted as rejected instead */
    const struct pkt_info *save = e->cur_pi;
    uint8_t save_flags = e->cur_flags;
    e->cur_pi = pi;
    e->cur_flags = pi->tcp_flags;
    raise_anomaly(e, c, side, MOS_ERR_CHECKSUM_INVALID, 0, (uint32_t)counter);
    e->cur_pi = save;
    e->cur_flags = save_flags;
    if (e->drop_sink)
        e->drop_sink(e->drop_arg, p, MOS_XSK_C_MALFORMED_DROP); /* inline: dropped, see the README (live) */
    return 1;
}

int checksum_reject(mos_engine_t *e, const struct pkt_info *pi, const struct mos_pkt *p, int datagram)
{
    struct csum_state *cs = &e->csum;
    if (e->cfg.checksum == MOS_CSUM_OFF || cs->off)
        return 0;
    int checked;
    int bad = judge(e, pi, datagram, &checked);
    if (checked && e->cfg.checksum == MOS_CSUM_AUTO && !cs->decided)
        sample_one(e, bad); /* and judged all the same: validating until the decision */
    return bad ? reject(e, pi, p, bad) : 0;
}

/* ---- API ---------------------------------------------------------------------------------------- */

uint32_t mos_engine_checksum_sample(mos_engine_t *e, int linktype, const struct mos_pkt *pkts, uint32_t n,
                                    int last)
{
    struct csum_state *cs = &e->csum;
    if (e->cfg.checksum != MOS_CSUM_AUTO || cs->decided)
        return 0;
    uint64_t unverifiable = e->counters[MOS_C_CHECKSUM_UNVERIFIABLE];
    uint32_t i;
    for (i = 0; i < n && !cs->decided; i++) {
        struct pkt_info pi;
        int checked;
        if (decode_packet(pkts[i].data, pkts[i].caplen, linktype, &pi))
            continue;
        int bad = judge(e, &pi, 0, &checked);
        if (checked)
            sample_one(e, bad);
    }
    e->counters[MOS_C_CHECKSUM_UNVERIFIABLE] = unverifiable; /* counted when the packets are run */
    if (last && !cs->decided)
        decide(e); /* the whole input is shorter than the sample: judged on all of it */
    return i;
}

void mos_engine_checksum_complete(mos_engine_t *e, int on) { e->csum.complete = on != 0; }

int mos_engine_checksum_state(const mos_engine_t *e)
{
    switch (e->cfg.checksum) {
    case MOS_CSUM_OFF:
        return MOS_CSUM_STATE_OFF;
    case MOS_CSUM_ON:
        return MOS_CSUM_STATE_VALIDATING;
    default:
        if (!e->csum.decided)
            return MOS_CSUM_STATE_SAMPLING;
        return e->csum.off ? MOS_CSUM_STATE_AUTO_OFF : MOS_CSUM_STATE_VALIDATING;
    }
}
