/* See decode.h. Malformations are returned as the counter that records them; the caller counts. */
#include "decode.h"

#include <string.h>

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void tcp_options(const uint8_t *opt, uint32_t len, struct pkt_info *pi)
{
    uint32_t i = 0;
    while (i < len) {
        uint8_t kind = opt[i];
        if (kind == 0)
            break;
        if (kind == 1) {
            i++;
            continue;
        }
        if (i + 1 >= len)
            break;
        uint8_t olen = opt[i + 1];
        if (olen < 2 || i + olen > len)
            break; /* a broken option ends parsing; the segment is still usable */
        switch (kind) {
        case 2:
            if (olen == 4) {
                pi->has_mss = 1;
                pi->mss = rd16(opt + i + 2);
            }
            break;
        case 3:
            if (olen == 3)
                pi->wscale = opt[i + 2] > 14 ? 14 : opt[i + 2]; /* RFC 7323: larger values mean 14 */
            break;
        case 4:
            if (olen == 2)
                pi->sack_perm = 1;
            break;
        case 8:
            if (olen == 10) {
                pi->has_ts = 1;
                pi->tsval = rd32(opt + i + 2);
                pi->tsecr = rd32(opt + i + 6);
            }
            break;
        default:
            break;
        }
        i += olen;
    }
}

static int decode_l4(struct pkt_info *pi, const uint8_t *l4, uint32_t len)
{
    pi->l4 = l4;
    pi->l4_len = len;
    if (pi->proto == 6) {
        if (len < 20)
            return MOS_C_MAL_TRUNCATED_TCP;
        uint32_t hl = (uint32_t)(l4[12] >> 4) * 4;
        if (hl < 20)
            return MOS_C_MAL_BAD_TCP_HLEN;
        if (hl > len)
            return MOS_C_MAL_TRUNCATED_TCP;
        pi->sport = rd16(l4);
        pi->dport = rd16(l4 + 2);
        pi->seq = rd32(l4 + 4);
        pi->ack = rd32(l4 + 8);
        pi->tcp_flags = l4[13] & 0x3f;
        pi->window = rd16(l4 + 14);
        if ((pi->tcp_flags & TCP_SYN) && (pi->tcp_flags & (TCP_RST | TCP_FIN)) == (TCP_RST | TCP_FIN))
            return MOS_C_MAL_BAD_TCP_FLAGS;
        if (hl > 20)
            tcp_options(l4 + 20, hl - 20, pi);
        pi->payload = l4 + hl;
        pi->payload_len = len - hl;
    } else if (pi->proto == 17) {
        if (len < 8)
            return MOS_C_MAL_TRUNCATED_UDP;
        pi->sport = rd16(l4);
        pi->dport = rd16(l4 + 2);
        uint32_t ulen = rd16(l4 + 4);
        pi->payload = l4 + 8;
        pi->payload_len = (ulen >= 8 && ulen - 8 < len - 8) ? ulen - 8 : len - 8;
    } else {
        pi->payload = l4;
        pi->payload_len = len;
    }
    return 0;
}

/* missing: bytes of the packet past the end of the capture (its wire length less its captured one). */
static int decode_ipv4(const uint8_t *p, uint32_t len, uint32_t missing, struct pkt_info *pi)
{
    if (len < 20)
        return MOS_C_MAL_TRUNCATED_IP;
    uint32_t hl = (uint32_t)(p[0] & 0x0f) * 4;
    if (hl < 20)
        return MOS_C_MAL_BAD_IP_HLEN;
    if (hl > len)
        return MOS_C_MAL_TRUNCATED_IP;
    uint32_t tot = rd16(p + 2);
    if (tot < hl)
        return MOS_C_MAL_BAD_IP_LEN;
    /* Ethernet padding beyond the total length is ignored. A datagram longer than what was captured is
     * decoded when the snaplen explains the difference (the transport headers are then checked against
     * what was captured), and truncated when it does not. */
    uint32_t cut = 0;
    if (tot > len) {
        if (tot - len > missing)
            return MOS_C_MAL_TRUNCATED_PAYLOAD;
        cut = tot - len;
    }
    pi->ip_version = 4;
    pi->l3 = p;
    pi->l3_len = tot - cut;
    pi->payload_cut = cut; /* a fragment's: defragmentation rejects a fragment it lacks bytes of */
    pi->proto = p[9];
    memset(pi->src, 0, 32);
    memcpy(pi->src, p + 12, 4);
    memcpy(pi->dst, p + 16, 4);
    uint16_t frag = rd16(p + 6);
    if (frag & (MOS_IP_MF | MOS_IP_OFFSET)) {
        pi->is_fragment = 1;
        return 0;
    }
    return decode_l4(pi, p + hl, tot - cut - hl);
}

