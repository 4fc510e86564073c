/* rt_upload: move host bytes (a shard's read-only mapping, or the file behind it) into
 * device memory at near host-to-device bandwidth without pinning the whole shard.
 *
 * Methods:
 *  - RT_UP_PINNED: staged through pinned memory, one pipeline per host thread: each
 *    of `threads` threads owns two pinned pieces of `chunk` bytes and a stream, takes
 *    the next piece of the mapping, copies it (page cache -> pinned) and queues its
 *    DMA, with no barrier between threads;
 *  - RT_UP_PREAD: the same pipelines, filled by pread() of `path` at `file_off` (the
 *    bytes the mapping shows): no page-table population at all;
 *  - RT_UP_REGISTER: the same pipelines, but a slot is a page-locked window of the
 *    mapping itself (cudaHostRegister, read-only) that the DMA reads directly: no host
 *    copy. Measured 10 GB/s whatever the thread count: the driver serializes
 *    the registrations.
 * 2 x threads x chunk bytes are pinned at once: the default chunk is 2 MiB (64 MiB
 * with 16 threads; small pieces measured fastest, see upload.cu), REGISTER 16 MiB.
 * The staged methods order after the work already queued on `stream` (NULL: the
 * legacy default stream) and use their own streams.
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
    size_t chunk;        /* bytes per piece; 0: see above */
    int threads;         /* host threads; 0: the cores, at most 16 */
    int hash_threads;    /* not the upload's: cm_load's full-hash threads when it verifies
                            alongside (runtime/cores.h); 0: its single-rank default */
    void *stream;        /* cudaStream_t: start after its queued work; NULL: legacy stream */
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
