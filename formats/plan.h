/* plan: the parallel plan (TP / EP / PP / DP) for DeepSeek-V3/R1, computed from the
 * config and the expected tensor list alone (no weight is read).
 *
 * Layout (docs/formats/shard.md has the full rules):
 *  - world = dp x pp x tp; global rank r = (dp_i * pp + pp_i) * tp + tp_i (tp fastest);
 *    node = r / gpus_per_node, local_rank = r % gpus_per_node.
 *  - tp splits (DeepSeek convert.py): dim 0 of embed, lm_head, q_b, kv_b, dense and shared
 *    gate/up, MTP embed and head; dim 1 of o_proj, dense and shared down. Replicated:
 *    norms, q_a, kv_a, router weight and bias, MTP eh_proj; and the shared expert when
 *    its even split would cut 128-blocks (tiny models; never R1 at tp <= 16).
 *  - ep divides tp: tp rank t is in EP group t / (tp/ep) and owns experts
 *    [g * E/ep, (g+1) * E/ep) of that group, each split tp/ep ways (gate/up dim 0,
 *    down dim 1) at part t % (tp/ep).
 *  - pp: contiguous layer ranges minimizing the largest per-rank weight bytes; embed
 *    on the first stage, final norm + lm_head (+ MTP layer with mtp) on the last.
 *  - A scale_inv follows its weight: the block range [start/128, ceil(end/128)).
 *
 * Lifetimes: a plan owns everything it points to; plan_free() releases it.
 */
#ifndef DSR1_PLAN_H
#define DSR1_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "ck.h"
#include "err.h"

typedef enum { PLAN_FP8 = 0, PLAN_BF16 = 1 } plan_dtype;

enum {
    PLAN_ERR_NONE = 0,
    PLAN_ERR_WORLD,     /* dp x pp x tp != nodes x gpus_per_node, or inconsistent counts */
    PLAN_ERR_DIVIDE,    /* ep/tp does not divide a dimension (experts, heads, vocab...) */
    PLAN_ERR_FP8_BLOCK, /* a slice would cut a 128x128 FP8 block */
    PLAN_ERR_RANGE,     /* a count is zero / too large (pp > layers...) */
    PLAN_ERR_GPU_KIND,  /* unknown named GPU kind */
};

/* Capacity reserved per GPU for the CUDA/NCCL context, activations and workspaces. */
#define PLAN_DEFAULT_RESERVE (4ULL << 30)
/* KV-cache tokens that must fit next to the weights (one full-length R1 answer). */
#define PLAN_DEFAULT_MIN_KV_TOKENS 32768ULL
/* Bytes per cached latent element: dsr1-serve keeps the latent cache in fp32 (both
 * backends); 2 models a BF16 cache (other engines'). */
#define PLAN_DEFAULT_KV_BYTES 4u

typedef struct plan_gpu_kind {
    const char *name;   /* "h100-80g" */
    uint64_t bytes;     /* total device memory as the driver reports it */
    const char *desc;
} plan_gpu_kind;

/* The named kinds, in a fixed order. */
const plan_gpu_kind *plan_gpu_kinds(size_t *n);
const plan_gpu_kind *plan_gpu_kind_find(const char *name); /* NULL if unknown */

/* What the user asks for. 0 means "default" for every count:
 * ep = tp, pp = dp = 1, gpus_per_node = min(world, 8) or world / nodes,
 * nodes = world / gpus_per_node. gpu_mem 0 = no fit check. */
typedef struct plan_req {
    uint32_t tp, ep, pp, dp, nodes, gpus_per_node;
    plan_dtype dtype;
    int mtp;
    uint64_t gpu_mem;
    char gpu_kind[32];      /* "" when gpu_mem came as bytes */
    uint64_t reserve;       /* 0 -> PLAN_DEFAULT_RESERVE; UINT64_MAX -> none */
    uint64_t min_kv_tokens; /* 0 -> PLAN_DEFAULT_MIN_KV_TOKENS; UINT64_MAX -> none */
    unsigned kv_bytes;      /* bytes per latent element: 0 -> PLAN_DEFAULT_KV_BYTES; 2 (bf16) or 4 */
} plan_req;

typedef struct plan_slice {
    int dim;                /* -1: whole tensor */
    uint64_t start, end;    /* along dim (element units; scale: block units) */
} plan_slice;

typedef struct plan_stage {
    int32_t layer_first, layer_last; /* decoder layers, inclusive (MTP layer included) */
    uint32_t n_layers;
    int has_embed, has_head;
} plan_stage;

