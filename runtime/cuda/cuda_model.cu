/* cm: the DeepSeek-V3 forward pass of one rank on a GPU (see cuda_model.h). */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_model.h"
#include "cuda_util.cuh"

extern "C" {
#include "comm_nccl.h"
#include "cores.h"
#include "ld.h"
#include "st.h"
}

static int cu_err(dsr1_err *err, int status, const char *what)
{
    return dsr1_err_set(err, DSR1_E_IO, RT_ERR_MODEL, 0, "cuda: %s: %s", what,
                        kc_strerror(status));
}

#define CUK(call, what)                                   \
    do {                                                  \
        int _s = (int)(call);                             \
        if (_s)                                           \
            return cu_err(err, _s, what);                 \
    } while (0)

/* ---- device mirror of the host views ---- */

static int dev_w(cm_model *m, const k_weight *hw, k_weight *dw, const char *what, dsr1_err *err)
{
    *dw = *hw;
    if (!hw->data)
        return 0;
    const char *p = (const char *)hw->data, *s = (const char *)hw->scale;
    if (p < m->base || p >= m->base + m->arena_bytes || (s && (s < m->base || s >= m->base + m->arena_bytes)))
        return dsr1_err_set(err, DSR1_E_INTERNAL, RT_ERR_MODEL, 0,
                            "cuda: weight %s does not point into the shard mapping", what);
    dw->data = m->arena + (p - m->base);
    dw->scale = s ? (const float *)(m->arena + (s - m->base)) : NULL;
    return 0;
}

static int dev_vec(const float *h, size_t n, float **out, dsr1_err *err)
{
    *out = NULL;
    if (!h)
        return 0;
    cudaError_t e = cudaMalloc((void **)out, n * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemcpy(*out, h, n * sizeof(float), cudaMemcpyHostToDevice);
    return e == cudaSuccess ? 0 : cu_err(err, (int)e, "norm vector");
}

typedef struct hash_job {
    const ld_shard *s;
    int threads, bad, rc;
    dsr1_err err;
    char first[512];
} hash_job;

static void hash_bad(void *ctx, const mf_tensor *t, const char *msg)
{
    hash_job *j = (hash_job *)ctx;
    if (!j->first[0])
        snprintf(j->first, sizeof j->first, "tensor %s: %s", t->name, msg);
}

static void *hash_main(void *p)
{
    hash_job *j = (hash_job *)p;
    omp_set_num_threads(j->threads);
    dsr1_err_clear(&j->err);
    j->rc = ld_hash_check(j->s, hash_bad, j, &j->err);
    return NULL;
}

/* Tokens from which a step's attention runs decompressed (kc_mla_prefill) instead of
 * absorbed over the latent cache: env DSR1_MLA_PREFILL_MIN, 0 = never. */
static size_t prefill_min_env(void)
{
    const char *e = getenv("DSR1_MLA_PREFILL_MIN");
    long v = e && *e ? atol(e) : CM_PREFILL_MIN;
    return v > 0 ? (size_t)v : (size_t)-1;
}

/* GiB free on the device, for out-of-memory messages (clears the failed call's error). */
static double free_gib(void)
{
    size_t fr = 0, tot = 0;
    cudaGetLastError();
    return cudaMemGetInfo(&fr, &tot) == cudaSuccess ? fr / 1073741824.0 : 0.0;
}

/* The device views of one decoder layer (dense or MoE) of the host model. */
static int map_layer(cm_model *m, const rt_layer *hl, cm_layer *L, dsr1_err *err)
{
    rt_model *h = m->h;
    size_t H = h->hidden;
    int rc;
    L->h = hl;
    if ((rc = dev_w(m, &hl->q_a, &L->q_a, "q_a", err)) ||
        (rc = dev_w(m, &hl->q_b, &L->q_b, "q_b", err)) ||
        (rc = dev_w(m, &hl->kv_a, &L->kv_a, "kv_a", err)) ||
        (rc = dev_w(m, &hl->kv_b, &L->kv_b, "kv_b", err)) ||
        (rc = dev_w(m, &hl->o, &L->o, "o_proj", err)) ||
        (rc = dev_vec(hl->in_norm, H, &L->in_norm, err)) ||
        (rc = dev_vec(hl->post_norm, H, &L->post_norm, err)) ||
        (rc = dev_vec(hl->q_a_norm, h->q_lora, &L->q_a_norm, err)) ||
        (rc = dev_vec(hl->kv_a_norm, h->kv_lora, &L->kv_a_norm, err)))
        return rc;
    if (!hl->moe) { /* a dense MLP */
        if ((rc = dev_w(m, &hl->gate, &L->gate, "gate", err)) ||
            (rc = dev_w(m, &hl->up, &L->up, "up", err)))
            return rc;
        return dev_w(m, &hl->down, &L->down, "down", err);
    }
    if ((rc = dev_w(m, &hl->router, &L->router, "router", err)) ||
        (rc = dev_vec(hl->bias, h->rcfg.n_experts, &L->bias, err)))
        return rc;
    if (h->cfg.n_shared_experts &&
        ((rc = dev_w(m, &hl->sh_gate, &L->sh_gate, "shared gate", err)) ||
         (rc = dev_w(m, &hl->sh_up, &L->sh_up, "shared up", err)) ||
         (rc = dev_w(m, &hl->sh_down, &L->sh_down, "shared down", err))))
        return rc;
    size_t n = hl->n_experts;
    if (n) {
        for (size_t j = 1; j < n; j++)
            if (hl->expert_id[j] != hl->expert_id[0] + (int32_t)j)
                return dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                                    "layer %d: local experts are not a contiguous id range; "
                                    "the CUDA backend needs one",
                                    hl->index);
        L->e0 = (size_t)hl->expert_id[0];
        k_weight *g = (k_weight *)calloc(3 * n, sizeof *g), *u = g + n, *d = g + 2 * n;
        if (!g)
            return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
        for (size_t j = 0; j < n && !rc; j++)
            rc = dev_w(m, &hl->e_gate[j], &g[j], "expert gate", err) ||
                 dev_w(m, &hl->e_up[j], &u[j], "expert up", err) ||
                 dev_w(m, &hl->e_down[j], &d[j], "expert down", err);
        /* the shared expert (split over TP) joins the routed launches when its
         * type allows; else it runs as its own MLP */
        k_weight sh[3] = {L->sh_gate, L->sh_up, L->sh_down};
        int with_sh = h->cfg.n_shared_experts && !hl->sh_whole;
        int krc = rc ? 0 : kc_moe_prepare(&L->moe, n, g, u, d, with_sh ? sh : NULL);
        if (!rc && krc && with_sh)
            krc = kc_moe_prepare(&L->moe, n, g, u, d, NULL);
        free(g);
        if (rc)
            return rc;
        if (krc)
            return dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                                "layer %d: experts have mixed shapes/types or rows not a "
                                "multiple of 16 bytes (%s)",
                                hl->index, kc_strerror(krc));
    }
    return 0;
}

