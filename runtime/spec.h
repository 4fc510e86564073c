/* spec: greedy speculative decoding with the MTP module (dsr1-serve --speculative),
 * the parts both backends share (runtime/cpu_generate.c, runtime/cuda/cuda_generate.cu).
 *
 * A step runs the last token and the draft (two positions) through the model. The
 * first row's argmax is the next token; when it is the draft, the second row's argmax
 * follows: 1 or 2 tokens a step, each the argmax of a row computed with the right
 * prefix. The MTP module then runs over the accepted position(s) and drafts again.
 */
#ifndef DSR1_RT_SPEC_H
#define DSR1_RT_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sampler.h"

/* 0, or a usage error: speculative decoding is greedy, keeps the cache, and gives no MTP
 * logits. */
int rt_spec_check(const rt_generate_args *a, dsr1_err *err);

/* The verification of one step from its two rows of logits (rows[0..V), rows[V..2V)):
 * v[0] = tokens kept (1 or 2; 2 only when room2), v[1], v[2] = those tokens (v[2] = 0
 * when one). Returns 1 when the draft was right, 0 when not, -1 when the sampler is out
 * of memory. */
int rt_spec_verify(rt_sampler *greedy, const float *rows, size_t V, int32_t draft, int room2,
                   int32_t v[3]);

/* DSR1_TEST_DRAFTS=ID,ID,...: the draft of token k is the k-th id (tests run right and
 * wrong drafts on purpose); else draft. */
int32_t rt_spec_test_draft(size_t k, int32_t draft);

/* A greedy sampler (argmax, lowest id on ties) for the drafts and the verification. */
void rt_spec_greedy(rt_sampler *s);

#endif
