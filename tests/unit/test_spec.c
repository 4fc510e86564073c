/* rt_spec (runtime/spec.h): the verification keeps every token distributed as plain
 * sampling draws it, whatever the drafts; greedy steps are the argmax. */
#include <stdlib.h>

#include "spec.h"
#include "test.h"

enum { V = 6, DRAWS = 200000 };

/* Frequencies of the verified token over DRAWS steps: drafts drawn from q (or the fixed
 * draft `given` when q is NULL); rows[0] is the target. Also the share that stood. */
static void run_steps(const rt_sampling *sp, const float *rows, const double *q, int32_t given,
                      double *freq, double *stood)
{
    rt_sampler s, ds;
    rt_sampler_init(&s, sp);
    rt_sampling dp = *sp;
    dp.seed = 99;
    rt_sampler_init(&ds, &dp);
    double scr[2 * V];
    size_t n = 0;
    for (int i = 0; i < V; i++)
        freq[i] = 0;
    for (int k = 0; k < DRAWS; k++) {
        int32_t d = q ? rt_sample_from(&ds, q, V) : given, v[3];
        int r = rt_spec_verify(&s, rows, V, d, q, 0, scr, v);
        CHECK_MSG(r >= 0 && v[0] == 1 && v[1] >= 0 && v[1] < V, "step %d: r %d v %d %d", k, r, v[0], v[1]);
        if (v[1] >= 0 && v[1] < V)
            freq[v[1]] += 1.0 / DRAWS;
        n += r == 1;
    }
    *stood = (double)n / DRAWS;
}

TEST(spec_sampled_tokens_follow_the_target)
{
    const float rows[2 * V] = {1.0f, 2.5f, 0.3f, -1.0f, 2.0f, 0.0f, 0, 0, 0, 0, 0, 0};
    const float qrow[V] = {2.0f, 0.0f, 1.5f, 1.0f, -0.5f, 0.5f}; /* a poor draft model */
    rt_sampling sp = {0.9f, 1.0f, 0, 7};
    for (int variant = 0; variant < 3; variant++) {
        rt_sampling v = sp;
        if (variant == 1)
            v.top_k = 3;
        if (variant == 2)
            v.top_p = 0.8f;
        double p[V], q[V], freq[V], stood;
        CHECK_EQ_INT(rt_sample_probs(&v, rows, V, p), 0);
        CHECK_EQ_INT(rt_sample_probs(&v, qrow, V, q), 0);
        run_steps(&v, rows, q, 0, freq, &stood);
        double want_stood = 0;
        for (int i = 0; i < V; i++) {
            /* 200,000 draws: a frequency's standard deviation is at most 0.0011 */
            CHECK_MSG(fabs(freq[i] - p[i]) < 0.006, "variant %d id %d: %.4f, target %.4f", variant, i,
                      freq[i], p[i]);
            want_stood += p[i] < q[i] ? p[i] : q[i];
        }
        CHECK_MSG(fabs(stood - want_stood) < 0.006, "variant %d: drafts stood %.4f, sum min(p, q) %.4f",
                  variant, stood, want_stood);
        /* a draft given from outside (q = 1 at it): it stands with p(d), still p overall */
        run_steps(&v, rows, NULL, 4, freq, &stood);
        for (int i = 0; i < V; i++)
            CHECK_MSG(fabs(freq[i] - p[i]) < 0.006, "variant %d given draft, id %d: %.4f, target %.4f",
                      variant, i, freq[i], p[i]);
        CHECK_MSG(fabs(stood - p[4]) < 0.006, "given draft stood %.4f, p %.4f", stood, p[4]);
    }
}

TEST(spec_greedy_steps_are_the_argmax)
{
    const float rows[2 * V] = {1.0f, 2.5f, 0.3f, -1.0f, 2.0f, 0.0f, 0.1f, 0.2f, 3.0f, 0.0f, 0.0f, 0.0f};
    rt_sampling sp = {0.0f, 1.0f, 0, 0};
    rt_sampler s;
    rt_sampler_init(&s, &sp);
    double scr[2 * V];
    int32_t v[3];
    CHECK_EQ_INT(rt_spec_verify(&s, rows, V, 1, NULL, 1, scr, v), 1); /* right: two tokens */
    CHECK_EQ_INT(v[0], 2);
    CHECK_EQ_INT(v[1], 1);
    CHECK_EQ_INT(v[2], 2);
    CHECK_EQ_INT(rt_spec_verify(&s, rows, V, 1, NULL, 0, scr, v), 1); /* no room for two */
    CHECK_EQ_INT(v[0], 1);
    CHECK_EQ_INT(rt_spec_verify(&s, rows, V, 4, NULL, 1, scr, v), 0); /* wrong: the argmax */
    CHECK_EQ_INT(v[0], 1);
    CHECK_EQ_INT(v[1], 1);
    double qb[V];
    const double *q = qb;
    int32_t d = -1;
    dsr1_err e;
    CHECK_EQ_INT(rt_spec_draft(&s, rows + V, V, 1, qb, &d, &q, &e), 0); /* greedy: the argmax */
    CHECK_EQ_INT(d, 2);
    CHECK_MSG(q == NULL, "a greedy draft has no distribution");
    /* sampled: the distribution comes back, unless the test hook replaced the draft */
    rt_sampling t = {1.0f, 1.0f, 0, 5};
    rt_sampler_init(&s, &t);
    CHECK_EQ_INT(rt_spec_draft(&s, rows + V, V, 1, qb, &d, &q, &e), 0);
    CHECK_MSG(q == qb && d >= 0 && d < V && qb[d] > 0, "sampled draft %d, q %p", d, (const void *)q);
    setenv("DSR1_TEST_DRAFTS", "0,4", 1);
    CHECK_EQ_INT(rt_spec_draft(&s, rows + V, V, 1, qb, &d, &q, &e), 0);
    CHECK_EQ_INT(d, 4);
    unsetenv("DSR1_TEST_DRAFTS");
    /* a step's tokens onto the sequence and the output */
    int32_t seq[8] = {9}, toks[4] = {0}, vv[3] = {2, 5, 6};
    size_t len = 1, nt = 1;
    rt_spec_append(vv, seq, &len, toks, &nt);
    CHECK_EQ_INT((int)len, 3);
    CHECK_EQ_INT((int)nt, 3);
    CHECK_EQ_INT(seq[1], 5);
    CHECK_EQ_INT(toks[2], 6);
}

