/* Per-direction TCP stream reassembly.
 *
 * One `struct reasm_dir` is embedded in each connection for each direction (it must stay small: the
 * engine aims at <= 256 bytes per connection with nothing buffered). Everything held (out-of-order
 * segments, delivered bytes kept until acknowledged) lives behind `buf`, allocated lazily and freed as
 * soon as nothing is held.
 *
 * Stream offsets are 64-bit byte counts from the first byte after the ISN (or from the first byte seen
 * when a connection is picked up mid-stream); sequence numbers are 32-bit and wrap, so every
 * seq->offset conversion goes through the direction's (next_seq, next_off) anchor.
 *
 * The engine learns about deliveries, holes, retransmissions and limits through callbacks, so one
 * call can report several things (data, then a gap, then more data) in stream order.
 */
#ifndef MOS_REASM_H
#define MOS_REASM_H

#include <stddef.h>
#include <stdint.h>

/* Overlap policies, with the meanings Suricata and Snort give them (target-based reassembly). */
#define REASM_POLICIES(X)                                                                                   \
    X(FIRST, "first")         /* keep the bytes seen first */                                           \
    X(LAST, "last")           /* keep the bytes seen last */                                            \
    X(BSD, "bsd")                                                                                       \
    X(LINUX, "linux")                                                                                   \
    X(OLD_LINUX, "old-linux")                                                                           \
    X(WINDOWS, "windows")                                                                               \
    X(VISTA, "vista")                                                                                   \
    X(SOLARIS, "solaris")

enum reasm_policy {
#define REASM_X_(id, name) REASM_POLICY_##id,
    REASM_POLICIES(REASM_X_)
#undef REASM_X_
    REASM_POLICY_COUNT
};

/* Why a limit was hit (reported through on_limit and counted). */
enum reasm_limit {
    REASM_LIMIT_DIR_BUF = 0,  /* the direction's buffer limit */
    REASM_LIMIT_MEMCAP,       /* the global memory cap */
    REASM_LIMIT_SEGMENTS,     /* too many held segments in one direction */
    REASM_LIMIT_COUNT
};

#define REASM_COUNTERS(X)                                                                                   \
    X(SEGMENTS, segments)                       /* data segments offered */                             \
    X(BYTES_DELIVERED, bytes_delivered)         /* in-order bytes delivered */                          \
    X(BYTES_GAP, bytes_gap)                     /* bytes declared lost (holes) */                       \
    X(GAPS, gaps)                                                                                       \
    X(OOO_SEGMENTS, ooo_segments)               /* segments that arrived ahead of a hole */             \
    X(REXMIT_SEGMENTS, rexmit_segments)         /* segments carrying only bytes already seen */         \
    X(REXMIT_BYTES, rexmit_bytes)                                                                       \
    X(REXMIT_INCONSISTENT, rexmit_inconsistent) /* retransmitted bytes differing from the first copy */ \
    X(REXMIT_UNVERIFIABLE, rexmit_unverifiable) /* retransmitted bytes acked or not held: not compared */  \
    X(OVERLAP_SEGMENTS, overlap_segments)       /* segments partly overlapping held data */             \
    X(LIMIT_DIR_BUF, limit_dir_buf)                                                                     \
    X(LIMIT_MEMCAP, limit_memcap)                                                                       \
    X(LIMIT_SEGMENTS, limit_segments)                                                                   \
    X(BYTES_DROPPED_LIMIT, bytes_dropped_limit) /* bytes not buffered because of a limit */           \
    X(SNAPLEN_GAPS, snaplen_gaps)               /* gaps (also in gaps) of bytes the capture cut */      \
    X(SNAPLEN_GAP_BYTES, snaplen_gap_bytes)     /* their bytes (also in bytes_gap) */

enum reasm_counter {
#define REASM_X_(id, name) REASM_C_##id,
    REASM_COUNTERS(REASM_X_)
#undef REASM_X_
    REASM_C_COUNT
};

struct reasm_ctx;

/* Callbacks. `user` is reasm_ctx.user. Pointers passed are valid until the next reasm_* call on the
 * same direction that may free memory (reasm_trim, reasm_release), except `new_bytes` in on_rexmit,
 * which points into the caller's segment and is valid for the duration of that reasm_segment call. */
struct reasm_cb {
    /* Bytes [off, off+len) became in-order. `data` points at them (contiguous). */
    void (*on_data)(void *user, void *dir_owner, uint64_t off, const uint8_t *data, uint32_t len);
    /* Bytes [off, off+len) will never be seen; delivery continues at off+len. */
    void (*on_gap)(void *user, void *dir_owner, uint64_t off, uint64_t len);
    /* A segment's bytes [off, off+len) had been seen already. If both copies are available and they
     * differ, inconsistent=1 and old_bytes/new_bytes point at the two versions (len bytes each); the
     * policy decided which version the stream keeps. If the old bytes were no longer held, or the
     * receiver had acknowledged them before this copy came (so the verdict never depends on when memory
     * was trimmed), old_bytes is NULL and inconsistent=0. */
    void (*on_rexmit)(void *user, void *dir_owner, uint64_t off, uint32_t len, int inconsistent,
                      const uint8_t *old_bytes, const uint8_t *new_bytes);
    /* A limit stopped `len` bytes at `off` from being held. */
    void (*on_limit)(void *user, void *dir_owner, enum reasm_limit why, uint64_t off, uint32_t len);
};

