/* ck: the HuggingFace DeepSeek-V3/R1 checkpoint catalogue (see ck.h). */
#include "ck.h"
#include "fu.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CONFIG_NAME "config.json"
#define INDEX_NAME "model.safetensors.index.json"
/* Guard against configs whose tensor list would not fit in memory. */
#define CK_MAX_TENSORS 8000000u

/* ------------------------------------------------------------------ config */

typedef struct cfgp {
    json_t *root;
    const char *label;
    dsr1_err *err;
} cfgp;

/* Short JSON rendering of a value for messages. */
static void show(const json_t *v, char *buf, size_t n)
{
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    if (!s) {
        snprintf(buf, n, "%s", v ? "(unprintable)" : "(missing)");
        return;
    }
    if (strlen(s) >= n && n > 4) {
        memcpy(buf, s, n - 4);
        memcpy(buf + n - 4, "...", 4);
    } else {
        snprintf(buf, n, "%s", s);
    }
    free(s);
}

static const char *kind_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int field_missing(cfgp *p, const char *obj, const char *key)
{
    return dsr1_err_set(p->err, DSR1_E_INVALID, CK_ERR_CONFIG_FIELD, 0,
                        "%s: required field \"%s%s%s\" is missing", p->label, obj ? obj : "",
                        obj ? "." : "", key);
}

static int field_type(cfgp *p, const char *obj, const char *key, const json_t *v, const char *want)
{
    char b[80];
    show(v, b, sizeof b);
    return dsr1_err_set(p->err, DSR1_E_INVALID, CK_ERR_CONFIG_FIELD, 0,
                        "%s: field \"%s%s%s\" must be %s, got %s %s", p->label, obj ? obj : "",
                        obj ? "." : "", key, want, kind_of(v), b);
}

