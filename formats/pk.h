/* pk: dsr1-pack archives: reproducible pax tar archives of a dsr1-shard output
 * directory (whole, per node or per rank), and their streaming, verifying extraction
 * (which also accepts an OCI image layout written by oci.h). Spec: docs/formats/pack.md.
 *
 * Archive byte layout (uncompressed; with zstd the same bytes form one zstd frame):
 *   for each member, in bytewise name order, which is
 *     .dsr1-pack.json, XXH128SUMS, manifest.json, then the shard files (model-...):
 *     [512]  ustar header, typeflag 'x' (pax extended header), name "PaxHeaders/<name>"
 *     [P]    pax records "path=<name>", "size=<bytes>", "comment=<padding>"; P is a
 *            multiple of 512 chosen so that the member data starts at a multiple of
 *            4096 (the comment record absorbs the difference)
 *     [512]  ustar header, typeflag '0', mode 0644, uid 0, gid 0, uname/gname empty,
 *            mtime fixed (opts), size in octal (0 when >= 8 GiB: the pax size rules)
 *     [data] the file's bytes, zero-padded to 512
 *   then two zero blocks, then zero padding to a multiple of 10240 bytes.
 * So each uncompressed member's data is 4096-aligned in the archive file and can be
 * memory-mapped in place. .dsr1-pack.json lists the archive's scope and members:
 *   {"format":"dsr1-pack","version":1,"scope":"all"|"node"|"rank","index":N,
 *    "manifest_id":"<hex>","members":[{"name":..,"bytes":..},..]}
 * Output is a pure function of the directory's bytes and the options.
 *
 * Extraction ("stage"): members are written to DEST/.dsr1-partial.<name> with space
 * reserved up front, hashed (XXH3-128) while written, and checked against
 * XXH128SUMS / the manifest; only when every expected member has arrived and
 * matched are they renamed to their final names (shards, XXH128SUMS, then
 * manifest.json last) and DEST fsynced. Anything else (a hostile name, a link, a
 * device, a name outside the manifest, a size other than the manifest's, a
 * duplicate, a digest mismatch, a short archive, disk full) removes the temp files
 * and leaves no final name behind. A DEST that already holds another deployment's
 * manifest.json is refused (pk_extract_opts.force overrides). A lock (DEST/.dsr1-pack.lock, flock) keeps two
 * extractions apart; stale temp files of a killed run are removed at the start.
 *
 * Lifetimes: results are owned by the caller and freed with the matching *_free.
 */
#ifndef DSR1_PK_H
#define DSR1_PK_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "mf.h"

#define PK_INDEX_NAME ".dsr1-pack.json"
#define PK_FORMAT "dsr1-pack"
#define PK_VERSION 1
#define PK_ALIGN 4096
#define PK_PARTIAL_PREFIX ".dsr1-partial."
#define PK_LOCK_NAME ".dsr1-pack.lock"

enum {
    PK_ERR_NONE = 0,
    PK_ERR_SOURCE,     /* source directory does not match its manifest */
    PK_ERR_ARCHIVE,    /* archive unreadable, truncated or not a dsr1-pack archive */
    PK_ERR_HOSTILE,    /* refused member: path, type, name, size or duplicate */
    PK_ERR_DIGEST,     /* member bytes differ from the manifest / XXH128SUMS */
    PK_ERR_INCOMPLETE, /* an expected member is missing */
    PK_ERR_WRITE,      /* writing DEST or OUT failed (ENOSPC, EFBIG, EIO) */
    PK_ERR_LOCKED,     /* another extraction holds DEST */
    PK_ERR_DEST,       /* DEST holds another deployment's manifest.json (see o.force) */
};

typedef enum { PK_PER_ALL = 0, PK_PER_NODE, PK_PER_RANK } pk_per;
const char *pk_per_name(pk_per p);     /* "all" | "node" | "rank" */
int pk_per_parse(const char *s, pk_per *out);

/* Progress: bytes processed (may be called from several threads at once), the
 * current item, and the total once known. Any may be NULL. */
typedef struct pk_progress {
    void (*add)(void *ctx, uint64_t bytes);
    void (*item)(void *ctx, const char *name);
    void (*total)(void *ctx, uint64_t bytes);
    void *ctx;
    /* Temp files: active = 1 right after creation, 0 once renamed or removed. */
    void (*temp_file)(void *ctx, const char *path, int active);
    void *temp_ctx;
} pk_progress;

/* One scope (whole deployment, a node or a rank) and the files it needs. */
typedef struct pk_scope {
    char name[32];        /* "all", "node-00", "rank-003" */
    pk_per per;
    uint32_t index;
    size_t n_shards;
    size_t *shards;       /* indices into m->shards, by file name */
} pk_scope;
/* Scopes of a manifest for a split mode; free with pk_scopes_free. */
int pk_scopes(const mf_manifest *m, pk_per per, pk_scope **out, size_t *n, dsr1_err *err);
void pk_scopes_free(pk_scope *s, size_t n);

