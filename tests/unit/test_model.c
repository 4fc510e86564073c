/* Runtime pieces around the model: YaRN constants against the values transformers
 * recorded in the goldens, the sampler, the .npy writer, backend defaults. The model
 * forward itself is checked end to end against the goldens in
 * tests/cli/test_serve_golden.sh. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rope.h"
#include "sampler.h"
#include "test.h"
#include "npy.h"

/* tests/golden/ref/goldens.json holds transformers' inv_freq and softmax scale for the
 * golden config (R1's YaRN with qk_rope_head_dim 64, qk_head_dim 128). */
TEST(rt_rope_matches_transformers_tables)
{
    json_error_t je;
    json_t *g = json_load_file("tests/golden/ref/goldens.json", 0, &je);
    CHECK_MSG(g != NULL, "cannot read tests/golden/ref/goldens.json: %s (scripts/gen_golden.py)", je.text);
    if (!g)
        return;
    k_rope_params p = {64, 10000.0, 1, 40.0, 4096.0, 32.0, 1.0, 1.0, 1.0};
    k_rope r;
    CHECK_EQ_INT(k_rope_init(&r, &p), 0);
    json_t *f = json_object_get(g, "rope_inv_freq");
    CHECK_EQ_INT(json_array_size(f), 32);
    for (size_t i = 0; i < json_array_size(f) && i < 32; i++) {
        double want = json_real_value(json_array_get(f, i));
        CHECK_NEAR(r.inv_freq[i], want, want * 1e-6);
    }
    CHECK_NEAR(r.attn_factor, json_real_value(json_object_get(g, "rope_attention_scaling")), 1e-7);
    CHECK_NEAR(k_rope_softmax_scale(&p, 128), json_real_value(json_object_get(g, "softmax_scale")), 1e-9);
    json_decref(g);
}

TEST(rt_sampler_greedy_and_filters)
{
    float l[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f, 0.0f};
    rt_sampler s;
    rt_sampling greedy = {0, 1, 0, 0};
    rt_sampler_init(&s, &greedy);
    CHECK_EQ_INT(rt_sample(&s, l, 6), 1); /* ties: lowest id */
    /* top-k 1 is greedy at any temperature */
    rt_sampling k1 = {5.0f, 1.0f, 1, 42};
    rt_sampler_init(&s, &k1);
    for (int i = 0; i < 20; i++)
        CHECK_EQ_INT(rt_sample(&s, l, 6), 1);
    /* top-p below the top token's mass keeps only it */
    rt_sampling p1 = {1.0f, 0.05f, 0, 7};
    rt_sampler_init(&s, &p1);
    for (int i = 0; i < 20; i++)
        CHECK_EQ_INT(rt_sample(&s, l, 6), 1);
    /* top-k 3: only ids {1, 3, 4}; empirical frequencies follow the softmax */
    rt_sampling k3 = {1.0f, 1.0f, 3, 123};
    rt_sampler_init(&s, &k3);
    int cnt[6] = {0};
    for (int i = 0; i < 20000; i++)
        cnt[rt_sample(&s, l, 6)]++;
    CHECK_EQ_INT(cnt[0] + cnt[2] + cnt[5], 0);
    double z = exp(2.0) * 2 + exp(1.9);
    CHECK_NEAR(cnt[4] / 20000.0, exp(1.9) / z, 0.015);
    CHECK_NEAR(cnt[1] / 20000.0, exp(2.0) / z, 0.015);
    /* same seed, same draws */
    rt_sampling t = {0.8f, 0.9f, 0, 99};
    rt_sampler a, b;
    rt_sampler_init(&a, &t);
    rt_sampler_init(&b, &t);
    for (int i = 0; i < 50; i++)
        CHECK_EQ_INT(rt_sample(&a, l, 6), rt_sample(&b, l, 6));
}

TEST(rt_npy_writer_format)
{
    float d[6] = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
    dsr1_err err;
    const char *p = test_path("x.npy");
    rt_npy_out o;
    CHECK_EQ_INT(rt_npy_out_open(&o, p, &err), 0);
    CHECK_EQ_INT(rt_npy_out_commit(&o, d, 2, 3, &err), 0);
    FILE *f = fopen(p, "rb");
    unsigned char buf[256];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    CHECK_EQ_INT(n, 128 + 24); /* header padded to 64 bytes, then 6 floats */
    CHECK(memcmp(buf, "\x93NUMPY\x01\x00", 8) == 0);
    size_t hl = buf[8] | (size_t)buf[9] << 8;
    CHECK_EQ_INT((10 + hl) % 64, 0);
    CHECK(buf[10 + hl - 1] == '\n');
    char hdr[200] = {0};
    memcpy(hdr, buf + 10, hl < sizeof hdr - 1 ? hl : sizeof hdr - 1);
    CHECK_CONTAINS(hdr, "'descr': '<f4'");
    CHECK_CONTAINS(hdr, "'shape': (2, 3)");
    CHECK(memcmp(buf + 10 + hl, d, sizeof d) == 0);
    CHECK(rt_npy_out_open(&o, test_path("nodir/x.npy"), &err) != 0);
    CHECK_CONTAINS(err.msg, "nodir/x.npy");
}

TEST(rt_generate_defaults_and_weak_cuda_stub)
{
    rt_generate_args a;
    rt_generate_args_init(&a);
    CHECK(a.sampling.temperature == 0.0f && a.sampling.top_p == 1.0f && a.attn == RT_ATTN_AUTO);
    CHECK_EQ_INT(a.rank, -1);
    rt_generate_result r;
    memset(&r, 0, sizeof r);
    dsr1_err err;
    int32_t ids[2] = {0, 1};
    a.prompt = ids;
    a.n_prompt = 2;
    CHECK_EQ_INT(rt_cpu_generate(&(rt_generate_args){0}, &r, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "empty prompt");
    rt_generate_result_free(&r);
    rt_generate_result_free(NULL);
    /* the unit-test runner links libdsr1rt.a alone: the weak CUDA stub answers */
    CHECK_EQ_INT(rt_cuda_generate(&a, &r, &err), DSR1_E_INTERNAL);
    CHECK_EQ_INT(err.code, RT_ERR_NO_CUDA);
    CHECK_CONTAINS(err.msg, "built without CUDA support");
}
