/* test_kernels: every CUDA kernel against its CPU reference (kernels/<op>.c) on fresh
 * random inputs, outputs poisoned (NaN) before each launch. Prints PASS/FAIL lines with
 * the measured error and "N passed, M failed"; exit 1 on any failure. GPU only
 * (make test-gpu). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "cuda_kernels.h"

extern "C" {
#include "attn.h"
#include "dtype.h"
#include "embed.h"
#include "gemm_fp8.h"
#include "mlp.h"
#include "rmsnorm.h"
#include "upload.h"
}
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

static int g_pass, g_fail;
static int g_mla_dyn_checked; /* MLA attention runs with the position on the device */
static uint64_t g_rng = 0x1234567887654321ull;

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rnorm(void)
{
    double u1 = ((rnd() >> 11) + 1.0) / 9007199254740993.0, u2 = (rnd() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static std::vector<float> randv(size_t n, float s = 1.0f)
{
    std::vector<float> v(n);
    for (auto &x : v)
        x = rnorm() * s;
    return v;
}

#define CK(call)                                                                 \
    do {                                                                         \
        int _rc = (int)(call);                                                   \
        if (_rc) {                                                               \
            printf("FAIL %s:%d %s: %s\n", __FILE__, __LINE__, #call, kc_strerror(_rc)); \
            g_fail++;                                                            \
            return;                                                              \
        }                                                                        \
    } while (0)

template <class T>
static T *up(const std::vector<T> &h)
{
    T *d = NULL;
    if (cudaMalloc(&d, h.size() * sizeof(T) + 16) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc failed\n");
        exit(3);
    }
    cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    return d;
}

template <class T>
static T *poisoned(size_t n)
{
    T *d = NULL;
    if (cudaMalloc(&d, n * sizeof(T) + 16) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc failed\n");
        exit(3);
    }
    cudaMemset(d, 0xff, n * sizeof(T)); /* NaN for floats */
    return d;
}

template <class T>
static std::vector<T> down(const T *d, size_t n)
{
    std::vector<T> h(n);
    cudaDeviceSynchronize();
    cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
}

/* max|a-b| / max|b|; NaN anywhere in a where b is finite fails (INFINITY). */
static double rel_err(const float *a, const float *b, size_t n)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i]))
            return INFINITY;
        if (isnan(a[i]))
            continue;
        md = fmax(md, fabs((double)a[i] - b[i]));
        mr = fmax(mr, fabs((double)b[i]));
    }
    return mr > 0 ? md / mr : md;
}

static void report(const char *name, double err, double tol)
{
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) {
        printf("FAIL %s: CUDA error %s\n", name, cudaGetErrorString(e));
        g_fail++;
    } else if (err <= tol) {
        printf("PASS %s (rel err %.3g <= %.3g)\n", name, err, tol);
        g_pass++;
    } else {
        printf("FAIL %s: rel err %.3g > %.3g\n", name, err, tol);
        g_fail++;
    }
}

/* A random weight of the given type; fills the host k_weight (host pointers) and the
 * device one, plus the f32 dequantized values. */
struct W {
    k_weight h, d;
    std::vector<uint8_t> q;
    std::vector<uint16_t> b;
    std::vector<float> f, s;
};

static W make_w(k_wtype t, size_t rows, size_t cols, float sc = 0.05f)
{
    W w;
    w.f = randv(rows * cols, sc);
    size_t nb = (rows + 127) / 128, kb = (cols + 127) / 128;
    w.h.type = w.d.type = t;
    w.h.rows = w.d.rows = rows;
    w.h.cols = w.d.cols = cols;
    w.h.scale_ld = w.d.scale_ld = kb;
    w.h.scale = w.d.scale = NULL;
    if (t == K_W_FP8) {
        w.q.resize(rows * cols);
        w.s.resize(nb * kb);
        dt_block_quant(w.f.data(), rows, cols, w.q.data(), w.s.data());
        w.h.data = w.q.data();
        w.h.scale = w.s.data();
        w.d.data = up(w.q);
        w.d.scale = up(w.s);
    } else if (t == K_W_BF16) {
        w.b.resize(rows * cols);
        dt_f32_to_bf16_n(w.f.data(), w.b.data(), rows * cols);
        w.h.data = w.b.data();
        w.d.data = up(w.b);
    } else {
        w.h.data = w.f.data();
        w.d.data = up(w.f);
    }
    return w;
}

static void test_rmsnorm(void)
{
    /* float4 path (7168 strided, 1536, in place) and the scalar path (odd width, > 8192) */
    struct {
        size_t rows, dim, ld;
        int in_place;
    } cases[] = {{7, 7168, 7200, 0}, {3, 1536, 1536, 1}, {5, 1001, 1003, 0}, {2, 9000, 9000, 0}};
    for (auto &c : cases) {
        auto x = randv(c.rows * c.ld), w = randv(c.dim);
        std::vector<float> ref(c.rows * c.ld, 0.0f);
        k_rmsnorm(x.data(), c.ld, w.data(), ref.data(), c.ld, c.rows, c.dim, 1e-6f);
        float *dx = up(x), *dw = up(w), *dy = c.in_place ? dx : poisoned<float>(c.rows * c.ld);
        if (!c.in_place)
            cudaMemset(dy, 0, c.rows * c.ld * 4);
        CK(kc_rmsnorm(dx, c.ld, dw, dy, c.ld, c.rows, c.dim, 1e-6f, 0));
        auto got = down(dy, c.rows * c.ld);
        if (c.in_place) /* the padding columns (none here) would keep x */
            for (size_t i = 0; i < ref.size(); i++)
                if (i % c.ld >= c.dim)
                    ref[i] = x[i];
        char name[96];
        snprintf(name, sizeof name, "rmsnorm %zux%zu (ld %zu%s)", c.rows, c.dim, c.ld,
                 c.in_place ? ", in place" : "");
        report(name, rel_err(got.data(), ref.data(), c.rows * c.ld), 1e-5);
    }
}

static void test_rope(void)
{
    k_rope_params p = {64, 10000.0, 1, 40.0, 4096.0, 32.0, 1.0, 1.0, 1.0};
    k_rope r;
    k_rope_init(&r, &p);
    size_t T = 5, H = 16, ldh = 192, ldr = H * ldh;
    auto x = randv(T * ldr);
    std::vector<int32_t> pos(T);
    for (size_t t = 0; t < T; t++)
        pos[t] = (int32_t)(rnd() % 150000);
    float *dx = up(x);
    int32_t *dp = up(pos);
    k_rope_apply(&r, x.data() + 128, T, H, ldr, ldh, pos.data());
    CK(kc_rope_apply(&r, dx + 128, T, H, ldr, ldh, dp, 0));
    auto got = down(dx, x.size());
    report("rope yarn 5x16x64 (positions to 150000)", rel_err(got.data(), x.data(), x.size()), 2e-5);
}

/* kc_mla_prep against its parts on the CPU: rmsnorm into the latent cache, k_pe copied
 * and rotated into the rope cache, q_pe rotated in place (H not a multiple of 8). */
