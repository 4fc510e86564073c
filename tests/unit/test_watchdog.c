/* rt_watchdog: a disarmed deadline never fires; an expired one ends the process with
 * its exit code and one line on stderr; a re-arm moves the deadline and message
 * (checked in forked children). */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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
