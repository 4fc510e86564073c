/* rt_upload: chunked, double-buffered host-to-device copies (see upload.h). */
#include <cuda_runtime.h>
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern "C" {
#include "upload.h"
}

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

/* Parallel copy of n bytes; each thread takes a contiguous slice (first touch of the
 * mapping's pages happens here, in parallel). */
static void par_copy(void *dst, const void *src, size_t n, int threads)
{
    size_t per = (n + (size_t)threads - 1) / (size_t)threads;
    per = (per + 4095) & ~(size_t)4095;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; t++) {
        size_t off = (size_t)t * per;
        if (off < n)
            memcpy((char *)dst + off, (const char *)src + off, n - off < per ? n - off : per);
    }
}

/* Parallel pread of n bytes at file offset off into dst; 0, or an errno (EIO: the file
 * ended early). */
static int par_read(void *dst, int fd, uint64_t off, size_t n, int threads)
{
    size_t per = (n + (size_t)threads - 1) / (size_t)threads;
    per = (per + 4095) & ~(size_t)4095;
    int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : bad)
    for (int t = 0; t < threads; t++) {
        size_t o = (size_t)t * per;
        if (o >= n)
            continue;
        size_t k = n - o < per ? n - o : per, done = 0;
        while (done < k) {
            ssize_t r = pread(fd, (char *)dst + o + done, k - done, (off_t)(off + o + done));
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                bad = r < 0 ? errno : EIO;
                break;
            }
            done += (size_t)r;
        }
    }
    return bad;
}

/* Staged upload through UP_NBUF pinned chunks: the host fills chunk i (copy from the
 * mapping, or pread of fd when fd >= 0) while up to UP_NBUF - 1 earlier chunks are in
 * flight; more than two buffers absorb the jitter of the host side (shared machines). */
#define UP_NBUF 4
static int up_pinned(char *dev, const char *host, int fd, uint64_t foff, uint64_t len,
                     size_t chunk, int threads, cudaStream_t st, dsr1_err *err)
{
    void *buf[UP_NBUF] = {NULL};
    cudaEvent_t ev[UP_NBUF] = {NULL};
    cudaError_t e;
    int rc = 0;
    for (int i = 0; i < UP_NBUF; i++) {
        if ((e = cudaMallocHost(&buf[i], chunk)) != cudaSuccess ||
            (e = cudaEventCreateWithFlags(&ev[i], cudaEventDisableTiming)) != cudaSuccess) {
            rc = cuda_fail(err, e, "pinned staging buffer");
            goto out;
        }
    }
    for (uint64_t off = 0, i = 0; off < len; off += chunk, i++) {
        size_t n = len - off < chunk ? (size_t)(len - off) : chunk;
        int b = (int)(i % UP_NBUF);
        /* the DMA that last read this buffer must be done before we overwrite it */
        if ((e = cudaEventSynchronize(ev[b])) != cudaSuccess) {
            rc = cuda_fail(err, e, "staging copy");
            goto out;
        }
        if (fd >= 0) {
            int en = par_read(buf[b], fd, foff + off, n, threads);
            if (en) {
                rc = dsr1_err_set(err, DSR1_E_IO, 0, 0, "upload: read at offset %llu: %s",
                                  (unsigned long long)(foff + off),
                                  en == EIO ? "the file is shorter than its mapping" : strerror(en));
                goto out;
            }
        } else {
            par_copy(buf[b], host + off, n, threads);
        }
        if ((e = cudaMemcpyAsync(dev + off, buf[b], n, cudaMemcpyHostToDevice, st)) != cudaSuccess ||
            (e = cudaEventRecord(ev[b], st)) != cudaSuccess) {
            rc = cuda_fail(err, e, "host-to-device copy");
            goto out;
        }
    }
    if ((e = cudaStreamSynchronize(st)) != cudaSuccess)
        rc = cuda_fail(err, e, "host-to-device copy");
out:
    for (int i = 0; i < UP_NBUF; i++) {
        if (ev[i])
            cudaEventDestroy(ev[i]);
        if (buf[i])
            cudaFreeHost(buf[i]);
    }
    return rc;
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
    size_t chunk = o->chunk ? o->chunk : (64u << 20);
    int threads = o->threads > 0 ? o->threads : omp_get_num_procs() < 16 ? omp_get_num_procs() : 16;
    cudaStream_t st = (cudaStream_t)o->stream;
    int own = 0;
    if (!st) {
        cudaError_t e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
        if (e != cudaSuccess)
            return cuda_fail(err, e, "stream");
        own = 1;
    }
    double t0 = now_s();
    int rc, fd = -1;
    if (o->method == RT_UP_PREAD) {
        if (!o->path || (fd = open(o->path, O_RDONLY | O_CLOEXEC)) < 0)
            rc = dsr1_err_set(err, DSR1_E_IO, 0, 0, "upload: cannot open %s: %s",
                              o->path ? o->path : "(no path)", strerror(o->path ? errno : EINVAL));
        else
            rc = up_pinned((char *)dev, NULL, fd, o->file_off, len, chunk, threads, st, err);
        if (fd >= 0)
            close(fd);
    } else if (o->method == RT_UP_REGISTER) {
        rc = up_register((char *)dev, (const char *)host, len, chunk, st, err);
    } else {
        rc = up_pinned((char *)dev, (const char *)host, -1, 0, len, chunk, threads, st, err);
    }
    if (stats) {
        stats->bytes = len;
        stats->seconds = now_s() - t0;
    }
    if (own)
        cudaStreamDestroy(st);
    return rc;
}