int cm_load(cm_model **out, const mf_manifest *mf, const char *dir, int rank, size_t cap,
            const rt_upload_opts *up, int verify_full, cudaStream_t st, dsr1_err *err)
{
    *out = NULL;
    cm_model *m = (cm_model *)calloc(1, sizeof *m);
    if (!m)
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
    m->st = st;
    int rc = rt_model_load(&m->h, mf, dir, (uint32_t)rank, 0, err);
    if (rc) {
        free(m);
        return rc;
    }
    const st_file *f = ld_file((const ld_shard *)m->h->shard);
    m->base = (const char *)st_base(f);
    m->arena_bytes = st_file_size(f);
    cudaError_t e = cudaSuccess;
    {
        /* past the trained context the positions mean nothing (as the CPU backend):
         * refused before the cache is sized for them */
        uint32_t mp = m->h->cfg.max_position_embeddings;
        if (mp && cap > mp) {
            rc = dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                              "%zu positions (prompt + --max-new-tokens) exceed the model's "
                              "context (max_position_embeddings %u)", cap, mp);
            goto fail;
        }
        /* DSR1_MLA_FLASH: the fused prefill attention 0 never, 1 where its grid is wide
         * enough (default), 2 always (tests) */
        const char *fl = getenv("DSR1_MLA_FLASH");
        if (fl && *fl)
            kc_mla_prefill_set_flash(atoi(fl));
    }
    e = cudaMalloc((void **)&m->arena, m->arena_bytes);
    if (e != cudaSuccess) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0,
                          "cuda: cannot allocate %.2f GiB for the shard of rank %d: %s",
                          m->arena_bytes / 1073741824.0, rank, cudaGetErrorString(e));
        goto fail;
    }
    {
        rt_upload_opts uo;
        if (up)
            uo = *up;
        else
            rt_upload_opts_init(&uo);
        int u, h; /* unset counts: one rank on the host */
        rt_load_threads(rt_core_share(omp_get_num_procs(), 1), verify_full, &u, &h);
        if (uo.threads <= 0)
            uo.threads = u;
        if (uo.hash_threads <= 0)
            uo.hash_threads = h;
        uo.stream = st;
        if (uo.method == RT_UP_PREAD) { /* the mapping's file: the arena is the whole file */
            uo.path = st_path(f);
            uo.file_off = 0;
        }
        /* full hashing reads the same pages as the upload, on other cores */
        hash_job hj;
        memset(&hj, 0, sizeof hj);
        hj.s = (const ld_shard *)m->h->shard;
        hj.threads = uo.hash_threads;
        pthread_t th;
        int hashing = verify_full && pthread_create(&th, NULL, hash_main, &hj) == 0;
        if (verify_full && !hashing) {
            rc = dsr1_err_set(err, DSR1_E_IO, RT_ERR_MODEL, 0, "cannot start the hash thread");
            goto fail;
        }
        rt_upload_stats us;
        rc = rt_upload(m->arena, m->base, m->arena_bytes, &uo, &us, err);
        m->upload_s = us.seconds;
        if (hashing) {
            pthread_join(th, NULL);
            if (!rc && hj.rc < 0)
                rc = hj.rc, *err = hj.err;
            else if (!rc && hj.rc > 0)
                rc = dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                                  "%s: %d tensor(s) differ from the manifest; first: %s",
                                  ld_path((const ld_shard *)m->h->shard), hj.rc, hj.first);
        }
        if (rc)
            goto fail;
    }
    {
        rt_model *h = m->h;
        size_t H = h->hidden;
        if (h->has_embed && (rc = dev_w(m, &h->embed, &m->embed, "embed", err)))
            goto fail;
        if (h->has_head && ((rc = dev_w(m, &h->lm_head, &m->lm_head, "lm_head", err)) ||
                            (rc = dev_vec(h->final_norm, H, &m->final_norm, err))))
            goto fail;
        m->n_layers = h->n_layers;
        m->L = (cm_layer *)calloc(m->n_layers + 1, sizeof *m->L);
        if (!m->L) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < m->n_layers; i++)
            if ((rc = map_layer(m, &h->layers[i], &m->L[i], err)))
                goto fail;
        /* the MTP module (shards made with --mtp, last stage): its decoder layer is
         * L[n_layers], its cache slot n_layers */
        const rt_layer *t = h->mtp;
        if (t && h->has_head &&
            ((rc = map_layer(m, t, &m->L[m->n_layers], err)) ||
             (rc = dev_vec(t->enorm, H, &m->enorm, err)) ||
             (rc = dev_vec(t->hnorm, H, &m->hnorm, err)) ||
             (rc = dev_vec(t->head_norm, H, &m->head_norm, err)) ||
             (rc = dev_w(m, &t->eh_proj, &m->eh_proj, "eh_proj", err)) ||
             (rc = dev_w(m, &t->mtp_embed, &m->mtp_embed, "mtp embed", err)) ||
             (rc = dev_w(m, &t->mtp_head, &m->mtp_head, "mtp head", err))))
            goto fail;
        m->has_mtp = t && h->has_head;
    }
    if ((rc = kc_ctx_create(&m->kc, st))) {
        rc = cu_err(err, rc, "cuBLASLt context");
        goto fail;
    }
    m->cap = cap;
    m->prefill_min = prefill_min_env();
    m->c = (float **)calloc(m->n_layers + 1, sizeof(float *));
    m->kpe = (float **)calloc(m->n_layers + 1, sizeof(float *));
    if (!m->c || !m->kpe) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < m->n_layers + (size_t)m->has_mtp; i++)
        if (cudaMalloc((void **)&m->c[i], cap * m->h->kv_lora * sizeof(float)) != cudaSuccess ||
            cudaMalloc((void **)&m->kpe[i], cap * m->h->dr * sizeof(float)) != cudaSuccess) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0,
                              "cuda: no room for a latent KV cache of %zu tokens (%.2f GiB for %zu "
                              "layers; %.2f GiB of the GPU free after the weights): lower "
                              "--max-new-tokens or the prompt, or shard over more pipeline stages",
                              cap, (double)cap * (m->h->kv_lora + m->h->dr) * 4 *
                                       (m->n_layers + (size_t)m->has_mtp) / 1073741824.0,
                              m->n_layers + (size_t)m->has_mtp, free_gib());
            goto fail;
        }
    {
        int32_t *ph = (int32_t *)malloc((cap ? cap : 1) * sizeof(int32_t));
        if (!ph || cudaMalloc((void **)&m->pos, (cap ? cap : 1) * sizeof(int32_t)) != cudaSuccess) {
            free(ph);
            rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
            goto fail;
        }
        if (cudaMalloc((void **)&m->dstep, 2 * sizeof(int32_t)) != cudaSuccess) {
            free(ph);
            rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < cap; i++)
            ph[i] = (int32_t)i;
        cudaMemcpy(m->pos, ph, cap * sizeof(int32_t), cudaMemcpyHostToDevice);
        free(ph);
    }
    *out = m;
    return 0;
