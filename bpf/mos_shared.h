/* The ABI between the XDP program (bpf/xdp_mos.c), the C engine (userspace/) and Python (through the cffi
 * module, whose cdef is generated from this header by userspace/build_engine.py).
 *
 * Each fact is written here once: map names, limits, struct layouts, counter names (X-macro lists that
 * give both the enum and the name table), the symmetric flow key and its hash. Names of things only the
 * XDP program has (its maps, configuration, counters, verdicts) carry the MOS_XDP_ / mos_xdp_ prefix, so
 * this header and the engine's (userspace/mos_engine.h) can be included together.
 *
 * Plain C: fixed-width types come from <stdint.h> in userspace and from the kernel's __uN types when
 * compiled for BPF. Every struct is laid out with explicit padding so that BPF and userspace agree byte
 * for byte.
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
#define MOS_INLINE static __always_inline
#elif defined(MOS_CDEF)
/* cffi's cdef (build_engine.py preprocesses with MOS_CDEF): the types are cffi's own, and the
 * inline functions below become bare prototypes */
typedef uint8_t mos_u8;
typedef uint16_t mos_u16;
typedef uint32_t mos_u32;
typedef uint64_t mos_u64;
#define MOS_INLINE
#else
#include <stdint.h>
typedef uint8_t mos_u8;
typedef uint16_t mos_u16;
typedef uint32_t mos_u32;
typedef uint64_t mos_u64;
#define MOS_INLINE static inline
#endif

/* ---- limits (shared by the program and the AF_XDP side of the engine) ---------------------------- */
enum mos_limits {
    MOS_MAX_QUEUES = 64,      /* receive queues per interface that can carry AF_XDP sockets */
    MOS_MAX_WORKERS = 64,     /* workers (sockets) per receive queue */
    MOS_MAX_SLOTS = 2,        /* interfaces per program: 0 = the attached one, 1 = the inline peer */
    MOS_XSK_MAP_SIZE = 2 * 64 * 64, /* MOS_MAX_SLOTS * MOS_MAX_QUEUES * MOS_MAX_WORKERS */
    MOS_XDP_BLOCK_MAX = 16384,      /* prefixes per block list and per monitored list (IPv4 and IPv6 each) */
    MOS_XDP_PORTS = 65536,          /* port flag array: one entry per TCP/UDP port */
    MOS_XDP_ARP_MAX = 256,          /* IPv4 addresses the program answers ARP requests for (map ARP) */
    MOS_XDP_BYPASS_MAX = 262144,    /* bypassed connections (LRU: the least recently used go first) */
};

/* ---- the program's maps ----------------------------------------------------------------------------
 * Each map's name as the kernel sees it (<= 15 characters) and as it is pinned under
 * <pin root>/<ifname>/. The program declares each map with the identifier given here; userspace reads
 * the names through mos_xdp_map_name() (userspace/abi.c). */
#define MOS_XDP_MAPS(X)                                                                                     \
    X(CONFIG, mos_config)       /* array, 1 entry: struct mos_xdp_config */                              \
    X(COUNTERS, mos_counters)   /* per-CPU array, 1 entry: a u64 per enum mos_xdp_counter */             \
    X(XSKS, mos_xsks)           /* XSKMAP, MOS_XSK_MAP_SIZE sockets at mos_xsk_index() */               \
    X(TX_PORTS, mos_tx_ports)   /* DEVMAP, one interface per slot (inline forwarding) */                 \
    X(BLOCK_V4, mos_block_v4)   /* LPM trie: struct mos_xdp_lpm_v4 -> u64 hit count */                   \
    X(BLOCK_V6, mos_block_v6)   /* LPM trie: struct mos_xdp_lpm_v6 -> u64 hit count */                   \
    X(PORTS, mos_ports)         /* array, MOS_XDP_PORTS u8 entries of MOS_XDP_PORT_* flags */            \
    X(BYPASS, mos_bypass)       /* LRU hash: struct mos_flow_key -> struct mos_xdp_bypass_entry */       \
    X(DEBUG, mos_debug)         /* array, 1 entry: struct mos_xdp_debug */                             \
    X(MON_V4, mos_mon_v4)       /* LPM trie: struct mos_xdp_lpm_v4 -> u8, monitored prefixes (PREFIX_FILTER) */ \
    X(MON_V6, mos_mon_v6)       /* LPM trie: struct mos_xdp_lpm_v6 -> u8 */                             \
    X(ARP, mos_arp)             /* hash: IPv4 address (network order) -> struct mos_xdp_arp_entry */

