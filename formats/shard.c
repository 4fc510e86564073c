/* sh: the conversion engine. See shard.h for the shape of a run and
 * docs/formats/shard.md for the file layout it produces. */
#include "shard.h"
#include "fu.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "dtype.h"
#include "hx.h"
#include "mf.h"
#include "st.h"

#define NSLOT 2                  /* read-ahead ring: one batch in use, one being read */
#define TASK_BYTES (1u << 20)    /* conversion task size (output bytes) */

/* ---- planned output ---- */

typedef struct out_t {
    size_t src;          /* plan tensor index */
    plan_slice sl;
    st_dtype dt;
    int ndim;
    uint64_t shape[2];
    uint64_t bytes;
    int dequant;
} out_t;

typedef struct shard_w {
    char file[128];
    char *path;
    uint32_t pp_stage, tp_rank;
    size_t n;
    out_t *t;            /* file order */
    mf_shard entry;      /* manifest entry, tensors in file order */
    int keep;            /* resume: bytes already match */
    st_writer *w;
    /* file hash, computed along a frontier: tensors are hashed in file order as soon as
     * every byte before them is written, while they are still in the page cache */
    uint8_t *done;       /* per tensor (file order): all bytes written */
    size_t frontier;     /* first tensor not yet hashed */
    hx_state *fh;
    int rfd;             /* the temp file, opened for reading */
} shard_w;

typedef struct dest_t {
    uint32_t shard, pos;
} dest_t;

/* One distinct slice of a source tensor, written to one or more shards. */
typedef struct group_t {
    plan_slice sl;
    int dequant;
    uint64_t c0, c1;     /* column range of the source */
    size_t out_esz;
    uint32_t d0, nd;     /* into dests */
    hx_state *h;
    double e2, r2;       /* bf16: sum (bf16 - f32)^2, sum f32^2, row by row */
} group_t;

typedef struct src_t {
    size_t ti;
    int fi;              /* source file index (ck_file_at) */
    uint64_t foff, nbytes, rows, cols;
    size_t esz;
    uint32_t g0, ng;
    int fi_scale;        /* dequant: where the scale lives */
    uint64_t scale_off, scale_bytes, scale_cols;
    float *scale;
} src_t;

typedef struct item_t {
    uint32_t src;
    uint64_t r0, r1, boff;
} item_t;

typedef struct batch_t {
    int fi;
    uint64_t off, len;
    uint32_t i0, n;
} batch_t;

typedef struct unit_t {
    uint32_t g, item;
    uint64_t a, b;       /* source rows */
    uint64_t out_off, len;
    const uint8_t *data; /* direct from the read buffer, or staging */
    uint64_t soff;       /* staging offset when staged */
    int staged;
    uint64_t rs;         /* row-sum index (dequant) */
} unit_t;

typedef struct task_t {
    uint32_t u;
    uint64_t a, b;
} task_t;

typedef struct wtask_t {
    uint32_t u, d, shard;
} wtask_t;

static int wtask_cmp(const void *a, const void *b)
{
    const wtask_t *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    if (x->u != y->u)
        return x->u < y->u ? -1 : 1;
    return x->d < y->d ? -1 : x->d > y->d;
}

typedef struct ctx {
    ck_ckpt *ck;
    const plan *p;
    const sh_opts *o;
    sh_stats *stats;
    int *fds;            /* per source file, -1 until opened */
    size_t n_files;
    shard_w *sh;         /* plan->n_shards */
    char manifest_id[HX_HEX_LEN + 1];
    char *journal;
    uint64_t batch;
    /* stage scratch */
    int32_t *pos;        /* [tp][n_tensors] writer position, -1 = not held */
    src_t *srcs;
    size_t n_srcs;
    group_t *groups;
    size_t n_groups;
    dest_t *dests;
    size_t n_dests;
    item_t *items;
    size_t n_items;
    batch_t *batches;
    size_t n_batches;
    /* reader */
    const uint8_t **maps;  /* per source file: read-only shared mapping, NULL until used */
    uint64_t *map_len;
    int64_t slot_batch[NSLOT];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int reader_failed;
    dsr1_err reader_err;
    /* worker errors */
    int failed;
    dsr1_err work_err;
    /* staging */
    uint8_t *stage_buf;
    uint64_t stage_cap;
    double *rowsum;
    uint64_t rowsum_cap;
    uint64_t batches_done;
} ctx;

static void temp_note(ctx *x, const char *path, int active)
{
    if (x->o->temp_file && path)
        x->o->temp_file(x->o->temp_ctx, path, active);
}

static void work_fail(ctx *x, const dsr1_err *e)
{
#pragma omp critical(sh_fail)
    {
        if (!x->failed) {
            x->work_err = *e;
            x->failed = 1;
        }
    }
}

/* ---- source checks ---- */

int sh_check_source(ck_ckpt *c, const plan *p, dsr1_err *err)
{
    /* unexpected tensors mean the config does not describe this checkpoint */
    dsr1_err e;
    int problems = ck_check_index(c, ck_index_has_mtp(c), NULL, NULL, &e);
    if (problems < 0) {
        *err = e;
        return problems;
    }
    for (size_t i = 0; i < p->n_tensors; i++) {
        const st_tensor *t;
        int rc = ck_tensor(c, p->tensors[i].name, &p->tensors[i], &t, err);
        if (rc) {
            if (err->status == DSR1_E_INVALID)
                err->code = SH_ERR_SOURCE;
            return rc;
        }
    }
    if (problems > 0) {
        *err = e;
        err->code = SH_ERR_SOURCE;
        return DSR1_E_INVALID;
    }
    return 0;
}

/* ---- shard layout ---- */

static int expert_bucket(const ck_tensor_desc *t, const ck_tensor_desc *all)
{
    const ck_tensor_desc *w = t->is_scale ? &all[t->weight_of] : t;
    int b = w->cls == CK_EXPERT_GATE ? 0 : w->cls == CK_EXPERT_UP ? 1 : 2;
    return 2 * b + (t->is_scale ? 1 : 0);
}

static int is_routed(const ck_tensor_desc *t, const ck_tensor_desc *all)
{
    const ck_tensor_desc *w = t->is_scale ? &all[t->weight_of] : t;
    return w->expert >= 0 && (w->cls == CK_EXPERT_GATE || w->cls == CK_EXPERT_UP || w->cls == CK_EXPERT_DOWN);
}

/* Input order (shard.md): catalogue order, a layer's routed experts regrouped by
 * projection (weights, then scales) at the end of that layer's tensors. Then the
 * stable alignment partition gives the file order. */
static int layout_shard(const plan *p, shard_w *s, dsr1_err *err)
{
    size_t cap = 0;
    for (size_t i = 0; i < p->n_tensors; i++)
        cap += p->stage_of[i] == s->pp_stage;
    out_t *in = malloc((cap ? cap : 1) * sizeof *in);
    size_t *bucket[6];
    size_t nb[6] = {0};
    for (int b = 0; b < 6; b++)
        bucket[b] = malloc((cap ? cap : 1) * sizeof *bucket[b]);
    size_t n = 0;
    int oom = !in;
    for (int b = 0; b < 6; b++)
        oom |= !bucket[b];
    if (oom)
        goto nomem;
    for (size_t i = 0; i <= p->n_tensors; i++) {
        int flush = i == p->n_tensors ||
                    (i > 0 && p->tensors[i].layer != p->tensors[i - 1].layer);
        if (flush)
            for (int b = 0; b < 6; b++) {
                for (size_t k = 0; k < nb[b]; k++) {
                    size_t j = bucket[b][k];
                    plan_slice sl;
                    plan_route(p, j, s->tp_rank, &sl);
                    out_t *o = &in[n++];
                    o->src = j;
                    o->sl = sl;
                    plan_out_tensor(p, j, &sl, &o->dt, o->shape, &o->bytes);
                    o->ndim = p->tensors[j].ndim;
                    o->dequant = o->dt != p->tensors[j].dtype;
                }
                nb[b] = 0;
            }
        if (i == p->n_tensors)
            break;
        if (p->stage_of[i] != s->pp_stage)
            continue;
        plan_slice sl;
        if (!plan_route(p, i, s->tp_rank, &sl) || !plan_out_tensor(p, i, &sl, NULL, NULL, NULL))
            continue;
        if (is_routed(&p->tensors[i], p->tensors)) {
            int b = expert_bucket(&p->tensors[i], p->tensors);
            bucket[b][nb[b]++] = i;
            continue;
        }
        out_t *o = &in[n++];
        o->src = i;
        o->sl = sl;
        plan_out_tensor(p, i, &sl, &o->dt, o->shape, &o->bytes);
        o->ndim = p->tensors[i].ndim;
        o->dequant = o->dt != p->tensors[i].dtype;
    }
    for (int b = 0; b < 6; b++)
        free(bucket[b]);
    st_spec *sp = malloc((n ? n : 1) * sizeof *sp);
    size_t *perm = malloc((n ? n : 1) * sizeof *perm);
    s->t = malloc((n ? n : 1) * sizeof *s->t);
    if (!sp || !perm || !s->t) {
        free(sp);
        free(perm);
        free(in);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory laying out %s", s->file);
    }
    for (size_t k = 0; k < n; k++) {
        memset(&sp[k], 0, sizeof sp[k]);
        sp[k].name = p->tensors[in[k].src].name;
        sp[k].dtype = in[k].dt;
        sp[k].ndim = in[k].ndim;
        sp[k].shape[0] = in[k].shape[0];
        sp[k].shape[1] = in[k].shape[1];
    }
    st_align_order(sp, n, perm);
    for (size_t k = 0; k < n; k++)
        s->t[k] = in[perm[k]];
    s->n = n;
    free(sp);
    free(perm);
    free(in);
    return 0;
nomem:
    free(in);
    for (int b = 0; b < 6; b++)
        free(bucket[b]);
    return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory laying out %s", s->file);
}

