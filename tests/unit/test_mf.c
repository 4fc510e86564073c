/* mf: manifest round trip, canonical bytes, both identities, validation errors and
 * XXH128SUMS against the stock xxh128sum. */
#include "test.h"
#include "mf.h"

#include <stdlib.h>
#include <unistd.h>

static const char *cfg_text = "{\"architectures\":[\"DeepseekV3ForCausalLM\"],\"hidden_size\":256}";

/* A small consistent manifest: tp=2 pp=1 dp=2, two shards of two tensors. */
static mf_manifest *build(void)
{
    mf_manifest *m = calloc(1, sizeof *m);
    ck_config_r1(&m->config);
    m->version = MF_VERSION;
    m->architecture = strdup("DeepseekV3ForCausalLM");
    m->config_json = ck_config_to_json(&m->config);
    m->config_xxh3_128 = hx_buf(cfg_text, strlen(cfg_text));
    m->tool = strdup("dsr1-shard test");
    m->n_sources = 1;
    m->sources = calloc(1, sizeof *m->sources);
    m->sources[0].file = strdup("model-00001-of-000001.safetensors");
    m->sources[0].bytes = 123456;
    m->plan = (mf_plan){2, 2, 1, 2, 4, 1, 4, "fp8", 0};
    m->n_shards = 2;
    m->shards = calloc(2, sizeof *m->shards);
    for (uint32_t s = 0; s < 2; s++) {
        mf_shard *sh = &m->shards[s];
        char name[64];
        snprintf(name, sizeof name, "model-pp00-tp%02u-of-pp01-tp02.safetensors", s);
        sh->file = strdup(name);
        sh->bytes = 4096 + 1024 + 64;
        sh->xxh3_128 = hx_buf(name, strlen(name));
        sh->data_start = 4096;
        sh->header_xxh3_128 = hx_buf("h", 1);
        sh->pp_stage = 0;
        sh->tp_rank = s;
        sh->layer_first = 0;
        sh->layer_last = 2;
        sh->n_tensors = 2;
        sh->tensors = calloc(2, sizeof *sh->tensors);
        mf_tensor *t = &sh->tensors[0];
        t->name = strdup("model.layers.0.self_attn.q_b_proj.weight");
        t->dtype = ST_F8_E4M3;
        t->ndim = 2;
        t->shape[0] = 8;
        t->shape[1] = 128;
        t->offset = 4096;
        t->bytes = 1024;
        t->xxh3_128 = hx_buf("a", 1);
        t->source.name = strdup(t->name);
        t->source.dim = 0;
        t->source.start = 8 * s;
        t->source.end = 8 * s + 8;
        t->transform = strdup("copy");
        t->quant_rel_rms = 0;
        t = &sh->tensors[1];
        t->name = strdup("model.norm.weight");
        t->dtype = ST_BF16;
        t->ndim = 1;
        t->shape[0] = 32;
        t->offset = 4096 + 1024;
        t->bytes = 64;
        t->xxh3_128 = hx_buf("b", 1);
        t->source.name = strdup(t->name);
        t->source.dim = -1;
        t->source.start = 0;
        t->source.end = 32;
        t->transform = strdup("copy");
        t->quant_rel_rms = 1.25e-3;
    }
    m->n_ranks = 4;
    m->ranks = calloc(4, sizeof *m->ranks);
    for (uint32_t r = 0; r < 4; r++)
        m->ranks[r] = (mf_rank){r, 0, r, r / 2, 0, r % 2, r % 2};
    mf_compute_id(m);
    return m;
}

TEST(mf_round_trip_is_canonical)
{
    mf_manifest *m = build();
    char *a = mf_to_json(m);
    CHECK(a);
    mf_manifest *p = NULL;
    dsr1_err e;
    CHECK_EQ_INT(mf_parse(&p, a, strlen(a), "t", &e), 0);
    if (!p) {
        printf("  %s\n", e.msg);
        free(a);
        mf_free(m);
        return;
    }
    char *b = mf_to_json(p);
    CHECK_EQ_STR(a, b);
    CHECK(hx_eq(p->manifest_id, m->manifest_id));
    CHECK_EQ_INT(p->plan.world_size, 4);
    CHECK_EQ_INT(p->shards[1].tensors[0].source.start, 8);
    CHECK_EQ_INT(p->shards[0].tensors[1].source.dim, -1);
    CHECK_NEAR(p->shards[0].tensors[1].quant_rel_rms, 1.25e-3, 0);
    CHECK_EQ_INT(p->config.hidden_size, 7168);
    CHECK(mf_shard_of_rank(p, 3) == &p->shards[1]);
    CHECK(mf_shard_of_rank(p, 4) == NULL);
    CHECK(mf_find_tensor(&p->shards[1], "model.norm.weight") == &p->shards[1].tensors[1]);
    CHECK(mf_find_tensor(&p->shards[1], "nope") == NULL);
    /* key order is fixed: format first, ranks last */
    CHECK(strncmp(a, "{\"format\":\"dsr1-manifest\",\"version\":1,\"manifest_id\":", 52) == 0);
    free(a);
    free(b);
    mf_free(p);
    mf_free(m);
}

TEST(mf_identity_changes_with_plan_not_shards)
{
    mf_manifest *m = build();
    hx128 id = m->manifest_id;
    m->shards[0].xxh3_128.lo ^= 1; /* shard bytes are not part of the id */
    CHECK(hx_eq(mf_compute_id(m), id));
    m->plan.ep = 1;
    CHECK(!hx_eq(mf_compute_id(m), id));
    mf_free(m);
}

