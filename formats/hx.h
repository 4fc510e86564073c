/* hx: XXH3-128 hashing (libxxhash), canonical hex as `xxh128sum` prints it, and
 * parallel helpers for large buffers.
 *
 * Definitions used across the project:
 *  - hx_buf(): plain XXH3-128 (seed 0) of the bytes, identical to `xxh128sum`.
 *  - hx_tree(): a chunked tree hash for parallel hashing of one large buffer:
 *      XXH3-128 over the concatenation of the canonical (big-endian, 16-byte)
 *      digests of consecutive `chunk`-byte pieces (last piece may be short), with
 *      the chunk size mixed in as an 8-byte little-endian prefix. It is NOT equal to
 *      hx_buf(); it is used only where documented (docs/formats/manifest.md).
 *      Exactly: hx_buf(le64(chunk) || canon(hx_buf(piece_0)) || ... || canon(hx_buf(piece_k-1)))
 *      with k = ceil(n / chunk) (k = 0 for an empty buffer: the hash of the prefix alone).
 *
 * Thread safety: every function is reentrant; one hx_state must not be shared by
 * threads without locking.
 */
#ifndef DSR1_HX_H
#define DSR1_HX_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct hx128 {
    uint64_t hi, lo; /* XXH128_hash_t high64/low64 */
} hx128;

#define HX_HEX_LEN 32

/* dsr1_err.code values set by hx_file. */
enum { HX_ERR_OPEN = 1, HX_ERR_READ = 2, HX_ERR_NOMEM = 3 };

hx128 hx_buf(const void *p, size_t n);
/* 32 lowercase hex chars + NUL, in the order xxh128sum prints (high64 then low64). */
void hx_hex(hx128 h, char out[HX_HEX_LEN + 1]);
int hx_parse(const char *hex, hx128 *out); /* 0 ok, -1 not exactly 32 hex chars (any case) */
int hx_eq(hx128 a, hx128 b);

/* Streaming state (wraps XXH3_state_t). hx_new returns a reset state, or NULL when
 * out of memory; hx_digest may be called at any point and updating may continue. */
typedef struct hx_state hx_state;
hx_state *hx_new(void);
void hx_reset(hx_state *s);
void hx_update(hx_state *s, const void *p, size_t n);
hx128 hx_digest(const hx_state *s);
void hx_free(hx_state *s); /* NULL is a no-op */

/* Hash a whole file by streaming read() in 4 MiB pieces with sequential read-ahead
 * advice (the file hash in XXH128SUMS). 0 ok, else DSR1_E_IO (HX_ERR_OPEN/READ, errno
 * kept) or DSR1_E_NOMEM, with the path (and offset for read errors) in err. */
int hx_file(const char *path, hx128 *out, dsr1_err *err);

/* Tree hash (see above); OpenMP-parallel across chunks. chunk 0 -> 64 MiB. */
hx128 hx_tree(const void *p, size_t n, size_t chunk);

/* Hash n independent buffers in parallel: out[i] = hx_buf(ptrs[i], lens[i]). */
void hx_many(const void *const *ptrs, const size_t *lens, size_t n, hx128 *out);

#endif
