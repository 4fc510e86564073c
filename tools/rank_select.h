/* rank_select: which global ranks a dsr1-verify / dsr1-pack invocation is about
 * (--rank R|list|auto, --node N). Header-only, shared by the two tool mains.
 *
 * --rank auto uses the runtime's identity rules (runtime/ident.h), so an init
 * container and the serving processes of a pod agree on who they are:
 *   RANK (torchrun)                    -> that rank
 *   LWS_WORKER_INDEX / StatefulSet     -> pod index P (LWS_WORKER_INDEX, else the
 *     hostname "name-P"), G GPUs per node (--gpus-per-node, else DSR1_GPUS_PER_NODE,
 *     else the manifest's plan):
 *       with LOCAL_RANK L              -> rank P x G + L
 *       without LOCAL_RANK             -> every rank of the pod: P x G ... P x G + G - 1
 *                                         (an init container runs once per pod)
 * A world size from the environment (WORLD_SIZE, LWS_GROUP_SIZE x G) must equal the
 * manifest's.
 */
#ifndef DSR1_RANK_SELECT_H
#define DSR1_RANK_SELECT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "err.h"
#include "ident.h"
#include "mf.h"

typedef struct rank_list {
    uint32_t *v;
    size_t n, cap;
} rank_list;

static inline int rank_push(rank_list *l, uint64_t r)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        uint32_t *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv)
            return -1;
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = (uint32_t)r;
    return 0;
}

static inline int rank_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Sort and drop duplicates. */
static inline void rank_normalize(rank_list *l)
{
    if (!l->n)
        return;
    qsort(l->v, l->n, sizeof *l->v, rank_cmp_u32);
    size_t u = 1;
    for (size_t i = 1; i < l->n; i++)
        if (l->v[i] != l->v[u - 1])
            l->v[u++] = l->v[i];
    l->n = u;
}

/* "3", "0,3,8-15": CLI_OK or a CLI_E* code. */
static inline int rank_parse_list(const char *s, rank_list *l)
{
    char *copy = strdup(s), *save = NULL;
    if (!copy)
        return CLI_ENOMEM;
    int rc = CLI_OK;
    for (char *tok = strtok_r(copy, ",", &save); tok && rc == CLI_OK; tok = strtok_r(NULL, ",", &save)) {
        char *dash = strchr(tok, '-');
        uint64_t a, b;
        if (dash) {
            *dash = 0;
            if ((rc = cli_parse_u64(tok, 0, 1u << 20, &a)) || (rc = cli_parse_u64(dash + 1, 0, 1u << 20, &b)))
                break;
            if (b < a) {
                rc = CLI_EINVAL;
                break;
            }
        } else {
            if ((rc = cli_parse_u64(tok, 0, 1u << 20, &a)))
                break;
            b = a;
        }
        for (uint64_t r = a; r <= b && rc == CLI_OK; r++)
            if (rank_push(l, r))
                rc = CLI_ENOMEM;
    }
    if (rc == CLI_OK && l->n == 0)
        rc = CLI_EINVAL;
    free(copy);
    if (rc == CLI_OK)
        rank_normalize(l);
    return rc;
}

/* Every rank the manifest places on node n; DSR1_E_USAGE when there is none. */
static inline int rank_of_node(const mf_manifest *m, uint32_t node, rank_list *l, dsr1_err *err)
{
    for (size_t i = 0; i < m->n_ranks; i++)
        if (m->ranks[i].node == node && rank_push(l, m->ranks[i].rank))
            return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    if (l->n == 0)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "node %" PRIu32 " holds no rank (the plan has %" PRIu32 " nodes)",
                            node, m->plan.nodes);
    rank_normalize(l);
    return 0;
}

/* --rank auto (see the top of this file). desc gets e.g. "StatefulSet hostname pod 1:
 * ranks 8-15". gpn_flag < 0 = not given. */
static inline int rank_auto(const mf_manifest *m, int gpn_flag, rank_list *l, char *desc, size_t cap,
                            dsr1_err *err)
{
    rt_ident_flags f;
    rt_ident_flags_init(&f);
    f.gpus_per_node = gpn_flag;
    if (f.gpus_per_node < 0 && !getenv("DSR1_GPUS_PER_NODE"))
        f.gpus_per_node = (int)m->plan.gpus_per_node;
    int whole_pod = !getenv("RANK") && !getenv("LOCAL_RANK");
    if (whole_pod)
        f.local_rank = 0;
    rt_ident id;
    int rc = rt_ident_resolve(&id, &f, NULL, NULL, (int)m->plan.world_size, err);
    if (rc != 0) {
        /* The usual cause in a pod: replicas, GPUs per pod or the artifact disagree. */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        dsr1_err_set(err, err->status, err->code, err->sys_errno,
                     "--rank auto: %.400s (the manifest's plan: %" PRIu32 " nodes x %" PRIu32
                     " GPUs per node = world size %" PRIu32 ")",
                     msg, m->plan.nodes, m->plan.gpus_per_node, m->plan.world_size);
        return rc;
    }
    if (id.source == RT_IDENT_SINGLE && m->plan.world_size > 1)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "--rank auto: no identity found (RANK, LWS_WORKER_INDEX, or a StatefulSet "
                            "hostname \"name-N\" with --gpus-per-node)");
    if ((uint32_t)id.world_size != m->plan.world_size)
        return dsr1_err_set(err, DSR1_E_MISMATCH, 0, 0,
                            "--rank auto: %s gives world size %d, the manifest's plan has %" PRIu32
                            ": the pod runs another deployment",
                            rt_ident_source_name(id.source), id.world_size, m->plan.world_size);
    if (whole_pod && (id.source == RT_IDENT_LWS || id.source == RT_IDENT_STATEFULSET)) {
        int gpn = id.gpus_per_node > 0 ? id.gpus_per_node : 1;
        for (int k = 0; k < gpn; k++)
            if ((uint32_t)(id.rank + k) < m->plan.world_size && rank_push(l, (uint64_t)id.rank + k))
                return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
        snprintf(desc, cap, "%s pod %d: ranks %d-%d", rt_ident_source_name(id.source), id.rank / gpn, id.rank,
                 id.rank + gpn - 1);
        return 0;
    }
    if (rank_push(l, (uint64_t)id.rank))
        return dsr1_err_set(err, DSR1_E_NOMEM, 0, 0, "out of memory");
    snprintf(desc, cap, "%s: rank %d", rt_ident_source_name(id.source), id.rank);
    return 0;
}

#endif
