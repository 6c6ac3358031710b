/* mos-xdp: the XDP program of the live path (compiled and loaded by bcc, see mos/bpf.py).
 *
 * One entry point, xdp_mos, made of small steps that each do one job:
 *   parse_packet    Ethernet, up to two VLAN tags (802.1Q / 802.1ad QinQ), IPv4 / IPv6 (extension
 *                   headers, fragments), TCP / UDP; a bounds check next to every header access.
 *   blocked_*       fast drop: source or destination in an LPM-trie block list, or a blocked port.
 *   is_monitored    the configured filter (protocols, optionally a monitored port set and monitored
 *                   prefixes: what mos/bpf_filter.py pushes down of a monitor filter).
 *   check_bypass    connections userspace has seen enough of: their verdict, kept in an LRU hash.
 *   answer_arp      ARP requests for an address the box stands for (a NAT's): answered in place.
 *   steer           a symmetric flow hash picks the AF_XDP socket through the XSKMAP.
 * Anything the stack does not monitor (ARP, ICMP, other protocols, other ports) gets XDP_PASS in
 * passive mode, so the host keeps working on a monitored interface; in inline mode it is forwarded to
 * the other interface of the pair. Every verdict and reason is counted per CPU.
 *
 * Steering and the AF_XDP queue rule
 * ----------------------------------
 * The kernel delivers a frame redirected into an XSKMAP only to a socket bound to the same interface
 * AND the same receive queue the frame arrived on (xsk_rcv: xs->dev == rxq->dev && xs->queue_id ==
 * rxq->queue_index); otherwise the frame is dropped. So the program never picks a socket of another
 * queue: the XSKMAP holds, for each (slot, queue), one socket per worker, at
 *     mos_xsk_index(slot, queue, worker) = (slot * MOS_MAX_QUEUES + queue) * MOS_MAX_WORKERS + worker
 * and the program uses worker = mos_flow_hash(key) % workers with queue = ctx->rx_queue_index and
 * slot 0 for the attached interface, 1 for the inline peer. Consequences for the engine:
 *   - N workers on one queue means N sockets bound to the same (interface, queue): that is allowed
 *     only with XDP_SHARED_UMEM, and those sockets then share the UMEM's fill and completion rings
 *     (each keeps its own RX/TX ring), so the engine serialises fill/completion ring access per queue.
 *   - Worker w owns the sockets at index (s, q, w) for every slot s and queue q it serves.
 *   - Both directions of a connection must reach the same worker whatever queue each arrives on:
 *     the engine gives every worker a socket on every queue (see userspace/xsk.c), and the hash is
 *     symmetric, so no symmetric RSS key or single-queue setting is needed.
 *   - Inline mode: each direction arrives on its own interface; worker w needs a socket on both
 *     (slot 0 and slot 1), and the same hash puts both directions on w.
 * When no socket sits at the chosen index -- no engine runs, or it died and the kernel took its sockets
 * out of the map -- the configured failure mode decides: dropped (drop_no_socket) or let through
 * (pass_no_socket).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "mos_shared.h"
#include "mos_parse.h"

/* ---- maps ------------------------------------------------------------------------------------- */
BPF_ARRAY(mos_config, struct mos_xdp_config, 1);
/* All counters of a CPU in one value: one lookup per packet, however many counters it bumps. */
struct mos_counter_block {
    u64 c[MOS_XDP_C_COUNT];
};
BPF_PERCPU_ARRAY(mos_counters, struct mos_counter_block, 1);
BPF_XSKMAP(mos_xsks, MOS_XSK_MAP_SIZE);
BPF_DEVMAP(mos_tx_ports, MOS_MAX_SLOTS);
BPF_LPM_TRIE(mos_block_v4, struct mos_xdp_lpm_v4, u64, MOS_XDP_BLOCK_MAX);
BPF_LPM_TRIE(mos_block_v6, struct mos_xdp_lpm_v6, u64, MOS_XDP_BLOCK_MAX);
BPF_ARRAY(mos_ports, u8, MOS_XDP_PORTS);
BPF_TABLE("lru_hash", struct mos_flow_key, struct mos_xdp_bypass_entry, mos_bypass, MOS_XDP_BYPASS_MAX);
BPF_ARRAY(mos_debug, struct mos_xdp_debug, 1);
BPF_LPM_TRIE(mos_mon_v4, struct mos_xdp_lpm_v4, u8, MOS_XDP_BLOCK_MAX);
BPF_LPM_TRIE(mos_mon_v6, struct mos_xdp_lpm_v6, u8, MOS_XDP_BLOCK_MAX);
BPF_HASH(mos_arp, u32, struct mos_xdp_arp_entry, MOS_XDP_ARP_MAX);

