/* rt_comm in-process backend: the ranks of a plan are threads of one process.
 *
 * One mutex and condition variable guard the shared state: group barriers
 * (generation counters), posted buffer pointers, point-to-point queues and the
 * abort flag. Collectives post pointers, meet at a barrier, work on each other's
 * buffers directly, and meet again before returning so no buffer is touched after
 * its owner left the call. All-reduce splits the vector into one chunk per member;
 * each member sums its chunk over all members in group order and writes it into
 * every member's buffer, so all end bit-identical.
 */
#include "comm.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct grp {
    int n;
    void **ptr;          /* posted buffer per member index */
    int count;           /* members arrived at the current barrier */
    unsigned long gen;   /* barrier generation */
} grp;

typedef struct msg {
    struct msg *next;
    size_t bytes;
    unsigned char data[];
} msg;

typedef struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int tp, pp, dp, size;
    int refs;
    int aborted, abort_rank;
    char reason[512];
    grp *groups[RT_GROUP_COUNT];
    int n_groups[RT_GROUP_COUNT];
    msg **head, **tail;  /* size * size queues, index src * size + dst */
} shared;

static int group_instance(const rt_comm *c, rt_group g)
{
    switch (g) {
    case RT_GROUP_WORLD: return 0;
    case RT_GROUP_TP: return c->pp_rank + c->pp * c->dp_rank;
    case RT_GROUP_PP: return c->tp_rank + c->tp * c->dp_rank;
    default: return -1;
    }
}

static int aborted_err(shared *s, const rt_comm *c, dsr1_err *err)
{
    return dsr1_err_set(err, DSR1_E_IO, RT_COMM_ERR_ABORTED, 0,
                        "rank %d: communication aborted by rank %d: %s", c->rank, s->abort_rank,
                        s->reason);
}

static grp *get_group(shared *s, const rt_comm *c, rt_group g, dsr1_err *err)
{
    if ((int)g < 0 || g >= RT_GROUP_COUNT) {
        dsr1_err_set(err, DSR1_E_INTERNAL, RT_COMM_ERR_ARG, 0, "rank %d: unknown comm group %d",
                     c->rank, (int)g);
        return NULL;
    }
    return &s->groups[g][group_instance(c, g)];
}

/* With s->mu held. */
static int barrier_locked(shared *s, grp *g, const rt_comm *c, dsr1_err *err)
{
    if (s->aborted)
        return aborted_err(s, c, err);
    unsigned long gen = g->gen;
    if (++g->count == g->n) {
        g->count = 0;
        g->gen++;
        pthread_cond_broadcast(&s->cv);
        return 0;
    }
    while (g->gen == gen && !s->aborted)
        pthread_cond_wait(&s->cv, &s->mu);
    if (g->gen == gen)
        return aborted_err(s, c, err);
    return 0;
}

