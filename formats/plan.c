/* plan: parallel plan math. See plan.h for the layout rules. */
#include "plan.h"

#include "dtype.h"

#include <float.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Device memory as the driver reports it (nvidia-smi "Total", rocm-smi VRAM total);
 * sources and caveats in docs/tools/dsr1-shard.md. */
static const plan_gpu_kind kinds[] = {
    {"h100-80g", 81559ULL << 20, "NVIDIA H100 80GB HBM3 (81,559 MiB)"},
    {"h200-141g", 143771ULL << 20, "NVIDIA H200 141GB HBM3e (143,771 MiB)"},
    {"h20-96g", 97871ULL << 20, "NVIDIA H20 96GB HBM3 (97,871 MiB)"},
    {"a100-80g", 81920ULL << 20, "NVIDIA A100 80GB (81,920 MiB)"},
    {"b200-180g", 183359ULL << 20, "NVIDIA B200 180GB HBM3e (183,359 MiB)"},
    {"mi300x-192g", 205822885888ULL, "AMD Instinct MI300X 192GB (196,288 MiB)"},
};

const plan_gpu_kind *plan_gpu_kinds(size_t *n)
{
    *n = sizeof kinds / sizeof kinds[0];
    return kinds;
}

const plan_gpu_kind *plan_gpu_kind_find(const char *name)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].name, name) == 0)
            return &kinds[i];
    return NULL;
}

const char *plan_dtype_name(plan_dtype d) { return d == PLAN_BF16 ? "bf16" : "fp8"; }

int plan_dtype_parse(const char *s, plan_dtype *out)
{
    if (strcmp(s, "fp8") == 0) { *out = PLAN_FP8; return 0; }
    if (strcmp(s, "bf16") == 0) { *out = PLAN_BF16; return 0; }
    return -1;
}

uint64_t plan_kv_bytes_per_token_layer(const ck_config *cfg, const plan_req *req)
{
    unsigned b = req && req->kv_bytes ? req->kv_bytes : PLAN_DEFAULT_KV_BYTES;
    return ((uint64_t)cfg->kv_lora_rank + cfg->qk_rope_head_dim) * b;
}

/* ---- geometry: routing that depends only on (config, tensors, tp, ep, dtype) ---- */

typedef struct geom {
    const ck_config *cfg;
    const ck_tensor_desc *t;
    size_t n;
    uint32_t tp, ep;
    plan_dtype dtype;
} geom;

typedef enum { SP_REP, SP_ROW, SP_COL, SP_EXP_ROW, SP_EXP_COL } split_kind;

static split_kind split_of(ck_class c)
{
    switch (c) {
    case CK_EMBED: case CK_LM_HEAD: case CK_ATTN_Q_B: case CK_ATTN_KV_B:
    case CK_DENSE_GATE: case CK_DENSE_UP: case CK_SHARED_GATE: case CK_SHARED_UP:
    case CK_MTP_EMBED: case CK_MTP_HEAD:
        return SP_ROW;
    case CK_ATTN_O: case CK_DENSE_DOWN: case CK_SHARED_DOWN:
        return SP_COL;
    case CK_EXPERT_GATE: case CK_EXPERT_UP:
        return SP_EXP_ROW;
    case CK_EXPERT_DOWN:
        return SP_EXP_COL;
    default:
        return SP_REP;
    }
}

static const ck_tensor_desc *weight_desc(const geom *g, const ck_tensor_desc *d)
{
    if (d->is_scale && d->weight_of >= 0 && (size_t)d->weight_of < g->n)
        return &g->t[d->weight_of];
    return d;
}

static int shared_cannot_split(const geom *g, const ck_tensor_desc *w, int dim, uint32_t parts)
{
    if (w->cls != CK_SHARED_GATE && w->cls != CK_SHARED_UP && w->cls != CK_SHARED_DOWN)
        return 0;
    uint64_t D = w->shape[dim];
    if (D % parts)
        return 1;
    return g->dtype == PLAN_FP8 && w->dtype == ST_F8_E4M3 && (D / parts) % DT_BLOCK;
}

/* parts and split dim of a weight (not a scale) for this geometry */
static void weight_split(const geom *g, const ck_tensor_desc *w, int *dim, uint32_t *parts)
{
    split_kind k = split_of(w->cls);
    *dim = -1;
    *parts = 1;
    if (w->ndim != 2)
        return;
    switch (k) {
    case SP_ROW: *dim = 0; *parts = g->tp; break;
    case SP_COL: *dim = 1; *parts = g->tp; break;
    case SP_EXP_ROW: *dim = 0; *parts = g->tp / g->ep; break;
    case SP_EXP_COL: *dim = 1; *parts = g->tp / g->ep; break;
    default: break;
    }
    /* The shared expert is the one split that may fall back to a whole copy: its
     * output is also complete on one rank, so the runtime adds it after the
     * all-reduce instead of before. Everything else must split or the plan fails. */
    if (*parts > 1 && shared_cannot_split(g, w, *dim, *parts))
        *parts = 1;
    if (*parts <= 1) {
        *dim = -1;
        *parts = 1;
    }
}

