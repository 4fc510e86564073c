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
#include "cuda_util.cuh"
#include "gemm_fp8_internal.cuh"
#include "gemv.cuh"

__device__ __forceinline__ void a8_mma(float *d, uint32_t a0, uint32_t a1, uint32_t a2,
                                       uint32_t a3, uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* D[16 rows x 8 tokens] += the products of one 64-byte step: w0 / w1 the 16 bytes of
 * rows gid / gid + 8, x those of token gid (same K positions). */
__device__ __forceinline__ void a8_step(float *d, uint4 w0, uint4 w1, uint4 x)
{
    a8_mma(d, w0.x, w1.x, w0.y, w1.y, x.x, x.y);
    a8_mma(d, w0.z, w1.z, w0.w, w1.w, x.z, x.w);
}

template <int TG, int NW>
__global__ void __launch_bounds__(256) gemv_a8_kernel(a8_args a)
{
    __shared__ float red[8][NW * TG * 4][32];
    unsigned bid = blockIdx.x;
    int jb = 0;
    if (NW == 1 && bid >= a.nb0)
        jb = 1, bid -= a.nb0;
    const gv_job &J = a.j[jb];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gid = lane >> 2, tig = lane & 3;
    const size_t K = a.K, nb = K / 128, row0 = (size_t)bid * 16, N = J.N;
    /* rows past N re-read the last row; their results are not stored */
    const size_t r0 = row0 + gid < N ? row0 + gid : N - 1, r1 = row0 + gid + 8 < N ? row0 + gid + 8 : N - 1;
    const uint8_t *w0[NW], *w1[NW];
    const float *ws[NW];
#pragma unroll
    for (int j = 0; j < NW; j++) {
        const gv_job &Jw = a.j[NW == 1 ? jb : j];
        w0[j] = Jw.w + r0 * K + tig * 16;
        w1[j] = Jw.w + r1 * K + tig * 16;
        ws[j] = Jw.s + (row0 >> 7) * Jw.sld;
    }
    /* token rows gid + 8g of the codes; missing tokens contribute zeros */
    const uint8_t *xp[TG];
    bool xin[TG];
#pragma unroll
    for (int g = 0; g < TG; g++) {
        xin[g] = gid + 8 * g < a.M;
        xp[g] = a.a + (size_t)(xin[g] ? gid + 8 * g : 0) * K + tig * 16;
    }
    float acc[NW][TG][4] = {};

    uint4 wr[NW][2][2]; /* [weight][row gid, gid + 8][step] of the scale block in flight */
    auto load_w = [&](size_t kb) {
#pragma unroll
        for (int j = 0; j < NW; j++)
#pragma unroll
            for (int s = 0; s < 2; s++) {
                wr[j][0][s] = kc_ld_stream(w0[j] + kb * 128 + s * 64);
                wr[j][1][s] = kc_ld_stream(w1[j] + kb * 128 + s * 64);
            }
    };
    size_t kb = warp;
    if (kb < nb)
        load_w(kb); /* weights stream before the wait (PDL); the codes come after */
    kc_pdl_wait();
    for (; kb < nb; kb += 8) {
        uint4 xr[TG][2];
#pragma unroll
        for (int g = 0; g < TG; g++)
#pragma unroll
            for (int s = 0; s < 2; s++)
                xr[g][s] = xin[g] ? *reinterpret_cast<const uint4 *>(xp[g] + kb * 128 + s * 64)
                                  : make_uint4(0, 0, 0, 0);
        float t[NW][TG][4] = {}; /* this scale block's sums */
#pragma unroll
        for (int j = 0; j < NW; j++)
#pragma unroll
            for (int g = 0; g < TG; g++)
#pragma unroll
                for (int s = 0; s < 2; s++)
                    a8_step(t[j][g], wr[j][0][s], wr[j][1][s], xr[g][s]);
        float sw[NW];
#pragma unroll
        for (int j = 0; j < NW; j++)
            sw[j] = __ldg(ws[j] + kb);
        if (kb + 8 < nb)
            load_w(kb + 8); /* the next block's weights load while this one is scaled */
#pragma unroll
        for (int g = 0; g < TG; g++) {
            const int t0 = 8 * g + 2 * tig; /* tokens of d0/d2 and d1/d3 */
            const float sa0 = t0 < a.M ? a.as[(size_t)t0 * nb + kb] : 0.0f;
            const float sa1 = t0 + 1 < a.M ? a.as[(size_t)(t0 + 1) * nb + kb] : 0.0f;
#pragma unroll
            for (int j = 0; j < NW; j++) {
                acc[j][g][0] += sa0 * sw[j] * t[j][g][0];
                acc[j][g][1] += sa1 * sw[j] * t[j][g][1];
                acc[j][g][2] += sa0 * sw[j] * t[j][g][2];
                acc[j][g][3] += sa1 * sw[j] * t[j][g][3];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < NW; j++)
#pragma unroll
        for (int g = 0; g < TG; g++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                red[warp][(j * TG + g) * 4 + i][lane] = acc[j][g][i];
    __syncthreads();
    /* element (g, i, l): row row0 + gid(l) + 8 (i >> 1), token 8g + 2 tig(l) + (i & 1) */
    for (int e = threadIdx.x; e < TG * 4 * 32; e += blockDim.x) {
        const int gi = e >> 5, l = e & 31, g = gi >> 2, i = gi & 3;
        const size_t row = row0 + (l >> 2) + 8 * (i >> 1);
        const int tok = 8 * g + 2 * (l & 3) + (i & 1);
        if (row >= N || tok >= a.M)
            continue;
        float v = 0.0f;
        for (int w = 0; w < 8; w++)
            v += red[w][gi][l];
        if (NW == 2) {
            float u = 0.0f;
            for (int w = 0; w < 8; w++)
                u += red[w][TG * 4 + gi][l];
            v = kc_silu_mul(v, u);
        }
        float *o = J.y + (size_t)tok * J.ldy + row;
        *o = a.accumulate ? *o + v : v;
    }
}

int kc_gemv_a8_launch(const a8_args &a, int glu, cudaStream_t st)
{
    if (a.M < 1 || a.M > 16 || a.K % 128 || a.j[0].N == 0)
        return -1;
    a8_args b = a;
    b.nb0 = kc_blocks(a.j[0].N, 16);
    unsigned nb = b.nb0 + (!glu && a.j[1].w ? kc_blocks(a.j[1].N, 16) : 0);
    if (glu)
        return a.M <= 8 ? kc_launch(gemv_a8_kernel<1, 2>, dim3(nb), dim3(256), 0, st, b)
                        : kc_launch(gemv_a8_kernel<2, 2>, dim3(nb), dim3(256), 0, st, b);
    return a.M <= 8 ? kc_launch(gemv_a8_kernel<1, 1>, dim3(nb), dim3(256), 0, st, b)
                    : kc_launch(gemv_a8_kernel<2, 1>, dim3(nb), dim3(256), 0, st, b);
}
