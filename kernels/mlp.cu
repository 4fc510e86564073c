/* kc_moe: the routed (and shared) experts on CUDA, mirroring kernels/mlp.c.
 * Dense MLPs are kc_gemm_glu + kc_gemm (gemm.cu). Routed experts go through kc_moe, which
 * groups the (token, expert) slots by expert on the device (no host round trip, so
 * decode can be captured in a graph); up to 2 tokens the shared expert rides in the
 * same two launches as one more expert that every token uses (its own launches cost
 * ~3 us more per MoE layer at TP8 on H100: small GEMVs do not fill the GPU). */
#include <algorithm>
#include <vector>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_kernels.h"
#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"
#include "gemv.cuh"
#include "gemv_a8.cuh"

enum { T_GD, T_GS, T_UD, T_US, T_DD, T_DS, T_N };

struct kc_moe_w {
    size_t n, I, D; /* experts, intermediate (gate/up rows), model dim (down rows) */
    size_t Is;      /* the shared expert's intermediate rows; 0: no shared expert here */
    int type;
    size_t sld_gu, sld_d, sld_gu_s, sld_d_s;
    /* device tables [n + 1]: data and scale pointers of gate, up, down; entry n is the
     * shared expert (when Is) */
    const void **tab;
    k_weight *hw; /* host copies of the views: gate[n], up[n], down[n] (moe_gemm_run) */
    /* the same, when every routed expert's tensors lie at one stride (the shard writer
     * puts them so): expert e's are base + e * stride, and the shared expert's are sh */
    bool strided;
    uintptr_t base[T_N], stride[T_N], sh[T_N];
};

static int moe_w_ok(const k_weight *g, const k_weight *u, const k_weight *d, size_t I, size_t D,
                    int type)
{
    size_t eb = type == K_W_FP8 ? 1 : type == K_W_BF16 ? 2 : 4;
    return g->rows == I && u->rows == I && g->cols == D && u->cols == D && d->rows == D &&
           d->cols == I && (int)g->type == type && (int)u->type == type && (int)d->type == type &&
           (D * eb) % 16 == 0 && (I * eb) % 16 == 0 && D % 4 == 0 && I % 4 == 0 &&
           u->scale_ld == g->scale_ld; /* the vector kernel's alignment, one gate/up ld */
}

int kc_moe_prepare(kc_moe_w **out, size_t n, const k_weight *gate, const k_weight *up,
                   const k_weight *down, const k_weight *shared)
{
    *out = NULL;
    if (n == 0)
        return -1;
    size_t I = gate[0].rows, D = gate[0].cols, N = n + (shared ? 1 : 0);
    int type = (int)gate[0].type;
    for (size_t e = 0; e < n; e++)
        if (!moe_w_ok(&gate[e], &up[e], &down[e], I, D, type))
            return -1;
    if (shared && !moe_w_ok(&shared[0], &shared[1], &shared[2], shared[0].rows, D, type))
        return -1;
    const void **h = (const void **)calloc(T_N * N, sizeof *h);
    kc_moe_w *m = (kc_moe_w *)calloc(1, sizeof *m);
    k_weight *hw = (k_weight *)calloc(3 * n, sizeof *hw);
    if (!h || !m || !hw) {
        free(h);
        free(m);
        free(hw);
        return -1;
    }
    for (size_t e = 0; e < n; e++)
        hw[e] = gate[e], hw[n + e] = up[e], hw[2 * n + e] = down[e];
    m->hw = hw;
    for (size_t e = 0; e < N; e++) {
        const k_weight *g = e < n ? &gate[e] : &shared[0], *u = e < n ? &up[e] : &shared[1],
                       *d = e < n ? &down[e] : &shared[2];
        h[T_GD * N + e] = g->data, h[T_GS * N + e] = g->scale;
        h[T_UD * N + e] = u->data, h[T_US * N + e] = u->scale;
        h[T_DD * N + e] = d->data, h[T_DS * N + e] = d->scale;
    }
    m->n = n, m->I = I, m->D = D, m->type = type;
    m->strided = true;
    for (int t = 0; t < T_N; t++) {
        uintptr_t b = (uintptr_t)h[t * N], s = n > 1 ? (uintptr_t)h[t * N + 1] - b : 0;
        for (size_t e = 0; e < n; e++)
            m->strided &= (uintptr_t)h[t * N + e] == b + e * s;
        m->base[t] = b, m->stride[t] = s, m->sh[t] = shared ? (uintptr_t)h[t * N + n] : 0;
    }
    m->sld_gu = gate[0].scale_ld, m->sld_d = down[0].scale_ld;
    if (shared)
        m->Is = shared[0].rows, m->sld_gu_s = shared[0].scale_ld, m->sld_d_s = shared[2].scale_ld;
    cudaError_t ce = cudaMalloc((void **)&m->tab, T_N * N * sizeof(void *));
    if (ce == cudaSuccess)
        ce = cudaMemcpy(m->tab, h, T_N * N * sizeof(void *), cudaMemcpyHostToDevice);
    free(h);
    if (ce != cudaSuccess) {
        cudaFree(m->tab);
        free(m->hw);
        free(m);
        return (int)ce;
    }
    *out = m;
    return 0;
}

/* Up to 2 tokens the shared expert fits the routed experts' 1- or 2-slot tile; with more
 * it would loop over its weights per tile while the routed experts' blocks wait on it
 * (H100, batch 8: +160 us a layer), so the caller runs it as its own MLP. */
#define MOE_SHARED_MAX_T 2

int kc_moe_has_shared(const kc_moe_w *m, size_t T)
{
    return m && m->Is && T <= MOE_SHARED_MAX_T;
}

void kc_moe_free(kc_moe_w *m)
{
    if (!m)
        return;
    cudaFree(m->tab);
    free(m->hw);
    free(m);
}

