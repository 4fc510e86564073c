/* kc_act_quant / kc_gemm_fp8_simple: DeepSeek's 1x128 activation quantization and the
 * block-scaled FP8 GEMM on CUDA cores, mirroring kernels/gemm_fp8.c. The fast path
 * (cuBLASLt) lives in gemm.cu and is verified against kc_gemm_fp8_simple. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"

#define FP8_MAX 448.0f

/* One warp per (row m, block b) of 128 elements, 8 warps a block: each lane quantizes 4
 * consecutive elements (one float4 when the row allows) and writes their codes as one
 * 32-bit store; the block max is a warp reduction. Scale index as[m*sm + b*sb].
 * Same arithmetic as k_act_quant: s = max(amax, 1e-4) / 448, code = e4m3(v / s). */
__global__ void __launch_bounds__(256) act_quant_kernel(const float *x, size_t ldx, size_t M,
                                                        size_t K, uint8_t *a, size_t lda,
                                                        float *as, size_t sm, size_t sb, int vec)
{
    size_t nb = (K + 127) / 128;
    size_t wi = blockIdx.x * (size_t)8 + (threadIdx.x >> 5);
    if (wi >= M * nb)
        return; /* whole warps only: the shuffles below see full warps */
    size_t m = wi / nb, b = wi % nb, k = b * 128 + (threadIdx.x & 31) * 4;
    const float *xr = x + m * ldx;
    float v[4];
    if (vec) {
        float4 f = k < K ? *reinterpret_cast<const float4 *>(xr + k) : make_float4(0, 0, 0, 0);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
        for (int j = 0; j < 4; j++)
            v[j] = k + j < K ? xr[k + j] : 0.0f;
    }
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    amax = kc_warp_max(amax);
    float s = fmaxf(amax, 1e-4f) / FP8_MAX;
    if ((threadIdx.x & 31) == 0)
        as[m * sm + b * sb] = s;
    uint32_t q[4];
    for (int j = 0; j < 4; j++)
        q[j] = (uint8_t)__nv_cvt_float_to_fp8(v[j] / s, __NV_SATFINITE, __NV_E4M3);
    uint8_t *ar = a + m * lda;
    if (vec && k < K)
        *reinterpret_cast<uint32_t *>(ar + k) = q[0] | q[1] << 8 | q[2] << 16 | q[3] << 24;
    else
        for (int j = 0; j < 4; j++)
            if (k + j < K)
                ar[k + j] = (uint8_t)q[j];
}

int kc_act_quant_strided(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, size_t lda,
                         float *as, size_t sm, size_t sb, cudaStream_t st)
{
    if (M == 0 || K == 0)
        return 0;
    /* float4 loads and 32-bit stores need K, ldx, lda multiples of 4 and aligned bases */
    int vec = K % 4 == 0 && ldx % 4 == 0 && lda % 4 == 0 &&
              (((uintptr_t)x & 15) | ((uintptr_t)a & 3)) == 0;
    size_t warps = M * ((K + 127) / 128);
    act_quant_kernel<<<kc_blocks(warps, 8), 256, 0, st>>>(x, ldx, M, K, a, lda, as, sm, sb, vec);
    KC_LAUNCH_CHECK();
    return 0;
}

int kc_act_quant(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, float *as,
                 cudaStream_t st)
{
    size_t nb = (K + 127) / 128;
    return kc_act_quant_strided(x, ldx, M, K, a, K, as, nb, 1, st);
}

/* 16x16 output tile per block; k walks one 128-block at a time so each partial sum is
 * scaled once, as in the reference. */
__global__ void gemm_fp8_simple_kernel(const uint8_t *a, const float *as, size_t M,
                                       const uint8_t *q, const float *ws, size_t N, size_t K,
                                       float *y, size_t ldy)
{
    __shared__ float at[16][129], qt[16][129];
    size_t m = blockIdx.y * 16 + threadIdx.y, n = blockIdx.x * 16 + threadIdx.x;
    size_t nb = (K + 127) / 128;
    float acc = 0.0f;
    for (size_t b = 0; b < nb; b++) {
        size_t k0 = b * 128, kl = K - k0 < 128 ? K - k0 : 128;
        for (size_t i = threadIdx.x; i < 128; i += 16) {
            size_t mm = blockIdx.y * 16 + threadIdx.y, nn = blockIdx.x * 16 + threadIdx.y;
            at[threadIdx.y][i] = (mm < M && i < kl) ? kc_fp8(a[mm * K + k0 + i]) : 0.0f;
            qt[threadIdx.y][i] = (nn < N && i < kl) ? kc_fp8(q[nn * K + k0 + i]) : 0.0f;
        }
        __syncthreads();
        float part = 0.0f;
        for (size_t i = 0; i < kl; i++)
            part += at[threadIdx.y][i] * qt[threadIdx.x][i];
        if (m < M && n < N)
            acc += as[m * nb + b] * ws[(n / 128) * nb + b] * part;
        __syncthreads();
    }
    if (m < M && n < N)
        y[m * ldy + n] = acc;
}

int kc_gemm_fp8_simple(const uint8_t *a, const float *as, size_t M, const uint8_t *q,
                       const float *ws, size_t N, size_t K, float *y, size_t ldy,
                       cudaStream_t st)
{
    if (M == 0 || N == 0)
        return 0;
    dim3 grid(kc_blocks(N, 16), kc_blocks(M, 16)), block(16, 16);
    gemm_fp8_simple_kernel<<<grid, block, 0, st>>>(a, as, M, q, ws, N, K, y, ldy);
    KC_LAUNCH_CHECK();
    return 0;
}
