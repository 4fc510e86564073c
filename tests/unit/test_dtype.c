/* dtype: FP8/BF16/F16 conversions against an independent bit formula and against
 * ml_dtypes/numpy (run through $PY), and the block-FP8 quantizer's rules. */
#include "test.h"
#include "dtype.h"

#include <stdlib.h>

static float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Independent decode of an E4M3fn code straight from the format definition. */
static float fp8_formula(uint8_t v)
{
    int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    if (e == 15 && m == 7)
        return NAN;
    double x = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    return (float)(s ? -x : x);
}

static const char *py_path(void)
{
    const char *py = getenv("PY");
    return py && *py ? py : "build/venv/bin/python";
}

static const char ref_script[] =
    "import sys, numpy as np, ml_dtypes as m\n"
    "d = sys.argv[1]\n"
    "x = np.fromfile(d + '/in_f32.bin', dtype=np.float32)\n"
    "u8 = np.arange(256, dtype=np.uint8)\n"
    "u16 = np.arange(65536, dtype=np.uint16)\n"
    "with np.errstate(all='ignore'):\n"
    "    u8.view(m.float8_e4m3fn).astype(np.float32).tofile(d + '/fp8_dec.bin')\n"
    "    x.astype(m.float8_e4m3fn).tofile(d + '/fp8_enc.bin')\n"
    "    x.astype(m.bfloat16).tofile(d + '/bf16_enc.bin')\n"
    "    u16.view(m.bfloat16).astype(np.float32).tofile(d + '/bf16_dec.bin')\n"
    "    u16.view(np.float16).astype(np.float32).tofile(d + '/f16_dec.bin')\n";

/* Writes `in` as in_f32.bin, runs the ml_dtypes reference script on it.
 * Returns 0 when the reference files exist. */
