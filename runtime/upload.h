/* rt_upload: move host bytes (a shard's read-only mapping, or the file behind it) into
 * device memory at near host-to-device bandwidth without pinning the whole shard.
 *
 * Methods:
 *  - RT_UP_PINNED: four pinned staging buffers of `chunk` bytes in a ring: the host
 *    threads copy chunk i from the mapping (page cache) into one buffer while the DMA
 *    engine moves the earlier chunks from the others;
 *  - RT_UP_PREAD: the same staging, filled by parallel pread() of `path` at
 *    `file_off` (the bytes the mapping shows): the kernel copies from the page cache
 *    (or reads the disk) without populating the mapping's page tables. Not faster
 *    than RT_UP_PINNED on the GPU machines measured (bench-load up_pread);
 *  - RT_UP_REGISTER: page-lock a window of the mapping itself (cudaHostRegister,
 *    read-only) chunk by chunk, at most two chunks at a time, and DMA straight from it.
 * At most 4 x chunk bytes are pinned at once (256 MiB by default).
 *
 * Lifetimes: nothing is kept after the call; dev must hold len bytes.
 */
#ifndef DSR1_RT_UPLOAD_H
#define DSR1_RT_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef enum { RT_UP_PINNED = 0, RT_UP_REGISTER = 1, RT_UP_PREAD = 2 } rt_up_method;

typedef struct rt_upload_opts {
    rt_up_method method;
    size_t chunk;        /* bytes per chunk; 0: 64 MiB */
    int threads;         /* host copy threads (PINNED); 0: up to 16 */
    void *stream;        /* cudaStream_t; NULL: a private stream */
    const char *path;    /* PREAD: the file whose bytes [file_off, file_off + len) to upload */
    uint64_t file_off;
} rt_upload_opts;

typedef struct rt_upload_stats {
    uint64_t bytes;
    double seconds;      /* wall time of the whole call, synchronized */
} rt_upload_stats;

void rt_upload_opts_init(rt_upload_opts *o);
/* Copy len bytes from host to device memory dev; returns when the copy is complete. */
int rt_upload(void *dev, const void *host, uint64_t len, const rt_upload_opts *o,
              rt_upload_stats *st, dsr1_err *err);

#endif
