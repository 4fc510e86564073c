/* rt_cuda_generate: this process is one rank of the plan on one GPU (backend.h).
 *
 * Sequence: identity (runtime/ident.h, flags > torchrun env > Kubernetes) -> GPU =
 * local rank -> TCP rendezvous with rank 0 (runtime/boot.h: manifest digest, plan and
 * shard identity checked on every rank, NCCL unique id handed out) -> load + upload
 * the shard (hashing overlapped with --verify full) -> fence "loaded" (a rank that
 * failed to load stops every rank with its message) -> NCCL communicators -> prefill +
 * decode exactly as the CPU backend does (runtime/cpu_generate.c): the output rank
 * (last stage, tp rank 0) samples and the token goes to its TP group, then along the
 * PP group -> fence "done".
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_model.h"

extern "C" {
#include "backend.h"
#include "boot.h"
#include "comm_nccl.h"
#include "cores.h"
#include "fu.h"
#include "hx.h"
#include "ident.h"
#include "mf.h"
#include "sampler.h"
#include "spec.h"
#include "watchdog.h"
}

static int cuda_fail(dsr1_err *err, cudaError_t e, const char *what)
{
    return dsr1_err_set(err, DSR1_E_IO, RT_ERR_MODEL, 0, "cuda: %s: %s", what,
                        cudaGetErrorString(e));
}

static void shard_identity(const mf_manifest *m, uint32_t rank, char *out, size_t cap)
{
    const mf_shard *s = mf_shard_of_rank(m, rank);
    char hex[HX_HEX_LEN + 1] = "";
    if (s)
        hx_hex(s->xxh3_128, hex);
    snprintf(out, cap, "%s xxh3=%s pp=%u tp=%u", s ? s->file : "?", hex, s ? s->pp_stage : 0,
             s ? s->tp_rank : 0);
}

typedef struct gen_state {
    const rt_generate_args *a;
    cm_model *cm;
    rt_comm *comm;
    cudaStream_t st;
    int32_t *dtok;
    rt_watchdog *wd; /* progress deadline per step (multi-rank runs) */
    double wd_s;
} gen_state;

/* Move the progress deadline to now + wd_s, naming the step (and the prompt chunk of
 * positions [p, p + T)) that must finish by then. */
static void progress_deadline(gen_state *g, size_t step, size_t p, size_t T)
{
    if (!g->wd) /* multi-rank runs only (g->comm set) */
        return;
    char what[96];
    if (step > 0 && T == 1)
        snprintf(what, sizeof what, "decode step %zu", step);
    else
        snprintf(what, sizeof what, "%s of positions %zu..%zu", step ? "recompute" : "prefill", p,
                 p + T - 1);
    rt_watchdog_rearm(g->wd, g->wd_s,
                      "rank %d: %s made no progress within %.0f s (blocked in NCCL or CUDA: a "
                      "peer rank died or stalled); exiting",
                      g->comm->rank, what, g->wd_s);
}

/* Device memory in use now (GiB), for the prefill line. */
static double dev_used_gib(void)
{
    size_t fr = 0, tot = 0;
    return cudaMemGetInfo(&fr, &tot) == cudaSuccess ? (tot - fr) / 1073741824.0 : 0.0;
}

/* n ints (n <= 16) from the sampling rank: over the last stage's TP group from its rank
 * 0, then (along_pp) along every PP group from the last stage (as the sampled token). */
static int share_ints(gen_state *g, int32_t *v, size_t n, int along_pp, dsr1_err *err)
{
    rt_model *mdl = g->cm->h;
    int bt = mdl->has_head && mdl->tp > 1, bp = along_pp && mdl->pp > 1;
    if (!bt && !bp)
        return 0;
    int rc;
    cudaError_t e = cudaMemcpyAsync(g->dtok, v, n * 4, cudaMemcpyHostToDevice, g->st);
    if (e != cudaSuccess)
        return cuda_fail(err, e, "token");
    if ((bt && (rc = rt_comm_broadcast(g->comm, RT_GROUP_TP, g->dtok, n * 4, 0, err))) ||
        (bp && (rc = rt_comm_broadcast(g->comm, RT_GROUP_PP, g->dtok, n * 4, mdl->pp - 1, err))) ||
        (rc = rt_comm_nccl_wait(g->comm, err)))
        return rc;
    e = cudaMemcpy(v, g->dtok, n * 4, cudaMemcpyDeviceToHost);
    return e == cudaSuccess ? 0 : cuda_fail(err, e, "token");
}

