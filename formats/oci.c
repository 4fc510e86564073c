/* oci: OCI image layout / CNCF ModelPack writer and reader (see oci.h). */
#include "oci.h"
#include "fu.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hx.h"
#include "st.h"

#define COPY_BUF ((size_t)4 << 20)
#define MAX_JSON_BLOB ((uint64_t)1 << 30)
#define SHA_HEX 64

typedef struct blob {
    const char *name;       /* file name (layer filepath) */
    uint64_t bytes;
    char digest[8 + SHA_HEX + 1]; /* "sha256:<hex>" */
} blob;

static void hexify(const unsigned char *d, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[2 * n] = 0;
}

static int sha_final(EVP_MD_CTX *c, char out[8 + SHA_HEX + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(c, md, &len) != 1 || len != 32)
        return -1;
    memcpy(out, "sha256:", 7);
    hexify(md, 32, out + 7);
    return 0;
}

static int sha_buf(const void *p, size_t n, char out[8 + SHA_HEX + 1])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(c, p, n) == 1 &&
             sha_final(c, out) == 0;
    EVP_MD_CTX_free(c);
    return ok ? 0 : -1;
}

/* "sha256:" + 64 lowercase hex: anything else could name a path outside blobs/. */
static int digest_ok(const char *d)
{
    if (!d || strncmp(d, "sha256:", 7) != 0 || strlen(d) != 7 + SHA_HEX)
        return 0;
    for (int i = 7; i < 7 + SHA_HEX; i++)
        if (!((d[i] >= '0' && d[i] <= '9') || (d[i] >= 'a' && d[i] <= 'f')))
            return 0;
    return 1;
}

static char *blob_path(const char *layout, const char *digest)
{
    char *p = NULL;
    return asprintf(&p, "%s/blobs/sha256/%s", layout, digest + 7) < 0 ? NULL : p;
}

static int mkdir_one(const char *d, dsr1_err *err)
{
    if (mkdir(d, 0755) != 0 && errno != EEXIST)
        return dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create directory %s", d);
    struct stat sb;
    if (stat(d, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return dsr1_err_set(err, DSR1_E_USAGE, PK_ERR_WRITE, 0, "%s is not a directory", d);
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : ENOSPC;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Atomic small file: temp, fsync, rename. */
static int put_file(const char *path, const void *buf, size_t len, const pk_progress *pg, dsr1_err *err)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp.%ld", path, (long)getpid()) < 0)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), rc = 0;
    if (fd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create %s", tmp);
        free(tmp);
        return rc;
    }
    if (pg->temp_file)
        pg->temp_file(pg->temp_ctx, tmp, 1);
    int e = write_all(fd, buf, len);
    if (!e && fsync(fd) != 0)
        e = errno;
    close(fd);
    if (!e && rename(tmp, path) != 0)
        e = errno;
    if (e) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e, "writing %s", path);
        unlink(tmp);
    }
    if (pg->temp_file)
        pg->temp_file(pg->temp_ctx, tmp, 0);
    free(tmp);
    return rc;
}

static int put_json_blob(const char *layout, json_t *j, blob *b, const pk_progress *pg, dsr1_err *err)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    b->bytes = strlen(s);
    int rc = 0;
    if (sha_buf(s, b->bytes, b->digest) != 0) {
        rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "SHA-256 failed (libcrypto)");
    } else {
        char *p = blob_path(layout, b->digest);
        rc = p ? put_file(p, s, b->bytes, pg, err) : dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        free(p);
    }
    free(s);
    return rc;
}

