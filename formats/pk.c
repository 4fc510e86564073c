/* pk: reproducible pax tar archives of a dsr1-shard output, and their verifying
 * extraction (see pk.h for the byte layout and the staging rules).
 *
 * The tar stream is written here rather than by libarchive's pax writer: that writer
 * has no way to add the "comment" padding record that puts member data on 4096-byte
 * boundaries, and writing the headers ourselves keeps the bytes independent of the
 * libarchive version. libarchive compresses (zstd, through its raw format) and reads
 * archives (its tar reader is the one that meets hostile input). */
#include "pk.h"
#include "fu.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hx.h"
#include "oci.h"
#include "vf.h"

#define TAR_BLOCK 512
#define TAR_RECORD 10240
#define SINK_BUF ((size_t)4 << 20)
#define MAX_META ((uint64_t)1 << 30)   /* manifest.json of the full model is tens of MB */
#define MAX_INDEX ((uint64_t)16 << 20)

const char *pk_per_name(pk_per p)
{
    return p == PK_PER_NODE ? "node" : p == PK_PER_RANK ? "rank" : "all";
}

int pk_per_parse(const char *s, pk_per *out)
{
    if (strcmp(s, "all") == 0)
        *out = PK_PER_ALL;
    else if (strcmp(s, "node") == 0)
        *out = PK_PER_NODE;
    else if (strcmp(s, "rank") == 0)
        *out = PK_PER_RANK;
    else
        return -1;
    return 0;
}

int pk_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 255 || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return -1;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return -1;
    return 0;
}

/* ---- scopes ---- */

static const mf_manifest *g_scope_m; /* qsort context (single-threaded) */
static int cmp_shard_name(const void *a, const void *b)
{
    return strcmp(g_scope_m->shards[*(const size_t *)a].file, g_scope_m->shards[*(const size_t *)b].file);
}

static int digits(uint64_t v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

int pk_scopes(const mf_manifest *m, pk_per per, pk_scope **out, size_t *n, dsr1_err *err)
{
    *out = NULL;
    *n = 0;
    size_t ns = per == PK_PER_ALL ? 1 : per == PK_PER_NODE ? m->plan.nodes : m->n_ranks;
    if (ns == 0)
        return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_SOURCE, 0, "the manifest has no %ss",
                            pk_per_name(per));
    pk_scope *s = calloc(ns, sizeof *s);
    if (!s)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int width = digits(ns - 1) < 2 ? 2 : digits(ns - 1);
    unsigned char *mark = malloc(m->n_shards ? m->n_shards : 1);
    if (!mark) {
        free(s);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    for (size_t i = 0; i < ns; i++) {
        s[i].per = per;
        s[i].index = (uint32_t)i;
        if (per == PK_PER_ALL)
            snprintf(s[i].name, sizeof s[i].name, "all");
        else
            snprintf(s[i].name, sizeof s[i].name, "%s-%0*u", pk_per_name(per), width & 15, (unsigned)i);
        memset(mark, 0, m->n_shards ? m->n_shards : 1);
        for (size_t r = 0; r < m->n_ranks; r++) {
            const mf_rank *rk = &m->ranks[r];
            int in = per == PK_PER_ALL || (per == PK_PER_NODE && rk->node == i) ||
                     (per == PK_PER_RANK && rk->rank == i);
            if (in && rk->shard < m->n_shards)
                mark[rk->shard] = 1;
        }
        if (per == PK_PER_ALL)
            memset(mark, 1, m->n_shards);
        s[i].shards = calloc(m->n_shards ? m->n_shards : 1, sizeof *s[i].shards);
        if (!s[i].shards) {
            free(mark);
            pk_scopes_free(s, ns);
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        }
        for (size_t k = 0; k < m->n_shards; k++)
            if (mark[k])
                s[i].shards[s[i].n_shards++] = k;
        g_scope_m = m;
        qsort(s[i].shards, s[i].n_shards, sizeof *s[i].shards, cmp_shard_name);
    }
    free(mark);
    *out = s;
    *n = ns;
    return 0;
}

void pk_scopes_free(pk_scope *s, size_t n)
{
    if (!s)
        return;
    for (size_t i = 0; i < n; i++)
        free(s[i].shards);
    free(s);
}

/* ---- source directory ---- */


int pk_source_open(pk_source **out, const char *dir, dsr1_err *err)
{
    *out = NULL;
    pk_source *s = calloc(1, sizeof *s);
    char *mp = fu_join(dir, "manifest.json"), *sp = fu_join(dir, "XXH128SUMS");
    char **files = NULL;
    hx128 *dig = NULL;
    size_t n = 0;
    int rc;
    if (!s || !mp || !sp || !(s->dir = strdup(dir))) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto fail;
    }
    if ((rc = fu_read_all(mp, MAX_META, PK_ERR_SOURCE, &s->manifest_buf, &s->manifest_len, err)) ||
        (rc = fu_read_all(sp, MAX_META, PK_ERR_SOURCE, &s->sums_buf, &s->sums_len, err)))
        goto fail;
    if ((rc = mf_parse(&s->m, s->manifest_buf, s->manifest_len, mp, err)))
        goto fail;
    if ((rc = mf_sums_read(sp, &files, &dig, &n, err)))
        goto fail;
    char msg[1024];
    if (vf_sums_check(s->m, hx_buf(s->manifest_buf, s->manifest_len), files, dig, n, msg, sizeof msg)) {
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_SOURCE, 0, "%s: %s; run dsr1-verify on it", dir, msg);
        goto fail;
    }
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    free(dig);
    free(mp);
    free(sp);
    *out = s;
    return 0;
fail:
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    free(dig);
    free(mp);
    free(sp);
    pk_source_free(s);
    return rc;
}

void pk_source_free(pk_source *s)
{
    if (!s)
        return;
    mf_free(s->m);
    free(s->manifest_buf);
    free(s->sums_buf);
    free(s->dir);
    free(s);
}

/* ---- tar writing ---- */

typedef struct sink {
    int fd;
    struct archive *a;   /* zstd: libarchive raw format + zstd filter; else NULL */
    uint8_t *buf;
    size_t fill;
    uint64_t pos;        /* bytes of the uncompressed tar stream so far */
    const char *path;
} sink;