static int run_reference(const float *in, size_t n)
{
    const char *dir = test_tmpdir();
    if (test_write_file(test_path("in_f32.bin"), in, n * 4) != 0 ||
        test_write_file(test_path("ref.py"), ref_script, strlen(ref_script)) != 0) {
        CHECK_MSG(0, "cannot write reference inputs in %s", dir);
        return -1;
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s/ref.py' '%s'", py_path(), dir, dir);
    int rc = system(cmd);
    if (rc != 0) {
        CHECK_MSG(0, "python reference failed (%s, status %d): needs numpy and ml_dtypes; "
                     "run scripts/install-deps.sh or set PY", py_path(), rc);
        return -1;
    }
    return 0;
}

/* Reads exactly n bytes of a reference file into a malloc'd buffer. */
static void *read_ref(const char *name, size_t n)
{
    FILE *f = fopen(test_path(name), "rb");
    void *p = malloc(n ? n : 1);
    size_t r = f && p ? fread(p, 1, n, f) : 0;
    if (f)
        fclose(f);
    if (r != n) {
        CHECK_MSG(0, "reference file %s: read %zu of %zu bytes", name, r, n);
        free(p);
        return NULL;
    }
    return p;
}

/* Edge cases plus random floats over the whole FP8/BF16 range and beyond. */
static float *make_inputs(size_t *n_out)
{
    size_t n = 0, cap = 200000;
    float *x = malloc(cap * sizeof *x);
    static const float edge[] = {0.0f, -0.0f, 448.0f, -448.0f, 449.0f, 463.99f, 464.0f, 465.0f,
                                 480.0f, 1e30f, -1e30f, 3.4e38f, INFINITY, -INFINITY, NAN,
                                 0x1p-6f, 0x1p-9f, 0x1p-10f, 0x1.000002p-10f, 0x3p-11f,
                                 0x1p-7f, 0x1p-149f, 1e-40f, 1.0f, -1.0f, 1.0625f, 1.1875f,
                                 65504.0f, 1e-30f};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        x[n++] = edge[i];
    x[n++] = -NAN;
    x[n++] = u2f(0x7f800001u); /* signaling NaN */
    x[n++] = u2f(0xffa00000u);
    /* midpoints and neighbours of every pair of adjacent positive FP8 codes */
    for (int c = 0; c < 0x7e; c++) {
        float mid = (fp8_formula((uint8_t)c) + fp8_formula((uint8_t)(c + 1))) / 2;
        x[n++] = mid;
        x[n++] = -mid;
        x[n++] = nextafterf(mid, 0);
        x[n++] = nextafterf(mid, INFINITY);
    }
    /* random sign/exponent in [2^-12, 2^10), random mantissa */
    while (n < cap / 2) {
        uint64_t r = test_rand_u64();
        uint32_t e = 127 - 12 + (uint32_t)(r % 22);
        x[n++] = u2f((uint32_t)((r >> 8) & 0x807fffffu) | (e << 23));
    }
    while (n < cap) /* arbitrary bit patterns: every class incl. NaN payloads */
        x[n++] = u2f((uint32_t)test_rand_u64());
    *n_out = n;
    return x;
}

TEST(dtype_fp8_decode_formula_exhaustive)
{
    for (int v = 0; v < 256; v++) {
        float got = dt_fp8_to_f32((uint8_t)v), want = fp8_formula((uint8_t)v);
        if (isnan(want))
            CHECK_MSG(isnan(got), "code 0x%02x: want NaN, got %g", v, got);
        else
            CHECK_MSG(f2u(got) == f2u(want), "code 0x%02x: got %a want %a", v, got, want);
    }
    CHECK(isnan(dt_fp8_to_f32(0x7f)) && isnan(dt_fp8_to_f32(0xff)));
    CHECK_EQ_U64(f2u(dt_fp8_to_f32(0x80)), 0x80000000u); /* -0 */
    CHECK(dt_fp8_to_f32(0x7e) == 448.0f && dt_fp8_to_f32(0xfe) == -448.0f);
    CHECK(dt_fp8_to_f32(0x01) == 0x1p-9f && dt_fp8_to_f32(0x08) == 0x1p-6f);
    uint8_t codes[256];
    float out[256];
    for (int v = 0; v < 256; v++)
        codes[v] = (uint8_t)v;
    dt_fp8_to_f32_n(codes, out, 256);
    for (int v = 0; v < 256; v++) {
        float s = dt_fp8_to_f32((uint8_t)v);
        CHECK_MSG(f2u(out[v]) == f2u(s) || (isnan(out[v]) && isnan(s)), "bulk code 0x%02x", v);
    }
}

TEST(dtype_fp8_encode_rules)
{
    /* every non-NaN code round-trips, -0 included */
    for (int v = 0; v < 256; v++) {
        if ((v & 0x7f) == 0x7f)
            continue;
        CHECK_MSG(dt_f32_to_fp8(dt_fp8_to_f32((uint8_t)v)) == v, "code 0x%02x does not round-trip", v);
    }
    /* midpoints go to the even code, anything off the midpoint to the nearest */
    for (int c = 0; c < 0x7e; c++) {
        float lo = fp8_formula((uint8_t)c), hi = fp8_formula((uint8_t)(c + 1));
        float mid = (lo + hi) / 2;
        int even = (c & 1) ? c + 1 : c;
        CHECK_MSG(dt_f32_to_fp8(mid) == even, "midpoint %a of 0x%02x/0x%02x -> 0x%02x", mid, c,
                  c + 1, dt_f32_to_fp8(mid));
        CHECK_MSG(dt_f32_to_fp8(-mid) == (0x80 | even), "-midpoint %a", mid);
        CHECK_MSG(dt_f32_to_fp8(nextafterf(mid, 0)) == c, "below midpoint %a", mid);
        CHECK_MSG(dt_f32_to_fp8(nextafterf(mid, INFINITY)) == c + 1, "above midpoint %a", mid);
    }
    /* saturation, inf, NaN, tiny values */
    CHECK_EQ_INT(dt_f32_to_fp8(448.5f), 0x7e);
    CHECK_EQ_INT(dt_f32_to_fp8(464.0f), 0x7e);
    CHECK_EQ_INT(dt_f32_to_fp8(1e6f), 0x7e);
    CHECK_EQ_INT(dt_f32_to_fp8(-1e6f), 0xfe);
    CHECK_EQ_INT(dt_f32_to_fp8(INFINITY), 0x7e);
    CHECK_EQ_INT(dt_f32_to_fp8(-INFINITY), 0xfe);
    CHECK_EQ_INT(dt_f32_to_fp8(NAN), 0x7f);
    CHECK_EQ_INT(dt_f32_to_fp8(-NAN), 0xff);
    CHECK_EQ_INT(dt_f32_to_fp8(-0.0f), 0x80);
    CHECK_EQ_INT(dt_f32_to_fp8(0x1p-10f), 0x00);          /* tie to even: 0 */
    CHECK_EQ_INT(dt_f32_to_fp8(0x1.000002p-10f), 0x01);   /* just above the tie */
    CHECK_EQ_INT(dt_f32_to_fp8(0x3p-10f), 0x02);          /* 1.5 * 2^-9: tie to even 2 */
    CHECK_EQ_INT(dt_f32_to_fp8(0x5p-10f), 0x02);          /* 2.5 * 2^-9: tie to even 2 */
    CHECK_EQ_INT(dt_f32_to_fp8(0x3p-11f), 0x01);          /* 0.75 * 2^-9 */
    CHECK_EQ_INT(dt_f32_to_fp8(1e-40f), 0x00);            /* f32 subnormal */
    CHECK_EQ_INT(dt_f32_to_fp8(0x1.ep-7f), 0x08);         /* rounds up into the min normal */
}

TEST(dtype_fp8_bf16_f16_vs_ml_dtypes)
{
    size_t n;
    float *x = make_inputs(&n);
    if (run_reference(x, n) != 0) {
        free(x);
        return;
    }
    float *dec = read_ref("fp8_dec.bin", 256 * 4);
    uint8_t *enc = read_ref("fp8_enc.bin", n);
    uint16_t *benc = read_ref("bf16_enc.bin", n * 2);
    float *bdec = read_ref("bf16_dec.bin", 65536 * 4);
    float *hdec = read_ref("f16_dec.bin", 65536 * 4);
    if (dec && enc && benc && bdec && hdec) {
        for (int v = 0; v < 256; v++) {
            float got = dt_fp8_to_f32((uint8_t)v);
            CHECK_MSG(f2u(got) == f2u(dec[v]) || (isnan(got) && isnan(dec[v])),
                      "fp8 decode 0x%02x: %a vs ml_dtypes %a", v, got, dec[v]);
        }
        size_t bad8 = 0, badb = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t want = enc[i], got = dt_f32_to_fp8(x[i]);
            /* ml_dtypes is non-saturating (|x| > 464 -> NaN); we saturate by contract */
            if ((want & 0x7f) == 0x7f && !isnan(x[i]))
                want = (uint8_t)((want & 0x80) | 0x7e);
            if (got != want && bad8++ < 10)
                CHECK_MSG(0, "fp8 encode %a (0x%08x): 0x%02x vs ml_dtypes 0x%02x", x[i], f2u(x[i]),
                          got, want);
            uint16_t bg = dt_f32_to_bf16(x[i]), bw = benc[i];
            int ok = isnan(x[i]) ? ((bg & 0x7fc0) == 0x7fc0 && (bg & 0x8000) == (bw & 0x8000))
                                 : bg == bw;
            if (!ok && badb++ < 10)
                CHECK_MSG(0, "bf16 encode %a (0x%08x): 0x%04x vs ml_dtypes 0x%04x", x[i], f2u(x[i]),
                          bg, bw);
        }
        CHECK_EQ_U64(bad8, 0);
        CHECK_EQ_U64(badb, 0);
        uint16_t *b = malloc(65536 * 2);
        float *out = malloc(65536 * 4);
        for (uint32_t v = 0; v < 65536; v++)
            b[v] = (uint16_t)v;
        dt_bf16_to_f32_n(b, out, 65536);
        size_t badd = 0, badh = 0;
        for (uint32_t v = 0; v < 65536; v++) {
            float g = dt_bf16_to_f32((uint16_t)v);
            if ((f2u(g) != f2u(bdec[v]) || f2u(out[v]) != f2u(g)) && badd++ < 10)
                CHECK_MSG(0, "bf16 decode 0x%04x: %a vs %a", v, g, bdec[v]);
            float h = dt_f16_to_f32((uint16_t)v);
            int hok = f2u(h) == f2u(hdec[v]) || (isnan(h) && isnan(hdec[v]));
            if (!hok && badh++ < 10)
                CHECK_MSG(0, "f16 decode 0x%04x: %a vs numpy %a", v, h, hdec[v]);
        }
        CHECK_EQ_U64(badd, 0);
        CHECK_EQ_U64(badh, 0);
        /* bulk bf16 encode equals the scalar one */
        uint16_t *bb = malloc(n * 2);
        dt_f32_to_bf16_n(x, bb, n);
        size_t badn = 0;
        for (size_t i = 0; i < n; i++)
            badn += bb[i] != dt_f32_to_bf16(x[i]);
        CHECK_EQ_U64(badn, 0);
        free(bb);
        free(b);
        free(out);
    }
    free(dec);
    free(enc);
    free(benc);
    free(bdec);
    free(hdec);
    free(x);
}

