/* Hashing helpers shared by the engine's tables (flow table, fragment table). */
#ifndef MOS_MIX_H
#define MOS_MIX_H

#include <stdint.h>
#include <sys/random.h>
#include <sys/types.h>

/* The 64-bit finalizer of MurmurHash3: every input bit affects every output bit. */
static inline uint64_t mos_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* A random seed, so that a sender cannot aim packets at one bucket of a table. */
static inline uint64_t mos_random_seed(const void *salt)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = 0x6d6f732d78647021ull; /* no entropy yet (early boot): the salt's address still varies */
    return mos_mix64(s ^ (uint64_t)(uintptr_t)salt);
}

#endif
