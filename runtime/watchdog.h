/* watchdog: a deadline for a call that cannot be bounded or interrupted any other way
 * (a blocking NCCL communicator setup, a CUDA teardown behind a stuck collective).
 *
 *   rt_watchdog *w = rt_watchdog_arm(60.0, 3, "rank 2: TP setup did not finish in 60 s");
 *   blocking_call();
 *   rt_watchdog_disarm(w);
 *
 * If the deadline passes before rt_watchdog_disarm, a helper thread writes the message
 * (one line, prefixed by the program name as the tools print errors) to stderr and ends
 * the process with _exit(code): no destructors or atexit handlers run, since the
 * blocked thread may hold any lock. rt_watchdog_rearm moves the deadline of a running
 * watchdog (a progress deadline over a loop). The tools write outputs through hidden
 * temp files renamed at the end, so nothing half-written takes a final name; temp files
 * registered with rt_watchdog_remove_on_fire are removed before the exit. Arming never
 * blocks; a failure to start the thread
 * returns NULL and the call simply runs unguarded. */
#ifndef DSR1_WATCHDOG_H
#define DSR1_WATCHDOG_H

typedef struct rt_watchdog rt_watchdog;

rt_watchdog *rt_watchdog_arm(double seconds, int exit_code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A new deadline (now + seconds) and message for an armed watchdog, e.g. once per
 * decode step; a mutex and a signal, no thread start. NULL is a no-op. */
void rt_watchdog_rearm(rt_watchdog *w, double seconds, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Cancel (if not fired) and free; NULL is a no-op. */
void rt_watchdog_disarm(rt_watchdog *w);

/* Files a firing watchdog removes before _exit: the hidden temp file of an output
 * still being written (npy.c registers its own), which the exit would otherwise leave
 * behind. The path is copied. Returns a handle > 0, or 0 when RT_WATCHDOG_FILES are
 * already registered (then that file is not removed). Removing handle 0 is a no-op. */
#define RT_WATCHDOG_FILES 8
int rt_watchdog_remove_on_fire(const char *path);
void rt_watchdog_keep_on_fire(int handle);

#endif