static int sink_flush(sink *s, dsr1_err *err)
{
    size_t off = 0;
    while (off < s->fill) {
        if (s->a) {
            la_ssize_t w = archive_write_data(s->a, s->buf + off, s->fill - off);
            if (w <= 0) {
                int e = archive_errno(s->a);
                return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e > 0 ? e : 0, "writing %s: %s", s->path,
                                    archive_error_string(s->a) ? archive_error_string(s->a) : "zstd");
            }
            off += (size_t)w;
        } else {
            ssize_t w = write(s->fd, s->buf + off, s->fill - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, w < 0 ? errno : EIO, "writing %s",
                                    s->path);
            off += (size_t)w;
        }
    }
    s->fill = 0;
    return 0;
}

static int sink_put(sink *s, const void *p, size_t n, dsr1_err *err)
{
    const uint8_t *b = p;
    while (n) {
        size_t k = SINK_BUF - s->fill < n ? SINK_BUF - s->fill : n;
        memcpy(s->buf + s->fill, b, k);
        s->fill += k;
        s->pos += k;
        b += k;
        n -= k;
        if (s->fill == SINK_BUF) {
            int rc = sink_flush(s, err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int sink_zeros(sink *s, size_t n, dsr1_err *err)
{
    static const uint8_t z[TAR_BLOCK];
    while (n) {
        size_t k = n < sizeof z ? n : sizeof z;
        int rc = sink_put(s, z, k, err);
        if (rc)
            return rc;
        n -= k;
    }
    return 0;
}

static void octal(char *dst, size_t width, uint64_t v)
{
    /* width - 1 zero-padded octal digits and a NUL */
    dst[width - 1] = 0;
    for (size_t i = width - 1; i-- > 0;) {
        dst[i] = (char)('0' + (v & 7));
        v >>= 3;
    }
}

static void ustar_header(uint8_t h[TAR_BLOCK], const char *name, uint64_t size, char type, int64_t mtime)
{
    memset(h, 0, TAR_BLOCK);
    size_t n = strlen(name);
    memcpy(h, name, n < 100 ? n : 100);
    octal((char *)h + 100, 8, 0644);
    octal((char *)h + 108, 8, 0);
    octal((char *)h + 116, 8, 0);
    /* sizes of 8 GiB and more do not fit 11 octal digits: the pax size record rules */
    octal((char *)h + 124, 12, size < ((uint64_t)1 << 33) ? size : 0);
    octal((char *)h + 136, 12, mtime > 0 && mtime < ((int64_t)1 << 33) ? (uint64_t)mtime : 0);
    memset(h + 148, ' ', 8);
    h[156] = (uint8_t)type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    octal((char *)h + 329, 8, 0);
    octal((char *)h + 337, 8, 0);
    unsigned sum = 0;
    for (int i = 0; i < TAR_BLOCK; i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum & 0777777);
    h[155] = ' ';
}

/* Length of the pax record "<len> <key>=<value>\n". */
static size_t pax_len(size_t klen, size_t vlen)
{
    size_t n = klen + vlen + 3; /* ' ', '=', '\n' */
    size_t d = (size_t)digits(n);
    while ((size_t)digits(n + d) != d)
        d++;
    return n + d;
}

static size_t pax_put(char *dst, const char *key, const char *val, size_t vlen)
{
    size_t len = pax_len(strlen(key), vlen);
    int k = sprintf(dst, "%zu %s=", len, key);
    memcpy(dst + k, val, vlen);
    dst[k + vlen] = '\n';
    return len;
}

static const char pad_text[] = "dsr1-pack: padding so that member data starts on a 4096-byte boundary";

/* Headers of one member so that its data starts at a multiple of PK_ALIGN. */
static int put_headers(sink *s, const char *name, uint64_t size, int64_t mtime, dsr1_err *err)
{
    char sz[24];
    snprintf(sz, sizeof sz, "%" PRIu64, size);
    size_t l0 = pax_len(4, strlen(name)) + pax_len(4, strlen(sz));
    size_t p = (l0 + 12 + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK; /* 12: smallest comment record */
    while ((s->pos + 2 * TAR_BLOCK + p) % PK_ALIGN)
        p += TAR_BLOCK;
    char *rec = malloc(p);
    if (!rec)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    size_t o = pax_put(rec, "path", name, strlen(name));
    o += pax_put(rec + o, "size", sz, strlen(sz));
    size_t c = p - o;                              /* the comment record fills the rest */
    size_t v = c - (size_t)digits(c) - 10;         /* "<c> comment=" + value + "\n" */
    char *val = malloc(v + 1);
    if (!val) {
        free(rec);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    memset(val, ' ', v);
    memcpy(val, pad_text, v < sizeof pad_text - 1 ? v : sizeof pad_text - 1);
    o += pax_put(rec + o, "comment", val, v);
    free(val);
    uint8_t h[TAR_BLOCK];
    char xname[128];
    snprintf(xname, sizeof xname, "PaxHeaders/%s", name);
    ustar_header(h, xname, p, 'x', mtime);
    int rc = sink_put(s, h, TAR_BLOCK, err);
    if (!rc)
        rc = sink_put(s, rec, p, err);
    free(rec);
    if (rc)
        return rc;
    ustar_header(h, name, size, '0', mtime);
    return sink_put(s, h, TAR_BLOCK, err);
}

static int put_mem_member(sink *s, const char *name, const void *buf, size_t len, int64_t mtime,
                          dsr1_err *err)
{
    int rc = put_headers(s, name, len, mtime, err);
    if (!rc)
        rc = sink_put(s, buf, len, err);
    if (!rc && len % TAR_BLOCK)
        rc = sink_zeros(s, TAR_BLOCK - len % TAR_BLOCK, err);
    return rc;
}

int pk_source_open_shard(const pk_source *src, size_t k, const char *path, int *fd, dsr1_err *err)
{
    const mf_shard *sh = &src->m->shards[k];
    struct stat sb;
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0 || fstat(*fd, &sb) != 0) {
        int e = errno;
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
        return e == ENOENT ? dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_SOURCE, 0,
                                          "%s: shard file missing; nothing was published", path)
                           : dsr1_err_set(err, DSR1_E_IO, PK_ERR_SOURCE, e, "cannot open %s", path);
    }
    if ((uint64_t)sb.st_size != sh->bytes) {
        close(*fd);
        *fd = -1;
        return dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_SOURCE, 0,
                            "%s: %" PRIu64 " bytes, the manifest says %" PRIu64 "; run dsr1-verify", path,
                            (uint64_t)sb.st_size, sh->bytes);
    }
    posix_fadvise(*fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return 0;
}

/* Copy a shard into the archive, hashing it on the way. */
static int put_shard(sink *s, const pk_source *src, size_t k, int64_t mtime, const pk_progress *pg,
                     dsr1_err *err)
{
    const mf_shard *sh = &src->m->shards[k];
    char *path = fu_join(src->dir, sh->file);
    if (!path)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int fd;
    int rc = pk_source_open_shard(src, k, path, &fd, err);
    if (rc)
        goto out;
    if (pg->item)
        pg->item(pg->ctx, sh->file);
    if ((rc = put_headers(s, sh->file, sh->bytes, mtime, err)))
        goto out;
    hx_state *h = hx_new();
    if (!h) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    uint64_t done = 0;
    while (done < sh->bytes) {
        /* Read straight into the sink's buffer. */
        size_t room = SINK_BUF - s->fill;
        size_t want = sh->bytes - done < room ? (size_t)(sh->bytes - done) : room;
        ssize_t r = pread(fd, s->buf + s->fill, want, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_SOURCE, r < 0 ? errno : EIO,
                              "reading %s at offset %" PRIu64, path, done);
            break;
        }
        hx_update(h, s->buf + s->fill, (size_t)r);
        s->fill += (size_t)r;
        s->pos += (uint64_t)r;
        done += (uint64_t)r;
        if (pg->add)
            pg->add(pg->ctx, (uint64_t)r);
        if (s->fill == SINK_BUF && (rc = sink_flush(s, err)))
            break;
    }
    hx128 got = hx_digest(h);
    hx_free(h);
    if (rc)
        goto out;
    if (!hx_eq(got, sh->xxh3_128)) {
        char a[HX_HEX_LEN + 1], b[HX_HEX_LEN + 1];
        hx_hex(got, a);
        hx_hex(sh->xxh3_128, b);
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_SOURCE, 0,
                          "%s: xxh3_128 %s, the manifest says %s: the shard is corrupt; nothing was "
                          "published (dsr1-verify names the tensor)",
                          path, a, b);
        goto out;
    }
    if (sh->bytes % TAR_BLOCK)
        rc = sink_zeros(s, TAR_BLOCK - sh->bytes % TAR_BLOCK, err);
out:
    if (fd >= 0)
        close(fd);
    free(path);
    return rc;
}

static char *index_json(const pk_source *src, const pk_scope *sc)
{
    const mf_manifest *m = src->m;
    char id[HX_HEX_LEN + 1];
    hx_hex(m->manifest_id, id);
    json_t *mem = json_array();
    json_array_append_new(mem, json_pack("{s:s, s:I}", "name", "XXH128SUMS", "bytes", (json_int_t)src->sums_len));
    json_array_append_new(mem, json_pack("{s:s, s:I}", "name", "manifest.json", "bytes",
                                         (json_int_t)src->manifest_len));
    for (size_t i = 0; i < sc->n_shards; i++) {
        const mf_shard *sh = &m->shards[sc->shards[i]];
        json_array_append_new(mem, json_pack("{s:s, s:I}", "name", sh->file, "bytes", (json_int_t)sh->bytes));
    }
    json_t *j = json_pack("{s:s, s:i, s:s, s:i, s:s, s:o}", "format", PK_FORMAT, "version", PK_VERSION,
                          "scope", pk_per_name(sc->per), "index", (int)sc->index, "manifest_id", id,
                          "members", mem);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

static int write_archive(const pk_source *src, const pk_scope *sc, const char *path, const pk_create_opts *o,
                         pk_archive *res, dsr1_err *err)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    sink s = {-1, NULL, NULL, 0, 0, tmp};
    char *idx = NULL;
    int rc = 0;
    s.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s.fd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create %s", tmp);
        goto out;
    }
    if (o->progress.temp_file)
        o->progress.temp_file(o->progress.temp_ctx, tmp, 1);
    if (!(s.buf = malloc(SINK_BUF)) || !(idx = index_json(src, sc))) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    if (o->zstd) {
        char level[16];
        snprintf(level, sizeof level, "%d", o->zstd_level > 0 ? o->zstd_level : 3);
        s.a = archive_write_new();
        struct archive_entry *e = archive_entry_new();
        if (!s.a || !e || archive_write_add_filter_zstd(s.a) != ARCHIVE_OK ||
            archive_write_set_filter_option(s.a, "zstd", "compression-level", level) != ARCHIVE_OK ||
            archive_write_set_format_raw(s.a) != ARCHIVE_OK ||
            archive_write_set_bytes_in_last_block(s.a, 1) != ARCHIVE_OK ||
            archive_write_open_fd(s.a, s.fd) != ARCHIVE_OK) {
            rc = dsr1_err_set(err, DSR1_E_INTERNAL, PK_ERR_WRITE, 0, "%s: zstd setup failed: %s", tmp,
                              s.a && archive_error_string(s.a) ? archive_error_string(s.a) : "libarchive");
            archive_entry_free(e);
            goto out;
        }
        archive_entry_set_pathname(e, "tar");
        archive_entry_set_filetype(e, AE_IFREG);
        int hr = archive_write_header(s.a, e);
        archive_entry_free(e);
        if (hr != ARCHIVE_OK) {
            rc = dsr1_err_set(err, DSR1_E_INTERNAL, PK_ERR_WRITE, 0, "%s: %s", tmp,
                              archive_error_string(s.a) ? archive_error_string(s.a) : "write error");
            goto out;
        }
    }
    if ((rc = put_mem_member(&s, PK_INDEX_NAME, idx, strlen(idx), o->mtime, err)) ||
        (rc = put_mem_member(&s, "XXH128SUMS", src->sums_buf, src->sums_len, o->mtime, err)) ||
        (rc = put_mem_member(&s, "manifest.json", src->manifest_buf, src->manifest_len, o->mtime, err)))
        goto out;
    for (size_t i = 0; i < sc->n_shards; i++) {
        if ((rc = put_shard(&s, src, sc->shards[i], o->mtime, &o->progress, err)))
            goto out;
        res->data_bytes += src->m->shards[sc->shards[i]].bytes;
    }
    /* end of archive: two zero blocks, then a whole number of 10240-byte records */
    uint64_t end = s.pos + 2 * TAR_BLOCK;
    end = (end + TAR_RECORD - 1) / TAR_RECORD * TAR_RECORD;
    if ((rc = sink_zeros(&s, (size_t)(end - s.pos), err)) || (rc = sink_flush(&s, err)))
        goto out;
    if (s.a) {
        if (archive_write_close(s.a) != ARCHIVE_OK) {
            rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, archive_errno(s.a) > 0 ? archive_errno(s.a) : 0,
                              "finishing %s: %s", tmp,
                              archive_error_string(s.a) ? archive_error_string(s.a) : "write error");
            goto out;
        }
        archive_write_free(s.a);
        s.a = NULL;
    }
    struct stat sb;
    if (fsync(s.fd) != 0 || fstat(s.fd, &sb) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing %s", tmp);
        goto out;
    }
    close(s.fd);
    s.fd = -1;
    if (rename(tmp, path) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "renaming %s to %s", tmp, path);
        goto out;
    }
    if (o->progress.temp_file)
        o->progress.temp_file(o->progress.temp_ctx, tmp, 0);
    if ((rc = st_fsync_dir(path, err)))
        goto out;
    res->bytes = (uint64_t)sb.st_size;
    res->n_members = 3 + sc->n_shards;
    res->file = strdup(path);
