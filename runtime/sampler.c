/* rt_sampler: see sampler.h. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

void rt_sampler_init(rt_sampler *s, const rt_sampling *p)
{
    s->p = *p;
    s->state = p->seed;
}

static uint64_t next_u64(rt_sampler *s)
{
    uint64_t z = (s->state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct cand {
    double z;
    int32_t id;
} cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->z != y->z)
        return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int32_t rt_sample(rt_sampler *s, const float *logits, size_t vocab)
{
    if (s->p.temperature <= 0) {
        size_t best = 0;
        for (size_t i = 1; i < vocab; i++)
            if (logits[i] > logits[best])
                best = i;
        return (int32_t)best;
    }
    cand *c = malloc(vocab * sizeof *c);
    if (!c)
        return -1;
    for (size_t i = 0; i < vocab; i++)
        c[i] = (cand){(double)logits[i] / s->p.temperature, (int32_t)i};
    qsort(c, vocab, sizeof *c, cand_cmp);
    size_t n = vocab;
    if (s->p.top_k > 0 && (size_t)s->p.top_k < n)
        n = (size_t)s->p.top_k;
    double sum = 0, zmax = c[0].z;
    for (size_t i = 0; i < n; i++)
        sum += c[i].z = exp(c[i].z - zmax);
    if (s->p.top_p > 0 && s->p.top_p < 1) {
        double acc = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            acc += c[i].z / sum;
            if (acc >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += c[i].z;
    }
    double u = (double)(next_u64(s) >> 11) / 9007199254740992.0 * sum;
    int32_t id = c[n - 1].id;
    double acc = 0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].z;
        if (u < acc) {
            id = c[i].id;
            break;
        }
    }
    free(c);
    return id;
}
