/*
 * http_filter.c - the framing filter's read side: every connection of a strict server is read
 * through it.
 *
 * libevent 2.1 reads requests with its own lax parser (chunk sizes through strtoll, header
 * values as C strings) and offers a server no hook between a request's head and its body. So a
 * server reads its connections through a bufferevent filter (evhttp_set_bevcb) that frames the
 * requests itself with the strict framer (http_framing.c) before libevent sees them, and hands
 * libevent only what libevent reads the same way:
 *
 * - One request at a time. The filter passes a request to libevent (its head, and the body of
 *   an ordinary route), then holds the next one (HOLD) until libevent has written the reply and
 *   gone back to reading. So what the filter strips from a head and where the body goes belong
 *   to that request alone, and libevent never reads while it answers (it aborts on reads then).
 * - An ordinary route's body passes as it comes: a Content-Length body unchanged, a chunked one
 *   re-chunked with plain hex sizes (extensions and trailers dropped), so libevent's chunk
 *   reader only ever sees what it reads exactly.
 * - A stream_body route's head passes without its Content-Length or Transfer-Encoding line, so
 *   libevent calls the route at once; the trampoline claims it (bs_stream_claim): puts the line
 *   back into its input headers and takes the body, which the filter moves, de-chunked, into
 *   the record (http_body.c). A request nobody claims (a host's gate answered it) has its body
 *   read and dropped.
 * - Refusals. What the framer refuses, and an ordinary body over the limit, is answered by the
 *   filter itself while libevent is not answering anything (the status line, "Connection:
 *   close"), and the connection is freed; a stream body's refusal is answered by its record.
 *   A refused connection closes slowly (lingering close, see linger_start in http_stream.c):
 *   the answer is written, the write side shut, and input read and dropped for a bounded time
 *   and size, so that a client still sending its body reads the status instead of a reset.
 *
 * The write side is http_filter_write.c; the filter's context (bs_stream_conn), its connection
 * and its server are kept in http_stream.c.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "http.h"
#include "http_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>

/*
 * libevent frees a connection's bufferevent with bufferevent_free, which clears its callbacks
 * at once and finalizes it (calling conn_free, http_stream.c) on a later loop round. Until
 * then the filter's memory and c are still there, but nothing may be done with them: a flush
 * or trigger would take and drop a reference again and finalize it twice.
 */
int bs_filter_alive(bs_stream_conn *c)
{
    bufferevent_event_cb ecb = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, &ecb, NULL);
    return ecb != NULL;
}

/* libevent reads (its read callback is set): idle or reading a request, not writing a reply. */
int bs_filter_reading(bs_stream_conn *c)
{
    bufferevent_data_cb rcb = NULL;
    bufferevent_getcb(c->bev, &rcb, NULL, NULL, NULL);
    return rcb != NULL;
}

/* Let the filter read what is waiting, on the next loop round (see bs_filter_read_cb). */
void bs_filter_read_on(bs_stream_conn *c)
{
    event_active(c->rd, EV_TIMEOUT, 1);
}

void bs_filter_read_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_stream_conn *c = arg;
    (void)fd;
    (void)what;
    if (bs_filter_alive(c) && !c->paused)
        bufferevent_trigger(c->under, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
}

void bs_stream_resume(bs_stream_conn *c)
{
    if (c->paused) {
        c->paused = 0;
        if (bs_filter_alive(c)) {
            bufferevent_enable(c->under, EV_READ);
            bs_filter_read_on(c);
        }
    }
}

void bs_stream_linger(bs_stream_conn *c)
{
    c->linger = 1;
}

static const char *reason(int code)
{
    switch (code) {
    case 413:
        return "Payload Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Bad Request";
    }
}

/* The filter's own answer (libevent answers nothing at that moment), written at once. */
static void answer(bs_stream_conn *c, int code)
{
    char msg[160];
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                     code, reason(code));
    evutil_socket_t fd = bufferevent_getfd(c->under);
    if (fd >= 0 && n > 0)
        (void)!send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT); /* small: one write */
}