out:
    if (s.a)
        archive_write_free(s.a);
    if (s.fd >= 0)
        close(s.fd);
    if (rc) {
        unlink(tmp);
        if (o->progress.temp_file)
            o->progress.temp_file(o->progress.temp_ctx, tmp, 0);
    }
    free(s.buf);
    free(idx);
    free(tmp);
    return rc;
}

static int make_dir(const char *d, dsr1_err *err)
{
    struct stat sb;
    if (stat(d, &sb) == 0)
        return S_ISDIR(sb.st_mode) ? 0
                                   : dsr1_err_set(err, DSR1_E_USAGE, PK_ERR_WRITE, 0, "%s is not a directory", d);
    if (mkdir(d, 0755) != 0 && errno != EEXIST)
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create directory %s", d);
    return 0;
}

int pk_create(const char *dir, const char *out_dir, const pk_create_opts *o, pk_archive **out, size_t *n,
              dsr1_err *err)
{
    *out = NULL;
    *n = 0;
    pk_source *src = NULL;
    pk_scope *sc = NULL;
    size_t ns = 0;
    int rc = pk_source_open(&src, dir, err);
    if (rc)
        return rc;
    if ((rc = pk_scopes(src->m, o->per, &sc, &ns, err)) || (rc = make_dir(out_dir, err)))
        goto out;
    pk_archive *res = calloc(ns, sizeof *res);
    if (!res) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < ns; i++)
        for (size_t k = 0; k < sc[i].n_shards; k++)
            total += src->m->shards[sc[i].shards[k]].bytes;
    if (o->progress.total)
        o->progress.total(o->progress.ctx, total);
    for (size_t i = 0; i < ns; i++) {
        char *path = NULL;
        if (asprintf(&path, "%s/%s.tar%s", out_dir, sc[i].name, o->zstd ? ".zst" : "") < 0) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            break;
        }
        rc = write_archive(src, &sc[i], path, o, &res[i], err);
        free(path);
        if (rc)
            break;
    }
    if (rc) {
        pk_archives_free(res, ns);
        goto out;
    }
    *out = res;
    *n = ns;