typedef struct run_io {
    float *logits, *mlog; /* host rows of one pass: main and MTP logits */
    double *q, *scr;      /* the draft's distribution; verification scratch (2 rows) */
    int32_t *seq;
    size_t rows, mrows;   /* rows kept in res */
} run_io;

/* The MTP module over the rows of the last forward pass (positions p.., T rows; the
 * next tokens in seq), keeping rows [from, T) of its logits when asked; *last (may be
 * NULL) = its last row in io->mlog. */
static int mtp_rows(gen_state *g, run_io *io, rt_generate_result *res, int out_rank, size_t p,
                    size_t T, size_t from, const float **last, dsr1_err *err)
{
    /* rows of its logits: those kept, else the last (the draft); io->mlog holds one
     * pass's kept rows, or 2 */
    int keep = g->a->keep_mtp_logits && from < T; /* the same on every rank: collective */
    size_t V = g->cm->h->vocab, row0 = keep ? from : T - 1;
    int rc = cm_mtp_forward(g->cm, g->comm, io->seq + p + 1, T, p, 0, row0, io->mlog, err);
    if (rc)
        return rc;
    if (keep && out_rank) {
        memcpy(res->mtp_logits + io->mrows * V, io->mlog, (T - from) * V * sizeof(float));
        io->mrows += T - from;
    }
    if (last)
        *last = io->mlog + (T - row0 - 1) * V;
    return 0;
}

/* Speculative decode after the prefill (runtime/spec.h; token 0 and the first draft
 * known): each step runs the last token and the draft (two positions) through the model
 * and keeps 1 or 2 tokens. The deciding rank (the last stage's TP rank 0) verifies and
 * draws; its TP group learns the step's tokens before the MTP module runs on them, every
 * rank the next draft after. Rows of --logits-out are one per token, as without drafts. */
static int run_speculative(gen_state *g, run_io *io, rt_generate_result *res, int out_rank,
                           rt_sampler *smp, int32_t draft, const double *q, size_t *drafts,
                           size_t *accepted, dsr1_err *err)
{
    const rt_generate_args *a = g->a;
    rt_model *mdl = g->cm->h;
    size_t V = mdl->vocab, N = (size_t)a->max_new_tokens, len = a->n_prompt + 1, ntok = 1;
    int dec = mdl->has_head && mdl->tp_rank == 0, rc;
    while (ntok < N) {
        progress_deadline(g, ntok, len - 1, 1);
        io->seq[len] = draft;
        if ((rc = cm_forward(g->cm, g->comm, io->seq + len - 1, 2, len - 1, 0, io->logits, err)))
            return rc;
        int32_t v[4] = {0, 0, 0, 0}; /* tokens this step, the two tokens, the next draft */
        if (dec) {
            /* (the very last token takes one row even when its draft stood) */
            int r = rt_spec_verify(smp, io->logits, V, draft, q, ntok + 1 < N, io->scr, v);
            if (r < 0)
                return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory while sampling");
            *accepted += (size_t)r;
        }
        if ((rc = share_ints(g, v, 3, 0, err)))
            return rc;
        if (mdl->has_head) {
            if (out_rank && a->keep_logits) {
                memcpy(res->logits + io->rows * V, io->logits, (size_t)v[0] * V * sizeof(float));
                io->rows += (size_t)v[0];
            }
            io->seq[len] = v[1];
            io->seq[len + 1] = v[2];
            const float *row = NULL;
            if ((rc = mtp_rows(g, io, res, 0, len - 1, (size_t)v[0], (size_t)v[0] - 1, &row, err)) ||
                (dec && (rc = rt_spec_draft(smp, row, V, ntok + (size_t)v[0], io->q, &v[3], &q, err))))
                return rc;
        }
        if ((rc = share_ints(g, v, 4, 1, err)))
            return rc;
        rt_spec_append(v, io->seq, &len, out_rank ? res->tokens : NULL, &ntok);
        (*drafts)++;
        draft = v[3];
    }
    return 0;
}

