/* kc_attn_naive / kc_mla_*: CUDA Multi-head Latent Attention cores, mirroring
 * kernels/attn.c. Softmax is computed online over key chunks (max-subtracted, fp32),
 * which equals the reference's two-pass softmax up to rounding. Everything is fp32
 * (no tensor cores); every sum runs in a fixed order (no atomics), so results repeat
 * bit for bit. The decode path (kc_mla_*) has its own kernels below; attn_kernel is the
 * naive path and the fallback for shapes those kernels do not take. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

#define ATT_THREADS 256
#define ATT_CHUNK 1024 /* keys scored per pass, kept in shared memory */
#define ATT_MAXD 1024  /* query / value width held in shared memory */

__host__ __device__ __forceinline__ size_t att_visible(size_t t, size_t S, size_t pos0)
{
    size_t n = pos0 + t + 1;
    return n < S ? n : S;
}

/* One block per (t, h, split): keys [s0, s1) of the visible range, split so that short
 * batches still fill the GPU (flash-decoding). With one split the block writes the
 * output; otherwise it writes its running max m, sum l and unnormalized output o to
 * part[(th * nsplit + split) * (dv + 2)] and attn_combine merges them. Within a block
 * the softmax runs online over chunks of ATT_CHUNK keys. */
template <int MODE> /* 0 naive, 1 absorbed */
__global__ void attn_kernel(const float *q, size_t ldq, const float *qpe, size_t ldqp,
                            size_t ldhp, const float *k, size_t ldk, const float *kpe,
                            size_t ldkp, const float *v, size_t ldv, float *out, size_t ldo,
                            size_t S, size_t H, size_t dq, size_t dp, size_t dv, size_t pos0,
                            float scale, int nsplit, float *part)
{
    __shared__ float qs[ATT_MAXD], qps[256], p[ATT_CHUNK], red[32];
    size_t th = blockIdx.x, t = th / H, h = th % H;
    const float *qv = MODE == 0 ? q + t * ldq + h * dq : q + (t * H + h) * dq;
    for (size_t i = threadIdx.x; i < dq; i += blockDim.x)
        qs[i] = qv[i];
    if (MODE == 1)
        for (size_t i = threadIdx.x; i < dp; i += blockDim.x)
            qps[i] = qpe[t * ldqp + h * ldhp + i];
    __syncthreads();
    size_t n = att_visible(t, S, pos0);
    size_t per = (n + nsplit - 1) / nsplit;
    size_t sb = blockIdx.y * per, se = sb + per < n ? sb + per : n;
    const int NO = ATT_MAXD / ATT_THREADS;
    float o[NO];
    for (int j = 0; j < NO; j++)
        o[j] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (size_t s0 = sb; s0 < se; s0 += ATT_CHUNK) {
        size_t cn = se - s0 < ATT_CHUNK ? se - s0 : ATT_CHUNK;
        for (size_t i = warp; i < cn; i += nw) {
            size_t s = s0 + i;
            const float *kv = MODE == 0 ? k + s * ldk + h * dq : k + s * ldk;
            float acc = 0.0f;
            for (size_t d = lane; d < dq; d += 32)
                acc += qs[d] * kv[d];
            if (MODE == 1)
                for (size_t d = lane; d < dp; d += 32)
                    acc += qps[d] * kpe[s * ldkp + d];
            acc = kc_warp_sum(acc);
            if (lane == 0)
                p[i] = acc * scale;
        }
        __syncthreads();
        float cm = -INFINITY;
        for (size_t i = threadIdx.x; i < cn; i += blockDim.x)
            cm = fmaxf(cm, p[i]);
        cm = kc_block_max(cm, red);
        float nm = fmaxf(m, cm);
        float corr = expf(m - nm); /* 0 on the first chunk (m = -inf) */
        __syncthreads();
        float ls = 0.0f;
        for (size_t i = threadIdx.x; i < cn; i += blockDim.x) {
            float e = expf(p[i] - nm);
            p[i] = e;
            ls += e;
        }
        ls = kc_block_sum(ls, red);
        l = l * corr + ls;
        m = nm;
        __syncthreads();
        for (int j = 0; j < NO; j++) {
            size_t d = threadIdx.x + (size_t)j * blockDim.x;
            if (d >= dv)
                break;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            size_t i = 0;
            const float *vb = MODE == 0 ? v + s0 * ldv + h * dv + d : v + s0 * ldv + d;
            for (; i + 4 <= cn; i += 4) { /* four independent loads in flight */
                a0 += p[i] * vb[i * ldv];
                a1 += p[i + 1] * vb[(i + 1) * ldv];
                a2 += p[i + 2] * vb[(i + 2) * ldv];
                a3 += p[i + 3] * vb[(i + 3) * ldv];
            }
            for (; i < cn; i++)
                a0 += p[i] * vb[i * ldv];
            o[j] = o[j] * corr + ((a0 + a1) + (a2 + a3));
        }
        __syncthreads();
    }
    if (nsplit == 1) {
        float *ov = MODE == 0 ? out + t * ldo + h * dv : out + (t * H + h) * dv;
        for (int j = 0; j < NO; j++) {
            size_t d = threadIdx.x + (size_t)j * blockDim.x;
            if (d < dv)
                ov[d] = n ? o[j] / l : 0.0f;
        }
        return;
    }
    float *pp = part + (th * nsplit + blockIdx.y) * (dv + 2);
    if (threadIdx.x == 0)
        pp[0] = m, pp[1] = l;
    for (int j = 0; j < NO; j++) {
        size_t d = threadIdx.x + (size_t)j * blockDim.x;
        if (d < dv)
            pp[2 + d] = o[j];
    }
}

/* out(t, h) = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s over the splits */
template <int MODE>
__global__ void attn_combine_kernel(const float *part, int nsplit, size_t H, size_t dv,
                                    float *out, size_t ldo)
{
    size_t th = blockIdx.x, t = th / H, h = th % H;
    const float *pp = part + th * nsplit * (dv + 2);
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++)
        M = fmaxf(M, pp[s * (dv + 2)]);
    float L = 0.0f;
    for (int s = 0; s < nsplit; s++) {
        float ms = pp[s * (dv + 2)];
        L += ms == -INFINITY ? 0.0f : expf(ms - M) * pp[s * (dv + 2) + 1];
    }
    float *ov = MODE == 0 ? out + t * ldo + h * dv : out + (t * H + h) * dv;
    for (size_t d = threadIdx.x; d < dv; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < nsplit; s++) {
            float ms = pp[s * (dv + 2)];
            if (ms != -INFINITY)
                a += expf(ms - M) * pp[s * (dv + 2) + 2 + d];
        }
        ov[d] = L > 0 ? a / L : 0.0f;
    }
}

static float *g_part;
static size_t g_part_cap;

/* Splits so that about 8 blocks per SM are busy, at least 64 keys each, at most 64. */
static int att_splits(size_t TH, size_t S, size_t dv, float **part, cudaStream_t st)
{
    const int sms = kc_sm_count();
    size_t want = (8 * (size_t)sms + TH - 1) / TH;
    size_t maxs = (S + 63) / 64;
    size_t ns = want < maxs ? want : maxs;
    ns = ns < 1 ? 1 : ns > 64 ? 64 : ns;
    if (ns > 1) {
        size_t need = TH * ns * (dv + 2) * sizeof(float);
        if (need > g_part_cap) {
            if (kc_capturing(st))
                return 1;
            kc_alloc_count++;
            cudaStreamSynchronize(st);
            cudaFree(g_part);
            g_part = NULL;
            g_part_cap = 0;
            if (cudaMalloc((void **)&g_part, need) != cudaSuccess)
                return 1; /* no room: one split */
            g_part_cap = need;
        }
    }
    *part = g_part;
    return (int)ns;
}

int kc_attn_naive(const float *q, size_t ldq, const float *k, size_t ldk, const float *v,
                  size_t ldv, float *out, size_t ldo, size_t T, size_t S, size_t H, size_t dqk,
                  size_t dv, size_t pos0, float scale, cudaStream_t st)
{
    if (dqk > ATT_MAXD || dv > ATT_MAXD)
        return -1;
    if (T * H == 0)
        return 0;
    float *part = NULL;
    int ns = att_splits(T * H, S, dv, &part, st);
    dim3 grid((unsigned)(T * H), (unsigned)ns);
    attn_kernel<0><<<grid, ATT_THREADS, 0, st>>>(q, ldq, NULL, 0, 0, k, ldk, NULL, 0, v, ldv, out,
                                                 ldo, S, H, dqk, 0, dv, pos0, scale, ns, part);
    KC_LAUNCH_CHECK();
    if (ns > 1) {
        attn_combine_kernel<0><<<(unsigned)(T * H), 128, 0, st>>>(part, ns, H, dv, out, ldo);
        KC_LAUNCH_CHECK();
    }
    return 0;
}

/* ---- absorbed MLA attention ----------------------------------------------------- */

#define MLA_G 16        /* heads of one token per block */
#define MLA_BK 32       /* keys per tile */
#define MLA_THREADS 256 /* 8 warps; the code below assumes exactly this */
#define MLA_MAXSPLIT 64
#define MLA_MMA_THREADS 512 /* 16 warps for the tensor-core kernel */
#define MLA_RS 40       /* red row stride there: float2 fragment stores conflict-free */
#define MLA_PS 24       /* pT row stride there: fragment loads conflict-free */

/* Pieces shared by the two absorbed-attention kernels below (NT threads a block).
 *
 * Shared memory (floats; CS = row stride, (Rp+Pp)/4 rounded to odd quads so rows at the
 * same column hit different banks):
 *   sQ  [16][CS]          queries: q_lat (Rp) then q_pe (Pp), zero padded
 *   sC  [nbuf][32][CS]    key tiles: c_s (Rp) then kpe_s (Pp); rows past the range zero
 *   red [8][16][RS]       partial scores of 8 feature slices (RS: row stride)
 *   pT  [32][PS]          softmax weights of the tile, key-major (PS: row stride)
 *   sCorr, sL, sM [16]   rescale factors; final sums and maxima */
struct mla_tile {
    const float *c, *kpe;
    size_t ldc, ldk, n, tb; /* visible keys of the token; first tile of the split */
    int R, P, Rq, D4, CS;
};

