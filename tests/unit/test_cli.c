/* cli: strict parsers, byte formatting, plain/quiet/bar progress output, and temp-file
 * removal when a tool dies by SIGINT/SIGTERM. */
#include "test.h"
#include "cli.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TEST(cli_parse_u64_strict)
{
    uint64_t v = 7;
    CHECK_EQ_INT(cli_parse_u64("0", 0, 10, &v), CLI_OK);
    CHECK_EQ_U64(v, 0);
    CHECK_EQ_INT(cli_parse_u64("18446744073709551615", 0, UINT64_MAX, &v), CLI_OK);
    CHECK_EQ_U64(v, UINT64_MAX);
    CHECK_EQ_INT(cli_parse_u64("18446744073709551616", 0, UINT64_MAX, &v), CLI_ERANGE);
    CHECK_EQ_INT(cli_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v), CLI_ERANGE);
    CHECK_EQ_INT(cli_parse_u64("8", 1, 8, &v), CLI_OK);
    CHECK_EQ_U64(v, 8);
    v = 5;
    CHECK_EQ_INT(cli_parse_u64("9", 1, 8, &v), CLI_ERANGE);
    CHECK_EQ_INT(cli_parse_u64("0", 1, 8, &v), CLI_ERANGE);
    CHECK_EQ_U64(v, 5); /* untouched on failure */
    static const char *bad[] = {"", "-1", "+1", " 1", "1 ", "1x", "0x10", "1.0", "1e3", "abc", "1,000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(cli_parse_u64(bad[i], 0, UINT64_MAX, &v) == CLI_EINVAL, "accepted \"%s\"", bad[i]);
    CHECK_EQ_INT(cli_parse_u64(NULL, 0, 1, &v), CLI_EINVAL);
    CHECK_EQ_STR(cli_strerror(CLI_ERANGE), "out of range");
}

TEST(cli_parse_size_suffixes)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        {"0", 0}, {"123", 123}, {"5B", 5}, {"1K", 1000}, {"1k", 1000}, {"2KB", 2000},
        {"3kb", 3000}, {"1M", 1000000}, {"4MB", 4000000}, {"5G", 5000000000ULL},
        {"5gb", 5000000000ULL}, {"2T", 2000000000000ULL}, {"1TB", 1000000000000ULL},
        {"1KiB", 1024}, {"1kib", 1024}, {"3MiB", 3ULL << 20}, {"80GiB", 80ULL << 30},
        {"80 GiB", 80ULL << 30}, {"2TiB", 2ULL << 40}, {"1.5GiB", 1610612736ULL},
        {"1.5G", 1500000000ULL}, {"0.5K", 500}, {"0.001KiB", 1}, {"4.3GB", 4300000000ULL},
        {"16777215TiB", 16777215ULL << 40}, {"18446744073709551615", UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t v = 0;
        int rc = cli_parse_size(ok[i].s, &v);
        CHECK_MSG(rc == CLI_OK && v == ok[i].v, "\"%s\": rc %d value %llu, want %llu", ok[i].s, rc,
                  (unsigned long long)v, (unsigned long long)ok[i].v);
    }
    static const char *inval[] = {"", "G", "-1G", "+1G", "1X", "1GiBs", "1 G ", "1..5G", "1.G",
                                  ".5G", "1.5", "1.1234567G", "1GIB2", "1 ", " 1G", "1gi"};
    for (size_t i = 0; i < sizeof inval / sizeof inval[0]; i++) {
        uint64_t v;
        CHECK_MSG(cli_parse_size(inval[i], &v) == CLI_EINVAL, "accepted \"%s\"", inval[i]);
    }
    uint64_t v;
    CHECK_EQ_INT(cli_parse_size("16777216.1TiB", &v), CLI_ERANGE);
    CHECK_EQ_INT(cli_parse_size("16777217TiB", &v), CLI_ERANGE);
    CHECK_EQ_INT(cli_parse_size("18446744073709551616", &v), CLI_ERANGE);
    CHECK_EQ_INT(cli_parse_size("18446744073709552K", &v), CLI_ERANGE);
}

