/* st: safetensors reader (mmap, zero-copy, validates everything) and streaming
 * atomic writer. Accepted/rejected inputs: docs/formats/safetensors.md. */
#include "st.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- dtypes ---- */

static const struct {
    const char *name;
    size_t size;
} st_dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1},       [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},
    [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
    [ST_I16] = {"I16", 2},         [ST_U16] = {"U16", 2}, [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},       [ST_I32] = {"I32", 4}, [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},         [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},
};

const char *st_dtype_name(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? st_dtypes[d].name : "?";
}

int st_dtype_parse(const char *s, st_dtype *out)
{
    for (int i = 0; s && i < ST_DTYPE_COUNT; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) {
            if (out)
                *out = (st_dtype)i;
            return 0;
        }
    return -1;
}

size_t st_dtype_size(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? st_dtypes[d].size : 0;
}

/* Element count and byte size, overflow-checked the way the official
 * implementation does it (left-to-right product, then x bits), so that we reject
 * at least what it rejects. Returns 0, or -1 on overflow. */
static int st_sizes(st_dtype d, int ndim, const uint64_t *shape, uint64_t *nelem, uint64_t *nbytes)
{
    uint64_t n = 1, bits;
    for (int i = 0; i < ndim; i++)
        if (__builtin_mul_overflow(n, shape[i], &n))
            return -1;
    if (__builtin_mul_overflow(n, (uint64_t)st_dtype_size(d) * 8, &bits))
        return -1;
    *nelem = n;
    *nbytes = bits / 8;
    return 0;
}

/* Offset of the first byte that is not valid UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or len if all valid. */
static size_t utf8_invalid_at(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i < n)
            return i;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += n;
    }
    return len;
}

/* ---- reader ---- */

struct st_file {
    char *label;
    const uint8_t *base;
    uint64_t size;
    int mapped;
    uint64_t header_len, data_start;
    size_t n;
    st_tensor *t;
    const st_tensor **by_name; /* into t, sorted by name */
    size_t n_meta;
    const char **meta; /* key0, val0, key1, val1, ... */
    char *arena;       /* every name and metadata string */
};

typedef struct {
    const char *label;
    const char *hdr; /* header JSON (file bytes [8, 8+N)) */
    size_t hlen;
    dsr1_err *err;
} st_ctx;

#define NAMEFMT "%.200s" /* keep long names from pushing the rest out of the message */

static int st_bad(st_ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int st_bad(st_ctx *c, int code, const char *fmt, ...)
{
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return dsr1_err_set(c->err, DSR1_E_INVALID, code, 0, "%s: %s", c->label, what);
}

/* Absolute file offset of the key "name" in the header, or 0 if not found
 * (names with escapes); used only to point messages at the right place. */
static uint64_t st_key_offset(const st_ctx *c, const char *name)
{
    size_t nl = strlen(name);
    const char *p = c->hdr, *end = c->hdr + c->hlen;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (!q || (size_t)(end - q) < nl + 2)
            return 0;
        if (memcmp(q + 1, name, nl) == 0 && q[nl + 1] == '"') {
            const char *r = q + nl + 2;
            while (r < end && (*r == ' ' || *r == '\t' || *r == '\n' || *r == '\r'))
                r++;
            if (r < end && *r == ':')
                return 8 + (uint64_t)(q - c->hdr);
        }
        p = q + 1;
    }
    return 0;
}

/* The JSON string token that ends just before byte `pos` of the header, copied
 * (unescaped bytes as written) into out; "" if none. */
static void st_string_before(const char *h, size_t pos, char *out, size_t cap)
{
    out[0] = 0;
    size_t i = pos;
    while (i > 0 && strchr(" \t\r\n:", h[i - 1]))
        i--;
    if (i == 0 || h[i - 1] != '"')
        return;
    size_t e = --i;
    while (i > 0) {
        i--;
        if (h[i] == '"') {
            size_t bs = 0;
            while (i > bs && h[i - 1 - bs] == '\\')
                bs++;
            if (bs % 2 == 0)
                break;
        }
    }
    if (h[i] != '"')
        return;
    size_t n = e - i - 1;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, h + i + 1, n);
    out[n] = 0;
}

/* A number too large for jansson: say whether it sat in a shape or data_offsets. */
static int st_overflow_field(const char *h, size_t pos)
{
    size_t i = pos;
    while (i > 0 && strchr("0123456789+-.eE \t\r\n,", h[i - 1]))
        i--;
    if (i == 0 || h[i - 1] != '[')
        return ST_ERR_HEADER_JSON;
    char key[32];
    st_string_before(h, i - 1, key, sizeof key);
    if (strcmp(key, "shape") == 0)
        return ST_ERR_SHAPE;
    if (strcmp(key, "data_offsets") == 0)
        return ST_ERR_OFFSETS;
    return ST_ERR_HEADER_JSON;
}

/* jansson reads "-0" as the integer 0; the official parser sees a float and rejects
 * it, so find it ourselves (outside strings). Returns the offset of the '-' or len. */
