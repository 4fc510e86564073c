/* rt_backend: argument defaults, result release and the .npy writer shared by the
 * backends. */
#include "backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rt_generate_args_init(rt_generate_args *a)
{
    memset(a, 0, sizeof *a);
    a->max_new_tokens = 1;
    a->sampling.temperature = 0.0f;
    a->sampling.top_p = 1.0f;
    a->attn = RT_ATTN_AUTO;
    a->rank = a->world_size = a->local_rank = a->gpus_per_node = -1;
    a->master_port = -1;
}

void rt_generate_result_free(rt_generate_result *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->logits);
    free(r->mtp_logits);
    memset(r, 0, sizeof *r);
}

int rt_npy_write_f32(const char *path, const float *data, size_t rows, size_t cols, dsr1_err *err)
{
    char dict[128];
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }",
                     rows, cols);
    /* magic(6) + version(2) + len(2) + dict + padding + '\n' is a multiple of 64 */
    size_t hlen = (size_t)n + 1;
    size_t total = 10 + hlen;
    size_t pad = (64 - total % 64) % 64;
    hlen += pad;
    unsigned char hdr[10 + 192];
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    hdr[8] = (unsigned char)(hlen & 0xff);
    hdr[9] = (unsigned char)(hlen >> 8);
    memcpy(hdr + 10, dict, (size_t)n);
    memset(hdr + 10 + n, ' ', pad);
    hdr[10 + hlen - 1] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f)
        return dsr1_err_set(err, DSR1_E_IO, 0, errno, "%s: cannot create: %s", path, strerror(errno));
    int ok = fwrite(hdr, 1, 10 + hlen, f) == 10 + hlen;
    /* little-endian hosts only (x86-64, aarch64) */
    if (ok && rows * cols != 0)
        ok = fwrite(data, sizeof(float), rows * cols, f) == rows * cols;
    int e = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok)
        return dsr1_err_set(err, DSR1_E_IO, 0, e, "%s: write failed: %s", path, strerror(e));
    return 0;
}