static int run(gen_state *g, rt_generate_result *res, int out_rank, dsr1_err *err)
{
    const rt_generate_args *a = g->a;
    rt_model *mdl = g->cm->h;
    size_t V = mdl->vocab, n0 = a->n_prompt, N = (size_t)a->max_new_tokens, cap = n0 + N;
    int rc = 0, spec = a->speculative;
    /* ranks that run the MTP module: the last stage's */
    int mtp = (a->keep_mtp_logits || spec) && mdl->has_head;
    /* host rows of one forward pass: every row of a prompt chunk when they are kept,
     * else the one row sampled from (two: a speculative step) */
    size_t most = rt_chunk_len(a, 0, a->no_cache ? cap : n0);
    size_t rows_max = a->keep_logits || a->keep_mtp_logits ? most : 2;
    rows_max = rows_max < 2 ? 2 : rows_max; /* a speculative step's two rows */
    run_io io;
    memset(&io, 0, sizeof io);
    int decider = mdl->has_head && mdl->tp_rank == 0; /* samples for its replica */
    if (spec && decider) {
        io.q = (double *)malloc(V * sizeof(double));
        io.scr = (double *)malloc(2 * V * sizeof(double));
    }
    io.logits = mdl->has_head ? (float *)malloc(rows_max * V * sizeof(float)) : NULL;
    io.mlog = mtp ? (float *)malloc(rows_max * V * sizeof(float)) : NULL;
    io.seq = (int32_t *)malloc((cap + 1) * sizeof(int32_t));
    size_t chunks = 0, drafts = 0, accepted = 0;
    int32_t draft = 0;
    double mem_prefill = 0;
    if (out_rank) {
        res->tokens = (int32_t *)malloc(N * sizeof(int32_t));
        if (a->keep_logits)
            res->logits = (float *)malloc((n0 + N - 1) * V * sizeof(float));
        if (a->keep_mtp_logits)
            res->mtp_logits = (float *)malloc((n0 + N - 1) * V * sizeof(float));
    }
    if ((mdl->has_head && !io.logits) || !io.seq || (mtp && !io.mlog) ||
        (spec && decider && (!io.q || !io.scr)) ||
        (out_rank && (!res->tokens || (a->keep_logits && !res->logits) ||
                      (a->keep_mtp_logits && !res->mtp_logits)))) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory for %zu tokens", cap);
        goto out;
    }
    if (mtp && (rc = cm_keep_hidden(g->cm, most > 2 ? most : 2, err)))
        goto out;
    memcpy(io.seq, a->prompt, n0 * sizeof(int32_t));
    {
        size_t len = n0;
        rt_sampler smp;
        rt_sampler_init(&smp, &a->sampling);
        double t0 = fu_now_s(), t1 = t0;
        for (size_t step = 0; step < N; step++) {
            if (step == 1) {
                t1 = fu_now_s();
                mem_prefill = dev_used_gib();
            }
            if (step == 1 && g->comm && rt_test_fault(g->comm->rank, "exit-decode"))
                _exit(9); /* a peer dying mid-generation (tests/gpu/test_nccl.sh) */
            /* the step's forward passes (the prompt, or with --no-cache the sequence, in
             * chunks of at most --prefill-chunk): logits of every prompt row when kept
             * (step 0), else of the last chunk's last row; earlier chunks skip the head
             * and are waited for, so each has its own progress deadline. The MTP module
             * follows each chunk (the last one's once its next token is sampled). */
            size_t T = 1, pos0 = step == 0 || a->no_cache ? 0 : len - 1, nrows = 0, from = 0;
            for (; pos0 < len; pos0 += T) {
                T = rt_chunk_len(a, pos0, len);
                int last = pos0 + T == len, all = a->keep_logits && step == 0;
                size_t row0 = all ? 0 : T - 1;
                from = step == 0 ? 0 : last ? T - 1 : T;
                nrows = T - row0;
                progress_deadline(g, step, pos0, T);
                if ((rc = cm_forward(g->cm, g->comm, io.seq + pos0, T, pos0, row0,
                                     last || all ? io.logits : NULL, err)) ||
                    (!last && !(all && io.logits) && (rc = cm_wait(g->cm, g->comm, err))))
                    goto out;
                if (all && out_rank) {
                    memcpy(res->logits + io.rows * V, io.logits, nrows * V * sizeof(float));
                    io.rows += nrows;
                } else if (last && out_rank && a->keep_logits) {
                    memcpy(res->logits + io.rows * V, io.logits, V * sizeof(float));
                    io.rows++;
                }
                chunks += step == 0;
                if (last)
                    break;
                if (mtp && (rc = mtp_rows(g, &io, res, out_rank, pos0, T, from, NULL, err)))
                    goto out;
            }
            int32_t tok = 0;
            if (decider) {
                tok = rt_sample(&smp, io.logits + (nrows - 1) * V, V);
                if (tok < 0) {
                    rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0,
                                      "out of memory while sampling");
                    goto out;
                }
                if (out_rank)
                    res->tokens[step] = tok;
            }
            if ((rc = share_ints(g, &tok, 1, 1, err)))
                goto out;
            io.seq[len] = tok;
            const float *row = NULL;
            const double *q = NULL;
            if (mtp && (rc = mtp_rows(g, &io, res, out_rank, pos0, T, from, &row, err)))
                goto out;
            len++;
            if (spec) { /* token 0 is out: the rest by drafts, from the prompt's last MTP row */
                if ((decider && (rc = rt_spec_draft(&smp, row, V, 1, io.q, &draft, &q, err))) ||
                    (rc = share_ints(g, &draft, 1, 1, err)) ||
                    (N > 1 && (t1 = fu_now_s(), mem_prefill = dev_used_gib(),
                               rc = run_speculative(g, &io, res, out_rank, &smp, draft, q, &drafts,
                                                    &accepted, err))))
                    goto out;
                break;
            }
        }
        if (N == 1)
            mem_prefill = dev_used_gib();
        if (out_rank) { /* what a user measures a deployment by */
            double t2 = fu_now_s(), pre = (N > 1 ? t1 : t2) - t0, dec = N > 1 ? t2 - t1 : 0;
            char sp[96] = "";
            if (spec)
                snprintf(sp, sizeof sp, "; speculative: %zu steps, %zu drafts accepted (%.0f%%)",
                         drafts, accepted, drafts ? 100.0 * accepted / drafts : 0.0);
            fprintf(stderr,
                    "dsr1-serve: rank %d: prefill of %zu tokens %.1f ms (%zu chunk%s, device "
                    "memory in use %.2f GiB); %zu decode steps %.1f ms (%.1f tokens/s; CUDA "
                    "graphs %s, %lu captured, %lu replayed%s)\n",
                    g->comm ? g->comm->rank : 0, n0, pre * 1e3, chunks, chunks == 1 ? "" : "s",
                    mem_prefill, N - 1, dec * 1e3, dec > 0 ? (N - 1) / dec : 0.0,
                    g->cm->graphs ? "on" : "off", g->cm->g_captures, g->cm->g_replays, sp);
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
    free(io.mlog);
    free(io.q);
    free(io.scr);
    free(io.seq);
    return rc;
}

