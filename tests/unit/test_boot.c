/* boot: rendezvous and fences with ranks as threads on loopback. */
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "boot.h"
#include "test.h"

#define NMAX 8

typedef struct rank_run {
    rt_boot_self self;
    rt_boot_opts opts;
    const char *fence_fail; /* reason, or NULL */
    int skip_fence;         /* close right after joining (a rank that dies) */
    uint8_t id[RT_BOOT_ID_BYTES];
    int join_rc, fence_rc;
    dsr1_err err;
} rank_run;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) != 0)
        return 0;
    close(fd);
    return ntohs(a.sin_port);
}

static void *run_rank(void *p)
{
    rank_run *r = p;
    rt_boot *b = NULL;
    dsr1_err_clear(&r->err);
    r->fence_rc = -100;
    r->join_rc = rt_boot_join(&b, &r->self, &r->opts, r->id, &r->err);
    if (r->join_rc == 0 && !r->skip_fence)
        r->fence_rc = rt_boot_fence(b, "loaded", r->fence_fail == NULL, r->fence_fail, 3000,
                                    &r->err);
    rt_boot_close(b);
    return NULL;
}

static uint8_t the_id[RT_BOOT_ID_BYTES];

/* world ranks, `present` of them started; rank 0 always started */
static void setup(rank_run *rr, int world, int port, int timeout_ms)
{
    for (int i = 0; i < RT_BOOT_ID_BYTES; i++)
        the_id[i] = (uint8_t)(test_rand_u64() | 1);
    for (int r = 0; r < world; r++) {
        memset(&rr[r], 0, sizeof rr[r]);
        rr[r].self.rank = r;
        rr[r].self.world_size = world;
        memset(rr[r].self.digest, 0xab, 16);
        snprintf(rr[r].self.plan, sizeof rr[r].self.plan, "tp=%d ep=1 pp=1 dp=1 fp8", world);
        snprintf(rr[r].self.shard, sizeof rr[r].self.shard, "shard-tp%d", r);
        snprintf(rr[r].self.host, sizeof rr[r].self.host, "h%d", r);
        rr[r].opts.addr = "127.0.0.1";
        rr[r].opts.port = port;
        rr[r].opts.timeout_ms = timeout_ms;
        rr[r].opts.linger_ms = 300;
        if (r == 0)
            rr[r].opts.unique_id = the_id;
    }
}

static void run_all(rank_run *rr, int n, const int *start)
{
    pthread_t th[NMAX];
    for (int r = 0; r < n; r++)
        if (!start || start[r])
            pthread_create(&th[r], NULL, run_rank, &rr[r]);
    for (int r = 0; r < n; r++)
        if (!start || start[r])
            pthread_join(th[r], NULL);
}

TEST(boot_success_hands_out_id)
{
    rank_run rr[4];
    int port = free_port();
    CHECK(port > 0);
    setup(rr, 4, port, 5000);
    const char *expect[4] = {"shard-tp0", "shard-tp1", "shard-tp2", "shard-tp3"};
    rr[0].opts.expect_shard = expect;
    run_all(rr, 4, NULL);
    for (int r = 0; r < 4; r++) {
        CHECK_MSG(rr[r].join_rc == 0, "rank %d join: %s", r, rr[r].err.msg);
        CHECK_MSG(rr[r].fence_rc == 0, "rank %d fence: %s", r, rr[r].err.msg);
        CHECK(memcmp(rr[r].id, the_id, RT_BOOT_ID_BYTES) == 0);
    }
}

TEST(boot_world_of_one_needs_no_network)
{
    rank_run rr[1];
    setup(rr, 1, 1, 1000);
    run_all(rr, 1, NULL);
    CHECK_EQ_INT(rr[0].join_rc, 0);
    CHECK_EQ_INT(rr[0].fence_rc, 0);
}

static void check_all_fail(rank_run *rr, int n, const int *start, int status, const char *needle)
{
    for (int r = 0; r < n; r++) {
        if (start && !start[r])
            continue;
        int rc = rr[r].join_rc ? rr[r].join_rc : rr[r].fence_rc;
        CHECK_MSG(rc == status, "rank %d: status %d, wanted %d (%s)", r, rc, status,
                  rr[r].err.msg);
        CHECK_CONTAINS(rr[r].err.msg, needle);
    }
}

