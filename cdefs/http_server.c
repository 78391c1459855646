/*
 * http_server.c - the evhttp server: the request trampoline, completion and close tracking,
 * hang-up detection for deferred replies, and the EvHttp record. Writing replies is in
 * http_reply.c; the request records and their state machine are in http_request.c.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

/* ---- server: trampoline, completion, close, hang-up detection ---- */

static void on_complete(struct evhttp_request *r, void *arg)
{
    bs_http_req_t *rec = arg;
    (void)r;
    bs_stop_counting(rec); /* all written: the last drain armed the on_sent run, if any */
    if (rec->evcon != NULL)
        evhttp_connection_set_closecb(rec->evcon, NULL, NULL);
    rec->req = NULL;
    rec->evcon = NULL;
    bs_rec_enter(rec, BS_REQ_DONE);
    bs_rec_drop(rec, BS_HOLD_EV);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    bs_http_req_t *rec = arg;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    if (rec == NULL || !(rec->holds & BS_HOLD_EV))
        return;
    bs_stream_unlink(rec); /* a body still streaming is cut short */
    if (rec->req != NULL) {
        /* Detached by a read error or timeout: libevent will not free it, so we do. */
        if (evhttp_request_get_connection(rec->req) == NULL) {
            evhttp_request_set_on_complete_cb(rec->req, NULL, NULL);
            evhttp_request_free(rec->req);
        }
        rec->req = NULL;
    }
    rec->evcon = NULL;
    bs_rec_enter(rec, BS_REQ_GONE);
    bs_stop_watch(rec);
    bs_stop_counting(rec); /* before libevent frees the connection's output buffer */
    if (rec->holds & BS_HOLD_SENT) {
        rec->sent_gone = 1; /* the pending on_sent callbacks are dropped on the next round */
        if (bs_in_orphan) {
            rec->sent_py = NULL;
            rec->sent_next = 0;
            bs_rec_drop(rec, BS_HOLD_SENT); /* EV still holds it */
        } else {
            event_active(rec->sent_ev, EV_TIMEOUT, 1);
        }
    }
    if ((rec->holds & BS_HOLD_PY) && rec->py != NULL && !bs_in_orphan) {
        void *py = rec->py;
        bs_rec_enter_call(rec);
        bs_py_http_gone(py); /* Python closes the wrapper and lets go of the record */
        bs_rec_drop(rec, BS_HOLD_EV);
        bs_rec_leave_call(rec);
        return;
    }
    bs_rec_drop(rec, BS_HOLD_EV);
}

static void watch_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_http_req_t *rec = arg;
    char c;
    (void)what;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        event_add(rec->watch, NULL);
        return;
    }
    bs_stop_watch(rec);
    if (n > 0)
        return; /* the next (pipelined) request is waiting: the client is still there */
    if (rec->evcon != NULL)
        evhttp_connection_free(rec->evcon); /* runs on_close() */
}

static void py_request(struct evhttp_request *r, bs_http_route_t *route);

/* A request on a server that Python closed from inside one of its callbacks. */
static void bs_closed_server_cb(struct evhttp_request *r, void *arg)
{
    (void)arg;
    evhttp_send_error(r, HTTP_SERVUNAVAIL, NULL);
}

/* The generic callback until one is set: 404 like libevent's, after the framing check. */
static void not_found_cb(EvHttpRequest *r, void *arg)
{
    (void)arg;
    evhttp_send_error((struct evhttp_request *)r, HTTP_NOTFOUND, NULL);
}

/* Every request callback, Python or C, runs through here: the server knows when it is inside
   one of its own callbacks, where it must not be freed (bs_evhttp_release). */
