/* spec: speculative decoding with the MTP module (dsr1-serve --speculative), the parts
 * both backends share (runtime/cpu_generate.c, runtime/cuda/cuda_generate.cu).
 *
 * A step runs the last token and the draft (two positions) through the model; the first
 * row decides whether the draft stands, and when it does the second row gives one more
 * token: 1 or 2 tokens a step. The MTP module then runs over the kept position(s) and
 * drafts again. Greedy: a token is the argmax of its row, as without drafts. Sampled:
 * speculative sampling (Leviathan et al. 2023; Chen et al. 2023), so that every token is
 * distributed as plain sampling would draw it (other draws than a plain run with the
 * same seed: the stream is consumed differently).
 */
#ifndef DSR1_RT_SPEC_H
#define DSR1_RT_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sampler.h"

/* 0, or a usage error: speculative decoding keeps the cache and gives no MTP logits. */
int rt_spec_check(const rt_generate_args *a, dsr1_err *err);

/* The draft of token k from a row of the MTP module's logits: its argmax when greedy,
 * else drawn with the sampler's settings, its distribution left in qbuf [V]; then
 * DSR1_TEST_DRAFTS may replace it (rt_spec_test_draft). *q = qbuf when the draft is the
 * one drawn (rt_spec_verify's q), else NULL. 0, or an out-of-memory error. */
int rt_spec_draft(rt_sampler *s, const float *mlogits, size_t V, size_t k, double *qbuf,
                  int32_t *draft, const double **q, dsr1_err *err);

/* One step's verification from its two rows of logits (rows[0..V), rows[V..2V)): v[0] =
 * tokens kept (1 or 2; 2 only when room2), v[1], v[2] = those tokens (v[2] = 0 when
 * one). Greedy: the draft stands when it is the first row's argmax. Sampled: it stands
 * with probability min(1, p(d) / q(d)), p the first row's distribution (rt_sample_probs)
 * and q the draft's (NULL: a draft given from outside, q = 1 at it); else the token is
 * drawn from max(0, p - q) renormalized. scratch: 2 V doubles. Returns 1 when the draft
 * stood, 0 when not, -1 when out of memory. */
int rt_spec_verify(rt_sampler *s, const float *rows, size_t V, int32_t draft, const double *q,
                   int room2, double *scratch, int32_t v[3]);

/* Append a step's tokens (v[0] of them, from v[1]) to seq at *len and, unless tokens is
 * NULL, to tokens at *ntok; advances both counts. */
void rt_spec_append(const int32_t *v, int32_t *seq, size_t *len, int32_t *tokens, size_t *ntok);

/* DSR1_TEST_DRAFTS=ID,ID,...: the draft of token k is the k-th id (tests run right and
 * wrong drafts on purpose); else draft. */
int32_t rt_spec_test_draft(size_t k, int32_t draft);

#endif
