/* kc_silu_mul / kc_moe: the SiLU-gated MLP pieces on CUDA, mirroring kernels/mlp.c.
 * Dense MLPs and the shared expert are three kc_gemm calls around kc_silu_mul; routed
 * experts go through kc_moe, which groups the (token, expert) slots by expert on the
 * device (no host round trip, so decode can be captured in a graph). */
#include <stdlib.h>

#include "cuda_kernels.h"
#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"
#include "gemv.cuh"

__global__ void silu_mul_kernel(const float *g, const float *u, float *h, size_t n)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

int kc_silu_mul(const float *g, const float *u, float *h, size_t n, cudaStream_t st)
{
    if (!n)
        return 0;
    silu_mul_kernel<<<kc_blocks(n, 256), 256, 0, st>>>(g, u, h, n);
    KC_LAUNCH_CHECK();
    return 0;
}

struct kc_moe_w {
    size_t n, I, D; /* experts, intermediate (gate/up rows), model dim (down rows) */
    int type;
    size_t sld_gu, sld_d;
    /* device tables [n]: data and scale pointers of gate, up, down */
    const void **tab;
};

enum { T_GD, T_GS, T_UD, T_US, T_DD, T_DS, T_N };

int kc_moe_prepare(kc_moe_w **out, size_t n, const k_weight *gate, const k_weight *up,
                   const k_weight *down)
{
    *out = NULL;
    if (n == 0)
        return -1;
    size_t I = gate[0].rows, D = gate[0].cols;
    for (size_t e = 0; e < n; e++)
        if (gate[e].rows != I || up[e].rows != I || gate[e].cols != D || up[e].cols != D ||
            down[e].rows != D || down[e].cols != I || gate[e].type != gate[0].type ||
            up[e].type != gate[0].type || down[e].type != gate[0].type)
            return -1;
    size_t eb = gate[0].type == K_W_FP8 ? 1 : gate[0].type == K_W_BF16 ? 2 : 4;
    if ((D * eb) % 16 || (I * eb) % 16 || D % 4 || I % 4)
        return -1; /* the vector kernel's alignment */
    const void **h = (const void **)calloc(T_N * n, sizeof *h);
    kc_moe_w *m = (kc_moe_w *)calloc(1, sizeof *m);
    if (!h || !m) {
        free(h);
        free(m);
        return -1;
    }
    for (size_t e = 0; e < n; e++) {
        h[T_GD * n + e] = gate[e].data, h[T_GS * n + e] = gate[e].scale;
        h[T_UD * n + e] = up[e].data, h[T_US * n + e] = up[e].scale;
        h[T_DD * n + e] = down[e].data, h[T_DS * n + e] = down[e].scale;
    }
    m->n = n, m->I = I, m->D = D, m->type = (int)gate[0].type;
    m->sld_gu = gate[0].scale_ld, m->sld_d = down[0].scale_ld;
    cudaError_t ce = cudaMalloc((void **)&m->tab, T_N * n * sizeof(void *));
    if (ce == cudaSuccess)
        ce = cudaMemcpy(m->tab, h, T_N * n * sizeof(void *), cudaMemcpyHostToDevice);
    free(h);
    if (ce != cudaSuccess) {
        cudaFree(m->tab);
        free(m);
        return (int)ce;
    }
    *out = m;
    return 0;
}

void kc_moe_free(kc_moe_w *m)
{
    if (!m)
        return;
    cudaFree(m->tab);
    free(m);
}

/* One block: counting sort of the slots by local expert. meta = [n_active, act_e[A],
 * act_start[A], act_cnt[A]] with A = n experts, active experts in increasing id order. */
