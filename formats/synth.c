/* synth: synthetic DeepSeek-V3 checkpoints in the HF R1 layout (see synth.h). */
#include "synth.h"
#include "fu.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"
#include "st.h"

#define CHUNK_ROWS 128 /* = DT_BLOCK: a chunk is one row of FP8 blocks */

/* ---------------------------------------------------------------- presets */

static void preset_tiny(ck_config *c)
{
    ck_config_r1(c);
    c->hidden_size = 256;
    c->intermediate_size = 512;
    c->moe_intermediate_size = 256;
    c->num_hidden_layers = 3;
    c->first_k_dense_replace = 1;
    c->num_nextn_predict_layers = 1;
    c->n_routed_experts = 16;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 4;
    c->n_group = 4;
    c->topk_group = 2;
    c->num_attention_heads = 8;
    c->num_key_value_heads = 8;
    c->q_lora_rank = 256;
    c->kv_lora_rank = 128;
    c->qk_nope_head_dim = 64;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 64;
    c->vocab_size = 1024;
    /* YaRN exactly as R1 (factor 40, betas 32/1, mscale 1/1) over a 256-token
     * original context, so the 64-dim rope ramp is non-trivial (dims 0..13). */
    c->rope.original_max_position_embeddings = 256;
    c->max_position_embeddings = 256 * 40;
}

static void preset_small(ck_config *c)
{
    ck_config_r1(c);
    c->hidden_size = 1024;
    c->intermediate_size = 2048;
    c->moe_intermediate_size = 256;
    c->num_hidden_layers = 6;
    c->first_k_dense_replace = 1;
    c->num_nextn_predict_layers = 1;
    c->n_routed_experts = 64;
    c->n_shared_experts = 1;
    c->num_experts_per_tok = 6;
    c->n_group = 8;
    c->topk_group = 3;
    c->num_attention_heads = 16;
    c->num_key_value_heads = 16;
    c->q_lora_rank = 512;
    c->kv_lora_rank = 256;
    c->qk_nope_head_dim = 128;
    c->qk_rope_head_dim = 64;
    c->v_head_dim = 128;
    c->vocab_size = 8192;
    c->rope.original_max_position_embeddings = 1024;
    c->max_position_embeddings = 1024 * 40;
}

int sy_preset(const char *name, uint32_t layers, ck_config *cfg, sy_preset_info *info, dsr1_err *err)
{
    sy_preset_info in = {name, 0, 1};
    if (strcmp(name, "tiny") == 0) {
        preset_tiny(cfg);
        in.shard_size = 4000000;
    } else if (strcmp(name, "small") == 0) {
        preset_small(cfg);
        in.shard_size = 100000000;
    } else if (strcmp(name, "r1") == 0) {
        ck_config_r1(cfg);
        /* Greedy filling at 4.25 GB gives R1's 163 files (any size in 4.244..4.272 GB does). */
        in.shard_size = 4250000000ull;
    } else {
        return dsr1_err_set(err, DSR1_E_USAGE, SY_ERR_PRESET, 0,
                            "unknown preset \"%s\" (choose tiny, small or r1)", name);
    }
    if (layers) {
        if (layers > 1024)
            return dsr1_err_set(err, DSR1_E_USAGE, SY_ERR_LAYERS, 0,
                                "--layers %u is out of range [1, 1024]", layers);
        cfg->num_hidden_layers = layers;
        if (cfg->first_k_dense_replace > layers)
            cfg->first_k_dense_replace = layers;
    }
    if (info)
        *info = in;
    return 0;
}

/* ------------------------------------------------------------------- plan */

