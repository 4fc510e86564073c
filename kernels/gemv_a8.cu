/* gemv_a8: the decode GEMV for 3..16 tokens on FP8 weights, on FP8 tensor cores.
 *
 * Why: the W8A32 tile GEMV (gemv.cuh) does 2 fp32 FLOPs per weight byte per token, so
 * at 8 tokens it needs ~67 TFLOP/s of CUDA-core FMAs to stream at HBM speed -- the
 * whole fp32 peak of an H200 (measured: ~0.9 TB/s, 19% of the roofline at batch 8);
 * cuBLASLt's FP8 GEMM pads 8 tokens to a 64+ row tile and was slower still. Here the
 * activations are quantized as DeepSeek's reference does for every FP8 linear (1x128
 * blocks, kc_act_quant) and the weights feed mma.sync m16n8k32 e4m3 as they are: the
 * 16 weight rows are the MMA's M, the tokens its N (8 per group, TG groups).
 *
 * Work split: a block owns 16 rows of a weight (of both weights for the GLU), its 8
 * warps split K by 128-wide scale blocks (warp w: blocks w, w + 8, ...). Within a scale
 * block, lane (gid, tig) streams 16 bytes of rows gid and gid + 8 per 64-byte step; K
 * is permuted inside each step -- bytes 0-7 of a lane feed one MMA, 8-15 the next -- and
 * the activation fragments use the same permutation, so the dot products are exact
 * sums over the block. Per scale block the MMA sums (fp32) are scaled by as * ws and
 * accumulated, the reference's order (k_gemm_fp8); warps then reduce in fixed order
 * through shared memory (deterministic). */
#include <stdlib.h>

#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"
#include "gemv_a8.cuh"

template <int TG, int NW, int MINB = 0>
__global__ void __launch_bounds__(256, MINB) gemv_a8_kernel(a8_args a)
{
    __shared__ a8_red<TG, NW> red;
    unsigned bid = blockIdx.x;
    int jb = 0;
    if (NW == 1 && bid >= a.nb0)
        jb = 1, bid -= a.nb0;
    const gv_job &J = a.j[jb];
    const size_t K = a.K, row0 = (size_t)bid * 16, N = J.N;
    const uint8_t *w0[NW], *w1[NW];
    const float *ws[NW];
#pragma unroll
    for (int j = 0; j < NW; j++) {
        const gv_job &Jw = a.j[NW == 1 ? jb : j];
        a8_rows(Jw.w, Jw.s, Jw.sld, row0, N, K, w0[j], w1[j], ws[j]);
    }
    const uint8_t *xp[TG];
    const float *sa[TG][2];
    a8_tokens<TG>(a.a, a.as, K, a.M, [](int m) { return m; }, xp, sa);
    a8_tile<TG, NW>(w0, w1, ws, K / 128, xp, sa, true, red);
    a8_out<TG, NW>(red, row0, N, a.M, [&](int r, int tok, float v) {
        float *o = J.y + (size_t)tok * J.ldy + row0 + r;
        *o = a.accumulate ? *o + v : v;
    });
}

int kc_gemv_a8_launch(const a8_args &a, int glu, cudaStream_t st)
{
    if (a.M < 1 || a.M > 16 || a.K % 128 || a.j[0].N == 0)
        return -1;
    a8_args b = a;
    b.nb0 = kc_blocks(a.j[0].N, 16);
    unsigned nb = b.nb0 + (!glu && a.j[1].w ? kc_blocks(a.j[1].N, 16) : 0);
    /* The GLU at up to 8 tokens takes 133 registers, one block (8 warps) per SM; capped
     * for two it does not spill. DSR1_GEMV_A8_OCC=0: uncapped (for measuring). */
    static int cap = -1;
    if (cap < 0) {
        const char *e = getenv("DSR1_GEMV_A8_OCC");
        cap = !(e && e[0] == '0' && !e[1]);
    }
    if (glu)
        return a.M > 8 ? kc_launch(gemv_a8_kernel<2, 2>, dim3(nb), dim3(256), 0, st, b)
               : cap   ? kc_launch(gemv_a8_kernel<1, 2, 2>, dim3(nb), dim3(256), 0, st, b)
                       : kc_launch(gemv_a8_kernel<1, 2>, dim3(nb), dim3(256), 0, st, b);
    return a.M <= 8 ? kc_launch(gemv_a8_kernel<1, 1>, dim3(nb), dim3(256), 0, st, b)
                    : kc_launch(gemv_a8_kernel<2, 1>, dim3(nb), dim3(256), 0, st, b);
}