static void test_mla_prep(void)
{
    k_rope_params p = {64, 10000.0, 1, 40.0, 4096.0, 32.0, 1.0, 1.0, 1.0};
    k_rope r;
    k_rope_init(&r, &p);
    size_t T = 3, H = 20, R = 512, P = 64, dn = 128, dq = dn + P, ldq = H * dq, cap = 40, p0 = 30;
    auto kva = randv(T * (R + P)), q = randv(T * ldq), w = randv(R), c0 = randv(cap * R),
         k0 = randv(cap * P);
    std::vector<int32_t> pos(T);
    for (size_t t = 0; t < T; t++)
        pos[t] = (int32_t)(p0 + t + 100000);
    std::vector<float> c = c0, kp = k0, qr = q;
    k_rmsnorm(kva.data(), R + P, w.data(), c.data() + p0 * R, R, T, R, 1e-6f);
    for (size_t t = 0; t < T; t++)
        memcpy(kp.data() + (p0 + t) * P, kva.data() + t * (R + P) + R, P * 4);
    k_rope_apply(&r, kp.data() + p0 * P, T, 1, P, P, pos.data());
    k_rope_apply(&r, qr.data() + dn, T, H, ldq, dq, pos.data());
    float *dkva = up(kva), *dqv = up(q), *dw = up(w), *dc = up(c0), *dk = up(k0);
    int32_t *dp = up(pos);
    CK(kc_mla_prep(dkva, R + P, R, dw, 1e-6f, dc + p0 * R, R, dk + p0 * P, P, dqv, ldq, dq, dn, H,
                   &r, dp, T, NULL, 0));
    auto gc = down(dc, c.size()), gk = down(dk, kp.size()), gq = down(dqv, qr.size());
    double e = fmax(rel_err(gc.data(), c.data(), c.size()),
                    fmax(rel_err(gk.data(), kp.data(), kp.size()),
                         rel_err(gq.data(), qr.data(), qr.size())));
    report("mla prep: kv norm into the cache, rope k_pe and q_pe (20 heads)", e, 2e-5);
    /* the cache row read on the device (CUDA graphs): the same bytes */
    std::vector<int32_t> row0 = {(int32_t)p0};
    int32_t *dr = up(row0);
    float *dc2 = up(c0), *dk2 = up(k0), *dq2 = up(q);
    CK(kc_mla_prep(dkva, R + P, R, dw, 1e-6f, dc2, R, dk2, P, dq2, ldq, dq, dn, H, &r, dp, T, dr, 0));
    auto hc = down(dc2, c.size()), hk = down(dk2, kp.size()), hq = down(dq2, qr.size());
    report("mla prep: cache row from the device equals the host offset", 
           fmax(rel_err(hc.data(), gc.data(), c.size()),
                fmax(rel_err(hk.data(), gk.data(), kp.size()), rel_err(hq.data(), gq.data(), q.size()))),
           0.0);
    cudaFree(dr), cudaFree(dc2), cudaFree(dk2), cudaFree(dq2);
}

static void test_embed(void)
{
    for (int t = 0; t < 2; t++) {
        k_wtype ty = t ? K_W_BF16 : K_W_FP8;
        size_t V = 300, D = 512, row0 = 256;
        W w = make_w(ty, V, D, 1.0f);
        std::vector<int32_t> ids = {256, 300, 555, 12, 400, 555, 1000};
        std::vector<float> ref(ids.size() * D);
        k_embed(&w.h, row0, ids.data(), ids.size(), ref.data(), D);
        int32_t *di = up(ids);
        float *dout = poisoned<float>(ids.size() * D);
        CK(kc_embed(&w.d, row0, di, ids.size(), dout, D, 0));
        auto got = down(dout, ref.size());
        report(t ? "embed bf16 vocab-parallel" : "embed fp8 vocab-parallel",
               rel_err(got.data(), ref.data(), ref.size()), 0.0);
    }
}

/* kc_act_quant against k_act_quant on M x K (row stride ldx): every code and scale
 * equal. Leaves the host and device codes and scales for the GEMM check. */
struct act_q {
    std::vector<uint8_t> a;
    std::vector<float> as;
    uint8_t *da;
    float *das;
};

static act_q check_act_quant(size_t M, size_t K, size_t ldx, const char *name)
{
    act_q q;
    size_t nb = (K + 127) / 128;
    auto x = randv(M * ldx, 3.0f);
    q.a.resize(M * K);
    q.as.resize(M * nb);
    k_act_quant(x.data(), ldx, M, K, q.a.data(), q.as.data());
    float *dx = up(x);
    q.da = poisoned<uint8_t>(M * K);
    q.das = poisoned<float>(M * nb);
    int rc = kc_act_quant(dx, ldx, M, K, q.da, q.das, 0);
    auto ga = down(q.da, M * K);
    auto gs = down(q.das, M * nb);
    size_t bad = 0;
    for (size_t i = 0; i < M * K; i++)
        bad += ga[i] != q.a[i];
    double se = rel_err(gs.data(), q.as.data(), gs.size());
    bool ok = rc == 0 && bad == 0 && se == 0;
    printf("%s act_quant %s: %zu of %zu codes differ, scale rel err %.3g%s\n", ok ? "PASS" : "FAIL",
           name, bad, M * K, se, rc ? " (launch failed)" : "");
    ok ? g_pass++ : g_fail++;
    cudaFree(dx);
    return q;
}

static void test_act_quant_and_fp8(kc_ctx *ctx)
{
    size_t M = 33, K = 7168 + 64, N = 256;
    act_q q = check_act_quant(M, K, K, "33x7232");
    check_act_quant(5, 1001, 1003, "5x1001 (ld 1003, scalar path)");
    W w = make_w(K_W_FP8, N, K);
    std::vector<float> ref(M * N);
    k_gemm_fp8(q.a.data(), q.as.data(), M, w.q.data(), w.s.data(), N, K, ref.data(), N);
    float *dy = poisoned<float>(M * N);
    CK(kc_gemm_fp8_simple(q.da, q.das, M, (const uint8_t *)w.d.data, w.d.scale, N, K, dy, N, 0));
    auto got = down(dy, M * N);
    report("gemm_fp8_simple vs k_gemm_fp8", rel_err(got.data(), ref.data(), ref.size()), 1e-5);
}

static void test_gemm(kc_ctx *ctx)
{
    kc_set_gemv_a8(0); /* the GEMV checks here are W8A32; test_gemv_a8 has the FP8 path */
    const char *why;
    int mode = kc_ctx_fp8_lt_mode(ctx, &why);
    printf("INFO cuBLASLt FP8 block scaling: %s\n", why);
    struct {
        k_wtype t;
        size_t N, K;
        const char *name;
    } shapes[] = {{K_W_FP8, 2048, 7168, "fp8 2048x7168"}, {K_W_FP8, 576, 7168, "fp8 576x7168"},
                  {K_W_FP8, 24, 40, "fp8 24x40 (scalar path)"},
                  {K_W_FP8, 100, 1552, "fp8 100x1552 (partial tiles)"},
                  {K_W_FP8, 1536, 1536, "fp8 1536x1536"}, {K_W_FP8, 260, 2048, "fp8 260x2048"},
                  {K_W_BF16, 1024, 7168, "bf16 1024x7168"}, {K_W_BF16, 70, 520, "bf16 70x520"},
                  {K_W_F32, 129, 512, "f32 129x512"}};
    for (auto &s : shapes) {
        W w = make_w(s.t, s.N, s.K);
        size_t Ms[] = {1, 2, 3, 5, 8, 16, 37};
        for (size_t M : Ms) {
            auto x = randv(M * s.K);
            std::vector<float> ref(M * s.N), y0 = randv(M * s.N);
            ref = y0;
            k_gemm(x.data(), s.K, M, &w.h, ref.data(), s.N, 1);
            float *dx = up(x), *dy = up(y0);
            CK(kc_gemm(ctx, dx, s.K, M, &w.d, dy, s.N, 1, 1));
            auto got = down(dy, M * s.N);
            char name[128];
            snprintf(name, sizeof name, "gemm GEMV %s M=%zu accumulate", s.name, M);
            report(name, rel_err(got.data(), ref.data(), ref.size()), 2e-5);
            cudaFree(dx);
            cudaFree(dy);
        }
        if (s.t == K_W_F32 || s.N % 128)
            continue;
        /* tensor-core path at prefill sizes */
        size_t M = 256;
        auto x = randv(M * s.K);
        std::vector<float> ref(M * s.N);
        k_gemm(x.data(), s.K, M, &w.h, ref.data(), s.N, 0);
        float *dx = up(x), *dy = poisoned<float>(M * s.N);
        CK(kc_gemm(ctx, dx, s.K, M, &w.d, dy, s.N, 0, 2));
        auto got = down(dy, M * s.N);
        char name[128];
        /* FP8 quantizes the activations (e4m3: 3 mantissa bits, rounding error up to 2^-4
         * of each element), so against fp32 activations the max-norm error is a few per
         * cent (2.7e-2 seen on an H200); the exact check is the next one. BF16 rounds to 8
         * bits: 1.5e-3 seen. */
        snprintf(name, sizeof name, "gemm cuBLASLt %s M=256 vs fp32 activations", s.name);
        report(name, rel_err(got.data(), ref.data(), ref.size()), s.t == K_W_FP8 ? 5e-2 : 1e-2);
        if (s.t == K_W_FP8 && mode != KC_LT_NONE) {
            size_t nb = (s.K + 127) / 128;
            std::vector<uint8_t> a(M * s.K);
            std::vector<float> as(M * nb), r8(M * s.N);
            k_act_quant(x.data(), s.K, M, s.K, a.data(), as.data());
            k_gemm_fp8(a.data(), as.data(), M, w.q.data(), w.s.data(), s.N, s.K, r8.data(), s.N);
            snprintf(name, sizeof name, "gemm cuBLASLt %s M=256 vs k_gemm_fp8 (same quantization)",
                     s.name);
            report(name, rel_err(got.data(), r8.data(), r8.size()), 2e-3);
        }
        cudaFree(dx);
        cudaFree(dy);
    }
    kc_set_gemv_a8(1);
}

