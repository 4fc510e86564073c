/* rt_comm over NCCL (see comm_nccl.h). */
#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern "C" {
#include "backend.h"
#include "comm_nccl.h"
#include "watchdog.h"
}

typedef struct nccl_impl {
    ncclComm_t g[RT_GROUP_COUNT];
    cudaStream_t st;
    double timeout;
    int aborted;
    char reason[512];
    float *scratch; /* barrier */
} nccl_impl;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static nccl_impl *IM(rt_comm *c) { return (nccl_impl *)c->impl; }

static void abort_all(nccl_impl *x, const char *reason)
{
    if (!x->aborted) {
        x->aborted = 1;
        snprintf(x->reason, sizeof x->reason, "%s", reason);
    }
    for (int i = 0; i < RT_GROUP_COUNT; i++)
        if (x->g[i]) {
            ncclCommAbort(x->g[i]);
            x->g[i] = NULL;
        }
}

static int aborted_err(nccl_impl *x, dsr1_err *err)
{
    return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_ABORTED, 0, "communication aborted: %s",
                        x->reason);
}

/* Poll until the communicator has no operation in progress (non-blocking mode). */
static int settle(nccl_impl *x, ncclComm_t comm, ncclResult_t r, const char *what, dsr1_err *err)
{
    double t0 = now_s();
    while (r == ncclInProgress) {
        if (now_s() - t0 > x->timeout) {
            char why[256];
            snprintf(why, sizeof why, "NCCL %s did not complete within %.0f s (a peer rank died, "
                     "stalled or never joined)", what, x->timeout);
            abort_all(x, why);
            return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_TIMEOUT, 0, "%s", why);
        }
        sched_yield();
        ncclCommGetAsyncError(comm, &r);
    }
    if (r != ncclSuccess) {
        char why[256];
        snprintf(why, sizeof why, "NCCL %s failed: %s (%s)", what, ncclGetErrorString(r),
                 ncclGetLastError(comm));
        abort_all(x, why);
        return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "%s", why);
    }
    return 0;
}

static int wait_stream(nccl_impl *x, const char *what, dsr1_err *err)
{
    double t0 = now_s();
    for (;;) {
        cudaError_t q = cudaStreamQuery(x->st);
        if (q == cudaSuccess)
            return 0;
        if (q != cudaErrorNotReady) {
            char why[256];
            snprintf(why, sizeof why, "CUDA error while waiting for %s: %s", what,
                     cudaGetErrorString(q));
            abort_all(x, why);
            return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "%s", why);
        }
        for (int i = 0; i < RT_GROUP_COUNT; i++) {
            ncclResult_t r = ncclSuccess;
            if (x->g[i] && ncclCommGetAsyncError(x->g[i], &r) == ncclSuccess && r != ncclSuccess &&
                r != ncclInProgress) {
                char why[256];
                snprintf(why, sizeof why, "NCCL error during %s: %s (%s)", what,
                         ncclGetErrorString(r), ncclGetLastError(x->g[i]));
                abort_all(x, why);
                return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "%s", why);
            }
        }
        if (now_s() - t0 > x->timeout) {
            char why[256];
            snprintf(why, sizeof why, "%s did not complete within %.0f s (a peer rank died or "
                     "stalled)", what, x->timeout);
            abort_all(x, why);
            return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_TIMEOUT, 0, "%s", why);
        }
        sched_yield();
    }
}

static int ck(rt_comm *c, rt_group g, dsr1_err *err)
{
    nccl_impl *x = IM(c);
    if (x->aborted)
        return aborted_err(x, err);
    if (g < 0 || g >= RT_GROUP_COUNT || !x->g[g])
        return dsr1_err_set(err, DSR1_E_INTERNAL, RT_COMM_ERR_ARG, 0, "bad group %d", (int)g);
    return 0;
}

static int op_allreduce(rt_comm *c, rt_group g, float *buf, size_t n, dsr1_err *err)
{
    int rc = ck(c, g, err);
    if (rc || n == 0)
        return rc;
    nccl_impl *x = IM(c);
    return settle(x, x->g[g], ncclAllReduce(buf, buf, n, ncclFloat32, ncclSum, x->g[g], x->st),
                  "all-reduce", err);
}

static int op_allgather(rt_comm *c, rt_group g, const void *send, size_t bytes, void *recv,
                        dsr1_err *err)
{
    int rc = ck(c, g, err);
    if (rc || bytes == 0)
        return rc;
    nccl_impl *x = IM(c);
    return settle(x, x->g[g], ncclAllGather(send, recv, bytes, ncclUint8, x->g[g], x->st),
                  "all-gather", err);
}