fail:
    cm_free(m);
    return rc;
}

void cm_free(cm_model *m)
{
    if (!m)
        return;
    if (m->st)
        cudaStreamSynchronize(m->st);
    for (size_t i = 0; m->L && i <= m->n_layers; i++) {
        cm_layer *L = &m->L[i];
        cudaFree(L->in_norm), cudaFree(L->post_norm), cudaFree(L->q_a_norm);
        cudaFree(L->kv_a_norm), cudaFree(L->bias);
        kc_moe_free(L->moe);
    }
    free(m->L);
    cudaFree(m->enorm), cudaFree(m->hnorm), cudaFree(m->head_norm), cudaFree(m->hid);
    for (size_t i = 0; i <= m->n_layers; i++) {
        if (m->c)
            cudaFree(m->c[i]);
        if (m->kpe)
            cudaFree(m->kpe[i]);
    }
    free(m->c);
    free(m->kpe);
    if (m->gexec)
        cudaGraphExecDestroy(m->gexec);
    cudaFree(m->dstep);
    cudaFree(m->pos);
    cudaFree(m->pool);
    cudaFree(m->final_norm);
    cudaFree(m->arena);
    kc_ctx_free(m->kc);
    rt_model_free(m->h);
    free(m);
}

/* ---- scratch ---- */

