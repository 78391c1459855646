/*
 * http_body.c - the bodies of stream_body requests, given to Python in pieces.
 *
 * The framing filter (http_filter.c) moves a stream request's body, de-chunked, into its
 * record's body_in and activates body_ev; body_cb gives the pieces to Python in the loop (the
 * filter runs inside libevent's reads, so it never calls Python or libevent's HTTP layer
 * itself). Past PAUSE_AT bytes waiting for Python the filter stops reading the socket, and
 * reads on below RESUME_AT. A record fed by a filter has the BODY holder until body_ev has given
 * Python the body's end, its refusal (413, 400: answered here, or the connection closed when a
 * reply was already under way), or its loss (the connection closed first).
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <string.h>

/* The body is refused (413, 400): answer if nothing was sent yet, else close. */
static void refuse(bs_http_req_t *rec, int code)
{
    if (rec->body_conn != NULL)
        bs_stream_linger(rec->body_conn); /* the client may still be sending: close slowly */
    if (rec->req != NULL && rec->evcon != NULL &&
        (rec->state == BS_REQ_CALLBACK || rec->state == BS_REQ_DEFERRED)) {
        struct evhttp_request *r = rec->req;
        bs_rec_enter(rec, BS_REQ_SENT);
        evhttp_send_error(r, code, NULL); /* "Connection: close": freed once written */
        if ((rec->holds & BS_HOLD_PY) && rec->py != NULL)
            bs_py_http_gone(rec->py); /* Python closes its wrapper: it can no longer reply */
    } else if (rec->evcon != NULL) {
        evhttp_connection_free(rec->evcon); /* on_close() tells Python */
    }
}

static void body_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_http_req_t *rec = arg;
    (void)fd;
    (void)what;
    if (!(rec->holds & BS_HOLD_BODY))
        return;
    bs_rec_enter_call(rec); /* Python may close the request, its connection, its server */
    while (rec->body_py != NULL && !rec->body_paused && evbuffer_get_length(rec->body_in) != 0) {
        size_t n = evbuffer_get_length(rec->body_in);
        if (n > 65536)
            n = 65536;
        const char *p = (const char *)evbuffer_pullup(rec->body_in, (ev_ssize_t)n);
        bs_py_http_body(rec->body_py, p, n, BS_BODY_PIECE);
        evbuffer_drain(rec->body_in, n);
    }
    if (rec->body_py == NULL && !(rec->holds & BS_HOLD_PY))
        evbuffer_drain(rec->body_in, evbuffer_get_length(rec->body_in)); /* nobody will read */
    if (rec->body_conn != NULL && evbuffer_get_length(rec->body_in) < BS_RESUME_AT)
        bs_stream_resume(rec->body_conn);
    int st = rec->body_status;
    if (st >= 400 && !rec->body_refused) {
        rec->body_refused = 1;
        evbuffer_drain(rec->body_in, evbuffer_get_length(rec->body_in));
        refuse(rec, st);
    }
    if (st != BS_BODY_PIECE && (evbuffer_get_length(rec->body_in) == 0 || st != BS_BODY_END) &&
        (rec->body_py != NULL || !(rec->holds & BS_HOLD_PY))) {
        if (rec->body_py != NULL)
            bs_py_http_body(rec->body_py, NULL, 0, st);
        rec->body_py = NULL;
        bs_rec_drop(rec, BS_HOLD_BODY); /* the call still holds it */
    }
    bs_rec_leave_call(rec);
}

void bs_body_wake(bs_http_req_t *rec)
{
    if (rec->body_ev != NULL)
        event_active(rec->body_ev, EV_TIMEOUT, 1);
}

/* The record is told its final status in the loop (at once when its base is being freed). */
void bs_body_final(bs_http_req_t *rec, int status)
{
    if (rec->body_status == BS_BODY_PIECE)
        rec->body_status = status;
    if (bs_in_orphan) { /* its base is being freed: no more loop rounds, no Python */
        if (rec->holds & BS_HOLD_BODY) {
            evbuffer_drain(rec->body_in, evbuffer_get_length(rec->body_in));
            rec->body_py = NULL;
            bs_rec_drop(rec, BS_HOLD_BODY);
        }
        return;
    }
    bs_body_wake(rec);
}

/* The record takes a body over (bs_stream_claim): its buffer, its event, the BODY holder.
   0, or -1 out of memory. */
int bs_body_start(bs_http_req_t *rec)
{
    rec->body_in = evbuffer_new();
    rec->body_ev = event_new(evhttp_connection_get_base(rec->evcon), -1, 0, body_cb, rec);
    if (rec->body_in == NULL || rec->body_ev == NULL)
        return -1;
    rec->streaming = 1;
    bs_rec_hold(rec, BS_HOLD_BODY);
    return 0;
}

/* Python's sink for the pieces (on_body); NULL py is refused. 0, or -1 not a stream request. */
BS_EXPORT int bs_http_on_body(bs_http_req_t *rec, void *py)
{
    if (!rec->streaming || !(rec->holds & BS_HOLD_BODY) || rec->body_py != NULL || py == NULL)
        return -1;
    rec->body_py = py;
    bs_body_wake(rec);
    return 0;
}

/* Python's sink is full (paused 1) or has room again (0): pieces wait in body_in meanwhile,
   and past BS_PAUSE_AT of them the filter stops reading the socket. */
BS_EXPORT void bs_http_body_pause(bs_http_req_t *rec, int paused)
{
    if (!(rec->holds & BS_HOLD_BODY))
        return;
    rec->body_paused = paused;
    if (!paused)
        bs_body_wake(rec);
}
