/* ld: open one shard through the manifest and prove it is the file described there.
 * See ld.h for what is checked; the hashing scheduler is described at ld_hash_check. */
#include "ld.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

struct ld_shard {
    const mf_manifest *m;
    const mf_shard *entry;
    st_file *f;
    char *path;
};

static void shape_str(char *buf, size_t n, int ndim, const uint64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (o < n)
        snprintf(buf + o, n - o, "]");
}

/* Parse a decimal u32 metadata value; -1 when absent or malformed. */
static int meta_u32(const st_file *f, const char *key, uint32_t *out)
{
    const char *v = st_meta_get(f, key);
    if (!v || !*v)
        return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end || x > UINT32_MAX || v[0] == '-' || v[0] == '+' || v[0] == ' ')
        return -1;
    *out = (uint32_t)x;
    return 0;
}

static int check_meta(const ld_shard *s, dsr1_err *err)
{
    const st_file *f = s->f;
    const mf_shard *e = s->entry;
    const char *p = s->path;
    const char *fmt = st_meta_get(f, MF_META_FORMAT);
    if (!fmt || strcmp(fmt, MF_SHARD_FORMAT) != 0)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_METADATA, 0,
                            "%s: __metadata__ %s is %s%s%s, expected \"%s\": not a dsr1 shard file", p,
                            MF_META_FORMAT, fmt ? "\"" : "", fmt ? fmt : "absent", fmt ? "\"" : "",
                            MF_SHARD_FORMAT);
    uint32_t ver;
    if (meta_u32(f, MF_META_VERSION, &ver) != 0 || ver != MF_SHARD_VERSION)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_METADATA, 0,
                            "%s: __metadata__ %s is \"%s\", this build reads shard format version %d",
                            p, MF_META_VERSION,
                            st_meta_get(f, MF_META_VERSION) ? st_meta_get(f, MF_META_VERSION) : "(absent)",
                            MF_SHARD_VERSION);
    char want[HX_HEX_LEN + 1];
    hx_hex(s->m->manifest_id, want);
    const char *id = st_meta_get(f, MF_META_MANIFEST_ID);
    if (!id || strcmp(id, want) != 0)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_METADATA, 0,
                            "%s: __metadata__ %s is %s, the manifest's id is %s: the file belongs to "
                            "another deployment (different model or plan)",
                            p, MF_META_MANIFEST_ID, id ? id : "(absent)", want);
    uint32_t pp, tp;
    if (meta_u32(f, MF_META_PP_STAGE, &pp) != 0 || meta_u32(f, MF_META_TP_RANK, &tp) != 0)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_METADATA, 0,
                            "%s: __metadata__ lacks a decimal %s or %s", p, MF_META_PP_STAGE,
                            MF_META_TP_RANK);
    if (pp != e->pp_stage || tp != e->tp_rank)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_METADATA, 0,
                            "%s: file holds pp stage %" PRIu32 " tp rank %" PRIu32
                            ", the manifest expects pp stage %" PRIu32 " tp rank %" PRIu32
                            " here: shard swapped with another rank's file",
                            p, pp, tp, e->pp_stage, e->tp_rank);
    return 0;
}

static int check_table(const ld_shard *s, dsr1_err *err)
{
    const st_file *f = s->f;
    const mf_shard *e = s->entry;
    const char *p = s->path;
    if (st_data_start(f) != e->data_start)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TABLE, 0,
                            "%s: data section starts at byte %" PRIu64 ", the manifest says %" PRIu64
                            ": header edited or file from another run",
                            p, st_data_start(f), e->data_start);
    size_t n = st_count(f);
    size_t lim = n < e->n_tensors ? n : e->n_tensors;
    for (size_t i = 0; i < lim; i++) {
        const st_tensor *t = st_get(f, i);
        const mf_tensor *w = &e->tensors[i];
        if (strcmp(t->name, w->name) != 0)
            return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TABLE, 0,
                                "%s: tensor #%zu at byte %" PRIu64 " is %s, the manifest expects %s", p,
                                i, t->file_offset, t->name, w->name);
        if (t->dtype != w->dtype)
            return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TABLE, 0,
                                "%s: tensor %s has dtype %s, the manifest says %s", p, t->name,
                                st_dtype_name(t->dtype), st_dtype_name(w->dtype));
        int same = t->ndim == w->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == w->shape[d];
        if (!same) {
            char a[160], b[160];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, w->ndim, w->shape);
            return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TABLE, 0,
                                "%s: tensor %s has shape %s, the manifest says %s", p, t->name, a, b);
        }
        if (t->file_offset != w->offset || t->nbytes != w->bytes)
            return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TABLE, 0,
                                "%s: tensor %s spans bytes [%" PRIu64 ", %" PRIu64
                                "), the manifest says [%" PRIu64 ", %" PRIu64 ")",
                                p, t->name, t->file_offset, t->file_offset + t->nbytes, w->offset,
                                w->offset + w->bytes);
    }
    if (n != e->n_tensors)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TABLE, 0,
                            "%s: header lists %zu tensors, the manifest %zu (first difference: %s %s)",
                            p, n, e->n_tensors, n > e->n_tensors ? "extra tensor" : "missing tensor",
                            n > e->n_tensors ? st_get(f, lim)->name : e->tensors[lim].name);
    return 0;
}

