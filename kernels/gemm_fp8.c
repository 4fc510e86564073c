/* k_gemm_fp8: see gemm_fp8.h. */
#include "gemm_fp8.h"

#include <math.h>

#include "dtype.h"

void k_act_quant(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, float *as)
{
    size_t nb = (K + DT_BLOCK - 1) / DT_BLOCK;
#pragma omp parallel for schedule(static) if (M > 4)
    for (size_t m = 0; m < M; m++) {
        for (size_t b = 0; b < nb; b++) {
            size_t k0 = b * DT_BLOCK, k1 = k0 + DT_BLOCK < K ? k0 + DT_BLOCK : K;
            float amax = 0;
            for (size_t k = k0; k < k1; k++) {
                float v = fabsf(x[m * ldx + k]);
                amax = v > amax ? v : amax;
            }
            float s = (amax > 1e-4f ? amax : 1e-4f) / DT_FP8_MAX;
            as[m * nb + b] = s;
            for (size_t k = k0; k < k1; k++)
                a[m * K + k] = dt_f32_to_fp8(x[m * ldx + k] / s);
        }
    }
}

void k_gemm_fp8(const uint8_t *a, const float *as, size_t M, const uint8_t *q, const float *ws,
                size_t N, size_t K, float *y, size_t ldy)
{
    size_t nb = (K + DT_BLOCK - 1) / DT_BLOCK;
#pragma omp parallel for collapse(2) schedule(static) if (M * N * K > 65536)
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) {
            float acc = 0;
            for (size_t b = 0; b < nb; b++) {
                size_t k0 = b * DT_BLOCK, k1 = k0 + DT_BLOCK < K ? k0 + DT_BLOCK : K;
                float part = 0;
                for (size_t k = k0; k < k1; k++)
                    part += dt_fp8_to_f32(a[m * K + k]) * dt_fp8_to_f32(q[n * K + k]);
                acc += as[m * nb + b] * ws[(n / DT_BLOCK) * nb + b] * part;
            }
            y[m * ldy + n] = acc;
        }
}
