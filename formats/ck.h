/* ck: the HuggingFace DeepSeek-V3/R1 checkpoint catalogue.
 *
 * Reads config.json into a validated ck_config, model.safetensors.index.json into a
 * tensor -> file map, and derives from the config alone the full expected tensor
 * list (names, shapes, dtypes), so the real 671B layout can be planned without
 * weights. Tensor naming follows the HF checkpoint (docs: deepseek-v3-reference.md §3).
 *
 * Lifetimes: everything a ck_ckpt hands out lives until ck_close().
 */
#ifndef DSR1_CK_H
#define DSR1_CK_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "st.h"

enum {
    CK_ERR_NONE = 0,
    CK_ERR_CONFIG_OPEN,     /* config.json missing/unreadable */
    CK_ERR_CONFIG_JSON,     /* config.json not valid JSON / not an object */
    CK_ERR_CONFIG_FIELD,    /* required field missing or wrong type */
    CK_ERR_CONFIG_VALUE,    /* field out of range or inconsistent (names the field) */
    CK_ERR_CONFIG_UNSUPPORTED, /* valid HF value we do not support (e.g. scoring_func softmax) */
    CK_ERR_INDEX_OPEN,
    CK_ERR_INDEX_JSON,
    CK_ERR_INDEX_FIELD,     /* weight_map missing / not string->string */
    CK_ERR_INDEX_FILE,      /* weight_map names a file with a path separator or "..", or missing */
    CK_ERR_MISSING_TENSOR,
    CK_ERR_UNEXPECTED_TENSOR,
    CK_ERR_SHAPE,
    CK_ERR_DTYPE,
};

typedef struct ck_rope_scaling {
    int yarn;                 /* 1 if type == "yarn"; 0 = no scaling */
    double factor;
    uint32_t original_max_position_embeddings;
    double beta_fast, beta_slow, mscale, mscale_all_dim;
} ck_rope_scaling;

typedef struct ck_config {
    uint32_t hidden_size, intermediate_size, moe_intermediate_size;
    uint32_t num_hidden_layers, first_k_dense_replace, moe_layer_freq;
    uint32_t num_nextn_predict_layers;
    uint32_t n_routed_experts, n_shared_experts, num_experts_per_tok;
    uint32_t n_group, topk_group;
    double routed_scaling_factor;
    int norm_topk_prob;
    uint32_t num_attention_heads, num_key_value_heads;
    uint32_t q_lora_rank, kv_lora_rank;   /* q_lora_rank 0 = no q LoRA (V2-lite style): rejected */
    uint32_t qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    uint32_t vocab_size, max_position_embeddings;
    double rope_theta, rms_norm_eps;
    ck_rope_scaling rope;
    int tie_word_embeddings;
    uint32_t bos_token_id, eos_token_id;
    int fp8;                  /* quantization_config present with quant_method fp8 e4m3 */
    uint32_t weight_block[2]; /* [128, 128] when fp8 */
} ck_config;

/* Parse and validate a config.json file / in-memory JSON text. Unknown keys are
 * ignored (HF configs carry many); every known key is type- and range-checked. */
int ck_config_load(ck_config *cfg, const char *path, dsr1_err *err);
int ck_config_parse(ck_config *cfg, const char *json, size_t len, const char *label, dsr1_err *err);
/* The real DeepSeek-R1 values (deepseek-v3-reference.md §1). */
void ck_config_r1(ck_config *cfg);
/* Serialize with the HF field names (used by dsr1-synth). Caller frees. */
char *ck_config_to_json(const ck_config *cfg);
int ck_layer_is_moe(const ck_config *cfg, uint32_t layer);

/* Tensor classes for summaries and the planner. */
typedef enum {
    CK_EMBED, CK_LM_HEAD, CK_FINAL_NORM,
    CK_NORM,          /* any per-layer norm vector */
    CK_ATTN_Q_A, CK_ATTN_Q_B, CK_ATTN_KV_A, CK_ATTN_KV_B, CK_ATTN_O,
    CK_DENSE_GATE, CK_DENSE_UP, CK_DENSE_DOWN,
    CK_ROUTER, CK_ROUTER_BIAS,
    CK_EXPERT_GATE, CK_EXPERT_UP, CK_EXPERT_DOWN,
    CK_SHARED_GATE, CK_SHARED_UP, CK_SHARED_DOWN,
    CK_MTP_EMBED, CK_MTP_EH_PROJ, CK_MTP_HEAD,
    CK_CLASS_COUNT
} ck_class;
const char *ck_class_name(ck_class c);

typedef struct ck_tensor_desc {
    char name[96];
    st_dtype dtype;
    int ndim;
    uint64_t shape[2];
    ck_class cls;
    int32_t layer;        /* -1 for top-level tensors */
    int32_t expert;       /* routed expert index, else -1 */
    int is_scale;         /* a weight_scale_inv (F32) */
    int32_t weight_of;    /* for a scale: index of its weight in the list; else -1 */
    int32_t scale_idx;    /* for an FP8 weight: index of its scale; else -1 */
    uint64_t nbytes;
} ck_tensor_desc;