/* What the expert kernels read, by value. Slots p < S are routed (order[p] = s = t *
 * top_k + k); slots S + t are the shared expert's, one per token (entry n). N: the
 * experts in use (n, or n + 1 with the shared one); ts: the table's row length. */
struct moe_k {
    const void *const *tab; /* [T_N][ts] */
    size_t n, N, ts, I, Is, D, ldh, S, top_k, sld_gu, sld_d, sld_gu_s, sld_d_s;
    const int32_t *idx; /* one token: no plan, block row = slot (see moe_entry) */
    size_t e0;
    int early; /* one token with the shared expert: moe_up runs it first (block row 0) */
    bool strided; /* kc_moe_w's: pointers from base, stride, sh, not tab */
    uintptr_t base[T_N], stride[T_N], sh[T_N];
};

/* Pointer t (T_GD..T_DS) of local expert e (n: the shared expert). Strided, it costs no
 * load: at batch 1 a gate/up block's chain before its first weight load is the router
 * output, then this; the table would add a dependent L2 round trip per block. */
template <typename P>
__device__ __forceinline__ const P *moe_ptr(const moe_k &a, int t, size_t e)
{
    if (!a.strided)
        return (const P *)a.tab[t * a.ts + e];
    return (const P *)(e < a.n ? a.base[t] + e * a.stride[t] : a.sh[t]);
}

/* One block: counting sort of the slots by local expert. meta = [n_active, act_e[N],
 * act_start[N], act_cnt[N]] (N = n + 1 with a shared expert), active experts in
 * increasing id order, then the shared expert over slots [S, S + tn). */
__global__ void moe_plan_kernel(const int32_t *idx, size_t S, size_t e0, size_t n, size_t N,
                                size_t tn, int *order, int *meta)
{
    extern __shared__ int sh[]; /* cnt[n], fill[n] */
    int *cnt = sh, *fill = sh + n;
    kc_pdl_wait();
    for (size_t e = threadIdx.x; e < n; e += blockDim.x)
        cnt[e] = 0, fill[e] = 0;
    __syncthreads();
    for (size_t s = threadIdx.x; s < S; s += blockDim.x) {
        long e = (long)idx[s] - (long)e0;
        if (e >= 0 && e < (long)n)
            atomicAdd(&cnt[e], 1);
    }
    __syncthreads();
    int *act_e = meta + 1, *act_start = meta + 1 + N, *act_cnt = meta + 1 + 2 * N;
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
        if (lane == 0) {
            if (N > n) /* the shared expert: every token */
                act_e[na] = (int)n, act_start[na] = (int)S, act_cnt[na] = (int)tn, na++;
            meta[0] = na;
        }
    }
    __syncthreads();
    for (size_t s = threadIdx.x; s < S; s += blockDim.x) {
        long e = (long)idx[s] - (long)e0;
        if (e >= 0 && e < (long)n)
            order[atomicAdd(&fill[e], 1)] = (int)s;
    }
    if (N > n)
        for (size_t t = threadIdx.x; t < tn; t += blockDim.x)
            order[S + t] = (int)(S + t);
}

/* the token of slot value v */
__device__ __forceinline__ size_t moe_tok(const moe_k &a, int v)
{
    return (size_t)v < a.S ? (size_t)v / a.top_k : (size_t)v - a.S;
}

/* Expert e, first sorted slot st and slot count of block row ai; false: nothing to do.
 * From the plan (its four words load together; ai < N keeps them in bounds), or with
 * one token (a.idx) straight from the router output: row ai < S is slot ai, row S the
 * shared expert. That skips the plan kernel and a dependent load per block (at batch 1
 * each block streams only a few rows, so the lookups before its first weight load
 * count). */
__device__ __forceinline__ bool moe_entry(const moe_k &a, const int *meta, int ai, int &e, int &st,
                                          int &cnt)
{
    if (a.idx) {
        if ((size_t)ai < a.S) {
            long v = (long)a.idx[ai] - (long)a.e0;
            if (v < 0 || v >= (long)a.n)
                return false;
            e = (int)v;
        } else {
            e = (int)a.n;
        }
        st = ai, cnt = 1;
        return true;
    }
    const int na = meta[0];
    e = meta[1 + ai], st = meta[1 + a.N + ai], cnt = meta[1 + 2 * a.N + ai];
    return ai < na;
}

/* slot value (router slot, or S + token) of sorted slot p */
__device__ __forceinline__ int moe_slot(const moe_k &a, const int *order, int p)
{
    return a.idx ? p : order[p];
}

/* h[p, i] = silu(gate_e[i] . x[tok(p)]) * (up_e[i] . x[tok(p)]) for the sorted slots p of
 * active expert blockIdx.y, rows i of blockIdx.x's tile (gemv.cuh's tile_gemv with the
 * fused GLU): each weight byte is read once per MT slots of its expert. */