static void specs_of(const plan *p, const shard_w *s, st_spec *sp)
{
    for (size_t k = 0; k < s->n; k++) {
        memset(&sp[k], 0, sizeof sp[k]);
        sp[k].name = p->tensors[s->t[k].src].name;
        sp[k].dtype = s->t[k].dt;
        sp[k].ndim = s->t[k].ndim;
        sp[k].shape[0] = s->t[k].shape[0];
        sp[k].shape[1] = s->t[k].shape[1];
    }
}

static const char *transform_of(const out_t *o) { return o->dequant ? "dequant_bf16" : "copy"; }

/* Manifest entry skeleton (no hashes yet). */
static int entry_init(const plan *p, shard_w *s)
{
    mf_shard *e = &s->entry;
    memset(e, 0, sizeof *e);
    e->file = strdup(s->file);
    e->pp_stage = s->pp_stage;
    e->tp_rank = s->tp_rank;
    e->layer_first = p->stages[s->pp_stage].layer_first;
    e->layer_last = p->stages[s->pp_stage].layer_last;
    e->n_tensors = s->n;
    e->tensors = calloc(s->n ? s->n : 1, sizeof *e->tensors);
    if (!e->file || !e->tensors)
        return -1;
    for (size_t k = 0; k < s->n; k++) {
        const out_t *o = &s->t[k];
        mf_tensor *t = &e->tensors[k];
        t->name = strdup(p->tensors[o->src].name);
        t->source.name = strdup(p->tensors[o->src].name);
        t->transform = strdup(transform_of(o));
        if (!t->name || !t->source.name || !t->transform)
            return -1;
        t->dtype = o->dt;
        t->ndim = o->ndim;
        t->shape[0] = o->shape[0];
        t->shape[1] = o->shape[1];
        t->bytes = o->bytes;
        t->source.dim = o->sl.dim;
        t->source.start = o->sl.dim < 0 ? 0 : o->sl.start;
        t->source.end = o->sl.dim < 0 ? p->tensors[o->src].shape[0] : o->sl.end;
        t->quant_rel_rms = 0;
    }
    return 0;
}

/* ---- journal ---- */

static int journal_append(ctx *x, const mf_shard *e, dsr1_err *err)
{
    char *sj = mf_shard_to_json(e);
    if (!sj)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    size_t n = strlen(sj) + 160;
    char *line = malloc(n);
    if (!line) {
        free(sj);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    int len = snprintf(line, n, "{\"manifest_id\":\"%s\",\"tool\":\"%s\",\"shard\":%s}\n", x->manifest_id, SH_TOOL, sj);
    free(sj);
    int fd = open(x->journal, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    int e2 = 0;
    if (fd < 0)
        e2 = errno;
    else {
        ssize_t k = write(fd, line, (size_t)len);
        if (k != len)
            e2 = k < 0 ? errno : ENOSPC;
        else if (fsync(fd) != 0)
            e2 = errno;
        close(fd);
    }
    free(line);
    if (e2)
        return dsr1_err_set(err, DSR1_E_IO, SH_ERR_WRITE, e2, "cannot append to %s", x->journal);
    return 0;
}

static int copy_shard_entry(mf_shard *dst, const mf_shard *src)
{
    *dst = *src;
    dst->file = strdup(src->file);
    dst->tensors = calloc(src->n_tensors ? src->n_tensors : 1, sizeof *dst->tensors);
    if (!dst->file || !dst->tensors)
        return -1;
    for (size_t k = 0; k < src->n_tensors; k++) {
        dst->tensors[k] = src->tensors[k];
        dst->tensors[k].name = strdup(src->tensors[k].name);
        dst->tensors[k].source.name = strdup(src->tensors[k].source.name);
        dst->tensors[k].transform = strdup(src->tensors[k].transform);
        if (!dst->tensors[k].name || !dst->tensors[k].source.name || !dst->tensors[k].transform)
            return -1;
    }
    return 0;
}

/* Previous entries for this manifest_id and tool: from manifest.json, then the journal
 * (later wins). prev[i] is for shard i; .file == NULL when none. */
static void load_previous(ctx *x, const mf_plan *mp, mf_shard *prev)
{
    char *mpath = fu_join(x->o->out_dir, "manifest.json");
    mf_manifest *m = NULL;
    dsr1_err e;
    if (mpath && mf_load(&m, mpath, &e) == 0) {
        char id[HX_HEX_LEN + 1];
        hx_hex(m->manifest_id, id);
        if (strcmp(id, x->manifest_id) == 0 && m->tool && strcmp(m->tool, SH_TOOL) == 0 &&
            m->n_shards == x->p->n_shards)
            for (size_t i = 0; i < m->n_shards; i++)
                if (copy_shard_entry(&prev[i], &m->shards[i]))
                    mf_shard_clear(&prev[i]);
    }
    mf_free(m);
    free(mpath);
    FILE *f = fopen(x->journal, "r");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &je);
        if (!o)
            continue; /* a torn last line after kill -9 */
        const char *id = json_string_value(json_object_get(o, "manifest_id"));
        const char *tool = json_string_value(json_object_get(o, "tool"));
        json_t *sj = json_object_get(o, "shard");
        if (id && tool && sj && strcmp(id, x->manifest_id) == 0 && strcmp(tool, SH_TOOL) == 0) {
            char *txt = json_dumps(sj, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
            mf_shard s;
            if (txt && mf_shard_parse(&s, txt, strlen(txt), mp, x->journal, &e) == 0) {
                size_t i = (size_t)s.pp_stage * x->p->req.tp + s.tp_rank;
                if (i < x->p->n_shards) {
                    mf_shard_clear(&prev[i]);
                    prev[i] = s;
                } else
                    mf_shard_clear(&s);
            }
            free(txt);
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
}

static int hash_mapped(const char *path, hx128 *out, dsr1_err *err);

/* Does the file on disk hold exactly what entry e says, and does e describe the shard
 * we would write now? */
static int entry_matches(ctx *x, const shard_w *s, const mf_shard *e)
{
    if (!e->file || strcmp(e->file, s->file) != 0 || e->pp_stage != s->pp_stage || e->tp_rank != s->tp_rank ||
        e->n_tensors != s->n)
        return 0;
    for (size_t k = 0; k < s->n; k++) {
        const out_t *o = &s->t[k];
        const mf_tensor *t = &e->tensors[k];
        const char *name = x->p->tensors[o->src].name;
        if (strcmp(t->name, name) != 0 || strcmp(t->source.name, name) != 0 || t->dtype != o->dt ||
            t->ndim != o->ndim || t->shape[0] != o->shape[0] || (o->ndim > 1 && t->shape[1] != o->shape[1]) ||
            t->bytes != o->bytes || t->source.dim != o->sl.dim || strcmp(t->transform, transform_of(o)) != 0)
            return 0;
        if (o->sl.dim >= 0 && (t->source.start != o->sl.start || t->source.end != o->sl.end))
            return 0;
    }
    struct stat sb;
    if (stat(s->path, &sb) != 0 || (uint64_t)sb.st_size != e->bytes)
        return 0;
    st_file *f;
    dsr1_err err;
    if (st_open(&f, s->path, &err))
        return 0;
    int ok = st_data_start(f) == e->data_start && st_count(f) == s->n;
    const char *id = st_meta_get(f, MF_META_MANIFEST_ID);
    ok = ok && id && strcmp(id, x->manifest_id) == 0;
    for (size_t k = 0; ok && k < s->n; k++) {
        const st_tensor *t = st_get(f, k);
        ok = strcmp(t->name, e->tensors[k].name) == 0 && t->file_offset == e->tensors[k].offset;
    }
    ok = ok && hx_eq(hx_buf(st_base(f), (size_t)st_data_start(f)), e->header_xxh3_128);
    st_close(f);
    hx128 h;
    ok = ok && hash_mapped(s->path, &h, &err) == 0 && hx_eq(h, e->xxh3_128);
    return ok;
}

/* ---- output directory ---- */

static int mkdir_p(const char *dir, dsr1_err *err)
{
    char *d = strdup(dir);
    if (!d)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    for (char *p = d + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(d, 0755) != 0 && errno != EEXIST) {
                int e = errno;
                int rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_OUT_DIR, e, "cannot create output directory %s",
                                      d);
                free(d);
                return rc;
            }
            *p = c;
            if (!c)
                break;
        }
    }
    free(d);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return dsr1_err_set(err, DSR1_E_IO, SH_ERR_OUT_DIR, ENOTDIR, "%s is not a directory", dir);
    return 0;
}

/* n + *i starts with a run of decimal digits: skip it. */
static int skip_digits(const char *n, size_t *i)
{
    size_t j = *i;
    while (n[j] >= '0' && n[j] <= '9')
        j++;
    if (j == *i)
        return 0;
    *i = j;
    return 1;
}

/* "<prefix>.tmp.<pid>" as the st writer and mf_save name their temp files; *pid out. */
static int is_tmp_suffix(const char *n, long *pid)
{
    if (strncmp(n, ".tmp.", 5) != 0)
        return 0;
    size_t i = 5;
    if (!skip_digits(n, &i) || n[i] || i > 5 + 18)
        return 0;
    *pid = strtol(n + 5, NULL, 10);
    return 1;
}

