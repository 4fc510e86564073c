/* The unit-test runner: runs every registered TEST (or those whose name contains
 * argv[1]) and ends with "N passed, M failed". */
#include "test.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TESTS 4096

static struct {
    const char *name, *file;
    test_fn fn;
} tests[MAX_TESTS];
static int n_tests;
static int cur_failed;
static char tmpdir[512];
static uint64_t rng_state;

void test_register(const char *name, test_fn fn, const char *file)
{
    if (n_tests >= MAX_TESTS) {
        fprintf(stderr, "too many tests\n");
        exit(3);
    }
    tests[n_tests].name = name;
    tests[n_tests].fn = fn;
    tests[n_tests].file = file;
    n_tests++;
}

void test_fail_at(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stdout, "  %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    cur_failed = 1;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

const char *test_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/dsr1-unit-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
            exit(3);
        }
    }
    return tmpdir;
}

const char *test_path(const char *name)
{
    static char slots[8][1024];
    static int k;
    char *p = slots[k++ & 7];
    snprintf(p, 1024, "%s/%s", test_tmpdir(), name);
    return p;
}

const char *test_build_dir(void)
{
    const char *b = getenv("BUILD");
    return b && *b ? b : "build";
}

uint64_t test_rand_u64(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

float test_rand_normal(void)
{
    double u1 = ((test_rand_u64() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (test_rand_u64() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

int test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

double test_rel_err(const float *a, const float *b, size_t n)
{
    double maxd = 0, maxr = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i]))
            return INFINITY;
        if (isnan(a[i]))
            continue;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxd)
            maxd = d;
        if (fabs((double)b[i]) > maxr)
            maxr = fabs((double)b[i]);
    }
    return maxr > 0 ? maxd / maxr : maxd;
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < n_tests; i++) {
        if (filter && !strstr(tests[i].name, filter))
            continue;
        cur_failed = 0;
        tmpdir[0] = 0;
        uint64_t h = 1469598103934665603ULL;
        for (const char *c = tests[i].name; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ULL;
        rng_state = h;
        tests[i].fn();
        if (tmpdir[0] && !cur_failed)
            nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        if (cur_failed) {
            printf("FAIL %s (%s; files kept in %s)\n", tests[i].name, tests[i].file,
                   tmpdir[0] ? tmpdir : "-");
            failed++;
        } else {
            printf("PASS %s\n", tests[i].name);
            passed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
