/* dsr1-inspect: summarize and validate an HF DeepSeek-V3/R1 checkpoint directory or a
 * single safetensors file; dequantized statistics of one tensor
 * (docs/tools/dsr1-inspect.md). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ck.h"
#include "cli.h"
#include "dtype.h"
#include "hx.h"
#include "mf.h"
#include "st.h"

static const char usage_text[] =
    "usage: dsr1-inspect PATH [--tensor NAME] [--json] [--hash] [--max-problems N] [--quiet]\n";

static void help(void)
{
    fputs(usage_text, stdout);
    fputs("\nPATH is an HF checkpoint directory (config.json + model.safetensors.index.json), a\n"
          "dsr1-shard output directory (manifest.json), or one .safetensors file.\n\n"
          "  --tensor NAME     dequantized statistics of one tensor (FP8 via its weight_scale_inv)\n"
          "  --json            machine-readable output on stdout\n"
          "  --hash            (file) add each tensor's XXH3-128 of its raw bytes\n"
          "  --max-problems N  problems listed on stderr (default 20; JSON keeps up to 1000)\n"
          "  --quiet           no summary; problems and errors still go to stderr\n"
          "  -h, --help        this help\n\n"
          "exit: 0 valid, 1 invalid checkpoint/file (problems listed), 2 usage, 3 I/O error\n",
          stdout);
}

static int usage(const char *fmt, const char *arg)
{
    fputs("dsr1-inspect: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fputs(usage_text, stderr);
    return 2;
}

static struct {
    int json, quiet, hash;
    uint64_t max_problems;
} opt = {0, 0, 0, 20};

static const char *commas(uint64_t v, char *buf)
{
    char t[32];
    int len = snprintf(t, sizeof t, "%" PRIu64, v), k = 0;
    for (int i = 0; i < len; i++) {
        if (i && (len - i) % 3 == 0)
            buf[k++] = ',';
        buf[k++] = t[i];
    }
    buf[k] = 0;
    return buf;
}

static void shape_str(char *b, size_t n, int ndim, const uint64_t *shape)
{
    size_t k = (size_t)snprintf(b, n, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += (size_t)snprintf(b + k, n - k, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (k < n)
        snprintf(b + k, n - k, "]");
}

static json_t *shape_json(int ndim, const uint64_t *shape)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++)
        json_array_append_new(a, json_integer((json_int_t)shape[i]));
    return a;
}

static void emit_json(json_t *o)
{
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(o);
}

/* ---------------------------------------------------------------- problems */

typedef struct problems {
    uint64_t n;
    json_t *list; /* JSON mode */
} problems;

static void problem(problems *p, const char *msg)
{
    if (opt.json) {
        if (json_array_size(p->list) < 1000)
            json_array_append_new(p->list, json_string(msg));
    } else if (p->n < opt.max_problems) {
        fprintf(stderr, "dsr1-inspect: problem: %s\n", msg);
    }
    p->n++;
}

static void report_cb(void *ctx, const char *msg) { problem(ctx, msg); }

static void problems_done(problems *p)
{
    if (!opt.json && p->n > opt.max_problems)
        fprintf(stderr, "dsr1-inspect: ... and %" PRIu64 " more problems (--max-problems N)\n",
                p->n - opt.max_problems);
}

/* ------------------------------------------------------------------- stats */

typedef struct stats {
    uint64_t n, nan, inf;   /* n = finite values */
    double mean, m2, min, max;
} stats;

/* Chan et al.: merge two partial (count, mean, M2); applied in chunk order so the
 * result does not depend on the thread count. */
static void stats_merge(stats *a, const stats *b)
{
    a->nan += b->nan;
    a->inf += b->inf;
    if (!b->n)
        return;
    if (!a->n) {
        uint64_t nan = a->nan, inf = a->inf;
        *a = *b;
        a->nan = nan;
        a->inf = inf;
        return;
    }
    double n = (double)(a->n + b->n), d = b->mean - a->mean;
    a->mean += d * (double)b->n / n;
    a->m2 += b->m2 + d * d * (double)a->n * (double)b->n / n;
    a->n += b->n;
    if (b->min < a->min)
        a->min = b->min;
    if (b->max > a->max)
        a->max = b->max;
}

static void stats_chunk(const float *x, size_t n, stats *s)
{
    memset(s, 0, sizeof *s);
    double sum = 0, mn = INFINITY, mx = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        if (isnan(v)) {
            s->nan++;
        } else if (isinf(v)) {
            s->inf++;
        } else {
            s->n++;
            sum += v;
            if (v < mn)
                mn = v;
            if (v > mx)
                mx = v;
        }
    }
    if (!s->n)
        return;
    s->mean = sum / (double)s->n;
    double m2 = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(x[i])) {
            double d = x[i] - s->mean;
            m2 += d * d;
        }
    s->m2 = m2;
    s->min = mn;
    s->max = mx;
}

