/* watchdog (see watchdog.h): one thread per armed deadline, a condition variable on the
 * monotonic clock so wall-clock jumps neither fire it early nor hold it back. */
#include "watchdog.h"

#include <errno.h> /* ETIMEDOUT; program_invocation_short_name (_GNU_SOURCE) */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static void *wd_main(void *p)
{
    rt_watchdog *w = p;
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    while (!w->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&w->cv, &w->mu, &w->deadline);
    if (!w->done) {
        char line[640];
        int n = snprintf(line, sizeof line, "%s: %s\n", program_invocation_short_name, w->msg);
        if (n > (int)sizeof line - 1)
            n = (int)sizeof line - 1;
        ssize_t wr = write(2, line, (size_t)n); /* async-signal-safe path; no stdio lock */
        (void)wr;
        _exit(w->code);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

rt_watchdog *rt_watchdog_arm(double seconds, int exit_code, const char *fmt, ...)
{
    rt_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->msg, sizeof w->msg, fmt, ap);
    va_end(ap);
    w->code = exit_code;
    if (seconds < 0)
        seconds = 0;
    clock_gettime(CLOCK_MONOTONIC, &w->deadline);
    time_t whole = (time_t)seconds;
    long ns = (long)((seconds - (double)whole) * 1e9);
    w->deadline.tv_sec += whole;
    w->deadline.tv_nsec += ns;
    if (w->deadline.tv_nsec >= 1000000000L) {
        w->deadline.tv_sec++;
        w->deadline.tv_nsec -= 1000000000L;
    }
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