int sy_plan_make(sy_plan *p, const ck_config *cfg, int mtp, uint64_t shard_size, dsr1_err *err)
{
    memset(p, 0, sizeof *p);
    if (shard_size == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, SY_ERR_SHARD_SIZE, 0, "shard size must be at least 1 byte");
    p->cfg = *cfg;
    if (!mtp)
        p->cfg.num_nextn_predict_layers = 0;
    p->mtp = mtp && p->cfg.num_nextn_predict_layers > 0;
    int rc = ck_expected_tensors(&p->cfg, p->mtp, &p->t, &p->n, err);
    if (rc)
        return rc;
    p->file_of = malloc((p->n ? p->n : 1) * sizeof *p->file_of);
    if (!p->file_of) {
        sy_plan_free(p);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    uint64_t cur = 0;
    uint32_t f = 0;
    for (size_t i = 0; i < p->n; i++) {
        uint64_t b = p->t[i].nbytes;
        if (cur > 0 && cur + b > shard_size) {
            f++;
            cur = 0;
        }
        cur += b;
        p->file_of[i] = f;
        p->total_bytes += b;
    }
    p->n_files = p->n ? f + 1 : 0;
    if (p->n_files > 999999) {
        uint32_t nf = p->n_files;
        sy_plan_free(p);
        return dsr1_err_set(err, DSR1_E_USAGE, SY_ERR_SHARD_SIZE, 0,
                            "shard size %" PRIu64 " gives %u files; the name pattern allows 999999",
                            shard_size, nf);
    }
    return 0;
}

void sy_plan_free(sy_plan *p)
{
    if (!p)
        return;
    free(p->t);
    free(p->file_of);
    memset(p, 0, sizeof *p);
}

void sy_file_name(char *buf, size_t len, uint32_t i, uint32_t n_files)
{
    snprintf(buf, len, "model-%05u-of-%06u.safetensors", i + 1, n_files);
}

char *sy_index_json(const sy_plan *p)
{
    json_t *root = json_object(), *wm = json_object();
    if (!root || !wm) {
        json_decref(root);
        json_decref(wm);
        return NULL;
    }
    char **names = calloc(p->n_files ? p->n_files : 1, sizeof *names);
    int bad = !names;
    for (uint32_t k = 0; !bad && k < p->n_files; k++) {
        char b[64];
        sy_file_name(b, sizeof b, k, p->n_files);
        bad = !(names[k] = strdup(b));
    }
    for (size_t i = 0; !bad && i < p->n; i++)
        bad = json_object_set_new(wm, p->t[i].name, json_string(names[p->file_of[i]])) != 0;
    for (uint32_t k = 0; names && k < p->n_files; k++)
        free(names[k]);
    free(names);
    json_t *md = json_pack("{s:I}", "total_size", (json_int_t)p->total_bytes);
    if (bad || !md || json_object_set_new(root, "metadata", md) ||
        json_object_set_new(root, "weight_map", wm)) {
        json_decref(root);
        return NULL;
    }
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    return fu_newline(s); /* text files end with a newline */
}

char *sy_generation_config_json(const ck_config *cfg)
{
    json_t *o = json_pack("{s:b, s:I, s:I, s:b, s:f, s:f, s:s}", "_from_model_config", 1,
                          "bos_token_id", (json_int_t)cfg->bos_token_id, "eos_token_id",
                          (json_int_t)cfg->eos_token_id, "do_sample", 1, "temperature", 0.6,
                          "top_p", 0.95, "transformers_version", "4.46.3");
    if (!o)
        return NULL;
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15));
    json_decref(o);
    return fu_newline(s); /* text files end with a newline */
}