/* The prefill dispatch (force 0, FP8 activations on) at the golden model's small shapes:
 * K = 256 (two 128-blocks, padded scale rows), a partial row block (kv_a's 192 rows),
 * accumulate (o_proj and down add into the residual), and the q_a + kv_a pair. 16-token
 * tiles of 3 or more tokens are quantized, 1 or 2 stay fp32; above 16 tokens the
 * quantized rows go to cuBLASLt FP8 in one call (padded to 16), the rest to the tile
 * GEMV. The reference picks per row: the W8A8 product (k_act_quant + k_gemm_fp8) or the
 * W8A32 one (k_gemm). cuBLASLt's FP8 tensor-core sums are ~2e-4 of the range off the
 * exact W8A8 sums at these shapes (H200). */
static void ref_rows(const float *x, size_t M, const W &w, const float *y0, float *ref)
{
    const size_t N = w.h.rows, K = w.h.cols, nb = K / 128;
    std::vector<uint8_t> a(M * K);
    std::vector<float> as(M * nb), r8(M * N), r32(M * N, 0.0f);
    k_act_quant(x, K, M, K, a.data(), as.data());
    k_gemm_fp8(a.data(), as.data(), M, w.q.data(), w.s.data(), N, K, r8.data(), N);
    k_gemm(x, K, M, &w.h, r32.data(), N, 0);
    for (size_t m = 0; m < M; m++) {
        const size_t tile = std::min((size_t)16, M - m / 16 * 16);
        const float *r = tile >= 3 ? r8.data() : r32.data();
        for (size_t n = 0; n < N; n++)
            ref[m * N + n] = (y0 ? y0[m * N + n] : 0.0f) + r[m * N + n];
    }
}

static void test_gemm_small_prefill(kc_ctx *ctx)
{
    const char *why;
    if (kc_ctx_fp8_lt_mode(ctx, &why) == KC_LT_NONE)
        return; /* the FP8 GEMM is then the CUDA-core kernel, checked in test_gemm */
    const bool partial = strstr(why, "partial row blocks ok") != NULL;
    kc_set_gemv_a8(1); /* the runtime's default: FP8 activations from 3 tokens */
    struct {
        size_t N, K;
        int acc;
    } shapes[] = {{256, 256, 0}, {192, 256, 0}, {1024, 256, 0}, {256, 512, 1}, {512, 256, 0},
                  {256, 256, 1}};
    for (auto &s : shapes) {
        if (s.N % 128 && !partial)
            continue;
        W w = make_w(K_W_FP8, s.N, s.K);
        for (size_t M : {(size_t)16, (size_t)17, (size_t)18, (size_t)19, (size_t)24, (size_t)40}) {
            auto x = randv(M * s.K), y0 = randv(M * s.N);
            std::vector<float> ref(M * s.N);
            ref_rows(x.data(), M, w, s.acc ? y0.data() : NULL, ref.data());
            float *dx = up(x), *dy = s.acc ? up(y0) : poisoned<float>(M * s.N);
            CK(kc_gemm(ctx, dx, s.K, M, &w.d, dy, s.N, s.acc, 0));
            auto got = down(dy, M * s.N);
            char name[128];
            snprintf(name, sizeof name, "gemm prefill dispatch fp8 %zux%zu M=%zu%s (W8A8 rows, W8A32 tail)",
                     s.N, s.K, M, s.acc ? " accumulate" : "");
            report(name, rel_err(got.data(), ref.data(), ref.size()), 2e-3);
            cudaFree(dx), cudaFree(dy);
        }
    }
    if (!partial)
        return;
    W a = make_w(K_W_FP8, 256, 256), b = make_w(K_W_FP8, 192, 256);
    for (size_t M : {(size_t)17, (size_t)24, (size_t)35}) {
        auto x = randv(M * 256);
        std::vector<float> r1(M * 256), r2(M * 192);
        ref_rows(x.data(), M, a, NULL, r1.data());
        ref_rows(x.data(), M, b, NULL, r2.data());
        float *dx = up(x), *d1 = poisoned<float>(M * 256), *d2 = poisoned<float>(M * 192);
        CK(kc_gemm_pair(ctx, dx, 256, M, &a.d, d1, 256, &b.d, d2, 192));
        auto g1 = down(d1, M * 256), g2 = down(d2, M * 192);
        char name[128];
        snprintf(name, sizeof name, "gemm prefill dispatch pair fp8 256+192 x 256 M=%zu", M);
        report(name, fmax(rel_err(g1.data(), r1.data(), r1.size()), rel_err(g2.data(), r2.data(), r2.size())),
               2e-3);
        cudaFree(dx), cudaFree(d1), cudaFree(d2);
    }
}

/* kc_gemm_glu on M tokens of R1's expert shape (FP8 gate and up, 2048 x 7168, output
 * row stride past I) against silu(ref(x, gate)) * ref(x, up), ref the CPU product the
 * path being checked must equal. */
template <class Ref>
static void check_glu(kc_ctx *ctx, size_t M, const char *what, double tol, Ref ref)
{
    size_t I = 2048, D = 7168, ldh = I + 8;
    W g = make_w(K_W_FP8, I, D), u = make_w(K_W_FP8, I, D);
    auto x = randv(M * D);
    std::vector<float> rg(M * I), ru(M * I), want(M * ldh, 0.0f);
    ref(x.data(), M, g, rg.data());
    ref(x.data(), M, u, ru.data());
    for (size_t m = 0; m < M; m++)
        k_silu_mul(rg.data() + m * I, ru.data() + m * I, want.data() + m * ldh, I);
    float *dx = up(x), *dh = poisoned<float>(M * ldh);
    cudaMemset(dh, 0, M * ldh * 4);
    CK(kc_gemm_glu(ctx, dx, D, M, &g.d, &u.d, dh, ldh));
    auto got = down(dh, M * ldh);
    char name[128];
    snprintf(name, sizeof name, "%s 2x%zux%zu M=%zu", what, I, D, M);
    report(name, rel_err(got.data(), want.data(), want.size()), tol);
    cudaFree(dx), cudaFree(dh);
}

/* y (=, or += when acc) the W8A8 reference of kc_gemm at 3..16 tokens: 16-token tiles of
 * 3+ tokens quantized 1x128 (k_act_quant) and multiplied block-scaled (k_gemm_fp8);
 * tiles of 1 or 2 tokens (and K not a multiple of 128) in fp32 activations (k_gemm). */
static void ref_gemm_a8(const float *x, size_t M, const W &w, float *y, int acc)
{
    size_t N = w.h.rows, K = w.h.cols, nb = K / 128;
    for (size_t m0 = 0; m0 < M; m0 += 16) {
        size_t nm = M - m0 < 16 ? M - m0 : 16;
        std::vector<float> r(nm * N);
        if (nm >= 3 && K % 128 == 0) {
            std::vector<uint8_t> a(nm * K);
            std::vector<float> as(nm * nb);
            k_act_quant(x + m0 * K, K, nm, K, a.data(), as.data());
            k_gemm_fp8(a.data(), as.data(), nm, w.q.data(), w.s.data(), N, K, r.data(), N);
        } else {
            k_gemm(x + m0 * K, K, nm, &w.h, r.data(), N, 0);
        }
        for (size_t i = 0; i < nm * N; i++)
            y[m0 * N + i] = acc ? y[m0 * N + i] + r[i] : r[i];
    }
}

/* The FP8 tensor-core GEMV (3..16 tokens, gemv_a8.cu) against ref_gemm_a8: one weight
 * (accumulating), partial row tiles, K not a multiple of 128 (W8A32 fallback), token
 * counts across the 8-token MMA groups and past one 16-token tile; the q_a/kv_a pair
 * and the fused SiLU-GLU. The MMA sums 32 products per instruction in the tensor core;
 * the rest is fp32 as the reference, in another order. */