/* A block's shared memory (the layout above) and its work: token t, heads h0.., key
 * split `split` of ntiles tiles (the same for the whole block). */
struct mla_block {
    float *sQ, *sC, *red, *pT, *sCorr, *sL, *sM;
    size_t t, h0;
    int split, ntiles;
    mla_tile mt;
};

/* CUDA graphs replay one capture at many positions: with dpos0 the step's first
 * position is read on the device (written before the launch, so before the PDL wait),
 * S and pos0 from the host were only the bound the grid was planned for, and the split
 * length follows the actual range of the last token (T = gridDim.x / ngroups) over the
 * same nsplit splits; splits past the range see no key. */
__device__ __forceinline__ void mla_dyn_range(const int32_t *dpos0, int ngroups, int nsplit,
                                              size_t &S, size_t &pos0, int &tps)
{
    if (!dpos0)
        return;
    const size_t T = gridDim.x / (unsigned)ngroups, p = (size_t)*dpos0;
    pos0 = p;
    S = p + T;
    const size_t ntile = (att_visible(T - 1, S, pos0) + MLA_BK - 1) / MLA_BK;
    tps = ntile ? (int)((ntile + nsplit - 1) / nsplit) : 1;
}

__device__ __forceinline__ mla_block mla_block_of(float *smem, int nbuf, int RS, int PS,
                                                  const float *c, size_t ldc, const float *kpe,
                                                  size_t ldk, size_t S, size_t pos0, int R,
                                                  int P, int CS, int ngroups, int tps)
{
    const int G = MLA_G, BK = MLA_BK, Rp = (R + 3) & ~3, Pp = (P + 3) & ~3;
    mla_block b;
    b.sQ = smem;
    b.sC = b.sQ + G * CS;
    b.red = b.sC + (size_t)nbuf * BK * CS;
    b.pT = b.red + 8 * G * RS;
    b.sCorr = b.pT + BK * PS;
    b.sL = b.sCorr + G;
    b.sM = b.sL + G;
    b.t = blockIdx.x / (unsigned)ngroups;
    b.h0 = (size_t)(blockIdx.x % (unsigned)ngroups) * G;
    b.split = blockIdx.y;
    b.mt = {c, kpe, ldc, ldk, att_visible(b.t, S, pos0), (size_t)b.split * tps, R, P, Rp / 4,
            (Rp + Pp) / 4, CS};
    const size_t ntile_t = (b.mt.n + BK - 1) / BK;
    const size_t te = b.mt.tb + tps < ntile_t ? b.mt.tb + tps : ntile_t;
    b.ntiles = te > b.mt.tb ? (int)(te - b.mt.tb) : 0;
    return b;
}

/* queries of heads h0..h0+15 of token t. With qvec (16-byte aligned rows, R and P
 * multiples of 4: no pad columns) by cp.async (the caller commits the group), so they
 * stream instead of a chain of dependent loads before the first tile. */