static int decode_ipv6(const uint8_t *p, uint32_t len, uint32_t missing, struct pkt_info *pi)
{
    if (len < 40)
        return MOS_C_MAL_TRUNCATED_IP;
    uint32_t plen = rd16(p + 4);
    if (plen == 0)
        return MOS_C_MAL_BAD_IP_LEN; /* jumbograms are not supported */
    uint32_t cut = 0; /* as for IPv4: the extension headers are walked within what was captured */
    if (40 + plen > len) {
        if (40 + plen - len > missing)
            return MOS_C_MAL_TRUNCATED_PAYLOAD;
        cut = 40 + plen - len;
    }
    pi->ip_version = 6;
    pi->l3 = p;
    pi->l3_len = 40 + plen - cut;
    pi->payload_cut = cut;
    memcpy(pi->src, p + 8, 16);
    memcpy(pi->dst, p + 24, 16);
    uint8_t nh = p[6];
    uint32_t off = 40, end = pi->l3_len;
    int i;
    for (i = 0; i < MOS_MAX_IPV6_EXT; i++) {
        if (nh == MOS_IPPROTO_FRAGMENT) {
            if (off + MOS_IPV6_EXT_MIN > end)
                return MOS_C_MAL_TRUNCATED_IPV6_EXT;
            uint16_t fo = rd16(p + off + 2);
            if (!mos_ipv6_frag_is_atomic(fo)) {
                pi->is_fragment = 1;
                if (!mos_ipv6_frag_is_first(fo)) {
                    pi->proto = p[off]; /* fragment data follows: no more headers to walk */
                    return 0;
                }
                /* A first fragment holds the whole header chain (RFC 8200): walked and limited as in a
                 * whole packet, the fragment header counted, as the XDP program does; a first fragment
                 * over the limit is malformed before it reaches defragmentation. */
            }
            nh = p[off];
            off += MOS_IPV6_EXT_MIN;
            continue;
        }
        if (!mos_ipv6_is_ext(nh))
            break;
        if (off + MOS_IPV6_EXT_MIN > end)
            return MOS_C_MAL_TRUNCATED_IPV6_EXT;
        uint32_t hlen = mos_ipv6_ext_len(nh, p[off + 1]);
        nh = p[off];
        off += hlen;
        if (off > end)
            return MOS_C_MAL_TRUNCATED_IPV6_EXT;
    }
    /* one header more than the walk takes: malformed, as in the XDP program (see MOS_MAX_IPV6_EXT) */
    if (i == MOS_MAX_IPV6_EXT && mos_ipv6_ext_over_limit(nh))
        return MOS_C_MAL_TOO_MANY_IPV6_EXT;
    pi->proto = nh;
    if (pi->is_fragment)
        return 0; /* a first fragment: the transport header is read after reassembly */
    return decode_l4(pi, p + off, end - off);
}

static int decode_ip_missing(const uint8_t *l3, uint32_t len, uint32_t missing, struct pkt_info *pi)
{
    pi->is_fragment = 0;
    pi->payload_cut = 0;
    pi->wscale = 0xff;
    if (len < 1)
        return MOS_C_MAL_TRUNCATED_IP;
    switch (l3[0] >> 4) {
    case 4:
        return decode_ipv4(l3, len, missing, pi);
    case 6:
        return decode_ipv6(l3, len, missing, pi);
    default:
        return MOS_C_MAL_BAD_IP_VERSION;
    }
}

