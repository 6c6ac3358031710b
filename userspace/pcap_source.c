#define _DEFAULT_SOURCE
/* pcap and pcapng files through libpcap, read in batches. libpcap reuses its buffer for each packet,
 * so a batch is copied into an arena that stays valid until the next batch (the engine's events point
 * into it until they are handled). */
#include "mos_engine.h"

#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mos_pcap {
    pcap_t *pc;
    FILE *fp;
    int linktype;
    int64_t size;
    uint8_t *arena;
    size_t arena_cap;
    void *map;          /* the file, mapped (NULL when read through stdio) */
    size_t maplen;
    size_t released;    /* bytes of the mapping already read and given back */
};

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
    /* libpcap reads through stdio in 4 KiB read() calls (a syscall and a kernel copy each). A regular
     * file is mapped instead and read from memory; anything else (a pipe, a device) is read as usual. */
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
                fp = fmemopen(map, maplen, "rb");
                if (fp)
                    setvbuf(fp, NULL, _IOFBF, 1u << 16);
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
    return p;
}

int mos_pcap_linktype(const mos_pcap_t *p) { return p->linktype; }
int64_t mos_pcap_file_size(const mos_pcap_t *p) { return p->size; }

int64_t mos_pcap_file_pos(const mos_pcap_t *p)
{
    long pos = ftell(p->fp);
    return pos < 0 ? 0 : pos;
}

int mos_pcap_next_batch(mos_pcap_t *p, struct mos_pkt *pkts, uint32_t n, char *err, size_t errlen)
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
            snprintf(err, errlen, "capture read error: %s", pcap_geterr(p->pc));
            if (i == 0)
                return -1;
            break; /* hand over what was read; the error comes back on the next call */
        }
        if (r != 1)
            continue;
        if (used + h->caplen > p->arena_cap) {
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
    if (p->map) {
        /* Drop the pages already read from the mapping so the process does not appear to hold the
         * whole file (they stay in the page cache). */
        long pos = ftell(p->fp);
        size_t done = pos > 0 ? ((size_t)pos & ~(size_t)((1u << 20) - 1)) : 0;
        if (done >= p->released + (32u << 20)) {
            madvise((uint8_t *)p->map + p->released, done - p->released, MADV_DONTNEED);
            p->released = done;
        }
    }
    return (int)i;
}

void mos_pcap_close(mos_pcap_t *p)
{
    if (!p)
        return;
    pcap_close(p->pc); /* closes fp too */
    if (p->map)
        munmap(p->map, p->maplen);
    free(p->arena);
    free(p);
}
