/* Stream files (mos-xdp streams -o): the bytes each connection delivers, appended in C to
 * DIR/<id>.c2s and DIR/<id>.s2c so that no Python runs per event. */
#ifndef MOS_STREAM_WRITER_H
#define MOS_STREAM_WRITER_H

#include <stdint.h>
#include <stdio.h>

struct stream_file;

struct stream_writer {
    char *dir;                  /* NULL: off */
    struct stream_file *files;  /* open files, a small cache keyed by (connection, direction) */
    uint32_t nfiles;
};

/* Writes into dir from now on (NULL: stop), with at most max_open_files open at once (0: 64).
 * Returns 0, or -1 with errno (ENOTDIR: not a directory, ENOMEM). */
int stream_writer_open(struct stream_writer *w, const char *dir, uint32_t max_open_files);
/* Appends len bytes to the file of connection id, direction dir (0 client to server, 1 back). A file
 * that cannot be opened loses the bytes: the analysis goes on (as tcpflow does). */
void stream_writer_append(struct stream_writer *w, uint64_t id, int dir, const uint8_t *data, uint32_t len);
/* Closes the open files (the next append reopens, appending). */
void stream_writer_flush(struct stream_writer *w);

#endif