/* Exactly model-pp<d>-tp<d>-of-pp<d>-tp<d>.safetensors, optionally + ".tmp.<pid>"
 * (returns 2 then). Digits only: sscanf's %u would also take signs and spaces. */
static int is_shard_name(const char *n, long *pid)
{
    static const char *const lit[] = {"model-pp", "-tp", "-of-pp", "-tp"};
    size_t i = 0;
    for (int k = 0; k < 4; k++) {
        size_t l = strlen(lit[k]);
        if (strncmp(n + i, lit[k], l) != 0)
            return 0;
        i += l;
        if (!skip_digits(n, &i))
            return 0;
    }
    if (strncmp(n + i, ".safetensors", 12) != 0)
        return 0;
    i += 12;
    if (!n[i])
        return 1;
    return is_tmp_suffix(n + i, pid) ? 2 : 0;
}

static int read_exact(int fd, void *buf, size_t len, off_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t r = pread(fd, p, len, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
        off += r;
    }
    return 0;
}

/* A regular file whose safetensors header carries __metadata__ "dsr1.format":
 * "dsr1-shard". Only the header is read, so a damaged or truncated shard of ours still
 * counts (a rerun repairs it); anything else under a shard name is not ours. */
static int is_dsr1_shard_file(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < 8)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    uint8_t b[8];
    int ok = 0;
    if (read_exact(fd, b, 8, 0) == 0) {
        uint64_t n = 0;
        for (int k = 7; k >= 0; k--)
            n = n << 8 | b[k];
        if (n >= 2 && n <= (256ULL << 20) && n <= (uint64_t)sb.st_size - 8) {
            char *h = malloc(n);
            if (h && read_exact(fd, h, n, 8) == 0) {
                json_t *o = json_loadb(h, n, 0, NULL);
                const char *f = json_string_value(json_object_get(json_object_get(o, "__metadata__"), MF_META_FORMAT));
                ok = f && strcmp(f, MF_SHARD_FORMAT) == 0;
                json_decref(o);
            }
            free(h);
        }
    }
    close(fd);
    return ok;
}

/* manifest.json whose "format" is dsr1-manifest (not necessarily valid otherwise). */
static int is_dsr1_manifest_file(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    json_t *o = json_load_file(path, 0, NULL);
    const char *f = json_string_value(json_object_get(o, "format"));
    int ok = f && strcmp(f, MF_FORMAT) == 0;
    json_decref(o);
    return ok;
}

/* XXH128SUMS that lists only manifest.json and shard file names. */
static int is_dsr1_sums_file(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return 0;
    char **files = NULL;
    hx128 *dg = NULL;
    size_t n = 0;
    dsr1_err e;
    if (mf_sums_read(path, &files, &dg, &n, &e))
        return 0;
    int ok = n > 0;
    for (size_t i = 0; i < n; i++) {
        long pid;
        if (strcmp(files[i], "manifest.json") != 0 && is_shard_name(files[i], &pid) != 1)
            ok = 0;
        free(files[i]);
    }
    free(files);
    free(dg);
    return ok;
}

/* `name` is listed by this directory's dsr1 manifest.json or dsr1 XXH128SUMS: a file of
 * ours whose header was damaged afterwards (the rerun repairs it). */
static int claimed_by_dir(ctx *x, const char *name)
{
    int ok = 0;
    char *mp = fu_join(x->o->out_dir, "manifest.json");
    if (mp && is_dsr1_manifest_file(mp)) {
        json_t *o = json_load_file(mp, 0, NULL);
        json_t *sh = json_object_get(o, "shards");
        for (size_t i = 0; i < json_array_size(sh); i++) {
            const char *f = json_string_value(json_object_get(json_array_get(sh, i), "file"));
            ok |= f && strcmp(f, name) == 0;
        }
        json_decref(o);
    }
    free(mp);
    char *sp = fu_join(x->o->out_dir, "XXH128SUMS");
    if (!ok && sp && is_dsr1_sums_file(sp)) {
        char **files = NULL;
        hx128 *dg = NULL;
        size_t n = 0;
        dsr1_err e;
        if (mf_sums_read(sp, &files, &dg, &n, &e) == 0) {
            for (size_t i = 0; i < n; i++) {
                ok |= strcmp(files[i], name) == 0;
                free(files[i]);
            }
            free(files);
            free(dg);
        }
    }
    free(sp);
    return ok;
}

/* A live dsr1-shard other than us (a concurrent run into the same directory). */
static int pid_is_other_shard_run(long pid)
{
    if (pid <= 0 || pid == (long)getpid())
        return 0;
    char p[64], comm[32] = {0};
    snprintf(p, sizeof p, "/proc/%ld/comm", pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    int ok = fgets(comm, sizeof comm, f) && strncmp(comm, "dsr1-shard", 10) == 0;
    fclose(f);
    return ok;
}

enum { OWN_NO = 0, OWN_STALE, OWN_KEEP };

/* What a directory entry of --out is to this run: not ours (never touched), ours and
 * stale (removed at start), or ours and possibly kept (this plan's shard names).
 * FOREIGN is set for a name this run would overwrite but cannot prove is a dsr1 file;
 * BUSY for a temp file of a live concurrent dsr1-shard. */
static int classify_entry(ctx *x, const char *n, int *foreign, long *busy)
{
    size_t jl = strlen(SH_JOURNAL);
    long pid = 0;
    char *p = fu_join(x->o->out_dir, n);
    int r = OWN_NO;
    int tmp = 0;
    if (!p)
        return OWN_NO;
    if ((strncmp(n, "manifest.json", 13) == 0 && is_tmp_suffix(n + 13, &pid)) ||
        (strncmp(n, "XXH128SUMS", 10) == 0 && is_tmp_suffix(n + 10, &pid)) ||
        (strncmp(n, SH_JOURNAL, jl) == 0 && is_tmp_suffix(n + jl, &pid)))
        tmp = 1;
    else if (strcmp(n, "manifest.json") == 0) {
        if (is_dsr1_manifest_file(p))
            r = OWN_STALE;
        else
            *foreign = 1;
    } else if (strcmp(n, "XXH128SUMS") == 0) {
        if (is_dsr1_sums_file(p))
            r = OWN_STALE;
        else
            *foreign = 1;
    } else {
        int k = is_shard_name(n, &pid);
        if (k == 2)
            tmp = 1;
        else if (k == 1) {
            int mine = 0;
            for (size_t i = 0; i < x->p->n_shards; i++)
                if (strcmp(x->sh[i].file, n) == 0)
                    mine = 1;
            if (is_dsr1_shard_file(p) || claimed_by_dir(x, n))
                r = mine ? OWN_KEEP : OWN_STALE;
            else if (mine)
                *foreign = 1; /* this run would replace it */
            /* another plan's name without dsr1 metadata: not ours, left alone */
        }
    }
    if (tmp) {
        struct stat sb;
        if (pid_is_other_shard_run(pid))
            *busy = pid;
        else if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            r = OWN_STALE;
    }
    free(p);
    return r;
}

/* Before anything in --out changes: refuse a directory where this run would overwrite
 * a file it cannot prove is dsr1's (manifest.json, XXH128SUMS or a shard name of this
 * plan), or where another dsr1-shard is writing. */
static int check_out_dir(ctx *x, dsr1_err *err)
{
    DIR *d = opendir(x->o->out_dir);
    if (!d)
        return dsr1_err_set(err, DSR1_E_IO, SH_ERR_OUT_DIR, errno, "cannot list %s", x->o->out_dir);
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        int foreign = 0;
        long busy = 0;
        classify_entry(x, de->d_name, &foreign, &busy);
        if (foreign)
            rc = dsr1_err_set(err, DSR1_E_USAGE, SH_ERR_OUT_DIR, 0,
                              "%s/%s is not a dsr1-shard file and this run would overwrite it: choose an empty "
                              "--out or move the file away (nothing was changed)",
                              x->o->out_dir, de->d_name);
        else if (busy)
            rc = dsr1_err_set(err, DSR1_E_USAGE, SH_ERR_OUT_DIR, 0,
                              "another dsr1-shard (pid %ld) is writing into %s (%s): wait for it or choose another "
                              "--out (nothing was changed)",
                              busy, x->o->out_dir, de->d_name);
    }
    closedir(d);
    return rc;
}

/* --out must not be the checkpoint directory: shards and the HF files would share one
 * directory, which then reads as neither a clean checkpoint nor a shard set. */
static int check_not_source(ck_ckpt *c, const char *out_dir, dsr1_err *err)
{
    struct stat a, b;
    if (stat(ck_dir(c), &a) == 0 && stat(out_dir, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return dsr1_err_set(err, DSR1_E_USAGE, SH_ERR_OUT_DIR, 0,
                            "--out %s is the checkpoint directory %s: choose another directory (nothing was changed)",
                            out_dir, ck_dir(c));
    return 0;
}

/* Remove what a previous (killed or other-plan) run left: temp files, shard files of
 * other plans, manifest.json and XXH128SUMS, each only when it is provably dsr1's (name
 * pattern and content, check_out_dir). Files of this plan stay (resume may keep them;
 * otherwise they are replaced atomically). Anything else in the directory is left alone. */
static int clean_out_dir(ctx *x, dsr1_err *err)
{
    DIR *d = opendir(x->o->out_dir);
    if (!d)
        return dsr1_err_set(err, DSR1_E_IO, SH_ERR_OUT_DIR, errno, "cannot list %s", x->o->out_dir);
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        int foreign = 0;
        long busy = 0;
        if (classify_entry(x, n, &foreign, &busy) != OWN_STALE)
            continue;
        char *p = fu_join(x->o->out_dir, n);
        if (!p || (unlink(p) != 0 && errno != ENOENT))
            rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_OUT_DIR, errno, "cannot remove stale %s/%s",
                              x->o->out_dir, n);
        free(p);
        if (rc)
            break;
    }
    closedir(d);
    if (!rc) {
        char *p = fu_join(x->o->out_dir, "manifest.json");
        rc = p ? st_fsync_dir(p, err) : dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        free(p);
    }
    return rc;
}

