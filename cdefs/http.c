/*
 * http.c - the evhttp shim: request trampolines, request lifetime tracking, header validation
 * and the one-call replies that keep the per-request Python path short.
 *
 * Lifetime of a server request given to Python (see bs_http_req_t in http_shim.h):
 *   1. bs_http_server_cb() takes a record, hooks libevent's on-complete callback on the request
 *      and the close callback on its connection (libevent 2.1 serves one request at a time per
 *      connection, so the connection's close callback can name the current request), and calls
 *      Python.
 *   2. A reply that completes (send_reply, send_error, reply_end) ends Python's ownership at once;
 *      libevent keeps the request until the bytes are written and then calls on_complete(), which
 *      unhooks the close callback and drops libevent's ownership.
 *   3. A callback that returns without replying leaves a deferred request: Python keeps its
 *      wrapper and gives us a handle (bs_http_defer). libevent 2.1 does not read from a connection
 *      whose request waits for a reply, so we watch the socket for hang-up ourselves and free the
 *      connection when the client is gone.
 *   4. When the connection closes first, on_close() tells Python (the wrapper becomes closed, and
 *      a late reply raises ClosedError). libevent frees a request still queued on the connection
 *      itself; a request it detached on a read error or timeout (evhttp_request_get_connection()
 *      is NULL) is ours to free, and we free it here, since nobody else ever will.
 * A request that libevent owns is never freed here except in that detached case.
 *
 * Client requests: libevent owns a request once evhttp_make_request() accepted it and frees it
 * right after its callback returns, so the callback must never free it (closing the Python
 * wrapper inside the callback only drops Python's ownership). Before it is made, the request is
 * ours and closing the wrapper frees it; a made request still pending is cancelled.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "shim.h"
#include "http_shim.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>

void bs_memory_cleanse(void *ptr, size_t len);

/* ---- records: a small per-thread free list, every record wiped before reuse or free ---- */

static __thread int in_orphan; /* a base is freeing its children: no calls into Python */

#define BS_REC_CACHE 64
static __thread bs_http_req_t *rec_cache[BS_REC_CACHE];
static __thread int rec_cached;

static bs_http_req_t *rec_alloc(void)
{
    if (rec_cached > 0)
        return rec_cache[--rec_cached];
    return calloc(1, sizeof(bs_http_req_t));
}

static void rec_free(bs_http_req_t *rec)
{
    bs_memory_cleanse(rec, sizeof(*rec));
    if (rec_cached < BS_REC_CACHE)
        rec_cache[rec_cached++] = rec;
    else
        free(rec);
}

static void stop_watch(bs_http_req_t *rec)
{
    if (rec->watch != NULL) {
        event_free(rec->watch);
        rec->watch = NULL;
    }
}

/* Drop one owner; the last one frees the record. */
static void rec_drop(bs_http_req_t *rec, unsigned owner)
{
    rec->flags &= ~owner;
    if ((rec->flags & (BS_REQ_PY | BS_REQ_EV)) == 0) {
        stop_watch(rec);
        rec_free(rec);
    }
}

/* Python lets go of a record (its wrapper is closed). */
BS_EXPORT void bs_http_req_release(bs_http_req_t *rec)
{
    if (rec == NULL || !(rec->flags & BS_REQ_PY))
        return;
    rec->py = NULL;
    if ((rec->flags & BS_REQ_CLIENT) && rec->req != NULL && !(rec->flags & BS_REQ_DONE)) {
        struct evhttp_request *r = rec->req;
        rec->req = NULL;
        if (rec->flags & BS_REQ_MADE) {
            /* Pending on a connection: cancelling frees it and runs no callback. */
            rec->flags |= BS_REQ_DONE;
            evhttp_cancel_request(r);
            rec->flags &= ~BS_REQ_EV;
        } else {
            evhttp_request_free(r); /* never made: still ours */
        }
    }
    rec_drop(rec, BS_REQ_PY);
}

