/* CPU reference kernels (kernels/<op>.c) against straightforward double-precision
 * re-implementations written here from deepseek-v3-reference.md, on fresh random
 * inputs. Outputs are poisoned with NaN before each kernel runs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "dtype.h"
#include "embed.h"
#include "gemm.h"
#include "gemm_fp8.h"
#include "mlp.h"
#include "rmsnorm.h"
#include "rope.h"
#include "router.h"
#include "test.h"

static float *rnd(size_t n, float scale)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = test_rand_normal() * scale;
    return p;
}

static float *poisoned(size_t n)
{
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

/* A random weight [rows, cols] of the given type; *deq gets its exact f32 values. */
typedef struct tw {
    k_weight w;
    void *data;
    float *scale;
    float *deq;
} tw;

static void tw_make(tw *t, k_wtype type, size_t rows, size_t cols, float std)
{
    float *f = rnd(rows * cols, std);
    memset(t, 0, sizeof *t);
    t->deq = malloc(rows * cols * sizeof(float));
    t->w.type = type;
    t->w.rows = rows;
    t->w.cols = cols;
    if (type == K_W_F32) {
        t->data = f;
        memcpy(t->deq, f, rows * cols * sizeof(float));
        f = NULL;
    } else if (type == K_W_BF16) {
        uint16_t *b = malloc(rows * cols * 2);
        dt_f32_to_bf16_n(f, b, rows * cols);
        dt_bf16_to_f32_n(b, t->deq, rows * cols);
        t->data = b;
    } else {
        size_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        uint8_t *q = malloc(rows * cols);
        t->scale = malloc(sr * sc * sizeof(float));
        dt_block_quant(f, rows, cols, q, t->scale);
        dt_block_dequant(q, t->scale, rows, cols, t->deq);
        t->data = q;
        t->w.scale = t->scale;
        t->w.scale_ld = sc;
    }
    t->w.data = t->data;
    free(f);
}

static void tw_free(tw *t)
{
    free(t->data);
    free(t->scale);
    free(t->deq);
}

/* ---------------------------------------------------------------- rmsnorm */
TEST(k_rmsnorm_matches_double)
{
    size_t rows = 7, dim = 300, ld = 320;
    float *x = rnd(rows * ld, 2.0f), *w = rnd(dim, 1.0f), *y = poisoned(rows * ld);
    float *ref = malloc(rows * dim * sizeof(float)), *got = malloc(rows * dim * sizeof(float));
    for (size_t r = 0; r < rows; r++) {
        double ss = 0;
        for (size_t j = 0; j < dim; j++)
            ss += (double)x[r * ld + j] * x[r * ld + j];
        double inv = 1.0 / sqrt(ss / dim + 1e-6);
        for (size_t j = 0; j < dim; j++)
            ref[r * dim + j] = (float)(x[r * ld + j] * inv * w[j]);
    }
    k_rmsnorm(x, ld, w, y, ld, rows, dim, 1e-6f);
    for (size_t r = 0; r < rows; r++)
        memcpy(got + r * dim, y + r * ld, dim * sizeof(float));
    CHECK_ALLCLOSE_REL(got, ref, rows * dim, 1e-6);
    CHECK(isnan(y[dim])); /* the stride gap is untouched */
    /* in place */
    k_rmsnorm(x, ld, w, x, ld, rows, dim, 1e-6f);
    for (size_t r = 0; r < rows; r++)
        memcpy(got + r * dim, x + r * ld, dim * sizeof(float));
    CHECK_ALLCLOSE_REL(got, ref, rows * dim, 1e-6);
    free(x); free(w); free(y); free(ref); free(got);
}

/* ---------------------------------------------------------------- rope */
static const k_rope_params R1_ROPE = {64, 10000.0, 1, 40.0, 4096.0, 32.0, 1.0, 1.0, 1.0};