void cm_scratch_reset(cm_model *m) { m->pool_used = 0; }

void *cm_scratch(cm_model *m, size_t n)
{
    n = (n + 255) & ~(size_t)255;
    if (m->pool_used + n > m->pool_cap)
        return NULL;
    void *p = m->pool + m->pool_used;
    m->pool_used += n;
    return p;
}

int cm_reserve(cm_model *m, size_t T, size_t nlog, dsr1_err *err)
{
    rt_model *h = m->h;
    size_t H = h->hidden, Hl = h->heads, R = h->kv_lora, P = h->dr, dq = h->dn + h->dr;
    size_t E = h->rcfg.n_experts ? h->rcfg.n_experts : 1, K = h->rcfg.top_k ? h->rcfg.top_k : 1;
    size_t I = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        const rt_layer *L = h->layers + i;
        I = L->gate.rows > I ? L->gate.rows : I;
        I = L->sh_gate.rows > I ? L->sh_gate.rows : I;
    }
    size_t Vl = h->has_head ? h->lm_head.rows : 0, tp = (size_t)h->tp;
    /* per token: residual, norms, projections, router, experts' hidden; the absorbed
     * attention's latent q and output only for steps that take that path; the head's
     * rows (final norm, local and gathered logits) only for the rows asked for */
    size_t lat = T < m->prefill_min ? 2 * Hl * R : 0;
    size_t per = 4 * (4 * H + (m->has_mtp ? 4 * H : 0) + h->q_lora + Hl * dq + (R + P) + lat +
                      Hl * h->dv + E + 2 * K + 3 * I + 1);
    size_t need = T * per + nlog * 4 * (H + Vl * (1 + tp)) + 64 * 256 + 4096;
    if (need <= m->pool_cap)
        return 0;
    cudaStreamSynchronize(m->st);
    cudaFree(m->pool);
    m->pool = NULL;
    m->pool_cap = 0;
    cudaError_t e = cudaMalloc((void **)&m->pool, need);
    if (e != cudaSuccess) {
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0,
                            "cuda: no room for %.2f GiB of activations for a pass of %zu tokens "
                            "(%.2f GiB free): a smaller --prefill-chunk bounds them",
                            need / 1073741824.0, T, free_gib());
    }
    m->pool_cap = need;
    return 0;
}

static int tp_allreduce(cm_model *m, rt_comm *c, float *buf, size_t n, dsr1_err *err)
{
    if (m->h->tp == 1 || !c)
        return 0;
    return rt_comm_allreduce_sum_f32(c, RT_GROUP_TP, buf, n, err);
}

