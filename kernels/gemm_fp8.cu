/* kc_act_quant / kc_gemm_fp8_simple: DeepSeek's 1x128 activation quantization and the
 * block-scaled FP8 GEMM on CUDA cores, mirroring kernels/gemm_fp8.c. The fast path
 * (cuBLASLt) lives in gemm.cu and is verified against kc_gemm_fp8_simple. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"

#define FP8_MAX 448.0f

/* One block (128 threads) per (row m, block b); scale index as[m*sm + b*sb]. */
__global__ void act_quant_kernel(const float *x, size_t ldx, size_t K, uint8_t *a, size_t lda,
                                 float *as, size_t sm, size_t sb)
{
    __shared__ float red[32];
    size_t m = blockIdx.y, b = blockIdx.x, k = b * 128 + threadIdx.x;
    float v = k < K ? x[m * ldx + k] : 0.0f;
    float amax = kc_block_max(fabsf(v), red);
    float s = fmaxf(amax, 1e-4f) / FP8_MAX;
    if (threadIdx.x == 0)
        as[m * sm + b * sb] = s;
    if (k < K)
        a[m * lda + k] = (uint8_t)__nv_cvt_float_to_fp8(v / s, __NV_SATFINITE, __NV_E4M3);
}

int kc_act_quant_strided(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, size_t lda,
                         float *as, size_t sm, size_t sb, cudaStream_t st)
{
    if (M == 0 || K == 0)
        return 0;
    dim3 grid(kc_blocks(K, 128), (unsigned)M);
    act_quant_kernel<<<grid, 128, 0, st>>>(x, ldx, K, a, lda, as, sm, sb);
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
