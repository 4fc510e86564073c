/* k_gemm: see gemm.h. */
#include "gemm.h"

#include <stdlib.h>

#include "dtype.h"

int k_weight_rows(const k_weight *w, size_t r0, size_t r1, k_weight *out)
{
    if (r0 > r1 || r1 > w->rows)
        return -1;
    *out = *w;
    out->rows = r1 - r0;
    switch (w->type) {
    case K_W_F32:
        out->data = (const float *)w->data + r0 * w->cols;
        break;
    case K_W_BF16:
        out->data = (const uint16_t *)w->data + r0 * w->cols;
        break;
    case K_W_FP8:
        if (r0 % DT_BLOCK)
            return -1;
        out->data = (const uint8_t *)w->data + r0 * w->cols;
        out->scale = w->scale + (r0 / DT_BLOCK) * w->scale_ld;
        break;
    }
    return 0;
}

static void row_to_f32(const k_weight *w, size_t r, float *out)
{
    size_t n = w->cols;
    switch (w->type) {
    case K_W_F32: {
        const float *src = (const float *)w->data + r * n;
        for (size_t j = 0; j < n; j++)
            out[j] = src[j];
        break;
    }
    case K_W_BF16:
        dt_bf16_to_f32_n((const uint16_t *)w->data + r * n, out, n);
        break;
    case K_W_FP8: {
        dt_fp8_to_f32_n((const uint8_t *)w->data + r * n, out, n);
        const float *s = w->scale + (r / DT_BLOCK) * w->scale_ld;
        for (size_t j = 0; j < n; j++)
            out[j] *= s[j / DT_BLOCK];
        break;
    }
    }
}

void k_weight_to_f32(const k_weight *w, size_t r0, size_t r1, float *out)
{
#pragma omp parallel for schedule(static) if (r1 - r0 > 64)
    for (size_t r = r0; r < r1; r++)
        row_to_f32(w, r, out + (r - r0) * w->cols);
}

int k_gemm(const float *x, size_t ldx, size_t M, const k_weight *w, float *y, size_t ldy,
           int accumulate)
{
    size_t N = w->rows, K = w->cols;
    int failed = 0;
#pragma omp parallel if (N * M * K > 65536)
    {
        float *row = w->type == K_W_F32 ? NULL : malloc(K * sizeof(float));
        int ok = w->type == K_W_F32 || row;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (size_t n = 0; n < N; n++) {
            if (!ok)
                continue;
            const float *wr = row;
            if (w->type == K_W_F32)
                wr = (const float *)w->data + n * K;
            else
                row_to_f32(w, n, row);
            for (size_t m = 0; m < M; m++) {
                float s = k_dot(x + m * ldx, wr, K);
                y[m * ldy + n] = accumulate ? y[m * ldy + n] + s : s;
            }
        }
        free(row);
    }
    return failed ? -1 : 0;
}
