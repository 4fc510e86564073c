/* plan: routing, coverage, stages, fit and suggestions on the real R1 config and the
 * tiny synth preset. */
#include "test.h"
#include "plan.h"
#include "synth.h"

#include <stdlib.h>

static plan *make(const ck_config *c, uint32_t tp, uint32_t ep, uint32_t pp, uint32_t dp, uint32_t nodes,
                  plan_dtype dt, int mtp, const char *kind, dsr1_err *e)
{
    plan_req r;
    memset(&r, 0, sizeof r);
    r.tp = tp;
    r.ep = ep;
    r.pp = pp;
    r.dp = dp;
    r.nodes = nodes;
    r.dtype = dt;
    r.mtp = mtp;
    if (kind)
        snprintf(r.gpu_kind, sizeof r.gpu_kind, "%s", kind);
    plan *p = NULL;
    dsr1_err_clear(e);
    plan_make(&p, c, &r, e);
    return p;
}

static void r1(ck_config *c) { ck_config_r1(c); }

static void tiny(ck_config *c)
{
    dsr1_err e;
    CHECK_EQ_INT(sy_preset("tiny", 0, c, NULL, &e), 0);
}

TEST(plan_r1_totals_match_reference)
{
    ck_config c;
    r1(&c);
    dsr1_err e;
    /* deepseek-v3-reference.md §2: whole checkpoint, main model, bf16 dequant */
    plan *p = make(&c, 1, 1, 1, 1, 0, PLAN_FP8, 1, NULL, &e);
    CHECK(p);
    if (p)
        CHECK_EQ_U64(p->total_unique_bytes, 688574839360ULL);
    plan_free(p);
    p = make(&c, 1, 1, 1, 1, 0, PLAN_FP8, 0, NULL, &e);
    if (p)
        CHECK_EQ_U64(p->total_unique_bytes, 673150611808ULL);
    plan_free(p);
    p = make(&c, 1, 1, 1, 1, 0, PLAN_BF16, 1, NULL, &e);
    if (p)
        CHECK_EQ_U64(p->total_unique_bytes, 1368979721216ULL);
    plan_free(p);
}

TEST(plan_r1_tp8_h100_does_not_fit_h200_does)
{
    ck_config c;
    r1(&c);
    dsr1_err e;
    plan *p = make(&c, 8, 0, 1, 1, 0, PLAN_FP8, 0, "h100-80g", &e);
    CHECK(p);
    if (!p)
        return;
    CHECK_EQ_INT(p->fits, 0);
    CHECK(p->shortfall > 5000000000LL);
    CHECK_EQ_INT(p->req.ep, 8);
    CHECK_EQ_INT(p->req.nodes, 1);
    CHECK_EQ_INT(p->req.gpus_per_node, 8);
    /* every tp rank holds the same bytes; 673.15 GB / 8 plus the replicated parts */
    for (size_t i = 1; i < p->n_shards; i++)
        CHECK_EQ_U64(p->shards[i].weight_bytes, p->shards[0].weight_bytes);
    CHECK(p->shards[0].weight_bytes > 84000000000ULL && p->shards[0].weight_bytes < 86000000000ULL);
    CHECK_EQ_INT(p->shards[3].expert_first, 96);
    CHECK_EQ_INT(p->shards[3].expert_count, 32);
    CHECK_EQ_INT(p->shards[3].expert_parts, 1);
    plan_suggestion sg[6];
    size_t n = plan_suggest(&c, &p->req, sg, 6);
    CHECK(n >= 3);
    /* nearest with the same GPUs: tp=8 x pp=2 on two nodes */
    CHECK_EQ_INT(sg[0].category, 0);
    CHECK_EQ_INT(sg[0].req.tp, 8);
    CHECK_EQ_INT(sg[0].req.pp, 2);
    CHECK_EQ_INT(sg[0].world, 16);
    CHECK_EQ_INT(sg[0].req.nodes, 2);
    int saw_bf16 = 0, saw_kind = 0;
    for (size_t i = 0; i < n; i++) {
        saw_bf16 |= sg[i].category == 2 && sg[i].req.dtype == PLAN_BF16;
        saw_kind |= sg[i].category == 1 && sg[i].world == 8;
        /* every suggestion must itself fit */
        dsr1_err e2;
        plan *q = NULL;
        CHECK_EQ_INT(plan_make(&q, &c, &sg[i].req, &e2), 0);
        if (q)
            CHECK_MSG(q->fits, "suggestion %zu does not fit", i);
        plan_free(q);
    }
    CHECK(saw_bf16);
    CHECK(saw_kind);
    plan_free(p);
    p = make(&c, 8, 0, 1, 1, 0, PLAN_FP8, 0, "h200-141g", &e);
    CHECK(p && p->fits);
    plan_free(p);
}