/* ---- reading ---- */

static int pread_full(int fd, void *buf, uint64_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t k = pread(fd, p, len > (1u << 30) ? (1u << 30) : (size_t)len, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return errno;
        if (k == 0)
            return EIO; /* shorter than its header says: truncated after the check */
        p += k;
        off += (uint64_t)k;
        len -= (uint64_t)k;
    }
    return 0;
}

/* Source files are read through read-only shared mappings: the engine hashes and
 * writes straight from the page cache, one memory copy per output byte (into the
 * output's page cache), like cp's in-kernel copy. The reader thread prefaults the next
 * batch (MADV_POPULATE_READ, so I/O errors come back as errors, not SIGBUS) and the
 * main thread drops a finished batch's page-table entries, so RSS stays at about two
 * batches whatever the model size. */
static int src_fd(ctx *x, int fi, dsr1_err *err)
{
    if (x->fds[fi] >= 0)
        return x->fds[fi];
    char *p = fu_join(ck_dir(x->ck), ck_file_at(x->ck, (size_t)fi));
    if (!p)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, e, "cannot open %s", p);
        if (fd >= 0)
            close(fd);
        free(p);
        return DSR1_E_IO;
    }
    void *m = sb.st_size ? mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0) : NULL;
    if (m == MAP_FAILED) {
        int e = errno;
        dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, e, "cannot map %s", p);
        close(fd);
        free(p);
        return DSR1_E_IO;
    }
    if (m)
        madvise(m, (size_t)sb.st_size, MADV_SEQUENTIAL);
    free(p);
    x->fds[fi] = fd;
    x->maps[fi] = m;
    x->map_len[fi] = (uint64_t)sb.st_size;
    return fd;
}

static const size_t page_size = 4096;

/* Page-aligned [a, b) covering [off, off + len) of a mapping. */
static void page_span(const uint8_t *base, uint64_t off, uint64_t len, uint8_t **a, size_t *n)
{
    uintptr_t s = (uintptr_t)(base + off) & ~(uintptr_t)(page_size - 1);
    uintptr_t e = ((uintptr_t)(base + off + len) + page_size - 1) & ~(uintptr_t)(page_size - 1);
    *a = (uint8_t *)s;
    *n = e - s;
}

/* Bring [off, off + len) of a mapping into memory; 0 or an errno. */
static int populate(const uint8_t *base, uint64_t off, uint64_t len)
{
    if (!len)
        return 0;
    uint8_t *a;
    size_t n;
    page_span(base, off, len, &a, &n);
    if (madvise(a, n, MADV_POPULATE_READ) == 0)
        return 0;
    if (errno != EINVAL)
        return errno == EFAULT ? EIO : errno;
    /* kernels before 5.14: touch every page */
    volatile uint8_t sink = 0;
    for (size_t k = 0; k < n; k += page_size)
        sink ^= a[k];
    (void)sink;
    return 0;
}

static void drop_pages(const uint8_t *base, uint64_t off, uint64_t len)
{
    uint8_t *a;
    size_t n;
    if (!len)
        return;
    page_span(base, off, len, &a, &n);
    madvise(a, n, MADV_DONTNEED); /* page-table entries only; the page cache keeps the data */
}

static void *reader_main(void *arg)
{
    ctx *x = arg;
    for (size_t b = 0; b < x->n_batches; b++) {
        int s = (int)(b % NSLOT);
        pthread_mutex_lock(&x->mu);
        while (x->slot_batch[s] != -1 && !x->stop)
            pthread_cond_wait(&x->cv, &x->mu);
        int stop = x->stop;
        pthread_mutex_unlock(&x->mu);
        if (stop)
            break;
        const batch_t *bt = &x->batches[b];
        int rc = populate(x->maps[bt->fi], bt->off, bt->len);
        if (rc)
            dsr1_err_set(&x->reader_err, DSR1_E_IO, SH_ERR_READ, rc, "cannot read %s/%s bytes [%" PRIu64 ", %" PRIu64
                         ")", ck_dir(x->ck), ck_file_at(x->ck, (size_t)bt->fi), bt->off, bt->off + bt->len);
        /* a dequantized weight needs its whole scale before its first piece */
        for (uint32_t k = 0; !rc && k < bt->n; k++) {
            const item_t *it = &x->items[bt->i0 + k];
            src_t *sr = &x->srcs[it->src];
            if (it->r0 != 0 || !sr->scale_bytes)
                continue;
            sr->scale = malloc(sr->scale_bytes);
            if (!sr->scale) {
                rc = ENOMEM;
                dsr1_err_set(&x->reader_err, DSR1_E_NOMEM, 0, 0, "out of memory");
                break;
            }
            rc = pread_full(x->fds[sr->fi_scale], sr->scale, sr->scale_bytes, sr->scale_off);
            if (rc)
                dsr1_err_set(&x->reader_err, DSR1_E_IO, SH_ERR_READ, rc, "cannot read the scale of %s from %s/%s",
                             x->p->tensors[sr->ti].name, ck_dir(x->ck), ck_file_at(x->ck, (size_t)sr->fi_scale));
        }
        pthread_mutex_lock(&x->mu);
        if (rc)
            x->reader_failed = 1;
        x->slot_batch[s] = (int64_t)b;
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
        if (rc)
            break;
    }
    return NULL;
}

/* XXH3-128 of a whole file read through a mapping, 64 MiB windows at a time (no copy
 * out of the page cache; RSS bounded by one window). Same value as hx_file(). */
static int hash_mapped(const char *path, hx128 *out, dsr1_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, e, "cannot open %s to hash it", path);
    }
    hx_state *h = hx_new();
    if (!h) {
        close(fd);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    const uint64_t W = 64ULL << 20;
    int rc = 0;
    for (uint64_t off = 0; off < (uint64_t)sb.st_size; off += W) {
        size_t n = (size_t)((uint64_t)sb.st_size - off < W ? (uint64_t)sb.st_size - off : W);
        void *m = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, (off_t)off);
        if (m == MAP_FAILED) {
            rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, errno, "cannot map %s", path);
            break;
        }
        int e = populate(m, 0, n);
        if (e) {
            munmap(m, n);
            rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, e, "cannot read %s at byte %" PRIu64 "", path, off);
            break;
        }
        hx_update(h, m, n);
        munmap(m, n);
    }
    if (!rc)
        *out = hx_digest(h);
    hx_free(h);
    close(fd);
    return rc;
}

/* ---- stage routing ---- */

static int src_cmp(const void *a, const void *b)
{
    const src_t *x = a, *y = b;
    if (x->fi != y->fi)
        return x->fi < y->fi ? -1 : 1;
    return x->foff < y->foff ? -1 : x->foff > y->foff;
}

