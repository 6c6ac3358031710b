/* Feed the IP fragments of a capture to userspace/defrag.c and print what it reassembles.
 *
 * usage: defrag_pcap [-m memcap] [-t timeout_ns] [-n max_datagrams] [-o i,j,k...] file.pcap
 *   -o feeds the capture's packets in the given order (0-based indexes; the others are skipped).
 *
 * Output, one line each:
 *   DONE <index> <l2 hex> <l3 hex>   a reassembled datagram (l2: the link header of the packet that
 *                                    completed it, VLAN tags / MPLS labels included)
 *   ERROR <index>                    defrag_feed rejected the fragment
 *   COUNTERS fragments=.. datagrams=.. overlaps=.. too_big=.. bad_fragment=.. timeouts=.. memcap=..
 *            frags_discarded=.. mem_used=..   (one line, at the end, before defrag_free)
 * Link types: Ethernet (802.1Q/802.1ad/QinQ tags, MPLS label stacks), raw IP, Linux cooked, BSD null.
 * Packet time (ts) is passed as now_ns. vlan_key = the VLAN ids seen (outer << 12 | inner).
 */
#define _DEFAULT_SOURCE
#include <pcap/pcap.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../userspace/defrag.h"

struct pkt {
    uint8_t *data;
    uint32_t len;
    uint64_t ts_ns;
};

static uint16_t rd16(const uint8_t *p) { return (uint16_t)((uint16_t)p[0] << 8 | p[1]); }

/* Find the IP header. Returns its offset or -1. */
static long find_l3(int dlt, const uint8_t *p, uint32_t len, uint32_t *vlan_key)
{
    uint32_t off = 0;
    uint16_t et;
    *vlan_key = 0;
    switch (dlt) {
    case DLT_RAW: /* 12 or 14 depending on the system */
    case 101:     /* LINKTYPE_RAW */
        return len > 0 ? 0 : -1;
    case DLT_NULL:
        if (len < 4)
            return -1;
        return 4;
    case DLT_LINUX_SLL:
        if (len < 16)
            return -1;
        et = rd16(p + 14);
        off = 16;
        break;
    case DLT_EN10MB:
        if (len < 14)
            return -1;
        et = rd16(p + 12);
        off = 14;
        break;
    default:
        return -1;
    }
    while (et == 0x8100 || et == 0x88a8 || et == 0x9100) {
        if (len - off < 4)
            return -1;
        *vlan_key = (*vlan_key << 12) | (rd16(p + off) & 0x0fffu);
        et = rd16(p + off + 2);
        off += 4;
    }
    if (et == 0x8847 || et == 0x8848) {
        for (;;) {
            if (len - off < 4)
                return -1;
            int bos = p[off + 2] & 1;
            off += 4;
            if (bos)
                break;
        }
        if (len - off < 1)
            return -1;
        return off;
    }
    if (et == 0x0800 || et == 0x86dd)
        return off;
    return -1;
}

/* Is this IP packet a fragment? (IPv4: MF or offset; IPv6: a fragment header after HBH/RH/DO.) */
static int is_fragment(const uint8_t *p, uint32_t len)
{
    if (len < 1)
        return 0;
    if ((p[0] >> 4) == 4)
        return len >= 20 && (rd16(p + 6) & 0x3fff) != 0;
    if ((p[0] >> 4) != 6 || len < 40)
        return 0;
    uint8_t nh = p[6];
    uint32_t off = 40;
    while (nh == 0 || nh == 43 || nh == 60) {
        if (len - off < 8)
            return 0;
        uint32_t el = ((uint32_t)p[off + 1] + 1u) * 8u;
        nh = p[off];
        if (len - off < el)
            return 0;
        off += el;
    }
    return nh == 44;
}