static size_t st_find_neg_zero(const char *h, size_t len)
{
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        if (in_str) {
            if (h[i] == '\\')
                i++;
            else if (h[i] == '"')
                in_str = 0;
        } else if (h[i] == '"') {
            in_str = 1;
        } else if (h[i] == '-' && i + 1 < len && h[i + 1] == '0' &&
                   (i + 2 == len || !strchr("0123456789.eE", h[i + 2]))) {
            return i;
        }
    }
    return len;
}

static const char *st_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return json_integer_value(v) < 0 ? "a negative integer" : "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* A non-negative JSON integer; -1 otherwise. */
static int st_json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static char *st_arena_put(char **cur, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = *cur;
    memcpy(p, s, n);
    *cur += n;
    return p;
}

/* Entry-level rejection: "<file>: tensor '<name>' (header entry at byte X): <what>".
 * The key is looked up only here, on failure, to keep opening linear. */
static int st_bad_entry(st_ctx *c, int code, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int st_bad_entry(st_ctx *c, int code, const char *name, const char *fmt, ...)
{
    char what[640], where[64] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    uint64_t at = st_key_offset(c, name);
    if (at)
        snprintf(where, sizeof where, " (header entry at byte %" PRIu64 ")", at);
    return st_bad(c, code, "tensor '" NAMEFMT "'%s: %s", name, where, what);
}

static int st_parse_entry(st_ctx *c, const char *name, json_t *v, st_tensor *t)
{
    if (!name[0])
        return st_bad_entry(c, ST_ERR_NAME, name, "empty tensor name; every tensor needs a name");
    if (!json_is_object(v))
        return st_bad_entry(c, ST_ERR_ENTRY_NOT_OBJECT, name, "entry is %s, expected an object with "
                            "dtype, shape, data_offsets", st_json_kind(v));
    static const char *const fields[3] = {"dtype", "shape", "data_offsets"};
    for (int k = 0; k < 3; k++)
        if (!json_object_get(v, fields[k]))
            return st_bad_entry(c, ST_ERR_ENTRY_FIELDS, name, "field '%s' is missing", fields[k]);
    if (json_object_size(v) != 3) {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
                return st_bad_entry(c, ST_ERR_ENTRY_FIELDS, name, "unexpected field '" NAMEFMT "' (an "
                                    "entry has exactly dtype, shape, data_offsets)", key);
        }
    }
    json_t *dt = json_object_get(v, "dtype");
    if (!json_is_string(dt))
        return st_bad_entry(c, ST_ERR_DTYPE, name, "dtype is %s, expected a string", st_json_kind(dt));
    if (st_dtype_parse(json_string_value(dt), &t->dtype) != 0)
        return st_bad_entry(c, ST_ERR_DTYPE, name, "unknown dtype '%.40s' (known: BOOL U8 I8 F8_E4M3 "
                            "F8_E5M2 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64)",
                            json_string_value(dt));
    json_t *sh = json_object_get(v, "shape");
    if (!json_is_array(sh))
        return st_bad_entry(c, ST_ERR_SHAPE, name, "shape is %s, expected an array", st_json_kind(sh));
    if (json_array_size(sh) > ST_MAX_DIMS)
        return st_bad_entry(c, ST_ERR_SHAPE, name, "shape has %zu dimensions, at most %d are supported",
                            json_array_size(sh), ST_MAX_DIMS);
    t->ndim = (int)json_array_size(sh);
    for (int d = 0; d < t->ndim; d++)
        if (st_json_u64(json_array_get(sh, (size_t)d), &t->shape[d]) != 0)
            return st_bad_entry(c, ST_ERR_SHAPE, name, "shape[%d] is %s, expected a non-negative integer",
                                d, st_json_kind(json_array_get(sh, (size_t)d)));
    json_t *of = json_object_get(v, "data_offsets");
    if (!json_is_array(of) || json_array_size(of) != 2)
        return st_bad_entry(c, ST_ERR_OFFSETS, name, "data_offsets is %s%s, expected [begin, end]",
                            st_json_kind(of),
                            !json_is_array(of)           ? ""
                            : json_array_size(of) < 2    ? " with fewer than 2 items"
                                                         : " with more than 2 items");
    for (int k = 0; k < 2; k++)
        if (st_json_u64(json_array_get(of, (size_t)k), k ? &t->end : &t->begin) != 0)
            return st_bad_entry(c, ST_ERR_OFFSETS, name, "data_offsets[%d] is %s, expected a "
                                "non-negative integer", k, st_json_kind(json_array_get(of, (size_t)k)));
    if (t->begin > t->end)
        return st_bad_entry(c, ST_ERR_OFFSETS, name, "data_offsets begin %" PRIu64 " > end %" PRIu64,
                            t->begin, t->end);
    if (st_sizes(t->dtype, t->ndim, t->shape, &t->nelem, &t->nbytes) != 0)
        return st_bad_entry(c, ST_ERR_SIZE_OVERFLOW, name, "shape x element size overflows 64 bits");
    if (t->nbytes != t->end - t->begin)
        return st_bad_entry(c, ST_ERR_SIZE_MISMATCH, name, "%s shape needs %" PRIu64 " bytes but "
                            "data_offsets [%" PRIu64 ", %" PRIu64 ") span %" PRIu64,
                            st_dtype_name(t->dtype), t->nbytes, t->begin, t->end, t->end - t->begin);
    return 0;
}

