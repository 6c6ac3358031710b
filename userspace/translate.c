#include "translate.h"

#include <string.h>

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* The checksum at `field` after the len bytes (even) at old become those at new (RFC 1624, eqn. 3:
 * HC' = ~(~HC + ~m + m')). */
static void csum_replace(uint8_t *field, const uint8_t *old, const uint8_t *new, size_t len)
{
    uint32_t s = (uint16_t)~rd16(field);
    for (size_t i = 0; i + 1 < len; i += 2)
        s += (uint16_t)~rd16(old + i) + (uint32_t)rd16(new + i);
    while (s >> 16)
        s = (s & 0xffffu) + (s >> 16);
    wr16(field, (uint16_t)~s);
}

void translate_endpoint(const struct pkt_info *pi, int which, const uint8_t *addr, uint16_t port)
{
    uint8_t *l3 = (uint8_t *)(uintptr_t)pi->l3, *l4 = (uint8_t *)(uintptr_t)pi->l4;
    int v4 = pi->ip_version == 4;
    size_t alen = v4 ? 4 : 16;
    uint8_t *a = v4 ? l3 + 12 + 4 * which : l3 + 8 + 16 * which;
    uint8_t *pp = l4 + 2 * which;
    uint8_t np[2] = {(uint8_t)(port >> 8), (uint8_t)port};
    uint8_t *sum = l4 + (pi->proto == MOS_IPPROTO_TCP ? 16 : 6);
    /* an IPv4 UDP checksum of 0 means none: it stays none */
    if (!(pi->proto == MOS_IPPROTO_UDP && v4 && rd16(sum) == 0)) {
        csum_replace(sum, a, addr, alen);
        csum_replace(sum, pp, np, 2);
        if (pi->proto == MOS_IPPROTO_UDP && rd16(sum) == 0)
            wr16(sum, 0xffff); /* 0 would say none (RFC 768) */
    }
    if (v4)
        csum_replace(l3 + 10, a, addr, 4);
    memcpy(a, addr, alen);
    memcpy(pp, np, 2);
}

void translate_packet(mos_engine_t *e, struct conn *c, int sender, const struct pkt_info *pi,
                      const struct mos_pkt *p)
{
    struct ft_alias *a = (struct ft_alias *)fa_get(&e->ft, c);
    if (!a || !a->translate || !e->forwarding)
        return;
    int snat = sender == a->side && !pi->aliased, dnat = sender != a->side && pi->aliased;
    if (!snat && !dnat)
        return; /* already as it should leave */
    size_t hdr = pi->proto == MOS_IPPROTO_TCP ? 20 : 8;
    int in_frame = pi->l3 >= p->data && pi->l4 && pi->l4 + hdr <= p->data + p->caplen;
    int plain_v6 = pi->ip_version != 6 || pi->l4 == pi->l3 + 40;
    if (!in_frame || !plain_v6) {
        if (e->drop_sink)
            e->drop_sink(e->drop_arg, p, MOS_XSK_C_UNTRANSLATED_DROP);
        return;
    }
    uint8_t *frame = (uint8_t *)(uintptr_t)p->data;
    int ether = e->linktype == MOS_DLT_EN10MB && p->caplen >= 12;
    if (snat) {
        translate_endpoint(pi, 0, a->key.addr[a->side], a->key.port[a->side]);
        if (ether) { /* what the replies go back to */
            memcpy(a->mac, frame + 6, 6);
            a->mac_known = 1;
        }
    } else {
        translate_endpoint(pi, 1, c->key.addr[a->side], c->key.port[a->side]);
        if (ether && a->mac_known)
            memcpy(frame, a->mac, 6);
    }
    e->counters[MOS_C_TRANSLATED_PACKETS]++;
}
