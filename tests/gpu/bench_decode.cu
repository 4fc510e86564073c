/* bench-decode-gpu: per-layer decode step time against the HBM roofline, prefill GEMM
 * TFLOP/s against cuBLASLt at the same shapes, and (multi-GPU) all-reduce latency.
 *
 *   bench-decode-gpu --manifest DIR/manifest.json [--ctx N] [--batches 1,8,64]
 *                    [--reps N] [--prefill-m M] [--rank R] [--local-experts N] [--quick]
 *                    [--prefill-attn] [--profile LAYER:BATCH]   (one step for ncu;
 *                    tests/gpu/profile_decode.sh)
 * --quick leaves out the prefill tables (GEMMs, attention); --prefill-attn keeps the
 * attention table in a quick run.
 *   bench-decode-gpu --allreduce [--hidden 7168]     (one process per GPU, torchrun env)
 *
 * Decode: one rank of the plan (--rank; alone, collectives skipped). The latent cache is filled
 * with ctx positions of pseudo-random values; a step of batch B runs B new tokens of one
 * sequence through one layer (cm_layer_forward), timed with CUDA events after warm-up,
 * median of --reps; the step is enqueued while the GPU spins, so the events time its
 * kernels back to back (cold_us: without the spin). Bytes touched = every weight of the
 * layer that the step reads (attention, dense MLP or router + shared expert + the distinct
 * experts the router picked, read back from the run) + the latent cache read. Roofline =
 * bytes / the device-to-device copy bandwidth measured in the same run ((read + write) /
 * time). GB and TB are 1e9 / 1e12 bytes. */
#include <algorithm>
#include <cuda_profiler_api.h>
#include <set>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "cuda_model.h"
#include "cuda_util.cuh"

extern "C" {
#include "fu.h"
#include "boot.h"
#include "comm_nccl.h"
#include "ident.h"
#include "mf.h"
}

#define CK(x)                                                                      \
    do {                                                                           \
        cudaError_t _e = (x);                                                      \
        if (_e != cudaSuccess) {                                                   \
            fprintf(stderr, "bench-decode: %s: %s\n", #x, cudaGetErrorString(_e)); \
            exit(3);                                                               \
        }                                                                          \
    } while (0)

static double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

__global__ void fill_kernel(float *p, size_t n, uint32_t seed, float scale)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n)
        return;
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 12;
    p[i] = ((float)(h & 0xffff) / 32768.0f - 1.0f) * scale;
}

static cudaStream_t g_st; /* every timed piece runs on the model's stream */

static void fill(float *p, size_t n, uint32_t seed, float scale)
{
    if (n)
        fill_kernel<<<kc_blocks(n, 256), 256, 0, g_st>>>(p, n, seed, scale);
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(g_st));
}

static double wbytes(const k_weight *w)
{
    if (!w->data)
        return 0;
    double e = w->type == K_W_FP8 ? 1 : w->type == K_W_BF16 ? 2 : 4;
    double b = (double)w->rows * w->cols * e;
    if (w->type == K_W_FP8)
        b += (double)((w->rows + 127) / 128) * w->scale_ld * 4;
    return b;
}

static double copy_bw(void)
{
    size_t n = 2ull << 30;
    char *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    std::vector<double> v;
    for (int k = 0; k < 6; k++) {
        cudaEventRecord(e0);
        CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (k)
            v.push_back(2.0 * n / (ms * 1e-3));
    }
    cudaFree(a), cudaFree(b);
    return median(v);
}

/* Busy-waits ns on the GPU. Launched before a start event, it keeps the GPU busy while
 * the host enqueues the timed work, so the events measure the work back to back as in a
 * running decode (the host ahead of the GPU), not the first launch's latency. */
__global__ void spin_kernel(unsigned long long ns)
{
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    while (t - t0 < ns);
}

static void queue_ahead(cudaStream_t st)
{
    spin_kernel<<<1, 1, 0, st>>>(1000000ull); /* 1 ms: longer than any enqueue timed here */
}

/* median ms of f, queued behind a spin (queued=1) or launched cold */
template <class F>
static double time_ms(F f, int reps, int queued = 1)
{
    cudaStream_t st = g_st;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    std::vector<double> v;
    for (int k = 0; k < reps + 2; k++) {
        if (queued)
            queue_ahead(st);
        cudaEventRecord(e0, st);
        f();
        cudaEventRecord(e1, st);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (k >= 2)
            v.push_back(ms);
    }
    CK(cudaGetLastError());
    return median(v);
}

