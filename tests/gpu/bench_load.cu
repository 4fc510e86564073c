/* bench-load-gpu: shard upload bandwidth against the same run's ceilings.
 *
 *   bench-load-gpu --manifest DIR/manifest.json [--rank R] [--reps N] [--chunk MiB]
 *                  [--threads N] [--verify-split U:H,...]
 *
 * The shard is read once first so every method starts from the page cache. Prints
 * key=value lines (GB/s = 1e9 bytes/s, medians):
 *   pinned_h2d    cudaMemcpyAsync from one pinned buffer (the DMA ceiling)
 *   host_copy     the staged upload's host side alone: its threads memcpy a fresh
 *                 mapping into pinned memory, no DMA (the host's ceiling)
 *   pageable_h2d  cudaMemcpy straight from the mapping
 *   up_pread      rt_upload, per-thread pipelines of pinned pieces filled by pread of
 *                 the file (DSR1_UPLOAD=pread)
 *   up_pinned     rt_upload, the same pipelines filled by memcpy from a fresh
 *                 mapping of the file (page cache warm, page tables empty, as in a new
 *                 rank; dsr1-serve's default)
 *   up_register   rt_upload, cudaHostRegister windows of a fresh mapping
 *   up_verify     rt_upload (pinned) with the full per-tensor hash check in parallel,
 *                 threads as runtime/cores.h gives one rank on this host (up_verify_old:
 *                 the split before it; up_verify_split: each --verify-split U:H)
 * and checks that the device copy equals the file. Exit 0, or 1 on a content or hash
 * mismatch, 3 on errors. */
#include <algorithm>
#include <fcntl.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

#include "cores.h"

#include <cuda_runtime.h>

extern "C" {
#include "fu.h"
#include "ld.h"
#include "mf.h"
#include "st.h"
#include "upload.h"
}

static double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

#define CK(x)                                                                     \
    do {                                                                          \
        cudaError_t _e = (x);                                                     \
        if (_e != cudaSuccess) {                                                  \
            fprintf(stderr, "bench-load: %s: %s\n", #x, cudaGetErrorString(_e));  \
            return 3;                                                             \
        }                                                                         \
    } while (0)

typedef struct hjob {
    const ld_shard *s;
    int rc;
    dsr1_err err;
    double secs;
} hjob;

static void bad(void *ctx, const mf_tensor *t, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "bench-load: hash mismatch in %s: %s\n", t->name, msg);
}

static int g_hash_threads; /* 0 = OpenMP default */

static void *hash_main(void *p)
{
    hjob *j = (hjob *)p;
    if (g_hash_threads > 0)
        omp_set_num_threads(g_hash_threads);
    double t0 = fu_now_s();
    dsr1_err_clear(&j->err);
    j->rc = ld_hash_check(j->s, bad, NULL, &j->err);
    j->secs = fu_now_s() - t0;
    return NULL;
}