out:
    pk_scopes_free(sc, ns);
    pk_source_free(src);
    return rc;
}

void pk_archives_free(pk_archive *a, size_t n)
{
    if (!a)
        return;
    for (size_t i = 0; i < n; i++)
        free(a[i].file);
    free(a);
}

/* ---- reading ---- */

/* libarchive leaves the error string NULL for some failures (a header cut short). */
static const char *la_msg(struct archive *a)
{
    const char *m = archive_error_string(a);
    return m ? m : "damaged or truncated archive";
}

static struct archive *open_reader(const char *archive, dsr1_err *err)
{
    struct archive *a = archive_read_new();
    if (!a) {
        dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        return NULL;
    }
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    int r = strcmp(archive, "-") == 0 ? archive_read_open_fd(a, 0, 1 << 20)
                                      : archive_read_open_filename(a, archive, 1 << 20);
    if (r != ARCHIVE_OK) {
        int e = archive_errno(a);
        dsr1_err_set(err, e == ENOENT || e == EACCES || e == EISDIR ? DSR1_E_IO : DSR1_E_INVALID,
                     PK_ERR_ARCHIVE, e == ENOENT || e == EACCES ? e : 0, "%s: %s", archive,
                     archive_error_string(a) ? archive_error_string(a) : "cannot open");
        archive_read_free(a);
        return NULL;
    }
    return a;
}

static char type_char(struct archive_entry *e)
{
    if (archive_entry_hardlink(e))
        return '1';
    switch (archive_entry_filetype(e)) {
    case AE_IFREG: return '0';
    case AE_IFLNK: return '2';
    case AE_IFDIR: return '5';
    case AE_IFCHR: return '3';
    case AE_IFBLK: return '4';
    case AE_IFIFO: return '6';
    default: return '?';
    }
}

static int is_oci_layout(const char *path)
{
    struct stat sb;
    char *p = fu_join(path, "oci-layout");
    int ok = p && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode) && stat(p, &sb) == 0;
    free(p);
    return ok;
}

/* A directory that is not an OCI layout: say what it is instead of libarchive's
 * "Error reading". */