static float load_elem(const uint8_t *p, st_dtype dt)
{
    switch (dt) {
    case ST_BOOL:
    case ST_U8: return (float)p[0];
    case ST_I8: return (float)(int8_t)p[0];
    case ST_F8_E4M3: return dt_fp8_to_f32(p[0]);
    case ST_F8_E5M2: return dt_f16_to_f32((uint16_t)(p[0] << 8)); /* E5M2 = top byte of F16 */
    case ST_I16: { int16_t v; memcpy(&v, p, 2); return (float)v; }
    case ST_U16: { uint16_t v; memcpy(&v, p, 2); return (float)v; }
    case ST_F16: { uint16_t v; memcpy(&v, p, 2); return dt_f16_to_f32(v); }
    case ST_BF16: { uint16_t v; memcpy(&v, p, 2); return dt_bf16_to_f32(v); }
    case ST_I32: { int32_t v; memcpy(&v, p, 4); return (float)v; }
    case ST_U32: { uint32_t v; memcpy(&v, p, 4); return (float)v; }
    case ST_F32: { float v; memcpy(&v, p, 4); return v; }
    case ST_F64: { double v; memcpy(&v, p, 8); return (float)v; }
    case ST_I64: { int64_t v; memcpy(&v, p, 8); return (float)v; }
    case ST_U64: { uint64_t v; memcpy(&v, p, 8); return (float)v; }
    default: return NAN;
    }
}

#define STAT_CHUNK (1u << 20)

/* Stats over t's values; FP8 E4M3 with `scale` (its weight_scale_inv) is dequantized
 * by 128-row blocks. Bounded memory: one chunk per thread. */
static int tensor_stats(const st_tensor *t, const st_tensor *scale, stats *out, char *why, size_t wn)
{
    memset(out, 0, sizeof *out);
    const size_t esz = st_dtype_size(t->dtype);
    float *sc = NULL;
    uint64_t rows = 1, cols = t->nelem, unit;
    if (scale) {
        rows = t->shape[0];
        cols = t->nelem / (rows ? rows : 1);
        uint64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
        if (t->ndim != 2 || scale->dtype != ST_F32 || scale->ndim != 2 || scale->shape[0] != br ||
            scale->shape[1] != bc) {
            snprintf(why, wn, "%s: scale %s does not fit a [%" PRIu64 ", %" PRIu64 "] FP8 weight "
                     "(want F32 [%" PRIu64 ", %" PRIu64 "])", t->name, scale->name, rows, cols, br, bc);
            return -1;
        }
        sc = malloc(scale->nbytes ? scale->nbytes : 1);
        if (!sc) {
            snprintf(why, wn, "out of memory");
            return -1;
        }
        memcpy(sc, scale->data, scale->nbytes); /* the mapping need not be 4-byte aligned */
        unit = 128 * cols;
    } else {
        unit = STAT_CHUNK;
    }
    const uint64_t n = t->nelem;
    const long nchunks = n ? (long)((n + unit - 1) / unit) : 0;
    stats *part = calloc(nchunks ? (size_t)nchunks : 1, sizeof *part);
    if (!part) {
        free(sc);
        snprintf(why, wn, "out of memory");
        return -1;
    }
    int oom = 0;
#pragma omp parallel
    {
        float *buf = malloc(unit * sizeof *buf);
        if (!buf) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (long c = 0; c < nchunks; c++) {
            if (!buf)
                continue;
            uint64_t e0 = (uint64_t)c * unit, e1 = e0 + unit < n ? e0 + unit : n;
            const uint8_t *src = (const uint8_t *)t->data;
            if (sc)
                dt_block_dequant_rows(src, sc, rows, cols, (size_t)(e0 / cols), (size_t)(e1 / cols), buf);
            else
                for (uint64_t i = e0; i < e1; i++)
                    buf[i - e0] = load_elem(src + i * esz, t->dtype);
            stats_chunk(buf, (size_t)(e1 - e0), &part[c]);
        }
        free(buf);
    }
    for (long c = 0; c < nchunks; c++)
        stats_merge(out, &part[c]);
    free(part);
    free(sc);
    if (oom) {
        snprintf(why, wn, "out of memory");
        return -1;
    }
    return 0;
}

static json_t *num_or_null(double v, int have) { return have ? json_real(v) : json_null(); }

static void print_stats(const st_tensor *t, const char *file, const st_tensor *scale, const stats *s)
{
    double sd = s->n ? sqrt(s->m2 / (double)s->n) : 0;
    char sh[128], b[32];
    shape_str(sh, sizeof sh, t->ndim, t->shape);
    if (opt.json) {
        json_t *o = json_object();
        json_object_set_new(o, "tensor", json_string(t->name));
        json_object_set_new(o, "file", json_string(file));
        json_object_set_new(o, "dtype", json_string(st_dtype_name(t->dtype)));
        json_object_set_new(o, "shape", shape_json(t->ndim, t->shape));
        json_object_set_new(o, "bytes", json_integer((json_int_t)t->nbytes));
        json_object_set_new(o, "scale", scale ? json_string(scale->name) : json_null());
        json_object_set_new(o, "count", json_integer((json_int_t)t->nelem));
        json_object_set_new(o, "finite", json_integer((json_int_t)s->n));
        json_object_set_new(o, "min", num_or_null(s->min, s->n > 0));
        json_object_set_new(o, "max", num_or_null(s->max, s->n > 0));
        json_object_set_new(o, "mean", num_or_null(s->mean, s->n > 0));
        json_object_set_new(o, "std", num_or_null(sd, s->n > 0));
        json_object_set_new(o, "nan", json_integer((json_int_t)s->nan));
        json_object_set_new(o, "inf", json_integer((json_int_t)s->inf));
        emit_json(o);
        return;
    }
    if (opt.quiet)
        return;
    printf("tensor   %s\n", t->name);
    printf("file     %s\n", file);
    printf("dtype    %s %s, %s bytes\n", st_dtype_name(t->dtype), sh, commas(t->nbytes, b));
    if (scale) {
        char ss[128];
        shape_str(ss, sizeof ss, scale->ndim, scale->shape);
        printf("scale    %s %s F32 (values below are dequantized)\n", scale->name, ss);
    }
    printf("count    %s\n", commas(t->nelem, b));
    if (s->n) {
        printf("min      %.9g\nmax      %.9g\nmean     %.9g\nstd      %.9g\n", s->min, s->max, s->mean, sd);
    } else {
        printf("min      -\nmax      -\nmean     -\nstd      -\n");
    }
    printf("nan      %" PRIu64 "\ninf      %" PRIu64 "\n", s->nan, s->inf);
}

