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
    double z, w; /* logit / temperature; weight e^(z - zmax) once computed */
    int32_t id;
} cand;

/* a before b: larger z, then lower id */
static int better(const cand *a, const cand *b) { return a->z > b->z || (a->z == b->z && a->id < b->id); }

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    return better(x, y) ? -1 : better(y, x);
}

static void swap(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Partition c[0..n) so that its k best (cand order) come first, in any order. */
static void select_best(cand *c, size_t n, size_t k)
{
    size_t lo = 0, hi = n; /* the k-th lies in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        /* median of three as the pivot, moved to hi - 1 */
        if (better(&c[hi - 1], &c[lo]))
            swap(&c[hi - 1], &c[lo]);
        if (better(&c[mid], &c[lo]))
            swap(&c[mid], &c[lo]);
        if (better(&c[hi - 1], &c[mid]))
            swap(&c[hi - 1], &c[mid]);
        swap(&c[mid], &c[hi - 1]);
        cand pv = c[hi - 1];
        size_t st = lo;
        for (size_t i = lo; i + 1 < hi; i++)
            if (better(&c[i], &pv))
                swap(&c[i], &c[st++]);
        swap(&c[st], &c[hi - 1]);
        if (st + 1 == k || st == k)
            return;
        if (st + 1 < k)
            lo = st + 1;
        else
            hi = st;
    }
}

/* Ids more than ZCUT below the best (in logit / temperature) weigh under e^-32 = 1.3e-14 of
 * it: left out, so a peaked distribution is a few candidates, not the vocabulary. */
#define ZCUT 32.0
#define NBUCKET (16 * 32 + 1) /* top-p: mass per 1/16 of a unit of z below the best */

/* The kept candidates of a sampled (temperature > 0) draw: c[0..*n) with weights c[i].w
 * summing to *sum (top-k: in descending probability; else those above top-p's last
 * bucket in id order, then that bucket's in descending probability). Cost: one pass over
 * the vocabulary, plus sorting top-k's k or top-p's last bucket (1/16 of a unit of z).
 * NULL when out of memory. */
static cand *kept(const rt_sampling *p, const float *logits, size_t vocab, size_t *nk, double *sum_out)
{
    float lmax = logits[0];
    for (size_t i = 1; i < vocab; i++)
        lmax = logits[i] > lmax ? logits[i] : lmax;
    const double zmax = (double)lmax / p->temperature;
    /* a float pre-cut a little below the exact one (vectorizes) */
    const float lcut = (float)((double)lmax - ZCUT * p->temperature * (1 + 1e-6)) - 1e-6f * fabsf(lmax);
    size_t cnt = 0; /* room for the ids near the cut only (a large malloc costs page faults) */
    for (size_t i = 0; i < vocab; i++)
        cnt += logits[i] >= lcut;
    cand *c = malloc(cnt * sizeof *c);
    if (!c)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < vocab; i++) {
        if (logits[i] < lcut) /* well under the cut: no division, no exp */
            continue;
        double z = (double)logits[i] / p->temperature;
        if (z >= zmax - ZCUT)
            c[n++] = (cand){z, exp(z - zmax), (int32_t)i};
    }
    int sorted = 0;
    if (p->top_k > 0 && (size_t)p->top_k < n) {
        select_best(c, n, (size_t)p->top_k);
        n = (size_t)p->top_k;
        qsort(c, n, sizeof *c, cand_cmp);
        sorted = 1;
    }
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += c[i].w;
    if (p->top_p > 0 && p->top_p < 1) {
        size_t a = 0, m = n; /* kept whole: c[0..a); the prefix is cut from c[a..m) */
        if (!sorted) {
            /* by bucket: those above the one that reaches the mass are all kept (in id
             * order); only that bucket is sorted to find the cut */
            static const double per = (NBUCKET - 1) / ZCUT;
            double mass[NBUCKET] = {0};
            for (size_t i = 0; i < n; i++)
                mass[(size_t)((zmax - c[i].z) * per)] += c[i].w;
            size_t B = 0;
            for (double acc = mass[0]; B + 1 < NBUCKET && acc < p->top_p * sum;)
                acc += mass[++B];
            for (size_t i = 0; i < n; i++)
                if ((size_t)((zmax - c[i].z) * per) < B)
                    swap(&c[i], &c[a++]);
            m = a;
            for (size_t i = a; i < n; i++)
                if ((size_t)((zmax - c[i].z) * per) == B)
                    swap(&c[i], &c[m++]);
            qsort(c + a, m - a, sizeof *c, cand_cmp);
        }
        double acc = 0;
        for (size_t i = 0; i < a; i++)
            acc += c[i].w / sum;
        size_t keep = m;
        for (size_t i = a; i < m; i++) {
            acc += c[i].w / sum;
            if (acc >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += c[i].w;
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
        acc += c[i].w;
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
        prob[c[i].id] = c[i].w / sum;
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