/* ---- parsing (the walk's rules and limits: mos_parse.h, shared with the engine's decoder) ---- */
struct mos_vlan_hdr {
    __be16 tci;
    __be16 encap_proto;
};

struct mos_ipv6_frag_hdr {
    u8 nexthdr;
    u8 reserved;
    __be16 frag_off; /* offset << 3 | M */
    __be32 id;
};

enum parse_result { PARSE_OK = 0, PARSE_NOT_IP, PARSE_MALFORMED };

struct pkt {
    u32 saddr[4]; /* IPv4-mapped for IPv4 */
    u32 daddr[4];
    u16 sport;    /* network byte order; 0 when has_ports is 0 */
    u16 dport;
    u32 vlan_key;
    u8 proto;     /* the transport protocol, when the packet shows it */
    u8 key_proto; /* the flow key's: as proto, but for an IPv6 fragment its fragment header's next header */
    u8 ipv6;
    u8 has_ports;
    u8 is_frag;
    u8 proto_unknown; /* a later IPv6 fragment whose fragmentable part starts with an extension header */
    u16 ethertype;    /* after the VLAN tags */
    u16 l3_off;       /* where the layer after Ethernet and its tags starts */
};

/* An ARP request or reply for IPv4 over Ethernet (RFC 826). */
struct mos_arp_ipv4 {
    __be16 htype;
    __be16 ptype;
    u8 hlen;
    u8 plen;
    __be16 op;
    u8 sha[6];
    u8 spa[4];
    u8 tha[6];
    u8 tpa[4];
} __attribute__((packed));

static __always_inline void count(struct mos_counter_block *ctr, u32 c)
{
    if (c < MOS_XDP_C_COUNT)
        ctr->c[c] += 1; /* per-CPU: no atomics needed */
}

static __always_inline int parse_l4(void *cur, void *data_end, struct pkt *p, int first_fragment)
{
    if (!first_fragment)
        return PARSE_OK; /* non-first fragment: no transport header */
    if (p->proto == IPPROTO_TCP) {
        struct tcphdr *th = cur;
        if ((void *)(th + 1) > data_end)
            return p->is_frag ? PARSE_OK : PARSE_MALFORMED;
        if (th->doff < 5)
            return PARSE_MALFORMED;
        p->sport = th->source;
        p->dport = th->dest;
        p->has_ports = 1;
    } else if (p->proto == IPPROTO_UDP) {
        struct udphdr *uh = cur;
        if ((void *)(uh + 1) > data_end)
            return p->is_frag ? PARSE_OK : PARSE_MALFORMED;
        p->sport = uh->source;
        p->dport = uh->dest;
        p->has_ports = 1;
    }
    return PARSE_OK;
}

static __always_inline int parse_ipv4(void *cur, void *data_end, struct pkt *p)
{
    struct iphdr *iph = cur;
    if ((void *)(iph + 1) > data_end)
        return PARSE_MALFORMED;
    if (iph->version != 4 || iph->ihl < 5)
        return PARSE_MALFORMED;
    u32 hlen = iph->ihl * 4;
    if (cur + hlen > data_end)
        return PARSE_MALFORMED;
    p->saddr[2] = bpf_htonl(0xffff);
    p->saddr[3] = iph->saddr;
    p->daddr[2] = bpf_htonl(0xffff);
    p->daddr[3] = iph->daddr;
    p->proto = iph->protocol;
    p->key_proto = p->proto;
    u16 frag = bpf_ntohs(iph->frag_off);
    p->is_frag = (frag & (MOS_IP_MF | MOS_IP_OFFSET)) != 0;
    return parse_l4(cur + hlen, data_end, p, (frag & MOS_IP_OFFSET) == 0);
}