/* Present and not null. */
static json_t *opt(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

static int get_u32(cfgp *p, json_t *o, const char *obj, const char *key, int required, uint32_t def,
                   uint32_t lo, uint32_t hi, uint32_t *out)
{
    json_t *v = opt(o, key);
    if (!v) {
        if (required)
            return field_missing(p, obj, key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return field_type(p, obj, key, v, "an integer");
    json_int_t x = json_integer_value(v);
    if (x < (json_int_t)lo || x > (json_int_t)hi)
        return dsr1_err_set(p->err, DSR1_E_INVALID, CK_ERR_CONFIG_VALUE, 0,
                            "%s: field \"%s%s%s\" = %lld is out of range [%u, %u]", p->label,
                            obj ? obj : "", obj ? "." : "", key, (long long)x, lo, hi);
    *out = (uint32_t)x;
    return 0;
}

/* Numbers accept integer or real JSON. lo_excl: value must be > lo (else >= lo). */
static int get_f64(cfgp *p, json_t *o, const char *obj, const char *key, int required, double def,
                   double lo, int lo_excl, double hi, double *out)
{
    json_t *v = opt(o, key);
    if (!v) {
        if (required)
            return field_missing(p, obj, key);
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return field_type(p, obj, key, v, "a number");
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_excl ? !(x > lo) : !(x >= lo)) || !(x <= hi))
        return dsr1_err_set(p->err, DSR1_E_INVALID, CK_ERR_CONFIG_VALUE, 0,
                            "%s: field \"%s%s%s\" = %g is out of range %s%g, %g]", p->label,
                            obj ? obj : "", obj ? "." : "", key, x, lo_excl ? "(" : "[", lo, hi);
    *out = x;
    return 0;
}

static int get_bool(cfgp *p, json_t *o, const char *key, int def, int *out)
{
    json_t *v = opt(o, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return field_type(p, NULL, key, v, "true or false");
    *out = json_is_true(v);
    return 0;
}

/* String field: *out = value or def. */
static int get_str(cfgp *p, json_t *o, const char *obj, const char *key, int required,
                   const char *def, const char **out)
{
    json_t *v = opt(o, key);
    if (!v) {
        if (required)
            return field_missing(p, obj, key);
        *out = def;
        return 0;
    }
    if (!json_is_string(v))
        return field_type(p, obj, key, v, "a string");
    *out = json_string_value(v);
    return 0;
}

static int unsupported(cfgp *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int unsupported(cfgp *p, const char *fmt, ...)
{
    char m[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return dsr1_err_set(p->err, DSR1_E_INVALID, CK_ERR_CONFIG_UNSUPPORTED, 0, "%s: %s", p->label, m);
}

static int bad_value(cfgp *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad_value(cfgp *p, const char *fmt, ...)
{
    char m[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return dsr1_err_set(p->err, DSR1_E_INVALID, CK_ERR_CONFIG_VALUE, 0, "%s: %s", p->label, m);
}

static int want_str(cfgp *p, json_t *o, const char *obj, const char *key, const char *def,
                    const char *want, const char *why)
{
    const char *s = def;
    int rc = get_str(p, o, obj, key, 0, def, &s);
    if (rc)
        return rc;
    if (strcmp(s, want) != 0)
        return unsupported(p, "field \"%s%s%s\" = \"%s\" is not supported (%s \"%s\"%s%s)",
                           obj ? obj : "", obj ? "." : "", key, s, "dsr1 supports", want,
                           why ? ": " : "", why ? why : "");
    return 0;
}

static int parse_rope(cfgp *p, json_t *root, ck_config *c)
{
    memset(&c->rope, 0, sizeof c->rope);
    /* transformers >= 5 writes rope_parameters (with rope_theta inside) instead. */
    const char *K = "rope_scaling";
    json_t *r = opt(root, K);
    if (!r && (r = opt(root, "rope_parameters")))
        K = "rope_parameters";
    if (!r)
        return 0;
    if (!json_is_object(r))
        return field_type(p, NULL, K, r, "an object or null");
    const char *t1 = NULL, *t2 = NULL;
    int rc;
    if ((rc = get_str(p, r, K, "type", 0, NULL, &t1)) ||
        (rc = get_str(p, r, K, "rope_type", 0, NULL, &t2)))
        return rc;
    if (t1 && t2 && strcmp(t1, t2) != 0)
        return bad_value(p, "%s.type \"%s\" and %s.rope_type \"%s\" disagree", K, t1, K, t2);
    const char *t = t1 ? t1 : t2;
    if (!t)
        return field_missing(p, K, "type");
    if (!opt(root, "rope_theta") && opt(r, "rope_theta") &&
        (rc = get_f64(p, r, K, "rope_theta", 0, 10000.0, 1.0, 0, 1e12, &c->rope_theta)))
        return rc;
    if (strcmp(t, "default") == 0)
        return 0;
    if (strcmp(t, "yarn") != 0)
        return unsupported(p, "%s.type \"%s\" is not supported (dsr1 supports \"yarn\" or "
                              "no scaling)", K, t);
    c->rope.yarn = 1;
    double omp = 0;
    if ((rc = get_f64(p, r, K, "factor", 1, 0, 1.0, 0, 1e6, &c->rope.factor)) ||
        (rc = get_f64(p, r, K, "beta_fast", 0, 32, 0, 1, 1e6, &c->rope.beta_fast)) ||
        (rc = get_f64(p, r, K, "beta_slow", 0, 1, 0, 1, 1e6, &c->rope.beta_slow)) ||
        (rc = get_f64(p, r, K, "mscale", 0, 1, 0, 0, 1e6, &c->rope.mscale)) ||
        (rc = get_f64(p, r, K, "mscale_all_dim", 0, 0, 0, 0, 1e6, &c->rope.mscale_all_dim)))
        return rc;
    /* transformers defaults original_max_position_embeddings to max_position_embeddings. */
    json_t *v = opt(r, "original_max_position_embeddings");
    if (!v) {
        c->rope.original_max_position_embeddings = c->max_position_embeddings;
    } else {
        if ((rc = get_f64(p, r, K, "original_max_position_embeddings", 1, 0, 1, 0,
                          1073741824.0, &omp)))
            return rc;
        if (omp != floor(omp))
            return bad_value(p, "%s.original_max_position_embeddings = %g is not an integer", K,
                             omp);
        c->rope.original_max_position_embeddings = (uint32_t)omp;
    }
    if (!(c->rope.beta_fast > c->rope.beta_slow))
        return bad_value(p, "%s.beta_fast (%g) must be greater than beta_slow (%g)", K,
                         c->rope.beta_fast, c->rope.beta_slow);
    return 0;
}

static int parse_quant(cfgp *p, json_t *root, ck_config *c)
{
    c->fp8 = 0;
    c->weight_block[0] = c->weight_block[1] = 0;
    json_t *q = opt(root, "quantization_config");
    if (!q)
        return 0;
    if (!json_is_object(q))
        return field_type(p, NULL, "quantization_config", q, "an object");
    int rc;
    const char *m = NULL;
    if ((rc = get_str(p, q, "quantization_config", "quant_method", 1, NULL, &m)))
        return rc;
    if (strcmp(m, "fp8") != 0)
        return unsupported(p, "quantization_config.quant_method \"%s\" is not supported (dsr1 reads "
                              "DeepSeek block-FP8 \"fp8\" or unquantized checkpoints)", m);
    if ((rc = want_str(p, q, "quantization_config", "fmt", "e4m3", "e4m3", "OCP E4M3 weights")) ||
        (rc = want_str(p, q, "quantization_config", "activation_scheme", "dynamic", "dynamic", NULL)))
        return rc;
    json_t *b = opt(q, "weight_block_size");
    if (!b)
        return field_missing(p, "quantization_config", "weight_block_size");
    if (!json_is_array(b) || json_array_size(b) != 2 || !json_is_integer(json_array_get(b, 0)) ||
        !json_is_integer(json_array_get(b, 1)))
        return field_type(p, "quantization_config", "weight_block_size", b,
                          "an array of two integers");
    json_int_t b0 = json_integer_value(json_array_get(b, 0)),
               b1 = json_integer_value(json_array_get(b, 1));
    if (b0 != 128 || b1 != 128)
        return unsupported(p, "quantization_config.weight_block_size [%lld, %lld] is not supported "
                              "(dsr1 supports [128, 128])", (long long)b0, (long long)b1);
    c->fp8 = 1;
    c->weight_block[0] = c->weight_block[1] = 128;
    return 0;
}

static int get_token_id(cfgp *p, json_t *root, const char *key, uint32_t def, uint32_t *out)
{
    json_t *v = opt(root, key);
    /* Some configs carry a list of ids; the first is the primary one. */
    if (v && json_is_array(v)) {
        if (json_array_size(v) == 0 || !json_is_integer(json_array_get(v, 0)))
            return field_type(p, NULL, key, v, "an integer or a non-empty array of integers");
        json_int_t x = json_integer_value(json_array_get(v, 0));
        if (x < 0 || x > UINT32_MAX)
            return bad_value(p, "field \"%s\" = %lld is out of range", key, (long long)x);
        *out = (uint32_t)x;
        return 0;
    }
    return get_u32(p, root, NULL, key, 0, def, 0, UINT32_MAX, out);
}

static int parse_config(cfgp *p, ck_config *c)
{
    json_t *r = p->root;
    int rc;
    const char *s = NULL;
    memset(c, 0, sizeof *c);

    if ((rc = get_str(p, r, NULL, "model_type", 1, NULL, &s)))
        return rc;
    if (strcmp(s, "deepseek_v3") != 0)
        return unsupported(p, "model_type \"%s\" is not supported (dsr1 handles \"deepseek_v3\": "
                              "DeepSeek-V3, R1 and their fine-tunes)", s);
    json_t *arch = opt(r, "architectures");
    if (arch && !json_is_array(arch))
        return field_type(p, NULL, "architectures", arch, "an array of strings");
    for (size_t i = 0; arch && i < json_array_size(arch); i++)
        if (!json_is_string(json_array_get(arch, i)))
            return field_type(p, NULL, "architectures", arch, "an array of strings");

    /* Shape-defining fields are required; the rest default as in transformers'
     * DeepseekV3Config (num_nextn_predict_layers, absent there, defaults to 0). */
    if ((rc = get_u32(p, r, NULL, "hidden_size", 1, 0, 1, 65536, &c->hidden_size)) ||
        (rc = get_u32(p, r, NULL, "intermediate_size", 1, 0, 1, 1u << 20, &c->intermediate_size)) ||
        (rc = get_u32(p, r, NULL, "moe_intermediate_size", 1, 0, 1, 1u << 20,
                      &c->moe_intermediate_size)) ||
        (rc = get_u32(p, r, NULL, "num_hidden_layers", 1, 0, 1, 1024, &c->num_hidden_layers)) ||
        (rc = get_u32(p, r, NULL, "first_k_dense_replace", 0, 3, 0, 1024, &c->first_k_dense_replace)) ||
        (rc = get_u32(p, r, NULL, "moe_layer_freq", 0, 1, 1, 1024, &c->moe_layer_freq)) ||
        (rc = get_u32(p, r, NULL, "num_nextn_predict_layers", 0, 0, 0, 16,
                      &c->num_nextn_predict_layers)) ||
        (rc = get_u32(p, r, NULL, "n_routed_experts", 1, 0, 1, 4096, &c->n_routed_experts)) ||
        (rc = get_u32(p, r, NULL, "n_shared_experts", 0, 1, 0, 64, &c->n_shared_experts)) ||
        (rc = get_u32(p, r, NULL, "num_experts_per_tok", 1, 0, 1, 4096, &c->num_experts_per_tok)) ||
        (rc = get_u32(p, r, NULL, "n_group", 0, 8, 1, 4096, &c->n_group)) ||
        (rc = get_u32(p, r, NULL, "topk_group", 0, 4, 1, 4096, &c->topk_group)) ||
        (rc = get_f64(p, r, NULL, "routed_scaling_factor", 0, 2.5, 0, 1, 1e6,
                      &c->routed_scaling_factor)) ||
        (rc = get_bool(p, r, "norm_topk_prob", 1, &c->norm_topk_prob)) ||
        (rc = get_u32(p, r, NULL, "num_attention_heads", 1, 0, 1, 1024, &c->num_attention_heads)))
        return rc;
    if ((rc = get_u32(p, r, NULL, "num_key_value_heads", 0, c->num_attention_heads, 1, 1024,
                      &c->num_key_value_heads)))
        return rc;
    json_t *ql = json_object_get(r, "q_lora_rank");
    if (ql && (json_is_null(ql) || (json_is_integer(ql) && json_integer_value(ql) == 0)))
        return unsupported(p, "q_lora_rank = %s (no query LoRA, DeepSeek-V2-Lite style) is not "
                              "supported: the DeepSeek-V3 layout has q_a_proj/q_b_proj",
                           json_is_null(ql) ? "null" : "0");
    if ((rc = get_u32(p, r, NULL, "q_lora_rank", 1, 0, 1, 65536, &c->q_lora_rank)))
        return rc;
    json_t *kl = json_object_get(r, "kv_lora_rank");
    if (kl && json_is_integer(kl) && json_integer_value(kl) == 0)
        return bad_value(p, "field \"kv_lora_rank\" = 0: MLA needs a latent of at least 1 "
                            "(DeepSeek-V3 uses 512)");
    if ((rc = get_u32(p, r, NULL, "kv_lora_rank", 1, 0, 1, 65536, &c->kv_lora_rank)) ||
        (rc = get_u32(p, r, NULL, "qk_nope_head_dim", 1, 0, 1, 4096, &c->qk_nope_head_dim)) ||
        (rc = get_u32(p, r, NULL, "qk_rope_head_dim", 1, 0, 2, 4096, &c->qk_rope_head_dim)) ||
        (rc = get_u32(p, r, NULL, "v_head_dim", 1, 0, 1, 4096, &c->v_head_dim)) ||
        (rc = get_u32(p, r, NULL, "vocab_size", 1, 0, 1, 1u << 24, &c->vocab_size)) ||
        (rc = get_u32(p, r, NULL, "max_position_embeddings", 0, 4096, 1, 1u << 30,
                      &c->max_position_embeddings)) ||
        (rc = get_f64(p, r, NULL, "rope_theta", 0, 10000.0, 1.0, 0, 1e12, &c->rope_theta)) ||
        (rc = get_f64(p, r, NULL, "rms_norm_eps", 0, 1e-6, 0, 1, 1.0, &c->rms_norm_eps)) ||
        (rc = get_bool(p, r, "tie_word_embeddings", 0, &c->tie_word_embeddings)) ||
        (rc = get_token_id(p, r, "bos_token_id", 0, &c->bos_token_id)) ||
        (rc = get_token_id(p, r, "eos_token_id", 1, &c->eos_token_id)))
        return rc;
    if ((rc = parse_rope(p, r, c)) || (rc = parse_quant(p, r, c)))
        return rc;

    if ((rc = want_str(p, r, NULL, "scoring_func", "sigmoid", "sigmoid",
                       "the DeepSeek-V3 router scores experts with a sigmoid")) ||
        (rc = want_str(p, r, NULL, "topk_method", "noaux_tc", "noaux_tc",
                       "group-limited top-k with e_score_correction_bias")) ||
        (rc = want_str(p, r, NULL, "hidden_act", "silu", "silu", NULL)))
        return rc;
    int ab = 0;
    if ((rc = get_bool(p, r, "attention_bias", 0, &ab)))
        return rc;
    if (ab)
        return unsupported(p, "attention_bias = true is not supported (DeepSeek-V3 projections "
                              "have no bias tensors)");
    if (c->tie_word_embeddings)
        return unsupported(p, "tie_word_embeddings = true is not supported (the DeepSeek-V3 layout "
                              "stores lm_head.weight separately)");
    if (c->n_shared_experts == 0)
        return unsupported(p, "n_shared_experts = 0 is not supported (DeepSeek-V3 MoE layers have "
                              "a shared expert)");

    /* Cross-field consistency. */
    if (c->qk_rope_head_dim % 2)
        return bad_value(p, "field \"qk_rope_head_dim\" = %u must be even (RoPE rotates pairs)",
                         c->qk_rope_head_dim);
    if (c->first_k_dense_replace > c->num_hidden_layers)
        return bad_value(p, "field \"first_k_dense_replace\" = %u exceeds num_hidden_layers = %u",
                         c->first_k_dense_replace, c->num_hidden_layers);
    if (c->n_routed_experts % c->n_group)
        return bad_value(p, "field \"n_group\" = %u does not divide n_routed_experts = %u (every "
                            "expert group must have the same size)", c->n_group, c->n_routed_experts);
    if (c->n_routed_experts / c->n_group < 2)
        return bad_value(p, "field \"n_group\" = %u leaves %u expert per group; the router scores "
                            "a group by its top-2 experts, so each group needs at least 2",
                         c->n_group, c->n_routed_experts / c->n_group);
    if (c->topk_group > c->n_group)
        return bad_value(p, "field \"topk_group\" = %u exceeds n_group = %u", c->topk_group,
                         c->n_group);
    if (c->num_experts_per_tok > c->n_routed_experts)
        return bad_value(p, "field \"num_experts_per_tok\" = %u exceeds n_routed_experts = %u",
                         c->num_experts_per_tok, c->n_routed_experts);
    uint32_t reach = c->topk_group * (c->n_routed_experts / c->n_group);
    if (c->num_experts_per_tok > reach)
        return bad_value(p, "field \"num_experts_per_tok\" = %u exceeds the %u experts of the "
                            "topk_group = %u selected groups", c->num_experts_per_tok, reach,
                         c->topk_group);
    if (c->bos_token_id >= c->vocab_size)
        return bad_value(p, "field \"bos_token_id\" = %u is not below vocab_size = %u",
                         c->bos_token_id, c->vocab_size);
    if (c->eos_token_id >= c->vocab_size)
        return bad_value(p, "field \"eos_token_id\" = %u is not below vocab_size = %u",
                         c->eos_token_id, c->vocab_size);
    return 0;
}

int ck_config_parse(ck_config *cfg, const char *json, size_t len, const char *label, dsr1_err *err)
{
    json_error_t je;
    if (!label)
        label = CONFIG_NAME;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_CONFIG_JSON, 0,
                            "%s: not valid JSON at line %d column %d: %s", label, je.line, je.column,
                            je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_CONFIG_JSON, 0,
                            "%s: top level must be a JSON object", label);
    }
    cfgp p = {root, label, err};
    ck_config c;
    int rc = parse_config(&p, &c);
    json_decref(root);
    if (rc == 0)
        *cfg = c;
    return rc;
}


int ck_config_load(ck_config *cfg, const char *path, dsr1_err *err)
{
    char *buf;
    size_t n;
    int rc = fu_read_all(path, (uint64_t)1 << 30, CK_ERR_CONFIG_OPEN, &buf, &n, err);
    if (rc)
        return rc;
    rc = ck_config_parse(cfg, buf, n, path, err);
    free(buf);
    return rc;
}

void ck_config_r1(ck_config *c)
{
    memset(c, 0, sizeof *c);
    c->hidden_size = 7168;
    c->intermediate_size = 18432;
    c->moe_intermediate_size = 2048;
    c->num_hidden_layers = 61;
    c->first_k_dense_replace = 3;
    c->moe_layer_freq = 1;
    c->num_nextn_predict_layers = 1;
    c->n_routed_experts = 256;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 8;
    c->n_group = 8;
    c->topk_group = 4;
    c->routed_scaling_factor = 2.5;
    c->norm_topk_prob = 1;
    c->num_attention_heads = 128;
    c->num_key_value_heads = 128;
    c->q_lora_rank = 1536;
    c->kv_lora_rank = 512;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 128;
    c->vocab_size = 129280;
    c->max_position_embeddings = 163840;
    c->rope_theta = 10000.0;
    c->rms_norm_eps = 1e-6;
    c->rope.yarn = 1;
    c->rope.factor = 40;
    c->rope.original_max_position_embeddings = 4096;
    c->rope.beta_fast = 32;
    c->rope.beta_slow = 1;
    c->rope.mscale = 1.0;
    c->rope.mscale_all_dim = 1.0;
    c->tie_word_embeddings = 0;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
    c->fp8 = 1;
    c->weight_block[0] = c->weight_block[1] = 128;
}

/* Integral values print as JSON integers, as in the real config (rope_theta 10000). */
static json_t *num(double x)
{
    if (x == floor(x) && fabs(x) < 9e15)
        return json_integer((json_int_t)x);
    return json_real(x);
}

char *ck_config_to_json(const ck_config *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "architectures", json_pack("[s]", "DeepseekV3ForCausalLM"));
    json_object_set_new(o, "attention_bias", json_false());
    json_object_set_new(o, "attention_dropout", json_real(0.0));
    json_object_set_new(o, "aux_loss_alpha", json_real(0.001));
    json_object_set_new(o, "bos_token_id", json_integer(c->bos_token_id));
    json_object_set_new(o, "eos_token_id", json_integer(c->eos_token_id));
    json_object_set_new(o, "ep_size", json_integer(1));
    json_object_set_new(o, "first_k_dense_replace", json_integer(c->first_k_dense_replace));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    json_object_set_new(o, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(o, "initializer_range", json_real(0.02));
    json_object_set_new(o, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(o, "kv_lora_rank", json_integer(c->kv_lora_rank));
    json_object_set_new(o, "max_position_embeddings", json_integer(c->max_position_embeddings));
    json_object_set_new(o, "model_type", json_string("deepseek_v3"));
    json_object_set_new(o, "moe_intermediate_size", json_integer(c->moe_intermediate_size));
    json_object_set_new(o, "moe_layer_freq", json_integer(c->moe_layer_freq));
    json_object_set_new(o, "n_group", json_integer(c->n_group));
    json_object_set_new(o, "n_routed_experts", json_integer(c->n_routed_experts));
    json_object_set_new(o, "n_shared_experts", json_integer(c->n_shared_experts));
    json_object_set_new(o, "norm_topk_prob", json_boolean(c->norm_topk_prob));
    json_object_set_new(o, "num_attention_heads", json_integer(c->num_attention_heads));
    json_object_set_new(o, "num_experts_per_tok", json_integer(c->num_experts_per_tok));
    json_object_set_new(o, "num_hidden_layers", json_integer(c->num_hidden_layers));
    json_object_set_new(o, "num_key_value_heads", json_integer(c->num_key_value_heads));
    json_object_set_new(o, "num_nextn_predict_layers", json_integer(c->num_nextn_predict_layers));
    json_object_set_new(o, "pretraining_tp", json_integer(1));
    json_object_set_new(o, "q_lora_rank", json_integer(c->q_lora_rank));
    json_object_set_new(o, "qk_nope_head_dim", json_integer(c->qk_nope_head_dim));
    json_object_set_new(o, "qk_rope_head_dim", json_integer(c->qk_rope_head_dim));
    if (c->fp8) {
        json_t *q = json_object();
        json_object_set_new(q, "activation_scheme", json_string("dynamic"));
        json_object_set_new(q, "fmt", json_string("e4m3"));
        json_object_set_new(q, "quant_method", json_string("fp8"));
        json_object_set_new(q, "weight_block_size",
                            json_pack("[I,I]", (json_int_t)c->weight_block[0],
                                      (json_int_t)c->weight_block[1]));
        json_object_set_new(o, "quantization_config", q);
    }
    json_object_set_new(o, "rms_norm_eps", json_real(c->rms_norm_eps));
    if (c->rope.yarn) {
        json_t *r = json_object();
        json_object_set_new(r, "beta_fast", num(c->rope.beta_fast));
        json_object_set_new(r, "beta_slow", num(c->rope.beta_slow));
        json_object_set_new(r, "factor", num(c->rope.factor));
        json_object_set_new(r, "mscale", json_real(c->rope.mscale));
        json_object_set_new(r, "mscale_all_dim", json_real(c->rope.mscale_all_dim));
        json_object_set_new(r, "original_max_position_embeddings",
                            json_integer(c->rope.original_max_position_embeddings));
        json_object_set_new(r, "type", json_string("yarn"));
        json_object_set_new(o, "rope_scaling", r);
    } else {
        json_object_set_new(o, "rope_scaling", json_null());
    }
    json_object_set_new(o, "rope_theta", num(c->rope_theta));
    json_object_set_new(o, "routed_scaling_factor", num(c->routed_scaling_factor));
    json_object_set_new(o, "scoring_func", json_string("sigmoid"));
    json_object_set_new(o, "seq_aux", json_true());
    json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(o, "topk_group", json_integer(c->topk_group));
    json_object_set_new(o, "topk_method", json_string("noaux_tc"));
    json_object_set_new(o, "torch_dtype", json_string("bfloat16"));
    json_object_set_new(o, "transformers_version", json_string("4.46.3"));
    json_object_set_new(o, "use_cache", json_true());
    json_object_set_new(o, "v_head_dim", json_integer(c->v_head_dim));
    json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
    /* 15 significant digits print 1e-06 as HF does; fall back to 17 where that would
     * not give back the same doubles. */
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
    ck_config back;
    if (s && (ck_config_parse(&back, s, strlen(s), "", NULL) != 0 ||
              back.rms_norm_eps != c->rms_norm_eps || back.rope_theta != c->rope_theta ||
              back.routed_scaling_factor != c->routed_scaling_factor ||
              back.rope.factor != c->rope.factor || back.rope.beta_fast != c->rope.beta_fast ||
              back.rope.beta_slow != c->rope.beta_slow || back.rope.mscale != c->rope.mscale ||
              back.rope.mscale_all_dim != c->rope.mscale_all_dim)) {
        free(s);
        s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    }
    json_decref(o);
    return fu_newline(s); /* text files end with a newline */
}

int ck_layer_is_moe(const ck_config *cfg, uint32_t layer)
{
    /* As the reference modeling code: MoE from first_k_dense_replace on, every
     * moe_layer_freq-th layer; MTP layers follow the same rule. */
    return layer >= cfg->first_k_dense_replace && layer % (cfg->moe_layer_freq ? cfg->moe_layer_freq : 1) == 0;
}

const char *ck_class_name(ck_class c)
{
    static const char *const names[CK_CLASS_COUNT] = {
        "embed", "lm_head", "final_norm", "norm",
        "attn_q_a", "attn_q_b", "attn_kv_a", "attn_kv_b", "attn_o",
        "dense_gate", "dense_up", "dense_down",
        "router", "router_bias",
        "expert_gate", "expert_up", "expert_down",
        "shared_gate", "shared_up", "shared_down",
        "mtp_embed", "mtp_eh_proj", "mtp_head",
    };
    return (unsigned)c < CK_CLASS_COUNT ? names[c] : "?";
}

const char *ck_group_name(ck_group g)
{
    static const char *const names[CK_GROUP_COUNT] = {
        "attention", "dense_mlp", "routed_experts", "shared_experts", "router", "norms",
        "embed_head", "mtp",
    };
    return (unsigned)g < CK_GROUP_COUNT ? names[g] : "?";
}

ck_group ck_tensor_group(const ck_config *cfg, const ck_tensor_desc *d)
{
    if (d->layer >= 0 && (uint32_t)d->layer >= cfg->num_hidden_layers)
        return CK_GROUP_MTP;
    switch (d->cls) {
    case CK_EMBED:
    case CK_LM_HEAD: return CK_GROUP_EMBED_HEAD;
    case CK_FINAL_NORM:
    case CK_NORM: return CK_GROUP_NORMS;
    case CK_ATTN_Q_A:
    case CK_ATTN_Q_B:
    case CK_ATTN_KV_A:
    case CK_ATTN_KV_B:
    case CK_ATTN_O: return CK_GROUP_ATTENTION;
    case CK_DENSE_GATE:
    case CK_DENSE_UP:
    case CK_DENSE_DOWN: return CK_GROUP_DENSE_MLP;
    case CK_ROUTER:
    case CK_ROUTER_BIAS: return CK_GROUP_ROUTER;
    case CK_EXPERT_GATE:
    case CK_EXPERT_UP:
    case CK_EXPERT_DOWN: return CK_GROUP_ROUTED;
    case CK_SHARED_GATE:
    case CK_SHARED_UP:
    case CK_SHARED_DOWN: return CK_GROUP_SHARED;
    default: return CK_GROUP_MTP;
    }
}

/* --------------------------------------------------------- expected tensors */

typedef struct tlist {
    ck_tensor_desc *v;
    size_t n, cap;
    int fp8;
} tlist;

static int tl_push(tlist *t, const char *name, st_dtype dt, int ndim, uint64_t d0, uint64_t d1,
                   ck_class cls, int32_t layer, int32_t expert)
{
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 256;
        ck_tensor_desc *nv = realloc(t->v, nc * sizeof *nv);
        if (!nv)
            return -1;
        t->v = nv;
        t->cap = nc;
    }
    ck_tensor_desc *d = &t->v[t->n];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", name);
    d->dtype = dt;
    d->ndim = ndim;
    d->shape[0] = d0;
    d->shape[1] = ndim > 1 ? d1 : 0;
    d->cls = cls;
    d->layer = layer;
    d->expert = expert;
    d->weight_of = -1;
    d->scale_idx = -1;
    d->nbytes = d0 * (ndim > 1 ? d1 : 1) * st_dtype_size(dt);
    t->n++;
    return 0;
}

static int tl_vec(tlist *t, const char *name, uint64_t n, ck_class cls, int32_t layer)
{
    return tl_push(t, name, ST_BF16, 1, n, 0, cls, layer, -1);
}

/* A 2-D projection: FP8 + its scale sibling when the checkpoint is FP8, else BF16. */
static int tl_proj(tlist *t, const char *name, uint64_t out, uint64_t in, ck_class cls,
                   int32_t layer, int32_t expert)
{
    if (!t->fp8)
        return tl_push(t, name, ST_BF16, 2, out, in, cls, layer, expert);
    if (tl_push(t, name, ST_F8_E4M3, 2, out, in, cls, layer, expert))
        return -1;
    char sname[128];
    size_t len = strlen(name);
    /* "x.weight" -> "x.weight_scale_inv" */
    snprintf(sname, sizeof sname, "%.*s_scale_inv", (int)len, name);
    if (tl_push(t, sname, ST_F32, 2, (out + 127) / 128, (in + 127) / 128, cls, layer, expert))
        return -1;
    ck_tensor_desc *w = &t->v[t->n - 2], *s = &t->v[t->n - 1];
    s->is_scale = 1;
    s->weight_of = (int32_t)(t->n - 2);
    w->scale_idx = (int32_t)(t->n - 1);
    return 0;
}

static int add_layer(tlist *t, const ck_config *c, uint32_t L, int mtp)
{
    char n[128];
    const uint64_t H = c->hidden_size, V = c->vocab_size, nh = c->num_attention_heads;
    const int32_t l = (int32_t)L;
#define P(suffix) (snprintf(n, sizeof n, "model.layers.%u.%s", L, suffix), n)
    if (mtp) {
        if (tl_push(t, P("embed_tokens.weight"), ST_BF16, 2, V, H, CK_MTP_EMBED, l, -1) ||
            tl_vec(t, P("enorm.weight"), H, CK_NORM, l) || tl_vec(t, P("hnorm.weight"), H, CK_NORM, l) ||
            tl_push(t, P("eh_proj.weight"), ST_BF16, 2, H, 2 * H, CK_MTP_EH_PROJ, l, -1))
            return -1;
    }
    if (tl_vec(t, P("input_layernorm.weight"), H, CK_NORM, l) ||
        tl_proj(t, P("self_attn.q_a_proj.weight"), c->q_lora_rank, H, CK_ATTN_Q_A, l, -1) ||
        tl_vec(t, P("self_attn.q_a_layernorm.weight"), c->q_lora_rank, CK_NORM, l) ||
        tl_proj(t, P("self_attn.q_b_proj.weight"), nh * (c->qk_nope_head_dim + c->qk_rope_head_dim),
                c->q_lora_rank, CK_ATTN_Q_B, l, -1) ||
        tl_proj(t, P("self_attn.kv_a_proj_with_mqa.weight"), (uint64_t)c->kv_lora_rank + c->qk_rope_head_dim,
                H, CK_ATTN_KV_A, l, -1) ||
        tl_vec(t, P("self_attn.kv_a_layernorm.weight"), c->kv_lora_rank, CK_NORM, l) ||
        tl_proj(t, P("self_attn.kv_b_proj.weight"), nh * (c->qk_nope_head_dim + c->v_head_dim),
                c->kv_lora_rank, CK_ATTN_KV_B, l, -1) ||
        tl_proj(t, P("self_attn.o_proj.weight"), H, nh * c->v_head_dim, CK_ATTN_O, l, -1) ||
        tl_vec(t, P("post_attention_layernorm.weight"), H, CK_NORM, l))
        return -1;
    if (!ck_layer_is_moe(c, L)) {
        const uint64_t I = c->intermediate_size;
        if (tl_proj(t, P("mlp.gate_proj.weight"), I, H, CK_DENSE_GATE, l, -1) ||
            tl_proj(t, P("mlp.up_proj.weight"), I, H, CK_DENSE_UP, l, -1) ||
            tl_proj(t, P("mlp.down_proj.weight"), H, I, CK_DENSE_DOWN, l, -1))
            return -1;
    } else {
        const uint64_t M = c->moe_intermediate_size, S = M * c->n_shared_experts;
        if (tl_push(t, P("mlp.gate.weight"), ST_BF16, 2, c->n_routed_experts, H, CK_ROUTER, l, -1) ||
            tl_push(t, P("mlp.gate.e_score_correction_bias"), ST_F32, 1, c->n_routed_experts, 0,
                    CK_ROUTER_BIAS, l, -1))
            return -1;
        for (uint32_t e = 0; e < c->n_routed_experts; e++) {
            char s[64];
            const int32_t x = (int32_t)e;
            snprintf(s, sizeof s, "mlp.experts.%u.gate_proj.weight", e);
            if (tl_proj(t, P(s), M, H, CK_EXPERT_GATE, l, x))
                return -1;
            snprintf(s, sizeof s, "mlp.experts.%u.up_proj.weight", e);
            if (tl_proj(t, P(s), M, H, CK_EXPERT_UP, l, x))
                return -1;
            snprintf(s, sizeof s, "mlp.experts.%u.down_proj.weight", e);
            if (tl_proj(t, P(s), H, M, CK_EXPERT_DOWN, l, x))
                return -1;
        }
        if (tl_proj(t, P("mlp.shared_experts.gate_proj.weight"), S, H, CK_SHARED_GATE, l, -1) ||
            tl_proj(t, P("mlp.shared_experts.up_proj.weight"), S, H, CK_SHARED_UP, l, -1) ||
            tl_proj(t, P("mlp.shared_experts.down_proj.weight"), H, S, CK_SHARED_DOWN, l, -1))
            return -1;
    }
    if (mtp) {
        if (tl_vec(t, P("shared_head.norm.weight"), H, CK_NORM, l) ||
            tl_push(t, P("shared_head.head.weight"), ST_BF16, 2, V, H, CK_MTP_HEAD, l, -1))
            return -1;
    }
#undef P
    return 0;
}

uint64_t ck_expected_count(const ck_config *c, int include_mtp)
{
    const uint64_t proj = c->fp8 ? 2 : 1;        /* weight (+ scale) */
    const uint64_t attn = 4 + 5 * proj;          /* 4 norms, 5 projections */
    const uint64_t dense = 3 * proj;
    const uint64_t moe = 2 + ((uint64_t)c->n_routed_experts * 3 + 3) * proj; /* router, experts, shared */
    uint64_t n = 3;                              /* embed, final norm, lm_head */
    uint32_t last = c->num_hidden_layers + (include_mtp ? c->num_nextn_predict_layers : 0);
    for (uint32_t L = 0; L < last; L++) {
        n += attn + (ck_layer_is_moe(c, L) ? moe : dense);
        if (L >= c->num_hidden_layers)
            n += 6;                              /* MTP extras */
    }
    return n;
}

int ck_expected_tensors(const ck_config *cfg, int include_mtp, ck_tensor_desc **out, size_t *n,
                        dsr1_err *err)
{
    *out = NULL;
    *n = 0;
    uint64_t want = ck_expected_count(cfg, include_mtp);
    if (want > CK_MAX_TENSORS)
        return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_CONFIG_VALUE, 0,
                            "config describes %" PRIu64 " tensors (limit %u): check "
                            "num_hidden_layers and n_routed_experts", want, CK_MAX_TENSORS);
    tlist t = {NULL, 0, 0, cfg->fp8};
    t.v = malloc((size_t)want * sizeof *t.v);
    if (!t.v)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory for %" PRIu64 " tensor descriptors",
                            want);
    t.cap = (size_t)want;
    const uint64_t H = cfg->hidden_size, V = cfg->vocab_size;
    int bad = tl_push(&t, "model.embed_tokens.weight", ST_BF16, 2, V, H, CK_EMBED, -1, -1);
    for (uint32_t L = 0; !bad && L < cfg->num_hidden_layers; L++)
        bad = add_layer(&t, cfg, L, 0);
    /* Real checkpoints store norm and lm_head after the last decoder layer and the
     * MTP module last; listing them in that order makes file assignment realistic. */
    if (!bad)
        bad = tl_vec(&t, "model.norm.weight", H, CK_FINAL_NORM, -1) ||
              tl_push(&t, "lm_head.weight", ST_BF16, 2, V, H, CK_LM_HEAD, -1, -1);
    for (uint32_t k = 0; !bad && include_mtp && k < cfg->num_nextn_predict_layers; k++)
        bad = add_layer(&t, cfg, cfg->num_hidden_layers + k, 1);
    if (bad) {
        free(t.v);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory building the tensor list");
    }
    if (t.n != want) {
        free(t.v);
        return dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "tensor count %zu != predicted %" PRIu64,
                            t.n, want);
    }
    *out = t.v;
    *n = t.n;
    return 0;
}

/* ------------------------------------------------------------------ index */

typedef struct ck_entry {
    char *tensor;
    uint32_t file;
} ck_entry;

struct ck_ckpt {
    char *dir;
    ck_config cfg;
    uint64_t total_size;
    ck_entry *ent;
    size_t n_ent;
    char **files;
    size_t n_files;
    st_file **open; /* per file, lazily */
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const ck_entry *)a)->tensor, ((const ck_entry *)b)->tensor);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int ck_index_file_name_ok(const char *f, size_t len)
{
    if (len == 0 || strlen(f) != len)
        return 0;
    if (strchr(f, '/') || strchr(f, '\\') || strstr(f, ".."))
        return 0;
    if (strcmp(f, ".") == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)f[i] < 0x20)
            return 0;
    return 1;
}