static int op_broadcast(rt_comm *c, rt_group g, void *buf, size_t bytes, int root, dsr1_err *err)
{
    int rc = ck(c, g, err);
    if (rc || bytes == 0)
        return rc;
    nccl_impl *x = IM(c);
    return settle(x, x->g[g], ncclBroadcast(buf, buf, bytes, ncclUint8, root, x->g[g], x->st),
                  "broadcast", err);
}

static int op_send(rt_comm *c, const void *buf, size_t bytes, int peer, dsr1_err *err)
{
    int rc = ck(c, RT_GROUP_WORLD, err);
    if (rc || bytes == 0)
        return rc;
    nccl_impl *x = IM(c);
    ncclComm_t w = x->g[RT_GROUP_WORLD];
    return settle(x, w, ncclSend(buf, bytes, ncclUint8, peer, w, x->st), "send", err);
}

static int op_recv(rt_comm *c, void *buf, size_t bytes, int peer, dsr1_err *err)
{
    int rc = ck(c, RT_GROUP_WORLD, err);
    if (rc || bytes == 0)
        return rc;
    nccl_impl *x = IM(c);
    ncclComm_t w = x->g[RT_GROUP_WORLD];
    return settle(x, w, ncclRecv(buf, bytes, ncclUint8, peer, w, x->st), "recv", err);
}

static int op_barrier(rt_comm *c, rt_group g, dsr1_err *err)
{
    int rc = op_allreduce(c, g, IM(c)->scratch, 1, err);
    return rc ? rc : wait_stream(IM(c), "barrier", err);
}

static void op_abort(rt_comm *c, const char *reason)
{
    abort_all(IM(c), reason ? reason : "aborted");
}

static void op_free(rt_comm *c)
{
    nccl_impl *x = IM(c);
    if (x) {
        cudaStreamSynchronize(x->st);
        for (int i = RT_GROUP_COUNT - 1; i >= 0; i--)
            if (x->g[i])
                ncclCommDestroy(x->g[i]);
        cudaFree(x->scratch);
        free(x);
    }
    free(c);
}

static const rt_comm_ops nccl_ops = {"nccl",     op_allreduce, op_allgather, op_broadcast, op_send,
                                     op_recv,    op_barrier,   op_abort,     op_free};

int rt_comm_nccl_unique_id(uint8_t id[128], dsr1_err *err)
{
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess)
        return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "ncclGetUniqueId: %s",
                            ncclGetErrorString(r));
    memcpy(id, &u, 128);
    return 0;
}