/* Have libevent free the connection (from the loop): it hears a read error. */
static void close_conn(bs_stream_conn *c)
{
    if (bs_filter_alive(c))
        bufferevent_trigger_event(c->bev, BEV_EVENT_ERROR | BEV_EVENT_READING,
                                  BEV_OPT_DEFER_CALLBACKS);
}

/* The filter refuses the request it is framing (libevent answers nothing now): it answers
   `code` itself as the connection closes, and drops what comes after. */
static void refuse_conn(bs_stream_conn *c, int code)
{
    c->mode = BS_CONN_DEAD;
    c->linger = 1;
    answer(c, code);
    close_conn(c);
}

static void unlink_rec(bs_stream_conn *c)
{
    if (c->rec != NULL) {
        c->rec->body_conn = NULL;
        c->rec = NULL;
    }
}

/*
 * The stream body's end (1), refusal (413, 400) or loss (-1). A record stays linked to its
 * connection's filter while the filter feeds it or its reply is not complete, and is unlinked
 * before it can be freed.
 */
static void body_finish(bs_stream_conn *c, int status)
{
    bs_http_req_t *rec = c->rec;
    if (rec == NULL) { /* not claimed yet: the claim finds it */
        if (status == 1)
            c->ended = 1;
        else if (c->error == 0)
            c->error = status;
        return;
    }
    if (c->reply_done || status < 0)
        unlink_rec(c);
    bs_body_final(rec, status);
}

/* The record's connection closes, or the record is about to be freed: unlink it. */
void bs_stream_unlink(bs_http_req_t *rec)
{
    bs_stream_conn *c = rec->body_conn;
    if (c == NULL)
        return;
    int feeding = c->mode == BS_CONN_BODY && c->dest == BS_DEST_STREAM;
    if (feeding)
        c->mode = BS_CONN_DEAD;
    unlink_rec(c);
    if (feeding)
        bs_body_final(rec, BS_BODY_LOST);
}

/* The current request's reply is written and libevent reads again: the next may pass. */
void bs_filter_reply_complete(bs_stream_conn *c)
{
    c->reply_done = 1;
    if (!(c->mode == BS_CONN_BODY && c->dest == BS_DEST_STREAM))
        unlink_rec(c);
    if (c->mode == BS_CONN_HOLD) {
        c->mode = BS_CONN_FRAME;
        if (evbuffer_get_length(bufferevent_get_input(c->under)) != 0)
            bs_filter_read_on(c); /* a pipelined request is waiting */
    } else if (c->mode == BS_CONN_DEAD) {
        close_conn(c); /* a refused body was answered with keep-alive (a host's gate) */
    }
}

/* The body is refused (limit, broken chunk): drop the rest, tell the record. */
static void body_refuse(bs_stream_conn *c, int code)
{
    c->mode = BS_CONN_DEAD;
    c->linger = 1;
    body_finish(c, code);
}

/* Does libevent route this target to a stream_body route? (evhttp_dispatch_callback's rule:
   the decoded path, compared exactly; else the generic callback.) */
static int route_streams(bs_evhttp *h, const char *target)
{
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(target, EVHTTP_URI_NONCONFORMANT);
    if (u == NULL)
        return -1;
    const char *path = evhttp_uri_get_path(u);
    char *decoded = evhttp_uridecode(path ? path : "", 0, NULL);
    evhttp_uri_free(u);
    if (decoded == NULL)
        return -1;
    int stream = h->gen_stream;
    for (bs_stream_route *r = h->routes; r != NULL; r = r->next)
        if (strcmp(r->path, decoded) == 0) {
            stream = r->stream;
            break;
        }
    free(decoded);
    return stream;
}


