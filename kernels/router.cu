/* kc_router: CUDA sigmoid / bias / group-limited top-k router, mirrors kernels/router.c
 * step by step. One block per token: the block computes the scores, one warp per group
 * takes the group's top-2 sum, and warp 0 picks the groups and the experts. Every pick
 * is a warp arg-max that prefers the larger value and, on ties, the lower index: the
 * same choice as the reference's sequential "first strictly greater" scan. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

#define KC_ROUTER_MAX_E 2048 /* shared memory; R1 has 256 */

/* arg-max over the warp of (v, i); ties -> lower i; i < 0 means no candidate */
__device__ __forceinline__ void warp_argmax(float &v, int &i)
{
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        bool take = oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i));
        v = take ? ov : v;
        i = take ? oi : i;
    }
}

/* The first maximum of v[0, n) over allowed entries (skip index `not`), by warp. */
__device__ __forceinline__ int warp_first_max(const float *v, int n, const unsigned char *ok,
                                              int skip)
{
    float bv = -INFINITY;
    int bi = -1;
    for (int e = threadIdx.x & 31; e < n; e += 32)
        if ((!ok || ok[e]) && e != skip && (bi < 0 || v[e] > bv))
            bv = v[e], bi = e; /* lanes scan increasing e: first maximum per lane */
    warp_argmax(bv, bi);
    return bi;
}

__global__ void router_kernel(k_router_cfg c, const float *logits, const float *bias,
                              int32_t *idx, float *w)
{
    __shared__ float s[KC_ROUTER_MAX_E], sel[KC_ROUTER_MAX_E], gs[KC_ROUTER_MAX_E];
    __shared__ unsigned char ok[KC_ROUTER_MAX_E], gok[KC_ROUTER_MAX_E];
    int E = (int)c.n_experts, G = (int)c.n_group, TG = (int)c.topk_group, K = (int)c.top_k;
    int per = E / G, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    size_t t = blockIdx.x;
    const float *l = logits + t * (size_t)E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        s[e] = 1.0f / (1.0f + expf(-l[e]));
        sel[e] = s[e] + (bias ? bias[e] : 0.0f);
        ok[e] = 0;
    }
    __syncthreads();
    for (int g = warp; g < G; g += nw) {
        const float *v = sel + g * per;
        int a = warp_first_max(v, per, NULL, -1);
        float score = v[a];
        if (per > 1)
            score += v[warp_first_max(v, per, NULL, a)];
        if (lane == 0)
            gs[g] = score, gok[g] = 1;
    }
    __syncthreads();
    if (warp != 0)
        return;
    for (int k = 0; k < TG; k++) {
        /* lane 0's pick for all: with NaN scores the arg-max is no total order */
        int best = __shfl_sync(0xffffffffu, warp_first_max(gs, G, gok, -1), 0);
        __syncwarp();
        if (lane == 0)
            gok[best] = 0;
        for (int i = lane; i < per; i += 32)
            ok[best * per + i] = 1;
        __syncwarp();
    }
    float sum = 0.0f;
    for (int k = 0; k < K; k++) {
        int best = __shfl_sync(0xffffffffu, warp_first_max(sel, E, ok, -1), 0);
        __syncwarp();
        if (lane == 0) {
            ok[best] = 0;
            idx[t * K + k] = best;
            w[t * K + k] = s[best];
        }
        sum += s[best];
        __syncwarp();
    }
    float den = sum + 1e-20f;
    if (lane == 0)
        for (int k = 0; k < K; k++)
            w[t * K + k] = (c.norm_topk_prob ? w[t * K + k] / den : w[t * K + k]) * c.scale;
}

int kc_router(const k_router_cfg *c, const float *logits, const float *bias, size_t T,
              int32_t *idx, float *w, cudaStream_t st)
{
    int E = (int)c->n_experts, G = (int)c->n_group, TG = (int)c->topk_group, K = (int)c->top_k;
    if (E <= 0 || E > KC_ROUTER_MAX_E || G <= 0 || E % G || TG <= 0 || TG > G || K <= 0 ||
        K > (E / G) * TG)
        return -1;
    if (T == 0)
        return 0;
    router_kernel<<<(unsigned)T, 256, 0, st>>>(*c, logits, bias, idx, w);
    KC_LAUNCH_CHECK();
    return 0;
}
