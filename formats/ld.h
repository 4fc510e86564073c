/* ld: the shard loader shared by dsr1-verify and dsr1-serve, so "verifies" means
 * "loads". It maps exactly one shard file read-only and proves it is the file the
 * manifest describes:
 *  - size equals shards[i].bytes; header parses (st_open) with data start as recorded;
 *  - __metadata__ coordinates (MF_META_*: format, format_version, manifest_id,
 *    pp_stage, tp_rank) match;
 *  - the tensor table equals the manifest's: same names in the same order, dtype,
 *    shape, absolute offset and byte size;
 *  - optionally (LD_HASH) every tensor's XXH3-128 and the header digest, in parallel.
 * No other shard file is opened.
 *
 * The full check covers every byte of the file: the header digest covers
 * [0, data_start) and the tensor digests cover the data section, which st_open proves
 * is contiguous (no gaps, no overlap, last end = file end). Together with the size
 * check this implies the whole-file digest recorded in the manifest and XXH128SUMS,
 * without reading any byte twice.
 *
 * Hashing maps nothing new: it reads through the st_file mapping, paging chunks in
 * with MADV_POPULATE_READ so a read error or a file that shrank underneath us is an
 * I/O error instead of SIGBUS (kernels before 5.14: plain page faults).
 *
 * Lifetimes: views returned by ld_* live until ld_close(); the manifest passed to
 * ld_open must outlive the ld_shard.
 */
#ifndef DSR1_LD_H
#define DSR1_LD_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "mf.h"
#include "st.h"

enum {
    LD_ERR_NONE = 0,
    LD_ERR_MISSING_FILE,   /* shard file absent */
    LD_ERR_SIZE,           /* size differs from manifest (truncated / extended) */
    LD_ERR_HEADER,         /* st_open failed (detail in message) */
    LD_ERR_METADATA,       /* __metadata__ coordinates / manifest id differ */
    LD_ERR_TABLE,          /* tensor table differs from the manifest's */
    LD_ERR_HASH,           /* a tensor or header hash differs */
    LD_ERR_TENSOR,         /* ld_require: tensor missing or misshaped */
};

enum { LD_HASH = 1 };

typedef struct ld_shard ld_shard;

/* Open shard `shard_index` of manifest `m`, whose files live in directory `dir`. */
int ld_open(ld_shard **out, const mf_manifest *m, const char *dir, size_t shard_index, int flags,
            dsr1_err *err);
void ld_close(ld_shard *s); /* NULL is a no-op */

const st_file *ld_file(const ld_shard *s);
const mf_shard *ld_entry(const ld_shard *s);
/* Zero-copy view of a tensor by name, or NULL. */
const st_tensor *ld_find(const ld_shard *s, const char *name);
/* View with a clear error when missing or when dtype/shape differ (ndim < 0: any shape). */
int ld_require(const ld_shard *s, const char *name, st_dtype dtype, int ndim, const uint64_t *shape,
               const st_tensor **out, dsr1_err *err);

/* Path of the mapped file ("<dir>/<file>"); lives until ld_close(). */
const char *ld_path(const ld_shard *s);

/* Per-tensor hash check (parallel across tensors and chunks). Calls bad(ctx, tensor,
 * msg) for each mismatch; returns the number of mismatches (0 = all good) or a
 * negative status on I/O error. tensor is NULL for the header digest. bad is never
 * called concurrently (bad NULL: err gets a summary of the mismatches); msg names the tensor, its byte range [begin, end) in the
 * file and both digests.
 *
 * Parallelism: tensors are hashed concurrently in file order, one thread per tensor
 * (each digest is a plain sequential XXH3-128). Threads with no tensor left page in
 * chunks ahead of the threads still hashing a large tensor, so one huge tensor is
 * read by several threads while its hash streams. OMP_NUM_THREADS applies. */
typedef void (*ld_bad_fn)(void *ctx, const mf_tensor *t, const char *msg);
int ld_hash_check(const ld_shard *s, ld_bad_fn bad, void *ctx, dsr1_err *err);

/* Same, reporting progress: progress(pctx, bytes hashed so far) is called from the
 * calling thread only, every few MiB and once at the end. */
typedef void (*ld_progress_fn)(void *pctx, uint64_t bytes_done);
int ld_hash_check_progress(const ld_shard *s, ld_bad_fn bad, void *ctx, ld_progress_fn progress,
                           void *pctx, dsr1_err *err);

#endif
