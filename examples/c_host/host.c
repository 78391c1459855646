/*
 * host.c - a C HTTP server on libevent that lets Python serve some of its paths.
 *
 *     BS_HOST_TOKEN=secret ./host PORT [MODULE:FUNCTION ...]
 *
 * Shaped like Bitcoin Core's httpserver.cpp: the host owns its event_base and its evhttp
 * (limits, timeouts, allowed methods, bound socket), serves its own paths from C, checks
 * authorization in C, and shuts down in a fixed order. What it adds is Python:
 *
 *   - /c/health is a C handler (JSON), /c/slow a C handler that answers 200 ms later (an
 *     in-flight request for the shutdown order to wait for); anything else gets 404 from C.
 *   - Each MODULE:FUNCTION (default: c_host_app.py beside this program, function setup) gets the
 *     host's evhttp through bs_python_attach_evhttp() and registers its routes on it (/py/echo,
 *     /py/stats, ...). A failed attach is reported and the host serves on without it.
 *   - The API token (BS_HOST_TOKEN, or a built-in demo token) lives in bs_secure_allocate()
 *     memory; py_gate() runs in C before every request Python would get and answers 401 unless
 *     the request carries "Authorization: Bearer <token>", compared in constant time.
 *   - SIGTERM or SIGINT (libevent signal events on the host's base): stop accepting; let the
 *     in-flight C requests finish; leave the loop; bs_python_detach() (Python's routes, events,
 *     trio run and asyncio job go; requests Python still holds get 503); run the loop while
 *     bs_python_pending() says Python still has jobs finishing or replies being written (at
 *     most 2 s for the replies); evhttp_free(); event_base_free(); exit 0.
 *
 * It compiles as C99 and as C++ (the Makefile builds both).
 */
#define _POSIX_C_SOURCE 200809L
#include <bitcoin_support.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <event2/util.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TOKEN_MAX 256
#define SLOW_USEC 200000
#define LINGER_USEC 2000000 /* at most, for Python's last replies to be written */

static const char DEMO_TOKEN[] = "host-api-token-0123456789abcdef";

struct host {
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    unsigned char *token; /* bs_secure_allocate(TOKEN_MAX): wiped when it goes back */
    size_t token_len;
    struct event *sig_term;
    struct event *sig_int;
    struct event *drain;  /* while stopping: leaves the loop once no C request is in flight */
    int stopping;
    int inflight;         /* C requests accepted and not answered yet */
    unsigned long c_served;
    unsigned long refused; /* 401s from py_gate */
};

/* ---- C handlers ---- */

static void reply_json(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *out = evhttp_request_get_output_buffer(req);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evbuffer_add(out, body, strlen(body));
    evhttp_send_reply(req, code, NULL, NULL);
}

static void health_cb(struct evhttp_request *req, void *arg)
{
    struct host *h = (struct host *)arg;
    char body[192];
    h->c_served++;
    snprintf(body, sizeof body,
             "{\"status\": \"%s\", \"c_served\": %lu, \"in_flight\": %d, \"refused\": %lu}\n",
             h->stopping ? "stopping" : "ok", h->c_served, h->inflight, h->refused);
    reply_json(req, 200, body);
}

struct slow {
    struct host *h;
    struct evhttp_request *req;
};

static void slow_done(evutil_socket_t fd, short what, void *arg)
{
    struct slow *s = (struct slow *)arg;
    (void)fd;
    (void)what;
    s->h->c_served++;
    reply_json(s->req, 200, "{\"slow\": true}\n");
    s->h->inflight--;
    free(s);
}

/* Answers later, as a handler that hands work to another thread would (Core's work queue). */
static void slow_cb(struct evhttp_request *req, void *arg)
{
    struct host *h = (struct host *)arg;
    struct slow *s = (struct slow *)malloc(sizeof *s);
    struct timeval tv = {0, SLOW_USEC};
    if (s == NULL || h->stopping) { /* nothing new once the shutdown waits for the rest */
        free(s);
        evhttp_send_error(req, HTTP_SERVUNAVAIL, NULL);
        return;
    }
    s->h = h;
    s->req = req;
    if (event_base_once(h->base, -1, EV_TIMEOUT, slow_done, s, &tv) != 0) {
        free(s);
        evhttp_send_error(req, HTTP_SERVUNAVAIL, NULL);
        return;
    }
    h->inflight++;
}

static void fallback_cb(struct evhttp_request *req, void *arg)
{
    struct host *h = (struct host *)arg;
    if (h->stopping)
        reply_json(req, 503, "{\"error\": \"stopping\"}\n");
    else
        reply_json(req, 404, "{\"error\": \"not found\"}\n");
}

