/* oci: a dsr1-shard output as an OCI image layout (image-spec v1.1) of CNCF
 * ModelPack artifacts, so stock tools push it to any registry
 * (`oras cp --from-oci-layout`, `skopeo copy oci:`). Spec: docs/formats/pack.md.
 *
 * Layout written by oci_create:
 *   OUT/oci-layout        {"imageLayoutVersion":"1.0.0"}
 *   OUT/index.json        image index: one image manifest per scope (pk_scopes), each
 *                         tagged by annotation org.opencontainers.image.ref.name =
 *                         "all" | "node-NN" | "rank-NNN"
 *   OUT/blobs/sha256/<hex>  content-addressed blobs:
 *     - image manifest: mediaType application/vnd.oci.image.manifest.v1+json,
 *       artifactType OCI_ARTIFACT_MODEL, config OCI_MT_MODEL_CONFIG, layers:
 *         XXH128SUMS, manifest.json   OCI_MT_WEIGHT_CONFIG_RAW
 *         each shard file (by name)   OCI_MT_WEIGHT_RAW
 *       every layer uncompressed (the file's bytes) with annotations
 *       org.cncf.model.filepath and org.opencontainers.image.title = the file name
 *       (the latter is what `oras pull` names files by);
 *     - model config (ModelPack): descriptor, config (format safetensors, precision),
 *       modelfs {type "layers", diffIds = the layer digests in order};
 *     - one blob per file; scopes share them.
 * Every digest is SHA-256 (libcrypto EVP); files are hashed (and XXH3-checked against
 * the manifest) while copied, in parallel across files. Output is a pure function of
 * the directory's bytes and the options.
 *
 * Lifetimes: nothing returned outlives the call except what the caller frees.
 */
#ifndef DSR1_OCI_H
#define DSR1_OCI_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "pk.h"

#define OCI_LAYOUT_VERSION "1.0.0"
#define OCI_MT_INDEX "application/vnd.oci.image.index.v1+json"
#define OCI_MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define OCI_ARTIFACT_MODEL "application/vnd.cncf.model.manifest.v1+json"
#define OCI_MT_MODEL_CONFIG "application/vnd.cncf.model.config.v1+json"
#define OCI_MT_WEIGHT_RAW "application/vnd.cncf.model.weight.v1.raw"
#define OCI_MT_WEIGHT_CONFIG_RAW "application/vnd.cncf.model.weight.config.v1.raw"
#define OCI_ANN_FILEPATH "org.cncf.model.filepath"
#define OCI_ANN_TITLE "org.opencontainers.image.title"
#define OCI_ANN_REF_NAME "org.opencontainers.image.ref.name"
#define OCI_ANN_CREATED "org.opencontainers.image.created"

typedef struct oci_opts {
    pk_per per;             /* image manifests: one for all, per node or per rank */
    int64_t mtime;          /* createdAt / image.created (seconds since the epoch) */
    const char *name;       /* model name in the ModelPack descriptor; NULL = architecture */
    pk_progress progress;
} oci_opts;

typedef struct oci_result {
    size_t n_manifests, n_blobs;
    uint64_t bytes;         /* bytes of file blobs written */
} oci_result;

/* Write (or update) the layout in out (created if missing). Blobs are written to
 * temp names and renamed; index.json is replaced atomically, last. A shard whose
 * XXH3-128 differs from the manifest fails the run (PK_ERR_SOURCE). */
int oci_create(const char *dir, const char *out, const oci_opts *o, oci_result *res, dsr1_err *err);

/* Extract through the pk stage (pk.h): every blob's SHA-256 and size are checked
 * against its descriptor, and every file's XXH3-128 against the manifest. */
int oci_extract(const char *layout, const char *dest, const pk_extract_opts *o, pk_extract_result *res,
                dsr1_err *err);

/* Layers of the selected image manifest (ref NULL: the only one, else "all"). */
int oci_list(const char *layout, const char *ref, pk_member **out, size_t *n, dsr1_err *err);

#endif
