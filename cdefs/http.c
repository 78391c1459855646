/*
 * http.c - the evhttp shim: request trampolines, request records, header validation and the
 * one-call replies that keep the per-request Python path short. Who owns what across Python and
 * libevent is told once, in the README's "Lifetimes" chapter; this file holds the C half.
 *
 * Request records
 * ---------------
 * A record (bs_http_req_t) has holders, one bit each in `holds`; the holder that lets go last
 * wipes and frees it (rec_drop), and a holder never lets go twice (that aborts: it would be a
 * double free). The holders are Python's wrapper (PY) and libevent while it may still call us
 * back with the record (EV); besides, `calls` counts our own calls in progress that may run
 * Python (rec_enter_call): so whatever the Python code does (close the request, its connection,
 * its server), the record that the trampoline reads afterwards is still there.
 *
 * `state` says what libevent's request may be used for; rec_enter() is the one place it changes
 * and it refuses any transition not drawn here:
 *
 *   server:  CALLBACK --> DEFERRED --> STARTED --> SENT --> DONE      (on_complete)
 *               |  \________\______________^        |
 *               '------------'---------------'-------'--> GONE       (connection closed)
 *   client:  NEW --> MADE --> RESPONDING --> DONE                     (client_cb)
 *             |        '--> CANCELLED                                 (cancel, connection freed)
 *             '--> DONE                                               (freed before it was made)
 *
 * Server: bs_http_server_cb makes the record (PY|EV|CB) in CALLBACK and calls Python. A reply
 * that completes drops PY (SENT); libevent calls on_complete once the bytes are written (drops
 * EV). A callback that returns without replying leaves DEFERRED: libevent 2.1 does not read a
 * connection whose request waits for its reply, so we watch the socket for hang-up ourselves.
 * When the connection closes first, on_close() moves to GONE, tells Python (which drops PY) and
 * drops EV; a request libevent detached on a read error or timeout is freed there, since
 * nobody else ever will.
 *
 * Client: libevent owns a request from evhttp_make_request() on and frees it right after its
 * callback (client_cb) returns, or before it with a NULL request on failure. A made record is
 * linked to its connection's record (bs_evconn.reqs) until libevent lets go of it, so freeing
 * the connection (closed by Python, or orphaned when its base goes first) cancels exactly the
 * records libevent frees with it, in C, whatever order Python's finalizers run in.
 *
 * Connections and servers closed from inside their own callbacks are freed on the next loop
 * round (a timer the record owns), never under libevent's feet; until then they accept nothing
 * new. A base released first frees them with its other children (bs_node orphans).
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "shim.h"
#include "http_shim.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>

void bs_memory_cleanse(void *ptr, size_t len);

/* ---- request records ---- */

static __thread int in_orphan; /* a base is freeing its children: no calls into Python */

static void rec_fatal(const char *what)
{
    fprintf(stderr, "bitcoin_support: request record: %s\n", what);
    abort();
}

/*
 * A small per-thread free list saves a malloc per request. Sanitizer builds have none, so that
 * AddressSanitizer sees every use of a freed record.
 */
#ifdef BS_SANITIZE
#define BS_REC_CACHE 0
#else
#define BS_REC_CACHE 64
#endif
#if BS_REC_CACHE
static __thread bs_http_req_t *rec_cache[BS_REC_CACHE];
static __thread int rec_cached;
#endif

/* Records Python holds: the live count of EvHttpRequest, kept where the holds change. */
static atomic_long py_holds;

BS_EXPORT long bs_http_live_requests(void)
{
    return atomic_load_explicit(&py_holds, memory_order_relaxed);
}

static bs_http_req_t *rec_new(int state, unsigned holds)
{
    bs_http_req_t *rec;
#if BS_REC_CACHE
    if (rec_cached > 0)
        rec = rec_cache[--rec_cached];
    else
#endif
        rec = calloc(1, sizeof(bs_http_req_t));
    if (rec != NULL) {
        rec->state = state;
        rec->holds = holds;
        if (holds & BS_HOLD_PY)
            atomic_fetch_add_explicit(&py_holds, 1, memory_order_relaxed);
    }
    return rec;
}