static int st_cmp_offset(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name); /* equal offsets only for empty tensors */
}

static int st_cmp_name_ptr(const void *a, const void *b)
{
    return strcmp((*(const st_tensor *const *)a)->name, (*(const st_tensor *const *)b)->name);
}

static int st_validate(st_file *f, dsr1_err *err)
{
    st_ctx c = {f->label, NULL, 0, err};
    if (f->size < 8)
        return st_bad(&c, ST_ERR_TOO_SMALL, "file is %" PRIu64 " bytes, shorter than the 8-byte "
                      "header length; truncated or not a safetensors file", f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->base[i];
    if (n > ST_MAX_HEADER)
        return st_bad(&c, ST_ERR_HEADER_TOO_LARGE, "header length %" PRIu64 " (u64 at byte 0) "
                      "exceeds the limit of %llu bytes; not a safetensors file or corrupted",
                      n, ST_MAX_HEADER);
    if (n > f->size - 8)
        return st_bad(&c, ST_ERR_HEADER_BEYOND_EOF, "header of %" PRIu64 " bytes at byte 8 ends "
                      "beyond the end of the %" PRIu64 "-byte file; truncated", n, f->size);
    f->header_len = n;
    f->data_start = 8 + n;
    c.hdr = (const char *)f->base + 8;
    c.hlen = (size_t)n;
    if (n == 0 || c.hdr[0] != '{')
        return st_bad(&c, ST_ERR_HEADER_NOT_OBJECT, "header at byte 8 does not start with '{'%s",
                      n == 0 ? " (it is empty)" : "");
    size_t bad = utf8_invalid_at((const uint8_t *)c.hdr, c.hlen);
    if (bad < c.hlen)
        return st_bad(&c, ST_ERR_HEADER_UTF8, "header is not valid UTF-8 at byte %" PRIu64
                      " (0x%02x)", 8 + (uint64_t)bad, (unsigned)(uint8_t)c.hdr[bad]);

    size_t nz = st_find_neg_zero(c.hdr, c.hlen);
    if (nz < c.hlen) {
        int code = st_overflow_field(c.hdr, nz + 2);
        return st_bad(&c, code, "'-0' at byte %" PRIu64 "%s: integers must be non-negative and "
                      "written without a sign", 8 + (uint64_t)nz,
                      code == ST_ERR_SHAPE     ? " in a shape"
                      : code == ST_ERR_OFFSETS ? " in data_offsets"
                                               : "");
    }

    json_error_t je;
    json_t *root = json_loadb(c.hdr, c.hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        size_t pos = je.position > 0 && (size_t)je.position <= c.hlen ? (size_t)je.position : 0;
        uint64_t at = 8 + (uint64_t)pos;
        switch (json_error_code(&je)) {
        case json_error_duplicate_key: {
            char key[256];
            st_string_before(c.hdr, pos, key, sizeof key);
            return st_bad(&c, ST_ERR_DUPLICATE_KEY, "key '%s' appears twice in the same object "
                          "(second one ends at byte %" PRIu64 ")", key, at);
        }
        case json_error_out_of_memory:
            return dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_HEADER_JSON, 0,
                                "%s: out of memory parsing the %" PRIu64 "-byte header", f->label, n);
        case json_error_numeric_overflow: {
            int code = st_overflow_field(c.hdr, pos);
            return st_bad(&c, code, "%s at byte %" PRIu64 " does not fit a 64-bit integer (%s)",
                          code == ST_ERR_SHAPE     ? "shape entry"
                          : code == ST_ERR_OFFSETS ? "data_offsets entry"
                                                   : "number",
                          at, je.text);
        }
        default:
            return st_bad(&c, ST_ERR_HEADER_JSON, "header JSON error at byte %" PRIu64
                          " (line %d, column %d): %s", at, je.line, je.column, je.text);
        }
    }
    int rc = 0;
    if (!json_is_object(root)) {
        rc = st_bad(&c, ST_ERR_HEADER_NOT_OBJECT, "header is %s, not an object", st_json_kind(root));
        goto out;
    }

    /* One allocation for every string we hand out. */
    size_t strbytes = 0, nt = 0, nm = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(v)) {
                rc = st_bad(&c, ST_ERR_METADATA, "__metadata__ is %s, expected an object of "
                            "string -> string", st_json_kind(v));
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = st_bad(&c, ST_ERR_METADATA, "__metadata__ key '" NAMEFMT "' has %s value; "
                                "metadata values must be strings", mk, st_json_kind(mv));
                    goto out;
                }
                strbytes += strlen(mk) + json_string_length(mv) + 2;
                nm++;
            }
        } else {
            strbytes += strlen(key) + 1;
            nt++;
        }
    }
    f->t = calloc(nt ? nt : 1, sizeof *f->t);
    f->by_name = calloc(nt ? nt : 1, sizeof *f->by_name);
    f->meta = calloc(nm ? 2 * nm : 1, sizeof *f->meta);
    f->arena = malloc(strbytes ? strbytes : 1);
    if (!f->t || !f->by_name || !f->meta || !f->arena) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_OPEN, 0, "%s: out of memory for %zu tensors",
                          f->label, nt);
        goto out;
    }
    char *cur = f->arena;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                f->meta[2 * f->n_meta] = st_arena_put(&cur, mk);
                f->meta[2 * f->n_meta + 1] = st_arena_put(&cur, json_string_value(mv));
                f->n_meta++;
            }
            continue;
        }
        st_tensor *t = &f->t[f->n];
        if ((rc = st_parse_entry(&c, key, v, t)) != 0)
            goto out;
        t->name = st_arena_put(&cur, key);
        f->n++;
    }

    qsort(f->t, f->n, sizeof *f->t, st_cmp_offset);
    uint64_t expect = 0;
    for (size_t i = 0; i < f->n; i++) {
        st_tensor *t = &f->t[i];
        if (t->begin != expect) {
            if (t->begin < expect)
                rc = st_bad(&c, ST_ERR_OFFSET_GAP, "tensor '" NAMEFMT "': data_offsets [%" PRIu64
                            ", %" PRIu64 ") overlap tensor '" NAMEFMT "' which ends at %" PRIu64
                            " (file byte %" PRIu64 ")", t->name, t->begin, t->end,
                            f->t[i - 1].name, expect, f->data_start + expect);
            else
                rc = st_bad(&c, ST_ERR_OFFSET_GAP, "tensor '" NAMEFMT "': data_offsets begin at %"
                            PRIu64 " but the previous tensor ends at %" PRIu64 " (a gap of %" PRIu64
                            " bytes at file byte %" PRIu64 ")", t->name, t->begin, expect,
                            t->begin - expect, f->data_start + expect);
            goto out;
        }
        expect = t->end;
    }
    uint64_t data_len = f->size - f->data_start;
    if (expect != data_len) {
        if (expect > data_len)
            rc = st_bad(&c, ST_ERR_DATA_LENGTH, "tensor '" NAMEFMT "' ends at file byte %" PRIu64
                        " beyond the end of the %" PRIu64 "-byte file; truncated",
                        f->t[f->n - 1].name, f->data_start + expect, f->size);
        else
            rc = st_bad(&c, ST_ERR_DATA_LENGTH, "%" PRIu64 " trailing bytes after the last tensor%s" NAMEFMT "%s"
                        " (data ends at file byte %" PRIu64 ", file is %" PRIu64 " bytes)",
                        data_len - expect, f->n ? " '" : "", f->n ? f->t[f->n - 1].name : "",
                        f->n ? "'" : "", f->data_start + expect, f->size);
        goto out;
    }
    for (size_t i = 0; i < f->n; i++) {
        f->t[i].file_offset = f->data_start + f->t[i].begin;
        f->t[i].data = f->base + f->t[i].file_offset;
        f->by_name[i] = &f->t[i];
    }
    qsort(f->by_name, f->n, sizeof *f->by_name, st_cmp_name_ptr);
