/* vf: the verification engine behind dsr1-verify (and `dsr1-pack extract --verify`).
 *
 * It checks a dsr1-shard output directory against its manifest, through the same
 * loader the runtime uses (ld), so "verifies" means "loads":
 *  1. manifest.json parses and validates (mf_parse: schema, version, consistency);
 *     its XXH3-128 equals the manifest.json line of XXH128SUMS (an edited manifest
 *     is caught here), and every other XXH128SUMS line names a shard of the manifest
 *     with the manifest's digest, with none missing;
 *  2. the plan matches the expectation, when one is given;
 *  3. each selected shard: ld_open (present, size, header, __metadata__, tensor
 *     table); unless quick, every tensor digest and the header digest. These cover
 *     every byte of the file exactly once (see ld.h), which implies the whole-file
 *     digest; with file_hashes the whole-file XXH3-128 is also recomputed (a second
 *     read, as `xxh128sum -c` would do);
 *  4. with all shards selected: no extra regular file besides manifest.json,
 *     XXH128SUMS and the shards (names starting with '.' and directories ignored);
 *  5. with a source checkpoint: within each pp stage every element of a split
 *     source tensor is covered exactly once, whole copies are identical, every
 *     expected checkpoint tensor is held somewhere, and each shard tensor equals
 *     source.narrow(dim, start, end - start) after its transform ("copy": bytes equal;
 *     "dequant_bf16": equal to round-to-nearest-even BF16 of the block dequant).
 *     Other transforms are counted as not value-checked. With a rank selection only
 *     the selected shards' values are checked (coverage needs every shard).
 * With a rank selection no other shard file is opened, stat'ed or listed.
 *
 * Results come back as one item per file: the file name (relative to the
 * directory) and, when it failed, its reasons. Pseudo-files "(source) pp stage N"
 * carry coverage problems.
 *
 * Lifetimes: item strings passed to the callback live only during the call.
 */
#ifndef DSR1_VF_H
#define DSR1_VF_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "mf.h"

/* Plan expectation: fields < 0 (and an empty dtype) are not checked. */
typedef struct vf_expect {
    int64_t tp, ep, pp, dp, world_size, nodes, gpus_per_node, mtp;
    char dtype[16];
} vf_expect;
void vf_expect_init(vf_expect *e);
/* Set one key ("tp", "ep", "pp", "dp", "world_size" or "world", "nodes",
 * "gpus_per_node", "mtp" (0/1), "dtype"); DSR1_E_USAGE for an unknown key or value. */
int vf_expect_set(vf_expect *e, const char *key, const char *value, dsr1_err *err);
/* Compare: writes "tp is 4, expected 8; ..." into msg and returns 1 on mismatch. */
int vf_expect_check(const vf_expect *e, const mf_plan *p, char *msg, size_t cap);

typedef struct vf_opts {
    int quick;              /* structure only: no tensor data is read */
    int file_hashes;        /* also recompute each selected file's whole-file XXH3-128 */
    const char *source;     /* checkpoint directory for the rebuild check, or NULL */
    const uint32_t *ranks;  /* check only the shards these global ranks load; NULL = all */
    size_t n_ranks;
    const vf_expect *expect;/* NULL = no plan expectation */
} vf_opts;

typedef struct vf_item {
    const char *file;
    int ok;
    uint64_t bytes;               /* bytes hashed for this item */
    size_t n_reasons;
    const char *const *reasons;   /* each names the tensor and byte range where it applies */
} vf_item;
typedef void (*vf_item_fn)(void *ctx, const vf_item *it);
/* Bytes hashed so far (monotonic), from the calling thread; total known at start. */
typedef void (*vf_progress_fn)(void *ctx, uint64_t done, uint64_t total, const char *file);

typedef struct vf_summary {
    size_t files_ok, files_failed;
    size_t shards_checked;       /* shard files fully checked (structure [+ hashes]) */
    size_t tensors_hashed;
    uint64_t bytes_hashed;
    size_t source_tensors_checked;   /* value-compared with the checkpoint */
    size_t source_tensors_differ;    /* of those, not equal */
    size_t source_tensors_unchecked; /* transforms the value check does not cover */
    double seconds;
    char ranks_desc[128];        /* "all", "rank 3", "ranks 8-15" */
} vf_summary;

/* Run the checks on directory dir. Returns 0 when every item is OK and at least one
 * shard was checked; DSR1_E_MISMATCH when any item failed (or nothing was checked);
 * DSR1_E_IO / DSR1_E_NOMEM on a system error (err says which file), after reporting
 * the items done so far; DSR1_E_USAGE for a bad rank. */
int vf_run(const char *dir, const vf_opts *o, vf_item_fn item, void *item_ctx, vf_progress_fn progress,
           void *progress_ctx, vf_summary *sum, dsr1_err *err);

/* The manifest <-> XXH128SUMS consistency of step 1, shared with dsr1-pack:
 * manifest_digest is the XXH3-128 of the manifest.json bytes. Writes the first
 * problem into msg and returns the number of problems. */
int vf_sums_check(const mf_manifest *m, hx128 manifest_digest, char *const *files,
                  const hx128 *digests, size_t n, char *msg, size_t cap);

/* Shards loaded by the given ranks, deduplicated, ascending; returns the count
 * written to out (capacity m->n_shards), or -1 with err set for an unknown rank. */
long vf_shards_of_ranks(const mf_manifest *m, const uint32_t *ranks, size_t n, size_t *out,
                        dsr1_err *err);

#endif