enum mos_xdp_map {
#define MOS_X_(id, name) MOS_XDP_MAP_##id,
    MOS_XDP_MAPS(MOS_X_)
#undef MOS_X_
    MOS_XDP_MAP_COUNT
};

/* ---- configuration (map CONFIG, one entry at key 0) --------------------------------------------- */
enum mos_xdp_flags {
    MOS_XDP_PROTO_TCP = 1 << 0,
    MOS_XDP_PROTO_UDP = 1 << 1,

    MOS_XDP_CFG_PORT_FILTER = 1 << 0, /* monitor only flows with a port flagged MOS_XDP_PORT_MONITOR */
    MOS_XDP_CFG_DEBUG = 1 << 1,       /* record the last steering decision in map DEBUG */
    MOS_XDP_CFG_PREFIX_FILTER = 1 << 2, /* monitor only packets from or to a prefix of MON_V4 / MON_V6 */

    MOS_XDP_MODE_PASSIVE = 0, /* unmonitored traffic: XDP_PASS to the host */
    MOS_XDP_MODE_INLINE = 1,  /* ... forwarded to the other interface of the pair */

    /* port flags (map PORTS, key = port in host byte order, value = mos_u8) */
    MOS_XDP_PORT_MONITOR = 1 << 0, /* with MOS_XDP_CFG_PORT_FILTER: flows to/from this port are monitored */
    MOS_XDP_PORT_BLOCK = 1 << 1,   /* TCP/UDP packets from or to this port are dropped in XDP */

    /* bypass verdicts (struct mos_xdp_bypass_entry.verdict; 0 = entry ignored) */
    MOS_XDP_BYPASS_PASS = 1,     /* hand the connection's packets to the host (XDP_PASS) */
    MOS_XDP_BYPASS_DROP = 2,     /* drop them in XDP */
    MOS_XDP_BYPASS_REDIRECT = 3, /* inline mode: send them to the other interface via map TX_PORTS */
};

/* What monitored traffic meets when no engine socket is at its index: the engine has not started yet,
 * has stopped, or crashed (a dead process's AF_XDP sockets leave the XSKMAP with it). The program cannot
 * tell these apart, and need not: in each the traffic would go by uninspected. FAIL_DROP (fail closed)
 * drops it; FAIL_PASS (fail open) lets it through: to the host (passive) or the peer (inline). */
#define MOS_XDP_FAIL_MODES(X)                                                                               \
    X(PASS, pass)                                                                                          \
    X(DROP, drop)

enum mos_xdp_fail_mode {
#define MOS_X_(id, name) MOS_XDP_FAIL_##id,
    MOS_XDP_FAIL_MODES(MOS_X_)
#undef MOS_X_
    MOS_XDP_FAIL_COUNT
};

struct mos_xdp_config {
    mos_u32 protocols;      /* MOS_XDP_PROTO_* bits: which transport protocols go to the engine */
    mos_u32 flags;          /* MOS_XDP_CFG_* bits */
    mos_u32 workers;        /* AF_XDP sockets (workers) per (interface, queue); 0 counts as 1 */
    mos_u32 queues;         /* receive queues the engine binds (informational for the program) */
    mos_u32 mode;           /* MOS_XDP_MODE_* */
    mos_u32 ifindex;        /* slot 0: the interface the program was attached to */
    mos_u32 peer_ifindex;   /* slot 1: the inline peer, 0 when none */
    mos_u32 on_failure;     /* enum mos_xdp_fail_mode: monitored traffic without an engine socket */
    mos_u64 bypass_idle_ns; /* a bypass entry idle for longer is ignored and deleted; 0: never */
};

/* ---- block lists (LPM tries; value = mos_u64 hit count) ----------------------------------------- */
struct mos_xdp_lpm_v4 {
    mos_u32 prefixlen;  /* 0..32 */
    mos_u8 addr[4];     /* network byte order */
};

struct mos_xdp_lpm_v6 {
    mos_u32 prefixlen;  /* 0..128 */
    mos_u8 addr[16];
};

