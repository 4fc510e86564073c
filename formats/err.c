#include "err.h"

#include <stdio.h>
#include <string.h>

int dsr1_err_vset(dsr1_err *e, int status, int code, int sys_errno, const char *fmt, va_list ap)
{
    if (!e)
        return status;
    e->status = status;
    e->code = code;
    e->sys_errno = sys_errno;
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    if (sys_errno) {
        size_t n = strlen(e->msg);
        snprintf(e->msg + n, sizeof e->msg - n, ": %s", strerror(sys_errno));
    }
    return status;
}

int dsr1_err_set(dsr1_err *e, int status, int code, int sys_errno, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dsr1_err_vset(e, status, code, sys_errno, fmt, ap);
    va_end(ap);
    return status;
}

void dsr1_err_prefix(dsr1_err *e, const char *fmt, ...)
{
    if (!e)
        return;
    char pre[512], old[DSR1_ERR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    size_t n = strlen(pre);
    if (n > sizeof e->msg - 3)
        n = sizeof e->msg - 3;
    memcpy(e->msg, pre, n);
    memcpy(e->msg + n, ": ", 2);
    size_t rest = sizeof e->msg - n - 3, m = strlen(old);
    if (m > rest)
        m = rest;
    memcpy(e->msg + n + 2, old, m);
    e->msg[n + 2 + m] = 0;
}

void dsr1_err_clear(dsr1_err *e)
{
    if (e)
        memset(e, 0, sizeof *e);
}

int dsr1_err_exit_code(const dsr1_err *e)
{
    switch (e ? e->status : DSR1_E_INTERNAL) {
    case DSR1_OK: return 0;
    case DSR1_E_INVALID:
    case DSR1_E_MISMATCH: return 1;
    case DSR1_E_USAGE: return 2;
    default: return 3;
    }
}
