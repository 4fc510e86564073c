/* ld: the shard loader against an in-memory manifest (no mf.c needed): every check
 * ld_open makes, and the parallel hash check on a tensor that spans many chunks. */
#include "test.h"
#include "ld.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define NT 5

typedef struct fixture {
    mf_manifest m;
    mf_shard sh;
    mf_tensor t[NT];
    char dir[1024];
} fixture;

/* Writes "s.safetensors" with a 40 MiB tensor (several hash chunks), some small
 * ones and an empty one, and fills a manifest that describes it exactly. */
static void make_fixture(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "%s", test_tmpdir());
    static const st_spec specs[NT] = {
        {"big.weight", ST_F32, 2, {2560, 4096}},
        {"mid.weight", ST_BF16, 2, {384, 640}},
        {"small.bias", ST_F32, 1, {7}},
        {"empty", ST_F32, 2, {0, 3}},
        {"tail", ST_U8, 1, {13}},
    };
    char id[HX_HEX_LEN + 1];
    fx->m.manifest_id = hx_buf("fixture", 7);
    hx_hex(fx->m.manifest_id, id);
    const char *meta[] = {MF_META_FORMAT, MF_SHARD_FORMAT, MF_META_VERSION, "1",
                          MF_META_MANIFEST_ID, id, MF_META_PP_STAGE, "1", MF_META_TP_RANK, "3",
                          "note", "abc"};
    st_write_opts o = {.data_align = 4096, .check_align_rule = 0};
    st_writer *w = NULL;
    dsr1_err e;
    const char *path = test_path("s.safetensors");
    CHECK_EQ_INT(st_writer_open(&w, path, specs, NT, meta, 6, &o, &e), 0);
    if (!w)
        return;
    for (size_t i = 0; i < NT; i++) {
        uint64_t n = st_writer_tensor_bytes(w, i);
        uint8_t *buf = malloc(n ? n : 1);
        for (uint64_t k = 0; k < n; k++)
            buf[k] = (uint8_t)test_rand_u64();
        CHECK_EQ_INT(st_writer_write(w, i, 0, buf, n, &e), 0);
        mf_tensor *t = &fx->t[i];
        t->name = (char *)specs[i].name;
        t->dtype = specs[i].dtype;
        t->ndim = specs[i].ndim;
        memcpy(t->shape, specs[i].shape, sizeof t->shape);
        t->offset = st_writer_tensor_offset(w, i);
        t->bytes = n;
        t->xxh3_128 = hx_buf(buf, n);
        free(buf);
    }
    size_t hl;
    const void *h = st_writer_header(w, &hl);
    fx->sh.header_xxh3_128 = hx_buf(h, hl);
    fx->sh.data_start = st_writer_data_start(w);
    fx->sh.bytes = st_writer_file_size(w);
    CHECK_EQ_INT(st_writer_commit(w, &e), 0);
    st_writer_free(w);
    fx->sh.file = "s.safetensors";
    fx->sh.pp_stage = 1;
    fx->sh.tp_rank = 3;
    fx->sh.n_tensors = NT;
    fx->sh.tensors = fx->t;
    fx->m.version = 1;
    fx->m.n_shards = 1;
    fx->m.shards = &fx->sh;
    CHECK_EQ_INT(hx_file(path, &fx->sh.xxh3_128, &e), 0);
}

static void patch(const char *path, uint64_t off, const void *bytes, size_t n)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK_EQ_INT(pwrite(fd, bytes, n, (off_t)off), (long long)n);
    close(fd);
}

static void flip_bit(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    uint8_t b = 0;
    CHECK_EQ_INT(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x10;
    CHECK_EQ_INT(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

typedef struct bad_log {
    int n;
    char names[8][64];
    char msg[1024];
} bad_log;

static void log_bad(void *ctx, const mf_tensor *t, const char *msg)
{
    bad_log *l = ctx;
    if (l->n < 8)
        snprintf(l->names[l->n], 64, "%s", t ? t->name : "(header)");
    if (l->n == 0)
        snprintf(l->msg, sizeof l->msg, "%s", msg);
    l->n++;
}

static uint64_t last_progress;
static void note_progress(void *p, uint64_t done)
{
    (void)p;
    CHECK(done >= last_progress);
    last_progress = done;
}

TEST(ld_open_clean_with_hashes)
{
    fixture fx;
    make_fixture(&fx);
    ld_shard *s = NULL;
    dsr1_err e;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, LD_HASH, &e), 0);
    if (!s) {
        printf("  %s\n", e.msg);
        return;
    }
    CHECK(ld_entry(s) == &fx.sh);
    CHECK_EQ_U64(st_data_start(ld_file(s)) % 4096, 0);
    const st_tensor *t = ld_find(s, "mid.weight");
    CHECK(t && t->dtype == ST_BF16);
    CHECK(ld_find(s, "nope") == NULL);
    uint64_t shape[2] = {384, 640}, wrong[2] = {640, 384};
    CHECK_EQ_INT(ld_require(s, "mid.weight", ST_BF16, 2, shape, &t, &e), 0);
    CHECK_EQ_INT(ld_require(s, "mid.weight", ST_BF16, 2, wrong, &t, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_TENSOR);
    CHECK_CONTAINS(e.msg, "[384, 640]");
    CHECK_EQ_INT(ld_require(s, "mid.weight", ST_F32, -1, NULL, &t, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(ld_require(s, "absent", ST_F32, -1, NULL, &t, &e), DSR1_E_MISMATCH);
    CHECK_CONTAINS(e.msg, "absent");
    bad_log l = {0};
    last_progress = 0;
    CHECK_EQ_INT(ld_hash_check_progress(s, log_bad, &l, note_progress, NULL, &e), 0);
    CHECK_EQ_U64(last_progress, fx.sh.bytes);
    CHECK_EQ_INT(l.n, 0);
    ld_close(s);
    ld_close(NULL);
}

TEST(ld_hash_names_flipped_tensor)
{
    fixture fx;
    make_fixture(&fx);
    const char *path = test_path("s.safetensors");
    /* One bit in the fourth 8 MiB chunk of the big tensor, one in the small one. */
    flip_bit(path, fx.t[0].offset + 3 * (8u << 20) + 12345);
    flip_bit(path, fx.t[2].offset + 5);
    ld_shard *s = NULL;
    dsr1_err e;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), 0);
    bad_log l = {0};
    CHECK_EQ_INT(ld_hash_check(s, log_bad, &l, &e), 2);
    CHECK_EQ_INT(l.n, 2);
    int big = 0, small = 0;
    for (int i = 0; i < l.n && i < 8; i++) {
        big += strcmp(l.names[i], "big.weight") == 0;
        small += strcmp(l.names[i], "small.bias") == 0;
    }
    CHECK(big == 1 && small == 1);
    CHECK_CONTAINS(l.msg, "bytes [");
    CHECK_EQ_INT(ld_hash_check(s, NULL, NULL, &e), 2);
    CHECK_CONTAINS(e.msg, "2 digests differ");
    ld_close(s);
    /* ld_open with LD_HASH refuses and names a tensor. */
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, LD_HASH, &e), DSR1_E_MISMATCH);
    CHECK(s == NULL);
    CHECK_EQ_INT(e.code, LD_ERR_HASH);
    CHECK(strstr(e.msg, "big.weight") || strstr(e.msg, "small.bias"));
}

