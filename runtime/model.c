/* rt_model: see model.h. */
#include "model.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"
#include "dtype.h"
#include "embed.h"
#include "ld.h"
#include "mlp.h"
#include "rmsnorm.h"

/* ------------------------------------------------------------------ loading */

typedef struct ctx {
    rt_model *mdl;
    const ld_shard *s;
    const mf_shard *e;
    const char *path;
} ctx;

static int model_err(const ctx *x, dsr1_err *err, const char *fmt, const char *name, const char *detail)
{
    return dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                        "%s (pp stage %" PRIu32 ", tp rank %" PRIu32 "): tensor %s %s%s%s", x->path,
                        x->e->pp_stage, x->e->tp_rank, name, fmt, detail ? ": " : "",
                        detail ? detail : "");
}

static const st_tensor *need(const ctx *x, const char *name, dsr1_err *err)
{
    const st_tensor *t = ld_find(x->s, name);
    if (!t)
        model_err(x, err, "is missing; the shard does not match this model/plan", name, NULL);
    return t;
}

/* A 2-D weight [rows, cols] as a k_weight view (FP8 with its scale, BF16 or F32). */
static int get_w(const ctx *x, const char *name, uint64_t rows, uint64_t cols, k_weight *w,
                 dsr1_err *err)
{
    const st_tensor *t = need(x, name, err);
    if (!t)
        return DSR1_E_MISMATCH;
    char d[160];
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols) {
        snprintf(d, sizeof d, "expected [%" PRIu64 ", %" PRIu64 "] on this rank, the shard has %d-D [%" PRIu64
                 ", %" PRIu64 "]", rows, cols, t->ndim, t->shape[0], t->ndim > 1 ? t->shape[1] : 0);
        return model_err(x, err, "is misshaped", name, d);
    }
    memset(w, 0, sizeof *w);
    w->rows = rows;
    w->cols = cols;
    w->data = t->data;
    switch (t->dtype) {
    case ST_F32: w->type = K_W_F32; break;
    case ST_BF16: w->type = K_W_BF16; break;
    case ST_F8_E4M3: {
        char sn[256];
        snprintf(sn, sizeof sn, "%s_scale_inv", name);
        const st_tensor *s = need(x, sn, err);
        if (!s)
            return DSR1_E_MISMATCH;
        uint64_t br = (rows + DT_BLOCK - 1) / DT_BLOCK, bc = (cols + DT_BLOCK - 1) / DT_BLOCK;
        if (s->dtype != ST_F32 || s->ndim != 2 || s->shape[0] != br || s->shape[1] != bc) {
            snprintf(d, sizeof d, "expected F32 [%" PRIu64 ", %" PRIu64 "] block scales", br, bc);
            return model_err(x, err, "is misshaped", sn, d);
        }
        w->type = K_W_FP8;
        w->scale = s->data;
        w->scale_ld = bc;
        break;
    }
    default:
        snprintf(d, sizeof d, "dtype %s; the runtime reads F8_E4M3 (+ scales), BF16 or F32",
                 st_dtype_name(t->dtype));
        return model_err(x, err, "has an unsupported dtype", name, d);
    }
    return 0;
}

/* A 1-D vector of n values (BF16 or F32) copied to fp32. */
static int get_vec(const ctx *x, const char *name, uint64_t n, float **out, dsr1_err *err)
{
    const st_tensor *t = need(x, name, err);
    if (!t)
        return DSR1_E_MISMATCH;
    if (t->ndim != 1 || t->shape[0] != n || (t->dtype != ST_BF16 && t->dtype != ST_F32)) {
        char d[128];
        snprintf(d, sizeof d, "expected BF16/F32 [%" PRIu64 "], the shard has %s %d-D [%" PRIu64 "]", n,
                 st_dtype_name(t->dtype), t->ndim, t->shape[0]);
        return model_err(x, err, "is misshaped", name, d);
    }
    float *v = malloc(n * sizeof(float));
    if (!v)
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory loading %s", name);
    if (t->dtype == ST_BF16)
        dt_bf16_to_f32_n(t->data, v, n);
    else
        memcpy(v, t->data, n * sizeof(float));
    *out = v;
    return 0;
}