static int allreduce_mode(size_t hidden, int reps)
{
    rt_ident id;
    dsr1_err err;
    dsr1_err_clear(&err);
    if (rt_ident_resolve(&id, NULL, NULL, NULL, 0, &err)) {
        fprintf(stderr, "bench-decode: %s\n", err.msg);
        return 2;
    }
    CK(cudaSetDevice(id.local_rank));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    g_st = st;
    uint8_t uid[RT_BOOT_ID_BYTES] = {0};
    if (id.rank == 0 && rt_comm_nccl_unique_id(uid, &err)) {
        fprintf(stderr, "bench-decode: %s\n", err.msg);
        return 3;
    }
    rt_boot_self self;
    memset(&self, 0, sizeof self);
    self.rank = id.rank, self.world_size = id.world_size;
    snprintf(self.plan, sizeof self.plan, "allreduce-bench tp=%d", id.world_size);
    rt_boot_opts bo;
    memset(&bo, 0, sizeof bo);
    bo.addr = id.master_addr, bo.port = id.master_port, bo.timeout_ms = 120000, bo.linger_ms = -1;
    bo.unique_id = uid;
    rt_boot *b;
    rt_comm *c;
    if (rt_boot_join(&b, &self, &bo, uid, &err) ||
        rt_comm_nccl_create(&c, id.rank, id.world_size, 1, 1, uid, st, 120, &err)) {
        fprintf(stderr, "bench-decode rank %d: %s\n", id.rank, err.msg);
        return 3;
    }
    float *buf;
    CK(cudaMalloc(&buf, 64 * hidden * 4));
    fill(buf, 64 * hidden, 7, 1.0f);
    CK(cudaDeviceSynchronize());
    size_t toks[3] = {1, 8, 64};
    for (size_t i = 0; i < 3; i++) {
        size_t n = toks[i] * hidden;
        /* one event pair around 100 back-to-back all-reduces: per-call latency; and the
         * host time to enqueue them */
        double host = 0;
        double ms = time_ms(
            [&] {
                double t0 = fu_now_s();
                for (int k = 0; k < 100; k++)
                    rt_comm_allreduce_sum_f32(c, RT_GROUP_TP, buf, n, &err);
                host = fu_now_s() - t0;
            },
            reps, 0);
        (void)st;
        const char *be = getenv("DSR1_NCCL_BLOCKING");
        if (id.rank == 0)
            printf("allreduce ranks=%d tokens=%zu bytes=%zu latency_us=%.1f host_us=%.1f%s\n",
                   id.world_size, toks[i], n * 4, ms * 1000.0 / 100, host * 1e6 / 100,
                   be && strcmp(be, "0") == 0 ? " (non-blocking communicator)" : "");
    }
    if (rt_comm_nccl_wait(c, &err)) {
        fprintf(stderr, "bench-decode rank %d: %s\n", id.rank, err.msg);
        return 3;
    }
    rt_boot_fence(b, "done", 1, NULL, 60000, &err);
    rt_comm_free(c);
    rt_boot_close(b);
    return 0;
}