TEST(plan_r1_two_and_four_nodes_fit)
{
    ck_config c;
    r1(&c);
    dsr1_err e;
    plan *p = make(&c, 8, 0, 2, 1, 2, PLAN_FP8, 0, "h100-80g", &e);
    CHECK(p && p->fits);
    if (p) {
        CHECK_EQ_INT(p->world, 16);
        CHECK_EQ_INT(p->tp_spans_nodes, 0);
        CHECK_EQ_INT(p->stages[0].layer_first, 0);
        CHECK_EQ_INT(p->stages[1].layer_last, 60);
        CHECK_EQ_INT(p->stages[0].layer_last + 1, p->stages[1].layer_first);
        /* balanced within one MoE layer */
        int64_t d = (int64_t)p->shards[0].weight_bytes - (int64_t)p->shards[8].weight_bytes;
        CHECK(llabs(d) < 1500000000LL);
        CHECK_EQ_INT(p->ranks[9].node, 1);
        CHECK_EQ_INT(p->ranks[9].pp, 1);
        CHECK_EQ_INT(p->ranks[9].tp, 1);
        CHECK_EQ_INT(p->ranks[9].shard, 9);
    }
    plan_free(p);
    p = make(&c, 8, 0, 4, 1, 4, PLAN_BF16, 0, "h100-80g", &e);
    CHECK(p && p->fits);
    plan_free(p);
    /* tp=16 across two nodes works but warns */
    p = make(&c, 16, 0, 1, 1, 2, PLAN_FP8, 0, "h100-80g", &e);
    CHECK(p && p->fits && p->tp_spans_nodes);
    plan_free(p);
}

TEST(plan_world_mismatch_names_the_needed_gpus)
{
    ck_config c;
    r1(&c);
    dsr1_err e;
    plan_req r;
    memset(&r, 0, sizeof r);
    r.dp = 4;
    r.tp = 8;
    r.pp = 4;
    r.nodes = 4;
    r.gpus_per_node = 8;
    plan *p = NULL;
    CHECK_EQ_INT(plan_make(&p, &c, &r, &e), DSR1_E_USAGE);
    CHECK(!p);
    CHECK_EQ_INT(e.code, PLAN_ERR_WORLD);
    CHECK_CONTAINS(e.msg, "128 ranks");
    CHECK_CONTAINS(e.msg, "32 GPUs");
    CHECK_CONTAINS(e.msg, "needs 128 GPUs (16 nodes of 8)");
}

TEST(plan_divisibility_errors)
{
    ck_config c;
    r1(&c);
    dsr1_err e;
    CHECK(!make(&c, 8, 3, 1, 1, 0, PLAN_FP8, 0, NULL, &e));
    CHECK_EQ_INT(e.code, PLAN_ERR_DIVIDE);
    CHECK_CONTAINS(e.msg, "ep=3 does not divide tp=8");
    CHECK(!make(&c, 6, 6, 1, 1, 1, PLAN_FP8, 0, NULL, &e));
    CHECK_EQ_INT(e.status, DSR1_E_USAGE);
    CHECK(!make(&c, 1, 1, 62, 1, 0, PLAN_FP8, 0, NULL, &e));
    CHECK_EQ_INT(e.code, PLAN_ERR_RANGE);
    /* tp=32 cuts the dense MLP (18432/32 = 576) and, with ep=1, the experts (64) */
    CHECK(!make(&c, 32, 1, 1, 1, 4, PLAN_FP8, 0, NULL, &e));
    CHECK_EQ_INT(e.code, PLAN_ERR_FP8_BLOCK);
    CHECK_CONTAINS(e.msg, "mlp.gate_proj.weight [18432, 7168] split 32 ways on dim 0 gives 576-element");
    CHECK_CONTAINS(e.msg, "Valid tp values with ep=1: 1 2 4 8 16");
    /* bf16 needs no block alignment, only divisibility */
    plan *p = make(&c, 32, 1, 1, 1, 4, PLAN_BF16, 0, NULL, &e);
    CHECK_MSG(p != NULL, "%s", e.msg);
    plan_free(p);
}

