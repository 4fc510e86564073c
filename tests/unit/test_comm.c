/* rt_comm in-process backend: every rank of a (tp, pp, dp) plan is a thread; the
 * collectives are checked against values computed here from the rank layout. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "test.h"

typedef struct rk {
    rt_comm *c;
    int (*fn)(struct rk *);
    int failures;
    int rc;
    dsr1_err err;
    float *scratch;
} rk;

static void *rk_main(void *p)
{
    rk *r = p;
    r->rc = r->fn(r);
    return NULL;
}

/* Run fn on every rank of a tp x pp x dp plan; returns the total check failures. */
static int run_plan(int tp, int pp, int dp, int (*fn)(rk *), rk *out)
{
    int n = tp * pp * dp;
    rt_comm *c[64];
    dsr1_err err;
    if (rt_comm_inproc_create(tp, pp, dp, c, &err) != 0)
        return 1000;
    pthread_t th[64];
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof out[i]);
        out[i].c = c[i];
        out[i].fn = fn;
        pthread_create(&th[i], NULL, rk_main, &out[i]);
    }
    int f = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        f += out[i].failures;
    }
    for (int i = 0; i < n; i++)
        rt_comm_free(c[i]);
    return f;
}

TEST(rt_comm_layout_groups)
{
    rt_comm c;
    CHECK_EQ_INT(rt_comm_layout(&c, 13, 4, 2, 2), 0); /* 13 = 1 + 4 * (1 + 2 * 1) */
    CHECK_EQ_INT(c.tp_rank, 1);
    CHECK_EQ_INT(c.pp_rank, 1);
    CHECK_EQ_INT(c.dp_rank, 1);
    CHECK_EQ_INT(rt_comm_group_member(&c, RT_GROUP_TP, 3), 15);
    CHECK_EQ_INT(rt_comm_group_member(&c, RT_GROUP_PP, 0), 9);
    CHECK_EQ_INT(rt_comm_group_member(&c, RT_GROUP_WORLD, 7), 7);
    CHECK_EQ_INT(rt_comm_group_member(&c, RT_GROUP_TP, 4), -1);
    CHECK_EQ_INT(rt_comm_group_size(&c, RT_GROUP_PP), 2);
    CHECK_EQ_INT(rt_comm_group_index(&c, RT_GROUP_PP), 1);
    CHECK_EQ_INT(rt_comm_layout(&c, 16, 4, 2, 2), -1);
}

#define N_AR 1003
/* Each rank contributes rank-specific values; sums and bit-identity are checked. */
static int body_collectives(rk *r)
{
    rt_comm *c = r->c;
    int f = 0;
    dsr1_err *err = &r->err;
    for (int g = 0; g < RT_GROUP_COUNT; g++) {
        float buf[N_AR];
        for (int i = 0; i < N_AR; i++)
            buf[i] = 0.1f * (float)(c->rank + 1) + 0.001f * (float)i;
        if (rt_comm_allreduce_sum_f32(c, (rt_group)g, buf, N_AR, err) != 0)
            return -1;
        int gs = rt_comm_group_size(c, (rt_group)g);
        for (int i = 0; i < N_AR; i++) {
            float want = 0; /* the backend sums in group order */
            for (int k = 0; k < gs; k++)
                want += 0.1f * (float)(rt_comm_group_member(c, (rt_group)g, k) + 1) + 0.001f * (float)i;
            f += buf[i] != want;
        }
        /* all-gather of 3 ints per member, in group order */
        int send[3] = {c->rank, c->rank * 10, -c->rank}, recv[3 * 64];
        if (rt_comm_allgather(c, (rt_group)g, send, sizeof send, recv, err) != 0)
            return -1;
        for (int k = 0; k < gs; k++) {
            int m = rt_comm_group_member(c, (rt_group)g, k);
            f += recv[3 * k] != m || recv[3 * k + 1] != m * 10 || recv[3 * k + 2] != -m;
        }
        /* all-gather in place: send aliases this member's slot */
        int idx = rt_comm_group_index(c, (rt_group)g);
        recv[idx] = 1000 + c->rank;
        if (rt_comm_allgather(c, (rt_group)g, &recv[idx], sizeof(int), recv, err) != 0)
            return -1;
        for (int k = 0; k < gs; k++)
            f += recv[k] != 1000 + rt_comm_group_member(c, (rt_group)g, k);
        /* broadcast from the last member */
        double v[2] = {c->rank, 0.5};
        if (rt_comm_broadcast(c, (rt_group)g, v, sizeof v, gs - 1, err) != 0)
            return -1;
        f += v[0] != rt_comm_group_member(c, (rt_group)g, gs - 1) || v[1] != 0.5;
        if (rt_comm_barrier(c, (rt_group)g, err) != 0)
            return -1;
    }
    r->failures = f;
    return 0;
}