static int file_index(ctx *x, const char *tensor)
{
    const char *f = ck_index_file_of(x->ck, tensor);
    size_t lo = 0, hi = ck_file_count(x->ck);
    while (f && lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(ck_file_at(x->ck, mid), f);
        if (c == 0)
            return (int)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static int build_stage(ctx *x, uint32_t k, dsr1_err *err)
{
    const plan *p = x->p;
    uint32_t tp = p->req.tp;
    for (uint32_t t = 0; t < tp; t++) {
        shard_w *s = &x->sh[(size_t)k * tp + t];
        int32_t *pos = x->pos + (size_t)t * p->n_tensors;
        for (size_t i = 0; i < p->n_tensors; i++)
            pos[i] = -1;
        if (s->keep)
            continue;
        for (size_t q = 0; q < s->n; q++)
            pos[s->t[q].src] = (int32_t)q;
    }
    x->n_srcs = x->n_groups = x->n_dests = 0;
    size_t cap_src = 0;
    for (size_t i = 0; i < p->n_tensors; i++)
        cap_src += p->stage_of[i] == k;
    x->srcs = calloc(cap_src ? cap_src : 1, sizeof *x->srcs);
    x->groups = calloc(cap_src * tp + 1, sizeof *x->groups);
    x->dests = calloc(cap_src * tp + 1, sizeof *x->dests);
    if (!x->srcs || !x->groups || !x->dests)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory routing stage %u", k);
    for (size_t i = 0; i < p->n_tensors; i++) {
        if (p->stage_of[i] != k)
            continue;
        const ck_tensor_desc *d = &p->tensors[i];
        src_t *sr = &x->srcs[x->n_srcs];
        memset(sr, 0, sizeof *sr);
        sr->ti = i;
        sr->g0 = (uint32_t)x->n_groups;
        for (uint32_t t = 0; t < tp; t++) {
            int32_t q = x->pos[(size_t)t * p->n_tensors + i];
            if (q < 0)
                continue;
            const out_t *o = &x->sh[(size_t)k * tp + t].t[q];
            group_t *g = NULL;
            for (uint32_t j = sr->g0; j < x->n_groups; j++)
                if (x->groups[j].sl.dim == o->sl.dim && x->groups[j].sl.start == o->sl.start &&
                    x->groups[j].sl.end == o->sl.end)
                    g = &x->groups[j];
            if (!g) {
                /* dests of one group are contiguous: groups of a tensor gather theirs later */
                g = &x->groups[x->n_groups++];
                memset(g, 0, sizeof *g);
                g->sl = o->sl;
                g->dequant = o->dequant;
                g->out_esz = st_dtype_size(o->dt);
                uint64_t cols = d->ndim > 1 ? d->shape[1] : d->shape[0];
                g->c0 = o->sl.dim == 1 ? o->sl.start : 0;
                g->c1 = o->sl.dim == 1 ? o->sl.end : cols;
            }
            g->nd++;
        }
        sr->ng = (uint32_t)(x->n_groups - sr->g0);
        if (!sr->ng)
            continue; /* a scale under bf16 (read with its weight) or held only by kept shards */
        /* lay the dests out group by group */
        for (uint32_t j = sr->g0; j < x->n_groups; j++) {
            x->groups[j].d0 = (uint32_t)x->n_dests;
            x->n_dests += x->groups[j].nd;
            x->groups[j].nd = 0;
        }
        for (uint32_t t = 0; t < tp; t++) {
            int32_t q = x->pos[(size_t)t * p->n_tensors + i];
            if (q < 0)
                continue;
            const out_t *o = &x->sh[(size_t)k * tp + t].t[q];
            for (uint32_t j = sr->g0; j < x->n_groups; j++) {
                group_t *g = &x->groups[j];
                if (g->sl.dim == o->sl.dim && g->sl.start == o->sl.start && g->sl.end == o->sl.end) {
                    x->dests[g->d0 + g->nd].shard = k * tp + t;
                    x->dests[g->d0 + g->nd].pos = (uint32_t)q;
                    g->nd++;
                    break;
                }
            }
        }
        const st_tensor *v;
        if (ck_tensor(x->ck, d->name, d, &v, err))
            return err->status;
        sr->fi = file_index(x, d->name);
        sr->foff = v->file_offset;
        sr->nbytes = v->nbytes;
        sr->rows = d->ndim > 1 ? d->shape[0] : 1;
        sr->cols = d->ndim > 1 ? d->shape[1] : d->shape[0];
        sr->esz = st_dtype_size(d->dtype);
        if (x->groups[sr->g0].dequant) {
            const ck_tensor_desc *sd = &p->tensors[d->scale_idx];
            const st_tensor *sv;
            if (ck_tensor(x->ck, sd->name, sd, &sv, err))
                return err->status;
            sr->fi_scale = file_index(x, sd->name);
            sr->scale_off = sv->file_offset;
            sr->scale_bytes = sv->nbytes;
            sr->scale_cols = sd->shape[1];
            if (sr->fi_scale < 0 || src_fd(x, sr->fi_scale, err) < 0)
                return err->status ? err->status : DSR1_E_IO;
        }
        if (sr->fi < 0 || src_fd(x, sr->fi, err) < 0)
            return err->status ? err->status : DSR1_E_IO;
        x->n_srcs++;
    }
    qsort(x->srcs, x->n_srcs, sizeof *x->srcs, src_cmp);
    /* batches: runs of adjacent tensors in one file up to the batch size; larger
     * tensors in row pieces (multiples of 128 rows when possible) */
    size_t cap_items = 0;
    uint64_t B = x->batch;
    for (size_t s = 0; s < x->n_srcs; s++) {
        const src_t *sr = &x->srcs[s];
        uint64_t rb = sr->cols * sr->esz;
        if (sr->nbytes <= B)
            cap_items++;
        else {
            uint64_t rp = B / rb;
            if (rp >= 128)
                rp -= rp % 128;
            if (!rp)
                rp = 1;
            cap_items += (sr->rows + rp - 1) / rp;
        }
    }
    x->items = calloc(cap_items + 1, sizeof *x->items);
    x->batches = calloc(cap_items + 1, sizeof *x->batches);
    if (!x->items || !x->batches)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory batching stage %u", k);
    x->n_items = x->n_batches = 0;
    batch_t *cur = NULL;
    for (size_t s = 0; s < x->n_srcs; s++) {
        const src_t *sr = &x->srcs[s];
        uint64_t rb = sr->cols * sr->esz;
        if (sr->nbytes <= B) {
            if (!cur || cur->fi != sr->fi || cur->off + cur->len != sr->foff || cur->len + sr->nbytes > B) {
                cur = &x->batches[x->n_batches++];
                cur->fi = sr->fi;
                cur->off = sr->foff;
                cur->len = 0;
                cur->i0 = (uint32_t)x->n_items;
                cur->n = 0;
            }
            item_t *it = &x->items[x->n_items++];
            it->src = (uint32_t)s;
            it->r0 = 0;
            it->r1 = sr->rows;
            it->boff = cur->len;
            cur->len += sr->nbytes;
            cur->n++;
            continue;
        }
        uint64_t rp = B / rb;
        if (rp >= 128)
            rp -= rp % 128;
        if (!rp)
            rp = 1;
        for (uint64_t r = 0; r < sr->rows; r += rp) {
            uint64_t r1 = r + rp < sr->rows ? r + rp : sr->rows;
            cur = &x->batches[x->n_batches++];
            cur->fi = sr->fi;
            cur->off = sr->foff + r * rb;
            cur->len = (r1 - r) * rb;
            cur->i0 = (uint32_t)x->n_items;
            cur->n = 1;
            item_t *it = &x->items[x->n_items++];
            it->src = (uint32_t)s;
            it->r0 = r;
            it->r1 = r1;
            it->boff = 0;
        }
        cur = NULL; /* nothing joins a piece */
    }
    return 0;
}

static void free_stage(ctx *x)
{
    for (size_t g = 0; x->groups && g < x->n_groups; g++)
        hx_free(x->groups[g].h);
    for (size_t s = 0; x->srcs && s < x->n_srcs; s++)
        free(x->srcs[s].scale);
    free(x->srcs);
    free(x->groups);
    free(x->dests);
    free(x->items);
    free(x->batches);
    x->srcs = NULL;
    x->groups = NULL;
    x->dests = NULL;
    x->items = NULL;
    x->batches = NULL;
    x->n_srcs = x->n_groups = x->n_dests = x->n_items = x->n_batches = 0;
}

/* ---- batch processing ---- */

static int grow(void **p, uint64_t *cap, uint64_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    void *q = realloc(*p, need * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = need;
    return 0;
}

static void convert_rows(ctx *x, const unit_t *u, uint64_t a, uint64_t b, const uint8_t *in, float *tmp)
{
    const group_t *g = &x->groups[u->g];
    const item_t *it = &x->items[u->item];
    const src_t *sr = &x->srcs[it->src];
    uint64_t out_cols = g->c1 - g->c0, orb = out_cols * g->out_esz, irb = sr->cols * sr->esz;
    uint8_t *out = x->stage_buf + u->soff + (a - u->a) * orb;
    for (uint64_t r = a; r < b; r++, out += orb) {
        const uint8_t *row = in + (r - it->r0) * irb;
        if (!g->dequant) {
            memcpy(out, row + g->c0 * sr->esz, orb);
            continue;
        }
        /* W = f32(q) * S[r/128][c/128], then RNE to bf16; error sums row by row so the
         * result does not depend on batch or thread counts */
        const float *srow = sr->scale + (r / DT_BLOCK) * sr->scale_cols;
        dt_fp8_to_f32_n(row + g->c0, tmp, out_cols);
        for (uint64_t j = 0; j < out_cols; j++)
            tmp[j] *= srow[(g->c0 + j) / DT_BLOCK];
        uint16_t *o16 = (uint16_t *)out;
        dt_f32_to_bf16_n(tmp, o16, out_cols);
        double e2 = 0, r2 = 0;
        for (uint64_t j = 0; j < out_cols; j++) {
            uint32_t bits = (uint32_t)o16[j] << 16;
            float back;
            memcpy(&back, &bits, 4);
            double d = (double)back - (double)tmp[j];
            e2 += d * d;
            r2 += (double)tmp[j] * (double)tmp[j];
        }
        x->rowsum[2 * (u->rs + (r - u->a))] = e2;
        x->rowsum[2 * (u->rs + (r - u->a)) + 1] = r2;
    }
}

static int process_batch(ctx *x, size_t b, const uint8_t *buf, dsr1_err *err)
{
    const batch_t *bt = &x->batches[b];
    size_t max_units = 0;
    for (uint32_t k = 0; k < bt->n; k++)
        max_units += x->srcs[x->items[bt->i0 + k].src].ng;
    unit_t *units = calloc(max_units + 1, sizeof *units);
    if (!units)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    size_t nu = 0;
    uint64_t stage_need = 0, rows_need = 0, max_cols = 1;
    for (uint32_t k = 0; k < bt->n; k++) {
        const item_t *it = &x->items[bt->i0 + k];
        const src_t *sr = &x->srcs[it->src];
        uint64_t irb = sr->cols * sr->esz;
        if (sr->cols > max_cols)
            max_cols = sr->cols;
        for (uint32_t j = 0; j < sr->ng; j++) {
            uint32_t gi = sr->g0 + j;
            const group_t *g = &x->groups[gi];
            uint64_t a = it->r0, e = it->r1, first = a;
            if (g->sl.dim == 0) {
                a = a > g->sl.start ? a : g->sl.start;
                e = e < g->sl.end ? e : g->sl.end;
                first = a - g->sl.start;
            }
            if (a >= e)
                continue;
            unit_t *u = &units[nu++];
            u->g = gi;
            u->item = bt->i0 + k;
            u->a = a;
            u->b = e;
            uint64_t orb = (g->c1 - g->c0) * g->out_esz;
            u->out_off = first * orb;
            u->len = (e - a) * orb;
            if (!g->dequant && g->sl.dim != 1) {
                u->data = buf + it->boff + (a - it->r0) * irb;
            } else {
                u->staged = 1;
                u->soff = stage_need;
                stage_need += (u->len + 63) & ~63ULL;
                if (g->dequant) {
                    u->rs = rows_need;
                    rows_need += e - a;
                }
            }
        }
    }
    if (grow((void **)&x->stage_buf, &x->stage_cap, stage_need + 64, 1) ||
        grow((void **)&x->rowsum, &x->rowsum_cap, 2 * rows_need + 2, sizeof(double))) {
        free(units);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory for %" PRIu64 " staging bytes", stage_need);
    }
    if (stage_need > x->stats->peak_batch_bytes)
        x->stats->peak_batch_bytes = stage_need;
    /* phase 1: gather / dequantize into staging, in parallel over row tasks */
    size_t nt = 0, cap_t = 0;
    for (size_t i = 0; i < nu; i++)
        if (units[i].staged) {
            uint64_t orb = units[i].len / (units[i].b - units[i].a);
            uint64_t rows = orb ? TASK_BYTES / orb : 1;
            if (!rows)
                rows = 1;
            cap_t += (units[i].b - units[i].a + rows - 1) / rows;
        }
    task_t *tasks = calloc(cap_t + 1, sizeof *tasks);
    if (!tasks) {
        free(units);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    for (size_t i = 0; i < nu; i++) {
        if (!units[i].staged)
            continue;
        units[i].data = x->stage_buf + units[i].soff;
        uint64_t orb = units[i].len / (units[i].b - units[i].a);
        uint64_t rows = orb ? TASK_BYTES / orb : 1;
        if (!rows)
            rows = 1;
        for (uint64_t r = units[i].a; r < units[i].b; r += rows) {
            tasks[nt].u = (uint32_t)i;
            tasks[nt].a = r;
            tasks[nt].b = r + rows < units[i].b ? r + rows : units[i].b;
            nt++;
        }
    }
    int oom = 0;
#pragma omp parallel
    {
        float *tmp = malloc(max_cols * sizeof *tmp);
        if (!tmp) {
#pragma omp atomic write
            oom = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (size_t i = 0; i < nt; i++) {
            if (!tmp)
                continue;
            const unit_t *u = &units[tasks[i].u];
            const item_t *it = &x->items[u->item];
            convert_rows(x, u, tasks[i].a, tasks[i].b, buf + it->boff, tmp);
        }
        free(tmp);
    }
    free(tasks);
    if (oom) {
        free(units);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    /* phase 2: per-tensor hashes (in tensor byte order: one unit per group per batch)
     * and writes, as one set of jobs. Writes are grouped per output file and each file
     * is written by one thread at a time: concurrent pwrites into one file serialize on
     * the inode lock and spin (measured 2x slower with two threads than with one). */
    size_t nw = 0;
    for (size_t i = 0; i < nu; i++)
        nw += x->groups[units[i].g].nd;
    wtask_t *wt = calloc(nw + 1, sizeof *wt);
    size_t *fstart = calloc(nw + 2, sizeof *fstart);
    if (!wt || !fstart) {
        free(wt);
        free(fstart);
        free(units);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    nw = 0;
    for (size_t i = 0; i < nu; i++)
        for (uint32_t d = 0; d < x->groups[units[i].g].nd; d++) {
            wt[nw].u = (uint32_t)i;
            wt[nw].d = d;
            wt[nw].shard = x->dests[x->groups[units[i].g].d0 + d].shard;
            nw++;
        }
    qsort(wt, nw, sizeof *wt, wtask_cmp);
    size_t nf = 0;
    for (size_t i = 0; i < nw; i++)
        if (i == 0 || wt[i].shard != wt[i - 1].shard)
            fstart[nf++] = i;
    fstart[nf] = nw;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t j = 0; j < nf + nu; j++) {
        if (x->failed)
            continue;
        if (j < nf) {
            for (size_t i = fstart[j]; i < fstart[j + 1]; i++) {
                const unit_t *u = &units[wt[i].u];
                const group_t *g = &x->groups[u->g];
                const dest_t *d = &x->dests[g->d0 + wt[i].d];
                dsr1_err e;
                if (st_writer_write(x->sh[d->shard].w, d->pos, u->out_off, u->data, (size_t)u->len, &e)) {
                    e.code = SH_ERR_WRITE;
                    work_fail(x, &e);
                    break;
                }
            }
            continue;
        }
        const unit_t *u = &units[j - nf];
        group_t *g = &x->groups[u->g];
        if (!g->h)
            g->h = hx_new();
        if (!g->h) {
            dsr1_err e;
            dsr1_err_set(&e, DSR1_E_NOMEM, 0, 0, "out of memory");
            work_fail(x, &e);
            continue;
        }
        hx_update(g->h, u->data, (size_t)u->len);
        if (g->dequant)
            for (uint64_t r = 0; r < u->b - u->a; r++) {
                g->e2 += x->rowsum[2 * (u->rs + r)];
                g->r2 += x->rowsum[2 * (u->rs + r) + 1];
            }
    }
    free(fstart);
    free(wt);
    free(units);
    if (x->failed) {
        *err = x->work_err;
        return err->status;
    }
    /* tensors whose last piece this was: record their hashes */
    for (uint32_t k = 0; k < bt->n; k++) {
        const item_t *it = &x->items[bt->i0 + k];
        src_t *sr = &x->srcs[it->src];
        if (it->r1 != sr->rows)
            continue;
        for (uint32_t j = 0; j < sr->ng; j++) {
            group_t *g = &x->groups[sr->g0 + j];
            if (!g->h && !(g->h = hx_new()))
                return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            hx128 h = hx_digest(g->h);
            double rel = g->dequant ? (g->r2 > 0 ? sqrt(g->e2 / g->r2) : 0.0) : 0.0;
            for (uint32_t d = 0; d < g->nd; d++) {
                const dest_t *dd = &x->dests[g->d0 + d];
                mf_tensor *t = &x->sh[dd->shard].entry.tensors[dd->pos];
                t->xxh3_128 = h;
                t->quant_rel_rms = rel;
                x->sh[dd->shard].done[dd->pos] = 1;
            }
            hx_free(g->h);
            g->h = NULL;
        }
        free(sr->scale);
        sr->scale = NULL;
    }
    return 0;
}

/* ---- one pipeline stage ---- */

static void close_readback(shard_w *s)
{
    free(s->done);
    s->done = NULL;
    hx_free(s->fh);
    s->fh = NULL;
    if (s->rfd >= 0)
        close(s->rfd);
    s->rfd = -1;
}

static void abort_stage_writers(ctx *x, uint32_t k)
{
    for (uint32_t t = 0; t < x->p->req.tp; t++) {
        shard_w *s = &x->sh[(size_t)k * x->p->req.tp + t];
        close_readback(s);
        if (!s->w)
            continue;
        char *tmp = strdup(st_writer_tmp_path(s->w));
        st_writer_free(s->w);
        s->w = NULL;
        temp_note(x, tmp, 0);
        free(tmp);
    }
}

static int open_writers(ctx *x, uint32_t k, dsr1_err *err)
{
    const plan *p = x->p;
    uint32_t tp = p->req.tp;
    char v_pp[16], v_tp[16], v_ep[16], v_dp[16], v_stage[16], v_rank[16], v_layers[32], v_ver[8];
    snprintf(v_pp, sizeof v_pp, "%u", p->req.pp);
    snprintf(v_tp, sizeof v_tp, "%u", tp);
    snprintf(v_ep, sizeof v_ep, "%u", p->req.ep);
    snprintf(v_dp, sizeof v_dp, "%u", p->req.dp);
    snprintf(v_stage, sizeof v_stage, "%u", k);
    snprintf(v_ver, sizeof v_ver, "%d", MF_SHARD_VERSION);
    snprintf(v_layers, sizeof v_layers, "%d-%d", p->stages[k].layer_first, p->stages[k].layer_last);
    /* No block reservation: sh_run has checked free space with statvfs, and buffered
     * writes into reserved extents are ~4x slower on ext4 (4 GiB: 11.7 s vs 2.6 s). */
    st_write_opts wo = {.data_align = 4096, .check_align_rule = 1, .no_reserve = 1};
    for (uint32_t t = 0; t < tp; t++) {
        shard_w *s = &x->sh[(size_t)k * tp + t];
        if (s->keep)
            continue;
        snprintf(v_rank, sizeof v_rank, "%u", t);
        const char *meta[] = {"format", "pt",
                              MF_META_FORMAT, MF_SHARD_FORMAT,
                              MF_META_VERSION, v_ver,
                              MF_META_MANIFEST_ID, x->manifest_id,
                              MF_META_PP_STAGE, v_stage,
                              MF_META_TP_RANK, v_rank,
                              "dsr1.pp", v_pp,
                              "dsr1.tp", v_tp,
                              "dsr1.ep", v_ep,
                              "dsr1.dp", v_dp,
                              "dsr1.dtype", plan_dtype_name(p->req.dtype),
                              "dsr1.layers", v_layers};
        st_spec *sp = malloc((s->n ? s->n : 1) * sizeof *sp);
        if (!sp)
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        specs_of(p, s, sp);
        int rc = st_writer_open(&s->w, s->path, sp, s->n, meta, sizeof meta / sizeof meta[0] / 2, &wo, err);
        free(sp);
        if (rc) {
            if (err->status == DSR1_E_IO)
                err->code = SH_ERR_WRITE;
            return rc;
        }
        temp_note(x, st_writer_tmp_path(s->w), 1);
        s->entry.bytes = st_writer_file_size(s->w);
        s->entry.data_start = st_writer_data_start(s->w);
        size_t hl;
        const void *hdr = st_writer_header(s->w, &hl);
        s->entry.header_xxh3_128 = hx_buf(hdr, hl);
        s->done = calloc(s->n ? s->n : 1, 1);
        s->fh = hx_new();
        s->frontier = 0;
        s->rfd = open(st_writer_tmp_path(s->w), O_RDONLY | O_CLOEXEC);
        if (!s->done || !s->fh || s->rfd < 0)
            return dsr1_err_set(err, s->rfd < 0 ? DSR1_E_IO : DSR1_E_NOMEM, SH_ERR_WRITE, errno,
                                "cannot open %s for reading back", st_writer_tmp_path(s->w));
        hx_update(s->fh, hdr, hl);
        for (size_t q = 0; q < s->n; q++)
            s->entry.tensors[q].offset = st_writer_tensor_offset(s->w, q);
    }
    return 0;
}

/* Hash the longest run of completed tensors after shard s's frontier. */
static int advance_frontier(shard_w *s, dsr1_err *err)
{
    size_t f = s->frontier;
    while (f < s->n && s->done[f])
        f++;
    if (f == s->frontier)
        return 0;
    uint64_t a = s->entry.tensors[s->frontier].offset;
    uint64_t b = s->entry.tensors[f - 1].offset + s->entry.tensors[f - 1].bytes;
    const uint64_t W = 64ULL << 20;
    while (a < b) {
        uint64_t start = a & ~(uint64_t)(page_size - 1);
        uint64_t end = b - start > W ? start + W : b;
        void *m = mmap(NULL, (size_t)(end - start), PROT_READ, MAP_SHARED, s->rfd, (off_t)start);
        if (m == MAP_FAILED)
            return dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, errno, "cannot map %s to hash it",
                                st_writer_tmp_path(s->w));
        int e = populate(m, a - start, end - a);
        if (e) {
            munmap(m, (size_t)(end - start));
            return dsr1_err_set(err, DSR1_E_IO, SH_ERR_READ, e, "cannot read back %s",
                                st_writer_tmp_path(s->w));
        }
        hx_update(s->fh, (const uint8_t *)m + (a - start), (size_t)(end - a));
        munmap(m, (size_t)(end - start));
        a = end;
    }
    s->frontier = f;
    return 0;
}

static int advance_frontiers(ctx *x, uint32_t k, dsr1_err *err)
{
    uint32_t tp = x->p->req.tp;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (uint32_t t = 0; t < tp; t++) {
        shard_w *s = &x->sh[(size_t)k * tp + t];
        dsr1_err e;
        if (!s->keep && s->w && advance_frontier(s, &e)) {
            work_fail(x, &e);
#pragma omp atomic write
            failed = 1;
        }
    }
    if (failed) {
        *err = x->work_err;
        return err->status;
    }
    return 0;
}

static int run_stage(ctx *x, uint32_t k, dsr1_err *err)
{
    const plan *p = x->p;
    uint32_t tp = p->req.tp;
    int any = 0;
    for (uint32_t t = 0; t < tp; t++)
        any |= !x->sh[(size_t)k * tp + t].keep;
    if (!any)
        return 0;
    double t0 = fu_now_s();
    int rc = build_stage(x, k, err);
    if (!rc)
        rc = open_writers(x, k, err);
    if (rc) {
        abort_stage_writers(x, k);
        free_stage(x);
        return rc;
    }
    pthread_t th;
    int started = 0;
    if (!rc) {
        for (int s = 0; s < NSLOT; s++)
            x->slot_batch[s] = -1;
        x->stop = 0;
        x->reader_failed = 0;
        if (pthread_create(&th, NULL, reader_main, x) != 0)
            rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, errno, "cannot start the reader thread");
        else
            started = 1;
    }
    for (size_t b = 0; !rc && b < x->n_batches; b++) {
        int s = (int)(b % NSLOT);
        pthread_mutex_lock(&x->mu);
        while (x->slot_batch[s] != (int64_t)b && !x->reader_failed)
            pthread_cond_wait(&x->cv, &x->mu);
        int bad = x->slot_batch[s] != (int64_t)b || x->reader_failed;
        pthread_mutex_unlock(&x->mu);
        if (bad) {
            *err = x->reader_err;
            rc = err->status ? err->status : DSR1_E_IO;
            break;
        }
        const batch_t *bt = &x->batches[b];
        if (x->o->progress_item)
            x->o->progress_item(x->o->progress_ctx, p->tensors[x->srcs[x->items[bt->i0].src].ti].name);
        rc = process_batch(x, b, x->maps[bt->fi] + bt->off, err);
        drop_pages(x->maps[bt->fi], bt->off, bt->len);
        double h0 = fu_now_s();
        if (!rc)
            rc = advance_frontiers(x, k, err);
        x->stats->seconds_hash += fu_now_s() - h0;
        uint64_t got = bt->len;
        for (uint32_t q = 0; q < bt->n; q++)
            if (x->items[bt->i0 + q].r0 == 0)
                got += x->srcs[x->items[bt->i0 + q].src].scale_bytes;
        x->stats->source_bytes += got;
        if (x->o->progress)
            x->o->progress(x->o->progress_ctx, got);
        x->batches_done++;
        if (!rc && x->o->fail_after_batches && x->batches_done >= x->o->fail_after_batches)
            rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_WRITE, EIO, "injected I/O failure after %" PRIu64 " batches",
                              x->batches_done);
        pthread_mutex_lock(&x->mu);
        x->slot_batch[s] = -1;
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
    }
    if (started) {
        pthread_mutex_lock(&x->mu);
        x->stop = 1;
        pthread_cond_broadcast(&x->cv);
        pthread_mutex_unlock(&x->mu);
        pthread_join(th, NULL);
    }
    double t1 = fu_now_s();
    x->stats->seconds_convert += t1 - t0;
    if (rc) {
        abort_stage_writers(x, k);
        free_stage(x);
        return rc;
    }
    /* per-file hash by reading back (page cache), then fsync + rename, per file in parallel */
    int failed = 0;
    dsr1_err ferr;
    double hash_s = 0, sync_s = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : hash_s, sync_s)
    for (uint32_t t = 0; t < tp; t++) {
        shard_w *s = &x->sh[(size_t)k * tp + t];
        if (s->keep || failed)
            continue;
        dsr1_err e;
        double a = fu_now_s();
        int r = advance_frontier(s, &e);
        if (!r && s->frontier != s->n)
            r = dsr1_err_set(&e, DSR1_E_INTERNAL, 0, 0, "%s: tensor %zu of %zu never completed", s->file,
                             s->frontier, s->n);
        if (!r)
            s->entry.xxh3_128 = hx_digest(s->fh);
        double m = fu_now_s();
        if (!r)
            r = st_writer_commit(s->w, &e);
        hash_s += m - a;
        sync_s += fu_now_s() - m;
        if (r) {
#pragma omp critical(sh_commit)
            if (!failed) {
                failed = 1;
                ferr = e;
            }
        }
    }
    x->stats->seconds_hash += hash_s;
    x->stats->seconds_sync += sync_s;
    for (uint32_t t = 0; t < tp; t++) {
        shard_w *s = &x->sh[(size_t)k * tp + t];
        close_readback(s);
        if (s->keep || !s->w)
            continue;
        char *tmp = strdup(st_writer_tmp_path(s->w));
        if (failed) {
            /* a committed file of a failed stage is complete and correct; it is just
             * not in a manifest yet (the journal records it below only on success) */
            st_writer_free(s->w);
            s->w = NULL;
            temp_note(x, tmp, 0);
            free(tmp);
            continue;
        }
        st_writer_free(s->w);
        s->w = NULL;
        temp_note(x, tmp, 0);
        free(tmp);
        x->stats->files_written++;
        x->stats->written_bytes += s->entry.bytes;
        if (!failed && journal_append(x, &s->entry, &ferr))
            failed = 1;
    }
    free_stage(x);
    if (failed) {
        *err = ferr;
        if (err->status == DSR1_E_IO)
            err->code = SH_ERR_WRITE;
        return err->status;
    }
    return 0;
}

/* ---- manifest ---- */

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *b = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                fclose(f);
                return NULL;
            }
            b = nb;
        }
        size_t k = fread(b + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return NULL;
    }
    b[n] = 0;
    *len = n;
    return b;
}

