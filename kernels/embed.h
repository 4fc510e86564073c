/* k_embed: embedding gather, vocab-parallel; the CPU reference (kernels/embed.cu
 * mirrors it).
 *
 * A rank holds table rows [row0, row0 + table->rows) of the full vocabulary. Token
 * ids outside that range give zero rows, so summing (all-reduce) the outputs of
 * every rank of a tp group yields the full lookup (the official model's
 * ParallelEmbedding).
 */
#ifndef DSR1_K_EMBED_H
#define DSR1_K_EMBED_H

#include <stddef.h>
#include <stdint.h>

#include "gemm.h"

/* out [T, table->cols] (row stride ldo) from ids[T]. table: F32 or BF16 (FP8 is
 * dequantized per row with its block scales). */
void k_embed(const k_weight *table, size_t row0, const int32_t *ids, size_t T, float *out,
             size_t ldo);

#endif