#define NEED(p)                                                                   \
    do {                                                                          \
        if (!(p))                                                                 \
            return dsr1_err_set(err, DSR1_E_INTERNAL, RT_ERR_MODEL, 0,            \
                                "cuda: activation scratch exhausted (%s)", #p);   \
    } while (0)


/* out (=, or += when accumulate) o_proj of the attention of x */
static int attention(cm_model *m, cm_layer *L, size_t li, const float *x, size_t T, size_t pos0,
                     float *out, int accumulate, dsr1_err *err)
{
    rt_model *h = m->h;
    size_t H = h->hidden, R = h->kv_lora, P = h->dr, dn = h->dn, dv = h->dv, Hl = h->heads;
    size_t dq = dn + P, S = pos0 + T, ql = h->q_lora;
    float eps = (float)h->cfg.rms_norm_eps;
    if (S > m->cap || (m->dpos && (m->s_plan > m->cap || m->s_plan < T)))
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "sequence of %zu tokens exceeds the KV cache of %zu", S, m->cap);
    float *qa = (float *)cm_scratch(m, T * ql * 4), *q = (float *)cm_scratch(m, T * Hl * dq * 4);
    float *kva = (float *)cm_scratch(m, T * (R + P) * 4), *o = (float *)cm_scratch(m, T * Hl * dv * 4);
    NEED(qa && q && kva && o);
    /* device positions (graphs): the cache rows and the key range are found on the
     * device; the splits are planned for s_plan keys */
    const int dyn = m->dpos != NULL;
    float *cc = m->c[li] + (dyn ? 0 : pos0 * R), *kp = m->kpe[li] + (dyn ? 0 : pos0 * P);
    const int32_t *pos = dyn ? m->dpos : m->pos + pos0;
    size_t Sb = dyn ? m->s_plan : S, p0b = dyn ? m->s_plan - T : pos0;
    cudaStream_t st = m->st;
    CUK(kc_gemm_pair(m->kc, x, H, T, &L->q_a, qa, ql, &L->kv_a, kva, R + P), "q_a/kv_a_proj");
    CUK(kc_rmsnorm(qa, ql, L->q_a_norm, qa, ql, T, ql, eps, st), "q_a_layernorm");
    CUK(kc_gemm(m->kc, qa, ql, T, &L->q_b, q, Hl * dq, 0, 0), "q_b_proj");
    CUK(kc_mla_prep(kva, R + P, R, L->kv_a_norm, eps, cc, R, kp, P, q, Hl * dq, dq, dn, Hl,
                    &h->rope, pos, T, dyn ? pos : NULL, st),
        "kv_a_layernorm and rope");
    if (T >= m->prefill_min && !dyn) { /* decompressed attention (attn_prefill.cu) */
        CUK(kc_mla_prefill(m->kc, q, Hl * dq, m->c[li], R, m->kpe[li], P, &L->kv_b, o, Hl * dv, T,
                           S, Hl, dn, dv, R, P, pos0, h->softmax_scale),
            "mla prefill attention");
        CUK(kc_gemm(m->kc, o, Hl * dv, T, &L->o, out, H, accumulate, 0), "o_proj");
        return 0;
    }
    float *qlat = (float *)cm_scratch(m, T * Hl * R * 4), *olat = (float *)cm_scratch(m, T * Hl * R * 4);
    NEED(qlat && olat);
    CUK(kc_mla_absorb_q(q, Hl * dq, dq, T, Hl, dn, dv, &L->kv_b, qlat, st), "absorb q");
    CUK(kc_mla_attn(qlat, q + dn, Hl * dq, dq, m->c[li], R, m->kpe[li], P, olat, T, Sb, Hl, R, P,
                    p0b, h->softmax_scale, dyn ? pos : NULL, st),
        "mla attention");
    CUK(kc_mla_absorb_v(olat, T, Hl, dn, dv, &L->kv_b, o, Hl * dv, st), "absorb v");
    CUK(kc_gemm(m->kc, o, Hl * dv, T, &L->o, out, H, accumulate, 0), "o_proj");
    return 0;
}

static int mlp(cm_model *m, const k_weight *g, const k_weight *u, const k_weight *d,
               const float *x, size_t T, float *out, int accumulate, dsr1_err *err)
{
    size_t H = m->h->hidden, I = g->rows;
    float *gb = (float *)cm_scratch(m, T * I * 4);
    NEED(gb);
    CUK(kc_gemm_glu(m->kc, x, H, T, g, u, gb, I), "mlp gate/up");
    CUK(kc_gemm(m->kc, gb, I, T, d, out, H, accumulate, 0), "mlp down");
    return 0;
}

/* out (=, or += when accumulate) the feed-forward of x */
static int ffn(cm_model *m, cm_layer *L, const float *x, size_t T, float *out, int accumulate,
               dsr1_err *err)
{
    rt_model *h = m->h;
    const rt_layer *hl = L->h;
    size_t H = h->hidden;
    if (!hl->moe)
        return mlp(m, &L->gate, &L->up, &L->down, x, T, out, accumulate, err);
    size_t E = h->rcfg.n_experts, K = h->rcfg.top_k;
    float *lr = (float *)cm_scratch(m, T * E * 4), *w = (float *)cm_scratch(m, T * K * 4);
    int32_t *idx = (int32_t *)cm_scratch(m, T * K * 4);
    NEED(lr && w && idx);
    CUK(kc_gemm(m->kc, x, H, T, &L->router, lr, E, 0, 0), "router gate");
    int rc = kc_router(&h->rcfg, lr, L->bias, T, idx, w, m->st);
    if (rc > 0)
        return cu_err(err, rc, "router");
    if (rc)
        return dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                            "cuda router: config unsupported (%u experts, %u groups): %s",
                            h->rcfg.n_experts, h->rcfg.n_group, kc_strerror(rc));
    m->dbg_idx = idx;
    m->dbg_T = T;
    /* kc_moe overwrites out when not accumulating (no memset launch between the router
     * and the experts); a rank without local experts clears it */
    if (L->moe)
        CUK(kc_moe(m->kc, L->moe, x, H, T, idx, w, K, L->e0, out, H, accumulate), "routed experts");
    else if (!accumulate)
        CUK(cudaMemsetAsync(out, 0, T * H * 4, m->st), "memset");
    if (h->cfg.n_shared_experts && !hl->sh_whole && !kc_moe_has_shared(L->moe, T))
        return mlp(m, &L->sh_gate, &L->sh_up, &L->sh_down, x, T, out, 1, err);
    return 0;
}