/* One unique shard = one (pp stage, tp rank); dp replicas share it. */
typedef struct plan_shard {
    uint32_t pp_stage, tp_rank;
    uint32_t expert_first, expert_count; /* routed experts held (per MoE layer) */
    uint32_t expert_parts;               /* each held expert split this many ways */
    size_t n_tensors;                    /* tensors written (scales dropped for bf16) */
    uint64_t weight_bytes;               /* tensor data bytes on the GPU */
    uint64_t kv_bytes_per_token;         /* latent KV cache, all layers of the stage */
    int64_t free_bytes;                  /* gpu_mem - reserve - weights (may be < 0) */
    uint64_t kv_tokens;                  /* tokens that fit in free_bytes */
} plan_shard;

typedef struct plan_rank {
    uint32_t rank, node, local_rank, dp, pp, tp;
    uint32_t shard;                      /* index into shards: pp * tp_size + tp */
} plan_rank;

typedef struct plan {
    plan_req req;           /* resolved: no zero counts left */
    uint32_t world;
    ck_config cfg;
    ck_tensor_desc *tensors;/* expected tensors (with MTP layer when req.mtp) */
    size_t n_tensors;
    uint32_t *stage_of;     /* per tensor: pp stage holding it */
    plan_stage *stages;     /* req.pp */
    plan_shard *shards;     /* req.pp * req.tp */
    size_t n_shards;
    plan_rank *ranks;       /* world */
    uint64_t reserve, min_kv_tokens; /* resolved */
    int fits;               /* 1 when every shard fits (or no gpu_mem given) */
    int64_t shortfall;      /* bytes missing on the worst rank (0 when it fits) */
    uint32_t worst_shard;
    int tp_spans_nodes;     /* some tp group crosses a node boundary */
    uint64_t total_unique_bytes; /* sum over unique shards */
} plan;

/* Build and validate a plan. Impossible requests return DSR1_E_USAGE with a precise
 * message (code PLAN_ERR_*); the fit result is in p->fits (not an error). */
int plan_make(plan **out, const ck_config *cfg, const plan_req *req, dsr1_err *err);
void plan_free(plan *p); /* NULL is a no-op */

/* Where tensor i goes on tp rank t of its stage: returns 1 and fills *s when that
 * rank holds it (s->dim = -1 for a whole copy), 0 when it does not. Scales of FP8
 * weights are routed too; callers drop them for bf16. */
int plan_route(const plan *p, size_t i, uint32_t tp_rank, plan_slice *s);
/* Output dtype and byte size of tensor i's slice (after the dtype transform);
 * returns 0 when the tensor is not written at all (a scale under bf16). */
int plan_out_tensor(const plan *p, size_t i, const plan_slice *s, st_dtype *dtype, uint64_t shape[2],
                    uint64_t *bytes);

/* 1 when the shared expert is held whole on every tp rank because an even split would
 * cut FP8 blocks (or not divide): the runtime then adds its output after the
 * all-reduce. */
int plan_shared_replicated(const plan *p);

/* Valid tp values (1..max_tp) for this config with the given ep policy (ep_req 0: ep =
 * tp), dtype and mtp; returns how many were written to out. */
size_t plan_valid_tp(const ck_config *cfg, uint32_t ep_req, plan_dtype dtype, int mtp, uint32_t max_tp,
                     uint32_t *out, size_t cap);

/* Nearest fitting plans when req does not fit: searched over pp, tp, nodes, dtype and
 * the named GPU kinds; ordered by (category, GPUs, tp spanning nodes, pp, tp).
 * Category 0: same GPU kind and dtype; 1: other GPU kind, same dtype; 2: other dtype. */
typedef struct plan_suggestion {
    plan_req req;           /* resolved */
    int category;
    uint32_t world;
    uint64_t max_weight_bytes;
    uint64_t min_kv_tokens;  /* smallest KV token count over the shards */
    int tp_spans_nodes;
} plan_suggestion;
size_t plan_suggest(const ck_config *cfg, const plan_req *req, plan_suggestion *out, size_t cap);

/* Canonical shard file name: model-pp{P}-tp{T}-of-pp{PP}-tp{TP}.safetensors, two-digit
 * minimum (more when the counts need it). */
void plan_shard_file(const plan *p, size_t shard, char *buf, size_t cap);

/* Per-token latent KV bytes per layer: (kv_lora_rank + qk_rope_head_dim) x the element
 * size of req (its kv_bytes, 0: PLAN_DEFAULT_KV_BYTES, dsr1-serve's fp32 cache). */
uint64_t plan_kv_bytes_per_token_layer(const ck_config *cfg, const plan_req *req);

const char *plan_dtype_name(plan_dtype d); /* "fp8" | "bf16" */
int plan_dtype_parse(const char *s, plan_dtype *out);

#endif