/* A deployment directory whose manifest.json and XXH128SUMS agree (vf_sums_check). */
typedef struct pk_source {
    char *dir;
    mf_manifest *m;
    char *manifest_buf, *sums_buf;  /* the two files' bytes */
    size_t manifest_len, sums_len;
} pk_source;
int pk_source_open(pk_source **out, const char *dir, dsr1_err *err);
void pk_source_free(pk_source *s);
/* Open shard file `path` (shard k of src) for a sequential copy and check its size
 * against the manifest. *fd is -1 on failure; a missing file is DSR1_E_MISMATCH. */
int pk_source_open_shard(const pk_source *src, size_t k, const char *path, int *fd, dsr1_err *err);

typedef struct pk_create_opts {
    pk_per per;
    int zstd;               /* compress (zstd frame via libarchive) */
    int zstd_level;         /* 1..19; 0 = 3 */
    int64_t mtime;          /* member mtime (seconds since the epoch) */
    pk_progress progress;
} pk_create_opts;

typedef struct pk_archive {
    char *file;             /* path of the archive written */
    uint64_t bytes;         /* archive size */
    uint64_t data_bytes;    /* member bytes */
    size_t n_members;
} pk_archive;

/* Write one archive per scope into out_dir (created if missing): all.tar,
 * node-NN.tar or rank-NNN.tar (+ ".zst"). Every shard's XXH3-128 is checked against
 * the manifest while it is copied; a mismatch fails with PK_ERR_SOURCE and removes
 * the partial archive. Archives are written to "<file>.tmp.<pid>" and renamed. */
int pk_create(const char *dir, const char *out_dir, const pk_create_opts *o, pk_archive **out,
              size_t *n, dsr1_err *err);
void pk_archives_free(pk_archive *a, size_t n);

typedef struct pk_member {
    char *name;
    uint64_t bytes;
    char type;              /* '0' regular, '2' symlink, '1' hardlink, '5' dir, '?' other */
    char *media_type;       /* OCI layers only */
    char *digest;           /* OCI layers only ("sha256:...") */
} pk_member;
/* Members of a tar archive (any tar libarchive reads) or the layers of an OCI
 * layout's manifest (ref: NULL = the only one, or "all"). */
int pk_list(const char *archive, const char *ref, pk_member **out, size_t *n, dsr1_err *err);
void pk_members_free(pk_member *m, size_t n);

typedef struct pk_extract_opts {
    const uint32_t *ranks;  /* extract only what these global ranks load; NULL = all members */
    size_t n_ranks;
    /* When ranks is NULL and select is set, it is called once the archive's manifest
     * is authenticated to choose the ranks (for --rank auto, which needs the plan);
     * *ranks is malloc'd and owned by the stage afterwards. */
    int (*select)(void *ctx, const mf_manifest *m, uint32_t **ranks, size_t *n, dsr1_err *err);
    void *select_ctx;
    const char *ref;        /* OCI layout: manifest ref name (NULL: the only one, or "all") */
    /* DEST/manifest.json, when present, must equal the archive's byte for byte (a
     * rerun, or more ranks of the same deployment); otherwise the extraction fails
     * with PK_ERR_DEST before any shard is written, unless force is set: then that
     * manifest is removed first and same-named files are replaced. Other files of
     * DEST are never touched. */
    int force;
    pk_progress progress;
} pk_extract_opts;

typedef struct pk_extract_result {
    mf_manifest *m;         /* the extracted manifest (caller frees with mf_free) */
    size_t n_files;         /* files placed under final names */
    uint64_t bytes;         /* their bytes */
    size_t n_shards;
    size_t *shards;         /* indices into m->shards that were extracted */
} pk_extract_result;
void pk_extract_result_free(pk_extract_result *r);

/* archive: a .tar / .tar.zst file, "-" for stdin, or an OCI layout directory. */
int pk_extract(const char *archive, const char *dest, const pk_extract_opts *o, pk_extract_result *res,
               dsr1_err *err);

/* ---- staging (shared by the tar and OCI readers) ---- */
typedef struct pk_stage pk_stage;
int pk_stage_open(pk_stage **out, const char *dest, const pk_extract_opts *o, dsr1_err *err);
/* Metadata files from memory: PK_INDEX_NAME (optional for OCI), "XXH128SUMS",
 * "manifest.json". Once both of the latter are in, they are authenticated. */
int pk_stage_meta(pk_stage *s, const char *name, const void *buf, size_t len, dsr1_err *err);
/* The members expected (the archive index or the OCI layer list); names must all
 * be known to the manifest. Call after the metadata. Reports the progress total. */
int pk_stage_expect(pk_stage *s, const char *const *names, size_t n, dsr1_err *err);
/* Start a shard member: validates name, size and duplicates; *skip = 1 when the rank
 * filter does not need it (then call nothing else for it). */
int pk_stage_begin(pk_stage *s, const char *name, uint64_t size, int *skip, dsr1_err *err);
int pk_stage_write(pk_stage *s, const void *buf, size_t len, dsr1_err *err);
int pk_stage_end(pk_stage *s, dsr1_err *err);
/* Check completeness, rename everything into place, fsync DEST; fills res. */
int pk_stage_commit(pk_stage *s, pk_extract_result *res, dsr1_err *err);
void pk_stage_free(pk_stage *s); /* removes temp files not committed; NULL is a no-op */

/* Validate a member name: a plain file name (no '/', not "." or "..", no NUL,
 * at most 255 bytes). 0 ok, -1 not. */
int pk_name_ok(const char *name);

#endif
