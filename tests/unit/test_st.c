/* st: writer -> reader round trips, determinism, alignment, atomicity. */
#include "test.h"
#include "st.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Deterministic content of byte `k` of tensor `i` (shared with test_st_interop.c). */
uint8_t stt_byte(uint64_t seed, size_t i, uint64_t k);
uint8_t stt_byte(uint64_t seed, size_t i, uint64_t k)
{
    uint64_t z = seed * 0x9E3779B97F4A7C15ULL + i * 0xBF58476D1CE4E5B9ULL + k * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    z *= 0xD6E8FEB86659FD93ULL;
    return (uint8_t)(z >> 40);
}

/* Write a whole file: every tensor in one or more chunks of at most `chunk` bytes. */
int stt_write(const char *path, const st_spec *specs, size_t n, const char *const *meta, size_t nm,
              const st_write_opts *opts, uint64_t seed, dsr1_err *err);
int stt_write(const char *path, const st_spec *specs, size_t n, const char *const *meta, size_t nm,
              const st_write_opts *opts, uint64_t seed, dsr1_err *err)
{
    st_writer *w;
    int rc = st_writer_open(&w, path, specs, n, meta, nm, opts, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n && !rc; i++) {
        uint64_t nb = st_writer_tensor_bytes(w, i);
        uint8_t buf[1000];
        for (uint64_t off = 0; off < nb && !rc; off += sizeof buf) {
            size_t len = nb - off < sizeof buf ? (size_t)(nb - off) : sizeof buf;
            for (size_t k = 0; k < len; k++)
                buf[k] = stt_byte(seed, i, off + k);
            rc = st_writer_write(w, i, off, buf, len, err);
        }
    }
    if (!rc)
        rc = st_writer_commit(w, err);
    st_writer_free(w);
    return rc;
}

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static uint8_t *read_all(const char *p, size_t *len)
{
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    *len = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

/* Every dtype, a 0-d tensor, zero-size tensors, odd sizes. */
static const st_spec mixed[] = {
    {"w.f32", ST_F32, 2, {3, 5}},
    {"w.bf16", ST_BF16, 3, {2, 3, 7}},
    {"scalar.f64", ST_F64, 0, {0}},
    {"empty.i32", ST_I32, 2, {0, 4}},
    {"bool", ST_BOOL, 1, {9}},
    {"u8", ST_U8, 1, {13}},
    {"i8", ST_I8, 2, {1, 1}},
    {"fp8.e4m3", ST_F8_E4M3, 2, {4, 33}},
    {"fp8.e5m2", ST_F8_E5M2, 1, {3}},
    {"i16", ST_I16, 1, {5}},
    {"u16", ST_U16, 1, {6}},
    {"f16", ST_F16, 4, {1, 2, 1, 3}},
    {"i32", ST_I32, 1, {7}},
    {"u32", ST_U32, 1, {2}},
    {"i64", ST_I64, 1, {3}},
    {"u64", ST_U64, 8, {1, 1, 1, 1, 1, 1, 1, 2}},
    {"empty.last", ST_F16, 1, {0}},
    {"name with \"quote\" \\ and \xc3\xa9", ST_U8, 1, {2}},
};
#define NMIXED (sizeof mixed / sizeof mixed[0])
static const char *const mixed_meta[] = {"format", "pt", "note", "caf\xc3\xa9 \"q\"\n\t", "", "empty key"};

static void check_file_matches(const st_file *f, const st_spec *specs, size_t n, uint64_t seed)
{
    CHECK_EQ_U64(st_count(f), n);
    uint64_t prev_end = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        CHECK(t->begin >= prev_end || t->nbytes == 0);
        prev_end = t->end;
    }
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_find(f, specs[i].name);
        CHECK_MSG(t != NULL, "tensor %s not found", specs[i].name);
        if (!t)
            continue;
        CHECK_EQ_STR(t->name, specs[i].name);
        CHECK_EQ_INT(t->dtype, specs[i].dtype);
        CHECK_EQ_INT(t->ndim, specs[i].ndim);
        uint64_t ne = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK_EQ_U64(t->shape[d], specs[i].shape[d]);
            ne *= specs[i].shape[d];
        }
        CHECK_EQ_U64(t->nelem, ne);
        CHECK_EQ_U64(t->nbytes, ne * st_dtype_size(t->dtype));
        CHECK_EQ_U64(t->file_offset, st_data_start(f) + t->begin);
        CHECK(t->data == (const uint8_t *)st_base(f) + t->file_offset);
        const uint8_t *p = t->data;
        size_t bad = 0;
        for (uint64_t k = 0; k < t->nbytes; k++)
            bad += p[k] != stt_byte(seed, i, k);
        CHECK_MSG(bad == 0, "tensor %s: %zu bytes differ", t->name, bad);
    }
}