/* Copy a head without its Content-Length and Transfer-Encoding lines (all of them). */
static void strip_framing(const char *p, size_t len, struct evbuffer *dst)
{
    const char *end = p + len, *from = p;
    for (const char *l = p; l < end;) {
        const char *next = (const char *)memchr(l, '\n', (size_t)(end - l)) + 1;
        size_t n = (size_t)(next - l);
        if ((n > 15 && strncasecmp(l, "Content-Length:", 15) == 0) ||
            (n > 18 && strncasecmp(l, "Transfer-Encoding:", 18) == 0)) {
            evbuffer_add(dst, from, (size_t)(l - from));
            from = next;
        }
        l = next;
    }
    evbuffer_add(dst, from, (size_t)(end - from));
}

/* A head the framer accepted: pass it to libevent, stripped of its framing lines for a
   stream_body route. 1 when libevent got it. */
static int on_head(bs_stream_conn *c, struct evbuffer *src, struct evbuffer *dst,
                    const bs_head *hd)
{
    c->size = 0;
    c->error = 0;
    c->ended = 0;
    c->offered = 0;
    c->reply_done = 0;
    c->wrote_reply = 0;
    unlink_rec(c); /* the previous request's reply is complete */
    if (c->h != NULL)
        c->max_body = c->h->max_body;
    if (hd->method < 0) {
        refuse_conn(c, 501); /* a method libevent does not know: it would read no body */
        return 0;
    }
    if (hd->body == BS_BODY_NONE) {
        evbuffer_remove_buffer(src, dst, hd->len);
        c->mode = BS_CONN_HOLD;
        return 1;
    }
    int stream = 0;
    if (c->h != NULL && c->h->any_stream && !hd->expect) {
        const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)hd->len);
        char *target = p != NULL ? strndup(p + hd->target, hd->target_len) : NULL;
        stream = target != NULL ? route_streams(c->h, target) : -1;
        free(target);
        if (stream < 0) {
            refuse_conn(c, 400);
            return 0;
        }
    }
    c->mode = BS_CONN_BODY;
    if (!stream) {
        if (hd->body == BS_BODY_SIZED &&
            ((c->max_body > 0 && hd->length > c->max_body) || hd->length >= BS_LENGTH_HUGE)) {
            refuse_conn(c, 413);
            return 0;
        }
        c->dest = hd->body == BS_BODY_CHUNKED ? BS_DEST_CHUNK : BS_DEST_PASS;
        size_t body = 0;
        if (c->dest == BS_DEST_PASS) { /* the body already here goes with the head, in one move */
            size_t have = evbuffer_get_length(src) - hd->len;
            body = have < hd->length ? have : (size_t)hd->length;
            bs_framer_took(&c->fr, body);
            c->size = body;
        }
        evbuffer_remove_buffer(src, dst, hd->len + body);
        return 1;
    }
    /* libevent sees it without its framing line: a request without body */
    const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)hd->len);
    const char *line = p + hd->frame;
    const char *v = memchr(line, ':', hd->frame_len) + 1;
    size_t vlen = hd->frame_len - 2 - (size_t)(v - line);
    while (vlen && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
        vlen--;
    char *value = strndup(v, vlen);
    if (value == NULL) {
        refuse_conn(c, 503);
        return 0;
    }
    free(c->length);
    free(c->coding);
    c->length = c->coding = NULL;
    if (hd->body == BS_BODY_CHUNKED)
        c->coding = value;
    else
        c->length = value;
    strip_framing(p, hd->len, dst);
    evbuffer_drain(src, hd->len);
    c->offered = 1;
    c->dest = BS_DEST_STREAM;
    evbuffer_drain(c->pending, evbuffer_get_length(c->pending));
    if (hd->body == BS_BODY_SIZED &&
        ((c->max_body > 0 && hd->length > c->max_body) || hd->length >= BS_LENGTH_HUGE))
        body_refuse(c, 413); /* the route still runs, and the refusal answers it */
    return 1;
}