/* Row offset of a dim-0 slice within its source tensor (0 for a whole copy). */
static size_t slice_row0(const ctx *x, const char *name)
{
    const mf_tensor *t = mf_find_tensor(x->e, name);
    return t && t->source.dim == 0 ? (size_t)t->source.start : 0;
}

static int load_layer(const ctx *x, rt_layer *L, int index, dsr1_err *err)
{
    rt_model *m = x->mdl;
    const ck_config *cfg = &m->cfg;
    char n[256];
    int rc;
    size_t H = m->hidden, tp = (size_t)m->tp;
    L->index = index;
    L->moe = ck_layer_is_moe(cfg, (uint32_t)index) || index >= (int)cfg->num_hidden_layers;
#define P(fmt, ...) (snprintf(n, sizeof n, "model.layers.%d." fmt, index, ##__VA_ARGS__), n)
    if ((rc = get_vec(x, P("input_layernorm.weight"), H, &L->in_norm, err)) ||
        (rc = get_vec(x, P("post_attention_layernorm.weight"), H, &L->post_norm, err)) ||
        (rc = get_w(x, P("self_attn.q_a_proj.weight"), m->q_lora, H, &L->q_a, err)) ||
        (rc = get_vec(x, P("self_attn.q_a_layernorm.weight"), m->q_lora, &L->q_a_norm, err)) ||
        (rc = get_w(x, P("self_attn.q_b_proj.weight"), m->heads * (m->dn + m->dr), m->q_lora, &L->q_b, err)) ||
        (rc = get_w(x, P("self_attn.kv_a_proj_with_mqa.weight"), m->kv_lora + m->dr, H, &L->kv_a, err)) ||
        (rc = get_vec(x, P("self_attn.kv_a_layernorm.weight"), m->kv_lora, &L->kv_a_norm, err)) ||
        (rc = get_w(x, P("self_attn.kv_b_proj.weight"), m->heads * (m->dn + m->dv), m->kv_lora, &L->kv_b, err)) ||
        (rc = get_w(x, P("self_attn.o_proj.weight"), H, m->heads * m->dv, &L->o, err)))
        return rc;
    if (!L->moe) {
        size_t I = cfg->intermediate_size / tp;
        if ((rc = get_w(x, P("mlp.gate_proj.weight"), I, H, &L->gate, err)) ||
            (rc = get_w(x, P("mlp.up_proj.weight"), I, H, &L->up, err)) ||
            (rc = get_w(x, P("mlp.down_proj.weight"), H, I, &L->down, err)))
            return rc;
    } else {
        size_t E = cfg->n_routed_experts;
        if ((rc = get_w(x, P("mlp.gate.weight"), E, H, &L->router, err)) ||
            (rc = get_vec(x, P("mlp.gate.e_score_correction_bias"), E, &L->bias, err)))
            return rc;
        size_t Is = (size_t)cfg->moe_intermediate_size * cfg->n_shared_experts;
        /* the planner keeps the shared expert whole when its tp slices would cut FP8
         * blocks (formats/plan.c); the manifest's slice says which */
        const mf_tensor *sg = mf_find_tensor(x->e, P("mlp.shared_experts.gate_proj.weight"));
        L->sh_whole = tp > 1 && sg && sg->source.dim < 0;
        if (!L->sh_whole)
            Is /= tp;
        if (cfg->n_shared_experts &&
            ((rc = get_w(x, P("mlp.shared_experts.gate_proj.weight"), Is, H, &L->sh_gate, err)) ||
             (rc = get_w(x, P("mlp.shared_experts.up_proj.weight"), Is, H, &L->sh_up, err)) ||
             (rc = get_w(x, P("mlp.shared_experts.down_proj.weight"), H, Is, &L->sh_down, err))))
            return rc;
        /* docs/formats/shard.md: EP group tp_rank / g holds E/ep experts, each split g ways */
        size_t ep = m->m->plan.ep ? m->m->plan.ep : tp, g = tp / ep;
        size_t per = E / ep, first = ((size_t)m->tp_rank / g) * per;
        size_t Ie = cfg->moe_intermediate_size / g;
        L->n_experts = (uint32_t)per;
        L->expert_id = calloc(per, sizeof(int32_t));
        L->e_gate = calloc(per, sizeof(k_weight));
        L->e_up = calloc(per, sizeof(k_weight));
        L->e_down = calloc(per, sizeof(k_weight));
        if (!L->expert_id || !L->e_gate || !L->e_up || !L->e_down)
            return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory loading layer %d", index);
        for (size_t j = 0; j < per; j++) {
            int e = (int)(first + j);
            L->expert_id[j] = e;
            if ((rc = get_w(x, P("mlp.experts.%d.gate_proj.weight", e), Ie, H, &L->e_gate[j], err)) ||
                (rc = get_w(x, P("mlp.experts.%d.up_proj.weight", e), Ie, H, &L->e_up[j], err)) ||
                (rc = get_w(x, P("mlp.experts.%d.down_proj.weight", e), H, Ie, &L->e_down[j], err)))
                return rc;
        }
    }
    if (index >= (int)cfg->num_hidden_layers) { /* MTP extras */
        size_t V = cfg->vocab_size / tp;
        if ((rc = get_vec(x, P("enorm.weight"), H, &L->enorm, err)) ||
            (rc = get_vec(x, P("hnorm.weight"), H, &L->hnorm, err)) ||
            (rc = get_vec(x, P("shared_head.norm.weight"), H, &L->head_norm, err)) ||
            (rc = get_w(x, P("eh_proj.weight"), H, 2 * H, &L->eh_proj, err)) ||
            (rc = get_w(x, P("embed_tokens.weight"), V, H, &L->mtp_embed, err)) ||
            (rc = get_w(x, P("shared_head.head.weight"), V, H, &L->mtp_head, err)))
            return rc;
        L->mtp_embed_row0 = slice_row0(x, P("embed_tokens.weight"));
        L->mtp_head_row0 = slice_row0(x, P("shared_head.head.weight"));
        if (L->mtp_head_row0 != (size_t)m->tp_rank * V)
            return model_err(x, err, "is not the vocabulary slice of this tp rank", n, NULL);
    }
#undef P
    return 0;
}

