/*
 * http_stream.c - request bodies in pieces (stream_body routes).
 *
 * libevent 2.1 calls a request callback only once the whole body is in, and offers no hook
 * between a request's headers and its body to a server (evhttp_set_newreqcb and a request's
 * header callback on the server side came with 2.2). So a server with stream_body routes
 * reads its connections through a bufferevent filter (evhttp_set_bevcb) that frames the
 * requests itself, strictly, before libevent sees them:
 *
 * - A request for an ordinary route passes unchanged, head and body, and the filter follows
 *   its body to find where the next request starts. Anything the filter does not frame exactly
 *   as libevent would (an odd request line, a folded or malformed header, an ambiguous length,
 *   a chunk size libevent reads another way) switches the connection to TRANSPARENT: from
 *   then on libevent reads the bytes as they came, as on any other connection, and the
 *   trampoline's smuggling check refuses what it must. The filter never guesses.
 * - A request for a stream_body route passes to libevent without its Content-Length or
 *   Transfer-Encoding line, so libevent sees a request without body and calls the route at
 *   once; the trampoline claims it (bs_stream_claim): puts the framing lines back into its
 *   input headers and lets the filter read on. The filter then moves the body, de-chunked,
 *   into the record's body_in and activates body_ev, whose callback gives the pieces to Python
 *   in the loop (the filter runs inside libevent's reads, so it never calls Python or
 *   libevent's HTTP layer itself). After the body's end the filter passes nothing until the
 *   request's reply is complete (HOLD): libevent must not see the next request while it is
 *   still answering this one.
 * - Over the body limit (set_max_body_size), or on a broken chunk, the filter drops the rest
 *   (DEAD) and body_ev answers 413 or 400 with "Connection: close", or closes the connection
 *   when a reply was already under way.
 *
 * Writing: the filter writes the replies to the socket itself (out_filter). libevent's
 * callbacks that follow a write (a reply complete, then the connection freed if it closes)
 * run when the filter's output has drained; a filter that handed bytes on to the socket's
 * bufferevent would let them run, and the connection be freed, with those bytes unwritten.
 * Writing them at once keeps "drained" meaning "on the socket", so the reply's byte counting
 * (on_sent, output_buffered) is the same as on other connections. libevent also adds a reply
 * before it enables writing, which a filter does not notice: a callback on the output arms
 * the write event for it.
 *
 * Ownership: the filter's context (bs_stream_conn) lives as long as libevent's connection
 * and is linked to its server's record; a server freed first unlinks its contexts. A record
 * fed by a context has the BODY holder until body_ev has given Python the body's end, its
 * refusal, or its loss (the connection closed first).
 */
#define _GNU_SOURCE
#include "bitcoin_support.h"
#include "secure.h"
#include "http.h"
#include "callbacks.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/bufferevent.h>

enum { M_FRAME, M_BODY, M_HOLD, M_TRANSPARENT, M_DEAD };
enum { C_SIZE, C_DATA, C_DATA_CRLF, C_TRAILER };

#define HEAD_MAX 65536           /* a head larger than this is left to libevent's own limit */
#define LINE_MAX 1024            /* a chunk-size or trailer line */
#define PAUSE_AT (1u << 20)      /* body bytes waiting for Python before reading pauses */
#define RESUME_AT (256u << 10)

typedef struct bs_stream_conn {
    struct bs_stream_conn *prev, *next; /* in the server's list */
    bs_evhttp *h;                       /* NULL once the server is freed */
    struct bufferevent *bev;            /* the filter libevent reads */
    struct bufferevent *under;          /* the socket's own bufferevent */
    int mode;
    int chunked, cstate;
    unsigned long long left;            /* of the Content-Length body, or of the chunk */
    unsigned long long size;            /* stream body bytes so far (the limit) */
    int stream;                         /* the body being framed goes to a record */
    int offered;                        /* a stream head passed, not claimed yet */
    int reply_done;                     /* the stream request's reply is complete */
    int paused;                         /* reading stopped: Python has PAUSE_AT bytes waiting */
    int error;                          /* 413 or 400 found before the claim */
    int ended;                          /* the stream body ended before the claim */
    struct evbuffer *pending;           /* stream body read before the claim */
    struct event *wr;                   /* the socket is writable: write the reply on */
    struct event *rd;                   /* read on, from the loop (never inside libevent) */
    int writing;                        /* inside wr_cb: the one place out_filter writes */
    bs_http_req_t *rec;                 /* the claimed record (BODY holder) */
    char *length, *coding;              /* the framing lines libevent did not see */
} bs_stream_conn;

