/* AF_XDP packet source of the live path (libxdp's xsk API), zero-copy into the engine's batches.
 *
 * One UMEM serves every socket of a run: each (slot, queue) -- slot 0 the monitored interface, slot 1
 * the inline peer -- is a "pool" with its own fill and completion ring (XDP_SHARED_UMEM across
 * devices), and each worker has one socket per pool (workers of one queue share that queue's pool, the
 * only way the kernel lets several sockets bind one queue). A frame received on any socket can thus be
 * sent out of any other socket without a copy in userspace: forwarding puts the very RX descriptor into
 * the other interface's TX ring.
 *
 * Frames are owned by whoever holds them: a fill ring, an RX ring, the batch being handled, a TX ring,
 * a completion ring, or a worker's free list. Workers are processes forked after mos_xsk_open, so the
 * UMEM and every ring are shared memory; the fill and completion ring of a pool may be used by several
 * workers, so each pool has a lock (in a shared mapping) and those two rings are driven without the
 * libxdp cached indexes (which would be per process). RX and TX rings belong to one worker each.
 *
 * The batch interface: mos_xsk_rx fills struct mos_pkt entries pointing into the UMEM; the engine and
 * Python handle them; mos_xsk_done then applies each frame's verdict (passive: back to a fill ring;
 * inline: forward -- to the other interface's TX ring -- or drop) and recycles completed frames.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <xdp/xsk.h>

#include "checksum.h"
#include "decode.h"
#include "engine_state.h"
#include "mos_engine.h"

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif
#ifndef SO_BUSY_POLL
#define SO_BUSY_POLL 46
#endif

#define XSK_FRAME 4096u
#define XSK_RING_MIN 64u
#define XSK_RING_MAX 65536u
#define XSK_MAX_POOLS ((uint32_t)MOS_MAX_SLOTS * MOS_MAX_QUEUES)
#define XSK_MAX_WORKERS ((uint32_t)MOS_MAX_WORKERS)
#define XSK_DROP_KEYS 64u
#define XSK_KICK_TRIES 64
#define XSK_TX_RESERVE 32u   /* frames a worker keeps out of the fill rings for what the app sends */
#define XSK_INJECT_MAX 64u   /* frames the app sent during a batch, sent after its forwarded frames */
#define XSK_XLAT 256u        /* connections with a sequence translation or learnt link layer */

struct xsk_pool {
    struct xsk_ring_prod fill;
    struct xsk_ring_cons comp;
    uint32_t slot, queue;
};

struct xsk_sock {
    struct xsk_socket *xsk;   /* NULL for a socket made here (see raw_socket) */
    struct xsk_ring_cons rx;
    struct xsk_ring_prod tx;
    uint32_t pool, worker;
    int fd;
    void *rx_map, *tx_map;    /* raw sockets: ring mappings */
    size_t rx_map_len, tx_map_len;
};

/* Shared between the processes of a run (MAP_SHARED | MAP_ANONYMOUS, created before fork). */
struct xsk_shared {
    atomic_uint lock[XSK_MAX_POOLS];
    uint64_t counters[XSK_MAX_WORKERS][MOS_XSK_C_COUNT];
};

struct mos_xsk {
    uint8_t *area;
    size_t area_len;
    uint32_t nframes, pool_frames;
    uint32_t ring;            /* RX and TX descriptors per socket */
    struct xsk_umem *umem;
    struct xsk_pool *pools;
    uint32_t npools;
    struct xsk_sock *socks;   /* socks[pool * workers + worker] */
    uint32_t nsocks, workers, worker;  /* worker: the one this process runs (UINT32_MAX: none yet) */
    uint32_t nqueues[2];
    int inline_mode, zerocopy, busy_poll;
    struct xsk_shared *sh;
    uint64_t *counters;       /* sh->counters[worker] once a worker is chosen */
    uint64_t scratch[MOS_XSK_C_COUNT];
    /* frames this process holds */
    uint64_t *free_frames;
    uint32_t nfree;
    /* the batch being handled */
    uint64_t *baddr;          /* RX descriptor address (frame base + offset) */
    uint32_t *bsock;
    uint32_t bn, bcap;
    uint8_t *verdict;         /* per frame: enum mos_verdict */
    uint32_t *flen;           /* per frame: the frame's length (after rewrites) */
    struct mos_flow_key drop_keys[XSK_DROP_KEYS];
    uint32_t ndrop_keys;
    struct pollfd *pfds;
    int forward_malformed;    /* inline: forward frames the engine found malformed (default: drop) */
    mos_engine_t *sink_engine; /* the engine whose drop_sink points here, for the current batch */
    int64_t drop_from[XSK_DROP_KEYS]; /* drop_keys[k] drops the batch's frames from this index on */
    uint8_t *rewritten;       /* per frame: a resizing rewrite made it (its seq translation is known) */
    uint32_t tx_reserve;      /* frames the free list keeps for mos_xsk_send */
    struct { uint64_t addr; uint32_t len, slot; } inject[XSK_INJECT_MAX];
    uint32_t ninject;
    struct xlat *xlat;        /* XSK_XLAT entries (this process's: a connection reaches one worker) */
    uint32_t xlat_hi;         /* entries [0, xlat_hi) may be in use */
    uint64_t xlat_clock;
};

struct xlat;
static void xlat_free(struct mos_xsk *x);
static struct xlat *xlat_alloc(void);
static void xlat_rx(struct mos_xsk *x, uint8_t *p, uint32_t len);
static uint32_t xlat_tx(struct mos_xsk *x, uint64_t addr, uint32_t len);
static void inject_flush(struct mos_xsk *x);

/* ---- locking of a pool's fill and completion ring ----------------------------------------------- */

static void pool_lock(struct mos_xsk *x, uint32_t p)
{
    unsigned int expected = 0;
    while (!atomic_compare_exchange_weak_explicit(&x->sh->lock[p], &expected, 1u, memory_order_acquire,
                                                  memory_order_relaxed)) {
        expected = 0;
        sched_yield();
    }
}

static void pool_unlock(struct mos_xsk *x, uint32_t p)
{
    atomic_store_explicit(&x->sh->lock[p], 0u, memory_order_release);
}

/* Entries in a pool's fill ring (producer is ours, consumer the kernel's). Under the lock. */
static uint32_t fill_level(struct xsk_pool *pl)
{
    uint32_t prod = __atomic_load_n(pl->fill.producer, __ATOMIC_RELAXED);
    uint32_t cons = __atomic_load_n(pl->fill.consumer, __ATOMIC_ACQUIRE);
    return prod - cons;
}

/* Pushes up to n frames from the free list into pool p's fill ring; returns how many. Under the lock. */
static uint32_t fill_push(struct mos_xsk *x, uint32_t p, uint32_t n)
{
    struct xsk_pool *pl = &x->pools[p];
    uint32_t room = pl->fill.size - fill_level(pl);
    if (n > room)
        n = room;
    if (n > x->nfree - x->tx_reserve)
        n = x->nfree - x->tx_reserve;
    uint32_t prod = __atomic_load_n(pl->fill.producer, __ATOMIC_RELAXED);
    uint64_t *ring = pl->fill.ring;
    for (uint32_t i = 0; i < n; i++)
        ring[(prod + i) & pl->fill.mask] = x->free_frames[--x->nfree];
    __atomic_store_n(pl->fill.producer, prod + n, __ATOMIC_RELEASE);
    return n;
}