static int not_an_archive_dir(const char *path, dsr1_err *err)
{
    struct stat sb;
    if (strcmp(path, "-") == 0 || stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return 0;
    char *mp = fu_join(path, "manifest.json");
    int is_shards = mp && stat(mp, &sb) == 0;
    free(mp);
    dsr1_err_set(err, DSR1_E_USAGE, PK_ERR_ARCHIVE, 0,
                 "%s is a directory without an oci-layout file, so neither an archive nor an OCI "
                 "image layout%s",
                 path, is_shards ? " (it looks like a dsr1-shard output: pack it with dsr1-pack create or "
                                   "dsr1-pack oci, or check it with dsr1-verify)" : "");
    return 1;
}

int pk_list(const char *archive, const char *ref, pk_member **out, size_t *n, dsr1_err *err)
{
    *out = NULL;
    *n = 0;
    if (is_oci_layout(archive))
        return oci_list(archive, ref, out, n, err);
    if (not_an_archive_dir(archive, err))
        return DSR1_E_USAGE;
    struct archive *a = open_reader(archive, err);
    if (!a)
        return err ? err->status : DSR1_E_INVALID;
    pk_member *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0;
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: %s", archive,
                              la_msg(a));
            break;
        }
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            pk_member *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
                break;
            }
            v = nv;
        }
        memset(&v[cnt], 0, sizeof v[cnt]);
        v[cnt].name = strdup(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
        v[cnt].bytes = archive_entry_size_is_set(e) ? (uint64_t)archive_entry_size(e) : 0;
        v[cnt].type = type_char(e);
        cnt++;
        archive_read_data_skip(a);
    }
    archive_read_free(a);
    if (rc) {
        pk_members_free(v, cnt);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

void pk_members_free(pk_member *m, size_t n)
{
    if (!m)
        return;
    for (size_t i = 0; i < n; i++) {
        free(m[i].name);
        free(m[i].media_type);
        free(m[i].digest);
    }
    free(m);
}

/* ---- staging ---- */

struct pk_stage {
    char *dest;
    int dfd, lockfd;
    pk_extract_opts o;
    char *sums_buf, *manifest_buf;
    size_t sums_len, manifest_len;
    mf_manifest *m;
    int authed, have_expect;
    unsigned char *want, *expected, *seen, *done;
    uint32_t *sel_ranks;    /* ranks chosen by o.select (owned) */
    int replace_other;      /* DEST/manifest.json is another deployment's (o.force) */
    /* current member */
    int cur_fd;
    size_t cur;
    uint64_t cur_size, cur_written;
    hx_state *h;
    /* temp names created (relative to dest) */
    char **temps;
    size_t ntemps;
    int committed;
};

static char *partial_name(const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s%s", PK_PARTIAL_PREFIX, name) < 0 ? NULL : p;
}

static void temp_note(pk_stage *s, const char *rel, int active)
{
    if (!s->o.progress.temp_file)
        return;
    char *abs = fu_join(s->dest, rel);
    if (abs)
        s->o.progress.temp_file(s->o.progress.temp_ctx, abs, active);
    free(abs);
}

int pk_stage_open(pk_stage **out, const char *dest, const pk_extract_opts *o, dsr1_err *err)
{
    *out = NULL;
    pk_stage *s = calloc(1, sizeof *s);
    if (!s || !(s->dest = strdup(dest))) {
        free(s);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    s->dfd = s->lockfd = s->cur_fd = -1;
    s->o = *o;
    int rc = make_dir(dest, err);
    if (rc)
        goto fail;
    s->dfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dfd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot open %s", dest);
        goto fail;
    }
    s->lockfd = openat(s->dfd, PK_LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (s->lockfd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create %s/%s", dest, PK_LOCK_NAME);
        goto fail;
    }
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK
                 ? dsr1_err_set(err, DSR1_E_IO, PK_ERR_LOCKED, 0,
                                "%s: another dsr1-pack extract is writing here (lock %s)", dest, PK_LOCK_NAME)
                 : dsr1_err_set(err, DSR1_E_IO, PK_ERR_LOCKED, errno, "locking %s/%s", dest, PK_LOCK_NAME);
        goto fail;
    }
    /* Temp files of a run that was killed: nobody else holds the lock. */
    int dfd2 = dup(s->dfd);
    DIR *d = dfd2 >= 0 ? fdopendir(dfd2) : NULL;
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (strncmp(de->d_name, PK_PARTIAL_PREFIX, strlen(PK_PARTIAL_PREFIX)) == 0)
                unlinkat(s->dfd, de->d_name, 0);
        closedir(d);
    } else if (dfd2 >= 0) {
        close(dfd2);
    }
    *out = s;
    return 0;
fail:
    pk_stage_free(s);
    return rc;
}

static int hostile(dsr1_err *err, const char *fmt, const char *name, const char *why)
{
    return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_HOSTILE, 0, fmt, name, why);
}

/* DEST may already hold a deployment: the same one (a rerun, or another rank of the
 * same deployment) is completed in place; another one is refused unless o.force,
 * since its files would be silently mixed with or replaced by ours. Without a
 * manifest.json nothing under DEST is a finished extraction (manifest.json is
 * placed last), so files under our names are leftovers of an interrupted run. */
static int check_dest(pk_stage *s, dsr1_err *err)
{
    struct stat sb;
    if (fstatat(s->dfd, "manifest.json", &sb, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT)
            return 0;
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot stat %s/manifest.json", s->dest);
    }
    int same = 0;
    if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == s->manifest_len) {
        int fd = openat(s->dfd, "manifest.json", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        char *b = fd >= 0 ? malloc(s->manifest_len + 1) : NULL;
        if (b) {
            size_t got = 0;
            ssize_t r = 1;
            while (got < s->manifest_len && (r = read(fd, b + got, s->manifest_len - got)) > 0)
                got += (size_t)r;
            same = got == s->manifest_len && memcmp(b, s->manifest_buf, got) == 0;
        }
        free(b);
        if (fd >= 0)
            close(fd);
    }
    if (same)
        return 0;
    if (!s->o.force)
        return dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DEST, 0,
                            "%s already holds a different manifest.json (another deployment, or not a "
                            "dsr1-pack extraction): refusing to mix or overwrite its files; extract into "
                            "an empty directory, or pass --force to replace it",
                            s->dest);
    if (!S_ISREG(sb.st_mode))
        return dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DEST, 0,
                            "%s/manifest.json is not a regular file: remove it by hand", s->dest);
    s->replace_other = 1;
    return 0;
}

