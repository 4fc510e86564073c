/* dtype: scalar conversions and DeepSeek block-FP8 (see dtype.h for the rules). */
#include "dtype.h"

#include <math.h>
#include <string.h>

/* ---- FP8 E4M3 ("fn") decode table, computed at compile time ----
 * Code v = S.EEEE.MMM: E == 0 is subnormal M * 2^-9, otherwise (8 + M) * 2^(E-10);
 * S.1111.111 is NaN (there is no infinity). */
#define FP8_MAG(v)                                                                  \
    (((v) & 0x78) == 0 ? (float)((v) & 7) / 512.0f                                  \
                       : (float)(8 + ((v) & 7)) * (float)(1u << (((v) >> 3) & 15)) / 1024.0f)
#define FP8_VAL(v)                                                                  \
    (((v) & 0x7f) == 0x7f ? ((v) & 0x80 ? -__builtin_nanf("") : __builtin_nanf("")) \
                          : ((v) & 0x80 ? -FP8_MAG(v) : FP8_MAG(v)))
#define FP8_R4(b) FP8_VAL(b), FP8_VAL((b) + 1), FP8_VAL((b) + 2), FP8_VAL((b) + 3)
#define FP8_R16(b) FP8_R4(b), FP8_R4((b) + 4), FP8_R4((b) + 8), FP8_R4((b) + 12)
#define FP8_R64(b) FP8_R16(b), FP8_R16((b) + 16), FP8_R16((b) + 32), FP8_R16((b) + 48)

static const float fp8_table[256] = {FP8_R64(0), FP8_R64(64), FP8_R64(128), FP8_R64(192)};

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float dt_fp8_to_f32(uint8_t v)
{
    return fp8_table[v];
}

/* Shift right by s (s >= 1), rounding to nearest, ties to even. */
static inline uint32_t shr_rne(uint32_t x, unsigned s)
{
    if (s >= 32)
        return 0; /* x < 2^24 here, so the result is below one half */
    uint32_t r = x >> s, rem = x & ((1u << s) - 1), half = 1u << (s - 1);
    if (rem > half || (rem == half && (r & 1)))
        r++;
    return r;
}

uint8_t dt_f32_to_fp8(float f)
{
    uint32_t u = f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7f; /* NaN */
    if (a >= 0x43e00000u)
        return sign | 0x7e; /* >= 448 (and +-inf): saturate */
    uint32_t e = a >> 23;   /* biased f32 exponent */
    if (e == 0)
        return sign; /* f32 zero or subnormal: far below 2^-10, rounds to +-0 */
    if (e < 121) {
        /* below 2^-6: FP8 subnormal, code = round(|f| * 2^9) (8 carries into 2^-6) */
        uint32_t m = (a & 0x7fffffu) | 0x800000u; /* |f| = m * 2^(e-150) */
        return sign | (uint8_t)shr_rne(m, 141 - e);
    }
    /* normal: rebias the exponent (127 -> 7) and round 23 mantissa bits to 3; a
     * mantissa carry correctly bumps the exponent. |f| < 448 gives at most 0x7e. */
    return sign | (uint8_t)shr_rne(a - (120u << 23), 20);
}

float dt_bf16_to_f32(uint16_t v)
{
    return bits_f32((uint32_t)v << 16);
}

uint16_t dt_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040); /* keep sign and payload top bits, force quiet */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float dt_f16_to_f32(uint16_t v)
{
    uint32_t sign = (uint32_t)(v & 0x8000) << 16;
    uint32_t e = (v >> 10) & 0x1f, m = v & 0x3ff;
    if (e == 0x1f) /* inf / NaN, payload kept */
        return bits_f32(sign | 0x7f800000u | (m << 13));
    if (e != 0)
        return bits_f32(sign | ((e + 112) << 23) | (m << 13));
    /* zero or subnormal: m * 2^-24, exact in f32 */
    float r = (float)m * 0x1p-24f;
    return sign ? -r : r;
}

void dt_fp8_to_f32_n(const uint8_t *in, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = fp8_table[in[i]];
}