/* ----------------------------------------------------------------- values */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t next64(uint64_t *s)
{
    return mix64(*s += 0x9E3779B97F4A7C15ULL);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Normal quantiles at the midpoints of 65536 equal-probability bins. A sample is the
 * sum of two table draws / sqrt(2): normal up to a fine discretisation, and about
 * ten times cheaper than Box-Muller, which matters for r1-sized layers. */
static float qtab[65536];
static pthread_once_t qtab_once = PTHREAD_ONCE_INIT;

static void qtab_init(void)
{
    for (int i = 0; i < 32768; i++) {
        double p = (i + 0.5) / 65536.0; /* lower half: p < 0.5, quantile < 0 */
        double lo = -10, hi = 0;
        for (int it = 0; it < 60; it++) {
            double mid = 0.5 * (lo + hi);
            if (0.5 * erfc(-mid / M_SQRT2) < p)
                lo = mid;
            else
                hi = mid;
        }
        float q = (float)(0.5 * (lo + hi));
        qtab[i] = q;
        qtab[65535 - i] = -q;
    }
}

static inline float normal_from(uint64_t r)
{
    return (qtab[r & 0xffff] + qtab[(r >> 16) & 0xffff]) * (float)M_SQRT1_2;
}

typedef enum { V_PROJ, V_NORM, V_EMBED, V_ROUTER, V_BIAS } vkind;

static vkind kind_of_desc(const ck_tensor_desc *d, const char **key)
{
    *key = d->name;
    switch (d->cls) {
    case CK_NORM:
    case CK_FINAL_NORM: return V_NORM;
    case CK_ROUTER: return V_ROUTER;
    case CK_ROUTER_BIAS: return V_BIAS;
    case CK_MTP_EMBED: *key = "model.embed_tokens.weight"; return V_EMBED;
    case CK_MTP_HEAD: *key = "lm_head.weight"; return V_EMBED;
    case CK_EMBED:
    case CK_LM_HEAD:
    case CK_MTP_EH_PROJ: return V_EMBED;
    default: return V_PROJ;
    }
}

void sy_gen_rows(uint64_t seed, const ck_tensor_desc *d, const ck_config *cfg, uint64_t r0,
                 uint64_t r1, float *out)
{
    pthread_once(&qtab_once, qtab_init);
    const char *key;
    vkind k = kind_of_desc(d, &key);
    const uint64_t cols = d->ndim == 2 ? d->shape[1] : d->shape[0];
    const uint64_t ts = mix64(fnv1a(key) ^ mix64(seed + 0x5EED));
    float std = 0.02f, base = 0.0f;
    if (k == V_PROJ) {
        uint64_t s = ts ^ 0x7E57;
        std = 0.02f * expf(0.2f * normal_from(next64(&s)));
    } else if (k == V_NORM) {
        std = 0.1f;
        base = 1.0f;
    } else if (k == V_ROUTER) {
        std = 0.5f / sqrtf((float)cfg->hidden_size);
    } else if (k == V_BIAS) {
        std = 0.05f;
        base = 2.5f;
    }
    const uint64_t ncb = (cols + DT_BLOCK - 1) / DT_BLOCK;
    for (uint64_t r = r0; r < r1; r++) {
        uint64_t s = mix64(ts + r * 0xD1B54A32D192ED03ULL);
        float *o = out + (r - r0) * cols;
        for (uint64_t c = 0; c < cols; c += 2) {
            uint64_t x = next64(&s);
            o[c] = base + std * normal_from(x);
            if (c + 1 < cols)
                o[c + 1] = base + std * normal_from(x >> 32);
        }
        if (k == V_PROJ) {
            /* Per-block spread so block scales differ as in a trained model. */
            for (uint64_t cb = 0; cb < ncb; cb++) {
                uint64_t bs = mix64(ts ^ mix64((r / DT_BLOCK) * 0x100000001B3ULL + cb + 1));
                float f = expf(0.35f * normal_from(bs));
                uint64_t c1 = (cb + 1) * DT_BLOCK < cols ? (cb + 1) * DT_BLOCK : cols;
                for (uint64_t c = cb * DT_BLOCK; c < c1; c++)
                    o[c] *= f;
            }
        }
    }
}

/* ---------------------------------------------------------------- writing */

static void note_temp(const sy_opts *o, const char *path, int active)
{
    if (o->temp_file)
        o->temp_file(o->temp_ctx, path, active);
}

static int write_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Atomic small-file write: temp, fsync, rename, fsync dir. */
static int write_text(const sy_opts *o, const char *name, const char *text, dsr1_err *err)
{
    char *path = fu_join(o->out_dir, name);
    char *tmp = path ? malloc(strlen(path) + 32) : NULL;
    if (!tmp) {
        free(path);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    sprintf(tmp, "%s.tmp.%ld", path, (long)getpid());
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, SY_ERR_WRITE, errno, "cannot create %s", tmp);
        goto out;
    }
    note_temp(o, tmp, 1);
    if (write_all(fd, text, strlen(text)) != 0 || fsync(fd) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, SY_ERR_WRITE, errno, "cannot write %s", tmp);
        close(fd);
        unlink(tmp);
        note_temp(o, tmp, 0);
        goto out;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        rc = dsr1_err_set(err, DSR1_E_IO, SY_ERR_WRITE, errno, "cannot write %s", path);
        unlink(tmp);
        note_temp(o, tmp, 0);
        goto out;
    }
    note_temp(o, tmp, 0);
    rc = st_fsync_dir(path, err);
