/* libFuzzer target: the safetensors header parser and validator (st_open_mem).
 * Any input must be rejected with an error or accepted as a self-consistent file;
 * never a crash, a leak, or an out-of-bounds read. */
#include "st.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_file *f = NULL;
    dsr1_err err;
    if (st_open_mem(&f, data, size, "fuzz", &err) != 0) {
        if (f || err.code == ST_ERR_NONE || !strstr(err.msg, "fuzz"))
            abort();
        return 0;
    }
    /* Accepted: the tensors must tile the data section exactly and be findable. */
    uint64_t end = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_get(f, i);
        if (t->begin != end || st_find(f, t->name) != t || t->file_offset + t->nbytes > size)
            abort();
        volatile uint8_t sink = 0;
        if (t->nbytes)
            sink ^= ((const uint8_t *)t->data)[t->nbytes - 1];
        (void)sink;
        end = t->end;
    }
    if (st_data_start(f) + end != size)
        abort();
    for (size_t i = 0; i < st_meta_count(f); i++) {
        const char *k, *v;
        if (st_meta_at(f, i, &k, &v) != 0 || st_meta_get(f, k) == NULL)
            abort();
    }
    st_close(f);
    return 0;
}