TEST(k_rope_yarn_frequencies_match_reference)
{
    k_rope r;
    CHECK_EQ_INT(k_rope_init(&r, &R1_ROPE), 0);
    CHECK_NEAR(r.attn_factor, 1.0, 0);
    /* deepseek-v3-reference.md §6: low = 10, high = 23 for R1's dims */
    for (int i = 0; i < 32; i++) {
        double f = pow(10000.0, -2.0 * i / 64.0);
        double ramp = (i - 10.0) / 13.0;
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double want = f / 40.0 * ramp + f * (1 - ramp);
        CHECK_NEAR(r.inv_freq[i], want, want * 2e-6);
    }
    /* softmax scale 192^-0.5 * (0.1 ln 40 + 1)^2 = 0.1352338 */
    CHECK_NEAR(k_rope_softmax_scale(&R1_ROPE, 192), 0.1352338, 1e-7);
    k_rope_params plain = {64, 10000.0, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(k_rope_init(&r, &plain), 0);
    CHECK_NEAR(r.inv_freq[5], pow(10000.0, -10.0 / 64.0), 1e-7);
    CHECK_NEAR(k_rope_softmax_scale(&plain, 192), 1.0 / sqrt(192.0), 1e-12);
    k_rope_params odd = R1_ROPE;
    odd.dim = 63;
    CHECK_EQ_INT(k_rope_init(&r, &odd), -1);
}

TEST(k_rope_rotates_interleaved_pairs)
{
    k_rope r;
    k_rope_init(&r, &R1_ROPE);
    size_t T = 5, H = 3, ldh = 80, ldr = H * ldh;
    float *x = rnd(T * ldr, 1.0f), *y = malloc(T * ldr * sizeof(float));
    memcpy(y, x, T * ldr * sizeof(float));
    int32_t pos[5] = {0, 3, 17, 100, 4095};
    k_rope_apply(&r, y, T, H, ldr, ldh, pos);
    for (size_t t = 0; t < T; t++)
        for (size_t h = 0; h < H; h++) {
            const float *a = x + t * ldr + h * ldh;
            const float *b = y + t * ldr + h * ldh;
            for (int i = 0; i < 32; i++) {
                double th = (double)((float)pos[t] * r.inv_freq[i]); /* fp32 angle, as documented */
                double c = cos(th), s = sin(th);
                CHECK_NEAR(b[2 * i], a[2 * i] * c - a[2 * i + 1] * s, 1e-4);
                CHECK_NEAR(b[2 * i + 1], a[2 * i] * s + a[2 * i + 1] * c, 1e-4);
            }
            for (size_t j = 64; j < ldh; j++) /* past the rotary dims: untouched */
                CHECK(b[j] == a[j]);
        }
    free(x);
    free(y);
}

TEST(k_rope_scores_depend_on_relative_position)
{
    k_rope r;
    k_rope_init(&r, &R1_ROPE);
    float *q = rnd(64, 1.0f), *k = rnd(64, 1.0f);
    float a[64], b[64], c[64], d[64];
    memcpy(a, q, sizeof a); memcpy(b, k, sizeof b); memcpy(c, q, sizeof c); memcpy(d, k, sizeof d);
    int32_t p1 = 9, p2 = 4, p3 = 9 + 50, p4 = 4 + 50;
    k_rope_apply(&r, a, 1, 1, 64, 64, &p1);
    k_rope_apply(&r, b, 1, 1, 64, 64, &p2);
    k_rope_apply(&r, c, 1, 1, 64, 64, &p3);
    k_rope_apply(&r, d, 1, 1, 64, 64, &p4);
    CHECK_NEAR(k_dot(a, b, 64), k_dot(c, d, 64), 1e-4);
    free(q);
    free(k);
}

/* ---------------------------------------------------------------- gemm */
static void ref_gemm(const float *x, size_t ldx, size_t M, const float *w, size_t N, size_t K,
                     float *y)
{
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            double s = 0;
            for (size_t k = 0; k < K; k++)
                s += (double)x[m * ldx + k] * w[n * K + k];
            y[m * N + n] = (float)s;
        }
}