/* 1 when the shared expert (of this weight) is replicated under this geometry. */
int plan_shared_replicated(const plan *p)
{
    for (size_t i = 0; i < p->n_tensors; i++)
        if (p->tensors[i].cls == CK_SHARED_GATE && !p->tensors[i].is_scale) {
            plan_slice s;
            plan_route(p, i, 0, &s);
            return p->req.tp > 1 && s.dim < 0;
        }
    return 0;
}

static int geom_route(const geom *g, size_t i, uint32_t t, plan_slice *s)
{
    const ck_tensor_desc *d = &g->t[i];
    const ck_tensor_desc *w = weight_desc(g, d);
    split_kind k = split_of(w->cls);
    if ((k == SP_EXP_ROW || k == SP_EXP_COL) && w->expert >= 0) {
        uint32_t gsz = g->tp / g->ep, per = g->cfg->n_routed_experts / g->ep;
        uint32_t grp = t / gsz;
        if ((uint32_t)w->expert / per != grp)
            return 0;
    }
    int dim;
    uint32_t parts;
    weight_split(g, w, &dim, &parts);
    s->dim = -1;
    s->start = 0;
    s->end = 0;
    if (dim < 0)
        return 1;
    uint32_t part = (k == SP_EXP_ROW || k == SP_EXP_COL) ? t % (g->tp / g->ep) : t;
    uint64_t len = w->shape[dim] / parts;
    uint64_t ws = part * len, we = ws + len;
    s->dim = dim;
    if (d == w) {
        s->start = ws;
        s->end = we;
    } else {
        s->start = ws / DT_BLOCK;
        s->end = (we + DT_BLOCK - 1) / DT_BLOCK;
        if (s->end > d->shape[dim])
            s->end = d->shape[dim];
    }
    return 1;
}

static int geom_out(const geom *g, size_t i, const plan_slice *s, st_dtype *dtype, uint64_t shape[2],
                    uint64_t *bytes)
{
    const ck_tensor_desc *d = &g->t[i];
    if (g->dtype == PLAN_BF16 && d->is_scale)
        return 0;
    st_dtype dt = d->dtype;
    if (g->dtype == PLAN_BF16 && dt == ST_F8_E4M3)
        dt = ST_BF16;
    uint64_t sh[2] = {d->ndim > 0 ? d->shape[0] : 1, d->ndim > 1 ? d->shape[1] : 1};
    if (s && s->dim >= 0)
        sh[s->dim] = s->end - s->start;
    if (dtype)
        *dtype = dt;
    if (shape) {
        shape[0] = sh[0];
        shape[1] = sh[1];
    }
    if (bytes)
        *bytes = sh[0] * (d->ndim > 1 ? sh[1] : 1) * st_dtype_size(dt);
    return 1;
}

/* ---- validation ---- */

static void fmt_list(char *buf, size_t cap, const uint32_t *v, size_t n)
{
    size_t o = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && o + 12 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%u", i ? " " : "", v[i]);
    if (n == 0)
        snprintf(buf, cap, "none");
}

/* Unique (class, dtype, shape, is_scale) representatives, so divisibility checks cost
 * tens of tensors instead of 92k. Indices into t. */
static size_t representatives(const ck_tensor_desc *t, size_t n, size_t *rep, size_t cap)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i].is_scale)
            continue;
        size_t j;
        for (j = 0; j < m; j++) {
            const ck_tensor_desc *r = &t[rep[j]];
            if (r->cls == t[i].cls && r->dtype == t[i].dtype && r->ndim == t[i].ndim &&
                r->shape[0] == t[i].shape[0] && r->shape[1] == t[i].shape[1])
                break;
        }
        if (j == m && m < cap)
            rep[m++] = i;
    }
    return m;
}

