/* ck corrupt-input catalogue: malformed config.json and model.safetensors.index.json,
 * each rejected with its specific error code and a message naming the field/value. */
#include <jansson.h>
#include <stdlib.h>

#include "ck.h"
#include "synth.h"
#include "test.h"

/* The tiny preset's config.json with one field replaced ("a.b" reaches into an object;
 * value NULL deletes the field; value is JSON text). */
static char *tiny_with(const char *key, const char *value)
{
    ck_config c;
    dsr1_err e;
    if (sy_preset("tiny", 0, &c, NULL, &e))
        return NULL;
    char *s = ck_config_to_json(&c);
    json_error_t je;
    json_t *root = json_loads(s, 0, &je);
    free(s);
    if (!root)
        return NULL;
    json_t *obj = root;
    char k[128];
    snprintf(k, sizeof k, "%s", key);
    char *dot = strchr(k, '.');
    if (dot) {
        *dot = 0;
        obj = json_object_get(root, k);
        memmove(k, dot + 1, strlen(dot + 1) + 1);
    }
    if (!value)
        json_object_del(obj, k);
    else
        json_object_set_new(obj, k, json_loads(value, JSON_DECODE_ANY, &je));
    s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

typedef struct ccase {
    const char *key, *value; /* value NULL: delete */
    int code;
    const char *msg;
} ccase;

static const ccase config_cases[] = {
    {"hidden_size", NULL, CK_ERR_CONFIG_FIELD, "required field \"hidden_size\" is missing"},
    {"hidden_size", "\"256\"", CK_ERR_CONFIG_FIELD, "\"hidden_size\" must be an integer, got a string \"256\""},
    {"hidden_size", "256.5", CK_ERR_CONFIG_FIELD, "\"hidden_size\" must be an integer"},
    {"hidden_size", "-1", CK_ERR_CONFIG_VALUE, "\"hidden_size\" = -1 is out of range"},
    {"num_hidden_layers", "0", CK_ERR_CONFIG_VALUE, "\"num_hidden_layers\" = 0 is out of range"},
    {"n_group", "3", CK_ERR_CONFIG_VALUE, "\"n_group\" = 3 does not divide n_routed_experts = 16"},
    {"n_group", "16", CK_ERR_CONFIG_VALUE, "leaves 1 expert per group"},
    {"topk_group", "5", CK_ERR_CONFIG_VALUE, "\"topk_group\" = 5 exceeds n_group = 4"},
    {"num_experts_per_tok", "17", CK_ERR_CONFIG_VALUE, "\"num_experts_per_tok\" = 17 exceeds n_routed_experts = 16"},
    {"num_experts_per_tok", "9", CK_ERR_CONFIG_VALUE, "exceeds the 8 experts of the topk_group = 2 selected groups"},
    {"kv_lora_rank", "0", CK_ERR_CONFIG_VALUE, "\"kv_lora_rank\" = 0"},
    {"first_k_dense_replace", "4", CK_ERR_CONFIG_VALUE, "\"first_k_dense_replace\" = 4 exceeds num_hidden_layers = 3"},
    {"qk_rope_head_dim", "63", CK_ERR_CONFIG_VALUE, "\"qk_rope_head_dim\" = 63 must be even"},
    {"rms_norm_eps", "0", CK_ERR_CONFIG_VALUE, "\"rms_norm_eps\" = 0 is out of range"},
    {"eos_token_id", "1024", CK_ERR_CONFIG_VALUE, "\"eos_token_id\" = 1024 is not below vocab_size = 1024"},
    {"norm_topk_prob", "\"yes\"", CK_ERR_CONFIG_FIELD, "\"norm_topk_prob\" must be true or false"},
    {"scoring_func", "\"softmax\"", CK_ERR_CONFIG_UNSUPPORTED, "\"scoring_func\" = \"softmax\" is not supported"},
    {"topk_method", "\"greedy\"", CK_ERR_CONFIG_UNSUPPORTED, "\"topk_method\" = \"greedy\" is not supported"},
    {"model_type", "\"llama\"", CK_ERR_CONFIG_UNSUPPORTED, "model_type \"llama\" is not supported"},
    {"model_type", NULL, CK_ERR_CONFIG_FIELD, "required field \"model_type\" is missing"},
    {"q_lora_rank", "null", CK_ERR_CONFIG_UNSUPPORTED, "q_lora_rank = null"},
    {"hidden_act", "\"gelu\"", CK_ERR_CONFIG_UNSUPPORTED, "\"hidden_act\" = \"gelu\""},
    {"tie_word_embeddings", "true", CK_ERR_CONFIG_UNSUPPORTED, "tie_word_embeddings = true"},
    {"rope_scaling.type", "\"linear\"", CK_ERR_CONFIG_UNSUPPORTED, "rope_scaling.type \"linear\" is not supported"},
    {"rope_scaling.factor", NULL, CK_ERR_CONFIG_FIELD, "\"rope_scaling.factor\" is missing"},
    {"rope_scaling.beta_fast", "0.5", CK_ERR_CONFIG_VALUE, "beta_fast (0.5) must be greater than beta_slow (1)"},
    {"rope_scaling", "[]", CK_ERR_CONFIG_FIELD, "\"rope_scaling\" must be an object or null"},
    {"quantization_config.quant_method", "\"bitsandbytes\"", CK_ERR_CONFIG_UNSUPPORTED, "quant_method \"bitsandbytes\""},
    {"quantization_config.weight_block_size", "[64, 64]", CK_ERR_CONFIG_UNSUPPORTED, "weight_block_size [64, 64]"},
    {"quantization_config.weight_block_size", "\"128\"", CK_ERR_CONFIG_FIELD, "must be an array of two integers"},
    {"quantization_config.fmt", "\"e5m2\"", CK_ERR_CONFIG_UNSUPPORTED, "\"quantization_config.fmt\" = \"e5m2\""},
    {"architectures", "\"DeepseekV3ForCausalLM\"", CK_ERR_CONFIG_FIELD, "\"architectures\" must be an array of strings"},
};

TEST(ck_corrupt_config_catalogue)
{
    for (size_t i = 0; i < sizeof config_cases / sizeof *config_cases; i++) {
        const ccase *k = &config_cases[i];
        char *s = tiny_with(k->key, k->value);
        CHECK(s != NULL);
        if (!s)
            continue;
        ck_config c;
        dsr1_err e;
        dsr1_err_clear(&e);
        int rc = ck_config_parse(&c, s, strlen(s), "cfg.json", &e);
        CHECK_MSG(rc == DSR1_E_INVALID && e.code == k->code,
                  "%s=%s: rc %d code %d (want %d): %s", k->key, k->value ? k->value : "(deleted)",
                  rc, e.code, k->code, e.msg);
        CHECK_CONTAINS(e.msg, k->msg);
        CHECK_CONTAINS(e.msg, "cfg.json");
        free(s);
    }
    /* The unmodified base parses (so every case above fails for its own reason). */
    char *s = tiny_with("unknown_future_key", "{\"a\": 1}");
    ck_config c;
    dsr1_err e;
    CHECK_EQ_INT(ck_config_parse(&c, s, strlen(s), "cfg.json", &e), 0);
    free(s);
}

TEST(ck_corrupt_config_json)
{
    ck_config c;
    dsr1_err e;
    const char *bad[] = {"{\"hidden_size\": 1,", "[1, 2]", "{\"model_type\":\"deepseek_v3\",\"model_type\":\"x\"}", "", "\"x\""};
    const char *want[] = {"not valid JSON", "top level must be a JSON object", "duplicate", "not valid JSON",
                          "not valid JSON"};
    for (size_t i = 0; i < 5; i++) {
        int rc = ck_config_parse(&c, bad[i], strlen(bad[i]), "cfg.json", &e);
        CHECK_EQ_INT(rc, DSR1_E_INVALID);
        CHECK_EQ_INT(e.code, CK_ERR_CONFIG_JSON);
        CHECK_CONTAINS(e.msg, want[i]);
    }
    CHECK_EQ_INT(ck_config_load(&c, test_path("absent.json"), &e), DSR1_E_IO);
    CHECK_EQ_INT(e.code, CK_ERR_CONFIG_OPEN);
    CHECK_CONTAINS(e.msg, "absent.json");
    /* A directory where config.json should be a file. */
    CHECK_EQ_INT(ck_config_load(&c, test_tmpdir(), &e), DSR1_E_IO);
    CHECK_EQ_INT(e.code, CK_ERR_CONFIG_OPEN);
    CHECK_CONTAINS(e.msg, "not a regular file");
}

typedef struct icase {
    const char *json;
    int code;
    const char *msg;
} icase;

static const icase index_cases[] = {
    {"{\"weight_map\": {\"a\": \"f.safetensors\"", CK_ERR_INDEX_JSON, "not valid JSON"},
    {"[]", CK_ERR_INDEX_JSON, "top level must be a JSON object"},
    {"{\"metadata\": {}}", CK_ERR_INDEX_FIELD, "\"weight_map\" is missing"},
    {"{\"weight_map\": [\"a\"]}", CK_ERR_INDEX_FIELD, "\"weight_map\" must be an object"},
    {"{\"weight_map\": {\"a\": 1}}", CK_ERR_INDEX_FIELD, "weight_map[\"a\"] must be a file name string, got an integer"},
    {"{\"weight_map\": {\"\": \"f.safetensors\"}}", CK_ERR_INDEX_FIELD, "empty tensor name"},
    {"{\"weight_map\": {\"a\": \"../f.safetensors\"}}", CK_ERR_INDEX_FILE, "weight_map[\"a\"] = \"../f.safetensors\" is not a plain file name"},
    {"{\"weight_map\": {\"a\": \"sub/f.safetensors\"}}", CK_ERR_INDEX_FILE, "\"sub/f.safetensors\" is not a plain file name"},
    {"{\"weight_map\": {\"a\": \"/etc/passwd\"}}", CK_ERR_INDEX_FILE, "\"/etc/passwd\""},
    {"{\"weight_map\": {\"a\": \"\"}}", CK_ERR_INDEX_FILE, "is not a plain file name"},
    {"{\"weight_map\": {\"a\": \"..\"}}", CK_ERR_INDEX_FILE, "is not a plain file name"},
    {"{\"weight_map\": {\"a\": \"x\\u0000y\"}}", CK_ERR_INDEX_JSON, "not valid JSON"},
    {"{\"weight_map\": {\"a\": \"f\", \"a\": \"g\"}}", CK_ERR_INDEX_JSON, "duplicate"},
    {"{\"metadata\": {\"total_size\": -5}, \"weight_map\": {}}", CK_ERR_INDEX_FIELD, "total_size must be a non-negative integer, got -5"},
    {"{\"metadata\": {\"total_size\": \"12\"}, \"weight_map\": {}}", CK_ERR_INDEX_FIELD, "total_size must be a non-negative integer"},
    {"{\"metadata\": {\"total_size\": 1.5}, \"weight_map\": {}}", CK_ERR_INDEX_FIELD, "total_size must be a non-negative integer, got 1.5"},
    {"{\"metadata\": 7, \"weight_map\": {}}", CK_ERR_INDEX_FIELD, "\"metadata\" must be an object"},
};

TEST(ck_corrupt_index_catalogue)
{
    for (size_t i = 0; i < sizeof index_cases / sizeof *index_cases; i++) {
        const icase *k = &index_cases[i];
        ck_ckpt *c = (ck_ckpt *)1;
        dsr1_err e;
        dsr1_err_clear(&e);
        int rc = ck_index_parse(&c, k->json, strlen(k->json), "idx.json", &e);
        CHECK_MSG(rc == DSR1_E_INVALID && e.code == k->code && c == NULL,
                  "case %zu %s: rc %d code %d (want %d): %s", i, k->json, rc, e.code, k->code, e.msg);
        CHECK_CONTAINS(e.msg, k->msg);
        CHECK_CONTAINS(e.msg, "idx.json");
        if (rc == 0)
            ck_close(c);
    }
}

/* A checkpoint dir without its index, or whose index names an absent file. */
TEST(ck_corrupt_dir)
{
    ck_config cfg;
    dsr1_err e;
    ck_config_r1(&cfg);
    char *s = ck_config_to_json(&cfg);
    CHECK_EQ_INT(test_write_file(test_path("config.json"), s, strlen(s)), 0);
    free(s);
    ck_ckpt *c;
    CHECK_EQ_INT(ck_open(&c, test_tmpdir(), &e), DSR1_E_IO);
    CHECK_EQ_INT(e.code, CK_ERR_INDEX_OPEN);
    CHECK_CONTAINS(e.msg, "model.safetensors.index.json");
    const char *idx = "{\"weight_map\": {\"lm_head.weight\": \"model-00001-of-000001.safetensors\"}}";
    CHECK_EQ_INT(test_write_file(test_path("model.safetensors.index.json"), idx, strlen(idx)), 0);
    CHECK_EQ_INT(ck_open(&c, test_tmpdir(), &e), 0);
    const st_tensor *t;
    CHECK_EQ_INT(ck_tensor(c, "lm_head.weight", NULL, &t, &e), DSR1_E_INVALID);
    CHECK_EQ_INT(e.code, CK_ERR_INDEX_FILE);
    CHECK_CONTAINS(e.msg, "lm_head.weight");
    CHECK_CONTAINS(e.msg, "model-00001-of-000001.safetensors");
    CHECK_CONTAINS(e.msg, "does not exist");
    /* Everything else is missing from this index. */
    CHECK_EQ_INT(ck_check_index(c, 1, NULL, NULL, &e), 91990);
    CHECK_EQ_INT(e.code, CK_ERR_MISSING_TENSOR);
    ck_close(c);
    /* A truncated weight file: st's error, prefixed with the tensor. */
    CHECK_EQ_INT(test_write_file(test_path("model-00001-of-000001.safetensors"), "\x10\0\0\0", 4), 0);
    CHECK_EQ_INT(ck_open(&c, test_tmpdir(), &e), 0);
    CHECK(ck_tensor(c, "lm_head.weight", NULL, &t, &e) != 0);
    CHECK_EQ_INT(e.code, ST_ERR_TOO_SMALL);
    CHECK_CONTAINS(e.msg, "tensor lm_head.weight");
    ck_close(c);
}
