#define _DEFAULT_SOURCE
/* pcap and pcapng files, read in batches.
 *
 * libpcap opens every file (it knows the formats and link types). For a classic pcap file that can be
 * mapped, the records are then read straight from the mapping: a batch's packets point into the file
 * itself, with no copy at all. Anything else (pcapng, a pipe, a modified-pcap variant) is read with
 * pcap_next_ex(), which reuses its buffer for each packet, so the batch is copied into an arena.
 * Either way a batch's packets stay valid until the next batch is read (the engine's events point into
 * them until they are handled).
 */
#include "mos_engine.h"

#include <fcntl.h>
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define RELEASE_STEP (32u << 20)
#define PREFETCH_AHEAD 4096u
#define MAX_RECORD (1u << 18) /* libpcap's own limit on a record's captured length */

struct mos_pcap {
    pcap_t *pc;
    FILE *fp;
    int linktype;
    int64_t size;
    uint8_t *arena;       /* copies of a batch (libpcap path) */
    size_t arena_cap;
    const uint8_t *map;   /* the file, mapped */
    size_t maplen;
    size_t released;      /* bytes of the mapping already read and given back */
    /* direct path (classic pcap in the mapping) */
    int direct;
    int swapped;          /* the file's byte order is not ours */
    int nano;             /* timestamps in nanoseconds */
    size_t pos;           /* offset of the next record */
    size_t pf;            /* prefetched up to here */
    char pending[256];    /* an error met after a batch's good packets: reported by the next call */
};

static uint32_t rd32(const uint8_t *p, int swapped)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

/* A classic pcap header we can read ourselves (libpcap has validated the rest). */
static void detect_direct(mos_pcap_t *p)
{
    if (!p->map || p->maplen < 24)
        return;
    uint32_t magic;
    memcpy(&magic, p->map, 4);
    switch (magic) {
    case 0xa1b2c3d4: p->direct = 1; break;
    case 0xd4c3b2a1: p->direct = 1; p->swapped = 1; break;
    case 0xa1b23c4d: p->direct = 1; p->nano = 1; break;
    case 0x4d3cb2a1: p->direct = 1; p->nano = 1; p->swapped = 1; break;
    default: return; /* pcapng, modified pcap, ...: libpcap reads them */
    }
    p->pos = 24;
}

mos_pcap_t *mos_pcap_open(const char *path, char *err, size_t errlen)
{
    char ebuf[PCAP_ERRBUF_SIZE] = "";
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: no such file", path);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: is a directory, not a capture file", path);
        return NULL;
    }
    void *map = NULL;
    size_t maplen = 0;
    FILE *fp = NULL;
    if (S_ISREG(st.st_mode) && st.st_size > 0) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            close(fd);
            if (map == MAP_FAILED) {
                map = NULL;
            } else {
                maplen = (size_t)st.st_size;
                madvise(map, maplen, MADV_SEQUENTIAL | MADV_WILLNEED);
                /* libpcap reads through stdio (4 KiB read() calls): from memory instead */
                fp = fmemopen(map, maplen, "rb");
            }
        }
    }
    if (!fp)
        fp = fopen(path, "rb");
    if (!fp) {
        if (map)
            munmap(map, maplen);
        snprintf(err, errlen, "%s: cannot open", path);
        return NULL;
    }
    pcap_t *pc = pcap_fopen_offline_with_tstamp_precision(fp, PCAP_TSTAMP_PRECISION_NANO, ebuf);
    if (!pc) {
        fclose(fp);
        if (map)
            munmap(map, maplen);
        snprintf(err, errlen, "%s: not a pcap or pcapng capture (%s)", path, ebuf);
        return NULL;
    }
    mos_pcap_t *p = calloc(1, sizeof(*p));
    if (!p) {
        pcap_close(pc);
        if (map)
            munmap(map, maplen);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->pc = pc;
    p->fp = fp;
    p->linktype = pcap_datalink(pc);
    p->size = st.st_size;
    p->map = map;
    p->maplen = maplen;
    detect_direct(p);
    return p;
}

int mos_pcap_linktype(const mos_pcap_t *p) { return p->linktype; }
int64_t mos_pcap_file_size(const mos_pcap_t *p) { return p->size; }

int64_t mos_pcap_file_pos(const mos_pcap_t *p)
{
    if (p->direct)
        return (int64_t)p->pos;
    long pos = ftell(p->fp);
    return pos < 0 ? 0 : pos;
}

int mos_pcap_stable_region(const mos_pcap_t *p, const void **lo, const void **hi)
{
    /* released pages (below) are only unmapped from this process: touched again, they come back
     * from the page cache with the file's bytes, so the whole mapping stays readable */
    if (!p->direct)
        return 0;
    *lo = p->map;
    *hi = p->map + p->maplen;
    return 1;
}

/* The previous batch has been handled: give its pages back (they stay in the page cache), so the
 * process does not appear to hold the whole file. */
