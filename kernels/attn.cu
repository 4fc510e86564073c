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

/* One block per (t, h, split): keys [s0, s1) of the visible range, split so that short
 * batches still fill the GPU (flash-decoding). With one split the block writes the
 * output; otherwise it writes its running max m, sum l and unnormalized output o to
 * part[(th * nsplit + split) * (dv + 2)] and attn_combine merges them. Within a block
 * the softmax runs online over chunks of ATT_CHUNK keys. */
template <int MODE> /* 0 naive, 1 absorbed */
__global__ void attn_kernel(const float *q, size_t ldq, const float *qpe, size_t ldqp,
                            size_t ldhp, const float *k, size_t ldk, const float *kpe,
                            size_t ldkp, const float *v, size_t ldv, float *out, size_t ldo,
                            size_t S, size_t H, size_t dq, size_t dp, size_t dv, size_t pos0,
                            float scale, int nsplit, float *part)
{
    __shared__ float qs[ATT_MAXD], qps[256], p[ATT_CHUNK], red[32];
    size_t th = blockIdx.x, t = th / H, h = th % H;
    const float *qv = MODE == 0 ? q + t * ldq + h * dq : q + (t * H + h) * dq;
    for (size_t i = threadIdx.x; i < dq; i += blockDim.x)
        qs[i] = qv[i];
    if (MODE == 1)
        for (size_t i = threadIdx.x; i < dp; i += blockDim.x)
            qps[i] = qpe[t * ldqp + h * ldhp + i];
    __syncthreads();
    size_t n = att_visible(t, S, pos0);
    size_t per = (n + nsplit - 1) / nsplit;
    size_t sb = blockIdx.y * per, se = sb + per < n ? sb + per : n;
    const int NO = ATT_MAXD / ATT_THREADS;
    float o[NO];
    for (int j = 0; j < NO; j++)
        o[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (size_t s0 = sb; s0 < se; s0 += ATT_CHUNK) {
        size_t cn = se - s0 < ATT_CHUNK ? se - s0 : ATT_CHUNK;
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
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            size_t i = 0;
            const float *vb = MODE == 0 ? v + s0 * ldv + h * dv + d : v + s0 * ldv + d;
            for (; i + 4 <= cn; i += 4) { /* four independent loads in flight */
                a0 += p[i] * vb[i * ldv];
                a1 += p[i + 1] * vb[(i + 1) * ldv];
                a2 += p[i + 2] * vb[(i + 2) * ldv];
                a3 += p[i + 3] * vb[(i + 3) * ldv];
            }
            for (; i < cn; i++)
                a0 += p[i] * vb[i * ldv];
            o[j] = o[j] * corr + ((a0 + a1) + (a2 + a3));
        }
        __syncthreads();
    }
    if (nsplit == 1) {
        float *ov = MODE == 0 ? out + t * ldo + h * dv : out + (t * H + h) * dv;
        for (int j = 0; j < NO; j++) {
            size_t d = threadIdx.x + (size_t)j * blockDim.x;
            if (d < dv)
                ov[d] = n ? o[j] / l : 0.0f;
        }
        return;
    }
    float *pp = part + (th * nsplit + blockIdx.y) * (dv + 2);
    if (threadIdx.x == 0)
        pp[0] = m, pp[1] = l;
    for (int j = 0; j < NO; j++) {
        size_t d = threadIdx.x + (size_t)j * blockDim.x;
        if (d < dv)
            pp[2 + d] = o[j];
    }
}

/* out(t, h) = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s over the splits */
template <int MODE>
__global__ void attn_combine_kernel(const float *part, int nsplit, size_t H, size_t dv,
                                    float *out, size_t ldo)
{
    size_t th = blockIdx.x, t = th / H, h = th % H;
    const float *pp = part + th * nsplit * (dv + 2);
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++)
        M = fmaxf(M, pp[s * (dv + 2)]);
    float L = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        float ms = pp[s * (dv + 2)];
        L += ms == -INFINITY ? 0.0f : expf(ms - M) * pp[s * (dv + 2) + 1];
    }
    float *ov = MODE == 0 ? out + t * ldo + h * dv : out + (t * H + h) * dv;
    for (size_t d = threadIdx.x; d < dv; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < nsplit; s++) {
            float ms = pp[s * (dv + 2)];
            if (ms != -INFINITY)
                a += expf(ms - M) * pp[s * (dv + 2) + 2 + d];
        }
        ov[d] = L > 0 ? a / L : 0.0f;
    }
}

static float *g_part;
static size_t g_part_cap;

/* Splits so that about 8 blocks per SM are busy, at least 64 keys each, at most 64. */
static int att_splits(size_t TH, size_t S, size_t dv, float **part, cudaStream_t st)
{
    int sms = 132;
    static int dev_sms = 0;
    if (!dev_sms) {
        int d = 0;
        cudaGetDevice(&d);
        cudaDeviceGetAttribute(&dev_sms, cudaDevAttrMultiProcessorCount, d);
        if (dev_sms <= 0)
            dev_sms = 132;
    }
    sms = dev_sms;
    size_t want = (8 * (size_t)sms + TH - 1) / TH;
    size_t maxs = (S + 63) / 64;
    size_t ns = want < maxs ? want : maxs;
    ns = ns < 1 ? 1 : ns > 64 ? 64 : ns;
    if (ns > 1) {
        size_t need = TH * ns * (dv + 2) * sizeof(float);
        if (need > g_part_cap) {
            cudaStreamSynchronize(st);
            cudaFree(g_part);
            g_part = NULL;
            g_part_cap = 0;
            if (cudaMalloc((void **)&g_part, need) != cudaSuccess)
                return 1; /* no room: one split */
            g_part_cap = need;
        }
    }
    *part = g_part;
    return (int)ns;
}

int kc_attn_naive(const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                  size_t ldv, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dqk,
                  size_t dv, size_t pos0, float scale, cudaStream_t st)
{
    if (dqk > ATT_MAXD || dv > ATT_MAXD)
        return -1;
    if (T * H == 0)
        return 0;
    float *part = NULL;
    int ns = att_splits(T * H, S, dv, &part, st);
    dim3 grid((unsigned)(T * H), (unsigned)ns);
    attn_kernel<0><<<grid, ATT_THREADS, 0, st>>>(q, ldq, NULL, 0, 0, k, ldk, NULL, 0, v, ldv, out,
                                                 ldo, S, H, dqk, 0, dv, pos0, scale, ns, part);
    KC_LAUNCH_CHECK();
    if (ns > 1) {
        attn_combine_kernel<0><<<(unsigned)(T * H), 128, 0, st>>>(part, ns, H, dv, out, ldo);
        KC_LAUNCH_CHECK();
    }
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
    float *part = NULL;
    int ns = att_splits(T * H, S, R, &part, st);
    dim3 grid((unsigned)(T * H), (unsigned)ns);
    attn_kernel<1><<<grid, ATT_THREADS, 0, st>>>(q_lat, 0, q_pe, ldqp, ldhp, c, ldc, kpe, ldk, c,
                                                 ldc, o_lat, 0, S, H, R, P, R, pos0, scale, ns,
                                                 part);
    KC_LAUNCH_CHECK();
    if (ns > 1) {
        attn_combine_kernel<1><<<(unsigned)(T * H), 128, 0, st>>>(part, ns, H, R, o_lat, 0);
        KC_LAUNCH_CHECK();
    }
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
