/* cuda_util: device helpers shared by the kernels/ .cu files (decode of FP8/BF16, reductions,
 * launch checks). Internal to the CUDA kernels. */
#ifndef DSR1_CUDA_UTIL_CUH
#define DSR1_CUDA_UTIL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KC_LAUNCH_CHECK() \
    do {                                      \
        cudaError_t _e = cudaGetLastError();  \
        if (_e != cudaSuccess)                \
            return (int)_e;                   \
    } while (0)

/* Programmatic dependent launch (sm_90). Decode runs ~16 small kernels a layer; with
 * PDL the next kernel's blocks start while this one runs, load what does not depend on
 * it (weights, cache rows of earlier steps) and then wait. Contract for a kernel
 * launched with kc_launch: call kc_pdl_wait() before reading anything the previous
 * kernel may write and before any global write. kc_pdl_wait() returns once the previous
 * kernel has completed (its writes visible) and only then lets the next kernel launch,
 * so code before the wait never overlaps more than the one kernel in front: everything
 * older is complete. No-op for a kernel launched without the attribute. DSR1_PDL=0 (or
 * kc_set_pdl(0)) launches everything plainly. */
__device__ __forceinline__ void kc_pdl_wait(void)
{
    asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory");
}

inline int kc_pdl_mode = -1; /* -1: not read from the environment yet */

static inline int kc_pdl_on(void)
{
    if (kc_pdl_mode < 0) {
        const char *e = getenv("DSR1_PDL");
        kc_pdl_mode = !(e && strcmp(e, "0") == 0);
    }
    return kc_pdl_mode;
}

/* Scratch the kernels keep between calls (split partials, GEMM staging) is freed and
 * reallocated when a larger call needs more. A captured CUDA graph holds the old
 * addresses, so every reallocation bumps kc_alloc_count (kc_alloc_epoch) and the graph's
 * owner captures again. While its stream is capturing a buffer never grows (growing
 * synchronizes, which would end the capture): the caller takes its fallback. */
inline unsigned kc_alloc_count;

static inline int kc_capturing(cudaStream_t st)
{
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    return cudaStreamIsCapturing(st, &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone;
}

/* k<<<grid, block, smem, st>>>(args...), with the PDL attribute when enabled; returns
 * the launch status as KC_LAUNCH_CHECK would. */
template <typename... KArgs, typename... Args>
static inline int kc_launch(void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem,
                            cudaStream_t st, Args... args)
{
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = kc_pdl_on() ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, k, ((KArgs)args)...);
    if (e != cudaSuccess)
        cudaGetLastError(); /* a launch error is not sticky; leave none behind */
    return (int)e;
}

static inline unsigned kc_blocks(size_t n, unsigned per)
{
    return (unsigned)((n + per - 1) / per);
}

__device__ __forceinline__ float kc_bf16(uint16_t v)
{
    return __uint_as_float((uint32_t)v << 16);
}

/* E4M3 is a subset of fp16: convert two codes through half2, exactly. */
__device__ __forceinline__ float2 kc_fp8x2(uint16_t two)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
    __half2 hh = *reinterpret_cast<__half2 *>(&h);
    return __half22float2(hh);
}

__device__ __forceinline__ float kc_fp8(uint8_t v)
{
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)v, __NV_E4M3);
    return __half2float(*reinterpret_cast<__half *>(&h));
}

__device__ __forceinline__ float kc_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float kc_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets it.
 * sh: 32 floats of shared memory. */
__device__ __forceinline__ float kc_block_sum(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kc_warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    v = kc_warp_sum(v);
    return v;
}

/* silu(g) * u, the expression of the CPU reference's k_silu_mul */
__device__ __forceinline__ float kc_silu_mul(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

/* y = x * w / sqrt(mean(x^2) + eps) over one row of dim floats, by the whole block (y may
 * be x; sh: 32 floats of shared memory). The scalar RMSNorm of kc_rmsnorm and mla_prep. */
__device__ __forceinline__ void kc_rms_row(const float *x, const float *w, float *y, size_t dim,
                                           float eps, float *sh)
{
    float ss = 0.0f;
    for (size_t j = threadIdx.x; j < dim; j += blockDim.x)
        ss += x[j] * x[j];
    ss = kc_block_sum(ss, sh);
    float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (size_t j = threadIdx.x; j < dim; j += blockDim.x)
        y[j] = x[j] * inv * w[j];
}

__device__ __forceinline__ float kc_block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = kc_warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    v = kc_warp_max(v);
    return v;
}

/* Element (r, c) of a weight as fp32 (type: 0 f32, 1 bf16, 2 fp8). */
__device__ __forceinline__ float kc_wget(int type, const void *data, const float *scale,
                                         size_t cols, size_t sld, size_t r, size_t c)
{
    if (type == 2)
        return kc_fp8(((const uint8_t *)data)[r * cols + c]) * scale[(r >> 7) * sld + (c >> 7)];
    if (type == 1)
        return kc_bf16(((const uint16_t *)data)[r * cols + c]);
    return ((const float *)data)[r * cols + c];
}

/* cp.async copies (16 bytes: .cg, global to shared bypassing L1; 4 bytes: .ca) */
__device__ __forceinline__ void kc_cp16(float *dst, const float *src)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}

__device__ __forceinline__ void kc_cp4(float *dst, const float *src)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}

__device__ __forceinline__ void kc_cp_commit(void)
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void kc_cp_wait(void)
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* Tensor-core products for the attention kernels: m16n8k8 TF32 MMAs with fp32
 * accumulation, each operand rounded to TF32 (10-bit mantissa, round to nearest) once.
 * That is finer than the BF16 (7-bit mantissa) attention DeepSeek's reference runs
 * and about 1e-3 off fp32 (measured against the CPU reference in test-gpu). The 3xTF32
 * split (hi*hi + hi*lo + lo*hi, about fp32) it replaced made the kernel issue-bound:
 * 3 MMAs and 4 conversions per product (H200, TP1 ctx 1024: 26.3 us). Fragments (lane =
 * 4 * gid + tig): A[16x8] a0 (gid, tig), a1 (gid + 8, tig), a2 (gid, tig + 4), a3 (gid +
 * 8, tig + 4); B[8x8] b0 (k = tig, n = gid), b1 (k = tig + 4, n = gid); D[16x8] d0 (gid,
 * 2 tig), d1 (gid, 2 tig + 1), d2 (gid + 8, 2 tig), d3 (gid + 8, 2 tig + 1). */
__device__ __forceinline__ uint32_t kc_tf32(float x)
{
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void kc_mma_tf32(float *d, const uint32_t *a, const uint32_t *b)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#endif
