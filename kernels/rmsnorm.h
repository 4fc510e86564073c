/* k_rmsnorm: RMS normalisation, the CPU reference (kernels/rmsnorm.cu mirrors it).
 *
 *   y[r, :] = x[r, :] * rsqrt(mean_j(x[r, j]^2) + eps) * w[:]      (all fp32)
 *
 * Rows are strided so a slice of a wider row (the 512 latent values of kv_a's
 * 576-wide output) can be normalised in place. x == y is allowed.
 */
#ifndef DSR1_K_RMSNORM_H
#define DSR1_K_RMSNORM_H

#include <stddef.h>

/* x: rows x dim with row stride ldx floats; y: row stride ldy; w: dim floats. */
void k_rmsnorm(const float *x, size_t ldx, const float *w, float *y, size_t ldy, size_t rows,
               size_t dim, float eps);

#endif
