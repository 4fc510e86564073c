/* k_attn / k_mla: Multi-head Latent Attention cores, the CPU reference
 * (kernels/attn.cu mirrors it). deepseek-v3-reference.md §6 has the math.
 *
 * Positions: keys/values are indexed by absolute position s = 0..S-1; query row t
 * sits at absolute position pos0 + t and sees keys s <= min(pos0 + t, S - 1) (causal;
 * callers pass S >= pos0 + T; a query that sees no key gets zeros). Softmax
 * in fp32 with max subtraction. Two equivalent formulations:
 *
 *  naive (prefill):   q [T, H, dqk], k [S, H, dqk], v [S, H, dv] -> out [T, H, dv]
 *                     (k = [c W_UK^T, k_pe], v = c W_UV^T, materialised by the caller)
 *  absorbed (decode): q_lat = q_nope W_UK per head        [T, H, R]   (k_mla_absorb_q)
 *                     scores = (q_lat . c_s + q_pe . kpe_s) * scale
 *                     o_lat = sum_s p_s c_s                 [T, H, R]   (k_mla_attn)
 *                     o = o_lat W_UV^T per head             [T, H, dv]  (k_mla_absorb_v)
 *  over the latent cache c [S, R] (R = kv_lora_rank, after kv_a_layernorm) and the
 *  shared rope key kpe [S, P] (P = qk_rope_head_dim, rope applied).
 *
 * Every function returns 0, or -1 when its per-thread scratch cannot be allocated.
 *
 * kv_b_proj layout (k_weight rows = H * (dn + dv), cols = R): head h's rows
 * [h*(dn+dv), h*(dn+dv)+dn) are W_UK, the next dv rows are W_UV.
 */
#ifndef DSR1_K_ATTN_H
#define DSR1_K_ATTN_H

#include <stddef.h>

#include "gemm.h"

/* Naive causal attention. Row strides: q ldq (>= H*dqk), k ldk, v ldv, out ldo; within a
 * row head h starts at h*dqk (q, k) or h*dv (v, out). */
int k_attn_naive(const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                  size_t ldv, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dqk,
                  size_t dv, size_t pos0, float scale);

/* q_lat[t, h, :] = sum_d q_nope[t, h, d] * W_UK_h[d, :].
 * q_nope: vector (t, h) at q + t*ldq + h*ldh (dn floats); q_lat: [T, H, R] dense. */
int k_mla_absorb_q(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                    size_t dv, const k_weight *wkv_b, float *q_lat);

/* Absorbed attention over the latent cache. q_lat [T, H, R] dense; q_pe: vector (t, h)
 * at q_pe + t*ldqp + h*ldhp (P floats); c: [S, R] row stride ldc; kpe: [S, P] row stride
 * ldk; o_lat [T, H, R] dense. */
int k_mla_attn(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp, const float *c,
                size_t ldc, const float *kpe, size_t ldk, float *o_lat, size_t T, size_t S,
                size_t H, size_t R, size_t P, size_t pos0, float scale);

/* o[t, h*dv + e] = sum_r o_lat[t, h, r] * W_UV_h[e, r]; o row stride ldo. */
int k_mla_absorb_v(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                    const k_weight *wkv_b, float *o, size_t ldo);

#endif
