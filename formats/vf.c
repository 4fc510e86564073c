/* vf: verification engine (see vf.h for the checks and their order). */
#include "vf.h"
#include "fu.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ck.h"
#include "dtype.h"
#include "ld.h"

#define MAX_REASONS 64

/* ---- plan expectation ---- */

void vf_expect_init(vf_expect *e)
{
    e->tp = e->ep = e->pp = e->dp = e->world_size = e->nodes = e->gpus_per_node = e->mtp = -1;
    e->dtype[0] = 0;
}

int vf_expect_set(vf_expect *e, const char *key, const char *value, dsr1_err *err)
{
    if (strcmp(key, "dtype") == 0) {
        if (strcmp(value, "fp8") != 0 && strcmp(value, "bf16") != 0)
            return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "dtype=%s: expected fp8 or bf16", value);
        snprintf(e->dtype, sizeof e->dtype, "%s", value);
        return 0;
    }
    struct { const char *k; int64_t *v; } keys[] = {
        {"tp", &e->tp}, {"ep", &e->ep}, {"pp", &e->pp}, {"dp", &e->dp},
        {"world_size", &e->world_size}, {"world", &e->world_size}, {"nodes", &e->nodes},
        {"gpus_per_node", &e->gpus_per_node}, {"mtp", &e->mtp},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        if (strcmp(key, keys[i].k) != 0)
            continue;
        char *end;
        errno = 0;
        unsigned long long x = strtoull(value, &end, 10);
        if (!*value || *end || errno || value[0] == '-' || value[0] == '+' || x > 1000000 ||
            (keys[i].v == &e->mtp && x > 1) || (keys[i].v != &e->mtp && x == 0))
            return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "%s=%s: expected %s", key, value,
                                keys[i].v == &e->mtp ? "0 or 1" : "a positive integer");
        *keys[i].v = (int64_t)x;
        return 0;
    }
    return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                        "unknown plan key \"%s\" (known: tp ep pp dp world_size nodes "
                        "gpus_per_node mtp dtype)",
                        key);
}

int vf_expect_check(const vf_expect *e, const mf_plan *p, char *msg, size_t cap)
{
    size_t o = 0;
    int bad = 0;
    msg[0] = 0;
#define VF_CMP(field, name)                                                                    \
    if (e->field >= 0 && (int64_t)p->field != e->field) {                                     \
        o += (size_t)snprintf(msg + o, o < cap ? cap - o : 0, "%s%s is %" PRIu32 ", expected %" PRId64, \
                              bad++ ? "; " : "", name, (uint32_t)p->field, e->field);          \
    }
    VF_CMP(tp, "tp")
    VF_CMP(ep, "ep")
    VF_CMP(pp, "pp")
    VF_CMP(dp, "dp")
    VF_CMP(world_size, "world_size")
    VF_CMP(nodes, "nodes")
    VF_CMP(gpus_per_node, "gpus_per_node")
#undef VF_CMP
    if (e->mtp >= 0 && (int64_t)(p->mtp != 0) != e->mtp)
        o += (size_t)snprintf(msg + o, o < cap ? cap - o : 0, "%smtp is %d, expected %d", bad++ ? "; " : "",
                              p->mtp != 0, (int)e->mtp);
    if (e->dtype[0] && strcmp(e->dtype, p->dtype) != 0)
        o += (size_t)snprintf(msg + o, o < cap ? cap - o : 0, "%sdtype is %s, expected %s",
                              bad++ ? "; " : "", p->dtype, e->dtype);
    return bad != 0;
}

/* ---- XXH128SUMS ---- */