template <int NT>
__device__ __forceinline__ void mla_load_q(float *sQ, const float *q_lat, const float *q_pe,
                                           size_t ldqp, size_t ldhp, size_t t, size_t h0,
                                           size_t H, const mla_tile &m, int qvec)
{
    const int G = MLA_G, tid = threadIdx.x;
    const int Rp = 4 * m.Rq;
    if (qvec) {
        for (int i = tid; i < G * m.D4; i += NT) {
            int g = i / m.D4, qd = i - g * m.D4;
            size_t h = h0 + g;
            float *d = sQ + g * m.CS + 4 * qd;
            if (h < H)
                kc_cp16(d, qd < m.Rq ? q_lat + (t * H + h) * m.R + 4 * qd
                                      : q_pe + t * ldqp + h * ldhp + 4 * (qd - m.Rq));
            else
                *(float4 *)d = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        return;
    }
    for (int i = tid; i < G * m.D4 * 4; i += NT) {
        int g = i / (m.D4 * 4), col = i - g * (m.D4 * 4);
        size_t h = h0 + g;
        float v = 0.0f;
        if (h < H) {
            if (col < Rp) {
                if (col < m.R)
                    v = q_lat[(t * H + h) * m.R + col];
            } else if (col - Rp < m.P) {
                v = q_pe[t * ldqp + h * ldhp + (col - Rp)];
            }
        }
        sQ[g * m.CS + col] = v;
    }
}

/* Tile it of the split into dst as one cp.async group: warp w copies rows w, w + NT/32,
 * ...; rows past the visible range are zeroed (scored -inf, weighted 0). VEC: 16-byte
 * copies (R, P, ldc, ldk multiples of 4, aligned bases); else 4-byte copies, the pad
 * columns zeroed once by the caller. */
template <int NT, bool VEC>
__device__ __forceinline__ void mla_issue_tile(float *dst, const mla_tile &m, int it)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    size_t s0 = (m.tb + it) * MLA_BK;
    int cn = m.n - s0 < (size_t)MLA_BK ? (int)(m.n - s0) : MLA_BK;
    for (int k = warp; k < MLA_BK; k += NT / 32) {
        float *d = dst + k * m.CS;
        const float *cr = m.c + (s0 + k) * m.ldc, *kr = m.kpe + (s0 + k) * m.ldk;
        if (VEC) {
            for (int qd = lane; qd < m.D4; qd += 32) {
                if (k < cn)
                    kc_cp16(d + 4 * qd, qd < m.Rq ? cr + 4 * qd : kr + 4 * (qd - m.Rq));
                else
                    *(float4 *)(d + 4 * qd) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        } else {
            const int Rp = 4 * m.Rq;
            for (int col = lane; col < m.R + m.P; col += 32) {
                float *dc = d + (col < m.R ? col : Rp + (col - m.R));
                if (k < cn)
                    kc_cp4(dc, col < m.R ? cr + col : kr + (col - m.R));
                else
                    *dc = 0.0f;
            }
        }
    }
    kc_cp_commit();
}

/* Top of tile it's iteration: issue tile it + 1 into the other buffer (double
 * buffering), wait for tile it, barrier; returns tile it's buffer. */
template <int NT, bool VEC>
__device__ __forceinline__ const float *mla_tile_ready(const mla_block &b, int nbuf, int it)
{
    const size_t tile = (size_t)MLA_BK * b.mt.CS;
    if (nbuf == 2 && it + 1 < b.ntiles) {
        mla_issue_tile<NT, VEC>(b.sC + (size_t)((it + 1) % 2) * tile, b.mt, it + 1);
        kc_cp_wait<1>();
    } else {
        kc_cp_wait<0>();
    }
    __syncthreads();
    return b.sC + (size_t)(it % nbuf) * tile;
}

/* Keys of tile it that are visible (the rest are scored -inf). */
__device__ __forceinline__ int mla_tile_keys(const mla_tile &m, int it)
{
    size_t ks = (m.tb + it) * MLA_BK;
    return m.n - ks < (size_t)MLA_BK ? (int)(m.n - ks) : MLA_BK;
}

/* Block prologue: queries into sQ and tile 0 into sC. Tile 0 is issued before the PDL
 * wait when all its rows precede pos0 (written by earlier steps, so complete); the
 * queries come from the kernels just before and load after the wait, in their own
 * cp.async group, which the loop's first wait covers either way. */
template <int NT, bool VEC>
__device__ __forceinline__ void mla_prologue(float *sQ, float *sC, const mla_tile &m,
                                             int ntiles, size_t pos0, const float *q_lat,
                                             const float *q_pe, size_t ldqp, size_t ldhp,
                                             size_t t, size_t h0, size_t H, int qvec)
{
    const bool early = ntiles > 0 && (m.tb + 1) * MLA_BK <= pos0;
    if (early)
        mla_issue_tile<NT, VEC>(sC, m, 0);
    kc_pdl_wait();
    mla_load_q<NT>(sQ, q_lat, q_pe, ldqp, ldhp, t, h0, H, m, qvec);
    if (qvec)
        kc_cp_commit();
    if (ntiles > 0 && !early)
        mla_issue_tile<NT, VEC>(sC, m, 0);
    if (ntiles == 0)
        kc_cp_wait<0>();
}

/* Online softmax of head g over the tile: x = the sum of the 8 feature-slice partials of
 * key `lane` (fixed order), scaled; updates the warp's running max m and sum l, writes p
 * = e^(x - m) to pT and the rescale factor to sCorr[g]. TF32: p is rounded to TF32
 * before both uses, so the tensor-core kernel's weights and their sum l agree. */
template <bool TF32>
__device__ __forceinline__ void mla_softmax_head(const float *red, int RS, float *pT, int PS,
                                                 float *sCorr, int g, int cn, float scale,
                                                 float &m, float &l)
{
    const int lane = threadIdx.x & 31;
    float x = 0.0f;
#pragma unroll
    for (int w = 0; w < 8; w++)
        x += red[(w * MLA_G + g) * RS + lane];
    x = lane < cn ? x * scale : -INFINITY;
    float mn = fmaxf(m, kc_warp_max(x));
    float corr = m == -INFINITY ? 0.0f : expf(m - mn);
    float p = x == -INFINITY ? 0.0f : expf(x - mn);
    if (TF32)
        p = __uint_as_float(kc_tf32(p));
    l = l * corr + kc_warp_sum(p);
    m = mn;
    pT[lane * PS + g] = p;
    if (lane == 0)
        sCorr[g] = corr;
}

/* The running (m, l) of a split that is merged later (mla_combine_kernel). */
__device__ __forceinline__ void mla_store_ml(float *part_ml, const float *sM, const float *sL,
                                             size_t t, size_t h0, size_t H, int nsplit,
                                             int split)
{
    int g = threadIdx.x;
    if (g < MLA_G && h0 + g < H) {
        size_t pi = (t * H + h0 + g) * nsplit + split;
        part_ml[2 * pi] = sM[g];
        part_ml[2 * pi + 1] = sL[g];
    }
}

/* Absorbed MLA attention, flash-decoding style, fp32 on CUDA cores (any R, P).
 *
 * Work split: one block per (token t, group of MLA_G = 16 heads of t, split of the keys).
 * A split is `tps` consecutive tiles of MLA_BK = 32 keys of t's visible range. Every
 * latent row c_s (+ its rope key kpe_s) is brought into shared memory once per block and
 * scored against all 16 heads, so the cache is read H/16 times instead of H times. Tiles
 * are double-buffered with cp.async (single-buffered when two do not fit in shared
 * memory), so the next tile loads while this one is computed. Shared memory as above
 * with RS = 32, PS = 16. Per tile:
 *  1. scores: warp w takes the feature quads w, w+8, ...; lane = (kl = lane&15, gl =
 *     lane>>4) computes keys kl, kl+16 against heads gl, gl+2, ..., gl+14 (2x8 register
 *     tile; the c loads hit 16 rows, the q loads are broadcasts). The 8 warp partials are
 *     summed in fixed order in step 2.
 *  2. online softmax (fp32): warp w owns heads 2w, 2w+1 (lane = key).
 *  3. output: thread (hh = tid>>7, rq = tid&127) owns heads 8hh..8hh+7 and latent quads
 *     rq + 128j (j < RJ): o = o * corr + sum_k p_k c_k, from shared memory only.
 * With one split the block writes o / l; otherwise (o, m, l) go to part_o / part_ml and
 * mla_combine_kernel merges the splits. */
template <int RJ, bool VEC>
__global__ void __launch_bounds__(MLA_THREADS, 1)
    mla_attn_kernel(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp,
                    const float *c, size_t ldc, const float *kpe, size_t ldk, float *o_lat,
                    size_t S, size_t H, int R, int P, size_t pos0, float scale, int ngroups,
                    int tps, int nsplit, int nbuf, int CS, float *part_o, float *part_ml,
                    int qvec, const int32_t *dpos0)
{
    extern __shared__ float4 mla_smem4[];
    const int G = MLA_G, BK = MLA_BK, NT = MLA_THREADS;
    mla_dyn_range(dpos0, ngroups, nsplit, S, pos0, tps);
    const mla_block b = mla_block_of((float *)mla_smem4, nbuf, BK, G, c, ldc, kpe, ldk, S, pos0, R,
                                     P, CS, ngroups, tps);
    float *sQ = b.sQ, *sC = b.sC, *red = b.red, *pT = b.pT, *sCorr = b.sCorr, *sL = b.sL, *sM = b.sM;
    const mla_tile &mt = b.mt;
    const size_t t = b.t, h0 = b.h0;
    const int split = b.split, ntiles = b.ntiles, Rp = 4 * mt.Rq, Rq = mt.Rq, D4 = mt.D4;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    mla_prologue<NT, VEC>(sQ, sC, mt, ntiles, pos0, q_lat, q_pe, ldqp, ldhp, t, h0, H, qvec);
    /* scalar path: pad columns of the tiles are never written by the copies; zero them */
    if (!VEC)
        for (int i = tid; i < nbuf * BK * D4 * 4; i += NT) {
            int row = i / (D4 * 4), col = i - row * (D4 * 4);
            if ((col >= R && col < Rp) || col >= Rp + P)
                sC[row * CS + col] = 0.0f;
        }

    const int kl = lane & 15, gl = lane >> 4; /* score phase */
    const int hh = tid >> 7, rq = tid & 127;  /* output phase */
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    float4 acc[RJ][8]; /* heads 8hh + g, latent quad rq + 128j */
#pragma unroll
    for (int j = 0; j < RJ; j++)
#pragma unroll
        for (int g = 0; g < 8; g++)
            acc[j][g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    for (int it = 0; it < ntiles; it++) {
        const float *C = mla_tile_ready<NT, VEC>(b, nbuf, it);

        /* 1. partial scores */
        {
            float s0a[8], s1a[8];
#pragma unroll
            for (int j = 0; j < 8; j++)
                s0a[j] = s1a[j] = 0.0f;
            const float *c0p = C + kl * CS, *c1p = C + (kl + 16) * CS, *qp = sQ + gl * CS;
#pragma unroll 2
            for (int qd = warp; qd < D4; qd += 8) {
                float4 a = *(const float4 *)(c0p + 4 * qd), b = *(const float4 *)(c1p + 4 * qd);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float4 x = *(const float4 *)(qp + 2 * j * CS + 4 * qd);
                    s0a[j] = fmaf(a.x, x.x, s0a[j]);
                    s0a[j] = fmaf(a.y, x.y, s0a[j]);
                    s0a[j] = fmaf(a.z, x.z, s0a[j]);
                    s0a[j] = fmaf(a.w, x.w, s0a[j]);
                    s1a[j] = fmaf(b.x, x.x, s1a[j]);
                    s1a[j] = fmaf(b.y, x.y, s1a[j]);
                    s1a[j] = fmaf(b.z, x.z, s1a[j]);
                    s1a[j] = fmaf(b.w, x.w, s1a[j]);
                }
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float *rp = red + (warp * G + gl + 2 * j) * BK;
                rp[kl] = s0a[j];
                rp[kl + 16] = s1a[j];
            }
        }
        __syncthreads();

        /* 2. online softmax: warp owns heads 2*warp, 2*warp+1; lane = key */
        mla_softmax_head<false>(red, BK, pT, G, sCorr, 2 * warp, mla_tile_keys(mt, it), scale, m0, l0);
        mla_softmax_head<false>(red, BK, pT, G, sCorr, 2 * warp + 1, mla_tile_keys(mt, it), scale, m1, l1);
        __syncthreads();

        /* 3. o = o * corr + sum_k p_k c_k: heads 8hh.., quads rq + 128j */
        {
            float4 ca = *(const float4 *)(sCorr + 8 * hh), cb = *(const float4 *)(sCorr + 8 * hh + 4);
            float cr[8] = {ca.x, ca.y, ca.z, ca.w, cb.x, cb.y, cb.z, cb.w};
#pragma unroll
            for (int j = 0; j < RJ; j++)
#pragma unroll
                for (int g = 0; g < 8; g++) {
                    acc[j][g].x *= cr[g];
                    acc[j][g].y *= cr[g];
                    acc[j][g].z *= cr[g];
                    acc[j][g].w *= cr[g];
                }
#pragma unroll 4
            for (int k = 0; k < BK; k++) {
                float4 pa = *(const float4 *)(pT + k * G + 8 * hh);
                float4 pb = *(const float4 *)(pT + k * G + 8 * hh + 4);
                float p[8] = {pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w};
#pragma unroll
                for (int j = 0; j < RJ; j++) {
                    int qd = rq + 128 * j;
                    if (qd < Rq) {
                        float4 cv = *(const float4 *)(C + k * CS + 4 * qd);
#pragma unroll
                        for (int g = 0; g < 8; g++) {
                            acc[j][g].x = fmaf(p[g], cv.x, acc[j][g].x);
                            acc[j][g].y = fmaf(p[g], cv.y, acc[j][g].y);
                            acc[j][g].z = fmaf(p[g], cv.z, acc[j][g].z);
                            acc[j][g].w = fmaf(p[g], cv.w, acc[j][g].w);
                        }
                    }
                }
            }
        }
        __syncthreads(); /* buffer, red and pT are reused next */
        if (nbuf == 1 && it + 1 < ntiles)
            mla_issue_tile<NT, VEC>(sC, mt, it + 1);
    }

    if (lane == 0) {
        sL[2 * warp] = l0;
        sL[2 * warp + 1] = l1;
        sM[2 * warp] = m0;
        sM[2 * warp + 1] = m1;
    }
    __syncthreads();
    if (nsplit > 1)
        mla_store_ml(part_ml, sM, sL, t, h0, H, nsplit, split);
    const bool ovec = (R & 3) == 0 && ((uintptr_t)o_lat & 15) == 0;
#pragma unroll
    for (int g = 0; g < 8; g++) {
        int gg = 8 * hh + g;
        size_t h = h0 + gg;
        if (h >= H)
            continue;
        size_t th = t * H + h;
        if (nsplit == 1) {
            float l = sL[gg];
#pragma unroll
            for (int j = 0; j < RJ; j++) {
                int qd = rq + 128 * j;
                if (qd >= Rq)
                    continue;
                float4 a = acc[j][g];
                float4 v = l > 0.0f ? make_float4(a.x / l, a.y / l, a.z / l, a.w / l)
                                    : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                float *op = o_lat + th * R + 4 * qd;
                if (ovec) {
                    *(float4 *)op = v;
                } else {
                    float vv[4] = {v.x, v.y, v.z, v.w};
                    for (int i = 0; i < 4; i++)
                        if (4 * qd + i < R)
                            op[i] = vv[i];
                }
            }
        } else {
            size_t pi = th * nsplit + split;
#pragma unroll
            for (int j = 0; j < RJ; j++) {
                int qd = rq + 128 * j;
                if (qd < Rq)
                    *(float4 *)(part_o + pi * Rp + 4 * qd) = acc[j][g];
            }
        }
    }
}

/* The same attention on tensor cores, for R = 512 and P a multiple of 8 up to
 * 64 * MLA_QSTEPS - 512 (R1: P = 64), with 16 warps (MLA_MMA_THREADS): m16n8k8 TF32 MMAs
 * (mla_mma), heads as the M = 16 rows. Shared memory as above with RS = MLA_RS, PS =
 * MLA_PS (padded so the fragment stores and loads do not collide in banks). Per tile:
 *  1. scores: warp w takes key octets 2kh, 2kh+1 (kh = w >> 3) and the 8-feature steps
 *     fs, fs + 8, ... (fs = w & 7): S[16 heads x 8 keys] per octet. The warp's query
 *     fragments are the same for every tile: rounded to TF32 once, kept in registers.
 *     Partials per feature slice go to red.
 *  2. online softmax: warp w owns head w (lane = key); weights rounded to TF32 there.
 *  3. output: warp w owns the latent column octets w + 16j (j < 4): O[16 x 8] +=
 *     P[16 x 32 keys] C[32 keys x 8], after rescaling by corr. */
#define MLA_QSTEPS 12 /* 8-feature steps of a warp: F = R + P <= 768 */
template <int NT>
__global__ void __launch_bounds__(NT, 1)
    mla_attn_mma_kernel(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp,
                        const float *c, size_t ldc, const float *kpe, size_t ldk, float *o_lat,
                        size_t S, size_t H, int R, int P, size_t pos0, float scale,
                        int ngroups, int tps, int nsplit, int nbuf, int CS, float *part_o,
                        float *part_ml, int qvec, const int32_t *dpos0)
{
    static_assert(NT == 512, "the work split below assumes 16 warps");
    extern __shared__ float4 mla_smem4[];
    const int G = MLA_G, BK = MLA_BK, RS = MLA_RS, PS = MLA_PS, OJ = 4, F = R + P;
    mla_dyn_range(dpos0, ngroups, nsplit, S, pos0, tps);
    const mla_block b = mla_block_of((float *)mla_smem4, nbuf, RS, PS, c, ldc, kpe, ldk, S, pos0, R,
                                     P, CS, ngroups, tps);
    float *sQ = b.sQ, *sC = b.sC, *red = b.red, *pT = b.pT, *sCorr = b.sCorr, *sL = b.sL, *sM = b.sM;
    const mla_tile &mt = b.mt;
    const size_t t = b.t, h0 = b.h0;
    const int split = b.split, ntiles = b.ntiles;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3; /* MMA fragment coordinates */
    const int kh = warp >> 3, fs = warp & 7;

    mla_prologue<NT, true>(sQ, sC, mt, ntiles, pos0, q_lat, q_pe, ldqp, ldhp, t, h0, H, qvec);
    float m = -INFINITY, l = 0.0f;
    float acc[OJ][4]; /* D fragments: heads gid, gid + 8 x columns 8 (warp + 16j) + 2tig, +1 */
#pragma unroll
    for (int j = 0; j < OJ; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc[j][i] = 0.0f;
    uint32_t qf[MLA_QSTEPS][4]; /* A fragments of steps k0 = 8 fs + 64 i, loaded at tile 0 */

    for (int it = 0; it < ntiles; it++) {
        const float *C = mla_tile_ready<NT, true>(b, nbuf, it);
        if (it == 0) { /* the queries landed with tile 0 */
            const float *qa = sQ + gid * CS, *qb = sQ + (gid + 8) * CS;
#pragma unroll
            for (int i = 0; i < MLA_QSTEPS; i++) {
                const int k0 = 8 * fs + 64 * i;
                if (k0 < F) {
                    qf[i][0] = kc_tf32(qa[k0 + tig]);
                    qf[i][1] = kc_tf32(qb[k0 + tig]);
                    qf[i][2] = kc_tf32(qa[k0 + tig + 4]);
                    qf[i][3] = kc_tf32(qb[k0 + tig + 4]);
                }
            }
        }

        /* 1. partial scores over this warp's feature slice, key octets 2kh, 2kh + 1 */
        {
            float d[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++)
                    d[nt][i] = 0.0f;
            const float *cb = C + (16 * kh + gid) * CS;
#pragma unroll
            for (int i = 0; i < MLA_QSTEPS; i++) {
                const int k0 = 8 * fs + 64 * i;
                if (k0 < F) {
#pragma unroll
                    for (int nt = 0; nt < 2; nt++) {
                        uint32_t bf[2] = {kc_tf32(cb[8 * nt * CS + k0 + tig]),
                                          kc_tf32(cb[8 * nt * CS + k0 + tig + 4])};
                        kc_mma_tf32(d[nt], qf[i], bf);
                    }
                }
            }
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                float *rp = red + (fs * G + gid) * RS + 16 * kh + 8 * nt + 2 * tig;
                *(float2 *)rp = make_float2(d[nt][0], d[nt][1]);
                *(float2 *)(rp + 8 * RS) = make_float2(d[nt][2], d[nt][3]);
            }
        }
        __syncthreads();

        /* 2. online softmax of head `warp` */
        mla_softmax_head<true>(red, RS, pT, PS, sCorr, warp, mla_tile_keys(mt, it), scale, m, l);
        __syncthreads();

        /* 3. rescale, then O += P C for column octets warp + 16j */
        {
            const float c0 = sCorr[gid], c1 = sCorr[gid + 8];
#pragma unroll
            for (int j = 0; j < OJ; j++)
                acc[j][0] *= c0, acc[j][1] *= c0, acc[j][2] *= c1, acc[j][3] *= c1;
#pragma unroll
            for (int ks = 0; ks < BK / 8; ks++) {
                const float *pk = pT + (8 * ks + tig) * PS; /* already TF32 */
                const uint32_t pf[4] = {__float_as_uint(pk[gid]), __float_as_uint(pk[gid + 8]),
                                        __float_as_uint(pk[4 * PS + gid]),
                                        __float_as_uint(pk[4 * PS + gid + 8])};
                const float *c0p = C + (8 * ks + tig) * CS + 8 * warp + gid;
#pragma unroll
                for (int j = 0; j < OJ; j++) {
                    uint32_t bf[2] = {kc_tf32(c0p[128 * j]), kc_tf32(c0p[4 * CS + 128 * j])};
                    kc_mma_tf32(acc[j], pf, bf);
                }
            }
        }
        __syncthreads();
        if (nbuf == 1 && it + 1 < ntiles)
            mla_issue_tile<NT, true>(sC, mt, it + 1);
    }

    if (lane == 0) {
        sL[warp] = l;
        sM[warp] = m;
    }
    __syncthreads();
    if (nsplit > 1)
        mla_store_ml(part_ml, sM, sL, t, h0, H, nsplit, split);
#pragma unroll
    for (int j = 0; j < OJ; j++) {
        const int f = 8 * (warp + 16 * j) + 2 * tig;
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int gg = gid + 8 * hf;
            const size_t h = h0 + gg, th = t * H + h;
            if (h >= H)
                continue;
            float2 v = make_float2(acc[j][2 * hf], acc[j][2 * hf + 1]);
            if (nsplit == 1) {
                float s = sL[gg];
                v = s > 0.0f ? make_float2(v.x / s, v.y / s) : make_float2(0.0f, 0.0f);
                *(float2 *)(o_lat + th * R + f) = v;
            } else {
                *(float2 *)(part_o + (th * nsplit + split) * R + f) = v;
            }
        }
    }
}

