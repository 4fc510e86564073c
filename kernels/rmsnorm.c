/* k_rmsnorm: see rmsnorm.h. */
#include "rmsnorm.h"

#include <math.h>

void k_rmsnorm(const float *x, size_t ldx, const float *w, float *y, size_t ldy, size_t rows,
               size_t dim, float eps)
{
#pragma omp parallel for schedule(static) if (rows > 4)
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        float ss = 0.0f;
        for (size_t j = 0; j < dim; j++)
            ss += xr[j] * xr[j];
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (size_t j = 0; j < dim; j++)
            yr[j] = w[j] * (xr[j] * inv);
    }
}
