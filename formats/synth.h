/* synth: writes synthetic DeepSeek-V3-architecture checkpoints in the exact HF R1
 * layout (the engine behind dsr1-synth; the tool is a thin main over it).
 *
 * Output directory:
 *   config.json                     ck_config_to_json() of the chosen config
 *   generation_config.json          bos/eos and R1's sampling defaults
 *   model.safetensors.index.json    {"metadata": {"total_size": N}, "weight_map": {...}}
 *   model-00001-of-000163.safetensors ...   (5-digit index, 6-digit total, as R1)
 * Tensors (ck_expected_tensors order) go to files greedily: a new file starts when
 * the next tensor would push the current one past shard_size, so a weight and its
 * scale may land in different files, as in the real checkpoint. Within a file the
 * tensors follow st_align_order() (every tensor aligned to its element size);
 * __metadata__ is {"format": "pt"}.
 *
 * Values (all deterministic functions of (seed, tensor name, row); independent of
 * the thread count and of chunking):
 *   FP8 projections  normal, std 0.02 x a per-tensor factor (lognormal, sigma 0.2) x a
 *                    per-128x128-block factor (lognormal, sigma 0.35); quantized with
 *                    dt_block_quant (block amax -> 448), partial edge blocks included;
 *   norms            BF16 around 1.0 (1 + 0.1 N);
 *   embed, lm_head, eh_proj  BF16 normal, std 0.02;
 *   router weight    BF16 normal, std 0.5/sqrt(hidden) (router logits std ~0.5);
 *   correction bias  F32, 2.5 + 0.05 N (positive like R1's; spread below the score spread
 *                    so that routing still depends on the token);
 *   MTP embed_tokens / shared_head.head are byte copies of model.embed_tokens /
 *                    lm_head (as in R1).
 * Memory: per thread one 128-row chunk of one tensor (f32) plus its encoding.
 * Files are written with the st writer (temp, fsync, rename); the JSON files last,
 * each atomically, so an interrupted run never leaves an index naming absent files.
 */
#ifndef DSR1_SYNTH_H
#define DSR1_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "ck.h"
#include "err.h"

enum {
    SY_ERR_NONE = 0,
    SY_ERR_PRESET,      /* unknown preset name */
    SY_ERR_LAYERS,      /* --layers out of range */
    SY_ERR_OUT_EXISTS,  /* output dir already holds a checkpoint and !force */
    SY_ERR_MKDIR,
    SY_ERR_WRITE,
    SY_ERR_SHARD_SIZE,
};

typedef struct sy_preset_info {
    const char *name;
    uint64_t shard_size;   /* default --shard-size */
    int mtp;               /* default: include the MTP layer(s) */
} sy_preset_info;

/* Fill cfg with preset `name` ("tiny", "small", "r1"). layers > 0 overrides
 * num_hidden_layers and clamps first_k_dense_replace to it. info may be NULL.
 * Returns 0, or DSR1_E_USAGE with SY_ERR_PRESET / SY_ERR_LAYERS. */
int sy_preset(const char *name, uint32_t layers, ck_config *cfg, sy_preset_info *info, dsr1_err *err);

/* What goes where. */
typedef struct sy_plan {
    ck_config cfg;         /* num_nextn_predict_layers is 0 when !mtp */
    int mtp;
    ck_tensor_desc *t;     /* ck_expected_tensors(cfg, mtp) */
    size_t n;
    uint32_t *file_of;     /* per tensor: file index 0..n_files-1, non-decreasing */
    uint32_t n_files;
    uint64_t total_bytes;  /* sum of tensor bytes = metadata.total_size */
} sy_plan;

/* shard_size must be >= 1. */
int sy_plan_make(sy_plan *p, const ck_config *cfg, int mtp, uint64_t shard_size, dsr1_err *err);
void sy_plan_free(sy_plan *p); /* NULL / zeroed is a no-op */
/* "model-%05u-of-%06u.safetensors" with 1-based index i+1. */
void sy_file_name(char *buf, size_t len, uint32_t i, uint32_t n_files);

/* JSON texts (caller frees; NULL on out of memory). */
char *sy_index_json(const sy_plan *p);
char *sy_generation_config_json(const ck_config *cfg);

/* Values: rows [r0, r1) of tensor d as f32 (rows = shape[0] for 2-D, 1 for 1-D;
 * cols = the last dim), before any FP8/BF16 encoding. d must not be a scale. */
void sy_gen_rows(uint64_t seed, const ck_tensor_desc *d, const ck_config *cfg, uint64_t r0,
                 uint64_t r1, float *out);

typedef struct sy_opts {
    const char *out_dir;
    uint64_t seed;
    int metadata_only;
    int force;             /* overwrite a checkpoint already in out_dir */
    /* Called from worker threads (must be thread-safe) with bytes of tensor data done. */
    void (*progress)(void *ctx, uint64_t bytes);
    /* Called with the current file name before it is written (main thread). */
    void (*progress_item)(void *ctx, const char *name);
    void *progress_ctx;
    /* Temp files: active = 1 right after creation, 0 after rename/unlink (main thread).
     * Tools hook this to cli_cleanup_register/unregister. */
    void (*temp_file)(void *ctx, const char *path, int active);
    void *temp_ctx;
} sy_opts;

/* Write the checkpoint described by p into o->out_dir (created, with parents, if
 * missing). Refuses (DSR1_E_USAGE, SY_ERR_OUT_EXISTS) when the directory already holds
 * config.json, the index or model-*.safetensors, unless o->force; with force, stale
 * model-NNNNN-of-NNNNNN.safetensors files that this run does not write are removed. */
int sy_write(const sy_plan *p, const sy_opts *o, dsr1_err *err);

#endif