__global__ void moe_plan_kernel(const int32_t *idx, size_t S, size_t e0, size_t n, int *order,
                                int *meta)
{
    extern __shared__ int sh[]; /* cnt[n], fill[n] */
    int *cnt = sh, *fill = sh + n;
    for (size_t e = threadIdx.x; e < n; e += blockDim.x)
        cnt[e] = 0, fill[e] = 0;
    __syncthreads();
    for (size_t s = threadIdx.x; s < S; s += blockDim.x) {
        long e = (long)idx[s] - (long)e0;
        if (e >= 0 && e < (long)n)
            atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    int *act_e = meta + 1, *act_start = meta + 1 + n, *act_cnt = meta + 1 + 2 * n;
    if (threadIdx.x < 32) { /* warp 0: exclusive scan of the counts, 32 experts a step */
        int lane = threadIdx.x, na = 0, pos = 0;
        for (size_t b = 0; b < n; b += 32) {
            size_t e = b + lane;
            int c = e < n ? cnt[e] : 0, inc = c;
            for (int o = 1; o < 32; o <<= 1) {
                int v = __shfl_up_sync(0xffffffffu, inc, o);
                if (lane >= o)
                    inc += v;
            }
            unsigned act = __ballot_sync(0xffffffffu, c > 0);
            if (e < n) {
                int start = pos + inc - c;
                fill[e] = start;
                if (c) {
                    int a = na + __popc(act & ((1u << lane) - 1));
                    act_e[a] = (int)e, act_start[a] = start, act_cnt[a] = c;
                }
            }
            na += __popc(act);
            pos += __shfl_sync(0xffffffffu, inc, 31);
        }
        if (lane == 0)
            meta[0] = na;
    }
    __syncthreads();
    for (size_t s = threadIdx.x; s < S; s += blockDim.x) {
        long e = (long)idx[s] - (long)e0;
        if (e >= 0 && e < (long)n)
            order[atomicAdd(&fill[e], 1)] = (int)s;
    }
}

/* h[p, i] = silu(gate_e[i] . x[tok(p)]) * (up_e[i] . x[tok(p)]) for the sorted slots p of
 * active expert blockIdx.x, rows i of blockIdx.y's tile (gemv.cuh's tile_gemv with the
 * fused GLU): each weight byte is read once per MT slots of its expert. */
template <int WT, int MT>
__global__ void __launch_bounds__(256) moe_up_kernel(const float *x, size_t ldx, size_t top_k,
                                                     const int *order, const int *meta,
                                                     const void *const *tab, size_t n, size_t I,
                                                     size_t D, size_t sld, int ks, float *h)
{
    constexpr int RB = tg_rb(2);
    __shared__ tg_smem<MT, RB, 2> sm;
    int a = blockIdx.x;
    if (a >= meta[0])
        return; /* block-uniform */
    int e = meta[1 + a], st = meta[1 + n + a], cnt = meta[1 + 2 * n + a];
    const size_t row0 = (size_t)blockIdx.y * (size_t)(8 / ks) * RB;
    const uint8_t *W[2] = {(const uint8_t *)tab[T_GD * n + e], (const uint8_t *)tab[T_UD * n + e]};
    const float *S[2] = {(const float *)tab[T_GS * n + e], (const float *)tab[T_US * n + e]};
    const size_t sl[2] = {sld, sld};
    for (int c0 = 0; c0 < cnt; c0 += MT) {
        int nm = cnt - c0 < MT ? cnt - c0 : MT;
        if constexpr (MT > 2) { /* ks is 1 (moe_passes) */
            __shared__ const float *xrow[MT];
            if (threadIdx.x < MT)
                xrow[threadIdx.x] =
                    x + (size_t)(order[st + c0 + ((int)threadIdx.x < nm ? threadIdx.x : 0)] / top_k) * ldx;
            tile_gemv_staged<WT, MT, RB, 2, 0>(W, S, sl, row0, I, D, xrow, nm, sm);
        } else {
            const float *xr[MT];
#pragma unroll
            for (int m = 0; m < MT; m++)
                xr[m] = x + (size_t)(order[st + c0 + (m < nm ? m : 0)] / top_k) * ldx;
            tile_gemv<WT, MT, RB, 2, 0>(W, S, sl, row0, I, D, xr, nm, ks, sm);
        }
        for (int t = threadIdx.x; t < (8 / ks) * RB * MT; t += blockDim.x) {
            int g = t / (RB * MT), r = (t / MT) % RB, m = t % MT;
            size_t i = row0 + (size_t)g * RB + r;
            if (i >= I || m >= nm)
                continue;
            float gv = sm.res[(g * 2 * RB + r) * MT + m], uv = sm.res[(g * 2 * RB + RB + r) * MT + m];
            h[(size_t)(st + c0 + m) * I + i] = gv / (1.0f + expf(-gv)) * uv;
        }
        __syncthreads(); /* sm.res is rewritten by the next tile */
    }
}

/* out[slot(p), d] = down_e[d] . h[p] */
template <int WT, int MT>
__global__ void __launch_bounds__(256) moe_down_kernel(const float *h, const int *order,
                                                       const int *meta, const void *const *tab,
                                                       size_t n, size_t I, size_t D, size_t sld,
                                                       int ks, float *out)
{
    constexpr int RB = tg_rb(1);
    __shared__ tg_smem<MT, RB, 1> sm;
    int a = blockIdx.x;
    if (a >= meta[0])
        return; /* block-uniform */
    int e = meta[1 + a], st = meta[1 + n + a], cnt = meta[1 + 2 * n + a];
    const size_t row0 = (size_t)blockIdx.y * (size_t)(8 / ks) * RB;
    const uint8_t *W[1] = {(const uint8_t *)tab[T_DD * n + e]};
    const float *S[1] = {(const float *)tab[T_DS * n + e]};
    const size_t sl[1] = {sld};
    for (int c0 = 0; c0 < cnt; c0 += MT) {
        int nm = cnt - c0 < MT ? cnt - c0 : MT;
        if constexpr (MT > 2) { /* ks is 1 (moe_passes) */
            __shared__ const float *xrow[MT];
            if (threadIdx.x < MT)
                xrow[threadIdx.x] = h + (size_t)(st + c0 + ((int)threadIdx.x < nm ? threadIdx.x : 0)) * I;
            tile_gemv_staged<WT, MT, RB, 1, 0>(W, S, sl, row0, D, I, xrow, nm, sm);
        } else {
            const float *xr[MT];
#pragma unroll
            for (int m = 0; m < MT; m++)
                xr[m] = h + (size_t)(st + c0 + (m < nm ? m : 0)) * I;
            tile_gemv<WT, MT, RB, 1, 0>(W, S, sl, row0, D, I, xr, nm, ks, sm);
        }
        for (int t = threadIdx.x; t < (8 / ks) * RB * MT; t += blockDim.x) {
            int g = t / (RB * MT), r = (t / MT) % RB, m = t % MT;
            size_t d = row0 + (size_t)g * RB + r;
            if (d < D && m < nm)
                out[(size_t)order[st + c0 + m] * D + d] = sm.res[(g * RB + r) * MT + m];
        }
        __syncthreads();
    }
}

/* Launch both expert passes with tiles of MT slots (an expert with more loops). */
template <int WT, int MT>
static int moe_passes(const float *x, size_t ldx, size_t top_k, const int *order, const int *meta,
                      const kc_moe_w *m, size_t A, float *h, float *out, cudaStream_t st)
{
    constexpr int V = wvec<WT>::V;
    int ksu = MT > 2 ? 1 : tg_ks(m->D, V), ksd = MT > 2 ? 1 : tg_ks(m->I, V);
    dim3 gu((unsigned)A, kc_blocks(m->I, (unsigned)((8 / ksu) * tg_rb(2))));
    dim3 gd((unsigned)A, kc_blocks(m->D, (unsigned)((8 / ksd) * tg_rb(1))));
    moe_up_kernel<WT, MT><<<gu, 256, 0, st>>>(x, ldx, top_k, order, meta, m->tab, m->n, m->I,
                                              m->D, m->sld_gu, ksu, h);
    KC_LAUNCH_CHECK();
    moe_down_kernel<WT, MT><<<gd, 256, 0, st>>>(h, order, meta, m->tab, m->n, m->I, m->D,
                                                m->sld_d, ksd, out);
    KC_LAUNCH_CHECK();
    return 0;
}

template <int WT>
static int moe_run(const float *x, size_t ldx, size_t tn, size_t top_k, const int *order,
                   const int *meta, const kc_moe_w *m, size_t A, float *h, float *out,
                   cudaStream_t st)
{
    /* An expert gets at most one slot per token (the router picks distinct experts).
     * Up to 16 tokens most experts see one or two: tiles of 1 or 2 slots (an expert with
     * more loops; its rows come back from L2). More tokens: 8-slot tiles with the
     * activations staged in shared memory (tile_gemv_staged). */
    if (tn <= 1)
        return moe_passes<WT, 1>(x, ldx, top_k, order, meta, m, A, h, out, st);
    if (tn <= 16)
        return moe_passes<WT, 2>(x, ldx, top_k, order, meta, m, A, h, out, st);
    return moe_passes<WT, 8>(x, ldx, top_k, order, meta, m, A, h, out, st);
}

/* y[t, d] += sum_k w[t,k] out[t*K+k, d] over local slots, in k order. */
__global__ void moe_combine_kernel(const float *out, const int32_t *idx, const float *w,
                                   size_t T, size_t K, size_t e0, size_t n, size_t D, float *y,
                                   size_t ldy)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= T * D)
        return;
    size_t t = i / D, d = i % D;
    float acc = 0.0f;
    bool any = false;
    for (size_t k = 0; k < K; k++) {
        long e = (long)idx[t * K + k] - (long)e0;
        if (e >= 0 && e < (long)n) {
            acc += w[t * K + k] * out[(t * K + k) * D + d];
            any = true;
        }
    }
    if (any)
        y[t * ldy + d] += acc;
}