out:
    free(tmp);
    free(path);
    return rc;
}

static int mkdir_p(const char *dir, dsr1_err *err)
{
    char *p = strdup(dir);
    if (!p)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    for (char *s = p + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                int rc = dsr1_err_set(err, DSR1_E_IO, SY_ERR_MKDIR, errno, "cannot create directory %s", p);
                free(p);
                return rc;
            }
            *s = c;
            if (!c)
                break;
        }
    }
    free(p);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return dsr1_err_set(err, DSR1_E_IO, SY_ERR_MKDIR, ENOTDIR, "output %s is not a directory", dir);
    return 0;
}

/* "model-NNNNN-of-NNNNNN.safetensors" */
static int is_shard_name(const char *s)
{
    static const char pat[] = "model-00000-of-000000.safetensors";
    if (strlen(s) != sizeof pat - 1)
        return 0;
    for (size_t i = 0; pat[i]; i++) {
        if (pat[i] == '0' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i])
            return 0;
    }
    return 1;
}

static int is_ckpt_file(const char *s)
{
    return strcmp(s, "config.json") == 0 || strcmp(s, "model.safetensors.index.json") == 0 ||
           is_shard_name(s);
}

/* Refuse an existing checkpoint unless force; with force, remove what this run will
 * not rewrite (the index first, so the directory is never a stale checkpoint). */
static int prepare_dir(const sy_plan *p, const sy_opts *o, dsr1_err *err)
{
    int rc = mkdir_p(o->out_dir, err);
    if (rc)
        return rc;
    DIR *d = opendir(o->out_dir);
    if (!d)
        return dsr1_err_set(err, DSR1_E_IO, SY_ERR_MKDIR, errno, "cannot list %s", o->out_dir);
    struct dirent *e;
    char found[300] = "";
    while ((e = readdir(d))) {
        if (is_ckpt_file(e->d_name)) {
            snprintf(found, sizeof found, "%s", e->d_name);
            break;
        }
    }
    closedir(d);
    if (!found[0])
        return 0;
    if (!o->force)
        return dsr1_err_set(err, DSR1_E_USAGE, SY_ERR_OUT_EXISTS, 0,
                            "%s already holds a checkpoint (%s); choose another --out or pass --force "
                            "to overwrite it", o->out_dir, found);
    char *ip = fu_join(o->out_dir, "model.safetensors.index.json");
    if (!ip)
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    if (unlink(ip) != 0 && errno != ENOENT) {
        rc = dsr1_err_set(err, DSR1_E_IO, SY_ERR_WRITE, errno, "cannot remove %s", ip);
        free(ip);
        return rc;
    }
    free(ip);
    if (!(d = opendir(o->out_dir)))
        return dsr1_err_set(err, DSR1_E_IO, SY_ERR_MKDIR, errno, "cannot list %s", o->out_dir);
    while (rc == 0 && (e = readdir(d))) {
        if (!is_shard_name(e->d_name))
            continue;
        unsigned a = 0, b = 0;
        sscanf(e->d_name, "model-%5u-of-%6u", &a, &b);
        int keep = !o->metadata_only && b == p->n_files && a >= 1 && a <= p->n_files;
        if (keep)
            continue;
        char *fp = fu_join(o->out_dir, e->d_name);
        if (!fp || (unlink(fp) != 0 && errno != ENOENT))
            rc = fp ? dsr1_err_set(err, DSR1_E_IO, SY_ERR_WRITE, errno, "cannot remove stale %s", fp)
                    : dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        free(fp);
    }
    closedir(d);
    return rc;
}

