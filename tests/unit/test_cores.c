/* cores: ranks per host and the load's thread split (runtime/cores.h). */
#include "cores.h"
#include "test.h"

TEST(cores_local_ranks_sources)
{
    CHECK_EQ_INT(rt_local_ranks(8, "4", 16, 8), 8);     /* --gpus-per-node wins */
    CHECK_EQ_INT(rt_local_ranks(0, "4", 16, 8), 4);     /* torchrun's LOCAL_WORLD_SIZE */
    CHECK_EQ_INT(rt_local_ranks(0, NULL, 16, 8), 8);    /* all visible GPUs in use */
    CHECK_EQ_INT(rt_local_ranks(0, "", 2, 8), 2);       /* fewer ranks than GPUs */
    CHECK_EQ_INT(rt_local_ranks(0, "x3", 4, 8), 4);     /* malformed: ignored */
    CHECK_EQ_INT(rt_local_ranks(0, "-2", 4, 8), 4);
    CHECK_EQ_INT(rt_local_ranks(0, NULL, 0, 0), 1);     /* nothing known */
    CHECK_EQ_INT(rt_local_ranks(-1, NULL, 3, 0), 1);
}

TEST(cores_share)
{
    CHECK_EQ_INT(rt_core_share(128, 8), 16);
    CHECK_EQ_INT(rt_core_share(16, 1), 16);
    CHECK_EQ_INT(rt_core_share(16, 2), 8);
    CHECK_EQ_INT(rt_core_share(4, 8), 1); /* more ranks than cores */
    CHECK_EQ_INT(rt_core_share(16, 0), 16);
}

TEST(cores_load_threads)
{
    int u, h;
    rt_load_threads(16, 0, &u, &h);
    CHECK_EQ_INT(u, 16);
    CHECK_EQ_INT(h, 0);
    rt_load_threads(64, 0, &u, &h);
    CHECK_EQ_INT(u, 16); /* more copy threads add no bandwidth */
    rt_load_threads(3, 0, &u, &h);
    CHECK_EQ_INT(u, 3);
    rt_load_threads(16, 1, &u, &h);
    CHECK_EQ_INT(u, 8);
    CHECK_EQ_INT(h, 8);
    rt_load_threads(112, 1, &u, &h); /* one rank on a big host: hashing takes the rest */
    CHECK_EQ_INT(u, 16);
    CHECK_EQ_INT(h, 96);
    rt_load_threads(15, 1, &u, &h);
    CHECK_EQ_INT(u + h, 15);
    CHECK_EQ_INT(u, 8);
    rt_load_threads(1, 1, &u, &h); /* never fewer than 2 each */
    CHECK_EQ_INT(u, 2);
    CHECK_EQ_INT(h, 2);
    /* 8 ranks on 128 cores with --verify full: 16 threads each, not ~112 hash threads */
    rt_load_threads(rt_core_share(128, rt_local_ranks(0, "8", 8, 8)), 1, &u, &h);
    CHECK_EQ_INT(u + h, 16);
}
