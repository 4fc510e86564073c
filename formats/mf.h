/* mf: the topology manifest (manifest.json) written by dsr1-shard and read by
 * dsr1-verify, dsr1-pack and dsr1-serve. Schema: docs/formats/manifest.md.
 *
 * Two identities:
 *  - manifest_id: XXH3-128 over the canonical JSON of {model, plan}; known before any
 *    shard is written, stored in every shard's __metadata__ ("dsr1.manifest_id").
 *  - file digest: XXH3-128 of manifest.json's bytes as written (canonical: fixed key
 *    order, compact), listed in XXH128SUMS and exchanged by runtime ranks before the
 *    first collective.
 *
 * Lifetimes: an mf_manifest owns all its strings and arrays; mf_free() releases them.
 */
#ifndef DSR1_MF_H
#define DSR1_MF_H

#include <stddef.h>
#include <stdint.h>

#include "ck.h"
#include "err.h"
#include "hx.h"
#include "st.h"

#define MF_FORMAT "dsr1-manifest"
#define MF_VERSION 1

/* Keys every shard file carries in its safetensors __metadata__ (docs/formats/shard.md).
 * Values are decimal strings or lowercase hex; "format" = "pt" is the HF convention. */
#define MF_META_FORMAT "dsr1.format"             /* MF_SHARD_FORMAT */
#define MF_SHARD_FORMAT "dsr1-shard"
#define MF_META_VERSION "dsr1.format_version"    /* "1" */
#define MF_SHARD_VERSION 1
#define MF_META_MANIFEST_ID "dsr1.manifest_id"   /* 32 hex, = manifest_id */
#define MF_META_PP_STAGE "dsr1.pp_stage"
#define MF_META_TP_RANK "dsr1.tp_rank"

enum {
    MF_ERR_NONE = 0,
    MF_ERR_OPEN,      /* cannot read manifest.json */
    MF_ERR_JSON,      /* not JSON */
    MF_ERR_FORMAT,    /* "format" is not dsr1-manifest */
    MF_ERR_VERSION,   /* unsupported version */
    MF_ERR_FIELD,     /* missing/mistyped field (message names the JSON path) */
    MF_ERR_VALUE,     /* inconsistent value (e.g. ranks != world_size, bad file name) */
};

typedef struct mf_source_file {
    char *file;       /* relative name in the checkpoint dir */
    uint64_t bytes;
} mf_source_file;

typedef struct mf_slice {
    char *name;       /* source tensor name (HF) */
    int dim;          /* -1 = whole tensor (JSON null) */
    uint64_t start, end;
} mf_slice;

typedef struct mf_tensor {
    char *name;
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t offset;  /* absolute byte offset in the shard file */
    uint64_t bytes;
    hx128 xxh3_128;   /* plain XXH3-128 of the tensor bytes */
    mf_slice source;
    char *transform;  /* "copy" | "dequant_bf16" | ... */
    double quant_rel_rms; /* relative RMS error vs the dequantized source; <0 = not recorded */
} mf_tensor;

typedef struct mf_shard {
    char *file;       /* relative name in the output dir, no '/' */
    uint64_t bytes;   /* file size */
    hx128 xxh3_128;   /* XXH3-128 of the whole file (as xxh128sum) */
    uint64_t data_start;   /* header bytes [0, data_start) */
    hx128 header_xxh3_128; /* XXH3-128 of bytes [0, data_start) */
    uint32_t pp_stage, tp_rank;
    int32_t layer_first, layer_last; /* decoder layers held, inclusive; -1 when none */
    size_t n_tensors;
    mf_tensor *tensors; /* in file order */
} mf_shard;

typedef struct mf_rank {
    uint32_t rank, node, local_rank, dp, pp, tp;
    uint32_t shard;   /* index into shards[] */
} mf_rank;

typedef struct mf_plan {
    uint32_t tp, ep, pp, dp, world_size, nodes, gpus_per_node;
    char dtype[16];   /* "fp8" | "bf16" */
    int mtp;
} mf_plan;

typedef struct mf_manifest {
    int version;
    char *architecture;   /* "DeepseekV3ForCausalLM" */
    ck_config config;     /* parsed from the embedded model.config object */
    char *config_json;    /* the source config.json text, verbatim */
    hx128 config_xxh3_128;/* XXH3-128 of config.json bytes */
    size_t n_sources;
    mf_source_file *sources;
    mf_plan plan;
    hx128 manifest_id;
    size_t n_shards;
    mf_shard *shards;
    size_t n_ranks;
    mf_rank *ranks;
    char *tool;           /* "dsr1-shard <version>" */
} mf_manifest;

/* Parse and validate (schema, version, internal consistency: ranks cover world_size,
 * shard files unique and plain names, tensor offsets within file bytes and sorted). */
int mf_load(mf_manifest **out, const char *path, dsr1_err *err);
int mf_parse(mf_manifest **out, const char *json, size_t len, const char *label, dsr1_err *err);
/* Canonical JSON text (malloc'd, caller frees). Same manifest -> same bytes. */
char *mf_to_json(const mf_manifest *m);
/* Atomic write of mf_to_json() (temp, fsync, rename, fsync dir); returns its digest. */
int mf_save(const mf_manifest *m, const char *path, hx128 *file_digest, dsr1_err *err);
/* Atomic write of manifest text already produced by mf_to_json (for callers that
 * hash it first, e.g. to list it in XXH128SUMS before writing it). */
int mf_save_text(const char *text, size_t len, const char *path, dsr1_err *err);
/* Compute manifest_id from {model, plan} (fills m->manifest_id too). */
hx128 mf_compute_id(mf_manifest *m);
void mf_free(mf_manifest *m); /* NULL is a no-op */

const mf_shard *mf_shard_of_rank(const mf_manifest *m, uint32_t rank); /* NULL if out of range */
const mf_tensor *mf_find_tensor(const mf_shard *s, const char *name);  /* NULL if absent */

/* One shards[] entry on its own (compact JSON object, same fields as in manifest.json),
 * for dsr1-shard's resume journal. mf_shard_parse validates it against `plan` like
 * mf_parse does; mf_shard_clear frees what it owns. */
char *mf_shard_to_json(const mf_shard *s);
int mf_shard_parse(mf_shard *out, const char *json, size_t len, const mf_plan *plan, const char *label,
                   dsr1_err *err);
void mf_shard_clear(mf_shard *s);

/* XXH128SUMS: "<32 hex>  <file>\n" per line, sorted by file name, manifest.json included. */
int mf_sums_write(const char *path, const char *const *files, const hx128 *digests, size_t n,
                  dsr1_err *err);
/* Parse XXH128SUMS; arrays malloc'd (free each files[i], then both arrays). */
int mf_sums_read(const char *path, char ***files, hx128 **digests, size_t *n, dsr1_err *err);

#endif