TEST(boot_manifest_mismatch_names_rank)
{
    rank_run rr[4];
    setup(rr, 4, free_port(), 5000);
    rr[2].self.digest[5] ^= 1;
    run_all(rr, 4, NULL);
    check_all_fail(rr, 4, NULL, DSR1_E_MISMATCH, "rank 2 (host h2) has manifest digest");
}

TEST(boot_plan_and_shard_mismatch)
{
    rank_run rr[3];
    setup(rr, 3, free_port(), 5000);
    snprintf(rr[1].self.plan, sizeof rr[1].self.plan, "tp=3 ep=3 pp=1 dp=1 fp8");
    run_all(rr, 3, NULL);
    check_all_fail(rr, 3, NULL, DSR1_E_MISMATCH, "rank 1 (host h1) runs plan");

    setup(rr, 3, free_port(), 5000);
    const char *expect[3] = {"shard-tp0", "shard-tp1", "shard-tp2"};
    rr[0].opts.expect_shard = expect;
    snprintf(rr[2].self.shard, sizeof rr[2].self.shard, "shard-tp1");
    run_all(rr, 3, NULL);
    check_all_fail(rr, 3, NULL, DSR1_E_MISMATCH, "rank 2 (host h2) holds shard \"shard-tp1\"");
}

TEST(boot_wrong_world_size_and_duplicate_rank)
{
    rank_run rr[4];
    setup(rr, 4, free_port(), 5000);
    rr[3].self.world_size = 5;
    run_all(rr, 4, NULL);
    check_all_fail(rr, 4, NULL, DSR1_E_MISMATCH, "rank 3 (host h3) says world size 5");

    setup(rr, 3, free_port(), 5000);
    rr[2].self.rank = 1;
    run_all(rr, 3, NULL);
    check_all_fail(rr, 3, NULL, DSR1_E_MISMATCH, "rank 1 joined twice");
}

TEST(boot_missing_rank_times_out)
{
    rank_run rr[4];
    setup(rr, 4, free_port(), 800);
    int start[4] = {1, 1, 0, 1};
    run_all(rr, 4, start);
    check_all_fail(rr, 4, start, DSR1_E_IO, "rank(s) 2 of world size 4 did not join within 0.8 s");
}

TEST(boot_rank0_absent_times_out)
{
    rank_run rr[2];
    setup(rr, 2, free_port(), 600);
    int start[2] = {0, 1};
    run_all(rr, 2, start);
    CHECK_EQ_INT(rr[1].join_rc, DSR1_E_IO);
    CHECK_CONTAINS(rr[1].err.msg, "rank 1 cannot reach rank 0 at 127.0.0.1");
}

TEST(boot_fence_reports_failed_rank)
{
    rank_run rr[4];
    setup(rr, 4, free_port(), 5000);
    rr[1].fence_fail = "tensor model.layers.0.mlp hash mismatch";
    run_all(rr, 4, NULL);
    check_all_fail(rr, 4, NULL, DSR1_E_MISMATCH,
                   "rank 1 (host h1) failed 'loaded': tensor model.layers.0.mlp hash mismatch");

}

TEST(boot_fence_dead_peer)
{
    rank_run rr[3];
    setup(rr, 3, free_port(), 5000);
    rr[2].skip_fence = 1; /* joins, then closes its socket without fencing */
    run_all(rr, 3, NULL);
    for (int r = 0; r < 2; r++) {
        CHECK_EQ_INT(rr[r].join_rc, 0);
        CHECK_EQ_INT(rr[r].fence_rc, DSR1_E_IO);
        CHECK_CONTAINS(rr[r].err.msg, "rank 2 (host h2) closed its bootstrap connection");
    }
}

TEST(boot_rank0_death_is_reported)
{
    rank_run rr[3];
    setup(rr, 3, free_port(), 5000);
    rr[0].skip_fence = 1;
    run_all(rr, 3, NULL);
    for (int r = 1; r < 3; r++) {
        CHECK_EQ_INT(rr[r].fence_rc, DSR1_E_IO);
        CHECK_CONTAINS(rr[r].err.msg, "rank 0 closed the bootstrap connection");
    }
}