TEST(dtype_bf16_edges)
{
    CHECK_EQ_INT(dt_f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(dt_f32_to_bf16(-0.0f), 0x8000);
    CHECK_EQ_INT(dt_f32_to_bf16(u2f(0x3f808000u)), 0x3f80); /* tie, even stays */
    CHECK_EQ_INT(dt_f32_to_bf16(u2f(0x3f818000u)), 0x3f82); /* tie, odd rounds up */
    CHECK_EQ_INT(dt_f32_to_bf16(u2f(0x3f808001u)), 0x3f81);
    CHECK_EQ_INT(dt_f32_to_bf16(u2f(0x7f7fffffu)), 0x7f80); /* FLT_MAX rounds to inf */
    CHECK_EQ_INT(dt_f32_to_bf16(INFINITY), 0x7f80);
    CHECK_EQ_INT(dt_f32_to_bf16(u2f(0x7f800001u)), 0x7fc0); /* sNaN with low payload stays NaN */
    CHECK_EQ_INT(dt_f32_to_bf16(u2f(0xff800001u)), 0xffc0);
    CHECK(isnan(dt_bf16_to_f32(dt_f32_to_bf16(NAN))));
    CHECK(dt_f16_to_f32(0x3c00) == 1.0f && dt_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(dt_f16_to_f32(0x7bff) == 65504.0f && isinf(dt_f16_to_f32(0xfc00)));
}

/* f32 matrix of normals with a different magnitude per 128x128 block. */
static float *rand_matrix(size_t rows, size_t cols)
{
    float *w = malloc(rows * cols * sizeof *w);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            float mag = ldexpf(1.0f, (int)((i / 128 * 7 + j / 128 * 3) % 11) - 8);
            w[i * cols + j] = test_rand_normal() * mag;
        }
    return w;
}

TEST(dtype_block_quant_partial_blocks)
{
    const size_t rows = 576, cols = 300, nbr = 5, nbc = 3;
    float *w = rand_matrix(rows, cols);
    /* an all-zero full block and an all-zero partial block */
    for (size_t i = 128; i < 256; i++)
        for (size_t j = 128; j < 256; j++)
            w[i * cols + j] = 0;
    for (size_t i = 512; i < 576; i++)
        for (size_t j = 0; j < 128; j++)
            w[i * cols + j] = 0;
    uint8_t *q = malloc(rows * cols);
    float *s = malloc(nbr * nbc * sizeof *s), *d = malloc(rows * cols * sizeof *d);
    memset(q, 0xAA, rows * cols);
    for (size_t b = 0; b < nbr * nbc; b++)
        s[b] = NAN;
    dt_block_quant(w, rows, cols, q, s);
    for (size_t bi = 0; bi < nbr; bi++)
        for (size_t bj = 0; bj < nbc; bj++) {
            float amax = 0;
            int max_code = 0;
            for (size_t i = bi * 128; i < rows && i < bi * 128 + 128; i++)
                for (size_t j = bj * 128; j < cols && j < bj * 128 + 128; j++) {
                    amax = fmaxf(amax, fabsf(w[i * cols + j]));
                    if ((q[i * cols + j] & 0x7f) > max_code)
                        max_code = q[i * cols + j] & 0x7f;
                }
            float want = (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
            CHECK_MSG(f2u(s[bi * nbc + bj]) == f2u(want), "block (%zu,%zu): S %a, want %a", bi, bj,
                      s[bi * nbc + bj], want);
            if (amax > 0)
                CHECK_MSG(max_code == 0x7e, "block (%zu,%zu): amax maps to code 0x%02x, not 448",
                          bi, bj, max_code);
            else
                CHECK_MSG(max_code == 0, "zero block (%zu,%zu) has code 0x%02x", bi, bj, max_code);
        }
    CHECK(s[1 * nbc + 1] == 1e-4f / 448.0f);
    CHECK(s[4 * nbc + 0] == 1e-4f / 448.0f);
    /* every code is the RNE encoding of w/S, and the round trip is within FP8 precision */
    dt_block_dequant(q, s, rows, cols, d);
    size_t bad = 0;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            float S = s[(i / 128) * nbc + j / 128], x = w[i * cols + j];
            uint8_t c = q[i * cols + j];
            /* rel 2^-4 for normals, abs 2^-10 * S in the subnormal range (plus f32 slack) */
            double tol = fmax(fabs(x) * 0x1p-4, 0x1p-10 * S) * (1 + 1e-6);
            int ok = c == dt_f32_to_fp8(x / S) && d[i * cols + j] == dt_fp8_to_f32(c) * S &&
                     fabs((double)d[i * cols + j] - x) <= tol;
            if (!ok && bad++ < 5)
                CHECK_MSG(0, "(%zu,%zu): w %g code 0x%02x deq %g S %g", i, j, x, c, d[i * cols + j], S);
        }
    CHECK_EQ_U64(bad, 0);
    CHECK_ALLCLOSE_REL(d, w, rows * cols, 0x1p-4);
    /* row-range dequant equals the matching slice of the full one */
    const size_t r0 = 100, r1 = 530;
    float *part = malloc((r1 - r0) * cols * sizeof *part);
    for (size_t k = 0; k < (r1 - r0) * cols; k++)
        part[k] = NAN;
    dt_block_dequant_rows(q, s, rows, cols, r0, r1, part);
    CHECK(memcmp(part, d + r0 * cols, (r1 - r0) * cols * sizeof *part) == 0);
    /* deterministic under OpenMP */
    uint8_t *q2 = malloc(rows * cols);
    float *s2 = malloc(nbr * nbc * sizeof *s2);
    dt_block_quant(w, rows, cols, q2, s2);
    CHECK(memcmp(q, q2, rows * cols) == 0 && memcmp(s, s2, nbr * nbc * sizeof *s) == 0);
    free(q2);
    free(s2);
    free(part);
    free(w);
    free(q);
    free(s);
    free(d);
}

TEST(dtype_block_quant_small_and_aligned)
{
    /* 1x1 and 256x256: the edge cases of the block grid */
    float one = -3.5f, s1 = 0;
    uint8_t q1 = 0;
    dt_block_quant(&one, 1, 1, &q1, &s1);
    CHECK(s1 == 3.5f / 448.0f);
    CHECK_EQ_INT(q1, 0xfe);
    const size_t n = 256;
    float *w = rand_matrix(n, n), *d = malloc(n * n * sizeof *d), s[4];
    uint8_t *q = malloc(n * n);
    dt_block_quant(w, n, n, q, s);
    dt_block_dequant(q, s, n, n, d);
    CHECK_ALLCLOSE_REL(d, w, n * n, 0x1p-4);
    free(w);
    free(d);
    free(q);
}

TEST(dtype_act_quant)
{
    const size_t rows = 4, cols = 300, ng = 3;
    float *x = malloc(rows * cols * sizeof *x);
    for (size_t k = 0; k < rows * cols; k++)
        x[k] = test_rand_normal() * 3.0f;
    for (size_t j = 0; j < cols; j++)
        x[2 * cols + j] = test_rand_normal() * 1e-7f; /* below the 1e-4 amax floor */
    uint8_t *y = malloc(rows * cols);
    float s[12];
    dt_act_quant(x, rows, cols, y, s);
    for (size_t r = 0; r < rows; r++)
        for (size_t g = 0; g < ng; g++) {
            float amax = 0;
            for (size_t j = g * 128; j < cols && j < g * 128 + 128; j++)
                amax = fmaxf(amax, fabsf(x[r * cols + j]));
            float want = fmaxf(amax, 1e-4f) / 448.0f;
            CHECK_MSG(s[r * ng + g] == want, "row %zu group %zu: s %a want %a", r, g, s[r * ng + g],
                      want);
            for (size_t j = g * 128; j < cols && j < g * 128 + 128; j++) {
                float v = x[r * cols + j];
                CHECK_MSG(y[r * cols + j] == dt_f32_to_fp8(v / want), "(%zu,%zu)", r, j);
                double tol = fmax(fabs(v) * 0x1p-4, 0x1p-10 * want) * (1 + 1e-6);
                CHECK_MSG(fabs(dt_fp8_to_f32(y[r * cols + j]) * want - v) <= tol, "(%zu,%zu) err", r, j);
            }
        }
    free(x);
    free(y);
}