TEST(rt_comm_inproc_collectives_all_groups)
{
    int plans[][3] = {{1, 1, 1}, {2, 1, 1}, {4, 1, 1}, {2, 2, 1}, {2, 2, 2}, {1, 3, 1}};
    for (size_t p = 0; p < sizeof plans / sizeof plans[0]; p++) {
        rk r[64];
        int f = run_plan(plans[p][0], plans[p][1], plans[p][2], body_collectives, r);
        CHECK_MSG(f == 0, "plan tp=%d pp=%d dp=%d: %d wrong values", plans[p][0], plans[p][1], plans[p][2], f);
        for (int i = 0; i < plans[p][0] * plans[p][1] * plans[p][2]; i++)
            CHECK_MSG(r[i].rc == 0, "rank %d: %s", i, r[i].err.msg);
    }
}

/* Messages between a pair arrive in order; send does not wait for recv. */
static int body_p2p(rk *r)
{
    rt_comm *c = r->c;
    int f = 0, next = (c->rank + 1) % c->size, prev = (c->rank + c->size - 1) % c->size;
    for (int k = 0; k < 5; k++) {
        int v[2] = {c->rank, k};
        if (rt_comm_send(c, v, sizeof v, next, &r->err) != 0)
            return -1;
    }
    for (int k = 0; k < 5; k++) {
        int v[2];
        if (rt_comm_recv(c, v, sizeof v, prev, &r->err) != 0)
            return -1;
        f += v[0] != prev || v[1] != k;
    }
    int v;
    /* wrong size is reported, not truncated */
    if (rt_comm_send(c, &v, sizeof v, next, &r->err) != 0)
        return -1;
    double d;
    f += rt_comm_recv(c, &d, sizeof d, prev, &r->err) == 0;
    f += strstr(r->err.msg, "expected 8") == NULL;
    f += rt_comm_send(c, &v, sizeof v, c->rank, &r->err) == 0; /* to itself */
    r->failures = f;
    return 0;
}

TEST(rt_comm_inproc_send_recv_ring)
{
    rk r[64];
    CHECK_EQ_INT(run_plan(2, 2, 1, body_p2p, r), 0);
    for (int i = 0; i < 4; i++)
        CHECK_MSG(r[i].rc == 0, "rank %d: %s", i, r[i].err.msg);
}

/* Rank 2 fails; everyone else is inside a collective or a recv and must return
 * an error naming rank 2 and its reason instead of hanging. */
static int body_abort(rk *r)
{
    rt_comm *c = r->c;
    float x = 1;
    if (c->rank == 2) {
        rt_comm_abort(c, "disk on fire");
        return 0;
    }
    int rc;
    if (c->rank == 1)
        rc = rt_comm_recv(c, &x, sizeof x, 3, &r->err);
    else
        rc = rt_comm_allreduce_sum_f32(c, RT_GROUP_WORLD, &x, 1, &r->err);
    r->failures = rc == 0 || r->err.code != RT_COMM_ERR_ABORTED || !strstr(r->err.msg, "rank 2") ||
                  !strstr(r->err.msg, "disk on fire");
    /* later calls fail at once too */
    r->failures += rt_comm_barrier(c, RT_GROUP_TP, &r->err) == 0;
    return 0;
}

TEST(rt_comm_inproc_abort_releases_waiters)
{
    rk r[64];
    CHECK_EQ_INT(run_plan(2, 2, 1, body_abort, r), 0);
}

TEST(rt_comm_inproc_rejects_bad_plan)
{
    rt_comm *c[2];
    dsr1_err err;
    CHECK_EQ_INT(rt_comm_inproc_create(0, 1, 1, c, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "tp=0");
}
