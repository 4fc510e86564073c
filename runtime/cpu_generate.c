/* rt_cpu_generate: every rank of data-parallel replica 0 of the plan as a thread of
 * this process, talking through the in-process comm (replicas share the shard files
 * and would compute the same thing).
 *
 * Each rank thread: load its shard (rt_model_load), meet the others at a barrier,
 * prefill the prompt, then decode one token per step. The output rank (last pipeline
 * stage, tp rank 0) samples; the token goes to its TP group and then along the PP
 * group by broadcast, so every rank feeds the same next token. Any failure aborts the
 * comm, which releases every waiting rank with the failing rank's message.
 */
#include <inttypes.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "comm.h"
#include "ld.h"
#include "model.h"
#include "sampler.h"

typedef struct job {
    const rt_generate_args *a;
    const mf_manifest *m;
    const char *dir;
    rt_comm *comm;
    int threads;
    rt_generate_result *res;
    atomic_int *nfail;
    int root;          /* this rank failed first: its error is the root cause */
    int rc;
    dsr1_err err;
} job;

/* A rank failed: the first to get here is the root cause (later ones fail only after
 * the abort it is about to send); release every peer. */
static void fail(job *j)
{
    if (atomic_fetch_add(j->nfail, 1) == 0) {
        j->root = 1;
        dsr1_err_prefix(&j->err, "rank %d", j->comm->rank);
    }
    rt_comm_abort(j->comm, j->err.msg);
}

static int run_rank(job *j, rt_model *mdl, rt_kv *kv)
{
    const rt_generate_args *a = j->a;
    rt_comm *c = j->comm;
    dsr1_err *err = &j->err;
    size_t V = mdl->vocab, n0 = a->n_prompt, N = (size_t)a->max_new_tokens, cap = n0 + N;
    int out_rank = mdl->has_head && mdl->tp_rank == 0;
    int mtp = a->keep_mtp_logits && mdl->has_head;
    int rc = 0;
    /* the prompt in chunks of at most --prefill-chunk tokens, then one token a step (the
     * whole sequence, chunked, with --no-cache) */
    size_t rows_max = rt_chunk_len(a, 0, a->no_cache ? cap : n0);
    float *logits = mdl->has_head ? malloc(rows_max * V * sizeof(float)) : NULL;
    float *hid = mtp ? malloc(rows_max * mdl->hidden * sizeof(float)) : NULL;
    float *mlog = mtp ? malloc(rows_max * V * sizeof(float)) : NULL;
    int32_t *seq = malloc(cap * sizeof(int32_t));
    rt_generate_result *res = j->res;
    size_t rows = 0, mrows = 0;
    if (out_rank) {
        res->tokens = malloc(N * sizeof(int32_t));
        if (a->keep_logits)
            res->logits = malloc((n0 + N - 1) * V * sizeof(float));
        if (mtp)
            res->mtp_logits = malloc((n0 + N - 1) * V * sizeof(float));
    }
    if ((mdl->has_head && !logits) || !seq || (mtp && (!hid || !mlog)) ||
        (out_rank && (!res->tokens || (a->keep_logits && !res->logits) || (mtp && !res->mtp_logits)))) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory for %zu tokens of logits", cap);
        goto out;
    }
    memcpy(seq, a->prompt, n0 * sizeof(int32_t));
    size_t len = n0;
    rt_sampler smp;
    rt_sampler_init(&smp, &a->sampling);
    for (size_t step = 0; step < N; step++) {
        size_t T = 1, pos0 = len - 1, first = step == 0 || a->no_cache ? 0 : len - 1;
        int32_t tok = 0;
        /* the step's forward passes: rows kept from every chunk of the prompt's (step
         * 0), else the last row of the last chunk */
        for (pos0 = first; pos0 < len; pos0 += T) {
            T = rt_chunk_len(a, pos0, len);
            int last = pos0 + T == len;
            if ((rc = rt_model_forward(mdl, c, kv, seq + pos0, T, pos0, a->attn, logits, mtp ? hid : NULL, err)))
                goto out;
            size_t from = step == 0 ? 0 : last ? T - 1 : T;
            if (out_rank && a->keep_logits) {
                memcpy(res->logits + rows * V, logits + from * V, (T - from) * V * sizeof(float));
                rows += T - from;
            }
            if (last && out_rank) {
                tok = rt_sample(&smp, logits + (T - 1) * V, V);
                if (tok < 0) {
                    rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory while sampling");
                    goto out;
                }
                res->tokens[step] = tok;
            }
            if (last && mdl->has_head && mdl->tp > 1 &&
                (rc = rt_comm_broadcast(c, RT_GROUP_TP, &tok, sizeof tok, 0, err)))
                goto out;
            if (mtp) {
                /* draft of position pos0 + t + 2 from hidden t and the token at pos0 + t + 1
                 * (within the prompt but for the last chunk's last row: the new token) */
                if (last)
                    seq[len] = tok;
                if ((rc = rt_model_mtp_forward(mdl, c, kv, hid, seq + pos0 + 1, T, pos0, a->attn, mlog, err)))
                    goto out;
                if (out_rank) {
                    memcpy(res->mtp_logits + (mrows * V), mlog + from * V, (T - from) * V * sizeof(float));
                    mrows += T - from;
                }
            }
        }
        if (mdl->pp > 1 && (rc = rt_comm_broadcast(c, RT_GROUP_PP, &tok, sizeof tok, mdl->pp - 1, err)))
            goto out;
        seq[len++] = tok;
    }
    if (out_rank) {
        res->n_tokens = N;
        res->rows = rows;
        res->vocab = V;
        res->have_output = 1;
    }
