/* rt_sampler: next-token choice from a row of logits.
 *
 *   temperature <= 0: argmax (lowest id among equal maxima);
 *   otherwise: z = logits / temperature; keep the top_k largest (0 = all); softmax in
 *   double; keep the smallest prefix (by descending probability, ties by id) whose
 *   mass reaches top_p (1 = all); renormalize; draw with a splitmix64 stream seeded by
 *   `seed`, so equal seeds give equal choices.
 * Ids more than 32 below the best z (probability under e^-32 = 1.3e-14 of the best) are
 * never drawn: the row is not sorted, only what top-k / top-p need is (a token of R1's
 * 129,280 ids in ~0.3 ms on a peaked row; make bench-sampler).
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
/* The distribution rt_sample draws from, as prob[vocab] (0 outside the kept ids; one-hot
 * at the argmax for temperature <= 0). 0, or -1 when out of memory. */
int rt_sample_probs(const rt_sampling *p, const float *logits, size_t vocab, double *prob);
/* An id drawn from prob (weights >= 0, any positive sum) with the sampler's stream. */
int32_t rt_sample_from(rt_sampler *s, const double *prob, size_t vocab);
/* The next number of the sampler's stream, uniform in [0, 1). */
double rt_sample_uniform(rt_sampler *s);

#endif
