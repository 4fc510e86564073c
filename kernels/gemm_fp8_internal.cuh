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
 * uses the old buffer). Slots 0-3: gemm.cu; 4-7: mlp.cu; 8: kc_gemm_glu. */
#define KC_SCRATCH_N 9
#define KC_SCRATCH_GLU 8
struct kc_ctx;
void *kc_ctx_scratch(struct kc_ctx *c, int i, size_t n);

#endif
