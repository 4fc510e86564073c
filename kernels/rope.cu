/* kc_rope_apply: CUDA YaRN RoPE on interleaved pairs, mirrors kernels/rope.c; and
 * kc_mla_prep, the steps between MLA's projections and its attention (the kv_a norm
 * into the latent cache and RoPE on k_pe and q_pe) fused into one launch. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

struct rope_arg {
    float inv_freq[K_ROPE_MAX_DIM / 2];
    float attn_factor;
    int half;
};

/* Rotate pair p of `in` (at position pos) into `out` (may be the same place). */
__device__ __forceinline__ void rope_pair(const rope_arg &r, int p, int32_t pos, const float *in,
                                          float *out)
{
    float a = r.inv_freq[p] * (float)pos;
    float c = cosf(a) * r.attn_factor, s = sinf(a) * r.attn_factor;
    float x0 = in[2 * p], x1 = in[2 * p + 1];
    out[2 * p] = x0 * c - x1 * s;
    out[2 * p + 1] = x1 * c + x0 * s;
}

__global__ void rope_kernel(rope_arg r, float *x, size_t rows, size_t heads, size_t ld_row,
                            size_t ld_head, const int32_t *pos)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t n = rows * heads * (size_t)r.half;
    if (i >= n)
        return;
    int p = (int)(i % r.half);
    size_t th = i / r.half, h = th % heads, t = th / heads;
    float *v = x + t * ld_row + h * ld_head;
    rope_pair(r, p, pos[t], v, v);
}

static rope_arg rope_arg_of(const k_rope *r)
{
    rope_arg a;
    a.half = r->dim / 2;
    a.attn_factor = r->attn_factor;
    for (int i = 0; i < a.half; i++)
        a.inv_freq[i] = r->inv_freq[i];
    return a;
}

int kc_rope_apply(const k_rope *r, float *x, size_t rows, size_t heads, size_t ld_row,
                  size_t ld_head, const int32_t *pos, cudaStream_t st)
{
    rope_arg a = rope_arg_of(r);
    size_t n = rows * heads * (size_t)a.half;
    if (n == 0)
        return 0;
    rope_kernel<<<kc_blocks(n, 256), 256, 0, st>>>(a, x, rows, heads, ld_row, ld_head, pos);
    KC_LAUNCH_CHECK();
    return 0;
}

#define PREP_HEADS 8 /* q heads rotated per block */

/* Block (t, 0): c[t] = rmsnorm(kva[t, :R]) * w and kpe[t] = rope(kva[t, R:R+P]); blocks
 * (t, b > 0): rope on q_pe of heads [(b-1) * 8, b * 8) of token t. Same arithmetic as
 * kc_rmsnorm's scalar kernel (kc_rms_row) and kc_rope_apply. */
__global__ void mla_prep_kernel(rope_arg r, const float *kva, size_t ldkva, size_t R,
                                const float *w, float eps, float *c, size_t ldc, float *kpe,
                                size_t ldk, float *q, size_t ldq, size_t ldh, size_t dn, size_t H,
                                const int32_t *pos, const int32_t *drow0)
{
    __shared__ float sh[32];
    size_t t = blockIdx.x;
    const float *kv = kva + t * ldkva;
    kc_pdl_wait();
    if (blockIdx.y == 0) {
        if (drow0) {
            c += (size_t)*drow0 * ldc;
            kpe += (size_t)*drow0 * ldk;
        }
        kc_rms_row(kv, w, c + t * ldc, R, eps, sh);
        for (int p = threadIdx.x; p < r.half; p += blockDim.x)
            rope_pair(r, p, pos[t], kv + R, kpe + t * ldk);
        return;
    }
    size_t h0 = (blockIdx.y - 1) * (size_t)PREP_HEADS;
    for (size_t i = threadIdx.x; i < PREP_HEADS * (size_t)r.half; i += blockDim.x) {
        size_t h = h0 + i / r.half;
        if (h < H) {
            float *v = q + t * ldq + h * ldh + dn;
            rope_pair(r, (int)(i % r.half), pos[t], v, v);
        }
    }
}

int kc_mla_prep(const float *kva, size_t ldkva, size_t R, const float *norm_w, float eps,
                float *c, size_t ldc, float *kpe, size_t ldk, float *q, size_t ldq, size_t ldh,
                size_t dn, size_t H, const k_rope *r, const int32_t *pos, size_t T,
                const int32_t *drow0, cudaStream_t st)
{
    if (T == 0)
        return 0;
    rope_arg a = rope_arg_of(r);
    dim3 grid((unsigned)T, (unsigned)(1 + (H + PREP_HEADS - 1) / PREP_HEADS));
    return kc_launch(mla_prep_kernel, grid, dim3(256), 0, st, a, kva, ldkva, R, norm_w, eps, c,
                     ldc, kpe, ldk, q, ldq, ldh, dn, H, pos, drow0);
}