/* Time each piece of layer li alone at batch B (fresh random inputs). */
static void breakdown(cm_model *m, size_t li, size_t B, size_t ctx, int reps)
{
    rt_model *h = m->h;
    cm_layer *L = &m->L[li];
    size_t H = h->hidden, Hl = h->heads, R = h->kv_lora, P = h->dr, dn = h->dn, dv = h->dv;
    size_t dq = dn + P, S = ctx + B;
    cudaStream_t st = m->st;
    size_t big = B * std::max<size_t>(std::max<size_t>(H, 18432), Hl * R) * 4 + (1 << 20);
    float *x, *y, *z;
    CK(cudaMalloc(&x, big));
    CK(cudaMalloc(&y, big));
    CK(cudaMalloc(&z, big));
    fill(x, big / 4, 77, 1.0f);
    CK(cudaDeviceSynchronize());
    printf("\nbreakdown layer %zu (%s) batch %zu:\n", li, L->h->moe ? "moe" : "dense", B);
    auto g = [&](const char *name, const k_weight *w) {
        if (!w->data)
            return;
        double ms = time_ms([&] { kc_gemm(m->kc, x, w->cols, B, w, y, w->rows, 0, 0); }, reps);
        double b = wbytes(w);
        printf("  %-22s %8.1f us  %7.1f MB  %7.0f GB/s\n", name, ms * 1e3, b / 1e6, b / ms / 1e6);
    };
    g("q_a_proj", &L->q_a);
    g("kv_a_proj", &L->kv_a);
    g("q_b_proj", &L->q_b);
    g("o_proj", &L->o);
    if (!L->h->moe) {
        g("gate_proj", &L->gate);
        g("down_proj", &L->down);
        kc_set_gemv_variant(1);
        g("gate_proj (int fp8 dec)", &L->gate);
        g("down_proj (int fp8 dec)", &L->down);
        g("o_proj (int fp8 dec)", &L->o);
        kc_set_gemv_variant(0);
        for (int ks : {1, 2, 4, 8}) {
            char nm[64];
            kc_set_gemv_ks(ks);
            snprintf(nm, sizeof nm, "q_b_proj (ks=%d)", ks);
            g(nm, &L->q_b);
            snprintf(nm, sizeof nm, "gate_proj (ks=%d)", ks);
            g(nm, &L->gate);
            snprintf(nm, sizeof nm, "o_proj (ks=%d)", ks);
            g(nm, &L->o);
            snprintf(nm, sizeof nm, "down_proj (ks=%d)", ks);
            g(nm, &L->down);
        }
        kc_set_gemv_ks(0);
        {
            double ms = time_ms([&] { kc_gemm_glu(m->kc, x, H, B, &L->gate, &L->up, y, L->gate.rows); },
                                reps);
            double b = wbytes(&L->gate) + wbytes(&L->up);
            printf("  %-22s %8.1f us  %7.1f MB  %7.0f GB/s\n", "gate+up fused GLU", ms * 1e3, b / 1e6,
                   b / ms / 1e6);
            ms = time_ms([&] {
                kc_gemm_pair(m->kc, x, H, B, &L->q_a, y, L->q_a.rows, &L->kv_a, z, L->kv_a.rows);
            }, reps);
            b = wbytes(&L->q_a) + wbytes(&L->kv_a);
            printf("  %-22s %8.1f us  %7.1f MB  %7.0f GB/s\n", "q_a+kv_a pair", ms * 1e3, b / 1e6,
                   b / ms / 1e6);
        }
    } else {
        g("router", &L->router);
        g("shared gate_proj", &L->sh_gate);
        g("shared down_proj", &L->sh_down);
    }
    double t;
    t = time_ms([&] { kc_mla_absorb_q(x, Hl * dq, dq, B, Hl, dn, dv, &L->kv_b, y, st); }, reps);
    printf("  %-22s %8.1f us\n", "absorb_q", t * 1e3);
    for (int mma = 1; mma >= 0; mma--) { /* the runtime's kernel, then the fp32 one */
        kc_mla_set_mma(mma);
        t = time_ms([&] {
            kc_mla_attn(y, x + dn, Hl * dq, dq, m->c[li], R, m->kpe[li], P, z, B, S, Hl, R, P,
                        ctx, 0.1f, NULL, st);
        }, reps);
        printf("  %-22s %8.1f us  (S=%zu)\n", mma ? "mla_attn" : "mla_attn (fp32 FMA)", t * 1e3, S);
    }
    kc_mla_set_mma(1);
    t = time_ms([&] { kc_mla_absorb_v(z, B, Hl, dn, dv, &L->kv_b, y, Hl * dv, st); }, reps);
    printf("  %-22s %8.1f us\n", "absorb_v", t * 1e3);
    t = time_ms([&] { kc_rmsnorm(x, H, L->in_norm, y, H, B, H, 1e-6f, st); }, reps);
    printf("  %-22s %8.1f us\n", "rmsnorm", t * 1e3);
    if (L->h->moe && L->moe) {
        size_t E = h->rcfg.n_experts, K = h->rcfg.top_k;
        int32_t *idx;
        float *w;
        CK(cudaMalloc(&idx, B * K * 4));
        CK(cudaMalloc(&w, B * K * 4));
        fill(z, B * E, 5, 3.0f);
        kc_router(&h->rcfg, z, L->bias, B, idx, w, st);
        t = time_ms([&] { kc_router(&h->rcfg, z, L->bias, B, idx, w, st); }, reps);
        printf("  %-22s %8.1f us\n", "router top-k", t * 1e3);
        t = time_ms([&] { kc_moe(m->kc, L->moe, x, H, B, idx, w, K, L->e0, y, H, 1); }, reps);
        std::vector<int32_t> hi(B * K);
        CK(cudaMemcpy(hi.data(), idx, hi.size() * 4, cudaMemcpyDeviceToHost));
        std::set<int32_t> d; /* experts this rank holds (and reads) */
        for (int32_t e : hi)
            if (e >= (int32_t)L->e0 && e < (int32_t)(L->e0 + L->h->n_experts))
                d.insert(e);
        double b = d.size() * (wbytes(&L->h->e_gate[0]) * 3);
        int sh = kc_moe_has_shared(L->moe, B);
        if (sh)
            b += wbytes(&L->sh_gate) + wbytes(&L->sh_up) + wbytes(&L->sh_down);
        printf("  %-22s %8.1f us  %7.1f MB  %7.0f GB/s (%zu experts%s)\n", "routed experts", t * 1e3,
               b / 1e6, b / t / 1e6, d.size(), sh ? " + shared" : "");
        cudaFree(idx), cudaFree(w);
    }
    cudaFree(x), cudaFree(y), cudaFree(z);
}