/* Moves completed TX frames of pool p to the free list. Under the lock. */
static void comp_pop(struct mos_xsk *x, uint32_t p)
{
    struct xsk_pool *pl = &x->pools[p];
    uint32_t cons = __atomic_load_n(pl->comp.consumer, __ATOMIC_RELAXED);
    uint32_t prod = __atomic_load_n(pl->comp.producer, __ATOMIC_ACQUIRE);
    const uint64_t *ring = pl->comp.ring;
    uint32_t n = prod - cons;
    for (uint32_t i = 0; i < n && x->nfree < x->nframes; i++)
        x->free_frames[x->nfree++] = ring[(cons + i) & pl->comp.mask] & ~(uint64_t)(XSK_FRAME - 1);
    __atomic_store_n(pl->comp.consumer, cons + n, __ATOMIC_RELEASE);
}

/* Completed frames back to the free list, then free frames to the emptiest fill rings. */
static void recycle(struct mos_xsk *x)
{
    for (uint32_t p = 0; p < x->npools; p++) {
        pool_lock(x, p);
        comp_pop(x, p);
        pool_unlock(x, p);
    }
    while (x->nfree > x->tx_reserve) {
        uint32_t best = UINT32_MAX, best_level = UINT32_MAX;
        for (uint32_t p = 0; p < x->npools; p++) {
            uint32_t lvl = fill_level(&x->pools[p]);
            if (lvl < x->pools[p].fill.size && lvl < best_level) {
                best = p;
                best_level = lvl;
            }
        }
        if (best == UINT32_MAX)
            break;
        /* give the emptiest ring enough to reach the next one's level (at least a few frames) */
        uint32_t chunk = 64;
        pool_lock(x, best);
        uint32_t got = fill_push(x, best, chunk);
        pool_unlock(x, best);
        if (!got)
            break;
    }
}

/* ---- set-up ------------------------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *what, const char *name, int code)
{
    if (err && errlen)
        snprintf(err, errlen, "%s%s: %s", what, name, strerror(code));
}

/* Sockets of workers > 0: made here, because libxdp always names the UMEM's first socket as the one to
 * share with, and the kernel shares a (device, queue)'s pool only with a socket bound to that same
 * (device, queue): the pool's first socket (worker 0's). */
static int raw_socket(struct mos_xsk *x, struct xsk_sock *s, const char *ifname, uint32_t queue, int shared_fd)
{
    uint32_t n = x->ring;
    struct xdp_mmap_offsets off;
    socklen_t optlen = sizeof(off);
    unsigned int ifindex = if_nametoindex(ifname);
    if (!ifindex)
        return -errno;
    s->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        return -errno;
    if (setsockopt(s->fd, SOL_XDP, XDP_RX_RING, &n, sizeof(n)) ||
        setsockopt(s->fd, SOL_XDP, XDP_TX_RING, &n, sizeof(n)) ||
        getsockopt(s->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen))
        return -errno;
    s->rx_map_len = off.rx.desc + n * sizeof(struct xdp_desc);
    void *m = mmap(NULL, s->rx_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, s->fd,
                   XDP_PGOFF_RX_RING);
    if (m == MAP_FAILED)
        return -errno;
    s->rx_map = m;
    uint8_t *b = m;
    s->rx.mask = n - 1;
    s->rx.size = n;
    s->rx.producer = (uint32_t *)(void *)(b + off.rx.producer);
    s->rx.consumer = (uint32_t *)(void *)(b + off.rx.consumer);
    s->rx.flags = (uint32_t *)(void *)(b + off.rx.flags);
    s->rx.ring = b + off.rx.desc;
    s->rx.cached_prod = *s->rx.producer;
    s->rx.cached_cons = *s->rx.consumer;
    { /* passive too: what the app sends (a tap IPS's RSTs) leaves through it */
        s->tx_map_len = off.tx.desc + n * sizeof(struct xdp_desc);
        m = mmap(NULL, s->tx_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, s->fd, XDP_PGOFF_TX_RING);
        if (m == MAP_FAILED)
            return -errno;
        s->tx_map = m;
        b = m;
        s->tx.mask = n - 1;
        s->tx.size = n;
        s->tx.producer = (uint32_t *)(void *)(b + off.tx.producer);
        s->tx.consumer = (uint32_t *)(void *)(b + off.tx.consumer);
        s->tx.flags = (uint32_t *)(void *)(b + off.tx.flags);
        s->tx.ring = b + off.tx.desc;
        s->tx.cached_prod = *s->tx.producer;
        s->tx.cached_cons = *s->tx.consumer + n;
    }
    struct sockaddr_xdp sa;
    memset(&sa, 0, sizeof(sa));
    sa.sxdp_family = AF_XDP;
    sa.sxdp_flags = XDP_SHARED_UMEM;
    sa.sxdp_ifindex = ifindex;
    sa.sxdp_queue_id = queue;
    sa.sxdp_shared_umem_fd = (uint32_t)shared_fd;
    if (bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)))
        return -errno;
    return 0;
}

static void delete_socket(struct xsk_sock *s)
{
    if (s->xsk) {
        xsk_socket__delete(s->xsk);
    } else {
        if (s->rx_map)
            munmap(s->rx_map, s->rx_map_len);
        if (s->tx_map)
            munmap(s->tx_map, s->tx_map_len);
        if (s->fd > 0)
            close(s->fd);
    }
    memset(s, 0, sizeof(*s));
}

static void delete_sockets(struct mos_xsk *x)
{
    /* workers > 0 first: they hold references on worker 0's pools */
    for (uint32_t i = x->npools * x->workers; i-- > 0;)
        if (x->socks[i].worker != 0)
            delete_socket(&x->socks[i]);
    for (uint32_t i = x->npools * x->workers; i-- > 0;)
        if (x->socks[i].xsk || x->socks[i].fd > 0)
            delete_socket(&x->socks[i]);
    x->nsocks = 0;
}

void mos_xsk_close(mos_xsk_t *x)
{
    if (!x)
        return;
    delete_sockets(x);
    if (x->umem)
        xsk_umem__delete(x->umem);
    if (x->area)
        munmap(x->area, x->area_len);
    if (x->sh)
        munmap(x->sh, sizeof(*x->sh));
    free(x->pools);
    free(x->socks);
    free(x->free_frames);
    free(x->baddr);
    free(x->bsock);
    free(x->verdict);
    free(x->flen);
    free(x->rewritten);
    xlat_free(x);
    free(x->pfds);
    free(x);
}

