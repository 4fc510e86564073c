/* kc_rmsnorm: CUDA RMSNorm, mirrors kernels/rmsnorm.c (fp32 throughout).
 * One block per row. Rows of a multiple of 4 floats (16-byte aligned) are read as float4,
 * each thread keeping its pieces in registers between the sum of squares and the scaling,
 * so a decode-time row of 7168 floats costs one read; other rows take a scalar loop. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

#define RMS_THREADS 512
#define RMS_VEC 4 /* float4s per thread kept in registers: rows up to 8192 floats */

__global__ void __launch_bounds__(RMS_THREADS) rmsnorm_vec_kernel(const float *x, size_t ldx,
                                                                  const float *w, float *y,
                                                                  size_t ldy, size_t dim,
                                                                  float eps)
{
    __shared__ float sh[32];
    const float4 *xr = reinterpret_cast<const float4 *>(x + blockIdx.x * ldx);
    float4 *yr = reinterpret_cast<float4 *>(y + blockIdx.x * ldy);
    const float4 *wr = reinterpret_cast<const float4 *>(w);
    size_t n4 = dim / 4;
    float4 v[RMS_VEC], g[RMS_VEC];
    float ss = 0.0f;
    /* the weights load before the wait for the row (PDL), not after the reduction */
#pragma unroll
    for (int j = 0; j < RMS_VEC; j++) {
        size_t i = threadIdx.x + (size_t)j * RMS_THREADS;
        g[j] = i < n4 ? __ldg(wr + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    kc_pdl_wait();
#pragma unroll
    for (int j = 0; j < RMS_VEC; j++) {
        size_t i = threadIdx.x + (size_t)j * RMS_THREADS;
        v[j] = i < n4 ? xr[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int j = 0; j < RMS_VEC; j++)
        ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    ss = kc_block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
#pragma unroll
    for (int j = 0; j < RMS_VEC; j++) {
        size_t i = threadIdx.x + (size_t)j * RMS_THREADS;
        if (i < n4)
            yr[i] = make_float4(v[j].x * inv * g[j].x, v[j].y * inv * g[j].y,
                                v[j].z * inv * g[j].z, v[j].w * inv * g[j].w);
    }
}

__global__ void rmsnorm_kernel(const float *x, size_t ldx, const float *w, float *y, size_t ldy,
                               size_t dim, float eps)
{
    __shared__ float sh[32];
    kc_rms_row(x + blockIdx.x * ldx, w, y + blockIdx.x * ldy, dim, eps, sh);
}

int kc_rmsnorm(const float *x, size_t ldx, const float *w, float *y, size_t ldy, size_t rows,
               size_t dim, float eps, cudaStream_t st)
{
    if (rows == 0)
        return 0;
    int vec = dim % 4 == 0 && ldx % 4 == 0 && ldy % 4 == 0 && dim <= 4 * RMS_VEC * RMS_THREADS &&
              (((uintptr_t)x | (uintptr_t)y | (uintptr_t)w) & 15) == 0;
    if (vec)
        return kc_launch(rmsnorm_vec_kernel, dim3((unsigned)rows), dim3(RMS_THREADS), 0, st, x,
                         ldx, w, y, ldy, dim, eps);
    rmsnorm_kernel<<<(unsigned)rows, 256, 0, st>>>(x, ldx, w, y, ldy, dim, eps);
    KC_LAUNCH_CHECK();
    return 0;
}
