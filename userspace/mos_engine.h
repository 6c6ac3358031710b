/* mos-xdp engine: the public C API (what Python sees through cffi, and what packet sources drive).
 *
 * Packets come in batches (struct mos_pkt: pointer + lengths + timestamp) from any source: the pcap
 * reader here or an AF_XDP ring; the engine never copies a packet, it parses it in place and copies
 * only payload bytes it must hold for reassembly. Packet memory must stay valid until the events of
 * the batch have been handled (mos_engine_events_done), because events point into it.
 *
 * Events are queued, not called back: Python takes the whole queue in one crossing per batch. Each
 * event carries a snapshot of what a handler needs (both sides' states, stream offsets, the packet
 * index); bytes delivered and connections that ended are kept until mos_engine_events_done.
 */
#ifndef MOS_ENGINE_H
#define MOS_ENGINE_H

#ifndef MOS_CDEF
#include <stdint.h>
#include <stddef.h>
#endif

#include "mos_shared.h"

/* Event ids: bit numbers in 64-bit masks. 0..9 built in (mos/events.py), 32..63 user-defined. */
enum mos_event_type {
    MOS_EV_PKT_IN = 0,
    MOS_EV_CONN_START = 1,
    MOS_EV_CONN_NEW_DATA = 2,
    MOS_EV_REXMIT = 3,
    MOS_EV_TCP_STATE_CHANGE = 4,
    MOS_EV_CONN_END = 5,
    MOS_EV_ORPHAN = 6,
    MOS_EV_ERROR = 7,
    MOS_EV_DATA_GAP = 8,
    MOS_EV_ICMP_ERROR = 9, /* an ICMP error quoting a packet of the flow: reason (type << 8 | code), data */
    MOS_EV_BUILTIN_COUNT = 10,
    MOS_EV_USER_BASE = 32,
    MOS_EV_MAX = 64,
};

enum mos_side { MOS_SIDE_CLI = 0, MOS_SIDE_SVR = 1 };
enum mos_hook { MOS_HK_SND = 0, MOS_HK_RCV = 1 };
/* Every event is raised at the receiver's hook (RCV); these built-in ones also at the sender's (SND):
 * a subscription at SND to another one would never fire. */
enum { MOS_EV_AT_SND = (1 << MOS_EV_PKT_IN) | (1 << MOS_EV_TCP_STATE_CHANGE) };

enum mos_end_reason {
    MOS_END_NONE = 0, MOS_END_FIN = 1, MOS_END_RST = 2, MOS_END_TIMEOUT = 3, MOS_END_EVICTION = 4,
    MOS_END_EOF = 5,
};

/* The anomalies: each is the reason of an ERROR event and bumps one counter, both from this one list
 * (the engine raises them through one function, raise_anomaly in userspace/event_queue.c). Columns: the
 * MOS_ERR_ id, its number (the ERROR event's reason: fixed, Python and saved results use it), the
 * MOS_C_ counter it bumps, and its name, after Suricata's stream.* events (decoder.* for the decoder's).
 * MALFORMED is raised once per malformed packet (raise_malformed), with no connection: it counts under
 * the packet's malformed_* reason, whose MOS_C_ id the event's len carries (mos_counter_name names it).
 * CHECKSUM_INVALID likewise counts under its bad_checksum_* reason (len); its conn is the packet's
 * connection when one exists (found without touching it), else 0. */
#define MOS_ANOMALIES(X)                                                                                    \
    X(OUT_OF_WINDOW, 1, OUT_OF_WINDOW, "stream.pkt_out_of_window")         /* data beyond the window */  \
    X(RST_OUT_OF_WINDOW, 2, RST_OUT_OF_WINDOW, "stream.rst_out_of_window") /* RST outside the window */\
    X(BUFFER_LIMIT, 3, BUFFER_LIMIT, "stream.reassembly_buffer_limit")    /* per-direction bytes held */\
    X(MEMCAP, 4, MEMCAP, "stream.reassembly_memcap")                      /* all bytes held */          \
    X(SEGMENT_LIMIT, 5, SEGMENT_LIMIT, "stream.reassembly_segment_limit") /* held segments */          \
    X(SYN_DATA_DISCARDED, 6, SYN_DATA_DISCARDED, "stream.syn_data_discarded") /* SYN data not acked */  \
    X(DATA_AFTER_FIN, 7, DATA_AFTER_FIN, "stream.data_after_fin")         /* bytes past the FIN */      \
    X(MALFORMED, 8, MAL_BY_REASON, "decoder.malformed") /* a malformed packet: conn 0, len = its counter */\
    X(RST_CHALLENGED, 9, RST_CHALLENGED, "stream.rst_challenged") /* in window, not where the target takes one */\
    X(INVALID_TIMESTAMP, 10, INVALID_TIMESTAMP, "stream.pkt_invalid_timestamp") /* to a SYN_SENT end */ \
    X(INVALID_ACK, 11, INVALID_ACK, "stream.pkt_invalid_ack") /* to a SYN_SENT end: acks no SYN of it */\
    X(RST_INJECT_SUSPECTED, 12, RST_INJECT_SUSPECTED, "stream.suspected_rst_inject") /* talk after a RST */\
    X(SYNACK_DIFF_SEQ, 16, SYNACK_DIFF_SEQ, "stream.3whs_synack_resend_with_diff_seq") /* another ISN */\
    X(DEFRAG_OVERLAP, 15, BY_DEFRAG, "defrag.fragment_overlap") /* conn 0; off: fragment offset, len: bytes differing */\
    X(FIN_SUPERSEDED, 17, FIN_SUPERSEDED, "stream.fin_superseded") /* data covered an untaken FIN */\
    X(CHECKSUM_INVALID, 13, MAL_BY_REASON, "decoder.checksum_invalid") /* len = its bad_checksum_* */

enum mos_error_kind {
#define MOS_X_(id, num, counter, name) MOS_ERR_##id = num,
    MOS_ANOMALIES(MOS_X_)
#undef MOS_X_
};

