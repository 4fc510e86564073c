#include "fu.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int fu_read_all(const char *path, uint64_t max, int code, char **buf, size_t *len, dsr1_err *err)
{
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dsr1_err_set(err, DSR1_E_IO, code, errno, "cannot open %s", path);
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return dsr1_err_set(err, DSR1_E_IO, code, e, "cannot stat %s", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return dsr1_err_set(err, DSR1_E_IO, code, 0, "%s is not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max) {
        close(fd);
        return dsr1_err_set(err, DSR1_E_INVALID, code, 0, "%s is %" PRIu64 " bytes, over the %" PRIu64
                            "-byte limit for this file", path, (uint64_t)sb.st_size, max);
    }
    size_t n = (size_t)sb.st_size, got = 0;
    char *b = malloc(n + 1);
    if (!b) {
        close(fd);
        return dsr1_err_set(err, DSR1_E_NOMEM, code, 0, "out of memory reading %s", path);
    }
    while (got < n) {
        ssize_t k = read(fd, b + got, n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) { /* 0: the file shrank under us */
            int e = k < 0 ? errno : EIO;
            free(b);
            close(fd);
            return dsr1_err_set(err, DSR1_E_IO, code, e, "cannot read %s", path);
        }
        got += (size_t)k;
    }
    close(fd);
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

char *fu_newline(char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return NULL;
    }
    memcpy(t + n, "\n", 2);
    return t;
}

char *fu_join(const char *dir, const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

double fu_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
