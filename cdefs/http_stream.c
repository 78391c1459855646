/*
 * http_stream.c - a strict server's connections: the framing filter's context on each one
 * (made as libevent accepts it, freed with it), the routes that stream their body, the claim
 * that hands a stream body to its record, and the lingering close of a refused connection.
 * The filter itself is http_filter.c (reading) and http_filter_write.c (writing).
 *
 * Ownership: the filter's context (bs_stream_conn) lives as long as libevent's connection
 * and is linked to its server's record; a server freed first unlinks its contexts, which go on
 * framing (without stream routes) for the connections still open.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "http.h"
#include "http_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

#define LINGER_SECONDS 5          /* a lingering close lasts at most this long */
#define LINGER_IDLE 2             /* or until the client is silent this long */
#define LINGER_BYTES (64u << 20)  /* or this much input was dropped */

/* A refused connection closing slowly: the socket's bufferevent, after libevent let go. */
typedef struct bs_linger {
    struct bs_linger *prev, *next;      /* in the server's list */
    bs_evhttp *h;
    evutil_socket_t fd;                 /* a copy of the connection's descriptor */
    struct event *ev;
    struct timeval since;
    size_t left;                        /* bytes still to drop */
} bs_linger;

/* ---- lingering close ---- */

static void linger_end(bs_linger *l)
{
    if (l->h != NULL) {
        if (l->prev != NULL)
            l->prev->next = l->next;
        else
            l->h->lingers = l->next;
        if (l->next != NULL)
            l->next->prev = l->prev;
    }
    event_free(l->ev);
    evutil_closesocket(l->fd);
    free(l);
}

/* Input on a lingering socket: dropped, until its end, the byte bound or the time bound; an
   idle client ends it too (the event's timeout). */
static void linger_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_linger *l = arg;
    char buf[65536];
    if (what & EV_TIMEOUT) {
        linger_end(l);
        return;
    }
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        if (n <= 0 || (size_t)n >= l->left) {
            linger_end(l);
            return;
        }
        l->left -= (size_t)n;
    }
    struct timeval now;
    event_base_gettimeofday_cached(event_get_base(l->ev), &now);
    if (now.tv_sec - l->since.tv_sec >= LINGER_SECONDS)
        linger_end(l);
}

/* The connection closes after a refusal: libevent wrote the answer and shut the write side;
   its socket is read on through a copy of the descriptor (libevent closes its own). */
static int linger_start(bs_stream_conn *c)
{
    evutil_socket_t fd = bufferevent_getfd(c->under);
    bs_linger *l = fd >= 0 ? calloc(1, sizeof *l) : NULL;
    if (l == NULL)
        return -1;
    struct event_base *base = bufferevent_get_base(c->under);
    l->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (l->fd < 0) {
        free(l);
        return -1;
    }
    shutdown(l->fd, SHUT_WR);
    l->ev = event_new(base, l->fd, EV_READ | EV_PERSIST, linger_cb, l);
    struct timeval idle = {LINGER_IDLE, 0};
    if (l->ev == NULL || event_add(l->ev, &idle) != 0) {
        if (l->ev != NULL)
            event_free(l->ev);
        evutil_closesocket(l->fd);
        free(l);
        return -1;
    }
    event_base_gettimeofday_cached(base, &l->since);
    l->left = LINGER_BYTES;
    l->h = c->h;
    l->next = c->h->lingers;
    if (l->next != NULL)
        l->next->prev = l;
    c->h->lingers = l;
    return 0;
}

/* ---- connections and the server ---- */

static void conn_free(void *arg)
{
    bs_stream_conn *c = arg;
    if (c->rec != NULL)
        bs_stream_unlink(c->rec); /* the connection closed before the body's end */
    if (c->linger && c->h != NULL && !bs_in_orphan)
        (void)linger_start(c); /* else it closes at once */
    if (c->h != NULL) {
        if (c->prev != NULL)
            c->prev->next = c->next;
        else
            c->h->streams = c->next;
        if (c->next != NULL)
            c->next->prev = c->prev;
    }
    if (c->pending != NULL)
        evbuffer_free(c->pending);
    if (c->wr != NULL)
        event_free(c->wr);
    if (c->rd != NULL)
        event_free(c->rd);
    free(c->length);
    free(c->coding);
    free(c);
}