out:
    json_decref(root);
    return rc;
}

static int st_finish_open(st_file *f, st_file **out, dsr1_err *err)
{
    int rc = st_validate(f, err);
    if (rc != 0) {
        st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int st_open(st_file **out, const char *path, dsr1_err *err)
{
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->label = strdup(path))) {
        free(f);
        return dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_OPEN, 0, "%s: out of memory", path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        st_close(f);
        return dsr1_err_set(err, DSR1_E_IO, ST_ERR_OPEN, e, "cannot open %s", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        st_close(f);
        return dsr1_err_set(err, DSR1_E_INVALID, ST_ERR_OPEN, 0, "%s: not a regular file", path);
    }
    f->size = (uint64_t)sb.st_size;
    if (f->size > 0) {
        void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            st_close(f);
            return dsr1_err_set(err, DSR1_E_IO, ST_ERR_OPEN, e, "cannot mmap %s (%" PRIu64 " bytes)",
                                path, (uint64_t)sb.st_size);
        }
        f->base = m;
        f->mapped = 1;
    } else {
        f->base = (const uint8_t *)"";
    }
    close(fd);
    return st_finish_open(f, out, err);
}

int st_open_mem(st_file **out, const void *buf, size_t len, const char *label, dsr1_err *err)
{
    *out = NULL;
    if (!label)
        label = "<memory>";
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->label = strdup(label))) {
        free(f);
        return dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_OPEN, 0, "%s: out of memory", label);
    }
    f->base = buf ? buf : (const void *)"";
    f->size = buf ? len : 0;
    return st_finish_open(f, out, err);
}

void st_close(st_file *f)
{
    if (!f)
        return;
    if (f->mapped)
        munmap((void *)f->base, (size_t)f->size);
    free(f->t);
    free(f->by_name);
    free(f->meta);
    free(f->arena);
    free(f->label);
    free(f);
}

const char *st_path(const st_file *f) { return f->label; }
uint64_t st_file_size(const st_file *f) { return f->size; }
uint64_t st_header_len(const st_file *f) { return f->header_len; }
uint64_t st_data_start(const st_file *f) { return f->data_start; }
const void *st_base(const st_file *f) { return f->base; }
size_t st_count(const st_file *f) { return f->n; }

