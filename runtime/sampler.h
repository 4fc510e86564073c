/* rt_sampler: next-token choice from a row of logits.
 *
 *   temperature <= 0: argmax (lowest id among equal maxima);
 *   otherwise: z = logits / temperature; keep the top_k largest (0 = all); softmax in
 *   double; keep the smallest prefix (by descending probability, ties by id) whose
 *   mass reaches top_p (1 = all); renormalize; draw with a splitmix64 stream seeded by
 *   `seed`, so equal seeds give equal choices.
 */
#ifndef DSR1_RT_SAMPLER_H
#define DSR1_RT_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

typedef struct rt_sampler {
    rt_sampling p;
    uint64_t state;
} rt_sampler;

void rt_sampler_init(rt_sampler *s, const rt_sampling *p);
/* Returns the chosen id, or -1 when scratch memory cannot be allocated. */
int32_t rt_sample(rt_sampler *s, const float *logits, size_t vocab);

#endif
