/* dtype: scalar conversions (FP8 E4M3, BF16, F16 <-> f32) and DeepSeek block-FP8.
 *
 * F8_E4M3 is OCP E4M3 "fn": 1 sign, 4 exponent (bias 7), 3 mantissa bits, no
 * infinities, NaN = S.1111.111, max finite 448, min subnormal 2^-9.
 * Block-FP8 (DeepSeek): weight q [rows, cols] F8_E4M3 with scale_inv
 * [ceil(rows/128), ceil(cols/128)] F32; W[i][j] = f32(q[i][j]) * S[i/128][j/128],
 * S = amax(block)/448 (amax over the real elements of a partial edge block, which is
 * what DeepSeek's zero padding to 128 gives).
 *
 * Degenerate blocks: like DeepSeek's own quantizers (DeepGEMM per_block_cast_to_fp8 and
 * per_token_cast_to_fp8 clamp amax at 1e-4; the inference act_quant does the same),
 * amax is clamped to DT_AMAX_EPS = 1e-4 before dividing, so an all-zero block gets
 * S = 1e-4/448 and all-zero codes, and S is always a normal, finite float. Only a
 * block whose amax is below 1e-4 (never the case for real weights) maps to less than
 * the full +-448 code range. Inputs are expected finite: a NaN element encodes as
 * NaN; an infinite one makes its block's S infinite.
 */
#ifndef DSR1_DTYPE_H
#define DSR1_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#define DT_FP8_MAX 448.0f
#define DT_BLOCK 128
#define DT_AMAX_EPS 1e-4f /* amax floor for block and activation scales */

float dt_fp8_to_f32(uint8_t v);           /* exact, all 256 codes; 0x7f/0xff -> NaN */
/* Round to nearest, ties to even. Finite |f| >= 448 and +-inf saturate to +-448
 * (0x7e/0xfe), as there is no FP8 infinity; NaN -> 0x7f/0xff (sign kept); -0 -> 0x80;
 * results below 2^-6 are FP8 subnormals (|f| <= 2^-10 rounds to +-0). */
uint8_t dt_f32_to_fp8(float f);
float dt_bf16_to_f32(uint16_t v);         /* exact */
/* RNE; overflow rounds to +-inf as IEEE does; NaN stays NaN (quiet bit set, sign kept). */
uint16_t dt_f32_to_bf16(float f);
float dt_f16_to_f32(uint16_t v);          /* exact, including subnormals, inf and NaN */

/* Convert n elements. Fast paths use a 256-entry table for FP8. */
void dt_fp8_to_f32_n(const uint8_t *in, float *out, size_t n);
void dt_bf16_to_f32_n(const uint16_t *in, float *out, size_t n);
void dt_f32_to_bf16_n(const float *in, uint16_t *out, size_t n);

/* Dequantize a block-FP8 matrix [rows, cols] (row-major) into f32 `out`.
 * scale has ceil(rows/128) x ceil(cols/128) entries. OpenMP-parallel over rows. */
void dt_block_dequant(const uint8_t *q, const float *scale, size_t rows, size_t cols, float *out);
/* Same, but only rows [r0, r1) of the full matrix, writing (r1-r0) x cols into out.
 * Lets callers stream big tensors in row chunks. */
void dt_block_dequant_rows(const uint8_t *q, const float *scale, size_t rows, size_t cols,
                           size_t r0, size_t r1, float *out);
/* Quantize f32 [rows, cols] to block-FP8: S = max(amax, 1e-4)/448 per 128x128 block
 * (partial edge blocks use their real elements, as if zero-padded); q = e4m3(w / S).
 * An all-zero block gets S = 1e-4/448 and zero codes. OpenMP-parallel over blocks. */
void dt_block_quant(const float *w, size_t rows, size_t cols, uint8_t *q, float *scale);

/* Per-token 1x128 activation quantization: s = max(amax, 1e-4)/448, y = e4m3(x/s).
 * x [rows, cols], y same, s [rows, ceil(cols/128)]; a short last group uses its real
 * elements. OpenMP-parallel over rows. */
void dt_act_quant(const float *x, size_t rows, size_t cols, uint8_t *y, float *s);

#endif