/* Checks every split of geometry g; fills err (USAGE) on the first problem. */
static int geom_check(const geom *g, const size_t *rep, size_t nrep, dsr1_err *err)
{
    const ck_config *c = g->cfg;
    if (c->num_attention_heads % g->tp)
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_DIVIDE, 0,
                            "tp=%u does not divide num_attention_heads=%u", g->tp, c->num_attention_heads);
    if (c->vocab_size % g->tp)
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_DIVIDE, 0,
                            "tp=%u does not divide vocab_size=%u", g->tp, c->vocab_size);
    if (g->tp % g->ep)
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_DIVIDE, 0,
                            "ep=%u does not divide tp=%u (each EP group is tp/ep ranks)", g->ep, g->tp);
    if (c->n_routed_experts % g->ep)
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_DIVIDE, 0,
                            "ep=%u does not divide the %u routed experts", g->ep, c->n_routed_experts);
    for (size_t k = 0; k < nrep; k++) {
        const ck_tensor_desc *w = &g->t[rep[k]];
        int dim;
        uint32_t parts;
        weight_split(g, w, &dim, &parts);
        if (dim < 0)
            continue;
        uint64_t D = w->shape[dim];
        if (D % parts)
            return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_DIVIDE, 0,
                                "%s [%" PRIu64 ", %" PRIu64 "] cannot be split %u ways on dim %d (%" PRIu64
                                " is not a multiple of %u) with tp=%u ep=%u",
                                w->name, w->shape[0], w->shape[1], parts, dim, D, parts, g->tp, g->ep);
        if (g->dtype == PLAN_FP8 && w->dtype == ST_F8_E4M3 && (D / parts) % DT_BLOCK)
            return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_FP8_BLOCK, 0,
                                "tp=%u ep=%u would cut FP8 128x128 blocks: %s [%" PRIu64 ", %" PRIu64
                                "] split %u ways on dim %d gives %" PRIu64
                                "-element slices (must be multiples of 128)",
                                g->tp, g->ep, w->name, w->shape[0], w->shape[1], parts, dim, D / parts);
    }
    return 0;
}

static int load_tensors(const ck_config *cfg, int mtp, ck_tensor_desc **t, size_t *n, dsr1_err *err)
{
    int rc = ck_expected_tensors(cfg, mtp, t, n, err);
    if (rc)
        dsr1_err_prefix(err, "expected tensor list");
    return rc;
}

#define MAX_REP 256

size_t plan_valid_tp(const ck_config *cfg, uint32_t ep_req, plan_dtype dtype, int mtp, uint32_t max_tp,
                     uint32_t *out, size_t cap)
{
    ck_tensor_desc *t = NULL;
    size_t n = 0, m = 0;
    dsr1_err e;
    if (load_tensors(cfg, mtp, &t, &n, &e))
        return 0;
    size_t rep[MAX_REP];
    size_t nrep = representatives(t, n, rep, MAX_REP);
    for (uint32_t tp = 1; tp <= max_tp && m < cap; tp++) {
        uint32_t ep = ep_req ? ep_req : tp;
        if (ep > tp)
            continue;
        geom g = {cfg, t, n, tp, ep, dtype};
        if (geom_check(&g, rep, nrep, &e) == 0)
            out[m++] = tp;
    }
    free(t);
    return m;
}

/* Extends an FP8-block error with the valid tp values (and ep values for this tp). */
static void explain_fp8(const geom *g, const size_t *rep, size_t nrep, uint32_t ep_req, dsr1_err *err)
{
    uint32_t ok[64], eps[64];
    size_t nok = 0, neps = 0;
    dsr1_err e;
    for (uint32_t tp = 1; tp <= g->cfg->num_attention_heads && nok < 64; tp++) {
        uint32_t ep = ep_req ? ep_req : tp;
        if (ep > tp)
            continue;
        geom h = *g;
        h.tp = tp;
        h.ep = ep;
        if (geom_check(&h, rep, nrep, &e) == 0)
            ok[nok++] = tp;
    }
    for (uint32_t ep = 1; ep <= g->tp && neps < 64; ep++) {
        geom h = *g;
        h.ep = ep;
        if (geom_check(&h, rep, nrep, &e) == 0)
            eps[neps++] = ep;
    }
    char a[400], b[400];
    fmt_list(a, sizeof a, ok, nok);
    fmt_list(b, sizeof b, eps, neps);
    char ep_txt[32];
    if (ep_req)
        snprintf(ep_txt, sizeof ep_txt, "ep=%u", ep_req);
    else
        snprintf(ep_txt, sizeof ep_txt, "ep=tp");
    size_t l = strlen(err->msg);
    snprintf(err->msg + l, sizeof err->msg - l,
             ". Valid tp values with %s: %s; valid ep values with tp=%u: %s; or --dtype bf16 (dequantized "
             "slices need no block alignment)",
             ep_txt, a, g->tp, b);
}

/* ---- pipeline stages ---- */

typedef struct stage_costs {
    uint32_t L;            /* main decoder layers */
    uint64_t *layer;       /* per-rank bytes of layer l (rank 0 of the tp group) */
    uint64_t first, last;  /* embed; final norm + lm_head + MTP layer */
} stage_costs;