/* Copy one shard into blobs/sha256, hashing SHA-256 and XXH3-128 on the way. */
static int copy_shard(const char *layout, const pk_source *src, size_t k, blob *b, const pk_progress *pg,
                      dsr1_err *err)
{
    const mf_shard *sh = &src->m->shards[k];
    char *path = fu_join(src->dir, sh->file), *tmp = NULL;
    unsigned char *buf = malloc(COPY_BUF);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    hx_state *h = hx_new();
    int in = -1, out = -1, rc = 0;
    if (!path || !buf || !c || !h || asprintf(&tmp, "%s/blobs/sha256/.tmp.%s.%ld", layout, sh->file,
                                             (long)getpid()) < 0) {
        tmp = NULL;
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    if ((rc = pk_source_open_shard(src, k, path, &in, err)))
        goto out;
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "cannot create %s", tmp);
        goto out;
    }
    if (pg->temp_file)
        pg->temp_file(pg->temp_ctx, tmp, 1);
    if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "SHA-256 init failed (libcrypto)");
        goto out;
    }
    if (pg->item)
        pg->item(pg->ctx, sh->file);
    uint64_t done = 0;
    while (done < sh->bytes) {
        size_t want = sh->bytes - done < COPY_BUF ? (size_t)(sh->bytes - done) : COPY_BUF;
        ssize_t r = pread(in, buf, want, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_SOURCE, r < 0 ? errno : EIO, "reading %s at %" PRIu64,
                              path, done);
            goto out;
        }
        EVP_DigestUpdate(c, buf, (size_t)r);
        hx_update(h, buf, (size_t)r);
        int e = write_all(out, buf, (size_t)r);
        if (e) {
            rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, e, "writing %s", tmp);
            goto out;
        }
        done += (uint64_t)r;
        if (pg->add)
            pg->add(pg->ctx, (uint64_t)r);
    }
    if (!hx_eq(hx_digest(h), sh->xxh3_128)) {
        char a[HX_HEX_LEN + 1], e2[HX_HEX_LEN + 1];
        hx_hex(hx_digest(h), a);
        hx_hex(sh->xxh3_128, e2);
        rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_SOURCE, 0,
                          "%s: xxh3_128 %s, the manifest says %s: the shard is corrupt (dsr1-verify names "
                          "the tensor)",
                          path, a, e2);
        goto out;
    }
    if (sha_final(c, b->digest) != 0) {
        rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "SHA-256 failed (libcrypto)");
        goto out;
    }
    if (fsync(out) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, errno, "syncing %s", tmp);
        goto out;
    }
    close(out);
    out = -1;
    char *dst = blob_path(layout, b->digest);
    if (!dst || rename(tmp, dst) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_WRITE, dst ? errno : ENOMEM, "renaming %s", tmp);
        free(dst);
        goto out;
    }
    free(dst);
    if (pg->temp_file)
        pg->temp_file(pg->temp_ctx, tmp, 0);
    b->name = sh->file;
    b->bytes = sh->bytes;
out:
    if (out >= 0)
        close(out);
    if (rc && tmp) {
        unlink(tmp);
        if (pg->temp_file)
            pg->temp_file(pg->temp_ctx, tmp, 0);
    }
    if (in >= 0)
        close(in);
    EVP_MD_CTX_free(c);
    hx_free(h);
    free(buf);
    free(path);
    free(tmp);
    return rc;
}

static json_t *descriptor(const char *media_type, const blob *b, const char *filepath)
{
    json_t *d = json_pack("{s:s, s:s, s:I}", "mediaType", media_type, "digest", b->digest, "size",
                          (json_int_t)b->bytes);
    /* image.title too: it is the name `oras pull` saves a layer under. */
    if (d && filepath)
        json_object_set_new(d, "annotations",
                            json_pack("{s:s, s:s}", OCI_ANN_FILEPATH, filepath, OCI_ANN_TITLE, filepath));
    return d;
}

