/* k_router: DeepSeek-V3's sigmoid router with bias-for-selection and group-limited
 * top-k ("noaux_tc"), the CPU reference (kernels/router.cu mirrors it).
 *
 * For each token t (logits = x Wg^T computed in fp32 by the caller):
 *   s    = sigmoid(logits)                     [E]
 *   sel  = s + bias                             (bias used for selection only; NULL = 0)
 *   group score g = sum of the top-2 sel in each of n_group groups of E/n_group experts
 *                   (top-1 when a group has a single expert)
 *   keep the topk_group best groups; experts of other groups get sel = -inf
 *   idx  = top_k experts by masked sel, in descending order (ties: lower index first)
 *   w    = s[idx] (unbiased); if norm: w /= (sum w + 1e-20); w *= scale
 * Masking uses -inf (the official model.py); transformers masks with 0.0, which selects
 * the same experts whenever every kept sel is > 0 (true for positive biases).
 */
#ifndef DSR1_K_ROUTER_H
#define DSR1_K_ROUTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct k_router_cfg {
    uint32_t n_experts, n_group, topk_group, top_k;
    int norm_topk_prob;
    float scale;            /* routed_scaling_factor */
} k_router_cfg;

/* logits [T, E] dense; idx, w: [T, top_k]. Returns 0, or -1 when the config is invalid
 * (E % n_group, topk_group > n_group, top_k > experts in kept groups, E > 4096). */
int k_router(const k_router_cfg *c, const float *logits, const float *bias, size_t T,
             int32_t *idx, float *w);

#endif