BS_EXPORT void bs_http_server_cb(struct evhttp_request *r, void *arg)
{
    bs_http_route_t *route = arg; /* Python's: freed when a callback or gate removes it */
    bs_evhttp *h = route->h;      /* kept while h->running counts this call */
    int stream = route->stream;   /* read now: the gate may detach, freeing the route */
    if (bs_http_framing_refused(r)) {
        evhttp_send_error(r, HTTP_BADREQUEST, NULL); /* adds "Connection: close" */
        return;
    }
    bs_base *b = h->head.node.owner; /* linked while libevent can call the server's routes */
    if (b != NULL)
        bs_base_enter(b);
    h->running++;
    if (h->any_stream && !stream && bs_stream_offered(h, r))
        evhttp_send_error(r, HTTP_BADREQUEST, NULL); /* its body went elsewhere: never served */
    else if (route->c_cb != NULL)
        route->c_cb((EvHttpRequest *)r, route->c_arg);
    else if (h->gate == NULL || h->gate((EvHttpRequest *)r, h->gate_arg) == 0)
        py_request(r, route); /* a host's gate that answered keeps Python out */
    else if (stream)
        bs_stream_unclaimed(h, r); /* its body is read and dropped */
    h->running--;
    if (b != NULL)
        bs_base_leave(b);
}

/*
 * After the Python callback: Python answered (its share ended), or deferred the reply (the
 * record holds its wrapper's handle in py: bs_http_defer()), or let go of the record, with the
 * status it asks for (500: the callback raised; 503: it closed its own server; 0: nothing
 * asked, 500 if the record is still replyable). bs_http_settle() decides what that means.
 */
static void bs_http_finish_callback(bs_http_req_t *rec, int code)
{
    if (rec->py != NULL && code == 0)
        return; /* deferred: answered later, or on_close() tells Python the connection went */
    bs_http_settle(rec, code != 0 ? code : HTTP_INTERNAL, BS_SETTLE_LET_GO);
}

static void py_request(struct evhttp_request *r, bs_http_route_t *route)
{
    bs_http_req_t *rec = bs_rec_new(BS_REQ_CALLBACK, BS_HOLD_PY | BS_HOLD_EV);
    if (rec == NULL) {
        evhttp_send_error(r, HTTP_SERVUNAVAIL, NULL);
        return;
    }
    rec->req = r;
    rec->evcon = evhttp_request_get_connection(r);
    evhttp_request_set_on_complete_cb(r, on_complete, rec);
    if (rec->evcon != NULL)
        evhttp_connection_set_closecb(rec->evcon, on_close, rec);
    if (route->stream && (rec->evcon == NULL || bs_stream_claim(route->h, rec, r) != 0)) {
        bs_http_settle(rec, HTTP_SERVUNAVAIL, BS_SETTLE_LET_GO); /* out of memory */
        return;
    }
    bs_rec_enter_call(rec); /* the record outlives the callback, whatever it closes */
    int code = bs_py_http_request(rec, route->py);
    bs_http_finish_callback(rec, code);
    bs_rec_leave_call(rec);
}

/* The Python callback returned without completing its reply: keep the record, watch for hang-up. */
BS_EXPORT int bs_http_defer(bs_http_req_t *rec, void *py)
{
    if (rec->req == NULL || rec->evcon == NULL)
        return -1;
    if (rec->state == BS_REQ_CALLBACK)
        bs_rec_enter(rec, BS_REQ_DEFERRED);
    else if (rec->state != BS_REQ_STARTED)
        return -1;
    rec->py = py;
    if (rec->watch == NULL) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(rec->evcon);
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
        if (fd >= 0) {
            rec->watch = event_new(evhttp_connection_get_base(rec->evcon), fd, EV_READ, watch_cb,
                                   rec);
            if (rec->watch != NULL)
                event_add(rec->watch, NULL);
        }
    }
    return 0;
}

/* ---- the EvHttp record, linked to its base (see event.h) ---- */

static void evhttp_free_now(bs_evhttp *h)
{
    bs_guards_free(h, NULL); /* their timers live on the base */
    if (h->http != NULL) {
        struct evhttp *http = h->http;
        h->http = NULL;
        if (h->owned)
            evhttp_free(http); /* closes every connection: on_close() tells Python */
        else if (h->filtering) /* the host's (bs_evhttp_wrap), to free: Python removed its
                                  routes; new connections get libevent's own bufferevents
                                  again (no pointer to h left) */
            evhttp_set_bevcb(http, NULL, NULL);
    }
    bs_stream_server_gone(h); /* their filters are freed later, without it */
}

