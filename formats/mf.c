/* mf: manifest.json and XXH128SUMS. Schema: docs/formats/manifest.md. */
#include "mf.h"
#include "fu.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- small helpers ---- */

static json_t *jhex(hx128 h)
{
    char b[HX_HEX_LEN + 1];
    hx_hex(h, b);
    return json_string(b);
}

static json_t *ju64(uint64_t v) { return json_integer((json_int_t)v); }

/* A file name that stays inside its directory. */
static int plain_name(const char *s)
{
    if (!s || !*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '/' || *p == '\\' || *p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

/* ---- serialization ---- */

static json_t *model_json(const mf_manifest *m)
{
    json_t *cfg = NULL;
    if (m->config_json) {
        json_error_t je;
        cfg = json_loads(m->config_json, JSON_REJECT_DUPLICATES, &je);
    }
    if (!cfg)
        cfg = json_null();
    json_t *src = json_array();
    for (size_t i = 0; i < m->n_sources; i++)
        json_array_append_new(src, json_pack("{s:s, s:o}", "file", m->sources[i].file ? m->sources[i].file : "",
                                             "bytes", ju64(m->sources[i].bytes)));
    return json_pack("{s:s, s:o, s:o, s:o}", "architecture", m->architecture ? m->architecture : "",
                     "config_xxh3_128", jhex(m->config_xxh3_128), "config", cfg, "sources", src);
}

static json_t *plan_json(const mf_plan *p)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:b}", "tp", (json_int_t)p->tp, "ep",
                     (json_int_t)p->ep, "pp", (json_int_t)p->pp, "dp", (json_int_t)p->dp, "world_size",
                     (json_int_t)p->world_size, "nodes", (json_int_t)p->nodes, "gpus_per_node",
                     (json_int_t)p->gpus_per_node, "dtype", p->dtype, "mtp", p->mtp ? 1 : 0);
}

static json_t *tensor_json(const mf_tensor *t)
{
    json_t *shape = json_array();
    for (int d = 0; d < t->ndim; d++)
        json_array_append_new(shape, ju64(t->shape[d]));
    json_t *src = json_pack("{s:s, s:o, s:o, s:o}", "name", t->source.name ? t->source.name : "", "dim",
                            t->source.dim < 0 ? json_null() : json_integer(t->source.dim), "start",
                            ju64(t->source.start), "end", ju64(t->source.end));
    json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:s}", "name", t->name ? t->name : "", "dtype",
                          st_dtype_name(t->dtype), "shape", shape, "offset", ju64(t->offset), "bytes",
                          ju64(t->bytes), "xxh3_128", jhex(t->xxh3_128), "source", src, "transform",
                          t->transform ? t->transform : "copy");
    json_object_set_new(o, "quant_rel_rms", t->quant_rel_rms < 0 ? json_null() : json_real(t->quant_rel_rms));
    return o;
}

static json_t *shard_json(const mf_shard *s)
{
    json_t *ts = json_array();
    for (size_t i = 0; i < s->n_tensors; i++)
        json_array_append_new(ts, tensor_json(&s->tensors[i]));
    return json_pack("{s:s, s:o, s:o, s:o, s:o, s:I, s:I, s:I, s:I, s:o}", "file", s->file ? s->file : "",
                     "bytes", ju64(s->bytes), "xxh3_128", jhex(s->xxh3_128), "data_start",
                     ju64(s->data_start), "header_xxh3_128", jhex(s->header_xxh3_128), "pp_stage",
                     (json_int_t)s->pp_stage, "tp_rank", (json_int_t)s->tp_rank, "layer_first",
                     (json_int_t)s->layer_first, "layer_last", (json_int_t)s->layer_last, "tensors", ts);
}

static const char *shard_file_of(const mf_manifest *m, uint32_t i)
{
    return i < m->n_shards && m->shards[i].file ? m->shards[i].file : "";
}

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

