/*
 * host_detach.c - a C host for tests/test_c_host.py that attaches Python to its evhttp and
 * detaches it again, many times, with jobs and requests in flight each time.
 *
 *     ./host_detach MODULE.py CYCLES
 *
 * One event_base and one evhttp (bound to 127.0.0.1) for the whole run, as a host has. Each
 * cycle: a request gate, bs_python_attach_evhttp(MODULE, "setup") (a trio job serving the
 * evhttp with stream_body, an asyncio job on an attached loop), then four clients (raw sockets)
 * whose requests Python holds: a trio handler asleep, an asyncio handler asleep, a streamed
 * reply the client does not read (so the handler waits in send_chunk), and a chunked upload the
 * client stops sending (the handler waits in iter_body). Once Python has started all four, the
 * host detaches:
 *   - cycle % 4 == 1: from its own timer callback, while its loop runs;
 *   - cycle % 4 == 3: from its request gate, answering that request itself;
 *   - even cycles: between loop rounds, after its loop returned.
 * While bs_python_pending() says 1 it runs its loop. Then every job must have finished (the
 * Python side counts in `counters`, whose address it finds in BS_TEST_COUNTERS) and every
 * client must read its reply: 503 for the held requests, the whole streamed reply (ended), 200
 * for the gate's own answer; once they have, bs_python_pending() must come down to 0 (every
 * request record Python had is freed). One line per cycle: "cycle N: rc R rss KB fds N";
 * then "all ok" and exit 0, or a line "FAILED ..." and exit 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <bitcoin_support.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { TRIO_DONE, ASYNCIO_DONE, STARTED, CANCELLED, NCOUNTERS };
static int counters[NCOUNTERS];

struct host {
    struct event_base *base;
    struct evhttp *http;
    int detach_rc; /* -2 until a detach made inside a callback ran */
};