static struct bufferevent *make_bev(struct event_base *base, void *arg)
{
    bs_evhttp *h = arg;
    bs_stream_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL; /* libevent makes its own: that connection is not framed */
    c->pending = evbuffer_new();
    c->under = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->rd = event_new(base, -1, 0, bs_filter_read_cb, c);
    if (c->pending == NULL || c->under == NULL || c->rd == NULL)
        goto fail;
    bs_framer_init(&c->fr, (size_t)h->max_head);
    c->max_body = h->max_body;
    /* bytes waiting behind a request being answered are bounded: the socket is not read past
       this (a head fits, up to the limit set when the connection came) */
    bufferevent_setwatermark(c->under, EV_READ, 0, c->fr.max_head + (256u << 10));
    c->bev = bufferevent_filter_new(c->under, bs_filter_in, bs_filter_out, BEV_OPT_CLOSE_ON_FREE,
                                    conn_free, c);
    if (c->bev == NULL)
        goto fail;
    if (evbuffer_add_cb(bufferevent_get_output(c->bev), bs_filter_out_added, c) == NULL) {
        bufferevent_free(c->bev); /* frees c (conn_free) and the socket's bufferevent */
        return NULL;
    }
    c->h = h;
    c->next = h->streams;
    if (h->streams != NULL)
        h->streams->prev = c;
    h->streams = c;
    return c->bev;
fail:
    if (c->rd != NULL)
        event_free(c->rd);
    if (c->under != NULL)
        bufferevent_free(c->under);
    if (c->pending != NULL)
        evbuffer_free(c->pending);
    free(c);
    return NULL;
}

static bs_stream_conn *find(bs_evhttp *h, struct evhttp_connection *evcon)
{
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    for (bs_stream_conn *c = h->streams; c != NULL; c = c->next)
        if (c->bev == bev)
            return c;
    return NULL;
}

/*
 * The server is freed. Its connections' filters outlive it (libevent frees them later) and go
 * on framing the requests for a host's own routes, without stream routes; a body streaming to
 * a record is cut short. A host's evhttp gets its own bufferevents for new connections again.
 * Lingering closes end now.
 */
void bs_stream_server_gone(bs_evhttp *h)
{
    if (h->http != NULL && h->filtering)
        evhttp_set_bevcb(h->http, NULL, NULL);
    h->filtering = 0;
    for (bs_stream_conn *c = h->streams; c != NULL; c = c->next) {
        c->h = NULL;
        if (c->rec != NULL)
            bs_stream_unlink(c->rec);
        if (c->mode == BS_CONN_BODY && c->dest == BS_DEST_STREAM)
            c->mode = BS_CONN_DEAD;
    }
    h->streams = NULL;
    while (h->lingers != NULL)
        linger_end(h->lingers);
    bs_stream_route *r = h->routes;
    while (r != NULL) {
        bs_stream_route *next = r->next;
        free(r->path);
        free(r);
        r = next;
    }
    h->routes = NULL;
    h->any_stream = 0;
}

/* A route's body mode: stream 1 or 0 for a set_cb path, -1 when it is deleted. 0, or -1. */
BS_EXPORT int bs_evhttp_route_stream(bs_evhttp *h, const char *path, int stream)
{
    bs_stream_route **at = &h->routes;
    while (*at != NULL && strcmp((*at)->path, path) != 0)
        at = &(*at)->next;
    if (stream < 0) {
        if (*at != NULL) {
            bs_stream_route *r = *at;
            *at = r->next;
            free(r->path);
            free(r);
        }
    } else if (*at != NULL) {
        (*at)->stream = stream;
    } else {
        bs_stream_route *r = calloc(1, sizeof *r);
        if (r == NULL || (r->path = strdup(path)) == NULL) {
            free(r);
            return -1;
        }
        r->stream = stream;
        *at = r;
    }
    return bs_stream_update(h);
}

BS_EXPORT int bs_evhttp_gen_stream(bs_evhttp *h, int stream)
{
    h->gen_stream = stream;
    return bs_stream_update(h);
}

/* Frame every new connection (the default for the servers the package makes), or not. */
BS_EXPORT int bs_evhttp_strict(bs_evhttp *h, int on)
{
    h->strict = on;
    return bs_stream_update(h);
}

