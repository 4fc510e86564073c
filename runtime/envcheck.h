/* envcheck.h: the DSR1_* environment switches, checked once before a program runs.
 *
 * The runtime and kernels read their switches where they are used (getenv, parsed
 * leniently there). dsr1-serve calls rt_env_check first so that a malformed value is a
 * usage error naming the variable and what it takes, instead of a switch silently
 * falling back to its default, and a DSR1_* name no dsr1 program reads (a typo such as
 * DSR1_UPLOAD_THREAD) draws a warning instead of being ignored. The table in
 * envcheck.c lists every switch; docs/tools/dsr1-serve.md describes them. */
#ifndef DSR1_RT_ENVCHECK_H
#define DSR1_RT_ENVCHECK_H

#include <stdio.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* env: NULL-terminated "NAME=value" strings (environ). 0, or DSR1_E_USAGE with err
 * naming the first malformed switch; one warning line per unknown DSR1_* name goes to
 * warn (NULL: none), prefixed with prog. */
int rt_env_check(char *const *env, const char *prog, FILE *warn, dsr1_err *err);

#ifdef __cplusplus
}
#endif

#endif
