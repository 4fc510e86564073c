/* spec.c: see spec.h */
#include "spec.h"

#include <stdlib.h>
#include <string.h>

int rt_spec_check(const rt_generate_args *a, dsr1_err *err)
{
    if (a->speculative && (a->no_cache || a->keep_mtp_logits ||
                           (a->sampling.temperature > 0 && a->sampling.top_k != 1)))
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "--speculative decodes greedily with the latent cache: not with "
                            "--temperature > 0, --no-cache or --mtp-logits-out");
    return 0;
}

int rt_spec_verify(rt_sampler *greedy, const float *rows, size_t V, int32_t draft, int room2,
                   int32_t v[3])
{
    int32_t t0 = rt_sample(greedy, rows, V);
    if (t0 < 0)
        return -1;
    v[0] = t0 == draft && room2 ? 2 : 1;
    v[1] = t0;
    v[2] = 0;
    if (v[0] == 2 && (v[2] = rt_sample(greedy, rows + V, V)) < 0)
        return -1;
    return t0 == draft;
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

void rt_spec_greedy(rt_sampler *s)
{
    rt_sampling p;
    memset(&p, 0, sizeof p);
    p.top_p = 1.0f;
    rt_sampler_init(s, &p);
}
