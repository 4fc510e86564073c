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

/* Expected tensors, in a deterministic order (top-level, then per layer), including
 * layer(s) >= num_hidden_layers (MTP) when include_mtp. *out malloc'd; caller frees. */
int ck_expected_tensors(const ck_config *cfg, int include_mtp, ck_tensor_desc **out, size_t *n,
                        dsr1_err *err);

/* An opened checkpoint directory. */
typedef struct ck_ckpt ck_ckpt;

/* Reads config.json and model.safetensors.index.json only; no weight file is opened. */
int ck_open(ck_ckpt **out, const char *dir, dsr1_err *err);
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

/* Compare the index (names only) against the expected list: fills err with the first
 * problem and returns the number of problems; report(i, msg) is called for each if
 * non-NULL. */
typedef void (*ck_report_fn)(void *ctx, const char *msg);
int ck_check_index(const ck_ckpt *c, int include_mtp, ck_report_fn report, void *ctx, dsr1_err *err);

/* Open (lazily, cached) the safetensors file holding `tensor` and return its view.
 * Checks dtype and shape against the expected descriptor when desc != NULL. */
int ck_tensor(ck_ckpt *c, const char *tensor, const ck_tensor_desc *desc, const st_tensor **out,
              dsr1_err *err);

#endif
