/* rt_watchdog: a disarmed deadline never fires; an expired one ends the process with
 * its exit code and one line on stderr, removing the registered temp files (an open
 * rt_npy_out's among them) and no other; a re-arm moves the deadline and message
 * (checked in forked children). */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "npy.h"
#include "test.h"
#include "watchdog.h"

/* Run body in a child with stderr on a pipe; returns its wait status, stderr in buf. */
static int in_child(void (*body)(void), char *buf, size_t cap)
{
    int fd[2];
    if (pipe(fd) != 0)
        return -1;
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        body();
        _exit(0);
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(fd[0], buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = 0;
    close(fd[0]);
    int st = -1;
    waitpid(p, &st, 0);
    return st;
}

static void stuck(void)
{
    rt_watchdog_arm(0.2, 7, "rank %d: TP communicator setup did not finish within %d s", 3, 60);
    for (int i = 0; i < 100; i++) /* "blocked" for up to 10 s; the watchdog ends it first */
        usleep(100000);
}

static void disarmed(void)
{
    for (int i = 0; i < 20; i++)
        rt_watchdog_disarm(rt_watchdog_arm(0.05, 7, "must not fire"));
    usleep(300000); /* past every deadline above */
}

static void kept_alive_then_stalled(void)
{
    rt_watchdog *w = rt_watchdog_arm(0.3, 5, "armed");
    for (int i = 0; i < 10; i++) { /* 1 s of steps, each well inside its 0.3 s deadline */
        usleep(100000);
        rt_watchdog_rearm(w, 0.3, "rank 0: decode step %d made no progress", i);
    }
    for (int i = 0; i < 100; i++) /* step 9 stalls */
        usleep(100000);
}

static char g_dir[64];

/* an output being written (hidden temp file), another registered then released, one
 * never registered; then stuck until the watchdog fires */
static void stuck_while_writing(void)
{
    char p[128];
    rt_npy_out o;
    dsr1_err err;
    snprintf(p, sizeof p, "%s/logits.npy", g_dir);
    if (rt_npy_out_open(&o, p, &err) != 0)
        _exit(9);
    snprintf(p, sizeof p, "%s/released", g_dir);
    FILE *f = fopen(p, "w");
    if (!f)
        _exit(9);
    fclose(f);
    rt_watchdog_keep_on_fire(rt_watchdog_remove_on_fire(p));
    snprintf(p, sizeof p, "%s/other", g_dir);
    if (!(f = fopen(p, "w")))
        _exit(9);
    fclose(f);
    stuck();
}

static int count_files(const char *dir, int *hidden)
{
    char cmd[160], line[256];
    int n = 0;
    *hidden = 0;
    snprintf(cmd, sizeof cmd, "ls -A %s", dir);
    FILE *p = popen(cmd, "r");
    while (p && fgets(line, sizeof line, p)) {
        n++;
        *hidden += line[0] == '.';
    }
    if (p)
        pclose(p);
    return n;
}

TEST(watchdog_removes_registered_temp_files_on_fire)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/dsr1-wd-XXXXXX");
    CHECK(mkdtemp(g_dir) != NULL);
    char buf[1024];
    int st = in_child(stuck_while_writing, buf, sizeof buf);
    CHECK(WIFEXITED(st));
    CHECK_EQ_INT(WEXITSTATUS(st), 7);
    int hidden = 0, n = count_files(g_dir, &hidden);
    CHECK_MSG(hidden == 0, "%d hidden temp file(s) left in %s", hidden, g_dir);
    CHECK_EQ_INT(n, 2); /* "released" and "other" stay */
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    CHECK(system(cmd) == 0);
}

TEST(watchdog_remove_on_fire_table_is_bounded)
{
    int h[RT_WATCHDOG_FILES + 1];
    for (int i = 0; i <= RT_WATCHDOG_FILES; i++)
        h[i] = rt_watchdog_remove_on_fire("/nonexistent/x");
    for (int i = 0; i < RT_WATCHDOG_FILES; i++)
        CHECK(h[i] > 0);
    CHECK_EQ_INT(h[RT_WATCHDOG_FILES], 0);
    for (int i = 0; i <= RT_WATCHDOG_FILES; i++)
        rt_watchdog_keep_on_fire(h[i]);
    int again = rt_watchdog_remove_on_fire("/nonexistent/y");
    CHECK(again > 0);
    rt_watchdog_keep_on_fire(again);
}

TEST(watchdog_rearm_moves_the_deadline_and_message)
{
    char buf[1024];
    int st = in_child(kept_alive_then_stalled, buf, sizeof buf);
    CHECK(WIFEXITED(st));
    CHECK_EQ_INT(WEXITSTATUS(st), 5);
    CHECK_MSG(strstr(buf, "rank 0: decode step 9 made no progress\n") != NULL, "stderr: '%s'", buf);
    rt_watchdog_rearm(NULL, 1, "no-op");
}

TEST(watchdog_fires_with_code_and_message)
{
    char buf[1024];
    int st = in_child(stuck, buf, sizeof buf);
    CHECK(WIFEXITED(st));
    CHECK_EQ_INT(WEXITSTATUS(st), 7);
    CHECK_MSG(strstr(buf, ": rank 3: TP communicator setup did not finish within 60 s\n") != NULL,
              "stderr: '%s'", buf);
}

TEST(watchdog_disarmed_never_fires)
{
    char buf[1024];
    int st = in_child(disarmed, buf, sizeof buf);
    CHECK(WIFEXITED(st));
    CHECK_EQ_INT(WEXITSTATUS(st), 0);
    CHECK_MSG(buf[0] == 0, "stderr: '%s'", buf);
    rt_watchdog_disarm(NULL);
}
