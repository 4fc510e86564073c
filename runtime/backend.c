/* rt_backend: argument defaults and result release shared by the backends. */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rt_generate_args_init(rt_generate_args *a)
{
    memset(a, 0, sizeof *a);
    a->max_new_tokens = 1;
    a->sampling.temperature = 0.0f;
    a->sampling.top_p = 1.0f;
    a->attn = RT_ATTN_AUTO;
    a->prefill_chunk = RT_PREFILL_CHUNK;
    a->rank = a->world_size = a->local_rank = a->gpus_per_node = -1;
    a->master_port = -1;
}

size_t rt_chunk_len(const rt_generate_args *a, size_t p, size_t len)
{
    size_t n = len - p;
    return a->prefill_chunk && n > a->prefill_chunk ? a->prefill_chunk : n;
}

void rt_generate_result_free(rt_generate_result *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->logits);
    free(r->mtp_logits);
    memset(r, 0, sizeof *r);
}

int rt_test_fault(int rank, const char *what)
{
    const char *e = getenv("DSR1_TEST_FAULT");
    int r, n = 0;
    return e && sscanf(e, "%d:%n", &r, &n) == 1 && n > 0 && r == rank && strcmp(e + n, what) == 0;
}