int vf_sums_check(const mf_manifest *m, hx128 manifest_digest, char *const *files,
                  const hx128 *digests, size_t n, char *msg, size_t cap)
{
    int bad = 0;
    char a[HX_HEX_LEN + 1], b[HX_HEX_LEN + 1];
    msg[0] = 0;
#define VF_FIRST(...) do { if (bad++ == 0) snprintf(msg, cap, __VA_ARGS__); } while (0)
    int seen_manifest = 0;
    unsigned char *seen = calloc(m->n_shards ? m->n_shards : 1, 1);
    if (!seen) {
        snprintf(msg, cap, "out of memory");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(files[i], "manifest.json") == 0) {
            if (seen_manifest++) {
                VF_FIRST("XXH128SUMS lists manifest.json twice");
                continue;
            }
            if (!hx_eq(digests[i], manifest_digest)) {
                hx_hex(manifest_digest, a);
                hx_hex(digests[i], b);
                VF_FIRST("manifest.json has xxh3_128 %s, XXH128SUMS says %s: the manifest was edited "
                         "after dsr1-shard wrote it",
                         a, b);
            }
            continue;
        }
        size_t k = 0;
        while (k < m->n_shards && strcmp(m->shards[k].file, files[i]) != 0)
            k++;
        if (k == m->n_shards) {
            VF_FIRST("XXH128SUMS lists %s, which the manifest does not", files[i]);
            continue;
        }
        if (seen[k]++) {
            VF_FIRST("XXH128SUMS lists %s twice", files[i]);
            continue;
        }
        if (!hx_eq(digests[i], m->shards[k].xxh3_128)) {
            hx_hex(digests[i], a);
            hx_hex(m->shards[k].xxh3_128, b);
            VF_FIRST("XXH128SUMS gives %s xxh3_128 %s, the manifest %s", files[i], a, b);
        }
    }
    if (!seen_manifest)
        VF_FIRST("XXH128SUMS has no line for manifest.json");
    for (size_t k = 0; k < m->n_shards; k++)
        if (!seen[k])
            VF_FIRST("XXH128SUMS has no line for %s", m->shards[k].file);
#undef VF_FIRST
    free(seen);
    return bad;
}

long vf_shards_of_ranks(const mf_manifest *m, const uint32_t *ranks, size_t n, size_t *out,
                        dsr1_err *err)
{
    unsigned char *mark = calloc(m->n_shards ? m->n_shards : 1, 1);
    if (!mark) {
        dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const mf_shard *s = mf_shard_of_rank(m, ranks[i]);
        if (!s) {
            free(mark);
            dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                         "rank %" PRIu32 " is not in this deployment (world size %" PRIu32 ")",
                         ranks[i], m->plan.world_size);
            return -1;
        }
        mark[s - m->shards] = 1;
    }
    size_t k = 0;
    for (size_t i = 0; i < m->n_shards; i++)
        if (mark[i])
            out[k++] = i;
    free(mark);
    return (long)k;
}

/* ---- per-item reasons ---- */

typedef struct reasons {
    size_t n, more;
    char *r[MAX_REASONS];
} reasons;

