/* npy: atomic float32 .npy output for dsr1-serve --logits-out / --mtp-logits-out.
 *
 * File layout (NumPy format v1.0): "\x93NUMPY", 0x01 0x00, a little-endian u16 header
 * length H, then H bytes of the dict "{'descr': '<f4', 'fortran_order': False,
 * 'shape': (rows, cols), }" padded with spaces and ended by '\n' so that 10 + H is a
 * multiple of 64, then rows x cols little-endian float32 in C order.
 *
 * The file is created up front as a hidden temp file beside the target (so an
 * unwritable path fails before a long generation), written and fsynced at commit,
 * then renamed over the target and the directory fsynced: readers see either the old
 * file or the complete new one, never a half-written one.
 *
 * Lifetimes: rt_npy_out owns its strings and descriptor until commit or abort.
 */
#ifndef DSR1_NPY_H
#define DSR1_NPY_H

#include <stddef.h>

#include "err.h"

typedef struct rt_npy_out {
    char *path;   /* target */
    char *tmp;    /* temp file in the target's directory; NULL once committed/aborted */
    int fd;
    int wd; /* rt_watchdog_remove_on_fire's handle for tmp (0: none) */
} rt_npy_out;

/* Create the temp file for `path`. A path that is a directory, or whose directory
 * is missing or unwritable, fails here (DSR1_E_IO, or DSR1_E_USAGE for a directory).
 * A watchdog that ends the process meanwhile removes the temp file (watchdog.h). */
int rt_npy_out_open(rt_npy_out *o, const char *path, dsr1_err *err);
/* Write [rows, cols] float32, fsync, rename into place, fsync the directory. The temp
 * file is removed on failure. */
int rt_npy_out_commit(rt_npy_out *o, const float *data, size_t rows, size_t cols, dsr1_err *err);
/* Remove the temp file (if any) and free; safe after commit and on a zeroed struct. */
void rt_npy_out_abort(rt_npy_out *o);

#endif