int decode_ip(const uint8_t *l3, uint32_t len, struct pkt_info *pi)
{
    return decode_ip_missing(l3, len, 0, pi);
}

/* Returns the ethertype-like protocol after the link header, and sets *off; -1 when not IP. */
static int decode_ether(const uint8_t *p, uint32_t caplen, uint32_t *off, struct pkt_info *pi)
{
    if (caplen < 14)
        return -MOS_C_MAL_TRUNCATED_L2;
    uint32_t o = 12;
    uint16_t et = rd16(p + o);
    o += 2;
    while (mos_is_vlan_ethertype(et)) {
        if (o + 4 > caplen)
            return -MOS_C_MAL_TRUNCATED_L2;
        if (pi->nvlan >= MOS_MAX_VLAN)
            return -MOS_C_MAL_TOO_MANY_VLANS;
        pi->vlan[pi->nvlan++] = rd16(p + o) & 0x0fff;
        et = rd16(p + o + 2);
        o += 4;
    }
    *off = o;
    return et;
}

int decode_packet(const uint8_t *p, uint32_t caplen, int linktype, struct pkt_info *pi)
{
    return decode_captured(p, caplen, caplen, linktype, pi);
}

int decode_captured(const uint8_t *p, uint32_t caplen, uint32_t wirelen, int linktype, struct pkt_info *pi)
{
    memset(pi, 0, offsetof(struct pkt_info, src));
    pi->wscale = 0xff;
    uint32_t off = 0;
    int et;
    switch (linktype) {
    case MOS_DLT_EN10MB:
        et = decode_ether(p, caplen, &off, pi);
        if (et < 0)
            return -et;
        break;
    case MOS_DLT_RAW:
    case MOS_DLT_RAW_101:
    case MOS_DLT_IPV4:
    case MOS_DLT_IPV6:
        if (caplen < 1)
            return MOS_C_MAL_TRUNCATED_L2;
        et = (p[0] >> 4) == 6 ? MOS_ETH_P_IPV6 : MOS_ETH_P_IP;
        break;
    case MOS_DLT_NULL:
    case MOS_DLT_LOOP: {
        if (caplen < 4)
            return MOS_C_MAL_TRUNCATED_L2;
        /* The family is in host byte order of the capturing machine (NULL) or network order (LOOP):
         * accept both; 2 is AF_INET, 24/28/30 are the BSDs' AF_INET6, 10 is Linux's. */
        uint32_t fam = p[0] | (p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        if (fam > 0xffff)
            fam = rd32(p);
        off = 4;
        et = fam == 2 ? MOS_ETH_P_IP : (fam == 24 || fam == 28 || fam == 30 || fam == 10) ? MOS_ETH_P_IPV6 : 0;
        break;
    }
    case MOS_DLT_PPP:
    case MOS_DLT_PPP_SERIAL:
    case MOS_DLT_C_HDLC: {
        /* Optional HDLC address/control (0xff 0x03), then a 1- or 2-byte PPP protocol. */
        if (caplen < 2)
            return MOS_C_MAL_TRUNCATED_L2;
        if (linktype == MOS_DLT_C_HDLC) {
            if (caplen < 4)
                return MOS_C_MAL_TRUNCATED_L2;
            off = 4;
            et = rd16(p + 2);
            break;
        }
        if (p[0] == 0xff && p[1] == 0x03)
            off = 2;
        if (off + 1 > caplen)
            return MOS_C_MAL_TRUNCATED_L2;
        uint16_t proto;
        if (p[off] & 1) {
            proto = p[off];
            off += 1;
        } else {
            if (off + 2 > caplen)
                return MOS_C_MAL_TRUNCATED_L2;
            proto = rd16(p + off);
            off += 2;
        }
        et = proto == 0x21 ? MOS_ETH_P_IP : proto == 0x57 ? MOS_ETH_P_IPV6 : 0;
        break;
    }
    case MOS_DLT_PPP_ETHER:
        /* PPPoE session header (6 bytes) then the PPP protocol (2 bytes). */
        if (caplen < 8)
            return MOS_C_MAL_TRUNCATED_L2;
        off = 8;
        et = rd16(p + 6) == 0x21 ? MOS_ETH_P_IP : rd16(p + 6) == 0x57 ? MOS_ETH_P_IPV6 : 0;
        break;
    case MOS_DLT_LINUX_SLL:
        if (caplen < 16)
            return MOS_C_MAL_TRUNCATED_L2;
        off = 16;
        et = rd16(p + 14);
        break;
    case MOS_DLT_LINUX_SLL2:
        if (caplen < 20)
            return MOS_C_MAL_TRUNCATED_L2;
        off = 20;
        et = rd16(p);
        break;
    default:
        return MOS_C_MAL_UNKNOWN_LINK;
    }
    if (et == MOS_ETH_P_PPPOE_SESS) {
        /* PPPoE session: 6-byte header, then the PPP protocol */
        if (off + 8 > caplen)
            return MOS_C_MAL_TRUNCATED_L2;
        uint16_t proto = rd16(p + off + 6);
        off += 8;
        et = proto == 0x21 ? MOS_ETH_P_IP : proto == 0x57 ? MOS_ETH_P_IPV6 : 0;
    } else if (et == MOS_ETH_P_MPLS_UC || et == MOS_ETH_P_MPLS_MC) {
        /* MPLS: labels up to the bottom of the stack, then IP told apart by its version */
        for (;;) {
            if (off + 4 > caplen)
                return MOS_C_MAL_TRUNCATED_L2;
            int bos = p[off + 2] & 1;
            off += 4;
            if (bos)
                break;
        }
        if (off + 1 > caplen)
            return MOS_C_MAL_TRUNCATED_L2;
        et = (p[off] >> 4) == 4 ? MOS_ETH_P_IP : (p[off] >> 4) == 6 ? MOS_ETH_P_IPV6 : 0;
    }
    if (et == MOS_ETH_P_IP || et == MOS_ETH_P_IPV6) {
        int r = decode_ip_missing(p + off, caplen - off, wirelen > caplen ? wirelen - caplen : 0, pi);
        if (r == 0 && ((et == MOS_ETH_P_IP) != (pi->ip_version == 4)))
            return MOS_C_MAL_BAD_IP_VERSION;
        return r;
    }
    pi->proto = 0;
    pi->ip_version = 0; /* not IP: the caller counts it as not TCP */
    return 0;
}

int decode_flow_key(const struct pkt_info *pi, struct mos_flow_key *k)
{
    if (!pi->ip_version || (pi->proto != MOS_IPPROTO_TCP && pi->proto != MOS_IPPROTO_UDP))
        return -1;
    uint32_t s[4] = {0}, d[4] = {0};
    if (pi->ip_version == 6) {
        memcpy(s, pi->src, 16);
        memcpy(d, pi->dst, 16);
    } else {
        const uint8_t mapped[4] = {0, 0, 0xff, 0xff}; /* ::ffff:a.b.c.d */
        memcpy(&s[2], mapped, 4);
        memcpy(&d[2], mapped, 4);
        memcpy(&s[3], pi->src, 4);
        memcpy(&d[3], pi->dst, 4);
    }
    uint32_t vlan_key = 0;
    for (int i = 0; i < pi->nvlan; i++)
        vlan_key = (vlan_key << 12) | pi->vlan[i];
    /* ports in network byte order, as in the frame; fragments have none */
    uint16_t sp = 0, dp = 0;
    if (!pi->is_fragment) {
        memcpy(&sp, pi->l4, 2);
        memcpy(&dp, pi->l4 + 2, 2);
    }
    mos_flow_key_make(k, s, d, sp, dp, vlan_key, pi->proto);
    return 0;
}