static int parse_index(ck_ckpt *c, const char *buf, size_t len, const char *label, dsr1_err *err)
{
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_JSON, 0,
                            "%s: not valid JSON at line %d column %d: %s", label, je.line, je.column,
                            je.text);
    int rc = 0;
    json_t *wm, *md;
    if (!json_is_object(root)) {
        rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_JSON, 0,
                          "%s: top level must be a JSON object", label);
        goto out;
    }
    md = opt(root, "metadata");
    if (md) {
        if (!json_is_object(md)) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FIELD, 0,
                              "%s: \"metadata\" must be an object, got %s", label, kind_of(md));
            goto out;
        }
        json_t *ts = opt(md, "total_size");
        if (ts) {
            /* Some writers emit total_size as a float; accept integral values. */
            double x = json_is_number(ts) ? json_number_value(ts) : -1;
            if (!json_is_number(ts) || x < 0 || x != floor(x) || x > 9.0e18) {
                char b[80];
                show(ts, b, sizeof b);
                rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FIELD, 0,
                                  "%s: metadata.total_size must be a non-negative integer, got %s",
                                  label, b);
                goto out;
            }
            c->total_size = json_is_integer(ts) ? (uint64_t)json_integer_value(ts) : (uint64_t)x;
        }
    }
    wm = json_object_get(root, "weight_map");
    if (!wm) {
        rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FIELD, 0,
                          "%s: \"weight_map\" is missing", label);
        goto out;
    }
    if (!json_is_object(wm)) {
        rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FIELD, 0,
                          "%s: \"weight_map\" must be an object of tensor name -> file name, got %s",
                          label, kind_of(wm));
        goto out;
    }
    size_t n = json_object_size(wm);
    c->ent = calloc(n ? n : 1, sizeof *c->ent);
    char **fl = calloc(n ? n : 1, sizeof *fl);
    if (!c->ent || !fl) {
        free(fl);
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory for %zu index entries", n);
        goto out;
    }
    const char *key;
    json_t *val;
    size_t i = 0;
    json_object_foreach(wm, key, val) {
        if (!*key) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FIELD, 0,
                              "%s: weight_map has an empty tensor name", label);
            break;
        }
        if (!json_is_string(val)) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FIELD, 0,
                              "%s: weight_map[\"%s\"] must be a file name string, got %s", label,
                              key, kind_of(val));
            break;
        }
        const char *f = json_string_value(val);
        if (!ck_index_file_name_ok(f, json_string_length(val))) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FILE, 0,
                              "%s: weight_map[\"%s\"] = \"%s\" is not a plain file name in the "
                              "checkpoint directory (no '/', '\\', '..' or control characters)",
                              label, key, f);
            break;
        }
        c->ent[i].tensor = strdup(key);
        fl[i] = (char *)f;
        if (!c->ent[i].tensor) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            break;
        }
        i++;
    }
    c->n_ent = i;
    if (rc == 0) {
        /* Distinct file names, sorted; then each entry's file index. */
        char **u = malloc((n ? n : 1) * sizeof *u);
        if (!u) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        } else {
            memcpy(u, fl, n * sizeof *u);
            qsort(u, n, sizeof *u, cmp_str);
            size_t k = 0;
            for (size_t j = 0; j < n; j++)
                if (k == 0 || strcmp(u[k - 1], u[j]) != 0)
                    u[k++] = u[j];
            c->files = calloc(k ? k : 1, sizeof *c->files);
            c->open = calloc(k ? k : 1, sizeof *c->open);
            if (!c->files || !c->open) {
                rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            } else {
                for (size_t j = 0; j < k && !rc; j++)
                    if (!(c->files[j] = strdup(u[j])))
                        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
                c->n_files = k;
                for (size_t j = 0; j < n && !rc; j++) {
                    char **hit = bsearch(&fl[j], c->files, k, sizeof *c->files, cmp_str);
                    c->ent[j].file = (uint32_t)(hit - c->files);
                }
            }
            free(u);
        }
    }
    free(fl);
    if (rc == 0)
        qsort(c->ent, c->n_ent, sizeof *c->ent, cmp_entry);