struct first_bad {
    dsr1_err *err;
    const char *path;
    int seen;
};

static void keep_first(void *ctx, const mf_tensor *t, const char *msg)
{
    (void)t;
    struct first_bad *fb = ctx;
    if (fb->seen++ == 0)
        dsr1_err_set(fb->err, DSR1_E_MISMATCH, LD_ERR_HASH, 0, "%s: %s", fb->path, msg);
}

int ld_open(ld_shard **out, const mf_manifest *m, const char *dir, size_t shard_index, int flags,
            dsr1_err *err)
{
    *out = NULL;
    if (shard_index >= m->n_shards)
        return dsr1_err_set(err, DSR1_E_USAGE, LD_ERR_NONE, 0,
                            "shard index %zu out of range: the manifest has %zu shards", shard_index,
                            m->n_shards);
    ld_shard *s = calloc(1, sizeof *s);
    const mf_shard *e = &m->shards[shard_index];
    size_t plen = strlen(dir) + strlen(e->file) + 2;
    if (!s || !(s->path = malloc(plen))) {
        free(s);
        return dsr1_err_set(err, DSR1_E_NOMEM, LD_ERR_NONE, 0, "%s: out of memory", e->file);
    }
    snprintf(s->path, plen, "%s/%s", dir, e->file);
    s->m = m;
    s->entry = e;
    int rc;
    struct stat sb;
    if (stat(s->path, &sb) != 0) {
        int en = errno;
        if (en == ENOENT)
            rc = dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_MISSING_FILE, 0,
                              "%s: shard file missing (pp stage %" PRIu32 ", tp rank %" PRIu32
                              "); copy it from the dsr1-shard output",
                              s->path, e->pp_stage, e->tp_rank);
        else
            rc = dsr1_err_set(err, DSR1_E_IO, LD_ERR_MISSING_FILE, en, "%s: cannot stat", s->path);
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_MISSING_FILE, 0, "%s: not a regular file",
                          s->path);
        goto fail;
    }
    /* Size first: a truncated file must be reported as truncated, not as whatever
     * header check the cut happens to break. A complete shard of another rank or
     * deployment has another size too: when the file is a valid safetensors file
     * whose coordinates differ, that is the better message. */
    if ((uint64_t)sb.st_size != e->bytes) {
        dsr1_err e2;
        if (st_open(&s->f, s->path, &e2) == 0 && st_file_size(s->f) == (uint64_t)sb.st_size &&
            (rc = check_meta(s, err)) != 0)
            goto fail;
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_SIZE, 0,
                          "%s: %" PRIu64 " bytes, the manifest says %" PRIu64 " (%s); re-copy the file",
                          s->path, (uint64_t)sb.st_size, e->bytes,
                          (uint64_t)sb.st_size < e->bytes ? "truncated" : "extended");
        goto fail;
    }
    rc = st_open(&s->f, s->path, err);
    if (rc != 0) {
        if (rc == DSR1_E_INVALID && err) {
            rc = DSR1_E_MISMATCH;
            err->status = DSR1_E_MISMATCH;
            err->code = LD_ERR_HEADER;
        }
        goto fail;
    }
    /* The file may have changed between stat and open. */
    if (st_file_size(s->f) != e->bytes) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_SIZE, 0,
                          "%s: size changed while opening (%" PRIu64 " bytes, manifest %" PRIu64 ")",
                          s->path, st_file_size(s->f), e->bytes);
        goto fail;
    }
    if ((rc = check_meta(s, err)) != 0 || (rc = check_table(s, err)) != 0)
        goto fail;
    if (flags & LD_HASH) {
        struct first_bad fb = {err, s->path, 0};
        int bad = ld_hash_check(s, keep_first, &fb, err);
        if (bad != 0) {
            rc = bad < 0 ? bad : DSR1_E_MISMATCH;
            if (bad > 1)
                dsr1_err_prefix(err, "%d digests differ, first", bad);
            goto fail;
        }
    }
    *out = s;
    return 0;