static void add_reason(reasons *rs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_reason(reasons *rs, const char *fmt, ...)
{
    if (rs->n == MAX_REASONS) {
        rs->more++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (s)
        rs->r[rs->n++] = s;
}

static void clear_reasons(reasons *rs)
{
    for (size_t i = 0; i < rs->n; i++)
        free(rs->r[i]);
    rs->n = rs->more = 0;
}

/* An error message without its leading "<path>: " (the item line names the file). */
static const char *strip_path(const char *msg, const char *path)
{
    size_t n = strlen(path);
    if (strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ')
        return msg + n + 2;
    return msg;
}

typedef struct run {
    const char *dir;
    const vf_opts *o;
    vf_item_fn item;
    void *item_ctx;
    vf_progress_fn progress;
    void *progress_ctx;
    vf_summary *sum;
    uint64_t total, done_before; /* progress across shards */
    const char *cur_file;
    int io_error;
    dsr1_err io_err;
} run;

static int cmp_reason(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void emit(run *r, const char *file, reasons *rs, uint64_t bytes)
{
    /* Parallel checks find problems in any order; sorted output is reproducible. */
    qsort(rs->r, rs->n, sizeof *rs->r, cmp_reason);
    if (rs->more)
        add_reason(rs, "%zu more problems not listed", rs->more);
    vf_item it = {file, rs->n == 0, bytes, rs->n, (const char *const *)rs->r};
    if (rs->n)
        r->sum->files_failed++;
    else
        r->sum->files_ok++;
    if (r->item)
        r->item(r->item_ctx, &it);
    clear_reasons(rs);
}

static void on_bad(void *ctx, const mf_tensor *t, const char *msg)
{
    (void)t;
    add_reason(ctx, "%s", msg);
}

static void on_progress(void *ctx, uint64_t done)
{
    run *r = ctx;
    if (r->progress)
        r->progress(r->progress_ctx, r->done_before + done, r->total, r->cur_file);
}

/* ---- source rebuild check ---- */

typedef struct src_ref {
    size_t shard, tensor;
    const st_tensor *src, *scale; /* source views (scale for dequant_bf16) */
} src_ref;

static const mf_tensor *ref_t(const mf_manifest *m, const src_ref *x)
{
    return &m->shards[x->shard].tensors[x->tensor];
}

static const mf_manifest *g_sort_m; /* qsort context; the check runs single-threaded here */
static int cmp_ref(const void *a, const void *b)
{
    const mf_tensor *x = ref_t(g_sort_m, a), *y = ref_t(g_sort_m, b);
    int c = strcmp(x->source.name, y->source.name);
    if (c)
        return c;
    if (x->source.start != y->source.start)
        return x->source.start < y->source.start ? -1 : 1;
    return ((const src_ref *)a)->shard < ((const src_ref *)b)->shard ? -1 : 1;
}

static void shape_txt(char *buf, size_t n, int ndim, const uint64_t *shape)
{
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* Compare one shard tensor with its source. Returns 0 when equal, else writes msg. */
static int check_values(const mf_tensor *t, const src_ref *x, const uint8_t *shard_base, float *scratch,
                        size_t scratch_elems, char *msg, size_t cap)
{
    const st_tensor *s = x->src;
    const mf_slice *sl = &t->source;
    uint64_t want[ST_MAX_DIMS];
    memcpy(want, s->shape, sizeof want);
    if (sl->dim >= 0) {
        if (sl->dim >= s->ndim || sl->end > s->shape[sl->dim] || sl->start >= sl->end) {
            snprintf(msg, cap, "source range dim %d [%" PRIu64 ", %" PRIu64 ") is outside source %s",
                     sl->dim, sl->start, sl->end, sl->name);
            return 1;
        }
        want[sl->dim] = sl->end - sl->start;
    }
    int same = t->ndim == s->ndim;
    for (int d = 0; same && d < s->ndim; d++)
        same = want[d] == t->shape[d];
    if (!same) {
        char a[128], b[128];
        shape_txt(a, sizeof a, t->ndim, t->shape);
        shape_txt(b, sizeof b, s->ndim, want);
        snprintf(msg, cap, "shape %s, the source slice has %s", a, b);
        return 1;
    }
    const uint8_t *dst = shard_base + t->offset;
    if (s->ndim == 0) { /* a scalar: only a whole copy makes sense */
        if (sl->dim >= 0 || t->dtype != s->dtype || strcmp(t->transform, "copy") != 0 ||
            memcmp(dst, s->data, st_dtype_size(s->dtype)) != 0) {
            snprintf(msg, cap, "differs from the scalar source %s", sl->name);
            return 1;
        }
        return 0;
    }
    int dim = sl->dim < 0 ? 0 : sl->dim;
    uint64_t start = sl->dim < 0 ? 0 : sl->start;
    if (strcmp(t->transform, "copy") == 0) {
        if (t->dtype != s->dtype) {
            snprintf(msg, cap, "dtype %s, source %s is %s", st_dtype_name(t->dtype), sl->name,
                     st_dtype_name(s->dtype));
            return 1;
        }
        /* narrow(dim): outer blocks of `inner` bytes each. */
        uint64_t outer = 1, inner = st_dtype_size(s->dtype);
        for (int d = 0; d < dim; d++)
            outer *= s->shape[d];
        for (int d = dim + 1; d < s->ndim; d++)
            inner *= s->shape[d];
        uint64_t span = want[dim] * inner, full = s->ndim ? s->shape[dim] * inner : inner;
        const uint8_t *src = s->data;
        for (uint64_t o = 0; o < outer; o++) {
            const uint8_t *a = dst + o * span, *b = src + o * full + start * inner;
            if (memcmp(a, b, span) != 0) {
                uint64_t k = 0;
                while (a[k] == b[k])
                    k++;
                snprintf(msg, cap,
                         "differs from source %s at shard byte %" PRIu64 " (tensor byte %" PRIu64 ")",
                         sl->name, t->offset + o * span + k, o * span + k);
                return 1;
            }
        }
        return 0;
    }
    if (strcmp(t->transform, "dequant_bf16") == 0) {
        if (s->dtype != ST_F8_E4M3 || t->dtype != ST_BF16 || s->ndim != 2 || !x->scale) {
            snprintf(msg, cap, "dequant_bf16 needs an F8_E4M3 [rows, cols] source with a scale_inv "
                               "and a BF16 shard tensor");
            return 1;
        }
        uint64_t rows = s->shape[0], cols = s->shape[1];
        uint64_t sr = (rows + DT_BLOCK - 1) / DT_BLOCK, sc = (cols + DT_BLOCK - 1) / DT_BLOCK;
        if (x->scale->dtype != ST_F32 || x->scale->ndim != 2 || x->scale->shape[0] != sr ||
            x->scale->shape[1] != sc) {
            snprintf(msg, cap, "source scale of %s is not F32 [%" PRIu64 ", %" PRIu64 "]", sl->name, sr,
                     sc);
            return 1;
        }
        uint64_t r0 = dim == 0 ? start : 0, r1 = dim == 0 ? start + want[0] : rows;
        uint64_t c0 = dim == 1 ? start : 0, nc = want[1];
        uint64_t step = scratch_elems / cols;
        const uint16_t *got = (const uint16_t *)dst;
        for (uint64_t r = r0; r < r1; r += step) {
            uint64_t re = r + step < r1 ? r + step : r1;
            dt_block_dequant_rows(s->data, x->scale->data, rows, cols, r, re, scratch);
            for (uint64_t i = r; i < re; i++)
                for (uint64_t j = 0; j < nc; j++) {
                    uint16_t ref = dt_f32_to_bf16(scratch[(i - r) * cols + c0 + j]);
                    uint16_t have = got[(i - r0) * nc + j];
                    if (ref != have) {
                        snprintf(msg, cap,
                                 "element [%" PRIu64 ", %" PRIu64 "] (shard byte %" PRIu64
                                 ") is bf16 0x%04x, the dequantized source %s gives 0x%04x",
                                 i - r0, j, t->offset + ((i - r0) * nc + j) * 2, have, sl->name, ref);
                        return 1;
                    }
                }
        }
        return 0;
    }
    return -1; /* transform not checked here */
}

static int source_check(run *r, const mf_manifest *m, ld_shard **open, const size_t *sel, size_t nsel,
                        reasons *shard_rs, int coverage, dsr1_err *err)
{
    ck_ckpt *c = NULL;
    int rc = ck_open(&c, r->o->source, err);
    if (rc != 0) {
        dsr1_err_prefix(err, "--source");
        return rc;
    }
    size_t nref = 0;
    for (size_t k = 0; k < nsel; k++)
        nref += m->shards[sel[k]].n_tensors;
    src_ref *refs = calloc(nref ? nref : 1, sizeof *refs);
    reasons src_rs = {0};
    if (!refs) {
        ck_close(c);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    size_t q = 0;
    for (size_t k = 0; k < nsel; k++) {
        const mf_shard *sh = &m->shards[sel[k]];
        for (size_t i = 0; i < sh->n_tensors; i++) {
            refs[q].shard = sel[k];
            refs[q].tensor = i;
            q++;
        }
    }
    /* Open the source views serially (ck caches files and is not thread-safe). */
    for (size_t i = 0; i < nref; i++) {
        const mf_tensor *t = ref_t(m, &refs[i]);
        dsr1_err e2;
        if (ck_tensor(c, t->source.name, NULL, &refs[i].src, &e2) != 0) {
            refs[i].src = NULL;
            if (e2.status == DSR1_E_IO || e2.status == DSR1_E_NOMEM) {
                *err = e2;
                rc = e2.status;
                goto out;
            }
            add_reason(&shard_rs[refs[i].shard], "tensor %s: source %s: %s", t->name, t->source.name,
                       e2.msg);
            continue;
        }
        if (strcmp(t->transform, "dequant_bf16") == 0) {
            char sname[600];
            snprintf(sname, sizeof sname, "%s_scale_inv", t->source.name);
            if (ck_tensor(c, sname, NULL, &refs[i].scale, &e2) != 0)
                refs[i].scale = NULL;
        }
    }
    /* Values, in parallel over tensors. */
    size_t scratch_elems = (size_t)8 << 20;
    int nomem = 0;
    size_t checked = 0, unchecked = 0;
#pragma omp parallel reduction(+ : checked, unchecked)
    {
        float *scratch = malloc(scratch_elems * sizeof(float));
        if (!scratch) {
#pragma omp atomic write
            nomem = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (size_t i = 0; i < nref; i++) {
            if (!scratch || !refs[i].src)
                continue;
            const mf_tensor *t = ref_t(m, &refs[i]);
            size_t k = 0;
            while (sel[k] != refs[i].shard)
                k++;
            if (refs[i].src->ndim == 2 && refs[i].src->shape[1] > scratch_elems) {
                unchecked++;
                continue;
            }
            char msg[512];
            int v = check_values(t, &refs[i], st_base(ld_file(open[k])), scratch, scratch_elems, msg,
                                 sizeof msg);
            if (v < 0) {
                unchecked++;
                continue;
            }
            checked++;
            if (v > 0) {
#pragma omp atomic
                r->sum->source_tensors_differ++;
#pragma omp critical(vf_src)
                add_reason(&shard_rs[refs[i].shard], "tensor %s bytes [%" PRIu64 ", %" PRIu64 "): %s",
                           t->name, t->offset, t->offset + t->bytes, msg);
            }
        }
        free(scratch);
    }
    r->sum->source_tensors_checked += checked;
    r->sum->source_tensors_unchecked += unchecked;
    if (nomem) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory for the source check");
        goto out;
    }
    /* Coverage needs every shard of the deployment. */
    if (!coverage)
        goto out;
    g_sort_m = m;
    qsort(refs, nref, sizeof *refs, cmp_ref);
    for (uint32_t p = 0; p < m->plan.pp; p++) {
        reasons rs = {0};
        size_t i = 0;
        while (i < nref) {
            size_t j = i;
            const char *name = ref_t(m, &refs[i])->source.name;
            while (j < nref && strcmp(ref_t(m, &refs[j])->source.name, name) == 0)
                j++;
            /* refs[i, j) hold `name` across all stages; keep this stage's. */
            int dim = -2;
            uint64_t at = 0, size = 0;
            const src_ref *whole = NULL, *prev = NULL;
            for (size_t a = i; a < j; a++) {
                const mf_tensor *t = ref_t(m, &refs[a]);
                const mf_shard *sh = &m->shards[refs[a].shard];
                if (sh->pp_stage != p)
                    continue;
                if (dim == -2) {
                    dim = t->source.dim;
                    if (dim >= 0 && refs[a].src && dim < refs[a].src->ndim)
                        size = refs[a].src->shape[dim];
                }
                if (t->source.dim != dim) {
                    add_reason(&rs, "source %s is split along dim %d in %s and %d in %s", name, dim,
                               m->shards[prev ? prev->shard : refs[a].shard].file, t->source.dim,
                               sh->file);
                    break;
                }
                if (dim < 0) {
                    if (whole && !hx_eq(ref_t(m, whole)->xxh3_128, t->xxh3_128))
                        add_reason(&rs, "whole copies of %s differ between %s and %s", name,
                                   m->shards[whole->shard].file, sh->file);
                    if (!whole)
                        whole = &refs[a];
                } else {
                    if (t->source.start > at)
                        add_reason(&rs, "%s dim %d elements [%" PRIu64 ", %" PRIu64 ") held by no shard",
                                   name, dim, at, t->source.start);
                    else if (t->source.start < at)
                        add_reason(&rs, "%s dim %d elements [%" PRIu64 ", %" PRIu64
                                        ") held twice (%s and %s)",
                                   name, dim, t->source.start, at < t->source.end ? at : t->source.end,
                                   m->shards[prev->shard].file, sh->file);
                    if (t->source.end > at)
                        at = t->source.end;
                }
                prev = &refs[a];
            }
            if (dim >= 0 && refs[i].src && at < size)
                add_reason(&rs, "%s dim %d elements [%" PRIu64 ", %" PRIu64 ") held by no shard", name, dim,
                           at, size);
            i = j;
        }
        char label[64];
        snprintf(label, sizeof label, "(source) pp stage %" PRIu32, p);
        emit(r, label, &rs, 0);
    }
    /* Every expected checkpoint tensor is held somewhere. */
    ck_tensor_desc *desc = NULL;
    size_t nd = 0;
    if (ck_expected_tensors(ck_cfg(c), m->plan.mtp, &desc, &nd, err) != 0) {
        rc = err->status;
        goto out;
    }
    int bf16 = strcmp(m->plan.dtype, "bf16") == 0;
    for (size_t d = 0; d < nd; d++) {
        if (bf16 && desc[d].is_scale)
            continue;
        size_t lo = 0, hi = nref;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            int cmp = strcmp(ref_t(m, &refs[mid])->source.name, desc[d].name);
            if (cmp < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == nref || strcmp(ref_t(m, &refs[lo])->source.name, desc[d].name) != 0)
            add_reason(&src_rs, "checkpoint tensor %s is held by no shard", desc[d].name);
    }
    free(desc);
    emit(r, "(source) checkpoint", &src_rs, 0);
out:
    clear_reasons(&src_rs);
    free(refs);
    ck_close(c);
    return rc;
}

/* ---- the run ---- */

static int is_listed(const mf_manifest *m, const char *name)
{
    if (strcmp(name, "manifest.json") == 0 || strcmp(name, "XXH128SUMS") == 0)
        return 1;
    for (size_t k = 0; k < m->n_shards; k++)
        if (strcmp(m->shards[k].file, name) == 0)
            return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    const char *x = *(char *const *)a, *y = *(char *const *)b;
    return strcmp(x ? x : "", y ? y : "");
}

static void describe_ranks(const vf_opts *o, char *buf, size_t cap)
{
    if (!o->ranks) {
        snprintf(buf, cap, "all shards");
        return;
    }
    size_t w = (size_t)snprintf(buf, cap, "rank%s ", o->n_ranks > 1 ? "s" : "");
    for (size_t i = 0; i < o->n_ranks && w < cap; i++) {
        size_t j = i;
        while (j + 1 < o->n_ranks && o->ranks[j + 1] == o->ranks[j] + 1)
            j++;
        if (j > i)
            w += (size_t)snprintf(buf + w, cap - w, "%s%" PRIu32 "-%" PRIu32, i ? "," : "", o->ranks[i],
                                  o->ranks[j]);
        else
            w += (size_t)snprintf(buf + w, cap - w, "%s%" PRIu32, i ? "," : "", o->ranks[i]);
        i = j;
    }
}

int vf_run(const char *dir, const vf_opts *o, vf_item_fn item, void *item_ctx, vf_progress_fn progress,
           void *progress_ctx, vf_summary *sum, dsr1_err *err)
{
    vf_summary local;
    if (!sum)
        sum = &local;
    memset(sum, 0, sizeof *sum);
    dsr1_err_clear(err);
    double t0 = fu_now_s();
    run r = {dir, o, item, item_ctx, progress, progress_ctx, sum, 0, 0, NULL, 0, {0}};
    describe_ranks(o, sum->ranks_desc, sizeof sum->ranks_desc);
    reasons rs = {0};
    mf_manifest *m = NULL;
    char *buf = NULL, **sfiles = NULL;
    hx128 *sdig = NULL;
    size_t slen = 0, sn = 0, nsel = 0;
    size_t *sel = NULL;
    ld_shard **open = NULL;
    reasons *shard_rs = NULL;
    int rc = 0;

    /* 1. manifest.json and XXH128SUMS */
    char *mpath = fu_join(dir, "manifest.json"), *spath = fu_join(dir, "XXH128SUMS");
    if (!mpath || !spath) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto done;
    }
    dsr1_err rerr;
    dsr1_err_clear(&rerr);
    if (fu_read_all(mpath, (uint64_t)4 << 30, 0, &buf, &slen, &rerr) != 0) {
        if (rerr.sys_errno == ENOENT || rerr.sys_errno == ENOTDIR) {
            struct stat dsb;
            if (stat(dir, &dsb) != 0)
                add_reason(&rs, "missing: %s does not exist", dir);
            else if (!S_ISDIR(dsb.st_mode))
                add_reason(&rs, "missing: %s is a file, not a directory (pass the directory that holds "
                                "manifest.json)",
                           dir);
            else
                add_reason(&rs, "missing: %s is not a dsr1-shard output directory (or it is incomplete: "
                                "dsr1-shard writes manifest.json last)",
                           dir);
            emit(&r, "manifest.json", &rs, 0);
            rc = DSR1_E_MISMATCH;
        } else {
            if (err)
                *err = rerr;
            rc = rerr.status;
        }
        goto done;
    }
    hx128 mdig = hx_buf(buf, slen);
    dsr1_err e2;
    if (mf_parse(&m, buf, slen, mpath, &e2) != 0) {
        if (e2.status == DSR1_E_NOMEM) {
            *err = e2;
            rc = e2.status;
            goto done;
        }
        add_reason(&rs, "%s", strip_path(e2.msg, mpath));
        emit(&r, "manifest.json", &rs, slen);
        rc = DSR1_E_MISMATCH;
        goto done;
    }
    reasons ss = {0};
    if (mf_sums_read(spath, &sfiles, &sdig, &sn, &e2) != 0) {
        if (e2.status == DSR1_E_IO && e2.sys_errno != ENOENT) {
            *err = e2;
            rc = e2.status;
            goto done;
        }
        if (e2.status == DSR1_E_IO)
            add_reason(&ss, "missing: the manifest's own digest cannot be checked");
        else
            add_reason(&ss, "%s", strip_path(e2.msg, spath));
    } else {
        char msg[1024];
        int bad = vf_sums_check(m, mdig, sfiles, sdig, sn, msg, sizeof msg);
        /* The manifest.json line is the manifest's problem; other lines the sums'. */
        if (bad && strncmp(msg, "manifest.json has", 17) == 0)
            add_reason(&rs, "%s", msg);
        else if (bad)
            add_reason(&ss, "%s%s", msg, bad > 1 ? " (and more)" : "");
    }
    /* 2. plan */
    if (o->expect) {
        char msg[512];
        if (vf_expect_check(o->expect, &m->plan, msg, sizeof msg))
            add_reason(&rs, "made for another plan: %s", msg);
    }
    int manifest_ok = rs.n == 0;
    emit(&r, "manifest.json", &rs, slen);
    emit(&r, "XXH128SUMS", &ss, 0);

    /* 3. shards */
    sel = calloc(m->n_shards ? m->n_shards : 1, sizeof *sel);
    open = calloc(m->n_shards ? m->n_shards : 1, sizeof *open);
    shard_rs = calloc(m->n_shards ? m->n_shards : 1, sizeof *shard_rs);
    if (!sel || !open || !shard_rs) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto done;
    }
    if (o->ranks) {
        long k = vf_shards_of_ranks(m, o->ranks, o->n_ranks, sel, err);
        if (k < 0) {
            rc = DSR1_E_USAGE;
            goto done;
        }
        nsel = (size_t)k;
    } else {
        for (size_t k = 0; k < m->n_shards; k++)
            sel[k] = k;
        nsel = m->n_shards;
    }
    if (!o->quick)
        for (size_t k = 0; k < nsel; k++)
            r.total += m->shards[sel[k]].bytes * (o->file_hashes ? 2 : 1);
    for (size_t k = 0; k < nsel; k++) {
        const mf_shard *sh = &m->shards[sel[k]];
        reasons *srs = &shard_rs[sel[k]];
        ld_shard *s = NULL;
        char *path = fu_join(dir, sh->file);
        if (!path) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto done;
        }
        r.cur_file = sh->file;
        uint64_t hashed = 0;
        if (ld_open(&s, m, dir, sel[k], 0, &e2) != 0) {
            if (e2.status == DSR1_E_IO || e2.status == DSR1_E_NOMEM) {
                add_reason(srs, "%s", strip_path(e2.msg, path));
                if (!r.io_error)
                    r.io_err = e2;
                r.io_error = 1;
            } else {
                add_reason(srs, "%s", strip_path(e2.msg, path));
            }
        } else if (!o->quick) {
            int bad = ld_hash_check_progress(s, on_bad, srs, on_progress, &r, &e2);
            if (bad < 0) {
                add_reason(srs, "%s", strip_path(e2.msg, path));
                if (!r.io_error)
                    r.io_err = e2;
                r.io_error = 1;
            } else {
                hashed += sh->bytes;
                sum->tensors_hashed += sh->n_tensors;
            }
            r.done_before += sh->bytes;
            if (o->file_hashes && bad >= 0) {
                hx128 h;
                if (hx_file(path, &h, &e2) != 0) {
                    add_reason(srs, "%s", strip_path(e2.msg, path));
                    if (!r.io_error)
                        r.io_err = e2;
                    r.io_error = 1;
                } else if (!hx_eq(h, sh->xxh3_128)) {
                    char a[HX_HEX_LEN + 1], b[HX_HEX_LEN + 1];
                    hx_hex(h, a);
                    hx_hex(sh->xxh3_128, b);
                    add_reason(srs, "whole-file xxh3_128 %s, manifest %s", a, b);
                } else {
                    hashed += sh->bytes;
                }
                r.done_before += sh->bytes;
                on_progress(&r, 0);
            }
        }
        if (s && srs->n == 0)
            sum->shards_checked++;
        sum->bytes_hashed += hashed;
        free(path);
        if (o->source && s) {
            open[k] = s; /* kept for the value check */
        } else {
            ld_close(s);
            emit(&r, sh->file, srs, hashed);
        }
    }
    /* 4. extra files (whole directory only: with ranks we touch nothing else) */
    if (!o->ranks) {
        DIR *d = opendir(dir);
        if (!d) {
            rc = dsr1_err_set(err, DSR1_E_IO, 0, errno, "cannot list %s", dir);
            goto done;
        }
        struct dirent *de;
        char **extra = NULL;
        size_t nx = 0;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.' || is_listed(m, de->d_name))
                continue;
            struct stat sb;
            char *p = fu_join(dir, de->d_name);
            if (p && lstat(p, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
                char **ne = realloc(extra, (nx + 1) * sizeof *extra);
                if (ne) {
                    extra = ne;
                    extra[nx++] = strdup(de->d_name);
                }
            }
            free(p);
        }
        closedir(d);
        if (nx)
            qsort(extra, nx, sizeof *extra, cmp_str);
        for (size_t i = 0; i < nx; i++) {
            if (!extra[i])
                continue;
            add_reason(&rs, "extra file: not in the manifest (a shard of another run or plan?)");
            emit(&r, extra[i], &rs, 0);
            free(extra[i]);
        }
        free(extra);
    }
    /* 5. source */
    if (o->source) {
        size_t nopen = 0;
        size_t *osel = calloc(nsel ? nsel : 1, sizeof *osel);
        ld_shard **oo = calloc(nsel ? nsel : 1, sizeof *oo);
        if (!osel || !oo) {
            free(osel);
            free(oo);
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto done;
        }
        for (size_t k = 0; k < nsel; k++)
            if (open[k]) {
                osel[nopen] = sel[k];
                oo[nopen++] = open[k];
            }
        int all_open = nopen == nsel;
        int src = source_check(&r, m, oo, osel, nopen, shard_rs, !o->ranks && all_open, &e2);
        if (src != 0) {
            if (e2.status == DSR1_E_IO || e2.status == DSR1_E_NOMEM) {
                if (!r.io_error)
                    r.io_err = e2;
                r.io_error = 1;
            } else {
                reasons xs = {0};
                add_reason(&xs, "%s", e2.msg);
                emit(&r, "(source) checkpoint", &xs, 0);
            }
        }
        if (!all_open && !o->ranks) {
            reasons xs = {0};
            add_reason(&xs, "coverage not checked: some shards could not be opened");
            emit(&r, "(source) coverage", &xs, 0);
        }
        for (size_t k = 0; k < nsel; k++) {
            if (!open[k])
                continue;
            ld_close(open[k]);
            open[k] = NULL;
            emit(&r, m->shards[sel[k]].file, &shard_rs[sel[k]], 0);
        }
        free(osel);
        free(oo);
    }
    if (r.io_error) {
        *err = r.io_err;
        rc = r.io_err.status;
    } else if (sum->files_failed || !manifest_ok) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, 0, 0, "%zu of %zu files FAILED", sum->files_failed,
                          sum->files_ok + sum->files_failed);
    } else if (sum->shards_checked == 0) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, 0, 0, "nothing verified: no shard was checked");
    }
done:
    if (rc == DSR1_E_MISMATCH && err->status == 0)
        dsr1_err_set(err, DSR1_E_MISMATCH, 0, 0, "%zu of %zu files FAILED", sum->files_failed,
                     sum->files_ok + sum->files_failed);
    sum->seconds = fu_now_s() - t0;
    if (open)
        for (size_t k = 0; k < nsel; k++)
            ld_close(open[k]);
    if (shard_rs && m)
        for (size_t k = 0; k < m->n_shards; k++)
            clear_reasons(&shard_rs[k]);
    clear_reasons(&rs);
    free(shard_rs);
    free(open);
    free(sel);
    for (size_t i = 0; i < sn; i++)
        free(sfiles[i]);
    free(sfiles);
    free(sdig);
    mf_free(m);
    free(buf);
    free(mpath);
    free(spath);
    return rc;
}