template <int WT, int MT, int MINB>
__global__ void __launch_bounds__(256, MINB) moe_up_kernel(const float *x, size_t ldx, const int *order,
                                                     const int *meta, moe_k a, int ks, float *h)
{
    constexpr int RB = tg_rb(2);
    __shared__ tg_smem<MT, RB, 2> sm;
    int e, st, cnt, ai = (int)blockIdx.y;
    /* One token with the shared expert (a.early): its rows are block row 0, dispatched
     * first, and they need nothing the kernel in front (the router's top-k) writes: x was
     * written before the router GEMV (complete by now), h is scratch no running kernel
     * reads. So they stream their weights while the top-k runs, and wait (PDL) only at
     * the end (H200, TP1 MoE layer at batch 1: -5 us; a TP8/EP8 rank: -6 us). */
    const bool early = a.early && ai == 0;
    if (a.early)
        ai = early ? (int)a.S : ai - 1;
    if (!early)
        kc_pdl_wait(); /* the expert comes from the router (or the plan) */
    if (!moe_entry(a, meta, ai, e, st, cnt))
        return; /* block-uniform */
    const size_t I = (size_t)e < a.n ? a.I : a.Is;
    const size_t row0 = (size_t)blockIdx.x * (size_t)(8 / ks) * RB;
    if (row0 >= I)
        return; /* the shared expert is narrower at TP > 1; block-uniform */
    const uint8_t *W[2] = {moe_ptr<uint8_t>(a, T_GD, e), moe_ptr<uint8_t>(a, T_UD, e)};
    const float *S[2] = {moe_ptr<float>(a, T_GS, e), moe_ptr<float>(a, T_US, e)};
    const size_t sld = (size_t)e < a.n ? a.sld_gu : a.sld_gu_s, sl[2] = {sld, sld};
    for (int c0 = 0; c0 < cnt; c0 += MT) {
        int nm = cnt - c0 < MT ? cnt - c0 : MT;
        if constexpr (MT > 2) { /* ks is 1 (moe_passes) */
            __shared__ const float *xrow[MT];
            if (threadIdx.x < MT)
                xrow[threadIdx.x] =
                    x + moe_tok(a, moe_slot(a, order, st + c0 + ((int)threadIdx.x < nm ? threadIdx.x : 0))) * ldx;
            tile_gemv_staged<WT, MT, RB, 2, 0>(W, S, sl, row0, I, a.D, xrow, nm, sm);
        } else {
            const float *xr[MT];
#pragma unroll
            for (int m = 0; m < MT; m++)
                xr[m] = x + moe_tok(a, moe_slot(a, order, st + c0 + (m < nm ? m : 0))) * ldx;
            tile_gemv<WT, MT, RB, 2, 0, false>(W, S, sl, row0, I, a.D, xr, nm, ks, sm);
        }
        for (int t = threadIdx.x; t < (8 / ks) * RB * MT; t += blockDim.x) {
            int g = t / (RB * MT), r = (t / MT) % RB, m = t % MT;
            size_t i = row0 + (size_t)g * RB + r;
            if (i >= I || m >= nm)
                continue;
            float gv = sm.res[(g * 2 * RB + r) * MT + m], uv = sm.res[(g * 2 * RB + RB + r) * MT + m];
            h[(size_t)(st + c0 + m) * a.ldh + i] = kc_silu_mul(gv, uv);
        }
        __syncthreads(); /* sm.res is rewritten by the next tile */
    }
    if (early)
        kc_pdl_wait(); /* every thread waits once, converged */
}

/* out[slot(p), d] = down_e[d] . h[p]. MINB: blocks per SM the registers must allow. */
template <int WT, int MT, int MINB>
__global__ void __launch_bounds__(256, MINB) moe_down_kernel(const float *h, const int *order,
                                                       const int *meta, moe_k a, int ks,
                                                       float *out)
{
    constexpr int RB = tg_rb(1);
    __shared__ tg_smem<MT, RB, 1> sm;
    int e, st, cnt;
    /* The expert comes from the router (or the plan), launched before moe_up: complete
     * before this kernel's blocks run (kc_pdl_wait's contract), so the lookups and the
     * first weight loads go ahead of the wait for h (1-2 token tiles, tile_gemv PRE). */
    if (!moe_entry(a, meta, blockIdx.y, e, st, cnt))
        return; /* block-uniform */
    if constexpr (MT > 2)
        kc_pdl_wait();
    const size_t I = (size_t)e < a.n ? a.I : a.Is, D = a.D;
    const size_t row0 = (size_t)blockIdx.x * (size_t)(8 / ks) * RB;
    const uint8_t *W[1] = {moe_ptr<uint8_t>(a, T_DD, e)};
    const float *S[1] = {moe_ptr<float>(a, T_DS, e)};
    const size_t sl[1] = {(size_t)e < a.n ? a.sld_d : a.sld_d_s};
    for (int c0 = 0; c0 < cnt; c0 += MT) {
        int nm = cnt - c0 < MT ? cnt - c0 : MT;
        if constexpr (MT > 2) { /* ks is 1 (moe_passes) */
            __shared__ const float *xrow[MT];
            if (threadIdx.x < MT)
                xrow[threadIdx.x] = h + (size_t)(st + c0 + ((int)threadIdx.x < nm ? threadIdx.x : 0)) * a.ldh;
            tile_gemv_staged<WT, MT, RB, 1, 0>(W, S, sl, row0, D, I, xrow, nm, sm);
        } else {
            const float *xr[MT];
#pragma unroll
            for (int m = 0; m < MT; m++)
                xr[m] = h + (size_t)(st + c0 + (m < nm ? m : 0)) * a.ldh;
            if (c0 == 0)
                tile_gemv<WT, MT, RB, 1, 0, true>(W, S, sl, row0, D, I, xr, nm, ks, sm);
            else
                tile_gemv<WT, MT, RB, 1, 0, false>(W, S, sl, row0, D, I, xr, nm, ks, sm);
        }
        for (int t = threadIdx.x; t < (8 / ks) * RB * MT; t += blockDim.x) {
            int g = t / (RB * MT), r = (t / MT) % RB, m = t % MT;
            size_t d = row0 + (size_t)g * RB + r;
            if (d < D && m < nm)
                out[(size_t)moe_slot(a, order, st + c0 + m) * D + d] = sm.res[(g * RB + r) * MT + m];
        }
        __syncthreads();
    }
}