/* Block (t*H + h, r-chunk of 128): o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
 * Warp 0 computes the split weights (two splits a lane, warp reductions) into shared
 * memory; then each thread sums one element over the splits with 8 loads in flight
 * (the combine is latency-bound: at TP8 there are only 16 (t, h) pairs per token).
 * Splits that saw no key (m = -inf) weigh 0. */
__global__ void __launch_bounds__(128) mla_combine_kernel(const float *part_o,
                                                          const float *part_ml, int nsplit,
                                                          int R, float *o_lat)
{
    __shared__ float wsh[MLA_MAXSPLIT];
    __shared__ float lsh;
    size_t th = blockIdx.x;
    int Rp = (R + 3) & ~3;
    const float *ml = part_ml + th * nsplit * 2;
    kc_pdl_wait();
    if (threadIdx.x < 32) {
        int s0 = threadIdx.x, s1 = threadIdx.x + 32;
        float m0 = s0 < nsplit ? ml[2 * s0] : -INFINITY, m1 = s1 < nsplit ? ml[2 * s1] : -INFINITY;
        float l0 = s0 < nsplit ? ml[2 * s0 + 1] : 0.0f, l1 = s1 < nsplit ? ml[2 * s1 + 1] : 0.0f;
        float M = kc_warp_max(fmaxf(m0, m1));
        float w0 = m0 == -INFINITY ? 0.0f : expf(m0 - M), w1 = m1 == -INFINITY ? 0.0f : expf(m1 - M);
        if (s0 < nsplit)
            wsh[s0] = w0;
        if (s1 < nsplit)
            wsh[s1] = w1;
        float L = kc_warp_sum(w0 * l0 + w1 * l1);
        if (threadIdx.x == 0)
            lsh = L;
    }
    __syncthreads();
    int r = blockIdx.y * blockDim.x + threadIdx.x;
    if (r >= R)
        return;
    float L = lsh;
    const float *po = part_o + th * nsplit * Rp + r;
    float a[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int s = 0;
    for (; s + 8 <= nsplit; s += 8)
#pragma unroll
        for (int j = 0; j < 8; j++)
            a[j] += wsh[s + j] * po[(size_t)(s + j) * Rp];
    for (; s < nsplit; s++)
        a[0] += wsh[s] * po[(size_t)s * Rp];
    float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    o_lat[th * R + r] = L > 0.0f ? sum / L : 0.0f;
}

static float *g_mla_part;
static size_t g_mla_part_cap;

/* Device buffer of at least `need` bytes for the split partials, or NULL. */
static float *mla_part_buf(size_t need, cudaStream_t st)
{
    if (need > g_mla_part_cap) {
        if (kc_capturing(st))
            return NULL;
        kc_alloc_count++;
        cudaStreamSynchronize(st);
        cudaFree(g_mla_part);
        g_mla_part = NULL;
        g_mla_part_cap = 0;
        if (cudaMalloc((void **)&g_mla_part, need) != cudaSuccess) {
            cudaGetLastError(); /* clear the (non-sticky) allocation error */
            return NULL;
        }
        g_mla_part_cap = need;
    }
    return g_mla_part;
}

/* A device attribute, cached per (device, attribute): launches call this every step.
 * Like the other statics here, not thread-safe: one thread drives a GPU per process. */
static int mla_dev_attr(cudaDeviceAttr a, int dflt)
{
    static int cache_dev[4] = {-1, -1, -1, -1}, cache_attr[4], cache_val[4];
    int d = 0, v = 0;
    if (cudaGetDevice(&d) != cudaSuccess) {
        cudaGetLastError();
        return dflt;
    }
    for (int i = 0; i < 4; i++)
        if (cache_dev[i] == d && cache_attr[i] == (int)a)
            return cache_val[i];
    if (cudaDeviceGetAttribute(&v, a, d) != cudaSuccess || v <= 0) {
        cudaGetLastError();
        return dflt;
    }
    for (int i = 0; i < 4; i++)
        if (cache_dev[i] < 0) {
            cache_dev[i] = d, cache_attr[i] = (int)a, cache_val[i] = v;
            break;
        }
    return v;
}

int kc_sm_count(void)
{
    return mla_dev_attr(cudaDevAttrMultiProcessorCount, 132);
}

typedef void (*mla_kfn)(const float *, const float *, size_t, size_t, const float *, size_t,
                        const float *, size_t, float *, size_t, size_t, int, int, size_t, float,
                        int, int, int, int, int, float *, float *, int, const int32_t *);

/* kc_mla_set_mma(0): the FMA kernel even where tensor cores apply (tests, bench) */
static int mla_use_mma = 1;
void kc_mla_set_mma(int on)
{
    mla_use_mma = on;
}

/* Blocks of `fn` (nt threads) resident per SM at `smem` bytes (after raising its
 * shared-memory limit). */
static int mla_prepare(mla_kfn fn, int idx, int nt, size_t smem)
{
    static int raised[5], occ[5], dev = -1;
    static size_t occ_smem[5];
    int d = 0;
    cudaGetDevice(&d);
    if (d != dev) { /* attributes and occupancy are per device */
        for (int i = 0; i < 5; i++)
            raised[i] = 0, occ_smem[i] = 0;
        dev = d;
    }
    if (!raised[idx]) {
        int maxsm = mla_dev_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024);
        if (cudaFuncSetAttribute((const void *)fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 maxsm) != cudaSuccess) {
            cudaGetLastError();
            return 0;
        }
        raised[idx] = 1;
    }
    if (occ_smem[idx] != smem) {
        int b = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, (const void *)fn, nt, smem) != cudaSuccess) {
            cudaGetLastError();
            b = 1;
        }
        occ[idx] = b;
        occ_smem[idx] = smem;
    }
    return occ[idx];
}

