/* kc_mla_prefill: MLA attention of a prefill in the decompressed (naive) form, mirroring
 * the CPU runtime's prefill (runtime/model.c: kv_b applied to the cached latents, then
 * k_attn_naive). The absorbed decode kernels (attn.cu) score one token's heads per block
 * against the latent cache, R + P = 576 features a key; decompressed, a head's key is
 * dn + P = 192 features and its value dv = 128, and all of a prefill's query rows share
 * each key: two strided-batched matmuls per group of heads on TF32 tensor cores with a
 * softmax between them (scores materialized in fp32, the group sized to bound them).
 * kv_b is dequantized exactly to fp32 for the decompression (a TF32 matmul), as the
 * absorbed kernels use it: quantizing the latents to FP8 there (DeepSeek's naive mode)
 * moved a random 4-layer R1-size model's logits by ~0.16 of their range (H200).
 *
 * At R1's head shape (and the golden model's) the attention itself is one fused kernel
 * instead (pf_flash_kernel): a block takes 64 query rows of one head and walks the keys
 * those rows see in tiles of 32, scores and weighted values on TF32 tensor cores with an
 * online softmax (running max and sum per row, the partial output rescaled), so no
 * score matrix is stored and the masked half of the causal square is skipped. The keys
 * are read where they lie: k_nope and v from the decompressed rows, k_pe from the
 * cache. The materializing path remains for other shapes and for comparison
 * (kc_mla_prefill_set_flash). */
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

/* ---- fused path ---------------------------------------------------------------- */

#define FA_NW 8              /* warps a block, 16 query rows each */
#define FA_BM (16 * FA_NW)   /* query rows of a tile */
#define FA_BN 32             /* keys a tile */

static int g_flash = 1; /* 0 never, 1 where its grid is wide enough, 2 always */
void kc_mla_prefill_set_flash(int mode) { g_flash = mode; }

/* Fragment orders. An MMA sums over k, so any order of k applied to both operands gives
 * the same product; the kernel picks orders that let a thread fetch its fragments with
 * 16-byte loads and keep the softmax weights in registers:
 *   scores: k-steps 2j and 2j + 1 read query / key columns 16j + 4 tig + {0, 1} and
 *     {2, 3} (one float4 of a key row serves two MMAs);
 *   values: the key k-step's lanes tig take keys 2 tig and 2 tig + 1, which is where the
 *     score MMA left them (its D fragment becomes the A fragment as it is); output
 *     column n of lane gid in value tile n is column 32 (n / 4) + 4 gid + n % 4 (float4
 *     loads of V, float4 stores of the output).
 * Row strides (floats): KS = 16 mod 32 and VS = 4 mod 32 make those loads conflict-free.
 * K and V tiles are double-buffered: the next tile's copy runs under this one's MMAs
 * (two barriers a tile: after the copy lands, after its TF32 rounding). */
template <int DQ, int DV>
struct fa_shape {
    enum { KS = DQ + 16, VS = DV + 4, FLOATS = 2 * FA_BN * KS + 2 * FA_BN * VS };
};

/* Tile kt's keys into sk / sv as cp.async copies, warp w taking rows w, w + 8, ...
 * and a lane the row's 16-byte chunks lane, lane + 32, ... (rows past nkeys zeroed: a
 * 0 weight times garbage could be NaN). */
template <int DQ, int DV>
__device__ __forceinline__ void fa_load_tile(float *sk, float *sv, int kt, int nkeys,
                                             const float *kvd, size_t W, size_t hoff,
                                             const float *kpe, size_t ldk, int dn)
{
    typedef fa_shape<DQ, DV> F;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int r = warp; r < FA_BN; r += FA_NW) {
        const int s = kt * FA_BN + r;
        float *dk = sk + r * F::KS, *dv = sv + r * F::VS;
        const float *row = kvd + (size_t)s * W + hoff, *pe = kpe + (size_t)s * ldk - dn;
#pragma unroll
        for (int c = 4 * lane; c < DQ; c += 128)
            if (s < nkeys)
                kc_cp16(dk + c, (c < dn ? row : pe) + c);
            else
                *(float4 *)(dk + c) = zero;
#pragma unroll
        for (int c = 4 * lane; c < DV; c += 128)
            if (s < nkeys)
                kc_cp16(dv + c, row + dn + c);
            else
                *(float4 *)(dv + c) = zero;
    }
}

