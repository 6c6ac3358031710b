/* IPv4 and IPv6 fragment reassembly with bounded memory and a timeout (packet time).
 *
 * Fragments are keyed by (src, dst, id, protocol/next header, vlan_key). Overlapping fragments are
 * resolved by a target-based policy (DEFRAG_POLICIES, default first; counted), and a datagram
 * exceeding 65535 bytes, a fragment with a bad offset or length, or a conflicting last fragment
 * invalidates the datagram (counted by reason).
 */
#ifndef MOS_DEFRAG_H
#define MOS_DEFRAG_H

#include <stdint.h>

enum defrag_result {
    DEFRAG_HELD = 0,      /* kept; the datagram is not complete yet */
    DEFRAG_DONE = 1,      /* *out is a complete datagram */
    DEFRAG_ERROR = -1,    /* fragment rejected: reason counted (see defrag_stats) */
};

/* Which copy of overlapping bytes the target host keeps, with the meanings Snort's frag3 and Suricata
 * give them (after Novak's "Target-Based Fragmentation Reassembly"); see defrag.c for each rule.
 * linux is Linux since 4.19 (and every RFC 5722 host for IPv6): an overlap drops the datagram;
 * old-linux is the Linux of frag3 and Suricata (before 4.19). */
#define DEFRAG_POLICIES(X)                                                                                  \
    X(FIRST, "first")         /* the bytes seen first */                                                \
    X(LAST, "last")           /* the bytes seen last */                                                 \
    X(BSD, "bsd")             /* a new fragment loses to held bytes starting at or before it */         \
    X(BSD_RIGHT, "bsd-right") /* a new fragment wins over held bytes starting at or before it */        \
    X(LINUX, "linux")         /* any overlap but an exact retransmission drops the datagram */          \
    X(OLD_LINUX, "old-linux") /* a new fragment loses to held bytes starting before it */               \
    X(WINDOWS, "windows")     /* first, unless the new one starts before and ends after held bytes */   \
    X(SOLARIS, "solaris")     /* first, unless the new one starts before and ends at or after them */

enum defrag_policy {
#define DEFRAG_X_(id, name) DEFRAG_POLICY_##id,
    DEFRAG_POLICIES(DEFRAG_X_)
#undef DEFRAG_X_
    DEFRAG_POLICY_COUNT
};

#define DEFRAG_COUNTERS(X)                                                                                  \
    X(FRAGMENTS, fragments)         /* fragments offered */                                             \
    X(DATAGRAMS, datagrams)         /* datagrams completed */                                           \
    X(OVERLAPS, overlaps)           /* fragments overlapping held bytes (the policy decides) */          \
    X(TOO_BIG, too_big)             /* reassembled size would exceed 65535 */                           \
    X(BAD_FRAGMENT, bad_fragment)   /* malformed fragment (zero length, bad alignment, truncated) */    \
    X(TIMEOUTS, timeouts)           /* datagrams dropped after the timeout */                           \
    X(MEMCAP, memcap)               /* fragments dropped because of the memory cap or datagram limit */ \
    X(FRAGS_DISCARDED, discarded)   /* fragments freed without completing a datagram */                \
    X(OVERLAPS_DIFFERING, overlaps_differing) /* of the overlaps, those whose bytes differ from held ones */ \
    X(POLICY_DROPS, policy_drops)   /* datagrams dropped by the policy (linux: an overlap) */

enum defrag_counter {
#define DEFRAG_X_(id, name) DEFRAG_C_##id,
    DEFRAG_COUNTERS(DEFRAG_X_)
#undef DEFRAG_X_
    DEFRAG_C_COUNT
};

typedef struct defrag defrag_t;

defrag_t *defrag_new(uint64_t memcap, uint64_t timeout_ns, uint32_t max_datagrams);
void defrag_free(defrag_t *df);
/* The overlap policy (enum defrag_policy; first until set). Returns -1 for an unknown one. */
int defrag_set_policy(defrag_t *df, unsigned policy);

/* l3 points at an IPv4 header (version 4) or IPv6 header (version 6) carrying a fragment, len is the
 * bytes available from l3 on (captured length). For IPv6 the fragment header may follow other
 * extension headers. On DEFRAG_DONE *out and *out_len describe the reassembled datagram: IPv4 with MF and
 * offset cleared, total length and header checksum fixed; IPv6 with the fragment header removed and
 * the payload length and next header fixed. It is owned by df and valid until the next defrag call. */
int defrag_feed(defrag_t *df, const uint8_t *l3, uint32_t len, uint32_t vlan_key, uint64_t now_ns,
                const uint8_t **out, uint32_t *out_len);

/* Drop datagrams older than the timeout. Called by the engine as packet time advances. */
void defrag_expire(defrag_t *df, uint64_t now_ns);
/* The end of input: datagrams still incomplete never will be; their fragments are discarded. */
void defrag_flush(defrag_t *df);

const uint64_t *defrag_counters(const defrag_t *df); /* DEFRAG_C_COUNT values */
/* The last defrag_feed's overlap: the bytes of the fragment that differed from the bytes held there
 * (0: it overlapped nothing, or only identical bytes), and the fragment's offset in its datagram. */
uint32_t defrag_last_differing(const defrag_t *df, uint32_t *frag_off);
uint64_t defrag_mem_used(const defrag_t *df);

#endif
