/* k_mlp: the SiLU-gated MLP of dense layers, routed and shared experts, the CPU
 * reference (kernels/mlp.cu mirrors it).
 *
 *   y = down( silu(gate x) * up x ),  silu(z) = z / (1 + exp(-z)),  fp32.
 */
#ifndef DSR1_K_MLP_H
#define DSR1_K_MLP_H

#include <stddef.h>

#include "gemm.h"

/* h[i] = silu(g[i]) * u[i], n elements (h may alias g or u). */
void k_silu_mul(const float *g, const float *u, float *h, size_t n);

/* y [M, down->rows] (row stride ldy) = down(silu(gate x) * up x); x [M, gate->cols]
 * (row stride ldx). gate and up have the same shape [I, D]; down is [D', I].
 * When accumulate != 0, y += wscale[m] * result (wscale NULL: 1), else y = result
 * (wscale ignored). Scratch is allocated internally; returns 0 or -1 on ENOMEM. */
int k_mlp(const float *x, size_t ldx, size_t M, const k_weight *gate, const k_weight *up,
          const k_weight *down, float *y, size_t ldy, int accumulate, const float *wscale);

#endif
