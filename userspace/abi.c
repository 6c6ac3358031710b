/* The name tables of the ABI, generated from the X-macro lists that also give the enums (mos_engine.h,
 * reasm.h, defrag.h, bpf/mos_shared.h): Python builds its counter and map names from these, so a name is
 * written once. */
#include "defrag.h"
#include "mos_engine.h"
#include "reasm.h"

#define NAME_(id, name) #name,

static const char *const engine_names[] = {MOS_ENGINE_COUNTERS(NAME_)};
static const char *const reasm_names[] = {REASM_COUNTERS(NAME_)};
static const char *const frag_names[] = {DEFRAG_COUNTERS(NAME_)};
static const char *const xsk_names[] = {MOS_XSK_COUNTERS(NAME_)};
#define NAME3_(id, name, kind) #name,
#define KIND3_(id, name, kind) MOS_XDP_KIND_##kind,
static const char *const xdp_names[] = {MOS_XDP_COUNTERS(NAME3_)};
static const int xdp_kinds[] = {MOS_XDP_COUNTERS(KIND3_)};
static const char *const xdp_kind_names[] = {MOS_XDP_COUNTER_KINDS(NAME_)};
static const char *const xdp_fail_names[] = {MOS_XDP_FAIL_MODES(NAME_)};
static const char *const map_names[] = {MOS_XDP_MAPS(NAME_)};
#define STRING_(id, name) name,
static const char *const policy_names[] = {REASM_POLICIES(STRING_)};
static const char *const frag_policy_names[] = {DEFRAG_POLICIES(STRING_)};
static const char *const checksum_names[] = {MOS_CHECKSUM_MODES(STRING_)};
static const char *const order_names[] = {MOS_ORDERS(STRING_)};

#define COUNT_(a) ((int)(sizeof(a) / sizeof((a)[0])))

_Static_assert(COUNT_(engine_names) == MOS_C_COUNT, "engine counter names");
_Static_assert(COUNT_(reasm_names) == REASM_C_COUNT, "reassembly counter names");
_Static_assert(COUNT_(frag_names) == DEFRAG_C_COUNT, "defragmentation counter names");
_Static_assert(COUNT_(xsk_names) == MOS_XSK_C_COUNT, "AF_XDP counter names");
_Static_assert(COUNT_(xdp_names) == MOS_XDP_C_COUNT, "XDP counter names");
_Static_assert(COUNT_(xdp_kind_names) == MOS_XDP_KIND_COUNT, "XDP counter kind names");
_Static_assert(COUNT_(xdp_fail_names) == MOS_XDP_FAIL_COUNT, "XDP failure mode names");
_Static_assert(COUNT_(map_names) == MOS_XDP_MAP_COUNT, "XDP map names");
_Static_assert(COUNT_(policy_names) == REASM_POLICY_COUNT, "overlap policy names");
_Static_assert(COUNT_(frag_policy_names) == DEFRAG_POLICY_COUNT, "fragment overlap policy names");
_Static_assert(COUNT_(checksum_names) == MOS_CSUM_MODE_COUNT, "checksum setting names");
_Static_assert(COUNT_(order_names) == MOS_ORDER_COUNT, "handler order names");

static const char *pick(const char *const *names, int n, int i) { return i >= 0 && i < n ? names[i] : NULL; }

const char *mos_counter_name(int i) { return pick(engine_names, COUNT_(engine_names), i); }
const char *mos_reasm_counter_name(int i) { return pick(reasm_names, COUNT_(reasm_names), i); }
int mos_reasm_counter_count(void) { return REASM_C_COUNT; }
const char *mos_frag_counter_name(int i) { return pick(frag_names, COUNT_(frag_names), i); }
int mos_frag_counter_count(void) { return DEFRAG_C_COUNT; }
const char *mos_xsk_counter_name(int i) { return pick(xsk_names, COUNT_(xsk_names), i); }
const char *mos_xdp_counter_name(int i) { return pick(xdp_names, COUNT_(xdp_names), i); }
int mos_xdp_counter_kind(int i) { return i >= 0 && i < COUNT_(xdp_kinds) ? xdp_kinds[i] : -1; }
const char *mos_xdp_counter_kind_name(int i) { return pick(xdp_kind_names, COUNT_(xdp_kind_names), i); }
const char *mos_xdp_fail_mode_name(int i) { return pick(xdp_fail_names, COUNT_(xdp_fail_names), i); }
const char *mos_xdp_map_name(int i) { return pick(map_names, COUNT_(map_names), i); }
const char *mos_policy_name(int i) { return pick(policy_names, COUNT_(policy_names), i); }
const char *mos_frag_policy_name(int i) { return pick(frag_policy_names, COUNT_(frag_policy_names), i); }
const char *mos_checksum_mode_name(int i) { return pick(checksum_names, COUNT_(checksum_names), i); }
const char *mos_order_name(int i) { return pick(order_names, COUNT_(order_names), i); }
