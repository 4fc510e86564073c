/* kc_router: CUDA sigmoid / bias / group-limited top-k router, mirrors kernels/router.c
 * step by step (one block per token; the selection runs on one thread so ties break
 * exactly as the CPU reference does). */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

#define KC_ROUTER_MAX_E 2048 /* shared memory; R1 has 256 */

__global__ void router_kernel(k_router_cfg c, const float *logits, const float *bias,
                              int32_t *idx, float *w)
{
    __shared__ float s[KC_ROUTER_MAX_E], sel[KC_ROUTER_MAX_E], gs[KC_ROUTER_MAX_E];
    __shared__ unsigned char ok[KC_ROUTER_MAX_E], gok[KC_ROUTER_MAX_E];
    int E = (int)c.n_experts, G = (int)c.n_group, TG = (int)c.topk_group, K = (int)c.top_k;
    int per = E / G;
    size_t t = blockIdx.x;
    const float *l = logits + t * (size_t)E;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        s[e] = 1.0f / (1.0f + expf(-l[e]));
        sel[e] = s[e] + (bias ? bias[e] : 0.0f);
    }
    __syncthreads();
    for (int g = threadIdx.x; g < G; g += blockDim.x) {
        const float *v = sel + g * per;
        int a = 0;
        for (int i = 1; i < per; i++)
            if (v[i] > v[a])
                a = i;
        if (per == 1) {
            gs[g] = v[a];
        } else {
            int b = a == 0 ? 1 : 0;
            for (int i = 0; i < per; i++)
                if (i != a && v[i] > v[b])
                    b = i;
            gs[g] = v[a] + v[b];
        }
        gok[g] = 1;
    }
    __syncthreads();
    if (threadIdx.x != 0)
        return;
    for (int e = 0; e < E; e++)
        ok[e] = 0;
    for (int k = 0; k < TG; k++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (gok[g] && (best < 0 || gs[g] > gs[best]))
                best = g;
        gok[best] = 0;
        for (int i = 0; i < per; i++)
            ok[best * per + i] = 1;
    }
    float sum = 0.0f;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (ok[e] && (best < 0 || sel[e] > sel[best]))
                best = e;
        ok[best] = 0;
        idx[t * K + k] = best;
        w[t * K + k] = s[best];
        sum += s[best];
    }
    float den = sum + 1e-20f;
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