static void rfc3339(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int oci_create(const char *dir, const char *out, const oci_opts *o, oci_result *res, dsr1_err *err)
{
    memset(res, 0, sizeof *res);
    pk_source *src = NULL;
    pk_scope *sc = NULL;
    size_t ns = 0;
    blob *fb = NULL;
    json_t *index = NULL;
    char *p1 = NULL, *p2 = NULL;
    int rc = pk_source_open(&src, dir, err);
    if (rc)
        return rc;
    const mf_manifest *m = src->m;
    if ((rc = pk_scopes(m, o->per, &sc, &ns, err)))
        goto out;
    if (!(p1 = fu_join(out, "blobs")) || !(p2 = fu_join(p1, "sha256"))) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    if ((rc = mkdir_one(out, err)) || (rc = mkdir_one(p1, err)) || (rc = mkdir_one(p2, err)))
        goto out;
    /* blobs of the files: [0] XXH128SUMS, [1] manifest.json, [2 + k] shard k */
    fb = calloc(m->n_shards + 2, sizeof *fb);
    if (!fb) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    const struct { const char *name; const char *buf; size_t len; } meta[2] = {
        {"XXH128SUMS", src->sums_buf, src->sums_len}, {"manifest.json", src->manifest_buf, src->manifest_len}};
    for (int i = 0; i < 2; i++) {
        fb[i].name = meta[i].name;
        fb[i].bytes = meta[i].len;
        char *bp = NULL;
        if (sha_buf(meta[i].buf, meta[i].len, fb[i].digest) != 0 || !(bp = blob_path(out, fb[i].digest))) {
            rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "hashing %s failed", meta[i].name);
            goto out;
        }
        rc = put_file(bp, meta[i].buf, meta[i].len, &o->progress, err);
        free(bp);
        if (rc)
            goto out;
    }
    uint64_t total = 0;
    for (size_t k = 0; k < m->n_shards; k++)
        total += m->shards[k].bytes;
    if (o->progress.total)
        o->progress.total(o->progress.ctx, total);
    /* Files in parallel; the first error wins and the rest stop early. */
    int failed = 0;
    dsr1_err first;
    dsr1_err_clear(&first);
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t k = 0; k < m->n_shards; k++) {
        int stop;
#pragma omp atomic read
        stop = failed;
        if (stop)
            continue;
        dsr1_err e;
        dsr1_err_clear(&e);
        if (copy_shard(out, src, k, &fb[2 + k], &o->progress, &e) != 0) {
#pragma omp critical(oci_err)
            if (!failed) {
                failed = 1;
                first = e;
            }
        }
    }
    if (failed) {
        if (err)
            *err = first;
        rc = first.status;
        goto out;
    }
    res->n_blobs = m->n_shards + 2;
    res->bytes = total;
    char created[32], id[HX_HEX_LEN + 1];
    rfc3339(o->mtime, created);
    hx_hex(m->manifest_id, id);
    char plan[160];
    snprintf(plan, sizeof plan, "tp=%" PRIu32 ",ep=%" PRIu32 ",pp=%" PRIu32 ",dp=%" PRIu32 ",dtype=%s%s",
             m->plan.tp, m->plan.ep, m->plan.pp, m->plan.dp, m->plan.dtype, m->plan.mtp ? ",mtp" : "");
    index = json_pack("{s:i, s:s, s:[]}", "schemaVersion", 2, "mediaType", OCI_MT_INDEX, "manifests");
    if (!index) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ns; i++) {
        size_t nl = 2 + sc[i].n_shards;
        json_t *layers = json_array(), *diff = json_array();
        for (size_t l = 0; l < nl; l++) {
            const blob *b = l < 2 ? &fb[l] : &fb[2 + sc[i].shards[l - 2]];
            json_array_append_new(layers, descriptor(l < 2 ? OCI_MT_WEIGHT_CONFIG_RAW : OCI_MT_WEIGHT_RAW, b,
                                                     b->name));
            json_array_append_new(diff, json_string(b->digest));
        }
        char title[256];
        snprintf(title, sizeof title, "%s (dsr1 shards %s, %s)", o->name ? o->name : m->architecture, plan,
                 sc[i].name);
        json_t *cfg = json_pack("{s:{s:s, s:s, s:s, s:s}, s:{s:s, s:s, s:s}, s:{s:s, s:o}}", "descriptor",
                                "createdAt", created, "family", "deepseek-v3", "name",
                                o->name ? o->name : m->architecture, "title", title, "config", "architecture",
                                "transformer", "format", "safetensors", "precision", m->plan.dtype,
                                "modelfs", "type", "layers", "diffIds", diff);
        blob cb = {"config", 0, ""};
        if (!cfg || (rc = put_json_blob(out, cfg, &cb, &o->progress, err))) {
            json_decref(cfg);
            json_decref(layers);
            if (!rc)
                rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto out;
        }
        json_decref(cfg);
        json_t *man = json_pack("{s:i, s:s, s:s, s:o, s:o, s:{s:s, s:s, s:s, s:s}}", "schemaVersion", 2,
                                "mediaType", OCI_MT_MANIFEST, "artifactType", OCI_ARTIFACT_MODEL, "config",
                                descriptor(OCI_MT_MODEL_CONFIG, &cb, NULL), "layers", layers, "annotations",
                                OCI_ANN_CREATED, created, "io.dsr1.manifest_id", id, "io.dsr1.plan", plan,
                                "io.dsr1.scope", sc[i].name);
        blob mb = {"manifest", 0, ""};
        if (!man || (rc = put_json_blob(out, man, &mb, &o->progress, err))) {
            json_decref(man);
            if (!rc)
                rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
            goto out;
        }
        json_decref(man);
        json_t *d = json_pack("{s:s, s:s, s:s, s:I, s:{s:s}}", "mediaType", OCI_MT_MANIFEST, "artifactType",
                              OCI_ARTIFACT_MODEL, "digest", mb.digest, "size", (json_int_t)mb.bytes,
                              "annotations", OCI_ANN_REF_NAME, sc[i].name);
        json_array_append_new(json_object_get(index, "manifests"), d);
        res->n_manifests++;
    }
    if ((rc = st_fsync_dir(p2, err)))
        goto out;
    char *layout = fu_join(out, "oci-layout"), *ip = fu_join(out, "index.json");
    static const char lay[] = "{\"imageLayoutVersion\":\"" OCI_LAYOUT_VERSION "\"}";
    char *is = json_dumps(index, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!layout || !ip || !is)
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    else if (!(rc = put_file(layout, lay, sizeof lay - 1, &o->progress, err)) &&
             !(rc = put_file(ip, is, strlen(is), &o->progress, err)))
        rc = st_fsync_dir(ip, err);
    free(layout);
    free(ip);
    free(is);