static void test_gemv_a8(kc_ctx *ctx)
{
    kc_set_gemv_a8(1);
    struct {
        size_t N, K;
    } shapes[] = {{2048, 7168}, {1536, 1536}, {260, 2048}, {100, 1552}, {7168, 18432}};
    for (auto &s : shapes) {
        W w = make_w(K_W_FP8, s.N, s.K);
        for (size_t M : {(size_t)3, (size_t)5, (size_t)8, (size_t)9, (size_t)16, (size_t)17,
                         (size_t)19}) {
            if (s.K > 8192 && M != 8)
                continue;
            auto x = randv(M * s.K);
            std::vector<float> y0 = randv(M * s.N), ref = y0;
            ref_gemm_a8(x.data(), M, w, ref.data(), 1);
            float *dx = up(x), *dy = up(y0);
            CK(kc_gemm(ctx, dx, s.K, M, &w.d, dy, s.N, 1, 1));
            auto got = down(dy, M * s.N);
            char name[128];
            snprintf(name, sizeof name, "gemm FP8 tensor-core GEMV fp8 %zux%zu M=%zu accumulate%s",
                     s.N, s.K, M, s.K % 128 ? " (K not a multiple of 128: W8A32)" : "");
            report(name, rel_err(got.data(), ref.data(), ref.size()), 1e-4);
            cudaFree(dx), cudaFree(dy);
        }
    }
    for (size_t M : {(size_t)4, (size_t)8, (size_t)13}) {
        W a = make_w(K_W_FP8, 1536, 7168), b = make_w(K_W_FP8, 576, 7168);
        auto x = randv(M * 7168);
        std::vector<float> r1(M * 1536), r2(M * 576);
        ref_gemm_a8(x.data(), M, a, r1.data(), 0);
        ref_gemm_a8(x.data(), M, b, r2.data(), 0);
        float *dx = up(x), *d1 = poisoned<float>(M * 1536), *d2 = poisoned<float>(M * 576);
        CK(kc_gemm_pair(ctx, dx, 7168, M, &a.d, d1, 1536, &b.d, d2, 576));
        auto g1 = down(d1, M * 1536), g2 = down(d2, M * 576);
        char name[96];
        snprintf(name, sizeof name, "gemm FP8 tensor-core GEMV pair 1536+576 x 7168 M=%zu", M);
        report(name, fmax(rel_err(g1.data(), r1.data(), r1.size()), rel_err(g2.data(), r2.data(), r2.size())), 1e-4);
        cudaFree(dx), cudaFree(d1), cudaFree(d2);
    }
    for (size_t M : {(size_t)3, (size_t)8, (size_t)16})
        check_glu(ctx, M, "gemm FP8 tensor-core GEMV SiLU-GLU", 1e-4,
                  [](const float *x, size_t m, const W &w, float *y) { ref_gemm_a8(x, m, w, y, 0); });
}

/* The GEMV variants (hardware / integer FP8 decode), the fused pair and
 * the fused SiLU-GLU, against the CPU reference. */
static void test_gemv_fused(kc_ctx *ctx)
{
    kc_set_gemv_a8(0); /* W8A32 checks; test_gemv_a8 has the FP8 path */
    W w = make_w(K_W_FP8, 576, 7168);
    for (int v = 0; v < 2; v++)
        for (size_t M : {(size_t)1, (size_t)4}) {
            kc_set_gemv_variant(v);
            auto x = randv(M * 7168);
            std::vector<float> ref(M * 576);
            k_gemm(x.data(), 7168, M, &w.h, ref.data(), 576, 0);
            float *dx = up(x), *dy = poisoned<float>(M * 576);
            CK(kc_gemm(ctx, dx, 7168, M, &w.d, dy, 576, 0, 1));
            auto got = down(dy, M * 576);
            char name[96];
            snprintf(name, sizeof name, "gemm GEMV variant %d fp8 576x7168 M=%zu", v, M);
            report(name, rel_err(got.data(), ref.data(), ref.size()), 2e-5);
            cudaFree(dx), cudaFree(dy);
        }
    kc_set_gemv_variant(0);
    struct {
        k_wtype t;
        size_t N1, N2, K;
    } pairs[] = {{K_W_FP8, 1536, 576, 7168}, {K_W_BF16, 300, 40, 1024}, {K_W_FP8, 64, 64, 64}};
    for (auto &p : pairs)
        for (size_t M : {(size_t)1, (size_t)3, (size_t)16, (size_t)20}) {
            W a = make_w(p.t, p.N1, p.K), b = make_w(p.t, p.N2, p.K);
            auto x = randv(M * p.K);
            std::vector<float> r1(M * p.N1), r2(M * p.N2);
            k_gemm(x.data(), p.K, M, &a.h, r1.data(), p.N1, 0);
            k_gemm(x.data(), p.K, M, &b.h, r2.data(), p.N2, 0);
            float *dx = up(x), *d1 = poisoned<float>(M * p.N1), *d2 = poisoned<float>(M * p.N2);
            CK(kc_gemm_pair(ctx, dx, p.K, M, &a.d, d1, p.N1, &b.d, d2, p.N2));
            auto g1 = down(d1, M * p.N1), g2 = down(d2, M * p.N2);
            double e = fmax(rel_err(g1.data(), r1.data(), r1.size()),
                            rel_err(g2.data(), r2.data(), r2.size()));
            char name[96];
            snprintf(name, sizeof name, "gemm pair %s %zu+%zu x %zu M=%zu",
                     p.t == K_W_FP8 ? "fp8" : "bf16", p.N1, p.N2, p.K, M);
            /* M=20 takes cuBLASLt with FP8-quantized activations */
            report(name, e, M > 16 && p.t == K_W_FP8 && p.K % 128 == 0 ? 5e-2 : M > 16 ? 1e-2 : 2e-5);
            cudaFree(dx), cudaFree(d1), cudaFree(d2);
        }
    for (size_t M : {(size_t)1, (size_t)2, (size_t)7, (size_t)16})
        check_glu(ctx, M, "gemm fused SiLU-GLU fp8", 2e-5,
                  [](const float *x, size_t m, const W &w, float *y) {
                      k_gemm(x, w.h.cols, m, &w.h, y, w.h.rows, 0);
                  });
    kc_set_gemv_a8(1);
}

/* y += wt * one expert on one token, W8A8 as kc_moe above 16 tokens: x and h quantized
 * 1x128 (k_act_quant), block-scaled products (k_gemm_fp8), SiLU-GLU in fp32. */
static void ref_expert_a8(const float *x, const W &g, const W &u, const W &d, float wt, float *y)
{
    const size_t D = g.h.cols, I = g.h.rows;
    std::vector<uint8_t> xa(D), ha(I);
    std::vector<float> xs(D / 128), hs(I / 128), gv(I), uv(I), h(I), o(D);
    k_act_quant(x, D, 1, D, xa.data(), xs.data());
    k_gemm_fp8(xa.data(), xs.data(), 1, g.q.data(), g.s.data(), I, D, gv.data(), I);
    k_gemm_fp8(xa.data(), xs.data(), 1, u.q.data(), u.s.data(), I, D, uv.data(), I);
    k_silu_mul(gv.data(), uv.data(), h.data(), I);
    k_act_quant(h.data(), I, 1, I, ha.data(), hs.data());
    k_gemm_fp8(ha.data(), hs.data(), 1, d.q.data(), d.s.data(), D, I, o.data(), D);
    for (size_t i = 0; i < D; i++)
        y[i] += wt * o[i];
}