/* -------------------------------------------------------------- file mode */

static int exit_for(const dsr1_err *e)
{
    /* A file that is present but malformed is an invalid input (1); I/O is 3. */
    return dsr1_err_exit_code(e);
}

static int do_file(const char *path, const char *tensor)
{
    st_file *f;
    dsr1_err e;
    if (st_open(&f, path, &e)) {
        fprintf(stderr, "dsr1-inspect: %s\n", e.msg);
        return exit_for(&e);
    }
    int rc = 0;
    if (tensor) {
        const st_tensor *t = st_find(f, tensor), *s = NULL;
        if (!t) {
            fprintf(stderr, "dsr1-inspect: %s has no tensor named %s\n", path, tensor);
            st_close(f);
            return 2;
        }
        if (t->dtype == ST_F8_E4M3) {
            char sn[512];
            snprintf(sn, sizeof sn, "%s_scale_inv", tensor);
            s = st_find(f, sn);
            if (!s) {
                fprintf(stderr, "dsr1-inspect: %s: FP8 tensor %s has no %s in this file; inspect "
                        "the checkpoint directory so the index can locate it\n", path, tensor, sn);
                st_close(f);
                return 1;
            }
        }
        stats st;
        char why[512];
        if (tensor_stats(t, s, &st, why, sizeof why)) {
            fprintf(stderr, "dsr1-inspect: %s: %s\n", path, why);
            rc = 1;
        } else {
            print_stats(t, path, s, &st);
        }
        st_close(f);
        return rc;
    }
    uint64_t cnt[ST_DTYPE_COUNT] = {0}, by[ST_DTYPE_COUNT] = {0}, total = 0;
    size_t n = st_count(f);
    hx128 *h = NULL;
    if (opt.hash) {
        h = calloc(n ? n : 1, sizeof *h);
        const void **ptrs = calloc(n ? n : 1, sizeof *ptrs);
        size_t *lens = calloc(n ? n : 1, sizeof *lens);
        if (!h || !ptrs || !lens) {
            fprintf(stderr, "dsr1-inspect: out of memory\n");
            free(h);
            free(ptrs);
            free(lens);
            st_close(f);
            return 3;
        }
        for (size_t i = 0; i < n; i++) {
            ptrs[i] = st_get(f, i)->data;
            lens[i] = st_get(f, i)->nbytes;
        }
        hx_many(ptrs, lens, n, h);
        free(ptrs);
        free(lens);
    }
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_get(f, i);
        cnt[t->dtype]++;
        by[t->dtype] += t->nbytes;
        total += t->nbytes;
    }
    char b[32], b2[32], hex[HX_HEX_LEN + 1];
    if (opt.json) {
        json_t *o = json_object(), *ts = json_array(), *md = json_object(), *bd = json_object();
        json_object_set_new(o, "path", json_string(path));
        json_object_set_new(o, "kind", json_string("safetensors"));
        json_object_set_new(o, "valid", json_true());
        json_object_set_new(o, "file_size", json_integer((json_int_t)st_file_size(f)));
        json_object_set_new(o, "header_len", json_integer((json_int_t)st_header_len(f)));
        json_object_set_new(o, "data_start", json_integer((json_int_t)st_data_start(f)));
        json_object_set_new(o, "tensor_count", json_integer((json_int_t)n));
        json_object_set_new(o, "bytes", json_integer((json_int_t)total));
        for (size_t i = 0; i < st_meta_count(f); i++) {
            const char *k, *v;
            st_meta_at(f, i, &k, &v);
            json_object_set_new(md, k, json_string(v));
        }
        json_object_set_new(o, "metadata", md);
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (cnt[d])
                json_object_set_new(bd, st_dtype_name((st_dtype)d),
                                    json_pack("{s:I,s:I}", "tensors", (json_int_t)cnt[d], "bytes",
                                              (json_int_t)by[d]));
        json_object_set_new(o, "by_dtype", bd);
        for (size_t i = 0; i < n; i++) {
            const st_tensor *t = st_get(f, i);
            json_t *e = json_pack("{s:s,s:s,s:o,s:I,s:I,s:I}", "name", t->name, "dtype",
                                  st_dtype_name(t->dtype), "shape", shape_json(t->ndim, t->shape),
                                  "offset", (json_int_t)t->file_offset, "begin", (json_int_t)t->begin,
                                  "bytes", (json_int_t)t->nbytes);
            if (h) {
                hx_hex(h[i], hex);
                json_object_set_new(e, "xxh3_128", json_string(hex));
            }
            json_array_append_new(ts, e);
        }
        json_object_set_new(o, "tensors", ts);
        emit_json(o);
    } else if (!opt.quiet) {
        printf("file        %s\n", path);
        printf("size        %s bytes (header %s, data from %s)\n", commas(st_file_size(f), b),
               commas(st_header_len(f), b2), commas(st_data_start(f), hex));
        printf("tensors     %s\n", commas(n, b));
        printf("bytes       %s\n", commas(total, b));
        for (size_t i = 0; i < st_meta_count(f); i++) {
            const char *k, *v;
            st_meta_at(f, i, &k, &v);
            printf("metadata    %s = %s\n", k, v);
        }
        printf("by dtype\n");
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (cnt[d])
                printf("  %-10s %10s tensors %20s bytes\n", st_dtype_name((st_dtype)d), commas(cnt[d], b),
                       commas(by[d], b2));
        printf("tensors (data order)\n");
        for (size_t i = 0; i < n; i++) {
            const st_tensor *t = st_get(f, i);
            char sh[128];
            shape_str(sh, sizeof sh, t->ndim, t->shape);
            if (h)
                hx_hex(h[i], hex);
            printf("  %-60s %-8s %-16s %14s B @ %s%s%s\n", t->name, st_dtype_name(t->dtype), sh,
                   commas(t->nbytes, b), commas(t->file_offset, b2), h ? "  " : "", h ? hex : "");
        }
    }
    free(h);
    st_close(f);
    return 0;
}

