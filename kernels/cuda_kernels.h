/* cuda_kernels: the CUDA versions of the CPU reference kernels (kernels/<op>.h), one
 * .cu per op, each tested against its CPU reference by tests/gpu/test_kernels.cu.
 *
 * Conventions:
 *  - every pointer is a device pointer unless named h_*; activations are fp32;
 *  - weights are k_weight (kernels/gemm.h) whose data/scale point to device memory;
 *  - every launcher enqueues on `stream` and returns 0 or a cudaError_t / -1 value
 *    (kc_check turns that into a message); nothing synchronizes unless documented;
 *  - shapes and strides mirror the CPU reference of the same name.
 * Only .cu files include this header (it needs cuda_runtime.h).
 */
#ifndef DSR1_CUDA_KERNELS_H
#define DSR1_CUDA_KERNELS_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "gemm.h"
#include "rope.h"
#include "router.h"
}

/* ---- rmsnorm.cu ---- */
int kc_rmsnorm(const float *x, size_t ldx, const float *w, float *y, size_t ldy, size_t rows,
               size_t dim, float eps, cudaStream_t st);

/* ---- rope.cu ---- (r is a host struct, passed by value) */
int kc_rope_apply(const k_rope *r, float *x, size_t rows, size_t heads, size_t ld_row,
                  size_t ld_head, const int32_t *pos, cudaStream_t st);

/* MLA after the projections, one launch: c[t, :R] (row stride ldc) = rmsnorm(kva[t, :R])
 * * norm_w; kpe[t, :P] = rope(kva[t, R:R+P], pos[t]) with P = r->dim; and in place
 * rope on q[t*ldq + h*ldh + dn + (0..P)] for heads h < H. Equals kc_rmsnorm (its scalar
 * kernel's summation order), a copy and two kc_rope_apply calls. drow0 (device, may be
 * NULL): rows drow0[0] + t of c and kpe instead of t, read on the device (CUDA graphs). */
int kc_mla_prep(const float *kva, size_t ldkva, size_t R, const float *norm_w, float eps,
                float *c, size_t ldc, float *kpe, size_t ldk, float *q, size_t ldq, size_t ldh,
                size_t dn, size_t H, const k_rope *r, const int32_t *pos, size_t T,
                const int32_t *drow0, cudaStream_t st);

/* ---- embed.cu ---- table rows [row0, row0 + table->rows); other ids give zeros */
int kc_embed(const k_weight *table, size_t row0, const int32_t *ids, size_t T, float *out,
             size_t ldo, cudaStream_t st);

/* ---- gemm_fp8.cu ---- DeepSeek FP8: 1x128 activation quantization and the
 * block-scaled FP8 x FP8 GEMM (cuBLASLt VEC128 x BLK128x128 when it verifies, else a
 * CUDA-core kernel); kc_gemm_fp8_simple is that kernel (also the in-library check). */
int kc_act_quant(const float *x, size_t ldx, size_t M, size_t K, uint8_t *a, float *as,
                 cudaStream_t st);
int kc_gemm_fp8_simple(const uint8_t *a, const float *as, size_t M, const uint8_t *q,
                       const float *ws, size_t N, size_t K, float *y, size_t ldy,
                       cudaStream_t st);

/* ---- gemm.cu ---- y[M, N] (= or +=) x[M, K] W^T for F32/BF16/FP8 weights.
 * Small M runs a weight-streaming GEMV kernel (fp32 activations, exact dequant);
 * large M runs cuBLASLt (FP8: activations quantized 1x128 first; BF16: activations
 * rounded to bf16). The context owns the cuBLASLt handle, its workspace and scratch. */
typedef struct kc_ctx kc_ctx;

enum { KC_LT_NONE = 0, KC_LT_WBLK_AVEC = 1, KC_LT_AVEC_WBLK = 2 };

int kc_ctx_create(kc_ctx **out, cudaStream_t st);
void kc_ctx_free(kc_ctx *c);
cudaStream_t kc_ctx_stream(const kc_ctx *c);
/* Which cuBLASLt FP8 block-scaled arrangement verified on this GPU (KC_LT_*), and a
 * message when none did. Runs the check once, synchronously, on first call. */
int kc_ctx_fp8_lt_mode(kc_ctx *c, const char **why);
/* M at or below which kc_gemm uses the GEMV kernel (env DSR1_GEMV_MAX_M, default 16). */
void kc_ctx_set_gemv_max_m(kc_ctx *c, int m);
/* GEMV variant for comparisons: 0 hardware FP8 conversion (default), 1 integer FP8
 * decode; and the warps that split K in the tile kernel (0 = chosen by K, else 1, 2, 4,
 * 8). */
void kc_set_gemv_variant(int v);
/* GEMMs of 3..16 tokens on FP8 weights (K a multiple of 128): 1 (default; env
 * DSR1_GEMV_A8) quantizes the activations 1x128 to FP8 as DeepSeek's reference does and
 * runs FP8 tensor cores (gemv_a8.cu); 0 keeps them W8A32 on the tile GEMV. */