TEST(cli_format_bytes_units)
{
    char b[CLI_BYTES_LEN];
    CHECK_EQ_STR(cli_format_bytes(0, 0, b, sizeof b), "0 B");
    CHECK_EQ_STR(cli_format_bytes(999, 0, b, sizeof b), "999 B");
    CHECK_EQ_STR(cli_format_bytes(1000, 0, b, sizeof b), "1.0 kB");
    CHECK_EQ_STR(cli_format_bytes(1023, 1, b, sizeof b), "1023 B");
    CHECK_EQ_STR(cli_format_bytes(1024, 1, b, sizeof b), "1.0 KiB");
    CHECK_EQ_STR(cli_format_bytes(86100000000ULL, 0, b, sizeof b), "86.1 GB");
    CHECK_EQ_STR(cli_format_bytes(80ULL << 30, 1, b, sizeof b), "80.0 GiB");
    CHECK_EQ_STR(cli_format_bytes(688574839360ULL, 0, b, sizeof b), "688.6 GB");
    CHECK_EQ_STR(cli_format_bytes(688574839360ULL, 1, b, sizeof b), "641.3 GiB");
    CHECK_EQ_STR(cli_format_bytes(999960, 0, b, sizeof b), "1.0 MB");    /* not "1000.0 kB" */
    CHECK_EQ_STR(cli_format_bytes(1048575, 1, b, sizeof b), "1.0 MiB");  /* not "1024.0 KiB" */
    CHECK_EQ_STR(cli_format_bytes(UINT64_MAX, 0, b, sizeof b), "18.4 EB");
    CHECK_EQ_STR(cli_format_bytes(UINT64_MAX, 1, b, sizeof b), "16.0 EiB");
}

struct kv_acc {
    char keys[8][32], vals[8][32];
    int n, stop_at;
};

static int kv_cb(const char *k, const char *v, void *ud)
{
    struct kv_acc *a = ud;
    if (a->n == a->stop_at)
        return 42;
    if (a->n < 8) {
        snprintf(a->keys[a->n], 32, "%s", k);
        snprintf(a->vals[a->n], 32, "%s", v);
    }
    a->n++;
    return 0;
}

TEST(cli_parse_kv_list)
{
    struct kv_acc a = {.stop_at = -1};
    CHECK_EQ_INT(cli_parse_kv_list("tp=8,pp=2,dtype=fp8", kv_cb, &a), CLI_OK);
    CHECK_EQ_INT(a.n, 3);
    CHECK_EQ_STR(a.keys[0], "tp");
    CHECK_EQ_STR(a.vals[0], "8");
    CHECK_EQ_STR(a.keys[1], "pp");
    CHECK_EQ_STR(a.vals[1], "2");
    CHECK_EQ_STR(a.keys[2], "dtype");
    CHECK_EQ_STR(a.vals[2], "fp8");
    struct kv_acc e = {.stop_at = -1};
    CHECK_EQ_INT(cli_parse_kv_list("", kv_cb, &e), CLI_OK);
    CHECK_EQ_INT(e.n, 0);
    CHECK_EQ_INT(cli_parse_kv_list("a=b=c", kv_cb, &e), CLI_OK); /* value keeps later '=' */
    CHECK_EQ_STR(e.vals[0], "b=c");
    static const char *bad[] = {"tp", "tp=", "=8", "tp=8,", ",tp=8", "tp=8,,pp=2", "tp=8,pp"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct kv_acc b = {.stop_at = -1};
        CHECK_MSG(cli_parse_kv_list(bad[i], kv_cb, &b) == CLI_EINVAL, "accepted \"%s\"", bad[i]);
    }
    struct kv_acc s = {.stop_at = 1};
    CHECK_EQ_INT(cli_parse_kv_list("a=1,b=2,c=3", kv_cb, &s), 42);
    CHECK_EQ_INT(s.n, 1);
}

/* ---- progress: stderr redirected into a file ---- */

static int stderr_to(const char *path)
{
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (saved < 0 || fd < 0) {
        CHECK_MSG(0, "cannot redirect stderr to %s", path);
        return -1;
    }
    dup2(fd, STDERR_FILENO);
    close(fd);
    return saved;
}

