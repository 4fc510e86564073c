/* st: interop with the official Python safetensors, both ways.
 * (a) safetensors.numpy.save_file writes -> our reader sees the same names,
 *     dtypes, shapes, bytes (sha256) and metadata;
 * (b) our writer writes (data_align 8 and 4096) -> safe_open reads every tensor
 *     with the bytes we meant to write.
 * The Python side lives in tests/interop/; the interpreter is $PY or
 * build/venv/bin/python. Without it these tests fail: the interop check is not
 * optional. */
#include "test.h"
#include "st.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

uint8_t stt_byte(uint64_t seed, size_t i, uint64_t k);
int stt_write(const char *path, const st_spec *specs, size_t n, const char *const *meta, size_t nm,
              const st_write_opts *opts, uint64_t seed, dsr1_err *err);

static const char *python(void)
{
    const char *p = getenv("PY");
    if (!p || !*p)
        p = "build/venv/bin/python";
    if (access(p, X_OK) != 0) {
        test_fail_at(__FILE__, __LINE__, "Python venv interpreter '%s' not found: run "
                     "scripts/install-deps.sh (it creates build/venv with safetensors, numpy, ml_dtypes)", p);
        return NULL;
    }
    return p;
}

/* Run a command with stdout+stderr into `log`; returns its exit status. */
static int run_to(const char *cmd, const char *log)
{
    char full[4096];
    snprintf(full, sizeof full, "%s > '%s' 2>&1", cmd, log);
    int rc = system(full);
    return rc == -1 ? -1 : WEXITSTATUS(rc);
}

