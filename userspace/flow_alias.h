/* A connection's second name: the key its packets carry on the far side of an address translation.
 *
 * A NAT (apps/nat.py) rewrites the client's address and port on the way out, so the server answers a
 * key the table does not hold. An alias tells the engine that packets between the translated endpoint
 * and the other one are the connection's own: they are looked up as if they carried its key, and the
 * tracker, reassembly and events see one connection with both directions, as the client host does.
 *
 * One alias per connection (a second replaces the first), one connection per alias key (the newer
 * claim wins: a NAT reuses a port once the connection that had it ended). Aliases live in their own
 * chained hash, made on the first alias, so that a table without any pays one branch per packet. An
 * alias goes with its connection's hash entry (ft_hash_remove). */
#ifndef MOS_FLOW_ALIAS_H
#define MOS_FLOW_ALIAS_H

#include "flow_table.h"

struct ft_alias {
    struct ft_alias *next;      /* chain of its key's bucket */
    struct ft_alias *next_slot; /* chain of its slot's bucket */
    uint32_t slot;
    uint8_t side;               /* the endpoint (MOS_SIDE_*) it renames */
    uint8_t translate;          /* inline, the frames are rewritten to it and back (translate.h) */
    uint8_t mac_known;
    uint8_t mac[6];             /* the endpoint's own MAC, learnt from its frames: the replies' destination */
    struct flow_key key;        /* the connection's key with that endpoint's address and port replaced */
};

/* Connection c is also keyed with endpoint side's address (16 bytes, IPv4 in the first 4) and port (host
 * order) replaced. 0, -1 when memory is short, -2 when the alias is the connection's own key. */
int fa_set(struct flow_table *ft, struct conn *c, int side, const uint8_t *addr, uint16_t port);
/* c's alias, NULL: none. */
const struct ft_alias *fa_get(const struct flow_table *ft, const struct conn *c);
/* c's alias is dropped (nothing if it has none). */
void fa_remove(struct flow_table *ft, struct conn *c);
/* Frees every alias and the alias hash. */
void fa_free(struct flow_table *ft);

int fa_resolve_slow(const struct flow_table *ft, struct pkt_info *pi);
/* A decoded TCP or UDP packet that carries an alias key: its addresses and ports are made the
 * connection's own (the wire's kept in pi->wire), so every lookup after finds the connection. 1 when it
 * did. Inline: it runs for every packet, and costs a branch while no alias exists. */
static inline int fa_resolve(const struct flow_table *ft, struct pkt_info *pi)
{
    return ft->naliases ? fa_resolve_slow(ft, pi) : 0;
}

#endif