enum mos_orphan_kind { MOS_ORPHAN_UNTRACKED_PROTO = 1, MOS_ORPHAN_NO_CONN = 2, MOS_ORPHAN_TABLE_FULL = 3 };

/* RFC 9293 states. */
enum mos_tcp_state {
    MOS_TCP_CLOSED = 0, MOS_TCP_LISTEN, MOS_TCP_SYN_SENT, MOS_TCP_SYN_RECEIVED, MOS_TCP_ESTABLISHED,
    MOS_TCP_FIN_WAIT_1, MOS_TCP_FIN_WAIT_2, MOS_TCP_CLOSE_WAIT, MOS_TCP_CLOSING, MOS_TCP_LAST_ACK,
    MOS_TCP_TIME_WAIT,
};

/* Link types (libpcap DLT_* values the engine decodes). */
enum mos_linktype {
    MOS_DLT_NULL = 0, MOS_DLT_EN10MB = 1, MOS_DLT_PPP = 9, MOS_DLT_RAW = 12, MOS_DLT_PPP_SERIAL = 50,
    MOS_DLT_PPP_ETHER = 51, MOS_DLT_C_HDLC = 104, MOS_DLT_RAW_101 = 101, MOS_DLT_LOOP = 108,
    MOS_DLT_LINUX_SLL = 113, MOS_DLT_LINUX_SLL2 = 276, MOS_DLT_IPV4 = 228, MOS_DLT_IPV6 = 229,
};

/* The engine's counters (mos_engine_counters(), names through mos_counter_name()). The dispositions come
 * first: every packet fed ends in exactly one of them (or one of the malformed_* reasons). */
#define MOS_ENGINE_COUNTERS(X)                                                                              \
    X(PACKETS, packets)                 /* packets fed */                                               \
    X(BYTES, bytes)                     /* wire bytes fed */                                            \
    X(CONN_PACKETS, conn_packets)       /* processed in a connection */                                 \
    X(UDP_PACKETS, udp_packets)         /* processed in a UDP flow */                                   \
    X(ICMP_ERROR_PACKETS, icmp_error_packets) /* ICMP errors quoting a tracked flow (ICMP_ERROR on it) */ \
    X(ORPHAN_UNTRACKED_PROTO, orphan_untracked_proto) /* no tracked protocol (ARP, ICMP; UDP when off) */\
    X(ORPHAN_NO_CONN, orphan_no_conn)   /* TCP of no tracked connection (pick-up off, a stray) */       \
    X(ORPHAN_TABLE_FULL, orphan_table_full) /* would start a connection while the table is full */      \
    X(FRAG_HELD, frag_held)             /* IP fragments absorbed by defragmentation */                  \
    X(FRAG_ERROR, frag_error)           /* IP fragments rejected by defragmentation (frag counters) */  \
    X(FILTERED_OUT, filtered_out)       /* left out by the monitor filter (userspace/monitor_filter.h) */ \
    X(IGNORED_SIDE, ignored_side)       /* packets of a connection no longer monitored on either side */\
    X(MAL_TRUNCATED_L2, malformed_truncated_l2) /* malformed, by reason */                             \
    X(MAL_UNKNOWN_LINK, malformed_unknown_link)                                                         \
    X(MAL_TRUNCATED_IP, malformed_truncated_ip)                                                         \
    X(MAL_BAD_IP_VERSION, malformed_bad_ip_version)                                                     \
    X(MAL_BAD_IP_HLEN, malformed_bad_ip_hlen)                                                           \
    X(MAL_BAD_IP_LEN, malformed_bad_ip_len)                                                             \
    X(MAL_TRUNCATED_IPV6_EXT, malformed_truncated_ipv6_ext)                                             \
    X(MAL_TRUNCATED_TCP, malformed_truncated_tcp)                                                       \
    X(MAL_BAD_TCP_HLEN, malformed_bad_tcp_hlen)                                                         \
    X(MAL_TRUNCATED_UDP, malformed_truncated_udp)                                                       \
    X(MAL_TRUNCATED_PAYLOAD, malformed_truncated_payload)                                               \
    X(MAL_BAD_TCP_FLAGS, malformed_bad_tcp_flags)                                                       \
    X(MAL_TOO_MANY_VLANS, malformed_too_many_vlans)                                                     \
    X(MAL_TOO_MANY_IPV6_EXT, malformed_too_many_ipv6_ext) /* more than MOS_MAX_IPV6_EXT (mos_parse.h) */ \
    /* not dispositions: extra information */                                                          \
    X(DATAGRAMS_REASSEMBLED, datagrams_reassembled)                                                     \
    X(FILTER_EVALUATED, filter_evaluated) /* packets the monitor filter judged */                       \
    X(FILTERED_FLOWS, filtered_flows)   /* flows the monitor filter left out (remembered) */            \
    X(CONNS_CREATED, conns_created)                                                                     \
    X(CONNS_PICKED_UP, conns_picked_up) /* created mid-stream (no SYN seen) */                          \
    X(CONNS_ENDED, conns_ended)                                                                         \
    X(CONNS_EVICTED, conns_evicted)                                                                     \
    X(CONNS_TIMED_OUT, conns_timed_out)                                                                 \
    X(CONNS_LIVE, conns_live)                                                                           \
    X(SYN_REXMIT, syn_rexmit)                                                                           \
    X(OUT_OF_WINDOW, out_of_window)                                                                     \
    X(RST_OUT_OF_WINDOW, rst_out_of_window)                                                             \
    X(RST_ACCEPTED, rst_accepted)                                                                       \
    X(BUFFER_LIMIT, buffer_limit)       /* anomalies: data past a reassembly limit (MOS_ANOMALIES) */   \
    X(MEMCAP, memcap)                                                                                   \
    X(SEGMENT_LIMIT, segment_limit)                                                                     \
    X(DATA_AFTER_CLOSE, data_after_close)                                                               \
    X(SYN_DATA_ACCEPTED, syn_data_accepted) /* SYNs whose data the peer acknowledged (TFO): delivered */ \
    X(SYN_DATA_DISCARDED, syn_data_discarded) /* anomalies: SYN data the peer did not take */           \
    X(SYN_DATA_DISCARDED_BYTES, syn_data_discarded_bytes)                                               \
    X(DATA_AFTER_FIN, data_after_fin)   /* anomalies: segments with bytes past their sender's FIN */    \
    X(DATA_AFTER_FIN_BYTES, data_after_fin_bytes) /* those bytes (not delivered) */                     \
    X(RST_CHALLENGED, rst_challenged)   /* anomalies: RSTs in window the target answers with a challenge ACK */\
    X(INVALID_TIMESTAMP, invalid_timestamp) /* anomalies: packets ignored, their TSecr echoes no SYN */ \
    X(INVALID_ACK, invalid_ack)         /* anomalies: packets ignored, their ACK acknowledges no SYN */ \
    X(RST_INJECT_SUSPECTED, rst_inject_suspected) /* anomalies: connections taken up again after a RST */\
    X(SYNACK_DIFF_SEQ, synack_diff_seq) /* anomalies: SYN-ACKs with another ISN than the first */       \
    X(SYNACK_REANCHORED, synack_reanchored) /* ... the client acknowledged the later one: anchored on it */\
    X(FIN_SUPERSEDED, fin_superseded)   /* anomalies: FINs not taken, data later covered their number */ \
    X(OUT_OF_WINDOW_TAKEN, out_of_window_taken) /* held just past the window, then acknowledged: taken */\
    X(SYN_ISN_CHANGED, syn_isn_changed) /* SYNs with another ISN before any answer: the new attempt followed */\
    X(REXMIT_AFTER_CLOSE, rexmit_after_close) /* packets of a closed connection inside its old sequence space */\
    X(EVENTS_QUEUED, events_queued)                                                                     \
    X(EVENT_BATCHES, event_batches)                                                                     \
    X(PACKETS_HELD, packets_held_for_handlers)                                                          \
    X(SNAPLEN_TRUNCATED, snaplen_truncated) /* payload cut by the capture's snaplen, headers whole: used */\
    X(BAD_CHECKSUM_IP, bad_checksum_ip)   /* disposition: IPv4 header checksum wrong (userspace/checksum.c) */\
    X(BAD_CHECKSUM_TCP, bad_checksum_tcp) /* disposition: TCP checksum wrong */                         \
    X(BAD_CHECKSUM_UDP, bad_checksum_udp) /* disposition: UDP checksum wrong */                         \
    X(CHECKSUM_UNVERIFIABLE, checksum_unverifiable) /* TCP/UDP cut by the capture: not checked */       \
    X(CHECKSUM_AUTO_OFF, checksum_auto_off) /* 1: auto found the input's checksums offloaded, stopped */ \
    X(CHECKSUM_COMPLETED, checksum_completed) /* partial checksums of a local stack's offload, completed */\
    X(INJECTED_PACKETS, injected_packets) /* frames the app sent (conn.send/reset, send_packet), or recorded offline */\
    X(INJECTED_BYTES, injected_bytes)                                                                   \
    X(CONNS_RESET, conns_reset)         /* connections the app reset (conn.reset): ended with reason RST */\
    X(ALIAS_PACKETS, alias_packets)     /* packets that carried a connection's alias (mos_conn_alias) */\
    X(TRANSLATED_PACKETS, translated_packets) /* inline: frames rewritten to or from an alias (mos_conn_translate) */

