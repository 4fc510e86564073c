/* hx: XXH3-128 against the stock `xxh128sum` CLI, streaming, tree and many-buffer hashing. */
#include "test.h"
#include "hx.h"

#include <errno.h>
#include <stdlib.h>

static unsigned char *rand_bytes(size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = test_rand_u64();
        for (size_t k = 0; k < 8 && i + k < n; k++)
            p[i + k] = (unsigned char)(r >> (8 * k));
    }
    return p;
}

/* The hex `xxh128sum` prints for a file, or "" if the tool failed. */
static void xxh128sum_hex(const char *path, char out[HX_HEX_LEN + 1])
{
    char cmd[2048], line[4096];
    out[0] = 0;
    snprintf(cmd, sizeof cmd, "xxh128sum '%s' 2>/dev/null", path); /* no progress noise */
    FILE *p = popen(cmd, "r");
    if (!p) {
        CHECK_MSG(0, "popen xxh128sum: %s", strerror(errno));
        return;
    }
    if (fgets(line, sizeof line, p) && strlen(line) > HX_HEX_LEN && line[HX_HEX_LEN] == ' ') {
        memcpy(out, line, HX_HEX_LEN);
        out[HX_HEX_LEN] = 0;
    }
    int rc = pclose(p);
    CHECK_MSG(rc == 0 && out[0], "xxh128sum %s failed (status %d); install the Debian xxhash "
                                 "package (scripts/install-deps.sh)", path, rc);
}

TEST(hx_matches_xxh128sum_cli)
{
    static const size_t sizes[] = {0, 1, 3, 16, 17, 128, 240, 241, 1000, 4u << 20, (4u << 20) + 1,
                                   5u << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        unsigned char *buf = rand_bytes(n);
        char name[64], want[HX_HEX_LEN + 1], got[HX_HEX_LEN + 1], got2[HX_HEX_LEN + 1];
        snprintf(name, sizeof name, "f%zu.bin", n);
        const char *path = test_path(name);
        CHECK(test_write_file(path, buf, n) == 0);
        xxh128sum_hex(path, want);
        hx128 hf = {0, 0};
        dsr1_err e;
        dsr1_err_clear(&e);
        CHECK_EQ_INT(hx_file(path, &hf, &e), 0);
        hx_hex(hf, got);
        hx_hex(hx_buf(buf, n), got2);
        CHECK_EQ_STR(got, want);
        CHECK_EQ_STR(got2, want);
        hx128 back;
        CHECK_EQ_INT(hx_parse(want, &back), 0);
        CHECK(hx_eq(back, hf));
        free(buf);
    }
}

TEST(hx_known_vectors)
{
    /* xxh128sum of empty input and of "abc" (printf abc | xxh128sum) */
    char hex[HX_HEX_LEN + 1];
    hx_hex(hx_buf("", 0), hex);
    CHECK_EQ_STR(hex, "99aa06d3014798d86001c324468d497f");
    hx_hex(hx_buf("abc", 3), hex);
    CHECK_EQ_STR(hex, "06b05ab6733a618578af5f94892f3950");
    hx128 h;
    CHECK_EQ_INT(hx_parse("06B05AB6733A618578AF5F94892F3950", &h), 0);
    CHECK(hx_eq(h, hx_buf("abc", 3)));
    CHECK_EQ_U64(h.hi, 0x06b05ab6733a6185ULL);
    CHECK_EQ_U64(h.lo, 0x78af5f94892f3950ULL);
    CHECK_EQ_INT(hx_parse("06b05ab6733a618578af5f94892f395", &h), -1);   /* 31 chars */
    CHECK_EQ_INT(hx_parse("06b05ab6733a618578af5f94892f39500", &h), -1); /* 33 chars */
    CHECK_EQ_INT(hx_parse("06b05ab6733a618578af5f94892f395g", &h), -1);
    CHECK_EQ_INT(hx_parse(NULL, &h), -1);
}

