/* ld: the shard loader shared by dsr1-verify and dsr1-serve, so "verifies" means
 * "loads". It maps exactly one shard file read-only and proves it is the file the
 * manifest describes:
 *  - size equals shards[i].bytes; header parses (st_open) with data start as recorded;
 *  - __metadata__ coordinates (format, manifest_id, pp_stage, tp_rank) match;
 *  - the tensor table equals the manifest's: same names in the same order, dtype,
 *    shape, absolute offset and byte size;
 *  - optionally (LD_HASH) every tensor's XXH3-128 and the header digest, in parallel.
 * No other shard file is opened.
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

/* Per-tensor hash check (parallel across tensors and chunks). Calls bad(ctx, tensor,
 * msg) for each mismatch; returns the number of mismatches (0 = all good) or a
 * negative status on I/O error. */
typedef void (*ld_bad_fn)(void *ctx, const mf_tensor *t, const char *msg);
int ld_hash_check(const ld_shard *s, ld_bad_fn bad, void *ctx, dsr1_err *err);

#endif