/* The general kernel for shapes whose tiles do not fit in shared memory (one block per
 * (token, head, split); re-reads the cache per head). */
static int mla_attn_fallback(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp,
                             const float *c, size_t ldc, const float *kpe, size_t ldk,
                             float *o_lat, size_t T, size_t S, size_t H, size_t R, size_t P,
                             size_t pos0, float scale, cudaStream_t st)
{
    float *part = NULL;
    int ns = att_splits(T * H, S, R, &part, st);
    dim3 grid((unsigned)(T * H), (unsigned)ns);
    attn_kernel<1><<<grid, ATT_THREADS, 0, st>>>(q_lat, 0, q_pe, ldqp, ldhp, c, ldc, kpe, ldk, c,
                                                 ldc, o_lat, 0, S, H, R, P, R, pos0, scale, ns,
                                                 part);
    KC_LAUNCH_CHECK();
    if (ns > 1) {
        attn_combine_kernel<1><<<(unsigned)(T * H), 128, 0, st>>>(part, ns, H, R, o_lat, 0);
        KC_LAUNCH_CHECK();
    }
    return 0;
}

int kc_mla_attn(const float *q_lat, const float *q_pe, size_t ldqp, size_t ldhp, const float *c,
                size_t ldc, const float *kpe, size_t ldk, float *o_lat, size_t T, size_t S,
                size_t H, size_t R, size_t P, size_t pos0, float scale, const int32_t *dpos0,
                cudaStream_t st)
{
    if (R > ATT_MAXD || P > 256)
        return -1;
    if (T * H == 0)
        return 0;
    const int G = MLA_G, BK = MLA_BK;
    int Rp = (int)((R + 3) & ~(size_t)3), Pp = (int)((P + 3) & ~(size_t)3);
    int D4 = (Rp + Pp) / 4, CS = 4 * (D4 | 1); /* odd number of quads per row */
    bool vec = R % 4 == 0 && P % 4 == 0 && ldc % 4 == 0 && ldk % 4 == 0 &&
               ((uintptr_t)c & 15) == 0 && ((uintptr_t)kpe & 15) == 0;
    int qvec = R % 4 == 0 && P % 4 == 0 && ldqp % 4 == 0 && ldhp % 4 == 0 &&
               ((uintptr_t)q_lat & 15) == 0 && ((uintptr_t)q_pe & 15) == 0;
    /* tensor cores at R1's latent width (R = 512; P a multiple of 8) */
    bool mma = vec && R == 512 && P % 8 == 0 && R + P <= 64 * MLA_QSTEPS && mla_use_mma;
    int RS = mma ? MLA_RS : BK, PS = mma ? MLA_PS : G, nt = mma ? MLA_MMA_THREADS : MLA_THREADS;
    size_t base = (size_t)(G * CS + 8 * G * RS + BK * PS + 3 * G) * sizeof(float);
    size_t tile = (size_t)BK * CS * sizeof(float);
    size_t maxsm = (size_t)mla_dev_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024);
    int nbuf = base + 2 * tile <= maxsm ? 2 : base + tile <= maxsm ? 1 : 0;
    if (!nbuf)
        return dpos0 ? -1 /* the fallback reads the range on the host */
                     : mla_attn_fallback(q_lat, q_pe, ldqp, ldhp, c, ldc, kpe, ldk, o_lat, T, S,
                                         H, R, P, pos0, scale, st);
    size_t smem = base + nbuf * tile;
    int rj = Rp / 4 <= 128 ? 1 : 2;
    /* [rj - 1][vec] for the FMA kernels; slot 4 (mla_prepare's cache) the MMA one */
    static const mla_kfn fma_fn[2][2] = {{mla_attn_kernel<1, false>, mla_attn_kernel<1, true>},
                                         {mla_attn_kernel<2, false>, mla_attn_kernel<2, true>}};
    mla_kfn fn = mma ? mla_attn_mma_kernel<MLA_MMA_THREADS> : fma_fn[rj - 1][vec];
    int bps = mla_prepare(fn, mma ? 4 : (rj - 1) * 2 + (vec ? 1 : 0), nt, smem);
    if (bps <= 0)
        return dpos0 ? -1
                     : mla_attn_fallback(q_lat, q_pe, ldqp, ldhp, c, ldc, kpe, ldk, o_lat, T, S,
                                         H, R, P, pos0, scale, st);

    /* Splits: the widest range (last token) has ntile tiles; a split takes tps of them.
     * Cost ~ waves * (tps + 1) (the +1: query load, pipeline fill, combine); ties go to
     * fewer splits. */
    size_t groups = (H + G - 1) / G;
    size_t ntile = (att_visible(T - 1, S, pos0) + BK - 1) / BK;
    size_t slots = (size_t)kc_sm_count() * bps;
    size_t tps = ntile ? ntile : 1, ns = 1;
    double best = -1;
    static int forced = -1; /* DSR1_MLA_SPLITS: a fixed split count, for measuring */
    if (forced < 0) {
        const char *e = getenv("DSR1_MLA_SPLITS");
        forced = e && atoi(e) > 0 ? atoi(e) : 0;
    }
    for (size_t cand = 1; cand <= MLA_MAXSPLIT && cand <= (ntile ? ntile : 1); cand++) {
        size_t tp = ntile ? (ntile + cand - 1) / cand : 1;
        size_t nsp = ntile ? (ntile + tp - 1) / tp : 1;
        size_t waves = (T * groups * nsp + slots - 1) / slots;
        double cost = forced ? (cand == (size_t)forced ? 0.0 : 1.0) : (double)waves * (double)(tp + 1);
        if (best < 0 || cost < best) {
            best = cost;
            tps = tp;
            ns = nsp;
        }
    }
    float *part_o = NULL, *part_ml = NULL;
    if (ns > 1) {
        size_t no = T * H * ns * (size_t)Rp, nml = T * H * ns * 2;
        float *p = mla_part_buf((no + nml) * sizeof(float), st);
        if (!p) {
            ns = 1;
            tps = ntile ? ntile : 1;
        } else {
            part_o = p;
            part_ml = p + no;
        }
    }
    dim3 grid((unsigned)(T * groups), (unsigned)ns);
    int rc = kc_launch(fn, grid, dim3(nt), smem, st, q_lat, q_pe, ldqp, ldhp, c, ldc, kpe, ldk,
                       o_lat, S, H, (int)R, (int)P, pos0, scale, (int)groups, (int)tps, (int)ns,
                       nbuf, CS, part_o, part_ml, qvec, dpos0);
    if (rc || ns == 1)
        return rc;
    dim3 cg((unsigned)(T * H), kc_blocks(R, 128));
    return kc_launch(mla_combine_kernel, cg, dim3(128), 0, st, (const float *)part_o,
                     (const float *)part_ml, (int)ns, (int)R, o_lat);
}

/* ---- weight absorption ----------------------------------------------------------- */

#define ABS_TOK 8

/* Simple paths (any alignment / width): q_lat[t,h,r] = sum_d q[t,h,d] W(h*(dn+dv)+d, r),
 * thread per r, ABS_TOK tokens a block. */
__global__ void absorb_q_kernel(const float *q, size_t ldq, size_t ldh, size_t T, size_t H,
                                size_t dn, size_t dv, int type, const void *wd, const float *ws,
                                size_t R, size_t sld, float *q_lat)
{
    size_t h = blockIdx.y, r = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    size_t t0 = blockIdx.z * (size_t)ABS_TOK;
    if (r >= R)
        return;
    float acc[ABS_TOK];
    for (int j = 0; j < ABS_TOK; j++)
        acc[j] = 0.0f;
    size_t row0 = h * (dn + dv);
    for (size_t d = 0; d < dn; d++) {
        float w = kc_wget(type, wd, ws, R, sld, row0 + d, r);
        for (int j = 0; j < ABS_TOK; j++)
            if (t0 + j < T)
                acc[j] += q[(t0 + j) * ldq + h * ldh + d] * w;
    }
    for (int j = 0; j < ABS_TOK; j++)
        if (t0 + j < T)
            q_lat[((t0 + j) * H + h) * R + r] = acc[j];
}

/* o[t, h*dv+e] = sum_r o_lat[t,h,r] W(h*(dn+dv)+dn+e, r): a warp per (h, e). */
__global__ void absorb_v_kernel(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                                int type, const void *wd, const float *ws, size_t R, size_t sld,
                                float *o, size_t ldo)
{
    size_t he = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    size_t t0 = blockIdx.y * (size_t)ABS_TOK;
    if (he >= H * dv)
        return;
    size_t h = he / dv, e = he % dv, row = h * (dn + dv) + dn + e;
    float acc[ABS_TOK];
    for (int j = 0; j < ABS_TOK; j++)
        acc[j] = 0.0f;
    for (size_t r = lane; r < R; r += 32) {
        float w = kc_wget(type, wd, ws, R, sld, row, r);
        for (int j = 0; j < ABS_TOK; j++)
            if (t0 + j < T)
                acc[j] += o_lat[((t0 + j) * H + h) * R + r] * w;
    }
    for (int j = 0; j < ABS_TOK; j++) {
        float s = kc_warp_sum(acc[j]);
        if (lane == 0 && t0 + j < T)
            o[(t0 + j) * ldo + h * dv + e] = s;
    }
}