static void test_moe(kc_ctx *ctx)
{
    size_t E = 16, e0 = 8, n = 8, K = 4;
    /* token counts pick the kernels' token tile (1, 2, 4, 8) */
    /* Is: a shared expert of Is rows in the same launches (0: none; I/8: split at TP8) */
    struct {
        size_t T, D, I, Is;
    } passes[] = {{1, 256, 128, 0},   {2, 256, 128, 0},   {3, 256, 128, 0},  {37, 256, 128, 0},
                  {1, 1024, 512, 0},  {6, 1024, 384, 0},  {1, 256, 128, 128}, {2, 256, 128, 32},
                  {9, 1024, 512, 64}, {37, 256, 128, 128}, {40, 1024, 512, 0}, {20, 384, 192, 0},
                  {400, 1024, 512, 0}, {300, 1024, 512, 64}};
    for (auto &ps : passes) {
        size_t T = ps.T, D = ps.D, I = ps.I, Is = ps.Is;
        std::vector<W> g, u, d;
        std::vector<k_weight> gd, ud, dd;
        for (size_t e = 0; e < n; e++) {
            g.push_back(make_w(K_W_FP8, I, D));
            u.push_back(make_w(K_W_FP8, I, D));
            d.push_back(make_w(K_W_FP8, D, I));
        }
        for (size_t e = 0; e < n; e++)
            gd.push_back(g[e].d), ud.push_back(u[e].d), dd.push_back(d[e].d);
        /* the same experts laid out as the shard writer does (each tensor kind at one
         * stride: pointers computed) next to the separate allocations (pointers from the
         * device table, the stride switch off) */
        std::vector<void *> pool;
        std::vector<k_weight> gs = gd, us = ud, ds = dd;
        for (std::vector<k_weight> *v : {&gs, &us, &ds}) {
            const k_weight &w0 = (*v)[0];
            size_t db = w0.rows * w0.cols, sb = ((w0.rows + 127) / 128) * w0.scale_ld * 4;
            uint8_t *pd, *ps;
            CK(cudaMalloc((void **)&pd, n * db));
            CK(cudaMalloc((void **)&ps, n * sb));
            pool.push_back(pd), pool.push_back(ps);
            for (size_t e = 0; e < n; e++) {
                k_weight &w = (*v)[e];
                CK(cudaMemcpy(pd + e * db, w.data, db, cudaMemcpyDeviceToDevice));
                CK(cudaMemcpy(ps + e * sb, w.scale, sb, cudaMemcpyDeviceToDevice));
                w.data = pd + e * db, w.scale = (const float *)(ps + e * sb);
            }
        }
        auto x = randv(T * D);
        std::vector<int32_t> idx(T * K);
        std::vector<float> w(T * K);
        for (size_t t = 0; t < T; t++)
            for (size_t k = 0; k < K; k++) {
                int32_t e;
                bool dup;
                do { /* distinct experts per token, as the router gives */
                    e = (int32_t)(rnd() % E);
                    dup = false;
                    for (size_t j = 0; j < k; j++)
                        dup |= idx[t * K + j] == e;
                } while (dup);
                idx[t * K + k] = e;
                w[t * K + k] = 0.2f + (rnd() % 100) / 100.0f;
            }
        auto y0 = randv(T * D);
        std::vector<W> sw;
        bool take = Is && T <= 2; /* kc_moe takes the shared expert up to 2 tokens */
        if (Is) {
            sw.push_back(make_w(K_W_FP8, Is, D));
            sw.push_back(make_w(K_W_FP8, Is, D));
            sw.push_back(make_w(K_W_FP8, D, Is));
        }
        k_weight sd[3] = {Is ? sw[0].d : k_weight{}, Is ? sw[1].d : k_weight{},
                          Is ? sw[2].d : k_weight{}};
        kc_moe_w *mws[2];
        CK(kc_moe_prepare(&mws[0], n, gd.data(), ud.data(), dd.data(), Is ? sd : NULL));
        CK(kc_moe_prepare(&mws[1], n, gs.data(), us.data(), ds.data(), Is ? sd : NULL));
        if (!kc_moe_strided(mws[1])) {
            printf("FAIL moe T=%zu D=%zu I=%zu: evenly spaced experts not taken as strided\n", T, D, I);
            g_fail++;
        }
        float *dx = up(x), *dw = up(w);
        int32_t *di = up(idx);
        /* onto y (accumulate) and over it (y holds garbage; rows with nothing local must
         * come back zero); one token also with the per-slot down launches + combine */
        /* above 16 tokens with dims that are multiples of 128: FP8 activations on tensor
         * cores (v = 1) against the W8A8 reference, and W8A32 (v = 0) */
        const bool a8 = T > 16 && D % 128 == 0 && I % 128 == 0;
        for (int lay = 0; lay < 2; lay++)
        for (int acc = 1; acc >= 0; acc--)
            for (int v = 0; v < (T == 1 || a8 ? 2 : 1); v++) {
                kc_moe_w *mw = mws[lay];
                const int fuse = T == 1 && v ? 0 : 1, q = a8 && v;
                std::vector<float> ref = acc ? y0 : std::vector<float>(T * D, 0.0f);
                for (size_t t = 0; t < T; t++)
                    for (size_t k = 0; k < K; k++) {
                        int32_t e = idx[t * K + k];
                        if (e < (int32_t)e0 || e >= (int32_t)(e0 + n))
                            continue;
                        if (q)
                            ref_expert_a8(x.data() + t * D, g[e - e0], u[e - e0], d[e - e0],
                                          w[t * K + k], ref.data() + t * D);
                        else
                            k_mlp(x.data() + t * D, D, 1, &g[e - e0].h, &u[e - e0].h,
                                  &d[e - e0].h, ref.data() + t * D, D, 1, &w[t * K + k]);
                    }
                if (take) /* after the routed sum, as the runtime's separate shared MLP does */
                    k_mlp(x.data(), D, T, &sw[0].h, &sw[1].h, &sw[2].h, ref.data(), D, 1, NULL);
                float *dy = up(y0);
                kc_moe_set_fuse(fuse);
                kc_moe_set_stride(lay);
                kc_set_gemv_a8(q);
                const unsigned long gr0 = kc_moe_gemm_runs();
                CK(kc_moe(ctx, mw, dx, D, T, di, dw, K, e0, dy, D, acc));
                /* prefill (>= 128 tokens, ~100 a local expert here): per-expert GEMMs */
                const bool gemm = q && T >= 128, took = kc_moe_gemm_runs() != gr0;
                kc_moe_set_fuse(-1);
                kc_moe_set_stride(-1);
                kc_set_gemv_a8(1);
                auto got = down(dy, T * D);
                cudaFree(dy);
                char name[160];
                snprintf(name, sizeof name, "moe grouped experts T=%zu D=%zu I=%zu (8 of 16 local)",
                         T, D, I);
                if (Is)
                    snprintf(name + strlen(name), sizeof name - strlen(name), " + shared I=%zu%s",
                             Is, take ? "" : " (left to the caller)");
                snprintf(name + strlen(name), sizeof name - strlen(name), "%s%s%s%s",
                         acc ? "" : ", overwriting y", T == 1 && !fuse ? ", unfused" : "",
                         gemm ? ", per-expert cuBLASLt GEMMs" : q ? ", FP8 tensor cores" : a8 ? ", W8A32" : "",
                         lay ? ", strided" : ", table");
                if (took != gemm) {
                    printf("FAIL %s: per-expert GEMM path %s\n", name, gemm ? "not taken" : "taken");
                    g_fail++;
                }
                if (Is && take != (kc_moe_has_shared(mw, T) != 0)) {
                    printf("FAIL %s: shared expert %s\n", name, take ? "not taken" : "taken at T > 2");
                    g_fail++;
                }
                /* FP8: h is quantized from GPU sums, so a code can round the other way;
                 * cuBLASLt's sums are coarser (~2e-4 of the range, test_gemm), and through
                 * h's quantization that reaches ~1e-2 here (H200), so the per-expert path
                 * is also run on the exact FP8 GEMV tiles (DSR1_LT_FP8=0) at 2e-3 */
                report(name, rel_err(got.data(), ref.data(), ref.size()),
                       gemm ? 3e-2 : q ? 2e-3 : 2e-5);
                if (gemm) {
                    static kc_ctx *nolt;
                    if (!nolt) {
                        setenv("DSR1_LT_FP8", "0", 1);
                        CK(kc_ctx_create(&nolt, 0));
                        kc_ctx_fp8_lt_mode(nolt, NULL); /* reads the switch now */
                        unsetenv("DSR1_LT_FP8");
                    }
                    float *dy2 = up(y0);
                    const unsigned long g1 = kc_moe_gemm_runs();
                    CK(kc_moe(nolt, mw, dx, D, T, di, dw, K, e0, dy2, D, acc));
                    auto got2 = down(dy2, T * D);
                    cudaFree(dy2);
                    char n2[224];
                    snprintf(n2, sizeof n2, "%s, exact FP8 GEMV tiles%s", name,
                             kc_moe_gemm_runs() != g1 ? "" : " (PATH NOT TAKEN)");
                    report(n2, kc_moe_gemm_runs() != g1 ? rel_err(got2.data(), ref.data(), ref.size()) : 1.0,
                           2e-3);
                }
            }
        kc_moe_free(mws[0]);
        kc_moe_free(mws[1]);
        for (void *p : pool)
            cudaFree(p);
        cudaFree(dx), cudaFree(dw), cudaFree(di);
    }
    /* one token whose experts are all on other ranks (EP): the fused down + combine has
     * no local slot; y must stay as it was (accumulate) or come back zero */
    {
        const size_t D = 256, I = 128;
        std::vector<W> g, u, d;
        std::vector<k_weight> gd, ud, dd;
        for (size_t e = 0; e < n; e++) {
            g.push_back(make_w(K_W_FP8, I, D)), u.push_back(make_w(K_W_FP8, I, D));
            d.push_back(make_w(K_W_FP8, D, I));
            gd.push_back(g[e].d), ud.push_back(u[e].d), dd.push_back(d[e].d);
        }
        kc_moe_w *mw;
        CK(kc_moe_prepare(&mw, n, gd.data(), ud.data(), dd.data(), NULL));
        std::vector<int32_t> idx = {0, 3, 5, 7}; /* all below e0 = 8 */
        std::vector<float> w = {0.5f, 0.3f, 0.1f, 0.1f};
        auto x = randv(D), y0 = randv(D);
        float *dx = up(x), *dw = up(w);
        int32_t *di = up(idx);
        for (int acc = 1; acc >= 0; acc--) {
            float *dy = up(y0);
            CK(kc_moe(ctx, mw, dx, D, 1, di, dw, K, e0, dy, D, acc));
            auto got = down(dy, D);
            std::vector<float> ref = acc ? y0 : std::vector<float>(D, 0.0f);
            report(acc ? "moe T=1 no local expert: y unchanged (accumulate)"
                       : "moe T=1 no local expert: y zero (overwrite)",
                   rel_err(got.data(), ref.data(), D), 0.0);
            cudaFree(dy);
        }
        kc_moe_free(mw);
        cudaFree(dx), cudaFree(dw), cudaFree(di);
    }
}