static char *slurp(const char *p)
{
    FILE *f = fopen(p, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    size_t k;
    while ((k = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n < 2)
            b = realloc(b, cap *= 2);
    }
    b[n] = 0;
    fclose(f);
    return b;
}

typedef struct {
    char **v;
    size_t n, cap;
} lines;

static void lines_add(lines *l, const char *s)
{
    if (l->n == l->cap)
        l->v = realloc(l->v, (l->cap = l->cap ? 2 * l->cap : 64) * sizeof *l->v);
    l->v[l->n++] = strdup(s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void lines_free(lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

static void lines_from_text(lines *l, char *text)
{
    for (char *s = strtok(text, "\n"); s; s = strtok(NULL, "\n"))
        if (*s)
            lines_add(l, s);
}

static void sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
    for (unsigned i = 0; i < len; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    out[2 * len] = 0;
}

static void tensor_line(lines *l, const char *name, st_dtype dt, int ndim, const uint64_t *shape,
                        const void *data, size_t nbytes)
{
    char shp[256] = "", hex[65], line[2048];
    size_t k = 0;
    for (int d = 0; d < ndim; d++)
        k += (size_t)snprintf(shp + k, sizeof shp - k, "%s%llu", d ? "," : "", (unsigned long long)shape[d]);
    sha256_hex(data, nbytes, hex);
    snprintf(line, sizeof line, "T\t%s\t%s\t%s\t%s", name, st_dtype_name(dt), shp, hex);
    lines_add(l, line);
}

/* What our reader sees, in the st_common.py line format. */
static void lines_from_file(lines *l, const st_file *f)
{
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        tensor_line(l, t->name, t->dtype, t->ndim, t->shape, t->data, (size_t)t->nbytes);
    }
    for (size_t i = 0; i < st_meta_count(f); i++) {
        const char *k, *v;
        char line[2048];
        st_meta_at(f, i, &k, &v);
        snprintf(line, sizeof line, "M\t%s\t%s", k, v);
        lines_add(l, line);
    }
}

static void compare_lines(const char *what, lines *got, lines *want)
{
    if (got->n)
        qsort(got->v, got->n, sizeof *got->v, cmp_str);
    if (want->n)
        qsort(want->v, want->n, sizeof *want->v, cmp_str);
    CHECK_MSG(got->n == want->n, "%s: %zu lines, expected %zu", what, got->n, want->n);
    for (size_t i = 0; i < got->n && i < want->n; i++)
        CHECK_MSG(strcmp(got->v[i], want->v[i]) == 0, "%s: line %zu\n    got:  %s\n    want: %s", what,
                  i, got->v[i], want->v[i]);
}

TEST(st_interop_python_writes_we_read)
{
    const char *py = python();
    if (!py)
        return;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' tests/interop/st_py_write.py '%s'", py, test_tmpdir());
    const char *log = test_path("py_write.log");
    int rc = run_to(cmd, log);
    if (rc != 0) {
        char *out = slurp(log);
        test_fail_at(__FILE__, __LINE__, "%s failed (exit %d):\n%s", cmd, rc, out ? out : "");
        free(out);
        return;
    }
    static const char *const files[] = {"py_all.safetensors", "py_one.safetensors", "py_empty.safetensors"};
    size_t min_tensors[] = {19, 1, 0};
    for (size_t i = 0; i < 3; i++) {
        const char *p = test_path(files[i]);
        char ep[1200];
        snprintf(ep, sizeof ep, "%s.expect", p);
        st_file *f = NULL;
        dsr1_err err;
        rc = st_open(&f, p, &err);
        CHECK_MSG(rc == 0, "our reader rejects %s: %s", files[i], err.msg);
        char *text = slurp(ep);
        CHECK_MSG(text != NULL, "missing %s", ep);
        if (!f || !text) {
            free(text);
            st_close(f);
            continue;
        }
        CHECK(st_count(f) >= min_tensors[i]);
        CHECK_EQ_U64(st_data_start(f) % 8, 0); /* the official writer's alignment */
        lines got = {0}, want = {0};
        lines_from_file(&got, f);
        lines_from_text(&want, text);
        compare_lines(files[i], &got, &want);
        lines_free(&got);
        lines_free(&want);
        free(text);
        st_close(f);
    }
}

static const st_spec interop_specs[] = {
    {"model.embed_tokens.weight", ST_BF16, 2, {64, 32}},
    {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", ST_F8_E4M3, 2, {72, 32}},
    {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv", ST_F32, 2, {1, 1}},
    {"model.layers.0.mlp.gate.e_score_correction_bias", ST_F32, 1, {16}},
    {"scalar", ST_F64, 0, {0}},
    {"empty", ST_I32, 2, {0, 7}},
    {"b", ST_BOOL, 1, {3}},
    {"u8", ST_U8, 1, {5}},
    {"i8", ST_I8, 1, {5}},
    {"e5m2", ST_F8_E5M2, 1, {3}},
    {"i16", ST_I16, 1, {3}},
    {"u16", ST_U16, 1, {3}},
    {"f16", ST_F16, 3, {2, 1, 3}},
    {"i32", ST_I32, 1, {3}},
    {"u32", ST_U32, 1, {3}},
    {"i64", ST_I64, 1, {3}},
    {"u64", ST_U64, 1, {3}},
    {"caf\xc3\xa9 \"q\" \\ \xe6\xa8\xa1", ST_U8, 1, {2}},
};
#define NSPECS (sizeof interop_specs / sizeof interop_specs[0])

static void we_write_python_reads(const char *py, const char *name, uint64_t align, int rule)
{
    st_spec s[NSPECS];
    size_t perm[NSPECS];
    if (rule)
        st_align_order(interop_specs, NSPECS, perm);
    for (size_t i = 0; i < NSPECS; i++)
        s[i] = interop_specs[rule ? perm[i] : i];
    const char *meta[] = {"format", "dsr1-shard", "note", "h\xc3\xa9llo \"q\" \\ {}", "", "empty key"};
    st_write_opts o = {.data_align = align, .check_align_rule = rule};
    const char *p = test_path(name);
    dsr1_err err;
    int rc = stt_write(p, s, NSPECS, meta, 3, &o, 77, &err);
    CHECK_MSG(rc == 0, "write %s: %s", name, err.msg);
    if (rc)
        return;
    lines want = {0}, got = {0};
    for (size_t i = 0; i < NSPECS; i++) {
        uint64_t ne = 1;
        for (int d = 0; d < s[i].ndim; d++)
            ne *= s[i].shape[d];
        size_t nb = (size_t)(ne * st_dtype_size(s[i].dtype));
        uint8_t *buf = malloc(nb ? nb : 1);
        for (size_t k = 0; k < nb; k++)
            buf[k] = stt_byte(77, i, k);
        tensor_line(&want, s[i].name, s[i].dtype, s[i].ndim, s[i].shape, buf, nb);
        free(buf);
    }
    for (int k = 0; k < 3; k++) {
        char line[512];
        snprintf(line, sizeof line, "M\t%s\t%s", meta[2 * k], meta[2 * k + 1]);
        lines_add(&want, line);
    }
    char cmd[2048], out[1100];
    snprintf(out, sizeof out, "%s.py.txt", p);
    snprintf(cmd, sizeof cmd, "'%s' tests/interop/st_py_read.py '%s'", py, p);
    rc = run_to(cmd, out);
    char *text = slurp(out);
    CHECK_MSG(rc == 0, "official safetensors cannot read %s (exit %d):\n%s", name, rc, text ? text : "");
    if (rc == 0 && text) {
        lines_from_text(&got, text);
        compare_lines(name, &got, &want);
    }
    free(text);
    lines_free(&got);
    lines_free(&want);
}

TEST(st_interop_we_write_python_reads)
{
    const char *py = python();
    if (!py)
        return;
    we_write_python_reads(py, "c_align8.safetensors", 8, 0);
    we_write_python_reads(py, "c_align4096.safetensors", 4096, 1);
    st_file *f;
    dsr1_err err;
    CHECK_EQ_INT(st_open(&f, test_path("c_align4096.safetensors"), &err), 0);
    CHECK_EQ_U64(st_data_start(f), 4096);
    st_close(f);
}
