/*
 * http_reply.c - writing a server's replies: the one-call replies (send_reply, echo, error),
 * chunked replies (start, chunk, end), the written-byte counting behind on_sent with its
 * sent callback, and bs_http_settle(): the one place that decides what becomes of a request
 * Python lets go of. Dispatch and the records' lifetime are in http_server.c.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

/*
 * Written bytes of a chunked reply. From send_reply_start until the reply is written
 * (on_complete) or its connection closes (on_close), a callback on the connection's output
 * buffer counts the bytes queued and drained; libevent calls it inside its own writes, so it
 * only counts, and when the oldest on_sent threshold is reached it activates the record's
 * sent_ev, whose callback runs Python in the loop. While on_sent callbacks are pending the
 * record has the SENT holder: it outlives the request (the last chunk's callback comes after
 * on_complete) and is let go by sent_cb once Python's queue is empty, or dropped when the
 * connection closed first (Python discards the callbacks without running them).
 */
static void out_counted(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    bs_http_req_t *rec = arg;
    (void)buf;
    rec->out_added += info->n_added;
    rec->out_drained += info->n_deleted;
    if (info->n_deleted != 0 && rec->sent_next != 0 && rec->out_drained >= rec->sent_next &&
        rec->sent_ev != NULL)
        event_active(rec->sent_ev, EV_TIMEOUT, 1);
}

static void start_counting(bs_http_req_t *rec)
{
    struct bufferevent *bev = rec->evcon ? evhttp_connection_get_bufferevent(rec->evcon) : NULL;
    if (bev == NULL || rec->out_cb != NULL)
        return;
    rec->out = bufferevent_get_output(bev);
    rec->out_added = evbuffer_get_length(rec->out); /* the status line and headers */
    rec->out_drained = 0;
    rec->out_cb = evbuffer_add_cb(rec->out, out_counted, rec);
}

void bs_stop_counting(bs_http_req_t *rec)
{
    if (rec->out_cb != NULL) {
        evbuffer_remove_cb_entry(rec->out, rec->out_cb);
        rec->out_cb = NULL;
        rec->out = NULL;
    }
}

static void sent_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_http_req_t *rec = arg;
    (void)fd;
    (void)what;
    if (!(rec->holds & BS_HOLD_SENT))
        return;
    int gone = rec->sent_gone;
    bs_rec_enter_call(rec); /* on_sent may close the request, its connection, its server */
    unsigned long long next = bs_py_http_sent(rec->sent_py, rec->out_drained, gone);
    if (gone || next == 0) {
        rec->sent_next = 0;
        rec->sent_py = NULL;
        bs_rec_drop(rec, BS_HOLD_SENT);
    } else {
        rec->sent_next = next;
        if (rec->sent_gone || rec->out_drained >= next)
            event_active(rec->sent_ev, EV_TIMEOUT, 1);
    }
    bs_rec_leave_call(rec);
}

/*
 * Python waits until `at` reply bytes are written (an on_sent callback, or a helper waiting
 * for output_buffered to drop); py is the handle of its queue. 0; BS_HTTP_ANSWERED when no
 * chunked reply was started; BS_HTTP_CLOSED when the reply is not being counted (complete, or
 * its connection gone); BS_HTTP_NO_MEMORY.
 */
BS_EXPORT int bs_http_sent_arm(bs_http_req_t *rec, unsigned long long at, void *py)
{
    if (rec->req != NULL && (rec->state == BS_REQ_CALLBACK || rec->state == BS_REQ_DEFERRED))
        return BS_HTTP_ANSWERED;
    if (rec->out_cb == NULL || rec->evcon == NULL || rec->sent_gone)
        return BS_HTTP_CLOSED;
    if (rec->sent_ev == NULL) {
        rec->sent_ev = event_new(evhttp_connection_get_base(rec->evcon), -1, 0, sent_cb, rec);
        if (rec->sent_ev == NULL)
            return BS_HTTP_NO_MEMORY;
    }
    if (!(rec->holds & BS_HOLD_SENT)) {
        bs_rec_hold(rec, BS_HOLD_SENT);
        rec->sent_py = py;
        rec->sent_next = at;
    } else if (at < rec->sent_next || rec->sent_next == 0) {
        rec->sent_next = at;
    }
    if (rec->out_drained >= at)
        event_active(rec->sent_ev, EV_TIMEOUT, 1);
    return 0;
}

/* Reply state checks shared by the reply calls. */
static int can_reply(bs_http_req_t *rec)
{
    if (rec->req == NULL)
        return BS_HTTP_CLOSED;
    if (rec->state != BS_REQ_CALLBACK && rec->state != BS_REQ_DEFERRED)
        return BS_HTTP_ANSWERED;
    return 0;
}

static int can_chunk(bs_http_req_t *rec)
{
    if (rec->req == NULL)
        return BS_HTTP_CLOSED;
    return rec->state == BS_REQ_STARTED ? 0 : BS_HTTP_ANSWERED;
}

/*
 * A reply is complete: Python's hold ends here, libevent's at on_complete(). The state changes
 * before libevent is called, because libevent may finish (and call on_complete) inside the call.
 */
static struct evhttp_request *replying(bs_http_req_t *rec)
{
    struct evhttp_request *r = rec->req;
    bs_rec_enter(rec, BS_REQ_SENT);
    bs_rec_enter_call(rec);
    return r;
}