typedef struct wctx {
    const sy_plan *p;
    const sy_opts *o;
    st_writer *w;
    size_t *widx;        /* global tensor index -> writer spec index (current file) */
    size_t first;        /* global index of the current file's first tensor */
} wctx;

static uint64_t rows_of(const ck_tensor_desc *d) { return d->ndim == 2 ? d->shape[0] : 1; }
static uint64_t cols_of(const ck_tensor_desc *d) { return d->ndim == 2 ? d->shape[1] : d->shape[0]; }

/* Generate and write tensor g; for an FP8 weight also fill `scale`. */
static int gen_tensor(wctx *c, size_t g, float *scale, dsr1_err *err)
{
    const ck_tensor_desc *d = &c->p->t[g];
    const uint64_t rows = rows_of(d), cols = cols_of(d), ncb = (cols + DT_BLOCK - 1) / DT_BLOCK;
    const size_t esz = st_dtype_size(d->dtype);
    const long nchunks = (long)((rows + CHUNK_ROWS - 1) / CHUNK_ROWS);
    const size_t wi = c->widx[g - c->first];
    int failed = 0;
    dsr1_err first_err;
    dsr1_err_clear(&first_err);
#pragma omp parallel
    {
        const uint64_t crow = rows < CHUNK_ROWS ? rows : CHUNK_ROWS;
        float *buf = malloc(crow * cols * sizeof *buf);
        uint8_t *enc = malloc(crow * cols * esz);
        if (!buf || !enc) {
#pragma omp critical(sy_err)
            if (!failed) {
                failed = 1;
                dsr1_err_set(&first_err, DSR1_E_NOMEM, 0, 0, "out of memory for a %" PRIu64
                             "-row chunk of %s", crow, d->name);
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (long ch = 0; ch < nchunks; ch++) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop || !buf || !enc)
                continue;
            uint64_t r0 = (uint64_t)ch * CHUNK_ROWS, r1 = r0 + CHUNK_ROWS < rows ? r0 + CHUNK_ROWS : rows;
            size_t n = (size_t)((r1 - r0) * cols);
            sy_gen_rows(c->o->seed, d, &c->p->cfg, r0, r1, buf);
            switch (d->dtype) {
            case ST_F8_E4M3:
                dt_block_quant(buf, r1 - r0, cols, enc, scale + (size_t)ch * ncb);
                break;
            case ST_BF16: dt_f32_to_bf16_n(buf, (uint16_t *)enc, n); break;
            default: memcpy(enc, buf, n * sizeof(float)); break;
            }
            dsr1_err e;
            if (st_writer_write(c->w, wi, r0 * cols * esz, enc, n * esz, &e) != 0) {
#pragma omp critical(sy_err)
                if (!failed) {
                    failed = 1;
                    first_err = e;
                }
            } else if (c->o->progress) {
                c->o->progress(c->o->progress_ctx, n * esz);
            }
        }
        free(buf);
        free(enc);
    }
    if (failed) {
        if (err)
            *err = first_err;
        return first_err.status ? first_err.status : DSR1_E_INTERNAL;
    }
    return 0;
}

static int write_scale(wctx *c, size_t g, const float *scale, dsr1_err *err)
{
    const ck_tensor_desc *d = &c->p->t[g];
    int rc = st_writer_write(c->w, c->widx[g - c->first], 0, scale, d->nbytes, err);
    if (rc == 0 && c->o->progress)
        c->o->progress(c->o->progress_ctx, d->nbytes);
    return rc;
}