TEST(hx_streaming_odd_pieces)
{
    const size_t n = 3000000;
    unsigned char *buf = rand_bytes(n);
    hx128 one = hx_buf(buf, n);
    hx_state *s = hx_new();
    CHECK(s != NULL);
    if (!s) {
        free(buf);
        return;
    }
    size_t off = 0, step = 1;
    while (off < n) {
        size_t len = step < n - off ? step : n - off;
        hx_update(s, buf + off, len);
        off += len;
        step = step * 3 + 7; /* 1, 10, 37, ...: crosses every internal block size */
    }
    CHECK(hx_eq(hx_digest(s), one));
    hx_update(s, buf, 0);
    CHECK(hx_eq(hx_digest(s), one));
    hx_reset(s);
    CHECK(hx_eq(hx_digest(s), hx_buf("", 0)));
    hx_update(s, buf, 999);
    CHECK(hx_eq(hx_digest(s), hx_buf(buf, 999)));
    hx_free(s);
    hx_free(NULL);
    free(buf);
}

/* The tree hash written out from its definition in hx.h. */
static hx128 tree_by_definition(const unsigned char *p, size_t n, size_t chunk)
{
    size_t k = (n + chunk - 1) / chunk;
    unsigned char *cat = malloc(8 + 16 * k);
    for (int i = 0; i < 8; i++)
        cat[i] = (unsigned char)((uint64_t)chunk >> (8 * i));
    for (size_t i = 0; i < k; i++) {
        size_t len = (i + 1) * chunk <= n ? chunk : n - i * chunk;
        hx128 h = hx_buf(p + i * chunk, len);
        for (int b = 0; b < 8; b++) {
            cat[8 + 16 * i + b] = (unsigned char)(h.hi >> (56 - 8 * b));
            cat[8 + 16 * i + 8 + b] = (unsigned char)(h.lo >> (56 - 8 * b));
        }
    }
    hx128 r = hx_buf(cat, 8 + 16 * k);
    free(cat);
    return r;
}

TEST(hx_tree_definition)
{
    const size_t n = 1000003;
    unsigned char *buf = rand_bytes(n);
    hx128 a = hx_tree(buf, n, 65536), b = hx_tree(buf, n, 65536);
    CHECK(hx_eq(a, b));
    CHECK(hx_eq(a, tree_by_definition(buf, n, 65536)));
    CHECK(!hx_eq(a, hx_tree(buf, n, 131072)));
    CHECK(!hx_eq(a, hx_buf(buf, n)));
    CHECK(hx_eq(hx_tree(buf, n, 0), tree_by_definition(buf, n, (size_t)64 << 20)));
    CHECK(hx_eq(hx_tree(buf, n, 1000), tree_by_definition(buf, n, 1000))); /* short last piece */
    CHECK(hx_eq(hx_tree(buf, 4096, 1024), tree_by_definition(buf, 4096, 1024))); /* exact fit */
    CHECK(hx_eq(hx_tree(buf, 0, 1024), tree_by_definition(buf, 0, 1024)));
    buf[n - 1] ^= 1;
    CHECK(!hx_eq(a, hx_tree(buf, n, 65536)));
    free(buf);
}

TEST(hx_many_equals_each)
{
    enum { N = 37 };
    const void *ptrs[N];
    size_t lens[N];
    hx128 out[N];
    unsigned char *bufs[N];
    for (int i = 0; i < N; i++) {
        lens[i] = (size_t)(i * i * 97) % 20000;
        bufs[i] = rand_bytes(lens[i]);
        ptrs[i] = bufs[i];
        out[i].hi = out[i].lo = 0;
    }
    hx_many(ptrs, lens, N, out);
    for (int i = 0; i < N; i++) {
        CHECK_MSG(hx_eq(out[i], hx_buf(ptrs[i], lens[i])), "buffer %d", i);
        free(bufs[i]);
    }
    hx_many(ptrs, lens, 0, out);
}

TEST(hx_file_errors)
{
    dsr1_err e;
    hx128 h;
    dsr1_err_clear(&e);
    const char *missing = test_path("nope.bin");
    CHECK_EQ_INT(hx_file(missing, &h, &e), DSR1_E_IO);
    CHECK_EQ_INT(e.code, HX_ERR_OPEN);
    CHECK_EQ_INT(e.sys_errno, ENOENT);
    CHECK_CONTAINS(e.msg, missing);
    dsr1_err_clear(&e);
    CHECK_EQ_INT(hx_file(test_tmpdir(), &h, &e), DSR1_E_IO); /* a directory: read fails */
    CHECK_EQ_INT(e.code, HX_ERR_READ);
    CHECK_CONTAINS(e.msg, "offset 0");
}
