/* sh: the conversion engine on a synthesized tiny checkpoint: per-tensor and per-file
 * hashes, the shared loader accepts every shard, output independent of thread count and
 * batch size, an I/O failure leaves nothing complete, and resume after it reproduces a
 * clean run byte for byte. (Reassembly against the source: tests/interop/shard_check.py.) */
#include "test.h"
#include "ld.h"
#include "mf.h"
#include "shard.h"
#include "synth.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static void make_tiny(const char *dir)
{
    ck_config c;
    dsr1_err e;
    CHECK_EQ_INT(sy_preset("tiny", 0, &c, NULL, &e), 0);
    sy_plan sp;
    CHECK_EQ_INT(sy_plan_make(&sp, &c, 1, 1 << 20, &e), 0); /* 1 MB files: many source files */
    sy_opts o;
    memset(&o, 0, sizeof o);
    o.out_dir = dir;
    o.seed = 7;
    CHECK_EQ_INT(sy_write(&sp, &o, &e), 0);
    sy_plan_free(&sp);
}

static int run(const char *src, const char *out, uint32_t tp, uint32_t ep, uint32_t pp, plan_dtype dt, int mtp,
               const sh_opts *base, sh_stats *st, dsr1_err *e)
{
    ck_ckpt *c = NULL;
    if (ck_open(&c, src, e))
        return e->status;
    plan_req r;
    memset(&r, 0, sizeof r);
    r.tp = tp;
    r.ep = ep;
    r.pp = pp;
    r.dtype = dt;
    r.mtp = mtp;
    plan *p = NULL;
    int rc = plan_make(&p, ck_cfg(c), &r, e);
    if (!rc) {
        sh_opts o = *base;
        o.out_dir = out;
        rc = sh_run(c, p, &o, st, e);
    }
    plan_free(p);
    ck_close(c);
    return rc;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n ? *n : 1);
    if (fread(b, 1, *n, f) != *n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

/* Same file names with the same bytes in both directories. */
static int same_dirs(const char *a, const char *b)
{
    DIR *d = opendir(a);
    if (!d)
        return 0;
    struct dirent *de;
    int ok = 1, files = 0;
    while (ok && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char pa[2048], pb[2048];
        snprintf(pa, sizeof pa, "%s/%s", a, de->d_name);
        snprintf(pb, sizeof pb, "%s/%s", b, de->d_name);
        size_t na = 0, nb = 0;
        uint8_t *x = slurp(pa, &na), *y = slurp(pb, &nb);
        ok = x && y && na == nb && memcmp(x, y, na) == 0;
        if (!ok)
            printf("  differs: %s\n", de->d_name);
        free(x);
        free(y);
        files++;
    }
    closedir(d);
    return ok && files > 0;
}

static int count_matching(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)))
        n += strstr(de->d_name, needle) != NULL;
    closedir(d);
    return n;
}

TEST(shard_hashes_and_loader_accept_every_shard)
{
    char src[1024], out[1024];
    snprintf(src, sizeof src, "%s", test_path("ck"));
    snprintf(out, sizeof out, "%s", test_path("out"));
    make_tiny(src);
    sh_opts o;
    memset(&o, 0, sizeof o);
    sh_stats st;
    dsr1_err e;
    CHECK_EQ_INT(run(src, out, 2, 1, 2, PLAN_FP8, 1, &o, &st, &e), 0);
    CHECK_EQ_INT(st.files_written, 4);
    char mp[1100];
    snprintf(mp, sizeof mp, "%s/manifest.json", out);
    mf_manifest *m = NULL;
    CHECK_EQ_INT(mf_load(&m, mp, &e), 0);
    if (!m) {
        printf("  %s\n", e.msg);
        return;
    }
    for (size_t i = 0; i < m->n_shards; i++) {
        const mf_shard *s = &m->shards[i];
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", out, s->file);
        size_t n = 0;
        uint8_t *b = slurp(p, &n);
        CHECK(b && n == s->bytes);
        if (!b)
            continue;
        CHECK(hx_eq(hx_buf(b, n), s->xxh3_128));
        CHECK(hx_eq(hx_buf(b, s->data_start), s->header_xxh3_128));
        CHECK_EQ_U64(s->data_start % 4096, 0);
        for (size_t k = 0; k < s->n_tensors; k++) {
            const mf_tensor *t = &s->tensors[k];
            CHECK_MSG(hx_eq(hx_buf(b + t->offset, t->bytes), t->xxh3_128), "%s:%s hash", s->file, t->name);
            CHECK_NEAR(t->quant_rel_rms, 0, 0);
        }
        free(b);
        ld_shard *l = NULL;
        CHECK_EQ_INT(ld_open(&l, m, out, i, LD_HASH, &e), 0);
        if (!l)
            printf("  ld_open: %s\n", e.msg);
        ld_close(l);
    }
    /* XXH128SUMS names every shard and the manifest with their digests */
    char sp[1100];
    snprintf(sp, sizeof sp, "%s/XXH128SUMS", out);
    char **fn;
    hx128 *dg;
    size_t n;
    CHECK_EQ_INT(mf_sums_read(sp, &fn, &dg, &n, &e), 0);
    CHECK_EQ_INT(n, m->n_shards + 1);
    for (size_t i = 0; i < n; i++) {
        char p[1200];
        hx128 h;
        snprintf(p, sizeof p, "%s/%s", out, fn[i]);
        CHECK_EQ_INT(hx_file(p, &h, &e), 0);
        CHECK_MSG(hx_eq(h, dg[i]), "%s digest", fn[i]);
        free(fn[i]);
    }
    free(fn);
    free(dg);
    CHECK_EQ_INT(count_matching(out, ".tmp."), 0);
    CHECK_EQ_INT(count_matching(out, SH_JOURNAL), 0);
    mf_free(m);
}