char *mf_to_json(const mf_manifest *m)
{
    json_t *shards = json_array(), *ranks = json_array();
    for (size_t i = 0; i < m->n_shards; i++)
        json_array_append_new(shards, shard_json(&m->shards[i]));
    for (size_t i = 0; i < m->n_ranks; i++) {
        const mf_rank *r = &m->ranks[i];
        json_array_append_new(ranks, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "rank", (json_int_t)r->rank,
                                               "node", (json_int_t)r->node, "local_rank",
                                               (json_int_t)r->local_rank, "dp", (json_int_t)r->dp, "pp",
                                               (json_int_t)r->pp, "tp", (json_int_t)r->tp, "shard",
                                               shard_file_of(m, r->shard)));
    }
    json_t *o = json_pack("{s:s, s:i, s:o, s:s, s:o, s:o, s:o, s:o}", "format", MF_FORMAT, "version",
                          m->version ? m->version : MF_VERSION, "manifest_id", jhex(m->manifest_id), "tool",
                          m->tool ? m->tool : "", "model", model_json(m), "plan", plan_json(&m->plan),
                          "shards", shards, "ranks", ranks);
    if (!o)
        return NULL;
    char *s = dump(o);
    return fu_newline(s); /* text files end with a newline */
}

hx128 mf_compute_id(mf_manifest *m)
{
    json_t *o = json_pack("{s:o, s:o}", "model", model_json(m), "plan", plan_json(&m->plan));
    char *s = o ? dump(o) : NULL;
    hx128 h = {0, 0};
    if (s) {
        h = hx_buf(s, strlen(s));
        free(s);
    }
    m->manifest_id = h;
    return h;
}

/* ---- atomic file write ---- */

static int write_atomic(const char *path, const void *buf, size_t len, dsr1_err *err)
{
    size_t tl = strlen(path) + 32;
    char *tmp = malloc(tl);
    if (!tmp)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", path);
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return dsr1_err_set(err, DSR1_E_IO, MF_ERR_OPEN, e, "cannot create %s.tmp.*: %s", path, strerror(e));
    }
    const char *p = buf;
    size_t left = len;
    int e = 0;
    while (left) {
        ssize_t k = write(fd, p, left);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            e = k < 0 ? errno : EIO;
            break;
        }
        p += k;
        left -= (size_t)k;
    }
    if (!e && fsync(fd) != 0)
        e = errno;
    if (close(fd) != 0 && !e)
        e = errno;
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        unlink(tmp);
        free(tmp);
        return dsr1_err_set(err, DSR1_E_IO, MF_ERR_OPEN, e, "cannot write %s: %s", path, strerror(e));
    }
    free(tmp);
    return st_fsync_dir(path, err);
}

int mf_save_text(const char *text, size_t len, const char *path, dsr1_err *err)
{
    return write_atomic(path, text, len, err);
}

int mf_save(const mf_manifest *m, const char *path, hx128 *file_digest, dsr1_err *err)
{
    char *s = mf_to_json(m);
    if (!s)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory serializing the manifest", path);
    size_t n = strlen(s);
    int rc = mf_save_text(s, n, path, err);
    if (!rc && file_digest)
        *file_digest = hx_buf(s, n);
    free(s);
    return rc;
}

/* ---- parsing ---- */

typedef struct pctx {
    const char *label;
    dsr1_err *err;
} pctx;

