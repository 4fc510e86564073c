/* k_gemm: y = x W^T with fp32 activations and a weight stored as F32, BF16 or
 * DeepSeek block-FP8 (dequantized on the fly, fp32 accumulation). The CPU
 * reference for every projection; it matches transformers running the model in
 * fp32 on the dequantized weights (no activation quantization). The CUDA side
 * (kernels/gemm.cu) tests its BF16/F32 paths against this; its FP8 x FP8 path is
 * checked against k_gemm_fp8 (kernels/gemm_fp8.h), which quantizes activations.
 *
 * Weight layout: row-major [rows = out features, cols = in features]; FP8 scales
 * [ceil(rows/128), ceil(cols/128)] F32 (W[i][j] = f32(q[i][j]) * S[i/128][j/128]).
 * A k_weight only borrows data/scale; they must outlive every call.
 */
#ifndef DSR1_K_GEMM_H
#define DSR1_K_GEMM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { K_W_F32 = 0, K_W_BF16, K_W_FP8 } k_wtype;

typedef struct k_weight {
    k_wtype type;
    const void *data;     /* rows x cols elements */
    const float *scale;   /* K_W_FP8 only: ceil(rows/128) x scale_ld floats */
    size_t rows, cols;
    size_t scale_ld;      /* scale row stride (= ceil(cols/128) for a whole tensor) */
} k_weight;

/* Rows [r0, r1) of w as a view. For FP8, r0 must be a multiple of 128 (block
 * boundary); returns -1 otherwise or when out of range. */
int k_weight_rows(const k_weight *w, size_t r0, size_t r1, k_weight *out);

/* Dequantize rows [r0, r1) of w to fp32 (r1-r0) x cols into out. */
void k_weight_to_f32(const k_weight *w, size_t r0, size_t r1, float *out);

/* Dot product in fp32 with 8 interleaved partial sums (lane j sums k = j mod 8 in
 * ascending order), combined as ((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7)), then the tail.
 * Every CPU reduction over a feature dimension uses it. */
static inline float k_dot(const float *a, const float *b, size_t n)
{
    float l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t n8 = n & ~(size_t)7;
    for (size_t k = 0; k < n8; k += 8)
        for (size_t j = 0; j < 8; j++)
            l[j] += a[k + j] * b[k + j];
    float s = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    for (size_t k = n8; k < n; k++)
        s += a[k] * b[k];
    return s;
}

/* y[m, n] = k_dot(x[m, :], W[n, :]) for m < M, n < w->rows; x row stride ldx >= cols,
 * y row stride ldy >= rows. When accumulate != 0, y += result instead of y = result.
 * OpenMP over n; each weight row is dequantized once per call into a per-thread row
 * buffer. Returns 0, or -1 when that buffer cannot be allocated (y then undefined). */
int k_gemm(const float *x, size_t ldx, size_t M, const k_weight *w, float *y, size_t ldy,
            int accumulate);

#endif