/* Post ptr at this member's slot and wait for the whole group. */
static int post_and_meet(shared *s, grp *g, const rt_comm *c, int idx, void *ptr, dsr1_err *err)
{
    pthread_mutex_lock(&s->mu);
    g->ptr[idx] = ptr;
    int rc = barrier_locked(s, g, c, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int meet(shared *s, grp *g, const rt_comm *c, dsr1_err *err)
{
    pthread_mutex_lock(&s->mu);
    int rc = barrier_locked(s, g, c, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int ip_allreduce(rt_comm *c, rt_group gi, float *buf, size_t n, dsr1_err *err)
{
    shared *s = c->impl;
    grp *g = get_group(s, c, gi, err);
    if (!g)
        return err ? err->status : DSR1_E_INTERNAL;
    int idx = rt_comm_group_index(c, gi);
    int rc = post_and_meet(s, g, c, idx, buf, err);
    if (rc)
        return rc;
    size_t per = (n + (size_t)g->n - 1) / (size_t)g->n;
    size_t a = per * (size_t)idx, b = a + per;
    if (a > n)
        a = n;
    if (b > n)
        b = n;
    for (size_t i = a; i < b; i++) {
        float acc = ((float *)g->ptr[0])[i];
        for (int m = 1; m < g->n; m++)
            acc += ((float *)g->ptr[m])[i];
        for (int m = 0; m < g->n; m++)
            ((float *)g->ptr[m])[i] = acc;
    }
    return meet(s, g, c, err);
}

static int ip_allgather(rt_comm *c, rt_group gi, const void *send, size_t bytes, void *recv,
                        dsr1_err *err)
{
    shared *s = c->impl;
    grp *g = get_group(s, c, gi, err);
    if (!g)
        return err ? err->status : DSR1_E_INTERNAL;
    int idx = rt_comm_group_index(c, gi);
    int rc = post_and_meet(s, g, c, idx, (void *)send, err);
    if (rc)
        return rc;
    for (int m = 0; m < g->n; m++) {
        unsigned char *dst = (unsigned char *)recv + (size_t)m * bytes;
        if (dst != g->ptr[m])
            memcpy(dst, g->ptr[m], bytes);
    }
    return meet(s, g, c, err);
}

static int ip_broadcast(rt_comm *c, rt_group gi, void *buf, size_t bytes, int root, dsr1_err *err)
{
    shared *s = c->impl;
    grp *g = get_group(s, c, gi, err);
    if (!g)
        return err ? err->status : DSR1_E_INTERNAL;
    if (root < 0 || root >= g->n)
        return dsr1_err_set(err, DSR1_E_INTERNAL, RT_COMM_ERR_ARG, 0,
                            "rank %d: broadcast root %d outside group of %d", c->rank, root, g->n);
    int idx = rt_comm_group_index(c, gi);
    int rc = post_and_meet(s, g, c, idx, buf, err);
    if (rc)
        return rc;
    if (idx != root)
        memcpy(buf, g->ptr[root], bytes);
    return meet(s, g, c, err);
}

static int ip_barrier(rt_comm *c, rt_group gi, dsr1_err *err)
{
    shared *s = c->impl;
    grp *g = get_group(s, c, gi, err);
    if (!g)
        return err ? err->status : DSR1_E_INTERNAL;
    return meet(s, g, c, err);
}

static int check_peer(const rt_comm *c, int peer, dsr1_err *err)
{
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return dsr1_err_set(err, DSR1_E_INTERNAL, RT_COMM_ERR_ARG, 0,
                            "rank %d: invalid peer rank %d (world size %d)", c->rank, peer, c->size);
    return 0;
}

static int ip_send(rt_comm *c, const void *buf, size_t bytes, int peer, dsr1_err *err)
{
    shared *s = c->impl;
    int rc = check_peer(c, peer, err);
    if (rc)
        return rc;
    msg *m = malloc(sizeof *m + bytes);
    if (!m)
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_COMM_ERR_BACKEND, 0,
                            "rank %d: out of memory buffering %zu bytes for rank %d", c->rank, bytes,
                            peer);
    m->next = NULL;
    m->bytes = bytes;
    memcpy(m->data, buf, bytes);
    pthread_mutex_lock(&s->mu);
    if (s->aborted) {
        pthread_mutex_unlock(&s->mu);
        free(m);
        return aborted_err(s, c, err);
    }
    size_t q = (size_t)c->rank * (size_t)s->size + (size_t)peer;
    if (s->tail[q])
        s->tail[q]->next = m;
    else
        s->head[q] = m;
    s->tail[q] = m;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int ip_recv(rt_comm *c, void *buf, size_t bytes, int peer, dsr1_err *err)
{
    shared *s = c->impl;
    int rc = check_peer(c, peer, err);
    if (rc)
        return rc;
    size_t q = (size_t)peer * (size_t)s->size + (size_t)c->rank;
    pthread_mutex_lock(&s->mu);
    while (!s->head[q] && !s->aborted)
        pthread_cond_wait(&s->cv, &s->mu);
    if (!s->head[q]) {
        rc = aborted_err(s, c, err);
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    msg *m = s->head[q];
    s->head[q] = m->next;
    if (!s->head[q])
        s->tail[q] = NULL;
    pthread_mutex_unlock(&s->mu);
    if (m->bytes != bytes) {
        rc = dsr1_err_set(err, DSR1_E_INTERNAL, RT_COMM_ERR_ARG, 0,
                          "rank %d: message from rank %d has %zu bytes, receiver expected %zu",
                          c->rank, peer, m->bytes, bytes);
        free(m);
        return rc;
    }
    memcpy(buf, m->data, bytes);
    free(m);
    return 0;
}

static void ip_abort(rt_comm *c, const char *reason)
{
    shared *s = c->impl;
    pthread_mutex_lock(&s->mu);
    if (!s->aborted) {
        s->aborted = 1;
        s->abort_rank = c->rank;
        snprintf(s->reason, sizeof s->reason, "%s", reason ? reason : "(no reason given)");
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void shared_destroy(shared *s)
{
    for (int g = 0; g < RT_GROUP_COUNT; g++) {
        if (s->groups[g])
            for (int i = 0; i < s->n_groups[g]; i++)
                free(s->groups[g][i].ptr);
        free(s->groups[g]);
    }
    if (s->head)
        for (int q = 0; q < s->size * s->size; q++)
            for (msg *m = s->head[q]; m;) {
                msg *n = m->next;
                free(m);
                m = n;
            }
    free(s->head);
    free(s->tail);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void ip_free(rt_comm *c)
{
    shared *s = c->impl;
    pthread_mutex_lock(&s->mu);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last)
        shared_destroy(s);
    free(c);
}

static const rt_comm_ops inproc_ops = {
    .name = "inproc",
    .allreduce_sum_f32 = ip_allreduce,
    .allgather = ip_allgather,
    .broadcast = ip_broadcast,
    .send = ip_send,
    .recv = ip_recv,
    .barrier = ip_barrier,
    .abort = ip_abort,
    .free = ip_free,
};

int rt_comm_inproc_create(int tp, int pp, int dp, rt_comm **out, dsr1_err *err)
{
    if (tp < 1 || pp < 1 || dp < 1 || tp * pp * dp > 4096)
        return dsr1_err_set(err, DSR1_E_USAGE, RT_COMM_ERR_ARG, 0,
                            "in-process comm: invalid plan tp=%d pp=%d dp=%d", tp, pp, dp);
    shared *s = calloc(1, sizeof *s);
    if (!s)
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_COMM_ERR_BACKEND, 0, "in-process comm: out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->tp = tp;
    s->pp = pp;
    s->dp = dp;
    s->size = tp * pp * dp;
    int members[RT_GROUP_COUNT] = {s->size, tp, pp};
    int count[RT_GROUP_COUNT] = {1, pp * dp, tp * dp};
    int ok = 1;
    for (int g = 0; g < RT_GROUP_COUNT && ok; g++) {
        s->n_groups[g] = count[g];
        s->groups[g] = calloc((size_t)count[g], sizeof(grp));
        if (!s->groups[g]) {
            ok = 0;
            break;
        }
        for (int i = 0; i < count[g] && ok; i++) {
            s->groups[g][i].n = members[g];
            s->groups[g][i].ptr = calloc((size_t)members[g], sizeof(void *));
            ok = s->groups[g][i].ptr != NULL;
        }
    }
    size_t nq = (size_t)s->size * (size_t)s->size;
    s->head = ok ? calloc(nq, sizeof(msg *)) : NULL;
    s->tail = ok ? calloc(nq, sizeof(msg *)) : NULL;
    if (!s->head || !s->tail) {
        shared_destroy(s);
        return dsr1_err_set(err, DSR1_E_NOMEM, RT_COMM_ERR_BACKEND, 0, "in-process comm: out of memory");
    }
    for (int r = 0; r < s->size; r++) {
        rt_comm *c = calloc(1, sizeof *c);
        if (!c) {
            for (int k = 0; k < r; k++)
                ip_free(out[k]);
            if (r == 0)
                shared_destroy(s);
            return dsr1_err_set(err, DSR1_E_NOMEM, RT_COMM_ERR_BACKEND, 0,
                                "in-process comm: out of memory");
        }
        c->ops = &inproc_ops;
        c->impl = s;
        rt_comm_layout(c, r, tp, pp, dp);
        s->refs++;
        out[r] = c;
    }
    return 0;
}
