/* Monitor filters in tcpdump syntax (mOS's mtcp_bind_monitor_filter), compiled with libpcap.
 *
 * As mOS applies its stream filter, the expression judges the first packet of a flow (the one that would
 * create a connection) and each orphan, never a packet of a connection being monitored: both directions
 * of a flow whose first packet matches are monitored. A flow whose first packet does not match is
 * remembered (a small entry of its own table, ended by idle time as connections are), so that its later
 * packets are counted (filtered_out) without being judged again and raise nothing. A SYN without ACK on
 * a remembered flow is a new attempt: it is judged again.
 *
 * Included at the end of mos_engine.h: the part before MOS_CDEF is the cffi-visible API. */
#ifndef MOS_MONITOR_FILTER_H
#define MOS_MONITOR_FILTER_H

#include "mos_engine.h"

/* A compiled expression on its own (tests, the push-down analyser's checks). NULL on error, with
 * libpcap's message (pcap_geterr) in err. linktype: a DLT_* of enum mos_linktype. */
typedef struct mos_bpf mos_bpf_t;
mos_bpf_t *mos_bpf_compile(const char *expr, int linktype, char *err, size_t errlen);
/* 1 when the packet (from its link-layer header) matches, else 0. */
int mos_bpf_match(const mos_bpf_t *f, const uint8_t *data, uint32_t caplen, uint32_t wirelen);
void mos_bpf_free(mos_bpf_t *f);

/* The engine's monitor filter (NULL or "": none), compiled for packets of `linktype`; the flows it
 * remembered are forgotten. Returns 0, or -1 with libpcap's message in err (the filter is unchanged).
 * A feed of another link type compiles it again for that type (a failure there lets every packet
 * through: check first with this call). */
int mos_engine_set_filter(mos_engine_t *e, const char *expr, int linktype, char *err, size_t errlen);
/* Flows remembered as filtered out now, and the bytes their table takes. */
uint64_t mos_engine_filtered_flows(const mos_engine_t *e);
uint64_t mos_engine_filter_mem(const mos_engine_t *e);
size_t mos_filter_entry_size(void);

#ifndef MOS_CDEF
struct pkt_info;
/* The engine's hook, where a packet would create a flow (flow = 1) or be an orphan (flow = 0): 1 when
 * the filter leaves it out (then it is accounted as filtered_out and must raise nothing), else 0. */
int monitor_filter_skip(mos_engine_t *e, const struct mos_pkt *p, const struct pkt_info *pi, int flow);
void monitor_filter_free(mos_engine_t *e);
#endif

#endif