/* -------------------------------------------------------- checkpoint mode */

static int cmp_desc(const void *a, const void *b)
{
    return strcmp((*(const ck_tensor_desc *const *)a)->name, (*(const ck_tensor_desc *const *)b)->name);
}

static const ck_tensor_desc *lookup(const ck_tensor_desc *const *sorted, size_t n, const char *name)
{
    ck_tensor_desc key;
    snprintf(key.name, sizeof key.name, "%s", name);
    if (strlen(name) >= sizeof key.name)
        return NULL;
    const ck_tensor_desc *kp = &key;
    const ck_tensor_desc *const *hit = bsearch(&kp, sorted, n, sizeof *sorted, cmp_desc);
    return hit ? *hit : NULL;
}

static int ckpt_tensor(ck_ckpt *c, const ck_tensor_desc *const *sorted, size_t n, const char *name)
{
    dsr1_err e;
    const ck_tensor_desc *d = lookup(sorted, n, name);
    const char *file = ck_index_file_of(c, name);
    if (!file) {
        if (d) {
            fprintf(stderr, "dsr1-inspect: %s: tensor %s is part of the architecture but missing "
                    "from the index\n", ck_dir(c), name);
            return 1;
        }
        fprintf(stderr, "dsr1-inspect: %s: no tensor named %s in the index\n", ck_dir(c), name);
        return 2;
    }
    const st_tensor *t, *s = NULL;
    if (ck_tensor(c, name, d, &t, &e)) {
        fprintf(stderr, "dsr1-inspect: %s\n", e.msg);
        return exit_for(&e);
    }
    if (t->dtype == ST_F8_E4M3) {
        char sn[512];
        snprintf(sn, sizeof sn, "%s_scale_inv", name);
        if (ck_tensor(c, sn, lookup(sorted, n, sn), &s, &e)) {
            fprintf(stderr, "dsr1-inspect: FP8 tensor %s needs its scale: %s\n", name, e.msg);
            return exit_for(&e);
        }
    }
    stats st;
    char why[512];
    if (tensor_stats(t, s, &st, why, sizeof why)) {
        fprintf(stderr, "dsr1-inspect: %s\n", why);
        return 1;
    }
    char fp[4096];
    snprintf(fp, sizeof fp, "%s/%s", ck_dir(c), file);
    print_stats(t, fp, s, &st);
    return 0;
}

typedef struct tally {
    uint64_t count, bytes;
} tally;