static int authenticate(pk_stage *s, dsr1_err *err)
{
    /* mf_sums_read parses a file: the sums go to their temp file first, which
     * commit renames anyway. */
    char *rel = partial_name("XXH128SUMS");
    if (!rel)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int fd = openat(s->dfd, rel, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    int rc = 0;
    if (fd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create %s/%s", s->dest, rel);
        free(rel);
        return rc;
    }
    s->temps[s->ntemps++] = rel;
    temp_note(s, rel, 1);
    size_t off = 0;
    while (off < s->sums_len) {
        ssize_t w = write(fd, s->sums_buf + off, s->sums_len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, w < 0 ? errno : EIO, "writing %s/%s", s->dest, rel);
            close(fd);
            return rc;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing %s/%s", s->dest, rel);
        close(fd);
        return rc;
    }
    close(fd);
    char *abs = fu_join(s->dest, rel);
    char **files = NULL;
    hx128 *dig = NULL;
    size_t n = 0;
    if (!abs)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    rc = mf_sums_read(abs, &files, &dig, &n, err);
    free(abs);
    if (rc) {
        dsr1_err_prefix(err, "XXH128SUMS in the archive");
        if (err)
            err->code = PK_ERR_ARCHIVE;
        return rc == DSR1_E_IO ? rc : DSR1_E_INVALID;
    }
    char msg[1024];
    if (vf_sums_check(s->m, hx_buf(s->manifest_buf, s->manifest_len), files, dig, n, msg, sizeof msg))
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DIGEST, 0, "archive metadata: %s", msg);
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    free(dig);
    if (rc || (rc = check_dest(s, err)))
        return rc;
    size_t ns = s->m->n_shards ? s->m->n_shards : 1;
    if (!(s->want = calloc(ns, 1)) || !(s->expected = calloc(ns, 1)) || !(s->seen = calloc(ns, 1)) ||
        !(s->done = calloc(ns, 1)))
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    if (!s->o.ranks && s->o.select) {
        size_t nr = 0;
        int src = s->o.select(s->o.select_ctx, s->m, &s->sel_ranks, &nr, err);
        if (src)
            return src;
        s->o.ranks = s->sel_ranks;
        s->o.n_ranks = nr;
    }
    if (s->o.ranks) {
        size_t *sel = calloc(ns, sizeof *sel);
        if (!sel)
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        long k = vf_shards_of_ranks(s->m, s->o.ranks, s->o.n_ranks, sel, err);
        for (long i = 0; i < k; i++)
            s->want[sel[i]] = 1;
        free(sel);
        if (k < 0)
            return DSR1_E_USAGE;
    } else {
        memset(s->want, 1, s->m->n_shards);
    }
    s->authed = 1;
    return 0;
}

int pk_stage_meta(pk_stage *s, const char *name, const void *buf, size_t len, dsr1_err *err)
{
    char **slot = NULL;
    size_t *lslot = NULL;
    if (strcmp(name, "XXH128SUMS") == 0) {
        slot = &s->sums_buf;
        lslot = &s->sums_len;
    } else if (strcmp(name, "manifest.json") == 0) {
        slot = &s->manifest_buf;
        lslot = &s->manifest_len;
    } else {
        return hostile(err, "member %s: %s", name, "not a metadata file");
    }
    if (*slot)
        return hostile(err, "member %s: %s", name, "appears twice in the archive");
    if (!(*slot = malloc(len + 1)))
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    memcpy(*slot, buf, len);
    (*slot)[len] = 0;
    *lslot = len;
    if (slot == &s->manifest_buf) {
        int rc = mf_parse(&s->m, s->manifest_buf, len, "manifest.json (in the archive)", err);
        if (rc)
            return rc == DSR1_E_NOMEM ? rc : DSR1_E_INVALID;
    }
    if (s->sums_buf && s->manifest_buf) {
        if (!s->temps && !(s->temps = calloc(s->m->n_shards + 4, sizeof *s->temps)))
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        return authenticate(s, err);
    }
    return 0;
}

static long shard_index(const mf_manifest *m, const char *name)
{
    for (size_t k = 0; k < m->n_shards; k++)
        if (strcmp(m->shards[k].file, name) == 0)
            return (long)k;
    return -1;
}

int pk_stage_expect(pk_stage *s, const char *const *names, size_t n, dsr1_err *err)
{
    if (!s->authed)
        return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0,
                            "archive: manifest.json and XXH128SUMS must come before the shards");
    for (size_t i = 0; i < n; i++) {
        if (strcmp(names[i], "XXH128SUMS") == 0 || strcmp(names[i], "manifest.json") == 0)
            continue;
        long k = shard_index(s->m, names[i]);
        if (pk_name_ok(names[i]) != 0 || k < 0)
            return hostile(err, "archive lists %s: %s", names[i], "not a file of the manifest");
        s->expected[k] = 1;
    }
    for (size_t k = 0; k < s->m->n_shards; k++)
        if (s->o.ranks && s->want[k] && !s->expected[k])
            return dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_INCOMPLETE, 0,
                                "this archive does not hold %s, which the requested rank loads "
                                "(pick the archive of its node or rank)",
                                s->m->shards[k].file);
    s->have_expect = 1;
    uint64_t total = 0;
    for (size_t k = 0; k < s->m->n_shards; k++)
        if (s->want[k] && s->expected[k])
            total += s->m->shards[k].bytes;
    if (s->o.progress.total)
        s->o.progress.total(s->o.progress.ctx, total);
    return 0;
}

int pk_stage_begin(pk_stage *s, const char *name, uint64_t size, int *skip, dsr1_err *err)
{
    *skip = 0;
    if (pk_name_ok(name) != 0)
        return hostile(err, "member \"%s\": %s", name, "unsafe path (absolute, '..', or a directory part)");
    if (!s->authed || !s->have_expect)
        return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0,
                            "member %s comes before the archive index, manifest.json and XXH128SUMS: not "
                            "a dsr1-pack archive",
                            name);
    long k = shard_index(s->m, name);
    if (k < 0)
        return hostile(err, "member %s: %s", name, "not a file of the manifest");
    if (!s->expected[k])
        return hostile(err, "member %s: %s", name, "not listed in the archive index");
    if (s->seen[k])
        return hostile(err, "member %s: %s", name, "appears twice in the archive");
    s->seen[k] = 1;
    const mf_shard *sh = &s->m->shards[k];
    if (size != sh->bytes) {
        char why[96];
        snprintf(why, sizeof why, "%" PRIu64 " bytes, the manifest says %" PRIu64, size, sh->bytes);
        return hostile(err, "member %s: %s", name, why);
    }
    if (!s->want[k]) {
        *skip = 1;
        return 0;
    }
    char *rel = partial_name(name);
    if (!rel)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    s->cur_fd = openat(s->dfd, rel, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (s->cur_fd < 0) {
        int e = errno;
        free(rel);
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e, "cannot create a temp file in %s", s->dest);
    }
    s->temps[s->ntemps++] = rel;
    temp_note(s, rel, 1);
    if (size) {
        int e = posix_fallocate(s->cur_fd, 0, (off_t)size);
        if (e && e != EOPNOTSUPP && e != EINVAL)
            return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e,
                                "%s: cannot reserve %" PRIu64 " bytes for %s (disk full or file size limit)",
                                s->dest, size, name);
    }
    if (!s->h && !(s->h = hx_new()))
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    hx_reset(s->h);
    s->cur = (size_t)k;
    s->cur_size = size;
    s->cur_written = 0;
    if (s->o.progress.item)
        s->o.progress.item(s->o.progress.ctx, name);
    return 0;
}

