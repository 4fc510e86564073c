/* ck: config parsing, the expected R1 tensor list (reference numbers), index parsing,
 * index checking and lazy tensor lookup. */
#include <jansson.h>
#include <stdlib.h>

#include "ck.h"
#include "st.h"
#include "synth.h"
#include "test.h"

static uint64_t sum_bytes(const ck_tensor_desc *t, size_t n, int dtype)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        if (dtype < 0 || (int)t[i].dtype == dtype)
            s += t[i].nbytes;
    return s;
}

static const ck_tensor_desc *find(const ck_tensor_desc *t, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return &t[i];
    return NULL;
}

TEST(ck_r1_expected_reference_numbers)
{
    ck_config c;
    ck_config_r1(&c);
    ck_tensor_desc *t;
    size_t n;
    dsr1_err e;
    CHECK_EQ_INT(ck_expected_tensors(&c, 1, &t, &n, &e), 0);
    CHECK_EQ_U64(n, 91991);
    CHECK_EQ_U64(ck_expected_count(&c, 1), 91991);
    CHECK_EQ_U64(sum_bytes(t, n, -1), 688574839360ull);
    CHECK_EQ_U64(sum_bytes(t, n, ST_F8_E4M3), 680571043840ull); /* FP8 elements = bytes */
    CHECK_EQ_U64(sum_bytes(t, n, ST_BF16), 7837573120ull);
    CHECK_EQ_U64(sum_bytes(t, n, ST_F32), 166222400ull);
    uint64_t l61 = 0, moe3 = 0, dense0 = 0, exp0 = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i].layer == 61)
            l61 += t[i].nbytes;
        if (t[i].layer == 3)
            moe3 += t[i].nbytes;
        if (t[i].layer == 0)
            dense0 += t[i].nbytes;
        if (t[i].layer == 3 && t[i].expert == 0)
            exp0 += t[i].nbytes;
    }
    CHECK_EQ_U64(l61, 15424227552ull);
    CHECK_EQ_U64(moe3, 11511947488ull);  /* one MoE layer incl. attention */
    CHECK_EQ_U64(dense0, 583642336ull);  /* one dense layer incl. attention */
    CHECK_EQ_U64(exp0, 44050944ull);
    const ck_tensor_desc *kva = find(t, n, "model.layers.5.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
    CHECK(kva != NULL);
    if (kva) {
        CHECK_EQ_U64(kva->shape[0], 5);
        CHECK_EQ_U64(kva->shape[1], 56);
        CHECK_EQ_INT(kva->dtype, ST_F32);
        CHECK_EQ_INT(kva->is_scale, 1);
        CHECK_EQ_STR(t[kva->weight_of].name, "model.layers.5.self_attn.kv_a_proj_with_mqa.weight");
        CHECK_EQ_INT(t[kva->weight_of].scale_idx, (int)(kva - t));
    }
    const ck_tensor_desc *r = find(t, n, "model.layers.61.mlp.gate.weight");
    CHECK(r && r->dtype == ST_BF16 && r->shape[0] == 256 && r->shape[1] == 7168 && r->cls == CK_ROUTER);
    const ck_tensor_desc *eh = find(t, n, "model.layers.61.eh_proj.weight");
    CHECK(eh && eh->dtype == ST_BF16 && eh->shape[0] == 7168 && eh->shape[1] == 14336);
    CHECK(eh && ck_tensor_group(&c, eh) == CK_GROUP_MTP);
    const ck_tensor_desc *ex = find(t, n, "model.layers.60.mlp.experts.255.down_proj.weight");
    CHECK(ex && ex->dtype == ST_F8_E4M3 && ex->shape[0] == 7168 && ex->shape[1] == 2048 &&
          ex->expert == 255 && ex->layer == 60 && ck_tensor_group(&c, ex) == CK_GROUP_ROUTED);
    CHECK(find(t, n, "model.layers.2.mlp.gate.weight") == NULL); /* dense layer */
    CHECK_EQ_STR(t[0].name, "model.embed_tokens.weight");
    /* Names are unique. */
    int dup = 0;
    for (size_t i = 1; i < n && i < 200; i++)
        dup += strcmp(t[i].name, t[i - 1].name) == 0;
    CHECK_EQ_INT(dup, 0);
    free(t);

    CHECK_EQ_INT(ck_expected_tensors(&c, 0, &t, &n, &e), 0);
    CHECK_EQ_U64(n, 91991 - 1564);
    CHECK_EQ_U64(sum_bytes(t, n, -1), 673150611808ull);
    free(t);
}

