/* gemv_a8.cuh: the FP8 tensor-core GEMV tile (see gemv_a8.cu for why and how), shared by
 * gemv_a8.cu (dense weights, 3..16 tokens) and mlp.cu (experts, more than 16 tokens).
 * Internal to kernels/ .cu files. */
#ifndef DSR1_GEMV_A8_CUH
#define DSR1_GEMV_A8_CUH

#include "cuda_util.cuh"
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

/* Per-warp partial sums of a tile, reduced by a8_out: [warp][(j * TG + g) * 4 + i][lane]. */
template <int TG, int NW>
struct a8_red {
    float v[8][NW * TG * 4][32];
};

/* This lane's pointers into rows [row0, row0 + 16) of a weight W [N, K] with block scales
 * S (row stride sld): w0 / w1 at byte tig * 16 of rows gid / gid + 8 (rows past N re-read
 * row N - 1; their results are not stored), ws at the scales of the tile's 128-row block. */
__device__ __forceinline__ void a8_rows(const uint8_t *W, const float *S, size_t sld, size_t row0,
                                        size_t N, size_t K, const uint8_t *&w0,
                                        const uint8_t *&w1, const float *&ws)
{
    const int gid = (threadIdx.x & 31) >> 2, tig = threadIdx.x & 3;
    const size_t r0 = row0 + gid < N ? row0 + gid : N - 1, r1 = row0 + gid + 8 < N ? row0 + gid + 8 : N - 1;
    w0 = W + r0 * K + tig * 16;
    w1 = W + r1 * K + tig * 16;
    ws = S + (row0 >> 7) * sld;
}

/* This lane's token pointers for a tile of M <= 8 * TG tokens whose codes [*, K] and
 * scales [*, K / 128] sit at row row(m) for tile token m: xp[g] the codes of token
 * gid + 8 g, sa[g][h] the scales of token 8 g + 2 tig + h (NULL past M). */
template <int TG, typename R>
__device__ __forceinline__ void a8_tokens(const uint8_t *codes, const float *scales, size_t K,
                                          int M, R row, const uint8_t *(&xp)[TG],
                                          const float *(&sa)[TG][2])
{
    const int gid = (threadIdx.x & 31) >> 2, tig = threadIdx.x & 3;
#pragma unroll
    for (int g = 0; g < TG; g++) {
        xp[g] = gid + 8 * g < M ? codes + (size_t)row(gid + 8 * g) * K + tig * 16 : NULL;
        for (int h = 0; h < 2; h++) {
            const int t = 8 * g + 2 * tig + h;
            sa[g][h] = t < M ? scales + (size_t)row(t) * (K / 128) : NULL;
        }
    }
}

/* One tile: 16 weight rows of NW weights against up to 8 * TG tokens, K = 128 * nb. For
 * this lane (gid = lane / 4, tig = lane % 4): w0[j] / w1[j] point at byte tig * 16 of
 * rows gid / gid + 8 of weight j (rows past the end re-read a valid row), ws[j] at the
 * scales of the tile's 128-row block; xp[g] at byte tig * 16 of the codes of token
 * gid + 8 g (NULL: no such token, zeros); sa[g][h] at the scales of token 8 g + 2 tig + h
 * (NULL: none). Warps split K by scale block (warp w: blocks w, w + 8, ...); per block the
 * MMA sums are scaled by as * ws as the reference does. wait: kc_pdl_wait() once the
 * first weights are in flight. Ends with the partials in red and a barrier. */
template <int TG, int NW>
__device__ __forceinline__ void a8_tile(const uint8_t *const *w0, const uint8_t *const *w1,
                                        const float *const *ws, size_t nb,
                                        const uint8_t *const *xp, const float *const (*sa)[2],
                                        bool wait, a8_red<TG, NW> &red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
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
    if (wait)
        kc_pdl_wait();
    for (; kb < nb; kb += 8) {
        uint4 xr[TG][2];
#pragma unroll
        for (int g = 0; g < TG; g++)
#pragma unroll
            for (int s = 0; s < 2; s++)
                xr[g][s] = xp[g] ? *reinterpret_cast<const uint4 *>(xp[g] + kb * 128 + s * 64)
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
            const float sa0 = sa[g][0] ? sa[g][0][kb] : 0.0f, sa1 = sa[g][1] ? sa[g][1][kb] : 0.0f;
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
                red.v[warp][(j * TG + g) * 4 + i][lane] = acc[j][g][i];
    __syncthreads();
}

/* The tile's results: put(r, t, v) for row offset r < 16 (row0 + r < N) and token t < M,
 * v summed over the warps in a fixed order (NW = 2: silu(gate) * up). */
template <int TG, int NW, typename F>
__device__ __forceinline__ void a8_out(const a8_red<TG, NW> &red, size_t row0, size_t N, int M, F put)
{
    /* element (g, i, l): row row0 + gid(l) + 8 (i >> 1), token 8g + 2 tig(l) + (i & 1) */
    for (int e = threadIdx.x; e < TG * 4 * 32; e += blockDim.x) {
        const int gi = e >> 5, l = e & 31, g = gi >> 2, i = gi & 3;
        const int r = (l >> 2) + 8 * (i >> 1), tok = 8 * g + 2 * (l & 3) + (i & 1);
        if (row0 + r >= N || tok >= M)
            continue;
        float v = 0.0f;
        for (int w = 0; w < 8; w++)
            v += red.v[w][gi][l];
        if (NW == 2) {
            float u = 0.0f;
            for (int w = 0; w < 8; w++)
                u += red.v[w][TG * 4 + gi][l];
            v = kc_silu_mul(v, u);
        }
        put(r, tok, v);
    }
}

#endif
