/* pk / vf pure functions on an in-memory manifest: member-name safety, scopes per
 * node and rank, rank -> shard selection, plan expectations and the
 * manifest <-> XXH128SUMS consistency. Archive and OCI round trips, hostile archives
 * and disk-full handling are in tests/cli/test_pack.sh. */
#include "test.h"
#include "pk.h"
#include "vf.h"

#include <stdlib.h>

/* tp=2 pp=2 dp=2 on 2 nodes of 4 GPUs: 4 shards, 8 ranks; node n holds dp replica n. */
typedef struct mini {
    mf_manifest m;
    mf_shard sh[4];
    mf_rank rk[8];
} mini;

static void make_mini(mini *x)
{
    memset(x, 0, sizeof *x);
    static char *names[4] = {"model-pp00-tp01.safetensors", "model-pp00-tp00.safetensors",
                             "model-pp01-tp00.safetensors", "model-pp01-tp01.safetensors"};
    /* shards[] deliberately not in name order: scopes must sort by name */
    static const uint32_t pp[4] = {0, 0, 1, 1}, tp[4] = {1, 0, 0, 1};
    for (int k = 0; k < 4; k++) {
        x->sh[k].file = names[k];
        x->sh[k].pp_stage = pp[k];
        x->sh[k].tp_rank = tp[k];
        x->sh[k].bytes = 1000 + (uint64_t)k;
        x->sh[k].xxh3_128 = hx_buf(names[k], strlen(names[k]));
    }
    for (uint32_t r = 0; r < 8; r++) {
        uint32_t t = r % 2, p = (r / 2) % 2, d = r / 4;
        x->rk[r] = (mf_rank){r, r / 4, r % 4, d, p, t, 0};
        for (uint32_t k = 0; k < 4; k++)
            if (pp[k] == p && tp[k] == t)
                x->rk[r].shard = k;
    }
    x->m.version = 1;
    x->m.plan = (mf_plan){2, 2, 2, 2, 8, 2, 4, "fp8", 0};
    x->m.n_shards = 4;
    x->m.shards = x->sh;
    x->m.n_ranks = 8;
    x->m.ranks = x->rk;
}