int cm_layer_forward(cm_model *m, rt_comm *c, size_t li, float *hb, size_t T, size_t pos0,
                     dsr1_err *err)
{
    rt_model *h = m->h;
    cm_layer *L = &m->L[li];
    size_t H = h->hidden;
    float eps = (float)h->cfg.rms_norm_eps;
    size_t mark = m->pool_used;
    float *xn = (float *)cm_scratch(m, T * H * 4);
    NEED(xn);
    int rc;
    /* Residual adds ride on the output projections: TP rank 0 accumulates its partial
     * onto the residual stream hb, the other ranks overwrite hb with theirs, and the
     * all-reduce of hb gives h + sum of partials on every rank (no add kernels, no
     * extra buffer; xn holds the normalized input the partials need). */
    int acc = h->tp_rank == 0 || !c; /* no comm (a rank benchmarked alone): keep h */
    CUK(kc_rmsnorm(hb, H, L->in_norm, xn, H, T, H, eps, m->st), "input_layernorm");
    if ((rc = attention(m, L, li, xn, T, pos0, hb, acc, err)) ||
        (rc = tp_allreduce(m, c, hb, T * H, err)))
        goto out;
    CUK(kc_rmsnorm(hb, H, L->post_norm, xn, H, T, H, eps, m->st), "post_attention_layernorm");
    if ((rc = ffn(m, L, xn, T, hb, acc, err)) || (rc = tp_allreduce(m, c, hb, T * H, err)))
        goto out;
    if (L->h->sh_whole && h->cfg.n_shared_experts &&
        (rc = mlp(m, &L->sh_gate, &L->sh_up, &L->sh_down, xn, T, hb, 1, err)))
        goto out;
out:
    m->pool_used = mark;
    if (rc && err)
        dsr1_err_prefix(err, "layer %d", L->h->index);
    return rc;
}

int cm_wait(cm_model *m, rt_comm *c, dsr1_err *err)
{
    if (c && strcmp(c->ops->name, "nccl") == 0)
        return rt_comm_nccl_wait(c, err);
    cudaError_t e = cudaStreamSynchronize(m->st);
    return e == cudaSuccess ? 0 : cu_err(err, (int)e, "stream");
}

void cm_set_device_positions(cm_model *m, const int32_t *dpos, size_t s_plan)
{
    m->dpos = dpos;
    m->s_plan = s_plan;
}

void cm_set_graphs(cm_model *m, int on)
{
    if (m->gexec)
        cudaGraphExecDestroy(m->gexec);
    m->gexec = NULL;
    m->graphs = on;
}

/* lm_head (or the MTP head) of n normed rows, all-gathered over TP into *all as
 * [tp][n][Vl]. */
static int head_rows(cm_model *m, rt_comm *c, const k_weight *w, const float *xn, size_t n,
                     float **all, dsr1_err *err)
{
    size_t Vl = w->rows, tp = (size_t)m->h->tp;
    int rc;
    float *loc = (float *)cm_scratch(m, n * Vl * 4);
    float *a = tp > 1 ? (float *)cm_scratch(m, tp * n * Vl * 4) : loc;
    NEED(loc && a);
    CUK(kc_gemm(m->kc, xn, m->h->hidden, n, w, loc, Vl, 0, 0), "lm_head");
    if (tp > 1 && (rc = rt_comm_allgather(c, RT_GROUP_TP, loc, n * Vl * 4, a, err)))
        return rc;
    *all = a;
    return 0;
}

/* Embedding (ids on the device) through the layers; on the last stage with want, the
 * final norm and lm_head of rows [row0, T), all-gathered over TP into *all as
 * [tp][T - row0][Vl]. Enqueues only: the caller waits. */
static int forward_body(cm_model *m, rt_comm *c, const int32_t *dids, size_t T, size_t pos0,
                        size_t row0, int want, float **all, dsr1_err *err)
{
    rt_model *h = m->h;
    size_t H = h->hidden;
    int rc;
    float *hb = (float *)cm_scratch(m, T * H * 4);
    NEED(hb);
    if (h->has_embed) {
        CUK(kc_embed(&m->embed, h->embed_row0, dids, T, hb, H, m->st), "embed");
        if ((rc = tp_allreduce(m, c, hb, T * H, err)))
            return rc;
    } else if ((rc = rt_comm_recv(c, hb, T * H * 4,
                                  rt_comm_group_member(c, RT_GROUP_PP, h->pp_stage - 1), err))) {
        return rc;
    }
    for (size_t i = 0; i < m->n_layers; i++)
        if ((rc = cm_layer_forward(m, c, i, hb, T, pos0, err)))
            return rc;
    if (!h->has_head)
        return rt_comm_send(c, hb, T * H * 4, rt_comm_group_member(c, RT_GROUP_PP, h->pp_stage + 1),
                            err);
    /* the final norm: the rows of the head, or all rows into m->hid (MTP) */
    float *xn = NULL;
    if (m->hid) {
        if (T > m->hid_rows)
            return dsr1_err_set(err, DSR1_E_INTERNAL, RT_ERR_MODEL, 0,
                                "cuda: %zu rows, hidden states kept for %zu", T, m->hid_rows);
        CUK(kc_rmsnorm(hb, H, m->final_norm, m->hid, H, T, H, (float)h->cfg.rms_norm_eps, m->st),
            "final norm");
        xn = m->hid + row0 * H;
    }
    if (!want)
        return 0;
    if (!xn) {
        NEED(xn = (float *)cm_scratch(m, (T - row0) * H * 4));
        CUK(kc_rmsnorm(hb + row0 * H, H, m->final_norm, xn, H, T - row0, H,
                       (float)h->cfg.rms_norm_eps, m->st),
            "final norm");
    }
    return head_rows(m, c, &m->lm_head, xn, T - row0, all, err);
}