/* ---- flow key: symmetric (both directions of a connection give the same key) -------------------- */
/* The two endpoints (address, port) are put in canonical order: "lo" is the endpoint whose address
 * words (compared as native-endian mos_u32, first word first) and then port (raw mos_u16) are the
 * smaller. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). Addresses and ports keep network
 * byte order. IP fragments carry ports 0 (non-first fragments have none), so all fragments of an
 * address pair go to one worker. vlan_key = (outer VID << 12) | inner VID; a single tag is (VID);
 * untagged 0. */
struct mos_flow_key {
    mos_u32 addr_lo[4];
    mos_u32 addr_hi[4];
    mos_u16 port_lo;
    mos_u16 port_hi;
    mos_u32 vlan_key;
    mos_u8 proto;       /* IPPROTO_TCP / IPPROTO_UDP */
    mos_u8 _pad[3];
};
enum { MOS_FLOW_KEY_WORDS = 11 }; /* sizeof(struct mos_flow_key) / 4 */

/* ---- bypass (map BYPASS, key = struct mos_flow_key) ---------------------------------------------- */
struct mos_xdp_bypass_entry {
    mos_u64 last_seen_ns; /* CLOCK_MONOTONIC (bpf_ktime_get_ns); userspace sets it when inserting */
    mos_u64 packets;      /* updated by the program */
    mos_u64 bytes;
    mos_u32 verdict;      /* MOS_XDP_BYPASS_*; 0 = entry ignored */
    mos_u32 _pad0;
};

/* ---- ARP answers (map ARP, key = an IPv4 address, network order) ----------------------------------
 * An address the box itself stands for without the host owning it -- a NAT's public address -- gets its
 * ARP requests answered in XDP (out of the interface the request came in on), whether or not an
 * engine runs: the peers keep the box's MAC for it. The reply is redirected to the interface asked on
 * (XDP_TX when that fails). */
struct mos_xdp_arp_entry {
    mos_u8 mac[MOS_MAX_SLOTS * 6]; /* the MAC to answer with, 6 bytes by slot of the interface asked on
                                    * (flat: bcc's map types do not take a 2-D array) */
    mos_u8 _pad[4];
    mos_u64 replies;              /* updated by the program */
};

/* ---- debug (map DEBUG, one entry; written only with MOS_XDP_CFG_DEBUG) -------------------------- */
struct mos_xdp_debug {
    struct mos_flow_key key;
    mos_u32 hash;
    mos_u32 xsk_index;
    mos_u32 rx_queue;
    mos_u32 slot;
    mos_u64 seq;          /* number of records written */
};

/* ---- counters (map COUNTERS, index = enum mos_xdp_counter, value = mos_u64 per CPU) --------------
 * Each counter has a kind, which says how the counters add up (checked by `mos-xdp run --stats`):
 *   TOTAL    rx: every frame the program saw
 *   VERDICT  the action returned: each frame is in exactly one, so they sum to rx
 *   REASON   why: each frame is in exactly one of these too (sum = rx); the name says the usual verdict,
 *            but inline the pass_* reasons forward to the peer (a redirect verdict)
 *   NOTE     a remark on some frames, in addition to their reason */
#define MOS_XDP_COUNTERS(X)                                                                                 \
    X(RX, rx, TOTAL)                                 /* frames seen by the program */                   \
    X(PASS, pass, VERDICT)                           /* XDP_PASS */                                     \
    X(DROP, drop, VERDICT)                           /* XDP_DROP */                                     \
    X(REDIRECT, redirect, VERDICT)                   /* XDP_REDIRECT (socket or peer) */                \
    X(TX, tx, VERDICT)                               /* XDP_TX (back out of the interface it came in on) */\
    X(PASS_NOT_IP, pass_not_ip, REASON)              /* not IPv4/IPv6 (ARP, LLDP, ...) */               \
    X(ARP_REPLY, arp_reply, REASON)                  /* ARP requests for an address of map ARP: answered (redirect) */\
    X(PASS_NOT_MONITORED, pass_not_monitored, REASON) /* IP, but not a monitored protocol/port */        \
    X(PASS_NO_SOCKET, pass_no_socket, REASON)        /* monitored, no engine socket, FAIL_PASS */       \
    X(DROP_NO_SOCKET, drop_no_socket, REASON)        /* monitored, no engine socket, FAIL_DROP */       \
    X(DROP_MALFORMED, drop_malformed, REASON)        /* truncated or inconsistent headers */            \
    X(DROP_BLOCKED_PREFIX, drop_blocked_prefix, REASON) /* source or destination in a block list */     \
    X(DROP_BLOCKED_PORT, drop_blocked_port, REASON)  /* source or destination port blocked */           \
    X(XSK_REDIRECT, xsk_redirect, REASON)            /* sent to an AF_XDP socket (the engine) */        \
    X(BYPASS_PASS, bypass_pass, REASON)              /* bypassed, verdict pass (or redirect, no peer) */\
    X(BYPASS_DROP, bypass_drop, REASON)              /* bypassed, verdict drop */                       \
    X(BYPASS_REDIRECT, bypass_redirect, REASON)      /* bypassed, sent to the peer interface */         \
    X(BYPASS_EXPIRED, bypass_expired, NOTE)          /* bypass entries found idle too long (deleted) */ \
    X(FRAGMENT, fragment, NOTE)                      /* IP fragments of a monitored protocol */

