/* k_attn / k_mla: see attn.h. */
#include "attn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* p[0..n) = softmax(p) in place (max subtracted); returns nothing. */
static void softmax(float *p, size_t n)
{
    float m = p[0];
    for (size_t i = 1; i < n; i++)
        m = p[i] > m ? p[i] : m;
    float sum = 0;
    for (size_t i = 0; i < n; i++) {
        p[i] = expf(p[i] - m);
        sum += p[i];
    }
    for (size_t i = 0; i < n; i++)
        p[i] /= sum;
}

static size_t visible(size_t t, size_t S, size_t pos0)
{
    size_t n = pos0 + t + 1;
    return n < S ? n : S;
}

int k_attn_naive(const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                  size_t ldv, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dqk,
                  size_t dv, size_t pos0, float scale)
{
    int failed = 0;
#pragma omp parallel
    {
        float *p = malloc((S ? S : 1) * sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (size_t t = 0; t < T; t++)
            for (size_t h = 0; h < H; h++) {
                float *o = out + t * ldo + h * dv;
                size_t n = visible(t, S, pos0);
                if (!p) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                for (size_t e = 0; e < dv; e++)
                    o[e] = 0;
                if (n == 0)
                    continue;
                const float *qv = q + t * ldq + h * dqk;
                for (size_t s = 0; s < n; s++)
                    p[s] = k_dot(qv, k + s * ldk + h * dqk, dqk) * scale;
                softmax(p, n);
                for (size_t s = 0; s < n; s++) {
                    const float *vv = v + s * ldv + h * dv;
                    for (size_t e = 0; e < dv; e++)
                        o[e] += p[s] * vv[e];
                }
            }
        free(p);
    }
    return failed ? -1 : 0;
}

int k_mla_absorb_q(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                    size_t dv, const k_weight *wkv_b, float *q_lat)
{
    size_t R = wkv_b->cols;
    int failed = 0;
#pragma omp parallel
    {
        float *wk = malloc(dn * R * sizeof(float));
#pragma omp for schedule(static)
        for (size_t h = 0; h < H; h++) {
            if (!wk) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            size_t r0 = h * (dn + dv);
            for (size_t d = 0; d < dn; d++)
                k_weight_to_f32(wkv_b, r0 + d, r0 + d + 1, wk + d * R);
            for (size_t t = 0; t < T; t++) {
                const float *qv = q + t * ldq + h * ldh;
                float *o = q_lat + (t * H + h) * R;
                for (size_t r = 0; r < R; r++)
                    o[r] = 0;
                for (size_t d = 0; d < dn; d++) {
                    float a = qv[d];
                    const float *wr = wk + d * R;
                    for (size_t r = 0; r < R; r++)
                        o[r] += a * wr[r];
                }
            }
        }
        free(wk);
    }
    return failed ? -1 : 0;
}

int k_mla_attn(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp, const float *c,
                size_t ldc, const float *kpe, size_t ldk, float *o_lat, size_t T, size_t S,
                size_t H, size_t R, size_t P, size_t pos0, float scale)
{
    int failed = 0;
#pragma omp parallel
    {
        float *p = malloc((S ? S : 1) * sizeof(float));
#pragma omp for collapse(2) schedule(static)
        for (size_t t = 0; t < T; t++)
            for (size_t h = 0; h < H; h++) {
                float *o = o_lat + (t * H + h) * R;
                size_t n = visible(t, S, pos0);
                if (!p) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                for (size_t r = 0; r < R; r++)
                    o[r] = 0;
                if (n == 0)
                    continue;
                const float *ql = q_lat + (t * H + h) * R;
                const float *qp = q_pe + t * ldqp + h * ldhp;
                for (size_t s = 0; s < n; s++)
                    p[s] = (k_dot(ql, c + s * ldc, R) + k_dot(qp, kpe + s * ldk, P)) * scale;
                softmax(p, n);
                for (size_t s = 0; s < n; s++) {
                    const float *cv = c + s * ldc;
                    for (size_t r = 0; r < R; r++)
                        o[r] += p[s] * cv[r];
                }
            }
        free(p);
    }
    return failed ? -1 : 0;
}

int k_mla_absorb_v(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                    const k_weight *wkv_b, float *o, size_t ldo)
{
    size_t R = wkv_b->cols;
    int failed = 0;
#pragma omp parallel
    {
        float *wv = malloc(dv * R * sizeof(float));
#pragma omp for schedule(static)
        for (size_t h = 0; h < H; h++) {
            size_t r0 = h * (dn + dv) + dn;
            if (!wv) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            k_weight_to_f32(wkv_b, r0, r0 + dv, wv);
            for (size_t t = 0; t < T; t++) {
                const float *ol = o_lat + (t * H + h) * R;
                for (size_t e = 0; e < dv; e++)
                    o[t * ldo + h * dv + e] = k_dot(ol, wv + e * R, R);
            }
        }
        free(wv);
    }
    return failed ? -1 : 0;
}