/* Wait for the step, then [tp][n][Vl] on the device -> logits_h [n][tp * Vl]. */
static int logits_out(cm_model *m, rt_comm *c, const float *all, size_t n, float *logits_h,
                      dsr1_err *err)
{
    size_t Vl = m->h->lm_head.rows, tp = (size_t)m->h->tp;
    int rc = cm_wait(m, c, err);
    if (rc)
        return rc;
    for (size_t r = 0; r < tp; r++)
        CUK(cudaMemcpy2D(logits_h + r * Vl, tp * Vl * 4, all + r * n * Vl, Vl * 4, Vl * 4, n,
                         cudaMemcpyDeviceToHost),
            "logits");
    return 0;
}

/* Capture forward_body of the one-token step at m->dstep into m->gexec (nothing runs).
 * 0, or -1 with the reason in why. */
static int capture(cm_model *m, rt_comm *c, size_t pos0, float *all_eager, char *why, size_t cap)
{
    dsr1_err cerr;
    dsr1_err_clear(&cerr);
    cudaGraph_t g = NULL;
    float *all = NULL;
    cm_scratch_reset(m);
    cudaError_t e = cudaStreamBeginCapture(m->st, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        snprintf(why, cap, "begin capture: %s", cudaGetErrorString(e));
        return -1;
    }
    int brc = forward_body(m, c, m->dstep, 1, pos0, 0, 1, &all, &cerr);
    e = cudaStreamEndCapture(m->st, &g);
    if (!brc && e == cudaSuccess && all == all_eager)
        e = cudaGraphInstantiate(&m->gexec, g, 0);
    if (g)
        cudaGraphDestroy(g);
    if (brc || e != cudaSuccess || all != all_eager) {
        cudaGetLastError(); /* leave no capture error behind */
        m->gexec = NULL;
        snprintf(why, cap, "%.200s", brc ? cerr.msg : e != cudaSuccess ? cudaGetErrorString(e)
                                                                   : "scratch moved");
        return -1;
    }
    m->g_epoch = kc_alloc_epoch();
    m->g_pool = m->pool;
    m->g_all = all;
    m->g_captures++;
    return 0;
}

/* One decode token through a graph (see cm_set_graphs). */
static int forward_graph(cm_model *m, rt_comm *c, int32_t id, size_t pos0, float *logits_h,
                         dsr1_err *err)
{
    size_t s_plan = (pos0 + 1 + CM_GRAPH_KEYS - 1) / CM_GRAPH_KEYS * CM_GRAPH_KEYS;
    s_plan = s_plan < m->cap ? s_plan : m->cap;
    int32_t hv[2] = {id, (int32_t)pos0};
    CUK(cudaMemcpyAsync(m->dstep, hv, sizeof hv, cudaMemcpyHostToDevice, m->st), "step ids");
    if (m->gexec && (m->g_splan != s_plan || m->g_epoch != kc_alloc_epoch() || m->g_pool != m->pool))
        cm_set_graphs(m, 1); /* another bucket, or its scratch moved: capture again */
    if (m->gexec) {
        CUK(cudaGraphLaunch(m->gexec, m->st), "graph launch");
        m->g_replays++;
        return logits_out(m, c, m->g_all, 1, logits_h, err);
    }
    /* this step eagerly (it allocates whatever the kernels need), then its capture */
    cm_set_device_positions(m, m->dstep + 1, s_plan);
    cm_scratch_reset(m);
    float *all = NULL;
    int rc = forward_body(m, c, m->dstep, 1, pos0, 0, 1, &all, err);
    char why[256];
    if (!rc && capture(m, c, pos0, all, why, sizeof why)) {
        fprintf(stderr, "dsr1-serve: warning: CUDA graph capture failed (%s); decoding without "
                        "graphs\n", why);
        m->graphs = 0;
    }
    m->g_splan = s_plan;
    cm_set_device_positions(m, NULL, 0);
    return rc ? rc : logits_out(m, c, all, 1, logits_h, err);
}