#define MOE_CHUNK 512 /* tokens per pass: bounds the scratch */

int kc_moe(kc_ctx *c, const kc_moe_w *m, const float *x, size_t ldx, size_t T,
           const int32_t *idx, const float *w, size_t top_k, size_t e0, float *y, size_t ldy)
{
    cudaStream_t st = kc_ctx_stream(c);
    if (ldx % 4 || ((uintptr_t)x & 15))
        return -1;
    size_t n = m->n, I = m->I, D = m->D;
    for (size_t t0 = 0; t0 < T; t0 += MOE_CHUNK) {
        size_t tn = T - t0 < MOE_CHUNK ? T - t0 : MOE_CHUNK, S = tn * top_k;
        size_t A = S < n ? S : n;
        int *order = (int *)kc_ctx_scratch(c, 4, S * sizeof(int));
        int *meta = (int *)kc_ctx_scratch(c, 5, (1 + 3 * n) * sizeof(int));
        float *h = (float *)kc_ctx_scratch(c, 6, S * I * sizeof(float));
        float *out = (float *)kc_ctx_scratch(c, 7, S * D * sizeof(float));
        if (!order || !meta || !h || !out)
            return -1;
        const int32_t *ci = idx + t0 * top_k;
        const float *cx = x + t0 * ldx;
        moe_plan_kernel<<<1, 1024, 2 * n * sizeof(int), st>>>(ci, S, e0, n, order, meta);
        KC_LAUNCH_CHECK();
        int rc = m->type == K_W_FP8    ? moe_run<2>(cx, ldx, tn, top_k, order, meta, m, A, h, out, st)
                 : m->type == K_W_BF16 ? moe_run<1>(cx, ldx, tn, top_k, order, meta, m, A, h, out, st)
                                       : moe_run<0>(cx, ldx, tn, top_k, order, meta, m, A, h, out, st);
        if (rc)
            return rc;
        moe_combine_kernel<<<kc_blocks(tn * D, 256), 256, 0, st>>>(out, ci, w + t0 * top_k, tn,
                                                                 top_k, e0, n, D, y + t0 * ldy,
                                                                 ldy);
        KC_LAUNCH_CHECK();
    }
    return 0;
}