TEST(ck_r1_json_round_trip)
{
    ck_config c, back;
    ck_config_r1(&c);
    char *s = ck_config_to_json(&c);
    CHECK(s != NULL);
    dsr1_err e;
    CHECK_EQ_INT(ck_config_parse(&back, s, strlen(s), "r1", &e), 0);
    CHECK_EQ_INT(back.hidden_size, 7168);
    CHECK_EQ_INT(back.num_hidden_layers, 61);
    CHECK_EQ_INT(back.num_nextn_predict_layers, 1);
    CHECK_EQ_INT(back.fp8, 1);
    CHECK_EQ_INT(back.weight_block[0], 128);
    CHECK_EQ_INT(back.rope.yarn, 1);
    CHECK_NEAR(back.rope.factor, 40, 0);
    CHECK_EQ_INT(back.rope.original_max_position_embeddings, 4096);
    CHECK_NEAR(back.rms_norm_eps, 1e-6, 0);
    CHECK_NEAR(back.routed_scaling_factor, 2.5, 0);
    CHECK_NEAR(back.rope.mscale_all_dim, 1.0, 0);
    CHECK_EQ_INT(back.max_position_embeddings, 163840);
    CHECK_CONTAINS(s, "\"model_type\": \"deepseek_v3\"");
    CHECK_CONTAINS(s, "\"DeepseekV3ForCausalLM\"");
    CHECK_CONTAINS(s, "\"rms_norm_eps\": 1e-6");
    CHECK_CONTAINS(s, "\"weight_block_size\"");
    CHECK_CONTAINS(s, "\"topk_method\": \"noaux_tc\"");
    free(s);
}