static int stage_costs_make(const geom *g, int mtp, stage_costs *sc)
{
    uint32_t L = g->cfg->num_hidden_layers;
    sc->L = L;
    sc->first = sc->last = 0;
    sc->layer = calloc(L ? L : 1, sizeof *sc->layer);
    if (!sc->layer)
        return -1;
    for (size_t i = 0; i < g->n; i++) {
        plan_slice s;
        uint64_t b;
        /* rank 0 is representative: splits are equal and EP groups hold equal counts */
        if (!geom_route(g, i, 0, &s) || !geom_out(g, i, &s, NULL, NULL, &b))
            continue;
        int32_t l = g->t[i].layer;
        if (l < 0) {
            if (g->t[i].cls == CK_EMBED)
                sc->first += b;
            else
                sc->last += b;
        } else if ((uint32_t)l < L) {
            sc->layer[l] += b;
        } else if (mtp) {
            sc->last += b;
        }
    }
    return 0;
}

/* Contiguous split of L layers into pp stages: first minimize the largest stage, then,
 * under that bound, the sum of squares (so the other stages stay balanced too).
 * cut[k] = first layer of stage k, cut[pp] = L. */
static int stage_split(const stage_costs *sc, uint32_t pp, uint32_t *cut, uint64_t *max_out)
{
    uint32_t L = sc->L;
    if (pp == 0 || pp > L)
        return -1;
    uint64_t *pre = malloc((L + 1) * sizeof *pre);
    uint64_t *f = calloc((size_t)(pp + 1) * (L + 1), sizeof *f);
    double *q = calloc((size_t)(pp + 1) * (L + 1), sizeof *q);
    uint32_t *arg = calloc((size_t)(pp + 1) * (L + 1), sizeof *arg);
    if (!pre || !f || !q || !arg) {
        free(pre); free(f); free(q); free(arg);
        return -1;
    }
    pre[0] = 0;
    for (uint32_t l = 0; l < L; l++)
        pre[l + 1] = pre[l] + sc->layer[l];
#define IX(k, j) ((size_t)(k) * (L + 1) + (j))
#define COST(k, i, j) (pre[j] - pre[i] + ((k) == 0 ? sc->first : 0) + ((k) == pp - 1 ? sc->last : 0))
    /* pass 1: minimal largest stage */
    for (uint32_t k = 0; k < pp; k++)
        for (uint32_t j = 0; j <= L; j++) {
            f[IX(k, j)] = UINT64_MAX;
            if (j < k + 1)
                continue;
            if (k == 0) {
                f[IX(k, j)] = COST(0, 0, j);
                continue;
            }
            for (uint32_t i = k; i < j; i++) {
                if (f[IX(k - 1, i)] == UINT64_MAX)
                    continue;
                uint64_t c = COST(k, i, j), m = f[IX(k - 1, i)] > c ? f[IX(k - 1, i)] : c;
                if (m < f[IX(k, j)])
                    f[IX(k, j)] = m;
            }
        }
    uint64_t best = f[IX(pp - 1, L)];
    /* pass 2: minimal sum of squares with every stage <= best */
    for (uint32_t k = 0; k < pp; k++)
        for (uint32_t j = 0; j <= L; j++) {
            q[IX(k, j)] = DBL_MAX;
            arg[IX(k, j)] = 0;
            if (j < k + 1)
                continue;
            if (k == 0) {
                uint64_t c = COST(0, 0, j);
                if (c <= best)
                    q[IX(k, j)] = (double)c * (double)c;
                continue;
            }
            for (uint32_t i = k; i < j; i++) {
                uint64_t c = COST(k, i, j);
                if (q[IX(k - 1, i)] == DBL_MAX || c > best)
                    continue;
                double v = q[IX(k - 1, i)] + (double)c * (double)c;
                if (v < q[IX(k, j)]) {
                    q[IX(k, j)] = v;
                    arg[IX(k, j)] = i;
                }
            }
        }
    cut[pp] = L;
    uint32_t j = L;
    for (uint32_t k = pp - 1; k > 0; k--) {
        j = arg[IX(k, j)];
        cut[k] = j;
    }
    cut[0] = 0;
#undef IX
#undef COST
    if (max_out)
        *max_out = best;
    free(pre); free(f); free(q); free(arg);
    return 0;
}

/* ---- plan_make ---- */