struct client {
    const char *name;
    const char *expect; /* the start of the reply's status line */
    int fd;
    int eof;
    size_t got;
    char head[16];
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void run_for(struct event_base *base, long usec)
{
    struct timeval tv = {usec / 1000000, usec % 1000000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static int fail(int cycle, const char *what)
{
    printf("FAILED cycle %d: %s (trio_done %d asyncio_done %d started %d cancelled %d)\n",
           cycle, what, counters[TRIO_DONE], counters[ASYNCIO_DONE], counters[STARTED],
           counters[CANCELLED]);
    fflush(stdout);
    return 1;
}

/* A connected, non-blocking socket that has sent `request`; -1 on failure. */
static int connect_send(int port, const char *request)
{
    struct sockaddr_in sin;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((unsigned short)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    size_t n = strlen(request);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0 ||
        send(fd, request, n, 0) != (ssize_t)n || fcntl(fd, F_SETFL, O_NONBLOCK) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Read what is there; keep the reply's first bytes. */
static void pump(struct client *c)
{
    char buf[65536];
    while (!c->eof) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n == 0) {
            c->eof = 1;
        } else if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c->eof = 1;
            return;
        } else {
            if (c->got < sizeof c->head - 1) {
                size_t keep = sizeof c->head - 1 - c->got;
                if (keep > (size_t)n)
                    keep = (size_t)n;
                memcpy(c->head + c->got, buf, keep);
            }
            c->got += (size_t)n;
        }
    }
}

static void detach_cb(evutil_socket_t fd, short what, void *arg)
{
    struct host *h = (struct host *)arg;
    (void)fd;
    (void)what;
    h->detach_rc = bs_python_detach(h->base);
}

static int gate(EvHttpRequest *req, void *arg)
{
    struct host *h = (struct host *)arg;
    const char *uri = evhttp_request_get_uri(req);
    if (uri != NULL && strcmp(uri, "/py/detach") == 0) {
        h->detach_rc = bs_python_detach(h->base);
        evhttp_send_reply(req, 200, "OK", NULL);
        return 1;
    }
    return 0;
}

static long rss_kb(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the DIR's own descriptor */
}

static int bound_port(struct evhttp_bound_socket *bound)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    if (getsockname(evhttp_bound_socket_get_fd(bound), (struct sockaddr *)&sin, &len) != 0)
        return -1;
    return ntohs(sin.sin_port);
}

int main(int argc, char **argv)
{
    struct host h;
    char text[64];
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODULE.py CYCLES\n", argv[0]);
        return 2;
    }
    int cycles = atoi(argv[2]);
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0)
        return 1;
    memset(&h, 0, sizeof h);
    h.base = event_base_new();
    h.http = h.base != NULL ? evhttp_new(h.base) : NULL;
    struct evhttp_bound_socket *bound =
        h.http != NULL ? evhttp_bind_socket_with_handle(h.http, "127.0.0.1", 0) : NULL;
    if (bound == NULL)
        return 1;
    int port = bound_port(bound);
    snprintf(text, sizeof text, "%p", (void *)counters);
    setenv("BS_TEST_COUNTERS", text, 1);

    for (int cycle = 1; cycle <= cycles; cycle++) {
        int before[NCOUNTERS];
        memcpy(before, counters, sizeof before);
        if (bs_python_set_request_gate(h.http, gate, &h) != 0)
            return fail(cycle, "set the gate");
        if (bs_python_attach_evhttp(h.http, argv[1], "setup") != 0)
            return fail(cycle, "attach");
        struct client clients[5] = {
            {"trio held", "HTTP/1.1 503", -1, 0, 0, {0}},
            {"asyncio held", "HTTP/1.1 503", -1, 0, 0, {0}},
            {"streamed reply", "HTTP/1.1 200", -1, 0, 0, {0}},
            {"streamed upload", "HTTP/1.1 503", -1, 0, 0, {0}},
            {"gate", "HTTP/1.1 200", -1, 0, 0, {0}},
        };
        int nclients = 4;
        clients[0].fd = connect_send(port, "GET /py/held HTTP/1.1\r\nHost: h\r\n"
                                           "Connection: close\r\n\r\n");
        clients[1].fd = connect_send(port, "GET /py/aheld HTTP/1.1\r\nHost: h\r\n"
                                           "Connection: close\r\n\r\n");
        clients[2].fd = connect_send(port, "GET /py/stream HTTP/1.1\r\nHost: h\r\n"
                                           "Connection: close\r\n\r\n");
        clients[3].fd = connect_send(port, "POST /py/upload HTTP/1.1\r\nHost: h\r\n"
                                           "Connection: close\r\nTransfer-Encoding: chunked\r\n"
                                           "\r\n5\r\nhello\r\n");
        for (int i = 0; i < nclients; i++)
            if (clients[i].fd < 0)
                return fail(cycle, "connect");
        double deadline = now() + 30;
        while (counters[STARTED] - before[STARTED] < 4) {
            if (now() > deadline)
                return fail(cycle, "the four handlers did not start");
            run_for(h.base, 2000);
        }
        run_for(h.base, 5000); /* the streamed reply fills the socket; the upload is read */

        int rc;
        if (cycle % 2 == 0) {
            rc = bs_python_detach(h.base); /* between loop rounds */
        } else {
            h.detach_rc = -2;
            if (cycle % 4 == 1) {
                struct timeval zero = {0, 0};
                event_base_once(h.base, -1, EV_TIMEOUT, detach_cb, &h, &zero);
            } else {
                clients[4].fd = connect_send(port, "GET /py/detach HTTP/1.1\r\nHost: h\r\n"
                                                   "Connection: close\r\n\r\n");
                if (clients[4].fd < 0)
                    return fail(cycle, "connect");
                nclients = 5;
            }
            deadline = now() + 30;
            while (h.detach_rc == -2) {
                if (now() > deadline)
                    return fail(cycle, "the detach callback did not run");
                run_for(h.base, 2000);
            }
            rc = h.detach_rc;
        }
        if (rc != 0 && rc != 1)
            return fail(cycle, "bs_python_detach failed");
        deadline = now() + 30;
        while (bs_python_pending(h.base) == 1) {
            if (now() > deadline)
                return fail(cycle, "still pending");
            run_for(h.base, 2000);
        }
        if (bs_python_pending(h.base) < 0)
            return fail(cycle, "bs_python_pending failed");
        if (counters[TRIO_DONE] - before[TRIO_DONE] != 1)
            return fail(cycle, "the trio run did not finish");
        if (counters[ASYNCIO_DONE] - before[ASYNCIO_DONE] != 1)
            return fail(cycle, "the asyncio task did not finish");
        if (counters[CANCELLED] - before[CANCELLED] != 4)
            return fail(cycle, "not every handler was cancelled");

        deadline = now() + 30;
        for (;;) {
            int open = 0;
            for (int i = 0; i < nclients; i++) {
                pump(&clients[i]);
                open += !clients[i].eof;
            }
            if (open == 0)
                break;
            if (now() > deadline) {
                for (int i = 0; i < nclients; i++)
                    if (!clients[i].eof)
                        printf("no end of reply for %s\n", clients[i].name);
                return fail(cycle, "replies did not end");
            }
            run_for(h.base, 2000);
        }
        for (int i = 0; i < nclients; i++) {
            if (strncmp(clients[i].head, clients[i].expect, strlen(clients[i].expect)) != 0) {
                printf("%s: got %.12s\n", clients[i].name, clients[i].head);
                return fail(cycle, "wrong reply");
            }
            close(clients[i].fd);
        }
        deadline = now() + 30; /* every reply written and its record freed */
        while (bs_python_pending(h.base) != 0) {
            if (now() > deadline)
                return fail(cycle, "replies still pending");
            run_for(h.base, 2000);
        }
        printf("cycle %d: rc %d rss %ld fds %d\n", cycle, rc, rss_kb(), open_fds());
        fflush(stdout);
    }
    if (bs_python_detach(h.base) != 0) /* nothing left: a no-op */
        return fail(cycles, "a second detach");
    evhttp_free(h.http);
    event_base_free(h.base);
    printf("all ok\n");
    return 0;
}