static void free_layer(rt_layer *L)
{
    free(L->in_norm);
    free(L->post_norm);
    free(L->q_a_norm);
    free(L->kv_a_norm);
    free(L->bias);
    free(L->expert_id);
    free(L->e_gate);
    free(L->e_up);
    free(L->e_down);
    free(L->enorm);
    free(L->hnorm);
    free(L->head_norm);
}

void rt_model_free(rt_model *mdl)
{
    if (!mdl)
        return;
    for (size_t i = 0; i < mdl->n_layers; i++)
        free_layer(&mdl->layers[i]);
    free(mdl->layers);
    if (mdl->mtp)
        free_layer(mdl->mtp);
    free(mdl->mtp);
    free(mdl->final_norm);
    ld_close(mdl->shard);
    free(mdl);
}

int rt_model_load(rt_model **out, const mf_manifest *m, const char *dir, uint32_t rank, int flags,
                  dsr1_err *err)
{
    *out = NULL;
    if (rank >= m->n_ranks)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "rank %" PRIu32 " outside the plan's %zu ranks",
                            rank, m->n_ranks);
    const mf_rank *r = &m->ranks[rank];
    const ck_config *cfg = &m->config;
    rt_model *mdl = calloc(1, sizeof *mdl);
    if (!mdl)
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
    mdl->m = m;
    mdl->cfg = *cfg;
    mdl->tp = (int)m->plan.tp;
    mdl->pp = (int)m->plan.pp;
    mdl->tp_rank = (int)r->tp;
    mdl->pp_stage = (int)r->pp;
    mdl->hidden = cfg->hidden_size;
    mdl->q_lora = cfg->q_lora_rank;
    mdl->kv_lora = cfg->kv_lora_rank;
    mdl->dn = cfg->qk_nope_head_dim;
    mdl->dr = cfg->qk_rope_head_dim;
    mdl->dv = cfg->v_head_dim;
    mdl->vocab = cfg->vocab_size;
    int rc;
    ld_shard *s = NULL;
    if ((rc = ld_open(&s, m, dir, r->shard, flags, err)) != 0) {
        free(mdl);
        return rc;
    }
    mdl->shard = s;
    ctx x = {mdl, s, ld_entry(s), ld_path(s)};
    size_t tp = (size_t)mdl->tp;
    if (tp == 0 || cfg->num_attention_heads % tp || cfg->vocab_size % tp || m->plan.pp == 0) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                          "plan tp=%zu pp=%" PRIu32 " does not divide heads %" PRIu32 " / vocab %" PRIu32, tp,
                          m->plan.pp, cfg->num_attention_heads, cfg->vocab_size);
        goto fail;
    }
    mdl->heads = cfg->num_attention_heads / tp;
    k_rope_params rp = {(int)cfg->qk_rope_head_dim, cfg->rope_theta, cfg->rope.yarn, cfg->rope.factor,
                        (double)cfg->rope.original_max_position_embeddings, cfg->rope.beta_fast,
                        cfg->rope.beta_slow, cfg->rope.mscale, cfg->rope.mscale_all_dim};
    if (k_rope_init(&mdl->rope, &rp) != 0) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0, "unsupported rope: qk_rope_head_dim %" PRIu32,
                          cfg->qk_rope_head_dim);
        goto fail;
    }
    mdl->softmax_scale = (float)k_rope_softmax_scale(&rp, (int)(mdl->dn + mdl->dr));
    mdl->rcfg = (k_router_cfg){cfg->n_routed_experts, cfg->n_group, cfg->topk_group,
                               cfg->num_experts_per_tok, cfg->norm_topk_prob,
                               (float)cfg->routed_scaling_factor};
    mdl->has_embed = mdl->pp_stage == 0;
    mdl->has_head = mdl->pp_stage == mdl->pp - 1;
    size_t V = cfg->vocab_size / tp, H = mdl->hidden;
    if (mdl->has_embed) {
        if ((rc = get_w(&x, "model.embed_tokens.weight", V, H, &mdl->embed, err)))
            goto fail;
        mdl->embed_row0 = slice_row0(&x, "model.embed_tokens.weight");
    }
    if (mdl->has_head) {
        if ((rc = get_vec(&x, "model.norm.weight", H, &mdl->final_norm, err)) ||
            (rc = get_w(&x, "lm_head.weight", V, H, &mdl->lm_head, err)))
            goto fail;
        mdl->head_row0 = slice_row0(&x, "lm_head.weight");
        /* logits are gathered in tp-rank order */
        if (mdl->head_row0 != (size_t)mdl->tp_rank * V) {
            rc = model_err(&x, err, "is not the vocabulary slice of this tp rank", "lm_head.weight", NULL);
            goto fail;
        }
    }
    const mf_shard *e = ld_entry(s);
    int32_t first = e->layer_first, last = e->layer_last, nhl = (int32_t)cfg->num_hidden_layers;
    if (first >= 0 && last >= first) {
        int32_t dec_last = last < nhl ? last : nhl - 1;
        mdl->n_layers = dec_last >= first ? (size_t)(dec_last - first + 1) : 0;
        mdl->layers = calloc(mdl->n_layers ? mdl->n_layers : 1, sizeof(rt_layer));
        if (!mdl->layers) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < mdl->n_layers; i++)
            if ((rc = load_layer(&x, &mdl->layers[i], first + (int)i, err)))
                goto fail;
        if (last >= nhl) {
            if (!mdl->has_head) {
                rc = dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                                  "%s: holds the MTP layer but not the last pipeline stage", x.path);
                goto fail;
            }
            mdl->mtp = calloc(1, sizeof(rt_layer));
            if (!mdl->mtp) {
                rc = dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory");
                goto fail;
            }
            if ((rc = load_layer(&x, mdl->mtp, nhl, err)))
                goto fail;
        }
    }
    *out = mdl;
    return 0;
