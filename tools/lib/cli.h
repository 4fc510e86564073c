/* cli: what every dsr1-* tool main shares: strict number and size parsing, byte
 * formatting, "k=v,k=v" lists, a progress reporter on stderr, and removal of temp
 * files when the tool is killed by SIGINT/SIGTERM/SIGHUP.
 *
 * Parsers return CLI_OK (0) or a negative CLI_E*; cli_strerror() names the problem
 * so the tool can print "--shard-size: <why>" and exit 2. Nothing here exits.
 */
#ifndef DSR1_CLI_H
#define DSR1_CLI_H

#include <stddef.h>
#include <stdint.h>

enum {
    CLI_OK = 0,
    CLI_EINVAL = -1, /* not a number / bad syntax / unknown suffix */
    CLI_ERANGE = -2, /* outside [min, max], overflow, or a fixed table/buffer is full */
    CLI_ENOMEM = -3
};
const char *cli_strerror(int rc);

/* Plain decimal digits only: no sign, no spaces, no "0x", no trailing junk.
 * *out is written only on success. */
int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* A byte count: digits, an optional fraction of at most 6 digits (only with a
 * suffix), optional spaces, then an optional case-insensitive suffix:
 *   B = 1; K KB M MB G GB T TB = 1000^n; KiB MiB GiB TiB = 1024^n.
 * "1.5GiB" = 1610612736; fractional results are truncated to whole bytes.
 * Overflow beyond UINT64_MAX -> CLI_ERANGE. */
int cli_parse_size(const char *s, uint64_t *out);

/* Human-readable bytes into buf (CLI_BYTES_LEN is always enough), returns buf:
 * binary = 0: "512 B", "999.0 kB", "86.1 GB" (1000^n); binary = 1: "80.0 GiB" (1024^n). */
#define CLI_BYTES_LEN 24
const char *cli_format_bytes(uint64_t n, int binary, char *buf, size_t len);

/* "tp=8,pp=2": calls fn(key, value, ud) for each item, in order. Keys and values are
 * non-empty and NUL-terminated copies valid only during the call; an item without
 * '=', an empty key/value or an empty item (",,", trailing ',') is CLI_EINVAL. An
 * empty string has no items and returns CLI_OK. A non-zero return from fn stops
 * the walk and is returned as is. */
typedef int (*cli_kv_fn)(const char *key, const char *value, void *ud);
int cli_parse_kv_list(const char *s, cli_kv_fn fn, void *ud);

/* ---- progress on stderr ----
 * AUTO: BAR when stderr is a terminal, else PLAIN.
 * BAR: one line redrawn about 4 times a second: label, bar, percent, bytes done/total,
 *      GB/s, ETA and the current item (cut to the terminal width).
 * PLAIN: a line every 5 s ("label: 12.3 GB of 86.1 GB (14%), 2.10 GB/s, ETA 0:35,
 *      item"); the environment variable DSR1_PROGRESS_INTERVAL (seconds, may be
 *      fractional) overrides the period.
 * QUIET: nothing at all, not even the finish line.
 * total 0 means unknown (no percent, no ETA). add/set_item are thread-safe; every
 * function accepts NULL as a no-op, so cli_progress_start's failure (NULL, out of
 * memory) needs no special casing. Output stops before finish/abort returns. */
typedef enum {
    CLI_PROGRESS_AUTO,
    CLI_PROGRESS_BAR,
    CLI_PROGRESS_PLAIN,
    CLI_PROGRESS_QUIET
} cli_progress_mode;
typedef struct cli_progress cli_progress;

cli_progress *cli_progress_start(uint64_t total_bytes, const char *label, cli_progress_mode mode);
void cli_progress_add(cli_progress *p, uint64_t bytes);
void cli_progress_set_item(cli_progress *p, const char *name); /* copied (first 255 bytes) */
void cli_progress_set_total(cli_progress *p, uint64_t total_bytes);
uint64_t cli_progress_done(const cli_progress *p);
/* Stop, print "label: done, 86.1 GB in 41.0 s (2.10 GB/s)" (not in QUIET), free. */
void cli_progress_finish(cli_progress *p);
/* Stop and free without the done line (the tool is about to report an error);
 * a drawn bar is cleared. */
void cli_progress_abort(cli_progress *p);

/* ---- temp-file cleanup on signals ----
 * cli_signals_install() (once, early in main) sets a SIGINT/SIGTERM/SIGHUP handler
 * that unlinks every registered path (rmdir for an empty directory), restores the
 * default action and re-raises the signal, so the tool dies "by SIGINT" as shells
 * expect. A signal that was ignored at install time stays ignored.
 * Register a temp path right after creating it and unregister it after the rename
 * (or unlink) that ends its life. Relative paths are made absolute at registration.
 * At most CLI_CLEANUP_MAX paths at once, each shorter than 4096 bytes, else
 * CLI_ERANGE. Thread-safe; the handler only reads a fixed table. */
#define CLI_CLEANUP_MAX 256
void cli_signals_install(void);
int cli_cleanup_register(const char *path);
void cli_cleanup_unregister(const char *path); /* a path not registered is a no-op */

#endif