TEST(mf_save_digest_and_sums_match_xxh128sum)
{
    mf_manifest *m = build();
    const char *mp = test_path("manifest.json");
    hx128 d;
    dsr1_err e;
    CHECK_EQ_INT(mf_save(m, mp, &d, &e), 0);
    hx128 f;
    CHECK_EQ_INT(hx_file(mp, &f, &e), 0);
    CHECK(hx_eq(d, f));
    mf_manifest *l = NULL;
    CHECK_EQ_INT(mf_load(&l, mp, &e), 0);
    mf_free(l);
    const char *files[] = {"manifest.json", "b.bin", "a.bin"};
    test_write_file(test_path("a.bin"), "aaaa", 4);
    test_write_file(test_path("b.bin"), "", 0);
    hx128 dg[3] = {d, hx_buf("", 0), hx_buf("aaaa", 4)};
    CHECK_EQ_INT(mf_sums_write(test_path("XXH128SUMS"), files, dg, 3, &e), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd '%s' && xxh128sum --quiet -c XXH128SUMS >/dev/null 2>&1", test_tmpdir());
    CHECK_EQ_INT(system(cmd), 0);
    char **fn;
    hx128 *rd;
    size_t n;
    CHECK_EQ_INT(mf_sums_read(test_path("XXH128SUMS"), &fn, &rd, &n, &e), 0);
    CHECK_EQ_INT(n, 3);
    if (n == 3) {
        CHECK_EQ_STR(fn[0], "a.bin"); /* sorted by name */
        CHECK_EQ_STR(fn[2], "manifest.json");
        CHECK(hx_eq(rd[2], d));
    }
    for (size_t i = 0; i < n; i++)
        free(fn[i]);
    free(fn);
    free(rd);
    const char *bad[] = {"../x"};
    CHECK(mf_sums_write(test_path("S2"), bad, dg, 1, &e) != 0);
    mf_free(m);
}

/* Parse a mutated manifest: replace the first `from` with `to` and expect code. */
static void expect_bad(const char *from, const char *to, int code, const char *msg_part)
{
    mf_manifest *m = build();
    char *a = mf_to_json(m);
    char *at = strstr(a, from);
    CHECK_MSG(at != NULL, "fixture lacks %s", from);
    if (!at) {
        free(a);
        mf_free(m);
        return;
    }
    size_t n = strlen(a) - strlen(from) + strlen(to) + 1;
    char *b = malloc(n);
    snprintf(b, n, "%.*s%s%s", (int)(at - a), a, to, at + strlen(from));
    mf_manifest *p = NULL;
    dsr1_err e;
    int rc = mf_parse(&p, b, strlen(b), "m.json", &e);
    CHECK_MSG(rc != 0 && p == NULL, "accepted %s -> %s", from, to);
    if (rc) {
        CHECK_EQ_INT(e.code, code);
        CHECK_CONTAINS(e.msg, msg_part);
    }
    mf_free(p);
    free(a);
    free(b);
    mf_free(m);
}

TEST(mf_rejects_bad_manifests)
{
    expect_bad("\"format\":\"dsr1-manifest\"", "\"format\":\"other\"", MF_ERR_FORMAT, "format");
    expect_bad("\"version\":1", "\"version\":2", MF_ERR_VERSION, "version 2");
    expect_bad("\"tp\":2", "\"tp\":\"2\"", MF_ERR_FIELD, "plan.tp");
    expect_bad("\"ep\":2", "\"ep\":1", MF_ERR_VALUE, "was edited");
    expect_bad("\"file\":\"model-pp00-tp01", "\"file\":\"../model-pp00-tp01", MF_ERR_VALUE, "plain file name");
    expect_bad("\"offset\":5120", "\"offset\":5000", MF_ERR_VALUE, "overlaps");
    expect_bad("\"bytes\":64", "\"bytes\":65", MF_ERR_VALUE, "shape");
    expect_bad("\"local_rank\":3", "\"local_rank\":2", MF_ERR_VALUE, "ranks[3]");
    expect_bad("\"shard\":\"model-pp00-tp01-of-pp01-tp02.safetensors\"}]",
               "\"shard\":\"model-pp00-tp00-of-pp01-tp02.safetensors\"}]", MF_ERR_VALUE, "ranks[3].shard");
    expect_bad("\"xxh3_128\":\"", "\"xxh3_128\":\"zz", MF_ERR_FIELD, "32 hex");
    expect_bad("{\"format\"", "[{\"format\"", MF_ERR_JSON, "JSON");
    expect_bad("\"dim\":null", "\"dim\":-1", MF_ERR_FIELD, "dim");
}

TEST(mf_shard_entry_round_trip)
{
    mf_manifest *m = build();
    char *j = mf_shard_to_json(&m->shards[1]);
    mf_shard s;
    dsr1_err e;
    CHECK_EQ_INT(mf_shard_parse(&s, j, strlen(j), &m->plan, "journal", &e), 0);
    char *k = mf_shard_to_json(&s);
    CHECK_EQ_STR(j, k);
    mf_shard_clear(&s);
    mf_shard_clear(&s); /* cleared twice is fine */
    free(j);
    free(k);
    mf_free(m);
    mf_free(NULL);
}