fail:
    rt_model_free(mdl);
    return rc;
}

/* ------------------------------------------------------------------ KV cache */

int rt_kv_init(rt_kv *kv, const rt_model *mdl, size_t cap, int with_mtp, dsr1_err *err)
{
    memset(kv, 0, sizeof *kv);
    kv->cap = cap;
    kv->n_layers = mdl->n_layers + (with_mtp && mdl->mtp ? 1 : 0);
    kv->kv_lora = mdl->kv_lora;
    kv->rope = mdl->dr;
    size_t n = kv->n_layers ? kv->n_layers : 1;
    kv->c = calloc(n, sizeof(float *));
    kv->kpe = calloc(n, sizeof(float *));
    int ok = kv->c && kv->kpe;
    for (size_t i = 0; ok && i < kv->n_layers; i++) {
        kv->c[i] = malloc(cap * kv->kv_lora * sizeof(float));
        kv->kpe[i] = malloc(cap * kv->rope * sizeof(float));
        ok = kv->c[i] && kv->kpe[i];
    }
    if (!ok) {
        rt_kv_free(kv);
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory for a KV cache of %zu tokens",
                            cap);
    }
    return 0;
}

void rt_kv_free(rt_kv *kv)
{
    if (kv->c)
        for (size_t i = 0; i < kv->n_layers; i++)
            free(kv->c[i]);
    if (kv->kpe)
        for (size_t i = 0; i < kv->n_layers; i++)
            free(kv->kpe[i]);
    free(kv->c);
    free(kv->kpe);
    memset(kv, 0, sizeof *kv);
}