/* Prefill attention (kc_mla_prefill, decompression of the cached latents included) of
 * layer 0's local heads from position 0: the fused kernel (forced, also where its grid
 * is too narrow for the default to take it) against the materializing path, with the
 * causal products' rate next to cuBLAS TF32 on a 4096^3 matmul (the tensor-core rate
 * both paths are built on). */
static void prefill_attention(cm_model *m, int reps)
{
    rt_model *h = m->h;
    const size_t Hl = h->heads, R = h->kv_lora, P = h->dr, dn = h->dn, dv = h->dv, dq = dn + P;
    const size_t tmax = 4096;
    float *q, *c, *kpe, *o;
    CK(cudaMalloc(&q, tmax * Hl * dq * 4));
    CK(cudaMalloc(&c, tmax * R * 4));
    CK(cudaMalloc(&kpe, tmax * P * 4));
    CK(cudaMalloc(&o, tmax * Hl * dv * 4));
    fill(q, tmax * Hl * dq, 7, 1.0f);
    fill(c, tmax * R, 8, 1.0f);
    fill(kpe, tmax * P, 9, 1.0f);
    printf("\nprefill attention, %zu heads (dq %zu, dv %zu), from position 0: ms; TFLOP/s of the "
           "causal products (2 H (dq + dv) T (T + 1) / 2)\n", Hl, dq, dv);
    printf("%6s %12s %12s %9s %14s\n", "T", "fused_ms", "materialized", "speedup", "fused_TFLOPs");
    for (size_t T : {512, 2048, 4096}) {
        double t[2] = {-1, -1};
        for (int f = 1; f >= 0; f--) {
            kc_mla_prefill_set_flash(f ? 2 : 0); /* fused even where the default would not */
            auto run = [&] {
                kc_mla_prefill(m->kc, q, Hl * dq, c, R, kpe, P, &m->L[0].kv_b, o, Hl * dv, T, T, Hl,
                               dn, dv, R, P, 0, h->softmax_scale);
            };
            run();
            if (cudaDeviceSynchronize() != cudaSuccess || cudaGetLastError() != cudaSuccess)
                continue;
            t[f] = time_ms(run, reps);
        }
        kc_mla_prefill_set_flash(1);
        double fl = 2.0 * Hl * (dq + dv) * T * (T + 1) / 2;
        printf("%6zu %12.3f %12.3f %8.2fx %14.1f\n", T, t[1], t[0], t[0] / t[1], fl / t[1] / 1e9);
    }
    size_t n = 4096;
    float *a, *b, *y;
    CK(cudaMalloc(&a, n * n * 4));
    CK(cudaMalloc(&b, n * n * 4));
    CK(cudaMalloc(&y, n * n * 4));
    fill(a, n * n, 10, 1.0f);
    fill(b, n * n, 11, 1.0f);
    auto mm = [&] { kc_gemm_f32_batched(m->kc, 1, 0, n, n, n, a, n, 0, b, n, 0, y, n, 0, 1); };
    mm();
    CK(cudaDeviceSynchronize());
    double tm = time_ms(mm, reps);
    printf("cuBLAS TF32 4096^3: %.1f TFLOP/s\n", 2.0 * n * n * n / tm / 1e9);
    for (float *p : {q, c, kpe, o, a, b, y})
        CK(cudaFree(p));
}