fail:
    ld_close(s);
    return rc;
}

void ld_close(ld_shard *s)
{
    if (!s)
        return;
    st_close(s->f);
    free(s->path);
    free(s);
}

const st_file *ld_file(const ld_shard *s) { return s->f; }
const mf_shard *ld_entry(const ld_shard *s) { return s->entry; }
const char *ld_path(const ld_shard *s) { return s->path; }

const st_tensor *ld_find(const ld_shard *s, const char *name) { return st_find(s->f, name); }

int ld_require(const ld_shard *s, const char *name, st_dtype dtype, int ndim, const uint64_t *shape,
               const st_tensor **out, dsr1_err *err)
{
    *out = NULL;
    const st_tensor *t = st_find(s->f, name);
    if (!t)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TENSOR, 0,
                            "%s: tensor %s is not in this shard (pp stage %" PRIu32 ", tp rank %" PRIu32
                            "); the shard was made for another plan or model",
                            s->path, name, s->entry->pp_stage, s->entry->tp_rank);
    if (t->dtype != dtype)
        return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TENSOR, 0,
                            "%s: tensor %s is %s, expected %s", s->path, name, st_dtype_name(t->dtype),
                            st_dtype_name(dtype));
    if (ndim >= 0) {
        int same = t->ndim == ndim;
        for (int d = 0; same && d < ndim; d++)
            same = t->shape[d] == shape[d];
        if (!same) {
            char a[160], b[160];
            shape_str(a, sizeof a, t->ndim, t->shape);
            shape_str(b, sizeof b, ndim, shape);
            return dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_TENSOR, 0,
                                "%s: tensor %s has shape %s, expected %s", s->path, name, a, b);
        }
    }
    *out = t;
    return 0;
}

/* ---- parallel hashing ----
 * Units are the header and each tensor, in file order. A thread claims the next
 * unit and hashes it chunk by chunk. Before hashing a chunk it must be "ready":
 * paged in by MADV_POPULATE_READ, by whichever thread claimed that chunk from the
 * unit's chunk counter. A thread with no unit left claims chunks of units still
 * being hashed, at most LEAD chunks ahead of the hasher, so the page-in (the
 * expensive part: disk reads or page-cache mapping) of one large tensor spreads
 * over all threads while its sequential hash streams behind. */

#define CHUNK ((uint64_t)8 << 20)
#define LEAD 8
#define PROGRESS_STEP ((uint64_t)64 << 20)

typedef struct unit {
    const mf_tensor *t; /* NULL = header */
    uint64_t begin, end;
    hx128 want;
    uint64_t nchunks;
    atomic_uint_fast64_t next_pop;  /* next chunk index to page in */
    atomic_uint_fast64_t hashed;    /* chunks hashed so far */
    atomic_uchar *ready;            /* per chunk (NULL when nchunks == 1) */
    atomic_int active;              /* 1 while a hasher works on it */
} unit;

typedef struct hash_job {
    const uint8_t *base;
    const char *path;
    unit *u;
    size_t n;
    atomic_size_t next_unit;
    atomic_size_t units_done;
    atomic_uint_fast64_t bytes_done;
    atomic_int io_error;
    atomic_int populate; /* 0 after the kernel said EINVAL: fall back to page faults */
    uintptr_t pagesz;
    size_t *big;  /* indices of units with more than one chunk */
    size_t n_big;
    int io_errno;
    uint64_t io_offset;
} hash_job;

