/* k_rope: rotary position embedding with YaRN frequency scaling, interleaved pairs
 * (DeepSeek-V3 layout), the CPU reference (kernels/rope.cu mirrors it).
 *
 * Frequencies (deepseek-v3-reference.md §6, transformers' _compute_yarn_parameters):
 *   f[i]   = theta^(-2i/dim), i < dim/2
 *   yarn:  low  = max(floor(corr(beta_fast)), 0), high = min(ceil(corr(beta_slow)), dim-1),
 *          corr(r) = dim * ln(orig_max / (r * 2 pi)) / (2 ln theta); high += 0.001 if equal
 *          ramp[i] = clamp((i - low) / (high - low), 0, 1)
 *          f[i] = f[i] / factor * ramp[i] + f[i] * (1 - ramp[i])
 * Rotation of pair i of a vector at position p (angle a = p * f[i], fp32):
 *   out[2i]   = x[2i] * c - x[2i+1] * s,   out[2i+1] = x[2i] * s + x[2i+1] * c
 *   with c = cos(a) * attn_factor, s = sin(a) * attn_factor.
 * attn_factor is transformers' YaRN "attention_factor": mscale(factor, mscale) /
 * mscale(factor, mscale_all_dim) = 1.0 for R1 (both 1.0); the softmax-scale mscale^2 of
 * MLA is separate (k_rope_softmax_scale).
 */
#ifndef DSR1_K_ROPE_H
#define DSR1_K_ROPE_H

#include <stddef.h>
#include <stdint.h>

#define K_ROPE_MAX_DIM 256

typedef struct k_rope_params {
    int dim;               /* rotary dims, even, <= K_ROPE_MAX_DIM (qk_rope_head_dim) */
    double theta;          /* rope_theta */
    int yarn;              /* 0: plain RoPE (the fields below are ignored) */
    double factor;
    double original_max_position_embeddings;
    double beta_fast, beta_slow, mscale, mscale_all_dim;
} k_rope_params;

typedef struct k_rope {
    int dim;
    float inv_freq[K_ROPE_MAX_DIM / 2];
    float attn_factor;
} k_rope;

/* Fill r from p. Returns 0, or -1 when dim is odd, zero or too large. */
int k_rope_init(k_rope *r, const k_rope_params *p);

/* YaRN's mscale: 1 if factor <= 1, else 0.1 * m * ln(factor) + 1. */
double k_rope_yarn_mscale(double factor, double m);

/* MLA softmax scale as transformers computes it: qk_head_dim^-0.5, times
 * mscale(factor, mscale_all_dim)^2 when yarn and mscale_all_dim != 0. */
double k_rope_softmax_scale(const k_rope_params *p, int qk_head_dim);

/* Rotate in place: x holds rows x heads vectors of r->dim floats; vector (t, h) starts at
 * x + t * ld_row + h * ld_head; row t is at absolute position pos[t]. */
void k_rope_apply(const k_rope *r, float *x, size_t rows, size_t heads, size_t ld_row,
                  size_t ld_head, const int32_t *pos);

#endif