enum mos_counter {
#define MOS_X_(id, name) MOS_C_##id,
    MOS_ENGINE_COUNTERS(MOS_X_)
#undef MOS_X_
    MOS_C_COUNT,
    /* Not a counter: the anomaly table's MALFORMED (and CHECKSUM_INVALID) row counts each packet under
     * its own malformed_* (bad_checksum_*) reason (the ERROR event's len says which). */
    MOS_C_MAL_BY_REASON = MOS_C_COUNT,
    /* Not an engine counter: the defragmenter counts it (overlaps_differing in the frag counters). */
    MOS_C_BY_DEFRAG = MOS_C_COUNT + 1
};

/* One packet of a batch. data points at the link-layer header of `linktype`. */
struct mos_pkt {
    const uint8_t *data;
    uint32_t caplen;
    uint32_t wirelen;
    uint64_t ts_ns;
};

/* An event, as queued for Python. */
struct mos_event {
    uint8_t type;          /* enum mos_event_type or a user event id */
    uint8_t side;          /* the endpoint whose stack raised it (receiving side for data events) */
    uint8_t hook;          /* enum mos_hook */
    uint8_t cli_state;     /* snapshot of both endpoints' states when raised */
    uint8_t svr_state;
    uint8_t old_state;     /* TCP_STATE_CHANGE: previous state of `side` */
    uint8_t inconsistent;  /* REXMIT: bytes differ from the first copy */
    uint8_t flags;         /* TCP flags of the packet */
    uint32_t conn;         /* connection slot (1-based); 0 for ORPHAN */
    uint32_t pkt;          /* index of the packet in the batch */
    uint32_t reason;       /* CONN_END: mos_end_reason; ERROR: mos_error_kind; ORPHAN: mos_orphan_kind */
    uint32_t len;          /* NEW_DATA / REXMIT / DATA_GAP length (gap length capped at 2^32-1) */
    uint64_t conn_id;      /* connection id (1-based, in order of creation) */
    uint64_t off;          /* stream offset in `side`'s receive stream */
    const uint8_t *data;   /* NEW_DATA: the bytes; REXMIT inconsistent: the first copy */
    const uint8_t *data2;  /* REXMIT inconsistent: the new copy */
    uint64_t ts_ns;        /* packet time when raised */
    uint64_t rx_off[2];    /* snapshot: bytes received in order by the client [0] / server [1] */
    uint32_t sub;          /* the connection's subscription set (mos_conn_set_sub) when raised */
    uint32_t pad;
};