static int resolve(const ck_config *cfg, const plan_req *in, plan_req *r, uint32_t *world, dsr1_err *err)
{
    *r = *in;
    if (!r->tp) r->tp = 1;
    if (!r->ep) r->ep = r->tp;
    if (!r->pp) r->pp = 1;
    if (!r->dp) r->dp = 1;
    uint64_t w = (uint64_t)r->tp * r->pp * r->dp;
    if (w > 65536)
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_RANGE, 0,
                            "dp x pp x tp = %u x %u x %u is too large (%" PRIu64 " ranks)", r->dp, r->pp,
                            r->tp, w);
    *world = (uint32_t)w;
    if (r->pp > cfg->num_hidden_layers)
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_RANGE, 0,
                            "pp=%u exceeds the %u decoder layers (each stage needs at least one)", r->pp,
                            cfg->num_hidden_layers);
    if (!r->gpus_per_node && !r->nodes)
        r->gpus_per_node = *world < 8 ? *world : 8;
    if (!r->gpus_per_node) {
        if (*world % r->nodes)
            return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_WORLD, 0,
                                "dp x pp x tp = %u x %u x %u = %u ranks cannot be spread evenly over "
                                "%u nodes",
                                r->dp, r->pp, r->tp, *world, r->nodes);
        r->gpus_per_node = *world / r->nodes;
    }
    if (!r->nodes) {
        if (*world % r->gpus_per_node)
            return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_WORLD, 0,
                                "dp x pp x tp = %u x %u x %u = %u ranks do not fill whole nodes of %u "
                                "GPUs; pass --nodes and --gpus-per-node",
                                r->dp, r->pp, r->tp, *world, r->gpus_per_node);
        r->nodes = *world / r->gpus_per_node;
    }
    uint64_t gpus = (uint64_t)r->nodes * r->gpus_per_node;
    if (gpus != *world) {
        char need[96] = "";
        if (*world % r->gpus_per_node == 0)
            snprintf(need, sizeof need, " (%u nodes of %u)", *world / r->gpus_per_node, r->gpus_per_node);
        return dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_WORLD, 0,
                            "dp x pp x tp = %u x %u x %u = %u ranks, but %u nodes x %u GPUs = %" PRIu64
                            " GPUs: this plan needs %u GPUs%s",
                            r->dp, r->pp, r->tp, *world, r->nodes, r->gpus_per_node, gpus, *world, need);
    }
    return 0;
}

static void shard_fit(plan *p)
{
    uint64_t kv_layer = plan_kv_bytes_per_token_layer(&p->cfg, &p->req);
    p->fits = 1;
    p->shortfall = 0;
    p->worst_shard = 0;
    int64_t worst = INT64_MIN;
    for (size_t s = 0; s < p->n_shards; s++) {
        plan_shard *sh = &p->shards[s];
        sh->kv_bytes_per_token = kv_layer * p->stages[sh->pp_stage].n_layers;
        if (!p->req.gpu_mem) {
            sh->free_bytes = 0;
            sh->kv_tokens = 0;
            continue;
        }
        sh->free_bytes = (int64_t)p->req.gpu_mem - (int64_t)p->reserve - (int64_t)sh->weight_bytes;
        sh->kv_tokens = sh->free_bytes > 0 && sh->kv_bytes_per_token
                            ? (uint64_t)sh->free_bytes / sh->kv_bytes_per_token
                            : 0;
        int64_t need = (int64_t)sh->weight_bytes + (int64_t)p->reserve +
                       (int64_t)(p->min_kv_tokens * sh->kv_bytes_per_token) - (int64_t)p->req.gpu_mem;
        if (need > worst) {
            worst = need;
            p->worst_shard = (uint32_t)s;
        }
    }
    if (p->req.gpu_mem && worst > 0) {
        p->fits = 0;
        p->shortfall = worst;
    }
}