static __always_inline int parse_ipv6(void *cur, void *data_end, struct pkt *p)
{
    struct ipv6hdr *ip6 = cur;
    if ((void *)(ip6 + 1) > data_end)
        return PARSE_MALFORMED;
    if (ip6->version != 6)
        return PARSE_MALFORMED;
    __builtin_memcpy(p->saddr, &ip6->saddr, 16);
    __builtin_memcpy(p->daddr, &ip6->daddr, 16);
    p->ipv6 = 1;
    u8 next = ip6->nexthdr;
    cur = ip6 + 1;
    int first_fragment = 1;

#pragma unroll
    for (int i = 0; i < MOS_MAX_IPV6_EXT; i++) {
        if (next == MOS_IPPROTO_FRAGMENT) {
            struct mos_ipv6_frag_hdr *fh = cur;
            if ((void *)(fh + 1) > data_end)
                return PARSE_MALFORMED;
            u16 off = bpf_ntohs(fh->frag_off);
            if (!mos_ipv6_frag_is_atomic(off)) {
                p->is_frag = 1;
                first_fragment = mos_ipv6_frag_is_first(off);
                /* the one protocol number every fragment of the datagram carries (RFC 8200: the first
                 * header of the fragmentable part), so that all of them get one key and one worker; the
                 * first fragment's walk below goes on to the transport header, the others' cannot */
                p->key_proto = fh->nexthdr;
            }
            next = fh->nexthdr;
            cur = fh + 1;
            if (!first_fragment)
                break; /* what follows is fragment data, not headers (the chain is in the first) */
            continue;
        }
        if (!mos_ipv6_is_ext(next))
            break;
        struct ipv6_opt_hdr *oh = cur;
        if ((void *)(oh + 1) > data_end)
            return PARSE_MALFORMED;
        cur += mos_ipv6_ext_len(next, oh->hdrlen);
        next = oh->nexthdr;
    }
    /* More headers than the walk takes: malformed (dropped), never "not monitored", or a connection could
     * hide behind one header more than the limit (the engine's decoder applies the same rule). A non-first
     * fragment left the loop early, on purpose: its next header is only checked by the engine, after
     * reassembly. */
    if (first_fragment && mos_ipv6_ext_over_limit(next))
        return PARSE_MALFORMED;
    p->proto = next;
    if (!p->is_frag)
        p->key_proto = next;
    /* A later fragment's next header names the first header after the fragment header, which may be an
     * extension header (destination options, routing) carried in the first fragment: the transport
     * protocol is not in this packet. Taken as "not monitored" it would reach the host (or the peer,
     * inline) unseen while the engine held the rest of its datagram. */
    p->proto_unknown = !first_fragment && mos_ipv6_is_any_ext(next);
    return parse_l4(cur, data_end, p, first_fragment);
}

/* Ethernet and VLAN tags, then the IP layer. */
static __always_inline int parse_packet(struct xdp_md *ctx, struct pkt *p)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return PARSE_MALFORMED;
    u16 proto = bpf_ntohs(eth->h_proto);
    void *cur = eth + 1;

#pragma unroll
    for (int i = 0; i < MOS_MAX_VLAN; i++) {
        if (!mos_is_vlan_ethertype(proto))
            break;
        struct mos_vlan_hdr *vh = cur;
        if ((void *)(vh + 1) > data_end)
            return PARSE_MALFORMED;
        p->vlan_key = (p->vlan_key << 12) | (bpf_ntohs(vh->tci) & 0x0FFF);
        proto = bpf_ntohs(vh->encap_proto);
        cur = vh + 1;
    }
    if (mos_is_vlan_ethertype(proto))
        return PARSE_MALFORMED; /* a tag past the limit: malformed, as for the engine, never passed unseen */
    p->ethertype = proto;
    p->l3_off = (u16)(cur - data);

    if (proto == MOS_ETH_P_IP)
        return parse_ipv4(cur, data_end, p);
    if (proto == MOS_ETH_P_IPV6)
        return parse_ipv6(cur, data_end, p);
    return PARSE_NOT_IP;
}

