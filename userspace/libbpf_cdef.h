/* The part of libbpf that Python uses for XDP control (pinned objects, map elements, program info and
 * test runs), declared for cffi's cdef; build_engine.py appends it verbatim after the engine's API. The
 * "...;" entries let cffi take the rest of each struct, and the values of each enum, from libbpf's own
 * headers (and the kernel's linux/bpf.h, which they include). */

enum xdp_action { XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT, ... };
#define BPF_F_TEST_XDP_LIVE_FRAMES ...
enum bpf_map_type { BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH, ... };

int bpf_obj_get(const char *pathname);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
struct bpf_map_batch_opts {
    size_t sz;
    uint64_t elem_flags;
    uint64_t flags;
    ...;
};
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values, uint32_t *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_prog_get_fd_by_id(uint32_t id);
int bpf_map_get_fd_by_id(uint32_t id);
int libbpf_num_possible_cpus(void);

struct bpf_map_info {
    uint32_t type;
    uint32_t id;
    uint32_t key_size;
    uint32_t value_size;
    uint32_t max_entries;
    uint32_t map_flags;
    char name[16];
    ...;
};
struct bpf_prog_info {
    uint32_t type;
    uint32_t id;
    char name[16];
    uint64_t run_time_ns;
    uint64_t run_cnt;
    ...;
};
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);

struct bpf_test_run_opts {
    size_t sz;
    const void *data_in;
    void *data_out;
    uint32_t data_size_in;
    uint32_t data_size_out;
    uint32_t retval;
    int repeat;
    uint32_t duration;
    uint32_t flags;
    uint32_t cpu;
    uint32_t batch_size;
    ...;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);