void kc_set_gemv_a8(int on);
/* Peak HBM bandwidth of the current device from its memory clock and bus width, GB/s
 * (0 when unknown); cached for the one device a process drives. The one/two-token
 * GEMV picks its K split by it (gemm.cu, gv_pick_ks). */
double kc_hbm_peak_gbs(void);
void kc_set_gemv_ks(int ks);
/* force: 0 auto, 1 GEMV kernel, 2 cuBLASLt (for benchmarks and tests) */
int kc_gemm(kc_ctx *c, const float *x, size_t ldx, size_t M, const k_weight *w, float *y,
            size_t ldy, int accumulate, int force);
/* Two weights of the same input width on x (q_a and kv_a): one launch on the GEMV
 * path when both qualify; at prefill (both on cuBLASLt FP8) x is quantized once for
 * both; else two kc_gemm calls. */
int kc_gemm_pair(kc_ctx *c, const float *x, size_t ldx, size_t M, const k_weight *w1, float *y1,
                 size_t ldy1, const k_weight *w2, float *y2, size_t ldy2);
/* h[M, I] = silu(x g^T) * (x u^T) (row stride ldh >= I): one fused launch on the GEMV
 * path, else two kc_gemm calls and an elementwise pass (context scratch for x u^T). */
int kc_gemm_glu(kc_ctx *c, const float *x, size_t ldx, size_t M, const k_weight *g,
                const k_weight *u, float *h, size_t ldh);
/* The two halves of kc_gemm's cuBLASLt FP8 path, for benchmarks: quantize x [M, K]
 * into the context's scratch, then run only the block-scaled matmul on it (y = ...).
 * -1 when no cuBLASLt arrangement verified. */
int kc_gemm_fp8_prep(kc_ctx *c, const float *x, size_t ldx, size_t M, size_t K);
int kc_gemm_fp8_prepped(kc_ctx *c, size_t M, const k_weight *w, float *y, size_t ldy);
/* Column-major C_i [m, n] = op(A_i) op(B_i) for i < batch (cuBLAS conventions: ta/tb
 * transpose, ld and batch strides in elements), fp32 in and out on TF32 tensor cores
 * (~1e-3 relative). */
int kc_gemm_f32_batched(kc_ctx *c, int ta, int tb, size_t m, size_t n, size_t k, const float *A,
                        size_t lda, long long sa, const float *B, size_t ldb, long long sb,
                        float *C, size_t ldc, long long sc, size_t batch);
/* cuBLASLt BF16 GEMM y[M,N] = a[M,K] b[N,K]^T with bf16 inputs, fp32 output (peaks). */
int kc_gemm_bf16_lt(kc_ctx *c, const uint16_t *a, size_t M, const uint16_t *b, size_t N,
                    size_t K, float *y);

/* ---- mlp.cu ---- */
/* Routed experts grouped by expert over the tokens of a batch. The rank holds experts
 * [e0, e0 + n) of one layer; kc_moe_prepare records their device views once (same
 * shape and type for all), and optionally the shared expert (shared = its gate, up,
 * down; same type and model dim, any intermediate size; -1 if not). kc_moe: slot s =
 * t * top_k + k of the router output (idx, w on the device); y[t] (row stride ldy) +=
 * (accumulate; else =, zero where nothing is local) sum over slots whose expert is local
 * of w[s] * down(silu(gate x[t]) * up x[t]),
 * summed per token in k order (deterministic), then + the shared expert of x[t] when
 * prepared with one and T is small (kc_moe_has_shared(m, T); otherwise the caller runs
 * the shared expert). Weights are streamed once per tile of an
 * expert's slots: 1 or 2 slots up to 16 tokens, 8 above (activations staged in shared
 * memory). */
typedef struct kc_moe_w kc_moe_w;
int kc_moe_prepare(kc_moe_w **out, size_t n, const k_weight *gate, const k_weight *up,
                   const k_weight *down, const k_weight *shared);
int kc_moe_has_shared(const kc_moe_w *m, size_t T);
void kc_moe_free(kc_moe_w *m);
int kc_moe(kc_ctx *c, const kc_moe_w *m, const float *x, size_t ldx, size_t T,
           const int32_t *idx, const float *w, size_t top_k, size_t e0, float *y, size_t ldy,
           int accumulate);
/* Chunks of kc_moe that went through per-expert GEMMs (prefill: from 128 tokens and
 * DSR1_MOE_GEMM_MIN, default 32, tokens per active local expert; FP8 experts with FP8
 * activations on), for tests. */
unsigned long kc_moe_gemm_runs(void);
/* One token: the down projections and the combine fused into one launch (1, default) or
 * per-slot launches and a combine (0); -1: DSR1_MOE_FUSE decides (unset: fused). */
void kc_moe_set_fuse(int on);
/* Expert pointers computed from one stride when every routed expert's tensors are evenly
 * spaced (kc_moe_strided: the shard writer's layout) (1, default) or read from the
 * device table (0); -1: DSR1_MOE_STRIDE decides (unset: computed). */