out:
    json_decref(root);
    return rc;
}

int ck_index_parse(ck_ckpt **out, const char *json, size_t len, const char *label, dsr1_err *err)
{
    *out = NULL;
    ck_ckpt *c = calloc(1, sizeof *c);
    if (!c)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    c->dir = strdup(".");
    int rc = c->dir ? parse_index(c, json, len, label ? label : INDEX_NAME, err)
                    : dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    if (rc) {
        ck_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int ck_open(ck_ckpt **out, const char *dir, dsr1_err *err)
{
    *out = NULL;
    ck_ckpt *c = calloc(1, sizeof *c);
    if (!c)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int rc = 0;
    char *cp = NULL, *ip = NULL, *buf = NULL;
    size_t len;
    c->dir = strdup(dir);
    cp = fu_join(dir, CONFIG_NAME);
    ip = fu_join(dir, INDEX_NAME);
    if (!c->dir || !cp || !ip) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto done;
    }
    if ((rc = ck_config_load(&c->cfg, cp, err)))
        goto done;
    if ((rc = fu_read_all(ip, (uint64_t)1 << 30, CK_ERR_INDEX_OPEN, &buf, &len, err)))
        goto done;
    rc = parse_index(c, buf, len, ip, err);
done:
    free(cp);
    free(ip);
    free(buf);
    if (rc) {
        ck_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void ck_close(ck_ckpt *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_ent; i++)
        free(c->ent[i].tensor);
    for (size_t i = 0; i < c->n_files; i++) {
        if (c->open)
            st_close(c->open[i]);
        free(c->files[i]);
    }
    free(c->ent);
    free(c->files);
    free(c->open);
    free(c->dir);
    free(c);
}

const ck_config *ck_cfg(const ck_ckpt *c) { return &c->cfg; }
const char *ck_dir(const ck_ckpt *c) { return c->dir; }
uint64_t ck_index_total_size(const ck_ckpt *c) { return c->total_size; }
size_t ck_index_count(const ck_ckpt *c) { return c->n_ent; }
size_t ck_file_count(const ck_ckpt *c) { return c->n_files; }
const char *ck_file_at(const ck_ckpt *c, size_t i) { return i < c->n_files ? c->files[i] : NULL; }

void ck_index_at(const ck_ckpt *c, size_t i, const char **tensor, const char **file)
{
    if (i >= c->n_ent) {
        *tensor = *file = NULL;
        return;
    }
    *tensor = c->ent[i].tensor;
    *file = c->files[c->ent[i].file];
}

static const ck_entry *find_entry(const ck_ckpt *c, const char *tensor)
{
    ck_entry key = {(char *)tensor, 0};
    return bsearch(&key, c->ent, c->n_ent, sizeof *c->ent, cmp_entry);
}

const char *ck_index_file_of(const ck_ckpt *c, const char *tensor)
{
    const ck_entry *e = find_entry(c, tensor);
    return e ? c->files[e->file] : NULL;
}

int ck_index_has_mtp(const ck_ckpt *c)
{
    const uint32_t nl = c->cfg.num_hidden_layers;
    for (size_t i = 0; i < c->n_ent; i++) {
        unsigned L;
        int pos = 0;
        if (sscanf(c->ent[i].tensor, "model.layers.%u.%n", &L, &pos) == 1 && pos > 0 && L >= nl)
            return 1;
    }
    return 0;
}

static int cmp_desc_name(const void *a, const void *b)
{
    const ck_tensor_desc *x = *(const ck_tensor_desc *const *)a, *y = *(const ck_tensor_desc *const *)b;
    return strcmp(x->name, y->name);
}

int ck_check_index(const ck_ckpt *c, int include_mtp, ck_report_fn report, void *ctx, dsr1_err *err)
{
    ck_tensor_desc *exp;
    size_t n;
    int rc = ck_expected_tensors(&c->cfg, include_mtp, &exp, &n, err);
    if (rc)
        return rc;
    const ck_tensor_desc **s = malloc((n ? n : 1) * sizeof *s);
    if (!s) {
        free(exp);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        s[i] = &exp[i];
    qsort(s, n, sizeof *s, cmp_desc_name);
    /* Merge the two sorted name lists. */
    int problems = 0;
    size_t i = 0, j = 0;
    char msg[512];
    while (i < n || j < c->n_ent) {
        int d = i >= n ? 1 : j >= c->n_ent ? -1 : strcmp(s[i]->name, c->ent[j].tensor);
        if (d == 0) {
            i++;
            j++;
            continue;
        }
        if (d < 0) {
            snprintf(msg, sizeof msg, "missing tensor %s (%s %s) from the index",
                     s[i]->name, ck_class_name(s[i]->cls), st_dtype_name(s[i]->dtype));
            if (!problems)
                dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_MISSING_TENSOR, 0, "%s/%s: %s", c->dir,
                             INDEX_NAME, msg);
            i++;
        } else {
            snprintf(msg, sizeof msg, "unexpected tensor %s (in %s) is not part of the "
                     "DeepSeek-V3 layout for this config%s", c->ent[j].tensor,
                     c->files[c->ent[j].file], include_mtp ? "" : " without the MTP layer");
            if (!problems)
                dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_UNEXPECTED_TENSOR, 0, "%s/%s: %s", c->dir,
                             INDEX_NAME, msg);
            j++;
        }
        problems++;
        if (report)
            report(ctx, msg);
    }
    free(s);
    free(exp);
    return problems;
}

int ck_file_open(ck_ckpt *c, size_t i, st_file **out, dsr1_err *err)
{
    *out = NULL;
    if (i >= c->n_files)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "file index %zu out of range", i);
    if (!c->open[i]) {
        char *p = fu_join(c->dir, c->files[i]);
        if (!p)
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        struct stat sb;
        if (stat(p, &sb) != 0 && errno == ENOENT) {
            int rc = dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_INDEX_FILE, ENOENT,
                                  "weight file %s named by the index does not exist", p);
            free(p);
            return rc;
        }
        int rc = st_open(&c->open[i], p, err);
        free(p);
        if (rc)
            return rc;
    }
    *out = c->open[i];
    return 0;
}