TEST(k_gemm_all_weight_types)
{
    const k_wtype types[3] = {K_W_F32, K_W_BF16, K_W_FP8};
    size_t M = 5, N = 200, K = 300, ldx = 310, ldy = 205; /* unaligned edges on purpose */
    for (int ti = 0; ti < 3; ti++) {
        tw w;
        tw_make(&w, types[ti], N, K, 0.05f);
        float *x = rnd(M * ldx, 1.0f), *y = poisoned(M * ldy), *ref = malloc(M * N * 4);
        float *got = malloc(M * N * 4);
        ref_gemm(x, ldx, M, w.deq, N, K, ref);
        CHECK_EQ_INT(k_gemm(x, ldx, M, &w.w, y, ldy, 0), 0);
        for (size_t m = 0; m < M; m++)
            memcpy(got + m * N, y + m * ldy, N * 4);
        CHECK_ALLCLOSE_REL(got, ref, M * N, 1e-5);
        CHECK(isnan(y[N])); /* ldy gap untouched */
        /* accumulate */
        CHECK_EQ_INT(k_gemm(x, ldx, M, &w.w, y, ldy, 1), 0);
        for (size_t m = 0; m < M; m++)
            for (size_t n = 0; n < N; n++)
                got[m * N + n] = y[m * ldy + n] / 2;
        CHECK_ALLCLOSE_REL(got, ref, M * N, 1e-5);
        /* dequantized rows equal the independent dequantization */
        float *rows = poisoned(3 * K);
        k_weight_to_f32(&w.w, 129, 132, rows);
        CHECK(memcmp(rows, w.deq + 129 * K, 3 * K * 4) == 0);
        free(rows);
        /* row views: aligned for every type, unaligned only without block scales */
        k_weight v;
        CHECK_EQ_INT(k_weight_rows(&w.w, 128, 200, &v), 0);
        CHECK_EQ_INT(v.rows, 72);
        CHECK_EQ_INT(k_gemm(x, ldx, M, &v, y, ldy, 0), 0);
        for (size_t m = 0; m < M; m++)
            for (size_t n = 0; n < 72; n++)
                got[m * 72 + n] = y[m * ldy + n], ref[m * 72 + n] = ref[m * N + 128 + n];
        CHECK_ALLCLOSE_REL(got, ref, M * 72, 1e-5);
        CHECK_EQ_INT(k_weight_rows(&w.w, 3, 10, &v), types[ti] == K_W_FP8 ? -1 : 0);
        CHECK_EQ_INT(k_weight_rows(&w.w, 10, 201, &v), -1);
        free(x); free(y); free(ref); free(got);
        tw_free(&w);
    }
}

TEST(k_gemm_fp8_act_quant_reference)
{
    size_t M = 3, N = 192, K = 320, ldx = 330;
    float *x = rnd(M * ldx, 3.0f);
    x[5] = 1e-6f; /* tiny values exercise the 1e-4 amax floor only in an all-small block */
    for (size_t k = 256; k < 320; k++)
        x[2 * ldx + k] = 1e-7f * test_rand_normal();
    uint8_t *a = malloc(M * K);
    float *as = poisoned(M * 3);
    k_act_quant(x, ldx, M, K, a, as);
    for (size_t m = 0; m < M; m++)
        for (size_t b = 0; b < 3; b++) {
            double amax = 0;
            for (size_t k = b * 128; k < K && k < (b + 1) * 128; k++)
                amax = fmax(amax, fabs(x[m * ldx + k]));
            double s = fmax(amax, 1e-4) / 448.0;
            CHECK_NEAR(as[m * 3 + b], s, s * 1e-6);
            for (size_t k = b * 128; k < K && k < (b + 1) * 128; k++)
                CHECK_EQ_INT(a[m * K + k], dt_f32_to_fp8(x[m * ldx + k] / as[m * 3 + b]));
        }
    CHECK_NEAR(as[2 * 3 + 2], 1e-4 / 448.0, 1e-12);
    tw w;
    tw_make(&w, K_W_FP8, N, K, 0.05f);
    float *y = poisoned(M * N), *ref = malloc(M * N * 4), *plain = malloc(M * N * 4);
    k_gemm_fp8(a, as, M, w.data, w.scale, N, K, y, N);
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            double acc = 0;
            for (size_t b = 0; b < 3; b++) {
                double part = 0;
                for (size_t k = b * 128; k < K && k < (b + 1) * 128; k++)
                    part += (double)dt_fp8_to_f32(a[m * K + k]) *
                            dt_fp8_to_f32(((uint8_t *)w.data)[n * K + k]);
                acc += part * as[m * 3 + b] * w.scale[(n / 128) * 3 + b];
            }
            ref[m * N + n] = (float)acc;
        }
    CHECK_ALLCLOSE_REL(y, ref, M * N, 1e-5);
    /* activation quantization costs a few percent against fp32 activations */
    ref_gemm(x, ldx, M, w.deq, N, K, plain);
    double e = test_rel_err(y, plain, M * N);
    CHECK_MSG(e > 1e-4 && e < 0.1, "fp8 vs fp32-activation error %.3g not in (1e-4, 0.1)", e);
    free(x); free(a); free(as); free(y); free(ref); free(plain);
    tw_free(&w);
}

