/* k_embed: see embed.h. */
#include "embed.h"

#include <string.h>

void k_embed(const k_weight *table, size_t row0, const int32_t *ids, size_t T, float *out,
             size_t ldo)
{
    for (size_t t = 0; t < T; t++) {
        int64_t id = ids[t];
        float *o = out + t * ldo;
        if (id >= (int64_t)row0 && id < (int64_t)(row0 + table->rows))
            k_weight_to_f32(table, (size_t)id - row0, (size_t)id - row0 + 1, o);
        else
            memset(o, 0, table->cols * sizeof(float));
    }
}