/* A connection as seen from Python. */
struct mos_conn_info {
    uint64_t id;
    uint8_t ip_version;
    uint8_t cli_state, svr_state;
    uint8_t end_reason;
    uint8_t nvlan;
    uint8_t picked_up;     /* created mid-stream */
    uint8_t monitor_mask;  /* bit 0: client side monitored, bit 1: server side */
    uint8_t cli_wscale, svr_wscale; /* 0xff when not negotiated */
    uint8_t proto;         /* IP protocol: 6 TCP (states, streams), 17 UDP (a flow of datagrams) */
    uint16_t vlan[2];
    uint8_t cli_addr[16], svr_addr[16];
    uint16_t cli_port, svr_port;
    uint32_t cli_isn, svr_isn;
    uint64_t first_ts_ns, last_ts_ns;
    uint64_t pkts[2], bytes[2];   /* sent by client [0] / server [1]: packets and payload bytes */
    uint64_t stream_off[2];       /* bytes delivered to the client [0] / to the server [1], gaps included */
    uint64_t gap_bytes[2];        /* bytes lost in the stream received by client [0] / server [1] */
    uint64_t held_bytes[2];       /* bytes currently held for that receive stream */
    uint64_t rexmit_pkts[2];      /* retransmitted segments sent by client [0] / server [1] */
    uint64_t rexmit_inconsistent[2]; /* retransmissions whose bytes differed, received by client / server */
};

/* Decoded headers of one packet (for conn.last_packet in Python). */
struct mos_pkt_view {
    uint8_t ip_version, proto, tcp_flags, nvlan;
    uint16_t vlan[2];
    uint16_t sport, dport;
    uint8_t src[16], dst[16];
    uint32_t seq, ack;
    uint16_t window, mss;
    uint8_t wscale, sack_perm, has_ts, pad;
    uint32_t tsval, tsecr;
    uint32_t l3_off, l4_off, payload_off, payload_len, caplen, wirelen;
    uint64_t ts_ns;
};

/* A filter evaluated in C for a user-defined event. All set conditions must hold. */
struct mos_filter {
    uint8_t flags_mask, flags_value;  /* (tcp_flags & mask) == value; mask 0: any */
    uint8_t nports;                   /* 0: any port; else src or dst port in ports[] */
    uint8_t pattern_len;              /* 0: none; else the packet payload (or for NEW_DATA, the new
                                       * bytes) contains pattern[0..len) */
    uint16_t ports[16];
    uint8_t pattern[64];
};

/* The checksum setting (userspace/checksum.c): on validates every packet; off none; auto validates from
 * the first packet and stops once a sample shows the input has offloaded checksums (more than one in
 * ten of the first 1000 packets wrong). Names through mos_checksum_mode_name. */
#define MOS_CHECKSUM_MODES(X) X(AUTO, "auto") X(ON, "on") X(OFF, "off")

enum mos_checksum_mode {
#define MOS_X_(id, name) MOS_CSUM_##id,
    MOS_CHECKSUM_MODES(MOS_X_)
#undef MOS_X_
    MOS_CSUM_MODE_COUNT
};

/* Where validation stands (mos_engine_checksum_state). */
enum mos_checksum_state {
    MOS_CSUM_STATE_OFF = 0,        /* off */
    MOS_CSUM_STATE_VALIDATING = 1, /* on, or auto found no offloading */
    MOS_CSUM_STATE_SAMPLING = 2,   /* auto, before the decision (validating meanwhile) */
    MOS_CSUM_STATE_AUTO_OFF = 3,   /* auto found offloaded checksums: validation switched off */
};

struct mos_config {
    uint32_t max_conns;          /* flow table capacity (default 1 << 20) */
    uint32_t event_queue;        /* events per crossing (default 8192) */
    uint8_t vlan_in_key;         /* VLAN ids are part of the flow key (default 1) */
    uint8_t pickup;              /* track connections already in progress (default 1) */
    uint8_t policy;              /* default overlap policy (enum reasm_policy) */
    uint8_t buffer_cli;          /* hold bytes received by the client (default 1) */
    uint8_t buffer_svr;          /* hold bytes received by the server (default 1) */
    uint8_t order;               /* enum mos_order: when handlers run, so when their actions act */
    uint8_t frag_policy;         /* IP fragment overlap policy (enum defrag_policy, default first) */
    uint8_t checksum;            /* enum mos_checksum_mode (default auto) */
    uint8_t udp;                 /* UDP flows are connections (default 1); 0: UDP is ORPHAN */
    uint32_t dir_buffer_limit;   /* bytes held per direction (default 8 MiB) */
    uint32_t max_segments;       /* held segments per direction (default 4096) */
    uint64_t memcap;             /* bytes held by reassembly in all (default 2 GiB) */
    uint64_t timeout_syn_ns;     /* idle timeout before the handshake completes (default 30 s) */
    uint64_t timeout_est_ns;     /* idle timeout of a connection (default 600 s) */
    uint64_t timeout_closed_ns;  /* how long a closed connection absorbs stragglers: TIME_WAIT (default 60 s) */
    uint64_t frag_memcap;        /* default 64 MiB */
    uint64_t frag_timeout_ns;    /* default 30 s */
    uint32_t frag_max;           /* datagrams in flight (default 4096) */
    uint32_t peek_window;        /* delivered bytes each stream keeps behind its end for peeks (64 KiB;
                                  * at most dir_buffer_limit / 2) */
    uint64_t timeout_udp_ns;     /* idle timeout of a UDP flow (default 60 s, as Suricata's and Zeek's) */
};

/* When the handlers of an event run, hence from when what they do (stop monitoring, subscribe, change
 * a policy, drop) takes effect:
 * - CONNECTION: from the connection's next packet. Within a feed, a connection that queued an event
 *   has its later packets held back (others go on) until the events are handled (mos_engine_resume).
 * - BATCH: from the next feed (one crossing per batch, the connection's later packets of the batch
 *   are processed before its handlers run).
 * - PACKET: the feed stops after each packet that queued an event (global packet order). */
#define MOS_ORDERS(X) X(CONNECTION, "connection") X(BATCH, "batch") X(PACKET, "packet")
enum mos_order {
#define MOS_X_(id, name) MOS_ORDER_##id,
    MOS_ORDERS(MOS_X_)
#undef MOS_X_
    MOS_ORDER_COUNT
};
const char *mos_order_name(int i);

typedef struct mos_engine mos_engine_t;

