/*
 * c_stream.c - the C reference for the streamed-reply benchmark: libevent's evhttp answering
 * every request with a chunked reply of TOTAL bytes in CHUNK-byte chunks, each next chunk sent
 * from evhttp_send_reply_chunk_with_cb's callback (the reply's output has drained), as
 * bench/http/stream_server.py does with send_reply_chunk(on_sent=...).
 *
 *   c_stream PORT TOTAL CHUNK
 *
 * Prints "listening on http://127.0.0.1:PORT/" and stops on SIGINT or SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

static size_t total, chunk;
static char *block;

struct stream {
    struct evhttp_request *req;
    size_t left;
};

static void next_chunk(struct evhttp_connection *evcon, void *arg);

static void send_one(struct stream *s)
{
    if (s->left == 0) {
        evhttp_send_reply_end(s->req);
        free(s);
        return;
    }
    size_t n = s->left < chunk ? s->left : chunk;
    s->left -= n;
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add_reference(buf, block, n, NULL, NULL);
    evhttp_send_reply_chunk_with_cb(s->req, buf, next_chunk, s);
    evbuffer_free(buf);
}

static void next_chunk(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    send_one(arg);
}

static void stream_cb(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct stream *s = malloc(sizeof *s);
    s->req = req;
    s->left = total;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/octet-stream");
    evhttp_send_reply_start(req, 200, "OK");
    send_one(s);
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: c_stream PORT TOTAL CHUNK\n");
        return 2;
    }
    total = strtoull(argv[2], NULL, 10);
    chunk = strtoull(argv[3], NULL, 10);
    block = malloc(chunk);
    memset(block, 'c', chunk);
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)atoi(argv[1])) != 0) {
        perror("bind");
        return 1;
    }
    evhttp_set_gencb(http, stream_cb, NULL);
    struct event *sigint = evsignal_new(base, SIGINT, stop_cb, base);
    struct event *sigterm = evsignal_new(base, SIGTERM, stop_cb, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("listening on http://127.0.0.1:%s/\n", argv[1]);
    fflush(stdout);
    event_base_dispatch(base);
    event_free(sigint);
    event_free(sigterm);
    evhttp_free(http);
    event_base_free(base);
    free(block);
    return 0;
}
