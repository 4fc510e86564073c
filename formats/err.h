/* err: the error struct every library call fills.
 *
 * Libraries never print and never exit. A call returns 0 on success or a
 * negative DSR1_E_* status, and writes the detail (which file, tensor, offset,
 * what to do) into the caller's dsr1_err. Tool mains map the status to an exit
 * code with dsr1_err_exit_code().
 */
#ifndef DSR1_ERR_H
#define DSR1_ERR_H

#include <stdarg.h>

/* Broad classes; the `code` field names the precise cause. */
enum {
    DSR1_OK = 0,
    DSR1_E_INVALID = -1, /* malformed input file/data: exit 1 or 3 by tool */
    DSR1_E_USAGE = -2,   /* bad argument or impossible request: exit 2 */
    DSR1_E_IO = -3,      /* system call failed (errno set): exit 3 */
    DSR1_E_NOMEM = -4,   /* allocation failed: exit 3 */
    DSR1_E_MISMATCH = -5,/* verification failed (hash, shape, plan): exit 1 */
    DSR1_E_INTERNAL = -6 /* a bug: exit 3 */
};

#define DSR1_ERR_MSG 1024

typedef struct dsr1_err {
    int status;            /* one of DSR1_E_* */
    int code;              /* module-specific precise code (e.g. ST_ERR_*) */
    int sys_errno;         /* errno for DSR1_E_IO, else 0 */
    char msg[DSR1_ERR_MSG];/* human message, no trailing newline */
} dsr1_err;

/* Fill *e (may be NULL) and return status. printf-style message. */
int dsr1_err_set(dsr1_err *e, int status, int code, int sys_errno, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int dsr1_err_vset(dsr1_err *e, int status, int code, int sys_errno, const char *fmt, va_list ap);
/* Prefix the existing message with "ctx: " (for adding file names as errors bubble up). */
void dsr1_err_prefix(dsr1_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dsr1_err_clear(dsr1_err *e);
/* Conventional tool exit code: INVALID/MISMATCH -> 1, USAGE -> 2, IO/NOMEM/INTERNAL -> 3. */
int dsr1_err_exit_code(const dsr1_err *e);

#endif