/* 16 consecutive weight columns from NV 16-byte words (TYPE 0 f32: NV=4, 1 bf16: NV=2,
 * 2 fp8: NV=1), dequantized exactly as kc_wget: fp8 value (via half, exact) * block scale. */
template <int TYPE>
__device__ __forceinline__ void abs_decode16(const uint4 *raw, float sc, float *w)
{
    if (TYPE == 2) {
        const uint32_t u[4] = {raw[0].x, raw[0].y, raw[0].z, raw[0].w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 lo = kc_fp8x2((uint16_t)(u[i] & 0xffffu));
            float2 hi = kc_fp8x2((uint16_t)(u[i] >> 16));
            w[4 * i + 0] = lo.x * sc;
            w[4 * i + 1] = lo.y * sc;
            w[4 * i + 2] = hi.x * sc;
            w[4 * i + 3] = hi.y * sc;
        }
    } else if (TYPE == 1) {
#pragma unroll
        for (int v = 0; v < 2; v++) {
            const uint32_t u[4] = {raw[v].x, raw[v].y, raw[v].z, raw[v].w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                w[8 * v + 2 * i] = __uint_as_float(u[i] << 16);
                w[8 * v + 2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
            }
        }
    } else {
#pragma unroll
        for (int v = 0; v < 4; v++) {
            w[4 * v + 0] = __uint_as_float(raw[v].x);
            w[4 * v + 1] = __uint_as_float(raw[v].y);
            w[4 * v + 2] = __uint_as_float(raw[v].z);
            w[4 * v + 3] = __uint_as_float(raw[v].w);
        }
    }
}

#define ABS_THREADS 256

/* q_lat[t,h,r] = sum_d q[t,h,d] W_UK_h[d, r] (R % 16 == 0, weight 16-byte aligned).
 *
 * Work split: block = (column chunk of nsegb segments of 16 columns, head h, tile of TT
 * tokens); thread = (segment sl = tid % nsegb, row phase ds = tid / nsegb): it reads rows
 * d = ds, ds + DS, ... of its 16 columns as 16-byte loads (NB rows in flight), dequantizes
 * each weight once and applies it to the TT tokens (q from shared memory, broadcast).
 * The DS row phases are then summed per output in fixed ds order through shared memory
 * (deterministic, no atomics). Small T uses narrow chunks (many blocks, one round of
 * loads: memory-bound); larger T uses wide chunks (fewer partial sums per FMA).
 * Shared memory: Qs [TT][dn], red [DS][nsegb*17] (17: conflict-free). */
template <int TYPE, int TT>
__global__ void __launch_bounds__(ABS_THREADS)
    absorb_q_fast(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, int dn, int dv,
                  const void *wd, const float *ws, int R, size_t sld, int nsegb, int DS,
                  float *q_lat)
{
    constexpr int NV = TYPE == 2 ? 1 : TYPE == 1 ? 2 : 4;
    constexpr int NB = 4;
    extern __shared__ float4 abs_smem4[];
    float *Qs = (float *)abs_smem4;
    float *red = Qs + TT * dn;
    const int nthr = nsegb * DS, tid = threadIdx.x;
    const size_t h = blockIdx.y, t0 = (size_t)blockIdx.z * TT;
    const int sl = tid % nsegb, ds = tid / nsegb;
    const int seg = blockIdx.x * nsegb + sl;
    const bool segok = seg < R / 16;
    const int col0 = seg * 16;
    const size_t row0 = h * (size_t)(dn + dv);
    const size_t rs4 = (size_t)R * NV / 16; /* 16-byte words per weight row */
    const uint4 *W = (const uint4 *)wd;
    uint4 raw[NB][NV];
    float sc[NB];
    auto load = [&](int d0) { /* NB rows of weights in flight */
#pragma unroll
        for (int b = 0; b < NB; b++) {
            int d = d0 + b * DS;
            bool ok = segok && d < dn;
            size_t row = row0 + d;
#pragma unroll
            for (int v = 0; v < NV; v++)
                raw[b][v] = ok ? __ldg(W + row * rs4 + (size_t)seg * NV + v) : make_uint4(0, 0, 0, 0);
            sc[b] = TYPE == 2 && ok ? __ldg(ws + (row >> 7) * sld + (col0 >> 7)) : 0.0f;
        }
    };
    load(ds); /* before the PDL wait: the weights do not depend on earlier kernels */
    kc_pdl_wait();
    for (int i = tid; i < TT * dn; i += nthr) {
        int tt = i / dn, d = i - tt * dn;
        Qs[i] = t0 + tt < T ? q[(t0 + tt) * ldq + h * ldh + d] : 0.0f;
    }
    __syncthreads();

    float acc[TT][16];
#pragma unroll
    for (int tt = 0; tt < TT; tt++)
#pragma unroll
        for (int j = 0; j < 16; j++)
            acc[tt][j] = 0.0f;
    for (int d0 = ds; d0 < dn; d0 += NB * DS) {
        if (d0 != ds)
            load(d0);
#pragma unroll
        for (int b = 0; b < NB; b++) {
            int d = d0 + b * DS;
            if (segok && d < dn) {
                float w[16];
                abs_decode16<TYPE>(raw[b], sc[b], w);
#pragma unroll
                for (int tt = 0; tt < TT; tt++) {
                    float qv = Qs[tt * dn + d];
#pragma unroll
                    for (int j = 0; j < 16; j++)
                        acc[tt][j] = fmaf(qv, w[j], acc[tt][j]);
                }
            }
        }
    }

    const int RS = nsegb * 17;
#pragma unroll
    for (int tt = 0; tt < TT; tt++) {
#pragma unroll
        for (int j = 0; j < 16; j++)
            red[ds * RS + sl * 17 + j] = acc[tt][j];
        __syncthreads();
        if (t0 + tt < T)
            for (int cc = tid; cc < nsegb * 16; cc += nthr) {
                int col = blockIdx.x * nsegb * 16 + cc;
                if (col >= R)
                    continue;
                int s = cc >> 4, j = cc & 15;
                float a = 0.0f;
                for (int x = 0; x < DS; x++)
                    a += red[x * RS + s * 17 + j];
                q_lat[((t0 + tt) * H + h) * R + col] = a;
            }
        __syncthreads();
    }
}

/* o[t, h*dv + e] = sum_r o_lat[t,h,r] W_UV_h[e, r] (R % 16 == 0, weight 16-byte aligned).
 *
 * Work split: block = (64 rows e of head h, tile of TT tokens); 4 threads per row, thread
 * sg reads segments sg, sg+4, ... (16 columns, 16-byte loads, NB in flight) of its row,
 * dequantizes them once and dots them with the TT tokens' o_lat (shared memory); the 4
 * partials are summed with two fixed xor shuffles (deterministic). Os rows are padded by
 * 4 floats every 32 so the 4 segments a warp reads at once sit in different banks.
 * Shared memory: Os [TT][R + R/32*4]. */
template <int TYPE, int TT>
__global__ void __launch_bounds__(ABS_THREADS)
    absorb_v_fast(const float *o_lat, size_t T, size_t H, int dn, int dv, const void *wd,
                  const float *ws, int R, size_t sld, float *o, size_t ldo)
{
    constexpr int NV = TYPE == 2 ? 1 : TYPE == 1 ? 2 : 4;
    constexpr int NB = 8 / NV;
    extern __shared__ float4 abs_smem4[];
    float *Os = (float *)abs_smem4;
    const int RSP = R + ((R + 31) >> 5) * 4;
    const int tid = threadIdx.x, el = tid >> 2, sg = tid & 3;
    const size_t h = blockIdx.y, t0 = (size_t)blockIdx.z * TT;
    const int e = blockIdx.x * 64 + el;
    const bool eok = e < dv;
    const int nseg = R / 16;
    const size_t row = h * (size_t)(dn + dv) + dn + (eok ? e : 0);
    const uint4 *W = (const uint4 *)wd + row * ((size_t)R * NV / 16);
    const float *wsr = TYPE == 2 ? ws + (row >> 7) * sld : ws;
    uint4 raw[NB][NV];
    float sc[NB];
    auto load = [&](int s0) { /* NB segments of the row in flight */
#pragma unroll
        for (int b = 0; b < NB; b++) {
            int seg = s0 + 4 * b;
            bool ok = eok && seg < nseg;
#pragma unroll
            for (int v = 0; v < NV; v++)
                raw[b][v] = ok ? __ldg(W + (size_t)seg * NV + v) : make_uint4(0, 0, 0, 0);
            sc[b] = TYPE == 2 && ok ? __ldg(wsr + (seg >> 3)) : 0.0f;
        }
    };
    load(sg); /* before the PDL wait: the weights do not depend on earlier kernels */
    kc_pdl_wait();
    for (int i = tid; i < TT * R; i += ABS_THREADS) {
        int tt = i / R, r = i - tt * R;
        Os[tt * RSP + r + (r >> 5) * 4] = t0 + tt < T ? o_lat[((t0 + tt) * H + h) * R + r] : 0.0f;
    }
    __syncthreads();

    float acc[TT];
#pragma unroll
    for (int tt = 0; tt < TT; tt++)
        acc[tt] = 0.0f;
    for (int s0 = sg; s0 < nseg; s0 += 4 * NB) {
        if (s0 != sg)
            load(s0);
#pragma unroll
        for (int b = 0; b < NB; b++) {
            int seg = s0 + 4 * b;
            if (eok && seg < nseg) {
                float w[16];
                abs_decode16<TYPE>(raw[b], sc[b], w);
                int base = seg * 16 + (seg >> 1) * 4;
#pragma unroll
                for (int tt = 0; tt < TT; tt++) {
                    const float4 *op = (const float4 *)(Os + tt * RSP + base);
                    float a = acc[tt];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float4 x = op[i];
                        a = fmaf(x.x, w[4 * i + 0], a);
                        a = fmaf(x.y, w[4 * i + 1], a);
                        a = fmaf(x.z, w[4 * i + 2], a);
                        a = fmaf(x.w, w[4 * i + 3], a);
                    }
                    acc[tt] = a;
                }
            }
        }
    }
#pragma unroll
    for (int tt = 0; tt < TT; tt++) {
        float v = acc[tt];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        if (sg == 0 && eok && t0 + tt < T)
            o[(t0 + tt) * ldo + h * dv + e] = v;
    }
}