/* More than 16 tokens, FP8 weights (model dim and intermediate multiples of 128): the
 * expert GEMVs on FP8 tensor cores (gemv_a8.cuh) as the dense GEMV at 3..16 tokens. The
 * activations are quantized 1x128 as DeepSeek's reference does (kc_act_quant: for
 * gate/up the token rows xa, for down the rows of h by sorted slot); a block takes 16
 * weight rows of active expert blockIdx.y against tiles of 8 of its slots (an expert with
 * more loops; its rows come back from L2). The W8A32 8-slot tile (tile_gemv_staged) is
 * bound by fp32 FMAs there. NW = 2: h[p] = silu(gate . x) * (up . x); 1: out[slot(p)]. */
template <int NW, int MINB>
__global__ void __launch_bounds__(256, MINB) moe_a8_kernel(const uint8_t *xa, const float *xs,
                                                     const int *order, const int *meta, moe_k a,
                                                     float *h, float *out)
{
    __shared__ a8_red<1, NW> red;
    int e, st, cnt;
    kc_pdl_wait(); /* the plan (and the codes) come from the kernels in front */
    if (!moe_entry(a, meta, blockIdx.y, e, st, cnt))
        return; /* block-uniform */
    const size_t N = NW == 2 ? a.I : a.D, K = NW == 2 ? a.D : a.I, nb = K / 128;
    const size_t row0 = (size_t)blockIdx.x * 16, sld = NW == 2 ? a.sld_gu : a.sld_d;
    const uint8_t *w0[NW], *w1[NW];
    const float *ws[NW];
#pragma unroll
    for (int j = 0; j < NW; j++) {
        const int td = NW == 1 ? T_DD : j ? T_UD : T_GD, tsc = NW == 1 ? T_DS : j ? T_US : T_GS;
        a8_rows(moe_ptr<uint8_t>(a, td, e), moe_ptr<float>(a, tsc, e), sld,
                row0, N, K, w0[j], w1[j], ws[j]);
    }
    for (int c0 = 0; c0 < cnt; c0 += 8) {
        const int M = cnt - c0 < 8 ? cnt - c0 : 8;
        /* code row of tile slot m: its token (gate/up) or its sorted position (down) */
        const uint8_t *xp[1];
        const float *sa[1][2];
        a8_tokens<1>(xa, xs, K, M, [&](int m) -> size_t {
            const int p = st + c0 + m;
            return NW == 2 ? moe_tok(a, order[p]) : (size_t)p;
        }, xp, sa);
        a8_tile<1, NW>(w0, w1, ws, nb, xp, sa, false, red);
        a8_out<1, NW>(red, row0, N, M, [&](int r, int tok, float v) {
            const int p = st + c0 + tok;
            if (NW == 2)
                h[(size_t)p * a.ldh + row0 + r] = v;
            else
                out[(size_t)order[p] * a.D + row0 + r] = v;
        });
        __syncthreads(); /* red is rewritten by the next tile */
    }
}

/* One token (a.idx): every slot's down projection and the combine in one launch. A
 * block owns rows [row0, row0 + (8 / ks) * RB) of y and streams those rows of each
 * local slot's down weight, routed slots in k order, then the shared expert; its warps
 * split K as in tile_gemv. The routing weight rides on the block scale (w * s per
 * chunk; the shared expert's is 1), so one accumulator per row runs over every slot and
 * the lanes and warps are reduced once at the end: a warp's loop is the dense down
 * projection's (18 chunks at R1's shapes) with a pointer switch every K / step chunks.
 * (A launch per slot tile gave 2016 blocks of 4 chunks and a combine launch after
 * them; a reduction per slot cost 11 us against the dense down projection's 32 on H200.) */
#define MOE_D1_MAX 17 /* slots of one token: top_k up to 16, and the shared expert */