/* Expected tensors, in a deterministic order, the order of the real checkpoint's files:
 * model.embed_tokens.weight, layers 0..num_hidden_layers-1, model.norm.weight,
 * lm_head.weight, then the MTP layer(s) >= num_hidden_layers when include_mtp. Within a
 * layer: input_layernorm, attention (q_a, q_a_layernorm, q_b, kv_a, kv_a_layernorm, kv_b,
 * o), post_attention_layernorm, then the MLP (dense gate/up/down, or router weight, bias,
 * experts 0..E-1 gate/up/down, shared gate/up/down); an MTP layer starts with embed_tokens,
 * enorm, hnorm, eh_proj and ends with shared_head.norm, shared_head.head. An FP8 weight is
 * immediately followed by its scale. When !cfg->fp8 the projections are BF16 without
 * scales. *out malloc'd; caller frees. Fails (CK_ERR_CONFIG_VALUE) above 8,000,000 tensors. */
int ck_expected_tensors(const ck_config *cfg, int include_mtp, ck_tensor_desc **out, size_t *n,
                        dsr1_err *err);
/* Number of tensors ck_expected_tensors would return, without building the list. */
uint64_t ck_expected_count(const ck_config *cfg, int include_mtp);

/* Summary groups (dsr1-inspect's "by layer class"); every tensor of a layer
 * >= num_hidden_layers counts as MTP. */
typedef enum {
    CK_GROUP_ATTENTION, CK_GROUP_DENSE_MLP, CK_GROUP_ROUTED, CK_GROUP_SHARED, CK_GROUP_ROUTER,
    CK_GROUP_NORMS, CK_GROUP_EMBED_HEAD, CK_GROUP_MTP,
    CK_GROUP_COUNT
} ck_group;
const char *ck_group_name(ck_group g); /* "attention", "dense_mlp", "routed_experts", ... */
ck_group ck_tensor_group(const ck_config *cfg, const ck_tensor_desc *d);

/* An opened checkpoint directory. */
typedef struct ck_ckpt ck_ckpt;

/* Reads config.json and model.safetensors.index.json only; no weight file is opened.
 * Index rules: top level an object; "weight_map" an object of non-empty tensor name ->
 * file name string (CK_ERR_INDEX_FIELD); every file name plain: no '/', '\\', "..",
 * control characters, not empty (CK_ERR_INDEX_FILE); duplicate keys rejected
 * (CK_ERR_INDEX_JSON); "metadata" optional, metadata.total_size a non-negative integer.
 * A ck_ckpt is not thread-safe (ck_tensor opens files lazily). */
int ck_open(ck_ckpt **out, const char *dir, dsr1_err *err);
/* Parse index JSON text alone (tests, tools); ck_cfg() of the result is all zeros and
 * ck_dir() is ".". */
int ck_index_parse(ck_ckpt **out, const char *json, size_t len, const char *label, dsr1_err *err);
/* 1 if `f` (len bytes) is acceptable as a weight_map file name. */
int ck_index_file_name_ok(const char *f, size_t len);
void ck_close(ck_ckpt *c);
const ck_config *ck_cfg(const ck_ckpt *c);
const char *ck_dir(const ck_ckpt *c);
uint64_t ck_index_total_size(const ck_ckpt *c);        /* metadata.total_size, 0 if absent */
size_t ck_index_count(const ck_ckpt *c);
/* i-th weight_map entry (sorted by tensor name). */
void ck_index_at(const ck_ckpt *c, size_t i, const char **tensor, const char **file);
const char *ck_index_file_of(const ck_ckpt *c, const char *tensor); /* NULL if absent */
size_t ck_file_count(const ck_ckpt *c);                /* distinct files, sorted */
const char *ck_file_at(const ck_ckpt *c, size_t i);
/* 1 if the index names any tensor of a layer >= num_hidden_layers (the MTP module). */
int ck_index_has_mtp(const ck_ckpt *c);
/* 1 if weight file i exists in the directory (stat only). */
int ck_file_exists(const ck_ckpt *c, size_t i);
/* Open (lazily, cached until ck_close) weight file i. A file that does not exist gives
 * CK_ERR_INDEX_FILE (DSR1_E_INVALID); any other failure is st_open's error. */
int ck_file_open(ck_ckpt *c, size_t i, st_file **out, dsr1_err *err);

/* Compare the index (names only) against the expected list: fills err with the first
 * problem and returns the number of problems; report(i, msg) is called for each if
 * non-NULL. */
typedef void (*ck_report_fn)(void *ctx, const char *msg);
int ck_check_index(const ck_ckpt *c, int include_mtp, ck_report_fn report, void *ctx, dsr1_err *err);

/* Open (lazily, cached) the safetensors file holding `tensor` and return its view.
 * Checks dtype and shape against the expected descriptor when desc != NULL
 * (CK_ERR_DTYPE / CK_ERR_SHAPE naming tensor, file, actual and expected); a tensor absent
 * from the index or from its file gives CK_ERR_MISSING_TENSOR. */
int ck_tensor(ck_ckpt *c, const char *tensor, const ck_tensor_desc *desc, const st_tensor **out,
              dsr1_err *err);

#endif