TEST(plan_tiny_tp4_ep1_cuts_blocks_ep4_works)
{
    ck_config c;
    tiny(&c);
    dsr1_err e;
    CHECK(!make(&c, 4, 1, 1, 1, 0, PLAN_FP8, 0, NULL, &e));
    CHECK_EQ_INT(e.code, PLAN_ERR_FP8_BLOCK);
    CHECK_CONTAINS(e.msg, "mlp.experts.0.gate_proj.weight");
    CHECK_CONTAINS(e.msg, "Valid tp values with ep=1: 1 2;");
    CHECK_CONTAINS(e.msg, "valid ep values with tp=4: 2 4");
    plan *p = make(&c, 4, 4, 1, 1, 0, PLAN_FP8, 1, NULL, &e);
    CHECK_MSG(p != NULL, "%s", e.msg);
    if (p) /* the shared expert (256 rows) cannot split 4 ways on blocks: whole copies */
        CHECK_EQ_INT(plan_shared_replicated(p), 1);
    plan_free(p);
    p = make(&c, 2, 2, 1, 1, 0, PLAN_FP8, 1, NULL, &e);
    if (p)
        CHECK_EQ_INT(plan_shared_replicated(p), 0);
    plan_free(p);
    uint32_t v[16];
    size_t n = plan_valid_tp(&c, 1, PLAN_FP8, 0, 16, v, 16);
    CHECK_EQ_INT(n, 2);
}

/* Within a stage every element of a split tensor is covered exactly once, scales follow
 * their weights' blocks, replicated tensors are whole everywhere, and every tensor lives
 * in exactly one stage. */
static void check_coverage(const plan *p)
{
    uint32_t tp = p->req.tp;
    for (size_t i = 0; i < p->n_tensors; i++) {
        const ck_tensor_desc *d = &p->tensors[i];
        CHECK(p->stage_of[i] < p->req.pp);
        if (d->is_scale && p->req.dtype == PLAN_BF16)
            continue; /* not written; the engine reads the whole scale */
        int whole = 0, split = 0, dim = -2;
        uint64_t covered = 0, next = 0;
        for (uint32_t t = 0; t < tp; t++) {
            plan_slice s;
            if (!plan_route(p, i, t, &s))
                continue;
            if (s.dim < 0) {
                whole++;
                continue;
            }
            if (dim == -2)
                dim = s.dim;
            CHECK_EQ_INT(s.dim, dim);
            split++;
            covered += s.end - s.start;
            /* slices are disjoint and ordered by rank within an EP group */
            if (s.start < next && s.start != 0)
                CHECK_MSG(0, "%s: overlapping slices", d->name);
            next = s.end;
            if (!d->is_scale && p->req.dtype == PLAN_FP8 && d->dtype == ST_F8_E4M3) {
                CHECK_MSG(s.start % 128 == 0, "%s starts at %" PRIu64, d->name, s.start);
                CHECK_MSG(s.end % 128 == 0 || s.end == d->shape[s.dim], "%s ends at %" PRIu64, d->name, s.end);
            }
            if (d->is_scale) {
                plan_slice w;
                CHECK(plan_route(p, (size_t)d->weight_of, t, &w));
                CHECK_EQ_U64(s.start, w.start / 128);
                CHECK_EQ_U64(s.end, (w.end + 127) / 128);
            }
        }
        if (split) {
            CHECK_MSG(whole == 0, "%s: both whole and split", d->name);
            CHECK_MSG(covered == d->shape[dim], "%s: %" PRIu64 " of %" PRIu64 " covered", d->name, covered,
                      d->shape[dim]);
        } else {
            CHECK_MSG(whole >= 1, "%s held by nobody", d->name);
            if (d->expert < 0)
                CHECK_MSG(whole == (int)tp, "%s: replicated on %d of %u ranks", d->name, whole, tp);
        }
    }
}

