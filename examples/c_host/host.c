/*
 * host.c - a C program that owns a libevent loop and an HTTP server, and loads Python handlers.
 *
 *     ./host PORT [MODULE:FUNCTION ...]
 *
 * Creates an event_base and a listening socket on 127.0.0.1:PORT (0 picks a free port), then
 * for each MODULE:FUNCTION (default: c_host_app.py beside this program, function setup) calls
 * bs_python_attach(base, MODULE, FUNCTION). MODULE is a dotted module name or the path of a .py
 * file. The Python side serves HTTP on the host's socket with an evhttp on the host's base; it
 * finds the socket through the environment variable BS_HOST_LISTEN_FD (set below). A failed
 * attach is reported and the host runs on without it.
 *
 * The host owns the loop and the signals: SIGTERM and SIGINT are libevent signal events on the
 * host's base that stop the loop. After the loop ends, MODULE:teardown is called for each module
 * attached, so Python releases what it registered on the base while the base still exists;
 * then the host closes its socket, frees the base and exits 0.
 *
 * It also keeps a secret (a stand-in API token) in the package's locked pool for its whole run:
 * bs_secure_allocate() and bs_secure_deallocate() work without Python.
 */
#define _POSIX_C_SOURCE 200809L
#include <bitcoin_support.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <event2/util.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_MODULES 16

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    fprintf(stderr, "host: signal %d, stopping\n", (int)sig);
    event_base_loopbreak((struct event_base *)arg);
}

/* Split "module:function" at the last ':' into module and function (both owned by the caller). */
static int split_target(const char *spec, char **module, char **function)
{
    const char *colon = strrchr(spec, ':');
    if (colon == NULL || colon == spec || colon[1] == '\0')
        return -1;
    *module = strndup(spec, (size_t)(colon - spec));
    *function = strdup(colon + 1);
    return (*module != NULL && *function != NULL) ? 0 : -1;
}

/* c_host_app.py in the folder of this executable. */
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
    char *path = malloc(len);
    if (path != NULL)
        snprintf(path, len, "%s/c_host_app.py", exe);
    return path;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [MODULE:FUNCTION ...]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    if (port < 0 || port > 65535) {
        fprintf(stderr, "host: bad port %s\n", argv[1]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up must not kill the server */

    /* Threads: Python (trio's guest mode, call_soon_threadsafe) wakes the loop from others. */
    if (evthread_use_pthreads() != 0) {
        fprintf(stderr, "host: evthread_use_pthreads failed\n");
        return 1;
    }
    struct event_base *base = event_base_new();
    if (base == NULL) {
        fprintf(stderr, "host: event_base_new failed\n");
        return 1;
    }

    /* The host owns the listening socket; Python's evhttp serves on a duplicate of it. */
    struct sockaddr_in addr;
    socklen_t addrlen = sizeof addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    evutil_socket_t listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || evutil_make_listen_socket_reuseable(listener) != 0 ||
        evutil_make_socket_closeonexec(listener) != 0 ||
        bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 128) != 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &addrlen) != 0) {
        fprintf(stderr, "host: cannot listen on 127.0.0.1:%d\n", port);
        return 1;
    }

    /* Host-owned secret in locked memory: zeroed on allocation, wiped on release. */
    unsigned char *token = bs_secure_allocate(32);
    if (token == NULL) {
        fprintf(stderr, "host: bs_secure_allocate failed\n");
        return 1;
    }
    memcpy(token, "host-api-token-0123456789abcdef", 31);

    struct event *stop_term = evsignal_new(base, SIGTERM, on_stop_signal, base);
    struct event *stop_int = evsignal_new(base, SIGINT, on_stop_signal, base);
    if (stop_term == NULL || stop_int == NULL || event_add(stop_term, NULL) != 0 ||
        event_add(stop_int, NULL) != 0) {
        fprintf(stderr, "host: cannot watch SIGTERM/SIGINT\n");
        return 1;
    }

    /* The one thing Python needs besides the base: the socket to serve on. */
    char fdtext[16];
    snprintf(fdtext, sizeof fdtext, "%d", (int)listener);
    setenv("BS_HOST_LISTEN_FD", fdtext, 1);

    char *modules[MAX_MODULES];
    int attached = 0;
    int ntargets = argc > 2 ? argc - 2 : 1;
    for (int i = 0; i < ntargets && attached < MAX_MODULES; i++) {
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
        int rc = bs_python_attach(base, module, function);
        printf("attach %s:%s -> %d\n", module, function, rc);
        fflush(stdout);
        if (rc == 0)
            modules[attached++] = module;
        else
            free(module);
        free(function);
    }

    printf("listening on http://127.0.0.1:%d/\n", ntohs(addr.sin_port));
    fflush(stdout);

    event_base_dispatch(base);

    /* Python's handles on the base go first, while the base still exists. */
    for (int i = 0; i < attached; i++) {
        int rc = bs_python_attach(base, modules[i], "teardown");
        printf("teardown %s -> %d\n", modules[i], rc);
        free(modules[i]);
    }
    bs_secure_deallocate(token); /* wiped before it goes back to the pool */
    event_free(stop_term);
    event_free(stop_int);
    evutil_closesocket(listener);
    event_base_free(base);
    printf("host: stopped\n");
    return 0;
}