/* ---- the record's side: body_ev gives Python the pieces ---- */

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

static void stream_resume(bs_stream_conn *c)
{
    if (c->paused) {
        c->paused = 0;
        if (alive(c)) {
            bufferevent_enable(c->under, EV_READ);
            read_on(c);
        }
    }
}

/* The body is refused (413, 400): answer if nothing was sent yet, else close. */
static void refuse(bs_http_req_t *rec, int code)
{
    if (rec->req != NULL && rec->evcon != NULL &&
        (rec->state == BS_REQ_CALLBACK || rec->state == BS_REQ_DEFERRED)) {
        struct evhttp_request *r = rec->req;
        bs_rec_enter(rec, BS_REQ_SENT);
        evhttp_send_error(r, code, NULL); /* "Connection: close": freed once written */
        if ((rec->holds & BS_HOLD_PY) && rec->py != NULL)
            _bs_http_on_gone(rec->py); /* Python closes its wrapper: it can no longer reply */
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
        _bs_http_on_body(rec->body_py, p, n, 0);
        evbuffer_drain(rec->body_in, n);
    }
    if (rec->body_py == NULL && !(rec->holds & BS_HOLD_PY))
        evbuffer_drain(rec->body_in, evbuffer_get_length(rec->body_in)); /* nobody will read */
    if (rec->body_conn != NULL && evbuffer_get_length(rec->body_in) < RESUME_AT)
        stream_resume(rec->body_conn);
    int st = rec->body_status;
    if (st >= 400 && !rec->body_refused) {
        rec->body_refused = 1;
        evbuffer_drain(rec->body_in, evbuffer_get_length(rec->body_in));
        refuse(rec, st);
    }
    if (st != 0 && (evbuffer_get_length(rec->body_in) == 0 || st != 1) &&
        (rec->body_py != NULL || !(rec->holds & BS_HOLD_PY))) {
        if (rec->body_py != NULL)
            _bs_http_on_body(rec->body_py, NULL, 0, st);
        rec->body_py = NULL;
        bs_rec_drop(rec, BS_HOLD_BODY); /* the call still holds it */
    }
    bs_rec_leave_call(rec);
}

static void body_wake(bs_http_req_t *rec)
{
    if (rec->body_ev != NULL)
        event_active(rec->body_ev, EV_TIMEOUT, 1);
}

/* The record is told its final status in the loop (at once when its base is being freed). */
static void wake_final(bs_http_req_t *rec, int status)
{
    if (rec->body_status == 0)
        rec->body_status = status;
    if (bs_in_orphan) { /* its base is being freed: no more loop rounds, no Python */
        if (rec->holds & BS_HOLD_BODY) {
            evbuffer_drain(rec->body_in, evbuffer_get_length(rec->body_in));
            rec->body_py = NULL;
            bs_rec_drop(rec, BS_HOLD_BODY);
        }
        return;
    }
    body_wake(rec);
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
 * connection's filter while the filter feeds it or its reply is not complete (the filter holds
 * the next request until then), and is unlinked before it can be freed.
 */
static void body_finish(bs_stream_conn *c, int status)
{
    c->stream = 0;
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
    wake_final(rec, status);
}

/* The record's connection closes, or the record is about to be freed: unlink it. */
void bs_stream_unlink(bs_http_req_t *rec)
{
    bs_stream_conn *c = rec->body_conn;
    if (c == NULL)
        return;
    int feeding = c->stream;
    c->stream = 0;
    if (feeding)
        c->mode = M_DEAD;
    unlink_rec(c);
    if (feeding)
        wake_final(rec, -1);
}

/* Python's sink for the pieces (on_body); NULL py is refused. 0, or -1 not a stream request. */
BS_EXPORT int bs_http_on_body(bs_http_req_t *rec, void *py)
{
    if (!rec->streaming || !(rec->holds & BS_HOLD_BODY) || rec->body_py != NULL || py == NULL)
        return -1;
    rec->body_py = py;
    body_wake(rec);
    return 0;
}

