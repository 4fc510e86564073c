/* kc_rmsnorm: CUDA RMSNorm, mirrors kernels/rmsnorm.c (fp32 throughout). */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

__global__ void rmsnorm_kernel(const float *x, size_t ldx, const float *w, float *y, size_t ldy,
                               size_t dim, float eps)
{
    __shared__ float sh[32];
    const float *xr = x + blockIdx.x * ldx;
    float *yr = y + blockIdx.x * ldy;
    float ss = 0.0f;
    for (size_t j = threadIdx.x; j < dim; j += blockDim.x)
        ss += xr[j] * xr[j];
    ss = kc_block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (size_t j = threadIdx.x; j < dim; j += blockDim.x)
        yr[j] = xr[j] * inv * w[j];
}

int kc_rmsnorm(const float *x, size_t ldx, const float *w, float *y, size_t ldy, size_t rows,
               size_t dim, float eps, cudaStream_t st)
{
    if (rows == 0)
        return 0;
    rmsnorm_kernel<<<(unsigned)rows, 256, 0, st>>>(x, ldx, w, y, ldy, dim, eps);
    KC_LAUNCH_CHECK();
    return 0;
}
