/* rt_upload: chunked, double-buffered host-to-device copies (see upload.h). */
#include <algorithm>
#include <cuda_runtime.h>
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

extern "C" {
#include "upload.h"
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cuda_fail(dsr1_err *err, cudaError_t e, const char *what)
{
    return dsr1_err_set(err, DSR1_E_IO, 0, 0, "upload: %s: %s", what, cudaGetErrorString(e));
}

void rt_upload_opts_init(rt_upload_opts *o)
{
    memset(o, 0, sizeof *o);
    o->method = RT_UP_PINNED;
}

/* pread exactly n bytes at file offset off into dst; 0, or an errno (EIO: the file
 * ended early). */
static int read_full(int fd, void *dst, uint64_t off, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)dst + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? errno : EIO;
        done += (size_t)r;
    }
    return 0;
}

/* Staged upload, one pipeline per host thread: each thread owns UP_SLOTS pinned pieces
 * and a stream, takes the next piece of the source (shared counter), fills a slot (copy
 * from the mapping, or pread of fd when fd >= 0) once that slot's earlier DMA is done,
 * and queues its DMA. No barrier between threads: a slow page fault or a descheduled
 * core delays one piece, not all of them (the earlier whole-ring version waited for the
 * slowest of 16 threads every 64 MiB and reached 50-56% of pinned bandwidth). */
#define UP_SLOTS 2
struct up_job {
    char *dev;
    const char *host;
    int fd, device, populate;
    uint64_t foff, len;
    size_t piece;
    cudaEvent_t start;           /* the caller's stream at entry: earlier work on dev */
    unsigned long long next;     /* next piece index (atomic) */
    int failed;                  /* set once; the others stop at their next piece */
    dsr1_err *err;
};

static int up_fail(up_job *j, int rc_cuda, cudaError_t e, const char *what, int en, uint64_t at)
{
    int first;
#pragma omp critical(up_err)
    {
        first = !j->failed;
        j->failed = 1;
    }
    if (first) {
        if (rc_cuda)
            cuda_fail(j->err, e, what);
        else
            dsr1_err_set(j->err, DSR1_E_IO, 0, 0, "upload: read at offset %llu: %s",
                         (unsigned long long)at,
                         en == EIO ? "the file is shorter than its mapping" : strerror(en));
    }
    return 1;
}

static void up_worker(up_job *j)
{
    void *buf[UP_SLOTS] = {NULL};
    cudaEvent_t ev[UP_SLOTS] = {NULL};
    cudaStream_t st = NULL;
    cudaError_t e;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if ((e = cudaSetDevice(j->device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)) != cudaSuccess ||
        (e = cudaStreamWaitEvent(st, j->start, 0)) != cudaSuccess) {
        up_fail(j, 1, e, "stream", 0, 0);
        goto out;
    }
    /* allocated by the thread that fills them: first touch on its NUMA node */
    for (int i = 0; i < UP_SLOTS; i++)
        if ((e = cudaMallocHost(&buf[i], j->piece)) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming)) != cudaSuccess) {
            up_fail(j, 1, e, "pinned staging buffer", 0, 0);
            goto out;
        }
    for (int k = 0;; k++) {
        unsigned long long i;
#pragma omp atomic capture
        i = j->next++;
        uint64_t off = (uint64_t)i * j->piece;
        int stop;
#pragma omp atomic read
        stop = j->failed;
        if (off >= j->len || stop)
            break;
        size_t n = j->len - off < j->piece ? (size_t)(j->len - off) : j->piece;
        int b = k % UP_SLOTS;
        /* the DMA that last read this slot must be done before we overwrite it */
        if ((e = cudaEventSynchronize(ev[b])) != cudaSuccess) {
            up_fail(j, 1, e, "host-to-device copy", 0, 0);
            break;
        }
        if (j->fd >= 0) {
            int en = read_full(j->fd, buf[b], j->foff + off, n);
            if (en) {
                up_fail(j, 0, cudaSuccess, NULL, en, j->foff + off);
                break;
            }
        } else {
            const char *src = j->host + off;
            if (j->populate) {
                /* map the piece's pages in one call instead of a fault per page (Linux
                 * >= 5.14; older kernels say EINVAL and the copy faults them in) */
                uintptr_t a = (uintptr_t)src & ~(uintptr_t)(page - 1);
                madvise((void *)a, (size_t)((uintptr_t)src + n - a), MADV_POPULATE_READ);
            }
            memcpy(buf[b], src, n);
        }
        if ((e = cudaMemcpyAsync(j->dev + off, buf[b], n, cudaMemcpyHostToDevice, st)) != cudaSuccess ||
            (e = cudaEventRecord(ev[b], st)) != cudaSuccess) {
            up_fail(j, 1, e, "host-to-device copy", 0, 0);
            break;
        }
    }
    if (st && (e = cudaStreamSynchronize(st)) != cudaSuccess)
        up_fail(j, 1, e, "host-to-device copy", 0, 0);
out:
    for (int i = 0; i < UP_SLOTS; i++) {
        if (ev[i])
            cudaEventDestroy(ev[i]);
        if (buf[i])
            cudaFreeHost(buf[i]);
    }
    if (st)
        cudaStreamDestroy(st);
}