BS_EXPORT void bs_evhttp_set_max_body(bs_evhttp *h, unsigned long long n)
{
    h->max_body = n;
}

BS_EXPORT void bs_evhttp_set_max_headers(bs_evhttp *h, unsigned long long n)
{
    h->max_head = n;
}

/*
 * New connections are framed while the server is strict or some route streams. The evhttp's
 * bevcb is set only when the filter goes on or off: a host's own bevcb (TLS, say) stays while
 * the filter is not needed. libevent has no getter for it, so once the filter was on, off
 * leaves libevent's default (docs/c-hosts.md says so).
 */
int bs_stream_update(bs_evhttp *h)
{
    int any = h->gen_stream;
    for (bs_stream_route *r = h->routes; r != NULL && !any; r = r->next)
        any = r->stream;
    h->any_stream = any;
    int want = any || h->strict;
    if (h->http != NULL && want != h->filtering) {
        evhttp_set_bevcb(h->http, want ? make_bev : NULL, want ? h : NULL);
        h->filtering = want;
    }
    return 0;
}

/*
 * The trampoline, for a stream_body route: the record takes the body over. From the filter,
 * when it offered this request; otherwise (a connection accepted before the route streamed,
 * an Expect header, no body) libevent read the body whole, and it is given as one piece.
 * 0, or -1 out of memory.
 */
int bs_stream_claim(bs_evhttp *h, bs_http_req_t *rec, struct evhttp_request *r)
{
    if (bs_body_start(rec) != 0)
        return -1;
    bs_stream_conn *c = h->streams ? find(h, rec->evcon) : NULL;
    if (c == NULL || !c->offered) {
        evbuffer_add_buffer(rec->body_in, evhttp_request_get_input_buffer(r));
        rec->body_status = BS_BODY_END;
        bs_body_wake(rec);
        return 0;
    }
    c->offered = 0;
    struct evkeyvalq *in = evhttp_request_get_input_headers(r);
    if (c->length != NULL)
        evhttp_add_header(in, "Content-Length", c->length);
    if (c->coding != NULL)
        evhttp_add_header(in, "Transfer-Encoding", c->coding);
    evbuffer_add_buffer(rec->body_in, c->pending);
    c->rec = rec;
    rec->body_conn = c;
    if (c->error != 0) /* over the limit or broken already: the filter drops the rest */
        rec->body_status = c->error;
    else if (c->ended) /* the whole body came with the head: the filter holds the next one */
        rec->body_status = BS_BODY_END;
    /* libevent stopped reading (it thinks the request complete): the filter reads the body on */
    bufferevent_enable(c->bev, EV_READ);
    bs_filter_read_on(c);
    if (evbuffer_get_length(rec->body_in) != 0 || rec->body_status != BS_BODY_PIECE)
        bs_body_wake(rec);
    return 0;
}

/* A request libevent routed elsewhere although the filter offered it as a stream (its body
   was taken away): 1 when so; the trampoline refuses it. */
int bs_stream_offered(bs_evhttp *h, struct evhttp_request *r)
{
    bs_stream_conn *c = find(h, evhttp_request_get_connection(r));
    if (c == NULL || !c->offered)
        return 0;
    c->offered = 0;
    c->mode = BS_CONN_DEAD;
    c->linger = 1;
    return 1;
}

/* A stream request answered without a claim (a host's gate): its body is read and dropped, and
   the connection reads the next request once the answer is written. */
void bs_stream_unclaimed(bs_evhttp *h, struct evhttp_request *r)
{
    bs_stream_conn *c = h->streams ? find(h, evhttp_request_get_connection(r)) : NULL;
    if (c == NULL || !c->offered)
        return;
    c->offered = 0;
    evbuffer_drain(c->pending, evbuffer_get_length(c->pending));
    if (c->mode == BS_CONN_BODY && c->dest == BS_DEST_STREAM)
        c->dest = BS_DEST_DROP;
    else if (c->error != 0)
        c->mode = BS_CONN_DEAD; /* refused before the gate answered: closed after its answer */
    bufferevent_enable(c->bev, EV_READ);
    bs_filter_read_on(c);
}