int pk_stage_write(pk_stage *s, const void *buf, size_t len, dsr1_err *err)
{
    const char *name = s->m->shards[s->cur].file;
    if (s->cur_fd < 0)
        return dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "pk_stage_write without a member");
    if (len > s->cur_size - s->cur_written)
        return hostile(err, "member %s: %s", name, "more data than its size");
    hx_update(s->h, buf, len);
    const char *p = buf;
    size_t off = 0;
    while (off < len) {
        ssize_t w = pwrite(s->cur_fd, p + off, len - off, (off_t)(s->cur_written + off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, w < 0 ? errno : ENOSPC,
                                "writing %s into %s at offset %" PRIu64, name, s->dest,
                                s->cur_written + off);
        off += (size_t)w;
    }
    s->cur_written += len;
    if (s->o.progress.add)
        s->o.progress.add(s->o.progress.ctx, len);
    return 0;
}

int pk_stage_end(pk_stage *s, dsr1_err *err)
{
    const mf_shard *sh = &s->m->shards[s->cur];
    if (s->cur_written != s->cur_size)
        return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0,
                            "member %s: archive ended after %" PRIu64 " of %" PRIu64 " bytes", sh->file,
                            s->cur_written, s->cur_size);
    hx128 got = hx_digest(s->h);
    if (!hx_eq(got, sh->xxh3_128)) {
        char a[HX_HEX_LEN + 1], b[HX_HEX_LEN + 1];
        hx_hex(got, a);
        hx_hex(sh->xxh3_128, b);
        return dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DIGEST, 0,
                            "member %s: xxh3_128 %s, the manifest says %s: corrupt archive", sh->file, a, b);
    }
    if (fdatasync(s->cur_fd) != 0)
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing %s in %s", sh->file, s->dest);
    close(s->cur_fd);
    s->cur_fd = -1;
    s->done[s->cur] = 1;
    return 0;
}

static int write_temp(pk_stage *s, const char *name, const void *buf, size_t len, dsr1_err *err)
{
    char *rel = partial_name(name);
    if (!rel)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int fd = openat(s->dfd, rel, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        int e = errno;
        free(rel);
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e, "cannot create a temp file in %s", s->dest);
    }
    s->temps[s->ntemps++] = rel;
    temp_note(s, rel, 1);
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, (const char *)buf + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : ENOSPC;
            close(fd);
            return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e, "writing %s into %s", name, s->dest);
        }
        off += (size_t)w;
    }
    int rc = 0;
    if (fsync(fd) != 0)
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing %s in %s", name, s->dest);
    close(fd);
    return rc;
}

static int place(pk_stage *s, const char *name, dsr1_err *err)
{
    char *rel = partial_name(name);
    if (!rel)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int rc = 0;
    if (renameat(s->dfd, rel, s->dfd, name) != 0)
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "renaming %s into place in %s", name, s->dest);
    else
        temp_note(s, rel, 0);
    free(rel);
    return rc;
}

int pk_stage_commit(pk_stage *s, pk_extract_result *res, dsr1_err *err)
{
    memset(res, 0, sizeof *res);
    if (!s->authed || !s->have_expect)
        return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0,
                            "archive ended before its index, manifest.json and XXH128SUMS: empty, "
                            "truncated or not a dsr1-pack archive");
    size_t nsh = 0;
    for (size_t k = 0; k < s->m->n_shards; k++) {
        if (s->expected[k] && s->want[k] && !s->done[k])
            return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_INCOMPLETE, 0,
                                "archive ended before member %s: truncated", s->m->shards[k].file);
        nsh += s->done[k];
    }
    if (nsh == 0)
        return dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_INCOMPLETE, 0, "the archive holds no shard file");
    int rc = write_temp(s, "manifest.json", s->manifest_buf, s->manifest_len, err);
    if (rc)
        return rc;
    /* --force over another deployment: drop its manifest first, so that no moment
     * shows its manifest beside our shards. */
    if (s->replace_other) {
        if (unlinkat(s->dfd, "manifest.json", 0) != 0 && errno != ENOENT)
            return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "removing %s/manifest.json", s->dest);
        if (fsync(s->dfd) != 0)
            return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing directory %s", s->dest);
    }
    /* Shards first and manifest.json last: a directory with a manifest is complete. */
    res->shards = calloc(nsh, sizeof *res->shards);
    if (!res->shards)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    for (size_t k = 0; k < s->m->n_shards; k++) {
        if (!s->done[k])
            continue;
        if ((rc = place(s, s->m->shards[k].file, err)))
            return rc;
        res->shards[res->n_shards++] = k;
        res->bytes += s->m->shards[k].bytes;
        res->n_files++;
    }
    if ((rc = place(s, "XXH128SUMS", err)) || (rc = place(s, "manifest.json", err)))
        return rc;
    res->n_files += 2;
    res->bytes += s->sums_len + s->manifest_len;
    if (fsync(s->dfd) != 0)
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing directory %s", s->dest);
    s->committed = 1;
    res->m = s->m;
    s->m = NULL;
    return 0;
}

void pk_stage_free(pk_stage *s)
{
    if (!s)
        return;
    if (s->cur_fd >= 0)
        close(s->cur_fd);
    for (size_t i = 0; i < s->ntemps; i++) {
        if (!s->committed && s->dfd >= 0) {
            unlinkat(s->dfd, s->temps[i], 0);
            temp_note(s, s->temps[i], 0);
        }
        free(s->temps[i]);
    }
    free(s->temps);
    if (s->lockfd >= 0)
        close(s->lockfd);
    if (s->dfd >= 0)
        close(s->dfd);
    hx_free(s->h);
    mf_free(s->m);
    free(s->sel_ranks);
    free(s->want);
    free(s->expected);
    free(s->seen);
    free(s->done);
    free(s->sums_buf);
    free(s->manifest_buf);
    free(s->dest);
    free(s);
}

void pk_extract_result_free(pk_extract_result *r)
{
    if (!r)
        return;
    mf_free(r->m);
    free(r->shards);
    memset(r, 0, sizeof *r);
}

/* ---- tar extraction ---- */

static int read_member(struct archive *a, const char *name, uint64_t size, uint64_t limit, char **buf,
                       dsr1_err *err)
{
    if (size > limit)
        return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_HOSTILE, 0, "member %s: %" PRIu64 " bytes is too large",
                            name, size);
    char *b = malloc(size + 1);
    if (!b)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    uint64_t got = 0;
    while (got < size) {
        la_ssize_t r = archive_read_data(a, b + got, (size_t)(size - got));
        if (r <= 0) {
            free(b);
            return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "member %s: %s", name,
                                r < 0 ? la_msg(a) : "archive ended inside it");
        }
        got += (uint64_t)r;
    }
    b[size] = 0;
    *buf = b;
    return 0;
}

