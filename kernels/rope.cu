/* kc_rope_apply: CUDA YaRN RoPE on interleaved pairs, mirrors kernels/rope.c. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

struct rope_arg {
    float inv_freq[K_ROPE_MAX_DIM / 2];
    float attn_factor;
    int half;
};

__global__ void rope_kernel(rope_arg r, float *x, size_t rows, size_t heads, size_t ld_row,
                            size_t ld_head, const int32_t *pos)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t n = rows * heads * (size_t)r.half;
    if (i >= n)
        return;
    int p = (int)(i % r.half);
    size_t th = i / r.half, h = th % heads, t = th / heads;
    float a = r.inv_freq[p] * (float)pos[t];
    float c = cosf(a) * r.attn_factor, s = sinf(a) * r.attn_factor;
    float *v = x + t * ld_row + h * ld_head;
    float x0 = v[2 * p], x1 = v[2 * p + 1];
    v[2 * p] = x0 * c - x1 * s;
    v[2 * p + 1] = x1 * c + x0 * s;
}

int kc_rope_apply(const k_rope *r, float *x, size_t rows, size_t heads, size_t ld_row,
                  size_t ld_head, const int32_t *pos, cudaStream_t st)
{
    rope_arg a;
    a.half = r->dim / 2;
    a.attn_factor = r->attn_factor;
    for (int i = 0; i < a.half; i++)
        a.inv_freq[i] = r->inv_freq[i];
    size_t n = rows * heads * (size_t)a.half;
    if (n == 0)
        return 0;
    rope_kernel<<<kc_blocks(n, 256), 256, 0, st>>>(a, x, rows, heads, ld_row, ld_head, pos);
    KC_LAUNCH_CHECK();
    return 0;
}