/* ---- the gate before Python: constant-time token check ---- */

/* 1 when auth is "Bearer <token>"; the time taken depends only on the lengths. */
static int token_ok(const struct host *h, const char *auth)
{
    static const char prefix[] = "Bearer ";
    if (auth == NULL || strncmp(auth, prefix, sizeof prefix - 1) != 0)
        return 0;
    const unsigned char *given = (const unsigned char *)auth + (sizeof prefix - 1);
    size_t n = strlen((const char *)given);
    unsigned char diff = (unsigned char)(n != h->token_len);
    for (size_t i = 0; i < h->token_len; i++)
        diff |= (unsigned char)(h->token[i] ^ (i < n ? given[i] : 0u));
    return diff == 0;
}

/* Runs before any Python route; nonzero: answered here, Python never sees the request. */
static int py_gate(EvHttpRequest *req, void *arg)
{
    struct host *h = (struct host *)arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (path != NULL && strncmp(path, "/py/", 4) == 0 && token_ok(h, auth))
        return 0;
    h->refused++;
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    reply_json(req, 401, "{\"error\": \"unauthorized\"}\n");
    return 1;
}

/* ---- shutdown ---- */

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    struct host *h = (struct host *)arg;
    (void)fd;
    (void)what;
    if (h->inflight > 0)
        return; /* persistent: look again in 10 ms */
    event_del(h->drain);
    event_base_loopbreak(h->base);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct host *h = (struct host *)arg;
    struct timeval tick = {0, 10000};
    (void)what;
    if (h->stopping)
        return;
    h->stopping = 1;
    fprintf(stderr, "host: signal %d: stopping\n", (int)sig);
    if (h->bound != NULL) { /* 1. no new connections */
        evhttp_del_accept_socket(h->http, h->bound);
        h->bound = NULL;
    }
    event_add(h->drain, &tick); /* 2. in-flight C requests finish, then the loop ends */
}

/* ---- set-up ---- */

/* c_host_app.py in the folder of this executable (malloc'd). */
static char *default_module(void)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return strdup("c_host_app");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash != NULL)
        *slash = '\0';
    size_t len = strlen(exe) + sizeof "/c_host_app.py";
    char *path = (char *)malloc(len);
    if (path != NULL)
        snprintf(path, len, "%s/c_host_app.py", exe);
    return path;
}

/* "module:function" split at the last ':'; 0 on success (both malloc'd). */
static int split_target(const char *spec, char **module, char **function)
{
    const char *colon = strrchr(spec, ':');
    *module = *function = NULL;
    if (colon == NULL || colon == spec || colon[1] == '\0')
        return -1;
    *module = strndup(spec, (size_t)(colon - spec));
    *function = strdup(colon + 1);
    return (*module != NULL && *function != NULL) ? 0 : -1;
}

static int load_token(struct host *h)
{
    const char *env = getenv("BS_HOST_TOKEN");
    const char *src = (env != NULL && env[0] != '\0') ? env : DEMO_TOKEN;
    size_t n = strlen(src);
    if (n >= TOKEN_MAX)
        return -1;
    h->token = (unsigned char *)bs_secure_allocate(TOKEN_MAX);
    if (h->token == NULL)
        return -1;
    memcpy(h->token, src, n);
    h->token_len = n;
    if (env != NULL)
        unsetenv("BS_HOST_TOKEN"); /* Python and children do not inherit it */
    return 0;
}

static int init_http(struct host *h, int port)
{
    h->http = evhttp_new(h->base);
    if (h->http == NULL)
        return -1;
    evhttp_set_timeout(h->http, 30);
    evhttp_set_max_headers_size(h->http, 8192);
    evhttp_set_max_body_size(h->http, 1 << 20);
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(h->http, fallback_cb, h);
    if (evhttp_set_cb(h->http, "/c/health", health_cb, h) != 0 ||
        evhttp_set_cb(h->http, "/c/slow", slow_cb, h) != 0)
        return -1;
    h->bound = evhttp_bind_socket_with_handle(h->http, "127.0.0.1", (ev_uint16_t)port);
    return h->bound != NULL ? 0 : -1;
}

static int bound_port(struct evhttp_bound_socket *bound)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(bound);
    if (getsockname(fd, (struct sockaddr *)&sin, &len) != 0)
        return -1;
    return ntohs(sin.sin_port);
}

/* The PORT argument: decimal digits only, 0 to 65535 (0: any free port); 0 on success. */
static int parse_port(const char *text, int *port)
{
    long value = 0;
    if (text[0] == '\0' || strlen(text) > 5)
        return -1;
    for (const char *c = text; *c != '\0'; c++) {
        if (*c < '0' || *c > '9')
            return -1;
        value = value * 10 + (*c - '0');
    }
    if (value > 65535)
        return -1;
    *port = (int)value;
    return 0;
}