/* ---------------------------------------------------------------- attention */
/* Double-precision naive attention: q [T,H,dqk], k [S,H,dqk], v [S,H,dv] dense. */
static void ref_attn(const float *q, const float *k, const float *v, float *out, size_t T,
                     size_t S, size_t H, size_t dqk, size_t dv, size_t pos0, double scale)
{
    double *p = malloc(S * sizeof(double));
    for (size_t t = 0; t < T; t++)
        for (size_t h = 0; h < H; h++) {
            size_t n = pos0 + t + 1 < S ? pos0 + t + 1 : S;
            double m = -INFINITY, sum = 0;
            for (size_t s = 0; s < n; s++) {
                double d = 0;
                for (size_t j = 0; j < dqk; j++)
                    d += (double)q[(t * H + h) * dqk + j] * k[(s * H + h) * dqk + j];
                p[s] = d * scale;
                m = fmax(m, p[s]);
            }
            for (size_t s = 0; s < n; s++)
                sum += p[s] = exp(p[s] - m);
            for (size_t e = 0; e < dv; e++) {
                double o = 0;
                for (size_t s = 0; s < n; s++)
                    o += p[s] / sum * v[(s * H + h) * dv + e];
                out[(t * H + h) * dv + e] = (float)o;
            }
        }
    free(p);
}

TEST(k_attn_naive_matches_double)
{
    size_t T = 4, S = 9, H = 3, dqk = 40, dv = 24, pos0 = 5;
    float *q = rnd(T * H * dqk, 1.0f), *k = rnd(S * H * dqk, 1.0f), *v = rnd(S * H * dv, 1.0f);
    float *o = poisoned(T * H * dv), *ref = malloc(T * H * dv * 4);
    ref_attn(q, k, v, ref, T, S, H, dqk, dv, pos0, 0.3);
    CHECK_EQ_INT(k_attn_naive(q, H * dqk, k, H * dqk, v, H * dv, o, H * dv, T, S, H, dqk, dv,
                              pos0, 0.3f), 0);
    CHECK_ALLCLOSE_REL(o, ref, T * H * dv, 1e-5);
    /* causality: changing a key beyond the last query's position changes nothing */
    /* (S = pos0 + T here, so perturb the first query's invisible keys instead) */
    float keep = o[0];
    k[(6 * H + 0) * dqk] += 10.0f; /* position 6 > pos0 + 0 */
    k_attn_naive(q, H * dqk, k, H * dqk, v, H * dv, o, H * dv, T, S, H, dqk, dv, pos0, 0.3f);
    CHECK(o[0] == keep);
    free(q); free(k); free(v); free(o); free(ref);
}

/* The key equivalence of MLA: absorbed attention over the latent cache equals naive
 * attention over keys/values decompressed with kv_b, for every weight type. */
TEST(k_mla_absorbed_equals_naive)
{
    const k_wtype types[3] = {K_W_F32, K_W_BF16, K_W_FP8};
    size_t H = 4, dn = 64, P = 32, dv = 64, R = 128, S = 11, T = 3, pos0 = 8;
    for (int ti = 0; ti < 3; ti++) {
        tw wkv;
        tw_make(&wkv, types[ti], H * (dn + dv), R, 0.1f);
        float *c = rnd(S * R, 1.0f), *kpe = rnd(S * P, 1.0f);
        float *q = rnd(T * H * (dn + P), 1.0f); /* per head [nope | pe] */
        /* naive: k = [c W_UK^T, kpe], v = c W_UV^T */
        size_t dqk = dn + P;
        float *kv = malloc(S * H * (dn + dv) * 4);
        ref_gemm(c, R, S, wkv.deq, H * (dn + dv), R, kv);
        float *k = malloc(S * H * dqk * 4), *v = malloc(S * H * dv * 4);
        for (size_t s = 0; s < S; s++)
            for (size_t h = 0; h < H; h++) {
                memcpy(k + (s * H + h) * dqk, kv + s * H * (dn + dv) + h * (dn + dv), dn * 4);
                memcpy(k + (s * H + h) * dqk + dn, kpe + s * P, P * 4);
                memcpy(v + (s * H + h) * dv, kv + s * H * (dn + dv) + h * (dn + dv) + dn, dv * 4);
            }
        float *naive = poisoned(T * H * dv), *ref = malloc(T * H * dv * 4);
        CHECK_EQ_INT(k_attn_naive(q, H * dqk, k, H * dqk, v, H * dv, naive, H * dv, T, S, H, dqk,
                                  dv, pos0, 0.125f), 0);
        ref_attn(q, k, v, ref, T, S, H, dqk, dv, pos0, 0.125);
        CHECK_ALLCLOSE_REL(naive, ref, T * H * dv, 1e-5);
        float *q_lat = poisoned(T * H * R), *o_lat = poisoned(T * H * R), *abs = poisoned(T * H * dv);
        CHECK_EQ_INT(k_mla_absorb_q(q, H * dqk, dqk, T, H, dn, dv, &wkv.w, q_lat), 0);
        CHECK_EQ_INT(k_mla_attn(q_lat, q + dn, H * dqk, dqk, c, R, kpe, P, o_lat, T, S, H, R, P,
                                pos0, 0.125f), 0);
        CHECK_EQ_INT(k_mla_absorb_v(o_lat, T, H, dn, dv, &wkv.w, abs, H * dv), 0);
        CHECK_ALLCLOSE_REL(abs, ref, T * H * dv, 1e-5);
        CHECK_ALLCLOSE_REL(abs, naive, T * H * dv, 1e-5);
        free(c); free(kpe); free(q); free(kv); free(k); free(v); free(naive); free(ref);
        free(q_lat); free(o_lat); free(abs);
        tw_free(&wkv);
    }
}

