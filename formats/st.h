/* st: safetensors reader (mmap, zero-copy) and streaming atomic writer.
 *
 * File layout (https://github.com/huggingface/safetensors):
 *   [0, 8)            u64 little-endian N = header length in bytes
 *   [8, 8+N)          UTF-8 JSON object, padded at the end with spaces (0x20)
 *   [8+N, EOF)        data section; tensor offsets are relative to 8+N
 * JSON: { "__metadata__": {str: str, ...}?,
 *         "<name>": {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, ... }
 * Accepted files: see docs/formats/safetensors.md. Every rejection has its own ST_ERR_* code.
 *
 * Lifetimes: an st_file owns its mapping; every pointer it hands out (names,
 * metadata strings, tensor data) is const and lives until st_close().
 */
#ifndef DSR1_ST_H
#define DSR1_ST_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER 100000000ULL

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_F8_E4M3, ST_F8_E5M2, ST_I16, ST_U16, ST_F16, ST_BF16,
    ST_I32, ST_U32, ST_F32, ST_F64, ST_I64, ST_U64,
    ST_DTYPE_COUNT
} st_dtype;

const char *st_dtype_name(st_dtype d);           /* "F8_E4M3" etc. */
int st_dtype_parse(const char *s, st_dtype *out);/* 0 ok, -1 unknown */
size_t st_dtype_size(st_dtype d);                /* bytes per element */

/* Precise rejection causes (dsr1_err.code). */
enum {
    ST_ERR_NONE = 0,
    ST_ERR_OPEN,            /* cannot open/stat/mmap (status IO) */
    ST_ERR_TOO_SMALL,       /* file shorter than 8 bytes */
    ST_ERR_HEADER_TOO_LARGE,/* N > 100,000,000 */
    ST_ERR_HEADER_BEYOND_EOF,/* 8 + N > file size */
    ST_ERR_HEADER_NOT_OBJECT,/* header does not start with '{' */
    ST_ERR_HEADER_UTF8,     /* header is not valid UTF-8 */
    ST_ERR_HEADER_JSON,     /* JSON syntax error */
    ST_ERR_DUPLICATE_KEY,   /* the same tensor name twice */
    ST_ERR_ENTRY_NOT_OBJECT,/* tensor entry not an object */
    ST_ERR_ENTRY_FIELDS,    /* missing or extra field (must be exactly dtype/shape/data_offsets) */
    ST_ERR_DTYPE,           /* unknown dtype */
    ST_ERR_SHAPE,           /* shape not an array of non-negative integers, or too many dims */
    ST_ERR_OFFSETS,         /* data_offsets not [begin, end] integers with begin <= end */
    ST_ERR_SIZE_OVERFLOW,   /* shape product x element size overflows u64 */
    ST_ERR_SIZE_MISMATCH,   /* shape x element size != end - begin */
    ST_ERR_OFFSET_GAP,      /* offsets not contiguous from 0 (gap or overlap) */
    ST_ERR_DATA_LENGTH,     /* last end != size of data section */
    ST_ERR_METADATA,        /* __metadata__ not an object of string -> string */
    ST_ERR_NAME,            /* empty tensor name */
    ST_ERR_WRITE,           /* writer: I/O failure (status IO) */
    ST_ERR_WRITER_STATE,    /* writer: misuse (bytes missing at commit, write out of range) */
};

typedef struct st_tensor {
    const char *name;
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
    uint64_t nelem;
    uint64_t begin, end;    /* data_offsets, relative to the data section */
    uint64_t file_offset;   /* absolute: data_start + begin */
    uint64_t nbytes;        /* end - begin */
    const void *data;       /* into the mapping (NULL for st_parse_header results) */
} st_tensor;

typedef struct st_file st_file;

/* Map `path` read-only and validate it completely (header + offsets vs file size).
 * Tensor data pages are not touched. */