static void release_read(mos_pcap_t *p)
{
    if (!p->map)
        return;
    size_t done = (size_t)mos_pcap_file_pos(p) & ~(size_t)((1u << 20) - 1);
    if (done >= p->released + RELEASE_STEP) {
        madvise((uint8_t *)p->map + p->released, done - p->released, MADV_DONTNEED);
        p->released = done;
    }
}

static int next_direct(mos_pcap_t *p, struct mos_pkt *pkts, uint32_t n)
{
    uint32_t i = 0;
    while (i < n && p->pos < p->maplen) {
        if (p->maplen - p->pos < 16) {
            snprintf(p->pending, sizeof(p->pending), "capture read error: truncated dump file; tried to "
                     "read 16 header bytes, only got %zu", p->maplen - p->pos);
            p->pos = p->maplen;
            break;
        }
        const uint8_t *h = p->map + p->pos;
        /* Each header's place is known only from the previous one: a chain of loads from memory.
         * Ask for every cache line some way ahead, so that the chain finds its headers in cache. */
        size_t ahead = p->maplen - p->pos > PREFETCH_AHEAD ? p->pos + PREFETCH_AHEAD : p->maplen;
        for (; p->pf < ahead; p->pf += 64)
            __builtin_prefetch(p->map + p->pf);
        uint32_t sec = rd32(h, p->swapped), frac = rd32(h + 4, p->swapped);
        uint32_t caplen = rd32(h + 8, p->swapped), len = rd32(h + 12, p->swapped);
        if (caplen > MAX_RECORD || caplen > p->maplen - p->pos - 16) {
            snprintf(p->pending, sizeof(p->pending), "capture read error: %s record of %u bytes at offset %zu",
                     caplen > MAX_RECORD ? "bogus" : "truncated dump file:", caplen, p->pos);
            p->pos = p->maplen;
            break;
        }
        pkts[i].data = h + 16;
        pkts[i].caplen = caplen;
        pkts[i].wirelen = len;
        pkts[i].ts_ns = (uint64_t)sec * 1000000000ull + (p->nano ? frac : (uint64_t)frac * 1000u);
        p->pos += 16 + (size_t)caplen;
        i++;
    }
    return (int)i;
}

static int next_libpcap(mos_pcap_t *p, struct mos_pkt *pkts, uint32_t n, char *err, size_t errlen)
{
    size_t used = 0;
    uint32_t i = 0;
    /* Offsets first (the arena may move while growing), pointers at the end. */
    size_t offs[1024];
    if (n > 1024)
        n = 1024;
    while (i < n) {
        struct pcap_pkthdr *h;
        const u_char *data;
        int r = pcap_next_ex(p->pc, &h, &data);
        if (r == PCAP_ERROR_BREAK)
            break;
        if (r == PCAP_ERROR) {
            snprintf(p->pending, sizeof(p->pending), "capture read error: %s", pcap_geterr(p->pc));
            break; /* hand over what was read; the error comes back on the next call */
        }
        if (r != 1)
            continue;
        /* allocated on the first record, even an empty one: packets point into it, never at NULL + 0 */
        if (!p->arena || used + h->caplen > p->arena_cap) {
            size_t ncap = p->arena_cap ? p->arena_cap * 2 : (4u << 20);
            while (ncap < used + h->caplen)
                ncap *= 2;
            uint8_t *na = realloc(p->arena, ncap);
            if (!na) {
                snprintf(err, errlen, "out of memory reading the capture");
                return -1;
            }
            p->arena = na;
            p->arena_cap = ncap;
        }
        memcpy(p->arena + used, data, h->caplen);
        offs[i] = used;
        pkts[i].caplen = h->caplen;
        pkts[i].wirelen = h->len;
        pkts[i].ts_ns = (uint64_t)h->ts.tv_sec * 1000000000ull + (uint64_t)h->ts.tv_usec;
        used += h->caplen;
        i++;
    }
    for (uint32_t k = 0; k < i; k++)
        pkts[k].data = p->arena + offs[k];
    return (int)i;
}

int mos_pcap_next_batch(mos_pcap_t *p, struct mos_pkt *pkts, uint32_t n, char *err, size_t errlen)
{
    release_read(p);
    if (p->pending[0]) {
        snprintf(err, errlen, "%s", p->pending);
        p->pending[0] = 0;
        return -1;
    }
    int got = p->direct ? next_direct(p, pkts, n) : next_libpcap(p, pkts, n, err, errlen);
    if (got == 0 && p->pending[0]) {
        snprintf(err, errlen, "%s", p->pending);
        p->pending[0] = 0;
        return -1;
    }
    return got;
}

void mos_pcap_close(mos_pcap_t *p)
{
    if (!p)
        return;
    pcap_close(p->pc); /* closes fp too */
    if (p->map)
        munmap((void *)p->map, p->maplen);
    free(p->arena);
    free(p);
}