out:
    json_decref(index);
    free(fb);
    free(p1);
    free(p2);
    pk_scopes_free(sc, ns);
    pk_source_free(src);
    return rc;
}

/* ---- reading ---- */

static int bad_layout(dsr1_err *err, const char *layout, const char *what)
{
    return dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: %s", layout, what);
}

/* Read a JSON blob and check its size and digest against the descriptor. */
static json_t *load_blob_json(const char *layout, const char *digest, uint64_t size, const char *what,
                              dsr1_err *err)
{
    if (!digest_ok(digest)) {
        bad_layout(err, layout, "a descriptor's digest is not sha256:<64 hex>");
        return NULL;
    }
    if (size > MAX_JSON_BLOB) {
        bad_layout(err, layout, "a JSON blob is too large");
        return NULL;
    }
    char *p = blob_path(layout, digest);
    int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
    free(p);
    if (fd < 0) {
        dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_INCOMPLETE, 0, "%s: %s blob %s is missing", layout, what, digest);
        return NULL;
    }
    char *buf = malloc(size + 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    char extra;
    ssize_t more = buf ? read(fd, &extra, 1) : 0;
    close(fd);
    char dg[8 + SHA_HEX + 1];
    if (!buf || got != size || more != 0 || sha_buf(buf, size, dg) != 0 || strcmp(dg, digest) != 0) {
        free(buf);
        dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DIGEST, 0,
                     "%s: %s blob %s does not match its descriptor (size or SHA-256)", layout, what, digest);
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(buf, size, 0, &je);
    free(buf);
    if (!j)
        dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s: %s blob is not JSON: %s", layout, what, je.text);
    return j;
}

/* The image manifest named by ref (or the only one / "all"). */
static json_t *select_manifest(const char *layout, const char *ref, dsr1_err *err)
{
    char *ip = fu_join(layout, "index.json");
    json_error_t je;
    json_t *idx = ip ? json_load_file(ip, 0, &je) : NULL;
    free(ip);
    if (!idx) {
        dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_ARCHIVE, 0, "%s/index.json: %s", layout, je.text);
        return NULL;
    }
    json_t *mans = json_object_get(idx, "manifests"), *pick = NULL;
    size_t n = json_array_size(mans);
    char names[512] = "";
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(mans, i);
        const char *r = json_string_value(json_object_get(json_object_get(d, "annotations"), OCI_ANN_REF_NAME));
        if (w < sizeof names)
            w += (size_t)snprintf(names + w, sizeof names - w, "%s%s", i ? ", " : "", r ? r : "(untagged)");
        if ((ref && r && strcmp(r, ref) == 0) || (!ref && (n == 1 || (r && strcmp(r, "all") == 0))))
            pick = d;
    }
    if (!pick) {
        dsr1_err_set(err, DSR1_E_USAGE, PK_ERR_ARCHIVE, 0, "%s: %s%s%s; it holds: %s", layout,
                     ref ? "no image manifest tagged " : "several image manifests and none tagged \"all\"",
                     ref ? ref : "", ref ? "" : ": pass --ref", n ? names : "none");
        json_decref(idx);
        return NULL;
    }
    const char *mt = json_string_value(json_object_get(pick, "mediaType"));
    const char *dg = json_string_value(json_object_get(pick, "digest"));
    json_t *sz = json_object_get(pick, "size");
    json_t *man = NULL;
    if (!mt || strcmp(mt, OCI_MT_MANIFEST) != 0 || !json_is_integer(sz) || json_integer_value(sz) < 0)
        bad_layout(err, layout, "index.json: the manifest descriptor lacks mediaType " OCI_MT_MANIFEST " or size");
    else
        man = load_blob_json(layout, dg, (uint64_t)json_integer_value(sz), "image manifest", err);
    json_decref(idx);
    if (!man)
        return NULL;
    const char *at = json_string_value(json_object_get(man, "artifactType"));
    json_t *cfg = json_object_get(man, "config");
    const char *cmt = json_string_value(json_object_get(cfg, "mediaType"));
    json_t *csz = json_object_get(cfg, "size");
    if (!at || strcmp(at, OCI_ARTIFACT_MODEL) != 0 || !cmt || strcmp(cmt, OCI_MT_MODEL_CONFIG) != 0 ||
        !json_is_integer(csz) || !json_is_array(json_object_get(man, "layers"))) {
        bad_layout(err, layout, "the image manifest is not a CNCF ModelPack model (artifactType / config)");
        json_decref(man);
        return NULL;
    }
    json_t *c = load_blob_json(layout, json_string_value(json_object_get(cfg, "digest")),
                               (uint64_t)json_integer_value(csz), "model config", err);
    if (!c) {
        json_decref(man);
        return NULL;
    }
    json_decref(c);
    return man;
}

