/* sh: the conversion engine behind `dsr1-shard run`. Reads an HF DeepSeek-V3/R1
 * checkpoint once and writes one shard file per unique (pp stage, tp rank) of a plan,
 * then XXH128SUMS and, last, manifest.json. Formats: docs/formats/shard.md and
 * docs/formats/manifest.md.
 *
 * How it runs (docs/formats/shard.md, "Conversion"):
 *  - stage by stage; within a stage every source tensor is read once, in file order,
 *    by a reader thread into a ring of batch buffers, and routed to every tp rank that
 *    holds a part of it (OpenMP over (tensor piece, destination) units);
 *  - memory is bounded by the batch size (2 x batch + per-thread staging), never by
 *    the model size;
 *  - per-tensor XXH3-128 is computed while writing (bytes are produced in tensor
 *    order); the per-file XXH3-128 is computed after the file's last byte by reading it
 *    back (page cache), in parallel across the stage's files, before fsync + rename;
 *  - a journal (".dsr1-shard.journal") records every committed shard; with resume,
 *    files whose bytes match a journal or manifest entry are kept.
 *
 * Lifetimes: nothing returned outlives the call; sh_run copies what it needs.
 */
#ifndef DSR1_SHARD_H
#define DSR1_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "ck.h"
#include "err.h"
#include "plan.h"

#define SH_TOOL "dsr1-shard 1.0"
#define SH_JOURNAL ".dsr1-shard.journal"
#define SH_DEFAULT_BATCH (64ULL << 20)

enum {
    SH_ERR_NONE = 0,
    SH_ERR_SOURCE,     /* source tensor missing / misshaped / file truncated */
    SH_ERR_OUT_DIR,    /* cannot create or use the output directory */
    SH_ERR_SPACE,      /* not enough free space for the output */
    SH_ERR_READ,       /* reading a source file failed */
    SH_ERR_WRITE,      /* writing an output file failed */
};

typedef struct sh_opts {
    const char *out_dir;
    int resume;              /* keep files whose bytes match a journal/manifest entry */
    int threads;             /* OpenMP threads; 0 = default */
    uint64_t batch_bytes;    /* read batch size; 0 = SH_DEFAULT_BATCH */
    /* Source bytes consumed (thread-safe callee). */
    void (*progress)(void *ctx, uint64_t bytes);
    void (*progress_item)(void *ctx, const char *name);
    void (*progress_total)(void *ctx, uint64_t total);
    void *progress_ctx;
    /* Temp files: active = 1 right after creation, 0 once renamed or removed. */
    void (*temp_file)(void *ctx, const char *path, int active);
    void *temp_ctx;
    /* Test hook: stop with an I/O error after this many batches (0 = never). */
    uint64_t fail_after_batches;
} sh_opts;

typedef struct sh_stats {
    uint64_t source_bytes;   /* bytes read from the checkpoint */
    uint64_t written_bytes;  /* bytes of shard files written (kept files excluded) */
    size_t files_written, files_kept;
    double seconds_convert;  /* reading + routing + writing */
    double seconds_hash;     /* per-file read-back hash */
    double seconds_sync;     /* fsync + rename */
    uint64_t peak_batch_bytes;
} sh_stats;

/* Check that every tensor the plan needs is in the checkpoint with the expected dtype
 * and shape, and that every weight file is complete (st_open validates sizes).
 * Nothing is written. DSR1_E_INVALID (exit 1) with the tensor and file named. */
int sh_check_source(ck_ckpt *c, const plan *p, dsr1_err *err);

/* Convert. Calls sh_check_source first. On failure no manifest.json exists in out_dir
 * and no temp file is left. */
int sh_run(ck_ckpt *c, const plan *p, const sh_opts *o, sh_stats *stats, dsr1_err *err);

#endif