typedef struct pack_index {
    char **names;
    size_t n;
    char manifest_id[HX_HEX_LEN + 1];
} pack_index;

static void index_free(pack_index *x)
{
    for (size_t i = 0; i < x->n; i++)
        free(x->names[i]);
    free(x->names);
    x->names = NULL;
    x->n = 0;
}

static int parse_index(const char *buf, size_t len, pack_index *x, dsr1_err *err)
{
    json_error_t je;
    json_t *j = json_loadb(buf, len, 0, &je);
    json_t *mem = j ? json_object_get(j, "members") : NULL;
    const char *fmt = j ? json_string_value(json_object_get(j, "format")) : NULL;
    json_t *ver = j ? json_object_get(j, "version") : NULL;
    int rc = 0;
    if (!j || !json_is_array(mem) || !fmt || strcmp(fmt, PK_FORMAT) != 0 || !json_is_integer(ver)) {
        rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: not a dsr1-pack index%s%s", PK_INDEX_NAME,
                          j ? "" : ": ", j ? "" : je.text);
        goto out;
    }
    if (json_integer_value(ver) != PK_VERSION) {
        rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0,
                          "%s: archive version %" JSON_INTEGER_FORMAT ", this build reads version %d",
                          PK_INDEX_NAME, json_integer_value(ver), PK_VERSION);
        goto out;
    }
    const char *id = json_string_value(json_object_get(j, "manifest_id"));
    snprintf(x->manifest_id, sizeof x->manifest_id, "%s", id ? id : "");
    size_t n = json_array_size(mem);
    x->names = calloc(n ? n : 1, sizeof *x->names);
    if (!x->names) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const char *nm = json_string_value(json_object_get(json_array_get(mem, i), "name"));
        if (!nm) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: member %zu has no name",
                              PK_INDEX_NAME, i);
            goto out;
        }
        if (!(x->names[x->n++] = strdup(nm))) {
            rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto out;
        }
    }
out:
    json_decref(j);
    return rc;
}

static int extract_tar(const char *archive, const char *dest, const pk_extract_opts *o, pk_extract_result *res,
                       dsr1_err *err)
{
    struct archive *a = open_reader(archive, err);
    if (!a)
        return err ? err->status : DSR1_E_INVALID;
    pk_stage *s = NULL;
    pack_index idx = {0};
    int rc = pk_stage_open(&s, dest, o, err), have_index = 0;
    while (!rc) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            break;
        if (r < ARCHIVE_WARN) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: %s", archive, la_msg(a));
            break;
        }
        const char *name = archive_entry_pathname(e);
        if (!name)
            name = "";
        char t = type_char(e);
        if (t != '0') {
            const char *what = t == '1' ? "hard link" : t == '2' ? "symbolic link" : t == '5' ? "directory"
                             : t == '3' || t == '4' ? "device" : t == '6' ? "FIFO" : "special file";
            rc = hostile(err, "member \"%s\": %s (only regular files are extracted)", name, what);
            break;
        }
        if (pk_name_ok(name) != 0) {
            rc = hostile(err, "member \"%s\": %s", name, "unsafe path (absolute, '..', or a directory part)");
            break;
        }
        if (!archive_entry_size_is_set(e)) {
            rc = hostile(err, "member %s: %s", name, "no size");
            break;
        }
        uint64_t size = (uint64_t)archive_entry_size(e);
        if (!have_index) {
            char *buf = NULL;
            if (strcmp(name, PK_INDEX_NAME) != 0) {
                rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0,
                                  "%s: first member is %s, not %s: not a dsr1-pack archive", archive, name,
                                  PK_INDEX_NAME);
                break;
            }
            if ((rc = read_member(a, name, size, MAX_INDEX, &buf, err)))
                break;
            rc = parse_index(buf, (size_t)size, &idx, err);
            free(buf);
            have_index = 1;
            continue;
        }
        if (strcmp(name, "XXH128SUMS") == 0 || strcmp(name, "manifest.json") == 0) {
            char *buf = NULL;
            if ((rc = read_member(a, name, size, MAX_META, &buf, err)))
                break;
            rc = pk_stage_meta(s, name, buf, (size_t)size, err);
            free(buf);
            if (!rc && s->authed) {
                char id[HX_HEX_LEN + 1];
                hx_hex(s->m->manifest_id, id);
                if (strcmp(id, idx.manifest_id) != 0)
                    rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_ARCHIVE, 0,
                                      "%s names manifest id %s, manifest.json has %s: mixed archive",
                                      PK_INDEX_NAME, idx.manifest_id, id);
                else
                    rc = pk_stage_expect(s, (const char *const *)idx.names, idx.n, err);
            }
            continue;
        }
        int skip = 0;
        if ((rc = pk_stage_begin(s, name, size, &skip, err)))
            break;
        if (skip) {
            if (archive_read_data_skip(a) != ARCHIVE_OK)
                rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: %s", archive,
                                  la_msg(a));
            continue;
        }
        uint64_t at = 0;
        for (;;) {
            const void *blk;
            size_t len;
            la_int64_t off;
            int br = archive_read_data_block(a, &blk, &len, &off);
            if (br == ARCHIVE_EOF)
                break;
            if (br < ARCHIVE_WARN) {
                rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "member %s: %s", name,
                                  la_msg(a));
                break;
            }
            if ((uint64_t)off != at) {
                rc = hostile(err, "member %s: %s", name, "sparse data (holes are not extracted)");
                break;
            }
            if ((rc = pk_stage_write(s, blk, len, err)))
                break;
            at += len;
        }
        if (!rc)
            rc = pk_stage_end(s, err);
    }
    if (!rc)
        rc = pk_stage_commit(s, res, err);
    index_free(&idx);
    pk_stage_free(s);
    archive_read_free(a);
    return rc;
}

int pk_extract(const char *archive, const char *dest, const pk_extract_opts *o, pk_extract_result *res,
               dsr1_err *err)
{
    memset(res, 0, sizeof *res);
    if (strcmp(archive, "-") != 0 && is_oci_layout(archive))
        return oci_extract(archive, dest, o, res, err);
    if (not_an_archive_dir(archive, err))
        return DSR1_E_USAGE;
    return extract_tar(archive, dest, o, res, err);
}