static void test_router(void)
{
    /* R1's config with random scores; the same with heavy ties (scores from 4 values:
     * the first maximum must win, as in the reference); one group of 64; groups of 1 */
    struct {
        k_router_cfg c;
        int ties;
        const char *name;
    } cases[] = {{{256, 8, 4, 8, 1, 2.5f}, 0, "256 experts, 8 groups"},
                 {{256, 8, 4, 8, 1, 2.5f}, 1, "256 experts, 8 groups, tied scores"},
                 {{64, 1, 1, 6, 0, 1.0f}, 1, "64 experts, 1 group, tied, no renorm"},
                 {{16, 16, 5, 3, 1, 1.0f}, 0, "16 groups of 1"}};
    for (auto &cs : cases) {
        const k_router_cfg &c = cs.c;
        size_t T = 33, E = c.n_experts, K = c.top_k;
        auto logits = randv(T * E, 2.0f);
        if (cs.ties)
            for (auto &l : logits)
                l = (float)(rnd() % 4) * 0.5f;
        std::vector<float> bias(E);
        for (auto &b : bias)
            b = cs.ties ? 0.0f : 2.0f + (rnd() % 1000) / 10000.0f;
        std::vector<int32_t> idx(T * K);
        std::vector<float> w(T * K);
        k_router(&c, logits.data(), bias.data(), T, idx.data(), w.data());
        float *dl = up(logits), *db = up(bias), *dw = poisoned<float>(T * K);
        int32_t *di = poisoned<int32_t>(T * K);
        CK(kc_router(&c, dl, db, T, di, dw, 0));
        auto gi = down(di, T * K);
        auto gw = down(dw, T * K);
        size_t bad = 0;
        for (size_t i = 0; i < T * K; i++)
            bad += gi[i] != idx[i];
        char name[128];
        snprintf(name, sizeof name, "router sigmoid/bias/group top-k (%s)", cs.name);
        if (bad) {
            printf("FAIL %s: %zu of %zu selected experts differ\n", name, bad, T * K);
            g_fail++;
        } else {
            report(name, rel_err(gw.data(), w.data(), w.size()), 1e-6);
        }
        cudaFree(dl), cudaFree(db), cudaFree(dw), cudaFree(di);
    }
    /* NaN scores (a broken checkpoint): still K distinct valid experts per token */
    k_router_cfg c = {256, 8, 4, 8, 1, 2.5f};
    size_t T = 9, E = 256, K = 8;
    auto logits = randv(T * E, 2.0f);
    for (size_t t = 0; t < T; t++)
        for (size_t j = 0; j < t * 7; j++)
            logits[t * E + (j * 37 + t) % E] = NAN;
    float *dl = up(logits), *dw = poisoned<float>(T * K);
    int32_t *di = poisoned<int32_t>(T * K);
    CK(kc_router(&c, dl, NULL, T, di, dw, 0));
    auto gi = down(di, T * K);
    size_t bad = 0;
    for (size_t t = 0; t < T; t++)
        for (size_t k = 0; k < K; k++) {
            int32_t e = gi[t * K + k];
            bad += e < 0 || e >= (int32_t)E;
            for (size_t j = 0; j < k; j++)
                bad += gi[t * K + j] == e;
        }
    if (bad) {
        printf("FAIL router with NaN scores: %zu bad picks\n", bad);
        g_fail++;
    } else {
        printf("PASS router with NaN scores: distinct valid experts\n");
        g_pass++;
    }
    cudaFree(dl), cudaFree(dw), cudaFree(di);
}

static void check(const char *name, bool ok, const char *detail);

