/* rt_comm: rank layout helpers and the thin vtable wrappers. */
#include "comm.h"

#include <stdlib.h>

int rt_comm_layout(rt_comm *c, int rank, int tp, int pp, int dp)
{
    if (tp < 1 || pp < 1 || dp < 1 || rank < 0 || rank >= tp * pp * dp)
        return -1;
    c->rank = rank;
    c->size = tp * pp * dp;
    c->tp = tp;
    c->pp = pp;
    c->dp = dp;
    c->tp_rank = rank % tp;
    c->pp_rank = (rank / tp) % pp;
    c->dp_rank = rank / (tp * pp);
    return 0;
}

int rt_comm_group_size(const rt_comm *c, rt_group g)
{
    switch (g) {
    case RT_GROUP_WORLD: return c->size;
    case RT_GROUP_TP: return c->tp;
    case RT_GROUP_PP: return c->pp;
    default: return -1;
    }
}

int rt_comm_group_index(const rt_comm *c, rt_group g)
{
    switch (g) {
    case RT_GROUP_WORLD: return c->rank;
    case RT_GROUP_TP: return c->tp_rank;
    case RT_GROUP_PP: return c->pp_rank;
    default: return -1;
    }
}

int rt_comm_group_member(const rt_comm *c, rt_group g, int index)
{
    if (index < 0 || index >= rt_comm_group_size(c, g))
        return -1;
    switch (g) {
    case RT_GROUP_WORLD: return index;
    case RT_GROUP_TP: return index + c->tp * (c->pp_rank + c->pp * c->dp_rank);
    case RT_GROUP_PP: return c->tp_rank + c->tp * (index + c->pp * c->dp_rank);
    default: return -1;
    }
}

int rt_comm_allreduce_sum_f32(rt_comm *c, rt_group g, float *buf, size_t n, dsr1_err *err)
{
    return c->ops->allreduce_sum_f32(c, g, buf, n, err);
}

int rt_comm_allgather(rt_comm *c, rt_group g, const void *send, size_t bytes, void *recv,
                      dsr1_err *err)
{
    return c->ops->allgather(c, g, send, bytes, recv, err);
}

int rt_comm_broadcast(rt_comm *c, rt_group g, void *buf, size_t bytes, int root, dsr1_err *err)
{
    return c->ops->broadcast(c, g, buf, bytes, root, err);
}

int rt_comm_send(rt_comm *c, const void *buf, size_t bytes, int peer, dsr1_err *err)
{
    return c->ops->send(c, buf, bytes, peer, err);
}

int rt_comm_recv(rt_comm *c, void *buf, size_t bytes, int peer, dsr1_err *err)
{
    return c->ops->recv(c, buf, bytes, peer, err);
}

int rt_comm_barrier(rt_comm *c, rt_group g, dsr1_err *err)
{
    return c->ops->barrier(c, g, err);
}

void rt_comm_abort(rt_comm *c, const char *reason)
{
    if (c)
        c->ops->abort(c, reason);
}

void rt_comm_free(rt_comm *c)
{
    if (c)
        c->ops->free(c);
}
