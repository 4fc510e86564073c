/* rt_model: one rank's part of the DeepSeek-V3 model on the CPU backend, and its
 * forward pass (deepseek-v3-reference.md §6; numerics follow transformers, see
 * docs/runtime.md).
 *
 * A rank loads its shard through the loader (formats/ld.h) and builds k_weight views
 * straight into the mapping: FP8 and BF16 weights are dequantized on the fly inside
 * the GEMMs; only the norm vectors and the router bias are copied to fp32. What the
 * rank holds is read from the shard itself (tensor shapes, manifest slices), checked
 * against the config and the plan:
 *   - tp splits heads, dense/shared MLP rows, embed/lm_head vocabulary rows;
 *   - routed experts: whichever expert ids the shard holds, whole or split;
 *   - pp: decoder layers [layer_first, layer_last] of the shard; embed on stage 0,
 *     final norm + lm_head on the last stage (+ the MTP layer when present).
 *
 * Forward, per rank (all ranks of the plan call it together, as threads or processes):
 *   stage 0: h = embed(ids) (vocab-parallel, TP all-reduce); other stages receive h
 *   from the previous stage; each held layer: h += attn(rmsnorm(h)); h += ffn(rmsnorm(h))
 *   with one TP all-reduce after attention and one after the FFN; then send h on, or on
 *   the last stage: logits = lm_head(norm(h)) gathered over TP.
 *
 * Lifetimes: rt_model borrows the manifest (must outlive it) and owns its shard
 * mapping; weights point into the mapping until rt_model_free().
 */
#ifndef DSR1_RT_MODEL_H
#define DSR1_RT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "err.h"
#include "gemm.h"
#include "mf.h"
#include "rope.h"
#include "router.h"

typedef struct rt_layer {
    int index;               /* global layer index (num_hidden_layers = the MTP layer) */
    int moe;
    float *in_norm, *post_norm, *q_a_norm, *kv_a_norm;
    k_weight q_a, q_b, kv_a, kv_b, o;
    k_weight gate, up, down;               /* dense MLP */
    k_weight router;                       /* [E, hidden] */
    float *bias;                           /* [E] correction bias (fp32) */
    uint32_t n_experts;                    /* local experts */
    int32_t *expert_id;                    /* ascending global ids */
    k_weight *e_gate, *e_up, *e_down;
    k_weight sh_gate, sh_up, sh_down;      /* shared expert */
    int sh_whole;                          /* tp > 1 but the shard holds the whole shared
                                              expert (its rows do not split on FP8 blocks):
                                              added after the all-reduce, not before */
    /* MTP layer extras */
    float *enorm, *hnorm, *head_norm;
    k_weight eh_proj, mtp_embed, mtp_head;
    size_t mtp_embed_row0, mtp_head_row0;
} rt_layer;

typedef struct rt_model {
    const mf_manifest *m;
    ck_config cfg;
    void *shard;             /* ld_shard */
    int tp, pp, tp_rank, pp_stage;
    int has_embed, has_head;
    k_weight embed;
    size_t embed_row0;
    float *final_norm;
    k_weight lm_head;
    size_t head_row0;
    size_t n_layers;         /* decoder layers held (MTP excluded) */
    rt_layer *layers;
    rt_layer *mtp;           /* NULL unless the shard holds the MTP layer */
    size_t heads;            /* local attention heads */
    size_t hidden, q_lora, kv_lora, dn, dr, dv, vocab;
    k_rope rope;
    float softmax_scale;
    k_router_cfg rcfg;
} rt_model;

/* Load the shard of global rank `rank` (flags: LD_HASH for full hashing). */
int rt_model_load(rt_model **out, const mf_manifest *m, const char *dir, uint32_t rank, int flags,
                  dsr1_err *err);
void rt_model_free(rt_model *mdl); /* NULL is a no-op */

/* The latent KV cache of one rank: per held layer, c [cap, kv_lora] (after
 * kv_a_layernorm) and k_pe [cap, qk_rope_head_dim] (rope applied), fp32. */
typedef struct rt_kv {
    size_t cap, n_layers, kv_lora, rope;
    float **c, **kpe;
} rt_kv;

int rt_kv_init(rt_kv *kv, const rt_model *mdl, size_t cap, int with_mtp, dsr1_err *err);
void rt_kv_free(rt_kv *kv);

/* Run T tokens at positions pos0.. through this rank's layers. ids[T] (every rank
 * passes them; stage 0 embeds them). On the last stage, logits [T, vocab] are written
 * when logits != NULL and hidden [T, hidden] (after the final norm, for MTP) when
 * hidden != NULL. Collective over the plan: every rank must call it with the same
 * T/pos0/mode. */
int rt_model_forward(rt_model *mdl, rt_comm *c, rt_kv *kv, const int32_t *ids, size_t T,
                     size_t pos0, rt_attn_mode mode, float *logits, float *hidden, dsr1_err *err);

/* The MTP module (last stage only, when mdl->mtp): for each row t, the draft logits of
 * the token after next_ids[t] from h [T, hidden] (the main model's final-normed hidden
 * states at the same positions) and next_ids[t] (the token at position pos0 + t + 1).
 * Uses the MTP layer's slot in kv (rt_kv_init with_mtp). Collective over the TP group
 * of the last stage. */
int rt_model_mtp_forward(rt_model *mdl, rt_comm *c, rt_kv *kv, const float *h,
                         const int32_t *next_ids, size_t T, size_t pos0, rt_attn_mode mode,
                         float *logits, dsr1_err *err);

#endif
