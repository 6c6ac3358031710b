#include "arena.h"

#include <stdlib.h>
#include <string.h>

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    uint8_t data[];
};

/* Chunks of 1 MiB: a batch rarely needs more than one, and a bigger copy gets a chunk of its own. */
#define ARENA_CHUNK (1u << 20)

uint8_t *arena_copy(struct arena *ar, const uint8_t *src, uint32_t len)
{
    struct arena_chunk *a = ar->head;
    if (!a || a->cap - a->used < len) {
        size_t cap = len > ARENA_CHUNK ? len : ARENA_CHUNK;
        a = malloc(sizeof(*a) + cap);
        if (!a)
            return NULL;
        a->cap = cap;
        a->used = 0;
        a->next = ar->head;
        ar->head = a;
    }
    uint8_t *p = a->data + a->used;
    memcpy(p, src, len);
    a->used += len;
    return p;
}

void arena_reset(struct arena *ar)
{
    while (ar->head) {
        struct arena_chunk *n = ar->head->next;
        free(ar->head);
        ar->head = n;
    }
}
