/* A translated connection's frames, rewritten in place as they cross an inline box: the engine's NAT
 * (mos_conn_translate, Connection.translate).
 *
 * An alias (flow_alias.h) marked to translate says: endpoint `side` is known past the box as the alias's
 * address and port. Each frame that endpoint sends leaves with them as its source (SNAT, for a client);
 * each frame that carried the alias leaves with the endpoint's own address and port as its destination,
 * and the MAC of the endpoint's frames (DNAT back). The IPv4 header checksum and the TCP/UDP checksum are
 * updated incrementally (RFC 1624), so no byte is summed again. Done in C on the packet's path, as the
 * kernel's NAT does, so a translated connection needs no handler per packet. */
#ifndef MOS_TRANSLATE_H
#define MOS_TRANSLATE_H

#include "engine_state.h"

/* The frame of packet p (decoded as pi, sent by side `sender` of c) rewritten if c translates and the
 * engine forwards (a live inline batch); a frame that cannot be rewritten in place (a datagram reassembled
 * from fragments, IPv6 extension headers before the transport) is dropped instead of leaving untranslated.
 * Counted in translated_packets. */
void translate_packet(mos_engine_t *e, struct conn *c, int sender, const struct pkt_info *pi,
                      const struct mos_pkt *p);

/* One endpoint of a decoded TCP or UDP packet's headers, in its (writable) frame -- which = 0 the source,
 * 1 the destination -- becomes addr (16 bytes, IPv4 in the first 4) : port (host order), the checksums
 * updated. The headers must be in the frame (not a reassembled datagram) with no IPv6 extension header. */
void translate_endpoint(const struct pkt_info *pi, int which, const uint8_t *addr, uint16_t port);

#endif