void mos_config_default(struct mos_config *cfg);
/* Returns NULL on error with a message in err (errlen bytes). */
mos_engine_t *mos_engine_new(const struct mos_config *cfg, char *err, size_t errlen);
void mos_engine_free(mos_engine_t *e);

/* Subscriptions: events are queued only when some mask wants them (so most packets never reach
 * Python). mask[hook][side]; per-connection masks add to the global ones. */
void mos_engine_set_mask(mos_engine_t *e, int hook, int side, uint64_t mask);
/* A user event `id` raised when `base` is raised and the filter (NULL: none) holds. */
int mos_engine_define_event(mos_engine_t *e, int id, int base, const struct mos_filter *f);

/* Process up to n packets; stops early (returns fewer) when the event queue is nearly full or when a
 * packet's time reaches stop_ts_ns (0: never), so Python can run handlers and timers in order. */
uint32_t mos_engine_feed(mos_engine_t *e, int linktype, const struct mos_pkt *pkts, uint32_t n,
                         uint64_t stop_ts_ns);
/* Packet bytes inside [lo, hi) stay readable (a capture file mapped in memory): reassembly then holds
 * them by reference instead of copying them. Before that region goes away, call it again (NULL, NULL,
 * or the next region): bytes still held by reference are copied first. */
void mos_engine_set_stable(mos_engine_t *e, const void *lo, const void *hi);
/* Advance packet time without a packet (idle expiry). */
void mos_engine_advance(mos_engine_t *e, uint64_t now_ns);
/* End of input: flush and end every connection (reason EOF), raising their events. Call repeatedly
 * until it returns 0 (it stops when the queue fills). */
uint32_t mos_engine_finish(mos_engine_t *e);

/* Handlers are done (mos_engine_events_done), then, order CONNECTION, the next round: the packets held
 * back for their connection's handlers are processed in packet order, those whose connection queues
 * events again held back again; it stops early like mos_engine_feed when the queue fills. Returns the
 * events now queued (*evs as mos_engine_events), or -1 when no packet is held: the batch is done. A feed
 * must come only once none is held. One crossing per round. */
int64_t mos_engine_next(mos_engine_t *e, const struct mos_event **evs);

/* Queued events; valid until mos_engine_events_done. */
uint32_t mos_engine_events(mos_engine_t *e, const struct mos_event **evs);
/* Handlers are done: free ended connections, trim delivered bytes, clear the queue. */
void mos_engine_events_done(mos_engine_t *e);

const uint64_t *mos_engine_counters(const mos_engine_t *e);   /* MOS_C_COUNT values */
const uint64_t *mos_engine_reasm_counters(const mos_engine_t *e); /* mos_reasm_counter_count() values */
const uint64_t *mos_engine_frag_counters(const mos_engine_t *e);  /* mos_frag_counter_count() values */

/* Name tables, generated from the X-macro lists (userspace/abi.c): NULL past the end. */
const char *mos_counter_name(int i);        /* enum mos_counter */
const char *mos_reasm_counter_name(int i);  /* reassembly counters (userspace/reasm.h) */
int mos_reasm_counter_count(void);
const char *mos_frag_counter_name(int i);   /* defragmentation counters (userspace/defrag.h) */
int mos_frag_counter_count(void);
const char *mos_xsk_counter_name(int i);    /* enum mos_xsk_counter */
const char *mos_xdp_counter_name(int i);    /* enum mos_xdp_counter (bpf/mos_shared.h) */
int mos_xdp_counter_kind(int i);            /* its enum mos_xdp_counter_kind, -1 past the end */
const char *mos_xdp_counter_kind_name(int i); /* enum mos_xdp_counter_kind */
const char *mos_xdp_fail_mode_name(int i);  /* enum mos_xdp_fail_mode */
const char *mos_xdp_map_name(int i);        /* enum mos_xdp_map (bpf/mos_shared.h) */
const char *mos_policy_name(int i);         /* overlap policies, by engine number (userspace/reasm.h) */
const char *mos_frag_policy_name(int i);    /* fragment overlap policies, by number (userspace/defrag.h) */
uint64_t mos_engine_mem_used(const mos_engine_t *e);
uint64_t mos_engine_now(const mos_engine_t *e);
/* The peek window in effect: the configured one, at most half of dir_buffer_limit (0 without buffering). */
uint32_t mos_engine_peek_window(const mos_engine_t *e);
size_t mos_conn_size(void);
/* The name of an anomaly (enum mos_error_kind, an ERROR event's reason), NULL if none. */
const char *mos_anomaly_name(int kind);

/* Checksums, setting auto: packets examined, not processed, for the decision (the start of a capture
 * before it is run, so that no packet of the sample is judged before it); last: the input ends here.
 * Returns the packets examined (fewer than n once the decision is made). */
uint32_t mos_engine_checksum_sample(mos_engine_t *e, int linktype, const struct mos_pkt *pkts, uint32_t n,
                                    int last);
/* Frames are writable (a live run's UMEM) and may come from a local stack that offloads checksums (a veth):
 * a TCP/UDP checksum holding only the pseudo-header's sum is completed in the frame (checksum_completed)
 * instead of being judged wrong, so validation stays on and the forwarded frame is right. */
void mos_engine_checksum_complete(mos_engine_t *e, int on);
int mos_engine_checksum_state(const mos_engine_t *e); /* enum mos_checksum_state */
const char *mos_checksum_mode_name(int i);  /* enum mos_checksum_mode */

/* Connections. slot is the 1-based handle from events; id must match (else -1: ended and reused). */
int mos_conn_info(const mos_engine_t *e, uint32_t slot, uint64_t id, struct mos_conn_info *out);
/* Per-connection subscriptions: a connection's events are those of its subscription set `sub` (0: none
 * beyond the global masks), a set being masks [hook][side] shared by every connection that has the same
 * handlers (so a million connections with their own subscriptions cost 4 bytes each). A set's masks
 * may change for all of its connections at once. Returns 0, -1 (bad conn/set, out of memory). */