static void stderr_restore(int saved)
{
    if (saved < 0)
        return;
    dup2(saved, STDERR_FILENO);
    close(saved);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    char *buf = malloc(1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void pause_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* Waits (up to 20 s, for a slow loaded machine) until the file contains needle. */
static int wait_for(const char *path, const char *needle)
{
    for (int i = 0; i < 1000; i++) {
        char *s = slurp(path);
        int found = strstr(s, needle) != NULL;
        free(s);
        if (found)
            return 1;
        pause_ms(20);
    }
    return 0;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

TEST(cli_progress_plain_lines)
{
    const char *log = test_path("stderr.txt");
    setenv("DSR1_PROGRESS_INTERVAL", "0.02", 1);
    int saved = stderr_to(log);
    /* AUTO on a file must choose the plain lines */
    cli_progress *p = cli_progress_start(2000000000ULL, "shard", CLI_PROGRESS_AUTO);
    cli_progress_add(p, 500000000ULL);
    int seen1 = wait_for(log, "shard: 500.0 MB of 2.0 GB (25%), ");
    cli_progress_set_item(p, "model-00001-of-00163.safetensors");
    cli_progress_add(p, 500000000ULL);
    int seen2 = wait_for(log, "shard: 1.0 GB of 2.0 GB (50%), ");
    int seen3 = wait_for(log, ", model-00001-of-00163.safetensors\n");
    cli_progress_finish(p);
    off_t after = file_size(log);
    pause_ms(200); /* ten periods: nothing may come after the finish line */
    off_t later = file_size(log);
    stderr_restore(saved);
    unsetenv("DSR1_PROGRESS_INTERVAL");
    char *out = slurp(log);
    CHECK_MSG(seen1 && seen2 && seen3, "periodic lines missing; got:\n%s", out);
    CHECK_CONTAINS(out, "ETA ");
    CHECK_CONTAINS(out, "shard: done, 1.0 GB in ");
    CHECK(strchr(out, '\r') == NULL && strstr(out, "\033[") == NULL);
    size_t len = strlen(out);
    CHECK(len > 0 && out[len - 1] == '\n');
    const char *last = strstr(out, "shard: done");
    CHECK(last && strchr(last, '\n') == out + len - 1); /* the done line is the last */
    CHECK_EQ_INT(after, later);
    free(out);
}

TEST(cli_progress_unknown_total_and_quiet)
{
    const char *log = test_path("stderr.txt");
    setenv("DSR1_PROGRESS_INTERVAL", "0.02", 1);
    int saved = stderr_to(log);
    cli_progress *p = cli_progress_start(0, "hash", CLI_PROGRESS_PLAIN);
    cli_progress_add(p, 3000);
    int seen = wait_for(log, "hash: 3.0 kB, ");
    CHECK_EQ_U64(cli_progress_done(p), 3000);
    cli_progress_abort(p);
    cli_progress *q = cli_progress_start(100, "quiet", CLI_PROGRESS_QUIET);
    cli_progress_add(q, 50);
    cli_progress_set_item(q, "x");
    pause_ms(100);
    cli_progress_finish(q);
    cli_progress_add(NULL, 1);
    cli_progress_finish(NULL);
    stderr_restore(saved);
    unsetenv("DSR1_PROGRESS_INTERVAL");
    char *out = slurp(log);
    CHECK_MSG(seen, "no periodic line; got:\n%s", out);
    CHECK(strstr(out, "ETA") == NULL && strstr(out, "%") == NULL); /* total unknown */
    CHECK(strstr(out, "done") == NULL);                             /* abort: no done line */
    CHECK(strstr(out, "quiet") == NULL);
    free(out);
}

TEST(cli_progress_bar_render)
{
    const char *log = test_path("stderr.txt");
    int saved = stderr_to(log);
    cli_progress *p = cli_progress_start(1000, "verify", CLI_PROGRESS_BAR);
    cli_progress_add(p, 250);
    cli_progress_set_item(p, "x.st");
    int seen = wait_for(log, "\rverify [#####...............] 25% 250 B/1.0 kB ");
    int item = wait_for(log, " x.st\033[K");
    /* a long item is cut (keeping its tail) so the line fits 80 columns (no tty here) */
    cli_progress_set_item(p, "layers/model-00001-of-00163-with-a-much-longer-name.safetensors");
    int cut = wait_for(log, "name.safetensors\033[K");
    cli_progress_finish(p);
    stderr_restore(saved);
    char *out = slurp(log);
    CHECK_MSG(seen && item && cut, "bar not drawn as expected; got:\n%s", out);
    CHECK_CONTAINS(out, "\r\033[Kverify: done, 250 B in "); /* bar cleared before the done line */
    for (char *r = strchr(out, '\r'); r; r = strchr(r + 1, '\r')) {
        char *end = strstr(r, "\033[K");
        size_t vis = end ? (size_t)(end - r - 1) : 0;
        CHECK_MSG(end && vis <= 79, "bar segment of %zu columns", vis);
    }
    CHECK(strstr(out, "layers/") == NULL);
    free(out);
}

/* ---- temp-file cleanup on signals ---- */

static void child_and_wait(const char *keep, const char *gone1, const char *gone2, int sig,
                           int *status)
{
    pid_t pid = fork();
    if (pid == 0) {
        cli_signals_install();
        int ok = test_write_file(gone1, "x", 1) == 0 && test_write_file(keep, "k", 1) == 0 &&
                 mkdir(gone2, 0700) == 0 && cli_cleanup_register(gone1) == CLI_OK &&
                 cli_cleanup_register(keep) == CLI_OK && cli_cleanup_register(gone2) == CLI_OK;
        cli_cleanup_unregister(keep);
        if (!ok)
            _exit(3);
        raise(sig);
        _exit(4); /* not reached if the signal killed us */
    }
    *status = -1;
    if (pid > 0)
        waitpid(pid, status, 0);
}

TEST(cli_cleanup_on_sigint_and_sigterm)
{
    static const int sigs[] = {SIGINT, SIGTERM};
    for (size_t i = 0; i < 2; i++) {
        char keep[1024], gone1[1024], gone2[1024];
        snprintf(keep, sizeof keep, "%s", test_path("kept.tmp"));
        snprintf(gone1, sizeof gone1, "%s", test_path("out.safetensors.tmp"));
        snprintf(gone2, sizeof gone2, "%s", test_path("tmpdir"));
        int st;
        child_and_wait(keep, gone1, gone2, sigs[i], &st);
        CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == sigs[i],
                  "child status 0x%x: want death by signal %d", st, sigs[i]);
        CHECK_MSG(access(gone1, F_OK) != 0, "%s survived signal %d", gone1, sigs[i]);
        CHECK_MSG(access(gone2, F_OK) != 0, "%s survived signal %d", gone2, sigs[i]);
        CHECK_MSG(access(keep, F_OK) == 0, "unregistered %s was removed", keep);
        unlink(keep);
    }
}

TEST(cli_cleanup_register_limits)
{
    char longp[5000];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = 0;
    CHECK_EQ_INT(cli_cleanup_register(longp), CLI_ERANGE);
    CHECK_EQ_INT(cli_cleanup_register(""), CLI_EINVAL);
    /* fill the table, then one more fails; unregistering frees a slot again */
    char p[64];
    int i;
    for (i = 0; i < CLI_CLEANUP_MAX; i++) {
        snprintf(p, sizeof p, "/nonexistent-dsr1/slot%d", i);
        if (cli_cleanup_register(p) != CLI_OK)
            break;
    }
    CHECK_EQ_INT(i, CLI_CLEANUP_MAX);
    CHECK_EQ_INT(cli_cleanup_register("/nonexistent-dsr1/extra"), CLI_ERANGE);
    cli_cleanup_unregister("/nonexistent-dsr1/slot7");
    CHECK_EQ_INT(cli_cleanup_register("/nonexistent-dsr1/extra"), CLI_OK);
    cli_cleanup_unregister("/nonexistent-dsr1/extra");
    for (i = 0; i < CLI_CLEANUP_MAX; i++) {
        snprintf(p, sizeof p, "/nonexistent-dsr1/slot%d", i);
        cli_cleanup_unregister(p);
    }
}
