/*
 * http_client.c - evhttp client requests and the EvHttpConnection record, which knows the made
 * requests libevent holds so that freeing it cancels exactly those (see http_request.c).
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <errno.h>
#include <stdlib.h>

/* ---- client ---- */

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
        bs_conn_unlink(rec);
        bs_rec_drop(rec, BS_HOLD_EV);
        return;
    }
    if (rec->state != BS_REQ_MADE)
        bs_rec_fatal("response for a request that is not in flight");
    if (rec->sys_errno == 0)
        rec->sys_errno = saved;
    /* r is NULL when libevent already freed the request (error path); else it frees r after. */
    bs_base *b = rec->conn != NULL ? rec->conn->head.node.owner : NULL;
    bs_rec_enter(rec, BS_REQ_RESPONDING);
    bs_conn_unlink(rec);
    rec->req = r;
    bs_rec_enter_call(rec);
    if (b != NULL)
        bs_base_enter(b);
    if ((rec->holds & BS_HOLD_PY) && rec->py != NULL)
        bs_py_http_response(rec->py);
    if (b != NULL)
        bs_base_leave(b);
    rec->req = NULL;
    bs_rec_enter(rec, BS_REQ_DONE);
    bs_rec_drop(rec, BS_HOLD_EV);
    bs_rec_leave_call(rec);
}

BS_EXPORT bs_http_req_t *bs_http_client_new(void *py)
{
    bs_http_req_t *rec = bs_rec_new(BS_REQ_NEW, BS_HOLD_PY);
    if (rec == NULL)
        return NULL;
    rec->req = evhttp_request_new(client_cb, rec);
    if (rec->req == NULL) {
        bs_rec_drop(rec, BS_HOLD_PY);
        return NULL;
    }
    evhttp_request_set_error_cb(rec->req, client_error_cb);
    rec->py = py;
    return rec;
}

/* 0 made (its callback may already have run), -1 refused by libevent, -2 not a new request. */
BS_EXPORT int bs_http_make_request(bs_http_req_t *rec, bs_evconn *c, int type, const char *uri)
{
    if (rec->state != BS_REQ_NEW || rec->req == NULL || c->evcon == NULL || c->head.free_later)
        return -2;
    struct evhttp_request *r = rec->req;
    bs_rec_enter(rec, BS_REQ_MADE);
    rec->holds |= BS_HOLD_EV;
    bs_rec_enter_call(rec); /* libevent may answer (and run Python) inside evhttp_make_request */
    bs_conn_link(rec, c);
    if (evhttp_make_request(c->evcon, r, (enum evhttp_cmd_type)type, uri) != 0) {
        /*
         * libevent 2.1 gave the request back (it could not open a socket) or, out of memory
         * for the URI, freed it; it cannot be told which, and a leak is the lesser harm.
         */
        if (rec->state == BS_REQ_MADE) {
            rec->req = NULL;
            bs_rec_enter(rec, BS_REQ_CANCELLED);
            if (rec->error == 0)
                rec->error = EVREQ_HTTP_EOF + 1;
            bs_conn_unlink(rec);
            bs_rec_drop(rec, BS_HOLD_EV);
        }
        bs_rec_leave_call(rec);
        return -1;
    }
    bs_rec_leave_call(rec);
    return 0;
}

/* ---- the EvHttpConnection record, linked to its base (see event.h) ---- */

/* The connection is going: every made request still linked is cancelled, silently (no Python). */
static void conn_cancel_all(bs_evconn *c)
{
    for (bs_http_req_t *rec = c->reqs; rec != NULL; rec = rec->next) {
        if (rec->state == BS_REQ_MADE) {
            rec->req = NULL;
            bs_rec_enter(rec, BS_REQ_CANCELLED);
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
        bs_conn_unlink(rec);
        bs_rec_drop(rec, BS_HOLD_EV);
    }
}

static void conn_free_head(bs_later *l)
{
    conn_free_now((bs_evconn *)l);
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
    if (bs_later_attach(b, &c->head, conn_free_head, sizeof *c) != 0) {
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
    if (later && c->evcon != NULL && bs_later_schedule(&c->head, c->base) == 0)
        return;
    bs_later_free(&c->head);
}

BS_EXPORT void bs_evconn_set_timeout(bs_evconn *c, double seconds)
{
    struct timeval tv;
    bs_to_timeval(seconds, &tv);
    evhttp_connection_set_timeout_tv(c->evcon, &tv);
}