/* ---- fast drop -------------------------------------------------------------------------------- */
static __always_inline int blocked_prefix(struct pkt *p)
{
    u64 *hits;
    if (p->ipv6) {
        struct mos_xdp_lpm_v6 k6 = {.prefixlen = 128};
        __builtin_memcpy(k6.addr, p->saddr, 16);
        hits = mos_block_v6.lookup(&k6);
        if (!hits) {
            __builtin_memcpy(k6.addr, p->daddr, 16);
            hits = mos_block_v6.lookup(&k6);
        }
    } else {
        struct mos_xdp_lpm_v4 k4 = {.prefixlen = 32};
        __builtin_memcpy(k4.addr, &p->saddr[3], 4);
        hits = mos_block_v4.lookup(&k4);
        if (!hits) {
            __builtin_memcpy(k4.addr, &p->daddr[3], 4);
            hits = mos_block_v4.lookup(&k4);
        }
    }
    if (!hits)
        return 0;
    /* A plain increment: the drop counters (per CPU) are exact; a prefix's hit count may miss a few when
     * CPUs hit it at the same time, which an atomic add would prevent at ~2 ns on every drop. */
    *hits += 1;
    return 1;
}

static __always_inline u8 port_flags(u16 port_be)
{
    u32 k = bpf_ntohs(port_be);
    u8 *f = mos_ports.lookup(&k);
    return f ? *f : 0;
}

static __always_inline int blocked_port(struct pkt *p)
{
    if (!p->has_ports)
        return 0;
    return ((port_flags(p->sport) | port_flags(p->dport)) & MOS_XDP_PORT_BLOCK) != 0;
}

/* ---- filter ----------------------------------------------------------------------------------- */
/* Source or destination in a monitored prefix (a monitor filter's, pushed down by mos/bpf_filter.py):
 * either address, so that both directions of a flow pass. */
static __always_inline int monitored_prefix(struct pkt *p)
{
    if (p->ipv6) {
        struct mos_xdp_lpm_v6 k6 = {.prefixlen = 128};
        __builtin_memcpy(k6.addr, p->saddr, 16);
        if (mos_mon_v6.lookup(&k6))
            return 1;
        __builtin_memcpy(k6.addr, p->daddr, 16);
        return mos_mon_v6.lookup(&k6) != 0;
    }
    struct mos_xdp_lpm_v4 k4 = {.prefixlen = 32};
    __builtin_memcpy(k4.addr, &p->saddr[3], 4);
    if (mos_mon_v4.lookup(&k4))
        return 1;
    __builtin_memcpy(k4.addr, &p->daddr[3], 4);
    return mos_mon_v4.lookup(&k4) != 0;
}

static __always_inline int is_monitored(struct mos_xdp_config *cfg, struct pkt *p)
{
    if ((cfg->flags & MOS_XDP_CFG_PREFIX_FILTER) && !monitored_prefix(p))
        return 0; /* addresses are in every fragment too */
    if (p->proto_unknown)
        return cfg->protocols != 0; /* the engine reassembles it, then knows */
    u32 bit = p->proto == IPPROTO_TCP ? MOS_XDP_PROTO_TCP : p->proto == IPPROTO_UDP ? MOS_XDP_PROTO_UDP : 0;
    if (!(cfg->protocols & bit))
        return 0;
    if (!(cfg->flags & MOS_XDP_CFG_PORT_FILTER) || !p->has_ports || p->is_frag)
        return 1; /* fragments cannot be matched on ports: the engine reassembles them */
    return ((port_flags(p->sport) | port_flags(p->dport)) & MOS_XDP_PORT_MONITOR) != 0;
}

/* ---- symmetric flow key ----------------------------------------------------------------------- */
static __always_inline void make_key(struct pkt *p, struct mos_flow_key *k)
{
    u16 sport = p->is_frag ? 0 : p->sport;
    u16 dport = p->is_frag ? 0 : p->dport;
    mos_flow_key_make(k, p->saddr, p->daddr, sport, dport, p->vlan_key, p->key_proto);
}

/* ---- verdicts --------------------------------------------------------------------------------- */
static __always_inline int finish(struct mos_counter_block *ctr, int action, u32 reason)
{
    count(ctr, reason);
    count(ctr, action == XDP_DROP ? MOS_XDP_C_DROP : action == XDP_REDIRECT ? MOS_XDP_C_REDIRECT
               : action == XDP_TX ? MOS_XDP_C_TX : MOS_XDP_C_PASS);
    return action;
}