#define MOS_MAX_SUBS (1u << 20)
int mos_engine_set_sub_mask(mos_engine_t *e, uint32_t sub, int hook, int side, uint64_t mask);
int mos_conn_set_sub(mos_engine_t *e, uint32_t slot, uint64_t id, uint32_t sub);
/* The slots and ids of up to max connections not ended (NULL arrays: just the count). */
uint32_t mos_engine_live_conns(const mos_engine_t *e, uint32_t *slots, uint64_t *ids, uint32_t max);
int64_t mos_conn_get_sub(const mos_engine_t *e, uint32_t slot, uint64_t id); /* -1: bad conn */
/* mos_conn_set_sub for n connections at once (those gone since are skipped). */
void mos_engine_set_subs(mos_engine_t *e, uint32_t n, const uint32_t *slots, const uint64_t *ids,
                         const uint32_t *subs);
/* used[k] = 1 for every set k < n a connection (or a queued event) still refers to: the others may be
 * reused. */
void mos_engine_subs_in_use(const mos_engine_t *e, uint8_t *used, uint32_t n);
/* The connection's IP protocol (6 TCP, 17 UDP), -1: bad conn. */
int mos_conn_proto(const mos_engine_t *e, uint32_t slot, uint64_t id);
/* 1 while the connection is tracked or its CONN_END is being handled, else 0. */
int mos_conn_alive(const mos_engine_t *e, uint32_t slot, uint64_t id);
/* Hold bytes of side's receive stream for reassembly (on) or not, from its next packet. */
int mos_conn_set_buffering(mos_engine_t *e, uint32_t slot, uint64_t id, int side, int on);
/* Stop monitoring a side (bit 0 client, bit 1 server): its bytes are no longer held or delivered. */
int mos_conn_stop(mos_engine_t *e, uint32_t slot, uint64_t id, int side_mask);
/* The overlap policy of side's receive stream (side 2: both). */
int mos_conn_set_policy(mos_engine_t *e, uint32_t slot, uint64_t id, int side, int policy);
/* Copy held bytes of `side`'s receive stream at stream offset off; returns bytes copied (-1 bad conn). */
int64_t mos_conn_copy(const mos_engine_t *e, uint32_t slot, uint64_t id, int side, uint64_t off,
                      uint32_t len, uint8_t *dst);
/* Offsets/lengths of held out-of-order segments of `side`'s receive stream; returns the count. */
int64_t mos_conn_segments(const mos_engine_t *e, uint32_t slot, uint64_t id, int side, uint64_t *offs,
                          uint32_t *lens, uint32_t max);
/* Held bytes of `side`'s receive stream in [from, end), starting at the first held offset >= from
 * (gaps and bytes no longer held are skipped): copies up to cap bytes, sets *start to the offset of
 * the first byte copied, returns the count (0: nothing held there, -1: bad connection). */
int64_t mos_conn_peek(const mos_engine_t *e, uint32_t slot, uint64_t id, int side, uint64_t from,
                      uint64_t end, uint8_t *dst, uint32_t cap, uint64_t *start);
/* ---- injection (conn.send, conn.reset) ----
 * A TCP segment of connection (slot, id) towards endpoint to_side, as its peer would send it now: the
 * connection's addresses, ports and VLANs, seq = the peer's snd_nxt + seq_delta (the translation of the
 * peer's direction, see xsk.c), ack = to_side's snd_nxt (what the peer's stack has acknowledged as far
 * as the engine saw), window the peer's largest (0 for a RST), checksums set. macs: 12 bytes (destination,
 * source) of the Ethernet header, NULL for zeros. Returns the frame's length, -1 when the connection is
 * gone, ended or being reset, -2 when it does not fit in cap, -3 when the peer's sequence numbers are not
 * known (nothing seen from it). */
int64_t mos_conn_segment(const mos_engine_t *e, uint32_t slot, uint64_t id, int to_side, uint8_t tcp_flags,
                         const uint8_t *payload, uint32_t len, const uint8_t *macs, uint32_t seq_delta,
                         uint8_t *out, uint32_t cap);
/* The next sequence number `side` sends (its snd_nxt as the engine saw it), -1 when unknown or gone. */
int64_t mos_conn_snd_nxt(const mos_engine_t *e, uint32_t slot, uint64_t id, int side);
/* The app reset the connection (its RSTs are sent): it ends with reason RST (CONN_END) once the events
 * being handled are done -- a CONN_END raised amid them would be cleared unhandled. Counted in conns_reset.
 * Returns 0, -1 when it is gone, ended or already being reset. */
int mos_conn_reset(mos_engine_t *e, uint32_t slot, uint64_t id);
/* ---- aliases (userspace/flow_alias.h): what a NAT needs ----
 * Packets between endpoint `side`'s stand-in -- addr (16 bytes, IPv4 in the first 4) and port (host
 * order) -- and the other endpoint are the connection's too, as if they carried its own key: a NAT's
 * translated side. One alias per connection (a new one replaces it); the newest claim on an alias key
 * wins; it goes with the connection. Returns 0, -1 when the connection is gone or ended, -2 when memory
 * is short, -3 when it is the connection's own key, -4 for a bad side. Packets that carried it are
 * counted in alias_packets. */
int mos_conn_alias(mos_engine_t *e, uint32_t slot, uint64_t id, int side, const uint8_t *addr, uint16_t port);
/* The same, and inline the connection's frames are rewritten (userspace/translate.h): those `side` sends
 * leave from addr:port, those to it go back to its own address, port and MAC. Packet `pkt` of the current
 * batch (the one being handled; UINT32_MAX: none), if it is the connection's, is rewritten now (it went
 * through the engine before) and tells the side's MAC. Returns as mos_conn_alias. */
int mos_conn_translate(mos_engine_t *e, uint32_t slot, uint64_t id, int side, const uint8_t *addr, uint16_t port,
                       uint32_t pkt);
/* The connection's alias: the side it stands in for (addr and port set), or -1 when it has none. */
int mos_conn_get_alias(const mos_engine_t *e, uint32_t slot, uint64_t id, uint8_t *addr, uint16_t *port);
/* A frame was sent (or recorded) by the app: injected_packets and injected_bytes. */
void mos_engine_injected(mos_engine_t *e, uint32_t bytes);