__device__ __forceinline__ float4 fa_tf32x4(float4 v)
{
    return make_float4(__uint_as_float(kc_tf32(v.x)), __uint_as_float(kc_tf32(v.y)),
                       __uint_as_float(kc_tf32(v.z)), __uint_as_float(kc_tf32(v.w)));
}

/* Query rows t0 .. t0 + 127 of head h; row t sees keys s <= pos0 + t. Warp w owns
 * rows t0 + 16w .. + 15 (MMA fragments: see kc_mma_tf32), their queries held as TF32 A
 * fragments in registers; a thread holds two rows (gid and gid + 8) and their running
 * max m (log2 units), partial sum l and output o. */
template <int DQ, int DV>
__device__ __forceinline__ void fa_rows(float *skb, float *svb, const float *q, size_t ldq,
                                        const float *kvd, size_t W, const float *kpe, size_t ldk,
                                        float *out, size_t ldo, int T, int S, int dn, int pos0,
                                        float sl2, int h, int t0)
{
    typedef fa_shape<DQ, DV> F;
    constexpr int KS = F::KS, VS = F::VS, NT = FA_BN / 8, NO = DV / 8, NQ = DQ / 8;
    static_assert(DQ % 16 == 0 && DV % 32 == 0, "fragment orders");
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tg = lane & 3;
    const int r0 = warp * 16;
    const size_t hoff = (size_t)h * (dn + DV);
    const int tend = min(t0 + FA_BM, T), nkeys = min(pos0 + tend, S);
    const int ta = t0 + r0 + g, tb = ta + 8;
    const int ntk = (nkeys + FA_BN - 1) / FA_BN;
    fa_load_tile<DQ, DV>(skb, svb, 0, nkeys, kvd, W, hoff, kpe, ldk, dn);
    kc_cp_commit();
    uint32_t qf[NQ][4]; /* A fragments of the warp's 16 query rows (zero past T) */
    {
        const float *qa = q + (size_t)ta * ldq + (size_t)h * DQ + 4 * tg;
        const float *qb = q + (size_t)tb * ldq + (size_t)h * DQ + 4 * tg;
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            const int c = 16 * (k >> 1) + 2 * (k & 1);
            const float2 x = ta < T ? __ldg((const float2 *)(qa + c)) : make_float2(0.f, 0.f);
            const float2 y = tb < T ? __ldg((const float2 *)(qb + c)) : make_float2(0.f, 0.f);
            qf[k][0] = kc_tf32(x.x), qf[k][1] = kc_tf32(y.x);
            qf[k][2] = kc_tf32(x.y), qf[k][3] = kc_tf32(y.y);
        }
    }
    float o[NO][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < NO; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    for (int kt = 0; kt < ntk; kt++) {
        const int s0 = kt * FA_BN;
        float *sk = skb + (kt & 1) * FA_BN * KS, *sv = svb + (kt & 1) * FA_BN * VS;
        kc_cp_wait<0>(); /* tile kt, the one group in flight */
        __syncthreads(); /* ... visible to all; and every warp is done with tile kt - 1 */
        if (kt + 1 < ntk) { /* so the next tile can go into that buffer */
            fa_load_tile<DQ, DV>(skb + ((kt + 1) & 1) * FA_BN * KS, svb + ((kt + 1) & 1) * FA_BN * VS,
                                 kt + 1, nkeys, kvd, W, hoff, kpe, ldk, dn);
            kc_cp_commit();
        }
        /* round the tile to TF32 once for all the warps (rows as fa_load_tile) */
        for (int r = warp; r < FA_BN; r += FA_NW) {
#pragma unroll
            for (int c = 4 * lane; c < DQ; c += 128)
                *(float4 *)(sk + r * KS + c) = fa_tf32x4(*(const float4 *)(sk + r * KS + c));
#pragma unroll
            for (int c = 4 * lane; c < DV; c += 128)
                *(float4 *)(sv + r * VS + c) = fa_tf32x4(*(const float4 *)(sv + r * VS + c));
        }
        __syncthreads();
        /* rows past the prompt, or a tile wholly after this warp's last row: nothing */
        if (t0 + r0 < T && s0 <= pos0 + t0 + r0 + 15) {
            float sc[NT][4];
#pragma unroll
            for (int n = 0; n < NT; n++)
                sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
            for (int j = 0; j < NQ / 2; j++)
#pragma unroll
                for (int n = 0; n < NT; n++) {
                    const float4 kb = *(const float4 *)(sk + (n * 8 + g) * KS + 16 * j + 4 * tg);
                    const uint32_t b0[2] = {__float_as_uint(kb.x), __float_as_uint(kb.y)};
                    const uint32_t b1[2] = {__float_as_uint(kb.z), __float_as_uint(kb.w)};
                    kc_mma_tf32(sc[n], qf[2 * j], b0);
                    kc_mma_tf32(sc[n], qf[2 * j + 1], b1);
                }
            /* scale (log2 units), causal mask (a tile reaching past the warp's first
             * row), online softmax of the two rows */
            const bool diag = s0 + FA_BN - 1 > pos0 + t0 + r0;
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = s0 + n * 8 + 2 * tg + (e & 1), t = e < 2 ? ta : tb;
                    const float x = !diag || key <= pos0 + t ? sc[n][e] * sl2 : -INFINITY;
                    sc[n][e] = x;
                    mx[e >> 1] = fmaxf(mx[e >> 1], x);
                }
            float mb[2], alpha[2];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 1));
                mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 2));
                const float mn = fmaxf(m[j], mx[j]);
                mb[j] = mn == -INFINITY ? 0.f : mn; /* a row with nothing visible yet */
                alpha[j] = exp2f(m[j] - mb[j]);
                m[j] = mn;
                l[j] *= alpha[j];
            }
