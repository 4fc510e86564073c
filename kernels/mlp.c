/* k_mlp: see mlp.h. */
#include "mlp.h"

#include <math.h>
#include <stdlib.h>

void k_silu_mul(const float *g, const float *u, float *h, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 16384)
    for (size_t i = 0; i < n; i++)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

int k_mlp(const float *x, size_t ldx, size_t M, const k_weight *gate, const k_weight *up,
          const k_weight *down, float *y, size_t ldy, int accumulate, const float *wscale)
{
    size_t I = gate->rows, D = down->rows;
    float *g = malloc(M * I * sizeof(float));
    float *u = malloc(M * I * sizeof(float));
    float *o = accumulate ? malloc(M * D * sizeof(float)) : NULL;
    int rc = -1;
    if (!g || !u || (accumulate && !o))
        goto out;
    if (k_gemm(x, ldx, M, gate, g, I, 0) || k_gemm(x, ldx, M, up, u, I, 0))
        goto out;
    k_silu_mul(g, u, g, M * I);
    if (!accumulate) {
        rc = k_gemm(g, I, M, down, y, ldy, 0);
        goto out;
    }
    if (k_gemm(g, I, M, down, o, D, 0))
        goto out;
    for (size_t m = 0; m < M; m++) {
        float s = wscale ? wscale[m] : 1.0f;
        for (size_t d = 0; d < D; d++)
            y[m * ldy + d] += o[m * D + d] * s;
    }
    rc = 0;
out:
    free(g);
    free(u);
    free(o);
    return rc;
}