/* ---------------------------------------------------------------- router */
/* Reference written the obvious way: sort indices by value. */
static const double *cmp_vals;
static int cmp_desc(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (cmp_vals[i] != cmp_vals[j])
        return cmp_vals[i] > cmp_vals[j] ? -1 : 1;
    return i - j;
}

static void ref_router(const k_router_cfg *c, const float *l, const float *bias, int *idx,
                       double *w)
{
    int E = c->n_experts, G = c->n_group, per = E / G;
    double s[256], sel[256], gs[64];
    int order[256];
    for (int e = 0; e < E; e++) {
        s[e] = 1.0 / (1.0 + exp(-(double)l[e]));
        sel[e] = s[e] + bias[e];
    }
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < per; i++)
            order[i] = g * per + i;
        cmp_vals = sel;
        qsort(order, per, sizeof(int), cmp_desc);
        gs[g] = sel[order[0]] + sel[order[1]];
    }
    for (int g = 0; g < G; g++)
        order[g] = g;
    cmp_vals = gs;
    qsort(order, G, sizeof(int), cmp_desc);
    double masked[256];
    for (int e = 0; e < E; e++)
        masked[e] = -INFINITY;
    for (int k = 0; k < (int)c->topk_group; k++)
        for (int i = 0; i < per; i++)
            masked[order[k] * per + i] = sel[order[k] * per + i];
    for (int e = 0; e < E; e++)
        order[e] = e;
    cmp_vals = masked;
    qsort(order, E, sizeof(int), cmp_desc);
    double sum = 0;
    for (int k = 0; k < (int)c->top_k; k++)
        sum += s[order[k]];
    for (int k = 0; k < (int)c->top_k; k++) {
        idx[k] = order[k];
        w[k] = s[order[k]] / sum * c->scale;
    }
}

TEST(k_router_grouped_topk)
{
    k_router_cfg c = {64, 8, 3, 6, 1, 2.5f};
    size_t T = 40;
    float *l = rnd(T * 64, 1.5f), *bias = malloc(64 * 4);
    for (int e = 0; e < 64; e++)
        bias[e] = 0.3f * test_rand_normal(); /* signed: -inf masking matters */
    int32_t idx[40 * 6];
    float w[40 * 6];
    CHECK_EQ_INT(k_router(&c, l, bias, T, idx, w), 0);
    for (size_t t = 0; t < T; t++) {
        int ri[6];
        double rw[6];
        ref_router(&c, l + t * 64, bias, ri, rw);
        for (int k = 0; k < 6; k++) {
            CHECK_EQ_INT(idx[t * 6 + k], ri[k]);
            CHECK_NEAR(w[t * 6 + k], rw[k], 1e-6);
        }
    }
    CHECK_EQ_INT(k_router(&(k_router_cfg){64, 7, 3, 6, 1, 1.0f}, l, bias, 1, idx, w), -1);
    CHECK_EQ_INT(k_router(&(k_router_cfg){64, 8, 1, 9, 1, 1.0f}, l, bias, 1, idx, w), -1);
    free(l);
    free(bias);
}

/* Masking with -inf (not 0.0): when every selection score of the kept groups is
 * negative, a masked expert must still never be chosen. */
