/*
 * http_request.c - the evhttp request records shared by the server and the client rooms, header
 * validation, bodies, and the deferred free of servers and connections. Who owns what across
 * Python and libevent is told once, in docs/design/lifetimes.md; this file holds the C
 * half.
 *
 * Request records
 * ---------------
 * A record (bs_http_req_t) has holders, one bit each in `holds`; the holder that lets go last
 * wipes and frees it (rec_drop), and a holder never lets go twice (that aborts: it would be a
 * double free). The holders are Python's wrapper (PY), libevent while it may still call us
 * back with the record (EV), and, for a chunked reply with on_sent callbacks pending, the
 * record's own sent_ev (SENT, http_reply.c: it outlives the request, whose last chunk is
 * written after the reply completed, and lets go once Python's queue is empty or the
 * connection closed), and, for a stream_body request, its body_ev while the body's end, refusal
 * or loss is still to be told (BODY, http_stream.c: a body may go on after the reply); besides,
 * `calls` counts our own calls in progress that may run Python (rec_enter_call): so whatever
 * the Python code does (close the request, its connection, its server), the record that the
 * trampoline reads afterwards is still there.
 *
 * `state` says what libevent's request may be used for; bs_rec_enter() is the one place it
 * changes and it refuses any transition not drawn here:
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
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- request records ---- */

__thread int bs_in_orphan; /* a base is freeing its children: no calls into Python */

void bs_rec_fatal(const char *what)
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

bs_http_req_t *bs_rec_new(int state, unsigned holds)
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
    if (rec->live != NULL)
        --*rec->live; /* a host's shutdown waits for them (bs_python_pending) */
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

void bs_rec_enter(bs_http_req_t *rec, int state)
{
    if (!rec_may_enter(rec->state, state))
        bs_rec_fatal("transition not in the state machine");
    rec->state = state;
}

void bs_stop_watch(bs_http_req_t *rec)
{
    if (rec->watch != NULL) {
        event_free(rec->watch);
        rec->watch = NULL;
    }
}

static void rec_free_if_unheld(bs_http_req_t *rec)
{
    if (rec->holds == 0 && rec->calls == 0) {
        bs_stop_watch(rec);
        bs_stop_counting(rec);
        bs_stream_unlink(rec);
        if (rec->sent_ev != NULL)
            event_free(rec->sent_ev);
        if (rec->body_ev != NULL)
            event_free(rec->body_ev);
        if (rec->body_in != NULL)
            evbuffer_free(rec->body_in);
        bs_conn_unlink(rec);
        rec_free(rec);
    }
}

/* One holder lets go; the last one wipes and frees the record. */
void bs_rec_drop(bs_http_req_t *rec, unsigned hold)
{
    if (rec->state == BS_REQ_FREE || !(rec->holds & hold))
        bs_rec_fatal("a holder let go twice");
    rec->holds &= ~hold;
    if (hold & BS_HOLD_PY)
        atomic_fetch_sub_explicit(&py_holds, 1, memory_order_relaxed);
    rec_free_if_unheld(rec);
}

/* A holder takes hold (SENT, after the record was made); holding twice is a bug. */
void bs_rec_hold(bs_http_req_t *rec, unsigned hold)
{
    if (rec->state == BS_REQ_FREE || (rec->holds & hold))
        bs_rec_fatal("a holder took hold twice");
    rec->holds |= hold;
}

/* Around a call that may run Python (which may close anything): the record outlives it. */
void bs_rec_enter_call(bs_http_req_t *rec)
{
    rec->calls++;
}

void bs_rec_leave_call(bs_http_req_t *rec)
{
    if (rec->state == BS_REQ_FREE || rec->calls <= 0)
        bs_rec_fatal("a call left twice");
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
        bs_rec_enter(rec, BS_REQ_DONE);
        if (r != NULL)
            evhttp_request_free(r); /* never made: still ours */
    } else if (rec->state == BS_REQ_MADE) {
        /* Cancelling frees the request and runs no request callback. */
        struct evhttp_request *r = rec->req;
        rec->req = NULL;
        bs_rec_enter(rec, BS_REQ_CANCELLED);
        rec->error = EVREQ_HTTP_REQUEST_CANCEL + 1;
        bs_rec_enter_call(rec); /* the error callback still writes to rec; others may run Python */
        evhttp_cancel_request(r);
        bs_conn_unlink(rec);
        bs_rec_drop(rec, BS_HOLD_EV);
        bs_rec_leave_call(rec);
    }
    bs_rec_drop(rec, BS_HOLD_PY);
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

/* 0, or BS_HEADER_BAD_NAME / BS_HEADER_BAD_VALUE (RFC 9110 field values: visible characters,
   obs-text, space and horizontal tab). */
BS_EXPORT int bs_http_header_check(const char *key, size_t klen, const char *value, size_t vlen)
{
    if (klen == 0)
        return BS_HEADER_BAD_NAME;
    for (size_t i = 0; i < klen; i++)
        if (!is_tchar((unsigned char)key[i]))
            return BS_HEADER_BAD_NAME;
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return BS_HEADER_BAD_VALUE;
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
    return evhttp_add_header(q, key, value) == 0 ? 0 : BS_HEADER_NO_MEMORY;
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

void bs_add_date(struct evkeyvalq *out)
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

/* ---- a client record in its connection's list ---- */

void bs_conn_link(bs_http_req_t *rec, bs_evconn *c)
{
    rec->conn = c;
    rec->prev = NULL;
    rec->next = c->reqs;
    if (c->reqs != NULL)
        c->reqs->prev = rec;
    c->reqs = rec;
}

void bs_conn_unlink(bs_http_req_t *rec)
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

/* ---- freeing later (servers and connections closed inside their own callbacks) ---- */

/* ---- the EvHttp and EvHttpConnection records: freed later when closed in their callbacks ---- */

/*
 * Freeing later: a server or connection released inside one of its own callbacks stays linked
 * to its base, with a zero-delay timer that frees it on the next loop round. If the base goes
 * first, its orphan function frees it instead. Either way the record goes with it: Python let
 * go of it already.
 */
static void later_timer_free(bs_later *l)
{
    if (l->free_later != NULL) {
        event_free(l->free_later);
        l->free_later = NULL;
    }
}

static void later_orphan(bs_node *n)
{
    bs_later *l = (bs_later *)n; /* the node is the head's first member */
    int released = l->free_later != NULL;
    later_timer_free(l);
    bs_in_orphan = 1;
    l->free_now(l);
    bs_in_orphan = 0;
    if (released)
        bs_record_free(l, l->size);
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    bs_later_free(arg);
}

int bs_later_attach(bs_base *b, bs_later *l, void (*free_now)(bs_later *), size_t size)
{
    l->free_now = free_now;
    l->size = size;
    return bs_node_attach(b, &l->node, later_orphan);
}

int bs_later_schedule(bs_later *l, struct event_base *base)
{
    struct timeval zero = {0, 0};
    int rc = -1;
    bs_tree_lock();
    if (l->node.owner != NULL && base != NULL && l->free_later == NULL) {
        l->free_later = evtimer_new(base, later_cb, l);
        if (l->free_later != NULL && evtimer_add(l->free_later, &zero) == 0)
            rc = 0;
        else
            later_timer_free(l);
    }
    bs_tree_unlock();
    return rc;
}

void bs_later_free(bs_later *l)
{
    bs_tree_lock();
    bs_node_detach_locked(&l->node);
    bs_tree_unlock();
    later_timer_free(l);
    l->free_now(l);
    bs_record_free(l, l->size);
}