static void replied(bs_http_req_t *rec)
{
    rec->py = NULL;
    if (rec->state == BS_REQ_SENT || rec->state == BS_REQ_DONE)
        rec->req = NULL;
    bs_rec_drop(rec, BS_HOLD_PY);
    bs_rec_leave_call(rec);
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
            return BS_HTTP_BAD_VALUE;
        evhttp_remove_header(out, "Content-Type");
        evhttp_add_header(out, "Content-Type", ctype);
    }
    if (evhttp_find_header(out, "Date") == NULL)
        bs_add_date(out);
    if (len && evbuffer_add(evhttp_request_get_output_buffer(r), body, len) != 0)
        return BS_HTTP_NO_MEMORY;
    evhttp_send_reply(replying(rec), code, reason, NULL);
    replied(rec);
    return 0;
}

/* Reply with the request's own body (moved, not copied) and Content-Type (or the default:
   default_len bytes, NUL-terminated; empty or NULL for none). */
BS_EXPORT int bs_http_send_echo(bs_http_req_t *rec, int code, const char *default_ctype,
                                size_t default_len)
{
    int rc = can_reply(rec);
    if (rc != 0)
        return rc;
    if (default_ctype != NULL && default_len == 0)
        default_ctype = NULL; /* an empty default is none, not an empty Content-Type field */
    /* every byte checked (a NUL too): refused whether or not the request brings its own */
    if (default_ctype != NULL &&
        bs_http_header_check("Content-Type", 12, default_ctype, default_len) != 0)
        return BS_HTTP_BAD_VALUE;
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
        bs_add_date(out);
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
        bs_add_date(out);
    bs_rec_enter(rec, BS_REQ_STARTED);
    evhttp_send_reply_start(rec->req, code, reason);
    start_counting(rec);
    return 0;
}

/* Queue a chunk; returns the reply's byte count once it is written (its on_sent threshold),
   or -1 closed, -2 not started, -4 out of memory. An empty chunk is skipped (it would end the
   chunked body) and returns the count queued so far. */
BS_EXPORT long long bs_http_reply_chunk(bs_http_req_t *rec, const char *data, size_t len)
{
    int rc = can_chunk(rec);
    if (rc != 0)
        return rc;
    if (len != 0) {
        struct evbuffer *buf = evbuffer_new();
        if (buf == NULL || evbuffer_add(buf, data, len) != 0) {
            if (buf != NULL)
                evbuffer_free(buf);
            return BS_HTTP_NO_MEMORY;
        }
        /* libevent's own callback slot fires only when the whole output has drained, and each
           chunk replaces the last one's: per-chunk notification counts written bytes instead */
        evhttp_send_reply_chunk_with_cb(rec->req, buf, NULL, NULL);
        evbuffer_free(buf);
    }
    return rec->out_cb != NULL ? (long long)rec->out_added : 0;
}

/* Bytes of reply queued on the request's connection and not yet written; -1 once closed. */
BS_EXPORT long long bs_http_output_buffered(bs_http_req_t *rec)
{
    if (rec->req == NULL || rec->evcon == NULL)
        return -1;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(rec->evcon);
    return bev != NULL ? (long long)evbuffer_get_length(bufferevent_get_output(bev)) : -1;
}

/*
 * Write what is queued on the request's connection to its socket now, as far as the socket
 * takes it without blocking: a server about to be freed (which closes its connections at once)
 * first gets the replies it queued last (503s) to its clients. On a framed connection the
 * framing filter passes the reply bytes unchanged and writes them to the socket itself, so its
 * own output is written, unless bytes wait below it (they would be overtaken). 0, or -1 when
 * the connection is gone, has no socket, or has bytes below its filter.
 */
BS_EXPORT int bs_http_flush(bs_http_req_t *rec)
{
    if (rec->evcon == NULL)
        return -1;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(rec->evcon);
    if (bev == NULL)
        return -1;
    struct bufferevent *under = bufferevent_get_underlying(bev);
    if (under != NULL && evbuffer_get_length(bufferevent_get_output(under)) != 0)
        return -1;
    evutil_socket_t fd = bufferevent_getfd(under != NULL ? under : bev);
    if (fd < 0)
        return -1;
    struct evbuffer *out = bufferevent_get_output(bev);
    while (evbuffer_get_length(out) > 0 && evbuffer_write(out, fd) > 0)
        ;
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

/*
 * What happens to a server request Python lets go of, decided here and nowhere else: its
 * wrapper is closed (500), its callback raised (500) or closed its own server (503). A request
 * still replyable is answered with `code`; a started chunked reply is ended; any other has
 * nothing left to send and Python's share just ends (bs_http_req_release). Its server closed
 * while it waits asks BS_SETTLE_REFUSE_ONLY (503): only a replyable request is answered, any
 * other is left to its connection's close or its wrapper's. BS_SETTLE_FLUSH writes the answer
 * to the socket at once, for a server about to be freed (which closes its connections).
 * Returns what it did (BS_SETTLE_*).
 */
BS_EXPORT int bs_http_settle(bs_http_req_t *rec, int code, int how)
{
    if (!(rec->holds & BS_HOLD_PY))
        return BS_SETTLE_NONE; /* answered already: Python's share ended there */
    if (can_reply(rec) == 0) {
        bs_rec_enter_call(rec); /* the record outlives the answer, for the flush */
        bs_http_send_error(rec, code, NULL); /* Python's share ends (replied()) */
        if (how & BS_SETTLE_FLUSH)
            bs_http_flush(rec);
        bs_rec_leave_call(rec);
        return BS_SETTLE_ANSWERED;
    }
    if (how & BS_SETTLE_REFUSE_ONLY)
        return BS_SETTLE_NONE;
    if (can_chunk(rec) == 0) {
        bs_http_reply_end(rec); /* Python's share ends (replied()) */
        return BS_SETTLE_ENDED;
    }
    bs_http_req_release(rec);
    return BS_SETTLE_RELEASED;
}