extern "C" int rt_cuda_generate(const rt_generate_args *a, rt_generate_result *res,
                                dsr1_err *err)
{
    memset(res, 0, sizeof *res);
    if (!a->prompt || a->n_prompt == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "empty prompt");
    if (a->max_new_tokens < 1)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "max_new_tokens must be >= 1");
    int src = rt_spec_check(a, err);
    if (src)
        return src;
    if (a->attn == RT_ATTN_NAIVE)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "the CUDA backend runs absorbed attention only (--attn auto|absorb)");
    mf_manifest *m = NULL;
    int rc = mf_load(&m, a->manifest_path, err);
    if (rc)
        return rc;
    char *dir = strdup(a->manifest_path);
    rt_boot *boot = NULL;
    cm_model *cm = NULL;
    rt_comm *comm = NULL;
    cudaStream_t st = NULL;
    int32_t *dtok = NULL;
    char **expect = NULL;
    double timeout = a->timeout_s > 0 ? a->timeout_s : 600;
    int ndev = 0; /* GPUs this process sees */
    if (!dir) {
        mf_free(m);
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");

    rt_ident id;
    {
        rt_ident_flags fl;
        rt_ident_flags_init(&fl);
        fl.rank = a->rank, fl.world_size = a->world_size, fl.local_rank = a->local_rank;
        fl.gpus_per_node = a->gpus_per_node, fl.master_port = a->master_port;
        fl.master_addr = a->master_addr;
        if ((rc = rt_ident_resolve(&id, &fl, NULL, NULL, (int)m->plan.world_size, err)))
            goto out;
    }
    if ((uint32_t)id.world_size != m->plan.world_size) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_ARG, 0,
                          "this process says world size %d (%s), the manifest's plan has %u ranks",
                          id.world_size, rt_ident_source_name(id.source), m->plan.world_size);
        goto out;
    }
    {
        cudaError_t e = cudaGetDeviceCount(&ndev);
        if (e != cudaSuccess || ndev == 0) {
            rc = dsr1_err_set(err, DSR1_E_IO, RT_ERR_NO_CUDA, 0, "rank %d: no CUDA device (%s)",
                              id.rank, cudaGetErrorString(e));
            goto out;
        }
        if (id.local_rank >= ndev) {
            rc = dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                              "rank %d: local rank %d but this node shows %d GPU(s)", id.rank,
                              id.local_rank, ndev);
            goto out;
        }
        if ((e = cudaSetDevice(id.local_rank)) != cudaSuccess ||
            (e = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)) != cudaSuccess ||
            (e = cudaMalloc((void **)&dtok, 64)) != cudaSuccess) {
            rc = cuda_fail(err, e, "device setup");
            goto out;
        }
    }
    {
        rt_boot_self self;
        memset(&self, 0, sizeof self);
        self.rank = id.rank;
        self.world_size = id.world_size;
        hx128 d;
        if ((rc = hx_file(a->manifest_path, &d, err)))
            goto out;
        for (int i = 0; i < 8; i++) {
            self.digest[i] = (uint8_t)(d.hi >> (56 - 8 * i));
            self.digest[8 + i] = (uint8_t)(d.lo >> (56 - 8 * i));
        }
        snprintf(self.plan, sizeof self.plan, "tp=%u ep=%u pp=%u dp=%u world=%u dtype=%s mtp=%d",
                 m->plan.tp, m->plan.ep, m->plan.pp, m->plan.dp, m->plan.world_size,
                 m->plan.dtype, m->plan.mtp);
        shard_identity(m, (uint32_t)id.rank, self.shard, sizeof self.shard);
        uint8_t uid[RT_BOOT_ID_BYTES] = {0};
        rt_boot_opts bo;
        memset(&bo, 0, sizeof bo);
        bo.addr = id.master_addr;
        bo.port = id.master_port;
        bo.timeout_ms = (int)(timeout * 1000);
        bo.linger_ms = -1;
        if (id.rank == 0) {
            if (id.world_size > 1 && (rc = rt_comm_nccl_unique_id(uid, err)))
                goto out;
            expect = (char **)calloc((size_t)id.world_size, sizeof *expect);
            for (int r = 0; expect && r < id.world_size; r++)
                if ((expect[r] = (char *)malloc(RT_BOOT_STR_MAX)))
                    shard_identity(m, (uint32_t)r, expect[r], RT_BOOT_STR_MAX);
            bo.unique_id = uid;
            bo.expect_shard = (const char *const *)expect;
        }
        if ((rc = rt_boot_join(&boot, &self, &bo, uid, err)))
            goto out;
        rt_upload_opts uo;
        rt_upload_opts_init(&uo);
        /* DSR1_UPLOAD: copy (from the mapping; default), pread or register */
        const char *meth = getenv("DSR1_UPLOAD");
        if (meth && strcmp(meth, "register") == 0)
            uo.method = RT_UP_REGISTER;
        else if (meth && strcmp(meth, "pread") == 0)
            uo.method = RT_UP_PREAD;
        /* this rank's share of the host's cores (runtime/cores.h), split between the
         * upload and, with --verify full, the hash; DSR1_UPLOAD_THREADS and
         * DSR1_HASH_THREADS override */
        int share = rt_core_share(omp_get_num_procs(),
                                  rt_local_ranks(id.gpus_per_node, getenv("LOCAL_WORLD_SIZE"),
                                                 id.world_size, ndev));
        rt_load_threads(share, a->verify_full, &uo.threads, &uo.hash_threads);
        const char *ut = getenv("DSR1_UPLOAD_THREADS"), *ht = getenv("DSR1_HASH_THREADS");
        if (ut && atoi(ut) > 0)
            uo.threads = atoi(ut);
        if (ht && atoi(ht) > 0)
            uo.hash_threads = atoi(ht);
        double t_load = fu_now_s();
        rc = cm_load(&cm, m, dir, id.rank, a->n_prompt + (size_t)a->max_new_tokens, &uo,
                     a->verify_full, st, err);
        if (!rc && (a->keep_mtp_logits || a->speculative) && cm->h->has_head && !cm->has_mtp)
            rc = dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                              "%s: the shards hold no MTP layer (make them with dsr1-shard --mtp)",
                              a->speculative ? "--speculative" : "--mtp-logits-out");
        t_load = fu_now_s() - t_load;
        dsr1_err ferr;
        dsr1_err_clear(&ferr);
        int frc = rt_boot_fence(boot, "loaded", rc == 0, rc ? err->msg : NULL,
                                (int)(timeout * 1000), &ferr);
        if (rc)
            goto out; /* our own error is the root cause */
        if (frc) {
            rc = frc;
            *err = ferr;
            goto out;
        }
        /* one line per rank: what users watch a start-up for */
        fprintf(stderr,
                "dsr1-serve: rank %d: %.2f GB shard loaded in %.2f s (upload %.1f GB/s, %d "
                "threads%s)\n",
                id.rank, cm->arena_bytes / 1e9, t_load,
                cm->upload_s > 0 ? cm->arena_bytes / cm->upload_s / 1e9 : 0.0, uo.threads,
                a->verify_full ? ", every tensor hashed alongside" : "");
        if (id.world_size > 1 &&
            (rc = rt_comm_nccl_create(&comm, id.rank, (int)m->plan.tp, (int)m->plan.pp,
                                      (int)m->plan.dp, uid, st, timeout, err)))
            goto out;
    }
    {
        /* Waits on the GPU and NCCL poll with the timeout, but a blocking NCCL call
         * (a connection NCCL makes lazily, a full queue) cannot be polled: a progress
         * deadline per step, a little past the timeout so the polled waits, with their
         * more precise messages, report first. */
        double wd_s = timeout + 10;
        /* CUDA graphs for one-token decode steps (cm_set_graphs): on for a one-rank
         * plan. With several ranks the graph holds the NCCL collectives too: run on 2
         * GPUs (same logits, clean exit), but how a peer's death mid-replay is handled
         * is not yet tested there, so DSR1_CUDA_GRAPHS=1 turns it on. */
        const char *cgv = getenv("DSR1_CUDA_GRAPHS");
        cm_set_graphs(cm, cgv ? strcmp(cgv, "1") == 0 : id.world_size == 1);
        if (a->attn == RT_ATTN_ABSORB) /* --attn absorb: the prompt too */
            cm->prefill_min = (size_t)-1;
        gen_state g = {a, cm, comm, st, dtok, NULL, wd_s};
        if (comm) /* exit 3: DSR1_E_IO, as the polled timeouts; run() names each step */
            g.wd = rt_watchdog_arm(wd_s, 3, "rank %d: generation made no progress within "
                                   "%.0f s; exiting", comm->rank, wd_s);
        rt_model *mdl = cm->h;
        int out_rank = mdl->has_head && mdl->tp_rank == 0 &&
                       (comm ? comm->dp_rank == 0 : 1);
        rc = run(&g, res, out_rank, err);
        rt_watchdog_disarm(g.wd);
        if (rc && comm)
            rt_comm_abort(comm, err->msg);
        dsr1_err ferr;
        dsr1_err_clear(&ferr);
        int frc = rt_boot_fence(boot, "done", rc == 0, rc ? err->msg : NULL,
                                (int)(timeout * 1000), &ferr);
        if (!rc && frc) {
            rc = frc;
            *err = ferr;
        }
    }
out:
    if (rc)
        rt_generate_result_free(res);
    /* After an abort, a collective stuck on a dead peer can keep the GPU teardown
     * below from returning: bound it, ending with this rank's own error. */
    rt_watchdog *wd = rc && comm ? rt_watchdog_arm(10, dsr1_err_exit_code(err), "%s", err->msg)
                                 : NULL;
    /* a decode graph holds NCCL work of the communicators: release it first (2 x H200:
     * with the communicators freed before it the ranks did not exit) */
    if (cm)
        cm_set_graphs(cm, 0);
    rt_comm_free(comm);
    cm_free(cm);
    rt_boot_close(boot);
    if (expect) {
        for (int r = 0; r < id.world_size; r++)
            free(expect[r]);
        free(expect);
    }
    cudaFree(dtok);
    if (st)
        cudaStreamDestroy(st);
    free(dir);
    mf_free(m);
    rt_watchdog_disarm(wd);
    return rc;
}
