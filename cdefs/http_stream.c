/*
 * http_stream.c - the framing filter: every connection of a strict server is read through it.
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
 *   A refused connection closes slowly (lingering close, see linger_start): the answer is
 *   written, the write side shut, and input read and dropped for a bounded time and size, so
 *   that a client still sending its body reads the status instead of a reset.
 *
 * Writing: the filter writes the replies to the socket itself (out_filter). libevent's
 * callbacks that follow a write (a reply complete, then the connection freed if it closes)
 * run when the filter's output has drained; a filter that handed bytes on to the socket's
 * bufferevent would let them run, and the connection be freed, with those bytes unwritten.
 * Writing them at once keeps "drained" meaning "on the socket", so the reply's byte counting
 * (on_sent, output_buffered) is the same as on other connections. libevent also adds a reply
 * before it enables writing, which a filter does not notice: a callback on the output arms
 * the write event for it. The write is tried on the same loop round (the event is made active,
 * see write_soon); only a full socket makes it wait for writability. A reply is complete
 * when libevent, which clears its read callback while it writes, sets it again (wr_cb sees
 * it after the write that finished the reply).
 *
 * Ownership: the filter's context (bs_stream_conn) lives as long as libevent's connection
 * and is linked to its server's record; a server freed first unlinks its contexts, which go on
 * framing (without stream routes) for the connections still open.
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "http_internal.h"
#include "callbacks.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/bufferevent.h>

enum { M_FRAME, M_BODY, M_HOLD, M_DEAD };
enum { D_PASS, D_CHUNK, D_STREAM, D_DROP };

#define LINGER_SECONDS 5          /* a lingering close lasts at most this long */
#define LINGER_IDLE 2             /* or until the client is silent this long */
#define LINGER_BYTES (64u << 20)  /* or this much input was dropped */

typedef struct bs_stream_conn {
    struct bs_stream_conn *prev, *next; /* in the server's list */
    bs_evhttp *h;                       /* NULL once the server is freed */
    struct bufferevent *bev;            /* the filter libevent reads */
    struct bufferevent *under;          /* the socket's own bufferevent (ours) */
    bs_framer fr;
    int mode;
    int dest;                           /* where the body being framed goes */
    unsigned long long size;            /* body bytes so far (the limit) */
    unsigned long long max_body;        /* the server's limits, kept for after it is gone */
    size_t max_head;
    int offered;                        /* a stream head passed, not claimed yet */
    int reply_done;                     /* the current request's reply is complete */
    int wrote_reply;                    /* libevent wrote a reply since the head passed */
    int paused;                         /* reading stopped: Python has PAUSE_AT bytes waiting */
    int error;                          /* 413 or 400 found before the claim */
    int ended;                          /* the stream body ended before the claim */
    int linger;                         /* close slowly (a refusal was sent) */
    struct evbuffer *pending;           /* stream body read before the claim */
    struct event *wr;                   /* the socket is writable: write the reply on */
    struct event *rd;                   /* read on, from the loop (never inside libevent) */
    int writing;                        /* inside wr_cb: the one place out_filter writes */
    int armed;                          /* wr_cb is due (active, or waiting for EV_WRITE) */
    bs_http_req_t *rec;                 /* the claimed record (BODY holder) */
    char *length, *coding;              /* the framing line libevent did not see */
} bs_stream_conn;

/* A refused connection closing slowly: the socket's bufferevent, after libevent let go. */
typedef struct bs_linger {
    struct bs_linger *prev, *next;      /* in the server's list */
    bs_evhttp *h;
    evutil_socket_t fd;                 /* a copy of the connection's descriptor */
    struct event *ev;
    struct timeval since;
    size_t left;                        /* bytes still to drop */
} bs_linger;

/*
 * libevent frees a connection's bufferevent with bufferevent_free, which clears its callbacks
 * at once and finalizes it (calling conn_free) on a later loop round. Until then the filter's
 * memory and c are still there, but nothing may be done with them: a flush or trigger would
 * take and drop a reference again and finalize it twice.
 */
static int alive(bs_stream_conn *c)
{
    bufferevent_event_cb ecb = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, &ecb, NULL);
    return ecb != NULL;
}

/* libevent reads (its read callback is set): idle or reading a request, not writing a reply. */
static int lev_reading(bs_stream_conn *c)
{
    bufferevent_data_cb rcb = NULL;
    bufferevent_getcb(c->bev, &rcb, NULL, NULL, NULL);
    return rcb != NULL;
}

/* Let the filter read what is waiting, on the next loop round (see rd_cb). */
static void read_on(bs_stream_conn *c)
{
    event_active(c->rd, EV_TIMEOUT, 1);
}

static void rd_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_stream_conn *c = arg;
    (void)fd;
    (void)what;
    if (alive(c) && !c->paused)
        bufferevent_trigger(c->under, EV_READ, BEV_TRIG_IGNORE_WATERMARKS);
}