#pragma unroll
            for (int n = 0; n < NO; n++) {
                o[n][0] *= alpha[0], o[n][1] *= alpha[0];
                o[n][2] *= alpha[1], o[n][3] *= alpha[1];
            }
            /* key step kk: the weights are A's fragment as they stand (see above) */
#pragma unroll
            for (int kk = 0; kk < NT; kk++) {
                float p[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    p[e] = exp2f(sc[kk][e] - mb[e >> 1]);
                    l[e >> 1] += p[e];
                }
                const uint32_t a[4] = {kc_tf32(p[0]), kc_tf32(p[2]), kc_tf32(p[1]), kc_tf32(p[3])};
                const float *v0 = sv + (kk * 8 + 2 * tg) * VS + 4 * g, *v1 = v0 + VS;
#pragma unroll
                for (int i = 0; i < NO / 4; i++) {
                    const float4 x = *(const float4 *)(v0 + 32 * i), y = *(const float4 *)(v1 + 32 * i);
                    const float xv[4] = {x.x, x.y, x.z, x.w}, yv[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const uint32_t b[2] = {__float_as_uint(xv[c]), __float_as_uint(yv[c])};
                        kc_mma_tf32(o[4 * i + c], a, b);
                    }
                }
            }
        }
    }
    float inv[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        l[j] += __shfl_xor_sync(0xffffffffu, l[j], 1);
        l[j] += __shfl_xor_sync(0xffffffffu, l[j], 2);
        inv[j] = l[j] > 0.f ? 1.f / l[j] : 0.f;
    }
    /* o[4i + c][e] is output column 32 i + 4 (2 tig + (e & 1)) + c */
#pragma unroll
    for (int i = 0; i < NO / 4; i++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const size_t col = (size_t)h * DV + 32 * i + 4 * (2 * tg + e);
            if (ta < T)
                *(float4 *)(out + (size_t)ta * ldo + col) =
                    make_float4(o[4 * i][e] * inv[0], o[4 * i + 1][e] * inv[0],
                                o[4 * i + 2][e] * inv[0], o[4 * i + 3][e] * inv[0]);
            if (tb < T)
                *(float4 *)(out + (size_t)tb * ldo + col) =
                    make_float4(o[4 * i][2 + e] * inv[1], o[4 * i + 1][2 + e] * inv[1],
                                o[4 * i + 2][2 + e] * inv[1], o[4 * i + 3][2 + e] * inv[1]);
        }
}

/* Block (x, h): query tiles ntq - 1 - x and x of head h, one after the other. A causal
 * tile's work grows with its index, so every block gets the same (ntq + 1 tiles' worth
 * of keys): with a TP8 rank's 16 heads at 2048 tokens, 128 equal blocks on 132 SMs
 * instead of 256 of 4..64 key tiles. */