static void test_attn(void)
{
    for (int pass = 0; pass < 2; pass++) {
        size_t T = 5, S = pass ? 2500 : 37, pos0 = S - T, H = 4, dqk = 192, dv = 128;
        auto q = randv(T * H * dqk), k = randv(S * H * dqk), v = randv(S * H * dv);
        std::vector<float> ref(T * H * dv);
        float scale = 0.1352338f;
        k_attn_naive(q.data(), H * dqk, k.data(), H * dqk, v.data(), H * dv, ref.data(), H * dv, T,
                     S, H, dqk, dv, pos0, scale);
        float *dq = up(q), *dk = up(k), *dvv = up(v), *dout = poisoned<float>(T * H * dv);
        CK(kc_attn_naive(dq, H * dqk, dk, H * dqk, dvv, H * dv, dout, H * dv, T, S, H, dqk, dv,
                         pos0, scale, 0));
        auto got = down(dout, ref.size());
        char name[64];
        snprintf(name, sizeof name, "attention naive causal S=%zu", S);
        report(name, rel_err(got.data(), ref.data(), ref.size()), 2e-5);
    }
    /* Absorbed MLA (absorb_q, attention over the latent cache, absorb_v), each GPU kernel
     * fed the CPU reference's inputs. Shapes cover R1 decode (H = 128 heads, R = 512,
     * P = 64) at T = 1, 8, 64; a head count that is not a multiple of the 16-head group;
     * a long cache; queries that see only a prefix (S > pos0 + T); no visible key (S = 0);
     * many tokens; R = 1024; unaligned widths and strides (scalar paths); BF16/F32 kv_b;
     * token counts that end a 16-token tile part-way (the tensor-core absorptions). */
    struct mla_case {
        k_wtype wt;
        size_t T, H, S, pos0, R, P, ldc, ldk;
    };
    const size_t dn = 128, dv = 128;
    const mla_case cases[] = {
        {K_W_FP8, 3, 4, 1200, 1197, 512, 64, 512, 64},
        {K_W_FP8, 1, 16, 1100, 1099, 512, 64, 512, 64},
        {K_W_FP8, 8, 16, 1100, 1092, 512, 64, 512, 64},
        {K_W_FP8, 64, 16, 1100, 1036, 512, 64, 512, 64},
        {K_W_FP8, 1, 128, 1025, 1024, 512, 64, 512, 64},
        /* two and three tokens at R1's head count past a 256-key bucket (speculative
         * verification, batched decode) */
        {K_W_FP8, 2, 128, 514, 512, 512, 64, 512, 64},
        {K_W_FP8, 2, 128, 513, 511, 512, 64, 512, 64},
        {K_W_FP8, 2, 16, 514, 512, 512, 64, 512, 64},
        {K_W_FP8, 3, 128, 771, 768, 512, 64, 512, 64},
        {K_W_FP8, 8, 128, 1100, 1092, 512, 64, 512, 64},
        {K_W_FP8, 64, 128, 1088, 1024, 512, 64, 512, 64},
        {K_W_FP8, 4, 16, 5000, 4996, 512, 64, 512, 64},
        {K_W_FP8, 5, 20, 1100, 1095, 512, 64, 512, 64},
        {K_W_FP8, 1, 1, 300, 299, 512, 64, 512, 64},
        {K_W_FP8, 8, 16, 1100, 500, 512, 64, 512, 64},
        {K_W_FP8, 2, 4, 0, 0, 512, 64, 512, 64},
        {K_W_FP8, 520, 4, 600, 80, 512, 64, 576, 64},
        {K_W_BF16, 8, 16, 700, 692, 512, 64, 512, 64},
        {K_W_BF16, 2, 16, 300, 298, 1024, 64, 1024, 64},
        {K_W_FP8, 24, 8, 400, 376, 1024, 64, 1024, 64},
        {K_W_BF16, 17, 16, 300, 283, 512, 64, 512, 64},
        {K_W_F32, 3, 20, 400, 397, 512, 64, 512, 64},
        {K_W_FP8, 3, 5, 200, 197, 100, 30, 103, 31},
        {K_W_BF16, 6, 3, 150, 144, 136, 64, 137, 66},
    };
    for (const mla_case &cs : cases) {
        size_t T = cs.T, H = cs.H, S = cs.S, pos0 = cs.pos0, R = cs.R, P = cs.P;
        size_t ldh = dn + P, ldq = H * ldh;
        float scale = 0.1352338f;
        const char *tn = cs.wt == K_W_FP8 ? "fp8" : cs.wt == K_W_BF16 ? "bf16" : "f32";
        char tag[160];
        snprintf(tag, sizeof tag, "T=%zu H=%zu S=%zu pos0=%zu R=%zu P=%zu ldc=%zu %s kv_b", T, H, S,
                 pos0, R, P, cs.ldc, tn);
        W wkv = make_w(cs.wt, H * (dn + dv), R);
        size_t Sa = S ? S : 1; /* no zero-byte uploads */
        auto q = randv(T * ldq), c = randv(Sa * cs.ldc), kpe = randv(Sa * cs.ldk);
        std::vector<float> ql(T * H * R), ol(T * H * R), o(T * H * dv);
        k_mla_absorb_q(q.data(), ldq, ldh, T, H, dn, dv, &wkv.h, ql.data());
        k_mla_attn(ql.data(), q.data() + dn, ldq, ldh, c.data(), cs.ldc, kpe.data(), cs.ldk,
                   ol.data(), T, S, H, R, P, pos0, scale);
        k_mla_absorb_v(ol.data(), T, H, dn, dv, &wkv.h, o.data(), H * dv);
        float *dq = up(q), *dc = up(c), *dk = up(kpe), *dql_ref = up(ql), *dol_ref = up(ol);
        float *dql = poisoned<float>(ql.size()), *dol = poisoned<float>(ol.size()),
              *dout = poisoned<float>(o.size());
        char name[320];
        /* absorptions: tensor cores from 8 tokens where they apply (TF32 split in two,
         * ~fp32), then the CUDA-core kernels at every T */
        const bool tc = T >= 8 && R % 128 == 0 && cs.wt != K_W_F32;
        for (int mma = tc ? 1 : 0; mma >= 0; mma--) {
            kc_mla_set_absorb_mma(mma ? 8 : 0);
            const unsigned long l0 = kc_mla_absorb_mma_launches();
            cudaMemset(dql, 0xff, ql.size() * 4);
            CK(kc_mla_absorb_q(dq, ldq, ldh, T, H, dn, dv, &wkv.d, dql, 0));
            auto gql = down(dql, ql.size());
            snprintf(name, sizeof name, "mla absorb_q %s%s", tag, mma ? " (tensor cores)" : "");
            report(name, rel_err(gql.data(), ql.data(), ql.size()), 2e-5);
            cudaMemset(dout, 0xff, o.size() * 4);
            CK(kc_mla_absorb_v(dol_ref, T, H, dn, dv, &wkv.d, dout, H * dv, 0));
            auto go = down(dout, o.size());
            snprintf(name, sizeof name, "mla absorb_v %s%s", tag, mma ? " (tensor cores)" : "");
            report(name, rel_err(go.data(), o.data(), o.size()), 2e-5);
            char got[64];
            const unsigned long nl = kc_mla_absorb_mma_launches() - l0;
            snprintf(got, sizeof got, "%lu tensor-core launches, want %d", nl, mma ? 2 : 0);
            snprintf(name, sizeof name, "mla absorptions %s took the %s kernels", tag,
                     mma ? "tensor-core" : "CUDA-core");
            check(name, nl == (mma ? 2ul : 0ul), got);
        }
        kc_mla_set_absorb_mma(-1);
        for (int mma = 1; mma >= 0; mma--) { /* tensor cores where they apply, then FMA */
            kc_mla_set_mma(mma);
            CK(kc_mla_attn(dql_ref, dq + dn, ldq, ldh, dc, cs.ldc, dk, cs.ldk, dol, T, S, H, R, P,
                           pos0, scale, NULL, 0));
            auto gol = down(dol, ol.size());
            /* the tensor-core kernel (R1's shapes) rounds its operands to TF32 */
            bool tf32 = mma && R == 512 && P % 8 == 0 && cs.ldc % 4 == 0 && cs.ldk % 4 == 0;
            snprintf(name, sizeof name, "mla absorbed attention %s%s", tag,
                     tf32 ? " (TF32 tensor cores)" : " (fp32 FMA)");
            report(name, rel_err(gol.data(), ol.data(), ol.size()), tf32 ? 2e-3 : 2e-5);
            if (S != pos0 + T || T * H == 0)
                continue; /* device positions mean S = pos0 + T */
            /* the position read on the device (CUDA graphs), the splits planned for the
             * exact range (the same blocks: bit-identical) and for 333 keys more */
            std::vector<int32_t> hp = {(int32_t)pos0};
            int32_t *dp0 = up(hp);
            for (size_t extra : {(size_t)0, (size_t)333}) {
                cudaMemset(dol, 0xff, ol.size() * 4);
                int rc = kc_mla_attn(dql_ref, dq + dn, ldq, ldh, dc, cs.ldc, dk, cs.ldk, dol, T,
                                     S + extra, H, R, P, pos0 + extra, scale, dp0, 0);
                if (rc == -1)
                    break; /* the fallback kernel takes no device positions */
                CK(rc);
                auto gd = down(dol, ol.size());
                snprintf(name, sizeof name, "mla attention %s%s, position on the device, planned "
                         "for %zu more keys", tag, tf32 ? " (TF32)" : " (FMA)", extra);
                if (extra)
                    report(name, rel_err(gd.data(), ol.data(), ol.size()), tf32 ? 2e-3 : 2e-5);
                else
                    report(name, rel_err(gd.data(), gol.data(), ol.size()), 0.0);
                g_mla_dyn_checked++;
            }
            cudaFree(dp0);
        }
        kc_mla_set_mma(1);
        float *bufs[] = {dq, dc, dk, dql_ref, dol_ref, dql, dol, dout};
        for (float *b : bufs)
            cudaFree(b);
        cudaFree((void *)wkv.d.data);
        if (wkv.d.scale)
            cudaFree((void *)wkv.d.scale);
    }
}

/* kc_mla_prefill against the CPU runtime's prefill: kv_b on the cached latents in fp32
 * (k_gemm), k = [k_nope, kpe], k_attn_naive; the GPU's matmuls are TF32: 2e-3. FP8 and
 * BF16 kv_b. The fused kernel (R1's head shape and the golden model's; 1 to 5 query
 * tiles of 128 rows, which a block takes in pairs, odd counts included; prefixes not a
 * multiple of its 32-key tile; a prompt shorter than a warp's 16 rows) and the materializing path (score groups of 1 and 3 heads, and all
 * at once); a shape outside the fused kernel's falls back to the latter. */