/* The connection of a made client request is being freed: libevent frees the request silently. */
BS_EXPORT void bs_http_req_forget(bs_http_req_t *rec)
{
    if (rec == NULL)
        return;
    rec->req = NULL;
    rec->flags |= BS_REQ_DONE;
    if (rec->flags & BS_REQ_EV)
        rec_drop(rec, BS_REQ_EV);
}

/* ---- SIGPIPE: a write to a closed socket must not kill the process ---- */

BS_EXPORT int bs_http_ignore_sigpipe(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) != 0)
        return -1;
    if (old.sa_handler == SIG_DFL) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_IGN;
        sigemptyset(&sa.sa_mask);
        return sigaction(SIGPIPE, &sa, NULL);
    }
    return 0;
}

/* ---- headers ---- */

static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* 0, or -1 for a name that is not an RFC 9110 token, -2 for a value with CR, LF or NUL. */
BS_EXPORT int bs_http_header_check(const char *key, size_t klen, const char *value, size_t vlen)
{
    if (klen == 0)
        return -1;
    for (size_t i = 0; i < klen; i++)
        if (!is_tchar((unsigned char)key[i]))
            return -1;
    for (size_t i = 0; i < vlen; i++) {
        char c = value[i];
        if (c == '\r' || c == '\n' || c == '\0')
            return -2;
    }
    return 0;
}

/* Checked evhttp_add_header (libevent itself lets a folded "\r\n " value through). */
BS_EXPORT int bs_http_header_add(struct evkeyvalq *q, const char *key, size_t klen,
                                 const char *value, size_t vlen)
{
    int rc = bs_http_header_check(key, klen, value, vlen);
    if (rc != 0)
        return rc;
    return evhttp_add_header(q, key, value) == 0 ? 0 : -3;
}

BS_EXPORT struct evkeyval *bs_http_header_first(struct evkeyvalq *q)
{
    return q->tqh_first;
}

BS_EXPORT struct evkeyval *bs_http_header_next(struct evkeyval *kv)
{
    return kv->next.tqe_next;
}

/*
 * The Date header, formatted once per second per thread: evhttp would otherwise call gmtime and
 * strftime for every response.
 */
static __thread time_t date_at;
static __thread char date_text[40];

static void add_date(struct evkeyvalq *out)
{
    time_t now = time(NULL);
    if (now != date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(date_text, sizeof(date_text), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        date_at = now;
    }
    evhttp_add_header(out, "Date", date_text);
}

/* ---- bodies and peers ---- */

/* The body as one contiguous block (NULL when empty); valid until the buffer changes. */
BS_EXPORT const char *bs_http_body(struct evhttp_request *r, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(r);
    *len = evbuffer_get_length(in);
    return *len ? (const char *)evbuffer_pullup(in, -1) : NULL;
}

BS_EXPORT size_t bs_http_copyout(struct evhttp_request *r, char *out, size_t len)
{
    ev_ssize_t n = evbuffer_copyout(evhttp_request_get_input_buffer(r), out, len);
    return n < 0 ? 0 : (size_t)n;
}

BS_EXPORT int bs_http_peer(struct evhttp_request *r, char *host, size_t hostlen, int *port)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r);
    char *addr = NULL;
    ev_uint16_t p = 0;
    if (evcon == NULL)
        return -1;
    evhttp_connection_get_peer(evcon, &addr, &p);
    if (addr == NULL)
        return -1;
    snprintf(host, hostlen, "%s", addr);
    *port = p;
    return 0;
}

/* ---- server: trampoline, completion, close, hang-up detection ---- */