int cm_forward(cm_model *m, rt_comm *c, const int32_t *ids, size_t T, size_t pos0, size_t row0,
               float *logits_h, dsr1_err *err)
{
    rt_model *h = m->h;
    int rc;
    if (T == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "forward of zero tokens");
    for (size_t t = 0; t < T; t++)
        if (ids[t] < 0 || (uint32_t)ids[t] >= h->vocab)
            return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                                "token id %d at position %zu is outside the vocabulary [0, %zu)",
                                ids[t], t, h->vocab);
    if (pos0 + T > m->cap)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "sequence of %zu tokens exceeds the KV cache of %zu", pos0 + T, m->cap);
    if ((rc = cm_reserve(m, T, logits_h && h->has_head ? T - row0 : 0, err)))
        return rc;
    if (T == 1 && m->graphs && h->has_embed && h->has_head && logits_h)
        return forward_graph(m, c, ids[0], pos0, logits_h, err);
    cm_scratch_reset(m);
    int32_t *dids = (int32_t *)cm_scratch(m, T * 4);
    NEED(dids);
    if (h->has_embed)
        CUK(cudaMemcpyAsync(dids, ids, T * 4, cudaMemcpyHostToDevice, m->st), "ids");
    float *all = NULL;
    if ((rc = forward_body(m, c, dids, T, pos0, row0, logits_h != NULL, &all, err)) ||
        !h->has_head || !logits_h)
        return rc;
    return logits_out(m, c, all, T - row0, logits_h, err);
}

int cm_keep_hidden(cm_model *m, size_t rows, dsr1_err *err)
{
    if (rows && rows <= m->hid_rows)
        return 0;
    cudaStreamSynchronize(m->st);
    cudaFree(m->hid);
    m->hid = NULL;
    m->hid_rows = 0;
    cm_set_graphs(m, m->graphs); /* a captured step wrote to the old buffer */
    if (!rows)
        return 0;
    CUK(cudaMalloc((void **)&m->hid, rows * m->h->hidden * sizeof(float)), "hidden states");
    m->hid_rows = rows;
    return 0;
}

/* The MTP module as rt_model_mtp_forward (runtime/model.c): embedding of the next
 * tokens and the hidden states, each RMS-normed, concatenated [embedding, hidden],
 * eh_proj, one decoder layer over its own cache slot, the shared head's norm and head. */
int cm_mtp_forward(cm_model *m, rt_comm *c, const int32_t *next_ids, size_t T, size_t pos0,
                   size_t hrow0, size_t row0, float *logits_h, dsr1_err *err)
{
    rt_model *h = m->h;
    size_t H = h->hidden;
    float eps = (float)h->cfg.rms_norm_eps;
    int rc;
    if (!m->has_mtp)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "this shard holds no MTP layer (shard with dsr1-shard --mtp)");
    if (T == 0 || row0 >= T || !m->hid || hrow0 + T > m->hid_rows || pos0 + T > m->cap)
        return dsr1_err_set(err, DSR1_E_INTERNAL, RT_ERR_ARG, 0,
                            "cuda mtp: rows %zu..%zu of %zu kept, positions to %zu of %zu", hrow0,
                            hrow0 + T, m->hid_rows, pos0 + T, m->cap);
    for (size_t t = 0; t < T; t++)
        if (next_ids[t] < 0 || (uint32_t)next_ids[t] >= h->vocab)
            return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                                "token id %d outside the vocabulary [0, %zu)", next_ids[t], h->vocab);
    if ((rc = cm_reserve(m, T, T - row0, err)))
        return rc;
    cm_scratch_reset(m);
    int32_t *dids = (int32_t *)cm_scratch(m, T * 4);
    float *e = (float *)cm_scratch(m, T * H * 4), *cat = (float *)cm_scratch(m, T * 2 * H * 4);
    float *x = (float *)cm_scratch(m, T * H * 4);
    NEED(dids && e && cat && x);
    CUK(cudaMemcpyAsync(dids, next_ids, T * 4, cudaMemcpyHostToDevice, m->st), "ids");
    CUK(kc_embed(&m->mtp_embed, h->mtp->mtp_embed_row0, dids, T, e, H, m->st), "mtp embed");
    if ((rc = tp_allreduce(m, c, e, T * H, err)))
        return rc;
    CUK(kc_rmsnorm(e, H, m->enorm, cat, 2 * H, T, H, eps, m->st), "mtp enorm");
    CUK(kc_rmsnorm(m->hid + hrow0 * H, H, m->hnorm, cat + H, 2 * H, T, H, eps, m->st), "mtp hnorm");
    CUK(kc_gemm(m->kc, cat, 2 * H, T, &m->eh_proj, x, H, 0, 0), "mtp eh_proj");
    if ((rc = cm_layer_forward(m, c, m->n_layers, x, T, pos0, err)))
        return rc;
    CUK(kc_rmsnorm(x + row0 * H, H, m->head_norm, e, H, T - row0, H, eps, m->st), "mtp head norm");
    float *all = NULL;
    if ((rc = head_rows(m, c, &m->mtp_head, e, T - row0, &all, err)))
        return rc;
    return logits_out(m, c, all, T - row0, logits_h, err);
}