const st_tensor *st_get(const st_file *f, size_t i)
{
    return i < f->n ? &f->t[i] : NULL;
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const st_tensor *t = f->by_name[mid];
        int c = strcmp(t->name, name);
        if (c == 0)
            return t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t st_meta_count(const st_file *f) { return f->n_meta; }

int st_meta_at(const st_file *f, size_t i, const char **key, const char **val)
{
    if (i >= f->n_meta)
        return -1;
    if (key)
        *key = f->meta[2 * i];
    if (val)
        *val = f->meta[2 * i + 1];
    return 0;
}

const char *st_meta_get(const st_file *f, const char *key)
{
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

/* ---- writer ---- */

struct st_writer {
    char *path, *tmp;
    int fd;
    int committed, aborted, registered;
    size_t n;
    char **names;
    uint64_t *begin, *bytes;
    _Atomic uint64_t *written;
    atomic_int failed;
    uint8_t *header;
    uint64_t data_start, file_size;
    struct st_writer *next;
};

/* Writers with a live temp file in this process: a second writer for the same
 * path would share "<path>.tmp.<pid>". */
static pthread_mutex_t st_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static st_writer *st_reg_head;

static int st_reg_add(st_writer *w)
{
    pthread_mutex_lock(&st_reg_lock);
    for (st_writer *x = st_reg_head; x; x = x->next)
        if (strcmp(x->tmp, w->tmp) == 0) {
            pthread_mutex_unlock(&st_reg_lock);
            return -1;
        }
    w->next = st_reg_head;
    st_reg_head = w;
    w->registered = 1;
    pthread_mutex_unlock(&st_reg_lock);
    return 0;
}

static void st_reg_del(st_writer *w)
{
    if (!w->registered)
        return;
    pthread_mutex_lock(&st_reg_lock);
    for (st_writer **p = &st_reg_head; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
    w->registered = 0;
    pthread_mutex_unlock(&st_reg_lock);
}

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} st_buf;

static void sb_put(st_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(st_buf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_u64(st_buf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    sb_put(b, tmp, (size_t)n);
}

/* JSON string; input is valid UTF-8 (checked by the caller) and passes through. */
static void sb_json(st_buf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            sb_put(b, e, 2);
        } else if (ch < 0x20) {
            char e[8];
            snprintf(e, sizeof e, "\\u%04x", ch);
            sb_put(b, e, 6);
        } else {
            sb_put(b, p, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static int st_usage(dsr1_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int st_usage(dsr1_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dsr1_err_vset(err, DSR1_E_USAGE, code, 0, fmt, ap);
    va_end(ap);
    return DSR1_E_USAGE;
}

static int st_valid_utf8(const char *s)
{
    size_t n = strlen(s);
    return utf8_invalid_at((const uint8_t *)s, n) == n;
}

typedef struct {
    const char *s;
    size_t i;
} st_stri;

static int st_cmp_stri(const void *a, const void *b)
{
    const st_stri *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

/* First duplicated string among strs[0], strs[stride], ... (n items): returns the
 * later index and puts the earlier one in *other; n if all distinct, or on OOM
 * (the reader's duplicate check still catches it then). */
static size_t st_first_dup(const char *const *strs, size_t stride, size_t n, size_t *other)
{
    if (n < 2)
        return n;
    st_stri *v = malloc(n * sizeof *v);
    if (!v)
        return n;
    for (size_t i = 0; i < n; i++)
        v[i] = (st_stri){strs[i * stride], i};
    qsort(v, n, sizeof *v, st_cmp_stri);
    size_t dup = n;
    for (size_t i = 1; i < n; i++)
        if (strcmp(v[i].s, v[i - 1].s) == 0 && (dup == n || v[i].i < dup)) {
            dup = v[i].i;
            *other = v[i - 1].i;
        }
    free(v);
    return dup;
}

static int st_check_specs(const st_spec *specs, size_t n, const char *const *meta_kv, size_t n_meta,
                          const st_write_opts *opts, const char *path, dsr1_err *err)
{
    if (n && !specs)
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: %zu tensors declared but no specs given", path, n);
    if (n_meta && !meta_kv)
        return st_usage(err, ST_ERR_METADATA, "%s: %zu metadata pairs declared but none given", path,
                        n_meta);
    for (size_t i = 0; i < n; i++) {
        const st_spec *s = &specs[i];
        if (!s->name || !s->name[0])
            return st_usage(err, ST_ERR_NAME, "%s: tensor %zu has an empty name", path, i);
        if (strcmp(s->name, "__metadata__") == 0 || !st_valid_utf8(s->name))
            return st_usage(err, ST_ERR_NAME, "%s: tensor %zu: name '" NAMEFMT "' is %s", path, i,
                            s->name, st_valid_utf8(s->name) ? "reserved" : "not valid UTF-8");
        if ((unsigned)s->dtype >= ST_DTYPE_COUNT)
            return st_usage(err, ST_ERR_DTYPE, "%s: tensor '" NAMEFMT "': invalid dtype %d", path,
                            s->name, (int)s->dtype);
        if (s->ndim < 0 || s->ndim > ST_MAX_DIMS)
            return st_usage(err, ST_ERR_SHAPE, "%s: tensor '" NAMEFMT "': %d dimensions (0..%d allowed)",
                            path, s->name, s->ndim, ST_MAX_DIMS);
        for (int d = 0; d < s->ndim; d++)
            if (s->shape[d] > (uint64_t)INT64_MAX) /* readers parse JSON integers as int64 */
                return st_usage(err, ST_ERR_SHAPE, "%s: tensor '" NAMEFMT "': shape[%d] = %" PRIu64
                                " is above 2^63-1", path, s->name, d, s->shape[d]);
        uint64_t ne, nb;
        if (st_sizes(s->dtype, s->ndim, s->shape, &ne, &nb) != 0)
            return st_usage(err, ST_ERR_SIZE_OVERFLOW, "%s: tensor '" NAMEFMT "': shape x element "
                            "size overflows 64 bits", path, s->name);
    }
    size_t other = 0, dup;
    const char **names = calloc(n ? n : 1, sizeof *names);
    if (!names)
        return dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_WRITE, 0, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++)
        names[i] = specs[i].name;
    dup = st_first_dup(names, 1, n, &other);
    free(names);
    if (dup < n)
        return st_usage(err, ST_ERR_DUPLICATE_KEY, "%s: tensor name '" NAMEFMT "' declared twice "
                        "(specs %zu and %zu)", path, specs[dup].name, other, dup);
    for (size_t i = 0; i < 2 * n_meta; i++)
        if (!meta_kv[i] || !st_valid_utf8(meta_kv[i]))
            return st_usage(err, ST_ERR_METADATA, "%s: metadata %s %zu is %s", path,
                            i % 2 ? "value" : "key", i / 2, meta_kv[i] ? "not valid UTF-8" : "NULL");
    dup = st_first_dup(meta_kv, 2, n_meta, &other);
    if (dup < n_meta)
        return st_usage(err, ST_ERR_METADATA, "%s: metadata key '" NAMEFMT "' given twice", path,
                        meta_kv[2 * dup]);
    uint64_t a = opts && opts->data_align ? opts->data_align : 8;
    if ((a & (a - 1)) != 0 || a > (1u << 30))
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: data_align %" PRIu64 " must be a power of "
                        "two up to 2^30", path, a);
    return 0;
}

/* design.md: a tensor whose byte size is a multiple of 256 starts 256-aligned in
 * the data section; every tensor starts aligned to its element size. */
static int st_align_ok(uint64_t begin, uint64_t bytes, st_dtype d)
{
    if (bytes % 256 == 0 && begin % 256 != 0)
        return 0;
    return begin % st_dtype_size(d) == 0;
}

int st_writer_open(st_writer **out, const char *path, const st_spec *specs, size_t n,
                   const char *const *meta_kv, size_t n_meta, const st_write_opts *opts,
                   dsr1_err *err)
{
    *out = NULL;
    int rc = st_check_specs(specs, n, meta_kv, n_meta, opts, path, err);
    if (rc)
        return rc;
    uint64_t align = opts && opts->data_align ? opts->data_align : 8;
    st_writer *w = calloc(1, sizeof *w);
    st_buf hb = {0};
    if (!w)
        goto oom;
    w->fd = -1;
    w->n = n;
    w->path = strdup(path);
    size_t tl = strlen(path) + 32;
    w->tmp = malloc(tl);
    w->names = calloc(n ? n : 1, sizeof *w->names);
    w->begin = calloc(n ? n : 1, sizeof *w->begin);
    w->bytes = calloc(n ? n : 1, sizeof *w->bytes);
    w->written = calloc(n ? n : 1, sizeof *w->written);
    if (!w->path || !w->tmp || !w->names || !w->begin || !w->bytes || !w->written)
        goto oom;
    snprintf(w->tmp, tl, "%s.tmp.%ld", path, (long)getpid());

    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t ne;
        st_sizes(specs[i].dtype, specs[i].ndim, specs[i].shape, &ne, &w->bytes[i]);
        if (opts && opts->check_align_rule && !st_align_ok(off, w->bytes[i], specs[i].dtype)) {
            rc = st_usage(err, ST_ERR_WRITER_STATE, "%s: tensor '" NAMEFMT "' (%" PRIu64 " bytes, %s) "
                          "would start at data offset %" PRIu64 ", breaking the alignment rule (%s); "
                          "order the tensors with st_align_order", path, specs[i].name, w->bytes[i],
                          st_dtype_name(specs[i].dtype), off,
                          w->bytes[i] % 256 == 0 ? "size multiple of 256 -> 256-byte aligned"
                                                 : "aligned to element size");
            goto fail;
        }
        w->begin[i] = off;
        if (__builtin_add_overflow(off, w->bytes[i], &off)) {
            rc = st_usage(err, ST_ERR_SIZE_OVERFLOW, "%s: total tensor bytes overflow 64 bits at '"
                          NAMEFMT "'", path, specs[i].name);
            goto fail;
        }
        if (!(w->names[i] = strdup(specs[i].name)))
            goto oom;
    }

    /* Compact JSON like the official writer: metadata first, then tensors in data order. */
    sb_str(&hb, "12345678{"); /* length placeholder */
    if (n_meta) {
        sb_str(&hb, "\"__metadata__\":{");
        for (size_t k = 0; k < n_meta; k++) {
            if (k)
                sb_str(&hb, ",");
            sb_json(&hb, meta_kv[2 * k]);
            sb_str(&hb, ":");
            sb_json(&hb, meta_kv[2 * k + 1]);
        }
        sb_str(&hb, "}");
    }
    for (size_t i = 0; i < n; i++) {
        if (i || n_meta)
            sb_str(&hb, ",");
        sb_json(&hb, specs[i].name);
        sb_str(&hb, ":{\"dtype\":\"");
        sb_str(&hb, st_dtype_name(specs[i].dtype));
        sb_str(&hb, "\",\"shape\":[");
        for (int d = 0; d < specs[i].ndim; d++) {
            if (d)
                sb_str(&hb, ",");
            sb_u64(&hb, specs[i].shape[d]);
        }
        sb_str(&hb, "],\"data_offsets\":[");
        sb_u64(&hb, w->begin[i]);
        sb_str(&hb, ",");
        sb_u64(&hb, w->begin[i] + w->bytes[i]);
        sb_str(&hb, "]}");
    }
    sb_str(&hb, "}");
    while (!hb.oom && hb.len % align)
        sb_str(&hb, " ");
    if (hb.oom)
        goto oom;
    uint64_t hlen = hb.len - 8;
    if (hlen > ST_MAX_HEADER) {
        rc = st_usage(err, ST_ERR_HEADER_TOO_LARGE, "%s: header would be %" PRIu64 " bytes, above "
                      "the %llu-byte limit; split the tensors over more files", path, hlen, ST_MAX_HEADER);
        goto fail;
    }
    for (int b = 0; b < 8; b++)
        hb.p[b] = (char)(uint8_t)(hlen >> (8 * b));
    w->header = (uint8_t *)hb.p;
    hb.p = NULL;
    w->data_start = 8 + hlen;
    if (__builtin_add_overflow(w->data_start, off, &w->file_size) || w->file_size > (uint64_t)INT64_MAX) {
        rc = st_usage(err, ST_ERR_SIZE_OVERFLOW, "%s: file size above 2^63-1 bytes", path);
        goto fail;
    }

    if (st_reg_add(w) != 0) {
        rc = st_usage(err, ST_ERR_WRITER_STATE, "%s: another writer in this process is already "
                      "writing this file", path);
        goto fail;
    }
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0 && errno == EEXIST) {
        /* Left by a dead process that had our pid (containers reuse pid 1). */
        unlink(w->tmp);
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    }
    if (w->fd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, errno, "cannot create %s (check that the "
                          "directory exists and is writable)", w->tmp);
        goto fail;
    }
    /* fallocate(2) rather than posix_fallocate(3): glibc's fallback for filesystems
     * without it writes every block, far too slow for 100 GB shards; there we
     * only set the size and ENOSPC surfaces at write time instead. */
    int fe = EOPNOTSUPP;
    if (!(opts && opts->no_reserve))
        do
            fe = fallocate(w->fd, 0, 0, (off_t)w->file_size) == 0 ? 0 : errno;
        while (fe == EINTR);
    if (fe == EOPNOTSUPP || fe == ENOSYS)
        fe = ftruncate(w->fd, (off_t)w->file_size) == 0 ? 0 : errno;
    if (fe) {
        rc = dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, fe, "cannot reserve %" PRIu64 " bytes for %s "
                          "(%s); free space on that filesystem or write elsewhere", w->file_size,
                          path, w->tmp);
        goto fail;
    }
    for (uint64_t done = 0; done < w->data_start;) {
        ssize_t k = pwrite(w->fd, w->header + done, (size_t)(w->data_start - done), (off_t)done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, k < 0 ? errno : EIO,
                              "cannot write the header of %s", w->tmp);
            goto fail;
        }
        done += (uint64_t)k;
    }
    *out = w;
    return 0;
oom:
    rc = dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_WRITE, 0, "%s: out of memory preparing the header", path);
fail:
    free(hb.p);
    st_writer_free(w);
    return rc;
}