#define MOS_XDP_COUNTER_KINDS(X) X(TOTAL, total) X(VERDICT, verdict) X(REASON, reason) X(NOTE, note)

enum mos_xdp_counter_kind {
#define MOS_X_(id, name) MOS_XDP_KIND_##id,
    MOS_XDP_COUNTER_KINDS(MOS_X_)
#undef MOS_X_
    MOS_XDP_KIND_COUNT
};

enum mos_xdp_counter {
#define MOS_X_(id, name, kind) MOS_XDP_C_##id,
    MOS_XDP_COUNTERS(MOS_X_)
#undef MOS_X_
    MOS_XDP_C_COUNT
};

/* ---- steering ----------------------------------------------------------------------------------- */
/* An AF_XDP socket only receives frames that arrive on the (interface, queue) it is bound to; a
 * redirect to any other socket is dropped by the kernel. The XSKMAP is therefore laid out per
 * (slot, queue): the program picks, among the sockets of the queue the frame arrived on, the worker
 * mos_flow_hash(key) % workers. The engine puts worker w's socket bound to (slot's interface, queue q)
 * at mos_xsk_index(slot, q, w). */
MOS_INLINE mos_u32 mos_xsk_index(mos_u32 slot, mos_u32 queue, mos_u32 worker)
#ifndef MOS_CDEF
{
    return (slot * MOS_MAX_QUEUES + queue) * MOS_MAX_WORKERS + worker;
}
#else
;
#endif

/* Fills the canonical key of a packet from its endpoints (addresses as four network-order words,
 * IPv4-mapped for IPv4; ports in network byte order, 0 for IP fragments). */
MOS_INLINE void mos_flow_key_make(struct mos_flow_key *k, const mos_u32 *saddr, const mos_u32 *daddr,
                                  mos_u16 sport, mos_u16 dport, mos_u32 vlan_key, mos_u8 proto)
#ifndef MOS_CDEF
{
    int src_lower = sport <= dport;
#ifdef MOS_IN_BPF
#pragma unroll
#endif
    for (int i = 3; i >= 0; i--) {
        if (saddr[i] != daddr[i])
            src_lower = saddr[i] < daddr[i];
    }
    for (int i = 0; i < 4; i++) {
        k->addr_lo[i] = src_lower ? saddr[i] : daddr[i];
        k->addr_hi[i] = src_lower ? daddr[i] : saddr[i];
    }
    k->port_lo = src_lower ? sport : dport;
    k->port_hi = src_lower ? dport : sport;
    k->vlan_key = vlan_key;
    k->proto = proto;
    k->_pad[0] = k->_pad[1] = k->_pad[2] = 0;
}
#else
;
#endif

#define MOS_HASH_SEED 0x6d6f7321u /* "mos!" */

/* Murmur3-32 over the MOS_FLOW_KEY_WORDS native-endian words of a canonical flow key. Symmetric
 * because the key is: both directions of a connection build the same key. */
MOS_INLINE mos_u32 mos_flow_hash(const struct mos_flow_key *key)
#ifndef MOS_CDEF
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
        k = (k << 15) | (k >> 17);
        k *= 0x1b873593u;
        h ^= k;
        h = (h << 13) | (h >> 19);
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
#else
;
#endif

#endif /* MOS_SHARED_H */