static int do_ckpt(const char *dir, const char *tensor)
{
    ck_ckpt *c;
    dsr1_err e;
    if (ck_open(&c, dir, &e)) {
        fprintf(stderr, "dsr1-inspect: %s\n", e.msg);
        /* A checkpoint directory lacking config.json or the index is invalid, not an I/O fault. */
        if ((e.code == CK_ERR_CONFIG_OPEN || e.code == CK_ERR_INDEX_OPEN) && e.sys_errno == ENOENT)
            return 1;
        return exit_for(&e);
    }
    const ck_config *cfg = ck_cfg(c);
    const int mtp = cfg->num_nextn_predict_layers > 0 && ck_index_has_mtp(c);
    ck_tensor_desc *exp;
    size_t n_exp;
    if (ck_expected_tensors(cfg, 1, &exp, &n_exp, &e)) {
        fprintf(stderr, "dsr1-inspect: %s\n", e.msg);
        ck_close(c);
        return exit_for(&e);
    }
    const ck_tensor_desc **sorted = malloc((n_exp ? n_exp : 1) * sizeof *sorted);
    if (!sorted) {
        fprintf(stderr, "dsr1-inspect: out of memory\n");
        free(exp);
        ck_close(c);
        return 3;
    }
    for (size_t i = 0; i < n_exp; i++)
        sorted[i] = &exp[i];
    qsort(sorted, n_exp, sizeof *sorted, cmp_desc);
    int rc = 0;
    if (tensor) {
        rc = ckpt_tensor(c, sorted, n_exp, tensor);
        goto done;
    }

    problems pr = {0, opt.json ? json_array() : NULL};
    json_t *warnings = json_array();
    ck_check_index(c, mtp, report_cb, &pr, &e);

    /* Summary over the index entries the architecture knows (shapes from the config). */
    tally by_dt[ST_DTYPE_COUNT] = {{0}}, by_grp[CK_GROUP_COUNT] = {{0}}, all = {0};
    uint64_t unexpected = 0;
    const size_t n_idx = ck_index_count(c);
    for (size_t i = 0; i < n_idx; i++) {
        const char *tn, *fn;
        ck_index_at(c, i, &tn, &fn);
        const ck_tensor_desc *d = lookup(sorted, n_exp, tn);
        if (!d || (!mtp && d->layer >= (int32_t)cfg->num_hidden_layers)) {
            unexpected++;
            continue;
        }
        all.count++;
        all.bytes += d->nbytes;
        by_dt[d->dtype].count++;
        by_dt[d->dtype].bytes += d->nbytes;
        ck_group g = ck_tensor_group(cfg, d);
        by_grp[g].count++;
        by_grp[g].bytes += d->nbytes;
    }
    char wb[512], b1[32], b2[32];
    const uint64_t ts = ck_index_total_size(c);
    if (ts && ts != all.bytes) {
        snprintf(wb, sizeof wb, "metadata.total_size %s differs from the tensor bytes %s derived from "
                 "the config", commas(ts, b1), commas(all.bytes, b2));
        json_array_append_new(warnings, json_string(wb));
        if (!opt.json)
            fprintf(stderr, "dsr1-inspect: warning: %s\n", wb);
    }

    /* Weight files: checked when any is present (none = a metadata-only layout). */
    const size_t nf = ck_file_count(c);
    size_t present = 0, files_ok = 0;
    uint64_t checked = 0;
    for (size_t i = 0; i < nf; i++)
        present += ck_file_exists(c, i);
    if (present) {
        char *bad = calloc(nf ? nf : 1, 1);
        if (!bad) {
            fprintf(stderr, "dsr1-inspect: out of memory\n");
            rc = 3;
            goto done;
        }
        for (size_t i = 0; i < nf; i++) {
            st_file *sf;
            if (ck_file_open(c, i, &sf, &e)) {
                problem(&pr, e.msg);
                bad[i] = 1;
                if (e.status == DSR1_E_IO || e.status == DSR1_E_NOMEM)
                    rc = 3;
                continue;
            }
            files_ok++;
            /* Every tensor in the file must be indexed to this file. */
            for (size_t k = 0; k < st_count(sf); k++) {
                const st_tensor *t = st_get(sf, k);
                const char *mapped = ck_index_file_of(c, t->name);
                if (!mapped || strcmp(mapped, ck_file_at(c, i)) != 0) {
                    snprintf(wb, sizeof wb, "%s/%s holds tensor %s, which the index %s%s", dir,
                             ck_file_at(c, i), t->name, mapped ? "maps to " : "does not list",
                             mapped ? mapped : "");
                    problem(&pr, wb);
                }
            }
        }
        for (size_t i = 0; i < n_idx; i++) {
            const char *tn, *fn;
            ck_index_at(c, i, &tn, &fn);
            size_t lo = 0, hi = nf; /* files are sorted */
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (strcmp(ck_file_at(c, mid), fn) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo < nf && bad[lo])
                continue;
            const ck_tensor_desc *d = lookup(sorted, n_exp, tn);
            const st_tensor *t;
            if (ck_tensor(c, tn, d, &t, &e))
                problem(&pr, e.msg);
            checked++;
        }
        free(bad);
    }
    problems_done(&pr);

    uint32_t dense = 0, moe = 0;
    for (uint32_t L = 0; L < cfg->num_hidden_layers; L++)
        ck_layer_is_moe(cfg, L) ? moe++ : dense++;
    if (opt.json) {
        json_t *o = json_object(), *bd = json_object(), *bg = json_object();
        json_object_set_new(o, "path", json_string(dir));
        json_object_set_new(o, "kind", json_string("checkpoint"));
        json_object_set_new(o, "valid", json_boolean(pr.n == 0));
        json_object_set_new(
            o, "config",
            json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "model_type", "deepseek_v3",
                      "num_hidden_layers", (json_int_t)cfg->num_hidden_layers, "dense_layers",
                      (json_int_t)dense, "moe_layers", (json_int_t)moe, "num_nextn_predict_layers",
                      (json_int_t)cfg->num_nextn_predict_layers, "hidden_size",
                      (json_int_t)cfg->hidden_size, "num_attention_heads",
                      (json_int_t)cfg->num_attention_heads, "n_routed_experts",
                      (json_int_t)cfg->n_routed_experts, "num_experts_per_tok",
                      (json_int_t)cfg->num_experts_per_tok, "vocab_size", (json_int_t)cfg->vocab_size,
                      "fp8", cfg->fp8));
        json_object_set_new(o, "index", json_pack("{s:I,s:I,s:o}", "tensors", (json_int_t)n_idx, "files",
                                                  (json_int_t)nf, "total_size",
                                                  ts ? json_integer((json_int_t)ts) : json_null()));
        json_object_set_new(o, "mtp", json_boolean(mtp));
        json_object_set_new(o, "tensors", json_integer((json_int_t)all.count));
        json_object_set_new(o, "unexpected", json_integer((json_int_t)unexpected));
        json_object_set_new(o, "bytes", json_integer((json_int_t)all.bytes));
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (by_dt[d].count)
                json_object_set_new(bd, st_dtype_name((st_dtype)d),
                                    json_pack("{s:I,s:I}", "tensors", (json_int_t)by_dt[d].count,
                                              "bytes", (json_int_t)by_dt[d].bytes));
        for (int g = 0; g < CK_GROUP_COUNT; g++)
            json_object_set_new(bg, ck_group_name((ck_group)g),
                                json_pack("{s:I,s:I}", "tensors", (json_int_t)by_grp[g].count,
                                          "bytes", (json_int_t)by_grp[g].bytes));
        json_object_set_new(o, "by_dtype", bd);
        json_object_set_new(o, "by_class", bg);
        json_object_set_new(o, "weights",
                            json_pack("{s:b,s:I,s:I,s:I}", "present", present > 0, "files",
                                      (json_int_t)present, "files_ok", (json_int_t)files_ok,
                                      "tensors_checked", (json_int_t)checked));
        json_object_set_new(o, "problem_count", json_integer((json_int_t)pr.n));
        json_object_set_new(o, "problems", pr.list);
        json_object_set_new(o, "warnings", warnings);
        warnings = NULL;
        emit_json(o);
    } else if (!opt.quiet) {
        char hb[CLI_BYTES_LEN];
        printf("checkpoint  %s\n", dir);
        printf("config      deepseek_v3: %u layers (%u dense, %u MoE)%s, hidden %u, %u heads, "
               "%u routed experts (top-%u, %u groups, top-%u groups) + %u shared, vocab %u, %s\n",
               cfg->num_hidden_layers, dense, moe,
               cfg->num_nextn_predict_layers ? (mtp ? " + MTP" : " + MTP (not in the index)") : "",
               cfg->hidden_size, cfg->num_attention_heads, cfg->n_routed_experts,
               cfg->num_experts_per_tok, cfg->n_group, cfg->topk_group, cfg->n_shared_experts,
               cfg->vocab_size, cfg->fp8 ? "block-FP8 128x128" : "unquantized (BF16)");
        printf("index       %s tensors in %zu files", commas(n_idx, b1), nf);
        if (ts)
            printf(", metadata.total_size %s", commas(ts, b2));
        printf("\n");
        printf("tensors     %s", commas(all.count, b1));
        if (unexpected)
            printf(" (+ %s unexpected)", commas(unexpected, b2));
        printf("\nbytes       %s (%s)\n", commas(all.bytes, b1), cli_format_bytes(all.bytes, 1, hb, sizeof hb));
        printf("by dtype\n");
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (by_dt[d].count)
                printf("  %-16s %10s tensors %22s bytes\n", st_dtype_name((st_dtype)d),
                       commas(by_dt[d].count, b1), commas(by_dt[d].bytes, b2));
        printf("by class\n");
        for (int g = 0; g < CK_GROUP_COUNT; g++)
            printf("  %-16s %10s tensors %22s bytes\n", ck_group_name((ck_group)g),
                   commas(by_grp[g].count, b1), commas(by_grp[g].bytes, b2));
        if (present)
            printf("weights     %zu of %zu files present, %zu readable, %s tensors checked\n", present, nf,
                   files_ok, commas(checked, b1));
        else
            printf("weights     none present (metadata-only layout: config.json + index)\n");
        if (pr.n)
            printf("result      INVALID: %s problem%s (listed on stderr)\n", commas(pr.n, b1),
                   pr.n == 1 ? "" : "s");
        else
            printf("result      valid\n");
    }
    json_decref(warnings);
    if (rc == 0 && pr.n)
        rc = 1;