/* ------------------------------------------------------------------ forward */

/* Scratch buffers of one call, released together. */
typedef struct scratch {
    void *p[24];
    int n;
} scratch;

static float *sc_alloc(scratch *s, size_t n)
{
    if (s->n == (int)(sizeof s->p / sizeof s->p[0]))
        return NULL;
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (p)
        s->p[s->n++] = p;
    return p;
}

static void sc_free(scratch *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->p[i]);
    s->n = 0;
}

static int oom(dsr1_err *err, const char *what)
{
    return dsr1_err_set(err, DSR1_E_NOMEM, RT_ERR_MODEL, 0, "out of memory in %s", what);
}

static int tp_allreduce(rt_model *m, rt_comm *c, float *buf, size_t n, dsr1_err *err)
{
    if (m->tp == 1)
        return 0;
    return rt_comm_allreduce_sum_f32(c, RT_GROUP_TP, buf, n, err);
}

static int attention(rt_model *m, rt_layer *L, rt_kv *kv, size_t slot, const float *x, size_t T,
                     size_t pos0, rt_attn_mode mode, float *out, dsr1_err *err)
{
    size_t H = m->hidden, R = m->kv_lora, P = m->dr, dn = m->dn, dv = m->dv, Hl = m->heads;
    size_t dq = dn + P, S = pos0 + T;
    float eps = (float)m->cfg.rms_norm_eps;
    if (S > kv->cap)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "sequence of %zu tokens exceeds the KV cache of %zu", S, kv->cap);
    scratch s = {0};
    int rc = 0;
    float *qa = sc_alloc(&s, T * m->q_lora), *q = sc_alloc(&s, T * Hl * dq);
    float *kva = sc_alloc(&s, T * (R + P)), *o = sc_alloc(&s, T * Hl * dv);
    int32_t *pos = (int32_t *)sc_alloc(&s, T);
    if (!qa || !q || !kva || !o || !pos) {
        rc = oom(err, "attention");
        goto out;
    }
    float *cc = kv->c[slot], *kp = kv->kpe[slot];
    for (size_t t = 0; t < T; t++)
        pos[t] = (int32_t)(pos0 + t);
    if (k_gemm(x, H, T, &L->q_a, qa, m->q_lora, 0) || k_gemm(x, H, T, &L->kv_a, kva, R + P, 0)) {
        rc = oom(err, "attention");
        goto out;
    }
    k_rmsnorm(qa, m->q_lora, L->q_a_norm, qa, m->q_lora, T, m->q_lora, eps);
    if (k_gemm(qa, m->q_lora, T, &L->q_b, q, Hl * dq, 0)) {
        rc = oom(err, "attention");
        goto out;
    }
    k_rmsnorm(kva, R + P, L->kv_a_norm, cc + pos0 * R, R, T, R, eps);
    for (size_t t = 0; t < T; t++)
        memcpy(kp + (pos0 + t) * P, kva + t * (R + P) + R, P * sizeof(float));
    k_rope_apply(&m->rope, kp + pos0 * P, T, 1, P, P, pos);
    k_rope_apply(&m->rope, q + dn, T, Hl, Hl * dq, dq, pos);
    int naive = mode == RT_ATTN_NAIVE || (mode == RT_ATTN_AUTO && T > 1);
    if (naive) {
        size_t W = Hl * (dn + dv);
        float *kvb = sc_alloc(&s, S * W), *kf = sc_alloc(&s, S * Hl * dq), *vf = sc_alloc(&s, S * Hl * dv);
        if (!kvb || !kf || !vf || k_gemm(cc, R, S, &L->kv_b, kvb, W, 0)) {
            rc = oom(err, "attention");
            goto out;
        }
        for (size_t j = 0; j < S; j++)
            for (size_t h = 0; h < Hl; h++) {
                memcpy(kf + (j * Hl + h) * dq, kvb + j * W + h * (dn + dv), dn * sizeof(float));
                memcpy(kf + (j * Hl + h) * dq + dn, kp + j * P, P * sizeof(float));
                memcpy(vf + (j * Hl + h) * dv, kvb + j * W + h * (dn + dv) + dn, dv * sizeof(float));
            }
        if (k_attn_naive(q, Hl * dq, kf, Hl * dq, vf, Hl * dv, o, Hl * dv, T, S, Hl, dq, dv, pos0,
                         m->softmax_scale)) {
            rc = oom(err, "attention");
            goto out;
        }
    } else {
        float *ql = sc_alloc(&s, T * Hl * R), *ol = sc_alloc(&s, T * Hl * R);
        if (!ql || !ol || k_mla_absorb_q(q, Hl * dq, dq, T, Hl, dn, dv, &L->kv_b, ql) ||
            k_mla_attn(ql, q + dn, Hl * dq, dq, cc, R, kp, P, ol, T, S, Hl, R, P, pos0, m->softmax_scale) ||
            k_mla_absorb_v(ol, T, Hl, dn, dv, &L->kv_b, o, Hl * dv)) {
            rc = oom(err, "attention");
            goto out;
        }
    }
    if (k_gemm(o, Hl * dv, T, &L->o, out, H, 0))
        rc = oom(err, "attention");