void dt_bf16_to_f32_n(const uint16_t *in, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = bits_f32((uint32_t)in[i] << 16);
}

void dt_f32_to_bf16_n(const float *in, uint16_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = dt_f32_to_bf16(in[i]);
}

/* ---- block FP8 ---- */

/* Below this many elements OpenMP start-up costs more than it saves. */
#define PAR_MIN (1u << 16)

static inline size_t ceil_blocks(size_t n)
{
    return (n + DT_BLOCK - 1) / DT_BLOCK;
}

void dt_block_dequant_rows(const uint8_t *q, const float *scale, size_t rows, size_t cols,
                           size_t r0, size_t r1, float *out)
{
    size_t nbc = ceil_blocks(cols);
    if (r1 > rows)
        r1 = rows;
    if (r0 >= r1)
        return;
    long nr = (long)(r1 - r0);
#pragma omp parallel for schedule(static) if ((size_t)nr * cols >= PAR_MIN)
    for (long k = 0; k < nr; k++) {
        size_t i = r0 + (size_t)k;
        const uint8_t *qi = q + i * cols;
        const float *si = scale + (i / DT_BLOCK) * nbc;
        float *oi = out + (size_t)k * cols;
        for (size_t bj = 0; bj < nbc; bj++) {
            float s = si[bj];
            size_t j0 = bj * DT_BLOCK, j1 = j0 + DT_BLOCK < cols ? j0 + DT_BLOCK : cols;
            for (size_t j = j0; j < j1; j++)
                oi[j] = fp8_table[qi[j]] * s;
        }
    }
}

void dt_block_dequant(const uint8_t *q, const float *scale, size_t rows, size_t cols, float *out)
{
    dt_block_dequant_rows(q, scale, rows, cols, 0, rows, out);
}

void dt_block_quant(const float *w, size_t rows, size_t cols, uint8_t *q, float *scale)
{
    size_t nbr = ceil_blocks(rows), nbc = ceil_blocks(cols);
    long nblocks = (long)(nbr * nbc);
#pragma omp parallel for schedule(dynamic, 1) if (rows * cols >= PAR_MIN)
    for (long b = 0; b < nblocks; b++) {
        size_t bi = (size_t)b / nbc, bj = (size_t)b % nbc;
        size_t i0 = bi * DT_BLOCK, i1 = i0 + DT_BLOCK < rows ? i0 + DT_BLOCK : rows;
        size_t j0 = bj * DT_BLOCK, j1 = j0 + DT_BLOCK < cols ? j0 + DT_BLOCK : cols;
        float amax = 0.0f;
        for (size_t i = i0; i < i1; i++)
            for (size_t j = j0; j < j1; j++)
                amax = fmaxf(amax, fabsf(w[i * cols + j]));
        float s = fmaxf(amax, DT_AMAX_EPS) / DT_FP8_MAX;
        scale[b] = s;
        for (size_t i = i0; i < i1; i++)
            for (size_t j = j0; j < j1; j++)
                q[i * cols + j] = dt_f32_to_fp8(w[i * cols + j] / s);
    }
}

void dt_act_quant(const float *x, size_t rows, size_t cols, uint8_t *y, float *s)
{
    size_t ng = ceil_blocks(cols);
    long nr = (long)rows;
#pragma omp parallel for schedule(static) if (rows * cols >= PAR_MIN)
    for (long r = 0; r < nr; r++) {
        const float *xr = x + (size_t)r * cols;
        uint8_t *yr = y + (size_t)r * cols;
        for (size_t g = 0; g < ng; g++) {
            size_t j0 = g * DT_BLOCK, j1 = j0 + DT_BLOCK < cols ? j0 + DT_BLOCK : cols;
            float amax = 0.0f;
            for (size_t j = j0; j < j1; j++)
                amax = fmaxf(amax, fabsf(xr[j]));
            float sc = fmaxf(amax, DT_AMAX_EPS) / DT_FP8_MAX;
            s[(size_t)r * ng + g] = sc;
            for (size_t j = j0; j < j1; j++)
                yr[j] = dt_f32_to_fp8(xr[j] / sc);
        }
    }
}
