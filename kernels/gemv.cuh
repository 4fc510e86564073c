/* gemv: the weight-streaming tile GEMV used by kc_gemm's GEMV kernels and by the MoE
 * expert kernels. Internal to kernels/ .cu files. */
#ifndef DSR1_GEMV_CUH
#define DSR1_GEMV_CUH

#include "cuda_util.cuh"

template <int WT>
struct wvec;
template <>
struct wvec<0> { static const int V = 4, B = 4; };
template <>
struct wvec<1> { static const int V = 8, B = 2; };
template <>
struct wvec<2> { static const int V = 16, B = 1; };

template <int WT>
__device__ __forceinline__ void decode16(uint4 r, float *f)
{
    if (WT == 0) {
        f[0] = __uint_as_float(r.x), f[1] = __uint_as_float(r.y);
        f[2] = __uint_as_float(r.z), f[3] = __uint_as_float(r.w);
    } else if (WT == 1) {
        uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(u[i] << 16);
            f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    } else {
        uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 a = kc_fp8x2((uint16_t)(u[i] & 0xffff));
            float2 b = kc_fp8x2((uint16_t)(u[i] >> 16));
            f[4 * i] = a.x, f[4 * i + 1] = a.y, f[4 * i + 2] = b.x, f[4 * i + 3] = b.y;
        }
    }
}

/* Weights stream through once: keep them out of L1 so the activation rows stay there. */
__device__ __forceinline__ uint4 kc_ld_stream(const void *p)
{
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

/* ---- tile GEMV: the decode-time weight-streaming core (gemm.cu, mlp.cu) ----
 *
 * A block of 8 warps computes rows [row0, row0 + 8/ks * RB) of NW weights (NW = 2: a
 * gate and an up weight of the same shape, for a fused SiLU-GLU) against nm <= MT
 * activation rows. Warp w = rg * ks + kw owns RB consecutive rows (row group rg) and
 * the K-chunks kw, kw + ks, ... of 32 * V elements (MT <= 2; more tokens take
 * tile_gemv_staged); each lane issues RB * NW 16-byte
 * weight loads per chunk before using any, reads its V activations once per chunk and
 * reuses them for every row. Partial sums are reduced over lanes, then over the ks
 * warps of a row group in a fixed order (deterministic, no atomics).
 *
 * FP8 decoding: DEC = 0 (default) uses the hardware fp8x2 -> half2 conversion. DEC = 1
 * (kept for comparison; slightly slower on H100) builds the fp32 bits of w * 2^-120 with integer
 * ops (sign and the 7 exponent/mantissa bits land in fp32's low exponent bits; e4m3
 * subnormals become fp32 subnormals, exactly): two bytes per shift/mask pair, no
 * conversion instructions. To keep every product in the normal range the activations
 * are scaled by 2^64 when loaded and the sum by 2^56 at the end: powers of two, so
 * the result equals the unscaled fp32 arithmetic while products stay normal (|w x| above
 * about 2^-70). (The e4m3 NaN code decodes to 480
 * under DEC = 1; checkpoints carry no NaN weights.) */

template <int WT, int DEC>
__device__ __forceinline__ void tg_decode(uint4 r, float *f)
{
    if (WT != 2 || DEC == 0) {
        decode16<WT>(r, f);
        return;
    }
    uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        /* lo: bf16 of byte 0 (low half) and byte 2 (high half); hi: bytes 1 and 3 */
        uint32_t lo = ((u[i] << 8) & 0x80008000u) | ((u[i] << 4) & 0x07f007f0u);
        uint32_t hi = (u[i] & 0x80008000u) | ((u[i] >> 4) & 0x07f007f0u);
        f[4 * i] = __uint_as_float(lo << 16);
        f[4 * i + 1] = __uint_as_float(hi << 16);
        f[4 * i + 2] = __uint_as_float(lo & 0xffff0000u);
        f[4 * i + 3] = __uint_as_float(hi & 0xffff0000u);
    }
}

template <int WT, int DEC>
struct tg_scale {
    static constexpr float pre = (WT == 2 && DEC == 1) ? 0x1p64f : 1.0f;
    static constexpr float post = (WT == 2 && DEC == 1) ? 0x1p56f : 1.0f;
};

template <int WT, int DEC>
__device__ __forceinline__ void tg_load_x(const float *p, float *v)
{
    constexpr int V = wvec<WT>::V;
    const float4 *xp = reinterpret_cast<const float4 *>(p);
#pragma unroll
    for (int j = 0; j < V / 4; j++) {
        float4 a = xp[j]; /* coherent load: written by the kernel before (PDL) */
        v[4 * j] = a.x * tg_scale<WT, DEC>::pre, v[4 * j + 1] = a.y * tg_scale<WT, DEC>::pre;
        v[4 * j + 2] = a.z * tg_scale<WT, DEC>::pre, v[4 * j + 3] = a.w * tg_scale<WT, DEC>::pre;
    }
}

