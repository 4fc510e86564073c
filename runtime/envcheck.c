/* envcheck.c: see envcheck.h */
#include "envcheck.h"

#include <string.h>

#include "ident.h"

typedef enum { EV_SKIP, EV_INT, EV_ONE_OF, EV_PAIR } ev_kind;

typedef struct ev_spec {
    const char *name;
    ev_kind kind;
    int lo, hi;        /* EV_INT */
    const char *words; /* EV_ONE_OF: '|'-separated; EV_PAIR: each number's allowed values */
} ev_spec;

static const ev_spec specs[] = {
    /* identity: validated where identity is resolved (runtime/ident.c) */
    {"DSR1_GPUS_PER_NODE", EV_SKIP, 0, 0, NULL},
    /* load */
    {"DSR1_UPLOAD", EV_ONE_OF, 0, 0, "copy|pread|register"},
    {"DSR1_UPLOAD_THREADS", EV_INT, 1, 1024, NULL},
    {"DSR1_HASH_THREADS", EV_INT, 1, 1024, NULL},
    {"DSR1_NCCL_BLOCKING", EV_ONE_OF, 0, 0, "0|1"},
    /* decode */
    {"DSR1_CUDA_GRAPHS", EV_ONE_OF, 0, 0, "0|1"},
    /* kernels (docs/tools/dsr1-serve.md, ENVIRONMENT) */
    {"DSR1_PDL", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_GEMV_MAX_M", EV_INT, 0, 1 << 30, NULL},
    {"DSR1_GEMV_A8", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_GEMV_A8_OCC", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_GEMV_KS", EV_ONE_OF, 0, 0, "0|1|2|4|8"},
    {"DSR1_GEMV_VARIANT", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_LT_FP8", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_ABS_MMA_MIN", EV_INT, 0, 1 << 30, NULL},
    {"DSR1_MLA_SPLITS", EV_INT, 0, 64, NULL},
    {"DSR1_MLA_PREFILL_MIN", EV_INT, 0, 1 << 30, NULL},
    {"DSR1_MLA_FLASH", EV_ONE_OF, 0, 0, "0|1|2"},
    {"DSR1_MOE_KS", EV_PAIR, 0, 0, "0|1|2|4|8"},
    {"DSR1_MOE_GEMM_MIN", EV_INT, 0, 1 << 30, NULL},
    {"DSR1_MOE_EARLY", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_MOE_FUSE", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_MOE_OCC", EV_ONE_OF, 0, 0, "0|1"},
    {"DSR1_MOE_STRIDE", EV_ONE_OF, 0, 0, "0|1"},
    /* tests' fault hooks, other programs' switches, scripts */
    {"DSR1_TEST_FAULT", EV_SKIP, 0, 0, NULL},
    {"DSR1_TEST_DRAFTS", EV_SKIP, 0, 0, NULL},
    {"DSR1_PROGRESS_INTERVAL", EV_SKIP, 0, 0, NULL},
    {"DSR1_SHARD_TEST_STALL_BATCHES", EV_SKIP, 0, 0, NULL},
    {"DSR1_VENV", EV_SKIP, 0, 0, NULL},
};

/* v is one of the '|'-separated words */
static int one_of(const char *v, const char *words)
{
    size_t n = strlen(v);
    for (const char *w = words; *w;) {
        size_t l = strcspn(w, "|");
        if (l == n && strncmp(w, v, n) == 0)
            return 1;
        w += l + (w[l] == '|');
    }
    return 0;
}

static int check_one(const ev_spec *s, const char *v, dsr1_err *err)
{
    int x;
    switch (s->kind) {
    case EV_INT:
        if (rt_ident_parse_int(v, s->lo, s->hi, &x) == 0)
            return 0;
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "environment %s=\"%s\" is not an integer in [%d, %d]; unset it for "
                            "the default", s->name, v, s->lo, s->hi);
    case EV_ONE_OF:
        if (one_of(v, s->words))
            return 0;
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "environment %s=\"%s\" is not one of %s; unset it for the default",
                            s->name, v, s->words);
    case EV_PAIR: {
        char a[16], b[16];
        const char *comma = strchr(v, ',');
        size_t la = comma ? (size_t)(comma - v) : 0;
        if (comma && la > 0 && la < sizeof a && strlen(comma + 1) < sizeof b) {
            memcpy(a, v, la);
            a[la] = 0;
            strcpy(b, comma + 1);
            if (one_of(a, s->words) && one_of(b, s->words))
                return 0;
        }
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "environment %s=\"%s\" is not two numbers A,B, each one of %s; unset "
                            "it for the default", s->name, v, s->words);
    }
    default:
        return 0;
    }
}

int rt_env_check(char *const *env, const char *prog, FILE *warn, dsr1_err *err)
{
    if (!env)
        return 0;
    for (char *const *e = env; *e; e++) {
        if (strncmp(*e, "DSR1_", 5) != 0)
            continue;
        size_t nl = strcspn(*e, "=");
        const char *v = (*e)[nl] == '=' ? *e + nl + 1 : "";
        const ev_spec *s = NULL;
        for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
            if (strlen(specs[i].name) == nl && strncmp(specs[i].name, *e, nl) == 0)
                s = &specs[i];
        if (!s) {
            if (warn)
                fprintf(warn, "%s: warning: environment %.*s is not a switch of any dsr1 program "
                              "(a typo?); ignored\n", prog, (int)nl, *e);
            continue;
        }
        int rc = check_one(s, v, err);
        if (rc)
            return rc;
    }
    return 0;
}