int main(int argc, char **argv)
{
    struct host h;
    int port = 0;
    memset(&h, 0, sizeof h);
    /* Every bad argument is one line on stderr and exit status 2, before anything starts. */
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [MODULE:FUNCTION ...]\n", argv[0]);
        return 2;
    }
    if (parse_port(argv[1], &port) != 0) {
        fprintf(stderr,
                "host: PORT must be a number from 0 to 65535 (0: any free port), got '%s'\n",
                argv[1]);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        char *module = NULL, *function = NULL;
        int bad = split_target(argv[i], &module, &function) != 0;
        free(module);
        free(function);
        if (bad) {
            fprintf(stderr, "host: expected MODULE:FUNCTION, got '%s'\n", argv[i]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the server */

    /* Before the base: Python (trio's guest mode, call_soon_threadsafe) wakes it from threads. */
    if (evthread_use_pthreads() != 0 || (h.base = event_base_new()) == NULL) {
        fprintf(stderr, "host: cannot create the event base\n");
        return 1;
    }
    if (load_token(&h) != 0) {
        fprintf(stderr, "host: cannot keep the API token in secure memory\n");
        return 1;
    }
    if (init_http(&h, port) != 0) {
        fprintf(stderr, "host: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    h.sig_term = evsignal_new(h.base, SIGTERM, signal_cb, &h);
    h.sig_int = evsignal_new(h.base, SIGINT, signal_cb, &h);
    h.drain = event_new(h.base, -1, EV_PERSIST, drain_cb, &h);
    if (h.sig_term == NULL || h.sig_int == NULL || h.drain == NULL ||
        event_add(h.sig_term, NULL) != 0 || event_add(h.sig_int, NULL) != 0) {
        fprintf(stderr, "host: cannot watch SIGTERM/SIGINT\n");
        return 1;
    }

    /* Python: the gate first, so no Python route is ever served without it; and every
       connection framed strictly (RFC 9112) before libevent reads it, the host's routes too. */
    if (bs_python_set_request_gate(h.http, py_gate, &h) != 0) {
        fprintf(stderr, "host: cannot install the gate; not loading Python\n");
    } else if (bs_python_set_strict_framing(h.http, 1) != 0) {
        fprintf(stderr, "host: cannot frame the connections strictly; not loading Python\n");
    } else {
        int ntargets = argc > 2 ? argc - 2 : 1;
        for (int i = 0; i < ntargets; i++) {
            char *module = NULL, *function = NULL;
            if (argc > 2) {
                if (split_target(argv[i + 2], &module, &function) != 0) {
                    fprintf(stderr, "host: expected MODULE:FUNCTION, got %s\n", argv[i + 2]);
                    free(module);
                    free(function);
                    continue;
                }
            } else {
                module = default_module();
                function = strdup("setup");
            }
            int rc = bs_python_attach_evhttp(h.http, module, function);
            printf("attach %s:%s -> %d\n", module, function, rc);
            fflush(stdout);
            free(module);
            free(function);
        }
    }

    printf("listening on http://127.0.0.1:%d/\n", bound_port(h.bound));
    fflush(stdout);

    event_base_dispatch(h.base);

    /* 3. Python lets go of the base: routes, events, its trio and asyncio jobs (cancelled and
       finished); its pending requests get 503. */
    int rc = bs_python_detach(h.base);
    if (rc < 0)
        fprintf(stderr, "host: bs_python_detach failed\n");
    /* 4. The loop runs (one round of 10 ms for the C replies queued last) while Python says
       something is left: jobs still finishing (1), then the replies it queued last (503s)
       being written (2), the latter for at most LINGER_USEC. */
    struct timeval tick = {0, 10000};
    struct timeval start, now, spent;
    evutil_gettimeofday(&start, NULL);
    int left;
    do {
        event_base_loopexit(h.base, &tick);
        event_base_dispatch(h.base);
        left = bs_python_pending(h.base);
        evutil_gettimeofday(&now, NULL);
        evutil_timersub(&now, &start, &spent);
        if (left == 2 && spent.tv_sec * 1000000L + spent.tv_usec >= LINGER_USEC)
            break; /* a client that does not read its reply is not waited for */
    } while (left > 0);
    /* 5. The server, the host's events, the base, the token. */
    evhttp_free(h.http);
    event_free(h.drain);
    event_free(h.sig_term);
    event_free(h.sig_int);
    event_base_free(h.base);
    bs_secure_deallocate(h.token);
    printf("host: stopped (C requests served: %lu, refused: %lu)\n", h.c_served, h.refused);
    return 0;
}
