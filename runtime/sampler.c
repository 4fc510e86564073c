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

/* The kept candidates of a sampled (temperature > 0) draw, by descending probability:
 * c[0..*n) with unnormalized weights in c[i].z summing to *sum. NULL when out of memory. */
static cand *kept(const rt_sampling *p, const float *logits, size_t vocab, size_t *nk, double *sum_out)
{
    cand *c = malloc(vocab * sizeof *c);
    if (!c)
        return NULL;
    for (size_t i = 0; i < vocab; i++)
        c[i] = (cand){(double)logits[i] / p->temperature, (int32_t)i};
    qsort(c, vocab, sizeof *c, cand_cmp);
    size_t n = vocab;
    if (p->top_k > 0 && (size_t)p->top_k < n)
        n = (size_t)p->top_k;
    double sum = 0, zmax = c[0].z;
    for (size_t i = 0; i < n; i++)
        sum += c[i].z = exp(c[i].z - zmax);
    if (p->top_p > 0 && p->top_p < 1) {
        double acc = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            acc += c[i].z / sum;
            if (acc >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += c[i].z;
    }
    *nk = n;
    *sum_out = sum;
    return c;
}

static size_t argmax(const float *logits, size_t vocab)
{
    size_t best = 0;
    for (size_t i = 1; i < vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

double rt_sample_uniform(rt_sampler *s)
{
    return (double)(next_u64(s) >> 11) / 9007199254740992.0;
}

int32_t rt_sample(rt_sampler *s, const float *logits, size_t vocab)
{
    if (s->p.temperature <= 0)
        return (int32_t)argmax(logits, vocab);
    size_t n;
    double sum;
    cand *c = kept(&s->p, logits, vocab, &n, &sum);
    if (!c)
        return -1;
    double u = rt_sample_uniform(s) * sum;
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

int rt_sample_probs(const rt_sampling *p, const float *logits, size_t vocab, double *prob)
{
    for (size_t i = 0; i < vocab; i++)
        prob[i] = 0.0;
    if (p->temperature <= 0) {
        prob[argmax(logits, vocab)] = 1.0;
        return 0;
    }
    size_t n;
    double sum;
    cand *c = kept(p, logits, vocab, &n, &sum);
    if (!c)
        return -1;
    for (size_t i = 0; i < n; i++)
        prob[c[i].id] = c[i].z / sum;
    free(c);
    return 0;
}

int32_t rt_sample_from(rt_sampler *s, const double *prob, size_t vocab)
{
    double sum = 0;
    for (size_t i = 0; i < vocab; i++)
        sum += prob[i];
    double u = rt_sample_uniform(s) * sum, acc = 0;
    int32_t last = -1;
    for (size_t i = 0; i < vocab; i++) {
        if (prob[i] <= 0)
            continue;
        acc += prob[i];
        last = (int32_t)i;
        if (u < acc)
            return last;
    }
    return last < 0 ? 0 : last;
}
