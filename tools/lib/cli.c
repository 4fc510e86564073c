/* cli: parsing, byte formatting, progress and signal cleanup for tool mains (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

const char *cli_strerror(int rc)
{
    switch (rc) {
    case CLI_OK: return "ok";
    case CLI_EINVAL: return "not a valid value";
    case CLI_ERANGE: return "out of range";
    case CLI_ENOMEM: return "out of memory";
    default: return "unknown error";
    }
}

/* ---- numbers ---- */

/* Parses leading decimal digits at *s into *v; returns digits consumed, or -1 on overflow. */
static int digits_u64(const char **s, uint64_t *v)
{
    int n = 0;
    uint64_t x = 0;
    while (**s >= '0' && **s <= '9') {
        unsigned d = (unsigned)(**s - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
        (*s)++;
        n++;
    }
    *v = x;
    return n;
}

int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v;
    if (!s)
        return CLI_EINVAL;
    int n = digits_u64(&s, &v);
    if (n == 0)
        return CLI_EINVAL;
    if (n < 0) {
        while (*s >= '0' && *s <= '9')
            s++;
        return *s ? CLI_EINVAL : CLI_ERANGE;
    }
    if (*s)
        return CLI_EINVAL;
    if (v < min || v > max)
        return CLI_ERANGE;
    *out = v;
    return CLI_OK;
}

static const struct {
    const char *name;
    uint64_t mult;
} size_units[] = {
    {"", 1},
    {"b", 1},
    {"k", 1000ULL},
    {"kb", 1000ULL},
    {"m", 1000000ULL},
    {"mb", 1000000ULL},
    {"g", 1000000000ULL},
    {"gb", 1000000000ULL},
    {"t", 1000000000000ULL},
    {"tb", 1000000000000ULL},
    {"kib", 1ULL << 10},
    {"mib", 1ULL << 20},
    {"gib", 1ULL << 30},
    {"tib", 1ULL << 40},
};

int cli_parse_size(const char *s, uint64_t *out)
{
    uint64_t ip, frac = 0, fscale = 1;
    if (!s)
        return CLI_EINVAL;
    const char *p = s;
    int n = digits_u64(&p, &ip);
    if (n == 0)
        return CLI_EINVAL;
    if (n < 0)
        return CLI_ERANGE;
    int has_frac = 0;
    if (*p == '.') {
        p++;
        int k = 0;
        while (*p >= '0' && *p <= '9') {
            if (++k > 6)
                return CLI_EINVAL;
            frac = frac * 10 + (uint64_t)(*p++ - '0');
            fscale *= 10;
        }
        if (k == 0)
            return CLI_EINVAL;
        has_frac = 1;
    }
    while (*p == ' ')
        p++;
    char unit[4];
    size_t ul = strlen(p);
    if (ul >= sizeof unit)
        return CLI_EINVAL;
    for (size_t i = 0; i <= ul; i++)
        unit[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] - 'A' + 'a' : p[i]);
    if (ul == 0 && p > s && p[-1] == ' ')
        return CLI_EINVAL; /* trailing spaces without a unit */
    uint64_t mult = 0;
    for (size_t i = 0; i < sizeof size_units / sizeof size_units[0]; i++)
        if (strcmp(unit, size_units[i].name) == 0)
            mult = size_units[i].mult;
    if (mult == 0)
        return CLI_EINVAL;
    if (has_frac && mult == 1)
        return CLI_EINVAL; /* fractional bytes */
    if (ip > UINT64_MAX / mult)
        return CLI_ERANGE;
    uint64_t v = ip * mult, f = frac * mult / fscale; /* frac < 10^6, mult <= 2^40: no overflow */
    if (v > UINT64_MAX - f)
        return CLI_ERANGE;
    *out = v + f;
    return CLI_OK;
}

