/* Internal launchers shared by gemm.cu and gemm_fp8.cu. */
#ifndef DSR1_GEMM_FP8_INTERNAL_CUH
#define DSR1_GEMM_FP8_INTERNAL_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

/* kc_act_quant with the code row stride lda and the scale of (m, block b) stored at
 * as[m*sm + b*sb] (cuBLASLt may want the block-major arrangement). */
int kc_act_quant_strided(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, size_t lda,
                         float *as, size_t sm, size_t sb, cudaStream_t st);

/* Scratch buffer `i` (< KC_SCRATCH_N) of at least n bytes, owned by the context
 * (grow-only; the stream is drained before a reallocation so no queued kernel still
 * uses the old buffer). Slots 0-3: gemm.cu; 4-7, 9-15: mlp.cu; 8: kc_gemm_glu; 16-19:
 * attn_prefill.cu. */
#define KC_SCRATCH_N 20
#define KC_SCRATCH_GLU 8
struct kc_ctx;
void *kc_ctx_scratch(struct kc_ctx *c, int i, size_t n);

/* One job of a GEMV launch (gemm.cu's tile GEMV, gemv_a8.cu): weight w [N, K] with its
 * block scales s (row stride sld; FP8 only), output y [M, N] (row stride ldy). */
struct gv_job {
    const uint8_t *w;
    const float *s;
    size_t sld, N;
    float *y;
    size_t ldy;
};

/* gemv_a8.cu: the FP8 tensor-core GEMV for 3..16 tokens on FP8 jobs. Codes a [M, K] and
 * scales as [M, K/128] from kc_act_quant (K a multiple of 128). Two jobs on the same
 * codes share a launch; glu: y0 = silu(x w0^T) * (x w1^T). */
struct a8_args {
    const uint8_t *a;
    const float *as;
    size_t K;
    int M, accumulate;
    unsigned nb0; /* blocks of job 0 (set by the launcher) */
    gv_job j[2];
};
int kc_gemv_a8_launch(const a8_args &a, int glu, cudaStream_t st);
/* FP8 activations on tensor cores enabled (kc_set_gemv_a8, DSR1_GEMV_A8; default on) */
int kc_gemv_a8_on(void);

#endif