TEST(k_router_masks_with_neg_inf)
{
    k_router_cfg c = {8, 4, 1, 2, 1, 1.0f};
    float l[8], bias[8];
    for (int e = 0; e < 8; e++)
        l[e] = 0.1f * e, bias[e] = -5.0f;
    bias[6] = bias[7] = -1.0f; /* group 3 wins; its sel are ~ -0.35 < 0 */
    int32_t idx[2];
    float w[2];
    CHECK_EQ_INT(k_router(&c, l, bias, 1, idx, w), 0);
    CHECK_EQ_INT(idx[0], 7);
    CHECK_EQ_INT(idx[1], 6);
    double s6 = 1 / (1 + exp(-0.6)), s7 = 1 / (1 + exp(-0.7));
    CHECK_NEAR(w[0], s7 / (s6 + s7), 1e-6);
    /* unnormalized: raw sigmoid times scale */
    c.norm_topk_prob = 0;
    c.scale = 2.5f;
    CHECK_EQ_INT(k_router(&c, l, bias, 1, idx, w), 0);
    CHECK_NEAR(w[1], s6 * 2.5, 1e-6);
}

/* ---------------------------------------------------------------- mlp */
TEST(k_mlp_silu_gated)
{
    size_t M = 6, D = 160, I = 200, ldx = 170;
    tw g, u, d;
    tw_make(&g, K_W_FP8, I, D, 0.1f);
    tw_make(&u, K_W_BF16, I, D, 0.1f);
    tw_make(&d, K_W_FP8, D, I, 0.1f);
    float *x = rnd(M * ldx, 1.0f), *y = poisoned(M * D), *ref = malloc(M * D * 4);
    float *gg = malloc(M * I * 4), *uu = malloc(M * I * 4), *h = malloc(M * I * 4);
    ref_gemm(x, ldx, M, g.deq, I, D, gg);
    ref_gemm(x, ldx, M, u.deq, I, D, uu);
    for (size_t i = 0; i < M * I; i++)
        h[i] = (float)(gg[i] / (1.0 + exp(-(double)gg[i])) * uu[i]);
    ref_gemm(h, I, M, d.deq, D, I, ref);
    CHECK_EQ_INT(k_mlp(x, ldx, M, &g.w, &u.w, &d.w, y, D, 0, NULL), 0);
    CHECK_ALLCLOSE_REL(y, ref, M * D, 1e-5);
    /* accumulate with per-row weights */
    float ws[6];
    for (int m = 0; m < 6; m++)
        ws[m] = 0.5f + m;
    CHECK_EQ_INT(k_mlp(x, ldx, M, &g.w, &u.w, &d.w, y, D, 1, ws), 0);
    for (size_t m = 0; m < M; m++)
        for (size_t j = 0; j < D; j++)
            ref[m * D + j] *= 1.0f + ws[m];
    CHECK_ALLCLOSE_REL(y, ref, M * D, 1e-5);
    float a[3] = {-2.0f, 0.5f, 3.0f}, b[3] = {1.5f, -1.0f, 2.0f}, o[3];
    k_silu_mul(a, b, o, 3);
    for (int i = 0; i < 3; i++)
        CHECK_NEAR(o[i], a[i] / (1 + exp(-a[i])) * b[i], 1e-6);
    free(x); free(y); free(ref); free(gg); free(uu); free(h);
    tw_free(&g); tw_free(&u); tw_free(&d);
}

/* ---------------------------------------------------------------- embed */
TEST(k_embed_vocab_parallel_sums_to_full)
{
    size_t V = 64, D = 24, T = 9, tp = 4;
    tw tab;
    tw_make(&tab, K_W_BF16, V, D, 1.0f);
    int32_t ids[9] = {0, 15, 16, 31, 32, 47, 48, 63, 5};
    float *full = poisoned(T * D), *sum = calloc(T * D, 4), *part = poisoned(T * D);
    k_embed(&tab.w, 0, ids, T, full, D);
    for (size_t t = 0; t < T; t++)
        CHECK(memcmp(full + t * D, tab.deq + ids[t] * D, D * 4) == 0);
    for (size_t r = 0; r < tp; r++) {
        k_weight v;
        CHECK_EQ_INT(k_weight_rows(&tab.w, r * V / tp, (r + 1) * V / tp, &v), 0);
        k_embed(&v, r * V / tp, ids, T, part, D);
        for (size_t i = 0; i < T * D; i++)
            sum[i] += part[i];
    }
    CHECK(memcmp(sum, full, T * D * 4) == 0);
    free(full); free(sum); free(part);
    tw_free(&tab);
}