const char *cli_format_bytes(uint64_t n, int binary, char *buf, size_t len)
{
    static const char *si[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
    static const char *iec[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    const char **units = binary ? iec : si;
    double base = binary ? 1024.0 : 1000.0;
    if ((double)n < base) {
        snprintf(buf, len, "%llu B", (unsigned long long)n);
        return buf;
    }
    double v = (double)n;
    int k = 0;
    while (v >= base && k < 6) {
        v /= base;
        k++;
    }
    /* 999.96 kB would print as "1000.0 kB": move to the next unit instead */
    if (k < 6 && v * 10 + 0.5 >= base * 10) {
        v /= base;
        k++;
    }
    snprintf(buf, len, "%.1f %s", v, units[k]);
    return buf;
}

int cli_parse_kv_list(const char *s, cli_kv_fn fn, void *ud)
{
    if (!s)
        return CLI_EINVAL;
    if (!*s)
        return CLI_OK;
    char *copy = strdup(s);
    if (!copy)
        return CLI_ENOMEM;
    int rc = CLI_OK;
    char *item = copy;
    for (;;) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = 0;
        char *eq = strchr(item, '=');
        if (!eq || eq == item || !eq[1]) {
            rc = CLI_EINVAL;
            break;
        }
        *eq = 0;
        rc = fn(item, eq + 1, ud);
        if (rc || !comma)
            break;
        item = comma + 1;
    }
    free(copy);
    return rc;
}

/* ---- progress ---- */

#define BAR_PERIOD 0.25
#define PLAIN_PERIOD 5.0
#define ITEM_MAX 256

struct cli_progress {
    _Atomic uint64_t done;
    _Atomic uint64_t total;
    cli_progress_mode mode; /* BAR, PLAIN or QUIET after start */
    double period;
    struct timespec t0;
    char label[64];
    pthread_mutex_t mu; /* guards item, stop and drawn */
    pthread_cond_t cv;
    char item[ITEM_MAX];
    int stop, drawn, have_thread;
    pthread_t th;
};

static double elapsed(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static void write_all(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* stderr gone: progress is best-effort */
        s += w;
        n -= (size_t)w;
    }
}

static void fmt_rate(double bps, char *buf, size_t len)
{
    char b[CLI_BYTES_LEN];
    snprintf(buf, len, "%s/s", cli_format_bytes((uint64_t)bps, 0, b, sizeof b));
}

static void fmt_eta(double s, char *buf, size_t len)
{
    if (!(s >= 0) || s > 99 * 3600.0) {
        snprintf(buf, len, "?");
        return;
    }
    unsigned long t = (unsigned long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, len, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, len, "%lu:%02lu", t / 60, t % 60);
}

/* Draws one update; caller holds p->mu. */
static void render(cli_progress *p)
{
    uint64_t done = atomic_load(&p->done), total = atomic_load(&p->total);
    double t = elapsed(&p->t0), rate = t > 0 ? (double)done / t : 0;
    char db[CLI_BYTES_LEN], tb[CLI_BYTES_LEN], rb[32], eb[32], pct[16] = "";
    cli_format_bytes(done, 0, db, sizeof db);
    cli_format_bytes(total, 0, tb, sizeof tb);
    fmt_rate(rate, rb, sizeof rb);
    double frac = total ? (double)done / (double)total : 0;
    if (frac > 1)
        frac = 1;
    if (total)
        snprintf(pct, sizeof pct, "%d%%", (int)(frac * 100));
    if (total && rate > 0)
        fmt_eta((double)(total > done ? total - done : 0) / rate, eb, sizeof eb);
    else
        snprintf(eb, sizeof eb, "?");
    char line[1024];
    int n;
    if (p->mode == CLI_PROGRESS_PLAIN) {
        if (total)
            n = snprintf(line, sizeof line, "%s: %s of %s (%s), %s, ETA %s%s%s\n", p->label, db, tb,
                         pct, rb, eb, p->item[0] ? ", " : "", p->item);
        else
            n = snprintf(line, sizeof line, "%s: %s, %s%s%s\n", p->label, db, rb,
                         p->item[0] ? ", " : "", p->item);
    } else {
        struct winsize ws;
        int width = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20 ? ws.ws_col : 80;
        char bar[24] = "";
        if (total) {
            int fill = (int)(frac * 20);
            for (int i = 0; i < 20; i++)
                bar[i] = i < fill ? '#' : '.';
            bar[20] = 0;
        }
        if (total)
            n = snprintf(line, sizeof line, "\r%s [%s] %s %s/%s %s ETA %s ", p->label, bar, pct, db,
                         tb, rb, eb);
        else
            n = snprintf(line, sizeof line, "\r%s %s %s ", p->label, db, rb);
        if (n < 0 || n >= (int)sizeof line)
            n = (int)sizeof line - 1;
        if (n > width)
            n = width; /* a wrapped line could not be redrawn in place */
        /* the item gets what is left of the terminal width (the \r takes no column) */
        int room = width - 1 - (n - 1);
        if (room > 0 && p->item[0]) {
            int il = (int)strlen(p->item);
            int take = il < room ? il : room;
            int start = il - take; /* keep the tail: file names differ at the end */
            if (n + take < (int)sizeof line) {
                memcpy(line + n, p->item + start, (size_t)take);
                n += take;
            }
        }
        if (n + 3 < (int)sizeof line) {
            memcpy(line + n, "\033[K", 3); /* erase what a longer previous line left */
            n += 3;
        }
        p->drawn = 1;
    }
    if (n < 0)
        return;
    if (n >= (int)sizeof line)
        n = (int)sizeof line - 1;
    write_all(line, (size_t)n);
}

static void *progress_thread(void *arg)
{
    cli_progress *p = arg;
    pthread_mutex_lock(&p->mu);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!p->stop) {
        long ns = (long)(p->period * 1e9);
        next.tv_sec += ns / 1000000000L;
        next.tv_nsec += ns % 1000000000L;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_sec++;
            next.tv_nsec -= 1000000000L;
        }
        while (!p->stop && pthread_cond_timedwait(&p->cv, &p->mu, &next) != ETIMEDOUT)
            ;
        if (p->stop)
            break;
        render(p);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static double plain_period(void)
{
    const char *e = getenv("DSR1_PROGRESS_INTERVAL");
    if (e && *e) {
        char *end;
        double v = strtod(e, &end);
        if (*end == 0 && v > 0 && v < 86400)
            return v;
    }
    return PLAIN_PERIOD;
}

cli_progress *cli_progress_start(uint64_t total_bytes, const char *label, cli_progress_mode mode)
{
    cli_progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    atomic_init(&p->done, 0);
    atomic_init(&p->total, total_bytes);
    snprintf(p->label, sizeof p->label, "%s", label ? label : "");
    clock_gettime(CLOCK_MONOTONIC, &p->t0);
    if (mode == CLI_PROGRESS_AUTO)
        mode = isatty(STDERR_FILENO) ? CLI_PROGRESS_BAR : CLI_PROGRESS_PLAIN;
    p->mode = mode;
    p->period = mode == CLI_PROGRESS_BAR ? BAR_PERIOD : plain_period();
    if (mode == CLI_PROGRESS_QUIET)
        return p;
    pthread_condattr_t ca;
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* Without a thread there are no periodic updates, but the finish line still comes. */
    p->have_thread = pthread_create(&p->th, NULL, progress_thread, p) == 0;
    return p;
}

void cli_progress_add(cli_progress *p, uint64_t bytes)
{
    if (p)
        atomic_fetch_add_explicit(&p->done, bytes, memory_order_relaxed);
}

void cli_progress_set_total(cli_progress *p, uint64_t total_bytes)
{
    if (p)
        atomic_store(&p->total, total_bytes);
}

uint64_t cli_progress_done(const cli_progress *p)
{
    return p ? atomic_load(&p->done) : 0;
}

void cli_progress_set_item(cli_progress *p, const char *name)
{
    if (!p || p->mode == CLI_PROGRESS_QUIET)
        return;
    pthread_mutex_lock(&p->mu);
    snprintf(p->item, sizeof p->item, "%s", name ? name : "");
    pthread_mutex_unlock(&p->mu);
}

/* Stops the thread; afterwards nothing else writes. Returns whether a bar was drawn. */
static int progress_stop(cli_progress *p)
{
    if (p->mode == CLI_PROGRESS_QUIET)
        return 0;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->have_thread)
        pthread_join(p->th, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    return p->drawn;
}

void cli_progress_finish(cli_progress *p)
{
    if (!p)
        return;
    int drawn = progress_stop(p);
    if (p->mode != CLI_PROGRESS_QUIET) {
        uint64_t done = atomic_load(&p->done);
        double t = elapsed(&p->t0);
        char db[CLI_BYTES_LEN], rb[32], line[512];
        cli_format_bytes(done, 0, db, sizeof db);
        fmt_rate(t > 0 ? (double)done / t : 0, rb, sizeof rb);
        int n = snprintf(line, sizeof line, "%s%s: done, %s in %.1f s (%s)\n",
                         drawn ? "\r\033[K" : "", p->label, db, t, rb);
        if (n > 0)
            write_all(line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
    }
    free(p);
}

void cli_progress_abort(cli_progress *p)
{
    if (!p)
        return;
    if (progress_stop(p))
        write_all("\r\033[K", 4);
    free(p);
}

/* ---- temp-file cleanup on signals ---- */

#define CLEAN_PATH_MAX 4096
enum { SLOT_FREE, SLOT_WRITING, SLOT_LIVE };

static struct {
    _Atomic int state;
    char path[CLEAN_PATH_MAX];
} clean_slots[CLI_CLEANUP_MAX];
static pthread_mutex_t clean_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned clean_next; /* round-robin start, so a freed slot is not reused at once */
static const int clean_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void cleanup_handler(int sig)
{
    int saved = errno;
    for (int i = 0; i < CLI_CLEANUP_MAX; i++)
        if (atomic_load(&clean_slots[i].state) == SLOT_LIVE &&
            unlink(clean_slots[i].path) != 0 && errno == EISDIR)
            rmdir(clean_slots[i].path);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    errno = saved; /* only reached if the default action did not end the process */
}

void cli_signals_install(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cleanup_handler;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof clean_signals / sizeof clean_signals[0]; i++)
        sigaddset(&sa.sa_mask, clean_signals[i]); /* one cleanup at a time */
    for (size_t i = 0; i < sizeof clean_signals / sizeof clean_signals[0]; i++) {
        if (sigaction(clean_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
            continue; /* e.g. nohup or a background job: keep ignoring */
        sigaction(clean_signals[i], &sa, NULL);
    }
}

/* Absolute form of path into out; CLI_ERANGE if it does not fit. */
static int abs_path(const char *path, char out[CLEAN_PATH_MAX])
{
    size_t n = strlen(path);
    if (path[0] == '/') {
        if (n >= CLEAN_PATH_MAX)
            return CLI_ERANGE;
        memcpy(out, path, n + 1);
        return CLI_OK;
    }
    if (!getcwd(out, CLEAN_PATH_MAX))
        return CLI_ERANGE;
    size_t c = strlen(out);
    if (c + 1 + n >= CLEAN_PATH_MAX)
        return CLI_ERANGE;
    out[c] = '/';
    memcpy(out + c + 1, path, n + 1);
    return CLI_OK;
}

int cli_cleanup_register(const char *path)
{
    char full[CLEAN_PATH_MAX];
    if (!path || !*path)
        return CLI_EINVAL;
    int rc = abs_path(path, full);
    if (rc)
        return rc;
    rc = CLI_ERANGE;
    pthread_mutex_lock(&clean_mu);
    for (unsigned k = 0; k < CLI_CLEANUP_MAX; k++) {
        unsigned i = (clean_next + k) % CLI_CLEANUP_MAX;
        if (atomic_load(&clean_slots[i].state) != SLOT_FREE)
            continue;
        atomic_store(&clean_slots[i].state, SLOT_WRITING);
        memcpy(clean_slots[i].path, full, strlen(full) + 1);
        atomic_store(&clean_slots[i].state, SLOT_LIVE);
        clean_next = i + 1;
        rc = CLI_OK;
        break;
    }
    pthread_mutex_unlock(&clean_mu);
    return rc;
}

void cli_cleanup_unregister(const char *path)
{
    char full[CLEAN_PATH_MAX];
    if (!path || !*path || abs_path(path, full) != CLI_OK)
        return;
    pthread_mutex_lock(&clean_mu);
    for (int i = 0; i < CLI_CLEANUP_MAX; i++)
        if (atomic_load(&clean_slots[i].state) == SLOT_LIVE &&
            strcmp(clean_slots[i].path, full) == 0) {
            atomic_store(&clean_slots[i].state, SLOT_FREE);
            break;
        }
    pthread_mutex_unlock(&clean_mu);
}