static int model_init(ctx *x, mf_manifest *m, dsr1_err *err)
{
    char *cpath = fu_join(ck_dir(x->ck), "config.json");
    size_t clen = 0;
    char *ctext = cpath ? read_text(cpath, &clen) : NULL;
    if (!ctext) {
        int rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_SOURCE, errno, "cannot read %s", cpath ? cpath : "config.json");
        free(cpath);
        return rc;
    }
    free(cpath);
    m->version = MF_VERSION;
    m->config_json = ctext;
    m->config = x->p->cfg;
    m->config_xxh3_128 = hx_buf(ctext, clen);
    json_error_t je;
    json_t *o = json_loadb(ctext, clen, 0, &je);
    const char *arch = o ? json_string_value(json_array_get(json_object_get(o, "architectures"), 0)) : NULL;
    m->architecture = strdup(arch ? arch : "DeepseekV3ForCausalLM");
    json_decref(o);
    m->tool = strdup(SH_TOOL);
    size_t nf = ck_file_count(x->ck);
    m->sources = calloc(nf ? nf : 1, sizeof *m->sources);
    if (!m->architecture || !m->tool || !m->sources)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    for (size_t i = 0; i < nf; i++) {
        st_file *f;
        if (ck_file_open(x->ck, i, &f, err))
            return err->status;
        m->sources[i].file = strdup(ck_file_at(x->ck, i));
        if (!m->sources[i].file)
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        m->sources[i].bytes = st_file_size(f);
        m->n_sources++;
    }
    const plan *p = x->p;
    mf_plan *mp = &m->plan;
    mp->tp = p->req.tp;
    mp->ep = p->req.ep;
    mp->pp = p->req.pp;
    mp->dp = p->req.dp;
    mp->world_size = p->world;
    mp->nodes = p->req.nodes;
    mp->gpus_per_node = p->req.gpus_per_node;
    snprintf(mp->dtype, sizeof mp->dtype, "%s", plan_dtype_name(p->req.dtype));
    mp->mtp = p->req.mtp;
    hx_hex(mf_compute_id(m), x->manifest_id);
    return 0;
}

