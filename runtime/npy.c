/* npy: atomic float32 .npy writer (see npy.h). */
#include "npy.h"
#include "watchdog.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static char *dir_of(const char *path)
{
    char *c = strdup(path);
    if (!c)
        return NULL;
    char *d = strdup(dirname(c));
    free(c);
    return d;
}

int rt_npy_out_open(rt_npy_out *o, const char *path, dsr1_err *err)
{
    memset(o, 0, sizeof *o);
    o->fd = -1;
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "%s is a directory: name the .npy file to write", path);
    char *c = strdup(path), *dir = dir_of(path);
    if (!c || !dir || !(o->path = strdup(path))) {
        free(c);
        free(dir);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    /* hidden, unique even across hosts sharing the directory */
    if (asprintf(&o->tmp, "%s/.%s.XXXXXX", dir, basename(c)) < 0)
        o->tmp = NULL;
    free(c);
    free(dir);
    if (!o->tmp) {
        rt_npy_out_abort(o);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    o->fd = mkostemp(o->tmp, O_CLOEXEC);
    if (o->fd < 0) {
        int e = errno;
        free(o->tmp);
        o->tmp = NULL;
        rt_npy_out_abort(o);
        return dsr1_err_set(err, DSR1_E_IO, 0, e, "%s: cannot create a file beside it", path);
    }
    fchmod(o->fd, 0644);
    o->wd = rt_watchdog_remove_on_fire(o->tmp);
    return 0;
}

int rt_npy_out_commit(rt_npy_out *o, const float *data, size_t rows, size_t cols, dsr1_err *err)
{
    if (!o->tmp || o->fd < 0)
        return dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "npy output not open");
    char dict[128];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }",
                     rows, cols);
    size_t hlen = (size_t)n + 1; /* + '\n' */
    hlen += (64 - (10 + hlen) % 64) % 64;
    unsigned char hdr[10 + 192];
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (unsigned char)(hlen & 0xff);
    hdr[9] = (unsigned char)(hlen >> 8);
    memset(hdr + 10, ' ', hlen);
    memcpy(hdr + 10, dict, (size_t)n);
    hdr[10 + hlen - 1] = '\n';
    int rc = 0;
    if (cols && rows > SIZE_MAX / sizeof(float) / cols) {
        rc = dsr1_err_set(err, DSR1_E_INTERNAL, 0, 0, "%s: %zu x %zu floats overflow", o->path, rows, cols);
        goto fail;
    }
    /* little-endian hosts only (x86-64, aarch64) */
    if (write_all(o->fd, hdr, 10 + hlen) != 0 || write_all(o->fd, data, rows * cols * sizeof(float)) != 0 ||
        fsync(o->fd) != 0) {
        int e = errno;
        rc = dsr1_err_set(err, DSR1_E_IO, 0, e, "%s: write failed", o->path);
        goto fail;
    }
    if (close(o->fd) != 0) {
        int e = errno;
        o->fd = -1;
        rc = dsr1_err_set(err, DSR1_E_IO, 0, e, "%s: write failed", o->path);
        goto fail;
    }
    o->fd = -1;
    if (rename(o->tmp, o->path) != 0) {
        int e = errno;
        rc = dsr1_err_set(err, DSR1_E_IO, 0, e, "%s: cannot rename into place", o->path);
        goto fail;
    }
    free(o->tmp);
    o->tmp = NULL;
    char *dir = dir_of(o->path);
    int dfd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(dir);
    rt_npy_out_abort(o);
    return 0;
fail:
    rt_npy_out_abort(o);
    return rc;
}

void rt_npy_out_abort(rt_npy_out *o)
{
    if (o->fd >= 0)
        close(o->fd);
    o->fd = -1;
    if (o->tmp)
        unlink(o->tmp);
    rt_watchdog_keep_on_fire(o->wd); /* gone or renamed into place */
    o->wd = 0;
    free(o->tmp);
    free(o->path);
    o->tmp = o->path = NULL;
}