static __always_inline u32 rx_slot(struct xdp_md *ctx, struct mos_xdp_config *cfg)
{
    return cfg->peer_ifindex && ctx->ingress_ifindex == cfg->peer_ifindex ? 1 : 0;
}

/* Traffic the engine does not take: to the host (passive) or to the other interface (inline). */
static __always_inline int not_taken(struct xdp_md *ctx, struct mos_xdp_config *cfg, struct mos_counter_block *ctr,
                                     u32 reason)
{
    if (cfg->mode == MOS_XDP_MODE_INLINE) {
        int act = mos_tx_ports.redirect_map(rx_slot(ctx, cfg) ^ 1, XDP_PASS);
        return finish(ctr, act, reason);
    }
    return finish(ctr, XDP_PASS, reason);
}

/* Monitored traffic with no engine socket to go to (not started, stopped, crashed): the operator's
 * choice, fail closed or fail open. */
static __always_inline int no_engine(struct xdp_md *ctx, struct mos_xdp_config *cfg, struct mos_counter_block *ctr)
{
    if (cfg->on_failure == MOS_XDP_FAIL_DROP)
        return finish(ctr, XDP_DROP, MOS_XDP_C_DROP_NO_SOCKET);
    return not_taken(ctx, cfg, ctr, MOS_XDP_C_PASS_NO_SOCKET);
}

/* An ARP request for an address of map ARP gets its reply here, sent back where it came from (the
 * request made into the reply in place). Returns the action, or -1 when the frame is no such request. */
static __always_inline int answer_arp(struct xdp_md *ctx, struct mos_xdp_config *cfg, struct mos_counter_block *ctr,
                                      struct pkt *p)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 off = p->l3_off;
    if (p->ethertype != MOS_ETH_P_ARP || off > sizeof(struct ethhdr) + MOS_MAX_VLAN * sizeof(struct mos_vlan_hdr))
        return -1;
    struct ethhdr *eth = data;
    struct mos_arp_ipv4 *a = data + off;
    if ((void *)(eth + 1) > data_end || (void *)(a + 1) > data_end)
        return -1;
    if (a->htype != bpf_htons(1) || a->ptype != bpf_htons(MOS_ETH_P_IP) || a->hlen != 6 || a->plen != 4 ||
        a->op != bpf_htons(1))
        return -1;
    u32 target;
    __builtin_memcpy(&target, a->tpa, 4);
    struct mos_xdp_arp_entry *e = mos_arp.lookup(&target);
    if (!e)
        return -1;
    u8 mac[6];
    if (rx_slot(ctx, cfg))
        __builtin_memcpy(mac, e->mac + 6, 6);
    else
        __builtin_memcpy(mac, e->mac, 6);
    __sync_fetch_and_add(&e->replies, 1);
    __builtin_memcpy(eth->h_dest, eth->h_source, 6);
    __builtin_memcpy(eth->h_source, mac, 6);
    a->op = bpf_htons(2);
    __builtin_memcpy(a->tha, a->sha, 6);
    __builtin_memcpy(a->sha, mac, 6);
    __builtin_memcpy(a->tpa, a->spa, 4);
    __builtin_memcpy(a->spa, &target, 4);
    /* Sent back through the DEVMAP rather than XDP_TX: a veth flushes what XDP_TX queues to its peer only
     * when the peer has an XDP program itself, so a reply to an end host with GRO alone would wait in
     * its ring for the next frame redirected there; a redirect is flushed at once. */
    int act = mos_tx_ports.redirect_map(rx_slot(ctx, cfg), XDP_TX);
    return finish(ctr, act, MOS_XDP_C_ARP_REPLY);
}

