/* A bump allocator for bytes that events point at until the batch's events are handled (the two copies
 * of an inconsistent retransmission): one free for the whole batch instead of one per event. */
#ifndef MOS_ARENA_H
#define MOS_ARENA_H

#include <stddef.h>
#include <stdint.h>

struct arena_chunk;

struct arena {
    struct arena_chunk *head; /* newest chunk first; NULL: empty */
};

/* A copy of len bytes of src that lives until arena_reset, or NULL when memory is short. */
uint8_t *arena_copy(struct arena *a, const uint8_t *src, uint32_t len);
/* Frees every copy. */
void arena_reset(struct arena *a);

#endif
