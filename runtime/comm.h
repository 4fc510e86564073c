/* rt_comm: collective and point-to-point communication between the ranks of a
 * parallel plan. One interface, several backends:
 *   - in-process (runtime/comm_inproc.c): every rank is a thread of one process,
 *     buffers are host memory; used by the CPU backend and the tests;
 *   - NCCL (runtime/comm_nccl.*, CUDA builds): one process per GPU, buffers are
 *     device memory on the backend's stream.
 *
 * Rank layout (design.md "Parallel plan"): tp fastest, then pp, then dp:
 *   rank = tp_rank + tp * (pp_rank + pp * dp_rank)
 * Groups a rank belongs to:
 *   RT_GROUP_WORLD  every rank                       (index = rank)
 *   RT_GROUP_TP     same dp and pp, tp varies        (index = tp_rank)
 *   RT_GROUP_PP     same dp and tp, pp varies        (index = pp_rank)
 * Every member of a group must make the same sequence of collective calls on that
 * group with the same sizes (as with NCCL).
 *
 * Errors: calls return 0 or a negative DSR1_E_* status and fill err. A rank that
 * fails calls rt_comm_abort(); every call blocked in, or later entering, a
 * collective on any rank of the deployment then returns DSR1_E_IO with a message
 * naming the aborting rank and its reason, so one failure never becomes a hang.
 *
 * Lifetimes: a rank's rt_comm is used by one thread at a time and released with
 * rt_comm_free(); buffers passed in are only borrowed for the call.
 */
#ifndef DSR1_RT_COMM_H
#define DSR1_RT_COMM_H

#include <stddef.h>

#include "err.h"

typedef enum { RT_GROUP_WORLD = 0, RT_GROUP_TP, RT_GROUP_PP, RT_GROUP_COUNT } rt_group;

enum {
    RT_COMM_ERR_NONE = 0,
    RT_COMM_ERR_ABORTED,   /* a peer called rt_comm_abort */
    RT_COMM_ERR_ARG,       /* bad group / peer / root / size */
    RT_COMM_ERR_BACKEND,   /* backend-specific failure (NCCL, socket, ...) */
    RT_COMM_ERR_TIMEOUT,   /* a peer did not arrive in time */
};

typedef struct rt_comm rt_comm;

/* The vtable a backend implements. Sizes are in elements for all-reduce, in bytes
 * otherwise. */
typedef struct rt_comm_ops {
    const char *name;      /* "inproc", "nccl" */
    /* In place: buf[i] = sum over the group members of buf[i]; every member ends
     * with bit-identical results. */
    int (*allreduce_sum_f32)(rt_comm *c, rt_group g, float *buf, size_t n, dsr1_err *err);
    /* recv = concatenation of every member's `bytes` of send, in group-index order
     * (recv holds group_size * bytes). send may alias recv + index * bytes. */
    int (*allgather)(rt_comm *c, rt_group g, const void *send, size_t bytes, void *recv,
                     dsr1_err *err);
    /* buf of the member with group index `root` is copied to every member. */
    int (*broadcast)(rt_comm *c, rt_group g, void *buf, size_t bytes, int root, dsr1_err *err);
    /* Point to point with a global peer rank. Messages between one pair arrive in
     * order; send may complete before the matching recv is posted (inproc buffers it). */
    int (*send)(rt_comm *c, const void *buf, size_t bytes, int peer, dsr1_err *err);
    int (*recv)(rt_comm *c, void *buf, size_t bytes, int peer, dsr1_err *err);
    int (*barrier)(rt_comm *c, rt_group g, dsr1_err *err);
    /* Mark the deployment failed (reason copied) and wake every waiter. Idempotent. */
    void (*abort)(rt_comm *c, const char *reason);
    void (*free)(rt_comm *c);
} rt_comm_ops;

struct rt_comm {
    const rt_comm_ops *ops;
    void *impl;                 /* backend state */
    int rank, size;             /* global */
    int tp, pp, dp;             /* plan sizes; size = tp * pp * dp */
    int tp_rank, pp_rank, dp_rank;
};

/* Fill the layout fields of c from (rank, tp, pp, dp). Returns -1 if inconsistent. */
int rt_comm_layout(rt_comm *c, int rank, int tp, int pp, int dp);
int rt_comm_group_size(const rt_comm *c, rt_group g);
int rt_comm_group_index(const rt_comm *c, rt_group g);   /* this rank's index in g */
int rt_comm_group_member(const rt_comm *c, rt_group g, int index); /* global rank, -1 if none */

/* Thin wrappers over the vtable. */
int rt_comm_allreduce_sum_f32(rt_comm *c, rt_group g, float *buf, size_t n, dsr1_err *err);
int rt_comm_allgather(rt_comm *c, rt_group g, const void *send, size_t bytes, void *recv,
                      dsr1_err *err);
int rt_comm_broadcast(rt_comm *c, rt_group g, void *buf, size_t bytes, int root, dsr1_err *err);
int rt_comm_send(rt_comm *c, const void *buf, size_t bytes, int peer, dsr1_err *err);
int rt_comm_recv(rt_comm *c, void *buf, size_t bytes, int peer, dsr1_err *err);
int rt_comm_barrier(rt_comm *c, rt_group g, dsr1_err *err);
void rt_comm_abort(rt_comm *c, const char *reason);
void rt_comm_free(rt_comm *c); /* NULL is a no-op */

/* In-process backend: creates tp * pp * dp communicators sharing one state, out[r]
 * for rank r (out has room for that many). Each is driven by its own thread. The
 * shared state is released when the last of them is freed. */
int rt_comm_inproc_create(int tp, int pp, int dp, rt_comm **out, dsr1_err *err);

#endif