/* Returns an XDP action, or -1 when the connection is not (or no longer) bypassed. */
static __always_inline int check_bypass(struct xdp_md *ctx, struct mos_xdp_config *cfg, struct mos_counter_block *ctr,
                                        struct mos_flow_key *k)
{
    struct mos_xdp_bypass_entry *e = mos_bypass.lookup(k);
    if (!e || !e->verdict)
        return -1;
    u64 now = bpf_ktime_get_ns();
    if (cfg->bypass_idle_ns && now > e->last_seen_ns && now - e->last_seen_ns > cfg->bypass_idle_ns) {
        mos_bypass.delete(k);
        count(ctr, MOS_XDP_C_BYPASS_EXPIRED);
        return -1;
    }
    e->last_seen_ns = now;
    __sync_fetch_and_add(&e->packets, 1);
    __sync_fetch_and_add(&e->bytes, (u64)(ctx->data_end - ctx->data));
    if (e->verdict == MOS_XDP_BYPASS_DROP)
        return finish(ctr, XDP_DROP, MOS_XDP_C_BYPASS_DROP);
    if (e->verdict == MOS_XDP_BYPASS_REDIRECT) {
        int act = mos_tx_ports.redirect_map(rx_slot(ctx, cfg) ^ 1, XDP_PASS);
        return finish(ctr, act, act == XDP_REDIRECT ? MOS_XDP_C_BYPASS_REDIRECT : MOS_XDP_C_BYPASS_PASS);
    }
    return finish(ctr, XDP_PASS, MOS_XDP_C_BYPASS_PASS);
}

/* Picks the worker's socket among those bound to the receiving (interface, queue). */
static __always_inline int steer(struct xdp_md *ctx, struct mos_xdp_config *cfg, struct mos_counter_block *ctr,
                                 struct mos_flow_key *k)
{
    u32 workers = cfg->workers;
    if (workers == 0)
        workers = 1;
    if (workers > MOS_MAX_WORKERS)
        workers = MOS_MAX_WORKERS;
    u32 hash = mos_flow_hash(k);
    u32 queue = ctx->rx_queue_index;
    u32 slot = rx_slot(ctx, cfg);
    u32 idx = mos_xsk_index(slot, queue, hash % workers);

    if (cfg->flags & MOS_XDP_CFG_DEBUG) {
        u32 zero = 0;
        struct mos_xdp_debug *d = mos_debug.lookup(&zero);
        if (d) {
            __builtin_memcpy(&d->key, k, sizeof(*k));
            d->hash = hash;
            d->xsk_index = idx;
            d->rx_queue = queue;
            d->slot = slot;
            d->seq += 1;
        }
    }
    if (queue >= MOS_MAX_QUEUES || !mos_xsks.lookup(&idx))
        return no_engine(ctx, cfg, ctr);
    int act = mos_xsks.redirect_map(idx, XDP_PASS);
    if (act != XDP_REDIRECT)
        return no_engine(ctx, cfg, ctr);
    return finish(ctr, XDP_REDIRECT, MOS_XDP_C_XSK_REDIRECT);
}

/* ---- entry point ------------------------------------------------------------------------------ */
int xdp_mos(struct xdp_md *ctx)
{
    u32 zero = 0;
    struct pkt p = {};

    struct mos_counter_block *ctr = mos_counters.lookup(&zero);
    struct mos_xdp_config *cfg = mos_config.lookup(&zero);
    if (!ctr || !cfg)
        return XDP_PASS;
    count(ctr, MOS_XDP_C_RX);

    int rc = parse_packet(ctx, &p);
    if (rc == PARSE_NOT_IP) {
        rc = answer_arp(ctx, cfg, ctr, &p);
        if (rc >= 0)
            return rc;
        return not_taken(ctx, cfg, ctr, MOS_XDP_C_PASS_NOT_IP);
    }
    if (rc == PARSE_MALFORMED)
        return finish(ctr, XDP_DROP, MOS_XDP_C_DROP_MALFORMED);

    if (blocked_prefix(&p))
        return finish(ctr, XDP_DROP, MOS_XDP_C_DROP_BLOCKED_PREFIX);
    if (blocked_port(&p))
        return finish(ctr, XDP_DROP, MOS_XDP_C_DROP_BLOCKED_PORT);
    if (!is_monitored(cfg, &p))
        return not_taken(ctx, cfg, ctr, MOS_XDP_C_PASS_NOT_MONITORED);
    if (p.is_frag)
        count(ctr, MOS_XDP_C_FRAGMENT);

    struct mos_flow_key key = {};
    make_key(&p, &key);
    rc = check_bypass(ctx, cfg, ctr, &key);
    if (rc >= 0)
        return rc;
    return steer(ctx, cfg, ctr, &key);
}
