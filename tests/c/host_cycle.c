/*
 * host_cycle.c - a C host for tests/test_c_host.py: attach, detach, attach again on a new base,
 * and a C EventCallback that reads its record through the header's accessors.
 *
 *     ./host_cycle MODULE.py
 *
 * For each of two rounds: a new event_base and a pipe; bs_python_attach(base, MODULE, "setup").
 * The Python side finds, in the environment, the address of on_event() below and of a struct
 * seen, the pipe's read end and the address of a counter; it registers on_event for EV_READ on
 * the pipe and a persistent Python timer that increments the counter, and keeps no references.
 * The host writes a byte into the pipe and runs its loop for 300 ms: on_event must see its fd,
 * EV_READ and the host's base through the accessors, the timer must tick. Then
 * bs_python_detach(base): the loop runs 100 ms more and nothing of Python's may run; the base is
 * freed. Prints one line per check; exits 0 when all pass.
 */
#define _POSIX_C_SOURCE 200809L
#include <bitcoin_support.h>

#include <event2/event.h>
#include <event2/thread.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct seen {
    int calls;
    int fd;
    int fired;
    int event_fd; /* event_get_fd(bs_event_get(ev)) */
    struct event_base *base;
};

static void on_event(LibEvent *ev, void *arg)
{
    struct seen *s = (struct seen *)arg;
    char c;
    s->calls++;
    s->fd = bs_event_fd(ev);
    s->fired = bs_event_fired(ev);
    s->base = bs_event_get_base(ev);
    s->event_fd = bs_event_get(ev) != NULL ? (int)event_get_fd(bs_event_get(ev)) : -2;
    if (read(s->fd, &c, 1) != 1)
        s->fired = -1;
}

static void run_for(struct event_base *base, long usec)
{
    struct timeval tv = {0, usec};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static int check(int ok, int round, const char *what)
{
    printf("round %d: %s: %s\n", round, what, ok ? "ok" : "FAILED");
    fflush(stdout);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    int failures = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODULE.py\n", argv[0]);
        return 2;
    }
    if (evthread_use_pthreads() != 0)
        return 1;
    for (int round = 1; round <= 2; round++) {
        struct event_base *base = event_base_new();
        struct seen seen;
        int fds[2];
        volatile int ticks = 0;
        char text[64];
        memset(&seen, 0, sizeof seen);
        if (base == NULL || pipe(fds) != 0)
            return 1;
        snprintf(text, sizeof text, "%p", (void *)&seen);
        setenv("BS_TEST_SEEN", text, 1);
        snprintf(text, sizeof text, "%p", (void *)&ticks);
        setenv("BS_TEST_TICKS", text, 1);
        snprintf(text, sizeof text, "%d", fds[0]);
        setenv("BS_TEST_FD", text, 1);
        EventCallback cb = on_event;
        void *cb_address;
        memcpy(&cb_address, &cb, sizeof cb_address);
        snprintf(text, sizeof text, "%p", cb_address);
        setenv("BS_TEST_CB", text, 1);

        failures += check(bs_python_attach(base, argv[1], "setup") == 0, round, "attach");
        if (write(fds[1], "x", 1) != 1)
            return 1;
        run_for(base, 300000);
        failures += check(seen.calls == 1 && seen.fired == EV_READ, round, "C callback fired");
        failures += check(seen.fd == fds[0] && seen.event_fd == fds[0], round, "bs_event_fd");
        failures += check(seen.base == base, round, "bs_event_get_base");
        failures += check(ticks >= 3, round, "Python timer ticks with no references");

        bs_python_detach(base);
        int before = ticks;
        if (write(fds[1], "y", 1) != 1)
            return 1;
        run_for(base, 100000);
        failures += check(ticks == before && seen.calls == 1, round, "nothing runs after detach");
        event_base_free(base);
        close(fds[0]);
        close(fds[1]);
    }
    bs_python_detach(NULL); /* a no-op */
    printf("%s\n", failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}