int rt_comm_nccl_create(rt_comm **out, int rank, int tp, int pp, int dp, const uint8_t id[128],
                        void *stream, double timeout_s, dsr1_err *err)
{
    *out = NULL;
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    rt_comm *c = (rt_comm *)calloc(1, sizeof *c);
    nccl_impl *x = (nccl_impl *)calloc(1, sizeof *x);
    if (!c || !x) {
        free(c);
        free(x);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    }
    c->ops = &nccl_ops;
    c->impl = x;
    x->st = (cudaStream_t)stream;
    x->timeout = timeout_s > 0 ? timeout_s : 300;
    if (rt_comm_layout(c, rank, tp, pp, dp) != 0) {
        op_free(c);
        return dsr1_err_set(err, DSR1_E_USAGE, RT_COMM_ERR_ARG, 0,
                            "rank %d outside tp %d x pp %d x dp %d", rank, tp, pp, dp);
    }
    if (cudaMalloc(&x->scratch, 64) != cudaSuccess) {
        op_free(c);
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "cudaMalloc failed");
    }
    /* WORLD (setup exchanges, PP send/recv) is non-blocking: every call polls a timeout
     * and can abort, so a rank that dies during setup never hangs the others. The TP
     * communicator carries the per-layer all-reduces and is blocking: non-blocking
     * collectives return "in progress" and cost ~60 us of host polling each (H100,
     * 28 KB all-reduce: 64-71 us against 11-13 us blocking), more than the collective.
     * Its setup runs right after a bounded all-gather over WORLD (every rank alive),
     * under a watchdog, and ends with a warm-up all-reduce; later waits poll the
     * stream with the timeout and abort on expiry. A blocking call that never returns
     * (measured: rank 0 stuck in decode step 1 after rank 1 exited, 2 x H200) is ended
     * by the caller's per-step progress watchdog (runtime/cuda/cuda_generate.cu).
     * DSR1_NCCL_BLOCKING=0: TP non-blocking too; =1: WORLD blocking too. */
    const char *be = getenv("DSR1_NCCL_BLOCKING");
    int world_blocking = be && strcmp(be, "1") == 0, tp_blocking = !(be && strcmp(be, "0") == 0);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = world_blocking;
    ncclUniqueId u;
    memcpy(&u, id, 128);
    int rc;
    ncclResult_t r = ncclCommInitRankConfig(&x->g[RT_GROUP_WORLD], c->size, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        op_free(c);
        return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "ncclCommInitRank: %s",
                            ncclGetErrorString(r));
    }
    if ((rc = settle(x, x->g[RT_GROUP_WORLD], r, "communicator setup", err))) {
        op_free(c);
        return rc;
    }
    /* TP and PP communicators from their own unique ids: the first member of each group
     * makes one, and an all-gather over WORLD hands every rank its leaders' ids (plain
     * initialization, bounded like the world one). */
    {
        uint8_t mine[256], *dall = NULL, *all = (uint8_t *)malloc((size_t)c->size * 256);
        memset(mine, 0, sizeof mine);
        ncclUniqueId t;
        if (c->tp_rank == 0 && ncclGetUniqueId(&t) == ncclSuccess)
            memcpy(mine, &t, 128);
        if (c->pp_rank == 0 && ncclGetUniqueId(&t) == ncclSuccess)
            memcpy(mine + 128, &t, 128);
        cudaError_t ce = all ? cudaMalloc((void **)&dall, (size_t)(c->size + 1) * 256)
                             : cudaErrorMemoryAllocation;
        if (ce == cudaSuccess)
            ce = cudaMemcpy(dall + (size_t)c->size * 256, mine, 256, cudaMemcpyHostToDevice);
        if (ce != cudaSuccess) {
            free(all);
            cudaFree(dall);
            op_free(c);
            return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "cuda: %s",
                                cudaGetErrorString(ce));
        }
        rc = settle(x, x->g[RT_GROUP_WORLD],
                    ncclAllGather(dall + (size_t)c->size * 256, dall, 256, ncclUint8,
                                  x->g[RT_GROUP_WORLD], x->st),
                    "group id exchange", err);
        if (!rc)
            rc = wait_stream(x, "group id exchange", err);
        if (!rc && cudaMemcpy(all, dall, (size_t)c->size * 256, cudaMemcpyDeviceToHost) != cudaSuccess)
            rc = dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0, "cuda: group id copy");
        cudaFree(dall);
        /* Every rank was alive at the all-gather, but a blocking communicator's setup
         * cannot be polled or aborted: if a peer dies now, only the watchdog ends the
         * wait, with the same timeout and one line naming the phase. */
        rt_watchdog *wd = rc ? NULL
                             : rt_watchdog_arm(x->timeout, 3,
                                               "rank %d: NCCL TP/PP communicator setup did not "
                                               "finish within %.0f s (a peer rank died or stalled "
                                               "after joining); exiting",
                                               rank, x->timeout);
        if (!rc && rt_test_fault(rank, "stall-setup"))
            for (;;)
                sleep(1);
        static const rt_group gs[2] = {RT_GROUP_TP, RT_GROUP_PP};
        for (int i = 0; i < 2 && !rc; i++) {
            rt_group g = gs[i];
            int leader = rt_comm_group_member(c, g, 0);
            memcpy(&u, all + (size_t)leader * 256 + (size_t)i * 128, 128);
            ncclConfig_t gc = NCCL_CONFIG_INITIALIZER;
            gc.blocking = g == RT_GROUP_TP ? tp_blocking : world_blocking;
            ncclResult_t gr = ncclCommInitRankConfig(&x->g[g], rt_comm_group_size(c, g), u,
                                                     rt_comm_group_index(c, g), &gc);
            if (gr != ncclSuccess && gr != ncclInProgress)
                rc = dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_BACKEND, 0,
                                  "ncclCommInitRank (%s group): %s", i ? "PP" : "TP",
                                  ncclGetErrorString(gr));
            else
                rc = settle(x, x->g[g], gr, i ? "PP communicator setup" : "TP communicator setup",
                            err);
        }
        free(all);
        if (!rc) /* the TP connections, made now while every rank is known alive */
            rc = op_barrier(c, RT_GROUP_TP, err);
        rt_watchdog_disarm(wd);
        if (rc) {
            op_free(c);
            return rc;
        }
    }
    *out = c;
    return 0;
}

int rt_comm_nccl_wait(rt_comm *c, dsr1_err *err)
{
    nccl_impl *x = IM(c);
    if (x->aborted)
        return aborted_err(x, err);
    return wait_stream(x, "GPU work and collectives", err);
}