out:
    sc_free(&s);
    return rc;
}

static int ffn(rt_model *m, rt_layer *L, const float *x, size_t T, float *out, dsr1_err *err)
{
    size_t H = m->hidden;
    if (!L->moe)
        return k_mlp(x, H, T, &L->gate, &L->up, &L->down, out, H, 0, NULL) ? oom(err, "mlp") : 0;
    size_t E = m->rcfg.n_experts, K = m->rcfg.top_k;
    scratch s = {0};
    int rc = 0;
    float *lr = sc_alloc(&s, T * E), *w = sc_alloc(&s, T * K), *xg = sc_alloc(&s, T * H);
    float *yg = sc_alloc(&s, T * H), *wg = sc_alloc(&s, T);
    int32_t *idx = (int32_t *)sc_alloc(&s, T * K), *rows = (int32_t *)sc_alloc(&s, T);
    if (!lr || !w || !xg || !yg || !wg || !idx || !rows || k_gemm(x, H, T, &L->router, lr, E, 0)) {
        rc = oom(err, "moe");
        goto out;
    }
    if (k_router(&m->rcfg, lr, L->bias, T, idx, w) != 0) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, RT_ERR_MODEL, 0,
                          "router config invalid: %" PRIu32 " experts, %" PRIu32 " groups, top-%" PRIu32
                          " groups, top-%" PRIu32 " experts",
                          m->rcfg.n_experts, m->rcfg.n_group, m->rcfg.topk_group, m->rcfg.top_k);
        goto out;
    }
    memset(out, 0, T * H * sizeof(float));
    /* experts in ascending id, each adding weight * output to its tokens (transformers' order) */
    for (uint32_t j = 0; j < L->n_experts; j++) {
        size_t n = 0;
        for (size_t t = 0; t < T; t++)
            for (size_t k = 0; k < K; k++)
                if (idx[t * K + k] == L->expert_id[j]) {
                    rows[n] = (int32_t)t;
                    wg[n] = w[t * K + k];
                    memcpy(xg + n * H, x + t * H, H * sizeof(float));
                    n++;
                }
        if (!n)
            continue;
        if (k_mlp(xg, H, n, &L->e_gate[j], &L->e_up[j], &L->e_down[j], yg, H, 0, NULL)) {
            rc = oom(err, "moe");
            goto out;
        }
        for (size_t i = 0; i < n; i++)
            for (size_t d = 0; d < H; d++)
                out[rows[i] * H + d] += yg[i * H + d] * wg[i];
    }
    if (m->cfg.n_shared_experts && !L->sh_whole &&
        k_mlp(x, H, T, &L->sh_gate, &L->sh_up, &L->sh_down, out, H, 1, NULL))
        rc = oom(err, "moe");