static void on_complete(struct evhttp_request *r, void *arg)
{
    bs_http_req_t *rec = arg;
    (void)r;
    if (rec->evcon != NULL)
        evhttp_connection_set_closecb(rec->evcon, NULL, NULL);
    rec->req = NULL;
    rec->evcon = NULL;
    rec_drop(rec, BS_REQ_EV);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    bs_http_req_t *rec = arg;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    if (rec == NULL || !(rec->flags & BS_REQ_EV))
        return;
    if (rec->req != NULL) {
        /* Detached by a read error or timeout: libevent will not free it, so we do. */
        if (evhttp_request_get_connection(rec->req) == NULL)
            evhttp_request_free(rec->req);
        rec->req = NULL;
    }
    rec->evcon = NULL;
    rec->flags |= BS_REQ_GONE;
    stop_watch(rec);
    if ((rec->flags & BS_REQ_PY) && rec->py != NULL && !in_orphan) {
        rec->flags &= ~BS_REQ_EV;
        _bs_http_on_gone(rec->py); /* Python closes the wrapper and releases the record */
        return;
    }
    rec_drop(rec, BS_REQ_EV);
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
    stop_watch(rec);
    if (n > 0)
        return; /* the next (pipelined) request is waiting: the client is still there */
    if (rec->evcon != NULL)
        evhttp_connection_free(rec->evcon); /* runs on_close() */
}

BS_EXPORT void bs_http_server_cb(struct evhttp_request *r, void *arg)
{
    bs_http_route_t *route = arg;
    bs_http_req_t *rec = rec_alloc();
    if (rec == NULL) {
        evhttp_send_error(r, HTTP_SERVUNAVAIL, NULL);
        return;
    }
    rec->req = r;
    rec->evcon = evhttp_request_get_connection(r);
    rec->flags = BS_REQ_PY | BS_REQ_EV;
    evhttp_request_set_on_complete_cb(r, on_complete, rec);
    if (rec->evcon != NULL)
        evhttp_connection_set_closecb(rec->evcon, on_close, rec);
    int failed = _bs_http_on_request(rec, route->py);
    bs_http_finish_callback(rec, failed);
}

/*
 * After the Python callback: a failed callback gets 500 (or its chunked reply ended); a record
 * Python neither answered nor deferred is released. Returns 1 when a reply was sent here.
 */
BS_EXPORT int bs_http_finish_callback(bs_http_req_t *rec, int failed)
{
    if (!(rec->flags & BS_REQ_PY) || (rec->py != NULL && !failed))
        return 0;
    int sent = 0;
    if (rec->req != NULL) {
        if (rec->flags & BS_REQ_STARTED)
            evhttp_send_reply_end(rec->req);
        else
            evhttp_send_error(rec->req, HTTP_INTERNAL, NULL);
        rec->flags |= BS_REQ_SENT;
        sent = 1;
    }
    rec->py = NULL;
    rec_drop(rec, BS_REQ_PY);
    return sent;
}

/* The Python callback returned without replying: keep the record and watch for hang-up. */
BS_EXPORT int bs_http_defer(bs_http_req_t *rec, void *py)
{
    if (rec->req == NULL || rec->evcon == NULL)
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

/* Reply state checks shared by the reply calls: -1 closed, -2 already answered. */
static int can_reply(bs_http_req_t *rec)
{
    if (rec->req == NULL)
        return -1;
    if (rec->flags & (BS_REQ_SENT | BS_REQ_STARTED))
        return -2;
    return 0;
}

/* A reply is complete: Python's ownership ends here, libevent's at on_complete(). */
static void replied(bs_http_req_t *rec)
{
    rec->flags |= BS_REQ_SENT;
    rec->py = NULL;
    rec_drop(rec, BS_REQ_PY);
}

BS_EXPORT int bs_http_send_reply(bs_http_req_t *rec, int code, const char *reason,
                                 const char *body, size_t len, const char *ctype,
                                 size_t ctype_len)
{
    int rc = can_reply(rec);
    if (rc != 0)
        return rc;
    struct evhttp_request *r = rec->req;
    struct evkeyvalq *out = evhttp_request_get_output_headers(r);
    if (ctype != NULL) {
        rc = bs_http_header_check("Content-Type", 12, ctype, ctype_len);
        if (rc != 0)
            return -3;
        evhttp_remove_header(out, "Content-Type");
        evhttp_add_header(out, "Content-Type", ctype);
    }
    if (evhttp_find_header(out, "Date") == NULL)
        add_date(out);
    if (len && evbuffer_add(evhttp_request_get_output_buffer(r), body, len) != 0)
        return -4;
    evhttp_send_reply(r, code, reason, NULL);
    replied(rec);
    return 0;
}

/* Reply with the request's own body (moved, not copied) and Content-Type (or the default). */
BS_EXPORT int bs_http_send_echo(bs_http_req_t *rec, int code, const char *default_ctype)
{
    int rc = can_reply(rec);
    if (rc != 0)
        return rc;
    struct evhttp_request *r = rec->req;
    struct evkeyvalq *out = evhttp_request_get_output_headers(r);
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(r), "Content-Type");
    if (ctype == NULL)
        ctype = default_ctype;
    if (ctype != NULL && bs_http_header_check("Content-Type", 12, ctype, strlen(ctype)) == 0) {
        evhttp_remove_header(out, "Content-Type");
        evhttp_add_header(out, "Content-Type", ctype);
    }
    if (evhttp_find_header(out, "Date") == NULL)
        add_date(out);
    evbuffer_add_buffer(evhttp_request_get_output_buffer(r), evhttp_request_get_input_buffer(r));
    evhttp_send_reply(r, code, NULL, NULL);
    replied(rec);
    return 0;
}

