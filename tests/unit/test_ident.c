/* ident: flags > torchrun env > LeaderWorkerSet > StatefulSet hostname > single. */
#include "ident.h"
#include "test.h"

static int resolve(rt_ident *id, const rt_ident_flags *f, char *const *env, const char *host,
                   int def_world, dsr1_err *err)
{
    dsr1_err_clear(err);
    return rt_ident_resolve(id, f, env, host, def_world, err);
}

TEST(ident_torchrun_env)
{
    char *env[] = {"RANK=5", "WORLD_SIZE=8", "LOCAL_RANK=1", "MASTER_ADDR=10.0.0.7",
                   "MASTER_PORT=1234", NULL};
    rt_ident id;
    dsr1_err err;
    CHECK_EQ_INT(resolve(&id, NULL, env, "whatever-3", 0, &err), 0);
    CHECK_EQ_INT(id.rank, 5);
    CHECK_EQ_INT(id.world_size, 8);
    CHECK_EQ_INT(id.local_rank, 1);
    CHECK_EQ_STR(id.master_addr, "10.0.0.7");
    CHECK_EQ_INT(id.master_port, 1234);
    CHECK_EQ_INT(id.source, RT_IDENT_TORCHRUN);
}

TEST(ident_flags_override_env)
{
    char *env[] = {"RANK=5", "WORLD_SIZE=8", "MASTER_ADDR=10.0.0.7", NULL};
    rt_ident_flags f;
    rt_ident_flags_init(&f);
    f.rank = 2;
    f.world_size = 4;
    f.master_addr = "node0";
    f.master_port = 4000;
    rt_ident id;
    dsr1_err err;
    CHECK_EQ_INT(resolve(&id, &f, env, NULL, 0, &err), 0);
    CHECK_EQ_INT(id.rank, 2);
    CHECK_EQ_INT(id.world_size, 4);
    CHECK_EQ_STR(id.master_addr, "node0");
    CHECK_EQ_INT(id.master_port, 4000);
    CHECK_EQ_INT(id.source, RT_IDENT_FLAGS);
}

TEST(ident_default_port_and_world_from_plan)
{
    char *env[] = {"RANK=1", NULL};
    rt_ident id;
    dsr1_err err;
    CHECK_EQ_INT(resolve(&id, NULL, env, NULL, 2, &err), 0);
    CHECK_EQ_INT(id.world_size, 2);
    CHECK_EQ_INT(id.master_port, RT_IDENT_DEFAULT_PORT);
    CHECK_EQ_STR(id.master_addr, "127.0.0.1");
    /* no world size anywhere: a clear error */
    CHECK_EQ_INT(resolve(&id, NULL, env, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "WORLD_SIZE");
}

TEST(ident_statefulset_hostname)
{
    char *env[] = {"LOCAL_RANK=3", "WORLD_SIZE=16", NULL};
    rt_ident_flags f;
    rt_ident_flags_init(&f);
    f.gpus_per_node = 8;
    rt_ident id;
    dsr1_err err;
    CHECK_EQ_INT(resolve(&id, &f, env, "dsr1-serve-1.dsr1.prod.svc.cluster.local", 0, &err), 0);
    CHECK_EQ_INT(id.source, RT_IDENT_STATEFULSET);
    CHECK_EQ_INT(id.rank, 11);
    CHECK_EQ_INT(id.node, 1);
    CHECK_EQ_INT(id.local_rank, 3);
    CHECK_EQ_STR(id.master_addr, "dsr1-serve-0.dsr1.prod.svc.cluster.local");
    /* ordinal 12 x 8 GPUs does not fit world 16 */
    CHECK_EQ_INT(resolve(&id, &f, env, "r1-12", 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "out of range");
    /* world size from the plan */
    char *env2[] = {"LOCAL_RANK=0", NULL};
    CHECK_EQ_INT(resolve(&id, &f, env2, "r1-1", 16, &err), 0);
    CHECK_EQ_INT(id.rank, 8);
    CHECK_EQ_STR(id.master_addr, "r1-0");
}

TEST(ident_statefulset_needs_local_rank_and_gpn)
{
    rt_ident_flags f;
    rt_ident_flags_init(&f);
    f.gpus_per_node = 8;
    char *noenv[] = {NULL};
    rt_ident id;
    dsr1_err err;
    CHECK_EQ_INT(resolve(&id, &f, noenv, "dsr1-2", 32, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "LOCAL_RANK");
    /* without --gpus-per-node a hostname is not taken as an ordinal */
    rt_ident_flags_init(&f);
    CHECK_EQ_INT(resolve(&id, &f, noenv, "build-2", 1, &err), 0);
    CHECK_EQ_INT(id.source, RT_IDENT_SINGLE);
    CHECK_EQ_INT(resolve(&id, &f, noenv, "build-2", 4, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "no rank");
    /* DSR1_GPUS_PER_NODE works like the flag */
    char *env[] = {"DSR1_GPUS_PER_NODE=2", "LOCAL_RANK=1", NULL};
    CHECK_EQ_INT(resolve(&id, &f, env, "dsr1-2", 8, &err), 0);
    CHECK_EQ_INT(id.rank, 5);
}

TEST(ident_leaderworkerset)
{
    char *env[] = {"LWS_WORKER_INDEX=1", "LWS_GROUP_SIZE=2", "LOCAL_RANK=7",
                   "LWS_LEADER_ADDRESS=r1-0.r1.default", "DSR1_GPUS_PER_NODE=8", NULL};
    rt_ident id;
    dsr1_err err;
    CHECK_EQ_INT(resolve(&id, NULL, env, "r1-0-1", 0, &err), 0);
    CHECK_EQ_INT(id.source, RT_IDENT_LWS);
    CHECK_EQ_INT(id.rank, 15);
    CHECK_EQ_INT(id.world_size, 16);
    CHECK_EQ_INT(id.node, 1);
    CHECK_EQ_STR(id.master_addr, "r1-0.r1.default");
    char *bad[] = {"LWS_WORKER_INDEX=1", "LWS_LEADER_ADDRESS=x", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, bad, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "LWS_GROUP_SIZE");
    char *noaddr[] = {"LWS_WORKER_INDEX=0", "LWS_GROUP_SIZE=2", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, noaddr, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "LWS_LEADER_ADDRESS");
}

TEST(ident_rejects_bad_values)
{
    rt_ident id;
    dsr1_err err;
    char *e1[] = {"RANK=4", "WORLD_SIZE=4", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, e1, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "out of range");
    char *e2[] = {"RANK=x1", "WORLD_SIZE=4", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, e2, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "RANK");
    char *e3[] = {"RANK=1", "WORLD_SIZE=4", "MASTER_PORT=70000", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, e3, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "MASTER_PORT");
    char *e4[] = {"RANK=1", "WORLD_SIZE=4", "LOCAL_RANK=2", "DSR1_GPUS_PER_NODE=2", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, e4, NULL, 0, &err), DSR1_E_USAGE);
    CHECK_CONTAINS(err.msg, "local rank");
    /* empty values count as unset */
    char *e5[] = {"RANK=", "WORLD_SIZE=", NULL};
    CHECK_EQ_INT(resolve(&id, NULL, e5, "h", 0, &err), 0);
    CHECK_EQ_INT(id.source, RT_IDENT_SINGLE);
    CHECK_EQ_INT(id.world_size, 1);
}