typedef struct layer {
    const char *name, *digest, *media_type;
    uint64_t size;
} layer;

static int parse_layers(const char *layout, json_t *man, layer **out, size_t *n, dsr1_err *err)
{
    json_t *ls = json_object_get(man, "layers");
    size_t nl = json_array_size(ls);
    layer *v = calloc(nl ? nl : 1, sizeof *v);
    if (!v)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    for (size_t i = 0; i < nl; i++) {
        json_t *d = json_array_get(ls, i);
        json_t *sz = json_object_get(d, "size");
        v[i].media_type = json_string_value(json_object_get(d, "mediaType"));
        v[i].digest = json_string_value(json_object_get(d, "digest"));
        v[i].name = json_string_value(json_object_get(json_object_get(d, "annotations"), OCI_ANN_FILEPATH));
        if (!v[i].media_type || !v[i].digest || !v[i].name || !json_is_integer(sz) || json_integer_value(sz) < 0) {
            free(v);
            return bad_layout(err, layout, "a layer lacks mediaType, digest, size or " OCI_ANN_FILEPATH);
        }
        v[i].size = (uint64_t)json_integer_value(sz);
        if (!digest_ok(v[i].digest)) {
            free(v);
            return bad_layout(err, layout, "a layer digest is not sha256:<64 hex>");
        }
    }
    *out = v;
    *n = nl;
    return 0;
}

int oci_list(const char *layout, const char *ref, pk_member **out, size_t *n, dsr1_err *err)
{
    *out = NULL;
    *n = 0;
    json_t *man = select_manifest(layout, ref, err);
    if (!man)
        return err ? err->status : DSR1_E_INVALID;
    layer *ls = NULL;
    size_t nl = 0;
    int rc = parse_layers(layout, man, &ls, &nl, err);
    pk_member *v = rc ? NULL : calloc(nl ? nl : 1, sizeof *v);
    if (!rc && !v)
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    for (size_t i = 0; !rc && i < nl; i++) {
        v[i].name = strdup(ls[i].name);
        v[i].bytes = ls[i].size;
        v[i].type = '0';
        v[i].media_type = strdup(ls[i].media_type);
        v[i].digest = strdup(ls[i].digest);
    }
    free(ls);
    json_decref(man);
    if (rc) {
        pk_members_free(v, nl);
        return rc;
    }
    *out = v;
    *n = nl;
    return 0;
}

static int is_meta(const char *name)
{
    return strcmp(name, "XXH128SUMS") == 0 || strcmp(name, "manifest.json") == 0;
}