BS_EXPORT int bs_http_send_error(bs_http_req_t *rec, int code, const char *reason)
{
    int rc = can_reply(rec);
    if (rc != 0)
        return rc;
    evhttp_send_error(rec->req, code, reason);
    replied(rec);
    return 0;
}

BS_EXPORT int bs_http_reply_start(bs_http_req_t *rec, int code, const char *reason)
{
    int rc = can_reply(rec);
    if (rc != 0)
        return rc;
    struct evkeyvalq *out = evhttp_request_get_output_headers(rec->req);
    if (evhttp_find_header(out, "Date") == NULL)
        add_date(out);
    evhttp_send_reply_start(rec->req, code, reason);
    rec->flags |= BS_REQ_STARTED;
    return 0;
}

BS_EXPORT int bs_http_reply_chunk(bs_http_req_t *rec, const char *data, size_t len)
{
    if (rec->req == NULL)
        return -1;
    if (!(rec->flags & BS_REQ_STARTED) || (rec->flags & BS_REQ_SENT))
        return -2;
    if (len == 0)
        return 0; /* an empty chunk would end the chunked body */
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL || evbuffer_add(buf, data, len) != 0) {
        if (buf != NULL)
            evbuffer_free(buf);
        return -4;
    }
    evhttp_send_reply_chunk(rec->req, buf);
    evbuffer_free(buf);
    return 0;
}

BS_EXPORT int bs_http_reply_end(bs_http_req_t *rec)
{
    if (rec->req == NULL)
        return -1;
    if (!(rec->flags & BS_REQ_STARTED) || (rec->flags & BS_REQ_SENT))
        return -2;
    evhttp_send_reply_end(rec->req);
    replied(rec);
    return 0;
}

/* ---- client ---- */

static void client_error_cb(enum evhttp_request_error err, void *arg)
{
    bs_http_req_t *rec = arg;
    rec->error = (int)err + 1;
    rec->sys_errno = errno;
}

static void client_cb(struct evhttp_request *r, void *arg)
{
    bs_http_req_t *rec = arg;
    int saved = errno;
    if (rec->flags & BS_REQ_DONE)
        return;
    if (rec->sys_errno == 0)
        rec->sys_errno = saved;
    rec->flags |= BS_REQ_DONE;
    /* r is NULL when libevent already freed the request (error path); else it frees r after. */
    rec->req = r;
    if ((rec->flags & BS_REQ_PY) && rec->py != NULL)
        _bs_http_on_response(rec->py);
    rec->req = NULL;
    rec_drop(rec, BS_REQ_EV);
}

