/* libFuzzer target: the JSON inputs a user hands us besides safetensors headers:
 * config.json, model.safetensors.index.json and manifest.json (which arrives from
 * artifact registries). The first input byte picks the parser. Any input must be
 * rejected with a message naming the label, or accepted; never a crash or a leak. */
#include "ck.h"
#include "mf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_rejection(int rc, const dsr1_err *err)
{
    if (rc != 0 && (err->status == DSR1_OK || !strstr(err->msg, "fuzz")))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *json = (const char *)data + 1;
    size_t len = size - 1;
    dsr1_err err;
    memset(&err, 0, sizeof err);
    switch (data[0] % 3) {
    case 0: {
        ck_config cfg;
        check_rejection(ck_config_parse(&cfg, json, len, "fuzz", &err), &err);
        break;
    }
    case 1: {
        ck_ckpt *c = NULL;
        int rc = ck_index_parse(&c, json, len, "fuzz", &err);
        check_rejection(rc, &err);
        if (rc == 0)
            for (size_t i = 0; i < ck_index_count(c); i++) {
                const char *t, *f;
                ck_index_at(c, i, &t, &f);
                if (!t || !f || ck_index_file_of(c, t) == NULL)
                    abort();
            }
        ck_close(c);
        break;
    }
    default: {
        mf_manifest *m = NULL;
        int rc = mf_parse(&m, json, len, "fuzz", &err);
        check_rejection(rc, &err);
        if (rc == 0) {
            for (uint32_t r = 0; r < m->n_ranks; r++)
                if (!mf_shard_of_rank(m, r))
                    abort();
            free(mf_to_json(m));
        }
        mf_free(m);
        break;
    }
    }
    return 0;
}