out:
    sc_free(&s);
    return rc;
}

/* One decoder layer on h [T, hidden] in place. */
static int layer_forward(rt_model *m, rt_comm *c, rt_layer *L, rt_kv *kv, size_t slot, float *h,
                         size_t T, size_t pos0, rt_attn_mode mode, dsr1_err *err)
{
    size_t H = m->hidden;
    float eps = (float)m->cfg.rms_norm_eps;
    scratch s = {0};
    int rc = 0;
    float *xn = sc_alloc(&s, T * H), *a = sc_alloc(&s, T * H);
    if (!xn || !a) {
        rc = oom(err, "layer");
        goto out;
    }
    k_rmsnorm(h, H, L->in_norm, xn, H, T, H, eps);
    if ((rc = attention(m, L, kv, slot, xn, T, pos0, mode, a, err)) || (rc = tp_allreduce(m, c, a, T * H, err)))
        goto out;
    for (size_t i = 0; i < T * H; i++)
        h[i] += a[i];
    k_rmsnorm(h, H, L->post_norm, xn, H, T, H, eps);
    if ((rc = ffn(m, L, xn, T, a, err)) || (rc = tp_allreduce(m, c, a, T * H, err)))
        goto out;
    if (L->sh_whole && m->cfg.n_shared_experts &&
        k_mlp(xn, H, T, &L->sh_gate, &L->sh_up, &L->sh_down, a, H, 1, NULL)) {
        rc = oom(err, "moe");
        goto out;
    }
    for (size_t i = 0; i < T * H; i++)
        h[i] += a[i];
out:
    if (rc && err)
        dsr1_err_prefix(err, "layer %d", L->index);
    sc_free(&s);
    return rc;
}

static int check_ids(const rt_model *m, const int32_t *ids, size_t T, dsr1_err *err)
{
    for (size_t t = 0; t < T; t++)
        if (ids[t] < 0 || (uint32_t)ids[t] >= m->vocab)
            return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                                "token id %" PRId32 " at position %zu is outside the vocabulary [0, %zu)",
                                ids[t], t, m->vocab);
    return 0;
}

/* Vocab-parallel embedding of ids through table (rows [row0, row0 + rows)). */
static int embed(rt_model *m, rt_comm *c, const k_weight *table, size_t row0, const int32_t *ids,
                 size_t T, float *h, dsr1_err *err)
{
    k_embed(table, row0, ids, T, h, m->hidden);
    return tp_allreduce(m, c, h, T * m->hidden, err);
}

/* logits [T, vocab] = head(xn) gathered over TP in rank order. */
static int head(rt_model *m, rt_comm *c, const k_weight *w, const float *xn, size_t T, float *logits,
                dsr1_err *err)
{
    size_t Vl = w->rows, H = m->hidden, tp = (size_t)m->tp;
    if (tp == 1)
        return k_gemm(xn, H, T, w, logits, Vl, 0) ? oom(err, "lm_head") : 0;
    scratch s = {0};
    int rc = 0;
    float *loc = sc_alloc(&s, T * Vl), *all = sc_alloc(&s, tp * T * Vl);
    if (!loc || !all || k_gemm(xn, H, T, w, loc, Vl, 0)) {
        rc = oom(err, "lm_head");
        goto out;
    }
    if ((rc = rt_comm_allgather(c, RT_GROUP_TP, loc, T * Vl * sizeof(float), all, err)))
        goto out;
    for (size_t r = 0; r < tp; r++)
        for (size_t t = 0; t < T; t++)
            memcpy(logits + t * (tp * Vl) + r * Vl, all + (r * T + t) * Vl, Vl * sizeof(float));
out:
    sc_free(&s);
    return rc;
}

