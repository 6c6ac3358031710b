/* IPv4 and IPv6 fragment reassembly with bounded memory and a timeout (packet time).
 *
 * Fragments are keyed by (src, dst, id, protocol/next header, vlan_key). Overlapping fragments are
 * resolved first-wins (counted), and a datagram exceeding 65535 bytes, a fragment with a bad offset
 * or length, or a conflicting last fragment invalidates the datagram (counted by reason).
 */
#ifndef MOS_DEFRAG_H
#define MOS_DEFRAG_H

#include <stdint.h>

enum defrag_result {
    DEFRAG_HELD = 0,      /* kept; the datagram is not complete yet */
    DEFRAG_DONE = 1,      /* *out is a complete datagram */
    DEFRAG_ERROR = -1,    /* fragment rejected: reason counted (see defrag_stats) */
};

#define DEFRAG_COUNTERS(X)                                                                                  \
    X(FRAGMENTS, fragments)         /* fragments offered */                                             \
    X(DATAGRAMS, datagrams)         /* datagrams completed */                                           \
    X(OVERLAPS, overlaps)           /* fragments overlapping others (first copy kept) */                \
    X(TOO_BIG, too_big)             /* reassembled size would exceed 65535 */                           \
    X(BAD_FRAGMENT, bad_fragment)   /* malformed fragment (zero length, bad alignment, truncated) */    \
    X(TIMEOUTS, timeouts)           /* datagrams dropped after the timeout */                           \
    X(MEMCAP, memcap)               /* fragments dropped because of the memory cap or datagram limit */ \
    X(FRAGS_DISCARDED, discarded)   /* fragments freed without completing a datagram */

enum defrag_counter {
#define DEFRAG_X_(id, name) DEFRAG_C_##id,
    DEFRAG_COUNTERS(DEFRAG_X_)
#undef DEFRAG_X_
    DEFRAG_C_COUNT
};

typedef struct defrag defrag_t;

defrag_t *defrag_new(uint64_t memcap, uint64_t timeout_ns, uint32_t max_datagrams);
void defrag_free(defrag_t *df);

/* l3 points at an IPv4 header (version 4) or IPv6 header (version 6) carrying a fragment, len is the
 * bytes available from l3 on (captured length). For IPv6 the fragment header may follow other
 * extension headers. On DEFRAG_DONE *out and *out_len describe the reassembled datagram: IPv4 with MF and
 * offset cleared, total length and header checksum fixed; IPv6 with the fragment header removed and
 * the payload length and next header fixed. It is owned by df and valid until the next defrag call. */
int defrag_feed(defrag_t *df, const uint8_t *l3, uint32_t len, uint32_t vlan_key, uint64_t now_ns,
                const uint8_t **out, uint32_t *out_len);

/* Drop datagrams older than the timeout. Called by the engine as packet time advances. */
void defrag_expire(defrag_t *df, uint64_t now_ns);

const uint64_t *defrag_counters(const defrag_t *df); /* DEFRAG_C_COUNT values */
uint64_t defrag_mem_used(const defrag_t *df);

#endif