static int bad(pctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(pctx *c, int code, const char *fmt, ...)
{
    char msg[DSR1_ERR_MSG - 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return dsr1_err_set(c->err, DSR1_E_INVALID, code, 0, "%s: %s", c->label, msg);
}

static json_t *field(pctx *c, json_t *o, const char *path, const char *key, int *rc)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        *rc = bad(c, MF_ERR_FIELD, "%s.%s is missing", path, key);
    return v;
}

static int get_u64(pctx *c, json_t *o, const char *path, const char *key, uint64_t max, uint64_t *out)
{
    int rc = 0;
    json_t *v = field(c, o, path, key, &rc);
    if (!v)
        return rc;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return bad(c, MF_ERR_FIELD, "%s.%s must be an integer in [0, %" PRIu64 "]", path, key, max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_u32(pctx *c, json_t *o, const char *path, const char *key, uint32_t *out)
{
    uint64_t v;
    int rc = get_u64(c, o, path, key, UINT32_MAX, &v);
    if (!rc)
        *out = (uint32_t)v;
    return rc;
}

static int get_i32(pctx *c, json_t *o, const char *path, const char *key, int32_t *out)
{
    int rc = 0;
    json_t *v = field(c, o, path, key, &rc);
    if (!v)
        return rc;
    if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > INT32_MAX)
        return bad(c, MF_ERR_FIELD, "%s.%s must be an integer >= -1", path, key);
    *out = (int32_t)json_integer_value(v);
    return 0;
}

static int get_str(pctx *c, json_t *o, const char *path, const char *key, const char **out)
{
    int rc = 0;
    json_t *v = field(c, o, path, key, &rc);
    if (!v)
        return rc;
    if (!json_is_string(v))
        return bad(c, MF_ERR_FIELD, "%s.%s must be a string", path, key);
    *out = json_string_value(v);
    return 0;
}

static int get_dup(pctx *c, json_t *o, const char *path, const char *key, char **out)
{
    const char *s;
    int rc = get_str(c, o, path, key, &s);
    if (rc)
        return rc;
    if (!(*out = strdup(s)))
        return dsr1_err_set(c->err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c->label);
    return 0;
}

static int get_hex(pctx *c, json_t *o, const char *path, const char *key, hx128 *out)
{
    const char *s;
    int rc = get_str(c, o, path, key, &s);
    if (rc)
        return rc;
    if (hx_parse(s, out) != 0)
        return bad(c, MF_ERR_FIELD, "%s.%s must be 32 hex digits, got \"%.40s\"", path, key, s);
    return 0;
}

static int get_obj(pctx *c, json_t *o, const char *path, const char *key, json_t **out)
{
    int rc = 0;
    json_t *v = field(c, o, path, key, &rc);
    if (!v)
        return rc;
    if (!json_is_object(v))
        return bad(c, MF_ERR_FIELD, "%s.%s must be an object", path, key);
    *out = v;
    return 0;
}

static int get_arr(pctx *c, json_t *o, const char *path, const char *key, json_t **out)
{
    int rc = 0;
    json_t *v = field(c, o, path, key, &rc);
    if (!v)
        return rc;
    if (!json_is_array(v))
        return bad(c, MF_ERR_FIELD, "%s.%s must be an array", path, key);
    *out = v;
    return 0;
}

static int parse_tensor(pctx *c, json_t *o, const char *path, const mf_shard *s, mf_tensor *t)
{
    int rc;
    const char *dt;
    json_t *shape, *src;
    if (!json_is_object(o))
        return bad(c, MF_ERR_FIELD, "%s must be an object", path);
    if ((rc = get_dup(c, o, path, "name", &t->name)) || (rc = get_str(c, o, path, "dtype", &dt)) ||
        (rc = get_arr(c, o, path, "shape", &shape)) || (rc = get_u64(c, o, path, "offset", INT64_MAX, &t->offset)) ||
        (rc = get_u64(c, o, path, "bytes", INT64_MAX, &t->bytes)) ||
        (rc = get_hex(c, o, path, "xxh3_128", &t->xxh3_128)) || (rc = get_obj(c, o, path, "source", &src)) ||
        (rc = get_dup(c, o, path, "transform", &t->transform)))
        return rc;
    if (!*t->name)
        return bad(c, MF_ERR_VALUE, "%s.name is empty", path);
    if (st_dtype_parse(dt, &t->dtype) != 0)
        return bad(c, MF_ERR_VALUE, "%s.dtype \"%s\" is not a safetensors dtype", path, dt);
    size_t nd = json_array_size(shape);
    if (nd > ST_MAX_DIMS)
        return bad(c, MF_ERR_VALUE, "%s.shape has %zu dims (max %d)", path, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t nel = 1;
    for (size_t d = 0; d < nd; d++) {
        json_t *v = json_array_get(shape, d);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return bad(c, MF_ERR_FIELD, "%s.shape[%zu] must be a non-negative integer", path, d);
        t->shape[d] = (uint64_t)json_integer_value(v);
        if (__builtin_mul_overflow(nel, t->shape[d], &nel))
            return bad(c, MF_ERR_VALUE, "%s.shape overflows", path);
    }
    uint64_t want;
    if (__builtin_mul_overflow(nel, (uint64_t)st_dtype_size(t->dtype), &want) || want != t->bytes)
        return bad(c, MF_ERR_VALUE, "%s.bytes = %" PRIu64 " but shape x %s size = %" PRIu64, path, t->bytes,
                   dt, want);
    uint64_t end;
    if (t->offset < s->data_start || __builtin_add_overflow(t->offset, t->bytes, &end) || end > s->bytes)
        return bad(c, MF_ERR_VALUE, "%s [%" PRIu64 ", +%" PRIu64 ") lies outside the data section [%" PRIu64
                   ", %" PRIu64 ")", path, t->offset, t->bytes, s->data_start, s->bytes);
    char sp[160];
    snprintf(sp, sizeof sp, "%s.source", path);
    if ((rc = get_dup(c, src, sp, "name", &t->source.name)) ||
        (rc = get_u64(c, src, sp, "start", INT64_MAX, &t->source.start)) ||
        (rc = get_u64(c, src, sp, "end", INT64_MAX, &t->source.end)))
        return rc;
    json_t *dim = json_object_get(src, "dim");
    if (!dim)
        return bad(c, MF_ERR_FIELD, "%s.dim is missing", sp);
    if (json_is_null(dim))
        t->source.dim = -1;
    else if (json_is_integer(dim) && json_integer_value(dim) >= 0 && json_integer_value(dim) < ST_MAX_DIMS)
        t->source.dim = (int)json_integer_value(dim);
    else
        return bad(c, MF_ERR_FIELD, "%s.dim must be null or a dimension index", sp);
    if (t->source.start > t->source.end)
        return bad(c, MF_ERR_VALUE, "%s: start %" PRIu64 " > end %" PRIu64, sp, t->source.start, t->source.end);
    if (t->source.dim >= 0 && t->source.dim < t->ndim && t->source.end - t->source.start != t->shape[t->source.dim])
        return bad(c, MF_ERR_VALUE, "%s: end - start = %" PRIu64 " but shape[%d] = %" PRIu64, sp,
                   t->source.end - t->source.start, t->source.dim, t->shape[t->source.dim]);
    json_t *q = json_object_get(o, "quant_rel_rms");
    if (!q || json_is_null(q))
        t->quant_rel_rms = -1;
    else if (json_is_number(q) && json_number_value(q) >= 0)
        t->quant_rel_rms = json_number_value(q);
    else
        return bad(c, MF_ERR_FIELD, "%s.quant_rel_rms must be null or a non-negative number", path);
    return 0;
}

static int parse_shard(pctx *c, json_t *o, size_t i, const mf_plan *pl, mf_shard *s)
{
    char path[64];
    snprintf(path, sizeof path, "shards[%zu]", i);
    int rc;
    json_t *ts;
    if (!json_is_object(o))
        return bad(c, MF_ERR_FIELD, "%s must be an object", path);
    if ((rc = get_dup(c, o, path, "file", &s->file)) || (rc = get_u64(c, o, path, "bytes", INT64_MAX, &s->bytes)) ||
        (rc = get_hex(c, o, path, "xxh3_128", &s->xxh3_128)) ||
        (rc = get_u64(c, o, path, "data_start", INT64_MAX, &s->data_start)) ||
        (rc = get_hex(c, o, path, "header_xxh3_128", &s->header_xxh3_128)) ||
        (rc = get_u32(c, o, path, "pp_stage", &s->pp_stage)) || (rc = get_u32(c, o, path, "tp_rank", &s->tp_rank)) ||
        (rc = get_i32(c, o, path, "layer_first", &s->layer_first)) ||
        (rc = get_i32(c, o, path, "layer_last", &s->layer_last)) || (rc = get_arr(c, o, path, "tensors", &ts)))
        return rc;
    if (!plain_name(s->file))
        return bad(c, MF_ERR_VALUE, "%s.file \"%s\" must be a plain file name (no '/', not . or ..)", path, s->file);
    if (s->pp_stage >= pl->pp || s->tp_rank >= pl->tp)
        return bad(c, MF_ERR_VALUE, "%s: pp_stage %u / tp_rank %u outside the plan (pp=%u, tp=%u)", path,
                   s->pp_stage, s->tp_rank, pl->pp, pl->tp);
    if (s->data_start < 8 || s->data_start > s->bytes)
        return bad(c, MF_ERR_VALUE, "%s.data_start %" PRIu64 " outside [8, bytes=%" PRIu64 "]", path, s->data_start,
                   s->bytes);
    if (s->layer_first > s->layer_last)
        return bad(c, MF_ERR_VALUE, "%s: layer_first %d > layer_last %d", path, s->layer_first, s->layer_last);
    s->n_tensors = json_array_size(ts);
    s->tensors = calloc(s->n_tensors ? s->n_tensors : 1, sizeof *s->tensors);
    if (!s->tensors)
        return dsr1_err_set(c->err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c->label);
    uint64_t prev_end = s->data_start;
    for (size_t k = 0; k < s->n_tensors; k++) {
        char tp[96];
        snprintf(tp, sizeof tp, "%s.tensors[%zu]", path, k);
        if ((rc = parse_tensor(c, json_array_get(ts, k), tp, s, &s->tensors[k])))
            return rc;
        if (s->tensors[k].offset < prev_end)
            return bad(c, MF_ERR_VALUE, "%s.offset %" PRIu64 " overlaps or precedes the previous tensor (ends at %"
                       PRIu64 "): tensors must be in file order", tp, s->tensors[k].offset, prev_end);
        prev_end = s->tensors[k].offset + s->tensors[k].bytes;
    }
    return 0;
}

static int parse_all(pctx *c, json_t *root, mf_manifest *m)
{
    int rc;
    const char *fmt;
    json_t *model, *plan, *shards, *ranks, *cfg, *sources;
    if (!json_is_object(root))
        return bad(c, MF_ERR_JSON, "the top level must be a JSON object");
    if ((rc = get_str(c, root, "manifest", "format", &fmt)))
        return rc;
    if (strcmp(fmt, MF_FORMAT) != 0)
        return bad(c, MF_ERR_FORMAT, "format is \"%.64s\", not \"" MF_FORMAT "\"", fmt);
    json_t *ver = json_object_get(root, "version");
    if (!json_is_integer(ver))
        return bad(c, MF_ERR_FIELD, "manifest.version must be an integer");
    if (json_integer_value(ver) != MF_VERSION)
        return bad(c, MF_ERR_VERSION, "version %" JSON_INTEGER_FORMAT " is not supported (this tool reads version %d)",
                   json_integer_value(ver), MF_VERSION);
    m->version = MF_VERSION;
    if ((rc = get_hex(c, root, "manifest", "manifest_id", &m->manifest_id)) ||
        (rc = get_dup(c, root, "manifest", "tool", &m->tool)) || (rc = get_obj(c, root, "manifest", "model", &model)) ||
        (rc = get_obj(c, root, "manifest", "plan", &plan)) || (rc = get_arr(c, root, "manifest", "shards", &shards)) ||
        (rc = get_arr(c, root, "manifest", "ranks", &ranks)))
        return rc;
    /* model */
    if ((rc = get_dup(c, model, "model", "architecture", &m->architecture)) ||
        (rc = get_hex(c, model, "model", "config_xxh3_128", &m->config_xxh3_128)) ||
        (rc = get_obj(c, model, "model", "config", &cfg)) || (rc = get_arr(c, model, "model", "sources", &sources)))
        return rc;
    m->config_json = json_dumps(cfg, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    if (!m->config_json)
        return dsr1_err_set(c->err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c->label);
    dsr1_err ce;
    if (ck_config_parse(&m->config, m->config_json, strlen(m->config_json), "model.config", &ce))
        return bad(c, MF_ERR_VALUE, "%s", ce.msg);
    m->n_sources = json_array_size(sources);
    m->sources = calloc(m->n_sources ? m->n_sources : 1, sizeof *m->sources);
    if (!m->sources)
        return dsr1_err_set(c->err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c->label);
    for (size_t i = 0; i < m->n_sources; i++) {
        char p[48];
        snprintf(p, sizeof p, "model.sources[%zu]", i);
        json_t *o = json_array_get(sources, i);
        if (!json_is_object(o))
            return bad(c, MF_ERR_FIELD, "%s must be an object", p);
        if ((rc = get_dup(c, o, p, "file", &m->sources[i].file)) ||
            (rc = get_u64(c, o, p, "bytes", INT64_MAX, &m->sources[i].bytes)))
            return rc;
    }
    /* plan */
    mf_plan *pl = &m->plan;
    const char *dt;
    if ((rc = get_u32(c, plan, "plan", "tp", &pl->tp)) || (rc = get_u32(c, plan, "plan", "ep", &pl->ep)) ||
        (rc = get_u32(c, plan, "plan", "pp", &pl->pp)) || (rc = get_u32(c, plan, "plan", "dp", &pl->dp)) ||
        (rc = get_u32(c, plan, "plan", "world_size", &pl->world_size)) ||
        (rc = get_u32(c, plan, "plan", "nodes", &pl->nodes)) ||
        (rc = get_u32(c, plan, "plan", "gpus_per_node", &pl->gpus_per_node)) ||
        (rc = get_str(c, plan, "plan", "dtype", &dt)))
        return rc;
    json_t *mtp = json_object_get(plan, "mtp");
    if (!json_is_boolean(mtp))
        return bad(c, MF_ERR_FIELD, "plan.mtp must be true or false");
    pl->mtp = json_is_true(mtp);
    if (strcmp(dt, "fp8") != 0 && strcmp(dt, "bf16") != 0)
        return bad(c, MF_ERR_VALUE, "plan.dtype \"%.32s\" is not fp8 or bf16", dt);
    snprintf(pl->dtype, sizeof pl->dtype, "%s", dt);
    if (!pl->tp || !pl->ep || !pl->pp || !pl->dp || !pl->nodes || !pl->gpus_per_node)
        return bad(c, MF_ERR_VALUE, "plan: tp, ep, pp, dp, nodes and gpus_per_node must be >= 1");
    if ((uint64_t)pl->tp * pl->pp * pl->dp != pl->world_size ||
        (uint64_t)pl->nodes * pl->gpus_per_node != pl->world_size)
        return bad(c, MF_ERR_VALUE, "plan: world_size %u != tp x pp x dp (%u x %u x %u) or nodes x gpus_per_node "
                   "(%u x %u)", pl->world_size, pl->tp, pl->pp, pl->dp, pl->nodes, pl->gpus_per_node);
    if (pl->tp % pl->ep)
        return bad(c, MF_ERR_VALUE, "plan: ep %u does not divide tp %u", pl->ep, pl->tp);
    /* manifest_id must match what model + plan hash to */
    hx128 want = m->manifest_id;
    mf_manifest tmp = *m;
    hx128 got = mf_compute_id(&tmp);
    if (!hx_eq(want, got)) {
        char a[HX_HEX_LEN + 1], b[HX_HEX_LEN + 1];
        hx_hex(want, a);
        hx_hex(got, b);
        return bad(c, MF_ERR_VALUE, "manifest_id %s does not match model + plan (which hash to %s): the manifest "
                   "was edited", a, b);
    }
    /* shards */
    m->n_shards = json_array_size(shards);
    if (m->n_shards != (size_t)pl->pp * pl->tp)
        return bad(c, MF_ERR_VALUE, "shards has %zu entries, the plan needs pp x tp = %u", m->n_shards,
                   pl->pp * pl->tp);
    m->shards = calloc(m->n_shards ? m->n_shards : 1, sizeof *m->shards);
    if (!m->shards)
        return dsr1_err_set(c->err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c->label);
    for (size_t i = 0; i < m->n_shards; i++) {
        if ((rc = parse_shard(c, json_array_get(shards, i), i, pl, &m->shards[i])))
            return rc;
        if (m->shards[i].pp_stage * pl->tp + m->shards[i].tp_rank != i)
            return bad(c, MF_ERR_VALUE, "shards[%zu] is (pp_stage %u, tp_rank %u): shards must be ordered by "
                       "pp_stage x tp + tp_rank", i, m->shards[i].pp_stage, m->shards[i].tp_rank);
        for (size_t k = 0; k < i; k++)
            if (strcmp(m->shards[k].file, m->shards[i].file) == 0)
                return bad(c, MF_ERR_VALUE, "shards[%zu] and shards[%zu] name the same file \"%s\"", k, i,
                           m->shards[i].file);
    }
    /* ranks */
    m->n_ranks = json_array_size(ranks);
    if (m->n_ranks != pl->world_size)
        return bad(c, MF_ERR_VALUE, "ranks has %zu entries but world_size is %u", m->n_ranks, pl->world_size);
    m->ranks = calloc(m->n_ranks ? m->n_ranks : 1, sizeof *m->ranks);
    if (!m->ranks)
        return dsr1_err_set(c->err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c->label);
    for (size_t i = 0; i < m->n_ranks; i++) {
        char p[32];
        snprintf(p, sizeof p, "ranks[%zu]", i);
        json_t *o = json_array_get(ranks, i);
        mf_rank *r = &m->ranks[i];
        const char *file;
        if (!json_is_object(o))
            return bad(c, MF_ERR_FIELD, "%s must be an object", p);
        if ((rc = get_u32(c, o, p, "rank", &r->rank)) || (rc = get_u32(c, o, p, "node", &r->node)) ||
            (rc = get_u32(c, o, p, "local_rank", &r->local_rank)) || (rc = get_u32(c, o, p, "dp", &r->dp)) ||
            (rc = get_u32(c, o, p, "pp", &r->pp)) || (rc = get_u32(c, o, p, "tp", &r->tp)) ||
            (rc = get_str(c, o, p, "shard", &file)))
            return rc;
        uint32_t rk = (uint32_t)i;
        if (r->rank != rk || r->tp != rk % pl->tp || r->pp != (rk / pl->tp) % pl->pp ||
            r->dp != rk / (pl->tp * pl->pp) || r->node != rk / pl->gpus_per_node ||
            r->local_rank != rk % pl->gpus_per_node)
            return bad(c, MF_ERR_VALUE, "%s is {rank %u, node %u, local_rank %u, dp %u, pp %u, tp %u}; rank %u of this "
                       "plan is {node %u, local_rank %u, dp %u, pp %u, tp %u} (tp fastest, then pp, then dp)",
                       p, r->rank, r->node, r->local_rank, r->dp, r->pp, r->tp, rk, rk / pl->gpus_per_node,
                       rk % pl->gpus_per_node, rk / (pl->tp * pl->pp), (rk / pl->tp) % pl->pp, rk % pl->tp);
        r->shard = r->pp * pl->tp + r->tp;
        if (strcmp(m->shards[r->shard].file, file) != 0)
            return bad(c, MF_ERR_VALUE, "%s.shard is \"%s\", but (pp %u, tp %u) is \"%s\"", p, file, r->pp, r->tp,
                       m->shards[r->shard].file);
    }
    return 0;
}

int mf_parse(mf_manifest **out, const char *json, size_t len, const char *label, dsr1_err *err)
{
    *out = NULL;
    pctx c = {label ? label : "manifest", err};
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dsr1_err_set(err, DSR1_E_INVALID, MF_ERR_JSON, 0, "%s: not valid JSON at line %d column %d: %s",
                            c.label, je.line, je.column, je.text);
    mf_manifest *m = calloc(1, sizeof *m);
    if (!m) {
        json_decref(root);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", c.label);
    }
    int rc = parse_all(&c, root, m);
    json_decref(root);
    if (rc) {
        mf_free(m);
        return rc;
    }
    *out = m;
    return 0;
}


int mf_load(mf_manifest **out, const char *path, dsr1_err *err)
{
    char *b;
    size_t n;
    *out = NULL;
    int rc = fu_read_all(path, (uint64_t)4 << 30, MF_ERR_OPEN, &b, &n, err);
    if (rc)
        return rc;
    rc = mf_parse(out, b, n, path, err);
    free(b);
    return rc;
}

void mf_shard_clear(mf_shard *s)
{
    if (!s)
        return;
    for (size_t k = 0; s->tensors && k < s->n_tensors; k++) {
        free(s->tensors[k].name);
        free(s->tensors[k].source.name);
        free(s->tensors[k].transform);
    }
    free(s->tensors);
    free(s->file);
    memset(s, 0, sizeof *s);
}

char *mf_shard_to_json(const mf_shard *s)
{
    return dump(shard_json(s));
}

int mf_shard_parse(mf_shard *out, const char *json, size_t len, const mf_plan *plan, const char *label,
                   dsr1_err *err)
{
    memset(out, 0, sizeof *out);
    pctx c = {label ? label : "shard", err};
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return dsr1_err_set(err, DSR1_E_INVALID, MF_ERR_JSON, 0, "%s: not valid JSON at line %d column %d: %s",
                            c.label, je.line, je.column, je.text);
    int rc = parse_shard(&c, root, 0, plan, out);
    json_decref(root);
    if (rc)
        mf_shard_clear(out);
    return rc;
}

void mf_free(mf_manifest *m)
{
    if (!m)
        return;
    free(m->architecture);
    free(m->config_json);
    for (size_t i = 0; i < m->n_sources; i++)
        free(m->sources[i].file);
    free(m->sources);
    for (size_t i = 0; m->shards && i < m->n_shards; i++)
        mf_shard_clear(&m->shards[i]);
    free(m->shards);
    free(m->ranks);
    free(m->tool);
    free(m);
}

const mf_shard *mf_shard_of_rank(const mf_manifest *m, uint32_t rank)
{
    if (!m || rank >= m->n_ranks || m->ranks[rank].shard >= m->n_shards)
        return NULL;
    return &m->shards[m->ranks[rank].shard];
}

const mf_tensor *mf_find_tensor(const mf_shard *s, const char *name)
{
    for (size_t i = 0; s && i < s->n_tensors; i++)
        if (strcmp(s->tensors[i].name, name) == 0)
            return &s->tensors[i];
    return NULL;
}

/* ---- XXH128SUMS ---- */

typedef struct sum_ent {
    const char *file;
    hx128 h;
} sum_ent;

static int sum_cmp(const void *a, const void *b)
{
    return strcmp(((const sum_ent *)a)->file, ((const sum_ent *)b)->file);
}

int mf_sums_write(const char *path, const char *const *files, const hx128 *digests, size_t n, dsr1_err *err)
{
    sum_ent *e = malloc((n ? n : 1) * sizeof *e);
    if (!e)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", path);
    size_t cap = 1;
    for (size_t i = 0; i < n; i++) {
        if (!plain_name(files[i])) {
            free(e);
            return dsr1_err_set(err, DSR1_E_INVALID, MF_ERR_VALUE, 0, "%s: \"%s\" is not a plain file name", path,
                                files[i]);
        }
        e[i].file = files[i];
        e[i].h = digests[i];
        cap += HX_HEX_LEN + 3 + strlen(files[i]);
    }
    qsort(e, n, sizeof *e, sum_cmp);
    char *buf = malloc(cap);
    if (!buf) {
        free(e);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", path);
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char hex[HX_HEX_LEN + 1];
        hx_hex(e[i].h, hex);
        o += (size_t)snprintf(buf + o, cap - o, "%s  %s\n", hex, e[i].file);
    }
    free(e);
    int rc = write_atomic(path, buf, o, err);
    free(buf);
    return rc;
}

int mf_sums_read(const char *path, char ***files, hx128 **digests, size_t *n, dsr1_err *err)
{
    char *b;
    size_t len;
    *files = NULL;
    *digests = NULL;
    *n = 0;
    int rc = fu_read_all(path, (uint64_t)64 << 20, MF_ERR_OPEN, &b, &len, err);
    if (rc)
        return rc;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += b[i] == '\n';
    char **f = calloc(lines + 1, sizeof *f);
    hx128 *d = calloc(lines + 1, sizeof *d);
    size_t k = 0, lineno = 0;
    if (!f || !d) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", path);
        goto fail;
    }
    for (char *p = b; p < b + len;) {
        char *nl = memchr(p, '\n', (size_t)(b + len - p));
        lineno++;
        if (!nl) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, MF_ERR_VALUE, 0, "%s:%zu: last line has no newline", path, lineno);
            goto fail;
        }
        *nl = 0;
        char hex[HX_HEX_LEN + 1];
        if ((size_t)(nl - p) < HX_HEX_LEN + 3 || p[HX_HEX_LEN] != ' ' || p[HX_HEX_LEN + 1] != ' ') {
            rc = dsr1_err_set(err, DSR1_E_INVALID, MF_ERR_VALUE, 0,
                              "%s:%zu: expected \"<32 hex>  <file>\" (xxh128sum format)", path, lineno);
            goto fail;
        }
        memcpy(hex, p, HX_HEX_LEN);
        hex[HX_HEX_LEN] = 0;
        const char *name = p + HX_HEX_LEN + 2;
        if (hx_parse(hex, &d[k]) != 0 || !plain_name(name)) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, MF_ERR_VALUE, 0,
                              "%s:%zu: bad digest or file name (plain names only)", path, lineno);
            goto fail;
        }
        if (!(f[k] = strdup(name))) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "%s: out of memory", path);
            goto fail;
        }
        k++;
        p = nl + 1;
    }
    free(b);
    *files = f;
    *digests = d;
    *n = k;
    return 0;
fail:
    for (size_t i = 0; f && i < k; i++)
        free(f[i]);
    free(f);
    free(d);
    free(b);
    return rc;
}