int st_open(st_file **out, const char *path, dsr1_err *err);
/* Validate an in-memory image (fuzzing, tests). `buf` must outlive the st_file; `label`
 * stands in for the file name in messages. */
int st_open_mem(st_file **out, const void *buf, size_t len, const char *label, dsr1_err *err);
void st_close(st_file *f); /* NULL is a no-op */

const char *st_path(const st_file *f);
uint64_t st_file_size(const st_file *f);
uint64_t st_header_len(const st_file *f);  /* N */
uint64_t st_data_start(const st_file *f);  /* 8 + N */
const void *st_base(const st_file *f);     /* start of the mapping (byte 0 of the file) */
size_t st_count(const st_file *f);         /* tensors, sorted by data offset */
const st_tensor *st_get(const st_file *f, size_t i);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL if absent; O(log n) */
size_t st_meta_count(const st_file *f);
int st_meta_at(const st_file *f, size_t i, const char **key, const char **val);
const char *st_meta_get(const st_file *f, const char *key); /* NULL if absent */

/* ---- writer ----
 * The caller declares every tensor up front (order = data order), then writes each
 * tensor's bytes in any order and from any thread (pwrite at fixed offsets), then
 * commits. Output goes to "<path>.tmp.<pid>", space is reserved with
 * fallocate(2) (ENOSPC surfaces at open), and commit does fsync, rename,
 * fsync(dir). Abort (or st_writer_free without commit) unlinks the temp file.
 * Output is a pure function of (specs, metadata, options). */
typedef struct st_spec {
    const char *name;
    st_dtype dtype;
    int ndim;
    uint64_t shape[ST_MAX_DIMS];
} st_spec;

typedef struct st_write_opts {
    uint64_t data_align;   /* data section starts at a multiple of this (0 -> 8). Shards: 4096 */
    int check_align_rule;  /* 1: fail unless the order satisfies design.md's alignment rule */
    int no_reserve;        /* 1: only set the file size (sparse) instead of reserving blocks with
                            * fallocate. For callers that checked free space themselves: on ext4,
                            * buffered writes into reserved (unwritten) extents cost ~4x the
                            * kernel time. ENOSPC then surfaces at write time. */
} st_write_opts;

typedef struct st_writer st_writer;

/* meta_kv: n_meta pairs {key0, val0, key1, val1, ...}; written in the given order. */
int st_writer_open(st_writer **out, const char *path, const st_spec *specs, size_t n,
                   const char *const *meta_kv, size_t n_meta, const st_write_opts *opts,
                   dsr1_err *err);
uint64_t st_writer_data_start(const st_writer *w);
uint64_t st_writer_tensor_offset(const st_writer *w, size_t i); /* absolute file offset */
uint64_t st_writer_tensor_bytes(const st_writer *w, size_t i);
uint64_t st_writer_file_size(const st_writer *w);
/* Header bytes [0, data_start) as they will be written; valid until free. */
const void *st_writer_header(const st_writer *w, size_t *len);
/* Write `len` bytes of tensor i at byte `off` within the tensor. Thread-safe across
 * disjoint ranges. */
int st_writer_write(st_writer *w, size_t i, uint64_t off, const void *buf, size_t len, dsr1_err *err);
/* Fails with ST_ERR_WRITER_STATE if any tensor byte was never written. */
int st_writer_commit(st_writer *w, dsr1_err *err);
void st_writer_abort(st_writer *w);   /* remove the temp file */
void st_writer_free(st_writer *w);    /* aborts if not committed; NULL is a no-op */
const char *st_writer_tmp_path(const st_writer *w);

/* Stable order satisfying the alignment rule: tensors whose byte size is a multiple
 * of 256 first (in input order), then the rest by element size descending; ties keep
 * input order. Fills perm[0..n) with input indices. Allocates nothing. */
void st_align_order(const st_spec *specs, size_t n, size_t *perm);

/* fsync the directory containing `path` (after rename). */
int st_fsync_dir(const char *path, dsr1_err *err);

#endif