TEST(shard_output_independent_of_threads_and_batch)
{
    char src[1024], a[1024], b[1024];
    snprintf(src, sizeof src, "%s", test_path("ck"));
    snprintf(a, sizeof a, "%s", test_path("a"));
    snprintf(b, sizeof b, "%s", test_path("b"));
    make_tiny(src);
    for (int dt = 0; dt < 2; dt++) {
        sh_opts o;
        memset(&o, 0, sizeof o);
        dsr1_err e;
        o.threads = 2;
        CHECK_EQ_INT(run(src, a, 2, 1, 1, (plan_dtype)dt, 0, &o, NULL, &e), 0);
        o.threads = 1;
        o.batch_bytes = 4096; /* many pieces, row-split tensors */
        CHECK_EQ_INT(run(src, b, 2, 1, 1, (plan_dtype)dt, 0, &o, NULL, &e), 0);
        CHECK_MSG(same_dirs(a, b), "dtype %d: outputs differ", dt);
    }
}

TEST(shard_io_failure_leaves_nothing_complete_and_resume_matches)
{
    char src[1024], clean[1024], out[1024];
    snprintf(src, sizeof src, "%s", test_path("ck"));
    snprintf(clean, sizeof clean, "%s", test_path("clean"));
    snprintf(out, sizeof out, "%s", test_path("out"));
    make_tiny(src);
    sh_opts o;
    memset(&o, 0, sizeof o);
    sh_stats st;
    dsr1_err e;
    o.batch_bytes = 1 << 20;
    CHECK_EQ_INT(run(src, clean, 2, 2, 2, PLAN_BF16, 1, &o, &st, &e), 0);
    uint64_t total = 0;
    int saw_stage1 = 0;
    /* fail at every few batches, through both stages, until a run gets through */
    for (uint64_t at = 1; at < 1000 && !total; at += 3) {
        o.fail_after_batches = at;
        int rc = run(src, out, 2, 2, 2, PLAN_BF16, 1, &o, &st, &e);
        if (rc == 0) {
            total = at;
            break;
        }
        CHECK_EQ_INT(rc, DSR1_E_IO);
        CHECK_CONTAINS(e.msg, "injected");
        size_t committed = st.files_written;
        char mp[1100];
        snprintf(mp, sizeof mp, "%s/manifest.json", out);
        CHECK_MSG(access(mp, F_OK) != 0, "manifest.json exists after a failure at batch %" PRIu64, at);
        CHECK_EQ_INT(count_matching(out, ".tmp."), 0);
        sh_opts r = o;
        r.fail_after_batches = 0;
        r.resume = 1;
        CHECK_EQ_INT(run(src, out, 2, 2, 2, PLAN_BF16, 1, &r, &st, &e), 0);
        CHECK_MSG(same_dirs(clean, out), "resume after failure at batch %" PRIu64 " differs", at);
        /* files committed before the failure (stage 0) are kept, not rewritten */
        CHECK_EQ_INT(st.files_kept, committed);
        CHECK_EQ_INT(st.files_written, 4 - committed);
        saw_stage1 |= committed == 2;
    }
    CHECK_MSG(saw_stage1, "no failure injected after stage 0 committed");
    CHECK(total > 0);
    /* resume over a complete directory keeps everything and rewrites the same manifest */
    o.fail_after_batches = 0;
    o.resume = 1;
    CHECK_EQ_INT(run(src, out, 2, 2, 2, PLAN_BF16, 1, &o, &st, &e), 0);
    CHECK_EQ_INT(st.files_kept, 4);
    CHECK_EQ_INT(st.files_written, 0);
    CHECK(same_dirs(clean, out));
    /* a damaged kept file is detected and rewritten */
    char victim[1200];
    snprintf(victim, sizeof victim, "%s/model-pp01-tp00-of-pp02-tp02.safetensors", out);
    FILE *f = fopen(victim, "r+b");
    CHECK(f);
    if (f) {
        fseek(f, 5000, SEEK_SET);
        fputc(0x5a, f);
        fclose(f);
    }
    CHECK_EQ_INT(run(src, out, 2, 2, 2, PLAN_BF16, 1, &o, &st, &e), 0);
    CHECK_EQ_INT(st.files_kept, 3);
    CHECK_EQ_INT(st.files_written, 1);
    CHECK(same_dirs(clean, out));
}

TEST(shard_other_plan_files_are_removed)
{
    char src[1024], out[1024];
    snprintf(src, sizeof src, "%s", test_path("ck"));
    snprintf(out, sizeof out, "%s", test_path("out"));
    make_tiny(src);
    sh_opts o;
    memset(&o, 0, sizeof o);
    dsr1_err e;
    CHECK_EQ_INT(run(src, out, 2, 2, 1, PLAN_FP8, 0, &o, NULL, &e), 0);
    CHECK_EQ_INT(run(src, out, 1, 1, 1, PLAN_FP8, 0, &o, NULL, &e), 0);
    CHECK_EQ_INT(count_matching(out, "-of-pp01-tp02"), 0);
    CHECK_EQ_INT(count_matching(out, "-of-pp01-tp01"), 1);
}
