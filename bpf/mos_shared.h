/* Definitions shared by the XDP program (bpf/xdp_mos.c), the C engine (userspace/) and mos/bpf.py.
 *
 * Plain C: fixed-width types come from <stdint.h> in userspace and from the kernel's __uN types when
 * compiled for BPF. Every struct is laid out with explicit
 * padding so that BPF, the engine and Python's ctypes mirror (mos/bpf.py) agree byte for byte. Change a
 * value here and change mos/bpf.py too (tests/test_xdp.py checks that both agree).
 */
#ifndef MOS_SHARED_H
#define MOS_SHARED_H

/* bcc preprocesses with the host target and __KERNEL__ / __BPF_TRACING__; clang -target bpf sets __bpf__ */
#if defined(__bpf__) || defined(__BPF__) || defined(__BPF_TRACING__) || defined(__KERNEL__)
#define MOS_IN_BPF 1
typedef __u8 mos_u8;
typedef __u16 mos_u16;
typedef __u32 mos_u32;
typedef __u64 mos_u64;
#else
#include <stdint.h>
typedef uint8_t mos_u8;
typedef uint16_t mos_u16;
typedef uint32_t mos_u32;
typedef uint64_t mos_u64;
#endif

/* ---- map sizes ---------------------------------------------------------------------------------- */
#define MOS_MAX_QUEUES 64        /* receive queues per interface that can carry AF_XDP sockets */
#define MOS_MAX_WORKERS 64       /* workers (sockets) per receive queue */
#define MOS_MAX_SLOTS 2          /* interfaces per program: 0 = the attached one, 1 = the inline peer */
#define MOS_XSK_MAP_SIZE (MOS_MAX_SLOTS * MOS_MAX_QUEUES * MOS_MAX_WORKERS)
#define MOS_BLOCK_MAX 16384      /* prefixes per block list (IPv4 and IPv6 each) */
#define MOS_PORTS 65536          /* port flag array: one entry per TCP/UDP port */
#define MOS_BYPASS_MAX 262144    /* bypassed connections (LRU: the least recently used go first) */

/* Map names, as seen by the kernel (<= 15 characters) and as pinned under MOS_PIN_ROOT/<ifname>/. */
#define MOS_PIN_ROOT "/sys/fs/bpf/mos-xdp"
#define MOS_MAP_CONFIG "mos_config"
#define MOS_MAP_COUNTERS "mos_counters"
#define MOS_MAP_XSKS "mos_xsks"
#define MOS_MAP_TX_PORTS "mos_tx_ports"
#define MOS_MAP_BLOCK_V4 "mos_block_v4"
#define MOS_MAP_BLOCK_V6 "mos_block_v6"
#define MOS_MAP_PORTS "mos_ports"
#define MOS_MAP_BYPASS "mos_bypass"
#define MOS_MAP_DEBUG "mos_debug"

/* ---- configuration (array map MOS_MAP_CONFIG, one entry at key 0) -------------------------------- */
#define MOS_PROTO_TCP (1u << 0)
#define MOS_PROTO_UDP (1u << 1)

#define MOS_CFG_PORT_FILTER (1u << 0) /* monitor only flows with a port flagged MOS_PORT_MONITOR */
#define MOS_CFG_DEBUG (1u << 1)       /* record the last steering decision in MOS_MAP_DEBUG */

#define MOS_MODE_PASSIVE 0 /* unmonitored traffic and traffic without a socket: XDP_PASS to the host */
#define MOS_MODE_INLINE 1  /* ... forwarded to the other interface of the pair (fail-open) */

struct mos_config {
    mos_u32 protocols;      /* MOS_PROTO_* bits: which transport protocols go to the engine */
    mos_u32 flags;          /* MOS_CFG_* bits */
    mos_u32 workers;        /* AF_XDP sockets (workers) per (interface, queue); 0 counts as 1 */
    mos_u32 queues;         /* receive queues the engine binds (informational for the program) */
    mos_u32 mode;           /* MOS_MODE_* */
    mos_u32 ifindex;        /* slot 0: the interface the program was attached to */
    mos_u32 peer_ifindex;   /* slot 1: the inline peer, 0 when none */
    mos_u32 _pad0;
    mos_u64 bypass_idle_ns; /* a bypass entry idle for longer is ignored and deleted; 0: never */
};

/* ---- port flags (array map MOS_MAP_PORTS, key = port in host byte order, value = mos_u8) -------- */
#define MOS_PORT_MONITOR (1u << 0) /* with MOS_CFG_PORT_FILTER: flows to/from this port are monitored */
#define MOS_PORT_BLOCK (1u << 1)   /* TCP/UDP packets from or to this port are dropped in XDP */

/* ---- block lists (LPM tries; value = mos_u64 hit count) ----------------------------------------- */
struct mos_lpm_v4 {
    mos_u32 prefixlen;  /* 0..32 */
    mos_u8 addr[4];     /* network byte order */
};

struct mos_lpm_v6 {
    mos_u32 prefixlen;  /* 0..128 */
    mos_u8 addr[16];
};

/* ---- flow key: symmetric (both directions of a connection give the same key) -------------------- */
/* The two endpoints (address, port) are put in canonical order: "lo" is the endpoint whose address
 * words (compared as native-endian mos_u32, first word first) and then port (raw mos_u16) are the
 * smaller. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). Addresses and ports keep network
 * byte order. IP fragments carry ports 0 (non-first fragments have none), so all fragments of an
 * address pair go to one worker; the engine re-steers a reassembled datagram if needed.
 * vlan_key = (outer VID << 12) | inner VID; a single tag is (VID); untagged 0. */