static void hex(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

int main(int argc, char **argv)
{
    uint64_t memcap = 64u << 20, timeout_ns = 30ull * 1000000000ull;
    uint32_t maxdg = 4096;
    const char *order = NULL;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
        if (strcmp(argv[i], "-m") == 0)
            memcap = strtoull(argv[i + 1], NULL, 0);
        else if (strcmp(argv[i], "-t") == 0)
            timeout_ns = strtoull(argv[i + 1], NULL, 0);
        else if (strcmp(argv[i], "-n") == 0)
            maxdg = (uint32_t)strtoul(argv[i + 1], NULL, 0);
        else if (strcmp(argv[i], "-o") == 0)
            order = argv[i + 1];
        else
            break;
    }
    if (i != argc - 1) {
        fprintf(stderr, "usage: %s [-m memcap] [-t timeout_ns] [-n max] [-o order] file.pcap\n",
                argv[0]);
        return 2;
    }
    char err[PCAP_ERRBUF_SIZE];
    pcap_t *pc = pcap_open_offline_with_tstamp_precision(argv[i], PCAP_TSTAMP_PRECISION_NANO, err);
    if (!pc) {
        fprintf(stderr, "pcap: %s\n", err);
        return 2;
    }
    int dlt = pcap_datalink(pc);
    struct pkt *pkts = NULL;
    size_t npkts = 0, cap = 0;
    struct pcap_pkthdr *ph;
    const uint8_t *data;
    int rc;
    while ((rc = pcap_next_ex(pc, &ph, &data)) == 1) {
        if (npkts == cap) {
            cap = cap ? cap * 2 : 64;
            struct pkt *np = realloc(pkts, cap * sizeof(*pkts));
            if (!np)
                return 2;
            pkts = np;
        }
        pkts[npkts].len = ph->caplen;
        pkts[npkts].data = malloc(ph->caplen ? ph->caplen : 1);
        if (!pkts[npkts].data)
            return 2;
        memcpy(pkts[npkts].data, data, ph->caplen);
        pkts[npkts].ts_ns = (uint64_t)ph->ts.tv_sec * 1000000000ull + (uint64_t)ph->ts.tv_usec;
        npkts++;
    }
    pcap_close(pc);

    size_t seqcap = (order ? strlen(order) : 0) + npkts + 1;
    size_t *seq = malloc(seqcap * sizeof(*seq));
    size_t nseq = 0;
    if (!seq)
        return 2;
    if (order) {
        const char *s = order;
        while (*s) {
            char *e;
            unsigned long v = strtoul(s, &e, 10);
            if (e == s || v >= npkts) {
                fprintf(stderr, "bad order\n");
                return 2;
            }
            seq[nseq++] = v;
            s = *e == ',' ? e + 1 : e;
            if (*e && *e != ',') {
                fprintf(stderr, "bad order\n");
                return 2;
            }
        }
    } else {
        for (size_t k = 0; k < npkts; k++)
            seq[nseq++] = k;
    }

    defrag_t *df = defrag_new(memcap, timeout_ns, maxdg);
    if (!df)
        return 2;
    for (size_t k = 0; k < nseq; k++) {
        struct pkt *p = &pkts[seq[k]];
        uint32_t vk;
        long l3 = find_l3(dlt, p->data, p->len, &vk);
        defrag_expire(df, p->ts_ns);
        if (l3 < 0 || !is_fragment(p->data + l3, p->len - (uint32_t)l3))
            continue;
        const uint8_t *out;
        uint32_t out_len;
        int r = defrag_feed(df, p->data + l3, p->len - (uint32_t)l3, vk, p->ts_ns, &out, &out_len);
        if (r == DEFRAG_DONE) {
            printf("DONE %zu ", seq[k]);
            hex(p->data, (uint32_t)l3);
            printf(" ");
            hex(out, out_len);
            printf("\n");
        } else if (r == DEFRAG_ERROR) {
            printf("ERROR %zu\n", seq[k]);
        }
    }
    const uint64_t *c = defrag_counters(df);
    printf("COUNTERS fragments=%llu datagrams=%llu overlaps=%llu too_big=%llu bad_fragment=%llu "
           "timeouts=%llu memcap=%llu frags_discarded=%llu mem_used=%llu\n",
           (unsigned long long)c[DEFRAG_C_FRAGMENTS], (unsigned long long)c[DEFRAG_C_DATAGRAMS],
           (unsigned long long)c[DEFRAG_C_OVERLAPS], (unsigned long long)c[DEFRAG_C_TOO_BIG],
           (unsigned long long)c[DEFRAG_C_BAD_FRAGMENT], (unsigned long long)c[DEFRAG_C_TIMEOUTS],
           (unsigned long long)c[DEFRAG_C_MEMCAP], (unsigned long long)c[DEFRAG_C_FRAGS_DISCARDED],
           (unsigned long long)defrag_mem_used(df));
    defrag_free(df);
    for (size_t k = 0; k < npkts; k++)
        free(pkts[k].data);
    free(pkts);
    free(seq);
    return 0;
}