static int up_staged(char *dev, const char *host, int fd, uint64_t foff, uint64_t len, size_t piece,
                     int threads, int populate, cudaStream_t caller, dsr1_err *err)
{
    up_job j;
    memset(&j, 0, sizeof j);
    j.dev = dev;
    j.host = host;
    j.fd = fd;
    j.foff = foff;
    j.len = len;
    j.piece = piece;
    j.populate = populate;
    j.err = err;
    cudaError_t e;
    if ((e = cudaGetDevice(&j.device)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&j.start, cudaEventDisableTiming)) != cudaSuccess)
        return cuda_fail(err, e, "event");
    if ((e = cudaEventRecord(j.start, caller)) != cudaSuccess) {
        cudaEventDestroy(j.start);
        return cuda_fail(err, e, "event");
    }
    uint64_t pieces = (len + piece - 1) / piece;
    if ((uint64_t)threads > pieces)
        threads = pieces ? (int)pieces : 1;
#pragma omp parallel num_threads(threads)
    up_worker(&j);
    cudaEventDestroy(j.start);
    return j.failed ? -1 : 0;
}

static int up_register(char *dev, const char *host, uint64_t len, size_t chunk, cudaStream_t st,
                       dsr1_err *err)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    chunk = (chunk + page - 1) & ~(page - 1);
    /* window [base, base + span) registered per chunk, page-aligned */
    const char *reg[2] = {NULL, NULL};
    cudaEvent_t ev[2] = {NULL, NULL};
    cudaError_t e;
    int rc = 0;
    for (int i = 0; i < 2; i++)
        if ((e = cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming)) != cudaSuccess) {
            rc = cuda_fail(err, e, "event");
            goto out;
        }
    for (uint64_t off = 0, i = 0; off < len; off += chunk, i++) {
        size_t n = len - off < chunk ? (size_t)(len - off) : chunk;
        int b = (int)(i & 1);
        if (reg[b]) {
            if ((e = cudaEventSynchronize(ev[b])) != cudaSuccess ||
                (e = cudaHostUnregister((void *)reg[b])) != cudaSuccess) {
                rc = cuda_fail(err, e, "unregister");
                goto out;
            }
            reg[b] = NULL;
        }
        const char *p = host + off;
        const char *base = (const char *)((uintptr_t)p & ~(uintptr_t)(page - 1));
        size_t span = ((size_t)(p - base) + n + page - 1) & ~(page - 1);
        if ((e = cudaHostRegister((void *)base, span, cudaHostRegisterReadOnly)) != cudaSuccess) {
            rc = cuda_fail(err, e, "cudaHostRegister of the mapping");
            goto out;
        }
        reg[b] = base;
        if ((e = cudaMemcpyAsync(dev + off, p, n, cudaMemcpyHostToDevice, st)) != cudaSuccess ||
            (e = cudaEventRecord(ev[b], st)) != cudaSuccess) {
            rc = cuda_fail(err, e, "host-to-device copy");
            goto out;
        }
    }
    if ((e = cudaStreamSynchronize(st)) != cudaSuccess)
        rc = cuda_fail(err, e, "host-to-device copy");
out:
    cudaStreamSynchronize(st);
    for (int i = 0; i < 2; i++) {
        if (reg[i])
            cudaHostUnregister((void *)reg[i]);
        if (ev[i])
            cudaEventDestroy(ev[i]);
    }
    return rc;
}

int rt_upload(void *dev, const void *host, uint64_t len, const rt_upload_opts *o,
              rt_upload_stats *stats, dsr1_err *err)
{
    rt_upload_opts def;
    if (!o) {
        rt_upload_opts_init(&def);
        o = &def;
    }
    int threads = o->threads > 0 ? o->threads : omp_get_num_procs() < 16 ? omp_get_num_procs() : 16;
    size_t chunk = o->chunk;
    if (!chunk && o->method == RT_UP_REGISTER)
        chunk = 64u << 20;
    else if (!chunk) /* 256 MiB pinned in all: UP_SLOTS pieces a thread, at least 4 MiB */
        chunk = std::max((size_t)(256u << 20) / ((size_t)UP_SLOTS * threads) & ~(size_t)((2u << 20) - 1),
                         (size_t)(4u << 20));
    /* the staged methods start after the work queued on st (NULL: the legacy stream) */
    cudaStream_t st = (cudaStream_t)o->stream;
    double t0 = now_s();
    int rc, fd = -1;
    if (o->method == RT_UP_PREAD) {
        if (!o->path || (fd = open(o->path, O_RDONLY | O_CLOEXEC)) < 0)
            rc = dsr1_err_set(err, DSR1_E_IO, 0, 0, "upload: cannot open %s: %s",
                              o->path ? o->path : "(no path)", strerror(o->path ? errno : EINVAL));
        else
            rc = up_staged((char *)dev, NULL, fd, o->file_off, len, chunk, threads, 0, st, err);
        if (fd >= 0)
            close(fd);
    } else if (o->method == RT_UP_REGISTER) {
        cudaStream_t own = st;
        cudaError_t e = cudaSuccess;
        if (!own)
            e = cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking);
        rc = e != cudaSuccess ? cuda_fail(err, e, "stream")
                              : up_register((char *)dev, (const char *)host, len, chunk, own, err);
        if (!st && e == cudaSuccess)
            cudaStreamDestroy(own);
    } else {
        rc = up_staged((char *)dev, (const char *)host, -1, 0, len, chunk, threads, !o->no_populate, st,
                       err);
    }
    if (stats) {
        stats->bytes = len;
        stats->seconds = now_s() - t0;
    }
    return rc;
}