void bs_stream_resume(bs_stream_conn *c)
{
    if (c->paused) {
        c->paused = 0;
        if (alive(c)) {
            bufferevent_enable(c->under, EV_READ);
            read_on(c);
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
    if (alive(c))
        bufferevent_trigger_event(c->bev, BEV_EVENT_ERROR | BEV_EVENT_READING,
                                  BEV_OPT_DEFER_CALLBACKS);
}

/* The filter refuses the request it is framing (libevent answers nothing now): it answers
   `code` itself as the connection closes, and drops what comes after. */
static void refuse_conn(bs_stream_conn *c, int code)
{
    c->mode = M_DEAD;
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
    int feeding = c->mode == M_BODY && c->dest == D_STREAM;
    if (feeding)
        c->mode = M_DEAD;
    unlink_rec(c);
    if (feeding)
        bs_body_final(rec, BS_BODY_LOST);
}

/* The current request's reply is written and libevent reads again: the next may pass. */
static void reply_complete(bs_stream_conn *c)
{
    c->reply_done = 1;
    if (!(c->mode == M_BODY && c->dest == D_STREAM))
        unlink_rec(c);
    if (c->mode == M_HOLD) {
        c->mode = M_FRAME;
        if (evbuffer_get_length(bufferevent_get_input(c->under)) != 0)
            read_on(c); /* a pipelined request is waiting */
    } else if (c->mode == M_DEAD) {
        close_conn(c); /* a refused body was answered with keep-alive (a host's gate) */
    }
}

/* The body is refused (limit, broken chunk): drop the rest, tell the record. */
static void body_refuse(bs_stream_conn *c, int code)
{
    c->mode = M_DEAD;
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
        c->mode = M_HOLD;
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
    c->mode = M_BODY;
    if (!stream) {
        if (hd->body == BS_BODY_SIZED &&
            ((c->max_body > 0 && hd->length > c->max_body) || hd->length >= BS_LENGTH_HUGE)) {
            refuse_conn(c, 413);
            return 0;
        }
        c->dest = hd->body == BS_BODY_CHUNKED ? D_CHUNK : D_PASS;
        size_t body = 0;
        if (c->dest == D_PASS) { /* the body bytes already here go with the head, in one move */
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
    c->dest = D_STREAM;
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
    if (c->max_body > 0 && c->size > c->max_body && c->dest != D_DROP) {
        if (c->dest == D_STREAM)
            body_refuse(c, 413);
        else
            refuse_conn(c, 413); /* libevent has the head, and no reply under way */
        evbuffer_drain(src, n);
        return;
    }
    switch (c->dest) {
    case D_PASS:
        evbuffer_remove_buffer(src, dst, n);
        *moved = 1;
        break;
    case D_CHUNK:
        evbuffer_add_printf(dst, "%zx\r\n", n);
        evbuffer_remove_buffer(src, dst, n);
        evbuffer_add(dst, "\r\n", 2);
        *moved = 1;
        break;
    case D_STREAM:
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
    if (c->dest == D_CHUNK) {
        evbuffer_add(dst, "0\r\n\r\n", 5);
        *moved = 1;
    }
    c->mode = c->reply_done && c->dest >= D_STREAM ? M_FRAME : M_HOLD;
    if (c->dest == D_STREAM)
        body_finish(c, 1);
}

static enum bufferevent_filter_result stream_filter(struct evbuffer *src, struct evbuffer *dst,
                                                    ev_ssize_t lim,
                                                    enum bufferevent_flush_mode how, void *arg)
{
    bs_stream_conn *c = arg;
    int moved = 0;
    (void)lim;
    (void)how;
    while (!c->paused) {
        if (c->mode == M_DEAD) {
            evbuffer_drain(src, evbuffer_get_length(src));
            break;
        }
        if (c->mode == M_HOLD) {
            if (!(c->wrote_reply && lev_reading(c)))
                break;
            reply_complete(c); /* a reply libevent finished outside wr_cb */
            continue;
        }
        if (c->mode == M_FRAME) {
            if (evbuffer_get_length(src) == 0)
                break;
            if (c->h != NULL)
                c->fr.max_head = c->h->max_head != 0 ? (size_t)c->h->max_head : BS_HEAD_DEFAULT;
        }
        if (c->mode == M_BODY && c->dest == D_STREAM && c->rec != NULL &&
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
            if (c->mode == M_BODY && c->dest == D_STREAM)
                body_refuse(c, (int)n);
            else if (c->mode == M_BODY && c->dest == D_DROP)
                c->mode = M_DEAD;
            else
                refuse_conn(c, (int)n);
        }
    }
    /* BEV_OK only when libevent got bytes: it then runs its read callback, which must not run
       while it answers a request (it aborts on reads in that state) */
    return moved ? BEV_OK : BEV_NEED_MORE;
}

/* Write on this loop round, once libevent's call that queued the reply has returned: wr_cb
   is made active (no wait for the socket's readiness, which costs a poll and two epoll_ctl);
   only a socket that is full makes it wait for EV_WRITE. */
static void write_soon(bs_stream_conn *c)
{
    if (!c->armed && c->wr != NULL) { /* (libevent adds a reply in many pieces) */
        c->armed = 1;
        if (!event_pending(c->wr, EV_WRITE, NULL))
            event_active(c->wr, EV_WRITE, 1);
    }
}

/* Write what libevent queued straight to the socket (see "Writing" above). */
static enum bufferevent_filter_result out_filter(struct evbuffer *src, struct evbuffer *dst,
                                                 ev_ssize_t lim, enum bufferevent_flush_mode how,
                                                 void *arg)
{
    bs_stream_conn *c = arg;
    (void)dst;
    (void)lim;
    (void)how;
    evutil_socket_t fd = bufferevent_getfd(c->under);
    if (fd < 0)
        return BEV_NEED_MORE;
    if (!c->writing) { /* inside libevent's adding: write from the loop, once it set its callback */
        write_soon(c);
        return BEV_NEED_MORE;
    }
    int sent = 0;
    while (evbuffer_get_length(src) != 0) {
        struct evbuffer_iovec v[16];
        struct iovec io[16];
        int n = evbuffer_peek(src, -1, NULL, v, 16);
        if (n > 16)
            n = 16;
        for (int i = 0; i < n; i++) {
            io[i].iov_base = v[i].iov_base;
            io[i].iov_len = v[i].iov_len;
        }
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_iov = io;
        m.msg_iovlen = (size_t)n;
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w > 0) {
            evbuffer_drain(src, (size_t)w);
            sent = 1;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (c->wr != NULL && event_add(c->wr, NULL) == 0)
                c->armed = 1; /* the socket is full: wr_cb runs once it is writable */
            break;
        }
        /* the peer is gone: libevent hears it as a write error, in the loop */
        bufferevent_trigger_event(c->bev, BEV_EVENT_ERROR | BEV_EVENT_WRITING,
                                  BEV_OPT_DEFER_CALLBACKS);
        return BEV_ERROR;
    }
    return sent ? BEV_OK : BEV_NEED_MORE;
}

static void wr_cb(evutil_socket_t fd, short what, void *arg)
{
    bs_stream_conn *c = arg;
    (void)fd;
    (void)what;
    /* Not after libevent freed the connection (it disables writing first): the filter's
       memory lives until its deferred finalizer frees c and this event with it, but a flush
       would take and drop a reference again, and finalize it twice. */
    c->armed = 0;
    if (alive(c) && (bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        int replying = !lev_reading(c); /* (a "100 Continue" is written while it reads) */
        c->writing = 1;
        bufferevent_flush(c->bev, EV_WRITE, BEV_NORMAL); /* c is freed on a later round only */
        c->writing = 0;
        if (replying)
            c->wrote_reply = 1;
        if (replying && alive(c) && lev_reading(c) && !c->reply_done)
            reply_complete(c); /* the reply is written and libevent reads again */
    }
}

static void out_added(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    bs_stream_conn *c = arg;
    (void)buf;
    if (info->n_added == 0)
        return;
    if (c->wr == NULL) {
        evutil_socket_t fd = bufferevent_getfd(c->under);
        if (fd < 0)
            return;
        c->wr = event_new(bufferevent_get_base(c->bev), fd, EV_WRITE, wr_cb, c);
        if (c->wr == NULL)
            return;
    }
    write_soon(c);
}

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
    c->rd = event_new(base, -1, 0, rd_cb, c);
    if (c->pending == NULL || c->under == NULL || c->rd == NULL)
        goto fail;
    bs_framer_init(&c->fr, (size_t)h->max_head);
    c->max_body = h->max_body;
    /* bytes waiting behind a request being answered are bounded: the socket is not read past
       this (a head fits, up to the limit set when the connection came) */
    bufferevent_setwatermark(c->under, EV_READ, 0, c->fr.max_head + (256u << 10));
    c->bev = bufferevent_filter_new(c->under, stream_filter, out_filter, BEV_OPT_CLOSE_ON_FREE,
                                    conn_free, c);
    if (c->bev == NULL)
        goto fail;
    if (evbuffer_add_cb(bufferevent_get_output(c->bev), out_added, c) == NULL) {
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
    if (h->http != NULL)
        evhttp_set_bevcb(h->http, NULL, NULL);
    for (bs_stream_conn *c = h->streams; c != NULL; c = c->next) {
        c->h = NULL;
        if (c->rec != NULL)
            bs_stream_unlink(c->rec);
        if (c->mode == M_BODY && c->dest == D_STREAM)
            c->mode = M_DEAD;
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

/* New connections are framed while the server is strict or some route streams. */
int bs_stream_update(bs_evhttp *h)
{
    int any = h->gen_stream;
    for (bs_stream_route *r = h->routes; r != NULL && !any; r = r->next)
        any = r->stream;
    h->any_stream = any;
    if (h->http != NULL)
        evhttp_set_bevcb(h->http, any || h->strict ? make_bev : NULL,
                         any || h->strict ? h : NULL);
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
    read_on(c);
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
    c->mode = M_DEAD;
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
    if (c->mode == M_BODY && c->dest == D_STREAM)
        c->dest = D_DROP;
    else if (c->error != 0)
        c->mode = M_DEAD; /* refused before the gate answered: closed after its answer */
    bufferevent_enable(c->bev, EV_READ);
    read_on(c);
}
