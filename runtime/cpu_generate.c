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
#include "spec.h"

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

/* n ints from the output rank to its TP group, then (along_pp) along the PP groups. */
static int share_ints(rt_comm *c, const rt_model *mdl, int32_t *v, size_t n, int along_pp,
                      dsr1_err *err)
{
    int rc = 0;
    if (mdl->has_head && mdl->tp > 1 && (rc = rt_comm_broadcast(c, RT_GROUP_TP, v, n * 4, 0, err)))
        return rc;
    if (along_pp && mdl->pp > 1)
        rc = rt_comm_broadcast(c, RT_GROUP_PP, v, n * 4, mdl->pp - 1, err);
    return rc;
}

typedef struct rank_io {
    float *logits, *hid, *mlog; /* one forward pass's rows */
    double *q, *scr;            /* the draft's distribution; verification scratch (2 rows) */
    int32_t *seq;
    size_t rows, mrows;         /* rows kept in res */
} rank_io;

/* Speculative decode after the prefill (runtime/spec.h), from token 1 and its draft (q:
 * its distribution when drawn, else NULL). The output rank decides and draws; its TP
 * group learns the step's tokens before the MTP module runs on them, every rank the next
 * draft after. */
static int run_speculative(job *j, rt_model *mdl, rt_kv *kv, rank_io *io, rt_sampler *smp,
                           int32_t draft, const double *q, size_t *steps, size_t *accepted)
{
    const rt_generate_args *a = j->a;
    rt_comm *c = j->comm;
    dsr1_err *err = &j->err;
    rt_generate_result *res = j->res;
    size_t V = mdl->vocab, N = (size_t)a->max_new_tokens, len = a->n_prompt + 1, ntok = 1;
    int out_rank = mdl->has_head && mdl->tp_rank == 0, rc;
    while (ntok < N) {
        io->seq[len] = draft;
        if ((rc = rt_model_forward(mdl, c, kv, io->seq + len - 1, 2, len - 1, a->attn, io->logits,
                                   io->hid, err)))
            return rc;
        int32_t v[4] = {0, 0, 0, 0}; /* tokens this step, the two tokens, the next draft */
        if (out_rank) {
            int r = rt_spec_verify(smp, io->logits, V, draft, q, ntok + 1 < N, io->scr, v);
            if (r < 0)
                return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory while sampling");
            *accepted += (size_t)r;
            if (a->keep_logits) {
                memcpy(res->logits + io->rows * V, io->logits, (size_t)v[0] * V * sizeof(float));
                io->rows += (size_t)v[0];
            }
        }
        if ((rc = share_ints(c, mdl, v, 3, 0, err)))
            return rc;
        if (mdl->has_head) { /* the MTP module over the kept positions; its last row drafts */
            io->seq[len] = v[1];
            io->seq[len + 1] = v[2];
            if ((rc = rt_model_mtp_forward(mdl, c, kv, io->hid, io->seq + len, (size_t)v[0], len - 1,
                                           a->attn, io->mlog, err)))
                return rc;
            if (out_rank && (rc = rt_spec_draft(smp, io->mlog + (size_t)(v[0] - 1) * V, V,
                                                ntok + (size_t)v[0], io->q, &v[3], &q, err)))
                return rc;
        }
        if ((rc = share_ints(c, mdl, v, 4, 1, err)))
            return rc;
        rt_spec_append(v, io->seq, &len, out_rank ? res->tokens : NULL, &ntok);
        (*steps)++;
        draft = v[3];
    }
    return 0;
}