static void rec_free(bs_http_req_t *rec)
{
    bs_memory_cleanse(rec, sizeof(*rec)); /* state BS_REQ_FREE, no holders */
#if BS_REC_CACHE
    if (rec_cached < BS_REC_CACHE) {
        rec_cache[rec_cached++] = rec;
        return;
    }
#endif
    free(rec);
}

/* The transitions of the diagram above; anything else is a bug in this file. */
static int rec_may_enter(int from, int to)
{
    switch (to) {
    case BS_REQ_MADE:
        return from == BS_REQ_NEW;
    case BS_REQ_RESPONDING:
        return from == BS_REQ_MADE;
    case BS_REQ_CANCELLED:
        return from == BS_REQ_MADE;
    case BS_REQ_DEFERRED:
        return from == BS_REQ_CALLBACK;
    case BS_REQ_STARTED:
        return from == BS_REQ_CALLBACK || from == BS_REQ_DEFERRED;
    case BS_REQ_SENT:
        return from == BS_REQ_CALLBACK || from == BS_REQ_DEFERRED || from == BS_REQ_STARTED;
    case BS_REQ_GONE:
        return from == BS_REQ_CALLBACK || from == BS_REQ_DEFERRED || from == BS_REQ_STARTED ||
               from == BS_REQ_SENT;
    case BS_REQ_DONE:
        return from == BS_REQ_NEW || from == BS_REQ_RESPONDING || from == BS_REQ_SENT;
    default:
        return 0;
    }
}

static void rec_enter(bs_http_req_t *rec, int state)
{
    if (!rec_may_enter(rec->state, state))
        rec_fatal("transition not in the state machine");
    rec->state = state;
}

static void stop_watch(bs_http_req_t *rec)
{
    if (rec->watch != NULL) {
        event_free(rec->watch);
        rec->watch = NULL;
    }
}

static void conn_unlink(bs_http_req_t *rec);

static void rec_free_if_unheld(bs_http_req_t *rec)
{
    if (rec->holds == 0 && rec->calls == 0) {
        stop_watch(rec);
        conn_unlink(rec);
        rec_free(rec);
    }
}

/* One holder lets go; the last one wipes and frees the record. */
static void rec_drop(bs_http_req_t *rec, unsigned hold)
{
    if (rec->state == BS_REQ_FREE || !(rec->holds & hold))
        rec_fatal("a holder let go twice");
    rec->holds &= ~hold;
    if (hold & BS_HOLD_PY)
        atomic_fetch_sub_explicit(&py_holds, 1, memory_order_relaxed);
    rec_free_if_unheld(rec);
}

/* Around a call that may run Python (which may close anything): the record outlives it. */
static void rec_enter_call(bs_http_req_t *rec)
{
    rec->calls++;
}

static void rec_leave_call(bs_http_req_t *rec)
{
    if (rec->state == BS_REQ_FREE || rec->calls <= 0)
        rec_fatal("a call left twice");
    rec->calls--;
    rec_free_if_unheld(rec);
}