int main(int argc, char **argv)
{
    const char *manifest = NULL;
    size_t ctx = 1024, pm = 4096, hidden = 7168;
    int reps = 10, allreduce = 0, rank = 0, local_experts = -1, quick = 0, pattn = 0, prof_layer = -1;
    size_t prof_batch = 1;
    std::vector<size_t> batches = {1, 8, 64};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--manifest") && i + 1 < argc)
            manifest = argv[++i];
        else if (!strcmp(argv[i], "--ctx") && i + 1 < argc)
            ctx = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--prefill-m") && i + 1 < argc)
            pm = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--hidden") && i + 1 < argc)
            hidden = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--allreduce"))
            allreduce = 1;
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc)
            rank = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--local-experts") && i + 1 < argc)
            local_experts = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--prefill-attn"))
            pattn = 1;
        else if (!strcmp(argv[i], "--profile") && i + 1 < argc &&
                 sscanf(argv[i + 1], "%d:%zu", &prof_layer, &prof_batch) == 2)
            i++;
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc) {
            batches.clear();
            for (char *s = strtok(argv[++i], ","); s; s = strtok(NULL, ","))
                batches.push_back((size_t)atol(s));
        } else {
            fprintf(stderr, "usage: bench-decode-gpu --manifest DIR/manifest.json [--ctx N] "
                            "[--batches 1,8,64] [--reps N] [--prefill-m M] [--rank R] "
                            "[--local-experts N] [--quick (no prefill tables)] [--prefill-attn] "
                            "[--profile LAYER:BATCH] | "
                            "--allreduce\n");
            return 2;
        }
    }
    if (allreduce)
        return allreduce_mode(hidden, reps);
    if (!manifest)
        return 2;
    dsr1_err err;
    dsr1_err_clear(&err);
    mf_manifest *mf;
    if (mf_load(&mf, manifest, &err)) {
        fprintf(stderr, "bench-decode: %s\n", err.msg);
        return 3;
    }
    if (rank < 0 || (uint32_t)rank >= mf->plan.world_size) {
        fprintf(stderr, "bench-decode: --rank %d outside the plan's %u ranks\n", rank,
                mf->plan.world_size);
        return 2;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", manifest);
    char *sl = strrchr(dir, '/');
    if (sl)
        *sl = 0;
    else
        strcpy(dir, ".");
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    g_st = st;
    size_t bmax = *std::max_element(batches.begin(), batches.end());
    cm_model *m;
    if (cm_load(&m, mf, dir, rank, ctx + bmax + 8, NULL, 0, st, &err)) {
        fprintf(stderr, "bench-decode: %s\n", err.msg);
        return 3;
    }
    rt_model *h = m->h;
    size_t H = h->hidden, R = h->kv_lora, P = h->dr;
    double bw = copy_bw();
    const char *why;
    kc_ctx_fp8_lt_mode(m->kc, &why);
    printf("device=%s\ncopy_bw_TBps=%.3f hbm_peak_TBps=%.2f\nupload_s=%.2f (%.2f GB)\nfp8_lt=%s\n",
           p.name, bw / 1e12, kc_hbm_peak_gbs() / 1e3, m->upload_s, m->arena_bytes / 1e9, why);
    printf("plan=tp%d ep%d pp%d rank=%d heads_local=%zu%s\n", h->tp, (int)mf->plan.ep,
           (int)mf->plan.pp, rank, h->heads,
           mf->plan.world_size > 1 ? " (this rank alone: collectives skipped, timing only)" : "");
    if (local_experts >= 0)
        for (size_t i = 0; i < m->n_layers; i++) {
            /* router bias: this rank's first N experts always chosen, its others never,
             * so one step reads N local experts (the busiest EP rank's load) */
            cm_layer *L = &m->L[i];
            size_t E = h->rcfg.n_experts, n = L->h->n_experts;
            if (!L->h->moe || !L->bias || !n)
                continue;
            std::vector<float> b(E);
            CK(cudaMemcpy(b.data(), L->bias, E * 4, cudaMemcpyDeviceToHost));
            for (size_t j = 0; j < n; j++)
                b[L->e0 + j] += (int)j < local_experts ? 100.0f : -100.0f;
            CK(cudaMemcpy(L->bias, b.data(), E * 4, cudaMemcpyHostToDevice));
        }
    for (size_t i = 0; i < m->n_layers; i++) {
        fill(m->c[i], ctx * R, 100 + (uint32_t)i, 1.0f);
        fill(m->kpe[i], ctx * P, 200 + (uint32_t)i, 1.0f);
    }
    /* the pool only grows: room for bmax tokens, and for the most that still take the
     * absorbed path (its latent buffers) */
    size_t babs = m->prefill_min - 1 < bmax ? m->prefill_min - 1 : bmax;
    if (cm_reserve(m, bmax, 0, &err) || cm_reserve(m, babs, 0, &err)) {
        fprintf(stderr, "bench-decode: %s\n", err.msg);
        return 3;
    }
    float *h0, *hb;
    CK(cudaMalloc(&h0, bmax * H * 4));
    CK(cudaMalloc(&hb, bmax * H * 4));
    fill(h0, bmax * H, 9, 1.0f);
    CK(cudaDeviceSynchronize());
    if (prof_layer >= 0) {
        /* one step of one layer between cudaProfilerStart/Stop, after warm-up: for
         * `ncu --profile-from-start off` (tests/gpu/profile_decode.sh) */
        if ((size_t)prof_layer >= m->n_layers || prof_batch < 1 || prof_batch > bmax) {
            fprintf(stderr, "bench-decode: --profile %d:%zu outside %zu layers / batch %zu\n",
                    prof_layer, prof_batch, m->n_layers, bmax);
            return 2;
        }
        for (int k = 0; k < 4; k++) {
            if (k == 3)
                CK(cudaProfilerStart());
            cudaMemcpyAsync(hb, h0, prof_batch * H * 4, cudaMemcpyDeviceToDevice, st);
            cm_scratch_reset(m);
            if (cm_layer_forward(m, NULL, (size_t)prof_layer, hb, prof_batch, ctx, &err)) {
                fprintf(stderr, "bench-decode: layer %d: %s\n", prof_layer, err.msg);
                return 3;
            }
            CK(cudaStreamSynchronize(st));
        }
        CK(cudaProfilerStop());
        return 0;
    }
    /* step_us: the layer's kernels back to back on the GPU (enqueued behind a spin, as
     * in a running decode where the host is ahead). host_us: CPU time to enqueue the
     * layer (no CUDA graphs): the floor of a step once the GPU work per layer shrinks
     * below it (e.g. at TP8). cold_us: enqueued with an idle GPU (the first launch's
     * latency included: how step_us was measured in the first 2026-11-28 H100 logs).
     * nopdl_us: step_us with programmatic dependent launch off (kc_set_pdl(0)).
     * graph_us: the layer captured in a CUDA graph (positions on the device, as
     * cm_forward's decode steps run it), one launch queued behind a spin; glaunch_us:
     * the host time of that launch, which replaces host_us. */
    const int pdl = kc_pdl_on();
    int32_t *dpos;
    {
        std::vector<int32_t> hp(bmax);
        for (size_t t = 0; t < bmax; t++)
            hp[t] = (int32_t)(ctx + t);
        CK(cudaMalloc(&dpos, bmax * 4));
        CK(cudaMemcpy(dpos, hp.data(), bmax * 4, cudaMemcpyHostToDevice));
    }
    printf("\n%-6s %-5s %6s %10s %10s %12s %8s %9s %9s %9s %9s %10s\n", "layer", "kind", "batch",
           "step_us", "MB_read", "roofline_us", "of_roof", "host_us", "cold_us", "nopdl_us",
           "graph_us", "glaunch_us");
    for (size_t li = 0; li < m->n_layers; li++) {
        cm_layer *L = &m->L[li];
        const rt_layer *hl = L->h;
        double attn = wbytes(&L->q_a) + wbytes(&L->q_b) + wbytes(&L->kv_a) + wbytes(&L->kv_b) +
                      wbytes(&L->o);
        for (size_t B : batches) {
            int rc = 0;
            /* time only the layer: the copy runs before the start event on the stream */
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0), cudaEventCreate(&e1);
            std::vector<double> v, hv, cv, nv;
            for (int k = 0; k < 3 * (reps + 2); k++) {
                /* phase 0: step_us, 1: cold_us, 2: nopdl_us */
                int phase = k / (reps + 2), kk = k % (reps + 2), cold = phase == 1;
                kc_set_pdl(phase == 2 ? 0 : pdl);
                cudaMemcpyAsync(hb, h0, B * H * 4, cudaMemcpyDeviceToDevice, st);
                cm_scratch_reset(m);
                if (!cold)
                    queue_ahead(st);
                cudaEventRecord(e0, st);
                double t0 = fu_now_s();
                rc |= cm_layer_forward(m, NULL, li, hb, B, ctx, &err);
                if (kk >= 2 && phase == 0)
                    hv.push_back((fu_now_s() - t0) * 1e6);
                cudaEventRecord(e1, st);
                cudaEventSynchronize(e1);
                float ms;
                cudaEventElapsedTime(&ms, e0, e1);
                if (kk >= 2)
                    (phase == 0 ? v : cold ? cv : nv).push_back(ms);
            }
            kc_set_pdl(pdl);
            if (rc) {
                fprintf(stderr, "bench-decode: layer %zu: %s\n", li, err.msg);
                return 3;
            }
            std::vector<double> gv, glv;
            if (B <= 64) { /* decode batches; prefill-sized steps launch eagerly */
                /* an eager run with device positions allocates what the kernels need
                 * (nothing may grow while capturing), then the capture */
                cm_set_device_positions(m, dpos, ctx + B);
                cudaMemcpyAsync(hb, h0, B * H * 4, cudaMemcpyDeviceToDevice, st);
                cm_scratch_reset(m);
                rc = cm_layer_forward(m, NULL, li, hb, B, ctx, &err);
                CK(cudaStreamSynchronize(st));
                cudaGraph_t gr = NULL;
                cudaGraphExec_t ge = NULL;
                CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                cm_scratch_reset(m);
                rc |= cm_layer_forward(m, NULL, li, hb, B, ctx, &err);
                CK(cudaStreamEndCapture(st, &gr));
                CK(cudaGraphInstantiate(&ge, gr, 0));
                cm_set_device_positions(m, NULL, 0);
                if (rc) {
                    fprintf(stderr, "bench-decode: layer %zu in a graph: %s\n", li, err.msg);
                    return 3;
                }
                for (int k = 0; k < reps + 2; k++) {
                    cudaMemcpyAsync(hb, h0, B * H * 4, cudaMemcpyDeviceToDevice, st);
                    queue_ahead(st);
                    cudaEventRecord(e0, st);
                    double t0 = fu_now_s();
                    CK(cudaGraphLaunch(ge, st));
                    double tl = (fu_now_s() - t0) * 1e6;
                    cudaEventRecord(e1, st);
                    cudaEventSynchronize(e1);
                    float ms;
                    cudaEventElapsedTime(&ms, e0, e1);
                    if (k >= 2)
                        gv.push_back(ms), glv.push_back(tl);
                }
                cudaGraphExecDestroy(ge);
                cudaGraphDestroy(gr);
            }
            double bytes = attn + (double)(ctx + B) * (R + P) * 4;
            if (!hl->moe) {
                bytes += wbytes(&L->gate) + wbytes(&L->up) + wbytes(&L->down);
            } else {
                bytes += wbytes(&L->router) + wbytes(&L->sh_gate) + wbytes(&L->sh_up) +
                         wbytes(&L->sh_down);
                size_t K = h->rcfg.top_k;
                std::vector<int32_t> idx(m->dbg_T * K);
                CK(cudaMemcpy(idx.data(), m->dbg_idx, idx.size() * 4, cudaMemcpyDeviceToHost));
                std::set<int32_t> distinct; /* experts this rank holds and read */
                for (int32_t e : idx)
                    if (e >= (int32_t)L->e0 && e < (int32_t)(L->e0 + hl->n_experts))
                        distinct.insert(e);
                double per = hl->n_experts ? wbytes(&hl->e_gate[0]) + wbytes(&hl->e_up[0]) +
                                                 wbytes(&hl->e_down[0])
                                           : 0;
                bytes += per * distinct.size();
            }
            double us = median(v) * 1000, roof = bytes / bw * 1e6;
            printf("%-6zu %-5s %6zu %10.1f %10.1f %12.1f %7.0f%% %9.1f %9.1f %9.1f", li,
                   hl->moe ? "moe" : "dense", B, us, bytes / 1e6, roof, 100 * roof / us,
                   median(hv), median(cv) * 1000, median(nv) * 1000);
            if (gv.empty())
                printf(" %9s %10s\n", "-", "-");
            else
                printf(" %9.1f %10.1f\n", median(gv) * 1000, median(glv));
            fflush(stdout);
        }
    }
    std::set<size_t> bb = {1, std::min<size_t>(8, bmax), bmax};
    for (size_t li = 0; li < m->n_layers; li++)
        if (li == 0 || (m->L[li].h->moe && (li == 0 || !m->L[li - 1].h->moe)))
            for (size_t B : bb)
                breakdown(m, li, B, ctx, reps);
    if (!quick || pattn)
        prefill_attention(m, reps);
    if (quick)
        return 0;
    /* prefill GEMMs at the model's shapes: our path (quantize + cuBLASLt) vs cuBLASLt alone */
    printf("\nprefill GEMM (M tokens x N x K), FP8 block-scaled, TFLOP/s\n");
    printf("%-22s %6s %6s %6s %10s %12s %8s\n", "weight", "M", "N", "K", "ours", "cuBLASLt", "ratio");
    struct shp {
        const char *name;
        const k_weight *w;
        size_t M;
    };
    std::vector<shp> shapes;
    for (size_t li = 0; li < m->n_layers; li++) {
        cm_layer *L = &m->L[li];
        if (li == 0) {
            shapes.push_back({"q_a_proj", &L->q_a, pm});
            shapes.push_back({"q_b_proj", &L->q_b, pm});
            shapes.push_back({"kv_a_proj_with_mqa", &L->kv_a, pm});
            shapes.push_back({"o_proj", &L->o, pm});
        }
        if (!L->h->moe && L->gate.data && shapes.size() < 8) {
            shapes.push_back({"dense gate_proj", &L->gate, pm});
            shapes.push_back({"dense down_proj", &L->down, pm});
        }
        if (L->h->moe && L->h->n_experts) {
            size_t per = pm * h->rcfg.top_k / h->rcfg.n_experts;
            shapes.push_back({"expert gate_proj", &L->h->e_gate[0], per});
            shapes.push_back({"expert down_proj", &L->h->e_down[0], per});
            break;
        }
    }
    float *x, *y;
    size_t maxk = 0, maxn = 0;
    for (auto &s : shapes)
        maxk = std::max(maxk, s.w->cols), maxn = std::max(maxn, s.w->rows);
    CK(cudaMalloc(&x, pm * maxk * 4));
    CK(cudaMalloc(&y, pm * maxn * 4));
    fill(x, pm * maxk, 3, 1.0f);
    for (auto &s : shapes) {
        k_weight w;
        if (s.w == &m->L[0].q_a || s.w == &m->L[0].q_b || s.w == &m->L[0].kv_a ||
            s.w == &m->L[0].o || s.w->data >= (const void *)m->arena)
            w = *s.w;
        /* expert views are host views; translate into the arena */
        if ((const char *)s.w->data >= m->base && (const char *)s.w->data < m->base + m->arena_bytes) {
            w = *s.w;
            w.data = m->arena + ((const char *)s.w->data - m->base);
            w.scale = (const float *)(m->arena + ((const char *)s.w->scale - m->base));
        }
        size_t M = s.M, N = w.rows, K = w.cols;
        double fl = 2.0 * M * N * K;
        int grc = kc_gemm(m->kc, x, K, M, &w, y, N, 0, 2);
        if (grc) {
            printf("%-22s failed: %s\n", s.name, kc_strerror(grc));
            continue;
        }
        double ours = time_ms([&] { kc_gemm(m->kc, x, K, M, &w, y, N, 0, 2); }, reps);
        double lt = -1;
        if (kc_gemm_fp8_prep(m->kc, x, K, M, K) == 0) {
            CK(cudaDeviceSynchronize());
            lt = time_ms([&] { kc_gemm_fp8_prepped(m->kc, M, &w, y, N); }, reps);
        }
        printf("%-22s %6zu %6zu %6zu %10.1f %12.1f %7.0f%%\n", s.name, M, N, K, fl / ours / 1e9,
               lt > 0 ? fl / lt / 1e9 : 0.0, lt > 0 ? 100 * lt / ours : 0.0);
    }
    { /* q_a and kv_a read the same input: one quantization for both */
        const k_weight *qa = &m->L[0].q_a, *kva = &m->L[0].kv_a;
        size_t M = pm, K = qa->cols;
        double fl = 2.0 * M * (qa->rows + kva->rows) * K;
        double ours = time_ms([&] {
            kc_gemm_pair(m->kc, x, K, M, qa, y, qa->rows, kva, y + M * qa->rows, kva->rows);
        }, reps);
        double lt = -1;
        if (kc_gemm_fp8_prep(m->kc, x, K, M, K) == 0) {
            CK(cudaDeviceSynchronize());
            lt = time_ms([&] {
                kc_gemm_fp8_prepped(m->kc, M, qa, y, qa->rows);
                kc_gemm_fp8_prepped(m->kc, M, kva, y + M * qa->rows, kva->rows);
            }, reps);
        }
        printf("%-22s %6zu %6zu %6zu %10.1f %12.1f %7.0f%%\n", "q_a+kv_a (one quant)", M,
               qa->rows + kva->rows, K, fl / ours / 1e9, lt > 0 ? fl / lt / 1e9 : 0.0,
               lt > 0 ? 100 * lt / ours : 0.0);
    }
    /* the cuBLASLt FP8 block-scaled rate on a large square problem, and BF16 for scale */
    {
        size_t n = 8192;
        std::vector<uint8_t> hq(n * n);
        for (size_t i = 0; i < hq.size(); i++)
            hq[i] = (uint8_t)((i * 2654435761u >> 13) & 0x77);
        std::vector<float> hs((n / 128) * (n / 128), 0.01f);
        uint8_t *q;
        float *sc, *xx, *yy;
        CK(cudaMalloc(&q, n * n));
        CK(cudaMalloc(&sc, hs.size() * 4));
        CK(cudaMalloc(&xx, n * n * 4));
        CK(cudaMalloc(&yy, n * n * 4));
        CK(cudaMemcpy(q, hq.data(), n * n, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(sc, hs.data(), hs.size() * 4, cudaMemcpyHostToDevice));
        fill(xx, n * n, 5, 1.0f);
        k_weight w = {K_W_FP8, q, sc, n, n, n / 128};
        double fl = 2.0 * n * n * n;
        if (kc_gemm_fp8_prep(m->kc, xx, n, n, n) == 0) {
            CK(cudaDeviceSynchronize());
            double lt = time_ms([&] { kc_gemm_fp8_prepped(m->kc, n, &w, yy, n); }, 5);
            printf("cuBLASLt FP8 block-scaled 8192^3: %.1f TFLOP/s\n", fl / lt / 1e9);
        }
        uint16_t *ab = (uint16_t *)q;
        CK(cudaFree(q));
        CK(cudaMalloc(&ab, n * n * 2));
        kc_f32_to_bf16(xx, ab, n * n, st);
        int brc = kc_gemm_bf16_lt(m->kc, ab, n, ab, n, n, yy);
        if (brc) {
            printf("cuBLASLt BF16 8192^3: failed: %s\n", kc_strerror(brc));
        } else {
            double tb = time_ms([&] { kc_gemm_bf16_lt(m->kc, ab, n, ab, n, n, yy); }, 5);
            printf("cuBLASLt BF16 8192^3: %.1f TFLOP/s\n", fl / tb / 1e9);
        }
    }
    cm_free(m);
    mf_free(mf);
    return 0;
}
