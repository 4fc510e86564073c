/* cm: one rank's DeepSeek-V3 forward pass on a GPU. CUDA host code (C++), used by
 * runtime/cuda/cuda_generate.cu and the GPU benchmarks.
 *
 * The rank's shard is loaded by the CPU runtime's loader (rt_model_load: checked
 * against the manifest, zero-copy weight views into the read-only mapping). cm copies
 * the whole shard file into one device arena (runtime/upload.h) and mirrors every view
 * at the same offset, so a tensor's device address is arena + its file offset. Norm
 * vectors and the router bias (already fp32 on the host) are copied separately.
 *
 * The forward pass follows rt_model_forward step by step (same layer order, same TP
 * all-reduce points, same PP send/recv and vocab-parallel embed/lm_head), with
 * kernels/cuda_kernels.h in place of the CPU kernels and comm on device buffers.
 * Attention uses the absorbed form over the latent cache, except steps of
 * CM_PREFILL_MIN tokens or more, which run it decompressed (kc_mla_prefill) as the CPU
 * backend's prefill does (the CPU tests show both forms agree).
 *
 * Lifetimes: cm_model owns the rt_model, the arena and all device buffers; the
 * manifest must outlive it.
 */
#ifndef DSR1_CUDA_MODEL_H
#define DSR1_CUDA_MODEL_H

#include <cuda_runtime.h>

#include "cuda_kernels.h"

extern "C" {
#include "backend.h"
#include "comm.h"
#include "model.h"
#include "upload.h"
}

typedef struct cm_layer {
    const rt_layer *h;
    k_weight q_a, q_b, kv_a, kv_b, o, gate, up, down, router, sh_gate, sh_up, sh_down;
    float *in_norm, *post_norm, *q_a_norm, *kv_a_norm, *bias;
    kc_moe_w *moe;
    size_t e0; /* first local expert id */
} cm_layer;

typedef struct cm_model {
    rt_model *h;
    cudaStream_t st;
    kc_ctx *kc;
    char *arena;
    const char *base;
    uint64_t arena_bytes;
    double upload_s;
    k_weight embed, lm_head;
    float *final_norm;
    cm_layer *L; /* n_layers decoder layers, then the MTP module's when has_mtp */
    size_t n_layers;
    /* the MTP module (shards made with --mtp; last stage only): its layer L[n_layers],
     * cache slot n_layers */
    int has_mtp;
    float *enorm, *hnorm, *head_norm;
    k_weight eh_proj, mtp_embed, mtp_head;
    /* cm_keep_hidden: forward passes on the last stage leave the final-normed hidden
     * states of all their rows in hid [hid_rows, hidden] (for the MTP module) */
    float *hid;
    size_t hid_rows;
    /* latent cache: per layer c [cap, R], kpe [cap, P] */
    size_t cap;
    float **c, **kpe;
    int32_t *pos; /* 0..cap-1 */
    /* routing of the last MoE layer run (device idx [dbg_T, top_k]), for benchmarks */
    const int32_t *dbg_idx;
    size_t dbg_T;
    /* scratch, grown per forward */
    char *pool;
    size_t pool_cap, pool_used;
    /* steps of at least this many tokens run attention decompressed (CM_PREFILL_MIN or
     * DSR1_MLA_PREFILL_MIN at load; SIZE_MAX: always absorbed) */
    size_t prefill_min;
    /* device positions of the step (cm_set_device_positions; NULL: host pos0) */
    const int32_t *dpos;
    size_t s_plan;
    /* CUDA graphs of one-token decode steps (cm_set_graphs) */
    int graphs;
    int32_t *dstep; /* device [token id, position] a graph step reads */
    cudaGraphExec_t gexec;
    size_t g_splan;   /* key bound the graph's attention was planned for */
    unsigned g_epoch; /* kc_alloc_epoch() at capture */
    char *g_pool;     /* scratch pool at capture */
    float *g_all;     /* where the graph leaves the step's logits */
    unsigned long g_captures, g_replays;
} cm_model;

