/* watchdog (see watchdog.h): one thread per armed deadline, a condition variable on the
 * monotonic clock so wall-clock jumps neither fire it early nor hold it back. */
#include "watchdog.h"

#include <errno.h> /* program_invocation_short_name (_GNU_SOURCE) */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct rt_watchdog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    struct timespec deadline;
    int done, code;
    char msg[512];
};

/* rt_watchdog_remove_on_fire's table: a slot's path is complete before its flag is
 * set (release), and the firing thread reads only flagged slots (acquire). */
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
static char wd_files[RT_WATCHDOG_FILES][PATH_MAX];
static atomic_int wd_used[RT_WATCHDOG_FILES];

int rt_watchdog_remove_on_fire(const char *path)
{
    if (!path || strlen(path) >= PATH_MAX)
        return 0;
    for (int i = 0; i < RT_WATCHDOG_FILES; i++) {
        int want = 0;
        /* claim (2: being written), copy, then publish (1) */
        if (atomic_compare_exchange_strong(&wd_used[i], &want, 2)) {
            strcpy(wd_files[i], path);
            atomic_store_explicit(&wd_used[i], 1, memory_order_release);
            return i + 1;
        }
    }
    return 0;
}

void rt_watchdog_keep_on_fire(int handle)
{
    if (handle > 0 && handle <= RT_WATCHDOG_FILES)
        atomic_store_explicit(&wd_used[handle - 1], 0, memory_order_release);
}

static void remove_registered(void)
{
    for (int i = 0; i < RT_WATCHDOG_FILES; i++)
        if (atomic_load_explicit(&wd_used[i], memory_order_acquire) == 1)
            unlink(wd_files[i]);
}

static int past(const struct timespec *d)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > d->tv_sec || (now.tv_sec == d->tv_sec && now.tv_nsec >= d->tv_nsec);
}

static void *wd_main(void *p)
{
    rt_watchdog *w = p;
    pthread_mutex_lock(&w->mu);
    /* a re-arm moves the deadline and signals: wait again for the new one */
    while (!w->done && !past(&w->deadline))
        pthread_cond_timedwait(&w->cv, &w->mu, &w->deadline);
    if (!w->done) {
        char line[640];
        int n = snprintf(line, sizeof line, "%s: %s\n", program_invocation_short_name, w->msg);
        if (n > (int)sizeof line - 1)
            n = (int)sizeof line - 1;
        ssize_t wr = write(2, line, (size_t)n); /* no stdio: the blocked thread may hold its lock */
        (void)wr;
        remove_registered();
        _exit(w->code);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void set_deadline(rt_watchdog *w, double seconds, const char *fmt, va_list ap)
{
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    if (seconds < 0)
        seconds = 0;
    clock_gettime(CLOCK_MONOTONIC, &w->deadline);
    time_t whole = (time_t)seconds;
    w->deadline.tv_sec += whole;
    w->deadline.tv_nsec += (long)((seconds - (double)whole) * 1e9);
    if (w->deadline.tv_nsec >= 1000000000L) {
        w->deadline.tv_sec++;
        w->deadline.tv_nsec -= 1000000000L;
    }
}

rt_watchdog *rt_watchdog_arm(double seconds, int exit_code, const char *fmt, ...)
{
    rt_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    set_deadline(w, seconds, fmt, ap);
    va_end(ap);
    w->code = exit_code;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->th, NULL, wd_main, w) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return NULL;
    }
    return w;
}

void rt_watchdog_rearm(rt_watchdog *w, double seconds, const char *fmt, ...)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    va_list ap;
    va_start(ap, fmt);
    set_deadline(w, seconds, fmt, ap);
    va_end(ap);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void rt_watchdog_disarm(rt_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