uint64_t st_writer_data_start(const st_writer *w) { return w->data_start; }
uint64_t st_writer_file_size(const st_writer *w) { return w->file_size; }
const char *st_writer_tmp_path(const st_writer *w) { return w->tmp; }

uint64_t st_writer_tensor_offset(const st_writer *w, size_t i)
{
    return i < w->n ? w->data_start + w->begin[i] : 0;
}

uint64_t st_writer_tensor_bytes(const st_writer *w, size_t i)
{
    return i < w->n ? w->bytes[i] : 0;
}

const void *st_writer_header(const st_writer *w, size_t *len)
{
    if (len)
        *len = (size_t)w->data_start;
    return w->header;
}

int st_writer_write(st_writer *w, size_t i, uint64_t off, const void *buf, size_t len, dsr1_err *err)
{
    if (w->committed || w->aborted || w->fd < 0)
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: write after %s", w->path,
                        w->committed ? "commit" : "abort");
    if (i >= w->n)
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: tensor index %zu out of range (%zu tensors)",
                        w->path, i, w->n);
    uint64_t end;
    if (__builtin_add_overflow(off, (uint64_t)len, &end) || end > w->bytes[i])
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: tensor '" NAMEFMT "': write of %zu bytes at "
                        "%" PRIu64 " is outside its %" PRIu64 " bytes", w->path, w->names[i], len,
                        off, w->bytes[i]);
    const uint8_t *p = buf;
    uint64_t at = w->data_start + w->begin[i] + off;
    size_t left = len;
    while (left) {
        ssize_t k = pwrite(w->fd, p, left, (off_t)at);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            atomic_store(&w->failed, 1);
            return dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, e, "%s: writing tensor '" NAMEFMT
                                "' at file byte %" PRIu64, w->tmp, w->names[i], at);
        }
        p += k;
        at += (uint64_t)k;
        left -= (size_t)k;
    }
    atomic_fetch_add(&w->written[i], (uint64_t)len);
    return 0;
}

