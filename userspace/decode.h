/* Packet decoding in place: link layer, VLAN/QinQ, IPv4 (options), IPv6 (extension headers), TCP
 * (options), UDP. Every header access is bounds-checked against the captured length; the result
 * points into the packet.
 *
 * A capture's snaplen may cut a packet short of its wire length. When every header is captured and only
 * payload is missing (the IP length fits the wire length, not the captured one), the packet is decoded:
 * payload_len is what was captured, payload_cut what the packet carried beyond it. Headers cut short are
 * malformed as ever; so is an IP length beyond the wire length (the packet itself lied). A live frame has
 * wirelen == caplen, so nothing changes for it. */
#ifndef MOS_DECODE_H
#define MOS_DECODE_H

#include <stdint.h>
#include "mos_engine.h"
#include "mos_parse.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20

struct pkt_info {
    const uint8_t *l3;          /* IP header */
    uint32_t l3_len;            /* bytes from l3 to the end of the IP datagram (captured) */
    uint32_t payload_cut;       /* payload bytes the packet carried past the capture's end (snaplen) */
    const uint8_t *l4;
    uint32_t l4_len;
    const uint8_t *payload;
    uint32_t payload_len;
    uint16_t vlan[MOS_MAX_VLAN];
    uint8_t nvlan;
    uint8_t ip_version;
    uint8_t proto;              /* IPPROTO_* of the transport */
    uint8_t is_fragment;        /* IP fragment: hand l3 to defrag */
    uint8_t tcp_flags;
    uint8_t wscale;             /* 0xff: no option */
    uint8_t sack_perm;
    uint8_t has_ts;
    uint8_t has_mss;
    uint8_t aliased;            /* src, dst and the ports are a connection's own key, which an alias of
                                 * it matched (userspace/flow_alias.h); the frame's are in wire */
    uint8_t src[16], dst[16];   /* IPv4 addresses in the first 4 bytes, rest zero */
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint16_t window;
    uint16_t mss;
    uint32_t tsval, tsecr;
    /* with aliased set: what the frame carried (what its checksums cover), written only then */
    struct {
        uint8_t src[16], dst[16];
        uint16_t sport, dport;
    } wire;
};

/* Returns 0, or the enum mos_counter of the malformation. A frame as it was on the wire (caplen is its
 * length): nothing may be missing. */
int decode_packet(const uint8_t *pkt, uint32_t caplen, int linktype, struct pkt_info *pi);
/* The same for a captured packet whose wire length was wirelen (more than caplen: the snaplen cut it). */
int decode_captured(const uint8_t *pkt, uint32_t caplen, uint32_t wirelen, int linktype, struct pkt_info *pi);
/* Decode from an IP header (after defragmentation); keeps pi's VLAN ids. */
int decode_ip(const uint8_t *l3, uint32_t len, struct pkt_info *pi);
/* The symmetric steering key (bpf/mos_shared.h) of a decoded TCP or UDP packet, as the XDP program
 * builds it; -1 for other protocols. */
int decode_flow_key(const struct pkt_info *pi, struct mos_flow_key *k);

/* The payload length the packet carried (captured or not): what its sequence numbers cover. */
static inline uint32_t pi_seg_payload(const struct pkt_info *pi)
{
    return pi->payload_len + pi->payload_cut;
}

#endif