int main(int argc, char **argv)
{
    const char *manifest = NULL;
    int rank = 0, reps = 3, threads = 0;
    const char *vsplit = NULL;
    size_t chunk = 0; /* rt_upload's default */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--manifest") && i + 1 < argc)
            manifest = argv[++i];
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc)
            rank = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--chunk") && i + 1 < argc)
            chunk = (size_t)(atof(argv[++i]) * 1048576.0); /* MiB, fractions allowed */
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--verify-split") && i + 1 < argc)
            vsplit = argv[++i];
        else {
            fprintf(stderr, "usage: bench-load-gpu --manifest DIR/manifest.json [--rank R] "
                            "[--reps N] [--chunk MiB] [--threads N] [--verify-split U:H,...]\n");
            return 2;
        }
    }
    if (!manifest || reps < 1)
        return 2;
    dsr1_err err;
    dsr1_err_clear(&err);
    mf_manifest *m;
    if (mf_load(&m, manifest, &err)) {
        fprintf(stderr, "bench-load: %s\n", err.msg);
        return 3;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", manifest);
    char *sl = strrchr(dir, '/');
    if (sl)
        *sl = 0;
    else
        strcpy(dir, ".");
    const mf_rank *r = &m->ranks[rank];
    ld_shard *s;
    if (ld_open(&s, m, dir, r->shard, 0, &err)) {
        fprintf(stderr, "bench-load: %s\n", err.msg);
        return 3;
    }
    const st_file *f = ld_file(s);
    const char *base = (const char *)st_base(f);
    size_t n = st_file_size(f);
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("device=%s\nfile=%s\nbytes=%zu\n", p.name, ld_path(s), n);
    /* page cache warm-up: touch every page */
    {
        double t0 = fu_now_s();
        unsigned long sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
        for (long i = 0; i < (long)n; i += 4096)
            sum += (unsigned char)base[i];
        printf("warm_read_s=%.3f (checksum %lu)\n", fu_now_s() - t0, sum & 0xff);
    }
    char *dev;
    CK(cudaMalloc(&dev, n));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    /* ceiling: pinned buffer, same byte count */
    {
        size_t pb = 256u << 20;
        char *pin;
        CK(cudaMallocHost(&pin, pb));
        memset(pin, 0x5a, pb);
        std::vector<double> v;
        for (int k = 0; k < reps + 1; k++) {
            double t0 = fu_now_s();
            for (size_t off = 0; off < n; off += pb)
                CK(cudaMemcpyAsync(dev + off, pin, n - off < pb ? n - off : pb,
                                   cudaMemcpyHostToDevice, st));
            CK(cudaStreamSynchronize(st));
            if (k)
                v.push_back(n / (fu_now_s() - t0) / 1e9);
        }
        printf("pinned_h2d_GBps=%.2f\n", median(v));
        cudaFreeHost(pin);
    }
    /* host-side ceiling of the staged upload: the same threads copying 8 MiB pieces of a
     * fresh mapping into 256 MiB of pinned memory, no DMA */
    {
        int ht = threads, unused;
        if (ht <= 0) /* rt_upload's default */
            rt_load_threads(rt_core_share(omp_get_num_procs(), 1), 0, &ht, &unused);
        const size_t pc = 8u << 20, pb = 256u << 20;
        char *pin;
        CK(cudaMallocHost(&pin, pb));
        memset(pin, 0, pb);
        std::vector<double> v;
        for (int k = 0; k < reps; k++) {
            int fd = open(ld_path(s), O_RDONLY);
            void *mp = fd < 0 ? MAP_FAILED : mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
            if (fd >= 0)
                close(fd);
            if (mp == MAP_FAILED) {
                printf("host_copy_error=cannot map %s\n", ld_path(s));
                return 3;
            }
            double t0 = fu_now_s();
            long np = (long)((n + pc - 1) / pc);
#pragma omp parallel for num_threads(ht) schedule(dynamic, 1)
            for (long i = 0; i < np; i++) {
                size_t off = (size_t)i * pc;
                memcpy(pin + (size_t)i * pc % pb, (const char *)mp + off, n - off < pc ? n - off : pc);
            }
            v.push_back(n / (fu_now_s() - t0) / 1e9);
            munmap(mp, n);
        }
        printf("host_copy_GBps=%.2f (%d threads, fresh mapping, no DMA)\n", median(v), ht);
        cudaFreeHost(pin);
    }
    {
        double t0 = fu_now_s();
        CK(cudaMemcpy(dev, base, n, cudaMemcpyHostToDevice));
        printf("pageable_h2d_GBps=%.2f\n", n / (fu_now_s() - t0) / 1e9);
    }
    const char *names[3] = {"up_pread", "up_pinned", "up_register"};
    const rt_up_method meths[3] = {RT_UP_PREAD, RT_UP_PINNED, RT_UP_REGISTER};
    for (int meth = 0; meth < 3; meth++) {
        rt_upload_opts o;
        rt_upload_opts_init(&o);
        o.method = meths[meth];
        o.path = ld_path(s);
        o.chunk = chunk;
        o.threads = threads;
        o.stream = st;
        std::vector<double> v;
        int ok = 1;
        for (int k = 0; k < reps; k++) {
            CK(cudaMemset(dev, 0, n));
            CK(cudaDeviceSynchronize());
            /* the mapping methods read a fresh mapping each time, as a starting rank does
             * (page cache warm, page tables empty); its setup is not timed */
            const char *src = base;
            void *mp = NULL;
            if (o.method != RT_UP_PREAD) {
                int fd = open(ld_path(s), O_RDONLY);
                mp = fd < 0 ? MAP_FAILED : mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
                if (fd >= 0)
                    close(fd);
                if (mp == MAP_FAILED) {
                    printf("%s_error=cannot map %s\n", names[meth], ld_path(s));
                    return 3;
                }
                src = (const char *)mp;
            }
            rt_upload_stats us;
            int rc = rt_upload(dev, src, n, &o, &us, &err);
            if (mp)
                munmap(mp, n);
            if (rc) {
                printf("%s_error=%s\n", names[meth], err.msg);
                ok = 0;
                break;
            }
            v.push_back(n / us.seconds / 1e9);
        }
        if (!ok)
            continue;
        printf("%s_GBps=%.2f\n", names[meth], median(v));
        /* content check of the last upload, in 256 MiB pieces */
        size_t pb = 256u << 20;
        std::vector<char> hb(pb);
        for (size_t off = 0; off < n; off += pb) {
            size_t k = n - off < pb ? n - off : pb;
            CK(cudaMemcpy(hb.data(), dev + off, k, cudaMemcpyDeviceToHost));
            if (memcmp(hb.data(), base + off, k) != 0) {
                printf("%s_content=MISMATCH at offset %zu\n", names[meth], off);
                return 1;
            }
        }
        printf("%s_content=ok\n", names[meth]);
    }
    {
        hjob hj;
        memset(&hj, 0, sizeof hj);
        hj.s = s;
        double t0 = fu_now_s();
        hash_main(&hj);
        printf("hash_only_GBps=%.2f\n", n / (fu_now_s() - t0) / 1e9);
        /* upload (pinned, dsr1-serve's default) with the hash alongside, per split of
         * the cores: runtime/cores.h's for one rank on this host (what dsr1-serve
         * uses), the split before it (16 copy threads, the other cores hashing, at
         * least 4), and any --verify-split U:H */
        std::vector<std::pair<int, int>> splits;
        int pu, ph;
        rt_load_threads(rt_core_share(omp_get_num_procs(), 1), 1, &pu, &ph);
        splits.push_back({pu, ph});
        int np = omp_get_num_procs();
        splits.push_back({np < 16 ? np : 16, np - 16 < 4 ? 4 : np - 16});
        for (const char *q = vsplit; q && *q;) {
            int u = 0, h = 0, used = 0;
            if (sscanf(q, "%d:%d%n", &u, &h, &used) != 2 || u < 1 || h < 1) {
                fprintf(stderr, "bench-load: --verify-split wants U:H[,U:H...], got %s\n", q);
                return 2;
            }
            splits.push_back({u, h});
            q += used;
            q += *q == ',';
        }
        for (size_t si = 0; si < splits.size(); si++) {
            rt_upload_opts o;
            rt_upload_opts_init(&o);
            o.method = RT_UP_PINNED;
            o.chunk = chunk;
            o.threads = splits[si].first;
            o.stream = st;
            g_hash_threads = splits[si].second;
            std::vector<double> v, va, vh;
            for (int k = 0; k < reps; k++) {
                pthread_t th;
                t0 = fu_now_s();
                pthread_create(&th, NULL, hash_main, &hj);
                rt_upload_stats us;
                int rc = rt_upload(dev, base, n, &o, &us, &err);
                pthread_join(th, NULL);
                double t = fu_now_s() - t0;
                if (rc || hj.rc) {
                    printf("up_verify_error=%s %s (mismatches %d)\n", rc ? err.msg : "",
                           hj.rc < 0 ? hj.err.msg : "", hj.rc);
                    return hj.rc > 0 ? 1 : 3;
                }
                v.push_back(n / t / 1e9), va.push_back(n / us.seconds / 1e9), vh.push_back(hj.secs);
            }
            printf("up_verify%s_GBps=%.2f (%d upload + %d hash threads%s; upload alone within it "
                   "%.2f GB/s, hashing %.2f s)\n",
                   si == 0 ? "" : si == 1 ? "_old" : "_split", median(v), splits[si].first,
                   splits[si].second, si == 0 ? ": runtime/cores.h, one rank" : si == 1 ? ": before cores.h" : "",
                   median(va), median(vh));
        }
    }
    cudaFree(dev);
    ld_close(s);
    mf_free(m);
    return 0;
}
