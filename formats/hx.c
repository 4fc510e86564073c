/* hx: XXH3-128 hashing on top of libxxhash (see hx.h). */
#include "hx.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack in hx_tree's fallback */
#include <xxhash.h>

#define HX_READ_BUF (4u << 20)
#define HX_TREE_CHUNK ((size_t)64 << 20)

struct hx_state {
    XXH3_state_t *st;
};

static hx128 from_xxh(XXH128_hash_t h)
{
    hx128 r = {h.high64, h.low64};
    return r;
}

hx128 hx_buf(const void *p, size_t n)
{
    return from_xxh(XXH3_128bits(p, n));
}

/* Canonical form is big-endian high64 then low64, which is what xxh128sum prints. */
static void canonical(hx128 h, unsigned char out[16])
{
    XXH128_hash_t x = {h.lo, h.hi};
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, x);
    memcpy(out, c.digest, 16);
}

void hx_hex(hx128 h, char out[HX_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char b[16];
    canonical(h, b);
    for (int i = 0; i < 16; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[HX_HEX_LEN] = 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hx_parse(const char *hex, hx128 *out)
{
    XXH128_canonical_t c;
    if (!hex)
        return -1;
    for (int i = 0; i < 16; i++) {
        int a = hexval(hex[2 * i]), b = a < 0 ? -1 : hexval(hex[2 * i + 1]);
        if (a < 0 || b < 0)
            return -1;
        c.digest[i] = (unsigned char)(a << 4 | b);
    }
    if (hex[HX_HEX_LEN] != 0)
        return -1;
    if (out)
        *out = from_xxh(XXH128_hashFromCanonical(&c));
    return 0;
}

int hx_eq(hx128 a, hx128 b)
{
    return a.hi == b.hi && a.lo == b.lo;
}

hx_state *hx_new(void)
{
    hx_state *s = malloc(sizeof *s);
    if (!s)
        return NULL;
    s->st = XXH3_createState();
    if (!s->st) {
        free(s);
        return NULL;
    }
    XXH3_128bits_reset(s->st);
    return s;
}

void hx_reset(hx_state *s)
{
    XXH3_128bits_reset(s->st);
}

void hx_update(hx_state *s, const void *p, size_t n)
{
    if (n)
        XXH3_128bits_update(s->st, p, n);
}

hx128 hx_digest(const hx_state *s)
{
    return from_xxh(XXH3_128bits_digest(s->st));
}

void hx_free(hx_state *s)
{
    if (!s)
        return;
    XXH3_freeState(s->st);
    free(s);
}

int hx_file(const char *path, hx128 *out, dsr1_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dsr1_err_set(err, DSR1_E_IO, HX_ERR_OPEN, errno, "hashing %s: cannot open", path);
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    unsigned char *buf = malloc(HX_READ_BUF);
    hx_state *s = hx_new();
    if (!buf || !s) {
        free(buf);
        hx_free(s);
        close(fd);
        return dsr1_err_set(err, DSR1_E_NOMEM, HX_ERR_NOMEM, 0,
                            "hashing %s: out of memory for the read buffer", path);
    }
    uint64_t off = 0;
    int rc = 0;
    for (;;) {
        ssize_t r = read(fd, buf, HX_READ_BUF);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = dsr1_err_set(err, DSR1_E_IO, HX_ERR_READ, errno,
                              "hashing %s: read failed at offset %llu", path,
                              (unsigned long long)off);
            break;
        }
        if (r == 0)
            break;
        hx_update(s, buf, (size_t)r);
        off += (uint64_t)r;
    }
    if (rc == 0 && out)
        *out = hx_digest(s);
    hx_free(s);
    free(buf);
    close(fd);
    return rc;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

hx128 hx_tree(const void *p, size_t n, size_t chunk)
{
    if (chunk == 0)
        chunk = HX_TREE_CHUNK;
    const unsigned char *b = p;
    size_t pieces = n / chunk + (n % chunk != 0);
    unsigned char prefix[8];
    put_le64(prefix, (uint64_t)chunk);
    unsigned char *dig = malloc(8 + pieces * 16);
    if (!dig) {
        /* Same definition computed serially, without the digest array. */
        XXH3_state_t st;
        XXH3_INITSTATE(&st);
        XXH3_128bits_reset(&st);
        XXH3_128bits_update(&st, prefix, 8);
        for (size_t i = 0; i < pieces; i++) {
            size_t len = i + 1 < pieces ? chunk : n - i * chunk;
            unsigned char d[16];
            canonical(hx_buf(b + i * chunk, len), d);
            XXH3_128bits_update(&st, d, 16);
        }
        return from_xxh(XXH3_128bits_digest(&st));
    }
    memcpy(dig, prefix, 8);
    long np = (long)pieces;
#pragma omp parallel for schedule(dynamic, 1) if (np > 1)
    for (long i = 0; i < np; i++) {
        size_t off = (size_t)i * chunk;
        size_t len = (size_t)i + 1 < pieces ? chunk : n - off;
        canonical(hx_buf(b + off, len), dig + 8 + (size_t)i * 16);
    }
    hx128 r = hx_buf(dig, 8 + pieces * 16);
    free(dig);
    return r;
}

void hx_many(const void *const *ptrs, const size_t *lens, size_t n, hx128 *out)
{
    long nn = (long)n;
#pragma omp parallel for schedule(dynamic, 1) if (nn > 1)
    for (long i = 0; i < nn; i++)
        out[i] = hx_buf(ptrs[i], lens[i]);
}
