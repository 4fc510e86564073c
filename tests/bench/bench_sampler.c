/* bench-sampler: host time to sample one token from a row of R1's 129,280 logits
 * (runtime/sampler.c), against a baseline measured in the same run: the textbook sampler
 * that sorts the whole vocabulary every token (what rt_sample did before session 12).
 * Rows: peaked (one clear best, as a trained model's) and flat (N(0, 1): a random
 * model's); settings: R1's recommended temperature 0.6 / top-p 0.95, top-k 50, and
 * temperature 1 unfiltered. Prints ms per token and the ratio. Not a test. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "sampler.h"

enum { V = 129280, REPS = 40 };

typedef struct ref_cand {
    double z;
    int32_t id;
} ref_cand;

static int ref_cmp(const void *a, const void *b)
{
    const ref_cand *x = a, *y = b;
    if (x->z != y->z)
        return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* the baseline: sort every id, softmax, top-k, top-p prefix, draw */
static int32_t ref_sample(const rt_sampling *p, const float *l, double u)
{
    ref_cand *c = malloc(V * sizeof *c);
    for (size_t i = 0; i < V; i++)
        c[i] = (ref_cand){(double)l[i] / p->temperature, (int32_t)i};
    qsort(c, V, sizeof *c, ref_cmp);
    size_t n = p->top_k > 0 && p->top_k < V ? (size_t)p->top_k : V;
    double sum = 0, zmax = c[0].z;
    for (size_t i = 0; i < n; i++)
        sum += c[i].z = exp(c[i].z - zmax);
    if (p->top_p < 1) {
        double acc = 0;
        for (size_t i = 0; i < n; i++)
            if ((acc += c[i].z / sum) >= p->top_p) {
                n = i + 1;
                break;
            }
        sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += c[i].z;
    }
    double acc = 0, t = u * sum;
    int32_t id = c[n - 1].id;
    for (size_t i = 0; i < n; i++)
        if ((acc += c[i].z) > t) {
            id = c[i].id;
            break;
        }
    free(c);
    return id;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void)
{
    float *l = malloc(V * sizeof *l);
    const rt_sampling set[] = {{0.6f, 0.95f, 0, 1}, {0.6f, 1.0f, 50, 1}, {1.0f, 1.0f, 0, 1}};
    const char *sname[] = {"T 0.6 top-p 0.95", "T 0.6 top-k 50  ", "T 1 unfiltered  "};
    uint64_t st = 1;
    printf("bench-sampler: one token from %d logits, mean ms of %d draws\n", V, REPS);
    for (int shape = 0; shape < 2; shape++) {
        for (size_t i = 0; i < V; i++) { /* Box-Muller from a splitmix stream */
            st += 0x9E3779B97F4A7C15ULL;
            uint64_t z = (st ^ (st >> 30)) * 0xBF58476D1CE4E5B9ULL;
            double u1 = ((z >> 11) + 1.0) / 9007199254740993.0, u2 = (double)(z & 0xffff) / 65536.0;
            l[i] = (float)(sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2) * (shape ? 1.0 : 3.0));
        }
        if (!shape)
            l[123] = 25.0f, l[4567] = 23.5f;
        for (size_t k = 0; k < sizeof set / sizeof *set; k++) {
            rt_sampler s;
            rt_sampler_init(&s, &set[k]);
            double t0 = now();
            for (int r = 0; r < REPS; r++)
                if (rt_sample(&s, l, V) < 0)
                    return 3;
            double t1 = now();
            for (int r = 0; r < REPS; r++)
                ref_sample(&set[k], l, (r + 0.5) / REPS);
            double t2 = now(), ours = (t1 - t0) / REPS * 1e3, base = (t2 - t1) / REPS * 1e3;
            printf("  %s row, %s: rt_sample %7.3f ms, full-sort baseline %7.3f ms (%.1fx)\n",
                   shape ? "flat  " : "peaked", sname[k], ours, base, base / ours);
        }
    }
    free(l);
    return 0;
}
