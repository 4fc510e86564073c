/* kc_router: CUDA sigmoid / bias / group-limited top-k router, mirrors kernels/router.c.
 * One block per token, every pick made by ranking instead of repeated arg-max scans (the
 * scans were a chain of ~12 dependent warp reductions: 13 us a token on H100). Each
 * candidate counts the candidates that beat it under one strict total order -- larger
 * value first, ties to the lower index, as the reference's sequential "first strictly
 * greater" scan decides -- so ranks are distinct and rank r is the reference's r-th
 * pick. NaN ranks below every number (the reference's pick there depends on scan order;
 * here it is still K distinct experts of the kept groups). */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

#define KC_ROUTER_MAX_E 1024 /* shared memory (34 KB); R1 has 256 */
#define KC_ROUTER_THREADS 256

/* a beats b: one 64-bit compare of (value as ordered bits, inverted index) */
__device__ __forceinline__ unsigned long long rank_key(float v, int i)
{
    unsigned u = __float_as_uint(v == 0.0f ? 0.0f : v); /* -0 ties +0, as == does */
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);     /* monotone in v */
    if (v != v)
        u = 0; /* NaN: below -inf */
    return ((unsigned long long)u << 32) | (unsigned)(0x7fffffff - i);
}

__global__ void __launch_bounds__(KC_ROUTER_THREADS) router_kernel(k_router_cfg c,
                                                                   const float *logits,
                                                                   const float *bias,
                                                                   int32_t *idx, float *w)
{
    __shared__ float s[KC_ROUTER_MAX_E], sel[KC_ROUTER_MAX_E];
    __shared__ unsigned long long key[KC_ROUTER_MAX_E], gkey[KC_ROUTER_MAX_E];
    __shared__ short ga[KC_ROUTER_MAX_E], gb[KC_ROUTER_MAX_E], kept[KC_ROUTER_MAX_E];
    __shared__ float ws[KC_ROUTER_MAX_E];
    const int E = (int)c.n_experts, G = (int)c.n_group, TG = (int)c.topk_group,
              K = (int)c.top_k, per = E / G, tid = threadIdx.x;
    const size_t t = blockIdx.x;
    const float *l = logits + t * (size_t)E;
    kc_pdl_wait();
    for (int e = tid; e < E; e += blockDim.x) {
        s[e] = 1.0f / (1.0f + expf(-l[e]));
        sel[e] = s[e] + (bias ? bias[e] : 0.0f);
        key[e] = rank_key(sel[e], e);
    }
    __syncthreads();
    /* group score: its best two (rank 0 and 1 within the group), summed in that order */
    for (int e = tid; e < E; e += blockDim.x) {
        int g0 = e - e % per, r = 0;
        for (int j = g0; j < g0 + per; j++)
            r += key[j] > key[e];
        if (r == 0)
            ga[e / per] = (short)e;
        else if (r == 1)
            gb[e / per] = (short)e;
    }
    __syncthreads();
    for (int g = tid; g < G; g += blockDim.x)
        gkey[g] = rank_key(per > 1 ? sel[ga[g]] + sel[gb[g]] : sel[ga[g]], g);
    __syncthreads();
    /* the TG best groups, listed by rank */
    for (int g = tid; g < G; g += blockDim.x) {
        int r = 0;
        for (int j = 0; j < G; j++)
            r += gkey[j] > gkey[g];
        if (r < TG)
            kept[r] = (short)g;
    }
    __syncthreads();
    /* experts of the kept groups, ranked among those; rank k is pick k */
    for (int i = tid; i < TG * per; i += blockDim.x) {
        int e = kept[i / per] * per + i % per, r = 0;
        for (int q = 0; q < TG; q++) {
            const unsigned long long *kg = key + kept[q] * per;
            for (int j = 0; j < per; j++)
                r += kg[j] > key[e];
        }
        if (r < K) {
            idx[t * K + r] = e;
            ws[r] = s[e];
        }
    }
    __syncthreads();
    if (tid == 0) { /* sum in pick order, as the reference */
        float sum = 0.0f;
        for (int k = 0; k < K; k++)
            sum += ws[k];
        float den = sum + 1e-20f;
        for (int k = 0; k < K; k++)
            w[t * K + k] = (c.norm_topk_prob ? ws[k] / den : ws[k]) * c.scale;
    }
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
    return kc_launch(router_kernel, dim3((unsigned)T), dim3(KC_ROUTER_THREADS), 0, st, *c, logits,
                     bias, idx, w);
}