/* Python lets go of a record (its wrapper is closed); a client request is cancelled or freed. */
BS_EXPORT void bs_http_req_release(bs_http_req_t *rec)
{
    if (rec == NULL || !(rec->holds & BS_HOLD_PY))
        return;
    rec->py = NULL;
    if (rec->state == BS_REQ_NEW) {
        struct evhttp_request *r = rec->req;
        rec->req = NULL;
        rec_enter(rec, BS_REQ_DONE);
        if (r != NULL)
            evhttp_request_free(r); /* never made: still ours */
    } else if (rec->state == BS_REQ_MADE) {
        /* Cancelling frees the request and runs no request callback. */
        struct evhttp_request *r = rec->req;
        rec->req = NULL;
        rec_enter(rec, BS_REQ_CANCELLED);
        rec->error = EVREQ_HTTP_REQUEST_CANCEL + 1;
        rec_enter_call(rec); /* the error callback still writes to rec; others may run Python */
        evhttp_cancel_request(r);
        conn_unlink(rec);
        rec_drop(rec, BS_HOLD_EV);
        rec_leave_call(rec);
    }
    rec_drop(rec, BS_HOLD_PY);
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

/* 0, or -1 for a name that is not an RFC 9110 token, -2 for a value with a control character
   (RFC 9110 field values: visible characters, obs-text, space and horizontal tab). */
BS_EXPORT int bs_http_header_check(const char *key, size_t klen, const char *value, size_t vlen)
{
    if (klen == 0)
        return -1;
    for (size_t i = 0; i < klen; i++)
        if (!is_tchar((unsigned char)key[i]))
            return -1;
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
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
    rec_enter(rec, BS_REQ_DONE);
    rec_drop(rec, BS_HOLD_EV);
}

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    bs_http_req_t *rec = arg;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    if (rec == NULL || !(rec->holds & BS_HOLD_EV))
        return;
    if (rec->req != NULL) {
        /* Detached by a read error or timeout: libevent will not free it, so we do. */
        if (evhttp_request_get_connection(rec->req) == NULL) {
            evhttp_request_set_on_complete_cb(rec->req, NULL, NULL);
            evhttp_request_free(rec->req);
        }
        rec->req = NULL;
    }
    rec->evcon = NULL;
    rec_enter(rec, BS_REQ_GONE);
    stop_watch(rec);
    if ((rec->holds & BS_HOLD_PY) && rec->py != NULL && !in_orphan) {
        void *py = rec->py;
        rec_enter_call(rec);
        _bs_http_on_gone(py); /* Python closes the wrapper and lets go of the record */
        rec_drop(rec, BS_HOLD_EV);
        rec_leave_call(rec);
        return;
    }
    rec_drop(rec, BS_HOLD_EV);
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

static void py_request(struct evhttp_request *r, bs_http_route_t *route);

/* A request on a server that Python closed from inside one of its callbacks. */
static void closed_server_cb(struct evhttp_request *r, void *arg)
{
    (void)arg;
    evhttp_send_error(r, HTTP_SERVUNAVAIL, NULL);
}

/* Every request callback, Python or C, runs through here: the server knows when it is inside
   one of its own callbacks, where it must not be freed (bs_evhttp_release). */
BS_EXPORT void bs_http_server_cb(struct evhttp_request *r, void *arg)
{
    bs_http_route_t *route = arg;
    bs_evhttp *h = route->h;
    bs_base *b = h->node.owner; /* linked while libevent can call the server's routes */
    if (b != NULL)
        bs_base_enter(b);
    h->running++;
    if (route->c_cb != NULL)
        route->c_cb((EvHttpRequest *)r, route->c_arg);
    else
        py_request(r, route);
    h->running--;
    if (b != NULL)
        bs_base_leave(b);
}

static void py_request(struct evhttp_request *r, bs_http_route_t *route)
{
    bs_http_req_t *rec = rec_new(BS_REQ_CALLBACK, BS_HOLD_PY | BS_HOLD_EV);
    if (rec == NULL) {
        evhttp_send_error(r, HTTP_SERVUNAVAIL, NULL);
        return;
    }
    rec->req = r;
    rec->evcon = evhttp_request_get_connection(r);
    evhttp_request_set_on_complete_cb(r, on_complete, rec);
    if (rec->evcon != NULL)
        evhttp_connection_set_closecb(rec->evcon, on_close, rec);
    rec_enter_call(rec);
    int failed = _bs_http_on_request(rec, route->py);
    bs_http_finish_callback(rec, failed);
    rec_leave_call(rec);
}

/*
 * After the Python callback: a failed callback gets 500 (or its chunked reply ended); a record
 * Python neither answered nor deferred is let go. Returns 1 when a reply was sent here.
 */
BS_EXPORT int bs_http_finish_callback(bs_http_req_t *rec, int failed)
{
    if (!(rec->holds & BS_HOLD_PY) || (rec->py != NULL && !failed))
        return 0;
    int sent = 0;
    if (rec->req != NULL && (rec->state == BS_REQ_CALLBACK || rec->state == BS_REQ_DEFERRED ||
                             rec->state == BS_REQ_STARTED)) {
        struct evhttp_request *r = rec->req;
        int started = rec->state == BS_REQ_STARTED;
        rec_enter(rec, BS_REQ_SENT);
        if (started)
            evhttp_send_reply_end(r);
        else
            evhttp_send_error(r, HTTP_INTERNAL, NULL);
        sent = 1;
    }
    rec->py = NULL;
    rec_drop(rec, BS_HOLD_PY);
    return sent;
}

/* The Python callback returned without completing its reply: keep the record, watch for hang-up. */
BS_EXPORT int bs_http_defer(bs_http_req_t *rec, void *py)
{
    if (rec->req == NULL || rec->evcon == NULL)
        return -1;
    if (rec->state == BS_REQ_CALLBACK)
        rec_enter(rec, BS_REQ_DEFERRED);
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

/* Reply state checks shared by the reply calls: -1 closed, -2 already answered. */
static int can_reply(bs_http_req_t *rec)
{
    if (rec->req == NULL)
        return -1;
    if (rec->state != BS_REQ_CALLBACK && rec->state != BS_REQ_DEFERRED)
        return -2;
    return 0;
}

static int can_chunk(bs_http_req_t *rec)
{
    if (rec->req == NULL)
        return -1;
    return rec->state == BS_REQ_STARTED ? 0 : -2;
}

/*
 * A reply is complete: Python's hold ends here, libevent's at on_complete(). The state changes
 * before libevent is called, because libevent may finish (and call on_complete) inside the call.
 */
static struct evhttp_request *replying(bs_http_req_t *rec)
{
    struct evhttp_request *r = rec->req;
    rec_enter(rec, BS_REQ_SENT);
    rec_enter_call(rec);
    return r;
}

static void replied(bs_http_req_t *rec)
{
    rec->py = NULL;
    if (rec->state == BS_REQ_SENT || rec->state == BS_REQ_DONE)
        rec->req = NULL;
    rec_drop(rec, BS_HOLD_PY);
    rec_leave_call(rec);
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
    evhttp_send_reply(replying(rec), code, reason, NULL);
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
    evhttp_send_reply(replying(rec), code, NULL, NULL);
    replied(rec);
    return 0;
}

BS_EXPORT int bs_http_send_error(bs_http_req_t *rec, int code, const char *reason)
{
    int rc = can_reply(rec);
    if (rc != 0)
        return rc;
    evhttp_send_error(replying(rec), code, reason);
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
    rec_enter(rec, BS_REQ_STARTED);
    evhttp_send_reply_start(rec->req, code, reason);
    return 0;
}

BS_EXPORT int bs_http_reply_chunk(bs_http_req_t *rec, const char *data, size_t len)
{
    int rc = can_chunk(rec);
    if (rc != 0)
        return rc;
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
    int rc = can_chunk(rec);
    if (rc != 0)
        return rc;
    evhttp_send_reply_end(replying(rec));
    replied(rec);
    return 0;
}

/* ---- client ---- */

static void conn_link(bs_http_req_t *rec, bs_evconn *c)
{
    rec->conn = c;
    rec->prev = NULL;
    rec->next = c->reqs;
    if (c->reqs != NULL)
        c->reqs->prev = rec;
    c->reqs = rec;
}

static void conn_unlink(bs_http_req_t *rec)
{
    bs_evconn *c = rec->conn;
    if (c == NULL)
        return;
    if (rec->prev != NULL)
        rec->prev->next = rec->next;
    else
        c->reqs = rec->next;
    if (rec->next != NULL)
        rec->next->prev = rec->prev;
    rec->conn = NULL;
    rec->prev = rec->next = NULL;
}

static void client_error_cb(enum evhttp_request_error err, void *arg)
{
    bs_http_req_t *rec = arg;
    if (rec->state != BS_REQ_MADE && rec->state != BS_REQ_CANCELLED)
        return;
    if (rec->error == 0)
        rec->error = (int)err + 1;
    rec->sys_errno = errno;
}

static void client_cb(struct evhttp_request *r, void *arg)
{
    bs_http_req_t *rec = arg;
    int saved = errno;
    if (rec->state == BS_REQ_CANCELLED) {
        /* Python cancelled it while its connection's free was pending; libevent lets go now. */
        conn_unlink(rec);
        rec_drop(rec, BS_HOLD_EV);
        return;
    }
    if (rec->state != BS_REQ_MADE)
        rec_fatal("response for a request that is not in flight");
    if (rec->sys_errno == 0)
        rec->sys_errno = saved;
    /* r is NULL when libevent already freed the request (error path); else it frees r after. */
    bs_base *b = rec->conn != NULL ? rec->conn->node.owner : NULL;
    rec_enter(rec, BS_REQ_RESPONDING);
    conn_unlink(rec);
    rec->req = r;
    rec_enter_call(rec);
    if (b != NULL)
        bs_base_enter(b);
    if ((rec->holds & BS_HOLD_PY) && rec->py != NULL)
        _bs_http_on_response(rec->py);
    if (b != NULL)
        bs_base_leave(b);
    rec->req = NULL;
    rec_enter(rec, BS_REQ_DONE);
    rec_drop(rec, BS_HOLD_EV);
    rec_leave_call(rec);
}

BS_EXPORT bs_http_req_t *bs_http_client_new(void *py)
{
    bs_http_req_t *rec = rec_new(BS_REQ_NEW, BS_HOLD_PY);
    if (rec == NULL)
        return NULL;
    rec->req = evhttp_request_new(client_cb, rec);
    if (rec->req == NULL) {
        rec_drop(rec, BS_HOLD_PY);
        return NULL;
    }
    evhttp_request_set_error_cb(rec->req, client_error_cb);
    rec->py = py;
    return rec;
}

/* 0 made (its callback may already have run), -1 refused by libevent, -2 not a new request. */
BS_EXPORT int bs_http_make_request(bs_http_req_t *rec, bs_evconn *c, int type, const char *uri)
{
    if (rec->state != BS_REQ_NEW || rec->req == NULL || c->evcon == NULL || c->free_later)
        return -2;
    struct evhttp_request *r = rec->req;
    rec_enter(rec, BS_REQ_MADE);
    rec->holds |= BS_HOLD_EV;
    rec_enter_call(rec); /* libevent may answer (and run Python) inside evhttp_make_request */
    conn_link(rec, c);
    if (evhttp_make_request(c->evcon, r, (enum evhttp_cmd_type)type, uri) != 0) {
        /*
         * libevent 2.1 gave the request back (it could not open a socket) or, out of memory
         * for the URI, freed it; it cannot be told which, and a leak is the lesser harm.
         */
        if (rec->state == BS_REQ_MADE) {
            rec->req = NULL;
            rec_enter(rec, BS_REQ_CANCELLED);
            if (rec->error == 0)
                rec->error = EVREQ_HTTP_EOF + 1;
            conn_unlink(rec);
            rec_drop(rec, BS_HOLD_EV);
        }
        rec_leave_call(rec);
        return -1;
    }
    rec_leave_call(rec);
    return 0;
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

/*
 * Freeing later: a server or connection released inside one of its own callbacks stays linked
 * to its base, with a zero-delay timer that frees it on the next loop round. If the base goes
 * first, its orphan function frees it instead. Either way the record goes with it: Python let
 * go of it already.
 */
static int free_later(struct event_base *base, struct event **slot, event_callback_fn fn,
                      void *arg)
{
    struct timeval zero = {0, 0};
    if (base == NULL)
        return -1;
    *slot = evtimer_new(base, fn, arg);
    if (*slot == NULL)
        return -1;
    if (evtimer_add(*slot, &zero) != 0) {
        event_free(*slot);
        *slot = NULL;
        return -1;
    }
    return 0;
}

static void timer_free(struct event **slot)
{
    if (*slot != NULL) {
        event_free(*slot);
        *slot = NULL;
    }
}

static void evhttp_free_now(bs_evhttp *h)
{
    guards_free(h, NULL); /* their timers live on the base */
    if (h->http != NULL) {
        struct evhttp *http = h->http;
        h->http = NULL;
        evhttp_free(http); /* closes every connection: on_close() tells Python */
    }
}

static void evhttp_orphan(bs_node *n)
{
    bs_evhttp *h = (bs_evhttp *)n;
    int released = h->free_later != NULL;
    timer_free(&h->free_later);
    in_orphan = 1;
    evhttp_free_now(h);
    in_orphan = 0;
    if (released)
        bs_record_free(h, sizeof *h);
}

static void evhttp_free_later_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_evhttp *h = arg;
    (void)fd;
    (void)what;
    bs_tree_lock();
    bs_node_detach_locked(&h->node);
    bs_tree_unlock();
    timer_free(&h->free_later);
    evhttp_free_now(h);
    bs_record_free(h, sizeof *h);
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

/*
 * Python lets go of its server. later: inside one of the server's own request callbacks, where
 * evhttp_free would free the connection libevent is working on; then the server stops accepting
 * now, answers 503 to anything already read, and is freed on the next loop round.
 */
BS_EXPORT void bs_evhttp_release(bs_evhttp *h, int later)
{
    if ((later || h->running > 0) && h->http != NULL) {
        guards_free(h, NULL);
        evhttp_set_gencb(h->http, closed_server_cb, NULL);
        bs_tree_lock();
        int ok = h->node.owner != NULL &&
                 free_later(h->node.owner->base, &h->free_later, evhttp_free_later_cb, h) == 0;
        bs_tree_unlock();
        if (ok)
            return;
    }
    bs_tree_lock();
    bs_node_detach_locked(&h->node);
    bs_tree_unlock();
    evhttp_free_now(h);
    bs_record_free(h, sizeof *h);
}

/* The connection is going: every made request still linked is cancelled, silently (no Python). */
static void conn_cancel_all(bs_evconn *c)
{
    for (bs_http_req_t *rec = c->reqs; rec != NULL; rec = rec->next) {
        if (rec->state == BS_REQ_MADE) {
            rec->req = NULL;
            rec_enter(rec, BS_REQ_CANCELLED);
            rec->error = EVREQ_HTTP_REQUEST_CANCEL + 1;
        }
    }
}

/* evhttp_connection_free, then libevent's hold on every linked record ends (it freed them). */
static void conn_free_now(bs_evconn *c)
{
    conn_cancel_all(c);
    if (c->evcon != NULL) {
        struct evhttp_connection *evcon = c->evcon;
        c->evcon = NULL;
        evhttp_connection_free(evcon);
    }
    while (c->reqs != NULL) {
        bs_http_req_t *rec = c->reqs;
        conn_unlink(rec);
        rec_drop(rec, BS_HOLD_EV);
    }
}

static void evconn_orphan(bs_node *n)
{
    bs_evconn *c = (bs_evconn *)n;
    int released = c->free_later != NULL;
    timer_free(&c->free_later);
    in_orphan = 1;
    conn_free_now(c);
    in_orphan = 0;
    if (released)
        bs_record_free(c, sizeof *c);
}

static void evconn_free_later_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_evconn *c = arg;
    (void)fd;
    (void)what;
    bs_tree_lock();
    bs_node_detach_locked(&c->node);
    bs_tree_unlock();
    timer_free(&c->free_later);
    conn_free_now(c);
    bs_record_free(c, sizeof *c);
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

/*
 * Python lets go of its connection; every request still queued on it is cancelled here (Python
 * then finishes their wrappers with error "cancelled"). later: inside one of the connection's
 * own response callbacks, where libevent still works on it; it is freed on the next round.
 */
BS_EXPORT void bs_evconn_release(bs_evconn *c, int later)
{
    conn_cancel_all(c);
    if (later && c->evcon != NULL) {
        bs_tree_lock();
        int ok = c->node.owner != NULL &&
                 free_later(c->base, &c->free_later, evconn_free_later_cb, c) == 0;
        bs_tree_unlock();
        if (ok)
            return;
    }
    bs_tree_lock();
    bs_node_detach_locked(&c->node);
    bs_tree_unlock();
    conn_free_now(c);
    bs_record_free(c, sizeof *c);
}
