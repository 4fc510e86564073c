/* gemv: the weight-streaming row-dot used by kc_gemm's GEMV kernel and by the MoE
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

/* A warp dots one weight row (wrow; srow = its block-scale row for FP8) with the
 * activation rows xr[m], m < nm; every lane ends with the sums in acc. Needs K a
 * multiple of 16 bytes of weights and 16-byte aligned rows. Each lane keeps U 16-byte
 * weight loads in flight before it uses the first (decode is latency bound otherwise). */
template <int WT, int MT, int U = (MT <= 4 ? 4 : MT <= 8 ? 2 : 1)>
__device__ __forceinline__ void warp_rowdot(const uint8_t *wrow, const float *srow, size_t K,
                                            const float *const *xr, int nm, float *acc)
{
    constexpr int V = wvec<WT>::V, B = wvec<WT>::B;
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int m = 0; m < MT; m++)
        acc[m] = 0.0f;
    for (size_t k0 = (size_t)lane * V; k0 < K; k0 += 32 * V * U) {
        uint4 raw[U];
        float s[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            size_t kk = k0 + (size_t)u * 32 * V;
            if (kk < K) {
                raw[u] = kc_ld_stream(wrow + kk * B);
                s[u] = WT == 2 ? __ldg(srow + (kk >> 7)) : 1.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            size_t kk = k0 + (size_t)u * 32 * V;
            if (kk >= K)
                break;
            float wf[V];
            decode16<WT>(raw[u], wf);
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m < nm) {
                    const float4 *xp = reinterpret_cast<const float4 *>(xr[m] + kk);
                    float d = 0.0f;
#pragma unroll
                    for (int j = 0; j < V / 4; j++) {
                        float4 xv = xp[j];
                        d += wf[4 * j] * xv.x + wf[4 * j + 1] * xv.y + wf[4 * j + 2] * xv.z +
                             wf[4 * j + 3] * xv.w;
                    }
                    acc[m] += WT == 2 ? d * s[u] : d;
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; m++)
        acc[m] = kc_warp_sum(acc[m]);
}

#endif