TEST(plan_coverage_exactly_once)
{
    ck_config c;
    tiny(&c);
    static const uint32_t m[][4] = {{1, 1, 1, 1}, {2, 2, 1, 1}, {2, 1, 1, 1}, {4, 4, 1, 1},
                                    {4, 2, 2, 1}, {2, 2, 2, 2}, {2, 1, 3, 1}};
    for (size_t k = 0; k < sizeof m / sizeof m[0]; k++)
        for (int mtp = 0; mtp < 2; mtp++)
            for (int dt = 0; dt < 2; dt++) {
                dsr1_err e;
                plan *p = make(&c, m[k][0], m[k][1], m[k][2], m[k][3], 0, (plan_dtype)dt, mtp, NULL, &e);
                CHECK_MSG(p != NULL, "plan %zu: %s", k, e.msg);
                if (p)
                    check_coverage(p);
                plan_free(p);
            }
    ck_config r;
    r1(&r);
    dsr1_err e;
    plan *p = make(&r, 8, 8, 2, 1, 2, PLAN_FP8, 1, NULL, &e);
    if (p)
        check_coverage(p);
    plan_free(p);
    p = make(&r, 16, 4, 1, 1, 2, PLAN_FP8, 0, NULL, &e);
    CHECK_MSG(p != NULL, "%s", e.msg);
    if (p) {
        check_coverage(p);
        CHECK_EQ_INT(p->shards[5].expert_parts, 4);
        CHECK_EQ_INT(p->shards[5].expert_first, 64);
    }
    plan_free(p);
}

TEST(plan_mtp_on_last_stage)
{
    ck_config c;
    tiny(&c);
    dsr1_err e;
    plan *p = make(&c, 2, 2, 2, 1, 0, PLAN_FP8, 1, NULL, &e);
    CHECK(p);
    if (!p)
        return;
    CHECK_EQ_INT(p->stages[1].layer_last, (int)c.num_hidden_layers);
    for (size_t i = 0; i < p->n_tensors; i++) {
        if (p->tensors[i].layer >= (int32_t)c.num_hidden_layers || p->tensors[i].cls == CK_LM_HEAD ||
            p->tensors[i].cls == CK_FINAL_NORM)
            CHECK_EQ_INT(p->stage_of[i], 1);
        if (p->tensors[i].cls == CK_EMBED)
            CHECK_EQ_INT(p->stage_of[i], 0);
    }
    plan_free(p);
}

TEST(plan_file_names)
{
    ck_config c;
    tiny(&c);
    dsr1_err e;
    plan *p = make(&c, 2, 2, 2, 1, 0, PLAN_FP8, 0, NULL, &e);
    char b[128];
    plan_shard_file(p, 3, b, sizeof b);
    CHECK_EQ_STR(b, "model-pp01-tp01-of-pp02-tp02.safetensors");
    plan_free(p);
}

TEST(plan_kv_cache_tokens)
{
    ck_config c;
    r1(&c);
    /* dsr1-serve's cache is fp32 (the default); a BF16 cache halves it */
    plan_req bf = {0};
    bf.kv_bytes = 2;
    CHECK_EQ_U64(plan_kv_bytes_per_token_layer(&c, NULL), 2304);
    CHECK_EQ_U64(plan_kv_bytes_per_token_layer(&c, &bf), 1152);
    CHECK_EQ_U64(plan_kv_bytes_per_token_layer(&c, NULL) * 61, 140544);
    dsr1_err e;
    plan *p = make(&c, 8, 8, 1, 1, 0, PLAN_FP8, 0, "h200-141g", &e);
    if (p) {
        const plan_shard *s = &p->shards[0];
        CHECK_EQ_U64(s->kv_bytes_per_token, 140544);
        CHECK_EQ_U64(s->kv_tokens, (uint64_t)s->free_bytes / 140544);
        CHECK_EQ_INT((int64_t)s->free_bytes,
                     (int64_t)(143771ULL << 20) - (int64_t)PLAN_DEFAULT_RESERVE - (int64_t)s->weight_bytes);
    }
    plan_free(p);
}