/* ---- absorption on tensor cores (R1's shapes, several tokens) ----
 *
 * Both absorptions are per-head matmuls (K = dn = 128 for q, K = R = 512 for v) where
 * each 128 columns of K lie in one 128x128 block of kv_b, so a chunk's block scale
 * factors out of its sum and the weights enter the MMA as their exact FP8 (or BF16)
 * values, which TF32 holds exactly. The fp32 activation x is split into hi = tf32(x)
 * and lo = tf32(x - hi); hi*w + lo*w runs as two MMAs: about fp32 accuracy (the
 * 3xTF32 idea with one exact operand), unlike single-pass TF32. A block is 16 tokens
 * and 4 warps; absorb_q: 128 columns r (4 n-tiles a warp), absorb_v: 64 columns e (2
 * n-tiles a warp, twice the blocks: a TP8 rank has 16 heads) over 4 chunks of K, the
 * next chunk's weights loaded while the current one is multiplied. Shared-memory rows
 * are padded so fragment reads hit 32 distinct banks: stride 136 where B is read (k =
 * tig, n = gid) down rows of K (absorb_q's W_UK[d][r]), 132 where fragments read (gid,
 * k = tig) (activations, absorb_v's W_UV[e][r]). */
#define ABM_DEFAULT_MIN 8 /* tokens from which the absorptions use these kernels */
#define ABM_WQ 136
#define ABM_LD 132
#define ABM_SMEM_Q ((128 * ABM_WQ + 16 * ABM_LD) * 4)
#define ABM_SMEM_V ((64 * ABM_LD + 16 * ABM_LD) * 4)

/* ROWS x 128 columns of kv_b from (row0, col0): 16-byte loads (FP8: 16 values, BF16:
 * 8) into registers, then as exact floats into dst (row stride ld) */
template <int TYPE, int ROWS>
struct abm_w {
    static constexpr int PER = TYPE == 2 ? 16 : 8, NL = ROWS * 128 / PER / 128;
    uint4 v[NL];
    __device__ __forceinline__ void load(const void *wd, size_t R, size_t row0, size_t col0, int tid)
    {
#pragma unroll
        for (int l = 0; l < NL; l++) {
            int i = tid + 128 * l, r = i / (128 / PER), c = (i % (128 / PER)) * PER;
            v[l] = __ldg((const uint4 *)wd + ((row0 + r) * R + col0 + c) / PER);
        }
    }
    __device__ __forceinline__ void store(float *dst, int ld, int tid) const
    {
#pragma unroll
        for (int l = 0; l < NL; l++) {
            int i = tid + 128 * l, r = i / (128 / PER), c = (i % (128 / PER)) * PER;
            const uint32_t u[4] = {v[l].x, v[l].y, v[l].z, v[l].w};
            float4 *o = (float4 *)(dst + r * ld + c);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (TYPE == 2) {
                    float2 lo = kc_fp8x2((uint16_t)(u[j] & 0xffffu)), hi = kc_fp8x2((uint16_t)(u[j] >> 16));
                    o[j] = make_float4(lo.x, lo.y, hi.x, hi.y);
                } else if (j % 2 == 0) {
                    o[j / 2] = make_float4(__uint_as_float(u[j] << 16), __uint_as_float(u[j] & 0xffff0000u),
                                           __uint_as_float(u[j + 1] << 16),
                                           __uint_as_float(u[j + 1] & 0xffff0000u));
                }
            }
        }
    }
};

/* 16 rows x 128 floats (row t at src + t * lds; rows >= nrow zero), times sc, into dst
 * (row stride ABM_LD), 16-byte loads */
__device__ __forceinline__ void abm_stage_x(const float *src, size_t lds, size_t nrow, float sc,
                                            float *dst, int tid)
{
#pragma unroll
    for (int l = 0; l < 4; l++) {
        int i = tid + 128 * l, t = i >> 5, c = (i & 31) * 4;
        float4 x = (size_t)t < nrow ? *(const float4 *)(src + t * lds + c) : make_float4(0, 0, 0, 0);
        *(float4 *)(dst + t * ABM_LD + c) = make_float4(x.x * sc, x.y * sc, x.z * sc, x.w * sc);
    }
}

/* acc[NT][4] += A (16 rows from As, row stride ABM_LD) x B over K = 128 in 8-wide
 * steps; the B fragment (k, n) of n-tile nt is Bs[(8 nt + n) * bn + k * bk] */
template <int NT>
__device__ __forceinline__ void abm_mma128(float (*acc)[4], const float *As, const float *Bs,
                                           int bn, int bk, int lane)
{
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll 4
    for (int k0 = 0; k0 < 128; k0 += 8) {
        float x[4] = {As[gid * ABM_LD + k0 + tig], As[(gid + 8) * ABM_LD + k0 + tig],
                      As[gid * ABM_LD + k0 + tig + 4], As[(gid + 8) * ABM_LD + k0 + tig + 4]};
        uint32_t hi[4], lo[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            hi[i] = kc_tf32(x[i]);
            lo[i] = kc_tf32(x[i] - __uint_as_float(hi[i]));
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            const float *b = Bs + (8 * nt + gid) * bn;
            uint32_t bf[2] = {__float_as_uint(b[(k0 + tig) * bk]), __float_as_uint(b[(k0 + tig + 4) * bk])};
            kc_mma_tf32(acc[nt], hi, bf);
            kc_mma_tf32(acc[nt], lo, bf);
        }
    }
}

/* a warp's 16 x 8 NT tile of D (times sc) to out rows 0..15 (those < nrow), row
 * stride ldr (pairs: 8-byte stores) */
template <int NT>
__device__ __forceinline__ void abm_store(const float (*acc)[4], float sc, float *out, size_t ldr,
                                          size_t nrow, int lane)
{
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int n = 0; n < NT; n++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            size_t t = gid + 8 * half;
            if (t < nrow)
                *(float2 *)(out + t * ldr + 8 * n + 2 * tig) =
                    make_float2(acc[n][2 * half] * sc, acc[n][2 * half + 1] * sc);
        }
}

/* q_lat[t,h,r] = sum_d q[t,h,d] W_UK_h[d,r]: block (128 columns r, head h, 16 tokens) */
template <int TYPE>
__global__ void __launch_bounds__(128)
    absorb_q_mma(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, int dv,
                 const void *wd, const float *ws, int R, size_t sld, float *q_lat)
{
    extern __shared__ float4 abs_smem4[];
    float *Ws = (float *)abs_smem4, *Qs = Ws + 128 * ABM_WQ;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t h = blockIdx.y, t0 = (size_t)blockIdx.z * 16, col0 = (size_t)blockIdx.x * 128;
    const size_t row0 = h * (size_t)(128 + dv), nrow = T - t0 < 16 ? T - t0 : 16;
    abm_w<TYPE, 128> w;
    w.load(wd, R, row0, col0, tid); /* weights: before the wait */
    const float sc = TYPE == 2 ? __ldg(ws + (row0 >> 7) * sld + (col0 >> 7)) : 1.0f;
    w.store(Ws, ABM_WQ, tid);
    kc_pdl_wait();
    abm_stage_x(q + t0 * ldq + h * ldh, ldq, nrow, 1.0f, Qs, tid);
    __syncthreads();
    float acc[4][4] = {};
    abm_mma128<4>(acc, Qs, Ws + 32 * warp, 1, ABM_WQ, lane); /* B (d, r) = Ws[d][r] */
    abm_store<4>(acc, sc, q_lat + (t0 * H + h) * R + col0 + 32 * warp, H * R, nrow, lane);
}

/* o[t, h*128 + e] = sum_r o_lat[t,h,r] W_UV_h[e,r]: block (64 rows e, head h, 16
 * tokens), K = R in 128-column chunks, each chunk's block scale on the staged
 * activations */
template <int TYPE>
__global__ void __launch_bounds__(128)
    absorb_v_mma(const float *o_lat, size_t T, size_t H, int dn, const void *wd, const float *ws,
                 int R, size_t sld, float *o, size_t ldo)
{
    extern __shared__ float4 abs_smem4[];
    float *Ws = (float *)abs_smem4, *Os = Ws + 64 * ABM_LD;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const size_t h = blockIdx.y, t0 = (size_t)blockIdx.z * 16, e0 = (size_t)blockIdx.x * 64;
    const size_t row0 = h * (size_t)(dn + 128) + dn + e0, nrow = T - t0 < 16 ? T - t0 : 16;
    const float *src = o_lat + (t0 * H + h) * R;
    abm_w<TYPE, 64> w;
    w.load(wd, R, row0, 0, tid);
    kc_pdl_wait();
    float acc[2][4] = {};
    for (int c0 = 0; c0 < R; c0 += 128) {
        if (c0)
            __syncthreads(); /* every warp is done with the previous chunk */
        w.store(Ws, ABM_LD, tid);
        const float sc = TYPE == 2 ? __ldg(ws + (row0 >> 7) * sld + (c0 >> 7)) : 1.0f;
        abm_stage_x(src + c0, H * R, nrow, sc, Os, tid);
        __syncthreads();
        if (c0 + 128 < R)
            w.load(wd, R, row0, c0 + 128, tid); /* in flight during the MMAs */
        /* B (r, e) = Ws[e][r] */
        abm_mma128<2>(acc, Os, Ws + 16 * warp * ABM_LD, ABM_LD, 1, lane);
    }
    abm_store<2>(acc, 1.0f, o + t0 * ldo + h * 128 + e0 + 16 * warp, ldo, nrow, lane);
}

/* From this many tokens the absorptions take the tensor-core kernels where they apply
 * (DSR1_ABS_MMA_MIN; 0 never); kc_mla_set_absorb_mma overrides it (tests, bench) and
 * also lifts absorb_v's block-count rule (absorb_v_tc). */