/* The raw bytes of packet `pkt` of the current batch (caplen bytes), or NULL. */
const uint8_t *mos_pkt_raw(const mos_engine_t *e, uint32_t pkt);
/* The decoded headers of packet `pkt` of the current batch. */
int mos_pkt_view(const mos_engine_t *e, uint32_t pkt, struct mos_pkt_view *out);
/* Keep the final info (as of its CONN_END) of every connection whose id is 1..max_id, without any
 * handler: a summary costs no crossing per connection. 0 turns it off. Returns 0, or -1 (no memory, or
 * max_id above MOS_ENDED_LOG_MAX). */
#define MOS_ENDED_LOG_MAX 16777216
int mos_engine_log_ended(mos_engine_t *e, uint64_t max_id);
/* The records, indexed by id - 1 (*n of them); a record whose id is 0 has not ended yet. */
const struct mos_conn_info *mos_engine_ended_log(const mos_engine_t *e, uint64_t *n);

/* Stream files: when set, delivered bytes of every connection are appended to DIR/<id>.c2s and
 * DIR/<id>.s2c in C (no Python per event). Returns 0 or -1 (errno). */
int mos_engine_stream_dir(mos_engine_t *e, const char *dir, uint32_t max_open_files);

/* pcap/pcapng input through libpcap. Packets of a batch stay valid until the next batch. */
typedef struct mos_pcap mos_pcap_t;
mos_pcap_t *mos_pcap_open(const char *path, char *err, size_t errlen);
int mos_pcap_linktype(const mos_pcap_t *p);
/* Fills up to n packets; returns the count, 0 at the end, -1 on a read error (message in err). */
int mos_pcap_next_batch(mos_pcap_t *p, struct mos_pkt *pkts, uint32_t n, char *err, size_t errlen);
int64_t mos_pcap_file_size(const mos_pcap_t *p);
int64_t mos_pcap_file_pos(const mos_pcap_t *p);
/* The range every packet of this source points into for as long as it is open (the mapped file), or
 * 0 when packets are copies valid for one batch only. */
int mos_pcap_stable_region(const mos_pcap_t *p, const void **lo, const void **hi);
void mos_pcap_close(mos_pcap_t *p);

#include "monitor_filter.h"

/* ---- AF_XDP live input (userspace/xsk.c) ---------------------------------------------------------
 * One UMEM for the whole run; per (slot, queue) -- slot 0 the interface, slot 1 the inline peer -- a
 * fill and a completion ring; per worker one socket per (slot, queue). Sockets are created with libxdp
 * (program loading inhibited: the caller puts mos_xsk_fd() into the XDP program's XSKMAP at
 * mos_xsk_index(slot, queue, worker)). Workers may be processes forked after mos_xsk_open: each calls
 * mos_xsk_set_worker once, then loops mos_xsk_rx / (engine + handlers) / mos_xsk_done. */
enum mos_xsk_flags { MOS_XSK_COPY = 1, MOS_XSK_ZEROCOPY = 2, MOS_XSK_BUSY_POLL = 4 };

/* What becomes of a received frame once its batch is handled (inline mode; passive frames are
 * always recycled). */
enum mos_verdict { MOS_VERDICT_FORWARD = 0, MOS_VERDICT_DROP = 1 };

/* Counters of the AF_XDP source, per worker; k_* are the kernel's (XDP_STATISTICS). */
#define MOS_XSK_COUNTERS(X)                                                                                 \
    X(RX_PACKETS, rx_packets) X(RX_BYTES, rx_bytes) X(TX_PACKETS, tx_packets) X(TX_BYTES, tx_bytes)     \
    X(VERDICT_DROP, verdict_drop) X(TX_RING_FULL, tx_ring_full) X(REWRITES, rewrites) X(POLLS, polls)   \
    X(KICKS, kicks) X(K_RX_DROPPED, k_rx_dropped) X(K_RX_INVALID_DESCS, k_rx_invalid_descs)             \
    X(K_TX_INVALID_DESCS, k_tx_invalid_descs) X(K_RX_RING_FULL, k_rx_ring_full)                         \
    X(K_RX_FILL_RING_EMPTY_DESCS, k_rx_fill_ring_empty_descs)                                           \
    X(K_TX_RING_EMPTY_DESCS, k_tx_ring_empty_descs)                                                   \
    X(MALFORMED_DROP, malformed_drop) /* inline: frames the engine found malformed, dropped (also in verdict_drop) */\
    X(UNTRANSLATED_DROP, untranslated_drop) /* inline: stragglers of an ended aliased connection, dropped (also in verdict_drop) */\
    X(INJECTED, injected)             /* frames the app sent (mos_xsk_send): not in the rx/tx balance */     \
    X(INJECT_FAILED, inject_failed)   /* ... that found no free frame or no room in the TX ring */            \
    X(XLAT_FRAMES, xlat_frames)       /* frames whose seq/ack (SACK) numbers were translated */               \
    X(XLAT_REPLAYED, xlat_replayed)   /* retransmissions of a resized segment, rewritten alike */             \
    X(XLAT_UNREPLAYED, xlat_unreplayed) /* ... that overlapped it otherwise: forwarded as they were */

enum mos_xsk_counter {
#define MOS_X_(id, name) MOS_XSK_C_##id,
    MOS_XSK_COUNTERS(MOS_X_)
#undef MOS_X_
    MOS_XSK_C_COUNT
};

struct mos_xsk_info {
    uint8_t zerocopy;      /* 1: zero-copy binding, 0: copy mode */
    uint8_t busy_poll;     /* busy-polling socket options accepted */
    uint8_t inline_mode;
    uint8_t pad;
    uint32_t workers, pools, frames, frame_size;
    uint64_t umem_bytes;
};

typedef struct mos_xsk mos_xsk_t;

/* peer NULL: passive. flags: enum mos_xsk_flags (neither COPY nor ZEROCOPY: zero-copy when the
 * drivers support it, else copy). NULL on error with one line in err. */
