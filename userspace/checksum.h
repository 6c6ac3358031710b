/* Checksum validation: the IPv4 header checksum and the TCP and UDP checksums (IPv4 and IPv6
 * pseudo-headers), and the checksum setting (auto/on/off, MOS_CHECKSUM_MODES in mos_engine.h) that
 * decides which packets are checked and what a wrong one becomes. A packet a host would drop for its
 * checksum must not enter the engine's state: otherwise its bytes become the stream and the host's
 * good retransmission looks inconsistent. */
#ifndef MOS_CHECKSUM_H
#define MOS_CHECKSUM_H

#include <stdint.h>

#include "decode.h"
#include "mos_engine.h"

/* What the transport checksum of a decoded packet says. */
enum csum_verdict {
    CSUM_OK = 0,
    CSUM_BAD,          /* wrong */
    CSUM_UNVERIFIABLE, /* the capture cut the segment: the sum cannot be computed */
    CSUM_NONE,         /* no checksum to check (UDP over IPv4 with 0, not TCP or UDP) */
};

/* The auto setting's state: a sample of checked packets decides whether the input carries offloaded
 * checksums (struct mos_engine holds one). */
struct csum_state {
    uint8_t decided;   /* auto: the sample is complete (or the input was declared offloaded) */
    uint8_t off;       /* auto: offloading assumed, validation switched off */
    uint32_t sampled;  /* auto, before the decision: packets whose checksums were checked */
    uint32_t bad;      /* of those, with a wrong checksum */
    uint8_t complete;  /* partial checksums (offloaded by a local stack) are completed in the frame */
};

/* 1 when the IPv4 header at l3 (its length from the header, within the decoded packet) sums right. */
int csum_ipv4_header_ok(const uint8_t *l3);
/* The TCP or UDP checksum of a decoded, unfragmented packet (or reassembled datagram). */
enum csum_verdict csum_l4(const struct pkt_info *pi);

/* Writing them (a reassembled datagram's header, a rewritten frame): the IPv4 header checksum of the
 * header at l3; the TCP or UDP checksum over the pi->l4_len bytes at l4 (pi decoded from that frame). */
void csum_set_ipv4_header(uint8_t *l3);
void csum_set_l4(const struct pkt_info *pi, uint8_t *l4);

/* Engine side (struct mos_engine): checks a decoded packet as the setting says, counts it, and returns
 * 1 when the packet is rejected (counted under bad_checksum_*, ERROR raised, the frame handed to the
 * malformed sink): the caller then drops it before any connection sees it. datagram: pi is a
 * reassembled datagram (its fragments' IPv4 headers were checked one by one: only the transport sum is
 * left), else a packet as captured (a fragment: only its IPv4 header). */
int checksum_reject(mos_engine_t *e, const struct pkt_info *pi, const struct mos_pkt *p, int datagram);

#endif