static int write_file(const sy_plan *p, const sy_opts *o, uint32_t k, size_t a, size_t b,
                      float **pending, size_t *pending_idx, dsr1_err *err)
{
    const size_t n = b - a;
    st_spec *specs = calloc(n, sizeof *specs), *ord = calloc(n, sizeof *ord);
    size_t *perm = calloc(n, sizeof *perm), *widx = calloc(n, sizeof *widx);
    char name[64], *path = NULL, *tmp = NULL;
    st_writer *w = NULL;
    float *scale = NULL;
    int rc = 0;
    sy_file_name(name, sizeof name, k, p->n_files);
    path = fu_join(o->out_dir, name);
    if (!specs || !ord || !perm || !widx || !path) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const ck_tensor_desc *d = &p->t[a + i];
        specs[i].name = d->name;
        specs[i].dtype = d->dtype;
        specs[i].ndim = d->ndim;
        specs[i].shape[0] = d->shape[0];
        specs[i].shape[1] = d->shape[1];
    }
    st_align_order(specs, n, perm);
    for (size_t i = 0; i < n; i++) {
        ord[i] = specs[perm[i]];
        widx[perm[i]] = i;
    }
    static const char *const meta[] = {"format", "pt"};
    if (o->progress_item)
        o->progress_item(o->progress_ctx, name);
    if ((rc = st_writer_open(&w, path, ord, n, meta, 1, NULL, err)))
        goto out;
    tmp = strdup(st_writer_tmp_path(w));
    if (!tmp) {
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    note_temp(o, tmp, 1);
    wctx c = {p, o, w, widx, a};
    for (size_t g = a; g < b && rc == 0; g++) {
        const ck_tensor_desc *d = &p->t[g];
        if (d->is_scale) {
            if (p->file_of[d->weight_of] == k)
                continue; /* written with its weight */
            if (!*pending || *pending_idx != g) {
                rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "scale %s has no pending values", d->name);
                break;
            }
            rc = write_scale(&c, g, *pending, err);
            free(*pending);
            *pending = NULL;
            continue;
        }
        if (d->scale_idx >= 0) {
            const ck_tensor_desc *s = &p->t[d->scale_idx];
            scale = malloc(s->nbytes);
            if (!scale) {
                rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
                break;
            }
        }
        rc = gen_tensor(&c, g, scale, err);
        if (rc == 0 && scale) {
            size_t si = (size_t)d->scale_idx;
            if (p->file_of[si] == k) {
                rc = write_scale(&c, si, scale, err);
                free(scale);
            } else {
                /* The scale opens the next file: keep it until that file is written. */
                *pending = scale;
                *pending_idx = si;
            }
            scale = NULL;
        }
        if (rc)
            dsr1_err_prefix(err, "%s", path);
    }
    if (rc == 0)
        rc = st_writer_commit(w, err);
    st_writer_free(w); /* after a failure: removes the temp file */
    w = NULL;
    note_temp(o, tmp, 0);
out:
    st_writer_free(w);
    free(tmp);
    free(scale);
    free(specs);
    free(ord);
    free(perm);
    free(widx);
    free(path);
    return rc;
}

int sy_write(const sy_plan *p, const sy_opts *o, dsr1_err *err)
{
    int rc = prepare_dir(p, o, err);
    if (rc)
        return rc;
    if (!o->metadata_only) {
        float *pending = NULL;
        size_t pending_idx = 0, a = 0;
        for (uint32_t k = 0; k < p->n_files && rc == 0; k++) {
            size_t b = a;
            while (b < p->n && p->file_of[b] == k)
                b++;
            rc = write_file(p, o, k, a, b, &pending, &pending_idx, err);
            a = b;
        }
        free(pending);
        if (rc)
            return rc;
    }
    char *cfg = ck_config_to_json(&p->cfg), *gen = sy_generation_config_json(&p->cfg),
         *idx = sy_index_json(p);
    if (!cfg || !gen || !idx)
        rc = dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory building JSON");
    if (rc == 0)
        rc = write_text(o, "config.json", cfg, err);
    if (rc == 0)
        rc = write_text(o, "generation_config.json", gen, err);
    if (rc == 0)
        rc = write_text(o, "model.safetensors.index.json", idx, err);
    free(cfg);
    free(gen);
    free(idx);
    return rc;
}
