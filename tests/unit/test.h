/* test: the unit-test runner's registration and check macros.
 *
 *   TEST(name) { CHECK_EQ_INT(a, b); ... }
 *
 * Each check prints both values on failure and marks the test failed; the test
 * keeps running so one run shows every broken check. The runner prints
 * "PASS name" / "FAIL name" and the summary line "N passed, M failed".
 */
#ifndef DSR1_TEST_H
#define DSR1_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn, const char *file);
void test_fail_at(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A fresh empty directory for the current test, removed after it passes. */
const char *test_tmpdir(void);
/* Path of a file inside test_tmpdir() (static buffer rotated over 8 slots). */
const char *test_path(const char *name);
/* Repo root (the runner's working directory) and build dir ($BUILD or "build"). */
const char *test_build_dir(void);
/* Deterministic pseudo-random numbers for numeric tests (seeded per test). */
uint64_t test_rand_u64(void);
float test_rand_normal(void);
/* Write a whole file; returns 0 on success. */
int test_write_file(const char *path, const void *data, size_t len);

#define TEST(name)                                                                 \
    static void test_##name(void);                                                 \
    __attribute__((constructor)) static void test_reg_##name(void)                 \
    {                                                                              \
        test_register(#name, test_##name, __FILE__);                               \
    }                                                                              \
    static void test_##name(void)

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond))                                                               \
            test_fail_at(__FILE__, __LINE__, "CHECK(%s) failed", #cond);           \
    } while (0)

#define CHECK_MSG(cond, ...)                                                       \
    do {                                                                           \
        if (!(cond))                                                               \
            test_fail_at(__FILE__, __LINE__, __VA_ARGS__);                         \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                         \
    do {                                                                           \
        long long _a = (long long)(a), _b = (long long)(b);                        \
        if (_a != _b)                                                              \
            test_fail_at(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, _a, _b); \
    } while (0)

#define CHECK_EQ_U64(a, b)                                                         \
    do {                                                                           \
        uint64_t _a = (uint64_t)(a), _b = (uint64_t)(b);                           \
        if (_a != _b)                                                              \
            test_fail_at(__FILE__, __LINE__, "%s == %s: %" PRIu64 " != %" PRIu64, #a, #b, _a, _b); \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                         \
    do {                                                                           \
        const char *_a = (a), *_b = (b);                                           \
        if (!_a || !_b || strcmp(_a, _b) != 0)                                     \
            test_fail_at(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b, \
                         _a ? _a : "(null)", _b ? _b : "(null)");                  \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                \
    do {                                                                           \
        const char *_h = (hay), *_n = (needle);                                    \
        if (!_h || !strstr(_h, _n))                                                \
            test_fail_at(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",     \
                         _h ? _h : "(null)", _n);                                  \
    } while (0)

/* |a - b| <= tol, NaN never passes unless both are NaN. */
#define CHECK_NEAR(a, b, tol)                                                      \
    do {                                                                           \
        double _a = (double)(a), _b = (double)(b), _t = (double)(tol);             \
        int _ok = (isnan(_a) && isnan(_b)) || fabs(_a - _b) <= _t;                 \
        if (!_ok)                                                                  \
            test_fail_at(__FILE__, __LINE__, "%s ~ %s: %.9g vs %.9g (tol %.3g)", #a, #b, _a, _b, _t); \
    } while (0)

/* Shared numeric compare: max|a-b| / max|b| <= rel_tol; NaN positions must match.
 * Returns the measured relative error. */
double test_rel_err(const float *a, const float *b, size_t n);
#define CHECK_ALLCLOSE_REL(a, b, n, rel_tol)                                       \
    do {                                                                           \
        double _e = test_rel_err((a), (b), (n));                                   \
        if (!(_e <= (rel_tol)))                                                    \
            test_fail_at(__FILE__, __LINE__, "%s vs %s: rel err %.3g > %.3g", #a, #b, _e, (double)(rel_tol)); \
    } while (0)

#endif