BS_EXPORT bs_http_req_t *bs_http_client_new(void *py)
{
    bs_http_req_t *rec = rec_alloc();
    if (rec == NULL)
        return NULL;
    rec->req = evhttp_request_new(client_cb, rec);
    if (rec->req == NULL) {
        rec_free(rec);
        return NULL;
    }
    evhttp_request_set_error_cb(rec->req, client_error_cb);
    rec->py = py;
    rec->flags = BS_REQ_PY | BS_REQ_CLIENT;
    return rec;
}

BS_EXPORT int bs_http_make_request(bs_http_req_t *rec, struct evhttp_connection *evcon, int type,
                                   const char *uri)
{
    if (rec->req == NULL || (rec->flags & BS_REQ_MADE))
        return -2;
    rec->flags |= BS_REQ_MADE | BS_REQ_EV;
    if (evhttp_make_request(evcon, rec->req, (enum evhttp_cmd_type)type, uri) != 0) {
        /* libevent freed the request; a callback that already ran has cleared the owner flag */
        rec->req = NULL;
        rec->flags = (rec->flags | BS_REQ_DONE) & ~BS_REQ_EV;
        return -1;
    }
    return 0;
}

/* ---- deferred connection free (never inside the connection's own callback) ---- */

static void free_connection_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evhttp_connection_free(arg);
}

BS_EXPORT int bs_http_connection_free_later(struct event_base *base,
                                            struct evhttp_connection *evcon)
{
    struct timeval zero = {0, 0};
    return event_base_once(base, -1, EV_TIMEOUT, free_connection_cb, evcon, &zero);
}

/* ---- accept guards: out of descriptors, pause accepting instead of spinning ---- */

/*
 * When accept() fails with EMFILE (or ENFILE, ENOBUFS, ENOMEM) the pending connection stays in
 * the kernel's queue, so a level-triggered listener would fire again at once: libevent 2.1 then
 * spins and prints a warning per attempt. A guard disables its listener on those errors and a
 * timer enables it again a little later, when some connections may have closed.
 *
 * Ownership: the EvHttp record owns its guards (a list); a guard is freed, and its timer with it,
 * before its listener is freed (bs_evhttp_del_accept) or the server is (evhttp_free_guarded).
 * The error callback finds its guard through a process-wide list under a mutex, because libevent
 * hands it only the listener and the evhttp.
 */
typedef struct bs_accept_guard {
    struct bs_accept_guard *next;      /* in the owner's list */
    struct bs_accept_guard *all_next;  /* in the process-wide list */
    struct evconnlistener *listener;
    struct event *retry;
} bs_accept_guard;

#define ACCEPT_RETRY_USEC 100000

static pthread_mutex_t guards_mu = PTHREAD_MUTEX_INITIALIZER;
static bs_accept_guard *all_guards;

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_accept_guard *g = arg;
    (void)fd;
    (void)what;
    evconnlistener_enable(g->listener);
}

static void accept_error_cb(struct evconnlistener *lev, void *ctx)
{
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval later = {0, ACCEPT_RETRY_USEC};
    (void)ctx;
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
        return; /* the connection's own failure (ECONNABORTED...): nothing to wait for */
    pthread_mutex_lock(&guards_mu);
    for (bs_accept_guard *g = all_guards; g != NULL; g = g->all_next) {
        if (g->listener == lev) {
            evconnlistener_disable(lev);
            event_add(g->retry, &later);
            break;
        }
    }
    pthread_mutex_unlock(&guards_mu);
}

BS_EXPORT int bs_evhttp_guard_accept(bs_evhttp *h, struct evhttp_bound_socket *bound)
{
    struct evconnlistener *lev = evhttp_bound_socket_get_listener(bound);
    bs_accept_guard *g = calloc(1, sizeof *g);
    if (g == NULL || lev == NULL)
        goto fail;
    g->listener = lev;
    g->retry = evtimer_new(evconnlistener_get_base(lev), accept_retry_cb, g);
    if (g->retry == NULL)
        goto fail;
    pthread_mutex_lock(&guards_mu);
    g->all_next = all_guards;
    all_guards = g;
    g->next = h->guards;
    h->guards = g;
    pthread_mutex_unlock(&guards_mu);
    evconnlistener_set_error_cb(lev, accept_error_cb);
    return 0;
fail:
    free(g);
    return -1;
}