/* Python's sink is full (paused 1) or has room again (0): pieces wait in body_in meanwhile,
   and past PAUSE_AT of them the filter stops reading the socket. */
BS_EXPORT void bs_http_body_pause(bs_http_req_t *rec, int paused)
{
    if (!(rec->holds & BS_HOLD_BODY))
        return;
    rec->body_paused = paused;
    if (!paused)
        body_wake(rec);
}

/* ---- the filter ---- */

static int tchar(unsigned char c)
{
    return bs_http_header_check((const char *)&c, 1, "", 0) == 0;
}

static const char *const methods[] = {"GET",     "POST",  "HEAD",    "PUT",  "DELETE",
                                      "OPTIONS", "TRACE", "CONNECT", "PATCH"};

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

static int trim_eq(const char *v, size_t n, const char *want)
{
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return strlen(want) == n && strncasecmp(v, want, n) == 0;
}

static char *trim_dup(const char *v, size_t n)
{
    while (n && (*v == ' ' || *v == '\t'))
        v++, n--;
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    return strndup(v, n);
}

/*
 * Frame one head at the front of src. 0: need more; 1: passed (c->mode set for its body);
 * -1: not framed exactly: TRANSPARENT (nothing consumed); -2: refused (see refuse_head).
 */
static int frame_head(bs_stream_conn *c, struct evbuffer *src, struct evbuffer *dst)
{
    size_t total = evbuffer_get_length(src);
    size_t lines[256][2]; /* offset, length without EOL */
    size_t eols[256];
    int nlines = 0;
    struct evbuffer_ptr at;
    evbuffer_ptr_set(src, &at, 0, EVBUFFER_PTR_SET);
    for (;;) {
        size_t eol = 0;
        struct evbuffer_ptr e = evbuffer_search_eol(src, &at, &eol, EVBUFFER_EOL_CRLF);
        if (e.pos < 0)
            return total > HEAD_MAX ? -1 : 0;
        if (nlines == 256 || (size_t)e.pos + eol > HEAD_MAX)
            return -1;
        lines[nlines][0] = (size_t)at.pos;
        lines[nlines][1] = (size_t)(e.pos - at.pos);
        eols[nlines] = eol;
        if (eol != 2)
            return -2; /* a bare LF ends a line for libevent, not for a strict parser */
        nlines++;
        if (e.pos == at.pos)
            break; /* the empty line */
        evbuffer_ptr_set(src, &at, (size_t)e.pos + eol, EVBUFFER_PTR_SET);
    }
    size_t head_len = lines[nlines - 1][0] + eols[nlines - 1];
    const char *p = (const char *)evbuffer_pullup(src, (ev_ssize_t)head_len);
    if (p == NULL || nlines < 2)
        return -1;

    /* the request line: METHOD SP target SP HTTP/1.x */
    const char *l = p, *end = p + lines[0][1];
    const char *sp1 = memchr(l, ' ', (size_t)(end - l));
    if (sp1 == NULL)
        return -1;
    int method = -1;
    for (int i = 0; i < 9; i++)
        if ((size_t)(sp1 - l) == strlen(methods[i]) &&
            memcmp(l, methods[i], (size_t)(sp1 - l)) == 0)
            method = i;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
    if (method < 0 || sp2 == NULL || sp2 == sp1 + 1 || end - sp2 - 1 != 8 ||
        (memcmp(sp2 + 1, "HTTP/1.1", 8) != 0 && memcmp(sp2 + 1, "HTTP/1.0", 8) != 0))
        return -1;
    for (const char *q = sp1 + 1; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return -1;

    /* the headers: tokens, no folding; one framing */
    long length_line = -1, coding_line = -1;
    int expect = 0;
    unsigned long long length = 0;
    for (int i = 1; i < nlines - 1; i++) {
        const char *k = p + lines[i][0];
        size_t n = lines[i][1];
        const char *colon = memchr(k, ':', n);
        if (*k == ' ' || *k == '\t')
            return -2; /* obs-fold: libevent joins it to the previous header */
        if (colon == NULL || colon == k)
            return -2;
        for (const char *q = k; q < colon; q++)
            if (!tchar((unsigned char)*q))
                return -2;
        for (const char *q = colon + 1; q < k + n; q++)
            if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
                return -2;
        size_t klen = (size_t)(colon - k);
        const char *v = colon + 1;
        size_t vlen = n - klen - 1;
        if (klen == 14 && strncasecmp(k, "Content-Length", 14) == 0) {
            if (length_line >= 0)
                return -1;
            while (vlen && (*v == ' ' || *v == '\t'))
                v++, vlen--;
            while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
            if (vlen == 0 || vlen > 18)
                return -1;
            length = 0;
            for (size_t j = 0; j < vlen; j++) {
                if (v[j] < '0' || v[j] > '9')
                    return -1;
                length = length * 10 + (unsigned)(v[j] - '0');
            }
            length_line = i;
        } else if (klen == 17 && strncasecmp(k, "Transfer-Encoding", 17) == 0) {
            if (coding_line >= 0 || !trim_eq(v, vlen, "chunked"))
                return -1;
            coding_line = i;
        } else if (klen == 6 && strncasecmp(k, "Expect", 6) == 0) {
            expect = 1;
        }
    }
    if (length_line >= 0 && coding_line >= 0)
        return -1;
    int has_body = coding_line >= 0 || length > 0;
    if (has_body && (method == 2 || method == 6)) /* HEAD, TRACE: libevent reads no body */
        return -1;

    int stream = 0;
    if (has_body && !expect && c->h != NULL) {
        char *target = strndup(sp1 + 1, (size_t)(sp2 - sp1 - 1));
        if (target == NULL)
            return -1;
        stream = route_streams(c->h, target);
        free(target);
        if (stream < 0)
            return -1;
    }
    if (!stream) {
        evbuffer_remove_buffer(src, dst, head_len);
    } else {
        /* libevent sees it without its framing line: a request without body */
        long skip = coding_line >= 0 ? coding_line : length_line;
        free(c->length);
        free(c->coding);
        c->length = c->coding = NULL;
        const char *v = memchr(p + lines[skip][0], ':', lines[skip][1]) + 1;
        char *value = trim_dup(v, lines[skip][1] - (size_t)(v - (p + lines[skip][0])));
        if (value == NULL)
            return -1;
        if (coding_line >= 0)
            c->coding = value;
        else
            c->length = value;
        size_t from = lines[skip][0], to = lines[skip][0] + lines[skip][1] + eols[skip];
        evbuffer_add(dst, p, from);
        evbuffer_add(dst, p + to, head_len - to);
        evbuffer_drain(src, head_len);
        c->offered = 1;
        c->reply_done = 0;
        c->size = 0;
        c->error = 0;
        c->ended = 0;
    }
    c->stream = stream;
    if (has_body) {
        c->mode = M_BODY;
        c->chunked = coding_line >= 0;
        c->cstate = C_SIZE;
        c->left = length;
    }
    return 1;
}

/* Move n body bytes to libevent (passed) or to the record / pending (stream). */
static void body_bytes(bs_stream_conn *c, struct evbuffer *src, struct evbuffer *dst, size_t n,
                       int *moved)
{
    if (!c->stream) {
        evbuffer_remove_buffer(src, dst, n);
        *moved = 1;
        return;
    }
    struct evbuffer *to = c->rec != NULL ? c->rec->body_in : c->pending;
    evbuffer_remove_buffer(src, to, n);
    if (c->rec != NULL)
        body_wake(c->rec);
}

static void body_end(bs_stream_conn *c)
{
    if (c->stream) {
        c->stream = 0;
        body_finish(c, 1);
        c->mode = c->reply_done ? M_FRAME : M_HOLD;
    } else {
        c->mode = M_FRAME;
    }
}

/* A stream body broke the rules (limit, chunk): drop the rest, refuse it. */
static void body_refuse(bs_stream_conn *c, int code)
{
    c->mode = M_DEAD;
    c->stream = 0;
    body_finish(c, code);
}

/* Forward a framing line (passed bodies keep theirs). */
static void body_line(bs_stream_conn *c, struct evbuffer *src, struct evbuffer *dst, size_t n,
                      int *moved)
{
    if (c->stream) {
        evbuffer_drain(src, n);
    } else {
        evbuffer_remove_buffer(src, dst, n);
        *moved = 1;
    }
}

/* One step of the body at the front of src; 0: need more. */
static int body_step(bs_stream_conn *c, struct evbuffer *src, struct evbuffer *dst, int *moved)
{
    size_t have = evbuffer_get_length(src);
    if (c->stream && c->h != NULL && c->h->max_body > 0 && !c->chunked &&
        c->left > c->h->max_body) {
        body_refuse(c, 413);
        return 1;
    }
    if (!c->chunked || c->cstate == C_DATA) {
        size_t n = have < c->left ? have : (size_t)c->left;
        if (c->stream && c->rec != NULL && evbuffer_get_length(c->rec->body_in) >= PAUSE_AT) {
            c->paused = 1;
            bufferevent_disable(c->under, EV_READ);
            return 0;
        }
        body_bytes(c, src, dst, n, moved);
        c->left -= n;
        c->size += n;
        if (c->left == 0) {
            if (!c->chunked)
                body_end(c);
            else
                c->cstate = C_DATA_CRLF;
        }
        return 1;
    }
    if (c->cstate == C_DATA_CRLF) {
        if (have < 2)
            return 0;
        char crlf[2];
        evbuffer_copyout(src, crlf, 2);
        if (crlf[0] != '\r' || crlf[1] != '\n')
            goto broken;
        body_line(c, src, dst, 2, moved);
        c->cstate = C_SIZE;
        return 1;
    }
    /* a chunk-size line or a trailer line: CRLF (or LF, as libevent reads lines) */
    size_t eol = 0;
    struct evbuffer_ptr e = evbuffer_search_eol(src, NULL, &eol, EVBUFFER_EOL_CRLF);
    if (e.pos < 0 && have <= LINE_MAX)
        return 0;
    if (e.pos < 0 || e.pos > LINE_MAX)
        goto broken;
    char line[LINE_MAX + 1];
    evbuffer_copyout(src, line, (size_t)e.pos);
    line[e.pos] = '\0';
    if (c->cstate == C_TRAILER) {
        body_line(c, src, dst, (size_t)e.pos + eol, moved);
        if (e.pos == 0)
            body_end(c);
        return 1;
    }
    /* hex digits only: libevent's strtoll would also take a sign, "0x", spaces */
    unsigned long long size = 0;
    if (e.pos == 0 || e.pos > 15)
        goto broken;
    for (long i = 0; i < e.pos; i++) {
        char ch = line[i];
        int d = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (d < 0)
            goto broken;
        size = size * 16 + (unsigned)d;
    }
    if (c->stream && c->h != NULL && c->h->max_body > 0 && c->size + size > c->h->max_body) {
        body_refuse(c, 413);
        return 1;
    }
    body_line(c, src, dst, (size_t)e.pos + eol, moved);
    if (size == 0) {
        c->cstate = C_TRAILER;
    } else {
        c->cstate = C_DATA;
        c->left = size;
    }
    return 1;
broken:
    if (c->stream) {
        body_refuse(c, 400);
    } else {
        /* a chunk size libevent refuses: it fails the request (413, its code for any broken
           chunk) and closes; the rest is dropped */
        evbuffer_add(dst, "x\r\n", 3);
        *moved = 1;
        c->mode = M_DEAD;
    }
    return 1;
}

static enum bufferevent_filter_result stream_filter(struct evbuffer *src, struct evbuffer *dst,
                                                    ev_ssize_t lim,
                                                    enum bufferevent_flush_mode how, void *arg)
{
    bs_stream_conn *c = arg;
    int moved = 0;
    (void)lim;
    (void)how;
    while (evbuffer_get_length(src) != 0 && !c->paused) {
        int r;
        switch (c->mode) {
        case M_TRANSPARENT:
            evbuffer_add_buffer(dst, src);
            moved = 1;
            continue;
        case M_DEAD:
            evbuffer_drain(src, evbuffer_get_length(src));
            continue;
        case M_HOLD:
            goto out;
        case M_FRAME:
            if (c->offered)
                goto out; /* a stream head libevent has not given us yet */
            r = frame_head(c, src, dst);
            if (r == 0)
                goto out;
            if (r == -2) {
                /* a request line libevent refuses: it answers 400 and closes */
                evbuffer_add(dst, "BAD\r\n\r\n", 7);
                c->mode = M_DEAD;
                moved = 1;
            } else if (r < 0) {
                c->mode = M_TRANSPARENT;
            } else {
                moved = 1;
            }
            continue;
        default:
            if (!body_step(c, src, dst, &moved))
                goto out;
        }
    }
out:
    /* BEV_OK only when libevent got bytes: it then runs its read callback, which must not run
       while it answers a request (it aborts on reads in that state) */
    return moved ? BEV_OK : BEV_NEED_MORE;
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
        if (c->wr != NULL && !event_pending(c->wr, EV_WRITE, NULL))
            event_add(c->wr, NULL);
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
            if (c->wr != NULL)
                event_add(c->wr, NULL);
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
    if (alive(c) && (bufferevent_get_enabled(c->bev) & EV_WRITE)) {
        c->writing = 1;
        bufferevent_flush(c->bev, EV_WRITE, BEV_NORMAL); /* c is freed on a later round only */
        c->writing = 0;
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
    if (!event_pending(c->wr, EV_WRITE, NULL))
        event_add(c->wr, NULL);
}

/* ---- connections and the server ---- */

static void conn_free(void *arg)
{
    bs_stream_conn *c = arg;
    if (c->rec != NULL)
        bs_stream_unlink(c->rec); /* the connection closed before the body's end */
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
        return NULL; /* libevent makes its own: that connection is not streamed */
    c->pending = evbuffer_new();
    c->under = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->rd = event_new(base, -1, 0, rd_cb, c);
    if (c->pending == NULL || c->under == NULL || c->rd == NULL)
        goto fail;
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

/* The server is freed: its connections' filters outlive it (libevent frees them later). */
void bs_stream_server_gone(bs_evhttp *h)
{
    for (bs_stream_conn *c = h->streams; c != NULL; c = c->next) {
        c->h = NULL;
        if (c->rec != NULL)
            bs_stream_unlink(c->rec);
        c->mode = M_DEAD;
    }
    h->streams = NULL;
    bs_stream_route *r = h->routes;
    while (r != NULL) {
        bs_stream_route *next = r->next;
        free(r->path);
        free(r);
        r = next;
    }
    h->routes = NULL;
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

/* Frame every new connection (refusing what llhttp's strict mode refuses), streamed or not. */
BS_EXPORT int bs_evhttp_strict(bs_evhttp *h, int on)
{
    h->strict = on;
    return bs_stream_update(h);
}

BS_EXPORT void bs_evhttp_set_max_body(bs_evhttp *h, unsigned long long n)
{
    h->max_body = n;
}

/* New connections are filtered while some route streams (the others are not). */
int bs_stream_update(bs_evhttp *h)
{
    int any = h->gen_stream || h->strict;
    for (bs_stream_route *r = h->routes; r != NULL && !any; r = r->next)
        any = r->stream;
    if (h->http != NULL)
        evhttp_set_bevcb(h->http, any ? make_bev : NULL, any ? h : NULL);
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
    rec->body_in = evbuffer_new();
    rec->body_ev = event_new(evhttp_connection_get_base(rec->evcon), -1, 0, body_cb, rec);
    if (rec->body_in == NULL || rec->body_ev == NULL)
        return -1;
    rec->streaming = 1;
    bs_rec_hold(rec, BS_HOLD_BODY);
    bs_stream_conn *c = h->streams ? find(h, rec->evcon) : NULL;
    if (c == NULL || !c->offered) {
        evbuffer_add_buffer(rec->body_in, evhttp_request_get_input_buffer(r));
        rec->body_status = 1;
        body_wake(rec);
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
        rec->body_status = 1;
    /* libevent stopped reading (it thinks the request complete): the filter reads the body on */
    bufferevent_enable(c->bev, EV_READ);
    read_on(c);
    if (evbuffer_get_length(rec->body_in) != 0 || rec->body_status != 0)
        body_wake(rec);
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
    return 1;
}

/* The stream request's reply is written: the next request may pass. */
void bs_stream_reply_done(bs_http_req_t *rec)
{
    bs_stream_conn *c = rec->body_conn;
    if (c == NULL)
        return;
    c->reply_done = 1;
    if (!c->stream)
        unlink_rec(c);
    if (c->mode == M_HOLD) {
        c->mode = M_FRAME;
        read_on(c); /* libevent starts reading the next request right after this */
    }
}