template <int V>
__device__ __forceinline__ float tg_dot(const float *w, const float *x)
{
    float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
    for (int i = 0; i < V; i += 2) {
        d0 = fmaf(w[i], x[i], d0);
        d1 = fmaf(w[i + 1], x[i + 1], d1);
    }
    return d0 + d1;
}

template <int RT, int MT>
__device__ __forceinline__ void tg_zero(float (&acc)[RT][MT])
{
#pragma unroll
    for (int i = 0; i < RT; i++)
#pragma unroll
        for (int m = 0; m < MT; m++)
            acc[i][m] = 0.0f;
}

/* Shared memory a tile needs (floats): per-warp partials, then the block's results. */
template <int MT, int RB, int NW>
struct tg_smem {
    static constexpr int RT = RB * NW;
    float red[8 * RT * MT];
    float res[8 * RT * MT];
};

/* W[j]: weight j's data (row 0); S[j], sld[j]: its block scales (FP8). xr[m]: the
 * activation rows (16-byte aligned, K a multiple of V). On return (after a barrier)
 * sm.res[(rg * RT + j * RB + r) * MT + m] holds row row0 + rg * RB + r of weight j
 * for token m, for every row group rg < 8 / ks; rows >= N hold garbage. PRE: load the
 * first weights, then kc_pdl_wait() (for kernels that have not waited yet). */
template <int WT, int MT, int RB, int NW, int DEC, bool PRE>
__device__ __forceinline__ void tile_gemv(const uint8_t *const *W, const float *const *S,
                                          const size_t *sld, size_t row0, size_t N, size_t K,
                                          const float *const *xr, int nm, int ks,
                                          tg_smem<MT, RB, NW> &sm)
{
    constexpr int V = wvec<WT>::V, B = wvec<WT>::B, RT = RB * NW;
    static_assert(MT <= 2, "more tokens take tile_gemv_staged");
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int rg = warp / ks, kw = warp % ks;
    const size_t n0 = row0 + (size_t)rg * RB;
    float acc[RT][MT];
    tg_zero(acc);
    const bool act = rg < 8 / ks && n0 < N;
    const uint8_t *wp[RT];
    const float *sp[NW];
#pragma unroll
    for (int i = 0; i < RT; i++) {
        size_t n = n0 + i % RB;
        wp[i] = W[i / RB] + (n < N ? n : act ? n0 : 0) * K * B; /* rows past N re-read n0 */
    }
#pragma unroll
    for (int j = 0; j < NW; j++)
        sp[j] = WT == 2 ? S[j] + ((act ? n0 : 0) >> 7) * sld[j] : NULL;
    const size_t step = (size_t)ks * 32 * V;
    size_t k = ((size_t)kw * 32 + lane) * V;
    uint4 raw[RT];
    float sc[NW];
    auto load = [&](size_t kk) {
#pragma unroll
        for (int i = 0; i < RT; i++)
            raw[i] = kc_ld_stream(wp[i] + kk * B);
#pragma unroll
        for (int j = 0; j < NW; j++)
            sc[j] = WT == 2 ? __ldg(sp[j] + (kk >> 7)) : 1.0f;
    };
    auto chunk = [&](size_t kk) { /* activations in registers, each row decoded once */
        float xv[MT][V];
#pragma unroll
        for (int m = 0; m < MT; m++)
            if (m < nm)
                tg_load_x<WT, DEC>(xr[m] + kk, xv[m]);
#pragma unroll
        for (int i = 0; i < RT; i++) {
            float wf[V];
            tg_decode<WT, DEC>(raw[i], wf);
#pragma unroll
            for (int m = 0; m < MT; m++)
                if (m < nm)
                    acc[i][m] = fmaf(tg_dot<V>(wf, xv[m]), sc[i / RB], acc[i][m]);
        }
    };
    if constexpr (PRE) {
        /* PDL: the first chunk's weights are in flight before the wait (every thread
         * waits, converged); the activations load after it */
        const bool any = act && k < K;
        if (any)
            load(k);
        kc_pdl_wait();
        if (any) {
            chunk(k);
            for (k += step; k < K; k += step) {
                load(k);
                chunk(k);
            }
        }
    } else { /* the caller has waited (PDL) */
        for (; act && k < K; k += step) {
            load(k);
            chunk(k);
        }
    }
#pragma unroll
    for (int i = 0; i < RT; i++)
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float v = kc_warp_sum(acc[i][m]);
            if (lane == 0)
                sm.red[(warp * RT + i) * MT + m] = v;
        }
    __syncthreads();
    const int ng = 8 / ks;
    for (int t = threadIdx.x; t < ng * RT * MT; t += blockDim.x) {
        int g = t / (RT * MT), j = t % (RT * MT);
        float v = 0.0f;
        for (int w = 0; w < ks; w++)
            v += sm.red[(g * ks + w) * RT * MT + j];
        sm.res[t] = v * tg_scale<WT, DEC>::post;
    }
    __syncthreads();
}