TEST(spec_test_drafts_replace_by_token_index)
{
    setenv("DSR1_TEST_DRAFTS", "5,6,7", 1);
    CHECK_EQ_INT(rt_spec_test_draft(0, 1), 5);
    CHECK_EQ_INT(rt_spec_test_draft(2, 1), 7);
    CHECK_EQ_INT(rt_spec_test_draft(3, 1), 1);
    unsetenv("DSR1_TEST_DRAFTS");
    CHECK_EQ_INT(rt_spec_test_draft(0, 1), 1);
}

/* The sampler's distribution (rt_sample_probs: one pass, a cut 32 units below the best,
 * top-p sorting only the buckets that reach its mass) against the definition: sort the
 * whole vocabulary, softmax in double, keep top-k, keep the top-p prefix. Random logits
 * with ties, a peaked row, several settings; a 129,280-id row as R1's. */
static void reference_probs(const rt_sampling *p, const float *l, size_t V, double *prob)
{
    size_t *ord = malloc(V * sizeof *ord);
    for (size_t i = 0; i < V; i++)
        ord[i] = i;
    for (size_t i = 1; i < V; i++) /* insertion sort: z desc, id asc */
        for (size_t j = i; j > 0 && (l[ord[j]] > l[ord[j - 1]] ||
                                     (l[ord[j]] == l[ord[j - 1]] && ord[j] < ord[j - 1])); j--) {
            size_t t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
    size_t n = p->top_k > 0 && (size_t)p->top_k < V ? (size_t)p->top_k : V;
    double zmax = (double)l[ord[0]] / p->temperature, sum = 0;
    double *w = malloc(V * sizeof *w);
    for (size_t i = 0; i < n; i++)
        sum += w[i] = exp((double)l[ord[i]] / p->temperature - zmax);
    if (p->top_p < 1) {
        double acc = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++)
            if ((acc += w[i] / sum) >= p->top_p) {
                keep = i + 1;
                break;
            }
        n = keep;
        sum = 0;
        for (size_t i = 0; i < n; i++)
            sum += w[i];
    }
    for (size_t i = 0; i < V; i++)
        prob[i] = 0;
    for (size_t i = 0; i < n; i++)
        prob[ord[i]] = w[i] / sum;
    free(w);
    free(ord);
}

TEST(sampler_distribution_matches_the_definition)
{
    enum { N = 3000 };
    static float l[N];
    static double got[N], want[N];
    const rt_sampling set[] = {{1.0f, 1.0f, 0, 0},   {0.6f, 0.95f, 0, 0}, {0.6f, 0.5f, 0, 0},
                               {1.3f, 0.9f, 40, 0},  {0.7f, 1.0f, 5, 0},  {2.0f, 0.999f, 0, 0},
                               {0.05f, 0.95f, 0, 0}};
    for (int row = 0; row < 3; row++) {
        for (size_t i = 0; i < N; i++) {
            l[i] = (float)((int)(test_rand_u64() % 2000) - 1000) / 100.0f; /* ties: 0.01 steps */
            if (row == 1)
                l[i] *= 6.0f; /* peaked: most ids fall under the cut */
        }
        if (row == 2)
            l[17] = l[2900] = 40.0f; /* two tied best */
        for (size_t k = 0; k < sizeof set / sizeof *set; k++) {
            CHECK_EQ_INT(rt_sample_probs(&set[k], l, N, got), 0);
            reference_probs(&set[k], l, N, want);
            double e = 0;
            int support = 1;
            for (size_t i = 0; i < N; i++) {
                e = fmax(e, fabs(got[i] - want[i]));
                /* the cut drops only weights under e^-32 of the best */
                support &= (want[i] > 1e-13 ? got[i] > 0 : 1) && (got[i] > 0 ? want[i] > 0 : 1);
            }
            CHECK_MSG(e < 1e-12 && support, "row %d setting %zu: max diff %.3g, same support %d", row, k, e,
                      support);
        }
    }
}
