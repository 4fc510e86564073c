/* boot: TCP rendezvous of the runtime ranks before the first collective.
 *
 * Rank 0 listens on MASTER_PORT (all addresses). Every other rank connects to
 * MASTER_ADDR:MASTER_PORT, retrying until its deadline, and sends HELLO with its rank,
 * world size, manifest digest, plan text and shard identity. Rank 0 checks each one
 * against its own (world size, rank range and uniqueness, digest, plan, and the shard
 * the manifest assigns to that rank) and, once all world_size - 1 peers have joined,
 * answers every rank with the NCCL unique id (an opaque 128-byte blob that the caller
 * made; boot needs no CUDA). On the first mismatch, or when the deadline passes with
 * ranks missing, rank 0 answers every connected rank with the same failure message,
 * naming the offending rank, keeps answering late ranks for linger_ms, and fails itself
 * with that message. The connections stay open after a successful join so that
 * rt_boot_barrier() can fence later phases (e.g. "loaded": shard checked and uploaded)
 * and turn a rank that failed or died into one clear error on every rank.
 *
 * Every wait is bounded: connect retries until timeout_ms, reads use poll() with the
 * remaining time, a closed peer is reported by rank, nothing blocks forever.
 *
 * Wire format (all integers little-endian): frame = u32 magic "DSRB", u32 type,
 * u32 payload length (<= 8192), payload. Strings are u16 length + bytes.
 *   HELLO (1):  u32 version, u32 rank, u32 world, 16 B digest, str plan, str shard, str host
 *   WELCOME(2): u32 status (0 ok, 1 failed), u32 world, 128 B unique id, str message
 *   FENCE (3):  u32 seq, u32 ok, str phase, str reason          (rank r -> rank 0)
 *   FENCE_R(4): u32 seq, u32 status (0 ok, else RT_BOOT_ERR_*), str message (rank 0 -> all)
 *
 * Lifetimes: rt_boot owns its sockets; rt_boot_close() closes them (NULL is a no-op).
 */
#ifndef DSR1_BOOT_H
#define DSR1_BOOT_H

#include <stdint.h>

#include "err.h"

#define RT_BOOT_ID_BYTES 128
#define RT_BOOT_STR_MAX 512

enum {
    RT_BOOT_ERR_NONE = 0,
    RT_BOOT_ERR_LISTEN,   /* rank 0 cannot listen (port in use, ...) */
    RT_BOOT_ERR_CONNECT,  /* rank 0 not reachable before the deadline */
    RT_BOOT_ERR_TIMEOUT,  /* ranks missing, or no answer, before the deadline */
    RT_BOOT_ERR_PEER,     /* a peer closed its connection or sent garbage */
    RT_BOOT_ERR_MISMATCH, /* digest / plan / shard / world size / rank differs */
    RT_BOOT_ERR_REMOTE,   /* another rank failed a fence */
};

/* What this rank says about itself. */
typedef struct rt_boot_self {
    int rank, world_size;
    uint8_t digest[16];           /* manifest.json digest */
    char plan[RT_BOOT_STR_MAX];   /* canonical plan text, same on every rank */
    char shard[RT_BOOT_STR_MAX];  /* identity of the shard this rank loads */
    char host[64];                /* for messages; empty = gethostname() */
} rt_boot_self;

typedef struct rt_boot_opts {
    const char *addr;  /* rank 0's address (ignored on rank 0, which listens on all) */
    int port;
    int timeout_ms;    /* rendezvous deadline; <= 0: 300000 */
    int linger_ms;     /* rank 0, after a failure: answer late ranks this long; < 0: 2000 */
    /* rank 0 only: */
    const uint8_t *unique_id;          /* RT_BOOT_ID_BYTES handed to every rank */
    const char *const *expect_shard;   /* [world_size] shard identity per rank, or NULL */
} rt_boot_opts;

typedef struct rt_boot rt_boot;

/* Join the rendezvous. On success *out is open and id_out (may be NULL) holds rank 0's
 * unique id. On failure every rank gets the same message; status DSR1_E_MISMATCH for
 * mismatches (exit 1), DSR1_E_IO for timeouts and dead peers (exit 3). */
int rt_boot_join(rt_boot **out, const rt_boot_self *self, const rt_boot_opts *o,
                 uint8_t id_out[RT_BOOT_ID_BYTES], dsr1_err *err);

/* Fence: every rank reports whether it completed `phase` (ok != 0) or why not; returns
 * 0 on every rank only if all ranks reported ok within timeout_ms, else one message
 * naming the first failed, dead or missing rank. */
int rt_boot_fence(rt_boot *b, const char *phase, int ok, const char *reason, int timeout_ms,
                  dsr1_err *err);

int rt_boot_rank(const rt_boot *b);
int rt_boot_world(const rt_boot *b);
void rt_boot_close(rt_boot *b);

#endif
