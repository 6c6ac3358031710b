/* The header walk shared by the XDP program (bpf/xdp_mos.c) and the engine's decoder (userspace/decode.c):
 * which ethertypes are VLAN tags, which IPv6 next headers are extension headers and how long each is,
 * and the limits of both walks. Both parsers step through the same rules, so the program and the engine
 * agree on what a packet is (the engine, as the later and stricter parser, also reads every field).
 *
 * Each function works on values the caller has already bounds-checked: the XDP verifier needs the
 * check against data_end next to the access, and the engine checks against the captured length.
 */
#ifndef MOS_PARSE_H
#define MOS_PARSE_H

#include "mos_shared.h"

enum mos_parse_limits {
    MOS_MAX_VLAN = 2,       /* VLAN tags walked (802.1Q, QinQ); one more is malformed for both parsers */
    /* IPv6 extension headers (the fragment header included) walked before the transport header. A packet
     * with more is malformed for both parsers (the program drops it, the engine counts it under
     * malformed_too_many_ipv6_ext): passing it on as "not TCP" would let a connection whose packets carry
     * one header more than the limit through an inline firewall unseen. RFC 8200 expects at most one of
     * each kind (destination options twice), about 8; 16 leaves room without a real stack sending more. */
    MOS_MAX_IPV6_EXT = 16,
};

enum mos_ethertype {
    MOS_ETH_P_IP = 0x0800,
    MOS_ETH_P_IPV6 = 0x86DD,
    MOS_ETH_P_ARP = 0x0806,
    MOS_ETH_P_8021Q = 0x8100,
    MOS_ETH_P_8021AD = 0x88A8,
    MOS_ETH_P_QINQ1 = 0x9100, /* pre-standard QinQ, still sent by some switches */
    MOS_ETH_P_PPPOE_SESS = 0x8864,
    MOS_ETH_P_MPLS_UC = 0x8847,
    MOS_ETH_P_MPLS_MC = 0x8848,
};

/* An ethertype (host byte order) that announces a VLAN tag. */
MOS_INLINE int mos_is_vlan_ethertype(mos_u16 et)
{
    return et == MOS_ETH_P_8021Q || et == MOS_ETH_P_8021AD || et == MOS_ETH_P_QINQ1;
}

enum mos_ipproto {
    MOS_IPPROTO_HOPOPTS = 0,
    MOS_IPPROTO_TCP = 6,
    MOS_IPPROTO_UDP = 17,
    MOS_IPPROTO_ROUTING = 43,
    MOS_IPPROTO_FRAGMENT = 44,
    MOS_IPPROTO_AH = 51,
    MOS_IPPROTO_DSTOPTS = 60,
    MOS_IPPROTO_MOBILITY = 135,
};

/* The minimum bytes of an IPv6 extension header (next header, length, and what the length needs). */
#define MOS_IPV6_EXT_MIN 8

/* An IPv6 next header the walk skips over: an extension header other than the fragment header (which
 * the caller handles, because a real fragment ends the walk). */
MOS_INLINE int mos_ipv6_is_ext(mos_u8 nh)
{
    return nh == MOS_IPPROTO_HOPOPTS || nh == MOS_IPPROTO_ROUTING || nh == MOS_IPPROTO_DSTOPTS ||
           nh == MOS_IPPROTO_MOBILITY || nh == MOS_IPPROTO_AH;
}

/* Length in bytes of the extension header `nh` (mos_ipv6_is_ext) whose second byte is `len_byte`. */
MOS_INLINE mos_u32 mos_ipv6_ext_len(mos_u8 nh, mos_u8 len_byte)
{
    if (nh == MOS_IPPROTO_AH) /* length in 4-byte units, minus 2 */
        return ((mos_u32)len_byte + 2) * 4;
    return ((mos_u32)len_byte + 1) * 8;
}

/* IPv6 fragment header: bytes 2-3 are (offset << 3) | M. A header with offset 0 and M clear is an
 * atomic fragment (RFC 6946): the packet is whole and the walk goes on past it. */
MOS_INLINE int mos_ipv6_frag_is_atomic(mos_u16 frag_off_host)
{
    return (frag_off_host & 0xFFF9) == 0;
}

/* Any IPv6 extension header, the fragment header included. */
MOS_INLINE int mos_ipv6_is_any_ext(mos_u8 nh)
{
    return nh == MOS_IPPROTO_FRAGMENT || mos_ipv6_is_ext(nh);
}

/* After walking MOS_MAX_IPV6_EXT headers: is `nh` still an extension header (fragment included), i.e.
 * the packet has more than the limit? */
MOS_INLINE int mos_ipv6_ext_over_limit(mos_u8 nh)
{
    return mos_ipv6_is_any_ext(nh);
}

MOS_INLINE int mos_ipv6_frag_is_first(mos_u16 frag_off_host)
{
    return (frag_off_host & 0xFFF8) == 0;
}

/* IPv4 flags/fragment offset (host byte order): a fragment when MF is set or the offset is not 0. */
#define MOS_IP_MF 0x2000
#define MOS_IP_OFFSET 0x1FFF

#endif /* MOS_PARSE_H */