done:
    free(sorted);
    free(exp);
    ck_close(c);
    return rc;
}

/* ------------------------------------------------------- shard set mode */

/* A dsr1-shard output directory: summarize manifest.json (read-only, through mf_load)
 * and check that every shard file is there with its recorded size. Integrity (hashes)
 * is dsr1-verify's job; this reads no shard bytes. */
static int do_shard_dir(const char *dir)
{
    char mp[4096], b1[32], b2[32], b3[32], hb[CLI_BYTES_LEN];
    snprintf(mp, sizeof mp, "%s/manifest.json", dir);
    mf_manifest *m;
    dsr1_err e;
    if (mf_load(&m, mp, &e)) {
        fprintf(stderr, "dsr1-inspect: %s\n", e.msg);
        return e.status == DSR1_E_IO || e.status == DSR1_E_NOMEM ? 3 : 1;
    }
    problems pr = {0, opt.json ? json_array() : NULL};
    char id[HX_HEX_LEN + 1];
    hx_hex(m->manifest_id, id);
    uint64_t bytes = 0, tensors = 0, src_bytes = 0;
    size_t present = 0;
    int *ok = calloc(m->n_shards ? m->n_shards : 1, sizeof *ok);
    for (size_t i = 0; i < m->n_shards; i++) {
        const mf_shard *sh = &m->shards[i];
        bytes += sh->bytes;
        tensors += sh->n_tensors;
        char fp[4096], msg[4400];
        snprintf(fp, sizeof fp, "%s/%s", dir, sh->file);
        struct stat sb;
        if (stat(fp, &sb) != 0) {
            snprintf(msg, sizeof msg, "%s: %s (the manifest lists it)", fp, strerror(errno));
            problem(&pr, msg);
        } else if ((uint64_t)sb.st_size != sh->bytes) {
            snprintf(msg, sizeof msg, "%s: %" PRIu64 " bytes, the manifest says %" PRIu64, fp,
                     (uint64_t)sb.st_size, sh->bytes);
            problem(&pr, msg);
        } else if (ok) {
            ok[i] = 1;
            present++;
        }
    }
    for (size_t i = 0; i < m->n_sources; i++)
        src_bytes += m->sources[i].bytes;
    char sp[4096];
    snprintf(sp, sizeof sp, "%s/XXH128SUMS", dir);
    struct stat ssb;
    int have_sums = stat(sp, &ssb) == 0;
    if (!have_sums)
        problem(&pr, "XXH128SUMS is missing (dsr1-shard writes it before manifest.json)");
    const ck_config *cfg = &m->config;
    const mf_plan *pl = &m->plan;
    if (opt.json) {
        json_t *o = json_object(), *sa = json_array(), *ra = json_array();
        json_object_set_new(o, "path", json_string(dir));
        json_object_set_new(o, "kind", json_string("shard_set"));
        json_object_set_new(o, "valid", json_boolean(pr.n == 0));
        json_object_set_new(o, "manifest_id", json_string(id));
        json_object_set_new(o, "tool", json_string(m->tool ? m->tool : ""));
        json_object_set_new(o, "architecture", json_string(m->architecture ? m->architecture : ""));
        json_object_set_new(o, "plan", json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:b}", "tp", (json_int_t)pl->tp,
                                                 "ep", (json_int_t)pl->ep, "pp", (json_int_t)pl->pp, "dp",
                                                 (json_int_t)pl->dp, "world_size", (json_int_t)pl->world_size,
                                                 "nodes", (json_int_t)pl->nodes, "gpus_per_node",
                                                 (json_int_t)pl->gpus_per_node, "dtype", pl->dtype, "mtp", pl->mtp));
        for (size_t i = 0; i < m->n_shards; i++) {
            const mf_shard *sh = &m->shards[i];
            json_array_append_new(sa, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "file", sh->file, "pp_stage",
                                                (json_int_t)sh->pp_stage, "tp_rank", (json_int_t)sh->tp_rank,
                                                "layer_first", (json_int_t)sh->layer_first, "layer_last",
                                                (json_int_t)sh->layer_last, "tensors", (json_int_t)sh->n_tensors,
                                                "bytes", (json_int_t)sh->bytes, "present", ok && ok[i]));
        }
        for (size_t i = 0; i < m->n_ranks; i++) {
            const mf_rank *r = &m->ranks[i];
            json_array_append_new(ra, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "rank", (json_int_t)r->rank, "node",
                                                (json_int_t)r->node, "local_rank", (json_int_t)r->local_rank, "dp",
                                                (json_int_t)r->dp, "pp", (json_int_t)r->pp, "tp", (json_int_t)r->tp,
                                                "shard", m->shards[r->shard].file));
        }
        json_object_set_new(o, "shards", sa);
        json_object_set_new(o, "ranks", ra);
        json_object_set_new(o, "tensors", json_integer((json_int_t)tensors));
        json_object_set_new(o, "bytes", json_integer((json_int_t)bytes));
        json_object_set_new(o, "source", json_pack("{s:I,s:I}", "files", (json_int_t)m->n_sources, "bytes",
                                                   (json_int_t)src_bytes));
        json_object_set_new(o, "files_present", json_integer((json_int_t)present));
        json_object_set_new(o, "xxh128sums", json_boolean(have_sums));
        json_object_set_new(o, "problem_count", json_integer((json_int_t)pr.n));
        json_object_set_new(o, "problems", pr.list);
        emit_json(o);
    } else {
        problems_done(&pr);
        if (!opt.quiet) {
            uint32_t dense = 0, moe = 0;
            for (uint32_t L = 0; L < cfg->num_hidden_layers; L++)
                ck_layer_is_moe(cfg, L) ? moe++ : dense++;
            printf("shard set   %s\n", dir);
            printf("manifest    %s, manifest_id %s\n", m->tool ? m->tool : "?", id);
            printf("config      deepseek_v3: %u layers (%u dense, %u MoE)%s, hidden %u, %u heads, %u routed experts "
                   "+ %u shared, vocab %u, %s\n",
                   cfg->num_hidden_layers, dense, moe, pl->mtp ? " + MTP" : "", cfg->hidden_size,
                   cfg->num_attention_heads, cfg->n_routed_experts, cfg->n_shared_experts, cfg->vocab_size,
                   cfg->fp8 ? "block-FP8 128x128 source" : "BF16 source");
            printf("plan        tp=%u ep=%u pp=%u dp=%u -> %u ranks on %u node%s x %u GPUs; dtype %s%s\n", pl->tp,
                   pl->ep, pl->pp, pl->dp, pl->world_size, pl->nodes, pl->nodes == 1 ? "" : "s", pl->gpus_per_node,
                   pl->dtype, pl->mtp ? "; MTP layer included" : "");
            printf("shards      %zu files, %s tensors, %s bytes (%s), from %zu source files (%s bytes)\n", m->n_shards,
                   commas(tensors, b1), commas(bytes, b2), cli_format_bytes(bytes, 1, hb, sizeof hb), m->n_sources,
                   commas(src_bytes, b3));
            printf("  %-44s %5s %4s %9s %9s %17s  %s\n", "file", "stage", "tp", "layers", "tensors", "bytes", "on disk");
            for (size_t i = 0; i < m->n_shards; i++) {
                const mf_shard *sh = &m->shards[i];
                char lay[32];
                if (sh->layer_first < 0)
                    snprintf(lay, sizeof lay, "-");
                else
                    snprintf(lay, sizeof lay, "%d-%d", sh->layer_first, sh->layer_last);
                printf("  %-44s %5u %4u %9s %9zu %17s  %s\n", sh->file, sh->pp_stage, sh->tp_rank, lay, sh->n_tensors,
                       commas(sh->bytes, b1), ok && ok[i] ? "ok" : "MISSING/SIZE");
            }
            printf("ranks\n  %5s %5s %5s %4s %4s %4s  %s\n", "rank", "node", "local", "dp", "pp", "tp", "shard");
            for (size_t i = 0; i < m->n_ranks; i++) {
                const mf_rank *r = &m->ranks[i];
                printf("  %5u %5u %5u %4u %4u %4u  %s\n", r->rank, r->node, r->local_rank, r->dp, r->pp, r->tp,
                       m->shards[r->shard].file);
            }
            printf("files       %zu of %zu shard files present with the recorded size; XXH128SUMS %s "
                   "(contents not hashed here: dsr1-verify %s)\n",
                   present, m->n_shards, have_sums ? "present" : "MISSING", dir);
            printf("result      %s\n", pr.n ? "incomplete" : "complete");
        }
    }
    free(ok);
    mf_free(m);
    return pr.n ? 1 : 0;
}

