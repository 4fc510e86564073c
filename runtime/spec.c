/* spec.c: see spec.h */
#include "spec.h"

#include <stdlib.h>
#include <string.h>

int rt_spec_check(const rt_generate_args *a, dsr1_err *err)
{
    if (a->speculative && (a->no_cache || a->keep_mtp_logits))
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "--speculative decodes with the latent cache and keeps no MTP logits: "
                            "not with --no-cache or --mtp-logits-out");
    return 0;
}

int rt_spec_draft(rt_sampler *s, const float *mlogits, size_t V, size_t k, double *qbuf,
                  int32_t *draft, const double **q, dsr1_err *err)
{
    int sampled = s->p.temperature > 0;
    int32_t d = sampled ? (rt_sample_probs(&s->p, mlogits, V, qbuf) ? -1 : rt_sample_from(s, qbuf, V))
                        : rt_sample(s, mlogits, V);
    if (d < 0)
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory while sampling");
    *draft = rt_spec_test_draft(k, d);
    *q = sampled && *draft == d ? qbuf : NULL;
    return 0;
}

void rt_spec_append(const int32_t *v, int32_t *seq, size_t *len, int32_t *tokens, size_t *ntok)
{
    for (int k = 0; k < v[0]; k++) {
        seq[(*len)++] = v[1 + k];
        if (tokens)
            tokens[*ntok] = v[1 + k];
        (*ntok)++;
    }
}

int rt_spec_verify(rt_sampler *s, const float *rows, size_t V, int32_t draft, const double *q,
                   int room2, double *scratch, int32_t v[3])
{
    int stood;
    v[2] = 0;
    if (s->p.temperature <= 0) {
        v[1] = rt_sample(s, rows, V);
        stood = v[1] == draft;
    } else {
        double *p = scratch, *r = scratch + V;
        if (rt_sample_probs(&s->p, rows, V, p))
            return -1;
        double qd = q ? q[draft] : 1.0;
        /* qd > 0: the draft was drawn from q (or given) */
        stood = qd > 0 && rt_sample_uniform(s) * qd < p[draft];
        if (stood) {
            v[1] = draft;
        } else { /* the residual max(0, p - q); all zero only if p <= q everywhere */
            double sum = 0;
            for (size_t i = 0; i < V; i++) {
                double qi = q ? q[i] : (int32_t)i == draft ? 1.0 : 0.0;
                r[i] = p[i] > qi ? p[i] - qi : 0.0;
                sum += r[i];
            }
            v[1] = rt_sample_from(s, sum > 0 ? r : p, V);
        }
    }
    if (v[1] < 0)
        return -1;
    v[0] = stood && room2 ? 2 : 1;
    if (v[0] == 2 && (v[2] = rt_sample(s, rows + V, V)) < 0)
        return -1;
    return stood;
}

int32_t rt_spec_test_draft(size_t k, int32_t draft)
{
    const char *e = getenv("DSR1_TEST_DRAFTS");
    for (size_t i = 0; e && *e; i++) {
        if (i == k)
            return (int32_t)atol(e);
        e = strchr(e, ',');
        e = e ? e + 1 : NULL;
    }
    return draft;
}