int rt_model_forward(rt_model *m, rt_comm *c, rt_kv *kv, const int32_t *ids, size_t T, size_t pos0,
                     rt_attn_mode mode, float *logits, float *hidden, dsr1_err *err)
{
    size_t H = m->hidden;
    int rc;
    if (T == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0, "forward of zero tokens");
    if ((rc = check_ids(m, ids, T, err)))
        return rc;
    scratch s = {0};
    float *h = sc_alloc(&s, T * H);
    if (!h) {
        rc = oom(err, "forward");
        goto out;
    }
    if (m->has_embed)
        rc = embed(m, c, &m->embed, m->embed_row0, ids, T, h, err);
    else
        rc = rt_comm_recv(c, h, T * H * sizeof(float),
                          rt_comm_group_member(c, RT_GROUP_PP, m->pp_stage - 1), err);
    if (rc)
        goto out;
    for (size_t i = 0; i < m->n_layers; i++)
        if ((rc = layer_forward(m, c, &m->layers[i], kv, i, h, T, pos0, mode, err)))
            goto out;
    if (!m->has_head) {
        rc = rt_comm_send(c, h, T * H * sizeof(float), rt_comm_group_member(c, RT_GROUP_PP, m->pp_stage + 1),
                          err);
        goto out;
    }
    if (!logits && !hidden)
        goto out;
    float *xn = sc_alloc(&s, T * H);
    if (!xn) {
        rc = oom(err, "forward");
        goto out;
    }
    k_rmsnorm(h, H, m->final_norm, xn, H, T, H, (float)m->cfg.rms_norm_eps);
    if (hidden)
        memcpy(hidden, xn, T * H * sizeof(float));
    if (logits)
        rc = head(m, c, &m->lm_head, xn, T, logits, err);
out:
    sc_free(&s);
    return rc;
}

int rt_model_mtp_forward(rt_model *m, rt_comm *c, rt_kv *kv, const float *h, const int32_t *next_ids,
                         size_t T, size_t pos0, rt_attn_mode mode, float *logits, dsr1_err *err)
{
    rt_layer *L = m->mtp;
    size_t H = m->hidden;
    float eps = (float)m->cfg.rms_norm_eps;
    int rc;
    if (!L)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_ERR_ARG, 0,
                            "this shard holds no MTP layer (shard with dsr1-shard --mtp)");
    if (kv->n_layers != m->n_layers + 1)
        return dsr1_err_set(err, DSR1_E_INTERNAL, RT_ERR_ARG, 0, "KV cache made without the MTP slot");
    if ((rc = check_ids(m, next_ids, T, err)))
        return rc;
    scratch s = {0};
    float *e = sc_alloc(&s, T * H), *cat = sc_alloc(&s, T * 2 * H), *x = sc_alloc(&s, T * H);
    if (!e || !cat || !x) {
        rc = oom(err, "mtp");
        goto out;
    }
    if ((rc = embed(m, c, &L->mtp_embed, L->mtp_embed_row0, next_ids, T, e, err)))
        goto out;
    /* concat order [embedding, hidden] (vLLM's DeepSeek MTP) */
    k_rmsnorm(e, H, L->enorm, cat, 2 * H, T, H, eps);
    k_rmsnorm(h, H, L->hnorm, cat + H, 2 * H, T, H, eps);
    if (k_gemm(cat, 2 * H, T, &L->eh_proj, x, H, 0)) {
        rc = oom(err, "mtp");
        goto out;
    }
    if ((rc = layer_forward(m, c, L, kv, m->n_layers, x, T, pos0, mode, err)))
        goto out;
    k_rmsnorm(x, H, L->head_norm, e, H, T, H, eps);
    rc = head(m, c, &L->mtp_head, e, T, logits, err);
out:
    sc_free(&s);
    return rc;
}