int ck_file_exists(const ck_ckpt *c, size_t i)
{
    if (i >= c->n_files)
        return 0;
    char *p = fu_join(c->dir, c->files[i]);
    if (!p)
        return 0;
    struct stat sb;
    int ok = stat(p, &sb) == 0;
    free(p);
    return ok;
}

static void shape_str(char *b, size_t n, int ndim, const uint64_t *shape)
{
    size_t k = (size_t)snprintf(b, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(b + k, n - k, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (k < n)
        snprintf(b + k, n - k, "]");
}

int ck_tensor(ck_ckpt *c, const char *tensor, const ck_tensor_desc *desc, const st_tensor **out,
              dsr1_err *err)
{
    *out = NULL;
    const ck_entry *e = find_entry(c, tensor);
    if (!e)
        return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_MISSING_TENSOR, 0,
                            "%s: tensor %s is not in %s", c->dir, tensor, INDEX_NAME);
    st_file *f;
    int rc = ck_file_open(c, e->file, &f, err);
    if (rc) {
        dsr1_err_prefix(err, "tensor %s", tensor);
        return rc;
    }
    const st_tensor *t = st_find(f, tensor);
    if (!t)
        return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_MISSING_TENSOR, 0,
                            "tensor %s: the index maps it to %s/%s, but that file has no such tensor",
                            tensor, c->dir, c->files[e->file]);
    if (desc) {
        if (t->dtype != desc->dtype)
            return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_DTYPE, 0,
                                "tensor %s in %s/%s: dtype %s, expected %s", tensor, c->dir,
                                c->files[e->file], st_dtype_name(t->dtype),
                                st_dtype_name(desc->dtype));
        int same = t->ndim == desc->ndim;
        for (int k = 0; same && k < desc->ndim; k++)
            same = t->shape[k] == desc->shape[k];
        if (!same) {
            char a[128], b[128];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, desc->ndim, desc->shape);
            return dsr1_err_set(err, DSR1_E_INVALID, CK_ERR_SHAPE, 0,
                                "tensor %s in %s/%s: shape %s, expected %s", tensor, c->dir,
                                c->files[e->file], a, b);
        }
    }
    *out = t;
    return 0;
}
