/* fu: small file and text helpers shared by the formats modules (JSON descriptors:
 * config.json, index.json, manifest.json, XXH128SUMS, archive indexes). */
#ifndef DSR1_FU_H
#define DSR1_FU_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Read a whole regular file into a malloc'd, NUL-terminated buffer (*buf, *len).
 * Files over `max` bytes are refused (DSR1_E_INVALID); open/read failures are
 * DSR1_E_IO with errno kept in err->sys_errno. `code` is the caller's module error code. */
int fu_read_all(const char *path, uint64_t max, int code, char **buf, size_t *len, dsr1_err *err);

/* "dir/name", malloc'd; NULL when out of memory. */
char *fu_join(const char *dir, const char *name);

/* Seconds on the monotonic clock, for rates and elapsed times. */
double fu_now_s(void);

/* Append "\n" to a malloc'd string (text files end with a newline). Returns the new
 * string, or NULL after freeing `s` when out of memory or when s is NULL. */
char *fu_newline(char *s);

#endif