/* Page in [off, off+len) of the mapping. 0 ok, else errno. */
static int page_in(hash_job *j, uint64_t off, uint64_t len)
{
    if (!atomic_load(&j->populate) || len == 0)
        return 0;
    uintptr_t a = (uintptr_t)(j->base + off), lo = a & ~(j->pagesz - 1);
    size_t l = (size_t)(a + len - lo);
    for (;;) {
        if (madvise((void *)lo, l, MADV_POPULATE_READ) == 0)
            return 0;
        if (errno == EINTR || errno == EAGAIN)
            continue;
        if (errno == EINVAL) {
            atomic_store(&j->populate, 0); /* kernel < 5.14: the hasher faults pages in */
            return 0;
        }
        return errno;
    }
}

static void set_io_error(hash_job *j, int e, uint64_t off)
{
    int expect = 0;
    if (atomic_compare_exchange_strong(&j->io_error, &expect, 1)) {
        j->io_errno = e;
        j->io_offset = off;
    }
}

static uint64_t chunk_len(const unit *u, uint64_t c)
{
    uint64_t b = u->begin + c * CHUNK;
    return u->end - b < CHUNK ? u->end - b : CHUNK;
}

static void pause_briefly(void)
{
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
}

/* Claim and page in one chunk of u; returns 1 if a chunk was claimed. */
static int claim_chunk(hash_job *j, unit *u, uint64_t limit)
{
    uint_fast64_t c = atomic_load(&u->next_pop);
    do {
        if (c >= u->nchunks || c >= limit)
            return 0;
    } while (!atomic_compare_exchange_weak(&u->next_pop, &c, c + 1));
    int e = page_in(j, u->begin + c * CHUNK, chunk_len(u, c));
    if (e)
        set_io_error(j, e, u->begin + c * CHUNK);
    atomic_store_explicit(&u->ready[c], 1, memory_order_release);
    return 1;
}

static void progress_tick(hash_job *j, uint64_t add, uint64_t *last, ld_progress_fn progress,
                          void *pctx)
{
    uint64_t done = atomic_fetch_add(&j->bytes_done, add) + add;
    if (progress && omp_get_thread_num() == 0 && done - *last >= PROGRESS_STEP) {
        *last = done;
        progress(pctx, done);
    }
}

static hx128 hash_unit(hash_job *j, unit *u, uint64_t *last, ld_progress_fn progress, void *pctx)
{
    if (u->nchunks <= 1) {
        uint64_t len = u->end - u->begin;
        int e = page_in(j, u->begin, len);
        if (e) {
            set_io_error(j, e, u->begin);
            return (hx128){0, 0};
        }
        hx128 h = hx_buf(j->base + u->begin, (size_t)len);
        progress_tick(j, len, last, progress, pctx);
        return h;
    }
    hx_state *st = hx_new();
    if (!st) {
        set_io_error(j, ENOMEM, u->begin);
        return (hx128){0, 0};
    }
    for (uint64_t c = 0; c < u->nchunks && !atomic_load(&j->io_error); c++) {
        while (!atomic_load_explicit(&u->ready[c], memory_order_acquire)) {
            /* Page in whatever chunk is next (ours or one ahead); if all are
             * claimed, a helper is paging ours in right now. */
            if (!claim_chunk(j, u, UINT64_MAX) && !atomic_load(&u->ready[c]))
                sched_yield();
        }
        uint64_t len = chunk_len(u, c);
        hx_update(st, j->base + u->begin + c * CHUNK, (size_t)len);
        atomic_store(&u->hashed, c + 1);
        progress_tick(j, len, last, progress, pctx);
    }
    hx128 h = hx_digest(st);
    hx_free(st);
    return h;
}

/* Help the active units: page in chunks ahead of their hashers. Returns 1 if any
 * work was done, 0 if nothing can be done now, -1 if no unit will ever need help. */
static int help(hash_job *j)
{
    int pending = 0, did = 0;
    for (size_t k = 0; k < j->n_big; k++) {
        size_t i = j->big[k];
        unit *u = &j->u[i];
        if (atomic_load(&u->next_pop) >= u->nchunks)
            continue;
        if (!atomic_load(&u->active)) {
            if (i >= atomic_load(&j->next_unit))
                pending = 1; /* not claimed yet: the claim loop will take it */
            continue;
        }
        pending = 1;
        if (claim_chunk(j, u, atomic_load(&u->hashed) + LEAD))
            did = 1;
    }
    return did ? 1 : pending ? 0 : -1;
}

int ld_hash_check(const ld_shard *s, ld_bad_fn bad, void *ctx, dsr1_err *err)
{
    return ld_hash_check_progress(s, bad, ctx, NULL, NULL, err);
}

