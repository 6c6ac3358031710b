/* struct mos_engine: the state the engine's parts share (flow table, event queue, reassembly,
 * defragmentation, stream files) and the packet being processed. Internal: Python sees only the opaque
 * mos_engine_t of mos_engine.h. */
#ifndef MOS_ENGINE_STATE_H
#define MOS_ENGINE_STATE_H

#include "checksum.h"
#include "decode.h"
#include "defrag.h"
#include "event_queue.h"
#include "flow_alias.h"
#include "flow_table.h"
#include "mos_engine.h"
#include "reasm.h"
#include "stream_writer.h"

/* Order CONNECTION: the packets of one connection held back for its handlers, in packet order (a chain
 * through struct held_pkt). */
struct held_queue {
    uint32_t slot;
    uint64_t id;              /* the connection's: a slot reused since holds nothing */
    uint32_t head, tail;      /* indexes in held[]; NO_HELD: none */
};
/* A datagram reassembled from IP fragments, held back with the packet of its last fragment: a copy, since
 * the fragments are consumed (data NULL: none). */
struct held_dg {
    uint8_t *data;
    uint32_t len;
    uint16_t vlan[MOS_MAX_VLAN];
    uint8_t nvlan;
};
struct held_pkt {
    uint32_t pkt;             /* index in the batch */
    uint32_t next;            /* the connection's next held packet, NO_HELD: none */
    struct held_dg dg;
};
#define NO_HELD UINT32_MAX

struct mos_engine {
    struct mos_config cfg;
    struct flow_table ft;
    struct event_queue evq;
    struct reasm_ctx rctx;
    defrag_t *defrag;
    struct stream_writer streams;
    struct mos_conn_info *ended_log; /* final info of connections 1..ended_log_n (mos_engine_log_ended) */
    uint64_t ended_log_n;
    uint64_t now;
    uint64_t last_expire;
    /* the current batch and packet: what events are stamped with */
    const struct mos_pkt *batch;
    uint32_t batch_n;
    int linktype;
    uint32_t cur_pkt;
    uint8_t cur_flags;
    uint8_t no_account;       /* a reassembled datagram: its fragments were accounted for */
    const struct pkt_info *cur_pi;
    /* order CONNECTION: packets held back for their connection's handlers (mos_engine_resume): one queue
     * per connection, the queues in the order of their first packet */
    struct held_pkt *held;
    uint32_t nheld_slots, held_cap; /* entries of held[] used in this batch */
    struct held_queue *hq;
    uint32_t nhq, hq_cap;
    uint32_t nheld;           /* packets still held */
    struct conn *holder;      /* the connection of the packet process_packet just held back ... */
    struct held_dg holder_dg; /* ... and its datagram, when it completed one */
    uint8_t hold_off;         /* process the packet now even so (no memory to hold it) */
    uint64_t counters[MOS_C_COUNT];
    struct monitor_filter *filter; /* the monitor filter, NULL: none (monitor_filter.c) */
    struct csum_state csum;   /* the checksum setting's auto decision (checksum.c) */
    /* Told of each packet an inline run must not forward, when set, with why (an enum mos_xsk_counter):
     * MALFORMED_DROP, what the engine could not read (malformed, a checksum a host rejects), or
     * UNTRANSLATED_DROP, a straggler of an ended connection that had an alias, whose translation ended
     * with it. The AF_XDP source (userspace/xsk.c) sets it for the time of one batch, from mos_xsk_pump
     * to mos_xsk_done. */
    void (*drop_sink)(void *arg, const struct mos_pkt *p, int why);
    void *drop_arg;
    uint8_t forwarding;       /* ... and the batch's frames are writable and forwarded (inline): translate.h */
};

/* The owner reassembly hands back to the callbacks: the connection and the side whose receive stream it
 * is (a stack object: reassembly only passes it through). */
struct owner {
    struct conn *c;
    int side;
};

/* Every captured packet lands in exactly one disposition counter. */
static inline void account(mos_engine_t *e, int counter)
{
    if (!e->no_account)
        e->counters[counter]++;
}

/* Ends a connection: what is held is delivered (holes become gaps), CONN_END is raised, the slot is
 * freed once the events are handled (after lingering, for a close: see engine.c). */
void engine_end_conn(mos_engine_t *e, struct conn *c, int reason, int side);

#endif
