/*
 * c_echo.c - the C reference for the HTTP echo benchmark: libevent's evhttp answering every
 * request with 200, the request body and its Content-Type (default application/octet-stream),
 * 413 over the body limit, as `python -m bitcoin_support.echo` does.
 *
 *   c_echo PORT [--changelist] [--handler]
 *
 * Without --changelist the base is libevent's default; with it the base gets the tuning the
 * package's echo server uses (EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST). With --handler each request
 * runs the realistic handler of bench/http/handlers.py written in C: read the Content-Type
 * header, copy the body out of the request, set Content-Type on the reply and send the copy
 * (the echo moves the body inside libevent instead). Prints
 * "listening on http://127.0.0.1:PORT/" and stops on SIGINT or SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

static void echo_cb(struct evhttp_request *req, void *arg)
{
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    (void)arg;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      ctype ? ctype : "application/octet-stream");
    evbuffer_add_buffer(evhttp_request_get_output_buffer(req), evhttp_request_get_input_buffer(req));
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void handler_cb(struct evhttp_request *req, void *arg)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    size_t n = evbuffer_get_length(in);
    char small[4096];
    char *body = n <= sizeof small ? small : malloc(n);
    (void)arg;
    if (body == NULL) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_copyout(in, body, n);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      ctype ? ctype : "application/octet-stream");
    evbuffer_add(evhttp_request_get_output_buffer(req), body, n);
    if (body != small)
        free(body);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 8080;
    int changelist = 0, handler = 0;
    for (int i = 2; i < argc; i++) {
        changelist |= strcmp(argv[i], "--changelist") == 0;
        handler |= strcmp(argv[i], "--handler") == 0;
    }
    struct event_config *cfg = event_config_new();
    if (changelist)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    signal(SIGPIPE, SIG_IGN);

    struct evhttp *http = evhttp_new(base);
    evhttp_set_max_body_size(http, 1048576);
    evhttp_set_gencb(http, handler ? handler_cb : echo_cb, NULL);
    struct evhttp_bound_socket *bound = evhttp_bind_socket_with_handle(http, "127.0.0.1", port);
    if (bound == NULL) {
        fprintf(stderr, "c_echo: cannot bind 127.0.0.1:%d\n", port);
        return 1;
    }
    struct event *sigint = evsignal_new(base, SIGINT, stop_cb, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, stop_cb, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("listening on http://127.0.0.1:%d/\n", port);
    fflush(stdout);
    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