int ld_hash_check_progress(const ld_shard *s, ld_bad_fn bad, void *ctx, ld_progress_fn progress,
                           void *pctx, dsr1_err *err)
{
    const mf_shard *e = s->entry;
    hash_job j;
    memset(&j, 0, sizeof j);
    j.base = st_base(s->f);
    j.path = s->path;
    atomic_init(&j.populate, 1);
    j.pagesz = (uintptr_t)sysconf(_SC_PAGESIZE);
    j.n = e->n_tensors + 1;
    j.u = calloc(j.n, sizeof *j.u);
    j.big = calloc(j.n, sizeof *j.big);
    int rc = 0;
    if (!j.u || !j.big) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, LD_ERR_NONE, 0, "%s: out of memory", s->path);
        goto out;
    }
    for (size_t i = 0; i < j.n; i++) {
        unit *u = &j.u[i];
        if (i == 0) {
            u->begin = 0;
            u->end = e->data_start;
            u->want = e->header_xxh3_128;
        } else {
            u->t = &e->tensors[i - 1];
            u->begin = u->t->offset;
            u->end = u->t->offset + u->t->bytes;
            u->want = u->t->xxh3_128;
        }
        u->nchunks = (u->end - u->begin + CHUNK - 1) / CHUNK;
        atomic_init(&u->next_pop, 0);
        atomic_init(&u->hashed, 0);
        atomic_init(&u->active, 0);
        if (u->nchunks > 1) {
            j.big[j.n_big++] = i;
            u->ready = calloc(u->nchunks, sizeof *u->ready);
            if (!u->ready) {
                rc = dsr1_err_set(err, DSR1_E_NOMEM, LD_ERR_NONE, 0, "%s: out of memory", s->path);
                goto out;
            }
        }
    }
    atomic_init(&j.next_unit, 0);
    atomic_init(&j.units_done, 0);
    atomic_init(&j.bytes_done, 0);
    atomic_init(&j.io_error, 0);
    int mismatches = 0;
#pragma omp parallel
    {
        uint64_t last = 0;
        for (;;) {
            size_t i = atomic_fetch_add(&j.next_unit, 1);
            if (i >= j.n)
                break;
            unit *u = &j.u[i];
            atomic_store(&u->active, 1);
            hx128 h = hash_unit(&j, u, &last, progress, pctx);
            atomic_store(&u->active, 0);
            atomic_fetch_add(&j.units_done, 1);
            if (atomic_load(&j.io_error) || hx_eq(h, u->want))
                continue;
            char got[HX_HEX_LEN + 1], want[HX_HEX_LEN + 1], msg[1024];
            hx_hex(h, got);
            hx_hex(u->want, want);
            if (u->t)
                snprintf(msg, sizeof msg,
                         "tensor %s bytes [%" PRIu64 ", %" PRIu64 ") xxh3_128 %s, manifest %s",
                         u->t->name, u->begin, u->end, got, want);
            else
                snprintf(msg, sizeof msg,
                         "header bytes [0, %" PRIu64 ") xxh3_128 %s, manifest %s: header edited",
                         u->end, got, want);
#pragma omp critical(ld_bad)
            {
                mismatches++;
                if (bad)
                    bad(ctx, u->t, msg);
            }
        }
        while (!atomic_load(&j.io_error)) {
            int r = help(&j);
            if (r < 0)
                break;
            if (r == 0)
                pause_briefly();
            progress_tick(&j, 0, &last, progress, pctx); /* the caller's thread may be helping */
        }
    }
    if (atomic_load(&j.io_error)) {
        rc = dsr1_err_set(err, DSR1_E_IO, LD_ERR_HASH, j.io_errno,
                          "%s: reading at offset %" PRIu64 " failed (%s)", s->path, j.io_offset,
                          j.io_errno == EFAULT ? "the file shrank while mapped or a read error"
                                               : "read error");
        goto out;
    }
    if (progress)
        progress(pctx, atomic_load(&j.bytes_done));
    rc = mismatches;
    if (mismatches && !bad)
        dsr1_err_set(err, DSR1_E_MISMATCH, LD_ERR_HASH, 0, "%s: %d digests differ", s->path,
                     mismatches);
out:
    for (size_t i = 0; j.u && i < j.n; i++)
        free(j.u[i].ready);
    free(j.u);
    free(j.big);
    return rc;
}