void kc_moe_set_stride(int on);
int kc_moe_strided(const kc_moe_w *m);

/* ---- router.cu ---- logits [T, E] -> idx, w [T, top_k] (same picks as k_router; E up
 * to 1024, else -1) */
int kc_router(const k_router_cfg *c, const float *logits, const float *bias, size_t T,
              int32_t *idx, float *w, cudaStream_t st);

/* ---- attn.cu ---- (mirrors kernels/attn.h) */
int kc_attn_naive(const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                  size_t ldv, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dqk,
                  size_t dv, size_t pos0, float scale, cudaStream_t st);
int kc_mla_absorb_q(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                    size_t dv, const k_weight *wkv_b, float *q_lat, cudaStream_t st);
/* dpos0 (device, may be NULL): the tokens' first position is read on the device and
 * S = *dpos0 + T (CUDA graphs replay one capture at every position); S and pos0 from
 * the host are then a bound (S >= the actual one, pos0 = S - T) that the key splits
 * are planned for. Returns -1 for shapes whose kernel does not fit shared memory. */
int kc_mla_attn(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp, const float *c,
                size_t ldc, const float *kpe, size_t ldk, float *o_lat, size_t T, size_t S,
                size_t H, size_t R, size_t P, size_t pos0, float scale, const int32_t *dpos0,
                cudaStream_t st);
int kc_mla_absorb_v(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                    const k_weight *wkv_b, float *o, size_t ldo, cudaStream_t st);
/* ---- attn_prefill.cu ---- MLA in the decompressed (naive) form for prefill: the
 * keys' latents c [S, R] (row stride ldc) go through kv_b (dequantized exactly to fp32)
 * into k_nope and v per head; k = [k_nope, kpe_s]; that product, the scores and p v on
 * TF32 tensor cores (~1e-3); softmax fp32, causal (query t at pos0 + t). At (dn + P,
 * dv) = (192, 128) or (128, 64), with enough rows and heads to fill half the SMs, one
 * fused kernel (online softmax, no scores stored); otherwise score matrices per head
 * group. q: vector (t, h) at q + t*ldq + h*(dn + P);
 * out [T, H*dv] row stride ldo. Scratch grows with S (S * H * (dn + dv) floats). */
int kc_mla_prefill(kc_ctx *c, const float *q, size_t ldq, const float *cache, size_t ldc,
                   const float *kpe, size_t ldk, const k_weight *wkv_b, float *out, size_t ldo,
                   size_t T, size_t S, size_t H, size_t dn, size_t dv, size_t R, size_t P,
                   size_t pos0, float scale);
/* Bytes of fp32 scores one head group may take (default 1 GiB; 0: back to it; tests use
 * small values to run several groups). Process-wide. */
void kc_mla_prefill_set_score_bytes(size_t n);
/* 0: the materializing path even at the fused kernel's shapes; 2: the fused kernel
 * even where its grid is narrow (tests, bench-decode); 1: back to the default (fused
 * from half as many blocks as SMs). Process-wide. */
void kc_mla_prefill_set_flash(int mode);
/* kc_mla_attn's score and value products run on tensor cores (single-pass TF32, ~1e-3
 * from fp32) at R = 512 with P a multiple of 8 (R1's MLA); 0 forces the fp32 FMA kernel
 * (comparison in tests and bench-decode). Process-wide, not thread-safe. */
void kc_mla_set_mma(int on);
/* kc_mla_absorb_q / _v take tensor-core kernels (TF32 split in two, ~fp32 accuracy; FP8
 * or BF16 kv_b, dn = dv = 128, R a multiple of 128) from this many tokens (default 8,
 * env DSR1_ABS_MMA_MIN; 0: never; absorb_v only from 128 blocks unless set here; -1:
 * back to the default). Process-wide, not thread-safe. */
void kc_mla_set_absorb_mma(int min_tokens);
/* tensor-core absorption launches since the start (for tests) */
unsigned long kc_mla_absorb_mma_launches(void);
/* Programmatic dependent launch of the decode kernels (default on; DSR1_PDL=0 turns it
 * off): kc_set_pdl(0/1) for tests and benchmarks. */
void kc_set_pdl(int on);

/* ---- helpers (gemm.cu) ---- */
/* Changes whenever a kernel's cached scratch is reallocated: a CUDA graph captured
 * before holds freed addresses and must be captured again. */
unsigned kc_alloc_epoch(void);
/* multiprocessors of the current device (cached per device; 132 if it cannot be read) */
int kc_sm_count(void);
int kc_copy_f32_from_bf16(const uint16_t *in, float *out, size_t n, cudaStream_t st);
int kc_f32_to_bf16(const float *in, uint16_t *out, size_t n, cudaStream_t st);
/* "cuda: <what>: <error string>" for a status returned above (static buffer). */
const char *kc_strerror(int status);

#endif