out:
    free(logits);
    free(hid);
    free(mlog);
    free(seq);
    return rc;
}

static void *rank_main(void *p)
{
    job *j = p;
    omp_set_num_threads(j->threads);
    rt_model *mdl = NULL;
    rt_kv kv = {0};
    dsr1_err *err = &j->err;
    int rc = rt_model_load(&mdl, j->m, j->dir, (uint32_t)j->comm->rank, j->a->verify_full ? LD_HASH : 0, err);
    size_t ctx = j->a->n_prompt + (size_t)j->a->max_new_tokens;
    /* past the trained context RoPE/YaRN positions mean nothing, and the cache and
     * logits would be sized for it: refuse before allocating them */
    if (rc == 0 && mdl->cfg.max_position_embeddings && ctx > mdl->cfg.max_position_embeddings)
        rc = dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                          "%zu prompt tokens + --max-new-tokens %d = %zu positions, more than the model's "
                          "context (max_position_embeddings %" PRIu32 ")",
                          j->a->n_prompt, j->a->max_new_tokens, ctx, mdl->cfg.max_position_embeddings);
    if (rc == 0)
        rc = rt_kv_init(&kv, mdl, j->a->n_prompt + (size_t)j->a->max_new_tokens, j->a->keep_mtp_logits, err);
    if (rc == 0 && j->a->keep_mtp_logits && mdl->has_head && !mdl->mtp)
        rc = dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                          "MTP logits requested, but the shards hold no MTP layer (dsr1-shard --mtp)");
    if (rc != 0)
        fail(j);
    /* nobody computes until every rank holds a verified shard */
    if (rc == 0 && (rc = rt_comm_barrier(j->comm, RT_GROUP_WORLD, err)) != 0)
        fail(j);
    if (rc == 0) {
        rc = run_rank(j, mdl, &kv);
        if (rc != 0)
            fail(j);
    }
    rt_kv_free(&kv);
    rt_model_free(mdl);
    j->rc = rc;
    return NULL;
}

int rt_cpu_generate(const rt_generate_args *a, rt_generate_result *res, dsr1_err *err)
{
    memset(res, 0, sizeof *res);
    if (!a->prompt || a->n_prompt == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "empty prompt");
    if (a->max_new_tokens < 1)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "max_new_tokens must be >= 1");
    if (a->speculative)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "--speculative runs on the CUDA backend (--backend cuda); the CPU backend "
                            "gives the MTP drafts with --mtp-logits-out");
    mf_manifest *m = NULL;
    int rc = mf_load(&m, a->manifest_path, err);
    if (rc)
        return rc;
    char *dir = strdup(a->manifest_path);
    if (!dir) {
        mf_free(m);
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    int tp = (int)m->plan.tp, pp = (int)m->plan.pp, n = tp * pp;
    rt_comm **comms = calloc((size_t)n, sizeof *comms);
    job *jobs = calloc((size_t)n, sizeof *jobs);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    rt_generate_result *results = calloc((size_t)n, sizeof *results);
    if (!comms || !jobs || !th || !results) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
        goto out;
    }
    if ((rc = rt_comm_inproc_create(tp, pp, 1, comms, err)))
        goto out;
    int per = a->threads > 0 ? a->threads : omp_get_num_procs() / n;
    if (per < 1)
        per = 1;
    int started = 0;
    atomic_int nfail = 0;
    for (int r = 0; r < n; r++) {
        jobs[r] = (job){a, m, dir, comms[r], per, &results[r], &nfail, 0, 0, {0}};
        if (pthread_create(&th[r], NULL, rank_main, &jobs[r]) != 0) {
            rt_comm_abort(comms[r], "could not start a rank thread");
            rc = dsr1_err_set(err, DSR1_E_IO, RT_ERR_MODEL, 0, "cannot start the thread of rank %d", r);
            break;
        }
        started++;
    }
    for (int r = 0; r < started; r++)
        pthread_join(th[r], NULL);
    if (started < n) {
        for (int r = started; r < n; r++)
            rt_comm_free(comms[r]);
        for (int r = 0; r < n; r++)
            rt_generate_result_free(&results[r]);
        goto out_comms;
    }
    /* report the root cause */
    int first = -1;
    for (int r = 0; r < n; r++)
        if (jobs[r].rc && (first < 0 || jobs[r].root))
            first = r;
    if (first >= 0) {
        *err = jobs[first].err;
        rc = jobs[first].rc;
    }
    for (int r = 0; r < n; r++) {
        if (!rc && results[r].have_output) {
            *res = results[r];
            memset(&results[r], 0, sizeof results[r]);
        }
        rt_generate_result_free(&results[r]);
    }
out_comms:
    for (int r = 0; r < started; r++)
        rt_comm_free(comms[r]);
out:
    free(results);
    free(th);
    free(jobs);
    free(comms);
    free(dir);
    mf_free(m);
    return rc;
}