struct reasm_ctx {
    struct reasm_cb cb;
    void *user;
    uint64_t memcap;          /* global cap on bytes held by all directions (payload + overhead) */
    uint64_t mem_used;
    uint32_t dir_limit;       /* cap on bytes held by one direction */
    uint32_t max_segments;    /* cap on held segments in one direction */
    /* The peek window: delivered bytes within this many of the last handled byte (keep_from) stay
     * held, trims and limits notwithstanding, so that what an app can read back depends on the stream
     * alone, not on when the events of earlier batches were handled. 0: none (set after init). */
    uint32_t retain;
    /* Bytes inside [stable_lo, stable_hi) stay readable until reasm_unborrow has been called for every
     * direction (a memory-mapped capture file): segments from there are held by reference instead of
     * copied. NULL: always copy. */
    const uint8_t *stable_lo, *stable_hi;
    uint64_t counters[REASM_C_COUNT];
};

struct reasm_buf; /* private to reasm.c */

/* Embedded per direction. 32 bytes. */
struct reasm_dir {
    struct reasm_buf *buf;    /* NULL when nothing is held */
    uint64_t next_off;        /* stream offset of the next in-order byte (= bytes delivered + gaps) */
    uint32_t next_seq;        /* sequence number of next_off */
    uint8_t  policy;          /* enum reasm_policy */
    uint8_t  buffering;       /* 0: deliver in-order bytes straight from the segment, hold nothing */
    uint8_t  initialized;
    uint8_t  pad;
    uint64_t acked_off;       /* receiver acknowledged everything below this offset */
};

void reasm_ctx_init(struct reasm_ctx *ctx, const struct reasm_cb *cb, void *user, uint64_t memcap,
                    uint32_t dir_limit, uint32_t max_segments);

/* Start a direction whose first byte has sequence number `seq` (ISN+1, or the first byte seen). */
void reasm_dir_init(struct reasm_dir *d, uint32_t seq, uint8_t policy, uint8_t buffering);

/* Convert a sequence number to a stream offset relative to the anchor (handles wrap-around; a
 * sequence number more than 2^31 behind the anchor is taken as ahead). */
static inline int64_t reasm_seq_to_off(const struct reasm_dir *d, uint32_t seq)
{
    return (int64_t)d->next_off + (int64_t)(int32_t)(seq - d->next_seq);
}

/* Offer a data segment (seq is the sequence number of data[0], SYN already accounted for by the
 * caller). Delivers whatever became in-order, reports retransmissions/overlaps per the policy, holds
 * out-of-order bytes within the limits. `owner` is passed back to the callbacks. */
void reasm_segment(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint32_t seq,
                   const uint8_t *data, uint32_t len);

/* A segment of which the capture holds the first `len` bytes (data), the next `cut` bytes cut by its
 * snaplen: the bytes are offered as by reasm_segment, the cut ones become a gap (SNAPLEN_GAPS) when the
 * stream reaches them, unless a segment brings them before (see reasm.c). */
void reasm_segment_cut(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint32_t seq,
                       const uint8_t *data, uint32_t len, uint32_t cut);

/* The receiver acknowledged everything before `ack`. If that passes bytes never seen, the hole up to
 * the next held segment (or up to ack) is reported with on_gap and delivery continues. */
void reasm_ack(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner, uint32_t ack);

/* End of the stream: every remaining hole becomes a gap and everything held is delivered. */
void reasm_flush(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner);

/* Free delivered bytes below min(keep_from, acked_off, keep_from - ctx->retain) (the engine calls it
 * after the events that point at them have been handled). Held out-of-order bytes are never trimmed. */
void reasm_trim(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t keep_from);

/* Drop held bytes at stream offsets >= off (never delivered ones: off below next_off counts from
 * next_off), as a receiver drops what it queued past a FIN. Returns the bytes dropped. */
uint64_t reasm_drop_from(struct reasm_ctx *ctx, struct reasm_dir *d, uint64_t off);

/* Free everything held. */
void reasm_release(struct reasm_ctx *ctx, struct reasm_dir *d);

/* Copy every byte held by reference (from the stable region) into memory of the direction's own, so
 * that the region may go away. Held bytes that cannot be copied (no memory) are dropped like a memcap
 * hit: counted, and reported with on_limit when not delivered yet. Returns the bytes copied. */
uint64_t reasm_unborrow(struct reasm_ctx *ctx, struct reasm_dir *d, void *owner);

/* Copy held bytes [off, off+len) to dst. Returns the number of bytes copied from `off` on, stopping at
 * the first byte not held. */
uint32_t reasm_copy(const struct reasm_dir *d, uint64_t off, uint32_t len, uint8_t *dst);

/* The lowest held offset >= off (delivered-and-retained or out-of-order), or UINT64_MAX. */
uint64_t reasm_next_held(const struct reasm_dir *d, uint64_t off);

/* Held bytes, and the list of held out-of-order segments and holes above next_off.
 * Fills up to `max` (off, len) pairs of held segments; returns how many there are in all. */
uint64_t reasm_held_bytes(const struct reasm_dir *d);
uint32_t reasm_segments(const struct reasm_dir *d, uint64_t *offs, uint32_t *lens, uint32_t max);

#endif