static int open_sockets(struct mos_xsk *x, const char *names[2], uint16_t bind_flags, char *err, size_t errlen)
{
    struct xsk_umem_config ucfg = {
        .fill_size = x->pool_frames, .comp_size = x->pool_frames, .frame_size = XSK_FRAME,
        .frame_headroom = 0, .flags = 0,
    };
    int rc = xsk_umem__create(&x->umem, x->area, x->area_len, &x->pools[0].fill, &x->pools[0].comp, &ucfg);
    if (rc) {
        set_err(err, errlen, "cannot create the AF_XDP UMEM for ", names[0], -rc);
        x->umem = NULL;
        return -1;
    }
    for (uint32_t p = 0; p < x->npools; p++) {
        struct xsk_pool *pl = &x->pools[p];
        for (uint32_t w = 0; w < x->workers; w++) {
            struct xsk_sock *s = &x->socks[p * x->workers + w];
            struct xsk_socket_config cfg = {
                .rx_size = x->ring, .tx_size = x->ring,
                .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,
                .xdp_flags = 0, .bind_flags = bind_flags,
            };
            s->pool = p;
            s->worker = w;
            for (int tries = 0;; tries++) {
                if (w == 0)
                    rc = xsk_socket__create_shared(&s->xsk, names[pl->slot], pl->queue, x->umem, &s->rx,
                                                   &s->tx, &pl->fill, &pl->comp, &cfg);
                else
                    rc = raw_socket(x, s, names[pl->slot], pl->queue, x->socks[p * x->workers].fd);
                /* EBUSY: a socket closed just before still holds the queue (a kernel work item frees it) */
                if (rc != -EBUSY || tries >= 30)
                    break;
                if (w == 0)
                    s->xsk = NULL;
                else
                    delete_socket(s);
                s->pool = p;
                s->worker = w;
                struct timespec ts = {0, 100 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            if (rc) {
                if (w == 0)
                    s->xsk = NULL;
                else
                    delete_socket(s);
                char what[64];
                snprintf(what, sizeof(what), "%s queue %u", names[pl->slot], pl->queue);
                set_err(err, errlen, "cannot create an AF_XDP socket on ", what, -rc);
                return -rc;
            }
            x->nsocks++;
            if (w == 0)
                s->fd = xsk_socket__fd(s->xsk);
        }
    }
    return 0;
}

static int is_zerocopy(int fd)
{
    struct xdp_options opts;
    socklen_t optlen = sizeof(opts);
    return getsockopt(fd, SOL_XDP, XDP_OPTIONS, &opts, &optlen) == 0 && (opts.flags & XDP_OPTIONS_ZEROCOPY);
}

mos_xsk_t *mos_xsk_open(const char *iface, uint32_t iface_queues, const char *peer, uint32_t peer_queues,
                        uint32_t workers, uint32_t ring, uint32_t flags, char *err, size_t errlen)
{
    if (ring == 0)
        ring = MOS_XSK_RING_DEFAULT;
    if (!iface || !iface_queues || iface_queues > 64 || (peer && (!peer_queues || peer_queues > 64)) ||
        !workers || workers > XSK_MAX_WORKERS || ring < XSK_RING_MIN || ring > XSK_RING_MAX || (ring & (ring - 1))) {
        set_err(err, errlen, "bad AF_XDP parameters for ", iface ? iface : "?", EINVAL);
        return NULL;
    }
    struct mos_xsk *x = calloc(1, sizeof(*x));
    if (!x) {
        set_err(err, errlen, "AF_XDP", "", ENOMEM);
        return NULL;
    }
    x->worker = UINT32_MAX;
    x->workers = workers;
    x->inline_mode = peer != NULL;
    x->nqueues[0] = iface_queues;
    x->nqueues[1] = peer ? peer_queues : 0;
    x->npools = iface_queues + x->nqueues[1];
    x->nsocks = 0;
    /* Two rings' worth of frames per pool (the default: 32 MiB) for up to 4 pools, less with many
     * queues: the frames not in the RX ring wait in the fill ring or in a batch being handled. */
    x->ring = ring;
    x->pool_frames = x->npools <= 4 ? 2 * ring : x->npools <= 16 ? ring : ring / 2;
    x->nframes = x->npools * x->pool_frames;
    x->area_len = (size_t)x->nframes * XSK_FRAME;
    x->counters = x->scratch;
    x->pools = calloc(x->npools, sizeof(*x->pools));
    x->socks = calloc((size_t)x->npools * workers, sizeof(*x->socks));
    x->free_frames = calloc(x->nframes, sizeof(uint64_t));
    x->verdict = calloc(x->nframes, 1);
    x->flen = calloc(x->nframes, sizeof(uint32_t));
    x->rewritten = calloc(x->nframes, 1);
    x->xlat = xlat_alloc();
    x->pfds = calloc(x->npools, sizeof(*x->pfds));
    x->bcap = 0;
    void *area = mmap(NULL, x->area_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    void *sh = mmap(NULL, sizeof(struct xsk_shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    x->area = area == MAP_FAILED ? NULL : area;
    x->sh = sh == MAP_FAILED ? NULL : sh;
    if (!x->pools || !x->socks || !x->free_frames || !x->verdict || !x->flen || !x->rewritten || !x->xlat || !x->pfds || !x->area || !x->sh) {
        set_err(err, errlen, "cannot allocate the AF_XDP UMEM for ", iface, ENOMEM);
        mos_xsk_close(x);
        return NULL;
    }
    for (uint32_t p = 0; p < XSK_MAX_POOLS; p++)
        atomic_init(&x->sh->lock[p], 0u);
    for (uint32_t q = 0; q < x->npools; q++) {
        x->pools[q].slot = q < iface_queues ? 0 : 1;
        x->pools[q].queue = q < iface_queues ? q : q - iface_queues;
    }
    const char *names[2] = {iface, peer};
    uint16_t bind = XDP_USE_NEED_WAKEUP;
    if (flags & MOS_XSK_COPY)
        bind |= XDP_COPY;
    else if (flags & MOS_XSK_ZEROCOPY)
        bind |= XDP_ZEROCOPY;
    int rc = open_sockets(x, names, bind, err, errlen);
    if (rc && !(flags & (MOS_XSK_COPY | MOS_XSK_ZEROCOPY)) && x->nsocks > 0 && is_zerocopy(x->socks[0].fd)) {
        /* zero-copy on the first interface but not on a later one (sharing needs one mode): copy */
        delete_sockets(x);
        xsk_umem__delete(x->umem);
        x->umem = NULL;
        memset(x->pools, 0, x->npools * sizeof(*x->pools));
        for (uint32_t q = 0; q < x->npools; q++) {
            x->pools[q].slot = q < iface_queues ? 0 : 1;
            x->pools[q].queue = q < iface_queues ? q : q - iface_queues;
        }
        rc = open_sockets(x, names, XDP_USE_NEED_WAKEUP | XDP_COPY, err, errlen);
    }
    if (rc) {
        mos_xsk_close(x);
        return NULL;
    }
    x->zerocopy = is_zerocopy(x->socks[0].fd);
    if (flags & MOS_XSK_BUSY_POLL) {
        int one = 1, usecs = 20, budget = 64, ok = 1;
        for (uint32_t i = 0; i < x->nsocks; i++) {
            int fd = x->socks[i].fd;
            ok &= setsockopt(fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &one, sizeof(one)) == 0;
            ok &= setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL, &usecs, sizeof(usecs)) == 0;
            ok &= setsockopt(fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget, sizeof(budget)) == 0;
        }
        x->busy_poll = ok;
    }
    /* every frame starts in a fill ring: pool p gets frames [p * POOL_FRAMES, (p + 1) * POOL_FRAMES),
     * but for the last tx_reserve * workers of pool 0, each worker's reserve (mos_xsk_set_worker) */
    x->tx_reserve = x->pool_frames / (4 * workers);
    if (x->tx_reserve > XSK_TX_RESERVE)
        x->tx_reserve = XSK_TX_RESERVE;
    uint32_t reserved = x->tx_reserve * workers;
    uint32_t keep = x->tx_reserve;
    x->tx_reserve = 0;
    for (uint32_t p = 0; p < x->npools; p++) {
        x->nfree = 0;
        for (uint32_t i = 0; i < x->pool_frames; i++)
            x->free_frames[x->nfree++] = ((uint64_t)p * x->pool_frames + i) * XSK_FRAME;
        if (p == 0)
            x->nfree -= reserved; /* the top of the list: the pool's last frames */
        fill_push(x, p, x->pool_frames);
    }
    x->tx_reserve = keep;
    x->nfree = 0;
    return x;
}

int mos_xsk_info(const mos_xsk_t *x, struct mos_xsk_info *out)
{
    memset(out, 0, sizeof(*out));
    out->zerocopy = (uint8_t)x->zerocopy;
    out->busy_poll = (uint8_t)x->busy_poll;
    out->inline_mode = (uint8_t)x->inline_mode;
    out->workers = x->workers;
    out->pools = x->npools;
    out->frames = x->nframes;
    out->frame_size = XSK_FRAME;
    out->umem_bytes = x->area_len;
    return 0;
}

int mos_xsk_fd(const mos_xsk_t *x, uint32_t slot, uint32_t queue, uint32_t worker)
{
    if (slot > 1 || worker >= x->workers || queue >= x->nqueues[slot])
        return -1;
    uint32_t p = slot == 0 ? queue : x->nqueues[0] + queue;
    return x->socks[p * x->workers + worker].fd;
}

int mos_xsk_set_worker(mos_xsk_t *x, uint32_t worker)
{
    if (worker >= x->workers)
        return -1;
    x->worker = worker;
    x->counters = x->sh->counters[worker];
    /* this worker's reserve: its slice of the frames pool 0's fill ring did not get (mos_xsk_open) */
    uint64_t first = (uint64_t)x->pool_frames - (uint64_t)x->tx_reserve * x->workers + (uint64_t)worker * x->tx_reserve;
    x->nfree = 0;
    for (uint32_t i = 0; i < x->tx_reserve; i++)
        x->free_frames[x->nfree++] = (first + i) * XSK_FRAME;
    for (uint32_t p = 0; p < x->npools; p++) {
        x->pfds[p].fd = x->socks[p * x->workers + worker].fd;
        x->pfds[p].events = POLLIN;
    }
    return 0;
}

const uint64_t *mos_xsk_counters(const mos_xsk_t *x, uint32_t worker)
{
    if (worker >= x->workers)
        return NULL;
    struct xdp_statistics st;
    uint64_t *c = x->sh->counters[worker];
    uint64_t k[6] = {0};
    for (uint32_t p = 0; p < x->npools; p++) {
        socklen_t len = sizeof(st);
        memset(&st, 0, sizeof(st));
        if (getsockopt(x->socks[p * x->workers + worker].fd, SOL_XDP, XDP_STATISTICS, &st, &len) == 0) {
            k[0] += st.rx_dropped;
            k[1] += st.rx_invalid_descs;
            k[2] += st.tx_invalid_descs;
            k[3] += st.rx_ring_full;
            k[4] += st.rx_fill_ring_empty_descs;
            k[5] += st.tx_ring_empty_descs;
        }
    }
    memcpy(&c[MOS_XSK_C_K_RX_DROPPED], k, sizeof(k));
    return c;
}

uint64_t mos_xsk_rx_pending(const mos_xsk_t *x)
{
    /* the ring's own producer and consumer (shared memory), not this process's cached copies: a worker
     * process may have consumed what the parent's view still shows */
    uint64_t n = 0;
    for (uint32_t i = 0; i < x->nsocks; i++) {
        const struct xsk_ring_cons *r = &x->socks[i].rx;
        if (r->producer && r->consumer)
            n += (uint32_t)(__atomic_load_n(r->producer, __ATOMIC_ACQUIRE) - __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE));
    }
    return n;
}

/* ---- the batch ---------------------------------------------------------------------------------- */

static int grow_batch(struct mos_xsk *x, uint32_t n)
{
    if (n <= x->bcap)
        return 0;
    uint64_t *a = realloc(x->baddr, n * sizeof(*a));
    if (!a)
        return -1;
    x->baddr = a;
    uint32_t *s = realloc(x->bsock, n * sizeof(*s));
    if (!s)
        return -1;
    x->bsock = s;
    x->bcap = n;
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t rx_take(struct mos_xsk *x, struct mos_pkt *pkts, uint32_t max, uint64_t ts)
{
    uint32_t n = 0;
    for (uint32_t p = 0; p < x->npools && n < max; p++) {
        uint32_t si = p * x->workers + x->worker;
        struct xsk_sock *s = &x->socks[si];
        uint32_t idx = 0;
        uint32_t got = xsk_ring_cons__peek(&s->rx, max - n, &idx);
        for (uint32_t i = 0; i < got; i++) {
            const struct xdp_desc *d = xsk_ring_cons__rx_desc(&s->rx, idx + i);
            uint64_t addr = xsk_umem__add_offset_to_addr(d->addr);
            uint32_t frame = (uint32_t)(addr / XSK_FRAME);
            uint32_t len = d->len;
            if (frame >= x->nframes || addr % XSK_FRAME + len > XSK_FRAME)
                continue; /* cannot happen with an aligned UMEM; never trust it blindly */
            x->baddr[n] = addr;
            x->bsock[n] = si;
            x->verdict[frame] = MOS_VERDICT_FORWARD;
            x->rewritten[frame] = 0;
            x->flen[frame] = len;
            if (x->xlat_hi)
                xlat_rx(x, x->area + addr, len);
            pkts[n].data = x->area + addr;
            pkts[n].caplen = len;
            pkts[n].wirelen = len;
            pkts[n].ts_ns = ts;
            x->counters[MOS_XSK_C_RX_PACKETS]++;
            x->counters[MOS_XSK_C_RX_BYTES] += len;
            n++;
        }
        if (got)
            xsk_ring_cons__release(&s->rx, got);
    }
    return n;
}

int mos_xsk_rx(mos_xsk_t *x, struct mos_pkt *pkts, uint32_t max, int timeout_ms)
{
    if (x->worker == UINT32_MAX)
        return -1;
    if (x->bn)
        mos_xsk_done(x);
    if (grow_batch(x, max))
        return -1;
    x->ndrop_keys = 0;
    uint32_t n = rx_take(x, pkts, max, now_ns());
    if (n == 0 && timeout_ms != 0) {
        recycle(x);
        x->counters[MOS_XSK_C_POLLS]++;
        int rc = poll(x->pfds, x->npools, timeout_ms);
        if (rc < 0 && errno != EINTR)
            return -1;
        n = rx_take(x, pkts, max, now_ns());
    }
    x->bn = n;
    return (int)n;
}

static void kick_tx(struct mos_xsk *x, struct xsk_sock *s)
{
    for (int i = 0; i < XSK_KICK_TRIES; i++) {
        uint32_t prod = __atomic_load_n(s->tx.producer, __ATOMIC_RELAXED);
        uint32_t cons = __atomic_load_n(s->tx.consumer, __ATOMIC_ACQUIRE);
        if (prod == cons)
            return;
        if (x->zerocopy && !xsk_ring_prod__needs_wakeup(&s->tx))
            return;
        x->counters[MOS_XSK_C_KICKS]++;
        if (sendto(s->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            continue;
        if (errno != EAGAIN && errno != EBUSY && errno != ENOBUFS && errno != EINTR)
            return;
        /* completion ring full (copy mode reserves there first): make room */
        pool_lock(x, s->pool);
        comp_pop(x, s->pool);
        pool_unlock(x, s->pool);
    }
}

/* Canonical (direction-free) key of a frame, through the engine's decoder; -1 when it is not TCP/UDP
 * over IP. */
static int frame_key(const uint8_t *p, uint32_t len, struct mos_flow_key *k)
{
    struct pkt_info pi;
    if (decode_packet(p, len, MOS_DLT_EN10MB, &pi) != 0)
        return -1;
    return decode_flow_key(&pi, k);
}

static int dropped_flow(struct mos_xsk *x, const uint8_t *p, uint32_t len, uint32_t at)
{
    struct mos_flow_key k;
    if (frame_key(p, len, &k) != 0)
        return 0;
    for (uint32_t i = 0; i < x->ndrop_keys; i++)
        if ((int64_t)at >= x->drop_from[i] && memcmp(&k, &x->drop_keys[i], sizeof(k)) == 0)
            return 1;
    return 0;
}

/* The engine's drop_sink: a frame it could not decode (inline, forwarding it would pass on traffic
 * nobody looked at: a packet over the IPv6 extension header limit carries a connection the engine never
 * sees), dropped unless forward_malformed says otherwise; or one the app's translation no longer covers. */
static void drop_frame(void *arg, const struct mos_pkt *p, int why)
{
    struct mos_xsk *x = arg;
    uintptr_t a = (uintptr_t)p->data, base = (uintptr_t)x->area;
    if (!x->inline_mode || a < base || a >= base + x->area_len)
        return;
    if (why == MOS_XSK_C_MALFORMED_DROP && x->forward_malformed)
        return;
    x->verdict[(a - base) / XSK_FRAME] = MOS_VERDICT_DROP;
    x->counters[why == MOS_XSK_C_MALFORMED_DROP ? MOS_XSK_C_MALFORMED_DROP : MOS_XSK_C_UNTRANSLATED_DROP]++;
}

/* The engine tells this source of frames not to forward from its feed to mos_xsk_done (set per batch: the
 * engine may outlive the source, or serve another one). */
static void sink_attach(struct mos_xsk *x, mos_engine_t *e)
{
    e->drop_sink = drop_frame;
    e->drop_arg = x;
    e->forwarding = x->inline_mode;
    x->sink_engine = e;
}

static void sink_detach(struct mos_xsk *x)
{
    mos_engine_t *e = x->sink_engine;
    if (e && e->drop_arg == x) {
        e->drop_sink = NULL;
        e->drop_arg = NULL;
        e->forwarding = 0;
    }
    x->sink_engine = NULL;
}

void mos_xsk_set_forward_malformed(mos_xsk_t *x, int forward) { x->forward_malformed = forward != 0; }

uint32_t mos_xsk_done(mos_xsk_t *x)
{
    sink_detach(x);
    uint32_t sent = 0;
    uint32_t n = x->bn;
    x->bn = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t addr = x->baddr[i];
        uint32_t frame = (uint32_t)(addr / XSK_FRAME);
        uint8_t v = x->verdict[frame];
        uint32_t len = x->flen[frame];
        if (v == MOS_VERDICT_FORWARD && x->ndrop_keys && dropped_flow(x, x->area + addr, len, i))
            v = MOS_VERDICT_DROP;
        if (v == MOS_VERDICT_DROP)
            x->counters[MOS_XSK_C_VERDICT_DROP]++;
        if (v == MOS_VERDICT_FORWARD && x->inline_mode) {
            if (x->xlat_hi)
                len = xlat_tx(x, addr, len);
            /* out of the other interface, on the same queue number when it has one */
            const struct xsk_pool *in = &x->pools[x->socks[x->bsock[i]].pool];
            uint32_t oslot = in->slot ^ 1u;
            uint32_t q = in->queue < x->nqueues[oslot] ? in->queue : 0;
            uint32_t op = oslot == 0 ? q : x->nqueues[0] + q;
            struct xsk_sock *o = &x->socks[op * x->workers + x->worker];
            uint32_t idx = 0;
            int ok = xsk_ring_prod__reserve(&o->tx, 1, &idx) == 1;
            if (!ok) {
                kick_tx(x, o);
                ok = xsk_ring_prod__reserve(&o->tx, 1, &idx) == 1;
            }
            if (ok) {
                struct xdp_desc *d = xsk_ring_prod__tx_desc(&o->tx, idx);
                d->addr = addr;
                d->len = len;
                d->options = 0;
                xsk_ring_prod__submit(&o->tx, 1);
                x->counters[MOS_XSK_C_TX_PACKETS]++;
                x->counters[MOS_XSK_C_TX_BYTES] += len;
                sent++;
                continue;
            }
            x->counters[MOS_XSK_C_TX_RING_FULL]++;
        }
        if (x->nfree < x->nframes)
            x->free_frames[x->nfree++] = addr & ~(uint64_t)(XSK_FRAME - 1);
    }
    if (sent) {
        for (uint32_t p = 0; p < x->npools; p++)
            kick_tx(x, &x->socks[p * x->workers + x->worker]);
    }
    if (x->ninject)
        inject_flush(x); /* after the batch's frames: a RST follows the data it is numbered after */
    recycle(x);
    return sent;
}

/* ---- verdicts and rewriting ------------------------------------------------------------------- */

/* The UMEM frame holding the engine's packet `pkt` of the current batch, or -1. */
static int64_t frame_of(const struct mos_xsk *x, const mos_engine_t *e, uint32_t pkt, uint64_t *addr)
{
    const uint8_t *p = mos_pkt_raw(e, pkt);
    if (!p)
        return -1;
    uintptr_t a = (uintptr_t)p, base = (uintptr_t)x->area;
    if (a < base || a >= base + x->area_len)
        return -1;
    *addr = (uint64_t)(a - base);
    return (int64_t)(*addr / XSK_FRAME);
}

int mos_xsk_verdict(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, int verdict)
{
    uint64_t addr;
    int64_t f = frame_of(x, e, pkt, &addr);
    if (f < 0 || (verdict != MOS_VERDICT_FORWARD && verdict != MOS_VERDICT_DROP))
        return -1;
    x->verdict[f] = (uint8_t)verdict;
    return 0;
}

int mos_xsk_drop_flow(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt)
{
    uint64_t addr;
    int64_t f = frame_of(x, e, pkt, &addr);
    if (f < 0)
        return -1;
    x->verdict[f] = MOS_VERDICT_DROP;
    struct mos_flow_key k;
    if (frame_key(x->area + addr, x->flen[f], &k) != 0 || x->ndrop_keys >= XSK_DROP_KEYS)
        return 0;
    x->drop_from[x->ndrop_keys] = 0;
    x->drop_keys[x->ndrop_keys++] = k;
    return 0;
}

static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* The IP header's length field says the datagram ends at `len` (from the frame's start). */
static void set_ip_length(uint8_t *p, uint32_t l3, uint32_t len)
{
    if (l3 + 40 <= len && (p[l3] >> 4) == 6)
        wr16(p + l3 + 4, (uint16_t)(len - l3 - 40));
    else if (l3 + 20 <= len && (p[l3] >> 4) == 4)
        wr16(p + l3 + 2, (uint16_t)(len - l3));
}

/* Recomputes the IPv4 header checksum and the TCP/UDP checksum of a frame the engine can decode. */
static void fix_checksums(uint8_t *p, uint32_t len)
{
    struct pkt_info pi;
    if (decode_packet(p, len, MOS_DLT_EN10MB, &pi) != 0 || !pi.ip_version)
        return;
    if (pi.ip_version == 4)
        csum_set_ipv4_header(p + (pi.l3 - p));
    if (!pi.is_fragment && pi.l4)
        csum_set_l4(&pi, p + (pi.l4 - p));
}

static void xlat_resized(struct mos_xsk *x, const mos_engine_t *e, uint64_t addr, const struct pkt_info *pi,
                         uint32_t seq, uint32_t old_pl);

int64_t mos_xsk_rewrite(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, uint32_t offset,
                        const uint8_t *bytes, uint32_t len, uint32_t new_len)
{
    uint64_t addr;
    int64_t f = frame_of(x, e, pkt, &addr);
    if (f < 0)
        return -1;
    uint32_t room = XSK_FRAME - (uint32_t)(addr % XSK_FRAME);
    if ((uint64_t)offset + len > room || new_len > room)
        return -2;
    uint8_t *p = x->area + addr;
    struct pkt_info pi;
    int decoded = decode_packet(p, x->flen[f], MOS_DLT_EN10MB, &pi) == 0 && pi.ip_version;
    int64_t l3 = decoded ? pi.l3 - p : -1;
    int tcp = decoded && pi.proto == MOS_IPPROTO_TCP && !pi.is_fragment && pi.l4;
    uint32_t seq = tcp ? pi.seq : 0, old_pl = tcp ? pi.payload_len : 0;
    /* the IP datagram's end: bytes past it (Ethernet padding) are not the payload's */
    uint32_t ip_end = decoded ? (uint32_t)l3 + pi.l3_len : x->flen[f];
    memcpy(p + offset, bytes, len);
    /* the datagram ends where the frame now does (resize), or past the bytes written if they go beyond
     * its end (into Ethernet padding, or past the frame) */
    uint32_t end = new_len ? new_len : offset + len > ip_end ? offset + len : ip_end;
    if (new_len)
        x->flen[f] = new_len;
    else if (offset + len > x->flen[f])
        x->flen[f] = offset + len;
    if (end != ip_end && l3 >= 0)
        set_ip_length(p, (uint32_t)l3, end);
    fix_checksums(p, x->flen[f]);
    x->counters[MOS_XSK_C_REWRITES]++;
    struct pkt_info after;
    if (tcp && x->inline_mode && decode_packet(p, x->flen[f], MOS_DLT_EN10MB, &after) == 0 &&
        after.payload_len != old_pl)
        xlat_resized(x, e, addr, &after, seq, old_pl);
    return x->flen[f];
}

int64_t mos_xsk_header_offset(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, int layer)
{
    uint64_t addr;
    int64_t f = frame_of(x, e, pkt, &addr);
    if (f < 0)
        return -1;
    const uint8_t *p = x->area + addr;
    struct pkt_info pi;
    if (decode_packet(p, x->flen[f], MOS_DLT_EN10MB, &pi) != 0 || !pi.ip_version)
        return -1;
    if (layer == 0)
        return 0;
    if (layer == 1)
        return pi.l3 - p;
    if (pi.is_fragment || !pi.l4)
        return -1;
    if (layer == 2)
        return pi.l4 - p;
    if (layer == 3 && (pi.proto == MOS_IPPROTO_TCP || pi.proto == MOS_IPPROTO_UDP))
        return pi.payload - p;
    return -1;
}

/* ---- sequence translation and the link layer of connections the app acted on ------------------- */

/* One sender's direction: its numbering -> what its receiver gets. `after` applies from sender seq
 * `pos` on, `before` below it (only the last correction point is kept, as Linux's NAT does: a
 * retransmission from before the one but last is translated with `before`). */
struct xlat_dir {
    uint32_t pos;
    int32_t before, after;
    uint8_t on;
    /* the last segment a resizing rewrite changed (sender seq, length then and now, its new payload) */
    uint32_t rw_seq, rw_len, rw_new_len;
    uint8_t *rw;
};

struct xlat {
    struct mos_flow_key key;
    uint8_t used, l2_known, cli_port_set;
    uint8_t cli_addr[16];
    uint16_t cli_port;
    uint8_t l2[2][12];        /* Ethernet destination + source of frames to the client [0] / server [1] */
    uint8_t slot[2];          /* the interface the client [0] / server [1] is behind */
    uint64_t used_at;
    struct xlat_dir dir[2];   /* sent by the client [0] / server [1] */
};

static void xlat_clear(struct xlat *t)
{
    free(t->dir[0].rw);
    free(t->dir[1].rw);
    memset(t, 0, sizeof(*t));
}

static struct xlat *xlat_alloc(void) { return calloc(XSK_XLAT, sizeof(struct xlat)); }

static void xlat_free(struct mos_xsk *x)
{
    if (!x->xlat)
        return;
    for (uint32_t i = 0; i < x->xlat_hi; i++)
        xlat_clear(&x->xlat[i]);
    free(x->xlat);
    x->xlat = NULL;
}

static struct xlat *xlat_find(struct mos_xsk *x, const struct mos_flow_key *k)
{
    for (uint32_t i = 0; i < x->xlat_hi; i++)
        if (x->xlat[i].used && memcmp(&x->xlat[i].key, k, sizeof(*k)) == 0)
            return &x->xlat[i];
    return NULL;
}

/* A new entry for k: a free one, else the least recently used (its translation is lost). */
static struct xlat *xlat_new(struct mos_xsk *x, const struct mos_flow_key *k)
{
    struct xlat *t = NULL;
    for (uint32_t i = 0; i < XSK_XLAT && !t; i++)
        if (!x->xlat[i].used)
            t = &x->xlat[i];
    if (!t) {
        t = &x->xlat[0];
        for (uint32_t i = 1; i < XSK_XLAT; i++)
            if (x->xlat[i].used_at < t->used_at)
                t = &x->xlat[i];
    }
    xlat_clear(t);
    t->used = 1;
    t->key = *k;
    t->used_at = ++x->xlat_clock;
    uint32_t i = (uint32_t)(t - x->xlat);
    if (i + 1 > x->xlat_hi)
        x->xlat_hi = i + 1;
    return t;
}

/* The engine's client side of a decoded frame's sender: 0 client, 1 server, -1 not known. */
static int xlat_sender(const struct xlat *t, const struct pkt_info *pi)
{
    if (!t->cli_port_set)
        return -1;
    size_t alen = pi->ip_version == 4 ? 4 : 16;
    return pi->sport == t->cli_port && memcmp(pi->src, t->cli_addr, alen) == 0 ? 0 : 1;
}

/* The sender's number v (seq, or the edge of a block it acknowledges) as its receiver numbers it. */
static uint32_t xlat_map(const struct xlat_dir *d, uint32_t v)
{
    if (!d->on)
        return v;
    return v + (uint32_t)(seq_geq(v, d->pos) ? d->after : d->before);
}

/* The inverse, for acknowledgements: what the receiver acknowledges, in the sender's numbers. An
 * acknowledgement inside inserted bytes acknowledges the sender's bytes up to the insertion point. */
static uint32_t xlat_unmap(const struct xlat_dir *d, uint32_t v)
{
    if (!d->on)
        return v;
    uint32_t a = v - (uint32_t)d->after;
    if (seq_geq(a, d->pos))
        return a;
    uint32_t b = v - (uint32_t)d->before;
    return seq_gt(b, d->pos) ? d->pos : b;
}

/* From sender seq pos on, delta more bytes reach the receiver. */
static void xlat_shift(struct xlat_dir *d, uint32_t pos, int32_t delta)
{
    if (!d->on) {
        d->on = 1;
        d->pos = pos;
        d->before = d->after = 0;
    } else if (seq_gt(pos, d->pos)) {
        d->before = d->after;
        d->pos = pos;
    }
    d->after += delta;
}

static void put32be(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The frame's acknowledgement and SACK blocks back into the numbers of the data's sender (dir: the
 * direction they acknowledge). Returns 1 when something changed. */
static int xlat_acks(const struct xlat_dir *d, uint8_t *tcp, uint32_t hlen)
{
    if (!d->on || !(tcp[13] & TCP_ACK))
        return 0;
    put32be(tcp + 8, xlat_unmap(d, get32be(tcp + 8)));
    for (uint32_t o = 20; o < hlen;) {
        uint8_t kind = tcp[o];
        if (kind == 0)
            break;
        if (kind == 1) {
            o++;
            continue;
        }
        if (o + 1 >= hlen || tcp[o + 1] < 2 || o + tcp[o + 1] > hlen)
            break;
        if (kind == 5)
            for (uint32_t b = o + 2; b + 8 <= o + tcp[o + 1]; b += 8) {
                put32be(tcp + b, xlat_unmap(d, get32be(tcp + b)));
                put32be(tcp + b + 4, xlat_unmap(d, get32be(tcp + b + 4)));
            }
        o += tcp[o + 1];
    }
    return 1;
}

/* The TCP key of a decoded frame and its entry, if any. */
static struct xlat *xlat_of(struct mos_xsk *x, const struct pkt_info *pi)
{
    struct mos_flow_key k;
    if (pi->proto != MOS_IPPROTO_TCP || pi->is_fragment || !pi->l4 || decode_flow_key(pi, &k) != 0)
        return NULL;
    return xlat_find(x, &k);
}

/* A received frame, before the engine: acknowledgements in the numbers of the data's sender. A SYN
 * starts another connection on the key: the entry goes. */
static void xlat_rx(struct mos_xsk *x, uint8_t *p, uint32_t len)
{
    struct pkt_info pi;
    if (decode_packet(p, len, MOS_DLT_EN10MB, &pi) != 0)
        return;
    struct xlat *t = xlat_of(x, &pi);
    if (!t)
        return;
    if ((pi.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
        xlat_clear(t);
        return;
    }
    int s = xlat_sender(t, &pi);
    if (s < 0)
        return;
    uint8_t *tcp = p + (pi.l4 - p);
    if (xlat_acks(&t->dir[1 - s], tcp, (uint32_t)(pi.payload - pi.l4))) {
        csum_set_l4(&pi, tcp);
        x->counters[MOS_XSK_C_XLAT_FRAMES]++;
    }
}

static void set_ip_length(uint8_t *p, uint32_t l3, uint32_t len);
static void fix_checksums(uint8_t *p, uint32_t len);

/* A frame being forwarded: a retransmission of a resized segment is resized alike, then its sequence
 * number is translated. Returns the frame's length. */
static uint32_t xlat_tx(struct mos_xsk *x, uint64_t addr, uint32_t len)
{
    uint8_t *p = x->area + addr;
    uint32_t frame = (uint32_t)(addr / XSK_FRAME);
    struct pkt_info pi;
    if (decode_packet(p, len, MOS_DLT_EN10MB, &pi) != 0)
        return len;
    struct xlat *t = xlat_of(x, &pi);
    int s = t ? xlat_sender(t, &pi) : -1;
    if (s < 0 || !t->dir[s].on)
        return len;
    struct xlat_dir *d = &t->dir[s];
    uint32_t pl = pi.payload_len, at = (uint32_t)(pi.payload - p);
    if (d->rw && !x->rewritten[frame] && pl && seq_lt(pi.seq, d->rw_seq + d->rw_len) &&
        seq_gt(pi.seq + pl, d->rw_seq)) {
        uint32_t room = XSK_FRAME - (uint32_t)(addr % XSK_FRAME);
        if (pi.seq == d->rw_seq && pl >= d->rw_len && at + pl - d->rw_len + d->rw_new_len <= room &&
            at + pl == len) {
            memmove(p + at + d->rw_new_len, p + at + d->rw_len, pl - d->rw_len);
            memcpy(p + at, d->rw, d->rw_new_len);
            len = at + pl - d->rw_len + d->rw_new_len;
            set_ip_length(p, (uint32_t)(pi.l3 - p), len);
            x->counters[MOS_XSK_C_XLAT_REPLAYED]++;
        } else {
            x->counters[MOS_XSK_C_XLAT_UNREPLAYED]++;
        }
    }
    put32be(p + (pi.l4 - p) + 4, xlat_map(d, pi.seq));
    fix_checksums(p, len);
    x->counters[MOS_XSK_C_XLAT_FRAMES]++;
    return len;
}

/* The batch index of the frame at addr, or -1. */
static int64_t batch_index(const struct mos_xsk *x, uint64_t addr)
{
    for (uint32_t i = 0; i < x->bn; i++)
        if (x->baddr[i] == addr)
            return i;
    return -1;
}

/* What a frame of the connection tells about its link layer: the interfaces behind which its endpoints
 * are and the MACs of frames to each (a bump in the wire sees them swapped in the two directions). */
static void xlat_learn(struct mos_xsk *x, struct xlat *t, const struct conn *c, uint64_t addr,
                       const struct pkt_info *pi)
{
    int64_t i = batch_index(x, addr);
    if (i < 0)
        return;
    const uint8_t *p = x->area + addr;
    size_t alen = pi->ip_version == 4 ? 4 : 16;
    int s = pi->sport == c->key.port[0] && memcmp(pi->src, c->key.addr[0], alen) == 0 ? 0 : 1;
    uint32_t in = x->pools[x->socks[x->bsock[i]].pool].slot;
    t->slot[s] = (uint8_t)in;
    t->slot[1 - s] = (uint8_t)(x->inline_mode ? in ^ 1u : in);
    memcpy(t->l2[1 - s], p, 12);          /* to the receiver: as this frame goes */
    memcpy(t->l2[s], p + 6, 6);           /* to the sender: swapped */
    memcpy(t->l2[s] + 6, p, 6);
    t->l2_known = 1;
}

/* The engine's connection (slot, id), or NULL. */
static const struct conn *engine_conn(const mos_engine_t *e, uint32_t slot, uint64_t id)
{
    if (slot == 0 || slot >= e->ft.next_unused)
        return NULL;
    const struct conn *c = ft_conn(&e->ft, slot);
    return c->id == id && id ? c : NULL;
}

static int conn_key(const struct conn *c, struct mos_flow_key *k)
{
    struct pkt_info pi;
    uint8_t ports[4] = {(uint8_t)(c->key.port[0] >> 8), (uint8_t)c->key.port[0], (uint8_t)(c->key.port[1] >> 8),
                        (uint8_t)c->key.port[1]};
    memset(&pi, 0, sizeof(pi));
    pi.ip_version = c->key.ip_version;
    pi.proto = c->key.proto;
    memcpy(pi.src, c->key.addr[0], 16);
    memcpy(pi.dst, c->key.addr[1], 16);
    memcpy(pi.vlan, c->key.vlan, sizeof(pi.vlan));
    pi.nvlan = c->key.nvlan;
    pi.l4 = ports;
    return decode_flow_key(&pi, k);
}

/* The entry of connection c, made when absent; learnt from packet pkt when it is one of c's. NULL when
 * absent and pkt cannot make it (no_frame set then). */
static struct xlat *xlat_for_conn(struct mos_xsk *x, const mos_engine_t *e, const struct conn *c, uint32_t pkt,
                                  int *no_frame)
{
    struct mos_flow_key k;
    *no_frame = 0;
    if (conn_key(c, &k) != 0)
        return NULL;
    struct xlat *t = xlat_find(x, &k);
    uint64_t addr = 0;
    struct pkt_info pi;
    struct mos_flow_key fk;
    int mine = pkt != UINT32_MAX && frame_of(x, e, pkt, &addr) >= 0 &&
               decode_packet(x->area + addr, x->flen[addr / XSK_FRAME], MOS_DLT_EN10MB, &pi) == 0 &&
               decode_flow_key(&pi, &fk) == 0 && memcmp(&fk, &k, sizeof(k)) == 0;
    if (!t) {
        if (!mine) {
            *no_frame = 1;
            return NULL;
        }
        t = xlat_new(x, &k);
        memcpy(t->cli_addr, c->key.addr[0], 16);
        t->cli_port = c->key.port[0];
        t->cli_port_set = 1;
    }
    t->used_at = ++x->xlat_clock;
    if (mine)
        xlat_learn(x, t, c, addr, &pi);
    if (!t->l2_known) {
        *no_frame = 1;
        return NULL;
    }
    return t;
}

/* A resizing rewrite changed a TCP segment's payload from old_pl bytes (at sender seq `seq`) to what pi
 * has: the sender's later numbers shift, and its retransmissions of the segment will be rewritten so. */
static void xlat_resized(struct mos_xsk *x, const mos_engine_t *e, uint64_t addr, const struct pkt_info *pi,
                         uint32_t seq, uint32_t old_pl)
{
    struct mos_flow_key k;
    if (decode_flow_key(pi, &k) != 0)
        return;
    struct xlat *t = xlat_find(x, &k);
    if (!t) {
        t = xlat_new(x, &k);
        /* the engine's client: from its record of the packet's connection */
        const uint8_t *src = pi->src;
        uint16_t sport = pi->sport;
        struct conn *c = NULL;
        for (uint32_t s = e->ft.buckets[ft_bucket(&e->ft, pi)]; s; s = ft_conn(&e->ft, s)->hnext)
            if (ft_match(&e->ft, ft_conn(&e->ft, s), pi) >= 0) {
                c = ft_conn(&e->ft, s);
                break;
            }
        if (c) {
            memcpy(t->cli_addr, c->key.addr[0], 16);
            t->cli_port = c->key.port[0];
        } else { /* not tracked: its sender is taken as the client */
            memcpy(t->cli_addr, src, 16);
            t->cli_port = sport;
        }
        t->cli_port_set = 1;
        if (c)
            xlat_learn(x, t, c, addr, pi);
    }
    t->used_at = ++x->xlat_clock;
    int s = xlat_sender(t, pi);
    struct xlat_dir *d = &t->dir[s];
    xlat_shift(d, seq + old_pl, (int32_t)pi->payload_len - (int32_t)old_pl);
    uint8_t *copy = malloc(pi->payload_len ? pi->payload_len : 1);
    if (copy) {
        memcpy(copy, pi->payload, pi->payload_len);
        free(d->rw);
        d->rw = copy;
        d->rw_seq = seq;
        d->rw_len = old_pl;
        d->rw_new_len = pi->payload_len;
    }
    x->rewritten[addr / XSK_FRAME] = 1;
}

/* ---- what the app sends -------------------------------------------------------------------------- */

static struct xsk_sock *tx_sock(struct mos_xsk *x, uint32_t slot)
{
    uint32_t p = slot == 0 ? 0 : x->nqueues[0];
    return &x->socks[p * x->workers + x->worker];
}

/* The frames the app sent, into their TX rings. */
static void inject_flush(struct mos_xsk *x)
{
    uint32_t kicked = 0;
    for (uint32_t i = 0; i < x->ninject; i++) {
        struct xsk_sock *o = tx_sock(x, x->inject[i].slot);
        uint32_t idx = 0;
        int ok = xsk_ring_prod__reserve(&o->tx, 1, &idx) == 1;
        if (!ok) {
            kick_tx(x, o);
            ok = xsk_ring_prod__reserve(&o->tx, 1, &idx) == 1;
        }
        if (!ok) {
            x->counters[MOS_XSK_C_INJECT_FAILED]++;
            if (x->nfree < x->nframes)
                x->free_frames[x->nfree++] = x->inject[i].addr;
            continue;
        }
        struct xdp_desc *d = xsk_ring_prod__tx_desc(&o->tx, idx);
        d->addr = x->inject[i].addr;
        d->len = x->inject[i].len;
        d->options = 0;
        xsk_ring_prod__submit(&o->tx, 1);
        x->counters[MOS_XSK_C_INJECTED]++;
        kicked |= 1u << x->inject[i].slot;
    }
    x->ninject = 0;
    for (uint32_t slot = 0; slot < 2; slot++)
        if (kicked & (1u << slot))
            kick_tx(x, tx_sock(x, slot));
}

int mos_xsk_send(mos_xsk_t *x, uint32_t slot, const uint8_t *frame, uint32_t len)
{
    if (x->worker == UINT32_MAX || slot > 1 || (slot == 1 && !x->inline_mode) || len < 14 || len > XSK_FRAME)
        return -2;
    if (!x->nfree) {
        recycle(x); /* completed TX frames come back */
        if (!x->nfree) {
            x->counters[MOS_XSK_C_INJECT_FAILED]++;
            return -4;
        }
    }
    if (x->ninject == XSK_INJECT_MAX)
        inject_flush(x);
    uint64_t addr = x->free_frames[--x->nfree];
    memcpy(x->area + addr, frame, len);
    x->inject[x->ninject].addr = addr;
    x->inject[x->ninject].len = len;
    x->inject[x->ninject].slot = slot;
    x->ninject++;
    if (!x->bn)
        inject_flush(x); /* no batch to wait for */
    return 0;
}

int64_t mos_xsk_inject(mos_xsk_t *x, mos_engine_t *e, uint32_t pkt, uint32_t slot, uint64_t id, int to_side,
                       uint8_t tcp_flags, const uint8_t *payload, uint32_t len)
{
    const struct conn *c = engine_conn(e, slot, id);
    if (!c || to_side < 0 || to_side > 1)
        return -1;
    int no_frame = 0;
    struct xlat *t = xlat_for_conn(x, e, c, pkt, &no_frame);
    if (!t)
        return no_frame ? -5 : -1;
    int from = 1 - to_side;
    uint32_t nxt = c->tcp.end[from].snd_nxt;
    uint8_t buf[XSK_FRAME];
    int64_t n = mos_conn_segment(e, slot, id, to_side, tcp_flags, payload, len, t->l2[to_side],
                                 xlat_map(&t->dir[from], nxt) - nxt, buf, sizeof(buf));
    if (n < 0)
        return n;
    if (mos_xsk_send(x, t->slot[to_side], buf, (uint32_t)n) != 0)
        return -4;
    uint32_t seglen = len + ((tcp_flags & TCP_SYN) ? 1u : 0u) + ((tcp_flags & TCP_FIN) ? 1u : 0u);
    if (x->inline_mode && seglen && !(tcp_flags & TCP_RST))
        xlat_shift(&t->dir[from], nxt, (int32_t)seglen);
    mos_engine_injected(e, (uint32_t)n);
    return n;
}

int mos_xsk_drop_after(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, uint32_t slot, uint64_t id)
{
    const struct conn *c = engine_conn(e, slot, id);
    struct mos_flow_key k;
    if (!c || conn_key(c, &k) != 0)
        return -1;
    if (x->ndrop_keys >= XSK_DROP_KEYS)
        return -1;
    uint64_t addr;
    int64_t from = 0;
    if (pkt != UINT32_MAX && frame_of(x, e, pkt, &addr) >= 0) {
        int64_t i = batch_index(x, addr);
        if (i >= 0)
            from = i + 1;
    }
    x->drop_from[x->ndrop_keys] = from;
    x->drop_keys[x->ndrop_keys++] = k;
    return 0;
}


int mos_xsk_pump(mos_xsk_t *x, mos_engine_t *e, struct mos_pkt *pkts, uint32_t max, int timeout_ms,
                 uint64_t stop_ts_ns, uint64_t budget_ns, uint32_t *fed)
{
    uint64_t start = now_ns();
    *fed = 0;
    for (;;) {
        int n = mos_xsk_rx(x, pkts, max, timeout_ms);
        if (n <= 0)
            return n;
        sink_attach(x, e); /* until mos_xsk_done: Python may feed the rest of the batch */
        uint32_t k = mos_engine_feed(e, MOS_DLT_EN10MB, pkts, (uint32_t)n, stop_ts_ns);
        const struct mos_event *evs;
        if (k < (uint32_t)n || mos_engine_events(e, &evs) > 0) {
            *fed = k;
            return n; /* Python's turn: handlers, timers, verdicts, then mos_xsk_done */
        }
        mos_engine_events_done(e);
        mos_xsk_done(x);
        if (now_ns() - start >= budget_ns)
            return 0;
        timeout_ms = 0; /* within the budget, only what is already there */
    }
}

uint32_t mos_xsk_channels_in_use(const char *ifname)
{
    struct ethtool_channels ch = {.cmd = ETHTOOL_GCHANNELS};
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
    ifr.ifr_data = (void *)&ch;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int rc = ioctl(fd, SIOCETHTOOL, &ifr);
    close(fd);
    return rc == 0 ? ch.rx_count + ch.combined_count : 0;
}
