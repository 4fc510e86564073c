/* envcheck: DSR1_* switches checked before a program runs (runtime/envcheck.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envcheck.h"
#include "test.h"

/* rt_env_check on env; its warnings in *warn (caller frees) */
static int check_env(char *const *env, char **warn, dsr1_err *err)
{
    size_t n;
    FILE *f = open_memstream(warn, &n);
    dsr1_err_clear(err);
    int rc = rt_env_check(env, "prog", f, err);
    fclose(f);
    return rc;
}

TEST(envcheck_valid_switches_pass)
{
    char *env[] = {"PATH=/bin", "DSR1_UPLOAD=pread", "DSR1_UPLOAD_THREADS=8", "DSR1_HASH_THREADS=4",
                   "DSR1_PDL=0", "DSR1_GEMV_MAX_M=100000", "DSR1_MOE_KS=2,4", "DSR1_GEMV_KS=8",
                   "DSR1_ABS_MMA_MIN=0", "DSR1_LT_FP8=1", "DSR1_GPUS_PER_NODE=anything",
                   "DSR1_TEST_FAULT=1:init", "DSR1_CUDA_GRAPHS=0",
                   "DSR1_MLA_PREFILL_MIN=0", "DSR1_MOE_GEMM_MIN=64", NULL};
    char *w = NULL;
    dsr1_err err;
    CHECK_EQ_INT(check_env(env, &w, &err), 0);
    CHECK_EQ_STR(w, ""); /* no warnings */
    free(w);
}

TEST(envcheck_malformed_values_name_the_switch)
{
    struct {
        const char *var, *want;
    } cases[] = {
        {"DSR1_UPLOAD_THREADS=abc", "DSR1_UPLOAD_THREADS=\"abc\" is not an integer in [1, 1024]"},
        {"DSR1_UPLOAD_THREADS=0", "not an integer in [1, 1024]"},
        {"DSR1_HASH_THREADS=4x", "DSR1_HASH_THREADS=\"4x\""},
        {"DSR1_UPLOAD=mmap", "is not one of copy|pread|register"},
        {"DSR1_PDL=", "DSR1_PDL=\"\" is not one of 0|1"},
        {"DSR1_GEMV_KS=3", "is not one of 0|1|2|4|8"},
        {"DSR1_MOE_KS=2,3", "is not two numbers A,B"},
        {"DSR1_MOE_KS=2", "is not two numbers A,B"},
        {"DSR1_MOE_KS=,2", "is not two numbers A,B"},
        {"DSR1_ABS_MMA_MIN=-1", "not an integer in [0,"},
        {"DSR1_MLA_SPLITS=65", "not an integer in [0, 64]"},
        {"DSR1_CUDA_GRAPHS=on", "DSR1_CUDA_GRAPHS=\"on\" is not one of 0|1"},
        {"DSR1_MLA_PREFILL_MIN=-5", "DSR1_MLA_PREFILL_MIN=\"-5\" is not an integer in [0,"},
        {"DSR1_MOE_GEMM_MIN=lots", "DSR1_MOE_GEMM_MIN=\"lots\" is not an integer in [0,"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *env[] = {"DSR1_PDL=1", (char *)cases[i].var, NULL};
        char *w = NULL;
        dsr1_err err;
        CHECK_EQ_INT(check_env(env, &w, &err), DSR1_E_USAGE);
        CHECK(strstr(err.msg, cases[i].want) != NULL);
        CHECK(strstr(err.msg, "unset it for the default") != NULL);
        free(w);
    }
}

TEST(envcheck_unknown_names_warn_only)
{
    char *env[] = {"DSR1_UPLOAD_THRADS=4", "DSR1_FOO", "XDSR1_BAR=1", "DSR1_UPLOAD=copy", NULL};
    char *w = NULL;
    dsr1_err err;
    CHECK_EQ_INT(check_env(env, &w, &err), 0);
    CHECK(strstr(w, "prog: warning: environment DSR1_UPLOAD_THRADS is not a switch") != NULL);
    CHECK(strstr(w, "environment DSR1_FOO is not a switch") != NULL);
    CHECK(strstr(w, "XDSR1_BAR") == NULL);
    free(w);
    CHECK_EQ_INT(rt_env_check(NULL, "prog", NULL, &err), 0);
}