template <int DQ, int DV>
__global__ void __launch_bounds__(32 * FA_NW) pf_flash_kernel(const float *q, size_t ldq,
                                                             const float *kvd, size_t W,
                                                             const float *kpe, size_t ldk,
                                                             float *out, size_t ldo, int T, int S,
                                                             int dn, int pos0, float sl2, int ntq)
{
    extern __shared__ float4 fa_sm4[];
    float *skb = (float *)fa_sm4, *svb = skb + 2 * FA_BN * fa_shape<DQ, DV>::KS;
    const int x = (int)blockIdx.x, hi = ntq - 1 - x;
    fa_rows<DQ, DV>(skb, svb, q, ldq, kvd, W, kpe, ldk, out, ldo, T, S, dn, pos0, sl2,
                    (int)blockIdx.y, hi * FA_BM);
    if (x < hi) {
        __syncthreads(); /* the tile buffers are free again */
        fa_rows<DQ, DV>(skb, svb, q, ldq, kvd, W, kpe, ldk, out, ldo, T, S, dn, pos0, sl2,
                        (int)blockIdx.y, x * FA_BM);
    }
}

template <int DQ, int DV>
static int pf_flash(const float *q, size_t ldq, const float *kvd, size_t W, const float *kpe,
                    size_t ldk, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dn,
                    size_t pos0, float scale, cudaStream_t st)
{
    const size_t smem = fa_shape<DQ, DV>::FLOATS * sizeof(float);
    cudaError_t e = cudaFuncSetAttribute((const void *)pf_flash_kernel<DQ, DV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess)
        return (int)e;
    const int ntq = (int)((T + FA_BM - 1) / FA_BM);
    pf_flash_kernel<DQ, DV><<<dim3((unsigned)(ntq + 1) / 2, (unsigned)H), 32 * FA_NW, smem, st>>>(
        q, ldq, kvd, W, kpe, ldk, out, ldo, (int)T, (int)S, (int)dn, (int)pos0,
        scale * 1.4426950408889634f, ntq);
    KC_LAUNCH_CHECK();
    return 0;
}

/* The fused kernel's shapes and 16-byte rows (cp.async, float4 loads and stores). */
static int pf_flash_ok(const float *q, size_t ldq, const float *kvd, size_t W, const float *kpe,
                       size_t ldk, const float *out, size_t ldo, size_t T, size_t S, size_t H,
                       size_t dq, size_t dn, size_t dv)
{
    const bool shape = (dq == 192 && dv == 128) || (dq == 128 && dv == 64);
    /* Its blocks (pairs of 128-row tiles a head) against the SMs: H200, a TP8 rank's 16
     * heads, 32 blocks at 512 tokens 0.77x the materializing path, 128 at 2048 1.44x;
     * 128 heads, 256 blocks at 512 tokens 1.54x. Below half the SMs: materialize. */
    const size_t blocks = ((T + FA_BM - 1) / FA_BM + 1) / 2 * H;
    const bool wide = g_flash == 2 || 2 * blocks >= (size_t)kc_sm_count();
    return g_flash && wide && shape && dn % 4 == 0 && dn <= dq && ldq % 4 == 0 && W % 4 == 0 &&
           ldk % 4 == 0 && ldo % 4 == 0 && ((uintptr_t)q & 15) == 0 &&
           ((uintptr_t)kvd & 15) == 0 && ((uintptr_t)kpe & 15) == 0 &&
           ((uintptr_t)out & 15) == 0 && H <= 65535 && S + T < (size_t)1 << 30;
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
    float *wf = (float *)kc_ctx_scratch(c, SCR_PF_W, W * R * sizeof(float));
    if (!kvd || !wf)
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
    if (pf_flash_ok(q, ldq, kvd, W, kpe, ldk, out, ldo, T, S, H, dq, dn, dv))
        return dq == 192 ? pf_flash<192, 128>(q, ldq, kvd, W, kpe, ldk, out, ldo, T, S, H, dn, pos0,
                                              scale, st)
                         : pf_flash<128, 64>(q, ldq, kvd, W, kpe, ldk, out, ldo, T, S, H, dn, pos0,
                                             scale, st);
    float *kf = (float *)kc_ctx_scratch(c, SCR_PF_KF, S * H * dq * sizeof(float));
    size_t row = T * S * sizeof(float), hg = g_score_bytes / row;
    hg = hg < 1 ? 1 : hg > H ? H : hg;
    float *sc = (float *)kc_ctx_scratch(c, SCR_PF_SC, hg * row);
    if (!kf || !sc)
        return (int)cudaErrorMemoryAllocation;
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