struct mos_flow_key {
    mos_u32 addr_lo[4];
    mos_u32 addr_hi[4];
    mos_u16 port_lo;
    mos_u16 port_hi;
    mos_u32 vlan_key;
    mos_u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP */
    mos_u8 _pad[3];
};
#define MOS_FLOW_KEY_WORDS 11 /* sizeof(struct mos_flow_key) / 4 */

/* ---- bypass (LRU hash MOS_MAP_BYPASS, key = struct mos_flow_key) -------------------------------- */
#define MOS_BYPASS_PASS 1     /* hand the connection's packets to the host (XDP_PASS) */
#define MOS_BYPASS_DROP 2     /* drop them in XDP */
#define MOS_BYPASS_REDIRECT 3 /* inline mode: send them to the other interface via MOS_MAP_TX_PORTS */

struct mos_bypass_entry {
    mos_u64 last_seen_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns); userspace sets it when inserting */
    mos_u64 packets;      /* updated by the program */
    mos_u64 bytes;
    mos_u32 verdict;      /* MOS_BYPASS_*; 0 = entry ignored */
    mos_u32 _pad0;
};

/* ---- debug (array map MOS_MAP_DEBUG, one entry; written only with MOS_CFG_DEBUG) ----------------- */
struct mos_debug {
    struct mos_flow_key key;
    mos_u32 hash;
    mos_u32 xsk_index;
    mos_u32 rx_queue;
    mos_u32 slot;
    mos_u64 seq;          /* number of records written */
};

/* ---- counters (per-CPU array MOS_MAP_COUNTERS, key = enum mos_counter, value = mos_u64) ---------- */
enum mos_counter {
    MOS_C_RX = 0,              /* packets seen by the program */
    MOS_C_PASS,                /* verdict totals: XDP_PASS */
    MOS_C_DROP,                /*                 XDP_DROP */
    MOS_C_REDIRECT,            /*                 XDP_REDIRECT (AF_XDP socket or peer interface) */
    MOS_C_PASS_NOT_IP,         /* reasons: not IPv4/IPv6 (ARP, LLDP, ...) */
    MOS_C_PASS_NOT_MONITORED,  /* IP, but not a monitored protocol/port */
    MOS_C_PASS_NO_SOCKET,      /* monitored, but no AF_XDP socket at the chosen XSKMAP index */
    MOS_C_DROP_MALFORMED,      /* truncated or inconsistent headers */
    MOS_C_DROP_BLOCKED_PREFIX, /* source or destination in a block list */
    MOS_C_DROP_BLOCKED_PORT,   /* source or destination port blocked */
    MOS_C_XSK_REDIRECT,        /* sent to an AF_XDP socket */
    MOS_C_BYPASS_PASS,         /* bypassed connection, verdict pass (or redirect without a peer) */
    MOS_C_BYPASS_DROP,         /* bypassed connection, verdict drop */
    MOS_C_BYPASS_REDIRECT,     /* bypassed connection, sent to the peer interface */
    MOS_C_BYPASS_EXPIRED,      /* bypass entries found idle for too long (deleted) */
    MOS_C_FRAGMENT,            /* IP fragments of a monitored protocol (steered by address pair) */
    MOS_C_COUNT
};

/* ---- steering ----------------------------------------------------------------------------------- */
/* An AF_XDP socket only receives frames that arrive on the (interface, queue) it is bound to; a
 * redirect to any other socket is dropped by the kernel. The XSKMAP is therefore laid out per
 * (slot, queue): the program picks, among the sockets of the queue the frame arrived on, the worker
 * mos_flow_hash(key) % workers. The engine puts worker w's socket bound to (slot's interface, queue q)
 * at mos_xsk_index(slot, q, w). */
static inline mos_u32 mos_xsk_index(mos_u32 slot, mos_u32 queue, mos_u32 worker)
{
    return (slot * MOS_MAX_QUEUES + queue) * MOS_MAX_WORKERS + worker;
}

#define MOS_HASH_SEED 0x6d6f7321u /* "mos!" */

static inline mos_u32 mos_rotl32(mos_u32 x, int r)
{
    return (x << r) | (x >> (32 - r));
}

/* Murmur3-32 over the MOS_FLOW_KEY_WORDS native-endian words of a canonical flow key. Symmetric
 * because the key is: both directions of a connection build the same key. */
static inline mos_u32 mos_flow_hash(const struct mos_flow_key *key)
{
    const mos_u8 *p = (const mos_u8 *)key;
    mos_u32 h = MOS_HASH_SEED;
#ifdef MOS_IN_BPF
#pragma unroll
#endif
    for (int i = 0; i < MOS_FLOW_KEY_WORDS; i++) {
        mos_u32 k;
        __builtin_memcpy(&k, p + 4 * i, 4);
        k *= 0xcc9e2d51u;
        k = mos_rotl32(k, 15);
        k *= 0x1b873593u;
        h ^= k;
        h = mos_rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }
    h ^= (mos_u32)(MOS_FLOW_KEY_WORDS * 4);
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

#endif /* MOS_SHARED_H */