template <int WT>
__global__ void __launch_bounds__(256, 4) moe_down1_kernel(const float *h, moe_k a,
                                                           const float *wt, int ks, int accumulate,
                                                           float *y)
{
    constexpr int V = wvec<WT>::V, B = wvec<WT>::B, RB = tg_rb(1);
    /* the local slots, compacted: weight rows, scales, K, routing weight, row of h */
    __shared__ const uint8_t *sw[MOE_D1_MAX];
    __shared__ const float *ss[MOE_D1_MAX];
    __shared__ unsigned ssl[MOE_D1_MAX], sk[MOE_D1_MAX], sh[MOE_D1_MAX];
    __shared__ float swt[MOE_D1_MAX];
    __shared__ int snl;
    __shared__ float red[8 * RB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    /* The router output (idx, wt) is two launches back, complete once this kernel runs
     * (moe_up triggers it only after its own wait): the lookups and the first weight
     * loads go ahead of the PDL wait for h. */
    if (warp == 0) {
        const int A = (int)(a.S + (a.N > a.n ? 1 : 0));
        size_t e = a.n;
        bool ok = lane < A;
        if (lane < (int)a.S) {
            long v = (long)a.idx[lane] - (long)a.e0;
            ok = v >= 0 && v < (long)a.n;
            e = ok ? (size_t)v : 0;
        }
        const unsigned m = __ballot_sync(0xffffffffu, ok);
        if (ok) {
            const int q = __popc(m & ((1u << lane) - 1));
            sw[q] = moe_ptr<uint8_t>(a, T_DD, e);
            ss[q] = moe_ptr<float>(a, T_DS, e);
            ssl[q] = (unsigned)(e < a.n ? a.sld_d : a.sld_d_s);
            sk[q] = (unsigned)(e < a.n ? a.I : a.Is);
            swt[q] = lane < (int)a.S ? wt[lane] : 1.0f;
            sh[q] = (unsigned)lane;
        }
        if (lane == 0)
            snl = __popc(m);
    }
    __syncthreads();
    const int rg = warp / ks, kw = warp % ks, nl = snl;
    const size_t D = a.D, row0 = (size_t)blockIdx.x * (size_t)(8 / ks) * RB, n0 = row0 + (size_t)rg * RB;
    const bool act = n0 < D;
    const size_t step = (size_t)ks * 32 * V, kl = ((size_t)kw * 32 + lane) * V, nr = act ? n0 : 0;
    int ro[RB]; /* row offsets; rows past D re-read n0 */
#pragma unroll
    for (int r = 0; r < RB; r++)
        ro[r] = n0 + r < D ? r : 0;
    float acc[RB];
#pragma unroll
    for (int r = 0; r < RB; r++)
        acc[r] = 0.0f;
    uint4 raw[RB];
    float sc = 1.0f;
    auto load = [&](int q, size_t k) {
        const size_t K = sk[q];
        const uint8_t *w = sw[q] + (nr * K + k) * B;
#pragma unroll
        for (int r = 0; r < RB; r++)
            raw[r] = kc_ld_stream(w + (size_t)ro[r] * K * B);
        sc = swt[q] * (WT == 2 ? __ldg(ss[q] + (nr >> 7) * ssl[q] + (k >> 7)) : 1.0f);
    };
    const bool first = nl > 0 && act && kl < sk[0];
    if (first)
        load(0, kl);
    kc_pdl_wait(); /* every thread, converged: h comes from the kernel in front */
    for (int q = 0; q < nl; q++) {
        const float *xp = h + (size_t)sh[q] * a.ldh;
        for (size_t k = kl; act && k < sk[q]; k += step) {
            if (q || k != kl)
                load(q, k);
            float xv[V];
            tg_load_x<WT, 0>(xp + k, xv);
#pragma unroll
            for (int r = 0; r < RB; r++) {
                float wf[V];
                tg_decode<WT, 0>(raw[r], wf);
                acc[r] = fmaf(tg_dot<V>(wf, xv), sc, acc[r]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RB; r++) {
        float v = kc_warp_sum(acc[r]);
        if (lane == 0)
            red[warp * RB + r] = v;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < (8 / ks) * RB; t += blockDim.x) {
        const int g = t / RB, r = t % RB;
        const size_t d = row0 + (size_t)t;
        if (d >= D)
            continue;
        float v = 0.0f;
        for (int w = 0; w < ks; w++) /* the K split, in a fixed order */
            v += red[(g * ks + w) * RB + r];
        if (nl || !accumulate)
            y[d] = (accumulate ? y[d] : 0.0f) + v;
    }
}

/* DSR1_MOE_KS=UP,DOWN (each 1, 2, 4 or 8): warps splitting K in the gate/up and down
 * expert GEMVs instead of tg_ks's choice, for measuring; 0 or unset: tg_ks. */
static void moe_ks_env(int *up, int *down)
{
    static int u = -1, d = -1;
    if (u < 0) {
        const char *e = getenv("DSR1_MOE_KS");
        int a = 0, b = 0;
        if (e && sscanf(e, "%d,%d", &a, &b) != 2)
            a = b = 0;
        u = a == 1 || a == 2 || a == 4 || a == 8 ? a : 0;
        d = b == 1 || b == 2 || b == 4 || b == 8 ? b : 0;
    }
    *up = u, *down = d;
}

/* Switches for measuring, read once: DSR1_MOE_EARLY=0 (the shared expert's gate/up after
 * the routed ones), DSR1_MOE_OCC=0 (no register caps), DSR1_MOE_FUSE=0 (one token: down
 * projections per slot tile and a combine launch), DSR1_MOE_STRIDE=0 (expert pointers
 * from the device table even when strided). Anything else: on. */
enum { MOE_SW_EARLY, MOE_SW_OCC, MOE_SW_FUSE, MOE_SW_STRIDE, MOE_SW_N };

static int moe_sw[MOE_SW_N] = {-1, -1, -1, -1};

static int moe_switch(int i)
{
    static const char *const name[MOE_SW_N] = {"DSR1_MOE_EARLY", "DSR1_MOE_OCC", "DSR1_MOE_FUSE",
                                               "DSR1_MOE_STRIDE"};
    if (moe_sw[i] < 0) {
        const char *e = getenv(name[i]);
        moe_sw[i] = !(e && !strcmp(e, "0"));
    }
    return moe_sw[i];
}

void kc_moe_set_fuse(int on)
{
    moe_sw[MOE_SW_FUSE] = on < 0 ? -1 : !!on;
}

void kc_moe_set_stride(int on)
{
    moe_sw[MOE_SW_STRIDE] = on < 0 ? -1 : !!on;
}

int kc_moe_strided(const kc_moe_w *m)
{
    return m && m->strided;
}

/* What one chunk of tokens hands the expert launches. */
struct moe_io {
    const float *x;
    size_t ldx;
    const int *order, *meta;
    float *h, *out;
    /* one token, fused down + combine (moe_down1_kernel): routing weights, y, accumulate */
    int fuse, accumulate;
    const float *wt;
    float *y;
};

/* The two expert launches, with __launch_bounds__ minimum blocks per SM UB (gate/up) and
 * DB (down); 0: uncapped. */
template <int WT, int MT, int UB, int DB>
static int moe_launch2(size_t Imax, size_t A, int ksu, int ksd, const moe_io &io, const moe_k &a,
                       cudaStream_t st)
{
    /* x: row tiles (consecutive blocks read consecutive rows of one expert), y: experts.
     * Measured on H100 against experts along x: no clear change. Blocks looping over
     * several row tiles (to pay the plan and table lookups once) were slower. */
    dim3 gu(kc_blocks(Imax, (unsigned)((8 / ksu) * tg_rb(2))), (unsigned)A);
    int rc = kc_launch(moe_up_kernel<WT, MT, UB>, gu, dim3(256), 0, st, io.x, io.ldx, io.order,
                       io.meta, a, ksu, io.h);
    if (rc)
        return rc;
    if (MT == 1 && io.fuse)
        return kc_launch(moe_down1_kernel<WT>, dim3(kc_blocks(a.D, (unsigned)((8 / ksd) * tg_rb(1)))),
                         dim3(256), 0, st, (const float *)io.h, a, io.wt, ksd, io.accumulate, io.y);
    dim3 gd(kc_blocks(a.D, (unsigned)((8 / ksd) * tg_rb(1))), (unsigned)A);
    return kc_launch(moe_down_kernel<WT, MT, DB>, gd, dim3(256), 0, st, (const float *)io.h,
                     io.order, io.meta, a, ksd, io.out);
}

/* Launch both expert passes with tiles of MT slots (an expert with more loops). */
template <int WT, int MT>
static int moe_passes(const moe_io &io, const moe_k &a, size_t A, cudaStream_t st)
{
    constexpr int V = wvec<WT>::V;
    size_t Imax = a.I > a.Is ? a.I : a.Is;
    int eu, ed;
    moe_ks_env(&eu, &ed);
    /* gate/up: at most 2 warps split K, so each block covers 4x the rows of tg_ks's
     * choice and the per-block expert lookup and ramp are paid over more bytes (H100,
     * TP1 MoE layer at batch 1: 284.5 -> 274.6 us; a TP8/EP8 rank 121.9 -> 112.7). down
     * (K = the expert's 2048-wide intermediate): per slot tile, no K split, every warp its
     * own rows (H200, TP1 MoE layer: 2 warps 237 us, 1 warp 228; see docs/cuda.md); fused
     * (one token), 2 warps, as the dense down projection. */
    int ksu = MT > 2 ? 1 : eu ? eu : std::min(tg_ks(a.D, V), 2);
    int ksd = MT > 2 ? 1 : ed ? ed : MT == 1 && io.fuse ? 2 : 1;
    /* Register caps: one-slot down used 66 registers, so 3 blocks (24 warps, 48 KB of
     * weight loads in flight) fit an SM against the dense GEMV's 4; capped at 64 it does
     * not spill (H200, TP1 MoE layer at batch 1: 229 -> 214.5 us with this alone). Two-
     * slot tiles (105-118 registers: 2 blocks) capped at 3 blocks spill 60-180 bytes and
     * still win (batch 8: 1020 -> 974 us). */
    if (moe_switch(MOE_SW_OCC)) {
        if constexpr (MT == 1)
            return moe_launch2<WT, MT, 4, 4>(Imax, A, ksu, ksd, io, a, st);
        if constexpr (MT == 2)
            return moe_launch2<WT, MT, 3, 3>(Imax, A, ksu, ksd, io, a, st);
    }
    return moe_launch2<WT, MT, 0, 0>(Imax, A, ksu, ksd, io, a, st);
}

template <int WT>
static int moe_run(const moe_io &io, size_t tn, const moe_k &a, size_t A, cudaStream_t st)
{
    /* An expert gets at most one slot per token (the router picks distinct experts).
     * Up to 16 tokens most experts see one or two: tiles of 1 or 2 slots (an expert with
     * more loops; its rows come back from L2). More tokens: 8-slot tiles with the
     * activations staged in shared memory (tile_gemv_staged). */
    if (tn <= 1)
        return moe_passes<WT, 1>(io, a, A, st);
    if (tn <= 16)
        return moe_passes<WT, 2>(io, a, A, st);
    return moe_passes<WT, 8>(io, a, A, st);
}

/* The FP8 tensor-core expert passes (moe_a8_kernel): quantize the tokens, gate/up,
 * quantize h, down. Codes and scales share scratch slots 9 and 10 between the two
 * quantizations (the second starts after gate/up has read the first: stream order). */
static int moe_a8_run(kc_ctx *c, const moe_io &io, size_t tn, const moe_k &a, size_t A,
                      cudaStream_t st)
{
    const size_t D = a.D, I = a.I, P = a.S;
    const size_t cb = std::max(tn * D, P * I), sb = std::max(tn * (D / 128), P * (I / 128));
    uint8_t *qa = (uint8_t *)kc_ctx_scratch(c, 9, cb);
    float *qs = (float *)kc_ctx_scratch(c, 10, sb * sizeof(float));
    if (!qa || !qs)
        return -1;
    const bool cap = moe_switch(MOE_SW_OCC);
    const dim3 gu(kc_blocks(I, 16), (unsigned)A), gd(kc_blocks(D, 16), (unsigned)A);
    int rc = kc_act_quant_strided(io.x, io.ldx, tn, D, qa, D, qs, D / 128, 1, st);
    if (!rc)
        rc = kc_launch(cap ? moe_a8_kernel<2, 2> : moe_a8_kernel<2, 0>, gu, dim3(256), 0, st,
                       (const uint8_t *)qa, (const float *)qs, io.order, io.meta, a, io.h, io.out);
    if (!rc)
        rc = kc_act_quant_strided(io.h, a.ldh, P, I, qa, I, qs, I / 128, 1, st);
    if (!rc)
        rc = kc_launch(cap ? moe_a8_kernel<1, 3> : moe_a8_kernel<1, 0>, gd, dim3(256), 0, st,
                       (const uint8_t *)qa, (const float *)qs, io.order, io.meta, a, io.h, io.out);
    return rc;
}

/* y[t, d] (+)= sum_k w[t,k] out[row(t*K+k), d] over local slots, in k order; then the
 * shared expert's out[S + t, d] (sh), added after the routed sum as a separate MLP would
 * be. row(s) = s, or inv[s] for rows gathered by expert (moe_gemm_run). Without
 * accumulate y is overwritten (zero where nothing is local). */
__global__ void moe_combine_kernel(const float *out, const int *inv, const int32_t *idx,
                                   const float *w, size_t T, size_t K, size_t e0, size_t n,
                                   size_t D, int sh, int accumulate, float *y, size_t ldy)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    kc_pdl_wait();
    if (i >= T * D)
        return;
    size_t t = i / D, d = i % D;
    float acc = 0.0f;
    bool any = false;
    for (size_t k = 0; k < K; k++) {
        long e = (long)idx[t * K + k] - (long)e0;
        if (e >= 0 && e < (long)n) {
            size_t r = inv ? (size_t)inv[t * K + k] : t * K + k;
            acc += w[t * K + k] * out[r * D + d];
            any = true;
        }
    }
    float v = accumulate ? y[t * ldy + d] : 0.0f;
    if (any)
        v += acc;
    if (sh)
        v += out[(T * K + t) * D + d];
    if (any || sh || !accumulate)
        y[t * ldy + d] = v;
}

#define MOE_CHUNK 512 /* tokens per pass: bounds the scratch */

/* Prefill: with tens of tokens per expert the tile kernels (16 weight rows against 8
 * slots, the weights streamed again per slot tile) run at ~50 TFLOP/s (H200, 2048
 * tokens). From DSR1_MOE_GEMM_MIN (default 32) tokens per active local expert, each
 * expert's rows are gathered and go through kc_gemm_glu / kc_gemm: cuBLASLt's FP8
 * block-scaled GEMM with the activations quantized 1x128 as the tile path does, and
 * the GEMV kernels for an expert of 16 tokens or fewer. Deciding needs the counts on
 * the host: one synchronization per chunk of up to MOE_GEMM_CHUNK tokens, from
 * MOE_GEMM_MIN_T tokens only (decode steps, which graphs capture, never sync). */
#define MOE_GEMM_MIN_T 128
#define MOE_GEMM_CHUNK 4096
enum { SCR_MOE_XG = 11, SCR_MOE_INV, SCR_MOE_HG, SCR_MOE_OG, SCR_MOE_MAP };

static unsigned long g_moe_gemm_runs;
unsigned long kc_moe_gemm_runs(void) { return g_moe_gemm_runs; }

static int moe_gemm_min(void)
{
    static int v = -1;
    if (v < 0) {
        const char *e = getenv("DSR1_MOE_GEMM_MIN");
        v = e && *e ? atoi(e) : 32;
        v = v < 0 ? 0 : v;
    }
    return v;
}

/* Row r of the gathered layout: map[r] = plan index p (xg[r] = x[token of slot
 * order[p]], inv[order[p]] = r) or -1 (a pad row: zeros). */
__global__ void moe_gather_kernel(const float *x, size_t ldx, const int *order, const int *map,
                                  size_t top_k, size_t D, float *xg, int *inv)
{
    size_t r = blockIdx.x;
    kc_pdl_wait();
    int p = map[r];
    float4 *dst = (float4 *)(xg + r * D);
    if (p < 0) {
        for (size_t i = threadIdx.x; i < D / 4; i += blockDim.x)
            dst[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        return;
    }
    int s = order[p];
    if (threadIdx.x == 0)
        inv[s] = (int)r;
    const float4 *src = (const float4 *)(x + (size_t)s / top_k * ldx);
    for (size_t i = threadIdx.x; i < D / 4; i += blockDim.x)
        dst[i] = src[i];
}

/* The chunk's local slots (plan in io.order, counts mh = meta on the host) through
 * per-expert GEMMs. Each expert's rows start on a multiple of 16 and are padded with
 * zero rows to one, so every row takes the same FP8 path (cuBLASLt takes multiples of
 * 16; a GEMM's 1-2-row tail would otherwise go to the W8A32 GEMV). */
static int moe_gemm_run(kc_ctx *c, const kc_moe_w *m, const moe_io &io, const int *mh,
                        size_t tn, size_t top_k, size_t e0, const int32_t *ci, size_t ldy,
                        cudaStream_t st)
{
    const size_t n = m->n, D = m->D, I = m->I, N = n, S = tn * top_k;
    const int na = mh[0], *act_e = mh + 1, *act_start = mh + 1 + N, *act_cnt = mh + 1 + 2 * N;
    std::vector<int> map;
    std::vector<size_t> off(na);
    for (int a = 0; a < na; a++) {
        off[a] = map.size();
        size_t cnt = (size_t)act_cnt[a], pad = (cnt + 15) / 16 * 16;
        for (size_t r = 0; r < pad; r++)
            map.push_back(r < cnt ? act_start[a] + (int)r : -1);
    }
    const size_t R = map.size();
    float *xg = (float *)kc_ctx_scratch(c, SCR_MOE_XG, (R ? R : 1) * D * sizeof(float));
    float *hg = (float *)kc_ctx_scratch(c, SCR_MOE_HG, (R ? R : 1) * I * sizeof(float));
    float *og = (float *)kc_ctx_scratch(c, SCR_MOE_OG, (R ? R : 1) * D * sizeof(float));
    int *inv = (int *)kc_ctx_scratch(c, SCR_MOE_INV, S * sizeof(int));
    int *dmap = (int *)kc_ctx_scratch(c, SCR_MOE_MAP, (R ? R : 1) * sizeof(int));
    if (!xg || !hg || !og || !inv || !dmap)
        return (int)cudaErrorMemoryAllocation;
    int rc = 0;
    if (R) {
        rc = (int)cudaMemcpyAsync(dmap, map.data(), R * sizeof(int), cudaMemcpyHostToDevice, st);
        if (!rc)
            rc = kc_launch(moe_gather_kernel, dim3((unsigned)R), dim3(256), 0, st, io.x, io.ldx,
                           io.order, (const int *)dmap, top_k, D, xg, inv);
    }
    for (int a = 0; a < na && !rc; a++) {
        size_t e = (size_t)act_e[a], o = off[a], M = (act_cnt[a] + 15) / 16 * 16;
        rc = kc_gemm_glu(c, xg + o * D, D, M, &m->hw[e], &m->hw[n + e], hg + o * I, I);
        if (!rc)
            rc = kc_gemm(c, hg + o * I, I, M, &m->hw[2 * n + e], og + o * D, D, 0, 0);
    }
    if (!rc)
        rc = kc_launch(moe_combine_kernel, dim3(kc_blocks(tn * D, 256)), dim3(256), 0, st,
                       (const float *)og, (const int *)inv, ci, io.wt, tn, top_k, e0, n, D, 0,
                       io.accumulate, io.y, ldy);
    g_moe_gemm_runs += !rc;
    return rc;
}

int kc_moe(kc_ctx *c, const kc_moe_w *m, const float *x, size_t ldx, size_t T,
           const int32_t *idx, const float *w, size_t top_k, size_t e0, float *y, size_t ldy,
           int accumulate)
{
    cudaStream_t st = kc_ctx_stream(c);
    if (ldx % 4 || ((uintptr_t)x & 15))
        return -1;
    size_t n = m->n, D = m->D, N = n + (kc_moe_has_shared(m, T) ? 1 : 0);
    moe_k a = {m->tab, n, N, n + (m->Is ? 1 : 0), m->I, m->Is, D, m->I > m->Is ? m->I : m->Is, 0, top_k,
               m->sld_gu, m->sld_d, m->sld_gu_s, m->sld_d_s, NULL, 0, 0};
    a.strided = m->strided && moe_switch(MOE_SW_STRIDE);
    memcpy(a.base, m->base, sizeof a.base), memcpy(a.stride, m->stride, sizeof a.stride);
    memcpy(a.sh, m->sh, sizeof a.sh);
    /* the per-expert GEMM path takes FP8 experts of 128-multiple widths with FP8
     * activations on (as the a8 tile path below) */
    const bool gemm_ok = T >= MOE_GEMM_MIN_T && moe_gemm_min() > 0 && m->type == K_W_FP8 &&
                         D % 128 == 0 && m->I % 128 == 0 && N == n && kc_gemv_a8_on() &&
                         !kc_capturing(st);
    const size_t chunk = gemm_ok ? MOE_GEMM_CHUNK : MOE_CHUNK;
    for (size_t t0 = 0; t0 < T; t0 += chunk) {
        size_t tn = T - t0 < chunk ? T - t0 : chunk, S = tn * top_k;
        size_t P = S + (N - n) * tn, A = (S < n ? S : n) + (N - n);
        moe_io io = {x + t0 * ldx, ldx, (int *)kc_ctx_scratch(c, 4, P * sizeof(int)),
                     (int *)kc_ctx_scratch(c, 5, (1 + 3 * N) * sizeof(int)),
                     (float *)kc_ctx_scratch(c, 6, P * a.ldh * sizeof(float)),
                     (float *)kc_ctx_scratch(c, 7, P * D * sizeof(float)),
                     0, accumulate, w + t0 * top_k, y + t0 * ldy};
        if (!io.order || !io.meta || !io.h || !io.out)
            return -1;
        a.S = S;
        const int32_t *ci = idx + t0 * top_k;
        if (tn == 1) { /* one token: blocks per slot, no plan (moe_entry) */
            a.idx = ci, a.e0 = e0;
            a.early = N > n && moe_switch(MOE_SW_EARLY);
            A = S + (N - n);
            io.fuse = A <= MOE_D1_MAX && moe_switch(MOE_SW_FUSE);
        } else {
            a.idx = NULL;
            int rc = kc_launch(moe_plan_kernel, dim3(1), dim3(1024), 2 * n * sizeof(int), st, ci,
                               S, e0, n, N, tn, io.order, io.meta);
            if (rc)
                return rc;
            if (gemm_ok && tn >= MOE_GEMM_MIN_T) {
                std::vector<int> mh(1 + 3 * N);
                if ((rc = (int)cudaMemcpyAsync(mh.data(), io.meta, mh.size() * sizeof(int),
                                               cudaMemcpyDeviceToHost, st)) ||
                    (rc = (int)cudaStreamSynchronize(st)))
                    return rc;
                size_t local = 0;
                for (int i = 0; i < mh[0]; i++)
                    local += (size_t)mh[1 + 2 * N + i];
                if (mh[0] > 0 && local >= (size_t)moe_gemm_min() * (size_t)mh[0]) {
                    if ((rc = moe_gemm_run(c, m, io, mh.data(), tn, top_k, e0, ci, ldy, st)))
                        return rc;
                    continue;
                }
            }
        }
        /* more than 16 tokens on FP8 weights: FP8 activations on tensor cores, as the
         * dense layers (not with the shared expert in the launch: only up to 2 tokens) */
        const bool a8 = tn > 16 && m->type == K_W_FP8 && D % 128 == 0 && m->I % 128 == 0 &&
                        N == n && kc_gemv_a8_on();
        int rc = a8                    ? moe_a8_run(c, io, tn, a, A, st)
                 : m->type == K_W_FP8  ? moe_run<2>(io, tn, a, A, st)
                 : m->type == K_W_BF16 ? moe_run<1>(io, tn, a, A, st)
                                       : moe_run<0>(io, tn, a, A, st);
        if (rc)
            return rc;
        if (io.fuse)
            continue; /* moe_down1_kernel wrote y */
        rc = kc_launch(moe_combine_kernel, dim3(kc_blocks(tn * D, 256)), dim3(256), 0, st, io.out,
                       (const int *)NULL, ci, io.wt, tn, top_k, e0, n, D, (int)(N > n), accumulate,
                       io.y, ldy);
        if (rc)
            return rc;
    }
    return 0;
}