/* Warps splitting K: as many as there are 32*V chunks, up to 8 (a power of two). */
static inline int tg_ks(size_t K, int V)
{
    size_t chunks = (K + 32 * (size_t)V - 1) / (32 * (size_t)V);
    return chunks >= 8 ? 8 : chunks >= 4 ? 4 : chunks >= 2 ? 2 : 1;
}

/* Rows per warp for NW weights: four weight rows per lane per chunk. */
__host__ __device__ constexpr int tg_rb(int nw) { return nw == 1 ? 4 : 2; }

/* The tile GEMV for 3..16 tokens. tile_gemv's activations-from-L1 scheme thrashes
 * there (16 rows of 7168 floats are 460 KB per SM; H100, 8 tokens: ~400 GB/s), so
 * here every warp is a row group (ks = 1) and the block walks K in chunks of 32 * V:
 * each chunk's activations for all tokens are staged once in shared memory (each
 * lane's V values padded by 4 floats against bank conflicts), then each lane dots its
 * RB * NW decoded weight rows with every token, reading each activation once per
 * chunk. The weight loads of a chunk are issued before the staging barrier. Same
 * output contract as tile_gemv (8 row groups). xrow: the nm activation rows, an array in
 * shared memory (indexed at run time while staging), written before the call. */
template <int WT, int MT, int RB, int NW, int DEC>
__device__ __forceinline__ void tile_gemv_staged(const uint8_t *const *W, const float *const *S,
                                                 const size_t *sld, size_t row0, size_t N,
                                                 size_t K, const float *const *xrow, int nm,
                                                 tg_smem<MT, RB, NW> &sm)
{
    constexpr int V = wvec<WT>::V, B = wvec<WT>::B, RT = RB * NW, CH = 32 * V, LS = V + 4;
    __shared__ __align__(16) float xs[MT * 32 * LS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const size_t n0 = row0 + (size_t)warp * RB;
    const bool active = n0 < N;
    float acc[RT][MT];
    tg_zero(acc);
    const uint8_t *wp[RT];
    const float *sp[NW];
#pragma unroll
    for (int i = 0; i < RT; i++) {
        size_t n = n0 + i % RB;
        wp[i] = W[i / RB] + (n < N ? n : (active ? n0 : 0)) * K * B;
    }
#pragma unroll
    for (int j = 0; j < NW; j++)
        sp[j] = WT == 2 ? S[j] + ((active ? n0 : 0) >> 7) * sld[j] : NULL;
    if (K == 0)
        kc_pdl_wait(); /* no chunk below waits: keep the PDL contract before the writes */
    for (size_t k0 = 0; k0 < K; k0 += CH) {
        const size_t k = k0 + (size_t)lane * V;
        const bool kin = active && k < K;
        uint4 raw[RT];
        float sc[NW];
#pragma unroll
        for (int i = 0; i < RT; i++)
            raw[i] = kin ? kc_ld_stream(wp[i] + k * B) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int j = 0; j < NW; j++)
            sc[j] = WT == 2 && kin ? __ldg(sp[j] + (k >> 7)) : 1.0f;
        if (k0 == 0)
            kc_pdl_wait(); /* PDL: the first weights are in flight; now the activations */
        __syncthreads(); /* every warp is done with the previous chunk's activations */
        for (int i = threadIdx.x; i < MT * CH / 4; i += blockDim.x) {
            int m = i / (CH / 4), q = i % (CH / 4);
            size_t kk = k0 + (size_t)q * 4;
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (m < nm && kk < K)
                v = *reinterpret_cast<const float4 *>(xrow[m] + kk); /* coherent (PDL) */
            *reinterpret_cast<float4 *>(xs + (m * 32 + q / (V / 4)) * LS + (q % (V / 4)) * 4) = v;
        }
        __syncthreads();
        if (kin) {
            float wf[RT][V];
#pragma unroll
            for (int i = 0; i < RT; i++)
                tg_decode<WT, DEC>(raw[i], wf[i]);
#pragma unroll
            for (int m = 0; m < MT; m++)
                if (m < nm) {
                    float xv[V];
                    const float4 *xp = reinterpret_cast<const float4 *>(xs + (m * 32 + lane) * LS);
#pragma unroll
                    for (int j = 0; j < V / 4; j++) {
                        float4 f = xp[j];
                        xv[4 * j] = f.x * tg_scale<WT, DEC>::pre;
                        xv[4 * j + 1] = f.y * tg_scale<WT, DEC>::pre;
                        xv[4 * j + 2] = f.z * tg_scale<WT, DEC>::pre;
                        xv[4 * j + 3] = f.w * tg_scale<WT, DEC>::pre;
                    }
#pragma unroll
                    for (int i = 0; i < RT; i++)
                        acc[i][m] = fmaf(tg_dot<V>(wf[i], xv), sc[i / RB], acc[i][m]);
                }
        }
    }
#pragma unroll
    for (int i = 0; i < RT; i++)
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float v = kc_warp_sum(acc[i][m]);
            if (lane == 0)
                sm.res[(warp * RT + i) * MT + m] = v * tg_scale<WT, DEC>::post;
        }
    __syncthreads();
}

#endif
