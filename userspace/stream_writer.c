#define _GNU_SOURCE
#include "stream_writer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct stream_file {
    uint64_t id;
    int dir;
    FILE *f;
};

void stream_writer_append(struct stream_writer *w, uint64_t id, int dir, const uint8_t *data, uint32_t len)
{
    /* Direct-mapped: a connection's two files take two slots, and a busy capture with many connections
     * closes and reopens files rather than running out of descriptors. */
    uint32_t h = (uint32_t)((id * 2 + (uint64_t)dir) % w->nfiles);
    struct stream_file *fs = &w->files[h];
    if (!fs->f || fs->id != id || fs->dir != dir) {
        if (fs->f)
            fclose(fs->f);
        char path[4096];
        snprintf(path, sizeof(path), "%s/%llu.%s", w->dir, (unsigned long long)id, dir == 0 ? "c2s" : "s2c");
        fs->f = fopen(path, "ab");
        fs->id = id;
        fs->dir = dir;
        if (!fs->f)
            return;
    }
    fwrite(data, 1, len, fs->f);
}

void stream_writer_flush(struct stream_writer *w)
{
    for (uint32_t i = 0; w->files && i < w->nfiles; i++)
        if (w->files[i].f) {
            fclose(w->files[i].f);
            w->files[i].f = NULL;
        }
}

int stream_writer_open(struct stream_writer *w, const char *dir, uint32_t max_open_files)
{
    stream_writer_flush(w);
    free(w->files);
    free(w->dir);
    w->files = NULL;
    w->dir = NULL;
    if (!dir)
        return 0;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    w->nfiles = max_open_files ? max_open_files : 64;
    w->files = calloc(w->nfiles, sizeof(*w->files));
    w->dir = strdup(dir);
    if (!w->files || !w->dir) {
        free(w->files);
        free(w->dir);
        w->files = NULL;
        w->dir = NULL;
        errno = ENOMEM;
        return -1;
    }
    return 0;
}