static int abm_min = -1, abm_forced = 0;
void kc_mla_set_absorb_mma(int min_tokens)
{
    abm_min = min_tokens;
    abm_forced = min_tokens >= 0;
}

/* The tensor-core absorptions apply: enough tokens, FP8 or BF16 kv_b (exact in TF32),
 * dn = dv = 128, R a multiple of 128, 16-byte aligned input rows, 8-byte aligned output
 * pairs, and the opt-in shared memory (raised once per device). */
static bool abm_ok(const k_weight *w, size_t T, size_t H, size_t dn, size_t dv, const float *in,
                   size_t ld_in, const float *out, size_t ld_out)
{
    static int raised = 0; /* 1 + the device */
    if (abm_min < 0) {
        const char *e = getenv("DSR1_ABS_MMA_MIN");
        abm_min = e && *e ? atoi(e) : ABM_DEFAULT_MIN;
    }
    if (abm_min <= 0 || T < (size_t)abm_min || dn != 128 || dv != 128 || w->cols % 128 ||
        (w->type != K_W_FP8 && w->type != K_W_BF16) || (w->type == K_W_FP8 && !w->scale) ||
        ((uintptr_t)w->data & 15) || ((uintptr_t)in & 15) || ld_in % 4 || ((uintptr_t)out & 7) ||
        ld_out % 2 || H > 65535 || (T + 15) / 16 > 65535)
        return false;
    int d = 0;
    if (cudaGetDevice(&d) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    if (raised == d + 1)
        return true;
    if (mla_dev_attr(cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024) < ABM_SMEM_Q)
        return false;
    const void *fns[4] = {(const void *)absorb_q_mma<2>, (const void *)absorb_q_mma<1>,
                          (const void *)absorb_v_mma<2>, (const void *)absorb_v_mma<1>};
    for (int i = 0; i < 4; i++)
        if (cudaFuncSetAttribute(fns[i], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 i < 2 ? ABM_SMEM_Q : ABM_SMEM_V) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
    raised = d + 1;
    return true;
}

/* tensor-core absorption launches so far (tests check the path they mean to test ran) */
static unsigned long abm_launches;
unsigned long kc_mla_absorb_mma_launches(void)
{
    return abm_launches;
}

static int absorb_q_tc(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dv,
                       const k_weight *w, float *q_lat, cudaStream_t st)
{
    dim3 grid((unsigned)(w->cols / 128), (unsigned)H, (unsigned)((T + 15) / 16));
    abm_launches++;
    return w->type == K_W_FP8
               ? kc_launch(absorb_q_mma<2>, grid, dim3(128), ABM_SMEM_Q, st, q, ldq, ldh, T, H,
                           (int)dv, w->data, w->scale, (int)w->cols, w->scale_ld, q_lat)
               : kc_launch(absorb_q_mma<1>, grid, dim3(128), ABM_SMEM_Q, st, q, ldq, ldh, T, H,
                           (int)dv, w->data, w->scale, (int)w->cols, w->scale_ld, q_lat);
}

static int absorb_v_tc(const float *o_lat, size_t T, size_t H, size_t dn, const k_weight *w,
                       float *o, size_t ldo, cudaStream_t st)
{
    dim3 grid(2, (unsigned)H, (unsigned)((T + 15) / 16));
    abm_launches++;
    return w->type == K_W_FP8
               ? kc_launch(absorb_v_mma<2>, grid, dim3(128), ABM_SMEM_V, st, o_lat, T, H, (int)dn,
                           w->data, w->scale, (int)w->cols, w->scale_ld, o, ldo)
               : kc_launch(absorb_v_mma<1>, grid, dim3(128), ABM_SMEM_V, st, o_lat, T, H, (int)dn,
                           w->data, w->scale, (int)w->cols, w->scale_ld, o, ldo);
}

/* The fast absorb paths need 16-column segments, 16-byte aligned rows and data, and
 * shared memory within the default 48 KB. */
static bool abs_fast_ok(const k_weight *w)
{
    size_t es = w->type == K_W_FP8 ? 1 : w->type == K_W_BF16 ? 2 : 4;
    return w->cols % 16 == 0 && w->cols * es % 16 == 0 && ((uintptr_t)w->data & 15) == 0 &&
           w->cols <= 4096 && (w->type != K_W_FP8 || w->scale);
}

/* Token tile: 1, 2, 4 or 8 (registers stay bounded; more tokens run more tiles). */
static int abs_tt(size_t T)
{
    return T <= 1 ? 1 : T <= 2 ? 2 : T <= 4 ? 4 : 8;
}

template <int TYPE, int TT>
static int absorb_q_launch(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                           size_t dv, const k_weight *w, float *q_lat, cudaStream_t st)
{
    int R = (int)w->cols;
    int nseg = R / 16;
    int nsegb = T <= 4 ? 8 : 32; /* narrow chunks when memory-bound, wide when not */
    nsegb = nsegb < nseg ? nsegb : nseg;
    int DS = ABS_THREADS / nsegb;
    size_t smem = ((size_t)TT * dn + (size_t)DS * nsegb * 17) * sizeof(float);
    dim3 grid((unsigned)((nseg + nsegb - 1) / nsegb), (unsigned)H, (unsigned)((T + TT - 1) / TT));
    return kc_launch(absorb_q_fast<TYPE, TT>, grid, dim3(nsegb * DS), smem, st, q, ldq, ldh, T, H,
                     (int)dn, (int)dv, w->data, w->scale, R, w->scale_ld, nsegb, DS, q_lat);
}

template <int TYPE>
static int absorb_q_type(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                         size_t dv, const k_weight *w, float *q_lat, cudaStream_t st)
{
    switch (abs_tt(T)) {
    case 1:
        return absorb_q_launch<TYPE, 1>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
    case 2:
        return absorb_q_launch<TYPE, 2>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
    case 4:
        return absorb_q_launch<TYPE, 4>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
    default:
        return absorb_q_launch<TYPE, 8>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
    }
}

int kc_mla_absorb_q(const float *q, size_t ldq, size_t ldh, size_t T, size_t H, size_t dn,
                    size_t dv, const k_weight *w, float *q_lat, cudaStream_t st)
{
    if (T * H == 0)
        return 0;
    if (abm_ok(w, T, H, dn, dv, q, ldq | ldh, q_lat, 2))
        return absorb_q_tc(q, ldq, ldh, T, H, dv, w, q_lat, st);
    /* fast path shared memory: Qs (8 * dn) + red (256 * 17) floats must fit in 48 KB */
    if (abs_fast_ok(w) && dn >= 1 && (8 * dn + 256 * 17) * sizeof(float) <= 48 * 1024 &&
        T <= 65535ull * 8 && H <= 65535) {
        if (w->type == K_W_FP8)
            return absorb_q_type<2>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
        if (w->type == K_W_BF16)
            return absorb_q_type<1>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
        return absorb_q_type<0>(q, ldq, ldh, T, H, dn, dv, w, q_lat, st);
    }
    dim3 grid(kc_blocks(w->cols, 128), (unsigned)H, kc_blocks(T, ABS_TOK));
    absorb_q_kernel<<<grid, 128, 0, st>>>(q, ldq, ldh, T, H, dn, dv, (int)w->type, w->data,
                                          w->scale, w->cols, w->scale_ld, q_lat);
    KC_LAUNCH_CHECK();
    return 0;
}

template <int TYPE, int TT>
static int absorb_v_launch(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                           const k_weight *w, float *o, size_t ldo, cudaStream_t st)
{
    int R = (int)w->cols;
    size_t smem = (size_t)TT * (R + (R + 31) / 32 * 4) * sizeof(float);
    dim3 grid(kc_blocks(dv, 64), (unsigned)H, (unsigned)((T + TT - 1) / TT));
    return kc_launch(absorb_v_fast<TYPE, TT>, grid, dim3(ABS_THREADS), smem, st, o_lat, T, H,
                     (int)dn, (int)dv, w->data, w->scale, R, w->scale_ld, o, ldo);
}

template <int TYPE>
static int absorb_v_type(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                         const k_weight *w, float *o, size_t ldo, cudaStream_t st)
{
    switch (abs_tt(T)) {
    case 1:
        return absorb_v_launch<TYPE, 1>(o_lat, T, H, dn, dv, w, o, ldo, st);
    case 2:
        return absorb_v_launch<TYPE, 2>(o_lat, T, H, dn, dv, w, o, ldo, st);
    case 4:
        return absorb_v_launch<TYPE, 4>(o_lat, T, H, dn, dv, w, o, ldo, st);
    default:
        return absorb_v_launch<TYPE, 8>(o_lat, T, H, dn, dv, w, o, ldo, st);
    }
}

int kc_mla_absorb_v(const float *o_lat, size_t T, size_t H, size_t dn, size_t dv,
                    const k_weight *w, float *o, size_t ldo, cudaStream_t st)
{
    if (T * H == 0 || dv == 0)
        return 0;
    size_t R = w->cols;
    /* under 128 blocks (a TP8 rank's 16 heads below 64 tokens) each block's serial walk
     * over K loses to the CUDA-core kernel (H200: 12.4-14.0 against 10.5 us) */
    if (abm_ok(w, T, H, dn, dv, o_lat, R, o, ldo) && (abm_forced || 2 * H * ((T + 15) / 16) >= 128))
        return absorb_v_tc(o_lat, T, H, dn, w, o, ldo, st);
    if (abs_fast_ok(w) && 8 * (R + (R + 31) / 32 * 4) * sizeof(float) <= 48 * 1024 &&
        T <= 65535ull * 8 && H <= 65535) {
        if (w->type == K_W_FP8)
            return absorb_v_type<2>(o_lat, T, H, dn, dv, w, o, ldo, st);
        if (w->type == K_W_BF16)
            return absorb_v_type<1>(o_lat, T, H, dn, dv, w, o, ldo, st);
        return absorb_v_type<0>(o_lat, T, H, dn, dv, w, o, ldo, st);
    }
    dim3 grid(kc_blocks(H * dv, 8), kc_blocks(T, ABS_TOK));
    absorb_v_kernel<<<grid, 256, 0, st>>>(o_lat, T, H, dn, dv, (int)w->type, w->data, w->scale,
                                          w->cols, w->scale_ld, o, ldo);
    KC_LAUNCH_CHECK();
    return 0;
}
