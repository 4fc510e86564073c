/* ident: who this runtime process is (rank, world size, local GPU, where rank 0 listens).
 *
 * Sources, first match per field wins:
 *  1. flags (--rank, --world-size, --local-rank, --master-addr, --master-port,
 *     --gpus-per-node);
 *  2. torchrun-style environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
 *     (used when RANK is set);
 *  3. Kubernetes LeaderWorkerSet: LWS_WORKER_INDEX (pod index in the group, 0 = leader),
 *     LWS_GROUP_SIZE (pods in the group), LWS_LEADER_ADDRESS (leader pod address);
 *     rank = index * gpus_per_node + local_rank, world = group size * gpus_per_node;
 *  4. Kubernetes StatefulSet: the pod ordinal is the number after the last '-' of the
 *     first hostname label ("dsr1-3" or "dsr1-3.dsr1.ns.svc.cluster.local");
 *     rank = ordinal * gpus_per_node + local_rank, and rank 0's address is the same
 *     host name with ordinal 0 ("dsr1-0.dsr1.ns.svc.cluster.local").
 *  Kubernetes sources need gpus_per_node (flag or DSR1_GPUS_PER_NODE) and LOCAL_RANK
 *  when it is more than 1, since one pod runs one process per GPU.
 *  5. nothing: a single process (rank 0), allowed only when the world size is 1.
 * World size may come from the caller's default (the manifest's plan) when no source
 * names it. MASTER_PORT defaults to 29500 (torchrun's default).
 *
 * Lifetimes: rt_ident holds copies; nothing to free.
 */
#ifndef DSR1_IDENT_H
#define DSR1_IDENT_H

#include "err.h"

#define RT_IDENT_DEFAULT_PORT 29500
#define RT_IDENT_ADDR_MAX 256

typedef enum {
    RT_IDENT_SINGLE = 0,
    RT_IDENT_FLAGS,
    RT_IDENT_TORCHRUN,
    RT_IDENT_LWS,
    RT_IDENT_STATEFULSET
} rt_ident_source;

typedef struct rt_ident {
    int rank, world_size, local_rank;
    int node;          /* rank / gpus_per_node when known, else -1 */
    int gpus_per_node; /* 0 when unknown */
    char master_addr[RT_IDENT_ADDR_MAX];
    int master_port;
    rt_ident_source source; /* where the rank came from */
} rt_ident;

/* Flag values from the command line; -1 / NULL = not given. */
typedef struct rt_ident_flags {
    int rank, world_size, local_rank, master_port, gpus_per_node;
    const char *master_addr;
} rt_ident_flags;

void rt_ident_flags_init(rt_ident_flags *f);

/* Resolve the identity. env: NULL-terminated "KEY=VALUE" array (NULL = the process
 * environment). hostname: NULL = gethostname(). default_world: the plan's world size
 * (0 = unknown). Errors are DSR1_E_USAGE with a message naming the source and field. */
int rt_ident_resolve(rt_ident *out, const rt_ident_flags *flags, char *const *env,
                     const char *hostname, int default_world, dsr1_err *err);

const char *rt_ident_source_name(rt_ident_source s);

/* Parse a decimal int in [lo, hi]; 0 ok, -1 otherwise. Shared by the flag parsers. */
int rt_ident_parse_int(const char *s, int lo, int hi, int *out);

#endif
