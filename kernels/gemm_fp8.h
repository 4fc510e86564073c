/* k_gemm_fp8: DeepSeek's FP8 x FP8 block-scaled GEMM, the exact reference for the
 * CUDA FP8 kernel (deepseek-v3-reference.md §4). Not used by the CPU runtime, which
 * keeps activations in fp32 to match transformers (kernels/gemm.h).
 *
 *   activation quant, per token per 128 channels: s = max(amax, 1e-4) / 448,
 *                                                  a = e4m3(x / s)
 *   C[m, n] = sum_kb as[m, kb] * ws[n/128, kb] * sum_{k in kb} f32(a[m, k]) * f32(q[n, k])
 * fp32 accumulation within a block and across blocks. K need not be a multiple of 128
 * (the last block is partial).
 */
#ifndef DSR1_K_GEMM_FP8_H
#define DSR1_K_GEMM_FP8_H

#include <stddef.h>
#include <stdint.h>

/* Quantize activations x [M, K] (row stride ldx) to a [M, K] E4M3 codes and
 * as [M, ceil(K/128)] scales. */
void k_act_quant(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, float *as);

/* y [M, N] (row stride ldy) = dequant(a, as) x dequant(q, ws)^T, blockwise as above.
 * q: [N, K] E4M3; ws: [ceil(N/128), ceil(K/128)]. */
void k_gemm_fp8(const uint8_t *a, const float *as, size_t M, const uint8_t *q, const float *ws,
                size_t N, size_t K, float *y, size_t ldy);

#endif