/* ring: RX (and TX) descriptors per socket, a power of two in 64..65536, 0 for the default; each pool
 * (interface queue) gets 2 x ring frames of 4 KiB (ring, or ring / 2, beyond 4 or 16 pools). */
#define MOS_XSK_RING_DEFAULT 4096
mos_xsk_t *mos_xsk_open(const char *iface, uint32_t iface_queues, const char *peer, uint32_t peer_queues,
                        uint32_t workers, uint32_t ring, uint32_t flags, char *err, size_t errlen);
void mos_xsk_close(mos_xsk_t *x);
int mos_xsk_info(const mos_xsk_t *x, struct mos_xsk_info *out);
/* Frames the kernel put in the RX rings that no worker took (yet): at the end of a run, after the sockets
 * left the XSKMAP, those are the frames the run lost unread. */
uint64_t mos_xsk_rx_pending(const mos_xsk_t *x);
/* The socket of (slot, queue, worker), or -1. */
int mos_xsk_fd(const mos_xsk_t *x, uint32_t slot, uint32_t queue, uint32_t worker);
int mos_xsk_set_worker(mos_xsk_t *x, uint32_t worker);
/* RX queues the driver has in use on ifname (ETHTOOL_GCHANNELS: rx + combined), 0 if it does not say;
 * an AF_XDP socket can bind only to those, whatever number of queues the device allocated. */
uint32_t mos_xsk_channels_in_use(const char *ifname);
/* Up to max received packets (pointing into the UMEM, valid until mos_xsk_done); waits up to
 * timeout_ms when none is ready. Returns the count, -1 on error (errno). Finishes a pending batch. */
int mos_xsk_rx(mos_xsk_t *x, struct mos_pkt *pkts, uint32_t max, int timeout_ms);
/* The batch is handled: apply verdicts (forward / drop), recycle frames. Returns frames sent. */
uint32_t mos_xsk_done(mos_xsk_t *x);
/* The hot loop in C: receive, feed the engine, and as long as no event needs Python, hand the frames
 * back and receive again, for up to budget_ns. Returns the count of the last batch's packets (in pkts,
 * pending as after mos_xsk_rx) with *fed of them already fed to the engine, when Python has work
 * (events queued, or the engine stopped early: stop_ts reached, queue full); 0 when nothing arrived
 * within timeout_ms or the budget ran out; -1 on error (errno). */
int mos_xsk_pump(mos_xsk_t *x, mos_engine_t *e, struct mos_pkt *pkts, uint32_t max, int timeout_ms,
                 uint64_t stop_ts_ns, uint64_t budget_ns, uint32_t *fed);
/* Per-packet verdicts and rewriting; pkt is the engine's index of a packet of the current batch. */
int mos_xsk_verdict(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, int verdict);
/* Inline: frames the engine counts as malformed (malformed_*) are dropped (counted in malformed_drop and
 * verdict_drop), unless this is set to 1: then they are forwarded like any frame (fail-open). A handler's
 * mos_xsk_verdict on such a frame still decides last. */
void mos_xsk_set_forward_malformed(mos_xsk_t *x, int forward);
/* Drops pkt and every packet of the same connection in the current batch. */
int mos_xsk_drop_flow(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt);
/* Writes len bytes at offset (from the link-layer header) of packet pkt, sets its length to new_len
 * when not 0, and fixes the IPv4 header and TCP/UDP checksums. Returns the packet's length, -1 when
 * pkt is not in the UMEM, -2 when it does not fit in the frame. */
int64_t mos_xsk_rewrite(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, uint32_t offset,
                        const uint8_t *bytes, uint32_t len, uint32_t new_len);
/* Offset of a layer (0 link, 1 IP, 2 TCP/UDP header, 3 payload) in packet pkt, or -1. */
int64_t mos_xsk_header_offset(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, int layer);
/* ---- what the app sends, and the sequence translation of length-changing rewrites ----
 * mos_xsk_send: a raw frame out of slot's interface (0 the monitored one, 1 the inline peer), through a
 * frame of this worker's reserve; during a batch it leaves after the batch's forwarded frames (so after
 * the packet being handled), otherwise at once. Returns 0, -2 for a bad slot or length, -4 when no frame
 * or TX descriptor is free (inject_failed).
 *
 * Sequence translation (inline), per connection and direction, as a NAT ALG keeps it: bytes the app
 * inserted or removed (a resizing rewrite, or a payload it sent) shift the sender's sequence numbers from
 * that point on when frames are forwarded, and the receiver's acknowledgements (SACK blocks too) back
 * when frames arrive -- before the engine, which so sees every stream as its sender sent it. A
 * retransmission of a resized segment is rewritten alike. */
int mos_xsk_send(mos_xsk_t *x, uint32_t slot, const uint8_t *frame, uint32_t len);
/* A segment of connection (slot, id) to endpoint to_side (mos_conn_segment), out of the interface that
 * endpoint is behind, with the MACs of the connection's frames; pkt (the packet being handled, or
 * UINT32_MAX) is where those are learnt when it is one of the connection's. Inline, the bytes it carries
 * (payload, SYN, FIN) shift its sender's direction. Returns the frame's length, or mos_conn_segment's
 * errors, -4 (mos_xsk_send), -5 when no frame of the connection was seen to learn the link layer from.
 * The table of such connections (XSK_XLAT per worker) forgets the least recently used when full. */
int64_t mos_xsk_inject(mos_xsk_t *x, mos_engine_t *e, uint32_t pkt, uint32_t slot, uint64_t id, int to_side,
                       uint8_t tcp_flags, const uint8_t *payload, uint32_t len);
/* The frames of connection (slot, id) in the current batch after packet pkt (all of them for UINT32_MAX)
 * are dropped: what its tracker had not taken when the app reset it. */
int mos_xsk_drop_after(mos_xsk_t *x, const mos_engine_t *e, uint32_t pkt, uint32_t slot, uint64_t id);

/* Counters of a worker (MOS_XSK_C_COUNT values, shared between the processes of a run). */
const uint64_t *mos_xsk_counters(const mos_xsk_t *x, uint32_t worker);

#endif