int main(int argc, char **argv)
{
    enum { O_TENSOR = 256, O_JSON, O_QUIET, O_HASH, O_MAXP };
    static const struct option lo[] = {
        {"tensor", required_argument, 0, O_TENSOR}, {"json", no_argument, 0, O_JSON},
        {"quiet", no_argument, 0, O_QUIET},         {"hash", no_argument, 0, O_HASH},
        {"max-problems", required_argument, 0, O_MAXP}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *tensor = NULL;
    int c, rc, maxp_given = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        switch (c) {
        case 'h': help(); return 0;
        case O_TENSOR:
            if (tensor)
                return usage("%s", "--tensor given twice: one tensor per run");
            tensor = optarg;
            break;
        case O_JSON: opt.json = 1; break;
        case O_QUIET: opt.quiet = 1; break;
        case O_HASH: opt.hash = 1; break;
        case O_MAXP:
            if (maxp_given++)
                return usage("%s", "--max-problems given twice");
            if ((rc = cli_parse_u64(optarg, 0, UINT64_MAX, &opt.max_problems)))
                return usage("--max-problems: %s", cli_strerror(rc));
            break;
        case ':': return usage("option %s needs a value", argv[optind - 1]);
        default: return usage("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage("%s", "PATH is required");
    if (optind + 1 < argc)
        return usage("unexpected argument \"%s\"", argv[optind + 1]);
    if (tensor && !*tensor)
        return usage("%s", "--tensor needs a name");
    const char *path = argv[optind];
    struct stat sb;
    if (stat(path, &sb) != 0) {
        fprintf(stderr, "dsr1-inspect: cannot access %s: %s\n", path, strerror(errno));
        return 3;
    }
    if (S_ISDIR(sb.st_mode)) {
        char p1[4096], p2[4096];
        struct stat s1, s2;
        snprintf(p1, sizeof p1, "%s/config.json", path);
        snprintf(p2, sizeof p2, "%s/model.safetensors.index.json", path);
        char p3[4096];
        struct stat s3;
        snprintf(p3, sizeof p3, "%s/manifest.json", path);
        if (stat(p1, &s1) != 0 && stat(p2, &s2) != 0 && stat(p3, &s3) == 0) {
            if (tensor)
                return usage("--tensor NAME on a shard set: give one shard file, e.g. %s/model-pp00-tp00-...", path);
            if (opt.hash)
                return usage("%s", "--hash applies to a single .safetensors file (dsr1-verify hashes a shard set)");
            return do_shard_dir(path);
        }
        if (stat(p1, &s1) != 0 && stat(p2, &s2) != 0) {
            fprintf(stderr, "dsr1-inspect: %s is not a checkpoint directory: it has neither config.json "
                    "nor model.safetensors.index.json (dsr1-inspect reads HF checkpoint directories, "
                    "dsr1-shard output directories and single .safetensors files)\n", path);
            return 2;
        }
        if (opt.hash)
            return usage("%s", "--hash applies to a single .safetensors file");
        return do_ckpt(path, tensor);
    }
    if (!S_ISREG(sb.st_mode)) {
        fprintf(stderr, "dsr1-inspect: %s is neither a directory nor a regular file\n", path);
        return 2;
    }
    return do_file(path, tensor);
}
