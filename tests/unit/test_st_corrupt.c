/* st: the corrupt-input catalogue. Every malformed file is rejected with its own
 * ST_ERR_* code and a message naming the file (and the tensor where there is
 * one); nothing crashes. */
#include "test.h"
#include "st.h"

#include <errno.h>
#include <stdlib.h>

/* 8-byte little-endian length + header + `data` zero bytes. */
static uint8_t *mk(const char *hdr, size_t hlen, size_t data, size_t *len)
{
    *len = 8 + hlen + data;
    uint8_t *b = calloc(1, *len);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, hdr, hlen);
    return b;
}

/* Open from memory and from disk; both must fail with `code`; the message must
 * name the file and contain `needle` (a tensor name or the detail), if given. */
static void expect_reject(const char *id, const uint8_t *buf, size_t len, int code, const char *needle)
{
    char label[128];
    snprintf(label, sizeof label, "corrupt-%s.safetensors", id);
    st_file *f = (st_file *)1;
    dsr1_err err;
    dsr1_err_clear(&err);
    int rc = st_open_mem(&f, buf, len, label, &err);
    CHECK_MSG(rc == DSR1_E_INVALID, "%s: rc %d (expected DSR1_E_INVALID), msg: %s", id, rc, err.msg);
    CHECK_MSG(err.code == code, "%s: code %d, expected %d; msg: %s", id, err.code, code, err.msg);
    CHECK_MSG(f == NULL, "%s: *out not NULL on failure", id);
    CHECK_CONTAINS(err.msg, label);
    if (needle)
        CHECK_CONTAINS(err.msg, needle);
    st_close(f);

    const char *p = test_path(label);
    CHECK_EQ_INT(test_write_file(p, buf, len), 0);
    dsr1_err e2;
    dsr1_err_clear(&e2);
    rc = st_open(&f, p, &e2);
    CHECK_MSG(rc == DSR1_E_INVALID && e2.code == code, "%s on disk: rc %d code %d: %s", id, rc,
              e2.code, e2.msg);
    CHECK_CONTAINS(e2.msg, p);
    st_close(f);
}

static void expect_json(const char *id, const char *json, size_t data, int code, const char *needle)
{
    size_t len;
    uint8_t *b = mk(json, strlen(json), data, &len);
    expect_reject(id, b, len, code, needle);
    free(b);
}

#define E(name, dt, shape, offs) "\"" name "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" offs "}"