static void evhttp_free_head(bs_later *l)
{
    evhttp_free_now((bs_evhttp *)l);
}

BS_EXPORT bs_evhttp *bs_evhttp_new(bs_base *b)
{
    bs_evhttp *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    if (b->base != NULL) {
        bs_http_ignore_sigpipe();
        h->http = evhttp_new(b->base);
        if (h->http == NULL) {
            bs_record_free(h, sizeof *h);
            return NULL;
        }
        /* Requests no route matches go through the trampoline too (framing check, then 404). */
        h->fallback.c_cb = not_found_cb;
        h->fallback.h = h;
        evhttp_set_gencb(h->http, bs_http_server_cb, &h->fallback);
    }
    h->owned = 1;
    h->strict = 1; /* every connection is framed by the package (set_strict_framing(False)) */
    if (h->http != NULL)
        bs_stream_update(h);
    if (bs_later_attach(b, &h->head, evhttp_free_head, sizeof *h) != 0) {
        if (h->http != NULL)
            evhttp_free(h->http);
        bs_record_free(h, sizeof *h);
        errno = EPIPE;
        return NULL;
    }
    return h;
}

/*
 * A record for an evhttp a C host owns (EvHttp.from_address): linked to the record of the
 * host's base like any server, so the trampoline knows when its routes run; never freed here.
 * Python registers and removes its own routes on it; the host's stay.
 */
BS_EXPORT bs_evhttp *bs_evhttp_wrap(bs_base *b, struct evhttp *http)
{
    if (http == NULL || b->base == NULL) {
        errno = EINVAL;
        return NULL;
    }
    bs_evhttp *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    bs_http_ignore_sigpipe();
    h->http = http;
    if (bs_later_attach(b, &h->head, evhttp_free_head, sizeof *h) != 0) {
        bs_record_free(h, sizeof *h);
        errno = EPIPE;
        return NULL;
    }
    return h;
}

/* A host's gate before Python's routes on its evhttp (bs_python_set_request_gate). */
BS_EXPORT void bs_evhttp_set_gate(bs_evhttp *h, BsRequestGate gate, void *arg)
{
    h->gate = gate;
    h->gate_arg = gate != NULL ? arg : NULL;
}

static void first_listener_base(struct evhttp_bound_socket *bound, void *arg)
{
    struct event_base **out = arg;
    struct evconnlistener *lev = *out == NULL ? evhttp_bound_socket_get_listener(bound) : NULL;
    if (lev != NULL)
        *out = evconnlistener_get_base(lev);
}

/*
 * The base of an evhttp, through public API only: libevent 2.1 has no getter for an evhttp's
 * base, but each listening socket's listener was made on it. NULL when nothing is bound yet.
 */
BS_EXPORT struct event_base *bs_evhttp_find_base(struct evhttp *http)
{
    struct event_base *base = NULL;
    evhttp_foreach_bound_socket(http, first_listener_base, &base);
    return base;
}

/*
 * Python lets go of its server. later: inside one of the server's own request callbacks, where
 * evhttp_free would free the connection libevent is working on; then the server stops accepting
 * now, answers 503 to anything already read, and is freed on the next loop round.
 */
BS_EXPORT void bs_evhttp_release(bs_evhttp *h, int later)
{
    if ((later || h->running > 0) && h->http != NULL) {
        bs_guards_free(h, NULL);
        if (h->owned) /* a host's server keeps serving its own routes */
            evhttp_set_gencb(h->http, bs_closed_server_cb, NULL);
        bs_base *b = h->head.node.owner;
        if (b != NULL && bs_later_schedule(&h->head, b->base) == 0)
            return;
    }
    bs_later_free(&h->head);
}


BS_EXPORT void bs_evhttp_set_timeout(bs_evhttp *h, double seconds)
{
    struct timeval tv;
    bs_to_timeval(seconds, &tv);
    evhttp_set_timeout_tv(h->http, &tv);
}
