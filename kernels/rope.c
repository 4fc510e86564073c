/* k_rope: see rope.h. Frequencies are computed in fp32 the way transformers does
 * (pos_freqs = theta^(2i/dim), 1/pos_freqs and 1/(factor*pos_freqs) blended by the
 * ramp), so the angles agree with its cos/sin tables to rounding. */
#include "rope.h"

#include <math.h>

double k_rope_yarn_mscale(double factor, double m)
{
    if (factor <= 1.0)
        return 1.0;
    return 0.1 * m * log(factor) + 1.0;
}

static double corr_dim(double rot, int dim, double base, double max_pos)
{
    return (dim * log(max_pos / (rot * 2.0 * M_PI))) / (2.0 * log(base));
}

int k_rope_init(k_rope *r, const k_rope_params *p)
{
    if (p->dim <= 0 || p->dim % 2 || p->dim > K_ROPE_MAX_DIM || !(p->theta > 1.0))
        return -1;
    int half = p->dim / 2;
    r->dim = p->dim;
    r->attn_factor = 1.0f;
    float low = 0, high = 0;
    if (p->yarn) {
        if (!(p->factor > 0) || !(p->original_max_position_embeddings > 0))
            return -1;
        double bf = p->beta_fast > 0 ? p->beta_fast : 32, bs = p->beta_slow > 0 ? p->beta_slow : 1;
        double lo = floor(corr_dim(bf, p->dim, p->theta, p->original_max_position_embeddings));
        double hi = ceil(corr_dim(bs, p->dim, p->theta, p->original_max_position_embeddings));
        if (lo < 0)
            lo = 0;
        if (hi > p->dim - 1)
            hi = p->dim - 1;
        if (lo == hi)
            hi += 0.001;
        low = (float)lo;
        high = (float)hi;
        if (p->mscale != 0 && p->mscale_all_dim != 0)
            r->attn_factor = (float)(k_rope_yarn_mscale(p->factor, p->mscale) /
                                     k_rope_yarn_mscale(p->factor, p->mscale_all_dim));
        else
            r->attn_factor = (float)k_rope_yarn_mscale(p->factor, 1.0);
    }
    for (int i = 0; i < half; i++) {
        float pos_freq = powf((float)p->theta, (float)(2 * i) / (float)p->dim);
        float extrap = 1.0f / pos_freq;
        if (!p->yarn) {
            r->inv_freq[i] = extrap;
            continue;
        }
        float interp = 1.0f / ((float)p->factor * pos_freq);
        float ramp = ((float)i - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float ef = 1.0f - ramp; /* extrapolation weight */
        r->inv_freq[i] = interp * (1.0f - ef) + extrap * ef;
    }
    return 0;
}

double k_rope_softmax_scale(const k_rope_params *p, int qk_head_dim)
{
    double s = 1.0 / sqrt((double)qk_head_dim);
    if (p->yarn && p->mscale_all_dim != 0) {
        double m = k_rope_yarn_mscale(p->factor, p->mscale_all_dim);
        s *= m * m;
    }
    return s;
}

void k_rope_apply(const k_rope *r, float *x, size_t rows, size_t heads, size_t ld_row,
                  size_t ld_head, const int32_t *pos)
{
    int half = r->dim / 2;
#pragma omp parallel for schedule(static) if (rows * heads > 16)
    for (size_t t = 0; t < rows; t++) {
        float c[K_ROPE_MAX_DIM / 2], s[K_ROPE_MAX_DIM / 2];
        float pf = (float)pos[t];
        for (int i = 0; i < half; i++) {
            float a = r->inv_freq[i] * pf;
            c[i] = cosf(a) * r->attn_factor;
            s[i] = sinf(a) * r->attn_factor;
        }
        for (size_t h = 0; h < heads; h++) {
            float *v = x + t * ld_row + h * ld_head;
            for (int i = 0; i < half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c[i] - x1 * s[i];
                v[2 * i + 1] = x1 * c[i] + x0 * s[i];
            }
        }
    }
}