TEST(ld_header_digest_catches_metadata_edit)
{
    fixture fx;
    make_fixture(&fx);
    const char *path = test_path("s.safetensors");
    int fd = open(path, O_RDONLY);
    char hdr[4096];
    CHECK_EQ_INT(pread(fd, hdr, sizeof hdr, 0), 4096);
    close(fd);
    char *p = memmem(hdr, sizeof hdr, "\"abc\"", 5);
    CHECK(p != NULL);
    if (!p)
        return;
    patch(path, (uint64_t)(p - hdr) + 1, "x", 1);
    ld_shard *s = NULL;
    dsr1_err e;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), 0); /* structure still matches */
    bad_log l = {0};
    CHECK_EQ_INT(ld_hash_check(s, log_bad, &l, &e), 1);
    CHECK_EQ_STR(l.names[0], "(header)");
    CHECK_CONTAINS(l.msg, "header bytes [0, 4096)");
    ld_close(s);
}

TEST(ld_open_rejects_each_mismatch)
{
    fixture fx;
    make_fixture(&fx);
    const char *path = test_path("s.safetensors");
    ld_shard *s = NULL;
    dsr1_err e;

    fx.sh.tp_rank = 2; /* another rank's file under this name */
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_METADATA);
    CHECK_CONTAINS(e.msg, "swapped");
    fx.sh.tp_rank = 3;

    hx128 id = fx.m.manifest_id;
    fx.m.manifest_id.lo ^= 1;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_METADATA);
    CHECK_CONTAINS(e.msg, "another deployment");
    fx.m.manifest_id = id;

    fx.t[1].shape[0] = 383;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_TABLE);
    CHECK_CONTAINS(e.msg, "mid.weight");
    fx.t[1].shape[0] = 384;

    fx.t[2].dtype = ST_I32;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_CONTAINS(e.msg, "small.bias has dtype F32");
    fx.t[2].dtype = ST_F32;

    fx.t[4].name = "other";
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_CONTAINS(e.msg, "is tail, the manifest expects other");
    fx.t[4].name = "tail";

    fx.sh.n_tensors = NT - 1;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_CONTAINS(e.msg, "extra tensor tail");
    fx.sh.n_tensors = NT;

    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 1, 0, &e), DSR1_E_USAGE);

    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), 0);
    ld_close(s);

    CHECK_EQ_INT(truncate(path, (off_t)fx.sh.bytes - 1), 0);
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_SIZE);
    CHECK_CONTAINS(e.msg, "truncated");

    CHECK_EQ_INT(unlink(path), 0);
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_MISSING_FILE);
    CHECK(s == NULL);
}

TEST(ld_open_rejects_other_shard_version)
{
    fixture fx;
    make_fixture(&fx);
    const char *path = test_path("s.safetensors");
    int fd = open(path, O_RDONLY);
    char hdr[4096];
    CHECK_EQ_INT(pread(fd, hdr, sizeof hdr, 0), 4096);
    close(fd);
    char *p = memmem(hdr, sizeof hdr, "\"" MF_META_VERSION "\":\"1\"", strlen(MF_META_VERSION) + 6);
    CHECK(p != NULL);
    if (!p)
        return;
    patch(path, (uint64_t)(p - hdr) + strlen(MF_META_VERSION) + 4, "2", 1);
    ld_shard *s = NULL;
    dsr1_err e;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_METADATA);
    CHECK_CONTAINS(e.msg, "format version");
}

TEST(ld_open_header_garbage)
{
    fixture fx;
    make_fixture(&fx);
    const char *path = test_path("s.safetensors");
    patch(path, 8, "[", 1); /* same size, header no longer a JSON object */
    ld_shard *s = NULL;
    dsr1_err e;
    CHECK_EQ_INT(ld_open(&s, &fx.m, fx.dir, 0, 0, &e), DSR1_E_MISMATCH);
    CHECK_EQ_INT(e.code, LD_ERR_HEADER);
    CHECK_CONTAINS(e.msg, "s.safetensors");
    CHECK(s == NULL);
}