TEST(pk_member_names)
{
    CHECK_EQ_INT(pk_name_ok("model-pp00-tp00.safetensors"), 0);
    CHECK_EQ_INT(pk_name_ok(".dsr1-pack.json"), 0);
    CHECK_EQ_INT(pk_name_ok("XXH128SUMS"), 0);
    const char *bad[] = {"", ".", "..", "../x", "/etc/passwd", "a/b", "x/", "tab\tname", "nl\nname", "del\x7f"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(pk_name_ok(bad[i]) != 0, "\"%s\" accepted", bad[i]);
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    CHECK(pk_name_ok(longname) != 0);
    pk_per p;
    CHECK_EQ_INT(pk_per_parse("node", &p), 0);
    CHECK_EQ_INT(p, PK_PER_NODE);
    CHECK_EQ_STR(pk_per_name(PK_PER_RANK), "rank");
    CHECK(pk_per_parse("pod", &p) != 0);
}

TEST(pk_scopes_per_node_and_rank)
{
    mini x;
    make_mini(&x);
    pk_scope *s = NULL;
    size_t n = 0;
    dsr1_err e;
    CHECK_EQ_INT(pk_scopes(&x.m, PK_PER_ALL, &s, &n, &e), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(s[0].name, "all");
    CHECK_EQ_INT(s[0].n_shards, 4);
    /* sorted by file name: tp00 (index 1) before tp01 (index 0) */
    CHECK_EQ_INT(s[0].shards[0], 1);
    CHECK_EQ_INT(s[0].shards[1], 0);
    pk_scopes_free(s, n);

    CHECK_EQ_INT(pk_scopes(&x.m, PK_PER_NODE, &s, &n, &e), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_STR(s[1].name, "node-01");
    CHECK_EQ_INT(s[1].n_shards, 4); /* each node is a whole dp replica */
    pk_scopes_free(s, n);

    CHECK_EQ_INT(pk_scopes(&x.m, PK_PER_RANK, &s, &n, &e), 0);
    CHECK_EQ_INT(n, 8);
    CHECK_EQ_STR(s[5].name, "rank-05");
    CHECK_EQ_INT(s[5].n_shards, 1);
    CHECK_EQ_STR(x.m.shards[s[5].shards[0]].file, "model-pp00-tp01.safetensors");
    pk_scopes_free(s, n);
    pk_scopes_free(NULL, 0);
}

TEST(vf_shards_of_ranks_dedups)
{
    mini x;
    make_mini(&x);
    size_t out[4];
    dsr1_err e;
    uint32_t r1[] = {1, 5, 7, 3, 1}; /* 1 and 5 share a shard (dp replicas) */
    CHECK_EQ_INT(vf_shards_of_ranks(&x.m, r1, 5, out, &e), 2);
    CHECK_EQ_INT(out[0], 0);
    CHECK_EQ_INT(out[1], 3);
    uint32_t all[] = {0, 1, 2, 3, 4, 5, 6, 7};
    CHECK_EQ_INT(vf_shards_of_ranks(&x.m, all, 8, out, &e), 4);
    uint32_t bad[] = {8};
    CHECK_EQ_INT(vf_shards_of_ranks(&x.m, bad, 1, out, &e), -1);
    CHECK_CONTAINS(e.msg, "rank 8 is not in this deployment");
}

TEST(vf_expect_plan)
{
    mini x;
    make_mini(&x);
    vf_expect ex;
    vf_expect_init(&ex);
    dsr1_err e;
    char msg[256];
    CHECK_EQ_INT(vf_expect_check(&ex, &x.m.plan, msg, sizeof msg), 0);
    CHECK_EQ_INT(vf_expect_set(&ex, "tp", "2", &e), 0);
    CHECK_EQ_INT(vf_expect_set(&ex, "world", "8", &e), 0);
    CHECK_EQ_INT(vf_expect_set(&ex, "dtype", "fp8", &e), 0);
    CHECK_EQ_INT(vf_expect_check(&ex, &x.m.plan, msg, sizeof msg), 0);
    CHECK_EQ_INT(vf_expect_set(&ex, "pp", "4", &e), 0);
    CHECK_EQ_INT(vf_expect_set(&ex, "mtp", "1", &e), 0);
    CHECK_EQ_INT(vf_expect_check(&ex, &x.m.plan, msg, sizeof msg), 1);
    CHECK_CONTAINS(msg, "pp is 2, expected 4");
    CHECK_CONTAINS(msg, "mtp is 0, expected 1");
    CHECK_EQ_INT(vf_expect_set(&ex, "tp", "0", &e), DSR1_E_USAGE);
    CHECK_EQ_INT(vf_expect_set(&ex, "tp", "-1", &e), DSR1_E_USAGE);
    CHECK_EQ_INT(vf_expect_set(&ex, "mtp", "2", &e), DSR1_E_USAGE);
    CHECK_EQ_INT(vf_expect_set(&ex, "dtype", "int4", &e), DSR1_E_USAGE);
    CHECK_EQ_INT(vf_expect_set(&ex, "shards", "4", &e), DSR1_E_USAGE);
    CHECK_CONTAINS(e.msg, "unknown plan key");
}

TEST(vf_sums_consistency)
{
    mini x;
    make_mini(&x);
    hx128 md = hx_buf("manifest", 8);
    char *files[5] = {"manifest.json", "model-pp00-tp00.safetensors", "model-pp00-tp01.safetensors",
                      "model-pp01-tp00.safetensors", "model-pp01-tp01.safetensors"};
    hx128 dig[5] = {md, x.sh[1].xxh3_128, x.sh[0].xxh3_128, x.sh[2].xxh3_128, x.sh[3].xxh3_128};
    char msg[512];
    CHECK_EQ_INT(vf_sums_check(&x.m, md, files, dig, 5, msg, sizeof msg), 0);
    hx128 edited = md;
    edited.lo ^= 1;
    CHECK_EQ_INT(vf_sums_check(&x.m, edited, files, dig, 5, msg, sizeof msg), 1);
    CHECK_CONTAINS(msg, "manifest was edited");
    dig[3].hi ^= 1;
    CHECK_EQ_INT(vf_sums_check(&x.m, md, files, dig, 5, msg, sizeof msg), 1);
    CHECK_CONTAINS(msg, "model-pp01-tp00.safetensors");
    dig[3].hi ^= 1;
    CHECK_EQ_INT(vf_sums_check(&x.m, md, files, dig, 4, msg, sizeof msg), 1);
    CHECK_CONTAINS(msg, "no line for model-pp01-tp01.safetensors");
    files[4] = "model-pp00-tp00.safetensors";
    CHECK(vf_sums_check(&x.m, md, files, dig, 5, msg, sizeof msg) >= 1);
    files[4] = "other.safetensors";
    CHECK(vf_sums_check(&x.m, md, files, dig, 5, msg, sizeof msg) >= 1);
}