int st_fsync_dir(const char *path, dsr1_err *err)
{
    char *dir = strdup(path);
    if (!dir)
        return dsr1_err_set(err, DSR1_E_NOMEM, ST_ERR_WRITE, 0, "%s: out of memory", path);
    char *slash = strrchr(dir, '/');
    const char *d = ".";
    if (slash) {
        if (slash == dir)
            slash[1] = 0;
        else
            *slash = 0;
        d = dir;
    }
    int rc = 0, fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        rc = dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, errno, "cannot open directory %s to fsync it", d);
    else if (fsync(fd) != 0 && errno != EINVAL) /* EINVAL: the filesystem cannot sync directories */
        rc = dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, errno, "cannot fsync directory %s", d);
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

int st_writer_commit(st_writer *w, dsr1_err *err)
{
    if (w->committed || w->aborted || w->fd < 0)
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: commit after %s", w->path,
                        w->committed ? "commit" : "abort");
    if (atomic_load(&w->failed))
        return st_usage(err, ST_ERR_WRITER_STATE, "%s: an earlier write failed; nothing committed",
                        w->path);
    for (size_t i = 0; i < w->n; i++) {
        uint64_t got = atomic_load(&w->written[i]);
        if (got != w->bytes[i])
            return st_usage(err, ST_ERR_WRITER_STATE, "%s: tensor '" NAMEFMT "' has %" PRIu64 " of %"
                            PRIu64 " bytes written (%s); nothing committed", w->path, w->names[i],
                            got, w->bytes[i], got < w->bytes[i] ? "missing bytes" : "ranges written twice");
    }
    if (fsync(w->fd) != 0)
        return dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, errno, "cannot fsync %s", w->tmp);
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) {
        atomic_store(&w->failed, 1);
        return dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, errno, "cannot close %s", w->tmp);
    }
    if (rename(w->tmp, w->path) != 0) {
        atomic_store(&w->failed, 1);
        return dsr1_err_set(err, DSR1_E_IO, ST_ERR_WRITE, errno, "cannot rename %s to %s", w->tmp,
                            w->path);
    }
    w->committed = 1;
    st_reg_del(w);
    return st_fsync_dir(w->path, err);
}