TEST(ck_config_defaults_and_tiny)
{
    /* Only the required fields: everything else takes transformers' defaults. */
    const char *j = "{\"model_type\":\"deepseek_v3\",\"hidden_size\":256,\"intermediate_size\":512,"
                    "\"moe_intermediate_size\":256,\"num_hidden_layers\":4,\"n_routed_experts\":16,"
                    "\"num_experts_per_tok\":4,\"num_attention_heads\":8,\"q_lora_rank\":256,"
                    "\"kv_lora_rank\":128,\"qk_nope_head_dim\":64,\"qk_rope_head_dim\":64,"
                    "\"v_head_dim\":64,\"vocab_size\":1024,\"n_group\":4,\"topk_group\":2,"
                    "\"unknown_key\":[1,2,{\"x\":null}]}";
    ck_config c;
    dsr1_err e;
    CHECK_EQ_INT(ck_config_parse(&c, j, strlen(j), "mini", &e), 0);
    CHECK_EQ_INT(c.first_k_dense_replace, 3);
    CHECK_EQ_INT(c.moe_layer_freq, 1);
    CHECK_EQ_INT(c.num_nextn_predict_layers, 0);
    CHECK_EQ_INT(c.n_shared_experts, 1);
    CHECK_EQ_INT(c.num_key_value_heads, 8);
    CHECK_EQ_INT(c.fp8, 0);
    CHECK_EQ_INT(c.rope.yarn, 0);
    CHECK_EQ_INT(c.norm_topk_prob, 1);
    CHECK_EQ_INT(c.max_position_embeddings, 4096);
    CHECK_NEAR(c.rope_theta, 10000, 0);
    CHECK_EQ_INT(ck_layer_is_moe(&c, 2), 0);
    CHECK_EQ_INT(ck_layer_is_moe(&c, 3), 1);
    /* No quantization_config: BF16 projections without scales. */
    ck_tensor_desc *t;
    size_t n;
    CHECK_EQ_INT(ck_expected_tensors(&c, 1, &t, &n, &e), 0);
    /* 3 + 3 dense x (9 + 3) + 1 MoE x (9 + 2 + 51) */
    CHECK_EQ_U64(n, 3 + 3 * 12 + 62);
    for (size_t i = 0; i < n; i++)
        CHECK_MSG(t[i].dtype != ST_F8_E4M3 && !t[i].is_scale, "%s is FP8/scale", t[i].name);
    free(t);

    ck_config tiny;
    CHECK_EQ_INT(sy_preset("tiny", 0, &tiny, NULL, &e), 0);
    CHECK_EQ_INT(ck_expected_tensors(&tiny, 1, &t, &n, &e), 0);
    CHECK_EQ_U64(n, 383); /* 3 + dense 20 + 2 x MoE 118 + MTP 124 */
    const ck_tensor_desc *kva = find(t, n, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
    CHECK(kva && kva->shape[0] == 192 && kva->shape[0] % 128 != 0);
    const ck_tensor_desc *ks = find(t, n, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
    CHECK(ks && ks->shape[0] == 2 && ks->shape[1] == 2);
    CHECK(find(t, n, "model.layers.3.shared_head.head.weight") != NULL);
    CHECK(find(t, n, "model.layers.0.mlp.gate_proj.weight") != NULL);
    CHECK(find(t, n, "model.layers.1.mlp.experts.15.up_proj.weight") != NULL);
    free(t);
    CHECK_EQ_INT(ck_expected_tensors(&tiny, 0, &t, &n, &e), 0);
    CHECK_EQ_U64(n, 259);
    free(t);
    /* Every class appears in tiny. */
    CHECK_EQ_INT(ck_expected_tensors(&tiny, 1, &t, &n, &e), 0);
    int seen[CK_CLASS_COUNT] = {0};
    for (size_t i = 0; i < n; i++)
        seen[t[i].cls]++;
    for (int k = 0; k < CK_CLASS_COUNT; k++)
        CHECK_MSG(seen[k] > 0, "class %s absent from tiny", ck_class_name((ck_class)k));
    free(t);
}

/* transformers >= 5 writes rope_parameters (rope_theta inside) instead of rope_scaling. */
TEST(ck_config_rope_parameters)
{
    const char *j = "{\"model_type\":\"deepseek_v3\",\"hidden_size\":256,\"intermediate_size\":512,"
                    "\"moe_intermediate_size\":256,\"num_hidden_layers\":4,\"n_routed_experts\":16,"
                    "\"num_experts_per_tok\":4,\"num_attention_heads\":8,\"q_lora_rank\":256,"
                    "\"kv_lora_rank\":128,\"qk_nope_head_dim\":64,\"qk_rope_head_dim\":64,"
                    "\"v_head_dim\":64,\"vocab_size\":1024,\"n_group\":4,\"topk_group\":2,"
                    "\"rope_parameters\":{\"rope_type\":\"yarn\",\"rope_theta\":50000.0,\"factor\":8,"
                    "\"original_max_position_embeddings\":512,\"beta_fast\":32,\"beta_slow\":1,"
                    "\"mscale\":1.0,\"mscale_all_dim\":1.0}}";
    ck_config c;
    dsr1_err e;
    CHECK_EQ_INT(ck_config_parse(&c, j, strlen(j), "v5", &e), 0);
    CHECK_EQ_INT(c.rope.yarn, 1);
    CHECK_NEAR(c.rope.factor, 8, 0);
    CHECK_NEAR(c.rope_theta, 50000, 0);
    CHECK_EQ_INT(c.rope.original_max_position_embeddings, 512);
    CHECK_NEAR(c.rope.mscale_all_dim, 1.0, 0);
}

TEST(ck_config_moe_layer_freq)
{
    ck_config c;
    ck_config_r1(&c);
    c.moe_layer_freq = 2;
    CHECK_EQ_INT(ck_layer_is_moe(&c, 3), 0);
    CHECK_EQ_INT(ck_layer_is_moe(&c, 4), 1);
    CHECK_EQ_INT(ck_layer_is_moe(&c, 1), 0);
}

TEST(ck_index_parse_sorted)
{
    const char *j = "{\"metadata\":{\"total_size\":1234},\"weight_map\":{"
                    "\"b.weight\":\"model-00002-of-000002.safetensors\","
                    "\"a.weight\":\"model-00001-of-000002.safetensors\","
                    "\"c.weight\":\"model-00001-of-000002.safetensors\"}}";
    ck_ckpt *c;
    dsr1_err e;
    CHECK_EQ_INT(ck_index_parse(&c, j, strlen(j), "idx", &e), 0);
    if (!c)
        return;
    CHECK_EQ_U64(ck_index_total_size(c), 1234);
    CHECK_EQ_U64(ck_index_count(c), 3);
    CHECK_EQ_U64(ck_file_count(c), 2);
    const char *tn, *fn;
    ck_index_at(c, 0, &tn, &fn);
    CHECK_EQ_STR(tn, "a.weight");
    CHECK_EQ_STR(fn, "model-00001-of-000002.safetensors");
    ck_index_at(c, 2, &tn, &fn);
    CHECK_EQ_STR(tn, "c.weight");
    CHECK_EQ_STR(ck_index_file_of(c, "b.weight"), "model-00002-of-000002.safetensors");
    CHECK(ck_index_file_of(c, "zz") == NULL);
    CHECK_EQ_STR(ck_file_at(c, 1), "model-00002-of-000002.safetensors");
    ck_close(c);
    /* metadata is optional; an integral float total_size is accepted. */
    const char *k = "{\"weight_map\":{}}";
    CHECK_EQ_INT(ck_index_parse(&c, k, strlen(k), "idx", &e), 0);
    CHECK_EQ_U64(ck_index_count(c), 0);
    CHECK_EQ_U64(ck_index_total_size(c), 0);
    ck_close(c);
    const char *f = "{\"metadata\":{\"total_size\":5.0},\"weight_map\":{}}";
    CHECK_EQ_INT(ck_index_parse(&c, f, strlen(f), "idx", &e), 0);
    CHECK_EQ_U64(ck_index_total_size(c), 5);
    ck_close(c);
    CHECK_EQ_INT(ck_index_file_name_ok("model.safetensors", 17), 1);
    CHECK_EQ_INT(ck_index_file_name_ok("..", 2), 0);
    CHECK_EQ_INT(ck_index_file_name_ok("a/b", 3), 0);
}

static void collect(void *ctx, const char *msg)
{
    char *buf = ctx;
    size_t n = strlen(buf);
    snprintf(buf + n, 8192 - n, "%s\n", msg);
}

/* A tiny checkpoint written by synth; then damaged in the index and in a file. */
TEST(ck_open_check_and_tensor)
{
    ck_config cfg;
    dsr1_err e;
    CHECK_EQ_INT(sy_preset("tiny", 2, &cfg, NULL, &e), 0);
    sy_plan p;
    /* A shard size that ends the first file right after the first FP8 weight (layer 0
     * q_a_proj), so its scale opens the second file. */
    CHECK_EQ_INT(sy_plan_make(&p, &cfg, 1, UINT64_MAX, &e), 0);
    uint64_t shard = 0;
    for (size_t i = 0; i < p.n; i++) {
        shard += p.t[i].nbytes;
        if (p.t[i].scale_idx >= 0)
            break;
    }
    sy_plan_free(&p);
    CHECK_EQ_INT(sy_plan_make(&p, &cfg, 1, shard, &e), 0);
    CHECK_EQ_U64(p.n, 265);
    CHECK(p.n_files > 3);
    const char *dir = test_path("ck");
    sy_opts o = {.out_dir = dir, .seed = 7};
    CHECK_EQ_INT(sy_write(&p, &o, &e), 0);
    ck_ckpt *c;
    CHECK_EQ_INT(ck_open(&c, dir, &e), 0);
    if (!c) {
        sy_plan_free(&p);
        return;
    }
    CHECK_EQ_INT(ck_cfg(c)->num_hidden_layers, 2);
    CHECK_EQ_U64(ck_index_total_size(c), p.total_bytes);
    CHECK_EQ_U64(ck_index_count(c), p.n);
    CHECK_EQ_INT(ck_index_has_mtp(c), 1);
    CHECK_EQ_INT(ck_check_index(c, 1, NULL, NULL, &e), 0);
    /* Every expected tensor resolves with the right dtype and shape; a weight and its
     * scale may sit in different files. */
    int split = 0;
    for (size_t i = 0; i < p.n; i++) {
        const st_tensor *t;
        int rc = ck_tensor(c, p.t[i].name, &p.t[i], &t, &e);
        CHECK_MSG(rc == 0, "%s: %s", p.t[i].name, e.msg);
        if (rc == 0)
            CHECK_EQ_U64(t->nbytes, p.t[i].nbytes);
        if (p.t[i].is_scale)
            split += strcmp(ck_index_file_of(c, p.t[i].name),
                            ck_index_file_of(c, p.t[p.t[i].weight_of].name)) != 0;
    }
    CHECK_MSG(split > 0, "no weight/scale pair split across files at %llu-byte shards",
              (unsigned long long)shard);
    /* Checking without MTP: each MTP tensor is reported as unexpected. */
    char buf[8192] = "";
    int np = ck_check_index(c, 0, collect, buf, &e);
    CHECK_EQ_INT(np, 124);
    CHECK_EQ_INT(e.code, CK_ERR_UNEXPECTED_TENSOR);
    CHECK_CONTAINS(e.msg, "model.layers.2.");
    CHECK_CONTAINS(buf, "unexpected tensor model.layers.2.eh_proj.weight");
    /* Wrong expectations: dtype and shape mismatches name tensor, file and both values. */
    ck_tensor_desc d = p.t[1];
    d.dtype = ST_F32;
    const st_tensor *t;
    CHECK_EQ_INT(ck_tensor(c, d.name, &d, &t, &e), DSR1_E_INVALID);
    CHECK_EQ_INT(e.code, CK_ERR_DTYPE);
    CHECK_CONTAINS(e.msg, d.name);
    CHECK_CONTAINS(e.msg, "expected F32");
    CHECK_CONTAINS(e.msg, "model-0000");
    d = p.t[0];
    d.shape[0] = 1000;
    CHECK_EQ_INT(ck_tensor(c, d.name, &d, &t, &e), DSR1_E_INVALID);
    CHECK_EQ_INT(e.code, CK_ERR_SHAPE);
    CHECK_CONTAINS(e.msg, "shape [1024, 256], expected [1000, 256]");
    CHECK_EQ_INT(ck_tensor(c, "nope.weight", NULL, &t, &e), DSR1_E_INVALID);
    CHECK_EQ_INT(e.code, CK_ERR_MISSING_TENSOR);
    ck_close(c);

    /* Drop one entry from the index: reported missing by name. */
    char ip[1200];
    snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", dir);
    json_error_t je;
    json_t *root = json_load_file(ip, 0, &je);
    CHECK(root != NULL);
    json_object_del(json_object_get(root, "weight_map"), "model.layers.1.mlp.experts.7.up_proj.weight");
    CHECK_EQ_INT(json_dump_file(root, ip, 0), 0);
    json_decref(root);
    CHECK_EQ_INT(ck_open(&c, dir, &e), 0);
    buf[0] = 0;
    CHECK_EQ_INT(ck_check_index(c, 1, collect, buf, &e), 1);
    CHECK_EQ_INT(e.code, CK_ERR_MISSING_TENSOR);
    CHECK_CONTAINS(e.msg, "missing tensor model.layers.1.mlp.experts.7.up_proj.weight");
    ck_close(c);

    /* Remove a weight file: opening it names the missing file. */
    char rm[1200];
    snprintf(rm, sizeof rm, "%s/model-00002-of-%06u.safetensors", dir, p.n_files);
    CHECK_EQ_INT(remove(rm), 0);
    CHECK_EQ_INT(ck_open(&c, dir, &e), 0);
    size_t fi = 1;
    CHECK_EQ_INT(ck_file_exists(c, fi), 0);
    CHECK_EQ_INT(ck_file_exists(c, 0), 1);
    st_file *sf;
    CHECK_EQ_INT(ck_file_open(c, fi, &sf, &e), DSR1_E_INVALID);
    CHECK_EQ_INT(e.code, CK_ERR_INDEX_FILE);
    CHECK_CONTAINS(e.msg, "does not exist");
    ck_close(c);
    sy_plan_free(&p);
}

/* The committed fixture tests/fixtures/r1-layout is exactly the real R1 layout. */
TEST(ck_r1_layout_fixture)
{
    ck_ckpt *c;
    dsr1_err e;
    int rc = ck_open(&c, "tests/fixtures/r1-layout", &e);
    CHECK_MSG(rc == 0, "%s (regenerate: dsr1-synth --preset r1 --metadata-only --force --out "
                       "tests/fixtures/r1-layout)", e.msg);
    if (rc)
        return;
    CHECK_EQ_U64(ck_index_count(c), 91991);
    CHECK_EQ_U64(ck_index_total_size(c), 688574839360ull);
    CHECK_EQ_U64(ck_file_count(c), 163);
    CHECK_EQ_STR(ck_file_at(c, 0), "model-00001-of-000163.safetensors");
    CHECK_EQ_STR(ck_file_at(c, 162), "model-00163-of-000163.safetensors");
    CHECK_EQ_INT(ck_index_has_mtp(c), 1);
    CHECK_EQ_INT(ck_check_index(c, 1, NULL, NULL, &e), 0);
    ck_config r1;
    ck_config_r1(&r1);
    const ck_config *g = ck_cfg(c);
    CHECK_EQ_INT(g->hidden_size, r1.hidden_size);
    CHECK_EQ_INT(g->n_routed_experts, r1.n_routed_experts);
    CHECK_EQ_INT(g->q_lora_rank, r1.q_lora_rank);
    CHECK_EQ_INT(g->vocab_size, r1.vocab_size);
    CHECK_NEAR(g->rope.factor, r1.rope.factor, 0);
    ck_close(c);
}