static int run_rank(job *j, rt_model *mdl, rt_kv *kv)
{
    const rt_generate_args *a = j->a;
    rt_comm *c = j->comm;
    dsr1_err *err = &j->err;
    size_t V = mdl->vocab, n0 = a->n_prompt, N = (size_t)a->max_new_tokens, cap = n0 + N;
    int out_rank = mdl->has_head && mdl->tp_rank == 0, spec = a->speculative;
    int mtp = (a->keep_mtp_logits || spec) && mdl->has_head; /* ranks running the MTP module */
    int rc = 0;
    /* the prompt in chunks of at most --prefill-chunk tokens, then one token a step (the
     * whole sequence, chunked, with --no-cache; two with --speculative) */
    size_t rows_max = rt_chunk_len(a, 0, a->no_cache ? cap : n0);
    rows_max = rows_max < 2 ? 2 : rows_max;
    rank_io io;
    memset(&io, 0, sizeof io);
    io.logits = mdl->has_head ? malloc(rows_max * V * sizeof(float)) : NULL;
    io.hid = mtp ? malloc(rows_max * mdl->hidden * sizeof(float)) : NULL;
    io.mlog = mtp ? malloc(rows_max * V * sizeof(float)) : NULL;
    io.seq = malloc((cap + 1) * sizeof(int32_t));
    if (spec && out_rank) {
        io.q = malloc(V * sizeof(double));
        io.scr = malloc(2 * V * sizeof(double));
    }
    rt_generate_result *res = j->res;
    size_t steps = 0, accepted = 0;
    if (out_rank) {
        res->tokens = malloc(N * sizeof(int32_t));
        if (a->keep_logits)
            res->logits = malloc((n0 + N - 1) * V * sizeof(float));
        if (a->keep_mtp_logits)
            res->mtp_logits = malloc((n0 + N - 1) * V * sizeof(float));
    }
    if ((mdl->has_head && !io.logits) || !io.seq || (mtp && (!io.hid || !io.mlog)) ||
        (spec && out_rank && (!io.q || !io.scr)) ||
        (out_rank && (!res->tokens || (a->keep_logits && !res->logits) ||
                      (a->keep_mtp_logits && !res->mtp_logits)))) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory for %zu tokens of logits", cap);
        goto out;
    }
    memcpy(io.seq, a->prompt, n0 * sizeof(int32_t));
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
            if ((rc = rt_model_forward(mdl, c, kv, io.seq + pos0, T, pos0, a->attn, io.logits,
                                       mtp ? io.hid : NULL, err)))
                goto out;
            size_t from = step == 0 ? 0 : last ? T - 1 : T;
            if (out_rank && a->keep_logits) {
                memcpy(res->logits + io.rows * V, io.logits + from * V, (T - from) * V * sizeof(float));
                io.rows += T - from;
            }
            if (last && out_rank) {
                tok = rt_sample(&smp, io.logits + (T - 1) * V, V);
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
                    io.seq[len] = tok;
                if ((rc = rt_model_mtp_forward(mdl, c, kv, io.hid, io.seq + pos0 + 1, T, pos0, a->attn,
                                               io.mlog, err)))
                    goto out;
                if (out_rank && a->keep_mtp_logits) {
                    memcpy(res->mtp_logits + (io.mrows * V), io.mlog + from * V, (T - from) * V * sizeof(float));
                    io.mrows += T - from;
                }
            }
        }
        if (mdl->pp > 1 && (rc = rt_comm_broadcast(c, RT_GROUP_PP, &tok, sizeof tok, mdl->pp - 1, err)))
            goto out;
        io.seq[len++] = tok;
        if (spec) { /* token 0 is out: the rest by drafts, from the prompt's last MTP row */
            int32_t draft = 0;
            const double *q = NULL;
            if ((out_rank && (rc = rt_spec_draft(&smp, io.mlog + (T - 1) * V, V, 1, io.q, &draft, &q,
                                                 err))) ||
                (rc = share_ints(c, mdl, &draft, 1, 1, err)) ||
                (rc = run_speculative(j, mdl, kv, &io, &smp, draft, q, &steps, &accepted)))
                goto out;
            if (out_rank) /* what the tests check it by */
                fprintf(stderr, "dsr1-serve: speculative: %zu steps, %zu drafts accepted\n", steps,
                        accepted);
            break;
        }
    }
    if (out_rank) {
        res->n_tokens = N;
        res->rows = io.rows;
        res->vocab = V;
        res->have_output = 1;
    }
out:
    free(io.logits);
    free(io.hid);
    free(io.mlog);
    free(io.q);
    free(io.scr);
    free(io.seq);
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
        rc = rt_kv_init(&kv, mdl, j->a->n_prompt + (size_t)j->a->max_new_tokens,
                        j->a->keep_mtp_logits || j->a->speculative, err);
    if (rc == 0 && (j->a->keep_mtp_logits || j->a->speculative) && mdl->has_head && !mdl->mtp)
        rc = dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                          "%s: the shards hold no MTP layer (make them with dsr1-shard --mtp)",
                          j->a->speculative ? "--speculative" : "--mtp-logits-out");
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
    int rc;
    memset(res, 0, sizeof *res);
    if (!a->prompt || a->n_prompt == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "empty prompt");
    if (a->max_new_tokens < 1)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "max_new_tokens must be >= 1");
    if ((rc = rt_spec_check(a, err)))
        return rc;
    mf_manifest *m = NULL;
    rc = mf_load(&m, a->manifest_path, err);
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