int oci_extract(const char *layout, const char *dest, const pk_extract_opts *o, pk_extract_result *res,
                dsr1_err *err)
{
    memset(res, 0, sizeof *res);
    json_t *man = select_manifest(layout, o->ref, err);
    if (!man)
        return err ? err->status : DSR1_E_INVALID;
    layer *ls = NULL;
    size_t nl = 0;
    pk_stage *s = NULL;
    const char **names = NULL;
    unsigned char *buf = NULL;
    EVP_MD_CTX *c = NULL;
    int rc = parse_layers(layout, man, &ls, &nl, err);
    if (rc)
        goto out;
    if ((rc = pk_stage_open(&s, dest, o, err)))
        goto out;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        /* metadata first, whatever the layer order */
        const char *want = pass == 0 ? "XXH128SUMS" : "manifest.json";
        size_t i = 0;
        while (i < nl && strcmp(ls[i].name, want) != 0)
            i++;
        if (i == nl) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_INCOMPLETE, 0, "%s: the model has no %s layer", layout,
                              want);
            break;
        }
        if (strcmp(ls[i].media_type, OCI_MT_WEIGHT_CONFIG_RAW) != 0) {
            rc = bad_layout(err, layout, "XXH128SUMS / manifest.json layers must be " OCI_MT_WEIGHT_CONFIG_RAW);
            break;
        }
        char *p = blob_path(layout, ls[i].digest);
        char *b = NULL;
        size_t len = 0;
        int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
        free(p);
        if (fd < 0) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_INCOMPLETE, 0, "%s: blob of %s is missing", layout, want);
            break;
        }
        if (ls[i].size <= MAX_JSON_BLOB && (b = malloc(ls[i].size + 1))) {
            while (len < ls[i].size) {
                ssize_t r = read(fd, b + len, ls[i].size - len);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    break;
                len += (size_t)r;
            }
        }
        close(fd);
        char dg[8 + SHA_HEX + 1];
        if (!b || len != ls[i].size || sha_buf(b, len, dg) != 0 || strcmp(dg, ls[i].digest) != 0)
            rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DIGEST, 0,
                              "%s: blob of %s does not match its descriptor (size or SHA-256)", layout, want);
        else
            rc = pk_stage_meta(s, want, b, len, err);
        free(b);
    }
    if (rc)
        goto out;
    names = calloc(nl ? nl : 1, sizeof *names);
    if (!names) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nl; i++)
        names[i] = ls[i].name;
    if ((rc = pk_stage_expect(s, names, nl, err)))
        goto out;
    buf = malloc(COPY_BUF);
    c = EVP_MD_CTX_new();
    if (!buf || !c) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    size_t nmeta = 0;
    for (size_t i = 0; i < nl && !rc; i++) {
        if (is_meta(ls[i].name)) {
            if (++nmeta > 2)
                rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_HOSTILE, 0, "%s: layer %s appears twice", layout,
                                  ls[i].name);
            continue;
        }
        if (strcmp(ls[i].media_type, OCI_MT_WEIGHT_RAW) != 0) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_HOSTILE, 0, "%s: layer %s has media type %s, expected %s",
                              layout, ls[i].name, ls[i].media_type, OCI_MT_WEIGHT_RAW);
            break;
        }
        int skip = 0;
        if ((rc = pk_stage_begin(s, ls[i].name, ls[i].size, &skip, err)) || skip)
            continue;
        char *p = blob_path(layout, ls[i].digest);
        int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
        free(p);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0 || (uint64_t)sb.st_size != ls[i].size) {
            rc = dsr1_err_set(err, DSR1_E_INVALID, PK_ERR_DIGEST, 0, "%s: blob %s of %s is missing or has the wrong size",
                              layout, ls[i].digest, ls[i].name);
            if (fd >= 0)
                close(fd);
            break;
        }
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        EVP_DigestInit_ex(c, EVP_sha256(), NULL);
        uint64_t done = 0;
        while (!rc && done < ls[i].size) {
            size_t want = ls[i].size - done < COPY_BUF ? (size_t)(ls[i].size - done) : COPY_BUF;
            ssize_t r = pread(fd, buf, want, (off_t)done);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                rc = dsr1_err_set(err, DSR1_E_IO, PK_ERR_ARCHIVE, r < 0 ? errno : EIO, "reading blob of %s",
                                  ls[i].name);
                break;
            }
            EVP_DigestUpdate(c, buf, (size_t)r);
            rc = pk_stage_write(s, buf, (size_t)r, err);
            done += (uint64_t)r;
        }
        close(fd);
        if (rc)
            break;
        char dg[8 + SHA_HEX + 1];
        if (sha_final(c, dg) != 0 || strcmp(dg, ls[i].digest) != 0) {
            rc = dsr1_err_set(err, DSR1_E_MISMATCH, PK_ERR_DIGEST, 0, "%s: blob of %s has SHA-256 %s, the descriptor says %s",
                              layout, ls[i].name, dg, ls[i].digest);
            break;
        }
        rc = pk_stage_end(s, err);
    }
    if (!rc)
        rc = pk_stage_commit(s, res, err);
out:
    EVP_MD_CTX_free(c);
    free(buf);
    free(names);
    pk_stage_free(s);
    free(ls);
    json_decref(man);
    return rc;
}