static int build(plan *p, dsr1_err *err)
{
    const plan_req *r = &p->req;
    geom g = {&p->cfg, p->tensors, p->n_tensors, r->tp, r->ep, r->dtype};
    size_t rep[MAX_REP];
    size_t nrep = representatives(p->tensors, p->n_tensors, rep, MAX_REP);
    if (geom_check(&g, rep, nrep, err)) {
        if (err->code == PLAN_ERR_FP8_BLOCK)
            explain_fp8(&g, rep, nrep, r->ep == r->tp ? 0 : r->ep, err);
        return DSR1_E_USAGE;
    }
    stage_costs sc;
    if (stage_costs_make(&g, r->mtp, &sc))
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory planning stages");
    uint32_t *cut = malloc((r->pp + 1) * sizeof *cut);
    if (!cut || stage_split(&sc, r->pp, cut, NULL)) {
        free(cut);
        free(sc.layer);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory planning stages");
    }
    free(sc.layer);
    uint32_t L = p->cfg.num_hidden_layers;
    p->stages = calloc(r->pp, sizeof *p->stages);
    p->n_shards = (size_t)r->pp * r->tp;
    p->shards = calloc(p->n_shards, sizeof *p->shards);
    p->ranks = calloc(p->world, sizeof *p->ranks);
    p->stage_of = calloc(p->n_tensors ? p->n_tensors : 1, sizeof *p->stage_of);
    if (!p->stages || !p->shards || !p->ranks || !p->stage_of) {
        free(cut);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    for (uint32_t k = 0; k < r->pp; k++) {
        plan_stage *st = &p->stages[k];
        st->layer_first = (int32_t)cut[k];
        st->layer_last = (int32_t)cut[k + 1] - 1;
        if (k == r->pp - 1 && r->mtp)
            st->layer_last = (int32_t)(L + p->cfg.num_nextn_predict_layers) - 1;
        st->n_layers = (uint32_t)(st->layer_last - st->layer_first + 1);
        st->has_embed = k == 0;
        st->has_head = k == r->pp - 1;
    }
    for (size_t i = 0; i < p->n_tensors; i++) {
        int32_t l = p->tensors[i].layer;
        uint32_t k;
        if (l < 0)
            k = p->tensors[i].cls == CK_EMBED ? 0 : r->pp - 1;
        else if ((uint32_t)l >= L)
            k = r->pp - 1;
        else
            for (k = 0; k + 1 < r->pp && (uint32_t)l >= cut[k + 1]; k++)
                ;
        p->stage_of[i] = k;
    }
    free(cut);
    uint32_t gsz = r->tp / r->ep, per = p->cfg.n_routed_experts / r->ep;
    for (uint32_t k = 0; k < r->pp; k++)
        for (uint32_t t = 0; t < r->tp; t++) {
            plan_shard *sh = &p->shards[(size_t)k * r->tp + t];
            sh->pp_stage = k;
            sh->tp_rank = t;
            sh->expert_first = (t / gsz) * per;
            sh->expert_count = per;
            sh->expert_parts = gsz;
        }
    for (size_t i = 0; i < p->n_tensors; i++) {
        uint32_t k = p->stage_of[i];
        for (uint32_t t = 0; t < r->tp; t++) {
            plan_slice s;
            uint64_t b;
            if (!geom_route(&g, i, t, &s) || !geom_out(&g, i, &s, NULL, NULL, &b))
                continue;
            plan_shard *sh = &p->shards[(size_t)k * r->tp + t];
            sh->n_tensors++;
            sh->weight_bytes += b;
        }
    }
    p->total_unique_bytes = 0;
    for (size_t s = 0; s < p->n_shards; s++)
        p->total_unique_bytes += p->shards[s].weight_bytes;
    p->tp_spans_nodes = 0;
    for (uint32_t rk = 0; rk < p->world; rk++) {
        plan_rank *x = &p->ranks[rk];
        x->rank = rk;
        x->tp = rk % r->tp;
        x->pp = (rk / r->tp) % r->pp;
        x->dp = rk / (r->tp * r->pp);
        x->node = rk / r->gpus_per_node;
        x->local_rank = rk % r->gpus_per_node;
        x->shard = x->pp * r->tp + x->tp;
        uint32_t base = rk - x->tp;
        if (base / r->gpus_per_node != (base + r->tp - 1) / r->gpus_per_node)
            p->tp_spans_nodes = 1;
    }
    shard_fit(p);
    return 0;
}

int plan_make(plan **out, const ck_config *cfg, const plan_req *req, dsr1_err *err)
{
    *out = NULL;
    plan *p = calloc(1, sizeof *p);
    if (!p)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    p->cfg = *cfg;
    int rc = resolve(cfg, req, &p->req, &p->world, err);
    if (!rc && p->req.mtp && cfg->num_nextn_predict_layers == 0)
        rc = dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_RANGE, 0,
                          "--mtp: config.json has num_nextn_predict_layers = 0 (no MTP layer)");
    if (!rc && p->req.gpu_kind[0] && !p->req.gpu_mem) {
        const plan_gpu_kind *k = plan_gpu_kind_find(p->req.gpu_kind);
        if (!k)
            rc = dsr1_err_set(err, DSR1_E_USAGE, PLAN_ERR_GPU_KIND, 0, "unknown GPU kind '%s'",
                              p->req.gpu_kind);
        else
            p->req.gpu_mem = k->bytes;
    }
    p->reserve = req->reserve == 0 ? PLAN_DEFAULT_RESERVE : req->reserve == UINT64_MAX ? 0 : req->reserve;
    p->min_kv_tokens = req->min_kv_tokens == 0            ? PLAN_DEFAULT_MIN_KV_TOKENS
                       : req->min_kv_tokens == UINT64_MAX ? 0
                                                          : req->min_kv_tokens;
    if (!rc)
        rc = load_tensors(cfg, p->req.mtp, &p->tensors, &p->n_tensors, err);
    if (!rc)
        rc = build(p, err);
    if (rc) {
        plan_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void plan_free(plan *p)
{
    if (!p)
        return;
    free(p->tensors);
    free(p->stage_of);
    free(p->stages);
    free(p->shards);
    free(p->ranks);
    free(p);
}

int plan_route(const plan *p, size_t i, uint32_t tp_rank, plan_slice *s)
{
    geom g = {&p->cfg, p->tensors, p->n_tensors, p->req.tp, p->req.ep, p->req.dtype};
    return geom_route(&g, i, tp_rank, s);
}

int plan_out_tensor(const plan *p, size_t i, const plan_slice *s, st_dtype *dtype, uint64_t shape[2],
                    uint64_t *bytes)
{
    geom g = {&p->cfg, p->tensors, p->n_tensors, p->req.tp, p->req.ep, p->req.dtype};
    return geom_out(&g, i, s, dtype, shape, bytes);
}

void plan_shard_file(const plan *p, size_t shard, char *buf, size_t cap)
{
    const plan_shard *s = &p->shards[shard];
    uint32_t m = p->req.pp > p->req.tp ? p->req.pp : p->req.tp;
    int w = 2;
    for (uint32_t v = 100; v <= m; v *= 10)
        w++;
    snprintf(buf, cap, "model-pp%0*u-tp%0*u-of-pp%0*u-tp%0*u.safetensors", w, s->pp_stage, w, s->tp_rank, w,
             p->req.pp, w, p->req.tp);
}

/* ---- suggestions ---- */

typedef struct cand {
    plan_suggestion s;
    uint32_t tp_dist;    /* |log2 tp - log2 requested tp| */
    uint32_t world_dist; /* |world - requested world| */
} cand;

/* Category 0 (same GPUs, same dtype): fewest GPUs first. Category 1 (other GPU kind):
 * the GPU count closest to the request, then the smallest memory that fits.
 * Category 2 (other dtype on the same GPUs): fewest GPUs. Then keep tp groups inside
 * nodes, tp close to the request, shallow pipelines. */
static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
#define KEY(f)                                                                                         \
    if (x->f != y->f)                                                                                  \
        return x->f < y->f ? -1 : 1;
    KEY(s.category)
    if (x->s.category == 1) {
        KEY(world_dist)
        KEY(s.tp_spans_nodes)
        KEY(s.req.gpu_mem)
    }
    KEY(s.world)
    KEY(s.tp_spans_nodes)
    KEY(tp_dist)
    KEY(s.req.pp)
    KEY(s.req.gpu_mem)
    KEY(s.req.tp)
#undef KEY
    return 0;
}

static uint32_t ilog2u(uint32_t v)
{
    uint32_t r = 0;
    while (v >>= 1)
        r++;
    return r;
}

size_t plan_suggest(const ck_config *cfg, const plan_req *req_in, plan_suggestion *out, size_t cap)
{
    plan_req req;
    uint32_t world0;
    dsr1_err e;
    if (resolve(cfg, req_in, &req, &world0, &e) && e.code == PLAN_ERR_RANGE)
        return 0;
    if (!req.tp) req.tp = 1;
    if (!req.dp) req.dp = 1;
    if (!req.gpus_per_node) req.gpus_per_node = 8;
    uint64_t mem0 = req.gpu_mem;
    if (!mem0 && req.gpu_kind[0]) {
        const plan_gpu_kind *k = plan_gpu_kind_find(req.gpu_kind);
        mem0 = k ? k->bytes : 0;
    }
    if (!mem0)
        return 0;
    uint64_t reserve = req.reserve == 0 ? PLAN_DEFAULT_RESERVE : req.reserve == UINT64_MAX ? 0 : req.reserve;
    uint64_t min_kv = req.min_kv_tokens == 0            ? PLAN_DEFAULT_MIN_KV_TOKENS
                      : req.min_kv_tokens == UINT64_MAX ? 0
                                                        : req.min_kv_tokens;
    uint32_t ep_req = (req_in->ep == 0 || req_in->ep == req.tp) ? 0 : req_in->ep;
    uint64_t kv_layer = plan_kv_bytes_per_token_layer(cfg, &req);

    size_t nk;
    const plan_gpu_kind *kk = plan_gpu_kinds(&nk);
    /* memory options: the requested one first, then every named kind */
    struct { uint64_t mem; const char *name; } mems[16];
    size_t nm = 0;
    mems[nm].mem = mem0;
    mems[nm++].name = req.gpu_kind;
    for (size_t i = 0; i < nk && nm < 16; i++)
        if (kk[i].bytes != mem0)
            mems[nm].mem = kk[i].bytes, mems[nm++].name = kk[i].name;

    size_t cand_cap = 4096, nc = 0;
    cand *cands = malloc(cand_cap * sizeof *cands);
    if (!cands)
        return 0;
    size_t rep[MAX_REP];
    for (int dt = 0; dt < 2; dt++) {
        plan_dtype dtype = dt == 0 ? req.dtype : (req.dtype == PLAN_FP8 ? PLAN_BF16 : PLAN_FP8);
        {
            const int mtp = req.mtp;
            ck_tensor_desc *t = NULL;
            size_t n = 0;
            if (load_tensors(cfg, mtp, &t, &n, &e))
                continue;
            size_t nrep = representatives(t, n, rep, MAX_REP);
            for (uint32_t tp = 1; tp <= 64; tp *= 2) {
                uint32_t ep = ep_req ? ep_req : tp;
                if (ep > tp)
                    continue;
                geom g = {cfg, t, n, tp, ep, dtype};
                if (geom_check(&g, rep, nrep, &e))
                    continue;
                stage_costs sc;
                if (stage_costs_make(&g, mtp, &sc))
                    continue;
                for (uint32_t pp = 1; pp <= 16 && pp <= cfg->num_hidden_layers; pp++) {
                    uint64_t w = (uint64_t)req.dp * pp * tp;
                    if (w > 512 || (w % req.gpus_per_node && w > req.gpus_per_node))
                        continue;
                    uint32_t cut[17];
                    uint64_t maxb;
                    if (stage_split(&sc, pp, cut, &maxb))
                        continue;
                    /* the fit needs the per-stage worst of weights + min KV */
                    int fits_all[16];
                    size_t nmm = nm;
                    for (size_t mi = 0; mi < nmm; mi++)
                        fits_all[mi] = 1;
                    uint64_t min_tokens[16];
                    for (size_t mi = 0; mi < nmm; mi++)
                        min_tokens[mi] = UINT64_MAX;
                    for (uint32_t k = 0; k < pp; k++) {
                        uint64_t b = 0;
                        for (uint32_t l = cut[k]; l < cut[k + 1]; l++)
                            b += sc.layer[l];
                        b += (k == 0 ? sc.first : 0) + (k == pp - 1 ? sc.last : 0);
                        uint32_t nl = cut[k + 1] - cut[k] +
                                      (k == pp - 1 && mtp ? cfg->num_nextn_predict_layers : 0);
                        uint64_t kvpt = kv_layer * nl;
                        for (size_t mi = 0; mi < nmm; mi++) {
                            if (b + reserve + min_kv * kvpt > mems[mi].mem) {
                                fits_all[mi] = 0;
                                continue;
                            }
                            uint64_t tok = kvpt ? (mems[mi].mem - reserve - b) / kvpt : 0;
                            if (tok < min_tokens[mi])
                                min_tokens[mi] = tok;
                        }
                    }
                    for (size_t mi = 0; mi < nmm; mi++) {
                        if (!fits_all[mi])
                            continue;
                        if (dtype == req.dtype && mi == 0 && tp == req.tp && pp == req.pp &&
                            (uint32_t)w == world0)
                            continue; /* the request itself */
                        if (dtype != req.dtype && mi != 0)
                            continue; /* one change at a time */
                        if (nc == cand_cap)
                            break;
                        cand *cd = &cands[nc++];
                        memset(cd, 0, sizeof *cd);
                        uint32_t la = ilog2u(tp), lb = ilog2u(req.tp);
                        cd->tp_dist = la > lb ? la - lb : lb - la;
                        cd->world_dist = (uint32_t)(w > world0 ? w - world0 : world0 - w);
                        plan_suggestion *s = &cd->s;
                        s->req = req;
                        s->req.tp = tp;
                        s->req.ep = ep;
                        s->req.pp = pp;
                        s->req.dtype = dtype;
                        s->req.mtp = mtp;
                        s->req.gpu_mem = mems[mi].mem;
                        snprintf(s->req.gpu_kind, sizeof s->req.gpu_kind, "%s", mems[mi].name);
                        s->world = (uint32_t)w;
                        s->req.gpus_per_node = w < req.gpus_per_node ? (uint32_t)w : req.gpus_per_node;
                        s->req.nodes = (uint32_t)(w / s->req.gpus_per_node);
                        s->category = dtype != req.dtype ? 2 : mi != 0 ? 1 : 0;
                        s->max_weight_bytes = maxb;
                        s->min_kv_tokens = min_tokens[mi];
                        uint32_t gpn = s->req.gpus_per_node;
                        s->tp_spans_nodes = tp > gpn || gpn % tp != 0;
                    }
                }
                free(sc.layer);
            }
            free(t);
        }
    }
    qsort(cands, nc, sizeof *cands, cand_cmp);
    /* the best two of each category */
    size_t m = 0, per_cat[3] = {0, 0, 0};
    for (size_t i = 0; i < nc && m < cap; i++) {
        int c = cands[i].s.category;
        if (per_cat[c] >= 2)
            continue;
        int dup = 0; /* other GPU kinds: one suggestion per kind */
        for (size_t j = 0; c == 1 && j < m; j++)
            dup |= out[j].category == 1 && out[j].req.gpu_mem == cands[i].s.req.gpu_mem;
        if (dup)
            continue;
        per_cat[c]++;
        out[m++] = cands[i].s;
    }
    free(cands);
    return m;
}