/* Unlink and free the guards of h that watch lev (all of them when lev is NULL). */
static void guards_free(bs_evhttp *h, struct evconnlistener *lev)
{
    pthread_mutex_lock(&guards_mu);
    for (bs_accept_guard **pp = &h->guards; *pp != NULL;) {
        bs_accept_guard *g = *pp;
        if (lev != NULL && g->listener != lev) {
            pp = &g->next;
            continue;
        }
        *pp = g->next;
        for (bs_accept_guard **ap = &all_guards; *ap != NULL; ap = &(*ap)->all_next) {
            if (*ap == g) {
                *ap = g->all_next;
                break;
            }
        }
        event_free(g->retry);
        bs_memory_cleanse(g, sizeof *g);
        free(g);
    }
    pthread_mutex_unlock(&guards_mu);
}

BS_EXPORT void bs_evhttp_del_accept(bs_evhttp *h, struct evhttp_bound_socket *bound)
{
    guards_free(h, evhttp_bound_socket_get_listener(bound));
    evhttp_del_accept_socket(h->http, bound);
}

/* ---- the EvHttp and EvHttpConnection records, linked to their base (see event_shim.h) ---- */


static void evhttp_orphan(bs_node *n)
{
    bs_evhttp *h = (bs_evhttp *)n;
    guards_free(h, NULL); /* their timers live on the base being freed */
    if (h->http != NULL) {
        in_orphan = 1;
        evhttp_free(h->http);
        in_orphan = 0;
    }
    h->http = NULL;
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
    }
    if (bs_node_attach(b, &h->node, evhttp_orphan) != 0) {
        if (h->http != NULL)
            evhttp_free(h->http);
        bs_record_free(h, sizeof *h);
        errno = EPIPE;
        return NULL;
    }
    return h;
}

BS_EXPORT void bs_evhttp_release(bs_evhttp *h)
{
    struct evhttp *http;
    bs_tree_lock();
    bs_node_detach_locked(&h->node);
    http = h->http;
    h->http = NULL;
    bs_tree_unlock();
    guards_free(h, NULL);
    if (http != NULL)
        evhttp_free(http); /* closes every connection: on_close() tells Python */
    bs_record_free(h, sizeof *h);
}

static void evconn_orphan(bs_node *n)
{
    bs_evconn *c = (bs_evconn *)n;
    if (c->evcon != NULL) {
        in_orphan = 1;
        evhttp_connection_free(c->evcon);
        in_orphan = 0;
    }
    c->evcon = NULL;
}

BS_EXPORT bs_evconn *bs_evconn_new(bs_base *b, const char *host, int port)
{
    bs_evconn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    if (b->base != NULL) {
        bs_http_ignore_sigpipe();
        c->base = b->base;
        c->evcon = evhttp_connection_base_new(b->base, NULL, host, (ev_uint16_t)port);
        if (c->evcon == NULL) {
            bs_record_free(c, sizeof *c);
            errno = EINVAL;
            return NULL;
        }
    }
    if (bs_node_attach(b, &c->node, evconn_orphan) != 0) {
        if (c->evcon != NULL)
            evhttp_connection_free(c->evcon);
        bs_record_free(c, sizeof *c);
        errno = EPIPE;
        return NULL;
    }
    return c;
}

/* later: inside one of the connection's own request callbacks, free it once the loop returns. */
BS_EXPORT void bs_evconn_release(bs_evconn *c, int later)
{
    struct evhttp_connection *evcon;
    bs_tree_lock();
    bs_node_detach_locked(&c->node);
    evcon = c->evcon;
    c->evcon = NULL;
    bs_tree_unlock();
    if (evcon != NULL) {
        if (!later || bs_http_connection_free_later(c->base, evcon) != 0)
            evhttp_connection_free(evcon);
    }
    bs_record_free(c, sizeof *c);
}