void st_writer_abort(st_writer *w)
{
    if (!w || w->committed || w->aborted)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->registered) /* only then did we create the temp file */
        unlink(w->tmp);
    w->aborted = 1;
    st_reg_del(w);
}

void st_writer_free(st_writer *w)
{
    if (!w)
        return;
    st_writer_abort(w);
    for (size_t i = 0; w->names && i < w->n; i++)
        free(w->names[i]);
    free(w->names);
    free(w->begin);
    free(w->bytes);
    free((void *)w->written);
    free(w->header);
    free(w->path);
    free(w->tmp);
    free(w);
}

void st_align_order(const st_spec *specs, size_t n, size_t *perm)
{
    /* Stable bucket pass, no allocation: 256-multiples, then 8-, 4-, 2-, 1-byte elements. */
    static const size_t esizes[4] = {8, 4, 2, 1};
    size_t k = 0;
    for (int pass = 0; pass < 5; pass++)
        for (size_t i = 0; i < n; i++) {
            if ((unsigned)specs[i].dtype >= ST_DTYPE_COUNT)
                continue;
            uint64_t ne, nb;
            int m256 = st_sizes(specs[i].dtype, specs[i].ndim, specs[i].shape, &ne, &nb) == 0 &&
                       nb % 256 == 0;
            if (pass == 0 ? m256 : !m256 && st_dtype_size(specs[i].dtype) == esizes[pass - 1])
                perm[k++] = i;
        }
    for (size_t i = 0; i < n; i++) /* invalid dtypes (st_writer_open rejects them) go last */
        if ((unsigned)specs[i].dtype >= ST_DTYPE_COUNT)
            perm[k++] = i;
}