/* Load rank `rank` of manifest m (shard files in dir), upload it, make a cache of cap
 * tokens. up: upload options (NULL: defaults). verify_full: hash every tensor while it
 * uploads (the check runs in parallel with the copy). */
int cm_load(cm_model **out, const mf_manifest *m, const char *dir, int rank, size_t cap,
            const rt_upload_opts *up, int verify_full, cudaStream_t st, dsr1_err *err);
void cm_free(cm_model *m);

/* Run T tokens (host ids) at positions pos0.. through this rank's layers; comm may be
 * NULL when the plan has one rank. On the last stage, when logits_h != NULL, rows
 * [row0, T) of the logits go to logits_h [(T - row0), vocab] (host) and the stream is
 * synchronized (bounded through the comm when present); with logits_h NULL the head is
 * skipped and the pass is only enqueued (cm_wait). A prompt may come in chunks: calls
 * with consecutive pos0 extend the cache. */
int cm_forward(cm_model *m, rt_comm *comm, const int32_t *ids, size_t T, size_t pos0,
               size_t row0, float *logits_h, dsr1_err *err);

/* Keep the final-normed hidden states of up to `rows` rows a forward pass in m->hid
 * (allocated now, before any graph captures it); 0 rows: stop. */
int cm_keep_hidden(cm_model *m, size_t rows, dsr1_err *err);
/* The MTP module (m->has_mtp) on T rows: row t drafts position pos0 + t + 2 from the
 * hidden state m->hid row hrow0 + t (of position pos0 + t) and the token next_ids[t]
 * (host, of position pos0 + t + 1); its cache slot gets positions pos0... Rows [row0, T)
 * of its logits go to logits_h (host) [(T - row0), vocab]; the stream is synchronized.
 * Collective over the TP group of the last stage. */
int cm_mtp_forward(cm_model *m, rt_comm *comm, const int32_t *next_ids, size_t T, size_t pos0,
                   size_t hrow0, size_t row0, float *logits_h, dsr1_err *err);

/* One-token decode steps of cm_forward (last stage, embedding on this rank, logits
 * wanted) replay a CUDA graph: the step's token id and position go to the device, one
 * graph launch runs embedding through lm_head (and the TP collectives), instead of ~16
 * launches a layer. A graph is captured (after the same step ran eagerly, which also
 * gives that step's result) for every CM_GRAPH_KEYS keys of context and again when
 * the scratch it points into was reallocated. If capture fails the model warns once
 * on stderr and runs eagerly from then on. on = 0: always eager. */
#define CM_GRAPH_KEYS 256
/* Steps of at least this many tokens run attention decompressed (kc_mla_prefill: kv_b
 * applied to the cached latents, TF32 matmuls) rather than absorbed; env
 * DSR1_MLA_PREFILL_MIN overrides (0: always absorbed). */
#define CM_PREFILL_MIN 128
void cm_set_graphs(cm_model *m, int on);
/* While dpos != NULL, layers read their T positions from dpos (device, consecutive)
 * instead of the pos0 argument, and attention plans its key splits for at most s_plan
 * keys (for capturing a layer in a graph: benchmarks). */
void cm_set_device_positions(cm_model *m, const int32_t *dpos, size_t s_plan);

/* One decoder layer on device h [T, hidden] in place (benchmarks). */
int cm_layer_forward(cm_model *m, rt_comm *comm, size_t li, float *h, size_t T, size_t pos0,
                     dsr1_err *err);
/* Make room for a forward of T tokens with nlog rows of logits before any buffer is
 * handed out (a reallocation waits for the stream, so no queued kernel still uses the
 * old pool). */
int cm_reserve(cm_model *m, size_t T, size_t nlog, dsr1_err *err);
/* Wait for the work enqueued on the model's stream (through the comm's bounded wait
 * when it is NCCL's). */
int cm_wait(cm_model *m, rt_comm *c, dsr1_err *err);
/* Device scratch of n bytes valid until the next cm_forward / cm_layer_forward. */
void *cm_scratch(cm_model *m, size_t n);
void cm_scratch_reset(cm_model *m);

#endif