static const struct {
    const char *id, *json;
    size_t data;
    int code;
    const char *needle;
} cases[] = {
    {"dup_tensor", "{" E("a", "U8", "[1]", "[0,1]") "," E("a", "U8", "[1]", "[1,2]") "}", 2,
     ST_ERR_DUPLICATE_KEY, "'a'"},
    {"dup_field", "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     ST_ERR_DUPLICATE_KEY, "'dtype'"},
    {"dup_meta_key", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, ST_ERR_DUPLICATE_KEY, "'k'"},
    {"json_syntax", "{\"a\":{\"dtype\":\"U8\",}}", 0, ST_ERR_HEADER_JSON, "byte"},
    {"json_trailing_garbage", "{} x", 0, ST_ERR_HEADER_JSON, "byte 12"},
    {"json_unterminated", "{\"a\":", 0, ST_ERR_HEADER_JSON, "byte"},
    {"json_two_objects", "{}{}", 0, ST_ERR_HEADER_JSON, "byte"},
    {"json_nul_escape", "{\"a\\u0000\":1}", 0, ST_ERR_HEADER_JSON, "byte"},
    {"not_object_array", "[1,2]", 0, ST_ERR_HEADER_NOT_OBJECT, "'{'"},
    {"leading_space", " {}", 0, ST_ERR_HEADER_NOT_OBJECT, "byte 8"},
    {"entry_array", "{\"w\":[1,2]}", 0, ST_ERR_ENTRY_NOT_OBJECT, "'w'"},
    {"entry_string", "{\"w\":\"F32\"}", 0, ST_ERR_ENTRY_NOT_OBJECT, "header entry at byte 9"},
    {"missing_shape", "{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1, ST_ERR_ENTRY_FIELDS, "'shape'"},
    {"missing_dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1, ST_ERR_ENTRY_FIELDS, "'dtype'"},
    {"missing_offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1, ST_ERR_ENTRY_FIELDS, "'data_offsets'"},
    {"extra_field", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 1,
     ST_ERR_ENTRY_FIELDS, "'x'"},
    {"dtype_unknown", "{" E("w", "F4", "[1]", "[0,1]") "}", 1, ST_ERR_DTYPE, "'F4'"},
    {"dtype_lowercase", "{" E("w", "f32", "[1]", "[0,4]") "}", 4, ST_ERR_DTYPE, "'w'"},
    {"dtype_number", "{\"w\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,1]}}", 1, ST_ERR_DTYPE, "'w'"},
    {"shape_negative", "{" E("w", "U8", "[-1]", "[0,1]") "}", 1, ST_ERR_SHAPE, "negative"},
    {"shape_negative_zero", "{" E("w", "U8", "[-0]", "[0,0]") "}", 0, ST_ERR_SHAPE, "'-0' at byte"},
    {"offsets_negative_zero", "{" E("w", "U8", "[0]", "[-0, 0]") "}", 0, ST_ERR_OFFSETS, "data_offsets"},
    {"shape_float", "{" E("w", "U8", "[2.0]", "[0,2]") "}", 2, ST_ERR_SHAPE, "real"},
    {"shape_string", "{" E("w", "U8", "[\"2\"]", "[0,2]") "}", 2, ST_ERR_SHAPE, "string"},
    {"shape_bool", "{" E("w", "U8", "[true]", "[0,1]") "}", 1, ST_ERR_SHAPE, "boolean"},
    {"shape_nested", "{" E("w", "U8", "[[1]]", "[0,1]") "}", 1, ST_ERR_SHAPE, "array"},
    {"shape_not_array", "{" E("w", "U8", "4", "[0,4]") "}", 4, ST_ERR_SHAPE, "'w'"},
    {"shape_too_many_dims", "{" E("w", "U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") "}", 1, ST_ERR_SHAPE,
     "9 dimensions"},
    {"shape_int_too_big", "{" E("w", "U8", "[99999999999999999999]", "[0,1]") "}", 1, ST_ERR_SHAPE,
     "64-bit"},
    {"offsets_one", "{" E("w", "U8", "[1]", "[0]") "}", 1, ST_ERR_OFFSETS, "fewer than 2"},
    {"offsets_three", "{" E("w", "U8", "[1]", "[0,1,2]") "}", 1, ST_ERR_OFFSETS, "more than 2"},
    {"offsets_negative", "{" E("w", "U8", "[1]", "[-1,0]") "}", 1, ST_ERR_OFFSETS, "'w'"},
    {"offsets_float", "{" E("w", "U8", "[1]", "[0,1.5]") "}", 1, ST_ERR_OFFSETS, "real"},
    {"offsets_not_array", "{" E("w", "U8", "[1]", "\"0-1\"") "}", 1, ST_ERR_OFFSETS, "'w'"},
    {"offsets_reversed", "{" E("w", "U8", "[0]", "[4,0]") "}", 4, ST_ERR_OFFSETS, "begin 4 > end 0"},
    {"offsets_int_too_big", "{" E("w", "U8", "[1]", "[0,18446744073709551616]") "}", 1, ST_ERR_OFFSETS,
     "data_offsets"},
    {"size_overflow", "{" E("w", "U8", "[4294967296,4294967296,2]", "[0,0]") "}", 0,
     ST_ERR_SIZE_OVERFLOW, "'w'"},
    /* 2^61 F64 elements = 2^64 bytes; the official checks elements x bits too. */
    {"size_overflow_bytes", "{" E("w", "F64", "[2305843009213693952]", "[0,0]") "}", 0,
     ST_ERR_SIZE_OVERFLOW, "'w'"},
    {"size_mismatch", "{" E("w", "F32", "[2]", "[0,4]") "}", 4, ST_ERR_SIZE_MISMATCH, "needs 8 bytes"},
    {"size_mismatch_zero_dim", "{" E("w", "F32", "[0,3]", "[0,4]") "}", 4, ST_ERR_SIZE_MISMATCH, "'w'"},
    {"gap_at_start", "{" E("w", "U8", "[1]", "[1,2]") "}", 2, ST_ERR_OFFSET_GAP, "gap of 1"},
    {"gap_between", "{" E("a", "U8", "[1]", "[0,1]") "," E("b", "U8", "[1]", "[2,3]") "}", 3,
     ST_ERR_OFFSET_GAP, "'b'"},
    {"overlap", "{" E("a", "U8", "[2]", "[0,2]") "," E("b", "U8", "[2]", "[1,3]") "}", 3,
     ST_ERR_OFFSET_GAP, "overlap"},
    {"same_range_twice", "{" E("a", "U8", "[2]", "[0,2]") "," E("b", "U8", "[2]", "[0,2]") "}", 2,
     ST_ERR_OFFSET_GAP, "overlap tensor 'a'"},
    {"trailing_bytes", "{" E("a", "U8", "[1]", "[0,1]") "}", 5, ST_ERR_DATA_LENGTH, "4 trailing bytes"},
    {"data_truncated", "{" E("a", "U8", "[8]", "[0,8]") "}", 3, ST_ERR_DATA_LENGTH, "beyond the end"},
    {"no_tensors_but_data", "{}", 3, ST_ERR_DATA_LENGTH, "3 trailing"},
    {"meta_not_object", "{\"__metadata__\":\"x\"}", 0, ST_ERR_METADATA, "a string"},
    {"meta_int_value", "{\"__metadata__\":{\"k\":1}}", 0, ST_ERR_METADATA, "'k'"},
    {"meta_null", "{\"__metadata__\":null}", 0, ST_ERR_METADATA, "null"},
    {"meta_nested", "{\"__metadata__\":{\"k\":{\"a\":\"b\"}}}", 0, ST_ERR_METADATA, "an object"},
    {"empty_name", "{" E("", "U8", "[1]", "[0,1]") "}", 1, ST_ERR_NAME, "empty tensor name"},
};

TEST(st_corrupt_catalogue)
{
    size_t n = sizeof cases / sizeof cases[0];
    CHECK(n >= 40);
    for (size_t i = 0; i < n; i++)
        expect_json(cases[i].id, cases[i].json, cases[i].data, cases[i].code, cases[i].needle);
}

TEST(st_corrupt_raw_lengths)
{
    uint8_t b[32] = {0};
    expect_reject("empty_file", b, 0, ST_ERR_TOO_SMALL, "0 bytes");
    expect_reject("seven_bytes", b, 7, ST_ERR_TOO_SMALL, "7 bytes");
    /* N = 100,000,001 */
    uint64_t n = 100000001ULL;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    b[8] = '{';
    expect_reject("header_too_large", b, 16, ST_ERR_HEADER_TOO_LARGE, "100000001");
    memset(b, 0xff, 8);
    expect_reject("header_len_u64_max", b, 16, ST_ERR_HEADER_TOO_LARGE, "18446744073709551615");
    memset(b, 0, 8);
    b[0] = 64;
    expect_reject("header_beyond_eof", b, 20, ST_ERR_HEADER_BEYOND_EOF, "64 bytes");
    b[0] = 13;
    expect_reject("header_one_past_eof", b, 20, ST_ERR_HEADER_BEYOND_EOF, "20-byte file");
    memset(b, 0, sizeof b);
    expect_reject("header_len_zero", b, 8, ST_ERR_HEADER_NOT_OBJECT, "empty");
}

TEST(st_corrupt_utf8)
{
    static const struct {
        const char *id, *json;
        const char *at;
    } u[] = {
        {"utf8_ff", "{\"a\xff\":1}", "byte 11"},
        {"utf8_overlong", "{\"\xc0\xaf\":1}", "byte 10"},
        {"utf8_overlong3", "{\"\xe0\x80\xaf\":1}", "byte 10"},
        {"utf8_surrogate", "{\"\xed\xa0\x80\":1}", "byte 10"},
        {"utf8_above_10ffff", "{\"\xf4\x90\x80\x80\":1}", "byte 10"},
        {"utf8_lone_continuation", "{\"\x80\":1}", "byte 10"},
        {"utf8_truncated_at_end", "{\"\xe2\x82", "byte 10"},
        {"utf8_in_metadata_value", "{\"__metadata__\":{\"k\":\"\xfe\"}}", "(0xfe)"},
    };
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++)
        expect_json(u[i].id, u[i].json, 0, ST_ERR_HEADER_UTF8, u[i].at);
    /* A raw NUL byte is valid UTF-8 but not valid JSON. */
    size_t len;
    uint8_t *b = mk("{\"a\0\":1}", 8, 0, &len);
    expect_reject("raw_nul", b, len, ST_ERR_HEADER_JSON, "byte");
    free(b);
}

TEST(st_corrupt_deep_nesting)
{
    /* jansson limits depth; must be an error, not a stack overflow. */
    size_t depth = 200000, len;
    char *j = malloc(depth * 2 + 16);
    size_t k = 0;
    k += (size_t)sprintf(j, "{\"a\":");
    for (size_t i = 0; i < depth; i++)
        j[k++] = '[';
    for (size_t i = 0; i < depth; i++)
        j[k++] = ']';
    j[k++] = '}';
    j[k] = 0;
    uint8_t *b = mk(j, k, 0, &len);
    expect_reject("deep_nesting", b, len, ST_ERR_HEADER_JSON, "byte");
    free(b);
    free(j);
}

TEST(st_corrupt_long_name_message)
{
    /* A huge name must not push the cause out of the message. */
    size_t nl = 5000;
    char *j = malloc(nl + 128);
    int k = sprintf(j, "{\"");
    memset(j + k, 'x', nl);
    sprintf(j + k + nl, "\":{\"dtype\":\"Q9\",\"shape\":[1],\"data_offsets\":[0,1]}}");
    expect_json("long_name", j, 1, ST_ERR_DTYPE, "unknown dtype 'Q9'");
    free(j);
}

TEST(st_accepts_edge_cases)
{
    static const struct {
        const char *json;
        size_t data, ntensors, nmeta;
    } ok[] = {
        {"{}", 0, 0, 0},
        {"{}        ", 0, 0, 0},
        {"{} \n\t\r ", 0, 0, 0},
        {"{\"__metadata__\":{}}", 0, 0, 0},
        {"{\"__metadata__\":{\"a\":\"\",\"\":\"b\"}}", 0, 0, 2},
        {"{" E("a", "U8", "[0]", "[0,0]") "," E("b", "U8", "[2]", "[0,2]") "," E("c", "F32", "[0,5]", "[2,2]") "}",
         2, 3, 0},
        {"{" E("z", "BF16", "[2]", "[4,8]") ",\"__metadata__\":{\"k\":\"v\"}," E("y", "I32", "[]", "[0,4]") "}",
         8, 2, 1},
        {"{" E("caf\xc3\xa9 \\\"q\\\"", "U8", "[1]", "[0,1]") "}", 1, 1, 0},
        {"{" E("-0", "U8", "[1]", "[0,1]") ",\"__metadata__\":{\"x\":\"-0 \\\" -0\"}}", 1, 1, 1},
        { "{ \"a\" : { \"shape\" : [ 2 ] , \"data_offsets\" : [ 0 , 2 ] , \"dtype\" : \"I8\" } }", 2, 1, 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        size_t len;
        uint8_t *b = mk(ok[i].json, strlen(ok[i].json), ok[i].data, &len);
        st_file *f = NULL;
        dsr1_err err;
        dsr1_err_clear(&err);
        int rc = st_open_mem(&f, b, len, "ok.safetensors", &err);
        CHECK_MSG(rc == 0, "case %zu rejected: %s", i, err.msg);
        if (f) {
            CHECK_EQ_U64(st_count(f), ok[i].ntensors);
            CHECK_EQ_U64(st_meta_count(f), ok[i].nmeta);
            for (size_t t = 0; t + 1 < st_count(f); t++)
                CHECK(st_get(f, t)->begin <= st_get(f, t + 1)->begin);
        }
        st_close(f);
        free(b);
    }
    size_t len;
    const char *j = "{" E("caf\xc3\xa9 \\\"q\\\"", "U8", "[1]", "[0,1]") "}";
    uint8_t *b = mk(j, strlen(j), 1, &len);
    st_file *f;
    dsr1_err err;
    CHECK_EQ_INT(st_open_mem(&f, b, len, NULL, &err), 0);
    CHECK(st_find(f, "caf\xc3\xa9 \"q\"") != NULL);
    CHECK_EQ_STR(st_path(f), "<memory>");
    st_close(f);
    free(b);
    /* Zero-size tensors sort by (begin, end, name) so the order is deterministic. */
    j = "{" E("b", "U8", "[0]", "[0,0]") "," E("c", "U8", "[1]", "[0,1]") "," E("a", "U8", "[0]", "[0,0]") "}";
    b = mk(j, strlen(j), 1, &len);
    CHECK_EQ_INT(st_open_mem(&f, b, len, NULL, &err), 0);
    CHECK_EQ_STR(st_get(f, 0)->name, "a");
    CHECK_EQ_STR(st_get(f, 1)->name, "b");
    CHECK_EQ_STR(st_get(f, 2)->name, "c");
    st_close(f);
    free(b);
}

TEST(st_corrupt_open_errors)
{
    st_file *f = (st_file *)1;
    dsr1_err err;
    CHECK_EQ_INT(st_open(&f, test_path("does-not-exist.safetensors"), &err), DSR1_E_IO);
    CHECK_EQ_INT(err.code, ST_ERR_OPEN);
    CHECK_EQ_INT(err.sys_errno, ENOENT);
    CHECK_CONTAINS(err.msg, "does-not-exist.safetensors");
    CHECK(f == NULL);
    CHECK_EQ_INT(st_open(&f, test_tmpdir(), &err), DSR1_E_INVALID);
    CHECK_EQ_INT(err.code, ST_ERR_OPEN);
    CHECK_CONTAINS(err.msg, "not a regular file");
}

/* A valid file with several tensors and metadata, built by the writer. */
static uint8_t *valid_image(size_t *len)
{
    st_spec s[3] = {{"w", ST_BF16, 2, {3, 4}}, {"s", ST_F32, 0, {0}}, {"e", ST_U8, 1, {0}}};
    const char *meta[] = {"format", "pt"};
    st_writer *w;
    dsr1_err err;
    const char *p = test_path("valid.safetensors");
    if (st_writer_open(&w, p, s, 3, meta, 1, NULL, &err))
        return NULL;
    uint8_t buf[24];
    for (int i = 0; i < 24; i++)
        buf[i] = (uint8_t)(i * 37 + 1);
    st_writer_write(w, 0, 0, buf, 24, &err);
    st_writer_write(w, 1, 0, buf, 4, &err);
    int rc = st_writer_commit(w, &err);
    st_writer_free(w);
    if (rc)
        return NULL;
    FILE *fp = fopen(p, "rb");
    uint8_t *b = malloc(4096);
    *len = fread(b, 1, 4096, fp);
    fclose(fp);
    return b;
}

TEST(st_corrupt_every_truncation)
{
    size_t len;
    uint8_t *b = valid_image(&len);
    CHECK(b != NULL);
    if (!b)
        return;
    st_file *f;
    dsr1_err err;
    CHECK_EQ_INT(st_open_mem(&f, b, len, "full", &err), 0);
    st_close(f);
    for (size_t n = 0; n < len; n++) {
        uint8_t *c = malloc(n ? n : 1); /* exact-size copy so ASan sees any over-read */
        memcpy(c, b, n);
        int rc = st_open_mem(&f, c, n, "trunc", &err);
        CHECK_MSG(rc == DSR1_E_INVALID, "truncated to %zu bytes: accepted", n);
        CHECK(err.code == ST_ERR_TOO_SMALL || err.code == ST_ERR_HEADER_BEYOND_EOF ||
              err.code == ST_ERR_DATA_LENGTH);
        free(c);
    }
    free(b);
}

TEST(st_corrupt_every_header_byte)
{
    /* Overwrite each header byte with a few values: any outcome but a crash or a
     * code-less failure is fine; accepted files must still be self-consistent. */
    size_t len;
    uint8_t *b = valid_image(&len);
    CHECK(b != NULL);
    if (!b)
        return;
    static const uint8_t vals[] = {0x00, 0x20, '"', '0', '9', '-', '{', ']', 0x80, 0xff};
    uint8_t *c = malloc(len);
    size_t hdr_end = 8 + (size_t)b[0] + ((size_t)b[1] << 8);
    int accepted = 0, rejected = 0;
    for (size_t pos = 0; pos < hdr_end; pos++)
        for (size_t v = 0; v < sizeof vals; v++) {
            memcpy(c, b, len);
            c[pos] = vals[v];
            st_file *f;
            dsr1_err err;
            dsr1_err_clear(&err);
            if (st_open_mem(&f, c, len, "mut", &err) == 0) {
                accepted++;
                uint64_t end = 0;
                for (size_t i = 0; i < st_count(f); i++) {
                    const st_tensor *t = st_get(f, i);
                    CHECK(t->begin == end);
                    CHECK(t->file_offset + t->nbytes <= len);
                    end = t->end;
                    CHECK(st_find(f, t->name) == t);
                }
                CHECK_EQ_U64(st_data_start(f) + end, len);
                st_close(f);
            } else {
                rejected++;
                CHECK(err.code > ST_ERR_NONE && err.code <= ST_ERR_NAME);
                CHECK(strstr(err.msg, "mut") != NULL);
            }
        }
    CHECK(rejected > 0 && accepted > 0);
    free(c);
    free(b);
}
