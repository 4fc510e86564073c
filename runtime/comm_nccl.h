/* rt_comm over NCCL (see comm.h): one process per GPU; buffers are device memory and
 * every operation is ordered on the backend's CUDA stream. Calls return once the
 * operation is enqueued; rt_comm_nccl_wait() (and barrier) wait for the stream with a
 * bounded timeout that polls NCCL's asynchronous errors, so a dead or stalled peer
 * becomes an error naming the timeout, never a hang. WORLD is created in NCCL's
 * non-blocking mode for the same reason (its initialization is bounded too); the TP
 * communicator is blocking (per-collective host cost; see comm_nccl.cu and
 * docs/cuda.md), set up right after a bounded WORLD exchange.
 *
 * Groups: WORLD is the communicator made from the unique id; each TP and PP group gets
 * its own communicator, initialized from an id its first member makes and the WORLD
 * communicator all-gathers (ncclCommSplit in non-blocking mode stalled in testing).
 *
 * NVLink SHARP (NVLS) must stay off on the shared machines: rt_comm_nccl_create sets
 * NCCL_NVLS_ENABLE=0 in the environment before NCCL reads it unless it is already set.
 */
#ifndef DSR1_RT_COMM_NCCL_H
#define DSR1_RT_COMM_NCCL_H

#include <stdint.h>

#include "comm.h"
#include "err.h"

/* id: the 128-byte ncclUniqueId from rank 0 (runtime/boot.h hands it out).
 * stream: the cudaStream_t all operations go on. timeout_s: bound for every wait. */
int rt_comm_nccl_create(rt_comm **out, int rank, int tp, int pp, int dp, const uint8_t id[128],
                        void *stream, double timeout_s, dsr1_err *err);
/* Wait until everything enqueued on the stream (collectives included) has finished. */
int rt_comm_nccl_wait(rt_comm *c, dsr1_err *err);
/* rank 0 makes the id before the rendezvous */
int rt_comm_nccl_unique_id(uint8_t id[128], dsr1_err *err);

#endif
