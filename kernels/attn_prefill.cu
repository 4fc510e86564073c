/* kc_mla_prefill: MLA attention of a prefill in the decompressed (naive) form, mirroring
 * the CPU runtime's prefill (runtime/model.c: kv_b applied to the cached latents, then
 * k_attn_naive). The absorbed decode kernels (attn.cu) score one token's heads per block
 * against the latent cache, R + P = 576 features a key; decompressed, a head's key is
 * dn + P = 192 features and its value dv = 128, and all of a prefill's query rows share
 * each key: two strided-batched matmuls per group of heads on TF32 tensor cores with a
 * softmax between them (scores materialized in fp32, the group sized to bound them).
 * kv_b is dequantized exactly to fp32 for the decompression (a TF32 matmul), as the
 * absorbed kernels use it: quantizing the latents to FP8 there (DeepSeek's naive mode)
 * moved a random 4-layer R1-size model's logits by ~0.16 of their range (H200). */
#include "cuda_kernels.h"
#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"

enum { SCR_PF_KVD = 16, SCR_PF_KF, SCR_PF_SC, SCR_PF_W };

static size_t g_score_bytes = (size_t)1 << 30; /* scores of one head group */

void kc_mla_prefill_set_score_bytes(size_t n) { g_score_bytes = n ? n : (size_t)1 << 30; }

/* wf = the weight in fp32, exactly (kc_wget) */
__global__ void pf_dequant_kernel(int type, const void *data, const float *scale, size_t rows,
                                  size_t cols, size_t sld, float *wf)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < rows * cols)
        wf[i] = kc_wget(type, data, scale, cols, sld, i / cols, i % cols);
}

/* kf[s, h, :] = [k_nope of head h (kvd row s), kpe[s, :P]] */
__global__ void pf_keys_kernel(const float *kvd, size_t W, const float *kpe, size_t ldk, size_t S,
                               size_t H, size_t dn, size_t dv, size_t P, float *kf)
{
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x, dq = dn + P;
    if (i >= S * H * dq)
        return;
    size_t d = i % dq, sh = i / dq, h = sh % H, s = sh / H;
    kf[i] = d < dn ? kvd[s * W + h * (dn + dv) + d] : kpe[s * ldk + d - dn];
}

/* One block per score row (head, t) of sc [heads][T][S]: softmax of scale * x over the
 * keys t sees (s <= pos0 + t), max-subtracted in fp32; the keys beyond become 0. */
__global__ void __launch_bounds__(256) pf_softmax_kernel(float *sc, size_t T, size_t S, size_t pos0,
                                                         float scale)
{
    __shared__ float red[8];
    const size_t row = blockIdx.x, t = row % T;
    float *x = sc + row * S;
    const size_t n = pos0 + t + 1 < S ? pos0 + t + 1 : S;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float m = -INFINITY;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, x[i] * scale);
    m = kc_warp_max(m);
    if (lane == 0)
        red[warp] = m;
    __syncthreads();
    m = red[lane < 8 ? lane : 0];
    m = kc_warp_max(m);
    __syncthreads();
    float sum = 0.0f;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        float e = expf(x[i] * scale - m);
        x[i] = e;
        sum += e;
    }
    sum = kc_warp_sum(sum);
    if (lane == 0)
        red[warp] = sum;
    __syncthreads();
    sum = lane < 8 ? red[lane] : 0.0f;
    sum = kc_warp_sum(sum);
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    for (size_t i = threadIdx.x; i < S; i += blockDim.x)
        x[i] = i < n ? x[i] * inv : 0.0f;
}

int kc_mla_prefill(kc_ctx *c, const float *q, size_t ldq, const float *cache, size_t ldc,
                   const float *kpe, size_t ldk, const k_weight *wkv_b, float *out, size_t ldo,
                   size_t T, size_t S, size_t H, size_t dn, size_t dv, size_t R, size_t P,
                   size_t pos0, float scale)
{
    if (T == 0 || H == 0)
        return 0;
    if (S < pos0 + T || wkv_b->rows != H * (dn + dv) || wkv_b->cols != R)
        return -1;
    cudaStream_t st = kc_ctx_stream(c);
    const size_t W = H * (dn + dv), dq = dn + P;
    float *kvd = (float *)kc_ctx_scratch(c, SCR_PF_KVD, S * W * sizeof(float));
    float *kf = (float *)kc_ctx_scratch(c, SCR_PF_KF, S * H * dq * sizeof(float));
    size_t row = T * S * sizeof(float), hg = g_score_bytes / row;
    hg = hg < 1 ? 1 : hg > H ? H : hg;
    float *sc = (float *)kc_ctx_scratch(c, SCR_PF_SC, hg * row);
    float *wf = (float *)kc_ctx_scratch(c, SCR_PF_W, W * R * sizeof(float));
    if (!kvd || !kf || !sc || !wf)
        return (int)cudaErrorMemoryAllocation;
    /* every key's k_nope and v from the latents the prep kernel cached: kvd (column-major
     * [W, S]) = wf ([W, R], stored [R, W] column-major, transposed) c ([R, S]) */
    pf_dequant_kernel<<<kc_blocks(W * R, 256), 256, 0, st>>>((int)wkv_b->type, wkv_b->data,
                                                            wkv_b->scale, W, R,
                                                            wkv_b->scale_ld, wf);
    KC_LAUNCH_CHECK();
    int rc = kc_gemm_f32_batched(c, 1, 0, W, S, R, wf, R, 0, cache, ldc, 0, kvd, W, 0, 1);
    if (rc)
        return rc;
    pf_keys_kernel<<<kc_blocks(S * H * dq, 256), 256, 0, st>>>(kvd, W, kpe, ldk, S, H, dn, dv, P, kf);
    KC_LAUNCH_CHECK();
    const long long ts = (long long)(T * S);
    for (size_t h0 = 0; h0 < H; h0 += hg) {
        const size_t nb = H - h0 < hg ? H - h0 : hg;
        /* scores of head h, column-major [S, T]: (kf_h [S, dq]) (q_h [T, dq])^T */
        rc = kc_gemm_f32_batched(c, 1, 0, S, T, dq, kf + h0 * dq, H * dq, (long long)dq,
                                 q + h0 * dq, ldq, (long long)dq, sc, S, ts, nb);
        if (rc)
            return rc;
        pf_softmax_kernel<<<(unsigned)(nb * T), 256, 0, st>>>(sc, T, S, pos0, scale);
        KC_LAUNCH_CHECK();
        /* out_h^T [dv, T] = v_h^T [dv, S] p_h^T [S, T] */
        rc = kc_gemm_f32_batched(c, 0, 0, dv, T, S, kvd + dn + h0 * (dn + dv), W,
                                 (long long)(dn + dv), sc, S, ts, out + h0 * dv, ldo,
                                 (long long)dv, nb);
        if (rc)
            return rc;
    }
    return 0;
}