/* n body bytes at the front of src: to libevent, to the record (or pending), or dropped. */
static void on_data(bs_stream_conn *c, struct evbuffer *src, struct evbuffer *dst, size_t n,
                    int *moved)
{
    c->size += n;
    if (c->max_body > 0 && c->size > c->max_body && c->dest != BS_DEST_DROP) {
        if (c->dest == BS_DEST_STREAM)
            body_refuse(c, 413);
        else
            refuse_conn(c, 413); /* libevent has the head, and no reply under way */
        evbuffer_drain(src, n);
        return;
    }
    switch (c->dest) {
    case BS_DEST_PASS:
        evbuffer_remove_buffer(src, dst, n);
        *moved = 1;
        break;
    case BS_DEST_CHUNK:
        evbuffer_add_printf(dst, "%zx\r\n", n);
        evbuffer_remove_buffer(src, dst, n);
        evbuffer_add(dst, "\r\n", 2);
        *moved = 1;
        break;
    case BS_DEST_STREAM:
        evbuffer_remove_buffer(src, c->rec != NULL ? c->rec->body_in : c->pending, n);
        if (c->rec != NULL)
            bs_body_wake(c->rec);
        break;
    default:
        evbuffer_drain(src, n);
    }
}

static void on_end(bs_stream_conn *c, struct evbuffer *dst, int *moved)
{
    if (c->dest == BS_DEST_CHUNK) {
        evbuffer_add(dst, "0\r\n\r\n", 5);
        *moved = 1;
    }
    c->mode = c->reply_done && c->dest >= BS_DEST_STREAM ? BS_CONN_FRAME : BS_CONN_HOLD;
    if (c->dest == BS_DEST_STREAM)
        body_finish(c, 1);
}

enum bufferevent_filter_result bs_filter_in(struct evbuffer *src, struct evbuffer *dst,
                                            ev_ssize_t lim, enum bufferevent_flush_mode how,
                                            void *arg)
{
    bs_stream_conn *c = arg;
    int moved = 0;
    (void)lim;
    (void)how;
    while (!c->paused) {
        if (c->mode == BS_CONN_DEAD) {
            evbuffer_drain(src, evbuffer_get_length(src));
            break;
        }
        if (c->mode == BS_CONN_HOLD) {
            if (!(c->wrote_reply && bs_filter_reading(c)))
                break;
            bs_filter_reply_complete(c); /* a reply libevent finished outside wr_cb */
            continue;
        }
        if (c->mode == BS_CONN_FRAME) {
            if (evbuffer_get_length(src) == 0)
                break;
            if (c->h != NULL)
                c->fr.max_head = c->h->max_head != 0 ? (size_t)c->h->max_head : BS_HEAD_DEFAULT;
        }
        if (c->mode == BS_CONN_BODY && c->dest == BS_DEST_STREAM && c->rec != NULL &&
            evbuffer_get_length(c->rec->body_in) >= BS_PAUSE_AT) {
            c->paused = 1; /* Python is behind: stop reading the socket */
            bufferevent_disable(c->under, EV_READ);
            break;
        }
        bs_head hd;
        size_t n = 0;
        int ev = bs_framer_next(&c->fr, src, &hd, &n);
        if (ev == BS_FR_MORE)
            break;
        switch (ev) {
        case BS_FR_SKIP:
        case BS_FR_META:
            evbuffer_drain(src, n);
            break;
        case BS_FR_HEAD:
            if (on_head(c, src, dst, &hd))
                moved = 1;
            break;
        case BS_FR_DATA:
            on_data(c, src, dst, n, &moved);
            break;
        case BS_FR_END:
            on_end(c, dst, &moved);
            break;
        default: /* BS_FR_ERROR */
            if (c->mode == BS_CONN_BODY && c->dest == BS_DEST_STREAM)
                body_refuse(c, (int)n);
            else if (c->mode == BS_CONN_BODY && c->dest == BS_DEST_DROP)
                c->mode = BS_CONN_DEAD;
            else
                refuse_conn(c, (int)n);
        }
    }
    /* BEV_OK only when libevent got bytes: it then runs its read callback, which must not run
       while it answers a request (it aborts on reads in that state) */
    return moved ? BEV_OK : BEV_NEED_MORE;
}
