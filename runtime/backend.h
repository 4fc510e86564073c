/* rt_backend: how dsr1-serve runs a generation on a backend.
 *
 * dsr1-serve parses flags into rt_generate_args and calls
 *   --backend cpu  -> rt_cpu_generate()  (runtime/cpu_generate.c): every rank of the
 *                     plan as a thread of this process, in-process comm, fp32 math;
 *   --backend cuda -> rt_cuda_generate() (runtime/cuda_*.cu, CUDA builds): this
 *                     process is one rank (identity from flags / env / Kubernetes),
 *                     NCCL comm.
 * A build without nvcc links the weak default of rt_cuda_generate in
 * runtime/backend_nocuda.c, which fails with RT_ERR_NO_CUDA (exit 3). The CUDA build
 * provides a strong definition in an object linked explicitly (not from an archive
 * placed after libdsr1rt.a), so it wins over the weak one.
 *
 * Results: the process that holds the output (the in-process run, or global rank 0
 * of a CUDA deployment) gets have_output = 1 and fills tokens (and logits when
 * keep_logits). The caller prints ids and writes --logits-out (runtime/npy.h).
 */
#ifndef DSR1_RT_BACKEND_H
#define DSR1_RT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

enum {
    RT_ERR_NONE = 0,
    RT_ERR_NO_CUDA = 100,  /* built without CUDA support */
    RT_ERR_MODEL,          /* shard content does not fit the model (missing tensor...) */
    RT_ERR_ARG,            /* bad generation argument (token id out of range...) */
};

typedef enum {
    RT_ATTN_AUTO = 0,  /* naive attention for multi-token prefill, absorbed for decode */
    RT_ATTN_ABSORB,    /* absorbed attention over the latent cache everywhere */
    RT_ATTN_NAIVE,     /* naive attention everywhere (keys/values rebuilt from the cache) */
} rt_attn_mode;

typedef struct rt_sampling {
    float temperature;     /* <= 0: greedy (argmax, lowest id on ties) */
    float top_p;           /* (0, 1]; 1 = off */
    int top_k;             /* 0 = off */
    uint64_t seed;
} rt_sampling;

typedef struct rt_generate_args {
    const char *manifest_path;    /* DIR/manifest.json; shard files are read from DIR */
    const int32_t *prompt;
    size_t n_prompt;
    int max_new_tokens;           /* >= 1 */
    rt_sampling sampling;
    int keep_logits;              /* fill result.logits: prompt rows + (N - 1) decode rows */
    int keep_mtp_logits;          /* fill result.mtp_logits (shards made with --mtp): row i =
                                     the MTP module's draft logits for position i + 2, from
                                     the hidden state at i and the token at i + 1; same rows
                                     as logits */
    int speculative;              /* CUDA, greedy: the MTP module drafts one token a step,
                                     verified in the next step's forward pass */
    int verify_full;              /* hash every tensor at load (LD_HASH) */
    rt_attn_mode attn;
    int no_cache;                 /* recompute the whole sequence for every new token */
    size_t prefill_chunk;         /* a forward pass takes at most this many prompt tokens
                                     (chunked prefill: activation memory bounded by the
                                     chunk, not the prompt); 0 = the whole prompt at once */
    int threads;                  /* CPU: OpenMP threads per rank (0 = default) */
    /* identity for the CUDA backend; -1 / NULL = take from the environment */
    int rank, world_size, local_rank, gpus_per_node;
    const char *master_addr;
    int master_port;
    double timeout_s;             /* bootstrap / collective timeout (0 = default) */
} rt_generate_args;

typedef struct rt_generate_result {
    int have_output;
    int32_t *tokens;              /* n_tokens generated ids */
    size_t n_tokens;
    float *logits;                /* rows x vocab, when keep_logits */
    float *mtp_logits;            /* rows x vocab, when keep_mtp_logits */
    size_t rows, vocab;
} rt_generate_result;

/* Default --prefill-chunk: H200, a real-dims 4-layer model (docs/cuda.md, chunked
 * prefill) */
#define RT_PREFILL_CHUNK 4096

/* The forward passes of one step: tokens [from, len) in chunks of at most a->prefill_chunk
 * (0: one pass). *T of the chunk starting at p. */
size_t rt_chunk_len(const rt_generate_args *a, size_t p, size_t len);

/* Defaults: greedy, top_p 1, attn AUTO, prefill_chunk RT_PREFILL_CHUNK, identity fields -1. */
void rt_generate_args_init(rt_generate_args *a);
void rt_generate_result_free(rt_generate_result *r); /* frees members; NULL is a no-op */

/* Fault injection for the multi-GPU failure tests (tests/gpu/test_nccl.sh): 1 when
 * DSR1_TEST_FAULT is "RANK:WHAT" for this rank and this fault, else 0. Faults:
 * "stall-setup" (the rank stops before the TP/PP communicators, as if it died after the
 * world communicator came up), "exit-decode" (the rank exits at the first decode step,
 * leaving its peers inside a collective). */
int rt_test_fault(int rank, const char *what);

int rt_cpu_generate(const rt_generate_args *a, rt_generate_result *res, dsr1_err *err);
int rt_cuda_generate(const rt_generate_args *a, rt_generate_result *res, dsr1_err *err);

#endif