static void test_mla_prefill(kc_ctx *ctx)
{
    struct {
        size_t T, pos0, H, dn, dv;
        k_wtype wt;
    } cases[] = {{37, 20, 4, 128, 128, K_W_FP8}, {80, 0, 5, 128, 128, K_W_FP8},
                 {3, 40, 2, 128, 128, K_W_FP8},  {50, 7, 3, 128, 128, K_W_BF16},
                 {200, 33, 2, 128, 128, K_W_FP8}, {130, 5, 3, 64, 64, K_W_BF16},
                 {300, 0, 2, 128, 128, K_W_FP8}, {520, 9, 1, 128, 128, K_W_FP8},
                 {21, 0, 2, 96, 64, K_W_FP8}};
    const size_t R = 512, P = 64;
    const float scale = 0.1352338f;
    for (auto &cs : cases) {
        const size_t T = cs.T, pos0 = cs.pos0, H = cs.H, S = pos0 + T, dn = cs.dn, dv = cs.dv,
                     dq = dn + P, NW = H * (dn + dv);
        const bool fused = (dq == 192 && dv == 128) || (dq == 128 && dv == 64);
        W wkv = make_w(cs.wt, NW, R);
        auto c = randv(S * R), kpe = randv(S * P), q = randv(T * H * dq);
        std::vector<float> kvb(S * NW), kf(S * H * dq), vf(S * H * dv), ref(T * H * dv);
        k_gemm(c.data(), R, S, &wkv.h, kvb.data(), NW, 0);
        for (size_t j = 0; j < S; j++)
            for (size_t h = 0; h < H; h++) {
                memcpy(&kf[(j * H + h) * dq], &kvb[j * NW + h * (dn + dv)], dn * 4);
                memcpy(&kf[(j * H + h) * dq + dn], &kpe[j * P], P * 4);
                memcpy(&vf[(j * H + h) * dv], &kvb[j * NW + h * (dn + dv) + dn], dv * 4);
            }
        k_attn_naive(q.data(), H * dq, kf.data(), H * dq, vf.data(), H * dv, ref.data(), H * dv, T,
                     S, H, dq, dv, pos0, scale);
        float *dc = up(c), *dk = up(kpe), *dqv = up(q);
        /* gb = 1: the fused kernel; else the materializing path with score groups */
        for (size_t gb : {(size_t)1, (size_t)T * S * 4, (size_t)3 * T * S * 4, (size_t)0}) {
                const bool f = gb == 1;
                if (f && !fused)
                    continue;
                kc_mla_prefill_set_flash(f ? 2 : 0); /* 2: even at these narrow grids */
                kc_mla_prefill_set_score_bytes(f ? 0 : gb);
                float *dout = poisoned<float>(T * H * dv);
                CK(kc_mla_prefill(ctx, dqv, H * dq, dc, R, dk, P, &wkv.d, dout, H * dv, T, S, H, dn,
                                  dv, R, P, pos0, scale));
                auto got = down(dout, ref.size());
                cudaFree(dout);
                char name[220];
                snprintf(name, sizeof name,
                         "mla prefill (decompressed, TF32) T=%zu pos0=%zu H=%zu dq=%zu dv=%zu %s kv_b, %s",
                         T, pos0, H, dq, dv, cs.wt == K_W_FP8 ? "fp8" : "bf16",
                         gb == 1 ? "fused kernel"
                                 : gb == 0 ? "scores of all heads at once"
                                           : gb > (size_t)T * S * 4 ? "scores of 3 heads a group"
                                                                    : "scores of 1 head a group");
                report(name, rel_err(got.data(), ref.data(), ref.size()), 2e-3);
            }
        kc_mla_prefill_set_flash(1);
        kc_mla_prefill_set_score_bytes(0);
        cudaFree(dc), cudaFree(dk), cudaFree(dqv);
        cudaFree((void *)wkv.d.data);
        if (wkv.d.scale)
            cudaFree((void *)wkv.d.scale);
    }
}

static void check(const char *name, bool ok, const char *detail)
{
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name, detail && *detail ? ": " : "",
           detail ? detail : "");
    ok ? g_pass++ : g_fail++;
}

/* rt_upload (runtime/upload.cu): every method moves the exact bytes, from an unaligned
 * start too (pieces of the register method must start on page boundaries), over
 * several threads and a last short piece; a missing file and a file shorter than the
 * asked range are errors that name the file or the offset. */
static void test_upload(void)
{
    char path[] = "/tmp/dsr1-test-upload-XXXXXX";
    int fd = mkstemp(path);
    const size_t n = (7u << 20) + 12345;
    std::vector<unsigned char> h(n);
    for (size_t i = 0; i < n; i++)
        h[i] = (unsigned char)(rnd() >> 24);
    if (fd < 0 || write(fd, h.data(), n) != (ssize_t)n) {
        check("upload: temp file", false, path);
        if (fd >= 0)
            close(fd), unlink(path);
        return;
    }
    void *mp = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
    unsigned char *dev = NULL;
    if (mp == MAP_FAILED || cudaMalloc(&dev, n) != cudaSuccess) {
        check("upload: map and device buffer", false, strerror(errno));
        close(fd), unlink(path);
        return;
    }
    const char *names[3] = {"pinned", "pread", "register"};
    const rt_up_method meths[3] = {RT_UP_PINNED, RT_UP_PREAD, RT_UP_REGISTER};
    std::vector<unsigned char> back(n);
    for (int m = 0; m < 3; m++)
        for (size_t lead : {(size_t)0, (size_t)3}) {
            rt_upload_opts o;
            rt_upload_opts_init(&o);
            o.method = meths[m];
            o.chunk = (1u << 20) + 4096; /* 7 pieces and a short one */
            o.threads = 3;
            o.path = path;
            o.file_off = lead;
            size_t len = n - lead;
            cudaMemset(dev, 0, n);
            cudaDeviceSynchronize();
            dsr1_err err;
            dsr1_err_clear(&err);
            rt_upload_stats us;
            int rc = rt_upload(dev, (const char *)mp + lead, len, &o, &us, &err);
            char name[96], msg[320];
            snprintf(name, sizeof name, "upload %s, start offset %zu", names[m], lead);
            if (rc) {
                check(name, false, err.msg);
                continue;
            }
            cudaMemcpy(back.data(), dev, len, cudaMemcpyDeviceToHost);
            size_t bad = 0;
            while (bad < len && back[bad] == h[lead + bad])
                bad++;
            msg[0] = 0;
            if (bad < len)
                snprintf(msg, sizeof msg, "first differing byte at %zu", bad);
            check(name, bad == len && us.bytes == len, msg);
        }
    {
        rt_upload_opts o;
        rt_upload_opts_init(&o);
        dsr1_err err;
        dsr1_err_clear(&err);
        int rc = rt_upload(dev, mp, 0, &o, NULL, &err);
        check("upload of 0 bytes is a no-op", rc == 0, err.msg);
        o.method = RT_UP_PREAD;
        o.path = "/nonexistent/shard.safetensors";
        rc = rt_upload(dev, mp, 4096, &o, NULL, &err);
        check("upload pread of a missing file names it",
              rc != 0 && strstr(err.msg, "cannot open /nonexistent/shard.safetensors"), err.msg);
        dsr1_err_clear(&err);
        o.path = path;
        o.file_off = n - 4096; /* asks 1 MiB where 4 KiB remain */
        o.chunk = 1u << 20;
        rc = rt_upload(dev, mp, 1u << 20, &o, NULL, &err);
        char want[96];
        snprintf(want, sizeof want, "read at offset %zu: the file is shorter", (size_t)(n - 4096));
        check("upload pread past the end of the file names the offset",
              rc != 0 && strstr(err.msg, want), err.msg);
    }
    cudaFree(dev);
    munmap(mp, n);
    close(fd);
    unlink(path);
}

int main(void)
{
    int dev = 0;
    cudaDeviceProp p;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
        printf("FAIL no CUDA device\n");
        return 1;
    }
    printf("INFO device %s, %d SMs, %.0f GiB\n", p.name, p.multiProcessorCount,
           p.totalGlobalMem / 1073741824.0);
    kc_ctx *ctx;
    int rc = kc_ctx_create(&ctx, 0);
    if (rc) {
        printf("FAIL kc_ctx_create: %s\n", kc_strerror(rc));
        return 1;
    }
    test_rmsnorm();
    test_rope();
    test_mla_prep();
    test_embed();
    test_act_quant_and_fp8(ctx);
    test_gemm(ctx);
    test_gemm_small_prefill(ctx);
    test_gemv_fused(ctx);
    test_gemv_a8(ctx);
    test_moe(ctx);
    test_router();
    test_attn();
    test_mla_prefill(ctx);
    {
        char got[64];
        snprintf(got, sizeof got, "%d runs", g_mla_dyn_checked);
        check("mla attention with the position on the device ran on most decode shapes",
              g_mla_dyn_checked >= 24, got);
    }
    test_upload();
    kc_ctx_free(ctx);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}
