/* kc_attn_naive / kc_mla_*: CUDA Multi-head Latent Attention cores, mirroring
 * kernels/attn.c. Softmax is computed online over key chunks (max-subtracted, fp32),
 * which equals the reference's two-pass softmax up to rounding. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

#define ATT_THREADS 256
#define ATT_CHUNK 1024 /* keys scored per pass, kept in shared memory */
#define ATT_MAXD 1024  /* query / value width held in shared memory */

__device__ __forceinline__ size_t att_visible(size_t t, size_t S, size_t pos0)
{
    size_t n = pos0 + t + 1;
    return n < S ? n : S;
}

/* One block per (t, h). Scores of keys [s0, s0+chunk) go to p[]; outputs accumulate
 * per thread over out dims d = threadIdx.x + k*blockDim.x (k < ATT_MAXD/ATT_THREADS). */
template <int MODE> /* 0 naive, 1 absorbed */
__global__ void attn_kernel(const float *q, size_t ldq, const float *qpe, size_t ldqp,
                            size_t ldhp, const float *k, size_t ldk, const float *kpe,
                            size_t ldkp, const float *v, size_t ldv, float *out, size_t ldo,
                            size_t S, size_t H, size_t dq, size_t dp, size_t dv, size_t pos0,
                            float scale)
{
    __shared__ float qs[ATT_MAXD], qps[256], p[ATT_CHUNK], red[32];
    size_t t = blockIdx.x / H, h = blockIdx.x % H;
    const float *qv = MODE == 0 ? q + t * ldq + h * dq : q + (t * H + h) * dq;
    for (size_t i = threadIdx.x; i < dq; i += blockDim.x)
        qs[i] = qv[i];
    if (MODE == 1)
        for (size_t i = threadIdx.x; i < dp; i += blockDim.x)
            qps[i] = qpe[t * ldqp + h * ldhp + i];
    __syncthreads();
    size_t n = att_visible(t, S, pos0);
    const int NO = ATT_MAXD / ATT_THREADS;
    float o[NO];
    for (int j = 0; j < NO; j++)
        o[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (size_t s0 = 0; s0 < n; s0 += ATT_CHUNK) {
        size_t cn = n - s0 < ATT_CHUNK ? n - s0 : ATT_CHUNK;
        for (size_t i = warp; i < cn; i += nw) {
            size_t s = s0 + i;
            const float *kv = MODE == 0 ? k + s * ldk + h * dq : k + s * ldk;
            float acc = 0.0f;
            for (size_t d = lane; d < dq; d += 32)
                acc += qs[d] * kv[d];
            if (MODE == 1)
                for (size_t d = lane; d < dp; d += 32)
                    acc += qps[d] * kpe[s * ldkp + d];
            acc = kc_warp_sum(acc);
            if (lane == 0)
                p[i] = acc * scale;
        }
        __syncthreads();
        float cm = -INFINITY;
        for (size_t i = threadIdx.x; i < cn; i += blockDim.x)
            cm = fmaxf(cm, p[i]);
        cm = kc_block_max(cm, red);
        float nm = fmaxf(m, cm);
        float corr = expf(m - nm); /* 0 on the first chunk (m = -inf) */
        __syncthreads();
        float ls = 0.0f;
        for (size_t i = threadIdx.x; i < cn; i += blockDim.x) {
            float e = expf(p[i] - nm);
            p[i] = e;
            ls += e;
        }
        ls = kc_block_sum(ls, red);
        l = l * corr + ls;
        m = nm;
        __syncthreads();
        for (int j = 0; j < NO; j++) {
            size_t d = threadIdx.x + (size_t)j * blockDim.x;
            if (d >= dv)
                break;
            float a = o[j] * corr;
            for (size_t i = 0; i < cn; i++) {
                size_t s = s0 + i;
                const float *vv = MODE == 0 ? v + s * ldv + h * dv : v + s * ldv;
                a += p[i] * vv[d];
            }
            o[j] = a;
        }
        __syncthreads();
    }
    float *ov = MODE == 0 ? out + t * ldo + h * dv : out + (t * H + h) * dv;
    for (int j = 0; j < NO; j++) {
        size_t d = threadIdx.x + (size_t)j * blockDim.x;
        if (d < dv)
            ov[d] = n ? o[j] / l : 0.0f;
    }
}

int kc_attn_naive(const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                  size_t ldv, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dqk,
                  size_t dv, size_t pos0, float scale, cudaStream_t st)
{
    if (dqk > ATT_MAXD || dv > ATT_MAXD)
        return -1;
    if (T * H == 0)
        return 0;
    attn_kernel<0><<<(unsigned)(T * H), ATT_THREADS, 0, st>>>(q, ldq, NULL, 0, 0, k, ldk, NULL, 0,
                                                              v, ldv, out, ldo, S, H, dqk, 0, dv,
                                                              pos0, scale);
    KC_LAUNCH_CHECK();
    return 0;
}

int kc_mla_attn(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp, const float *c,
                size_t ldc, const float *kpe, size_t ldk, float *o_lat, size_t T, size_t S,
                size_t H, size_t R, size_t P, size_t pos0, float scale, cudaStream_t st)
{
    if (R > ATT_MAXD || P > 256)
        return -1;
    if (T * H == 0)
        return 0;
    attn_kernel<1><<<(unsigned)(T * H), ATT_THREADS, 0, st>>>(q_lat, 0, q_pe, ldqp, ldhp, c, ldc,
                                                              kpe, ldk, c, ldc, o_lat, 0, S, H, R,
                                                              P, R, pos0, scale);
    KC_LAUNCH_CHECK();
    return 0;
}

#define ABS_TOK 8

/* q_lat[t,h,r] = sum_d q[t,h,d] W(h*(dn+dv)+d, r): thread per r, ABS_TOK tokens a block. */
__global__ void absorb_q_kernel(const float *q, size_t ldq, size_t ldh, size_t T, size_t H,
                                size_t dn, size_t dv, int type, const void *wd, const float *ws,
                                size_t R, size_t sld, float *q_lat)
{
    size_t h = blockIdx.y, r = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t t0 = blockIdx.z * (size_t)ABS_TOK;
    if (r >= R)
        return;
    float acc[ABS_TOK];
    for (int j = 0; j < ABS_TOK; j++)
        acc[j] = 0.0f;
    size_t row0 = h * (dn + dv);
    for (size_t d = 0; d < dn; d++) {
        float w = kc_wget(type, wd, ws, R, sld, row0 + d, r);
        for (int j = 0; j < ABS_TOK; j++)
            if (t0 + j < T)
                acc[j] += q[(t0 + j) * ldq + h * ldh + d] * w;
    }
    for (int j = 0; j < ABS_TOK; j++)
        if (t0 + j < T)
            q_lat[((t0 + j) * H + h) * R + r] = acc[j];
}

/* o[t, h*dv+e] = sum_r o_lat[t,h,r] W(h*(dn+dv)+dn+e, r): a warp per (h, e). */
__global__ void absorb_v_kernel(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                                int type, const void *wd, const float *ws, size_t R, size_t sld,
                                float *o, size_t ldo)
{
    size_t he = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    size_t t0 = blockIdx.y * (size_t)ABS_TOK;
    if (he >= H * dv)
        return;
    size_t h = he / dv, e = he % dv, row = h * (dn + dv) + dn + e;
    float acc[ABS_TOK];
    for (int j = 0; j < ABS_TOK; j++)
        acc[j] = 0.0f;
    for (size_t r = lane; r < R; r += 32) {
        float w = kc_wget(type, wd, ws, R, sld, row, r);
        for (int j = 0; j < ABS_TOK; j++)
            if (t0 + j < T)
                acc[j] += o_lat[((t0 + j) * H + h) * R + r] * w;
    }
    for (int j = 0; j < ABS_TOK; j++) {
        float s = kc_warp_sum(acc[j]);
        if (lane == 0 && t0 + j < T)
            o[(t0 + j) * ldo + h * dv + e] = s;
    }
}

int kc_mla_absorb_q(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                    size_t dv, const k_weight *w, float *q_lat, cudaStream_t st)
{
    if (T * H == 0)
        return 0;
    dim3 grid(kc_blocks(w->cols, 128), (unsigned)H, kc_blocks(T, ABS_TOK));
    absorb_q_kernel<<<grid, 128, 0, st>>>(q, ldq, ldh, T, H, dn, dv, (int)w->type, w->data,
                                          w->scale, w->cols, w->scale_ld, q_lat);
    KC_LAUNCH_CHECK();
    return 0;
}

int kc_mla_absorb_v(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                    const k_weight *w, float *o, size_t ldo, cudaStream_t st)
{
    if (T * H == 0)
        return 0;
    dim3 grid(kc_blocks(H * dv, 8), kc_blocks(T, ABS_TOK));
    absorb_v_kernel<<<grid, 256, 0, st>>>(o_lat, T, H, dn, dv, (int)w->type, w->data, w->scale,
                                          w->cols, w->scale_ld, o, ldo);
    KC_LAUNCH_CHECK();
    return 0;
}