TEST(st_dtype_table)
{
    static const size_t sizes[ST_DTYPE_COUNT] = {1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
    for (int d = 0; d < ST_DTYPE_COUNT; d++) {
        st_dtype back = ST_DTYPE_COUNT;
        CHECK_EQ_INT(st_dtype_parse(st_dtype_name((st_dtype)d), &back), 0);
        CHECK_EQ_INT(back, d);
        CHECK_EQ_U64(st_dtype_size((st_dtype)d), sizes[d]);
    }
    CHECK_EQ_STR(st_dtype_name(ST_F8_E4M3), "F8_E4M3");
    CHECK_EQ_STR(st_dtype_name(ST_BF16), "BF16");
    st_dtype x;
    CHECK_EQ_INT(st_dtype_parse("f32", &x), -1);
    CHECK_EQ_INT(st_dtype_parse("F4", &x), -1);
    CHECK_EQ_INT(st_dtype_parse("", &x), -1);
}

TEST(st_roundtrip_all_dtypes)
{
    dsr1_err err;
    dsr1_err_clear(&err);
    const char *p = test_path("mixed.safetensors");
    int rc = stt_write(p, mixed, NMIXED, mixed_meta, 3, NULL, 7, &err);
    CHECK_MSG(rc == 0, "write: %s", err.msg);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    CHECK(!file_exists(tmp));
    st_file *f = NULL;
    rc = st_open(&f, p, &err);
    CHECK_MSG(rc == 0, "open: %s", err.msg);
    if (!f)
        return;
    CHECK_EQ_U64(st_data_start(f) % 8, 0);
    CHECK_EQ_U64(st_data_start(f), 8 + st_header_len(f));
    CHECK_EQ_STR(st_path(f), p);
    check_file_matches(f, mixed, NMIXED, 7);
    CHECK_EQ_U64(st_meta_count(f), 3);
    const char *k, *v;
    CHECK_EQ_INT(st_meta_at(f, 1, &k, &v), 0);
    CHECK_EQ_STR(k, "note");
    CHECK_EQ_STR(v, "caf\xc3\xa9 \"q\"\n\t");
    CHECK_EQ_STR(st_meta_get(f, "format"), "pt");
    CHECK_EQ_STR(st_meta_get(f, ""), "empty key");
    CHECK(st_meta_get(f, "missing") == NULL);
    CHECK_EQ_INT(st_meta_at(f, 3, &k, &v), -1);
    CHECK(st_find(f, "nope") == NULL);
    CHECK(st_find(f, "") == NULL);
    CHECK(st_get(f, NMIXED) == NULL);
    /* Data order is declaration order for the writer. */
    CHECK_EQ_STR(st_get(f, 0)->name, "w.f32");
    CHECK_EQ_U64(st_get(f, 0)->begin, 0);
    st_close(f);
    st_close(NULL);
}

TEST(st_writer_header_exact)
{
    /* The header layout is part of the determinism contract: compact JSON,
     * metadata first, tensors in data order, space padding to the alignment. */
    st_spec s[2] = {{"a", ST_F32, 2, {2, 3}}, {"b", ST_BF16, 0, {0}}};
    const char *meta[] = {"k", "v"};
    st_writer *w;
    dsr1_err err;
    CHECK_EQ_INT(st_writer_open(&w, test_path("h.safetensors"), s, 2, meta, 1, NULL, &err), 0);
    size_t len;
    const char *h = st_writer_header(w, &len);
    const char *json = "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                       "\"data_offsets\":[0,24]},\"b\":{\"dtype\":\"BF16\",\"shape\":[],"
                       "\"data_offsets\":[24,26]}}";
    size_t jl = strlen(json), padded = (8 + jl + 7) / 8 * 8;
    CHECK_EQ_U64(len, padded);
    CHECK_EQ_U64(st_writer_data_start(w), padded);
    CHECK(memcmp(h + 8, json, jl) == 0);
    for (size_t i = 8 + jl; i < len; i++)
        CHECK_EQ_INT(h[i], ' ');
    uint64_t n = 0;
    for (int b = 7; b >= 0; b--)
        n = (n << 8) | (uint8_t)h[b];
    CHECK_EQ_U64(n, padded - 8);
    CHECK_EQ_U64(st_writer_tensor_offset(w, 1), padded + 24);
    CHECK_EQ_U64(st_writer_tensor_bytes(w, 1), 2);
    CHECK_EQ_U64(st_writer_file_size(w), padded + 26);
    st_writer_free(w);
    CHECK(!file_exists(test_path("h.safetensors")));
}

TEST(st_writer_deterministic)
{
    dsr1_err err;
    const char *a = test_path("a.safetensors"), *b = test_path("b.safetensors");
    CHECK_EQ_INT(stt_write(a, mixed, NMIXED, mixed_meta, 3, NULL, 11, &err), 0);
    CHECK_EQ_INT(stt_write(b, mixed, NMIXED, mixed_meta, 3, NULL, 11, &err), 0);
    size_t la = 0, lb = 0;
    uint8_t *x = read_all(a, &la), *y = read_all(b, &lb);
    CHECK(x && y);
    CHECK_EQ_U64(la, lb);
    CHECK(x && y && la == lb && memcmp(x, y, la) == 0);
    free(x);
    free(y);
}

TEST(st_writer_align_4096)
{
    dsr1_err err;
    st_write_opts o = {.data_align = 4096, .check_align_rule = 0};
    const char *p = test_path("a4096.safetensors");
    CHECK_EQ_INT(stt_write(p, mixed, NMIXED, mixed_meta, 2, &o, 3, &err), 0);
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    CHECK_EQ_U64(st_data_start(f), 4096);
    const uint8_t *hdr = (const uint8_t *)st_base(f) + 8;
    CHECK_EQ_INT(hdr[st_header_len(f) - 1], ' ');
    check_file_matches(f, mixed, NMIXED, 3);
    st_close(f);
    /* A header larger than one alignment unit rounds up to the next one. */
    enum { N = 200 };
    st_spec many[N];
    char names[N][64];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.gate_proj.weight", i);
        many[i] = (st_spec){names[i], ST_BF16, 2, {16, 8}};
    }
    p = test_path("many.safetensors");
    CHECK_EQ_INT(stt_write(p, many, N, NULL, 0, &o, 4, &err), 0);
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    CHECK(st_data_start(f) > 4096);
    CHECK_EQ_U64(st_data_start(f) % 4096, 0);
    check_file_matches(f, many, N, 4);
    st_close(f);
    /* data_align 1: no padding at all. */
    st_write_opts one = {.data_align = 1, .check_align_rule = 0};
    st_writer *w;
    CHECK_EQ_INT(st_writer_open(&w, test_path("one.safetensors"), many, 1, NULL, 0, &one, &err), 0);
    size_t len;
    const char *h = st_writer_header(w, &len);
    CHECK_EQ_INT(h[len - 1], '}');
    st_writer_free(w);
    st_write_opts bad = {.data_align = 3000, .check_align_rule = 0};
    CHECK_EQ_INT(st_writer_open(&w, test_path("bad.safetensors"), many, 1, NULL, 0, &bad, &err),
                 DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_WRITER_STATE);
    CHECK_CONTAINS(err.msg, "power of two");
}

