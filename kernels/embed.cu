/* kc_embed: CUDA vocab-parallel embedding gather, mirrors kernels/embed.c. */
#include "cuda_kernels.h"
#include "cuda_util.cuh"

__global__ void embed_kernel(int type, const void *data, const float *scale, size_t rows,
                             size_t cols, size_t sld, size_t row0, const int32_t *ids, float *out,
                             size_t ldo)
{
    size_t t = blockIdx.x;
    int64_t id = ids[t];
    bool mine = id >= (int64_t)row0 && id < (int64_t)(row0 + rows);
    for (size_t j = threadIdx.x; j < cols; j += blockDim.x)
        out[t * ldo + j] = mine ? kc_wget(type, data, scale, cols, sld, (size_t)id - row0, j) : 0.0f;
}

int kc_embed(const k_weight *table, size_t row0, const int32_t *ids, size_t T, float *out,
             size_t ldo, cudaStream_t st)
{
    if (T == 0)
        return 0;
    embed_kernel<<<(unsigned)T, 256, 0, st>>>((int)table->type, table->data, table->scale,
                                              table->rows, table->cols, table->scale_ld, row0,
                                              ids, out, ldo);
    KC_LAUNCH_CHECK();
    return 0;
}
