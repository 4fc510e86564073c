/* k_router: see router.h. */
#include "router.h"

#include <math.h>

#define K_ROUTER_MAX_E 4096

/* Index of the largest v[i] over i < n with ok[i] (ties: lowest index); -1 if none. */
static int argmax_masked(const float *v, const unsigned char *ok, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (ok[i] && (best < 0 || v[i] > v[best]))
            best = i;
    return best;
}

int k_router(const k_router_cfg *c, const float *logits, const float *bias, size_t T,
             int32_t *idx, float *w)
{
    int E = (int)c->n_experts, G = (int)c->n_group, TG = (int)c->topk_group, K = (int)c->top_k;
    if (E <= 0 || E > K_ROUTER_MAX_E || G <= 0 || E % G || TG <= 0 || TG > G || K <= 0 ||
        K > (E / G) * TG)
        return -1;
    int per = E / G;
#pragma omp parallel for schedule(static) if (T > 8)
    for (size_t t = 0; t < T; t++) {
        float s[K_ROUTER_MAX_E], sel[K_ROUTER_MAX_E], gs[K_ROUTER_MAX_E];
        unsigned char ok[K_ROUTER_MAX_E];
        const float *l = logits + t * (size_t)E;
        for (int e = 0; e < E; e++) {
            s[e] = 1.0f / (1.0f + expf(-l[e]));
            sel[e] = s[e] + (bias ? bias[e] : 0.0f);
        }
        for (int g = 0; g < G; g++) {
            const float *v = sel + g * per;
            int a = 0;
            for (int i = 1; i < per; i++)
                if (v[i] > v[a])
                    a = i;
            if (per == 1) {
                gs[g] = v[a];
                continue;
            }
            int b = a == 0 ? 1 : 0;
            for (int i = 0; i < per; i++)
                if (i != a && v[i] > v[b])
                    b = i;
            gs[g] = v[a] + v[b];
        }
        unsigned char gok[K_ROUTER_MAX_E], keep[K_ROUTER_MAX_E];
        for (int g = 0; g < G; g++)
            gok[g] = 1, keep[g] = 0;
        for (int k = 0; k < TG; k++) {
            int g = argmax_masked(gs, gok, G);
            gok[g] = 0;
            keep[g] = 1;
        }
        /* experts of dropped groups are masked to -inf: never selectable */
        for (int e = 0; e < E; e++)
            ok[e] = keep[e / per];
        float sum = 0;
        for (int k = 0; k < K; k++) {
            int e = argmax_masked(sel, ok, E);
            ok[e] = 0;
            idx[t * K + k] = e;
            w[t * K + k] = s[e];
            sum += s[e];
        }
        float den = sum + 1e-20f;
        for (int k = 0; k < K; k++)
            w[t * K + k] = (c->norm_topk_prob ? w[t * K + k] / den : w[t * K + k]) * c->scale;
    }
    return 0;
}