/* ---- entry point ---- */

int sh_run(ck_ckpt *c, const plan *p, const sh_opts *o, sh_stats *stats, dsr1_err *err)
{
    sh_stats dummy;
    if (!stats)
        stats = &dummy;
    memset(stats, 0, sizeof *stats);
    if (o->threads > 0)
        omp_set_num_threads(o->threads);
    int rc = sh_check_source(c, p, err);
    if (rc)
        return rc;
    ctx X, *x = &X;
    memset(x, 0, sizeof *x);
    x->ck = c;
    x->p = p;
    x->o = o;
    x->stats = stats;
    x->batch = o->batch_bytes ? o->batch_bytes : SH_DEFAULT_BATCH;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    x->n_files = ck_file_count(c);
    x->fds = malloc((x->n_files ? x->n_files : 1) * sizeof *x->fds);
    x->maps = calloc(x->n_files ? x->n_files : 1, sizeof *x->maps);
    x->map_len = calloc(x->n_files ? x->n_files : 1, sizeof *x->map_len);
    x->sh = calloc(p->n_shards, sizeof *x->sh);
    x->pos = malloc((size_t)p->req.tp * (p->n_tensors ? p->n_tensors : 1) * sizeof *x->pos);
    x->journal = fu_join(o->out_dir, SH_JOURNAL);
    mf_manifest *m = calloc(1, sizeof *m);
    mf_shard *prev = calloc(p->n_shards, sizeof *prev);
    if (!x->fds || !x->maps || !x->map_len || !x->sh || !x->pos || !x->journal || !m || !prev) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < x->n_files; i++)
        x->fds[i] = -1;
    if ((rc = model_init(x, m, err)))
        goto done;
    for (size_t i = 0; i < p->n_shards; i++) {
        shard_w *s = &x->sh[i];
        s->rfd = -1;
        s->pp_stage = p->shards[i].pp_stage;
        s->tp_rank = p->shards[i].tp_rank;
        plan_shard_file(p, i, s->file, sizeof s->file);
        s->path = fu_join(o->out_dir, s->file);
        if (!s->path) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto done;
        }
        if ((rc = layout_shard(p, s, err)))
            goto done;
        if (entry_init(p, s)) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto done;
        }
    }
    if ((rc = mkdir_p(o->out_dir, err)) || (rc = check_not_source(c, o->out_dir, err)) ||
        (rc = check_out_dir(x, err)))
        goto done;
    /* resume: collect previous entries before anything is removed, and carry them
     * into a fresh journal so a second kill loses nothing */
    if (o->resume)
        load_previous(x, &m->plan, prev);
    {
        char *tmp = malloc(strlen(x->journal) + 32);
        if (!tmp) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto done;
        }
        snprintf(tmp, strlen(x->journal) + 32, "%s.tmp.%ld", x->journal, (long)getpid());
        unlink(tmp);
        char *saved = x->journal;
        x->journal = tmp;
        for (size_t i = 0; !rc && i < p->n_shards; i++)
            if (prev[i].file)
                rc = journal_append(x, &prev[i], err);
        x->journal = saved;
        if (!rc) {
            if (access(tmp, F_OK) == 0) {
                if (rename(tmp, x->journal) != 0)
                    rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_WRITE, errno, "cannot rename %s", tmp);
            } else if (unlink(x->journal) != 0 && errno != ENOENT)
                rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_OUT_DIR, errno, "cannot remove %s", x->journal);
        }
        free(tmp);
        if (rc)
            goto done;
    }
    if ((rc = clean_out_dir(x, err)))
        goto done;
    /* which files can stay (hash check in parallel across files) */
    if (o->resume) {
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t i = 0; i < p->n_shards; i++)
            if (prev[i].file && entry_matches(x, &x->sh[i], &prev[i])) {
                mf_shard_clear(&x->sh[i].entry);
                x->sh[i].entry = prev[i];
                memset(&prev[i], 0, sizeof prev[i]);
                x->sh[i].keep = 1;
            }
        for (size_t i = 0; i < p->n_shards; i++)
            stats->files_kept += x->sh[i].keep;
    }
    /* free space for the files still to write (each replaced atomically) */
    {
        uint64_t need = 0;
        for (size_t i = 0; i < p->n_shards; i++)
            if (!x->sh[i].keep)
                need += p->shards[i].weight_bytes + 4096 + (uint64_t)x->sh[i].n * 160;
        struct statvfs vs;
        if (statvfs(o->out_dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < need) {
            rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_SPACE, ENOSPC,
                              "%s has %.2f GB free, the shards need about %.2f GB: free space or choose another "
                              "--out; nothing was written",
                              o->out_dir, (double)vs.f_bavail * vs.f_frsize / 1e9, (double)need / 1e9);
            goto done;
        }
    }
    if (o->progress_total) {
        uint64_t total = 0;
        for (size_t i = 0; i < p->n_tensors; i++) {
            int held = 0;
            uint32_t k = p->stage_of[i];
            for (uint32_t t = 0; t < p->req.tp && !held; t++) {
                plan_slice sl;
                held = !x->sh[(size_t)k * p->req.tp + t].keep && plan_route(p, i, t, &sl);
            }
            if (held)
                total += p->tensors[i].nbytes;
        }
        o->progress_total(o->progress_ctx, total);
    }
    for (uint32_t k = 0; !rc && k < p->req.pp; k++)
        rc = run_stage(x, k, err);
    if (rc)
        goto done;
    /* manifest: shards, ranks; XXH128SUMS first, manifest.json last */
    m->n_shards = p->n_shards;
    m->shards = calloc(p->n_shards, sizeof *m->shards);
    m->n_ranks = p->world;
    m->ranks = calloc(p->world, sizeof *m->ranks);
    const char **files = calloc(p->n_shards + 1, sizeof *files);
    hx128 *dig = calloc(p->n_shards + 1, sizeof *dig);
    if (!m->shards || !m->ranks || !files || !dig) {
        free(files);
        free(dig);
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < p->n_shards; i++) {
        m->shards[i] = x->sh[i].entry;
        memset(&x->sh[i].entry, 0, sizeof x->sh[i].entry);
        files[i] = m->shards[i].file;
        dig[i] = m->shards[i].xxh3_128;
    }
    for (uint32_t r = 0; r < p->world; r++) {
        const plan_rank *pr = &p->ranks[r];
        mf_rank *mr = &m->ranks[r];
        mr->rank = pr->rank;
        mr->node = pr->node;
        mr->local_rank = pr->local_rank;
        mr->dp = pr->dp;
        mr->pp = pr->pp;
        mr->tp = pr->tp;
        mr->shard = pr->shard;
    }
    char *text = mf_to_json(m);
    if (!text) {
        free(files);
        free(dig);
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto done;
    }
    size_t text_len = strlen(text);
    files[p->n_shards] = "manifest.json";
    dig[p->n_shards] = hx_buf(text, text_len);
    char *sums = fu_join(o->out_dir, "XXH128SUMS"), *mpath = fu_join(o->out_dir, "manifest.json");
    if (!sums || !mpath)
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    if (!rc)
        rc = mf_sums_write(sums, files, dig, p->n_shards + 1, err);
    /* The same text that was hashed into XXH128SUMS, written last. */
    if (!rc)
        rc = mf_save_text(text, text_len, mpath, err);
    free(text);
    if (!rc && unlink(x->journal) != 0 && errno != ENOENT)
        rc = dsr1_err_set(err, DSR1_E_IO, SH_ERR_WRITE, errno, "cannot remove %s", x->journal);
    if (!rc)
        rc = st_fsync_dir(mpath, err);
    if (rc && err->status == DSR1_E_IO && err->code == 0)
        err->code = SH_ERR_WRITE;
    free(sums);
    free(mpath);
    free(files);
    free(dig);
done:
    for (size_t i = 0; x->fds && i < x->n_files; i++)
        if (x->fds[i] >= 0) {
            if (x->maps[i])
                munmap((void *)x->maps[i], (size_t)x->map_len[i]);
            close(x->fds[i]);
        }
    free(x->maps);
    free(x->map_len);
    free(x->fds);
    for (size_t i = 0; x->sh && i < p->n_shards; i++) {
        close_readback(&x->sh[i]);
        st_writer_free(x->sh[i].w);
        free(x->sh[i].path);
        free(x->sh[i].t);
        mf_shard_clear(&x->sh[i].entry);
    }
    for (size_t i = 0; prev && i < p->n_shards; i++)
        mf_shard_clear(&prev[i]);
    free(prev);
    free(x->sh);
    free(x->pos);
    free(x->journal);
    free(x->stage_buf);
    free(x->rowsum);
    mf_free(m);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    return rc;
}