TEST(st_find_many)
{
    enum { N = 1500 };
    static st_spec s[N];
    static char names[N][32];
    for (int i = 0; i < N; i++) {
        /* Names not in sorted order, to exercise the name index. */
        snprintf(names[i], sizeof names[i], "t%u.%d", (unsigned)((i * 7919) % N), i);
        s[i] = (st_spec){names[i], (st_dtype)(i % ST_DTYPE_COUNT), 1, {(uint64_t)(i % 5)}};
    }
    dsr1_err err;
    const char *p = test_path("find.safetensors");
    CHECK_EQ_INT(stt_write(p, s, N, NULL, 0, NULL, 5, &err), 0);
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    check_file_matches(f, s, N, 5);
    CHECK(st_find(f, "t0") == NULL);
    CHECK(st_find(f, "zzz") == NULL);
    CHECK(st_find(f, "a") == NULL);
    st_close(f);
}

TEST(st_align_rule_check)
{
    /* 12-byte F32 then a 512-byte BF16: the BF16 must be 256-aligned but lands at 12. */
    st_spec s[4] = {
        {"small.f32", ST_F32, 1, {3}},
        {"big.bf16", ST_BF16, 2, {16, 16}},
        {"odd.u8", ST_U8, 1, {3}},
        {"scale.f32", ST_F32, 1, {5}},
    };
    st_write_opts o = {.data_align = 4096, .check_align_rule = 1};
    st_writer *w = NULL;
    dsr1_err err;
    dsr1_err_clear(&err);
    const char *p = test_path("rule.safetensors");
    CHECK_EQ_INT(st_writer_open(&w, p, s, 4, NULL, 0, &o, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_WRITER_STATE);
    CHECK_CONTAINS(err.msg, "big.bf16");
    CHECK_CONTAINS(err.msg, "256");
    CHECK(w == NULL);
    CHECK(!file_exists(p));

    /* Element-size rule: an F32 after 3 U8 bytes. */
    st_spec e[2] = {{"odd.u8", ST_U8, 1, {3}}, {"scale.f32", ST_F32, 1, {5}}};
    CHECK_EQ_INT(st_writer_open(&w, p, e, 2, NULL, 0, &o, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "scale.f32");
    CHECK_CONTAINS(err.msg, "element size");

    size_t perm[4];
    st_align_order(s, 4, perm);
    CHECK_EQ_U64(perm[0], 1); /* 256-multiple first */
    CHECK_EQ_U64(perm[1], 0); /* then F32s in input order */
    CHECK_EQ_U64(perm[2], 3);
    CHECK_EQ_U64(perm[3], 2);
    st_spec ord[4];
    for (int i = 0; i < 4; i++)
        ord[i] = s[perm[i]];
    CHECK_EQ_INT(stt_write(p, ord, 4, NULL, 0, &o, 9, &err), 0);
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    check_file_matches(f, ord, 4, 9);
    st_close(f);
}

TEST(st_align_order_random)
{
    /* Random mixes: the order from st_align_order always passes the rule, is a
     * permutation, and is stable within each class. */
    for (int round = 0; round < 50; round++) {
        enum { N = 40 };
        st_spec s[N];
        char names[N][16];
        for (int i = 0; i < N; i++) {
            snprintf(names[i], sizeof names[i], "t%d", i);
            uint64_t r = test_rand_u64();
            int nd = (int)(r % 4);
            s[i] = (st_spec){names[i], (st_dtype)((r >> 8) % ST_DTYPE_COUNT), nd, {0}};
            for (int d = 0; d < nd; d++)
                s[i].shape[d] = (r >> (16 + 8 * d)) % 2 ? 128 : (r >> (20 + 8 * d)) % 9;
        }
        size_t perm[N];
        int seen[N] = {0};
        st_align_order(s, N, perm);
        st_spec o[N];
        for (int i = 0; i < N; i++) {
            CHECK(perm[i] < N);
            if (perm[i] < N)
                seen[perm[i]]++;
            o[i] = s[perm[i] < N ? perm[i] : 0];
        }
        for (int i = 0; i < N; i++)
            CHECK_EQ_INT(seen[i], 1);
        st_write_opts opt = {.data_align = 8, .check_align_rule = 1};
        st_writer *w;
        dsr1_err err;
        int rc = st_writer_open(&w, test_path("r.safetensors"), o, N, NULL, 0, &opt, &err);
        CHECK_MSG(rc == 0, "round %d: %s", round, err.msg);
        if (rc == 0) {
            for (int i = 0; i < N; i++) {
                uint64_t rel = st_writer_tensor_offset(w, (size_t)i) - st_writer_data_start(w);
                uint64_t nb = st_writer_tensor_bytes(w, (size_t)i);
                if (nb % 256 == 0)
                    CHECK_EQ_U64(rel % 256, 0);
                CHECK_EQ_U64(rel % st_dtype_size(o[i].dtype), 0);
                if (i > 0 && (nb % 256 != 0) == (st_writer_tensor_bytes(w, (size_t)i - 1) % 256 != 0) &&
                    st_dtype_size(o[i].dtype) == st_dtype_size(o[i - 1].dtype))
                    CHECK(perm[i] > perm[i - 1]);
            }
            st_writer_free(w);
        }
    }
}

TEST(st_commit_missing_bytes)
{
    st_spec s[3] = {{"a", ST_F32, 1, {4}}, {"b", ST_U8, 1, {10}}, {"z", ST_U8, 1, {0}}};
    const char *p = test_path("missing.safetensors");
    st_writer *w;
    dsr1_err err;
    CHECK_EQ_INT(st_writer_open(&w, p, s, 3, NULL, 0, NULL, &err), 0);
    const char *tmp = st_writer_tmp_path(w);
    char expect_tmp[1100];
    snprintf(expect_tmp, sizeof expect_tmp, "%s.tmp.%ld", p, (long)getpid());
    CHECK_EQ_STR(tmp, expect_tmp);
    CHECK(file_exists(tmp));
    struct stat sb;
    CHECK_EQ_INT(stat(tmp, &sb), 0);
    CHECK_EQ_U64((uint64_t)sb.st_size, st_writer_file_size(w)); /* reserved up front */
    uint8_t buf[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    CHECK_EQ_INT(st_writer_write(w, 0, 0, buf, 16, &err), 0);
    CHECK_EQ_INT(st_writer_write(w, 1, 0, buf, 4, &err), 0);
    CHECK_EQ_INT(st_writer_write(w, 1, 6, buf + 6, 4, &err), 0); /* bytes 4..6 missing */
    CHECK_EQ_INT(st_writer_commit(w, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_WRITER_STATE);
    CHECK_CONTAINS(err.msg, "'b'");
    CHECK_CONTAINS(err.msg, "8 of 10");
    CHECK(!file_exists(p));
    /* Out-of-range writes are refused and do not count. */
    CHECK_EQ_INT(st_writer_write(w, 1, 8, buf, 3, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "outside");
    CHECK_EQ_INT(st_writer_write(w, 1, UINT64_MAX, buf, 2, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(st_writer_write(w, 3, 0, buf, 1, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(st_writer_commit(w, &err), DSR1_E_USAGE);
    CHECK(!file_exists(p));
    /* Filling the hole makes the commit succeed. */
    CHECK_EQ_INT(st_writer_write(w, 1, 4, buf + 4, 2, &err), 0);
    CHECK_EQ_INT(st_writer_commit(w, &err), 0);
    CHECK(file_exists(p));
    CHECK(!file_exists(expect_tmp));
    CHECK_EQ_INT(st_writer_write(w, 0, 0, buf, 1, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(st_writer_commit(w, &err), DSR1_E_USAGE);
    st_writer_free(w); /* must not remove the committed file */
    CHECK(file_exists(p));
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    CHECK(memcmp(st_find(f, "b")->data, buf, 10) == 0);
    CHECK(memcmp(st_find(f, "a")->data, buf, 16) == 0);
    st_close(f);

    /* A range written twice cannot stand in for a missing one. */
    CHECK_EQ_INT(st_writer_open(&w, test_path("twice.safetensors"), s, 3, NULL, 0, NULL, &err), 0);
    CHECK_EQ_INT(st_writer_write(w, 0, 0, buf, 16, &err), 0);
    CHECK_EQ_INT(st_writer_write(w, 1, 0, buf, 10, &err), 0);
    CHECK_EQ_INT(st_writer_write(w, 1, 0, buf, 5, &err), 0);
    CHECK_EQ_INT(st_writer_commit(w, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "15 of 10");
    st_writer_free(w);
    CHECK(!file_exists(test_path("twice.safetensors")));
}

TEST(st_abort_leaves_nothing)
{
    st_spec s[1] = {{"a", ST_F32, 1, {1024}}};
    const char *p = test_path("abort.safetensors");
    st_writer *w;
    dsr1_err err;
    char tmp[1100];
    CHECK_EQ_INT(st_writer_open(&w, p, s, 1, NULL, 0, NULL, &err), 0);
    snprintf(tmp, sizeof tmp, "%s", st_writer_tmp_path(w));
    uint8_t buf[64] = {0};
    CHECK_EQ_INT(st_writer_write(w, 0, 0, buf, sizeof buf, &err), 0);
    CHECK(file_exists(tmp));
    st_writer_abort(w);
    CHECK(!file_exists(tmp));
    CHECK(!file_exists(p));
    st_writer_abort(w); /* idempotent */
    CHECK_EQ_INT(st_writer_write(w, 0, 0, buf, 1, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(st_writer_commit(w, &err), DSR1_E_USAGE);
    st_writer_free(w);
    CHECK(!file_exists(p));

    /* free without commit aborts */
    CHECK_EQ_INT(st_writer_open(&w, p, s, 1, NULL, 0, NULL, &err), 0);
    CHECK(file_exists(tmp));
    st_writer_free(w);
    CHECK(!file_exists(tmp));
    CHECK(!file_exists(p));
    st_writer_free(NULL);

    /* An existing file under the final name is untouched until commit. */
    CHECK_EQ_INT(test_write_file(p, "old", 3), 0);
    CHECK_EQ_INT(st_writer_open(&w, p, s, 1, NULL, 0, NULL, &err), 0);
    uint8_t big[4096];
    memset(big, 0x5a, sizeof big);
    CHECK_EQ_INT(st_writer_write(w, 0, 0, big, sizeof big, &err), 0);
    size_t len = 0;
    uint8_t *old = read_all(p, &len);
    CHECK(old && len == 3 && memcmp(old, "old", 3) == 0);
    free(old);
    st_writer_free(w);
    old = read_all(p, &len);
    CHECK(old && len == 3 && memcmp(old, "old", 3) == 0);
    free(old);
}

TEST(st_writer_stale_and_double)
{
    st_spec s[1] = {{"a", ST_U8, 1, {4}}};
    const char *p = test_path("stale.safetensors");
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    /* A leftover temp with our pid (a dead earlier process) is replaced. */
    CHECK_EQ_INT(test_write_file(tmp, "junk", 4), 0);
    st_writer *w, *w2 = NULL;
    dsr1_err err;
    CHECK_EQ_INT(st_writer_open(&w, p, s, 1, NULL, 0, NULL, &err), 0);
    /* A second live writer for the same path in this process is refused. */
    CHECK_EQ_INT(st_writer_open(&w2, p, s, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_WRITER_STATE);
    CHECK(w2 == NULL);
    CHECK(file_exists(tmp)); /* the refused writer did not remove the live temp */
    CHECK_EQ_INT(st_writer_write(w, 0, 0, "abcd", 4, &err), 0);
    CHECK_EQ_INT(st_writer_commit(w, &err), 0);
    st_writer_free(w);
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    CHECK(memcmp(st_find(f, "a")->data, "abcd", 4) == 0);
    st_close(f);
    /* After commit the path is free again. */
    CHECK_EQ_INT(st_writer_open(&w, p, s, 1, NULL, 0, NULL, &err), 0);
    st_writer_free(w);
}

TEST(st_writer_bad_specs)
{
    st_writer *w = NULL;
    dsr1_err err;
    const char *p = test_path("bad.safetensors");
    st_spec dup[2] = {{"x", ST_U8, 1, {1}}, {"x", ST_U8, 1, {2}}};
    CHECK_EQ_INT(st_writer_open(&w, p, dup, 2, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_DUPLICATE_KEY);
    CHECK_CONTAINS(err.msg, "'x'");
    st_spec empty[1] = {{"", ST_U8, 1, {1}}};
    CHECK_EQ_INT(st_writer_open(&w, p, empty, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_NAME);
    st_spec reserved[1] = {{"__metadata__", ST_U8, 1, {1}}};
    CHECK_EQ_INT(st_writer_open(&w, p, reserved, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_NAME);
    st_spec badutf[1] = {{"a\xff", ST_U8, 1, {1}}};
    CHECK_EQ_INT(st_writer_open(&w, p, badutf, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_NAME);
    st_spec dims[1] = {{"d", ST_U8, 9, {1}}};
    CHECK_EQ_INT(st_writer_open(&w, p, dims, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_SHAPE);
    st_spec dt[1] = {{"d", (st_dtype)99, 1, {1}}};
    CHECK_EQ_INT(st_writer_open(&w, p, dt, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_DTYPE);
    st_spec ovf[1] = {{"o", ST_F64, 2, {1ULL << 32, 1ULL << 31}}};
    CHECK_EQ_INT(st_writer_open(&w, p, ovf, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_SIZE_OVERFLOW);
    st_spec huge0[1] = {{"h", ST_U8, 2, {0, 1ULL << 63}}};
    CHECK_EQ_INT(st_writer_open(&w, p, huge0, 1, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_SHAPE);
    st_spec tot[2] = {{"a", ST_U8, 1, {1ULL << 62}}, {"b", ST_U8, 2, {1ULL << 62, 3}}};
    CHECK_EQ_INT(st_writer_open(&w, p, tot, 2, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_SIZE_OVERFLOW);
    /* Each tensor fits, the file (8 x 2^60 bytes) does not fit an off_t. */
    st_spec big[8];
    static const char *const bn[8] = {"b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"};
    for (int i = 0; i < 8; i++)
        big[i] = (st_spec){bn[i], ST_U8, 1, {1ULL << 60}};
    CHECK_EQ_INT(st_writer_open(&w, p, big, 8, NULL, 0, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_SIZE_OVERFLOW);
    st_spec ok[1] = {{"a", ST_U8, 1, {1}}};
    const char *mdup[] = {"k", "1", "k", "2"};
    CHECK_EQ_INT(st_writer_open(&w, p, ok, 1, mdup, 2, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_METADATA);
    const char *mnull[] = {"k", NULL};
    CHECK_EQ_INT(st_writer_open(&w, p, ok, 1, mnull, 1, NULL, &err), DSR1_E_USAGE);
    CHECK_EQ_INT(err.code, ST_ERR_METADATA);
    CHECK(w == NULL);
    CHECK(!file_exists(p));
    /* Directory missing: an I/O error naming the temp path. */
    CHECK_EQ_INT(st_writer_open(&w, test_path("no/such/dir.safetensors"), ok, 1, NULL, 0, NULL, &err),
                 DSR1_E_IO);
    CHECK_EQ_INT(err.code, ST_ERR_WRITE);
    CHECK_CONTAINS(err.msg, "no/such/dir.safetensors.tmp.");
    /* No tensors at all is a valid file. */
    CHECK_EQ_INT(stt_write(p, NULL, 0, NULL, 0, NULL, 1, &err), 0);
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    CHECK_EQ_U64(st_count(f), 0);
    CHECK_EQ_U64(st_file_size(f), 16);
    st_close(f);
}

TEST(st_writer_no_space)
{
    /* 4 PiB cannot be reserved on any test machine: the failure must surface at
     * open as an I/O error that names the file, and leave no temp behind. */
    st_spec s[1] = {{"huge", ST_U8, 2, {1ULL << 26, 1ULL << 26}}};
    const char *p = test_path("huge.safetensors");
    st_writer *w = NULL;
    dsr1_err err;
    dsr1_err_clear(&err);
    int rc = st_writer_open(&w, p, s, 1, NULL, 0, NULL, &err);
    CHECK_EQ_INT(rc, DSR1_E_IO);
    CHECK_EQ_INT(err.code, ST_ERR_WRITE);
    CHECK(err.sys_errno == ENOSPC || err.sys_errno == EFBIG);
    CHECK_CONTAINS(err.msg, p);
    CHECK_CONTAINS(err.msg, "free space");
    CHECK(w == NULL);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", p, (long)getpid());
    CHECK(!file_exists(tmp));
    st_writer_free(w);
}

TEST(st_writer_parallel_writes)
{
    /* Many threads write disjoint chunks of the same tensors through pwrite. */
    st_spec s[3] = {{"a", ST_F32, 2, {64, 1000}}, {"b", ST_BF16, 1, {77777}}, {"c", ST_U8, 1, {5}}};
    const char *p = test_path("par.safetensors");
    st_writer *w;
    dsr1_err err;
    CHECK_EQ_INT(st_writer_open(&w, p, s, 3, NULL, 0, NULL, &err), 0);
    int fails = 0;
    for (size_t i = 0; i < 3; i++) {
        uint64_t nb = st_writer_tensor_bytes(w, i);
        const uint64_t chunk = 1000;
        long nchunks = (long)((nb + chunk - 1) / chunk);
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : fails)
        for (long c = nchunks - 1; c >= 0; c--) {
            uint8_t buf[1000];
            uint64_t off = (uint64_t)c * chunk;
            size_t len = nb - off < chunk ? (size_t)(nb - off) : (size_t)chunk;
            for (size_t k = 0; k < len; k++)
                buf[k] = stt_byte(21, i, off + k);
            dsr1_err e;
            fails += st_writer_write(w, i, off, buf, len, &e) != 0;
        }
    }
    CHECK_EQ_INT(fails, 0);
    CHECK_EQ_INT(st_writer_commit(w, &err), 0);
    st_writer_free(w);
    st_file *f;
    CHECK_EQ_INT(st_open(&f, p, &err), 0);
    check_file_matches(f, s, 3, 21);
    st_close(f);
}

TEST(st_fsync_dir_paths)
{
    dsr1_err err;
    CHECK_EQ_INT(st_fsync_dir(test_path("x.safetensors"), &err), 0);
    CHECK_EQ_INT(st_fsync_dir("relative-name-in-cwd.safetensors", &err), 0);
    CHECK_EQ_INT(st_fsync_dir("/x", &err), 0);
    CHECK_EQ_INT(st_fsync_dir(test_path("missing/x"), &err), DSR1_E_IO);
    CHECK_CONTAINS(err.msg, "missing");
}
